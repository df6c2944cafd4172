//! AMX-BF16 tiles. Linux hands a process the tile state only when asked (`arch_prctl`), and each
//! thread loads a tile configuration before use ([`Tiles::configure`]) and releases the state
//! after (so that context switches stop saving 8 KiB of tiles).

use std::arch::asm;
use std::arch::x86_64::{__cpuid_count, __get_cpuid_max};
use std::marker::PhantomData;

use super::{AMX_MR, NR};

/// Whether the CPU has AMX-TILE and AMX-BF16 and Linux granted this process the tile state.
pub fn enable() -> bool {
    if __get_cpuid_max(0).0 < 7 {
        return false;
    }
    let leaf7 = __cpuid_count(7, 0);
    let (bf16, tile) = ((leaf7.edx >> 22) & 1 == 1, (leaf7.edx >> 24) & 1 == 1);
    if !(bf16 && tile) {
        return false;
    }
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a plain system call; it only widens the register state the process may use.
    let ret = unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) };
    ret == 0
}

/// `ldtilecfg`'s 64-byte operand.
#[repr(C, align(64))]
struct Config {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    bytes_per_row: [u16; 16],
    rows: [u8; 16],
}

/// Tiles 0-7: 16 rows of 64 bytes (16 f32 of `C`, or 32 bfloat16 of `A` or `B`).
static CONFIG: Config = Config {
    palette: 1,
    start_row: 0,
    reserved: [0; 14],
    bytes_per_row: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
    rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
};

/// This thread's tiles, configured; released on drop. Not `Send`: the state is per thread.
pub struct Tiles(PhantomData<*const ()>);

impl Tiles {
    /// SAFETY: AMX must have been [enabled](enable).
    pub unsafe fn configure() -> Tiles {
        // SAFETY: CONFIG is a valid palette-1 configuration, 64-byte aligned.
        unsafe { asm!("ldtilecfg [{}]", in(reg) &CONFIG, options(nostack, readonly)) };
        Tiles(PhantomData)
    }

    /// `C += A B` (`C = A B` when `fresh`: C is not read) for a block of `AMX_MR` rows and
    /// `NR` columns: `a` holds `AMX_MR` rows of
    /// `steps` bfloat16 values (`steps` a positive multiple of 32), `b` a packed panel of
    /// `steps / 2` step pairs of `NR` columns, and `c` points to the block's first value in
    /// rows of `row_len` f32. Tiles 0-3 hold the four 16x16 quarters of the block, 4-5 the
    /// two 16-row halves of `A`'s next 32 steps, 6-7 the two 16-column halves of `B`'s.
    ///
    /// SAFETY: as for [`Tiles::configure`], and `c` must hold `AMX_MR` rows of `row_len >=
    /// NR` values.
    pub unsafe fn accumulate(&self, a: &[u16], steps: usize, b: &[u16], c: *mut f32, row_len: usize, fresh: bool) {
        assert!(steps > 0 && steps % 32 == 0 && a.len() >= AMX_MR * steps && b.len() >= steps * NR && row_len >= NR);
        const PAIR: usize = NR * 4; // bytes per step pair of the panel
        // SAFETY: every tile row read or written lies inside `a`, `b` (asserted above) or the
        // block of `c` (the caller's promise); tiles are configured on this thread.
        unsafe {
            asm!(
                "test {fresh}, {fresh}",
                "jz 3f",
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                "jmp 2f",
                "3:",
                "tileloadd tmm0, [{c0} + {sc}*1]",
                "tileloadd tmm1, [{c0} + {sc}*1 + 64]",
                "tileloadd tmm2, [{c1} + {sc}*1]",
                "tileloadd tmm3, [{c1} + {sc}*1 + 64]",
                "2:",
                "tileloadd tmm4, [{a0} + {sa}*1]",
                "tileloadd tmm5, [{a1} + {sa}*1]",
                "tileloadd tmm6, [{b} + {sb}*1]",
                "tileloadd tmm7, [{b} + {sb}*1 + 64]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                "add {a0}, 64",
                "add {a1}, 64",
                "add {b}, {bstep}",
                "dec {n}",
                "jnz 2b",
                "tilestored [{c0} + {sc}*1], tmm0",
                "tilestored [{c0} + {sc}*1 + 64], tmm1",
                "tilestored [{c1} + {sc}*1], tmm2",
                "tilestored [{c1} + {sc}*1 + 64], tmm3",
                a0 = inout(reg) a.as_ptr() => _,
                a1 = inout(reg) a.as_ptr().add(16 * steps) => _,
                b = inout(reg) b.as_ptr() => _,
                n = inout(reg) steps / 32 => _,
                sa = in(reg) steps * 2,
                sb = in(reg) PAIR,
                bstep = in(reg) 16 * PAIR,
                c0 = in(reg) c,
                c1 = in(reg) c.add(16 * row_len),
                sc = in(reg) row_len * 4,
                fresh = in(reg) fresh as usize,
                options(nostack),
            );
        }
    }
}

impl Drop for Tiles {
    fn drop(&mut self) {
        // SAFETY: releasing configured tiles; nothing reads them after.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }
}
