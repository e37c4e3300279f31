//! Host batch buffers (recycled through a pool) and their conversion to burn tensors.

use std::sync::mpsc::Sender;

use burn::tensor::{Device, Int, Tensor, TensorData};

/// The storage of one batch, sized for a full batch and written slot by slot (the prefetch
/// thread decodes each row straight into its slot); reused from batch to batch unless
/// [`HostBatch::into_tensors`] moved it into tensors.
#[derive(Debug, Default)]
pub(crate) struct Buffers {
    /// Rows filled (slots `0..n`).
    pub n: usize,
    pub logmel: Vec<f32>,
    pub labels: Vec<i64>,
    pub teacher_logits: Vec<f32>,
    pub teacher_mask: Vec<f32>,
    pub device_ids: Vec<i64>,
    pub rows: Vec<u32>,
}

impl Buffers {
    /// Makes every field `batch` slots long (allocating only what a moved-out or new buffer
    /// lacks) and empties the batch.
    pub fn reset(&mut self, batch: usize, logmel_len: usize, n_classes: usize) {
        fn sized<T: Clone + Default>(v: &mut Vec<T>, len: usize) {
            if v.len() != len {
                *v = vec![T::default(); len];
            }
        }
        sized(&mut self.logmel, batch * logmel_len);
        sized(&mut self.labels, batch);
        sized(&mut self.teacher_logits, batch * n_classes);
        sized(&mut self.teacher_mask, batch);
        sized(&mut self.device_ids, batch);
        sized(&mut self.rows, batch);
        self.n = 0;
    }
}

/// A batch in host memory. Dropping it returns its buffers to the loader's pool.
#[derive(Debug)]
pub struct HostBatch {
    pub(crate) buf: Buffers,
    pub(crate) n_mels: usize,
    pub(crate) n_frames: usize,
    pub(crate) n_classes: usize,
    /// Index of the batch within its epoch.
    pub(crate) index: u64,
    pub(crate) pool: Option<Sender<Buffers>>,
}

/// A batch as burn tensors on a device.
#[derive(Debug, Clone)]
pub struct TensorBatch {
    /// Log-mel `[B, 1, n_mels, n_frames]`.
    pub logmel: Tensor<4>,
    /// Scene label indices `[B]` (`-1` where the label is unknown).
    pub labels: Tensor<1, Int>,
    /// Teacher logits `[B, n_classes]` (zeros where missing).
    pub teacher_logits: Tensor<2>,
    /// `[B]`: 1 where the row has teacher logits, 0 otherwise.
    pub teacher_mask: Tensor<1>,
    /// Device indices `[B]`.
    pub device_ids: Tensor<1, Int>,
    /// Global row ids (see [`super::ShardSet::row_info`]).
    pub rows: Vec<u32>,
}

impl HostBatch {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.buf.n
    }

    /// True when the batch has no rows.
    pub fn is_empty(&self) -> bool {
        self.buf.n == 0
    }

    /// Index of this batch within its epoch.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// `(n_mels, n_frames)` of each log-mel.
    pub fn logmel_shape(&self) -> (usize, usize) {
        (self.n_mels, self.n_frames)
    }

    /// Log-mel values, `[B, n_mels, n_frames]` row-major.
    pub fn logmel(&self) -> &[f32] {
        &self.buf.logmel[..self.buf.n * self.n_mels * self.n_frames]
    }

    /// Label indices (`-1` where unknown).
    pub fn labels(&self) -> &[i64] {
        &self.buf.labels[..self.buf.n]
    }

    /// Teacher logits `[B, n_classes]` row-major (zeros where missing).
    pub fn teacher_logits(&self) -> &[f32] {
        &self.buf.teacher_logits[..self.buf.n * self.n_classes]
    }

    /// 1 where the row has teacher logits, 0 otherwise.
    pub fn teacher_mask(&self) -> &[f32] {
        &self.buf.teacher_mask[..self.buf.n]
    }

    /// Device indices.
    pub fn device_ids(&self) -> &[i64] {
        &self.buf.device_ids[..self.buf.n]
    }

    /// Global row ids, for [`super::ShardSet::row_info`].
    pub fn rows(&self) -> &[u32] {
        &self.buf.rows[..self.buf.n]
    }

    /// Copies the batch into tensors on `device` (one copy per field); the buffers go back to
    /// the loader's pool. [`HostBatch::into_tensors`] avoids the copy.
    pub fn to_tensors(&self, device: &Device) -> TensorBatch {
        let b = self.len();
        let f = |v: &[f32], shape: Vec<usize>| TensorData::new(v.to_vec(), shape);
        let i = |v: &[i64]| TensorData::new(v.to_vec(), [v.len()]);
        TensorBatch {
            logmel: Tensor::from_data(
                f(self.logmel(), vec![b, 1, self.n_mels, self.n_frames]),
                device,
            ),
            labels: Tensor::from_data(i(self.labels()), device),
            teacher_logits: Tensor::from_data(
                f(self.teacher_logits(), vec![b, self.n_classes]),
                device,
            ),
            teacher_mask: Tensor::from_data(f(self.teacher_mask(), vec![b]), device),
            device_ids: Tensor::from_data(i(self.device_ids()), device),
            rows: self.rows().to_vec(),
        }
    }

    /// Moves the batch's buffers into tensors on `device` without copying them on a CPU
    /// device (the loader allocates fresh buffers for later batches instead of reusing these).
    pub fn into_tensors(mut self, device: &Device) -> TensorBatch {
        let (b, n_classes) = (self.len(), self.n_classes);
        let (n_mels, n_frames) = (self.n_mels, self.n_frames);
        let buf = &mut self.buf;
        let take = |v: &mut Vec<f32>, len: usize| {
            let mut v = std::mem::take(v);
            v.truncate(len);
            v
        };
        let take_i = |v: &mut Vec<i64>| {
            let mut v = std::mem::take(v);
            v.truncate(b);
            TensorData::new(v, [b])
        };
        let logmel = take(&mut buf.logmel, b * n_mels * n_frames);
        let logits = take(&mut buf.teacher_logits, b * n_classes);
        let mask = take(&mut buf.teacher_mask, b);
        let mut rows = std::mem::take(&mut buf.rows);
        rows.truncate(b);
        TensorBatch {
            logmel: Tensor::from_data(TensorData::new(logmel, [b, 1, n_mels, n_frames]), device),
            labels: Tensor::from_data(take_i(&mut buf.labels), device),
            teacher_logits: Tensor::from_data(TensorData::new(logits, [b, n_classes]), device),
            teacher_mask: Tensor::from_data(TensorData::new(mask, [b]), device),
            device_ids: Tensor::from_data(take_i(&mut buf.device_ids), device),
            rows,
        }
    }
}

impl Drop for HostBatch {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            // The loader may be gone; then the buffers are simply freed.
            let _ = pool.send(std::mem::take(&mut self.buf));
        }
    }
}
