//! The trading workload: a cycle of option pricing, VaR, indicators,
//! candlestick patterns and portfolio optimization, over synthetic market
//! data.

use tandem_shared::kind::indicators::{IndicatorSpec, Indicators, IndicatorsParams, Series};
use tandem_shared::kind::monte_carlo::{MonteCarlo, MonteCarloParams};
use tandem_shared::kind::patterns::{OhlcSeries, Patterns, PatternsParams, Thresholds};
use tandem_shared::kind::portfolio_opt::{Objective, PortfolioOpt, PortfolioOptParams};
use tandem_shared::kind::risk::{HistoricalRisk, MonteCarloRisk, Risk, RiskParams};
use tandem_shared::{Class, Priority};

use super::Planned;
use tandem_producer::Task;

/// The i-th task of the trading workload, in a cycle of 20: option quotes
/// (high), a book of options split across the GPUs (normal), VaR by Monte
/// Carlo before trading (critical) and from history (normal, one of them
/// on the CPU worker), indicators (normal) and candlestick patterns (low)
/// over a batch of symbols, a portfolio optimization (normal) and a large
/// revaluation sent as `heavy` (low). Sized so that a laptop runs the
/// cycle in about a second.
pub(super) fn trading_workload(i: usize) -> anyhow::Result<Planned> {
    let seed = 0x7a4d_e000 + i as u64;
    let (task, label, priority) = match i % 20 {
        0 | 10 => (
            Task::of::<MonteCarlo>(&option_book(i))?,
            "monte_carlo book",
            Priority::Normal,
        ),
        1 | 2 | 3 | 11 | 12 | 13 | 19 => (
            Task::of::<MonteCarlo>(&option_quote(i))?,
            "monte_carlo quote",
            Priority::High,
        ),
        4 | 14 => (
            Task::of::<Risk>(&var_monte_carlo(seed))?,
            "risk VaR monte carlo",
            Priority::Critical,
        ),
        5 => (
            Task::of::<Risk>(&var_historical(seed))?,
            "risk VaR historical",
            Priority::Normal,
        ),
        15 => (
            // Small enough for the CPU: what the fleet's CPU worker is for.
            Task::of::<Risk>(&var_historical(seed))?.class(Class::Cpu),
            "risk VaR historical (cpu)",
            Priority::Normal,
        ),
        6 | 16 => (
            Task::of::<Indicators>(&indicators(seed))?,
            "indicators",
            Priority::Normal,
        ),
        7 | 17 => (
            Task::of::<Patterns>(&patterns(seed))?,
            "patterns",
            Priority::Low,
        ),
        8 | 18 => (
            Task::of::<PortfolioOpt>(&portfolio(seed, i % 20 == 8))?,
            "portfolio_opt",
            Priority::Normal,
        ),
        _ => (
            Task::of::<MonteCarlo>(&revaluation(seed))?.class(Class::Heavy),
            "monte_carlo revaluation (heavy)",
            Priority::Low,
        ),
    };
    Ok(Planned {
        task: task.priority(priority),
        label,
        priority,
        keep_result: i == 0,
    })
}

/// The option the summary prices against Black-Scholes: task 0.
pub(super) const REFERENCE: MonteCarloParams = MonteCarloParams {
    s0: 100.0,
    strike: 100.0,
    rate: 0.03,
    dividend: 0.01,
    sigma: 0.2,
    maturity: 1.0,
    steps: 64,
    paths: 1 << 17,
    seed: 20_240_607,
    percentiles: Vec::new(),
};

/// A book's worth of paths: 32 blocks of 4096, so it splits across GPUs.
fn option_book(i: usize) -> MonteCarloParams {
    if i == 0 {
        return REFERENCE;
    }
    MonteCarloParams {
        strike: 90.0 + (i % 7) as f64 * 5.0,
        seed: REFERENCE.seed + i as u64,
        percentiles: vec![5.0, 50.0, 95.0],
        ..REFERENCE
    }
}

