//! `paragen shortlist`: learn a NAT student's lexical shortlist from its training pairs
//! and write a copy of the run that decodes onto it.

use paragen_compress::shortlist_run;
use paragen_infer::RunDir;

use crate::args::ShortlistArgs;

pub fn shortlist(args: &ShortlistArgs) -> anyhow::Result<()> {
    let (run, report) = shortlist_run(
        &RunDir::new(&args.model),
        &args.out,
        args.data.as_deref(),
        args.config()?,
    )?;
    run.append_history(&std::env::args().collect::<Vec<_>>())?;
    outln!(
        "learned from {} training pairs: {} tokens always allowed, up to {} per source \
         token; a valid sentence allows {:.0} of {} tokens on average ({:.1}%)",
        report.training_pairs,
        report.always_allowed,
        args.per_source,
        report.mean_allowed,
        report.vocab_size,
        100.0 * report.mean_allowed / report.vocab_size as f64
    )?;
    outln!(
        "wrote {}: `paragen eval --model {}` scores it",
        run.root().display(),
        run.root().display()
    )
}
