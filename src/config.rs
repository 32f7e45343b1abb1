//! Experiments as TOML: `[data]`, `[model]`, `[train]`, `[sample]`.
//!
//! Every key has a default equal to d2l 0.17's GRU chapter, so a config file
//! lists only its differences. Parsing is by hand over a `toml::Table` rather than
//! serde's derive, so that each mistake gets one line naming the file (or the
//! `--set`), the key, the value and what was expected.
use crate::data::include_patterns;
pub use crate::data::{CorpusSource, DataConfig, Preprocess, SeqPartition};
use crate::error::UsageError;
pub use crate::model::{CellKind, GruGates, ModelConfig, ModelKind, Precision, ResetGate};
use serde::Serialize;
use std::fmt;
use toml::{Table, Value};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrainConfig {
    pub epochs: usize,
    /// Minibatches per epoch (0: one pass over the training text, d2l's
    /// epoch). Keras's `steps_per_epoch`: on a text whose pass takes hours,
    /// validation, checkpoints, predictions, patience, schedules and TensorBoard
    /// act every N steps, since they all count epochs; an epoch then begins
    /// where the last one stopped, inside a pass, with its carried state.
    pub epoch_steps: usize,
    /// Stop after the first epoch that ends past this many minutes of training
    /// (0: no limit); the run's last epoch validates and checkpoints.
    pub max_minutes: f64,
    pub optimizer: OptimizerKind,
    pub lr: f64,
    /// How the learning rate changes over the epochs (see [`LrSchedule::lr_at`]).
    pub lr_schedule: LrSchedule,
    /// `step`: the factor applied every `lr_decay_every` epochs (char-rnn's
    /// `learning_rate_decay`).
    pub lr_decay: f64,
    pub lr_decay_every: usize,
    /// Epochs of linear warm-up from lr/W to lr, before the schedule.
    pub warmup_epochs: usize,
    /// θ of d2l's `grad_clipping`: g <- min(1, θ/‖g‖) g.
    pub grad_clip: f64,
    pub seed: u64,
    /// `auto`, `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// CPU threads for libtorch (0: libtorch's default, one per core).
    pub threads: usize,
    /// Print d2l's `predict('time traveller')` line every N epochs (0: never).
    pub predict_every: usize,
    /// Write a checkpoint every N epochs (0: only at the end).
    pub checkpoint_every: usize,
    /// Validation perplexity every N epochs, when there is a validation split.
    pub val_every: usize,
    /// Ask libtorch for deterministic algorithms (matters on CUDA only).
    pub deterministic: bool,
    /// The training step's matrix products: f32, or bf16 inputs with f32
    /// accumulation (CPU only in this version); weights, checkpoints,
    /// evaluation and sampling stay f32.
    pub precision: Precision,
    /// On CUDA, capture the training step once as a CUDA graph and replay it
    /// (SGD only; no number changes, launches go from hundreds to one).
    pub cuda_graph: bool,
    /// Write TensorBoard event files into the run's `tb/`.
    pub tensorboard: bool,
    /// Without a progress bar (stdout not a terminal, or `--quiet`), print a
    /// progress line inside each epoch every this many seconds (0: never).
    pub progress_seconds: f64,
    /// Stop after this many validations without a new best validation
    /// perplexity (0: never). Needs a validation split.
    pub patience: usize,
    /// Fine-tuning: the run directory whose weights (best, else last) and
    /// vocabulary this run starts from (`grulm train --init-from RUN`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init_from: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SampleConfig {
    /// Prefixes predicted at the end of training (d2l: `time traveller`, `traveller`).
    pub prefixes: Vec<String>,
    pub len: usize,
    /// Sampling temperature; absent: greedy argmax as d2l's `predict_ch8`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Sample only among the k most likely characters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_k: Option<usize>,
    /// Default nucleus for `grulm sample`: the fewest most likely characters
    /// whose probabilities reach p.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    pub seed: u64,
}

/// A validated experiment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    pub data: DataConfig,
    pub model: ModelConfig,
    pub train: TrainConfig,
    pub sample: SampleConfig,
}

