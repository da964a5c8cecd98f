//! Recovery: fine-tuning a pruned run on its source's data.

use burn::tensor::backend::AutodiffBackend;
use paragen_data::PreparedData;
use paragen_infer::{Model, PRUNE_FILE, RunDir};
use paragen_train::objective::{Objective, OwnLoss, nat_objective};
use paragen_train::trainer::TrainData;
use paragen_train::{TrainRunConfig, TrainSummary};

use super::{PruneError, PruneRecord};
use crate::distill::WordKd;

/// How a pruned run is fine-tuned.
#[derive(Clone, Debug, PartialEq)]
pub struct RecoverOptions {
    /// Training-time budget.
    pub minutes: f64,
    /// Peak learning rate (after a short warmup).
    pub lr: f64,
    pub warmup_steps: usize,
    /// AR models: weight of the word-level KD term against the unpruned model.
    pub kd_weight: f64,
    /// Continue an interrupted recovery from its last checkpoint.
    pub resume: bool,
}

/// Fine-tunes the pruned run `run` (made by [`super::prune_run`]) on its training data, keeping
/// the best model by valid BLEU in its `model.mpk`, as any training run does.
pub fn recover<B: AutodiffBackend>(
    run: &RunDir,
    options: &RecoverOptions,
    device: &B::Device,
) -> Result<TrainSummary, PruneError> {
    let _lock = run.lock()?;
    let record: PruneRecord = run.read_json(PRUNE_FILE)?;
    if record.spec.sparsity > 0.0 {
        return Err(PruneError::Options(format!(
            "{} was pruned with --sparsity: fine-tuning would fill its zeroed weights \
             again; recover a structured pruning first, then sparsify that",
            run.root().display()
        )));
    }
    let mut config: TrainRunConfig = run.load_config()?;
    let checkpoint = if options.resume {
        run.latest_checkpoint()?
    } else {
        if run.latest_checkpoint()?.is_some() {
            return Err(PruneError::Options(format!(
                "{} is already being fine-tuned; pass --resume to continue",
                run.root().display()
            )));
        }
        None
    };
    let train = &mut config.training.train;
    train.max_minutes = Some(options.minutes);
    train.peak_lr = options.lr;
    train.warmup_steps = options.warmup_steps;
    run.save_config(&config)?;
    let tokenizer = run.load_tokenizer()?;
    let data = TrainData::from_prepared(&PreparedData::new(&config.data_dir), &tokenizer)?;
    let label_smoothing = config.training.train.label_smoothing;
    let (_, model) = run.load_model::<B>(device)?;
    let summary = match model {
        Model::Ar(model) => {
            let objective: Box<dyn Objective<B, _>> = if options.kd_weight > 0.0 {
                let (_, teacher) = RunDir::new(&record.source).load_transformer::<B>(device)?;
                Box::new(WordKd::new(
                    teacher,
                    1.0,
                    options.kd_weight,
                    label_smoothing,
                ))
            } else {
                Box::new(OwnLoss { label_smoothing })
            };
            paragen_train::train(
                run,
                &config.training.train,
                &tokenizer,
                &data,
                model,
                objective.as_ref(),
                checkpoint.as_ref(),
                device,
            )?
        }
        Model::Nat(model) => {
            let glance = config
                .training
                .student
                .as_ref()
                .and_then(|s| s.glance_ratio);
            let objective = nat_objective(glance, label_smoothing);
            paragen_train::train(
                run,
                &config.training.train,
                &tokenizer,
                &data,
                model,
                objective.as_ref(),
                checkpoint.as_ref(),
                device,
            )?
        }
    };
    Ok(summary)
}
