//! `ScratchGru`: the GRU of d2l's chapter, written by hand.
//!
//! For each layer, with `X_t [B, in]` its input at step t (a one-hot token for
//! layer 0, the hidden state of the layer below otherwise) and `H_{t-1} [B, H]`:
//!
//! ```text
//! Z_t  = σ(X_t W_xz + H_{t-1} W_hz + b_z)                  update gate
//! R_t  = σ(X_t W_xr + H_{t-1} W_hr + b_r)                  reset gate
//! H~_t = tanh(X_t W_xh + (R_t ⊙ H_{t-1}) W_hh + b_h)       reset "before" (d2l's code)
//! H~_t = tanh(X_t W_xh + b_xh + R_t ⊙ (H_{t-1} W_hh + b_hh)) reset "after" (PyTorch, cuDNN)
//! H_t  = Z_t ⊙ H_{t-1} + (1 − Z_t) ⊙ H~_t
//! Y_t  = H_t W_hq + b_q                                     top layer only
//! ```
//!
//! Weights are `[in, out]` and applied as `X W` (d2l's layout; PyTorch stores
//! `[out, in]`, see [`super::layout`]). Initialisation as d2l: weights
//! N(0, σ²) with σ = 0.01, biases zero. Names carry the layer: `W_xz_l0`, ...,
//! and the output layer `W_hq`, `b_q`.
//!
//! Three paths compute the same function ([`ScratchPath`]):
//! * [`ScratchPath::Reference`] reads like the chapter: one-hot inputs, one step
//!   function with nine matrix products, looped over time. It is the reference the
//!   tests hold everything else to.
//! * [`ScratchPath::Fused`] hoists the input projection of
//!   all T steps out of the time loop (for layer 0 a row gather, which is what a
//!   one-hot product computes) and fuses the per-gate hidden products into one
//!   matrix product per step (two for reset-before, whose candidate needs R first).
//! * [`ScratchPath::Bptt`] (what the trainer uses) runs the fused forward and
//!   differentiates a training step by hand (`bptt.rs`): the weight gradients
//!   become one product over all T·B rows instead of T small ones.
use super::{RecurrentLm, State};
use crate::config::ResetGate;
use tch::nn::VarStore;
use tch::{Kind, Tensor};

/// How the model computes: its forward, and the gradients of a training step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScratchPath {
    /// The readable forward (one-hot, one step function), autograd backward.
    Reference,
    /// The fused forward (gathered input projections, fused hidden products),
    /// autograd backward.
    Fused,
    /// The fused forward, and a training step with hand-written backpropagation
    /// through time (`bptt.rs`): what the trainer uses.
    Bptt,
}

/// One layer's parameters. `b_h` is the candidate's input bias (`b_xh` in the
/// reset-after variant, which adds the hidden bias `b_hh`).
pub struct GruLayer {
    pub w_xz: Tensor,
    pub w_hz: Tensor,
    pub b_z: Tensor,
    pub w_xr: Tensor,
    pub w_hr: Tensor,
    pub b_r: Tensor,
    pub w_xh: Tensor,
    pub w_hh: Tensor,
    pub b_h: Tensor,
    pub b_hh: Option<Tensor>,
}

pub struct ScratchGru {
    vs: VarStore,
    layers: Vec<GruLayer>,
    w_hq: Tensor,
    b_q: Tensor,
    vocab: i64,
    hidden: i64,
    reset: ResetGate,
    path: ScratchPath,
    train: bool,
}

impl ScratchGru {
    pub fn new(vs: VarStore, vocab: i64, hidden: i64, num_layers: i64, reset: ResetGate, sigma: f64) -> ScratchGru {
        let (layers, w_hq, b_q) = {
            let root = vs.root();
            let mut layers = Vec::new();
            for l in 0..num_layers {
                let input = if l == 0 { vocab } else { hidden };
                let w = |name: &str, rows: i64| root.randn(&format!("{name}_l{l}"), &[rows, hidden], 0.0, sigma);
                let b = |name: &str| root.zeros(&format!("{name}_l{l}"), &[hidden]);
                let (w_xz, w_hz, b_z) = (w("W_xz", input), w("W_hz", hidden), b("b_z"));
                let (w_xr, w_hr, b_r) = (w("W_xr", input), w("W_hr", hidden), b("b_r"));
                let (w_xh, w_hh) = (w("W_xh", input), w("W_hh", hidden));
                let (b_h, b_hh) = match reset {
                    ResetGate::Before => (b("b_h"), None),
                    ResetGate::After => (b("b_xh"), Some(b("b_hh"))),
                };
                layers.push(GruLayer { w_xz, w_hz, b_z, w_xr, w_hr, b_r, w_xh, w_hh, b_h, b_hh });
            }
            let w_hq = root.randn("W_hq", &[hidden, vocab], 0.0, sigma);
            let b_q = root.zeros("b_q", &[vocab]);
            (layers, w_hq, b_q)
        };
        ScratchGru { vs, layers, w_hq, b_q, vocab, hidden, reset, path: ScratchPath::Bptt, train: true }
    }

