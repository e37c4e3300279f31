//! The teacher side of knowledge distillation: load teacher logits ([`logits`]), fuse the
//! logits of several teachers (the paper's equation (4), [`fusion`], [`ensemble`]) and
//! materialize them into the `teacher_logits` column of an existing shard set ([`join`]).
//!
//! Two commands (`pipeline teachers ...`):
//! - `join-logits --shards data/ --logits FILE`: joins one logits table (Parquet
//!   `clip_id`/`filename` -> `logits`, or CP-JKU `.npy` with `--dataset`) into the shards. The
//!   table is read by [`TeacherLogits::load`], the very loader `pipeline features
//!   --teacher-logits` uses, and looked up by [`TeacherLogits::get`] (exact clip id, then without
//!   its `@k` suffix): imported and fused logits take the same path.
//! - `fuse-logits --shards data/ --logits t1.parquet t2.parquet ...`: fits
//!   `h = sum_k alpha_k * logits_k + beta` ([`Fusion::fit`]) on the labelled ORIGINAL rows of the
//!   training set, reports each teacher's, the averaged and the fused ensemble's accuracy and
//!   cross-entropy on the training and test clips, writes the fused logits as a logits table
//!   ([`data_specs::write_logits_table`]) and joins them into the shards.
//!
//! `pipeline features --teacher-logits` reads a logits table through the same
//! [`TeacherLogits::load`] while it writes the shards. The logits-table format itself is
//! `data_specs::logits`.

pub mod ensemble;
pub mod fusion;
pub mod join;
pub mod logits;

use std::path::PathBuf;

use data_specs::ClipSet;

pub use ensemble::{
    FuseOptions, FuseReport, Scores, SetScores, fuse_logits, fused_description, score,
};
pub use fusion::{FitReport, Fusion, FusionError};
pub use join::{
    JoinOptions, JoinReport, LogitsLookup, MaterializeError, OriginalRows, join_teacher_logits,
    read_original_rows, recover_interrupted_swap,
};
pub use logits::{TeacherError, TeacherLogits};

use crate::ingest::MetaRow;
use join::{io_err, sibling};

/// `pipeline teachers`: fuse teacher logits and materialize them into the shards.
#[derive(clap::Args, Debug)]
pub struct TeachersArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: TeachersCommand,
}

/// The `pipeline teachers` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum TeachersCommand {
    /// Fit eq. 4 (h = sum_k alpha_k logits_k + beta) on the training clips, report teacher and
    /// ensemble accuracy, write the fused logits and join them into the shards.
    FuseLogits(FuseArgs),
    /// Join one logits table into the shards' teacher_logits column (safe rewrite).
    JoinLogits(JoinArgs),
}

/// Which rows receive logits.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinSet {
    /// Rows of the training set (what knowledge distillation uses).
    Train,
    /// Rows of every set.
    All,
}

impl JoinSet {
    fn sets(self) -> Vec<ClipSet> {
        match self {
            Self::Train => vec![ClipSet::Train],
            Self::All => vec![ClipSet::Train, ClipSet::Test, ClipSet::Unused],
        }
    }
}

/// Options of `pipeline teachers fuse-logits`.
#[derive(clap::Args, Debug)]
pub struct FuseArgs {
    /// Shard folder (rewritten in place, safely).
    #[arg(long, value_name = "DIR")]
    pub shards: PathBuf,
    /// Teacher logits tables (Parquet clip_id -> logits, as `train predict` writes).
    #[arg(long, value_name = "FILE", num_args = 1.., required = true)]
    pub logits: Vec<PathBuf>,
    /// Plain averaging instead of the fitted fusion.
    #[arg(long)]
    pub average: bool,
    /// Fit only on the training clips of this DCASE split (5, 10, 25, 50, 100).
    #[arg(long, value_name = "P")]
    pub split: Option<u8>,
    /// Ridge on beta.
    #[arg(long, default_value_t = 1e-4, value_parser = crate::cli::finite_f64)]
    pub ridge: f64,
    /// Ridge shrinking the teacher weights alpha toward plain averaging, `r * sum (alpha_k -
    /// 1/K)^2` (0: the paper's unpenalised eq. 4). Useful with in-sample teacher logits, whose
    /// confidence can drive the fitted alpha large.
    #[arg(long, default_value_t = 0.0, value_parser = crate::cli::finite_f64)]
    pub alpha_ridge: f64,
    /// Report (JSON).
    #[arg(long, value_name = "FILE")]
    pub out_report: Option<PathBuf>,
    /// Fused logits table [default: <shards>.fused-logits.parquet beside the shard folder].
    #[arg(long, value_name = "FILE")]
    pub out_logits: Option<PathBuf>,
    /// Rows that receive the fused logits.
    #[arg(long, value_enum, default_value = "train")]
    pub join_set: JoinSet,
    /// Fit and report only; leave the shards as they are.
    #[arg(long)]
    pub no_join: bool,
}

/// Options of `pipeline teachers join-logits`.
#[derive(clap::Args, Debug)]
pub struct JoinArgs {
    /// Shard folder (rewritten in place, safely).
    #[arg(long, value_name = "DIR")]
    pub shards: PathBuf,
    /// Logits table: Parquet (clip_id or filename -> logits) or CP-JKU .npy (needs --dataset).
    #[arg(long, value_name = "FILE")]
    pub logits: PathBuf,
    /// Dataset folder whose meta.csv indexes the rows of a .npy.
    #[arg(long, value_name = "DIR")]
    pub dataset: Option<PathBuf>,
    /// Rows that receive the logits.
    #[arg(long, value_enum, default_value = "train")]
    pub join_set: JoinSet,
    /// Test hook: fail after writing this many new shards.
    #[arg(long, hide = true)]
    pub fail_after_shards: Option<usize>,
}

