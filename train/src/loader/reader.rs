//! The loader: epoch iteration with a background prefetch thread that decodes row groups (in
//! parallel with rayon) and copies the selected rows into recycled batch buffers.

use std::sync::mpsc::{Receiver, Sender, SyncSender, channel, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use arrow_array::Array;
use arrow_array::cast::AsArray;
use arrow_array::types::Float32Type;
use data_specs::col;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReaderBuilder, RowSelection, RowSelector};
use rayon::prelude::*;

use super::batch::{Buffers, HostBatch};
use super::plan::{LoaderConfig, LoaderState, Plan, Selection};
use super::shards::{Inner, ShardSet};
use super::{LoaderError, Result};

/// Iterates a selection of a shard set in shuffled batches, epoch after epoch.
pub struct Loader {
    set: ShardSet,
    plan: Arc<Plan>,
    cfg: LoaderConfig,
    /// `(epoch, next batch)` as seen by the consumer.
    position: Arc<Mutex<(u64, u64)>>,
    pool_tx: Sender<Buffers>,
    pool_rx: Arc<Mutex<Receiver<Buffers>>>,
}

impl std::fmt::Debug for Loader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loader")
            .field("cfg", &self.cfg)
            .field("epoch_len", &self.plan.epoch_len())
            .finish()
    }
}

impl Loader {
    /// A loader over the rows of `set` chosen by `sel`.
    pub fn new(set: &ShardSet, sel: Selection, cfg: LoaderConfig) -> Result<Self> {
        if cfg.batch_size == 0 {
            return Err(LoaderError::Config("batch_size must be at least 1".into()));
        }
        let plan = Plan::new(&set.inner, &sel)?;
        let (pool_tx, pool_rx) = channel();
        Ok(Self {
            set: set.clone(),
            plan: Arc::new(plan),
            cfg,
            position: Arc::new(Mutex::new((0, 0))),
            pool_tx,
            pool_rx: Arc::new(Mutex::new(pool_rx)),
        })
    }

    /// A loader positioned at `state` (its seed replaces `cfg.seed`); continue with
    /// [`Loader::resume_epoch`].
    pub fn resume(
        set: &ShardSet,
        sel: Selection,
        cfg: LoaderConfig,
        state: LoaderState,
    ) -> Result<Self> {
        let loader = Self::new(
            set,
            sel,
            LoaderConfig {
                seed: state.seed,
                ..cfg
            },
        )?;
        *loader.position.lock().expect("position lock") = (state.epoch, state.batch);
        Ok(loader)
    }

    /// The configuration.
    pub fn config(&self) -> &LoaderConfig {
        &self.cfg
    }

    /// Rows per epoch (one per selected clip, plus replay rows).
    pub fn epoch_len(&self) -> usize {
        self.plan.epoch_len()
    }

    /// Batches per epoch.
    pub fn batches_per_epoch(&self) -> u64 {
        let n = self.epoch_len();
        let b = self.cfg.batch_size;
        (if self.cfg.drop_last {
            n / b
        } else {
            n.div_ceil(b)
        }) as u64
    }

    /// Where the loader stands: the epoch and the index of the next batch the consumer will
    /// receive. After the last batch of epoch `e` it is `(e + 1, 0)`.
    pub fn state(&self) -> LoaderState {
        let (epoch, batch) = *self.position.lock().expect("position lock");
        LoaderState {
            seed: self.cfg.seed,
            epoch,
            batch,
        }
    }

    /// The rows of epoch `epoch` in the order they will be batched (before `drop_last`).
    pub fn epoch_order(&self, epoch: u64) -> Vec<u32> {
        self.plan
            .epoch_order(&self.set.inner, self.cfg.seed, epoch, &self.cfg)
            .order
    }

    /// The batches of epoch `epoch`, from the first.
    pub fn epoch(&self, epoch: u64) -> EpochIter {
        self.epoch_from(epoch, 0)
    }

    /// The remaining batches of the epoch recorded in [`Loader::state`] (after
    /// [`Loader::resume`], or after an interrupted epoch).
    pub fn resume_epoch(&self) -> EpochIter {
        let s = self.state();
        self.epoch_from(s.epoch, s.batch)
    }

