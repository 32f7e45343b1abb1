//! Recurrent cells for the scratch engine: what varies between the RNN, the GRU,
//! the LSTM and the parallel-in-time minGRU and minLSTM, and nothing else.
//!
//! Every cell is a list of gates. A gate is one parameter unit (burn's
//! `GateController`): `W_x [in, H]`, `W_h [H, H]` and a bias `b [H]`, whose
//! pre-activation is `X W_x + H_{t-1} W_h + b` (the GRU's reset-after candidate
//! also has a hidden-side bias, `b_hh`). The minGRU's and minLSTM's gates read
//! `X_t` only: they have no `W_h` ([`GateDef::input_only`]), which is what makes
//! their recurrence linear (`scan.rs`). Names, initialisation, the fused weight
//! columns and the weight gradients all come from that one list
//! ([`Cell::gates`]); a cell adds only its equations:
//!
//! * [`Cell::step_reference`]: one step as the chapter writes it (readable; the
//!   reference the tests hold the other paths to);
//! * [`Cell::step_fused`]: one step on the input projections of all gates at once
//!   and one hidden product, differentiable by autograd;
//! * [`Cell::forward_tape`] / [`Cell::backward_tape`]: the same step in place over
//!   `[T, B, ·]` buffers, keeping what the hand-written backward pass needs, and
//!   that backward pass (the gradients of the gates' pre-activations; the engine
//!   turns them into weight gradients with one product over all T·B rows).
//!
//! Shape legend: T steps, B batch, H hidden units, G gates (the fused columns are
//! G·H wide, gate k at columns k·H..(k+1)·H).
mod gru;
mod lstm;
mod mingru;
mod minlstm;
mod rnn;
mod scan;

pub use gru::Gru;
pub use lstm::Lstm;
pub use mingru::MinGru;
pub use minlstm::MinLstm;
pub use rnn::Rnn;

use crate::model::cpu::gemm::Packed;
use crate::model::cpu::Real;
use serde::Serialize;
use tch::Tensor;

/// The recurrent cell (`model.cell`). Everything grulm needs to know about a
/// cell outside its own folder is a method here, each one exhaustive match: a
/// new cell is a new variant, and the compiler lists every fact it must state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CellKind {
    Gru,
    Lstm,
    Rnn,
    #[serde(rename = "mingru")]
    MinGru,
    #[serde(rename = "minlstm")]
    MinLstm,
}

/// libtorch's own op for a cell (`model.kind = "builtin"`), and cuDNN's mode
/// number for it (`rnn.cpp`: RNN_TANH 1, LSTM 2, GRU 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuiltinCell {
    RnnTanh,
    Gru,
    Lstm,
}

impl BuiltinCell {
    /// How the built-in model names its op in logs: the GRU's is reset-after.
    pub(crate) fn label(self) -> &'static str {
        match self {
            BuiltinCell::Gru => "GRU (libtorch, reset after",
            BuiltinCell::Lstm => "LSTM (libtorch",
            BuiltinCell::RnnTanh => "RNN (libtorch, tanh",
        }
    }

    /// cuDNN's mode number.
    pub(crate) fn cudnn_mode(self) -> i64 {
        match self {
            BuiltinCell::RnnTanh => 1,
            BuiltinCell::Lstm => 2,
            BuiltinCell::Gru => 3,
        }
    }
}

impl CellKind {
    /// Every cell, in the order help texts list them.
    pub const ALL: [CellKind; 5] = [CellKind::Gru, CellKind::Lstm, CellKind::Rnn, CellKind::MinGru, CellKind::MinLstm];

