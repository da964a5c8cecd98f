//! Model configuration: everything needed to rebuild a model's shapes.

use paragen_data::SpecialTokens;
use serde::{Deserialize, Serialize};

/// How positions are encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PositionKind {
    /// Fixed sine/cosine encodings (Vaswani et al.); no parameters, any length.
    Sinusoidal,
    /// A learned embedding per position, up to `max_positions`.
    Learned,
}

/// Largest model paragen builds from a config, 2^31 parameters (8 GiB of f32 weights,
/// several times that to train): a `run.json` asking for more is corrupt or hostile, and
/// would otherwise abort the process on allocation.
pub const MAX_PARAMETERS: f64 = 2_147_483_648.0;

/// Shapes and hyper-parameters of an encoder-decoder Transformer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TransformerConfig {
    /// Joint source/target vocabulary size (the tokenizer's).
    pub vocab_size: usize,
    /// Model width.
    pub d_model: usize,
    /// Attention heads; must divide `d_model`.
    pub n_heads: usize,
    /// Hidden width of the feed-forward blocks.
    pub d_ff: usize,
    pub encoder_layers: usize,
    pub decoder_layers: usize,
    /// Dropout on embeddings, attention weights, residual branches and FFN activations.
    pub dropout: f64,
    /// Longest sequence (in tokens, BOS/EOS included) the model accepts.
    pub max_positions: usize,
    pub positions: PositionKind,
    /// Ids of pad, BOS, EOS, UNK and mask in the tokenizer.
    pub special: SpecialTokens,
    /// The widths of every layer of a structurally pruned model (`paragen prune`);
    /// absent, every layer has `n_heads` heads and `d_ff` neurons. Heads keep their
    /// width `d_model / n_heads` either way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pruned: Option<PrunedWidths>,
}

/// The heads and feed-forward neurons one encoder layer keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncoderWidths {
    pub heads: usize,
    pub d_ff: usize,
}

/// The heads (self- and cross-attention) and neurons one decoder layer keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecoderWidths {
    pub self_heads: usize,
    pub cross_heads: usize,
    pub d_ff: usize,
}

/// Per-layer widths of a pruned model, one entry per layer that is left.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrunedWidths {
    pub encoder: Vec<EncoderWidths>,
    pub decoder: Vec<DecoderWidths>,
}

impl TransformerConfig {
    /// A small model that trains in minutes on two CPU cores. Without dropout: a
    /// ten-minute run sees less than two epochs, far from overfitting, and dropout's
    /// random masks cost about 40% of the forward pass on the CPU.
    pub fn quick(vocab_size: usize, special: SpecialTokens) -> Self {
        Self {
            vocab_size,
            d_model: 256,
            n_heads: 4,
            d_ff: 1024,
            encoder_layers: 3,
            // Two decoder layers: a cheaper step in training and in every decoding step.
            decoder_layers: 2,
            dropout: 0.0,
            max_positions: 256,
            positions: PositionKind::Sinusoidal,
            special,
            pruned: None,
        }
    }

    /// Transformer-base shapes (Vaswani et al. 2017), for real training.
    pub fn base(vocab_size: usize, special: SpecialTokens) -> Self {
        Self {
            d_model: 512,
            n_heads: 8,
            d_ff: 2048,
            encoder_layers: 6,
            decoder_layers: 6,
            dropout: 0.1,
            ..Self::quick(vocab_size, special)
        }
    }

    /// A tiny model for tests.
    pub fn tiny(vocab_size: usize, special: SpecialTokens) -> Self {
        Self {
            d_model: 32,
            n_heads: 4,
            d_ff: 64,
            encoder_layers: 2,
            decoder_layers: 2,
            dropout: 0.0,
            max_positions: 64,
            ..Self::quick(vocab_size, special)
        }
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.d_model / self.n_heads.max(1)
    }

    /// The widths of each encoder layer (all the same unless the model was pruned).
    pub fn encoder_widths(&self) -> Vec<EncoderWidths> {
        match &self.pruned {
            Some(p) => p.encoder.clone(),
            None => vec![
                EncoderWidths {
                    heads: self.n_heads,
                    d_ff: self.d_ff,
                };
                self.encoder_layers
            ],
        }
    }

