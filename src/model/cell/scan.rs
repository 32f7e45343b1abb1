//! The linear recurrence of the parallel-in-time cells (minGRU, minLSTM),
//! `H_t = A_t ⊙ H_{t-1} + B_t`, over all T steps at once in libtorch operations:
//! a log-depth (Hillis–Steele) scan, what their libtorch tape (and so CUDA) runs.
//!
//! Step t is the affine map `h ↦ A_t h + B_t`; two maps compose as
//! `(A₂, B₂) ∘ (A₁, B₁) = (A₂A₁, A₂B₁ + B₂)`. After the round with offset d
//! (1, 2, 4, ...), row t holds the composition of steps `t−2d+1..=t`, so
//! ⌈log₂ T⌉ rounds of a few element-wise operations over `[T, B, H]` replace T
//! sequential steps. It runs in linear space: products of gates in (0, 1) and
//! sums, no logarithm and no division, so it needs no sign of anything (the
//! paper's log-space scan needs positive values, hence its `g(·)`; see
//! `mingru/mod.rs`). The CPU engine runs the same recurrence sequentially, row
//! by row ([`forward_rows`], [`backward_rows`], with each cell's element-wise
//! math in its `cpu.rs`, [`ScanCell`]): there the batch's rows already give
//! every core its work, and a sequential scan does T steps of work instead of T·log₂T.
//!
//! Shapes: T steps, B batch, H hidden units; every tensor here is `[T, B, H]`
//! (or `[B, H]` for a state).
use super::{Backward, Tape};
use crate::model::cpu::{dims, empty, par_rows, Real, RowJob, View};
use std::ops::Range;
use tch::Tensor;

/// `H_1..H_T` of `H_t = A_t ⊙ H_{t-1} + B_t` from `H_0 = h0` (zero if none),
/// computed in place: `b` (`[T, B, H]`, a fresh tensor or the tape's own output
/// rows) ends holding the states; `a` is fresh too and is overwritten.
pub(super) fn scan(a: Tensor, b: &Tensor, h0: Option<&Tensor>) {
    let t = a.size()[0];
    if let Some(h0) = h0 {
        let _ = b.get(0).addcmul_(&a.get(0), h0); // B_1 + A_1 H_0: the first map applied
    }
    let mut d = 1;
    while d < t {
        let n = t - d;
        let (a_hi, a_lo) = (a.narrow(0, d, n), a.narrow(0, 0, n));
        // Both out of place first: each reads the previous round's values.
        let b_hi = b.narrow(0, d, n).addcmul(&a_hi, &b.narrow(0, 0, n));
        if 2 * d < t {
            let prod = &a_hi * &a_lo;
            a.narrow(0, d, n).copy_(&prod);
        }
        b.narrow(0, d, n).copy_(&b_hi);
        d *= 2;
    }
}

/// The backward pass of [`scan`]: `δ_t`, the whole gradient reaching `H_t`,
/// given `g_t`, the gradient reaching it from above: `δ_t = g_t + A_{t+1} ⊙ δ_{t+1}`
/// (`δ_T = g_T`), the same recurrence run backwards in time.
pub(super) fn adjoint(a: &Tensor, g: &Tensor) -> Tensor {
    let t = a.size()[0];
    // Reversed time: u_s = δ_{T−s} = g_{T−s} + A_{T−s+1} u_{s−1}, with u_0 = g_T
    // (its coefficient multiplies u_{−1} = 0).
    let a_rev = a.flip([0]);
    let coef = a_rev.zeros_like();
    coef.narrow(0, 1, t - 1).copy_(&a_rev.narrow(0, 0, t - 1));
    let u = g.flip([0]);
    scan(coef, &u, None);
    u.flip([0])
}

/// A linear-recurrence cell's element-wise math on the CPU engine (each cell's
/// `cpu.rs`); [`forward_rows`] and [`backward_rows`] run it along every row.
pub(super) trait ScanCell: Sync {
    /// Column blocks of the input projection: `xa` is `[T, B, GATES·H]`.
    const GATES: usize;

