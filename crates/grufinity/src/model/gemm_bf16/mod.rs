//! Matrix products with bfloat16 operands and f32 accumulation, for `precision = "bf16"`
//! training on CPUs that multiply bfloat16 faster than f32: Intel AMX tiles (`tdpbf16ps`: a
//! 16x16 block of `C` from 16x32 by 32x16 operands per instruction) or AVX512-BF16
//! (`vdpbf16ps`: 32 multiply-adds per instruction).
//!
//! The layout is the usual one of fast GEMMs. For each block of steps of the inner dimension
//! ([`step_block`]), `B` is packed once into panels of `NR` columns in which each step pair
//! `(k, k+1)` of a column sits together (what both instructions multiply), and each thread
//! packs its rows of `A`: for AVX512-BF16 as step pairs of `MR` rows, row by row or pair by
//! pair, whichever `A`'s memory layout packs without transposing ([`pack`]); for AMX row by
//! row (`AMX_MR` rows, steps padded to a multiple of 32), which is how a tile reads them. The
//! micro-kernel keeps a block of `C` in registers (AMX: four 16x16 tiles) and writes it (first
//! block of steps) or adds it to `C`. While it runs, the next block of `C` and the next rows of
//! `A` are prefetched: both come from memory, and waiting for them had cost 17-33% of a
//! product (the kernels bench on a 2-core AMD EPYC).
//! Operands are rounded to bfloat16 (to nearest, ties to even) as they are packed; the
//! products are exact in f32 and the sums are f32 sums.
//!
//! Why AMX and not only AVX512-BF16: on Sapphire Rapids-class Xeons `vdpbf16ps` multiplies no
//! faster than two f32 FMA ports do, so with the packing it is slower than f32. Measured on a
//! 2-core Xeon (`cargo bench -p grufinity --bench kernels -- matmul`, 4096x512 by 512x1536):
//! f32 332 GFLOP/s, AVX512-BF16 149, AMX 968; the weight gradient (`x^T g`, 512x4096 by
//! 4096x1536, `x` transposed): f32 265, AMX 327, where packing the transposed `x` dominates.
//! On a 2-core AMD EPYC (Zen 5 class, no AMX) `vdpbf16ps` does pay: the same two products, f32
//! 486 and 417 GFLOP/s, AVX512-BF16 875 and 662.
//!
//! The portable micro-kernel computes the same thing in plain f32 arithmetic on the rounded
//! values: it is what other CPUs run, and what the tests check the fast ones against.

use std::mem::MaybeUninit;
use std::sync::OnceLock;

use rayon::prelude::*;

use super::quant::{bf16_bits, bf16_value};
use pack::Layout;

/// Rows of `C` per AVX512-BF16 (and portable) micro-kernel call.
const MR: usize = 12;
/// Rows of `C` per AMX micro-kernel call (two tiles of 16).
const AMX_MR: usize = 32;
/// Columns of `C` per micro-kernel call (two 16-lane registers, or two tiles of 16).
const NR: usize = 32;
/// Most inner-dimension steps per packed block (a multiple of the 32 steps an AMX tile takes).
const KC: usize = 512;

/// Steps per packed block for an inner dimension of `k`: the fewest blocks of at most [`KC`]
/// steps, of equal size (a multiple of 32). Every block after the first reads and rewrites all
/// of `C`, so a short last block costs as much memory traffic as a full one. Measured on the
/// AMD EPYC (kernels bench), against fixed blocks of 384: the products with 512 and 1536 steps
/// 6-9% faster; 768-step blocks made the 1536-step product 8% slower again.
fn step_block(k: usize) -> usize {
    k.div_ceil(k.div_ceil(KC)).next_multiple_of(32)
}

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
        if self.contiguous(down) && len > 0 {
            prefetch(self.ptr.wrapping_offset(i as isize * self.rs + j as isize * self.cs), len);
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

/// Asks the CPU to bring the `len` f32 values from `p` into cache (a hint: any address will do).
#[inline(always)]
fn prefetch(p: *const f32, len: usize) {
    #[cfg(target_arch = "x86_64")]
    for off in (0..len * 4).step_by(64).chain([len * 4 - 1]) {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: prefetching reads nothing the program sees, whatever the address.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.cast::<i8>().wrapping_add(off)) };
    }
}

