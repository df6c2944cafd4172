//! The minGRU layer: one input projection to `[k_h, k_z]`, the recurrence of [`super::scan`],
//! and an output projection back to the model width when the inner width differs.

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::Tensor;

use super::dense;
use super::fused;
use super::init::Init;
use super::scan::{log_coeffs_and_values, scan_log, step_log, LOG_ZERO};

/// A minGRU layer of model width `D` and inner width `E`.
#[derive(Module, Debug)]
pub struct MinGru {
    /// `D -> 2E`, no bias: `[k_h, k_z]`.
    pub to_hz: Linear,
    /// `E -> D`, no bias; absent when `E == D`.
    pub to_out: Option<Linear>,
}

impl MinGru {
    /// A layer with PyTorch-style uniform initialisation (`U(-1/sqrt(fan_in), 1/sqrt(fan_in))`).
    pub fn new(dim: usize, inner: usize, init: &mut Init) -> Self {
        Self {
            to_hz: init.linear(dim, 2 * inner),
            to_out: (inner != dim).then(|| init.linear(inner, dim)),
        }
    }

    /// Inner width `E`.
    pub fn inner(&self) -> usize {
        self.to_hz.weight.shape().dims::<2>()[1] / 2
    }


    /// The update gate `z = sigmoid(k_z)`: `[B, T, D]` → `[B, T, E]`. `z` near 1 overwrites the
    /// state with the new candidate, near 0 keeps the memory.
    pub fn update_gate(&self, x: Tensor<3>) -> Tensor<3> {
        let e = self.inner();
        burn::tensor::activation::sigmoid(dense::linear(&self.to_hz, x).narrow(2, e, e))
    }

    fn project_out(&self, h: Tensor<3>) -> Tensor<3> {
        match &self.to_out {
            Some(out) => dense::linear(out, h),
            None => h,
        }
    }

    /// `x`: `[B, T, D]`, `log_h0`: `[B, 1, E]` → (`y`: `[B, T, D]`, last `log h`: `[B, 1, E]`).
    ///
    /// On the CPU the recurrence runs as one fused kernel ([`fused`]). Elsewhere `T == 1` takes
    /// the recurrent step (generation) and longer inputs the log-space parallel scan.
    pub fn forward(&self, x: Tensor<3>, log_h0: Tensor<3>) -> (Tensor<3>, Tensor<3>) {
        let [_, t, _] = x.dims();
        // Pre-activations `[k_h, k_z]`: `[B, T, 2E]`.
        let hz = dense::linear(&self.to_hz, x);
        if fused::supported(&hz.device()) {
            let h = fused::recurrence(hz, log_h0.exp());
            let last = h.clone().narrow(1, t - 1, 1).log().clamp_min(LOG_ZERO);
            return (self.project_out(h), last);
        }
        let e = self.inner();
        let (k_h, k_z) = (hz.clone().narrow(2, 0, e), hz.narrow(2, e, e));
        let (log_coeff, log_value) = log_coeffs_and_values(k_h, k_z);
        let log_h = if t == 1 {
            step_log(log_coeff, log_value, log_h0)
        } else {
            scan_log(log_coeff, log_value, log_h0)
        };
        let last = log_h.clone().narrow(1, t - 1, 1);
        (self.project_out(log_h.exp()), last)
    }
}
