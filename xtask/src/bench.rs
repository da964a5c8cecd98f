//! `cargo xtask bench`: measures every trained model variant side by side.
//!
//! 1. builds `paragen` in release, or in `--profile` (and trains the quick teacher first
//!    with `--build-models` when no trained run exists);
//! 2. runs the criterion benchmarks of `benches/` (skip with `--skip-criterion`);
//! 3. for every run directory under `--models` and every decoding that fits its kind,
//!    runs `paragen profile` once per thread count: BLEU/chrF on the test split, then
//!    decoding time at batch 1, 8 and 64 (one warm-up, median of several runs);
//! 4. writes `target/paragen-report/{report.json, report.md, bleu_vs_latency.svg}` and,
//!    unless `--quick`, regenerates `docs/results.md`. Each variant reports its best
//!    thread count per batch size.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail, ensure};
use serde_json::Value;

use crate::report::{BATCH_SIZES, CriterionResult, Machine, Report, Training, Variant};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Fewer sentences and runs (for CI): a few minutes instead of half an hour.
    #[arg(long)]
    quick: bool,
    /// Build the quick models first if no trained run is found under --models: prepare,
    /// teacher, distilled corpus, then the CMLM NAT (on distilled and on raw data), the
    /// CTC NAT and the AR-shallow students.
    #[arg(long)]
    build_models: bool,
    /// Training minutes of each model for --build-models (default: the quick preset's).
    #[arg(long)]
    train_minutes: Option<f64>,
    /// Training pairs the teacher distills for --build-models (default: all).
    #[arg(long)]
    distill_limit: Option<usize>,
    /// Teacher beam size when distilling for --build-models.
    #[arg(long, default_value_t = 4)]
    distill_beam: usize,
    /// Folder searched (two levels deep) for run directories (those with run.json).
    #[arg(long, default_value = "work")]
    models: PathBuf,
    /// Thread counts to time every variant at.
    #[arg(long, default_value = "1,2", value_delimiter = ',')]
    threads: Vec<usize>,
    /// Skip the criterion benchmarks.
    #[arg(long)]
    skip_criterion: bool,
    /// Cargo profile that builds `paragen` and the criterion benches. Only `release`
    /// numbers are published; CI passes `dev` so that the bench reuses what its test
    /// build compiled (dependencies are optimized in dev too) instead of compiling burn
    /// a second time.
    #[arg(long, default_value = "release")]
    profile: String,
}

impl BenchArgs {
    /// Whether this run's numbers may stand as the project's published ones.
    fn publishes(&self) -> bool {
        !self.quick && self.profile == "release"
    }