    /// The widths of each decoder layer (all the same unless the model was pruned).
    pub fn decoder_widths(&self) -> Vec<DecoderWidths> {
        match &self.pruned {
            Some(p) => p.decoder.clone(),
            None => vec![
                DecoderWidths {
                    self_heads: self.n_heads,
                    cross_heads: self.n_heads,
                    d_ff: self.d_ff,
                };
                self.decoder_layers
            ],
        }
    }

    /// Floating-point operations (multiply and add counted separately) of one
    /// teacher-forced forward pass over `batch` sentences of `src_len` source and
    /// `tgt_len` target tokens: the matrix products, which dominate everything else.
    pub fn forward_flops(&self, batch: usize, src_len: usize, tgt_len: usize) -> f64 {
        let (b, s, t) = (batch as f64, src_len as f64, tgt_len as f64);
        let (d, v) = (self.d_model as f64, self.vocab_size as f64);
        let inner = |heads: usize| (heads * self.head_dim()) as f64;
        // Per token: q/k/v/o projections and FFN; per query: scores and weighted sum.
        let encoder: f64 = self
            .encoder_widths()
            .iter()
            .map(|w| {
                let a = inner(w.heads);
                s * (4.0 * d * a + 2.0 * d * w.d_ff as f64) + 2.0 * s * s * a
            })
            .sum();
        let decoder: f64 = self
            .decoder_widths()
            .iter()
            .map(|w| {
                let (a, c) = (inner(w.self_heads), inner(w.cross_heads));
                t * (4.0 * d * a + 2.0 * d * w.d_ff as f64) + 2.0 * t * t * a
                    // cross-attention: q/o on targets, k/v on sources, scores over sources
                    + 2.0 * t * d * c + 2.0 * s * d * c + 2.0 * t * s * c
            })
            .sum();
        let output = t * d * v;
        2.0 * b * (encoder + decoder + output)
    }

    /// Rejects sentences a model of these shapes cannot take (empty, or longer than
    /// its positions); `lengths[i]` is sentence `i`'s token count.
    pub fn check_source_lengths(&self, lengths: &[usize]) -> Result<(), crate::ModelError> {
        for (index, &len) in lengths.iter().enumerate() {
            if len == 0 {
                return Err(crate::ModelError::Empty { index });
            }
            if len > self.max_positions {
                return Err(crate::ModelError::TooLong {
                    index,
                    len,
                    max: self.max_positions,
                });
            }
        }
        Ok(())
    }

    /// Whether layers of a model with `other`'s shapes can be copied into one with these:
    /// same vocabulary, width, heads, feed-forward width and position encoding (layer
    /// counts may differ).
    pub fn check_layers_fit(&self, other: &TransformerConfig) -> Result<(), String> {
        if self.pruned.is_some() || other.pruned.is_some() {
            return Err(
                "cannot copy layers to or from a pruned model: its layers have other widths".into(),
            );
        }
        let key = |c: &TransformerConfig| (c.vocab_size, c.d_model, c.n_heads, c.d_ff, c.positions);
        if key(self) != key(other) {
            return Err(format!(
                "cannot copy layers between vocab {} d_model {} ({} heads, d_ff {}, {:?} positions) \
                 and vocab {} d_model {} ({} heads, d_ff {}, {:?} positions)",
                other.vocab_size,
                other.d_model,
                other.n_heads,
                other.d_ff,
                other.positions,
                self.vocab_size,
                self.d_model,
                self.n_heads,
                self.d_ff,
                self.positions
            ));
        }
        Ok(())
    }

    /// Parameters a model of these shapes has, roughly (weights and biases of every
    /// layer, embeddings, position table); exact enough to refuse absurd configs.
    pub fn parameter_estimate(&self) -> f64 {
        // In f64, so that no config can overflow the arithmetic.
        let (v, d, ff) = (
            self.vocab_size as f64,
            self.d_model as f64,
            self.d_ff as f64,
        );
        let encoder_layer = 4.0 * d * d + 2.0 * d * ff + ff + 9.0 * d;
        let decoder_layer = 8.0 * d * d + 2.0 * d * ff + ff + 15.0 * d;
        v * d
            + v
            + self.max_positions as f64 * d
            + self.encoder_layers as f64 * encoder_layer
            + self.decoder_layers as f64 * decoder_layer
    }

