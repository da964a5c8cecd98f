//! CTC output for the NAT student (Libovický & Helcl 2018; Gu & Kong 2021).
//!
//! Instead of predicting the target length, the decoder reads the source tokens, each
//! copied `upsample` times, and writes one token or a blank per position; the output is
//! what remains after merging neighbouring repeats and dropping blanks. The CTC loss sums
//! over every alignment of the reference to those positions, so the model picks its own
//! length and no longer pays for a token written one position too early: the two
//! failures of the CMLM one-pass decoder (wrong length, "the the" repeats) go away.
//!
//! The blank is the `<mask>` token, which a CTC student never needs otherwise, so the
//! vocabulary and the teacher's embedding are shared unchanged.

use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::activation::log_softmax;
use rand::seq::SliceRandom;

use super::{NatCandidate, NatDecoder, NatStudent};
use crate::error::ModelError;

/// Positions the CTC decoder needs at least to write `target`: one per token plus a
/// blank between each pair of equal neighbours (they would merge otherwise).
pub fn ctc_min_positions(target: &[u32]) -> usize {
    target.len() + target.windows(2).filter(|w| w[0] == w[1]).count()
}

/// The CTC reading of decoder positions: merges runs of one token, then drops blanks.
pub fn ctc_collapse(positions: &[u32], blank: u32) -> Vec<u32> {
    let mut out = Vec::with_capacity(positions.len());
    let mut previous = None;
    for &token in positions {
        if previous != Some(token) && token != blank {
            out.push(token);
        }
        previous = Some(token);
    }
    out
}

/// The CTC lattice of a target: states blank, `target[0]`, blank, `target[1]`, ...,
/// blank (`2S + 1` of them). Label index `k = target.len()` stands for the blank.
struct Lattice<'a> {
    target: &'a [u32],
}

impl Lattice<'_> {
    fn states(&self) -> usize {
        2 * self.target.len() + 1
    }

    /// The label index state `s` writes.
    fn label(&self, s: usize) -> usize {
        if s.is_multiple_of(2) {
            self.target.len()
        } else {
            s / 2
        }
    }

    /// Whether a path may reach state `s` from `s - 2`, skipping a blank: only between
    /// two different tokens.
    fn can_skip_into(&self, s: usize) -> bool {
        s >= 2 && !s.is_multiple_of(2) && self.target[s / 2] != self.target[s / 2 - 1]
    }
}

/// The most likely alignment of `target` to `frames` positions under the model (Viterbi
/// over the CTC lattice): the label each position should write, a token or `blank`.
/// `log_prob(t, k)` is position `t`'s log-probability of `target[k]`, `k = target.len()`
/// meaning the blank. Returns `None` when the target does not fit in `frames` positions.
pub fn ctc_best_alignment(
    target: &[u32],
    frames: usize,
    blank: u32,
    log_prob: impl Fn(usize, usize) -> f32,
) -> Option<Vec<u32>> {
    if target.is_empty() || ctc_min_positions(target) > frames {
        return None;
    }
    let lattice = Lattice { target };
    let states = lattice.states();
    let emit = |t: usize, s: usize| log_prob(t, lattice.label(s));
    let mut score = vec![f32::NEG_INFINITY; states];
    let mut back = vec![0u8; frames * states];
    score[0] = emit(0, 0);
    score[1] = emit(0, 1);
    for t in 1..frames {
        let mut next = vec![f32::NEG_INFINITY; states];
        for s in 0..states {
            // Stay, come from the previous state, or skip a blank between two
            // different tokens.
            let mut best = (score[s], 0u8);
            if s >= 1 && score[s - 1] > best.0 {
                best = (score[s - 1], 1);
            }
            if lattice.can_skip_into(s) && score[s - 2] > best.0 {
                best = (score[s - 2], 2);
            }
            if best.0 > f32::NEG_INFINITY {
                next[s] = best.0 + emit(t, s);
                back[t * states + s] = best.1;
            }
        }
        score = next;
    }
    // A path ends on the last token or the blank after it.
    let mut s = if score[states - 1] >= score[states - 2] {
        states - 1
    } else {
        states - 2
    };
    let mut path = vec![blank; frames];
    for t in (0..frames).rev() {
        path[t] = target.get(lattice.label(s)).copied().unwrap_or(blank);
        s -= usize::from(back[t * states + s]);
    }
    Some(path)
}

