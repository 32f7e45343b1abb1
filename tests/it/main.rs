//! grulm's one integration-test binary (one link of libtorch for all tests).
mod helpers;

mod cli;
mod config;
mod data;
mod docs;
mod gpu;
mod layers;
mod models;
mod props;
mod reliability;
mod sweep;
mod train;
