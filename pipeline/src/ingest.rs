//! Stage 1, ingest: reads a TAU-style dataset folder (`meta.csv`, `evaluation_setup/*`,
//! `split*.csv`, the test list) and decodes its WAV files into mono `f32` waveforms.
//!
//! # Sets and splits
//!
//! - A clip is in the **train** set when its file is listed in `fold1_train.csv` or in any
//!   `split*.csv`; in the **test** set when listed in `fold1_evaluate.csv`, `fold1_test.csv` or
//!   `test.csv`; otherwise it is **unused**.
//! - The `split` column is the smallest DCASE2024 split (5, 10, 25, 50, 100) whose file lists the
//!   clip. `split100.csv` is identical to `fold1_train.csv` in DCASE2024, so when no
//!   `split100.csv` is found but `fold1_train.csv` is, the clips of `fold1_train.csv` get split 100.
//! - Split files are looked for in the dataset root, `split_setup/`, `evaluation_setup/` and
//!   the folder given with `--splits` (first found wins, per file name).
//! - List entries are matched on the file name without folder, so `audio/x.wav` and `x.wav` are
//!   the same clip. An entry that names no row of `meta.csv` is an error (or a skip).
//!
//! # Labels
//!
//! Labels are checked at ingest, every fault an error naming the file and line (or, with
//! `--on-error skip`, a skipped row listed in the skip report):
//! - `meta.csv` needs a `scene_label` column and every clip a label; test and unused clips may
//!   be unlabelled only with [`IngestOptions::allow_unlabelled`] (e.g. an evaluation set).
//!   A clip without a label in `meta.csv` takes the one its labelled list gives it.
//! - The vocabulary is fixed: [`IngestOptions::labels`] (`--labels a,b,...`) when given; else
//!   the ten TAU22 scenes in their official order when most labelled clips carry TAU22 labels;
//!   else the sorted labels of the training clips (all clips when there is no training list).
//!   A label outside it is an error, so a stray label can never grow or re-sort the vocabulary.
//! - A file listed twice in `meta.csv` is an error (two rows would share one clip id).
//! - A labelled list (`filename<TAB>scene_label`) that gives a clip another label than
//!   `meta.csv` is an error naming both places.
//!
//! # Long recordings
//!
//! Recordings longer than 1 s (e.g. the 10 s files of TAU 2020) are cut into 1 s clips after
//! resampling: clip `k` covers seconds `[k, k+1)` and gets the clip id `<stem>@<k>`. A trailing
//! partial second is zero-padded when it is at least 0.5 s long and dropped otherwise. A file of
//! 0.5 s to 1.5 s gives a single clip whose id is the plain file stem (TAU22 clips are exactly
//! 1 s; a few samples more or less from resampling are padded or trimmed). A file shorter than
//! 0.5 s is an error.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use data_specs::{ClipSet, SPLITS, TAU22_DEVICES, TAU22_LABELS, TauFileName, Vocabulary};
use rayon::prelude::*;

/// What to do with a bad input file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OnError {
    /// Stop with an error naming the file and the problem.
    #[default]
    Fail,
    /// Leave the file out, list it in the skip report (`<out>/skipped.tsv`) and go on.
    Skip,
}

/// A file left out with `--on-error skip`, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The offending file (as a path or a list entry).
    pub file: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Errors of the ingest stage; each names the offending file.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The dataset folder does not exist or has no `meta.csv`.
    #[error(
        "{path}: no meta.csv here; is this a TAU-style dataset folder (audio/, meta.csv, evaluation_setup/)?"
    )]
    NoMeta {
        /// The dataset folder.
        path: String,
    },
    /// A file cannot be read.
    #[error("{path}: {problem}")]
    Io {
        /// File.
        path: String,
        /// What is wrong.
        problem: String,
    },
    /// A CSV file does not have the expected columns.
    #[error("{path}: {problem}")]
    BadCsv {
        /// File.
        path: String,
        /// What is wrong.
        problem: String,
    },
    /// `meta.csv` lists no clips.
    #[error("{path}: lists no clips")]
    Empty {
        /// File.
        path: String,
    },
    /// A list names a clip that `meta.csv` does not have.
    #[error("{list}, line {line}: '{clip}' is not in meta.csv")]
    UnknownClip {
        /// The list file.
        list: String,
        /// Line number (1-based).
        line: usize,
        /// The entry.
        clip: String,
    },
    /// An audio file listed in `meta.csv` is missing.
    #[error("{path}: listed in meta.csv but missing")]
    MissingAudio {
        /// File.
        path: String,
    },
    /// A file is not where a WAV file was expected (a folder, or nothing at all).
    #[error("{path}: {problem}")]
    NotAFile {
        /// The path.
        path: String,
        /// What is there instead.
        problem: String,
    },
    /// A float WAV holds NaN or infinite samples.
    #[error(
        "{path}: sample {index} (frame {frame}, {seconds:.4} s) is {value}: the audio holds \
         non-finite values"
    )]
    NonFinite {
        /// File.
        path: String,
        /// Index of the sample in the file (interleaved channels).
        index: usize,
        /// Frame (sample index / channels).
        frame: usize,
        /// Time of the frame in seconds.
        seconds: f64,
        /// The value (`NaN`, `inf`, `-inf`).
        value: f32,
    },
    /// A label fault of `meta.csv` or a list (missing, unknown, conflicting, duplicate row).
    #[error("{file}, line {line}: {problem}")]
    Label {
        /// The file.
        file: String,
        /// Line number (1-based).
        line: usize,
        /// What is wrong.
        problem: String,
    },
    /// An audio file cannot be decoded.
    #[error("{path}: cannot decode WAV: {problem}")]
    BadWav {
        /// File.
        path: String,
        /// What is wrong.
        problem: String,
    },
}

