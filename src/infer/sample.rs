//! Text generation: d2l's `predict_ch8` (greedy) plus temperature, top-k and
//! top-p (nucleus) sampling, for one sample or N at once (a batch of N rows).
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
    /// Draw from softmax(logits / temperature), among the `top_k` most likely if
    /// set, and among the fewest most likely whose probabilities sum to `top_p`.
    Sample { temperature: f64, top_k: Option<usize>, top_p: Option<f64>, seed: u64 },
}

impl Decode {
    /// Greedy unless a temperature, top-k or top-p is given (temperature 1 by default).
    pub fn from_options(temperature: Option<f64>, top_k: Option<usize>, top_p: Option<f64>, seed: u64) -> Decode {
        match (temperature, top_k, top_p) {
            (None, None, None) => Decode::Greedy,
            (t, k, p) => Decode::Sample { temperature: t.unwrap_or(1.0), top_k: k, top_p: p, seed },
        }
    }

    /// Its settings against a vocabulary of `v` tokens.
    pub fn check(&self, v: usize) -> Result<()> {
        if let Decode::Sample { temperature, top_k, top_p, .. } = *self {
            if temperature.is_nan() || temperature <= 0.0 {
                return Err(usage!("temperature {temperature}: expected a number > 0"));
            }
            if let Some(k) = top_k {
                if k == 0 || k > v {
                    return Err(usage!("top-k {k}: expected 1 to {v} (the vocabulary size)"));
                }
            }
            if let Some(p) = top_p {
                if !(p > 0.0 && p <= 1.0) {
                    return Err(usage!("top-p {p}: expected a number in (0, 1]"));
                }
            }
        }
        Ok(())
    }
}

/// Characters read back from the device at a time.
const CHUNK: usize = 256;

/// Checks a prefix against the vocabulary: non-empty, every character known.
pub(crate) fn encode_prefix(vocab: &Vocab, prefix: &str) -> Result<Vec<i64>> {
    if prefix.is_empty() {
        return Err(usage!("the prefix is empty; give at least one character to start from"));
    }
    let unknown = vocab.unknown(prefix.chars());
    if !unknown.is_empty() {
        return Err(usage!(
            "prefix {prefix:?} has characters outside the model's vocabulary: {unknown} (the vocabulary has {} tokens; see vocab.json in the run directory)",
            vocab.len()
        ));
    }
    Ok(prefix.chars().map(|c| vocab.index(c)).collect())
}

/// Generates up to `len` tokens after `prefix` (already encoded) in `rows`
/// independent samples, calling `sink(chunk, width)` with each chunk of new token
/// ids (`rows x width`, row-major); `sink` returns false to stop early. Runs under
/// no-grad, in eval mode.
pub(crate) fn generate(
    model: &mut dyn RecurrentLm,
    prefix: &[i64],
    len: usize,
    rows: usize,
    decode: Decode,
    device: Device,
    sink: &mut dyn FnMut(&[i64], usize) -> Result<bool>,
) -> Result<()> {
    tch::no_grad(|| -> Result<()> {
        decode.check(model.vocab_size() as usize)?;
        if let Decode::Sample { seed, .. } = decode {
            tch::manual_seed(seed as i64);
        }
        if len == 0 {
            return Ok(());
        }
        // Warm-up: one pass over the whole prefix; its last logits give the first
        // prediction (the same numbers as d2l's step-by-step warm-up).
        let tokens = Tensor::from_slice(prefix).view([1, -1]).repeat([rows as i64, 1]).to_device(device);
        let (logits, mut state) = model.forward(&tokens, &model.zero_state(rows as i64));
        let mut next = choose(&logits.get(-1), decode); // [rows, 1]
        let mut pending: Vec<Tensor> = Vec::with_capacity(CHUNK);
        let mut buf = vec![0i64; CHUNK * rows];
        for i in 0..len {
            pending.push(next.shallow_clone());
            if pending.len() == CHUNK || i + 1 == len {
                let ids = Tensor::cat(&pending, 1).to_device(Device::Cpu); // [rows, n]
                let n = rows * pending.len();
                ids.f_copy_data(&mut buf[..n], n)?;
                let width = pending.len();
                pending.clear();
                if !sink(&buf[..n], width)? {
                    break;
                }
            }
            if i + 1 < len {
                let (logits, s) = model.forward(&next, &state);
                state = s;
                next = choose(&logits.get(0), decode);
            }
        }
        Ok(())
    })
}

