//! Folder locks: one mechanism for every writer of a shard folder (a `pipeline features` run,
//! the manifest rewrite, `pipeline teachers join-logits`).
//!
//! A lock is a small JSON file (`<folder>/<name>.lock`) naming its holder: process id, host,
//! boot id, the process's start time (clock ticks since boot, from `/proc/<pid>/stat`), the
//! wall-clock start and what it is doing. It is created atomically *with* its contents (written
//! under a temporary name, then hard-linked to the lock name, which fails when the lock exists),
//! so a lock file is never seen half-written.
//!
//! When the lock exists, its holder is checked:
//! - **alive** (same host and boot, the process exists and has the recorded start time): an
//!   immediate error naming the folder and the holder ([`Wait::Fail`]), or, for locks held only
//!   for moments (the manifest rewrite), a wait that says whom it waits for ([`Wait::UpTo`]);
//! - **dead** (no such process, a zombie, the PID reused by a process started at another time,
//!   or the machine rebooted since): the lock is stale, taken over, and a note on stderr says so;
//! - **unknown** (held from another host, or a lock without holder information, as written by
//!   older versions): an error that names the file and says to delete it if no run is active;
//!   a legacy lock older than [`LEGACY_STALE`] is taken over as before.
//!
//! The takeover itself is serialised by a short-lived `<name>.lock.takeover` file, so two runs
//! finding the same stale lock cannot both take it.
//!
//! Temporary files of the folder carry the writer's PID ([`tmp_name`]); [`remove_stale_tmp`]
//! deletes those of processes that are no longer running.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

/// A lock without holder information (older versions) older than this is taken over.
pub const LEGACY_STALE: Duration = Duration::from_secs(600);

/// Errors of taking a lock; each names the folder or file.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another live process holds the lock.
    #[error(
        "{folder}: {holder} holds this folder (lock file {lock}); wait for it to finish, or use \
         another output folder"
    )]
    Held {
        /// The locked folder.
        folder: String,
        /// The lock file.
        lock: String,
        /// Who holds it.
        holder: String,
    },
    /// The holder cannot be checked from here (another host, or no holder information).
    #[error(
        "{folder}: the lock file {lock} is held by {holder}, which cannot be checked from this \
         machine ({why}); if no such run is active, delete {lock} and start again"
    )]
    Unverifiable {
        /// The locked folder.
        folder: String,
        /// The lock file.
        lock: String,
        /// Who holds it, as far as known.
        holder: String,
        /// Why it cannot be checked.
        why: String,
    },
    /// Reading or writing the lock failed.
    #[error("{path}: {problem}")]
    Io {
        /// File.
        path: String,
        /// What is wrong.
        problem: String,
    },
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> LockError + '_ {
    move |e| LockError::Io {
        path: path.display().to_string(),
        problem: e.to_string(),
    }
}

/// What to do when a live process holds the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Fail at once with [`LockError::Held`].
    Fail,
    /// Wait up to this long (saying on stderr whom for), then fail.
    UpTo(Duration),
}

/// The holder of a lock, as stored in the lock file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// Process id.
    pub pid: u32,
    /// Host name.
    pub host: String,
    /// Kernel boot id (`/proc/sys/kernel/random/boot_id`; empty where unknown).
    #[serde(default)]
    pub boot_id: String,
    /// Start time of the process in clock ticks since boot (`/proc/<pid>/stat` field 22; 0
    /// where unknown): tells a reused PID from the holder.
    #[serde(default)]
    pub process_start: u64,
    /// Wall-clock start of the holding, seconds since the Unix epoch.
    pub started_unix: u64,
    /// What the holder is doing (e.g. `pipeline features --partition 0/1`).
    pub purpose: String,
}

impl Holder {
    /// The current process, doing `purpose`.
    pub fn current(purpose: &str) -> Self {
        let pid = std::process::id();
        Self {
            pid,
            host: host_name(),
            boot_id: boot_id(),
            process_start: process_start(pid).unwrap_or(0),
            started_unix: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            purpose: purpose.to_string(),
        }
    }