    /// The cargo arguments that build in `--profile`. Outside release the whole
    /// workspace is built: features then unify as in `cargo nextest run --workspace`,
    /// so its dependency builds are reused.
    fn cargo_build<'a>(&'a self, command: &'a str, release_package: &'a str) -> Vec<&'a str> {
        if self.profile == "release" {
            vec![command, "--release", "-p", release_package]
        } else {
            vec![command, "--profile", &self.profile, "--workspace"]
        }
    }

    /// The folder under `target/` that `--profile` builds into.
    fn target_folder(&self) -> &str {
        match self.profile.as_str() {
            "dev" | "test" => "debug",
            "bench" => "release",
            other => other,
        }
    }
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let root = crate::workspace_root();
    let mut build = args.cargo_build("build", "paragen-cli");
    build.push("--bins");
    cargo(&root, &build)?;
    let paragen = root
        .join("target")
        .join(args.target_folder())
        .join("paragen");
    let models_dir = root.join(&args.models);
    let mut runs = find_runs(&models_dir, 2);
    if runs.is_empty() {
        if !args.build_models {
            bail!(
                "no trained model under {}; train one (README) or pass --build-models",
                models_dir.display()
            );
        }
        build_quick_models(&paragen, &models_dir, &args)?;
        runs = find_runs(&models_dir, 2);
    }
    prepare_missing_data(&paragen, &runs)?;
    let derived = root.join("target/paragen-report/derived");
    runs.extend(derived_variants(
        &paragen,
        &runs,
        &models_dir,
        &derived,
        args.quick,
    )?);
    runs.sort_by_key(|r| kind_rank(&run_kind(r)));
    let criterion = if args.skip_criterion {
        Vec::new()
    } else {
        run_criterion(&root, &args)?
    };
    let (time_sentences, runs_per_batch) = if args.quick {
        ("16", "3")
    } else {
        ("100", "5")
    };
    let quality = if args.quick { Some("100") } else { None };
    let mut profiles: Vec<(String, Vec<Value>)> = Vec::new();
    let mut roofline = None;
    // The roofline measures the NAT's forward pass when there is a NAT, else the AR one.
    let roofline_kind = if runs.iter().any(|r| run_kind(r) == "nat") {
        "nat"
    } else {
        "ar"
    };
    for run_dir in &runs {
        let kind = run_kind(run_dir);
        for decoding in decodings(run_dir, &kind) {
            let mut per_threads = Vec::new();
            for (i, threads) in args.threads.iter().enumerate() {
                let mut cmd = Command::new(&paragen);
                cmd.current_dir(&root)
                    .args([
                        "--quiet",
                        "--threads",
                        &threads.to_string(),
                        "profile",
                        "--model",
                    ])
                    .arg(run_dir)
                    .args(&decoding)
                    .args(["--time-sentences", time_sentences, "--runs", runs_per_batch]);
                // Quality does not depend on threads: score once.
                match (i, quality) {
                    (0, Some(n)) => cmd.args(["--quality-sentences", n]),
                    (0, None) => &mut cmd,
                    _ => cmd.args(["--quality-sentences", "0"]),
                };
                let wants_roofline = roofline.is_none()
                    && kind == roofline_kind
                    && decoding.is_empty()
                    && *threads == *args.threads.iter().max().unwrap();
                if wants_roofline {
                    cmd.arg("--roofline");
                }
                eprintln!(
                    "profiling {} {} with {threads} thread(s)",
                    run_dir.display(),
                    decoding.join(" ")
                );
                let output = cmd.output().context("running paragen profile")?;
                ensure!(
                    output.status.success(),
                    "paragen profile failed: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
                let value: Value = serde_json::from_slice(&output.stdout)
                    .context("parsing paragen profile output")?;
                if wants_roofline {
                    roofline = value.get("roofline").cloned();
                }
                per_threads.push(value);
            }
            let name = match run_dir.strip_prefix(&derived) {
                Ok(derived) => derived.display().to_string(),
                Err(_) => variant_name(run_dir, &models_dir),
            };
            profiles.push((name, per_threads));
        }
    }
    let report = build_report(profiles, roofline, criterion, &args.threads)?;
    validate_report(&serde_json::to_value(&report)?)
        .map_err(|e| anyhow::anyhow!("report.json schema: {e}"))?;
    // A quick or non-release run measures too little to stand as the published numbers.
    write_outputs(&root, &report, args.publishes())?;
    Ok(())
}

pub(crate) fn cargo(root: &Path, args: &[&str]) -> anyhow::Result<()> {
    eprintln!("$ cargo {}", args.join(" "));
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .current_dir(root)
        .status()?;
    ensure!(status.success(), "cargo {} failed", args.join(" "));
    Ok(())
}

/// Run directories (with `run.json` and `model.mpk`) at most `depth` levels below `dir`,
/// in path order (sort by [`kind_rank`] for the report).
fn find_runs(dir: &Path, depth: usize) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut entries: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    entries.sort();
    let mut runs = Vec::new();
    for path in entries {
        if path.join("run.json").exists() && path.join("model.mpk").exists() {
            runs.push(path);
        } else if depth > 1 {
            runs.extend(find_runs(&path, depth - 1));
        }
    }
    runs
}

/// Prepares, from the shipped corpus, each run's data folder that holds no test split:
/// release models name `work/data`, which a fresh clone does not have yet.
fn prepare_missing_data(paragen: &Path, runs: &[PathBuf]) -> anyhow::Result<()> {
    for run_dir in runs {
        let Some(data) = run_json(run_dir)["data"].as_str().map(|d| run_dir.join(d)) else {
            continue;
        };
        if ["test.tsv", "test.tsv.gz"]
            .iter()
            .any(|split| data.join(split).exists())
        {
            continue;
        }
        eprintln!(
            "preparing {} (the data of {}) from the shipped corpus",
            data.display(),
            run_dir.display()
        );
        run_paragen(paragen, &["--quiet", "prepare", "--out", &path_arg(&data)])?;
    }
    Ok(())
}

