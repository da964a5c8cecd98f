//! The non-autoregressive student: a conditional masked language model (CMLM,
//! Ghazvininejad et al. 2019) with a length classifier (Gu et al. 2018).
//!
//! The decoder sees no target tokens at inference: every position starts as `<mask>`
//! (plus its position), attends to all other positions (no causal mask) and to the
//! source, and predicts all tokens at once. Training masks a random number of target
//! positions and predicts them; a classifier over the pooled encoder output predicts the
//! target length as an offset from the source length.
//!
//! With [`NatConfig::ctc_upsample`] set, the student is a CTC model instead (see
//! [`ctc`]): no length classifier at inference, a decoder `upsample` times longer than
//! the source, and blanks.

pub mod ctc;

use burn::nn::{
    Embedding, EmbeddingConfig, Initializer, LayerNorm, LayerNormConfig, Linear, LinearConfig,
};
use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::activation::log_softmax;
use serde::{Deserialize, Serialize};

use crate::config::TransformerConfig;
use crate::layers::{DecoderLayer, EncoderLayer, materialize, padding_mask, sinusoidal_positions};
use crate::teacher::{EncoderOutput, ModelError, Transformer};

/// Shapes of a NAT student: a Transformer plus the length classifier's range.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NatConfig {
    pub transformer: TransformerConfig,
    /// Largest |target length - source length| the classifier can express.
    pub max_length_offset: usize,
    /// Weight of the length loss next to the token loss.
    pub length_loss_weight: f64,
    /// CTC output over a decoder this many times longer than the source, instead of a
    /// CMLM decoder of the predicted length (`None`). 2-3 in the literature.
    #[serde(default)]
    pub ctc_upsample: Option<usize>,
}

impl NatConfig {
    pub fn new(transformer: TransformerConfig) -> Self {
        Self {
            transformer,
            max_length_offset: 32,
            length_loss_weight: 0.1,
            ctc_upsample: None,
        }
    }

    /// Number of length classes: offsets `-max..=max`.
    pub fn length_classes(&self) -> usize {
        2 * self.max_length_offset + 1
    }
}

/// CMLM non-autoregressive Transformer.
#[derive(Module, Debug)]
pub struct NatStudent<B: Backend> {
    embedding: Embedding<B>,
    encoder: Vec<EncoderLayer<B>>,
    encoder_norm: LayerNorm<B>,
    decoder: Vec<DecoderLayer<B>>,
    decoder_norm: LayerNorm<B>,
    length_head: Linear<B>,
    #[module(skip)]
    config: NatConfig,
}

/// Output of a parallel decoding pass.
#[derive(Clone, Debug)]
pub struct NatOutput<B: Backend> {
    /// `[batch, tgt_time, vocab]`
    pub log_probs: Tensor<B, 3>,
}

impl<B: Backend> NatStudent<B> {
    pub fn new(config: &NatConfig, device: &B::Device) -> Result<Self, ModelError> {
        let t = &config.transformer;
        t.validate().map_err(ModelError::Config)?;
        let d = t.d_model;
        Ok(materialize(Self {
            embedding: EmbeddingConfig::new(t.vocab_size, d)
                .with_initializer(Initializer::Normal {
                    mean: 0.0,
                    std: (d as f64).powf(-0.5),
                })
                .init(device),
            encoder: (0..t.encoder_layers)
                .map(|_| EncoderLayer::new(d, t.n_heads, t.d_ff, t.dropout, device))
                .collect(),
            encoder_norm: LayerNormConfig::new(d).init(device),
            decoder: (0..t.decoder_layers)
                .map(|_| DecoderLayer::new(d, t.n_heads, t.d_ff, t.dropout, device))
                .collect(),
            decoder_norm: LayerNormConfig::new(d).init(device),
            length_head: LinearConfig::new(d, config.length_classes()).init(device),
            config: config.clone(),
        }))
    }

    pub fn config(&self) -> &NatConfig {
        &self.config
    }

    pub fn device(&self) -> B::Device {
        self.embedding.weight.device()
    }

    fn embed(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let [batch, time] = tokens.dims();
        let d = self.config.transformer.d_model;
        let positions = sinusoidal_positions::<B>(0, time, d, &tokens.device());
        self.embedding.forward(tokens) * (d as f64).sqrt()
            + positions.unsqueeze_dim::<3>(0).expand([batch, time, d])
    }

