//! The autoregressive encoder-decoder Transformer ("Attention Is All You Need",
//! Vaswani et al. 2017) in its pre-norm form, with embeddings shared between encoder,
//! decoder and output projection (Press & Wolf 2017). It is paragen's teacher, and with a
//! deep encoder and a one-layer decoder also the strongest cheap AR baseline.

use burn::module::Param;
use burn::nn::{Dropout, DropoutConfig, Embedding, LayerNorm, LayerNormConfig};
use burn::prelude::*;

use crate::config::TransformerConfig;
use crate::dense::{Dense, Quantize};
use crate::embedding::TiedEmbedding;
use crate::error::ModelError;
use crate::layers::{
    DecoderLayer, DecoderLayerCache, EncoderLayer, EncoderOutput, causal_mask, copy_layers,
    map_dense_layers, materialize, new_embeddings, new_stacks, padding_mask,
};
use crate::prune::Prune;

/// Incremental decoding state: one KV cache per decoder layer.
#[derive(Clone, Debug)]
pub struct DecoderState<B: Backend> {
    layers: Vec<DecoderLayerCache<B>>,
    src_mask: Tensor<B, 3, Bool>,
}

impl<B: Backend> DecoderState<B> {
    /// Keeps (and reorders) the batch rows named by `indices`.
    pub fn select(&self, indices: Tensor<B, 1, Int>) -> Self {
        Self {
            layers: self
                .layers
                .iter()
                .map(|c| c.select(indices.clone()))
                .collect(),
            src_mask: self.src_mask.clone().select(0, indices),
        }
    }

    /// Number of tokens decoded so far.
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, |c| c.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The parameters a student holds in the same layout as its teacher.
pub(crate) struct SharedParts<'a, B: Backend> {
    pub embedding: &'a mut TiedEmbedding<B>,
    pub learned_positions: &'a mut Option<Embedding<B>>,
    pub encoder: &'a mut [EncoderLayer<B>],
    pub encoder_norm: &'a mut LayerNorm<B>,
    pub decoder: &'a mut [DecoderLayer<B>],
    pub decoder_norm: &'a mut LayerNorm<B>,
}

/// Encoder-decoder Transformer with shared embeddings.
#[derive(Module, Debug)]
pub struct Transformer<B: Backend> {
    pub(crate) embedding: TiedEmbedding<B>,
    pub(crate) learned_positions: Option<Embedding<B>>,
    pub(crate) encoder: Vec<EncoderLayer<B>>,
    pub(crate) encoder_norm: LayerNorm<B>,
    pub(crate) decoder: Vec<DecoderLayer<B>>,
    pub(crate) decoder_norm: LayerNorm<B>,
    dropout: Dropout,
    #[module(skip)]
    config: TransformerConfig,
}

impl<B: Backend> Transformer<B> {
    /// A freshly initialised model.
    pub fn new(config: &TransformerConfig, device: &B::Device) -> Result<Self, ModelError> {
        config.validate().map_err(ModelError::Config)?;
        let d = config.d_model;
        let (embedding, learned_positions) = new_embeddings(config, device);
        let (encoder, decoder) = new_stacks(config, device);
        Ok(materialize(Self {
            embedding,
            learned_positions,
            encoder,
            encoder_norm: LayerNormConfig::new(d).init(device),
            decoder,
            decoder_norm: LayerNormConfig::new(d).init(device),
            dropout: DropoutConfig::new(config.dropout).init(),
            config: config.clone(),
        }))
    }

    pub fn config(&self) -> &TransformerConfig {
        &self.config
    }

    pub fn device(&self) -> B::Device {
        self.embedding.device()
    }

    /// Rejects sentences the model cannot take (empty, or longer than its positions).
    pub fn check_source_lengths(&self, lengths: &[usize]) -> Result<(), ModelError> {
        self.config.check_source_lengths(lengths)
    }

    /// Token embeddings scaled by sqrt(d) plus positions `start..start + time`.
    fn embed(&self, tokens: Tensor<B, 2, Int>, start: usize) -> Tensor<B, 3> {
        crate::layers::embed(
            &self.embedding,
            self.learned_positions.as_ref(),
            &self.dropout,
            tokens,
            start,
        )
    }

    /// Encodes a padded source batch.
    ///
    /// # Shapes
    /// - `src`: `[batch, src_time]`, padded with the pad id.
    pub fn encode(&self, src: Tensor<B, 2, Int>) -> EncoderOutput<B> {
        let src_mask = padding_mask(&src, self.config.special.pad);
        crate::layers::encode(
            self.embed(src, 0),
            src_mask,
            &self.encoder,
            &self.encoder_norm,
        )
    }