impl Default for Config {
    /// d2l 0.17's GRU chapter.
    fn default() -> Self {
        Config {
            data: DataConfig {
                corpus: CorpusSource::Path("timemachine".into()),
                include: None,
                preprocess: Preprocess::D2l,
                max_tokens: 10_000,
                min_freq: 0,
                reserved_tokens: vec![],
                val_fraction: 0.0,
                partition: SeqPartition::Sequential,
                batch_size: 32,
                num_steps: 35,
            },
            model: ModelConfig::default(),
            train: TrainConfig {
                epochs: 500,
                epoch_steps: 0,
                max_minutes: 0.0,
                optimizer: OptimizerKind::Sgd,
                lr: 1.0,
                lr_schedule: LrSchedule::Constant,
                lr_decay: 0.97,
                lr_decay_every: 1,
                warmup_epochs: 0,
                grad_clip: 1.0,
                seed: 42,
                device: "auto".into(),
                threads: 0,
                predict_every: 10,
                checkpoint_every: 50,
                val_every: 10,
                deterministic: false,
                precision: Precision::F32,
                cuda_graph: true,
                tensorboard: true,
                progress_seconds: 60.0,
                patience: 0,
                init_from: None,
            },
            sample: SampleConfig {
                prefixes: vec!["time traveller".into(), "traveller".into()],
                len: 50,
                temperature: None,
                top_k: None,
                top_p: None,
                seed: 0,
            },
        }
    }
}

// Upper bounds of the integer keys. Each lies far above what trains on one
// machine today, so a real need never meets it, and low enough that a typo (a
// few zeros too many) is told the key's range instead of trying to allocate
// terabytes. Between them and what the machine holds, `train::memory`'s estimate
// answers before anything is allocated.

/// B (`data.batch_size`): GPU throughput saturates at a few thousand rows.
const MAX_BATCH: i64 = 65_536;
/// T (`data.num_steps`): char-level BPTT windows are 32 to 1024 steps, and the
/// backward keeps every step's gates.
const MAX_STEPS: i64 = 65_536;
/// H (`model.hidden_size`): one GRU layer of width 65,536 has 25.8 billion
/// weights (103 GB in f32), more than a single GPU holds with their gradients.
const MAX_HIDDEN: i64 = 65_536;
/// `model.num_layers`: d2l stacks 2, deep char-level models 3 to 8.
const MAX_LAYERS: i64 = 1024;
/// `train.epochs`, the every-N-epochs keys and `sample.top_k`: about a million
/// (a million epochs of 1 ms each are 17 minutes; no vocabulary of characters
/// is larger).
const MAX_COUNT: i64 = 1 << 20;
/// `train.threads`: more than any machine's cores.
const MAX_THREADS: i64 = 4096;

/// Where a key's value came from, for the error message.
enum Origin<'a> {
    File(&'a str),
    Set(&'a str),
}

struct Reader<'a> {
    source: &'a str,
    /// `section.key` -> the `--set` text that set it.
    overrides: Vec<(String, String)>,
}

