//! The shard schema: column names and types, the key-value metadata, a record type, a batch
//! builder and the validator.
//!
//! Every column is documented in `data-specs/README.md`; keep the two in step.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::builder::{
    FixedSizeListBuilder, Float16Builder, Float32Builder, Int32Builder, StringBuilder,
    StringDictionaryBuilder, UInt8Builder,
};
use arrow_array::types::Int32Type;
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};

use crate::SpecError;
use crate::frontend::FrontEndConfig;
use crate::vocab::Vocabulary;

/// Version of the shard format written by this build. Bump on any change of the format.
///
/// History (`data-specs/README.md`, "Versions"): 1, the first format; 2, the log-mel column may
/// be stored as float16 instead of float32 (key [`META_LOGMEL_TYPE`]). A version only adds
/// alternatives, so a reader of version N reads every version from [`MIN_SPEC_VERSION`] to N;
/// a shard of a newer version is refused (it may use an alternative this build does not know).
pub const SPEC_VERSION: u32 = 2;

/// The oldest shard version this build reads.
pub const MIN_SPEC_VERSION: u32 = 1;

/// Metadata key: the spec version (decimal string).
pub const META_SPEC_VERSION: &str = "asc.spec_version";
/// Metadata key: the front-end configuration (JSON of [`FrontEndConfig`]).
pub const META_FRONTEND: &str = "asc.frontend";
/// Metadata key: the label vocabulary (JSON array of strings, index order).
pub const META_LABELS: &str = "asc.labels";
/// Metadata key: the device vocabulary (JSON array of strings, index order).
pub const META_DEVICES: &str = "asc.devices";
/// Metadata key: the DIR energy threshold used to gate DIR variants (decimal string, see
/// [`crate::clip_energy`]).
pub const META_ENERGY_THRESHOLD: &str = "asc.energy_threshold";
/// Metadata key: the device impulse response set (JSON of [`DirSet`]).
pub const META_DIR_SET: &str = "asc.dir_set";
/// Metadata key: free-text description of where the teacher logits came from (may be empty).
pub const META_TEACHER: &str = "asc.teacher";
/// Metadata key: the dataset the shards were made from (folder name).
pub const META_DATASET: &str = "asc.dataset";
/// Metadata key: the element type of the `logmel` column, `float32` or `float16` (see
/// [`LogmelType`]; since spec version 2, absent in version 1, where it is always float32).
pub const META_LOGMEL_TYPE: &str = "asc.logmel_type";

/// Column names, in schema order.
pub mod col {
    /// Clip id (Utf8): file stem, plus `@k` for the k-th second of a longer recording.
    pub const CLIP_ID: &str = "clip_id";
    /// Source audio file relative to the dataset root (Utf8), e.g. `audio/x.wav`.
    pub const SOURCE_FILE: &str = "source_file";
    /// Scene label (dictionary string), null when unknown.
    pub const SCENE_LABEL: &str = "scene_label";
    /// Scene label index into the label vocabulary (Int32), null when unknown.
    pub const LABEL: &str = "label";
    /// Recording device (dictionary string).
    pub const DEVICE: &str = "device";
    /// Device index into the device vocabulary (Int32).
    pub const DEVICE_ID: &str = "device_id";
    /// City (dictionary string).
    pub const CITY: &str = "city";
    /// Recording location identifier `<city>-<location>` (dictionary string).
    pub const IDENTIFIER: &str = "identifier";
    /// 10 s segment id `<scene>-<city>-<location>-<segment>` (Utf8).
    pub const SEGMENT_ID: &str = "segment_id";
    /// Second within the 10 s segment, 0-9 (Int32).
    pub const SEGMENT_INDEX: &str = "segment_index";
    /// Set: `train`, `test` or `unused` (dictionary string).
    pub const SET: &str = "set";
    /// Smallest DCASE2024 training split (5/10/25/50/100) containing the clip (UInt8, null if none).
    pub const SPLIT: &str = "split";
    /// Variant: `original`, `dir`, `replay`, `replay-sim` (dictionary string).
    pub const VARIANT: &str = "variant";
    /// Source of the variant: DIR name or replay file (Utf8, null for `original`).
    pub const VARIANT_SOURCE: &str = "variant_source";
    /// Clip energy, sum of squared samples (Float32, see [`crate::clip_energy`]).
    pub const ENERGY: &str = "energy";
    /// Teacher logits (FixedSizeList<Float32, n_classes>, null when missing).
    pub const TEACHER_LOGITS: &str = "teacher_logits";
    /// Log-mel (FixedSizeList<Float32 or Float16, n_mels * n_frames>, mel-major; the element
    /// type is [`super::LogmelType`], metadata key [`super::META_LOGMEL_TYPE`]).
    pub const LOGMEL: &str = "logmel";
}

