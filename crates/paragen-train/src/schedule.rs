//! Learning-rate schedule of the Transformer (Vaswani et al. 2017, eq. 3), written with
//! the peak rate explicit as in fairseq's `inverse_sqrt`.

use serde::{Deserialize, Serialize};

/// Linear warmup to `peak` over `warmup_steps`, then decay with `1 / sqrt(step)`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct InverseSqrtSchedule {
    pub peak: f64,
    pub warmup_steps: usize,
}

impl InverseSqrtSchedule {
    /// Learning rate of the 1-based optimizer step `step`.
    pub fn lr(&self, step: usize) -> f64 {
        let step = step.max(1) as f64;
        let warmup = self.warmup_steps.max(1) as f64;
        self.peak * (step / warmup).min((warmup / step).sqrt())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warms_up_linearly_then_decays_with_inverse_sqrt() {
        let s = InverseSqrtSchedule {
            peak: 1e-3,
            warmup_steps: 100,
        };
        assert!((s.lr(50) - 5e-4).abs() < 1e-12);
        assert!((s.lr(100) - 1e-3).abs() < 1e-12);
        assert!((s.lr(400) - 5e-4).abs() < 1e-12);
        assert!(s.lr(1) > 0.0);
    }
}
