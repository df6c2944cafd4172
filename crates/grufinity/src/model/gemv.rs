//! Dot products of weight rows with an activation row, the inner loop of the host decoding step
//! (`model/host.rs`): four weight rows at a time, so `x` is loaded once for all four and the CPU
//! has eight independent chains of additions where one row would have two.
//!
//! On x86-64 with AVX2 and FMA (checked at run time) the loop is written with intrinsics: the
//! compiler's own vectorisation of the portable loop kept the accumulators in memory. Elsewhere
//! the portable loop runs in 16 lanes. The two differ in rounding (FMA), not in order.

/// A stored weight: f32, bfloat16 as its 16 bits, or int8 (its scale applied by the caller).
pub(crate) trait Weight: Copy + Sync {
    fn value(self) -> f32;

    /// `[w_j · x for j in 0..4]`, all rows as long as `x`.
    fn dot4(w: [&[Self]; 4], x: &[f32]) -> [f32; 4];

    /// The four rows as f32, converted into `scratch` (`[4 * len]`) unless they are f32 already.
    /// A step of several rows converts each weight once and reuses it for every row; f32 dot
    /// products of the converted rows equal [`Weight::dot4`] exactly (the conversion is exact).
    fn widen4<'a>(w: [&'a [Self]; 4], scratch: &'a mut [f32]) -> [&'a [f32]; 4] {
        let mut rest = scratch;
        std::array::from_fn(|j| {
            let (out, tail) = std::mem::take(&mut rest).split_at_mut(w[j].len());
            rest = tail;
            for (o, &v) in out.iter_mut().zip(w[j]) {
                *o = v.value();
            }
            let out: &'a [f32] = out;
            out
        })
    }
}

impl Weight for f32 {
    #[inline(always)]
    fn value(self) -> f32 {
        self
    }

    fn widen4<'a>(w: [&'a [f32]; 4], _scratch: &'a mut [f32]) -> [&'a [f32]; 4] {
        w
    }

    fn dot4(w: [&[f32]; 4], x: &[f32]) -> [f32; 4] {
        #[cfg(target_arch = "x86_64")]
        if avx2::available() {
            // SAFETY: the CPU has AVX2 and FMA (checked just above).
            return unsafe { avx2::dot4_f32(w, x) };
        }
        portable(w, x)
    }
}

impl Weight for u16 {
    #[inline(always)]
    fn value(self) -> f32 {
        crate::model::quant::bf16_value(self)
    }

    fn dot4(w: [&[u16]; 4], x: &[f32]) -> [f32; 4] {
        #[cfg(target_arch = "x86_64")]
        if avx2::available() {
            // SAFETY: the CPU has AVX2 and FMA (checked just above).
            return unsafe { avx2::dot4_bf16(w, x) };
        }
        portable(w, x)
    }
}

impl Weight for i8 {
    #[inline(always)]
    fn value(self) -> f32 {
        self as f32
    }

    fn dot4(w: [&[i8]; 4], x: &[f32]) -> [f32; 4] {
        #[cfg(target_arch = "x86_64")]
        if avx2::available() {
            // SAFETY: the CPU has AVX2 and FMA (checked just above).
            return unsafe { avx2::dot4_i8(w, x) };
        }
        portable(w, x)
    }
}

/// `[[w_j · x_r for j in 0..4] for r in 0..4]`: four activation rows against the same four
/// weight rows, the inner loop of a decoding step with several streams. Each weight vector is
/// loaded once for four rows (the one-row kernel does one load per multiply), and the result
/// equals `f32::dot4(w, x[r])` bit for bit: the same per-lane FMA chains, summed the same way.
///
/// `next` (empty, or the next quad of stored weights, `4 * len` of them) is prefetched while
/// this runs: with four streams sharing each load the loop does four times the work per weight
/// byte of the one-stream kernel, and the hardware prefetchers alone left it waiting on the
/// first pass over each quad.
pub(crate) fn dot4x4<N>(w: [&[f32]; 4], x: [&[f32]; 4], next: &[N]) -> [[f32; 4]; 4] {
    #[cfg(target_arch = "x86_64")]
    if avx2::available() && avx512::available() {
        // SAFETY: the CPU has AVX-512F, AVX2 and FMA (checked just above).
        return unsafe { avx512::dot4x4(w, x, next) };
    }
    let _ = next;
    x.map(|xr| f32::dot4(w, xr))
}

/// Lanes per row in the portable loop.
const L: usize = 16;

