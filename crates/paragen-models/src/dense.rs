//! [`Dense`]: the linear layer of every paragen model, with its weight in float or
//! quantized to int8 / int4 (one symmetric scale per output column).
//!
//! Its record keeps burn `Linear`'s names (`weight`, `bias`), so checkpoints of either
//! load into it. A quantized layer holds `quantized` instead of `weight`: integer values
//! (saved one byte each; int4 two per byte) and their scales. On a host backend (flex,
//! ndarray) it multiplies through `paragen_backend::int8`'s integer kernel; on a GPU
//! backend it dequantizes on the device and multiplies in float.

use std::sync::{Arc, OnceLock};

use burn::module::Param;
use burn::nn::LinearConfig;
use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::module::linear;
use paragen_backend::int8::{self, Int8Weights};

use crate::embedding::TiedEmbedding;

/// `y = x W + b` over the last dimension of `x`.
#[derive(Module, Debug)]
pub struct Dense<B: Backend> {
    /// `[d_in, d_out]`; absent once quantized.
    weight: Option<Param<Tensor<B, 2>>>,
    /// `[d_out]`.
    bias: Option<Param<Tensor<B, 1>>>,
    quantized: Option<QuantizedWeight<B>>,
    host: HostWeights,
}

/// Integer weights and their per-column scales.
#[derive(Module, Debug)]
pub struct QuantizedWeight<B: Backend> {
    /// int8: `[d_in, d_out]`; int4: `[ceil(d_in / 2), d_out]`, two values per byte
    /// (`paragen_backend::int8::pack_int4`).
    values: Param<Tensor<B, 2, Int>>,
    /// `[d_out]`.
    scales: Param<Tensor<B, 1>>,
    bits: u8,
    d_in: usize,
}

/// The weights unpacked for the host kernel, built at the first forward pass and
/// shared by clones of the layer.
#[derive(Clone, Debug, Default)]
struct HostWeights(Arc<OnceLock<(Int8Weights, Option<Vec<f32>>)>>);

/// A model whose dense layers and token table can be quantized (the teacher and the
/// NAT student): weights to int8 or int4, their float copies dropped; positions, norms,
/// biases (and a NAT's length classifier) stay float. For inference.
pub trait Quantize<B: Backend>: Sized {
    /// The model with `layer` applied to every dense layer and `table` to its token
    /// table.
    fn map_weights(
        self,
        layer: &mut impl FnMut(Dense<B>) -> Dense<B>,
        table: impl FnOnce(TiedEmbedding<B>) -> TiedEmbedding<B>,
    ) -> Self;

    /// The bits of the quantized layers, or `None` for a float model.
    fn quantized_bits(&self) -> Option<u8>;

    /// The model with its weights quantized to `bits` (8 or 4).
    fn quantize(self, bits: u8) -> Self {
        self.map_weights(&mut |layer| layer.quantize(bits), |table| {
            table.quantize(bits)
        })
    }

    /// The layout a checkpoint of [`Quantize::quantize`]`(bits)` loads into.
    fn quantized_layout(self, bits: u8) -> Self {
        self.map_weights(&mut |layer| layer.quantized_layout(bits), |table| {
            table.quantized_layout(bits)
        })
    }
}

/// Bits a quantized weight may have.
pub const QUANTIZED_BITS: [u8; 2] = [8, 4];

impl<B: Backend> Dense<B> {
    /// A float layer initialised as burn's `Linear` (same initializer, same draws).
    pub fn new(d_in: usize, d_out: usize, device: &B::Device) -> Self {
        let linear = LinearConfig::new(d_in, d_out).init::<B>(device);
        Self {
            weight: Some(linear.weight),
            bias: linear.bias,
            quantized: None,
            host: HostWeights::default(),
        }
    }

    pub fn d_in(&self) -> usize {
        match (&self.weight, &self.quantized) {
            (Some(w), _) => w.dims()[0],
            (None, Some(q)) => q.d_in,
            (None, None) => unreachable!("a dense layer has float or quantized weights"),
        }
    }

    pub fn d_out(&self) -> usize {
        match (&self.weight, &self.quantized) {
            (Some(w), _) => w.dims()[1],
            (None, Some(q)) => q.d_out(),
            (None, None) => unreachable!("a dense layer has float or quantized weights"),
        }
    }

