//! `ScratchLm`'s training step with hand-written backpropagation through time.
//!
//! Autograd over T small steps pays twice: every step records a graph, and every
//! step computes its own small weight-gradient products (`h_{t-1}ᵀ dA_t`, with only
//! B rows) and adds them into the gradient. Here each cell's forward pass keeps
//! what its backward pass needs on a tape of `[T, B, ·]` buffers
//! ([`Cell::forward_tape`]); its backward pass walks time in reverse computing
//! only what must be sequential (the gradient flowing into `h_{t-1}`) and hands
//! back the gradients of its gates' pre-activations ([`Cell::backward_tape`]).
//! This driver, the same for every cell, turns those into weight gradients with
//! one product over all `T·B` rows per group of gates:
//!
//! ```text
//! input side   dW_x = Xᵀ dA      db = Σ_rows dA      dX = dA W_xᵀ  (to the layer below)
//! hidden side  dW_h = Mᵀ dP      db_h = Σ_rows dP    (M = H_{t-1}, or the GRU's R ⊙ H_{t-1})
//! ```
//!
//! With dropout, a layer's output goes up times its mask, and the gradient
//! coming down from above is multiplied by the same mask. With weight drop, the
//! tapes run on `W_h ⊙ M`, and `dW_h = (Mᵀ dP) ⊙ M`.
//!
//! Same function, same gradients: the tests hold this step to an independent
//! reference (f64, 1e-10) for every cell.
//!
//! With `train.precision = "bf16"` on the CPU engine, every product here takes
//! bf16 inputs: the tapes' (on [`MixedF32`]), the output layer's, and the
//! weight-gradient and input products (libtorch's bf16 `mm`, [`bf16::mm`]).
use super::cell::{Backward, Cell, Layer, Tape};
use super::cpu::bf16::{self, MixedF32};
use super::scratch::ScratchLm;
use super::{RecurrentLm, State};
use tch::{Kind, Tensor};

pub(super) fn add_grad(p: &Tensor, g: &Tensor) {
    let mut grad = p.grad();
    let _ = grad.g_add_(g);
}

/// Makes every parameter's `.grad` exist (zeros), so gradients can be added in
/// place; autograd creates them on a first backward, which this step has not.
pub(super) fn ensure_grads(params: &[Tensor]) {
    if params.iter().any(|p| !p.grad().defined()) {
        let zero = tch::with_grad(|| {
            params.iter().map(|p| p.sum(p.kind()) * 0.0).fold(Tensor::zeros([], (params[0].kind(), params[0].device())), |a, b| a + b)
        });
        zero.backward();
    }
}

impl<C: Cell> ScratchLm<C> {
    /// A layer's forward tape: on the CPU engine (rows of f32 or f64, chosen here
    /// once for every cell) where it runs, else libtorch's.
    fn forward_tape(&self, p: &Layer, xa: Tensor, s0: &[Tensor]) -> Tape {
        match (self.on_cpu_engine(&xa), xa.kind()) {
            (false, _) => self.cell.forward_tape(p, xa, s0),
            (true, Kind::Float) if self.bf16_products(&xa) => self.cell.forward_rows::<MixedF32>(p, xa, s0),
            (true, Kind::Float) => self.cell.forward_rows::<f32>(p, xa, s0),
            (true, _) => self.cell.forward_rows::<f64>(p, xa, s0),
        }
    }

    /// The backward pass through a layer's tape, on the same engine as its forward.
    fn backward_tape(&self, p: &Layer, tape: &Tape, d_out: &Tensor) -> Backward {
        match (self.on_cpu_engine(d_out), d_out.kind()) {
            (false, _) => self.cell.backward_tape(p, tape, d_out),
            (true, Kind::Float) if self.bf16_products(d_out) => self.cell.backward_rows::<MixedF32>(p, tape, d_out),
            (true, Kind::Float) => self.cell.backward_rows::<f32>(p, tape, d_out),
            (true, _) => self.cell.backward_rows::<f64>(p, tape, d_out),
        }
    }

    /// Adds a layer's weight gradients from its cell's [`Backward`] into the
    /// parameters of `p` (the model's own layer); returns the gradient of the
    /// layer's input (`[T·B, H]`) when it is the layer below's output. `w_x` is
    /// the layer's fused `[W_x ...]`, as its forward pass used it; `w_mask` its
    /// weight-drop mask `[H, G·H]`, if the pass ran on `W_h ⊙ M`.
    fn weight_grads(
        &self,
        p: &Layer,
        w_x: &Tensor,
        w_mask: Option<&Tensor>,
        back: &Backward,
        below: Option<&Tensor>,
        ids: &Tensor,
    ) -> Option<Tensor> {
        let hd = self.hidden_size();
        let bf = self.bf16_products(w_x);
        let mm = |a: &Tensor, b: &Tensor| if bf { bf16::mm(a, b) } else { a.mm(b) };
        let rows = |d: &Tensor| {
            let n = d.size()[2];
            d.reshape([-1, n])
        };
        let mut d_input: Option<Tensor> = None;
        for (first, d) in &back.input {
            let d = rows(d);
            let g_w = self.input_grad(below, ids, &d, bf); // [in, n·H]
            let g_b = d.sum_dim_intlist(0, false, d.kind());
            let gates = &p.gates[*first..*first + (d.size()[1] / hd) as usize];
            for (k, gate) in gates.iter().enumerate() {
                add_grad(&gate.w_x, &g_w.narrow(1, k as i64 * hd, hd));
                add_grad(&gate.b, &g_b.narrow(0, k as i64 * hd, hd));
            }
            if below.is_some() {
                let w_t = w_x.narrow(1, *first as i64 * hd, d.size()[1]).tr();
                d_input = Some(match d_input {
                    None => mm(&d, &w_t),
                    Some(acc) if bf => acc + mm(&d, &w_t),
                    Some(acc) => acc.addmm(&d, &w_t),
                });
            }
        }
        for (first, m, d) in &back.hidden {
            let d = rows(d);
            let mut g_w = mm(&rows(m).tr(), &d); // [H, n·H]
            if let Some(mask) = w_mask {
                g_w *= mask.narrow(1, *first as i64 * hd, d.size()[1]);
            }
            let gates = &p.gates[*first..*first + (d.size()[1] / hd) as usize];
            for (k, gate) in gates.iter().enumerate() {
                add_grad(gate.w_h(), &g_w.narrow(1, k as i64 * hd, hd));
                if let Some(b_h) = &gate.b_h {
                    add_grad(b_h, &d.narrow(1, k as i64 * hd, hd).sum_dim_intlist(0, false, d.kind()));
                }
            }
        }
        d_input
    }

