//! The models against independent references: a plain f64 language model for
//! every scratch cell written here (loops over `Vec<f64>`, hand-derived BPTT,
//! checked by finite differences), libtorch's own RNN, GRU and LSTM, and numbers
//! computed by PyTorch in Python.
#![allow(clippy::needless_range_loop)] // index loops read like the equations
use crate::helpers::alone;
use grulm::model::{
    dropout_masks, set_bf16_kernel, weight_drop_masks, Bf16Kernel, BuildOptions, CellKind, GruGates, ModelConfig, ModelKind, Precision,
    RecurrentLm, ResetGate, ScratchPath, State,
};
use grulm::platform::cpu::{set_cpu_kernels, CpuKernels};
use grulm::platform::tensorfile::assign;
use grulm::tools::parity;
use std::collections::HashMap;
use tch::{Device, Kind, Tensor};

// ---------------------------------------------------------------------------
// An independent language model in plain f64, for every scratch cell.

/// Parameters in the scratch model's names; matrices `[rows, cols]` row-major.
#[derive(Clone)]
struct RefParams {
    names: Vec<String>,
    shapes: Vec<Vec<usize>>,
    values: Vec<Vec<f64>>,
}

impl RefParams {
    fn get(&self, name: &str) -> &[f64] {
        &self.values[self.idx(name)]
    }

    fn idx(&self, name: &str) -> usize {
        self.names.iter().position(|n| n == name).unwrap_or_else(|| panic!("{name}"))
    }
}

/// The cells, as the chapters write them.
#[derive(Clone, Copy, Debug, PartialEq)]
enum RefCell {
    /// `after`: reset after the hidden product; `z`/`r`: whether the gate exists.
    Gru {
        after: bool,
        z: bool,
        r: bool,
    },
    Lstm,
    Rnn,
    /// Feng et al.'s minimal cells: gates and candidate of X_t alone.
    MinGru,
    MinLstm,
}

/// Every scratch cell: the GRU both ways, its two ablations (reset-only both
/// ways), the LSTM, the RNN, the minGRU and the minLSTM.
const CELLS: [RefCell; 9] = [
    RefCell::Gru { after: false, z: true, r: true },
    RefCell::Gru { after: true, z: true, r: true },
    RefCell::Gru { after: false, z: false, r: true },
    RefCell::Gru { after: true, z: false, r: true },
    RefCell::Gru { after: false, z: true, r: false },
    RefCell::Lstm,
    RefCell::Rnn,
    RefCell::MinGru,
    RefCell::MinLstm,
];

impl RefCell {
    /// (gate, bias, hidden-side bias)
    fn gates(&self) -> Vec<(&'static str, &'static str, Option<&'static str>)> {
        match *self {
            RefCell::Gru { after, z, r } => {
                let mut v = vec![];
                if z {
                    v.push(("z", "b_z", None));
                }
                if r {
                    v.push(("r", "b_r", None));
                }
                v.push(if after && r { ("h", "b_xh", Some("b_hh")) } else { ("h", "b_h", None) });
                v
            }
            RefCell::Lstm => vec![("i", "b_i", None), ("f", "b_f", None), ("o", "b_o", None), ("c", "b_c", None)],
            RefCell::Rnn => vec![("h", "b_h", None)],
            RefCell::MinGru => vec![("z", "b_z", None), ("h", "b_h", None)],
            RefCell::MinLstm => vec![("f", "b_f", None), ("i", "b_i", None), ("h", "b_h", None)],
        }
    }

    /// Whether its gates have hidden weights W_h (the minimal cells' have none).
    fn has_hidden(&self) -> bool {
        !matches!(self, RefCell::MinGru | RefCell::MinLstm)
    }

    fn config(&self, layers: usize, h: usize) -> ModelConfig {
        let (cell, reset_gate, gru_gates) = match *self {
            RefCell::Gru { after, z, r } => {
                let gates = match (z, r) {
                    (true, true) => GruGates::Both,
                    (false, true) => GruGates::ResetOnly,
                    _ => GruGates::UpdateOnly,
                };
                (CellKind::Gru, Some(if after { ResetGate::After } else { ResetGate::Before }), gates)
            }
            RefCell::Lstm => (CellKind::Lstm, None, GruGates::Both),
            RefCell::Rnn => (CellKind::Rnn, None, GruGates::Both),
            RefCell::MinGru => (CellKind::MinGru, None, GruGates::Both),
            RefCell::MinLstm => (CellKind::MinLstm, None, GruGates::Both),
        };
        ModelConfig { cell, reset_gate, gru_gates, hidden_size: h, num_layers: layers, ..ModelConfig::default() }
    }
}

#[derive(Clone)]
struct RefLm {
    cell: RefCell,
    v: usize,
    h: usize,
    layers: usize,
    /// Dropout masks `[L][T][B][H]`: layer l's output times `masks[l]` on its way
    /// up (into layer l + 1, or from the top layer into the output layer). Empty:
    /// no dropout.
    masks: Vec<Vec<Vec<Vec<f64>>>>,
    /// Weight-drop masks `[L][H·G·H]`: layer l's `[H, G·H]` (row-major), gate k
    /// of the cell's columns k·H..(k+1)·H; the step runs on `W_h ⊙ M`. Empty: none.
    wmasks: Vec<Vec<f64>>,
}

/// What one step of one layer keeps for the backward pass (one batch row).
#[derive(Default)]
struct Cache {
    x: Vec<f64>,
    h_prev: Vec<f64>,
    c_prev: Vec<f64>,
    /// Gate activations by gate name (the candidate too).
    act: HashMap<&'static str, Vec<f64>>,
    /// GRU: what W_hh multiplies (R ⊙ H or H; reset-after: H W_hh + b_hh).
    u: Vec<f64>,
    h_new: Vec<f64>,
    /// LSTM: tanh(C_t).
    tanh_c: Vec<f64>,
}

/// y[j] = Σ_i x[i] W[i, j] for W [x.len(), cols].
fn vec_mat(x: &[f64], w: &[f64], cols: usize) -> Vec<f64> {
    let mut y = vec![0.0; cols];
    for (i, xi) in x.iter().enumerate() {
        for j in 0..cols {
            y[j] += xi * w[i * cols + j];
        }
    }
    y
}

/// y[i] = Σ_j W[i, j] d[j]  (Wᵀ applied to a gradient).
fn mat_vec(w: &[f64], d: &[f64], rows: usize) -> Vec<f64> {
    let cols = d.len();
    (0..rows).map(|i| (0..cols).map(|j| w[i * cols + j] * d[j]).sum()).collect()
}

/// W += a ⊗ d.
fn outer_add(w: &mut [f64], a: &[f64], d: &[f64]) {
    for (i, ai) in a.iter().enumerate() {
        for (j, dj) in d.iter().enumerate() {
            w[i * d.len() + j] += ai * dj;
        }
    }
}

fn add(a: &mut [f64], b: &[f64]) {
    a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn zip(a: &[f64], b: &[f64], f: impl Fn(f64, f64) -> f64) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| f(*x, *y)).collect()
}

impl RefLm {
    /// Layer l's output (or the gradient reaching it from above) at step t, row b,
    /// through its dropout mask.
    fn drop(&self, l: usize, t: usize, b: usize, v: &[f64]) -> Vec<f64> {
        match self.masks.get(l) {
            Some(m) => zip(v, &m[t][b], |a, m| a * m),
            None => v.to_vec(),
        }
    }

    /// The parameters a weight-dropped pass computes with: each `W_h{g}_l{l}[i][j]`
    /// times `wmasks[l][i·G·H + k·H + j]` for gate g, the cell's k-th.
    fn dropped(&self, p: &RefParams) -> RefParams {
        let mut q = p.clone();
        for (l, m) in self.wmasks.iter().enumerate() {
            let gates = self.cell.gates();
            let width = gates.len() * self.h;
            for (k, (g, _, _)) in gates.iter().enumerate() {
                let w = &mut q.values[p.idx(&format!("W_h{g}_l{l}"))];
                for i in 0..self.h {
                    for j in 0..self.h {
                        w[i * self.h + j] *= m[i * width + k * self.h + j];
                    }
                }
            }
        }
        q
    }

