//! The one training loop (d2l's `train_ch8` / `train_epoch_ch8`), shared by every
//! model of the [`RecurrentLm`] trait.
//!
//! Per minibatch: state (carried and detached for the sequential partition, fresh
//! for the random one) -> forward -> mean cross-entropy per token -> backward ->
//! clip by the global norm -> update ([`Stepper`]: on CUDA, one replayed CUDA
//! graph). Losses and gradient norms stay on the device and are read once per
//! epoch: no step waits for the host.
//!
//! The corpus goes to the device once, in its compact ids ([`TokenData`]); each
//! epoch uploads only where its minibatches start, and each step cuts its
//! minibatch out of the corpus on the device (a gather of `B x T` ids), so
//! memory does not grow with the corpus beyond its ids.
pub(crate) mod memory;
pub mod optim;
pub(crate) mod step;

use crate::config::Config;
use crate::platform::console::Console;
use crate::data::{self, Corpus, Ids, SeqPartition, TokenData};
use crate::platform::device::describe;
use crate::error::libtorch;
use crate::infer::eval::perplexity;
use crate::error::Interrupted;
use crate::platform::interrupt;
use crate::train::memory::Estimate;
use crate::run::metrics::{patience_spent, BestVal, EpochMetrics};
use crate::model::{BuildOptions, RecurrentLm, State};
use crate::train::optim::Optimizer;
use crate::run::{Partial, RunDir};
use crate::infer::sample::{self, Decode};
use crate::train::step::Stepper;
use crate::run::tensorboard::{self, EventWriter};
use crate::platform::test_pause::StepPause;
use crate::run::plot;
use crate::usage;
use anyhow::{bail, Context, Result};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// Largest loss taken as training: exp(709.78) is f64's largest perplexity.
const MAX_LOSS: f64 = 709.0;

pub struct TrainOptions {
    pub run: RunDir,
    pub resume: bool,
    pub force: bool,
    pub device: Device,
}

/// What a finished run reports.
pub struct TrainOutcome {
    pub last: Option<EpochMetrics>,
    /// (prefix, greedy continuation) for each of `sample.prefixes`.
    pub predictions: Vec<String>,
}

/// Device-side results of one epoch (or of its steps `from..done`).
pub(crate) struct EpochTensors {
    /// Mean cross-entropy of each step trained, `[done - from]`.
    pub losses: Tensor,
    /// Global gradient norm before clipping of each step trained.
    pub norms: Tensor,
    /// The step after the last one trained: `n`, or less when a signal asked
    /// training to stop ([`interrupt`]).
    pub done: i64,
}

/// How [`train_epoch`] runs an epoch.
pub(crate) struct EpochPlan {
    pub partition: SeqPartition,
    /// `train.grad_clip`.
    pub theta: f64,
    /// The first minibatch to train: 0, or where an interrupted epoch resumes
    /// (its carried state already in the stepper).
    pub from: i64,
    /// `Some((train.seed, epoch))` when the model draws dropout masks: every step
    /// reseeds libtorch's generator from (seed, epoch, step), so a step's masks
    /// depend on nothing else and a resumed run draws what the uninterrupted one
    /// drew.
    pub mask_seed: Option<(u64, usize)>,
    /// A test's pause after one of the epoch's minibatches ([`StepPause`]).
    pub pause: Option<StepPause>,
}

/// The generator seed of training step `step` of epoch `epoch` (SplitMix64's
/// finaliser over the three, so nearby steps get unrelated seeds).
pub(crate) fn step_seed(seed: u64, epoch: usize, step: i64) -> i64 {
    let mut z = seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (step as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 1) as i64
}