impl<'a> Reader<'a> {
    fn origin(&self, section: &str, key: &str) -> Origin<'_> {
        let full = format!("{section}.{key}");
        match self.overrides.iter().rev().find(|(k, _)| *k == full) {
            Some((_, text)) => Origin::Set(text),
            None => Origin::File(self.source),
        }
    }

    fn err(&self, section: &str, key: &str, value: &Value, expected: impl fmt::Display) -> UsageError {
        let shown = show_value(value);
        UsageError(match self.origin(section, key) {
            Origin::File(file) => format!("{file}: {section}.{key} = {shown}: expected {expected}"),
            Origin::Set(text) => format!("--set {text}: {section}.{key} = {shown}: expected {expected}"),
        })
    }

    fn int(&self, t: &mut Table, section: &str, key: &str, min: i64, max: i64, default: usize) -> Result<usize, UsageError> {
        match t.remove(key) {
            None => Ok(default),
            Some(Value::Integer(i)) if (min..=max).contains(&i) => Ok(i as usize),
            Some(v @ Value::Integer(_)) => Err(self.err(section, key, &v, range_text(min, max))),
            Some(v) => Err(self.err(section, key, &v, range_text(min, max))),
        }
    }

    fn u64(&self, t: &mut Table, section: &str, key: &str, default: u64) -> Result<u64, UsageError> {
        match t.remove(key) {
            None => Ok(default),
            Some(Value::Integer(i)) if i >= 0 => Ok(i as u64),
            Some(v) => Err(self.err(section, key, &v, "an integer >= 0")),
        }
    }

    /// A finite float; integers are accepted (`lr = 1`).
    fn float(&self, t: &mut Table, section: &str, key: &str, ok: impl Fn(f64) -> bool, expected: &str) -> Result<Option<f64>, UsageError> {
        match t.remove(key) {
            None => Ok(None),
            Some(v) => {
                let x = match &v {
                    Value::Float(f) => *f,
                    Value::Integer(i) => *i as f64,
                    _ => return Err(self.err(section, key, &v, format!("a number {expected}"))),
                };
                if x.is_finite() && ok(x) {
                    Ok(Some(x))
                } else {
                    Err(self.err(section, key, &v, format!("a finite number {expected}")))
                }
            }
        }
    }

    fn string(&self, t: &mut Table, section: &str, key: &str) -> Result<Option<String>, UsageError> {
        match t.remove(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.err(section, key, &v, "a string")),
        }
    }

    fn choice<T: Copy>(&self, t: &mut Table, section: &str, key: &str, options: &[(&str, T)]) -> Result<Option<T>, UsageError> {
        let names = || options.iter().map(|(n, _)| format!("\"{n}\"")).collect::<Vec<_>>().join(" or ");
        match t.remove(key) {
            None => Ok(None),
            Some(Value::String(s)) => match options.iter().find(|(n, _)| *n == s) {
                Some((_, v)) => Ok(Some(*v)),
                None => Err(self.err(section, key, &Value::String(s), names())),
            },
            Some(v) => Err(self.err(section, key, &v, names())),
        }
    }

    fn bool(&self, t: &mut Table, section: &str, key: &str, default: bool) -> Result<bool, UsageError> {
        match t.remove(key) {
            None => Ok(default),
            Some(Value::Boolean(b)) => Ok(b),
            Some(v) => Err(self.err(section, key, &v, "true or false")),
        }
    }

    fn strings(&self, t: &mut Table, section: &str, key: &str) -> Result<Option<Vec<String>>, UsageError> {
        match t.remove(key) {
            None => Ok(None),
            Some(Value::Array(a)) if a.iter().all(Value::is_str) => {
                Ok(Some(a.into_iter().map(|v| v.as_str().unwrap_or_default().to_string()).collect()))
            }
            Some(v) => Err(self.err(section, key, &v, "an array of strings")),
        }
    }

    /// After a section's keys were taken: anything left is unknown.
    fn no_more(&self, t: &Table, section: &str, known: &[&str]) -> Result<(), UsageError> {
        if let Some(key) = t.keys().next() {
            let place = match self.origin(section, key) {
                Origin::File(f) => f.to_string(),
                Origin::Set(text) => format!("--set {text}"),
            };
            return Err(UsageError(format!("{place}: unknown key {section}.{key}; expected one of: {}", known.join(", "))));
        }
        Ok(())
    }
}