    fn random_params(&self, seed: u64, scale: f64) -> RefParams {
        // A tiny LCG + Box-Muller: independent of libtorch's generator.
        let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let mut uniform = move || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        };
        let mut normal = move || (-2.0 * uniform().ln()).sqrt() * (2.0 * std::f64::consts::PI * uniform()).cos();
        let (mut names, mut shapes) = (vec![], vec![]);
        for l in 0..self.layers {
            let input = if l == 0 { self.v } else { self.h };
            for (g, bias, hidden_bias) in self.cell.gates() {
                names.push(format!("W_x{g}_l{l}"));
                shapes.push(vec![input, self.h]);
                if self.cell.has_hidden() {
                    names.push(format!("W_h{g}_l{l}"));
                    shapes.push(vec![self.h, self.h]);
                }
                for b in std::iter::once(bias).chain(hidden_bias) {
                    names.push(format!("{b}_l{l}"));
                    shapes.push(vec![self.h]);
                }
            }
        }
        names.push("W_hq".into());
        shapes.push(vec![self.h, self.v]);
        names.push("b_q".into());
        shapes.push(vec![self.v]);
        let values = shapes.iter().map(|s| (0..s.iter().product::<usize>()).map(|_| normal() * scale).collect()).collect();
        RefParams { names, shapes, values }
    }

    /// One step of layer `l`: the chapter's equations.
    fn step(&self, p: &RefParams, l: usize, x: &[f64], hp: &[f64], cp: &[f64]) -> Cache {
        let h = self.h;
        let g = |n: &str| p.get(&format!("{n}_l{l}"));
        // X W_x + M W_h + b for a gate whose hidden input is M.
        let pre = |gate: &str, bias: &str, m: &[f64]| -> Vec<f64> {
            let a = vec_mat(x, g(&format!("W_x{gate}")), h);
            let b = vec_mat(m, g(&format!("W_h{gate}")), h);
            (0..h).map(|j| a[j] + b[j] + g(bias)[j]).collect()
        };
        // X W_x + b for a gate of the input alone.
        let pre_x = |gate: &str, bias: &str| -> Vec<f64> { zip(&vec_mat(x, g(&format!("W_x{gate}")), h), g(bias), |a, b| a + b) };
        let mut c = Cache { x: x.to_vec(), h_prev: hp.to_vec(), c_prev: cp.to_vec(), ..Cache::default() };
        match self.cell {
            RefCell::MinGru => {
                // Z = σ(X W_xz + b_z), H~ = X W_xh + b_h, H = (1 − Z) H_{t-1} + Z H~.
                let z: Vec<f64> = pre_x("z", "b_z").iter().map(|a| sigmoid(*a)).collect();
                let cand = pre_x("h", "b_h");
                c.h_new = (0..h).map(|j| (1.0 - z[j]) * hp[j] + z[j] * cand[j]).collect();
                c.act.insert("z", z);
                c.act.insert("h", cand);
            }
            RefCell::MinLstm => {
                // F, I = σ(...), H = (F H_{t-1} + I H~) / (F + I).
                let f: Vec<f64> = pre_x("f", "b_f").iter().map(|a| sigmoid(*a)).collect();
                let i: Vec<f64> = pre_x("i", "b_i").iter().map(|a| sigmoid(*a)).collect();
                let cand = pre_x("h", "b_h");
                c.h_new = (0..h).map(|j| (f[j] * hp[j] + i[j] * cand[j]) / (f[j] + i[j])).collect();
                c.act.insert("f", f);
                c.act.insert("i", i);
                c.act.insert("h", cand);
            }
            RefCell::Rnn => {
                c.h_new = pre("h", "b_h", hp).iter().map(|a| a.tanh()).collect();
                c.act.insert("h", c.h_new.clone());
            }
            RefCell::Lstm => {
                for (gate, bias) in [("i", "b_i"), ("f", "b_f"), ("o", "b_o")] {
                    c.act.insert(gate, pre(gate, bias, hp).iter().map(|a| sigmoid(*a)).collect());
                }
                c.act.insert("c", pre("c", "b_c", hp).iter().map(|a| a.tanh()).collect());
                let a = &c.act;
                let c_new: Vec<f64> = (0..h).map(|j| a["f"][j] * cp[j] + a["i"][j] * a["c"][j]).collect();
                c.tanh_c = c_new.iter().map(|v| v.tanh()).collect();
                c.h_new = zip(&a["o"], &c.tanh_c, |o, t| o * t);
                c.c_prev = cp.to_vec();
                c.u = c_new; // C_t, for the state
            }
            RefCell::Gru { after, z, r } => {
                if z {
                    c.act.insert("z", pre("z", "b_z", hp).iter().map(|a| sigmoid(*a)).collect());
                }
                if r {
                    c.act.insert("r", pre("r", "b_r", hp).iter().map(|a| sigmoid(*a)).collect());
                }
                let cand: Vec<f64> = if after && r {
                    let ax = vec_mat(x, g("W_xh"), h);
                    c.u = zip(&vec_mat(hp, g("W_hh"), h), g("b_hh"), |a, b| a + b);
                    (0..h).map(|j| (ax[j] + g("b_xh")[j] + c.act["r"][j] * c.u[j]).tanh()).collect()
                } else {
                    c.u = if r { zip(&c.act["r"], hp, |a, b| a * b) } else { hp.to_vec() };
                    pre("h", "b_h", &c.u).iter().map(|a| a.tanh()).collect()
                };
                c.h_new = match c.act.get("z") {
                    Some(zv) => (0..h).map(|j| zv[j] * hp[j] + (1.0 - zv[j]) * cand[j]).collect(),
                    None => cand.clone(),
                };
                c.act.insert("h", cand);
            }
        }
        c
    }

    /// tokens/targets [B][T]; s0 [L][B][state] (H, then C for the LSTM). Returns
    /// (logits [T][B][V], final state [state][L][B][H], loss, caches [T][L][B]).
    /// With weight masks, on the dropped parameters ([`RefLm::dropped`]).
    #[allow(clippy::type_complexity)]
    fn forward(
        &self,
        p: &RefParams,
        tokens: &[Vec<usize>],
        targets: &[Vec<usize>],
        s0: &[Vec<Vec<Vec<f64>>>],
    ) -> (Vec<Vec<Vec<f64>>>, Vec<Vec<Vec<Vec<f64>>>>, f64, Vec<Vec<Vec<Cache>>>) {
        self.forward_on(&self.dropped(p), tokens, targets, s0)
    }

    /// [`RefLm::forward`] on parameters as given.
    #[allow(clippy::type_complexity)]
    fn forward_on(
        &self,
        p: &RefParams,
        tokens: &[Vec<usize>],
        targets: &[Vec<usize>],
        s0: &[Vec<Vec<Vec<f64>>>],
    ) -> (Vec<Vec<Vec<f64>>>, Vec<Vec<Vec<Vec<f64>>>>, f64, Vec<Vec<Vec<Cache>>>) {
        let (b_n, t_n) = (tokens.len(), tokens[0].len());
        let mut hs: Vec<Vec<Vec<f64>>> = s0.iter().map(|l| l.iter().map(|b| b[0].clone()).collect()).collect();
        let mut cs: Vec<Vec<Vec<f64>>> =
            s0.iter().map(|l| l.iter().map(|b| b.get(1).cloned().unwrap_or_else(|| vec![0.0; self.h])).collect()).collect();
        let (mut logits, mut caches, mut loss) = (vec![], vec![], 0.0);
        for t in 0..t_n {
            let mut step_logits = vec![];
            let mut step_caches: Vec<Vec<Cache>> = (0..self.layers).map(|_| vec![]).collect();
            for b in 0..b_n {
                let mut x = vec![0.0; self.v];
                x[tokens[b][t]] = 1.0;
                for l in 0..self.layers {
                    let c = self.step(p, l, &x, &hs[l][b], &cs[l][b]);
                    hs[l][b] = c.h_new.clone();
                    if self.cell == RefCell::Lstm {
                        cs[l][b] = c.u.clone();
                    }
                    x = self.drop(l, t, b, &c.h_new);
                    step_caches[l].push(c);
                }
                let y: Vec<f64> = zip(&vec_mat(&x, p.get("W_hq"), self.v), p.get("b_q"), |a, b| a + b);
                let m = y.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let lse = m + y.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
                loss += lse - y[targets[b][t]];
                step_logits.push(y);
            }
            logits.push(step_logits);
            caches.push(step_caches);
        }
        let mut finals = vec![hs];
        if self.cell == RefCell::Lstm {
            finals.push(cs);
        }
        (logits, finals, loss / (b_n * t_n) as f64, caches)
    }

    /// Adds a standard gate's gradients (pre-activation `X W_x + M W_h + b`, its
    /// gradient `da`): into the weights and bias; returns (dX, dM). The arguments
    /// are the chapter's quantities spelled out, one by one.
    #[allow(clippy::too_many_arguments)]
    fn gate_back(
        &self,
        p: &RefParams,
        grads: &mut [Vec<f64>],
        l: usize,
        gate: &str,
        bias: &str,
        x: &[f64],
        m: &[f64],
        da: &[f64],
    ) -> (Vec<f64>, Vec<f64>) {
        let n = |s: String| p.idx(&format!("{s}_l{l}"));
        outer_add(&mut grads[n(format!("W_x{gate}"))], x, da);
        outer_add(&mut grads[n(format!("W_h{gate}"))], m, da);
        add(&mut grads[n(bias.to_string())], da);
        (mat_vec(&p.values[n(format!("W_x{gate}"))], da, x.len()), mat_vec(&p.values[n(format!("W_h{gate}"))], da, self.h))
    }

    /// Backward through one cached step: dH reaching H_t, dC reaching C_t (LSTM)
    /// -> (dX, dH_{t-1}, dC_{t-1}).
    fn step_back(
        &self,
        p: &RefParams,
        grads: &mut [Vec<f64>],
        l: usize,
        c: &Cache,
        dh: &[f64],
        dc_next: &[f64],
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let h = self.h;
        let mut dx = vec![0.0; c.x.len()];
        let mut dh_prev = vec![0.0; h];
        let mut dc_prev = vec![0.0; h];
        let sig_back = |d: &[f64], a: &[f64]| zip(d, a, |d, a| d * a * (1.0 - a));
        let tanh_back = |d: &[f64], a: &[f64]| zip(d, a, |d, a| d * (1.0 - a * a));
        let std_gate =
            |grads: &mut [Vec<f64>], gate: &str, bias: &str, m: &[f64], da: &[f64], dx: &mut Vec<f64>, dh_prev: &mut Vec<f64>| {
                let (gx, gm) = self.gate_back(p, grads, l, gate, bias, &c.x, m, da);
                add(dx, &gx);
                add(dh_prev, &gm);
            };
        // A gate of the input alone: its W_x and bias; returns dX.
        let x_gate = |grads: &mut [Vec<f64>], gate: &str, bias: &str, da: &[f64], dx: &mut Vec<f64>| {
            let n = |s: String| p.idx(&format!("{s}_l{l}"));
            outer_add(&mut grads[n(format!("W_x{gate}"))], &c.x, da);
            add(&mut grads[n(bias.to_string())], da);
            add(dx, &mat_vec(&p.values[n(format!("W_x{gate}"))], da, c.x.len()));
        };
        match self.cell {
            RefCell::MinGru => {
                let (z, cand) = (&c.act["z"], &c.act["h"]);
                dh_prev = zip(dh, z, |d, z| d * (1.0 - z));
                let dz: Vec<f64> = (0..h).map(|j| dh[j] * (cand[j] - c.h_prev[j])).collect();
                x_gate(grads, "z", "b_z", &sig_back(&dz, z), &mut dx);
                x_gate(grads, "h", "b_h", &zip(dh, z, |d, z| d * z), &mut dx);
            }
            RefCell::MinLstm => {
                // Quotient rule on H = (F H_{t-1} + I H~) / S, S = F + I.
                let (f, i, cand) = (&c.act["f"], &c.act["i"], &c.act["h"]);
                let s: Vec<f64> = zip(f, i, |a, b| a + b);
                let h_new = &c.h_new;
                dh_prev = (0..h).map(|j| dh[j] * f[j] / s[j]).collect();
                let df: Vec<f64> = (0..h).map(|j| dh[j] * (c.h_prev[j] - h_new[j]) / s[j]).collect();
                let di: Vec<f64> = (0..h).map(|j| dh[j] * (cand[j] - h_new[j]) / s[j]).collect();
                x_gate(grads, "f", "b_f", &sig_back(&df, f), &mut dx);
                x_gate(grads, "i", "b_i", &sig_back(&di, i), &mut dx);
                x_gate(grads, "h", "b_h", &(0..h).map(|j| dh[j] * i[j] / s[j]).collect::<Vec<_>>(), &mut dx);
            }
            RefCell::Rnn => {
                let da = tanh_back(dh, &c.h_new);
                std_gate(grads, "h", "b_h", &c.h_prev, &da, &mut dx, &mut dh_prev);
            }
            RefCell::Lstm => {
                let a = &c.act;
                let d_o = zip(dh, &c.tanh_c, |d, t| d * t);
                let dc: Vec<f64> = (0..h).map(|j| dc_next[j] + dh[j] * a["o"][j] * (1.0 - c.tanh_c[j] * c.tanh_c[j])).collect();
                let d_i = zip(&dc, &a["c"], |d, g| d * g);
                let d_f = zip(&dc, &c.c_prev, |d, cp| d * cp);
                let d_g = zip(&dc, &a["i"], |d, i| d * i);
                dc_prev = zip(&dc, &a["f"], |d, f| d * f);
                for (gate, bias, da) in [
                    ("i", "b_i", sig_back(&d_i, &a["i"])),
                    ("f", "b_f", sig_back(&d_f, &a["f"])),
                    ("o", "b_o", sig_back(&d_o, &a["o"])),
                    ("c", "b_c", tanh_back(&d_g, &a["c"])),
                ] {
                    std_gate(grads, gate, bias, &c.h_prev, &da, &mut dx, &mut dh_prev);
                }
            }
            RefCell::Gru { after, z, r } => {
                let cand = &c.act["h"];
                let (dz, dcand) = match c.act.get("z") {
                    Some(zv) => {
                        dh_prev = zip(dh, zv, |d, z| d * z);
                        (zip(dh, &zip(&c.h_prev, cand, |a, b| a - b), |d, x| d * x), zip(dh, zv, |d, z| d * (1.0 - z)))
                    }
                    None => (vec![], dh.to_vec()),
                };
                let dac = tanh_back(&dcand, cand);
                let gi = |s: &str| p.idx(&format!("{s}_l{l}"));
                let dr: Vec<f64> = if after && r {
                    outer_add(&mut grads[gi("W_xh")], &c.x, &dac);
                    add(&mut grads[gi("b_xh")], &dac);
                    add(&mut dx, &mat_vec(p.get(&format!("W_xh_l{l}")), &dac, c.x.len()));
                    let du = zip(&dac, &c.act["r"], |d, r| d * r);
                    outer_add(&mut grads[gi("W_hh")], &c.h_prev, &du);
                    add(&mut grads[gi("b_hh")], &du);
                    add(&mut dh_prev, &mat_vec(p.get(&format!("W_hh_l{l}")), &du, h));
                    zip(&dac, &c.u, |d, u| d * u)
                } else {
                    let (gx, ds) = self.gate_back(p, grads, l, "h", "b_h", &c.x, &c.u, &dac);
                    add(&mut dx, &gx);
                    if r {
                        add(&mut dh_prev, &zip(&ds, &c.act["r"], |d, r| d * r));
                        zip(&ds, &c.h_prev, |d, h| d * h)
                    } else {
                        add(&mut dh_prev, &ds); // R ≡ 1: U = H
                        vec![]
                    }
                };
                if r {
                    std_gate(grads, "r", "b_r", &c.h_prev, &sig_back(&dr, &c.act["r"]), &mut dx, &mut dh_prev);
                }
                if z {
                    std_gate(grads, "z", "b_z", &c.h_prev, &sig_back(&dz, &c.act["z"]), &mut dx, &mut dh_prev);
                }
            }
        }
        (dx, dh_prev, dc_prev)
    }

    /// Hand-derived backpropagation through time; gradients in `p`'s order.
    /// With weight masks, through the dropped parameters: the chain rule of
    /// `W_h ⊙ M` multiplies each `W_h`'s gradient by its mask.
    fn backward(&self, raw: &RefParams, tokens: &[Vec<usize>], targets: &[Vec<usize>], s0: &[Vec<Vec<Vec<f64>>>]) -> Vec<Vec<f64>> {
        let p = &self.dropped(raw);
        let mut grads = self.backward_on(p, tokens, targets, s0);
        // d(W ⊙ M)/dW = M: the dropped() product once more, on the gradients.
        let as_params = RefParams { values: grads, ..raw.clone() };
        let masked = self.dropped(&as_params);
        grads = masked.values;
        grads
    }

    /// [`RefLm::backward`] on parameters as given.
    fn backward_on(&self, p: &RefParams, tokens: &[Vec<usize>], targets: &[Vec<usize>], s0: &[Vec<Vec<Vec<f64>>>]) -> Vec<Vec<f64>> {
        let (logits, _, _, caches) = self.forward_on(p, tokens, targets, s0);
        let (b_n, t_n, h) = (tokens.len(), tokens[0].len(), self.h);
        let mut grads: Vec<Vec<f64>> = p.values.iter().map(|x| vec![0.0; x.len()]).collect();
        let mut carry_h = vec![vec![vec![0.0; h]; b_n]; self.layers];
        let mut carry_c = vec![vec![vec![0.0; h]; b_n]; self.layers];
        for t in (0..t_n).rev() {
            for b in 0..b_n {
                let y = &logits[t][b];
                let m = y.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = y.iter().map(|x| (x - m).exp()).sum();
                let mut dy: Vec<f64> = y.iter().map(|x| (x - m).exp() / z).collect();
                dy[targets[b][t]] -= 1.0;
                dy.iter_mut().for_each(|d| *d /= (b_n * t_n) as f64);
                let top = self.drop(self.layers - 1, t, b, &caches[t][self.layers - 1][b].h_new);
                outer_add(&mut grads[p.idx("W_hq")], &top, &dy);
                add(&mut grads[p.idx("b_q")], &dy);
                let mut dh_above = self.drop(self.layers - 1, t, b, &mat_vec(p.get("W_hq"), &dy, h));
                for l in (0..self.layers).rev() {
                    let dh: Vec<f64> = zip(&dh_above, &carry_h[l][b], |a, c| a + c);
                    let (dx, dh_prev, dc_prev) = self.step_back(p, &mut grads, l, &caches[t][l][b], &dh, &carry_c[l][b]);
                    carry_h[l][b] = dh_prev;
                    carry_c[l][b] = dc_prev;
                    if l > 0 {
                        dh_above = self.drop(l - 1, t, b, &dx);
                    }
                }
            }
        }
        grads
    }
}

