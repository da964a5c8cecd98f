//! Structured pruning with recovery: remove the least important attention heads,
//! feed-forward neurons and chosen layers of a trained model, physically (smaller
//! matrices, less work per token), then fine-tune what is left.
//!
//! - Importance (Michel et al. 2019, "Are Sixteen Heads Really Better than One?"): for
//!   every head and neuron, `|dL/dgate|` summed over small batches of the valid split,
//!   where a gate scales the unit's output and the gradient is
//!   `sum W * dL/dW` over the weights the unit feeds. Scores are normalised per layer
//!   (by their L2 norm) and ranked across the whole model, so a layer that matters more
//!   keeps more; every attention keeps at least one head and every feed-forward block at
//!   least one neuron.
//! - Recovery: the pruned run trains on the source's data. An AR model learns with
//!   word-level KD from the unpruned model (soft targets at temperature 1 mixed with
//!   cross-entropy); a NAT with its own recipe (glancing, on the teacher-distilled corpus
//!   it was trained on: sequence-level KD).

use std::path::{Path, PathBuf};
use std::str::FromStr;

use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use paragen_data::batch::{Example, TokenBudgetBatcher};
use paragen_data::{PreparedData, Split};
use paragen_infer::progress::Progress;
use paragen_infer::{CheckpointError, Model, PRUNE_FILE, RunConfig, RunDir, write_pruned_run};
use paragen_models::ModelError;
use paragen_models::prune::{LayerPlan, LayerUnits, ModelUnits, Prune, PrunePlan, gate_gradients};
use paragen_train::objective::{Glancing, Objective, OwnLoss, SeqModel};
use paragen_train::trainer::TrainData;
use paragen_train::{TrainError, TrainRunConfig, TrainSummary};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::distill::WordKd;

/// Padded tokens per batch of the importance pass: small batches, so that the absolute
/// values summed are close to per-sentence ones (signs cancel inside a batch).
const IMPORTANCE_BATCH_TOKENS: usize = 512;

#[derive(Debug, Error)]
pub enum PruneError {
    #[error("--{flag} {value} is outside [0, 1): it is the share of {what} to remove")]
    Ratio {
        flag: &'static str,
        value: f64,
        what: &'static str,
    },
    #[error(
        "cannot remove {asked} of {total} {what} and keep one in every {per}: at most {most} \
         can go; ask for less"
    )]
    TooMany {
        asked: usize,
        total: usize,
        most: usize,
        what: &'static str,
        per: &'static str,
    },
    #[error("--drop-layers `{text}`: {reason}")]
    Layer { text: String, reason: String },
    #[error("{run} is quantized ({bits} bits): prune its float source, then quantize")]
    Quantized { run: String, bits: u8 },
    #[error("{0} has no valid pairs to measure importance on")]
    NoValidData(String),
    #[error("{0}")]
    Options(String),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// Which stack a layer belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stack {
    Encoder,
    Decoder,
}

/// A layer to drop, written `encoder.N` or `decoder.N` (counted from 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRef {
    pub stack: Stack,
    pub index: usize,
}

impl FromStr for LayerRef {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let (stack, index) = text
            .trim()
            .split_once('.')
            .ok_or_else(|| format!("`{text}` is not `encoder.N` or `decoder.N`"))?;
        let stack = match stack {
            "encoder" => Stack::Encoder,
            "decoder" => Stack::Decoder,
            _ => return Err(format!("`{stack}` is not `encoder` or `decoder`")),
        };
        let index = index
            .parse()
            .map_err(|_| format!("`{index}` is not a layer number"))?;
        Ok(Self { stack, index })
    }
}

impl std::fmt::Display for LayerRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let stack = match self.stack {
            Stack::Encoder => "encoder",
            Stack::Decoder => "decoder",
        };
        write!(f, "{stack}.{}", self.index)
    }
}

/// How much to prune.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PruneSpec {
    /// Share of all attention heads (of the layers that stay) to remove, in [0, 1).
    pub heads: f64,
    /// Share of all feed-forward neurons (of the layers that stay) to remove, in [0, 1).
    pub ffn: f64,
    /// Whole layers to remove.
    pub drop_layers: Vec<LayerRef>,
}

