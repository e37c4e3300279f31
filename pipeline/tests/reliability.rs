//! Faults that used to get through `pipeline features` silently (issue 20), each reproduced:
//! two runs on one folder (two real processes), locks left by killed runs, non-finite audio,
//! label faults at ingest, and reruns after `--on-error skip`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pipeline::features::{FeaturesArgs, run_features};
use pipeline::lock::Holder;

const SR: u32 = 32_000;

/// Deterministic noise in [-amp, amp) (xorshift).
fn noise(seed: u64, n: usize, amp: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * amp
        })
        .collect()
}

fn write_wav(path: &Path, samples: &[f32]) {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: SR,
        bits_per_sample: 32,
        sample_format: hound::SampleFormat::Float,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for &x in samples {
        w.write_sample(x).unwrap();
    }
    w.finalize().unwrap();
}

/// A small TAU-layout dataset at 32 kHz: scenes airport, bus, park; segments 0-3 (0-2 train,
/// 3 test); seconds 0-1; devices a and b. 48 one-second float WAV files.
struct Ds {
    dir: tempfile::TempDir,
    /// `(file, scene)` in meta.csv order.
    files: Vec<(String, String)>,
}

impl Ds {
    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn meta_text(&self) -> String {
        let mut s = String::from("filename\tscene_label\tidentifier\tsource_label\n");
        for (f, scene) in &self.files {
            let dev = f.trim_end_matches(".wav").rsplit('-').next().unwrap();
            s.push_str(&format!("{f}\t{scene}\tlisbon-1\t{dev}\n"));
        }
        s
    }

    fn write_meta(&self, text: &str) {
        std::fs::write(self.root().join("meta.csv"), text).unwrap();
    }

    fn out(&self, name: &str) -> PathBuf {
        self.root().join(name)
    }
}

fn dataset() -> Ds {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("audio")).unwrap();
    std::fs::create_dir_all(root.join("evaluation_setup")).unwrap();
    let mut files = Vec::new();
    let (mut train, mut test) = (String::new(), String::new());
    let mut n = 0;
    for scene in ["airport", "bus", "park"] {
        for seg in 0..4 {
            for idx in 0..2 {
                for dev in ["a", "b"] {
                    let f = format!("audio/{scene}-lisbon-1-{}-{idx}-{dev}.wav", 100 + seg);
                    write_wav(
                        &root.join(&f),
                        &noise(n + 1, SR as usize, 0.05 + 0.1 * (n % 4) as f32),
                    );
                    let line = format!("{f}\t{scene}\n");
                    if seg < 3 {
                        train.push_str(&line);
                    } else {
                        test.push_str(&line);
                    }
                    files.push((f, scene.to_string()));
                    n += 1;
                }
            }
        }
    }
    let head = "filename\tscene_label\n";
    let ev = root.join("evaluation_setup");
    std::fs::write(ev.join("fold1_train.csv"), format!("{head}{train}")).unwrap();
    std::fs::write(ev.join("fold1_evaluate.csv"), format!("{head}{test}")).unwrap();
    let ds = Ds { dir, files };
    ds.write_meta(&ds.meta_text());
    ds
}

