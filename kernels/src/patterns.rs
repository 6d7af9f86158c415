//! The `patterns` computation: CPU twin and GPU launch. Not written yet.

use crate::runtime::Source;

pub const SOURCE: Source = Source {
    module: "patterns",
    code: include_str!("../cuda/patterns.cu"),
    kernels: &[],
};
