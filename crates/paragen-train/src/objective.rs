//! What the training loop optimises, per kind of model.
//!
//! [`SeqModel`] is what the loop needs from any model: its own loss on a batch and a
//! fast decoding for validation BLEU. An [`Objective`] is the training loss, which may
//! differ from the model's own loss: label smoothing, glancing sampling (GLAT), or
//! word-level distillation from a teacher (in `paragen-compress`).

use burn::prelude::*;
use paragen_data::Seq2SeqBatch;
use paragen_data::batch::{Example, pad_to_tensor};
use paragen_models::nat::{
    CTC_BLANK_PENALTIES, NatDecoder, NatDecoding, NatStudent, nat_decode, sample_cmlm_masks,
};
use paragen_models::{LengthLimit, ModelError, Transformer, greedy};
use rand::rngs::StdRng;

/// A sequence model the training loop can train and validate.
pub trait SeqModel<B: Backend>: Module<B> {
    /// The model's own loss on `batch`, averaged over its scored target tokens;
    /// `rng` draws anything random in it (CMLM masks).
    fn loss(&self, batch: &[&Example], label_smoothing: f64, rng: &mut StdRng) -> Tensor<B, 1>;

    /// Blank penalties validation decodes with, keeping the best BLEU: a CTC student's
    /// output length hangs on it, and selecting epochs by its untuned BLEU picks the
    /// model that under-generates least rather than the best one. `[0.0]` for others.
    fn validation_blank_penalties(&self) -> &'static [f32] {
        &[0.0]
    }

    /// Decodes sources the fast way (greedy, or one parallel pass), for validation BLEU.
    fn validation_decode(
        &self,
        sources: &[Vec<u32>],
        blank_penalty: f32,
    ) -> Result<Vec<Vec<u32>>, ModelError>;
}

impl<B: Backend> SeqModel<B> for Transformer<B> {
    fn loss(&self, batch: &[&Example], label_smoothing: f64, _rng: &mut StdRng) -> Tensor<B, 1> {
        let special = self.config().special;
        let b = Seq2SeqBatch::<B>::new(batch, special, &self.device());
        paragen_models::loss::label_smoothed_cross_entropy(
            self.forward(b.src, b.tgt_in),
            b.tgt_out,
            special.pad,
            label_smoothing,
        )
    }

    fn validation_decode(
        &self,
        sources: &[Vec<u32>],
        _blank_penalty: f32,
    ) -> Result<Vec<Vec<u32>>, ModelError> {
        greedy(self, sources, LengthLimit::default())
    }
}

/// Source tensor, source lengths and targets of a NAT batch.
fn nat_inputs<B: Backend>(
    model: &NatStudent<B>,
    batch: &[&Example],
) -> (Tensor<B, 2, Int>, Vec<usize>, Vec<Vec<u32>>) {
    let pad = model.config().transformer.special.pad;
    let sources: Vec<&[u32]> = batch.iter().map(|e| e.src.as_slice()).collect();
    let src = pad_to_tensor::<B>(&sources, pad, &model.device());
    let src_lens = batch.iter().map(|e| e.src.len()).collect();
    let targets = batch.iter().map(|e| e.tgt.clone()).collect();
    (src, src_lens, targets)
}

impl<B: Backend> SeqModel<B> for NatStudent<B> {
    fn loss(&self, batch: &[&Example], label_smoothing: f64, rng: &mut StdRng) -> Tensor<B, 1> {
        if let NatDecoder::Ctc { .. } = self.config().decoder {
            return ctc_loss(self, batch, label_smoothing, 0.0, rng);
        }
        let (src, src_lens, targets) = nat_inputs(self, batch);
        let lengths: Vec<usize> = targets.iter().map(|t| t.len()).collect();
        let masks = sample_cmlm_masks(&lengths, rng);
        self.cmlm_loss(src, &src_lens, &targets, &masks, label_smoothing)
    }

    fn validation_blank_penalties(&self) -> &'static [f32] {
        match self.config().decoder {
            NatDecoder::Ctc { .. } => &CTC_BLANK_PENALTIES,
            _ => &[0.0],
        }
    }

    fn validation_decode(
        &self,
        sources: &[Vec<u32>],
        blank_penalty: f32,
    ) -> Result<Vec<Vec<u32>>, ModelError> {
        let options = NatDecoding {
            blank_penalty,
            ..Default::default()
        };
        Ok(nat_decode(self, sources, options)?
            .iter()
            .map(|c| paragen_models::nat::best_candidate(c))
            .collect())
    }
}

/// The CTC loss of a CTC student on `batch` (glancing when `glance_ratio > 0`).
fn ctc_loss<B: Backend>(
    model: &NatStudent<B>,
    batch: &[&Example],
    label_smoothing: f64,
    glance_ratio: f64,
    rng: &mut StdRng,
) -> Tensor<B, 1> {
    let sources: Vec<&[u32]> = batch.iter().map(|e| e.src.as_slice()).collect();
    let targets: Vec<Vec<u32>> = batch.iter().map(|e| e.tgt.clone()).collect();
    model.ctc_loss(&sources, &targets, label_smoothing, glance_ratio, rng)
}

/// The training loss of a model of type `M` on the backend `B`.
pub trait Objective<B: Backend, M> {
    /// Loss on `batch`, averaged over its scored target tokens.
    fn loss(&self, model: &M, batch: &[&Example], rng: &mut StdRng) -> Tensor<B, 1>;
}

/// The model's own loss with label smoothing: cross-entropy for AR models, CMLM
/// masking for NAT.
#[derive(Clone, Copy, Debug)]
pub struct OwnLoss {
    pub label_smoothing: f64,
}

impl<B: Backend, M: SeqModel<B>> Objective<B, M> for OwnLoss {
    fn loss(&self, model: &M, batch: &[&Example], rng: &mut StdRng) -> Tensor<B, 1> {
        model.loss(batch, self.label_smoothing, rng)
    }
}

/// GLAT's glancing sampling for NAT students (see [`NatStudent::glat_loss`]; for CTC
/// students, [`NatStudent::ctc_loss`]).
#[derive(Clone, Copy, Debug)]
pub struct Glancing {
    /// Share of the first pass's wrong tokens revealed to the decoder (GLAT: 0.3-0.5).
    pub ratio: f64,
    pub label_smoothing: f64,
}

impl<B: Backend> Objective<B, NatStudent<B>> for Glancing {
    fn loss(&self, model: &NatStudent<B>, batch: &[&Example], rng: &mut StdRng) -> Tensor<B, 1> {
        if let NatDecoder::Ctc { .. } = model.config().decoder {
            return ctc_loss(model, batch, self.label_smoothing, self.ratio, rng);
        }
        let (src, src_lens, targets) = nat_inputs(model, batch);
        model.glat_loss(
            src,
            &src_lens,
            &targets,
            self.ratio,
            self.label_smoothing,
            rng,
        )
    }
}

/// A NAT student's training objective: glancing (GLAT) at `glance_ratio`, or its own
/// loss (CMLM masking, or CTC) when there is none.
pub fn nat_objective<B: Backend>(
    glance_ratio: Option<f64>,
    label_smoothing: f64,
) -> Box<dyn Objective<B, NatStudent<B>>> {
    match glance_ratio {
        Some(ratio) => Box::new(Glancing {
            ratio,
            label_smoothing,
        }),
        None => Box::new(OwnLoss { label_smoothing }),
    }
}