    fn project(&self, h: Tensor<B, 3>) -> Tensor<B, 3> {
        self.embedding.project(h)
    }

    /// Teacher-forced decoding of whole target prefixes.
    ///
    /// # Shapes
    /// - `tgt_in`: `[batch, tgt_time]` (BOS then target); returns `[batch, tgt_time, vocab]`.
    pub fn decode(&self, encoded: &EncoderOutput<B>, tgt_in: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let time = tgt_in.dims()[1];
        let self_mask = causal_mask(time, &tgt_in.device());
        let mut x = self.embed(tgt_in, 0);
        for layer in &self.decoder {
            x = layer.forward(
                x,
                encoded.memory.clone(),
                self_mask.clone(),
                encoded.src_mask.clone(),
            );
        }
        self.project(self.decoder_norm.forward(x))
    }

    /// Full forward pass for training: logits for every target position.
    pub fn forward(&self, src: Tensor<B, 2, Int>, tgt_in: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let encoded = self.encode(src);
        self.decode(&encoded, tgt_in)
    }

    /// Starts incremental decoding: computes every layer's cross-attention keys/values.
    pub fn start_decoding(&self, encoded: &EncoderOutput<B>) -> DecoderState<B> {
        DecoderState {
            layers: self
                .decoder
                .iter()
                .map(|l| l.init_cache(encoded.memory.clone()))
                .collect(),
            src_mask: encoded.src_mask.clone(),
        }
    }

    /// Decodes one token per sentence using (and extending) the KV cache.
    ///
    /// # Shapes
    /// - `tokens`: `[batch]`, the previous token; returns next-token logits `[batch, vocab]`.
    pub fn decode_step(
        &self,
        state: &mut DecoderState<B>,
        tokens: Tensor<B, 1, Int>,
    ) -> Tensor<B, 2> {
        let position = state.len();
        let mut x = self.embed(tokens.unsqueeze_dim(1), position);
        for (layer, cache) in self.decoder.iter().zip(state.layers.iter_mut()) {
            x = layer.step(x, cache, state.src_mask.clone());
        }
        self.project(self.decoder_norm.forward(x)).squeeze_dim(1)
    }

    /// Number of weights, whether float or quantized.
    pub fn param_count(&self) -> usize {
        crate::dense::weight_count(self, self.quantized_bits())
    }

    /// Starts an AR student from its teacher's weights: the shared embedding and the
    /// first encoder and decoder layers, as many as both have (a deep-encoder student
    /// keeps its extra encoder layers random). Widths and vocabulary must match.
    pub fn init_from_teacher(&mut self, teacher: &Transformer<B>) -> Result<(), ModelError> {
        teacher.check_float()?;
        self.config
            .check_layers_fit(teacher.config())
            .map_err(ModelError::Config)?;
        teacher.copy_shared_into(SharedParts {
            embedding: &mut self.embedding,
            learned_positions: &mut self.learned_positions,
            encoder: &mut self.encoder,
            encoder_norm: &mut self.encoder_norm,
            decoder: &mut self.decoder,
            decoder_norm: &mut self.decoder_norm,
        });
        Ok(())
    }

    /// Overwrites what a student shares with this teacher: the embedding (and learned
    /// positions), the first encoder and decoder layers (as many as both have) and the
    /// final norms. Shapes were checked by the caller.
    pub(crate) fn copy_shared_into(&self, to: SharedParts<'_, B>) {
        *to.embedding = self.embedding.clone();
        *to.learned_positions = self.learned_positions.clone();
        copy_layers(to.encoder, &self.encoder);
        copy_layers(to.decoder, &self.decoder);
        *to.encoder_norm = self.encoder_norm.clone();
        *to.decoder_norm = self.decoder_norm.clone();
    }

