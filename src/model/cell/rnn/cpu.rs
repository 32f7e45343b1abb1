//! The RNN's tape on the CPU engine: per step, each thread's rows through the
//! hidden product ([`gemm_acc`] with the packed weights) and one fused pass
//! over each row for the gate math. Same buffers, same equations and same
//! order of operations as the libtorch tape beside it (`mod.rs`, whose module
//! doc gives the equations); the tests hold both to the independent reference.
use crate::model::cell::{Backward, Layer, Tape};
use crate::model::cpu::gemm::{gemm_acc, Packed};
use crate::model::cpu::{dims, par_rows, Real, RowJob, View};
use std::ops::Range;
use tch::Tensor;

/// The RNN's forward tape (`Rnn::forward_tape`).
pub(crate) fn rnn_forward<T: Real>(p: &Layer, xa: Tensor, state0: &[Tensor]) -> Tape {
    let xa = xa.contiguous();
    let (t, b, hd) = dims(&xa, &state0[0]);
    let tape = Tape::start(&state0[0], t as i64);
    let w = p.packed_w_h::<T>(0..1, false);
    let (xv, sv) = (View::<T>::of(&xa), View::<T>::of(&tape.states));
    let job = RnnForward { t, hd, w: &w, xv, sv };
    par_rows(b, &job);
    tape
}

struct RnnForward<'a, T> {
    t: usize,
    hd: usize,
    w: &'a Packed<T>,
    xv: View<T>,
    sv: View<T>,
}

impl<T: Real> RowJob for RnnForward<'_, T> {
    #[inline(always)]
    fn run(&self, rows: Range<usize>) {
        let RnnForward { t, hd, w, xv, sv } = *self;
        // SAFETY: the views' tensors are [T, B, ·] and outlive the job; this thread writes its own rows.
        unsafe {
            let (r0, m) = (rows.start, rows.len());
            for s in 0..t {
                gemm_acc(m, sv.row(s, r0), hd, w, xv.row(s, r0), hd);
                for r in rows.clone() {
                    for (h, a) in sv.seg(s + 1, r, 0, hd).iter_mut().zip(xv.seg(s, r, 0, hd).iter()) {
                        *h = a.tanh();
                    }
                }
            }
        }
    }
}

/// The RNN's backward tape (`Rnn::backward_tape`).
pub(crate) fn rnn_backward<T: Real>(p: &Layer, tape: &Tape, d_out: &Tensor) -> Backward {
    let d_out = d_out.contiguous();
    let (t, b, hd) = dims(&d_out, &d_out);
    let d_a = d_out.empty_like();
    let w_t = p.packed_w_h::<T>(0..1, true);
    let (sv, ov, dav) = (View::<T>::of(&tape.states), View::<T>::of(&d_out), View::<T>::of(&d_a));
    let job = RnnBackward { t, hd, w_t: &w_t, sv, ov, dav };
    par_rows(b, &job);
    Backward { input: vec![(0, d_a.shallow_clone())], hidden: vec![(0, tape.h_prev(), d_a)] }
}

struct RnnBackward<'a, T> {
    t: usize,
    hd: usize,
    w_t: &'a Packed<T>,
    sv: View<T>,
    ov: View<T>,
    dav: View<T>,
}

impl<T: Real> RowJob for RnnBackward<'_, T> {
    #[inline(always)]
    fn run(&self, rows: Range<usize>) {
        let RnnBackward { t, hd, w_t, sv, ov, dav } = *self;
        // SAFETY: the views' tensors are [T, B, ·] and outlive the job; this thread writes its own rows.
        unsafe {
            let (r0, m) = (rows.start, rows.len());
            for s in (0..t).rev() {
                for r in rows.clone() {
                    let (h, dh, da) = (&sv.seg(s + 1, r, 0, hd)[..], &ov.seg(s, r, 0, hd)[..], dav.seg(s, r, 0, hd));
                    for j in 0..hd {
                        da[j] = dh[j] * (T::ONE - h[j] * h[j]);
                    }
                }
                if s > 0 {
                    gemm_acc(m, dav.row(s, r0), hd, w_t, ov.row(s - 1, r0), hd);
                }
            }
        }
    }
}
