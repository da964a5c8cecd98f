//! The non-autoregressive student: a conditional masked language model (CMLM,
//! Ghazvininejad et al. 2019) with a length classifier (Gu et al. 2018).
//!
//! The decoder sees no target tokens at inference: every position starts as `<mask>`
//! (plus its position), attends to all other positions (no causal mask) and to the
//! source, and predicts all tokens at once. Training masks a random number of target
//! positions and predicts them; a classifier over the pooled encoder output predicts the
//! target length as an offset from the source length.

use burn::nn::{
    Embedding, EmbeddingConfig, Initializer, LayerNorm, LayerNormConfig, Linear, LinearConfig,
};
use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::activation::log_softmax;
use serde::{Deserialize, Serialize};

use crate::config::TransformerConfig;
use crate::layers::{DecoderLayer, EncoderLayer, materialize, padding_mask, sinusoidal_positions};
use crate::teacher::{EncoderOutput, ModelError};

/// Shapes of a NAT student: a Transformer plus the length classifier's range.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NatConfig {
    pub transformer: TransformerConfig,
    /// Largest |target length - source length| the classifier can express.
    pub max_length_offset: usize,
    /// Weight of the length loss next to the token loss.
    pub length_loss_weight: f64,
}

impl NatConfig {
    pub fn new(transformer: TransformerConfig) -> Self {
        Self {
            transformer,
            max_length_offset: 32,
            length_loss_weight: 0.1,
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
        let logits = h
            .reshape([batch * time, d])
            .matmul(self.embedding.weight.val().transpose())
            .reshape([batch, time, self.config.transformer.vocab_size]);
        log_softmax(logits, 2)
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