/// One epoch over the minibatches of `data` that start at `starts` (`[n, B]`, on
/// the device), from minibatch `plan.from`. The state starts at zero and is
/// carried from step to step (sequential partition) or starts at zero every step
/// (random partition), as d2l's `train_epoch_ch8`. Stops after the current
/// minibatch when a signal asks.
pub(crate) fn train_epoch(
    model: &dyn RecurrentLm,
    opt: &mut Optimizer,
    stepper: &mut Stepper,
    data: &TokenData,
    starts: &Tensor,
    plan: &EpochPlan,
) -> Result<EpochTensors> {
    let n = starts.size()[0];
    let from = plan.from;
    let mut losses = Vec::with_capacity((n - from) as usize);
    let mut norms = Vec::with_capacity((n - from) as usize);
    let mut done = n;
    for k in from..n {
        let fresh = k == 0 || plan.partition == SeqPartition::Random;
        if let Some((seed, epoch)) = plan.mask_seed {
            tch::manual_seed(step_seed(seed, epoch, k));
        }
        let out = libtorch(
            || format!("training step {} of {n}", k + 1),
            || {
                let (x, y) = data.minibatch(starts, k);
                stepper.step(model, opt, &x, &y, fresh, plan.theta)
            },
        )??;
        losses.push(out.loss);
        norms.push(out.norm);
        if let Some(p) = plan.pause.as_ref().filter(|p| p.minibatch == k + 1) {
            p.wait();
        }
        if interrupt::requested().is_some() {
            done = k + 1;
            break;
        }
    }
    Ok(EpochTensors { losses: Tensor::stack(&losses, 0), norms: Tensor::stack(&norms, 0), done })
}

/// Checks `train.init_from`'s run against `cfg` (the same model; a vocabulary
/// that covers the corpus, which is re-encoded in it) and returns its weights file.
fn init_source(src: &RunDir, cfg: &Config, corpus: &mut Corpus) -> Result<crate::run::WeightsFile> {
    let shown = src.path.display();
    let src_cfg = src.load_config().map_err(|e| usage!("train.init_from: {e:#}"))?;
    let mut probe = cfg.clone();
    probe.model = src_cfg.model.clone();
    probe.model.init_sigma = cfg.model.init_sigma; // the weights are replaced anyway
    probe.model.dropout = cfg.model.dropout; // a training setting, not a shape
    let differ = probe.differing_keys(cfg);
    if !differ.is_empty() {
        return Err(usage!(
            "train.init_from = {shown:?}: its model differs in {} (the weights must fit this model)",
            differ.iter().map(|k| format!("{k} = {}", probe.value_of(k))).collect::<Vec<_>>().join(", ")
        ));
    }
    let vocab = src.load_vocab().map_err(|e| usage!("train.init_from: {e:#}"))?;
    corpus.reencode(&vocab).map_err(|missing| {
        usage!(
            "train.init_from = {shown:?}: its vocabulary ({} tokens) lacks characters of corpus {}: {}; fine-tuning keeps the pre-trained vocabulary",
            vocab.len(),
            cfg.data.corpus,
            missing.iter().map(|c| format!("{c:?}")).collect::<Vec<_>>().join(" ")
        )
    })?;
    src.weights_file(crate::run::Weights::BestElseLast)
}

/// The error that ends a run stopped by a signal, once its checkpoint is written.
fn interrupted(console: &Console, when: &str, run: &RunDir) -> anyhow::Error {
    console.finish();
    let signal = interrupt::requested().unwrap_or(libc::SIGINT);
    let message = format!(
        "stopped by {} {when}; checkpoint written; resume with: grulm train --out {} --resume",
        interrupt::signal_name(signal),
        run.path.display()
    );
    anyhow::Error::new(Interrupted { signal, message })
}

