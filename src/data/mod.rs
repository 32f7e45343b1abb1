//! The data pipeline, d2l 0.17 semantics by default: corpus (downloaded and
//! SHA-1 checked, or a user's file), preprocessing, vocabulary, and the two
//! minibatch partitions of `seq_data_iter_sequential` / `seq_data_iter_random`.
//!
//! Shapes: B batch size, T time steps (`num_steps`). A [`Minibatches`] says, for
//! one epoch, where its `n` minibatches of inputs `X [B, T]` and targets `Y [B, T]`
//! start in the corpus (`Y` is `X` shifted by one token); the trainer cuts them
//! out of the corpus, one minibatch per step, so no epoch is ever copied whole.
//!
//! Big corpora: the text is read once into memory and streamed through the
//! preprocessing twice (count, then encode), never held as `char`s; token ids are
//! stored in one, two or four bytes ([`Ids`]). A 100 MB text with a small
//! vocabulary costs 100 MB of text while loading and 100 MB of ids.
use crate::platform::fsutil;
use crate::usage;
use anyhow::{bail, Context, Result};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use sha1::{Digest, Sha1};
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// How text becomes characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Preprocess {
    /// d2l's: letters only, lowercased, other runs become one space (28 tokens).
    D2l,
    /// Every character kept: case, punctuation, newlines (char-rnn style).
    Raw,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DataConfig {
    /// `timemachine` (downloaded) or a path to a UTF-8 text file.
    pub corpus: String,
    pub preprocess: Preprocess,
    /// Keep the first N tokens after building the vocabulary (0: all). d2l: 10,000.
    pub max_tokens: usize,
    pub min_freq: usize,
    pub reserved_tokens: Vec<String>,
    /// The last fraction of the (truncated) corpus, held out for validation.
    pub val_fraction: f64,
    pub partition: SeqPartition,
    pub batch_size: usize,
    pub num_steps: usize,
}

/// d2l's address for H. G. Wells' *The Time Machine* and its SHA-1.
pub(crate) const TIMEMACHINE_URL: &str = "http://d2l-data.s3-accelerate.amazonaws.com/timemachine.txt";
pub const TIMEMACHINE_SHA1: &str = "090b5e7e70c295757f55df93cb0a180b9691891a";
pub(crate) const TIMEMACHINE_NAME: &str = "timemachine";
/// The unknown token, always at index 0 (d2l's `Vocab`).
pub(crate) const UNK: &str = "<unk>";
/// Downloads larger than this are refused (the Time Machine is 179 kB).
const MAX_DOWNLOAD_BYTES: u64 = 64 << 20;

