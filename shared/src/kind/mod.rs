//! Task kinds as producers and workers agree on them.
//!
//! A [`KindSpec`] names a kind, its class, its parameter and output types,
//! the rules its parameters must follow and its memory estimate. Producers
//! use it to build and check tasks before sending them; workers pair it with
//! a handler that runs it. The built-in kinds live in [`builtin`].

pub mod builtin;
pub mod catalog;
pub mod features;
pub mod indicators;
pub mod model_kinds;
pub mod monte_carlo;
pub mod patterns;
pub mod portfolio_opt;
pub mod risk;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::task::Class;

/// Parameters that decode but break a kind's rules or bounds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadParams(pub String);

impl BadParams {
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// The contract of one task kind.
pub trait KindSpec: Send + Sync + 'static {
    /// The kind's name on the wire.
    const KIND: &'static str;
    /// The class its tasks go to unless a producer says otherwise.
    const CLASS: Class;
    type Params: Serialize + DeserializeOwned + Send + 'static;
    type Output: Serialize + DeserializeOwned + Send + 'static;

    /// Checks the rules and bounds decoding cannot express.
    fn validate(params: &Self::Params) -> Result<(), BadParams> {
        let _ = params;
        Ok(())
    }

    /// Device memory the task needs, in bytes (0: none or unknown).
    fn memory_estimate(params: &Self::Params) -> u64 {
        let _ = params;
        0
    }

    /// The class a task with these parameters goes to unless its producer
    /// says otherwise: [`KindSpec::CLASS`] unless the parameters decide
    /// (a `predict_batch` over many symbols is heavy).
    fn class(params: &Self::Params) -> Class {
        let _ = params;
        Self::CLASS
    }
}

/// What a kind this crate defines says of MessagePack parameters: checked
/// against its rules, its class, and its memory estimate.
#[derive(Debug, Clone, PartialEq)]
pub struct Known {
    pub class: Class,
    /// The parameters' problem, if any.
    pub checked: Result<(), BadParams>,
    /// Device memory, bytes (0 when the parameters are bad).
    pub memory_bytes: u64,
}

/// Looks `kind` up among the kinds this crate defines (built-in, compute
/// and test kinds) and checks `params` against it; `None` for other kinds.
pub fn known(kind: &str, params: &[u8]) -> Option<Known> {
    fn check<K: KindSpec>(params: &[u8]) -> Known {
        // The message names the field and the problem; the caller names
        // the kind.
        let decoded = crate::msgpack::decode_params::<K::Params>(params)
            .map_err(|e| BadParams::new(e.to_string()));
        let checked = decoded.as_ref().map_err(Clone::clone).and_then(K::validate);
        let (memory_bytes, class) = match (&decoded, &checked) {
            (Ok(params), Ok(())) => (K::memory_estimate(params), K::class(params)),
            _ => (0, K::CLASS),
        };
        Known {
            class,
            checked,
            memory_bytes,
        }
    }
    macro_rules! kinds {
        ($($spec:ty),* $(,)?) => {
            match kind {
                $(<$spec as KindSpec>::KIND => Some(check::<$spec>(params)),)*
                _ => None,
            }
        };
    }
    kinds!(
        builtin::Noop,
        builtin::Sleep,
        builtin::Echo,
        builtin::Fail,
        builtin::Panic,
        builtin::Abort,
        builtin::SplitSum,
        builtin::GpuOnly,
        builtin::Spin,
        monte_carlo::MonteCarlo,
        risk::Risk,
        indicators::Indicators,
        patterns::Patterns,
        portfolio_opt::PortfolioOpt,
        model_kinds::Infer,
        model_kinds::PredictBatch,
        model_kinds::Train,
        features::Features,
        features::Book,
    )
}

