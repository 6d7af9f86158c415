//! The `risk` kind: value at risk (VaR) and expected shortfall (CVaR) of a
//! portfolio's loss over one horizon, by Monte Carlo or from history.
//!
//! Class `parallel`, splittable: scenarios come in fixed blocks, a shard is
//! a run of whole blocks, and a split run equals the whole run bit for bit.
//!
//! | parameter | type | meaning |
//! |---|---|---|
//! | `method` | `"monte_carlo"` or `"historical"` | the tag choosing the fields below |
//! | `weights` | `[f64; n]` | position value per asset (currency units), 1 to 1,000 assets (Monte Carlo) or 10,000 (historical) |
//! | `confidence` | `[f64]` | 1 to 16 levels, each strictly between 0 and 1 (e.g. `[0.95, 0.99]`) |
//! | `mu` | `[f64; n]` | Monte Carlo: mean return of each asset over the horizon (fraction) |
//! | `covariance` | `[f64; n*n]` | Monte Carlo: covariance of the returns, row-major, symmetric, positive semidefinite |
//! | `scenarios` | u64 | Monte Carlo: number of scenarios N, 1 to 10^8 |
//! | `seed` | u64 | Monte Carlo: Philox seed; scenario j draws its normals from stream j |
//! | `returns` | `[f64; T*n]` | historical: one row of asset returns per scenario, row-major; T*n at most 10^8 |
//!
//! Result ([`RiskOutput`]): for each level, in the order given, `var` and
//! `cvar` (currency units, positive = a loss); `mean_loss` over every
//! scenario; `scenarios` N.
//!
//! Definitions: the loss of a scenario with returns r is `-sum_i w_i r_i`
//! (Monte Carlo: r = mu + L z, L the Cholesky factor of the covariance, z
//! standard normals). With the losses sorted in descending order and
//! k = [`tail_count`]`(c, N)` = ceil((1 - c) N), VaR is the k-th largest
//! loss and CVaR the mean of the k largest.
//!
//! Errors (`BAD_PARAMS`, never retried): a bound above broken, a non-finite
//! number, lengths that do not match n, a covariance that is not symmetric
//! or has a negative diagonal; the tail of the lowest level, k, above
//! 10^7 scenarios; and, from the worker, a covariance whose Cholesky fails
//! even after a jitter of 10^-10 times its largest diagonal entry is added
//! to the diagonal (not positive semidefinite).

use serde::{Deserialize, Serialize};

use super::{BadParams, KindSpec};
use crate::task::Class;

/// VaR and CVaR of a portfolio's loss.
#[derive(Debug)]
pub struct Risk;

/// How the scenarios are made: the `method` field on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum RiskParams {
    MonteCarlo(MonteCarloRisk),
    Historical(HistoricalRisk),
}

/// Gaussian returns simulated with Philox normals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct MonteCarloRisk {
    /// Position value per asset, in currency units.
    pub weights: Vec<f64>,
    /// Mean return per asset over the horizon, as a fraction.
    pub mu: Vec<f64>,
    /// Covariance of the horizon returns, n x n, row-major.
    pub covariance: Vec<f64>,
    /// Number of scenarios N.
    #[schemars(range(min = 1, max = Risk::MAX_SCENARIOS))]
    pub scenarios: u64,
    /// Philox seed: scenario j depends only on (seed, j).
    pub seed: u64,
    /// Confidence levels, each in (0, 1).
    #[schemars(length(min = 1, max = Risk::MAX_LEVELS))]
    pub confidence: Vec<f64>,
}

/// One scenario per row of observed returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct HistoricalRisk {
    /// Position value per asset, in currency units.
    pub weights: Vec<f64>,
    /// Returns, T rows (scenarios) of n assets, row-major, as fractions.
    pub returns: Vec<f64>,
    /// Confidence levels, each in (0, 1).
    #[schemars(length(min = 1, max = Risk::MAX_LEVELS))]
    pub confidence: Vec<f64>,
}

