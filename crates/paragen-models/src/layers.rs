//! Building blocks shared by every paragen Transformer: attention with a KV cache,
//! feed-forward blocks, positional encodings and pre-norm encoder/decoder layers.

use burn::nn::{
    Dropout, DropoutConfig, Embedding, EmbeddingConfig, Initializer, LayerNorm, LayerNormConfig,
};
use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::activation::relu;

pub use crate::attention::MultiHeadAttention;
use crate::config::{DecoderWidths, EncoderWidths, TransformerConfig};
use crate::dense::Dense;
use crate::embedding::TiedEmbedding;

/// Initializes every parameter of `module` now.
///
/// burn 0.21 initializes parameters lazily, and cloning a module whose parameters were
/// never read gives the clone its *own* random initialization: a copy saved before the
/// first forward pass would then differ from the model in use. Every paragen model is
/// materialized at construction so that clones, saves and the model agree.
pub fn materialize<B: Backend, M: Module<B>>(module: M) -> M {
    struct Touch;
    impl<B: Backend> burn::module::ModuleVisitor<B> for Touch {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<B, D>>) {
            let _ = param.val();
        }
        fn visit_int<const D: usize>(&mut self, param: &burn::module::Param<Tensor<B, D, Int>>) {
            let _ = param.val();
        }
        fn visit_bool<const D: usize>(&mut self, param: &burn::module::Param<Tensor<B, D, Bool>>) {
            let _ = param.val();
        }
    }
    module.visit(&mut Touch);
    module
}

/// The encoder's output for a batch, reused by every decoding step.
#[derive(Clone, Debug)]
pub struct EncoderOutput<B: Backend> {
    /// `[batch, src_time, d_model]`
    pub memory: Tensor<B, 3>,
    /// `[batch, 1, src_time]`, true at source padding.
    pub src_mask: Tensor<B, 3, Bool>,
}

/// Overwrites the first layers of `to` with clones of `from`'s.
pub(crate) fn copy_layers<L: Clone>(to: &mut [L], from: &[L]) {
    for (to, from) in to.iter_mut().zip(from) {
        *to = from.clone();
    }
}

/// The encoder and decoder layers of a model of `config`'s shapes (a pruned model's
/// widths per layer).
pub(crate) fn new_stacks<B: Backend>(
    config: &TransformerConfig,
    device: &B::Device,
) -> (Vec<EncoderLayer<B>>, Vec<DecoderLayer<B>>) {
    let (d, d_head, dropout) = (config.d_model, config.head_dim(), config.dropout);
    (
        config
            .encoder_widths()
            .into_iter()
            .map(|w| EncoderLayer::new(d, d_head, w, dropout, device))
            .collect(),
        config
            .decoder_widths()
            .into_iter()
            .map(|w| DecoderLayer::new(d, d_head, w, dropout, device))
            .collect(),
    )
}

/// The input side every paragen model shares: one embedding table for source, target
/// and output projection, and learned positions when the config asks for them.
///
/// Not a module of its own, so that checkpoints keep their parameter names
/// (`embedding`, `learned_positions`) in every model that holds these fields.
pub(crate) fn new_embeddings<B: Backend>(
    config: &crate::config::TransformerConfig,
    device: &B::Device,
) -> (TiedEmbedding<B>, Option<Embedding<B>>) {
    let d = config.d_model;
    let embedding = TiedEmbedding::new(config.vocab_size, d, device);
    let learned_positions = (config.positions == crate::config::PositionKind::Learned).then(|| {
        EmbeddingConfig::new(config.max_positions, d)
            .with_initializer(Initializer::Normal {
                mean: 0.0,
                std: 1.0,
            })
            .init(device)
    });
    (embedding, learned_positions)
}

