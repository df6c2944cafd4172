//! Matrix products with bfloat16 operands and f32 accumulation, for `precision = "bf16"`
//! training on CPUs that multiply bfloat16 faster than f32: Intel AMX tiles (`tdpbf16ps`: a
//! 16x16 block of `C` from 16x32 by 32x16 operands per instruction) or AVX512-BF16
//! (`vdpbf16ps`: 32 multiply-adds per instruction).
//!
//! The layout is the usual one of fast GEMMs. For each block of `KC` steps of the inner
//! dimension, `B` is packed once into panels of `NR` columns in which each step pair `(k, k+1)`
//! of a column sits together (what both instructions multiply), and each thread packs its rows
//! of `A`: for AVX512-BF16 into panels of `MR` rows, pairs together; for AMX row by row
//! (`AMX_MR` rows, steps padded to a multiple of 32), which is how a tile reads them. The
//! micro-kernel keeps a block of `C` in registers (AMX: four 16x16 tiles) and adds the block's
//! steps. Operands are rounded to bfloat16 (to nearest, ties to even) as they are packed; the
//! products are exact in f32 and the sums are f32 sums.
//!
//! Why AMX and not only AVX512-BF16: on Sapphire Rapids-class Xeons `vdpbf16ps` multiplies no
//! faster than two f32 FMA ports do, so with the packing it is slower than f32. Measured on a
//! 2-core Xeon (`cargo bench -p grufinity --bench kernels -- matmul`, 4096x512 by 512x1536):
//! f32 332 GFLOP/s, AVX512-BF16 149, AMX 968; the weight gradient (`x^T g`, 512x4096 by
//! 4096x1536, `x` transposed): f32 265, AMX 327, where packing the transposed `x` dominates.
//!
//! The portable micro-kernel computes the same thing in plain f32 arithmetic on the rounded
//! values: it is what other CPUs run, and what the tests check the fast ones against.

use std::sync::OnceLock;

use rayon::prelude::*;

use super::quant::{bf16_bits, bf16_value};

/// Rows of `C` per AVX512-BF16 (and portable) micro-kernel call.
const MR: usize = 12;
/// Rows of `C` per AMX micro-kernel call (two tiles of 16).
const AMX_MR: usize = 32;
/// Columns of `C` per micro-kernel call (two 16-lane registers, or two tiles of 16).
const NR: usize = 32;
/// Inner-dimension steps per packed block (a multiple of the 32 steps an AMX tile takes).
const KC: usize = 384;

/// How many runs ahead the packing loops prefetch (see [`View::prefetch`]).
const PREFETCH_AHEAD: usize = 8;

/// The micro-kernel a product runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// Plain f32 arithmetic on the bfloat16 values (any CPU; slow).
    Portable,
    /// AVX512-BF16 `vdpbf16ps`.
    Avx512,
    /// Intel AMX-BF16 tiles.
    Amx,
}

impl Kernel {
    /// The fastest kernel this CPU (and OS) runs, if any is faster than f32 products. The first
    /// call asks Linux for the AMX tile state (`arch_prctl`), which a process needs once.
    pub fn best() -> Option<Kernel> {
        static BEST: OnceLock<Option<Kernel>> = OnceLock::new();
        *BEST.get_or_init(|| {
            if amx::enable() {
                Some(Kernel::Amx)
            } else if avx512_available() {
                Some(Kernel::Avx512)
            } else {
                None
            }
        })
    }

    /// The instructions, as a user reads them.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Portable => "portable",
            Kernel::Avx512 => "AVX512-BF16",
            Kernel::Amx => "AMX-BF16",
        }
    }

    /// Whether this CPU runs it (AMX: only after [`Kernel::best`] found and enabled it).
    pub fn runs_here(self) -> bool {
        match self {
            Kernel::Portable => true,
            Kernel::Avx512 => avx512_available(),
            Kernel::Amx => Kernel::best() == Some(Kernel::Amx),
        }
    }

    /// Every kernel that runs here, the portable one first (for tests and benchmarks).
    pub fn all_here() -> Vec<Kernel> {
        [Kernel::Portable, Kernel::Avx512, Kernel::Amx].into_iter().filter(|k| k.runs_here()).collect()
    }

    fn rows(self) -> usize {
        if self == Kernel::Amx {
            AMX_MR
        } else {
            MR
        }
    }
}

