//! `BuiltinGru`: the chapter's concise model, libtorch's GRU plus a linear layer.
//!
//! `tch::nn::gru` calls `at::gru`, the whole sequence in one fused call (cuDNN on
//! CUDA), which computes the reset-after GRU:
//!
//! ```text
//! r = σ(W_ir x + b_ir + W_hr h + b_hr)
//! z = σ(W_iz x + b_iz + W_hz h + b_hz)
//! n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))
//! h' = (1 − z) ⊙ n + z ⊙ h
//! ```
//!
//! Parameter names are PyTorch's for d2l's `RNNModel`: `rnn.weight_ih_l{k}`,
//! `rnn.weight_hh_l{k}`, `rnn.bias_ih_l{k}`, `rnn.bias_hh_l{k}` (gate rows r, z,
//! n; weights `[out, in]`), `linear.weight [V, H]`, `linear.bias [V]`, so a
//! checkpoint loads into PyTorch. Initialisation is PyTorch's `nn.GRU` and
//! `nn.Linear` default, U(−1/√H, 1/√H) for every tensor (not tch's Kaiming).
//!
//! tch's `RNN::seq`/`step` assume batch-first; d2l is time-major, so the layer is
//! built with `batch_first = false` and always called through `seq_init` with an
//! explicit `[L, B, H]` state.
use super::{RecurrentLm, State};
use tch::nn::{self, GRUState, Init, Module, RNNConfig, VarStore, RNN};
use tch::Tensor;

pub struct BuiltinGru {
    vs: VarStore,
    gru: nn::GRU,
    linear: nn::Linear,
    vocab: i64,
    hidden: i64,
    layers: i64,
    train: bool,
}

impl BuiltinGru {
    pub fn new(vs: VarStore, vocab: i64, hidden: i64, layers: i64) -> BuiltinGru {
        let bound = 1.0 / (hidden as f64).sqrt();
        let u = Init::Uniform { lo: -bound, up: bound };
        let cfg = RNNConfig {
            num_layers: layers,
            batch_first: false,
            w_ih_init: u,
            w_hh_init: u,
            b_ih_init: Some(u),
            b_hh_init: Some(u),
            ..Default::default()
        };
        let root = vs.root();
        let gru = nn::gru(&root / "rnn", vocab, hidden, cfg);
        let linear = nn::linear(&root / "linear", hidden, vocab, nn::LinearConfig { ws_init: u, bs_init: Some(u), bias: true });
        BuiltinGru { vs, gru, linear, vocab, hidden, layers, train: true }
    }
}

impl RecurrentLm for BuiltinGru {
    fn zero_state(&self, batch: i64) -> State {
        State(vec![self.gru.zero_state(batch).0])
    }

    fn forward(&self, tokens: &Tensor, state: &State) -> (Tensor, State) {
        let inputs = tokens.tr().one_hot(self.vocab).to_kind(self.linear.ws.kind()); // [T, B, V]
        let (outputs, GRUState(h)) = self.gru.seq_init(&inputs, &GRUState(state.hidden().shallow_clone())); // [T, B, H]
        (self.linear.forward(&outputs), State(vec![h]))
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
        format!("built-in GRU (libtorch, reset after, {} layer(s), H={})", self.layers, self.hidden)
    }
}