/// Token embeddings scaled by sqrt(d), plus positions `start..start + time` (learned
/// when `learned_positions` is given, else sinusoidal), then embedding dropout.
///
/// # Shapes
/// - `tokens`: `[batch, time]`; returns `[batch, time, d_model]`.
pub(crate) fn embed<B: Backend>(
    embedding: &TiedEmbedding<B>,
    learned_positions: Option<&Embedding<B>>,
    dropout: &Dropout,
    tokens: Tensor<B, 2, Int>,
    start: usize,
) -> Tensor<B, 3> {
    let [batch, time] = tokens.dims();
    let d = embedding.dims()[1];
    let device = tokens.device();
    let x = embedding.forward(tokens) * (d as f64).sqrt();
    let positions = match learned_positions {
        Some(table) => {
            let ids = Tensor::<B, 1, Int>::arange(start as i64..(start + time) as i64, &device);
            table.forward(ids.unsqueeze_dim(0)).squeeze_dim(0)
        }
        None => sinusoidal_positions(start, time, d, &device),
    };
    dropout.forward(x + positions.unsqueeze_dim::<3>(0).expand([batch, time, d]))
}

/// The encoder every model shares: embed the padded source, run the layers, normalise.
pub(crate) fn encode<B: Backend>(
    embedded: Tensor<B, 3>,
    src_mask: Tensor<B, 3, Bool>,
    layers: &[EncoderLayer<B>],
    norm: &LayerNorm<B>,
) -> EncoderOutput<B> {
    let mut x = embedded;
    for layer in layers {
        x = layer.forward(x, src_mask.clone());
    }
    EncoderOutput {
        memory: norm.forward(x),
        src_mask,
    }
}

/// Applies `f` to every dense layer of an encoder and a decoder stack, in order.
pub(crate) fn map_dense_layers<B: Backend>(
    encoder: Vec<EncoderLayer<B>>,
    decoder: Vec<DecoderLayer<B>>,
    f: &mut impl FnMut(Dense<B>) -> Dense<B>,
) -> (Vec<EncoderLayer<B>>, Vec<DecoderLayer<B>>) {
    (
        encoder.into_iter().map(|l| l.map_dense(f)).collect(),
        decoder.into_iter().map(|l| l.map_dense(f)).collect(),
    )
}

/// Position-wise feed-forward block: `Linear -> ReLU -> dropout -> Linear`.
#[derive(Module, Debug)]
pub struct FeedForward<B: Backend> {
    inner: Dense<B>,
    outer: Dense<B>,
    dropout: Dropout,
}

impl<B: Backend> FeedForward<B> {
    pub(crate) fn map_dense(self, f: &mut impl FnMut(Dense<B>) -> Dense<B>) -> Self {
        Self {
            inner: f(self.inner),
            outer: f(self.outer),
            ..self
        }
    }

    pub fn new(d_model: usize, d_ff: usize, dropout: f64, device: &B::Device) -> Self {
        Self {
            inner: Dense::new(d_model, d_ff, device),
            outer: Dense::new(d_ff, d_model, device),
            dropout: DropoutConfig::new(dropout).init(),
        }
    }

    /// The block with only the hidden neurons `neurons`.
    pub(crate) fn keep_neurons(self, neurons: &[usize]) -> Self {
        Self {
            inner: self.inner.keep_outputs(neurons),
            outer: self.outer.keep_inputs(neurons),
            ..self
        }
    }

    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let hidden = relu(self.inner.forward(x));
        self.outer.forward(self.dropout.forward(hidden))
    }
}

/// Sine/cosine position encodings for positions `start..start + len`, `[len, d_model]`,
/// laid out as in fairseq (all sines, then all cosines).
pub fn sinusoidal_positions<B: Backend>(
    start: usize,
    len: usize,
    d_model: usize,
    device: &B::Device,
) -> Tensor<B, 2> {
    let half = d_model / 2;
    let scale = (10_000f64).ln() / (half.max(2) - 1) as f64;
    let mut values = Vec::with_capacity(len * d_model);
    for pos in start..start + len {
        let angles: Vec<f64> = (0..half)
            .map(|i| pos as f64 * (-(i as f64) * scale).exp())
            .collect();
        values.extend(angles.iter().map(|a| a.sin() as f32));
        values.extend(angles.iter().map(|a| a.cos() as f32));
    }
    Tensor::from_data(TensorData::new(values, [len, d_model]), device)
}

/// Pre-norm encoder layer: self-attention then feed-forward, each with a residual.
#[derive(Module, Debug)]
pub struct EncoderLayer<B: Backend> {
    attention_norm: LayerNorm<B>,
    attention: MultiHeadAttention<B>,
    ffn_norm: LayerNorm<B>,
    ffn: FeedForward<B>,
    dropout: Dropout,
}

