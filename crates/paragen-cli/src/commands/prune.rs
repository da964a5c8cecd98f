//! `paragen prune` (a structurally pruned copy of a run, optionally fine-tuned) and
//! `paragen compress` (prune, recover, quantize and shortlist in one go).

use std::path::Path;

use burn::tensor::backend::AutodiffBackend;
use paragen_backend::BackendTask;
use paragen_compress::prune::BeforeAfter;
use paragen_compress::{
    PruneSpec, RecoverOptions, ShortlistConfig, prune_run, quantize_run, recover, shortlist_run,
};
use paragen_infer::{ModelKind, RunConfig, RunDir};

use crate::args::{CompressArgs, PruneArgs, PruneOptions};

/// Learning-rate warmup of a recovery: short, the weights are trained already.
const RECOVERY_WARMUP_STEPS: usize = 50;

pub struct Prune(pub PruneArgs);

impl BackendTask for Prune {
    type Output = anyhow::Result<()>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        let args = self.0;
        let run = prune_and_recover::<B>(args.model.as_deref(), &args.out, &args.how, &device)?;
        outln!(
            "wrote {}: `paragen eval --model {}` scores it{}",
            run.root().display(),
            run.root().display(),
            if args.how.recover_minutes > 0.0 || args.how.sparsity > 0.0 {
                ""
            } else {
                "; --recover-minutes fine-tunes it"
            }
        )
    }
}

/// Prunes `model` into `out` as `how` says (or, with `--resume`, opens `out`), then
/// fine-tunes it for `how.recover_minutes`.
fn prune_and_recover<B: AutodiffBackend>(
    model: Option<&Path>,
    out: &Path,
    how: &PruneOptions,
    device: &B::Device,
) -> anyhow::Result<RunDir> {
    if how.resume && how.recover_minutes == 0.0 {
        anyhow::bail!("--resume continues a recovery: give it --recover-minutes");
    }
    let run = match model {
        Some(model) if !how.resume => {
            let spec = PruneSpec {
                heads: how.heads,
                ffn: how.ffn,
                drop_layers: how.drop_layers.clone(),
                sparsity: how.sparsity,
            };
            let (run, record) =
                prune_run::<B>(&RunDir::new(model), out, &spec, how.data.as_deref(), device)?;
            run.append_history(&std::env::args().collect::<Vec<_>>())?;
            let line = |what: &str, c: BeforeAfter| format!("{what} {} -> {}", c.before, c.after);
            outln!(
                "pruned: {}, {}, {}, {}{}",
                line("heads", record.heads),
                line("feed-forward neurons", record.neurons),
                line("layers", record.layers),
                line("parameters", record.parameters),
                match record.importance_sentences {
                    0 => String::new(),
                    n => format!("; importance measured on {n} valid sentences"),
                }
            )?;
            if let Some(sparse) = record.sparse {
                outln!(
                    "zeroed {} of {} attention and feed-forward weights: {:.1} MB as CSR \
                     against {:.1} MB dense (model.mpk stays dense, and no faster)",
                    sparse.zeros,
                    sparse.weights,
                    sparse.csr_bytes as f64 / 1e6,
                    sparse.dense_bytes as f64 / 1e6
                )?;
            }
            run
        }
        _ => {
            let run = RunDir::new(out);
            run.append_history(&std::env::args().collect::<Vec<_>>())?;
            run
        }
    };
    if how.recover_minutes > 0.0 {
        let options = RecoverOptions {
            minutes: how.recover_minutes,
            lr: how.lr,
            warmup_steps: RECOVERY_WARMUP_STEPS,
            kd_weight: how.kd_weight,
            resume: how.resume,
        };
        let summary = recover::<B>(&run, &options, device)?;
        outln!(
            "fine-tuned {} steps in {:.1} min; best valid BLEU {:.2} (epoch {})",
            summary.steps,
            summary.train_seconds / 60.0,
            summary.best_bleu.unwrap_or(0.0),
            summary.best_epoch.unwrap_or(0),
        )?;
    }
    Ok(run)
}

pub struct Compress(pub CompressArgs);

impl BackendTask for Compress {
    type Output = anyhow::Result<()>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        let args = self.0;
        std::fs::create_dir_all(&args.out)?;
        let mut name = String::new();
        let mut current = match &args.model {
            Some(model) if !args.prune.resume && !args.prune.prunes() => RunDir::new(model),
            _ => {
                name.push_str("pruned");
                prune_and_recover::<B>(
                    args.model.as_deref(),
                    &args.out.join(&name),
                    &args.prune,
                    &device,
                )?
            }
        };
        // The later steps are cheap and depend on the weights: made afresh every time.
        let mut step = |suffix: &str| -> anyhow::Result<std::path::PathBuf> {
            name = if name.is_empty() {
                suffix.to_string()
            } else {
                format!("{name}-{suffix}")
            };
            let dir = args.out.join(&name);
            if dir.exists() {
                std::fs::remove_dir_all(&dir)?;
            }
            Ok(dir)
        };
        if let Some(bits) = args.bits.0 {
            let out = step(&format!("int{bits}"))?;
            let (run, report) = quantize_run::<B::InnerBackend>(&current, &out, bits, &device)?;
            outln!(
                "int{bits} weights: model.mpk {:.1} MB (float: {:.1} MB)",
                report.quantized_bytes as f64 / 1e6,
                report.source_bytes as f64 / 1e6
            )?;
            current = run;
        }
        let config: RunConfig = current.load_config()?;
        if !args.no_shortlist && matches!(config.kind, ModelKind::Nat | ModelKind::NatCtc) {
            let out = step("shortlist")?;
            let (run, report) = shortlist_run(
                &current,
                &out,
                args.prune.data.as_deref(),
                ShortlistConfig::default(),
            )?;
            outln!(
                "shortlist: a valid sentence allows {:.0} of {} tokens on average",
                report.mean_allowed,
                report.vocab_size
            )?;
            current = run;
        }
        if current.root() == args.model.as_deref().unwrap_or(&args.out) {
            anyhow::bail!(
                "nothing to do: ask for pruning (--heads, --ffn, --drop-layers), --bits 8|4, \
                 or a shortlist (NAT students)"
            );
        }
        current.append_history(&std::env::args().collect::<Vec<_>>())?;
        outln!(
            "the compressed model is {}: `paragen eval --model {}` scores it",
            current.root().display(),
            current.root().display()
        )
    }
}