    /// Its `model.cell` value.
    pub fn name(self) -> &'static str {
        match self {
            CellKind::Gru => "gru",
            CellKind::Lstm => "lstm",
            CellKind::Rnn => "rnn",
            CellKind::MinGru => "mingru",
            CellKind::MinLstm => "minlstm",
        }
    }

    /// The cell `model.cell = name` names.
    pub fn from_name(name: &str) -> Option<CellKind> {
        CellKind::ALL.into_iter().find(|c| c.name() == name)
    }

    /// Its name in logs and tables.
    pub fn label(self) -> &'static str {
        match self {
            CellKind::Gru => "GRU",
            CellKind::Lstm => "LSTM",
            CellKind::Rnn => "RNN",
            CellKind::MinGru => "minGRU",
            CellKind::MinLstm => "minLSTM",
        }
    }

    /// Tensors in its state: `H`, and the LSTM's memory cell `C`.
    pub fn state_count(self) -> usize {
        match self {
            CellKind::Gru | CellKind::Rnn | CellKind::MinGru | CellKind::MinLstm => 1,
            CellKind::Lstm => 2,
        }
    }

    /// Gates per layer (a weight unit `W_x, W_h, b` each, the candidate
    /// included): the GRU's 3, or 2 for its one-gate ablations.
    pub fn gate_count(self, gru_gates: super::GruGates) -> u64 {
        match self {
            CellKind::Gru if gru_gates == super::GruGates::Both => 3,
            CellKind::Gru => 2,
            CellKind::Lstm => 4,
            CellKind::Rnn => 1,
            CellKind::MinGru => 2,
            CellKind::MinLstm => 3,
        }
    }

    /// Gates with hidden weights `W_h` (a product by `H_{t-1}` in every step):
    /// all of them, or none for the cells whose gates read `X_t` only.
    pub fn hidden_gate_count(self, gru_gates: super::GruGates) -> u64 {
        match self {
            CellKind::Gru | CellKind::Lstm | CellKind::Rnn => self.gate_count(gru_gates),
            CellKind::MinGru | CellKind::MinLstm => 0,
        }
    }

    /// Whether the GRU's own keys (`model.reset_gate`, `model.gru_gates`) apply.
    pub fn has_gru_options(self) -> bool {
        match self {
            CellKind::Gru => true,
            CellKind::Lstm | CellKind::Rnn | CellKind::MinGru | CellKind::MinLstm => false,
        }
    }

    /// Whether it has sigmoid gates to draw (`grulm gates`).
    pub fn has_sigmoid_gates(self) -> bool {
        match self {
            CellKind::Gru | CellKind::Lstm | CellKind::MinGru | CellKind::MinLstm => true,
            CellKind::Rnn => false,
        }
    }

    /// libtorch's op for it, if libtorch has one (and so `model.kind = "builtin"`,
    /// `parity` and `export --format pytorch`).
    pub fn builtin(self) -> Option<BuiltinCell> {
        match self {
            CellKind::Gru => Some(BuiltinCell::Gru),
            CellKind::Lstm => Some(BuiltinCell::Lstm),
            CellKind::Rnn => Some(BuiltinCell::RnnTanh),
            CellKind::MinGru | CellKind::MinLstm => None,
        }
    }
}

/// Gates `k..k+n` of a tensor whose last dimension is the fused columns
/// (`[B, G·H]` or `[T, B, G·H]`): a view, no copy.
pub(crate) fn block(t: &Tensor, k: i64, n: i64, h: i64) -> Tensor {
    let dim = t.dim() as i64 - 1;
    t.narrow(dim, k * h, n * h)
}

/// One gate's names: `W_x{name}`, `W_h{name}` if it has hidden weights, its
/// bias, and the hidden-side bias if it has one. Every name gets the layer
/// suffix `_l{k}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GateDef {
    pub name: &'static str,
    pub bias: &'static str,
    pub hidden_bias: Option<&'static str>,
    /// Whether it has `W_h`: its pre-activation reads `H_{t-1}`.
    pub hidden: bool,
}

impl GateDef {
    pub const fn new(name: &'static str, bias: &'static str) -> GateDef {
        GateDef { name, bias, hidden_bias: None, hidden: true }
    }

    /// A gate of `X_t` alone, `X W_x + b` (the minGRU's and minLSTM's).
    pub const fn input_only(name: &'static str, bias: &'static str) -> GateDef {
        GateDef { name, bias, hidden_bias: None, hidden: false }
    }
}

/// One gate's parameters (see the module doc).
pub struct Gate {
    pub def: GateDef,
    /// `[in, H]`
    pub w_x: Tensor,
    /// `[H, H]`, for a gate with hidden weights ([`Gate::w_h`]).
    pub w_h: Option<Tensor>,
    /// `[H]`, added to the input side.
    pub b: Tensor,
    /// `[H]`, added to the hidden product (GRU reset-after candidate only).
    pub b_h: Option<Tensor>,
}

impl Gate {
    /// `W_h [H, H]`; only cells whose gates have hidden weights ask.
    pub fn w_h(&self) -> &Tensor {
        self.w_h.as_ref().unwrap_or_else(|| panic!("gate {} has no hidden weights", self.def.name))
    }
}

/// One layer: its gates, in the cell's column order.
pub struct Layer {
    pub gates: Vec<Gate>,
}