/// One data row of `meta.csv`.
#[derive(Debug, Clone, PartialEq)]
pub struct MetaRow {
    /// 0-based index of the data row in `meta.csv` (teacher logits in `.npy` form are indexed by it).
    pub row: usize,
    /// Line of the row in `meta.csv` (1-based, the header is line 1).
    pub line: usize,
    /// File name as written in `meta.csv`, relative to the dataset root (e.g. `audio/x.wav`).
    pub filename: String,
    /// Scene label, `None` when the column is absent or empty.
    pub scene_label: Option<String>,
    /// Device (the `source_label` column, or the TAU file name's device field).
    pub device: String,
    /// City.
    pub city: String,
    /// `<city>-<location>` (the `identifier` column).
    pub identifier: String,
    /// 10 s segment id.
    pub segment_id: String,
    /// Second within the segment (TAU22 file names); 0 for other names.
    pub segment_index: i32,
}

impl MetaRow {
    /// The file stem: the file name without folder and `.wav`. It is the clip id of a 1 s file.
    pub fn stem(&self) -> &str {
        file_stem(&self.filename)
    }
}

/// The file name without folder and extension.
pub fn file_stem(name: &str) -> &str {
    let base = name.rsplit(['/', '\\']).next().unwrap_or(name);
    base.strip_suffix(".wav")
        .or_else(|| base.strip_suffix(".WAV"))
        .unwrap_or(base)
}

/// A dataset folder, ingested: rows of `meta.csv` with their set and split.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Dataset root.
    pub root: PathBuf,
    /// Dataset name (the root folder's name).
    pub name: String,
    /// Every row of `meta.csv`, in file order (including rows skipped for missing audio).
    pub rows: Vec<MetaRow>,
    /// Row indices usable for processing (audio present), in `meta.csv` order.
    pub usable: Vec<usize>,
    /// Set of each row.
    pub sets: Vec<ClipSet>,
    /// Smallest split of each row.
    pub splits: Vec<Option<u8>>,
    /// Label vocabulary (from `meta.csv`, TAU22 order when it is a TAU subset).
    pub labels: Vocabulary,
    /// Device vocabulary (TAU22 order when it is a TAU subset).
    pub devices: Vocabulary,
    /// The list files that were read.
    pub lists: Vec<PathBuf>,
    /// Files left out (only with [`OnError::Skip`]).
    pub skipped: Vec<Skipped>,
}

