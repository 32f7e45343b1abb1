//! `ScratchLm`: a character-level language model on a cell written by hand.
//!
//! Layer k of L runs its cell (`cell/`: the chapter's RNN, GRU or LSTM) over its
//! input `X_t [B, in]` (a one-hot token for layer 0, the hidden state of the layer
//! below otherwise); the top layer's `H_t` goes through the output layer:
//!
//! ```text
//! Y_t = H_t W_hq + b_q
//! ```
//!
//! While training with `model.dropout = p`, each layer's output is multiplied by
//! a mask `M [T, B, H]` of Bernoulli(1 − p) / (1 − p) entries on its way up, into
//! the layer above or, from the top layer, into the output layer (not into the
//! layer's own next step: the recurrence is never dropped). That is
//! `nn.GRU(dropout=p)` plus dropout before the linear layer, masks drawn as
//! libtorch draws them ([`super::dropout_masks`]).
//!
//! With `model.weight_drop = p` (DropConnect on the recurrence, AWD-LSTM's
//! `WeightDrop`), each training pass first draws one mask `M [H, G·H]` per
//! layer ([`super::weight_drop_masks`]) and runs the layer on `W_h ⊙ M` in place
//! of `W_h`, every step and row of the minibatch alike; the gradient reaching
//! `W_h` is the one reaching `W_h ⊙ M`, times `M`. Evaluation and sampling use
//! `W_h` itself (the masks are inverted, so no rescaling).
//!
//! Weights are `[in, out]` and applied as `X W` (d2l's layout; PyTorch stores
//! `[out, in]`, see [`super::layout`]). Initialisation as d2l: weights
//! N(0, σ²) with σ = 0.01, biases zero. Names carry the layer: `W_xz_l0`, ...,
//! and the output layer `W_hq`, `b_q`.
//!
//! Three paths compute the same function ([`ScratchPath`]):
//! * [`ScratchPath::Reference`] reads like the chapter: one-hot inputs, the cell's
//!   readable step (a matrix product per gate and input), looped over time. It is
//!   the reference the tests hold everything else to.
//! * [`ScratchPath::Fused`] hoists the input projection of all T steps out of the
//!   time loop (for layer 0 a row gather, which is what a one-hot product
//!   computes) and fuses the gates' hidden products into one matrix product per
//!   step; autograd differentiates it.
//! * [`ScratchPath::Bptt`] (what the trainer uses) runs the cell in place over
//!   `[T, B, ·]` buffers and differentiates a training step by hand (`bptt.rs`):
//!   the weight gradients become one product over all T·B rows instead of T
//!   small ones.
use super::cell::{Cell, Gate, Layer};
use super::{RecurrentLm, State};
use tch::nn::VarStore;
use tch::{Kind, Tensor};

/// How the model computes: its forward, and the gradients of a training step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScratchPath {
    /// The readable forward (one-hot, the cell's reference step), autograd backward.
    Reference,
    /// The fused forward (gathered input projections, fused hidden products),
    /// autograd backward.
    Fused,
    /// The fused forward, and a training step with hand-written backpropagation
    /// through time (`bptt.rs`): what the trainer uses. On the CPU its time loop
    /// runs on the CPU engine (`model::cpu`), elsewhere as [`ScratchPath::BpttOps`].
    Bptt,
    /// [`ScratchPath::Bptt`] with its time loop in libtorch operations on every
    /// device (what CUDA runs; on the CPU, for tests and `grulm bench`).
    BpttOps,
}

pub(crate) struct ScratchLm<C: Cell> {
    vs: VarStore,
    pub(super) cell: C,
    pub(super) layers: Vec<Layer>,
    pub(super) w_hq: Tensor,
    pub(super) b_q: Tensor,
    vocab: i64,
    hidden: i64,
    path: ScratchPath,
    /// Project one-hot inputs with a matrix product instead of a gather, whose
    /// CUDA backward adds with atomics (`train.deterministic`).
    deterministic: bool,
    /// `model.dropout`: the probability of dropping a layer output while training.
    dropout: f64,
    /// `model.weight_drop`: the probability of dropping a hidden weight while training.
    weight_drop: f64,
    /// `train.precision = "bf16"`: the CPU engine's training step multiplies
    /// bf16 inputs (`cpu/bf16.rs`); evaluation and sampling stay f32.
    bf16: bool,
}