impl<B: Backend> EncoderLayer<B> {
    pub(crate) fn quantized_bits(&self) -> Option<u8> {
        self.attention.quantized_bits()
    }

    pub(crate) fn map_dense(self, f: &mut impl FnMut(Dense<B>) -> Dense<B>) -> Self {
        Self {
            attention: self.attention.map_dense(f),
            ffn: self.ffn.map_dense(f),
            ..self
        }
    }

    pub fn new(
        d_model: usize,
        d_head: usize,
        widths: EncoderWidths,
        dropout: f64,
        device: &B::Device,
    ) -> Self {
        Self {
            attention_norm: LayerNormConfig::new(d_model).init(device),
            attention: MultiHeadAttention::new(d_model, widths.heads, d_head, dropout, device),
            ffn_norm: LayerNormConfig::new(d_model).init(device),
            ffn: FeedForward::new(d_model, widths.d_ff, dropout, device),
            dropout: DropoutConfig::new(dropout).init(),
        }
    }

    pub fn widths(&self) -> EncoderWidths {
        EncoderWidths {
            heads: self.attention.n_heads(),
            d_ff: self.ffn.inner.d_out(),
        }
    }

    /// The layer with only the heads and feed-forward neurons named.
    pub(crate) fn keep(self, heads: &[usize], neurons: &[usize]) -> Self {
        Self {
            attention: self.attention.keep_heads(heads),
            ffn: self.ffn.keep_neurons(neurons),
            ..self
        }
    }

    /// # Shapes
    /// - `x`: `[batch, time, d_model]`; `pad_mask`: `[batch, 1, time]`, true at padding.
    pub fn forward(&self, x: Tensor<B, 3>, pad_mask: Tensor<B, 3, Bool>) -> Tensor<B, 3> {
        let h = self.attention_norm.forward(x.clone());
        let x = x + self
            .dropout
            .forward(self.attention.forward(h.clone(), h, Some(pad_mask)));
        let h = self.ffn_norm.forward(x.clone());
        x.clone() + self.dropout.forward(self.ffn.forward(h))
    }
}

/// Cached keys and values of one decoder layer.
#[derive(Clone, Debug)]
pub struct DecoderLayerCache<B: Backend> {
    /// Self-attention keys/values of the tokens decoded so far, `[batch, heads, t, d_head]`.
    self_kv: Option<(Tensor<B, 4>, Tensor<B, 4>)>,
    /// Cross-attention keys/values of the encoder output, computed once.
    cross_kv: (Tensor<B, 4>, Tensor<B, 4>),
}

impl<B: Backend> DecoderLayerCache<B> {
    /// Keeps the rows named by `indices` (beam search reordering), `[new_batch]`.
    pub fn select(&self, indices: Tensor<B, 1, Int>) -> Self {
        let pick = |(k, v): &(Tensor<B, 4>, Tensor<B, 4>)| {
            (
                k.clone().select(0, indices.clone()),
                v.clone().select(0, indices.clone()),
            )
        };
        Self {
            self_kv: self.self_kv.as_ref().map(pick),
            cross_kv: pick(&self.cross_kv),
        }
    }

