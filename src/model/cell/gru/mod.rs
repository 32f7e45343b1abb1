//! The GRU of d2l's chapter, in its two reset placements and the exercise's two
//! ablations. For `X_t [B, in]` and `H_{t-1} [B, H]`:
//!
//! ```text
//! Z_t  = σ(X_t W_xz + H_{t-1} W_hz + b_z)                     update gate
//! R_t  = σ(X_t W_xr + H_{t-1} W_hr + b_r)                     reset gate
//! H~_t = tanh(X_t W_xh + (R_t ⊙ H_{t-1}) W_hh + b_h)          reset "before" (d2l's code)
//! H~_t = tanh(X_t W_xh + b_xh + R_t ⊙ (H_{t-1} W_hh + b_hh))  reset "after" (PyTorch, cuDNN)
//! H_t  = Z_t ⊙ H_{t-1} + (1 − Z_t) ⊙ H~_t
//! ```
//!
//! `reset-only` drops the update gate (Z ≡ 0, so H_t = H~_t); `update-only` drops
//! the reset gate (R ≡ 1, where both placements are the same function; grulm uses
//! the "before" form, with one bias).
//!
//! Fused columns: `[z][r] h` (the gates present, then the candidate).
//!
//! Backward, per step (C the candidate, D = H_{t-1} − C, so H_t = C + Z ⊙ D), with
//! dH the gradient reaching H_t:
//!
//! ```text
//! dZ = dH ⊙ D      dC = dH ⊙ (1 − Z)      dA_h = dC ⊙ (1 − C²)
//! before: U = R ⊙ H_{t-1};  dU = dA_h W_hhᵀ;  dR = dU ⊙ H_{t-1}
//!         dH_{t-1} = dH ⊙ Z + dU ⊙ R + [dA_z, dA_r] [W_hz, W_hr]ᵀ
//! after:  U = H_{t-1} W_hh + b_hh;  dR = dA_h ⊙ U;  dU = dA_h ⊙ R
//!         dH_{t-1} = dH ⊙ Z + [dA_z, dA_r, dU] [W_hz, W_hr, W_hh]ᵀ
//! dA_z = dZ ⊙ Z(1 − Z)      dA_r = dR ⊙ R(1 − R)
//! ```
mod cpu;

use super::{block, Backward, Cell, GateDef, Layer, Tape};
use crate::model::cpu::Real;
use crate::model::{GruGates, ResetGate};
use tch::Tensor;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gru {
    reset: ResetGate,
    pub(crate) has_z: bool,
    pub(crate) has_r: bool,
}

impl Gru {
    /// `update-only` has no reset gate, so its placement is moot: it is stored as
    /// "before" (the config refuses "after" with it).
    pub fn new(reset: ResetGate, gates: GruGates) -> Gru {
        let (has_z, has_r) = match gates {
            GruGates::Both => (true, true),
            GruGates::ResetOnly => (false, true),
            GruGates::UpdateOnly => (true, false),
        };
        Gru { reset: if has_r { reset } else { ResetGate::Before }, has_z, has_r }
    }

    pub(crate) fn after(&self) -> bool {
        self.reset == ResetGate::After
    }

    /// Number of sigmoid gates (z and/or r), which come first in the columns.
    pub(crate) fn sig(&self) -> usize {
        self.has_z as usize + self.has_r as usize
    }

    /// Column offsets (in units of H) of z and r.
    fn z_col(&self) -> i64 {
        0
    }

    pub(crate) fn r_col(&self) -> i64 {
        self.has_z as i64
    }
}

impl Cell for Gru {
    fn gates(&self) -> Vec<GateDef> {
        let mut v = vec![];
        if self.has_z {
            v.push(GateDef::new("z", "b_z"));
        }
        if self.has_r {
            v.push(GateDef::new("r", "b_r"));
        }
        v.push(match self.after() {
            true => GateDef { name: "h", bias: "b_xh", hidden_bias: Some("b_hh"), hidden: true },
            false => GateDef::new("h", "b_h"),
        });
        v
    }

    fn describe(&self) -> (&'static str, Option<String>) {
        let reset = if self.after() { "reset after" } else { "reset before" };
        let detail = match (self.has_z, self.has_r) {
            (true, true) => reset.to_string(),
            (false, true) => format!("reset gate only, {reset}"),
            _ => "update gate only".into(),
        };
        ("GRU", Some(detail))
    }

