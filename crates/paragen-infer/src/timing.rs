//! Honest timing of decoding: warm-up first, then the median of several runs, at a fixed
//! batch size; plus the achieved GFLOP/s of a forward pass and the machine's measured
//! fp32 matrix-product peak, for a roofline comparison.

use std::time::Instant;

use burn::prelude::*;
use paragen_models::nat::all_mask_input;
use serde::{Deserialize, Serialize};

use crate::translate::{Model, TranslateError, Translator, translate_ids};

/// The CPU (from `/proc/cpuinfo`) and its logical cores, for provenance and for
/// telling measurements of one machine from another's.
pub fn machine_description() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("{cpu}, {cores} logical CPUs")
}

/// Median wall time of decoding, per sentence.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Timing {
    pub batch_size: usize,
    pub sentences: usize,
    pub runs: usize,
    pub ms_per_sentence: f64,
    pub sentences_per_s: f64,
    /// Every run's seconds, in order.
    pub run_seconds: Vec<f64>,
}

/// The median of `values` (the mean of the middle two for an even count).
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let mid = v.len() / 2;
    if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    }
}

/// Decodes `sources` once to warm up, then `runs` more times; reports the median run.
pub fn time_decoding<B: Backend>(
    translator: &Translator<'_, B>,
    sources: &[Vec<u32>],
    batch_size: usize,
    runs: usize,
) -> Result<Timing, TranslateError> {
    let warmup = sources.len().min(batch_size.max(4));
    translate_ids(translator, &sources[..warmup], batch_size, false)?;
    let mut run_seconds = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let started = Instant::now();
        translate_ids(translator, sources, batch_size, false)?;
        run_seconds.push(started.elapsed().as_secs_f64());
    }
    let seconds = median(&run_seconds);
    Ok(Timing {
        batch_size,
        sentences: sources.len(),
        runs: run_seconds.len(),
        ms_per_sentence: 1000.0 * seconds / sources.len() as f64,
        sentences_per_s: sources.len() as f64 / seconds,
        run_seconds,
    })
}

/// Best GFLOP/s of `repeats` products of two `n × n` fp32 matrices: the practical peak
/// of this backend on this machine.
pub fn matmul_peak_gflops<B: Backend>(n: usize, repeats: usize, device: &B::Device) -> f64 {
    let a = Tensor::<B, 2>::random([n, n], burn::tensor::Distribution::Default, device);
    let b = Tensor::<B, 2>::random([n, n], burn::tensor::Distribution::Default, device);
    let _ = a.clone().matmul(b.clone()).into_data();
    let best = (0..repeats.max(1))
        .map(|_| {
            let started = Instant::now();
            let _ = a.clone().matmul(b.clone()).into_data();
            started.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min);
    2.0 * (n as f64).powi(3) / best / 1e9
}

/// Achieved GFLOP/s of one forward pass over a `[batch, len]` source and target, best
/// of `repeats`: teacher-forced for AR models, one all-mask parallel pass for NAT.
/// Returns the GFLOP/s and the best pass's seconds.
pub fn forward_gflops<B: Backend>(
    model: &Model<B>,
    batch: usize,
    len: usize,
    repeats: usize,
) -> (f64, f64) {
    let config = model.config();
    let device = model.device();
    let ids: Vec<i64> = (0..batch * len)
        .map(|i| 5 + (i as i64 * 7919) % (config.vocab_size as i64 - 5))
        .collect();
    let tokens = Tensor::<B, 2, Int>::from_data(
        burn::tensor::TensorData::new(ids, [batch, len]).convert::<B::IntElem>(),
        &device,
    );
    let special = config.special;
    let masks = all_mask_input::<B>(&vec![len; batch], special.mask, special.pad, &device);
    let pass = || {
        let out = match model {
            Model::Ar(m) => m.forward(tokens.clone(), tokens.clone()),
            Model::Nat(m) => m.decode(&m.encode(tokens.clone()), masks.clone()),
        };
        let _ = out.into_data();
    };
    pass();
    let best = (0..repeats.max(1))
        .map(|_| {
            let started = Instant::now();
            pass();
            started.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min);
    let flops = config.forward_flops(batch, len, len);
    (flops / best / 1e9, best)
}