/// Where the ingest stage looks for things.
#[derive(Debug, Clone, Default)]
pub struct IngestOptions {
    /// Extra folder with `split*.csv` (and `test.csv`).
    pub splits_dir: Option<PathBuf>,
    /// Fail or skip on bad input.
    pub on_error: OnError,
    /// The label vocabulary, in index order (`--labels`); `None`: TAU22 or the data's own (see
    /// the module documentation).
    pub labels: Option<Vec<String>>,
    /// Test and unused clips may have no label (`--allow-unlabelled`).
    pub allow_unlabelled: bool,
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> IngestError {
    IngestError::Io {
        path: path.display().to_string(),
        problem: e.to_string(),
    }
}

/// A TAB-separated (or comma-separated) table with a header row.
struct Table {
    header: Vec<String>,
    rows: Vec<(usize, Vec<String>)>,
}

/// Reads a text file, without the UTF-8 byte-order mark some editors put at its start.
fn read_text(path: &Path) -> Result<String, IngestError> {
    let text = std::fs::read_to_string(path).map_err(|e| io_err(path, e))?;
    Ok(match text.strip_prefix('\u{feff}') {
        Some(rest) => rest.to_string(),
        None => text,
    })
}

fn read_table(path: &Path) -> Result<Table, IngestError> {
    let text = read_text(path)?;
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let (_, head) = lines.next().ok_or_else(|| IngestError::Empty {
        path: path.display().to_string(),
    })?;
    let sep = if head.contains('\t') { '\t' } else { ',' };
    let split = |l: &str| -> Vec<String> { l.split(sep).map(|s| s.trim().to_string()).collect() };
    let header = split(head);
    let rows = lines.map(|(i, l)| (i + 1, split(l))).collect();
    Ok(Table { header, rows })
}

impl Table {
    fn col(&self, name: &str) -> Option<usize> {
        self.header.iter().position(|h| h == name)
    }
}

/// Reads `meta.csv` (TAB-separated, header `filename scene_label identifier source_label`;
/// only `filename` is required).
pub fn read_meta(path: &Path) -> Result<Vec<MetaRow>, IngestError> {
    let table = read_table(path)?;
    let bad = |problem: String| IngestError::BadCsv {
        path: path.display().to_string(),
        problem,
    };
    let c_file = table.col("filename").ok_or_else(|| {
        bad(format!(
            "no 'filename' column in the header {:?}",
            table.header
        ))
    })?;
    let c_scene = table.col("scene_label");
    let c_ident = table.col("identifier");
    let c_device = table.col("source_label");
    let mut rows = Vec::with_capacity(table.rows.len());
    for (line, fields) in &table.rows {
        let get = |c: Option<usize>| {
            c.and_then(|c| fields.get(c))
                .filter(|s| !s.is_empty())
                .cloned()
        };
        let filename =
            get(Some(c_file)).ok_or_else(|| bad(format!("line {line}: empty filename")))?;
        let tau = TauFileName::parse(&filename);
        let stem = file_stem(&filename).to_string();
        let device = get(c_device)
            .or_else(|| tau.as_ref().map(|t| t.device.clone()))
            .or_else(|| stem.rsplit_once('-').map(|(_, d)| d.to_string()))
            .unwrap_or_else(|| "unknown".into());
        let identifier = get(c_ident)
            .or_else(|| tau.as_ref().map(|t| format!("{}-{}", t.city, t.location)))
            .unwrap_or_else(|| "unknown".into());
        let city = tau
            .as_ref()
            .map(|t| t.city.clone())
            .unwrap_or_else(|| identifier.split('-').next().unwrap_or("").to_string());
        let (segment_id, segment_index) = match &tau {
            Some(t) => (t.segment_id(), t.index as i32),
            None => (stem.clone(), 0),
        };
        rows.push(MetaRow {
            row: rows.len(),
            line: *line,
            filename,
            scene_label: get(c_scene),
            device,
            city,
            identifier,
            segment_id,
            segment_index,
        });
    }
    if rows.is_empty() {
        return Err(IngestError::Empty {
            path: path.display().to_string(),
        });
    }
    Ok(rows)
}

/// One entry of a list file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListEntry {
    /// Line number (1-based).
    pub line: usize,
    /// The file name as written.
    pub file: String,
    /// The `scene_label` column, when the list has one and it is not empty.
    pub label: Option<String>,
}

/// Reads a list file: the `filename` column (the first column when there is no such header)
/// and the `scene_label` column when the header has one.
pub fn read_list(path: &Path) -> Result<Vec<ListEntry>, IngestError> {
    let text = read_text(path)?;
    let mut out = Vec::new();
    let mut col = 0;
    let mut label_col = None;
    let mut first = true;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let sep = if line.contains('\t') { '\t' } else { ',' };
        let fields: Vec<&str> = line.split(sep).map(str::trim).collect();
        if first {
            first = false;
            if let Some(c) = fields.iter().position(|f| *f == "filename") {
                col = c;
                label_col = fields.iter().position(|f| *f == "scene_label");
                continue;
            }
        }
        if let Some(f) = fields.get(col).filter(|f| !f.is_empty()) {
            out.push(ListEntry {
                line: i + 1,
                file: f.to_string(),
                label: label_col
                    .and_then(|c| fields.get(c))
                    .filter(|l| !l.is_empty())
                    .map(|l| l.to_string()),
            });
        }
    }
    Ok(out)
}

