//! Fused CPU kernels: the minGRU recurrence with its own backward pass, and the elementwise
//! functions the fused kernels share (a branch-free `exp`, `erf`, GELU and their derivatives).
//!
//! On the CPU the log-space parallel scan (a dozen tensor ops per doubling pass) is dominated by
//! memory traffic and per-op overhead. Sequentially over time but vectorised over the batch and
//! the channels, the recurrence is a handful of flops per element:
//!
//! ```text
//! z_t = sigmoid(k_z)     g_t = g(k_h)     h_t = h_{t-1} + z_t (g_t - h_{t-1})
//! ```
//!
//! It is exact in linear space (each `h_t` is a convex combination of positive numbers), so it
//! needs no log-space tricks. The backward pass runs the recurrence in reverse:
//!
//! ```text
//! a_t      = dL/dh_t + a_{t+1} (1 - z_{t+1})          (a_T+1 = 0)
//! dL/dk_z  = a_t (g_t - h_{t-1}) z_t (1 - z_t)
//! dL/dk_h  = a_t z_t g'(k_h)       g'(x) = 1 (x >= 0), sigmoid(x)(1 - sigmoid(x)) (x < 0)
//! dL/dh_0  = a_1 (1 - z_1)
//! ```
//!
//! GELU (exact, `x Phi(x)`) is the other hot elementwise op of a block: Burn's CPU backend spent
//! more time on it than on the feed-forward matmuls around it. Here it is [`gelu`] with an `erf`
//! accurate to ~1e-7 (Abramowitz & Stegun 7.1.26), applied inside the feed-forward's products
//! ([`super::fused_ff`]).
//!
//! The recurrence is a Burn backend extension for the Flex (CPU) backend and for Autodiff over
//! it; other backends (GPUs) use the log-space scan of [`super::scan`].

use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, AutodiffBackend, Backend, Dispatch, DispatchDevice, Flex, TensorMetadata};
use burn::tensor::{DType, Tensor, TensorData};
use burn_autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use burn_autodiff::Autodiff;
use burn_flex::FlexTensor;
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Backend operations of the fused recurrence.
#[backend_extension(Flex, Autodiff)]
pub trait MinGruScanOps: Backend {
    /// `hz`: `[B, T, 2E]` (`k_h` then `k_z` along the last axis, as the input projection
    /// produces them), `h0`: `[B, 1, E]` → `h`: `[B, T, E]` (linear space).
    fn mingru_recurrence(hz: FloatTensor<Self>, h0: FloatTensor<Self>) -> FloatTensor<Self>;

    /// Gradients of [`MinGruScanOps::mingru_recurrence`]: given its inputs, its output `h` and
    /// `dL/dh` (`[B, T, E]`), returns `(dL/dhz, dL/dh0)`.
    fn mingru_recurrence_backward(
        hz: FloatTensor<Self>,
        h0: FloatTensor<Self>,
        h: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);
}

/// Whether `device` runs the fused kernel (the CPU backend, with or without autodiff).
pub fn supported(device: &burn::tensor::Device) -> bool {
    matches!(device.as_dispatch(), DispatchDevice::Flex(_)) || is_autodiff_over_flex(device)
}

fn is_autodiff_over_flex(device: &burn::tensor::Device) -> bool {
    device.is_autodiff() && matches!(device.clone().without_autodiff().as_dispatch(), DispatchDevice::Flex(_))
}

/// `hz`: `[B, T, 2E]` (`k_h` then `k_z`), `h0`: `[B, 1, E]` → `h`: `[B, T, E]`. Taking the
/// projection's output whole saves splitting it into two copies and, backward, joining the two
/// gradients. Only on [`supported`] devices.
pub fn recurrence(hz: Tensor<3>, h0: Tensor<3>) -> Tensor<3> {
    Tensor::from_dispatch(<Dispatch as MinGruScanOps>::mingru_recurrence(hz.into_dispatch(), h0.into_dispatch()))
}

// ---------------------------------------------------------------- CPU kernels

pub(crate) fn f32s(t: &FlexTensor) -> std::borrow::Cow<'_, [f32]> {
    assert_eq!(t.dtype(), DType::F32, "the fused minGRU scan runs in f32");
    match t.as_slice::<f32>() {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => std::borrow::Cow::Owned(t.to_contiguous().as_slice::<f32>().expect("contiguous f32").to_vec()),
    }
}

