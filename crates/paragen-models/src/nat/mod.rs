//! The non-autoregressive student: a conditional masked language model (CMLM,
//! Ghazvininejad et al. 2019) with a length classifier (Gu et al. 2018).
//!
//! The decoder sees no target tokens at inference: every position starts as `<mask>`
//! (plus its position), attends to all other positions (no causal mask) and to the
//! source, and predicts all tokens at once. Training masks a random number of target
//! positions and predicts them; a classifier over the pooled encoder output predicts the
//! target length as an offset from the source length.
//!
//! With [`NatDecoder::Ctc`] the student is a CTC model instead (see [`ctc`]): no length
//! classifier at inference, a decoder `upsample` times longer than the source, and
//! blanks.
//!
//! - this module: the model (config, layers, encoder, length classifier, decoder pass);
//! - [`loss`]: CMLM and glancing (GLAT) training losses and their masks;
//! - [`decode`]: one-pass, length-beam and mask-predict decoding, teacher rescoring;
//! - [`ctc`]: the CTC decoder input, loss, Viterbi alignment and decoding;
//! - [`pass`]: what those share of one parallel pass (inputs, best tokens, candidates).

pub mod ctc;
pub mod decode;
pub mod loss;
pub mod pass;

pub use decode::{NatDecoding, best_candidate, nat_decode, rescore_with_teacher};
pub use loss::{glancing_masks, sample_cmlm_masks};
pub use pass::{NatCandidate, all_mask_input};

use std::sync::Arc;

use burn::nn::{DropoutConfig, Embedding, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::activation::log_softmax;
use serde::{Deserialize, Serialize};

use crate::config::TransformerConfig;
use crate::dense::{Dense, Quantize};
use crate::embedding::TiedEmbedding;
use crate::error::ModelError;
use crate::layers::{
    DecoderLayer, EncoderLayer, EncoderOutput, map_dense_layers, materialize, new_embeddings,
    new_stacks, padding_mask,
};
use crate::shortlist::Shortlist;
use crate::teacher::Transformer;

/// Shapes of a NAT student: a Transformer plus the length classifier's range.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NatConfig {
    pub transformer: TransformerConfig,
    /// Largest |target length - source length| the classifier can express.
    pub max_length_offset: usize,
    /// Weight of the length loss next to the token loss.
    pub length_loss_weight: f64,
    /// What the decoder writes and how its length is found.
    #[serde(default)]
    pub decoder: NatDecoder,
}

/// The two NAT decoders paragen trains.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NatDecoder {
    /// A CMLM decoder of the length the classifier predicts; refinable by mask-predict.
    #[default]
    Cmlm,
    /// CTC output over a decoder `upsample` times longer than the source (2-3 in the
    /// literature): no length prediction, repeats and blanks merged away.
    Ctc { upsample: usize },
}

/// Largest CTC upsampling a config may ask for (the literature uses 2-3).
pub const MAX_CTC_UPSAMPLE: usize = 8;

/// Decoder positions whose vocabulary logits [`NatStudent::decode_best`] holds at once:
/// 256 × 8k f32 is 8 MB, within this machine's cache, and still a GEMM large enough to
/// run at full speed.
pub const PROJECTION_ROWS: usize = 256;

/// Blank penalties a CTC student is tuned over on the valid split ([`NatDecoding::blank_penalty`]),
/// at validation during training and by `paragen tune`. A CTC student that under-generates
/// gains most from 2-5; beyond about 6, blanks stop winning the argmax at all.
pub const CTC_BLANK_PENALTIES: [f32; 8] = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0];

impl NatConfig {
    pub fn new(transformer: TransformerConfig) -> Self {
        Self {
            transformer,
            max_length_offset: 32,
            length_loss_weight: 0.1,
            decoder: NatDecoder::Cmlm,
        }
    }

