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

/// The teacher logits of the selected rows of one row group (their log-mel is decoded straight
/// into the batch buffers).
struct RowGroupLogits {
    /// Teacher logits of the selected rows, `[k, n_classes]` (zeros where missing).
    logits: Vec<f32>,
    /// Whether row `k` has teacher logits.
    has_logits: Vec<bool>,
}

/// Batches under construction: `batches[i]` is batch `first + i` of the epoch.
struct Open {
    first: u64,
    batches: Vec<Buffers>,
}

impl Job {
    fn run(self, tx: &SyncSender<Result<HostBatch>>) {
        if let Err(e) = self.produce(tx) {
            let _ = tx.send(Err(e));
        }
    }

    fn take_buffers(&self) -> Buffers {
        let recycled = self.pool_rx.lock().ok().and_then(|rx| rx.try_recv().ok());
        let mut buf = recycled.unwrap_or_default();
        buf.reset(
            self.cfg.batch_size,
            self.inner.meta.frontend.logmel_len(),
            self.inner.meta.n_classes(),
        );
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
        // The windows' position ranges in the epoch order, clipped to [start, end).
        let windows: Vec<std::ops::Range<usize>> = order
            .windows
            .iter()
            .filter_map(|w| {
                let (lo, hi) = (w.start.max(start), w.end.min(end));
                (lo < hi).then_some(lo..hi)
            })
            .collect();
        let order_rows: &[u32] = &order.order;
        let mut open = Open {
            first: self.first_batch,
            batches: Vec::new(),
        };
        // Window k + 1 is decoded (rayon, one task per row group) straight into its batches
        // while the finished batches of window k are sent, so decoding overlaps the consumer.
        if let Some(w) = windows.first() {
            self.fill_window(order_rows, w.clone(), &mut open)?;
        }
        for w in 1..=windows.len() {
            // Every batch but a partial last one is complete.
            let last_pos = windows[w - 1].end;
            let complete = if last_pos == end {
                open.batches.len()
            } else {
                (last_pos / bs) as usize - open.first as usize
            };
            let done: Vec<Buffers> = open.batches.drain(..complete).collect();
            let first_done = open.first;
            open.first += complete as u64;
            let (filled, stopped) = std::thread::scope(|s| {
                let ahead = windows.get(w).map(|range| {
                    let open = &mut open;
                    s.spawn(move || self.fill_window(order_rows, range.clone(), open))
                });
                let mut stopped = false;
                for (i, buf) in done.into_iter().enumerate() {
                    if !self.send(tx, buf, first_done + i as u64) {
                        stopped = true;
                        break;
                    }
                }
                let filled = ahead.map(|h| h.join().expect("decode thread"));
                (filled, stopped)
            });
            if stopped {
                return Ok(());
            }
            filled.transpose()?;
        }
        Ok(())
    }

