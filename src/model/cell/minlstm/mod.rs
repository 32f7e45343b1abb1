//! minLSTM (Feng, Tung, Ahmed, Bengio and Hajimirsadeghi, "Were RNNs All We
//! Needed?", 2024): the LSTM with its gates and candidate computed from `X_t`
//! alone, no output gate and no separate memory cell, its two gates normalised
//! to sum to one (the paper's length-independent scaling). For `X_t [B, in]` and
//! `H_{t-1} [B, H]`:
//!
//! ```text
//! F_t  = σ(X_t W_xf + b_f)                  forget gate
//! I_t  = σ(X_t W_xi + b_i)                  input gate
//! H~_t = X_t W_xh + b_h                     candidate (no tanh)
//! F'_t = F_t / (F_t + I_t)      I'_t = I_t / (F_t + I_t)
//! H_t  = F'_t ⊙ H_{t-1} + I'_t ⊙ H~_t
//! ```
//!
//! `H_t = A_t ⊙ H_{t-1} + B_t` with `A = F'` and `B = I' ⊙ H~`, neither depending
//! on `H`: as the minGRU (`mingru/mod.rs`, which says what grulm does with the
//! paper's `g(·)`), every step's `A` and `B` at once, then a scan (`scan.rs`).
//! State: `H` alone.
//!
//! Fused columns: `f i h`. No hidden weights.
//!
//! Backward, with `δ_t` the whole gradient reaching `H_t` and
//! `U = δ ⊙ (H_{t-1} − H~)` (so that `dF' = −dI' = U` through the normalisation):
//!
//! ```text
//! δ_t = dH_t + A_{t+1} ⊙ δ_{t+1}
//! dA_f = F'I'U ⊙ (1 − F)      dA_i = −F'I'U ⊙ (1 − I)      dA_h = δ ⊙ I'
//! ```
mod cpu;

use super::{block, scan, Backward, Cell, GateDef, Layer, Tape};
use crate::model::cpu::Real;
use tch::Tensor;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MinLstm;

/// Column blocks: f, i (sigmoid), h (linear).
const F: i64 = 0;
const I: i64 = 1;
const H: i64 = 2;

/// `(F', I')` from the gates `F`, `I`.
fn normalised(f: &Tensor, i: &Tensor) -> (Tensor, Tensor) {
    let sum = f + i;
    (f / &sum, i / sum)
}

impl Cell for MinLstm {
    fn gates(&self) -> Vec<GateDef> {
        vec![GateDef::input_only("f", "b_f"), GateDef::input_only("i", "b_i"), GateDef::input_only("h", "b_h")]
    }

    fn describe(&self) -> (&'static str, Option<String>) {
        ("minLSTM", None)
    }

    fn gates_reference(&self, p: &Layer, x: &Tensor, _state: &[Tensor]) -> Vec<(&'static str, Tensor)> {
        let gate = |n: &'static str| {
            let g = p.gate(n);
            (n, (x.mm(&g.w_x) + &g.b).sigmoid())
        };
        vec![gate("f"), gate("i")]
    }

    fn step_reference(&self, p: &Layer, x: &Tensor, state: &[Tensor]) -> Vec<Tensor> {
        let gates = self.gates_reference(p, x, state);
        let (f, i) = normalised(&gates[0].1, &gates[1].1);
        let c = p.gate("h");
        let h_tilde = x.mm(&c.w_x) + &c.b;
        vec![f * &state[0] + i * h_tilde]
    }

    fn step_fused(&self, _p: &Layer, xa: &Tensor, _w_h: &Tensor, state: &[Tensor]) -> Vec<Tensor> {
        let hd = state[0].size()[1];
        let fi = block(xa, F, 2, hd).sigmoid();
        let (f, i) = normalised(&block(&fi, F, 1, hd), &block(&fi, I, 1, hd));
        vec![f * &state[0] + i * block(xa, H, 1, hd)]
    }

    fn forward_tape(&self, _p: &Layer, xa: Tensor, state0: &[Tensor]) -> Tape {
        let (t, hd) = (xa.size()[0], state0[0].size()[1]);
        let mut tape = Tape::start(&state0[0], t);
        let _ = block(&xa, F, 2, hd).sigmoid_(); // F and I kept in place, for the backward pass
        let (a, i) = normalised(&block(&xa, F, 1, hd), &block(&xa, I, 1, hd));
        let out = tape.out(); // B, then the states
        let _ = i.mul_out(&out, &block(&xa, H, 1, hd));
        scan::scan(a, &out, Some(&state0[0]));
        tape.saved = vec![xa];
        tape
    }

    fn forward_rows<T: Real>(&self, _p: &Layer, xa: Tensor, state0: &[Tensor]) -> Tape {
        scan::forward_rows::<MinLstm, T>(xa, state0)
    }

    fn backward_rows<T: Real>(&self, _p: &Layer, tape: &Tape, d_out: &Tensor) -> Backward {
        scan::backward_rows::<MinLstm, T>(tape, d_out)
    }

    fn backward_tape(&self, _p: &Layer, tape: &Tape, d_out: &Tensor) -> Backward {
        let hd = d_out.size()[2];
        let xa = &tape.saved[0];
        let (f, i, h_tilde) = (block(xa, F, 1, hd), block(xa, I, 1, hd), block(xa, H, 1, hd));
        let (fp, ip) = normalised(&f, &i);
        let delta = scan::adjoint(&fp, d_out);
        let q = &fp * &ip * &delta * (tape.h_prev() - h_tilde);
        let d_a = Tensor::empty([d_out.size()[0], d_out.size()[1], 3 * hd], (d_out.kind(), d_out.device()));
        block(&d_a, F, 1, hd).copy_(&(&q * (f.ones_like() - &f)));
        block(&d_a, I, 1, hd).copy_(&(-&q * (i.ones_like() - &i)));
        let _ = delta.mul_out(&block(&d_a, H, 1, hd), &ip);
        Backward { input: vec![(0, d_a)], hidden: vec![] }
    }
}
