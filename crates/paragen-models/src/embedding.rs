//! [`TiedEmbedding`]: the one table of every paragen model that embeds source and
//! target tokens and projects decoder states onto the vocabulary, in float or quantized
//! to int8 / int4 with one scale per token.
//!
//! Its float record keeps burn `Embedding`'s name (`weight`, `[vocab, d_model]`), so
//! checkpoints of either load into it. Quantized, it holds the transposed table
//! (`[d_model, vocab]`, a column per token) as a `QuantizedWeight`: the output
//! projection is then the same integer product as a quantized dense layer, and a lookup
//! dequantizes only the looked-up columns.

use std::sync::{Arc, OnceLock};

use burn::module::Param;
use burn::nn::{EmbeddingConfig, Initializer};
use burn::prelude::*;
use burn::tensor::module::embedding;
use paragen_backend::int8::{self, Int8Weights};

use crate::dense::QuantizedWeight;

/// The shared token table: `[vocab, d_model]`.
#[derive(Module, Debug)]
pub struct TiedEmbedding<B: Backend> {
    /// `[vocab, d_model]`; absent once quantized.
    weight: Option<Param<Tensor<B, 2>>>,
    /// The transposed table `[d_model, vocab]`, one scale per token.
    quantized: Option<QuantizedWeight<B>>,
    host: HostProjection,
}

/// The whole vocabulary's projection for the host kernel, built at first use.
#[derive(Clone, Debug, Default)]
struct HostProjection(Arc<OnceLock<Arc<Int8Weights>>>);

/// The output projection of one batch, onto the whole vocabulary or a shortlist.
pub enum Projection<B: Backend> {
    /// `[d_model, tokens]`.
    Float(Tensor<B, 2>),
    Int8(Arc<Int8Weights>),
}

impl<B: Backend> Projection<B> {
    /// Logits `[rows, tokens]` of decoder states `[rows, d_model]`.
    pub fn apply(&self, rows: Tensor<B, 2>) -> Tensor<B, 2> {
        match self {
            Projection::Float(weight) => rows.matmul(weight.clone()),
            Projection::Int8(weights) => int8::linear(rows, weights, None),
        }
    }

    /// Tokens projected onto.
    pub fn tokens(&self) -> usize {
        match self {
            Projection::Float(weight) => weight.dims()[1],
            Projection::Int8(weights) => weights.d_out(),
        }
    }
}

impl<B: Backend> TiedEmbedding<B> {
    /// A float table drawn from N(0, 1/d): fairseq's recipe with the sqrt(d) scaling of
    /// the embedded tokens, so that token and position signals have the same magnitude.
    pub fn new(vocab: usize, d_model: usize, device: &B::Device) -> Self {
        let table = EmbeddingConfig::new(vocab, d_model)
            .with_initializer(Initializer::Normal {
                mean: 0.0,
                std: (d_model as f64).powf(-0.5),
            })
            .init::<B>(device);
        Self {
            weight: Some(table.weight),
            quantized: None,
            host: HostProjection::default(),
        }
    }

    /// `[vocab, d_model]`.
    pub fn dims(&self) -> [usize; 2] {
        match (&self.weight, &self.quantized) {
            (Some(w), _) => w.dims(),
            (None, Some(q)) => [q.d_out(), q.d_in()],
            (None, None) => unreachable!("a table has float or quantized weights"),
        }
    }

    pub fn device(&self) -> B::Device {
        match (&self.weight, &self.quantized) {
            (Some(w), _) => w.device(),
            (None, Some(q)) => q.device(),
            (None, None) => unreachable!("a table has float or quantized weights"),
        }
    }

    /// The float table, `None` once quantized.
    pub fn weight(&self) -> Option<&Param<Tensor<B, 2>>> {
        self.weight.as_ref()
    }

    /// Rows of the tokens: `[batch, time]` ids to `[batch, time, d_model]`.
    pub fn forward(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        match (&self.weight, &self.quantized) {
            (Some(weight), _) => embedding(weight.val(), tokens),
            (None, Some(quantized)) => {
                let [batch, time] = tokens.dims();
                let ids = tokens.reshape([batch * time]);
                let columns = quantized.dequantize_columns_on_device(ids);
                let d = columns.dims()[0];
                columns.transpose().reshape([batch, time, d])
            }
            (None, None) => unreachable!("a table has float or quantized weights"),
        }
    }