/// True when the header of the table `path` has the column `name`.
fn table_has_column(path: &Path, name: &str) -> Result<bool, IngestError> {
    Ok(read_table(path)?.col(name).is_some())
}

/// The label vocabulary of a dataset (see the module documentation): `given` when set; the
/// TAU22 scenes when most labelled rows carry TAU22 labels; else the sorted labels of the
/// training rows (of every row when none is a training row).
pub fn label_vocabulary(
    rows: &[MetaRow],
    sets: &[ClipSet],
    dropped: &[bool],
    given: Option<&[String]>,
) -> Vocabulary {
    if let Some(g) = given {
        return Vocabulary(g.to_vec());
    }
    let labelled: Vec<(usize, &str)> = rows
        .iter()
        .filter(|r| !dropped[r.row])
        .filter_map(|r| r.scene_label.as_deref().map(|l| (r.row, l)))
        .collect();
    let tau = labelled
        .iter()
        .filter(|(_, l)| TAU22_LABELS.contains(l))
        .count();
    if labelled.is_empty() || 2 * tau > labelled.len() {
        return Vocabulary::tau22_labels();
    }
    let any_train = labelled.iter().any(|(r, _)| sets[*r] == ClipSet::Train);
    Vocabulary::from_observed(
        labelled
            .iter()
            .filter(|(r, _)| !any_train || sets[*r] == ClipSet::Train)
            .map(|(_, l)| *l),
        &[],
    )
}

/// First existing `name` in `dirs`.
fn find_file(dirs: &[PathBuf], name: &str) -> Option<PathBuf> {
    dirs.iter().map(|d| d.join(name)).find(|p| p.is_file())
}

