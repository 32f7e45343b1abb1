//! The minibatches of an epoch: d2l's two partitions as positions in the
//! corpus, and the device-side corpus each training step cuts its minibatch from.
use super::vocab::Ids;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// How an epoch cuts the corpus into minibatches (d2l 0.17).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SeqPartition {
    /// `seq_data_iter_sequential`: the corpus (after a random offset) is split into
    /// B parallel streams, so row i of minibatch k+1 continues row i of minibatch k
    /// and the hidden state can be carried over.
    Sequential,
    /// `seq_data_iter_random`: non-overlapping subsequences of T tokens (after a
    /// random offset), in shuffled order; adjacent minibatches are not adjacent text.
    Random,
}

/// One epoch of minibatches as positions in the corpus: row i of minibatch k is
/// `X = corpus[s..s+T]`, `Y = corpus[s+1..s+1+T]` with `s = starts[k*B + i]`.
/// The trainer cuts each minibatch out of the corpus when its step comes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Minibatches {
    pub n: usize,
    pub batch_size: usize,
    pub num_steps: usize,
    /// `[n, B]` row-major.
    pub starts: Vec<i64>,
}

impl Minibatches {
    /// Where row `i` of minibatch `k` starts.
    pub fn start(&self, k: usize, i: usize) -> usize {
        self.starts[k * self.batch_size + i] as usize
    }

    /// Inputs and targets of minibatch `k`, row `i`, read from `corpus`.
    pub fn row(&self, corpus: &Ids, k: usize, i: usize) -> (Vec<i64>, Vec<i64>) {
        let s = self.start(k, i);
        (corpus.to_vec(s..s + self.num_steps), corpus.to_vec(s + 1..s + 1 + self.num_steps))
    }
}

/// The random generator of epoch `epoch` (0-based) of a run seeded with `seed`:
/// each epoch has its own stream, so a resumed run draws what an uninterrupted
/// one would.
pub fn epoch_rng(seed: u64, epoch: usize) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(epoch as u64);
    rng
}

/// Cuts a corpus of `len` tokens into one epoch of minibatches.
///
/// Offsets follow d2l 0.17: uniform in `[0, T]` (inclusive, as d2l's
/// `random.randint(0, num_steps)`) for the sequential partition and in `[0, T-1]`
/// for the random one. They are capped so that at least one minibatch always
/// fits a corpus of `B*T + 1` tokens; for d2l's 10,000 tokens the cap never acts.
pub fn epoch_minibatches(len: usize, b: usize, t: usize, partition: SeqPartition, rng: &mut impl Rng) -> Minibatches {
    assert!(b > 0 && t > 0 && len > b * t, "corpus too short for one minibatch");
    let slack = len - 1 - b * t;
    match partition {
        SeqPartition::Sequential => {
            let offset = rng.gen_range(0..=t.min(slack));
            sequential_minibatches(len, b, t, offset)
        }
        SeqPartition::Random => {
            let offset = rng.gen_range(0..=(t - 1).min(slack));
            random_minibatches(len, b, t, offset, rng)
        }
    }
}

/// `seq_data_iter_sequential` after its offset: `B` streams of `L` tokens each;
/// minibatch k holds columns `[k*T, (k+1)*T)` of every stream.
pub(crate) fn sequential_minibatches(len: usize, b: usize, t: usize, offset: usize) -> Minibatches {
    let num_tokens = ((len - offset - 1) / b) * b;
    let row_len = num_tokens / b;
    let n = row_len / t;
    let starts = (0..n).flat_map(|k| (0..b).map(move |i| (offset + i * row_len + k * t) as i64)).collect();
    Minibatches { n, batch_size: b, num_steps: t, starts }
}

/// `seq_data_iter_random` after its offset: the subsequences starting at
/// `offset + j*T`, shuffled, `B` to a minibatch; the remainder is dropped.
pub(crate) fn random_minibatches(len: usize, b: usize, t: usize, offset: usize, rng: &mut impl Rng) -> Minibatches {
    let num_subseqs = (len - offset - 1) / t;
    let mut starts: Vec<i64> = (0..num_subseqs).map(|j| (offset + j * t) as i64).collect();
    starts.shuffle(rng);
    let n = num_subseqs / b;
    starts.truncate(n * b);
    Minibatches { n, batch_size: b, num_steps: t, starts }
}

/// Minibatches for evaluation: the sequential partition with no offset, so the
/// same text gives the same perplexity every time.
pub(crate) fn eval_minibatches(len: usize, b: usize, t: usize) -> Minibatches {
    sequential_minibatches(len, b, t, 0)
}

/// Token ids on the device, in their compact kind (`Uint8`, `Int16` or
/// `Int32`), and what cuts minibatches out of them.
pub struct TokenData {
    ids: Tensor,
    /// `0..=T`, Int64: a row's offsets from its start, its target's last included.
    steps: Tensor,
}

impl TokenData {
    /// One copy of `ids` to `device`, for minibatches of `t` steps.
    pub fn upload(ids: &Ids, t: usize, device: Device) -> TokenData {
        let ids = match ids {
            Ids::U8(v) => Tensor::from_slice(v),
            Ids::I16(v) => Tensor::from_slice(v),
            Ids::I32(v) => Tensor::from_slice(v),
        };
        TokenData { ids: ids.to_device(device), steps: Tensor::arange(t as i64 + 1, (Kind::Int64, device)) }
    }

    /// An epoch's row starts `[n, B]` on the device (one copy).
    pub fn starts(&self, mb: &Minibatches) -> Tensor {
        Tensor::from_slice(&mb.starts).view([mb.n as i64, mb.batch_size as i64]).to_device(self.ids.device())
    }

    /// Minibatch `k` of `starts`: inputs and targets `[B, T]`, Int64, cut out of
    /// the ids on the device (no host round trip): one gather of `T + 1` ids
    /// per row, of which the inputs are the first T and the targets the last T.
    pub fn minibatch(&self, starts: &Tensor, k: i64) -> (Tensor, Tensor) {
        let rows = self.ids.take(&(starts.get(k).unsqueeze(1) + &self.steps)).to_kind(Kind::Int64); // [B, T+1]
        let t = rows.size()[1] - 1;
        (rows.narrow(1, 0, t), rows.narrow(1, 1, t))
    }
}
