//! The kinds this crate defines, and [`KindTable::with_builtins`], which
//! registers them: the built-in kinds (`builtin`: `noop`, `sleep`, `echo`,
//! `fail`, and the test kinds), and one file per compute and model kind,
//! CPU twins everywhere, kernels on real GPUs (see `crate::compute`).
//!
//! The kinds sit above the handler layer (`handler`, `compute`, `split`,
//! `kind_table`) and nothing below imports them.

mod builtin;
mod features;
mod indicators;
mod model_kinds;
mod monte_carlo;
mod patterns;
mod portfolio_opt;
mod risk;

use crate::kind_table::KindTable;

impl KindTable {
    /// A table with the built-in kinds (`noop`, `sleep`, `echo`, `fail`)
    /// and every compute and model kind.
    pub fn with_builtins() -> Self {
        let mut kinds = Self::new();
        builtin::register(&mut kinds);
        monte_carlo::register(&mut kinds);
        risk::register(&mut kinds);
        indicators::register(&mut kinds);
        model_kinds::register(&mut kinds);
        patterns::register(&mut kinds);
        portfolio_opt::register(&mut kinds);
        features::register(&mut kinds);
        kinds
    }

    /// Adds the test kinds `panic`, `abort`, `gpu_only` and `split_sum`.
    pub fn add_test_kinds(&mut self) -> &mut Self {
        builtin::register_test_kinds(self);
        self
    }
}
