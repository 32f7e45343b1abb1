//! The character vocabulary (d2l's `Vocab`) and token ids in one, two or four bytes.
use super::corpus::{preprocessed, Preprocess};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// The unknown token, always at index 0 (d2l's `Vocab`).
pub(crate) const UNK: &str = "<unk>";

/// Character vocabulary, as d2l's `Vocab`: `<unk>` at index 0, then the reserved
/// tokens, then the characters by descending frequency; ties keep the order of
/// first occurrence (Python's stable sort over a `Counter`). Characters seen
/// fewer than `min_freq` times are left out and map to `<unk>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vocab {
    idx_to_token: Vec<String>,
    char_to_idx: HashMap<char, i64>,
    /// `char_to_idx` for ASCII, 0 (`<unk>`) where absent: encoding a big text
    /// is one table lookup per character.
    ascii: [i64; 128],
}

#[derive(Serialize, Deserialize)]
struct VocabJson {
    idx_to_token: Vec<String>,
}

/// Character counts in order of first occurrence, from one pass over a text (a
/// table for ASCII, a map for the rest): what [`Vocab`] is built from.
pub(crate) struct CharCounts {
    /// Distinct characters, in order of first occurrence, and their counts.
    order: Vec<(char, u64)>,
    /// Characters counted.
    pub total: usize,
}

impl CharCounts {
    pub fn of(chars: impl Iterator<Item = char>) -> CharCounts {
        let mut ascii = [u32::MAX; 128]; // position in `order`
        let mut other: HashMap<char, u32> = HashMap::new();
        let mut order: Vec<(char, u64)> = Vec::new();
        let mut total = 0;
        for c in chars {
            total += 1;
            let slot = if (c as u32) < 128 { &mut ascii[c as usize] } else { other.entry(c).or_insert(u32::MAX) };
            if *slot == u32::MAX {
                *slot = order.len() as u32;
                order.push((c, 0));
            }
            order[*slot as usize].1 += 1;
        }
        CharCounts { order, total }
    }
}

impl Vocab {
    pub fn build(tokens: &[char], min_freq: usize, reserved: &[String]) -> Vocab {
        Vocab::from_counts(&CharCounts::of(tokens.iter().copied()), min_freq, reserved)
    }

    pub(crate) fn from_counts(counts: &CharCounts, min_freq: usize, reserved: &[String]) -> Vocab {
        let mut freqs: Vec<(char, u64, usize)> = counts.order.iter().enumerate().map(|(i, &(c, n))| (c, n, i)).collect();
        freqs.sort_by(|a, b| b.1.cmp(&a.1).then(a.2.cmp(&b.2)));
        let mut idx_to_token = vec![UNK.to_string()];
        for r in reserved {
            if !idx_to_token.contains(r) {
                idx_to_token.push(r.clone());
            }
        }
        for (c, n, _) in freqs {
            if (n as usize) < min_freq {
                break;
            }
            let s = c.to_string();
            if !idx_to_token.contains(&s) {
                idx_to_token.push(s);
            }
        }
        Vocab::from_tokens(idx_to_token).expect("built vocabulary is well formed")
    }

    fn from_tokens(idx_to_token: Vec<String>) -> Result<Vocab> {
        if idx_to_token.first().map(String::as_str) != Some(UNK) {
            bail!("the first token must be {UNK}");
        }
        let mut char_to_idx = HashMap::new();
        let mut ascii = [0; 128];
        let mut seen = std::collections::HashSet::new();
        for (i, t) in idx_to_token.iter().enumerate() {
            if !seen.insert(t.as_str()) {
                bail!("token {t:?} appears twice");
            }
            let mut cs = t.chars();
            if let (Some(c), None) = (cs.next(), cs.next()) {
                char_to_idx.insert(c, i as i64);
                if (c as u32) < 128 {
                    ascii[c as usize] = i as i64;
                }
            }
        }
        Ok(Vocab { idx_to_token, char_to_idx, ascii })
    }

    pub fn len(&self) -> usize {
        self.idx_to_token.len()
    }

    pub fn is_empty(&self) -> bool {
        self.idx_to_token.is_empty()
    }

    pub fn tokens(&self) -> &[String] {
        &self.idx_to_token
    }

    /// The index of a character, `<unk>` (0) if it is not in the vocabulary.
    pub fn index(&self, c: char) -> i64 {
        match self.ascii.get(c as usize) {
            Some(&i) => i,
            None => self.char_to_idx.get(&c).copied().unwrap_or(0),
        }
    }

    pub fn contains(&self, c: char) -> bool {
        self.char_to_idx.contains_key(&c)
    }

