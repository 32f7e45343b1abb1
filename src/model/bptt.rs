//! `ScratchGru`'s training step with hand-written backpropagation through time.
//!
//! Autograd over T small steps pays twice: every step records a graph, and every
//! step computes its own small weight-gradient products (`h_{t-1}ᵀ dA_t`, with only
//! B rows) and adds them into the gradient. Here the forward pass keeps what the
//! backward pass needs on a tape of `[T, B, ·]` buffers; the backward pass walks
//! time in reverse computing only what must be sequential (the gradient flowing
//! into `h_{t-1}`), and the weight gradients are then one product each over all
//! `T·B` rows. Same function, same gradients: the tests hold this step to the
//! autograd reference (f64, 1e-10) in both reset variants.
//!
//! Per step (Z, R gates, C candidate, D = H_{t-1} − C, so H_t = C + Z ⊙ D), with
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
use super::scratch::{GruLayer, ScratchGru};
use super::{RecurrentLm, State};
use crate::config::ResetGate;
use tch::Tensor;

/// What one layer's forward pass keeps, all `[T, B, ·]`.
struct Tape {
    /// σ of the gate pre-activations, z then r: `[T, B, 2H]`.
    zr: Tensor,
    /// Candidate C: `[T, B, H]`.
    c: Tensor,
    /// H_{t-1} − C: `[T, B, H]`.
    d: Tensor,
    /// before: R ⊙ H_{t-1}; after: H_{t-1} W_hh + b_hh. `[T, B, H]`.
    u: Tensor,
    /// H_{t-1}, the state each step starts from: `[T, B, H]`.
    h_prev: Tensor,
    /// H_t: `[T, B, H]`.
    out: Tensor,
}

