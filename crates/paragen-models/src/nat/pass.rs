//! The pieces of one parallel NAT pass that decoding, the losses and CTC all use: the
//! all-mask decoder input, an encoder output cut from the graph, the best tokens and
//! log-probabilities of the logits, the tokens a user sees, and decoded candidates.

use burn::prelude::*;
use burn::tensor::TensorData;
use rayon::prelude::*;

use crate::layers::EncoderOutput;

/// `[batch, width]` tensor of `<mask>` for the first `len` positions of each row, pad after.
pub fn all_mask_input<B: Backend>(
    lengths: &[usize],
    mask: u32,
    pad: u32,
    device: &B::Device,
) -> Tensor<B, 2, Int> {
    let width = lengths.iter().copied().max().unwrap_or(1).max(1);
    let flat: Vec<i64> = lengths
        .iter()
        .flat_map(|&n| {
            (0..width).map(move |j| {
                if j < n {
                    i64::from(mask)
                } else {
                    i64::from(pad)
                }
            })
        })
        .collect();
    Tensor::from_data(
        TensorData::new(flat, [lengths.len(), width]).convert::<B::IntElem>(),
        device,
    )
}

/// The encoder output cut from the autodiff graph, for passes that must not train it.
pub(crate) fn detach<B: Backend>(encoded: &EncoderOutput<B>) -> EncoderOutput<B> {
    EncoderOutput {
        memory: encoded.memory.clone().detach(),
        src_mask: encoded.src_mask.clone(),
    }
}

/// A decoded candidate with its average token log-probability.
#[derive(Clone, Debug, PartialEq)]
pub struct NatCandidate {
    pub tokens: Vec<u32>,
    pub score: f32,
}

/// Per row of `logits` (`[rows, vocab]`, row-major on the host): the best token and its
/// log-probability, with `penalty` subtracted from the logit of token `penalised` first.
///
/// One pass for the argmax and one for the normaliser, in place: a full `log_softmax`
/// would write and read back the whole tensor several times, and the scalar `exp` of the
/// tensor ops was an eighth of a batch-64 NAT pass in `perf`.
pub(crate) fn best_log_probs_of_rows(
    logits: &mut [f32],
    vocab: usize,
    penalised: usize,
    penalty: f32,
) -> (Vec<f32>, Vec<i64>) {
    // Rows are independent: a chunk of 256 rows of an 8k vocabulary is 8 MB of work,
    // split over the cores like the matrix product before it.
    logits
        .par_chunks_mut(vocab.max(1))
        .with_min_len(4)
        .map(|row| {
            if penalty != 0.0 {
                row[penalised] -= penalty;
            }
            let max = lane_max(row);
            // The first position of the maximum, as a left-to-right argmax finds it.
            let arg = row.iter().position(|&x| x == max).unwrap_or(0);
            (-sum_exp_below(row, max).ln(), arg as i64)
        })
        .unzip()
}

/// The maximum of `row` (`-inf` when empty), in lanes that the compiler vectorizes.
fn lane_max(row: &[f32]) -> f32 {
    const LANES: usize = 16;
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = row.chunks_exact(LANES);
    let rest = chunks
        .remainder()
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    for chunk in chunks {
        for (lane, &x) in lanes.iter_mut().zip(chunk) {
            *lane = if x > *lane { x } else { *lane };
        }
    }
    lanes.iter().copied().fold(rest, f32::max)
}

/// `sum(exp(x - max))` over `row`, where `max` is the row's maximum, in lanes that the
/// compiler vectorizes.
fn sum_exp_below(row: &[f32], max: f32) -> f32 {
    const LANES: usize = 16;
    let mut lanes = [0f32; LANES];
    let chunks = row.chunks_exact(LANES);
    let rest: f32 = chunks.remainder().iter().map(|&x| (x - max).exp()).sum();
    for chunk in chunks {
        for (lane, &x) in lanes.iter_mut().zip(chunk) {
            *lane += exp_non_positive(x - max);
        }
    }
    lanes.iter().sum::<f32>() + rest
}

/// `exp(x)` for `x <= 0`, within 2 ulp of `f32::exp` and 0 below -87 (Cephes' `expf`:
/// `exp(x) = 2^n exp(r)` with `n = round(x / ln 2)`, `|r| <= ln 2 / 2`, and a degree-5
/// polynomial for `exp(r)`). Branch-free, so a loop of it vectorizes.
#[inline(always)]
fn exp_non_positive(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two so that `n * LN2_HI` is exact.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5 * 2^23 rounds to an integer, which the low mantissa bits then hold.
    const ROUND: f32 = 12_582_912.0;
    let below = x < -87.0;
    let x = x.max(-87.0);
    let shifted = x * LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let exp_r = p * r * r + r + 1.0;
    let exponent = (shifted.to_bits() as i32 - ROUND.to_bits() as i32) + 127;
    let scaled = exp_r * f32::from_bits((exponent << 23) as u32);
    if below { 0.0 } else { scaled }
}

/// What a NAT writes for the user: its tokens without BOS, EOS, padding and `<mask>`
/// (which a CTC student uses as its blank).
pub(crate) fn output_tokens(
    tokens: impl IntoIterator<Item = u32>,
    special: paragen_data::SpecialTokens,
) -> Vec<u32> {
    tokens
        .into_iter()
        .filter(|&t| t != special.eos && t != special.pad && t != special.bos && t != special.mask)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vectorized_exp_matches_the_standard_library() {
        let mut worst = 0f32;
        for i in 0..200_000 {
            let x = -(i as f32) * 4.3e-4;
            let (a, b) = (exp_non_positive(x), x.exp());
            worst = worst.max((a - b).abs() / b);
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert_eq!(exp_non_positive(-100.0), 0.0);
        assert_eq!(exp_non_positive(0.0), 1.0);
    }

    #[test]
    fn best_log_probs_are_the_maximum_of_the_log_softmax() {
        let vocab = 37;
        let mut logits: Vec<f32> = (0..3 * vocab)
            .map(|i| ((i * 7919) % 23) as f32 * 0.7 - 5.0)
            .collect();
        let expect: Vec<(f32, i64)> = logits
            .chunks(vocab)
            .map(|row| {
                let mut row = row.to_vec();
                row[4] -= 2.5;
                let norm = row.iter().map(|x| f64::from(*x).exp()).sum::<f64>().ln();
                let (arg, max) =
                    row.iter().enumerate().fold(
                        (0, f32::MIN),
                        |(i, m), (j, &x)| {
                            if x > m { (j, x) } else { (i, m) }
                        },
                    );
                ((f64::from(max) - norm) as f32, arg as i64)
            })
            .collect();
        let (best, ids) = best_log_probs_of_rows(&mut logits, vocab, 4, 2.5);
        for ((b, i), (eb, ei)) in best.iter().zip(&ids).zip(expect) {
            assert_eq!(*i, ei);
            assert!((b - eb).abs() < 1e-5, "{b} vs {eb}");
        }
    }
}
