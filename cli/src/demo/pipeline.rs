//! `--trading --pipeline`: issue 14's worked trading pipeline as ONE
//! workflow on the fleet. Indicators and candlestick patterns of N
//! symbols (in parallel), joined into each symbol's model input
//! (`features`), predicted by a seeded MLP uploaded to the registry
//! (`predict_batch`), turned into a book of the top symbols' expected
//! returns and covariance (`book`), optimised (`portfolio_opt`, greatest
//! Sharpe ratio), and the optimised book's Monte Carlo VaR (`risk`); a
//! `report` (`echo`) gathers the figures. Every step takes its parents'
//! results by `$ref`: the demo never sees them, and large ones go by blob
//! reference. It prints `tandem flow status`'s table (each node's worker,
//! device, wait and run time), the step boundaries against the 5 ms
//! target, and the result.

use std::process::ExitCode;
use std::time::Duration;

use tandem_producer::{NodeState, Producer, Task, Workflow, WorkflowRef, WorkflowState};
use tandem_shared::Class;
use tandem_shared::kind::indicators::{IndicatorSpec, Indicators, IndicatorsParams, Series};
use tandem_shared::kind::patterns::{PATTERN_NAMES, Patterns, PatternsParams, Thresholds};
use tandem_shared::model_format::{Activation, Model};
use tandem_shared::store::{ModelPolicy, Store};
use tandem_shared::workflow::OnFailure;
use tandem_shared::{Config, msgpack};

use super::trading::{Column, Fleet, start_fleet};
use super::trading_workload::{indicator_specs, market_bars};
use super::{DemoArgs, Interrupts};
use crate::table;
use crate::workflow::{ran_us, render_with, wait_ms};

/// The model the pipeline registers: an MLP over a window of features.
pub(super) const MODEL: &str = "pipeline_mlp";
/// Bars of history per symbol (one-minute OHLC): enough for the
/// indicators' warm-up (MACD's signal line needs 33) and the window.
const BARS: usize = 128;
/// The latest bars each symbol's model input holds.
const WINDOW: usize = 4;
// MACD(12,26,9)'s signal line is the last to warm up (NaN up to bar
// 26 + 9 - 2): the window must start after it.
const _: () = assert!(26 + 9 - 2 < BARS - WINDOW);
/// Symbols the book keeps, those of greatest expected return.
const TOP: usize = 50;
/// Expected return a period (a one-minute bar) of one cross-sectional
/// standard deviation of the model's prediction: 1 bp, against a bar's
/// volatility of about 12 bp per symbol.
const MU_SCALE: f64 = 0.0001;
/// The least `--symbols`: `portfolio_opt`'s cap of 10 % per asset needs
/// ten.
pub(super) const MIN_SYMBOLS: usize = 10;
/// The target for a step boundary on an idle fleet (issue 14).
const BOUNDARY_TARGET_MS: u64 = 5;

/// The model's input width: `WINDOW` bars of every line and pattern.
fn input_width() -> usize {
    let lines: usize = indicator_specs().iter().map(IndicatorSpec::lines).sum();
    WINDOW * (lines + PATTERN_NAMES.len())
}

