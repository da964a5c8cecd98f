//! Hot paths of the NAT student: one whole parallel forward pass (encoder, length
//! prediction, all-mask decoder pass, argmax), the same for the CTC student (decoder
//! twice the source length, no length prediction), and one mask-predict iteration (a decoder
//! pass over a partly masked target on a cached encoding), at batch sizes 1, 8 and 64
//! and two lengths.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use paragen_benches::{BATCHES, BenchBackend, LENGTHS, quick_nat, source_tensor, sources};
use paragen_data::SpecialTokens;
use paragen_models::nat::{NatDecoding, all_mask_input, nat_decode};

fn one_pass(c: &mut Criterion) {
    one_pass_of(c, "nat/one_pass_decode", None);
}

/// The CTC student's one pass: its decoder is `upsample` times the source length.
fn ctc_one_pass(c: &mut Criterion) {
    one_pass_of(c, "nat/ctc2_one_pass_decode", Some(2));
}

fn one_pass_of(c: &mut Criterion, name: &str, ctc_upsample: Option<usize>) {
    let device = Default::default();
    let model = quick_nat::<BenchBackend>(&device, ctc_upsample);
    let mut group = c.benchmark_group(name);
    // Batch 64 takes most of a second per pass here; 10 samples keep the run short.
    group.sample_size(10);
    for len in LENGTHS {
        for batch in BATCHES {
            let srcs = sources(batch, len);
            group.bench_with_input(
                BenchmarkId::new(format!("len{len}"), batch),
                &srcs,
                |b, srcs| {
                    b.iter(|| nat_decode(&model, srcs, NatDecoding::default()).expect("fits"))
                },
            );
        }
    }
}

fn mask_predict_iteration(c: &mut Criterion) {
    let device = Default::default();
    let model = quick_nat::<BenchBackend>(&device, None);
    let special = SpecialTokens::trained();
    let mut group = c.benchmark_group("nat/mask_predict_iteration");
    group.sample_size(10);
    for len in LENGTHS {
        for batch in BATCHES {
            let encoded = model.encode(source_tensor::<BenchBackend>(batch, len, &device));
            let input = all_mask_input::<BenchBackend>(
                &vec![len; batch],
                special.mask,
                special.pad,
                &device,
            );
            group.bench_with_input(
                BenchmarkId::new(format!("len{len}"), batch),
                &input,
                |b, input| {
                    b.iter(|| {
                        model
                            .decode(&encoded, input.clone())
                            .max_dim_with_indices(2)
                            .1
                            .into_data()
                    })
                },
            );
        }
    }
}

criterion_group!(benches, one_pass, ctc_one_pass, mask_predict_iteration);
criterion_main!(benches);
