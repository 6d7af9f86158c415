//! The `portfolio_opt` kind: a long-only, fully invested portfolio of `n`
//! assets (`w >= 0`, `sum w = 1`, `w <= max_weight`) of least variance or
//! greatest Sharpe ratio. A random search over Dirichlet(1) portfolios (on
//! the GPU when there is one) seeds an exact refine on the CPU.
//!
//! | parameter | type | default | meaning |
//! |---|---|---|---|
//! | `mu` | `[f64; n]` | with `covariance`, or `returns` | expected return of each asset, per period (a fraction: 0.08 is 8 %), 1 <= n <= 2000 |
//! | `covariance` | `[f64; n*n]` | with `mu` | covariance of the returns, row-major, symmetric within 1e-9 relative, positive semidefinite (below) |
//! | `returns` | `[f64; T*n]` | instead of `mu` and `covariance` | a returns matrix, row-major: `T >= 2` periods (rows) of `assets` returns each; `mu` is its column means and `covariance` its sample covariance (divided by `T - 1`) |
//! | `assets` | u64 | with `returns` | `n`, the columns of `returns` |
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
//! `returns` is the alternative to `mu` and `covariance` (a task gives
//! exactly one of the two; anything else is refused naming the field): a
//! history of many periods, 40 MB for 500 assets over 10,000 days, travels
//! by blob reference like any large parameters, and the worker computes the
//! moments on the CPU (`n^2 T / 2` multiply-adds), also when the search then
//! runs on a GPU; from there the task is the `mu`/`covariance` task of those
//! moments, bit for bit. The result is the same either way.
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
    /// Expected return per asset and period, as a fraction (with
    /// `covariance`; empty when `returns` is given).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mu: Vec<f64>,
    /// Covariance of the returns, `n * n`, row-major (with `mu`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub covariance: Vec<f64>,
    /// Instead of `mu` and `covariance`: returns, `T * assets`, row-major
    /// (one row per period), whose column means and sample covariance
    /// they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub returns: Option<Vec<f64>>,
    /// The columns of `returns`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assets: Option<u64>,
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
        if let Some(returns) = &p.returns {
            return Self::validate_returns(p, returns);
        }
        if p.assets.is_some() {
            return Err(BadParams::new(
                "assets goes with returns (the returns matrix's columns); with mu and covariance leave it out",
            ));
        }
        if p.mu.is_empty() && p.covariance.is_empty() {
            return Err(BadParams::new(
                "give either mu and covariance, or returns (with assets)",
            ));
        }
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
        Self::validate_settings(p, n, &p.mu)
    }

    /// The covariance and returns in f32, and one (index, score) per block
    /// of candidates.
    fn memory_estimate(p: &PortfolioOptParams) -> u64 {
        let n = p.assets_count() as u64;
        let blocks = p.samples.div_ceil(Self::CANDIDATES_PER_BLOCK);
        4 * (n * n + n) + 8 * blocks
    }
}

impl PortfolioOpt {
    /// `returns` instead of `mu` and `covariance`: its shape and values,
    /// then the settings as for the moments it gives.
    fn validate_returns(p: &PortfolioOptParams, returns: &[f64]) -> Result<(), BadParams> {
        if !p.mu.is_empty() || !p.covariance.is_empty() {
            let given = if p.mu.is_empty() { "covariance" } else { "mu" };
            return Err(BadParams::new(format!(
                "{given} and returns are both given: give either mu and covariance, or returns (with assets)"
            )));
        }
        let Some(assets) = p.assets else {
            return Err(BadParams::new(
                "assets must say how many columns returns has (one per asset)",
            ));
        };
        let n = usize::try_from(assets).unwrap_or(usize::MAX);
        if n == 0 || n > Self::MAX_ASSETS {
            return Err(BadParams::new(format!(
                "assets must be 1 to {}, got {assets}",
                Self::MAX_ASSETS
            )));
        }
        if !returns.len().is_multiple_of(n) || returns.len() / n < 2 {
            return Err(BadParams::new(format!(
                "returns must hold T * assets values with T >= 2 periods, got {} values for {n} assets",
                returns.len()
            )));
        }
        for (k, &r) in returns.iter().enumerate() {
            finite(&format!("returns[{}][{}]", k / n, k % n), r)?;
        }
        let (mu, _) = column_means(returns, n);
        Self::validate_settings(p, n, &mu)
    }

    /// What does not depend on how the moments were given.
    fn validate_settings(p: &PortfolioOptParams, n: usize, mu: &[f64]) -> Result<(), BadParams> {
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
            let best = max_excess_return(mu, p.risk_free, p.max_weight);
            if best <= 0.0 {
                return Err(BadParams::new(format!(
                    "max_sharpe needs a feasible portfolio with a return above risk_free = {}; the best return within max_weight = {} exceeds it by {best}",
                    p.risk_free, p.max_weight
                )));
            }
        }
        Ok(())
    }
}

impl PortfolioOptParams {
    /// `n`, the assets: `mu`'s length, or `assets` with `returns`.
    pub fn assets_count(&self) -> usize {
        match (&self.returns, self.assets) {
            (Some(_), Some(assets)) => usize::try_from(assets).unwrap_or(usize::MAX),
            _ => self.mu.len(),
        }
    }

