//! The catalog of the kinds this crate defines, for producers to discover:
//! each kind's class, whether it splits, a JSON Schema of its parameters and
//! of its result (derived from the Rust types with `schemars`, so it cannot
//! drift from what workers decode), and an example. `tandem kinds` prints
//! it, `tandem kinds --json-schema` emits it, and the Python client's typed
//! classes are generated from that output.
//!
//! The schemas describe shape (field names, types, required fields,
//! defaults) and the simple bounds; the rules that tie fields together
//! (`covariance` is n x n, `x` holds whole rows) stay in each kind's
//! `validate`, which `tandem submit` and every producer run as well.

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde_json::{Value, json};

use super::{
    KindSpec, builtin, features, indicators, model_kinds, monte_carlo, patterns, portfolio_opt,
    risk,
};
use crate::task::Class;

/// What a producer needs to know of one kind.
#[derive(Debug, Clone)]
pub struct KindInfo {
    /// The kind's name on the wire.
    pub kind: &'static str,
    /// The class its tasks go to unless the producer says otherwise.
    pub class: Class,
    /// Whether a `parallel` task of the kind may be cut into shards.
    pub splits: bool,
    /// Only workers started with `test_kinds = true` run it.
    pub test_only: bool,
    /// One line for people.
    pub summary: &'static str,
    /// JSON Schema (draft 2020-12) of the parameters.
    pub params: Schema,
    /// JSON Schema of the result.
    pub result: Schema,
    /// Parameters that pass the kind's checks.
    pub example: Value,
}

impl KindInfo {
    /// The kind's entry in `tandem kinds --json-schema`.
    pub fn to_json(&self) -> Value {
        json!({
            "class": self.class.as_str(),
            "splits": self.splits,
            "test_only": self.test_only,
            "summary": self.summary,
            "params": self.params,
            "result": self.result,
            "example": self.example,
        })
    }
}

/// Parameters and result described by their Rust types.
fn typed<K: KindSpec>(summary: &'static str, example: Value) -> KindInfo
where
    K::Params: JsonSchema,
    K::Output: JsonSchema,
{
    KindInfo {
        kind: K::KIND,
        class: K::CLASS,
        splits: false,
        test_only: false,
        summary,
        params: schema::<K::Params>(),
        result: schema::<K::Output>(),
        example,
    }
}

/// A kind whose parameters are any MessagePack value (`noop`, `echo`,
/// `abort`), with the given result schema.
fn untyped<K: KindSpec>(summary: &'static str, result: Schema, example: Value) -> KindInfo {
    KindInfo {
        kind: K::KIND,
        class: K::CLASS,
        splits: false,
        test_only: false,
        summary,
        params: json_schema!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "Any",
            "description": "any MessagePack value"
        }),
        result,
        example,
    }
}

fn schema<T: JsonSchema>() -> Schema {
    SchemaGenerator::default().into_root_schema_for::<T>()
}

fn splitting(mut info: KindInfo) -> KindInfo {
    info.splits = true;
    info
}

fn test_only(mut info: KindInfo) -> KindInfo {
    info.test_only = true;
    info
}

