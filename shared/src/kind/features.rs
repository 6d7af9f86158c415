//! The glue kinds of a trading pipeline: `features` joins an `indicators`
//! result and a `patterns` result into the input `predict_batch` takes,
//! and `book` turns a `predict_batch` result and the price history into
//! the expected returns and covariance `portfolio_opt` and `risk` take.
//! Both are class `light`, CPU only, not splittable; a workflow feeds them
//! their parents' results by `$ref` (`tandem demo --trading --pipeline`,
//! `examples/workflows/trading-pipeline.yaml`).
//!
//! **`features`**
//!
//! | parameter | type | default | meaning |
//! |---|---|---|---|
//! | `indicators` | an `indicators` result (`{lines, series}`) | required | the lines of each symbol |
//! | `patterns` | a `patterns` result (`{patterns, series}`) | none | each bar's pattern bits, one 0/1 feature per pattern |
//! | `window` | u32 | 1 | the latest bars each symbol's window holds, 1 to 10 000 |
//! | `standardize` | bool | true | each feature (a line or pattern at a bar of the window) becomes its cross-sectional z-score, `(x - mean) / sd` over the symbols (0 where `sd` is 0) |
//!
//! The result's `symbols[i]` is `{symbol, features}`, in the `indicators`
//! result's order; `features` is `window x width` floats, bars oldest
//! first, each bar's `width = lines + patterns` features in `names` order
//! (the transformer's window rule; for an MLP, `window x width` is its
//! input width). `{"$ref": "features", "path": "/symbols"}` is a
//! `predict_batch`'s `symbols`. The `patterns` series are matched to the
//! indicator series by symbol.
//!
//! **`book`**
//!
//! | parameter | type | default | meaning |
//! |---|---|---|---|
//! | `predictions` | a `predict_batch` result's `predictions` (`[{symbol, values}]`) | required | what the model says of each symbol |
//! | `series` | `[{symbol, closes}]` (as `indicators` takes) | required | close prices, oldest first, every predicted symbol's, all equally long (at least 3) |
//! | `top` | u32 | every symbol, at most 2000 | keep the `top` symbols of greatest expected return, 1 to 2000 |
//! | `output` | u32 | 0 | which of a prediction's `values` to use |
//! | `mu_scale` | f64 | 0.001 | expected return per period of one cross-sectional standard deviation of the prediction |
//!
//! The expected return of symbol i is `mu_scale * z_i`, `z_i` the z-score
//! of its prediction across every predicted symbol (the model ranks the
//! symbols; the scale says what a standard deviation of rank is worth).
//! The covariance is the sample covariance (divided by `T - 1`) of the
//! kept symbols' simple returns `close[t] / close[t-1] - 1`. The result:
//! `symbols` (by expected return, greatest first), `mu`, `covariance`
//! (`n x n`, row-major) and `periods` (the returns' rows, `T`); `/mu` and
//! `/covariance` are a `portfolio_opt`'s and a Monte Carlo `risk`'s.
//!
//! **Errors** (`BAD_PARAMS`): a window out of bounds or longer than a
//! series, a line NaN inside a window (a warm-up position: use longer
//! series or a shorter window), a symbol of one parent missing from the
//! other, series of different lengths, a non-finite or non-positive close,
//! `top` or `output` out of bounds, too many values; each names the field,
//! the symbol and the problem.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::indicators::{IndicatorsOutput, Series};
use super::model_kinds::{MAX_VALUES, Prediction, SymbolWindow};
use super::patterns::PatternsOutput;
use super::{BadParams, KindSpec};
use crate::task::Class;

/// Joins indicator lines and pattern bits into model inputs.
#[derive(Debug)]
pub struct Features;

impl Features {
    pub const MAX_WINDOW: u32 = 10_000;
}