/// Compressed copies of the runs under `dir`, each named `<variant> <how>`, so that the
/// report shows what each compression gains and costs beside the same model without it:
/// every float run quantized to int8 (`paragen quantize`); every NAT run without a
/// shortlist with one (`paragen shortlist`, its defaults), also of its int8 copy; NAT
/// runs at int4; and, unless `quick`, every unpruned float run pruned by
/// [`PRUNING_SWEEP`] without recovery (`paragen prune`).
fn derived_variants(
    paragen: &Path,
    runs: &[PathBuf],
    models_dir: &Path,
    dir: &Path,
    quick: bool,
) -> anyhow::Result<Vec<PathBuf>> {
    let mut derived = Vec::new();
    for run_dir in runs {
        let name = variant_name(run_dir, models_dir);
        let is_nat = matches!(run_kind(run_dir).as_str(), "nat" | "nat-ctc");
        let listed = run_dir.join("shortlist.json").exists();
        let float = !run_dir.join("quantization.json").exists();
        // The pruning curve before any recovery (a recovered model ships in models/ and
        // is measured there): what importance alone keeps at each share removed.
        if float && !quick && !run_dir.join("prune.json").exists() {
            for percent in PRUNING_SWEEP {
                let share = format!("{}", f64::from(percent) / 100.0);
                derived.push(derive(
                    paragen,
                    dir,
                    &format!("{name} pruned{percent} unrecovered"),
                    &[
                        "prune",
                        "--model",
                        &path_arg(run_dir),
                        "--heads",
                        &share,
                        "--ffn",
                        &share,
                    ],
                )?);
            }
        }
        let mut int8 = None;
        if float {
            let bits: &[&str] = if is_nat { &["8", "4"] } else { &["8"] };
            for bits in bits {
                let out = derive(
                    paragen,
                    dir,
                    &format!("{name} int{bits}"),
                    &["quantize", "--model", &path_arg(run_dir), "--bits", bits],
                )?;
                if *bits == "8" {
                    int8 = Some(out.clone());
                }
                derived.push(out);
            }
        }
        if is_nat && !listed {
            let mut sources = vec![(run_dir.clone(), name.clone())];
            sources.extend(int8.map(|q| (q, format!("{name} int8"))));
            for (source, source_name) in sources {
                derived.push(derive(
                    paragen,
                    dir,
                    &format!("{source_name} shortlist"),
                    &["shortlist", "--model", &path_arg(&source)],
                )?);
            }
        }
    }
    Ok(derived)
}

/// Shares (in percent) of heads and feed-forward neurons the bench prunes every float
/// model by, without recovery.
const PRUNING_SWEEP: [u8; 2] = [30, 50];

/// Runs `paragen <args> --out <dir>/<name>` afresh (a copy made from older weights
/// would measure another model) and returns the new run.
fn derive(paragen: &Path, dir: &Path, name: &str, args: &[&str]) -> anyhow::Result<PathBuf> {
    let out = dir.join(name);
    if out.exists() {
        std::fs::remove_dir_all(&out).with_context(|| format!("removing {}", out.display()))?;
    }
    let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    args.extend(["--out".to_string(), path_arg(&out), "--quiet".to_string()]);
    run_paragen(
        paragen,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    )?;
    Ok(out)
}

