//! The compute kinds every worker runs: CPU twins everywhere, kernels on
//! real GPUs (see `crate::compute`).

mod indicators;
mod models;
mod monte_carlo;
mod patterns;
mod portfolio_opt;
mod risk;

use crate::handler::Registry;

pub(crate) fn register(registry: &mut Registry) {
    monte_carlo::register(registry);
    risk::register(registry);
    indicators::register(registry);
    models::register(registry);
    patterns::register(registry);
    portfolio_opt::register(registry);
}
