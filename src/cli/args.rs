//! The command line's types: every clap struct and enum of grulm, and nothing
//! that acts. What each command does is in `mod.rs`, a few lines each.
use crate::model::CellKind;
use crate::run;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// Said under every command's `--help` ([`command`]).
const EXIT_CODES: &str = "Exit codes: 0 success; 1 runtime failure (I/O, download, corrupt checkpoint, diverged training, a libtorch failure); 2 usage or config error (bad flag, key or value, unknown prefix characters, existing run, too large for the memory at hand); 130, 143 training stopped by SIGINT, SIGTERM (resumable).";

/// Character-level GRU language models on libtorch: d2l.ai's "Gated Recurrent
/// Units" chapter, from scratch and with libtorch's fused GRU.
#[derive(Parser, Debug)]
#[command(name = "grulm", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print grulm's and libtorch's versions, CUDA and cuDNN availability, CPU threads.
    Info,
    /// Train an experiment (a TOML config; defaults are d2l's GRU chapter).
    Train(TrainArgs),
    /// Generate text from a trained run: greedy by default, or sampled.
    Sample(SampleArgs),
    /// Perplexity of a trained run on a text.
    Eval(EvalArgs),
    /// Compare a scratch cell with libtorch's (GRU reset-after, LSTM, RNN): outputs and every gradient.
    Parity(ParityArgs),
    /// Draw a trained GRU's or LSTM's gates over a text: a heatmap per gate of the top layer and their means (SVG).
    Gates(GatesArgs),
    /// Many runs of one experiment: expand a sweep file into run directories and train them; status; report.
    Sweep(SweepArgs),
    /// Write a run's weights under PyTorch's names (nn.RNN/nn.GRU/nn.LSTM + nn.Linear), for d2l's RNNModel.
    Export(ExportArgs),
    /// Print a shell completion script: `grulm completions bash > ~/.local/share/bash-completion/completions/grulm`.
    Completions(CompletionsArgs),
    /// Time training steps of the models and cells (tokens/s, peak memory), optionally beside Python PyTorch.
    Bench(BenchArgs),
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
    /// What `report.svg` draws: perplexity per epoch, or bits per character
    /// against minutes of training (to compare points at a time budget).
    #[arg(long, value_enum, default_value = "epochs")]
    pub against: AgainstArg,
}

/// `sweep report --against`: the x axis of `report.svg`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AgainstArg {
    Epochs,
    Minutes,
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
    /// The cell to compare (libtorch has the GRU, LSTM and RNN; any other is refused, saying so).
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

/// `parity --cell`: every cell, so that one without a libtorch twin is told so
/// in one line (`parity::run`) rather than left out of a list.
fn parity_cells() -> impl clap::builder::TypedValueParser<Value = CellKind> {
    use clap::builder::TypedValueParser;
    let names: Vec<&'static str> = CellKind::ALL.into_iter().map(CellKind::name).collect();
    clap::builder::PossibleValuesParser::new(names).map(|n: String| CellKind::from_name(&n).expect("a listed cell"))
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Shapes: d2l (B=32 T=35 H=256 V=28), large (B=128 T=64 H=1024 V=28), gpu (B=512 T=128 H=1024 V=28), or B,T,H,V. Repeatable.
    #[arg(long = "shape", default_values_t = ["d2l".to_string(), "large".to_string()])]
    pub shapes: Vec<String>,
    /// Models: scratch (the trainer's path: fused forward, hand-written BPTT; a CUDA graph on CUDA), scratch-after (the
    /// same, reset-after), scratch-ops (the same step in libtorch operations, as CUDA runs it), scratch-autograd (fused forward, autograd), scratch-ref (the readable reference), builtin (its
    /// training step on the CPU engine on the CPU), builtin-autograd (libtorch's own op and autograd everywhere);
    /// scratch-eager and builtin-eager are scratch and builtin without the CUDA graph; those are GRUs. lstm, rnn,
    /// mingru, minlstm: the scratch LSTM, RNN, minGRU and minLSTM; lstm-builtin, rnn-builtin: libtorch's.
    #[arg(long, value_delimiter = ',', default_values_t = ["scratch".to_string(), "builtin".to_string()])]
    pub models: Vec<String>,
    /// Timed repeats per round; the median over all rounds is reported.
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// Rounds, alternating grulm and Python for each model, so that a slow spell
    /// of the machine hits both sides alike.
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Training steps per repeat [default: 8 for d2l's shape (one epoch), 2 for larger ones].
    #[arg(long)]
    pub steps: Option<usize>,
    /// CPU threads for both sides [default: one per core].
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also write the results as JSON lines to this file.
    #[arg(long, value_name = "FILE")]
    pub json_out: Option<PathBuf>,
    /// Also run bench/pytorch_reference.py with this Python (same shapes and threads) and print ratios.
    #[arg(long, value_name = "PYTHON")]
    pub compare_python: Option<PathBuf>,
    /// The CPU engine's kernels: portable, avx2 or avx512 [default: the widest this CPU has].
    #[arg(long, value_name = "KERNELS")]
    pub cpu_kernels: Option<String>,
    /// The training step's products (train.precision): f32, bf16, or both (f32,bf16), each model
    /// timed in each; bf16 rows sit beside libtorch's bf16 matrix products at the same shapes.
    #[arg(long, value_delimiter = ',', default_values_t = ["f32".to_string()])]
    pub precision: Vec<String>,
    /// The bf16 rows' kernel: f32-emulated, avx512_bf16 or amx_bf16 [default: the widest this CPU runs].
    #[arg(long, value_name = "KERNEL")]
    pub bf16_kernel: Option<String>,
}

/// The command line, with the exit codes under every command's `--help` (set
/// here once, for the top level and each subcommand).
pub fn command() -> clap::Command {
    Cli::command().after_help(EXIT_CODES).mut_subcommands(|s| s.after_help(EXIT_CODES))
}

/// Parses the process's arguments ([`command`]).
pub fn parse() -> Result<Cli, clap::Error> {
    Cli::from_arg_matches(&command().try_get_matches()?)
}