fn flex(values: Vec<f32>, shape: [usize; 3]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

/// `e^x` for `x` in f32 range, relative error < 3e-7, without a libm call or branch, so the
/// loops that use it vectorise (libm's `expf` was the largest non-matmul cost of a step).
/// `e^x = 2^n e^r` with `n = round(x / ln 2)`, `|r| <= ln 2 / 2`, `e^r` a degree-6 Taylor
/// polynomial (truncation error < 2e-8 on that interval).
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_145_75; // ln 2 split in two so that n * LN2_HI is exact
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding 1.5 * 2^23 rounds to the nearest integer and leaves it in the low mantissa bits
    // (no `round` call, which is a libm call without SSE4.1).
    const SHIFTER: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let t = x * std::f32::consts::LOG2_E + SHIFTER;
    let n = t - SHIFTER;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let two_n = f32::from_bits((t.to_bits().wrapping_sub(SHIFTER.to_bits()).wrapping_add(127)) << 23);
    two_n * p
}

#[inline]
pub(crate) fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

#[inline]
pub(crate) fn g(x: f32) -> f32 {
    if x >= 0.0 { x + 0.5 } else { sigmoid(x) }
}

#[inline]
fn g_prime(x: f32) -> f32 {
    if x >= 0.0 {
        1.0
    } else {
        let s = sigmoid(x);
        s * (1.0 - s)
    }
}

/// `erf(x)`, |error| < 1.5e-7 (Abramowitz & Stegun 7.1.26).
#[inline]
pub(crate) fn erf(x: f32) -> f32 {
    erf_given_exp(x, exp(-x * x))
}

/// `erf(x)` given `e = exp(-x^2)` (GELU's backward has it already: its density term).
#[inline]
fn erf_given_exp(x: f32, e: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t * (0.254_829_6 + t * (-0.284_496_74 + t * (1.421_413_8 + t * (-1.453_152_1 + t * 1.061_405_4))));
    let y = 1.0 - poly * e;
    y.copysign(x)
}

const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// `1 / sqrt(2 pi)`.
const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

/// Exact GELU, `x Phi(x)`.
#[inline(always)]
pub(crate) fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * FRAC_1_SQRT_2))
}

/// `dL/dx` of [`gelu`] at `x` given `dL/dy` = `g`: `g (Phi(x) + x phi(x))`.
#[inline(always)]
pub(crate) fn gelu_backward(x: f32, g: f32) -> f32 {
    // One exponential serves both: exp(-(x/sqrt 2)^2) = exp(-x^2/2).
    let e = exp(-0.5 * x * x);
    let cdf = 0.5 * (1.0 + erf_given_exp(x * FRAC_1_SQRT_2, e));
    g * (cdf + x * FRAC_1_SQRT_2PI * e)
}

/// Runs `f` compiled for AVX-512 (16 lanes) or AVX2 and FMA (8 lanes) when the CPU has them,
/// else as is (SSE2's 4 lanes: the build targets baseline x86-64). Pass the closure as
/// `#[inline(always)] || ...`: otherwise the compiler may keep a large closure out of the
/// wrapper, and it runs as SSE2.
#[inline(always)]
pub(crate) fn vectorised<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bw") {
        #[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
        unsafe fn avx512<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        // SAFETY: the CPU supports these features (checked just above).
        return unsafe { avx512(f) };
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        // SAFETY: the CPU supports both features (checked just above).
        return unsafe { avx2(f) };
    }
    f()
}

/// A new vector of `len` values, written chunk by chunk on rayon's threads: `fill(i, out)`
/// must write every value of chunk `i` (`chunk` values; the last may be shorter). Nothing is
/// zeroed first: a `vec![0.0; len]` before a parallel kernel is serial time in which the other
/// cores wait (1.3% of a large-model bf16 training step's samples, all on the main thread, on a
/// 2-core AMD EPYC), and a second pass over the output besides.
pub(crate) fn written(len: usize, chunk: usize, fill: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync) -> Vec<f32> {
    written_with(len, chunk, fill).0
}

/// [`written`], also returning what `fill` returned for each chunk, in chunk order (a kernel's
/// per-task partial sums or carried state).
pub(crate) fn written_with<R: Send>(
    len: usize,
    chunk: usize,
    fill: impl Fn(usize, &mut [MaybeUninit<f32>]) -> R + Sync,
) -> (Vec<f32>, Vec<R>) {
    let mut v = Vec::with_capacity(len);
    let results = v.spare_capacity_mut()[..len].par_chunks_mut(chunk).enumerate().map(|(i, out)| fill(i, out)).collect();
    // SAFETY: `fill` wrote every value of every chunk, which together cover the first `len`.
    unsafe { v.set_len(len) };
    (v, results)
}

fn dims3(t: &FlexTensor) -> [usize; 3] {
    let s = t.shape();
    [s[0], s[1], s[2]]
}

