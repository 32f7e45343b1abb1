//! bf16 matrix products for `train.precision = "bf16"`: every product of the
//! engine's training step takes its inputs rounded to bf16 and accumulates in
//! f32; everything else (the tapes, the gate math, the loss, the gradients
//! leaving a product) stays f32, as do the master weights, clipping and the
//! optimiser.
//!
//! bf16 is f32's top 16 bits: its sign, its 8-bit exponent (so the same range)
//! and 7 stored bits of mantissa (8 with the implicit one, a unit roundoff of
//! u = 2⁻⁹ ≈ 0.2%). Rounding is to nearest, ties to even, with subnormal inputs
//! read as zero ([`round`], what AVX512_BF16's `vcvtne2ps2bf16` does). The
//! product of two bf16 numbers is exact in f32, so a product `Σ_k a_k b_k` of
//! rounded inputs differs from the exact one of the same rounded inputs only
//! by f32's rounding of the sums.
//!
//! Kernels ([`Bf16Kernel`]), the widest the CPU runs:
//! * AMX (`tdpbf16ps`, Intel since Sapphire Rapids): one instruction multiplies
//!   a 16×32 tile of A by a 32×16 tile of B into 16×16 f32, about 16 times the
//!   multiply-adds per cycle of AVX-512's f32 FMAs.
//! * AVX512_BF16 (`vdpbf16ps`): 16 lanes of two bf16 products each, added into
//!   f32 accumulators. Per instruction twice an f32 FMA's work; per cycle that
//!   is 2× on a CPU that issues it as often as FMAs (AMD's Zen 4), and about
//!   the same as f32 on Intel's (one per cycle against two FMAs; measured here).
//! * Elsewhere, the same arithmetic in f32 FMAs on the rounded values, in
//!   `vdpbf16ps`'s order (the odd element of each pair, then the even one);
//!   slower than f32, and the trainer says so (`grulm train` and `grulm info`).
//!
//! The element type [`MixedF32`] is an f32 whose products are bf16: the cells'
//! tapes run on it unchanged (`forward_rows::<MixedF32>`), and `Packed` packs B
//! as bf16 pairs for it.
use super::gemm::NR;
use super::Real;
pub(crate) use crate::platform::cpu::{bf16_kernel, Bf16Kernel};
use std::cell::RefCell;
use std::ops::{Add, Div, Mul, Neg, Sub};
use tch::Kind;

/// `x` rounded to bf16 (its 16 bits): to nearest, ties to even; subnormals
/// read as (signed) zero, NaN kept a (quiet) NaN.
#[inline(always)]
pub(crate) fn round(x: f32) -> u16 {
    // Branch-free (selects), so that the loops converting rows vectorise.
    let bits = x.to_bits();
    let nearest = bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16;
    let zero = (bits >> 16) & 0x8000; // zero or subnormal: signed zero
    let quiet = (bits >> 16) | 0x0040; // NaN: quiet
    let r = if bits & 0x7f80_0000 == 0 { zero } else { nearest };
    (if bits & 0x7fff_ffff > 0x7f80_0000 { quiet } else { r }) as u16
}

/// The f32 value of a bf16.
#[cfg(test)]
#[inline(always)]
pub(crate) fn value(x: u16) -> f32 {
    f32::from_bits((x as u32) << 16)
}

/// Pair rows of a packed operand of depth `k`: ⌈k/2⌉ rounded up to AMX's 16
/// (one tile's depth, 32 bf16), the rows past k zero.
pub(crate) fn pair_rows(k: usize) -> usize {
    k.div_ceil(2).div_ceil(16) * 16
}

/// An f32 whose matrix products take bf16 inputs (see the module doc): the
/// engine's element type for `train.precision = "bf16"`. In memory an f32.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
#[repr(transparent)]
pub(crate) struct MixedF32(pub f32);

macro_rules! binary {
    ($($tr:ident $f:ident $op:tt),*) => {$(
        impl $tr for MixedF32 {
            type Output = MixedF32;
            #[inline(always)]
            fn $f(self, o: MixedF32) -> MixedF32 {
                MixedF32(self.0 $op o.0)
            }
        }
    )*};
}
binary!(Add add +, Sub sub -, Mul mul *, Div div /);

impl Neg for MixedF32 {
    type Output = MixedF32;
    #[inline(always)]
    fn neg(self) -> MixedF32 {
        MixedF32(-self.0)
    }
}

