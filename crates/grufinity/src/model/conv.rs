//! Causal depthwise convolution over time, with a cache of the last `K - 1` inputs so that
//! chunked and step-by-step evaluation equal one long pass.

use burn::module::{Module, Param};
use burn::tensor::Tensor;

use super::init::Init;

/// `y_t = bias + sum_k weight[k] * x_{t - K + 1 + k}`, per channel.
#[derive(Module, Debug)]
pub struct CausalConv {
    /// `[K, D]`: tap `k` multiplies the input `K - 1 - k` steps back.
    pub weight: Param<Tensor<2>>,
    /// `[D]`.
    pub bias: Param<Tensor<1>>,
}

impl CausalConv {
    /// Kernel of `kernel` taps over `dim` channels, PyTorch-style init (fan-in = kernel).
    pub fn new(dim: usize, kernel: usize, init: &mut Init) -> Self {
        Self {
            weight: init.uniform_fan_in([kernel, dim], kernel),
            bias: init.uniform_fan_in([dim], kernel),
        }
    }

    /// Number of taps `K`.
    pub fn kernel(&self) -> usize {
        self.weight.shape().dims::<2>()[0]
    }

    /// `x`: `[B, T, D]`, `cache`: `[B, K-1, D]` (the inputs before `x`, zeros at the start)
    /// → (`y`: `[B, T, D]`, new cache `[B, K-1, D]`).
    pub fn forward(&self, x: Tensor<3>, cache: Tensor<3>) -> (Tensor<3>, Tensor<3>) {
        let [_, t, _] = x.dims();
        let k = self.kernel();
        let full = Tensor::cat(vec![cache, x], 1);
        let weight = self.weight.val();
        let mut y = self.bias.val().unsqueeze::<3>();
        for tap in 0..k {
            let w = weight.clone().narrow(0, tap, 1).unsqueeze::<3>();
            y = y + full.clone().narrow(1, tap, t) * w;
        }
        let new_cache = full.narrow(1, t, k - 1);
        (y, new_cache)
    }
}