/// A quick quote across the smile: one block of paths, run whole.
fn option_quote(i: usize) -> MonteCarloParams {
    MonteCarloParams {
        s0: 100.0,
        strike: 80.0 + (i % 9) as f64 * 5.0,
        rate: 0.03,
        dividend: 0.0,
        sigma: 0.18 + (i % 5) as f64 * 0.03,
        maturity: 0.25 * (1 + i % 4) as f64,
        steps: 32,
        paths: 4096,
        seed: 0x9e37 + i as u64,
        percentiles: Vec::new(),
    }
}

/// A year of daily steps over many paths: work for the primary GPU.
fn revaluation(seed: u64) -> MonteCarloParams {
    MonteCarloParams {
        steps: 252,
        paths: 1 << 16,
        seed,
        percentiles: vec![1.0, 50.0, 99.0],
        ..REFERENCE
    }
}

/// Assets in the risk and portfolio workloads.
const ASSETS: usize = 25;

/// A one-factor market of `ASSETS` assets: betas, idiosyncratic daily
/// volatilities, and the factor's daily volatility.
struct Market {
    beta: Vec<f64>,
    idio: Vec<f64>,
    factor: f64,
}

impl Market {
    fn new(rng: &mut SplitMix64) -> Self {
        Market {
            beta: (0..ASSETS).map(|_| 0.6 + 0.8 * rng.uniform()).collect(),
            idio: (0..ASSETS).map(|_| 0.008 + 0.012 * rng.uniform()).collect(),
            factor: 0.011,
        }
    }

    /// The daily covariance, row-major: symmetric to the bit, and positive
    /// definite (a rank-one factor plus a positive diagonal).
    fn covariance(&self) -> Vec<f64> {
        let mut cov = vec![0.0; ASSETS * ASSETS];
        for i in 0..ASSETS {
            for j in 0..ASSETS {
                cov[i * ASSETS + j] = self.beta[i] * self.beta[j] * self.factor * self.factor;
            }
            cov[i * ASSETS + i] += self.idio[i] * self.idio[i];
        }
        cov
    }

    /// `days` rows of daily returns drawn from the model.
    fn returns(&self, days: usize, rng: &mut SplitMix64) -> Vec<f64> {
        let mut returns = Vec::with_capacity(days * ASSETS);
        for _ in 0..days {
            let factor = self.factor * rng.normal();
            for a in 0..ASSETS {
                returns.push(0.0002 + self.beta[a] * factor + self.idio[a] * rng.normal());
            }
        }
        returns
    }
}

/// Position values of a book, in currency units.
fn positions(rng: &mut SplitMix64) -> Vec<f64> {
    (0..ASSETS)
        .map(|_| (200_000.0 + 800_000.0 * rng.uniform()).round())
        .collect()
}

/// One-day VaR of the book before it trades, by Monte Carlo.
fn var_monte_carlo(seed: u64) -> RiskParams {
    let mut rng = SplitMix64(seed);
    let market = Market::new(&mut rng);
    RiskParams::MonteCarlo(MonteCarloRisk {
        weights: positions(&mut rng),
        mu: vec![0.0002; ASSETS],
        covariance: market.covariance(),
        scenarios: 32_768,
        seed,
        confidence: vec![0.95, 0.99],
    })
}

/// One-day VaR from two years of daily returns.
fn var_historical(seed: u64) -> RiskParams {
    let mut rng = SplitMix64(seed);
    let market = Market::new(&mut rng);
    RiskParams::Historical(HistoricalRisk {
        weights: positions(&mut rng),
        returns: market.returns(500, &mut rng),
        confidence: vec![0.95, 0.99],
    })
}

/// Symbols in the indicator and pattern batches, and bars per symbol (a
/// trading day of one-minute bars).
const SYMBOLS: usize = 12;
const BARS: usize = 390;

