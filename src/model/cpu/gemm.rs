//! The time loop's matrix products: `C[m, n] += A[m, k] · B[k, n]`, with B (a
//! layer's hidden weights, or their transpose) packed once per training step
//! and reused by all T steps and every thread.
//!
//! MKL packs B again on every call and, with two threads, forks and joins
//! OpenMP for a product of `[32, 256] × [256, 768]` (about 100 µs). Here each
//! thread multiplies its own rows of the batch by the shared packed B: no
//! packing and no barrier inside the time loop.
//!
//! Packed layout: column panels of [`NR`] columns, each `[k, NR]` row-major
//! (zero-padded past n), so the micro-kernel reads B sequentially. The
//! micro-kernel keeps an `MR × NR` block of C in registers (MR = 6 for f32:
//! 12 AVX2 accumulators; 3 for f64) and is plain Rust that the compiler
//! vectorises under [`super::dispatch`]'s `avx2,fma`.
use super::Real;
use tch::Tensor;

/// Columns per packed panel.
pub const NR: usize = 16;

/// B packed into column panels (see the module doc).
pub struct Packed<T> {
    k: usize,
    n: usize,
    data: Vec<T>,
}

impl<T: Real> Packed<T> {
    /// A zero `[k, n]` B, to be filled with [`Packed::put`].
    pub fn zeros(k: usize, n: usize) -> Packed<T> {
        Packed { k, n, data: vec![T::ZERO; n.div_ceil(NR) * k * NR] }
    }

    /// Places a 2-D tensor (any strides, on the CPU, of kind `T`) at rows
    /// `row0..`, columns `col0..` of B; transposed (`wᵀ`) if `transpose`.
    pub fn put(&mut self, w: &Tensor, row0: usize, col0: usize, transpose: bool) {
        let (size, stride) = (w.size(), w.stride());
        let (rows, cols, rs, cs) = match transpose {
            false => (size[0] as usize, size[1] as usize, stride[0] as usize, stride[1] as usize),
            true => (size[1] as usize, size[0] as usize, stride[1] as usize, stride[0] as usize),
        };
        assert!(row0 + rows <= self.k && col0 + cols <= self.n && w.kind() == T::KIND && w.device() == tch::Device::Cpu);
        // SAFETY: the tensor holds every element its sizes and strides address.
        let src = unsafe { std::slice::from_raw_parts(w.data_ptr() as *const T, (rows - 1) * rs + (cols - 1) * cs + 1) };
        let k = self.k;
        let at = |col: usize, kk: usize| ((col / NR) * k + row0 + kk) * NR + col % NR;
        if cs == 1 {
            // Source rows contiguous (W as it is): row by row.
            for kk in 0..rows {
                for (j, v) in src[kk * rs..kk * rs + cols].iter().enumerate() {
                    self.data[at(col0 + j, kk)] = *v;
                }
            }
        } else {
            // Source columns contiguous (Wᵀ of a row-major W): column by column,
            // each a run of one panel lane.
            for j in 0..cols {
                let base = at(col0 + j, 0);
                for kk in 0..rows {
                    self.data[base + kk * NR] = src[kk * rs + j * cs];
                }
            }
        }
    }

    /// The tensors side by side (`[w_0 w_1 ...]`, each `[k, n_i]`), or, with
    /// `transpose`, their transposes stacked (`[w_0ᵀ ; w_1ᵀ ; ...]`).
    pub fn of(ws: &[&Tensor], transpose: bool) -> Packed<T> {
        // Side by side: [k, Σ n_i]; transposed and stacked: [Σ n_i, k].
        let total: usize = ws.iter().map(|w| w.size()[1] as usize).sum();
        let k = ws[0].size()[0] as usize;
        let mut p = match transpose {
            false => Packed::zeros(k, total),
            true => Packed::zeros(total, k),
        };
        let mut at = 0;
        for w in ws {
            match transpose {
                false => p.put(w, 0, at, false),
                true => p.put(w, at, 0, true),
            }
            at += w.size()[1] as usize;
        }
        p
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn n(&self) -> usize {
        self.n
    }
}

/// `C += A · B` for `m` rows: A's rows at stride `lda`, C's at stride `ldc`.
///
/// # Safety
/// `a` must address `m` rows of `b.k()` elements, `c` `m` rows of `b.n()`, and
/// no other thread may write C's rows meanwhile.
#[inline(always)]
pub unsafe fn gemm_acc<T: Real>(m: usize, a: *const T, lda: usize, b: &Packed<T>, c: *mut T, ldc: usize) {
    let k = b.k;
    for panel in 0..b.n.div_ceil(NR) {
        let bp = b.data.as_ptr().add(panel * k * NR);
        let cols = (b.n - panel * NR).min(NR);
        let mut i = 0;
        while i < m {
            let (aa, cc) = (a.add(i * lda), c.add(i * ldc + panel * NR));
            let rows = (m - i).min(T::MR);
            match rows {
                6 => kernel::<T, 6>(k, aa, lda, bp, cc, ldc, cols),
                5 => kernel::<T, 5>(k, aa, lda, bp, cc, ldc, cols),
                4 => kernel::<T, 4>(k, aa, lda, bp, cc, ldc, cols),
                3 => kernel::<T, 3>(k, aa, lda, bp, cc, ldc, cols),
                2 => kernel::<T, 2>(k, aa, lda, bp, cc, ldc, cols),
                _ => kernel::<T, 1>(k, aa, lda, bp, cc, ldc, cols),
            }
            i += rows;
        }
    }
}

/// One `MR × NR` block of C: `MR` rows of A times one panel of B, added into C
/// (its first `cols` columns).
#[inline(always)]
unsafe fn kernel<T: Real, const MR: usize>(k: usize, a: *const T, lda: usize, b: *const T, c: *mut T, ldc: usize, cols: usize) {
    let mut acc = [[T::ZERO; NR]; MR];
    for kk in 0..k {
        let bv: [T; NR] = std::ptr::read(b.add(kk * NR) as *const [T; NR]);
        for (i, row) in acc.iter_mut().enumerate() {
            let av = *a.add(i * lda + kk);
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
