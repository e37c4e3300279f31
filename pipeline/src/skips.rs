//! The skip report of `pipeline features --on-error skip` (`<out>/skipped.tsv`, or
//! `skipped-p<i>of<n>.tsv` for a partition): the files left out, and why.
//!
//! A rerun reads the previous report first: a shard holding a file the report lists is
//! rewritten even when it is complete, so a file fixed since is added (and one still bad is
//! skipped and listed again). The new report keeps the previous entries of files this run did
//! not reach (a stopped run), so the record of a skipped file is lost only once the file has
//! been retried. Entries found by ingest (a missing file, a list entry or label fault) are
//! found again by every run.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::ingest::Skipped;

/// Path of the skip report of partition `i` of `n` in `out`.
pub fn report_path(out: &Path, i: u32, n: u32) -> PathBuf {
    if n == 1 {
        out.join("skipped.tsv")
    } else {
        out.join(format!("skipped-p{i}of{n}.tsv"))
    }
}

/// Reads a skip report (`file<TAB>reason` with a header); an absent report is empty.
pub fn read_report(path: &Path) -> anyhow::Result<Vec<Skipped>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(e)
                .with_context(|| format!("{}: cannot read the skip report", path.display()));
        }
    };
    Ok(text
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (file, reason) = l.split_once('\t').unwrap_or((l, ""));
            Skipped {
                file: file.to_string(),
                reason: reason.to_string(),
            }
        })
        .collect())
}

/// Writes the report atomically (sorted, one entry per file), or deletes it when `skipped` is
/// empty.
pub fn write_report(path: &Path, skipped: &mut Vec<Skipped>) -> anyhow::Result<()> {
    skipped.sort_by(|a, b| (&a.file, &a.reason).cmp(&(&b.file, &b.reason)));
    skipped.dedup_by(|a, b| a.file == b.file);
    if skipped.is_empty() {
        return match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e)
                .with_context(|| format!("{}: cannot delete the old skip report", path.display())),
            _ => Ok(()),
        };
    }
    let mut text = String::from("file\treason\n");
    for s in skipped.iter() {
        text.push_str(&format!(
            "{}\t{}\n",
            s.file.replace(['\t', '\n'], " "),
            s.reason.replace(['\t', '\n'], " ")
        ));
    }
    let tmp = crate::shards::tmp_path(path);
    std::fs::write(&tmp, text)
        .and_then(|_| std::fs::rename(&tmp, path))
        .with_context(|| format!("{}: cannot write the skip report", path.display()))
}

/// The previous report of a run, read before the run changes anything.
#[derive(Debug, Default)]
pub struct PreviousSkips {
    entries: Vec<Skipped>,
    files: HashSet<String>,
}

impl PreviousSkips {
    /// Reads the report at `path`.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let entries = read_report(path)?;
        let files = entries.iter().map(|s| s.file.clone()).collect();
        Ok(Self { entries, files })
    }

    /// True when the previous run skipped `file` (a shard holding it is rewritten).
    pub fn lists(&self, file: &str) -> bool {
        self.files.contains(file)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the previous run skipped nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The previous entries still to be kept: those for which `pending(file)` holds (files
    /// this run has not retried).
    pub fn still_pending(&self, pending: impl Fn(&str) -> bool) -> Vec<Skipped> {
        self.entries
            .iter()
            .filter(|s| pending(&s.file))
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_round_trips_and_empty_report_is_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let p = report_path(dir.path(), 0, 1);
        assert_eq!(p, dir.path().join("skipped.tsv"));
        assert_eq!(
            report_path(dir.path(), 1, 3),
            dir.path().join("skipped-p1of3.tsv")
        );
        let mut v = vec![
            Skipped {
                file: "b.wav".into(),
                reason: "bad\tthing".into(),
            },
            Skipped {
                file: "a.wav".into(),
                reason: "x".into(),
            },
            Skipped {
                file: "a.wav".into(),
                reason: "y".into(),
            },
        ];
        write_report(&p, &mut v).unwrap();
        let back = PreviousSkips::read(&p).unwrap();
        assert_eq!(back.len(), 2);
        assert!(back.lists("a.wav") && back.lists("b.wav") && !back.lists("c.wav"));
        assert_eq!(back.still_pending(|f| f == "b.wav")[0].reason, "bad thing");
        write_report(&p, &mut Vec::new()).unwrap();
        assert!(!p.exists());
        assert!(PreviousSkips::read(&p).unwrap().is_empty());
    }
}
