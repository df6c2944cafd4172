//! Packing operands into the layouts the micro-kernels read, rounding them to bfloat16 on the
//! way (to nearest, ties to even, as [`bf16_bits`]).
//!
//! Both AVX512-BF16 operands and AMX's `B` take *pairs*: steps `(2q, 2q+1)` of one lane (a row
//! of `A`, a column of `B`) as one 32-bit word, low half first, lane `l`'s pair `q` at word
//! `q * width + l` ([`pack_pairs`]). Where the CPU has AVX-512 the packing is vectorised along
//! whichever direction of the operand is contiguous: across lanes (`B` row-major, `A`
//! transposed in the weight gradient), two steps are rounded and interleaved 16 lanes at a
//! time; along steps (`A` row-major, `B` transposed in the input gradient), 32 steps of one lane
//! are rounded, paired and scattered. Profiling the scalar version on a 2-core AMD EPYC showed
//! packing at a third of a bf16 product's time.

use super::View;
use crate::model::quant::bf16_bits;

/// How many step pairs ahead the lane-contiguous packing prefetches: runs of one step lie a
/// whole row of the operand apart, a stride the hardware prefetchers do not follow.
const PREFETCH_AHEAD: usize = 48;

/// `words` as the bfloat16 halves the kernels index (pair `i` is halves `2i`, `2i + 1`).
pub fn halves(words: &[u32]) -> &[u16] {
    // SAFETY: u16 has a weaker alignment than u32 and every bit pattern is valid.
    unsafe { std::slice::from_raw_parts(words.as_ptr().cast(), words.len() * 2) }
}

fn halves_mut(words: &mut [u32]) -> &mut [u16] {
    // SAFETY: as in `halves`, and the borrow is exclusive.
    unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast(), words.len() * 2) }
}

/// Where [`pack_pairs`] puts pair `q` of lane `l`: at word `q * pair + l * lane`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub pair: usize,
    pub lane: usize,
}

impl Layout {
    /// The pairs of `width` lanes side by side, one step pair after another (`B`'s panels, whose
    /// rows of pairs the kernels load as vectors; `A` when its lanes are contiguous).
    pub fn by_pair(width: usize) -> Self {
        Layout { pair: width, lane: 1 }
    }

    /// Each lane's `pairs` pairs in a row (`A` when its steps are contiguous, so that packing
    /// it is a contiguous copy, not a transposition).
    pub fn by_lane(pairs: usize) -> Self {
        Layout { pair: 1, lane: pairs }
    }
}

/// Packs lanes `l0..l0 + lanes` and steps `k0..k0 + kc` of `v` (a `[lanes, steps]` view: `A`
/// itself, or `B` transposed) into `out` as `pairs` step pairs of `width` lanes, placed as
/// `layout` says. Lanes past `lanes` and steps past `kc` are zero.
#[allow(clippy::too_many_arguments)]
pub fn pack_pairs(v: View, l0: usize, lanes: usize, k0: usize, kc: usize, width: usize, pairs: usize, layout: Layout, out: &mut [u32]) {
    assert!(lanes <= width && kc <= 2 * pairs && out.len() >= pairs * width, "pack_pairs: out of range");
    #[cfg(target_arch = "x86_64")]
    if avx512bw() && (v.rs == 1 || v.cs == 1) {
        // SAFETY: the CPU has AVX512F/BW; the view's run of lanes or steps is contiguous.
        unsafe { avx512::pack_pairs(v, l0, lanes, k0, kc, width, pairs, layout, out) };
        return;
    }
    scalar_pack_pairs(v, l0, lanes, k0, kc, width, pairs, layout, out);
}

/// [`pack_pairs`] one value at a time (any CPU, any strides; what the tests compare against).
#[allow(clippy::too_many_arguments)]
fn scalar_pack_pairs(v: View, l0: usize, lanes: usize, k0: usize, kc: usize, width: usize, pairs: usize, layout: Layout, out: &mut [u32]) {
    let out = halves_mut(&mut out[..pairs * width]);
    out.fill(0);
    for l in 0..lanes {
        for kk in 0..kc {
            out[((kk / 2) * layout.pair + l * layout.lane) * 2 + kk % 2] = bf16_bits(v.at(l0 + l, k0 + kk));
        }
    }
}

