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
use super::{Real, RowJob};
use crate::platform::cpu::{cpu_kernels, CpuKernels};
use std::ops::Range;
use tch::Tensor;

/// Columns per packed panel.
pub(crate) const NR: usize = 16;

/// B packed into column panels (see the module doc).
pub(crate) struct Packed<T> {
    k: usize,
    n: usize,
    data: Vec<T>,
}

impl<T: Real> Packed<T> {
    /// A zero `[k, n]` B.
    pub fn zeros(k: usize, n: usize) -> Packed<T> {
        Packed { k, n, data: vec![T::ZERO; n.div_ceil(NR) * k * NR] }
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
        let job = Fill { srcs, data: p.data.as_mut_ptr(), k: p.k, n: p.n };
        super::par_rows(p.n.div_ceil(NR), &job);
        p
    }

    /// `rows` rows of a row-major `[·, n]` buffer at `ptr` (row stride `ld`).
    ///
    /// # Safety
    /// `ptr` addresses those rows.
    pub unsafe fn from_rows(ptr: *const T, rows: usize, n: usize, ld: usize) -> Packed<T> {
        let mut p = Packed::zeros(rows, n);
        let src = Source { ptr, rows, cols: n, rs: ld, cs: 1, row0: 0, col0: 0 };
        src.fill(p.data.as_mut_ptr(), rows, 0..n);
        p
    }
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

    /// Copies the part of the source within B's columns `range` into `data`
    /// (a packed B with `k` rows).
    ///
    /// # Safety
    /// `data` is that B, the tensor is alive, and nobody else writes the
    /// panels of `range` meanwhile.
    unsafe fn fill(&self, data: *mut T, k: usize, range: Range<usize>) {
        let (j0, j1) = (range.start.max(self.col0), range.end.min(self.col0 + self.cols));
        if j0 >= j1 || self.rows == 0 {
            return;
        }
        let at = |col: usize, kk: usize| ((col / NR) * k + self.row0 + kk) * NR + col % NR;
        let src = |kk: usize, j: usize| *self.ptr.add(kk * self.rs + (j - self.col0) * self.cs);
        if self.cs == 1 {
            // Source rows contiguous (W as it is): row by row.
            for kk in 0..self.rows {
                for j in j0..j1 {
                    *data.add(at(j, kk)) = src(kk, j);
                }
            }
        } else {
            // Source columns contiguous (Wᵀ of a row-major W): column by column,
            // each a run of one panel lane.
            for j in j0..j1 {
                let base = data.add(at(j, 0));
                for kk in 0..self.rows {
                    *base.add(kk * NR) = src(kk, j);
                }
            }
        }
    }
}

/// [`Packed::of`]'s copies, a range of B's panels per thread.
struct Fill<T> {
    srcs: Vec<Source<T>>,
    data: *mut T,
    k: usize,
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
            unsafe { s.fill(self.data, self.k, cols.clone()) };
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