/// The CTC negative log-likelihood of `target` over `frames` positions and its gradient
/// with respect to each position's label log-probabilities, by forward-backward over the
/// lattice in f64. `log_prob(t, k)` as in [`ctc_best_alignment`]. The gradient is
/// `frames x (target.len() + 1)`, row-major, the blank last in each row: minus the
/// posterior probability that position `t` writes label `k`.
///
/// Training computes this on the host instead of through burn's `ctc_loss`, whose CPU
/// fallback builds the recursion from a dozen tensor ops per position and lets autodiff
/// differentiate all of them (the step was several times slower than the teacher's).
/// Returns `None` when the target cannot fit or has no path of non-zero probability.
pub fn ctc_nll_and_gradient(
    target: &[u32],
    frames: usize,
    log_prob: impl Fn(usize, usize) -> f32,
) -> Option<(f64, Vec<f64>)> {
    if target.is_empty() || ctc_min_positions(target) > frames {
        return None;
    }
    let lattice = Lattice { target };
    let states = lattice.states();
    let labels = target.len() + 1;
    let emit: Vec<f64> = (0..frames)
        .flat_map(|t| (0..states).map(move |s| (t, s)))
        .map(|(t, s)| f64::from(log_prob(t, lattice.label(s))))
        .collect();
    let at = |t: usize, s: usize| t * states + s;
    let add = |a: f64, b: f64| {
        let high = a.max(b);
        if high == f64::NEG_INFINITY {
            high
        } else {
            high + ((a - high).exp() + (b - high).exp()).ln()
        }
    };
    let mut alpha = vec![f64::NEG_INFINITY; frames * states];
    alpha[0] = emit[0];
    alpha[1] = emit[1];
    for t in 1..frames {
        for s in 0..states {
            let mut into = alpha[at(t - 1, s)];
            if s >= 1 {
                into = add(into, alpha[at(t - 1, s - 1)]);
            }
            if lattice.can_skip_into(s) {
                into = add(into, alpha[at(t - 1, s - 2)]);
            }
            alpha[at(t, s)] = into + emit[at(t, s)];
        }
    }
    let mut beta = vec![f64::NEG_INFINITY; frames * states];
    let last = frames - 1;
    beta[at(last, states - 1)] = emit[at(last, states - 1)];
    beta[at(last, states - 2)] = emit[at(last, states - 2)];
    for t in (0..last).rev() {
        for s in 0..states {
            let mut out = beta[at(t + 1, s)];
            if s + 1 < states {
                out = add(out, beta[at(t + 1, s + 1)]);
            }
            if s + 2 < states && lattice.can_skip_into(s + 2) {
                out = add(out, beta[at(t + 1, s + 2)]);
            }
            beta[at(t, s)] = out + emit[at(t, s)];
        }
    }
    let log_total = add(alpha[at(last, states - 1)], alpha[at(last, states - 2)]);
    if !log_total.is_finite() {
        return None;
    }
    let mut gradient = vec![0.0; frames * labels];
    for t in 0..frames {
        for s in 0..states {
            let joint = alpha[at(t, s)] + beta[at(t, s)] - emit[at(t, s)];
            if joint > f64::NEG_INFINITY {
                gradient[t * labels + lattice.label(s)] -= (joint - log_total).exp();
            }
        }
    }
    Some((-log_total, gradient))
}

/// `[batch, width, labels]` ids of each target's labels at every position: its tokens,
/// then the blank (which also pads rows of shorter targets), `labels` the longest
/// target's length plus one. Gathering log-probabilities with them gives the `log_prob`
/// of [`ctc_best_alignment`] and [`ctc_nll_and_gradient`].
fn label_ids<B: Backend>(
    targets: &[Vec<u32>],
    width: usize,
    blank: u32,
    device: &B::Device,
) -> (Tensor<B, 3, Int>, usize) {
    let labels = targets.iter().map(|t| t.len() + 1).max().unwrap_or(1);
    let ids: Vec<i64> = targets
        .iter()
        .flat_map(|t| {
            let row: Vec<i64> = (0..labels)
                .map(|k| i64::from(*t.get(k).unwrap_or(&blank)))
                .collect();
            (0..width).flat_map(move |_| row.clone())
        })
        .collect();
    let ids = Tensor::from_data(
        TensorData::new(ids, [targets.len(), width, labels]).convert::<B::IntElem>(),
        device,
    );
    (ids, labels)
}

