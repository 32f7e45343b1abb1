//! The command line (clap). Everything clap-shaped stays here: each command turns
//! its arguments into a validated [`Config`] or plain values and calls the library.
use crate::config::{Config, MAX_SAMPLE_LEN};
use crate::platform::console::Console;
use crate::data;
use crate::error::libtorch;
use crate::train::memory::{self, Estimate};
use crate::model::layout::{scratch_to_pytorch, BiasHh};
use crate::model::{CellKind, ModelKind, ScratchPath};
use crate::run::{self, RunDir};
use crate::infer::sample::{self, Decode};
use crate::train::{self, TrainOptions};
use crate::platform::device;
use crate::tools::{bench, gates, parity};
use crate::{sweep, usage};
use anyhow::{Context, Result};
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use std::io::Write;
use std::path::PathBuf;

const EXIT_CODES: &str = "Exit codes: 0 success; 1 runtime failure (I/O, download, corrupt checkpoint, diverged training, a libtorch failure); 2 usage or config error (bad flag, key or value, unknown prefix characters, existing run, too large for the memory at hand); 130, 143 training stopped by SIGINT, SIGTERM (resumable).";

/// Character-level GRU language models on libtorch: d2l.ai's "Gated Recurrent
/// Units" chapter, from scratch and with libtorch's fused GRU.
#[derive(Parser, Debug)]
#[command(name = "grulm", version, after_help = EXIT_CODES)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print grulm's and libtorch's versions, CUDA and cuDNN availability, CPU threads.
    #[command(after_help = EXIT_CODES)]
    Info,
    /// Train an experiment (a TOML config; defaults are d2l's GRU chapter).
    #[command(after_help = EXIT_CODES)]
    Train(TrainArgs),
    /// Generate text from a trained run: greedy by default, or sampled.
    #[command(after_help = EXIT_CODES)]
    Sample(SampleArgs),
    /// Perplexity of a trained run on a text.
    #[command(after_help = EXIT_CODES)]
    Eval(EvalArgs),
    /// Compare a scratch cell with libtorch's (GRU reset-after, LSTM, RNN): outputs and every gradient.
    #[command(after_help = EXIT_CODES)]
    Parity(ParityArgs),
    /// Draw a trained GRU's or LSTM's gates over a text: a heatmap per gate of the top layer and their means (SVG).
    #[command(after_help = EXIT_CODES)]
    Gates(GatesArgs),
    /// Many runs of one experiment: expand a sweep file into run directories and train them; status; report.
    #[command(after_help = EXIT_CODES)]
    Sweep(SweepArgs),
    /// Write a run's weights under PyTorch's names (nn.RNN/nn.GRU/nn.LSTM + nn.Linear), for d2l's RNNModel.
    #[command(after_help = EXIT_CODES)]
    Export(ExportArgs),
    /// Print a shell completion script: `grulm completions bash > ~/.local/share/bash-completion/completions/grulm`.
    #[command(after_help = EXIT_CODES)]
    Completions(CompletionsArgs),
    /// Time training steps of the models and cells (tokens/s, peak memory), optionally beside Python PyTorch.
    #[command(after_help = EXIT_CODES)]
    Bench(bench::BenchArgs),
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Experiment file (TOML with [data], [model], [train], [sample]); omitted: d2l's defaults.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override a key, e.g. --set train.lr=0.5 (repeatable; the value in TOML syntax).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub sets: Vec<String>,
    /// auto (CUDA if available), cpu, cuda or cuda:N; overrides train.device.
    #[arg(long)]
    pub device: Option<String>,
    /// Run directory [default: runs/<config file name>].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run in --out from its last checkpoint (optimizer state included).
    #[arg(long, conflicts_with = "force")]
    pub resume: bool,
    /// Replace an existing run in --out.
    #[arg(long)]
    pub force: bool,
    /// Plain lines instead of a progress bar.
    #[arg(long, short)]
    pub quiet: bool,
    /// Start from another run's weights (best, else last) and vocabulary, with a fresh optimizer: fine-tuning.
    /// Sets train.init_from.
    #[arg(long, value_name = "RUN", conflicts_with = "resume")]
    pub init_from: Option<PathBuf>,
    /// Print the parameter count and the memory estimate, and whether it fits; train nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Args, Debug)]
