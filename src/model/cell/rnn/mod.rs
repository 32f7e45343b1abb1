//! The plain RNN of d2l's `RNNModelScratch`. For `X_t [B, in]` and `H_{t-1} [B, H]`:
//!
//! ```text
//! H_t = tanh(X_t W_xh + H_{t-1} W_hh + b_h)
//! ```
//!
//! Backward, per step: `dA = dH ⊙ (1 − H_t²)`, `dH_{t-1} = dA W_hhᵀ`.
mod cpu;

use super::{Backward, Cell, GateDef, Layer, Tape};
use crate::model::cpu::Real;
use tch::Tensor;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rnn;

impl Cell for Rnn {
    fn gates(&self) -> Vec<GateDef> {
        vec![GateDef::new("h", "b_h")]
    }

    fn describe(&self) -> (&'static str, Option<String>) {
        ("RNN", Some("tanh".into()))
    }

    fn step_reference(&self, p: &Layer, x: &Tensor, state: &[Tensor]) -> Vec<Tensor> {
        let g = p.gate("h");
        vec![(x.mm(&g.w_x) + state[0].mm(g.w_h()) + &g.b).tanh()]
    }

    fn step_fused(&self, _p: &Layer, xa: &Tensor, w_h: &Tensor, state: &[Tensor]) -> Vec<Tensor> {
        vec![xa.addmm(&state[0], w_h).tanh()]
    }

    fn forward_tape(&self, p: &Layer, xa: Tensor, state0: &[Tensor]) -> Tape {
        let t = xa.size()[0];
        let tape = Tape::start(&state0[0], t);
        let out = tape.out();
        let w_h = p.gate("h").w_h();
        let mut h = state0[0].shallow_clone();
        // Per step, in launches: 2.
        for s in 0..t {
            let mut a = xa.get(s);
            let _ = a.addmm_(&h, w_h);
            let o = out.get(s);
            let _ = a.tanh_out(&o);
            h = o;
        }
        tape
    }

    fn forward_rows<T: Real>(&self, p: &Layer, xa: Tensor, state0: &[Tensor]) -> Tape {
        cpu::rnn_forward::<T>(p, xa, state0)
    }

    fn backward_rows<T: Real>(&self, p: &Layer, tape: &Tape, d_out: &Tensor) -> Backward {
        cpu::rnn_backward::<T>(p, tape, d_out)
    }

    fn backward_tape(&self, p: &Layer, tape: &Tape, d_out: &Tensor) -> Backward {
        let out = tape.out();
        let d_a = d_out.empty_like();
        let w_hh_t = p.gate("h").w_h().tr();
        // Per step, in launches: 2.
        for s in (0..d_out.size()[0]).rev() {
            let da = d_a.get(s);
            let _ = Tensor::tanh_backward_grad_input(&da, &d_out.get(s), &out.get(s));
            if s > 0 {
                let _ = d_out.get(s - 1).addmm_(&da, &w_hh_t);
            }
        }
        Backward { input: vec![(0, d_a.shallow_clone())], hidden: vec![(0, tape.h_prev(), d_a)] }
    }
}
