//! One decoding step on the CPU, from plain host copies of the weights.
//!
//! A decoding step reads every weight once and does two flops per weight read, so on a CPU it
//! is bound by memory bandwidth once the model outgrows the caches (a 20M-parameter model reads
//! 80 MB of f32 per token), and by per-op dispatch while it fits in them. This module keeps the
//! matrices output-major (`[D_out, D_in]`: each output is one contiguous dot product, split
//! between threads by output when the matrix is large), optionally in bfloat16 or int8 (a half or
//! a quarter of the bytes per token), and runs a whole layer per call without building tensors.
//!
//! The maths is the model's ([`super::block`]) in its one-token form; the tests check it against
//! the Burn forward. The weight formats are [`super::quant`]'s; [`super::quant::round_weights`]
//! gives the Burn model the same values, so evaluation and prefill through Burn see the same
//! weights as these steps.

use burn::nn::{Linear, RmsNorm};
use burn::tensor::{Device, Tensor, TensorData};
use rayon::prelude::*;

use super::fused::{erf, g, sigmoid, vectorised};
use super::gemv::{dot4x4, Weight};
use super::quant::{bf16_bits, quantize_rows, transpose, WeightDtype};
use super::lm::MinGruLm;
use super::scan::LOG_ZERO;
use super::state::{LayerState, State};

fn host<const D: usize>(t: &Tensor<D>) -> Vec<f32> {
    t.clone().into_data().convert::<f32>().try_into_vec::<f32>().unwrap_or_default()
}

enum Weights {
    F32(Vec<f32>),
    Bf16(Vec<u16>),
    /// Per-row int8 and each row's scale.
    Int8(Vec<i8>, Vec<f32>),
}

/// Matrices below this many weights run on one thread. Splitting even mid-sized ones pays: while
/// the step runs inside the pool (see [`HostModel::step`]) the sibling thread stays awake between
/// them. Measured per token on 2 cores: dim 128 124 -> 98 us, dim 256 405 -> 284 us against a
/// cut at 2^17 (which left dim 128 on one thread).
const PARALLEL_MIN: usize = 1 << 15;

/// `y = W x (+ b)` with `W` stored output-major.
struct Matrix {
    /// `D_out`.
    rows: usize,
    /// `D_in`.
    cols: usize,
    /// `[D_out, D_in]`.
    weights: Weights,
    /// `[D_out]`.
    bias: Option<Vec<f32>>,
}

impl Matrix {
    /// From weights laid out `[D_out, D_in]`.
    fn new(out_major: Vec<f32>, rows: usize, cols: usize, bias: Option<Vec<f32>>, dtype: WeightDtype) -> Self {
        let weights = match dtype {
            WeightDtype::F32 => Weights::F32(out_major),
            WeightDtype::Bf16 => Weights::Bf16(out_major.into_iter().map(bf16_bits).collect()),
            WeightDtype::Int8 => {
                let (q, scales) = quantize_rows(&out_major, cols);
                Weights::Int8(q, scales)
            }
        };
        Self { rows, cols, weights, bias }
    }

    /// From a Burn linear layer (weight `[D_in, D_out]`).
    fn linear(layer: &Linear, dtype: WeightDtype) -> Self {
        let [cols, rows] = layer.weight.dims();
        let t = transpose(&host(&layer.weight.val()), cols, rows);
        Self::new(t, rows, cols, layer.bias.as_ref().map(|b| host(&b.val())), dtype)
    }

    /// `x`: `[m, D_in]` → `[m, D_out]`.
    fn apply(&self, x: &[f32], m: usize) -> Vec<f32> {
        match &self.weights {
            Weights::F32(w) => self.apply_with(w, None, x, m),
            Weights::Bf16(w) => self.apply_with(w, None, x, m),
            Weights::Int8(w, scales) => self.apply_with(w, Some(scales), x, m),
        }
    }