    /// Fills the epoch positions `range` of `order` into the open batches (opening new ones):
    /// labels, devices and row ids directly, log-mel decoded in parallel per row group straight
    /// into each row's slot, then the teacher logits.
    fn fill_window(
        &self,
        order: &[u32],
        range: std::ops::Range<usize>,
        open: &mut Open,
    ) -> Result<()> {
        let bs = self.cfg.batch_size;
        let logmel_len = self.inner.meta.frontend.logmel_len();
        let n_classes = self.inner.meta.n_classes();
        let last_batch = ((range.end - 1) / bs) as u64;
        while open.first + (open.batches.len() as u64) <= last_batch {
            open.batches.push(self.take_buffers());
        }
        let slot = |pos: usize| {
            let b = (pos / bs) as u64 - open.first;
            (b as usize, pos % bs)
        };
        // Small fields, and the (row group, local row, position) of every row.
        let mut by_rg: Vec<(u32, u32, usize)> = Vec::with_capacity(range.len());
        for pos in range.clone() {
            let row = order[pos];
            let (b, i) = slot(pos);
            let buf = &mut open.batches[b];
            let (label, device, ..) = self.inner.row(row);
            buf.labels[i] = label as i64;
            buf.device_ids[i] = device as i64;
            buf.rows[i] = row;
            buf.n = buf.n.max(i + 1);
            let rg = self.inner.row_group_of[row as usize];
            by_rg.push((rg, row - self.inner.row_groups[rg as usize].first_row, pos));
        }
        by_rg.sort_unstable();
        // The log-mel slot of every position of the window.
        let first_pos = range.start;
        let mut slots: Vec<Option<&mut [f32]>> = Vec::with_capacity(range.len());
        for (b, buf) in open.batches.iter_mut().enumerate() {
            let batch_start = (open.first as usize + b) * bs;
            for (i, s) in buf.logmel.chunks_exact_mut(logmel_len).enumerate() {
                let pos = batch_start + i;
                if range.contains(&pos) {
                    debug_assert_eq!(pos - first_pos, slots.len());
                    slots.push(Some(s));
                }
            }
        }
        // One job per row group: its selected local rows (ascending) and their slots.
        let mut jobs: Vec<(u32, Vec<u32>, Vec<&mut [f32]>)> = Vec::new();
        for &(rg, local, pos) in &by_rg {
            let dest = slots[pos - first_pos]
                .take()
                .expect("one slot per position");
            match jobs.last_mut() {
                Some((g, l, d)) if *g == rg => {
                    l.push(local);
                    d.push(dest);
                }
                _ => jobs.push((rg, vec![local], vec![dest])),
            }
        }
        let decoded: Vec<RowGroupLogits> = jobs
            .into_par_iter()
            .map(|(rg, local_rows, mut dests)| self.decode_row_group(rg, &local_rows, &mut dests))
            .collect::<Result<_>>()?;
        // Teacher logits, in the jobs' (row group, local row) order.
        let mut k = by_rg.iter();
        for d in &decoded {
            for (j, &has) in d.has_logits.iter().enumerate() {
                let &(_, _, pos) = k.next().expect("one decoded row per position");
                let (b, i) = slot(pos);
                let buf = &mut open.batches[b];
                buf.teacher_logits[i * n_classes..(i + 1) * n_classes]
                    .copy_from_slice(&d.logits[j * n_classes..(j + 1) * n_classes]);
                buf.teacher_mask[i] = if has { 1.0 } else { 0.0 };
            }
        }
        Ok(())
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

    /// Decodes the selected `local_rows` (ascending) of row group `rg_id`: log-mel into
    /// `dests[k]` (one slot of `logmel_len` values per row), teacher logits returned.
    fn decode_row_group(
        &self,
        rg_id: u32,
        local_rows: &[u32],
        dests: &mut [&mut [f32]],
    ) -> Result<RowGroupLogits> {
        let r = self.inner.row_groups[rg_id as usize];
        let shard = &self.inner.shards[r.shard as usize];
        let pq = |e: &dyn std::fmt::Display| LoaderError::Parquet {
            path: shard.path.display().to_string(),
            problem: format!("row group {}: {e}", r.rg),
        };
        // Row selection: runs of selected / skipped rows.
        let mut selectors = Vec::new();
        let mut next = 0u32;
        for &l in local_rows {
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
        let fast = super::pages::decode_logmel(shard, r.rg as usize, logmel_len, local_rows, dests)
            .map_err(|e| pq(&format!("column '{}': {e}", col::LOGMEL)))?;
        if !fast {
            let mut rows = dests.iter_mut();
            for batch in read(&shard.logmel_mask)? {
                let batch = batch.map_err(|e| pq(&e))?;
                let list = batch
                    .column_by_name(col::LOGMEL)
                    .expect("projected")
                    .as_fixed_size_list();
                let values = list.values().as_primitive::<Float32Type>().values();
                if values.len() != list.len() * logmel_len {
                    return Err(pq(&"log-mel rows of the wrong length".to_string()));
                }
                for v in values.chunks_exact(logmel_len) {
                    let dest = rows
                        .next()
                        .ok_or_else(|| pq(&"more log-mel rows than selected"))?;
                    dest.copy_from_slice(v);
                }
            }
            if rows.next().is_some() {
                return Err(pq(&"log-mel rows missing".to_string()));
            }
        }
        shard.release_row_group(r.rg as usize);
        Ok(RowGroupLogits { logits, has_logits })
    }
}
