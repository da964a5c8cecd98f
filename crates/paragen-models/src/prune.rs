//! Structured pruning: the mechanism that removes attention heads, feed-forward neurons
//! and whole layers from a model, physically (smaller matrices, so less work), and the
//! gate gradients that measure how much each of those units matters.
//!
//! Which units to remove is policy, and lives in `paragen-compress`; this module only
//! scores units and applies a [`PrunePlan`].

use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;

use crate::config::{PrunedWidths, TransformerConfig};
use crate::error::ModelError;
use crate::layers::{DecoderLayer, EncoderLayer};

/// One number per prunable unit of one layer (encoder layers have no cross-attention).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LayerUnits<T> {
    pub self_heads: Vec<T>,
    pub cross_heads: Vec<T>,
    pub neurons: Vec<T>,
}

/// One [`LayerUnits`] per layer of each stack.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModelUnits<T> {
    pub encoder: Vec<LayerUnits<T>>,
    pub decoder: Vec<LayerUnits<T>>,
}

impl ModelUnits<f32> {
    /// Adds `other`'s absolute values, unit by unit (scores of the same model).
    pub fn add_abs(&mut self, other: &ModelUnits<f32>) {
        if self.encoder.is_empty() && self.decoder.is_empty() {
            *self = other.map(f32::abs);
            return;
        }
        let pairs = self
            .encoder
            .iter_mut()
            .zip(&other.encoder)
            .chain(self.decoder.iter_mut().zip(&other.decoder));
        for (mine, theirs) in pairs {
            for (a, b) in [
                (&mut mine.self_heads, &theirs.self_heads),
                (&mut mine.cross_heads, &theirs.cross_heads),
                (&mut mine.neurons, &theirs.neurons),
            ] {
                a.iter_mut().zip(b).for_each(|(a, b)| *a += b.abs());
            }
        }
    }

    fn map(&self, f: impl Fn(f32) -> f32 + Copy) -> Self {
        let layer = |l: &LayerUnits<f32>| LayerUnits {
            self_heads: l.self_heads.iter().map(|&v| f(v)).collect(),
            cross_heads: l.cross_heads.iter().map(|&v| f(v)).collect(),
            neurons: l.neurons.iter().map(|&v| f(v)).collect(),
        };
        Self {
            encoder: self.encoder.iter().map(layer).collect(),
            decoder: self.decoder.iter().map(layer).collect(),
        }
    }
}

/// Per layer of a stack, `None` to drop the layer, else the indices of the heads and
/// neurons that stay (ascending, at least one of each kind the layer has).
pub type LayerPlan = Option<LayerUnits<usize>>;

/// What a pruned model keeps of each of its layers.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PrunePlan {
    pub encoder: Vec<LayerPlan>,
    pub decoder: Vec<LayerPlan>,
}

/// A model whose encoder and decoder layers can be pruned (the teacher, the NAT).
pub trait Prune<B: Backend>: Sized {
    fn transformer_config(&self) -> &TransformerConfig;

    fn layers(&self) -> (&[EncoderLayer<B>], &[DecoderLayer<B>]);

    /// The model with these layers, described by `config`.
    fn with_layers(
        self,
        encoder: Vec<EncoderLayer<B>>,
        decoder: Vec<DecoderLayer<B>>,
        config: TransformerConfig,
    ) -> Self;