impl Reader<'_> {
    /// `[data]`.
    fn data(&self, mut t: Table, d: &DataConfig) -> Result<DataConfig, UsageError> {
        let (r, s) = (self, "data");
        let data = DataConfig {
            corpus: {
                let expected = "\"timemachine\", a path to a text file or a directory, or a list of paths";
                match t.remove("corpus") {
                    None => d.corpus.clone(),
                    Some(Value::String(c)) if !c.trim().is_empty() => CorpusSource::Path(c),
                    Some(Value::Array(a)) if !a.is_empty() && a.iter().all(|v| v.as_str().is_some_and(|p| !p.trim().is_empty())) => {
                        CorpusSource::List(a.iter().filter_map(Value::as_str).map(String::from).collect())
                    }
                    Some(v) => return Err(r.err(s, "corpus", &v, expected)),
                }
            },
            include: match r.string(&mut t, s, "include")? {
                Some(i) if include_patterns(&i).iter().any(|p| p.is_empty() || p.contains('/')) => {
                    return Err(r.err(
                        s,
                        "include",
                        &Value::String(i),
                        "comma-separated file-name patterns such as \"*.c,*.h\" (none empty, no '/': they match names, not paths)",
                    ))
                }
                i => i,
            },
            preprocess: r.choice(&mut t, s, "preprocess", &[("d2l", Preprocess::D2l), ("raw", Preprocess::Raw)])?.unwrap_or(d.preprocess),
            max_tokens: r.int(&mut t, s, "max_tokens", 0, i64::MAX, d.max_tokens)?,
            min_freq: r.int(&mut t, s, "min_freq", 0, i64::MAX, d.min_freq)?,
            reserved_tokens: r.strings(&mut t, s, "reserved_tokens")?.unwrap_or_default(),
            val_fraction: r.float(&mut t, s, "val_fraction", |x| (0.0..1.0).contains(&x), "in [0, 1)")?.unwrap_or(d.val_fraction),
            partition: r
                .choice(&mut t, s, "partition", &[("sequential", SeqPartition::Sequential), ("random", SeqPartition::Random)])?
                .unwrap_or(d.partition),
            batch_size: r.int(&mut t, s, "batch_size", 1, MAX_BATCH, d.batch_size)?,
            num_steps: r.int(&mut t, s, "num_steps", 1, MAX_STEPS, d.num_steps)?,
        };
        r.no_more(&t, s, DATA_KEYS)?;
        Ok(data)
    }

    /// `[train]`.
    fn train(&self, mut t: Table, d: &TrainConfig) -> Result<TrainConfig, UsageError> {
        let (r, s) = (self, "train");
        let device = match r.string(&mut t, s, "device")? {
            Some(dev) => {
                if crate::platform::device::parse_device_name(&dev).is_none() {
                    return Err(r.err(s, "device", &Value::String(dev), "\"auto\", \"cpu\", \"cuda\" or \"cuda:N\""));
                }
                dev
            }
            None => d.device.clone(),
        };
        let train = TrainConfig {
            epochs: r.int(&mut t, s, "epochs", 1, MAX_COUNT, d.epochs)?,
            epoch_steps: r.int(&mut t, s, "epoch_steps", 0, MAX_COUNT, d.epoch_steps)?,
            max_minutes: r.float(&mut t, s, "max_minutes", |x| x >= 0.0, ">= 0 minutes (0: no limit)")?.unwrap_or(d.max_minutes),
            optimizer: r
                .choice(&mut t, s, "optimizer", &[("sgd", OptimizerKind::Sgd), ("adam", OptimizerKind::Adam)])?
                .unwrap_or(d.optimizer),
            lr: r.float(&mut t, s, "lr", |x| x > 0.0, "> 0")?.unwrap_or(d.lr),
            lr_schedule: r
                .choice(
                    &mut t,
                    s,
                    "lr_schedule",
                    &[("constant", LrSchedule::Constant), ("step", LrSchedule::Step), ("cosine", LrSchedule::Cosine)],
                )?
                .unwrap_or(d.lr_schedule),
            lr_decay: r.float(&mut t, s, "lr_decay", |x| x > 0.0 && x <= 1.0, "in (0, 1]")?.unwrap_or(d.lr_decay),
            lr_decay_every: r.int(&mut t, s, "lr_decay_every", 1, MAX_COUNT, d.lr_decay_every)?,
            warmup_epochs: r.int(&mut t, s, "warmup_epochs", 0, MAX_COUNT, d.warmup_epochs)?,
            grad_clip: r.float(&mut t, s, "grad_clip", |x| x > 0.0, "> 0")?.unwrap_or(d.grad_clip),
            seed: r.u64(&mut t, s, "seed", d.seed)?,
            device,
            threads: r.int(&mut t, s, "threads", 0, MAX_THREADS, d.threads)?,
            predict_every: r.int(&mut t, s, "predict_every", 0, MAX_COUNT, d.predict_every)?,
            checkpoint_every: r.int(&mut t, s, "checkpoint_every", 0, MAX_COUNT, d.checkpoint_every)?,
            val_every: r.int(&mut t, s, "val_every", 1, MAX_COUNT, d.val_every)?,
            deterministic: r.bool(&mut t, s, "deterministic", d.deterministic)?,
            precision: r.choice(&mut t, s, "precision", &[("f32", Precision::F32), ("bf16", Precision::Bf16)])?.unwrap_or(d.precision),
            cuda_graph: r.bool(&mut t, s, "cuda_graph", d.cuda_graph)?,
            tensorboard: r.bool(&mut t, s, "tensorboard", d.tensorboard)?,
            progress_seconds: r
                .float(&mut t, s, "progress_seconds", |x| x >= 0.0, ">= 0 (0: no progress lines)")?
                .unwrap_or(d.progress_seconds),
            patience: r.int(&mut t, s, "patience", 0, MAX_COUNT, d.patience)?,
            init_from: match r.string(&mut t, s, "init_from")? {
                Some(p) if p.trim().is_empty() => return Err(r.err(s, "init_from", &Value::String(p), "a run directory")),
                other => other,
            },
        };
        r.no_more(&t, s, TRAIN_KEYS)?;
        Ok(train)
    }

    /// `[sample]`.
    fn sample(&self, mut t: Table, d: &SampleConfig) -> Result<SampleConfig, UsageError> {
        let (r, s) = (self, "sample");
        let prefixes_value = t.get("prefixes").cloned();
        let prefixes = r.strings(&mut t, s, "prefixes")?.unwrap_or_else(|| d.prefixes.clone());
        if prefixes.iter().any(String::is_empty) {
            return Err(r.err(s, "prefixes", &prefixes_value.unwrap_or(Value::Array(vec![])), "non-empty strings"));
        }
        let sample = SampleConfig {
            prefixes,
            len: r.int(&mut t, s, "len", 1, MAX_SAMPLE_LEN as i64, d.len)?,
            temperature: r.float(&mut t, s, "temperature", |x| x > 0.0, "> 0")?,
            top_k: match r.int(&mut t, s, "top_k", 1, MAX_COUNT, 0)? {
                0 => None,
                k => Some(k),
            },
            top_p: r.float(&mut t, s, "top_p", |x| x > 0.0 && x <= 1.0, "in (0, 1]")?,
            seed: r.u64(&mut t, s, "seed", d.seed)?,
        };
        r.no_more(&t, s, SAMPLE_KEYS)?;
        Ok(sample)
    }

    /// `[model]`.
    /// The GRU's own keys, `model.reset_gate` and `model.gru_gates`, checked
    /// against the cell and the model kind.
    fn gru_options(&self, t: &mut Table, cell: CellKind, kind: ModelKind) -> Result<(Option<ResetGate>, GruGates), UsageError> {
        let (r, s) = (self, "model");
        let reset_value = t.get("reset_gate").cloned();
        let reset_gate = r.choice(t, s, "reset_gate", &[("before", ResetGate::Before), ("after", ResetGate::After)])?;
        let gates_value = t.get("gru_gates").cloned();
        let gru_gates = r.choice(
            t,
            s,
            "gru_gates",
            &[("both", GruGates::Both), ("reset-only", GruGates::ResetOnly), ("update-only", GruGates::UpdateOnly)],
        )?;
        // The GRU-only keys say so for the other cells, rather than being ignored.
        if !cell.has_gru_options() {
            for (key, value) in [("reset_gate", &reset_value), ("gru_gates", &gates_value)] {
                if let Some(v) = value {
                    return Err(r.err(s, key, v, format!("no value for model.cell = \"{}\" ({key} applies to the GRU only)", cell.name())));
                }
            }
        }
        let gru_gates = gru_gates.unwrap_or(GruGates::Both);
        if kind == ModelKind::Builtin && gru_gates != GruGates::Both {
            return Err(r.err(
                s,
                "gru_gates",
                gates_value.as_ref().unwrap_or(&Value::String(String::new())),
                "\"both\" for model.kind = \"builtin\" (libtorch's GRU has both gates; the ablations are scratch only)",
            ));
        }
        // The built-in (cuDNN) GRU only computes the reset-after variant, so that is
        // its default; asking it for the other one is an error, not a silent swap.
        // Without a reset gate the placement is moot ("before", one bias).
        let reset_gate = match (cell, kind, gru_gates, reset_gate) {
            _ if !cell.has_gru_options() => None,
            (_, ModelKind::Builtin, _, Some(ResetGate::Before)) => {
                return Err(r.err(
                    s,
                    "reset_gate",
                    reset_value.as_ref().unwrap_or(&Value::String("before".into())),
                    "\"after\" for model.kind = \"builtin\" (libtorch's GRU computes only the reset-after variant; use model.kind = \"scratch\" for \"before\")",
                ))
            }
            (_, ModelKind::Builtin, ..) => Some(ResetGate::After),
            (_, _, GruGates::UpdateOnly, Some(ResetGate::After)) => {
                return Err(r.err(
                    s,
                    "reset_gate",
                    reset_value.as_ref().unwrap_or(&Value::String("after".into())),
                    "\"before\" or no value for model.gru_gates = \"update-only\" (without a reset gate both placements are one function)",
                ))
            }
            (_, _, _, g) => Some(g.unwrap_or(ResetGate::Before)),
        };
        Ok((reset_gate, gru_gates))
    }

    fn model(&self, mut t: Table, d: &ModelConfig) -> Result<ModelConfig, UsageError> {
        let (r, s) = (self, "model");
        let kind = r.choice(&mut t, s, "kind", &[("scratch", ModelKind::Scratch), ("builtin", ModelKind::Builtin)])?.unwrap_or(d.kind);
        let cell = r.choice(&mut t, s, "cell", &CellKind::ALL.map(|c| (c.name(), c)))?.unwrap_or(d.cell);
        if kind == ModelKind::Builtin && cell.builtin().is_none() {
            let v = Value::String("builtin".into());
            return Err(r.err(
                s,
                "kind",
                &v,
                format!("\"scratch\" for model.cell = \"{}\" (libtorch has no {} cell)", cell.name(), cell.label()),
            ));
        }
        let (reset_gate, gru_gates) = r.gru_options(&mut t, cell, kind)?;
        let sigma_value = t.get("init_sigma").cloned();
        let init_sigma = r.float(&mut t, s, "init_sigma", |x| x > 0.0, "> 0")?;
        if let (ModelKind::Builtin, Some(v)) = (kind, sigma_value.filter(|_| init_sigma.is_some())) {
            return Err(r.err(
                s,
                "init_sigma",
                &v,
                "no value for model.kind = \"builtin\" (it is initialised as PyTorch's modules; init_sigma applies to the scratch model)",
            ));
        }
        let model = ModelConfig {
            kind,
            cell,
            hidden_size: r.int(&mut t, s, "hidden_size", 1, MAX_HIDDEN, d.hidden_size)?,
            num_layers: r.int(&mut t, s, "num_layers", 1, MAX_LAYERS, d.num_layers)?,
            reset_gate,
            gru_gates,
            init_sigma: match kind {
                ModelKind::Scratch => init_sigma.or(d.init_sigma),
                ModelKind::Builtin => None,
            },
            dropout: r.float(&mut t, s, "dropout", |x| (0.0..1.0).contains(&x), "in [0, 1)")?.unwrap_or(d.dropout),
            weight_drop: {
                let value = t.get("weight_drop").cloned();
                let p = r.float(&mut t, s, "weight_drop", |x| (0.0..1.0).contains(&x), "in [0, 1)")?.unwrap_or(d.weight_drop);
                match value {
                    Some(v) if p > 0.0 && cell.hidden_gate_count(gru_gates) == 0 => {
                        return Err(r.err(
                            s,
                            "weight_drop",
                            &v,
                            format!(
                                "0 for model.cell = \"{}\" (its gates read X_t alone: it has no hidden-to-hidden weights to drop)",
                                cell.name()
                            ),
                        ))
                    }
                    _ => p,
                }
            },
        };
        r.no_more(&t, s, MODEL_KEYS)?;
        Ok(model)
    }
}

