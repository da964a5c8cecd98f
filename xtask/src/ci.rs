//! `cargo xtask ci`: the checks of `.ci/run`, cheapest first, so a developer can run CI
//! locally with one command.

use std::process::Command;

use anyhow::{Context, ensure};

#[derive(clap::Args)]
pub struct CiArgs {
    /// Skip `cargo check` of the wgpu and cuda features (they take minutes to compile).
    #[arg(long)]
    skip_features: bool,
}

fn cargo(args: &[&str]) -> anyhow::Result<()> {
    eprintln!("$ cargo {}", args.join(" "));
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .current_dir(crate::workspace_root())
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    ensure!(status.success(), "cargo {} failed", args.join(" "));
    Ok(())
}

pub fn run(args: CiArgs) -> anyhow::Result<()> {
    cargo(&["fmt", "--all", "--", "--check"])?;
    crate::tidy::run()?;
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    cargo(&["nextest", "run", "--workspace", "--no-fail-fast"])?;
    if !args.skip_features {
        // One check of both features: burn and cubecl are checked once, not twice.
        cargo(&["check", "-p", "paragen-cli", "--features", "wgpu,cuda"])?;
    }
    Ok(())
}
