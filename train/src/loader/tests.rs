//! Tests of the shard loader against naive references computed from the written records.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow_array::{Int32Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use burn::tensor::Device;
use data_specs::{ClipRecord, ClipSet, SPLITS, Variant};
use parquet::arrow::ArrowWriter;

use super::synth::{
    SynthSpec, synth_logits, synth_logmel, synth_meta, synth_records, tiny_frontend, write_records,
    write_shard_set,
};
use super::*;

struct Fixture {
    _dir: tempfile::TempDir,
    set: ShardSet,
    records: Vec<ClipRecord>,
}

fn fixture(spec: SynthSpec) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    write_shard_set(dir.path(), &spec).unwrap();
    let set = ShardSet::open(dir.path(), Some(&spec.frontend)).unwrap();
    let records = synth_records(&spec, &synth_meta(spec.frontend.clone()));
    Fixture {
        _dir: dir,
        set,
        records,
    }
}

fn cfg(batch_size: usize, seed: u64) -> LoaderConfig {
    LoaderConfig {
        batch_size,
        seed,
        shuffle: true,
        drop_last: false,
        prefetch: 2,
        shuffle_window: 40,
        prefetch_next_epoch: false,
    }
}

fn sel(p_dir: f64, replay: bool) -> Selection {
    Selection {
        p_dir,
        fold: None,
        replay,
        ..Selection::train(None)
    }
}

/// All rows of an epoch, batch by batch.
fn run_epoch(loader: &Loader, epoch: u64) -> Vec<Vec<u32>> {
    loader
        .epoch(epoch)
        .map(|b| b.unwrap().rows().to_vec())
        .collect()
}

#[test]
fn index_matches_the_records() {
    let f = fixture(SynthSpec::tiny(90));
    assert_eq!(f.set.n_rows(), f.records.len());
    assert_eq!(f.set.n_shards(), 3);
    assert!(f.set.n_row_groups() >= f.records.len() / 16);
    for (i, r) in f.records.iter().enumerate() {
        let info = f.set.row_info(i as u32);
        assert_eq!(info.clip_id, r.clip_id);
        assert_eq!(info.label, r.label);
        assert_eq!(info.device_id, r.device_id);
        assert_eq!(info.device, r.device);
        assert_eq!(info.set, r.set);
        assert_eq!(info.split, r.split);
        assert_eq!(info.variant, r.variant);
        assert_eq!(info.has_teacher, r.teacher_logits.is_some());
    }
}

#[test]
fn every_selected_row_is_produced_once_per_epoch() {
    let f = fixture(SynthSpec::tiny(150));
    // Naive reference from the records.
    let train_clips: HashSet<&str> = f
        .records
        .iter()
        .filter(|r| r.set == ClipSet::Train)
        .map(|r| r.clip_id.as_str())
        .collect();
    let replay_rows: HashSet<u32> = (0..f.records.len() as u32)
        .filter(|&i| {
            let r = &f.records[i as usize];
            r.set == ClipSet::Train && matches!(r.variant, Variant::Replay | Variant::ReplaySim)
        })
        .collect();
    let has_dir: HashSet<&str> = f
        .records
        .iter()
        .filter(|r| r.variant == Variant::Dir)
        .map(|r| r.clip_id.as_str())
        .collect();
    assert!(!replay_rows.is_empty() && !has_dir.is_empty());
    for p_dir in [0.0, 1.0] {
        for replay in [false, true] {
            let loader = Loader::new(&f.set, sel(p_dir, replay), cfg(32, 7)).unwrap();
            for epoch in 0..2 {
                let batches = run_epoch(&loader, epoch);
                assert_eq!(batches.len() as u64, loader.batches_per_epoch());
                for b in &batches[..batches.len() - 1] {
                    assert_eq!(b.len(), 32);
                }
                let rows: Vec<u32> = batches.concat();
                let unique: HashSet<u32> = rows.iter().copied().collect();
                assert_eq!(unique.len(), rows.len(), "a row repeated");
                let mut per_clip: HashMap<&str, usize> = HashMap::new();
                let mut replays = HashSet::new();
                for &row in &rows {
                    let r = &f.records[row as usize];
                    assert_eq!(r.set, ClipSet::Train);
                    match r.variant {
                        Variant::Replay | Variant::ReplaySim => {
                            replays.insert(row);
                        }
                        v => {
                            *per_clip.entry(r.clip_id.as_str()).or_default() += 1;
                            let want_dir = p_dir == 1.0 && has_dir.contains(r.clip_id.as_str());
                            assert_eq!(v == Variant::Dir, want_dir, "p_dir {p_dir}");
                        }
                    }
                }
                assert_eq!(per_clip.len(), train_clips.len());
                assert!(per_clip.values().all(|&n| n == 1));
                if replay {
                    assert_eq!(replays, replay_rows);
                } else {
                    assert!(replays.is_empty());
                }
                assert_eq!(rows.len(), loader.epoch_len());
            }
        }
    }
}