    /// Is the holder still running? See the module documentation.
    pub fn liveness(&self) -> Liveness {
        if self.host != host_name() {
            return Liveness::Unknown(format!("it runs on host {}", self.host));
        }
        let boot = boot_id();
        if !self.boot_id.is_empty() && !boot.is_empty() && self.boot_id != boot {
            return Liveness::Dead("the machine was restarted since".into());
        }
        pid_liveness(self.pid, self.process_start)
    }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` (PID {} on host {}, started {})",
            self.purpose,
            self.pid,
            self.host,
            utc(self.started_unix)
        )
    }
}

/// Whether a lock's holder still runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Liveness {
    /// Running.
    Alive,
    /// Gone (the reason).
    Dead(String),
    /// Cannot be told from here (the reason).
    Unknown(String),
}

/// `seconds since the epoch` as `YYYY-MM-DD HH:MM:SS UTC` (civil-from-days, H. Hinnant).
pub fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn read_trimmed(path: &str) -> Option<String> {
    fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// This machine's host name (`/proc/sys/kernel/hostname`, else `$HOSTNAME`, else `localhost`).
pub fn host_name() -> String {
    read_trimmed("/proc/sys/kernel/hostname")
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| "localhost".into())
}

fn boot_id() -> String {
    read_trimmed("/proc/sys/kernel/random/boot_id").unwrap_or_default()
}

/// `(state, start time in ticks)` of a process from `/proc/<pid>/stat` (`None`: no such
/// process, or no `/proc`).
fn proc_stat(pid: u32) -> Option<(char, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses; fields after the last
    // ')' start with field 3 (state); the start time is field 22.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

fn process_start(pid: u32) -> Option<u64> {
    proc_stat(pid).map(|(_, s)| s)
}

/// Whether process `pid` (started at `start` ticks, 0 = unknown) runs on this machine.
pub fn pid_liveness(pid: u32, start: u64) -> Liveness {
    if !Path::new("/proc/self/stat").exists() {
        return Liveness::Unknown("this system has no /proc to look up processes".into());
    }
    match proc_stat(pid) {
        None => Liveness::Dead(format!("no process {pid} is running")),
        Some(('Z' | 'X', _)) => Liveness::Dead(format!("process {pid} has exited")),
        Some((_, s)) if start != 0 && s != start => Liveness::Dead(format!(
            "PID {pid} now belongs to another process, started later"
        )),
        Some(_) => Liveness::Alive,
    }
}

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// A temporary name for `path` unique to this process and call:
/// `<path>.<pid>-<seq>.tmp` (the PID lets [`remove_stale_tmp`] tell a crashed writer's files).
pub fn tmp_name(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(
        ".{}-{}.tmp",
        std::process::id(),
        TMP_SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    PathBuf::from(s)
}

/// The PID in a name made by [`tmp_name`].
fn tmp_pid(name: &str) -> Option<u32> {
    let stem = name.strip_suffix(".tmp")?;
    let (_, tag) = stem.rsplit_once('.')?;
    let (pid, seq) = tag.split_once('-')?;
    seq.parse::<u64>().ok()?;
    pid.parse().ok()
}

/// Deletes the temporary files in `dir` whose name starts with `prefix` and that were left by
/// processes no longer running ([`tmp_name`] names; a plain `<name>.tmp` of older versions is
/// removed too when `legacy` is set, i.e. when the caller holds the folder's lock). Returns the
/// names removed.
pub fn remove_stale_tmp(dir: &Path, prefix: &str, legacy: bool) -> Result<Vec<String>, LockError> {
    let mut removed = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(io(dir)(e)),
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with(prefix) || !name.ends_with(".tmp") {
            continue;
        }
        let stale = match tmp_pid(&name) {
            Some(pid) => {
                pid != std::process::id() && matches!(pid_liveness(pid, 0), Liveness::Dead(_))
            }
            None => legacy,
        };
        if stale && entry.path().is_file() {
            fs::remove_file(entry.path()).map_err(io(&entry.path()))?;
            removed.push(name);
        }
    }
    Ok(removed)
}

/// A held lock; released (its file deleted) on drop.
#[derive(Debug)]
pub struct FolderLock {
    path: PathBuf,
    holder: Holder,
}

/// What an existing lock file holds.
enum Found {
    Holder(Holder),
    /// Unparseable contents (a legacy empty lock) and the file's age.
    Legacy(Option<Duration>),
    /// The file vanished meanwhile.
    Gone,
}

fn read_lock(path: &Path) -> Result<Found, LockError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Found::Gone),
        Err(e) => return Err(io(path)(e)),
    };
    match serde_json::from_str::<Holder>(&text) {
        Ok(h) => Ok(Found::Holder(h)),
        Err(_) => {
            let age = fs::metadata(path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok());
            Ok(Found::Legacy(age))
        }
    }
}

impl FolderLock {
    /// Takes the lock `<dir>/<name>` for `purpose` (see the module documentation).
    pub fn acquire(dir: &Path, name: &str, purpose: &str, wait: Wait) -> Result<Self, LockError> {
        let path = dir.join(name);
        let holder = Holder::current(purpose);
        let text = serde_json::to_string_pretty(&holder).expect("holder serialises");
        let start = Instant::now();
        let mut announced = false;
        loop {
            if Self::try_create(&path, &text)? {
                return Ok(Self { path, holder });
            }
            let lock_s = path.display().to_string();
            let folder = dir.display().to_string();
            match read_lock(&path)? {
                Found::Gone => continue,
                Found::Holder(h) => match h.liveness() {
                    Liveness::Alive => {
                        let limit = match wait {
                            Wait::Fail => Duration::ZERO,
                            Wait::UpTo(d) => d,
                        };
                        if start.elapsed() >= limit {
                            return Err(LockError::Held {
                                folder,
                                lock: lock_s,
                                holder: h.to_string(),
                            });
                        }
                        if !announced {
                            eprintln!(
                                "waiting for {h} to release {lock_s} (up to {} s)",
                                limit.as_secs()
                            );
                            announced = true;
                        }
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    Liveness::Dead(why) => {
                        if Self::take_over(
                            &path,
                            |found| matches!(found, Found::Holder(x) if *x == h),
                        )? {
                            eprintln!(
                                "note: {lock_s}: taking over the lock left by {h}, which is no \
                                 longer running ({why})"
                            );
                        }
                    }
                    Liveness::Unknown(why) => {
                        return Err(LockError::Unverifiable {
                            folder,
                            lock: lock_s,
                            holder: h.to_string(),
                            why,
                        });
                    }
                },
                Found::Legacy(age) => {
                    if age.is_some_and(|a| a > LEGACY_STALE) {
                        if Self::take_over(&path, |found| matches!(found, Found::Legacy(_)))? {
                            eprintln!(
                                "note: {lock_s}: taking over a lock without holder information \
                                 (written by an older version), untouched for over {} minutes",
                                LEGACY_STALE.as_secs() / 60
                            );
                        }
                    } else {
                        return Err(LockError::Unverifiable {
                            folder,
                            lock: lock_s,
                            holder: "a run of an older version".into(),
                            why: "the lock file names no holder".into(),
                        });
                    }
                }
            }
        }
    }

    /// Creates the lock file with `text` atomically; `false` when it exists.
    fn try_create(path: &Path, text: &str) -> Result<bool, LockError> {
        let tmp = tmp_name(path);
        let write = || -> std::io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()
        };
        write().map_err(io(&tmp))?;
        let linked = fs::hard_link(&tmp, path);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            // A file system without hard links: exclusive create, then write (a reader may
            // briefly see an empty file, which it treats as a fresh legacy lock and reports).
            Err(_) => match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
            {
                Ok(mut f) => {
                    f.write_all(text.as_bytes()).map_err(io(path))?;
                    Ok(true)
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(io(path)(e)),
            },
        }
    }

    /// Removes the stale lock `path` if it still holds what `same` accepts, under the
    /// `<lock>.takeover` guard; `true` when this call removed it.
    fn take_over(path: &Path, same: impl Fn(&Found) -> bool) -> Result<bool, LockError> {
        let mut guard = path.as_os_str().to_owned();
        guard.push(".takeover");
        let guard = PathBuf::from(guard);
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&guard)
        {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                // Another process is taking over right now (a takeover lasts moments; a guard
                // older than a few seconds was left by a crash).
                let old = fs::metadata(&guard)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|a| a > Duration::from_secs(10));
                if old {
                    let _ = fs::remove_file(&guard);
                } else {
                    std::thread::sleep(Duration::from_millis(20));
                }
                return Ok(false);
            }
            Err(e) => return Err(io(&guard)(e)),
        }
        let result = (|| {
            if same(&read_lock(path)?) {
                match fs::remove_file(path) {
                    Ok(()) => Ok(true),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
                    Err(e) => Err(io(path)(e)),
                }
            } else {
                Ok(false)
            }
        })();
        let _ = fs::remove_file(&guard);
        result
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Gives up the lock without deleting its file (the folder holding it was moved away and is
    /// about to be deleted, see `pipeline teachers join-logits`).
    pub fn forget(self) {
        std::mem::forget(self);
    }
}

impl Drop for FolderLock {
    fn drop(&mut self) {
        // Delete the file only while it is still ours (never a successor's lock).
        if let Ok(Found::Holder(h)) = read_lock(&self.path)
            && h == self.holder
        {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// The live holders of the locks in `dir` whose file name starts with `prefix` (e.g.
/// `features-`), other than the current process: `(lock file, holder)`.
pub fn live_holders(dir: &Path, prefix: &str) -> Vec<(PathBuf, Holder)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with(prefix) || !name.ends_with(".lock") {
            continue;
        }
        if let Ok(Found::Holder(h)) = read_lock(&entry.path())
            && h.pid != std::process::id()
            && !matches!(h.liveness(), Liveness::Dead(_))
        {
            out.push((entry.path(), h));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// File-name prefix of the `pipeline features` run locks (`features-p<i>of<n>.lock`).
pub const FEATURES_LOCK_PREFIX: &str = "features-";

/// Takes the lock of a `pipeline features` run on partition `i` of `n` of the folder `out`
/// (`features-p<i>of<n>.lock`, [`Wait::Fail`]): a second run of the same partition fails at
/// once, naming the first. Runs of other partitions of the same partitioning may write the
/// folder at the same time (their shards are disjoint; the manifest has its own lock); a live
/// run of another partition count, or a `pipeline teachers join-logits` rewriting the folder,
/// is refused. Then removes this partition's temporary shard files left by crashed runs.
pub fn lock_features_run(out: &Path, i: u32, n: u32) -> Result<FolderLock, LockError> {
    let purpose = format!("pipeline features --partition {i}/{n}");
    let lock = FolderLock::acquire(
        out,
        &format!("{FEATURES_LOCK_PREFIX}p{i}of{n}.lock"),
        &purpose,
        Wait::Fail,
    )?;
    let busy = live_holders(out, FEATURES_LOCK_PREFIX)
        .into_iter()
        .find(|(file, _)| {
            let name = file.file_name().map(|f| f.to_string_lossy().into_owned());
            !name.is_some_and(|f| f.ends_with(&format!("of{n}.lock")))
        })
        .or_else(|| {
            live_holders(out, crate::shards::MANIFEST_LOCK)
                .into_iter()
                .find(|(_, h)| h.purpose.contains("join-logits"))
        });
    if let Some((file, holder)) = busy {
        return Err(LockError::Held {
            folder: out.display().to_string(),
            lock: file.display().to_string(),
            holder: holder.to_string(),
        });
    }
    remove_stale_tmp(out, &format!("shard-p{i}of{n}-"), true)?;
    Ok(lock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_matches_known_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        // 2000-02-29 12:34:56 UTC (a leap day) = 951827696.
        assert_eq!(utc(951_827_696), "2000-02-29 12:34:56 UTC");
        // 2024-12-31 23:59:59 UTC = 1735689599.
        assert_eq!(utc(1_735_689_599), "2024-12-31 23:59:59 UTC");
    }

    #[test]
    fn tmp_names_are_unique_and_carry_the_pid() {
        let a = tmp_name(Path::new("/x/shard-p0of1-00000.parquet"));
        let b = tmp_name(Path::new("/x/shard-p0of1-00000.parquet"));
        assert_ne!(a, b);
        let name = a.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("shard-p0of1-00000.parquet."), "{name}");
        assert_eq!(tmp_pid(&name), Some(std::process::id()));
        assert_eq!(tmp_pid("shard-p0of1-00000.parquet.tmp"), None);
    }

    #[test]
    fn own_process_is_alive_and_a_finished_child_is_dead() {
        let me = Holder::current("test");
        assert_eq!(me.liveness(), Liveness::Alive);
        assert_ne!(me.process_start, 0);
        // The same PID with another start time is a reused PID.
        let reused = Holder {
            process_start: me.process_start + 1,
            ..me.clone()
        };
        assert!(matches!(reused.liveness(), Liveness::Dead(_)));
        let other_host = Holder {
            host: "elsewhere.example".into(),
            ..me.clone()
        };
        assert!(matches!(other_host.liveness(), Liveness::Unknown(_)));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(matches!(pid_liveness(pid, 0), Liveness::Dead(_)));
    }

    #[test]
    fn live_lock_fails_at_once_and_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let held = FolderLock::acquire(dir.path(), "x.lock", "holder one", Wait::Fail).unwrap();
        let t = Instant::now();
        let e = FolderLock::acquire(dir.path(), "x.lock", "second", Wait::Fail).unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(2));
        let msg = e.to_string();
        assert!(matches!(e, LockError::Held { .. }), "{msg}");
        assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
        assert!(msg.contains("holder one"), "{msg}");
        assert!(
            msg.contains(&format!("PID {}", std::process::id())),
            "{msg}"
        );
        assert!(msg.contains(&host_name()), "{msg}");
        // A bounded wait gives up with the same error.
        let e = FolderLock::acquire(
            dir.path(),
            "x.lock",
            "second",
            Wait::UpTo(Duration::from_millis(200)),
        )
        .unwrap_err();
        assert!(matches!(e, LockError::Held { .. }));
        drop(held);
        assert!(!dir.path().join("x.lock").exists());
        FolderLock::acquire(dir.path(), "x.lock", "second", Wait::Fail).unwrap();
    }

    #[test]
    fn stale_and_legacy_locks() {
        let dir = tempfile::tempdir().unwrap();
        let lock = dir.path().join("x.lock");
        // A lock of a process that has exited is taken over.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let dead = Holder {
            pid,
            process_start: 1,
            ..Holder::current("killed run")
        };
        fs::write(&lock, serde_json::to_string(&dead).unwrap()).unwrap();
        let l = FolderLock::acquire(dir.path(), "x.lock", "new run", Wait::Fail).unwrap();
        let now: Holder = serde_json::from_str(&fs::read_to_string(&lock).unwrap()).unwrap();
        assert_eq!(now.pid, std::process::id());
        assert_eq!(now.purpose, "new run");
        drop(l);
        // A fresh legacy (empty) lock is reported with its file; an old one is taken over.
        fs::write(&lock, b"").unwrap();
        let e = FolderLock::acquire(dir.path(), "x.lock", "new", Wait::Fail).unwrap_err();
        assert!(e.to_string().contains("x.lock"), "{e}");
        let old = SystemTime::now() - Duration::from_secs(3600);
        fs::File::options()
            .write(true)
            .open(&lock)
            .unwrap()
            .set_modified(old)
            .unwrap();
        FolderLock::acquire(dir.path(), "x.lock", "new", Wait::Fail).unwrap();
    }

    #[test]
    fn stale_tmp_files_of_dead_writers_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let dead = dir
            .path()
            .join(format!("shard-p0of1-00000.parquet.{pid}-0.tmp"));
        let mine = tmp_name(&dir.path().join("shard-p0of1-00001.parquet"));
        let legacy = dir.path().join("shard-p0of1-00002.parquet.tmp");
        for p in [&dead, &mine, &legacy] {
            fs::write(p, b"x").unwrap();
        }
        let removed = remove_stale_tmp(dir.path(), "shard-p0of1-", false).unwrap();
        assert_eq!(removed.len(), 1, "{removed:?}");
        assert!(!dead.exists() && mine.exists() && legacy.exists());
        remove_stale_tmp(dir.path(), "shard-p0of1-", true).unwrap();
        assert!(!legacy.exists() && mine.exists());
    }
}
