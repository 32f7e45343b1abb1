//! A training session: one run directory opened for training (started, resumed
//! or fine-tuned), and the steps of its loop ([`super::train`] reads them in
//! order): train an epoch, record it, act after it, finish.
//!
//! What a resumed run may change is decided by the config
//! ([`Config::check_resumable`], called by the command line before the session
//! opens) and by its vocabulary ([`Session::open`]); what its files are cut back
//! to (metrics, best weights, TensorBoard events) by [`RunDir::cut_back_to`].
use super::{train_epoch, EpochPlan, ProgressLines, TrainOptions, TrainOutcome};
use crate::config::Config;
use crate::data::{self, Corpus, Ids, SeqPartition, TokenData, Vocab};
use crate::error::{libtorch, Interrupted};
use crate::infer::eval::perplexity;
use crate::infer::sample::{self, Decode};
use crate::model::{BuildOptions, Precision, RecurrentLm, State};
use crate::platform::console::Console;
use crate::platform::device::describe;
use crate::platform::interrupt;
use crate::platform::test_pause::StepPause;
use crate::run::metrics::{patience_spent, time_spent, BestVal, EpochMetrics};
use crate::run::tensorboard::{self, EventWriter};
use crate::run::{plot, Partial, RunDir, RunLock, WeightsFile};
use crate::train::memory::Estimate;
use crate::train::optim::Optimizer;
use crate::train::step::Stepper;
use crate::usage;
use anyhow::{bail, Context, Result};
use std::ops::Range;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// Largest loss taken as training: exp(709.78) is f64's largest perplexity.
const MAX_LOSS: f64 = 709.0;

/// What the loop does after an epoch.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Next {
    Go,
    Stop,
}

/// An epoch's minibatches, trained: what it read back from the device.
pub(super) struct Trained {
    losses: Vec<f64>,
    norms: Vec<f64>,
    seconds: f64,
    /// Minibatches in the epoch.
    n: usize,
}

/// Where an opened run stands: what its files say it has done.
struct Progress {
    /// Complete epochs.
    start: usize,
    /// Seconds of training before this process.
    elapsed0: f64,
    history: Vec<EpochMetrics>,
    best: Option<BestVal>,
    /// The part of the next epoch a signal interrupted.
    partial: Option<Partial>,
}

pub(super) struct Session<'a> {
    cfg: &'a Config,
    run: &'a RunDir,
    device: Device,
    console: &'a Console,
    vocab: Vocab,
    val: Option<Ids>,
    model: Box<dyn RecurrentLm>,
    opt: Optimizer,
    stepper: Stepper,
    /// The training ids, on the device.
    data: TokenData,
    train_tokens: usize,
    passes: Passes,
    progress: Progress,
    events: Option<EventWriter>,
    run_start: Instant,
    last_checkpoint: Option<usize>,
    /// The epoch after the last one to train.
    end: usize,
    /// The plot's title.
    title: String,
    /// One process per run directory, from here to the end of training.
    _lock: Option<RunLock>,
}