    /// The batches of epoch `epoch` starting at batch `first_batch`.
    pub fn epoch_from(&self, epoch: u64, first_batch: u64) -> EpochIter {
        let n_batches = self.batches_per_epoch();
        *self.position.lock().expect("position lock") = (epoch, first_batch.min(n_batches));
        let (tx, rx) = sync_channel(self.cfg.prefetch.max(1));
        let job = Job {
            inner: Arc::clone(&self.set.inner),
            plan: Arc::clone(&self.plan),
            cfg: self.cfg.clone(),
            epoch,
            first_batch,
            pool_tx: self.pool_tx.clone(),
            pool_rx: Arc::clone(&self.pool_rx),
        };
        let handle = std::thread::Builder::new()
            .name(format!("loader-epoch-{epoch}"))
            .spawn(move || job.run(&tx))
            .expect("spawning the loader thread");
        EpochIter {
            rx: Some(rx),
            handle: Some(handle),
            position: Arc::clone(&self.position),
            epoch,
            n_batches,
        }
    }
}

/// The batches of one epoch, decoded ahead by a background thread. Dropping it stops the
/// thread.
pub struct EpochIter {
    rx: Option<Receiver<Result<HostBatch>>>,
    handle: Option<JoinHandle<()>>,
    position: Arc<Mutex<(u64, u64)>>,
    epoch: u64,
    n_batches: u64,
}

impl Iterator for EpochIter {
    type Item = Result<HostBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        let rx = self.rx.as_ref()?;
        match rx.recv() {
            Ok(item) => {
                if let Ok(b) = &item {
                    let next = b.index() + 1;
                    *self.position.lock().expect("position lock") = if next >= self.n_batches {
                        (self.epoch + 1, 0)
                    } else {
                        (self.epoch, next)
                    };
                } else {
                    self.rx = None;
                }
                Some(item)
            }
            Err(_) => {
                self.rx = None;
                let handle = self.handle.take()?;
                match handle.join() {
                    Ok(()) => None,
                    Err(p) => Some(Err(LoaderError::Thread(
                        p.downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| p.downcast_ref::<String>().cloned())
                            .unwrap_or_default(),
                    ))),
                }
            }
        }
    }
}