    /// The bits of the quantized weight, or `None` for a float layer.
    pub fn quantized_bits(&self) -> Option<u8> {
        self.quantized.as_ref().map(|q| q.bits)
    }

    /// Applies the layer to the last dimension of `x`, as one `[rows, d_in]` product.
    ///
    /// burn-flex 0.21 runs a `[batch, time, d_in]` input as one small GEMM per batch row,
    /// packing the same weight matrix again for each (the profile of a batch-64 NAT pass
    /// showed it); flattening the leading dimensions gives the GEMM one large problem,
    /// which it packs once and splits over the cores.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let mut dims = x.dims();
        let rows = dims[..D - 1].iter().product();
        let x = x.reshape([rows, dims[D - 1]]);
        let y = match (&self.weight, &self.quantized) {
            (Some(weight), _) => linear(x, weight.val(), self.bias.as_ref().map(|b| b.val())),
            (None, Some(quantized)) if int8::runs_on_host::<B>() => {
                let (weights, bias) = self.host.0.get_or_init(|| self.host_weights(quantized));
                int8::linear(x, weights, bias.as_deref())
            }
            (None, Some(quantized)) => linear(
                x,
                quantized.dequantize_on_device(),
                self.bias.as_ref().map(|b| b.val()),
            ),
            (None, None) => unreachable!("a dense layer has float or quantized weights"),
        };
        dims[D - 1] = y.dims()[1];
        y.reshape(dims)
    }

    fn host_weights(&self, quantized: &QuantizedWeight<B>) -> (Int8Weights, Option<Vec<f32>>) {
        let bias = self
            .bias
            .as_ref()
            .map(|b| host_vec(b.val().into_data().convert::<f32>()));
        (quantized.host_weights(), bias)
    }

    /// The layer with its weight quantized to `bits` (8 or 4) and the float weight dropped.
    pub fn quantize(self, bits: u8) -> Self {
        let Some(weight) = self.weight else {
            return self;
        };
        Self {
            weight: None,
            bias: self.bias,
            quantized: Some(QuantizedWeight::from_float(weight.val(), bits)),
            host: HostWeights::default(),
        }
    }

    /// A quantized layer of this one's shapes with zero weights: the layout a quantized
    /// checkpoint loads into.
    pub fn quantized_layout(self, bits: u8) -> Self {
        let Some(weight) = &self.weight else {
            return self;
        };
        let [d_in, d_out] = weight.dims();
        let quantized = QuantizedWeight::layout(d_in, d_out, bits, &weight.device());
        Self {
            weight: None,
            bias: self.bias,
            quantized: Some(quantized),
            host: HostWeights::default(),
        }
    }
}

/// Structured pruning: a float layer keeps some of its inputs or outputs.
impl<B: Backend> Dense<B> {
    fn float_weight(&self) -> &Param<Tensor<B, 2>> {
        self.weight
            .as_ref()
            .expect("only float layers are pruned (prune, then quantize)")
    }

    /// The layer with only the output columns `columns` (and their biases).
    pub fn keep_outputs(self, columns: &[usize]) -> Self {
        let weight = self.float_weight().val();
        let ids = crate::embedding::index_tensor::<B>(columns, &weight.device());
        Self {
            weight: Some(Param::from_tensor(weight.select(1, ids.clone()).detach())),
            bias: self
                .bias
                .map(|b| Param::from_tensor(b.val().select(0, ids).detach())),
            quantized: None,
            host: HostWeights::default(),
        }
    }

    /// The layer reading only the inputs `rows` (the bias is unchanged).
    pub fn keep_inputs(self, rows: &[usize]) -> Self {
        let weight = self.float_weight().val();
        let ids = crate::embedding::index_tensor::<B>(rows, &weight.device());
        Self {
            weight: Some(Param::from_tensor(weight.select(0, ids).detach())),
            bias: self.bias,
            quantized: None,
            host: HostWeights::default(),
        }
    }
}