/// The CTC loss summed over sentences, as a tensor whose value is the total negative
/// log-likelihood and whose gradient with respect to `log_probs` is the one
/// [`ctc_nll_and_gradient`] computes on the host: `sum(picked x gradient)` plus the
/// constant that makes the value right. Sentences without a path add nothing.
pub fn ctc_nll_sum<B: Backend>(
    log_probs: Tensor<B, 3>,
    targets: &[Vec<u32>],
    frames: &[usize],
    blank: u32,
) -> Tensor<B, 1> {
    let [batch, width, _] = log_probs.dims();
    let device = log_probs.device();
    let (ids, labels) = label_ids::<B>(targets, width, blank, &device);
    let picked = log_probs.gather(2, ids);
    let host: Vec<f32> = picked.clone().detach().into_data().iter::<f32>().collect();
    let mut weights = vec![0f32; batch * width * labels];
    let (mut total, mut linear) = (0.0f64, 0.0f64);
    for (i, target) in targets.iter().enumerate() {
        let row = |t: usize| (i * width + t) * labels;
        let Some((nll, gradient)) =
            ctc_nll_and_gradient(target, frames[i], |t, k| host[row(t) + k])
        else {
            continue;
        };
        total += nll;
        let own = target.len() + 1;
        for t in 0..frames[i] {
            for k in 0..own {
                let g = gradient[t * own + k];
                weights[row(t) + k] = g as f32;
                linear += g * f64::from(host[row(t) + k]);
            }
        }
    }
    let weights =
        Tensor::<B, 3>::from_data(TensorData::new(weights, [batch, width, labels]), &device);
    (picked * weights).sum().add_scalar(total - linear)
}

impl<B: Backend> NatStudent<B> {
    /// How many decoder positions a source of `len` tokens gets: `upsample x len`,
    /// at most the model's position limit.
    pub fn ctc_positions(&self, len: usize) -> usize {
        let upsample = match self.config.decoder {
            NatDecoder::Ctc { upsample } => upsample.max(1),
            NatDecoder::Cmlm => 1,
        };
        (upsample * len).min(self.config.transformer.max_positions)
    }

    /// Decoder input of a CTC student: each source token copied `upsample` times, so the
    /// decoder starts from the source words in order (one row of positions per source).
    pub fn ctc_input(&self, sources: &[&[u32]]) -> Vec<Vec<u32>> {
        sources
            .iter()
            .map(|source| {
                let frames = self.ctc_positions(source.len());
                (0..frames)
                    .map(|t| source[t * source.len() / frames])
                    .collect()
            })
            .collect()
    }