impl PruneSpec {
    fn check(&self) -> Result<(), PruneError> {
        for (flag, value, what) in [
            ("heads", self.heads, "attention heads"),
            ("ffn", self.ffn, "feed-forward neurons"),
        ] {
            if !(0.0..1.0).contains(&value) {
                return Err(PruneError::Ratio { flag, value, what });
            }
        }
        Ok(())
    }
}

/// Counts before and after pruning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BeforeAfter {
    pub before: usize,
    pub after: usize,
}

/// What a pruning did, saved as [`PRUNE_FILE`] in the pruned run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PruneRecord {
    /// The unpruned run (absolute), the word-level KD teacher of an AR model's recovery.
    pub source: PathBuf,
    pub spec: PruneSpec,
    pub heads: BeforeAfter,
    pub neurons: BeforeAfter,
    pub layers: BeforeAfter,
    pub parameters: BeforeAfter,
    /// Valid sentences the importance was measured on.
    pub importance_sentences: usize,
}

/// `|dL/dgate|` of every head and neuron, summed over small batches of `examples`.
pub fn unit_importance<B, M>(model: &M, examples: &[Example]) -> ModelUnits<f32>
where
    B: AutodiffBackend,
    M: Prune<B> + SeqModel<B>,
{
    let batches = TokenBudgetBatcher {
        max_tokens: IMPORTANCE_BATCH_TOKENS,
        seed: 0,
    }
    .batches(examples, 0);
    let mut rng = StdRng::seed_from_u64(0);
    let mut total = ModelUnits::default();
    let mut progress = Progress::new("importance", batches.len() as u64, "batches");
    for batch in batches {
        let refs: Vec<&Example> = batch.iter().map(|&i| &examples[i]).collect();
        let grads = model.loss(&refs, 0.0, &mut rng).backward();
        total.add_abs(&gate_gradients(model, &grads));
        progress.advance(1, String::new);
    }
    progress.finish();
    total
}

/// Of every group of scores, the indices to keep when the `remove` lowest scores of all
/// groups together go, each group scaled by its L2 norm first and keeping at least one.
fn keep_best(
    groups: &[&[f32]],
    remove: usize,
    what: &'static str,
    per: &'static str,
) -> Result<Vec<Vec<usize>>, PruneError> {
    let total: usize = groups.iter().map(|g| g.len()).sum();
    let most = total - groups.len();
    if remove > most {
        return Err(PruneError::TooMany {
            asked: remove,
            total,
            most,
            what,
            per,
        });
    }
    let mut ranked: Vec<(f32, usize, usize)> = Vec::with_capacity(total);
    for (g, scores) in groups.iter().enumerate() {
        let norm = scores.iter().map(|s| s * s).sum::<f32>().sqrt();
        let norm = if norm > 0.0 { norm } else { 1.0 };
        ranked.extend(scores.iter().enumerate().map(|(u, &s)| (s / norm, g, u)));
    }
    ranked.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut left: Vec<usize> = groups.iter().map(|g| g.len()).collect();
    let mut removed = vec![Vec::new(); groups.len()];
    let mut to_go = remove;
    for (_, g, u) in ranked {
        if to_go == 0 {
            break;
        }
        if left[g] > 1 {
            left[g] -= 1;
            removed[g].push(u);
            to_go -= 1;
        }
    }
    Ok(groups
        .iter()
        .zip(removed)
        .map(|(scores, gone)| (0..scores.len()).filter(|u| !gone.contains(u)).collect())
        .collect())
}

/// Units to remove: `ratio` of `total`, rounded up (so at least the share asked).
fn share(ratio: f64, total: usize) -> usize {
    ((ratio * total as f64) - 1e-9).ceil().max(0.0) as usize
}

