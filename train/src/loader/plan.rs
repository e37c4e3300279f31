//! Row selection, per-epoch variant sampling and the row-group-aware shuffle (see the module
//! documentation of [`super`] for the scheme).

use std::collections::HashMap;

use data_specs::hash::{GOLDEN_GAMMA, fnv1a64, splitmix64_mix};
use data_specs::{ClipSet, SPLITS, Variant};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::shards::Inner;
use super::{LoaderError, Result};

/// Which rows an epoch draws from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Selection {
    /// Set of the clips.
    pub set: ClipSet,
    /// DCASE2024 training split in percent (5, 10, 25, 50, 100): a clip is in split `P` when
    /// its smallest split is `<= P`. `None` keeps every clip of the set (with or without split).
    pub max_split: Option<u8>,
    /// Device names to keep (`None`: all). Filters every row by its own `device_id`.
    pub devices: Option<Vec<String>>,
    /// Include replay rows (`replay` and `replay-sim`) as extra training examples.
    pub replay: bool,
    /// Probability of drawing one of a clip's DIR rows instead of its original (paper: 0.6).
    pub p_dir: f64,
    /// Keep or leave out the rows of one location fold (every variant of every clip recorded
    /// at a location of the fold; folds partition the training locations of `max_split`, see
    /// [`LocationFolds`]): an out-of-fold teacher trains without fold k and scores only fold
    /// k. `None`: every fold.
    #[serde(default)]
    pub fold: Option<FoldFilter>,
}

/// Rows of one [`Fold`] to keep or to leave out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FoldFilter {
    /// Every row except those of the fold (training an out-of-fold model).
    Without(Fold),
    /// Only the rows of the fold (scoring the clips that model did not see).
    Only(Fold),
}

impl FoldFilter {
    /// True when a row whose location lies in fold `fold_of` (`None`: in no fold, i.e. not a
    /// training location of the split) passes the filter.
    pub fn keeps(&self, fold_of: Option<u32>) -> bool {
        match self {
            Self::Without(f) => fold_of != Some(f.index),
            Self::Only(f) => fold_of == Some(f.index),
        }
    }

    /// The fold.
    pub fn fold(&self) -> Fold {
        match *self {
            Self::Without(f) | Self::Only(f) => f,
        }
    }
}

/// Fold `index` of `count` (1-based, as `k/K` on the command line) of a K-fold partition of
/// the training clips by recording location (`identifier`): every clip of a location, and
/// every variant of a clip, falls in the same fold, so a model trained without fold k has not
/// heard the place of any clip in it (the DCASE train/test split is by location too). The
/// partition is [`LocationFolds::balanced`] over the original training clips of the split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fold {
    /// Fold number, `1..=count`.
    pub index: u32,
    /// Number of folds, at least 2.
    pub count: u32,
}

impl Fold {
    /// True for `1 <= index <= count` with `count >= 2`.
    pub fn is_valid(&self) -> bool {
        self.count >= 2 && (1..=self.count).contains(&self.index)
    }

    /// Stable 64-bit key of a location identifier (FNV-1a of its UTF-8 bytes, then the
    /// splitmix64 finaliser).
    pub fn key(identifier: &str) -> u64 {
        mix(fnv1a64(identifier.as_bytes()), 0, 0)
    }
}

/// The fold of every location: a partition of locations into `count` folds of nearly equal
/// numbers of clips.
#[derive(Debug, Clone, PartialEq)]
pub struct LocationFolds {
    count: u32,
    fold: HashMap<u64, u32>,
}