#[test]
fn drop_last_drops_the_partial_batch() {
    let f = fixture(SynthSpec::tiny(100));
    let mut c = cfg(32, 1);
    c.drop_last = true;
    let loader = Loader::new(&f.set, sel(0.6, true), c).unwrap();
    let n = loader.epoch_len();
    assert!(!n.is_multiple_of(32));
    let batches = run_epoch(&loader, 0);
    assert_eq!(batches.len(), n / 32);
    assert!(batches.iter().all(|b| b.len() == 32));
    // Same rows as the first n/32 batches without drop_last.
    let full = run_epoch(&Loader::new(&f.set, sel(0.6, true), cfg(32, 1)).unwrap(), 0);
    assert_eq!(batches[..], full[..n / 32]);
}

#[test]
fn splits_nest_and_match_the_split_column() {
    let f = fixture(SynthSpec::tiny(200));
    let mut previous: HashSet<u32> = HashSet::new();
    for p in SPLITS {
        let s = Selection {
            max_split: Some(p),
            ..sel(0.0, false)
        };
        let loader = Loader::new(&f.set, s, cfg(16, 3)).unwrap();
        let rows: HashSet<u32> = loader.epoch_order(0).into_iter().collect();
        let naive: HashSet<u32> = (0..f.records.len() as u32)
            .filter(|&i| {
                let r = &f.records[i as usize];
                r.set == ClipSet::Train
                    && r.variant == Variant::Original
                    && r.split.is_some_and(|s| s <= p)
            })
            .collect();
        assert_eq!(rows, naive, "split {p}");
        assert!(previous.is_subset(&rows) && previous.len() < rows.len());
        previous = rows;
    }
    assert!(
        Loader::new(
            &f.set,
            Selection {
                max_split: Some(30),
                ..sel(0.0, false)
            },
            cfg(8, 0)
        )
        .is_err()
    );
}

