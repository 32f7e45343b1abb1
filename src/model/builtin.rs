//! `BuiltinLm`: the chapters' concise models, libtorch's fused RNN, GRU or LSTM
//! plus a linear layer.
//!
//! The sequence runs in one call to ATen's `rnn_tanh`, `gru` or `lstm` (cuDNN on
//! CUDA), which compute, per layer (gate rows in PyTorch's order):
//!
//! ```text
//! rnn:  h' = tanh(W_ih x + b_ih + W_hh h + b_hh)
//! gru:  r = σ(W_ir x + b_ir + W_hr h + b_hr)          lstm: i = σ(W_ii x + b_ii + W_hi h + b_hi)
//!       z = σ(W_iz x + b_iz + W_hz h + b_hz)                f = σ(W_if x + b_if + W_hf h + b_hf)
//!       n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))        g = tanh(W_ig x + b_ig + W_hg h + b_hg)
//!       h' = (1 − z) ⊙ n + z ⊙ h                            o = σ(W_io x + b_io + W_ho h + b_ho)
//!                                                           c' = f ⊙ c + i ⊙ g,  h' = o ⊙ tanh(c')
//! ```
//!
//! Parameter names are PyTorch's for d2l's `RNNModel`: `rnn.weight_ih_l{k}`,
//! `rnn.weight_hh_l{k}`, `rnn.bias_ih_l{k}`, `rnn.bias_hh_l{k}` (weights
//! `[gates·H, in]`), `linear.weight [V, H]`, `linear.bias [V]`, so a checkpoint
//! loads into PyTorch. Initialisation is PyTorch's module default,
//! U(−1/√H, 1/√H) for every tensor (not tch's Kaiming). tch has modules for the
//! GRU and the LSTM but not for `rnn_tanh`, so all three are called the same way
//! here: the ops directly, time-major, with an explicit `[L, B, H]` state.
//!
//! Dropout (`model.dropout`, training only) as PyTorch's `nn.GRU(dropout=p)`
//! between the layers (ATen's argument), and on the top layer's output before
//! the linear layer, as char-rnn and d2l's scratch masks do.
//!
//! Weight drop (`model.weight_drop`, training only) as AWD-LSTM's `WeightDrop`:
//! each training pass draws one mask per layer over `weight_hh_l{k}`
//! ([`super::weight_drop_masks`], before the dropout masks) and hands the op
//! `weight_hh ⊙ M`; autograd takes the gradient back through the product.
//!
//! On the CPU (f32, f64) the training step runs on grulm's CPU engine
//! (`model::cpu`): the scratch cell that computes the same function (the GRU
//! reset-after, the LSTM, the RNN) takes this model's weights through the
//! layout table, runs its step, and hands the gradients back in PyTorch's
//! layout (weight-dropped weights in, gradients times the masks out). Its
//! dropout masks are drawn as libtorch draws them, so the step is
//! libtorch's in every number (the tests hold the two together); evaluation
//! and sampling call libtorch's op. `BuildOptions::libtorch_step` keeps
//! libtorch's own step.
use super::layout::{self, BiasHh};
use super::{BuiltinCell, CellKind, GruGates, RecurrentLm, State};
use std::collections::HashMap;
use tch::nn::{self, Init, Module, VarStore};
use tch::Tensor;

pub(crate) struct BuiltinLm {
    vs: VarStore,
    cell: CellKind,
    /// libtorch's op for the cell.
    op: BuiltinCell,
    /// Per layer: weight_ih, weight_hh, bias_ih, bias_hh (the order ATen expects).
    weights: Vec<Tensor>,
    linear: nn::Linear,
    vocab: i64,
    hidden: i64,
    layers: i64,
    dropout: f64,
    /// `model.weight_drop`.
    weight_drop: f64,
    /// The scratch cell whose CPU engine runs the training step (see the module doc).
    engine: Option<Box<dyn RecurrentLm>>,
}

impl BuiltinLm {
    pub fn new(vs: VarStore, cell: CellKind, vocab: i64, hidden: i64, layers: i64, dropout: f64, weight_drop: f64) -> BuiltinLm {
        let bound = 1.0 / (hidden as f64).sqrt();
        let u = Init::Uniform { lo: -bound, up: bound };
        let op = cell.builtin().unwrap_or_else(|| panic!("libtorch has no {} cell (the config refuses it)", cell.label()));
        let (gates, mode) = (cell.gate_count(GruGates::Both) as i64, op.cudnn_mode());
        let root = vs.root();
        let rnn = &root / "rnn";
        let mut weights = vec![];
        for k in 0..layers {
            let input = if k == 0 { vocab } else { hidden };
            weights.push(rnn.var(&format!("weight_ih_l{k}"), &[gates * hidden, input], u));
            weights.push(rnn.var(&format!("weight_hh_l{k}"), &[gates * hidden, hidden], u));
            weights.push(rnn.var(&format!("bias_ih_l{k}"), &[gates * hidden], u));
            weights.push(rnn.var(&format!("bias_hh_l{k}"), &[gates * hidden], u));
        }
        if vs.device().is_cuda() && tch::Cuda::cudnn_is_available() {
            // One contiguous weight buffer, as PyTorch's `flatten_parameters`
            // (otherwise cuDNN copies the weights on every call).
            let _ = Tensor::internal_cudnn_rnn_flatten_weight(&weights, 4, vocab, mode, hidden, 0, layers, false, false);
        }
        let linear = nn::linear(&root / "linear", hidden, vocab, nn::LinearConfig { ws_init: u, bs_init: Some(u), bias: true });
        BuiltinLm { vs, cell, op, weights, linear, vocab, hidden, layers, dropout, weight_drop, engine: None }
    }

