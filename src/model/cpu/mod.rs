//! The CPU engine of the scratch cells' training step: the kernels that each
//! cell's `cpu.rs` (in `model/cell/NAME/`) runs its tapes on, the same buffers
//! and the same numbers as the cell's libtorch tape, computed in Rust over the
//! tensors' memory instead of a dozen libtorch calls per step. What it does differently, and why (`make bench` measures it):
//!
//! * **Rows split over the cores.** The batch's rows are independent through
//!   the whole time loop, so thread k runs rows `k·B/n..(k+1)·B/n` of every step,
//!   forward and backward, with no barrier between steps (`par_rows`). MKL's
//!   two-thread GEMM at the step's shapes spends a quarter of its time in
//!   OpenMP's fork/join and in packing.
//! * **Weights packed once per step** ([`gemm::Packed`]), shared by all T steps
//!   and all threads; a register-blocked micro-kernel multiplies each thread's
//!   rows by them ([`gemm::gemm_acc`]).
//! * **Gate math fused** (in each cell's `cpu.rs`): each step's sigmoids, tanh, products and state update
//!   (and their backward) are one pass over a row, in registers, instead of one
//!   libtorch kernel (with its dispatch and its pass over memory) each.
//! * **The output layer fused** (`output.rs`): logits, softmax, loss and their
//!   gradients in one pass per row.
//! * **Token inputs picked** ([`embed`]): a first layer's `X W_x + b` is the
//!   rows of `W_x` its tokens pick plus `b`, written once by the team.
//!
//! The built-in model's training step runs here too, through the scratch cell
//! that computes the same function (`builtin.rs`).
//!
//! Precision: f64 uses the standard library's `exp` and `tanh` (the reference
//! parity holds to 1e-10); f32 uses vectorisable Cephes-style `exp` and `tanh`
//! (relative error a few ulp, so libtorch parity holds to 1e-5, see the tests).
//! The hidden and input weights' gradients (one product over all T·B rows)
//! stay libtorch's: MKL is faster at those shapes than this kernel.
//!
//! bf16 (`train.precision = "bf16"`, `bf16.rs`): every product takes bf16
//! inputs and accumulates in f32; the tapes run on [`bf16::MixedF32`], f32 in
//! memory. The products left to libtorch take bf16 tensors (oneDNN, with AMX
//! where the CPU has it) and return bf16 results, as autocast's do.
pub mod bf16;
pub mod gemm;
pub mod output;

use crate::platform::cpu::{cpu_kernels, flush_subnormals, CpuKernels};
use std::ops::{Add, Div, Mul, Neg, Sub};
use tch::{Device, Kind, Tensor};

/// Whether the engine can run a tape over `t`: a CPU tensor of f32 or f64.
pub(crate) fn supports(t: &Tensor) -> bool {
    t.device() == Device::Cpu && matches!(t.kind(), Kind::Float | Kind::Double)
}

/// A first layer's input projection for token ids `[N]` (Int64, each a row of
/// `w [V, G·H]`): `X W_x + b = W_x[id] + b`, `[N, G·H]`, each thread writing its
/// rows in one pass (libtorch's `embedding` then `+ b` is two passes and a
/// temporary, and its add runs on one thread at this size).
pub(crate) fn embed(w: &Tensor, b: &Tensor, ids: &Tensor) -> Tensor {
    match w.kind() {
        Kind::Float => embed_as::<f32>(w, b, ids),
        _ => embed_as::<f64>(w, b, ids),
    }
}

fn embed_as<T: Real>(w: &Tensor, b: &Tensor, ids: &Tensor) -> Tensor {
    let (w, ids) = (w.contiguous(), ids.contiguous());
    let (v, width, n) = (w.size()[0], w.size()[1] as usize, ids.numel());
    assert!(
        ids.kind() == Kind::Int64 && (n == 0 || (ids.min().int64_value(&[]) >= 0 && ids.max().int64_value(&[]) < v)),
        "token ids index W_x's rows"
    );
    assert_eq!(b.numel(), width, "one bias per column of W_x");
    let out = Tensor::empty([n as i64, width as i64], (w.kind(), w.device()));
    let job = Embed {
        // SAFETY: contiguous tensors of these kinds and sizes, alive for the job.
        ids: unsafe { std::slice::from_raw_parts(ids.data_ptr() as *const i64, n) },
        w: View::<T>::of(&w),
        b: values(b),
        out: View::of(&out),
    };
    par_rows(n, &job);
    out
}

