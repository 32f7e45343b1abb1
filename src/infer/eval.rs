//! Perplexity of a trained model on a text (d2l's `exp` of the mean
//! cross-entropy per token): validation during training, and `grulm eval`.
use crate::data::{self, DataConfig, Ids, TokenData, Vocab};
use crate::model::RecurrentLm;
use crate::usage;
use anyhow::Result;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// Perplexity of `model` on `ids`: exp of the mean cross-entropy per token, the
/// state carried across minibatches (sequential, offset 0), no gradients. A text
/// shorter than one `B x T` minibatch is read with fewer rows or steps.
pub fn perplexity(model: &mut dyn RecurrentLm, ids: &Ids, batch: usize, steps: usize, device: Device) -> Result<f64> {
    if ids.len() < 2 {
        return Err(usage!("the text has {} token(s); perplexity needs at least 2", ids.len()));
    }
    let t = steps.min(ids.len() - 1);
    let b = batch.min((ids.len() - 1) / t).max(1);
    let mb = data::eval_minibatches(ids.len(), b, t);
    let data = TokenData::upload(ids, t, device);
    let starts = data.starts(&mb);
    let total = tch::no_grad(|| {
        let mut sum = Tensor::zeros([], (Kind::Double, device));
        let mut state = model.zero_state(b as i64);
        for k in 0..mb.n as i64 {
            let (x, y) = data.minibatch(&starts, k);
            let (logits, s) = model.forward(&x, &state);
            let v = logits.size()[2];
            let ce = logits.view([-1, v]).to_kind(Kind::Double).log_softmax(-1, Kind::Double).nll_loss_nd::<Tensor>(
                &y.tr().reshape([-1]),
                None,
                tch::Reduction::Sum,
                -100,
            );
            sum += ce;
            state = s;
        }
        f64::try_from(sum)
    })?;
    Ok((total / (mb.n * b * t) as f64).exp())
}

/// Which text `grulm eval` scores.
pub(crate) enum Part {
    /// A file, whole, in the run's vocabulary.
    Whole,
    /// The run's training split, as training made it (`data.max_tokens`, `data.val_fraction`).
    Train,
    /// The run's validation split.
    Val,
}

/// The ids of `part` of the corpus `data.corpus` for a run with `data` and
/// `vocab` (`vocab_file` names it in errors), how many of the characters fell
/// outside the vocabulary (`<unk>`), and the corpus as messages name it (its
/// file, or `data.corpus` for several).
pub(crate) fn ids_to_score(data: &DataConfig, vocab: &Vocab, part: Part, vocab_file: &Path) -> Result<(Ids, usize, String)> {
    let files = data::corpus_files(data)?;
    let shown = match &files.files[..] {
        [(one, _)] => one.display().to_string(),
        _ => data.corpus.to_string(),
    };
    if let Part::Whole = part {
        let (ids, unknown) = vocab.encode_text(&data::read_corpus(data)?.0, data.preprocess);
        return Ok((ids, unknown, shown));
    }
    let corpus = data::Corpus::load(data)?;
    if corpus.vocab != *vocab {
        return Err(usage!(
            "--split: corpus {shown} no longer gives the run's vocabulary ({}); it changed since the run was trained",
            vocab_file.display()
        ));
    }
    match (part, corpus.val) {
        (Part::Train, _) => Ok((corpus.train, 0, shown)),
        (_, Some(val)) => Ok((val, 0, shown)),
        (_, None) => Err(usage!("--split val: the run has no validation split (data.val_fraction = 0)")),
    }
}