impl<'a> Session<'a> {
    /// Opens the run for training: checks every input, builds the model, then
    /// (and only then) takes the run directory, creating or resuming it.
    pub(super) fn open(cfg: &'a Config, opts: &'a TrainOptions, console: &'a Console) -> Result<Session<'a>> {
        let (run, device) = (&opts.run, opts.device);
        if cfg.train.precision == Precision::Bf16 && device.is_cuda() {
            // CUDA's bf16 (autocast, tensor cores) is not written yet: refused
            // rather than silently trained in f32.
            return Err(usage!(
                "train.precision = \"bf16\" trains on the CPU only in this version, and the device is {}; use \"f32\" there, or --device cpu",
                describe(device)
            ));
        }
        let (mut corpus, init) = corpus_for(cfg, opts)?;
        let v = corpus.vocab.len() as i64;
        // Before the first allocation of the run's size: stop now if it cannot fit.
        Estimate::new(cfg, v as u64, corpus.train.len() as u64).check(cfg, device)?;
        let (model, mut opt) = build(cfg, v, device)?;
        // Before the run directory is touched: a bad source file leaves nothing behind.
        if let Some(weights) = &init {
            let path = &weights.path;
            let file = crate::platform::tensorfile::load(path)?;
            crate::platform::tensorfile::assign(&model.named_parameters(), &file.tensors, &path.display().to_string())?;
            weights.say_notes();
            console.line(&format!("initialised from {} (a fresh optimizer)", path.display()));
        }
        let lock = if opts.resume && !run.path.is_dir() { None } else { Some(run.lock()?) };
        let progress = match opts.resume {
            true => resume(cfg, run, &corpus, model.as_ref(), &mut opt, device)?,
            false => create(cfg, run, &corpus, opts.force)?,
        };
        let events = if cfg.train.tensorboard { Some(EventWriter::create(&run.file(tensorboard::DIR))?) } else { None };
        let stepper = Stepper::new(device, cfg.train.cuda_graph, &opt);
        let train_tokens = corpus.train.len();
        let passes = Passes::new(cfg, train_tokens);
        // The training ids live on the device from now on: the host copy goes.
        let data = libtorch(|| "uploading the corpus".into(), || TokenData::upload(&corpus.train, cfg.data.num_steps, device))?;
        corpus.train = Ids::with_capacity(v as usize, 0);
        // The corpus's file name, not its path: the title has one line of 640 pixels.
        let corpus_name = cfg.data.corpus.short_name();
        let title = format!("{} on {corpus_name}", model.describe());
        let last_checkpoint = (progress.start > 0).then_some(progress.start);
        let mut s = Session {
            cfg,
            run,
            device,
            console,
            vocab: corpus.vocab,
            val: corpus.val,
            model,
            opt,
            stepper,
            data,
            train_tokens,
            passes,
            progress,
            events,
            run_start: Instant::now(),
            last_checkpoint,
            end: cfg.train.epochs,
            title,
            _lock: lock,
        };
        s.announce();
        Ok(s)
    }

    /// The epochs this process trains (0-based).
    pub(super) fn epochs(&self) -> Range<usize> {
        self.progress.start..self.end
    }

    /// Says what is trained where, and why nothing will be when the run is done.
    fn announce(&mut self) {
        let (cfg, start) = (self.cfg, self.progress.start);
        let (b, t) = (cfg.data.batch_size, cfg.data.num_steps);
        let per_pass = self.passes.len(0);
        let per_epoch = match cfg.train.epoch_steps {
            0 => format!("{per_pass} minibatches of {b}x{t} per epoch"),
            n => format!("{n} minibatches of {b}x{t} per epoch (train.epoch_steps; a pass over the text is {per_pass})"),
        };
        self.console.line(&format!(
            "training {} on {} ({}): {} parameters; {} tokens, vocabulary {}, {per_epoch} ({:?}); epochs {}..={}; run directory {}",
            self.model.describe(),
            describe(self.device),
            self.stepper.describe(),
            self.model.parameter_count(),
            self.train_tokens,
            self.vocab.len(),
            cfg.data.partition,
            start + 1,
            cfg.train.epochs,
            self.run.path.display()
        ));
        if cfg.train.precision == Precision::Bf16 {
            self.console.line(&format!("train.precision = bf16: {}", crate::model::bf16_products_note()));
        }
        if start >= cfg.train.epochs {
            self.console.line(&format!(
                "the run has already done {start} epochs (train.epochs = {}); raise it with --set train.epochs=N to go on",
                cfg.train.epochs
            ));
        }
        // A run that stopped early stays stopped unless its patience is raised.
        if patience_spent(&self.progress.history, cfg.train.patience) {
            if start < cfg.train.epochs {
                self.console.line(&format!(
                    "the run stopped early at epoch {start} (train.patience = {}); raise it with --set train.patience=N to go on",
                    cfg.train.patience
                ));
            }
            self.end = start;
        }
        // So does one that used its time.
        if start < self.end && time_spent(&self.progress.history, cfg.train.max_minutes) {
            self.console.line(&format!(
                "the run has trained {} of its train.max_minutes = {}; raise it with --set train.max_minutes=M to go on",
                super::duration(self.progress.elapsed0),
                cfg.train.max_minutes
            ));
            self.end = start;
        }
    }

    /// `train.max_minutes` is spent after `elapsed` seconds of training.
    fn out_of_time(&self, elapsed: f64) -> bool {
        let limit = self.cfg.train.max_minutes;
        limit > 0.0 && elapsed >= limit * 60.0
    }

    /// Trains epoch `epoch` (0-based), from where a signal interrupted it if it
    /// did, and reads its losses back (one host read per pass it touches). A
    /// diverged loss, or a signal mid-epoch (after a checkpoint of the epoch so
    /// far), ends the run with an error.
    pub(super) fn train_epoch(&mut self, epoch: usize) -> Result<Trained> {
        let (cfg, number) = (self.cfg, epoch + 1);
        let tc = &cfg.train;
        self.opt.set_lr(tc.lr_schedule.lr_at(tc.lr, number, tc.epochs, tc.warmup_epochs, tc.lr_decay, tc.lr_decay_every));
        let timer = Instant::now();
        // An epoch a signal interrupted goes on from its next minibatch; with
        // train.epoch_steps, one that begins inside a pass from the state the
        // previous epoch left (in the checkpoint, when resumed).
        let part = self.progress.partial.take();
        if let Some(state) = part.as_ref().and_then(|p| p.state.as_ref()) {
            self.stepper.set_carried(State::new(state.iter().map(Tensor::shallow_clone).collect()));
        }
        let (mut losses, mut norms, mut seconds, steps) =
            part.map_or((vec![], vec![], 0.0, 0), |p| (p.losses, p.norms, p.seconds, p.steps));
        let (pieces, n) = self.passes.epoch(epoch, tc.epoch_steps, steps);
        let mut before = steps as i64;
        for (pass, from, to) in pieces {
            let mb = self.passes.minibatches(pass);
            let starts = libtorch(|| format!("epoch {number}: uploading where the minibatches start"), || self.data.starts(&mb))?;
            let plan = EpochPlan {
                partition: cfg.data.partition,
                theta: tc.grad_clip,
                from,
                to,
                before,
                of: n as i64,
                mask_seed: (cfg.model.dropout > 0.0 || cfg.model.weight_drop > 0.0).then_some((tc.seed, pass)),
                pause: StepPause::in_epoch(&self.run.path, number),
                progress: (tc.progress_seconds > 0.0 && !self.console.has_bar()).then(|| ProgressLines {
                    every: std::time::Duration::from_secs_f64(tc.progress_seconds),
                    epoch: number,
                    tokens: cfg.data.batch_size * cfg.data.num_steps,
                    console: self.console,
                }),
            };
            let out = train_epoch(self.model.as_ref(), &mut self.opt, &mut self.stepper, &self.data, &starts, &plan)
                .with_context(|| format!("epoch {number}"))?;
            if let Some(note) = self.stepper.take_note() {
                self.console.line(&note);
            }
            losses.extend(Vec::<f64>::try_from(out.losses.to_kind(Kind::Double))?);
            norms.extend(Vec::<f64>::try_from(out.norms.to_kind(Kind::Double))?);
            before += out.done - from;
            if out.done < to {
                seconds += timer.elapsed().as_secs_f64();
                let trained = Trained { losses, norms, seconds, n };
                self.check_finite(number, &trained)?;
                return Err(self.stop_mid_epoch(epoch, before as usize, trained));
            }
        }
        seconds += timer.elapsed().as_secs_f64();
        let trained = Trained { losses, norms, seconds, n };
        self.check_finite(number, &trained)?;
        Ok(trained)
    }

    /// Diverged: a loss that is not finite, or so large that its perplexity
    /// overflows (a uniform guess costs ln V, about 3).
    fn check_finite(&self, number: usize, trained: &Trained) -> Result<()> {
        let losses = &trained.losses;
        let Some(step) = losses.iter().position(|l| !(l.is_finite() && *l < MAX_LOSS)) else { return Ok(()) };
        let kept = match self.last_checkpoint {
            Some(e) => format!("the last good checkpoint (epoch {e}) is kept in {}", self.run.path.display()),
            None => "no checkpoint was written yet".to_string(),
        };
        bail!(
            "training diverged: the loss is {} at epoch {number}, step {} of {}; {kept}; lower train.lr (now {}) or train.grad_clip (now {})",
            losses[step],
            step + 1,
            trained.n,
            self.cfg.train.lr,
            self.cfg.train.grad_clip
        )
    }

    /// Stopped by a signal after `done` minibatches of epoch `epoch`: a
    /// checkpoint of the epoch so far, to resume it exactly; the error that ends the run.
    fn stop_mid_epoch(&self, epoch: usize, done: usize, trained: Trained) -> anyhow::Error {
        let state = match self.cfg.data.partition {
            SeqPartition::Sequential => self.stepper.carried().map(|s| s.tensors().iter().map(Tensor::shallow_clone).collect()),
            SeqPartition::Random => None,
        };
        let n = trained.n;
        let p = Partial { steps: done, losses: trained.losses, norms: trained.norms, seconds: trained.seconds, state };
        let elapsed = self.elapsed();
        if let Err(e) = self.run.save_checkpoint(self.model.as_ref(), self.opt.state(), epoch, elapsed, Some(&p)) {
            return e;
        }
        self.interrupted(&format!("at epoch {}, minibatch {done} of {n}", epoch + 1))
    }

    /// Validates (when due), writes the epoch's metrics (file, TensorBoard,
    /// history) and the best weights when they improved.
    pub(super) fn record(&mut self, epoch: usize, trained: Trained) -> Result<EpochMetrics> {
        let (cfg, number) = (self.cfg, epoch + 1);
        let (b, t) = (cfg.data.batch_size, cfg.data.num_steps);
        let tokens = (trained.n * b * t) as f64;
        // Equal-size minibatches: the token-weighted mean is the mean over steps.
        let train_ppl = (trained.losses.iter().map(|l| l * (b * t) as f64).sum::<f64>() / tokens).exp();
        // The last epoch validates, whether the last by train.epochs or by the clock.
        let last = number == cfg.train.epochs || self.out_of_time(self.elapsed());
        let val_ppl = match &self.val {
            Some(val) if number.is_multiple_of(cfg.train.val_every) || last => {
                let (model, device) = (self.model.as_mut(), self.device);
                Some(libtorch(|| format!("epoch {number}: validation"), || perplexity(model, val, b, t, device))??)
            }
            _ => None,
        };
        let metrics = EpochMetrics {
            epoch: number,
            train_ppl,
            val_ppl,
            tokens_per_s: tokens / trained.seconds,
            lr: self.opt.lr(),
            grad_norm: trained.norms.iter().sum::<f64>() / trained.norms.len() as f64,
            elapsed_s: self.elapsed(),
            peak_rss_mib: crate::platform::device::peak_rss_mib(),
        };
        self.run.append_metrics(&metrics)?;
        if let Some(w) = &mut self.events {
            w.epoch(&metrics)?;
        }
        self.progress.history.push(metrics.clone());
        if let Some(v) = val_ppl {
            if self.progress.best.is_none_or(|b| v < b.val_ppl) {
                let b = BestVal { epoch: number, val_ppl: v };
                self.run.save_best(self.model.as_ref(), b)?;
                self.progress.best = Some(b);
            }
        }
        Ok(metrics)
    }

    /// After an epoch is recorded: its line and prediction, the checkpoint and
    /// plot when due, a signal's stop, early stopping.
    pub(super) fn after_epoch(&mut self, m: &EpochMetrics) -> Result<Next> {
        let (cfg, number) = (self.cfg, m.epoch);
        // Early stopping: patience validations in a row without a new best.
        let stop = patience_spent(&self.progress.history, cfg.train.patience);
        let out_of_time = !stop && number < cfg.train.epochs && self.out_of_time(m.elapsed_s);
        self.console.epoch(number, m.train_ppl, m.tokens_per_s);
        if cfg.train.predict_every > 0 && number.is_multiple_of(cfg.train.predict_every) {
            let text = self.greedy(&cfg.sample.prefixes[0])?;
            let val = m.val_ppl.map(|p| format!("  val {p:.2}")).unwrap_or_default();
            self.console
                .line(&format!("epoch {number:>4}  perplexity {:.2}{val}  {:.0} tokens/sec  | {text}", m.train_ppl, m.tokens_per_s));
        }
        let due = cfg.train.checkpoint_every > 0 && number.is_multiple_of(cfg.train.checkpoint_every);
        if due || number == cfg.train.epochs || stop || out_of_time {
            self.checkpoint(number, m.elapsed_s)?;
            plot::perplexity_svg(&self.progress.history, &self.title, &self.run.file(crate::run::PLOT)).context("perplexity.svg")?;
        }
        if interrupt::requested().is_some() {
            if self.last_checkpoint != Some(number) {
                self.checkpoint(number, m.elapsed_s)?;
            }
            return Err(self.interrupted(&format!("after epoch {number}")));
        }
        if out_of_time {
            self.console.line(&format!(
                "time is up after epoch {number}: {} of training reached train.max_minutes = {}",
                super::duration(m.elapsed_s),
                cfg.train.max_minutes
            ));
            return Ok(Next::Stop);
        }
        if !stop {
            return Ok(Next::Go);
        }
        if let Some(b) = self.progress.best {
            self.console.line(&format!(
                "early stop after epoch {number}: {} validations without a better perplexity than {:.3} (epoch {}); its weights are in {}",
                cfg.train.patience,
                b.val_ppl,
                b.epoch,
                self.run.file(crate::run::BEST).display()
            ));
        }
        Ok(Next::Stop)
    }

    /// The end of training: the last epoch's line, the samples of every prefix.
    pub(super) fn finish(mut self) -> Result<TrainOutcome> {
        let elapsed = self.elapsed();
        self.console.finish();
        let last = self.progress.history.last().cloned();
        if let Some(m) = &last {
            self.console.line(&format!("perplexity {:.1}, {:.1} tokens/sec on {}", m.train_ppl, m.tokens_per_s, describe(self.device)));
        }
        let mut predictions = Vec::new();
        for p in &self.cfg.sample.prefixes {
            let text = self.greedy(p)?;
            self.console.line(&text);
            predictions.push(text);
        }
        let step = last.as_ref().map_or(self.progress.start, |m| m.epoch);
        if let Some(w) = &mut self.events {
            w.text("samples", &predictions, step)?;
        }
        self.console.line(&format!("{:.1} s of training; run saved in {}", elapsed, self.run.path.display()));
        Ok(TrainOutcome { last, predictions })
    }

    fn checkpoint(&mut self, number: usize, elapsed_s: f64) -> Result<()> {
        // With train.epoch_steps, the next epoch may begin inside a pass of the
        // sequential partition: it needs the state this one leaves.
        let carry = match (self.cfg.train.epoch_steps, self.cfg.data.partition) {
            (0, _) | (_, SeqPartition::Random) => None,
            _ => self.stepper.carried().map(|s| Partial {
                steps: 0,
                losses: vec![],
                norms: vec![],
                seconds: 0.0,
                state: Some(s.tensors().iter().map(Tensor::shallow_clone).collect()),
            }),
        };
        self.run.save_checkpoint(self.model.as_ref(), self.opt.state(), number, elapsed_s, carry.as_ref())?;
        self.last_checkpoint = Some(number);
        Ok(())
    }

    /// Seconds of training of the whole run so far.
    fn elapsed(&self) -> f64 {
        self.progress.elapsed0 + self.run_start.elapsed().as_secs_f64()
    }

    /// The greedy continuation of `prefix` (d2l's `predict_ch8`).
    fn greedy(&mut self, prefix: &str) -> Result<String> {
        let cfg = self.cfg;
        sample::predict(self.model.as_mut(), &self.vocab, prefix, cfg.sample.len, Decode::Greedy, self.device)
    }

    /// The error that ends a run stopped by a signal, once its checkpoint is written.
    fn interrupted(&self, when: &str) -> anyhow::Error {
        self.console.finish();
        let signal = interrupt::requested().unwrap_or(libc::SIGINT);
        let message = format!(
            "stopped by {} {when}; checkpoint written; resume with: grulm train --out {} --resume",
            interrupt::signal_name(signal),
            self.run.path.display()
        );
        anyhow::Error::new(Interrupted { signal, message })
    }
}

/// The corpus in the ids the run trains on, with the prefixes checked against
/// it; and, fine-tuning, the source run's weights file. A fine-tuning run keeps
/// the source run's vocabulary (checked now; its weights are loaded once the
/// model exists); resumed, it has that vocabulary in its own files.
fn corpus_for(cfg: &Config, opts: &TrainOptions) -> Result<(Corpus, Option<WeightsFile>)> {
    let run = &opts.run;
    let mut corpus = Corpus::load(&cfg.data)?;
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
    Ok((corpus, init))
}

/// The model (seeded by `train.seed`) and its optimiser.
fn build(cfg: &Config, v: i64, device: Device) -> Result<(Box<dyn RecurrentLm>, Optimizer)> {
    tch::manual_seed(cfg.train.seed as i64);
    let build = BuildOptions { deterministic: cfg.train.deterministic, precision: cfg.train.precision, ..BuildOptions::default() };
    let model = libtorch(|| "allocating the model".into(), || cfg.model.build(v, device, Kind::Float, build))?;
    let opt = libtorch(
        || "allocating the optimizer state".into(),
        || Optimizer::new(cfg.train.optimizer, cfg.train.lr, model.named_parameters()),
    )?;
    Ok((model, opt))
}

/// A new run: the directory created (or replaced, with `force`), its config and vocabulary.
fn create(cfg: &Config, run: &RunDir, corpus: &Corpus, force: bool) -> Result<Progress> {
    run.create(force)?;
    run.save_config(cfg, Some(&corpus.files))?;
    run.save_vocab(&corpus.vocab)?;
    Ok(Progress { start: 0, elapsed0: 0.0, history: vec![], best: None, partial: None })
}

/// A resumed run: the same vocabulary, the checkpoint's weights and optimiser
/// state, and the run's files cut back to the checkpoint.
fn resume(cfg: &Config, run: &RunDir, corpus: &Corpus, model: &dyn RecurrentLm, opt: &mut Optimizer, device: Device) -> Result<Progress> {
    let vocab = &corpus.vocab;
    let saved = run.load_vocab()?;
    if saved != *vocab {
        return Err(usage!(
            "{}: the vocabulary built from corpus {} ({} tokens) differs from the run's ({} tokens); the corpus or data settings changed since the run began",
            run.file(crate::run::VOCAB).display(),
            cfg.data.corpus,
            vocab.len(),
            saved.len()
        ));
    }
    run.remove_stale_temporaries();
    let restored = run.load_checkpoint(model, device)?;
    opt.load_state(&restored.optimizer).with_context(|| run.file(crate::run::CHECKPOINT).display().to_string())?;
    let (history, best) = run.cut_back_to(restored.epoch)?;
    run.save_config(cfg, Some(&corpus.files))?;
    Ok(Progress { start: restored.epoch, elapsed0: restored.elapsed_s, history, best, partial: restored.partial })
}

/// Checks `train.init_from`'s run against `cfg` (the same model; a vocabulary
/// that covers the corpus, which is re-encoded in it) and returns its weights file.
fn init_source(src: &RunDir, cfg: &Config, corpus: &mut Corpus) -> Result<WeightsFile> {
    let shown = src.path.display();
    let src_cfg = src.load_config().map_err(|e| usage!("train.init_from: {e:#}"))?;
    let mut probe = cfg.clone();
    probe.model = src_cfg.model.clone();
    probe.model.init_sigma = cfg.model.init_sigma; // the weights are replaced anyway
    probe.model.dropout = cfg.model.dropout; // training settings, not the shape
    probe.model.weight_drop = cfg.model.weight_drop;
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

/// Where each epoch's minibatches lie in the passes over the training text.
/// Each pass is cut into minibatches by its own generator ([`data::epoch_rng`]
/// of `train.seed` and the pass), so any minibatch of the run is made again
/// from its pass and index. Without `train.epoch_steps` an epoch is a pass (d2l);
/// with it, epoch e is minibatches e·N..(e+1)·N of the passes laid end to end.
struct Passes {
    tokens: usize,
    batch_size: usize,
    num_steps: usize,
    partition: SeqPartition,
    seed: u64,
    /// Minibatches in each pass so far asked for (they differ by the random offset).
    lens: Vec<usize>,
}

impl Passes {
    fn new(cfg: &Config, tokens: usize) -> Passes {
        let d = &cfg.data;
        let (batch_size, num_steps, partition) = (d.batch_size, d.num_steps, d.partition);
        Passes { tokens, batch_size, num_steps, partition, seed: cfg.train.seed, lens: vec![] }
    }

    /// Pass `pass` (0-based) cut into minibatches.
    fn minibatches(&self, pass: usize) -> data::Minibatches {
        let mut rng = data::epoch_rng(self.seed, pass);
        data::epoch_minibatches(self.tokens, self.batch_size, self.num_steps, self.partition, &mut rng)
    }

    /// Minibatches in pass `pass`.
    fn len(&mut self, pass: usize) -> usize {
        while self.lens.len() <= pass {
            let n = self.minibatches(self.lens.len()).n;
            self.lens.push(n);
        }
        self.lens[pass]
    }

    /// The pieces `(pass, from, to)` of epoch `epoch` (0-based) after its first
    /// `done` minibatches, and the epoch's minibatches in all.
    fn epoch(&mut self, epoch: usize, epoch_steps: usize, done: usize) -> (Vec<(usize, i64, i64)>, usize) {
        if epoch_steps == 0 {
            let n = self.len(epoch);
            return (vec![(epoch, done as i64, n as i64)], n);
        }
        let (mut g, end) = ((epoch * epoch_steps + done) as u64, ((epoch + 1) * epoch_steps) as u64);
        let (mut pass, mut base) = (0, 0u64);
        let mut pieces = vec![];
        while g < end {
            let n = self.len(pass) as u64;
            if g < base + n {
                let to = end.min(base + n);
                pieces.push((pass, (g - base) as i64, (to - base) as i64));
                g = to;
            }
            (pass, base) = (pass + 1, base + n);
        }
        (pieces, epoch_steps)
    }
}
