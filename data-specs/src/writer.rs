//! The Parquet writer properties of a shard: what `pipeline features` writes, what its
//! teacher-logits rewrites keep, and what the loader's synthetic shard sets imitate.
//!
//! - the codec and `max_row_group_row_count` given by the writer (the pipeline's choices and
//!   their measurements are in `pipeline::shards`);
//! - on the two float leaves, `logmel.list.item` and `teacher_logits.list.item`: no dictionary
//!   (a dictionary of random floats never pays), no statistics (min/max of log-mel values helps
//!   no query), and `BYTE_STREAM_SPLIT` when asked (set per column: globally it would hit the
//!   string columns);
//! - the shard metadata ([`ShardMeta::to_key_values`]) as file key-value metadata, sorted by key
//!   so that the bytes are deterministic.

use std::collections::BTreeMap;

use parquet::basic::{Compression, Encoding};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use crate::schema::{LogmelType, ShardMeta, col};

/// The Parquet leaf of a list column's values (`<column>.list.item`).
pub fn list_leaf(column: &str) -> ColumnPath {
    ColumnPath::new(vec![column.into(), "list".into(), "item".into()])
}

/// Writer properties of a shard: `compression`, `BYTE_STREAM_SPLIT` on the float leaves when
/// `byte_stream_split` (on the log-mel leaf only when `logmel_type` is float32: a float16 value
/// is a 2-byte `FIXED_LEN_BYTE_ARRAY` in Parquet, whose byte-stream-split encoding DuckDB cannot
/// read), row groups of at most `row_group_rows` rows, and `meta` (when given) as file
/// key-value metadata.
pub fn shard_writer_properties(
    compression: Compression,
    byte_stream_split: bool,
    row_group_rows: usize,
    logmel_type: LogmelType,
    meta: Option<&ShardMeta>,
) -> WriterProperties {
    let mut b = WriterProperties::builder()
        .set_compression(compression)
        .set_max_row_group_row_count(Some(row_group_rows.max(1)));
    if let Some(meta) = meta {
        let kv: BTreeMap<String, String> = meta.to_key_values().into_iter().collect();
        b = b.set_key_value_metadata(Some(
            kv.into_iter().map(|(k, v)| KeyValue::new(k, v)).collect(),
        ));
    }
    for c in [col::LOGMEL, col::TEACHER_LOGITS] {
        let leaf = list_leaf(c);
        b = b
            .set_column_dictionary_enabled(leaf.clone(), false)
            .set_column_statistics_enabled(leaf.clone(), EnabledStatistics::None);
        if byte_stream_split && (c == col::TEACHER_LOGITS || logmel_type == LogmelType::Float32) {
            b = b.set_column_encoding(leaf, Encoding::BYTE_STREAM_SPLIT);
        }
    }
    b.build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_leaves_get_their_settings_and_others_keep_the_defaults() {
        let p = shard_writer_properties(
            Compression::UNCOMPRESSED,
            true,
            512,
            LogmelType::Float32,
            None,
        );
        for c in [col::LOGMEL, col::TEACHER_LOGITS] {
            let leaf = list_leaf(c);
            assert!(!p.dictionary_enabled(&leaf));
            assert_eq!(p.statistics_enabled(&leaf), EnabledStatistics::None);
            assert_eq!(p.encoding(&leaf), Some(Encoding::BYTE_STREAM_SPLIT));
        }
        let other = ColumnPath::new(vec![col::CLIP_ID.into()]);
        assert!(p.dictionary_enabled(&other));
        assert_eq!(p.encoding(&other), None);
        assert_eq!(p.max_row_group_row_count(), Some(512));
        // float16 log-mel: BYTE_STREAM_SPLIT on the teacher logits only.
        let f16 = shard_writer_properties(
            Compression::UNCOMPRESSED,
            true,
            512,
            LogmelType::Float16,
            None,
        );
        assert_eq!(f16.encoding(&list_leaf(col::LOGMEL)), None);
        assert_eq!(
            f16.encoding(&list_leaf(col::TEACHER_LOGITS)),
            Some(Encoding::BYTE_STREAM_SPLIT)
        );
        let plain = shard_writer_properties(
            Compression::UNCOMPRESSED,
            false,
            0,
            LogmelType::Float32,
            None,
        );
        assert_eq!(plain.encoding(&list_leaf(col::LOGMEL)), None);
        assert_eq!(plain.max_row_group_row_count(), Some(1));
    }
}
