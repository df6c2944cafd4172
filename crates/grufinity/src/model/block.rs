//! One pre-norm residual block:
//!
//! ```text
//! x = x + Dropout(minGRU(Conv?(RMSNorm(x))))
//! x = x + Dropout(FeedForward(RMSNorm(x)))
//! ```

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Linear, RmsNorm, RmsNormConfig};
use burn::tensor::activation::{gelu, silu};
use burn::tensor::Tensor;

use super::config::{FeedForwardKind, ModelConfig};
use super::conv::CausalConv;
use super::dense;
use super::fused_ff::gelu_feed_forward;
use super::fused_norm::rms_norm;
use super::init::Init;
use super::mingru::MinGru;
use super::state::LayerState;

/// GELU or SwiGLU feed-forward.
#[derive(Module, Debug)]
pub struct FeedForward {
    /// `D -> H` (GELU) or `D -> 2H` (SwiGLU: value and gate).
    pub up: Linear,
    /// `H -> D`.
    pub down: Linear,
    /// Whether `up` produces a SwiGLU pair.
    pub swiglu: bool,
}

impl FeedForward {
    /// A feed-forward of model width `dim` and hidden width `hidden`.
    pub fn new(dim: usize, hidden: usize, kind: FeedForwardKind, init: &mut Init) -> Self {
        let swiglu = kind == FeedForwardKind::Swiglu;
        let up_out = if swiglu { 2 * hidden } else { hidden };
        Self { up: init.linear_with_bias(dim, up_out), down: init.linear_with_bias(hidden, dim), swiglu }
    }

    /// `[B, T, D] -> [B, T, D]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        if let (false, Some(b1), Some(b2)) = (self.swiglu, &self.up.bias, &self.down.bias) {
            return gelu_feed_forward(x, self.up.weight.val(), b1.val(), self.down.weight.val(), b2.val());
        }
        let up = dense::linear(&self.up, x);
        let hidden = if self.swiglu {
            let h = up.dims()[2] / 2;
            silu(up.clone().narrow(2, 0, h)) * up.narrow(2, h, h)
        } else {
            gelu(up)
        };
        dense::linear(&self.down, hidden)
    }
}

/// A residual minGRU block.
#[derive(Module, Debug)]
pub struct Block {
    pub norm_mix: RmsNorm,
    pub conv: Option<CausalConv>,
    pub mingru: MinGru,
    pub norm_ff: RmsNorm,
    pub ff: FeedForward,
    pub dropout: Dropout,
}

impl Block {
    /// A block as described by `config`.
    pub fn new(config: &ModelConfig, init: &mut Init) -> Self {
        let d = config.dim;
        Self {
            norm_mix: RmsNormConfig::new(d).init(init.device()),
            conv: (config.conv_kernel > 0).then(|| CausalConv::new(d, config.conv_kernel, init)),
            mingru: MinGru::new(d, config.inner(), init),
            norm_ff: RmsNormConfig::new(d).init(init.device()),
            ff: FeedForward::new(d, config.ff_hidden(), config.ff_kind, init),
            dropout: DropoutConfig::new(config.dropout).init(),
        }
    }

    /// `x`: `[B, T, D]` with this layer's carried state → (`[B, T, D]`, next state).
    pub fn forward(&self, x: Tensor<3>, state: LayerState) -> (Tensor<3>, LayerState) {
        self.forward_observed(x, state, None)
    }

    /// [`forward`](Self::forward), also pushing the minGRU's update gate `z`: `[B, T, E]` onto
    /// `gates` when given (for looking inside the model; it costs one more projection).
    pub fn forward_observed(
        &self,
        x: Tensor<3>,
        state: LayerState,
        gates: Option<&mut Vec<Tensor<3>>>,
    ) -> (Tensor<3>, LayerState) {
        let mut h = rms_norm(&self.norm_mix, x.clone());
        let conv = match (&self.conv, state.conv) {
            (Some(conv), Some(cache)) => {
                let (y, cache) = conv.forward(h, cache);
                h = y;
                Some(cache)
            }
            _ => None,
        };
        if let Some(gates) = gates {
            gates.push(self.mingru.update_gate(h.clone()));
        }
        let (mixed, log_h) = self.mingru.forward(h, state.log_h);
        let x = x + self.dropout.forward(mixed);
        let x = x.clone() + self.dropout.forward(self.ff.forward(rms_norm(&self.norm_ff, x)));
        (x, LayerState { log_h, conv })
    }
}
