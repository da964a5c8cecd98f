//! Hot paths of the AR teacher: encoder forward, one cached decoding step, and a whole
//! greedy decode, at batch sizes 1, 8 and 64 and two source lengths.

use burn::prelude::*;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use paragen_benches::{BATCHES, BenchBackend, LENGTHS, quick_teacher, source_tensor, sources};
use paragen_models::{LengthLimit, greedy};

fn encoder(c: &mut Criterion) {
    let device = Default::default();
    let model = quick_teacher::<BenchBackend>(&device);
    let mut group = c.benchmark_group("teacher/encode");
    for len in LENGTHS {
        for batch in BATCHES {
            let src = source_tensor::<BenchBackend>(batch, len, &device);
            group.bench_with_input(
                BenchmarkId::new(format!("len{len}"), batch),
                &src,
                |b, src| b.iter(|| model.encode(src.clone()).memory.into_data()),
            );
        }
    }
}

fn decode_step(c: &mut Criterion) {
    let device = Default::default();
    let model = quick_teacher::<BenchBackend>(&device);
    let mut group = c.benchmark_group("teacher/decode_step_kv_cache");
    for len in LENGTHS {
        for batch in BATCHES {
            let encoded = model.encode(source_tensor::<BenchBackend>(batch, len, &device));
            // A cache already holding `len` target tokens, as in the middle of a decode.
            let mut state = model.start_decoding(&encoded);
            let tokens = Tensor::<BenchBackend, 1, Int>::ones([batch], &device);
            for _ in 0..len {
                let _ = model.decode_step(&mut state, tokens.clone());
            }
            group.bench_with_input(
                BenchmarkId::new(format!("len{len}"), batch),
                &state,
                |b, state| {
                    b.iter(|| {
                        let mut s = state.clone();
                        model.decode_step(&mut s, tokens.clone()).into_data()
                    })
                },
            );
        }
    }
}

fn greedy_decode(c: &mut Criterion) {
    let device = Default::default();
    let model = quick_teacher::<BenchBackend>(&device);
    let mut group = c.benchmark_group("teacher/greedy_decode");
    group.sample_size(10);
    // Random weights never emit EOS on purpose, so every decode runs to the limit:
    // `len` output tokens for a `len`-token source.
    let limit = LengthLimit {
        ratio: 1.0,
        extra: 0,
    };
    for len in LENGTHS {
        for batch in BATCHES {
            let srcs = sources(batch, len);
            group.bench_with_input(
                BenchmarkId::new(format!("len{len}"), batch),
                &srcs,
                |b, srcs| b.iter(|| greedy(&model, srcs, limit).expect("fits the model")),
            );
        }
    }
}

criterion_group!(benches, encoder, decode_step, greedy_decode);
criterion_main!(benches);
