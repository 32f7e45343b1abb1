//! The GRU's tape on the CPU engine: per step, each thread's rows through the
//! hidden product ([`gemm_acc`] with the packed weights) and one fused pass
//! over each row for the gate math. Same buffers, same equations and same
//! order of operations as the libtorch tape beside it (`mod.rs`, whose module
//! doc gives the equations); the tests hold both to the independent reference.
use super::Gru;
use crate::model::cell::{block, Backward, Layer, Tape};
use crate::model::cpu::gemm::{gemm_acc, Packed};
use crate::model::cpu::{dims, empty, par_rows, values, Real, RowJob, View};
use std::ops::Range;
use tch::Tensor;

/// The GRU's forward tape (`Gru::forward_tape`).
pub(crate) fn gru_forward<T: Real>(g: &Gru, p: &Layer, xa: Tensor, state0: &[Tensor]) -> Tape {
    let xa = xa.contiguous();
    let (t, b, hd) = dims(&xa, &state0[0]);
    let (sig, after, has_z, has_r) = (g.sig(), g.after(), g.has_z, g.has_r);
    let (gw, rc) = ((sig + 1) * hd, g.r_col() as usize * hd); // row width; r's first column
    let tape = Tape::start(&state0[0], t as i64);
    // after: U = H_{t-1} W_hh + b_hh lives in the hidden products hh [T, B, G·H].
    let hh = if after { empty(&[t, b, gw], &xa) } else { empty(&[0], &xa) };
    let u = match (after, has_r) {
        (true, _) => block(&hh, sig as i64, 1, hd as i64),
        (false, true) => empty(&[t, b, hd], &xa),
        (false, false) => tape.h_prev(), // R ≡ 1: U = H_{t-1}
    };
    let d = if has_z { empty(&[t, b, hd], &xa) } else { empty(&[0], &xa) };
    let w_first = if after { p.packed_w_h::<T>(0..sig + 1, false) } else { p.packed_w_h::<T>(0..sig, false) };
    let w_hh = (!after).then(|| p.packed_w_h::<T>(sig..sig + 1, false));
    let b_hh: Vec<T> = p.b_h().map(|v| values(&v)).unwrap_or_default();
    let (xv, sv) = (View::<T>::of(&xa), View::<T>::of(&tape.states));
    let hv = after.then(|| View::<T>::of(&hh));
    let uv = (!after && has_r).then(|| View::<T>::of(&u));
    let dv = has_z.then(|| View::<T>::of(&d));
    let job = GruForward { t, hd, sig, gw, rc, after, w_first: &w_first, w_hh: w_hh.as_ref(), b_hh: &b_hh, xv, sv, hv, uv, dv };
    par_rows(b, &job);
    let mut tape = tape;
    tape.saved = vec![xa, u, d];
    tape
}

struct GruForward<'a, T> {
    t: usize,
    hd: usize,
    sig: usize,
    gw: usize,
    rc: usize,
    after: bool,
    w_first: &'a Packed<T>,
    w_hh: Option<&'a Packed<T>>,
    b_hh: &'a [T],
    xv: View<T>,
    sv: View<T>,
    hv: Option<View<T>>,
    uv: Option<View<T>>,
    dv: Option<View<T>>,
}