/// The range a key takes; `i64::MAX` means no upper bound of grulm's.
fn range_text(min: i64, max: i64) -> String {
    if max == i64::MAX {
        format!("an integer >= {min}")
    } else {
        format!("an integer from {min} to {max}")
    }
}

fn show_value(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Table(_) => "a table".into(),
        other => other.to_string(),
    }
}

const DATA_KEYS: &[&str] = &[
    "corpus",
    "include",
    "preprocess",
    "max_tokens",
    "min_freq",
    "reserved_tokens",
    "val_fraction",
    "partition",
    "batch_size",
    "num_steps",
];
const MODEL_KEYS: &[&str] =
    &["kind", "cell", "hidden_size", "num_layers", "reset_gate", "gru_gates", "init_sigma", "dropout", "weight_drop"];
const TRAIN_KEYS: &[&str] = &[
    "epochs",
    "epoch_steps",
    "max_minutes",
    "optimizer",
    "lr",
    "lr_schedule",
    "lr_decay",
    "lr_decay_every",
    "warmup_epochs",
    "grad_clip",
    "seed",
    "device",
    "threads",
    "predict_every",
    "checkpoint_every",
    "val_every",
    "deterministic",
    "precision",
    "cuda_graph",
    "tensorboard",
    "progress_seconds",
    "patience",
    "init_from",
];
const SAMPLE_KEYS: &[&str] = &["prefixes", "len", "temperature", "top_k", "top_p", "seed"];
const SECTIONS: &[&str] = &["data", "model", "train", "sample"];

