//! The optimiser's per-parameter arithmetic as single passes on the CPU.
//!
//! Written with tensor ops, one AdamW update is some fifteen elementwise ops per parameter, each
//! allocating and writing a new buffer the size of the parameter: for the 20M-parameter
//! benchmark model that is gigabytes of memory traffic per step, ~5% of the step. Here it is one
//! pass that reads the gradient and the weights, writes new weights and updates both moments in
//! place, and the gradient norm is one read per parameter. Other backends use the tensor-op
//! forms in [`super::optim`], which these match up to rounding.

use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, AutodiffBackend, Backend, Dispatch, Flex, TensorMetadata};
use burn::tensor::{DType, Tensor, TensorData};
use burn_autodiff::checkpoint::strategy::CheckpointStrategy;
use burn_autodiff::Autodiff;
use burn_flex::FlexTensor;
use rayon::prelude::*;

use crate::model::fused::{supported, vectorised};

/// The scalars of one AdamW update (see [`super::optim::AdamW::update`]).
#[derive(Clone, Copy, Debug)]
pub struct AdamWStep {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// `lr * weight_decay` for decayed parameters, else 0.
    pub decay: f32,
    pub lr: f32,
    /// `1 - beta1^t`, `1 - beta2^t`.
    pub bias1: f32,
    pub bias2: f32,
}

/// Backend operations of the fused optimiser.
#[backend_extension(Flex, Autodiff)]
pub trait FusedOptimOps: Backend {
    /// One AdamW update of parameter `p` with gradient `g` and moments `m`, `v` (all `[N]`)
    /// → new `(p, m, v)`.
    fn adamw_step(
        p: FloatTensor<Self>,
        g: FloatTensor<Self>,
        m: FloatTensor<Self>,
        v: FloatTensor<Self>,
        step: AdamWStep,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    /// `sum(x^2)` of a `[N]` tensor → `[1]`.
    fn sum_squares(x: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// `adamw_step` of [`FusedOptimOps`], on devices where it is fused ([`supported`]).
pub fn adamw_step(p: Tensor<1>, g: Tensor<1>, m: Tensor<1>, v: Tensor<1>, step: AdamWStep) -> (Tensor<1>, Tensor<1>, Tensor<1>) {
    let (p, m, v) = <Dispatch as FusedOptimOps>::adamw_step(p.into_dispatch(), g.into_dispatch(), m.into_dispatch(), v.into_dispatch(), step);
    (Tensor::from_dispatch(p), Tensor::from_dispatch(m), Tensor::from_dispatch(v))
}

/// `sum(x^2)` → `[1]`, in one read on the CPU.
pub fn sum_squares(x: Tensor<1>) -> Tensor<1> {
    if supported(&x.device()) {
        Tensor::from_dispatch(<Dispatch as FusedOptimOps>::sum_squares(x.into_dispatch()))
    } else {
        x.square().sum()
    }
}

/// Elements per parallel task.
const CHUNK: usize = 1 << 15;

/// `t` as a contiguous f32 buffer starting at its storage's first element, owned by `t` alone
/// (copied once if shared), ready to update in place.
fn exclusive(t: FlexTensor) -> FlexTensor {
    assert_eq!(t.dtype(), DType::F32, "the fused optimiser runs in f32");
    let n = t.layout().num_elements();
    if t.layout().contiguous_offsets() == Some((0, n)) && t.storage::<f32>().len() == n {
        t
    } else {
        t.to_contiguous()
    }
}

impl FusedOptimOps for Flex {
    fn adamw_step(p: FlexTensor, g: FlexTensor, m: FlexTensor, v: FlexTensor, s: AdamWStep) -> (FlexTensor, FlexTensor, FlexTensor) {
        let (mut m, mut v) = (exclusive(m), exclusive(v));
        let (p, g) = (exclusive(p), exclusive(g));
        let (ps, gs) = (p.storage::<f32>(), g.storage::<f32>());
        let (ms, vs) = (m.storage_mut::<f32>(), v.storage_mut::<f32>());
        let n = ps.len();
        assert!(gs.len() == n && ms.len() == n && vs.len() == n, "adamw_step: sizes differ");
        let keep = 1.0 - s.decay;
        // The new weights go to a new buffer: the trainer still holds the old model while it
        // updates a clone, so updating in place would first copy every weight (on one thread).
        let mut new_p = Vec::<f32>::with_capacity(n);
        new_p.spare_capacity_mut()[..n]
            .par_chunks_mut(CHUNK)
            .zip(ms.par_chunks_mut(CHUNK))
            .zip(vs.par_chunks_mut(CHUNK))
            .zip(ps.par_chunks(CHUNK).zip(gs.par_chunks(CHUNK)))
            .for_each(|(((new_p, m), v), (p, g))| {
                vectorised(#[inline(always)] || {
                    for ((((new_p, m), v), &p), &g) in new_p.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(p).zip(g) {
                        *m = s.beta1 * *m + (1.0 - s.beta1) * g;
                        *v = s.beta2 * *v + (1.0 - s.beta2) * (g * g);
                        let update = (*m / s.bias1) / ((*v / s.bias2).sqrt() + s.eps);
                        new_p.write(p * keep - s.lr * update);
                    }
                })
            });
        // SAFETY: the chunks above wrote all `n` values.
        unsafe { new_p.set_len(n) };
        (FlexTensor::from_data(TensorData::new(new_p, p.shape())), m, v)
    }

    fn sum_squares(x: FlexTensor) -> FlexTensor {
        let x = exclusive(x);
        // Partial sums per chunk, added in order: the same total on every run (a parallel
        // reduction would associate differently from run to run, and the gradient norm feeds
        // clipping, so resumed training would not repeat exactly).
        let partials: Vec<f64> = x
            .storage::<f32>()
            .par_chunks(CHUNK)
            .map(|c| {
                vectorised(#[inline(always)] || {
                    let mut acc = [0.0f32; 16];
                    let whole = c.len() / 16 * 16;
                    for w in c[..whole].chunks_exact(16) {
                        for i in 0..16 {
                            acc[i] += w[i] * w[i];
                        }
                    }
                    acc.iter().map(|&a| a as f64).sum::<f64>() + c[whole..].iter().map(|&a| (a * a) as f64).sum::<f64>()
                })
            })
            .collect();
        let total: f64 = partials.iter().sum();
        FlexTensor::from_data(TensorData::new(vec![total as f32], [1]))
    }
}

impl<B: Backend + FusedOptimOps, C: CheckpointStrategy> FusedOptimOps for Autodiff<B, C> {
    fn adamw_step(
        p: FloatTensor<Self>,
        g: FloatTensor<Self>,
        m: FloatTensor<Self>,
        v: FloatTensor<Self>,
        step: AdamWStep,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        // An optimiser step is never differentiated: run it on the inner backend.
        let (p, m, v) = B::adamw_step(p.into_primitive(), g.into_primitive(), m.into_primitive(), v.into_primitive(), step);
        (Self::from_inner(p), Self::from_inner(m), Self::from_inner(v))
    }

    fn sum_squares(x: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::from_inner(B::sum_squares(x.into_primitive()))
    }
}