impl Dataset {
    /// Ingests a dataset folder: reads `meta.csv` and the lists, checks that every audio file
    /// exists, and assigns sets and splits. See the module documentation for the rules.
    pub fn load(root: &Path, opts: &IngestOptions) -> Result<Self, IngestError> {
        let meta_path = root.join("meta.csv");
        if !meta_path.is_file() {
            return Err(IngestError::NoMeta {
                path: root.display().to_string(),
            });
        }
        let mut rows = read_meta(&meta_path)?;
        let mut skipped = Vec::new();
        // Rows left out for a label fault or as duplicates (with --on-error skip).
        let mut dropped = vec![false; rows.len()];
        let meta_s = meta_path.display().to_string();
        let fault = |file: &str,
                     line: usize,
                     problem: String,
                     skipped: &mut Vec<Skipped>|
         -> Result<(), IngestError> {
            match opts.on_error {
                OnError::Fail => Err(IngestError::Label {
                    file: file.to_string(),
                    line,
                    problem,
                }),
                OnError::Skip => {
                    skipped.push(Skipped {
                        file: format!("{file}:{line}"),
                        reason: problem,
                    });
                    Ok(())
                }
            }
        };
        if !opts.allow_unlabelled && !table_has_column(&meta_path, "scene_label")? {
            return Err(IngestError::BadCsv {
                path: meta_s,
                problem: "no 'scene_label' column: every clip needs a scene label (for a \
                          dataset whose test clips are unlabelled, pass --allow-unlabelled; \
                          training clips still need labels, in meta.csv or their lists)"
                    .into(),
            });
        }
        let mut by_stem: HashMap<&str, usize> = HashMap::with_capacity(rows.len());
        let mut duplicates = Vec::new();
        for r in &rows {
            if let Some(&first) = by_stem.get(r.stem()) {
                duplicates.push((r.row, first));
            } else {
                by_stem.insert(r.stem(), r.row);
            }
        }
        for &(r, first) in &duplicates {
            fault(
                &meta_s,
                rows[r].line,
                format!(
                    "'{}' is listed twice (first on line {}); each file must appear once",
                    rows[r].filename, rows[first].line
                ),
                &mut skipped,
            )?;
            dropped[r] = true;
        }

        // Audio present?
        let missing: Vec<usize> = rows
            .par_iter()
            .filter(|r| !root.join(&r.filename).is_file())
            .map(|r| r.row)
            .collect();
        if let Some(&first) = missing.first() {
            if opts.on_error == OnError::Fail {
                return Err(IngestError::MissingAudio {
                    path: root.join(&rows[first].filename).display().to_string(),
                });
            }
            for &m in &missing {
                skipped.push(Skipped {
                    file: root.join(&rows[m].filename).display().to_string(),
                    reason: "listed in meta.csv but missing".into(),
                });
            }
        }
        let mut present = vec![true; rows.len()];
        for &m in &missing {
            present[m] = false;
        }

        // Lists.
        let mut search = vec![
            root.to_path_buf(),
            root.join("split_setup"),
            root.join("evaluation_setup"),
        ];
        if let Some(d) = &opts.splits_dir {
            search.insert(0, d.clone());
        }
        let eval = root.join("evaluation_setup");
        let mut lists = Vec::new();
        let mut sets = vec![ClipSet::Unused; rows.len()];
        let mut splits: Vec<Option<u8>> = vec![None; rows.len()];
        // Where each row's label comes from: (file, line), for the messages.
        let mut label_at: Vec<(String, usize)> =
            rows.iter().map(|r| (meta_s.clone(), r.line)).collect();
        let mut list_labels: Vec<(usize, String, usize, String)> = Vec::new();
        let mut resolve =
            |path: &Path, skipped: &mut Vec<Skipped>| -> Result<Vec<usize>, IngestError> {
                let mut out = Vec::new();
                for entry in read_list(path)? {
                    match by_stem.get(file_stem(&entry.file)) {
                        Some(&r) => {
                            out.push(r);
                            if let Some(l) = entry.label {
                                list_labels.push((r, path.display().to_string(), entry.line, l));
                            }
                        }
                        None if opts.on_error == OnError::Skip => skipped.push(Skipped {
                            file: format!("{}:{}", path.display(), entry.line),
                            reason: format!("'{}' is not in meta.csv", entry.file),
                        }),
                        None => {
                            return Err(IngestError::UnknownClip {
                                list: path.display().to_string(),
                                line: entry.line,
                                clip: entry.file,
                            });
                        }
                    }
                }
                Ok(out)
            };
        let train_list = find_file(std::slice::from_ref(&eval), "fold1_train.csv");
        if let Some(p) = &train_list {
            for r in resolve(p, &mut skipped)? {
                sets[r] = ClipSet::Train;
            }
            lists.push(p.clone());
        }
        let mut have_split100 = false;
        for s in SPLITS.iter().rev() {
            if let Some(p) = find_file(&search, &format!("split{s}.csv")) {
                for r in resolve(&p, &mut skipped)? {
                    sets[r] = ClipSet::Train;
                    splits[r] = Some(*s);
                }
                have_split100 |= *s == 100;
                lists.push(p);
            }
        }
        if !have_split100 && train_list.is_some() {
            for (set, split) in sets.iter().zip(splits.iter_mut()) {
                if *set == ClipSet::Train && split.is_none() {
                    *split = Some(100);
                }
            }
        }
        let mut test_lists: Vec<PathBuf> = ["fold1_evaluate.csv", "fold1_test.csv"]
            .iter()
            .filter_map(|n| find_file(std::slice::from_ref(&eval), n))
            .collect();
        if let Some(p) = find_file(&search, "test.csv") {
            test_lists.push(p);
        }
        for p in test_lists {
            for r in resolve(&p, &mut skipped)? {
                sets[r] = ClipSet::Test;
            }
            lists.push(p);
        }

        // Labels of the lists: fill in a missing label, refuse a disagreement.
        for (r, file, line, label) in list_labels {
            if dropped[r] {
                continue;
            }
            match &rows[r].scene_label {
                None => {
                    rows[r].scene_label = Some(label);
                    label_at[r] = (file, line);
                }
                Some(m) if *m != label => {
                    let (mf, ml) = &label_at[r];
                    fault(
                        &file,
                        line,
                        format!(
                            "label '{label}' of '{}' disagrees with '{m}' given in {mf}, line {ml}",
                            rows[r].filename
                        ),
                        &mut skipped,
                    )?;
                    dropped[r] = true;
                }
                Some(_) => {}
            }
        }

        // Every clip labelled (test and unused clips only with --allow-unlabelled).
        for r in 0..rows.len() {
            if dropped[r] || rows[r].scene_label.is_some() {
                continue;
            }
            let train = sets[r] == ClipSet::Train;
            if train || !opts.allow_unlabelled {
                let problem = if train {
                    format!(
                        "'{}' has no scene label (a training clip needs one)",
                        rows[r].filename
                    )
                } else {
                    format!(
                        "'{}' has no scene label (pass --allow-unlabelled if this dataset's \
                         test clips are unlabelled)",
                        rows[r].filename
                    )
                };
                fault(&meta_s, rows[r].line, problem, &mut skipped)?;
                dropped[r] = true;
            }
        }

        // The fixed vocabulary, and every label in it.
        let labels = label_vocabulary(&rows, &sets, &dropped, opts.labels.as_deref());
        let why = if opts.labels.is_some() {
            "the vocabulary given with --labels".to_string()
        } else if labels == Vocabulary::tau22_labels() {
            "the TAU22 scene labels; pass --labels with the full vocabulary to use others"
                .to_string()
        } else {
            "the labels of the training clips; pass --labels with the full vocabulary".to_string()
        };
        for r in 0..rows.len() {
            if dropped[r] {
                continue;
            }
            if let Some(l) = &rows[r].scene_label
                && labels.index_of(l).is_none()
            {
                let (file, line) = &label_at[r];
                fault(
                    file,
                    *line,
                    format!(
                        "label '{l}' of '{}' is not one of {} ({})",
                        rows[r].filename,
                        labels.0.join(", "),
                        why
                    ),
                    &mut skipped,
                )?;
                dropped[r] = true;
            }
        }

        let usable: Vec<usize> = (0..rows.len())
            .filter(|&i| present[i] && !dropped[i])
            .collect();
        if usable.is_empty() {
            return Err(IngestError::Empty {
                path: format!(
                    "{} (no audio file of meta.csv is present and usable)",
                    meta_path.display()
                ),
            });
        }
        let devices =
            Vocabulary::from_observed(rows.iter().map(|r| r.device.as_str()), &TAU22_DEVICES);
        let name = root
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| root.display().to_string());
        Ok(Self {
            root: root.to_path_buf(),
            name,
            rows,
            usable,
            sets,
            splits,
            labels,
            devices,
            lists,
            skipped,
        })
    }

    /// Absolute path of a row's audio file.
    pub fn audio_path(&self, row: usize) -> PathBuf {
        self.root.join(&self.rows[row].filename)
    }
}

