//! The models against independent references: a plain f64 GRU written here
//! (loops over `Vec<f64>`, hand-derived BPTT, checked by finite differences),
//! libtorch's own GRU, and numbers computed by PyTorch in Python.
#![allow(clippy::needless_range_loop)] // index loops read like the equations
use grulm::checkpoint::assign;
use grulm::config::{ModelConfig, ModelKind, ResetGate};
use grulm::model::{RecurrentLm, ScratchGru, ScratchPath, State};
use grulm::parity;
use std::collections::HashMap;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

// ---------------------------------------------------------------------------
// An independent GRU language model in plain f64.

/// Parameters in the scratch model's names; matrices `[rows, cols]` row-major.
#[derive(Clone)]
struct RefParams {
    names: Vec<String>,
    shapes: Vec<Vec<usize>>,
    values: Vec<Vec<f64>>,
}

impl RefParams {
    fn get(&self, name: &str) -> &[f64] {
        &self.values[self.names.iter().position(|n| n == name).unwrap_or_else(|| panic!("{name}"))]
    }
}

struct RefGru {
    v: usize,
    h: usize,
    layers: usize,
    after: bool,
}

/// What the forward pass keeps for the backward pass, per (t, layer, batch row).
struct Cache {
    x: Vec<f64>,
    h_prev: Vec<f64>,
    z: Vec<f64>,
    r: Vec<f64>,
    c: Vec<f64>,
    /// reset-after: H W_hh + b_hh; reset-before: R ⊙ H
    u: Vec<f64>,
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

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

impl RefGru {
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
            let mut gate = |g: &str, bias: &str| {
                names.push(format!("W_x{g}_l{l}"));
                shapes.push(vec![input, self.h]);
                names.push(format!("W_h{g}_l{l}"));
                shapes.push(vec![self.h, self.h]);
                names.push(format!("{bias}_l{l}"));
                shapes.push(vec![self.h]);
            };
            gate("z", "b_z");
            gate("r", "b_r");
            gate("h", if self.after { "b_xh" } else { "b_h" });
            if self.after {
                names.push(format!("b_hh_l{l}"));
                shapes.push(vec![self.h]);
            }
        }
        names.push("W_hq".into());
        shapes.push(vec![self.h, self.v]);
        names.push("b_q".into());
        shapes.push(vec![self.v]);
        let values = shapes.iter().map(|s| (0..s.iter().product::<usize>()).map(|_| normal() * scale).collect()).collect();
        RefParams { names, shapes, values }
    }

    /// tokens/targets [B][T]; h0 [L][B][H]. Returns (logits [T][B][V], final h [L][B][H], loss, caches).
    #[allow(clippy::type_complexity)]
    fn forward(
        &self,
        p: &RefParams,
        tokens: &[Vec<usize>],
        targets: &[Vec<usize>],
        h0: &[Vec<Vec<f64>>],
    ) -> (Vec<Vec<Vec<f64>>>, Vec<Vec<Vec<f64>>>, f64, Vec<Vec<Vec<Cache>>>, Vec<Vec<Vec<f64>>>) {
        let (b_n, t_n, h) = (tokens.len(), tokens[0].len(), self.h);
        let mut hs = h0.to_vec();
        let mut logits = vec![];
        let mut caches = vec![];
        let mut tops = vec![];
        let mut loss = 0.0;
        for t in 0..t_n {
            let mut step_logits = vec![];
            let mut step_caches: Vec<Vec<Cache>> = (0..self.layers).map(|_| vec![]).collect();
            let mut step_tops = vec![];
            for b in 0..b_n {
                let mut x = vec![0.0; self.v];
                x[tokens[b][t]] = 1.0;
                for l in 0..self.layers {
                    let g = |n: &str| p.get(&format!("{n}_l{l}"));
                    let hp = hs[l][b].clone();
                    let az = vec_mat(&x, g("W_xz"), h);
                    let hz = vec_mat(&hp, g("W_hz"), h);
                    let z: Vec<f64> = (0..h).map(|j| sigmoid(az[j] + hz[j] + g("b_z")[j])).collect();
                    let ar = vec_mat(&x, g("W_xr"), h);
                    let hr = vec_mat(&hp, g("W_hr"), h);
                    let r: Vec<f64> = (0..h).map(|j| sigmoid(ar[j] + hr[j] + g("b_r")[j])).collect();
                    let ax = vec_mat(&x, g("W_xh"), h);
                    let (c, u): (Vec<f64>, Vec<f64>) = if self.after {
                        let hh = vec_mat(&hp, g("W_hh"), h);
                        let u: Vec<f64> = (0..h).map(|j| hh[j] + g("b_hh")[j]).collect();
                        ((0..h).map(|j| (ax[j] + g("b_xh")[j] + r[j] * u[j]).tanh()).collect(), u)
                    } else {
                        let s: Vec<f64> = (0..h).map(|j| r[j] * hp[j]).collect();
                        let sh = vec_mat(&s, g("W_hh"), h);
                        ((0..h).map(|j| (ax[j] + sh[j] + g("b_h")[j]).tanh()).collect(), s)
                    };
                    let hn: Vec<f64> = (0..h).map(|j| z[j] * hp[j] + (1.0 - z[j]) * c[j]).collect();
                    step_caches[l].push(Cache { x: x.clone(), h_prev: hp, z, r, c, u });
                    hs[l][b] = hn.clone();
                    x = hn;
                }
                let y: Vec<f64> = vec_mat(&x, p.get("W_hq"), self.v).iter().zip(p.get("b_q")).map(|(a, b)| a + b).collect();
                let m = y.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let lse = m + y.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
                loss += lse - y[targets[b][t]];
                step_logits.push(y);
                step_tops.push(x);
            }
            logits.push(step_logits);
            caches.push(step_caches);
            tops.push(step_tops);
        }
        (logits, hs, loss / (b_n * t_n) as f64, caches, tops)
    }

    /// Hand-derived backpropagation through time; gradients in `p`'s order.
    fn backward(&self, p: &RefParams, tokens: &[Vec<usize>], targets: &[Vec<usize>], h0: &[Vec<Vec<f64>>]) -> Vec<Vec<f64>> {
        let (logits, _, _, caches, tops) = self.forward(p, tokens, targets, h0);
        let (b_n, t_n, h) = (tokens.len(), tokens[0].len(), self.h);
        let mut grads: Vec<Vec<f64>> = p.values.iter().map(|x| vec![0.0; x.len()]).collect();
        let idx = |n: &str| p.names.iter().position(|x| x == n).unwrap();
        let mut carry = vec![vec![vec![0.0; h]; b_n]; self.layers];
        for t in (0..t_n).rev() {
            for b in 0..b_n {
                let y = &logits[t][b];
                let m = y.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = y.iter().map(|x| (x - m).exp()).sum();
                let mut dy: Vec<f64> = y.iter().map(|x| (x - m).exp() / z).collect();
                dy[targets[b][t]] -= 1.0;
                dy.iter_mut().for_each(|d| *d /= (b_n * t_n) as f64);
                outer_add(&mut grads[idx("W_hq")], &tops[t][b], &dy);
                grads[idx("b_q")].iter_mut().zip(&dy).for_each(|(g, d)| *g += d);
                let mut dh_above = mat_vec(p.get("W_hq"), &dy, h);
                for l in (0..self.layers).rev() {
                    let cch = &caches[t][l][b];
                    let g = |n: &str| p.get(&format!("{n}_l{l}"));
                    let gi = |n: &str| idx(&format!("{n}_l{l}"));
                    let dh: Vec<f64> = (0..h).map(|j| dh_above[j] + carry[l][b][j]).collect();
                    let dz: Vec<f64> = (0..h).map(|j| dh[j] * (cch.h_prev[j] - cch.c[j])).collect();
                    let dc: Vec<f64> = (0..h).map(|j| dh[j] * (1.0 - cch.z[j])).collect();
                    let mut dh_prev: Vec<f64> = (0..h).map(|j| dh[j] * cch.z[j]).collect();
                    let da_h: Vec<f64> = (0..h).map(|j| dc[j] * (1.0 - cch.c[j] * cch.c[j])).collect();
                    let mut dx = mat_vec(g("W_xh"), &da_h, cch.x.len());
                    outer_add(&mut grads[gi("W_xh")], &cch.x, &da_h);
                    let dr: Vec<f64> = if self.after {
                        grads[gi("b_xh")].iter_mut().zip(&da_h).for_each(|(g, d)| *g += d);
                        let du: Vec<f64> = (0..h).map(|j| da_h[j] * cch.r[j]).collect();
                        outer_add(&mut grads[gi("W_hh")], &cch.h_prev, &du);
                        grads[gi("b_hh")].iter_mut().zip(&du).for_each(|(g, d)| *g += d);
                        mat_vec(g("W_hh"), &du, h).iter().enumerate().for_each(|(j, d)| dh_prev[j] += d);
                        (0..h).map(|j| da_h[j] * cch.u[j]).collect()
                    } else {
                        grads[gi("b_h")].iter_mut().zip(&da_h).for_each(|(g, d)| *g += d);
                        outer_add(&mut grads[gi("W_hh")], &cch.u, &da_h);
                        let ds = mat_vec(g("W_hh"), &da_h, h);
                        (0..h).for_each(|j| dh_prev[j] += ds[j] * cch.r[j]);
                        (0..h).map(|j| ds[j] * cch.h_prev[j]).collect()
                    };
                    for (gate, da) in [
                        ("r", (0..h).map(|j| dr[j] * cch.r[j] * (1.0 - cch.r[j])).collect::<Vec<f64>>()),
                        ("z", (0..h).map(|j| dz[j] * cch.z[j] * (1.0 - cch.z[j])).collect::<Vec<f64>>()),
                    ] {
                        outer_add(&mut grads[gi(&format!("W_x{gate}"))], &cch.x, &da);
                        outer_add(&mut grads[gi(&format!("W_h{gate}"))], &cch.h_prev, &da);
                        grads[gi(&format!("b_{gate}"))].iter_mut().zip(&da).for_each(|(g, d)| *g += d);
                        mat_vec(g(&format!("W_x{gate}")), &da, cch.x.len()).iter().enumerate().for_each(|(i, d)| dx[i] += d);
                        mat_vec(g(&format!("W_h{gate}")), &da, h).iter().enumerate().for_each(|(j, d)| dh_prev[j] += d);
                    }
                    carry[l][b] = dh_prev;
                    dh_above = dx;
                }
            }
        }
        grads
    }
}