/// One training pass's weight-dropped layers: per layer, its mask `[H, G·H]`
/// over the fused hidden weights and the layer with `W_h ⊙ M` (the other
/// parameters shared).
pub(super) struct WeightDropped {
    pub layers: Vec<Layer>,
    pub masks: Vec<Tensor>,
}

impl<C: Cell> ScratchLm<C> {
    /// A model of `num_layers` layers of `cell`, weights N(0, sigma²) (zeros,
    /// with no draw, for sigma 0), biases zero.
    pub fn new(vs: VarStore, cell: C, vocab: i64, hidden: i64, num_layers: i64, sigma: f64) -> ScratchLm<C> {
        let root = vs.root();
        // sigma 0: zeros, drawing nothing from the generator (a model whose
        // weights are assigned afterwards, as BuiltinLm's CPU engine).
        let weight = |name: &str, rows: i64, cols: i64| match sigma {
            0.0 => root.zeros(name, &[rows, cols]),
            _ => root.randn(name, &[rows, cols], 0.0, sigma),
        };
        let layers = (0..num_layers)
            .map(|l| {
                let input = if l == 0 { vocab } else { hidden };
                let w = |name: String, rows: i64| weight(&format!("{name}_l{l}"), rows, hidden);
                let b = |name: &str| root.zeros(&format!("{name}_l{l}"), &[hidden]);
                let gates = cell
                    .gates()
                    .into_iter()
                    .map(|def| Gate {
                        w_x: w(format!("W_x{}", def.name), input),
                        w_h: def.hidden.then(|| w(format!("W_h{}", def.name), hidden)),
                        b: b(def.bias),
                        b_h: def.hidden_bias.map(b),
                        def,
                    })
                    .collect();
                Layer { gates }
            })
            .collect();
        let w_hq = weight("W_hq", hidden, vocab);
        let b_q = root.zeros("b_q", &[vocab]);
        ScratchLm {
            vs,
            cell,
            layers,
            w_hq,
            b_q,
            vocab,
            hidden,
            path: ScratchPath::Bptt,
            deterministic: false,
            dropout: 0.0,
            weight_drop: 0.0,
            bf16: false,
        }
    }

    /// `train.precision`: bf16 products in the CPU engine's training step.
    pub(crate) fn set_precision(&mut self, precision: super::Precision) {
        self.bf16 = precision == super::Precision::Bf16;
    }

    pub(crate) fn set_path(&mut self, path: ScratchPath) {
        self.path = path;
    }

    pub(crate) fn set_deterministic(&mut self, on: bool) {
        self.deterministic = on;
    }

    /// `model.dropout` and `model.weight_drop`.
    pub(crate) fn set_dropout(&mut self, dropout: f64, weight_drop: f64) {
        assert!(
            weight_drop == 0.0 || self.layers.iter().all(|l| l.gates.iter().all(|g| g.w_h.is_some())),
            "weight drop needs hidden weights in every gate (the config refuses it for the other cells)"
        );
        self.dropout = dropout;
        self.weight_drop = weight_drop;
    }

    /// A training pass's weight-dropped layers (drawn before its dropout
    /// masks); none when not training or without weight drop.
    pub(super) fn weight_dropped(&self, train: bool) -> Option<WeightDropped> {
        if !train || self.weight_drop == 0.0 {
            return None;
        }
        let shapes: Vec<[i64; 2]> = self.layers.iter().map(|l| [self.hidden, l.gates.len() as i64 * self.hidden]).collect();
        let masks = super::weight_drop_masks(&shapes, self.weight_drop, &self.w_hq);
        let layers = self.layers.iter().zip(&masks).map(|(l, m)| l.with_hidden_mask(m)).collect();
        Some(WeightDropped { layers, masks })
    }

    /// The layers a training pass runs: weight-dropped, or the model's own.
    pub(super) fn layers_of<'a>(&'a self, dropped: &'a Option<WeightDropped>) -> &'a [Layer] {
        dropped.as_ref().map_or(&self.layers, |d| &d.layers)
    }

