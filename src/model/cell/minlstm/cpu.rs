//! The minLSTM's tape on the CPU engine, as the minGRU's (`mingru/cpu.rs`): each
//! thread's rows through the whole sequence, one fused pass per row and step,
//! no matrix product inside the time loop. Same buffers and equations as the
//! libtorch tape beside it (`mod.rs`, whose module doc gives them); the tests
//! hold both to the independent reference.
use crate::model::cell::{Backward, Tape};
use crate::model::cpu::{dims, empty, par_rows, Real, RowJob, View};
use std::ops::Range;
use tch::Tensor;

/// The minLSTM's forward tape (`MinLstm::forward_tape`); columns f i h.
pub(crate) fn minlstm_forward<T: Real>(xa: Tensor, state0: &[Tensor]) -> Tape {
    let xa = xa.contiguous();
    let (t, b, hd) = dims(&xa, &state0[0]);
    let mut tape = Tape::start(&state0[0], t as i64);
    let (xv, sv) = (View::<T>::of(&xa), View::<T>::of(&tape.states));
    par_rows(b, &MinLstmForward { t, hd, xv, sv });
    tape.saved = vec![xa];
    tape
}

struct MinLstmForward<T> {
    t: usize,
    hd: usize,
    xv: View<T>,
    sv: View<T>,
}

impl<T: Real> RowJob for MinLstmForward<T> {
    #[inline(always)]
    fn run(&self, rows: Range<usize>) {
        let MinLstmForward { t, hd, xv, sv } = *self;
        // SAFETY: the views' tensors are [T, B, ·] and outlive the job; this thread writes its own rows.
        unsafe {
            for r in rows {
                for s in 0..t {
                    let a = xv.seg(s, r, 0, 3 * hd);
                    let (f, rest) = a.split_at_mut(hd);
                    let (i, c) = rest.split_at_mut(hd);
                    let (h_prev, h) = (&sv.seg(s, r, 0, hd)[..], sv.seg(s + 1, r, 0, hd));
                    for j in 0..hd {
                        f[j] = f[j].sigmoid();
                        i[j] = i[j].sigmoid();
                        let sum = f[j] + i[j];
                        h[j] = (f[j] / sum) * h_prev[j] + (i[j] / sum) * c[j];
                    }
                }
            }
        }
    }
}

/// The minLSTM's backward tape (`MinLstm::backward_tape`).
pub(crate) fn minlstm_backward<T: Real>(tape: &Tape, d_out: &Tensor) -> Backward {
    let d_out = d_out.contiguous();
    let (t, b, hd) = dims(&d_out, &d_out);
    let d_a = empty(&[t, b, 3 * hd], &d_out);
    let (av, sv, ov, dav) = (View::<T>::of(&tape.saved[0]), View::<T>::of(&tape.states), View::<T>::of(&d_out), View::<T>::of(&d_a));
    par_rows(b, &MinLstmBackward { t, hd, av, sv, ov, dav });
    Backward { input: vec![(0, d_a)], hidden: vec![] }
}

struct MinLstmBackward<T> {
    t: usize,
    hd: usize,
    av: View<T>,
    sv: View<T>,
    ov: View<T>,
    dav: View<T>,
}

impl<T: Real> RowJob for MinLstmBackward<T> {
    #[inline(always)]
    fn run(&self, rows: Range<usize>) {
        let MinLstmBackward { t, hd, av, sv, ov, dav } = *self;
        // SAFETY: the views' tensors are [T, B, ·] and outlive the job; this thread writes its own rows.
        unsafe {
            for r in rows {
                // d_out's row of step s becomes δ_s: the carry from step s+1 is added into it.
                for s in (0..t).rev() {
                    let a = &av.seg(s, r, 0, 3 * hd)[..];
                    let (f, i, c) = (&a[..hd], &a[hd..2 * hd], &a[2 * hd..]);
                    let (h_prev, delta) = (&sv.seg(s, r, 0, hd)[..], &ov.seg(s, r, 0, hd)[..]);
                    let da = dav.seg(s, r, 0, 3 * hd);
                    for j in 0..hd {
                        let sum = f[j] + i[j];
                        let (fp, ip) = (f[j] / sum, i[j] / sum);
                        let q = fp * ip * (delta[j] * (h_prev[j] - c[j]));
                        da[j] = q * (T::ONE - f[j]);
                        da[hd + j] = -q * (T::ONE - i[j]);
                        da[2 * hd + j] = delta[j] * ip;
                    }
                    if s > 0 {
                        let below = ov.seg(s - 1, r, 0, hd);
                        for j in 0..hd {
                            below[j] = delta[j].fma(f[j] / (f[j] + i[j]), below[j]);
                        }
                    }
                }
            }
        }
    }
}