    /// Encodes a padded source batch, `[batch, src_time]`.
    pub fn encode(&self, src: Tensor<B, 2, Int>) -> EncoderOutput<B> {
        let src_mask = padding_mask(&src, self.config.transformer.special.pad);
        let mut x = self.embed(src);
        for layer in &self.encoder {
            x = layer.forward(x, src_mask.clone());
        }
        EncoderOutput {
            memory: self.encoder_norm.forward(x),
            src_mask,
        }
    }

    /// Length-offset logits from the mean of the non-pad encoder states, `[batch, classes]`.
    pub fn length_logits(&self, encoded: &EncoderOutput<B>) -> Tensor<B, 2> {
        let keep = encoded.src_mask.clone().bool_not().float().swap_dims(1, 2); // [b, s, 1]
        let summed = (encoded.memory.clone() * keep.clone())
            .sum_dim(1)
            .squeeze_dim::<2>(1);
        let count = keep.sum_dim(1).squeeze_dim::<2>(1).clamp_min(1.0);
        self.length_head.forward(summed / count)
    }

    /// Predicts every target position in parallel from (partially) masked inputs.
    ///
    /// # Shapes
    /// - `tgt_in`: `[batch, tgt_time]`: `<mask>` or tokens, padded with pad.
    /// - returns log-probabilities `[batch, tgt_time, vocab]`.
    pub fn decode(&self, encoded: &EncoderOutput<B>, tgt_in: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        log_softmax(self.decode_logits(encoded, tgt_in), 2)
    }

    fn decode_logits(&self, encoded: &EncoderOutput<B>, tgt_in: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let self_mask = padding_mask(&tgt_in, self.config.transformer.special.pad);
        let mut x = self.embed(tgt_in);
        for layer in &self.decoder {
            x = layer.forward(
                x,
                encoded.memory.clone(),
                self_mask.clone(),
                encoded.src_mask.clone(),
            );
        }
        let h = self.decoder_norm.forward(x);
        let [batch, time, d] = h.dims();
        h.reshape([batch * time, d])
            .matmul(self.embedding.weight.val().transpose())
            .reshape([batch, time, self.config.transformer.vocab_size])
    }

    /// Starts from the teacher's weights (Guo et al. 2020: a NAT initialised from its
    /// AR teacher converges much faster): the shared embedding, the encoder and the
    /// first decoder layers, as many as both models have; the rest keep their random
    /// initialisation. Width, heads, feed-forward width and vocabulary must match.
    pub fn init_from_teacher(&mut self, teacher: &Transformer<B>) -> Result<(), ModelError> {
        self.config
            .transformer
            .check_layers_fit(teacher.config())
            .map_err(ModelError::Config)?;
        self.embedding = teacher.embedding.clone();
        copy_layers(&mut self.encoder, &teacher.encoder);
        copy_layers(&mut self.decoder, &teacher.decoder);
        self.encoder_norm = teacher.encoder_norm.clone();
        self.decoder_norm = teacher.decoder_norm.clone();
        Ok(())
    }

    /// Target-length class of each pair: `clamp(tgt - src, -max, max) + max`.
    pub fn length_targets(&self, src_lens: &[usize], tgt_lens: &[usize]) -> Vec<i64> {
        let max = self.config.max_length_offset as i64;
        src_lens
            .iter()
            .zip(tgt_lens)
            .map(|(&s, &t)| (t as i64 - s as i64).clamp(-max, max) + max)
            .collect()
    }

    /// The `beam` most likely target lengths per sentence, best first (at least 1).
    pub fn predict_lengths(
        &self,
        encoded: &EncoderOutput<B>,
        src_lens: &[usize],
        beam: usize,
    ) -> Vec<Vec<usize>> {
        let max = self.config.max_length_offset as i64;
        let beam = beam.clamp(1, self.config.length_classes());
        let (_, classes) = self.length_logits(encoded).topk_with_indices(beam, 1);
        let classes: Vec<i64> = classes.into_data().iter::<i64>().collect();
        let limit = self.config.transformer.max_positions as i64;
        src_lens
            .iter()
            .enumerate()
            .map(|(i, &s)| {
                classes[i * beam..(i + 1) * beam]
                    .iter()
                    .map(|&c| (s as i64 + c - max).clamp(1, limit) as usize)
                    .collect()
            })
            .collect()
    }