/// logits `[rows, V]` -> the chosen tokens `[rows, 1]` (Int64), on the device.
fn choose(logits: &Tensor, decode: Decode) -> Tensor {
    match decode {
        Decode::Greedy => logits.argmax(-1, true),
        Decode::Sample { temperature, top_k, top_p, .. } => {
            let mut scaled = logits.to_kind(Kind::Double) / temperature;
            if let Some(k) = top_k {
                let (vals, _) = scaled.topk(k as i64, -1, true, true);
                let kth = vals.narrow(-1, k as i64 - 1, 1);
                scaled = scaled.masked_fill(&scaled.lt_tensor(&kth), f64::NEG_INFINITY);
            }
            if let Some(p) = top_p {
                // Nucleus: drop a token when the more likely ones already reach p
                // (the most likely one always stays).
                let probs = scaled.softmax(-1, Kind::Double);
                let (sorted, order) = probs.sort(-1, true);
                let before = sorted.cumsum(-1, Kind::Double) - &sorted;
                let drop_sorted = before.ge(p);
                let drop = drop_sorted.zeros_like().scatter(-1, &order, &drop_sorted); // back to vocabulary order
                scaled = scaled.masked_fill(&drop, f64::NEG_INFINITY);
            }
            scaled.softmax(-1, Kind::Double).multinomial(1, false)
        }
    }
}

/// d2l's `predict_ch8(prefix, num_preds, ...)`: the prefix followed by `len`
/// greedily (or otherwise) chosen characters, as a string.
pub fn predict(model: &mut dyn RecurrentLm, vocab: &Vocab, prefix: &str, len: usize, decode: Decode, device: Device) -> Result<String> {
    let ids = encode_prefix(vocab, prefix)?;
    let mut out = prefix.to_string();
    generate(model, &ids, len, 1, decode, device, &mut |chunk, _| {
        out.push_str(&vocab.decode(chunk));
        Ok(true)
    })?;
    Ok(out)
}

/// Where `stop` first ends in `text`, looking only at matches that end at or
/// after byte `from` (text before it was searched already).
pub(crate) fn stop_end(text: &str, stop: &str, from: usize) -> Option<usize> {
    let mut start = from.saturating_sub(stop.len().saturating_sub(1));
    while !text.is_char_boundary(start) {
        start -= 1;
    }
    text[start..].find(stop).map(|i| start + i + stop.len())
}

/// How `grulm sample` continues a prefix.
pub(crate) struct Sampling {
    /// Characters to generate.
    pub len: usize,
    /// Samples, made as one batch.
    pub rows: usize,
    /// Where a sample ends early, if it appears.
    pub stop: Option<String>,
    pub decode: Decode,
}

/// Prints `how.rows` samples after `prefix`, each ending at `how.stop` if it
/// appears. One sample is streamed as it is made; several are batched and printed
/// when done, separated by a blank line.
pub(crate) fn write(
    model: &mut dyn RecurrentLm,
    vocab: &Vocab,
    prefix: &str,
    ids: &[i64],
    how: &Sampling,
    dev: Device,
    out: &mut impl std::io::Write,
) -> Result<()> {
    let rows = how.rows;
    let stop = how.stop.as_deref();
    // Per row: the text generated so far (kept whole only when batched) and done.
    let mut texts = vec![String::new(); rows];
    let mut done = vec![false; rows];
    if rows == 1 {
        write!(out, "{prefix}")?;
    }
    generate(model, ids, how.len, rows, how.decode, dev, &mut |chunk, width| {
        for r in 0..rows {
            if done[r] {
                continue;
            }
            let new = vocab.decode(&chunk[r * width..(r + 1) * width]);
            let from = texts[r].len();
            texts[r].push_str(&new);
            let end = stop.and_then(|s| stop_end(&texts[r], s, from));
            if let Some(end) = end {
                texts[r].truncate(end);
                done[r] = true;
            }
            if rows == 1 {
                // Streamed: only the new part, and the text stays bounded.
                out.write_all(&texts[0].as_bytes()[from..])?;
                out.flush()?;
                let keep = texts[0].len().saturating_sub(stop.map_or(0, str::len));
                let keep = (keep..=texts[0].len()).find(|&i| texts[0].is_char_boundary(i)).unwrap_or(texts[0].len());
                texts[0].drain(..keep);
            }
        }
        Ok(done.iter().any(|d| !d))
    })?;
    if rows == 1 {
        writeln!(out)?;
    } else {
        for (i, t) in texts.iter().enumerate() {
            if i > 0 {
                writeln!(out)?;
            }
            writeln!(out, "{prefix}{t}")?;
        }
    }
    Ok(())
}
