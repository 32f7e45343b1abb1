//! Each scratch cell against libtorch's (the GRU in its reset-after form, the
//! LSTM, the RNN), same weights through the [`layout`](crate::model::layout)
//! map: logits, final state, loss and the gradient of every parameter.
//! `grulm parity` prints this; the tests assert it.
//!
//! With dropout (`--dropout P`, CPU only) the training step of both models
//! starts from one generator seed, so the scratch model's masks must be the
//! ones libtorch's RNN and `dropout` draw, at the same places. On CUDA cuDNN
//! draws its masks with its own generator, so there is nothing to compare.
use crate::model::layout::{pytorch_to_scratch, scratch_to_pytorch, BiasHh};
use crate::model::{BuildOptions, CellKind, ModelConfig, ModelKind, RecurrentLm, ResetGate, ScratchPath, State};
use crate::platform::cuda;
use crate::platform::tensorfile;
use crate::usage;
use anyhow::{anyhow, Result};
use std::collections::HashMap;
use tch::{Device, Kind, Tensor};

/// Shapes of the comparison: B=4, T=7 (as the issue asks), a small V and H.
pub(crate) const BATCH: i64 = 4;
pub(crate) const STEPS: i64 = 7;
pub(crate) const VOCAB: i64 = 11;
pub(crate) const HIDDEN: i64 = 16;
/// Weights and initial state ~ N(0, 0.5²): gates neither saturated nor linear.
pub(crate) const SCALE: f64 = 0.5;

/// Tolerance on the max abs difference: f64 1e-10 everywhere; f32 1e-5 on the
/// CPU and 5e-5 on CUDA, where cuDNN's GRU and the scratch model's cuBLAS
/// products sum in other orders and round-off grows through the recurrence (on
/// an H200, with TF32 off: 1.4e-5 on the logits). 5e-5 is the tolerance of
/// PyTorch's own cuDNN-vs-CPU RNN test (`_test_RNN_cpu_vs_cudnn` in test_nn.py:
/// `atol=5e-5, rtol=0`, float32, outputs and every gradient).
pub fn tolerance(kind: Kind, device: Device) -> f64 {
    match (kind, device) {
        (Kind::Double, _) => 1e-10,
        (_, Device::Cuda(_)) => 5e-5,
        _ => 1e-5,
    }
}

pub struct ParityReport {
    pub cell: CellKind,
    pub device: Device,
    pub kind: Kind,
    pub layers: usize,
    /// Dropout in the training step (0: none).
    pub dropout: f64,
    /// See [`tolerance`].
    pub tolerance: f64,
    /// (what, max abs difference)
    pub rows: Vec<(String, f64)>,
    /// False for a table shown for information (TF32 on CUDA).
    pub asserted: bool,
}

impl ParityReport {
    pub fn worst(&self) -> f64 {
        self.rows.iter().map(|r| r.1).fold(0.0, f64::max)
    }

    pub fn passed(&self) -> bool {
        self.rows.iter().all(|r| r.1 <= self.tolerance)
    }

    pub fn table(&self) -> String {
        // libtorch's GRU is the reset-after one.
        let cell = format!("{}{}", self.cell.label(), if self.cell.has_gru_options() { " (reset after)" } else { "" });
        let mut s = format!(
            "scratch {cell} vs built-in on {} in {:?}, {} layer(s), B={BATCH} T={STEPS} V={VOCAB} H={HIDDEN}{}\n",
            crate::platform::device::describe(self.device),
            self.kind,
            self.layers,
            if self.dropout > 0.0 { format!(", dropout {} in the training step", self.dropout) } else { String::new() }
        );
        s += &format!("{:<28} {:>14} {:>14}\n", "quantity", "max |diff|", "/ tolerance");
        for (name, d) in &self.rows {
            let flag = if *d <= self.tolerance || !self.asserted { "" } else { "  FAIL" };
            s += &format!("{name:<28} {d:>14.3e} {:>14.3}{flag}\n", d / self.tolerance);
        }
        if self.asserted {
            s += &format!("tolerance {:.0e}: {}\n", self.tolerance, if self.passed() { "ok" } else { "FAILED" });
        } else {
            s += &format!("largest difference {:.3e} (tolerance {:.0e} not asserted)\n", self.worst(), self.tolerance);
        }
        s
    }
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    f64::try_from((a.to_kind(Kind::Double) - b.to_kind(Kind::Double)).abs().max()).unwrap_or(f64::INFINITY)
}

/// Fills every parameter with N(0, scale²) draws (biases too, so the bias map is
/// exercised).
pub fn randomize(model: &dyn RecurrentLm, scale: f64) {
    tch::no_grad(|| {
        for (_, mut p) in model.named_parameters() {
            let r = p.randn_like() * scale;
            p.copy_(&r);
        }
    });
}