/// Which set a clip belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClipSet {
    /// In the training list (`fold1_train.csv`, or any `split*.csv`).
    Train,
    /// In the test list (`fold1_evaluate.csv` / `test.csv`).
    Test,
    /// In neither.
    Unused,
}

impl ClipSet {
    /// Name as stored in the `set` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Train => "train",
            Self::Test => "test",
            Self::Unused => "unused",
        }
    }

    /// Parses the `set` column value.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "train" => Some(Self::Train),
            "test" => Some(Self::Test),
            "unused" => Some(Self::Unused),
            _ => None,
        }
    }
}

/// Which version of a clip a row holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Variant {
    /// The recording as in the dataset.
    #[serde(rename = "original")]
    Original,
    /// Convolved with a device impulse response.
    #[serde(rename = "dir")]
    Dir,
    /// A real playback-and-re-recording of the clip.
    #[serde(rename = "replay")]
    Replay,
    /// A simulated playback-and-re-recording chain.
    #[serde(rename = "replay-sim")]
    ReplaySim,
}

impl Variant {
    /// All variants, in a fixed order.
    pub const ALL: [Variant; 4] = [Self::Original, Self::Dir, Self::Replay, Self::ReplaySim];

    /// Name as stored in the `variant` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Original => "original",
            Self::Dir => "dir",
            Self::Replay => "replay",
            Self::ReplaySim => "replay-sim",
        }
    }

    /// Parses the `variant` column value.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// Element type of the `logmel` column.
///
/// float16 (IEEE 754 binary16, Arrow `Float16`, Parquet `FIXED_LEN_BYTE_ARRAY(2)` with the
/// `FLOAT16` logical type) halves the column: log-mel values lie within about [-12, 12], where
/// binary16 keeps 11 significant bits (a rounding error of at most 2^-8 = 0.004 for values of
/// magnitude 8 to 16, 0.25 % of the value at most), far below the variation between clips.
/// Values are rounded to nearest (ties to even) when written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogmelType {
    /// 32-bit floats (the default; the only type of spec version 1).
    #[default]
    Float32,
    /// 16-bit floats: half the size on disk and in the page cache.
    Float16,
}

impl LogmelType {
    /// Name as stored in the metadata.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Float32 => "float32",
            Self::Float16 => "float16",
        }
    }

    /// Bytes per value.
    pub fn bytes(self) -> usize {
        match self {
            Self::Float32 => 4,
            Self::Float16 => 2,
        }
    }

    /// The Arrow type of one value.
    pub fn arrow_type(self) -> DataType {
        match self {
            Self::Float32 => DataType::Float32,
            Self::Float16 => DataType::Float16,
        }
    }
}

impl std::str::FromStr for LogmelType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "float32" => Ok(Self::Float32),
            "float16" => Ok(Self::Float16),
            other => Err(format!(
                "unknown log-mel type '{other}' (expected float32 or float16)"
            )),
        }
    }
}

impl std::fmt::Display for LogmelType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The DCASE2024 training split percentages, smallest first.
pub const SPLITS: [u8; 5] = [5, 10, 25, 50, 100];