    /// The parameters with `mu` and `covariance` in place of `returns`:
    /// the column means and the sample covariance (divided by `T - 1`) of
    /// the returns matrix, `n^2 T / 2` multiply-adds. `None` when there is
    /// no `returns` (the parameters are that already). Assumes
    /// [`KindSpec::validate`] passed.
    pub fn with_moments(&self) -> Option<PortfolioOptParams> {
        let returns = self.returns.as_deref()?;
        let n = self.assets_count();
        let (mu, periods) = column_means(returns, n);
        let mut covariance = vec![0.0; n * n];
        let mut centered = vec![0.0; n];
        for row in returns.chunks_exact(n) {
            for (c, (&r, &m)) in centered.iter_mut().zip(row.iter().zip(&mu)) {
                *c = r - m;
            }
            // The upper triangle, row i from column i on.
            for (i, &ci) in centered.iter().enumerate() {
                let row = &mut covariance[i * n + i..i * n + n];
                for (out, &cj) in row.iter_mut().zip(&centered[i..]) {
                    *out += ci * cj;
                }
            }
        }
        let denominator = (periods - 1) as f64;
        for i in 0..n {
            for j in i..n {
                let value = covariance[i * n + j] / denominator;
                covariance[i * n + j] = value;
                covariance[j * n + i] = value;
            }
        }
        Some(PortfolioOptParams {
            mu,
            covariance,
            ..self.clone_settings()
        })
    }

    /// These parameters without their data (no clone of a large matrix).
    fn clone_settings(&self) -> PortfolioOptParams {
        PortfolioOptParams {
            mu: Vec::new(),
            covariance: Vec::new(),
            returns: None,
            assets: None,
            risk_free: self.risk_free,
            objective: self.objective,
            max_weight: self.max_weight,
            tolerance: self.tolerance,
            max_iterations: self.max_iterations,
            seed: self.seed,
            samples: self.samples,
        }
    }
}

/// The column means of a row-major matrix of `n` columns, and its rows.
fn column_means(returns: &[f64], n: usize) -> (Vec<f64>, usize) {
    let mut sums = vec![0.0; n];
    let mut periods = 0usize;
    for row in returns.chunks_exact(n) {
        for (s, &r) in sums.iter_mut().zip(row) {
            *s += r;
        }
        periods += 1;
    }
    let count = periods.max(1) as f64;
    (sums.into_iter().map(|s| s / count).collect(), periods)
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
            returns: None,
            assets: None,
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

    /// Four periods of three assets.
    fn with_returns() -> PortfolioOptParams {
        PortfolioOptParams {
            mu: Vec::new(),
            covariance: Vec::new(),
            returns: Some(vec![
                0.01, 0.02, 0.05, //
                -0.01, 0.03, -0.02, //
                0.02, -0.01, 0.08, //
                0.00, 0.04, 0.01,
            ]),
            assets: Some(3),
            ..params()
        }
    }

    #[test]
    fn returns_give_the_column_means_and_the_sample_covariance() {
        let p = with_returns();
        PortfolioOpt::validate(&p).unwrap();
        assert_eq!(p.assets_count(), 3);
        let moments = p.with_moments().expect("computed");
        assert_eq!(moments.returns, None);
        assert_eq!(moments.assets, None);
        PortfolioOpt::validate(&moments).unwrap();
        let rows: Vec<&[f64]> = p.returns.as_deref().unwrap().chunks(3).collect();
        for j in 0..3 {
            let mean = rows.iter().map(|r| r[j]).sum::<f64>() / 4.0;
            assert!((moments.mu[j] - mean).abs() < 1e-15, "mu[{j}]");
            for k in 0..3 {
                let mean_k = rows.iter().map(|r| r[k]).sum::<f64>() / 4.0;
                let cov = rows
                    .iter()
                    .map(|r| (r[j] - mean) * (r[k] - mean_k))
                    .sum::<f64>()
                    / 3.0;
                assert!(
                    (moments.covariance[j * 3 + k] - cov).abs() < 1e-15,
                    "[{j}][{k}]"
                );
            }
        }
        assert_eq!(moments.covariance[1], moments.covariance[3], "symmetric");
        assert_eq!(params().with_moments(), None);
        assert_eq!(
            PortfolioOpt::memory_estimate(&p),
            PortfolioOpt::memory_estimate(&moments)
        );
    }

    #[test]
    fn returns_or_mu_and_covariance_exactly_one_of_the_two() {
        let check_returns = |edit: &dyn Fn(&mut PortfolioOptParams), expect: &str| {
            let mut p = with_returns();
            edit(&mut p);
            let err = PortfolioOpt::validate(&p).expect_err(expect);
            assert!(err.0.contains(expect), "{:?} lacks {expect:?}", err.0);
        };
        check_returns(
            &|p| p.mu = vec![0.1; 3],
            "mu and returns are both given: give either mu and covariance, or returns",
        );
        check_returns(
            &|p| p.covariance = vec![0.1; 9],
            "covariance and returns are both given",
        );
        check_returns(&|p| p.assets = None, "assets must say how many columns");
        check_returns(&|p| p.assets = Some(0), "assets must be 1 to 2000, got 0");
        check_returns(
            &|p| p.assets = Some(5),
            "returns must hold T * assets values with T >= 2 periods, got 12 values for 5 assets",
        );
        check_returns(
            &|p| p.assets = Some(12),
            "returns must hold T * assets values with T >= 2 periods",
        );
        check_returns(
            &|p| p.returns.as_mut().unwrap()[4] = f64::NAN,
            "returns[1][1] must be finite",
        );
        check_returns(&|p| p.max_weight = 0.3, "max_weight * n must be at least 1");
        check(
            |p| {
                p.mu.clear();
                p.covariance.clear();
            },
            "give either mu and covariance, or returns (with assets)",
        );
        check(|p| p.assets = Some(3), "assets goes with returns");
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