/// The plan that removes what `spec` asks of a model with these importance `scores`.
pub fn plan(scores: &ModelUnits<f32>, spec: &PruneSpec) -> Result<PrunePlan, PruneError> {
    spec.check()?;
    let layer_counts = [
        (Stack::Encoder, scores.encoder.len()),
        (Stack::Decoder, scores.decoder.len()),
    ];
    for layer in &spec.drop_layers {
        let count = layer_counts
            .iter()
            .find(|(stack, _)| *stack == layer.stack)
            .map_or(0, |c| c.1);
        if layer.index >= count {
            return Err(PruneError::Layer {
                text: layer.to_string(),
                reason: format!("the model has {count} layers in that stack"),
            });
        }
    }
    let stays = |stack, index| !spec.drop_layers.contains(&LayerRef { stack, index });
    let kept: Vec<(Stack, usize, &LayerUnits<f32>)> = scores
        .encoder
        .iter()
        .enumerate()
        .map(|(i, l)| (Stack::Encoder, i, l))
        .chain(
            scores
                .decoder
                .iter()
                .enumerate()
                .map(|(i, l)| (Stack::Decoder, i, l)),
        )
        .filter(|(stack, i, _)| stays(*stack, *i))
        .collect();
    for stack in [Stack::Encoder, Stack::Decoder] {
        if !kept.iter().any(|(s, _, _)| *s == stack) {
            return Err(PruneError::Layer {
                text: spec
                    .drop_layers
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
                reason: format!("it removes every {stack:?} layer; keep at least one")
                    .to_lowercase(),
            });
        }
    }
    // One group per attention (a decoder layer has two) and per feed-forward block.
    let head_groups: Vec<&[f32]> = kept
        .iter()
        .flat_map(|(_, _, l)| [l.self_heads.as_slice(), l.cross_heads.as_slice()])
        .filter(|g| !g.is_empty())
        .collect();
    let neuron_groups: Vec<&[f32]> = kept.iter().map(|(_, _, l)| l.neurons.as_slice()).collect();
    let total_heads = head_groups.iter().map(|g| g.len()).sum();
    let total_neurons = neuron_groups.iter().map(|g| g.len()).sum();
    let mut heads = keep_best(
        &head_groups,
        share(spec.heads, total_heads),
        "attention heads",
        "attention",
    )?
    .into_iter();
    let mut neurons = keep_best(
        &neuron_groups,
        share(spec.ffn, total_neurons),
        "feed-forward neurons",
        "feed-forward block",
    )?
    .into_iter();
    let mut plan = PrunePlan::default();
    for (stack, index, layer) in [Stack::Encoder, Stack::Decoder].into_iter().flat_map(|s| {
        let layers = match s {
            Stack::Encoder => &scores.encoder,
            Stack::Decoder => &scores.decoder,
        };
        layers.iter().enumerate().map(move |(i, l)| (s, i, l))
    }) {
        let entry: LayerPlan = stays(stack, index).then(|| LayerUnits {
            self_heads: heads.next().expect("one group per attention"),
            cross_heads: if layer.cross_heads.is_empty() {
                Vec::new()
            } else {
                heads.next().expect("one group per attention")
            },
            neurons: neurons.next().expect("one group per feed-forward block"),
        });
        match stack {
            Stack::Encoder => plan.encoder.push(entry),
            Stack::Decoder => plan.decoder.push(entry),
        }
    }
    Ok(plan)
}

/// Heads, neurons and layers of a model.
fn unit_counts<B: Backend, M: Prune<B>>(model: &M) -> [usize; 3] {
    let config = model.transformer_config();
    let encoder = config.encoder_widths();
    let decoder = config.decoder_widths();
    [
        encoder.iter().map(|w| w.heads).sum::<usize>()
            + decoder
                .iter()
                .map(|w| w.self_heads + w.cross_heads)
                .sum::<usize>(),
        encoder.iter().map(|w| w.d_ff).sum::<usize>()
            + decoder.iter().map(|w| w.d_ff).sum::<usize>(),
        encoder.len() + decoder.len(),
    ]
}

/// Measures importance on `examples`, prunes `model` as `spec` says (off the autodiff
/// graph), and counts what went.
fn prune_model<B, M>(
    model: M,
    spec: &PruneSpec,
    examples: &[Example],
) -> Result<(M::InnerModule, [BeforeAfter; 4]), PruneError>
where
    B: AutodiffBackend,
    M: AutodiffModule<B> + Prune<B> + SeqModel<B>,
    M::InnerModule: Prune<B::InnerBackend>,
{
    let scores = unit_importance(&model, examples);
    let plan = plan(&scores, spec)?;
    let model = model.valid();
    let before = unit_counts(&model);
    let params_before = model.num_params();
    let pruned = model.prune(&plan)?;
    let after = unit_counts(&pruned);
    let pair = |i: usize| BeforeAfter {
        before: before[i],
        after: after[i],
    };
    let params = BeforeAfter {
        before: params_before,
        after: pruned.num_params(),
    };
    Ok((pruned, [pair(0), pair(1), pair(2), params]))
}