struct Case {
    gru: RefGru,
    params: RefParams,
    tokens: Vec<Vec<usize>>,
    targets: Vec<Vec<usize>>,
    h0: Vec<Vec<Vec<f64>>>,
}

/// The issue's tiny case: V=5, H=3, T=4 (B=2), weights and state at scale 0.5.
fn tiny_case(layers: usize, after: bool, seed: u64) -> Case {
    let gru = RefGru { v: 5, h: 3, layers, after };
    let params = gru.random_params(seed, 0.5);
    let tokens = vec![vec![0, 3, 1, 4], vec![2, 2, 0, 1]];
    let targets = vec![vec![3, 1, 4, 2], vec![2, 0, 1, 3]];
    let h0 = (0..layers).map(|l| (0..2).map(|b| (0..3).map(|j| 0.3 * ((l * 7 + b * 3 + j) as f64).sin()).collect()).collect()).collect();
    Case { gru, params, tokens, targets, h0 }
}

#[test]
fn reference_gradients_match_finite_differences() {
    for (layers, after) in [(1, false), (2, false), (1, true), (2, true)] {
        let c = tiny_case(layers, after, 11);
        let grads = c.gru.backward(&c.params, &c.tokens, &c.targets, &c.h0);
        let eps = 1e-6;
        let mut worst: f64 = 0.0;
        for (pi, values) in c.params.values.iter().enumerate() {
            for e in 0..values.len() {
                let mut plus = c.params.clone();
                plus.values[pi][e] += eps;
                let mut minus = c.params.clone();
                minus.values[pi][e] -= eps;
                let fd = (c.gru.forward(&plus, &c.tokens, &c.targets, &c.h0).2 - c.gru.forward(&minus, &c.tokens, &c.targets, &c.h0).2)
                    / (2.0 * eps);
                let an = grads[pi][e];
                // Relative error. Central differences in f64 carry ~1e-10 of rounding
                // noise (loss ~1, ε = 1e-6), so gradients below 1e-3 are held to an
                // absolute 1e-9 instead: the floor of the denominator.
                let rel = (an - fd).abs() / an.abs().max(fd.abs()).max(1e-3);
                worst = worst.max(rel);
                assert!(
                    rel <= 1e-6,
                    "layers {layers} after {after}: {}[{e}] analytic {an} vs finite difference {fd} (rel {rel:e})",
                    c.params.names[pi]
                );
            }
        }
        assert!(grads.iter().flatten().any(|g| g.abs() > 1e-3), "gradients must not all vanish");
        eprintln!("layers {layers} reset-after {after}: worst relative error {worst:e}");
    }
}