    /// Checks the invariants the model relies on.
    pub fn validate(&self) -> Result<(), String> {
        let sizes = [
            ("d_model", self.d_model),
            ("d_ff", self.d_ff),
            ("encoder_layers", self.encoder_layers),
            ("decoder_layers", self.decoder_layers),
        ];
        if let Some((name, _)) = sizes.iter().find(|(_, n)| *n == 0) {
            return Err(format!("{name} must be at least 1"));
        }
        if self.max_positions < 2 {
            return Err(format!(
                "max_positions ({}) must leave room for BOS and EOS",
                self.max_positions
            ));
        }
        let params = self.parameter_estimate();
        if params > MAX_PARAMETERS {
            return Err(format!(
                "these shapes make a model of about {params:.3e} parameters ({:.0} GiB of \
                 f32), more than paragen builds ({MAX_PARAMETERS:.3e})",
                params * 4.0 / f64::from(1u32 << 30)
            ));
        }
        if self.n_heads == 0 || !self.d_model.is_multiple_of(self.n_heads) {
            return Err(format!(
                "d_model ({}) must be a multiple of n_heads ({})",
                self.d_model, self.n_heads
            ));
        }
        if let Some(pruned) = &self.pruned {
            self.validate_pruned(pruned)?;
        }
        if !self.d_model.is_multiple_of(2) {
            return Err(format!("d_model ({}) must be even", self.d_model));
        }
        let s = self.special;
        let max_id = s.pad.max(s.bos).max(s.eos).max(s.unk).max(s.mask) as usize;
        if max_id >= self.vocab_size {
            return Err(format!(
                "special token id {max_id} is outside the vocabulary of {}",
                self.vocab_size
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!("dropout {} must be in [0, 1)", self.dropout));
        }
        Ok(())
    }
}

impl TransformerConfig {
    /// A pruned model has one width entry per layer, and at least one and at most the
    /// unpruned count of heads and neurons in each.
    fn validate_pruned(&self, pruned: &PrunedWidths) -> Result<(), String> {
        let counts = [
            ("encoder", pruned.encoder.len(), self.encoder_layers),
            ("decoder", pruned.decoder.len(), self.decoder_layers),
        ];
        for (stack, widths, layers) in counts {
            if widths != layers {
                return Err(format!(
                    "`pruned` lists {widths} {stack} layers, and the model has {layers}"
                ));
            }
        }
        let check = |what: &str, layer: usize, value: usize, max: usize| {
            if (1..=max).contains(&value) {
                Ok(())
            } else {
                Err(format!(
                    "{what} of layer {layer} is {value}; it must be between 1 and {max}"
                ))
            }
        };
        for (i, w) in pruned.encoder.iter().enumerate() {
            check("encoder heads", i, w.heads, self.n_heads)?;
            check("encoder d_ff", i, w.d_ff, self.d_ff)?;
        }
        for (i, w) in pruned.decoder.iter().enumerate() {
            check(
                "decoder self-attention heads",
                i,
                w.self_heads,
                self.n_heads,
            )?;
            check(
                "decoder cross-attention heads",
                i,
                w.cross_heads,
                self.n_heads,
            )?;
            check("decoder d_ff", i, w.d_ff, self.d_ff)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parameter_estimate_is_close_to_the_built_model() {
        use paragen_backend::TestBackend;
        let config = TransformerConfig::tiny(100, SpecialTokens::trained());
        let model = crate::Transformer::<TestBackend>::new(&config, &Default::default()).unwrap();
        let (built, estimate) = (model.param_count() as f64, config.parameter_estimate());
        assert!(
            (estimate / built - 1.0).abs() < 0.1,
            "estimate {estimate}, built {built}"
        );
    }

    #[test]
    fn absurd_shapes_are_refused_before_any_allocation() {
        let quick = TransformerConfig::quick(8000, SpecialTokens::trained());
        assert!(quick.validate().is_ok());
        let huge = TransformerConfig {
            d_model: 1 << 40,
            n_heads: 1,
            ..quick.clone()
        };
        let err = huge.validate().unwrap_err();
        assert!(err.contains("parameters"), "{err}");
        for zero in [
            TransformerConfig {
                d_ff: 0,
                ..quick.clone()
            },
            TransformerConfig {
                encoder_layers: 0,
                ..quick.clone()
            },
            TransformerConfig {
                max_positions: 1,
                ..quick.clone()
            },
        ] {
            assert!(zero.validate().is_err(), "{zero:?}");
        }
        let overflowing = TransformerConfig {
            vocab_size: usize::MAX,
            d_model: usize::MAX - 1,
            n_heads: 1,
            d_ff: usize::MAX,
            ..quick
        };
        assert!(overflowing.validate().is_err());
    }
}
