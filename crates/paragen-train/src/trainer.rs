//! The training loop shared by paragen's sequence models.
//!
//! One epoch = one pass over token-budget batches in a seeded order; each step computes
//! the loss, back-propagates, clips the global gradient norm, and takes an AdamW step at
//! the warmup + inverse-sqrt learning rate. After every epoch (and when a time budget
//! stops the run early) the model is validated (loss on the whole valid split, greedy
//! BLEU/chrF on its first sentences), the latest weights and optimizer state are saved
//! for `--resume`, and the best model by BLEU is kept as `model.mpk`.

use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use paragen_data::batch::Example;
use paragen_data::{TokenBudgetBatcher, Tokenizer};
use paragen_models::ModelError;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use paragen_infer::progress::Progress;
use paragen_infer::{
    Checkpoint, CheckpointError, RunDir, TrainerState, TranslateError, corpus_bleu, corpus_chrf,
};

use crate::clip::clip_global_norm;
use crate::objective::{Objective, SeqModel};
use crate::schedule::InverseSqrtSchedule;

/// Options of a training run (saved in `run.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Epochs to train in total (a resumed run continues up to this number).
    pub max_epochs: usize,
    /// Stop after this much training time in one invocation (validation and saving
    /// still happen). `None`: no limit.
    pub max_minutes: Option<f64>,
    /// Padded tokens per batch.
    pub max_tokens: usize,
    pub peak_lr: f64,
    pub warmup_steps: usize,
    /// AdamW's decoupled weight decay.
    pub weight_decay: f64,
    /// Global gradient-norm clipping threshold (`0`: off).
    pub clip_norm: f64,
    pub label_smoothing: f64,
    /// Training pairs with a side longer than this (in tokens) are dropped and counted.
    pub max_train_len: usize,
    /// Validation sentences decoded for BLEU/chrF after each epoch.
    pub valid_bleu_sentences: usize,
    pub seed: u64,
}

impl TrainConfig {
    /// Finishes in about 10 minutes of training on two CPU cores.
    pub fn quick() -> Self {
        Self {
            max_epochs: 100,
            max_minutes: Some(10.0),
            max_tokens: 2048,
            peak_lr: 2e-3,
            warmup_steps: 100,
            weight_decay: 0.01,
            clip_norm: 1.0,
            label_smoothing: 0.1,
            max_train_len: 64,
            valid_bleu_sentences: 200,
            seed: 1,
        }
    }

    /// Transformer-base training (for a GPU, or a long CPU run).
    pub fn base() -> Self {
        Self {
            max_epochs: 40,
            max_minutes: None,
            max_tokens: 8192,
            peak_lr: 7e-4,
            warmup_steps: 4000,
            max_train_len: 200,
            valid_bleu_sentences: 622,
            ..Self::quick()
        }
    }

    /// Seconds-long runs for tests.
    pub fn tiny() -> Self {
        Self {
            max_epochs: 2,
            max_minutes: None,
            max_tokens: 256,
            warmup_steps: 10,
            valid_bleu_sentences: 8,
            ..Self::quick()
        }
    }
}

/// Errors of a training run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("no training pair fits `max_train_len` = {0}")]
    NoTrainingData(usize),
    #[error("the loss became {0} at step {1}; lower the learning rate or check the data")]
    Diverged(f64, usize),
    #[error(transparent)]
    Translate(#[from] TranslateError),
    #[error("{0}")]
    Options(String),
}

/// Data of a run: encoded training pairs and the validation split with its references.
pub struct TrainData {
    pub train: Vec<Example>,
    pub valid: Vec<Example>,
    pub valid_references: Vec<String>,
}

impl TrainData {
    /// Encodes the train and valid splits of a prepared data directory.
    pub fn from_prepared(
        data: &paragen_data::PreparedData,
        tokenizer: &Tokenizer,
    ) -> Result<Self, TrainError> {
        use paragen_data::Split;
        let train = data.pairs(Split::Train).map_err(CheckpointError::from)?;
        let valid = data.pairs(Split::Valid).map_err(CheckpointError::from)?;
        Ok(Self {
            train: paragen_data::encode_pairs(tokenizer, &train).map_err(CheckpointError::from)?,
            valid: paragen_data::encode_pairs(tokenizer, &valid).map_err(CheckpointError::from)?,
            valid_references: valid.into_iter().map(|p| p.tgt).collect(),
        })
    }
}

/// Scores of one validation.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Validation {
    pub loss: f64,
    pub bleu: f64,
    pub chrf: f64,
    pub sentences: usize,
    /// CTC students: the blank penalty that gave `bleu`, the best of
    /// [`SeqModel::validation_blank_penalties`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blank_penalty: Option<f32>,
}

