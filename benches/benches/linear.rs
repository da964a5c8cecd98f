//! One linear layer of the quick preset in float and with int8 weights, at the row
//! counts of a decode (30-token sentences at batch 1, 8 and 64): the feed-forward
//! block's first layer (256 -> 1024) and the output projection (256 -> 8,000 tokens).
//! The bar: int8 at least 2x faster than float at batch 64.

use burn::prelude::*;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use paragen_benches::{BATCHES, BenchBackend};
use paragen_models::dense::Dense;

/// Tokens per sentence the rows stand for.
const SENTENCE: usize = 30;

fn linear(c: &mut Criterion) {
    paragen_backend::allocator::keep_freed_memory();
    let device = Default::default();
    for (name, d_in, d_out) in [
        ("ffn_256x1024", 256, 1024),
        ("projection_256x8000", 256, 8000),
    ] {
        BenchBackend::seed(&device, 0);
        let float = Dense::<BenchBackend>::new(d_in, d_out, &device);
        let int8 = float.clone().quantize(8);
        let mut group = c.benchmark_group(format!("linear/{name}"));
        group.sample_size(10);
        for batch in BATCHES {
            let x = Tensor::<BenchBackend, 2>::random(
                [batch * SENTENCE, d_in],
                burn::tensor::Distribution::Normal(0.0, 1.0),
                &device,
            );
            for (precision, layer) in [("f32", &float), ("int8", &int8)] {
                group.bench_with_input(BenchmarkId::new(precision, batch), &x, |b, x| {
                    b.iter(|| layer.forward(x.clone()).into_data())
                });
            }
        }
    }
}

criterion_group!(benches, linear);
criterion_main!(benches);
