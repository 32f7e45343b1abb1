//! The LSTM of d2l's chapter. For `X_t [B, in]`, `H_{t-1}` and `C_{t-1}` `[B, H]`:
//!
//! ```text
//! I_t  = σ(X_t W_xi + H_{t-1} W_hi + b_i)      input gate
//! F_t  = σ(X_t W_xf + H_{t-1} W_hf + b_f)      forget gate
//! O_t  = σ(X_t W_xo + H_{t-1} W_ho + b_o)      output gate
//! C~_t = tanh(X_t W_xc + H_{t-1} W_hc + b_c)   candidate memory
//! C_t  = F_t ⊙ C_{t-1} + I_t ⊙ C~_t
//! H_t  = O_t ⊙ tanh(C_t)
//! ```
//!
//! Fused columns: `i f o c` (d2l's parameter order; PyTorch's is i, f, g, o, see
//! `layout.rs`). State: `(H, C)`.
//!
//! Backward, per step, with dH reaching H_t and dC' the gradient reaching C_t
//! from step t+1:
//!
//! ```text
//! dO = dH ⊙ tanh(C_t)      dC = dC' + dH ⊙ O ⊙ (1 − tanh²(C_t))
//! dI = dC ⊙ C~   dF = dC ⊙ C_{t-1}   dC~ = dC ⊙ I   dC_{t-1} = dC ⊙ F
//! dA = [dI, dF, dO] ⊙ σ' ,  dC~ ⊙ (1 − C~²)      dH_{t-1} = dA W_hᵀ
//! ```
mod cpu;

use super::{block, Backward, Cell, GateDef, Layer, Tape};
use crate::model::cpu::Real;
use tch::Tensor;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Lstm;

/// Column blocks: i, f, o (sigmoid), c (tanh).
const I: i64 = 0;
const F: i64 = 1;
const O: i64 = 2;
const C: i64 = 3;

impl Cell for Lstm {
    fn gates(&self) -> Vec<GateDef> {
        vec![GateDef::new("i", "b_i"), GateDef::new("f", "b_f"), GateDef::new("o", "b_o"), GateDef::new("c", "b_c")]
    }

    fn state_size(&self) -> usize {
        2
    }

    fn describe(&self) -> (&'static str, Option<String>) {
        ("LSTM", None)
    }

