//! Linear maps over `[B, T, D]` activations as one matrix product over all `B*T` rows.
//!
//! Burn's `Linear::forward` keeps the batch dimension when `T` is a multiple of its row tile
//! (a policy tuned for GPUs), so on the CPU it ran `B` small products forward and, for the
//! weight gradient, `B` products into a `[B, D_in, D_out]` buffer summed over `B`. Folding the
//! rows first gives one product each way. Measured on the reference model (dim 256, depth 4,
//! batch 16, chunk 256): a forward+backward step went from 0.87 s to 0.76 s.

use burn::nn::Linear;
use burn::tensor::Tensor;

/// `x`: `[B, T, D_in]` → `x W (+ b)`: `[B, T, D_out]`.
pub fn linear(layer: &Linear, x: Tensor<3>) -> Tensor<3> {
    let y = rows_times(x, layer.weight.val());
    match &layer.bias {
        Some(bias) => y + bias.val().unsqueeze::<3>(),
        None => y,
    }
}

/// `x`: `[B, T, D_in]` times `w`: `[D_in, D_out]` → `[B, T, D_out]`.
pub fn rows_times(x: Tensor<3>, w: Tensor<2>) -> Tensor<3> {
    let [b, t, d] = x.dims();
    let n = w.dims()[1];
    x.reshape([b * t, d]).matmul(w).reshape([b, t, n])
}