fn args(ds: &Ds, out: &Path, extra: &[&str]) -> FeaturesArgs {
    let mut v: Vec<String> = [
        "--dataset",
        ds.root().to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--dir-variants",
        "0",
        "--files-per-shard",
        "12",
        "--quiet",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    FeaturesArgs::parse_args(v).unwrap()
}

fn features_cmd(ds: &Ds, out: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pipeline"));
    c.args(["features", "--dataset"])
        .arg(ds.root())
        .arg("--out")
        .arg(out)
        .args(["--dir-variants", "0", "--files-per-shard", "12", "--quiet"])
        .args(extra);
    c
}

fn wait_for(path: &Path, limit: Duration) {
    let t = Instant::now();
    while !path.exists() {
        assert!(t.elapsed() < limit, "{} never appeared", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A PID that belonged to a process which has exited.
fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

fn no_tmp_files(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!name.ends_with(".tmp"), "left behind: {name}");
    }
}

#[test]
fn a_second_run_on_the_same_folder_fails_at_once_naming_the_first() {
    let ds = dataset();
    let out = ds.out("data");
    // Run A holds the folder for 4 s before it writes anything.
    let mut a = features_cmd(&ds, &out, &["--pause-after-lock-ms", "4000"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&out.join("features-p0of1.lock"), Duration::from_secs(60));
    let t = Instant::now();
    let b = features_cmd(&ds, &out, &[]).output().unwrap();
    assert!(t.elapsed() < Duration::from_secs(3), "no silent wait");
    assert_eq!(b.status.code(), Some(1));
    let err = String::from_utf8_lossy(&b.stderr);
    assert!(err.contains(&out.display().to_string()), "{err}");
    assert!(err.contains(&format!("PID {}", a.id())), "{err}");
    assert!(err.contains("pipeline features --partition 0/1"), "{err}");
    let status = a.wait().unwrap();
    assert!(status.success());
    // The run that exits 0 recorded the checksums of the bytes on disk.
    let m = data_specs::Manifest::load(&out).unwrap();
    assert_eq!(m.total_rows(), 48);
    data_specs::verify_shards(&out.join("manifest.json"), &m, 1).unwrap();
    for e in &m.shards {
        assert_eq!(
            data_specs::sha256_file(&out.join(&e.file)).unwrap(),
            e.sha256,
            "{}",
            e.file
        );
    }
    assert!(!out.join("features-p0of1.lock").exists());
    no_tmp_files(&out);
}

#[test]
fn a_killed_run_leaves_a_lock_the_next_run_takes_over_with_a_message() {
    let ds = dataset();
    let out = ds.out("data");
    let mut a = features_cmd(&ds, &out, &["--pause-after-lock-ms", "60000"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lock = out.join("features-p0of1.lock");
    wait_for(&lock, Duration::from_secs(60));
    let pid = a.id();
    a.kill().unwrap();
    a.wait().unwrap();
    assert!(lock.exists(), "SIGKILL leaves the lock behind");
    let holder: Holder = serde_json::from_str(&std::fs::read_to_string(&lock).unwrap()).unwrap();
    assert_eq!(holder.pid, pid);
    assert!(holder.started_unix > 0 && !holder.host.is_empty());
    let t = Instant::now();
    let b = features_cmd(&ds, &out, &[]).output().unwrap();
    assert!(b.status.success(), "{}", String::from_utf8_lossy(&b.stderr));
    assert!(t.elapsed() < Duration::from_secs(60));
    let err = String::from_utf8_lossy(&b.stderr);
    assert!(
        err.contains("taking over") && err.contains(&format!("PID {pid}")),
        "{err}"
    );
    assert!(!lock.exists());
    no_tmp_files(&out);
}

#[test]
fn a_stale_manifest_lock_is_taken_over_and_a_legacy_one_is_named() {
    let ds = dataset();
    let out = ds.out("data");
    std::fs::create_dir_all(&out).unwrap();
    let lock = out.join("manifest.json.lock");
    // What a run killed during its manifest rewrite leaves.
    let killed = Holder {
        pid: dead_pid(),
        process_start: 1,
        ..Holder::current("manifest rewrite")
    };
    std::fs::write(&lock, serde_json::to_string(&killed).unwrap()).unwrap();
    let t = Instant::now();
    let s = run_features(&args(&ds, &out, &[])).unwrap();
    assert!(t.elapsed() < Duration::from_secs(60), "no two-minute wait");
    assert_eq!(s.manifest.unwrap().total_rows(), 48);
    assert!(!lock.exists());
    // A lock of an older version (empty): named at once, not waited on...
    std::fs::write(&lock, b"").unwrap();
    let t = Instant::now();
    let e = run_features(&args(&ds, &out, &[])).unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(30));
    let msg = format!("{e:#}");
    assert!(
        msg.contains("manifest.json.lock") && msg.contains("delete"),
        "{msg}"
    );
    // ... and taken over once it is old.
    let old = std::time::SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&lock)
        .unwrap()
        .set_modified(old)
        .unwrap();
    run_features(&args(&ds, &out, &[])).unwrap();
}

#[test]
fn non_finite_samples_are_bad_input_named_with_their_index() {
    for (value, word) in [(f32::NAN, "NaN"), (f32::INFINITY, "inf")] {
        let ds = dataset();
        let (file, _) = ds.files[5].clone();
        let mut x = noise(9, SR as usize, 0.1);
        x[1234] = value;
        write_wav(&ds.root().join(&file), &x);
        let e = run_features(&args(&ds, &ds.out("fail"), &[])).unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.contains(&file) && msg.contains("sample 1234") && msg.contains(word),
            "{msg}"
        );
        // --on-error skip: the file is left out and listed; the threshold stays finite and
        // every other row is written.
        let out = ds.out("skip");
        let s = run_features(&args(&ds, &out, &["--on-error", "skip"])).unwrap();
        assert!(s.energy_threshold.is_finite(), "{}", s.energy_threshold);
        assert_eq!(s.manifest.unwrap().total_rows(), 47);
        let report = std::fs::read_to_string(out.join("skipped.tsv")).unwrap();
        assert!(
            report.contains(&file) && report.contains("sample 1234"),
            "{report}"
        );
    }
    // Non-finite or absurd flag values are refused by the parser.
    for bad in [
        ["--energy-threshold", "nan"],
        ["--energy-threshold", "inf"],
        ["--replay-max-lag-ms", "NaN"],
        ["--threads", "0"],
    ] {
        let mut v = vec!["--dataset", "x"];
        v.extend(bad);
        let e = FeaturesArgs::parse_args(v).unwrap_err().to_string();
        assert!(e.contains(bad[0]), "{e}");
    }
}

fn expect_label_error(ds: &Ds, extra: &[&str], needles: &[&str]) -> String {
    let e = run_features(&args(ds, &ds.out("labels"), extra)).unwrap_err();
    let msg = format!("{e:#}");
    for n in needles {
        assert!(msg.contains(n), "'{msg}' must contain '{n}'");
    }
    msg
}

#[test]
fn label_faults_are_errors_naming_file_and_line() {
    let ds = dataset();
    let meta = ds.meta_text();
    let meta_path = ds.root().join("meta.csv").display().to_string();
    let lines: Vec<&str> = meta.lines().collect();

    // No scene_label column.
    let no_col: String = lines
        .iter()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            format!("{}\t{}\t{}\n", f[0], f[2], f[3])
        })
        .collect();
    ds.write_meta(&no_col);
    expect_label_error(&ds, &[], &[&meta_path, "scene_label"]);

    // A row with only a file name (line 5: the 4th data row, a training clip).
    let mut v: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    v[4] = v[4].split('\t').next().unwrap().to_string();
    ds.write_meta(&(v.join("\n") + "\n"));
    // Its labelled list gives it the label: accepted. Without the list's label, an error.
    run_features(&args(&ds, &ds.out("filled"), &[])).unwrap();
    let train_list = ds.root().join("evaluation_setup/fold1_train.csv");
    let list = std::fs::read_to_string(&train_list).unwrap();
    let unlabelled_list: String = list
        .lines()
        .map(|l| format!("{}\n", l.split('\t').next().unwrap()))
        .collect();
    std::fs::write(&train_list, &unlabelled_list).unwrap();
    expect_label_error(
        &ds,
        &[],
        &[&format!("{meta_path}, line 5"), "no scene label"],
    );
    // --allow-unlabelled does not excuse a training clip.
    expect_label_error(&ds, &["--allow-unlabelled"], &["line 5", "training clip"]);
    std::fs::write(&train_list, &list).unwrap();

    // A test clip without a label: an error, or accepted with --allow-unlabelled.
    let test_row = lines
        .iter()
        .position(|l| l.contains("-103-0-a.wav"))
        .unwrap();
    let mut v: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    let f: Vec<String> = v[test_row].split('\t').map(str::to_string).collect();
    v[test_row] = format!("{}\t\t{}\t{}", f[0], f[2], f[3]);
    ds.write_meta(&(v.join("\n") + "\n"));
    let eval_list = ds.root().join("evaluation_setup/fold1_evaluate.csv");
    let eval = std::fs::read_to_string(&eval_list).unwrap();
    let eval_unlabelled: String = eval
        .lines()
        .map(|l| format!("{}\n", l.split('\t').next().unwrap()))
        .collect();
    std::fs::write(&eval_list, &eval_unlabelled).unwrap();
    expect_label_error(
        &ds,
        &[],
        &[&format!("line {}", test_row + 1), "--allow-unlabelled"],
    );
    let s = run_features(&args(&ds, &ds.out("unlabelled"), &["--allow-unlabelled"])).unwrap();
    assert_eq!(s.manifest.unwrap().total_rows(), 48);
    std::fs::write(&eval_list, &eval).unwrap();

    // One stray label on a test clip (meta.csv and its list agree): an error, never an
    // eleventh class; with --labels naming it, accepted in the given order.
    let stray = meta.replacen(
        &format!("{}\tbus\t", ds.files[28].0),
        &format!("{}\tfountain\t", ds.files[28].0),
        1,
    );
    assert_ne!(stray, meta);
    ds.write_meta(&stray);
    std::fs::write(
        &eval_list,
        eval.replacen(
            &format!("{}\tbus", ds.files[28].0),
            &format!("{}\tfountain", ds.files[28].0),
            1,
        ),
    )
    .unwrap();
    let msg = expect_label_error(&ds, &[], &["'fountain'", "--labels", "line"]);
    assert!(msg.contains("airport, bus"), "{msg}");
    let out = ds.out("custom");
    run_features(&args(&ds, &out, &["--labels", "park,bus,airport,fountain"])).unwrap();
    let shard = pipeline::shards::list_shard_files(&out).unwrap()[0].clone();
    let m = data_specs::read_shard_meta(&out.join(shard)).unwrap();
    assert_eq!(m.labels.0, ["park", "bus", "airport", "fountain"]);
    std::fs::write(&eval_list, &eval).unwrap();

    // A file listed twice.
    let dup = format!("{meta}{}", lines[3]);
    ds.write_meta(&(dup + "\n"));
    expect_label_error(
        &ds,
        &[],
        &[
            &format!("{meta_path}, line {}", lines.len() + 1),
            "listed twice",
            "line 4",
        ],
    );
    // --on-error skip keeps the first row only.
    let s = run_features(&args(&ds, &ds.out("dup-skip"), &["--on-error", "skip"])).unwrap();
    assert_eq!(s.manifest.unwrap().total_rows(), 48);

    // meta.csv and a list disagree.
    ds.write_meta(&meta);
    let (file, _) = &ds.files[2];
    std::fs::write(
        &train_list,
        list.replacen(&format!("{file}\tairport"), &format!("{file}\tpark"), 1),
    )
    .unwrap();
    let list_line = list
        .lines()
        .position(|l| l.starts_with(file.as_str()))
        .unwrap()
        + 1;
    expect_label_error(
        &ds,
        &[],
        &[
            &format!("fold1_train.csv, line {list_line}"),
            "'park'",
            "'airport'",
            &format!("{meta_path}, line 4"),
        ],
    );
    std::fs::write(&train_list, &list).unwrap();

    // A UTF-8 byte-order mark before the header is accepted.
    ds.write_meta(&format!("\u{feff}{meta}"));
    std::fs::write(&train_list, format!("\u{feff}{list}")).unwrap();
    let s = run_features(&args(&ds, &ds.out("bom"), &[])).unwrap();
    assert_eq!(s.manifest.unwrap().total_rows(), 48);
    assert_eq!(s.rows.keys().filter(|k| k.0 == "train").count(), 2);
}

