//! What a training run needs in memory, estimated from the resolved config before
//! anything is allocated, and what the machine has.
//!
//! B batch, T steps, V vocabulary, H hidden, L layers, G gates (RNN 1, GRU 3 or 2
//! for its one-gate ablations, LSTM 4), S state tensors (LSTM 2, else 1), N
//! training tokens, P parameters, W bytes per stored token id (1 for a
//! vocabulary of up to 256 tokens, 2 up to 32,768, else 4). Float32 is 4 bytes.
//!
//! | part          | bytes                                                        |
//! |---------------|--------------------------------------------------------------|
//! | parameters    | 4P                                                           |
//! | gradients     | 4P                                                           |
//! | optimiser     | SGD 0; Adam 8P (two moments)                                 |
//! | activations   | 4·T·B·(3V + L·H·(3G + 2S + 2)): one minibatch's forward and   |
//! |               | backward: the input projections and gates of every step, the |
//! |               | states, their gradients, and logits, softmax and its gradient|
//! |               | (with dropout, 2 more per layer: its mask and masked output) |
//! |               | (with weight drop, 4·2·L·G·H² more: each layer's mask and    |
//! |               | its dropped W_h)                                             |
//! |               | (with train.precision = bf16, 4·T·B·H·(G + 1) more: one      |
//! |               | layer's weight-gradient operands in bf16 and oneDNN's packed |
//! |               | copies of them)                                              |
//! | data          | N·2W + 8·N/T: the ids on the host and their copy on the      |
//! |               | device (the host's go once uploaded), and an epoch's row     |
//! |               | starts (Int64); each step cuts its own minibatch out         |
//!
//! `grulm bench` prints this estimate next to the measured peak; see
//! docs/memory.md for how close it comes.
use crate::config::{Config, OptimizerKind};
use crate::model::{ModelConfig, ModelKind, Precision, ResetGate};
use crate::usage;
use anyhow::Result;
use tch::Device;

/// A run's memory, in bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Estimate {
    pub parameter_count: u64,
    pub parameters: u64,
    pub gradients: u64,
    pub optimizer: u64,
    pub activations: u64,
    pub data: u64,
}

impl ModelConfig {
    /// Gates per layer: 3 for the GRU (2 for its one-gate ablations), 4 LSTM, 1 RNN,
    /// 2 minGRU, 3 minLSTM.
    pub(crate) fn gate_count(&self) -> u64 {
        self.cell.gate_count(self.gru_gates)
    }

    /// The parameter count for a vocabulary of `v`, from the config alone.
    pub fn parameter_count(&self, v: u64) -> u64 {
        let (h, l, g) = (self.hidden_size as u64, self.num_layers as u64, self.gate_count());
        let hidden_gates = self.cell.hidden_gate_count(self.gru_gates);
        let biases = match self.kind {
            // b per gate, and the reset-after GRU's candidate keeps b_hh apart.
            ModelKind::Scratch => g * h + if self.reset_gate == Some(ResetGate::After) { h } else { 0 },
            // PyTorch's bias_ih and bias_hh.
            ModelKind::Builtin => 2 * g * h,
        };
        let layer = |input: u64| input * g * h + hidden_gates * h * h + biases;
        layer(v) + (l - 1) * layer(h) + h * v + v
    }
}

impl Estimate {
    /// For `cfg` with a vocabulary of `v` and `n` training tokens.
    pub fn new(cfg: &Config, v: u64, n: u64) -> Estimate {
        let (b, t) = (cfg.data.batch_size as u64, cfg.data.num_steps as u64);
        let w = crate::data::Ids::width_for(v as usize) as u64;
        Estimate::training(&cfg.model, cfg.train.optimizer, cfg.train.precision, b, t, v, n * 2 * w + 8 * n / t)
    }

    /// Training `m` with minibatches of `b x t`, and `data` bytes of token ids.
    pub fn training(m: &ModelConfig, optimizer: OptimizerKind, precision: Precision, b: u64, t: u64, v: u64, data: u64) -> Estimate {
        let p = m.parameter_count(v);
        let (h, l, g) = (m.hidden_size as u64, m.num_layers as u64, m.gate_count());
        let s = m.cell.state_count() as u64;
        // Dropout keeps each layer's mask and its masked output.
        let d = if m.dropout > 0.0 { 2 } else { 0 };
        // Weight drop keeps each layer's mask and its dropped W_h, [H, G·H] each.
        let wd = if m.weight_drop > 0.0 { 2 * l * g * h * h } else { 0 };
        // bf16: one layer's M [T·B, H] and dP [T·B, G·H] converted, and oneDNN's
        // packed copies of them, while its weight gradients are computed.
        let mixed = if precision == Precision::Bf16 { t * b * h * (g + 1) } else { 0 };
        Estimate {
            parameter_count: p,
            parameters: 4 * p,
            gradients: 4 * p,
            optimizer: match optimizer {
                OptimizerKind::Sgd => 0,
                OptimizerKind::Adam => 8 * p,
            },
            activations: 4 * (t * b * (3 * v + l * h * (3 * g + 2 * s + 2 + d)) + wd + mixed),
            data,
        }
    }