pub struct SampleArgs {
    /// Run directory of a trained model.
    #[arg(long)]
    pub run: PathBuf,
    /// Which weights: best (the lowest validation perplexity; the run must validate) or last [default: best where the run has it, else last].
    #[arg(long, value_enum)]
    pub checkpoint: Option<CheckpointArg>,
    /// Text to start from [default: the run's first sample.prefixes].
    #[arg(long, conflicts_with_all = ["prefix_file", "interactive"])]
    pub prefix: Option<String>,
    /// Read the prefix from a file (one trailing newline is dropped).
    #[arg(long, value_name = "FILE", conflicts_with = "interactive")]
    pub prefix_file: Option<PathBuf>,
    /// Read a prefix per line from stdin and print a sample for each (the model loads once).
    #[arg(long)]
    pub interactive: bool,
    /// Independent samples, generated together (one forward per character for all); separated by a blank line.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub num_samples: usize,
    /// Stop a sample once this text appears in what it generates (the text is kept).
    #[arg(long, value_name = "STRING")]
    pub stop: Option<String>,
    /// Characters to generate [default: the run's sample.len].
    #[arg(long)]
    pub len: Option<usize>,
    /// Sample from softmax(logits / T) instead of taking the argmax.
    #[arg(long)]
    pub temperature: Option<f64>,
    /// Sample among the K most likely characters only.
    #[arg(long = "top-k", value_name = "K")]
    pub top_k: Option<usize>,
    /// Sample among the fewest most likely characters whose probabilities sum to P (nucleus sampling).
    #[arg(long = "top-p", value_name = "P")]
    pub top_p: Option<f64>,
    /// Seed for sampling [default: the run's sample.seed].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Take the argmax even if the run's config sets a temperature or top-k.
    #[arg(long, conflicts_with_all = ["temperature", "top_k", "top_p"])]
    pub greedy: bool,
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Run directory of a trained model.
    #[arg(long)]
    pub run: PathBuf,
    /// Which weights: best (the lowest validation perplexity; the run must validate) or last [default: best where the run has it, else last].
    #[arg(long, value_enum)]
    pub checkpoint: Option<CheckpointArg>,
    /// `timemachine` or a path to a text [default: the run's data.corpus]. The whole text is read.
    #[arg(long, conflicts_with = "split")]
    pub corpus: Option<String>,
    /// The run's own split of its corpus: train, val (its validation split) or all (the whole text) [default: all].
    #[arg(long, value_enum)]
    pub split: Option<Split>,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Print one JSON object (perplexity, bits per character, tokens) instead of a sentence.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct GatesArgs {
    /// Run directory of a trained GRU or LSTM.
    #[arg(long)]
    pub run: PathBuf,
    /// The text to run the model over, from a zero state (preprocessed as the run's data.preprocess; at most 400 characters).
    #[arg(long, conflicts_with = "text_file", required_unless_present = "text_file")]
    pub text: Option<String>,
    /// Read the text from a file instead.
    #[arg(long)]
    pub text_file: Option<PathBuf>,
    /// Where to write the SVG [default: RUN/gates.svg].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Draw these hidden units, in this order (e.g. 0,5,17) [default: all, or the --max-units whose first gate varies most; sorted by its mean].
    #[arg(long, value_delimiter = ',')]
    pub units: Option<Vec<usize>>,
    /// Draw at most this many units when --units is not given.
    #[arg(long, default_value_t = 32)]
    pub max_units: usize,
    /// Which weights: best (the run must validate) or last [default: best where the run has it, else last].
    #[arg(long, value_enum)]
    pub checkpoint: Option<CheckpointArg>,
}

#[derive(Args, Debug)]
pub struct SweepArgs {
    #[command(subcommand)]
    pub command: SweepCommand,
}

#[derive(Subcommand, Debug)]
pub enum SweepCommand {
    /// Expand FILE into one run directory per point and train them (again: skips finished points, resumes interrupted ones).
    Run(SweepRunArgs),
    /// Each point's state: pending, running, done, interrupted or failed (with its error).
    Status(SweepDirArgs),
    /// A table of the points (overrides, perplexities, tokens/s, wall time, a sample), best first, and DIR/report.svg.
    Report(SweepReportArgs),
}

#[derive(Args, Debug)]
pub struct SweepRunArgs {
    /// The sweep file (TOML: base, [set], and [grid], [[runs]] or [random]).
    pub file: PathBuf,
    /// The sweep directory [default: sweeps/<file stem>].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Trainings at a time [default: one per 2 CPU cores]; the threads are split between them.
    #[arg(long)]
    pub jobs: Option<usize>,
    /// The device every point trains on (auto, cpu, cuda, cuda:N) [default: each point's train.device; cuda with --gpus].
    #[arg(long)]
    pub device: Option<String>,
    /// Where the points run: here (local), or as a Slurm job array (slurm: writes DIR/sweep.sbatch and submits it).
    #[arg(long, value_enum, default_value = "local")]
    pub executor: Executor,
    /// Slurm: array tasks at a time (%M) [default: as many as Slurm allows].
    #[arg(long)]
    pub max_concurrent: Option<usize>,
    /// Slurm: CPUs per task (a point leaving train.threads at 0 uses them all).
    #[arg(long, default_value_t = 1)]
    pub cpus_per_task: usize,
    /// Slurm: memory per task (sbatch --mem, e.g. 4G).
    #[arg(long)]
    pub mem: Option<String>,
    /// Slurm: time limit per task (sbatch --time, e.g. 2:00:00); grulm checkpoints 120 s before it.
    #[arg(long)]
    pub time: Option<String>,
    /// Slurm: the partition.
    #[arg(long)]
    pub partition: Option<String>,
    /// Slurm: GPUs per task (--gres=gpu:N), and --device cuda.
    #[arg(long, default_value_t = 0)]
    pub gpus: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Executor {
    Local,
    Slurm,
}

#[derive(Args, Debug)]
pub struct SweepDirArgs {
    /// The sweep directory.
    pub dir: PathBuf,
}

#[derive(Args, Debug)]
pub struct SweepReportArgs {
    /// The sweep directory.
    pub dir: PathBuf,
    /// CSV instead of a Markdown table.
    #[arg(long)]
    pub csv: bool,
}

/// `--checkpoint`: which of a run's weights (see [`run::Weights`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CheckpointArg {
    Best,
    Last,
}

impl From<Option<CheckpointArg>> for run::Weights {
    fn from(c: Option<CheckpointArg>) -> run::Weights {
        match c {
            Some(CheckpointArg::Best) => run::Weights::Best,
            Some(CheckpointArg::Last) => run::Weights::Last,
            None => run::Weights::BestElseLast,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Split {
    Train,
    Val,
    All,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Dtype {
    F32,
    F64,
}

#[derive(Args, Debug)]
pub struct ParityArgs {
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long, value_enum, default_value = "f64")]
    pub dtype: Dtype,
    /// Layers to compare (each count from 1 to this).
    #[arg(long, default_value_t = 2)]
    pub layers: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: i64,
    /// The cell to compare (those libtorch has).
    #[arg(long, default_value = "gru", value_parser = parity_cells())]
    pub cell: CellKind,
    /// Dropout in the compared training step, from 0 to below 1 (CPU only): the
    /// scratch masks must be libtorch's own.
    #[arg(long, default_value_t = 0.0)]
    pub dropout: f64,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Run directory of a trained model.
    #[arg(long)]
    pub run: PathBuf,
    /// The format: PyTorch's state_dict names and layouts, as safetensors.
    #[arg(long, value_enum, default_value = "pytorch")]
    pub format: ExportFormat,
    /// Output file [default: RUN/pytorch.safetensors].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Which weights: best (the lowest validation perplexity; the run must validate) or last [default: best where the run has it, else last].
    #[arg(long, value_enum)]
    pub checkpoint: Option<CheckpointArg>,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum ExportFormat {
    Pytorch,
}

#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `parity --cell`: the cells libtorch has a twin of.
fn parity_cells() -> impl clap::builder::TypedValueParser<Value = CellKind> {
    use clap::builder::TypedValueParser;
    let names: Vec<&'static str> = CellKind::ALL.into_iter().filter(|c| c.builtin().is_some()).map(CellKind::name).collect();
    clap::builder::PossibleValuesParser::new(names).map(|n: String| CellKind::from_name(&n).expect("a listed cell"))
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Info => {
            print!("{}", device::info_report());
            Ok(())
        }
        // A libtorch failure the finer guards (train.rs) do not name is still one line.
        Command::Train(a) => libtorch(|| "training".into(), || train_cmd(a))?,
        Command::Sample(a) => libtorch(|| "sampling".into(), || sample_cmd(a))?,
        Command::Eval(a) => libtorch(|| "evaluating".into(), || eval_cmd(a))?,
        Command::Parity(a) => libtorch(|| "checking parity".into(), || parity_cmd(a))?,
        Command::Gates(a) => libtorch(|| "drawing the gates".into(), || gates_cmd(a))?,
        Command::Sweep(a) => libtorch(|| "running the sweep".into(), || sweep_cmd(a))?,
        Command::Bench(a) => libtorch(|| "benchmarking".into(), || bench::run(a))?,
        Command::Export(a) => libtorch(|| "exporting".into(), || export_cmd(a))?,
        Command::Completions(a) => {
            clap_complete::generate(a.shell, &mut Cli::command(), "grulm", &mut std::io::stdout());
            Ok(())
        }
    }
}

/// Keys that may change when a run is resumed: how long and where it runs, what
/// it prints, the step size (to recover from divergence with a lower lr) and
/// dropout (against overfitting seen late); not the data, the model's shape or
/// the optimiser.
const RESUMABLE_KEYS: &[&str] = &[
    "train.epochs",
    "train.lr",
    "train.lr_schedule",
    "train.lr_decay",
    "train.lr_decay_every",
    "train.warmup_epochs",
    "train.grad_clip",
    "train.device",
    "train.threads",
    "train.predict_every",
    "train.checkpoint_every",
    "train.val_every",
    "train.cuda_graph",
    "train.tensorboard",
    "train.patience",
    "model.dropout",
];

fn train_cmd(a: TrainArgs) -> Result<()> {
    let out = a.out.clone().unwrap_or_else(|| run::default_run_dir(a.config.as_deref()));
    let run_dir = RunDir::new(out);
    let from_file = |path: &PathBuf| -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| usage!("config {}: cannot read: {e}", path.display()))?;
        Ok(Config::parse(&text, &path.display().to_string(), &a.sets)?)
    };
    let cfg = if a.resume {
        let saved = run_dir.load_config().map_err(|e| usage!("--resume: {e:#}"))?;
        let cfg = match &a.config {
            Some(p) => from_file(p)?,
            None => Config::parse(&saved.to_toml(), &run_dir.file(run::CONFIG).display().to_string(), &a.sets)?,
        };
        let changed: Vec<String> =
            cfg.differing_keys(&saved).into_iter().filter(|k| !k.starts_with("sample.") && !RESUMABLE_KEYS.contains(&k.as_str())).collect();
        if !changed.is_empty() {
            return Err(usage!(
                "--resume: {} differ(s) from the run's {}; a resumed run may only change {} and sample.*",
                changed.join(", "),
                run_dir.file(run::CONFIG).display(),
                RESUMABLE_KEYS.join(", ")
            ));
        }
        cfg
    } else {
        match &a.config {
            Some(p) => from_file(p)?,
            None => Config::parse("", "defaults", &a.sets)?,
        }
    };
    let mut cfg = cfg;
    if let Some(d) = &a.device {
        cfg.train.device = d.clone();
    }
    if let Some(src) = &a.init_from {
        cfg.train.init_from = Some(src.display().to_string());
    }
    device::set_threads(cfg.train.threads);
    if cfg.train.deterministic {
        device::make_deterministic();
    }
    let dev = device::resolve(&cfg.train.device)?;
    if a.dry_run {
        return dry_run(&cfg, dev);
    }
    crate::platform::test_pause::check()?;
    // Ctrl-C or SIGTERM: stop after the current minibatch with a checkpoint.
    crate::platform::interrupt::install();
    let console = Console::new(cfg.train.epochs, 0, a.quiet);
    let opts = TrainOptions { run: run_dir, resume: a.resume, force: a.force, device: dev };
    train::train(&cfg, &opts, &console)?;
    Ok(())
}

/// `train --dry-run`: what the run would need, without writing anything.
fn dry_run(cfg: &Config, dev: tch::Device) -> Result<()> {
    let corpus = data::Corpus::load(&cfg.data)?;
    // Fine-tuning keeps the source run's vocabulary, and its size is V.
    let v = match &cfg.train.init_from {
        Some(src) => RunDir::new(src).load_vocab().map_err(|e| usage!("train.init_from: {e:#}"))?.len(),
        None => corpus.vocab.len(),
    } as u64;
    let est = Estimate::new(cfg, v, corpus.train.len() as u64);
    let m = &cfg.model;
    println!(
        "parameters  {} (V = {v}, H = {}, {} layer(s), {} gate(s) each)",
        est.parameter_count,
        m.hidden_size,
        m.num_layers,
        m.gate_count()
    );
    println!("memory      about {}: {}", memory::bytes(est.total()), est.breakdown());
    match memory::available(dev) {
        Some(a) => println!("available   {} {} on {}", a.what, memory::bytes(a.bytes), device::describe(dev)),
        None => println!("available   unknown on {}", device::describe(dev)),
    }
    est.check(cfg, dev)?;
    println!("fits        yes");
    Ok(())
}

fn decode_for(a: &SampleArgs, cfg: &Config) -> Decode {
    if a.greedy {
        return Decode::Greedy;
    }
    let temperature = a.temperature.or(cfg.sample.temperature);
    let top_k = a.top_k.or(cfg.sample.top_k);
    let top_p = a.top_p.or(cfg.sample.top_p);
    Decode::from_options(temperature, top_k, top_p, a.seed.unwrap_or(cfg.sample.seed))
}

fn sample_cmd(a: SampleArgs) -> Result<()> {
    if let Some(t) = a.temperature {
        if t.is_nan() || t <= 0.0 {
            return Err(usage!("--temperature {t}: expected a number > 0"));
        }
    }
    if a.top_k == Some(0) {
        return Err(usage!("--top-k 0: expected 1 to the vocabulary size"));
    }
    if let Some(n) = a.len {
        if n == 0 || n > MAX_SAMPLE_LEN {
            return Err(usage!("--len {n}: expected 1 to {MAX_SAMPLE_LEN}"));
        }
    }
    if let Some(p) = a.top_p {
        if !(p > 0.0 && p <= 1.0) {
            return Err(usage!("--top-p {p}: expected a number in (0, 1]"));
        }
    }
    if a.num_samples == 0 || a.num_samples > MAX_SAMPLES {
        return Err(usage!("--num-samples {}: expected 1 to {MAX_SAMPLES}", a.num_samples));
    }
    if a.stop.as_deref() == Some("") {
        return Err(usage!("--stop: the text is empty"));
    }
    let dev = device::resolve(&a.device)?;
    let run_dir = RunDir::new(&a.run);
    let run::Trained { cfg, vocab, mut model, weights } = run_dir.load_model(dev, a.checkpoint.into())?;
    let decode = decode_for(&a, &cfg);
    decode.check(vocab.len())?;
    let len = a.len.unwrap_or(cfg.sample.len);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if a.interactive {
        weights.say_notes();
        // A prefix per line; a mistake in one line is said on stderr and the next is read.
        for line in std::io::stdin().lines() {
            let line = line.context("reading stdin")?;
            if line.is_empty() {
                continue;
            }
            match sample::encode_prefix(&vocab, &line) {
                Ok(ids) => write_samples(model.as_mut(), &vocab, &line, &ids, len, &a, decode, dev, &mut out)?,
                Err(e) => eprintln!("grulm: {e:#}"),
            }
        }
        return Ok(());
    }
    let prefix = match (&a.prefix, &a.prefix_file) {
        (Some(p), _) => p.clone(),
        (None, Some(f)) => {
            let text = std::fs::read_to_string(f).map_err(|e| usage!("--prefix-file {}: cannot read: {e}", f.display()))?;
            text.strip_suffix('\n').unwrap_or(&text).to_string()
        }
        (None, None) => cfg.sample.prefixes[0].clone(),
    };
    let ids = sample::encode_prefix(&vocab, &prefix)?;
    weights.say_notes();
    write_samples(model.as_mut(), &vocab, &prefix, &ids, len, &a, decode, dev, &mut out)
}

/// Most samples `--num-samples` makes at once (a batch of that many rows).
const MAX_SAMPLES: usize = 4096;

/// Prints `a.num_samples` samples after `prefix`, each ending at `a.stop` if it
/// appears. One sample is streamed as it is made; several are batched and printed
/// when done, separated by a blank line.
#[allow(clippy::too_many_arguments)]
fn write_samples(
    model: &mut dyn crate::model::RecurrentLm,
    vocab: &data::Vocab,
    prefix: &str,
    ids: &[i64],
    len: usize,
    a: &SampleArgs,
    decode: Decode,
    dev: tch::Device,
    out: &mut impl Write,
) -> Result<()> {
    let rows = a.num_samples;
    let stop = a.stop.as_deref();
    // Per row: the text generated so far (kept whole only when batched) and done.
    let mut texts = vec![String::new(); rows];
    let mut done = vec![false; rows];
    if rows == 1 {
        write!(out, "{prefix}")?;
    }
    sample::generate(model, ids, len, rows, decode, dev, &mut |chunk, width| {
        for r in 0..rows {
            if done[r] {
                continue;
            }
            let new = vocab.decode(&chunk[r * width..(r + 1) * width]);
            let from = texts[r].len();
            texts[r].push_str(&new);
            let end = stop.and_then(|s| sample::stop_end(&texts[r], s, from));
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

fn sweep_cmd(a: SweepArgs) -> Result<()> {
    match a.command {
        SweepCommand::Run(r) => {
            if r.jobs == Some(0) {
                return Err(usage!("--jobs 0: expected at least 1"));
            }
            let sweep = sweep::Sweep::load(&r.file)?;
            let dir = r.out.clone().unwrap_or_else(|| sweep.default_dir());
            match r.executor {
                Executor::Local => {
                    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
                    let jobs = r.jobs.unwrap_or((cores / 2).max(1));
                    sweep::local::run(&sweep, &dir, jobs, r.device.as_deref())
                }
                Executor::Slurm => {
                    if r.cpus_per_task == 0 || r.max_concurrent == Some(0) {
                        return Err(usage!("--cpus-per-task and --max-concurrent: expected at least 1"));
                    }
                    let o = sweep::slurm::SlurmOptions {
                        max_concurrent: r.max_concurrent,
                        cpus_per_task: r.cpus_per_task,
                        mem: r.mem,
                        time: r.time,
                        partition: r.partition,
                        gpus: r.gpus,
                        device: r.device,
                    };
                    sweep::slurm::run(&sweep, &dir, &o)
                }
            }
        }
        SweepCommand::Status(d) => {
            print!("{}", sweep::report::status(&d.dir)?);
            Ok(())
        }
        SweepCommand::Report(d) => {
            print!("{}", sweep::report::report(&d.dir, d.csv)?);
            Ok(())
        }
    }
}

/// Most rows a gates picture draws.
const MAX_GATE_UNITS: usize = 1024;

fn gates_cmd(a: GatesArgs) -> Result<()> {
    if a.max_units == 0 || a.max_units > MAX_GATE_UNITS {
        return Err(usage!("--max-units {}: expected 1 to {MAX_GATE_UNITS}", a.max_units));
    }
    if a.units.as_ref().is_some_and(|u| u.is_empty() || u.len() > MAX_GATE_UNITS) {
        return Err(usage!("--units: expected 1 to {MAX_GATE_UNITS} unit numbers, e.g. --units 0,5,17"));
    }
    let (flag, text) = match (&a.text, &a.text_file) {
        (Some(t), _) => ("--text", t.clone()),
        (None, Some(p)) => ("--text-file", data::read_text(p)?),
        (None, None) => return Err(usage!("--text or --text-file: give the text to draw the gates over")),
    };
    let request = gates::Request {
        run: &a.run,
        flag,
        text,
        out: a.out.clone(),
        units: a.units.as_deref(),
        max_units: a.max_units,
        weights: a.checkpoint.into(),
    };
    println!("{}", gates::draw(&request)?);
    Ok(())
}

fn eval_cmd(a: EvalArgs) -> Result<()> {
    let dev = device::resolve(&a.device)?;
    let run_dir = RunDir::new(&a.run);
    let run::Trained { cfg, vocab, mut model, weights } = run_dir.load_model(dev, a.checkpoint.into())?;
    let name = a.corpus.clone().unwrap_or_else(|| cfg.data.corpus.clone());
    let path = data::resolve_corpus(&name)?;
    let split = a.split.unwrap_or(Split::All);
    let (ids, unknown) = match split {
        Split::All => vocab.encode_text(&data::read_text(&path)?, cfg.data.preprocess),
        // The run's split, as training made it (data.max_tokens, data.val_fraction).
        Split::Train | Split::Val => {
            let corpus = data::Corpus::load(&cfg.data)?;
            if corpus.vocab != vocab {
                return Err(usage!(
                    "--split: corpus {} no longer gives the run's vocabulary ({}); it changed since the run was trained",
                    path.display(),
                    run_dir.file(run::VOCAB).display()
                ));
            }
            match (split, corpus.val) {
                (Split::Train, _) => (corpus.train, 0),
                (_, Some(val)) => (val, 0),
                (_, None) => return Err(usage!("--split val: the run has no validation split (data.val_fraction = 0)")),
            }
        }
    };
    weights.say_notes();
    let ppl = crate::infer::eval::perplexity(model.as_mut(), &ids, cfg.data.batch_size, cfg.data.num_steps, dev)
        .with_context(|| format!("corpus {}", path.display()))?;
    let split_name = format!("{split:?}").to_lowercase();
    if a.json {
        // bits per character: log2 of the per-character cross-entropy's exponent.
        let line = serde_json::json!({
            "perplexity": ppl,
            "bits_per_char": ppl.log2(),
            "tokens": ids.len(),
            "unknown": unknown,
            "corpus": path.display().to_string(),
            "split": split_name,
        });
        println!("{line}");
    } else {
        println!(
            "perplexity {ppl:.3} ({:.3} bits per character) on {} tokens of {} ({split_name}; {unknown} mapped to <unk>)",
            ppl.log2(),
            ids.len(),
            path.display()
        );
    }
    Ok(())
}

/// `grulm export`: the run's `model.safetensors` in PyTorch's names. A built-in
/// model has them already; a scratch one goes through the layout table, which
/// exists for the cells PyTorch computes (not the reset-before GRU or the ablations).
fn export_cmd(a: ExportArgs) -> Result<()> {
    let ExportFormat::Pytorch = a.format;
    let run_dir = RunDir::new(&a.run);
    let run::Trained { cfg, model, weights, .. } = run_dir.load_model(tch::Device::Cpu, a.checkpoint.into())?;
    let tensors = match cfg.model.kind {
        ModelKind::Builtin => model.named_parameters(),
        ModelKind::Scratch => {
            if cfg.model.cell == CellKind::Gru && cfg.model.gru_gates != crate::model::GruGates::Both {
                return Err(usage!(
                    "--run {}: a GRU with only one of its gates (model.gru_gates) has no PyTorch module to load into",
                    a.run.display()
                ));
            }
            if cfg.model.cell == CellKind::Gru && cfg.model.reset_gate != Some(crate::model::ResetGate::After) {
                return Err(usage!(
                    "--run {}: the scratch GRU with model.reset_gate = \"before\" (d2l's) is not the function PyTorch's nn.GRU computes; train with model.reset_gate = \"after\" to export",
                    a.run.display()
                ));
            }
            let params = model.named_parameters().into_iter().collect();
            scratch_to_pytorch(&params, cfg.model.cell, cfg.model.num_layers, BiasHh::Zero)?
        }
    };
    weights.say_notes();
    let out = a.out.unwrap_or_else(|| run_dir.file("pytorch.safetensors"));
    let meta = std::collections::HashMap::from([("grulm.model".to_string(), model.describe())]);
    crate::platform::tensorfile::save(&out, &tensors, &meta).with_context(|| format!("writing {}", out.display()))?;
    println!("wrote {} ({} tensors in PyTorch's names, for d2l's RNNModel)", out.display(), tensors.len());
    Ok(())
}

fn parity_cmd(a: ParityArgs) -> Result<()> {
    let dev = device::resolve(&a.device)?;
    if a.layers == 0 {
        return Err(usage!("--layers 0: expected at least 1"));
    }
    if !(0.0..1.0).contains(&a.dropout) {
        return Err(usage!("--dropout {}: expected a number from 0 to below 1", a.dropout));
    }
    if a.dropout > 0.0 && dev.is_cuda() {
        return Err(usage!("--dropout {}: parity with dropout is checked on the CPU only (on CUDA, cuDNN draws its own masks)", a.dropout));
    }
    let kind = match a.dtype {
        Dtype::F32 => tch::Kind::Float,
        Dtype::F64 => tch::Kind::Double,
    };
    // On CUDA, cuDNN may run the built-in GRU's float32 products in TF32
    // (libtorch's default, as PyTorch's torch.backends.cudnn.allow_tf32): parity
    // checks the function, so TF32 is off for the asserted comparison, and the
    // default's differences are shown after it.
    let tf32_default = match (dev, kind) {
        (tch::Device::Cuda(_), tch::Kind::Float) => crate::platform::cuda::tf32().ok(),
        _ => None,
    };
    if tf32_default.is_some() {
        crate::platform::cuda::set_tf32(false, false)?;
    } else if dev.is_cuda() && kind == tch::Kind::Float {
        println!(
            "note: {}; TF32 cannot be switched off, so cuDNN's float32 cells may differ by more than the tolerance",
            crate::platform::cuda::shim_status()
        );
    }
    // One table per layer count; true when every asserted one passed.
    let tables = |asserted: bool| -> Result<bool> {
        let mut ok = true;
        for layers in 1..=a.layers {
            let cell = a.cell;
            let mut report = parity::compare(dev, kind, cell, layers, ScratchPath::Bptt, a.seed, a.dropout)?;
            report.asserted = asserted;
            print!("{}", report.table());
            ok &= !asserted || report.passed();
        }
        Ok(ok)
    };
    let ok = tables(true)?;
    if let Some((cublas, cudnn)) = tf32_default {
        crate::platform::cuda::set_tf32(cublas, cudnn)?;
        println!("\nwith libtorch's default TF32 settings (cuBLAS {cublas}, cuDNN {cudnn}): shown, not asserted");
        tables(false)?;
    }
    if !ok {
        anyhow::bail!("parity failed: a difference is above the tolerance");
    }
    Ok(())
}
