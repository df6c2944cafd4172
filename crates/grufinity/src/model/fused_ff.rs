//! The GELU feed-forward as one op on the CPU, its activation inside the products.
//!
//! ```text
//! pre = x W1 + b1      h = GELU(pre)      y = h W2 + b2
//! backward, given dL/dy:
//! d_pre = (dL/dy W2^T) GELU'(pre)
//! dW2 = h^T dL/dy      db2 = sum of the rows of dL/dy
//! dW1 = x^T d_pre      db1 = sum of the rows of d_pre      dx = d_pre W1^T
//! ```
//!
//! The bias and GELU are applied to each block of rows of `x W1` as the product finishes it
//! ([`Epilogue`]), and GELU's derivative to each block of `dL/dy W2^T`, so neither the
//! activation nor the gradient of `h` takes a pass of its own over the `[B*T, H]` rows: for
//! the large model (4096 x 2048 of them, 32 MB) that was a read of `pre` forward and a write
//! and a read of `dL/dh` backward, per layer. GELU is exact (`x Phi(x)`, with an `erf`
//! accurate to ~1e-7, Abramowitz & Stegun 7.1.26).
//!
//! Other backends (GPUs) use Burn's linear layers and GELU; [`gelu_feed_forward`] picks.

use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, AutodiffBackend, Backend, Dispatch, Flex, TensorMetadata};
use burn::tensor::{Tensor, TensorData};
use burn_autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use burn_autodiff::Autodiff;
use burn_flex::FlexTensor;
use std::mem::MaybeUninit;

use super::dense::{add_bias, product, sum_rows};
use super::fused::{f32s, gelu, gelu_backward, vectorised};

