//! `monte_carlo`: option prices and the terminal price distribution by
//! Monte Carlo simulation of geometric Brownian motion under the
//! risk-neutral measure. Class `parallel`: a task splits into shards of
//! whole 4096-path blocks, and the merged result equals the unsplit one bit
//! for bit.
//!
//! | parameter | type | meaning | bounds |
//! |---|---|---|---|
//! | `s0` | f64 | spot price | finite, > 0 |
//! | `strike` | f64 | strike of every option | finite, > 0 |
//! | `rate` | f64 | risk-free rate, continuously compounded, per year | finite, \|rate\| <= 1 |
//! | `dividend` | f64 | dividend yield, per year (default 0) | finite, \|dividend\| <= 1 |
//! | `sigma` | f64 | volatility, per square root of a year | finite, 0 < sigma <= 5 |
//! | `maturity` | f64 | years to expiry | finite, 0 < maturity <= 100 |
//! | `steps` | u32 | time steps per path, the Asian monitoring dates | 1..=10 000 |
//! | `paths` | u64 | simulated paths | 1..=10^9, paths * steps <= 10^11 |
//! | `seed` | u64 | Philox key: path i depends only on (seed, i) | any |
//! | `percentiles` | [f64] | levels of the terminal price distribution (default none) | each in (0, 100), at most 99 |
//!
//! The log-price range `ln s0 +- (|r - q - sigma^2/2| t + 10 sigma sqrt(t))`
//! must also stay within +-75, so that f32 prices cannot overflow.
//!
//! | result | type | meaning |
//! |---|---|---|
//! | `european_call`, `european_put` | `{price, std_error}` | discounted European prices |
//! | `asian_arithmetic_call` | `{price, std_error}` | call on the arithmetic average of the `steps` prices (s0 excluded) |
//! | `asian_geometric_call` | `{price, std_error}` | call on their geometric average |
//! | `mean_terminal_price` | f64 | mean simulated price at maturity (undiscounted) |
//! | `percentiles` | [`{level, price}`] | terminal price at each requested level, from a 4096-bin log-price histogram over the mean +- 8 sigma sqrt(t): exact within one bin, a log-price width of sigma sqrt(t) / 256 |
//! | `paths` | u64 | paths simulated |
//!
//! Errors: `BAD_PARAMS` for a parameter out of bounds (the message names it
//! and the bound). GPU and CPU results agree within a relative 1e-4.

use serde::{Deserialize, Serialize};

use super::{BadParams, KindSpec};
use crate::task::Class;

/// The `monte_carlo` kind.
#[derive(Debug)]
pub struct MonteCarlo;

impl MonteCarlo {
    pub const MAX_STEPS: u32 = 10_000;
    pub const MAX_PATHS: u64 = 1_000_000_000;
    /// The most path steps a task may ask for (`paths * steps`).
    pub const MAX_PATH_STEPS: u64 = 100_000_000_000;
    pub const MAX_PERCENTILES: usize = 99;
    /// Bound on `|ln S|` over the likely range of paths: `exp(75) * 10^4`
    /// still fits an f32 sum of prices.
    pub const MAX_LOG_PRICE: f64 = 75.0;
    /// Paths per block, the unit a split divides (`kernels::monte_carlo`).
    pub const BLOCK_PATHS: u64 = 4096;
    /// Counts in the histogram: 4096 bins, underflow and overflow.
    const HISTOGRAM_LEN: u64 = 4098;
    /// f64 sums the GPU writes per block.
    const SUMS_PER_BLOCK: u64 = 9;
}

/// What to simulate and price.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct MonteCarloParams {
    /// Spot price.
    #[schemars(extend("exclusiveMinimum" = 0))]
    pub s0: f64,
    /// Strike of every option.
    #[schemars(extend("exclusiveMinimum" = 0))]
    pub strike: f64,
    /// Risk-free rate, continuously compounded, per year (0.03 = 3%).
    pub rate: f64,
    /// Dividend yield, continuously compounded, per year.
    #[serde(default)]
    pub dividend: f64,
    /// Volatility, per square root of a year (0.2 = 20%).
    #[schemars(extend("exclusiveMinimum" = 0))]
    pub sigma: f64,
    /// Time to expiry, in years.
    #[schemars(extend("exclusiveMinimum" = 0))]
    pub maturity: f64,
    /// Time steps per path; the Asian options average the price at each.
    #[schemars(range(min = 1, max = MonteCarlo::MAX_STEPS))]
    pub steps: u32,
    /// Number of simulated paths.
    #[schemars(range(min = 1, max = MonteCarlo::MAX_PATHS))]
    pub paths: u64,
    /// The generator's key: the same seed gives the same result bit for bit.
    pub seed: u64,
    /// Percent levels in (0, 100) of the terminal price distribution.
    #[serde(default)]
    #[schemars(length(max = MonteCarlo::MAX_PERCENTILES))]
    pub percentiles: Vec<f64>,
}

/// A price and its Monte Carlo standard error (same units as the price).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Estimate {
    pub price: f64,
    pub std_error: f64,
}

