//! `paragen distill`: decode the training split with the teacher (sequence-level KD).

use anyhow::bail;
use burn::prelude::Backend;
use burn::tensor::backend::AutodiffBackend;
use paragen_backend::BackendTask;
use paragen_compress::distill::{DistillOptions, default_output, distill_corpus};
use paragen_data::PreparedData;
use paragen_infer::{Decoding, RunDir};
use paragen_models::{BeamOptions, LengthLimit};

use crate::args::DistillArgs;

pub struct Distill(pub DistillArgs);

impl BackendTask for Distill {
    type Output = anyhow::Result<()>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        distill::<B::InnerBackend>(&self.0, &device)
    }
}

fn distill<B: Backend>(args: &DistillArgs, device: &B::Device) -> anyhow::Result<()> {
    if args.beam == 0 || args.batch_size == 0 {
        bail!("--beam and --batch-size must be at least 1");
    }
    let run = RunDir::new(&args.teacher);
    let (config, teacher) = run.load_transformer::<B>(device)?;
    let tokenizer = run.load_tokenizer()?;
    let data = PreparedData::new(args.data.clone().unwrap_or(config.data_dir));
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| default_output(&args.teacher));
    let decoding = if args.beam == 1 {
        Decoding::Greedy(LengthLimit::default())
    } else {
        Decoding::Beam(BeamOptions {
            beam_size: args.beam,
            ..Default::default()
        })
    };
    let report = distill_corpus(
        &teacher,
        &args.teacher.display().to_string(),
        &tokenizer,
        &data,
        &out,
        &DistillOptions {
            decoding,
            batch_size: args.batch_size,
            limit: args.limit,
            chunk_sentences: 1024,
        },
    )?;
    outln!(
        "distilled {} training pairs with {} ({:.1} min{}{}) into {}",
        report.sentences,
        report.decoding,
        report.seconds / 60.0,
        if report.resumed_from > 0 {
            format!(", resumed after {}", report.resumed_from)
        } else {
            String::new()
        },
        if report.kept_reference > 0 {
            format!(
                "; {} kept their reference (empty teacher output)",
                report.kept_reference
            )
        } else {
            String::new()
        },
        out.display()
    )?;
    Ok(())
}
