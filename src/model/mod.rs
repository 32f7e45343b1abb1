//! Character-level recurrent language models behind one trait.
//!
//! * [`ScratchGru`]: the chapter's GRU written by hand, parameters as plain
//!   tensors with `requires_grad` (the readable reference, plus a fused fast path
//!   that computes the same function).
//! * [`BuiltinGru`]: libtorch's fused GRU (`tch::nn::gru`, cuDNN on CUDA) and a
//!   linear output layer, with PyTorch's parameter names and initialisation.
//!
//! Shape legend: B batch, T time steps, V vocabulary, H hidden units, L layers.
//! Token ids come in batch-major `[B, T]` (as the minibatches); logits go out
//! time-major `[T, B, V]`, the order of d2l's `Y.T.reshape(-1)` labels.
mod bptt;
pub mod builtin;
pub mod layout;
pub mod scratch;

pub use builtin::BuiltinGru;
pub use scratch::{ScratchGru, ScratchPath};

use crate::config::{ModelConfig, ModelKind};
use std::sync::atomic::{AtomicBool, Ordering};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

static DETERMINISTIC: AtomicBool = AtomicBool::new(false);

/// Deterministic mode (`train.deterministic`), for CUDA where it matters (CPU
/// results are reproducible without it). tch exposes no
/// `torch.use_deterministic_algorithms`, so grulm avoids the non-deterministic
/// kernels itself: cuDNN is switched off (the built-in GRU then runs ATen's own
/// GRU), the scratch model projects one-hot inputs with a matrix product instead
/// of a gather (whose CUDA backward adds with atomics), and cuBLAS gets the
/// fixed workspace it needs (`CUBLAS_WORKSPACE_CONFIG=:4096:8`, unless set).
pub fn set_deterministic(on: bool) {
    DETERMINISTIC.store(on, Ordering::Relaxed);
    if on {
        if std::env::var_os("CUBLAS_WORKSPACE_CONFIG").is_none() {
            std::env::set_var("CUBLAS_WORKSPACE_CONFIG", ":4096:8");
        }
        tch::Cuda::set_user_enabled_cudnn(false);
        tch::Cuda::cudnn_set_benchmark(false);
    }
}

pub fn deterministic() -> bool {
    DETERMINISTIC.load(Ordering::Relaxed)
}

/// Recurrent state, opaque to callers. A GRU holds one tensor, `[L, B, H]`; the
/// `Vec` leaves room for cells with two (an LSTM's h and c).
#[derive(Debug)]
pub struct State(pub(crate) Vec<Tensor>);

impl State {
    /// A GRU state from its hidden tensor `[L, B, H]`.
    pub fn from_hidden(h: Tensor) -> State {
        State(vec![h])
    }

    /// The same state cut off from the graph that produced it (truncated BPTT).
    pub fn detach(&self) -> State {
        State(self.0.iter().map(Tensor::detach).collect())
    }

    /// The hidden state `[L, B, H]`.
    pub fn hidden(&self) -> &Tensor {
        &self.0[0]
    }
}

/// d2l's loss: mean cross-entropy per token. logits `[T, B, V]`, targets `[B, T]`
/// (transposed here into the logits' time-major order, d2l's `Y.T.reshape(-1)`).
/// Computed in the logits' own precision (tch's `cross_entropy_for_logits` would
/// cast to f32, which f64 parity checks cannot afford).
pub fn lm_loss(logits: &Tensor, targets: &Tensor) -> Tensor {
    let v = logits.size()[2];
    logits.view([-1, v]).log_softmax(-1, logits.kind()).nll_loss(&targets.tr().reshape([-1]))
}

/// A training step by autograd: forward, loss, backward.
pub fn autograd_step<M: RecurrentLm + ?Sized>(model: &M, tokens: &Tensor, targets: &Tensor, state: &State) -> (Tensor, State) {
    let (logits, new_state) = model.forward(tokens, state);
    let loss = lm_loss(&logits, targets);
    loss.backward();
    (loss.detach(), new_state.detach())
}

/// What the trainer and the sampler use, and nothing else.
pub trait RecurrentLm {
    /// A zero state for a batch of `batch` sequences.
    fn zero_state(&self, batch: i64) -> State;

    /// Runs over token ids `[B, T]` (Int64) from `state`: logits `[T, B, V]` for
    /// every step, and the state after the last step.
    fn forward(&self, tokens: &Tensor, state: &State) -> (Tensor, State);

    /// One training step's forward and backward: d2l's loss of `tokens` against
    /// `targets` (both `[B, T]`) from `state`, every parameter's gradient added
    /// into its `.grad`. Returns the loss and the new state, both detached.
    fn train_step(&self, tokens: &Tensor, targets: &Tensor, state: &State) -> (Tensor, State) {
        autograd_step(self, tokens, targets, state)
    }

    /// The parameters: optimisers and checkpoints work through this.
    fn var_store(&self) -> &VarStore;

    fn var_store_mut(&mut self) -> &mut VarStore;

    /// Train/eval flag. Neither GRU has dropout, so today the flag changes no
    /// number; it is here so the trainer states its intent for cells that will.
    fn set_train(&mut self, train: bool);

    fn training(&self) -> bool;

    fn vocab_size(&self) -> i64;

    /// `scratch GRU (reset before)`, `built-in GRU`: for logs.
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

impl ModelConfig {
    /// Builds the model on `device` with parameters of `kind` (Float or Double),
    /// initialised from libtorch's generator (seed it first).
    pub fn init(&self, vocab_size: i64, device: Device, kind: Kind) -> Box<dyn RecurrentLm> {
        let mut vs = VarStore::new(device);
        // Set before any variable exists, so parameters are created in this kind
        // (the built-in GRU's cuDNN weight buffer must not be re-cast afterwards).
        vs.set_kind(kind);
        let (h, l) = (self.hidden_size as i64, self.num_layers as i64);
        match self.kind {
            ModelKind::Scratch => Box::new(ScratchGru::new(vs, vocab_size, h, l, self.reset_gate, self.init_sigma.unwrap_or(0.01))),
            ModelKind::Builtin => Box::new(BuiltinGru::new(vs, vocab_size, h, l)),
        }
    }
}
