//! Training checkpoints for resume: a folder with the model record, the optimizer record and a
//! JSON sidecar holding the trainer state and the length and SHA-256 of each file.
//!
//! ```text
//! <dir>/model.bpk    burn ModuleRecord (burnpack; parameter paths and ParamIds)
//! <dir>/optim.bpk    burn OptimizerRecord (burnpack; per-ParamId AdamW moments and step)
//! <dir>/state.json   {"format": "asc-train-checkpoint", "version": 1,
//!                     "files": [{"name", "bytes", "sha256"}, ...], "state": TrainState}
//! ```
//!
//! Writing is atomic for the checkpoint as a whole: the files go to a new sibling folder
//! `<dir>.new-<pid>` (each flushed to disk, the sidecar last), then the folders are swapped:
//! `<dir>` is renamed to `<dir>.old-<pid>`, the new folder to `<dir>`, and the leftovers are
//! deleted. A crash at any point leaves the previous checkpoint intact under `<dir>` or
//! `<dir>.old-<pid>`, and a complete new one when its sidecar was written. Loading checks every
//! listed file's length and SHA-256 before decoding it, so a truncated or corrupted file is
//! refused with an error naming it; [`newest_intact`] picks, among the checkpoint folders of a
//! run (`last`, `best` and such leftovers), the newest that verifies, and says so when that is
//! not the one asked for.
//!
//! The module record keeps each parameter's `ParamId`, and the optimizer's state is keyed by
//! those ids, so the optimizer state applies to the loaded model as it did before saving.
//!
//! Random numbers: `StdRng` cannot be serialized, so the trainer derives every generator from
//! the run seed: [`derive_seed`] mixes `(seed, epoch, stream)` with SplitMix64, and
//! [`epoch_rng`] seeds a `StdRng` from it. Resuming at epoch `e` recreates the generators of
//! epoch `e` exactly; only the seed is stored.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::optim::{ModuleOptimizer, OptimizerRecord};
use burn::store::ModuleRecord;
use burn::tensor::Bytes;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// File name of the model record inside a checkpoint folder.
pub const MODEL_FILE: &str = "model.bpk";
/// File name of the optimizer record inside a checkpoint folder.
pub const OPTIM_FILE: &str = "optim.bpk";
/// File name of the JSON sidecar inside a checkpoint folder.
pub const STATE_FILE: &str = "state.json";
/// `format` tag of the sidecar.
pub const FORMAT: &str = "asc-train-checkpoint";
/// Sidecar format version.
pub const VERSION: u32 = 1;

/// Why a checkpoint could not be written or read; each variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// A file system operation failed.
    #[error("checkpoint file {path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file listed in the sidecar has the wrong length (truncated or replaced).
    #[error(
        "checkpoint file {path} has {got} bytes, the sidecar says {expected} (truncated or replaced)"
    )]
    Length {
        /// The file.
        path: PathBuf,
        /// Length recorded in the sidecar.
        expected: u64,
        /// Length found on disk.
        got: u64,
    },
    /// A file listed in the sidecar has the wrong SHA-256 (corrupted or replaced).
    #[error("checkpoint file {path} is corrupted: SHA-256 {got}, the sidecar says {expected}")]
    Checksum {
        /// The file.
        path: PathBuf,
        /// Digest recorded in the sidecar.
        expected: String,
        /// Digest of the file on disk.
        got: String,
    },
    /// The sidecar is not valid JSON of the expected shape.
    #[error("checkpoint sidecar {path} is not valid: {source}")]
    Sidecar {
        /// The sidecar.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },
    /// The sidecar has another format tag or version, or does not list a required file.
    #[error("checkpoint sidecar {path}: {message}")]
    Format {
        /// The sidecar.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// burn could not encode or decode / apply a record.
    #[error("checkpoint record {path}: {message}")]
    Record {
        /// The record file.
        path: PathBuf,
        /// burn's error message.
        message: String,
    },
    /// No checkpoint folder of a run verifies.
    #[error("no intact checkpoint in {path}: {problems}")]
    NoneIntact {
        /// The run's checkpoints folder.
        path: PathBuf,
        /// Each candidate's problem.
        problems: String,
    },
    /// The checkpoint was written by a run with another configuration.
    #[error("checkpoint {path} was written with config hash {found}, this run has {expected}")]
    ConfigMismatch {
        /// The sidecar.
        path: PathBuf,
        /// Hash of this run's configuration.
        expected: String,
        /// Hash stored in the checkpoint.
        found: String,
    },
}

/// The trainer's own state, stored in the sidecar.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Number of completed epochs (the next epoch to run).
    pub epoch: u64,
    /// Number of optimizer updates done (the learning-rate schedule's step).
    pub step: u64,
    /// The run seed; every RNG is derived from it with [`derive_seed`].
    pub seed: u64,
    /// The loader's resumable state, opaque to the checkpoint.
    pub loader_state: serde_json::Value,
    /// Best value of the selection metric so far (test macro accuracy), if any.
    pub best_metric: Option<f64>,
    /// Epoch at which `best_metric` was reached.
    pub best_epoch: Option<u64>,
    /// [`config_hash`] of the resolved configuration of the run.
    pub config_hash: String,
}

