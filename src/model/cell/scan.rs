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
//! by row (each cell's `cpu.rs`): there the batch's rows already give every core
//! its work, and a sequential scan does T steps of work instead of T·log₂T.
//!
//! Shapes: T steps, B batch, H hidden units; every tensor here is `[T, B, H]`
//! (or `[B, H]` for a state).
use tch::Tensor;

/// `H_1..H_T` of `H_t = A_t ⊙ H_{t-1} + B_t` from `H_0 = h0` (zero if none).
pub(super) fn scan(a: &Tensor, b: &Tensor, h0: Option<&Tensor>) -> Tensor {
    let t = a.size()[0];
    let (a, b) = (a.copy(), b.copy());
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
    b
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
    scan(&coef, &g.flip([0]), None).flip([0])
}
