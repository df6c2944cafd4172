//! Linear maps over `[B, T, D]` activations as one matrix product over all `B*T` rows.
//!
//! Burn's `Linear::forward` keeps the batch dimension when `T` is a multiple of its row tile
//! (a policy tuned for GPUs), so on the CPU it ran `B` small products forward and, for the
//! weight gradient, `B` products into a `[B, D_in, D_out]` buffer summed over `B`. Folding the
//! rows first gives one product each way. Measured on the reference model (dim 256, depth 4,
//! batch 16, chunk 256): a forward+backward step went from 0.87 s to 0.76 s.
//!
//! On the CPU the products themselves ([`matmul`], forward and both gradients) call `gemm`
//! directly: Burn's CPU matmul allocates every output zero-filled and then copies it into an
//! aligned buffer, two extra passes over each activation that showed as ~3% of a large-model
//! step; here each output is written once. Whole training steps (`profile step`, batch 16,
//! chunk 256) went from 225 to 190 ms (dim 128), 575 to 500 ms (dim 256) and 2.5 to 2.2 s
//! (dim 512, depth 6).

use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, AutodiffBackend, Backend, Dispatch, Flex, TensorMetadata};
use burn::nn::Linear;
use burn::tensor::{DType, Tensor, TensorData};
use burn_autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use burn_autodiff::{Autodiff, NodeId};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use super::fused::{f32s, supported, vectorised};
use super::gemm_bf16::{self, Epilogue, Kernel};

thread_local! {
    /// The kernel of this thread's CPU products if they round their operands to bfloat16 (see
    /// [`Bf16Products`]).
    static BF16: std::cell::Cell<Option<Kernel>> = const { std::cell::Cell::new(None) };
}

/// While alive, the CPU matrix products of this thread (forward and backward) take bfloat16
/// operands with f32 accumulation, on CPUs with AMX-BF16 or AVX512-BF16 ([`gemm_bf16`]);
/// elsewhere they stay f32. Training with `precision = "bf16"` holds one; the previous setting
/// comes back on drop.
pub struct Bf16Products {
    previous: Option<Kernel>,
}

impl Bf16Products {
    /// Turns bfloat16 products on for this thread if the CPU has the instructions; `None` (and
    /// f32 products) otherwise.
    pub fn enable() -> Option<Self> {
        Kernel::best().map(|kernel| Self { previous: BF16.with(|b| b.replace(Some(kernel))) })
    }
}

impl Drop for Bf16Products {
    fn drop(&mut self) {
        BF16.with(|b| b.set(self.previous));
    }
}

/// `x`: `[B, T, D_in]` → `x W (+ b)`: `[B, T, D_out]`.
pub fn linear(layer: &Linear, x: Tensor<3>) -> Tensor<3> {
    let Some(bias) = &layer.bias else {
        return rows_times(x, layer.weight.val());
    };
    let [b, t, d] = x.dims();
    let n = layer.weight.dims()[1];
    affine(x.reshape([b * t, d]), layer.weight.val(), bias.val()).reshape([b, t, n])
}

/// `x`: `[M, K]` times `w`: `[K, N]` plus `bias`: `[N]` on every row → `[M, N]`. On the CPU the
/// bias is added as the product's epilogue (see [`product`]) and its gradient is one parallel
/// sum over the rows: Burn's broadcast add and, backward, its row sum run on one thread, and
/// for the feed-forward layers of the large model (4096 x 2048 activations) those passes were
/// serial time in which the other cores waited.
pub fn affine(x: Tensor<2>, w: Tensor<2>, bias: Tensor<1>) -> Tensor<2> {
    if !supported(&x.device()) {
        return x.matmul(w) + bias.unsqueeze::<2>();
    }
    Tensor::from_dispatch(<Dispatch as DenseOps>::dense_affine(x.into_dispatch(), w.into_dispatch(), bias.into_dispatch()))
}

/// `x`: `[B, T, D_in]` times `w`: `[D_in, D_out]` → `[B, T, D_out]`.
pub fn rows_times(x: Tensor<3>, w: Tensor<2>) -> Tensor<3> {
    let [b, t, d] = x.dims();
    let n = w.dims()[1];
    matmul(x.reshape([b * t, d]), w).reshape([b, t, n])
}