impl Real for MixedF32 {
    const KIND: Kind = Kind::Float;
    const ZERO: MixedF32 = MixedF32(0.0);
    const ONE: MixedF32 = MixedF32(1.0);
    const MR: usize = f32::MR;
    const MR_WIDE: usize = f32::MR_WIDE;
    const BF16: bool = true;
    #[inline(always)]
    fn fma(self, b: MixedF32, c: MixedF32) -> MixedF32 {
        MixedF32(self.0.fma(b.0, c.0))
    }
    #[inline(always)]
    fn sigmoid(self) -> MixedF32 {
        MixedF32(Real::sigmoid(self.0))
    }
    #[inline(always)]
    fn tanh(self) -> MixedF32 {
        MixedF32(Real::tanh(self.0))
    }
    #[inline(always)]
    fn exp(self) -> MixedF32 {
        MixedF32(Real::exp(self.0))
    }
    fn ln(self) -> MixedF32 {
        MixedF32(self.0.ln())
    }
    fn from_usize(n: usize) -> MixedF32 {
        MixedF32(n as f32)
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self.0
    }
}

/// `a · b` for the products left to libtorch: both converted to bf16 (libtorch's
/// rounding, to nearest even), multiplied by oneDNN (f32 accumulation, AMX where
/// the CPU has it) into a bf16 result, widened back to f32.
pub(crate) fn mm(a: &tch::Tensor, b: &tch::Tensor) -> tch::Tensor {
    a.to_kind(Kind::BFloat16).mm(&b.to_kind(Kind::BFloat16)).to_kind(Kind::Float)
}

thread_local! {
    /// Each thread's A rounded to bf16 pairs: grown to the largest product's
    /// rows, then reused, so the time loop does not allocate.
    static A_PAIRS: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

/// Rows of the register block: AVX-512 has 32 registers (12 accumulators, as
/// the f32 kernel's wide block); the f32 fallback keeps f32's 6.
const MR_DOT: usize = 12;
const MR_EMULATED: usize = 6;

/// `C += A · B` for `m` rows, A's element `(i, kk)` at `a[i·ars + kk·aks]`
/// (f32, rounded here), B `[k, n]` packed as bf16 pairs (`pairs`, see
/// `gemm::Packed`), C f32 at row stride `ldc`.
///
/// # Safety
/// As `gemm::gemm_acc`: A, B and C address those elements, and no other
/// thread writes C's rows meanwhile.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm(m: usize, a: *const f32, ars: usize, aks: usize, k: usize, n: usize, pairs: &[u32], c: *mut f32, ldc: usize) {
    gemm_on(bf16_kernel(), m, a, ars, aks, k, n, pairs, c, ldc)
}

/// [`gemm`] on `kernel` (one [`Bf16Kernel::available`] here).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_on(
    kernel: Bf16Kernel,
    m: usize,
    a: *const f32,
    ars: usize,
    aks: usize,
    k: usize,
    n: usize,
    pairs: &[u32],
    c: *mut f32,
    ldc: usize,
) {
    let k2 = pair_rows(k);
    // The buffer is taken out of the thread-local rather than used inside a
    // closure of `with`: a closure is a function of its own, which would be
    // compiled without the caller's target features (AVX-512, AVX2), and the
    // loops below would not vectorise.
    // SAFETY: this thread's buffer, used by nothing else while this product
    // runs (the products do not nest).
    let buf = &mut *A_PAIRS.with(RefCell::as_ptr);
    if buf.len() < m * k2 {
        buf.resize(m * k2, 0);
    }
    to_pairs(m, a, ars, aks, k, k2, &mut buf[..m * k2]);
    let ops = Operands { k2, a: buf.as_ptr(), b: pairs.as_ptr(), c, ldc, n };
    let panels = n.div_ceil(NR);
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Bf16Kernel::Amx => {
            // Every row on AMX for the full panels of B; a last partial
            // panel (fewer than 16 columns) on vdpbf16ps.
            let full = n / NR;
            amx::product(&ops, m, full);
            ops.blocks(Bf16Kernel::Dot, 0..m, full..panels);
        }
        kernel => ops.blocks(kernel, 0..m, 0..panels),
    }
}