/// A level of the terminal price distribution.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Percentile {
    /// Percent, as requested.
    pub level: f64,
    /// Terminal price at that level.
    pub price: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct MonteCarloOutput {
    /// Discounted European call price.
    pub european_call: Estimate,
    /// Discounted European put price.
    pub european_put: Estimate,
    /// Discounted call on the arithmetic average of the `steps` prices.
    pub asian_arithmetic_call: Estimate,
    /// Discounted call on the geometric average of the `steps` prices.
    pub asian_geometric_call: Estimate,
    /// Mean simulated terminal price, undiscounted.
    pub mean_terminal_price: f64,
    /// The requested levels, in the order given.
    pub percentiles: Vec<Percentile>,
    /// Paths simulated.
    pub paths: u64,
}

fn positive(name: &str, value: f64) -> Result<(), BadParams> {
    if !value.is_finite() || value <= 0.0 {
        return Err(BadParams::new(format!(
            "{name} must be a finite positive number, got {value}"
        )));
    }
    Ok(())
}

fn positive_at_most(name: &str, value: f64, max: f64) -> Result<(), BadParams> {
    if !value.is_finite() || value <= 0.0 || value > max {
        return Err(BadParams::new(format!(
            "{name} must be a finite number in (0, {max}], got {value}"
        )));
    }
    Ok(())
}

fn bounded(name: &str, value: f64, max: f64) -> Result<(), BadParams> {
    if !value.is_finite() || value.abs() > max {
        return Err(BadParams::new(format!(
            "{name} must be a finite number in [-{max}, {max}], got {value}"
        )));
    }
    Ok(())
}

impl KindSpec for MonteCarlo {
    const KIND: &'static str = "monte_carlo";
    const CLASS: Class = Class::Parallel;
    type Params = MonteCarloParams;
    type Output = MonteCarloOutput;

    fn validate(p: &MonteCarloParams) -> Result<(), BadParams> {
        positive("s0", p.s0)?;
        positive("strike", p.strike)?;
        positive_at_most("sigma", p.sigma, 5.0)?;
        positive_at_most("maturity", p.maturity, 100.0)?;
        bounded("rate", p.rate, 1.0)?;
        bounded("dividend", p.dividend, 1.0)?;
        if !(1..=Self::MAX_STEPS).contains(&p.steps) {
            return Err(BadParams::new(format!(
                "steps must be in 1..={}, got {}",
                Self::MAX_STEPS,
                p.steps
            )));
        }
        if !(1..=Self::MAX_PATHS).contains(&p.paths) {
            return Err(BadParams::new(format!(
                "paths must be in 1..={}, got {}",
                Self::MAX_PATHS,
                p.paths
            )));
        }
        if p.paths.saturating_mul(u64::from(p.steps)) > Self::MAX_PATH_STEPS {
            return Err(BadParams::new(format!(
                "paths * steps must be at most {}, got {} * {}",
                Self::MAX_PATH_STEPS,
                p.paths,
                p.steps
            )));
        }
        let drift = (p.rate - p.dividend - 0.5 * p.sigma * p.sigma).abs() * p.maturity;
        let spread = drift + 10.0 * p.sigma * p.maturity.sqrt();
        let log_s0 = p.s0.ln();
        if log_s0.abs() + spread > Self::MAX_LOG_PRICE {
            return Err(BadParams::new(format!(
                "the log-price range ln(s0) +- (|rate - dividend - sigma^2/2| maturity + 10 sigma sqrt(maturity)) = {log_s0:.3} +- {spread:.3} must stay within +-{} (f32 prices)",
                Self::MAX_LOG_PRICE
            )));
        }
        if p.percentiles.len() > Self::MAX_PERCENTILES {
            return Err(BadParams::new(format!(
                "percentiles may list at most {} levels, got {}",
                Self::MAX_PERCENTILES,
                p.percentiles.len()
            )));
        }
        if let Some(level) = p
            .percentiles
            .iter()
            .find(|&&l| !(l.is_finite() && l > 0.0 && l < 100.0))
        {
            return Err(BadParams::new(format!(
                "percentiles must each be a finite number in (0, 100), got {level}"
            )));
        }
        Ok(())
    }

    /// The per-block sums and the histogram counts the GPU writes.
    fn memory_estimate(p: &MonteCarloParams) -> u64 {
        let blocks = p.paths.div_ceil(Self::BLOCK_PATHS);
        (blocks * Self::SUMS_PER_BLOCK + Self::HISTOGRAM_LEN) * 8
    }
}

/// European call and put prices under Black-Scholes with a continuous
/// dividend yield: the closed form the `european_call` and `european_put`
/// estimates converge to, for checking results (`(call, put)`).
pub fn black_scholes(
    s0: f64,
    strike: f64,
    rate: f64,
    dividend: f64,
    sigma: f64,
    maturity: f64,
) -> (f64, f64) {
    let vol = sigma * maturity.sqrt();
    let d1 = ((s0 / strike).ln() + (rate - dividend + sigma * sigma / 2.0) * maturity) / vol;
    let d2 = d1 - vol;
    let spot = s0 * (-dividend * maturity).exp();
    let bond = strike * (-rate * maturity).exp();
    let call = spot * norm_cdf(d1) - bond * norm_cdf(d2);
    let put = bond * norm_cdf(-d2) - spot * norm_cdf(-d1);
    (call, put)
}