    fn gates_reference(&self, p: &Layer, x: &Tensor, state: &[Tensor]) -> Vec<(&'static str, Tensor)> {
        let h = &state[0];
        let gate = |n: &'static str| {
            let g = p.gate(n);
            (n, (x.mm(&g.w_x) + h.mm(g.w_h()) + &g.b).sigmoid())
        };
        vec![gate("i"), gate("f"), gate("o")]
    }

    fn step_reference(&self, p: &Layer, x: &Tensor, state: &[Tensor]) -> Vec<Tensor> {
        let (h, c) = (&state[0], &state[1]);
        let gates = self.gates_reference(p, x, state);
        let (i, f, o) = (&gates[0].1, &gates[1].1, &gates[2].1);
        let g = p.gate("c");
        let c_tilde = (x.mm(&g.w_x) + h.mm(g.w_h()) + &g.b).tanh();
        let c = f * c + i * c_tilde;
        let h = o * c.tanh();
        vec![h, c]
    }

    fn step_fused(&self, _p: &Layer, xa: &Tensor, w_h: &Tensor, state: &[Tensor]) -> Vec<Tensor> {
        let (h, c) = (&state[0], &state[1]);
        let hd = h.size()[1];
        let a = xa.addmm(h, w_h);
        let ifo = block(&a, I, 3, hd).sigmoid();
        let c_tilde = block(&a, C, 1, hd).tanh();
        let c = block(&ifo, F, 1, hd) * c + block(&ifo, I, 1, hd) * c_tilde;
        let h = block(&ifo, O, 1, hd) * c.tanh();
        vec![h, c]
    }

    fn forward_tape(&self, p: &Layer, xa: Tensor, state0: &[Tensor]) -> Tape {
        let (t, hd) = (xa.size()[0], state0[0].size()[1]);
        let mut tape = Tape::start(&state0[0], t);
        let out = tape.out();
        // C_0..C_T in one buffer, as H; tanh(C_t) kept for the backward pass.
        let cs = Tensor::empty([t + 1, state0[1].size()[0], hd], (xa.kind(), xa.device()));
        cs.get(0).copy_(&state0[1]);
        let tanh_c = Tensor::empty([t, state0[1].size()[0], hd], (xa.kind(), xa.device()));
        let w_h = p.w_h();
        let mut h = state0[0].shallow_clone();
        // Per step, in launches: 7.
        for s in 0..t {
            let mut a = xa.get(s);
            let _ = a.addmm_(&h, &w_h);
            let _ = block(&a, I, 3, hd).sigmoid_();
            let _ = block(&a, C, 1, hd).tanh_();
            let mut c = cs.get(s + 1);
            let _ = block(&a, F, 1, hd).mul_out(&c, &cs.get(s));
            let _ = c.addcmul_(&block(&a, I, 1, hd), &block(&a, C, 1, hd));
            let tc = tanh_c.get(s);
            let _ = c.tanh_out(&tc);
            let o = out.get(s);
            let _ = block(&a, O, 1, hd).mul_out(&o, &tc);
            h = o;
        }
        tape.final_extra = vec![cs.get(t)];
        tape.saved = vec![xa, cs, tanh_c];
        tape
    }

    fn forward_rows<T: Real>(&self, p: &Layer, xa: Tensor, state0: &[Tensor]) -> Tape {
        cpu::lstm_forward::<T>(p, xa, state0)
    }

    fn backward_rows<T: Real>(&self, p: &Layer, tape: &Tape, d_out: &Tensor) -> Backward {
        cpu::lstm_backward::<T>(p, tape, d_out)
    }

    fn backward_tape(&self, p: &Layer, tape: &Tape, d_out: &Tensor) -> Backward {
        let (t, b, hd) = (d_out.size()[0], d_out.size()[1], d_out.size()[2]);
        let opts = (d_out.kind(), d_out.device());
        let (acts, cs, tanh_c) = (&tape.saved[0], &tape.saved[1], &tape.saved[2]);
        let d_a = Tensor::empty([t, b, 4 * hd], opts);
        let d_act = Tensor::empty([b, 4 * hd], opts); // gradients of the activations
        let (d_oc, mut dc) = (Tensor::empty([b, hd], opts), Tensor::empty([b, hd], opts));
        let d_carry = Tensor::zeros([b, hd], opts); // reaching C_t from step t+1
        let w_h_t = p.w_h().tr();
        // Per step, in launches: 11.
        for s in (0..t).rev() {
            let (dh, a, tc) = (d_out.get(s), acts.get(s), tanh_c.get(s));
            let (i, f, o, g) = (block(&a, I, 1, hd), block(&a, F, 1, hd), block(&a, O, 1, hd), block(&a, C, 1, hd));
            let _ = dh.mul_out(&block(&d_act, O, 1, hd), &tc); // dO
            let _ = dh.mul_out(&d_oc, &o);
            let _ = Tensor::tanh_backward_grad_input(&dc, &d_oc, &tc);
            let _ = dc.g_add_(&d_carry); // dC
            let _ = dc.mul_out(&block(&d_act, I, 1, hd), &g); // dI
            let _ = dc.mul_out(&block(&d_act, F, 1, hd), &cs.get(s)); // dF
            let _ = dc.mul_out(&block(&d_act, C, 1, hd), &i); // dC~
            let _ = dc.mul_out(&d_carry, &f); // dC_{t-1}
            let da = d_a.get(s);
            let _ = Tensor::sigmoid_backward_grad_input(&block(&da, I, 3, hd), &block(&d_act, I, 3, hd), &block(&a, I, 3, hd));
            let _ = Tensor::tanh_backward_grad_input(&block(&da, C, 1, hd), &block(&d_act, C, 1, hd), &g);
            if s > 0 {
                let _ = d_out.get(s - 1).addmm_(&da, &w_h_t);
            }
        }
        Backward { input: vec![(0, d_a.shallow_clone())], hidden: vec![(0, tape.h_prev(), d_a)] }
    }
}
