//! The workflow file `tandem flow submit FILE` reads, JSON or YAML (the
//! CLI parses the text; the types live here so that every front end reads
//! the same shape).
//!
//! ```yaml
//! on_failure: fail_fast        # or continue
//! nodes:
//!   - name: features
//!     kind: indicators
//!     params: { ... }
//!   - name: predict
//!     kind: predict_batch
//!     after: [features]
//!     params:
//!       model: price-mlp
//!       windows: { $ref: features, path: /windows }
//! ```

use serde::Deserialize;

use super::OnFailure;
use crate::task::{Class, Priority};

/// A whole workflow file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowSpec {
    #[serde(default)]
    pub on_failure: OnFailure,
    pub nodes: Vec<NodeSpec>,
}

/// One node of a workflow file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    pub name: String,
    pub kind: String,
    /// Any JSON value; maps `{"$ref": "<parent>", "path": "/..."}` take a
    /// parent's result (see [`super::refs`]).
    #[serde(default)]
    pub params: serde_json::Value,
    /// The parents: this node starts once all of them succeeded.
    #[serde(default)]
    pub after: Vec<String>,
    /// Default: the kind's class (an unknown kind needs one).
    #[serde(default)]
    pub class: Option<Class>,
    #[serde(default)]
    pub priority: Option<Priority>,
    #[serde(default)]
    pub max_attempts: Option<u32>,
    #[serde(default)]
    pub memory_bytes: Option<u64>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Not started this long after the workflow's submit: the node expires
    /// (a failure to `on_failure`).
    #[serde(default)]
    pub deadline_ms: Option<u64>,
    /// Runnable this long after its release (its last parent's commit; for
    /// a node without parents, the submit).
    #[serde(default)]
    pub delay_ms: Option<u64>,
}
