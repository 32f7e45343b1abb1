//! Character-level recurrent language models behind one trait.
//!
//! * [`ScratchLm`]: a cell of d2l's chapters written by hand (`cell/`: RNN, GRU
//!   and its ablations, LSTM; and past the chapter, the parallel-in-time minGRU
//!   and minLSTM), parameters as plain tensors with `requires_grad`
//!   (the readable reference, plus a fused fast path and a hand-written BPTT step
//!   that compute the same function).
//! * [`BuiltinLm`]: libtorch's fused RNN, GRU or LSTM (cuDNN on CUDA) and a linear
//!   output layer, with PyTorch's parameter names and initialisation.
//!
//! Shape legend: B batch, T time steps, V vocabulary, H hidden units, L layers.
//! Token ids come in batch-major `[B, T]` (as the minibatches); logits go out
//! time-major `[T, B, V]`, the order of d2l's `Y.T.reshape(-1)` labels.
mod bptt;
mod builtin;
pub(crate) mod cell;
pub(crate) mod cpu;
pub(crate) mod layout;
mod scratch;

pub(crate) use builtin::BuiltinLm;
pub use cell::{BuiltinCell, CellKind};
pub(crate) use scratch::ScratchLm;
pub use scratch::ScratchPath;

use serde::Serialize;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// [`ScratchLm`]: the chapter's hand-written cell.
    Scratch,
    /// [`BuiltinLm`]: libtorch's fused cell (cuDNN on CUDA).
    Builtin,
}

/// Where the GRU's reset gate acts in the candidate state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ResetGate {
    /// d2l's code: `tanh(X W_xh + (R ⊙ H) W_hh + b_h)`.
    Before,
    /// PyTorch/cuDNN/Keras `reset_after`: `tanh(X W_xh + b_xh + R ⊙ (H W_hh + b_hh))`.
    After,
}

impl GruGates {
    fn is_both(&self) -> bool {
        *self == GruGates::Both
    }
}