#[test]
fn location_folds_partition_the_training_rows() {
    let f = fixture(SynthSpec::tiny(260));
    let k = 3;
    let folds = f.set.location_folds(k, None);
    // Naive reference: the training rows (all variants) of each fold, from the records.
    let fold_of = |r: &ClipRecord| folds.fold_of(Fold::key(&r.identifier)).unwrap_or(0);
    let train_rows = |keep: &dyn Fn(u32) -> bool| -> HashSet<u32> {
        (0..f.records.len() as u32)
            .filter(|&i| f.records[i as usize].set == ClipSet::Train && keep(i))
            .collect()
    };
    let all = Loader::new(&f.set, sel(1.0, true), cfg(16, 3)).unwrap();
    let mut union: HashSet<u32> = HashSet::new();
    for index in 1..=k {
        let fold = Fold { index, count: k };
        let in_fold = |i: u32| fold_of(&f.records[i as usize]) == index;
        // Without the fold: no row of its locations (originals, DIR or replay) is drawn.
        let s = Selection {
            fold: Some(FoldFilter::Without(fold)),
            ..sel(1.0, true)
        };
        let without = Loader::new(&f.set, s, cfg(16, 3)).unwrap();
        let drawn: HashSet<u32> = (0..3).flat_map(|e| without.epoch_order(e)).collect();
        assert!(drawn.iter().all(|&r| !in_fold(r)), "fold {fold}");
        assert!(drawn.is_subset(&train_rows(&|i| !in_fold(i))));
        // Only the fold: exactly its original training rows.
        let s = Selection {
            fold: Some(FoldFilter::Only(fold)),
            ..Selection::originals(ClipSet::Train)
        };
        let only: HashSet<u32> = Loader::new(&f.set, s, cfg(16, 3))
            .unwrap()
            .epoch_order(0)
            .into_iter()
            .collect();
        let naive =
            train_rows(&|i| in_fold(i) && f.records[i as usize].variant == Variant::Original);
        assert!(!naive.is_empty(), "fold {fold} is empty");
        assert_eq!(only, naive, "fold {fold}");
        assert!(union.is_disjoint(&only));
        union.extend(only);
    }
    let originals = train_rows(&|i| f.records[i as usize].variant == Variant::Original);
    assert_eq!(union, originals);
    // Every clip of a location lies in one fold; the folds hold nearly equal numbers of
    // original training clips (within the largest location).
    let mut fold_of_location: HashMap<&str, u32> = HashMap::new();
    let mut per_location: HashMap<&str, usize> = HashMap::new();
    let mut per_fold = vec![0usize; k as usize];
    for r in &f.records {
        let fold = fold_of(r);
        assert_eq!(*fold_of_location.entry(&r.identifier).or_insert(fold), fold);
        if r.set == ClipSet::Train && r.variant == Variant::Original {
            per_fold[fold as usize - 1] += 1;
            *per_location.entry(&r.identifier).or_default() += 1;
        }
    }
    let largest = per_location.values().copied().max().unwrap();
    let spread = per_fold.iter().max().unwrap() - per_fold.iter().min().unwrap();
    assert!(
        spread <= largest,
        "fold sizes {per_fold:?}, largest location {largest}"
    );
    assert!(all.epoch_len() > 0);
}

#[test]
fn balanced_location_folds_are_deterministic_and_even() {
    // Location sizes as on the demo set (10..60 clips); two insertion orders.
    let sizes: Vec<(u64, usize)> = (0..70u64)
        .map(|i| {
            (
                Fold::key(&format!("loc-{i}")),
                10 + 10 * (i as usize * 7 % 6),
            )
        })
        .collect();
    let forward: HashMap<u64, usize> = sizes.iter().copied().collect();
    let backward: HashMap<u64, usize> = sizes.iter().rev().copied().collect();
    for k in [2, 3, 5] {
        let a = LocationFolds::balanced(&forward, k);
        assert_eq!(a, LocationFolds::balanced(&backward, k));
        let mut load = vec![0usize; k as usize];
        for &(key, n) in &sizes {
            let f = a.fold_of(key).expect("every location has a fold");
            assert!((1..=k).contains(&f));
            load[f as usize - 1] += n;
        }
        // Longest-processing-time bound: max - min <= the largest location (60).
        let spread = load.iter().max().unwrap() - load.iter().min().unwrap();
        assert!(spread <= 60, "k {k}: {load:?}");
        assert_eq!(a.fold_of(Fold::key("elsewhere")), None);
    }
}

