//! Shard integrity on read: every shard a manifest lists is checked against the manifest's
//! SHA-256 before a reader uses it ([`verify_shards`]).
//!
//! Hashing a large set on every run would cost seconds to minutes, so a verified file is
//! remembered in a sidecar beside the manifest, `manifest.verified.json`: per shard its length,
//! modification time, status-change time and inode (its *stamp*) with the hash it was found to
//! have. A later run re-hashes only the shards whose stamp or recorded hash changed: any write
//! to a file changes its modification and status-change times (the latter cannot be set back
//! by user tools), and a replaced file has another inode. The sidecar is a cache: when it
//! cannot be written (a read-only folder), every run hashes again, and deleting it is always
//! safe.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{Manifest, SpecError};

/// File name of the verification sidecar beside `manifest.json`.
pub const VERIFIED_FILE: &str = "manifest.verified.json";
/// `format` tag of the sidecar.
const FORMAT: &str = "asc-shard-verification";
/// Sidecar version.
const VERSION: u32 = 1;

/// Lower-case hex SHA-256 of a file's bytes (FIPS 180-4), read in 1 MiB blocks.
pub fn sha256_file(path: &Path) -> Result<String, SpecError> {
    let io = |e: std::io::Error| SpecError::Io {
        file: path.display().to_string(),
        problem: e.to_string(),
    };
    let mut f = File::open(path).map_err(io)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// What identifies one state of a file's bytes without reading them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStamp {
    /// Length in bytes.
    pub bytes: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i128,
    /// Status-change time, nanoseconds since the Unix epoch (0 where the platform has none).
    pub ctime_ns: i128,
    /// Inode number (0 where the platform has none).
    pub inode: u64,
}

impl FileStamp {
    /// The stamp of `path` now.
    pub fn of(path: &Path) -> std::io::Result<Self> {
        let m = std::fs::metadata(path)?;
        let mtime_ns = m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos() as i128);
        #[cfg(unix)]
        let (ctime_ns, inode) = {
            use std::os::unix::fs::MetadataExt;
            (
                m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128,
                m.ino(),
            )
        };
        #[cfg(not(unix))]
        let (ctime_ns, inode) = (0, 0);
        Ok(Self {
            bytes: m.len(),
            mtime_ns,
            ctime_ns,
            inode,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Verified {
    stamp: FileStamp,
    sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Sidecar {
    format: String,
    version: u32,
    files: BTreeMap<String, Verified>,
}

/// What [`verify_shards`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VerifyReport {
    /// Shards checked.
    pub shards: usize,
    /// Shards hashed by this call (the others were unchanged since a verification).
    pub hashed: usize,
    /// Bytes hashed by this call.
    pub hashed_bytes: u64,
    /// Wall-clock seconds of the call.
    pub seconds: f64,
    /// Why the sidecar could not be written, if so (every run will hash again).
    pub sidecar_problem: Option<String>,
}

impl std::fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "verified {} shards against the manifest's SHA-256 ({} hashed, {:.1} MB, in {:.2} s; \
             {} unchanged since their last verification)",
            self.shards,
            self.hashed,
            self.hashed_bytes as f64 / 1e6,
            self.seconds,
            self.shards - self.hashed
        )?;
        if let Some(p) = &self.sidecar_problem {
            write!(f, "; {p}")?;
        }
        Ok(())
    }
}

/// Checks every shard of `manifest` (read from `manifest_file`) against its SHA-256, hashing
/// only the shards that changed since their last verification (see the module documentation),
/// `threads` files at a time. Fails with [`SpecError::ShardMissing`] for a listed shard that is
/// not there and [`SpecError::Checksum`] for one whose bytes differ.
pub fn verify_shards(
    manifest_file: &Path,
    manifest: &Manifest,
    threads: usize,
) -> Result<VerifyReport, SpecError> {
    let t0 = Instant::now();
    let dir = manifest_file.parent().unwrap_or(Path::new("."));
    let sidecar_path = dir.join(VERIFIED_FILE);
    let old: BTreeMap<String, Verified> = std::fs::read(&sidecar_path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Sidecar>(&b).ok())
        .filter(|s| s.format == FORMAT && s.version == VERSION)
        .map(|s| s.files)
        .unwrap_or_default();
    let mut verified: BTreeMap<String, Verified> = BTreeMap::new();
    let mut todo: Vec<(usize, PathBuf, FileStamp)> = Vec::new();
    for (k, e) in manifest.shards.iter().enumerate() {
        let path = dir.join(&e.file);
        let stamp = match FileStamp::of(&path) {
            Ok(s) => s,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Err(SpecError::ShardMissing {
                    file: path.display().to_string(),
                    manifest: manifest_file.display().to_string(),
                });
            }
            Err(err) => {
                return Err(SpecError::Io {
                    file: path.display().to_string(),
                    problem: err.to_string(),
                });
            }
        };
        match old.get(&e.file) {
            Some(v) if v.stamp == stamp && v.sha256 == e.sha256 => {
                verified.insert(e.file.clone(), v.clone());
            }
            _ => todo.push((k, path, stamp)),
        }
    }
    let hashed = todo.len();
    let hashed_bytes = todo.iter().map(|t| t.2.bytes).sum();
    let results = hash_all(&todo, threads.max(1));
    let mut mismatches = Vec::new();
    for ((k, path, stamp), result) in todo.iter().zip(results) {
        let found = result?;
        let after = FileStamp::of(path).map_err(|e| SpecError::Io {
            file: path.display().to_string(),
            problem: e.to_string(),
        })?;
        if after != *stamp {
            return Err(SpecError::Io {
                file: path.display().to_string(),
                problem: "the file changed while it was being verified; is a `pipeline` run \
                          writing this folder?"
                    .into(),
            });
        }
        let entry = &manifest.shards[*k];
        if found == entry.sha256 {
            verified.insert(
                entry.file.clone(),
                Verified {
                    stamp: *stamp,
                    sha256: found,
                },
            );
        } else {
            mismatches.push((path.clone(), entry.sha256.clone(), found));
        }
    }
    // Remember what was verified (also when a shard failed: the others need no new hash).
    let sidecar_problem = if hashed > 0 {
        store_sidecar(&sidecar_path, verified).err()
    } else {
        None
    };
    if let Some((path, expected, found)) = mismatches.first() {
        return Err(SpecError::Checksum {
            file: path.display().to_string(),
            manifest: manifest_file.display().to_string(),
            expected: expected.clone(),
            found: found.clone(),
            others: mismatches.len() - 1,
        });
    }
    Ok(VerifyReport {
        shards: manifest.shards.len(),
        hashed,
        hashed_bytes,
        seconds: t0.elapsed().as_secs_f64(),
        sidecar_problem,
    })
}

