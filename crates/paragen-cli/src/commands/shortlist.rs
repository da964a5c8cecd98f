//! `paragen shortlist`: learn a NAT student's lexical shortlist from its training pairs
//! and write a copy of the run that decodes onto it.

use anyhow::bail;
use paragen_compress::{ShortlistConfig, learn_shortlist};
use paragen_data::{PreparedData, Split, encode_pairs};
use paragen_infer::{ModelKind, RunConfig, RunDir, write_shortlist_run};

use crate::args::ShortlistArgs;

pub fn shortlist(args: &ShortlistArgs) -> anyhow::Result<()> {
    let from = RunDir::new(&args.model);
    let config: RunConfig = from.load_config()?;
    if !matches!(config.kind, ModelKind::Nat | ModelKind::NatCtc) {
        bail!(
            "{} holds a {} model; shortlists decode NAT students (nat, nat-ctc) only so far",
            args.model.display(),
            config.kind.name()
        );
    }
    let tokenizer = from.load_tokenizer()?;
    let data = PreparedData::new(args.data.clone().unwrap_or(config.data_dir.clone()));
    let train = encode_pairs(&tokenizer, &data.pairs(Split::Train)?)?;
    let vocab = config.transformer().vocab_size;
    let shortlist = learn_shortlist(
        &train,
        vocab,
        ShortlistConfig {
            frequent: args.frequent,
            per_source: args.per_source,
            min_cooccurrence: u32::try_from(args.min_cooccurrence)?,
        },
    );
    let run = write_shortlist_run(&from, &args.out, &shortlist)?;
    run.append_history(&std::env::args().collect::<Vec<_>>())?;
    let valid = encode_pairs(&tokenizer, &data.pairs(Split::Valid)?)?;
    let sources: Vec<&[u32]> = valid.iter().map(|e| e.src.as_slice()).collect();
    let mean = shortlist.mean_allowed(&sources, tokenizer.special());
    outln!(
        "learned from {} training pairs: {} tokens always allowed, up to {} per source \
         token; a valid sentence allows {:.0} of {} tokens on average ({:.1}%)",
        train.len(),
        shortlist.always.len(),
        args.per_source,
        mean,
        vocab,
        100.0 * mean / vocab as f64
    )?;
    outln!(
        "wrote {}: `paragen eval --model {}` scores it",
        run.root().display(),
        run.root().display()
    )
}
