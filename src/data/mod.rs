//! The data pipeline, d2l 0.17 semantics by default: corpus (downloaded and
//! SHA-1 checked, or a user's file), preprocessing, vocabulary, and the two
//! minibatch partitions of `seq_data_iter_sequential` / `seq_data_iter_random`.
//!
//! Shapes: B batch size, T time steps (`num_steps`). A [`Minibatches`] says, for
//! one epoch, where its `n` minibatches of inputs `X [B, T]` and targets `Y [B, T]`
//! start in the corpus (`Y` is `X` shifted by one token); the trainer cuts them
//! out of the corpus, one minibatch per step, so no epoch is ever copied whole.
//!
//! Big corpora: the text is read once into memory and streamed through the
//! preprocessing twice (count, then encode), never held as `char`s; token ids are
//! stored in one, two or four bytes ([`Ids`]). A 100 MB text with a small
//! vocabulary costs 100 MB of text while loading and 100 MB of ids.
mod batches;
mod corpus;
mod vocab;

pub use batches::*;
pub use corpus::*;
pub use vocab::*;