/// Packs rows `r0..r0 + mr` and steps `k0..k0 + kc` of `A` row by row, `steps` values a row
/// (AMX's `A` tiles): step `kk` of row `r` at `r steps + kk`. Missing rows and steps are zero.
pub fn pack_rows(a: View, r0: usize, mr: usize, k0: usize, kc: usize, steps: usize, out: &mut [u16]) {
    out.fill(0);
    if a.cs == 1 {
        for r in 0..mr {
            a.round_into(r0 + r, k0, false, &mut out[r * steps..r * steps + kc]);
        }
    } else {
        let mut column = [0u16; 64];
        for kk in 0..kc {
            a.prefetch(r0, k0 + kk + 2 * PREFETCH_AHEAD, true, mr);
            a.round_into(r0, k0 + kk, true, &mut column[..mr]);
            for (r, &v) in column[..mr].iter().enumerate() {
                out[r * steps + kk] = v;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn avx512bw() -> bool {
    std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bw")
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{Layout, View, PREFETCH_AHEAD};

    /// Each lane's f32 rounded to bfloat16 (ties to even; a NaN stays a NaN), the 16 bits in the
    /// upper half of the lane, as [`crate::model::quant::bf16_bits`] rounds.
    #[inline(always)]
    unsafe fn round_hi(x: __m512) -> __m512i {
        let bits = _mm512_castps_si512(x);
        let odd = _mm512_and_si512(_mm512_srli_epi32::<16>(bits), _mm512_set1_epi32(1));
        let rounded = _mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7FFF)));
        let nan = _mm512_or_si512(bits, _mm512_set1_epi32(0x0040_0000));
        _mm512_mask_blend_epi32(_mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x), rounded, nan)
    }

    fn mask(n: usize) -> u16 {
        if n >= 16 {
            u16::MAX
        } else {
            (1u16 << n) - 1
        }
    }

    /// See [`super::pack_pairs`]; `v.rs == 1` or `v.cs == 1`.
    ///
    /// SAFETY: needs AVX512F and AVX512BW; the view covers the lanes and steps asked for.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn pack_pairs(v: View, l0: usize, lanes: usize, k0: usize, kc: usize, width: usize, pairs: usize, layout: Layout, out: &mut [u32]) {
        let out = out.as_mut_ptr();
        let zero = _mm512_setzero_si512();
        if v.rs == 1 && layout.lane == 1 {
            // Lanes are adjacent, in memory and in `out`: round two steps of 16 lanes and
            // interleave them.
            let full = kc / 2; // pairs with both steps inside the block
            let at = |l: usize, kk: usize| v.ptr.offset(l as isize + (k0 + kk) as isize * v.cs);
            for q in 0..pairs {
                v.prefetch(l0, k0 + 2 * (q + PREFETCH_AHEAD), true, lanes);
                v.prefetch(l0, k0 + 2 * (q + PREFETCH_AHEAD) + 1, true, lanes);
                for l in (0..width).step_by(16) {
                    let (load, store) = (mask(lanes.saturating_sub(l)), mask(width - l));
                    let word = if 2 * q < kc {
                        let even = round_hi(_mm512_maskz_loadu_ps(load, at(l0 + l, 2 * q)));
                        let odd = if q < full { round_hi(_mm512_maskz_loadu_ps(load, at(l0 + l, 2 * q + 1))) } else { zero };
                        // Lanes not loaded are zero in both halves.
                        _mm512_or_si512(_mm512_and_si512(odd, _mm512_set1_epi32(0xFFFF_0000u32 as i32)), _mm512_srli_epi32::<16>(even))
                    } else {
                        zero
                    };
                    _mm512_mask_storeu_epi32(out.add(q * layout.pair + l).cast(), store, word);
                }
            }
            return;
        }
        if v.cs != 1 {
            // Lanes adjacent in memory but pairs adjacent in `out`: not a layout the products ask for.
            return super::scalar_pack_pairs(v, l0, lanes, k0, kc, width, pairs, layout, out_slice(out, pairs, width));
        }
        // Steps are adjacent: round 32 steps of one lane and keep their upper halves in order
        // (16 pairs), stored in a row where pairs are adjacent in `out`, else scattered.
        let picks = _mm512_set_epi16(
            63, 61, 59, 57, 55, 53, 51, 49, 47, 45, 43, 41, 39, 37, 35, 33, 31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1,
        );
        let index = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0), _mm512_set1_epi32(layout.pair as i32));
        for l in 0..width {
            let src = v.ptr.offset((l0 + l) as isize * v.rs + k0 as isize);
            for q0 in (0..pairs).step_by(16) {
                let pair_mask = mask(pairs - q0);
                let word = if l < lanes {
                    let s = 2 * q0;
                    let lo = _mm512_maskz_loadu_ps(mask(kc.saturating_sub(s)), src.add(s));
                    let hi = _mm512_maskz_loadu_ps(mask(kc.saturating_sub(s + 16)), src.add(s + 16));
                    _mm512_permutex2var_epi16(round_hi(lo), picks, round_hi(hi))
                } else {
                    zero
                };
                let at = out.add(q0 * layout.pair + l * layout.lane);
                if layout.pair == 1 {
                    _mm512_mask_storeu_epi32(at.cast(), pair_mask, word);
                } else {
                    // A scatter is slow (on a Zen 5 it cost more than the product of A's
                    // panel); only B's panels, packed once for all rows of C, come here.
                    _mm512_mask_i32scatter_epi32::<4>(at.cast(), pair_mask, index, word);
                }
            }
        }
    }

    /// SAFETY: `out` holds `pairs * width` words.
    unsafe fn out_slice<'a>(out: *mut u32, pairs: usize, width: usize) -> &'a mut [u32] {
        std::slice::from_raw_parts_mut(out, pairs * width)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize) -> Vec<f32> {
        let mut s = 7u32;
        let mut v: Vec<f32> = (0..n)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                f32::from_bits(s) // every kind of value: NaNs, infinities, subnormals, ties
            })
            .collect();
        // Exact ties of both parities, which round to even.
        v[..4].copy_from_slice(&[f32::from_bits(0x3F80_8000), f32::from_bits(0x3F81_8000), -0.0, f32::NAN]);
        v
    }

    /// The vectorised packing (where this CPU has it) writes the same words as one value at a
    /// time, for both contiguous directions, at the edges of lanes, widths and odd step counts.
    #[test]
    fn packing_equals_the_scalar_packing() {
        let (rows, cols) = (45, 70);
        let data = values(rows * cols);
        let row_major = View { ptr: data.as_ptr(), rs: cols as isize, cs: 1 };
        let col_major = View { ptr: data.as_ptr(), rs: 1, cs: rows as isize };
        for (v, lanes_max, steps_max) in [(row_major, rows, cols), (col_major, cols, rows)] {
            for (l0, lanes, width) in [(0, 12, 12), (3, 7, 12), (1, 32, 32), (2, 17, 32), (0, 1, 32)] {
                for (k0, kc, pairs) in [(0, 33, 32usize), (5, 40, 20), (1, 1, 1), (2, 31, 16)] {
                    assert!(l0 + lanes <= lanes_max && k0 + kc <= steps_max);
                    for layout in [Layout::by_pair(width), Layout::by_lane(pairs)] {
                        let (mut fast, mut slow) = (vec![7u32; pairs * width], vec![9u32; pairs * width]);
                        pack_pairs(v, l0, lanes, k0, kc, width, pairs, layout, &mut fast);
                        scalar_pack_pairs(v, l0, lanes, k0, kc, width, pairs, layout, &mut slow);
                        assert_eq!(fast, slow, "rs={} lanes {l0}+{lanes}/{width} steps {k0}+{kc}/{pairs} pairs {layout:?}", v.rs);
                    }
                }
            }
        }
    }
}