/// The pipeline over `symbols` symbols of synthetic bars, as one workflow.
pub(super) fn pipeline_workflow(symbols: usize, seed: u64) -> anyhow::Result<Workflow> {
    let bars = market_bars(seed, symbols, BARS);
    let closes: Vec<Series> = bars
        .iter()
        .map(|s| Series {
            symbol: s.symbol.clone(),
            closes: s.close.clone(),
        })
        .collect();
    let indicators = IndicatorsParams {
        series: closes.clone(),
        indicators: indicator_specs(),
    };
    let patterns = PatternsParams {
        series: bars,
        thresholds: Thresholds::default(),
    };
    let features = serde_json::json!({
        "indicators": WorkflowRef::to("indicators"),
        "patterns": WorkflowRef::to("patterns"),
        "window": WINDOW,
        "standardize": true,
    });
    let predict = serde_json::json!({
        "model": MODEL,
        "symbols": WorkflowRef::to("features").at("/symbols"),
    });
    let book = serde_json::json!({
        "predictions": WorkflowRef::to("predict").at("/predictions"),
        "series": closes,
        "top": TOP.min(symbols),
        "mu_scale": MU_SCALE,
    });
    let optimise = serde_json::json!({
        "mu": WorkflowRef::to("book").at("/mu"),
        "covariance": WorkflowRef::to("book").at("/covariance"),
        "objective": "max_sharpe",
        "max_weight": 0.1,
        "samples": 4096,
        "seed": seed,
    });
    let var = serde_json::json!({
        "method": "monte_carlo",
        "weights": WorkflowRef::to("optimise").at("/weights"),
        "mu": WorkflowRef::to("book").at("/mu"),
        "covariance": WorkflowRef::to("book").at("/covariance"),
        "scenarios": 50_000,
        "seed": seed,
        "confidence": [0.95, 0.99],
    });
    let report = serde_json::json!({
        "symbols": WorkflowRef::to("book").at("/symbols"),
        "weights": WorkflowRef::to("optimise").at("/weights"),
        "expected_return": WorkflowRef::to("optimise").at("/expected_return"),
        "volatility": WorkflowRef::to("optimise").at("/volatility"),
        "confidence": WorkflowRef::to("var").at("/levels/*/confidence"),
        "var": WorkflowRef::to("var").at("/levels/*/var"),
        "cvar": WorkflowRef::to("var").at("/levels/*/cvar"),
    });
    Ok(Workflow::new()
        .on_failure(OnFailure::FailFast)
        .node("indicators", Task::of::<Indicators>(&indicators)?)
        .node("patterns", Task::of::<Patterns>(&patterns)?)
        .node_after(
            "features",
            Task::new("features", &features)?,
            &["indicators", "patterns"],
        )
        // Many symbols through one model: the seed's rule sends that to
        // the heavy GPU (the class cannot be read from a placeholder).
        .node_after(
            "predict",
            Task::new("predict_batch", &predict)?.class(if symbols > 100 {
                Class::Heavy
            } else {
                Class::Light
            }),
            &["features"],
        )
        .node_after("book", Task::new("book", &book)?, &["predict"])
        .node_after(
            "optimise",
            Task::new("portfolio_opt", &optimise)?,
            &["book"],
        )
        .node_after("var", Task::new("risk", &var)?, &["optimise", "book"])
        .node_after(
            "report",
            Task::new("echo", &report)?,
            &["book", "optimise", "var"],
        ))
}

/// The workflow's report node's result.
#[derive(Debug, serde::Deserialize)]
struct Report {
    symbols: Vec<String>,
    weights: Vec<f64>,
    expected_return: f64,
    volatility: f64,
    confidence: Vec<f64>,
    var: Vec<f64>,
    cvar: Vec<f64>,
}

/// `tandem demo --trading --pipeline`.
pub(super) async fn pipeline(
    config: &Config,
    store: &Store,
    args: &DemoArgs,
) -> anyhow::Result<ExitCode> {
    let symbols = args.symbols;
    if symbols < MIN_SYMBOLS {
        anyhow::bail!("--symbols must be at least {MIN_SYMBOLS}, got {symbols}");
    }
    let mut interrupts = Interrupts::install()?;
    let Some(Fleet {
        mut workers,
        columns,
    }) = start_fleet(config, store, args, &mut interrupts).await?
    else {
        return Ok(ExitCode::from(130));
    };
    let code = tokio::select! {
        code = run_pipeline(config, store, symbols, &columns) => code,
        () = interrupts.recv() => {
            println!("interrupted: stopping workers and cleaning up");
            Ok(ExitCode::from(130))
        }
    };
    workers.stop(Duration::from_secs(10));
    code
}

async fn run_pipeline(
    config: &Config,
    store: &Store,
    symbols: usize,
    columns: &[Column],
) -> anyhow::Result<ExitCode> {
    let width = input_width();
    let model = Model::random(&[width, 32, 1], Activation::Tanh, 23)?;
    let info = store
        .upload_model(MODEL, &model.encode(), &ModelPolicy::from(config))
        .await?;
    println!(
        "registered {MODEL} (version {}, an MLP {width} -> 32 -> 1, seeded): each symbol's \
         input is its last {WINDOW} bars of 7 indicator lines and 7 pattern bits",
        info.version
    );
    let producer = Producer::connect(config).await?;
    let workflow = pipeline_workflow(symbols, 0x5eed_0014)?;
    let handle = producer.submit_workflow(workflow).await?;
    println!(
        "submitted workflow {}: indicators + patterns of {symbols} symbols ({BARS} bars) -> \
         features -> predict_batch -> book (top {}) -> portfolio_opt -> Monte Carlo VaR -> report\n",
        handle.id(),
        TOP.min(symbols)
    );
    let outcome = handle.wait(Duration::from_secs(600)).await?;
    let state = producer
        .workflow_state(outcome.id)
        .await?
        .ok_or(tandem_producer::ProducerError::WorkflowNotFound(outcome.id))?;
    print!(
        "{}",
        render_with(&state, |device| describe(columns, device))
    );
    print!("{}", boundaries(&state));
    println!(
        "(see it again: tandem flow status {} with TANDEM_PREFIX={})",
        state.id, config.prefix
    );
    if state.status != "succeeded" {
        println!("the pipeline did not succeed: {}", state.status);
        return Ok(ExitCode::FAILURE);
    }
    let report = outcome
        .results
        .get("report")
        .ok_or_else(|| anyhow::anyhow!("the report node left no result"))?;
    let report: Report = msgpack::decode(report)?;
    print!("{}", summary(&report));
    Ok(ExitCode::SUCCESS)
}