/// A's `m` rows (element `(i, kk)` at `a[i·ars + kk·aks]`) rounded into
/// `out`, `k2` pairs a row (zero past k). Two loops the compiler vectorises:
/// rows read in order (`aks = 1`), or, for a transposed A (`ars = 1`), each
/// column kk read in order into its half of every row's pair kk/2.
#[inline(always)]
unsafe fn to_pairs(m: usize, a: *const f32, ars: usize, aks: usize, k: usize, k2: usize, out: &mut [u32]) {
    if aks == 1 {
        for i in 0..m {
            let (row, o) = (std::slice::from_raw_parts(a.add(i * ars), k), &mut out[i * k2..(i + 1) * k2]);
            let whole = k / 2;
            for (p, pair) in o[..whole].iter_mut().enumerate() {
                *pair = ((round(row[2 * p + 1]) as u32) << 16) | round(row[2 * p]) as u32;
            }
            for (p, pair) in o.iter_mut().enumerate().skip(whole) {
                *pair = if 2 * p < k { round(row[2 * p]) as u32 } else { 0 };
            }
        }
        return;
    }
    debug_assert_eq!(ars, 1, "a row or a column of A is contiguous");
    // Pairs past k stay zero; the others get both halves below.
    for i in 0..m {
        out[i * k2 + k / 2..(i + 1) * k2].fill(0);
    }
    let halves = out.as_mut_ptr() as *mut u16;
    for kk in 0..k {
        let col = std::slice::from_raw_parts(a.add(kk * aks), m);
        let at = halves.add(2 * (kk / 2) + kk % 2); // row 0's half of pair kk/2
        for (i, x) in col.iter().enumerate() {
            *at.add(2 * i * k2) = round(*x);
        }
    }
}

/// One product's operands in the packed forms: A as pair rows of `k2` u32
/// each, B as panels of `k2` pair rows, C f32 with `n` columns at stride `ldc`.
struct Operands {
    k2: usize,
    a: *const u32,
    b: *const u32,
    c: *mut f32,
    ldc: usize,
    n: usize,
}

impl Operands {
    /// Rows `rows` × panels `panels` of C by register blocks of `kernel`
    /// (`Dot` or `Emulated`).
    #[inline(always)]
    unsafe fn blocks(&self, kernel: Bf16Kernel, rows: std::ops::Range<usize>, panels: std::ops::Range<usize>) {
        let mr = if kernel == Bf16Kernel::Emulated { MR_EMULATED } else { MR_DOT };
        let k2 = self.k2;
        for panel in panels {
            let bp = self.b.add(panel * k2 * NR);
            let cols = (self.n - panel * NR).min(NR);
            let mut i = rows.start;
            while i < rows.end {
                let (aa, cc) = (self.a.add(i * k2), self.c.add(i * self.ldc + panel * NR));
                let r = (rows.end - i).min(mr);
                match kernel {
                    #[cfg(target_arch = "x86_64")]
                    Bf16Kernel::Dot | Bf16Kernel::Amx => dot_block(r, k2, aa, bp, cc, self.ldc, cols),
                    _ => emulated_block(r, k2, aa, bp, cc, self.ldc, cols),
                }
                i += r;
            }
        }
    }
}

/// `kernel::<MR>(args)` for a block of `rows` rows (1 to the largest listed).
macro_rules! block_rows {
    ($rows:expr, $kernel:ident $args:tt, $($mr:literal)*) => {
        match $rows {
            $($mr => $kernel::<$mr> $args,)*
            _ => $kernel::<1> $args,
        }
    };
}

#[inline(always)]
unsafe fn emulated_block(rows: usize, k2: usize, a: *const u32, b: *const u32, c: *mut f32, ldc: usize, cols: usize) {
    block_rows!(rows, emulated(k2, a, k2, b, c, ldc, cols), 6 5 4 3 2)
}

/// One `MR × NR` block in f32 on the bf16 values: per pair, the odd element's
/// product, then the even one's, each one FMA (exact products, as `vdpbf16ps`).
#[inline(always)]
unsafe fn emulated<const MR: usize>(k2: usize, a: *const u32, lda: usize, b: *const u32, c: *mut f32, ldc: usize, cols: usize) {
    let mut acc = [[0f32; NR]; MR];
    for p in 0..k2 {
        let bv: [u32; NR] = std::ptr::read(b.add(p * NR) as *const [u32; NR]);
        let (b_lo, b_hi): ([f32; NR], [f32; NR]) =
            (std::array::from_fn(|j| f32::from_bits(bv[j] << 16)), std::array::from_fn(|j| f32::from_bits(bv[j] & 0xffff_0000)));
        for (i, row) in acc.iter_mut().enumerate() {
            let av = *a.add(i * lda + p);
            let (a_lo, a_hi) = (f32::from_bits(av << 16), f32::from_bits(av & 0xffff_0000));
            for j in 0..NR {
                row[j] = a_hi.mul_add(b_hi[j], row[j]);
                row[j] = a_lo.mul_add(b_lo[j], row[j]);
            }
        }
    }
    add_block(&acc, c, ldc, cols);
}