fn default_window() -> u32 {
    1
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct FeaturesParams {
    /// An `indicators` result.
    pub indicators: IndicatorsOutput,
    /// A `patterns` result over the same symbols and bars.
    #[serde(default)]
    pub patterns: Option<PatternsOutput>,
    /// The latest bars each window holds.
    #[serde(default = "default_window")]
    #[schemars(range(min = 1, max = Features::MAX_WINDOW))]
    pub window: u32,
    /// Each feature becomes its z-score across the symbols.
    #[serde(default = "default_true")]
    pub standardize: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct FeaturesOutput {
    /// The features of one bar, in order: the indicator lines, then the
    /// patterns.
    pub names: Vec<String>,
    /// Bars per window.
    pub window: u32,
    /// One per indicator series, in its order: `window x names` floats.
    pub symbols: Vec<SymbolWindow>,
}

/// Where each indicator series' pattern masks are, by symbol.
fn pattern_rows<'a>(
    indicators: &IndicatorsOutput,
    patterns: &'a PatternsOutput,
) -> Result<Vec<&'a [u32]>, BadParams> {
    let by_symbol: HashMap<&str, &[u32]> = patterns
        .series
        .iter()
        .map(|s| (s.symbol.as_str(), s.masks.as_slice()))
        .collect();
    indicators
        .series
        .iter()
        .enumerate()
        .map(|(i, s)| {
            by_symbol.get(s.symbol.as_str()).copied().ok_or_else(|| {
                BadParams::new(format!(
                    "patterns: no series for indicators.series[{i}] ({:?}); both parents must cover the same symbols",
                    s.symbol
                ))
            })
        })
        .collect()
}

impl Features {
    /// Every feature of every window, before any standardizing: one row
    /// per symbol. The parameters' problems are named here, so that
    /// `validate` and the worker agree.
    fn raw(p: &FeaturesParams) -> Result<(Vec<String>, Vec<Vec<f64>>), BadParams> {
        if p.window == 0 || p.window > Self::MAX_WINDOW {
            return Err(BadParams::new(format!(
                "window must be 1 to {}, got {}",
                Self::MAX_WINDOW,
                p.window
            )));
        }
        let window = p.window as usize;
        let lines = &p.indicators.lines;
        let masks = match &p.patterns {
            Some(patterns) => Some(pattern_rows(&p.indicators, patterns)?),
            None => None,
        };
        let pattern_names: &[String] = p.patterns.as_ref().map_or(&[], |p| &p.patterns);
        let width = lines.len() + pattern_names.len();
        if width == 0 {
            return Err(BadParams::new(
                "indicators.lines is empty and there are no patterns: no features to make",
            ));
        }
        let total = (p.indicators.series.len() as u64)
            .saturating_mul(window as u64)
            .saturating_mul(width as u64);
        if total > MAX_VALUES as u64 {
            return Err(BadParams::new(format!(
                "{} symbols x window {window} x {width} features is {total} values; at most {MAX_VALUES}",
                p.indicators.series.len()
            )));
        }
        let mut rows = Vec::with_capacity(p.indicators.series.len());
        for (i, series) in p.indicators.series.iter().enumerate() {
            let at = |problem: String| {
                BadParams::new(format!(
                    "indicators.series[{i}] ({:?}): {problem}",
                    series.symbol
                ))
            };
            if series.values.len() != lines.len() {
                return Err(at(format!(
                    "has {} lines but indicators.lines names {}",
                    series.values.len(),
                    lines.len()
                )));
            }
            let bars = series.values.first().map_or(0, Vec::len);
            if let Some((l, v)) = series
                .values
                .iter()
                .enumerate()
                .find(|(_, v)| v.len() != bars)
            {
                return Err(at(format!(
                    "line {:?} has {} bars, line {:?} has {bars}",
                    lines[l],
                    v.len(),
                    lines[0]
                )));
            }
            let masks = masks.as_ref().map(|m| m[i]);
            let bars = match (lines.is_empty(), masks) {
                (true, Some(m)) => m.len(),
                _ => bars,
            };
            if let Some(m) = masks
                && m.len() != bars
            {
                return Err(at(format!(
                    "has {bars} bars but its patterns series has {}",
                    m.len()
                )));
            }
            if bars < window {
                return Err(at(format!(
                    "has {bars} bars, fewer than the window ({window})"
                )));
            }
            let mut row = Vec::with_capacity(window * width);
            for t in bars - window..bars {
                for (l, values) in series.values.iter().enumerate() {
                    let value = values[t];
                    if !value.is_finite() {
                        return Err(at(format!(
                            "line {:?} is {value} at bar {t}, inside the window: a warm-up position; use longer series or a shorter window",
                            lines[l]
                        )));
                    }
                    row.push(value);
                }
                if let Some(m) = masks {
                    for bit in 0..pattern_names.len() {
                        row.push(if m[t] & (1 << bit) != 0 { 1.0 } else { 0.0 });
                    }
                }
            }
            rows.push(row);
        }
        let mut names = lines.clone();
        names.extend(pattern_names.iter().cloned());
        Ok((names, rows))
    }

