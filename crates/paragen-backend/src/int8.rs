//! The int8 linear op: weights quantized per output column, activations quantized per row
//! at run time, an integer matrix product, and the float result.
//!
//! burn 0.21 has no integer arithmetic on its CPU backends (a quantized `nn::Linear`
//! dequantizes its weight on every forward), so paragen brings its own, as a backend
//! extension: [`Int8Weights::matmul`] on host memory, and [`linear`] for tensors of any
//! backend whose device is host memory ([`runs_on_host`]: flex and ndarray). The
//! product runs on `rten-gemm`'s u8 x i8 -> i32 kernels, which pick AVX-512 VNNI
//! (`vpdpbusd`), AVX2 or a generic kernel at run time; where the chosen kernel can
//! saturate its 16-bit intermediate sums (AVX2 without VNNI), the [`Int8Kernel::Portable`]
//! loop runs instead. The recipe is CTranslate2's: one symmetric scale per weight
//! column, an asymmetric u8 scale and zero point per activation row, and the zero
//! point's contribution subtracted through the column sums of the weights.

use std::any::TypeId;

use burn::prelude::*;
use burn::tensor::TensorData;
use rayon::prelude::*;
use rten_gemm::{GemmExecutor, GemmInputA, GemmInputB, GemmOptions, PackedBMatrix};
use rten_tensor::NdTensorView;

/// Largest magnitude of a stored weight: symmetric int8 (`-127..=127`) or int4 (`-7..=7`).
pub fn max_level(bits: u8) -> i8 {
    if bits == 4 { 7 } else { 127 }
}

/// Quantizes a row-major `[d_in, d_out]` weight matrix symmetrically, one scale per
/// output column (`bits` 8 or 4): `weight[k][n] ~= values[k][n] * scales[n]`.
pub fn quantize_columns(
    weight: &[f32],
    d_in: usize,
    d_out: usize,
    bits: u8,
) -> (Vec<i8>, Vec<f32>) {
    assert_eq!(weight.len(), d_in * d_out, "weight is not [d_in, d_out]");
    let level = max_level(bits) as f32;
    let mut max_abs = vec![0f32; d_out];
    for row in weight.chunks_exact(d_out) {
        for (m, w) in max_abs.iter_mut().zip(row) {
            *m = m.max(w.abs());
        }
    }
    let scales: Vec<f32> = max_abs
        .iter()
        .map(|&m| {
            if m > 0.0 && m.is_finite() {
                m / level
            } else {
                1.0
            }
        })
        .collect();
    let values = weight
        .chunks_exact(d_out)
        .flat_map(|row| {
            row.iter()
                .zip(&scales)
                .map(|(w, s)| (w / s).round().clamp(-level, level) as i8)
        })
        .collect();
    (values, scales)
}

/// Packs int4 values (`-8..=7`) two per byte along the input dimension: byte `[k][n]`
/// of the `[ceil(d_in / 2), d_out]` result holds row `2k` in its low and `2k + 1` in its
/// high nibble (a zero row pads an odd `d_in`, as a pruned layer may have).
pub fn pack_int4(values: &[i8], d_in: usize, d_out: usize) -> Vec<i8> {
    assert_eq!(
        values.len(),
        d_in * d_out,
        "int4 packing of a [d_in, d_out] matrix"
    );
    let padding = vec![0i8; d_out];
    let mut packed = Vec::with_capacity(d_in.div_ceil(2) * d_out);
    for pair in values.chunks(2 * d_out) {
        let (low, high) = pair.split_at(d_out);
        let high = if high.is_empty() { &padding[..] } else { high };
        packed.extend(
            low.iter()
                .zip(high)
                .map(|(&l, &h)| ((l as u8 & 0x0f) | ((h as u8) << 4)) as i8),
        );
    }
    packed
}

/// The inverse of [`pack_int4`]: `[ceil(d_in / 2), d_out]` bytes to `[d_in, d_out]`
/// values.
pub fn unpack_int4(packed: &[i8], d_in: usize, d_out: usize) -> Vec<i8> {
    let mut values = Vec::with_capacity(packed.len() * 2);
    for row in packed.chunks_exact(d_out) {
        // Shifting left then arithmetically right sign-extends each nibble.
        values.extend(row.iter().map(|&b| (b << 4) >> 4));
        values.extend(row.iter().map(|&b| b >> 4));
    }
    values.truncate(d_in * d_out);
    values
}

