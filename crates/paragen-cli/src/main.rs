//! The `paragen` command line: prepare data, train, translate and evaluate.
//!
//! Thin by design: it parses and validates arguments, picks the backend, and calls the
//! library crates; all domain logic lives in them. Only this crate (and xtask) prints
//! for people.

/// `println!` that returns an error instead of panicking when stdout fails (a full
/// disk, a closed pipe), for `?` in the commands.
macro_rules! outln {
    ($($arg:tt)*) => {
        crate::write_stdout_line(format_args!($($arg)*))
    };
}

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
        // Like other Unix tools, stop quietly when the reader of our output went away
        // (`paragen translate ... | head`).
        Err(err) if is_broken_pipe(&err) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::from(1)
        }
    }
}

/// Writes one line to stdout; see `outln!`.
fn write_stdout_line(args: std::fmt::Arguments) -> anyhow::Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_fmt(args)
        .and_then(|()| stdout.write_all(b"\n"))
        .and_then(|()| stdout.flush())
        .map_err(|e| anyhow::Error::new(e).context("cannot write the output to stdout"))
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