/// A layer's input: token ids (layer 0, one-hot) or the layer below's outputs.
enum Input<'a> {
    Tokens(&'a Tensor),
    Below(&'a Tensor),
}

/// The gradients of one layer, in its parameters' order.
struct LayerGrads {
    w_xz: Tensor,
    w_hz: Tensor,
    b_z: Tensor,
    w_xr: Tensor,
    w_hr: Tensor,
    b_r: Tensor,
    w_xh: Tensor,
    w_hh: Tensor,
    b_h: Tensor,
    b_hh: Option<Tensor>,
}

fn add_grad(p: &Tensor, g: &Tensor) {
    let mut grad = p.grad();
    let _ = grad.g_add_(g);
}

impl ScratchGru {
    /// Makes every parameter's `.grad` exist (zeros), so gradients can be added
    /// in place; autograd creates them on a first backward, which this step has not.
    fn ensure_grads(&self, params: &[Tensor]) {
        if params.iter().any(|p| !p.grad().defined()) {
            let zero = tch::with_grad(|| {
                params.iter().map(|p| p.sum(p.kind()) * 0.0).fold(Tensor::zeros([], (params[0].kind(), params[0].device())), |a, b| a + b)
            });
            zero.backward();
        }
    }

    /// X W + b for all T·B rows at once (the fused forward's projection).
    fn project_all(&self, input: &Input, w: &Tensor, b: &Tensor) -> Tensor {
        match input {
            Input::Below(x) => self.project(Some(x), x, w, b),
            Input::Tokens(ids) => self.project(None, ids, w, b),
        }
    }

    /// `[T·B, in]ᵀ [T·B, out]` for an input: a row scatter-add for one-hot tokens.
    fn input_grad(&self, input: &Input, d: &Tensor, rows: i64) -> Tensor {
        match input {
            Input::Below(x) => x.tr().mm(d),
            Input::Tokens(ids) if !super::deterministic() => {
                Tensor::zeros([rows, d.size()[1]], (d.kind(), d.device())).index_add(0, ids, d)
            }
            Input::Tokens(ids) => ids.one_hot(rows).to_kind(d.kind()).tr().mm(d),
        }
    }

    fn layer_forward(&self, p: &GruLayer, input: &Input, h0: &Tensor, t: i64, b: i64) -> Tape {
        let hd = self.hidden_i64();
        let opts = (h0.kind(), h0.device());
        let x_zr = self.project_all(input, &Tensor::cat(&[&p.w_xz, &p.w_xr], 1), &Tensor::cat(&[&p.b_z, &p.b_r], 0)).view([t, b, 2 * hd]);
        let x_h = self.project_all(input, &p.w_xh, &p.b_h).view([t, b, hd]);
        // The input projections are fresh tensors: the gates and the candidate
        // are computed in place on them (one product per step, no copy).
        let mut tape = Tape {
            zr: x_zr,
            c: x_h,
            d: Tensor::empty([0], opts),      // filled in after the loop
            u: Tensor::empty([0], opts),      // set below
            h_prev: Tensor::empty([0], opts), // set below
            out: Tensor::empty([0], opts),    // set below
        };
        // H_0, H_1, ..., H_T in one buffer [T+1, B, H]: the outputs are rows 1..,
        // and H_{t-1} of every step is rows ..T, with no copy.
        let states = Tensor::empty([t + 1, b, hd], opts);
        states.get(0).copy_(h0);
        tape.out = states.narrow(0, 1, t);
        tape.h_prev = states.narrow(0, 0, t);
        // Per step, in launches (what a GPU step costs): before 6, after 6.
        let mut h = h0.shallow_clone();
        match self.reset_gate() {
            ResetGate::Before => {
                tape.u = Tensor::empty([t, b, hd], opts);
                let w_h_zr = Tensor::cat(&[&p.w_hz, &p.w_hr], 1);
                for s in 0..t {
                    let mut zr = tape.zr.get(s);
                    let _ = zr.addmm_(&h, &w_h_zr);
                    let _ = zr.sigmoid_();
                    let u = tape.u.get(s);
                    let _ = zr.narrow(1, hd, hd).mul_out(&u, &h);
                    let mut c = tape.c.get(s);
                    let _ = c.addmm_(&u, &p.w_hh);
                    let _ = c.tanh_();
                    h = Self::update(&tape, s, &h, &zr, &c, hd);
                }
            }
            ResetGate::After => {
                let b_hh = p.b_hh.as_ref().expect("reset-after layer has b_hh");
                let w_h = Tensor::cat(&[&p.w_hz, &p.w_hr, &p.w_hh], 1);
                let b_h = Tensor::cat(&[&b_hh.zeros_like(), &b_hh.zeros_like(), b_hh], 0);
                // H W_h + [0, 0, b_hh] of every step [T, B, 3H]; U is its last third.
                let hh = Tensor::empty([t, b, 3 * hd], opts);
                tape.u = hh.narrow(2, 2 * hd, hd);
                for s in 0..t {
                    let hs = hh.get(s);
                    let _ = b_h.addmm_out(&hs, &h, &w_h);
                    let mut zr = tape.zr.get(s);
                    let _ = zr.g_add_(&hs.narrow(1, 0, 2 * hd));
                    let _ = zr.sigmoid_();
                    let mut c = tape.c.get(s);
                    let _ = c.addcmul_(&zr.narrow(1, hd, hd), &hs.narrow(1, 2 * hd, hd));
                    let _ = c.tanh_();
                    h = Self::update(&tape, s, &h, &zr, &c, hd);
                }
            }
        }
        // D = H_{t-1} − C for all steps in one go.
        tape.d = &tape.h_prev - &tape.c;
        tape
    }

    /// H_t = C + Z ⊙ (H_{t-1} − C) = lerp(C, H_{t-1}, Z): one launch.
    fn update(tape: &Tape, s: i64, h: &Tensor, zr: &Tensor, c: &Tensor, hd: i64) -> Tensor {
        let out = tape.out.get(s);
        let _ = c.lerp_tensor_out(&out, h, &zr.narrow(1, 0, hd));
        out
    }

    /// Backward through one layer: `d_out [T, B, H]` is the gradient reaching its
    /// outputs from above; it is overwritten (it becomes the whole dH). Returns its parameters' gradients and the gradient of its input
    /// (for the layer below; none for tokens).
    fn layer_backward(&self, p: &GruLayer, tape: &Tape, input: &Input, d_out: &Tensor) -> (LayerGrads, Option<Tensor>) {
        let (t, b, hd) = (d_out.size()[0], d_out.size()[1], self.hidden_i64());
        let opts = (d_out.kind(), d_out.device());
        let after = self.reset_gate() == ResetGate::After;
        // dA for [z, r] (and dU for reset-after, whose hidden product covers W_hh too).
        let gates = if after { 3 * hd } else { 2 * hd };
        let d_a = Tensor::empty([t, b, gates], opts);
        let d_ah = Tensor::empty([t, b, hd], opts);
        let d_zr = Tensor::empty([b, 2 * hd], opts);
        let dc = Tensor::empty([b, hd], opts);
        let zeros = Tensor::zeros([b, hd], opts);
        let w_h = if after { Tensor::cat(&[&p.w_hz, &p.w_hr, &p.w_hh], 1) } else { Tensor::cat(&[&p.w_hz, &p.w_hr], 1) };
        let w_h_t = w_h.tr();
        let w_hh_t = p.w_hh.tr();
        // The gradient reaching H_{t-1} is added in place into d_out[t-1] (which
        // already holds what reaches it from above), so d_out[s] is the whole dH
        // when step s comes. Per step, in launches: before 9, after 8.
        let d_out = d_out.shallow_clone();
        for s in (0..t).rev() {
            let dh = d_out.get(s);
            let zr = tape.zr.get(s);
            let (z, r) = (zr.narrow(1, 0, hd), zr.narrow(1, hd, hd));
            let _ = dh.mul_out(&d_zr.narrow(1, 0, hd), &tape.d.get(s)); // dZ
            let _ = dh.lerp_tensor_out(&dc, &zeros, &z); // dC = dH ⊙ (1 − Z)
            let dah = d_ah.get(s);
            let _ = Tensor::tanh_backward_grad_input(&dah, &dc, &tape.c.get(s));
            let da = d_a.get(s);
            let du = if after {
                let _ = dah.mul_out(&d_zr.narrow(1, hd, hd), &tape.u.get(s)); // dR
                let _ = dah.mul_out(&da.narrow(1, 2 * hd, hd), &r); // dU
                None
            } else {
                let du = dah.mm(&w_hh_t);
                let _ = du.mul_out(&d_zr.narrow(1, hd, hd), &tape.h_prev.get(s)); // dR
                Some(du)
            };
            let _ = Tensor::sigmoid_backward_grad_input(&da.narrow(1, 0, 2 * hd), &d_zr, &zr);
            if s > 0 {
                // H_0 comes from a detached state: no gradient is needed for it.
                let mut next = d_out.get(s - 1);
                let _ = next.addmm_(&da, &w_h_t);
                let _ = next.addcmul_(&dh, &z);
                if let Some(du) = &du {
                    let _ = next.addcmul_(du, &r);
                }
            }
        }
        // The weight gradients: one product over all T·B rows each.
        let rows = t * b;
        let d_a = d_a.view([rows, gates]);
        let d_ah = d_ah.view([rows, hd]);
        let d_azr = d_a.narrow(1, 0, 2 * hd);
        let g_h = tape.h_prev.view([rows, hd]).tr().mm(&d_a); // [H, gates]
        let in_rows = match input {
            Input::Tokens(_) => self.vocab_size_i64(),
            Input::Below(_) => hd,
        };
        let g_x_zr = self.input_grad(input, &d_azr, in_rows);
        let g_xh = self.input_grad(input, &d_ah, in_rows);
        let b_zr = d_azr.sum_dim_intlist(0, false, d_a.kind());
        let (w_hh, b_hh) = if after {
            (g_h.narrow(1, 2 * hd, hd), Some(d_a.narrow(1, 2 * hd, hd).sum_dim_intlist(0, false, d_a.kind())))
        } else {
            (tape.u.view([rows, hd]).tr().mm(&d_ah), None)
        };
        let grads = LayerGrads {
            w_xz: g_x_zr.narrow(1, 0, hd),
            w_hz: g_h.narrow(1, 0, hd),
            b_z: b_zr.narrow(0, 0, hd),
            w_xr: g_x_zr.narrow(1, hd, hd),
            w_hr: g_h.narrow(1, hd, hd),
            b_r: b_zr.narrow(0, hd, hd),
            w_xh: g_xh,
            w_hh,
            b_h: d_ah.sum_dim_intlist(0, false, d_ah.kind()),
            b_hh,
        };
        let d_input = match input {
            Input::Below(_) => {
                let w_x_zr = Tensor::cat(&[&p.w_xz, &p.w_xr], 1);
                Some(d_ah.mm(&p.w_xh.tr()).addmm(&d_azr, &w_x_zr.tr()))
            }
            Input::Tokens(_) => None,
        };
        (grads, d_input)
    }

    /// One training step: forward with a tape, d2l's loss, hand-written backward.
    /// Adds every parameter's gradient into `.grad`; returns the loss and the new
    /// state, both detached.
    pub(super) fn train_step_bptt(&self, tokens: &Tensor, targets: &Tensor, state: &State) -> (Tensor, State) {
        let params: Vec<Tensor> = self.var_store().trainable_variables();
        self.ensure_grads(&params);
        tch::no_grad(|| {
            let (b, t) = (tokens.size()[0], tokens.size()[1]);
            let hd = self.hidden_i64();
            let ids = tokens.tr().reshape([-1]); // [T*B], time-major
            let h0 = state.hidden().detach();
            let mut tapes = Vec::with_capacity(self.layers().len());
            for (l, p) in self.layers().iter().enumerate() {
                let below = tapes.last().map(|tp: &Tape| tp.out.view([t * b, hd]));
                let input = match &below {
                    Some(x) => Input::Below(x),
                    None => Input::Tokens(&ids),
                };
                tapes.push(self.layer_forward(p, &input, &h0.get(l as i64), t, b));
            }
            let top = tapes.last().expect("at least one layer").out.view([t * b, hd]);
            let (w_hq, b_q) = self.output_layer();
            // d2l's loss: mean cross-entropy per token; dlogits = (softmax − onehot)/N.
            let logp = b_q.addmm(&top, w_hq).log_softmax(-1, top.kind());
            let y = targets.tr().reshape([-1, 1]);
            let n = (t * b) as f64;
            let loss = -logp.gather(1, &y, false).sum(top.kind()) / n;
            let dlogits = logp.exp().scatter_add(1, &y, &Tensor::full([t * b, 1], -1.0, (top.kind(), top.device()))) / n;
            add_grad(w_hq, &top.tr().mm(&dlogits));
            add_grad(b_q, &dlogits.sum_dim_intlist(0, false, dlogits.kind()));
            let mut d_out = dlogits.mm(&w_hq.tr()).view([t, b, hd]);
            for (l, p) in self.layers().iter().enumerate().rev() {
                let below = if l > 0 { Some(tapes[l - 1].out.view([t * b, hd])) } else { None };
                let input = match &below {
                    Some(x) => Input::Below(x),
                    None => Input::Tokens(&ids),
                };
                let (g, d_in) = self.layer_backward(p, &tapes[l], &input, &d_out);
                for (param, grad) in [
                    (&p.w_xz, &g.w_xz),
                    (&p.w_hz, &g.w_hz),
                    (&p.b_z, &g.b_z),
                    (&p.w_xr, &g.w_xr),
                    (&p.w_hr, &g.w_hr),
                    (&p.b_r, &g.b_r),
                    (&p.w_xh, &g.w_xh),
                    (&p.w_hh, &g.w_hh),
                    (&p.b_h, &g.b_h),
                ] {
                    add_grad(param, grad);
                }
                if let (Some(param), Some(grad)) = (&p.b_hh, &g.b_hh) {
                    add_grad(param, grad);
                }
                if let Some(d) = d_in {
                    d_out = d.view([t, b, hd]);
                }
            }
            let finals: Vec<Tensor> = tapes.iter().map(|tp| tp.out.get(t - 1)).collect();
            (loss, State(vec![Tensor::stack(&finals, 0)]))
        })
    }
}