#[test]
fn device_and_set_filters() {
    let f = fixture(SynthSpec::tiny(120));
    let s = Selection {
        devices: Some(vec!["b".into(), "c".into()]),
        ..sel(0.6, true)
    };
    let loader = Loader::new(&f.set, s, cfg(16, 3)).unwrap();
    for row in loader.epoch_order(0) {
        assert!(["b", "c"].contains(&f.set.row_info(row).device));
    }
    // Test set: originals only, every test clip once, storage order without shuffle.
    let mut c = cfg(16, 3);
    c.shuffle = false;
    let loader = Loader::new(&f.set, Selection::originals(ClipSet::Test), c).unwrap();
    let rows = loader.epoch_order(0);
    let naive: Vec<u32> = (0..f.records.len() as u32)
        .filter(|&i| f.records[i as usize].set == ClipSet::Test)
        .collect();
    assert_eq!(rows, naive);
    let unknown = Selection {
        devices: Some(vec!["zz".into()]),
        ..sel(0.6, true)
    };
    assert!(Loader::new(&f.set, unknown, cfg(16, 3)).is_err());
}

#[test]
fn dir_frequency_within_binomial_tolerance() {
    let mut spec = SynthSpec::tiny(3000);
    spec.replay_every = 0;
    let f = fixture(spec);
    let p = 0.6;
    let loader = Loader::new(&f.set, sel(p, false), cfg(256, 11)).unwrap();
    let (mut n, mut dir, mut first_ir) = (0u64, 0u64, 0u64);
    for epoch in 0..8 {
        for row in loader.epoch_order(epoch) {
            let r = &f.records[row as usize];
            if r.device != "a" {
                continue;
            }
            n += 1;
            if r.variant == Variant::Dir {
                dir += 1;
                first_ir += u64::from(r.variant_source.as_deref() == Some("IR_0"));
            }
        }
    }
    // Binomial(n, p) within 4 sigma; the DIR choice uniform over the clip's 2 DIR rows.
    let sigma = (n as f64 * p * (1.0 - p)).sqrt();
    assert!(n > 3000, "{n}");
    assert!(
        (dir as f64 - n as f64 * p).abs() < 4.0 * sigma,
        "{dir} of {n}"
    );
    let sigma_ir = (dir as f64 * 0.25).sqrt();
    assert!((first_ir as f64 - dir as f64 * 0.5).abs() < 4.0 * sigma_ir);
}

#[test]
fn same_seed_same_batches_other_seed_other_order() {
    let f = fixture(SynthSpec::tiny(150));
    let run = |seed: u64, prefetch: usize| {
        let mut c = cfg(24, seed);
        c.prefetch = prefetch;
        let loader = Loader::new(&f.set, sel(0.6, true), c).unwrap();
        loader
            .epoch(3)
            .map(|b| {
                let b = b.unwrap();
                (b.rows().to_vec(), b.logmel().to_vec())
            })
            .collect::<Vec<_>>()
    };
    let a = run(5, 1);
    assert_eq!(a, run(5, 4));
    let b = run(6, 2);
    assert_ne!(
        a.iter().map(|x| &x.0).collect::<Vec<_>>(),
        b.iter().map(|x| &x.0).collect::<Vec<_>>()
    );
    // Epochs differ too, and the shuffle crosses row groups and shards.
    let loader = Loader::new(&f.set, sel(0.6, true), cfg(24, 5)).unwrap();
    assert_ne!(loader.epoch_order(0), loader.epoch_order(1));
    let first: Vec<u32> = a[0].0.clone();
    let groups: HashSet<u32> = first.iter().map(|&r| r / 16).collect();
    assert!(groups.len() > 1);
}