/// A run's `run.json`, or `Null` when it cannot be read (the fields then read as
/// absent).
fn run_json(run_dir: &Path) -> Value {
    std::fs::read(run_dir.join("run.json"))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

/// A path as one argument of `paragen`.
fn path_arg(path: &Path) -> String {
    path.display().to_string()
}

/// Runs `paragen args` from the workspace root, echoing the command; fails unless it
/// succeeds.
fn run_paragen(paragen: &Path, args: &[&str]) -> anyhow::Result<()> {
    eprintln!("$ paragen {}", args.join(" "));
    let status = Command::new(paragen)
        .args(args)
        .current_dir(crate::workspace_root())
        .status()
        .context("running paragen")?;
    ensure!(status.success(), "paragen {} failed", args.join(" "));
    Ok(())
}

/// The `kind` in a run's `run.json` (`ar`, `ar-shallow`, `nat` or `nat-ctc`).
fn run_kind(run_dir: &Path) -> String {
    run_json(run_dir)["kind"]
        .as_str()
        .unwrap_or("ar")
        .to_string()
}

/// Teachers first, then AR students, then NATs: the order the table reads best in.
fn kind_rank(kind: &str) -> usize {
    match kind {
        "ar" => 0,
        "ar-shallow" => 1,
        _ => 2,
    }
}

/// The `paragen profile` decoding flags measured for a run of `kind`.
fn decodings(run_dir: &Path, kind: &str) -> Vec<Vec<String>> {
    let flags = |f: &[&str]| f.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    match kind {
        "ar" => vec![flags(&[]), flags(&["--beam", "4"])],
        // A CTC student has no length to beam over and nothing to refine.
        "ar-shallow" | "nat-ctc" => vec![flags(&[])],
        _ => {
            let config = run_json(run_dir);
            let mut out = vec![flags(&[]), flags(&["--length-beam", "3"])];
            let teacher = config["student"]["teacher"]
                .as_str()
                .map(PathBuf::from)
                .filter(|t| crate::workspace_root().join(t).join("model.mpk").exists());
            if let Some(teacher) = teacher {
                let teacher = teacher.display().to_string();
                out.push(flags(&["--length-beam", "3", "--rescore-with", &teacher]));
            }
            for k in ["2", "4", "10"] {
                out.push(flags(&["--iterations", k]));
            }
            out
        }
    }
}

fn variant_name(run_dir: &Path, models_dir: &Path) -> String {
    run_dir
        .strip_prefix(models_dir)
        .unwrap_or(run_dir)
        .display()
        .to_string()
}

/// Trains every variant with the quick presets into `models_dir`, resuming whatever an
/// earlier call left unfinished.
fn build_quick_models(paragen: &Path, models_dir: &Path, args: &BenchArgs) -> anyhow::Result<()> {
    let path = |name: &str| models_dir.join(name).display().to_string();
    let (data, teacher, distilled) = (path("data"), path("teacher"), path("teacher-distilled"));
    let run = |args: Vec<String>| {
        run_paragen(
            paragen,
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
        )
    };
    let strings = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    // Trains `out` unless it is finished; resumes it when an earlier call was cut off.
    let train = |mut command: Vec<String>, out: &str| -> anyhow::Result<()> {
        if Path::new(out).join("model.mpk").exists() {
            return Ok(());
        }
        command.extend(strings(&["--out", out]));
        if Path::new(out).join("run.json").exists() {
            command.push("--resume".into());
        }
        if let Some(m) = args.train_minutes {
            command.extend(strings(&["--max-minutes", &m.to_string()]));
        }
        run(command)
    };
    if !Path::new(&data).join("prepare.json").exists() {
        run(strings(&["prepare", "--out", &data]))?;
    }
    train(
        strings(&["train-teacher", "--data", &data, "--preset", "quick"]),
        &teacher,
    )?;
    if !Path::new(&distilled).join("train.tsv").exists() {
        let mut distill = strings(&[
            "distill",
            "--teacher",
            &teacher,
            "--out",
            &distilled,
            "--beam",
            &args.distill_beam.to_string(),
        ]);
        if let Some(limit) = args.distill_limit {
            distill.extend(strings(&["--limit", &limit.to_string()]));
        }
        run(distill)?;
    }
    let student = |kind: &str, data: &str, extra: &[&str]| {
        let mut command = strings(&[
            "train-student",
            "--kind",
            kind,
            "--data",
            data,
            "--teacher",
            &teacher,
        ]);
        command.extend(strings(extra));
        command
    };
    train(
        student("nat", &distilled, &["--init-from-teacher"]),
        &path("nat"),
    )?;
    train(
        student("nat", &data, &["--init-from-teacher"]),
        &path("nat-raw"),
    )?;
    train(
        student("nat-ctc", &distilled, &["--init-from-teacher"]),
        &path("nat-ctc"),
    )?;
    train(
        student("ar-shallow", &distilled, &["--init-from-teacher"]),
        &path("ar-shallow"),
    )
}

fn run_criterion(root: &Path, bench: &BenchArgs) -> anyhow::Result<Vec<CriterionResult>> {
    let mut args = bench.cargo_build("bench", "paragen-benches");
    args.extend([
        "--bench", "teacher", "--bench", "nat", "--bench", "linear", "--",
    ]);
    if bench.quick {
        args.extend([
            "--warm-up-time",
            "0.5",
            "--measurement-time",
            "1",
            "--sample-size",
            "10",
        ]);
    }
    cargo(root, &args)?;
    let mut results = Vec::new();
    collect_criterion(
        &root.join("target/criterion"),
        &root.join("target/criterion"),
        &mut results,
    );
    results.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(results)
}

fn collect_criterion(base: &Path, dir: &Path, out: &mut Vec<CriterionResult>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n == "new") {
                if let Some(median) = read_median_ns(&path.join("estimates.json")) {
                    let id = path
                        .parent()
                        .unwrap()
                        .strip_prefix(base)
                        .unwrap()
                        .display()
                        .to_string();
                    out.push(CriterionResult {
                        id,
                        median_ms: median / 1e6,
                    });
                }
            } else if path
                .file_name()
                .is_none_or(|n| n != "report" && n != "base" && n != "change")
            {
                collect_criterion(base, &path, out);
            }
        }
    }
}

