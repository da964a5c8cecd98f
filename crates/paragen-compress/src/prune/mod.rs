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
use paragen_models::dense::Quantize;
use paragen_models::prune::{ModelUnits, Prune, gate_gradients};
use paragen_train::TrainError;
use paragen_train::objective::SeqModel;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use thiserror::Error;

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
    /// Unstructured: share of every attention and feed-forward weight matrix zeroed by
    /// magnitude, in [0, 1), after the structured pruning. Smaller in a sparse format,
    /// no faster on dense kernels.
    #[serde(default)]
    pub sparsity: f64,
}

impl PruneSpec {
    /// Whether heads, neurons or layers go (else only `sparsity` applies).
    pub fn is_structured(&self) -> bool {
        self.heads > 0.0 || self.ffn > 0.0 || !self.drop_layers.is_empty()
    }

    fn check(&self) -> Result<(), PruneError> {
        for (flag, value, what) in [
            ("heads", self.heads, "attention heads"),
            ("ffn", self.ffn, "feed-forward neurons"),
            (
                "sparsity",
                self.sparsity,
                "attention and feed-forward weights",
            ),
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
    /// With `spec.sparsity`: what the zeros save in a sparse format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sparse: Option<SparseSize>,
}

/// The attention and feed-forward matrices of a magnitude-pruned model in a sparse
/// format (CSR: a 4-byte value and a 2-byte column index per nonzero, a 4-byte offset
/// per row) against dense f32. `model.mpk` stores them dense, and dense kernels skip no
/// zero: the gain is size only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SparseSize {
    pub weights: usize,
    pub zeros: usize,
    pub dense_bytes: usize,
    pub csr_bytes: usize,
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

/// A model after [`prune_model`]: heads, neurons, layers and parameters before and
/// after, and the sparse size of a magnitude pruning.
struct PrunedModel<M> {
    model: M,
    counts: [BeforeAfter; 4],
    sparse: Option<SparseSize>,
}

/// Measures importance on `examples`, prunes `model` as `spec` says (off the autodiff
/// graph), and counts what went.
fn prune_model<B, M>(
    model: M,
    spec: &PruneSpec,
    examples: &[Example],
) -> Result<PrunedModel<M::InnerModule>, PruneError>
where
    B: AutodiffBackend,
    M: AutodiffModule<B> + Prune<B> + SeqModel<B>,
    M::InnerModule: Prune<B::InnerBackend> + Quantize<B::InnerBackend>,
{
    let plan = if spec.is_structured() {
        Some(plan(&unit_importance(&model, examples), spec)?)
    } else {
        None
    };
    let model = model.valid();
    let before = unit_counts(&model);
    let params_before = model.num_params();
    let pruned = match plan {
        Some(plan) => model.prune(&plan)?,
        None => model,
    };
    let (pruned, sparse) = if spec.sparsity > 0.0 {
        let mut size = SparseSize {
            weights: 0,
            zeros: 0,
            dense_bytes: 0,
            csr_bytes: 0,
        };
        let pruned = pruned.map_weights(
            &mut |layer| {
                let layer = layer.sparsify(spec.sparsity);
                let (n, zeros) = (layer.d_in() * layer.d_out(), layer.zero_weights());
                size.weights += n;
                size.zeros += zeros;
                size.dense_bytes += 4 * n;
                size.csr_bytes += 6 * (n - zeros) + 4 * (layer.d_in() + 1);
                layer
            },
            |table| table,
        );
        (pruned, Some(size))
    } else {
        (pruned, None)
    };
    let after = unit_counts(&pruned);
    let pair = |i: usize| BeforeAfter {
        before: before[i],
        after: after[i],
    };
    let params = BeforeAfter {
        before: params_before,
        after: pruned.num_params(),
    };
    Ok(PrunedModel {
        model: pruned,
        counts: [pair(0), pair(1), pair(2), params],
        sparse,
    })
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
    // Only the structured pruning measures importance; magnitude pruning reads no data.
    let examples = if spec.is_structured() {
        let tokenizer = from.load_tokenizer()?;
        let valid = PreparedData::new(&data_dir)
            .pairs(Split::Valid)
            .map_err(CheckpointError::from)?;
        paragen_data::encode_pairs(&tokenizer, &valid).map_err(CheckpointError::from)?
    } else {
        Vec::new()
    };
    if spec.is_structured() && examples.is_empty() {
        return Err(PruneError::NoValidData(data_dir.display().to_string()));
    }
    // Without dropout: importance is a property of the model, not of a random mask.
    config.model.transformer_mut().dropout = 0.0;
    let model = Model::<B>::new(&config.model, device)?;
    let (model, counts, sparse) = match model {
        Model::Ar(m) => {
            let p = prune_model(from.load_module("model.mpk", m, device)?, spec, &examples)?;
            (Model::Ar(p.model), p.counts, p.sparse)
        }
        Model::Nat(m) => {
            let p = prune_model(from.load_module("model.mpk", m, device)?, spec, &examples)?;
            (Model::Nat(p.model), p.counts, p.sparse)
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
        sparse,
    };
    run.write_json(PRUNE_FILE, &record)?;
    Ok((run, record))
}

mod plan;
mod recover;

pub use plan::plan;
pub use recover::{RecoverOptions, recover};