/// A decoded WAV file: mono samples in [-1, 1] and the sample rate.
#[derive(Debug, Clone)]
pub struct Audio {
    /// Mono samples (channels averaged).
    pub samples: Vec<f32>,
    /// Sample rate in Hz.
    pub sample_rate: u32,
}

/// Decodes a WAV file with hound: 8/16/24/32-bit integer PCM or 32-bit float, any number of
/// channels (averaged to mono). Integer samples are scaled by `1 / 2^(bits - 1)`.
pub fn decode_wav(path: &Path) -> Result<Audio, IngestError> {
    let bad = |problem: String| IngestError::BadWav {
        path: path.display().to_string(),
        problem,
    };
    if path.is_dir() {
        return Err(IngestError::NotAFile {
            path: path.display().to_string(),
            problem: "is a folder, not a WAV file (pass the WAV files in it, e.g. DIR/*.wav)"
                .into(),
        });
    }
    if !path.is_file() {
        return Err(IngestError::NotAFile {
            path: path.display().to_string(),
            problem: "no such file".into(),
        });
    }
    // The whole file in one read; hound parses and validates the header from memory.
    let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let reader =
        hound::WavReader::new(std::io::Cursor::new(&bytes[..])).map_err(|e| bad(e.to_string()))?;
    let spec = reader.spec();
    let channels = spec.channels as usize;
    if channels == 0 {
        return Err(bad("zero channels".into()));
    }
    if spec.sample_rate == 0 {
        return Err(bad("sample rate 0".into()));
    }
    let frames = reader.duration() as usize;
    let mut mono = vec![0f32; frames];
    let inv_ch = 1.0 / channels as f32;
    let mut count = 0usize;
    match (spec.sample_format, spec.bits_per_sample) {
        (hound::SampleFormat::Float, 32) => {
            for (i, s) in reader.into_samples::<f32>().enumerate() {
                let s = s.map_err(|e| bad(format!("sample {i}: {e}")))?;
                if !s.is_finite() {
                    return Err(IngestError::NonFinite {
                        path: path.display().to_string(),
                        index: i,
                        frame: i / channels,
                        seconds: (i / channels) as f64 / spec.sample_rate as f64,
                        value: s,
                    });
                }
                mono[i / channels] += s * inv_ch;
                count += 1;
            }
        }
        (hound::SampleFormat::Int, bits @ (8 | 16 | 24 | 32)) => {
            let scale = inv_ch / (1u64 << (bits - 1)) as f32;
            let n = reader.len() as usize;
            let data_start = reader.into_inner().position() as usize;
            if let Some(data) = pcm_data(&bytes, data_start, n, channels, bits) {
                decode_pcm(data, bits, channels, scale, &mut mono);
                return Ok(Audio {
                    samples: mono,
                    sample_rate: spec.sample_rate,
                });
            }
            // Any other layout: hound's sample iterator.
            let reader = hound::WavReader::new(std::io::Cursor::new(&bytes[..]))
                .map_err(|e| bad(e.to_string()))?;
            for (i, s) in reader.into_samples::<i32>().enumerate() {
                let s = s.map_err(|e| bad(format!("sample {i}: {e}")))?;
                mono[i / channels] += s as f32 * scale;
                count += 1;
            }
        }
        (fmt, bits) => {
            return Err(bad(format!(
                "unsupported sample format {fmt:?} with {bits} bits (expected 8/16/24/32-bit PCM or 32-bit float)"
            )));
        }
    }
    if count != frames * channels {
        return Err(bad(format!(
            "truncated: {count} samples, header says {}",
            frames * channels
        )));
    }
    Ok(Audio {
        samples: mono,
        sample_rate: spec.sample_rate,
    })
}