struct Embed<'a, T> {
    ids: &'a [i64],
    w: View<T>,
    b: Vec<T>,
    out: View<T>,
}

impl<T: Real> RowJob for Embed<'_, T> {
    #[inline(always)]
    fn run(&self, rows: std::ops::Range<usize>) {
        let width = self.b.len();
        for r in rows {
            // SAFETY: ids are rows of w (checked); r is this thread's row of out.
            let (src, dst) = unsafe { (&self.w.seg(0, self.ids[r] as usize, 0, width)[..], self.out.seg(0, r, 0, width)) };
            for ((d, x), b) in dst.iter_mut().zip(src).zip(&self.b) {
                *d = *x + *b;
            }
        }
    }
}

/// The element types the engine computes in (f32, f64).
pub(crate) trait Real:
    Copy
    + Send
    + Sync
    + PartialOrd
    + 'static
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
{
    const KIND: Kind;
    const ZERO: Self;
    const ONE: Self;
    /// Rows of the GEMM micro-kernel's register block (AVX2: 16 registers).
    const MR: usize;
    /// The same with AVX-512 (32 registers of twice the width).
    const MR_WIDE: usize;
    /// Whether matrix products take bf16 inputs ([`bf16::MixedF32`]).
    const BF16: bool = false;
    /// `self · b + c`, one rounding where the CPU has FMA.
    fn fma(self, b: Self, c: Self) -> Self;
    fn sigmoid(self) -> Self;
    fn tanh(self) -> Self;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn from_usize(n: usize) -> Self;
    /// The value as f32 (what bf16 rounding starts from).
    fn to_f32(self) -> f32;
}

impl Real for f64 {
    const KIND: Kind = Kind::Double;
    const ZERO: f64 = 0.0;
    const ONE: f64 = 1.0;
    const MR: usize = 3;
    const MR_WIDE: usize = 6;
    #[inline(always)]
    fn fma(self, b: f64, c: f64) -> f64 {
        self.mul_add(b, c)
    }
    #[inline(always)]
    fn sigmoid(self) -> f64 {
        1.0 / (1.0 + (-self).exp())
    }
    #[inline(always)]
    fn tanh(self) -> f64 {
        f64::tanh(self)
    }
    #[inline(always)]
    fn exp(self) -> f64 {
        f64::exp(self)
    }
    fn ln(self) -> f64 {
        f64::ln(self)
    }
    fn from_usize(n: usize) -> f64 {
        n as f64
    }
    fn to_f32(self) -> f32 {
        self as f32
    }
}

