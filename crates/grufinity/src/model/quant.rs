//! Weight formats for inference: f32 as trained, bfloat16 values, or int8 with one f32 scale per
//! output channel (symmetric: `w ≈ q * scale`, `q` in `[-127, 127]`, `scale = max |w| / 127`).
//!
//! [`round_weights`] gives the Burn model the very values the host decoding kernels
//! ([`super::host`]) compute with, so that evaluation and prompt prefill through Burn see the same
//! weights as the per-token steps, and `eval --dtype X` measures what X costs.

use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::{Tensor, TensorData};

use super::lm::MinGruLm;

crate::choice_enum! {
    /// The element type of the weight matrices at inference.
    pub enum WeightDtype {
        /// As trained.
        F32 = "f32",
        /// Rounded to bfloat16 (8 significant bits): half the memory traffic per decoded token.
        Bf16 = "bf16",
        /// int8 with an f32 scale per output channel: a quarter of the memory traffic.
        Int8 = "int8",
    }
}

impl std::str::FromStr for WeightDtype {
    type Err = crate::error::Error;
    fn from_str(s: &str) -> crate::error::Result<Self> {
        Self::parse_word(s, "dtype")
    }
}

/// The bfloat16 nearest to `x` (ties to even), as its 16 bits.
#[inline]
pub fn bf16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) | 0x40) as u16; // stay a NaN
    }
    let rounding = 0x7FFF + ((bits >> 16) & 1);
    (bits.wrapping_add(rounding) >> 16) as u16
}

/// The value of bfloat16 bits.
pub fn bf16_value(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// Per-row symmetric int8 of a matrix stored row by row (`[rows, cols]`): the integers and each
/// row's scale. A row of zeros gets scale 0.
pub fn quantize_rows(w: &[f32], cols: usize) -> (Vec<i8>, Vec<f32>) {
    let mut q = Vec::with_capacity(w.len());
    let mut scales = Vec::with_capacity(w.len() / cols.max(1));
    for row in w.chunks_exact(cols) {
        let max = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let scale = max / 127.0;
        let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
        q.extend(row.iter().map(|v| (v * inv).round().clamp(-127.0, 127.0) as i8));
        scales.push(scale);
    }
    (q, scales)
}

/// `w` (row by row, `[rows, cols]`) as the values `dtype` stores, each row an output channel.
pub fn round_rows(w: &[f32], cols: usize, dtype: WeightDtype) -> Vec<f32> {
    match dtype {
        WeightDtype::F32 => w.to_vec(),
        WeightDtype::Bf16 => w.iter().map(|&x| bf16_value(bf16_bits(x))).collect(),
        WeightDtype::Int8 => {
            let (q, scales) = quantize_rows(w, cols);
            q.chunks_exact(cols).zip(&scales).flat_map(|(r, &s)| r.iter().map(move |&v| v as f32 * s)).collect()
        }
    }
}

fn host<const D: usize>(t: &Tensor<D>) -> Vec<f32> {
    t.clone().into_data().convert::<f32>().try_into_vec::<f32>().unwrap_or_default()
}

/// A `[a, b]` row-major matrix transposed to `[b, a]`.
pub fn transpose(w: &[f32], a: usize, b: usize) -> Vec<f32> {
    let mut t = vec![0.0f32; w.len()];
    for (i, row) in w.chunks_exact(b).enumerate() {
        for (j, &v) in row.iter().enumerate() {
            t[j * a + i] = v;
        }
    }
    t
}

/// `model` with every weight matrix (the linear maps, and the embedding when it is also the
/// head) in `dtype`'s values; norms, biases and the conv stay f32.
pub fn round_weights(mut model: MinGruLm, dtype: WeightDtype) -> MinGruLm {
    if dtype == WeightDtype::F32 {
        return model;
    }
    // Output channels are the rows of `rows_are_outputs` matrices and the columns of the others.
    let round = |p: Param<Tensor<2>>, rows_are_outputs: bool| {
        p.map(|t| {
            let ([a, b], device) = (t.dims(), t.device());
            let w = host(&t);
            let v = if rows_are_outputs {
                round_rows(&w, b, dtype)
            } else {
                transpose(&round_rows(&transpose(&w, a, b), a, dtype), b, a)
            };
            Tensor::from_data(TensorData::new(v, [a, b]), &device)
        })
    };
    // Burn's linear weights are `[D_in, D_out]`: outputs are columns.
    let round_linear = |l: &mut Linear| l.weight = round(l.weight.clone(), false);
    for b in &mut model.blocks {
        round_linear(&mut b.mingru.to_hz);
        if let Some(out) = &mut b.mingru.to_out {
            round_linear(out);
        }
        round_linear(&mut b.ff.up);
        round_linear(&mut b.ff.down);
    }
    match &mut model.head {
        Some(head) => round_linear(head),
        // Tied: the head's outputs are the embedding's rows (one per token).
        None => model.embedding.weight = round(model.embedding.weight.clone(), true),
    }
    model
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(bf16_bits(1.0), 0x3F80);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1.0).
        assert_eq!(bf16_bits(1.0 + 1.0 / 256.0), 0x3F80);
        // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: rounds up to the even one.
        assert_eq!(bf16_bits(1.0 + 3.0 / 256.0), 0x3F82);
        assert_eq!(bf16_value(bf16_bits(-2.5)), -2.5);
        assert!(bf16_value(bf16_bits(f32::NAN)).is_nan());
        for x in [0.1f32, -3.7, 1e-20, 6.5e4] {
            assert!(((bf16_value(bf16_bits(x)) - x) / x).abs() <= 1.0 / 256.0);
        }
    }

    #[test]
    fn int8_round_trip_error_is_at_most_half_a_step_per_channel() {
        let cols = 37;
        let w: Vec<f32> = (0..5 * cols).map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * (1 + i / cols) as f32).collect();
        let (q, scales) = quantize_rows(&w, cols);
        for (r, row) in w.chunks_exact(cols).enumerate() {
            let max = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            assert!((scales[r] - max / 127.0).abs() <= f32::EPSILON * max);
            for (c, &v) in row.iter().enumerate() {
                let back = q[r * cols + c] as f32 * scales[r];
                assert!((back - v).abs() <= scales[r] * 0.5 * (1.0 + 1e-5), "row {r} col {c}: {v} -> {back}");
            }
            // The largest weight of each channel is exact (q = ±127).
            assert!(q[r * cols..(r + 1) * cols].iter().any(|x| x.abs() == 127));
        }
        // Rounding twice gives the same values: the host kernels re-quantise the rounded model.
        let once = round_rows(&w, cols, WeightDtype::Int8);
        let twice = round_rows(&once, cols, WeightDtype::Int8);
        for (a, b) in once.iter().zip(&twice) {
            assert!((a - b).abs() <= 1e-6 * a.abs().max(1e-6), "{a} vs {b}");
        }
        let zeros = quantize_rows(&[0.0; 4], 4);
        assert_eq!(zeros, (vec![0; 4], vec![0.0]));
    }

    #[test]
    fn transpose_round_trips() {
        let w: Vec<f32> = (0..6).map(|i| i as f32).collect();
        assert_eq!(transpose(&w, 2, 3), vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
        assert_eq!(transpose(&transpose(&w, 2, 3), 3, 2), w);
    }
}