#[inline(always)]
unsafe fn add_block<const MR: usize>(acc: &[[f32; NR]; MR], c: *mut f32, ldc: usize, cols: usize) {
    for (i, row) in acc.iter().enumerate() {
        let cp = c.add(i * ldc);
        for (j, v) in row.iter().enumerate().take(cols) {
            *cp.add(j) += *v;
        }
    }
}

#[cfg(target_arch = "x86_64")]
unsafe fn dot_block(rows: usize, k2: usize, a: *const u32, b: *const u32, c: *mut f32, ldc: usize, cols: usize) {
    block_rows!(rows, dot(k2, a, k2, b, c, ldc, cols), 12 11 10 9 8 7 6 5 4 3 2)
}

/// One `MR × NR` block on `vdpbf16ps`: per pair of A's columns, one broadcast
/// of the pair per row, one load of B's 16 column pairs, MR dot products.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn dot<const MR: usize>(k2: usize, a: *const u32, lda: usize, b: *const u32, c: *mut f32, ldc: usize, cols: usize) {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_setzero_ps(); MR];
    for p in 0..k2 {
        let bv: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * NR) as *const _));
        for (i, r) in acc.iter_mut().enumerate() {
            let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(*a.add(i * lda + p) as i32));
            *r = _mm512_dpbf16_ps(*r, av, bv);
        }
    }
    let mask: __mmask16 = if cols == NR { 0xffff } else { (1u16 << cols) - 1 };
    for (i, r) in acc.iter().enumerate() {
        let cp = c.add(i * ldc);
        let old = _mm512_maskz_loadu_ps(mask, cp);
        _mm512_mask_storeu_ps(cp, mask, _mm512_add_ps(old, *r));
    }
}

/// AMX's tile products (`tdpbf16ps`), in inline assembly: Rust has no stable
/// AMX intrinsics, but its assembler knows the instructions, and using them
/// needs only Linux's permission for the tile state (`platform::cpu`, which
/// asks for it before choosing this kernel).
///
/// Tiles: 0..=3 accumulate C (a 2×2 block of 16×16 f32), 4 and 5 hold two
/// 16-row blocks of A (16 pairs each, 64 bytes a row), 6 and 7 two panels of
/// B (16 pair rows of 16 columns: `Packed`'s layout as it is). A last block
/// of fewer rows runs on tiles configured that short.
#[cfg(target_arch = "x86_64")]
mod amx {
    use super::{Operands, NR};
    use std::arch::asm;

    /// Palette 1, every tile 64 bytes wide; C's and A's tiles (0 to 5) `rows`
    /// rows (16, or a last block's fewer), B's (6, 7) 16 pair rows.
    #[repr(C, align(64))]
    struct TileConfig([u8; 64]);

    const fn config(rows: u8) -> TileConfig {
        let mut c = [0u8; 64];
        c[0] = 1;
        let mut t = 0;
        while t < 8 {
            c[16 + 2 * t] = 64;
            c[48 + t] = if t < 6 { rows } else { 16 };
            t += 1;
        }
        TileConfig(c)
    }

    const WHOLE: TileConfig = config(16);

    macro_rules! load {
        ($t:literal, $p:expr, $stride:expr) => {
            asm!(concat!("tileloadd tmm", $t, ", [{0} + {1}*1]"), in(reg) $p, in(reg) $stride, options(nostack, readonly))
        };
    }
    macro_rules! store {
        ($t:literal, $p:expr, $stride:expr) => {
            asm!(concat!("tilestored [{0} + {1}*1], tmm", $t), in(reg) $p, in(reg) $stride, options(nostack))
        };
    }
    macro_rules! dot {
        ($c:literal, $a:literal, $b:literal) => {
            asm!(concat!("tdpbf16ps tmm", $c, ", tmm", $a, ", tmm", $b), options(nostack, nomem))
        };
    }

