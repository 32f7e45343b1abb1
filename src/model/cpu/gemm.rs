//! The time loop's matrix products: `C[m, n] += A[m, k] · B[k, n]`, with B (a
//! layer's hidden weights, or their transpose) packed once per training step
//! and reused by all T steps and every thread.
//!
//! MKL packs B again on every call and, with two threads, forks and joins
//! OpenMP for a product of `[32, 256] × [256, 768]` (about 100 µs). Here each
//! thread multiplies its own rows of the batch by the shared packed B: no
//! packing and no barrier inside the time loop. The packing itself is split
//! over the team by panels ([`Packed::of`]).
//!
//! Packed layout: column panels of [`NR`] columns, each `[k, NR]` row-major
//! (zero-padded past n), so the micro-kernel reads B sequentially. The
//! micro-kernel keeps an `MR × NR` block of C in registers (AVX2: MR = 6 for
//! f32, 12 accumulators of its 16 registers, and 3 for f64; AVX-512: twice
//! those rows, [`super::Real::MR_WIDE`]) and is plain Rust that the compiler
//! vectorises for the kernel set chosen at run time (see [`super::RowJob`] and
//! `platform::cpu`). A taller block (16 rows of f32) spills and runs at half
//! the speed.
//!
//! With bf16 products (`train.precision = "bf16"`, element type
//! [`super::bf16::MixedF32`]), B is packed as bf16 pairs instead and the
//! products run in `bf16.rs`: same panels, same call sites.
use super::{bf16, Real, RowJob};
use crate::platform::cpu::{cpu_kernels, CpuKernels};
use std::ops::Range;
use tch::Tensor;

/// Columns per packed panel.
pub(crate) const NR: usize = 16;

/// B packed into column panels (see the module doc): `data` for products in
/// `T`; for bf16 products (`T::BF16`) `pairs` instead, each panel
/// `[bf16::pair_rows(k), NR]` of u32 holding rows 2p (low half) and 2p + 1
/// (high half) of a column rounded to bf16 (zero past k): the operand layout of
/// AVX512_BF16's `vdpbf16ps`, and of AMX's B tiles.
pub(crate) struct Packed<T> {
    k: usize,
    n: usize,
    data: Vec<T>,
    pairs: Vec<u32>,
}

impl<T: Real> Packed<T> {
    /// A zero `[k, n]` B.
    pub fn zeros(k: usize, n: usize) -> Packed<T> {
        let panels = n.div_ceil(NR);
        match T::BF16 {
            false => Packed { k, n, data: vec![T::ZERO; panels * k * NR], pairs: vec![] },
            true => Packed { k, n, data: vec![], pairs: vec![0; panels * bf16::pair_rows(k) * NR] },
        }
    }

    /// The tensors side by side (`[w_0 w_1 ...]`, each `[k, n_i]`), or, with
    /// `transpose`, their transposes stacked (`[w_0ᵀ ; w_1ᵀ ; ...]`); the
    /// threads of the team pack a range of panels each.
    pub fn of(ws: &[&Tensor], transpose: bool) -> Packed<T> {
        // Side by side: [k, Σ n_i]; transposed and stacked: [Σ n_i, k].
        let total: usize = ws.iter().map(|w| w.size()[1] as usize).sum();
        let k = ws[0].size()[0] as usize;
        let mut p = match transpose {
            false => Packed::zeros(k, total),
            true => Packed::zeros(total, k),
        };
        let mut at = 0;
        let mut srcs = Vec::with_capacity(ws.len());
        for w in ws {
            srcs.push(match transpose {
                false => Source::of(w, 0, at, false, &p),
                true => Source::of(w, at, 0, true, &p),
            });
            at += w.size()[1] as usize;
        }
        let job = Fill { srcs, dest: p.dest(), n: p.n };
        super::par_rows(p.n.div_ceil(NR), &job);
        p
    }

    /// The bf16 pairs (see the type's doc), for tests of the kernels.
    #[cfg(test)]
    pub fn pairs_for_tests(&self) -> &[u32] {
        &self.pairs
    }

    /// Where packing writes.
    fn dest(&mut self) -> Dest<T> {
        match T::BF16 {
            false => Dest::Values { data: self.data.as_mut_ptr(), k: self.k },
            true => Dest::Bf16Pairs { data: self.pairs.as_mut_ptr() as *mut u16, k2: bf16::pair_rows(self.k) },
        }
    }

