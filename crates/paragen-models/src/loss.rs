//! Training losses of the sequence models.

use burn::prelude::*;
use burn::tensor::activation::log_softmax;

/// Label-smoothed cross-entropy averaged over non-pad target tokens (Szegedy et al.
/// 2016): the target distribution is `(1 - epsilon)` on the reference token plus
/// `epsilon` spread uniformly over the vocabulary.
///
/// # Shapes
/// - `logits`: `[batch, time, vocab]`; `targets`: `[batch, time]`; returns a scalar `[1]`.
pub fn label_smoothed_cross_entropy<B: Backend>(
    logits: Tensor<B, 3>,
    targets: Tensor<B, 2, Int>,
    pad: u32,
    epsilon: f64,
) -> Tensor<B, 1> {
    let log_probs = log_softmax(logits, 2);
    let nll = -log_probs
        .clone()
        .gather(2, targets.clone().unsqueeze_dim(2))
        .squeeze_dim::<2>(2);
    let smooth = -log_probs.mean_dim(2).squeeze_dim::<2>(2);
    let per_token = nll * (1.0 - epsilon) + smooth * epsilon;
    let keep = targets.not_equal_elem(pad as i64).float();
    let count = keep.clone().sum().clamp_min(1.0);
    (per_token * keep).sum() / count
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;
    use paragen_backend::TestBackend;

    type B = TestBackend;

    #[test]
    fn matches_hand_computed_values_and_ignores_padding() {
        let device = Default::default();
        // One real token with logits [0, ln 3] (probs 1/4, 3/4), target 1; one pad token.
        let logits = Tensor::<B, 3>::from_data(
            TensorData::from([[[0.0f32, 3f32.ln()], [5.0, -5.0]]]),
            &device,
        );
        let targets = Tensor::<B, 2, Int>::from_data(TensorData::from([[1i64, 0]]), &device);
        let plain =
            label_smoothed_cross_entropy(logits.clone(), targets.clone(), 0, 0.0).into_scalar();
        assert!((plain - (4.0f32 / 3.0).ln()).abs() < 1e-5, "{plain}");
        let smoothed = label_smoothed_cross_entropy(logits, targets, 0, 0.1).into_scalar();
        let expect = 0.9 * (4.0f32 / 3.0).ln() + 0.1 * 0.5 * (4f32.ln() + (4.0f32 / 3.0).ln());
        assert!((smoothed - expect).abs() < 1e-5, "{smoothed} vs {expect}");
    }
}