    /// The projection onto `vocabulary` (sorted token ids), or onto every token.
    pub fn projection(&self, vocabulary: Option<&[u32]>) -> Projection<B> {
        match (&self.weight, &self.quantized) {
            (Some(weight), _) => {
                let weight = weight.val();
                let weight = match vocabulary {
                    Some(ids) => weight.select(0, id_tensor(ids, &self.device())),
                    None => weight,
                };
                Projection::Float(weight.transpose())
            }
            (None, Some(quantized)) if int8::runs_on_host::<B>() => {
                let whole = self
                    .host
                    .0
                    .get_or_init(|| Arc::new(quantized.host_weights()));
                Projection::Int8(match vocabulary {
                    // From the host copy: reading the table back per batch cost more
                    // than the shortlist saved.
                    Some(ids) => Arc::new(whole.select_columns(ids)),
                    None => whole.clone(),
                })
            }
            (None, Some(quantized)) => Projection::Float(match vocabulary {
                Some(ids) => quantized.dequantize_columns_on_device(id_tensor(ids, &self.device())),
                None => quantized.dequantize_on_device(),
            }),
            (None, None) => unreachable!("a table has float or quantized weights"),
        }
    }

    /// Output logits of decoder states: `[batch, time, d_model]` to `[batch, time, vocab]`.
    pub fn project(&self, h: Tensor<B, 3>) -> Tensor<B, 3> {
        let [batch, time, d] = h.dims();
        let logits = self.projection(None).apply(h.reshape([batch * time, d]));
        let vocab = logits.dims()[1];
        logits.reshape([batch, time, vocab])
    }

    /// The table quantized to `bits`, one scale per token.
    pub fn quantize(self, bits: u8) -> Self {
        let Some(weight) = self.weight else {
            return self;
        };
        Self {
            weight: None,
            quantized: Some(QuantizedWeight::from_float(weight.val().transpose(), bits)),
            host: HostProjection::default(),
        }
    }

    /// The layout a quantized table of these shapes loads into.
    pub fn quantized_layout(self, bits: u8) -> Self {
        let Some(weight) = &self.weight else {
            return self;
        };
        let [vocab, d] = weight.dims();
        Self {
            weight: None,
            quantized: Some(QuantizedWeight::layout(d, vocab, bits, &weight.device())),
            host: HostProjection::default(),
        }
    }
}

fn id_tensor<B: Backend>(ids: &[u32], device: &B::Device) -> Tensor<B, 1, Int> {
    Tensor::from_data(
        burn::tensor::TensorData::new(ids.iter().map(|&id| i64::from(id)).collect(), [ids.len()])
            .convert::<B::IntElem>(),
        device,
    )
}

/// `indices` as a 1-d integer tensor, e.g. for `select`.
pub(crate) fn index_tensor<B: Backend>(indices: &[usize], device: &B::Device) -> Tensor<B, 1, Int> {
    Tensor::from_data(
        burn::tensor::TensorData::new(indices.iter().map(|&i| i as i64).collect(), [indices.len()])
            .convert::<B::IntElem>(),
        device,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use paragen_backend::TestBackend as B;

    fn table() -> TiedEmbedding<B> {
        B::seed(&Default::default(), 3);
        crate::layers::materialize(TiedEmbedding::new(40, 16, &Default::default()))
    }

    fn max_abs<const D: usize>(t: Tensor<B, D>) -> f32 {
        t.abs().max().into_scalar()
    }

    #[test]
    fn a_quantized_table_looks_up_and_projects_close_to_the_float_one() {
        let float = table();
        let device = Default::default();
        let tokens = Tensor::<B, 2, Int>::from_data([[0, 5, 39], [7, 7, 1]], &device);
        let h = Tensor::<B, 3>::random(
            [2, 3, 16],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        let (rows, logits) = (float.forward(tokens.clone()), float.project(h.clone()));
        for (bits, tolerance) in [(8u8, 0.01f32), (4, 0.15)] {
            let quantized = float.clone().quantize(bits);
            assert_eq!(quantized.dims(), [40, 16]);
            let err =
                max_abs(quantized.forward(tokens.clone()) - rows.clone()) / max_abs(rows.clone());
            assert!(err < tolerance, "int{bits} lookup: relative error {err}");
            let err =
                max_abs(quantized.project(h.clone()) - logits.clone()) / max_abs(logits.clone());
            assert!(
                err < tolerance * 2.0,
                "int{bits} projection: relative error {err}"
            );
        }
    }

    #[test]
    fn a_projection_onto_a_shortlist_is_the_whole_projection_restricted_to_it() {
        let ids = [0u32, 3, 17, 39];
        let device = Default::default();
        let rows = Tensor::<B, 2>::random(
            [5, 16],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        for model in [table(), table().quantize(8)] {
            let whole = model.projection(None).apply(rows.clone());
            let some = model.projection(Some(&ids));
            assert_eq!(some.tokens(), ids.len());
            let picked = whole.select(1, id_tensor(&ids, &device));
            assert!(max_abs(some.apply(rows.clone()) - picked) < 1e-5);
        }
    }
}
