//! The `paragen` command line: prepare data, train, translate and evaluate.
//!
//! Thin by design: it parses and validates arguments, picks the backend, and calls the
//! library crates; all domain logic lives in them. Only this crate (and xtask) prints
//! for people.

mod args;
mod commands;

use clap::Parser;

/// Tensor buffers of a few megabytes are allocated and freed at every step; glibc's
/// malloc returns each one to the kernel (mmap/munmap + page faults), which made a
/// training step 1.5x slower than with mimalloc, which keeps and reuses them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = args::Cli::parse();
    let filter = if cli.global.quiet {
        "warn"
    } else if cli.global.verbose {
        "debug"
    } else {
        "info"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PARAGEN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter)),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    match commands::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::from(1)
        }
    }
}