    /// CTC training loss: label-smoothed, averaged over target tokens. Pairs whose
    /// target cannot fit the decoder positions are left out (see
    /// [`ctc_min_positions`]). With `glance_ratio > 0`, a first pass without gradient
    /// finds the best alignment and `ratio x wrong positions` random positions get
    /// their aligned label as input (glancing CTC, Gu & Kong 2021).
    pub fn ctc_loss(
        &self,
        sources: &[&[u32]],
        targets: &[Vec<u32>],
        label_smoothing: f64,
        glance_ratio: f64,
        rng: &mut impl rand::Rng,
    ) -> Tensor<B, 1> {
        let special = self.config.transformer.special;
        let device = self.device();
        let fits: Vec<usize> = (0..sources.len())
            .filter(|&i| {
                !targets[i].is_empty()
                    && ctc_min_positions(&targets[i]) <= self.ctc_positions(sources[i].len())
            })
            .collect();
        // When nothing fits, only the smoothing term is left to learn from.
        let chosen: Vec<usize> = if fits.is_empty() {
            (0..sources.len()).collect()
        } else {
            fits.clone()
        };
        let sources: Vec<&[u32]> = chosen.iter().map(|&i| sources[i]).collect();
        let targets: Vec<Vec<u32>> = chosen.iter().map(|&i| targets[i].clone()).collect();
        let frames: Vec<usize> = sources
            .iter()
            .map(|s| self.ctc_positions(s.len()))
            .collect();
        let encoded = self.encode(paragen_data::batch::pad_to_tensor(
            &sources,
            special.pad,
            &device,
        ));
        let mut input = self.ctc_input(&sources);
        if glance_ratio > 0.0 {
            let first = log_softmax(
                self.decode_logits(
                    &super::pass::detach(&encoded),
                    paragen_data::batch::pad_to_tensor(
                        &paragen_data::batch::as_slices(&input),
                        special.pad,
                        &device,
                    ),
                ),
                2,
            )
            .detach();
            glance(&mut input, first, &targets, special.mask, glance_ratio, rng);
        }
        let tgt_in = paragen_data::batch::pad_to_tensor(
            &paragen_data::batch::as_slices(&input),
            special.pad,
            &device,
        );
        let log_probs = log_softmax(self.decode_logits(&encoded, tgt_in), 2);
        // Label smoothing: the mean negative log-probability over the vocabulary at every
        // real position.
        let [batch, width, _] = log_probs.dims();
        let keep: Vec<f32> = frames
            .iter()
            .flat_map(|&f| (0..width).map(move |t| if t < f { 1.0 } else { 0.0 }))
            .collect();
        let keep = Tensor::<B, 2>::from_data(TensorData::new(keep, [batch, width]), &device);
        let smooth = (-log_probs.clone().mean_dim(2).squeeze_dim::<2>(2) * keep).sum()
            / frames.iter().sum::<usize>() as f64;
        if fits.is_empty() {
            return smooth;
        }
        let nll = ctc_nll_sum(log_probs, &targets, &frames, special.mask);
        let tokens: usize = targets.iter().map(|t| t.len()).sum();
        let ctc = nll / tokens as f64;
        ctc * (1.0 - label_smoothing) + smooth * label_smoothing
    }
}

/// Glancing for CTC: reveals, per sentence, `ceil(ratio x wrong)` random positions'
/// best-alignment labels, where `wrong` counts positions whose first-pass argmax differs
/// from the alignment.
fn glance<B: Backend>(
    input: &mut [Vec<u32>],
    log_probs: Tensor<B, 3>,
    targets: &[Vec<u32>],
    blank: u32,
    ratio: f64,
    rng: &mut impl rand::Rng,
) {
    let [_, width, vocab] = log_probs.dims();
    let guesses: Vec<i64> = log_probs
        .clone()
        .argmax(2)
        .into_data()
        .iter::<i64>()
        .collect();
    // Log-probabilities of each target's labels (its tokens, then the blank) only.
    let (ids, labels) = label_ids::<B>(targets, width, blank, &log_probs.device());
    debug_assert!(labels <= vocab);
    let picked: Vec<f32> = log_probs.gather(2, ids).into_data().iter::<f32>().collect();
    for (i, target) in targets.iter().enumerate() {
        let frames = input[i].len();
        let at = |t: usize, k: usize| picked[(i * width + t) * labels + k];
        let Some(path) = ctc_best_alignment(target, frames, blank, at) else {
            continue;
        };
        let wrong: Vec<usize> = (0..frames)
            .filter(|&t| guesses[i * width + t] != i64::from(path[t]))
            .collect();
        let reveal = (ratio * wrong.len() as f64).ceil() as usize;
        let mut positions: Vec<usize> = (0..frames).collect();
        positions.shuffle(rng);
        for &t in positions.iter().take(reveal.min(frames)) {
            input[i][t] = path[t];
        }
    }
}