/// Loads the reference parameters into a ScratchGru (f64, CPU).
fn scratch_from(c: &Case, path: ScratchPath) -> ScratchGru {
    let mut vs = VarStore::new(Device::Cpu);
    vs.set_kind(Kind::Double);
    let reset = if c.gru.after { ResetGate::After } else { ResetGate::Before };
    let mut m = ScratchGru::new(vs, c.gru.v as i64, c.gru.h as i64, c.gru.layers as i64, reset, 0.01);
    m.set_path(path);
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

#[test]
fn scratch_gru_matches_the_independent_reference() {
    // f64: logits, state, loss and every gradient within 1e-10 of the reference.
    const TOL: f64 = 1e-10;
    for (layers, after) in [(1, false), (2, false), (1, true), (2, true)] {
        let c = tiny_case(layers, after, 5);
        let (logits, h_final, loss, _, _) = c.gru.forward(&c.params, &c.tokens, &c.targets, &c.h0);
        let grads = c.gru.backward(&c.params, &c.tokens, &c.targets, &c.h0);
        for path in [ScratchPath::Reference, ScratchPath::Fused, ScratchPath::Bptt] {
            let m = scratch_from(&c, path);
            let tokens = Tensor::from_slice(&c.tokens.concat().iter().map(|&x| x as i64).collect::<Vec<_>>()).view([2, 4]);
            let targets = Tensor::from_slice(&c.targets.concat().iter().map(|&x| x as i64).collect::<Vec<_>>()).view([2, 4]);
            let h0 = Tensor::from_slice(&c.h0.concat().concat()).view([layers as i64, 2, 3]);
            let (out, _) = tch::no_grad(|| m.forward(&tokens, &State::from_hidden(h0.shallow_clone())));
            // The training step: autograd on Reference and Fused, hand-written on Bptt.
            let (l, state) = m.train_step(&tokens, &targets, &State::from_hidden(h0));
            let what = format!("layers {layers} after {after} {path:?}");
            assert!(max_diff(&out, &logits.concat().concat()) <= TOL, "{what}: logits");
            assert!(max_diff(state.hidden(), &h_final.concat().concat()) <= TOL, "{what}: state");
            assert!((f64::try_from(&l).unwrap() - loss).abs() <= TOL, "{what}: loss");
            let named: HashMap<String, Tensor> = m.named_parameters().into_iter().collect();
            for (i, name) in c.params.names.iter().enumerate() {
                let d = max_diff(&named[name].grad(), &grads[i]);
                assert!(d <= TOL, "{what}: grad {name} differs by {d:e}");
            }
        }
    }
}

#[test]
fn scratch_reset_after_matches_builtin_gru() {
    // Same weights through the layout map; B=4, T=7, weights ~ N(0, 0.5²).
    // Tolerances on the CPU: f64 1e-10, f32 1e-5 (max abs difference).
    for kind in [Kind::Double, Kind::Float] {
        for layers in [1, 2] {
            for path in [ScratchPath::Reference, ScratchPath::Fused, ScratchPath::Bptt] {
                let r = parity::compare(Device::Cpu, kind, layers, path, 3).unwrap();
                assert_eq!(r.rows.len(), 3 + 4 * layers + 2, "every parameter's gradient is compared");
                assert!(r.passed(), "{path:?}\n{}", r.table());
                assert!(r.tolerance == if kind == Kind::Double { 1e-10 } else { 1e-5 });
            }
        }
    }
}

#[test]
fn reset_variants_really_differ() {
    let before = tiny_case(1, false, 9);
    let mut after = tiny_case(1, true, 9);
    // Same weights; reset-after's extra b_hh is zero, so only where R acts differs.
    for (i, name) in after.params.names.clone().iter().enumerate() {
        after.params.values[i] = match name.as_str() {
            "b_xh_l0" => before.params.get("b_h_l0").to_vec(),
            "b_hh_l0" => vec![0.0; 3],
            n => before.params.get(n).to_vec(),
        };
    }
    let mb = scratch_from(&before, ScratchPath::Fused);
    let ma = scratch_from(&after, ScratchPath::Fused);
    let tokens = Tensor::from_slice(&[0i64, 3, 1, 4, 2, 2, 0, 1]).view([2, 4]);
    let h0 = Tensor::from_slice(&before.h0.concat().concat()).view([1, 2, 3]);
    let (yb, _) = mb.forward(&tokens, &State::from_hidden(h0.shallow_clone()));
    let (ya, _) = ma.forward(&tokens, &State::from_hidden(h0));
    let d = f64::try_from((yb - ya).abs().max()).unwrap();
    assert!(d > 1e-3, "reset-before and reset-after must give different outputs when R != 1 (max diff {d:e})");
}

#[test]
fn builtin_matches_pytorch_golden() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/builtin_gru.json")).unwrap();
    let g: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(g["torch_version"].as_str().unwrap().starts_with("2.11.0"));
    let n = |k: &str| g[k].as_i64().unwrap();
    let floats = |v: &serde_json::Value| v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect::<Vec<f64>>();
    let cfg = ModelConfig {
        kind: ModelKind::Builtin,
        hidden_size: n("H") as usize,
        num_layers: n("L") as usize,
        reset_gate: ResetGate::After,
        init_sigma: None,
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
    assert_eq!(src.len(), m.named_parameters().len(), "PyTorch's state_dict names are grulm's");
    assign(&m.named_parameters(), &src, "golden").unwrap();
    let tokens: Vec<i64> =
        g["tokens"].as_array().unwrap().iter().flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_i64().unwrap())).collect();
    let tokens = Tensor::from_slice(&tokens).view([n("B"), n("T")]);
    let h0 = Tensor::from_slice(&floats(&g["h0"])).view([n("L"), n("B"), n("H")]);
    let (logits, state) = m.forward(&tokens, &State::from_hidden(h0));
    assert_eq!(logits.size(), vec![n("T"), n("B"), n("V")]);
    assert!(max_diff(&logits, &floats(&g["logits"])) <= 1e-12);
    assert!(max_diff(state.hidden(), &floats(&g["final_state"])) <= 1e-12);
}