/// Which of the GRU's gates exist (the chapter's exercise; scratch only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum GruGates {
    Both,
    /// No update gate: Z ≡ 0, so H_t = H~_t.
    ResetOnly,
    /// No reset gate: R ≡ 1.
    UpdateOnly,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelConfig {
    pub kind: ModelKind,
    pub cell: CellKind,
    pub hidden_size: usize,
    pub num_layers: usize,
    /// GRU only (none for the other cells).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reset_gate: Option<ResetGate>,
    /// GRU only, scratch only.
    #[serde(skip_serializing_if = "GruGates::is_both")]
    pub gru_gates: GruGates,
    /// Standard deviation of the scratch model's N(0, sigma) weights (d2l: 0.01);
    /// none for the built-in model, which is initialised as PyTorch's modules.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init_sigma: Option<f64>,
    /// Dropout probability on every layer's output (into the layer above, and
    /// from the top layer into the output layer) while training; 0: none.
    #[serde(skip_serializing_if = "is_zero")]
    pub dropout: f64,
    /// DropConnect on the hidden-to-hidden weights while training (AWD-LSTM's
    /// weight drop): each training pass multiplies every `W_h` by one fresh
    /// mask of Bernoulli(1 − p) / (1 − p) entries ([`weight_drop_masks`]); 0:
    /// none. Only cells with hidden weights (not the minGRU or minLSTM).
    #[serde(skip_serializing_if = "is_zero")]
    pub weight_drop: f64,
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

impl Default for ModelConfig {
    /// d2l 0.17's scratch GRU.
    fn default() -> Self {
        ModelConfig {
            kind: ModelKind::Scratch,
            cell: CellKind::Gru,
            hidden_size: 256,
            num_layers: 1,
            reset_gate: Some(ResetGate::Before),
            gru_gates: GruGates::Both,
            init_sigma: Some(0.01),
            dropout: 0.0,
            weight_drop: 0.0,
        }
    }
}

/// Recurrent state, opaque to callers: one tensor `[L, B, H]` per state tensor of
/// the cell (`H`; an LSTM's `H` and `C`).
#[derive(Debug)]
pub struct State(pub(crate) Vec<Tensor>);

impl State {
    /// A state from its tensors, each `[L, B, H]` (`H`, then an LSTM's `C`).
    pub fn new(tensors: Vec<Tensor>) -> State {
        State(tensors)
    }

    /// The same state cut off from the graph that produced it (truncated BPTT).
    pub(crate) fn detach(&self) -> State {
        State(self.0.iter().map(Tensor::detach).collect())
    }

    /// The hidden state `[L, B, H]`.
    pub fn hidden(&self) -> &Tensor {
        &self.0[0]
    }

    /// Every state tensor, each `[L, B, H]`.
    pub fn tensors(&self) -> &[Tensor] {
        &self.0
    }

    /// Per layer, the cell's state tensors `[B, H]`.
    pub(crate) fn per_layer(&self) -> Vec<Vec<Tensor>> {
        let split: Vec<Vec<Tensor>> = self.0.iter().map(|t| t.unbind(0)).collect();
        (0..split[0].len()).map(|l| split.iter().map(|s| s[l].shallow_clone()).collect()).collect()
    }

    /// The inverse of [`State::per_layer`].
    pub(crate) fn from_layers(layers: &[Vec<Tensor>]) -> State {
        State((0..layers[0].len()).map(|k| Tensor::stack(&layers.iter().map(|l| &l[k]).collect::<Vec<_>>(), 0)).collect())
    }
}

/// d2l's loss: mean cross-entropy per token. logits `[T, B, V]`, targets `[B, T]`
/// (transposed here into the logits' time-major order, d2l's `Y.T.reshape(-1)`).
/// Computed in the logits' own precision (tch's `cross_entropy_for_logits` would
/// cast to f32, which f64 parity checks cannot afford).
pub(crate) fn lm_loss(logits: &Tensor, targets: &Tensor) -> Tensor {
    let v = logits.size()[2];
    logits.view([-1, v]).log_softmax(-1, logits.kind()).nll_loss(&targets.tr().reshape([-1]))
}

/// A training step by autograd: forward, loss, backward.
pub(crate) fn autograd_step<M: RecurrentLm + ?Sized>(model: &M, tokens: &Tensor, targets: &Tensor, state: &State) -> (Tensor, State) {
    let (logits, new_state) = model.forward_t(tokens, state, true);
    let loss = lm_loss(&logits, targets);
    loss.backward();
    (loss.detach(), new_state.detach())
}

/// What the trainer and the sampler use, and nothing else.
pub trait RecurrentLm {
    /// A zero state for a batch of `batch` sequences.
    fn zero_state(&self, batch: i64) -> State;

    /// Runs over token ids `[B, T]` (Int64) from `state`: logits `[T, B, V]` for
    /// every step, and the state after the last step. `train` says whether this
    /// is a training pass (as tch's `forward_t`): with `model.weight_drop` > 0
    /// it draws fresh weight-drop masks ([`weight_drop_masks`]), then with
    /// `model.dropout` > 0 fresh dropout masks ([`dropout_masks`]); evaluation
    /// and sampling pass `false` and are deterministic.
    fn forward_t(&self, tokens: &Tensor, state: &State, train: bool) -> (Tensor, State);

    /// [`RecurrentLm::forward_t`] for evaluation and sampling.
    fn forward(&self, tokens: &Tensor, state: &State) -> (Tensor, State) {
        self.forward_t(tokens, state, false)
    }

    /// One training step's forward and backward: d2l's loss of `tokens` against
    /// `targets` (both `[B, T]`) from `state`, every parameter's gradient added
    /// into its `.grad`. Returns the loss and the new state, both detached.
    fn train_step(&self, tokens: &Tensor, targets: &Tensor, state: &State) -> (Tensor, State) {
        autograd_step(self, tokens, targets, state)
    }

    /// The parameters: optimisers and checkpoints work through this.
    fn var_store(&self) -> &VarStore;

    fn vocab_size(&self) -> i64;

    /// `scratch GRU (reset before, 1 layer(s), H=256)`, ...: for logs.
    fn describe(&self) -> String;

    /// Parameters sorted by name (a fixed order for optimisers and files).
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = self.var_store().variables().into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    fn parameter_count(&self) -> i64 {
        self.var_store().trainable_variables().iter().map(Tensor::numel).sum::<usize>() as i64
    }
}

/// Dropout masks for one training pass over `[T, B, H]` layer outputs: `n`
/// tensors, each Bernoulli(1 − p) / (1 − p) per element (inverted dropout, so
/// evaluation needs no rescaling). Drawn from libtorch's generator exactly as
/// ATen's `dropout` draws its noise (`bernoulli_(1 − p)`, then `div_(1 − p)`),
/// and in the order libtorch's RNNs draw theirs (layer 0's output first, the
/// top layer's last): with the same seed, the scratch and built-in models drop
/// the same units.
pub fn dropout_masks(n: usize, shape: [i64; 3], p: f64, like: &Tensor) -> Vec<Tensor> {
    (0..n).map(|_| bernoulli_mask(&shape, p, like)).collect()
}

/// Weight-drop masks for one training pass (`model.weight_drop = p`): one per
/// layer, of the shape of that layer's hidden weights, drawn as
/// [`dropout_masks`] draws (Bernoulli(1 − p) / (1 − p)), layer 0's first,
/// before any dropout mask of the pass. The scratch model's are `[H, G·H]`, over
/// its fused `[W_h ...]` (gate k at columns k·H..(k+1)·H); the built-in model's
/// are `[G·H, H]`, over PyTorch's `weight_hh_l{k}`. One mask per minibatch, shared
/// by all its rows and steps, as AWD-LSTM's `WeightDrop`.
pub fn weight_drop_masks(shapes: &[[i64; 2]], p: f64, like: &Tensor) -> Vec<Tensor> {
    shapes.iter().map(|s| bernoulli_mask(s, p, like)).collect()
}

/// Bernoulli(1 − p) / (1 − p) entries, drawn as ATen's `dropout` draws them.
fn bernoulli_mask(shape: &[i64], p: f64, like: &Tensor) -> Tensor {
    let mut m = Tensor::empty(shape, (like.kind(), like.device()));
    let _ = m.bernoulli_float_(1.0 - p);
    let _ = m.g_div_scalar_(1.0 - p);
    m
}

/// The top layer's gate activations of a trained model over `tokens` (`[1, T]`)
/// from a zero state: per gate, its name (`z`, `r`; `i`, `f`, `o`) and `[T, H]`
/// (none for the RNN). `params` are the model's, in its own names; a built-in
/// model's go through [`layout::pytorch_to_scratch`] into the scratch cell that
/// computes the same function (the reset-after GRU), whose equations give the gates.
pub(crate) fn top_layer_gates(
    cfg: &ModelConfig,
    params: &[(String, Tensor)],
    vocab: i64,
    tokens: &Tensor,
) -> anyhow::Result<Vec<(&'static str, Tensor)>> {
    let (h, l) = (cfg.hidden_size as i64, cfg.num_layers as i64);
    let params: Vec<(String, Tensor)> = match cfg.kind {
        ModelKind::Scratch => params.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect(),
        ModelKind::Builtin => {
            let map = params.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect();
            layout::pytorch_to_scratch(&map, cfg.cell, cfg.num_layers)?
        }
    };
    fn trace<C: cell::Cell>(m: ScratchLm<C>, params: &[(String, Tensor)], tokens: &Tensor) -> anyhow::Result<Vec<(&'static str, Tensor)>> {
        crate::platform::tensorfile::assign(&m.named_parameters(), params, "the run's weights")?;
        Ok(m.top_layer_gates(tokens))
    }
    let vs = || VarStore::new(Device::Cpu);
    match cfg.cell {
        CellKind::Gru => {
            let reset = if cfg.kind == ModelKind::Builtin { ResetGate::After } else { cfg.reset_gate.unwrap_or(ResetGate::Before) };
            trace(ScratchLm::new(vs(), cell::Gru::new(reset, cfg.gru_gates), vocab, h, l, 0.0), &params, tokens)
        }
        CellKind::Lstm => trace(ScratchLm::new(vs(), cell::Lstm, vocab, h, l, 0.0), &params, tokens),
        CellKind::MinGru => trace(ScratchLm::new(vs(), cell::MinGru, vocab, h, l, 0.0), &params, tokens),
        CellKind::MinLstm => trace(ScratchLm::new(vs(), cell::MinLstm, vocab, h, l, 0.0), &params, tokens),
        CellKind::Rnn => Ok(vec![]),
    }
}

/// `train.precision`: what the training step's matrix products take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 (or the model's own kind) throughout.
    #[default]
    F32,
    /// bf16 inputs, f32 accumulation, on the CPU engine (`cpu/bf16.rs`);
    /// weights, loss, gradients, clipping and the optimiser stay f32.
    Bf16,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }
}