/// `$GRULM_DATA_DIR`, or `data/` under the current directory.
pub(crate) fn data_dir() -> PathBuf {
    std::env::var_os("GRULM_DATA_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("data"))
}

/// Resolves a corpus name to a file: `timemachine` is `timemachine.txt` in the
/// data directory, downloaded (and SHA-1 checked) when missing; anything else is
/// a path to a UTF-8 text file.
pub(crate) fn resolve_corpus(name: &str) -> Result<PathBuf> {
    if name != TIMEMACHINE_NAME {
        return Ok(PathBuf::from(name));
    }
    let dir = data_dir();
    let path = dir.join("timemachine.txt");
    if path.is_file() {
        // A copy put there by hand (or truncated) must still be d2l's text.
        let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let got = hex_sha1(&bytes);
        if got != TIMEMACHINE_SHA1 {
            bail!("{} has SHA-1 {got}, expected {TIMEMACHINE_SHA1}; remove it to download it again", path.display());
        }
        return Ok(path);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create data directory {}", dir.display()))?;
    let url = std::env::var("GRULM_TIMEMACHINE_URL").unwrap_or_else(|_| TIMEMACHINE_URL.to_string());
    eprintln!("downloading {url} to {}", path.display());
    download_verified(&url, TIMEMACHINE_SHA1, &path).with_context(|| {
        format!(
            "the Time Machine corpus is not in {dir} and could not be downloaded; \
             put timemachine.txt (SHA-1 {TIMEMACHINE_SHA1}) in {dir} by hand, \
             set GRULM_DATA_DIR to a directory holding it, or set data.corpus to a text file",
            dir = dir.display()
        )
    })?;
    Ok(path)
}

/// Downloads `url` to `dest`, checking the SHA-1 of the bytes before anything is
/// written. The file appears atomically (temporary file, fsync, rename): a
/// mismatch or a broken transfer leaves no file behind.
pub fn download_verified(url: &str, sha1_hex: &str, dest: &Path) -> Result<()> {
    let resp = ureq::get(url).timeout(std::time::Duration::from_secs(120)).call().map_err(|e| match e {
        ureq::Error::Status(code, r) => anyhow::anyhow!("download of {url} failed: HTTP {code} {}", r.status_text()),
        ureq::Error::Transport(t) => {
            anyhow::anyhow!("download of {url} failed: {}{}", t.kind(), t.message().map(|m| format!(": {m}")).unwrap_or_default())
        }
    })?;
    let mut bytes = Vec::new();
    resp.into_reader().take(MAX_DOWNLOAD_BYTES + 1).read_to_end(&mut bytes).with_context(|| format!("download of {url} broke off"))?;
    if bytes.len() as u64 > MAX_DOWNLOAD_BYTES {
        bail!("download of {url} is larger than {MAX_DOWNLOAD_BYTES} bytes; refused");
    }
    let got = hex_sha1(&bytes);
    if !got.eq_ignore_ascii_case(sha1_hex) {
        bail!("download of {url} has SHA-1 {got}, expected {sha1_hex}; nothing was written");
    }
    fsutil::write_atomic(dest, &bytes)
}

pub fn hex_sha1(bytes: &[u8]) -> String {
    Sha1::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads a corpus file, with one-line errors for the usual mistakes.
pub fn read_text(path: &Path) -> Result<String> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => usage!("corpus {shown}: no such file"),
        _ => usage!("corpus {shown}: cannot read: {e}"),
    })?;
    if meta.is_dir() {
        return Err(usage!("corpus {shown}: is a directory, expected a UTF-8 text file"));
    }
    let bytes = std::fs::read(path).map_err(|e| usage!("corpus {shown}: cannot read: {e}"))?;
    if bytes.is_empty() {
        return Err(usage!("corpus {shown}: is empty"));
    }
    String::from_utf8(bytes)
        .map_err(|e| usage!("corpus {shown}: not UTF-8 (invalid byte at offset {}); grulm reads UTF-8 text", e.utf8_error().valid_up_to()))
}

/// d2l 0.17's `read_time_machine`: per line, every run of characters outside
/// `A-Za-z` becomes one space, then strip and lowercase; the lines are joined
/// with no separator (hence d2l's "himwas"). `Raw` keeps every character.
pub fn preprocess(text: &str, mode: Preprocess) -> Vec<char> {
    preprocessed(text, mode).collect()
}

/// [`preprocess`] as a stream of characters, for texts too big to hold as `char`s.
pub(crate) fn preprocessed(text: &str, mode: Preprocess) -> impl Iterator<Item = char> + '_ {
    D2lChars { chars: text.chars(), raw: mode == Preprocess::Raw, pending_space: false, any: false, held: None }
}

/// The preprocessing state machine (see [`preprocess`]).
struct D2lChars<'a> {
    chars: std::str::Chars<'a>,
    raw: bool,
    /// Non-letters were seen since the last letter of this line.
    pending_space: bool,
    /// This line has had a letter.
    any: bool,
    /// A letter to emit after the space that precedes it.
    held: Option<char>,
}

impl Iterator for D2lChars<'_> {
    type Item = char;

    fn next(&mut self) -> Option<char> {
        if self.raw {
            return self.chars.next();
        }
        if let Some(c) = self.held.take() {
            return Some(c);
        }
        for c in self.chars.by_ref() {
            if c.is_ascii_alphabetic() {
                let lower = c.to_ascii_lowercase();
                let space = self.pending_space && self.any;
                self.pending_space = false;
                self.any = true;
                if space {
                    self.held = Some(lower);
                    return Some(' ');
                }
                return Some(lower);
            } else if c == '\n' || c == '\r' {
                // Python's text mode splits on \n, \r and \r\n; each ends a line,
                // and a line's leading and trailing non-letters are stripped.
                self.pending_space = false;
                self.any = false;
            } else {
                self.pending_space = true;
            }
        }
        None
    }
}

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

/// A loaded corpus: the vocabulary (built on the whole text, as d2l does) and the
/// token ids for training (the first `max_tokens`, minus the validation split)
/// and validation (the last `val_fraction` of those).
pub struct Corpus {
    pub vocab: Vocab,
    pub train: Ids,
    pub val: Option<Ids>,
    /// Characters after preprocessing, before `max_tokens` (170,580 for d2l's Time Machine).
    pub total_chars: usize,
}

