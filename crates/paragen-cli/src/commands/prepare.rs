//! `paragen prepare`: split a corpus and train the tokenizer.

use anyhow::bail;
use paragen_data::{CorpusSource, MalformedLines, SplitConfig};

use crate::args::PrepareArgs;

pub fn prepare(args: &PrepareArgs) -> anyhow::Result<()> {
    let source = match (&args.src, &args.tgt) {
        (Some(src), Some(tgt)) => CorpusSource::Parallel {
            src: src.clone(),
            tgt: tgt.clone(),
        },
        _ => CorpusSource::Tsv(args.corpus.clone()),
    };
    let policy = if args.skip_malformed {
        MalformedLines::Skip
    } else {
        MalformedLines::Error
    };
    let split = SplitConfig {
        valid_per_mille: args.valid_per_mille,
        test_per_mille: args.test_per_mille,
    };
    if split.valid_per_mille + split.test_per_mille >= 1000 {
        bail!("--valid-per-mille plus --test-per-mille must leave room for training (< 1000)");
    }
    tracing::info!("preparing {:?} into {}", source, args.out.display());
    let report = paragen_data::prepare(&source, &args.out, args.vocab_size, split, policy)?;
    outln!(
        "prepared {}: {} train, {} valid, {} test pairs; vocabulary {}{}",
        args.out.display(),
        report.train_pairs,
        report.valid_pairs,
        report.test_pairs,
        report.vocab_size,
        if report.skipped_lines > 0 {
            format!("; {} malformed lines skipped", report.skipped_lines)
        } else {
            String::new()
        }
    )?;
    Ok(())
}
