//! Arguments of the commands that make a compressed copy of a run: `shortlist`,
//! `quantize` and `prune`.

use std::path::PathBuf;

use clap::Args;

use paragen_compress::{LayerRef, ShortlistConfig};

use super::{in_range, non_negative, positive};

#[derive(Args, Clone)]
pub struct ShortlistArgs {
    /// Run directory of a NAT student (a training run or a release).
    #[arg(long)]
    pub model: PathBuf,
    /// New run directory: the model's files plus `shortlist.json`.
    #[arg(long)]
    pub out: PathBuf,
    /// Prepared data whose training pairs the shortlist is learned from (default: the
    /// one the model was trained on, e.g. the teacher's distillation).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Most frequent target tokens that every batch may produce.
    #[arg(long, default_value_t = 500, value_parser = in_range(0, 1_000_000))]
    pub frequent: usize,
    /// Target tokens that each source token adds (best Dice coefficient first).
    #[arg(long, default_value_t = 20, value_parser = in_range(1, 1_000_000))]
    pub per_source: usize,
    /// Training pairs a source and a target token must share to count as translations.
    #[arg(long, default_value_t = 2, value_parser = in_range(1, 1_000_000))]
    pub min_cooccurrence: usize,
}

impl ShortlistArgs {
    /// The library's form of the size flags.
    pub fn config(&self) -> anyhow::Result<ShortlistConfig> {
        Ok(ShortlistConfig {
            frequent: self.frequent,
            per_source: self.per_source,
            min_cooccurrence: u32::try_from(self.min_cooccurrence)?,
        })
    }
}

#[derive(Args, Clone)]
pub struct QuantizeArgs {
    /// Run directory of any model kind (a training run or a release).
    #[arg(long)]
    pub model: PathBuf,
    /// New run directory: the model's files, quantized `model.mpk` and
    /// `quantization.json`.
    #[arg(long)]
    pub out: PathBuf,
    /// Bits per weight: 8 (one scale per output column, within a few tenths of BLEU of
    /// float) or 4 (two weights per byte; smaller, loses more).
    #[arg(long, default_value_t = 8, value_parser = bits_parser())]
    pub bits: u8,
}

/// `--bits` of `paragen quantize`: 8 or 4.
fn bits_parser() -> impl Fn(&str) -> Result<u8, String> + Clone {
    |text| match text.trim() {
        "8" => Ok(8),
        "4" => Ok(4),
        _ => Err(format!("`{text}` is not 8 or 4")),
    }
}

#[derive(Args, Clone)]
pub struct PruneArgs {
    /// Run directory of a float model of any kind (a training run or a release).
    #[arg(long, required_unless_present = "resume")]
    pub model: Option<PathBuf>,
    /// New run directory: the pruned model (smaller matrices), its config and
    /// `prune.json`; fine-tuned in place when --recover-minutes is above 0.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub how: PruneOptions,
}

/// What to prune and how to recover, shared by `prune` and `compress`.
#[derive(Args, Clone)]
pub struct PruneOptions {
    /// Share of all attention heads to remove, in [0, 1): the least important ones by
    /// gate gradient on the valid split, ranked across layers (each attention keeps one).
    #[arg(long, default_value_t = 0.0, value_parser = share_parser)]
    pub heads: f64,
    /// Share of all feed-forward neurons to remove, in [0, 1), ranked the same way.
    #[arg(long, default_value_t = 0.0, value_parser = share_parser)]
    pub ffn: f64,
    /// Whole layers to remove, e.g. `encoder.2,decoder.0` (counted from 0).
    #[arg(long, value_delimiter = ',')]
    pub drop_layers: Vec<LayerRef>,
    /// Unstructured magnitude pruning after the structured one: share of every attention
    /// and feed-forward matrix set to zero, in [0, 1). Smaller in a sparse format (the
    /// CSR size is reported), but no faster: dense kernels multiply the zeros too.
    /// Cannot be fine-tuned (training would fill the zeros).
    #[arg(long, default_value_t = 0.0, value_parser = share_parser)]
    pub sparsity: f64,
    /// Prepared data: its valid split measures importance and the fine-tuning trains
    /// on it (default: the data the model was trained on; a NAT's is the distilled one).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Minutes of recovery fine-tuning after pruning (0: none). AR models learn from
    /// the unpruned model by word-level KD; NATs with their own recipe.
    #[arg(long, default_value_t = 0.0, value_parser = non_negative)]
    pub recover_minutes: f64,
    /// Peak learning rate of the recovery.
    #[arg(long, default_value_t = 2e-4, value_parser = positive)]
    pub lr: f64,
    /// Weight of the word-level KD term of an AR model's recovery (0: cross-entropy only).
    #[arg(long, default_value_t = 0.5, value_parser = share_or_one)]
    pub kd_weight: f64,
    /// Continue the interrupted recovery of the pruned run in --out.
    #[arg(long, conflicts_with_all = ["model", "heads", "ffn", "drop_layers", "sparsity", "data"])]
    pub resume: bool,
}

impl PruneOptions {
    /// Whether anything is to be removed.
    pub fn prunes(&self) -> bool {
        self.heads > 0.0 || self.ffn > 0.0 || !self.drop_layers.is_empty() || self.sparsity > 0.0
    }
}

/// A share of units to remove: in [0, 1).
fn share_parser(text: &str) -> Result<f64, String> {
    let value = non_negative(text)?;
    if value < 1.0 {
        Ok(value)
    } else {
        Err(format!(
            "{value} is not below 1: it is the share of units to remove"
        ))
    }
}

/// A weight in [0, 1].
fn share_or_one(text: &str) -> Result<f64, String> {
    let value = non_negative(text)?;
    if value <= 1.0 {
        Ok(value)
    } else {
        Err(format!("{value} is above 1"))
    }
}

#[derive(Args, Clone)]
pub struct CompressArgs {
    /// Run directory of a trained float model (a NAT student gains the most).
    #[arg(long, required_unless_present = "resume")]
    pub model: Option<PathBuf>,
    /// Directory of the steps' runs: `pruned` (with --heads, --ffn or --drop-layers),
    /// then e.g. `pruned-int8` and, for a NAT, `pruned-int8-shortlist`, the result.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub prune: PruneOptions,
    /// Bits of the quantized weights after pruning: 8, 4, or `none` to stay float.
    #[arg(long, default_value = "8", value_parser = bits_or_none)]
    pub bits: FinalBits,
    /// Do not give a NAT student a lexical shortlist (AR models never get one).
    #[arg(long)]
    pub no_shortlist: bool,
}

/// `--bits` of `paragen compress`: the bits of the quantized weights, or `None` to stay
/// float.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FinalBits(pub Option<u8>);

fn bits_or_none(text: &str) -> Result<FinalBits, String> {
    match text.trim() {
        "none" => Ok(FinalBits(None)),
        other => bits_parser()(other).map(|bits| FinalBits(Some(bits))),
    }
}
