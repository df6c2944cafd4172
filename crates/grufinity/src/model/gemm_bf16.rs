//! Matrix products with bfloat16 operands and f32 accumulation, for `precision = "bf16"`
//! training on CPUs with AVX512-BF16 (`vdpbf16ps`: 32 multiply-adds per instruction, twice an
//! f32 FMA's).
//!
//! The layout is the usual one of fast GEMMs. For each block of `KC` steps of the inner
//! dimension, `B` is packed once into panels of `NR` columns in which each step pair `(k, k+1)`
//! of a column sits together (what `vdpbf16ps` multiplies), and each thread packs its rows of
//! `A` into panels of `MR` rows, pairs together. The micro-kernel keeps an `MR x NR` block of `C`
//! in registers and adds one step pair per iteration: two loads of `B`, `MR` broadcasts of `A`,
//! `2 MR` dot products. Operands are rounded to bfloat16 (to nearest, ties to even) as they are
//! packed; the products and sums are exact in f32 up to its rounding of the sums.
//!
//! The portable micro-kernel computes the same thing in plain f32 arithmetic on the rounded
//! values: it is what other CPUs run, and what the tests check the fast one against.

use rayon::prelude::*;

use super::quant::{bf16_bits, bf16_value};

/// Rows of `C` per micro-kernel call.
const MR: usize = 12;
/// Columns of `C` per micro-kernel call (two 16-lane registers).
const NR: usize = 32;
/// Inner-dimension steps per packed block (even).
const KC: usize = 384;

/// A strided f32 matrix view: element `(i, j)` is at `ptr + i * rs + j * cs`.
#[derive(Clone, Copy)]
pub struct View {
    pub ptr: *const f32,
    pub rs: isize,
    pub cs: isize,
}

// SAFETY: views are only read, while the tensors they point into are alive (the caller's
// borrow); sharing them between the threads of one product is sound.
unsafe impl Send for View {}
unsafe impl Sync for View {}

impl View {
    #[inline(always)]
    fn at(&self, i: usize, j: usize) -> f32 {
        // SAFETY: callers stay inside the matrix the view describes.
        unsafe { *self.ptr.offset(i as isize * self.rs + j as isize * self.cs) }
    }
}

/// Whether this CPU runs the AVX512-BF16 micro-kernel.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `C = A B` (`[m, k] x [k, n] -> [m, n]`, `C` row-major, overwritten) with both operands
/// rounded to bfloat16. `fast` picks the AVX512-BF16 micro-kernel (it must be [`available`]);
/// `parallel` splits the rows of `C` between the threads of rayon's pool.
///
/// # Safety
/// `a` and `b` must describe `[m, k]` and `[k, n]` matrices that stay alive and unchanged
/// during the call.
pub unsafe fn gemm(m: usize, n: usize, k: usize, a: View, b: View, c: &mut [f32], fast: bool, parallel: bool) {
    assert_eq!(c.len(), m * n, "C must be m x n");
    assert!(!fast || available(), "the AVX512-BF16 kernel needs a CPU that has it");
    c.fill(0.0);
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    let panels = n.div_ceil(NR);
    let mut packed_b = vec![0u16; panels * KC * NR];
    for k0 in (0..k).step_by(KC) {
        let kc = KC.min(k - k0);
        let pairs = kc.div_ceil(2);
        pack_b(b, k0, kc, n, &mut packed_b);
        let packed_b = &packed_b;
        let rows = |(block, c_rows): (usize, &mut [f32])| {
            let mut packed_a = vec![0u16; pairs * 2 * MR];
            let r0 = block * MR;
            let mr = MR.min(m - r0);
            pack_a(a, r0, mr, k0, kc, &mut packed_a);
            for p in 0..panels {
                let c0 = p * NR;
                let nr = NR.min(n - c0);
                let panel = &packed_b[p * KC * NR..p * KC * NR + pairs * 2 * NR];
                let mut acc = [[0.0f32; NR]; MR];
                #[cfg(target_arch = "x86_64")]
                if fast {
                    // SAFETY: `fast` was checked against the CPU above.
                    unsafe { avx512::kernel(&packed_a, panel, pairs, &mut acc) };
                } else {
                    portable(&packed_a, panel, pairs, &mut acc);
                }
                #[cfg(not(target_arch = "x86_64"))]
                portable(&packed_a, panel, pairs, &mut acc);
                for (r, row) in acc.iter().enumerate().take(mr) {
                    let out = &mut c_rows[r * n + c0..r * n + c0 + nr];
                    for (o, v) in out.iter_mut().zip(row) {
                        *o += v;
                    }
                }
            }
        };
        if parallel {
            c.par_chunks_mut(MR * n).enumerate().for_each(rows);
        } else {
            c.chunks_mut(MR * n).enumerate().for_each(rows);
        }
    }
}

/// Packs steps `k0..k0 + kc` of `B` (`[k, n]`): panel `p` holds columns `p NR..`, and within it
/// step pair `q` of column `j` is at `(q NR + j) 2`. Missing columns and the odd step are zero.
fn pack_b(b: View, k0: usize, kc: usize, n: usize, out: &mut [u16]) {
    let pairs = kc.div_ceil(2);
    out.par_chunks_mut(KC * NR).enumerate().for_each(|(p, panel)| {
        panel[..pairs * 2 * NR].fill(0);
        for q in 0..pairs {
            for half in 0..2 {
                let kk = 2 * q + half;
                if kk >= kc {
                    continue;
                }
                for j in 0..NR.min(n - p * NR) {
                    panel[(q * NR + j) * 2 + half] = bf16_bits(b.at(k0 + kk, p * NR + j));
                }
            }
        }
    });
}