/// Trains `cfg`, writing the run directory; prints through `console`.
pub fn train(cfg: &Config, opts: &TrainOptions, console: &Console) -> Result<TrainOutcome> {
    let run = &opts.run;
    let device = opts.device;
    let mut corpus = Corpus::load(&cfg.data)?;
    // Fine-tuning: the source run's vocabulary (checked now) and weights (loaded
    // once the model exists). A resumed fine-tuning run has them in its own files.
    let init = match (&cfg.train.init_from, opts.resume) {
        (Some(src), false) => Some(init_source(&RunDir::new(src), cfg, &mut corpus)?),
        (Some(_), true) => {
            let own = run.load_vocab()?;
            let shown = run.file(crate::run::VOCAB).display().to_string();
            corpus.reencode(&own).map_err(|m| usage!("{shown} lacks characters of corpus {}: {}", cfg.data.corpus, m.join(" ")))?;
            None
        }
        (None, _) => None,
    };
    for p in &cfg.sample.prefixes {
        sample::encode_prefix(&corpus.vocab, p).map_err(|e| usage!("sample.prefixes: {e:#}"))?;
    }
    let v = corpus.vocab.len() as i64;
    // Before the first allocation of the run's size: stop now if it cannot fit.
    Estimate::new(cfg, v as u64, corpus.train.len() as u64).check(cfg, device)?;
    tch::manual_seed(cfg.train.seed as i64);
    let build = BuildOptions { deterministic: cfg.train.deterministic, ..BuildOptions::default() };
    let mut model = libtorch(|| "allocating the model".into(), || cfg.model.build(v, device, Kind::Float, build))?;
    let mut opt = libtorch(
        || "allocating the optimizer state".into(),
        || Optimizer::new(cfg.train.optimizer, cfg.train.lr, model.named_parameters()),
    )?;
    // Before the run directory is touched: a bad source file leaves nothing behind.
    if let Some(weights) = &init {
        let path = &weights.path;
        let file = crate::platform::tensorfile::load(path)?;
        crate::platform::tensorfile::assign(&model.named_parameters(), &file.tensors, &path.display().to_string())?;
        weights.say_notes();
        console.line(&format!("initialised from {} (a fresh optimizer)", path.display()));
    }

    // One process per run directory, from here to the end of training.
    let _lock = if opts.resume && !run.path.is_dir() { None } else { Some(run.lock()?) };
    let (start, mut elapsed0, mut history, mut partial) = if opts.resume {
        let saved = run.load_vocab()?;
        if saved != corpus.vocab {
            return Err(usage!(
                "{}: the vocabulary built from corpus {} ({} tokens) differs from the run's ({} tokens); the corpus or data settings changed since the run began",
                run.file(crate::run::VOCAB).display(),
                cfg.data.corpus,
                corpus.vocab.len(),
                saved.len()
            ));
        }
        run.remove_stale_temporaries();
        let restored = run.load_checkpoint(model.as_ref(), device)?;
        opt.load_state(&restored.optimizer).with_context(|| run.file(crate::run::CHECKPOINT).display().to_string())?;
        let (epoch, elapsed, partial) = (restored.epoch, restored.elapsed_s, restored.partial);
        let history = run.truncate_metrics(epoch)?;
        tensorboard::truncate(&run.file(tensorboard::DIR), epoch)?;
        run.save_config(cfg)?;
        (epoch, elapsed, history, partial)
    } else {
        run.create(opts.force)?;
        run.save_config(cfg)?;
        run.save_vocab(&corpus.vocab)?;
        (0, 0.0, vec![], None)
    };
    let mut best = if opts.resume { run.resume_best(&history, start)? } else { None };

    let mut events = if cfg.train.tensorboard { Some(EventWriter::create(&run.file(tensorboard::DIR))?) } else { None };
    let mut stepper = Stepper::new(device, cfg.train.cuda_graph, &opt);
    let (b, t) = (cfg.data.batch_size, cfg.data.num_steps);
    let per_epoch = data::epoch_minibatches(corpus.train.len(), b, t, cfg.data.partition, &mut data::epoch_rng(0, 0)).n;
    let train_tokens = corpus.train.len();
    // The training ids live on the device from now on: the host copy goes.
    let train_data = libtorch(|| "uploading the corpus".into(), || TokenData::upload(&corpus.train, t, device))?;
    corpus.train = Ids::with_capacity(v as usize, 0);
    console.line(&format!(
        "training {} on {} ({}): {} parameters; {} tokens, vocabulary {}, {} minibatches of {b}x{t} per epoch ({:?}); epochs {}..={}; run directory {}",
        model.describe(),
        describe(device),
        stepper.describe(),
        model.parameter_count(),
        train_tokens,
        v,
        per_epoch,
        cfg.data.partition,
        start + 1,
        cfg.train.epochs,
        run.path.display()
    ));
    if start >= cfg.train.epochs {
        console.line(&format!(
            "the run has already done {start} epochs (train.epochs = {}); raise it with --set train.epochs=N to go on",
            cfg.train.epochs
        ));
    }

    // The corpus's file name, not its path: the title has one line of 640 pixels.
    let corpus_name = std::path::Path::new(&cfg.data.corpus).file_name().map_or(cfg.data.corpus.clone(), |n| n.to_string_lossy().into());
    let title = format!("{} on {corpus_name}", model.describe());
    let greedy =
        |model: &mut dyn RecurrentLm, prefix: &str| sample::predict(model, &corpus.vocab, prefix, cfg.sample.len, Decode::Greedy, device);
    let run_start = Instant::now();
    let mut last_checkpoint = (start > 0).then_some(start);
    // A run that stopped early stays stopped unless its patience is raised.
    let stopped_early = patience_spent(&history, cfg.train.patience);
    if stopped_early && start < cfg.train.epochs {
        console.line(&format!(
            "the run stopped early at epoch {start} (train.patience = {}); raise it with --set train.patience=N to go on",
            cfg.train.patience
        ));
    }
    let end = if stopped_early { start } else { cfg.train.epochs };
    for epoch in start..end {
        let number = epoch + 1;
        let tc = &cfg.train;
        opt.set_lr(tc.lr_schedule.lr_at(tc.lr, number, tc.epochs, tc.warmup_epochs, tc.lr_decay, tc.lr_decay_every));
        let timer = Instant::now();
        let mb = data::epoch_minibatches(train_tokens, b, t, cfg.data.partition, &mut data::epoch_rng(cfg.train.seed, epoch));
        let starts = libtorch(|| format!("epoch {number}: uploading where the minibatches start"), || train_data.starts(&mb))?;
        // An epoch a signal interrupted goes on from its next minibatch.
        let part = partial.take();
        if let Some(state) = part.as_ref().and_then(|p| p.state.as_ref()) {
            stepper.set_carried(State::new(state.iter().map(Tensor::shallow_clone).collect()));
        }
        let from = part.as_ref().map_or(0, |p| p.steps as i64);
        let plan = EpochPlan {
            partition: cfg.data.partition,
            theta: cfg.train.grad_clip,
            from,
            mask_seed: (cfg.model.dropout > 0.0).then_some((cfg.train.seed, epoch)),
            pause: StepPause::in_epoch(&run.path, number),
        };
        let out =
            train_epoch(model.as_ref(), &mut opt, &mut stepper, &train_data, &starts, &plan).with_context(|| format!("epoch {number}"))?;
        if let Some(note) = stepper.take_note() {
            console.line(&note);
        }
        // The epoch's one host read.
        let (mut losses, mut norms, mut seconds) = part.map_or((vec![], vec![], 0.0), |p| (p.losses, p.norms, p.seconds));
        losses.extend(Vec::<f64>::try_from(out.losses.to_kind(Kind::Double))?);
        norms.extend(Vec::<f64>::try_from(out.norms.to_kind(Kind::Double))?);
        seconds += timer.elapsed().as_secs_f64();
        // Diverged: a loss that is not finite, or so large that its perplexity
        // overflows (a uniform guess costs ln V, about 3).
        if let Some(step) = losses.iter().position(|l| !(l.is_finite() && *l < MAX_LOSS)) {
            let kept = match last_checkpoint {
                Some(e) => format!("the last good checkpoint (epoch {e}) is kept in {}", run.path.display()),
                None => "no checkpoint was written yet".to_string(),
            };
            bail!(
                "training diverged: the loss is {} at epoch {number}, step {} of {}; {kept}; lower train.lr (now {}) or train.grad_clip (now {})",
                losses[step],
                step + 1,
                mb.n,
                cfg.train.lr,
                cfg.train.grad_clip
            );
        }
        if out.done < mb.n as i64 {
            // Stopped by a signal: a checkpoint of the epoch so far, to resume exactly.
            let state = match cfg.data.partition {
                SeqPartition::Sequential => stepper.carried().map(|s| s.tensors().iter().map(Tensor::shallow_clone).collect()),
                SeqPartition::Random => None,
            };
            let p = Partial { steps: out.done as usize, losses, norms, seconds, state };
            run.save_checkpoint(model.as_ref(), opt.state(), epoch, elapsed0 + run_start.elapsed().as_secs_f64(), Some(&p))?;
            return Err(interrupted(console, &format!("at epoch {number}, minibatch {} of {}", out.done, mb.n), run));
        }
        let tokens = (mb.n * b * t) as f64;
        // Equal-size minibatches: the token-weighted mean is the mean over steps.
        let train_ppl = (losses.iter().map(|l| l * (b * t) as f64).sum::<f64>() / tokens).exp();
        let last_epoch = number == cfg.train.epochs;
        let val_ppl = match &corpus.val {
            Some(val) if number.is_multiple_of(cfg.train.val_every) || last_epoch => {
                Some(libtorch(|| format!("epoch {number}: validation"), || perplexity(model.as_mut(), val, b, t, device))??)
            }
            _ => None,
        };
        let metrics = EpochMetrics {
            epoch: number,
            train_ppl,
            val_ppl,
            tokens_per_s: tokens / seconds,
            lr: opt.lr(),
            grad_norm: norms.iter().sum::<f64>() / norms.len() as f64,
            elapsed_s: elapsed0 + run_start.elapsed().as_secs_f64(),
            peak_rss_mib: crate::platform::device::peak_rss_mib(),
        };
        run.append_metrics(&metrics)?;
        if let Some(w) = &mut events {
            w.epoch(&metrics)?;
        }
        history.push(metrics.clone());
        if let Some(v) = val_ppl {
            if best.is_none_or(|b| v < b.val_ppl) {
                let b = BestVal { epoch: number, val_ppl: v };
                run.save_best(model.as_ref(), b)?;
                best = Some(b);
            }
        }
        // Early stopping: patience validations in a row without a new best.
        let stop = patience_spent(&history, cfg.train.patience);
        console.epoch(number, train_ppl, metrics.tokens_per_s);
        if cfg.train.predict_every > 0 && number.is_multiple_of(cfg.train.predict_every) {
            let text = greedy(model.as_mut(), &cfg.sample.prefixes[0])?;
            let val = val_ppl.map(|p| format!("  val {p:.2}")).unwrap_or_default();
            console.line(&format!("epoch {number:>4}  perplexity {train_ppl:.2}{val}  {:.0} tokens/sec  | {text}", metrics.tokens_per_s));
        }
        let due = cfg.train.checkpoint_every > 0 && number.is_multiple_of(cfg.train.checkpoint_every);
        if due || last_epoch || stop {
            run.save_checkpoint(model.as_ref(), opt.state(), number, metrics.elapsed_s, None)?;
            last_checkpoint = Some(number);
            plot::perplexity_svg(&history, &title, &run.file(crate::run::PLOT)).context("perplexity.svg")?;
        }
        if interrupt::requested().is_some() {
            if last_checkpoint != Some(number) {
                run.save_checkpoint(model.as_ref(), opt.state(), number, metrics.elapsed_s, None)?;
            }
            return Err(interrupted(console, &format!("after epoch {number}"), run));
        }
        if stop {
            if let Some(b) = best {
                console.line(&format!(
                    "early stop after epoch {number}: {} validations without a better perplexity than {:.3} (epoch {}); its weights are in {}",
                    cfg.train.patience,
                    b.val_ppl,
                    b.epoch,
                    run.file(crate::run::BEST).display()
                ));
            }
            break;
        }
    }
    elapsed0 += run_start.elapsed().as_secs_f64();
    console.finish();

    let last = history.last().cloned();
    if let Some(m) = &last {
        console.line(&format!("perplexity {:.1}, {:.1} tokens/sec on {}", m.train_ppl, m.tokens_per_s, describe(device)));
    }
    let mut predictions = Vec::new();
    for p in &cfg.sample.prefixes {
        let text = greedy(model.as_mut(), p)?;
        console.line(&text);
        predictions.push(text);
    }
    if let Some(w) = &mut events {
        w.text("samples", &predictions, history.last().map_or(start, |m| m.epoch))?;
    }
    console.line(&format!("{:.1} s of training; run saved in {}", elapsed0, run.path.display()));
    Ok(TrainOutcome { last, predictions })
}