/// What a call to [`train`] did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainSummary {
    pub epochs: usize,
    pub steps: usize,
    pub best_bleu: Option<f64>,
    pub best_epoch: Option<usize>,
    pub last: Option<Validation>,
    pub train_seconds: f64,
    pub stopped_by_time: bool,
}

/// Mean loss over `examples` in batches, without label smoothing or gradients; any
/// sampling (CMLM masks) is seeded, so every validation draws the same.
fn mean_loss<B: Backend, M: SeqModel<B>>(
    model: &M,
    examples: &[Example],
    max_tokens: usize,
) -> f64 {
    let batches = TokenBudgetBatcher {
        max_tokens,
        seed: 0,
    }
    .batches(examples, 0);
    let mut rng = StdRng::seed_from_u64(0);
    let (mut total, mut tokens) = (0.0, 0usize);
    for batch in batches {
        let refs: Vec<&Example> = batch.iter().map(|&i| &examples[i]).collect();
        let weight: usize = refs.iter().map(|e| e.tgt.len() + 1).sum();
        let loss = model.loss(&refs, 0.0, &mut rng);
        total += loss.into_scalar().elem::<f64>() * weight as f64;
        tokens += weight;
    }
    total / tokens.max(1) as f64
}

/// Validation loss on all of `data.valid`, BLEU/chrF of the model's fast decoding
/// (greedy or one pass) on its first `sentences` pairs; a CTC student is scored at the
/// best of its blank penalties.
pub fn validate<B: Backend, M: SeqModel<B>>(
    model: &M,
    tokenizer: &Tokenizer,
    data: &TrainData,
    sentences: usize,
    max_tokens: usize,
) -> Result<Validation, TrainError> {
    let loss = mean_loss(model, &data.valid, max_tokens);
    let n = sentences.min(data.valid.len());
    let sources: Vec<&Example> = data.valid[..n].iter().collect();
    let lengths: Vec<usize> = sources.iter().map(|e| e.src.len()).collect();
    let references = &data.valid_references[..n];
    let penalties = model.validation_blank_penalties();
    let mut best: Option<Validation> = None;
    for &blank_penalty in penalties {
        let mut outputs = vec![Vec::new(); n];
        for batch in paragen_data::batch::inference_batches(&lengths, 64) {
            let batch_sources: Vec<Vec<u32>> =
                batch.iter().map(|&i| sources[i].src.clone()).collect();
            let decoded = model.validation_decode(&batch_sources, blank_penalty)?;
            for (&i, out) in batch.iter().zip(decoded) {
                outputs[i] = out;
            }
        }
        let hypotheses = outputs
            .iter()
            .map(|ids| tokenizer.decode(ids))
            .collect::<Result<Vec<_>, _>>()
            .map_err(TranslateError::from)?;
        let bleu = corpus_bleu(&hypotheses, references).score;
        if best.as_ref().is_none_or(|b| bleu > b.bleu) {
            best = Some(Validation {
                loss,
                bleu,
                chrf: corpus_chrf(&hypotheses, references),
                sentences: n,
                blank_penalty: (penalties.len() > 1).then_some(blank_penalty),
            });
        }
    }
    Ok(best.expect("every model validates with at least one blank penalty"))
}

