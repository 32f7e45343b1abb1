//! The command line: [`args`] holds its clap types; each command here turns its
//! arguments into a validated [`Config`] or plain values and hands over to the
//! layer that owns the policy.
mod args;

use crate::config::{Config, MAX_SAMPLE_LEN};
use crate::data;
use crate::error::libtorch;
use crate::infer::eval;
use crate::infer::sample::{self, Decode};
use crate::model::layout::{self, BiasHh};
use crate::model::ModelKind;
use crate::platform::console::Console;
use crate::platform::device;
use crate::run::{self, RunDir};
use crate::tools::{bench, gates, parity};
use crate::train::memory::{self, Estimate};
use crate::train::{self, TrainOptions};
use crate::{sweep, usage};
use anyhow::{Context, Result};
pub use args::*;
use std::path::PathBuf;

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
        Command::Bench(a) => libtorch(|| "benchmarking".into(), || bench::run(bench_options(a)))?,
        Command::Export(a) => libtorch(|| "exporting".into(), || export_cmd(a))?,
        Command::Completions(a) => {
            clap_complete::generate(a.shell, &mut command(), "grulm", &mut std::io::stdout());
            Ok(())
        }
    }
}

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
        cfg.check_resumable(&saved, &run_dir.file(run::CONFIG).display().to_string())?;
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
    let files = &corpus.files.files;
    println!(
        "corpus      {} ({} file(s), {} bytes, {} characters after preprocessing)",
        cfg.data.corpus,
        files.len(),
        corpus.files.bytes(),
        corpus.total_chars
    );
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

/// `sample`'s flags, each in its range (before the run is read).
fn check_sample_flags(a: &SampleArgs) -> Result<()> {
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
    Ok(())
}

fn sample_cmd(a: SampleArgs) -> Result<()> {
    check_sample_flags(&a)?;
    let dev = device::resolve(&a.device)?;
    let run_dir = RunDir::new(&a.run);
    let run::Trained { cfg, vocab, mut model, weights } = run_dir.load_model(dev, a.checkpoint.into())?;
    let decode = decode_for(&a, &cfg);
    decode.check(vocab.len())?;
    let how = sample::Sampling { len: a.len.unwrap_or(cfg.sample.len), rows: a.num_samples, stop: a.stop.clone(), decode };
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
                Ok(ids) => sample::write(model.as_mut(), &vocab, &line, &ids, &how, dev, &mut out)?,
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
    sample::write(model.as_mut(), &vocab, &prefix, &ids, &how, dev, &mut out)
}

/// Most samples `--num-samples` makes at once (a batch of that many rows).
const MAX_SAMPLES: usize = 4096;

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
            let axis = match d.against {
                args::AgainstArg::Epochs => sweep::report::Axis::Epochs,
                args::AgainstArg::Minutes => sweep::report::Axis::Minutes,
            };
            print!("{}", sweep::report::report(&d.dir, d.csv, axis)?);
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
    // --corpus: a file or a directory (read with the run's data.include).
    let mut text = cfg.data.clone();
    if let Some(name) = &a.corpus {
        text.corpus = data::CorpusSource::Path(name.clone());
        if !std::path::Path::new(name).is_dir() {
            text.include = None;
        }
    }
    let split = a.split.unwrap_or(Split::All);
    let part = match split {
        Split::All => eval::Part::Whole,
        Split::Train => eval::Part::Train,
        Split::Val => eval::Part::Val,
    };
    let (ids, unknown, shown) = eval::ids_to_score(&text, &vocab, part, &run_dir.file(run::VOCAB))?;
    weights.say_notes();
    let ppl =
        eval::perplexity(model.as_mut(), &ids, cfg.data.batch_size, cfg.data.num_steps, dev).with_context(|| format!("corpus {shown}"))?;
    let split_name = format!("{split:?}").to_lowercase();
    if a.json {
        // bits per character: log2 of the per-character cross-entropy's exponent.
        let line = serde_json::json!({
            "perplexity": ppl,
            "bits_per_char": ppl.log2(),
            "tokens": ids.len(),
            "unknown": unknown,
            "corpus": shown,
            "split": split_name,
        });
        println!("{line}");
    } else {
        println!(
            "perplexity {ppl:.3} ({:.3} bits per character) on {} tokens of {} ({split_name}; {unknown} mapped to <unk>)",
            ppl.log2(),
            ids.len(),
            shown
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
            layout::exportable(&cfg.model).map_err(|why| usage!("--run {}: {why}", a.run.display()))?;
            let params = model.named_parameters().into_iter().collect();
            layout::scratch_to_pytorch(&params, cfg.model.cell, cfg.model.num_layers, BiasHh::Zero)?
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
    let kind = match a.dtype {
        Dtype::F32 => tch::Kind::Float,
        Dtype::F64 => tch::Kind::Double,
    };
    let check =
        parity::Check { device: device::resolve(&a.device)?, kind, cell: a.cell, layers: a.layers, seed: a.seed, dropout: a.dropout };
    parity::run(&check)
}

fn bench_options(a: BenchArgs) -> bench::Options {
    let BenchArgs {
        device,
        shapes,
        models,
        repeats,
        rounds,
        warmup,
        steps,
        threads,
        json,
        json_out,
        compare_python,
        cpu_kernels,
        precision,
        bf16_kernel,
    } = a;
    bench::Options {
        device,
        shapes,
        models,
        repeats,
        rounds,
        warmup,
        steps,
        threads,
        json,
        json_out,
        compare_python,
        cpu_kernels,
        precision,
        bf16_kernel,
    }
}