/// Which integer kernel runs a product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Int8Kernel {
    /// `rten-gemm`'s kernel for this CPU (AVX-512 VNNI here), blocked and packed.
    Native,
    /// Plain loops over i32 sums: correct on every CPU, used where the native kernel
    /// could saturate.
    Portable,
}

impl Int8Kernel {
    /// The fastest exact kernel on this CPU.
    pub fn detect() -> Self {
        if with_executor(|e| e.may_saturate()) {
            Int8Kernel::Portable
        } else {
            Int8Kernel::Native
        }
    }

    /// The name of the code that runs, for logs and reports.
    pub fn name(self) -> String {
        match self {
            Int8Kernel::Native => with_executor(|e| e.kernel_name().to_string()),
            Int8Kernel::Portable => "portable".to_string(),
        }
    }
}

thread_local! {
    // One per thread because rten's executor is not `Send`; every one picks the same
    // kernel on a given CPU, so weights packed by one are read right by all.
    static EXECUTOR: GemmExecutor<u8, i8, i32> = GemmExecutor::default();
}

fn with_executor<T>(f: impl FnOnce(&GemmExecutor<u8, i8, i32>) -> T) -> T {
    EXECUTOR.with(f)
}

/// A weight matrix ready for integer products: `[d_in, d_out]` int8 values with one
/// scale per column, packed once for the native kernel.
pub struct Int8Weights {
    d_in: usize,
    d_out: usize,
    values: Vec<i8>,
    scales: Vec<f32>,
    column_sums: Vec<i32>,
    packed: Option<PackedBMatrix<i8>>,
    kernel: Int8Kernel,
}

impl std::fmt::Debug for Int8Weights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Int8Weights")
            .field("d_in", &self.d_in)
            .field("d_out", &self.d_out)
            .field("kernel", &self.kernel)
            .finish()
    }
}

impl Int8Weights {
    /// Weights for the kernel [`Int8Kernel::detect`] picks.
    pub fn new(values: Vec<i8>, scales: Vec<f32>, d_in: usize, d_out: usize) -> Self {
        Self::with_kernel(values, scales, d_in, d_out, Int8Kernel::detect())
    }

    /// Weights for a given kernel (tests run the portable one on every CPU).
    pub fn with_kernel(
        values: Vec<i8>,
        scales: Vec<f32>,
        d_in: usize,
        d_out: usize,
        kernel: Int8Kernel,
    ) -> Self {
        assert_eq!(values.len(), d_in * d_out, "values are not [d_in, d_out]");
        assert_eq!(scales.len(), d_out, "one scale per output column");
        let mut column_sums = vec![0i32; d_out];
        for row in values.chunks_exact(d_out) {
            for (sum, &v) in column_sums.iter_mut().zip(row) {
                *sum += v as i32;
            }
        }
        let packed = (kernel == Int8Kernel::Native).then(|| {
            with_executor(|e| {
                e.prepack_b(NdTensorView::from_data([d_in, d_out], values.as_slice()))
            })
        });
        Self {
            d_in,
            d_out,
            values,
            scales,
            column_sums,
            packed,
            kernel,
        }
    }

    pub fn d_in(&self) -> usize {
        self.d_in
    }

    pub fn d_out(&self) -> usize {
        self.d_out
    }

    pub fn kernel(&self) -> Int8Kernel {
        self.kernel
    }

    /// The weights of `columns` only, in that order (a projection onto a shortlist).
    pub fn select_columns(&self, columns: &[u32]) -> Self {
        let values = self
            .values
            .chunks_exact(self.d_out)
            .flat_map(|row| columns.iter().map(|&c| row[c as usize]))
            .collect();
        let scales = columns.iter().map(|&c| self.scales[c as usize]).collect();
        Self::with_kernel(values, scales, self.d_in, columns.len(), self.kernel)
    }

    /// The float weights these values stand for, row-major `[d_in, d_out]`.
    pub fn dequantize(&self) -> Vec<f32> {
        self.values
            .chunks_exact(self.d_out)
            .flat_map(|row| row.iter().zip(&self.scales).map(|(&v, s)| v as f32 * s))
            .collect()
    }

