//! A run directory and what it holds:
//!
//! | file                     | what                                                        |
//! |--------------------------|-------------------------------------------------------------|
//! | `config.toml`            | the resolved config, every key                              |
//! | `vocab.json`             | the vocabulary (`idx_to_token`)                             |
//! | `model.safetensors`      | the parameters (PyTorch names for the built-in model)       |
//! | `checkpoint.safetensors` | parameters + optimiser state + epoch, for `--resume`        |
//! | `best.safetensors`       | the parameters of the best validation perplexity so far     |
//! | `metrics.jsonl`          | one line per epoch                                          |
//! | `perplexity.svg`         | the d2l Animator curve                                      |
//! | `tb/`                    | TensorBoard event files (see `tensorboard.rs`)              |
//!
//! Every file but `metrics.jsonl` is replaced atomically (temporary file, fsync,
//! rename); metrics lines are appended whole. A kill at any moment leaves a
//! loadable checkpoint and the metrics of every epoch up to it.
pub mod metrics;
pub(crate) mod plot;
pub(crate) mod tensorboard;

use crate::config::Config;
use crate::data::Vocab;
use crate::model::RecurrentLm;
use crate::platform::fsutil;
use crate::platform::tensorfile;
use crate::usage;
use anyhow::{bail, Context, Result};
use metrics::{best_of, BestVal, EpochMetrics};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind};

pub(crate) const CONFIG: &str = "config.toml";
pub(crate) const VOCAB: &str = "vocab.json";
pub(crate) const MODEL: &str = "model.safetensors";
pub(crate) const CHECKPOINT: &str = "checkpoint.safetensors";
pub(crate) const METRICS: &str = "metrics.jsonl";
pub(crate) const PLOT: &str = "perplexity.svg";
pub(crate) const BEST: &str = "best.safetensors";
/// The lock file of a run directory ([`RunDir::lock`]).
pub(crate) const LOCK: &str = ".lock";
const FILES: &[&str] = &[CONFIG, VOCAB, MODEL, CHECKPOINT, METRICS, PLOT, BEST];

const PARTIAL_STEPS: &str = "grulm.partial_steps";

/// An epoch a signal stopped part-way (see `interrupt.rs`): what resuming it
/// exactly needs. The epoch's minibatches are its seed's, so they are made again.
pub(crate) struct Partial {
    /// Minibatches of the epoch already trained.
    pub steps: usize,
    /// Their losses and gradient norms, for the epoch's metrics.
    pub losses: Vec<f64>,
    pub norms: Vec<f64>,
    /// Seconds they took (for tokens/s).
    pub seconds: f64,
    /// The state carried into the next minibatch (sequential partition).
    pub state: Option<Vec<tch::Tensor>>,
}

/// An optimiser's state as a checkpoint holds it: named tensors (Adam's moments)
/// and the step count. The trainer's optimiser gives and takes it; the run
/// directory only stores it.
pub(crate) struct OptimizerState {
    pub tensors: Vec<(String, tch::Tensor)>,
    pub steps: u64,
}

/// A checkpoint, read back ([`RunDir::load_checkpoint`]).
pub(crate) struct Restored {
    /// Complete epochs.
    pub epoch: usize,
    /// Seconds of training they took.
    pub elapsed_s: f64,
    /// The part of the next epoch a signal interrupted.
    pub partial: Option<Partial>,
    /// Every tensor of the file; the optimiser takes its own by name.
    pub optimizer: OptimizerState,
}

/// Which weights of a run `sample`, `eval`, `export` and `gates` use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Weights {
    /// `best.safetensors`, asked for: a run without one is an error saying why.
    Best,
    /// `model.safetensors`: the weights at the run's last epoch.
    Last,
    /// The default: the best where the run has them, else the last, said on stderr.
    BestElseLast,
}

pub struct RunDir {
    pub path: PathBuf,
}