#[inline(always)]
fn portable<W: Weight>(w: [&[W]; 4], x: &[f32]) -> [f32; 4] {
    let mut acc = [[0.0f32; L]; 4];
    let whole = x.len() / L * L;
    for (c, xc) in x[..whole].chunks_exact(L).enumerate() {
        for (j, a) in acc.iter_mut().enumerate() {
            let wc = &w[j][c * L..(c + 1) * L];
            for i in 0..L {
                a[i] += wc[i].value() * xc[i];
            }
        }
    }
    std::array::from_fn(|j| {
        let mut a = acc[j];
        let mut n = L;
        while n > 1 {
            n /= 2;
            for i in 0..n {
                a[i] += a[i + n];
            }
        }
        a[0] + tail(w[j], x, whole)
    })
}

/// `sum_{i >= from} w_i x_i`, the elements past the vector loop.
#[inline(always)]
fn tail<W: Weight>(w: &[W], x: &[f32], from: usize) -> f32 {
    w[from..].iter().zip(&x[from..]).map(|(&wi, &xi)| wi.value() * xi).sum()
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    pub fn available() -> bool {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }

    /// The body shared by both weight types; `$load(ptr)` gives 8 weights as f32 (a function,
    /// not a closure, so that it is inlined with the target features).
    macro_rules! dot4_body {
        ($w:ident, $x:ident, $load:ident) => {{
            assert!($w.iter().all(|r| r.len() == $x.len()), "weight rows as long as x");
            let whole = $x.len() / 16 * 16;
            let mut acc = [_mm256_setzero_ps(); 8];
            let mut i = 0;
            while i < whole {
                let x0 = _mm256_loadu_ps($x.as_ptr().add(i));
                let x1 = _mm256_loadu_ps($x.as_ptr().add(i + 8));
                for j in 0..4 {
                    let p = $w[j].as_ptr().add(i);
                    acc[2 * j] = _mm256_fmadd_ps($load(p), x0, acc[2 * j]);
                    acc[2 * j + 1] = _mm256_fmadd_ps($load(p.add(8)), x1, acc[2 * j + 1]);
                }
                i += 16;
            }
            std::array::from_fn(|j| hsum(_mm256_add_ps(acc[2 * j], acc[2 * j + 1])) + super::tail($w[j], $x, whole))
        }};
    }

    /// SAFETY: needs AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot4_f32(w: [&[f32]; 4], x: &[f32]) -> [f32; 4] {
        // SAFETY: the loads stay inside the rows (checked lengths, whole blocks of 16).
        unsafe { dot4_body!(w, x, _mm256_loadu_ps) }
    }

    /// SAFETY: needs AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot4_bf16(w: [&[u16]; 4], x: &[f32]) -> [f32; 4] {
        // SAFETY: the loads stay inside the rows (checked lengths, whole blocks of 16).
        unsafe { dot4_body!(w, x, load_bf16) }
    }

    /// SAFETY: needs AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot4_i8(w: [&[i8]; 4], x: &[f32]) -> [f32; 4] {
        // SAFETY: the loads stay inside the rows (checked lengths, whole blocks of 16).
        unsafe { dot4_body!(w, x, load_i8) }
    }

    /// 8 int8 weights as f32 (one 8-byte load, sign-extended, converted).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn load_i8(p: *const i8) -> __m256 {
        unsafe { _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p as *const __m128i))) }
    }

    /// 8 bfloat16 weights as f32: a bfloat16 is the top half of the f32 with the same value.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn load_bf16(p: *const u16) -> __m256 {
        unsafe { _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i)))) }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps::<1>(s, s)))
    }
}

