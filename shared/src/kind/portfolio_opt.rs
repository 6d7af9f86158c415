//! The `portfolio_opt` kind: a long-only, fully invested portfolio of `n`
//! assets (`w >= 0`, `sum w = 1`, `w <= max_weight`) of least variance or
//! greatest Sharpe ratio. A random search over Dirichlet(1) portfolios (on
//! the GPU when there is one) seeds an exact refine on the CPU.
//!
//! | parameter | type | default | meaning |
//! |---|---|---|---|
//! | `mu` | `[f64; n]` | required | expected return of each asset, per period (a fraction: 0.08 is 8 %), 1 <= n <= 2000 |
//! | `covariance` | `[f64; n*n]` | required | covariance of the returns, row-major, symmetric within 1e-9 relative, positive semidefinite (below) |
//! | `risk_free` | f64 | 0 | the risk-free return per period, same unit as `mu` |
//! | `objective` | `"min_variance"` or `"max_sharpe"` | `"min_variance"` | what to optimize |
//! | `max_weight` | f64 | 1 | upper bound of every weight, in (0, 1], with `n * max_weight >= 1` |
//! | `tolerance` | f64 | 1e-10 | stop when the stationarity residual is at most this, in [1e-15, 1e-2] |
//! | `max_iterations` | u64 | 100000 | refine iterations at most, 1 to 10^6 |
//! | `seed` | u64 | 0 | seed of the random search (Philox; candidate j is stream j) |
//! | `samples` | u64 | 65536 | random candidates, 1 to 2^24, and `samples * n^2 <= 2^40` |
//!
//! | result field | type | meaning |
//! |---|---|---|
//! | `weights` | `[f64; n]` | the portfolio |
//! | `expected_return` | f64 | `mu' w` |
//! | `volatility` | f64 | `sqrt(w' S w)` |
//! | `sharpe` | f64 or nil | `(mu' w - risk_free) / volatility`; nil when the volatility is 0 |
//! | `method` | `"convex"` or `"local_ascent"` | how the refine solved it (below) |
//! | `iterations` | u64 | refine iterations run |
//! | `residual` | f64 | the stationarity residual of `weights` (below) |
//! | `converged` | bool | `residual <= tolerance` |
//! | `random_best_index` | u64 | the best random candidate, which the refine started from |
//! | `random_best_objective` | f64 | that candidate's variance (`min_variance`) or Sharpe ratio (`max_sharpe`) |
//!
//! What is exact: `min_variance` is a convex problem, solved by accelerated
//! projected gradient (FISTA) to the global minimum, within `tolerance`.
//! `max_sharpe` is first solved exactly through its convex reformulation
//! (minimize `y' S y` subject to `(mu - rf)' y = 1`, `y >= 0`;
//! `w = y / sum y`), which ignores `max_weight`; when that answer respects
//! `max_weight` it is the optimum (`method = "convex"`). Otherwise the bound
//! binds, and the result is a projected gradient ascent of the Sharpe ratio
//! from the best random candidate (`method = "local_ascent"`): it stops at a
//! stationary point; with a positive definite covariance the Sharpe ratio is
//! pseudo-concave where the excess return is positive, so that point is the
//! global maximum, but the ascent has no convergence rate guarantee.
//!
//! The covariance must be positive semidefinite: with a negative
//! eigenvalue some portfolios would have a negative "variance". The worker
//! checks it once per task (a Cholesky factorization, `n^3 / 6`
//! multiply-adds, as `risk` does), allowing `1e-10` times the largest
//! variance for rounding, so a singular covariance (a riskless asset, the
//! same asset twice) is accepted and an indefinite one is refused
//! (`BAD_PARAMS`, naming the row whose Cholesky pivot was not positive).
//!
//! Splitting: a `parallel` task claimed while two or more GPUs are live is
//! cut into shards of whole blocks of 256 search candidates; each shard
//! returns its best candidate, the merge takes the first of the best (ties
//! go to the lowest index, as in one search) and refines it once, so the
//! result is the same bits as an unsplit run on the same kind of device.
//!
//! The residual is `max_i |w_i - P(w - g / L)_i|`, in weight units: `P` the
//! projection onto the feasible set, `g` the gradient of the objective and
//! `L` its Lipschitz bound (`2 min(Gershgorin, Frobenius)` of the
//! covariance), or for the ascent `L = sharpe * lambda / variance` with
//! `lambda` that bound; for the reformulation the same measure on `y`,
//! divided by `sum y`. It is 0 exactly at a KKT point. The search runs in
//! f32; the refine and every reported number in f64.
//!
//! Errors (`BAD_PARAMS`): sizes or values out of bounds, non-finite values,
//! an asymmetric covariance, a negative variance, `max_sharpe` where no
//! feasible portfolio has a return above `risk_free`; and, from the worker,
//! a covariance that is not positive semidefinite.