    pub(crate) fn total(&self) -> u64 {
        self.parameters + self.gradients + self.optimizer + self.activations + self.data
    }

    /// `parameters 1.2 GiB, gradients ..., ...`
    pub(crate) fn breakdown(&self) -> String {
        format!(
            "parameters {}, gradients {}, optimizer state {}, activations of one minibatch {}, data {}",
            bytes(self.parameters),
            bytes(self.gradients),
            bytes(self.optimizer),
            bytes(self.activations),
            bytes(self.data)
        )
    }

    /// The keys that lower the largest part first.
    fn keys_to_lower(&self, cfg: &Config) -> String {
        let (d, m) = (&cfg.data, &cfg.model);
        let weights = self.parameters + self.gradients + self.optimizer;
        // (bytes the key drives, whether it can go lower, the key)
        let mut keys = vec![
            (weights, true, format!("model.hidden_size (now {})", m.hidden_size)),
            (self.activations, d.batch_size > 1, format!("data.batch_size (now {})", d.batch_size)),
            (self.activations, d.num_steps > 1, format!("data.num_steps (now {})", d.num_steps)),
            (weights, m.num_layers > 1, format!("model.num_layers (now {})", m.num_layers)),
            (self.data, true, format!("data.max_tokens (now {})", d.max_tokens)),
            (self.optimizer, cfg.train.optimizer == OptimizerKind::Adam, "train.optimizer = \"sgd\" (no optimizer state)".into()),
        ];
        keys.sort_by_key(|k| std::cmp::Reverse(k.0));
        // The keys behind at least a tenth of the total.
        let names: Vec<String> = keys.into_iter().filter(|k| k.1 && k.0 * 10 >= self.total()).map(|k| k.2).collect();
        match names.as_slice() {
            [] => "lower the model or data sizes".into(),
            [one] => format!("lower {one}"),
            [rest @ .., last] => format!("lower {} or {last}", rest.join(", ")),
        }
    }

    /// Refuses, in one line, a run that cannot fit in what `device` has free.
    pub fn check(&self, cfg: &Config, device: Device) -> Result<()> {
        let Some(available) = available(device) else { return Ok(()) };
        if self.total() <= available.bytes {
            return Ok(());
        }
        Err(usage!(
            "this run needs about {} of memory ({}), but {} {} available; {}",
            bytes(self.total()),
            self.breakdown(),
            available.what,
            bytes(available.bytes),
            self.keys_to_lower(cfg)
        ))
    }
}

/// Free memory where the run's tensors live.
pub(crate) struct Available {
    pub bytes: u64,
    /// `this machine has`, `cuda:0 has`
    pub what: String,
}

/// Host: the smaller of `MemAvailable` and what the cgroup limit leaves; CUDA:
/// the device's free memory. None when it cannot be read.
pub fn available(device: Device) -> Option<Available> {
    match device {
        Device::Cuda(i) => {
            crate::platform::cuda::mem_get_info().map(|(free, _)| Available { bytes: free as u64, what: format!("cuda:{i} has") })
        }
        _ => host_available().map(|bytes| Available { bytes, what: "this machine has".into() }),
    }
}

fn host_available() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let avail =
        meminfo.lines().find_map(|l| l.strip_prefix("MemAvailable:"))?.trim().trim_end_matches("kB").trim().parse::<u64>().ok()? * 1024;
    let read = |p: &str| std::fs::read_to_string(p).ok().and_then(|s| s.trim().parse::<u64>().ok());
    // cgroup v2, then v1 (an unlimited v1 limit reads as a huge number).
    let cgroup = match (read("/sys/fs/cgroup/memory.max"), read("/sys/fs/cgroup/memory.current")) {
        (Some(max), Some(cur)) => Some(max.saturating_sub(cur)),
        _ => match (read("/sys/fs/cgroup/memory/memory.limit_in_bytes"), read("/sys/fs/cgroup/memory/memory.usage_in_bytes")) {
            (Some(max), Some(cur)) => Some(max.saturating_sub(cur)),
            _ => None,
        },
    };
    Some(cgroup.map_or(avail, |c| c.min(avail)))
}

/// `2.9 TiB`, `1.5 GiB`, `300 MiB`, `12 KiB`.
pub fn bytes(n: u64) -> String {
    let units = [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)];
    for (unit, shift) in units {
        let x = n as f64 / (1u64 << shift) as f64;
        if x >= 1.0 {
            return if x >= 100.0 { format!("{x:.0} {unit}") } else { format!("{x:.1} {unit}") };
        }
    }
    format!("{n} B")
}
