//! The machine grulm runs on: devices and CUDA, signals, the console, files
//! written atomically, and safetensors files of named tensors.
pub mod console;
pub mod cpu;
pub(crate) mod cuda;
pub mod device;
pub(crate) mod fsutil;
pub mod interrupt;
pub mod tensorfile;
pub mod test_pause;