    /// `x @ weight + bias` for a row-major `[rows, d_in]` input; returns `[rows, d_out]`.
    pub fn matmul(&self, x: &[f32], rows: usize, bias: Option<&[f32]>) -> Vec<f32> {
        assert_eq!(x.len(), rows * self.d_in, "input is not [rows, d_in]");
        let activations = QuantizedRows::new(x, rows, self.d_in);
        let sums = match self.kernel {
            Int8Kernel::Native => self.native_sums(&activations),
            Int8Kernel::Portable => self.portable_sums(&activations),
        };
        let mut out = vec![0f32; rows * self.d_out];
        let row_tasks = min_rows_per_task(self.d_out);
        out.par_chunks_mut(self.d_out)
            .zip(sums.par_chunks(self.d_out))
            .zip(activations.scales.par_iter().zip(&activations.zero_points))
            .with_min_len(row_tasks)
            .for_each(|((out, sums), (&row_scale, &zero))| {
                let zero = zero as i32;
                // sum_k (a - zero) * w = sum_k a * w - zero * sum_k w
                let dequantize =
                    |(&s, (&w, &c)): (&i32, (&f32, &i32))| (s - zero * c) as f32 * (row_scale * w);
                let columns = sums.iter().zip(self.scales.iter().zip(&self.column_sums));
                match bias {
                    Some(bias) => {
                        for ((o, b), column) in out.iter_mut().zip(bias).zip(columns) {
                            *o = dequantize(column) + b;
                        }
                    }
                    None => {
                        for (o, column) in out.iter_mut().zip(columns) {
                            *o = dequantize(column);
                        }
                    }
                }
            });
        out
    }

    /// `sum_k a[m][k] * w[k][n]` through `rten-gemm`.
    ///
    /// The zero points are applied by the caller: rten-gemm 0.27's AVX-512 kernel reads
    /// rows 8-15 of each 16-row tile with the zero points of rows 0-7 (seen here as
    /// sums off by exact multiples of the column sums).
    fn native_sums(&self, a: &QuantizedRows) -> Vec<i32> {
        let packed = self.packed.as_ref().expect("native weights are packed");
        // One row takes rten's matrix-vector path, which reads B unpacked; the packed
        // path would run its 16-row tiles on one row.
        let b = if a.rows == 1 {
            GemmInputB::Unpacked(NdTensorView::from_data(
                [self.d_in, self.d_out],
                self.values.as_slice(),
            ))
        } else {
            GemmInputB::Packed(packed)
        };
        let mut sums = vec![0i32; a.rows * self.d_out];
        with_executor(|e| {
            e.gemm(
                &mut sums,
                GemmInputA::Unpacked(NdTensorView::from_data(
                    [a.rows, self.d_in],
                    a.values.as_slice(),
                )),
                b,
                GemmOptions::default(),
            )
            .expect("int8 GEMM shapes agree")
        });
        sums
    }

    /// The same sums by plain loops.
    fn portable_sums(&self, a: &QuantizedRows) -> Vec<i32> {
        let mut sums = vec![0i32; a.rows * self.d_out];
        for (out, row) in sums
            .chunks_exact_mut(self.d_out)
            .zip(a.values.chunks_exact(self.d_in))
        {
            for (&a, weights) in row.iter().zip(self.values.chunks_exact(self.d_out)) {
                let a = a as i32;
                for (o, &w) in out.iter_mut().zip(weights) {
                    *o += a * w as i32;
                }
            }
        }
        sums
    }
}

/// Activations quantized per row to u8 with a scale and a zero point:
/// `x[m][k] ~= (values[m][k] - zero_points[m]) * scales[m]`.
struct QuantizedRows {
    rows: usize,
    values: Vec<u8>,
    scales: Vec<f32>,
    zero_points: Vec<u8>,
}

impl QuantizedRows {
    fn new(x: &[f32], rows: usize, cols: usize) -> Self {
        let mut values = vec![0u8; x.len()];
        let (scales, zero_points) = values
            .par_chunks_mut(cols)
            .zip(x.par_chunks(cols))
            .with_min_len(min_rows_per_task(cols))
            .map(|(values, row)| {
                // The range always holds 0, so that 0 (padding, ReLU's zeros) is exact.
                let (low, high) = range_with_zero(row);
                let scale = if high > low {
                    (high - low) / 255.0
                } else {
                    1.0
                };
                let zero = (-low / scale).round().clamp(0.0, 255.0);
                let inverse = 1.0 / scale;
                // `+ 0.5` then truncation rounds these non-negative values to nearest
                // and vectorizes, where `f32::round` is a library call per value.
                for (q, &v) in values.iter_mut().zip(row) {
                    *q = ((v * inverse + zero).clamp(0.0, 255.0) + 0.5) as u8;
                }
                (scale, zero as u8)
            })
            .unzip();
        Self {
            rows,
            values,
            scales,
            zero_points,
        }
    }
}

