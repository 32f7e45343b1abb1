//! The numbers a run keeps per epoch (`metrics.jsonl`'s lines) and what is
//! decided from them: the best validation and early stopping. A leaf: the run
//! directory, TensorBoard, the plot and the sweeps read it, and it reads none.
use serde::{Deserialize, Serialize};

/// The best validation so far: its epoch and perplexity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct BestVal {
    pub epoch: usize,
    pub val_ppl: f64,
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// 1-based.
    pub epoch: usize,
    /// exp of the token-weighted mean cross-entropy over the epoch (d2l's).
    pub train_ppl: f64,
    pub val_ppl: Option<f64>,
    pub tokens_per_s: f64,
    pub lr: f64,
    /// Mean over the epoch's steps of the global gradient norm before clipping.
    pub grad_norm: f64,
    /// Training wall time since the run began, resumed parts included.
    pub elapsed_s: f64,
    /// Peak resident memory of the process so far (host RAM), MiB.
    #[serde(default)]
    pub peak_rss_mib: f64,
}

/// The lowest validation perplexity in `history` (the first, on ties).
pub(crate) fn best_of(history: &[EpochMetrics]) -> Option<BestVal> {
    history.iter().filter_map(|m| m.val_ppl.map(|v| BestVal { epoch: m.epoch, val_ppl: v })).fold(None, |best: Option<BestVal>, m| {
        match best {
            Some(b) if b.val_ppl <= m.val_ppl => Some(b),
            _ => Some(m),
        }
    })
}

/// Validations in `history` after the best one (for `train.patience`).
pub(crate) fn validations_since_best(history: &[EpochMetrics]) -> usize {
    let best = best_of(history).map_or(0, |b| b.epoch);
    history.iter().filter(|m| m.val_ppl.is_some() && m.epoch > best).count()
}

/// `train.max_minutes` is spent: the run's last epoch ended past the budget.
pub(crate) fn time_spent(history: &[EpochMetrics], max_minutes: f64) -> bool {
    max_minutes > 0.0 && history.last().is_some_and(|m| m.elapsed_s >= max_minutes * 60.0)
}

/// Whether `patience` validations in a row (0: never) have passed without a new best.
pub(crate) fn patience_spent(history: &[EpochMetrics], patience: usize) -> bool {
    patience > 0 && validations_since_best(history) >= patience
}
