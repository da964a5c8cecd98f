//! `paragen release` and `paragen demo`: make and show the shipped release models.

use anyhow::Context;
use burn::tensor::backend::AutodiffBackend;
use paragen_backend::BackendTask;
use paragen_data::{PreparedData, Split};
use paragen_infer::release::{release, score_releases};

use crate::args::{DemoArgs, PrepareArgs, ReleaseArgs, defaults};

pub struct Release(pub ReleaseArgs);

impl BackendTask for Release {
    type Output = anyhow::Result<()>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        let args = self.0;
        let run = paragen_infer::RunDir::new(&args.model);
        let config: paragen_infer::RunConfig = run.load_config()?;
        let data = PreparedData::new(args.data.clone().unwrap_or(config.data_dir));
        let test = data.pairs(Split::Test)?;
        let info = release::<B::InnerBackend>(
            &args.model,
            &args.out,
            &test,
            &paragen_infer::timing::machine_description(),
            args.force,
            &device,
        )?;
        outln!(
            "released {} as {} ({:.1} MB): {}",
            args.model.display(),
            args.out.display(),
            info.file_bytes as f64 / 1e6,
            info.test
                .iter()
                .map(|t| format!("{} BLEU {:.2}", t.decoding, t.bleu))
                .collect::<Vec<_>>()
                .join(", ")
        )?;
        Ok(())
    }
}

pub struct Demo {
    pub args: DemoArgs,
    pub threads: Option<usize>,
}

impl BackendTask for Demo {
    type Output = anyhow::Result<()>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        let args = self.args;
        if !args.data.join("prepare.json").exists() {
            super::prepare::prepare(&PrepareArgs {
                corpus: args.corpus.clone(),
                out: args.data.clone(),
                ..defaults()
            })?;
        }
        let mut test = PreparedData::new(&args.data).pairs(Split::Test)?;
        if let Some(limit) = args.limit {
            test.truncate(limit);
        }
        let scored = score_releases::<B::InnerBackend>(&args.models, &test, &device)
            .with_context(|| format!("scoring the models in {}", args.models.display()))?;
        if scored.is_empty() {
            anyhow::bail!(
                "no release models in {}; train one (`paragen pipeline`) or check out the repository's models/",
                args.models.display()
            );
        }
        outln!(
            "{} test sentences ({}), English to French, batch 64, {} CPU threads\n",
            test.len(),
            args.data.display(),
            super::threads_in_use(self.threads)
        )?;
        outln!(
            "{:<14} {:<10} {:<16} {:>7} {:>7} {:>9} {:>8}",
            "model",
            "kind",
            "decoding",
            "BLEU",
            "chrF",
            "ms/sent",
            "params"
        )?;
        for model in &scored {
            for r in &model.reports {
                outln!(
                    "{:<14} {:<10} {:<16} {:>7.2} {:>7.2} {:>9.2} {:>7.2}M",
                    model.name,
                    model.kind,
                    r.decoding,
                    r.bleu,
                    r.chrf,
                    1000.0 * r.seconds / r.sentences.max(1) as f64,
                    model.params as f64 / 1e6
                )?;
            }
        }
        for (i, pair) in test.iter().enumerate().take(args.show) {
            outln!("\n  source:    {}\n  reference: {}", pair.src, pair.tgt)?;
            for model in &scored {
                if let Some(r) = model.reports.first() {
                    outln!("  {:<10} {}", format!("{}:", model.name), r.hypotheses[i])?;
                }
            }
        }
        Ok(())
    }
}