    /// `scales`: each output row's factor (int8 rows hold `w / scale`).
    fn apply_with<W: Weight>(&self, w: &[W], scales: Option<&[f32]>, x: &[f32], m: usize) -> Vec<f32> {
        let (rows, cols) = (self.rows, self.cols);
        // Computed output-major (`[D_out, m]`) so that threads own contiguous outputs, and each
        // weight row is read once for all `m` inputs.
        let mut yt = vec![0.0f32; rows * m];
        let run = |(i, out): (usize, &mut [f32])| {
            let first = i * BLOCK;
            let n = out.len() / m;
            let quads = n / 4 * 4;
            // With several rows, bf16/int8 weights are converted once per quad, not once per row.
            let mut scratch = if m > 1 { vec![0.0f32; 4 * cols] } else { Vec::new() };
            let row = |r: usize| &x[r * cols..(r + 1) * cols];
            for q in (0..quads).step_by(4) {
                let ws: [&[W]; 4] = std::array::from_fn(|j| &w[(first + q + j) * cols..(first + q + j + 1) * cols]);
                let mut put = |r: usize, d: [f32; 4]| {
                    for (j, v) in d.into_iter().enumerate() {
                        out[(q + j) * m + r] = v;
                    }
                };
                // One row reads the stored weights directly; several share one widened copy.
                if m == 1 {
                    put(0, W::dot4(ws, row(0)));
                    continue;
                }
                let wf = W::widen4(ws, &mut scratch);
                // Four rows at a time share the weight loads (the same sums as one by one).
                let fours = m / 4 * 4;
                // The first group fetches the next quad of stored weights from memory.
                let next = w.get((first + q + 4) * cols..(first + q + 8) * cols).unwrap_or(&[]);
                for r in (0..fours).step_by(4) {
                    let ahead = if r == 0 { next } else { &[] };
                    for (i, d) in dot4x4(wf, std::array::from_fn(|i| row(r + i)), ahead).into_iter().enumerate() {
                        put(r + i, d);
                    }
                }
                for r in fours..m {
                    put(r, f32::dot4(wf, row(r)));
                }
            }
            for k in quads..n {
                let wk = &w[(first + k) * cols..(first + k + 1) * cols];
                for r in 0..m {
                    out[k * m + r] = W::dot4([wk; 4], row(r))[0];
                }
            }
        };
        if rows * cols >= PARALLEL_MIN {
            yt.par_chunks_mut(BLOCK * m).enumerate().for_each(run);
        } else {
            yt.chunks_mut(BLOCK * m).enumerate().for_each(run);
        }
        let mut y = vec![0.0f32; m * rows];
        for (n, out) in yt.chunks_exact(m).enumerate() {
            let b = self.bias.as_ref().map_or(0.0, |b| b[n]);
            let s = scales.map_or(1.0, |s| s[n]);
            for (r, &v) in out.iter().enumerate() {
                y[r * rows + n] = v * s + b;
            }
        }
        y
    }
}

/// Output rows per unit of work (a multiple of 4).
const BLOCK: usize = 16;

/// RMSNorm of each `[D]` row of `x` (`[m, D]`).
fn rms_norm(x: &[f32], gamma: &[f32], eps: f32) -> Vec<f32> {
    let d = gamma.len();
    let mut y = Vec::with_capacity(x.len());
    for row in x.chunks_exact(d) {
        let mean_sq = row.iter().map(|v| v * v).sum::<f32>() / d as f32;
        let r = 1.0 / (mean_sq + eps).sqrt();
        y.extend(row.iter().zip(gamma).map(|(v, g)| v * r * g));
    }
    y
}

struct Norm {
    gamma: Vec<f32>,
    eps: f32,
}

impl Norm {
    fn new(n: &RmsNorm) -> Self {
        Self { gamma: host(&n.gamma.val()), eps: n.epsilon as f32 }
    }
    fn apply(&self, x: &[f32]) -> Vec<f32> {
        rms_norm(x, &self.gamma, self.eps)
    }
}

struct Conv {
    /// `[K, D]`: tap `k` multiplies the input `K - 1 - k` steps back.
    weight: Vec<f32>,
    /// `[D]`.
    bias: Vec<f32>,
}

