//! Post-training weight quantization: a run's attention and feed-forward weights to int8
//! or int4, one symmetric scale per output column, with no calibration data (activations
//! are quantized per row when the model runs, see `paragen_backend::int8`).

use std::path::Path;

use burn::prelude::Backend;
use paragen_infer::{CheckpointError, RunDir, write_quantized_run};
use paragen_models::dense::QUANTIZED_BITS;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum QuantizeError {
    #[error("--bits {0} is not supported: quantized weights have 8 or 4 bits")]
    Bits(u8),
    #[error("{run} is already quantized ({bits} bits); quantize its float source instead")]
    AlreadyQuantized { run: String, bits: u8 },
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
}

/// What [`quantize_run`] wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantizeReport {
    pub bits: u8,
    /// `model.mpk` of the source run and of the quantized one.
    pub source_bytes: u64,
    pub quantized_bytes: u64,
}

/// Writes to `out` a copy of the run `from` whose weights are quantized to `bits`.
pub fn quantize_run<B: Backend>(
    from: &RunDir,
    out: &Path,
    bits: u8,
    device: &B::Device,
) -> Result<(RunDir, QuantizeReport), QuantizeError> {
    if !QUANTIZED_BITS.contains(&bits) {
        return Err(QuantizeError::Bits(bits));
    }
    if let Some(q) = from.load_quantization()? {
        return Err(QuantizeError::AlreadyQuantized {
            run: from.root().display().to_string(),
            bits: q.bits,
        });
    }
    let (_, model) = from.load_model::<B>(device)?;
    let run = write_quantized_run(from, out, &model.quantize(bits))?;
    let size = |run: &RunDir| std::fs::metadata(run.path("model.mpk")).map_or(0, |m| m.len());
    Ok((
        run.clone(),
        QuantizeReport {
            bits,
            source_bytes: size(from),
            quantized_bytes: size(&run),
        },
    ))
}