/// The risk measures at one confidence level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RiskLevel {
    pub confidence: f64,
    /// Value at risk: the k-th largest loss, in currency units.
    pub var: f64,
    /// Expected shortfall: the mean of the k largest losses.
    pub cvar: f64,
    /// k, the number of scenarios in the tail.
    pub tail_count: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RiskOutput {
    /// One entry per requested level, in the order requested.
    pub levels: Vec<RiskLevel>,
    /// The mean loss over every scenario, in currency units.
    pub mean_loss: f64,
    /// N, the number of scenarios.
    pub scenarios: u64,
}

impl Risk {
    pub const MAX_LEVELS: usize = 16;
    pub const MAX_MC_ASSETS: usize = 1_000;
    pub const MAX_HISTORICAL_ASSETS: usize = 10_000;
    pub const MAX_SCENARIOS: u64 = 100_000_000;
    pub const MAX_RETURNS: usize = 100_000_000;
    /// The most tail scenarios a shard keeps (8 bytes each).
    pub const MAX_TAIL: u64 = 10_000_000;
    /// Relative asymmetry of the covariance tolerated (rounding in the
    /// producer's arithmetic).
    pub const SYMMETRY_TOLERANCE: f64 = 1e-9;
    /// The memory estimate's scenarios (8 bytes each): the GPU computes
    /// 2 Mi scenarios per launch and keeps up to as many again of tail
    /// candidates (`tandem_kernels::risk::GPU_CHUNK_BLOCKS`), within it.
    pub const GPU_CHUNK: u64 = 1 << 22;
}

/// k = ceil((1 - c) N), the number of scenarios in the tail at level c.
/// When (1 - c) N lies within 10^-9 (relative) of an integer it is taken as
/// that integer, so that c = 0.99 and N = 10^6 give 10^4 rather than the
/// 10^4 + 1 of floating-point rounding. At least 1.
pub fn tail_count(confidence: f64, scenarios: u64) -> u64 {
    let exact = (1.0 - confidence) * scenarios as f64;
    let nearest = exact.round();
    let k = if (exact - nearest).abs() <= 1e-9 * nearest.max(1.0) {
        nearest
    } else {
        exact.ceil()
    };
    (k as u64).clamp(1, scenarios.max(1))
}

impl RiskParams {
    pub fn weights(&self) -> &[f64] {
        match self {
            RiskParams::MonteCarlo(p) => &p.weights,
            RiskParams::Historical(p) => &p.weights,
        }
    }

    pub fn confidence(&self) -> &[f64] {
        match self {
            RiskParams::MonteCarlo(p) => &p.confidence,
            RiskParams::Historical(p) => &p.confidence,
        }
    }

    /// N: simulated scenarios, or rows of returns.
    pub fn scenarios(&self) -> u64 {
        match self {
            RiskParams::MonteCarlo(p) => p.scenarios,
            RiskParams::Historical(p) => match p.weights.len() {
                0 => 0,
                n => (p.returns.len() / n) as u64,
            },
        }
    }

    /// The largest tail any level needs: k at the lowest confidence.
    pub fn max_tail_count(&self) -> u64 {
        let lowest = self
            .confidence()
            .iter()
            .copied()
            .fold(f64::INFINITY, f64::min);
        tail_count(lowest, self.scenarios())
    }
}

fn check_finite(field: &str, values: &[f64]) -> Result<(), BadParams> {
    match values.iter().position(|v| !v.is_finite()) {
        Some(i) => Err(BadParams::new(format!(
            "{field}[{i}] must be finite, got {}",
            values[i]
        ))),
        None => Ok(()),
    }
}

fn check_weights(weights: &[f64], max: usize) -> Result<(), BadParams> {
    if weights.is_empty() || weights.len() > max {
        return Err(BadParams::new(format!(
            "weights must hold 1 to {max} assets, got {}",
            weights.len()
        )));
    }
    check_finite("weights", weights)
}

fn check_confidence(levels: &[f64]) -> Result<(), BadParams> {
    if levels.is_empty() || levels.len() > Risk::MAX_LEVELS {
        return Err(BadParams::new(format!(
            "confidence must hold 1 to {} levels, got {}",
            Risk::MAX_LEVELS,
            levels.len()
        )));
    }
    for (i, &c) in levels.iter().enumerate() {
        if c.is_nan() || c <= 0.0 || c >= 1.0 {
            return Err(BadParams::new(format!(
                "confidence[{i}] must be strictly between 0 and 1, got {c}"
            )));
        }
    }
    Ok(())
}