/// Length and digest of one checkpoint file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileDigest {
    /// File name inside the checkpoint folder.
    pub name: String,
    /// Length in bytes.
    pub bytes: u64,
    /// Lower-case hex SHA-256.
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Sidecar {
    format: String,
    version: u32,
    files: Vec<FileDigest>,
    state: TrainState,
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// SHA-256 of the JSON serialization of a resolved configuration (serde_json writes struct
/// fields in declaration order and maps in key order, so the hash is stable).
pub fn config_hash<T: Serialize>(config: &T) -> String {
    let json = serde_json::to_vec(config).unwrap_or_default();
    sha256_hex(&json)
}

/// SplitMix64 finaliser (Steele, Lea, Flood 2014).
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A seed for the generator `stream` of epoch `epoch` of a run seeded with `seed`:
/// `splitmix64(splitmix64(splitmix64(seed) ^ epoch) ^ stream)`.
pub fn derive_seed(seed: u64, epoch: u64, stream: u64) -> u64 {
    splitmix64(splitmix64(splitmix64(seed) ^ epoch) ^ stream)
}

/// `StdRng` for `(seed, epoch, stream)`; streams separate uses (shuffling, augmentation, ...).
pub fn epoch_rng(seed: u64, epoch: u64, stream: u64) -> StdRng {
    StdRng::seed_from_u64(derive_seed(seed, epoch, stream))
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Write `bytes` to `dir/name` through `dir/name.tmp` and a rename; returns its digest.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<FileDigest, CheckpointError> {
    let path = dir.join(name);
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(bytes).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    drop(f);
    fs::rename(&tmp, &path).map_err(io_err(&path))?;
    Ok(FileDigest {
        name: name.to_string(),
        bytes: bytes.len() as u64,
        sha256: sha256_hex(bytes),
    })
}

/// Save `model`, `optim` and `state` as the checkpoint folder `dir`, atomically as a whole
/// (see the module documentation).
pub fn save_checkpoint<M: Module>(
    dir: &Path,
    model: &M,
    optim: &ModuleOptimizer,
    state: &TrainState,
) -> Result<(), CheckpointError> {
    save_steps(dir, model, optim, state, None).map(|_| ())
}

/// A sibling of `dir` named `<dir name><suffix>`.
fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    dir.with_file_name(name)
}

/// [`save_checkpoint`] as its sequence of file system steps; with `stop_after: Some(k)` it
/// stops after `k` steps, as a crash there would (tests of the crash points). Returns whether
/// it completed.
fn save_steps<M: Module>(
    dir: &Path,
    model: &M,
    optim: &ModuleOptimizer,
    state: &TrainState,
    stop_after: Option<usize>,
) -> Result<bool, CheckpointError> {
    let mut steps = 0usize;
    let mut step = || {
        steps += 1;
        stop_after.is_some_and(|k| steps > k)
    };
    let parent = dir.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(io_err(parent))?;
    let pid = std::process::id();
    let new_dir = sibling(dir, &format!(".new-{pid}"));
    if new_dir.exists() {
        fs::remove_dir_all(&new_dir).map_err(io_err(&new_dir))?;
    }
    fs::create_dir_all(&new_dir).map_err(io_err(&new_dir))?;
    let record_err = |name: &str| {
        let path = dir.join(name);
        move |e: burn::store::RecordError| CheckpointError::Record {
            path,
            message: e.to_string(),
        }
    };
    let model_bytes = model
        .clone()
        .into_record()
        .into_bytes()
        .map_err(record_err(MODEL_FILE))?;
    let optim_bytes = optim
        .to_record()
        .into_bytes()
        .map_err(record_err(OPTIM_FILE))?;
    let mut files = Vec::new();
    for (name, bytes) in [
        (MODEL_FILE, &model_bytes[..]),
        (OPTIM_FILE, &optim_bytes[..]),
    ] {
        if step() {
            return Ok(false);
        }
        files.push(write_atomic(&new_dir, name, bytes)?);
    }
    let sidecar = Sidecar {
        format: FORMAT.to_string(),
        version: VERSION,
        files,
        state: state.clone(),
    };
    let state_path = new_dir.join(STATE_FILE);
    let json = serde_json::to_vec_pretty(&sidecar).map_err(|source| CheckpointError::Sidecar {
        path: state_path.clone(),
        source,
    })?;
    if step() {
        return Ok(false);
    }
    write_atomic(&new_dir, STATE_FILE, &json)?;
    sync_dir(&new_dir);
    // Swap: the previous checkpoint aside, the new one in, then the leftovers away.
    let old_dir = sibling(dir, &format!(".old-{pid}"));
    if dir.exists() {
        if step() {
            return Ok(false);
        }
        if old_dir.exists() {
            fs::remove_dir_all(&old_dir).map_err(io_err(&old_dir))?;
        }
        fs::rename(dir, &old_dir).map_err(io_err(dir))?;
    }
    if step() {
        return Ok(false);
    }
    fs::rename(&new_dir, dir).map_err(io_err(dir))?;
    sync_dir(parent);
    if step() {
        return Ok(false);
    }
    // Every other folder of this tag (ours, and those of crashed saves) is older than `dir`.
    for (path, _) in leftovers(dir) {
        fs::remove_dir_all(&path).map_err(io_err(&path))?;
    }
    Ok(true)
}

/// Flushes a folder's entries to disk (best effort; not every platform can open folders).
fn sync_dir(dir: &Path) {
    if let Ok(f) = File::open(dir) {
        let _ = f.sync_all();
    }
}

/// The leftover folders of the checkpoint `dir` from interrupted saves: `<dir>.new-<pid>` and
/// `<dir>.old-<pid>`, as `(path, file name)`.
fn leftovers(dir: &Path) -> Vec<(PathBuf, String)> {
    let Some(tag) = dir.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return Vec::new();
    };
    let Some(parent) = dir.parent() else {
        return Vec::new();
    };
    let Ok(entries) = fs::read_dir(parent) else {
        return Vec::new();
    };
    let mut out: Vec<(PathBuf, String)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let rest = name.strip_prefix(&tag)?;
            let pid = rest
                .strip_prefix(".new-")
                .or_else(|| rest.strip_prefix(".old-"))?;
            pid.parse::<u32>().ok()?;
            e.path().is_dir().then(|| (e.path(), name))
        })
        .collect();
    out.sort();
    out
}