    /// The output layer for the top layer's outputs `top [N, H]` (time-major
    /// rows) and their targets `y [N]`: d2l's loss (mean cross-entropy per
    /// token) with `dY = (softmax − onehot) / N`, and `(loss, dH, dW_hq, db_q)`.
    fn output_step(&self, top: &Tensor, y: &Tensor) -> (Tensor, Tensor, Tensor, Tensor) {
        if self.on_cpu_engine(top) {
            return super::cpu::output::step(top, &self.w_hq, &self.b_q, y, self.bf16_products(top));
        }
        let logp = self.b_q.addmm(top, &self.w_hq).log_softmax(-1, top.kind());
        let (y, n) = (y.view([-1, 1]), top.size()[0]);
        let loss = -logp.gather(1, &y, false).sum(top.kind()) / n as f64;
        let d_y = logp.exp().scatter_add(1, &y, &Tensor::full([n, 1], -1.0, (top.kind(), top.device()))) / n as f64;
        (loss, d_y.mm(&self.w_hq.tr()), top.tr().mm(&d_y), d_y.sum_dim_intlist(0, false, d_y.kind()))
    }

    /// One training step: forward with a tape, d2l's loss, hand-written backward.
    /// Adds every parameter's gradient into `.grad`; returns the loss and the new
    /// state, both detached.
    pub(super) fn train_step_bptt(&self, tokens: &Tensor, targets: &Tensor, state: &State) -> (Tensor, State) {
        ensure_grads(&self.var_store().trainable_variables());
        tch::no_grad(|| {
            let (b, t) = (tokens.size()[0], tokens.size()[1]);
            let hd = self.hidden_size();
            let ids = tokens.tr().reshape([-1]); // [T*B], time-major
            let s0 = state.detach().per_layer();
            let dropped = self.weight_dropped(true);
            let layers = self.layers_of(&dropped);
            let masks = self.masks(true, t, b);
            let mut tapes: Vec<Tape> = Vec::with_capacity(self.layers.len());
            // Each layer's output on its way up `[T*B, H]`: the tape's rows, or
            // with dropout those rows times the layer's mask.
            let mut ups: Vec<Tensor> = Vec::with_capacity(self.layers.len());
            let w_xs: Vec<Tensor> = self.layers.iter().map(Layer::w_x).collect();
            for (l, p) in layers.iter().enumerate() {
                let xa = match ups.last() {
                    // Tokens: the rows of W_x they pick, plus b, in one pass.
                    None if self.on_cpu_engine(&w_xs[l]) => super::cpu::embed(&w_xs[l], &p.b(), &ids),
                    below => self.project(below, &ids, &w_xs[l], &p.b(), self.bf16_products(&w_xs[l])),
                };
                let xa = xa.view([t, b, -1]);
                let tape = self.forward_tape(p, xa, &s0[l]);
                let out = tape.out();
                ups.push(masks.get(l).map_or(out.shallow_clone(), |m| &out * m).view([t * b, hd]));
                tapes.push(tape);
            }
            let top = ups.last().expect("at least one layer");
            let (loss, d_top, g_w, g_b) = self.output_step(top, &targets.tr().reshape([-1]));
            add_grad(&self.w_hq, &g_w);
            add_grad(&self.b_q, &g_b);
            // The gradient reaching layer l's output: through its mask, if any.
            let unmask = |d: Tensor, l: usize| match masks.get(l) {
                Some(m) => d * m,
                None => d,
            };
            let mut d_out = unmask(d_top.view([t, b, hd]), self.layers.len() - 1);
            for (l, p) in layers.iter().enumerate().rev() {
                let below = l.checked_sub(1).map(|k| &ups[k]);
                let back = self.backward_tape(p, &tapes[l], &d_out);
                let w_mask = dropped.as_ref().map(|d| &d.masks[l]);
                if let Some(d) = self.weight_grads(&self.layers[l], &w_xs[l], w_mask, &back, below, &ids) {
                    d_out = unmask(d.view([t, b, hd]), l - 1);
                }
            }
            let finals: Vec<Vec<Tensor>> = tapes.iter().map(Tape::final_state).collect();
            (loss, State::from_layers(&finals))
        })
    }
}