fn check_covariance(covariance: &[f64], n: usize) -> Result<(), BadParams> {
    if covariance.len() != n * n {
        return Err(BadParams::new(format!(
            "covariance must hold n*n = {} entries (n = {n} assets), got {}",
            n * n,
            covariance.len()
        )));
    }
    check_finite("covariance", covariance)?;
    for i in 0..n {
        let diagonal = covariance[i * n + i];
        if diagonal < 0.0 {
            return Err(BadParams::new(format!(
                "covariance[{i}][{i}] (a variance) must not be negative, got {diagonal}"
            )));
        }
        for j in 0..i {
            let (a, b) = (covariance[i * n + j], covariance[j * n + i]);
            if (a - b).abs() > Risk::SYMMETRY_TOLERANCE * a.abs().max(b.abs()) {
                return Err(BadParams::new(format!(
                    "covariance must be symmetric: [{i}][{j}] = {a} but [{j}][{i}] = {b}"
                )));
            }
        }
    }
    Ok(())
}

impl KindSpec for Risk {
    const KIND: &'static str = "risk";
    const CLASS: Class = Class::Parallel;
    type Params = RiskParams;
    type Output = RiskOutput;

    fn validate(params: &RiskParams) -> Result<(), BadParams> {
        check_confidence(params.confidence())?;
        match params {
            RiskParams::MonteCarlo(p) => {
                check_weights(&p.weights, Risk::MAX_MC_ASSETS)?;
                let n = p.weights.len();
                if p.mu.len() != n {
                    return Err(BadParams::new(format!(
                        "mu must hold one mean per asset ({n}), got {}",
                        p.mu.len()
                    )));
                }
                check_finite("mu", &p.mu)?;
                check_covariance(&p.covariance, n)?;
                if p.scenarios == 0 || p.scenarios > Risk::MAX_SCENARIOS {
                    return Err(BadParams::new(format!(
                        "scenarios must be 1 to {}, got {}",
                        Risk::MAX_SCENARIOS,
                        p.scenarios
                    )));
                }
            }
            RiskParams::Historical(p) => {
                check_weights(&p.weights, Risk::MAX_HISTORICAL_ASSETS)?;
                let n = p.weights.len();
                if p.returns.is_empty()
                    || p.returns.len() > Risk::MAX_RETURNS
                    || !p.returns.len().is_multiple_of(n)
                {
                    return Err(BadParams::new(format!(
                        "returns must hold 1 or more whole rows of n = {n} assets, at most {} \
                         numbers in all; got {}",
                        Risk::MAX_RETURNS,
                        p.returns.len()
                    )));
                }
                check_finite("returns", &p.returns)?;
            }
        }
        let tail = params.max_tail_count();
        if tail > Risk::MAX_TAIL {
            return Err(BadParams::new(format!(
                "the tail at the lowest confidence level, ceil((1 - c) N), must be at most {} \
                 scenarios, got {tail}: raise the level or lower N",
                Risk::MAX_TAIL
            )));
        }
        Ok(())
    }