/// Checks `params` (MessagePack) against `kind` when this crate defines
/// it: `None` for kinds it does not know.
pub fn validate(kind: &str, params: &[u8]) -> Option<Result<(), BadParams>> {
    known(kind, params).map(|k| k.checked)
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    /// Regression (issue 11, point 11): a field of the wrong type failed
    /// with `wrong msgpack marker FixStr(3)`, naming neither the field nor
    /// the problem. One bad field per built-in kind that has fields (`noop`,
    /// `echo` and `abort` take any value): the good parameters pass, the
    /// bad one is named with its path, what was expected and what came.
    #[test]
    fn a_bad_field_is_named_for_every_builtin_kind() {
        let series = json!([{"symbol": "A", "closes": [1.0, 2.0, 3.0, 4.0]}]);
        let ohlc =
            json!([{"symbol": "A", "open": [1.0], "high": [2.0], "low": [0.5], "close": [1.5]}]);
        let cases: Vec<(&str, Value, &str, Value, &str)> = vec![
            (
                "sleep",
                json!({"ms": 10}),
                "/ms",
                json!("10"),
                r#"ms: expected an integer, 0 or more, got a string ("10")"#,
            ),
            (
                "gpu_only",
                json!({"ms": 10}),
                "/ms",
                json!(-1),
                "ms: expected an integer, 0 or more, got an integer (-1)",
            ),
            (
                "fail",
                json!({"code": "E_X"}),
                "/code",
                json!(5),
                "code: expected a string, got an integer (5)",
            ),
            (
                "panic",
                json!({"message": "boom"}),
                "/message",
                json!(["boom"]),
                "message: expected a string, got an array",
            ),
            (
                "split_sum",
                json!({"n": 10, "block": 5, "fail_block": 1}),
                "/fail_block",
                json!("1"),
                r#"fail_block: expected an integer, 0 or more, got a string ("1")"#,
            ),
            (
                "monte_carlo",
                json!({"s0": 100.0, "strike": 100.0, "rate": 0.03, "sigma": 0.2,
                       "maturity": 1.0, "steps": 4, "paths": 1000, "seed": 1}),
                "/sigma",
                json!("0.2"),
                r#"sigma: expected a number, got a string ("0.2")"#,
            ),
            (
                "risk",
                json!({"method": "monte_carlo", "weights": [1.0, 2.0], "mu": [0.0, 0.0],
                       "covariance": [0.04, 0.0, 0.0, 0.09], "scenarios": 1000, "seed": 1,
                       "confidence": [0.95]}),
                "/covariance/3",
                json!("0.09"),
                r#"covariance[3]: expected a number, got a string ("0.09")"#,
            ),
            (
                "indicators",
                json!({"series": series, "indicators": [{"type": "sma", "period": 2}]}),
                "/indicators/0/period",
                json!("2"),
                r#"indicators[0].period: expected an integer from 0 to 4294967295, got a string ("2")"#,
            ),
            (
                "patterns",
                json!({"series": ohlc, "thresholds": {"doji_body": 0.1}}),
                "/thresholds/doji_body",
                json!(true),
                "thresholds.doji_body: expected a number, got a boolean (true)",
            ),
            (
                "portfolio_opt",
                json!({"mu": [0.1, 0.2], "covariance": [0.04, 0.0, 0.0, 0.09],
                       "objective": "max_sharpe"}),
                "/objective",
                json!("max_return"),
                r#"objective: "max_return" is not one of "min_variance", "max_sharpe""#,
            ),
            (
                "infer",
                json!({"model": "m", "inputs": [1.0, 2.0], "batch": 1}),
                "/inputs/1",
                json!("2"),
                r#"inputs[1]: expected a number, got a string ("2")"#,
            ),
            (
                "predict_batch",
                json!({"model": "m", "symbols": [{"symbol": "A", "features": [1.0]},
                                                 {"symbol": "B", "features": [2.0]}]}),
                "/symbols/1/symbol",
                json!(2),
                "symbols[1].symbol: expected a string, got an integer (2)",
            ),
            (
                "train",
                json!({"model": "m", "x": [1.0], "y": [1.0], "samples": 1, "epochs": 1,
                       "batch_size": 1, "optimizer": {"type": "adam", "lr": 0.01}}),
                "/optimizer/lr",
                json!("0.01"),
                r#"optimizer.lr: expected a number, got a string ("0.01")"#,
            ),
            (
                "features",
                json!({"indicators": {"lines": ["sma(1)"],
                                      "series": [{"symbol": "A", "values": [[1.0, 2.0]]}]},
                       "window": 2}),
                "/window",
                json!("2"),
                r#"window: expected an integer from 0 to 4294967295, got a string ("2")"#,
            ),
            (
                "book",
                json!({"predictions": [{"symbol": "A", "values": [0.5]}],
                       "series": [{"symbol": "A", "closes": [1.0, 1.1, 1.2]}]}),
                "/predictions/0/values/0",
                json!(null),
                "predictions[0].values[0]: expected a number, got nil",
            ),
        ];
        for (kind, good, pointer, bad_value, message) in cases {
            let known = super::known(kind, &crate::msgpack::encode(&good).unwrap())
                .unwrap_or_else(|| panic!("{kind} is built in"));
            assert_eq!(known.checked, Ok(()), "{kind}: {good}");
            let mut bad = good.clone();
            *bad.pointer_mut(pointer).expect("the field is there") = bad_value;
            let known = super::known(kind, &crate::msgpack::encode(&bad).unwrap()).unwrap();
            assert_eq!(
                known.checked,
                Err(super::BadParams::new(message)),
                "{kind}: {bad}"
            );
        }
    }

    /// Missing and unknown fields are named too; a misspelt optional field
    /// is refused rather than ignored.
    #[test]
    fn missing_and_unknown_fields_are_named() {
        let check = |kind: &str, params: Value, message: &str| {
            let known = super::known(kind, &crate::msgpack::encode(&params).unwrap()).unwrap();
            assert_eq!(
                known.checked,
                Err(super::BadParams::new(message)),
                "{kind}: {params}"
            );
        };
        check(
            "monte_carlo",
            json!({"s0": 100.0, "strike": 100.0, "rate": 0.03, "maturity": 1.0, "steps": 4,
                   "paths": 1000, "seed": 1}),
            "sigma: required field is missing",
        );
        check(
            "monte_carlo",
            json!({"s0": 100.0, "strike": 100.0, "rate": 0.03, "sigma": 0.2, "maturity": 1.0,
                   "steps": 4, "paths": 1000, "seed": 1, "dividends": 0.01}),
            "dividends: unknown field; the fields are s0, strike, rate, dividend, sigma, \
             maturity, steps, paths, seed, percentiles",
        );
        check(
            "sleep",
            json!({"ms": 1, "seconds": 2}),
            "seconds: unknown field; the fields are ms",
        );
        check(
            "sleep",
            json!("ten"),
            r#"expected a map, got a string ("ten")"#,
        );
        check(
            "risk",
            json!({"weights": [1.0]}),
            "method: required field is missing",
        );
        // Inside a variant of an internally tagged enum too.
        check(
            "risk",
            json!({"method": "historical", "weights": [1.0], "returns": [0.01],
                   "confidence": [0.95], "scenarios": 10}),
            "scenarios: unknown field; the fields are method, weights, returns, confidence",
        );
        check(
            "train",
            json!({"model": "m", "x": [1.0], "y": [1.0], "samples": 1, "epochs": 1,
                   "batch_size": 1, "optimizer": {"type": "sgd"}}),
            "optimizer.lr: required field is missing",
        );
        // Anything goes for the kinds that take any value.
        for kind in ["noop", "echo", "abort"] {
            let known = super::known(
                kind,
                &crate::msgpack::encode(&json!({"x": [1, "y"]})).unwrap(),
            );
            assert_eq!(known.map(|k| k.checked), Some(Ok(())), "{kind}");
        }
    }
}
