//! The corpus: where it comes from (d2l's download, SHA-1 checked, a user's
//! file, or a directory or list of them), its preprocessing, and its ids for
//! training and validation.
use super::batches::SeqPartition;
use super::vocab::{CharCounts, Ids, Vocab, UNK};
use crate::platform::fsutil;
use crate::usage;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use sha1::{Digest, Sha1};
use std::io::Read;
use std::path::{Path, PathBuf};

/// How text becomes characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Preprocess {
    /// d2l's: letters only, lowercased, other runs become one space (28 tokens).
    D2l,
    /// Every character kept: case, punctuation, newlines (char-rnn style).
    Raw,
}

/// `data.corpus`: where the text comes from.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum CorpusSource {
    /// `timemachine` (downloaded), a UTF-8 text file, or a directory: every file
    /// under it (or those `data.include` matches), in byte order of their paths.
    Path(String),
    /// Files and directories, read in the order given (each directory as above).
    List(Vec<String>),
}

impl CorpusSource {
    /// The paths it names, in order.
    pub fn entries(&self) -> Vec<&str> {
        match self {
            CorpusSource::Path(p) => vec![p.as_str()],
            CorpusSource::List(l) => l.iter().map(String::as_str).collect(),
        }
    }

    /// Its last path component (for titles), or `N sources` for a list of several.
    pub fn short_name(&self) -> String {
        match self.entries()[..] {
            [one] => Path::new(one).file_name().map_or(one.to_string(), |n| n.to_string_lossy().into()),
            ref many => format!("{} sources", many.len()),
        }
    }
}

impl std::fmt::Display for CorpusSource {
    /// A path as it is; a list as TOML writes it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CorpusSource::Path(p) => f.write_str(p),
            CorpusSource::List(l) => write!(f, "[{}]", l.iter().map(|p| format!("{p:?}")).collect::<Vec<_>>().join(", ")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DataConfig {
    /// `timemachine` (downloaded), a path to a UTF-8 text file or a directory, or a list of those.
    pub corpus: CorpusSource,
    /// The file names a directory corpus reads (comma-separated globs with `*`
    /// and `?`, e.g. `*.c,*.h`); none: every file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub include: Option<String>,
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

/// The files a corpus is read from, in order, with their sizes in bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct CorpusFiles {
    pub files: Vec<(PathBuf, u64)>,
}

impl CorpusFiles {
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.1).sum()
    }

    /// The record a run's config.toml keeps (TOML comments): how many files,
    /// their total size, and each in the order read.
    pub(crate) fn record(&self) -> String {
        let mut out = format!(
            "# data.corpus was read from {} file(s), {} bytes in all, in this order (a newline is added after a file that lacks one):\n",
            self.files.len(),
            self.bytes()
        );
        for (path, bytes) in &self.files {
            out += &format!("#   {} ({bytes} bytes)\n", path.display());
        }
        out
    }
}

/// Whether `name` matches the glob `pat` (`*` any run of characters, `?` one).
fn glob_match(pat: &[char], name: &[char]) -> bool {
    // Iterative with backtracking to the last `*`: linear in practice.
    let (mut p, mut n, mut star, mut mark) = (0, 0, None, 0);
    while n < name.len() {
        if p < pat.len() && (pat[p] == '?' || pat[p] == name[n]) {
            p += 1;
            n += 1;
        } else if p < pat.len() && pat[p] == '*' {
            star = Some(p);
            mark = n;
            p += 1;
        } else if let Some(s) = star {
            p = s + 1;
            mark += 1;
            n = mark;
        } else {
            return false;
        }
    }
    pat[p..].iter().all(|&c| c == '*')
}

/// `data.include`'s patterns: comma-separated, trimmed.
pub(crate) fn include_patterns(include: &str) -> Vec<&str> {
    include.split(',').map(str::trim).collect()
}