    /// A training pass's dropout masks, one `[T, B, H]` per layer (layer l's
    /// output on its way up); none when not training or without dropout.
    pub(super) fn masks(&self, train: bool, t: i64, b: i64) -> Vec<Tensor> {
        if !train || self.dropout == 0.0 {
            return vec![];
        }
        super::dropout_masks(self.layers.len(), [t, b, self.hidden], self.dropout, &self.w_hq)
    }

    /// Whether the training step's time loop runs on the CPU engine for
    /// buffers like `x` (see [`ScratchPath::Bptt`]).
    pub(super) fn on_cpu_engine(&self, x: &Tensor) -> bool {
        self.path == ScratchPath::Bptt && super::cpu::supports(x)
    }

    /// Whether a training step over buffers like `x` multiplies in bf16: with
    /// `train.precision = "bf16"`, on the CPU engine, in f32.
    pub(super) fn bf16_products(&self, x: &Tensor) -> bool {
        self.bf16 && self.on_cpu_engine(x) && x.kind() == Kind::Float
    }

    pub(super) fn hidden_size(&self) -> i64 {
        self.hidden
    }

    /// The readable forward: one-hot `[T, B, V]` inputs, a loop over time, the
    /// layers stacked inside it.
    fn forward_reference(&self, tokens: &Tensor, state: &State, train: bool) -> (Tensor, State) {
        let inputs = tokens.tr().one_hot(self.vocab).to_kind(self.w_hq.kind()); // [T, B, V]
        let steps = inputs.size()[0];
        let dropped = self.weight_dropped(train);
        let masks = self.masks(train, steps, inputs.size()[1]);
        let mut s: Vec<Vec<Tensor>> = state.per_layer(); // L x state
        let mut outputs = Vec::with_capacity(steps as usize);
        for t in 0..steps {
            let mut x = inputs.get(t);
            for (l, p) in self.layers_of(&dropped).iter().enumerate() {
                s[l] = self.cell.step_reference(p, &x, &s[l]);
                x = match masks.get(l) {
                    Some(m) => &s[l][0] * m.get(t), // dropout on the way up
                    None => s[l][0].shallow_clone(),
                };
            }
            outputs.push(x.mm(&self.w_hq) + &self.b_q); // [B, V]
        }
        (Tensor::stack(&outputs, 0), State::from_layers(&s))
    }

