//! The `portfolio_opt` computation: CPU twin and GPU launch. Not written yet.

use crate::runtime::Source;

pub const SOURCE: Source = Source {
    module: "portfolio_opt",
    code: include_str!("../cuda/portfolio_opt.cu"),
    kernels: &[],
};
