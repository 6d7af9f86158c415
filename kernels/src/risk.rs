//! The `risk` computation: CPU twin and GPU launch. Not written yet.

use crate::runtime::Source;

pub const SOURCE: Source = Source {
    module: "risk",
    code: include_str!("../cuda/risk.cu"),
    kernels: &[],
};