/// Runs `pipeline teachers ...`.
pub fn run(args: &TeachersArgs) -> anyhow::Result<()> {
    match &args.command {
        TeachersCommand::FuseLogits(a) => run_fuse(a).map(|_| ()),
        TeachersCommand::JoinLogits(a) => run_join(a).map(|_| ()),
    }
}

/// `join-logits`.
pub fn run_join(a: &JoinArgs) -> anyhow::Result<JoinReport> {
    recover_interrupted_swap(&a.shards)?;
    let (meta, _) = read_original_rows(&a.shards)?;
    let meta_rows: Vec<MetaRow> = match &a.dataset {
        Some(ds) => crate::ingest::read_meta(&ds.join("meta.csv"))?,
        None => Vec::new(),
    };
    let t = TeacherLogits::load(&a.logits, &meta_rows, meta.n_classes())?;
    let opts = JoinOptions {
        sets: a.join_set.sets(),
        description: t.description().to_string(),
        fail_after_shards: a.fail_after_shards,
    };
    let r = join_teacher_logits(&a.shards, &t, &opts)?;
    println!(
        "joined {} into {}: {} shards, {} of {} rows with logits, {} clips without logits (null)",
        a.logits.display(),
        a.shards.display(),
        r.shards,
        r.rows_with_logits,
        r.rows,
        r.clips_without_logits
    );
    Ok(r)
}

/// `fuse-logits`.
pub fn run_fuse(a: &FuseArgs) -> anyhow::Result<FuseReport> {
    recover_interrupted_swap(&a.shards)?;
    let (meta, rows) = read_original_rows(&a.shards)?;
    let n_classes = meta.n_classes();
    let teachers = a
        .logits
        .iter()
        .map(|p| TeacherLogits::load(p, &[], n_classes))
        .collect::<Result<Vec<_>, _>>()?;
    // Teachers are named by the path given (`train predict` writes every teacher's table as
    // `<run>/logits.parquet`, so the file name alone does not tell them apart).
    let names: Vec<String> = a.logits.iter().map(|p| p.display().to_string()).collect();
    let opts = FuseOptions {
        average: a.average,
        ridge: a.ridge,
        alpha_ridge: a.alpha_ridge,
        split: a.split,
    };
    let (report, ids, values) = fuse_logits(&rows, n_classes, &teachers, &names, &opts)?;
    print_report(&report);
    if let Some(p) = &a.out_report {
        let text = serde_json::to_string_pretty(&report)?;
        let tmp = crate::shards::tmp_path(p);
        std::fs::write(&tmp, text).map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, p).map_err(io_err(p))?;
    }
    let out_logits = a
        .out_logits
        .clone()
        .unwrap_or_else(|| sibling(&a.shards, ".fused-logits.parquet"));
    data_specs::write_logits_table(&out_logits, &ids, &values, n_classes)?;
    println!(
        "fused logits of {} clips -> {}",
        ids.len(),
        out_logits.display()
    );
    if !a.no_join {
        // The same path as imported logits: load the table, then join.
        let fused = TeacherLogits::load(&out_logits, &[], n_classes)?;
        let opts = JoinOptions {
            sets: a.join_set.sets(),
            description: fused_description(&report),
            fail_after_shards: None,
        };
        let r = join_teacher_logits(&a.shards, &fused, &opts)?;
        println!(
            "joined into {}: {} shards, {} of {} rows with logits, {} clips without logits (null)",
            a.shards.display(),
            r.shards,
            r.rows_with_logits,
            r.rows,
            r.clips_without_logits
        );
    }
    Ok(report)
}

fn print_report(r: &FuseReport) {
    let line = |name: &str, s: &SetScores| {
        let t = s.test.as_ref();
        println!(
            "{name:<28} train acc {:6.2} % macro {:6.2} % CE {:.4} | test acc {} macro {} CE {}",
            100.0 * s.train.accuracy,
            100.0 * s.train.macro_accuracy,
            s.train.cross_entropy,
            t.map_or("-".into(), |t| format!("{:6.2} %", 100.0 * t.accuracy)),
            t.map_or("-".into(), |t| format!(
                "{:6.2} %",
                100.0 * t.macro_accuracy
            )),
            t.map_or("-".into(), |t| format!("{:.4}", t.cross_entropy)),
        );
    };
    println!(
        "{} training clips, {} test clips",
        r.fused.train.clips,
        r.fused.test.as_ref().map_or(0, |t| t.clips)
    );
    for (name, s) in r.teachers.iter().zip(&r.teacher_scores) {
        line(name, s);
    }
    line("averaged ensemble", &r.averaged);
    let used = if r.fit.is_some() {
        "fused ensemble (eq. 4)"
    } else {
        "ensemble used (average)"
    };
    line(used, &r.fused);
    println!("alpha = {:?}", r.fusion.alpha);
    println!("beta  = {:?}", r.fusion.beta);
    if let Some(f) = &r.fit {
        println!(
            "fit: {} Newton iterations, training CE {:.4} -> {:.4}",
            f.iterations, f.initial_loss, f.final_loss
        );
    }
}