/// Trains `model` as `config` says, from `resume_from`'s weights, optimizer and progress
/// when given (else from `model` as it is), committing a checkpoint set and a metrics
/// line into `run` after every epoch.
#[allow(clippy::too_many_arguments)]
pub fn train<B, M>(
    run: &RunDir,
    config: &TrainConfig,
    tokenizer: &Tokenizer,
    data: &TrainData,
    mut model: M,
    objective: &dyn Objective<B, M>,
    resume_from: Option<&Checkpoint>,
    device: &B::Device,
) -> Result<TrainSummary, TrainError>
where
    B: AutodiffBackend,
    M: AutodiffModule<B> + SeqModel<B>,
    M::InnerModule: SeqModel<B::InnerBackend>,
{
    let train: Vec<Example> = data
        .train
        .iter()
        .filter(|e| e.src.len().max(e.tgt.len()) < config.max_train_len)
        .cloned()
        .collect();
    if train.is_empty() {
        return Err(TrainError::NoTrainingData(config.max_train_len));
    }
    let dropped = data.train.len() - train.len();
    if dropped > 0 {
        tracing::info!(
            "dropped {dropped} of {} training pairs longer than {} tokens",
            data.train.len(),
            config.max_train_len
        );
    }

    let mut optimizer = AdamWConfig::new()
        .with_beta_2(0.98)
        .with_epsilon(1e-8)
        .with_weight_decay(config.weight_decay as f32)
        .init::<B, M>();
    let mut state = TrainerState::default();
    if let Some(checkpoint) = resume_from {
        state = checkpoint.state.clone();
        model = checkpoint.load_weights(model, device)?;
        optimizer = optimizer.load_record(checkpoint.load_optimizer::<B, _>(device)?);
        tracing::info!("resuming after epoch {} (step {})", state.epoch, state.step);
    }
    let schedule = InverseSqrtSchedule {
        peak: config.peak_lr,
        warmup_steps: config.warmup_steps,
    };
    let batcher = TokenBudgetBatcher {
        max_tokens: config.max_tokens,
        seed: config.seed,
    };
    let started = Instant::now();
    let seconds_before = state.train_seconds;
    let budget = config.max_minutes.map(|m| m * 60.0);
    let mut stopped_by_time = false;
    let mut last = None;

    while state.epoch < config.max_epochs && !stopped_by_time {
        let epoch = state.epoch + 1;
        let batches = batcher.batches(&train, epoch as u64);
        // Seeded per epoch (resume happens at epoch boundaries), so a resumed run draws
        // the same masks as an uninterrupted one.
        let mut rng = StdRng::seed_from_u64(config.seed.wrapping_mul(1_000_003) + epoch as u64);
        let epoch_started = Instant::now();
        let mut progress =
            Progress::new(&format!("epoch {epoch}"), batches.len() as u64, "batches");
        let (mut loss_sum, mut loss_tokens) = (0.0, 0usize);
        for batch in &batches {
            let refs: Vec<&Example> = batch.iter().map(|&i| &train[i]).collect();
            let tgt_tokens: usize = refs.iter().map(|e| e.tgt.len() + 1).sum();
            let loss = objective.loss(&model, &refs, &mut rng);
            let loss_value = loss.clone().into_scalar().elem::<f64>();
            if !loss_value.is_finite() {
                return Err(TrainError::Diverged(loss_value, state.step));
            }
            let mut grads = GradientsParams::from_grads(loss.backward(), &model);
            if config.clip_norm > 0.0 {
                clip_global_norm(&model, &mut grads, config.clip_norm);
            }
            state.step += 1;
            let lr = schedule.lr(state.step);
            model = optimizer.step(lr, model, grads);
            loss_sum += loss_value * tgt_tokens as f64;
            loss_tokens += tgt_tokens;
            let elapsed = started.elapsed().as_secs_f64();
            progress.advance(1, || {
                format!(
                    "loss {:.3} lr {lr:.2e} {:.0} tok/s",
                    loss_sum / loss_tokens as f64,
                    loss_tokens as f64 / epoch_started.elapsed().as_secs_f64().max(1e-9)
                )
            });
            if budget.is_some_and(|b| elapsed >= b) {
                stopped_by_time = true;
                break;
            }
        }
        progress.finish();
        state.train_seconds = seconds_before + started.elapsed().as_secs_f64();
        state.epoch = epoch;

        let valid = validate(
            &model.valid(),
            tokenizer,
            data,
            config.valid_bleu_sentences,
            config.max_tokens,
        )?;
        let improved = state.best_bleu.is_none_or(|b| valid.bleu > b);
        if improved {
            state.best_bleu = Some(valid.bleu);
            state.best_epoch = Some(epoch);
            // Before the set: a kill in between leaves a better model.mpk than the set
            // records, and the resumed epoch then writes it again.
            run.save_module::<B, _>("model.mpk", &model)?;
        }
        run.commit_checkpoint::<B, _, _>(&state, &model, optimizer.to_record())?;
        let train_loss = loss_sum / loss_tokens.max(1) as f64;
        let mut metrics = serde_json::json!({
            "epoch": epoch,
            "step": state.step,
            "lr": schedule.lr(state.step),
            "train_loss": train_loss,
            "valid_loss": valid.loss,
            "valid_bleu": valid.bleu,
            "valid_chrf": valid.chrf,
            "valid_bleu_sentences": valid.sentences,
            "train_seconds": state.train_seconds,
            "best": improved,
            "stopped_by_time": stopped_by_time,
        });
        if let Some(penalty) = valid.blank_penalty {
            metrics["valid_blank_penalty"] = penalty.into();
        }
        run.append_metrics(&metrics)?;
        tracing::info!(
            "epoch {epoch}: step {} train loss {train_loss:.3} valid loss {:.3} BLEU {:.2} chrF {:.2}{}{}",
            state.step,
            valid.loss,
            valid.bleu,
            valid.chrf,
            valid
                .blank_penalty
                .map(|p| format!(" (blank penalty {p})"))
                .unwrap_or_default(),
            if improved { " (best)" } else { "" }
        );
        last = Some(valid);
    }

    Ok(TrainSummary {
        epochs: state.epoch,
        steps: state.step,
        best_bleu: state.best_bleu,
        best_epoch: state.best_epoch,
        last,
        train_seconds: state.train_seconds,
        stopped_by_time,
    })
}