/// The newest intact checkpoint of a run: among the folders of `root` (`<run>/checkpoints`) -
/// `preferred` (e.g. `last`), the other tags (`best`) and the leftovers of interrupted saves -
/// the one with the most updates whose files all verify ([`verify_checkpoint`]). When that is
/// not `root/preferred`, a note on stderr says why and which one is used. Fails, naming every
/// candidate's problem, when none is intact.
pub fn newest_intact(root: &Path, preferred: &str) -> Result<PathBuf, CheckpointError> {
    let wanted = root.join(preferred);
    let mut candidates: Vec<PathBuf> = fs::read_dir(root)
        .map_err(io_err(root))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    candidates.sort();
    let mut best: Option<(PathBuf, TrainState)> = None;
    let mut problems = Vec::new();
    for dir in candidates {
        match verify_checkpoint(&dir) {
            Ok(state) => {
                // Most updates first; on a tie the preferred folder.
                let better = best.as_ref().is_none_or(|(b, s)| {
                    state.step > s.step || (state.step == s.step && dir == wanted && *b != wanted)
                });
                if better {
                    best = Some((dir, state));
                }
            }
            Err(e) => problems.push((dir, e)),
        }
    }
    let Some((dir, state)) = best else {
        let listed: Vec<String> = problems.iter().map(|(_, e)| e.to_string()).collect();
        return Err(CheckpointError::NoneIntact {
            path: root.to_path_buf(),
            problems: if listed.is_empty() {
                "no checkpoint folder".into()
            } else {
                listed.join("; ")
            },
        });
    };
    if dir != wanted {
        let why = match problems.iter().find(|(p, _)| *p == wanted) {
            Some((_, e)) => format!("is not intact ({e})"),
            None if wanted.exists() => "is older".to_string(),
            None => "is missing".to_string(),
        };
        eprintln!(
            "note: checkpoint {} {why}; using {} (epoch {}, update {}), the newest intact \
             checkpoint",
            wanted.display(),
            dir.display(),
            state.epoch,
            state.step
        );
    }
    Ok(dir)
}

