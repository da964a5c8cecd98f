//! Times the parts of one training step (forward, loss, backward, optimizer) on the CPU
//! backends, to find where training time goes. `cargo run --release --example profile_step`;
//! `DROPOUT=0.1` sets the dropout, `BACKEND=flex` profiles one backend, `STEPS=N` the
//! number of steps. `MODEL=nat-ctc` times a CTC student's loss and backward instead, with
//! paragen's host CTC (`CTC=host`, the default) or burn's `ctc_loss` (`CTC=burn`).

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
            .expect("a float model")
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

/// One CTC student step at the teacher's batch shape (upsample 2: 64 decoder positions
/// for 32 source tokens, 30-token targets), its loss from `CTC`.
fn profile_ctc<B: AutodiffBackend>(name: &str, device: B::Device) {
    use paragen_models::nat::{NatConfig, NatStudent, ctc};
    let special = SpecialTokens::trained();
    let config = NatConfig::ctc(TransformerConfig::quick(8000, special), 2);
    let mut model = NatStudent::<B>::new(&config, &device).unwrap();
    let mut optim = AdamWConfig::new().init::<B, NatStudent<B>>();
    let burn_ctc = std::env::var("CTC").is_ok_and(|c| c == "burn");
    let (batch, src_len, tgt_len) = (128usize, 32usize, 30usize);
    let token = |i: usize, seed: usize| 5 + ((i * 7919 + seed) % 7990) as u32;
    let sources: Vec<Vec<u32>> = (0..batch)
        .map(|b| (0..src_len).map(|j| token(b * src_len + j, 1)).collect())
        .collect();
    let targets: Vec<Vec<u32>> = (0..batch)
        .map(|b| (0..tgt_len).map(|j| token(b * tgt_len + j, 2)).collect())
        .collect();
    let slices: Vec<&[u32]> = sources.iter().map(|s| s.as_slice()).collect();
    let frames = vec![model.ctc_positions(src_len); batch];
    let steps = std::env::var("STEPS").map_or(4, |s| s.parse().unwrap());
    for step in 0..steps {
        let t0 = Instant::now();
        let encoded = model.encode(paragen_data::batch::pad_to_tensor(
            &slices,
            special.pad,
            &device,
        ));
        let input = model.ctc_input(&slices);
        let log_probs = model.decode(
            &encoded,
            paragen_data::batch::pad_to_tensor(
                &paragen_data::batch::as_slices(&input),
                special.pad,
                &device,
            ),
        );
        let loss = if burn_ctc {
            let ints = |v: Vec<i64>| {
                let n = v.len();
                Tensor::<B, 1, Int>::from_data(
                    burn::tensor::TensorData::new(v, [n]).convert::<B::IntElem>(),
                    &device,
                )
            };
            burn::tensor::module::ctc_loss(
                log_probs.swap_dims(0, 1),
                paragen_data::batch::pad_to_tensor(
                    &paragen_data::batch::as_slices(&targets),
                    special.pad,
                    &device,
                ),
                ints(frames.iter().map(|&f| f as i64).collect()),
                ints(vec![tgt_len as i64; batch]),
                special.mask as usize,
            )
            .sum()
        } else {
            ctc::ctc_nll_sum(log_probs, &targets, &frames, special.mask)
        };
        let _ = loss.clone().into_scalar();
        let t1 = Instant::now();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let t2 = Instant::now();
        model = optim.step(1e-4, model, grads);
        let t3 = Instant::now();
        println!(
            "{name} ctc ({}) step {step}: forward+loss {:.2}s backward {:.2}s optimizer {:.2}s",
            if burn_ctc { "burn" } else { "host" },
            (t1 - t0).as_secs_f64(),
            (t2 - t1).as_secs_f64(),
            (t3 - t2).as_secs_f64()
        );
    }
}

fn main() {
    paragen_backend::allocator::keep_freed_memory();
    if std::env::var("MODEL").is_ok_and(|m| m == "nat-ctc") {
        profile_ctc::<burn::backend::Autodiff<burn::backend::Flex<f32>>>(
            "flex",
            Default::default(),
        );
        return;
    }
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
