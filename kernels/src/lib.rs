//! CUDA kernels of Tandem's compute kinds, each beside its CPU twin.
//!
//! # Layout (planned; this crate is a skeleton until the compute kinds land)
//!
//! - `cuda/*.cu`: CUDA C sources, embedded with `include_str!` and compiled
//!   at worker start with NVRTC for the device's architecture.
//! - one Rust module per kernel family (`monte_carlo`, `risk`, `indicators`,
//!   `patterns`, `portfolio_opt`, `mlp`), holding the launch code and the CPU
//!   twin side by side.
//!
//! - [`driver`]: the CUDA driver, loaded at run time: GPUs it sees, a
//!   health probe, what an error means for the device.
//!
//! Architecture invariant: this crate knows nothing about Redis, the wire
//! format or workers. It turns parameters into results on a device.

/// The crate's version, so the worker can report what it was built with.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub mod driver;
pub mod philox;
pub mod runtime;
pub mod selftest;

/// Every CUDA source of the crate: what a GPU worker compiles at start and
/// the compile check assembles for each architecture.
pub const SOURCES: &[runtime::Source] = &[selftest::SOURCE];