/// The device impulse responses a shard set was made with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct DirSet {
    /// Name of the set, e.g. `micirp`.
    pub name: String,
    /// The IR names (file stems), in the order their indices were drawn from.
    pub irs: Vec<String>,
}

/// The key-value metadata every shard carries.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardMeta {
    /// Spec version the shard was written with.
    pub spec_version: u32,
    /// Front-end configuration of the `logmel` column.
    pub frontend: FrontEndConfig,
    /// Label vocabulary (`label` indexes it).
    pub labels: Vocabulary,
    /// Device vocabulary (`device_id` indexes it).
    pub devices: Vocabulary,
    /// Energy threshold used to gate DIR variants.
    pub energy_threshold: f32,
    /// DIR set used for `dir` variants.
    pub dir_set: DirSet,
    /// Where the teacher logits came from (empty when none).
    pub teacher: String,
    /// Dataset name.
    pub dataset: String,
    /// Element type of the `logmel` column.
    pub logmel_type: LogmelType,
}

impl ShardMeta {
    /// Metadata for the current spec version.
    pub fn new(frontend: FrontEndConfig, labels: Vocabulary, devices: Vocabulary) -> Self {
        Self {
            spec_version: SPEC_VERSION,
            frontend,
            labels,
            devices,
            energy_threshold: 0.0,
            dir_set: DirSet::default(),
            teacher: String::new(),
            dataset: String::new(),
            logmel_type: LogmelType::Float32,
        }
    }

    /// Number of classes (length of the label vocabulary).
    pub fn n_classes(&self) -> usize {
        self.labels.len()
    }

    /// The metadata as string key-value pairs.
    pub fn to_key_values(&self) -> HashMap<String, String> {
        let json = |v: &dyn erased::Json| v.json();
        HashMap::from([
            (META_SPEC_VERSION.into(), self.spec_version.to_string()),
            (META_FRONTEND.into(), json(&self.frontend)),
            (META_LABELS.into(), json(&self.labels)),
            (META_DEVICES.into(), json(&self.devices)),
            (
                META_ENERGY_THRESHOLD.into(),
                self.energy_threshold.to_string(),
            ),
            (META_DIR_SET.into(), json(&self.dir_set)),
            (META_TEACHER.into(), self.teacher.clone()),
            (META_DATASET.into(), self.dataset.clone()),
            (META_LOGMEL_TYPE.into(), self.logmel_type.as_str().into()),
        ])
    }