#[test]
fn resume_yields_the_remaining_batches() {
    let f = fixture(SynthSpec::tiny(150));
    let loader = Loader::new(&f.set, sel(0.6, true), cfg(16, 9)).unwrap();
    let full = run_epoch(&loader, 2);
    let mut it = loader.epoch(2);
    for _ in 0..3 {
        it.next().unwrap().unwrap();
    }
    let state = loader.state();
    assert_eq!(
        state,
        LoaderState {
            seed: 9,
            epoch: 2,
            batch: 3
        }
    );
    drop(it);
    let json = serde_json::to_string(&state).unwrap();
    let state: LoaderState = serde_json::from_str(&json).unwrap();
    // A fresh loader with another configured seed: the state's seed wins.
    let resumed = Loader::resume(&f.set, sel(0.6, true), cfg(16, 1234), state).unwrap();
    let rest: Vec<Vec<u32>> = resumed
        .resume_epoch()
        .map(|b| b.unwrap().rows().to_vec())
        .collect();
    assert_eq!(rest[..], full[3..]);
    assert_eq!(
        resumed.state(),
        LoaderState {
            seed: 9,
            epoch: 3,
            batch: 0
        }
    );
}

#[test]
fn batch_tensors_hold_the_rows_values_and_teacher_mask() {
    let f = fixture(SynthSpec::tiny(60));
    let loader = Loader::new(&f.set, sel(0.6, true), cfg(20, 4)).unwrap();
    let device = Device::flex();
    let fe = tiny_frontend();
    let (m, t) = (fe.n_mels, fe.n_frames());
    let len = m * t;
    let (mut with, mut without) = (0, 0);
    // Two epochs, odd batches moved into tensors and even ones copied: recycled, moved-out
    // and fresh buffers all carry the right rows.
    for b in (0..2).flat_map(|e| loader.epoch(e)) {
        let b = b.unwrap();
        let n = b.len();
        let rows = b.rows().to_vec();
        let tb = if b.index() % 2 == 1 {
            b.into_tensors(&device)
        } else {
            b.to_tensors(&device)
        };
        assert_eq!(tb.logmel.dims(), [n, 1, m, t]);
        assert_eq!(tb.teacher_logits.dims(), [n, 10]);
        let logmel = tb.logmel.into_data();
        let logmel = logmel.as_slice::<f32>().unwrap();
        let logits = tb.teacher_logits.into_data();
        let logits = logits.as_slice::<f32>().unwrap();
        let mask = tb.teacher_mask.into_data();
        let mask = mask.as_slice::<f32>().unwrap();
        let labels: Vec<i64> = tb
            .labels
            .into_data()
            .convert::<i64>()
            .try_to_vec::<i64>()
            .unwrap();
        let devices: Vec<i64> = tb
            .device_ids
            .into_data()
            .convert::<i64>()
            .try_to_vec::<i64>()
            .unwrap();
        assert_eq!(tb.rows, rows);
        for (j, &row) in rows.iter().enumerate() {
            let r = &f.records[row as usize];
            for k in 0..len {
                assert_eq!(logmel[j * len + k], synth_logmel(row, k));
                assert_eq!(logmel[j * len + k], r.logmel[k]);
            }
            assert_eq!(labels[j], r.label.unwrap() as i64);
            assert_eq!(devices[j], r.device_id as i64);
            match &r.teacher_logits {
                Some(l) => {
                    with += 1;
                    assert_eq!(mask[j], 1.0);
                    assert_eq!(&logits[j * 10..(j + 1) * 10], &l[..]);
                    assert_eq!(logits[j * 10 + 3], synth_logits(row, 3));
                }
                None => {
                    without += 1;
                    assert_eq!(mask[j], 0.0);
                    assert!(logits[j * 10..(j + 1) * 10].iter().all(|&x| x == 0.0));
                }
            }
        }
    }
    assert!(with > 0 && without > 0);
}

fn write_foreign(path: &std::path::Path) {
    let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int32, false)]));
    let batch =
        RecordBatch::try_new(schema.clone(), vec![Arc::new(Int32Array::from(vec![1, 2]))]).unwrap();
    let mut w = ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema, None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

fn open_err(dir: &std::path::Path) -> String {
    ShardSet::open(dir, None).unwrap_err().to_string()
}

