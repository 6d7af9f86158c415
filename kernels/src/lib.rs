//! CUDA kernels of Tandem's compute kinds, each beside its CPU twin.
//!
//! # Layout
//!
//! - `cuda/*.cu`: CUDA C sources, embedded with `include_str!` and compiled
//!   at worker start with NVRTC for the device's exact architecture
//!   ([`runtime`]); `cuda/philox.cuh` is the shared generator.
//! - one Rust module per kernel family ([`monte_carlo`], [`risk`],
//!   [`indicators`], [`patterns`], [`portfolio_opt`]), holding the CPU twin
//!   (rayon) and the launch code side by side.
//! - [`mlp`] and [`mlp_gpu`]: the model kinds' network, its CPU twin and
//!   its GPU path (cuBLAS GEMMs and the kernels of `cuda/mlp.cu`, the model
//!   resident on the device).
//! - [`transformer`] and [`transformer_gpu`]: the price-prediction
//!   transformer, its CPU twin and its GPU forward pass (cuBLAS GEMMs,
//!   strided-batched for attention, and the kernels of
//!   `cuda/transformer.cu`).
//! - [`philox`]: Philox4x32-10, the counter-based generator, in Rust.
//! - [`nvrtc`]: which NVRTC library (12.x before an unversioned one), loaded
//!   by path, and its raw calls.
//! - [`runtime`]: what to compile to for the driver, NVRTC and the device
//!   (CUBIN or PTX), the compilation, the on-disk cache, the
//!   [`runtime::Gpu`] handle kernels launch through.
//! - [`driver`]: the CUDA driver, loaded at run time: GPUs it sees, a
//!   health probe, what an error means for the device.
//! - [`selftest`]: a kernel that checks the toolchain and the generator.
//!
//! Architecture invariant: this crate knows nothing about Redis, the wire
//! format or workers. It turns parameters into results on a device.

/// The crate's version, so the worker can report what it was built with.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub mod driver;
pub mod indicators;
pub mod mlp;
pub mod mlp_gpu;
pub mod monte_carlo;
pub mod nvrtc;
pub mod patterns;
pub mod philox;
pub mod portfolio_opt;
pub mod risk;
pub mod runtime;
pub mod selftest;
#[cfg(test)]
mod test_device;
pub mod transformer;
pub mod transformer_gpu;

/// Every CUDA source of the crate: what a GPU worker compiles at start and
/// the compile check assembles for each architecture.
pub const SOURCES: &[runtime::Source] = &[
    selftest::SOURCE,
    monte_carlo::SOURCE,
    risk::SOURCE,
    indicators::SOURCE,
    patterns::SOURCE,
    portfolio_opt::SOURCE,
    mlp_gpu::SOURCE,
    transformer_gpu::SOURCE,
];