    /// `C += A · B` over rows `0..m` and panels `0..full` (each NR = 16
    /// columns wide): blocks of 32 or 16 rows, then the last rows (fewer than
    /// 16) in tiles configured that short.
    ///
    /// # Safety
    /// As `super::gemm`, and AMX is permitted (`platform::cpu`).
    pub unsafe fn product(ops: &Operands, m: usize, full: usize) {
        if m == 0 || full == 0 {
            return;
        }
        let rows16 = m / 16 * 16;
        asm!("ldtilecfg [{0}]", in(reg) &WHOLE, options(nostack, readonly));
        let mut i = 0;
        while i < rows16 {
            let two_rows = rows16 - i >= 32;
            panels(ops, i, full, two_rows);
            i += if two_rows { 32 } else { 16 };
        }
        if m > rows16 {
            let tail = config((m - rows16) as u8);
            asm!("ldtilecfg [{0}]", in(reg) &tail, options(nostack, readonly));
            panels(ops, rows16, full, false);
        }
        asm!("tilerelease", options(nostack, nomem));
    }

    /// One block of rows from `i` (32 with `two_rows`, else one tile's), by
    /// panels two at a time.
    #[inline(always)]
    unsafe fn panels(ops: &Operands, i: usize, full: usize, two_rows: bool) {
        let mut p = 0;
        while p < full {
            let two_panels = full - p >= 2;
            match (two_rows, two_panels) {
                (true, true) => block::<2, 2>(ops, i, p),
                (true, false) => block::<2, 1>(ops, i, p),
                (false, true) => block::<1, 2>(ops, i, p),
                (false, false) => block::<1, 1>(ops, i, p),
            }
            p += if two_panels { 2 } else { 1 };
        }
    }