impl Layer {
    /// The gate named `name` (cells look their gates up by name, so a GRU variant
    /// without a gate cannot read a wrong one).
    pub fn gate(&self, name: &str) -> &Gate {
        self.gates.iter().find(|g| g.def.name == name).unwrap_or_else(|| panic!("the cell has no gate {name}"))
    }

    /// The layer with each gate's `W_h` times its columns of `mask [H, G·H]`
    /// (weight drop; gate k at columns k·H..(k+1)·H, every gate with hidden
    /// weights), the other parameters shared. Differentiable: autograd takes the
    /// product back into `W_h`.
    pub(crate) fn with_hidden_mask(&self, mask: &Tensor) -> Layer {
        let h = mask.size()[0];
        let gates = self
            .gates
            .iter()
            .enumerate()
            .map(|(k, g)| Gate {
                def: g.def,
                w_x: g.w_x.shallow_clone(),
                w_h: Some(g.w_h() * mask.narrow(1, k as i64 * h, h)),
                b: g.b.shallow_clone(),
                b_h: g.b_h.as_ref().map(Tensor::shallow_clone),
            })
            .collect();
        Layer { gates }
    }

    /// `[W_x of each gate]`: `[in, G·H]`.
    pub(crate) fn w_x(&self) -> Tensor {
        Tensor::cat(&self.gates.iter().map(|g| &g.w_x).collect::<Vec<_>>(), 1)
    }

    /// `[W_h of each gate]`: `[H, G·H]`; `[H, 0]` for a cell without hidden weights.
    pub(crate) fn w_h(&self) -> Tensor {
        let b = &self.gates[0].b;
        match self.gates.iter().filter_map(|g| g.w_h.as_ref()).collect::<Vec<_>>() {
            w if w.is_empty() => Tensor::zeros([b.size()[0], 0], (b.kind(), b.device())),
            w => Tensor::cat(&w, 1),
        }
    }

    /// `[W_h]` of gates `first..first+n`: `[H, n·H]`.
    pub(crate) fn w_h_of(&self, first: usize, n: usize) -> Tensor {
        Tensor::cat(&self.gates[first..first + n].iter().map(Gate::w_h).collect::<Vec<_>>(), 1)
    }

    /// The hidden weights of gates `range` (`[W_h ...]`), or their transpose,
    /// packed for the CPU engine's products.
    pub(crate) fn packed_w_h<T: Real>(&self, range: std::ops::Range<usize>, transpose: bool) -> Packed<T> {
        Packed::of(&self.gates[range].iter().map(Gate::w_h).collect::<Vec<_>>(), transpose)
    }

    /// `[b of each gate]`: `[G·H]`.
    pub fn b(&self) -> Tensor {
        Tensor::cat(&self.gates.iter().map(|g| &g.b).collect::<Vec<_>>(), 0)
    }

    /// The hidden-side biases as one `[G·H]` vector (zeros where a gate has none),
    /// or `None` when no gate has one.
    pub fn b_h(&self) -> Option<Tensor> {
        if self.gates.iter().all(|g| g.b_h.is_none()) {
            return None;
        }
        let parts: Vec<Tensor> =
            self.gates.iter().map(|g| g.b_h.as_ref().map_or_else(|| g.b.zeros_like(), Tensor::shallow_clone)).collect();
        Some(Tensor::cat(&parts, 0))
    }
}

/// What a layer's in-place forward pass keeps for its backward pass.
pub(crate) struct Tape {
    /// `H_0, H_1, ..., H_T` in one buffer `[T+1, B, H]`: the outputs are rows 1..,
    /// and `H_{t-1}` of every step is rows ..T, with no copy.
    pub states: Tensor,
    /// The cell's own saved tensors (its gate activations, ...).
    pub saved: Vec<Tensor>,
    /// The final state after `H_T`: an LSTM's `C_T` (`[B, H]`); empty otherwise.
    pub final_extra: Vec<Tensor>,
}

impl Tape {
    /// A tape whose state buffer starts at `h0 [B, H]`.
    pub fn start(h0: &Tensor, t: i64) -> Tape {
        let (b, h) = (h0.size()[0], h0.size()[1]);
        let states = Tensor::empty([t + 1, b, h], (h0.kind(), h0.device()));
        states.get(0).copy_(h0);
        Tape { states, saved: vec![], final_extra: vec![] }
    }

    pub fn steps(&self) -> i64 {
        self.states.size()[0] - 1
    }