/// `(min(0, row), max(0, row))`, sixteen lanes at a time so that it vectorizes.
fn range_with_zero(row: &[f32]) -> (f32, f32) {
    const LANES: usize = 16;
    let mut low = [0f32; LANES];
    let mut high = [0f32; LANES];
    let chunks = row.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for i in 0..LANES {
            low[i] = if chunk[i] < low[i] { chunk[i] } else { low[i] };
            high[i] = if chunk[i] > high[i] {
                chunk[i]
            } else {
                high[i]
            };
        }
    }
    let fold = |lanes: &[f32], pick: fn(f32, f32) -> f32| lanes.iter().copied().fold(0.0, pick);
    (
        fold(&low, f32::min).min(fold(rest, f32::min)),
        fold(&high, f32::max).max(fold(rest, f32::max)),
    )
}

/// Rows one rayon task takes, so that a task holds some 16k values: small products
/// (a decoding step at batch 1) stay on one thread.
fn min_rows_per_task(row_len: usize) -> usize {
    (16 * 1024 / row_len.max(1)).max(1)
}

/// Whether tensors of `B` live in host memory, where [`linear`] can read them without a
/// device transfer (flex and ndarray, with or without autodiff).
pub fn runs_on_host<B: Backend>() -> bool {
    let device = TypeId::of::<B::Device>();
    #[cfg(feature = "flex")]
    if device == TypeId::of::<burn::backend::flex::FlexDevice>() {
        return true;
    }
    #[cfg(feature = "ndarray")]
    if device == TypeId::of::<burn::backend::ndarray::NdArrayDevice>() {
        return true;
    }
    false
}