    /// C's rows `i..i + 16R`, panels `p..p + C`: load, accumulate over the
    /// depth in tiles of 16 pairs, store.
    #[inline(always)]
    unsafe fn block<const R: usize, const C: usize>(ops: &Operands, i: usize, p: usize) {
        let (k2, ldc) = (ops.k2, ops.ldc);
        let (sa, sc) = (k2 * 4, ldc * 4); // row strides in bytes
        let c0 = ops.c.add(i * ldc + p * NR);
        let c1 = c0.add(16 * ldc);
        let (a0, a1) = (ops.a.add(i * k2), ops.a.add((i + 16) * k2));
        let (b0, b1) = (ops.b.add(p * k2 * NR), ops.b.add((p + 1) * k2 * NR));
        load!("0", c0, sc);
        if C == 2 {
            load!("1", c0.add(NR), sc);
        }
        if R == 2 {
            load!("2", c1, sc);
            if C == 2 {
                load!("3", c1.add(NR), sc);
            }
        }
        for q in (0..k2).step_by(16) {
            load!("4", a0.add(q), sa);
            load!("6", b0.add(q * NR), 64usize);
            dot!("0", "4", "6");
            if C == 2 {
                load!("7", b1.add(q * NR), 64usize);
                dot!("1", "4", "7");
            }
            if R == 2 {
                load!("5", a1.add(q), sa);
                dot!("2", "5", "6");
                if C == 2 {
                    dot!("3", "5", "7");
                }
            }
        }
        store!("0", c0, sc);
        if C == 2 {
            store!("1", c0.add(NR), sc);
        }
        if R == 2 {
            store!("2", c1, sc);
            if C == 2 {
                store!("3", c1.add(NR), sc);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_to_nearest_even_with_subnormals_as_zero() {
        // 1 + 2⁻⁸ is halfway between bf16's 1 and 1 + 2⁻⁷: ties go to the even 1.
        assert_eq!(value(round(1.0 + 2f32.powi(-8))), 1.0);
        // 1 + 3·2⁻⁸ is halfway between 1 + 2⁻⁷ (odd) and 1 + 2⁻⁶: up to even.
        assert_eq!(value(round(1.0 + 3.0 * 2f32.powi(-8))), 1.0 + 2f32.powi(-6));
        assert_eq!(value(round(1.0 + 2f32.powi(-8) + 2f32.powi(-20))), 1.0 + 2f32.powi(-7));
        assert_eq!(value(round(-3.0)), -3.0);
        assert_eq!(round(1e-40).to_ne_bytes(), 0u16.to_ne_bytes());
        assert_eq!(value(round(-1e-40)).to_bits(), (-0.0f32).to_bits());
        assert!(value(round(f32::NAN)).is_nan());
        assert_eq!(value(round(f32::INFINITY)), f32::INFINITY);
        assert_eq!(value(round(f32::MAX)), f32::INFINITY); // rounds past bf16's largest
                                                           // Against libtorch's own conversion, over many magnitudes.
        let xs: Vec<f32> = (0..20000).map(|i| ((i as f32) * 0.7713).sin() * 10f32.powi(i % 9 - 4)).collect();
        let t = tch::Tensor::from_slice(&xs).to_kind(tch::Kind::BFloat16).to_kind(tch::Kind::Float);
        let theirs = Vec::<f32>::try_from(t).unwrap();
        for (x, y) in xs.iter().zip(&theirs) {
            assert_eq!(value(round(*x)), *y, "{x}");
        }
    }
}

#[cfg(test)]
mod products {
    use super::super::gemm::{Packed, NR};
    use super::*;
    use tch::{Device, Tensor};

    #[test]
    fn every_kernel_multiplies_the_rounded_inputs_in_f32() {
        // C0 + A·B (and C0 + Aᵀ·B) on each bf16 kernel this CPU runs, against
        // the same product of the bf16-rounded inputs in f64 (exact products,
        // f64 sums): they differ by f32's rounding of the sums only. Against the
        // unrounded inputs they differ by far more, which the tolerance tells
        // apart. Shapes: partial panels and register blocks, odd and tile-sized
        // depths, rows short of and past AMX's 16.
        let kernels: Vec<Bf16Kernel> = Bf16Kernel::ALL.into_iter().filter(|k| k.available()).collect();
        println!("bf16 kernels this CPU runs: {:?}", kernels.iter().map(|k| k.name()).collect::<Vec<_>>());
        for (m, k, n) in [(37, 45, 50), (64, 1024, 2 * NR + 5), (16, 32, NR), (50, 7, 3), (33, 300, 4 * NR), (5, 64, 3 * NR)] {
            tch::manual_seed((m * k + n) as i64);
            let w = Tensor::randn([k as i64, n as i64], (Kind::Float, Device::Cpu));
            let a = Vec::<f32>::try_from(Tensor::randn([(m * k) as i64], (Kind::Float, Device::Cpu))).unwrap();
            let c0 = Vec::<f32>::try_from(Tensor::randn([(m * n) as i64], (Kind::Float, Device::Cpu))).unwrap();
            let wv = Vec::<f32>::try_from(w.reshape([-1])).unwrap();
            let packed = Packed::<MixedF32>::of(&[&w], false);
            for transposed in [false, true] {
                // A's element (i, kk): a[i·k + kk], or stored transposed a[kk·m + i].
                let at = |i: usize, kk: usize| if transposed { a[kk * m + i] } else { a[i * k + kk] };
                let (ars, aks) = if transposed { (1, m) } else { (k, 1) };
                let r = |x: f32| value(round(x)) as f64;
                let mut worst = [0f64; 2]; // max |C − ref| / scale: rounded inputs, unrounded
                for kernel in &kernels {
                    let mut c = c0.clone();
                    // SAFETY: a, the packed w and c hold m×k, k×n and m×n elements.
                    unsafe { gemm_on(*kernel, m, a.as_ptr(), ars, aks, k, n, packed.pairs_for_tests(), c.as_mut_ptr(), n) };
                    for i in 0..m {
                        for j in 0..n {
                            let rounded: f64 = (0..k).map(|kk| r(at(i, kk)) * r(wv[kk * n + j])).sum();
                            let exact: f64 = (0..k).map(|kk| at(i, kk) as f64 * wv[kk * n + j] as f64).sum();
                            let scale: f64 =
                                (0..k).map(|kk| (at(i, kk) as f64 * wv[kk * n + j] as f64).abs()).sum::<f64>() + c0[i * n + j].abs() as f64;
                            let got = c[i * n + j] as f64;
                            worst[0] = worst[0].max((got - c0[i * n + j] as f64 - rounded).abs() / scale);
                            worst[1] = worst[1].max((got - c0[i * n + j] as f64 - exact).abs() / scale);
                        }
                    }
                    // f32 sums: about sqrt(k) roundings of ε/2 each, typically.
                    let tol = 2.0 * (k as f64 + 1.0).sqrt() * f32::EPSILON as f64;
                    println!(
                        "{} m={m} k={k} n={n} transposed={transposed}: {:.2e} (rounded), {:.2e} (unrounded), tol {tol:.2e}",
                        kernel.name(),
                        worst[0],
                        worst[1]
                    );
                    assert!(worst[0] <= tol, "{}: {m}x{k}x{n}: {:.3e} > {tol:.3e}", kernel.name(), worst[0]);
                    assert!(worst[1] > 4.0 * tol, "{}: the unrounded product is as close: bf16 not in effect?", kernel.name());
                }
            }
        }
    }
}