/// Keys that may change when a run is resumed: how long and where it runs
/// (threads, the products' precision), what it prints, the step size (to recover from divergence with a lower lr) and
/// dropout and weight drop (against overfitting seen late); not the data, the
/// model's shape or the optimiser.
pub(crate) const RESUMABLE_KEYS: &[&str] = &[
    "train.epochs",
    "train.max_minutes",
    "train.lr",
    "train.lr_schedule",
    "train.lr_decay",
    "train.lr_decay_every",
    "train.warmup_epochs",
    "train.grad_clip",
    "train.device",
    "train.threads",
    "train.precision",
    "train.predict_every",
    "train.checkpoint_every",
    "train.val_every",
    "train.cuda_graph",
    "train.tensorboard",
    "train.progress_seconds",
    "train.patience",
    "model.dropout",
    "model.weight_drop",
];

impl Config {
    /// Checks a resumed run's config against the run's own (`saved`, from the
    /// file `saved_path`): only [`RESUMABLE_KEYS`] and `sample.*` may differ.
    pub(crate) fn check_resumable(&self, saved: &Config, saved_path: &str) -> anyhow::Result<()> {
        let changed: Vec<String> =
            self.differing_keys(saved).into_iter().filter(|k| !k.starts_with("sample.") && !RESUMABLE_KEYS.contains(&k.as_str())).collect();
        if !changed.is_empty() {
            return Err(crate::usage!(
                "--resume: {} differ(s) from the run's {saved_path}; a resumed run may only change {} and sample.*",
                changed.join(", "),
                RESUMABLE_KEYS.join(", ")
            ));
        }
        Ok(())
    }

