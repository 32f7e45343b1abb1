//! Perplexity of a trained model on a text (d2l's `exp` of the mean
//! cross-entropy per token): validation during training, and `grulm eval`.
use crate::data::{self, Ids, TokenData};
use crate::model::RecurrentLm;
use crate::usage;
use anyhow::Result;
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
