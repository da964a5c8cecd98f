//! Building blocks shared by every paragen Transformer: attention with a KV cache,
//! feed-forward blocks, positional encodings and pre-norm encoder/decoder layers.

use burn::nn::{
    Dropout, DropoutConfig, Embedding, EmbeddingConfig, Initializer, LayerNorm, LayerNormConfig,
};
use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::activation::{relu, softmax};

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

/// Value added to the attention scores of masked positions (large but finite, so a fully
/// masked row still gives a defined softmax).
const MASKED_SCORE: f32 = -1.0e9;

/// Multi-head scaled dot-product attention (Vaswani et al. 2017, section 3.2).
#[derive(Module, Debug)]
pub struct MultiHeadAttention<B: Backend> {
    query: Dense<B>,
    key: Dense<B>,
    value: Dense<B>,
    output: Dense<B>,
    dropout: Dropout,
    n_heads: usize,
}

impl<B: Backend> MultiHeadAttention<B> {
    pub(crate) fn map_dense(self, f: &mut impl FnMut(Dense<B>) -> Dense<B>) -> Self {
        Self {
            query: f(self.query),
            key: f(self.key),
            value: f(self.value),
            output: f(self.output),
            ..self
        }
    }

    pub fn new(d_model: usize, n_heads: usize, dropout: f64, device: &B::Device) -> Self {
        let linear = || Dense::new(d_model, d_model, device);
        Self {
            query: linear(),
            key: linear(),
            value: linear(),
            output: linear(),
            dropout: DropoutConfig::new(dropout).init(),
            n_heads,
        }
    }

    /// `[batch, time, d_model]` to `[batch, heads, time, d_head]`.
    fn split_heads(&self, x: Tensor<B, 3>) -> Tensor<B, 4> {
        let [batch, time, d_model] = x.dims();
        x.reshape([batch, time, self.n_heads, d_model / self.n_heads])
            .swap_dims(1, 2)
    }

    /// Projects the inputs of keys and values once, e.g. to fill a cache.
    ///
    /// # Shapes
    /// - `x`: `[batch, time, d_model]`; returns keys and values `[batch, heads, time, d_head]`.
    pub fn project_kv(&self, x: Tensor<B, 3>) -> (Tensor<B, 4>, Tensor<B, 4>) {
        (
            self.split_heads(self.key.forward(x.clone())),
            self.split_heads(self.value.forward(x)),
        )
    }

    /// Attends from `x` over already projected keys and values.
    ///
    /// # Shapes
    /// - `x`: `[batch, q_time, d_model]`
    /// - `keys`, `values`: `[batch, heads, k_time, d_head]`
    /// - `mask`: `[batch, q_time or 1, k_time]`, true where attention is forbidden
    /// - returns `[batch, q_time, d_model]`
    pub fn attend(
        &self,
        x: Tensor<B, 3>,
        keys: Tensor<B, 4>,
        values: Tensor<B, 4>,
        mask: Option<Tensor<B, 3, Bool>>,
    ) -> Tensor<B, 3> {
        let [batch, q_time, d_model] = x.dims();
        let d_head = d_model / self.n_heads;
        let k_time = keys.dims()[2];
        // Scaled before the head split, while the tensor is still contiguous.
        let q = self.split_heads(self.query.forward(x) * (1.0 / (d_head as f64).sqrt()));
        let mut scores = q.matmul(keys.swap_dims(2, 3));
        if let Some(mask) = mask {
            let mask = mask
                .unsqueeze_dim::<4>(1)
                .expand([batch, self.n_heads, q_time, k_time]);
            scores = scores.mask_fill(mask, MASKED_SCORE);
        }
        // Not burn's fused `attention` op at inference: on flex it runs one (batch, head)
        // at a time on one core, and measured 10-20% slower here than these batched ops.
        let context = self.dropout.forward(softmax(scores, 3)).matmul(values);
        let context = context.swap_dims(1, 2).reshape([batch, q_time, d_model]);
        self.output.forward(context)
    }

    /// Attention of `x` over `memory` (self-attention when they are the same tensor).
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        memory: Tensor<B, 3>,
        mask: Option<Tensor<B, 3, Bool>>,
    ) -> Tensor<B, 3> {
        let (keys, values) = self.project_kv(memory);
        self.attend(x, keys, values, mask)
    }
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
        self.attention.query.quantized_bits()
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
        n_heads: usize,
        d_ff: usize,
        dropout: f64,
        device: &B::Device,
    ) -> Self {
        Self {
            attention_norm: LayerNormConfig::new(d_model).init(device),
            attention: MultiHeadAttention::new(d_model, n_heads, dropout, device),
            ffn_norm: LayerNormConfig::new(d_model).init(device),
            ffn: FeedForward::new(d_model, d_ff, dropout, device),
            dropout: DropoutConfig::new(dropout).init(),
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
        n_heads: usize,
        d_ff: usize,
        dropout: f64,
        device: &B::Device,
    ) -> Self {
        Self {
            self_norm: LayerNormConfig::new(d_model).init(device),
            self_attention: MultiHeadAttention::new(d_model, n_heads, dropout, device),
            cross_norm: LayerNormConfig::new(d_model).init(device),
            cross_attention: MultiHeadAttention::new(d_model, n_heads, dropout, device),
            ffn_norm: LayerNormConfig::new(d_model).init(device),
            ffn: FeedForward::new(d_model, d_ff, dropout, device),
            dropout: DropoutConfig::new(dropout).init(),
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

    #[test]
    fn masked_keys_get_no_attention_weight() {
        let device = Default::default();
        let attn = MultiHeadAttention::<B>::new(8, 2, 0.0, &device);
        let x = Tensor::<B, 3>::random([1, 3, 8], burn::tensor::Distribution::Default, &device);
        let mut other = x.clone();
        // Change only the masked (last) key position: the output must not move.
        other = other.slice_assign([0..1, 2..3, 0..8], Tensor::ones([1, 1, 8], &device));
        let mask =
            Tensor::<B, 3, Bool>::from_data(TensorData::from([[[false, false, true]]]), &device);
        let a = attn.forward(x.clone(), x.clone(), Some(mask.clone()));
        let b = attn.forward(x.clone(), other, Some(mask));
        a.into_data()
            .assert_approx_eq::<f32>(&b.into_data(), burn::tensor::Tolerance::default());
    }
}
