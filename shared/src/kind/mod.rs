//! Task kinds as producers and workers agree on them.
//!
//! A [`KindSpec`] names a kind, its class, its parameter and output types,
//! the rules its parameters must follow and its memory estimate. Producers
//! use it to build and check tasks before sending them; workers pair it with
//! a handler that runs it. The built-in kinds live in [`builtin`].

pub mod builtin;
pub mod indicators;
pub mod models;
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
        let decoded = crate::msgpack::decode::<K::Params>(params)
            .map_err(|e| BadParams::new(format!("parameters of {}: {e}", K::KIND)));
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
        monte_carlo::MonteCarlo,
        risk::Risk,
        indicators::Indicators,
        patterns::Patterns,
        portfolio_opt::PortfolioOpt,
        models::Infer,
        models::PredictBatch,
        models::Train,
    )
}

/// Checks `params` (MessagePack) against `kind` when this crate defines
/// it: `None` for kinds it does not know.
pub fn validate(kind: &str, params: &[u8]) -> Option<Result<(), BadParams>> {
    known(kind, params).map(|k| k.checked)
}
