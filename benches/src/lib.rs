//! Criterion benchmarks of paragen's hot paths (see `benches/`), plus the helpers they
//! share: a deterministic model and batches of fixed shapes.
//!
//! Run with `cargo bench -p paragen-benches`. Thread count follows `RAYON_NUM_THREADS`.

use burn::prelude::*;
use burn::tensor::TensorData;
use paragen_data::SpecialTokens;
use paragen_models::{Transformer, TransformerConfig};

/// The same allocator as the `paragen` binary, so timings match what users get (a
/// global allocator in a library serves every binary that links it); the model
/// constructors below also apply its options.
#[global_allocator]
static ALLOCATOR: paragen_backend::allocator::MiMalloc = paragen_backend::allocator::MiMalloc;

/// Batch sizes every benchmark runs at.
pub const BATCHES: [usize; 3] = [1, 8, 64];
/// Source lengths every benchmark runs at, in tokens.
pub const LENGTHS: [usize; 2] = [16, 48];

/// The CPU backend the benchmarks measure (the default CPU backend of paragen).
pub type BenchBackend = burn::backend::Flex<f32>;

/// A quick-preset teacher with seeded random weights (8,000-token vocabulary).
pub fn quick_teacher<B: Backend>(device: &B::Device) -> Transformer<B> {
    paragen_backend::allocator::keep_freed_memory();
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

/// A quick-preset NAT student with the teacher's shapes (as `train-student` builds it)
/// and seeded random weights; a CTC student when `ctc_upsample` is given.
pub fn quick_nat<B: Backend>(
    device: &B::Device,
    ctc_upsample: Option<usize>,
) -> paragen_models::nat::NatStudent<B> {
    paragen_backend::allocator::keep_freed_memory();
    B::seed(device, 0);
    let transformer = TransformerConfig::quick(8000, SpecialTokens::trained());
    let config = match ctc_upsample {
        Some(upsample) => paragen_models::nat::NatConfig::ctc(transformer, upsample),
        None => paragen_models::nat::NatConfig::new(transformer),
    };
    paragen_models::nat::NatStudent::new(&config, device).expect("valid config")
}
