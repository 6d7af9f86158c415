//! The `patterns` kind: candlestick patterns over batches of OHLC bars.
//! Class `light`; not splittable.
//!
//! | parameter | type | meaning | bounds |
//! |---|---|---|---|
//! | `series` | list of `{symbol, open, high, low, close}` | bars, oldest first; `symbol` is echoed back | at most 1 000 000 series, 10^8 bars in all; the four arrays of a series equally long; every price finite; `high >= max(open, close)`, `low <= min(open, close)` |
//! | `thresholds` | `{doji_body, shadow_ratio, small_shadow, long_body, star_body}` | the ratios the rules use; the map and each field optional | see [`Thresholds`]: defaults 0.1, 2.0, 0.1, 0.5, 0.3; each finite, `shadow_ratio` in 0..=100, the others in 0..=1 |
//!
//! With `body = |close - open|`, `range = high - low`,
//! `upper = high - max(open, close)`, `lower = min(open, close) - low`,
//! the patterns (pure candle shapes, no trend filter):
//!
//! | bit | name | bars | rule |
//! |---|---|---|---|
//! | 0 (1) | `doji` | 1 | `range > 0`, `body <= doji_body * range` |
//! | 1 (2) | `hammer` | 1 | `range > 0`, not a doji, `lower >= shadow_ratio * body`, `upper <= small_shadow * range` |
//! | 2 (4) | `shooting_star` | 1 | `range > 0`, not a doji, `upper >= shadow_ratio * body`, `lower <= small_shadow * range` |
//! | 3 (8) | `bullish_engulfing` | 2 | previous bar bearish, this one bullish, `open <= previous close`, `close >= previous open`, body larger than the previous |
//! | 4 (16) | `bearish_engulfing` | 2 | previous bullish, this bearish, `open >= previous close`, `close <= previous open`, body larger |
//! | 5 (32) | `morning_star` | 3 | first bearish with `body >= long_body * range`; second `body <= star_body * first body` and `max(open, close) <= first close`; third bullish, `close` above the first body's midpoint |
//! | 6 (64) | `evening_star` | 3 | first bullish and long; second small with `min(open, close) >= first close`; third bearish, `close` below the first body's midpoint |
//!
//! **Result** ([`PatternsOutput`]): `patterns` names the bits (index =
//! bit); `series[i].masks[t]` is a bitmask for bar `t`: bit `p` set when
//! pattern `p` completes at bar `t` (its last bar). A bitmask per bar is the
//! compact choice: most bars match nothing and a 0 is one MessagePack byte.
//!
//! **Errors**: `BAD_PARAMS` for arrays of different lengths, a price that
//! is NaN or infinite, a bar whose high or low does not bound its open and
//! close (naming the series and bar), thresholds out of bounds, too many
//! series or bars.

use serde::{Deserialize, Serialize};

use super::{BadParams, KindSpec};
use crate::task::Class;

/// Candlestick patterns over OHLC bars.
#[derive(Debug)]
pub struct Patterns;

/// The names of the pattern bits, by bit index.
pub const PATTERN_NAMES: [&str; 7] = [
    "doji",
    "hammer",
    "shooting_star",
    "bullish_engulfing",
    "bearish_engulfing",
    "morning_star",
    "evening_star",
];

/// One series of bars, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct OhlcSeries {
    /// A name for the series, echoed in the result.
    pub symbol: String,
    pub open: Vec<f64>,
    pub high: Vec<f64>,
    pub low: Vec<f64>,
    pub close: Vec<f64>,
}

/// The ratios the rules compare with.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default)]
pub struct Thresholds {
    /// Doji: body at most this fraction of the range (0.1).
    pub doji_body: f64,
    /// Hammer, shooting star: the long shadow at least this multiple of the
    /// body (2.0).
    pub shadow_ratio: f64,
    /// Hammer, shooting star: the short shadow at most this fraction of the
    /// range (0.1).
    pub small_shadow: f64,
    /// Stars: the first bar's body at least this fraction of its range (0.5).
    pub long_body: f64,
    /// Stars: the middle bar's body at most this fraction of the first
    /// bar's body (0.3).
    pub star_body: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            doji_body: 0.1,
            shadow_ratio: 2.0,
            small_shadow: 0.1,
            long_body: 0.5,
            star_body: 0.3,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PatternsParams {
    pub series: Vec<OhlcSeries>,
    #[serde(default)]
    pub thresholds: Thresholds,
}

/// The masks of one series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SeriesMasks {
    pub symbol: String,
    /// One bitmask per bar; bit `p` is pattern `PATTERN_NAMES[p]`.
    pub masks: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PatternsOutput {
    /// The pattern of each bit, by bit index.
    pub patterns: Vec<String>,
    /// One entry per input series, in input order.
    pub series: Vec<SeriesMasks>,
}

impl PatternsParams {
    /// Bars in all series.
    pub fn total_bars(&self) -> u64 {
        self.series.iter().map(|s| s.close.len() as u64).sum()
    }
}

impl Patterns {
    pub const MAX_SERIES: usize = 1_000_000;
    pub const MAX_BARS: u64 = 100_000_000;
    pub const MAX_SHADOW_RATIO: f64 = 100.0;
}

fn check_series(index: usize, s: &OhlcSeries) -> Result<(), BadParams> {
    let n = s.close.len();
    for (name, values) in [("open", &s.open), ("high", &s.high), ("low", &s.low)] {
        if values.len() != n {
            return Err(BadParams::new(format!(
                "series[{index}] ({:?}): {name} has {} bars but close has {n}; the four arrays must be equally long",
                s.symbol,
                values.len()
            )));
        }
    }
    for t in 0..n {
        let (open, high, low, close) = (s.open[t], s.high[t], s.low[t], s.close[t]);
        if !(open.is_finite() && high.is_finite() && low.is_finite() && close.is_finite()) {
            return Err(BadParams::new(format!(
                "series[{index}] ({:?}) bar {t}: prices must be finite, got open {open}, high {high}, low {low}, close {close}",
                s.symbol
            )));
        }
        if high < open.max(close) || low > open.min(close) {
            return Err(BadParams::new(format!(
                "series[{index}] ({:?}) bar {t}: high must be >= max(open, close) and low <= min(open, close), got open {open}, high {high}, low {low}, close {close}",
                s.symbol
            )));
        }
    }
    Ok(())
}

impl KindSpec for Patterns {
    const KIND: &'static str = "patterns";
    const CLASS: Class = Class::Light;
    type Params = PatternsParams;
    type Output = PatternsOutput;

