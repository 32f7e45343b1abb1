//! The minGRU's tape on the CPU engine: each thread's rows through the whole
//! sequence, one fused pass per row and step (the gate, the candidate and the
//! state update), no matrix product inside the time loop. Same buffers and
//! equations as the libtorch tape beside it (`mod.rs`, whose module doc gives
//! them; that tape runs the recurrence as a log-depth scan, this one
//! sequentially, see `scan.rs`); the tests hold both to the independent reference.
use crate::model::cell::{Backward, Tape};
use crate::model::cpu::{dims, empty, par_rows, Real, RowJob, View};
use std::ops::Range;
use tch::Tensor;

/// The minGRU's forward tape (`MinGru::forward_tape`); columns z h.
pub(crate) fn mingru_forward<T: Real>(xa: Tensor, state0: &[Tensor]) -> Tape {
    let xa = xa.contiguous();
    let (t, b, hd) = dims(&xa, &state0[0]);
    let mut tape = Tape::start(&state0[0], t as i64);
    let (xv, sv) = (View::<T>::of(&xa), View::<T>::of(&tape.states));
    par_rows(b, &MinGruForward { t, hd, xv, sv });
    tape.saved = vec![xa];
    tape
}

struct MinGruForward<T> {
    t: usize,
    hd: usize,
    xv: View<T>,
    sv: View<T>,
}

impl<T: Real> RowJob for MinGruForward<T> {
    #[inline(always)]
    fn run(&self, rows: Range<usize>) {
        let MinGruForward { t, hd, xv, sv } = *self;
        // SAFETY: the views' tensors are [T, B, ·] and outlive the job; this thread writes its own rows.
        unsafe {
            for r in rows {
                for s in 0..t {
                    let (z, c) = xv.seg(s, r, 0, 2 * hd).split_at_mut(hd);
                    let (h_prev, h) = (&sv.seg(s, r, 0, hd)[..], sv.seg(s + 1, r, 0, hd));
                    for j in 0..hd {
                        z[j] = z[j].sigmoid();
                        h[j] = z[j].fma(c[j], (T::ONE - z[j]) * h_prev[j]);
                    }
                }
            }
        }
    }
}

/// The minGRU's backward tape (`MinGru::backward_tape`).
pub(crate) fn mingru_backward<T: Real>(tape: &Tape, d_out: &Tensor) -> Backward {
    let d_out = d_out.contiguous();
    let (t, b, hd) = dims(&d_out, &d_out);
    let d_a = empty(&[t, b, 2 * hd], &d_out);
    let (av, sv, ov, dav) = (View::<T>::of(&tape.saved[0]), View::<T>::of(&tape.states), View::<T>::of(&d_out), View::<T>::of(&d_a));
    par_rows(b, &MinGruBackward { t, hd, av, sv, ov, dav });
    Backward { input: vec![(0, d_a)], hidden: vec![] }
}

struct MinGruBackward<T> {
    t: usize,
    hd: usize,
    av: View<T>,
    sv: View<T>,
    ov: View<T>,
    dav: View<T>,
}

impl<T: Real> RowJob for MinGruBackward<T> {
    #[inline(always)]
    fn run(&self, rows: Range<usize>) {
        let MinGruBackward { t, hd, av, sv, ov, dav } = *self;
        // SAFETY: the views' tensors are [T, B, ·] and outlive the job; this thread writes its own rows.
        unsafe {
            for r in rows {
                // d_out's row of step s becomes δ_s: the carry from step s+1 is added into it.
                for s in (0..t).rev() {
                    let a = &av.seg(s, r, 0, 2 * hd)[..];
                    let (z, c) = (&a[..hd], &a[hd..]);
                    let (h_prev, delta) = (&sv.seg(s, r, 0, hd)[..], &ov.seg(s, r, 0, hd)[..]);
                    let da = dav.seg(s, r, 0, 2 * hd);
                    for j in 0..hd {
                        da[j] = delta[j] * (c[j] - h_prev[j]) * ((T::ONE - z[j]) * z[j]);
                        da[hd + j] = delta[j] * z[j];
                    }
                    if s > 0 {
                        let below = ov.seg(s - 1, r, 0, hd);
                        for j in 0..hd {
                            below[j] = delta[j].fma(T::ONE - z[j], below[j]);
                        }
                    }
                }
            }
        }
    }
}