/// `a`: `[M, K]` times `b`: `[K, N]` → `[M, N]`; either may be a transposed view.
pub fn matmul(a: Tensor<2>, b: Tensor<2>) -> Tensor<2> {
    if !supported(&a.device()) {
        return a.matmul(b);
    }
    Tensor::from_dispatch(<Dispatch as DenseOps>::dense_matmul(a.into_dispatch(), b.into_dispatch()))
}

/// Backend operation of the CPU matrix product.
#[backend_extension(Flex, Autodiff)]
pub trait DenseOps: Backend {
    /// `a`: `[M, K]`, `b`: `[K, N]` → `a b`: `[M, N]`.
    fn dense_matmul(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self>;

    /// `x`: `[M, K]`, `w`: `[K, N]`, `bias`: `[N]` → `x w + bias` on every row: `[M, N]`.
    fn dense_affine(x: FloatTensor<Self>, w: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self>;

    /// `g`: `[M, N]` → the sum of its rows: `[N]` (the bias gradient), added in a fixed order.
    fn dense_sum_rows(g: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// Rows per parallel task of the row sums, and of the epilogues after f32 products.
const EPILOGUE_ROWS: usize = 64;

/// Products of at least this many multiply-adds use every thread (Burn's CPU threshold).
const PARALLEL_MIN: usize = 192 * 192 * 192;

/// A 2-D f32 view: pointer to its first element, row stride, column stride (in elements).
fn view(t: &FlexTensor) -> ([usize; 2], *const f32, isize, isize) {
    assert_eq!(t.dtype(), DType::F32, "the CPU matmul runs in f32");
    let layout = t.layout();
    let (shape, strides) = (layout.shape(), layout.strides());
    assert_eq!(shape.num_dims(), 2, "the CPU matmul takes matrices");
    let storage = t.storage::<f32>();
    // SAFETY: the layout's offset lies inside the storage it describes.
    let ptr = unsafe { storage.as_ptr().add(layout.start_offset()) };
    ([shape[0], shape[1]], ptr, strides[0], strides[1])
}

impl DenseOps for Flex {
    fn dense_matmul(a: FlexTensor, b: FlexTensor) -> FlexTensor {
        product(&a, &b, None)
    }

    fn dense_affine(x: FlexTensor, w: FlexTensor, bias: FlexTensor) -> FlexTensor {
        product(&x, &w, Some(&add_bias(&f32s(&bias))))
    }

    fn dense_sum_rows(g: FlexTensor) -> FlexTensor {
        sum_rows(&g)
    }
}

/// `a b` on the CPU (`[M, K]` by `[K, N]`, either a strided view), then `epilogue` on every
/// block of rows: bfloat16 operands where [`Bf16Products`] is on (the epilogue runs inside the
/// product, on rows still in cache), f32 otherwise (one parallel pass after it).
pub(crate) fn product(a: &FlexTensor, b: &FlexTensor, epilogue: Option<&Epilogue>) -> FlexTensor {
    let ([m, k], a_ptr, a_rs, a_cs) = view(a);
    let ([k2, n], b_ptr, b_rs, b_cs) = view(b);
    assert_eq!(k, k2, "matmul: inner dimensions differ");
    let parallel = m * n * k >= PARALLEL_MIN;
    if let Some(kernel) = BF16.with(|b| b.get()) {
        let (a, b) = (gemm_bf16::View { ptr: a_ptr, rs: a_rs, cs: a_cs }, gemm_bf16::View { ptr: b_ptr, rs: b_rs, cs: b_cs });
        // SAFETY: the views describe `a` and `b`, which outlive the call; `Bf16Products`
        // only turns this on where the instructions exist.
        let out = unsafe { gemm_bf16::gemm(m, n, k, a, b, epilogue, kernel, parallel) };
        return FlexTensor::from_data(TensorData::new(out, [m, n]));
    }
    let mut out: Vec<f32> = Vec::with_capacity(m * n);
    if k == 0 {
        out.resize(m * n, 0.0);
    } else {
        let threads = if parallel { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None };
        // SAFETY: `out` has room for `m * n` elements, written (not read: `read_dst` is false)
        // row-major by gemm before `set_len`; the operands' pointers and strides describe
        // `a` and `b`, which outlive the call.
        unsafe {
            gemm::gemm(
                m, n, k, out.as_mut_ptr(), 1, n as isize, false, a_ptr, a_cs, a_rs, b_ptr, b_cs, b_rs, 0.0f32, 1.0f32,
                false, false, false, threads,
            );
            out.set_len(m * n);
        }
    }
    if let (Some(f), true) = (epilogue, n > 0) {
        out.par_chunks_mut(EPILOGUE_ROWS * n).enumerate().for_each(|(i, rows)| f(i * EPILOGUE_ROWS, rows));
    }
    FlexTensor::from_data(TensorData::new(out, [m, n]))
}

/// The epilogue that adds `bias` (`[N]`) to every row.
pub(crate) fn add_bias(bias: &[f32]) -> impl Fn(usize, &mut [f32]) + Sync + '_ {
    move |_, rows| {
        vectorised(#[inline(always)] || {
            for row in rows.chunks_exact_mut(bias.len()) {
                row.iter_mut().zip(bias).for_each(|(y, &b)| *y += b);
            }
        })
    }
}

/// The CPU pass of [`DenseOps::dense_sum_rows`].
pub(crate) fn sum_rows(g: &FlexTensor) -> FlexTensor {
    let shape = g.shape();
    let n = shape[shape.num_dims() - 1];
    let gv = f32s(g);
    // Each task's partial sums, added in task order: the same result on every run.
    let partials: Vec<Vec<f32>> = gv
        .par_chunks(EPILOGUE_ROWS * n)
        .map(|rows| {
            let mut acc = vec![0.0f32; n];
            vectorised(#[inline(always)] || {
                for row in rows.chunks_exact(n) {
                    acc.iter_mut().zip(row).for_each(|(a, &v)| *a += v);
                }
            });
            acc
        })
        .collect();
    let mut total = vec![0.0f32; n];
    for p in &partials {
        total.iter_mut().zip(p).for_each(|(a, &v)| *a += v);
    }
    FlexTensor::from_data(TensorData::new(total, [n]))
}

/// Registers the gradients of the product `a b` for the parents that track them (`ids`), given
/// `grad` = dL/d(a b): dL/da = g b^T, dL/db = a^T g (the transposes are views).
fn register_product_grads<B: Backend + DenseOps>(
    grads: &mut Gradients,
    [id_a, id_b]: [Option<NodeId>; 2],
    a: B::FloatTensorPrimitive,
    b: B::FloatTensorPrimitive,
    grad: B::FloatTensorPrimitive,
) {
    if let Some(id) = id_a {
        grads.register::<B>(id, B::dense_matmul(grad.clone(), B::float_transpose(b)));
    }
    if let Some(id) = id_b {
        grads.register::<B>(id, B::dense_matmul(B::float_transpose(a), grad));
    }
}

impl<B: Backend + DenseOps, C: CheckpointStrategy> DenseOps for Autodiff<B, C> {
    fn dense_matmul(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct MatMul;

        impl<B: Backend + DenseOps> Backward<B, 2> for MatMul {
            type State = (B::FloatTensorPrimitive, B::FloatTensorPrimitive);

            fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
                let (a, b) = ops.state;
                let grad = grads.consume::<B>(&ops.node);
                register_product_grads::<B>(grads, ops.parents.map(|p| p.map(|node| node.id)), a, b, grad);
            }
        }