/// SHA-256 of each file of `todo`, on up to `threads` threads (one file per thread at a time).
fn hash_all(
    todo: &[(usize, PathBuf, FileStamp)],
    threads: usize,
) -> Vec<Result<String, SpecError>> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let slots: Vec<std::sync::Mutex<Option<Result<String, SpecError>>>> =
        todo.iter().map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..threads.min(todo.len()) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some((_, path, _)) = todo.get(i) else {
                        break;
                    };
                    let r = sha256_file(path);
                    *slots[i].lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
                }
            });
        }
    });
    slots
        .into_iter()
        .map(|m| {
            m.into_inner()
                .unwrap_or_else(|p| p.into_inner())
                .expect("every file hashed")
        })
        .collect()
}

/// Writes the sidecar atomically (a temporary name unique to this process, then a rename).
fn store_sidecar(path: &Path, files: BTreeMap<String, Verified>) -> Result<(), String> {
    let sidecar = Sidecar {
        format: FORMAT.into(),
        version: VERSION,
        files,
    };
    let text = serde_json::to_vec_pretty(&sidecar).expect("sidecar serialises");
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, text)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            format!(
                "cannot write {} ({e}): the shards will be hashed again by the next run",
                path.display()
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ShardEntry;

    fn set(dir: &Path, contents: &[&[u8]]) -> (PathBuf, Manifest) {
        let mut shards = Vec::new();
        for (k, c) in contents.iter().enumerate() {
            let file = format!("shard-p0of1-{k:05}.parquet");
            std::fs::write(dir.join(&file), c).unwrap();
            shards.push(ShardEntry {
                file: file.clone(),
                rows: 1,
                sha256: sha256_file(&dir.join(&file)).unwrap(),
                partition: [0, 1],
            });
        }
        let m = Manifest {
            spec_version: crate::SPEC_VERSION,
            shards,
        };
        m.store(dir).unwrap();
        (dir.join(crate::MANIFEST_FILE), m)
    }

    #[test]
    fn sha256_matches_fips_vectors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(
            sha256_file(&p).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        std::fs::write(&p, b"").unwrap();
        assert_eq!(
            sha256_file(&p).unwrap(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn hashes_once_then_trusts_unchanged_stamps_and_catches_changes() {
        let dir = tempfile::tempdir().unwrap();
        let (mf, m) = set(dir.path(), &[b"first shard", b"second shard", b"third"]);
        let r = verify_shards(&mf, &m, 2).unwrap();
        assert_eq!((r.shards, r.hashed), (3, 3));
        assert!(dir.path().join(VERIFIED_FILE).is_file());
        let r = verify_shards(&mf, &m, 2).unwrap();
        assert_eq!((r.shards, r.hashed), (3, 0));
        // Flip one byte of the second shard (same length).
        let p = dir.path().join(&m.shards[1].file);
        let mut b = std::fs::read(&p).unwrap();
        b[3] ^= 0x20;
        std::fs::write(&p, &b).unwrap();
        let e = verify_shards(&mf, &m, 2).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, SpecError::Checksum { .. }), "{msg}");
        assert!(msg.contains(&m.shards[1].file), "{msg}");
        assert!(msg.contains(&m.shards[1].sha256), "{msg}");
        assert!(msg.contains(&sha256_file(&p).unwrap()), "{msg}");
        // Still refused on the next call (a failed shard is never remembered as verified).
        assert!(verify_shards(&mf, &m, 1).is_err());
        b[3] ^= 0x20;
        std::fs::write(&p, &b).unwrap();
        let r = verify_shards(&mf, &m, 1).unwrap();
        assert_eq!(r.hashed, 1);
        // A deleted shard: the message says the manifest lists it.
        std::fs::remove_file(dir.path().join(&m.shards[2].file)).unwrap();
        let msg = verify_shards(&mf, &m, 1).unwrap_err().to_string();
        assert!(
            msg.contains(&m.shards[2].file)
                && msg.contains("listed in")
                && msg.contains("manifest.json"),
            "{msg}"
        );
    }

    #[test]
    fn a_damaged_sidecar_or_a_forged_hash_is_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let (mf, m) = set(dir.path(), &[b"a", b"b"]);
        verify_shards(&mf, &m, 1).unwrap();
        std::fs::write(dir.path().join(VERIFIED_FILE), b"{garbage").unwrap();
        assert_eq!(verify_shards(&mf, &m, 1).unwrap().hashed, 2);
        // A manifest that records another hash than the one verified: hashed again, refused.
        let mut other = m.clone();
        other.shards[0].sha256 = "0".repeat(64);
        assert!(matches!(
            verify_shards(&mf, &other, 1),
            Err(SpecError::Checksum { .. })
        ));
    }
}