    fn validate(params: &PatternsParams) -> Result<(), BadParams> {
        if params.series.len() > Self::MAX_SERIES {
            return Err(BadParams::new(format!(
                "series must hold at most {} series, got {}",
                Self::MAX_SERIES,
                params.series.len()
            )));
        }
        let bars = params.total_bars();
        if bars > Self::MAX_BARS {
            return Err(BadParams::new(format!(
                "series must hold at most {} bars in all, got {bars}",
                Self::MAX_BARS
            )));
        }
        let th = &params.thresholds;
        for (name, value, max) in [
            ("doji_body", th.doji_body, 1.0),
            ("shadow_ratio", th.shadow_ratio, Self::MAX_SHADOW_RATIO),
            ("small_shadow", th.small_shadow, 1.0),
            ("long_body", th.long_body, 1.0),
            ("star_body", th.star_body, 1.0),
        ] {
            if !(value.is_finite() && (0.0..=max).contains(&value)) {
                return Err(BadParams::new(format!(
                    "thresholds.{name} must be finite in 0..={max}, got {value}"
                )));
            }
        }
        for (i, s) in params.series.iter().enumerate() {
            check_series(i, s)?;
        }
        Ok(())
    }

    /// The GPU path's buffers: four prices per bar, a mask per bar, the
    /// series offsets and the thresholds.
    fn memory_estimate(params: &PatternsParams) -> u64 {
        36 * params.total_bars() + 8 * (params.series.len() as u64 + 1) + 40
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msgpack;

    fn params() -> PatternsParams {
        PatternsParams {
            series: vec![
                OhlcSeries {
                    symbol: "AAA".into(),
                    open: vec![10.0, 11.0],
                    high: vec![11.0, 11.5],
                    low: vec![9.5, 10.0],
                    close: vec![10.5, 10.2],
                },
                OhlcSeries {
                    symbol: "EMPTY".into(),
                    open: vec![],
                    high: vec![],
                    low: vec![],
                    close: vec![],
                },
            ],
            thresholds: Thresholds::default(),
        }
    }

    fn err(p: &PatternsParams) -> String {
        Patterns::validate(p).unwrap_err().0
    }

    #[test]
    fn accepts_good_parameters() {
        Patterns::validate(&params()).unwrap();
        assert_eq!(Patterns::memory_estimate(&params()), 36 * 2 + 8 * 3 + 40);
    }

    #[test]
    fn rejects_unequal_lengths() {
        let mut p = params();
        p.series[0].low.pop();
        let e = err(&p);
        assert!(
            e.contains("series[0]") && e.contains("low has 1 bars"),
            "{e}"
        );
    }

    #[test]
    fn rejects_bars_whose_high_and_low_do_not_bound_the_body() {
        let mut p = params();
        p.series[0].high[1] = 10.9; // open 11
        let e = err(&p);
        assert!(
            e.contains("series[0]") && e.contains("bar 1") && e.contains("high must be"),
            "{e}"
        );
        let mut p = params();
        p.series[0].low[0] = 10.1; // open 10
        assert!(err(&p).contains("bar 0"));
        let mut p = params();
        p.series[0].close[1] = f64::NAN;
        let e = err(&p);
        assert!(e.contains("bar 1") && e.contains("finite"), "{e}");
    }

    #[test]
    fn rejects_bad_thresholds() {
        let mut p = params();
        p.thresholds.doji_body = 1.5;
        assert!(err(&p).contains("thresholds.doji_body"));
        p.thresholds = Thresholds {
            shadow_ratio: f64::INFINITY,
            ..Thresholds::default()
        };
        assert!(err(&p).contains("thresholds.shadow_ratio"));
        p.thresholds = Thresholds {
            star_body: -0.1,
            ..Thresholds::default()
        };
        assert!(err(&p).contains("thresholds.star_body"));
    }

    #[test]
    fn thresholds_default_when_absent_or_partial() {
        #[derive(Serialize)]
        struct Raw {
            series: Vec<OhlcSeries>,
        }
        let decoded: PatternsParams =
            msgpack::decode(&msgpack::encode(&Raw { series: vec![] }).unwrap()).unwrap();
        assert_eq!(decoded.thresholds, Thresholds::default());
        #[derive(Serialize)]
        struct Partial {
            series: Vec<OhlcSeries>,
            thresholds: std::collections::BTreeMap<&'static str, f64>,
        }
        let decoded: PatternsParams = msgpack::decode(
            &msgpack::encode(&Partial {
                series: vec![],
                thresholds: [("doji_body", 0.05)].into_iter().collect(),
            })
            .unwrap(),
        )
        .unwrap();
        assert_eq!(decoded.thresholds.doji_body, 0.05);
        assert_eq!(decoded.thresholds.shadow_ratio, 2.0);
    }
}
