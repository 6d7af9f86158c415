//! The `monte_carlo` computation: CPU twin and GPU launch. Not written yet.

use crate::runtime::Source;

pub const SOURCE: Source = Source {
    module: "monte_carlo",
    code: include_str!("../cuda/monte_carlo.cu"),
    kernels: &[],
};