#[cfg(test)]
impl<B: Backend> Dense<B> {
    /// The layer with inputs `rows` scaled by `factor`: a gate on what feeds them.
    pub(crate) fn scale_inputs(self, rows: &[usize], factor: f32) -> Self {
        let weight = self.float_weight().val();
        let mut gates = vec![1.0f32; weight.dims()[0]];
        rows.iter().for_each(|&r| gates[r] = factor);
        let gates =
            Tensor::<B, 1>::from_data(TensorData::new(gates, [weight.dims()[0]]), &weight.device());
        Self {
            weight: Some(Param::from_tensor(
                (weight * gates.unsqueeze_dim(1)).detach(),
            )),
            ..self
        }
    }
}

impl<B: Backend> Dense<B> {
    /// Unstructured magnitude pruning: the layer with the `share` of its weights of
    /// smallest magnitude set to zero (the matrix keeps its shape; the bias is kept).
    pub fn sparsify(self, share: f64) -> Self {
        let weight = self.float_weight().val();
        let (dims, device) = (weight.dims(), weight.device());
        let mut values: Vec<f32> = host_vec(weight.into_data().convert::<f32>());
        let zeroed = ((share * values.len() as f64).round() as usize).min(values.len());
        if zeroed > 0 {
            let mut order: Vec<usize> = (0..values.len()).collect();
            order.select_nth_unstable_by(zeroed - 1, |&a, &b| {
                values[a].abs().total_cmp(&values[b].abs())
            });
            order[..zeroed].iter().for_each(|&i| values[i] = 0.0);
        }
        Self {
            weight: Some(Param::from_tensor(Tensor::from_data(
                TensorData::new(values, dims),
                &device,
            ))),
            ..self
        }
    }

    /// Entries of the float weight that are exactly zero.
    pub fn zero_weights(&self) -> usize {
        let weight = self.float_weight().val();
        let values: Vec<f32> = host_vec(weight.into_data().convert::<f32>());
        values.iter().filter(|v| **v == 0.0).count()
    }
}

impl<B: burn::tensor::backend::AutodiffBackend> Dense<B> {
    /// Per input `i`, `sum_j W[i, j] * dL/dW[i, j]`: the first-order change of the loss
    /// if input `i` were scaled by a gate, i.e. `dL/dgate` at gate 1 (Michel et al.
    /// 2019). Zero when the weight received no gradient.
    pub fn input_gate_gradients(&self, grads: &B::Gradients) -> Vec<f32> {
        let weight = self.float_weight();
        match weight.grad(grads) {
            Some(grad) => host_vec(
                (weight.val().inner() * grad)
                    .sum_dim(1)
                    .into_data()
                    .convert::<f32>(),
            ),
            None => vec![0.0; self.d_in()],
        }
    }
}

impl<B: Backend> QuantizedWeight<B> {
    /// `weight` (`[d_in, d_out]`) quantized to `bits`, one scale per column.
    pub(crate) fn from_float(weight: Tensor<B, 2>, bits: u8) -> Self {
        assert!(
            QUANTIZED_BITS.contains(&bits),
            "quantized weights have 8 or 4 bits"
        );
        let device = weight.device();
        let [d_in, d_out] = weight.dims();
        let weight = host_vec(weight.into_data().convert::<f32>());
        let (values, scales) = int8::quantize_columns(&weight, d_in, d_out, bits);
        let (values, rows) = match bits {
            4 => (int8::pack_int4(&values, d_in, d_out), d_in.div_ceil(2)),
            _ => (values, d_in),
        };
        Self {
            values: int_param(Tensor::from_data(
                TensorData::new(values, [rows, d_out]),
                &device,
            )),
            scales: Param::from_tensor(Tensor::from_data(
                TensorData::new(scales, [d_out]),
                &device,
            )),
            bits,
            d_in,
        }
    }

    /// Zero weights of these shapes: what a quantized checkpoint loads into.
    pub(crate) fn layout(d_in: usize, d_out: usize, bits: u8, device: &B::Device) -> Self {
        assert!(
            QUANTIZED_BITS.contains(&bits),
            "quantized weights have 8 or 4 bits"
        );
        let rows = if bits == 4 { d_in.div_ceil(2) } else { d_in };
        Self {
            values: int_param(Tensor::zeros([rows, d_out], device)),
            scales: Param::from_tensor(Tensor::ones([d_out], device)),
            bits,
            d_in,
        }
    }