#[test]
fn parameter_counts_match_d2l() {
    let count = |kind, reset| {
        let cfg = ModelConfig { kind, hidden_size: 256, num_layers: 1, reset_gate: reset, init_sigma: Some(0.01) };
        cfg.init(28, Device::Cpu, Kind::Float).parameter_count()
    };
    assert_eq!(count(ModelKind::Scratch, ResetGate::Before), 226_076);
    assert_eq!(count(ModelKind::Builtin, ResetGate::After), 226_844);
    // reset-after adds b_hh: 256 more.
    assert_eq!(count(ModelKind::Scratch, ResetGate::After), 226_332);
}

#[test]
fn initialisation_follows_d2l_and_pytorch() {
    tch::manual_seed(0);
    let scratch =
        ModelConfig { kind: ModelKind::Scratch, hidden_size: 256, num_layers: 1, reset_gate: ResetGate::Before, init_sigma: Some(0.01) }
            .init(28, Device::Cpu, Kind::Float);
    for (name, p) in scratch.named_parameters() {
        let std = f64::try_from(p.std(true)).unwrap();
        if name.starts_with('b') {
            assert_eq!(std, 0.0, "{name} starts at zero");
        } else {
            assert!((std - 0.01).abs() < 0.001, "{name}: std {std}");
        }
    }
    let builtin = ModelConfig { kind: ModelKind::Builtin, hidden_size: 256, num_layers: 1, reset_gate: ResetGate::After, init_sigma: None }
        .init(28, Device::Cpu, Kind::Float);
    for (name, p) in builtin.named_parameters() {
        let max = f64::try_from(p.abs().max()).unwrap();
        assert!(max <= 0.0625 && max > 0.05, "{name}: U(-1/16, 1/16) expected, max |w| {max}");
    }
}