/// Writes to `out` a pruned copy of the float run `from`: importance measured on the
/// valid split of `data` (default: the data the run trained on), `spec` applied. The copy
/// is a normal run (`eval`, `translate`, `quantize` read it); [`recover`] fine-tunes it.
pub fn prune_run<B: AutodiffBackend>(
    from: &RunDir,
    out: &Path,
    spec: &PruneSpec,
    data: Option<&Path>,
    device: &B::Device,
) -> Result<(RunDir, PruneRecord), PruneError> {
    spec.check()?;
    if let Some(q) = from.load_quantization()? {
        return Err(PruneError::Quantized {
            run: from.root().display().to_string(),
            bits: q.bits,
        });
    }
    let mut config: RunConfig = from.load_config()?;
    let data_dir = data.map_or_else(|| config.data_dir.clone(), Path::to_path_buf);
    let tokenizer = from.load_tokenizer()?;
    let valid = PreparedData::new(&data_dir)
        .pairs(Split::Valid)
        .map_err(CheckpointError::from)?;
    let examples = paragen_data::encode_pairs(&tokenizer, &valid).map_err(CheckpointError::from)?;
    if examples.is_empty() {
        return Err(PruneError::NoValidData(data_dir.display().to_string()));
    }
    // Without dropout: importance is a property of the model, not of a random mask.
    config.model.transformer_mut().dropout = 0.0;
    let model = Model::<B>::new(&config.model, device)?;
    let (model, counts) = match model {
        Model::Ar(m) => {
            let (m, counts) =
                prune_model(from.load_module("model.mpk", m, device)?, spec, &examples)?;
            (Model::Ar(m), counts)
        }
        Model::Nat(m) => {
            let (m, counts) =
                prune_model(from.load_module("model.mpk", m, device)?, spec, &examples)?;
            (Model::Nat(m), counts)
        }
    };
    let run = write_pruned_run::<B::InnerBackend>(from, out, &model)?;
    if data.is_some() {
        let mut config: RunConfig = run.load_config()?;
        config.data_dir = std::path::absolute(&data_dir).unwrap_or(data_dir);
        run.save_config(&config)?;
    }
    let [heads, neurons, layers, parameters] = counts;
    let record = PruneRecord {
        source: std::path::absolute(from.root()).unwrap_or_else(|_| from.root().to_path_buf()),
        spec: spec.clone(),
        heads,
        neurons,
        layers,
        parameters,
        importance_sentences: examples.len(),
    };
    run.write_json(PRUNE_FILE, &record)?;
    Ok((run, record))
}

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