#[test]
fn bad_shards_give_errors_naming_the_file() {
    // Truncated shard (listed by the manifest).
    let dir = tempfile::tempdir().unwrap();
    write_shard_set(dir.path(), &SynthSpec::tiny(40)).unwrap();
    let victim = dir.path().join("shard-00001.parquet");
    let len = std::fs::metadata(&victim).unwrap().len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&victim)
        .unwrap();
    f.set_len(len / 2).unwrap();
    let e = open_err(dir.path());
    assert!(e.contains("shard-00001.parquet"), "{e}");

    // Foreign Parquet file (another schema, no metadata), folder without manifest.
    let dir = tempfile::tempdir().unwrap();
    write_foreign(&dir.path().join("foreign.parquet"));
    let e = open_err(dir.path());
    assert!(
        e.contains("foreign.parquet") && e.contains("not an ASC shard"),
        "{e}"
    );

    // Another spec version.
    let dir = tempfile::tempdir().unwrap();
    let mut meta = synth_meta(tiny_frontend());
    let records = synth_records(&SynthSpec::tiny(10), &meta);
    meta.spec_version = data_specs::SPEC_VERSION + 1;
    let bad = dir.path().join("v2");
    std::fs::create_dir(&bad).unwrap();
    let file = bad.join("old.parquet");
    let batch = data_specs::records_to_batch(&meta, &records).unwrap();
    let mut w =
        ArrowWriter::try_new(std::fs::File::create(&file).unwrap(), batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let e = open_err(&bad);
    assert!(e.contains("old.parquet") && e.contains("version"), "{e}");

    // Not Parquet at all; empty folder.
    let junk = dir.path().join("junk");
    std::fs::create_dir(&junk).unwrap();
    std::fs::write(junk.join("x.parquet"), b"not parquet at all").unwrap();
    assert!(open_err(&junk).contains("x.parquet"));
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    assert!(matches!(
        ShardSet::open(&empty, None),
        Err(LoaderError::NoShards { .. })
    ));
}

#[test]
fn metadata_must_agree_and_match_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let meta = synth_meta(tiny_frontend());
    let records = synth_records(&SynthSpec::tiny(20), &meta);
    write_records(dir.path(), &meta, &records, 1, 16).unwrap();
    // Model expecting the default front end.
    let e = ShardSet::open(dir.path(), Some(&data_specs::FrontEndConfig::dcase2024())).unwrap_err();
    assert!(matches!(e, LoaderError::FrontEnd { .. }), "{e}");
    assert!(e.to_string().contains("shard-00000.parquet"));

    // A second shard with other labels -> inconsistent set.
    let mut other = meta.clone();
    other.dataset = "elsewhere".into();
    let sub = dir.path().join("mixed");
    std::fs::create_dir(&sub).unwrap();
    write_records(&sub, &meta, &records, 1, 16).unwrap();
    let b = data_specs::records_to_batch(&other, &records).unwrap();
    let path = sub.join("shard-00001.parquet");
    let mut w =
        ArrowWriter::try_new(std::fs::File::create(&path).unwrap(), b.schema(), None).unwrap();
    w.write(&b).unwrap();
    w.close().unwrap();
    std::fs::remove_file(sub.join(data_specs::MANIFEST_FILE)).unwrap();
    let e = ShardSet::open(&sub, None).unwrap_err();
    assert!(
        matches!(&e, LoaderError::Inconsistent { key, .. } if key == "dataset"),
        "{e}"
    );
    assert!(e.to_string().contains("shard-00001.parquet"));

    // Manifest row count that disagrees with the file.
    let mut m = data_specs::Manifest::load(dir.path()).unwrap();
    m.shards[0].rows += 1;
    m.store(dir.path()).unwrap();
    let e = ShardSet::open(dir.path(), None).unwrap_err();
    assert!(matches!(e, LoaderError::RowCount { .. }), "{e}");
}