impl LocationFolds {
    /// Greedy balanced partition (longest-processing-time rule): locations in decreasing order
    /// of clips (ties by key), each to the fold with the fewest clips so far (ties by lowest
    /// fold). Deterministic in the multiset of `(location key, clips)`; the largest fold
    /// exceeds the mean by less than the largest location.
    pub fn balanced(clips_per_location: &HashMap<u64, usize>, count: u32) -> Self {
        let mut locations: Vec<(u64, usize)> =
            clips_per_location.iter().map(|(&k, &n)| (k, n)).collect();
        locations.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut load = vec![0usize; count as usize];
        let mut fold = HashMap::with_capacity(locations.len());
        for (key, n) in locations {
            let f = (0..load.len()).min_by_key(|&f| (load[f], f)).unwrap_or(0);
            load[f] += n;
            fold.insert(key, f as u32 + 1);
        }
        Self { count, fold }
    }

    /// Number of folds.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The fold (`1..=count`) of a location key; `None` for a location of no training clip.
    pub fn fold_of(&self, key: u64) -> Option<u32> {
        self.fold.get(&key).copied()
    }
}

impl std::fmt::Display for Fold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl std::str::FromStr for Fold {
    type Err = String;

    /// Parses `k/K` with `2 <= K` and `1 <= k <= K`.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || format!("'{s}' is not a fold k/K with 1 <= k <= K and K >= 2");
        let (k, n) = s.split_once('/').ok_or_else(bad)?;
        let index: u32 = k.trim().parse().map_err(|_| bad())?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        let fold = Self { index, count };
        if !fold.is_valid() {
            return Err(bad());
        }
        Ok(fold)
    }
}

impl Selection {
    /// Training rows of split `max_split` with the paper's DIR probability 0.6 and replay on.
    pub fn train(max_split: Option<u8>) -> Self {
        Self {
            max_split,
            replay: true,
            p_dir: 0.6,
            ..Self::originals(ClipSet::Train)
        }
    }

    /// The original rows of `set` (no DIR, no replay rows), every clip of the set: what
    /// evaluation, prediction and the floor read. Narrow it with struct update syntax, e.g.
    /// `Selection { max_split: Some(p), ..Selection::originals(ClipSet::Train) }`.
    pub fn originals(set: ClipSet) -> Self {
        Self {
            set,
            max_split: None,
            devices: None,
            replay: false,
            p_dir: 0.0,
            fold: None,
        }
    }
}

/// Batching and shuffling options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoaderConfig {
    /// Rows per batch.
    pub batch_size: usize,
    /// Seed of the variant draw and the shuffle.
    pub seed: u64,
    /// Shuffle (block shuffle, see [`super`]); off: rows in storage order.
    pub shuffle: bool,
    /// Drop the last partial batch of an epoch.
    pub drop_last: bool,
    /// Batches decoded ahead by the background thread (channel bound).
    pub prefetch: usize,
    /// Minimum rows per shuffle window: whole row groups (in shuffled order) are packed into a
    /// window until it holds this many rows of the epoch; rows are permuted within a window.
    /// Also the unit of decoding, so it bounds the decoded memory.
    pub shuffle_window: usize,
    /// Keep decoding into the next epoch when an epoch's last batch is produced, so that a
    /// consumer iterating epoch after epoch (training) never waits at an epoch boundary. Off
    /// for one-pass loaders (evaluation), where the work would be wasted.
    #[serde(default)]
    pub prefetch_next_epoch: bool,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        Self {
            batch_size: 256,
            seed: 42,
            shuffle: true,
            drop_last: false,
            prefetch: 3,
            shuffle_window: 1024,
            prefetch_next_epoch: false,
        }
    }
}

/// Where a loader stands: enough to resume at exactly the next batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoaderState {
    /// Seed of the loader.
    pub seed: u64,
    /// Epoch in progress (or next to start).
    pub epoch: u64,
    /// Index of the next batch within the epoch.
    pub batch: u64,
}

/// One clip of the selection: its original row and its DIR rows (indices into `dir_rows`).
#[derive(Debug, Clone)]
struct ClipGroup {
    original: Option<u32>,
    dir_start: u32,
    dir_len: u32,
}