fn read_sidecar(dir: &Path) -> Result<Sidecar, CheckpointError> {
    let path = dir.join(STATE_FILE);
    let text = fs::read(&path).map_err(io_err(&path))?;
    let sidecar: Sidecar =
        serde_json::from_slice(&text).map_err(|source| CheckpointError::Sidecar {
            path: path.clone(),
            source,
        })?;
    if sidecar.format != FORMAT || sidecar.version != VERSION {
        return Err(CheckpointError::Format {
            path,
            message: format!(
                "format {:?} version {}, expected {FORMAT:?} version {VERSION}",
                sidecar.format, sidecar.version
            ),
        });
    }
    for required in [MODEL_FILE, OPTIM_FILE] {
        if !sidecar.files.iter().any(|f| f.name == required) {
            return Err(CheckpointError::Format {
                path,
                message: format!("does not list {required}"),
            });
        }
    }
    Ok(sidecar)
}

/// Read `dir/<entry.name>` and check its length and SHA-256 against the sidecar.
fn read_verified(dir: &Path, entry: &FileDigest) -> Result<Vec<u8>, CheckpointError> {
    let path = dir.join(&entry.name);
    let bytes = fs::read(&path).map_err(io_err(&path))?;
    if bytes.len() as u64 != entry.bytes {
        return Err(CheckpointError::Length {
            path,
            expected: entry.bytes,
            got: bytes.len() as u64,
        });
    }
    let got = sha256_hex(&bytes);
    if got != entry.sha256 {
        return Err(CheckpointError::Checksum {
            path,
            expected: entry.sha256.clone(),
            got,
        });
    }
    Ok(bytes)
}

/// Verify every file of the checkpoint in `dir` and return its trainer state (without decoding
/// the records).
pub fn verify_checkpoint(dir: &Path) -> Result<TrainState, CheckpointError> {
    let sidecar = read_sidecar(dir)?;
    for entry in &sidecar.files {
        read_verified(dir, entry)?;
    }
    Ok(sidecar.state)
}

/// Load the checkpoint in `dir` into `model` (a freshly initialised module of the same
/// architecture, on the target device) and `optim` (a fresh optimizer of the same kind).
///
/// Every file is verified before it is decoded.
pub fn load_checkpoint<M: Module>(
    dir: &Path,
    model: M,
    optim: ModuleOptimizer,
) -> Result<(M, ModuleOptimizer, TrainState), CheckpointError> {
    let sidecar = read_sidecar(dir)?;
    let entry = |name: &str| {
        sidecar
            .files
            .iter()
            .find(|f| f.name == name)
            .expect("read_sidecar checked the required files")
    };
    // Verify everything first, so a corrupt optimizer file is reported before any decoding.
    let model_bytes = read_verified(dir, entry(MODEL_FILE))?;
    let optim_bytes = read_verified(dir, entry(OPTIM_FILE))?;
    let record_err = |name: &str| {
        let path = dir.join(name);
        move |e: burn::store::RecordError| CheckpointError::Record {
            path,
            message: e.to_string(),
        }
    };
    let record = ModuleRecord::from_bytes(Bytes::from_bytes_vec(model_bytes))
        .map_err(record_err(MODEL_FILE))?;
    let model = model
        .try_load_record(record)
        .map_err(record_err(MODEL_FILE))?;
    let optim_record = OptimizerRecord::from_bytes(Bytes::from_bytes_vec(optim_bytes))
        .map_err(record_err(OPTIM_FILE))?;
    let optim = optim.load_record(optim_record);
    Ok((model, optim, sidecar.state))
}

