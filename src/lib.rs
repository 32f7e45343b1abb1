//! grulm: character-level GRU language models on libtorch, a port of d2l.ai's
//! "Gated Recurrent Units" chapter (0.17). See README.md and docs/.
//!
//! The layers, lowest first; each uses only the layers listed before it
//! (`tests/it/layers.rs` checks it):
//!
//! | layer       | what                                                                  |
//! |-------------|-----------------------------------------------------------------------|
//! | `error`     | one-line errors, exit codes, the libtorch guard                       |
//! | `platform`  | the machine: devices, CPU kernels, CUDA, signals, files, tensor files |
//! | `data`      | the corpus, its vocabulary and its minibatches                        |
//! | `model`     | the recurrent language models (scratch cells and libtorch's own)      |
//! | `config`    | an experiment: the sections of the TOML file, validated               |
//! | `run`       | a run directory: checkpoints, metrics, TensorBoard, plots             |
//! | `infer`     | what a trained model does with text: sample, evaluate                 |
//! | `train`     | the training session and its loop, optimisers, the memory estimate    |
//! | `sweep`     | many runs: grids, a local pool, Slurm, the report                     |
//! | `tools`     | bench, parity, gates                                                  |
//! | `cli`       | the command line: clap types and each command's few lines             |
pub mod cli;
pub mod config;
pub mod data;
pub mod error;
pub mod infer;
pub mod model;
pub mod platform;
pub mod run;
pub(crate) mod sweep;
pub mod tools;
pub mod train;