fn read_median_ns(path: &Path) -> Option<f64> {
    let value: Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    value["median"]["point_estimate"].as_f64()
}

/// `dir` relative to the workspace, as a reader would type it (unchanged outside it).
fn from_workspace(dir: &str) -> String {
    let root = crate::workspace_root();
    let path = Path::new(dir);
    // A run's data path may climb out of the run (`models/x/../../work/data`).
    let normal: PathBuf = path.components().fold(PathBuf::new(), |mut out, c| {
        match c {
            std::path::Component::ParentDir if out.file_name().is_some() => {
                out.pop();
            }
            other => out.push(other),
        }
        out
    });
    normal
        .strip_prefix(&root)
        .unwrap_or(&normal)
        .display()
        .to_string()
}

/// Merges per-thread profiles into variants (best time per batch size) and computes
/// speedups against the teacher's greedy decoding.
pub fn build_report(
    profiles: Vec<(String, Vec<Value>)>,
    roofline: Option<Value>,
    criterion: Vec<CriterionResult>,
    threads: &[usize],
) -> anyhow::Result<Report> {
    let mut variants = Vec::new();
    for (name, per_threads) in profiles {
        let first = per_threads
            .first()
            .context("a variant without any profile")?;
        let mut ms = BTreeMap::new();
        let mut best_threads = BTreeMap::new();
        for profile in &per_threads {
            let timings = profile["timings"]
                .as_object()
                .context("profile without timings")?;
            for (batch, timing) in timings {
                let value = timing["ms_per_sentence"]
                    .as_f64()
                    .context("timing without ms_per_sentence")?;
                if ms.get(batch).is_none_or(|&best| value < best) {
                    ms.insert(batch.clone(), value);
                    best_threads.insert(
                        batch.clone(),
                        profile["threads"].as_u64().unwrap_or(0) as usize,
                    );
                }
            }
        }
        let decoding = first["decoding"].as_str().unwrap_or("?").to_string();
        variants.push(Variant {
            name: format!("{name} {decoding}"),
            kind: first["kind"].as_str().unwrap_or("ar").into(),
            decoding,
            bleu: first["bleu"].as_f64().unwrap_or(f64::NAN),
            chrf: first["chrf"].as_f64().unwrap_or(f64::NAN),
            params: first["params"].as_u64().unwrap_or(0),
            file_bytes: first["file_bytes"].as_u64().unwrap_or(0),
            sentences_per_s: ms.iter().map(|(b, v)| (b.clone(), 1000.0 / v)).collect(),
            ms_per_sentence: ms,
            speedup_vs_teacher_greedy: BTreeMap::new(),
            best_threads,
            model_dir: first["model"]
                .as_str()
                .map(from_workspace)
                .unwrap_or_default(),
            training: first["train_steps"].as_u64().map(|steps| Training {
                encoder_layers: first["encoder_layers"].as_u64().unwrap_or(0),
                decoder_layers: first["decoder_layers"].as_u64().unwrap_or(0),
                data_dir: first["data_dir"]
                    .as_str()
                    .map(from_workspace)
                    .unwrap_or_default(),
                steps,
                minutes: first["train_minutes"].as_f64().unwrap_or(f64::NAN),
                curve: first["model"]
                    .as_str()
                    .map(|dir| valid_curve(Path::new(dir)))
                    .unwrap_or_default(),
            }),
        });
    }
    let reference = variants
        .iter()
        .find(|v| v.kind == "ar" && v.decoding == "greedy" && v.name.starts_with("teacher"))
        .or_else(|| {
            variants
                .iter()
                .find(|v| v.kind == "ar" && v.decoding == "greedy")
        })
        .map(|v| v.ms_per_sentence.clone());
    if let Some(reference) = reference {
        for v in &mut variants {
            v.speedup_vs_teacher_greedy = v
                .ms_per_sentence
                .iter()
                .filter_map(|(b, ms)| reference.get(b).map(|r| (b.clone(), r / ms)))
                .collect();
        }
    }
    Ok(Report {
        date: command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        commit: command_output("git", &["rev-parse", "--short", "HEAD"]),
        machine: Machine {
            cpu: cpu_model(),
            logical_cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            threads: threads.to_vec(),
            backend: "flex".into(),
        },
        method:
            "Every variant decodes the same test sentences in the same `cargo xtask bench` run, \
                 after one warm-up pass; each time is the median of the timed runs; every variant \
                 is timed at every thread count and the best is reported (best_threads). BLEU and \
                 chrF (sacrebleu-exact) are scored at batch 64."
                .into(),
        variants,
        roofline,
        criterion,
    })
}