    /// Reads and checks the metadata of a shard. `source` names the file in errors.
    ///
    /// Fails with [`SpecError::NotAShard`] when the spec version key is missing and with
    /// [`SpecError::VersionMismatch`] when it is outside [`MIN_SPEC_VERSION`] ..=
    /// [`SPEC_VERSION`]. A missing [`META_LOGMEL_TYPE`] means float32.
    pub fn from_key_values(kv: &HashMap<String, String>, source: &str) -> Result<Self, SpecError> {
        let get = |key: &str| {
            kv.get(key).ok_or_else(|| SpecError::MissingMetadata {
                file: source.to_string(),
                key: key.to_string(),
            })
        };
        let version_text = kv
            .get(META_SPEC_VERSION)
            .ok_or_else(|| SpecError::NotAShard {
                file: source.to_string(),
            })?;
        let spec_version: u32 =
            version_text
                .trim()
                .parse()
                .map_err(|_| SpecError::BadMetadata {
                    file: source.to_string(),
                    key: META_SPEC_VERSION.to_string(),
                    problem: format!("'{version_text}' is not a version number"),
                })?;
        if !(MIN_SPEC_VERSION..=SPEC_VERSION).contains(&spec_version) {
            return Err(SpecError::VersionMismatch {
                file: source.to_string(),
                found: spec_version,
                expected: SPEC_VERSION,
            });
        }
        let parse_json = |key: &str| -> Result<serde_json::Value, SpecError> {
            serde_json::from_str(get(key)?).map_err(|e| SpecError::BadMetadata {
                file: source.to_string(),
                key: key.to_string(),
                problem: e.to_string(),
            })
        };
        fn typed<T: serde::de::DeserializeOwned>(
            v: serde_json::Value,
            source: &str,
            key: &str,
        ) -> Result<T, SpecError> {
            serde_json::from_value(v).map_err(|e| SpecError::BadMetadata {
                file: source.to_string(),
                key: key.to_string(),
                problem: e.to_string(),
            })
        }
        let threshold_text = get(META_ENERGY_THRESHOLD)?;
        Ok(Self {
            spec_version,
            frontend: typed(parse_json(META_FRONTEND)?, source, META_FRONTEND)?,
            labels: typed(parse_json(META_LABELS)?, source, META_LABELS)?,
            devices: typed(parse_json(META_DEVICES)?, source, META_DEVICES)?,
            energy_threshold: threshold_text.trim().parse().map_err(|_| {
                SpecError::BadMetadata {
                    file: source.to_string(),
                    key: META_ENERGY_THRESHOLD.to_string(),
                    problem: format!("'{threshold_text}' is not a number"),
                }
            })?,
            dir_set: typed(parse_json(META_DIR_SET)?, source, META_DIR_SET)?,
            teacher: kv.get(META_TEACHER).cloned().unwrap_or_default(),
            dataset: kv.get(META_DATASET).cloned().unwrap_or_default(),
            logmel_type: match kv.get(META_LOGMEL_TYPE) {
                None => LogmelType::Float32,
                Some(t) => t.parse().map_err(|problem| SpecError::BadMetadata {
                    file: source.to_string(),
                    key: META_LOGMEL_TYPE.to_string(),
                    problem,
                })?,
            },
        })
    }

    /// The Arrow schema of a shard with this metadata (schema-level metadata included).
    pub fn schema(&self) -> SchemaRef {
        let dict = || DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
        let list = |item: DataType, n: usize| {
            DataType::FixedSizeList(Arc::new(Field::new("item", item, false)), n as i32)
        };
        let fields = vec![
            Field::new(col::CLIP_ID, DataType::Utf8, false),
            Field::new(col::SOURCE_FILE, DataType::Utf8, false),
            Field::new(col::SCENE_LABEL, dict(), true),
            Field::new(col::LABEL, DataType::Int32, true),
            Field::new(col::DEVICE, dict(), false),
            Field::new(col::DEVICE_ID, DataType::Int32, false),
            Field::new(col::CITY, dict(), false),
            Field::new(col::IDENTIFIER, dict(), false),
            Field::new(col::SEGMENT_ID, DataType::Utf8, false),
            Field::new(col::SEGMENT_INDEX, DataType::Int32, false),
            Field::new(col::SET, dict(), false),
            Field::new(col::SPLIT, DataType::UInt8, true),
            Field::new(col::VARIANT, dict(), false),
            Field::new(col::VARIANT_SOURCE, DataType::Utf8, true),
            Field::new(col::ENERGY, DataType::Float32, false),
            Field::new(
                col::TEACHER_LOGITS,
                list(DataType::Float32, self.n_classes()),
                true,
            ),
            Field::new(
                col::LOGMEL,
                list(self.logmel_type.arrow_type(), self.frontend.logmel_len()),
                false,
            ),
        ];
        Arc::new(Schema::new_with_metadata(fields, self.to_key_values()))
    }