/// The standard normal distribution function, through the Numerical
/// Recipes `erfc` (relative error below 1.2e-7: far below any Monte Carlo
/// error it is compared with).
pub fn norm_cdf(x: f64) -> f64 {
    let z = x.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.5 * z);
    let erfc = t
        * (-z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87
                                        + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    if x >= 0.0 {
        1.0 - 0.5 * erfc
    } else {
        0.5 * erfc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> MonteCarloParams {
        MonteCarloParams {
            s0: 100.0,
            strike: 100.0,
            rate: 0.03,
            dividend: 0.0,
            sigma: 0.2,
            maturity: 1.0,
            steps: 252,
            paths: 1_000_000,
            seed: 42,
            percentiles: vec![5.0, 50.0, 95.0],
        }
    }

    fn check(change: impl FnOnce(&mut MonteCarloParams), expect: Result<(), &str>) {
        let mut p = params();
        change(&mut p);
        match (MonteCarlo::validate(&p), expect) {
            (Ok(()), Ok(())) => {}
            (Err(e), Err(needle)) => assert!(e.0.contains(needle), "{e} lacks {needle:?}"),
            (got, want) => panic!("{p:?}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn bounds() {
        check(|_| {}, Ok(()));
        check(|p| p.s0 = 0.0, Err("s0"));
        check(|p| p.s0 = f64::NAN, Err("s0"));
        check(|p| p.strike = -1.0, Err("strike"));
        check(|p| p.strike = f64::INFINITY, Err("strike"));
        check(|p| p.sigma = 0.0, Err("sigma"));
        check(|p| p.sigma = 6.0, Err("sigma"));
        check(|p| p.maturity = 0.0, Err("maturity"));
        check(|p| p.maturity = 101.0, Err("maturity"));
        check(|p| p.rate = f64::NAN, Err("rate"));
        check(|p| p.rate = -0.01, Ok(()));
        check(|p| p.dividend = 2.0, Err("dividend"));
        check(|p| p.steps = 0, Err("steps"));
        check(|p| p.steps = 10_001, Err("steps"));
        check(|p| p.paths = 0, Err("paths"));
        check(|p| p.paths = 1_000_000_001, Err("paths"));
        check(
            |p| {
                p.paths = 1_000_000_000;
                p.steps = 101
            },
            Err("paths * steps"),
        );
        check(
            |p| {
                p.paths = 1_000_000_000;
                p.steps = 100
            },
            Ok(()),
        );
        check(|p| p.s0 = 1e35, Err("log-price"));
        check(
            |p| {
                p.sigma = 5.0;
                p.maturity = 100.0
            },
            Err("log-price"),
        );
        check(|p| p.percentiles = vec![0.0], Err("percentiles"));
        check(|p| p.percentiles = vec![100.0], Err("percentiles"));
        check(|p| p.percentiles = vec![f64::NAN], Err("percentiles"));
        check(|p| p.percentiles = vec![50.0; 100], Err("at most 99"));
        check(|p| p.percentiles = Vec::new(), Ok(()));
    }

    #[test]
    fn defaults_and_memory() {
        let p: MonteCarloParams = crate::msgpack::decode(
            &crate::msgpack::encode(&rmpv::Value::Map(vec![
                ("s0".into(), 100.0.into()),
                ("strike".into(), 95.0.into()),
                ("rate".into(), 0.02.into()),
                ("sigma".into(), 0.3.into()),
                ("maturity".into(), 0.5.into()),
                ("steps".into(), 1.into()),
                ("paths".into(), 4097.into()),
                ("seed".into(), 7.into()),
            ]))
            .unwrap(),
        )
        .unwrap();
        assert_eq!(p.dividend, 0.0);
        assert!(p.percentiles.is_empty());
        assert_eq!(MonteCarlo::validate(&p), Ok(()));
        assert_eq!(MonteCarlo::memory_estimate(&p), (2 * 9 + 4098) * 8);
    }

    #[test]
    fn black_scholes_matches_published_values() {
        // Hull's example: S = 42, K = 40, r = 10 %, sigma = 20 %, T = 0.5.
        let (call, put) = black_scholes(42.0, 40.0, 0.1, 0.0, 0.2, 0.5);
        assert!((call - 4.76).abs() < 0.005 && (put - 0.81).abs() < 0.005);
        // Put-call parity with a dividend yield.
        let (s, k, r, q, t) = (100.0, 95.0, 0.03, 0.01, 2.0);
        let (call, put) = black_scholes(s, k, r, q, 0.3, t);
        let parity = s * f64::exp(-q * t) - k * f64::exp(-r * t);
        assert!((call - put - parity).abs() < 1e-6);
    }
}