    /// The model keeping what `plan` names, its config describing the new widths.
    fn prune(self, plan: &PrunePlan) -> Result<Self, ModelError> {
        let mut config = self.transformer_config().clone();
        let (old_encoder, old_decoder) = self.layers();
        let encoder_widths: Vec<[usize; 3]> = old_encoder
            .iter()
            .map(|l| {
                let w = l.widths();
                [w.heads, 0, w.d_ff]
            })
            .collect();
        let decoder_widths: Vec<[usize; 3]> = old_decoder
            .iter()
            .map(|l| {
                let w = l.widths();
                [w.self_heads, w.cross_heads, w.d_ff]
            })
            .collect();
        check_plan("encoder", &encoder_widths, &plan.encoder)?;
        check_plan("decoder", &decoder_widths, &plan.decoder)?;
        let new_encoder: Vec<EncoderLayer<B>> = old_encoder
            .iter()
            .zip(&plan.encoder)
            .filter_map(|(layer, keep)| {
                keep.as_ref()
                    .map(|k| layer.clone().keep(&k.self_heads, &k.neurons))
            })
            .collect();
        let new_decoder: Vec<DecoderLayer<B>> = old_decoder
            .iter()
            .zip(&plan.decoder)
            .filter_map(|(layer, keep)| {
                keep.as_ref().map(|k| {
                    layer
                        .clone()
                        .keep(&k.self_heads, &k.cross_heads, &k.neurons)
                })
            })
            .collect();
        config.encoder_layers = new_encoder.len();
        config.decoder_layers = new_decoder.len();
        let widths = PrunedWidths {
            encoder: new_encoder.iter().map(|l| l.widths()).collect(),
            decoder: new_decoder.iter().map(|l| l.widths()).collect(),
        };
        config.pruned = None;
        let uniform = PrunedWidths {
            encoder: config.encoder_widths(),
            decoder: config.decoder_widths(),
        };
        config.pruned = (widths != uniform).then_some(widths);
        config.validate().map_err(ModelError::Config)?;
        Ok(self.with_layers(new_encoder, new_decoder, config))
    }
}

/// Refuses a plan that does not fit a stack whose layers have `widths` (self heads,
/// cross heads, neurons): one entry per layer, at least one layer kept, and in every
/// kept layer at least one and only existing units of each kind.
fn check_plan(stack: &str, widths: &[[usize; 3]], plan: &[LayerPlan]) -> Result<(), ModelError> {
    let err = |reason: String| {
        Err(ModelError::Config(format!(
            "{stack} pruning plan: {reason}"
        )))
    };
    if plan.len() != widths.len() {
        return err(format!(
            "{} entries for {} layers",
            plan.len(),
            widths.len()
        ));
    }
    if plan.iter().all(Option::is_none) {
        return err("every layer would be removed; keep at least one".into());
    }
    for (i, (keep, &[self_heads, cross_heads, d_ff])) in plan.iter().zip(widths).enumerate() {
        let Some(keep) = keep else { continue };
        let units = [
            ("self-attention heads", &keep.self_heads, self_heads),
            ("cross-attention heads", &keep.cross_heads, cross_heads),
            ("feed-forward neurons", &keep.neurons, d_ff),
        ];
        for (what, kept, count) in units {
            if count == 0 {
                continue;
            }
            if kept.is_empty() {
                return err(format!("layer {i} would keep no {what}"));
            }
            if !kept.windows(2).all(|w| w[0] < w[1]) || kept.last() >= Some(&count) {
                return err(format!(
                    "layer {i}: the {what} to keep must be ascending indices below {count}"
                ));
            }
        }
    }
    Ok(())
}