struct Case {
    lm: RefLm,
    params: RefParams,
    tokens: Vec<Vec<usize>>,
    targets: Vec<Vec<usize>>,
    /// [L][B][state][H]
    s0: Vec<Vec<Vec<Vec<f64>>>>,
}

impl Case {
    fn states(&self) -> usize {
        if self.lm.cell == RefCell::Lstm {
            2
        } else {
            1
        }
    }

    /// The initial state as grulm's `State`: per state tensor `[L, B, H]`.
    fn state(&self) -> State {
        let (l, h) = (self.lm.layers as i64, self.lm.h as i64);
        State::new(
            (0..self.states())
                .map(|k| {
                    let v: Vec<f64> = self.s0.iter().flat_map(|layer| layer.iter().flat_map(|b| b[k].clone())).collect();
                    Tensor::from_slice(&v).view([l, 2, h])
                })
                .collect(),
        )
    }
}

/// The tiny case: V=5, H=3, T=4 (B=2), weights and state at scale 0.5.
fn tiny_case(cell: RefCell, layers: usize, seed: u64) -> Case {
    let lm = RefLm { cell, v: 5, h: 3, layers, masks: vec![], wmasks: vec![] };
    let params = lm.random_params(seed, 0.5);
    let tokens = vec![vec![0, 3, 1, 4], vec![2, 2, 0, 1]];
    let targets = vec![vec![3, 1, 4, 2], vec![2, 0, 1, 3]];
    let states = if cell == RefCell::Lstm { 2 } else { 1 };
    let s0 = (0..layers)
        .map(|l| {
            (0..2)
                .map(|b| (0..states).map(|k| (0..3).map(|j| 0.3 * ((l * 7 + b * 3 + j + 11 * k) as f64).sin()).collect()).collect())
                .collect()
        })
        .collect();
    Case { lm, params, tokens, targets, s0 }
}

