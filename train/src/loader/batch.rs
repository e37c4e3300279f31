//! Host batch buffers (recycled through a pool) and their conversion to burn tensors.

use std::sync::mpsc::Sender;

use burn::tensor::{Device, Int, Tensor, TensorData};

/// The storage of one batch; reused from batch to batch.
#[derive(Debug, Default)]
pub(crate) struct Buffers {
    pub logmel: Vec<f32>,
    pub labels: Vec<i64>,
    pub teacher_logits: Vec<f32>,
    pub teacher_mask: Vec<f32>,
    pub device_ids: Vec<i64>,
    pub rows: Vec<u32>,
}

impl Buffers {
    /// Empty buffers with room for `batch` rows.
    pub fn with_capacity(batch: usize, logmel_len: usize, n_classes: usize) -> Self {
        Self {
            logmel: Vec::with_capacity(batch * logmel_len),
            labels: Vec::with_capacity(batch),
            teacher_logits: Vec::with_capacity(batch * n_classes),
            teacher_mask: Vec::with_capacity(batch),
            device_ids: Vec::with_capacity(batch),
            rows: Vec::with_capacity(batch),
        }
    }

    /// Empties the buffers, keeping their capacity.
    pub fn clear(&mut self) {
        self.logmel.clear();
        self.labels.clear();
        self.teacher_logits.clear();
        self.teacher_mask.clear();
        self.device_ids.clear();
        self.rows.clear();
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
        self.buf.rows.len()
    }

    /// True when the batch has no rows.
    pub fn is_empty(&self) -> bool {
        self.buf.rows.is_empty()
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
        &self.buf.logmel
    }

    /// Label indices (`-1` where unknown).
    pub fn labels(&self) -> &[i64] {
        &self.buf.labels
    }

    /// Teacher logits `[B, n_classes]` row-major (zeros where missing).
    pub fn teacher_logits(&self) -> &[f32] {
        &self.buf.teacher_logits
    }

    /// 1 where the row has teacher logits, 0 otherwise.
    pub fn teacher_mask(&self) -> &[f32] {
        &self.buf.teacher_mask
    }

    /// Device indices.
    pub fn device_ids(&self) -> &[i64] {
        &self.buf.device_ids
    }

    /// Global row ids, for [`super::ShardSet::row_info`].
    pub fn rows(&self) -> &[u32] {
        &self.buf.rows
    }

    /// Copies the batch into tensors on `device` (one copy per field, per batch).
    pub fn to_tensors(&self, device: &Device) -> TensorBatch {
        let b = self.len();
        let f = |v: &[f32], shape: Vec<usize>| TensorData::new(v.to_vec(), shape);
        let i = |v: &[i64]| TensorData::new(v.to_vec(), [v.len()]);
        TensorBatch {
            logmel: Tensor::from_data(
                f(&self.buf.logmel, vec![b, 1, self.n_mels, self.n_frames]),
                device,
            ),
            labels: Tensor::from_data(i(&self.buf.labels), device),
            teacher_logits: Tensor::from_data(
                f(&self.buf.teacher_logits, vec![b, self.n_classes]),
                device,
            ),
            teacher_mask: Tensor::from_data(f(&self.buf.teacher_mask, vec![b]), device),
            device_ids: Tensor::from_data(i(&self.buf.device_ids), device),
            rows: self.buf.rows.clone(),
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