impl Real for f32 {
    const KIND: Kind = Kind::Float;
    const ZERO: f32 = 0.0;
    const ONE: f32 = 1.0;
    const MR: usize = 6;
    const MR_WIDE: usize = 12;
    #[inline(always)]
    fn fma(self, b: f32, c: f32) -> f32 {
        self.mul_add(b, c)
    }
    #[inline(always)]
    fn sigmoid(self) -> f32 {
        1.0 / (1.0 + exp_f32(-self))
    }
    #[inline(always)]
    fn tanh(self) -> f32 {
        tanh_f32(self)
    }
    #[inline(always)]
    fn exp(self) -> f32 {
        exp_f32(self)
    }
    fn ln(self) -> f32 {
        f32::ln(self)
    }
    fn from_usize(n: usize) -> f32 {
        n as f32
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
}

/// `e^x` in f32 without branches (so loops of it vectorise): x = n·ln 2 + r,
/// |r| ≤ ln 2 / 2, e^r by Cephes' `expf` polynomial, 2^n through the exponent
/// bits. Relative error below 2e-7 over the clamped range [-87.3, 88.7].
#[inline(always)]
#[allow(clippy::excessive_precision)] // Cephes' coefficients as published
pub(crate) fn exp_f32(x: f32) -> f32 {
    let x = x.clamp(-87.3, 88.7);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let p = 1.987_569_1e-4f32.mul_add(r, 1.398_199_9e-3);
    let p = p.mul_add(r, 8.333_452e-3);
    let p = p.mul_add(r, 4.166_579_6e-2);
    let p = p.mul_add(r, 1.666_666_5e-1);
    let p = p.mul_add(r, 5.000_000_1e-1);
    let er = p.mul_add(r * r, r) + 1.0;
    // SAFETY: n is an integer in [-126, 128] after the clamp (an `as` cast
    // would saturate instead, which keeps the loop from vectorising).
    er * f32::from_bits(((unsafe { n.to_int_unchecked::<i32>() } + 127) << 23) as u32)
}

/// `tanh(x)` in f32 without branches: Cephes' `tanhf` polynomial below 0.625,
/// `(1 − e^{−2|x|}) / (1 + e^{−2|x|})` above, the sign restored.
#[inline(always)]
#[allow(clippy::excessive_precision)] // Cephes' coefficients as published
pub(crate) fn tanh_f32(x: f32) -> f32 {
    let ax = x.abs();
    let z = x * x;
    let small = (-5.704_988_7e-3f32).mul_add(z, 2.063_908_9e-2);
    let small = small.mul_add(z, -5.373_971_6e-2);
    let small = small.mul_add(z, 1.333_144_2e-1);
    let small = small.mul_add(z, -3.333_328_2e-1);
    let small = (small * z).mul_add(x, x);
    let e = exp_f32(-2.0 * ax);
    let large = ((1.0 - e) / (1.0 + e)).copysign(x);
    if ax < 0.625 {
        small
    } else {
        large
    }
}

/// One thread's share of a time loop: rows `rows` of the batch, every step.
/// Implementations mark `run` `#[inline(always)]`, so that [`par_rows`]
/// compiles it into one function per kernel set (AVX-512, AVX2 and FMA, as built).
pub(crate) trait RowJob: Sync {
    fn run(&self, rows: std::ops::Range<usize>);
}

/// Runs `job` on `rows`, compiled for the chosen kernels ([`cpu_kernels`]).
fn run<J: RowJob>(job: &J, rows: std::ops::Range<usize>) {
    flush_subnormals();
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: cpu_kernels() only returns kernels the CPU has.
        match cpu_kernels() {
            CpuKernels::Avx512 => return unsafe { run_avx512(job, rows) },
            CpuKernels::Avx2 => return unsafe { run_avx2(job, rows) },
            CpuKernels::Portable => {}
        }
    }
    job.run(rows)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn run_avx2<J: RowJob>(job: &J, rows: std::ops::Range<usize>) {
    job.run(rows)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,avx512f,avx512vl")]
unsafe fn run_avx512<J: RowJob>(job: &J, rows: std::ops::Range<usize>) {
    job.run(rows)
}

/// Runs `job` over the batch's rows `0..b`, split into one contiguous range per
/// libtorch thread (`tch::get_num_threads`, at most one per row).
///
/// The threads are libtorch's own OpenMP team where its OpenMP runtime is
/// loaded (`GOMP_parallel`, which MKL and ATen's `parallel_for` use too): two
/// teams on two cores would fight, as OpenMP's idle workers spin for a while
/// after each of libtorch's parallel regions. Elsewhere, scoped threads.
pub(crate) fn par_rows<J: RowJob>(b: usize, job: &J) {
    let n = (tch::get_num_threads().max(1) as usize).min(b).max(1);
    if n == 1 {
        return run(job, 0..b);
    }
    if let Some(omp) = openmp() {
        let ctx = Team { job, b, omp };
        // SAFETY: GOMP_parallel runs `team::<J>` on every thread of the team and
        // returns when all are done, so `ctx` outlives them.
        unsafe { (omp.parallel)(team::<J>, &ctx as *const Team<J> as *mut c_void, n as c_uint, 0) };
        return;
    }
    std::thread::scope(|s| {
        for k in 1..n {
            s.spawn(move || run(job, k * b / n..(k + 1) * b / n));
        }
        run(job, 0..b / n);
    });
}

use std::ffi::{c_int, c_uint, c_void};

type GompParallel = unsafe extern "C" fn(extern "C" fn(*mut c_void), *mut c_void, c_uint, c_uint);
type OmpInt = unsafe extern "C" fn() -> c_int;

#[derive(Clone, Copy)]
struct OpenMp {
    parallel: GompParallel,
    thread_num: OmpInt,
    num_threads: OmpInt,
}

/// libgomp's entry points, if the process has them (libtorch's OpenMP runtime,
/// or Intel's, which exports the same names).
fn openmp() -> Option<OpenMp> {
    static OMP: std::sync::OnceLock<Option<OpenMp>> = std::sync::OnceLock::new();
    *OMP.get_or_init(|| {
        let sym = |name: &std::ffi::CStr| {
            // SAFETY: dlsym with a NUL-terminated name; null when absent.
            let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
            (!p.is_null()).then_some(p)
        };
        let (p, t, n) = (sym(c"GOMP_parallel")?, sym(c"omp_get_thread_num")?, sym(c"omp_get_num_threads")?);
        // SAFETY: these are the C signatures of libgomp's ABI.
        unsafe {
            Some(OpenMp {
                parallel: std::mem::transmute::<*mut c_void, GompParallel>(p),
                thread_num: std::mem::transmute::<*mut c_void, OmpInt>(t),
                num_threads: std::mem::transmute::<*mut c_void, OmpInt>(n),
            })
        }
    })
}

struct Team<'a, J> {
    job: &'a J,
    b: usize,
    omp: OpenMp,
}

/// The body of the OpenMP parallel region: this thread's share of the rows
/// (split by the team's actual size, which OpenMP may make smaller).
extern "C" fn team<J: RowJob>(data: *mut c_void) {
    // SAFETY: `data` is par_rows' `ctx`, alive until GOMP_parallel returns.
    let ctx = unsafe { &*(data as *const Team<J>) };
    let (k, n) = unsafe { ((ctx.omp.thread_num)() as usize, ((ctx.omp.num_threads)() as usize).max(1)) };
    let b = ctx.b;
    if k < n {
        run(ctx.job, k * b / n..(k + 1) * b / n);
    }
}

/// A `[T, B, W]` (or `[B, W]`) tensor's memory, shared by the threads of
/// [`par_rows`], each of which touches only its own rows. Rows are contiguous;
/// they may be a column block of a wider buffer (the GRU's `U`, a view of its
/// hidden products), so the row stride can exceed W.
#[derive(Clone, Copy)]
pub(crate) struct View<T> {
    ptr: *mut T,
    b: usize,
    /// Row stride.
    stride: usize,
    w: usize,
}

// SAFETY: the threads that share a View write disjoint rows (see `par_rows`).
unsafe impl<T> Send for View<T> {}
unsafe impl<T> Sync for View<T> {}

impl<T: Real> View<T> {
    /// The tensor must be on the CPU, of kind `T`, with contiguous rows evenly
    /// strided (batch rows, then steps), and outlive the view.
    pub fn of(t: &Tensor) -> View<T> {
        let (size, st) = (t.size(), t.stride());
        assert!(t.kind() == T::KIND && t.device() == Device::Cpu, "engine buffers are CPU tensors of the engine's kind");
        let (b, w, stride) = match (&size[..], &st[..]) {
            ([_, b, w], [s0, s1, 1]) if *s0 == b * s1 => (*b as usize, *w as usize, *s1 as usize),
            ([b, w], [s1, 1]) => (*b as usize, *w as usize, *s1 as usize),
            _ => panic!("engine buffers are [T, B, W] or [B, W] with contiguous rows, not {size:?} strided {st:?}"),
        };
        View { ptr: t.data_ptr() as *mut T, b, stride, w }
    }