impl Corpus {
    /// Re-encodes the corpus in `to`'s ids (fine-tuning keeps the pre-trained
    /// model's vocabulary). Err: the characters `to` lacks, in the corpus's
    /// vocabulary order (most frequent first).
    pub(crate) fn reencode(&mut self, to: &Vocab) -> Result<(), Vec<String>> {
        let mut missing = Vec::new();
        let map: Vec<i64> = self
            .vocab
            .tokens()
            .iter()
            .map(|t| match to.tokens().iter().position(|u| u == t) {
                Some(i) => i as i64,
                None => {
                    if t != UNK {
                        missing.push(t.clone());
                    }
                    0
                }
            })
            .collect();
        if !missing.is_empty() {
            return Err(missing);
        }
        self.train = self.train.remap(&map, to.len());
        self.val = self.val.as_ref().map(|v| v.remap(&map, to.len()));
        self.vocab = to.clone();
        Ok(())
    }

    /// d2l's `load_corpus_time_machine` plus the validation split, with the checks a
    /// user's own text needs. The config is already validated.
    pub fn load(cfg: &DataConfig) -> Result<Corpus> {
        let path = resolve_corpus(&cfg.corpus)?;
        let text = read_text(&path)?;
        Corpus::from_text(&text, cfg, &path.display().to_string())
    }

    /// Two passes over the preprocessed text, both linear: count the characters
    /// (the vocabulary), then encode the first `max_tokens` of them.
    pub fn from_text(text: &str, cfg: &DataConfig, shown: &str) -> Result<Corpus> {
        let counts = CharCounts::of(preprocessed(text, cfg.preprocess));
        if counts.total == 0 {
            return Err(usage!(
                "corpus {shown}: nothing is left after preprocessing (data.preprocess = \"d2l\" keeps only the letters A-Z, a-z); use data.preprocess = \"raw\" for other text"
            ));
        }
        let vocab = Vocab::from_counts(&counts, cfg.min_freq, &cfg.reserved_tokens);
        let keep = if cfg.max_tokens > 0 { cfg.max_tokens.min(counts.total) } else { counts.total };
        let mut ids = Ids::with_capacity(vocab.len(), keep);
        preprocessed(text, cfg.preprocess).take(keep).for_each(|c| ids.push(vocab.index(c)));
        let need = cfg.batch_size * cfg.num_steps + 1;
        let n_val = (ids.len() as f64 * cfg.val_fraction).floor() as usize;
        let val = if n_val > 0 {
            let val = ids.split_off(ids.len() - n_val);
            if val.len() < need {
                return Err(usage!(
                    "data.val_fraction = {}: the validation split of corpus {shown} has {} tokens, fewer than one minibatch needs (batch_size x num_steps + 1 = {need})",
                    cfg.val_fraction,
                    val.len()
                ));
            }
            Some(val)
        } else {
            None
        };
        if ids.len() < need {
            return Err(usage!(
                "corpus {shown}: {} training tokens (after max_tokens and the validation split) are too few for one minibatch: batch_size x num_steps + 1 = {} x {} + 1 = {need}",
                ids.len(),
                cfg.batch_size,
                cfg.num_steps
            ));
        }
        Ok(Corpus { vocab, train: ids, val, total_chars: counts.total })
    }
}

/// How an epoch cuts the corpus into minibatches (d2l 0.17).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SeqPartition {
    /// `seq_data_iter_sequential`: the corpus (after a random offset) is split into
    /// B parallel streams, so row i of minibatch k+1 continues row i of minibatch k
    /// and the hidden state can be carried over.
    Sequential,
    /// `seq_data_iter_random`: non-overlapping subsequences of T tokens (after a
    /// random offset), in shuffled order; adjacent minibatches are not adjacent text.
    Random,
}

/// One epoch of minibatches as positions in the corpus: row i of minibatch k is
/// `X = corpus[s..s+T]`, `Y = corpus[s+1..s+1+T]` with `s = starts[k*B + i]`.
/// The trainer cuts each minibatch out of the corpus when its step comes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Minibatches {
    pub n: usize,
    pub batch_size: usize,
    pub num_steps: usize,
    /// `[n, B]` row-major.
    pub starts: Vec<i64>,
}

impl Minibatches {
    /// Where row `i` of minibatch `k` starts.
    pub fn start(&self, k: usize, i: usize) -> usize {
        self.starts[k * self.batch_size + i] as usize
    }

    /// Inputs and targets of minibatch `k`, row `i`, read from `corpus`.
    pub fn row(&self, corpus: &Ids, k: usize, i: usize) -> (Vec<i64>, Vec<i64>) {
        let s = self.start(k, i);
        (corpus.to_vec(s..s + self.num_steps), corpus.to_vec(s + 1..s + 1 + self.num_steps))
    }
}

