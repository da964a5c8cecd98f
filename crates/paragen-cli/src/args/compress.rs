//! Arguments of the commands that make a compressed copy of a run: `shortlist` and
//! `quantize`.

use std::path::PathBuf;

use clap::Args;

use super::in_range;

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
