//! The `indicators` computation: CPU twin and GPU launch. Not written yet.

use crate::runtime::Source;

pub const SOURCE: Source = Source {
    module: "indicators",
    code: include_str!("../cuda/indicators.cu"),
    kernels: &[],
};
