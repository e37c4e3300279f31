//! Round-trip and validation tests of the shard schema.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Int32Type};
use arrow_array::{Array, RecordBatch};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::*;

fn record(i: usize, meta: &ShardMeta, logits: bool) -> ClipRecord {
    let n = meta.frontend.logmel_len();
    ClipRecord {
        clip_id: format!("park-lyon-1-{i}-0-a"),
        source_file: format!("audio/park-lyon-1-{i}-0-a.wav"),
        scene_label: Some("park".into()),
        label: Some(4),
        device: "a".into(),
        device_id: 0,
        city: "lyon".into(),
        identifier: "lyon-1".into(),
        segment_id: format!("park-lyon-1-{i}"),
        segment_index: 0,
        set: if i.is_multiple_of(2) {
            ClipSet::Train
        } else {
            ClipSet::Test
        },
        split: if i.is_multiple_of(2) { Some(25) } else { None },
        variant: if i.is_multiple_of(3) {
            Variant::Dir
        } else {
            Variant::Original
        },
        variant_source: (i.is_multiple_of(3)).then(|| "IR_AKGD12".to_string()),
        energy: 300.0 + i as f32,
        teacher_logits: logits.then(|| (0..10).map(|k| k as f32 - i as f32).collect()),
        logmel: (0..n).map(|k| (k as f32) * 1e-3 + i as f32).collect(),
    }
}

fn write(batch: &RecordBatch, path: &std::path::Path) {
    let file = std::fs::File::create(path).unwrap();
    let mut w = ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
}

fn meta() -> ShardMeta {
    let mut m = ShardMeta::new(
        FrontEndConfig::dcase2024(),
        Vocabulary::tau22_labels(),
        Vocabulary::tau22_devices(),
    );
    m.energy_threshold = 323.5;
    m.dir_set = DirSet {
        name: "micirp".into(),
        irs: vec!["IR_AKGD12".into()],
    };
    m
}

#[test]
fn schema_round_trips_through_parquet() {
    let meta = meta();
    let records: Vec<_> = (0..4).map(|i| record(i, &meta, i != 1)).collect();
    let batch = records_to_batch(&meta, &records).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.parquet");
    write(&batch, &path);

    let read_meta = read_shard_meta(&path).unwrap();
    assert_eq!(read_meta, meta);

    let file = std::fs::File::open(&path).unwrap();
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let back: Vec<RecordBatch> = reader.map(|b| b.unwrap()).collect();
    assert_eq!(back.len(), 1);
    let b = &back[0];
    assert_eq!(b.num_rows(), 4);
    assert_eq!(b.schema().fields(), meta.schema().fields());
    let logits = b
        .column_by_name(col::TEACHER_LOGITS)
        .unwrap()
        .as_fixed_size_list();
    assert!(logits.is_null(1) && logits.is_valid(0));
    let first = logits.value(2);
    let first = first.as_primitive::<Float32Type>();
    assert_eq!(first.value(3), 3.0 - 2.0);
    let mel = b.column_by_name(col::LOGMEL).unwrap().as_fixed_size_list();
    let row3 = mel.value(3);
    let row3 = row3.as_primitive::<Float32Type>();
    assert_eq!(row3.len(), 256 * 65);
    assert_eq!(row3.value(10), 10.0 * 1e-3 + 3.0);
    let split = b.column_by_name(col::SPLIT).unwrap();
    assert!(split.is_null(1));
    let variant = b
        .column_by_name(col::VARIANT)
        .unwrap()
        .as_dictionary::<Int32Type>();
    let values = variant.values().as_string::<i32>();
    let v0 = values.value(variant.keys().value(0) as usize);
    assert_eq!(v0, "dir");
}