impl RunDir {
    pub fn new(path: impl Into<PathBuf>) -> RunDir {
        RunDir { path: path.into() }
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// True when the directory holds any of grulm's files.
    pub(crate) fn has_run(&self) -> bool {
        FILES.iter().any(|f| self.file(f).exists()) || self.file(tensorboard::DIR).exists()
    }

    /// Takes the run directory for this process (creating it if needed): an
    /// exclusive `flock` on `RUN/.lock`, which holds the holder's pid. The
    /// kernel releases it when the process ends, however it ends, so a killed run
    /// never leaves it stale. A second process training in the same directory
    /// (a `--resume` while the run goes on, a requeued Slurm task meeting its
    /// predecessor) gets a one-line error instead of interleaved files.
    pub fn lock(&self) -> Result<RunLock> {
        use std::io::Write;
        use std::os::fd::AsRawFd;
        if self.path.is_file() {
            return Err(usage!("--out {}: is a file, expected a run directory", self.path.display()));
        }
        std::fs::create_dir_all(&self.path).with_context(|| format!("cannot create run directory {}", self.path.display()))?;
        let p = self.file(LOCK);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&p)
            .with_context(|| format!("cannot open {}", p.display()))?;
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let pid = std::fs::read_to_string(&p).unwrap_or_default();
                let pid = if pid.trim().is_empty() { "unknown".to_string() } else { pid.trim().to_string() };
                bail!(
                    "run directory {} is in use by another grulm process (pid {pid}); wait for it to end or stop it, then run again",
                    self.path.display()
                );
            }
            return Err(e).with_context(|| format!("cannot lock {}", p.display()));
        }
        file.set_len(0).and_then(|_| writeln!(file, "{}", std::process::id())).with_context(|| format!("cannot write {}", p.display()))?;
        Ok(RunLock { _file: file })
    }

    /// Whether a process holds this run directory's lock now (is training in it).
    pub fn busy(&self) -> bool {
        use std::os::fd::AsRawFd;
        let Ok(file) = std::fs::File::open(self.file(LOCK)) else { return false };
        // SAFETY: flock on a descriptor this function owns; closing it releases the probe.
        unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) != 0 }
    }

    /// Creates the directory for a new run. An existing run is refused unless
    /// `force`, which removes grulm's files (and nothing else) first.
    pub fn create(&self, force: bool) -> Result<()> {
        if self.has_run() {
            if !force {
                return Err(usage!(
                    "{} already holds a run; use --resume to continue it, --force to replace it, or --out for another directory",
                    self.path.display()
                ));
            }
            for f in FILES {
                let p = self.file(f);
                if p.exists() {
                    std::fs::remove_file(&p).with_context(|| format!("cannot remove {}", p.display()))?;
                }
            }
            tensorboard::remove_event_files(&self.file(tensorboard::DIR))?;
        }
        std::fs::create_dir_all(&self.path).with_context(|| format!("cannot create run directory {}", self.path.display()))?;
        // Fail now, not after an hour of training, if the directory is not writable.
        fsutil::write_atomic(&self.file(".write-test"), b"")
            .with_context(|| format!("run directory {} is not writable", self.path.display()))?;
        let _ = std::fs::remove_file(self.file(".write-test"));
        Ok(())
    }

    /// The resolved config, and (as TOML comments at its end) the files the
    /// corpus was read from, when they are known.
    pub(crate) fn save_config(&self, cfg: &Config, corpus: Option<&crate::data::CorpusFiles>) -> Result<()> {
        let text = cfg.to_toml() + &corpus.map(|c| format!("\n{}", c.record())).unwrap_or_default();
        fsutil::write_atomic(&self.file(CONFIG), text.as_bytes())
    }

    pub(crate) fn load_config(&self) -> Result<Config> {
        let p = self.file(CONFIG);
        if self.path.is_file() {
            return Err(usage!("run directory {}: is a file, expected a run directory", self.path.display()));
        }
        if !self.path.is_dir() {
            return Err(usage!("run directory {}: no such directory", self.path.display()));
        }
        let text = std::fs::read_to_string(&p).map_err(|e| usage!("{}: cannot read: {e} (is this a grulm run directory?)", p.display()))?;
        Ok(Config::parse(&text, &p.display().to_string(), &[])?)
    }

    pub(crate) fn save_vocab(&self, vocab: &Vocab) -> Result<()> {
        fsutil::write_atomic(&self.file(VOCAB), vocab.to_json().as_bytes())
    }

    pub(crate) fn load_vocab(&self) -> Result<Vocab> {
        Vocab::load(&self.file(VOCAB))
    }

    pub(crate) fn append_metrics(&self, m: &EpochMetrics) -> Result<()> {
        let line = serde_json::to_string(m).expect("metrics serialize") + "\n";
        fsutil::append_line(&self.file(METRICS), &line)
    }

    /// The metrics lines; a torn last line (a kill mid-write) is ignored.
    pub fn load_metrics(&self) -> Result<Vec<EpochMetrics>> {
        let p = self.file(METRICS);
        let text = match std::fs::read_to_string(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => bail!("cannot read {}: {e}", p.display()),
        };
        Ok(text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
    }

    /// Keeps the metrics of epochs `1..=epoch` (for `--resume` from that epoch).
    /// The kept lines stay byte for byte as they were written: the file is cut
    /// after the last of them, never parsed and printed again.
    pub(crate) fn truncate_metrics(&self, epoch: usize) -> Result<Vec<EpochMetrics>> {
        let p = self.file(METRICS);
        let text = match std::fs::read_to_string(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => bail!("cannot read {}: {e}", p.display()),
        };
        let (mut kept, mut end) = (Vec::new(), 0);
        for line in text.split_inclusive('\n') {
            match serde_json::from_str::<EpochMetrics>(line) {
                Ok(m) if m.epoch <= epoch && line.ends_with('\n') => {
                    kept.push(m);
                    end += line.len();
                }
                _ => break,
            }
        }
        if end != text.len() {
            fsutil::write_atomic(&p, &text.as_bytes()[..end])?;
        }
        Ok(kept)
    }

    /// Writes the checkpoint (parameters, optimiser state, progress) and then the
    /// model file, each atomically. `epoch` epochs are complete; `partial`, when a
    /// signal stopped the next one part-way, is what resuming it needs. Refuses
    /// non-finite weights, so a diverged run never replaces its last good checkpoint.
    pub(crate) fn save_checkpoint(
        &self,
        model: &dyn RecurrentLm,
        opt: OptimizerState,
        epoch: usize,
        elapsed_s: f64,
        partial: Option<&Partial>,
    ) -> Result<()> {
        let params = model.named_parameters();
        if !tensorfile::all_finite(&params) {
            bail!("parameters are not finite after epoch {epoch}; the last good checkpoint is kept in {}", self.path.display());
        }
        let OptimizerState { tensors: opt_state, steps } = opt;
        let mut meta = HashMap::new();
        meta.insert("grulm.epoch".to_string(), epoch.to_string());
        meta.insert("grulm.elapsed_s".to_string(), format!("{elapsed_s}"));
        meta.insert("grulm.optimizer_steps".to_string(), steps.to_string());
        meta.insert("grulm.model".to_string(), model.describe());
        let mut all: Vec<(String, tch::Tensor)> = params.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect();
        all.extend(opt_state);
        if let Some(p) = partial {
            meta.insert(PARTIAL_STEPS.to_string(), p.steps.to_string());
            meta.insert("grulm.partial_seconds".to_string(), format!("{}", p.seconds));
            all.push(("grulm.partial.losses".into(), tch::Tensor::from_slice(&p.losses)));
            all.push(("grulm.partial.norms".into(), tch::Tensor::from_slice(&p.norms)));
            for (i, t) in p.state.iter().flatten().enumerate() {
                all.push((format!("grulm.partial.state.{i}"), t.shallow_clone()));
            }
        }
        tensorfile::save(&self.file(CHECKPOINT), &all, &meta)?;
        meta.remove("grulm.optimizer_steps");
        meta.remove(PARTIAL_STEPS);
        meta.remove("grulm.partial_seconds");
        tensorfile::save(&self.file(MODEL), &params, &meta)
    }

    /// Writes `best.safetensors`: the parameters, with the epoch and validation
    /// perplexity that made them the best (atomically replaced).
    pub(crate) fn save_best(&self, model: &dyn RecurrentLm, best: BestVal) -> Result<()> {
        let mut meta = HashMap::new();
        meta.insert("grulm.epoch".to_string(), best.epoch.to_string());
        meta.insert("grulm.val_ppl".to_string(), format!("{}", best.val_ppl));
        meta.insert("grulm.model".to_string(), model.describe());
        tensorfile::save(&self.file(BEST), &model.named_parameters(), &meta)
    }

    /// The best validation a resumed run goes on from. Its metrics up to `epoch`
    /// (the checkpoint) say which it was; `best.safetensors` must hold it. A best
    /// file from after the checkpoint (the run was killed in between) is removed:
    /// its epoch is no longer in the run's history, and training from the
    /// checkpoint writes a new one on its next improvement.
    pub(crate) fn resume_best(&self, history: &[EpochMetrics], epoch: usize) -> Result<Option<BestVal>> {
        let p = self.file(BEST);
        if p.exists() {
            let file = tensorfile::load(&p)?;
            let saved: Option<usize> = file.metadata.get("grulm.epoch").and_then(|e| e.parse().ok());
            if saved.is_none_or(|e| e > epoch) {
                std::fs::remove_file(&p).with_context(|| format!("cannot remove {}", p.display()))?;
            }
        }
        Ok(best_of(history))
    }

    /// Cuts a resumed run's files back to its checkpoint's `epoch`: the metrics
    /// of later epochs, their TensorBoard events and a best file from after it
    /// go. Returns the kept metrics and the best validation among them. The one
    /// place that says what a resumed run's history is.
    pub(crate) fn cut_back_to(&self, epoch: usize) -> Result<(Vec<EpochMetrics>, Option<BestVal>)> {
        let history = self.truncate_metrics(epoch)?;
        tensorboard::truncate(&self.file(tensorboard::DIR), epoch)?;
        let best = self.resume_best(&history, epoch)?;
        Ok((history, best))
    }

    /// Removes temporary files a killed writer left behind (see [`fsutil::temp_path`]).
    pub(crate) fn remove_stale_temporaries(&self) {
        if let Ok(entries) = std::fs::read_dir(&self.path) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') && name.ends_with(".tmp") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }

    /// Restores the parameters into `model`; returns the rest of the checkpoint
    /// (progress, the optimiser's state, the part of an interrupted epoch).
    pub(crate) fn load_checkpoint(&self, model: &dyn RecurrentLm, device: Device) -> Result<Restored> {
        let p = self.file(CHECKPOINT);
        if !p.exists() {
            return Err(usage!(
                "{}: no checkpoint yet (the run stopped before its first one); start it again with --force",
                self.path.display()
            ));
        }
        let file = tensorfile::load(&p)?;
        let shown = p.display().to_string();
        tensorfile::assign(&model.named_parameters(), &file.tensors, &shown)?;
        let meta =
            |k: &str| -> Result<String> { file.metadata.get(k).cloned().with_context(|| format!("{shown}: metadata {k} is missing")) };
        let epoch: usize = meta("grulm.epoch")?.parse().with_context(|| format!("{shown}: bad grulm.epoch"))?;
        let elapsed: f64 = meta("grulm.elapsed_s")?.parse().with_context(|| format!("{shown}: bad grulm.elapsed_s"))?;
        let steps: u64 = meta("grulm.optimizer_steps")?.parse().with_context(|| format!("{shown}: bad grulm.optimizer_steps"))?;
        let partial = match file.metadata.get(PARTIAL_STEPS) {
            None => None,
            Some(n) => {
                let tensor = |name: &str| file.tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t);
                let floats = |name: &str| -> Result<Vec<f64>> {
                    let t = tensor(name).with_context(|| format!("{shown}: {name} is missing"))?;
                    Ok(Vec::<f64>::try_from(t.to_kind(Kind::Double))?)
                };
                let state: Vec<tch::Tensor> =
                    (0..).map_while(|i| tensor(&format!("grulm.partial.state.{i}"))).map(|t| t.to_device(device)).collect();
                Some(Partial {
                    steps: n.parse().with_context(|| format!("{shown}: bad {PARTIAL_STEPS}"))?,
                    seconds: meta("grulm.partial_seconds")?.parse().with_context(|| format!("{shown}: bad grulm.partial_seconds"))?,
                    losses: floats("grulm.partial.losses")?,
                    norms: floats("grulm.partial.norms")?,
                    state: (!state.is_empty()).then_some(state),
                })
            }
        };
        Ok(Restored { epoch, elapsed_s: elapsed, partial, optimizer: OptimizerState { tensors: file.tensors, steps } })
    }

    /// The file holding the run's `weights`: `best.safetensors` or
    /// `model.safetensors`. A run stopped before its first model file (a full
    /// disk, say) may still have a good checkpoint, written first: its parameters
    /// are the model's. Each fallback is a note for stderr ([`WeightsFile::say_notes`]).
    pub(crate) fn weights_file(&self, weights: Weights) -> Result<WeightsFile> {
        let best = self.file(BEST);
        let mut notes = vec![];
        let p = match weights {
            Weights::Best | Weights::BestElseLast if best.exists() => best,
            Weights::Best => {
                return Err(usage!(
                    "--checkpoint best: run {} has no best checkpoint ({BEST}): {}; use --checkpoint last for its last weights",
                    self.path.display(),
                    self.why_no_best()
                ))
            }
            Weights::BestElseLast => {
                notes.push(format!(
                    "run {} has no best checkpoint: {}; using its last weights ({MODEL})",
                    self.path.display(),
                    self.why_no_best()
                ));
                self.file(MODEL)
            }
            Weights::Last => self.file(MODEL),
        };
        if !p.exists() && self.file(CHECKPOINT).exists() {
            notes.push(format!("{} is missing; using the weights in {CHECKPOINT}", p.display()));
            return Ok(WeightsFile { path: self.file(CHECKPOINT), notes });
        }
        Ok(WeightsFile { path: p, notes })
    }

    /// Why the run has no `best.safetensors`, from its config and metrics.
    fn why_no_best(&self) -> String {
        let Ok(cfg) = self.load_config() else { return format!("{BEST} is missing") };
        if cfg.data.val_fraction == 0.0 {
            return "it has no validation split (data.val_fraction = 0)".into();
        }
        let history = self.load_metrics().unwrap_or_default();
        if history.iter().all(|m| m.val_ppl.is_none()) {
            return format!(
                "it has not validated yet ({} epoch(s) done, train.val_every = {})",
                history.last().map_or(0, |m| m.epoch),
                cfg.train.val_every
            );
        }
        format!("{BEST} is missing")
    }

    /// A trained model for `sample`, `eval` and `export`: config, vocabulary and
    /// weights (the last epoch's, or the best validation's).
    pub fn load_model(&self, device: Device, weights: Weights) -> Result<Trained> {
        let cfg = self.load_config()?;
        let vocab = self.load_vocab().map_err(|e| usage!("{e:#}"))?;
        let model = cfg.model.init(vocab.len() as i64, device, Kind::Float);
        let weights = self.weights_file(weights)?;
        let file = tensorfile::load(&weights.path)?;
        // The vocabulary sets V in the shapes: name it, after the tensor that disagrees.
        tensorfile::assign(&model.named_parameters(), &file.tensors, &weights.path.display().to_string())
            .map_err(|e| anyhow::anyhow!("{e:#}; {} has {} tokens", self.file(VOCAB).display(), vocab.len()))?;
        Ok(Trained { cfg, vocab, model, weights })
    }
}

/// Which file a run's weights come from ([`RunDir::weights_file`]).
pub struct WeightsFile {
    pub path: PathBuf,
    /// Where another file than the one asked for was taken (the default found no
    /// best weights, or the model file is missing): the lines that say so, for
    /// stderr once the command has checked its input (so a mistake is still one line).
    pub notes: Vec<String>,
}

impl WeightsFile {
    /// Says the notes, if any, on stderr.
    pub(crate) fn say_notes(&self) {
        for note in &self.notes {
            eprintln!("grulm: {note}");
        }
    }
}

/// A run's model, loaded ([`RunDir::load_model`]).
pub struct Trained {
    pub cfg: Config,
    pub vocab: Vocab,
    pub model: Box<dyn RecurrentLm>,
    pub weights: WeightsFile,
}

/// A held [`RunDir::lock`]; dropping it (or the process ending) releases it.
pub struct RunLock {
    _file: std::fs::File,
}

/// The default run directory for a config file: `runs/<file stem>`.
pub(crate) fn default_run_dir(config_path: Option<&Path>) -> PathBuf {
    let stem = config_path.and_then(|p| p.file_stem()).map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "default".into());
    Path::new("runs").join(stem)
}
