//! The LSTM's tape on the CPU engine: per step, each thread's rows through the
//! hidden product ([`gemm_acc`] with the packed weights) and one fused pass
//! over each row for the gate math. Same buffers, same equations and same
//! order of operations as the libtorch tape beside it (`mod.rs`, whose module
//! doc gives the equations); the tests hold both to the independent reference.
use crate::model::cell::{Backward, Layer, Tape};
use crate::model::cpu::gemm::{gemm_acc, Packed};
use crate::model::cpu::{dims, empty, par_rows, Real, RowJob, View};
use std::ops::Range;
use tch::Tensor;

/// The LSTM's forward tape (`Lstm::forward_tape`); columns i f o c.
pub(crate) fn lstm_forward<T: Real>(p: &Layer, xa: Tensor, state0: &[Tensor]) -> Tape {
    let xa = xa.contiguous();
    let (t, b, hd) = dims(&xa, &state0[0]);
    let mut tape = Tape::start(&state0[0], t as i64);
    let cs = empty(&[t + 1, b, hd], &xa); // C_0..C_T
    cs.get(0).copy_(&state0[1]);
    let tanh_c = empty(&[t, b, hd], &xa);
    let w = p.packed_w_h::<T>(0..4, false);
    let (xv, sv, cv, tv) = (View::<T>::of(&xa), View::<T>::of(&tape.states), View::<T>::of(&cs), View::<T>::of(&tanh_c));
    let job = LstmForward { t, hd, w: &w, xv, sv, cv, tv };
    par_rows(b, &job);
    tape.final_extra = vec![cs.get(t as i64)];
    tape.saved = vec![xa, cs, tanh_c];
    tape
}

struct LstmForward<'a, T> {
    t: usize,
    hd: usize,
    w: &'a Packed<T>,
    xv: View<T>,
    sv: View<T>,
    cv: View<T>,
    tv: View<T>,
}

impl<T: Real> RowJob for LstmForward<'_, T> {
    #[inline(always)]
    fn run(&self, rows: Range<usize>) {
        let LstmForward { t, hd, w, xv, sv, cv, tv } = *self;
        // SAFETY: the views' tensors are [T, B, ·] and outlive the job; this thread writes its own rows.
        unsafe {
            let (r0, m) = (rows.start, rows.len());
            for s in 0..t {
                gemm_acc(m, sv.row(s, r0), hd, w, xv.row(s, r0), 4 * hd);
                for r in rows.clone() {
                    let (ifo, g) = xv.seg(s, r, 0, 4 * hd).split_at_mut(3 * hd);
                    for x in ifo.iter_mut() {
                        *x = x.sigmoid();
                    }
                    let (i, f, o, g) = (&ifo[..hd], &ifo[hd..2 * hd], &ifo[2 * hd..], &mut g[..hd]);
                    let (c_prev, c, tc, h) =
                        (&cv.seg(s, r, 0, hd)[..], cv.seg(s + 1, r, 0, hd), tv.seg(s, r, 0, hd), sv.seg(s + 1, r, 0, hd));
                    for j in 0..hd {
                        g[j] = g[j].tanh();
                        c[j] = i[j].fma(g[j], f[j] * c_prev[j]);
                        tc[j] = c[j].tanh();
                        h[j] = o[j] * tc[j];
                    }
                }
            }
        }
    }
}

/// The LSTM's backward tape (`Lstm::backward_tape`).
pub(crate) fn lstm_backward<T: Real>(p: &Layer, tape: &Tape, d_out: &Tensor) -> Backward {
    let d_out = d_out.contiguous();
    let (t, b, hd) = dims(&d_out, &d_out);
    let (acts, cs, tanh_c) = (&tape.saved[0], &tape.saved[1], &tape.saved[2]);
    let d_a = empty(&[t, b, 4 * hd], &d_out);
    let w_t = p.packed_w_h::<T>(0..4, true);
    let (av, cv, tv, ov, dav) = (View::<T>::of(acts), View::<T>::of(cs), View::<T>::of(tanh_c), View::<T>::of(&d_out), View::<T>::of(&d_a));
    let job = LstmBackward { t, hd, w_t: &w_t, av, cv, tv, ov, dav };
    par_rows(b, &job);
    Backward { input: vec![(0, d_a.shallow_clone())], hidden: vec![(0, tape.h_prev(), d_a)] }
}

struct LstmBackward<'a, T> {
    t: usize,
    hd: usize,
    w_t: &'a Packed<T>,
    av: View<T>,
    cv: View<T>,
    tv: View<T>,
    ov: View<T>,
    dav: View<T>,
}

impl<T: Real> RowJob for LstmBackward<'_, T> {
    #[inline(always)]
    fn run(&self, rows: Range<usize>) {
        let LstmBackward { t, hd, w_t, av, cv, tv, ov, dav } = *self;
        // SAFETY: the views' tensors are [T, B, ·] and outlive the job; this thread writes its own rows.
        unsafe {
            let (r0, m) = (rows.start, rows.len());
            let mut carry = vec![T::ZERO; m * hd]; // the gradient reaching C_t from step t+1
            for s in (0..t).rev() {
                for (k, r) in rows.clone().enumerate() {
                    let a = &av.seg(s, r, 0, 4 * hd)[..];
                    let (i, f, o, g) = (&a[..hd], &a[hd..2 * hd], &a[2 * hd..3 * hd], &a[3 * hd..]);
                    let (dh, tc, c_prev) = (&ov.seg(s, r, 0, hd)[..], &tv.seg(s, r, 0, hd)[..], &cv.seg(s, r, 0, hd)[..]);
                    let da = dav.seg(s, r, 0, 4 * hd);
                    let carry = &mut carry[k * hd..(k + 1) * hd];
                    for j in 0..hd {
                        let d_o = dh[j] * tc[j];
                        let dc = (dh[j] * o[j]) * (T::ONE - tc[j] * tc[j]) + carry[j];
                        let (d_i, d_f, d_g) = (dc * g[j], dc * c_prev[j], dc * i[j]);
                        carry[j] = dc * f[j];
                        da[j] = d_i * ((T::ONE - i[j]) * i[j]);
                        da[hd + j] = d_f * ((T::ONE - f[j]) * f[j]);
                        da[2 * hd + j] = d_o * ((T::ONE - o[j]) * o[j]);
                        da[3 * hd + j] = d_g * (T::ONE - g[j] * g[j]);
                    }
                }
                if s > 0 {
                    gemm_acc(m, dav.row(s, r0), 4 * hd, w_t, ov.row(s - 1, r0), hd);
                }
            }
        }
    }
}