    /// The same student with a CTC decoder `upsample` times the source length.
    pub fn ctc(transformer: TransformerConfig, upsample: usize) -> Self {
        Self {
            decoder: NatDecoder::Ctc { upsample },
            ..Self::new(transformer)
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
    embedding: TiedEmbedding<B>,
    learned_positions: Option<Embedding<B>>,
    encoder: Vec<EncoderLayer<B>>,
    encoder_norm: LayerNorm<B>,
    decoder: Vec<DecoderLayer<B>>,
    decoder_norm: LayerNorm<B>,
    length_head: Linear<B>,
    #[module(skip)]
    config: NatConfig,
    /// The lexical shortlist decoding projects onto, when one is set.
    #[module(skip)]
    shortlist: Option<Arc<Shortlist>>,
}

impl<B: Backend> NatStudent<B> {
    pub fn new(config: &NatConfig, device: &B::Device) -> Result<Self, ModelError> {
        let t = &config.transformer;
        t.validate().map_err(ModelError::Config)?;
        if config.max_length_offset > t.max_positions {
            return Err(ModelError::Config(format!(
                "max_length_offset ({}) cannot exceed max_positions ({})",
                config.max_length_offset, t.max_positions
            )));
        }
        if let NatDecoder::Ctc { upsample } = config.decoder
            && !(1..=MAX_CTC_UPSAMPLE).contains(&upsample)
        {
            return Err(ModelError::Config(format!(
                "CTC upsample ({upsample}) must be between 1 and {MAX_CTC_UPSAMPLE}"
            )));
        }
        let d = t.d_model;
        let (embedding, learned_positions) = new_embeddings(t, device);
        let (encoder, decoder) = new_stacks(t, device);
        Ok(materialize(Self {
            embedding,
            learned_positions,
            encoder,
            encoder_norm: LayerNormConfig::new(d).init(device),
            decoder,
            decoder_norm: LayerNormConfig::new(d).init(device),
            length_head: LinearConfig::new(d, config.length_classes()).init(device),
            config: config.clone(),
            shortlist: None,
        }))
    }

    pub fn config(&self) -> &NatConfig {
        &self.config
    }

    /// Decodes onto `shortlist`'s tokens only from now on (`None`: the whole vocabulary).
    /// Training never uses one.
    pub fn set_shortlist(&mut self, shortlist: Option<Arc<Shortlist>>) -> Result<(), ModelError> {
        if let Some(s) = &shortlist {
            s.validate(self.config.transformer.vocab_size)
                .map_err(ModelError::Config)?;
        }
        self.shortlist = shortlist;
        Ok(())
    }

    /// The sorted target tokens a batch of `sources` may produce: its shortlist, or
    /// `None` for the whole vocabulary.
    pub(crate) fn output_vocabulary(&self, sources: &[&[u32]]) -> Option<Vec<u32>> {
        self.shortlist
            .as_ref()
            .map(|s| s.allowed(sources, self.config.transformer.special))
    }

    pub fn device(&self) -> B::Device {
        self.embedding.device()
    }

    /// Token embeddings plus positions from 0, with embedding dropout: the same input
    /// side as the teacher's (learned or sinusoidal positions, as the config says).
    fn embed(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let dropout = DropoutConfig::new(self.config.transformer.dropout).init();
        crate::layers::embed(
            &self.embedding,
            self.learned_positions.as_ref(),
            &dropout,
            tokens,
            0,
        )
    }

    /// Encodes a padded source batch, `[batch, src_time]`.
    pub fn encode(&self, src: Tensor<B, 2, Int>) -> EncoderOutput<B> {
        let src_mask = padding_mask(&src, self.config.transformer.special.pad);
        crate::layers::encode(self.embed(src), src_mask, &self.encoder, &self.encoder_norm)
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

    pub(crate) fn decode_logits(
        &self,
        encoded: &EncoderOutput<B>,
        tgt_in: Tensor<B, 2, Int>,
    ) -> Tensor<B, 3> {
        self.embedding.project(self.decode_hidden(encoded, tgt_in))
    }

    /// The decoder's normalised output before the vocabulary projection,
    /// `[batch, time, d_model]`.
    fn decode_hidden(&self, encoded: &EncoderOutput<B>, tgt_in: Tensor<B, 2, Int>) -> Tensor<B, 3> {
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
        self.decoder_norm.forward(x)
    }

    /// The best token and its log-probability at the first `lengths[row]` decoder
    /// positions of each row (flattened row-major over `[batch, time]`; padding positions
    /// get token pad and 0), with `blank_penalty` subtracted from the logit of `<mask>`
    /// first (0 leaves it). With a `vocabulary` (sorted ids that hold every special
    /// token, from [`Self::output_vocabulary`]) only its tokens are projected, and the
    /// log-probabilities are normalised over them.
    ///
    /// Only real positions are projected onto the vocabulary, [`PROJECTION_ROWS`] at a
    /// time: in a batch of 64 the padding can be half the positions, and the logits of
    /// the whole batch (64 × 120 positions × 8k vocabulary = 245 MB) would not stay in
    /// cache.
    pub(crate) fn decode_best(
        &self,
        encoded: &EncoderOutput<B>,
        tgt_in: Tensor<B, 2, Int>,
        lengths: &[usize],
        blank_penalty: f32,
        vocabulary: Option<&[u32]>,
    ) -> (Vec<f32>, Vec<i64>) {
        let hidden = self.decode_hidden(encoded, tgt_in);
        let [batch, time, d] = hidden.dims();
        let device = hidden.device();
        let rows = hidden.reshape([batch * time, d]);
        let special = self.config.transformer.special;
        let projection = self.embedding.projection(vocabulary);
        let blank = match vocabulary {
            Some(ids) => ids
                .binary_search(&special.mask)
                .expect("an output vocabulary holds every special token"),
            None => special.mask as usize,
        };
        let vocab = projection.tokens();
        let positions: Vec<i64> = lengths
            .iter()
            .enumerate()
            .flat_map(|(r, &n)| (0..n.min(time)).map(move |j| (r * time + j) as i64))
            .collect();
        let (mut best, mut ids) = (
            vec![0f32; batch * time],
            vec![i64::from(special.pad); batch * time],
        );
        for chunk in positions.chunks(PROJECTION_ROWS) {
            let index = Tensor::<B, 1, Int>::from_data(
                TensorData::new(chunk.to_vec(), [chunk.len()]).convert::<B::IntElem>(),
                &device,
            );
            let logits = projection.apply(rows.clone().select(0, index));
            let mut logits = logits
                .into_data()
                .convert::<f32>()
                .into_vec::<f32>()
                .expect("the logits of a float model are f32");
            let (chunk_best, chunk_ids) =
                pass::best_log_probs_of_rows(&mut logits, vocab, blank, blank_penalty);
            for ((&p, b), i) in chunk.iter().zip(chunk_best).zip(chunk_ids) {
                best[p as usize] = b;
                ids[p as usize] = match vocabulary {
                    Some(vocabulary) => i64::from(vocabulary[i as usize]),
                    None => i,
                };
            }
        }
        (best, ids)
    }

    /// Starts from the teacher's weights (Guo et al. 2020: a NAT initialised from its
    /// AR teacher converges much faster): the shared embedding, the encoder and the
    /// first decoder layers, as many as both models have; the rest keep their random
    /// initialisation. Width, heads, feed-forward width and vocabulary must match.
    pub fn init_from_teacher(&mut self, teacher: &Transformer<B>) -> Result<(), ModelError> {
        teacher.check_float()?;
        self.config
            .transformer
            .check_layers_fit(teacher.config())
            .map_err(ModelError::Config)?;
        teacher.copy_shared_into(crate::teacher::SharedParts {
            embedding: &mut self.embedding,
            learned_positions: &mut self.learned_positions,
            encoder: &mut self.encoder,
            encoder_norm: &mut self.encoder_norm,
            decoder: &mut self.decoder,
            decoder_norm: &mut self.decoder_norm,
        });
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

    /// Number of weights, whether float or quantized.
    pub fn param_count(&self) -> usize {
        crate::dense::weight_count(self, self.quantized_bits())
    }
}

impl<B: Backend> Quantize<B> for NatStudent<B> {
    fn map_weights(
        self,
        layer: &mut impl FnMut(Dense<B>) -> Dense<B>,
        table: impl FnOnce(TiedEmbedding<B>) -> TiedEmbedding<B>,
    ) -> Self {
        let (encoder, decoder) = map_dense_layers(self.encoder, self.decoder, layer);
        Self {
            embedding: table(self.embedding),
            encoder,
            decoder,
            ..self
        }
    }

    fn quantized_bits(&self) -> Option<u8> {
        self.encoder
            .first()
            .and_then(|layer| layer.quantized_bits())
    }
}

impl<B: Backend> crate::prune::Prune<B> for NatStudent<B> {
    fn transformer_config(&self) -> &TransformerConfig {
        &self.config.transformer
    }

    fn layers(&self) -> (&[EncoderLayer<B>], &[DecoderLayer<B>]) {
        (&self.encoder, &self.decoder)
    }

    fn with_layers(
        self,
        encoder: Vec<EncoderLayer<B>>,
        decoder: Vec<DecoderLayer<B>>,
        transformer: TransformerConfig,
    ) -> Self {
        Self {
            encoder,
            decoder,
            config: NatConfig {
                transformer,
                ..self.config
            },
            ..self
        }
    }
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
                blank_penalty: 0.0,
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
    fn a_student_of_a_learned_position_teacher_encodes_like_it() {
        // The NAT shares the teacher's embedding and encoder code, so it cannot drift
        // from it: with learned positions copied, both encoders agree.
        let special = SpecialTokens::trained();
        let config = TransformerConfig {
            positions: crate::config::PositionKind::Learned,
            ..TransformerConfig::tiny(24, special)
        };
        B::seed(&Default::default(), 3);
        let teacher = Transformer::<B>::new(&config, &Default::default()).unwrap();
        let mut m = NatStudent::<B>::new(&NatConfig::new(config), &Default::default()).unwrap();
        let src = pad(&[&[5, 6, 7, 8], &[9, 10, 0, 0]]);
        let before = m.encode(src.clone()).memory;
        m.init_from_teacher(&teacher).unwrap();
        let expected = teacher.encode(src.clone()).memory.into_data();
        m.encode(src)
            .memory
            .into_data()
            .assert_approx_eq::<f32>(&expected, burn::tensor::Tolerance::default());
        let moved = (before.into_data().iter::<f32>())
            .zip(expected.iter::<f32>())
            .any(|(a, b)| (a - b).abs() > 1e-3);
        assert!(moved, "the copy must change the student's encoder output");
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
    fn the_chunked_projection_gives_the_best_tokens_of_the_whole_logits() {
        let m = student(11);
        let special = m.config().transformer.special;
        // More positions than one chunk holds, the last chunk partial.
        let (batch, time) = (6, 50);
        assert!(batch * time > PROJECTION_ROWS && batch * time % PROJECTION_ROWS != 0);
        let source: Vec<u32> = (5..20).collect();
        let encoded = m.encode(pad(&vec![source.as_slice(); batch]));
        let input =
            || Tensor::<B, 2, Int>::full([batch, time], special.mask as i64, &Default::default());
        let vocab = m.config().transformer.vocab_size;
        for penalty in [0.0, 2.5] {
            let (best, ids) = m.decode_best(&encoded, input(), &vec![time; batch], penalty, None);
            let mut logits: Vec<f32> = m
                .decode_logits(&encoded, input())
                .into_data()
                .iter::<f32>()
                .collect();
            let (expect, expect_ids) =
                pass::best_log_probs_of_rows(&mut logits, vocab, special.mask as usize, penalty);
            assert_eq!(ids, expect_ids, "blank penalty {penalty}");
            for (a, b) in best.iter().zip(&expect) {
                assert!((a - b).abs() < 1e-4, "{a} vs {b}");
            }
            // Rows shorter than the batch: the same values at their positions, pad after.
            let lengths = [50, 3, 0, 17, 49, 1];
            let (short_best, short_ids) = m.decode_best(&encoded, input(), &lengths, penalty, None);
            for (r, &n) in lengths.iter().enumerate() {
                for j in 0..time {
                    let at = r * time + j;
                    if j < n {
                        assert_eq!((short_best[at], short_ids[at]), (best[at], ids[at]));
                    } else {
                        assert_eq!((short_best[at], short_ids[at]), (0.0, special.pad as i64));
                    }
                }
            }
        }
    }

    #[test]
    fn a_shortlist_projection_is_the_whole_logits_restricted_to_its_tokens() {
        let m = student(12);
        let special = m.config().transformer.special;
        let (batch, time) = (3, 7);
        let source: Vec<u32> = (5..12).collect();
        let encoded = m.encode(pad(&vec![source.as_slice(); batch]));
        let input =
            || Tensor::<B, 2, Int>::full([batch, time], special.mask as i64, &Default::default());
        let vocab = m.config().transformer.vocab_size;
        let allowed: Vec<u32> = vec![0, 1, 2, 3, 4, 6, 9, 13, 20];
        let logits: Vec<f32> = m
            .decode_logits(&encoded, input())
            .into_data()
            .iter::<f32>()
            .collect();
        for penalty in [0.0, 2.5] {
            let (best, ids) = m.decode_best(
                &encoded,
                input(),
                &vec![time; batch],
                penalty,
                Some(&allowed),
            );
            let mut restricted: Vec<f32> = logits
                .chunks_exact(vocab)
                .flat_map(|row| allowed.iter().map(|&t| row[t as usize]))
                .collect();
            let (expect, expect_at) =
                pass::best_log_probs_of_rows(&mut restricted, allowed.len(), 4, penalty);
            let expect_ids: Vec<i64> = expect_at
                .iter()
                .map(|&i| i64::from(allowed[i as usize]))
                .collect();
            assert_eq!(ids, expect_ids, "blank penalty {penalty}");
            for (a, b) in best.iter().zip(&expect) {
                assert!((a - b).abs() < 1e-4, "{a} vs {b}");
            }
        }
    }

    #[test]
    fn decoding_with_a_shortlist_writes_only_its_tokens_and_a_full_one_changes_nothing() {
        let mut m = student(13);
        let vocab = m.config().transformer.vocab_size;
        let sources = vec![vec![5, 6, 7, 8], vec![9, 10, 11]];
        let options = NatDecoding {
            length_beam: 2,
            iterations: 2,
            ..Default::default()
        };
        let plain = nat_decode(&m, &sources, options).unwrap();
        let full = Shortlist {
            vocab_size: vocab,
            always: (0..vocab as u32).collect(),
            by_source: vec![Vec::new(); vocab],
        };
        m.set_shortlist(Some(Arc::new(full))).unwrap();
        assert_eq!(nat_decode(&m, &sources, options).unwrap(), plain);
        let mut by_source = vec![Vec::new(); vocab];
        by_source[5] = vec![12, 13];
        by_source[9] = vec![14];
        let narrow = Shortlist {
            vocab_size: vocab,
            always: vec![15],
            by_source,
        };
        m.set_shortlist(Some(Arc::new(narrow))).unwrap();
        for candidates in nat_decode(&m, &sources, options).unwrap() {
            for c in candidates {
                assert!(
                    c.tokens.iter().all(|t| [12, 13, 14, 15].contains(t)),
                    "{c:?}"
                );
            }
        }
        let wrong = Shortlist {
            vocab_size: vocab + 1,
            always: Vec::new(),
            by_source: vec![Vec::new(); vocab + 1],
        };
        let err = m.set_shortlist(Some(Arc::new(wrong))).unwrap_err();
        assert!(err.to_string().contains("vocabulary"), "{err}");
    }

    #[test]
    fn best_log_probs_are_the_maximum_of_the_log_softmax() {
        let logits = Tensor::<B, 3>::from_data(
            TensorData::from([[[0.0f32, 2.0, -1.0], [3.0, 3.5, 0.5]]]),
            &Default::default(),
        );
        let mut rows: Vec<f32> = logits.clone().into_data().iter::<f32>().collect();
        let (best, ids) = pass::best_log_probs_of_rows(&mut rows, 3, 0, 0.0);
        let (expect, expect_ids) = log_softmax(logits, 2).max_dim_with_indices(2);
        let expect: Vec<f32> = expect.into_data().iter::<f32>().collect();
        assert_eq!(
            ids,
            expect_ids.into_data().iter::<i64>().collect::<Vec<_>>()
        );
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
