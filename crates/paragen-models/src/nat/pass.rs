//! The pieces of one parallel NAT pass that decoding, the losses and CTC all use: the
//! all-mask decoder input, an encoder output cut from the graph, the best tokens and
//! log-probabilities of the logits, the tokens a user sees, and decoded candidates.

use burn::prelude::*;
use burn::tensor::TensorData;

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

pub(crate) fn rows_to_vec<B: Backend, const D: usize>(t: Tensor<B, D, Int>) -> Vec<i64> {
    t.into_data().iter::<i64>().collect()
}

/// Per position of `logits` (`[batch, time, vocab]`, flattened row-major): the best
/// token and its log-probability. Cheaper than a full `log_softmax`: only the log of the
/// normaliser is computed, never the whole log-probability tensor.
pub(crate) fn best_log_probs<B: Backend>(logits: Tensor<B, 3>) -> (Vec<f32>, Vec<i64>) {
    let (best, ids) = logits.clone().max_dim_with_indices(2);
    let normaliser = (logits - best.clone()).exp().sum_dim(2).log();
    let best: Vec<f32> = (-normaliser).into_data().iter::<f32>().collect();
    (best, rows_to_vec(ids))
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