    pub(crate) fn d_out(&self) -> usize {
        self.scales.dims()[0]
    }

    /// The weights for the host kernel.
    pub(crate) fn host_weights(&self) -> Int8Weights {
        let d_out = self.d_out();
        let stored: Vec<i8> = host_vec(self.values.val().into_data().convert::<i8>());
        let values = match self.bits {
            4 => int8::unpack_int4(&stored, self.d_in, d_out),
            _ => stored,
        };
        let scales: Vec<f32> = host_vec(self.scales.val().into_data().convert::<f32>());
        Int8Weights::new(values, scales, self.d_in, d_out)
    }

    pub(crate) fn d_in(&self) -> usize {
        self.d_in
    }

    pub(crate) fn device(&self) -> B::Device {
        self.scales.device()
    }

    /// `values * scales` as a float `[d_in, d_out]` tensor, computed on the device.
    pub(crate) fn dequantize_on_device(&self) -> Tensor<B, 2> {
        self.unpack_on_device(self.values.val()) * self.scales.val().unsqueeze_dim(0)
    }

    /// Columns `ids` of [`Self::dequantize_on_device`], `[d_in, ids]`.
    pub(crate) fn dequantize_columns_on_device(&self, ids: Tensor<B, 1, Int>) -> Tensor<B, 2> {
        let values = self.values.val().select(1, ids.clone());
        self.unpack_on_device(values) * self.scales.val().select(0, ids).unsqueeze_dim(0)
    }

    /// Stored values (`[d_in, n]`, or `[ceil(d_in / 2), n]` packed int4) as floats
    /// `[d_in, n]`.
    fn unpack_on_device(&self, stored: Tensor<B, 2, Int>) -> Tensor<B, 2> {
        let stored = stored.float();
        if self.bits != 4 {
            return stored;
        }
        // Each byte b = 16 h + u with u = l mod 16 in 0..16 and nibbles l, h in -8..=7:
        // h = floor(b / 16), and l = u, less 16 when u >= 8.
        let high = (stored.clone() / 16.0).floor();
        let unsigned_low = stored - high.clone() * 16.0;
        let low = unsigned_low.clone() - ((unsigned_low + 8.0) / 16.0).floor() * 16.0;
        let [rows, n] = low.dims();
        Tensor::stack::<3>(vec![low, high], 1)
            .reshape([rows * 2, n])
            .slice([0..self.d_in, 0..n])
    }
}

/// The weights `module` stands for: its float scalars (burn's `num_params` counts
/// only those) and its integer ones, each byte of packed int4 values counted as the two
/// weights it holds.
pub(crate) fn weight_count<B: Backend, M: Module<B>>(module: &M, bits: Option<u8>) -> usize {
    struct Integers(usize);
    impl<B: Backend> burn::module::ModuleVisitor<B> for Integers {
        fn visit_int<const D: usize>(&mut self, param: &Param<Tensor<B, D, Int>>) {
            self.0 += param.shape().num_elements();
        }
    }
    let mut integers = Integers(0);
    module.visit(&mut integers);
    let per_stored_value = if bits == Some(4) { 2 } else { 1 };
    module.num_params() + integers.0 * per_stored_value
}

fn int_param<B: Backend>(values: Tensor<B, 2, Int>) -> Param<Tensor<B, 2, Int>> {
    Param::initialized(burn::module::ParamId::new(), values)
}

fn host_vec<T: burn::tensor::Element>(data: TensorData) -> Vec<T> {
    data.into_vec::<T>()
        .expect("converted to its own element type")
}

#[cfg(test)]
mod tests {
    use super::*;
    use paragen_backend::TestBackend as B;

    fn layer(d_in: usize, d_out: usize) -> Dense<B> {
        B::seed(&Default::default(), 7);
        crate::layers::materialize(Dense::new(d_in, d_out, &Default::default()))
    }

    fn input(rows: usize, d_in: usize) -> Tensor<B, 3> {
        Tensor::random(
            [2, rows, d_in],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &Default::default(),
        )
    }

    fn max_abs_diff(a: Tensor<B, 3>, b: Tensor<B, 3>) -> f32 {
        (a - b).abs().max().into_scalar()
    }