/// A fixed dropout pattern for the tiny case (p = 1/3): every third unit
/// dropped, the others scaled by 1.5.
fn fixed_masks(layers: usize) -> Vec<Vec<Vec<Vec<f64>>>> {
    let unit = |l: usize, t: usize, b: usize, j: usize| if (l + 3 * t + 5 * b + 7 * j).is_multiple_of(3) { 0.0 } else { 1.5 };
    (0..layers).map(|l| (0..4).map(|t| (0..2).map(|b| (0..3).map(|j| unit(l, t, b, j)).collect()).collect()).collect()).collect()
}

/// A fixed weight-drop pattern for the tiny case (p = 1/2): about every other
/// hidden weight dropped, the others doubled.
fn fixed_wmasks(cell: RefCell, layers: usize) -> Vec<Vec<f64>> {
    let width = cell.gates().len() * 3;
    (0..layers).map(|l| (0..3 * width).map(|e| if (l + e + e / 4).is_multiple_of(2) { 0.0 } else { 2.0 }).collect()).collect()
}

#[test]
fn reference_gradients_match_finite_differences() {
    for cell in CELLS {
        let cases = [(1, false, false), (2, false, false), (1, true, false), (2, true, false), (1, false, true), (2, true, true)];
        for (layers, dropout, weight_drop) in cases {
            if weight_drop && !cell.has_hidden() {
                continue; // nothing to drop
            }
            let mut c = tiny_case(cell, layers, 11);
            if dropout {
                c.lm.masks = fixed_masks(layers);
            }
            if weight_drop {
                c.lm.wmasks = fixed_wmasks(cell, layers);
            }
            let dropout = match (dropout, weight_drop) {
                (false, false) => "none",
                (true, false) => "dropout",
                (false, true) => "weight drop",
                (true, true) => "dropout and weight drop",
            };
            let grads = c.lm.backward(&c.params, &c.tokens, &c.targets, &c.s0);
            let eps = 1e-6;
            let mut worst: f64 = 0.0;
            for (pi, values) in c.params.values.iter().enumerate() {
                for e in 0..values.len() {
                    let mut plus = c.params.clone();
                    plus.values[pi][e] += eps;
                    let mut minus = c.params.clone();
                    minus.values[pi][e] -= eps;
                    let fd = (c.lm.forward(&plus, &c.tokens, &c.targets, &c.s0).2 - c.lm.forward(&minus, &c.tokens, &c.targets, &c.s0).2)
                        / (2.0 * eps);
                    let an = grads[pi][e];
                    // Relative error. Central differences in f64 carry ~1e-10 of rounding
                    // noise (loss ~1, ε = 1e-6), so gradients below 1e-3 are held to an
                    // absolute 1e-9 instead: the floor of the denominator.
                    let rel = (an - fd).abs() / an.abs().max(fd.abs()).max(1e-3);
                    worst = worst.max(rel);
                    assert!(
                        rel <= 1e-6,
                        "{cell:?} layers {layers} {dropout}: {}[{e}] analytic {an} vs finite difference {fd} (rel {rel:e})",
                        c.params.names[pi]
                    );
                }
            }
            assert!(grads.iter().flatten().any(|g| g.abs() > 1e-3), "gradients must not all vanish");
            eprintln!("{cell:?} layers {layers} {dropout}: worst relative error {worst:e}");
        }
    }
}

/// Loads the reference parameters into a scratch model (f64, CPU) with
/// `dropout` and `weight_drop`.
fn scratch_from(c: &Case, path: ScratchPath, dropout: f64, weight_drop: f64) -> Box<dyn RecurrentLm> {
    let opts = BuildOptions { path: Some(path), ..BuildOptions::default() };
    let cfg = ModelConfig { dropout, weight_drop, ..c.lm.cell.config(c.lm.layers, c.lm.h) };
    let m = cfg.build(c.lm.v as i64, Device::Cpu, Kind::Double, opts);
    let src: Vec<(String, Tensor)> = c
        .params
        .names
        .iter()
        .zip(&c.params.values)
        .zip(&c.params.shapes)
        .map(|((n, v), s)| (n.clone(), Tensor::from_slice(v).view(s.iter().map(|&d| d as i64).collect::<Vec<_>>().as_slice())))
        .collect();
    assert_eq!(m.named_parameters().len(), src.len());
    assign(&m.named_parameters(), &src, "reference").unwrap();
    m
}

fn max_diff(t: &Tensor, v: &[f64]) -> f64 {
    let got = Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap();
    assert_eq!(got.len(), v.len());
    got.iter().zip(v).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max)
}

/// What a training step drops: `model.dropout`, `model.weight_drop`, and the
/// seed the step's masks are drawn after.
#[derive(Clone, Copy)]
struct Drops {
    dropout: f64,
    weight_drop: f64,
    seed: i64,
}

/// Max difference between a model's training step and the reference's, over
/// logits, every state tensor, the loss and every gradient (f64). With
/// `Some(drops)` the model has those `model.dropout` and `model.weight_drop`
/// and draws its masks after `manual_seed(drops.seed)`; the reference's masks
/// must be those (`c.lm.masks`, `c.lm.wmasks`). The logits (evaluation) are
/// compared with the reference without masks.
fn worst_against_reference(c: &Case, path: ScratchPath, drops: Option<Drops>) -> Vec<(String, f64)> {
    let eval_lm = RefLm { masks: vec![], wmasks: vec![], ..c.lm.clone() };
    let (logits, _, _, _) = eval_lm.forward(&c.params, &c.tokens, &c.targets, &c.s0);
    let (_, finals, loss, _) = c.lm.forward(&c.params, &c.tokens, &c.targets, &c.s0);
    let grads = c.lm.backward(&c.params, &c.tokens, &c.targets, &c.s0);
    let m = scratch_from(c, path, drops.map_or(0.0, |d| d.dropout), drops.map_or(0.0, |d| d.weight_drop));
    let ids = |v: &[Vec<usize>]| Tensor::from_slice(&v.concat().iter().map(|&x| x as i64).collect::<Vec<_>>()).view([2, 4]);
    let (tokens, targets) = (ids(&c.tokens), ids(&c.targets));
    let (out, _) = tch::no_grad(|| m.forward(&tokens, &c.state()));
    // The training step: autograd on Reference and Fused, hand-written on Bptt.
    if let Some(d) = drops {
        tch::manual_seed(d.seed);
    }
    let (l, state) = m.train_step(&tokens, &targets, &c.state());
    let mut rows = vec![("logits".to_string(), max_diff(&out, &logits.concat().concat()))];
    for (k, fin) in finals.iter().enumerate() {
        rows.push((format!("state {k}"), max_diff(&state.tensors()[k], &fin.concat().concat())));
    }
    rows.push(("loss".into(), (f64::try_from(&l).unwrap() - loss).abs()));
    let named: HashMap<String, Tensor> = m.named_parameters().into_iter().collect();
    for (i, name) in c.params.names.iter().enumerate() {
        rows.push((format!("grad {name}"), max_diff(&named[name].grad(), &grads[i])));
    }
    rows
}

