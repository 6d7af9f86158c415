//! The `indicators` kind: technical indicators over batches of close
//! prices, in f64. Class `light`; not splittable.
//!
//! | parameter | type | meaning | bounds |
//! |---|---|---|---|
//! | `series` | list of `{symbol, closes}` | `symbol`: a name echoed back; `closes`: prices, oldest first | at most 1 000 000 series, 10^8 closes in all; every close finite; a series may be empty |
//! | `indicators` | list of `{type, ...}` | what to compute, see below | 1 to 32 indicators; periods 1..=10 000 |
//!
//! | `type` | fields (default) | lines | NaN warm-up positions |
//! |---|---|---|---|
//! | `sma` | `period` | value | `0..period-1` |
//! | `ema` | `period` | value: alpha = 2/(period+1), seeded at `period-1` with the SMA of the first `period` closes | `0..period-1` |
//! | `rsi` | `period` (14) | value: Wilder's RSI; the first average gain and loss are the simple means of the first `period` changes, then `avg = (avg (period-1) + x) / period`; 100 when the average loss is 0 (a constant series reads 100) | `0..period` |
//! | `macd` | `fast` (12), `slow` (26), `signal` (9); `fast < slow` | macd = EMA(fast) - EMA(slow); signal = EMA(signal) of macd seeded with the mean of its first `signal` values; histogram = macd - signal | macd `0..slow-1`; signal, histogram `0..slow+signal-2` |
//! | `bollinger` | `period` (20), `k` (2.0, finite, 0..=100) | middle = SMA(period); upper, lower = middle ± k σ, σ the *population* standard deviation of the window (divided by `period`) | `0..period-1` |
//!
//! A series shorter than an indicator's warm-up gets NaN everywhere for it.
//!
//! **Result** ([`IndicatorsOutput`]): `lines` names every output line in
//! order (`sma(20)`, `macd(12,26,9).signal`, `bollinger(20,2).upper`, ...);
//! `series[i]` holds the symbol and `values[line][t]`, one array per line,
//! each as long as the series' closes, NaN at the warm-up positions.
//!
//! **Errors**: `BAD_PARAMS` for a close that is NaN or infinite (naming the
//! series and position), a period out of bounds, `fast >= slow`, a bad `k`,
//! too many series, closes or output values (closes times lines at most
//! 10^8).

use serde::{Deserialize, Serialize};

use super::{BadParams, KindSpec};
use crate::task::Class;

/// Technical indicators over close prices.
#[derive(Debug)]
pub struct Indicators;

/// One series of close prices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Series {
    /// A name for the series, echoed in the result.
    pub symbol: String,
    /// Close prices, oldest first.
    pub closes: Vec<f64>,
}

/// One indicator to compute, tagged by `type`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum IndicatorSpec {
    Sma {
        period: u32,
    },
    Ema {
        period: u32,
    },
    Rsi {
        #[serde(default = "default_rsi_period")]
        period: u32,
    },
    Macd {
        #[serde(default = "default_fast")]
        fast: u32,
        #[serde(default = "default_slow")]
        slow: u32,
        #[serde(default = "default_signal")]
        signal: u32,
    },
    Bollinger {
        #[serde(default = "default_bollinger_period")]
        period: u32,
        #[serde(default = "default_k")]
        k: f64,
    },
}

fn default_rsi_period() -> u32 {
    14
}
fn default_fast() -> u32 {
    12
}
fn default_slow() -> u32 {
    26
}
fn default_signal() -> u32 {
    9
}
fn default_bollinger_period() -> u32 {
    20
}
fn default_k() -> f64 {
    2.0
}

impl IndicatorSpec {
    /// The names of its output lines, in order.
    pub fn line_names(&self) -> Vec<String> {
        match *self {
            IndicatorSpec::Sma { period } => vec![format!("sma({period})")],
            IndicatorSpec::Ema { period } => vec![format!("ema({period})")],
            IndicatorSpec::Rsi { period } => vec![format!("rsi({period})")],
            IndicatorSpec::Macd { fast, slow, signal } => ["macd", "signal", "histogram"]
                .iter()
                .map(|l| format!("macd({fast},{slow},{signal}).{l}"))
                .collect(),
            IndicatorSpec::Bollinger { period, k } => ["middle", "upper", "lower"]
                .iter()
                .map(|l| format!("bollinger({period},{k}).{l}"))
                .collect(),
        }
    }