        let guards = [a.node(), b.node()];
        let (a, b) = (a.into_primitive(), b.into_primitive());
        let y = B::dense_matmul(a.clone(), b.clone());
        match MatMul.prepare::<C>(guards).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish((a, b), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }

    fn dense_affine(x: FloatTensor<Self>, w: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct Affine;

        impl<B: Backend + DenseOps> Backward<B, 3> for Affine {
            type State = (B::FloatTensorPrimitive, B::FloatTensorPrimitive);

            fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
                let (x, w) = ops.state;
                let [node_x, node_w, node_bias] = ops.parents.map(|p| p.map(|node| node.id));
                let grad = grads.consume::<B>(&ops.node);
                // dL/dbias = the rows of g summed; x and w as for a product.
                if let Some(id) = node_bias {
                    grads.register::<B>(id, B::dense_sum_rows(grad.clone()));
                }
                register_product_grads::<B>(grads, [node_x, node_w], x, w, grad);
            }
        }

        let guards = [x.node(), w.node(), bias.node()];
        let (x, w) = (x.into_primitive(), w.into_primitive());
        let y = B::dense_affine(x.clone(), w.clone(), bias.into_primitive());
        match Affine.prepare::<C>(guards).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish((x, w), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }

    fn dense_sum_rows(g: FloatTensor<Self>) -> FloatTensor<Self> {
        // Only ever called on the inner backend's gradients (never differentiated).
        Self::from_inner(B::dense_sum_rows(g.into_primitive()))
    }
}