/// `x @ weights + bias` for a `[rows, d_in]` tensor of a host backend, through the int8
/// kernel. No gradient flows through it: quantized models are for inference.
pub fn linear<B: Backend>(
    x: Tensor<B, 2>,
    weights: &Int8Weights,
    bias: Option<&[f32]>,
) -> Tensor<B, 2> {
    let [rows, _] = x.dims();
    let device = x.device();
    let input = x
        .into_data()
        .into_vec::<f32>()
        .expect("float tensors of a host backend hold f32");
    let out = weights.matmul(&input, rows, bias);
    Tensor::from_data(TensorData::new(out, [rows, weights.d_out()]), &device)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_random(n: usize, seed: u64) -> Vec<f32> {
        let mut state = seed;
        (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn float_matmul(x: &[f32], w: &[f32], rows: usize, d_in: usize, d_out: usize) -> Vec<f32> {
        let mut out = vec![0f32; rows * d_out];
        for m in 0..rows {
            for k in 0..d_in {
                for n in 0..d_out {
                    out[m * d_out + n] += x[m * d_in + k] * w[k * d_out + n];
                }
            }
        }
        out
    }

    /// Each product carries at most half a step of error in each factor, so
    /// `|error| <= sum_k (|x| dw/2 + |w| dx/2 + dx dw / 4)` per output.
    fn error_bound(
        x: &[f32],
        w: &[f32],
        rows: usize,
        d_in: usize,
        d_out: usize,
        bits: u8,
    ) -> Vec<f32> {
        let (_, w_scales) = quantize_columns(w, d_in, d_out, bits);
        let mut bound = vec![0f32; rows * d_out];
        for m in 0..rows {
            let row = &x[m * d_in..(m + 1) * d_in];
            let (lo, hi) = row
                .iter()
                .fold((0f32, 0f32), |(l, h), &v| (l.min(v), h.max(v)));
            let dx = (hi - lo) / 255.0;
            for n in 0..d_out {
                let dw = w_scales[n];
                bound[m * d_out + n] = (0..d_in)
                    .map(|k| {
                        row[k].abs() * dw / 2.0 + w[k * d_out + n].abs() * dx / 2.0 + dx * dw / 4.0
                    })
                    .sum::<f32>()
                    * 1.01
                    + 1e-5;
            }
        }
        bound
    }

    fn check(kernel: Int8Kernel, rows: usize, d_in: usize, d_out: usize) {
        let x: Vec<f32> = pseudo_random(rows * d_in, 1)
            .iter()
            .map(|v| v * 3.0)
            .collect();
        let w = pseudo_random(d_in * d_out, 2);
        let bias = pseudo_random(d_out, 3);
        let (values, scales) = quantize_columns(&w, d_in, d_out, 8);
        let weights = Int8Weights::with_kernel(values, scales, d_in, d_out, kernel);
        let got = weights.matmul(&x, rows, Some(&bias));
        let want = float_matmul(&x, &w, rows, d_in, d_out);
        let bound = error_bound(&x, &w, rows, d_in, d_out, 8);
        for i in 0..rows * d_out {
            let err = (got[i] - want[i] - bias[i % d_out]).abs();
            assert!(
                err <= bound[i],
                "{kernel:?} {rows}x{d_in}x{d_out}: output {i} off by {err} > {}",
                bound[i]
            );
        }
    }

    #[test]
    fn int8_products_equal_float_within_the_bound_of_their_scales() {
        for kernel in [Int8Kernel::detect(), Int8Kernel::Portable] {
            for (rows, d_in, d_out) in [(1, 8, 3), (7, 40, 33), (40, 256, 96)] {
                check(kernel, rows, d_in, d_out);
            }
        }
    }

    #[test]
    fn the_native_and_portable_kernels_agree_exactly() {
        // 19 rows: a whole 16-row tile of the native kernel and a partial one.
        let (rows, d_in, d_out) = (19, 128, 70);
        let x = pseudo_random(rows * d_in, 4);
        let (values, scales) = quantize_columns(&pseudo_random(d_in * d_out, 5), d_in, d_out, 8);
        let native = Int8Weights::with_kernel(
            values.clone(),
            scales.clone(),
            d_in,
            d_out,
            Int8Kernel::Native,
        );
        let portable = Int8Weights::with_kernel(values, scales, d_in, d_out, Int8Kernel::Portable);
        assert_eq!(
            native.matmul(&x, rows, None),
            portable.matmul(&x, rows, None)
        );
    }

    #[test]
    fn selected_columns_give_those_columns_of_the_product() {
        let (rows, d_in, d_out) = (3, 32, 10);
        let x = pseudo_random(rows * d_in, 7);
        let (values, scales) = quantize_columns(&pseudo_random(d_in * d_out, 8), d_in, d_out, 8);
        let weights = Int8Weights::new(values, scales, d_in, d_out);
        let columns = [0u32, 4, 9];
        let whole = weights.matmul(&x, rows, None);
        let picked = weights.select_columns(&columns).matmul(&x, rows, None);
        for r in 0..rows {
            for (i, &c) in columns.iter().enumerate() {
                assert_eq!(picked[r * 3 + i], whole[r * d_out + c as usize]);
            }
        }
    }

    #[test]
    fn int4_values_survive_packing_and_stay_in_range() {
        // An odd input dimension (a pruned layer) is padded with a zero row.
        for (d_in, d_out) in [(6, 5), (7, 3)] {
            let (values, scales) =
                quantize_columns(&pseudo_random(d_in * d_out, 6), d_in, d_out, 4);
            assert!(values.iter().all(|v| (-7..=7).contains(v)));
            assert_eq!(scales.len(), d_out);
            let packed = pack_int4(&values, d_in, d_out);
            assert_eq!(packed.len(), d_in.div_ceil(2) * d_out);
            assert_eq!(unpack_int4(&packed, d_in, d_out), values);
        }
    }

    #[test]
    fn a_zero_column_and_a_constant_row_stay_exact() {
        let (d_in, d_out) = (4, 2);
        let w = [1.0, 0.0, -2.0, 0.0, 0.5, 0.0, 4.0, 0.0];
        let (values, scales) = quantize_columns(&w, d_in, d_out, 8);
        let weights = Int8Weights::with_kernel(values, scales, d_in, d_out, Int8Kernel::Portable);
        let out = weights.matmul(&[0.0; 4], 1, Some(&[0.25, -1.0]));
        assert_eq!(out, vec![0.25, -1.0]);
        assert_eq!(weights.dequantize()[1], 0.0);
    }

    #[test]
    fn host_backends_are_recognised() {
        assert!(runs_on_host::<crate::TestBackend>());
        assert!(runs_on_host::<crate::TestAutodiffBackend>());
    }
}
