//! The one map between the scratch GRU (reset-after variant) and PyTorch's
//! `nn.GRU` + `nn.Linear` names and layout, so weights move between the two.
//!
//! For layer k (H hidden units; PyTorch stacks gate rows in the order r, z, n and
//! stores weights `[out, in]`, applied as `x Wᵀ`; the scratch model stores `[in, out]`,
//! applied as `X W`):
//!
//! ```text
//! rnn.weight_ih_lk [3H, in] = [W_xr_lk ; W_xz_lk ; W_xh_lk]ᵀ  (row blocks r, z, n)
//! rnn.weight_hh_lk [3H, H]  = [W_hr_lk ; W_hz_lk ; W_hh_lk]ᵀ
//! rnn.bias_ih_lk   [3H]     = [b_r_lk , b_z_lk , b_xh_lk]
//! rnn.bias_hh_lk   [3H]     = [0      , 0      , b_hh_lk]
//! linear.weight    [V, H]   = W_hqᵀ
//! linear.bias      [V]      = b_q
//! ```
//!
//! PyTorch has two biases per gate where the scratch model has one for r and z;
//! only their sum matters, so scratch → PyTorch puts it in `bias_ih` and PyTorch →
//! scratch adds the two. Both biases of a gate receive the same gradient, so for
//! gradients the `bias_hh` r and z rows carry the scratch bias's gradient
//! ([`BiasHh::Gradient`]).
use anyhow::{anyhow, bail, Result};
use std::collections::HashMap;
use tch::Tensor;

/// What the r and z rows of `bias_hh` hold when mapping to PyTorch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BiasHh {
    /// Parameters: zeros (the whole bias sits in `bias_ih`).
    Zero,
    /// Gradients: the scratch bias's gradient (∂L/∂b_ir = ∂L/∂b_hr = ∂L/∂b_r).
    Gradient,
}

fn get<'a>(m: &'a HashMap<String, Tensor>, name: &str) -> Result<&'a Tensor> {
    m.get(name).ok_or_else(|| anyhow!("tensor {name} is missing"))
}

/// Scratch (reset-after) names and layout -> PyTorch's.
pub fn scratch_to_pytorch(s: &HashMap<String, Tensor>, num_layers: usize, bias_hh: BiasHh) -> Result<Vec<(String, Tensor)>> {
    if s.contains_key("b_h_l0") {
        bail!("the scratch model is the reset-before variant, which PyTorch's GRU does not compute; only reset-after maps");
    }
    let mut out = Vec::new();
    for k in 0..num_layers {
        let g = |n: &str| get(s, &format!("{n}_l{k}"));
        let w_ih = Tensor::cat(&[g("W_xr")?.tr(), g("W_xz")?.tr(), g("W_xh")?.tr()], 0);
        let w_hh = Tensor::cat(&[g("W_hr")?.tr(), g("W_hz")?.tr(), g("W_hh")?.tr()], 0);
        let b_ih = Tensor::cat(&[g("b_r")?, g("b_z")?, g("b_xh")?], 0);
        let (b_hr, b_hz) = match bias_hh {
            BiasHh::Zero => (g("b_r")?.zeros_like(), g("b_z")?.zeros_like()),
            BiasHh::Gradient => (g("b_r")?.shallow_clone(), g("b_z")?.shallow_clone()),
        };
        let b_hh = Tensor::cat(&[&b_hr, &b_hz, g("b_hh")?], 0);
        out.push((format!("rnn.weight_ih_l{k}"), w_ih));
        out.push((format!("rnn.weight_hh_l{k}"), w_hh));
        out.push((format!("rnn.bias_ih_l{k}"), b_ih));
        out.push((format!("rnn.bias_hh_l{k}"), b_hh));
    }
    out.push(("linear.weight".into(), get(s, "W_hq")?.tr()));
    out.push(("linear.bias".into(), get(s, "b_q")?.shallow_clone()));
    Ok(out.into_iter().map(|(n, t)| (n, t.contiguous())).collect())
}

/// PyTorch's names and layout -> scratch (reset-after).
pub fn pytorch_to_scratch(p: &HashMap<String, Tensor>, num_layers: usize) -> Result<Vec<(String, Tensor)>> {
    let mut out = Vec::new();
    for k in 0..num_layers {
        let g = |n: &str| get(p, &format!("rnn.{n}_l{k}"));
        let rows = |t: &Tensor| -> Vec<Tensor> { t.chunk(3, 0) };
        let (w_ih, w_hh) = (rows(g("weight_ih")?), rows(g("weight_hh")?));
        let (b_ih, b_hh) = (rows(g("bias_ih")?), rows(g("bias_hh")?));
        let mut put = |n: &str, t: Tensor| out.push((format!("{n}_l{k}"), t.contiguous()));
        put("W_xr", w_ih[0].tr());
        put("W_xz", w_ih[1].tr());
        put("W_xh", w_ih[2].tr());
        put("W_hr", w_hh[0].tr());
        put("W_hz", w_hh[1].tr());
        put("W_hh", w_hh[2].tr());
        put("b_r", &b_ih[0] + &b_hh[0]);
        put("b_z", &b_ih[1] + &b_hh[1]);
        put("b_xh", b_ih[2].shallow_clone());
        put("b_hh", b_hh[2].shallow_clone());
    }
    out.push(("W_hq".into(), get(p, "linear.weight")?.tr().contiguous()));
    out.push(("b_q".into(), get(p, "linear.bias")?.shallow_clone()));
    Ok(out)
}