impl<T: Real> RowJob for GruForward<'_, T> {
    #[inline(always)]
    fn run(&self, rows: Range<usize>) {
        let GruForward { t, hd, sig, gw, rc, after, w_first, w_hh, b_hh, xv, sv, hv, uv, dv } = *self;
        // SAFETY: the views' tensors are [T, B, ·] and outlive the job; this thread writes its own rows.
        unsafe {
            let (r0, m) = (rows.start, rows.len());
            for s in 0..t {
                match hv {
                    // hh = H_{t-1} W_h + b_hh; the sigmoid gates add it to their input side.
                    Some(hv) => {
                        for r in rows.clone() {
                            hv.seg(s, r, 0, gw).copy_from_slice(b_hh);
                        }
                        gemm_acc(m, sv.row(s, r0), hd, w_first, hv.row(s, r0), gw);
                    }
                    None => gemm_acc(m, sv.row(s, r0), hd, w_first, xv.row(s, r0), gw),
                }
                for r in rows.clone() {
                    let (gates, c) = xv.seg(s, r, 0, gw).split_at_mut(sig * hd);
                    match hv {
                        Some(hv) => {
                            let (hg, hc) = hv.seg(s, r, 0, gw).split_at_mut(sig * hd);
                            for (x, y) in gates.iter_mut().zip(hg.iter()) {
                                *x = (*x + *y).sigmoid();
                            }
                            let rr = &gates[rc..rc + hd];
                            for ((c, r), h) in c.iter_mut().zip(rr).zip(hc.iter()) {
                                *c = r.fma(*h, *c).tanh();
                            }
                        }
                        None => {
                            for x in gates.iter_mut() {
                                *x = x.sigmoid();
                            }
                            if let Some(uv) = uv {
                                let h = &sv.seg(s, r, 0, hd)[..];
                                for ((u, r), h) in uv.seg(s, r, 0, hd).iter_mut().zip(&gates[rc..rc + hd]).zip(h) {
                                    *u = *r * *h; // U = R ⊙ H_{t-1}
                                }
                            }
                        }
                    }
                }
                if let Some(w_hh) = w_hh {
                    let src = uv.map_or(sv.row(s, r0), |uv| uv.row(s, r0));
                    gemm_acc(m, src, hd, w_hh, xv.row(s, r0).add(sig * hd), gw);
                }
                for r in rows.clone() {
                    let (gates, c) = xv.seg(s, r, 0, gw).split_at_mut(sig * hd);
                    if !after {
                        for x in c.iter_mut() {
                            *x = x.tanh();
                        }
                    }
                    let (h, out) = (&sv.seg(s, r, 0, hd)[..], sv.seg(s + 1, r, 0, hd));
                    match dv {
                        // H_t = C + Z ⊙ D, D = H_{t-1} − C (kept for dZ).
                        Some(dv) => {
                            let (z, dd) = (&gates[..hd], dv.seg(s, r, 0, hd));
                            for j in 0..hd {
                                dd[j] = h[j] - c[j];
                                out[j] = z[j].fma(dd[j], c[j]);
                            }
                        }
                        None => out.copy_from_slice(c),
                    }
                }
            }
        }
    }
}

/// The GRU's backward tape (`Gru::backward_tape`).
pub(crate) fn gru_backward<T: Real>(g: &Gru, p: &Layer, tape: &Tape, d_out: &Tensor) -> Backward {
    let d_out = d_out.contiguous();
    let (t, b, hd) = dims(&d_out, &d_out);
    let (acts, u, d) = (&tape.saved[0], &tape.saved[1], &tape.saved[2]);
    let (sig, after, has_z, has_r) = (g.sig(), g.after(), g.has_z, g.has_r);
    let (gw, rc) = ((sig + 1) * hd, g.r_col() as usize * hd);
    let h_prev = tape.h_prev();
    // d_a: [dA_z, dA_r], and after dU too (one product per step covers W_h).
    let daw = if after { gw } else { sig * hd };
    let (d_a, d_ah) = (empty(&[t, b, daw], &d_out), empty(&[t, b, hd], &d_out));
    let w_a_t = p.packed_w_h::<T>(0..daw / hd, true);
    let w_hh_t = (!after).then(|| p.packed_w_h::<T>(sig..sig + 1, true));
    let (av, sv, ov) = (View::<T>::of(acts), View::<T>::of(&tape.states), View::<T>::of(&d_out));
    let (dav, dhv) = (View::<T>::of(&d_a), View::<T>::of(&d_ah));
    let uv = after.then(|| View::<T>::of(u)); // a column block of the hidden products
    let dv = has_z.then(|| View::<T>::of(d));
    let job =
        GruBackward { t, hd, sig, gw, rc, daw, after, has_r, has_z, w_a_t: &w_a_t, w_hh_t: w_hh_t.as_ref(), av, sv, ov, dav, dhv, uv, dv };
    par_rows(b, &job);
    let input = vec![(0, block(&d_a, 0, sig as i64, hd as i64)), (sig, d_ah.shallow_clone())];
    match after {
        true => Backward { input, hidden: vec![(0, h_prev, d_a)] },
        false => Backward { input, hidden: vec![(0, h_prev, d_a), (sig, u.shallow_clone(), d_ah)] },
    }
}

