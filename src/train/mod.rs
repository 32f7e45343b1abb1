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
mod session;
pub(crate) mod step;

use crate::config::Config;
use crate::data::{SeqPartition, TokenData};
use crate::error::libtorch;
use crate::model::RecurrentLm;
use crate::platform::console::Console;
use crate::platform::interrupt;
use crate::platform::test_pause::StepPause;
use crate::run::metrics::EpochMetrics;
use crate::run::RunDir;
use anyhow::Result;
use optim::Optimizer;
use session::{Next, Session};
use step::Stepper;
use tch::{Device, Tensor};

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

/// Device-side results of one piece of a pass (its steps `from..done`).
pub(crate) struct EpochTensors {
    /// Mean cross-entropy of each step trained, `[done - from]`.
    pub losses: Tensor,
    /// Global gradient norm before clipping of each step trained.
    pub norms: Tensor,
    /// The step after the last one trained: `to`, or less when a signal asked
    /// training to stop ([`interrupt`]).
    pub done: i64,
}

/// How [`train_epoch`] runs minibatches `from..to` of one pass over the text
/// (all of an epoch, or a piece of one with `train.epoch_steps`).
pub(crate) struct EpochPlan<'a> {
    pub partition: SeqPartition,
    /// `train.grad_clip`.
    pub theta: f64,
    /// The first minibatch of the pass to train: 0, or where the epoch (or an
    /// interrupted one) goes on, its carried state already in the stepper.
    pub from: i64,
    /// The minibatch after the last one to train: the pass's end, or the epoch's.
    pub to: i64,
    /// Minibatches of the epoch before this piece's first, and in the epoch:
    /// what progress lines and a test's pause count in.
    pub before: i64,
    pub of: i64,
    /// `Some((train.seed, pass))` when the model draws dropout or weight-drop
    /// masks: every step reseeds libtorch's generator from (seed, pass, step),
    /// so a step's masks depend on nothing else and a resumed run draws what the
    /// uninterrupted one drew.
    pub mask_seed: Option<(u64, usize)>,
    /// A test's pause after one of the epoch's minibatches ([`StepPause`]).
    pub pause: Option<StepPause>,
    /// Progress lines inside the epoch, when there is no progress bar.
    pub progress: Option<ProgressLines<'a>>,
}

/// `train.progress_seconds`: a line every `every` while an epoch trains, for a
/// log without a terminal (a Slurm job, `nohup`), where an epoch of a large text
/// takes long and nothing else is printed before its end.
pub(crate) struct ProgressLines<'a> {
    pub every: std::time::Duration,
    /// The epoch's number (1-based).
    pub epoch: usize,
    /// Tokens per minibatch, `B·T`.
    pub tokens: usize,
    pub console: &'a Console,
}

impl ProgressLines<'_> {
    /// `epoch 3: minibatch 1200/8802 (13.6%), 21512 tokens/s, loss 1.2345
    /// (perplexity 3.44) over the last 600, epoch ends in 5m 53s`: `losses`
    /// are the steps since the last line (read from the device here, the only
    /// host read before the epoch's end), `done` of the epoch's `n` minibatches
    /// trained, `trained` of them by this piece in `seconds`.
    fn line(&self, losses: &[Tensor], (done, n): (i64, i64), trained: i64, seconds: f64) -> Result<()> {
        let loss = f64::try_from(Tensor::stack(losses, 0).mean(tch::Kind::Double))?;
        let per_step = seconds / trained as f64;
        self.console.line(&format!(
            "epoch {}: minibatch {done}/{n} ({:.1}%), {:.0} tokens/s, loss {loss:.4} (perplexity {:.2}) over the last {}, epoch ends in {}",
            self.epoch,
            100.0 * done as f64 / n as f64,
            self.tokens as f64 / per_step,
            loss.exp(),
            losses.len(),
            duration(per_step * (n - done) as f64)
        ));
        Ok(())
    }
}

/// `2h 05m`, `5m 53s`, `12s`.
fn duration(seconds: f64) -> String {
    let s = seconds.round() as u64;
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m {s:02}s"),
        (h, m, _) => format!("{h}h {m:02}m"),
    }
}

/// The generator seed of training step `step` of epoch `epoch` (SplitMix64's
/// finaliser over the three, so nearby steps get unrelated seeds).
pub(crate) fn step_seed(seed: u64, epoch: usize, step: i64) -> i64 {
    let mut z = seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (step as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 1) as i64
}

/// Minibatches `plan.from..plan.to` of a pass over `data`, whose minibatches
/// start at `starts` (`[n, B]`, on the device). The state starts at zero at the
/// pass's first minibatch and is carried from step to step (sequential
/// partition) or starts at zero every step (random partition), as d2l's
/// `train_epoch_ch8`. Stops after the current minibatch when a signal asks.
pub(crate) fn train_epoch(
    model: &dyn RecurrentLm,
    opt: &mut Optimizer,
    stepper: &mut Stepper,
    data: &TokenData,
    starts: &Tensor,
    plan: &EpochPlan,
) -> Result<EpochTensors> {
    let (from, to) = (plan.from, plan.to);
    let mut losses = Vec::with_capacity((to - from) as usize);
    let mut norms = Vec::with_capacity((to - from) as usize);
    let mut done = to;
    let (start, mut last_line, mut line_from) = (std::time::Instant::now(), std::time::Instant::now(), 0);
    for k in from..to {
        let fresh = k == 0 || plan.partition == SeqPartition::Random;
        if let Some((seed, epoch)) = plan.mask_seed {
            tch::manual_seed(step_seed(seed, epoch, k));
        }
        let out = libtorch(
            || format!("training step {} of {}", plan.before + k + 1 - from, plan.of),
            || {
                let (x, y) = data.minibatch(starts, k);
                stepper.step(model, opt, &x, &y, fresh, plan.theta)
            },
        )??;
        losses.push(out.loss);
        norms.push(out.norm);
        let in_epoch = plan.before + k + 1 - from;
        if let Some(p) = plan.progress.as_ref().filter(|p| last_line.elapsed() >= p.every && in_epoch < plan.of) {
            p.line(&losses[line_from..], (in_epoch, plan.of), k + 1 - from, start.elapsed().as_secs_f64())?;
            (last_line, line_from) = (std::time::Instant::now(), losses.len());
        }
        if let Some(p) = plan.pause.as_ref().filter(|p| p.minibatch == in_epoch) {
            p.wait();
        }
        if interrupt::requested().is_some() {
            done = k + 1;
            break;
        }
    }
    Ok(EpochTensors { losses: Tensor::stack(&losses, 0), norms: Tensor::stack(&norms, 0), done })
}

/// Trains `cfg`, writing the run directory; prints through `console`. The loop
/// of d2l's `train_ch8`: for each epoch, train it, record it, act after it.
pub fn train(cfg: &Config, opts: &TrainOptions, console: &Console) -> Result<TrainOutcome> {
    let mut s = Session::open(cfg, opts, console)?;
    for epoch in s.epochs() {
        let trained = s.train_epoch(epoch)?;
        let metrics = s.record(epoch, trained)?;
        if s.after_epoch(&metrics)? == Next::Stop {
            break;
        }
    }
    s.finish()
}