pub use crate::platform::cpu::{bf16_kernel, set_bf16_kernel, Bf16Kernel};

/// How the CPU engine computes bf16 products here, for logs and `grulm info`.
pub fn bf16_products_note() -> String {
    let k = bf16_kernel();
    let how = match k {
        Bf16Kernel::Amx => "AMX tile products (tdpbf16ps); a last panel under 16 columns on AVX512_BF16".to_string(),
        Bf16Kernel::Dot => "AVX512_BF16's vdpbf16ps".to_string(),
        Bf16Kernel::Emulated if crate::platform::cpu::cpu_has(Bf16Kernel::Dot) => format!(
            "f32 arithmetic on the rounded values (the {} kernels do not use AVX512_BF16), slower than f32",
            crate::platform::cpu::cpu_kernels().name()
        ),
        Bf16Kernel::Emulated => {
            "f32 arithmetic on the rounded values: this CPU has no AVX512_BF16, so bf16 is slower than f32 here".to_string()
        }
    };
    format!("bf16 inputs, f32 accumulation; kernel {} ({how})", k.name())
}

/// How [`ModelConfig::build`] builds beyond the config.
#[derive(Debug, Clone, Copy, Default)]
pub struct BuildOptions {
    /// `train.precision` of the training step (on the CPU engine; see [`Precision`]).
    pub precision: Precision,
    /// `train.deterministic`: the scratch model avoids kernels that add with
    /// atomics on CUDA (see `device::make_deterministic`).
    pub deterministic: bool,
    /// The scratch model's path (default: [`ScratchPath::Bptt`]); ignored by the
    /// built-in model.
    pub path: Option<ScratchPath>,
    /// The built-in model's training step through libtorch's own RNN op and
    /// autograd even on the CPU, where it otherwise runs on the CPU engine
    /// (what parity checks hold the engine to); ignored by the scratch model.
    pub libtorch_step: bool,
}