/// One parallel CTC pass: argmax at every position, then [`ctc_collapse`]. The score is
/// the mean best log-probability over the positions.
pub(super) fn ctc_decode<B: Backend>(
    model: &NatStudent<B>,
    sources: &[Vec<u32>],
    options: super::NatDecoding,
) -> Result<Vec<Vec<NatCandidate>>, ModelError> {
    let special = model.config.transformer.special;
    let device = model.device();
    let slices: Vec<&[u32]> = sources.iter().map(|s| s.as_slice()).collect();
    let encoded = model.encode(paragen_data::batch::pad_to_tensor(
        &slices,
        special.pad,
        &device,
    ));
    let input = model.ctc_input(&slices);
    let tgt_in = paragen_data::batch::pad_to_tensor(
        &paragen_data::batch::as_slices(&input),
        special.pad,
        &device,
    );
    let width = tgt_in.dims()[1];
    let frames: Vec<usize> = input.iter().map(|row| row.len()).collect();
    let vocabulary = model.output_vocabulary(&slices);
    let (best, ids) = model.decode_best(
        &encoded,
        tgt_in,
        &frames,
        options.blank_penalty,
        vocabulary.as_deref(),
    );
    Ok(input
        .iter()
        .enumerate()
        .map(|(i, row)| {
            let frames = row.len();
            let positions: Vec<u32> = ids[i * width..i * width + frames]
                .iter()
                .map(|&t| t as u32)
                .collect();
            let tokens = if options.collapse_repeats {
                super::pass::output_tokens(ctc_collapse(&positions, special.mask), special)
            } else {
                super::pass::output_tokens(positions, special)
            };
            let score = best[i * width..i * width + frames].iter().sum::<f32>() / frames as f32;
            vec![NatCandidate { tokens, score }]
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TransformerConfig;
    use crate::nat::{NatConfig, NatDecoding, nat_decode};
    use paragen_backend::TestBackend;
    use paragen_data::SpecialTokens;
    use rand::SeedableRng;

    type B = TestBackend;

    fn ctc_student(upsample: usize) -> NatStudent<B> {
        B::seed(&Default::default(), 3);
        let mut config = NatConfig::new(TransformerConfig::tiny(24, SpecialTokens::trained()));
        config.decoder = crate::nat::NatDecoder::Ctc { upsample };
        NatStudent::new(&config, &Default::default()).unwrap()
    }

    #[test]
    fn the_decoder_reads_each_source_token_upsample_times() {
        let model = ctc_student(2);
        let input = model.ctc_input(&[&[5, 6, 7], &[9]]);
        assert_eq!(input, vec![vec![5, 5, 6, 6, 7, 7], vec![9, 9]]);
        assert_eq!(
            model.ctc_positions(1000),
            model.config().transformer.max_positions
        );
    }

    #[test]
    fn a_ctc_student_decodes_in_one_pass_without_blanks_and_refuses_refinement() {
        let model = ctc_student(3);
        let sources = vec![vec![5u32, 6, 7, 8], vec![9, 10]];
        let out = nat_decode(&model, &sources, NatDecoding::default()).unwrap();
        assert_eq!(out.len(), 2);
        for (candidates, source) in out.iter().zip(&sources) {
            assert_eq!(candidates.len(), 1);
            let tokens = &candidates[0].tokens;
            assert!(tokens.len() <= 3 * source.len());
            assert!(!tokens.contains(&model.config().transformer.special.mask));
            assert!(candidates[0].score.is_finite() && candidates[0].score <= 0.0);
        }
        for options in [
            NatDecoding {
                iterations: 2,
                ..Default::default()
            },
            NatDecoding {
                length_beam: 2,
                ..Default::default()
            },
        ] {
            let err = nat_decode(&model, &sources, options).unwrap_err();
            assert!(err.to_string().contains("CTC"), "{err}");
        }
    }

    #[test]
    fn a_blank_penalty_lengthens_the_output_and_a_negative_one_shortens_it() {
        let model = ctc_student(3);
        let sources = vec![vec![5u32, 6, 7, 8, 9, 10]];
        let length = |blank_penalty: f32| {
            let options = NatDecoding {
                blank_penalty,
                collapse_repeats: false,
                ..Default::default()
            };
            nat_decode(&model, &sources, options).unwrap()[0][0]
                .tokens
                .len()
        };
        // Forcing the blank leaves nothing; forbidding it, a token (or a special one,
        // which the output drops) at each of the 18 positions.
        assert_eq!(length(-1e4), 0);
        assert!(length(0.0) <= length(2.0) && length(2.0) <= length(1e4));
        assert!(length(1e4) > 0 && length(1e4) <= 18);
        let cmlm = NatStudent::<B>::new(
            &NatConfig::new(TransformerConfig::tiny(24, SpecialTokens::trained())),
            &Default::default(),
        )
        .unwrap();
        let options = NatDecoding {
            blank_penalty: 1.0,
            ..Default::default()
        };
        let err = nat_decode(&cmlm, &sources, options).unwrap_err();
        assert!(err.to_string().contains("CTC"), "{err}");
    }

    #[test]
    fn the_loss_is_finite_with_and_without_glancing_even_when_a_target_cannot_fit() {
        let model = ctc_student(2);
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        let sources: [&[u32]; 2] = [&[5, 6, 7], &[8]];
        // The second target needs 4 positions (two tokens, a blank between the equal
        // ones) but its source gets 2: it is left out.
        let targets = vec![vec![9, 10, 11], vec![12, 12, 13]];
        for glance in [0.0, 0.5] {
            let loss = model
                .ctc_loss(&sources, &targets, 0.1, glance, &mut rng)
                .into_scalar();
            assert!(loss.is_finite() && loss > 0.0, "glance {glance}: {loss}");
        }
        // Nothing fits: only the smoothing term is left, still finite.
        let loss = model
            .ctc_loss(&sources[1..], &targets[1..], 0.1, 0.5, &mut rng)
            .into_scalar();
        assert!(loss.is_finite() && loss > 0.0, "{loss}");
    }

    #[test]
    fn the_host_ctc_loss_equals_burns_in_value_and_gradient() {
        use burn::tensor::Distribution;
        type A = paragen_backend::TestAutodiffBackend;
        let device = Default::default();
        A::seed(&device, 11);
        let (blank, frames) = (0u32, [6usize, 4]);
        let targets = vec![vec![1u32, 2, 2], vec![3]];
        let logits = Tensor::<A, 3>::random([2, 6, 7], Distribution::Normal(0.0, 2.0), &device)
            .require_grad();
        let ours = ctc_nll_sum(log_softmax(logits.clone(), 2), &targets, &frames, blank);
        let ours_gradient = logits.grad(&ours.backward()).unwrap();

        let ints = |v: Vec<i64>| {
            let n = v.len();
            Tensor::<A, 1, Int>::from_data(TensorData::new(v, [n]), &device)
        };
        let padded = Tensor::<A, 2, Int>::from_data(
            TensorData::new(vec![1i64, 2, 2, 3, 0, 0], [2, 3]),
            &device,
        );
        let reference = burn::tensor::module::ctc_loss(
            log_softmax(logits.clone(), 2).swap_dims(0, 1),
            padded,
            ints(vec![6, 4]),
            ints(vec![3, 1]),
            blank as usize,
        )
        .sum();
        let reference_gradient = logits.grad(&reference.backward()).unwrap();

        let (ours, reference) = (ours.into_scalar(), reference.into_scalar());
        assert!((ours - reference).abs() < 1e-4, "{ours} vs {reference}");
        ours_gradient
            .into_data()
            .assert_approx_eq::<f32>(&reference_gradient.into_data(), Default::default());
    }

    #[test]
    fn collapsing_merges_repeats_then_drops_blanks() {
        let blank = 4;
        assert_eq!(
            ctc_collapse(&[7, 7, 4, 7, 9, 9, 4, 4], blank),
            vec![7, 7, 9]
        );
        assert_eq!(ctc_collapse(&[4, 4], blank), Vec::<u32>::new());
    }

    #[test]
    fn equal_neighbours_need_a_blank_between_them() {
        assert_eq!(ctc_min_positions(&[5, 6, 7]), 3);
        assert_eq!(ctc_min_positions(&[5, 5, 5]), 5);
    }

    #[test]
    fn the_best_alignment_follows_the_likeliest_positions_and_collapses_to_the_target() {
        let (target, blank) = ([10u32, 11, 11], 4);
        // Position t strongly prefers label `likes[t]` (index into target; 3 = blank).
        let likes = [0usize, 0, 1, 3, 2, 3];
        let path = ctc_best_alignment(&target, likes.len(), blank, |t, k| {
            if likes[t] == k { -0.1 } else { -5.0 }
        })
        .unwrap();
        assert_eq!(path, vec![10, 10, 11, 4, 11, 4]);
        assert_eq!(ctc_collapse(&path, blank), target.to_vec());
        // Too few positions for "11 11" (which needs a blank between them).
        assert!(ctc_best_alignment(&target, 3, blank, |_, _| 0.0).is_none());
    }
}