    /// Number of trainable scalars.
    pub fn param_count(&self) -> usize {
        self.num_params()
    }

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

/// The encoder output cut from the autodiff graph, for passes that must not train it.
fn detach<B: Backend>(encoded: &EncoderOutput<B>) -> EncoderOutput<B> {
    EncoderOutput {
        memory: encoded.memory.clone().detach(),
        src_mask: encoded.src_mask.clone(),
    }
}

/// Per position of `logits` (`[batch, time, vocab]`, flattened row-major): the best
/// token and its log-probability. Cheaper than a full `log_softmax`: only the log of the
/// normaliser is computed, never the whole log-probability tensor.
fn best_log_probs<B: Backend>(logits: Tensor<B, 3>) -> (Vec<f32>, Vec<i64>) {
    let (best, ids) = logits.clone().max_dim_with_indices(2);
    let normaliser = (logits - best.clone()).exp().sum_dim(2).log();
    let best: Vec<f32> = (-normaliser).into_data().iter::<f32>().collect();
    (best, rows_to_vec(ids))
}

/// Overwrites the first layers of `to` with clones of `from`'s.
pub(crate) fn copy_layers<L: Clone>(to: &mut [L], from: &[L]) {
    for (to, from) in to.iter_mut().zip(from) {
        *to = from.clone();
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

/// How a NAT student decodes.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct NatDecoding {
    /// Target lengths tried per sentence (1: only the most likely).
    pub length_beam: usize,
    /// Mask-predict passes (1: one parallel pass).
    pub iterations: usize,
    /// Merge runs of the same token into one: parallel decoders tend to write a token
    /// at two neighbouring positions ("the the"), the classic NAT failure (Gu et al.).
    pub collapse_repeats: bool,
}

impl NatDecoding {
    /// Short name for reports: `one-pass`, `length-beam-3`, `mask-predict-4`, ...
    pub fn name(&self) -> String {
        let mut name = match self.iterations {
            0 | 1 => "one-pass".to_string(),
            k => format!("mask-predict-{k}"),
        };
        if self.length_beam > 1 {
            name = format!("{name}-lb{}", self.length_beam);
        }
        name
    }
}

impl Default for NatDecoding {
    fn default() -> Self {
        Self {
            length_beam: 1,
            iterations: 1,
            collapse_repeats: true,
        }
    }
}

/// A decoded candidate with its average token log-probability.
#[derive(Clone, Debug, PartialEq)]
pub struct NatCandidate {
    pub tokens: Vec<u32>,
    pub score: f32,
}

fn rows_to_vec<B: Backend, const D: usize>(t: Tensor<B, D, Int>) -> Vec<i64> {
    t.into_data().iter::<i64>().collect()
}

/// Decodes sources in parallel: predicts lengths, then runs `iterations` passes of
/// mask-predict (Ghazvininejad et al. 2019) over every length candidate at once.
/// Returns, per source, all candidates (length-beam order) so callers can rescore; the
/// best by the student's own score is [`best_candidate`].
pub fn nat_decode<B: Backend>(
    model: &NatStudent<B>,
    sources: &[Vec<u32>],
    options: NatDecoding,
) -> Result<Vec<Vec<NatCandidate>>, ModelError> {
    let config = &model.config().transformer;
    let src_lens: Vec<usize> = sources.iter().map(|s| s.len()).collect();
    config.check_source_lengths(&src_lens)?;
    if model.config().ctc_upsample.is_some() {
        if options.iterations > 1 || options.length_beam > 1 {
            return Err(ModelError::Unsupported(
                "a CTC student decodes in one pass: its length is not predicted, so there \
                 is no length beam, and mask-predict needs a CMLM student"
                    .into(),
            ));
        }
        return ctc::ctc_decode(model, sources, options.collapse_repeats);
    }
    let device = model.device();
    let special = config.special;
    let slices: Vec<&[u32]> = sources.iter().map(|s| s.as_slice()).collect();
    let src = paragen_data::batch::pad_to_tensor(&slices, special.pad, &device);
    let encoded = model.encode(src);
    let lengths = model.predict_lengths(&encoded, &src_lens, options.length_beam);
    let beam = lengths[0].len();
    // Row `i * beam + j` decodes sentence `i` at its `j`-th length candidate.
    let rows: Vec<usize> = (0..sources.len() * beam).collect();
    let row_lengths: Vec<usize> = rows.iter().map(|&r| lengths[r / beam][r % beam]).collect();
    let expand: Vec<i64> = rows.iter().map(|&r| (r / beam) as i64).collect();
    let expand = Tensor::<B, 1, Int>::from_data(
        TensorData::new(expand, [rows.len()]).convert::<B::IntElem>(),
        &device,
    );
    let encoded = EncoderOutput {
        memory: encoded.memory.select(0, expand.clone()),
        src_mask: encoded.src_mask.select(0, expand),
    };
    let width = row_lengths.iter().copied().max().unwrap_or(1);
    let mut tokens: Vec<Vec<u32>> = row_lengths.iter().map(|&n| vec![special.mask; n]).collect();
    let mut probs: Vec<Vec<f32>> = row_lengths.iter().map(|&n| vec![0.0; n]).collect();
    let iterations = options.iterations.max(1);
    for it in 0..iterations {
        let input: Vec<&[u32]> = tokens.iter().map(|t| t.as_slice()).collect();
        let tgt = paragen_data::batch::pad_to_tensor(&input, special.pad, &device);
        let (best, ids) = best_log_probs(model.decode_logits(&encoded, tgt));
        for r in 0..rows.len() {
            for j in 0..row_lengths[r] {
                // Only masked positions are re-predicted (all of them in the first pass).
                if tokens[r][j] == special.mask {
                    tokens[r][j] = ids[r * width + j] as u32;
                    probs[r][j] = best[r * width + j];
                }
            }
        }
        if it + 1 < iterations {
            // Re-mask the n least confident tokens, n shrinking linearly to zero.
            for r in 0..rows.len() {
                let n = row_lengths[r] * (iterations - 1 - it) / iterations;
                let mut order: Vec<usize> = (0..row_lengths[r]).collect();
                order.sort_by(|&a, &b| probs[r][a].total_cmp(&probs[r][b]));
                for &j in order.iter().take(n) {
                    tokens[r][j] = special.mask;
                }
            }
        }
    }
    Ok((0..sources.len())
        .map(|i| {
            (0..beam)
                .map(|j| {
                    let r = i * beam + j;
                    let score = probs[r].iter().sum::<f32>() / row_lengths[r].max(1) as f32;
                    let mut kept = output_tokens(tokens[r].iter().copied(), special);
                    if options.collapse_repeats {
                        kept.dedup();
                    }
                    NatCandidate {
                        tokens: kept,
                        score,
                    }
                })
                .collect()
        })
        .collect())
}

/// What a NAT writes for the user: its tokens without BOS, EOS, padding and `<mask>`
/// (which a CTC student uses as its blank).
fn output_tokens(
    tokens: impl IntoIterator<Item = u32>,
    special: paragen_data::SpecialTokens,
) -> Vec<u32> {
    tokens
        .into_iter()
        .filter(|&t| t != special.eos && t != special.pad && t != special.bos && t != special.mask)
        .collect()
}

/// The candidate with the best average log-probability.
pub fn best_candidate(candidates: &[NatCandidate]) -> Vec<u32> {
    candidates
        .iter()
        .max_by(|a, b| a.score.total_cmp(&b.score))
        .map(|c| c.tokens.clone())
        .unwrap_or_default()
}

/// Noisy parallel decoding (Gu et al. 2018): the autoregressive `teacher` scores every
/// candidate of every source in one teacher-forced pass and the best per source wins.
pub fn rescore_with_teacher<B: Backend>(
    teacher: &Transformer<B>,
    sources: &[Vec<u32>],
    candidates: &[Vec<NatCandidate>],
) -> Result<Vec<Vec<u32>>, ModelError> {
    let (mut flat_sources, mut flat_targets) = (Vec::new(), Vec::new());
    for (source, options) in sources.iter().zip(candidates) {
        for candidate in options {
            flat_sources.push(source.clone());
            flat_targets.push(candidate.tokens.clone());
        }
    }
    let scores = teacher.sequence_scores(&flat_sources, &flat_targets)?;
    let mut next = 0;
    Ok(candidates
        .iter()
        .map(|options| {
            let scored = &scores[next..next + options.len()];
            next += options.len();
            let best = (0..options.len())
                .max_by(|&a, &b| scored[a].total_cmp(&scored[b]))
                .unwrap_or(0);
            options
                .get(best)
                .map(|c| c.tokens.clone())
                .unwrap_or_default()
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use paragen_backend::TestBackend;
    use paragen_data::SpecialTokens;

    type B = TestBackend;

    fn student(seed: u64) -> NatStudent<B> {
        B::seed(&Default::default(), seed);
        let special = SpecialTokens::trained();
        NatStudent::new(
            &NatConfig::new(TransformerConfig::tiny(24, special)),
            &Default::default(),
        )
        .unwrap()
    }

    fn pad(rows: &[&[u32]]) -> Tensor<B, 2, Int> {
        paragen_data::batch::pad_to_tensor::<B>(rows, 0, &Default::default())
    }

    #[test]
    fn length_logits_have_one_class_per_offset_and_ignore_padding() {
        let m = student(0);
        let short = m.length_logits(&m.encode(pad(&[&[5, 6, 7]])));
        assert_eq!(short.dims(), [1, 65]);
        let padded = m.length_logits(&m.encode(pad(&[&[5, 6, 7, 0, 0]])));
        short
            .into_data()
            .assert_approx_eq::<f32>(&padded.into_data(), burn::tensor::Tolerance::default());
        assert_eq!(
            m.length_targets(&[10, 10, 10], &[12, 100, 1]),
            vec![34, 64, 23]
        );
    }

    #[test]
    fn predicted_lengths_are_distinct_and_positive() {
        let m = student(1);
        let sources: Vec<Vec<u32>> = vec![vec![5, 6, 7], vec![8]];
        let slices: Vec<&[u32]> = sources.iter().map(|s| s.as_slice()).collect();
        let lengths = m.predict_lengths(&m.encode(pad(&slices)), &[3, 1], 3);
        for l in &lengths {
            assert_eq!(l.len(), 3);
            assert!(l.iter().all(|&n| n >= 1));
            assert!(
                l[0] != l[1] && l[1] != l[2] && l[0] != l[2] || l.contains(&1),
                "{l:?}"
            );
        }
    }

    #[test]
    fn one_iteration_of_mask_predict_is_the_one_pass_argmax() {
        let m = student(2);
        let sources = vec![vec![5, 6, 7, 8], vec![9, 10]];
        let decoded = nat_decode(
            &m,
            &sources,
            NatDecoding {
                length_beam: 1,
                iterations: 1,
                collapse_repeats: false,
            },
        )
        .unwrap();
        let slices: Vec<&[u32]> = sources.iter().map(|s| s.as_slice()).collect();
        let encoded = m.encode(pad(&slices));
        let lengths: Vec<usize> = m
            .predict_lengths(&encoded, &[4, 2], 1)
            .into_iter()
            .map(|l| l[0])
            .collect();
        let input = all_mask_input::<B>(&lengths, 4, 0, &Default::default());
        let ids: Vec<i64> = m
            .decode(&encoded, input)
            .argmax(2)
            .into_data()
            .iter::<i64>()
            .collect();
        let width = lengths.iter().copied().max().unwrap();
        for (i, candidates) in decoded.iter().enumerate() {
            let expect: Vec<u32> = ids[i * width..i * width + lengths[i]]
                .iter()
                .map(|&t| t as u32)
                .filter(|&t| t > 4)
                .collect();
            assert_eq!(candidates[0].tokens, expect);
        }
    }

    #[test]
    fn more_iterations_keep_the_length_and_a_finite_score() {
        let m = student(3);
        let sources = vec![vec![5, 6, 7, 8, 9, 10]];
        for iterations in [1, 2, 4, 10] {
            let out = nat_decode(
                &m,
                &sources,
                NatDecoding {
                    length_beam: 2,
                    iterations,
                    ..Default::default()
                },
            )
            .unwrap();
            assert_eq!(out[0].len(), 2);
            assert!(out[0].iter().all(|c| c.score.is_finite() && c.score <= 0.0));
        }
    }

    #[test]
    fn cmlm_masks_hide_between_one_and_all_positions() {
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        let masks = sample_cmlm_masks(&[1, 5, 9], &mut rng);
        for (m, n) in masks.iter().zip([1, 5, 9]) {
            let hidden = m.iter().filter(|&&h| h).count();
            assert_eq!(m.len(), n);
            assert!((1..=n).contains(&hidden));
        }
    }

    #[test]
    fn cmlm_loss_is_finite_and_positive() {
        let m = student(4);
        let targets = vec![vec![5, 6, 7], vec![8, 9]];
        let masks = vec![vec![true, false, true], vec![false, true]];
        let loss = m.cmlm_loss(
            pad(&[&[10, 11], &[12, 13, 14]]),
            &[2, 3],
            &targets,
            &masks,
            0.1,
        );
        let value = loss.into_scalar();
        assert!(value.is_finite() && value > 0.0, "{value}");
    }

    #[test]
    fn glancing_reveals_a_share_of_the_wrong_tokens_and_keeps_one_masked() {
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        let targets = vec![vec![5, 6, 7, 8], vec![5, 6, 7, 8], vec![9]];
        // First pass: sentence 0 all wrong, sentence 1 all right, sentence 2 wrong.
        let guess = |i: usize, j: usize| if i == 1 { targets[1][j] } else { 0 };
        let masks = glancing_masks(&targets, guess, 0.5, &mut rng);
        let hidden: Vec<usize> = masks
            .iter()
            .map(|m| m.iter().filter(|&&h| h).count())
            .collect();
        assert_eq!(hidden, vec![2, 4, 1]);
    }

    #[test]
    fn glat_loss_is_finite_and_positive() {
        use rand::SeedableRng;
        let m = student(5);
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let loss = m.glat_loss(
            pad(&[&[10, 11], &[12, 13, 14]]),
            &[2, 3],
            &[vec![5, 6, 7], vec![8, 9]],
            0.5,
            0.1,
            &mut rng,
        );
        let value = loss.into_scalar();
        assert!(value.is_finite() && value > 0.0, "{value}");
    }

    #[test]
    fn the_teacher_weights_can_be_copied_when_shapes_agree() {
        let special = SpecialTokens::trained();
        let config = TransformerConfig::tiny(24, special);
        let teacher = Transformer::<B>::new(&config, &Default::default()).unwrap();
        let mut m = student(6);
        m.init_from_teacher(&teacher).unwrap();
        let src = pad(&[&[5, 6, 7]]);
        let encoded = teacher.encode(src.clone());
        m.encode(src).memory.into_data().assert_approx_eq::<f32>(
            &encoded.memory.clone().into_data(),
            burn::tensor::Tolerance::default(),
        );
        // With one target token there is nothing to hide: the NAT decoder and the
        // teacher's causal decoder compute the same thing.
        let tgt = pad(&[&[9]]);
        m.decode(&encoded, tgt.clone())
            .into_data()
            .assert_approx_eq::<f32>(
                &burn::tensor::activation::log_softmax(teacher.decode(&encoded, tgt), 2)
                    .into_data(),
                burn::tensor::Tolerance::default(),
            );
        let wider = Transformer::<B>::new(
            &TransformerConfig {
                d_model: 64,
                ..config
            },
            &Default::default(),
        )
        .unwrap();
        let err = m.init_from_teacher(&wider).unwrap_err().to_string();
        assert!(err.contains("d_model 64"), "{err}");
    }

    #[test]
    fn teacher_rescoring_picks_the_candidate_the_teacher_prefers() {
        let special = SpecialTokens::trained();
        let teacher =
            Transformer::<B>::new(&TransformerConfig::tiny(24, special), &Default::default())
                .unwrap();
        let source = vec![5, 6, 7];
        let options: Vec<NatCandidate> = [vec![8, 9], vec![10, 11, 12], vec![13]]
            .into_iter()
            .map(|tokens| NatCandidate { tokens, score: 0.0 })
            .collect();
        let targets: Vec<Vec<u32>> = options.iter().map(|c| c.tokens.clone()).collect();
        let scores = teacher
            .sequence_scores(&vec![source.clone(); 3], &targets)
            .unwrap();
        let best = (0..3)
            .max_by(|&a, &b| scores[a].total_cmp(&scores[b]))
            .unwrap();
        let picked = rescore_with_teacher(&teacher, &[source], &[options]).unwrap();
        assert_eq!(picked, vec![targets[best].clone()]);
    }

    #[test]
    fn best_log_probs_are_the_maximum_of_the_log_softmax() {
        let logits = Tensor::<B, 3>::from_data(
            TensorData::from([[[0.0f32, 2.0, -1.0], [3.0, 3.5, 0.5]]]),
            &Default::default(),
        );
        let (best, ids) = best_log_probs(logits.clone());
        let (expect, expect_ids) = log_softmax(logits, 2).max_dim_with_indices(2);
        let expect: Vec<f32> = expect.into_data().iter::<f32>().collect();
        assert_eq!(ids, rows_to_vec(expect_ids));
        for (a, b) in best.iter().zip(&expect) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    #[test]
    fn collapsing_repeats_merges_neighbouring_copies_only() {
        let m = student(7);
        let sources = vec![vec![5, 6, 7, 8, 9, 10, 11, 12]];
        let raw = nat_decode(
            &m,
            &sources,
            NatDecoding {
                collapse_repeats: false,
                ..Default::default()
            },
        )
        .unwrap();
        let collapsed = nat_decode(&m, &sources, NatDecoding::default()).unwrap();
        let mut expect = raw[0][0].tokens.clone();
        expect.dedup();
        assert_eq!(collapsed[0][0].tokens, expect);
    }
}
