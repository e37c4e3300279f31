//! The shard-set manifest: `manifest.json` beside the shards, listing every shard with its row
//! count and SHA-256, so that a set can be checked and combined from partitions.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::SpecError;

/// File name of the manifest inside a shard folder.
pub const MANIFEST_FILE: &str = "manifest.json";

/// One shard of a set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardEntry {
    /// File name relative to the manifest's folder, e.g. `shard-p0of1-00000.parquet`.
    pub file: String,
    /// Number of rows.
    pub rows: u64,
    /// Lower-case hex SHA-256 of the file's bytes.
    pub sha256: String,
    /// Partition `i` of `n` that wrote it (`[i, n]`).
    pub partition: [u32; 2],
}

/// The manifest of a shard set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Spec version of every shard listed.
    pub spec_version: u32,
    /// The shards, sorted by file name.
    pub shards: Vec<ShardEntry>,
}

impl Manifest {
    /// Total number of rows.
    pub fn total_rows(&self) -> u64 {
        self.shards.iter().map(|s| s.rows).sum()
    }

    /// Reads `dir/manifest.json` (or the file itself when `path` is a file).
    pub fn load(path: &Path) -> Result<Self, SpecError> {
        let file = if path.is_dir() {
            path.join(MANIFEST_FILE)
        } else {
            path.to_path_buf()
        };
        let text = std::fs::read_to_string(&file).map_err(|e| SpecError::Io {
            file: file.display().to_string(),
            problem: e.to_string(),
        })?;
        let m: Manifest = serde_json::from_str(&text).map_err(|e| SpecError::BadManifest {
            file: file.display().to_string(),
            problem: e.to_string(),
        })?;
        if !(crate::MIN_SPEC_VERSION..=crate::SPEC_VERSION).contains(&m.spec_version) {
            return Err(SpecError::VersionMismatch {
                file: file.display().to_string(),
                found: m.spec_version,
                expected: crate::SPEC_VERSION,
            });
        }
        Ok(m)
    }

    /// Writes `dir/manifest.json` atomically (temporary name, then rename).
    pub fn store(&self, dir: &Path) -> Result<(), SpecError> {
        let file = dir.join(MANIFEST_FILE);
        let tmp = dir.join(format!("{MANIFEST_FILE}.tmp"));
        let io = |e: std::io::Error| SpecError::Io {
            file: file.display().to_string(),
            problem: e.to_string(),
        };
        let text = serde_json::to_string_pretty(self).expect("manifest serialises");
        std::fs::write(&tmp, text).map_err(io)?;
        std::fs::rename(&tmp, &file).map_err(io)
    }
}
