//! `cargo xtask fuzz`: runs every cargo-fuzz target (`fuzz/`) for a number of inputs and
//! writes what happened to `docs/fuzzing.md`, so that its figures are measured, not typed.
//!
//! Needs the nightly toolchain and `cargo install cargo-fuzz`. Each target starts from
//! the valid seeds of `crates/paragen-fuzz` (`examples/write_seeds.rs`) and keeps the
//! corpus it grows in `fuzz/corpus/<target>` (git-ignored) for the next run.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};

/// The cargo-fuzz targets, in `fuzz/Cargo.toml` order.
pub const TARGETS: [&str; 5] = [
    "corpus",
    "tokenizer",
    "run_file",
    "checkpoint",
    "translate_input",
];

#[derive(clap::Args)]
pub struct FuzzArgs {
    /// Inputs per target.
    #[arg(long, default_value_t = 1_000_000)]
    runs: u64,
    /// Only these targets (default: all).
    #[arg(long, value_delimiter = ',')]
    targets: Vec<String>,
    /// Memory limit per target process, in MB (libFuzzer's -rss_limit_mb).
    #[arg(long, default_value_t = 4096)]
    rss_limit_mb: u64,
    /// What else ran on the machine meanwhile, for the report (inputs/s depend on it).
    #[arg(long)]
    beside: Option<String>,
}

/// What one target's run gave.
struct Outcome {
    target: String,
    runs: u64,
    seconds: f64,
    coverage: String,
    crashed: Option<String>,
}

pub fn run(args: FuzzArgs) -> anyhow::Result<()> {
    let root = crate::workspace_root();
    let targets: Vec<String> = if args.targets.is_empty() {
        TARGETS.iter().map(|t| t.to_string()).collect()
    } else {
        args.targets.clone()
    };
    let corpus = root.join("fuzz/corpus");
    let status = Command::new("cargo")
        .current_dir(&root)
        .args([
            "run",
            "-q",
            "-p",
            "paragen-fuzz",
            "--example",
            "write_seeds",
            "--",
        ])
        .arg(&corpus)
        .status()
        .context("cargo run --example write_seeds")?;
    if !status.success() {
        bail!("writing the seed corpora failed");
    }
    let mut outcomes = Vec::new();
    for target in &targets {
        eprintln!("fuzzing {target} for {} inputs", args.runs);
        let started = Instant::now();
        let output = Command::new("cargo")
            .current_dir(root.join("fuzz"))
            // No sanitizer: the targets are safe Rust, and AddressSanitizer would halve
            // the inputs per second that the 2-core machines here can try.
            .args(["+nightly", "fuzz", "run", "--sanitizer", "none", target])
            .arg(corpus.join(target))
            .args([
                "--",
                &format!("-runs={}", args.runs),
                &format!("-rss_limit_mb={}", args.rss_limit_mb),
                "-timeout=20",
                "-max_len=65536",
                "-print_final_stats=1",
            ])
            .output()
            .context("cargo +nightly fuzz (install it with `cargo install cargo-fuzz`)")?;
        let seconds = started.elapsed().as_secs_f64();
        let log = String::from_utf8_lossy(&output.stderr).into_owned();
        std::fs::write(root.join(format!("fuzz/{target}.log")), &log)?;
        let runs = final_stat(&log, "stat::number_of_executed_units:").unwrap_or(0);
        let coverage = log
            .lines()
            .rev()
            .find(|l| l.contains(" cov: "))
            .map(|l| {
                l.split_whitespace()
                    .skip_while(|w| *w != "cov:")
                    .take(6)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        let crashed = (!output.status.success()).then(|| {
            log.lines()
                .find(|l| l.contains("panicked at") || l.contains("ERROR: libFuzzer"))
                .unwrap_or("exited with an error")
                .trim()
                .to_string()
        });
        eprintln!(
            "  {runs} inputs in {seconds:.0} s; {coverage}; {}",
            crashed.as_deref().unwrap_or("no crash")
        );
        outcomes.push(Outcome {
            target: target.clone(),
            runs,
            seconds,
            coverage,
            crashed,
        });
    }
    write_report(
        &root.join("docs/fuzzing.md"),
        &outcomes,
        args.beside.as_deref(),
    )?;
    if outcomes.iter().any(|o| o.crashed.is_some()) {
        bail!("a target crashed: see fuzz/<target>.log and fuzz/artifacts/");
    }
    Ok(())
}

/// What the targets found so far, each fixed with a regression test beside the fix.
const FOUND: &str = "
## Found and fixed

- `tokenizer`: tokenizers 0.22 panics (`Helper`) on a JSON syntax error or an invalid
  `\\u` escape inside the decoder section; `Tokenizer::load` now parses the JSON first
  (`crates/paragen-data/src/tokenizer.rs`).
- `checkpoint`: burn 0.21's record loader panics (`Invalid id.`) on a corrupt parameter
  id; loading runs under `paragen_data::guard::catch_quietly`, and the file is reported
  as corrupt (`crates/paragen-infer/src/run_dir.rs`).
- `run_file`: a `run.json` with another number of layers than its weights made burn's
  `load_record` assert; it is now a mismatch error naming the file.
- `run_file` (by review of what it reaches): shapes without bound (`d_model` of 2^40,
  zero layers, a CTC upsampling of 2^60) are refused by `TransformerConfig::validate` and
  `NatStudent::new` before anything is allocated.
";

fn final_stat(log: &str, key: &str) -> Option<u64> {
    log.lines()
        .find_map(|l| l.trim().strip_prefix(key))
        .and_then(|v| v.trim().parse().ok())
}

fn write_report(path: &Path, outcomes: &[Outcome], beside: Option<&str>) -> anyhow::Result<()> {
    let mut text = String::from(
        "# Fuzzing\n\nGenerated by `cargo xtask fuzz` (cargo-fuzz, libFuzzer, nightly Rust): each \
         target of `crates/paragen-fuzz` on this machine, starting from the valid seeds and the \
         corpus of earlier runs. A crash is a panic, an abort, a timeout (20 s) or more than the \
         memory limit. How to run them: `fuzz/README.md`.\n\n\
         | target | inputs | seconds | inputs/s | coverage at the end | result |\n\
         |---|---:|---:|---:|---|---|\n",
    );
    for o in outcomes {
        text.push_str(&format!(
            "| `{}` | {} | {:.0} | {:.0} | {} | {} |\n",
            o.target,
            o.runs,
            o.seconds,
            o.runs as f64 / o.seconds.max(1e-9),
            o.coverage,
            o.crashed.as_deref().unwrap_or("no crash"),
        ));
    }
    text.push_str(&format!(
        "\nMachine: {} CPU threads, `{}`; beside the runs: {}.\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        crate::bench::cpu_model(),
        beside.unwrap_or("nothing else")
    ));
    text.push_str(FOUND);
    std::fs::write(path, text).with_context(|| path.display().to_string())
}
