//! Criterion benchmarks of paragen's hot paths (see `benches/`), plus the helpers they
//! share: a deterministic model and batches of fixed shapes.
//!
//! Run with `cargo bench -p paragen-benches`. Thread count follows `RAYON_NUM_THREADS`.

use burn::prelude::*;
use burn::tensor::TensorData;
use paragen_data::SpecialTokens;
use paragen_models::{Transformer, TransformerConfig};

/// The CPU backend the benchmarks measure (the default CPU backend of paragen).
pub type BenchBackend = burn::backend::Flex<f32>;

/// A quick-preset teacher with seeded random weights (8,000-token vocabulary).
pub fn quick_teacher<B: Backend>(device: &B::Device) -> Transformer<B> {
    B::seed(device, 0);
    Transformer::new(
        &TransformerConfig::quick(8000, SpecialTokens::trained()),
        device,
    )
    .expect("valid config")
}

/// `batch` sources of `len` tokens each, spread over the vocabulary.
pub fn sources(batch: usize, len: usize) -> Vec<Vec<u32>> {
    (0..batch)
        .map(|b| {
            (0..len)
                .map(|i| 5 + ((b * 7919 + i * 104_729) % 7990) as u32)
                .collect()
        })
        .collect()
}

/// The same sources as a padded `[batch, len]` tensor.
pub fn source_tensor<B: Backend>(
    batch: usize,
    len: usize,
    device: &B::Device,
) -> Tensor<B, 2, Int> {
    let flat: Vec<i64> = sources(batch, len)
        .into_iter()
        .flatten()
        .map(i64::from)
        .collect();
    Tensor::from_data(
        TensorData::new(flat, [batch, len]).convert::<B::IntElem>(),
        device,
    )
}

/// A quick-preset NAT student (encoder and decoder as deep as the teacher's encoder)
/// with seeded random weights.
pub fn quick_nat<B: Backend>(device: &B::Device) -> paragen_models::nat::NatStudent<B> {
    B::seed(device, 0);
    let mut config = TransformerConfig::quick(8000, SpecialTokens::trained());
    config.decoder_layers = config.encoder_layers;
    paragen_models::nat::NatStudent::new(&paragen_models::nat::NatConfig::new(config), device)
        .expect("valid config")
}
