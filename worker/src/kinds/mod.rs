//! The compute kinds every worker runs: CPU twins everywhere, kernels on
//! real GPUs (see `crate::compute`).

mod indicators;
mod models;
mod monte_carlo;
mod patterns;
mod portfolio_opt;
mod risk;

use crate::handler::KindTable;

pub(crate) fn register(kinds: &mut KindTable) {
    monte_carlo::register(kinds);
    risk::register(kinds);
    indicators::register(kinds);
    models::register(kinds);
    patterns::register(kinds);
    portfolio_opt::register(kinds);
}
