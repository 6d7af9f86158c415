//! [`TaskOutcome`]: how a task ended, as a waiting producer receives it.

use serde::de::DeserializeOwned;
use tandem_shared::wire::{TaskFailure, TaskRecord};
use tandem_shared::{ErrorCode, Status, TaskId, msgpack};

use crate::error::ProducerError;

/// A finished task: its final status and record.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskOutcome {
    pub id: TaskId,
    pub status: Status,
    /// The final record: kind, class, priority, attempt of max attempts,
    /// worker, device, timings, a split task's shards and whole-task
    /// figures, result or error. When the outcome came from the completion
    /// notice, the record's bulky or internal fields are absent (`params`,
    /// `history`, `shard_ids`, `entry`, `reply_to`); read them with
    /// [`Producer::record`](crate::Producer::record).
    pub record: TaskRecord,
}

impl TaskOutcome {
    pub(crate) fn from_record(id: TaskId, record: TaskRecord) -> Option<Self> {
        let status = record.status.filter(|s| s.is_terminal())?;
        Some(Self { id, status, record })
    }

    pub fn succeeded(&self) -> bool {
        self.status == Status::Succeeded
    }

    /// Why it did not succeed, when it did not.
    pub fn failure(&self) -> Option<&TaskFailure> {
        self.record.error.as_ref()
    }

    /// The raw MessagePack result.
    pub fn result_bytes(&self) -> Option<&[u8]> {
        self.record.result.as_deref()
    }

    /// The decoded result, or [`ProducerError::TaskFailed`] when the task
    /// failed, was cancelled or expired.
    pub fn result<T: DeserializeOwned>(&self) -> Result<T, ProducerError> {
        if !self.succeeded() {
            let (code, message) = match self.failure() {
                Some(f) => (f.code.clone(), f.message.clone()),
                None => (ErrorCode::HANDLER_ERROR, String::new()),
            };
            return Err(ProducerError::TaskFailed {
                id: self.id,
                status: self.status,
                code,
                message,
            });
        }
        Ok(msgpack::decode(self.result_bytes().unwrap_or_default())?)
    }

    /// Milliseconds from submission to finish, by the Redis clock.
    pub fn total_ms(&self) -> Option<u64> {
        Some(
            self.record
                .finished_at_ms?
                .saturating_sub(self.record.submitted_at_ms?),
        )
    }
}