/// A device as the table shows it: its fleet column and name (simulated
/// or real), else as recorded.
fn describe(columns: &[Column], device: &str) -> String {
    match Column::of(columns, device) {
        Some(c) if c.device == "cpu" => "cpu (CPU worker)".to_owned(),
        Some(c) => format!("{}: {} GPU {}", c.label, kind_of(c), c.name),
        None => device.to_owned(),
    }
}

fn kind_of(column: &Column) -> &'static str {
    if column.name.contains("(simulated)") || column.device.starts_with("SIM-") {
        "simulated"
    } else {
        "real"
    }
}

/// The step boundaries: each node with parents, from its last parent's
/// commit (its release) to its own start.
fn boundary_ms(state: &WorkflowState) -> Vec<u64> {
    state
        .nodes
        .iter()
        .filter(|n| !n.graph.parents.is_empty())
        .filter_map(wait_ms)
        .collect()
}

fn boundaries(state: &WorkflowState) -> String {
    let mut waits = boundary_ms(state);
    waits.sort_unstable();
    let runs: Vec<u64> = state
        .nodes
        .iter()
        .filter_map(|n: &NodeState| ran_us(n))
        .collect();
    let ran_us: u64 = runs.iter().sum();
    let waited_ms: u64 = waits.iter().sum();
    let took = match (state.submitted_at_ms, state.finished_at_ms) {
        (Some(start), Some(end)) => table::ms(end.saturating_sub(start) as f64),
        _ => "-".to_owned(),
    };
    let mut out = format!(
        "totals: {} nodes ran {} in all; waited {} ms at {} step boundaries; the workflow took {took} ms\n",
        runs.len(),
        table::micros(ran_us),
        table::ms(waited_ms as f64),
        waits.len()
    );
    if let (Some(&max), false) = (waits.last(), waits.is_empty()) {
        let p50 = waits[(waits.len() - 1) / 2];
        let verdict = if max < BOUNDARY_TARGET_MS {
            "met"
        } else {
            "missed"
        };
        out.push_str(&format!(
            "step boundary (last parent's commit to the child's start, Redis clock): \
             p50 {p50} ms, max {max} ms: {verdict} the {BOUNDARY_TARGET_MS} ms target\n"
        ));
    }
    out
}

fn summary(report: &Report) -> String {
    let mut out = String::from("\nresult:\n");
    for ((c, var), cvar) in report.confidence.iter().zip(&report.var).zip(&report.cvar) {
        out.push_str(&format!(
            "  VaR {:.0} %: {:.4} % of the book (CVaR {:.4} %), one period, Monte Carlo\n",
            c * 100.0,
            var * 100.0,
            cvar * 100.0
        ));
    }
    out.push_str(&format!(
        "  book: {} symbols, expected return {:.4} % a period, volatility {:.4} %; weights sum to {:.6}\n",
        report.symbols.len(),
        report.expected_return * 100.0,
        report.volatility * 100.0,
        report.weights.iter().sum::<f64>()
    ));
    let mut top: Vec<(&String, f64)> = report
        .symbols
        .iter()
        .zip(report.weights.iter().copied())
        .collect();
    top.sort_by(|a, b| b.1.total_cmp(&a.1));
    let top: Vec<String> = top
        .iter()
        .take(5)
        .filter(|(_, w)| *w > 0.0)
        .map(|(s, w)| format!("{s} {:.2} %", w * 100.0))
        .collect();
    out.push_str(&format!("  top weights: {}\n", top.join(", ")));
    out
}

#[cfg(test)]
mod tests {
    use tandem_shared::kind::KindSpec;

    use super::*;

    /// The market data passes its kinds' checks and the features fit the
    /// model's width.
    #[test]
    fn the_data_is_valid_and_the_features_fit_the_model() {
        let bars = market_bars(1, MIN_SYMBOLS, BARS);
        Patterns::validate(&PatternsParams {
            series: bars.clone(),
            thresholds: Thresholds::default(),
        })
        .unwrap();
        assert_eq!(input_width(), 4 * 14);
        pipeline_workflow(MIN_SYMBOLS, 1).unwrap();
    }
}