    /// The characters of `chars` outside the vocabulary, sorted, each once,
    /// shown as `'q', 'u'` (empty when there are none).
    pub fn unknown(&self, chars: impl Iterator<Item = char>) -> String {
        let mut unknown: Vec<char> = chars.filter(|&c| !self.contains(c)).collect();
        unknown.sort();
        unknown.dedup();
        unknown.iter().map(|c| format!("{c:?}")).collect::<Vec<_>>().join(", ")
    }

    /// A whole text in this vocabulary's compact ids, preprocessed as `mode`,
    /// and how many of its characters the vocabulary lacks (they map to `<unk>`).
    pub(crate) fn encode_text(&self, text: &str, mode: Preprocess) -> (Ids, usize) {
        let mut ids = Ids::with_capacity(self.len(), 0);
        let mut unknown = 0;
        for c in preprocessed(text, mode) {
            unknown += usize::from(!self.contains(c));
            ids.push(self.index(c));
        }
        (ids, unknown)
    }

    pub fn encode(&self, chars: &[char]) -> Vec<i64> {
        chars.iter().map(|&c| self.index(c)).collect()
    }

    pub fn decode(&self, ids: &[i64]) -> String {
        ids.iter().map(|&i| self.idx_to_token.get(i as usize).map(String::as_str).unwrap_or(UNK)).collect()
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&VocabJson { idx_to_token: self.idx_to_token.clone() }).expect("vocab serializes") + "\n"
    }

    pub fn from_json(text: &str) -> Result<Vocab> {
        let v: VocabJson = serde_json::from_str(text).context("not a grulm vocabulary (expected {\"idx_to_token\": [...]})")?;
        Vocab::from_tokens(v.idx_to_token)
    }

    pub fn load(path: &Path) -> Result<Vocab> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        Vocab::from_json(&text).with_context(|| format!("{}", path.display()))
    }
}

/// Token ids, stored compactly: one byte each for a vocabulary of up to 256
/// tokens (every char-level corpus we know of), two up to 32,768, else four.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ids {
    U8(Vec<u8>),
    I16(Vec<i16>),
    I32(Vec<i32>),
}

/// `$body` with `$v` bound to the vector inside `$ids`, whatever its width.
macro_rules! each_width {
    ($ids:expr, $v:ident => $body:expr) => {
        match $ids {
            Ids::U8($v) => $body,
            Ids::I16($v) => $body,
            Ids::I32($v) => $body,
        }
    };
}

impl Ids {
    /// Empty ids for a vocabulary of `vocab_len` tokens, room for `n`.
    pub(crate) fn with_capacity(vocab_len: usize, n: usize) -> Ids {
        match Ids::width_for(vocab_len) {
            1 => Ids::U8(Vec::with_capacity(n)),
            2 => Ids::I16(Vec::with_capacity(n)),
            _ => Ids::I32(Vec::with_capacity(n)),
        }
    }

    /// Bytes per id for a vocabulary of `vocab_len` tokens.
    pub fn width_for(vocab_len: usize) -> usize {
        match vocab_len {
            0..=256 => 1,
            257..=32_768 => 2,
            _ => 4,
        }
    }

    pub fn from_i64(vocab_len: usize, ids: &[i64]) -> Ids {
        let mut out = Ids::with_capacity(vocab_len, ids.len());
        ids.iter().for_each(|&i| out.push(i));
        out
    }

    /// Appends `id` (below the vocabulary size the ids were made for).
    pub fn push(&mut self, id: i64) {
        match self {
            Ids::U8(v) => v.push(id as u8),
            Ids::I16(v) => v.push(id as i16),
            Ids::I32(v) => v.push(id as i32),
        }
    }

    pub fn len(&self) -> usize {
        each_width!(self, v => v.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, i: usize) -> i64 {
        each_width!(self, v => v[i] as i64)
    }

    /// Ids `range`, widened (for a row, a prefix, a test).
    pub fn to_vec(&self, range: std::ops::Range<usize>) -> Vec<i64> {
        each_width!(self, v => v[range].iter().map(|&x| x as i64).collect())
    }

    /// The ids from `at` on, removed from `self`.
    pub(crate) fn split_off(&mut self, at: usize) -> Ids {
        match self {
            Ids::U8(v) => Ids::U8(v.split_off(at)),
            Ids::I16(v) => Ids::I16(v.split_off(at)),
            Ids::I32(v) => Ids::I32(v.split_off(at)),
        }
    }

    /// Every id `i` replaced by `map[i]`, stored for a vocabulary of `vocab_len`.
    pub(crate) fn remap(&self, map: &[i64], vocab_len: usize) -> Ids {
        let mut out = Ids::with_capacity(vocab_len, self.len());
        each_width!(self, v => v.iter().for_each(|&i| out.push(map[i as usize])));
        out
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        each_width!(self, v => std::mem::size_of_val(v.as_slice()))
    }
}