/// Writes `records` as one shard with `props` into a new folder (no manifest).
fn write_with_props(
    records: &[ClipRecord],
    props: parquet::file::properties::WriterProperties,
) -> tempfile::TempDir {
    write_typed(records, props, data_specs::LogmelType::Float32)
}

/// [`write_with_props`] with a log-mel column of `logmel_type`.
fn write_typed(
    records: &[ClipRecord],
    props: parquet::file::properties::WriterProperties,
    logmel_type: data_specs::LogmelType,
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut meta = synth_meta(tiny_frontend());
    meta.logmel_type = logmel_type;
    let file = std::fs::File::create(dir.path().join("s.parquet")).unwrap();
    let mut w = ArrowWriter::try_new(file, meta.schema(), Some(props)).unwrap();
    for part in records.chunks(16) {
        w.write(&data_specs::records_to_batch(&meta, part).unwrap())
            .unwrap();
        w.flush().unwrap();
    }
    w.close().unwrap();
    dir
}

#[test]
fn page_fast_path_and_arrow_fallback_agree() {
    use parquet::basic::Encoding;
    use parquet::file::properties::WriterProperties;
    use parquet::schema::types::ColumnPath;
    let spec = SynthSpec::tiny(80);
    let records = synth_records(&spec, &synth_meta(tiny_frontend()));
    let leaf = ColumnPath::new(vec!["logmel".into(), "list".into(), "item".into()]);
    let layouts = [
        // Dictionary pages: the Arrow fallback.
        WriterProperties::builder().build(),
        // PLAIN values in many small pages (exercises page skipping and rows across pages).
        WriterProperties::builder()
            .set_column_dictionary_enabled(leaf.clone(), false)
            .set_data_page_size_limit(100)
            .set_write_batch_size(10)
            .build(),
        // BYTE_STREAM_SPLIT in small pages.
        WriterProperties::builder()
            .set_column_dictionary_enabled(leaf.clone(), false)
            .set_column_encoding(leaf, Encoding::BYTE_STREAM_SPLIT)
            .set_data_page_size_limit(100)
            .set_write_batch_size(10)
            .build(),
    ];
    let len = tiny_frontend().logmel_len();
    for props in layouts {
        let dir = write_with_props(&records, props);
        let set = ShardSet::open(dir.path(), None).unwrap();
        let loader = Loader::new(&set, sel(0.6, true), cfg(8, 2)).unwrap();
        let mut seen = 0;
        for b in loader.epoch(0) {
            let b = b.unwrap();
            for (j, &row) in b.rows().iter().enumerate() {
                assert_eq!(
                    &b.logmel()[j * len..(j + 1) * len],
                    &records[row as usize].logmel[..]
                );
                seen += 1;
            }
        }
        assert_eq!(seen, loader.epoch_len());
    }
}