/// Runs the comparison for `cell` with the scratch model on `path`, with
/// `dropout` in the training step.
pub fn compare(
    device: Device,
    kind: Kind,
    cell: CellKind,
    layers: usize,
    path: ScratchPath,
    seed: i64,
    dropout: f64,
) -> Result<ParityReport> {
    if dropout > 0.0 && device.is_cuda() {
        return Err(crate::usage!("--dropout: parity with dropout is checked on the CPU only (on CUDA, cuDNN draws its own masks)"));
    }
    tch::manual_seed(seed);
    let cfg = |k| ModelConfig {
        kind: k,
        cell,
        hidden_size: HIDDEN as usize,
        num_layers: layers,
        reset_gate: cell.has_gru_options().then_some(ResetGate::After),
        init_sigma: Some(SCALE),
        dropout,
        ..ModelConfig::default()
    };
    // libtorch's own step (its RNN op and autograd), not the CPU engine's.
    let builtin = cfg(ModelKind::Builtin).build(VOCAB, device, kind, BuildOptions { libtorch_step: true, ..BuildOptions::default() });
    randomize(builtin.as_ref(), SCALE);
    let scratch = cfg(ModelKind::Scratch).build(VOCAB, device, kind, BuildOptions { path: Some(path), ..BuildOptions::default() });
    let builtin_params: HashMap<String, Tensor> = builtin.named_parameters().into_iter().collect();
    tensorfile::assign(&scratch.named_parameters(), &pytorch_to_scratch(&builtin_params, cell, layers)?, "built-in weights")?;

    let tokens = Tensor::randint(VOCAB, [BATCH, STEPS], (Kind::Int64, device));
    let targets = Tensor::randint(VOCAB, [BATCH, STEPS], (Kind::Int64, device));
    let states = cell.state_count();
    let s0: Vec<Tensor> = (0..states).map(|_| Tensor::randn([layers as i64, BATCH, HIDDEN], (kind, device)) * SCALE).collect();
    let state0 = || State::new(s0.iter().map(Tensor::shallow_clone).collect());

    // Logits from the forward pass; loss, final state and gradients from the
    // training step the trainer runs (hand-written BPTT on the scratch model's
    // default path, autograd on the built-in one).
    // With dropout, both training steps draw their masks from one seed.
    let mask_seed = seed.wrapping_add(1);
    let run = |m: &dyn RecurrentLm| {
        let (logits, _) = tch::no_grad(|| m.forward(&tokens, &state0()));
        tch::manual_seed(mask_seed);
        let (loss, state) = m.train_step(&tokens, &targets, &state0());
        (logits, state, loss)
    };
    let (l_b, s_b, loss_b) = run(builtin.as_ref());
    let (l_s, s_s, loss_s) = run(scratch.as_ref());

    let row = |name: &str, a: &Tensor, b: &Tensor| (name.to_string(), max_abs_diff(a, b));
    let mut rows = vec![row("logits", &l_s, &l_b), row("final state", s_s.hidden(), s_b.hidden())];
    if states == 2 {
        // The LSTM's memory cell.
        rows.push(row("final memory cell", &s_s.tensors()[1], &s_b.tensors()[1]));
    }
    rows.push(row("loss", &loss_s, &loss_b));
    let scratch_grads: HashMap<String, Tensor> = scratch.named_parameters().into_iter().map(|(n, p)| (n, p.grad())).collect();
    let mapped = scratch_to_pytorch(&scratch_grads, cell, layers, BiasHh::Gradient)?;
    for (name, g) in mapped {
        let p = builtin_params.get(&name).ok_or_else(|| anyhow!("built-in model has no {name}"))?;
        rows.push(row(&format!("grad {name}"), &g, &p.grad()));
    }
    Ok(ParityReport { cell, device, kind, layers, dropout, tolerance: tolerance(kind, device), rows, asserted: true })
}

/// What `grulm parity` compares.
pub(crate) struct Check {
    pub device: Device,
    pub kind: Kind,
    pub cell: CellKind,
    /// Each layer count from 1 to this gets its table.
    pub layers: usize,
    pub seed: i64,
    pub dropout: f64,
}

/// `grulm parity`: prints one table per layer count; fails when an asserted
/// difference is above the tolerance.
pub(crate) fn run(c: &Check) -> Result<()> {
    let dev = c.device;
    if c.layers == 0 {
        return Err(usage!("--layers 0: expected at least 1"));
    }
    if !(0.0..1.0).contains(&c.dropout) {
        return Err(usage!("--dropout {}: expected a number from 0 to below 1", c.dropout));
    }
    if c.dropout > 0.0 && dev.is_cuda() {
        return Err(usage!("--dropout {}: parity with dropout is checked on the CPU only (on CUDA, cuDNN draws its own masks)", c.dropout));
    }
    if c.cell.builtin().is_none() {
        return Err(usage!("--cell {}: libtorch has no {} cell to compare with", c.cell.name(), c.cell.label()));
    }
    // On CUDA, cuDNN may run the built-in GRU's float32 products in TF32
    // (libtorch's default, as PyTorch's torch.backends.cudnn.allow_tf32): parity
    // checks the function, so TF32 is off for the asserted comparison, and the
    // default's differences are shown after it.
    let tf32_default = match (dev, c.kind) {
        (Device::Cuda(_), Kind::Float) => cuda::tf32().ok(),
        _ => None,
    };
    if tf32_default.is_some() {
        cuda::set_tf32(false, false)?;
    } else if dev.is_cuda() && c.kind == Kind::Float {
        println!(
            "note: {}; TF32 cannot be switched off, so cuDNN's float32 cells may differ by more than the tolerance",
            cuda::shim_status()
        );
    }
    // One table per layer count; true when every asserted one passed.
    let tables = |asserted: bool| -> Result<bool> {
        let mut ok = true;
        for layers in 1..=c.layers {
            let mut report = compare(dev, c.kind, c.cell, layers, ScratchPath::Bptt, c.seed, c.dropout)?;
            report.asserted = asserted;
            print!("{}", report.table());
            ok &= !asserted || report.passed();
        }
        Ok(ok)
    };
    let ok = tables(true)?;
    if let Some((cublas, cudnn)) = tf32_default {
        cuda::set_tf32(cublas, cudnn)?;
        println!("\nwith libtorch's default TF32 settings (cuBLAS {cublas}, cuDNN {cudnn}): shown, not asserted");
        tables(false)?;
    }
    if !ok {
        anyhow::bail!("parity failed: a difference is above the tolerance");
    }
    Ok(())
}
