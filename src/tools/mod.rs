//! Tools around the models: the benchmark, the parity check against libtorch's
//! own cells, the gate heatmaps.
pub(crate) mod bench;
pub mod gates;
pub mod parity;