/// The random generator of epoch `epoch` (0-based) of a run seeded with `seed`:
/// each epoch has its own stream, so a resumed run draws what an uninterrupted
/// one would.
pub fn epoch_rng(seed: u64, epoch: usize) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(epoch as u64);
    rng
}

/// Cuts a corpus of `len` tokens into one epoch of minibatches.
///
/// Offsets follow d2l 0.17: uniform in `[0, T]` (inclusive, as d2l's
/// `random.randint(0, num_steps)`) for the sequential partition and in `[0, T-1]`
/// for the random one. They are capped so that at least one minibatch always
/// fits a corpus of `B*T + 1` tokens; for d2l's 10,000 tokens the cap never acts.
pub fn epoch_minibatches(len: usize, b: usize, t: usize, partition: SeqPartition, rng: &mut impl Rng) -> Minibatches {
    assert!(b > 0 && t > 0 && len > b * t, "corpus too short for one minibatch");
    let slack = len - 1 - b * t;
    match partition {
        SeqPartition::Sequential => {
            let offset = rng.gen_range(0..=t.min(slack));
            sequential_minibatches(len, b, t, offset)
        }
        SeqPartition::Random => {
            let offset = rng.gen_range(0..=(t - 1).min(slack));
            random_minibatches(len, b, t, offset, rng)
        }
    }
}

/// `seq_data_iter_sequential` after its offset: `B` streams of `L` tokens each;
/// minibatch k holds columns `[k*T, (k+1)*T)` of every stream.
pub(crate) fn sequential_minibatches(len: usize, b: usize, t: usize, offset: usize) -> Minibatches {
    let num_tokens = ((len - offset - 1) / b) * b;
    let row_len = num_tokens / b;
    let n = row_len / t;
    let starts = (0..n).flat_map(|k| (0..b).map(move |i| (offset + i * row_len + k * t) as i64)).collect();
    Minibatches { n, batch_size: b, num_steps: t, starts }
}

/// `seq_data_iter_random` after its offset: the subsequences starting at
/// `offset + j*T`, shuffled, `B` to a minibatch; the remainder is dropped.
pub(crate) fn random_minibatches(len: usize, b: usize, t: usize, offset: usize, rng: &mut impl Rng) -> Minibatches {
    let num_subseqs = (len - offset - 1) / t;
    let mut starts: Vec<i64> = (0..num_subseqs).map(|j| (offset + j * t) as i64).collect();
    starts.shuffle(rng);
    let n = num_subseqs / b;
    starts.truncate(n * b);
    Minibatches { n, batch_size: b, num_steps: t, starts }
}

/// Minibatches for evaluation: the sequential partition with no offset, so the
/// same text gives the same perplexity every time.
pub(crate) fn eval_minibatches(len: usize, b: usize, t: usize) -> Minibatches {
    sequential_minibatches(len, b, t, 0)
}

/// Token ids on the device, in their compact kind (`Uint8`, `Int16` or
/// `Int32`), and what cuts minibatches out of them.
pub struct TokenData {
    ids: Tensor,
    /// `0..=T`, Int64: a row's offsets from its start, its target's last included.
    steps: Tensor,
}

impl TokenData {
    /// One copy of `ids` to `device`, for minibatches of `t` steps.
    pub fn upload(ids: &Ids, t: usize, device: Device) -> TokenData {
        let ids = match ids {
            Ids::U8(v) => Tensor::from_slice(v),
            Ids::I16(v) => Tensor::from_slice(v),
            Ids::I32(v) => Tensor::from_slice(v),
        };
        TokenData { ids: ids.to_device(device), steps: Tensor::arange(t as i64 + 1, (Kind::Int64, device)) }
    }

    /// An epoch's row starts `[n, B]` on the device (one copy).
    pub fn starts(&self, mb: &Minibatches) -> Tensor {
        Tensor::from_slice(&mb.starts).view([mb.n as i64, mb.batch_size as i64]).to_device(self.ids.device())
    }

    /// Minibatch `k` of `starts`: inputs and targets `[B, T]`, Int64, cut out of
    /// the ids on the device (no host round trip): one gather of `T + 1` ids
    /// per row, of which the inputs are the first T and the targets the last T.
    pub fn minibatch(&self, starts: &Tensor, k: i64) -> (Tensor, Tensor) {
        let rows = self.ids.take(&(starts.get(k).unsqueeze(1) + &self.steps)).to_kind(Kind::Int64); // [B, T+1]
        let t = rows.size()[1] - 1;
        (rows.narrow(1, 0, t), rows.narrow(1, 1, t))
    }
}