    /// Length-normalised log-probability of each `targets[i]` (EOS included) given
    /// `sources[i]`, from one teacher-forced pass: how a teacher rescores candidates.
    pub fn sequence_scores(
        &self,
        sources: &[Vec<u32>],
        targets: &[Vec<u32>],
    ) -> Result<Vec<f32>, ModelError> {
        let lengths: Vec<usize> = sources.iter().map(|s| s.len()).collect();
        self.check_source_lengths(&lengths)?;
        let examples: Vec<paragen_data::batch::Example> = sources
            .iter()
            .zip(targets)
            .map(|(src, tgt)| paragen_data::batch::Example {
                src: src.clone(),
                tgt: tgt.clone(),
            })
            .collect();
        let refs: Vec<&paragen_data::batch::Example> = examples.iter().collect();
        let batch =
            paragen_data::Seq2SeqBatch::<B>::new(&refs, self.config.special, &self.device());
        let log_probs =
            burn::tensor::activation::log_softmax(self.forward(batch.src, batch.tgt_in), 2);
        let picked = log_probs
            .gather(2, batch.tgt_out.clone().unsqueeze_dim(2))
            .squeeze_dim::<2>(2);
        let keep = batch
            .tgt_out
            .not_equal_elem(self.config.special.pad as i64)
            .float();
        let sums: Vec<f32> = (picked * keep)
            .sum_dim(1)
            .into_data()
            .iter::<f32>()
            .collect();
        Ok(sums
            .iter()
            .zip(targets)
            .map(|(sum, t)| sum / (t.len() + 1) as f32)
            .collect())
    }

    /// Refuses a quantized model as the start of a student: training cannot update
    /// integer weights.
    pub(crate) fn check_float(&self) -> Result<(), ModelError> {
        match self.quantized_bits() {
            Some(bits) => Err(ModelError::Config(format!(
                "the teacher's weights are quantized to {bits} bits, which a student cannot \
                 train from; start it from the float teacher"
            ))),
            None => Ok(()),
        }
    }

    /// The shared embedding matrix, `[vocab, d_model]`, of a float model.
    pub fn embedding_weight(&self) -> Option<&Param<Tensor<B, 2>>> {
        self.embedding.weight()
    }
}

impl<B: Backend> Quantize<B> for Transformer<B> {
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

impl<B: Backend> Prune<B> for Transformer<B> {
    fn transformer_config(&self) -> &TransformerConfig {
        &self.config
    }

    fn layers(&self) -> (&[EncoderLayer<B>], &[DecoderLayer<B>]) {
        (&self.encoder, &self.decoder)
    }