impl Drop for EpochIter {
    fn drop(&mut self) {
        // Closing the channel makes the producer's next send fail, so it stops.
        self.rx = None;
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// What the prefetch thread needs.
struct Job {
    inner: Arc<Inner>,
    plan: Arc<Plan>,
    cfg: LoaderConfig,
    epoch: u64,
    first_batch: u64,
    pool_tx: Sender<Buffers>,
    pool_rx: Arc<Mutex<Receiver<Buffers>>>,
}

/// The decoded `logmel` and `teacher_logits` of the selected rows of one row group.
struct Decoded {
    /// Row group id in the set.
    rg: u32,
    /// Selected rows, local to the row group, ascending; position `k` = index in the buffers.
    local_rows: Vec<u32>,
    /// Log-mel of the selected rows, `[k, logmel_len]`.
    logmel: Vec<f32>,
    /// Teacher logits of the selected rows, `[k, n_classes]` (zeros where missing).
    logits: Vec<f32>,
    /// Whether row `k` has teacher logits.
    has_logits: Vec<bool>,
}

impl Job {
    fn run(self, tx: &SyncSender<Result<HostBatch>>) {
        if let Err(e) = self.produce(tx) {
            let _ = tx.send(Err(e));
        }
    }

    fn take_buffers(&self) -> Buffers {
        let fe = &self.inner.meta.frontend;
        let recycled = self.pool_rx.lock().ok().and_then(|rx| rx.try_recv().ok());
        let mut buf = recycled.unwrap_or_else(|| {
            Buffers::with_capacity(
                self.cfg.batch_size,
                fe.logmel_len(),
                self.inner.meta.n_classes(),
            )
        });
        buf.clear();
        buf
    }

    fn produce(&self, tx: &SyncSender<Result<HostBatch>>) -> Result<()> {
        let order = self
            .plan
            .epoch_order(&self.inner, self.cfg.seed, self.epoch, &self.cfg);
        let bs = self.cfg.batch_size;
        let end = if self.cfg.drop_last {
            order.order.len() / bs * bs
        } else {
            order.order.len()
        };
        let start = (self.first_batch as usize).saturating_mul(bs).min(end);
        let fe = &self.inner.meta.frontend;
        let logmel_len = fe.logmel_len();
        let n_classes = self.inner.meta.n_classes();
        let mut batch_index = self.first_batch;
        let mut buf = self.take_buffers();
        // The windows' row ranges, clipped to [start, end).
        let windows: Vec<&[u32]> = order
            .windows
            .iter()
            .filter_map(|w| {
                let (lo, hi) = (w.start.max(start), w.end.min(end));
                (lo < hi).then(|| &order.order[lo..hi])
            })
            .collect();
        // Window k + 1 is decoded (rayon, one task per row group) while the rows of window k
        // are copied into batches and sent, so decoding overlaps copying and the consumer.
        let mut next = match windows.first() {
            Some(rows) => Some(self.decode_window(rows)?),
            None => None,
        };
        for (w, rows) in windows.iter().enumerate() {
            let decoded = next.take().expect("decoded window");
            let (following, stopped) = std::thread::scope(|s| {
                let ahead = windows
                    .get(w + 1)
                    .map(|rows| s.spawn(move || self.decode_window(rows)));
                let stopped = !self.copy_window(
                    tx,
                    rows,
                    &decoded,
                    &mut buf,
                    &mut batch_index,
                    (logmel_len, n_classes, bs),
                );
                let following = ahead.map(|h| h.join().expect("decode thread"));
                (following, stopped)
            });
            if stopped {
                return Ok(());
            }
            next = following.transpose()?;
        }
        if !buf.rows.is_empty() {
            self.send(tx, buf, batch_index);
        }
        Ok(())
    }

    /// Copies the rows of a decoded window into batches, sending each full one; false when
    /// the consumer is gone.
    fn copy_window(
        &self,
        tx: &SyncSender<Result<HostBatch>>,
        rows: &[u32],
        decoded: &[Decoded],
        buf: &mut Buffers,
        batch_index: &mut u64,
        (logmel_len, n_classes, bs): (usize, usize, usize),
    ) -> bool {
        for &row in rows {
            let rg = self.inner.row_group_of[row as usize];
            let d = decoded
                .binary_search_by_key(&rg, |d| d.rg)
                .map(|i| &decoded[i])
                .expect("row group decoded");
            let local = row - self.inner.row_groups[rg as usize].first_row;
            let k = d.local_rows.binary_search(&local).expect("row decoded");
            buf.logmel
                .extend_from_slice(&d.logmel[k * logmel_len..(k + 1) * logmel_len]);
            buf.teacher_logits
                .extend_from_slice(&d.logits[k * n_classes..(k + 1) * n_classes]);
            buf.teacher_mask
                .push(if d.has_logits[k] { 1.0 } else { 0.0 });
            let (label, device, ..) = self.inner.row(row);
            buf.labels.push(label as i64);
            buf.device_ids.push(device as i64);
            buf.rows.push(row);
            if buf.rows.len() == bs {
                let full = std::mem::replace(buf, self.take_buffers());
                if !self.send(tx, full, *batch_index) {
                    return false;
                }
                *batch_index += 1;
            }
        }
        true
    }

    /// Sends a batch; false when the consumer is gone.
    fn send(&self, tx: &SyncSender<Result<HostBatch>>, buf: Buffers, index: u64) -> bool {
        let fe = &self.inner.meta.frontend;
        let batch = HostBatch {
            buf,
            n_mels: fe.n_mels,
            n_frames: fe.n_frames(),
            n_classes: self.inner.meta.n_classes(),
            index,
            pool: Some(self.pool_tx.clone()),
        };
        tx.send(Ok(batch)).is_ok()
    }

    /// Decodes the row groups of a window in parallel; sorted by row group id.
    fn decode_window(&self, rows: &[u32]) -> Result<Vec<Decoded>> {
        let mut by_rg: Vec<(u32, u32)> = rows
            .iter()
            .map(|&r| {
                let rg = self.inner.row_group_of[r as usize];
                (rg, r - self.inner.row_groups[rg as usize].first_row)
            })
            .collect();
        by_rg.sort_unstable();
        let mut jobs: Vec<(u32, Vec<u32>)> = Vec::new();
        for (rg, local) in by_rg {
            match jobs.last_mut() {
                Some((g, v)) if *g == rg => v.push(local),
                _ => jobs.push((rg, vec![local])),
            }
        }
        jobs.into_par_iter()
            .map(|(rg, local_rows)| self.decode_row_group(rg, local_rows))
            .collect()
    }

    fn decode_row_group(&self, rg_id: u32, local_rows: Vec<u32>) -> Result<Decoded> {
        let r = self.inner.row_groups[rg_id as usize];
        let shard = &self.inner.shards[r.shard as usize];
        let pq = |e: &dyn std::fmt::Display| LoaderError::Parquet {
            path: shard.path.display().to_string(),
            problem: format!("row group {}: {e}", r.rg),
        };
        // Row selection: runs of selected / skipped rows.
        let mut selectors = Vec::new();
        let mut next = 0u32;
        for &l in &local_rows {
            if l > next {
                selectors.push(RowSelector::skip((l - next) as usize));
            }
            match selectors.last_mut() {
                Some(s) if !s.skip && l == next && next > 0 => s.row_count += 1,
                _ => selectors.push(RowSelector::select(1)),
            }
            next = l + 1;
        }
        let selection = RowSelection::from(selectors);
        let read = |mask: &parquet::arrow::ProjectionMask| {
            ParquetRecordBatchReaderBuilder::new_with_metadata(
                shard.bytes.clone(),
                shard.reader_meta.clone(),
            )
            .with_row_groups(vec![r.rg as usize])
            .with_projection(mask.clone())
            .with_row_selection(selection.clone())
            .with_batch_size(local_rows.len().max(1))
            .build()
            .map_err(|e| pq(&e))
        };
        let n = local_rows.len();
        let n_classes = self.inner.meta.n_classes();
        let logmel_len = self.inner.meta.frontend.logmel_len();
        // Teacher logits through Arrow (10 values a row).
        let mut logits = Vec::with_capacity(n * n_classes);
        let mut has_logits = Vec::with_capacity(n);
        for batch in read(&shard.logits_mask)? {
            let batch = batch.map_err(|e| pq(&e))?;
            let list = batch
                .column_by_name(col::TEACHER_LOGITS)
                .expect("projected")
                .as_fixed_size_list();
            let values = list.values().as_primitive::<Float32Type>().values();
            for i in 0..list.len() {
                let valid = list.is_valid(i);
                has_logits.push(valid);
                if valid {
                    logits.extend_from_slice(&values[i * n_classes..(i + 1) * n_classes]);
                } else {
                    logits.extend(std::iter::repeat_n(0.0, n_classes));
                }
            }
        }
        if has_logits.len() != n {
            return Err(pq(&format!(
                "decoded {} rows, expected {n}",
                has_logits.len()
            )));
        }
        // Log-mel: page-level fast path, Arrow reader otherwise.
        let mut logmel = vec![0f32; n * logmel_len];
        let fast =
            super::pages::decode_logmel(shard, r.rg as usize, logmel_len, &local_rows, &mut logmel)
                .map_err(|e| pq(&format!("column '{}': {e}", col::LOGMEL)))?;
        if !fast {
            let mut at = 0;
            for batch in read(&shard.logmel_mask)? {
                let batch = batch.map_err(|e| pq(&e))?;
                let list = batch
                    .column_by_name(col::LOGMEL)
                    .expect("projected")
                    .as_fixed_size_list();
                let values = list.values().as_primitive::<Float32Type>().values();
                let m = values.len().min(logmel.len() - at);
                logmel[at..at + m].copy_from_slice(&values[..m]);
                at += m;
            }
            if at != logmel.len() {
                return Err(pq(&"log-mel rows missing".to_string()));
            }
        }
        shard.release_row_group(r.rg as usize);
        Ok(Decoded {
            rg: rg_id,
            local_rows,
            logmel,
            logits,
            has_logits,
        })
    }
}