/// Four activation rows at a time in 16-lane registers: lane `l` of a 16-lane accumulator is lane
/// `l % 8` of the AVX2 kernel's first (`l < 8`) or second 8-lane accumulator, so adding the two
/// halves and summing as that kernel does gives its result exactly.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    pub fn available() -> bool {
        std::arch::is_x86_feature_detected!("avx512f")
    }

    /// SAFETY: needs AVX-512F, AVX2 and FMA.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn dot4x4<N>(w: [&[f32]; 4], x: [&[f32]; 4], next: &[N]) -> [[f32; 4]; 4] {
        let n = x[0].len();
        assert!(w.iter().chain(&x).all(|r| r.len() == n), "weight and activation rows of one length");
        // Bytes of `next` to fetch per block of 16: one line per row (f32), or less.
        let per = if next.len() == 4 * n { 4 * 16 * std::mem::size_of::<N>() } else { 0 };
        let next = next.as_ptr() as *const i8;
        let whole = n / 16 * 16;
        // `acc[r][j]`: 16 accumulators, 4 weight vectors and one activation vector in registers.
        let mut acc = [[_mm512_setzero_ps(); 4]; 4];
        let mut i = 0;
        while i < whole {
            // SAFETY: the loads stay inside the rows (checked lengths, whole blocks of 16), the
            // prefetches inside `next` (`whole / 16 * per` bytes at most).
            unsafe {
                let mut b = 0;
                while b < per {
                    _mm_prefetch::<_MM_HINT_T0>(next.add(i / 16 * per + b));
                    b += 64;
                }
                let wv = [
                    _mm512_loadu_ps(w[0].as_ptr().add(i)),
                    _mm512_loadu_ps(w[1].as_ptr().add(i)),
                    _mm512_loadu_ps(w[2].as_ptr().add(i)),
                    _mm512_loadu_ps(w[3].as_ptr().add(i)),
                ];
                for r in 0..4 {
                    let xv = _mm512_loadu_ps(x[r].as_ptr().add(i));
                    for j in 0..4 {
                        acc[r][j] = _mm512_fmadd_ps(wv[j], xv, acc[r][j]);
                    }
                }
            }
            i += 16;
        }
        let mut out = [[0.0f32; 4]; 4];
        for r in 0..4 {
            for j in 0..4 {
                let lo = _mm512_castps512_ps256(acc[r][j]);
                let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(acc[r][j])));
                out[r][j] = super::avx2::hsum(_mm256_add_ps(lo, hi)) + super::tail(w[j], x[r], whole);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The dispatched kernel (AVX2 where the CPU has it) against the portable loop and an f64
    /// sum, over lengths with and without a tail past the blocks of 16.
    #[test]
    fn dot4_matches_the_portable_loop_and_f64() {
        let mut seed = 7u32;
        let mut next = || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        for n in [0usize, 5, 16, 37, 300] {
            let x: Vec<f32> = (0..n).map(|_| next()).collect();
            let w: Vec<Vec<f32>> = (0..4).map(|_| (0..n).map(|_| next()).collect()).collect();
            let rows: [&[f32]; 4] = std::array::from_fn(|j| &w[j][..]);
            let exact: [f64; 4] =
                std::array::from_fn(|j| w[j].iter().zip(&x).map(|(&a, &b)| a as f64 * b as f64).sum());
            let bits: Vec<Vec<u16>> =
                w.iter().map(|r| r.iter().map(|&v| crate::model::quant::bf16_bits(v)).collect()).collect();
            let ints: Vec<Vec<i8>> = w.iter().map(|r| r.iter().map(|&v| (v * 254.0).round() as i8).collect()).collect();
            let rows8: [&[i8]; 4] = std::array::from_fn(|j| &ints[j][..]);
            let exact8: [f64; 4] =
                std::array::from_fn(|j| ints[j].iter().zip(&x).map(|(&a, &b)| a as f64 * b as f64).sum());
            let rows16: [&[u16]; 4] = std::array::from_fn(|j| &bits[j][..]);
            let exact16: [f64; 4] = std::array::from_fn(|j| {
                bits[j].iter().zip(&x).map(|(&a, &b)| a.value() as f64 * b as f64).sum()
            });
            // Several decoding rows take the widened weights through the f32 kernel: the same
            // sums, bit for bit, as the kernels of the stored types (so batched == single).
            let mut scratch = vec![0.0f32; 4 * n];
            let xs: Vec<Vec<f32>> = (0..4).map(|_| (0..n).map(|_| next()).collect()).collect();
            let xs: [&[f32]; 4] = std::array::from_fn(|r| &xs[r][..]);
            assert_eq!(dot4x4::<f32>(rows, xs, &[]), xs.map(|xr| f32::dot4(rows, xr)), "n={n}");
            // Prefetching a next quad (of any weight type) changes nothing.
            assert_eq!(dot4x4(rows, xs, &vec![0u16; 4 * n]), dot4x4::<f32>(rows, xs, &[]), "n={n}");
            assert_eq!(f32::dot4(u16::widen4(rows16, &mut scratch), &x), u16::dot4(rows16, &x), "n={n}");
            assert_eq!(f32::dot4(i8::widen4(rows8, &mut scratch), &x), i8::dot4(rows8, &x), "n={n}");
            for (got, want) in [
                (f32::dot4(rows, &x), exact),
                (portable(rows, &x), exact),
                (u16::dot4(rows16, &x), exact16),
                (portable(rows16, &x), exact16),
                (i8::dot4(rows8, &x), exact8),
                (portable(rows8, &x), exact8),
            ] {
                for j in 0..4 {
                    let tolerance = 1e-4 * want[j].abs().max(1.0);
                    assert!((got[j] as f64 - want[j]).abs() < tolerance, "n={n} row {j}: {} vs {}", got[j], want[j]);
                }
            }
        }
    }
}
