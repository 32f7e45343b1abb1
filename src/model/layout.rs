//! The one map between the scratch models and PyTorch's names and layout
//! (`nn.RNN`, `nn.GRU` or `nn.LSTM`, then `nn.Linear`), so weights move between
//! the two: one table per cell ([`table`]).
//!
//! PyTorch stacks the gates' rows in its own order and stores weights `[out, in]`,
//! applied as `x Wᵀ`; the scratch model stores `[in, out]`, applied as `X W`. For
//! layer k, with the gates `g_1..g_G` in PyTorch's order:
//!
//! ```text
//! rnn.weight_ih_lk [G·H, in] = [W_x{g_1}_lk ; ... ; W_x{g_G}_lk]ᵀ   (row blocks)
//! rnn.weight_hh_lk [G·H, H]  = [W_h{g_1}_lk ; ... ; W_h{g_G}_lk]ᵀ
//! rnn.bias_ih_lk   [G·H]     = [b_{g_1}_lk , ...]
//! rnn.bias_hh_lk   [G·H]     = [0 or the gate's hidden bias, ...]
//! linear.weight    [V, H]    = W_hqᵀ
//! linear.bias      [V]       = b_q
//!
//! GRU  (reset after): r, z, n  = scratch r, z, h   (n keeps two biases: b_xh, b_hh)
//! LSTM:               i, f, g, o = scratch i, f, c, o
//! RNN:                the one gate h
//! ```
//!
//! PyTorch has two biases per gate where the scratch model has one; only their sum
//! matters, so scratch → PyTorch puts it in `bias_ih` and PyTorch → scratch adds
//! the two. Both biases of a gate receive the same gradient, so for gradients the
//! `bias_hh` rows carry the scratch bias's gradient ([`BiasHh::Gradient`]).
use crate::model::{BuiltinCell, CellKind, GruGates, ModelConfig, ResetGate};
use anyhow::{anyhow, bail, Result};
use std::collections::HashMap;
use tch::Tensor;

/// What the folded rows of `bias_hh` hold when mapping to PyTorch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BiasHh {
    /// Parameters: zeros (the whole bias sits in `bias_ih`).
    Zero,
    /// Gradients: the scratch bias's gradient (∂L/∂b_ih = ∂L/∂b_hh = ∂L/∂b).
    Gradient,
}

/// One PyTorch row block: the scratch gate's name, its bias, and its hidden-side
/// bias where the scratch model keeps it apart (else it is folded into the bias).
pub(crate) struct Block {
    pub gate: &'static str,
    pub bias: &'static str,
    pub hidden_bias: Option<&'static str>,
}

const fn folded(gate: &'static str, bias: &'static str) -> Block {
    Block { gate, bias, hidden_bias: None }
}

/// The row blocks of libtorch's op, in PyTorch's gate order.
fn blocks(op: BuiltinCell) -> &'static [Block] {
    const GRU: &[Block] = &[folded("r", "b_r"), folded("z", "b_z"), Block { gate: "h", bias: "b_xh", hidden_bias: Some("b_hh") }];
    const LSTM: &[Block] = &[folded("i", "b_i"), folded("f", "b_f"), folded("c", "b_c"), folded("o", "b_o")];
    const RNN: &[Block] = &[folded("h", "b_h")];
    match op {
        BuiltinCell::Gru => GRU,
        BuiltinCell::Lstm => LSTM,
        BuiltinCell::RnnTanh => RNN,
    }
}

/// The row blocks of a cell that PyTorch computes (the others have no layout).
fn table(cell: CellKind) -> Result<&'static [Block]> {
    match cell.builtin() {
        Some(op) => Ok(blocks(op)),
        None => bail!("PyTorch has no {} cell, so it has no PyTorch layout", cell.label()),
    }
}

fn get<'a>(m: &'a HashMap<String, Tensor>, name: &str) -> Result<&'a Tensor> {
    m.get(name).ok_or_else(|| anyhow!("tensor {name} is missing"))
}

