//! Multi-head scaled dot-product attention with projections that a KV cache can reuse,
//! and the head-level operations of pruning (keep some heads, gate gradients).

use burn::nn::{Dropout, DropoutConfig};
use burn::prelude::*;
use burn::tensor::activation::softmax;

use crate::dense::Dense;

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

    /// `n_heads` heads of width `d_head` (`d_model / n_heads` unless the layer was
    /// pruned).
    pub fn new(
        d_model: usize,
        n_heads: usize,
        d_head: usize,
        dropout: f64,
        device: &B::Device,
    ) -> Self {
        let inner = n_heads * d_head;
        let projection = || Dense::new(d_model, inner, device);
        Self {
            query: projection(),
            key: projection(),
            value: projection(),
            output: Dense::new(inner, d_model, device),
            dropout: DropoutConfig::new(dropout).init(),
            n_heads,
        }
    }

    pub fn n_heads(&self) -> usize {
        self.n_heads
    }

    /// The bits of its quantized projections, or `None` for float ones.
    pub(crate) fn quantized_bits(&self) -> Option<u8> {
        self.query.quantized_bits()
    }

    /// `[batch, time, heads * d_head]` to `[batch, heads, time, d_head]`.
    fn split_heads(&self, x: Tensor<B, 3>) -> Tensor<B, 4> {
        let [batch, time, inner] = x.dims();
        x.reshape([batch, time, self.n_heads, inner / self.n_heads])
            .swap_dims(1, 2)
    }

    /// The attention with only the heads `heads` (their query, key and value columns
    /// and their rows of the output projection).
    pub(crate) fn keep_heads(self, heads: &[usize]) -> Self {
        let d_head = self.query.d_out() / self.n_heads;
        let columns: Vec<usize> = heads
            .iter()
            .flat_map(|&h| h * d_head..(h + 1) * d_head)
            .collect();
        Self {
            query: self.query.keep_outputs(&columns),
            key: self.key.keep_outputs(&columns),
            value: self.value.keep_outputs(&columns),
            output: self.output.keep_inputs(&columns),
            n_heads: heads.len(),
            ..self
        }
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
        let [batch, q_time, _] = x.dims();
        let [_, _, k_time, d_head] = keys.dims();
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
        let context = context
            .swap_dims(1, 2)
            .reshape([batch, q_time, self.n_heads * d_head]);
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

/// Gate gradients (`dL/dgate`, see [`Dense::input_gate_gradients`]) of a layer's prunable
/// units: its attention heads and feed-forward neurons.
impl<B: burn::tensor::backend::AutodiffBackend> MultiHeadAttention<B> {
    pub(crate) fn head_gate_gradients(&self, grads: &B::Gradients) -> Vec<f32> {
        let per_input = self.output.input_gate_gradients(grads);
        let d_head = per_input.len() / self.n_heads;
        per_input.chunks(d_head).map(|c| c.iter().sum()).collect()
    }
}

/// Gates on heads and neurons (their outputs scaled by `factor`), for tests of pruning
/// and importance: a gate of 0 must equal removing the unit.
#[cfg(test)]
impl<B: Backend> MultiHeadAttention<B> {
    pub(crate) fn gate_heads(self, heads: &[usize], factor: f32) -> Self {
        let d_head = self.output.d_in() / self.n_heads;
        let rows: Vec<usize> = heads
            .iter()
            .flat_map(|&h| h * d_head..(h + 1) * d_head)
            .collect();
        Self {
            output: self.output.scale_inputs(&rows, factor),
            ..self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;
    use paragen_backend::TestBackend;

    type B = TestBackend;

    #[test]
    fn masked_keys_get_no_attention_weight() {
        let device = Default::default();
        let attn = MultiHeadAttention::<B>::new(8, 2, 4, 0.0, &device);
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