/// Packs rows `r0..r0 + mr` and steps `k0..k0 + kc` of `A`: step pair `q` of row `r` at
/// `(q MR + r) 2`. Missing rows and the odd step are zero.
fn pack_a(a: View, r0: usize, mr: usize, k0: usize, kc: usize, out: &mut [u16]) {
    out.fill(0);
    for r in 0..mr {
        for kk in 0..kc {
            out[((kk / 2) * MR + r) * 2 + kk % 2] = bf16_bits(a.at(r0 + r, k0 + kk));
        }
    }
}

/// The micro-kernel in plain arithmetic on the bfloat16 values.
fn portable(a: &[u16], b: &[u16], pairs: usize, acc: &mut [[f32; NR]; MR]) {
    for q in 0..pairs {
        let bq = &b[q * NR * 2..(q + 1) * NR * 2];
        for (r, row) in acc.iter_mut().enumerate() {
            let (a0, a1) = (bf16_value(a[(q * MR + r) * 2]), bf16_value(a[(q * MR + r) * 2 + 1]));
            for (j, v) in row.iter_mut().enumerate() {
                *v += a0 * bf16_value(bq[2 * j]) + a1 * bf16_value(bq[2 * j + 1]);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{MR, NR};

    /// `acc += A_panel B_panel` over `pairs` step pairs (see the module docs for the layout).
    ///
    /// SAFETY: needs AVX512F and AVX512-BF16; `a` holds `pairs MR 2` and `b` `pairs NR 2`
    /// values.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn kernel(a: &[u16], b: &[u16], pairs: usize, acc: &mut [[f32; NR]; MR]) {
        assert!(a.len() >= pairs * MR * 2 && b.len() >= pairs * NR * 2);
        let mut c = [[_mm512_setzero_ps(); 2]; MR];
        let (ap, bp) = (a.as_ptr() as *const i32, b.as_ptr() as *const __m512i);
        for q in 0..pairs {
            // SAFETY: within the lengths asserted above.
            let (b0, b1) = unsafe { (_mm512_loadu_si512(bp.add(2 * q)), _mm512_loadu_si512(bp.add(2 * q + 1))) };
            let (b0, b1): (__m512bh, __m512bh) = (std::mem::transmute(b0), std::mem::transmute(b1));
            for (r, cr) in c.iter_mut().enumerate() {
                // One (k, k+1) pair of row r, as 32 bits, in every lane.
                let a_pair: __m512bh = std::mem::transmute(_mm512_set1_epi32(unsafe { *ap.add(q * MR + r) }));
                cr[0] = _mm512_dpbf16_ps(cr[0], a_pair, b0);
                cr[1] = _mm512_dpbf16_ps(cr[1], a_pair, b1);
            }
        }
        for (row, cr) in acc.iter_mut().zip(&c) {
            // SAFETY: each row holds NR = 32 floats.
            unsafe {
                _mm512_storeu_ps(row.as_mut_ptr(), _mm512_add_ps(_mm512_loadu_ps(row.as_ptr()), cr[0]));
                _mm512_storeu_ps(row.as_mut_ptr().add(16), _mm512_add_ps(_mm512_loadu_ps(row.as_ptr().add(16)), cr[1]));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(rows: usize, cols: usize, seed: u32) -> Vec<f32> {
        let mut s = seed;
        (0..rows * cols)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect()
    }

    /// Both micro-kernels against an f64 product of the bfloat16-rounded operands, with odd
    /// sizes (edges of every block) and a transposed operand, as the backward pass has.
    #[test]
    fn products_equal_f64_on_the_rounded_operands() {
        for (m, n, k) in [(1, 1, 1), (13, 33, 7), (25, 70, KC + 5), (12, 32, 2 * KC)] {
            let a = matrix(m, k, 1);
            let bt = matrix(n, k, 2); // B given transposed: [n, k] row-major
            let av = View { ptr: a.as_ptr(), rs: k as isize, cs: 1 };
            let bv = View { ptr: bt.as_ptr(), rs: 1, cs: k as isize };
            let r = |x: f32| bf16_value(bf16_bits(x)) as f64;
            let exact: Vec<f64> = (0..m * n)
                .map(|ij| (0..k).map(|kk| r(a[(ij / n) * k + kk]) * r(bt[(ij % n) * k + kk])).sum())
                .collect();
            let mut kernels = vec![false];
            if available() {
                kernels.push(true);
            }
            for fast in kernels {
                for parallel in [false, true] {
                    let mut c = vec![f32::NAN; m * n];
                    // SAFETY: the views describe `a` and `bt`, alive for the call.
                    unsafe { gemm(m, n, k, av, bv, &mut c, fast, parallel) };
                    for (i, (&got, &want)) in c.iter().zip(&exact).enumerate() {
                        let tolerance = 1e-5 * (k as f64).sqrt() * want.abs().max(1.0);
                        assert!((got as f64 - want).abs() < tolerance, "{m}x{n}x{k} fast={fast} [{i}]: {got} vs {want}");
                    }
                }
            }
        }
    }
}
