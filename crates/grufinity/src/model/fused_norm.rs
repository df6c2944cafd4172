//! RMSNorm as one pass forward and one pass back on the CPU.
//!
//! Burn's `RmsNorm` is a chain of tensor ops (square, mean, add, sqrt, divide, multiply), each
//! allocating and writing a new `[B, T, D]` buffer, and its backward runs the chain in reverse:
//! a block has two norms, so this is a noticeable share of a step's memory traffic. Per row:
//!
//! ```text
//! r  = 1 / sqrt(mean(x^2) + eps)          y = x r g
//! u  = dL/dy * g
//! dx = r u - x r^3 mean(u x)              dg = sum over rows of dL/dy * x r
//! ```
//!
//! Other backends (GPUs) use Burn's `RmsNorm`; [`rms_norm`] picks.

use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, AutodiffBackend, Backend, Dispatch, Flex, TensorMetadata};
use burn::nn::RmsNorm;
use burn::tensor::{Tensor, TensorData};
use burn_autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use burn_autodiff::Autodiff;
use burn_flex::FlexTensor;

use super::fused::{f32s, supported, vectorised, written, written_with};

/// Backend operations of the fused RMSNorm.
#[backend_extension(Flex, Autodiff)]
pub trait RmsNormOps: Backend {
    /// `x`: `[.., D]`, `gamma`: `[D]` → `[.., D]`.
    fn fused_rms_norm(x: FloatTensor<Self>, gamma: FloatTensor<Self>, eps: f32) -> FloatTensor<Self>;

    /// Given `x`, `gamma` and `dL/dy` → `(dL/dx, dL/dgamma)`.
    fn fused_rms_norm_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        eps: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);
}

/// `norm` applied to `x` (`[B, T, D]`): one fused pass on the CPU, Burn's module elsewhere.
pub fn rms_norm(norm: &RmsNorm, x: Tensor<3>) -> Tensor<3> {
    if !supported(&x.device()) {
        return norm.forward(x);
    }
    let y = <Dispatch as RmsNormOps>::fused_rms_norm(x.into_dispatch(), norm.gamma.val().into_dispatch(), norm.epsilon as f32);
    Tensor::from_dispatch(y)
}

/// Rows per parallel task.
const ROWS: usize = 32;

/// `1 / sqrt(mean(x^2) + eps)` of one row (16 lanes, then the tail: vectorises, same order
/// every run).
#[inline(always)]
fn inv_rms(x: &[f32], eps: f32) -> f32 {
    let mut acc = [0.0f32; 16];
    let whole = x.len() / 16 * 16;
    for c in x[..whole].chunks_exact(16) {
        for i in 0..16 {
            acc[i] += c[i] * c[i];
        }
    }
    let ss = acc.iter().sum::<f32>() + x[whole..].iter().map(|v| v * v).sum::<f32>();
    1.0 / (ss / x.len() as f32 + eps).sqrt()
}

/// `sum(a b c)` in 16 lanes, then the tail.
#[inline(always)]
fn dot3(a: &[f32], b: &[f32], c: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let whole = a.len() / 16 * 16;
    for ((a, b), c) in a[..whole].chunks_exact(16).zip(b.chunks_exact(16)).zip(c.chunks_exact(16)) {
        for i in 0..16 {
            acc[i] += a[i] * b[i] * c[i];
        }
    }
    let tail: f32 = a[whole..].iter().zip(&b[whole..]).zip(&c[whole..]).map(|((a, b), c)| a * b * c).sum();
    acc.iter().sum::<f32>() + tail
}

impl RmsNormOps for Flex {
    fn fused_rms_norm(x: FlexTensor, gamma: FlexTensor, eps: f32) -> FlexTensor {
        let shape = x.shape();
        let (xv, gv) = (f32s(&x), f32s(&gamma));
        let d = gv.len();
        let out = written(xv.len(), ROWS * d, |i, out| {
            let x = &xv[i * ROWS * d..(i * ROWS * d + out.len())];
            vectorised(#[inline(always)] || {
                for (out, x) in out.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
                    let r = inv_rms(x, eps);
                    for ((o, &x), &g) in out.iter_mut().zip(x).zip(gv.iter()) {
                        o.write(x * r * g);
                    }
                }
            })
        });
        FlexTensor::from_data(TensorData::new(out, shape))
    }

    fn fused_rms_norm_backward(x: FlexTensor, gamma: FlexTensor, grad: FlexTensor, eps: f32) -> (FlexTensor, FlexTensor) {
        let (shape, gshape) = (x.shape(), gamma.shape());
        let (xv, gv, dy) = (f32s(&x), f32s(&gamma), f32s(&grad));
        let d = gv.len();
        // Each task's share of dL/dgamma, added in task order afterwards (deterministic).
        let (dx, partials) = written_with(xv.len(), ROWS * d, |i, dx| {
            let rows = i * ROWS * d..i * ROWS * d + dx.len();
            let (x, dy) = (&xv[rows.clone()], &dy[rows]);
            let mut dg = vec![0.0f32; d];
            vectorised(#[inline(always)] || {
                for ((dx, x), dy) in dx.chunks_exact_mut(d).zip(x.chunks_exact(d)).zip(dy.chunks_exact(d)) {
                    let r = inv_rms(x, eps);
                    let k = r * r * r * dot3(dy, &gv, x) / d as f32;
                    for ((((dx, &x), &dy), &g), dg) in dx.iter_mut().zip(x).zip(dy).zip(gv.iter()).zip(dg.iter_mut()) {
                        dx.write(r * dy * g - k * x);
                        *dg += dy * x * r;
                    }
                }
            });
            dg
        });
        let mut dgamma = vec![0.0f32; d];
        for p in &partials {
            dgamma.iter_mut().zip(p).for_each(|(a, b)| *a += b);
        }
        (FlexTensor::from_data(TensorData::new(dx, shape)), FlexTensor::from_data(TensorData::new(dgamma, gshape)))
    }
}

impl<B: Backend + RmsNormOps, C: CheckpointStrategy> RmsNormOps for Autodiff<B, C> {
    fn fused_rms_norm(x: FloatTensor<Self>, gamma: FloatTensor<Self>, eps: f32) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct Norm {
            eps: f32,
        }

        impl<B: Backend + RmsNormOps> Backward<B, 2> for Norm {
            type State = (B::FloatTensorPrimitive, B::FloatTensorPrimitive);

            fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
                let (x, gamma) = ops.state;
                let [node_x, node_gamma] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (dx, dgamma) = B::fused_rms_norm_backward(x, gamma, grad, self.eps);
                for (node, g) in [(node_x, dx), (node_gamma, dgamma)] {
                    if let Some(node) = node {
                        grads.register::<B>(node.id, g);
                    }
                }
            }
        }

        let guards = [x.node(), gamma.node()];
        let (x, gamma) = (x.into_primitive(), gamma.into_primitive());
        let y = B::fused_rms_norm(x.clone(), gamma.clone(), eps);
        match (Norm { eps }).prepare::<C>(guards).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish((x, gamma), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }

    fn fused_rms_norm_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        eps: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (dx, dg) = B::fused_rms_norm_backward(x.into_primitive(), gamma.into_primitive(), grad.into_primitive(), eps);
        (Self::from_inner(dx), Self::from_inner(dg))
    }
}