    /// Checks that `schema` is a shard schema of this spec version and returns its metadata.
    /// `source` names the file in errors. Column names, types and order must match exactly.
    pub fn validate(schema: &Schema, source: &str) -> Result<Self, SpecError> {
        let meta = Self::from_key_values(&HashMap::from(schema.metadata()), source)?;
        let expected = meta.schema();
        for field in expected.fields() {
            let found =
                schema
                    .field_with_name(field.name())
                    .map_err(|_| SpecError::MissingColumn {
                        file: source.to_string(),
                        column: field.name().to_string(),
                    })?;
            if found.data_type() != field.data_type() {
                return Err(SpecError::ColumnType {
                    file: source.to_string(),
                    column: field.name().to_string(),
                    found: found.data_type().to_string(),
                    expected: field.data_type().to_string(),
                });
            }
        }
        if schema.fields().len() != expected.fields().len() {
            let extra: Vec<_> = schema
                .fields()
                .iter()
                .filter(|f| expected.field_with_name(f.name()).is_err())
                .map(|f| f.name().to_string())
                .collect();
            return Err(SpecError::ExtraColumns {
                file: source.to_string(),
                columns: extra,
            });
        }
        Ok(meta)
    }
}

mod erased {
    /// Object-safe JSON serialisation for the metadata map.
    pub trait Json {
        fn json(&self) -> String;
    }
    impl<T: serde::Serialize> Json for T {
        fn json(&self) -> String {
            serde_json::to_string(self).expect("metadata serialises")
        }
    }
}

/// One row of a shard: a clip (or one variant of it) with its features.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipRecord {
    /// See [`col::CLIP_ID`].
    pub clip_id: String,
    /// See [`col::SOURCE_FILE`].
    pub source_file: String,
    /// Scene label name, `None` when unknown.
    pub scene_label: Option<String>,
    /// Index of the scene label in the label vocabulary.
    pub label: Option<i32>,
    /// Device name.
    pub device: String,
    /// Index of the device in the device vocabulary.
    pub device_id: i32,
    /// City.
    pub city: String,
    /// `<city>-<location>`.
    pub identifier: String,
    /// `<scene>-<city>-<location>-<segment>`.
    pub segment_id: String,
    /// Second within the segment.
    pub segment_index: i32,
    /// Set.
    pub set: ClipSet,
    /// Smallest DCASE training split containing the clip.
    pub split: Option<u8>,
    /// Variant.
    pub variant: Variant,
    /// DIR name or replay file.
    pub variant_source: Option<String>,
    /// Clip energy (sum of squares of the 32 kHz waveform).
    pub energy: f32,
    /// Teacher logits (length `n_classes`) or `None`.
    pub teacher_logits: Option<Vec<f32>>,
    /// Log-mel, `n_mels * n_frames` values, mel-major (rounded to the column's
    /// [`LogmelType`] when written).
    pub logmel: Vec<f32>,
}