/// Whether a scratch model's weights have a PyTorch module to load into
/// (`grulm export`); the error says why not.
pub(crate) fn exportable(m: &ModelConfig) -> std::result::Result<(), String> {
    if m.cell.builtin().is_none() {
        return Err(format!(
            "libtorch and PyTorch have no {} cell (model.cell = \"{}\") to load its weights into",
            m.cell.label(),
            m.cell.name()
        ));
    }
    if m.cell.has_gru_options() && m.gru_gates != GruGates::Both {
        return Err("a GRU with only one of its gates (model.gru_gates) has no PyTorch module to load into".into());
    }
    if m.cell.has_gru_options() && m.reset_gate != Some(ResetGate::After) {
        return Err("the scratch GRU with model.reset_gate = \"before\" (d2l's) is not the function PyTorch's nn.GRU computes; train with model.reset_gate = \"after\" to export".into());
    }
    Ok(())
}

/// Checks that a scratch GRU is one PyTorch computes.
fn check_gru(s: &HashMap<String, Tensor>) -> Result<()> {
    if s.contains_key("b_h_l0") {
        bail!("the scratch model is the reset-before GRU, which PyTorch's GRU does not compute; only reset-after maps");
    }
    if !s.contains_key("W_xz_l0") || !s.contains_key("W_xr_l0") {
        bail!("the scratch model is a GRU without one of its gates, which PyTorch's GRU does not compute");
    }
    Ok(())
}

/// Scratch names and layout -> PyTorch's.
pub(crate) fn scratch_to_pytorch(
    s: &HashMap<String, Tensor>,
    cell: CellKind,
    num_layers: usize,
    bias_hh: BiasHh,
) -> Result<Vec<(String, Tensor)>> {
    let blocks = table(cell)?;
    if cell.builtin() == Some(BuiltinCell::Gru) {
        check_gru(s)?;
    }
    let mut out = Vec::new();
    for k in 0..num_layers {
        let g = |n: &str| get(s, &format!("{n}_l{k}"));
        let (mut w_ih, mut w_hh, mut b_ih, mut b_hh) = (vec![], vec![], vec![], vec![]);
        for b in blocks {
            w_ih.push(g(&format!("W_x{}", b.gate))?.tr());
            w_hh.push(g(&format!("W_h{}", b.gate))?.tr());
            let bias = g(b.bias)?;
            b_ih.push(bias.shallow_clone());
            b_hh.push(match (b.hidden_bias, bias_hh) {
                (Some(hb), _) => g(hb)?.shallow_clone(),
                (None, BiasHh::Zero) => bias.zeros_like(),
                (None, BiasHh::Gradient) => bias.shallow_clone(),
            });
        }
        out.push((format!("rnn.weight_ih_l{k}"), Tensor::cat(&w_ih, 0)));
        out.push((format!("rnn.weight_hh_l{k}"), Tensor::cat(&w_hh, 0)));
        out.push((format!("rnn.bias_ih_l{k}"), Tensor::cat(&b_ih, 0)));
        out.push((format!("rnn.bias_hh_l{k}"), Tensor::cat(&b_hh, 0)));
    }
    out.push(("linear.weight".into(), get(s, "W_hq")?.tr()));
    out.push(("linear.bias".into(), get(s, "b_q")?.shallow_clone()));
    Ok(out.into_iter().map(|(n, t)| (n, t.contiguous())).collect())
}

/// PyTorch's names and layout -> scratch.
pub(crate) fn pytorch_to_scratch(p: &HashMap<String, Tensor>, cell: CellKind, num_layers: usize) -> Result<Vec<(String, Tensor)>> {
    let blocks = table(cell)?;
    let n = blocks.len() as i64;
    let mut out = Vec::new();
    for k in 0..num_layers {
        let g = |name: &str| get(p, &format!("rnn.{name}_l{k}")).map(|t| t.chunk(n, 0));
        let (w_ih, w_hh, b_ih, b_hh) = (g("weight_ih")?, g("weight_hh")?, g("bias_ih")?, g("bias_hh")?);
        let mut put = |name: &str, t: Tensor| out.push((format!("{name}_l{k}"), t.contiguous()));
        for (i, b) in blocks.iter().enumerate() {
            put(&format!("W_x{}", b.gate), w_ih[i].tr());
            put(&format!("W_h{}", b.gate), w_hh[i].tr());
            match b.hidden_bias {
                Some(hb) => {
                    put(b.bias, b_ih[i].shallow_clone());
                    put(hb, b_hh[i].shallow_clone());
                }
                None => put(b.bias, &b_ih[i] + &b_hh[i]),
            }
        }
    }
    out.push(("W_hq".into(), get(p, "linear.weight")?.tr().contiguous()));
    out.push(("b_q".into(), get(p, "linear.bias")?.shallow_clone()));
    Ok(out)
}