use serde::{Deserialize, Serialize};

use super::{BadParams, KindSpec};
use crate::task::Class;

/// The optimal-portfolio kind.
#[derive(Debug)]
pub struct PortfolioOpt;

impl PortfolioOpt {
    pub const MAX_ASSETS: usize = 2000;
    pub const MAX_SAMPLES: u64 = 1 << 24;
    /// Bounds the search's work: `samples * n^2` multiply-adds.
    pub const MAX_SEARCH_WORK: u64 = 1 << 40;
    pub const MAX_ITERATIONS: u64 = 1_000_000;
    /// Relative asymmetry allowed between `S[i][j]` and `S[j][i]`.
    pub const SYMMETRY: f64 = 1e-9;
    /// Inputs beyond this magnitude would overflow the search's f32.
    pub const MAX_ABS: f64 = 1e18;
    /// Candidates one GPU block evaluates (`kernels::portfolio_opt`).
    const CANDIDATES_PER_BLOCK: u64 = 4;
}

/// What to optimize.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Objective {
    /// The least variance `w' S w`.
    #[default]
    MinVariance,
    /// The greatest `(mu' w - risk_free) / sqrt(w' S w)`.
    MaxSharpe,
}

/// How the refine solved the problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// A convex problem solved to its global optimum.
    Convex,
    /// A projected gradient ascent to a stationary point.
    LocalAscent,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PortfolioOptParams {
    /// Expected return per asset and period, as a fraction.
    pub mu: Vec<f64>,
    /// Covariance of the returns, `n * n`, row-major.
    pub covariance: Vec<f64>,
    /// Risk-free return per period, as a fraction.
    #[serde(default)]
    pub risk_free: f64,
    #[serde(default)]
    pub objective: Objective,
    /// Upper bound of every weight.
    #[serde(default = "default_max_weight")]
    pub max_weight: f64,
    /// Stationarity residual to reach, in weight units.
    #[serde(default = "default_tolerance")]
    pub tolerance: f64,
    #[serde(default = "default_max_iterations")]
    pub max_iterations: u64,
    /// Seed of the random search.
    #[serde(default)]
    pub seed: u64,
    /// Random candidates evaluated before the refine.
    #[serde(default = "default_samples")]
    pub samples: u64,
}

fn default_max_weight() -> f64 {
    1.0
}

fn default_tolerance() -> f64 {
    1e-10
}

fn default_max_iterations() -> u64 {
    100_000
}

