//! The loader: epoch iteration with a background prefetch thread that decodes row groups (in
//! parallel with rayon) and copies the selected rows into recycled batch buffers.

use std::sync::mpsc::{Receiver, Sender, SyncSender, channel, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use arrow_array::Array;
use arrow_array::cast::AsArray;
use arrow_array::types::{Float16Type, Float32Type};
use arrow_schema::DataType;
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
    /// With [`LoaderConfig::prefetch_next_epoch`]: the producer of a finished epoch, already
    /// decoding the next one, waiting for [`Loader::epoch`] to ask for it.
    parked: Arc<Mutex<Option<Stream>>>,
}

/// A running producer thread and the receiving end of its batches.
struct Stream {
    rx: Option<Receiver<Result<HostBatch>>>,
    handle: Option<JoinHandle<()>>,
    /// The epoch whose batches come next.
    next_epoch: u64,
}

impl Drop for Stream {
    fn drop(&mut self) {
        // Closing the channel makes the producer's next send fail, so it stops.
        self.rx = None;
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
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
            parked: Arc::new(Mutex::new(None)),
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
        let first_batch = first_batch.min(n_batches);
        *self.position.lock().expect("position lock") = (epoch, first_batch);
        // The parked producer when it is already on this epoch; any other one is stopped.
        let parked = self.parked.lock().expect("parked lock").take();
        let stream = match parked {
            Some(s) if s.next_epoch == epoch && first_batch == 0 => s,
            _ => self.start(epoch, first_batch),
        };
        EpochIter {
            stream: Some(stream),
            parked: Arc::clone(&self.parked),
            continuous: self.cfg.prefetch_next_epoch,
            position: Arc::clone(&self.position),
            epoch,
            n_batches,
            remaining: n_batches - first_batch,
        }
    }

    /// Starts a producer thread at batch `first_batch` of epoch `epoch`.
    fn start(&self, epoch: u64, first_batch: u64) -> Stream {
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
        Stream {
            rx: Some(rx),
            handle: Some(handle),
            next_epoch: epoch,
        }
    }
}

/// The batches of one epoch, decoded ahead by a background thread. Dropping it before its end
/// stops the thread; at its end the thread is parked, already decoding the next epoch, when
/// [`LoaderConfig::prefetch_next_epoch`] is on.
pub struct EpochIter {
    stream: Option<Stream>,
    parked: Arc<Mutex<Option<Stream>>>,
    continuous: bool,
    position: Arc<Mutex<(u64, u64)>>,
    epoch: u64,
    n_batches: u64,
    /// Batches of this epoch still to come.
    remaining: u64,
}

impl EpochIter {
    /// Ends the epoch: parks the producer for the next epoch, or stops it.
    fn finish(&mut self) {
        if let Some(mut s) = self.stream.take()
            && self.continuous
        {
            s.next_epoch = self.epoch + 1;
            *self.parked.lock().expect("parked lock") = Some(s);
        }
    }
}