/// Refuse a checkpoint whose configuration hash differs from this run's.
pub fn check_config(
    dir: &Path,
    state: &TrainState,
    expected_hash: &str,
) -> Result<(), CheckpointError> {
    if state.config_hash == expected_hash {
        Ok(())
    } else {
        Err(CheckpointError::ConfigMismatch {
            path: dir.join(STATE_FILE),
            expected: expected_hash.to_string(),
            found: state.config_hash.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::{Linear, LinearConfig};
    use burn::optim::{AdamWConfig, GradientsParams};
    use burn::tensor::{Device, Tensor, TensorData};
    use rand::Rng;

    fn weights(m: &Linear) -> Vec<f32> {
        let mut v = m.weight.val().into_data().try_to_vec::<f32>().unwrap();
        v.extend(
            m.bias
                .as_ref()
                .unwrap()
                .val()
                .into_data()
                .try_to_vec::<f32>()
                .unwrap(),
        );
        v
    }

    fn train_step(model: Linear, optim: &mut ModuleOptimizer, device: &Device) -> Linear {
        let x = Tensor::<2>::from_data(
            TensorData::new(vec![0.5f32, -1.0, 2.0, 1.5, 0.2, -0.3], [2, 3]),
            device,
        );
        let loss = model.forward(x).square().mean();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        optim.step(1e-2, model, grads)
    }

    fn state() -> TrainState {
        TrainState {
            epoch: 3,
            step: 42,
            seed: 7,
            loader_state: serde_json::json!({"cursor": 17, "order": [2, 0, 1]}),
            best_metric: Some(0.61),
            best_epoch: Some(2),
            config_hash: config_hash(&serde_json::json!({"lr": 0.005})),
        }
    }

    /// A trained model + AdamW with moments, saved to a temporary folder.
    fn saved(device: &Device) -> (tempfile::TempDir, Linear, ModuleOptimizer) {
        let mut optim = AdamWConfig::new().init();
        let mut model = LinearConfig::new(3, 2).init(device);
        for _ in 0..3 {
            model = train_step(model, &mut optim, device);
        }
        let dir = tempfile::tempdir().unwrap();
        save_checkpoint(dir.path(), &model, &optim, &state()).unwrap();
        (dir, model, optim)
    }

    #[test]
    fn round_trip_restores_model_optimizer_and_state() {
        let device = Device::flex().autodiff();
        let (dir, mut model, mut optim) = saved(&device);
        let fresh = LinearConfig::new(3, 2).init(&device);
        assert_ne!(weights(&fresh), weights(&model));
        let (mut loaded, mut loaded_optim, st) =
            load_checkpoint(dir.path(), fresh, AdamWConfig::new().init()).unwrap();
        assert_eq!(st, state());
        assert_eq!(weights(&loaded), weights(&model));
        // The optimizer moments came back: one more step gives bit-identical weights, while a
        // fresh optimizer (moments at zero) gives different ones.
        model = train_step(model, &mut optim, &device);
        loaded = train_step(loaded, &mut loaded_optim, &device);
        assert_eq!(weights(&loaded), weights(&model));
        let (again, _, _) = load_checkpoint(
            dir.path(),
            LinearConfig::new(3, 2).init(&device),
            AdamWConfig::new().init(),
        )
        .unwrap();
        let mut fresh_optim = AdamWConfig::new().init();
        let other = train_step(again, &mut fresh_optim, &device);
        assert_ne!(weights(&other), weights(&model));
        assert_eq!(verify_checkpoint(dir.path()).unwrap(), state());
        check_config(dir.path(), &st, &st.config_hash).unwrap();
        assert!(matches!(
            check_config(dir.path(), &st, "other"),
            Err(CheckpointError::ConfigMismatch { .. })
        ));
        // No temporary file is left behind.
        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
    }

    #[test]
    fn corrupt_or_truncated_files_are_refused_by_name() {
        let device = Device::flex().autodiff();
        let (dir, _, _) = saved(&device);
        let load = || {
            load_checkpoint(
                dir.path(),
                LinearConfig::new(3, 2).init(&device),
                AdamWConfig::new().init(),
            )
            .map(|(_, _, state)| state)
        };
        // Flip one byte of the optimizer record.
        let optim_path = dir.path().join(OPTIM_FILE);
        let original = fs::read(&optim_path).unwrap();
        let mut bytes = original.clone();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x5a;
        fs::write(&optim_path, &bytes).unwrap();
        let err = load().unwrap_err();
        assert!(matches!(err, CheckpointError::Checksum { .. }), "{err}");
        assert!(err.to_string().contains(OPTIM_FILE), "{err}");
        fs::write(&optim_path, &original).unwrap();
        load().unwrap();
        // Truncate the model record.
        let model_path = dir.path().join(MODEL_FILE);
        let bytes = fs::read(&model_path).unwrap();
        fs::write(&model_path, &bytes[..bytes.len() - 10]).unwrap();
        let err = load().unwrap_err();
        assert!(matches!(err, CheckpointError::Length { .. }), "{err}");
        assert!(err.to_string().contains(MODEL_FILE), "{err}");
        assert!(verify_checkpoint(dir.path()).is_err());
        // A broken sidecar.
        fs::write(dir.path().join(STATE_FILE), b"{not json").unwrap();
        let err = load().unwrap_err();
        assert!(err.to_string().contains(STATE_FILE), "{err}");
        // A missing folder.
        let err = verify_checkpoint(&dir.path().join("nope")).unwrap_err();
        assert!(matches!(err, CheckpointError::Io { .. }));
    }

    fn folder_names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_save_interrupted_at_any_step_leaves_an_intact_checkpoint() {
        let device = Device::flex().autodiff();
        let (_keep, model, optim) = saved(&device);
        let at = |step, epoch| TrainState {
            step,
            epoch,
            ..state()
        };
        // Steps: model.bpk, optim.bpk, state.json into last.new-<pid>; last -> last.old-<pid>;
        // last.new-<pid> -> last; leftovers deleted.
        for k in 0..=6 {
            let root = tempfile::tempdir().unwrap();
            let last = root.path().join("last");
            save_checkpoint(&last, &model, &optim, &at(10, 1)).unwrap();
            let done = save_steps(&last, &model, &optim, &at(20, 2), Some(k)).unwrap();
            assert_eq!(done, k >= 6, "crash point {k}");
            let dir = newest_intact(root.path(), "last").unwrap();
            let st = verify_checkpoint(&dir).unwrap();
            // The new checkpoint counts once its sidecar is written (step 3).
            assert_eq!(st.step, if k >= 3 { 20 } else { 10 }, "crash point {k}");
            let (loaded, _, st2) = load_checkpoint(
                &dir,
                LinearConfig::new(3, 2).init(&device),
                AdamWConfig::new().init(),
            )
            .unwrap();
            assert_eq!(weights(&loaded), weights(&model));
            assert_eq!(st2, st);
            if done {
                assert_eq!(folder_names(root.path()), ["last"]);
            }
            // The next complete save leaves only `last`, the newest.
            save_checkpoint(&last, &model, &optim, &at(30, 3)).unwrap();
            assert_eq!(folder_names(root.path()), ["last"], "crash point {k}");
            assert_eq!(verify_checkpoint(&last).unwrap().step, 30);
        }
    }

    #[test]
    fn a_damaged_last_falls_back_to_best_and_none_intact_names_each_problem() {
        let device = Device::flex().autodiff();
        let (_keep, model, optim) = saved(&device);
        let root = tempfile::tempdir().unwrap();
        let (last, best) = (root.path().join("last"), root.path().join("best"));
        let at = |step| TrainState { step, ..state() };
        save_checkpoint(&best, &model, &optim, &at(5)).unwrap();
        save_checkpoint(&last, &model, &optim, &at(9)).unwrap();
        assert_eq!(newest_intact(root.path(), "last").unwrap(), last);
        // A kill during an in-place rewrite (the old layout): a new model.bpk under the old
        // sidecar.
        let m = last.join(MODEL_FILE);
        let mut b = fs::read(&m).unwrap();
        b[10] ^= 1;
        fs::write(&m, &b).unwrap();
        assert_eq!(newest_intact(root.path(), "last").unwrap(), best);
        fs::remove_file(best.join(STATE_FILE)).unwrap();
        let e = newest_intact(root.path(), "last").unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, CheckpointError::NoneIntact { .. }), "{msg}");
        assert!(
            msg.contains(MODEL_FILE) && msg.contains(STATE_FILE),
            "{msg}"
        );
    }

    #[test]
    fn derived_seeds_are_stable_and_distinct() {
        // SplitMix64 reference value: the first output of SplitMix64 seeded with 0
        // (state 0 + golden gamma) is 0xE220A8397B1DCDAF.
        assert_eq!(splitmix64(0), 0xE220_A839_7B1D_CDAF);
        assert_eq!(derive_seed(1, 2, 3), derive_seed(1, 2, 3));
        let seeds: std::collections::BTreeSet<u64> = (0..50)
            .flat_map(|e| (0..4).map(move |s| derive_seed(1, e, s)))
            .collect();
        assert_eq!(seeds.len(), 200);
        let a: u64 = epoch_rng(9, 4, 0).random();
        let b: u64 = epoch_rng(9, 4, 0).random();
        assert_eq!(a, b);
        assert_ne!(
            config_hash(&serde_json::json!({"a": 1})),
            config_hash(&serde_json::json!({"a": 2}))
        );
    }
}