#[test]
fn every_scratch_cell_matches_the_independent_reference() {
    // f64: logits, state, loss and every gradient within 1e-10 of the reference,
    // on every path, 1 and 2 layers.
    const TOL: f64 = 1e-10;
    for cell in CELLS {
        for layers in [1, 2] {
            let c = tiny_case(cell, layers, 5);
            for path in [ScratchPath::Reference, ScratchPath::Fused, ScratchPath::Bptt, ScratchPath::BpttOps] {
                for (what, d) in worst_against_reference(&c, path, None) {
                    assert!(d <= TOL, "{cell:?} layers {layers} {path:?}: {what} differs by {d:e}");
                }
            }
        }
    }
}

#[test]
fn dropout_masks_in_the_training_step_match_the_reference() {
    // model.dropout = 0.4: the masks the model draws (after a seed) are drawn
    // again here and given to the independent reference; every path's training
    // step (the hand-written BPTT one included) matches it to 1e-10, and its
    // forward pass for evaluation uses no mask at all.
    alone("models::dropout_masks_in_the_training_step_match_the_reference", dropout_reference_body);
}

/// Drawn dropout masks `[T, B, H]` as the reference's `[L][T][B][H]`.
fn ref_dropout_masks(drawn: &[Tensor]) -> Vec<Vec<Vec<Vec<f64>>>> {
    let (t, b) = (drawn[0].size()[0], drawn[0].size()[1]);
    drawn.iter().map(|m| (0..t).map(|t| (0..b).map(|b| Vec::<f64>::try_from(m.get(t).get(b)).unwrap()).collect()).collect()).collect()
}

fn dropout_reference_body() {
    const TOL: f64 = 1e-10;
    let p = 0.4;
    for cell in CELLS {
        for layers in [1, 2] {
            let mut c = tiny_case(cell, layers, 5);
            let like = Tensor::zeros([1], (Kind::Double, Device::Cpu));
            tch::manual_seed(21);
            c.lm.masks = ref_dropout_masks(&dropout_masks(layers, [4, 2, 3], p, &like));
            let units: Vec<f64> = c.lm.masks.iter().flatten().flatten().flatten().copied().collect();
            assert!(units.iter().all(|&u| u == 0.0 || (u - 1.0 / 0.6).abs() < 1e-15), "inverted dropout: 0 or 1/(1-p)");
            assert!(units.contains(&0.0) && units.iter().any(|&u| u > 0.0), "some units dropped, some kept");
            for path in [ScratchPath::Reference, ScratchPath::Fused, ScratchPath::Bptt, ScratchPath::BpttOps] {
                for (what, d) in worst_against_reference(&c, path, Some(Drops { dropout: p, weight_drop: 0.0, seed: 21 })) {
                    assert!(d <= TOL, "{cell:?} layers {layers} {path:?} dropout {p}: {what} differs by {d:e}");
                }
            }
            // The masks change the step: the reference without them is far off.
            let plain = RefLm { masks: vec![], ..c.lm.clone() };
            let (a, b) =
                (c.lm.forward(&c.params, &c.tokens, &c.targets, &c.s0).2, plain.forward(&c.params, &c.tokens, &c.targets, &c.s0).2);
            assert!((a - b).abs() > 1e-3, "{cell:?}: dropout changed the loss by {:e} only", (a - b).abs());
        }
    }
}

#[test]
fn weight_drop_in_the_training_step_matches_the_reference() {
    // model.weight_drop = 0.5, alone and with model.dropout = 0.4: the masks the
    // model draws after a seed (its weight masks first) are drawn again here
    // and given to the independent reference, whose W_h ⊙ M and chain rule
    // the finite differences above check; every cell with hidden weights,
    // every path, 1 and 2 layers, to 1e-10. Evaluation drops nothing.
    alone("models::weight_drop_in_the_training_step_matches_the_reference", weight_drop_reference_body);
}

fn weight_drop_reference_body() {
    const TOL: f64 = 1e-10;
    let like = Tensor::zeros([1], (Kind::Double, Device::Cpu));
    for cell in CELLS.into_iter().filter(RefCell::has_hidden) {
        for layers in [1, 2] {
            for dropout in [0.0, 0.4] {
                let mut c = tiny_case(cell, layers, 5);
                let width = cell.gates().len() as i64 * 3;
                tch::manual_seed(21);
                let drawn = weight_drop_masks(&vec![[3, width]; layers], 0.5, &like);
                c.lm.wmasks = drawn.iter().map(|m| Vec::<f64>::try_from(m.flatten(0, -1)).unwrap()).collect();
                if dropout > 0.0 {
                    c.lm.masks = ref_dropout_masks(&dropout_masks(layers, [4, 2, 3], dropout, &like));
                }
                let units: Vec<f64> = c.lm.wmasks.concat();
                assert!(units.iter().all(|&u| u == 0.0 || u == 2.0), "inverted: 0 or 1/(1-p)");
                assert!(units.contains(&0.0) && units.contains(&2.0), "some weights dropped, some kept");
                let drops = Drops { dropout, weight_drop: 0.5, seed: 21 };
                for path in [ScratchPath::Reference, ScratchPath::Fused, ScratchPath::Bptt, ScratchPath::BpttOps] {
                    for (what, d) in worst_against_reference(&c, path, Some(drops)) {
                        assert!(d <= TOL, "{cell:?} layers {layers} {path:?} weight drop 0.5 dropout {dropout}: {what} differs by {d:e}");
                    }
                }
                // The masks change the step: the reference without them is far off.
                let plain = RefLm { wmasks: vec![], ..c.lm.clone() };
                let (a, b) =
                    (c.lm.forward(&c.params, &c.tokens, &c.targets, &c.s0).2, plain.forward(&c.params, &c.tokens, &c.targets, &c.s0).2);
                assert!((a - b).abs() > 1e-4, "{cell:?}: weight drop changed the loss by {:e} only", (a - b).abs());
            }
        }
    }
}

#[test]
fn builtin_weight_drop_matches_the_reference() {
    // The built-in GRU and LSTM with model.weight_drop = 0.5 (with and without
    // model.dropout = 0.3), on the CPU engine and on libtorch's own op and
    // autograd: weights read out of PyTorch's layout by this test's own
    // mapping, the masks the model draws over weight_hh after a seed drawn
    // again, the step against the independent reference (f64, 1e-10).
    alone("models::builtin_weight_drop_matches_the_reference", builtin_weight_drop_body);
}

/// PyTorch's gate row blocks, in order: (the reference's gate, its bias, its
/// hidden-side bias if it keeps one apart).
fn pytorch_blocks(cell: CellKind) -> Vec<(&'static str, &'static str, Option<&'static str>)> {
    match cell {
        CellKind::Gru => vec![("r", "b_r", None), ("z", "b_z", None), ("h", "b_xh", Some("b_hh"))],
        CellKind::Lstm => vec![("i", "b_i", None), ("f", "b_f", None), ("c", "b_c", None), ("o", "b_o", None)],
        _ => unreachable!("the built-in cells with gates"),
    }
}

/// Block `k` of a PyTorch `[G·H, in]` matrix, transposed: `[in, H]` row-major.
fn block_t(m: &Tensor, k: i64, h: i64) -> Vec<f64> {
    Vec::<f64>::try_from(m.narrow(0, k * h, h).tr().contiguous().flatten(0, -1)).unwrap()
}

/// A built-in model's tensors (its parameters, or their gradients) by the
/// reference's names: weights per block transposed; a bias without a
/// hidden-side twin is `b_ih + b_hh` for parameters, and `b_ih`'s gradient
/// (which is `b_hh`'s) for gradients.
fn from_pytorch(t: &HashMap<String, Tensor>, cell: CellKind, layers: usize, h: i64, grads: bool) -> HashMap<String, Vec<f64>> {
    let v = |t: &Tensor| Vec::<f64>::try_from(t.contiguous().flatten(0, -1)).unwrap();
    let mut out = HashMap::new();
    for l in 0..layers {
        let g = |n: &str| &t[&format!("rnn.{n}_l{l}")];
        for (k, (gate, bias, hidden_bias)) in pytorch_blocks(cell).into_iter().enumerate() {
            let k = k as i64;
            out.insert(format!("W_x{gate}_l{l}"), block_t(g("weight_ih"), k, h));
            out.insert(format!("W_h{gate}_l{l}"), block_t(g("weight_hh"), k, h));
            let (b_ih, b_hh) = (g("bias_ih").narrow(0, k * h, h), g("bias_hh").narrow(0, k * h, h));
            match hidden_bias {
                Some(hb) => {
                    out.insert(format!("{bias}_l{l}"), v(&b_ih));
                    out.insert(format!("{hb}_l{l}"), v(&b_hh));
                }
                None if grads => {
                    let d = f64::try_from((&b_ih - &b_hh).abs().max()).unwrap();
                    assert!(d <= 1e-12, "b_ih and b_hh of block {k} get the same gradient (differ by {d:e})");
                    out.insert(format!("{bias}_l{l}"), v(&b_ih));
                }
                None => drop(out.insert(format!("{bias}_l{l}"), v(&(b_ih + b_hh)))),
            }
        }
    }
    out.insert("W_hq".into(), v(&t["linear.weight"].tr()));
    out.insert("b_q".into(), v(&t["linear.bias"]));
    out
}