#[test]
fn validator_rejects_other_spec_version_naming_it() {
    let meta = meta();
    let batch = records_to_batch(&meta, &[record(0, &meta, true)]).unwrap();
    let mut kv: HashMap<String, String> = HashMap::from(batch.schema().metadata());
    kv.insert(META_SPEC_VERSION.into(), "7".into());
    let schema = Arc::new(batch.schema().as_ref().clone().with_metadata(kv));
    let batch = RecordBatch::try_new(schema, batch.columns().to_vec()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.parquet");
    write(&batch, &path);
    let err = read_shard_meta(&path).unwrap_err().to_string();
    assert!(err.contains("old.parquet"), "{err}");
    assert!(err.contains("version 7"), "{err}");
    assert!(err.contains(&format!("version {SPEC_VERSION}")), "{err}");
}

#[test]
fn validator_rejects_foreign_parquet_and_wrong_types() {
    let dir = tempfile::tempdir().unwrap();
    // A Parquet file of someone else's.
    let foreign = RecordBatch::try_from_iter([(
        "x",
        Arc::new(arrow_array::Int32Array::from(vec![1, 2])) as _,
    )])
    .unwrap();
    let path = dir.path().join("foreign.parquet");
    write(&foreign, &path);
    let err = read_shard_meta(&path).unwrap_err().to_string();
    assert!(
        err.contains("foreign.parquet") && err.contains("not an ASC shard"),
        "{err}"
    );

    // Not Parquet at all.
    let junk = dir.path().join("junk.parquet");
    std::fs::write(&junk, b"PAR1 but not really").unwrap();
    let err = read_shard_meta(&junk).unwrap_err().to_string();
    assert!(
        err.contains("junk.parquet") && err.contains("Parquet"),
        "{err}"
    );

    // Right metadata, wrong column type.
    let meta = meta();
    let mut fields: Vec<_> = meta.schema().fields().iter().cloned().collect();
    fields[3] = Arc::new(arrow_schema::Field::new(
        col::LABEL,
        arrow_schema::DataType::Int64,
        true,
    ));
    let schema = arrow_schema::Schema::new_with_metadata(fields, meta.to_key_values());
    let err = ShardMeta::validate(&schema, "x.parquet")
        .unwrap_err()
        .to_string();
    assert!(err.contains("'label'") && err.contains("Int64"), "{err}");
}

#[test]
fn records_with_wrong_lengths_are_rejected() {
    let meta = meta();
    let mut r = record(0, &meta, true);
    r.logmel.pop();
    let err = records_to_batch(&meta, &[r]).unwrap_err().to_string();
    assert!(err.contains("logmel") && err.contains("16639"), "{err}");
}

#[test]
fn clip_energy_is_sum_of_squares() {
    // A full-scale sine over 32000 samples has mean square 1/2.
    let x: Vec<f32> = (0..32000)
        .map(|n| (2.0 * std::f64::consts::PI * 1000.0 * n as f64 / 32000.0).sin() as f32)
        .collect();
    assert!((clip_energy(&x) - 16000.0).abs() < 0.5);
    // RMS 0.1 over one second gives 320, the scale of the paper's threshold of 323.
    assert!((clip_energy(&[0.1f32; 32000]) - 320.0).abs() < 1e-2);
}

#[test]
fn manifest_round_trips_and_checks_version() {
    let dir = tempfile::tempdir().unwrap();
    let m = Manifest {
        spec_version: SPEC_VERSION,
        shards: vec![ShardEntry {
            file: "shard-p0of1-00000.parquet".into(),
            rows: 12,
            sha256: "ab".repeat(32),
            partition: [0, 1],
        }],
    };
    m.store(dir.path()).unwrap();
    assert_eq!(Manifest::load(dir.path()).unwrap(), m);
    assert_eq!(m.total_rows(), 12);
    std::fs::write(
        dir.path().join(MANIFEST_FILE),
        r#"{"spec_version": 9, "shards": []}"#,
    )
    .unwrap();
    let err = Manifest::load(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("manifest.json") && err.contains("version 9"),
        "{err}"
    );
}

/// float16 log-mel: the schema says Float16, the values read back are the f32 values rounded to
/// nearest binary16 (within half a unit in the last place: relative error <= 2^-11), and the
/// metadata round-trips. (The halved size is checked on real shards in the pipeline's tests.)
#[test]
fn float16_logmel_round_trips() {
    let mut meta = meta();
    meta.logmel_type = LogmelType::Float16;
    let records: Vec<_> = (0..3)
        .map(|i| {
            let mut r = record(i, &meta, true);
            // Log-mel-like values: natural logs of powers from 1e-5 to 1e5.
            for (k, v) in r.logmel.iter_mut().enumerate() {
                *v = (-11.5 + 23.0 * ((k * 7919 + i) % 16640) as f32 / 16640.0) * 1.0001;
            }
            r
        })
        .collect();
    let batch = records_to_batch(&meta, &records).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f16.parquet");
    write(&batch, &path);
    let read_meta = read_shard_meta(&path).unwrap();
    assert_eq!(read_meta, meta);
    assert_eq!(
        read_meta
            .schema()
            .field_with_name(col::LOGMEL)
            .unwrap()
            .data_type(),
        &arrow_schema::DataType::FixedSizeList(
            Arc::new(arrow_schema::Field::new(
                "item",
                arrow_schema::DataType::Float16,
                false
            )),
            16640
        )
    );
    let file = std::fs::File::open(&path).unwrap();
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let mut row = 0;
    for b in reader {
        let b = b.unwrap();
        let mel = b.column_by_name(col::LOGMEL).unwrap().as_fixed_size_list();
        for i in 0..b.num_rows() {
            let v = mel.value(i);
            let v = v.as_primitive::<arrow_array::types::Float16Type>();
            for (k, (&got, &want)) in v.values().iter().zip(&records[row].logmel).enumerate() {
                // Rounded to nearest by the standard conversion, within half an ulp.
                assert_eq!(got, half::f16::from_f32(want), "row {row} value {k}");
                let err = (got.to_f32() - want).abs();
                assert!(err <= want.abs() * 2f32.powi(-11), "{got} vs {want}");
            }
            row += 1;
        }
    }
    assert_eq!(row, 3);
}

/// A version-1 shard (no `asc.logmel_type`, float32) is still read; a float16 key with a float32
/// column is a type error naming the column.
#[test]
fn version_1_is_read_and_types_must_match_the_key() {
    let meta = meta();
    let batch = records_to_batch(&meta, &[record(0, &meta, true)]).unwrap();
    let mut kv: HashMap<String, String> = HashMap::from(batch.schema().metadata());
    kv.insert(META_SPEC_VERSION.into(), "1".into());
    kv.remove(META_LOGMEL_TYPE);
    let schema = batch.schema().as_ref().clone().with_metadata(kv.clone());
    let v1 = ShardMeta::validate(&schema, "v1.parquet").unwrap();
    assert_eq!(v1.spec_version, 1);
    assert_eq!(v1.logmel_type, LogmelType::Float32);
    kv.insert(META_SPEC_VERSION.into(), SPEC_VERSION.to_string());
    kv.insert(META_LOGMEL_TYPE.into(), "float16".into());
    let schema = batch.schema().as_ref().clone().with_metadata(kv.clone());
    let err = ShardMeta::validate(&schema, "x.parquet")
        .unwrap_err()
        .to_string();
    assert!(err.contains("'logmel'") && err.contains("Float32"), "{err}");
    kv.insert(META_LOGMEL_TYPE.into(), "bfloat16".into());
    let schema = batch.schema().as_ref().clone().with_metadata(kv);
    let err = ShardMeta::validate(&schema, "x.parquet")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("asc.logmel_type") && err.contains("bfloat16"),
        "{err}"
    );
    assert_eq!("float16".parse::<LogmelType>(), Ok(LogmelType::Float16));
    assert_eq!(LogmelType::Float16.to_string(), "float16");
}