/// Prefetches share `part` of `parts` of rows `rows` and steps `k0..k0 + kc` of `a`, whose
/// rows or steps are contiguous: a whole row, or a whole step across the rows, at a time.
fn prefetch_share(a: View, rows: std::ops::Range<usize>, k0: usize, kc: usize, part: usize, parts: usize) {
    let (units, by_row) = if a.cs == 1 { (rows.len(), true) } else { (kc, false) };
    for u in part * units / parts..(part + 1) * units / parts {
        if by_row {
            a.prefetch(rows.start + u, k0, false, kc);
        } else {
            a.prefetch(rows.start, k0 + u, true, rows.len());
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

/// What a product does to each block of rows of `C` once they are final, while they are still
/// in cache: `f(first_row, rows)`, `rows` the block's `[r, n]` values, row-major. Adding a
/// bias or applying an activation there saves a pass of its own over `C` (for the large
/// model's feed-forward, a 32 MB read from memory each).
pub type Epilogue<'a> = dyn Fn(usize, &mut [f32]) + Sync + 'a;

/// `C = A B` (`[m, k] x [k, n] -> [m, n]`, `C` row-major, a new vector written once) with both
/// operands rounded to bfloat16, on `kernel` (it must [run here](Kernel::runs_here)), then
/// `epilogue` on every block of rows; `parallel` splits the rows of `C` between the threads of
/// rayon's pool.
///
/// # Safety
/// `a` and `b` must describe `[m, k]` and `[k, n]` matrices that stay alive and unchanged
/// during the call.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm(m: usize, n: usize, k: usize, a: View, b: View, epilogue: Option<&Epilogue>, kernel: Kernel, parallel: bool) -> Vec<f32> {
    assert!(kernel.runs_here(), "the {} kernel does not run on this CPU", kernel.name());
    if m == 0 || n == 0 || k == 0 {
        let mut c = vec![0.0; m * n];
        if let (Some(f), false) = (epilogue, c.is_empty()) {
            f(0, &mut c);
        }
        return c;
    }
    let panels = n.div_ceil(NR);
    let mr_block = kernel.rows();
    // Columns of B are the lanes of its pairs.
    let b_lanes = View { ptr: b.ptr, rs: b.cs, cs: b.rs };
    let block = step_block(k);
    let panel_words = block / 2 * NR;
    let mut packed_b = vec![0u32; panels * panel_words];
    // C is not zeroed: the first block of steps writes every element, later ones add to it.
    let mut c = Vec::<f32>::with_capacity(m * n);
    for k0 in (0..k).step_by(block) {
        let kc = block.min(k - k0);
        let pairs = kc.div_ceil(2);
        let fresh = k0 == 0;
        packed_b.par_chunks_mut(panel_words).enumerate().for_each(|(p, panel)| {
            let j0 = p * NR;
            pack::pack_pairs(b_lanes, j0, NR.min(n - j0), k0, kc, NR, kc.next_multiple_of(32) / 2, Layout::by_pair(NR), panel);
        });
        let packed_b = &packed_b;
        let panel = |p: usize| &packed_b[p * panel_words..(p + 1) * panel_words];
        let rows = |(block, c_rows): (usize, &mut [MaybeUninit<f32>])| {
            let r0 = block * mr_block;
            let mr = mr_block.min(m - r0);
            let c_rows = c_rows.as_mut_ptr().cast::<f32>();
            // Adds (or, in the first block, writes) `acc`'s block of C at column `c0`.
            // SAFETY (of the writes): the block lies inside this thread's rows of C.
            let add = |c0: usize, acc: &[[f32; NR]]| unsafe {
                for (r, row) in acc.iter().enumerate().take(mr) {
                    for (j, &v) in row.iter().enumerate().take(NR.min(n - c0)) {
                        let out = c_rows.add(r * n + c0 + j);
                        out.write(if fresh { v } else { *out + v });
                    }
                }
            };
            match kernel {
                #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
                Kernel::Amx => {
                    let steps = kc.next_multiple_of(32);
                    let mut packed_a = vec![0u16; AMX_MR * steps];
                    pack::pack_rows(a, r0, mr, k0, kc, steps, &mut packed_a);
                    // SAFETY: `Amx` runs here (asserted above).
                    let tiles = unsafe { amx::Tiles::configure() };
                    for p in 0..panels {
                        let c0 = p * NR;
                        // SAFETY (both calls): `packed_a` holds AMX_MR rows of `steps` values, the
                        // panel `steps / 2` pairs of NR columns (block >= steps); a whole block of C
                        // is updated in place, an edge block through `acc`.
                        if mr == AMX_MR && c0 + NR <= n {
                            unsafe { tiles.accumulate(&packed_a, steps, pack::halves(panel(p)), c_rows.add(c0), n, fresh) };
                        } else {
                            let mut acc = [[0.0f32; NR]; AMX_MR];
                            unsafe { tiles.accumulate(&packed_a, steps, pack::halves(panel(p)), acc.as_mut_ptr().cast(), NR, true) };
                            add(c0, &acc);
                        }
                    }
                }
                _ => {
                    let mut packed_a = vec![0u32; pairs * MR];
                    let layout = if a.cs == 1 { Layout::by_lane(pairs) } else { Layout::by_pair(MR) };
                    pack::pack_pairs(a, r0, mr, k0, kc, MR, pairs, layout, &mut packed_a);
                    let next_rows = (r0 + MR).min(m)..(r0 + 2 * MR).min(m);
                    for p in 0..panels {
                        let c0 = p * NR;
                        // While this block of C multiplies, bring in what the next ones read
                        // from memory: the next panel's block of C (latency the loads of the
                        // kernel's last steps would wait for) and a share of the next rows of A.
                        for r in 0..mr {
                            prefetch(c_rows.wrapping_add(r * n + c0 + NR), NR);
                        }
                        prefetch_share(a, next_rows.clone(), k0, kc, p, panels);
                        #[cfg(target_arch = "x86_64")]
                        if kernel == Kernel::Avx512 {
                            // SAFETY: the kernel runs here (asserted above); its block of C (`mr`
                            // rows, up to NR columns from `c0`) lies inside this thread's rows.
                            unsafe { avx512::kernel(&packed_a, layout, panel(p), pairs, c_rows.add(c0), n, mr, NR.min(n - c0), fresh) };
                            continue;
                        }
                        let mut acc = [[0.0f32; NR]; MR];
                        portable(pack::halves(&packed_a), layout, pack::halves(panel(p)), pairs, &mut acc);
                        add(c0, &acc);
                    }
                }
            }
            if let (true, Some(f)) = (k0 + kc == k, epilogue) {
                // SAFETY: these `mr` rows of C are this thread's, and every block of steps has
                // now been added into them.
                f(r0, unsafe { std::slice::from_raw_parts_mut(c_rows, mr * n) });
            }
        };
        let spare = &mut c.spare_capacity_mut()[..m * n];
        if parallel {
            spare.par_chunks_mut(mr_block * n).enumerate().for_each(rows);
        } else {
            spare.chunks_mut(mr_block * n).enumerate().for_each(rows);
        }
    }
    // SAFETY: the first block of steps wrote all m * n elements.
    unsafe { c.set_len(m * n) };
    c
}

/// The micro-kernel in plain arithmetic on the bfloat16 values.
fn portable(a: &[u16], layout: Layout, b: &[u16], pairs: usize, acc: &mut [[f32; NR]; MR]) {
    for q in 0..pairs {
        let bq = &b[q * NR * 2..(q + 1) * NR * 2];
        for (r, row) in acc.iter_mut().enumerate() {
            let word = q * layout.pair + r * layout.lane;
            let (a0, a1) = (bf16_value(a[word * 2]), bf16_value(a[word * 2 + 1]));
            for (j, v) in row.iter_mut().enumerate() {
                *v += a0 * bf16_value(bq[2 * j]) + a1 * bf16_value(bq[2 * j + 1]);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{Layout, MR, NR};

    /// `C += A_panel B_panel` (`C = ` where `fresh`) over `pairs` step pairs (see the module
    /// docs for the layout), for the `rows` x `cols` block of C at `c` (row stride `ldc`).
    ///
    /// SAFETY: needs AVX512F and AVX512-BF16; `a` holds `pairs MR` and `b` `pairs NR` words;
    /// `rows <= MR`, `cols <= NR`, and the block of C is valid for writes (and initialised
    /// unless `fresh`).
    #[target_feature(enable = "avx512f,avx512bf16")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn kernel(a: &[u32], layout: Layout, b: &[u32], pairs: usize, c: *mut f32, ldc: usize, rows: usize, cols: usize, fresh: bool) {
        assert!(a.len() >= pairs * MR && b.len() >= pairs * NR && rows <= MR && cols <= NR);
        assert!(layout == Layout::by_pair(MR) || layout == Layout::by_lane(pairs));
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        let (ap, bp) = (a.as_ptr() as *const i32, b.as_ptr() as *const __m512i);
        for q in 0..pairs {
            // SAFETY: within the lengths asserted above.
            let (b0, b1) = unsafe { (_mm512_loadu_si512(bp.add(2 * q)), _mm512_loadu_si512(bp.add(2 * q + 1))) };
            let (b0, b1): (__m512bh, __m512bh) = (std::mem::transmute(b0), std::mem::transmute(b1));
            for (r, cr) in acc.iter_mut().enumerate() {
                // One (k, k+1) pair of row r, as 32 bits, in every lane.
                let a_pair: __m512bh = std::mem::transmute(_mm512_set1_epi32(unsafe { *ap.add(q * layout.pair + r * layout.lane) }));
                cr[0] = _mm512_dpbf16_ps(cr[0], a_pair, b0);
                cr[1] = _mm512_dpbf16_ps(cr[1], a_pair, b1);
            }
        }
        let lanes = |n: usize| if n >= 16 { u16::MAX } else { (1u16 << n) - 1 };
        let masks = [lanes(cols), lanes(cols.saturating_sub(16))];
        for (r, cr) in acc.iter().enumerate().take(rows) {
            for (half, (&sum, &mask)) in cr.iter().zip(&masks).enumerate() {
                // SAFETY: the masked lanes lie inside the block of C.
                unsafe {
                    let out = c.add(r * ldc + 16 * half);
                    let v = if fresh { sum } else { _mm512_add_ps(_mm512_maskz_loadu_ps(mask, out), sum) };
                    _mm512_mask_storeu_ps(out, mask, v);
                }
            }
        }
    }
}

/// Rounding and packing the operands (`pack.rs`).
mod pack;

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
                // An epilogue that adds a bias and each row's index (a block given the wrong
                // first row, or a row given it twice, shows).
                let bias = matrix(1, n, 3);
                let add = |r0: usize, rows: &mut [f32]| {
                    for (r, row) in rows.chunks_exact_mut(n).enumerate() {
                        row.iter_mut().zip(&bias).for_each(|(c, &b)| *c += b + (r0 + r) as f32);
                    }
                };
                for kernel in Kernel::all_here() {
                    for (parallel, with_bias) in [(false, false), (true, false), (false, true), (true, true)] {
                        let epilogue: Option<&Epilogue> = if with_bias { Some(&add) } else { None };
                        // SAFETY: the views describe `a` and `bt`, alive for the call.
                        let c = unsafe { gemm(m, n, k, av, bv, epilogue, kernel, parallel) };
                        for (i, (&got, &want)) in c.iter().zip(&exact).enumerate() {
                            let want = if with_bias { want + bias[i % n] as f64 + (i / n) as f64 } else { want };
                            let tolerance = 1e-5 * (k as f64).sqrt() * want.abs().max(1.0);
                            assert!(
                                (got as f64 - want).abs() < tolerance,
                                "{m}x{n}x{k} a_transposed={a_transposed} {kernel:?} parallel={parallel} bias={with_bias} [{i}]: {got} vs {want}"
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