fn builtin_weight_drop_body() {
    const TOL: f64 = 1e-10;
    let (h, p) = (3i64, 0.5);
    let like = Tensor::zeros([1], (Kind::Double, Device::Cpu));
    for (cell, rc) in [(CellKind::Gru, RefCell::Gru { after: true, z: true, r: true }), (CellKind::Lstm, RefCell::Lstm)] {
        let blocks = pytorch_blocks(cell);
        let ref_gates: Vec<&str> = rc.gates().iter().map(|g| g.0).collect();
        for layers in [1, 2] {
            for dropout in [0.0, 0.3] {
                let reset_gate = (cell == CellKind::Gru).then_some(ResetGate::After);
                let cfg = ModelConfig {
                    kind: ModelKind::Builtin,
                    cell,
                    reset_gate,
                    hidden_size: h as usize,
                    num_layers: layers,
                    dropout,
                    weight_drop: p,
                    ..ModelConfig::default()
                };
                let libtorch = BuildOptions { libtorch_step: true, ..BuildOptions::default() };
                for (how, opts) in [("CPU engine", BuildOptions::default()), ("libtorch", libtorch)] {
                    let mut c = tiny_case(rc, layers, 5);
                    let m = cfg.build(5, Device::Cpu, Kind::Double, opts);
                    tch::manual_seed(3);
                    parity::randomize(m.as_ref(), 0.5);
                    let named: HashMap<String, Tensor> = m.named_parameters().into_iter().collect();
                    let values = from_pytorch(&named, cell, layers, h, false);
                    c.params.values = c.params.names.iter().map(|n| values[n].clone()).collect();
                    // The masks over weight_hh [G·H, H], as the reference's [H, G·H].
                    tch::manual_seed(21);
                    let drawn = weight_drop_masks(&vec![[blocks.len() as i64 * h, h]; layers], p, &like);
                    c.lm.wmasks = drawn
                        .iter()
                        .map(|m| {
                            let per_gate: HashMap<&str, Vec<f64>> =
                                blocks.iter().enumerate().map(|(k, b)| (b.0, block_t(m, k as i64, h))).collect();
                            let h = h as usize;
                            (0..h)
                                .flat_map(|i| ref_gates.iter().flat_map(|g| per_gate[g][i * h..(i + 1) * h].to_vec()).collect::<Vec<_>>())
                                .collect()
                        })
                        .collect();
                    if dropout > 0.0 {
                        c.lm.masks = ref_dropout_masks(&dropout_masks(layers, [4, 2, 3], dropout, &like));
                    }
                    let (_, finals, loss, _) = c.lm.forward(&c.params, &c.tokens, &c.targets, &c.s0);
                    let grads = c.lm.backward(&c.params, &c.tokens, &c.targets, &c.s0);
                    let ids = |v: &[Vec<usize>]| Tensor::from_slice(&v.concat().iter().map(|&x| x as i64).collect::<Vec<_>>()).view([2, 4]);
                    tch::manual_seed(21);
                    let (l, state) = m.train_step(&ids(&c.tokens), &ids(&c.targets), &c.state());
                    let mut rows = vec![("loss".to_string(), (f64::try_from(&l).unwrap() - loss).abs())];
                    for (k, fin) in finals.iter().enumerate() {
                        rows.push((format!("state {k}"), max_diff(&state.tensors()[k], &fin.concat().concat())));
                    }
                    let got = from_pytorch(&named.iter().map(|(n, t)| (n.clone(), t.grad())).collect(), cell, layers, h, true);
                    for (i, name) in c.params.names.iter().enumerate() {
                        let d = got[name].iter().zip(&grads[i]).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
                        rows.push((format!("grad {name}"), d));
                    }
                    for (what, d) in rows {
                        assert!(d <= TOL, "built-in {cell:?} on {how}, layers {layers}, dropout {dropout}: {what} differs by {d:e}");
                    }
                }
            }
        }
    }
}

#[test]
fn dropout_masks_are_libtorchs_own() {
    // libtorch's RNN (dropout between layers) plus its `dropout` before the
    // linear layer, against the scratch cells with model.dropout, from one seed:
    // the same units dropped, so the same loss and gradients (f64, 1e-10).
    alone("models::dropout_masks_are_libtorchs_own", dropout_libtorch_body);
}

fn dropout_libtorch_body() {
    for cell in [CellKind::Gru, CellKind::Lstm, CellKind::Rnn] {
        for layers in [1, 2, 3] {
            for path in [ScratchPath::Reference, ScratchPath::Bptt, ScratchPath::BpttOps] {
                let r = parity::compare(Device::Cpu, Kind::Double, cell, layers, path, 5, 0.3).unwrap();
                assert!(r.passed(), "{cell:?} {path:?}\n{}", r.table());
                assert!(r.table().contains("dropout 0.3"));
            }
        }
    }
}

#[test]
fn every_scratch_cell_matches_libtorch() {
    // Same weights through the layout table; B=4, T=7, weights ~ N(0, 0.5²).
    // Tolerances on the CPU: f64 1e-10, f32 1e-5 (max abs difference).
    for cell in [CellKind::Gru, CellKind::Lstm, CellKind::Rnn] {
        for kind in [Kind::Double, Kind::Float] {
            for layers in [1, 2] {
                for path in [ScratchPath::Reference, ScratchPath::Fused, ScratchPath::Bptt, ScratchPath::BpttOps] {
                    let r = parity::compare(Device::Cpu, kind, cell, layers, path, 3, 0.0).unwrap();
                    let states = if cell == CellKind::Lstm { 2 } else { 1 };
                    assert_eq!(r.rows.len(), 2 + states + 4 * layers + 2, "every parameter's gradient is compared");
                    assert!(r.passed(), "{cell:?} {path:?}\n{}", r.table());
                    assert!(r.tolerance == if kind == Kind::Double { 1e-10 } else { 1e-5 });
                }
            }
        }
    }
}

#[test]
fn gru_variants_really_differ() {
    // Same weights where the variants share them; every pair must give different
    // outputs (a variant silently computing another would pass the reference test
    // only if the reference made the same mistake).
    let cells = [CELLS[0], CELLS[1], CELLS[2], CELLS[4]];
    let outputs: Vec<Tensor> = cells
        .iter()
        .map(|&cell| {
            let base = tiny_case(RefCell::Gru { after: true, z: true, r: true }, 1, 9);
            let mut c = tiny_case(cell, 1, 9);
            for (i, name) in c.params.names.clone().iter().enumerate() {
                let from = if name == "b_h_l0" { "b_xh_l0" } else { name.as_str() };
                c.params.values[i] = base.params.get(from).to_vec();
            }
            let m = scratch_from(&c, ScratchPath::Fused, 0.0, 0.0);
            let tokens = Tensor::from_slice(&[0i64, 3, 1, 4, 2, 2, 0, 1]).view([2, 4]);
            m.forward(&tokens, &c.state()).0
        })
        .collect();
    for i in 0..cells.len() {
        for j in i + 1..cells.len() {
            let d = f64::try_from((&outputs[i] - &outputs[j]).abs().max()).unwrap();
            assert!(d > 1e-3, "{:?} and {:?} give the same outputs (max diff {d:e})", cells[i], cells[j]);
        }
    }
}