/// The `n` samples of little-endian 16- or 24-bit PCM starting at `data_start`, when the file
/// holds exactly that layout (the `fmt ` chunk's block alignment is `channels * bits / 8`) and
/// all of it; `None` otherwise (other widths, padded containers, truncated data), for hound's
/// sample iterator to handle.
fn pcm_data(
    bytes: &[u8],
    data_start: usize,
    n: usize,
    channels: usize,
    bits: u16,
) -> Option<&[u8]> {
    if !matches!(bits, 16 | 24) || bytes.get(..4)? != b"RIFF" || bytes.get(8..12)? != b"WAVE" {
        return None;
    }
    // Walk the RIFF chunks to the `fmt ` chunk: its block alignment at offset 12.
    let mut at = 12usize;
    let block_align = loop {
        let id = bytes.get(at..at + 4)?;
        let size = u32::from_le_bytes(bytes.get(at + 4..at + 8)?.try_into().ok()?) as usize;
        if id == b"fmt " {
            break u16::from_le_bytes(bytes.get(at + 20..at + 22)?.try_into().ok()?) as usize;
        }
        at = at.checked_add(8 + size + (size & 1))?;
    };
    let width = bits as usize / 8;
    if block_align != channels * width {
        return None;
    }
    bytes.get(data_start..data_start.checked_add(n.checked_mul(width)?)?)
}

/// Decodes interleaved little-endian PCM (`bits` 16 or 24) into `mono`: the channels of each
/// frame summed in order, each sample scaled by `scale` (the same operations, in the same
/// order, as the sample-by-sample path).
fn decode_pcm(data: &[u8], bits: u16, channels: usize, scale: f32, mono: &mut [f32]) {
    let width = bits as usize / 8;
    for (m, frame) in mono.iter_mut().zip(data.chunks_exact(width * channels)) {
        for b in frame.chunks_exact(width) {
            let s = if width == 2 {
                i16::from_le_bytes([b[0], b[1]]) as i32
            } else {
                // Sign-extend the 24-bit value from the top byte.
                i32::from_le_bytes([0, b[0], b[1], b[2]]) >> 8
            };
            *m += s as f32 * scale;
        }
    }
}

/// The 1 s clips of a recording: `(clip index, samples)`; the index is `None` for a recording
/// that gives a single clip (see [`cut_clips`]).
pub type Clips = Vec<(Option<usize>, Vec<f32>)>;

/// Cuts a resampled recording into 1 s clips of `clip_samples` samples (see the module
/// documentation): returns `(clip index, clip)` pairs; a single clip has index `None`.
/// Fails (returns an empty list) when the recording is shorter than half a clip.
pub fn cut_clips(samples: &[f32], clip_samples: usize) -> Clips {
    let half = clip_samples / 2;
    if samples.len() < half {
        return Vec::new();
    }
    let pad = |s: &[f32]| {
        let mut c = s[..s.len().min(clip_samples)].to_vec();
        c.resize(clip_samples, 0.0);
        c
    };
    if samples.len() < clip_samples + half {
        return vec![(None, pad(samples))];
    }
    let mut out = Vec::new();
    let mut k = 0;
    while k * clip_samples + half <= samples.len() {
        let start = k * clip_samples;
        let end = (start + clip_samples).min(samples.len());
        out.push((Some(k), pad(&samples[start..end])));
        k += 1;
    }
    out
}

