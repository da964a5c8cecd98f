//! Times the parts of one training step (forward, loss, backward, optimizer) on the CPU
//! backends, to find where training time goes. `cargo run --release --example profile_step`;
//! `DROPOUT=0.1` sets the dropout, `BACKEND=flex` profiles one backend, `STEPS=N` the
//! number of steps.

use std::time::Instant;

#[global_allocator]
static ALLOCATOR: paragen_backend::allocator::MiMalloc = paragen_backend::allocator::MiMalloc;

use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use paragen_data::SpecialTokens;
use paragen_models::{Transformer, TransformerConfig};

fn profile<B: AutodiffBackend>(name: &str, device: B::Device) {
    let special = SpecialTokens::trained();
    let config = TransformerConfig {
        dropout: std::env::var("DROPOUT")
            .map(|d| d.parse().unwrap())
            .unwrap_or(0.1),
        ..TransformerConfig::quick(8000, special)
    };
    let mut model = Transformer::<B>::new(&config, &device).unwrap();
    let mut optim = AdamWConfig::new().init::<B, Transformer<B>>();
    let (batch, len) = (128, 32);
    let ids = |seed: i64| {
        let v: Vec<i64> = (0..batch * len)
            .map(|i| 5 + (i as i64 * 7919 + seed) % 7990)
            .collect();
        Tensor::<B, 2, Int>::from_data(
            burn::tensor::TensorData::new(v, [batch, len]).convert::<B::IntElem>(),
            &device,
        )
    };
    let steps = std::env::var("STEPS").map_or(4, |s| s.parse().unwrap());
    for step in 0..steps {
        let t0 = Instant::now();
        let logits = model.forward(ids(1), ids(2));
        let loss = paragen_models::loss::label_smoothed_cross_entropy(logits, ids(3), 0, 0.1);
        let _ = loss.clone().into_scalar();
        let t1 = Instant::now();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let t2 = Instant::now();
        model = optim.step(1e-4, model, grads);
        let _ = model
            .embedding_weight()
            .val()
            .slice([0..1, 0..1])
            .into_scalar();
        let t3 = Instant::now();
        println!(
            "{name} step {step}: forward+loss {:.2}s backward {:.2}s optimizer {:.2}s",
            (t1 - t0).as_secs_f64(),
            (t2 - t1).as_secs_f64(),
            (t3 - t2).as_secs_f64()
        );
    }
}

fn main() {
    paragen_backend::allocator::keep_freed_memory();
    // BACKEND=flex|ndarray profiles one backend only (for `perf record`).
    let only = std::env::var("BACKEND").ok();
    if only.as_deref().is_none_or(|b| b == "ndarray") {
        profile::<burn::backend::Autodiff<burn::backend::NdArray<f32>>>(
            "ndarray",
            Default::default(),
        );
    }
    if only.as_deref().is_none_or(|b| b == "flex") {
        profile::<burn::backend::Autodiff<burn::backend::Flex<f32>>>("flex", Default::default());
    }
}