    pub fn set_path(&mut self, path: ScratchPath) {
        self.path = path;
    }

    pub fn reset_gate(&self) -> ResetGate {
        self.reset
    }

    pub fn layers(&self) -> &[GruLayer] {
        &self.layers
    }

    pub(super) fn hidden_i64(&self) -> i64 {
        self.hidden
    }

    pub(super) fn vocab_size_i64(&self) -> i64 {
        self.vocab
    }

    /// `(W_hq [H, V], b_q [V])`.
    pub(super) fn output_layer(&self) -> (&Tensor, &Tensor) {
        (&self.w_hq, &self.b_q)
    }

    /// One time step of one layer, exactly as the equations read.
    /// x `[B, in]`, h `[B, H]` -> the new h `[B, H]`.
    pub fn step_reference(&self, p: &GruLayer, x: &Tensor, h: &Tensor) -> Tensor {
        let z = (x.mm(&p.w_xz) + h.mm(&p.w_hz) + &p.b_z).sigmoid();
        let r = (x.mm(&p.w_xr) + h.mm(&p.w_hr) + &p.b_r).sigmoid();
        let h_tilde = match self.reset {
            ResetGate::Before => (x.mm(&p.w_xh) + (&r * h).mm(&p.w_hh) + &p.b_h).tanh(),
            ResetGate::After => {
                let b_hh = p.b_hh.as_ref().expect("reset-after layer has b_hh");
                (x.mm(&p.w_xh) + &p.b_h + &r * (h.mm(&p.w_hh) + b_hh)).tanh()
            }
        };
        &z * h + (1.0 - &z) * h_tilde
    }

    /// The readable forward: one-hot `[T, B, V]` inputs, a loop over time, the
    /// layers stacked inside it.
    fn forward_reference(&self, tokens: &Tensor, state: &State) -> (Tensor, State) {
        let inputs = tokens.tr().one_hot(self.vocab).to_kind(self.w_hq.kind()); // [T, B, V]
        let steps = inputs.size()[0];
        let mut h: Vec<Tensor> = state.hidden().unbind(0); // L x [B, H]
        let mut outputs = Vec::with_capacity(steps as usize);
        for t in 0..steps {
            let mut x = inputs.get(t);
            for (l, p) in self.layers.iter().enumerate() {
                h[l] = self.step_reference(p, &x, &h[l]);
                x = h[l].shallow_clone();
            }
            outputs.push(x.mm(&self.w_hq) + &self.b_q); // [B, V]
        }
        (Tensor::stack(&outputs, 0), State(vec![Tensor::stack(&h, 0)]))
    }

    /// Input projections of all T steps at once: `[T*B, out]`, X W + b. For layer 0
    /// the input is one-hot, and one_hot(tokens) W is a row gather of W.
    pub(super) fn project(&self, below: Option<&Tensor>, ids: &Tensor, w: &Tensor, b: &Tensor) -> Tensor {
        match below {
            Some(x) => b.addmm(x, w),
            None if !super::deterministic() => Tensor::embedding(w, ids, -1, false, false) + b,
            // The gather's CUDA backward adds with atomics; a product does not.
            None => b.addmm(&ids.one_hot(self.vocab).to_kind(w.kind()), w),
        }
    }