    /// Parses a config text (named `source` in errors), applies `--set` overrides
    /// (`section.key=value`, the value in TOML syntax, a bare word taken as a
    /// string), fills in d2l's defaults and validates everything.
    pub fn parse(text: &str, source: &str, sets: &[String]) -> Result<Config, UsageError> {
        let mut root: Table = text.parse().map_err(|e: toml::de::Error| {
            let msg = e.message().replace('\n', " ");
            let at = e.span().map(|s| line_col(text, s.start)).unwrap_or_default();
            UsageError(format!("{source}{at}: malformed TOML: {msg}"))
        })?;
        let mut overrides = Vec::new();
        for set in sets {
            let (section, key, value) = parse_set(set)?;
            let tbl = root.entry(section.clone()).or_insert_with(|| Value::Table(Table::new()));
            match tbl {
                Value::Table(t) => {
                    t.insert(key.clone(), value);
                }
                _ => return Err(UsageError(format!("--set {set}: {section} is not a table in {source}"))),
            }
            overrides.push((format!("{section}.{key}"), set.clone()));
        }
        let r = Reader { source, overrides };
        let d = Config::default();

        for (name, v) in &root {
            if !SECTIONS.contains(&name.as_str()) {
                let place = match r.overrides.iter().find(|(k, _)| k.starts_with(&format!("{name}."))) {
                    Some((_, text)) => format!("--set {text}"),
                    None => source.to_string(),
                };
                return Err(UsageError(format!("{place}: unknown section [{name}]; expected one of: {}", SECTIONS.join(", "))));
            }
            if !v.is_table() {
                return Err(UsageError(format!("{source}: {name} = {}: expected a [{name}] section", show_value(v))));
            }
        }
        let mut section = |name: &str| match root.remove(name) {
            Some(Value::Table(t)) => t,
            _ => Table::new(),
        };

        let data = r.data(section("data"), &d.data)?;
        let model = r.model(section("model"), &d.model)?;
        let train = r.train(section("train"), &d.train)?;
        if train.patience > 0 && data.val_fraction == 0.0 {
            return Err(r.err(
                "train",
                "patience",
                &Value::Integer(train.patience as i64),
                "0 without a validation split (set data.val_fraction, e.g. 0.1)",
            ));
        }
        let sample = r.sample(section("sample"), &d.sample)?;
        Ok(Config { data, model, train, sample })
    }

    /// The resolved config as TOML, every key written out (saved with each run).
    pub fn to_toml(&self) -> String {
        let header = "# Resolved by grulm: every key, defaults included.\n";
        header.to_string() + &toml::to_string(self).expect("config serializes to TOML")
    }