#[test]
fn builtin_cells_match_pytorch_golden() {
    for (cell, file) in [(CellKind::Gru, "builtin_gru.json"), (CellKind::Lstm, "builtin_lstm.json"), (CellKind::Rnn, "builtin_rnn.json")] {
        let text = std::fs::read_to_string(format!("{}/tests/golden/{file}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        let g: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert!(g["torch_version"].as_str().unwrap().starts_with("2.11.0"));
        let n = |k: &str| g[k].as_i64().unwrap();
        let floats = |v: &serde_json::Value| v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect::<Vec<f64>>();
        let cfg = ModelConfig {
            kind: ModelKind::Builtin,
            cell,
            hidden_size: n("H") as usize,
            num_layers: n("L") as usize,
            reset_gate: (cell == CellKind::Gru).then_some(ResetGate::After),
            init_sigma: None,
            ..ModelConfig::default()
        };
        let m = cfg.init(n("V"), Device::Cpu, Kind::Double);
        let src: Vec<(String, Tensor)> = g["params"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(name, p)| {
                let shape: Vec<i64> = p["shape"].as_array().unwrap().iter().map(|d| d.as_i64().unwrap()).collect();
                (name.clone(), Tensor::from_slice(&floats(&p["values"])).view(shape.as_slice()))
            })
            .collect();
        assert_eq!(src.len(), m.named_parameters().len(), "{file}: PyTorch's state_dict names are grulm's");
        assign(&m.named_parameters(), &src, "golden").unwrap();
        let tokens: Vec<i64> =
            g["tokens"].as_array().unwrap().iter().flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_i64().unwrap())).collect();
        let tokens = Tensor::from_slice(&tokens).view([n("B"), n("T")]);
        let shape = [n("L"), n("B"), n("H")];
        let mut s0 = vec![Tensor::from_slice(&floats(&g["h0"])).view(shape)];
        if cell == CellKind::Lstm {
            s0.push(Tensor::from_slice(&floats(&g["c0"])).view(shape));
        }
        let (logits, state) = m.forward(&tokens, &State::new(s0));
        assert_eq!(logits.size(), vec![n("T"), n("B"), n("V")]);
        assert!(max_diff(&logits, &floats(&g["logits"])) <= 1e-12, "{file}: logits");
        assert!(max_diff(state.hidden(), &floats(&g["final_state"])) <= 1e-12, "{file}: final state");
        if cell == CellKind::Lstm {
            assert!(max_diff(&state.tensors()[1], &floats(&g["final_cell"])) <= 1e-12, "{file}: final memory cell");
        }
    }
}

#[test]
fn parameter_counts_match_d2l() {
    let count = |kind, cell, gates| {
        let reset = match (cell, kind) {
            (CellKind::Gru, ModelKind::Builtin) => Some(ResetGate::After),
            (CellKind::Gru, _) => Some(ResetGate::Before),
            _ => None,
        };
        let cfg = ModelConfig { kind, cell, reset_gate: reset, gru_gates: gates, ..ModelConfig::default() };
        cfg.init(28, Device::Cpu, Kind::Float).parameter_count()
    };
    // d2l 0.17 (H=256, V=28): the GRU chapter's, the LSTM chapter's, the RNN's.
    assert_eq!(count(ModelKind::Scratch, CellKind::Gru, GruGates::Both), 226_076);
    assert_eq!(count(ModelKind::Builtin, CellKind::Gru, GruGates::Both), 226_844);
    assert_eq!(count(ModelKind::Scratch, CellKind::Lstm, GruGates::Both), 299_036);
    assert_eq!(count(ModelKind::Builtin, CellKind::Lstm, GruGates::Both), 300_060);
    assert_eq!(count(ModelKind::Scratch, CellKind::Rnn, GruGates::Both), 80_156);
    assert_eq!(count(ModelKind::Builtin, CellKind::Rnn, GruGates::Both), 80_412);
    // A GRU without a gate: one gate (72,960) fewer.
    assert_eq!(count(ModelKind::Scratch, CellKind::Gru, GruGates::ResetOnly), 153_116);
    assert_eq!(count(ModelKind::Scratch, CellKind::Gru, GruGates::UpdateOnly), 153_116);
    // reset-after adds b_hh: 256 more.
    let after = ModelConfig { reset_gate: Some(ResetGate::After), ..ModelConfig::default() };
    assert_eq!(after.init(28, Device::Cpu, Kind::Float).parameter_count(), 226_332);
    // 2-layer nn.LSTM (the deep-RNN section).
    let deep = ModelConfig { kind: ModelKind::Builtin, cell: CellKind::Lstm, num_layers: 2, reset_gate: None, ..ModelConfig::default() };
    assert_eq!(deep.init(28, Device::Cpu, Kind::Float).parameter_count(), 826_396);
    // The minimal cells: W_x [V, H] and b per gate (no W_h), and the output
    // layer: 2·(28·256 + 256) + 256·28 + 28, and 3·(...) + the same.
    assert_eq!(count(ModelKind::Scratch, CellKind::MinGru, GruGates::Both), 22_044);
    assert_eq!(count(ModelKind::Scratch, CellKind::MinLstm, GruGates::Both), 29_468);
    // The config's own count (`--dry-run`, the memory estimate) is the model's,
    // for every cell and kind, 1 and 3 layers.
    for cell in CellKind::ALL {
        for kind in [ModelKind::Scratch, ModelKind::Builtin].into_iter().filter(|&k| k == ModelKind::Scratch || cell.builtin().is_some()) {
            for num_layers in [1, 3] {
                let reset_gate = cell.has_gru_options().then_some(ResetGate::After);
                let cfg = ModelConfig { kind, cell, reset_gate, num_layers, hidden_size: 19, ..ModelConfig::default() };
                let built = cfg.init(28, Device::Cpu, Kind::Float).parameter_count() as u64;
                assert_eq!(cfg.parameter_count(28), built, "{cell:?} {kind:?} {num_layers} layer(s)");
            }
        }
    }
}

#[test]
fn initialisation_follows_d2l_and_pytorch() {
    for cell in [CellKind::Gru, CellKind::Lstm, CellKind::Rnn] {
        tch::manual_seed(0);
        let reset = (cell == CellKind::Gru).then_some(ResetGate::Before);
        let scratch = ModelConfig { cell, reset_gate: reset, ..ModelConfig::default() }.init(28, Device::Cpu, Kind::Float);
        for (name, p) in scratch.named_parameters() {
            let std = f64::try_from(p.std(true)).unwrap();
            if name.starts_with('b') {
                assert_eq!(std, 0.0, "{cell:?} {name} starts at zero");
            } else {
                assert!((std - 0.01).abs() < 0.001, "{cell:?} {name}: std {std}");
            }
        }
        let reset = (cell == CellKind::Gru).then_some(ResetGate::After);
        let builtin = ModelConfig { kind: ModelKind::Builtin, cell, reset_gate: reset, init_sigma: None, ..ModelConfig::default() }.init(
            28,
            Device::Cpu,
            Kind::Float,
        );
        for (name, p) in builtin.named_parameters() {
            let max = f64::try_from(p.abs().max()).unwrap();
            assert!(max <= 0.0625 && max > 0.05, "{cell:?} {name}: U(-1/16, 1/16) expected, max |w| {max}");
        }
    }
}

/// One training step of `cfg` built with `opts`, with `threads` libtorch
/// threads, from fixed weights (N(0, 0.3²): at H=37 the recurrence amplifies
/// f32 rounding about as much as `grulm parity`'s N(0, 0.5²) at H=16 does),
/// tokens, state and dropout masks: the loss, every state tensor and every
/// gradient, by name.
fn step_outputs(cfg: &ModelConfig, opts: BuildOptions, kind: Kind, threads: i32) -> Vec<(String, Tensor)> {
    // B=13 rows split unevenly over the threads and over the micro-kernel's
    // row blocks; H=37 (cfg) leaves a partial column panel.
    step_outputs_at(cfg, opts, kind, threads, 13, 6)
}

/// [`step_outputs`] for a minibatch of `b` sequences of `t` steps.
fn step_outputs_at(cfg: &ModelConfig, opts: BuildOptions, kind: Kind, threads: i32, b: i64, t: i64) -> Vec<(String, Tensor)> {
    tch::set_num_threads(threads);
    let (v, h, layers) = (11, cfg.hidden_size as i64, cfg.num_layers as i64);
    tch::manual_seed(7);
    let m = cfg.build(v, Device::Cpu, kind, opts);
    parity::randomize(m.as_ref(), 0.3);
    tch::manual_seed(11);
    let tokens = Tensor::randint(v, [b, t], (Kind::Int64, Device::Cpu));
    let targets = Tensor::randint(v, [b, t], (Kind::Int64, Device::Cpu));
    let s0: Vec<Tensor> = (0..m.zero_state(1).tensors().len()).map(|_| Tensor::randn([layers, b, h], (kind, Device::Cpu)) * 0.3).collect();
    tch::manual_seed(5); // the same dropout masks
    let (loss, state) = m.train_step(&tokens, &targets, &State::new(s0.iter().map(Tensor::shallow_clone).collect()));
    let mut out = vec![("loss".to_string(), loss)];
    for (k, s) in state.tensors().iter().enumerate() {
        out.push((format!("state {k}"), s.shallow_clone()));
    }
    for (name, p) in m.named_parameters() {
        assert!(f64::try_from(p.grad().abs().sum(Kind::Double)).unwrap() > 0.0, "{name} has a gradient");
        out.push((format!("grad {name}"), p.grad()));
    }
    out
}