    /// The fast forward, same function (see the module doc).
    ///
    /// Per-step tensors come from `unbind`/`chunk`, whose backward is one `stack`
    /// or `cat`; indexing a slice (`get`, `narrow`) would make autograd write a
    /// zero-filled copy of the whole `[T, B, 3H]` tensor for every step.
    fn forward_fused(&self, tokens: &Tensor, state: &State) -> (Tensor, State) {
        let (b, t) = (tokens.size()[0], tokens.size()[1]);
        let hd = self.hidden;
        let ids = tokens.tr().reshape([-1]); // [T*B], time-major
        let h0: Vec<Tensor> = state.hidden().unbind(0);
        let mut finals = Vec::with_capacity(self.layers.len());
        let mut below: Option<Tensor> = None; // [T*B, H], the layer below's outputs
        for (l, p) in self.layers.iter().enumerate() {
            // Gates z and r together [T, B, 2H], the candidate apart [T, B, H].
            let w_x_zr = Tensor::cat(&[&p.w_xz, &p.w_xr], 1);
            let b_x_zr = Tensor::cat(&[&p.b_z, &p.b_r], 0);
            let x_zr = self.project(below.as_ref(), &ids, &w_x_zr, &b_x_zr).view([t, b, 2 * hd]).unbind(0);
            let x_h = self.project(below.as_ref(), &ids, &p.w_xh, &p.b_h).view([t, b, hd]).unbind(0);
            let mut h = h0[l].shallow_clone();
            let mut outs = Vec::with_capacity(t as usize);
            match self.reset {
                ResetGate::Before => {
                    let w_h_zr = Tensor::cat(&[&p.w_hz, &p.w_hr], 1); // [H, 2H]
                    for s in 0..t as usize {
                        let zr = x_zr[s].addmm(&h, &w_h_zr).sigmoid().chunk(2, 1);
                        let (z, r) = (&zr[0], &zr[1]);
                        let h_tilde = x_h[s].addmm(&(r * &h), &p.w_hh).tanh();
                        // z*h + (1-z)*h~, with one product fewer.
                        h = &h_tilde + z * (&h - &h_tilde);
                        outs.push(h.shallow_clone());
                    }
                }
                ResetGate::After => {
                    let b_hh = p.b_hh.as_ref().expect("reset-after layer has b_hh");
                    let w_h = Tensor::cat(&[&p.w_hz, &p.w_hr, &p.w_hh], 1); // [H, 3H]
                    let b_h = Tensor::cat(&[&b_hh.zeros_like(), &b_hh.zeros_like(), b_hh], 0); // [3H]: b_hh on the candidate
                    for s in 0..t as usize {
                        let hh = b_h.addmm(&h, &w_h).split_with_sizes([2 * hd, hd], 1); // H W_h + [0, 0, b_hh]
                        let zr = (&x_zr[s] + &hh[0]).sigmoid().chunk(2, 1);
                        let (z, r) = (&zr[0], &zr[1]);
                        let h_tilde = (&x_h[s] + r * &hh[1]).tanh();
                        h = &h_tilde + z * (&h - &h_tilde);
                        outs.push(h.shallow_clone());
                    }
                }
            }
            finals.push(h);
            below = Some(Tensor::stack(&outs, 0).view([t * b, hd]));
        }
        let top = below.expect("at least one layer");
        let logits = self.b_q.addmm(&top, &self.w_hq).view([t, b, self.vocab]);
        (logits, State(vec![Tensor::stack(&finals, 0)]))
    }
}

impl RecurrentLm for ScratchGru {
    fn zero_state(&self, batch: i64) -> State {
        let opts = (self.w_hq.kind(), self.w_hq.device());
        State(vec![Tensor::zeros([self.layers.len() as i64, batch, self.hidden], opts)])
    }

    fn forward(&self, tokens: &Tensor, state: &State) -> (Tensor, State) {
        debug_assert_eq!(tokens.kind(), Kind::Int64);
        match self.path {
            ScratchPath::Reference => self.forward_reference(tokens, state),
            ScratchPath::Fused | ScratchPath::Bptt => self.forward_fused(tokens, state),
        }
    }

    fn train_step(&self, tokens: &Tensor, targets: &Tensor, state: &State) -> (Tensor, State) {
        match self.path {
            ScratchPath::Bptt => self.train_step_bptt(tokens, targets, state),
            ScratchPath::Reference | ScratchPath::Fused => super::autograd_step(self, tokens, targets, state),
        }
    }

    fn var_store(&self) -> &VarStore {
        &self.vs
    }

    fn var_store_mut(&mut self) -> &mut VarStore {
        &mut self.vs
    }

    fn set_train(&mut self, train: bool) {
        self.train = train;
    }

    fn training(&self) -> bool {
        self.train
    }

    fn vocab_size(&self) -> i64 {
        self.vocab
    }

    fn describe(&self) -> String {
        let reset = match self.reset {
            ResetGate::Before => "before",
            ResetGate::After => "after",
        };
        format!("scratch GRU (reset {reset}, {} layer(s), H={})", self.layers.len(), self.hidden)
    }
}
