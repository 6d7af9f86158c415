//! Task kinds as producers and workers agree on them.
//!
//! A [`KindSpec`] names a kind, its class, its parameter and output types,
//! the rules its parameters must follow and its memory estimate. Producers
//! use it to build and check tasks before sending them; workers pair it with
//! a handler that runs it. The built-in kinds live in [`builtin`].

pub mod builtin;
pub mod indicators;
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
}