/// Builds a [`RecordBatch`] of the shard schema from records; checks list lengths.
pub fn records_to_batch(
    meta: &ShardMeta,
    records: &[ClipRecord],
) -> Result<RecordBatch, SpecError> {
    let n_classes = meta.n_classes();
    let logmel_len = meta.frontend.logmel_len();
    let n = records.len();
    let mut clip_id = StringBuilder::with_capacity(n, n * 48);
    let mut source_file = StringBuilder::with_capacity(n, n * 56);
    let mut scene = StringDictionaryBuilder::<Int32Type>::new();
    let mut label = Int32Builder::with_capacity(n);
    let mut device = StringDictionaryBuilder::<Int32Type>::new();
    let mut device_id = Int32Builder::with_capacity(n);
    let mut city = StringDictionaryBuilder::<Int32Type>::new();
    let mut identifier = StringDictionaryBuilder::<Int32Type>::new();
    let mut segment_id = StringBuilder::with_capacity(n, n * 40);
    let mut segment_index = Int32Builder::with_capacity(n);
    let mut set = StringDictionaryBuilder::<Int32Type>::new();
    let mut split = UInt8Builder::with_capacity(n);
    let mut variant = StringDictionaryBuilder::<Int32Type>::new();
    let mut variant_source = StringBuilder::with_capacity(n, n * 16);
    let mut energy = Float32Builder::with_capacity(n);
    let item = |t: DataType| Arc::new(Field::new("item", t, false));
    let mut logits = FixedSizeListBuilder::with_capacity(
        Float32Builder::with_capacity(n * n_classes),
        n_classes as i32,
        n,
    )
    .with_field(item(DataType::Float32));
    let mut logmel = LogmelBuilder::new(meta.logmel_type, logmel_len, n);

    for r in records {
        if r.logmel.len() != logmel_len {
            return Err(SpecError::RecordShape {
                clip_id: r.clip_id.clone(),
                column: col::LOGMEL.into(),
                found: r.logmel.len(),
                expected: logmel_len,
            });
        }
        clip_id.append_value(&r.clip_id);
        source_file.append_value(&r.source_file);
        scene.append_option(r.scene_label.as_deref());
        label.append_option(r.label);
        device.append_value(&r.device);
        device_id.append_value(r.device_id);
        city.append_value(&r.city);
        identifier.append_value(&r.identifier);
        segment_id.append_value(&r.segment_id);
        segment_index.append_value(r.segment_index);
        set.append_value(r.set.as_str());
        split.append_option(r.split);
        variant.append_value(r.variant.as_str());
        variant_source.append_option(r.variant_source.as_deref());
        energy.append_value(r.energy);
        match &r.teacher_logits {
            Some(t) if t.len() == n_classes => {
                logits.values().append_slice(t);
                logits.append(true);
            }
            Some(t) => {
                return Err(SpecError::RecordShape {
                    clip_id: r.clip_id.clone(),
                    column: col::TEACHER_LOGITS.into(),
                    found: t.len(),
                    expected: n_classes,
                });
            }
            None => {
                logits.values().append_slice(&vec![0.0; n_classes]);
                logits.append(false);
            }
        }
        logmel.append(&r.logmel);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(clip_id.finish()),
        Arc::new(source_file.finish()),
        Arc::new(scene.finish()),
        Arc::new(label.finish()),
        Arc::new(device.finish()),
        Arc::new(device_id.finish()),
        Arc::new(city.finish()),
        Arc::new(identifier.finish()),
        Arc::new(segment_id.finish()),
        Arc::new(segment_index.finish()),
        Arc::new(set.finish()),
        Arc::new(split.finish()),
        Arc::new(variant.finish()),
        Arc::new(variant_source.finish()),
        Arc::new(energy.finish()),
        Arc::new(logits.finish()),
        logmel.finish(),
    ];
    RecordBatch::try_new(meta.schema(), columns).map_err(|e| SpecError::Arrow(e.to_string()))
}

/// The builder of the `logmel` column in its element type.
enum LogmelBuilder {
    F32(FixedSizeListBuilder<Float32Builder>),
    F16(FixedSizeListBuilder<Float16Builder>, Vec<half::f16>),
}

impl LogmelBuilder {
    fn new(t: LogmelType, len: usize, rows: usize) -> Self {
        let field = Arc::new(Field::new("item", t.arrow_type(), false));
        match t {
            LogmelType::Float32 => Self::F32(
                FixedSizeListBuilder::with_capacity(
                    Float32Builder::with_capacity(rows * len),
                    len as i32,
                    rows,
                )
                .with_field(field),
            ),
            LogmelType::Float16 => Self::F16(
                FixedSizeListBuilder::with_capacity(
                    Float16Builder::with_capacity(rows * len),
                    len as i32,
                    rows,
                )
                .with_field(field),
                vec![half::f16::ZERO; len],
            ),
        }
    }

    /// Appends one row (rounded to nearest, ties to even, for float16).
    fn append(&mut self, values: &[f32]) {
        match self {
            Self::F32(b) => {
                b.values().append_slice(values);
                b.append(true);
            }
            Self::F16(b, scratch) => {
                use half::slice::HalfFloatSliceExt;
                scratch.convert_from_f32_slice(values);
                b.values().append_slice(scratch);
                b.append(true);
            }
        }
    }

    fn finish(self) -> ArrayRef {
        match self {
            Self::F32(mut b) => Arc::new(b.finish()),
            Self::F16(mut b, _) => Arc::new(b.finish()),
        }
    }
}
