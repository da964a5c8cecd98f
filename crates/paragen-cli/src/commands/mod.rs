//! One module per subcommand: each turns its arguments into library calls and prints
//! the results. The domain logic (presets, student recipes, decoding checks, profiles)
//! lives in the libraries, where it is tested.

mod distill;
mod eval;
mod pipeline;
mod prepare;
mod profile;
mod prune;
mod quantize;
mod release;
mod serve;
mod shortlist;
mod train;
mod translate;
mod tune;

use paragen_backend::{DeviceSpec, run_on, set_cpu_threads};

use crate::args::{Cli, Command};

/// The CPU threads a command runs on: `--threads`, else one per core.
fn threads_in_use(threads: Option<usize>) -> usize {
    threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    let spec = DeviceSpec::parse(&cli.global.backend, cli.global.device)?;
    if let Some(threads) = cli.global.threads {
        set_cpu_threads(threads);
    }
    match cli.command {
        Command::Prepare(args) => prepare::prepare(&args),
        Command::TrainTeacher(args) => run_on(spec, train::TrainTeacher(args))?,
        Command::Distill(args) => run_on(spec, distill::Distill(args))?,
        Command::TrainStudent(args) => run_on(spec, train::TrainStudent(args))?,
        Command::Translate(args) => run_on(spec, translate::Translate(args))?,
        Command::Eval(args) => run_on(spec, eval::Eval(args))?,
        Command::Tune(args) => run_on(spec, tune::Tune(args))?,
        Command::Shortlist(args) => shortlist::shortlist(&args),
        Command::Quantize(args) => run_on(spec, quantize::Quantize(args))?,
        Command::Prune(args) => run_on(spec, prune::Prune(args))?,
        Command::Compress(args) => run_on(spec, prune::Compress(args))?,
        Command::Pipeline(args) => pipeline::pipeline(spec, &args),
        Command::Demo(args) => run_on(
            spec,
            release::Demo {
                args,
                threads: cli.global.threads,
            },
        )?,
        Command::Release(args) => run_on(spec, release::Release(args))?,
        Command::Serve(args) => run_on(
            spec,
            serve::Serve {
                args,
                spec,
                threads: cli.global.threads,
            },
        )?,
        Command::Profile(args) => run_on(
            spec,
            profile::Profile {
                args,
                spec,
                threads: cli.global.threads,
            },
        )?,
    }
}
