//! `paragen eval`: translate a split of the prepared data and print BLEU and chrF.

use burn::tensor::backend::AutodiffBackend;
use paragen_backend::BackendTask;
use paragen_data::{PreparedData, Split};
use paragen_infer::{EvalReport, evaluate};

use crate::args::EvalArgs;

pub struct Eval(pub EvalArgs);

impl BackendTask for Eval {
    type Output = anyhow::Result<()>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        let args = self.0;
        let (report, pairs) = evaluate_run::<B::InnerBackend>(&args, &device)?;
        print_eval(&args, &report, &pairs)
    }
}

fn evaluate_run<B: burn::prelude::Backend>(
    args: &EvalArgs,
    device: &B::Device,
) -> anyhow::Result<(EvalReport, Vec<paragen_data::Pair>)> {
    let loaded = super::translate::open::<B>(&args.model, &args.decode, device)?;
    let data = PreparedData::new(args.data.clone().unwrap_or(loaded.config.data_dir.clone()));
    let split = match args.split.as_str() {
        "train" => Split::Train,
        "valid" => Split::Valid,
        _ => Split::Test,
    };
    let mut pairs = data.pairs(split)?;
    if let Some(limit) = args.limit {
        pairs.truncate(limit);
    }
    let report = evaluate(
        &loaded.translator(),
        &loaded.tokenizer,
        &pairs,
        args.decode.batch_size,
        !args.json,
    )?;
    Ok((report, pairs))
}

fn print_eval(
    args: &EvalArgs,
    report: &EvalReport,
    pairs: &[paragen_data::Pair],
) -> anyhow::Result<()> {
    if args.json {
        let mut value = serde_json::to_value(report).expect("report serializes");
        value["model"] = serde_json::json!(args.model.display().to_string());
        value["split"] = serde_json::json!(args.split);
        return outln!("{value}");
    }
    outln!(
        "{} split: {} sentences, BLEU {:.2}, chrF {:.2} ({} decoding, batch {}, {:.1} s, {:.1} sentences/s)",
        args.split,
        report.sentences,
        report.bleu,
        report.chrf,
        report.decoding,
        report.batch_size,
        report.seconds,
        report.sentences_per_second
    )?;
    for (pair, hyp) in pairs.iter().zip(&report.hypotheses).take(args.show) {
        outln!(
            "\n  source:    {}\n  reference: {}\n  paragen:   {}",
            pair.src,
            pair.tgt,
            hyp
        )?;
    }
    Ok(())
}