    /// `H_1..H_T`: `[T, B, H]`.
    pub fn out(&self) -> Tensor {
        self.states.narrow(0, 1, self.steps())
    }

    /// `H_0..H_{T-1}`: `[T, B, H]`.
    pub fn h_prev(&self) -> Tensor {
        self.states.narrow(0, 0, self.steps())
    }

    /// The state after the last step: `H_T`, then the cell's extra state.
    pub fn final_state(&self) -> Vec<Tensor> {
        let mut v = vec![self.states.get(self.steps())];
        v.extend(self.final_extra.iter().map(Tensor::shallow_clone));
        v
    }
}

/// What a layer's backward pass hands the engine: gradients of the gates'
/// pre-activations, grouped by contiguous runs of gates, all `[T, B, n·H]`.
pub struct Backward {
    /// `(first gate, dA)`: the input side, `X W_x + b`. Gives `W_x` and `b`
    /// gradients and the gradient of the layer's input.
    pub input: Vec<(usize, Tensor)>,
    /// `(first gate, M, dP)`: the hidden side, `M W_h (+ b_h)`, where `M [T, B, H]`
    /// is what the gates' hidden weights multiply (`H_{t-1}`, or the GRU's
    /// `R ⊙ H_{t-1}`). Gives `W_h` and `b_h` gradients. Empty for a cell
    /// without hidden weights.
    pub hidden: Vec<(usize, Tensor, Tensor)>,
}

/// A recurrent cell (see the module doc). All tensors are one layer's; `state`
/// holds `H` first, then the cell's other state tensors (an LSTM's `C`).
pub(crate) trait Cell {
    /// The gates in fused-column order.
    fn gates(&self) -> Vec<GateDef>;

    /// Tensors in the state: 1 (`H`), or 2 for the LSTM (`H`, `C`).
    fn state_size(&self) -> usize {
        1
    }

    /// The cell's name (`GRU`, `LSTM`, `RNN`, `minGRU`, ...) and its variant, if any
    /// (`reset before`): for logs.
    fn describe(&self) -> (&'static str, Option<String>);

    /// One step as the chapter writes it: x `[B, in]`, state `[B, H]` each.
    fn step_reference(&self, p: &Layer, x: &Tensor, state: &[Tensor]) -> Vec<Tensor>;

    /// The sigmoid gates of that step by name, each `[B, H]` in (0, 1): the GRU's
    /// `z` and `r` (those it has), the LSTM's `i`, `f` and `o`, the minGRU's `z`,
    /// the minLSTM's `f` and `i`; none for the RNN.
    /// [`Cell::step_reference`] computes its step from these (`grulm gates` draws them).
    fn gates_reference(&self, _p: &Layer, _x: &Tensor, _state: &[Tensor]) -> Vec<(&'static str, Tensor)> {
        vec![]
    }

    /// One step from the input projection `xa = X W_x + b` (`[B, G·H]`) and the
    /// fused hidden weights `w_h = [W_h ...]` (`[H, G·H]`); autograd differentiates it.
    fn step_fused(&self, p: &Layer, xa: &Tensor, w_h: &Tensor, state: &[Tensor]) -> Vec<Tensor>;

    /// The whole sequence in place, without autograd: `xa [T, B, G·H]` is the
    /// input projection of every step (a fresh tensor, which the cell may
    /// overwrite), `state0` the state it starts from.
    fn forward_tape(&self, p: &Layer, xa: Tensor, state0: &[Tensor]) -> Tape;

    /// Backward through the sequence: `d_out [T, B, H]` is the gradient reaching
    /// the layer's outputs from above; the cell may overwrite it. The state the
    /// sequence started from is detached (truncated BPTT): no gradient for it.
    fn backward_tape(&self, p: &Layer, tape: &Tape, d_out: &Tensor) -> Backward;

    /// [`Cell::forward_tape`] on the CPU engine (`model::cpu`), in the cell's
    /// `cpu.rs`: the same tape and numbers, for contiguous CPU tensors of `T`
    /// (f32 or f64: the engine picks `T` from the tensors, in one place,
    /// `ScratchLm::forward_tape` in `bptt.rs`).
    fn forward_rows<T: Real>(&self, p: &Layer, xa: Tensor, state0: &[Tensor]) -> Tape;

    /// [`Cell::backward_tape`] on the CPU engine.
    fn backward_rows<T: Real>(&self, p: &Layer, tape: &Tape, d_out: &Tensor) -> Backward;
}