struct HostBlock {
    norm_mix: Norm,
    conv: Option<Conv>,
    to_hz: Matrix,
    to_out: Option<Matrix>,
    norm_ff: Norm,
    up: Matrix,
    down: Matrix,
    swiglu: bool,
}

/// The recurrent state of `rows` decoding rows, on the host.
#[derive(Clone, Debug)]
pub struct HostState {
    pub rows: usize,
    /// Per layer, `h` (linear space): `[rows, E]`.
    h: Vec<Vec<f32>>,
    /// Per layer, the conv's last `K - 1` inputs: `[rows, K-1, D]` (empty without a conv).
    conv: Vec<Vec<f32>>,
}

impl HostState {
    /// The host copy of `state`.
    pub fn from_state(state: &State) -> Self {
        let h = state.layers.iter().map(|l| host(&l.log_h).into_iter().map(f32::exp).collect()).collect();
        let conv = state.layers.iter().map(|l| l.conv.as_ref().map(host).unwrap_or_default()).collect();
        Self { rows: state.batch(), h, conv }
    }

    /// Back to a [`State`] on `device` (`log h`, floored at [`LOG_ZERO`] as the forward does).
    pub fn to_state(&self, device: &Device) -> State {
        let layers = self
            .h
            .iter()
            .zip(&self.conv)
            .map(|(h, conv)| {
                let e = h.len() / self.rows;
                let log_h: Vec<f32> = h.iter().map(|v| v.ln().max(LOG_ZERO)).collect();
                let conv = (!conv.is_empty()).then(|| {
                    let d_k = conv.len() / self.rows;
                    Tensor::<1>::from_data(TensorData::new(conv.clone(), [conv.len()]), device).reshape([
                        self.rows as i64,
                        -1,
                        d_k as i64,
                    ])
                });
                LayerState { log_h: Tensor::from_data(TensorData::new(log_h, [self.rows, 1, e]), device), conv }
            })
            .collect();
        State { layers }
    }

    /// Rows `rows` (in that order) of every layer.
    pub fn select_rows(&self, rows: &[usize]) -> Self {
        let pick = |v: &Vec<f32>| {
            if v.is_empty() {
                return Vec::new();
            }
            let w = v.len() / self.rows;
            rows.iter().flat_map(|&r| v[r * w..(r + 1) * w].iter().copied()).collect()
        };
        Self { rows: rows.len(), h: self.h.iter().map(pick).collect(), conv: self.conv.iter().map(pick).collect() }
    }
}

/// A model's weights on the host, for one-token steps.
pub struct HostModel {
    dim: usize,
    vocab: usize,
    /// `[V, D]`.
    embedding: Vec<f32>,
    blocks: Vec<HostBlock>,
    norm: Norm,
    /// `D -> V` (the embedding itself when tied).
    head: Matrix,
    pub dtype: WeightDtype,
}

impl HostModel {
    /// Host copies of `model`'s weights, matrices in `dtype`.
    pub fn new(model: &MinGruLm, dtype: WeightDtype) -> Self {
        let [vocab, dim] = model.embedding.weight.dims();
        let embedding = host(&model.embedding.weight.val());
        let blocks = model
            .blocks
            .iter()
            .map(|b| HostBlock {
                norm_mix: Norm::new(&b.norm_mix),
                conv: b.conv.as_ref().map(|c| Conv { weight: host(&c.weight.val()), bias: host(&c.bias.val()) }),
                to_hz: Matrix::linear(&b.mingru.to_hz, dtype),
                to_out: b.mingru.to_out.as_ref().map(|l| Matrix::linear(l, dtype)),
                norm_ff: Norm::new(&b.norm_ff),
                up: Matrix::linear(&b.ff.up, dtype),
                down: Matrix::linear(&b.ff.down, dtype),
                swiglu: b.ff.swiglu,
            })
            .collect();
        let head = match &model.head {
            Some(head) => Matrix::linear(head, dtype),
            None => Matrix::new(embedding.clone(), vocab, dim, None, dtype),
        };
        Self { dim, vocab, embedding, blocks, norm: Norm::new(&model.norm), head, dtype }
    }