    fn gates_reference(&self, p: &Layer, x: &Tensor, state: &[Tensor]) -> Vec<(&'static str, Tensor)> {
        let h = &state[0];
        let gate = |n: &'static str| {
            let g = p.gate(n);
            (n, (x.mm(&g.w_x) + h.mm(g.w_h()) + &g.b).sigmoid())
        };
        [(self.has_z, "z"), (self.has_r, "r")].into_iter().filter(|g| g.0).map(|g| gate(g.1)).collect()
    }

    fn step_reference(&self, p: &Layer, x: &Tensor, state: &[Tensor]) -> Vec<Tensor> {
        let h = &state[0];
        let gates = self.gates_reference(p, x, state);
        let gate = |n: &str| gates.iter().find(|g| g.0 == n).map(|g| &g.1);
        let (z, r) = (gate("z"), gate("r"));
        let c = p.gate("h");
        let h_tilde = match (r, &c.b_h) {
            (Some(r), Some(b_hh)) => (x.mm(&c.w_x) + &c.b + r * (h.mm(c.w_h()) + b_hh)).tanh(),
            (Some(r), None) => (x.mm(&c.w_x) + (r * h).mm(c.w_h()) + &c.b).tanh(),
            (None, _) => (x.mm(&c.w_x) + h.mm(c.w_h()) + &c.b).tanh(), // R ≡ 1
        };
        vec![match z {
            Some(z) => z * h + (1.0 - z) * h_tilde,
            None => h_tilde, // Z ≡ 0
        }]
    }

    fn step_fused(&self, p: &Layer, xa: &Tensor, w_h: &Tensor, state: &[Tensor]) -> Vec<Tensor> {
        let h = &state[0];
        let hd = h.size()[1];
        let sig = self.sig() as i64;
        let (gates, c) = if self.after() {
            let b_hh = p.gate("h").b_h.as_ref().expect("reset-after candidate has b_hh");
            let hh = h.mm(w_h);
            let gates = (block(xa, 0, sig, hd) + block(&hh, 0, sig, hd)).sigmoid();
            let r = block(&gates, self.r_col(), 1, hd);
            (gates.shallow_clone(), (block(xa, sig, 1, hd) + r * (block(&hh, sig, 1, hd) + b_hh)).tanh())
        } else {
            let gates = block(xa, 0, sig, hd).addmm(h, &block(w_h, 0, sig, hd)).sigmoid();
            let u = if self.has_r { block(&gates, self.r_col(), 1, hd) * h } else { h.shallow_clone() };
            (gates.shallow_clone(), block(xa, sig, 1, hd).addmm(&u, &block(w_h, sig, 1, hd)).tanh())
        };
        vec![if self.has_z {
            // z*h + (1-z)*h~, with one product fewer.
            &c + block(&gates, self.z_col(), 1, hd) * (h - &c)
        } else {
            c
        }]
    }

    fn forward_tape(&self, p: &Layer, xa: Tensor, state0: &[Tensor]) -> Tape {
        let (t, b, hd) = (xa.size()[0], xa.size()[1], state0[0].size()[1]);
        let sig = self.sig() as i64;
        let opts = (xa.kind(), xa.device());
        let mut tape = Tape::start(&state0[0], t);
        let (out, h_prev) = (tape.out(), tape.h_prev());
        // The gates and the candidate are computed in place on the projections:
        // afterwards xa holds [σ(z), σ(r), C] of every step.
        let mut h = state0[0].shallow_clone();
        // What the candidate's hidden weights multiply: before, U = R ⊙ H_{t-1} (H_{t-1}
        // itself without a reset gate); after, U = H_{t-1} W_hh + b_hh.
        let u;
        // Per step, in launches (what a GPU step costs): 6.
        if self.after() {
            let w_h = p.w_h();
            let b_h = p.b_h().expect("reset-after layer has b_hh");
            let hh = Tensor::empty([t, b, (sig + 1) * hd], opts);
            u = block(&hh, sig, 1, hd);
            for s in 0..t {
                let (a, hs) = (xa.get(s), hh.get(s));
                let _ = b_h.addmm_out(&hs, &h, &w_h);
                let mut gates = block(&a, 0, sig, hd);
                let _ = gates.g_add_(&block(&hs, 0, sig, hd));
                let _ = gates.sigmoid_();
                let mut c = block(&a, sig, 1, hd);
                let _ = c.addcmul_(&block(&a, self.r_col(), 1, hd), &block(&hs, sig, 1, hd));
                let _ = c.tanh_();
                h = self.update(&out, s, &h, &a, &c, hd);
            }
        } else {
            let w_sig = p.w_h_of(0, sig as usize);
            let w_hh = p.gate("h").w_h();
            u = if self.has_r { Tensor::empty([t, b, hd], opts) } else { h_prev.shallow_clone() };
            for s in 0..t {
                let a = xa.get(s);
                let mut gates = block(&a, 0, sig, hd);
                let _ = gates.addmm_(&h, &w_sig);
                let _ = gates.sigmoid_();
                let us = u.get(s);
                if self.has_r {
                    let _ = block(&a, self.r_col(), 1, hd).mul_out(&us, &h);
                }
                let mut c = block(&a, sig, 1, hd);
                let _ = c.addmm_(&us, w_hh);
                let _ = c.tanh_();
                h = self.update(&out, s, &h, &a, &c, hd);
            }
        }
        // D = H_{t-1} − C for all steps in one go (dZ needs it).
        let d = if self.has_z { &h_prev - block(&xa, sig, 1, hd) } else { Tensor::empty([0], opts) };
        tape.saved = vec![xa, u, d];
        tape
    }

    fn forward_rows<T: Real>(&self, p: &Layer, xa: Tensor, state0: &[Tensor]) -> Tape {
        cpu::gru_forward::<T>(self, p, xa, state0)
    }

    fn backward_rows<T: Real>(&self, p: &Layer, tape: &Tape, d_out: &Tensor) -> Backward {
        cpu::gru_backward::<T>(self, p, tape, d_out)
    }

    fn backward_tape(&self, p: &Layer, tape: &Tape, d_out: &Tensor) -> Backward {
        let (t, b, hd) = (d_out.size()[0], d_out.size()[1], d_out.size()[2]);
        let opts = (d_out.kind(), d_out.device());
        let (acts, u, d) = (&tape.saved[0], &tape.saved[1], &tape.saved[2]);
        let h_prev = tape.h_prev();
        let sig = self.sig() as i64;
        let g = sig + 1;
        let after = self.after();
        // d_a: the sigmoid gates' gradients [dA_z, dA_r], and after, dU too (its
        // hidden product covers W_hh, so one product per step serves all three).
        // The candidate's input side, dA_h, has its own buffer: contiguous rows
        // keep the per-step kernels and products as fast as they can be.
        let d_a = Tensor::empty([t, b, if after { g } else { sig } * hd], opts);
        let d_ah = Tensor::empty([t, b, hd], opts);
        let d_sig = Tensor::empty([b, sig * hd], opts);
        let dc = Tensor::empty([b, hd], opts);
        let zeros = Tensor::zeros([b, hd], opts);
        // What d_a[s] multiplies for dH_{t-1}: all of W_h after (d_a holds dU too),
        // the sigmoid gates' W_h before (the candidate's part goes through dU).
        let w_a_t = if after { p.w_h().tr() } else { p.w_h_of(0, sig as usize).tr() };
        let w_hh_t = p.gate("h").w_h().tr();
        // The gradient reaching H_{t-1} is added in place into d_out[t-1] (which
        // already holds what reaches it from above), so d_out[s] is the whole dH
        // when step s comes. Per step, in launches: before 9, after 8.
        for s in (0..t).rev() {
            let dh = d_out.get(s);
            let a = acts.get(s);
            let (z, r) = (block(&a, self.z_col(), 1, hd), block(&a, self.r_col(), 1, hd));
            let dc = if self.has_z {
                let _ = dh.mul_out(&block(&d_sig, self.z_col(), 1, hd), &d.get(s)); // dZ
                let _ = dh.lerp_tensor_out(&dc, &zeros, &z); // dC = dH ⊙ (1 − Z)
                dc.shallow_clone()
            } else {
                dh.shallow_clone() // H_t = C
            };
            let dah = d_ah.get(s);
            let _ = Tensor::tanh_backward_grad_input(&dah, &dc, &block(&a, sig, 1, hd));
            let da = d_a.get(s);
            let du = if after {
                let _ = dah.mul_out(&block(&d_sig, self.r_col(), 1, hd), &u.get(s)); // dR
                let _ = dah.mul_out(&block(&da, sig, 1, hd), &r); // dU
                None
            } else {
                let du = dah.mm(&w_hh_t);
                if self.has_r {
                    let _ = du.mul_out(&block(&d_sig, self.r_col(), 1, hd), &h_prev.get(s));
                    // dR
                }
                Some(du)
            };
            let _ = Tensor::sigmoid_backward_grad_input(&block(&da, 0, sig, hd), &d_sig, &block(&a, 0, sig, hd));
            if s > 0 {
                // H_0 comes from a detached state: no gradient is needed for it.
                let mut next = d_out.get(s - 1);
                let _ = next.addmm_(&da, &w_a_t);
                if let Some(du) = &du {
                    // before: dU reaches H_{t-1} through R (or whole, R ≡ 1: U = H).
                    let _ = if self.has_r { next.addcmul_(du, &r) } else { next.g_add_(du) };
                }
                if self.has_z {
                    let _ = next.addcmul_(&dh, &z);
                }
            }
        }
        let input = vec![(0, block(&d_a, 0, sig, hd)), (sig as usize, d_ah.shallow_clone())];
        if after {
            Backward { input, hidden: vec![(0, h_prev, d_a)] }
        } else {
            Backward { input, hidden: vec![(0, h_prev, d_a), (sig as usize, u.shallow_clone(), d_ah)] }
        }
    }
}

impl Gru {
    /// H_t = C + Z ⊙ (H_{t-1} − C) = lerp(C, H_{t-1}, Z): one launch (a copy of C
    /// without an update gate).
    fn update(&self, out: &Tensor, s: i64, h: &Tensor, a: &Tensor, c: &Tensor, hd: i64) -> Tensor {
        let mut o = out.get(s);
        if self.has_z {
            let _ = c.lerp_tensor_out(&o, h, &block(a, self.z_col(), 1, hd));
        } else {
            o.copy_(c);
        }
        o
    }
}
