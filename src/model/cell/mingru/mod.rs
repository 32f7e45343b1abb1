//! minGRU (Feng, Tung, Ahmed, Bengio and Hajimirsadeghi, "Were RNNs All We
//! Needed?", 2024): the GRU with its gate and candidate computed from `X_t`
//! alone, and no reset gate. For `X_t [B, in]` and `H_{t-1} [B, H]`:
//!
//! ```text
//! Z_t  = σ(X_t W_xz + b_z)                  update gate
//! H~_t = X_t W_xh + b_h                     candidate (no tanh)
//! H_t  = (1 − Z_t) ⊙ H_{t-1} + Z_t ⊙ H~_t
//! ```
//!
//! `Z` is the paper's: near 1 it takes the candidate (d2l's GRU keeps the old
//! state there). `H_t = A_t ⊙ H_{t-1} + B_t` with `A = 1 − Z` and `B = Z ⊙ H~`,
//! and neither depends on `H`: training computes every step's `A` and `B` at
//! once (the input projection is one product over all T·B rows, as for every
//! cell) and then the recurrence as a scan (`scan.rs`), with no matrix product
//! left inside the time loop; sampling steps with `H` alone.
//!
//! grulm's minGRU is the paper's sequential form, with the linear candidate. The
//! paper's log-space scan needs positive states, so its parallel form passes the
//! candidate through `g(x) = x + ½ (x ≥ 0), σ(x) (x < 0)`; grulm's scan runs in
//! linear space (`scan.rs`) and needs no such change.
//!
//! Fused columns: `z h`. No hidden weights, so no hidden-side gradients.
//!
//! Backward: `δ_t`, the whole gradient reaching `H_t` (from above, `dH_t`, and
//! from step t+1), then the gates':
//!
//! ```text
//! δ_t = dH_t + A_{t+1} ⊙ δ_{t+1}
//! dA_z = δ ⊙ (H~ − H_{t-1}) ⊙ Z(1 − Z)      dA_h = δ ⊙ Z
//! ```
mod cpu;

use super::{block, scan, Backward, Cell, GateDef, Layer, Tape};
use crate::model::cpu::Real;
use tch::Tensor;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MinGru;

/// Column blocks: z (sigmoid), h (linear).
const Z: i64 = 0;
const H: i64 = 1;

impl Cell for MinGru {
    fn gates(&self) -> Vec<GateDef> {
        vec![GateDef::input_only("z", "b_z"), GateDef::input_only("h", "b_h")]
    }

    fn describe(&self) -> (&'static str, Option<String>) {
        ("minGRU", None)
    }

    fn gates_reference(&self, p: &Layer, x: &Tensor, _state: &[Tensor]) -> Vec<(&'static str, Tensor)> {
        let g = p.gate("z");
        vec![("z", (x.mm(&g.w_x) + &g.b).sigmoid())]
    }

    fn step_reference(&self, p: &Layer, x: &Tensor, state: &[Tensor]) -> Vec<Tensor> {
        let z = &self.gates_reference(p, x, state)[0].1;
        let c = p.gate("h");
        let h_tilde = x.mm(&c.w_x) + &c.b;
        vec![(z.ones_like() - z) * &state[0] + z * h_tilde]
    }

    fn step_fused(&self, _p: &Layer, xa: &Tensor, _w_h: &Tensor, state: &[Tensor]) -> Vec<Tensor> {
        let hd = state[0].size()[1];
        let (z, h_tilde) = (block(xa, Z, 1, hd).sigmoid(), block(xa, H, 1, hd));
        vec![&state[0] + z * (h_tilde - &state[0])]
    }

    fn forward_tape(&self, _p: &Layer, xa: Tensor, state0: &[Tensor]) -> Tape {
        let (t, hd) = (xa.size()[0], state0[0].size()[1]);
        let mut tape = Tape::start(&state0[0], t);
        let mut z = block(&xa, Z, 1, hd);
        let _ = z.sigmoid_(); // Z kept in place, for the backward pass
        let a = z.ones_like() - &z;
        let out = tape.out(); // B, then the states
        let _ = z.mul_out(&out, &block(&xa, H, 1, hd));
        scan::scan(a, &out, Some(&state0[0]));
        tape.saved = vec![xa];
        tape
    }

    fn forward_rows<T: Real>(&self, _p: &Layer, xa: Tensor, state0: &[Tensor]) -> Tape {
        scan::forward_rows::<MinGru, T>(xa, state0)
    }

    fn backward_rows<T: Real>(&self, _p: &Layer, tape: &Tape, d_out: &Tensor) -> Backward {
        scan::backward_rows::<MinGru, T>(tape, d_out)
    }

    fn backward_tape(&self, _p: &Layer, tape: &Tape, d_out: &Tensor) -> Backward {
        let hd = d_out.size()[2];
        let xa = &tape.saved[0];
        let (z, h_tilde) = (block(xa, Z, 1, hd), block(xa, H, 1, hd));
        let delta = scan::adjoint(&(z.ones_like() - &z), d_out);
        let d_a = Tensor::empty([d_out.size()[0], d_out.size()[1], 2 * hd], (d_out.kind(), d_out.device()));
        let dz = &delta * (h_tilde - tape.h_prev());
        let _ = Tensor::sigmoid_backward_grad_input(&block(&d_a, Z, 1, hd), &dz, &z);
        let _ = delta.mul_out(&block(&d_a, H, 1, hd), &z);
        Backward { input: vec![(0, d_a)], hidden: vec![] }
    }
}