    /// How many output lines it has.
    pub fn lines(&self) -> usize {
        match self {
            IndicatorSpec::Macd { .. } | IndicatorSpec::Bollinger { .. } => 3,
            _ => 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct IndicatorsParams {
    pub series: Vec<Series>,
    pub indicators: Vec<IndicatorSpec>,
}

/// The lines of one series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SeriesValues {
    pub symbol: String,
    /// `values[line][t]`, lines as named in [`IndicatorsOutput::lines`];
    /// NaN where an indicator is not yet defined.
    pub values: Vec<Vec<f64>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct IndicatorsOutput {
    /// The name of every line, in order (`sma(20)`, `macd(12,26,9).signal`).
    pub lines: Vec<String>,
    /// One entry per input series, in input order.
    pub series: Vec<SeriesValues>,
}

impl IndicatorsParams {
    /// Closes in all series.
    pub fn total_closes(&self) -> u64 {
        self.series.iter().map(|s| s.closes.len() as u64).sum()
    }

    /// Output lines per series.
    pub fn total_lines(&self) -> u64 {
        self.indicators.iter().map(|i| i.lines() as u64).sum()
    }
}

impl Indicators {
    pub const MAX_SERIES: usize = 1_000_000;
    pub const MAX_INDICATORS: usize = 32;
    pub const MAX_PERIOD: u32 = 10_000;
    pub const MAX_CLOSES: u64 = 100_000_000;
    /// Closes times lines: what the result holds.
    pub const MAX_OUTPUT_VALUES: u64 = 100_000_000;
    pub const MAX_K: f64 = 100.0;
}

fn check_period(what: &str, index: usize, name: &str, value: u32) -> Result<(), BadParams> {
    if !(1..=Indicators::MAX_PERIOD).contains(&value) {
        return Err(BadParams::new(format!(
            "indicators[{index}] ({what}): {name} must be in 1..={}, got {value}",
            Indicators::MAX_PERIOD
        )));
    }
    Ok(())
}

impl KindSpec for Indicators {
    const KIND: &'static str = "indicators";
    const CLASS: Class = Class::Light;
    type Params = IndicatorsParams;
    type Output = IndicatorsOutput;

    fn validate(params: &IndicatorsParams) -> Result<(), BadParams> {
        if params.series.len() > Self::MAX_SERIES {
            return Err(BadParams::new(format!(
                "series must hold at most {} series, got {}",
                Self::MAX_SERIES,
                params.series.len()
            )));
        }
        if params.indicators.is_empty() || params.indicators.len() > Self::MAX_INDICATORS {
            return Err(BadParams::new(format!(
                "indicators must hold 1 to {} indicators, got {}",
                Self::MAX_INDICATORS,
                params.indicators.len()
            )));
        }
        for (i, indicator) in params.indicators.iter().enumerate() {
            match *indicator {
                IndicatorSpec::Sma { period } => check_period("sma", i, "period", period)?,
                IndicatorSpec::Ema { period } => check_period("ema", i, "period", period)?,
                IndicatorSpec::Rsi { period } => check_period("rsi", i, "period", period)?,
                IndicatorSpec::Macd { fast, slow, signal } => {
                    check_period("macd", i, "fast", fast)?;
                    check_period("macd", i, "slow", slow)?;
                    check_period("macd", i, "signal", signal)?;
                    if fast >= slow {
                        return Err(BadParams::new(format!(
                            "indicators[{i}] (macd): fast must be below slow, got fast {fast}, slow {slow}"
                        )));
                    }
                }
                IndicatorSpec::Bollinger { period, k } => {
                    check_period("bollinger", i, "period", period)?;
                    if !(k.is_finite() && (0.0..=Self::MAX_K).contains(&k)) {
                        return Err(BadParams::new(format!(
                            "indicators[{i}] (bollinger): k must be finite in 0..={}, got {k}",
                            Self::MAX_K
                        )));
                    }
                }
            }
        }
        let closes = params.total_closes();
        if closes > Self::MAX_CLOSES {
            return Err(BadParams::new(format!(
                "series must hold at most {} closes in all, got {closes}",
                Self::MAX_CLOSES
            )));
        }
        let outputs = closes * params.total_lines();
        if outputs > Self::MAX_OUTPUT_VALUES {
            return Err(BadParams::new(format!(
                "closes times output lines must be at most {}, got {closes} x {} = {outputs}",
                Self::MAX_OUTPUT_VALUES,
                params.total_lines()
            )));
        }
        for (s, series) in params.series.iter().enumerate() {
            if let Some(t) = series.closes.iter().position(|c| !c.is_finite()) {
                return Err(BadParams::new(format!(
                    "series[{s}] ({:?}): closes[{t}] must be finite, got {}",
                    series.symbol, series.closes[t]
                )));
            }
        }
        Ok(())
    }

    /// The GPU path's buffers: closes, series offsets, the output lines and
    /// the indicator table.
    fn memory_estimate(params: &IndicatorsParams) -> u64 {
        let closes = params.total_closes();
        8 * closes
            + 8 * (params.series.len() as u64 + 1)
            + 8 * closes * params.total_lines()
            + 28 * params.indicators.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msgpack;

    fn params() -> IndicatorsParams {
        IndicatorsParams {
            series: vec![
                Series {
                    symbol: "AAA".into(),
                    closes: vec![1.0, 2.0, 3.0],
                },
                Series {
                    symbol: "BBB".into(),
                    closes: vec![],
                },
            ],
            indicators: vec![
                IndicatorSpec::Sma { period: 2 },
                IndicatorSpec::Macd {
                    fast: 12,
                    slow: 26,
                    signal: 9,
                },
                IndicatorSpec::Bollinger { period: 20, k: 2.0 },
            ],
        }
    }

    fn err(p: &IndicatorsParams) -> String {
        Indicators::validate(p).unwrap_err().0
    }

    #[test]
    fn accepts_good_parameters() {
        Indicators::validate(&params()).unwrap();
        assert_eq!(
            Indicators::memory_estimate(&params()),
            8 * 3 + 8 * 3 + 8 * 3 * 7 + 28 * 3
        );
    }

    #[test]
    fn rejects_non_finite_closes_naming_series_and_position() {
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let mut p = params();
            p.series[0].closes[2] = bad;
            let e = err(&p);
            assert!(
                e.contains("series[0]") && e.contains("closes[2]") && e.contains("AAA"),
                "{e}"
            );
        }
    }

    #[test]
    fn rejects_bad_indicators() {
        let cases = [
            (
                IndicatorSpec::Sma { period: 0 },
                "period must be in 1..=10000",
            ),
            (
                IndicatorSpec::Ema { period: 10_001 },
                "period must be in 1..=10000",
            ),
            (IndicatorSpec::Rsi { period: 0 }, "rsi"),
            (
                IndicatorSpec::Macd {
                    fast: 26,
                    slow: 12,
                    signal: 9,
                },
                "fast must be below slow",
            ),
            (
                IndicatorSpec::Macd {
                    fast: 12,
                    slow: 26,
                    signal: 0,
                },
                "signal must be",
            ),
            (
                IndicatorSpec::Bollinger {
                    period: 20,
                    k: f64::NAN,
                },
                "k must be finite",
            ),
            (
                IndicatorSpec::Bollinger {
                    period: 20,
                    k: -1.0,
                },
                "k must be finite",
            ),
        ];
        for (indicator, want) in cases {
            let mut p = params();
            p.indicators[1] = indicator;
            let e = err(&p);
            assert!(
                e.contains(want) && e.contains("indicators[1]"),
                "{indicator:?}: {e}"
            );
        }
        let mut p = params();
        p.indicators.clear();
        assert!(err(&p).contains("1 to 32"));
        p.indicators = vec![IndicatorSpec::Sma { period: 1 }; 33];
        assert!(err(&p).contains("1 to 32"));
    }

    #[test]
    fn bounds_the_output_size() {
        let mut p = params();
        p.series = vec![Series {
            symbol: "X".into(),
            closes: vec![1.0; 20_000_000],
        }];
        assert!(err(&p).contains("closes times output lines"), "{}", err(&p));
    }

    #[test]
    fn decodes_tagged_indicators_with_defaults() {
        #[derive(Serialize)]
        struct Raw {
            series: Vec<Series>,
            indicators: Vec<rmpv::Value>,
        }
        let tag =
            |t: &str| rmpv::Value::Map(vec![(rmpv::Value::from("type"), rmpv::Value::from(t))]);
        let raw = Raw {
            series: vec![],
            indicators: vec![tag("macd"), tag("bollinger"), tag("rsi")],
        };
        let decoded: IndicatorsParams = msgpack::decode(&msgpack::encode(&raw).unwrap()).unwrap();
        assert_eq!(
            decoded.indicators,
            vec![
                IndicatorSpec::Macd {
                    fast: 12,
                    slow: 26,
                    signal: 9
                },
                IndicatorSpec::Bollinger { period: 20, k: 2.0 },
                IndicatorSpec::Rsi { period: 14 },
            ]
        );
        let again: IndicatorsParams =
            msgpack::decode(&msgpack::encode(&params()).unwrap()).unwrap();
        assert_eq!(again, params());
        assert_eq!(
            params().indicators[2].line_names(),
            [
                "bollinger(20,2).middle",
                "bollinger(20,2).upper",
                "bollinger(20,2).lower"
            ]
        );
    }
}
