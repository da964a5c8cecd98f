//! Training losses of the CMLM student: CMLM masking (Ghazvininejad et al. 2019) and
//! glancing training (Qian et al. 2021, GLAT), each with the length-classifier loss.

use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::activation::log_softmax;

use super::NatStudent;
use super::pass::{all_mask_input, detach};
use crate::layers::EncoderOutput;

impl<B: Backend> NatStudent<B> {
    /// CMLM training loss: for every target, a uniformly drawn number of positions
    /// (1 to its length) is replaced by `<mask>` and predicted from the rest, plus the
    /// weighted length-classification loss. `masks[i][j]` says whether position `j` of
    /// target `i` is masked (see [`sample_cmlm_masks`]).
    ///
    /// # Shapes
    /// - `src`: `[batch, src_time]`; `targets`: the target ids (no BOS/EOS).
    pub fn cmlm_loss(
        &self,
        src: Tensor<B, 2, Int>,
        src_lens: &[usize],
        targets: &[Vec<u32>],
        masks: &[Vec<bool>],
        label_smoothing: f64,
    ) -> Tensor<B, 1> {
        let encoded = self.encode(src);
        self.masked_loss(&encoded, src_lens, targets, masks, label_smoothing)
    }

    /// Glancing training (Qian et al. 2021, GLAT): a first parallel pass from all-mask
    /// inputs (no gradient) measures how many tokens the model gets wrong; then
    /// `ratio x wrong` random positions are revealed with their reference tokens and the
    /// model learns to predict the others. Hard sentences get more hints, easy ones
    /// fewer, which teaches one-pass decoding better than uniform CMLM masking.
    pub fn glat_loss(
        &self,
        src: Tensor<B, 2, Int>,
        src_lens: &[usize],
        targets: &[Vec<u32>],
        ratio: f64,
        label_smoothing: f64,
        rng: &mut impl rand::Rng,
    ) -> Tensor<B, 1> {
        let special = self.config.transformer.special;
        let encoded = self.encode(src);
        let tgt_lens: Vec<usize> = targets.iter().map(|t| t.len()).collect();
        let detached = detach(&encoded);
        let input = all_mask_input::<B>(&tgt_lens, special.mask, special.pad, &self.device());
        let width = input.dims()[1];
        let guesses: Vec<i64> = self
            .decode_logits(&detached, input)
            .detach()
            .argmax(2)
            .into_data()
            .iter::<i64>()
            .collect();
        let masks = glancing_masks(targets, |i, j| guesses[i * width + j] as u32, ratio, rng);
        self.masked_loss(&encoded, src_lens, targets, &masks, label_smoothing)
    }

    /// Token loss on the masked positions (the others are given as input) plus the
    /// weighted length loss.
    fn masked_loss(
        &self,
        encoded: &EncoderOutput<B>,
        src_lens: &[usize],
        targets: &[Vec<u32>],
        masks: &[Vec<bool>],
        label_smoothing: f64,
    ) -> Tensor<B, 1> {
        let special = self.config.transformer.special;
        let device = self.device();
        let tgt_lens: Vec<usize> = targets.iter().map(|t| t.len()).collect();
        let apply = |f: &dyn Fn(u32, bool) -> u32| -> Vec<Vec<u32>> {
            targets
                .iter()
                .zip(masks)
                .map(|(t, m)| t.iter().zip(m).map(|(&tok, &hide)| f(tok, hide)).collect())
                .collect()
        };
        let inputs = apply(&|tok, hide| if hide { special.mask } else { tok });
        // Only masked positions are scored: the others carry the pad id as their target.
        let outputs = apply(&|tok, hide| if hide { tok } else { special.pad });
        let tgt_in = paragen_data::batch::pad_to_tensor::<B>(
            &paragen_data::batch::as_slices(&inputs),
            special.pad,
            &device,
        );
        let tgt_out = paragen_data::batch::pad_to_tensor::<B>(
            &paragen_data::batch::as_slices(&outputs),
            special.pad,
            &device,
        );
        let token_loss = crate::loss::label_smoothed_cross_entropy(
            self.decode_logits(encoded, tgt_in),
            tgt_out,
            special.pad,
            label_smoothing,
        );
        let length_targets = self.length_targets(src_lens, &tgt_lens);
        let length_targets = Tensor::<B, 1, Int>::from_data(
            TensorData::new(length_targets, [tgt_lens.len()]).convert::<B::IntElem>(),
            &device,
        );
        let length_log_probs = log_softmax(self.length_logits(encoded), 1);
        let length_loss = -length_log_probs
            .gather(1, length_targets.unsqueeze_dim(1))
            .mean();
        token_loss + length_loss * self.config.length_loss_weight
    }
}

/// GLAT masks: for target `i`, `ceil(ratio x wrong_i)` positions chosen uniformly are
/// revealed (`false`), the rest stay masked (`true`); `guess(i, j)` is the first pass's
/// token at position `j`. At least one position stays masked so every target is scored.
pub fn glancing_masks(
    targets: &[Vec<u32>],
    guess: impl Fn(usize, usize) -> u32,
    ratio: f64,
    rng: &mut impl rand::Rng,
) -> Vec<Vec<bool>> {
    use rand::seq::SliceRandom;
    targets
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let wrong = t
                .iter()
                .enumerate()
                .filter(|&(j, &tok)| guess(i, j) != tok)
                .count();
            let reveal = ((ratio * wrong as f64).ceil() as usize).min(t.len().saturating_sub(1));
            let mut positions: Vec<usize> = (0..t.len()).collect();
            positions.shuffle(rng);
            let mut mask = vec![true; t.len()];
            for &j in positions.iter().take(reveal) {
                mask[j] = false;
            }
            mask
        })
        .collect()
}

/// CMLM masks: for each target of length `n`, `k ~ U{1..n}` positions chosen uniformly.
pub fn sample_cmlm_masks(lengths: &[usize], rng: &mut impl rand::Rng) -> Vec<Vec<bool>> {
    use rand::seq::SliceRandom;
    lengths
        .iter()
        .map(|&n| {
            let k = rng.random_range(1..=n.max(1));
            let mut positions: Vec<usize> = (0..n).collect();
            positions.shuffle(rng);
            let mut mask = vec![false; n];
            for &j in positions.iter().take(k) {
                mask[j] = true;
            }
            mask
        })
        .collect()
}