/// Every kind this crate defines (the model kinds' examples fit one model,
/// `alpha-mlp`, of 4 inputs and 1 output: `tandem model new alpha-mlp
/// --layers 4,8,1 --upload`), in the order `tandem kinds` lists them:
/// the ones every worker runs, then the compute and model kinds, then the
/// test kinds.
pub fn catalog() -> Vec<KindInfo> {
    let series = json!([{"symbol": "ES", "closes": [4700.0, 4712.5, 4698.25, 4731.0, 4740.5]}]);
    let ohlc = json!([{"symbol": "ES", "open": [4700.0, 4712.0], "high": [4720.0, 4730.0],
                       "low": [4690.0, 4705.0], "close": [4712.0, 4728.0]}]);
    vec![
        untyped::<builtin::Noop>(
            "does nothing: measures the queue's own overhead",
            schema::<()>(),
            json!(null),
        ),
        typed::<builtin::Sleep>(
            "sleeps `ms` milliseconds without using a CPU",
            json!({"ms": 100}),
        ),
        untyped::<builtin::Echo>(
            "returns its parameters",
            json_schema!({
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "title": "Any",
                "description": "the parameters, as sent"
            }),
            json!({"symbol": "ES", "qty": 3}),
        ),
        typed::<builtin::Fail>(
            "always fails with `code`; retried (with backoff) only when `retry` is true",
            json!({"code": "E_DEMO", "message": "failed on purpose"}),
        ),
        splitting(typed::<monte_carlo::MonteCarlo>(
            "prices European and Asian options by simulating geometric Brownian motion",
            json!({"s0": 100.0, "strike": 100.0, "rate": 0.05, "sigma": 0.2, "maturity": 1.0,
                   "steps": 64, "paths": 200_000, "seed": 42, "percentiles": [5.0, 50.0, 95.0]}),
        )),
        splitting(typed::<risk::Risk>(
            "value at risk and expected shortfall of a portfolio, simulated or historical",
            json!({"method": "historical", "weights": [1_000_000.0, 500_000.0],
                   "returns": [0.01, -0.02, -0.015, 0.005, 0.002, -0.03, 0.012, 0.0],
                   "confidence": [0.95, 0.99]}),
        )),
        typed::<indicators::Indicators>(
            "technical indicators (SMA, EMA, RSI, Bollinger bands, ...) of price series",
            json!({"series": series, "indicators": [{"type": "sma", "period": 3}]}),
        ),
        typed::<patterns::Patterns>(
            "candlestick patterns found in OHLC series",
            json!({"series": ohlc}),
        ),
        splitting(typed::<portfolio_opt::PortfolioOpt>(
            "long-only portfolio of least variance or greatest Sharpe ratio",
            json!({"mu": [0.08, 0.12], "covariance": [0.04, 0.006, 0.006, 0.09],
                   "objective": "max_sharpe"}),
        )),
        typed::<model_kinds::Infer>(
            "runs a registered model on a batch of inputs",
            json!({"model": "alpha-mlp", "inputs": [0.1, 0.2, 0.3, 0.4], "batch": 1}),
        ),
        typed::<model_kinds::PredictBatch>(
            "runs a registered model on each symbol's features",
            json!({"model": "alpha-mlp", "symbols": [{"symbol": "ES", "features": [0.1, 0.2, 0.3, 0.4]}]}),
        ),
        typed::<model_kinds::Train>(
            "fine-tunes a registered model on samples",
            json!({"model": "alpha-mlp", "x": [0.1, 0.2, 0.3, 0.4], "y": [1.0], "samples": 1, "epochs": 1,
                   "batch_size": 1, "optimizer": {"type": "adam", "lr": 0.001}}),
        ),
        typed::<features::Features>(
            "joins an indicators result and a patterns result into each symbol's model input",
            json!({"indicators": {"lines": ["rsi(2)"], "series": [{"symbol": "ES", "values": [[50.0, 61.5]]}]},
                   "patterns": {"patterns": ["doji"], "series": [{"symbol": "ES", "masks": [0, 1]}]},
                   "window": 2, "standardize": false}),
        ),
        typed::<features::Book>(
            "expected returns from predictions and the covariance of a price history: a book to optimise",
            json!({"predictions": [{"symbol": "ES", "values": [0.4]}, {"symbol": "NQ", "values": [-0.1]}],
                   "series": [{"symbol": "ES", "closes": [4700.0, 4712.5, 4698.25]},
                              {"symbol": "NQ", "closes": [16500.0, 16610.0, 16480.0]}],
                   "top": 2}),
        ),
        test_only(typed::<builtin::Panic>(
            "the handler panics",
            json!({"message": "boom"}),
        )),
        test_only(untyped::<builtin::Abort>(
            "the worker process aborts",
            schema::<()>(),
            json!(null),
        )),
        test_only(typed::<builtin::GpuOnly>(
            "sleeps like `sleep`, but has no CPU path",
            json!({"ms": 100}),
        )),
        test_only(splitting(typed::<builtin::SplitSum>(
            "sums 1/(i+1) over i < n in blocks, splittable: exercises split tasks",
            json!({"n": 100_000, "block": 10_000}),
        ))),
        test_only(typed::<builtin::Spin>(
            "computes for `ms` milliseconds on a blocking thread, reporting progress; stops when asked unless `ignore_stop`",
            json!({"ms": 500}),
        )),
    ]
}

/// The kind's entry, when this crate defines it.
pub fn info(kind: &str) -> Option<KindInfo> {
    catalog().into_iter().find(|k| k.kind == kind)
}

/// `tandem kinds --json-schema`: every kind's entry under its name.
pub fn json_schemas() -> Value {
    Value::Object(
        catalog()
            .iter()
            .map(|k| (k.kind.to_owned(), k.to_json()))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The catalog lists exactly the kinds `known` checks, once each, and
    /// every example passes its kind's checks.
    #[test]
    fn every_known_kind_is_listed_with_an_example_that_passes() {
        let kinds: Vec<&str> = catalog().iter().map(|k| k.kind).collect();
        let mut distinct = kinds.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), kinds.len(), "listed twice: {kinds:?}");
        for info in catalog() {
            let params = crate::msgpack::encode(&info.example).expect("encode");
            let known = super::super::known(info.kind, &params)
                .unwrap_or_else(|| panic!("{} is not known", info.kind));
            assert_eq!(known.checked, Ok(()), "{}: {}", info.kind, info.example);
            assert_eq!(known.class, info.class, "{}", info.kind);
        }
        assert!(super::super::known("no_such_kind", &[0xc0]).is_none());
    }

    /// The schemas come from the types: required fields, defaults, bounds
    /// and the documentation comments all show.
    #[test]
    fn schemas_carry_required_fields_defaults_bounds_and_meanings() {
        let mc = info("monte_carlo").expect("monte_carlo").params;
        let mc = mc.as_value();
        let required = mc["required"].as_array().expect("required");
        assert!(required.contains(&json!("sigma")), "{mc}");
        assert!(!required.contains(&json!("dividend")), "{mc}");
        assert_eq!(mc["properties"]["dividend"]["default"], json!(0.0), "{mc}");
        assert_eq!(mc["properties"]["steps"]["minimum"], json!(1), "{mc}");
        assert_eq!(
            mc["properties"]["steps"]["maximum"],
            json!(monte_carlo::MonteCarlo::MAX_STEPS),
            "{mc}"
        );
        assert_eq!(
            mc["properties"]["sigma"]["exclusiveMinimum"],
            json!(0),
            "{mc}"
        );
        assert!(
            mc["properties"]["rate"]["description"]
                .as_str()
                .is_some_and(|d| d.contains("Risk-free rate")),
            "{mc}"
        );
        let risk = info("risk").expect("risk").params;
        assert!(
            risk.as_value()["oneOf"]
                .as_array()
                .is_some_and(|v| v.len() == 2),
            "the two methods: {}",
            risk.as_value()
        );
        let splits: Vec<&str> = catalog()
            .iter()
            .filter(|k| k.splits)
            .map(|k| k.kind)
            .collect();
        assert_eq!(
            splits,
            ["monte_carlo", "risk", "portfolio_opt", "split_sum"]
        );
    }
}