    /// Keys whose values differ between two configs, as `section.key` (for
    /// `--resume` with a changed config).
    /// A key's value as TOML (`model.hidden_size` -> `256`), for messages.
    pub(crate) fn value_of(&self, key: &str) -> String {
        let v = Value::try_from(self).expect("config to TOML value");
        let (section, k) = key.split_once('.').unwrap_or((key, ""));
        v.get(section).and_then(|t| t.get(k)).map(show_value).unwrap_or_else(|| "unset".into())
    }

    pub fn differing_keys(&self, other: &Config) -> Vec<String> {
        let a = Value::try_from(self).expect("config to TOML value");
        let b = Value::try_from(other).expect("config to TOML value");
        let mut out = Vec::new();
        for section in SECTIONS {
            let (sa, sb) = (a.get(section), b.get(section));
            let keys: std::collections::BTreeSet<&String> =
                sa.and_then(Value::as_table).into_iter().chain(sb.and_then(Value::as_table)).flat_map(|t| t.keys()).collect();
            for k in keys {
                if sa.and_then(|t| t.get(k)) != sb.and_then(|t| t.get(k)) {
                    out.push(format!("{section}.{k}"));
                }
            }
        }
        out
    }
}

/// Longest sample grulm will generate; the output is streamed, so memory stays
/// bounded, but a typo of 10^12 should not run forever.
pub(crate) const MAX_SAMPLE_LEN: usize = 10_000_000;

/// `section.key=value` -> (section, key, TOML value). A value that is not valid
/// TOML is taken as a string, so `--set model.kind=builtin` works unquoted.
pub fn parse_set(set: &str) -> Result<(String, String, Value), UsageError> {
    let bad = |why: &str| UsageError(format!("--set {set}: {why}; expected SECTION.KEY=VALUE, e.g. --set train.lr=0.5"));
    let (lhs, rhs) = set.split_once('=').ok_or_else(|| bad("no '='"))?;
    let (section, key) = lhs.trim().split_once('.').ok_or_else(|| bad("the key has no section"))?;
    let ident = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !ident(section) || !ident(key) {
        return Err(bad("malformed key"));
    }
    let rhs = rhs.trim();
    if rhs.is_empty() {
        return Err(bad("empty value"));
    }
    let value = match format!("v = {rhs}").parse::<Table>() {
        Ok(mut t) => t.remove("v").unwrap_or(Value::String(rhs.into())),
        Err(_) => Value::String(rhs.into()),
    };
    Ok((section.to_string(), key.to_string(), value))
}

fn line_col(text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
    format!(":{line}:{col}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_is_d2l_defaults() {
        assert_eq!(Config::parse("", "x.toml", &[]).unwrap(), Config::default());
    }

    #[test]
    fn resolved_config_round_trips() {
        let c = Config::parse("[model]\nkind = \"builtin\"\n[sample]\ntemperature = 0.5\n", "x.toml", &[]).unwrap();
        assert_eq!(Config::parse(&c.to_toml(), "resolved", &[]).unwrap(), c);
    }
}

/// `train.optimizer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Sgd,
    Adam,
}

/// The learning rate per epoch (`train.lr_schedule`). d2l keeps it constant;
/// char-rnn decays it by a factor every epoch (`step`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    Constant,
    Step,
    Cosine,
}

impl LrSchedule {
    /// The learning rate of epoch `e` (1-based) of `epochs`: a linear warm-up
    /// over the first `warmup` epochs (lr·e/W), then, counting k = e − W from 1
    /// and K = epochs − W:
    /// constant lr; step lr·decay^⌊(k−1)/every⌋; cosine lr·(1 + cos(π(k−1)/K))/2.
    /// A function of the epoch alone, so `--resume` continues it exactly.
    pub(crate) fn lr_at(self, lr: f64, e: usize, epochs: usize, warmup: usize, decay: f64, every: usize) -> f64 {
        if e <= warmup {
            return lr * e as f64 / warmup as f64;
        }
        let (k, n) = ((e - warmup) as f64, epochs.saturating_sub(warmup).max(1) as f64);
        match self {
            LrSchedule::Constant => lr,
            LrSchedule::Step => lr * decay.powi(((e - warmup - 1) / every.max(1)) as i32),
            LrSchedule::Cosine => lr * 0.5 * (1.0 + (std::f64::consts::PI * (k - 1.0) / n).cos()),
        }
    }
}
