//! The `paragen` command line: prepare data, train, translate and evaluate.
//!
//! Thin by design: it parses and validates arguments, picks the backend, and calls the
//! library crates; all domain logic lives in them. Only this crate (and xtask) prints
//! for people.

mod args;
mod commands;

use clap::Parser;

/// mimalloc, kept from returning freed tensor memory to the kernel: see
/// `paragen_backend::allocator` for the measurements.
#[global_allocator]
static ALLOCATOR: paragen_backend::allocator::MiMalloc = paragen_backend::allocator::MiMalloc;

fn main() -> std::process::ExitCode {
    paragen_backend::allocator::keep_freed_memory();
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
