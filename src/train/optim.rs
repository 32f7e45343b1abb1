//! Gradient clipping and the two optimisers, written over plain tensors.
//!
//! Why not tch's `COptimizer`: it wraps libtorch's C++ optimisers, whose state
//! (Adam's moments) cannot be read back, so `--resume` could not restore it.
//! Here the state is a list of named tensors that goes into the checkpoint.
//!
//! Nothing here reads a value back to the host: the clipping coefficient and the
//! gradient norm stay on the device, so a training step never synchronises.
use crate::config::OptimizerKind;
use crate::run::OptimizerState;
use anyhow::{bail, Result};
use tch::{Kind, Tensor};

/// d2l's `grad_clipping`: with ‖g‖ the L2 norm over all gradients together,
/// g <- min(1, θ/‖g‖) g. Returns ‖g‖ before clipping, a 0-d tensor on the device.
pub fn clip_grad_norm(params: &[Tensor], theta: f64) -> Tensor {
    tch::no_grad(|| {
        let grads: Vec<Tensor> = params.iter().map(Tensor::grad).filter(Tensor::defined).collect();
        if grads.is_empty() {
            return Tensor::zeros([], (Kind::Float, params.first().map(Tensor::device).unwrap_or(tch::Device::Cpu)));
        }
        // ‖g‖² per parameter as one dot product each (no squared copy).
        let squares: Vec<Tensor> = grads.iter().map(|g| g.view([-1]).dot(&g.view([-1]))).collect();
        let norm = Tensor::stack(&squares, 0).sum(squares[0].kind()).sqrt();
        // θ/‖g‖ is +inf for a zero gradient, and clamps to 1: nothing changes.
        let coef = (norm.reciprocal() * theta).clamp_max(1.0);
        for mut g in grads {
            let _ = g.g_mul_(&coef.to_kind(g.kind()));
        }
        norm
    })
}

/// SGD (`p <- p - lr g`, d2l's `sgd` and `torch.optim.SGD`) or Adam
/// (Kingma & Ba, with bias correction, as `torch.optim.Adam`'s defaults).
pub(crate) struct Optimizer {
    kind: OptimizerKind,
    lr: f64,
    names: Vec<String>,
    params: Vec<Tensor>,
    /// Adam: first and second moments, one pair per parameter.
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    /// Adam: updates done so far (for the bias correction).
    steps: u64,
    /// SGD: −lr as a 0-d tensor of each parameter's kind and device.
    neg_lr: Vec<Tensor>,
}

pub(crate) const ADAM_BETA1: f64 = 0.9;
pub(crate) const ADAM_BETA2: f64 = 0.999;
pub(crate) const ADAM_EPS: f64 = 1e-8;

impl Optimizer {
    pub fn new(kind: OptimizerKind, lr: f64, named: Vec<(String, Tensor)>) -> Optimizer {
        let (names, params): (Vec<String>, Vec<Tensor>) = named.into_iter().unzip();
        let zeros = || params.iter().map(|p| p.zeros_like().detach()).collect();
        let (m, v) = match kind {
            OptimizerKind::Sgd => (vec![], vec![]),
            OptimizerKind::Adam => (zeros(), zeros()),
        };
        let neg_lr = params.iter().map(|p| Tensor::full([], -lr, (p.kind(), p.device()))).collect();
        Optimizer { kind, lr, names, params, m, v, steps: 0, neg_lr }
    }

    pub fn lr(&self) -> f64 {
        self.lr
    }

    /// Sets the learning rate, in place: SGD's −lr tensors keep their addresses,
    /// so a captured CUDA graph reads the new value.
    pub(crate) fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
        tch::no_grad(|| {
            for t in &self.neg_lr {
                let _ = t.shallow_clone().fill_(-lr);
            }
        });
    }

    /// Whether a step can be captured in a CUDA graph: SGD's update uses only
    /// device tensors; Adam's bias correction is computed on the host per step.
    pub(crate) fn graph_safe(&self) -> bool {
        self.kind == OptimizerKind::Sgd
    }

    /// d2l's `grad_clipping` over this optimiser's parameters (see [`clip_grad_norm`]).
    pub fn clip_grad_norm(&self, theta: f64) -> Tensor {
        clip_grad_norm(&self.params, theta)
    }

    pub(crate) fn zero_grad(&mut self) {
        for p in self.params.iter_mut() {
            p.zero_grad();
        }
    }

    /// One update from the current gradients.
    pub fn step(&mut self) {
        tch::no_grad(|| match self.kind {
            OptimizerKind::Sgd => {
                for (p, neg_lr) in self.params.iter_mut().zip(&self.neg_lr) {
                    let g = p.grad();
                    if g.defined() {
                        let _ = p.addcmul_(&g, neg_lr); // p += g · (−lr), no temporary
                    }
                }
            }
            OptimizerKind::Adam => {
                self.steps += 1;
                let t = self.steps as i32;
                let step_size = self.lr / (1.0 - ADAM_BETA1.powi(t));
                let bias2_sqrt = (1.0 - ADAM_BETA2.powi(t)).sqrt();
                for (i, p) in self.params.iter_mut().enumerate() {
                    let g = p.grad();
                    if !g.defined() {
                        continue;
                    }
                    let _ = self.m[i].lerp_(&g, 1.0 - ADAM_BETA1);
                    let _ = self.v[i].lerp_(&(&g * &g), 1.0 - ADAM_BETA2);
                    let denom = self.v[i].sqrt() / bias2_sqrt + ADAM_EPS;
                    let _ = p.g_sub_(&(&self.m[i] / denom * step_size));
                }
            }
        })
    }

    /// The state to checkpoint: Adam's moments as `adam.m.<param>`, `adam.v.<param>`
    /// (nothing for SGD), and the step count.
    pub fn state(&self) -> OptimizerState {
        let mut out = Vec::new();
        for (i, name) in self.names.iter().enumerate() {
            if let (Some(m), Some(v)) = (self.m.get(i), self.v.get(i)) {
                out.push((format!("adam.m.{name}"), m.shallow_clone()));
                out.push((format!("adam.v.{name}"), v.shallow_clone()));
            }
        }
        OptimizerState { tensors: out, steps: self.steps }
    }

    /// Restores what [`Optimizer::state`] gave.
    pub(crate) fn load_state(&mut self, state: &OptimizerState) -> Result<()> {
        let tensors = &state.tensors;
        self.steps = state.steps;
        if self.kind == OptimizerKind::Sgd {
            return Ok(());
        }
        for (i, (name, p)) in self.names.iter().zip(&self.params).enumerate() {
            for (prefix, dst) in [("adam.m.", &mut self.m[i]), ("adam.v.", &mut self.v[i])] {
                let key = format!("{prefix}{name}");
                let Some((_, src)) = tensors.iter().find(|(n, _)| *n == key) else {
                    bail!("optimizer state {key} is missing (was the run trained with another optimizer?)");
                };
                if src.size() != p.size() {
                    bail!("optimizer state {key} has shape {:?}, the parameter has {:?}", src.size(), p.size());
                }
                tch::no_grad(|| dst.copy_(src));
            }
        }
        Ok(())
    }
}
