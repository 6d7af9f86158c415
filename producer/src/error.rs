//! The producer's typed errors.

use std::time::Duration;

use tandem_shared::config::ConfigError;
use tandem_shared::msgpack::CodecError;
use tandem_shared::recurring::ScheduleError;
use tandem_shared::store::StoreError;
use tandem_shared::{Class, ErrorCode, Status, TaskId};

#[derive(Debug, thiserror::Error)]
pub enum ProducerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot reach Redis at {url}: {source}")]
    Connect { url: String, source: StoreError },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("bad parameters for kind {kind}: {message}")]
    BadParams { kind: String, message: String },
    #[error("parameters are {bytes} bytes; the limit is {limit} (max_payload_bytes)")]
    PayloadTooLarge { bytes: usize, limit: usize },
    #[error("kind {0:?} is not built in, so its class must be given (Task::class)")]
    MissingClass(String),
    #[error("idempotency key {0:?} must be 1-200 characters without whitespace")]
    BadIdempotencyKey(String),
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("task {0} not found (never submitted, or its record expired)")]
    NotFound(TaskId),
    #[error("task {id} did not finish within {waited:?}")]
    Timeout { id: TaskId, waited: Duration },
    /// A schedule's setting is invalid; the message names it.
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    #[error("no schedule {0:?}")]
    ScheduleNotFound(String),
    #[error(
        "schedule {name:?} exists in class {class}; remove it first (names are unique across classes)"
    )]
    ScheduleNameTaken { name: String, class: Class },
    #[error(transparent)]
    Blob(#[from] tandem_shared::blob::BlobError),
    #[error("parameters are {bytes} bytes; the largest blob is {limit} bytes (max_blob_bytes)")]
    BlobTooLarge { bytes: usize, limit: u64 },
    /// A workflow refused at submit; the message names the node.
    #[error(transparent)]
    Workflow(#[from] tandem_shared::workflow::WorkflowError),
    #[error("workflow {0} not found (never submitted, or its record expired)")]
    WorkflowNotFound(TaskId),
    #[error("task {id} ended {status}: {code}: {message}")]
    TaskFailed {
        id: TaskId,
        status: Status,
        code: ErrorCode,
        message: String,
    },
}