    /// Row `r` of step `s`.
    #[inline(always)]
    pub fn row(&self, s: usize, r: usize) -> *mut T {
        // SAFETY (of callers): s, r are within the tensor's [T, B].
        unsafe { self.ptr.add((s * self.b + r) * self.stride) }
    }

    /// Columns `col..col + len` of row `r` of step `s`.
    ///
    /// # Safety
    /// In bounds, and no other live slice overlaps it.
    #[inline(always)]
    pub unsafe fn seg<'a>(&self, s: usize, r: usize, col: usize, len: usize) -> &'a mut [T] {
        debug_assert!(col + len <= self.w && r < self.b);
        std::slice::from_raw_parts_mut(self.row(s, r).add(col), len)
    }
}

pub(crate) fn empty(dims: &[usize], like: &Tensor) -> Tensor {
    Tensor::empty(dims.iter().map(|&d| d as i64).collect::<Vec<_>>(), (like.kind(), like.device()))
}

/// A `[n]` tensor's values.
pub(crate) fn values<T: Real>(t: &Tensor) -> Vec<T> {
    let t = t.contiguous();
    // SAFETY: a contiguous CPU tensor of kind T (checked by View::of's caller).
    unsafe { std::slice::from_raw_parts(t.data_ptr() as *const T, t.numel()) }.to_vec()
}

/// `(T, B, H)` of a tape over `[T, B, ·]`.
pub(crate) fn dims(x: &Tensor, h: &Tensor) -> (usize, usize, usize) {
    (x.size()[0] as usize, x.size()[1] as usize, *h.size().last().unwrap() as usize)
}