/// Two builds of one model config (`one`, `other`), one training step each
/// ([`step_outputs`]): (name, max abs difference) of the loss, every state
/// tensor and every gradient.
fn two_steps(cfg: &ModelConfig, one: BuildOptions, other: BuildOptions, kind: Kind, threads: i32) -> Vec<(String, f64)> {
    let (a, b) = (step_outputs(cfg, one, kind, threads), step_outputs(cfg, other, kind, threads));
    let diff = |a: &Tensor, b: &Tensor| f64::try_from((a - b).abs().max().to_kind(Kind::Double)).unwrap();
    a.iter().zip(&b).map(|((name, x), (_, y))| (name.clone(), diff(x, y))).collect()
}

#[test]
fn the_cpu_engine_flushes_subnormals_to_zero() {
    // A product below f32's smallest normal (1.2e-38) is a subnormal, whose
    // arithmetic is about a hundred times slower; after a training step on the
    // CPU engine, the threads that ran it (this one among them) flush such
    // results to zero, as PyTorch's set_flush_denormal(True) does.
    let tiny = || std::hint::black_box(1e-30f32) * std::hint::black_box(1e-10f32);
    std::thread::spawn(move || {
        assert!(tiny() > 0.0, "a fresh thread keeps subnormals (IEEE 754's default)");
        tch::set_num_threads(1);
        let cfg = RefCell::MinGru.config(1, 8);
        let _ = step_outputs(&cfg, BuildOptions { path: Some(ScratchPath::Bptt), ..BuildOptions::default() }, Kind::Float, 1);
        assert_eq!(tiny(), 0.0, "after the engine's step, subnormal results are zero");
        assert_eq!(std::hint::black_box(f32::MIN_POSITIVE / 4.0) * 1.0, 0.0, "and subnormal inputs read as zero");
    })
    .join()
    .unwrap();
}

#[test]
fn cpu_engine_kernel_sets_compute_the_same_numbers() {
    // Every kernel set of the CPU engine that this CPU can run (portable, AVX2
    // and FMA, AVX-512) gives the same training step, bit for bit: each product
    // element sums in the same order with one rounding per FMA, whatever the
    // vector width and the register block. Every cell, two layers, f64 and f32,
    // 1 and 3 threads, with dropout.
    alone("models::cpu_engine_kernel_sets_compute_the_same_numbers", || {
        let sets: Vec<CpuKernels> = CpuKernels::ALL.into_iter().filter(|k| k.available()).collect();
        println!("kernel sets this CPU runs: {}", sets.iter().map(|k| k.name()).collect::<Vec<_>>().join(", "));
        assert!(sets.contains(&CpuKernels::Portable) && set_cpu_kernels(CpuKernels::Portable).is_ok());
        let engine = BuildOptions { path: Some(ScratchPath::Bptt), ..BuildOptions::default() };
        for c in CELLS {
            for kind in [Kind::Double, Kind::Float] {
                for threads in [1, 3] {
                    let cfg = ModelConfig { dropout: 0.3, ..c.config(2, 37) };
                    let runs: Vec<Vec<(String, Tensor)>> = sets
                        .iter()
                        .map(|&k| {
                            set_cpu_kernels(k).unwrap();
                            step_outputs(&cfg, engine, kind, threads)
                        })
                        .collect();
                    for (k, run) in sets.iter().zip(&runs).skip(1) {
                        for ((name, x), (_, y)) in run.iter().zip(&runs[0]) {
                            assert!(x.equal(y), "{c:?} {kind:?} {threads} thread(s): {name} on {} differs from portable", k.name());
                        }
                    }
                }
            }
        }
    });
}

#[test]
fn bf16_step_is_the_f32_step_within_bf16_rounding() {
    // train.precision = "bf16" rounds the inputs of every product of the step
    // to bf16 (8 significant bits: a unit roundoff u = 2⁻⁹), and the kernels
    // multiply exactly those (src/model/cpu/bf16.rs's test). Here the whole
    // step: every cell, and the built-in models through the engine, two layers,
    // with dropout, on every bf16 kernel this CPU runs, 1 and 3 threads,
    // against the f32 step of the same weights, state and masks. The
    // rounding errors of the products enter the loss, the state and every
    // gradient at first order, with random signs: each output's relative error
    // in norm stays within 32u (~6%; measured: at most 2.1e-2, the RNN), and is at least
    // u/64 somewhere (the products were rounded: an f32 step agrees with
    // itself to ~1e-7). B=40 and H=40: AMX's whole tiles and the rows and
    // columns past them.
    alone("models::bf16_step_is_the_f32_step_within_bf16_rounding", || {
        let u = 2f64.powi(-9);
        let kernels: Vec<Bf16Kernel> = Bf16Kernel::ALL.into_iter().filter(|k| k.available()).collect();
        println!("bf16 kernels this CPU runs: {:?}", kernels.iter().map(|k| k.name()).collect::<Vec<_>>());
        let mut cases: Vec<(String, ModelConfig)> =
            CELLS.iter().map(|c| (format!("scratch {c:?}"), ModelConfig { dropout: 0.3, ..c.config(2, 40) })).collect();
        for cell in [CellKind::Gru, CellKind::Lstm, CellKind::Rnn] {
            let reset_gate = (cell == CellKind::Gru).then_some(ResetGate::After);
            let cfg = ModelConfig {
                kind: ModelKind::Builtin,
                cell,
                reset_gate,
                hidden_size: 40,
                num_layers: 2,
                dropout: 0.3,
                ..ModelConfig::default()
            };
            cases.push((format!("builtin {cell:?}"), cfg));
        }
        let norm = |t: &Tensor| f64::try_from(t.to_kind(Kind::Double).norm()).unwrap();
        let at = |p| BuildOptions { precision: p, ..BuildOptions::default() };
        for (name, cfg) in &cases {
            let f32_step = step_outputs_at(cfg, at(Precision::F32), Kind::Float, 1, 40, 5);
            for &kernel in &kernels {
                set_bf16_kernel(kernel).unwrap();
                for threads in [1, 3] {
                    let bf16_step = step_outputs_at(cfg, at(Precision::Bf16), Kind::Float, threads, 40, 5);
                    let mut largest = 0f64;
                    for ((what, x), (_, y)) in bf16_step.iter().zip(&f32_step) {
                        let rel = norm(&(x - y)) / norm(y);
                        assert!(rel <= 32.0 * u, "{name}, {} kernel, {threads} thread(s): {what} is {rel:.2e} from f32's", kernel.name());
                        largest = largest.max(rel);
                    }
                    assert!(largest >= u / 64.0, "{name}, {}: the step is f32's to {largest:.1e}: bf16 not in effect", kernel.name());
                    println!("{name}, {} kernel, {threads} thread(s): largest relative difference from f32 {largest:.2e}", kernel.name());
                }
            }
        }
    });
}

#[test]
fn cpu_engine_matches_the_libtorch_step() {
    // The scratch cells' step on the CPU engine against the same step in
    // libtorch operations (ScratchPath::BpttOps, itself held to the
    // independent reference above), and the built-in models' step on the
    // engine against libtorch's own RNN op and autograd: every cell, two
    // layers, f64 within 1e-10 and f32 within 1e-5 (the CPU tolerances), on 1
    // thread and on 3 (rows split over an OpenMP team), with and without dropout
    // and weight drop.
    alone("models::cpu_engine_matches_the_libtorch_step", || {
        let path = |p| BuildOptions { path: Some(p), ..BuildOptions::default() };
        let libtorch = BuildOptions { libtorch_step: true, ..BuildOptions::default() };
        let mut cases: Vec<(String, ModelConfig, BuildOptions, BuildOptions)> = CELLS
            .iter()
            .map(|c| (format!("scratch {c:?}"), c.config(2, 37), path(ScratchPath::Bptt), path(ScratchPath::BpttOps)))
            .collect();
        for cell in [CellKind::Gru, CellKind::Lstm, CellKind::Rnn] {
            let reset_gate = (cell == CellKind::Gru).then_some(ResetGate::After);
            let cfg = ModelConfig { kind: ModelKind::Builtin, cell, reset_gate, hidden_size: 37, num_layers: 2, ..ModelConfig::default() };
            cases.push((format!("builtin {cell:?}"), cfg, BuildOptions::default(), libtorch));
        }
        for (name, cfg, engine, other) in cases {
            for (kind, tol) in [(Kind::Double, 1e-10), (Kind::Float, 1e-5)] {
                for threads in [1, 3] {
                    for (dropout, weight_drop) in [(0.0, 0.0), (0.3, 0.0), (0.3, 0.4)] {
                        if weight_drop > 0.0 && cfg.cell.hidden_gate_count(cfg.gru_gates) == 0 {
                            continue; // no hidden weights to drop
                        }
                        let cfg = ModelConfig { dropout, weight_drop, ..cfg.clone() };
                        for (what, d) in two_steps(&cfg, engine, other, kind, threads) {
                            assert!(
                                d <= tol,
                                "{name} {kind:?} {threads} thread(s) dropout {dropout} weight drop {weight_drop}: {what} differs by {d:e}"
                            );
                        }
                    }
                }
            }
        }
    });
}
