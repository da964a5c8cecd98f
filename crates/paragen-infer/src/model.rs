//! What a model is: its kind ([`ModelKind`]), the typed config that rebuilds it
//! ([`ModelConfig`], the `model` section of `run.json`), and the model itself ([`Model`],
//! AR or NAT), whatever the backend.

use burn::prelude::*;
use paragen_models::dense::Quantize;
use paragen_models::nat::{NatConfig, NatDecoder, NatStudent};
use paragen_models::{ModelError, Transformer, TransformerConfig};
use serde::{Deserialize, Serialize};

/// The kinds of model a run can hold (the name reports and logs use).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelKind {
    /// Autoregressive encoder-decoder (the teacher).
    Ar,
    /// Autoregressive student with a deep encoder and a one-layer decoder (Kasai et al.
    /// 2021): the strongest cheap AR baseline a NAT must beat.
    ArShallow,
    /// Non-autoregressive student with a CMLM decoder and a length classifier.
    Nat,
    /// Non-autoregressive student with a CTC decoder longer than the source.
    NatCtc,
}

impl ModelKind {
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Ar => "ar",
            ModelKind::ArShallow => "ar-shallow",
            ModelKind::Nat => "nat",
            ModelKind::NatCtc => "nat-ctc",
        }
    }

    /// Whether a model of this config can be of this kind.
    pub fn fits(self, model: &ModelConfig) -> bool {
        match model {
            ModelConfig::Ar(_) => matches!(self, ModelKind::Ar | ModelKind::ArShallow),
            ModelConfig::Nat(nat) => match nat.decoder {
                NatDecoder::Cmlm => self == ModelKind::Nat,
                NatDecoder::Ctc { .. } => self == ModelKind::NatCtc,
            },
        }
    }
}

/// What a run's model is: enough to rebuild it, shapes included, before its weights load.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelConfig {
    /// An autoregressive encoder-decoder (teacher or AR student).
    Ar(TransformerConfig),
    /// A non-autoregressive student; its `decoder` says CMLM or CTC.
    Nat(NatConfig),
}

impl ModelConfig {
    /// The Transformer shapes underneath (a NAT has the same layers as an AR model).
    pub fn transformer(&self) -> &TransformerConfig {
        match self {
            ModelConfig::Ar(t) => t,
            ModelConfig::Nat(n) => &n.transformer,
        }
    }

    pub fn transformer_mut(&mut self) -> &mut TransformerConfig {
        match self {
            ModelConfig::Ar(t) => t,
            ModelConfig::Nat(n) => &mut n.transformer,
        }
    }
}

/// A trained model of any kind, ready to translate.
#[derive(Clone, Debug)]
// One `Model` exists per loaded run and lives as long as it: the size difference of
// the variants costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
pub enum Model<B: Backend> {
    /// Autoregressive: the teacher or an AR student.
    Ar(Transformer<B>),
    /// Non-autoregressive student.
    Nat(NatStudent<B>),
}

impl<B: Backend> Model<B> {
    /// A freshly initialised model of the config's kind and shapes.
    pub fn new(config: &ModelConfig, device: &B::Device) -> Result<Self, ModelError> {
        Ok(match config {
            ModelConfig::Ar(c) => Model::Ar(Transformer::new(c, device)?),
            ModelConfig::Nat(c) => Model::Nat(NatStudent::new(c, device)?),
        })
    }

    /// The model with its attention and feed-forward weights quantized to `bits`.
    pub fn quantize(self, bits: u8) -> Self {
        match self {
            Model::Ar(m) => Model::Ar(m.quantize(bits)),
            Model::Nat(m) => Model::Nat(m.quantize(bits)),
        }
    }

    /// The layout a checkpoint of [`Model::quantize`]`(bits)` loads into.
    pub fn quantized_layout(self, bits: u8) -> Self {
        match self {
            Model::Ar(m) => Model::Ar(m.quantized_layout(bits)),
            Model::Nat(m) => Model::Nat(m.quantized_layout(bits)),
        }
    }

    /// The bits of its quantized layers, or `None` for a float model.
    pub fn quantized_bits(&self) -> Option<u8> {
        match self {
            Model::Ar(m) => m.quantized_bits(),
            Model::Nat(m) => m.quantized_bits(),
        }
    }

    pub fn param_count(&self) -> usize {
        match self {
            Model::Ar(m) => m.param_count(),
            Model::Nat(m) => m.param_count(),
        }
    }

    pub fn device(&self) -> B::Device {
        match self {
            Model::Ar(m) => m.device(),
            Model::Nat(m) => m.device(),
        }
    }

    pub fn config(&self) -> &paragen_models::TransformerConfig {
        match self {
            Model::Ar(m) => m.config(),
            Model::Nat(m) => &m.config().transformer,
        }
    }

    /// Whether this is a CTC student (one pass, a blank to penalise, no length).
    pub fn is_ctc(&self) -> bool {
        matches!(self, Model::Nat(nat) if matches!(nat.config().decoder, NatDecoder::Ctc { .. }))
    }

    /// Rejects sentences the model cannot take (empty, or longer than its positions).
    pub fn check_source_lengths(&self, lengths: &[usize]) -> Result<(), ModelError> {
        self.config().check_source_lengths(lengths)
    }
}