    /// The top layer's gates ([`Cell::gates_reference`]) at every step of `tokens`
    /// (`[1, T]`) from a zero state, as the readable forward computes them: per
    /// gate, its name and `[T, H]`.
    pub(crate) fn top_layer_gates(&self, tokens: &Tensor) -> Vec<(&'static str, Tensor)> {
        tch::no_grad(|| {
            let inputs = tokens.tr().one_hot(self.vocab).to_kind(self.w_hq.kind()); // [T, 1, V]
            let mut s: Vec<Vec<Tensor>> = self.zero_state(1).per_layer();
            let top = self.layers.len() - 1;
            let mut steps: Vec<Vec<(&'static str, Tensor)>> = vec![];
            for t in 0..inputs.size()[0] {
                let mut x = inputs.get(t);
                for (l, p) in self.layers.iter().enumerate() {
                    if l == top {
                        steps.push(self.cell.gates_reference(p, &x, &s[l]));
                    }
                    s[l] = self.cell.step_reference(p, &x, &s[l]);
                    x = s[l][0].shallow_clone();
                }
            }
            let names: Vec<&'static str> = steps.first().map_or(vec![], |g| g.iter().map(|g| g.0).collect());
            names.iter().enumerate().map(|(k, &n)| (n, Tensor::cat(&steps.iter().map(|g| &g[k].1).collect::<Vec<_>>(), 0))).collect()
        })
    }

    /// Input projections of all T steps at once: `[T*B, out]`, X W + b. For layer 0
    /// the input is one-hot (token ids `[T*B]`), and one_hot(ids) W is a row gather of W.
    /// `bf16`: the product takes bf16 inputs.
    pub(super) fn project(&self, below: Option<&Tensor>, ids: &Tensor, w: &Tensor, b: &Tensor, bf16: bool) -> Tensor {
        match below {
            Some(x) if bf16 => super::cpu::bf16::mm(x, w) + b,
            Some(x) => b.addmm(x, w),
            None if !self.deterministic => Tensor::embedding(w, ids, -1, false, false) + b,
            // The gather's CUDA backward adds with atomics; a product does not.
            None => b.addmm(&ids.one_hot(self.vocab).to_kind(w.kind()), w),
        }
    }

    /// `[T·B, in]ᵀ d [T·B, out]` for a layer's input: a row scatter-add for tokens.
    pub(super) fn input_grad(&self, below: Option<&Tensor>, ids: &Tensor, d: &Tensor, bf16: bool) -> Tensor {
        match below {
            Some(x) if bf16 => super::cpu::bf16::mm(&x.tr(), d),
            Some(x) => x.tr().mm(d),
            None if !self.deterministic => Tensor::zeros([self.vocab, d.size()[1]], (d.kind(), d.device())).index_add(0, ids, d),
            None => ids.one_hot(self.vocab).to_kind(d.kind()).tr().mm(d),
        }
    }

    /// The fast forward, same function (see the module doc).
    ///
    /// Per-step tensors come from `unbind`, whose backward is one `stack`;
    /// indexing a slice (`get`, `narrow`) would make autograd write a zero-filled
    /// copy of the whole `[T, B, G·H]` tensor for every step.
    fn forward_fused(&self, tokens: &Tensor, state: &State, train: bool) -> (Tensor, State) {
        let (b, t) = (tokens.size()[0], tokens.size()[1]);
        let hd = self.hidden;
        let dropped = self.weight_dropped(train);
        let masks = self.masks(train, t, b);
        let ids = tokens.tr().reshape([-1]); // [T*B], time-major
        let s0 = state.per_layer();
        let mut finals = Vec::with_capacity(self.layers.len());
        let mut below: Option<Tensor> = None; // [T*B, H], the layer below's outputs
        for (l, p) in self.layers_of(&dropped).iter().enumerate() {
            let xa = self.project(below.as_ref(), &ids, &p.w_x(), &p.b(), false);
            let xa = xa.view([t, b, -1]).unbind(0);
            let w_h = p.w_h();
            let mut s = s0[l].iter().map(Tensor::shallow_clone).collect::<Vec<_>>();
            let mut outs = Vec::with_capacity(t as usize);
            for xa_t in &xa {
                s = self.cell.step_fused(p, xa_t, &w_h, &s);
                outs.push(s[0].shallow_clone());
            }
            finals.push(s);
            let out = Tensor::stack(&outs, 0); // [T, B, H]
            let out = match masks.get(l) {
                Some(m) => out * m, // dropout on the way up
                None => out,
            };
            below = Some(out.view([t * b, hd]));
        }
        let top = below.expect("at least one layer");
        let logits = self.b_q.addmm(&top, &self.w_hq).view([t, b, self.vocab]);
        (logits, State::from_layers(&finals))
    }
}

impl<C: Cell> RecurrentLm for ScratchLm<C> {
    fn zero_state(&self, batch: i64) -> State {
        let opts = (self.w_hq.kind(), self.w_hq.device());
        let zeros = || Tensor::zeros([self.layers.len() as i64, batch, self.hidden], opts);
        State((0..self.cell.state_size()).map(|_| zeros()).collect())
    }

    fn forward_t(&self, tokens: &Tensor, state: &State, train: bool) -> (Tensor, State) {
        debug_assert_eq!(tokens.kind(), Kind::Int64);
        match self.path {
            ScratchPath::Reference => self.forward_reference(tokens, state, train),
            ScratchPath::Fused | ScratchPath::Bptt | ScratchPath::BpttOps => self.forward_fused(tokens, state, train),
        }
    }

    fn train_step(&self, tokens: &Tensor, targets: &Tensor, state: &State) -> (Tensor, State) {
        match self.path {
            ScratchPath::Bptt | ScratchPath::BpttOps => self.train_step_bptt(tokens, targets, state),
            ScratchPath::Reference | ScratchPath::Fused => super::autograd_step(self, tokens, targets, state),
        }
    }

    fn var_store(&self) -> &VarStore {
        &self.vs
    }

    fn vocab_size(&self) -> i64 {
        self.vocab
    }

    fn describe(&self) -> String {
        let (name, detail) = self.cell.describe();
        let detail = detail.map(|d| d + ", ").unwrap_or_default();
        format!("scratch {name} ({detail}{} layer(s), H={})", self.layers.len(), self.hidden)
    }
}