pub(crate) fn command_output(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// The CPU's model name from `/proc/cpuinfo`, for reports.
pub(crate) fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Checks that a report has the schema other tools rely on.
pub fn validate_report(report: &Value) -> Result<(), String> {
    let machine = report.get("machine").ok_or("missing `machine`")?;
    for key in ["cpu", "threads", "backend"] {
        machine.get(key).ok_or(format!("machine lacks `{key}`"))?;
    }
    let variants = report["variants"]
        .as_array()
        .ok_or("`variants` is not a list")?;
    if variants.is_empty() {
        return Err("no variants".into());
    }
    for v in variants {
        let name = v["name"].as_str().ok_or("variant without a `name`")?;
        for key in ["kind", "decoding"] {
            v[key]
                .as_str()
                .ok_or(format!("{name}: `{key}` is not a string"))?;
        }
        let kind = v["kind"].as_str().unwrap();
        if !["ar", "ar-shallow", "nat", "nat-ctc"].contains(&kind) {
            return Err(format!("{name}: unknown kind `{kind}`"));
        }
        for key in ["bleu", "chrf"] {
            v[key]
                .as_f64()
                .ok_or(format!("{name}: `{key}` is not a number"))?;
        }
        for key in ["params", "file_bytes"] {
            v[key]
                .as_u64()
                .ok_or(format!("{name}: `{key}` is not an integer"))?;
        }
        for key in [
            "ms_per_sentence",
            "sentences_per_s",
            "speedup_vs_teacher_greedy",
        ] {
            let map = v[key]
                .as_object()
                .ok_or(format!("{name}: `{key}` is not an object"))?;
            for batch in BATCH_SIZES {
                map.get(&batch.to_string())
                    .and_then(Value::as_f64)
                    .ok_or(format!("{name}: `{key}` lacks batch size \"{batch}\""))?;
            }
        }
    }
    Ok(())
}

/// A run's valid BLEU after each epoch against its cumulative training minutes, from
/// its `metrics.jsonl` (empty when the file is missing).
fn valid_curve(run: &Path) -> Vec<(f64, f64)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter_map(|m| {
            Some((
                m["train_seconds"].as_f64()? / 60.0,
                m["valid_bleu"].as_f64()?,
            ))
        })
        .collect()
}