    fn with_layers(
        self,
        encoder: Vec<EncoderLayer<B>>,
        decoder: Vec<DecoderLayer<B>>,
        config: TransformerConfig,
    ) -> Self {
        Self {
            encoder,
            decoder,
            config,
            ..self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PositionKind;
    use paragen_backend::TestBackend;
    use paragen_data::SpecialTokens;

    type B = TestBackend;

    fn ints(rows: &[&[i64]]) -> Tensor<B, 2, Int> {
        ints_on::<B>(rows)
    }

    fn ints_on<BB: Backend>(rows: &[&[i64]]) -> Tensor<BB, 2, Int> {
        let width = rows[0].len();
        let flat: Vec<i64> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_data(
            burn::tensor::TensorData::new(flat, [rows.len(), width]).convert::<BB::IntElem>(),
            &Default::default(),
        )
    }

    #[test]
    fn forward_shapes() {
        let model = Transformer::<B>::new(
            &TransformerConfig::tiny(20, SpecialTokens::trained()),
            &Default::default(),
        )
        .unwrap();
        let logits = model.forward(ints(&[&[5, 6, 7], &[8, 0, 0]]), ints(&[&[1, 9], &[1, 10]]));
        assert_eq!(logits.dims(), [2, 2, 20]);
    }

    #[test]
    fn padding_of_the_source_does_not_change_the_output() {
        let model = Transformer::<B>::new(
            &TransformerConfig::tiny(20, SpecialTokens::trained()),
            &Default::default(),
        )
        .unwrap();
        let short = model.forward(ints(&[&[5, 6]]), ints(&[&[1, 9, 10]]));
        let padded = model.forward(ints(&[&[5, 6, 0, 0]]), ints(&[&[1, 9, 10]]));
        short
            .into_data()
            .assert_approx_eq::<f32>(&padded.into_data(), burn::tensor::Tolerance::default());
    }

    #[test]
    fn cached_steps_equal_the_full_decoder() {
        cached_steps_equal_the_full_decoder_on::<B>();
        cached_steps_equal_the_full_decoder_on::<paragen_backend::FlexTestBackend>();
    }

    fn cached_steps_equal_the_full_decoder_on<BB: Backend>() {
        for positions in [PositionKind::Sinusoidal, PositionKind::Learned] {
            let config = TransformerConfig {
                positions,
                ..TransformerConfig::tiny(20, SpecialTokens::trained())
            };
            let model = Transformer::<BB>::new(&config, &Default::default()).unwrap();
            let src = ints_on::<BB>(&[&[5, 6, 7], &[8, 9, 0]]);
            let tgt = ints_on::<BB>(&[&[1, 11, 12, 13], &[1, 14, 15, 16]]);
            let encoded = model.encode(src);
            let full = model.decode(&encoded, tgt.clone());
            let mut state = model.start_decoding(&encoded);
            for t in 0..4 {
                let step = model.decode_step(
                    &mut state,
                    tgt.clone().slice([0..2, t..t + 1]).squeeze_dim(1),
                );
                let expected = full.clone().slice([0..2, t..t + 1]).squeeze_dim::<2>(1);
                step.into_data().assert_approx_eq::<f32>(
                    &expected.into_data(),
                    burn::tensor::Tolerance::default(),
                );
            }
            assert_eq!(state.len(), 4);
        }
    }

    #[test]
    fn a_clone_has_the_same_weights_as_the_original() {
        let model = Transformer::<B>::new(
            &TransformerConfig::tiny(20, SpecialTokens::trained()),
            &Default::default(),
        )
        .unwrap();
        let copy = model.clone();
        let src = ints(&[&[5, 6, 7]]);
        let tgt = ints(&[&[1, 9]]);
        assert_eq!(
            copy.forward(src.clone(), tgt.clone()).into_data(),
            model.forward(src, tgt).into_data()
        );
    }

    #[test]
    fn rejects_bad_configs_and_lengths() {
        let bad = TransformerConfig {
            n_heads: 3,
            ..TransformerConfig::tiny(20, SpecialTokens::trained())
        };
        assert!(matches!(
            Transformer::<B>::new(&bad, &Default::default()),
            Err(ModelError::Config(_))
        ));
        let model = Transformer::<B>::new(
            &TransformerConfig::tiny(20, SpecialTokens::trained()),
            &Default::default(),
        )
        .unwrap();
        assert_eq!(
            model.check_source_lengths(&[3, 0]),
            Err(ModelError::Empty { index: 1 })
        );
        assert_eq!(
            model.check_source_lengths(&[65]),
            Err(ModelError::TooLong {
                index: 0,
                len: 65,
                max: 64
            })
        );
    }

    #[test]
    fn sequence_scores_are_the_mean_step_log_probability() {
        use burn::tensor::activation::log_softmax;
        let config = TransformerConfig::tiny(24, SpecialTokens::trained());
        let device = Default::default();
        let model = Transformer::<TestBackend>::new(&config, &device).unwrap();
        let (source, target) = (vec![5u32, 6, 7], vec![8u32, 9]);
        let scores = model
            .sequence_scores(std::slice::from_ref(&source), std::slice::from_ref(&target))
            .unwrap();
        let src = paragen_data::batch::pad_to_tensor::<TestBackend>(&[&source], 0, &device);
        let mut state = model.start_decoding(&model.encode(src));
        let special = config.special;
        let (mut previous, mut total) = (special.bos, 0.0f32);
        for next in target.iter().copied().chain([special.eos]) {
            let tokens = Tensor::<TestBackend, 1, Int>::from_ints([previous as i32], &device);
            let log_probs: Vec<f32> = log_softmax(model.decode_step(&mut state, tokens), 1)
                .into_data()
                .iter::<f32>()
                .collect();
            total += log_probs[next as usize];
            previous = next;
        }
        assert!(
            (scores[0] - total / 3.0).abs() < 1e-4,
            "{} vs {}",
            scores[0],
            total / 3.0
        );
    }

    #[test]
    fn a_shallow_student_starts_from_the_teachers_encoder() {
        let device = Default::default();
        let config = TransformerConfig::tiny(24, SpecialTokens::trained());
        let teacher = Transformer::<TestBackend>::new(&config, &device).unwrap();
        let shallow = TransformerConfig {
            decoder_layers: 1,
            ..config.clone()
        };
        let mut student = Transformer::<TestBackend>::new(&shallow, &device).unwrap();
        student.init_from_teacher(&teacher).unwrap();
        let src = paragen_data::batch::pad_to_tensor::<TestBackend>(&[&[5, 6, 7]], 0, &device);
        student
            .encode(src.clone())
            .memory
            .into_data()
            .assert_approx_eq::<f32>(
                &teacher.encode(src).memory.into_data(),
                burn::tensor::Tolerance::default(),
            );
        let other_vocab = Transformer::<TestBackend>::new(
            &TransformerConfig {
                vocab_size: 30,
                ..config
            },
            &device,
        )
        .unwrap();
        assert!(student.init_from_teacher(&other_vocab).is_err());
        let err = student
            .init_from_teacher(&teacher.quantize(8))
            .unwrap_err()
            .to_string();
        assert!(err.contains("quantized to 8 bits"), "{err}");
    }
}