impl Iterator for EpochIter {
    type Item = Result<HostBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            self.finish();
            return None;
        }
        let stream = self.stream.as_mut()?;
        match stream.rx.as_ref()?.recv() {
            Ok(Ok(b)) => {
                let next = b.index() + 1;
                *self.position.lock().expect("position lock") = if next >= self.n_batches {
                    (self.epoch + 1, 0)
                } else {
                    (self.epoch, next)
                };
                self.remaining -= 1;
                if self.remaining == 0 {
                    self.finish();
                }
                Some(Ok(b))
            }
            Ok(Err(e)) => {
                self.stream = None;
                Some(Err(e))
            }
            Err(_) => {
                // The producer ended early: a panic is an error, anything else the end.
                let mut s = self.stream.take()?;
                s.rx = None;
                let handle = s.handle.take()?;
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

/// A row group to decode: its id, its selected local rows (ascending) and their log-mel slots.
type RowGroupJob<'a> = (u32, Vec<u32>, Vec<&'a mut [f32]>);

/// An epoch's order and the position ranges of its windows still to produce.
struct EpochWindows {
    order: Vec<u32>,
    windows: Vec<std::ops::Range<usize>>,
    /// End of the produced positions (the last partial batch dropped with `drop_last`).
    end: usize,
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

    /// The epoch order of `epoch` and its windows' position ranges, from batch `first_batch`.
    fn epoch_windows(&self, epoch: u64, first_batch: u64) -> EpochWindows {
        let order = self
            .plan
            .epoch_order(&self.inner, self.cfg.seed, epoch, &self.cfg);
        let bs = self.cfg.batch_size;
        let end = if self.cfg.drop_last {
            order.order.len() / bs * bs
        } else {
            order.order.len()
        };
        let start = (first_batch as usize).saturating_mul(bs).min(end);
        let windows = order
            .windows
            .iter()
            .filter_map(|w| {
                let (lo, hi) = (w.start.max(start), w.end.min(end));
                (lo < hi).then_some(lo..hi)
            })
            .collect();
        EpochWindows {
            order: order.order,
            windows,
            end,
        }
    }

    /// Produces the batches of `self.epoch` from `self.first_batch` and, with
    /// `prefetch_next_epoch`, of the following epochs until the consumer is gone.
    ///
    /// The windows (of this epoch, then of the next) form one sequence: window k + 1 is decoded
    /// (rayon, one task per row group) straight into its batches while the finished batches of
    /// window k are sent, so decoding overlaps the consumer, also across an epoch boundary.
    fn produce(&self, tx: &SyncSender<Result<HostBatch>>) -> Result<()> {
        let bs = self.cfg.batch_size;
        let continuous = self.cfg.prefetch_next_epoch && self.plan.epoch_len() > 0;
        let mut epoch = self.epoch;
        let mut cur = self.epoch_windows(epoch, self.first_batch);
        let mut open = Open {
            first: self.first_batch,
            batches: Vec::new(),
        };
        let mut w = 0;
        if let Some(range) = cur.windows.first() {
            self.fill_window(&cur.order, range.clone(), &mut open)?;
        }
        loop {
            // The finished batches of window w: all but a partial last one.
            let complete = match cur.windows.get(w) {
                Some(range) if range.end != cur.end => range.end / bs - open.first as usize,
                _ => open.batches.len(),
            };
            let done: Vec<Buffers> = open.batches.drain(..complete).collect();
            let first_done = open.first;
            open.first += complete as u64;
            // The next window: of this epoch, else of the next (a fresh epoch order).
            let mut next_epoch = None;
            let next_range = if w + 1 < cur.windows.len() {
                Some(cur.windows[w + 1].clone())
            } else if continuous {
                let following = self.epoch_windows(epoch + 1, 0);
                open = Open {
                    first: 0,
                    batches: Vec::new(),
                };
                let range = following.windows.first().cloned();
                next_epoch = Some(following);
                range
            } else {
                None
            };
            let order: &[u32] = next_epoch.as_ref().map_or(&cur.order, |e| &e.order);
            let (filled, stopped) = std::thread::scope(|s| {
                let ahead = next_range.map(|range| {
                    let open = &mut open;
                    s.spawn(move || self.fill_window(order, range, open))
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
            match next_epoch {
                Some(e) => {
                    cur = e;
                    epoch += 1;
                    w = 0;
                    if cur.windows.is_empty() {
                        return Ok(());
                    }
                }
                None if w + 1 < cur.windows.len() => w += 1,
                None => return Ok(()),
            }
        }
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
        let mut jobs: Vec<RowGroupJob> = Vec::new();
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
                // float32 values as they are, float16 widened to f32 (exactly).
                let wide: Vec<f32>;
                let values: &[f32] = match list.values().data_type() {
                    DataType::Float16 => {
                        use half::slice::HalfFloatSliceExt;
                        let h = list.values().as_primitive::<Float16Type>().values();
                        wide = h.to_f32_vec();
                        &wide
                    }
                    _ => list.values().as_primitive::<Float32Type>().values(),
                };
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