/// Backend operations of the fused feed-forward.
#[backend_extension(Flex, Autodiff)]
pub trait FeedForwardOps: Backend {
    /// `x`: `[M, D]`, `w1`: `[D, H]`, `b1`: `[H]`, `w2`: `[H, D]`, `b2`: `[D]` → `y`: `[M, D]`.
    fn gelu_feed_forward(
        x: FloatTensor<Self>,
        w1: FloatTensor<Self>,
        b1: FloatTensor<Self>,
        w2: FloatTensor<Self>,
        b2: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

    /// [`FeedForwardOps::gelu_feed_forward`] with what its backward pass needs: `(pre, h, y)`.
    fn gelu_feed_forward_parts(
        x: FloatTensor<Self>,
        w1: FloatTensor<Self>,
        b1: FloatTensor<Self>,
        w2: FloatTensor<Self>,
        b2: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    /// Gradients of [`FeedForwardOps::gelu_feed_forward`] given `dL/dy`: `(dx, dW1, db1, dW2, db2)`.
    #[allow(clippy::type_complexity)]
    fn gelu_feed_forward_backward(
        x: FloatTensor<Self>,
        w1: FloatTensor<Self>,
        w2: FloatTensor<Self>,
        pre: FloatTensor<Self>,
        h: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

/// `x`: `[B, T, D]` → `GELU(x W1 + b1) W2 + b2`: `[B, T, D]`, fused on the CPU, Burn's ops
/// elsewhere.
pub fn gelu_feed_forward(x: Tensor<3>, w1: Tensor<2>, b1: Tensor<1>, w2: Tensor<2>, b2: Tensor<1>) -> Tensor<3> {
    let [b, t, d] = x.dims();
    let x = x.reshape([b * t, d]);
    if !super::fused::supported(&x.device()) {
        let h = burn::tensor::activation::gelu(x.matmul(w1) + b1.unsqueeze::<2>());
        return (h.matmul(w2) + b2.unsqueeze::<2>()).reshape([b, t, d]);
    }
    let (x, w1, b1, w2, b2) = (x.into_dispatch(), w1.into_dispatch(), b1.into_dispatch(), w2.into_dispatch(), b2.into_dispatch());
    Tensor::<2>::from_dispatch(<Dispatch as FeedForwardOps>::gelu_feed_forward(x, w1, b1, w2, b2)).reshape([b, t, d])
}

/// A pointer to the (not yet written) rows of an output that epilogues on several threads
/// write, each its own rows.
struct SharedRows(*mut MaybeUninit<f32>);

// SAFETY: the epilogues that hold it write disjoint rows (one block of rows each).
unsafe impl Sync for SharedRows {}

impl SharedRows {
    /// SAFETY: `start..start + len` lies inside the output and no other thread touches it.
    #[allow(clippy::mut_from_ref)]
    unsafe fn rows(&self, start: usize, len: usize) -> &mut [MaybeUninit<f32>] {
        std::slice::from_raw_parts_mut(self.0.add(start), len)
    }
}

fn transpose(t: FlexTensor) -> FlexTensor {
    <Flex as burn::backend::ops::FloatTensorOps<Flex>>::float_transpose(t)
}

impl FeedForwardOps for Flex {
    fn gelu_feed_forward(x: FlexTensor, w1: FlexTensor, b1: FlexTensor, w2: FlexTensor, b2: FlexTensor) -> FlexTensor {
        Self::gelu_feed_forward_parts(x, w1, b1, w2, b2).2
    }

    fn gelu_feed_forward_parts(
        x: FlexTensor,
        w1: FlexTensor,
        b1: FlexTensor,
        w2: FlexTensor,
        b2: FlexTensor,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let (m, hidden) = (x.shape()[0], w1.shape()[1]);
        let (b1, b2) = (f32s(&b1), f32s(&b2));
        let mut h = Vec::<f32>::with_capacity(m * hidden);
        let out = SharedRows(h.spare_capacity_mut().as_mut_ptr());
        let activate = |r0: usize, pre: &mut [f32]| {
            // SAFETY: each block of rows is handed to one epilogue call, once.
            let h = unsafe { out.rows(r0 * hidden, pre.len()) };
            vectorised(#[inline(always)] || {
                for (pre, h) in pre.chunks_exact_mut(hidden).zip(h.chunks_exact_mut(hidden)) {
                    for ((p, h), &b) in pre.iter_mut().zip(h).zip(b1.iter()) {
                        *p += b;
                        h.write(gelu(*p));
                    }
                }
            })
        };
        let pre = product(&x, &w1, Some(&activate));
        // SAFETY: the epilogue ran on every block of rows of `pre`, so it wrote all of `h`.
        unsafe { h.set_len(m * hidden) };
        let h = FlexTensor::from_data(TensorData::new(h, [m, hidden]));
        let y = product(&h, &w2, Some(&add_bias(&b2)));
        (pre, h, y)
    }

    fn gelu_feed_forward_backward(
        x: FlexTensor,
        w1: FlexTensor,
        w2: FlexTensor,
        pre: FlexTensor,
        h: FlexTensor,
        grad: FlexTensor,
    ) -> (FlexTensor, FlexTensor, FlexTensor, FlexTensor, FlexTensor) {
        let hidden = w1.shape()[1];
        let db2 = sum_rows(&grad);
        let dw2 = product(&transpose(h), &grad, None);
        let pre = f32s(&pre);
        let through_gelu = |r0: usize, d: &mut [f32]| {
            let pre = &pre[r0 * hidden..r0 * hidden + d.len()];
            vectorised(#[inline(always)] || {
                for (d, &p) in d.iter_mut().zip(pre) {
                    *d = gelu_backward(p, *d);
                }
            })
        };
        let d_pre = product(&grad, &transpose(w2), Some(&through_gelu));
        let db1 = sum_rows(&d_pre);
        let dw1 = product(&transpose(x), &d_pre, None);
        let dx = product(&d_pre, &transpose(w1), None);
        (dx, dw1, db1, dw2, db2)
    }
}

impl<B: Backend + FeedForwardOps, C: CheckpointStrategy> FeedForwardOps for Autodiff<B, C> {
    fn gelu_feed_forward(
        x: FloatTensor<Self>,
        w1: FloatTensor<Self>,
        b1: FloatTensor<Self>,
        w2: FloatTensor<Self>,
        b2: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct FeedForward;

        impl<B: Backend + FeedForwardOps> Backward<B, 5> for FeedForward {
            /// `x`, `W1`, `W2`, `pre`, `h`.
            type State = [B::FloatTensorPrimitive; 5];

            fn backward(self, ops: Ops<Self::State, 5>, grads: &mut Gradients, _: &mut Checkpointer) {
                let [x, w1, w2, pre, h] = ops.state;
                let grad = grads.consume::<B>(&ops.node);
                let (dx, dw1, db1, dw2, db2) = B::gelu_feed_forward_backward(x, w1, w2, pre, h, grad);
                for (node, g) in ops.parents.into_iter().zip([dx, dw1, db1, dw2, db2]) {
                    if let Some(node) = node {
                        grads.register::<B>(node.id, g);
                    }
                }
            }
        }

        let guards = [x.node(), w1.node(), b1.node(), w2.node(), b2.node()];
        let (x, w1, w2) = (x.into_primitive(), w1.into_primitive(), w2.into_primitive());
        let (pre, h, y) = B::gelu_feed_forward_parts(x.clone(), w1.clone(), b1.into_primitive(), w2.clone(), b2.into_primitive());
        match FeedForward.prepare::<C>(guards).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish([x, w1, w2, pre, h], y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }

    fn gelu_feed_forward_parts(
        x: FloatTensor<Self>,
        w1: FloatTensor<Self>,
        b1: FloatTensor<Self>,
        w2: FloatTensor<Self>,
        b2: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        // Only the tracked op above calls this, on the inner backend.
        let (pre, h, y) = B::gelu_feed_forward_parts(
            x.into_primitive(),
            w1.into_primitive(),
            b1.into_primitive(),
            w2.into_primitive(),
            b2.into_primitive(),
        );
        (Self::from_inner(pre), Self::from_inner(h), Self::from_inner(y))
    }

    fn gelu_feed_forward_backward(
        x: FloatTensor<Self>,
        w1: FloatTensor<Self>,
        w2: FloatTensor<Self>,
        pre: FloatTensor<Self>,
        h: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        // Gradients of gradients are not needed: compute on the inner backend, untracked.
        let (x, w1, w2, pre, h, grad) =
            (x.into_primitive(), w1.into_primitive(), w2.into_primitive(), pre.into_primitive(), h.into_primitive(), grad.into_primitive());
        let (dx, dw1, db1, dw2, db2) = B::gelu_feed_forward_backward(x, w1, w2, pre, h, grad);
        (Self::from_inner(dx), Self::from_inner(dw1), Self::from_inner(db1), Self::from_inner(dw2), Self::from_inner(db2))
    }
}