fn write_outputs(root: &Path, report: &Report, publish: bool) -> anyhow::Result<()> {
    let dir = root.join("target/paragen-report");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("report.json"),
        serde_json::to_string_pretty(report)?,
    )?;
    crate::report::plot_bleu_latency(report, &dir.join("bleu_vs_latency.svg"))?;
    crate::report::plot_training_curves(report, &dir.join("valid_bleu_vs_minutes.svg"))?;
    let table = crate::report::markdown(report);
    std::fs::write(dir.join("report.md"), &table)?;
    println!("{table}");
    println!(
        "wrote {}/report.json, report.md, bleu_vs_latency.svg and valid_bleu_vs_minutes.svg",
        dir.display()
    );
    if publish {
        std::fs::write(
            root.join("docs/results.md"),
            crate::report::results_page(report, &table),
        )?;
        // The page shows both plots, so they are published beside it.
        for plot in ["bleu_vs_latency.svg", "valid_bleu_vs_minutes.svg"] {
            std::fs::copy(dir.join(plot), root.join("docs").join(plot))?;
        }
        println!("regenerated docs/results.md and its plots");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(threads: usize, decoding: &str, ms: [f64; 3]) -> Value {
        serde_json::json!({
            "model": "work/teacher", "kind": "ar", "decoding": decoding, "params": 100, "file_bytes": 400,
            "threads": threads, "encoder_layers": 3, "decoder_layers": 3, "bleu": 12.5, "chrf": 40.0,
            "data_dir": "work/data", "train_steps": 500, "train_minutes": 10.0,
            "timings": {
                "1": {"ms_per_sentence": ms[0]}, "8": {"ms_per_sentence": ms[1]}, "64": {"ms_per_sentence": ms[2]}
            }
        })
    }

    #[test]
    fn report_has_the_documented_schema_and_picks_the_best_threads() {
        let profiles = vec![
            (
                "teacher".to_string(),
                vec![
                    profile(1, "greedy", [10.0, 4.0, 2.0]),
                    profile(2, "greedy", [12.0, 3.0, 1.0]),
                ],
            ),
            (
                "teacher".to_string(),
                vec![
                    profile(1, "beam4", [40.0, 8.0, 4.0]),
                    profile(2, "beam4", [50.0, 6.0, 2.0]),
                ],
            ),
        ];
        let report = build_report(profiles, None, Vec::new(), &[1, 2]).unwrap();
        let json = serde_json::to_value(&report).unwrap();
        validate_report(&json).unwrap();
        let greedy = &report.variants[0];
        assert_eq!(greedy.ms_per_sentence["1"], 10.0);
        assert_eq!(greedy.best_threads["1"], 1);
        assert_eq!(greedy.best_threads["64"], 2);
        assert_eq!(greedy.speedup_vs_teacher_greedy["8"], 1.0);
        assert_eq!(report.variants[1].speedup_vs_teacher_greedy["1"], 0.25);
        assert!((greedy.sentences_per_s["64"] - 1000.0).abs() < 1e-9);
        assert_eq!(greedy.training.as_ref().unwrap().steps, 500);
        let table = crate::report::markdown(&report);
        assert!(
            table.contains("`work/teacher` (ar, 3+3 layers, trained 10 min / 500 steps"),
            "{table}"
        );
    }

    #[test]
    fn each_model_brings_its_valid_curve_and_the_plot_draws_it() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("nat-ctc");
        std::fs::create_dir_all(&run).unwrap();
        std::fs::write(
            run.join("metrics.jsonl"),
            "{\"epoch\":1,\"train_seconds\":60.0,\"valid_bleu\":5.0}\n\
             {\"epoch\":2,\"train_seconds\":150.0,\"valid_bleu\":7.5}\n",
        )
        .unwrap();
        let mut one_pass = profile(1, "one-pass", [3.0, 2.0, 1.0]);
        one_pass["model"] = run.display().to_string().into();
        let report = build_report(
            vec![("nat-ctc".into(), vec![one_pass])],
            None,
            Vec::new(),
            &[1],
        )
        .unwrap();
        let curve = &report.variants[0].training.as_ref().unwrap().curve;
        assert_eq!(curve, &vec![(1.0, 5.0), (2.5, 7.5)]);
        let svg = dir.path().join("curves.svg");
        crate::report::plot_training_curves(&report, &svg).unwrap();
        let drawn = std::fs::read_to_string(&svg).unwrap();
        assert!(
            drawn.contains("nat-ctc") && drawn.contains("<polyline"),
            "{drawn}"
        );
    }

    #[test]
    fn the_report_measures_each_nat_against_the_targets() {
        let nat = |decoding: &str, bleu: f64, ms: f64| {
            let mut p = profile(1, decoding, [ms, ms, ms]);
            p["model"] = "work/nat".into();
            p["kind"] = "nat".into();
            p["bleu"] = bleu.into();
            p
        };
        let mut beam = profile(1, "beam4", [40.0, 8.0, 4.0]);
        beam["bleu"] = 20.0.into();
        let profiles = vec![
            (
                "teacher".into(),
                vec![profile(1, "greedy", [10.0, 4.0, 2.0])],
            ),
            ("teacher".into(), vec![beam]),
            ("nat".into(), vec![nat("one-pass", 5.0, 2.5)]),
            ("nat".into(), vec![nat("mask-predict-10", 19.0, 30.0)]),
        ];
        let report = build_report(profiles, None, Vec::new(), &[1]).unwrap();
        let targets = crate::report::nat_targets(&report).unwrap();
        assert!(
            targets.contains(
                "`work/nat`: one pass 25% of teacher beam (target 90%) at 4.00x teacher greedy \
                 speed (target 5x); best (mask-predict-10) 95% (target 97%)."
            ),
            "{targets}"
        );
        assert!(crate::report::markdown(&report).contains(&targets));
    }

    #[test]
    fn report_paths_are_relative_to_the_workspace_and_climb_out_of_runs() {
        let root = crate::workspace_root();
        let data = root.join("models/teacher/../../work/data");
        assert_eq!(from_workspace(data.to_str().unwrap()), "work/data");
        assert_eq!(from_workspace("/elsewhere/data"), "/elsewhere/data");
    }

    #[test]
    fn every_kind_gets_its_decodings_and_nats_are_rescored_by_their_teacher() {
        let dir = tempfile::tempdir().unwrap();
        let write_run = |name: &str, json: Value| {
            let run = dir.path().join(name);
            std::fs::create_dir_all(&run).unwrap();
            std::fs::write(run.join("run.json"), json.to_string()).unwrap();
            std::fs::write(run.join("model.mpk"), b"").unwrap();
            run
        };
        let teacher = write_run("teacher", serde_json::json!({"kind": "ar"}));
        let nat = write_run(
            "nat",
            serde_json::json!({"kind": "nat", "student": {"teacher": teacher}}),
        );
        let orphan = write_run(
            "orphan",
            serde_json::json!({"kind": "nat", "student": {"teacher": "/nowhere"}}),
        );
        let shallow = write_run("shallow", serde_json::json!({"kind": "ar-shallow"}));
        let ctc = write_run(
            "ctc",
            serde_json::json!({"kind": "nat-ctc", "student": {"teacher": teacher}}),
        );
        let mut runs = find_runs(dir.path(), 2);
        runs.sort_by_key(|r| kind_rank(&run_kind(r)));
        assert_eq!(runs[0], teacher);
        assert_eq!(runs[1], shallow);
        assert_eq!(decodings(&teacher, "ar").len(), 2);
        assert_eq!(decodings(&shallow, "ar-shallow").len(), 1);
        let nat_decodings = decodings(&nat, "nat");
        assert_eq!(nat_decodings.len(), 6);
        assert!(
            nat_decodings
                .iter()
                .any(|d| d.contains(&"--rescore-with".to_string()))
        );
        // A NAT whose teacher is gone is measured without rescoring rather than failing.
        assert_eq!(decodings(&orphan, "nat").len(), 5);
        // A CTC student decodes in one pass only.
        assert_eq!(decodings(&ctc, "nat-ctc"), vec![Vec::<String>::new()]);
    }

    #[test]
    fn schema_check_rejects_missing_batch_sizes() {
        let mut json = serde_json::to_value(
            build_report(
                vec![(
                    "teacher".into(),
                    vec![profile(1, "greedy", [1.0, 1.0, 1.0])],
                )],
                None,
                vec![],
                &[1],
            )
            .unwrap(),
        )
        .unwrap();
        json["variants"][0]["ms_per_sentence"]
            .as_object_mut()
            .unwrap()
            .remove("64");
        assert!(
            validate_report(&json)
                .unwrap_err()
                .contains("batch size \"64\"")
        );
    }
}