/// Every file under `dir` whose name matches one of `patterns` (none: every
/// file), sorted by the bytes of their paths (what `find DIR | LC_ALL=C sort`
/// gives). Names starting with `.` are skipped (as `fd` and ripgrep do), and
/// symbolic links to directories are not followed (no cycles).
fn files_under(dir: &Path, patterns: &[Vec<char>]) -> Result<Vec<(PathBuf, u64)>> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| usage!("corpus {}: cannot read directory {}: {e}", dir.display(), d.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| usage!("corpus {}: cannot read directory {}: {e}", dir.display(), d.display()))?;
            let name: Vec<char> = entry.file_name().to_string_lossy().chars().collect();
            if name.first() == Some(&'.') {
                continue;
            }
            let path = entry.path();
            let kind = entry.file_type().map_err(|e| usage!("corpus {}: cannot read {}: {e}", dir.display(), path.display()))?;
            if kind.is_dir() {
                stack.push(path);
                continue;
            }
            // A link counts as what it points to, if that is a file.
            let meta = match std::fs::metadata(&path) {
                Ok(m) if m.is_file() => m,
                _ => continue,
            };
            if patterns.is_empty() || patterns.iter().any(|p| glob_match(p, &name)) {
                out.push((path, meta.len()));
            }
        }
    }
    use std::os::unix::ffi::OsStrExt;
    out.sort_by(|a, b| a.0.as_os_str().as_bytes().cmp(b.0.as_os_str().as_bytes()));
    Ok(out)
}

/// The files `cfg.corpus` reads, in order (see [`CorpusSource`]); `timemachine`
/// is downloaded if it is missing.
pub fn corpus_files(cfg: &DataConfig) -> Result<CorpusFiles> {
    let patterns: Vec<Vec<char>> =
        cfg.include.as_deref().map_or(vec![], |i| include_patterns(i).iter().map(|p| p.chars().collect()).collect());
    let mut files = vec![];
    let mut any_dir = false;
    for entry in cfg.corpus.entries() {
        let path = resolve_corpus(entry)?;
        let meta = std::fs::metadata(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => usage!("corpus {}: no such file or directory", path.display()),
            _ => usage!("corpus {}: cannot read: {e}", path.display()),
        })?;
        if meta.is_dir() {
            any_dir = true;
            let found = files_under(&path, &patterns)?;
            if found.is_empty() {
                return Err(match &cfg.include {
                    Some(i) => usage!("corpus {}: no file under it matches data.include = {i:?}", path.display()),
                    None => usage!("corpus {}: is a directory with no files", path.display()),
                });
            }
            files.extend(found);
        } else {
            files.push((path, meta.len()));
        }
    }
    if let (Some(i), false) = (&cfg.include, any_dir) {
        return Err(usage!("data.include = {i:?}: applies to a directory corpus, and data.corpus = {} names none", cfg.corpus));
    }
    Ok(CorpusFiles { files })
}

/// The text of a corpus: its files ([`corpus_files`]) one after the other, with
/// a newline added after a file that does not end in one (so that no line runs
/// into the next file's first), and the files read.
pub fn read_corpus(cfg: &DataConfig) -> Result<(String, CorpusFiles)> {
    let files = corpus_files(cfg)?;
    if let [(one, _)] = &files.files[..] {
        return Ok((read_text(one)?, files));
    }
    let shown = &cfg.corpus;
    let mut text = String::with_capacity(files.bytes() as usize + files.files.len());
    for (path, _) in &files.files {
        let bytes = std::fs::read(path).map_err(|e| usage!("corpus {shown}: cannot read {}: {e}", path.display()))?;
        let part = String::from_utf8(bytes).map_err(|e| {
            usage!(
                "corpus {shown}: {}: not UTF-8 (invalid byte at offset {}); grulm reads UTF-8 text (data.include can leave such files out)",
                path.display(),
                e.utf8_error().valid_up_to()
            )
        })?;
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&part);
    }
    if text.is_empty() {
        return Err(usage!("corpus {shown}: its {} files are all empty", files.files.len()));
    }
    Ok((text, files))
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

/// A loaded corpus: the vocabulary (built on the whole text, as d2l does) and the
/// token ids for training (the first `max_tokens`, minus the validation split)
/// and validation (the last `val_fraction` of those).
pub struct Corpus {
    pub vocab: Vocab,
    pub train: Ids,
    pub val: Option<Ids>,
    /// Characters after preprocessing, before `max_tokens` (170,580 for d2l's Time Machine).
    pub total_chars: usize,
    /// The files it was read from.
    pub files: CorpusFiles,
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
        let (text, files) = read_corpus(cfg)?;
        let shown = match &files.files[..] {
            [(one, _)] => one.display().to_string(),
            _ => cfg.corpus.to_string(),
        };
        let mut corpus = Corpus::from_text(&text, cfg, &shown)?;
        corpus.files = files;
        Ok(corpus)
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
        Ok(Corpus { vocab, train: ids, val, total_chars: counts.total, files: CorpusFiles { files: vec![] } })
    }
}