fn default_samples() -> u64 {
    65_536
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PortfolioOptOutput {
    /// Weight of each asset; non-negative, at most `max_weight`, sum 1.
    pub weights: Vec<f64>,
    /// `mu' w`, per period.
    pub expected_return: f64,
    /// `sqrt(w' S w)`, per period.
    pub volatility: f64,
    /// `(mu' w - risk_free) / volatility`; `None` when the volatility is 0.
    pub sharpe: Option<f64>,
    pub method: Method,
    /// Refine iterations run.
    pub iterations: u64,
    /// Stationarity residual of `weights`, in weight units.
    pub residual: f64,
    /// Whether `residual <= tolerance`.
    pub converged: bool,
    /// Index of the best random candidate (the refine's start).
    pub random_best_index: u64,
    /// That candidate's variance (`min_variance`) or Sharpe ratio
    /// (`max_sharpe`).
    pub random_best_objective: f64,
}

impl KindSpec for PortfolioOpt {
    const KIND: &'static str = "portfolio_opt";
    const CLASS: Class = Class::Parallel;
    type Params = PortfolioOptParams;
    type Output = PortfolioOptOutput;

    fn validate(p: &PortfolioOptParams) -> Result<(), BadParams> {
        let n = p.mu.len();
        if n == 0 || n > Self::MAX_ASSETS {
            return Err(BadParams::new(format!(
                "mu must hold 1 to {} assets, got {n}",
                Self::MAX_ASSETS
            )));
        }
        if p.covariance.len() != n * n {
            return Err(BadParams::new(format!(
                "covariance must hold n * n = {} values (row-major), got {}",
                n * n,
                p.covariance.len()
            )));
        }
        finite("risk_free", p.risk_free)?;
        for (i, &m) in p.mu.iter().enumerate() {
            finite(&format!("mu[{i}]"), m)?;
        }
        for (k, &c) in p.covariance.iter().enumerate() {
            finite(&format!("covariance[{}][{}]", k / n, k % n), c)?;
        }
        for i in 0..n {
            let var = p.covariance[i * n + i];
            if var < 0.0 {
                return Err(BadParams::new(format!(
                    "covariance[{i}][{i}] is a variance and must be >= 0, got {var}"
                )));
            }
            for j in i + 1..n {
                let (a, b) = (p.covariance[i * n + j], p.covariance[j * n + i]);
                if (a - b).abs() > Self::SYMMETRY * a.abs().max(b.abs()) {
                    return Err(BadParams::new(format!(
                        "covariance must be symmetric within {:e} relative: [{i}][{j}] = {a}, [{j}][{i}] = {b}",
                        Self::SYMMETRY
                    )));
                }
            }
        }
        if !(p.max_weight > 0.0 && p.max_weight <= 1.0) {
            return Err(BadParams::new(format!(
                "max_weight must be in (0, 1], got {}",
                p.max_weight
            )));
        }
        // The bound must leave room for a fully invested portfolio; the
        // slack absorbs the rounding of e.g. 1/3 * 3.
        if p.max_weight * (n as f64) < 1.0 - 1e-12 {
            return Err(BadParams::new(format!(
                "max_weight * n must be at least 1 (fully invested), got {} * {n}",
                p.max_weight
            )));
        }
        if !(1e-15..=1e-2).contains(&p.tolerance) {
            return Err(BadParams::new(format!(
                "tolerance must be in [1e-15, 1e-2], got {}",
                p.tolerance
            )));
        }
        if p.max_iterations == 0 || p.max_iterations > Self::MAX_ITERATIONS {
            return Err(BadParams::new(format!(
                "max_iterations must be 1 to {}, got {}",
                Self::MAX_ITERATIONS,
                p.max_iterations
            )));
        }
        if p.samples == 0 || p.samples > Self::MAX_SAMPLES {
            return Err(BadParams::new(format!(
                "samples must be 1 to {}, got {}",
                Self::MAX_SAMPLES,
                p.samples
            )));
        }
        let work = p.samples.saturating_mul((n * n) as u64);
        if work > Self::MAX_SEARCH_WORK {
            return Err(BadParams::new(format!(
                "samples * n^2 must be at most 2^40, got {} * {n}^2",
                p.samples
            )));
        }
        if p.objective == Objective::MaxSharpe {
            let best = max_excess_return(&p.mu, p.risk_free, p.max_weight);
            if best <= 0.0 {
                return Err(BadParams::new(format!(
                    "max_sharpe needs a feasible portfolio with a return above risk_free = {}; the best return within max_weight = {} exceeds it by {best}",
                    p.risk_free, p.max_weight
                )));
            }
        }
        Ok(())
    }

    /// The covariance and returns in f32, and one (index, score) per block
    /// of candidates.
    fn memory_estimate(p: &PortfolioOptParams) -> u64 {
        let n = p.mu.len() as u64;
        let blocks = p.samples.div_ceil(Self::CANDIDATES_PER_BLOCK);
        4 * (n * n + n) + 8 * blocks
    }
}

fn finite(name: &str, value: f64) -> Result<(), BadParams> {
    if value.is_finite() && value.abs() <= PortfolioOpt::MAX_ABS {
        Ok(())
    } else {
        Err(BadParams::new(format!(
            "{name} must be finite and at most {:e} in magnitude, got {value}",
            PortfolioOpt::MAX_ABS
        )))
    }
}

/// The greatest `(mu - rf)' w` over the feasible set: fill the assets in
/// order of return, each up to `max_weight` (exact for this linear program).
fn max_excess_return(mu: &[f64], risk_free: f64, max_weight: f64) -> f64 {
    let mut excess: Vec<f64> = mu.iter().map(|m| m - risk_free).collect();
    excess.sort_by(|a, b| b.total_cmp(a));
    let mut left = 1.0f64;
    let mut total = 0.0;
    for e in excess {
        if left <= 0.0 {
            break;
        }
        let w = left.min(max_weight);
        total += w * e;
        left -= w;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> PortfolioOptParams {
        PortfolioOptParams {
            mu: vec![0.05, 0.08, 0.12],
            covariance: vec![0.04, 0.006, 0.0, 0.006, 0.09, 0.01, 0.0, 0.01, 0.16],
            risk_free: 0.02,
            objective: Objective::MaxSharpe,
            max_weight: 1.0,
            tolerance: 1e-10,
            max_iterations: 1000,
            seed: 1,
            samples: 1024,
        }
    }

    fn check(edit: impl FnOnce(&mut PortfolioOptParams), expect: &str) {
        let mut p = params();
        edit(&mut p);
        let err = PortfolioOpt::validate(&p).expect_err(expect);
        assert!(err.0.contains(expect), "{:?} lacks {expect:?}", err.0);
    }

    #[test]
    fn good_parameters_pass() {
        PortfolioOpt::validate(&params()).unwrap();
        let mut p = params();
        p.max_weight = 1.0 / 3.0;
        PortfolioOpt::validate(&p).unwrap();
    }

    #[test]
    fn bad_parameters_are_named() {
        check(|p| p.mu.clear(), "mu must hold 1 to 2000");
        check(|p| p.mu = vec![0.0; 2001], "mu must hold 1 to 2000");
        check(
            |p| p.covariance.truncate(8),
            "covariance must hold n * n = 9",
        );
        check(|p| p.mu[1] = f64::NAN, "mu[1] must be finite");
        check(
            |p| p.covariance[5] = f64::INFINITY,
            "covariance[1][2] must be finite",
        );
        check(|p| p.risk_free = f64::NAN, "risk_free must be finite");
        check(
            |p| p.covariance[4] = -0.01,
            "covariance[1][1] is a variance",
        );
        check(|p| p.covariance[1] = 0.0061, "symmetric within 1e-9");
        check(|p| p.max_weight = 0.0, "max_weight must be in (0, 1]");
        check(|p| p.max_weight = 0.3, "max_weight * n must be at least 1");
        check(|p| p.tolerance = 0.0, "tolerance must be in");
        check(|p| p.max_iterations = 0, "max_iterations must be 1 to");
        check(|p| p.samples = 0, "samples must be 1 to");
        check(|p| p.samples = 1 << 25, "samples must be 1 to");
        check(
            |p| p.risk_free = 0.2,
            "max_sharpe needs a feasible portfolio",
        );
        // Only the 12 % asset beats 10 %, but at most half can go there and
        // the rest earns less than the excess gained.
        check(
            |p| {
                p.risk_free = 0.1;
                p.max_weight = 0.5;
            },
            "max_sharpe needs a feasible portfolio",
        );
    }

    #[test]
    fn tiny_asymmetry_passes_and_min_variance_needs_no_excess_return() {
        let mut p = params();
        p.covariance[1] = 0.006 * (1.0 + 1e-12);
        p.risk_free = 0.5;
        p.objective = Objective::MinVariance;
        PortfolioOpt::validate(&p).unwrap();
    }

    #[test]
    fn defaults_fill_in() {
        let p: PortfolioOptParams =
            crate::msgpack::decode(&crate::msgpack::encode(&required_only(&params())).unwrap())
                .unwrap();
        assert_eq!(p.objective, Objective::MinVariance);
        assert_eq!(p.max_weight, 1.0);
        assert_eq!(p.tolerance, 1e-10);
        assert_eq!(p.samples, 65_536);
        assert_eq!(p.max_iterations, 100_000);
    }

    /// Only the required fields, as a producer may send them.
    fn required_only(p: &PortfolioOptParams) -> rmpv::Value {
        rmpv::Value::Map(vec![
            (
                "mu".into(),
                rmpv::Value::Array(p.mu.iter().map(|&m| m.into()).collect()),
            ),
            (
                "covariance".into(),
                rmpv::Value::Array(p.covariance.iter().map(|&c| c.into()).collect()),
            ),
        ])
    }

    #[test]
    fn memory_estimate_counts_the_f32_matrix() {
        let p = params();
        assert_eq!(PortfolioOpt::memory_estimate(&p), 4 * 12 + 8 * 256);
    }
}