    /// One step of one row: `a` holds the step's pre-activations (`GATES·H`),
    /// overwritten with what the backward pass needs; `h = A ⊙ h_prev + B`.
    fn step<T: Real>(a: &mut [T], hd: usize, h_prev: &[T], h: &mut [T]);

    /// Its backward pass: `delta` is `δ_t`, the whole gradient reaching `h`;
    /// writes the pre-activations' gradients into `da`, and adds `A ⊙ δ_t`
    /// into `carry` (the gradient reaching `h_prev`) when there is a step before.
    fn step_back<T: Real>(a: &[T], hd: usize, h_prev: &[T], delta: &[T], da: &mut [T], carry: Option<&mut [T]>);
}

/// The forward tape of a [`ScanCell`] on the CPU engine: each thread's rows
/// through the whole sequence, one fused pass per row and step.
pub(super) fn forward_rows<C: ScanCell, T: Real>(xa: Tensor, state0: &[Tensor]) -> Tape {
    let xa = xa.contiguous();
    let (t, b, hd) = dims(&xa, &state0[0]);
    let mut tape = Tape::start(&state0[0], t as i64);
    let (xv, sv) = (View::<T>::of(&xa), View::<T>::of(&tape.states));
    par_rows(b, &Forward::<C, T> { t, hd, xv, sv, cell: std::marker::PhantomData });
    tape.saved = vec![xa];
    tape
}

struct Forward<C, T> {
    t: usize,
    hd: usize,
    xv: View<T>,
    sv: View<T>,
    cell: std::marker::PhantomData<fn() -> C>,
}

impl<C: ScanCell, T: Real> RowJob for Forward<C, T> {
    #[inline(always)]
    fn run(&self, rows: Range<usize>) {
        let (t, hd, g) = (self.t, self.hd, C::GATES);
        // SAFETY: the views' tensors are [T, B, ·] and outlive the job; this thread writes its own rows.
        unsafe {
            for r in rows {
                for s in 0..t {
                    C::step(self.xv.seg(s, r, 0, g * hd), hd, &self.sv.seg(s, r, 0, hd)[..], self.sv.seg(s + 1, r, 0, hd));
                }
            }
        }
    }
}

/// The backward tape of a [`ScanCell`] on the CPU engine: each row walks time
/// in reverse, `d_out`'s row of step s becoming `δ_s` as the carry from step
/// s+1 is added into it.
pub(super) fn backward_rows<C: ScanCell, T: Real>(tape: &Tape, d_out: &Tensor) -> Backward {
    let d_out = d_out.contiguous();
    let (t, b, hd) = dims(&d_out, &d_out);
    let d_a = empty(&[t, b, C::GATES * hd], &d_out);
    let (av, sv, ov, dav) = (View::<T>::of(&tape.saved[0]), View::<T>::of(&tape.states), View::<T>::of(&d_out), View::<T>::of(&d_a));
    par_rows(b, &Back::<C, T> { t, hd, av, sv, ov, dav, cell: std::marker::PhantomData });
    Backward { input: vec![(0, d_a)], hidden: vec![] }
}

struct Back<C, T> {
    t: usize,
    hd: usize,
    av: View<T>,
    sv: View<T>,
    ov: View<T>,
    dav: View<T>,
    cell: std::marker::PhantomData<fn() -> C>,
}

impl<C: ScanCell, T: Real> RowJob for Back<C, T> {
    #[inline(always)]
    fn run(&self, rows: Range<usize>) {
        let (t, hd, g) = (self.t, self.hd, C::GATES);
        // SAFETY: the views' tensors are [T, B, ·] and outlive the job; this thread writes its own rows.
        unsafe {
            for r in rows {
                for s in (0..t).rev() {
                    let carry = (s > 0).then(|| self.ov.seg(s - 1, r, 0, hd));
                    let (a, h_prev, delta) =
                        (&self.av.seg(s, r, 0, g * hd)[..], &self.sv.seg(s, r, 0, hd)[..], &self.ov.seg(s, r, 0, hd)[..]);
                    C::step_back(a, hd, h_prev, delta, self.dav.seg(s, r, 0, g * hd), carry);
                }
            }
        }
    }
}