/// Clip id of clip `k` of a recording: the stem, or `<stem>@<k>` for a cut recording.
pub fn clip_id(stem: &str, k: Option<usize>) -> String {
    match k {
        None => stem.to_string(),
        Some(k) => format!("{stem}@{k}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_long_recordings_with_the_half_second_rule() {
        let n = 100;
        // 0.4 s: nothing; 1.2 s: one clip, padded/trimmed; 10 s: ten; 10.5 s: eleven; 10.49: ten.
        assert!(cut_clips(&[1.0; 40], n).is_empty());
        let one = cut_clips(&[1.0; 120], n);
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].0, None);
        assert_eq!(one[0].1.len(), n);
        let short = cut_clips(&[1.0; 60], n);
        assert_eq!(short[0].1.iter().filter(|&&x| x == 0.0).count(), 40);
        assert_eq!(cut_clips(&[1.0; 1000], n).len(), 10);
        let ten_half: Vec<f32> = (0..1050).map(|i| i as f32).collect();
        let c = cut_clips(&ten_half, n);
        assert_eq!(c.len(), 11);
        assert_eq!(c[10].0, Some(10));
        assert_eq!(c[10].1[0], 1000.0);
        assert_eq!(c[10].1[49], 1049.0);
        assert_eq!(c[10].1[50], 0.0);
        assert_eq!(c[3].1[0], 300.0);
        assert_eq!(cut_clips(&[1.0; 1049], n).len(), 10);
    }

    /// The bulk PCM path equals hound's sample iterator bit for bit (16-bit mono, 24-bit
    /// stereo with a chunk before `fmt `), and a 24-bit file in a 32-bit container, which the
    /// bulk path leaves to hound, decodes the same values.
    #[test]
    fn bulk_pcm_equals_hound() {
        let dir = tempfile::tempdir().unwrap();
        let values = |bits: u32, i: usize| {
            let full = (1i64 << (bits - 1)) - 1;
            (((i as i64 * 7919) % (2 * full + 1)) - full) as i32
        };
        for (bits, channels, container) in [(16u16, 1u16, 2u16), (24, 2, 3), (24, 2, 4)] {
            let path = dir
                .path()
                .join(format!("{bits}-{channels}-{container}.wav"));
            let spec = hound::WavSpec {
                channels,
                sample_rate: 44_100,
                bits_per_sample: bits,
                sample_format: hound::SampleFormat::Int,
            };
            let n = 1_001 * channels as usize;
            if container == 4 {
                let spec_ex = hound::WavSpecEx {
                    spec,
                    bytes_per_sample: 4,
                };
                let file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
                let mut w = hound::WavWriter::new_with_spec_ex(file, spec_ex).unwrap();
                for i in 0..n {
                    w.write_sample(values(bits as u32, i)).unwrap();
                }
                w.finalize().unwrap();
            } else {
                let mut w = hound::WavWriter::create(&path, spec).unwrap();
                for i in 0..n {
                    w.write_sample(values(bits as u32, i)).unwrap();
                }
                w.finalize().unwrap();
            }
            if channels == 2 && container == 3 {
                // A LIST chunk between the RIFF header and `fmt `.
                let b = std::fs::read(&path).unwrap();
                let mut c = b[..12].to_vec();
                c.extend_from_slice(b"LIST\x06\x00\x00\x00abcdef");
                c.extend_from_slice(&b[12..]);
                let riff = (c.len() - 8) as u32;
                c[4..8].copy_from_slice(&riff.to_le_bytes());
                std::fs::write(&path, c).unwrap();
            }
            // The bulk path takes the packed layouts and leaves the padded one to hound.
            let bytes = std::fs::read(&path).unwrap();
            let r = hound::WavReader::new(std::io::Cursor::new(&bytes[..])).unwrap();
            let at = r.into_inner().position() as usize;
            let bulk = pcm_data(&bytes, at, n, channels as usize, bits).is_some();
            assert_eq!(bulk, container != 4, "{bits}-bit in {container} bytes");
            let got = decode_wav(&path).unwrap();
            let r = hound::WavReader::open(&path).unwrap();
            let scale = 1.0 / channels as f32 / (1u64 << (bits - 1)) as f32;
            let mut want = vec![0f32; n / channels as usize];
            for (i, s) in r.into_samples::<i32>().enumerate() {
                want[i / channels as usize] += s.unwrap() as f32 * scale;
            }
            assert_eq!(got.samples.len(), want.len());
            assert!(
                got.samples
                    .iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{bits}-bit, {channels} channels, {container}-byte container"
            );
            assert!(got.samples.iter().any(|&v| v.abs() > 0.5));
        }
    }

    #[test]
    fn clip_ids_and_stems() {
        assert_eq!(file_stem("audio/a-b-c-d-0-a.wav"), "a-b-c-d-0-a");
        assert_eq!(clip_id("x", None), "x");
        assert_eq!(clip_id("x", Some(3)), "x@3");
    }
}