    /// Number of decoded positions held in the cache.
    pub fn len(&self) -> usize {
        self.self_kv.as_ref().map_or(0, |(k, _)| k.dims()[2])
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Pre-norm decoder layer: self-attention, cross-attention, feed-forward.
#[derive(Module, Debug)]
pub struct DecoderLayer<B: Backend> {
    self_norm: LayerNorm<B>,
    self_attention: MultiHeadAttention<B>,
    cross_norm: LayerNorm<B>,
    cross_attention: MultiHeadAttention<B>,
    ffn_norm: LayerNorm<B>,
    ffn: FeedForward<B>,
    dropout: Dropout,
}

impl<B: Backend> DecoderLayer<B> {
    pub(crate) fn map_dense(self, f: &mut impl FnMut(Dense<B>) -> Dense<B>) -> Self {
        Self {
            self_attention: self.self_attention.map_dense(f),
            cross_attention: self.cross_attention.map_dense(f),
            ffn: self.ffn.map_dense(f),
            ..self
        }
    }

    pub fn new(
        d_model: usize,
        d_head: usize,
        widths: DecoderWidths,
        dropout: f64,
        device: &B::Device,
    ) -> Self {
        let attention = |heads| MultiHeadAttention::new(d_model, heads, d_head, dropout, device);
        Self {
            self_norm: LayerNormConfig::new(d_model).init(device),
            self_attention: attention(widths.self_heads),
            cross_norm: LayerNormConfig::new(d_model).init(device),
            cross_attention: attention(widths.cross_heads),
            ffn_norm: LayerNormConfig::new(d_model).init(device),
            ffn: FeedForward::new(d_model, widths.d_ff, dropout, device),
            dropout: DropoutConfig::new(dropout).init(),
        }
    }

    pub fn widths(&self) -> DecoderWidths {
        DecoderWidths {
            self_heads: self.self_attention.n_heads(),
            cross_heads: self.cross_attention.n_heads(),
            d_ff: self.ffn.inner.d_out(),
        }
    }

    /// The layer with only the self- and cross-attention heads and the feed-forward
    /// neurons named.
    pub(crate) fn keep(
        self,
        self_heads: &[usize],
        cross_heads: &[usize],
        neurons: &[usize],
    ) -> Self {
        Self {
            self_attention: self.self_attention.keep_heads(self_heads),
            cross_attention: self.cross_attention.keep_heads(cross_heads),
            ffn: self.ffn.keep_neurons(neurons),
            ..self
        }
    }

    /// Residual cross-attention and feed-forward, shared by the full and cached paths.
    fn cross_and_ffn(
        &self,
        x: Tensor<B, 3>,
        cross_kv: (Tensor<B, 4>, Tensor<B, 4>),
        src_mask: Tensor<B, 3, Bool>,
    ) -> Tensor<B, 3> {
        let h = self.cross_norm.forward(x.clone());
        let (k, v) = cross_kv;
        let x = x + self
            .dropout
            .forward(self.cross_attention.attend(h, k, v, Some(src_mask)));
        let h = self.ffn_norm.forward(x.clone());
        x.clone() + self.dropout.forward(self.ffn.forward(h))
    }

    /// Whole-sequence decoding (training, scoring).
    ///
    /// # Shapes
    /// - `x`: `[batch, tgt_time, d_model]`; `memory`: `[batch, src_time, d_model]`
    /// - `self_mask`: `[batch or 1, tgt_time, tgt_time]` (causal for AR, padding for NAT)
    /// - `src_mask`: `[batch, 1, src_time]`, true at source padding
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        memory: Tensor<B, 3>,
        self_mask: Tensor<B, 3, Bool>,
        src_mask: Tensor<B, 3, Bool>,
    ) -> Tensor<B, 3> {
        let h = self.self_norm.forward(x.clone());
        let x =
            x + self
                .dropout
                .forward(self.self_attention.forward(h.clone(), h, Some(self_mask)));
        let cross_kv = self.cross_attention.project_kv(memory);
        self.cross_and_ffn(x, cross_kv, src_mask)
    }

    /// Starts a cache for incremental decoding against `memory`.
    pub fn init_cache(&self, memory: Tensor<B, 3>) -> DecoderLayerCache<B> {
        DecoderLayerCache {
            self_kv: None,
            cross_kv: self.cross_attention.project_kv(memory),
        }
    }

    /// One decoding step: projects only the new token and appends it to the cache.
    ///
    /// # Shapes
    /// - `x`: `[batch, 1, d_model]`; returns `[batch, 1, d_model]`.
    pub fn step(
        &self,
        x: Tensor<B, 3>,
        cache: &mut DecoderLayerCache<B>,
        src_mask: Tensor<B, 3, Bool>,
    ) -> Tensor<B, 3> {
        let h = self.self_norm.forward(x.clone());
        let (k_new, v_new) = self.self_attention.project_kv(h.clone());
        let (keys, values) = match cache.self_kv.take() {
            Some((k, v)) => (
                Tensor::cat(vec![k, k_new], 2),
                Tensor::cat(vec![v, v_new], 2),
            ),
            None => (k_new, v_new),
        };
        cache.self_kv = Some((keys.clone(), values.clone()));
        // The cache holds only past and current tokens, so no causal mask is needed.
        let x = x + self
            .dropout
            .forward(self.self_attention.attend(h, keys, values, None));
        self.cross_and_ffn(x, cache.cross_kv.clone(), src_mask)
    }
}

/// Gate gradients (`dL/dgate`, see [`Dense::input_gate_gradients`]) of a layer's prunable
/// units: its attention heads and feed-forward neurons.
impl<B: burn::tensor::backend::AutodiffBackend> EncoderLayer<B> {
    /// Per head, then per feed-forward neuron.
    pub(crate) fn gate_gradients(&self, grads: &B::Gradients) -> (Vec<f32>, Vec<f32>) {
        (
            self.attention.head_gate_gradients(grads),
            self.ffn.outer.input_gate_gradients(grads),
        )
    }
}

impl<B: burn::tensor::backend::AutodiffBackend> DecoderLayer<B> {
    /// Per self-attention head, per cross-attention head, per feed-forward neuron.
    pub(crate) fn gate_gradients(&self, grads: &B::Gradients) -> [Vec<f32>; 3] {
        [
            self.self_attention.head_gate_gradients(grads),
            self.cross_attention.head_gate_gradients(grads),
            self.ffn.outer.input_gate_gradients(grads),
        ]
    }
}

/// Gates on heads and neurons (their outputs scaled by `factor`), for tests of pruning
/// and importance: a gate of 0 must equal removing the unit.
#[cfg(test)]
impl<B: Backend> EncoderLayer<B> {
    pub(crate) fn gate(self, heads: &[usize], neurons: &[usize], factor: f32) -> Self {
        Self {
            attention: self.attention.gate_heads(heads, factor),
            ffn: FeedForward {
                outer: self.ffn.outer.scale_inputs(neurons, factor),
                ..self.ffn
            },
            ..self
        }
    }
}

#[cfg(test)]
impl<B: Backend> DecoderLayer<B> {
    pub(crate) fn gate(
        self,
        self_heads: &[usize],
        cross_heads: &[usize],
        neurons: &[usize],
        factor: f32,
    ) -> Self {
        Self {
            self_attention: self.self_attention.gate_heads(self_heads, factor),
            cross_attention: self.cross_attention.gate_heads(cross_heads, factor),
            ffn: FeedForward {
                outer: self.ffn.outer.scale_inputs(neurons, factor),
                ..self.ffn
            },
            ..self
        }
    }
}

/// `[1, t, t]` mask that forbids attending to later positions.
pub fn causal_mask<B: Backend>(time: usize, device: &B::Device) -> Tensor<B, 3, Bool> {
    // burn's `tril_mask` is true *outside* the lower triangle, i.e. on future positions.
    Tensor::<B, 2, Bool>::tril_mask([time, time], 0, device).unsqueeze_dim(0)
}

/// `[batch, 1, time]` mask, true where `tokens` is the pad id.
pub fn padding_mask<B: Backend>(tokens: &Tensor<B, 2, Int>, pad: u32) -> Tensor<B, 3, Bool> {
    tokens.clone().equal_elem(pad as i64).unsqueeze_dim(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use paragen_backend::TestBackend;

    type B = TestBackend;

    #[test]
    fn causal_mask_forbids_only_the_future() {
        let m = causal_mask::<B>(3, &Default::default());
        let v: Vec<bool> = m.into_data().iter::<bool>().collect();
        assert_eq!(
            v,
            vec![false, true, true, false, false, true, false, false, false]
        );
    }

    #[test]
    fn sinusoids_match_the_formula() {
        let p = sinusoidal_positions::<B>(3, 2, 4, &Default::default());
        let v: Vec<f32> = p.into_data().iter::<f32>().collect();
        // half = 2, frequencies 1 and 1e-4.
        let expect = [
            3f64.sin(),
            (3.0 * 1e-4f64).sin(),
            3f64.cos(),
            (3.0 * 1e-4f64).cos(),
            4f64.sin(),
            (4.0 * 1e-4f64).sin(),
            4f64.cos(),
            (4.0 * 1e-4f64).cos(),
        ];
        for (a, b) in v.iter().zip(expect) {
            assert!((f64::from(*a) - b).abs() < 1e-5, "{v:?}");
        }
    }
}