    /// The join: each symbol's window of features.
    pub fn join(p: &FeaturesParams) -> Result<FeaturesOutput, BadParams> {
        let (names, mut rows) = Self::raw(p)?;
        if p.standardize {
            standardize_columns(&mut rows);
        }
        let symbols = p
            .indicators
            .series
            .iter()
            .zip(rows)
            .enumerate()
            .map(|(i, (series, row))| {
                let features: Vec<f32> = row.iter().map(|&v| v as f32).collect();
                match features.iter().position(|v| !v.is_finite()) {
                    Some(at) => Err(BadParams::new(format!(
                        "indicators.series[{i}] ({:?}): feature {at} is {} as a 32-bit float (out of range)",
                        series.symbol, row[at]
                    ))),
                    None => Ok(SymbolWindow {
                        symbol: series.symbol.clone(),
                        features,
                    }),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(FeaturesOutput {
            names,
            window: p.window,
            symbols,
        })
    }
}

/// Replaces each column by its z-score across the rows (population
/// standard deviation; 0 where the column is constant).
fn standardize_columns(rows: &mut [Vec<f64>]) {
    let Some(width) = rows.first().map(Vec::len) else {
        return;
    };
    let n = rows.len() as f64;
    for c in 0..width {
        let mean = rows.iter().map(|r| r[c]).sum::<f64>() / n;
        let var = rows.iter().map(|r| (r[c] - mean).powi(2)).sum::<f64>() / n;
        let sd = var.sqrt();
        for row in rows.iter_mut() {
            row[c] = if sd > 0.0 { (row[c] - mean) / sd } else { 0.0 };
        }
    }
}

impl KindSpec for Features {
    const KIND: &'static str = "features";
    const CLASS: Class = Class::Light;
    type Params = FeaturesParams;
    type Output = FeaturesOutput;

    fn validate(p: &FeaturesParams) -> Result<(), BadParams> {
        Self::raw(p).map(|_| ())
    }
}

/// Predictions and a price history into expected returns and covariance.
#[derive(Debug)]
pub struct Book;

impl Book {
    /// As `portfolio_opt`'s bound.
    pub const MAX_ASSETS: u32 = 2_000;
    pub const MAX_OUTPUT: u32 = 1_024;
}

fn default_mu_scale() -> f64 {
    0.001
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct BookParams {
    /// A `predict_batch` result's predictions.
    pub predictions: Vec<Prediction>,
    /// Close prices of every predicted symbol, oldest first.
    pub series: Vec<Series>,
    /// Keep this many symbols, those of greatest expected return (default:
    /// every symbol, at most 2000).
    #[serde(default)]
    #[schemars(range(min = 1, max = Book::MAX_ASSETS))]
    pub top: Option<u32>,
    /// Which of a prediction's values to use.
    #[serde(default)]
    pub output: u32,
    /// Expected return per period of one cross-sectional standard
    /// deviation of the prediction.
    #[serde(default = "default_mu_scale")]
    pub mu_scale: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct BookOutput {
    /// The kept symbols, greatest expected return first.
    pub symbols: Vec<String>,
    /// Expected return per period of each, in `symbols` order.
    pub mu: Vec<f64>,
    /// Sample covariance of their returns, n x n, row-major.
    pub covariance: Vec<f64>,
    /// Rows of returns the covariance is computed from.
    pub periods: u64,
}

impl Book {
    /// The expected return of every prediction, in their order, and the
    /// index of each one's series. Names the parameters' problems.
    fn checked(p: &BookParams) -> Result<(Vec<f64>, Vec<usize>), BadParams> {
        if p.predictions.is_empty() {
            return Err(BadParams::new("predictions is empty"));
        }
        if p.output >= Self::MAX_OUTPUT {
            return Err(BadParams::new(format!(
                "output must be below {}, got {}",
                Self::MAX_OUTPUT,
                p.output
            )));
        }
        if !(p.mu_scale.is_finite() && p.mu_scale > 0.0 && p.mu_scale <= 1.0) {
            return Err(BadParams::new(format!(
                "mu_scale must be in (0, 1], got {}",
                p.mu_scale
            )));
        }
        let n = p.predictions.len();
        let top = p.top.unwrap_or(n.min(Self::MAX_ASSETS as usize) as u32);
        if top == 0 || top > Self::MAX_ASSETS || top as usize > n {
            return Err(BadParams::new(format!(
                "top must be 1 to {} and at most the {n} predictions, got {top}",
                Self::MAX_ASSETS
            )));
        }
        let periods = p.series.first().map_or(0, |s| s.closes.len());
        if periods < 3 {
            return Err(BadParams::new(format!(
                "series[0] must hold at least 3 closes (2 returns), got {periods}"
            )));
        }
        let total = (p.series.len() as u64).saturating_mul(periods as u64);
        if total > MAX_VALUES as u64 {
            return Err(BadParams::new(format!(
                "series hold {total} closes; at most {MAX_VALUES}"
            )));
        }
        for (i, s) in p.series.iter().enumerate() {
            if s.closes.len() != periods {
                return Err(BadParams::new(format!(
                    "series[{i}] ({:?}) has {} closes, series[0] has {periods}; all must be equally long",
                    s.symbol,
                    s.closes.len()
                )));
            }
            if let Some(t) = s.closes.iter().position(|c| !(c.is_finite() && *c > 0.0)) {
                return Err(BadParams::new(format!(
                    "series[{i}] ({:?}) close {t} is {}: closes must be finite and above 0",
                    s.symbol, s.closes[t]
                )));
            }
        }
        let by_symbol: HashMap<&str, usize> = p
            .series
            .iter()
            .enumerate()
            .map(|(i, s)| (s.symbol.as_str(), i))
            .collect();
        let mut values = Vec::with_capacity(n);
        let mut rows = Vec::with_capacity(n);
        for (i, prediction) in p.predictions.iter().enumerate() {
            let Some(&value) = prediction.values.get(p.output as usize) else {
                return Err(BadParams::new(format!(
                    "predictions[{i}] ({:?}) has {} values; output {} is not one of them",
                    prediction.symbol,
                    prediction.values.len(),
                    p.output
                )));
            };
            if !value.is_finite() {
                return Err(BadParams::new(format!(
                    "predictions[{i}] ({:?}) value {} is {value}: it must be finite",
                    prediction.symbol, p.output
                )));
            }
            let Some(&row) = by_symbol.get(prediction.symbol.as_str()) else {
                return Err(BadParams::new(format!(
                    "series: no closes for predictions[{i}] ({:?})",
                    prediction.symbol
                )));
            };
            values.push(f64::from(value));
            rows.push(row);
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        let sd = (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64).sqrt();
        let mu = values
            .iter()
            .map(|v| {
                if sd > 0.0 {
                    p.mu_scale * (v - mean) / sd
                } else {
                    0.0
                }
            })
            .collect();
        Ok((mu, rows))
    }

    /// The book: the kept symbols, their expected returns and covariance.
    pub fn build(p: &BookParams) -> Result<BookOutput, BadParams> {
        let (mu, rows) = Self::checked(p)?;
        let n = p.predictions.len();
        let top = p
            .top
            .map_or(n.min(Self::MAX_ASSETS as usize), |t| t as usize);
        // Greatest expected return first; ties keep the predictions' order.
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| mu[b].total_cmp(&mu[a]).then(a.cmp(&b)));
        order.truncate(top);
        let periods = p.series[0].closes.len() - 1;
        let returns: Vec<Vec<f64>> = order
            .iter()
            .map(|&k| {
                let closes = &p.series[rows[k]].closes;
                closes.windows(2).map(|w| w[1] / w[0] - 1.0).collect()
            })
            .collect();
        let means: Vec<f64> = returns
            .iter()
            .map(|r| r.iter().sum::<f64>() / periods as f64)
            .collect();
        let mut covariance = vec![0.0; top * top];
        for a in 0..top {
            for b in a..top {
                let c = returns[a]
                    .iter()
                    .zip(&returns[b])
                    .map(|(x, y)| (x - means[a]) * (y - means[b]))
                    .sum::<f64>()
                    / (periods - 1) as f64;
                covariance[a * top + b] = c;
                covariance[b * top + a] = c;
            }
        }
        Ok(BookOutput {
            symbols: order
                .iter()
                .map(|&k| p.predictions[k].symbol.clone())
                .collect(),
            mu: order.iter().map(|&k| mu[k]).collect(),
            covariance,
            periods: periods as u64,
        })
    }
}

impl KindSpec for Book {
    const KIND: &'static str = "book";
    const CLASS: Class = Class::Light;
    type Params = BookParams;
    type Output = BookOutput;

    fn validate(p: &BookParams) -> Result<(), BadParams> {
        Self::checked(p).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::super::indicators::SeriesValues;
    use super::super::patterns::SeriesMasks;
    use super::*;

    fn indicators() -> IndicatorsOutput {
        IndicatorsOutput {
            lines: vec!["sma(2)".into(), "rsi(1)".into()],
            series: vec![
                SeriesValues {
                    symbol: "AAA".into(),
                    values: vec![vec![f64::NAN, 10.0, 11.0], vec![f64::NAN, 50.0, 70.0]],
                },
                SeriesValues {
                    symbol: "BBB".into(),
                    values: vec![vec![f64::NAN, 20.0, 21.0], vec![f64::NAN, 30.0, 10.0]],
                },
            ],
        }
    }

    /// In the other order, to show the join is by symbol.
    fn patterns() -> PatternsOutput {
        PatternsOutput {
            patterns: vec!["doji".into(), "hammer".into()],
            series: vec![
                SeriesMasks {
                    symbol: "BBB".into(),
                    masks: vec![0, 2, 3],
                },
                SeriesMasks {
                    symbol: "AAA".into(),
                    masks: vec![0, 1, 0],
                },
            ],
        }
    }

    fn params(window: u32, standardize: bool) -> FeaturesParams {
        FeaturesParams {
            indicators: indicators(),
            patterns: Some(patterns()),
            window,
            standardize,
        }
    }

    #[test]
    fn joins_lines_and_pattern_bits_by_symbol_bar_by_bar() {
        let out = Features::join(&params(2, false)).unwrap();
        assert_eq!(out.names, ["sma(2)", "rsi(1)", "doji", "hammer"]);
        assert_eq!(out.window, 2);
        assert_eq!(out.symbols[0].symbol, "AAA");
        assert_eq!(
            out.symbols[0].features,
            [10.0, 50.0, 1.0, 0.0, 11.0, 70.0, 0.0, 0.0]
        );
        assert_eq!(
            out.symbols[1].features,
            [20.0, 30.0, 0.0, 1.0, 21.0, 10.0, 1.0, 1.0]
        );
        Features::validate(&params(2, false)).unwrap();
    }

    #[test]
    fn standardizes_each_feature_across_symbols() {
        let out = Features::join(&params(1, true)).unwrap();
        // Two symbols: every feature that differs is -1 and +1; hammer's
        // bit (0 and 1) too, doji's (0 and 1) the other way round.
        assert_eq!(out.symbols[0].features, [-1.0, 1.0, -1.0, -1.0]);
        assert_eq!(out.symbols[1].features, [1.0, -1.0, 1.0, 1.0]);
        let mut constant = params(1, true);
        constant.indicators.series[1].values[0][2] = 11.0;
        let out = Features::join(&constant).unwrap();
        assert_eq!(out.symbols[0].features[0], 0.0);
    }

    #[test]
    fn without_patterns_the_lines_alone() {
        let mut p = params(1, false);
        p.patterns = None;
        let out = Features::join(&p).unwrap();
        assert_eq!(out.names, ["sma(2)", "rsi(1)"]);
        assert_eq!(out.symbols[1].features, [21.0, 10.0]);
    }

    #[test]
    fn bad_joins_are_named() {
        let check = |p: FeaturesParams, expect: &str| {
            let err = Features::validate(&p).unwrap_err().0;
            assert!(err.contains(expect), "{err:?} lacks {expect:?}");
        };
        check(
            params(3, false),
            "line \"sma(2)\" is NaN at bar 0, inside the window",
        );
        check(params(4, false), "has 3 bars, fewer than the window (4)");
        check(params(0, false), "window must be 1 to 10000, got 0");
        let mut p = params(1, false);
        p.patterns.as_mut().unwrap().series[0].symbol = "CCC".into();
        check(p, "patterns: no series for indicators.series[1] (\"BBB\")");
        let mut p = params(1, false);
        p.patterns.as_mut().unwrap().series[1].masks.pop();
        check(
            p,
            "indicators.series[0] (\"AAA\"): has 3 bars but its patterns series has 2",
        );
        let mut p = params(1, false);
        p.indicators.series[1].values[1].pop();
        check(
            p,
            "indicators.series[1] (\"BBB\"): line \"rsi(1)\" has 2 bars",
        );
        let mut p = params(1, false);
        p.indicators.series[0].values.pop();
        check(p, "has 1 lines but indicators.lines names 2");
    }

    fn book(top: Option<u32>) -> BookParams {
        let prediction = |symbol: &str, value: f32| Prediction {
            symbol: symbol.into(),
            values: vec![value],
        };
        let series = |symbol: &str, closes: &[f64]| Series {
            symbol: symbol.into(),
            closes: closes.to_vec(),
        };
        BookParams {
            predictions: vec![
                prediction("AAA", 1.0),
                prediction("BBB", 3.0),
                prediction("CCC", 2.0),
            ],
            series: vec![
                series("CCC", &[100.0, 100.0, 100.0]),
                series("AAA", &[100.0, 110.0, 99.0]),
                series("BBB", &[10.0, 11.0, 12.1]),
            ],
            top,
            output: 0,
            mu_scale: 0.01,
        }
    }

    #[test]
    fn the_book_ranks_by_z_score_and_takes_the_covariance_of_returns() {
        let out = Book::build(&book(None)).unwrap();
        assert_eq!(out.symbols, ["BBB", "CCC", "AAA"]);
        // Predictions 1, 2, 3: mean 2, population sd sqrt(2/3).
        let z = 1.0 / (2.0f64 / 3.0).sqrt();
        let expect = [0.01 * z, 0.0, -0.01 * z];
        for (got, want) in out.mu.iter().zip(expect) {
            assert!((got - want).abs() < 1e-12, "{:?}", out.mu);
        }
        assert_eq!(out.periods, 2);
        // BBB's returns are 0.1 and 0.1, CCC's 0 and 0: no variance; AAA's
        // are 0.1 and -0.1: variance 0.02 (divided by T - 1 = 1).
        let c = &out.covariance;
        assert_eq!(c.len(), 9);
        assert!(c[0].abs() < 1e-15 && c[4] == 0.0, "{c:?}");
        assert!((c[8] - 0.02).abs() < 1e-12, "{c:?}");
        assert_eq!(c[2], c[6]);
        let top = Book::build(&book(Some(2))).unwrap();
        assert_eq!(top.symbols, ["BBB", "CCC"]);
        assert_eq!(top.covariance.len(), 4);
    }

    #[test]
    fn bad_books_are_named() {
        let check = |p: BookParams, expect: &str| {
            let err = Book::validate(&p).unwrap_err().0;
            assert!(err.contains(expect), "{err:?} lacks {expect:?}");
        };
        check(
            book(Some(4)),
            "top must be 1 to 2000 and at most the 3 predictions, got 4",
        );
        let mut p = book(None);
        p.output = 1;
        check(
            p,
            "predictions[0] (\"AAA\") has 1 values; output 1 is not one of them",
        );
        let mut p = book(None);
        p.series.remove(1);
        check(p, "series: no closes for predictions[0] (\"AAA\")");
        let mut p = book(None);
        p.series[2].closes.pop();
        check(p, "series[2] (\"BBB\") has 2 closes, series[0] has 3");
        let mut p = book(None);
        p.series[1].closes[2] = 0.0;
        check(
            p,
            "series[1] (\"AAA\") close 2 is 0: closes must be finite and above 0",
        );
        let mut p = book(None);
        p.mu_scale = f64::NAN;
        check(p, "mu_scale must be in (0, 1], got NaN");
        let mut p = book(None);
        p.predictions[2].values[0] = f32::INFINITY;
        check(
            p,
            "predictions[2] (\"CCC\") value 0 is inf: it must be finite",
        );
    }
}