    /// `rows` rows of a row-major `[·, n]` buffer at `ptr` (row stride `ld`).
    ///
    /// # Safety
    /// `ptr` addresses those rows.
    pub unsafe fn from_rows(ptr: *const T, rows: usize, n: usize, ld: usize) -> Packed<T> {
        let mut p = Packed::zeros(rows, n);
        let src = Source { ptr, rows, cols: n, rs: ld, cs: 1, row0: 0, col0: 0 };
        src.fill(p.dest(), 0..n);
        p
    }
}

/// A packed B's memory, as packing writes it: values, or bf16 pairs (as u16
/// halves: element `(kk, col)` at `((col/NR)·k2 + kk/2)·2·NR + 2·(col%NR) + kk%2`,
/// k2 = `bf16::pair_rows(k)`).
#[derive(Clone, Copy)]
enum Dest<T> {
    Values { data: *mut T, k: usize },
    Bf16Pairs { data: *mut u16, k2: usize },
}

/// A 2-D tensor's place in a [`Packed`] B: its memory as `rows × cols` at
/// strides `rs`, `cs` (the transpose's, if transposed) from row `row0`, column
/// `col0` of B.
struct Source<T> {
    ptr: *const T,
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
    row0: usize,
    col0: usize,
}

impl<T: Real> Source<T> {
    fn of(w: &Tensor, row0: usize, col0: usize, transpose: bool, b: &Packed<T>) -> Source<T> {
        let (size, stride) = (w.size(), w.stride());
        let (rows, cols, rs, cs) = match transpose {
            false => (size[0] as usize, size[1] as usize, stride[0] as usize, stride[1] as usize),
            true => (size[1] as usize, size[0] as usize, stride[1] as usize, stride[0] as usize),
        };
        assert!(row0 + rows <= b.k && col0 + cols <= b.n && w.kind() == T::KIND && w.device() == tch::Device::Cpu);
        Source { ptr: w.data_ptr() as *const T, rows, cols, rs, cs, row0, col0 }
    }

    /// Copies the part of the source within B's columns `range` into `dest`.
    ///
    /// # Safety
    /// `dest` is that B, the tensor is alive, and nobody else writes the
    /// panels of `range` meanwhile.
    unsafe fn fill(&self, dest: Dest<T>, range: Range<usize>) {
        let (j0, j1) = (range.start.max(self.col0), range.end.min(self.col0 + self.cols));
        if j0 >= j1 || self.rows == 0 {
            return;
        }
        let src = |kk: usize, j: usize| *self.ptr.add(kk * self.rs + (j - self.col0) * self.cs);
        match dest {
            Dest::Values { data, k } => {
                let at = |col: usize, kk: usize| ((col / NR) * k + self.row0 + kk) * NR + col % NR;
                if self.cs == 1 {
                    // Source rows contiguous (W as it is): row by row.
                    for kk in 0..self.rows {
                        for j in j0..j1 {
                            *data.add(at(j, kk)) = src(kk, j);
                        }
                    }
                } else {
                    // Source columns contiguous (Wᵀ of a row-major W): column by
                    // column, each a run of one panel lane.
                    for j in j0..j1 {
                        let base = data.add(at(j, 0));
                        for kk in 0..self.rows {
                            *base.add(kk * NR) = src(kk, j);
                        }
                    }
                }
            }
            Dest::Bf16Pairs { data, k2 } => {
                let at = |col: usize, kk: usize| ((col / NR) * k2 + kk / 2) * 2 * NR + 2 * (col % NR) + kk % 2;
                for j in j0..j1 {
                    for kk in 0..self.rows {
                        *data.add(at(j, self.row0 + kk)) = bf16::round(src(kk, j).to_f32());
                    }
                }
            }
        }
    }
}

/// [`Packed::of`]'s copies, a range of B's panels per thread.
struct Fill<T> {
    srcs: Vec<Source<T>>,
    dest: Dest<T>,
    n: usize,
}

// SAFETY: the sources are read only; each thread writes its own panels.
unsafe impl<T> Sync for Fill<T> {}