/// The selected rows grouped by clip; produces epoch plans.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    groups: Vec<ClipGroup>,
    dir_rows: Vec<u32>,
    /// Replay rows, always in the epoch.
    extra_rows: Vec<u32>,
    p_dir: f64,
}

/// An epoch's order: rows and the windows (ranges of `order`) they are decoded by.
#[derive(Debug, Clone)]
pub(crate) struct EpochOrder {
    pub order: Vec<u32>,
    pub windows: Vec<std::ops::Range<usize>>,
}

/// Decorrelates `(seed, epoch, stream)` into a 64-bit RNG seed: the SplitMix64 finaliser of
/// `seed ^ epoch * golden gamma ^ stream * 0xD1B54A32D192ED03`.
fn mix(seed: u64, epoch: u64, stream: u64) -> u64 {
    splitmix64_mix(
        seed ^ epoch.wrapping_mul(GOLDEN_GAMMA) ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03),
    )
}

impl Plan {
    /// Selects and groups rows.
    pub fn new(inner: &Inner, sel: &Selection) -> Result<Self> {
        if !(0.0..=1.0).contains(&sel.p_dir) {
            return Err(LoaderError::Config(format!(
                "p_dir {} is not a probability",
                sel.p_dir
            )));
        }
        if let Some(f) = sel.fold.map(|f| f.fold())
            && !f.is_valid()
        {
            return Err(LoaderError::Config(format!(
                "holdout fold {f} is not a fold k/K"
            )));
        }
        if let Some(s) = sel.max_split
            && !SPLITS.contains(&s)
        {
            return Err(LoaderError::Config(format!(
                "split {s} is not a DCASE2024 split {SPLITS:?}"
            )));
        }
        let device_ok: Option<Vec<bool>> = match &sel.devices {
            None => None,
            Some(names) => {
                let vocab = &inner.meta.devices;
                let mut ok = vec![false; vocab.len()];
                for n in names {
                    let i = vocab.index_of(n).ok_or_else(|| {
                        LoaderError::Config(format!(
                            "device '{n}' is not in the shards' device vocabulary {:?}",
                            vocab.0
                        ))
                    })?;
                    ok[i] = true;
                }
                Some(ok)
            }
        };
        let folds = sel
            .fold
            .map(|f| (f, inner.location_folds(f.fold().count, sel.max_split)));
        // Originals only outside the training set.
        let train = sel.set == ClipSet::Train;
        let mut by_clip: HashMap<&str, usize> = HashMap::new();
        let mut originals: Vec<Option<u32>> = Vec::new();
        let mut dirs: Vec<Vec<u32>> = Vec::new();
        let mut extra_rows = Vec::new();
        for row in 0..inner.n_rows() as u32 {
            let (_, device, set, split, variant) = inner.row(row);
            if set != sel.set {
                continue;
            }
            if let Some(p) = sel.max_split
                && split.is_none_or(|s| s > p)
            {
                continue;
            }
            if let Some(ok) = &device_ok
                && !ok[device as usize]
            {
                continue;
            }
            if let Some((filter, folds)) = &folds
                && !filter.keeps(folds.fold_of(inner.location_key(row)))
            {
                continue;
            }
            match variant {
                Variant::Replay | Variant::ReplaySim => {
                    if train && sel.replay {
                        extra_rows.push(row);
                    }
                    continue;
                }
                Variant::Dir if !train || sel.p_dir == 0.0 => continue,
                _ => {}
            }
            let next = originals.len();
            let g = *by_clip.entry(inner.clip_id(row)).or_insert(next);
            if g == next {
                originals.push(None);
                dirs.push(Vec::new());
            }
            if variant == Variant::Original {
                if originals[g].is_some() {
                    return Err(LoaderError::BadValue {
                        path: "shard set".into(),
                        column: data_specs::col::CLIP_ID.into(),
                        problem: format!("clip '{}' has two original rows", inner.clip_id(row)),
                    });
                }
                originals[g] = Some(row);
            } else {
                dirs[g].push(row);
            }
        }
        let mut groups = Vec::with_capacity(originals.len());
        let mut dir_rows = Vec::new();
        for (original, d) in originals.into_iter().zip(dirs) {
            groups.push(ClipGroup {
                original,
                dir_start: dir_rows.len() as u32,
                dir_len: d.len() as u32,
            });
            dir_rows.extend(d);
        }
        Ok(Self {
            groups,
            dir_rows,
            extra_rows,
            p_dir: sel.p_dir,
        })
    }