/// A day of one-minute OHLC bars per symbol, from a random walk.
fn bars(seed: u64) -> Vec<OhlcSeries> {
    market_bars(seed, SYMBOLS, BARS)
}

/// `bars` one-minute OHLC bars of each of `symbols` symbols (`SYM00`,
/// `SYM01`, ...), from a random walk.
pub(super) fn market_bars(seed: u64, symbols: usize, bars: usize) -> Vec<OhlcSeries> {
    let mut rng = SplitMix64(seed);
    (0..symbols)
        .map(|s| {
            let mut close = 20.0 + 200.0 * rng.uniform();
            let mut series = OhlcSeries {
                symbol: format!("SYM{s:02}"),
                open: Vec::with_capacity(bars),
                high: Vec::with_capacity(bars),
                low: Vec::with_capacity(bars),
                close: Vec::with_capacity(bars),
            };
            for _ in 0..bars {
                let open = close;
                close = open * (0.0012 * rng.normal()).exp();
                let top = open.max(close) * (1.0 + 0.0008 * rng.uniform());
                let bottom = open.min(close) * (1.0 - 0.0008 * rng.uniform());
                series.open.push(open);
                series.high.push(top);
                series.low.push(bottom);
                series.close.push(close);
            }
            series
        })
        .collect()
}

fn indicators(seed: u64) -> IndicatorsParams {
    IndicatorsParams {
        series: bars(seed)
            .into_iter()
            .map(|s| Series {
                symbol: s.symbol,
                closes: s.close,
            })
            .collect(),
        indicators: indicator_specs(),
    }
}

/// The indicators both trading demos compute: RSI(14), MACD(12,26,9) and
/// Bollinger(20,2), 7 lines.
pub(super) fn indicator_specs() -> Vec<IndicatorSpec> {
    vec![
        IndicatorSpec::Rsi { period: 14 },
        IndicatorSpec::Macd {
            fast: 12,
            slow: 26,
            signal: 9,
        },
        IndicatorSpec::Bollinger { period: 20, k: 2.0 },
    ]
}

fn patterns(seed: u64) -> PatternsParams {
    PatternsParams {
        series: bars(seed),
        thresholds: Thresholds::default(),
    }
}

/// A long-only portfolio of the market's assets: the greatest Sharpe ratio
/// with at most 15 % in any one, or the least variance.
fn portfolio(seed: u64, max_sharpe: bool) -> PortfolioOptParams {
    let mut rng = SplitMix64(seed);
    let market = Market::new(&mut rng);
    PortfolioOptParams {
        // Daily returns: the factor's premium by beta, plus some alpha.
        mu: (0..ASSETS)
            .map(|a| 0.0003 * market.beta[a] + 0.0002 * rng.normal())
            .collect(),
        covariance: market.covariance(),
        returns: None,
        assets: None,
        risk_free: 0.0001,
        objective: if max_sharpe {
            Objective::MaxSharpe
        } else {
            Objective::MinVariance
        },
        max_weight: 0.15,
        tolerance: 1e-10,
        max_iterations: 100_000,
        seed,
        samples: 8_192,
    }
}

/// A small, fast generator for the demo's market data (SplitMix64).
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    fn normal(&mut self) -> f64 {
        let u = 1.0 - self.uniform();
        let v = self.uniform();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_trading_task_is_valid_and_the_cycle_covers_every_class_and_priority() {
        let mut classes = std::collections::HashSet::new();
        let mut priorities = std::collections::HashSet::new();
        for i in 0..20 {
            let planned = trading_workload(i).unwrap_or_else(|e| panic!("task {i}: {e:#}"));
            classes.extend(planned.task.preset_class());
            priorities.insert(planned.priority);
            assert_eq!(planned.keep_result, i == 0);
        }
        assert_eq!(classes.len(), Class::ALL.len(), "{classes:?}");
        assert_eq!(priorities.len(), Priority::ALL.len(), "{priorities:?}");
    }
}