impl<T: Real> RowJob for Fill<T> {
    #[inline(always)]
    fn run(&self, panels: Range<usize>) {
        let cols = panels.start * NR..(panels.end * NR).min(self.n);
        for s in &self.srcs {
            // SAFETY: Packed::of's B, alive, and this thread's panels only.
            unsafe { s.fill(self.dest, cols.clone()) };
        }
    }
}

/// `C += A · B` for `m` rows: A's rows at stride `lda`, C's at stride `ldc`.
///
/// # Safety
/// `a` must address `m` rows of `b.k()` elements, `c` `m` rows of `b.n()`, and
/// no other thread may write C's rows meanwhile.
#[inline(always)]
pub unsafe fn gemm_acc<T: Real>(m: usize, a: *const T, lda: usize, b: &Packed<T>, c: *mut T, ldc: usize) {
    gemm_strided(m, a, lda, 1, b, c, ldc)
}

/// `C += Aᵀ · B` for `m` rows of C: A's element `(i, kk)` (row kk of the
/// stored A) at `a[kk·lda + i]`, e.g. `Hᵀ dY` over a thread's rows of H.
///
/// # Safety
/// `a` must address `b.k()` rows of `m` elements at stride `lda`, `c` `m`
/// rows of `b.n()`, and no other thread may write C's rows meanwhile.
#[inline(always)]
pub unsafe fn gemm_tn_acc<T: Real>(m: usize, a: *const T, lda: usize, b: &Packed<T>, c: *mut T, ldc: usize) {
    gemm_strided(m, a, 1, lda, b, c, ldc)
}

/// `kernel::<T, MR>(args)` for the block's height `rows` (1 to the largest listed).
macro_rules! block_rows {
    ($rows:expr, kernel::<$t:ty> $args:tt, $($mr:literal)*) => {
        match $rows {
            $($mr => kernel::<$t, $mr> $args,)*
            _ => kernel::<$t, 1> $args,
        }
    };
}

/// `C += A · B` with A's element `(i, kk)` at `a[i·ars + kk·aks]`: per panel
/// of B, every block of `MR` rows.
#[inline(always)]
unsafe fn gemm_strided<T: Real>(m: usize, a: *const T, ars: usize, aks: usize, b: &Packed<T>, c: *mut T, ldc: usize) {
    let k = b.k;
    if T::BF16 {
        // T is f32 in memory (MixedF32 is a transparent f32).
        return bf16::gemm(m, a as *const f32, ars, aks, k, b.n, &b.pairs, c as *mut f32, ldc);
    }
    // The register block's height: twice as many rows with AVX-512's registers.
    let mr = if cpu_kernels() == CpuKernels::Avx512 { T::MR_WIDE } else { T::MR };
    for panel in 0..b.n.div_ceil(NR) {
        let bp = b.data.as_ptr().add(panel * k * NR);
        let cols = (b.n - panel * NR).min(NR);
        let mut i = 0;
        while i < m {
            let (aa, cc) = (a.add(i * ars), c.add(i * ldc + panel * NR));
            let rows = (m - i).min(mr);
            block_rows!(rows, kernel::<T>(k, aa, ars, aks, bp, cc, ldc, cols), 12 11 10 9 8 7 6 5 4 3 2);
            i += rows;
        }
    }
}

/// One `MR × NR` block of C: `MR` rows of A (element `(i, kk)` at
/// `a[i·ars + kk·aks]`) times one panel of B, added into C (its first `cols`
/// columns).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel<T: Real, const MR: usize>(k: usize, a: *const T, ars: usize, aks: usize, b: *const T, c: *mut T, ldc: usize, cols: usize) {
    let mut acc = [[T::ZERO; NR]; MR];
    for kk in 0..k {
        let bv: [T; NR] = std::ptr::read(b.add(kk * NR) as *const [T; NR]);
        for (i, row) in acc.iter_mut().enumerate() {
            let av = *a.add(i * ars + kk * aks);
            for j in 0..NR {
                row[j] = av.fma(bv[j], row[j]);
            }
        }
    }
    for (i, row) in acc.iter().enumerate() {
        let cp = c.add(i * ldc);
        if cols == NR {
            for (j, v) in row.iter().enumerate() {
                *cp.add(j) = *cp.add(j) + *v;
            }
        } else {
            for (j, v) in row.iter().enumerate().take(cols) {
                *cp.add(j) = *cp.add(j) + *v;
            }
        }
    }
}
