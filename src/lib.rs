//! grulm: character-level GRU language models on libtorch, a port of d2l.ai's
//! "Gated Recurrent Units" chapter (0.17). See README.md.
pub mod bench;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod console;
pub mod cuda;
pub mod data;
pub mod device;
pub mod error;
pub mod eval;
pub mod fsutil;
pub mod gates;
pub mod interrupt;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod parity;
pub mod plot;
pub mod run;
pub mod sample;
pub mod step;
pub mod sweep;
pub mod tensorboard;
pub mod test_pause;
pub mod train;