impl ModelConfig {
    /// Builds the model on `device` with parameters of `kind` (Float or Double),
    /// initialised from libtorch's generator (seed it first).
    pub fn init(&self, vocab_size: i64, device: Device, kind: Kind) -> Box<dyn RecurrentLm> {
        self.build(vocab_size, device, kind, BuildOptions::default())
    }

    /// [`ModelConfig::init`] with [`BuildOptions`].
    pub fn build(&self, vocab_size: i64, device: Device, kind: Kind, opts: BuildOptions) -> Box<dyn RecurrentLm> {
        let mut vs = VarStore::new(device);
        // Set before any variable exists, so parameters are created in this kind
        // (the built-in model's cuDNN weight buffer must not be re-cast afterwards).
        vs.set_kind(kind);
        let (h, l) = (self.hidden_size as i64, self.num_layers as i64);
        let sigma = self.init_sigma.unwrap_or(0.01);
        fn scratch<C: cell::Cell + 'static>(mut m: ScratchLm<C>, opts: BuildOptions, drop: (f64, f64)) -> Box<dyn RecurrentLm> {
            m.set_deterministic(opts.deterministic);
            m.set_path(opts.path.unwrap_or(ScratchPath::Bptt));
            m.set_precision(opts.precision);
            m.set_dropout(drop.0, drop.1);
            Box::new(m)
        }
        let p = (self.dropout, self.weight_drop);
        match (self.kind, self.cell) {
            (ModelKind::Scratch, CellKind::Gru) => {
                let gru = cell::Gru::new(self.reset_gate.unwrap_or(ResetGate::Before), self.gru_gates);
                scratch(ScratchLm::new(vs, gru, vocab_size, h, l, sigma), opts, p)
            }
            (ModelKind::Scratch, CellKind::Lstm) => scratch(ScratchLm::new(vs, cell::Lstm, vocab_size, h, l, sigma), opts, p),
            (ModelKind::Scratch, CellKind::Rnn) => scratch(ScratchLm::new(vs, cell::Rnn, vocab_size, h, l, sigma), opts, p),
            (ModelKind::Scratch, CellKind::MinGru) => scratch(ScratchLm::new(vs, cell::MinGru, vocab_size, h, l, sigma), opts, p),
            (ModelKind::Scratch, CellKind::MinLstm) => scratch(ScratchLm::new(vs, cell::MinLstm, vocab_size, h, l, sigma), opts, p),
            (ModelKind::Builtin, c) => {
                let mut m = BuiltinLm::new(vs, c, vocab_size, h, l, p.0, p.1);
                if !opts.libtorch_step && device == Device::Cpu && matches!(kind, Kind::Float | Kind::Double) {
                    // The scratch cell that computes the same function, weights
                    // zero (no draw) until each step assigns them (already
                    // weight-dropped: this model draws the weight-drop masks).
                    let reset_gate = c.has_gru_options().then_some(ResetGate::After);
                    let same = ModelConfig {
                        kind: ModelKind::Scratch,
                        reset_gate,
                        gru_gates: GruGates::Both,
                        init_sigma: Some(0.0),
                        weight_drop: 0.0,
                        ..self.clone()
                    };
                    m.train_on_engine(same.build(vocab_size, device, kind, opts));
                }
                Box::new(m)
            }
        }
    }
}
