//! Text generation: d2l's `predict_ch8` (greedy) plus temperature and top-k
//! sampling.
//!
//! The prefix warms the state up, then each step feeds the last character back.
//! Chosen tokens stay on the device and are read back in chunks, so a long sample
//! neither synchronises per character nor holds its whole text in memory.
use crate::data::Vocab;
use crate::model::RecurrentLm;
use crate::usage;
use anyhow::Result;
use tch::{Device, Kind, Tensor};

/// How the next character is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decode {
    /// argmax, as d2l's `predict_ch8`.
    Greedy,
    /// Draw from softmax(logits / temperature), among the `top_k` most likely if set.
    Sample { temperature: f64, top_k: Option<usize>, seed: u64 },
}

impl Decode {
    /// Greedy unless a temperature or a top-k is given (temperature 1 by default).
    pub fn from_options(temperature: Option<f64>, top_k: Option<usize>, seed: u64) -> Decode {
        match (temperature, top_k) {
            (None, None) => Decode::Greedy,
            (t, k) => Decode::Sample { temperature: t.unwrap_or(1.0), top_k: k, seed },
        }
    }
}

/// Characters read back from the device at a time.
const CHUNK: usize = 256;

/// Checks a prefix against the vocabulary: non-empty, every character known.
pub fn encode_prefix(vocab: &Vocab, prefix: &str) -> Result<Vec<i64>> {
    if prefix.is_empty() {
        return Err(usage!("the prefix is empty; give at least one character to start from"));
    }
    let mut unknown: Vec<char> = prefix.chars().filter(|&c| !vocab.contains(c)).collect();
    if !unknown.is_empty() {
        unknown.sort();
        unknown.dedup();
        let shown: Vec<String> = unknown.iter().map(|c| format!("{c:?}")).collect();
        return Err(usage!(
            "prefix {prefix:?} has characters outside the model's vocabulary: {} (the vocabulary has {} tokens; see vocab.json in the run directory)",
            shown.join(", "),
            vocab.len()
        ));
    }
    Ok(prefix.chars().map(|c| vocab.index(c)).collect())
}

/// Generates `len` tokens after `prefix` (already encoded), calling `sink` with
/// each chunk of new token ids. Runs under no-grad, in eval mode.
pub fn generate(
    model: &mut dyn RecurrentLm,
    prefix: &[i64],
    len: usize,
    decode: Decode,
    device: Device,
    sink: &mut dyn FnMut(&[i64]) -> Result<()>,
) -> Result<()> {
    let result = tch::no_grad(|| -> Result<()> {
        if let Decode::Sample { temperature, top_k, seed } = decode {
            if temperature.is_nan() || temperature <= 0.0 {
                return Err(usage!("temperature {temperature}: expected a number > 0"));
            }
            let v = model.vocab_size() as usize;
            if let Some(k) = top_k {
                if k == 0 || k > v {
                    return Err(usage!("top-k {k}: expected 1 to {v} (the vocabulary size)"));
                }
            }
            tch::manual_seed(seed as i64);
        }
        if len == 0 {
            return Ok(());
        }
        // Warm-up: one pass over the whole prefix; its last logits give the first
        // prediction (the same numbers as d2l's step-by-step warm-up).
        let tokens = Tensor::from_slice(prefix).view([1, -1]).to_device(device);
        let (logits, mut state) = model.forward(&tokens, &model.zero_state(1));
        let mut next = choose(&logits.get(-1), decode); // [1, 1]
        let mut pending: Vec<Tensor> = Vec::with_capacity(CHUNK);
        let mut buf = vec![0i64; CHUNK];
        for i in 0..len {
            pending.push(next.shallow_clone());
            if pending.len() == CHUNK || i + 1 == len {
                let ids = Tensor::cat(&pending, 0).view([-1]).to_device(Device::Cpu);
                let n = pending.len();
                ids.f_copy_data(&mut buf[..n], n)?;
                sink(&buf[..n])?;
                pending.clear();
            }
            if i + 1 < len {
                let (logits, s) = model.forward(&next, &state);
                state = s;
                next = choose(&logits.get(0), decode);
            }
        }
        Ok(())
    });
    result
}

/// logits `[1, V]` -> the chosen token `[1, 1]` (Int64), on the device.
fn choose(logits: &Tensor, decode: Decode) -> Tensor {
    match decode {
        Decode::Greedy => logits.argmax(-1, true),
        Decode::Sample { temperature, top_k, .. } => {
            let scaled = logits.to_kind(Kind::Double) / temperature;
            let scaled = match top_k {
                Some(k) => {
                    let (vals, _) = scaled.topk(k as i64, -1, true, true);
                    let kth = vals.narrow(-1, k as i64 - 1, 1);
                    scaled.masked_fill(&scaled.lt_tensor(&kth), f64::NEG_INFINITY)
                }
                None => scaled,
            };
            scaled.softmax(-1, Kind::Double).multinomial(1, false)
        }
    }
}

/// d2l's `predict_ch8(prefix, num_preds, ...)`: the prefix followed by `len`
/// greedily (or otherwise) chosen characters, as a string.
pub fn predict(model: &mut dyn RecurrentLm, vocab: &Vocab, prefix: &str, len: usize, decode: Decode, device: Device) -> Result<String> {
    let ids = encode_prefix(vocab, prefix)?;
    let mut out = prefix.to_string();
    generate(model, &ids, len, decode, device, &mut |chunk| {
        out.push_str(&vocab.decode(chunk));
        Ok(())
    })?;
    Ok(out)
}