    #[test]
    fn a_dense_layer_equals_burns_linear_with_the_same_weights() {
        let dense = layer(16, 8);
        let linear = burn::nn::Linear {
            weight: dense.weight.clone().unwrap(),
            bias: dense.bias.clone(),
        };
        let x = input(5, 16);
        assert_eq!(
            max_abs_diff(dense.forward(x.clone()), linear.forward(x)),
            0.0
        );
    }

    #[test]
    fn quantized_layers_stay_close_to_the_float_layer_on_host_and_device_paths() {
        let dense = layer(64, 24);
        let x = input(7, 64);
        let float = dense.forward(x.clone());
        let scale = float.clone().abs().max().into_scalar();
        for (bits, tolerance) in [(8u8, 0.02f32), (4, 0.25)] {
            let quantized = dense.clone().quantize(bits);
            assert_eq!(quantized.quantized_bits(), Some(bits));
            assert_eq!((quantized.d_in(), quantized.d_out()), (64, 24));
            let host = quantized.forward(x.clone());
            let err = max_abs_diff(host.clone(), float.clone()) / scale;
            assert!(err < tolerance, "int{bits}: relative error {err}");
            // The GPU path (dequantize, then float) computes the same function.
            let q = quantized.quantized.as_ref().unwrap();
            let device = linear(
                x.clone().reshape([14, 64]),
                q.dequantize_on_device(),
                quantized.bias.as_ref().map(|b| b.val()),
            )
            .reshape([2, 7, 24]);
            let err = max_abs_diff(device, float.clone()) / scale;
            assert!(
                err < tolerance,
                "int{bits} dequantized: relative error {err}"
            );
        }
    }

    #[test]
    fn sparsifying_zeroes_the_smallest_weights_only() {
        let dense = layer(8, 5);
        let weights = |d: &Dense<B>| host_vec::<f32>(d.weight.as_ref().unwrap().val().into_data());
        let before = weights(&dense);
        let sparse = dense.clone().sparsify(0.25);
        assert_eq!(sparse.zero_weights(), 10);
        let after = weights(&sparse);
        let largest_zeroed = before
            .iter()
            .zip(&after)
            .filter(|(_, a)| **a == 0.0)
            .map(|(b, _)| b.abs())
            .fold(0.0f32, f32::max);
        for (b, a) in before.iter().zip(&after) {
            assert!(
                *a == 0.0 || (a == b && b.abs() >= largest_zeroed),
                "{b} -> {a}"
            );
        }
        assert_eq!(dense.sparsify(0.0).zero_weights(), 0);
    }

    #[test]
    fn a_quantized_layer_counts_the_weights_it_stands_for() {
        let float = layer(6, 5);
        let count = weight_count(&float, None);
        assert_eq!(count, 6 * 5 + 5);
        // Each column gains a scale; int4 packs two weights per stored byte.
        assert_eq!(weight_count(&float.clone().quantize(8), Some(8)), count + 5);
        assert_eq!(weight_count(&float.quantize(4), Some(4)), count + 5);
    }

    #[test]
    fn int4_dequantized_on_the_device_equals_the_host_unpacking() {
        // An odd input dimension, as pruning leaves: the padding row is not a weight.
        let quantized = layer(7, 5).quantize(4);
        assert_eq!(quantized.d_in(), 7);
        let q = quantized.quantized.as_ref().unwrap();
        let on_device = host_vec::<f32>(q.dequantize_on_device().into_data());
        let packed: Vec<i8> = host_vec(q.values.val().into_data().convert::<i8>());
        let scales: Vec<f32> = host_vec(q.scales.val().into_data());
        let on_host: Vec<f32> = int8::unpack_int4(&packed, 7, 5)
            .iter()
            .enumerate()
            .map(|(i, &v)| v as f32 * scales[i % 5])
            .collect();
        assert_eq!(on_device.len(), 7 * 5);
        assert_eq!(on_device, on_host);
        let x = input(3, 7);
        let float = layer(7, 5).forward(x.clone());
        let err =
            max_abs_diff(quantized.forward(x), float.clone()) / float.abs().max().into_scalar();
        assert!(
            err < 0.25,
            "int4 with an odd input dimension: relative error {err}"
        );
    }
}