    /// A training pass's weight-drop masks, one per layer over `weight_hh_l{k}`
    /// `[G·H, H]`; none when not training or without weight drop.
    fn weight_drop_masks(&self, train: bool) -> Option<Vec<Tensor>> {
        if !train || self.weight_drop == 0.0 {
            return None;
        }
        let shapes: Vec<[i64; 2]> =
            (0..self.layers as usize).map(|k| self.weights[4 * k + 1].size().try_into().expect("a matrix")).collect();
        Some(super::weight_drop_masks(&shapes, self.weight_drop, &self.weights[1]))
    }

    /// Trains through `same`, a scratch model of the same function (see the module doc).
    pub(super) fn train_on_engine(&mut self, same: Box<dyn RecurrentLm>) {
        self.engine = Some(same);
    }

    /// The training step on the scratch model `same`: this model's weights in,
    /// its gradients out, each through the layout table.
    fn train_step_on(&self, same: &dyn RecurrentLm, tokens: &Tensor, targets: &Tensor, state: &State) -> (Tensor, State) {
        let params: HashMap<String, Tensor> = self.named_parameters().into_iter().collect();
        let (cell, layers) = (self.cell, self.layers as usize);
        let w_masks = self.weight_drop_masks(true);
        let hh = |k: usize| format!("rnn.weight_hh_l{k}");
        let mut inputs: HashMap<String, Tensor> = params.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect();
        for (k, m) in w_masks.iter().flatten().enumerate() {
            inputs.insert(hh(k), tch::no_grad(|| &params[&hh(k)] * m));
        }
        let mapped = layout::pytorch_to_scratch(&inputs, cell, layers).expect("a built-in model maps to its scratch cell");
        let theirs = same.named_parameters();
        tch::no_grad(|| {
            crate::platform::tensorfile::assign(&theirs, &mapped, "the built-in weights").expect("the scratch cell has the same shapes");
            for (_, p) in &theirs {
                let _ = p.grad().f_zero_(); // undefined before the first step: nothing to clear
            }
        });
        let (loss, state) = same.train_step(tokens, targets, state);
        let grads: HashMap<String, Tensor> = theirs.iter().map(|(n, p)| (n.clone(), p.grad())).collect();
        let mut grads = layout::scratch_to_pytorch(&grads, cell, layers, BiasHh::Gradient).expect("the scratch cell maps back");
        for (k, m) in w_masks.iter().flatten().enumerate() {
            let g = grads.iter_mut().find(|(n, _)| *n == hh(k)).expect("every layer's weight_hh has a gradient");
            g.1 = &g.1 * m; // through W_hh ⊙ M
        }
        super::bptt::ensure_grads(&self.vs.trainable_variables());
        tch::no_grad(|| {
            for (name, g) in grads {
                super::bptt::add_grad(&params[&name], &g);
            }
        });
        (loss, state)
    }
}

impl RecurrentLm for BuiltinLm {
    fn zero_state(&self, batch: i64) -> State {
        let zeros = || Tensor::zeros([self.layers, batch, self.hidden], (self.linear.ws.kind(), self.linear.ws.device()));
        State((0..self.cell.state_count()).map(|_| zeros()).collect())
    }

    fn forward_t(&self, tokens: &Tensor, state: &State, train: bool) -> (Tensor, State) {
        let inputs = tokens.tr().one_hot(self.vocab).to_kind(self.linear.ws.kind()); // [T, B, V]
        let dropped: Option<Vec<Tensor>> = self.weight_drop_masks(train).map(|masks| {
            let mut w: Vec<Tensor> = self.weights.iter().map(Tensor::shallow_clone).collect();
            for (k, m) in masks.iter().enumerate() {
                w[4 * k + 1] = &self.weights[4 * k + 1] * m;
            }
            w
        });
        let (w, l, p) = (dropped.as_ref().unwrap_or(&self.weights), self.layers, self.dropout);
        // has_biases, num_layers, dropout, train, bidirectional, batch_first
        let (outputs, state) = match self.op {
            BuiltinCell::RnnTanh => {
                let (y, h) = inputs.rnn_tanh(&state.0[0], w, true, l, p, train, false, false);
                (y, vec![h])
            }
            BuiltinCell::Gru => {
                let (y, h) = inputs.gru(&state.0[0], w, true, l, p, train, false, false);
                (y, vec![h])
            }
            BuiltinCell::Lstm => {
                let w: Vec<&Tensor> = w.iter().collect();
                let (y, h, c) = inputs.lstm(&[&state.0[0], &state.0[1]], &w, true, l, p, train, false, false);
                (y, vec![h, c])
            }
        };
        let outputs = if train && p > 0.0 { outputs.dropout(p, true) } else { outputs };
        (self.linear.forward(&outputs), State(state))
    }

    fn train_step(&self, tokens: &Tensor, targets: &Tensor, state: &State) -> (Tensor, State) {
        match &self.engine {
            Some(same) => self.train_step_on(same.as_ref(), tokens, targets, state),
            None => super::autograd_step(self, tokens, targets, state),
        }
    }

    fn var_store(&self) -> &VarStore {
        &self.vs
    }

    fn vocab_size(&self) -> i64 {
        self.vocab
    }

    fn describe(&self) -> String {
        format!("built-in {}, {} layer(s), H={})", self.op.label(), self.layers, self.hidden)
    }
}