/// Whether bfloat16 products run faster than f32 ones on this CPU (see [`Kernel::best`]).
pub fn available() -> bool {
    Kernel::best().is_some()
}

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

    /// Whether consecutive values down a column (`down`) or along a row are adjacent in memory.
    #[inline(always)]
    fn contiguous(&self, down: bool) -> bool {
        (if down { self.rs } else { self.cs }) == 1
    }

    /// Asks the CPU to bring `len` values from `(i, j)` down its column (`down`) or along its row
    /// into cache, where that direction is contiguous. The packing loops read short runs (one
    /// panel's 32 values) a whole row apart, a stride the hardware prefetchers do not follow.
    #[inline(always)]
    fn prefetch(&self, i: usize, j: usize, down: bool, len: usize) {
        #[cfg(target_arch = "x86_64")]
        if self.contiguous(down) && len > 0 {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            // A prefetch is a hint that never faults, so the address may lie outside the matrix.
            let p = self.ptr.wrapping_offset(i as isize * self.rs + j as isize * self.cs).cast::<i8>();
            for off in (0..len * 4).step_by(64).chain([len * 4 - 1]) {
                // SAFETY: prefetching reads nothing the program sees, whatever the address.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(off)) };
            }
        }
    }

    /// Rounds `dst.len()` values to bfloat16 bits, from `(i, j)` down its column (`down`) or
    /// along its row: vectorised where that direction is contiguous in memory.
    fn round_into(&self, i: usize, j: usize, down: bool, dst: &mut [u16]) {
        if self.contiguous(down) {
            // SAFETY: callers stay inside the matrix, and this run of it is contiguous.
            let src = unsafe { std::slice::from_raw_parts(self.ptr.offset(i as isize * self.rs + j as isize * self.cs), dst.len()) };
            round_slice(src, dst);
        } else {
            for (t, d) in dst.iter_mut().enumerate() {
                *d = bf16_bits(if down { self.at(i + t, j) } else { self.at(i, j + t) });
            }
        }
    }
}