/// Per prunable unit, `dL/dgate` at this backward pass: the first-order change of the
/// loss if the unit's output were scaled (Michel et al. 2019, "Are Sixteen Heads Really
/// Better than One?"). Summing the absolute values over batches gives its importance.
pub fn gate_gradients<B: AutodiffBackend, M: Prune<B>>(
    model: &M,
    grads: &B::Gradients,
) -> ModelUnits<f32> {
    let (encoder, decoder) = model.layers();
    ModelUnits {
        encoder: encoder
            .iter()
            .map(|l| {
                let (self_heads, neurons) = l.gate_gradients(grads);
                LayerUnits {
                    self_heads,
                    cross_heads: Vec::new(),
                    neurons,
                }
            })
            .collect(),
        decoder: decoder
            .iter()
            .map(|l| {
                let [self_heads, cross_heads, neurons] = l.gate_gradients(grads);
                LayerUnits {
                    self_heads,
                    cross_heads,
                    neurons,
                }
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Transformer;
    use crate::loss::label_smoothed_cross_entropy;
    use burn::module::AutodiffModule;
    use paragen_backend::{TestAutodiffBackend, TestBackend as B};
    use paragen_data::SpecialTokens;

    fn model<BB: Backend>() -> Transformer<BB> {
        BB::seed(&Default::default(), 3);
        Transformer::new(
            &TransformerConfig::tiny(30, SpecialTokens::trained()),
            &Default::default(),
        )
        .unwrap()
    }

    fn ids<BB: Backend>(rows: &[&[i64]]) -> Tensor<BB, 2, Int> {
        let flat: Vec<i64> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_data(
            burn::tensor::TensorData::new(flat, [rows.len(), rows[0].len()])
                .convert::<BB::IntElem>(),
            &Default::default(),
        )
    }

    fn batch<BB: Backend>() -> [Tensor<BB, 2, Int>; 3] {
        [
            ids(&[&[5, 6, 7, 8, 2], &[9, 10, 11, 2, 0]]),
            ids(&[&[1, 12, 13, 14], &[1, 15, 16, 0]]),
            ids(&[&[12, 13, 14, 2], &[15, 16, 2, 0]]),
        ]
    }

    fn loss<BB: Backend>(model: &Transformer<BB>) -> Tensor<BB, 1> {
        let [src, tgt_in, tgt_out] = batch::<BB>();
        label_smoothed_cross_entropy(model.forward(src, tgt_in), tgt_out, 0, 0.0)
    }

    /// A model with one unit's gate set to the factor given.
    type Gate = dyn Fn(Transformer<B>, f32) -> Transformer<B>;

    fn all(n: usize) -> Vec<usize> {
        (0..n).collect()
    }

    /// Tiny: 2+2 layers, 4 heads of width 8, d_ff 64. Encoder 0 loses head 1 and
    /// neurons 1 and 5; decoder 1 loses self head 0, cross heads 2 and 3, neuron 63.
    fn plan() -> PrunePlan {
        let full = |cross| LayerUnits {
            self_heads: all(4),
            cross_heads: if cross { all(4) } else { Vec::new() },
            neurons: all(64),
        };
        PrunePlan {
            encoder: vec![
                Some(LayerUnits {
                    self_heads: vec![0, 2, 3],
                    cross_heads: Vec::new(),
                    neurons: (0..64).filter(|n| ![1, 5].contains(n)).collect(),
                }),
                Some(full(false)),
            ],
            decoder: vec![
                Some(full(true)),
                Some(LayerUnits {
                    self_heads: vec![1, 2, 3],
                    cross_heads: vec![0, 1],
                    neurons: all(63),
                }),
            ],
        }
    }

    fn max_diff(a: Tensor<B, 3>, b: Tensor<B, 3>) -> f32 {
        (a - b).abs().max().into_scalar()
    }

    #[test]
    fn removing_units_equals_closing_their_gates() {
        let model = model::<B>();
        let pruned = model.clone().prune(&plan()).unwrap();
        let mut gated = model;
        gated.encoder[0] = gated.encoder[0].clone().gate(&[1], &[1, 5], 0.0);
        gated.decoder[1] = gated.decoder[1].clone().gate(&[0], &[2, 3], &[63], 0.0);
        let [src, tgt_in, _] = batch::<B>();
        let diff = max_diff(
            pruned.forward(src.clone(), tgt_in.clone()),
            gated.forward(src, tgt_in),
        );
        assert!(diff < 1e-5, "pruned and gated models differ by {diff}");
        let widths = pruned.config().pruned.clone().unwrap();
        assert_eq!((widths.encoder[0].heads, widths.encoder[0].d_ff), (3, 62));
        assert_eq!(
            (
                widths.decoder[1].self_heads,
                widths.decoder[1].cross_heads,
                widths.decoder[1].d_ff
            ),
            (3, 2, 63)
        );
    }

    #[test]
    fn a_pruned_model_rebuilds_from_its_config() {
        let mut plan = plan();
        plan.encoder[1] = None;
        let pruned = model::<B>().prune(&plan).unwrap();
        let config = pruned.config().clone();
        assert_eq!((config.encoder_layers, config.decoder_layers), (1, 2));
        let json = serde_json::to_string(&config).unwrap();
        let config: TransformerConfig = serde_json::from_str(&json).unwrap();
        let rebuilt = Transformer::<B>::new(&config, &Default::default())
            .unwrap()
            .load_record(pruned.clone().into_record());
        let [src, tgt_in, _] = batch::<B>();
        assert_eq!(
            max_diff(
                pruned.forward(src.clone(), tgt_in.clone()),
                rebuilt.forward(src, tgt_in)
            ),
            0.0
        );
        // Fewer multiply-adds, and an unpruned config reads as before.
        let full = TransformerConfig::tiny(30, SpecialTokens::trained());
        assert!(config.forward_flops(1, 5, 4) < full.forward_flops(1, 5, 4));
        assert!(!serde_json::to_string(&full).unwrap().contains("pruned"));
    }

    #[test]
    fn gate_gradients_are_the_derivative_of_the_loss_in_the_gate() {
        let model = model::<TestAutodiffBackend>();
        let grads = loss(&model).backward();
        let scores = gate_gradients(&model, &grads);
        assert_eq!(scores.encoder.len(), 2);
        assert_eq!(scores.decoder[0].cross_heads.len(), 4);
        assert_eq!(scores.decoder[0].neurons.len(), 64);
        let inner = model.valid();
        let epsilon = 1e-2;
        let at = |factor: f32, which: &Gate| loss(&which(inner.clone(), factor)).into_scalar();
        let cases: [(f32, &Gate); 3] = [
            (scores.encoder[1].self_heads[2], &|mut m, f| {
                m.encoder[1] = m.encoder[1].clone().gate(&[2], &[], f);
                m
            }),
            (scores.decoder[0].cross_heads[1], &|mut m, f| {
                m.decoder[0] = m.decoder[0].clone().gate(&[], &[1], &[], f);
                m
            }),
            (scores.decoder[1].neurons[7], &|mut m, f| {
                m.decoder[1] = m.decoder[1].clone().gate(&[], &[], &[7], f);
                m
            }),
        ];
        for (i, (gradient, gate)) in cases.into_iter().enumerate() {
            let numeric = (at(1.0 + epsilon, gate) - at(1.0 - epsilon, gate)) / (2.0 * epsilon);
            assert!(
                gradient.abs() > 1e-3 && (numeric - gradient).abs() <= 1e-4 + 0.01 * gradient.abs(),
                "case {i}: analytic {gradient}, numeric {numeric}"
            );
        }
        let mut total = ModelUnits::default();
        total.add_abs(&scores);
        total.add_abs(&scores);
        assert_eq!(
            total.decoder[1].neurons[7],
            2.0 * scores.decoder[1].neurons[7].abs()
        );
    }

    #[test]
    fn plans_that_do_not_fit_are_refused_by_name() {
        let model = model::<B>();
        let mut no_heads = plan();
        no_heads.encoder[0].as_mut().unwrap().self_heads.clear();
        let mut out_of_range = plan();
        out_of_range.decoder[0].as_mut().unwrap().neurons.push(64);
        let mut no_decoder = plan();
        no_decoder.decoder = vec![None, None];
        let mut short = plan();
        short.encoder.pop();
        for (plan, message) in [
            (no_heads, "keep no self-attention heads"),
            (out_of_range, "ascending indices below 64"),
            (no_decoder, "every layer would be removed"),
            (short, "1 entries for 2 layers"),
        ] {
            let err = model.clone().prune(&plan).unwrap_err().to_string();
            assert!(err.contains(message), "{err}");
        }
    }
}