/// Fine-tunes the pruned run `run` (made by [`prune_run`]) on its training data, keeping
/// the best model by valid BLEU in its `model.mpk`, as any training run does.
pub fn recover<B: AutodiffBackend>(
    run: &RunDir,
    options: &RecoverOptions,
    device: &B::Device,
) -> Result<TrainSummary, PruneError> {
    let _lock = run.lock()?;
    let record: PruneRecord = run.read_json(PRUNE_FILE)?;
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
            let objective: Box<dyn Objective<B, _>> = match glance {
                Some(ratio) => Box::new(Glancing {
                    ratio,
                    label_smoothing,
                }),
                None => Box::new(OwnLoss { label_smoothing }),
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
    };
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(heads: &[f32], cross: &[f32], neurons: &[f32]) -> LayerUnits<f32> {
        LayerUnits {
            self_heads: heads.to_vec(),
            cross_heads: cross.to_vec(),
            neurons: neurons.to_vec(),
        }
    }

    /// Encoder layer 1 matters ten times more than layer 0 in absolute terms; per
    /// layer, scores are compared after normalisation.
    fn scores() -> ModelUnits<f32> {
        ModelUnits {
            encoder: vec![
                layer(&[0.1, 0.4, 0.2, 0.3], &[], &[1.0, 0.0, 3.0, 2.0]),
                layer(&[1.0, 4.0, 2.0, 3.0], &[], &[10.0, 40.0, 30.0, 20.0]),
            ],
            decoder: vec![layer(
                &[0.0, 0.0, 0.0, 5.0],
                &[1.0, 1.0, 1.0, 1.0],
                &[5.0, 6.0, 7.0, 8.0],
            )],
        }
    }

    fn spec(heads: f64, ffn: f64, drop: &[&str]) -> PruneSpec {
        PruneSpec {
            heads,
            ffn,
            drop_layers: drop.iter().map(|d| d.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn the_least_important_units_go_first_after_normalising_each_layer() {
        // 16 heads: a quarter is 4. Normalised, the decoder self-attention's three zeros
        // are lowest; the encoder layers have the same relative scores, so their
        // weakest heads (index 0 each, 0.18 of the norm) tie and the first one goes.
        let plan = plan(&scores(), &spec(0.25, 0.25, &[])).unwrap();
        let kept = |l: &LayerPlan| l.as_ref().unwrap().clone();
        let decoder = kept(&plan.decoder[0]);
        assert_eq!(decoder.self_heads, vec![3]);
        assert_eq!(decoder.cross_heads, vec![0, 1, 2, 3]);
        let removed_encoder_heads: usize = plan
            .encoder
            .iter()
            .map(|l| 4 - kept(l).self_heads.len())
            .sum();
        assert_eq!(removed_encoder_heads, 1);
        // 12 neurons: 3 go, the lowest normalised scores: encoder 0 neuron 1 (0), then
        // encoder 0 neuron 0 and encoder 1 neuron 0 (both 0.18 of their norm).
        assert_eq!(kept(&plan.encoder[0]).neurons, vec![2, 3]);
        assert_eq!(kept(&plan.encoder[1]).neurons, vec![1, 2, 3]);
        assert_eq!(decoder.neurons, vec![0, 1, 2, 3]);
    }

    #[test]
    fn shares_round_up_and_every_attention_keeps_a_head() {
        // 4 attentions of 4 heads: at most 12 can go. ceil(0.75 * 16) = 12 leaves one
        // head in each; ceil(0.76 * 16) = 13 is refused.
        let plan = plan_ok(spec(0.75, 0.0, &[]));
        assert!(plan.encoder.iter().chain(&plan.decoder).all(|l| {
            let l = l.as_ref().unwrap();
            l.self_heads.len() == 1 && l.cross_heads.len() <= 1
        }));
        let err = plan_err(spec(0.76, 0.0, &[]));
        assert!(
            err.contains("remove 13 of 16") && err.contains("at most 12"),
            "{err}"
        );
    }

    fn plan_ok(spec: PruneSpec) -> PrunePlan {
        plan(&scores(), &spec).unwrap()
    }

    fn plan_err(spec: PruneSpec) -> String {
        plan(&scores(), &spec).unwrap_err().to_string()
    }

    #[test]
    fn dropped_layers_leave_the_plan_and_the_shares_count_what_stays() {
        let plan = plan_ok(spec(0.5, 0.0, &["encoder.1"]));
        assert!(plan.encoder[1].is_none());
        // 12 heads stay in the layers kept; half go.
        let heads: usize = [&plan.encoder[0], &plan.decoder[0]]
            .iter()
            .map(|l| {
                let l = l.as_ref().unwrap();
                l.self_heads.len() + l.cross_heads.len()
            })
            .sum();
        assert_eq!(heads, 6);
    }

    #[test]
    fn bad_requests_name_the_value() {
        for (spec, message) in [
            (spec(1.0, 0.0, &[]), "--heads 1 is outside [0, 1)"),
            (spec(0.0, -0.1, &[]), "--ffn -0.1 is outside [0, 1)"),
            (spec(0.0, 0.0, &["decoder.1"]), "has 1 layers"),
            (spec(0.0, 0.0, &["decoder.0"]), "every decoder layer"),
        ] {
            let err = plan_err(spec);
            assert!(err.contains(message), "{err}");
        }
        for text in ["decoder", "middle.0", "encoder.x"] {
            assert!(text.parse::<LayerRef>().is_err(), "{text}");
        }
        assert_eq!(
            "decoder.3".parse::<LayerRef>().unwrap().to_string(),
            "decoder.3"
        );
    }
}