#[test]
fn a_rerun_after_skip_retries_the_skipped_file_and_keeps_the_record_until_then() {
    let ds = dataset();
    let out = ds.out("data");
    let (file, _) = ds.files[7].clone();
    let path = ds.root().join(&file);
    let good = std::fs::read(&path).unwrap();
    std::fs::write(&path, &good[..good.len() / 2]).unwrap();
    let s = run_features(&args(&ds, &out, &["--on-error", "skip"])).unwrap();
    assert_eq!(s.skipped.len(), 1);
    assert_eq!(s.manifest.unwrap().total_rows(), 47);
    // Rerun with the file still bad: retried, skipped again, still on record.
    let s = run_features(&args(&ds, &out, &["--on-error", "skip"])).unwrap();
    assert_eq!((s.retried, s.shards_written), (1, 1));
    let report = std::fs::read_to_string(out.join("skipped.tsv")).unwrap();
    assert!(report.contains(&file), "{report}");
    // A rerun stopped before it reaches the shard keeps the record too.
    let s = run_features(&args(
        &ds,
        &out,
        &["--on-error", "skip", "--stop-after-shards", "0"],
    ))
    .unwrap();
    assert_eq!(s.shards_written, 0);
    assert!(
        std::fs::read_to_string(out.join("skipped.tsv"))
            .unwrap()
            .contains(&file)
    );
    // Fixed: the rerun rewrites its shard with the clip and clears the record.
    std::fs::write(&path, &good).unwrap();
    let s = run_features(&args(&ds, &out, &["--on-error", "skip"])).unwrap();
    assert_eq!((s.retried, s.shards_written), (1, 1));
    assert!(s.skipped.is_empty());
    assert_eq!(s.manifest.unwrap().total_rows(), 48);
    assert!(!out.join("skipped.tsv").exists());
    let s = run_features(&args(&ds, &out, &[])).unwrap();
    assert_eq!((s.shards_written, s.retried), (0, 0));
}

#[test]
fn a_folder_given_as_audio_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let e = pipeline::ingest::decode_wav(dir.path())
        .unwrap_err()
        .to_string();
    assert!(e.contains("is a folder, not a WAV file"), "{e}");
    assert!(!e.contains("meta.csv"), "{e}");
    let e = pipeline::ingest::decode_wav(&dir.path().join("x.wav"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("no such file") && !e.contains("meta.csv"), "{e}");
}