    /// Vocabulary size `V`.
    pub fn vocab(&self) -> usize {
        self.vocab
    }

    /// Consumes one token per row of `state` → logits `[rows, V]`, advancing `state`.
    pub fn step(&self, tokens: &[u32], state: &mut HostState) -> Vec<f32> {
        if self.parallel() {
            // Run the whole step on a pool thread: split matrices then hand work to a sibling
            // worker, instead of each one sending its work from outside the pool and sleeping
            // until it is done (two thread wake-ups per matrix).
            rayon::scope(|_| self.step_here(tokens, state))
        } else {
            self.step_here(tokens, state)
        }
    }

    /// Whether any matrix is split between threads.
    fn parallel(&self) -> bool {
        let big = |m: &Matrix| m.rows * m.cols >= PARALLEL_MIN;
        big(&self.head)
            || self.blocks.iter().any(|b| big(&b.to_hz) || b.to_out.as_ref().is_some_and(big) || big(&b.up) || big(&b.down))
    }

    fn step_here(&self, tokens: &[u32], state: &mut HostState) -> Vec<f32> {
        let (m, d) = (tokens.len(), self.dim);
        assert_eq!(m, state.rows, "one token per state row");
        let mut x: Vec<f32> = Vec::with_capacity(m * d);
        for &t in tokens {
            let t = (t as usize).min(self.vocab - 1);
            x.extend_from_slice(&self.embedding[t * d..(t + 1) * d]);
        }
        for (i, b) in self.blocks.iter().enumerate() {
            let mut u = b.norm_mix.apply(&x);
            if let Some(conv) = &b.conv {
                u = conv_step(conv, &u, &mut state.conv[i], d);
            }
            let hz = b.to_hz.apply(&u, m);
            let h = &mut state.h[i];
            let e = h.len() / m;
            vectorised(#[inline(always)] || {
                for (prev, hz) in h.chunks_exact_mut(e).zip(hz.chunks_exact(2 * e)) {
                    let (kh, kz) = hz.split_at(e);
                    for ((p, &kh), &kz) in prev.iter_mut().zip(kh).zip(kz) {
                        *p += sigmoid(kz) * (g(kh) - *p);
                    }
                }
            });
            let mixed = match &b.to_out {
                Some(out) => out.apply(h, m),
                None => h.clone(),
            };
            add(&mut x, &mixed);
            let up = b.up.apply(&b.norm_ff.apply(&x), m);
            let hidden: Vec<f32> = if b.swiglu {
                let hh = up.len() / m / 2;
                up.chunks_exact(2 * hh)
                    .flat_map(|r| r[..hh].iter().zip(&r[hh..]).map(|(&a, &g)| a * sigmoid(a) * g))
                    .collect()
            } else {
                up.iter().map(|&v| 0.5 * v * (1.0 + erf(v * std::f32::consts::FRAC_1_SQRT_2))).collect()
            };
            add(&mut x, &b.down.apply(&hidden, m));
        }
        self.head.apply(&self.norm.apply(&x), m)
    }
}

fn add(x: &mut [f32], y: &[f32]) {
    x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
}

/// One step of the causal conv per row: `u`: `[m, D]`, `cache`: `[m, K-1, D]` (shifted by one).
fn conv_step(conv: &Conv, u: &[f32], cache: &mut [f32], d: usize) -> Vec<f32> {
    let k = conv.weight.len() / d;
    let mut y = Vec::with_capacity(u.len());
    let hist = (k - 1) * d;
    for (r, ur) in u.chunks_exact(d).enumerate() {
        let c = &mut cache[r * hist..(r + 1) * hist];
        for j in 0..d {
            let mut s = conv.bias[j];
            for tap in 0..k - 1 {
                s += conv.weight[tap * d + j] * c[tap * d + j];
            }
            y.push(s + conv.weight[(k - 1) * d + j] * ur[j]);
        }
        if hist > 0 {
            c.copy_within(d.., 0);
            c[hist - d..].copy_from_slice(ur);
        }
    }
    y
}