/// `dst[i] = bf16_bits(src[i])`, with AVX-512 where the CPU has it (the packing of operands
/// costs a tenth of an AMX product when done one value at a time).
fn round_slice(src: &[f32], dst: &mut [u16]) {
    #[inline(always)]
    fn plain(src: &[f32], dst: &mut [u16]) {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = bf16_bits(s);
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw")]
    fn avx512(src: &[f32], dst: &mut [u16]) {
        plain(src, dst)
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bw") {
        // SAFETY: the CPU has the features `avx512` is compiled for.
        return unsafe { avx512(src, dst) };
    }
    plain(src, dst)
}

fn avx512_available() -> bool {
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
/// rounded to bfloat16, on `kernel` (it must [run here](Kernel::runs_here)); `parallel` splits
/// the rows of `C` between the threads of rayon's pool.
///
/// # Safety
/// `a` and `b` must describe `[m, k]` and `[k, n]` matrices that stay alive and unchanged
/// during the call.
pub unsafe fn gemm(m: usize, n: usize, k: usize, a: View, b: View, c: &mut [f32], kernel: Kernel, parallel: bool) {
    assert_eq!(c.len(), m * n, "C must be m x n");
    assert!(kernel.runs_here(), "the {} kernel does not run on this CPU", kernel.name());
    if m == 0 || n == 0 || k == 0 {
        c.fill(0.0);
        return;
    }
    let panels = n.div_ceil(NR);
    let mr_block = kernel.rows();
    let mut packed_b = vec![0u16; panels * KC * NR];
    for k0 in (0..k).step_by(KC) {
        let kc = KC.min(k - k0);
        let pairs = kc.div_ceil(2);
        // The first block writes C (no zeroing pass over it first); later ones add to it.
        let fresh = k0 == 0;
        pack_b(b, k0, kc, n, &mut packed_b);
        let packed_b = &packed_b;
        let rows = |(block, c_rows): (usize, &mut [f32])| {
            let r0 = block * mr_block;
            let mr = mr_block.min(m - r0);
            let add = |c_rows: &mut [f32], c0: usize, acc: &[[f32; NR]]| {
                let nr = NR.min(n - c0);
                for (r, row) in acc.iter().enumerate().take(mr) {
                    let out = &mut c_rows[r * n + c0..r * n + c0 + nr];
                    if fresh {
                        out.copy_from_slice(&row[..nr]);
                    } else {
                        out.iter_mut().zip(row).for_each(|(o, v)| *o += v);
                    }
                }
            };
            let panel = |p: usize| &packed_b[p * KC * NR..(p + 1) * KC * NR];
            match kernel {
                #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
                Kernel::Amx => {
                    let steps = kc.next_multiple_of(32);
                    let mut packed_a = vec![0u16; AMX_MR * steps];
                    pack_a_rows(a, r0, mr, k0, kc, steps, &mut packed_a);
                    // SAFETY: `Amx` runs here (asserted above).
                    let tiles = unsafe { amx::Tiles::configure() };
                    for p in 0..panels {
                        let c0 = p * NR;
                        // SAFETY (both calls): `packed_a` holds AMX_MR rows of `steps` values, the
                        // panel `steps / 2` pairs of NR columns (KC >= steps); a whole block of C
                        // is updated in place, an edge block through `acc`.
                        if mr == AMX_MR && c0 + NR <= n {
                            unsafe { tiles.accumulate(&packed_a, steps, panel(p), c_rows[c0..].as_mut_ptr(), n, fresh) };
                        } else {
                            let mut acc = [[0.0f32; NR]; AMX_MR];
                            unsafe { tiles.accumulate(&packed_a, steps, panel(p), acc.as_mut_ptr().cast(), NR, true) };
                            add(c_rows, c0, &acc);
                        }
                    }
                }
                _ => {
                    let mut packed_a = vec![0u16; pairs * 2 * MR];
                    pack_a(a, r0, mr, k0, kc, &mut packed_a);
                    for p in 0..panels {
                        let mut acc = [[0.0f32; NR]; MR];
                        #[cfg(target_arch = "x86_64")]
                        if kernel == Kernel::Avx512 {
                            // SAFETY: the kernel runs here (asserted above).
                            unsafe { avx512::kernel(&packed_a, panel(p), pairs, &mut acc) };
                        } else {
                            portable(&packed_a, panel(p), pairs, &mut acc);
                        }
                        #[cfg(not(target_arch = "x86_64"))]
                        portable(&packed_a, panel(p), pairs, &mut acc);
                        add(c_rows, p * NR, &acc);
                    }
                }
            }
        };
        if parallel {
            c.par_chunks_mut(mr_block * n).enumerate().for_each(rows);
        } else {
            c.chunks_mut(mr_block * n).enumerate().for_each(rows);
        }
    }
}

/// Packs steps `k0..k0 + kc` of `B` (`[k, n]`): panel `p` holds columns `p NR..`, and within it
/// step pair `q` of column `j` is at `(q NR + j) 2`. Missing columns and steps (up to the next
/// multiple of 32, which an AMX tile reads) are zero.
fn pack_b(b: View, k0: usize, kc: usize, n: usize, out: &mut [u16]) {
    let padded = kc.next_multiple_of(32);
    out.par_chunks_mut(KC * NR).enumerate().for_each(|(p, panel)| {
        let (j0, nr) = (p * NR, NR.min(n - p * NR));
        panel[..padded * NR].fill(0);
        let mut line = [0u16; KC];
        if b.cs == 1 {
            for kk in 0..kc {
                b.prefetch(k0 + kk + PREFETCH_AHEAD, j0, false, nr);
                b.round_into(k0 + kk, j0, false, &mut line[..nr]);
                for (j, &v) in line[..nr].iter().enumerate() {
                    panel[((kk / 2) * NR + j) * 2 + kk % 2] = v;
                }
            }
        } else {
            for j in 0..nr {
                b.round_into(k0, j0 + j, true, &mut line[..kc]);
                for (kk, &v) in line[..kc].iter().enumerate() {
                    panel[((kk / 2) * NR + j) * 2 + kk % 2] = v;
                }
            }
        }
    });
}

/// Packs rows `r0..r0 + mr` and steps `k0..k0 + kc` of `A`: step pair `q` of row `r` at
/// `(q MR + r) 2`. Missing rows and the odd step are zero.
fn pack_a(a: View, r0: usize, mr: usize, k0: usize, kc: usize, out: &mut [u16]) {
    out.fill(0);
    let mut line = [0u16; KC];
    for r in 0..mr {
        a.round_into(r0 + r, k0, false, &mut line[..kc]);
        for (kk, &v) in line[..kc].iter().enumerate() {
            out[((kk / 2) * MR + r) * 2 + kk % 2] = v;
        }
    }
}

/// Packs rows `r0..r0 + mr` and steps `k0..k0 + kc` of `A` row by row, `steps` values a row:
/// step `kk` of row `r` at `r steps + kk`. Missing rows and steps are zero. Reads along
/// whichever dimension of `A` is contiguous (the backward pass passes transposed views).
fn pack_a_rows(a: View, r0: usize, mr: usize, k0: usize, kc: usize, steps: usize, out: &mut [u16]) {
    out.fill(0);
    if a.cs == 1 {
        for r in 0..mr {
            a.round_into(r0 + r, k0, false, &mut out[r * steps..r * steps + kc]);
        }
    } else {
        let mut column = [0u16; AMX_MR];
        for kk in 0..kc {
            a.prefetch(r0, k0 + kk + PREFETCH_AHEAD, true, mr);
            a.round_into(r0, k0 + kk, true, &mut column[..mr]);
            for (r, &v) in column[..mr].iter().enumerate() {
                out[r * steps + kk] = v;
            }
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

/// AMX-BF16 tiles (`amx.rs`).
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod amx;

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
mod amx {
    pub fn enable() -> bool {
        false
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

    /// Every kernel that runs here against an f64 product of the bfloat16-rounded operands, with
    /// odd sizes (edges of every block, of both row blocks and of AMX's 32 steps) and transposed
    /// operands, as the backward pass has.
    #[test]
    fn products_equal_f64_on_the_rounded_operands() {
        let r = |x: f32| bf16_value(bf16_bits(x)) as f64;
        for (m, n, k) in [(1, 1, 1), (13, 33, 7), (25, 70, KC + 5), (12, 32, 2 * KC), (33, 17, 40), (70, 64, KC + 64)] {
            for a_transposed in [false, true] {
                let a = matrix(m, k, 1); // [m, k] row-major, or [k, m] when transposed
                let bt = matrix(n, k, 2); // B given transposed: [n, k] row-major
                let (av, a_at) = if a_transposed {
                    (View { ptr: a.as_ptr(), rs: 1, cs: m as isize }, Box::new(|i: usize, kk: usize| a[kk * m + i]) as Box<dyn Fn(usize, usize) -> f32>)
                } else {
                    (View { ptr: a.as_ptr(), rs: k as isize, cs: 1 }, Box::new(|i: usize, kk: usize| a[i * k + kk]) as Box<dyn Fn(usize, usize) -> f32>)
                };
                let bv = View { ptr: bt.as_ptr(), rs: 1, cs: k as isize };
                let exact: Vec<f64> =
                    (0..m * n).map(|ij| (0..k).map(|kk| r(a_at(ij / n, kk)) * r(bt[(ij % n) * k + kk])).sum()).collect();
                for kernel in Kernel::all_here() {
                    for parallel in [false, true] {
                        let mut c = vec![f32::NAN; m * n];
                        // SAFETY: the views describe `a` and `bt`, alive for the call.
                        unsafe { gemm(m, n, k, av, bv, &mut c, kernel, parallel) };
                        for (i, (&got, &want)) in c.iter().zip(&exact).enumerate() {
                            let tolerance = 1e-5 * (k as f64).sqrt() * want.abs().max(1.0);
                            assert!(
                                (got as f64 - want).abs() < tolerance,
                                "{m}x{n}x{k} a_transposed={a_transposed} {kernel:?} parallel={parallel} [{i}]: {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// Where the CPU has AVX512-BF16 or AMX, the tests above ran them (not only the portable
    /// kernel): fail loudly if detection silently found nothing on a CPU that lists them.
    #[test]
    fn detection_agrees_with_the_cpu_flags() {
        let flags = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let has = |flag: &str| flags.split_whitespace().any(|f| f == flag);
        if has("avx512_bf16") {
            assert!(Kernel::Avx512.runs_here());
        }
        if has("amx_bf16") && has("amx_tile") && cfg!(target_os = "linux") {
            assert_eq!(Kernel::best(), Some(Kernel::Amx));
        }
    }
}