struct GruBackward<'a, T> {
    t: usize,
    hd: usize,
    sig: usize,
    gw: usize,
    rc: usize,
    daw: usize,
    after: bool,
    has_r: bool,
    has_z: bool,
    w_a_t: &'a Packed<T>,
    w_hh_t: Option<&'a Packed<T>>,
    av: View<T>,
    sv: View<T>,
    ov: View<T>,
    dav: View<T>,
    dhv: View<T>,
    uv: Option<View<T>>,
    dv: Option<View<T>>,
}

impl<T: Real> RowJob for GruBackward<'_, T> {
    #[inline(always)]
    fn run(&self, rows: Range<usize>) {
        let GruBackward { t, hd, sig, gw, rc, daw, after, has_r, has_z, w_a_t, w_hh_t, av, sv, ov, dav, dhv, uv, dv } = *self;
        // SAFETY: the views' tensors are [T, B, ·] and outlive the job; this thread writes its own rows.
        unsafe {
            let (r0, m) = (rows.start, rows.len());
            let mut du = vec![T::ZERO; if after { 0 } else { m * hd }]; // before: dU = dA_h W_hhᵀ
            for s in (0..t).rev() {
                for r in rows.clone() {
                    let (dh, a, da, dah) =
                        (&ov.seg(s, r, 0, hd)[..], &av.seg(s, r, 0, gw)[..], dav.seg(s, r, 0, daw), dhv.seg(s, r, 0, hd));
                    let c = &a[sig * hd..sig * hd + hd];
                    match dv {
                        Some(dv) => {
                            let (z, dd) = (&a[..hd], &dv.seg(s, r, 0, hd)[..]);
                            let (da_z, dah) = (&mut da[..hd], &mut dah[..hd]);
                            for j in 0..hd {
                                let dc = dh[j] * (T::ONE - z[j]);
                                dah[j] = dc * (T::ONE - c[j] * c[j]);
                                da_z[j] = dh[j] * dd[j] * ((T::ONE - z[j]) * z[j]);
                            }
                        }
                        None => {
                            for j in 0..hd {
                                dah[j] = dh[j] * (T::ONE - c[j] * c[j]);
                            }
                        }
                    }
                    if let Some(uv) = uv {
                        // after: dR = dA_h ⊙ U, dU = dA_h ⊙ R.
                        let (rr, uu) = (&a[rc..rc + hd], &uv.seg(s, r, 0, hd)[..]);
                        let (head, du) = da.split_at_mut(sig * hd);
                        let da_r = &mut head[rc..rc + hd];
                        for j in 0..hd {
                            da_r[j] = dah[j] * uu[j] * ((T::ONE - rr[j]) * rr[j]);
                            du[j] = dah[j] * rr[j];
                        }
                    }
                }
                if let Some(w_hh_t) = w_hh_t {
                    du.fill(T::ZERO);
                    gemm_acc(m, dhv.row(s, r0), hd, w_hh_t, du.as_mut_ptr(), hd);
                    if has_r {
                        for (i, r) in rows.clone().enumerate() {
                            // before: dR = dU ⊙ H_{t-1}.
                            let (a, h, da_r) = (&av.seg(s, r, rc, hd)[..], &sv.seg(s, r, 0, hd)[..], dav.seg(s, r, rc, hd));
                            let du = &du[i * hd..(i + 1) * hd];
                            for j in 0..hd {
                                da_r[j] = du[j] * h[j] * ((T::ONE - a[j]) * a[j]);
                            }
                        }
                    }
                }
                if s == 0 {
                    break; // H_0 comes from a detached state: no gradient for it.
                }
                gemm_acc(m, dav.row(s, r0), daw, w_a_t, ov.row(s - 1, r0), hd);
                for (i, r) in rows.clone().enumerate() {
                    let (next, dh, a) = (ov.seg(s - 1, r, 0, hd), &ov.seg(s, r, 0, hd)[..], &av.seg(s, r, 0, gw)[..]);
                    if !after {
                        let du = &du[i * hd..(i + 1) * hd];
                        match has_r {
                            true => (0..hd).for_each(|j| next[j] = du[j].fma(a[rc + j], next[j])),
                            false => (0..hd).for_each(|j| next[j] = next[j] + du[j]),
                        }
                    }
                    if has_z {
                        (0..hd).for_each(|j| next[j] = dh[j].fma(a[j], next[j]));
                    }
                }
            }
        }
    }
}
