//! `paragen prune`: a structurally pruned copy of a run, optionally fine-tuned.

use burn::tensor::backend::AutodiffBackend;
use paragen_backend::BackendTask;
use paragen_compress::{PruneSpec, RecoverOptions, prune_run, recover};
use paragen_infer::RunDir;

use crate::args::PruneArgs;

/// Learning-rate warmup of a recovery: short, the weights are trained already.
const RECOVERY_WARMUP_STEPS: usize = 50;

pub struct Prune(pub PruneArgs);

impl BackendTask for Prune {
    type Output = anyhow::Result<()>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        let args = self.0;
        if args.resume && args.recover_minutes == 0.0 {
            anyhow::bail!("--resume continues a recovery: give it --recover-minutes");
        }
        let run = match &args.model {
            Some(model) if !args.resume => {
                let spec = PruneSpec {
                    heads: args.heads,
                    ffn: args.ffn,
                    drop_layers: args.drop_layers.clone(),
                };
                let (run, record) = prune_run::<B>(
                    &RunDir::new(model),
                    &args.out,
                    &spec,
                    args.data.as_deref(),
                    &device,
                )?;
                run.append_history(&std::env::args().collect::<Vec<_>>())?;
                let line = |what: &str, c: paragen_compress::prune::BeforeAfter| {
                    format!("{what} {} -> {}", c.before, c.after)
                };
                outln!(
                    "pruned by importance on {} valid sentences: {}, {}, {}, {}",
                    record.importance_sentences,
                    line("heads", record.heads),
                    line("feed-forward neurons", record.neurons),
                    line("layers", record.layers),
                    line("parameters", record.parameters),
                )?;
                run
            }
            _ => {
                let run = RunDir::new(&args.out);
                run.append_history(&std::env::args().collect::<Vec<_>>())?;
                run
            }
        };
        if args.recover_minutes > 0.0 {
            let options = RecoverOptions {
                minutes: args.recover_minutes,
                lr: args.lr,
                warmup_steps: RECOVERY_WARMUP_STEPS,
                kd_weight: args.kd_weight,
                resume: args.resume,
            };
            let summary = recover::<B>(&run, &options, &device)?;
            outln!(
                "fine-tuned {} steps in {:.1} min; best valid BLEU {:.2} (epoch {})",
                summary.steps,
                summary.train_seconds / 60.0,
                summary.best_bleu.unwrap_or(0.0),
                summary.best_epoch.unwrap_or(0),
            )?;
        }
        outln!(
            "wrote {}: `paragen eval --model {}` scores it{}",
            run.root().display(),
            run.root().display(),
            if args.recover_minutes > 0.0 {
                ""
            } else {
                "; --recover-minutes fine-tunes it"
            }
        )
    }
}