impl MinGruScanOps for Flex {
    fn mingru_recurrence(hz: FlexTensor, h0: FlexTensor) -> FlexTensor {
        let [b, t, e2] = dims3(&hz);
        let e = e2 / 2;
        let (hz, h0v) = (f32s(&hz), f32s(&h0));
        let out = written(b * t * e, t * e, |row, out| {
            let hz = &hz[row * t * e2..(row + 1) * t * e2];
            let mut prev: Vec<f32> = h0v[row * e..(row + 1) * e].to_vec();
            vectorised(#[inline(always)] || {
                for (out, hz) in out.chunks_exact_mut(e).zip(hz.chunks_exact(e2)) {
                    let (kh, kz) = hz.split_at(e);
                    for (((out, prev), &kh), &kz) in out.iter_mut().zip(prev.iter_mut()).zip(kh).zip(kz) {
                        let z = sigmoid(kz);
                        let h = *prev + z * (g(kh) - *prev);
                        out.write(h);
                        *prev = h;
                    }
                }
            })
        });
        flex(out, [b, t, e])
    }

    fn mingru_recurrence_backward(
        hz: FlexTensor,
        h0: FlexTensor,
        h: FlexTensor,
        grad: FlexTensor,
    ) -> (FlexTensor, FlexTensor) {
        let [b, t, e2] = dims3(&hz);
        let e = e2 / 2;
        let (hz, h0v, hv, gv) = (f32s(&hz), f32s(&h0), f32s(&h), f32s(&grad));
        // Each row's gradient of h0 is the carry its reverse pass ends with.
        let (dhz, carries) = written_with(b * t * e2, t * e2, |row, dhz| {
            let (hz, hv, gv) = (&hz[row * t * e2..], &hv[row * t * e..], &gv[row * t * e..]);
            let mut carry = vec![0.0f32; e];
            vectorised(#[inline(always)] || {
                for step in (0..t).rev() {
                    let (kh, kz) = hz[step * e2..(step + 1) * e2].split_at(e);
                    let (dkh, dkz) = dhz[step * e2..(step + 1) * e2].split_at_mut(e);
                    let prev = if step == 0 { &h0v[row * e..(row + 1) * e] } else { &hv[(step - 1) * e..step * e] };
                    let gv = &gv[step * e..(step + 1) * e];
                    let ins = kh.iter().zip(kz).zip(prev).zip(gv);
                    let outs = dkh.iter_mut().zip(dkz.iter_mut()).zip(carry.iter_mut());
                    for ((((&kh, &kz), &prev), &gv), ((dkh, dkz), carry)) in ins.zip(outs) {
                        let z = sigmoid(kz);
                        let a = gv + *carry;
                        dkz.write(a * (g(kh) - prev) * z * (1.0 - z));
                        dkh.write(a * z * g_prime(kh));
                        *carry = a * (1.0 - z);
                    }
                }
            });
            carry
        });
        (flex(dhz, [b, t, e2]), flex(carries.concat(), [b, 1, e]))
    }
}

// ---------------------------------------------------------------- autodiff

impl<B: Backend + MinGruScanOps, C: CheckpointStrategy> MinGruScanOps for Autodiff<B, C> {
    fn mingru_recurrence(hz: FloatTensor<Self>, h0: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct Recurrence;

        impl<B: Backend + MinGruScanOps> Backward<B, 2> for Recurrence {
            type State = (B::FloatTensorPrimitive, B::FloatTensorPrimitive, B::FloatTensorPrimitive);

            fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
                let (hz, h0, h) = ops.state;
                let [node_hz, node_h0] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (dhz, dh0) = B::mingru_recurrence_backward(hz, h0, h, grad);
                for (node, g) in [(node_hz, dhz), (node_h0, dh0)] {
                    if let Some(node) = node {
                        grads.register::<B>(node.id, g);
                    }
                }
            }
        }

        let guards = [hz.node(), h0.node()];
        let (hz, h0) = (hz.into_primitive(), h0.into_primitive());
        let h = B::mingru_recurrence(hz.clone(), h0.clone());
        match Recurrence.prepare::<C>(guards).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish((hz, h0, h.clone()), h),
            OpsKind::UnTracked(prep) => prep.finish(h),
        }
    }

    fn mingru_recurrence_backward(
        hz: FloatTensor<Self>,
        h0: FloatTensor<Self>,
        h: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        // Gradients of gradients are not needed: compute on the inner backend, untracked.
        let (a, b) =
            B::mingru_recurrence_backward(hz.into_primitive(), h0.into_primitive(), h.into_primitive(), grad.into_primitive());
        (Self::from_inner(a), Self::from_inner(b))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn exp_matches_libm() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (got, want) = (super::exp(x) as f64, (x as f64).exp());
            worst = worst.max(((got - want) / want).abs());
            x += 0.001;
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
    }
}