    /// Rows per epoch: one per clip plus the replay rows.
    pub fn epoch_len(&self) -> usize {
        self.groups.len() + self.extra_rows.len()
    }

    /// The rows of epoch `epoch` (variant draw), in storage order.
    ///
    /// For a clip with DIR rows and an original: a DIR row with probability `p_dir`, drawn
    /// uniformly among them; the original otherwise. A clip with DIR rows but no selected
    /// original always gets a DIR row.
    pub fn epoch_rows(&self, seed: u64, epoch: u64) -> Vec<u32> {
        let mut rng = StdRng::seed_from_u64(mix(seed, epoch, 1));
        let mut rows = Vec::with_capacity(self.epoch_len());
        for g in &self.groups {
            let dirs = &self.dir_rows[g.dir_start as usize..(g.dir_start + g.dir_len) as usize];
            let row = match (g.original, dirs.is_empty()) {
                (Some(o), true) => o,
                (original, false) => {
                    let use_dir = original.is_none() || rng.random::<f64>() < self.p_dir;
                    match original {
                        Some(o) if !use_dir => o,
                        _ => dirs[rng.random_range(0..dirs.len())],
                    }
                }
                (None, true) => unreachable!("a group holds at least one row"),
            };
            rows.push(row);
        }
        rows.extend_from_slice(&self.extra_rows);
        rows.sort_unstable();
        rows
    }

    /// The epoch's order and decoding windows.
    pub fn epoch_order(
        &self,
        inner: &Inner,
        seed: u64,
        epoch: u64,
        cfg: &LoaderConfig,
    ) -> EpochOrder {
        let rows = self.epoch_rows(seed, epoch);
        // Runs of rows sharing a row group (rows are sorted, so each row group is one run).
        let mut runs: Vec<std::ops::Range<usize>> = Vec::new();
        let mut start = 0;
        for i in 1..=rows.len() {
            if i == rows.len()
                || inner.row_group_of[rows[i] as usize] != inner.row_group_of[rows[start] as usize]
            {
                runs.push(start..i);
                start = i;
            }
        }
        let mut rng = StdRng::seed_from_u64(mix(seed, epoch, 2));
        if cfg.shuffle {
            runs.shuffle(&mut rng);
        }
        let mut order = Vec::with_capacity(rows.len());
        let mut windows = Vec::new();
        let mut w_start = 0;
        let window = cfg.shuffle_window.max(1);
        for (k, run) in runs.iter().enumerate() {
            order.extend_from_slice(&rows[run.clone()]);
            if order.len() - w_start >= window || k + 1 == runs.len() {
                if cfg.shuffle {
                    order[w_start..].shuffle(&mut rng);
                }
                windows.push(w_start..order.len());
                w_start = order.len();
            }
        }
        EpochOrder { order, windows }
    }
}

#[cfg(test)]
mod fold_tests {
    use super::*;

    #[test]
    fn fold_parses_k_of_k_and_refuses_the_rest() {
        let f: Fold = "2/5".parse().unwrap();
        assert_eq!((f.index, f.count), (2, 5));
        assert_eq!(f.to_string(), "2/5");
        for bad in ["0/3", "4/3", "1/1", "3", "a/b", "1/3/4", ""] {
            assert!(bad.parse::<Fold>().is_err(), "{bad}");
        }
    }
}