    /// The GPU path's buffers: Monte Carlo, one chunk of losses and the
    /// exposures; historical, the returns, the weights and the losses.
    fn memory_estimate(params: &RiskParams) -> u64 {
        let n = params.weights().len() as u64;
        match params {
            RiskParams::MonteCarlo(p) => 8 * (p.scenarios.min(Risk::GPU_CHUNK) + n),
            RiskParams::Historical(p) => 8 * (p.returns.len() as u64 + n + params.scenarios()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn monte_carlo() -> MonteCarloRisk {
        MonteCarloRisk {
            weights: vec![100.0, 50.0],
            mu: vec![0.01, 0.02],
            covariance: vec![0.04, 0.01, 0.01, 0.09],
            scenarios: 10_000,
            seed: 7,
            confidence: vec![0.95, 0.99],
        }
    }

    fn historical() -> HistoricalRisk {
        HistoricalRisk {
            weights: vec![1.0, 2.0],
            returns: vec![0.1, -0.1, 0.0, 0.2, -0.3, 0.1],
            confidence: vec![0.5],
        }
    }

    fn check(params: RiskParams, fragment: Option<&str>) {
        let outcome = Risk::validate(&params);
        match fragment {
            None => assert!(outcome.is_ok(), "{outcome:?}"),
            Some(fragment) => {
                let err = outcome.expect_err("should be refused").0;
                assert!(err.contains(fragment), "{err:?} lacks {fragment:?}");
            }
        }
    }

    #[test]
    fn bounds() {
        let mc = |edit: fn(&mut MonteCarloRisk)| {
            let mut p = monte_carlo();
            edit(&mut p);
            RiskParams::MonteCarlo(p)
        };
        let hist = |edit: fn(&mut HistoricalRisk)| {
            let mut p = historical();
            edit(&mut p);
            RiskParams::Historical(p)
        };
        check(mc(|_| {}), None);
        check(hist(|_| {}), None);
        check(mc(|p| p.confidence = vec![]), Some("confidence must hold"));
        check(mc(|p| p.confidence = vec![0.9, 1.0]), Some("confidence[1]"));
        check(mc(|p| p.confidence = vec![f64::NAN]), Some("confidence[0]"));
        check(mc(|p| p.weights = vec![]), Some("weights must hold"));
        check(mc(|p| p.weights[1] = f64::INFINITY), Some("weights[1]"));
        check(mc(|p| p.mu = vec![0.0]), Some("mu must hold"));
        check(mc(|p| p.mu[0] = f64::NAN), Some("mu[0]"));
        check(mc(|p| p.covariance.truncate(3)), Some("n*n"));
        check(mc(|p| p.covariance[1] = 0.02), Some("symmetric"));
        check(mc(|p| p.covariance[3] = -0.01), Some("[1][1]"));
        check(mc(|p| p.covariance[2] = f64::NAN), Some("covariance[2]"));
        check(mc(|p| p.scenarios = 0), Some("scenarios must be"));
        check(
            mc(|p| p.scenarios = Risk::MAX_SCENARIOS + 1),
            Some("scenarios must be"),
        );
        check(
            mc(|p| {
                p.scenarios = Risk::MAX_SCENARIOS;
                p.confidence = vec![0.5];
            }),
            Some("tail"),
        );
        check(
            mc(|p| {
                p.scenarios = Risk::MAX_SCENARIOS;
                p.confidence = vec![0.9];
            }),
            None,
        );
        check(hist(|p| p.returns.push(0.0)), Some("whole rows"));
        check(hist(|p| p.returns.clear()), Some("whole rows"));
        check(
            hist(|p| p.returns[4] = f64::NEG_INFINITY),
            Some("returns[4]"),
        );
    }

    #[test]
    fn tail_counts() {
        assert_eq!(tail_count(0.99, 1_000_000), 10_000);
        assert_eq!(tail_count(0.95, 1_000_000), 50_000);
        assert_eq!(tail_count(0.95, 10), 1);
        assert_eq!(tail_count(0.9, 10), 1);
        assert_eq!(tail_count(0.5, 3), 2);
        assert_eq!(tail_count(0.999, 100), 1);
        assert_eq!(tail_count(0.01, 100), 99);
    }

    #[test]
    fn the_method_is_a_tag_on_the_wire() {
        let params = RiskParams::Historical(historical());
        let bytes = crate::msgpack::encode(&params).unwrap();
        let value: rmpv::Value = crate::msgpack::decode(&bytes).unwrap();
        assert!(
            value.to_string().contains("\"method\": \"historical\""),
            "{value}"
        );
        assert_eq!(
            crate::msgpack::decode::<RiskParams>(&bytes).unwrap(),
            params
        );
        assert_eq!(params.scenarios(), 3);
        assert_eq!(params.max_tail_count(), 2);
        assert_eq!(Risk::memory_estimate(&params), 8 * (6 + 2 + 3));
    }
}