/// float16 shards: every layout (dictionary pages through the Arrow reader; PLAIN, with
/// `pread` from uncompressed pages, and BYTE_STREAM_SPLIT, in small pages and compressed) gives
/// each drawn row's values rounded to nearest binary16, and the same batches as the float32
/// shards of the same records.
#[test]
fn float16_shards_load_as_the_rounded_values() {
    use parquet::basic::{Compression, Encoding, ZstdLevel};
    use parquet::file::properties::WriterProperties;
    use parquet::schema::types::ColumnPath;
    let spec = SynthSpec::tiny(80);
    let records = synth_records(&spec, &synth_meta(tiny_frontend()));
    let leaf = ColumnPath::new(vec!["logmel".into(), "list".into(), "item".into()]);
    let small = || {
        WriterProperties::builder()
            .set_column_dictionary_enabled(leaf.clone(), false)
            .set_data_page_size_limit(100)
            .set_write_batch_size(10)
    };
    let layouts = [
        WriterProperties::builder().build(),
        small().build(),
        small()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(1).unwrap()))
            .build(),
        small()
            .set_column_encoding(leaf.clone(), Encoding::BYTE_STREAM_SPLIT)
            .build(),
        super::synth::writer_properties_typed(16, false, data_specs::LogmelType::Float16),
    ];
    let len = tiny_frontend().logmel_len();
    let f32_dir = write_with_props(&records, super::synth::writer_properties(16, false));
    let f32_set = ShardSet::open(f32_dir.path(), None).unwrap();
    let want_batches: Vec<Vec<u32>> = {
        let loader = Loader::new(&f32_set, sel(0.6, true), cfg(8, 2)).unwrap();
        run_epoch(&loader, 0)
    };
    for (i, props) in layouts.into_iter().enumerate() {
        let dir = write_typed(&records, props, data_specs::LogmelType::Float16);
        let set = ShardSet::open(dir.path(), None).unwrap();
        assert_eq!(set.meta().logmel_type, data_specs::LogmelType::Float16);
        let loader = Loader::new(&set, sel(0.6, true), cfg(8, 2)).unwrap();
        let mut seen = 0;
        let mut batches = Vec::new();
        for b in loader.epoch(0) {
            let b = b.unwrap();
            for (j, &row) in b.rows().iter().enumerate() {
                let got = &b.logmel()[j * len..(j + 1) * len];
                for (k, (&g, &w)) in got.iter().zip(&records[row as usize].logmel).enumerate() {
                    assert_eq!(
                        g,
                        half::f16::from_f32(w).to_f32(),
                        "layout {i} row {row} k {k}"
                    );
                }
                seen += 1;
            }
            batches.push(b.rows().to_vec());
        }
        assert_eq!(seen, loader.epoch_len());
        assert_eq!(batches, want_batches, "layout {i}");
    }
    // A set mixing float32 and float16 shards is refused, naming the field.
    let mixed = tempfile::tempdir().unwrap();
    for (name, dir) in [
        ("a.parquet", &f32_dir),
        (
            "b.parquet",
            &write_typed(
                &records,
                WriterProperties::builder().build(),
                data_specs::LogmelType::Float16,
            ),
        ),
    ] {
        std::fs::copy(dir.path().join("s.parquet"), mixed.path().join(name)).unwrap();
    }
    let e = ShardSet::open(mixed.path(), None).unwrap_err();
    assert!(
        matches!(&e, LoaderError::Inconsistent { key, .. } if key == "logmel_type"),
        "{e}"
    );
}

#[test]
fn prefetching_the_next_epoch_gives_the_same_batches() {
    let f = fixture(SynthSpec::tiny(150));
    for drop_last in [false, true] {
        let plain = |c: LoaderConfig| Loader::new(&f.set, sel(0.6, true), c).unwrap();
        let mut c = cfg(16, 5);
        c.drop_last = drop_last;
        let reference = plain(c.clone());
        c.prefetch_next_epoch = true;
        let continuous = plain(c);
        let rows = |it: EpochIter| -> Vec<(u64, Vec<u32>)> {
            it.map(|b| {
                let b = b.unwrap();
                (b.index(), b.rows().to_vec())
            })
            .collect()
        };
        // In order (the parked producer is reused), repeated, skipped, and from a batch.
        for (e, from) in [(0, 0), (1, 0), (2, 0), (2, 0), (5, 0), (6, 2), (7, 0)] {
            let want = rows(reference.epoch_from(e, from));
            assert!(!want.is_empty());
            assert_eq!(
                rows(continuous.epoch_from(e, from)),
                want,
                "epoch {e} from {from}"
            );
            assert_eq!(continuous.state().epoch, e + 1);
        }
        // An epoch abandoned midway, then asked for again: whole and in order.
        let mut it = continuous.epoch(8);
        it.next().unwrap().unwrap();
        drop(it);
        assert_eq!(rows(continuous.epoch(8)), rows(reference.epoch(8)));
        assert_eq!(rows(continuous.epoch(9)), rows(reference.epoch(9)));
    }
}
