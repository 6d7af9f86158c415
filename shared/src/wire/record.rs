//! The task record (`tandem:{<class>}:task:<id>`, a hash), read leniently:
//! unknown fields are ignored and malformed values read as absent, so a
//! newer writer or a hand edit never makes a record unreadable. A
//! completion notice is read the same way ([`super::notice`]).

use std::collections::HashMap;

use super::field;
use super::reader::FieldReader;
use crate::task::{Class, DelayReason, ErrorCode, Priority, Status, TaskId};

/// Why a task did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskFailure {
    pub code: ErrorCode,
    pub message: String,
}

/// A task record, read from its hash or from a completion notice.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TaskRecord {
    pub id: Option<TaskId>,
    pub status: Option<Status>,
    pub kind: Option<String>,
    pub class: Option<Class>,
    pub priority: Option<Priority>,
    pub producer: Option<String>,
    pub reply_to: Option<String>,
    pub entry: Option<String>,
    pub worker: Option<String>,
    pub device: Option<String>,
    pub attempt: Option<u32>,
    pub max_attempts: Option<u32>,
    pub submitted_at_ms: Option<u64>,
    pub deadline_ms: Option<u64>,
    pub started_at_ms: Option<u64>,
    pub finished_at_ms: Option<u64>,
    pub run_us: Option<u64>,
    /// The MessagePack result, when present in what was read.
    pub result: Option<Vec<u8>>,
    /// The size of the result in the record, also when a notice left it out.
    pub result_bytes: Option<u64>,
    pub error: Option<TaskFailure>,
    pub cancel_requested_at_ms: Option<u64>,
    /// When a task waiting for a retry, or a delayed task, is due (absent
    /// while a paused kind holds it).
    pub retry_at_ms: Option<u64>,
    /// On a delayed task: why it waits.
    pub delay_reason: Option<DelayReason>,
    /// When a delayed task was submitted to run (ms since the epoch).
    pub run_at_ms: Option<u64>,
    /// The key whose rate limit the task counts against.
    pub rate_key: Option<String>,
    /// Every attempt so far, as a JSON array.
    pub history: Option<String>,
    /// The dead-letter entry of a task that ended there.
    pub dead_letter: Option<String>,
    /// On a shard of a split task: its parent, its index and the count.
    pub parent: Option<TaskId>,
    pub shard: Option<u32>,
    /// On a split task: how many shards it has, how many committed, and
    /// their task ids in shard order.
    pub shards: Option<u32>,
    pub shards_done: Option<u32>,
    pub shard_ids: Vec<TaskId>,
    /// On a split task that succeeded, the whole task rather than its merge
    /// step: when its first shard started, the handler time of all its
    /// shards, microseconds, and the devices they ran on.
    pub shards_started_at_ms: Option<u64>,
    pub shards_run_us: Option<u64>,
    pub shards_devices: Vec<String>,
    /// The task's MessagePack parameters, as submitted (records written by
    /// the submit script; absent from notices).
    pub params: Option<Vec<u8>>,
    /// On a task a recurring schedule created: the schedule's name and the
    /// tick (ms) it was created for (revision 2.2).
    pub schedule: Option<String>,
    pub scheduled_for_ms: Option<u64>,
    /// The run-time limit of each attempt, ms.
    pub timeout_ms: Option<u64>,
    /// The last progress report of a running (or finished) task.
    pub progress: Option<TaskProgress>,
}

/// A task's progress report, as its record keeps the last one.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TaskProgress {
    /// Done, from 0 to 1.
    pub fraction: f64,
    pub message: String,
    /// When it was written (Redis clock); absent on events, which carry
    /// their own time.
    pub at_ms: Option<u64>,
}

impl TaskRecord {
    /// Reads whatever known fields are present; unknown fields are ignored
    /// and malformed values read as absent, so a newer writer or a hand
    /// edit never makes a record unreadable. A field given twice reads as
    /// its last value.
    pub fn from_fields<'a>(fields: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> Self {
        let fields = FieldReader::last_wins(fields);
        let text = |name| fields.lenient_text(name).map(str::to_owned);
        let error = fields
            .lenient_text(field::ERROR_CODE)
            .and_then(|code| ErrorCode::parse(code).ok())
            .map(|code| TaskFailure {
                code,
                message: text(field::ERROR_MESSAGE).unwrap_or_default(),
            });
        let result = fields.raw(field::RESULT).map(<[u8]>::to_vec);
        let result_bytes = fields
            .lenient(field::RESULT_BYTES)
            .or_else(|| result.as_ref().map(|r| r.len() as u64));
        TaskRecord {
            id: fields.lenient(field::ID),
            status: fields.lenient(field::STATUS),
            kind: text(field::KIND),
            class: fields.lenient(field::CLASS),
            priority: fields.lenient(field::PRIORITY),
            producer: text(field::PRODUCER),
            schedule: text(field::SCHEDULE),
            scheduled_for_ms: fields.lenient(field::SCHEDULED_FOR_MS),
            reply_to: text(field::REPLY_TO),
            entry: text(field::ENTRY),
            worker: text(field::WORKER),
            device: text(field::DEVICE),
            attempt: fields.lenient(field::ATTEMPT),
            max_attempts: fields.lenient(field::MAX_ATTEMPTS),
            submitted_at_ms: fields.lenient(field::SUBMITTED_AT_MS),
            deadline_ms: fields
                .lenient(field::DEADLINE_MS)
                .filter(|&ms: &u64| ms > 0),
            started_at_ms: fields.lenient(field::STARTED_AT_MS),
            finished_at_ms: fields.lenient(field::FINISHED_AT_MS),
            run_us: fields.lenient(field::RUN_US),
            result,
            result_bytes,
            error,
            cancel_requested_at_ms: fields.lenient(field::CANCEL_REQUESTED_AT_MS),
            retry_at_ms: fields.lenient(field::RETRY_AT_MS),
            delay_reason: fields.lenient(field::DELAY_REASON),
            run_at_ms: fields.lenient(field::RUN_AT_MS),
            rate_key: text(field::RATE_KEY),
            history: text(field::HISTORY),
            dead_letter: text(field::DEAD_LETTER),
            parent: fields.lenient(field::PARENT),
            shard: fields.lenient(field::SHARD),
            shards: fields.lenient(field::SHARDS),
            shards_done: fields.lenient(field::SHARDS_DONE),
            shard_ids: fields
                .lenient_text(field::SHARD_IDS)
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|id| id.parse().ok())
                .collect(),
            shards_started_at_ms: fields.lenient(field::SHARDS_STARTED_AT_MS),
            shards_run_us: fields.lenient(field::SHARDS_RUN_US),
            shards_devices: fields
                .lenient_list(field::SHARDS_DEVICES, ',')
                .into_iter()
                .map(str::to_owned)
                .collect(),
            params: fields.raw(field::PARAMS).map(<[u8]>::to_vec),
            timeout_ms: fields.lenient(field::TIMEOUT_MS).filter(|&ms: &u64| ms > 0),
            progress: fields
                .lenient::<f64>(field::PROGRESS)
                .filter(|p| (0.0..=1.0).contains(p))
                .map(|fraction| TaskProgress {
                    fraction,
                    message: text(field::PROGRESS_MSG).unwrap_or_default(),
                    at_ms: fields.lenient(field::PROGRESS_AT_MS),
                }),
        }
    }

    /// Reads a hash as `HGETALL` returns it.
    pub fn from_map(map: &HashMap<Vec<u8>, Vec<u8>>) -> Self {
        Self::from_fields(map.iter().map(|(k, v)| (k.as_slice(), v.as_slice())))
    }

    /// True when the record says the task finished.
    pub fn is_terminal(&self) -> bool {
        self.status.is_some_and(Status::is_terminal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_leniently() {
        let record = TaskRecord::from_fields([
            (field::STATUS.as_bytes(), Status::Failed.as_str().as_bytes()),
            (field::ATTEMPT.as_bytes(), b"2"),
            (field::ERROR_CODE.as_bytes(), b"BAD_PARAMS"),
            (field::ERROR_MESSAGE.as_bytes(), b"ms too large"),
            (field::RUN_US.as_bytes(), b"not a number"),
            (b"some_future_field", b"x"),
        ]);
        assert_eq!(record.status, Some(Status::Failed));
        assert_eq!(record.attempt, Some(2));
        assert_eq!(record.run_us, None);
        assert_eq!(
            record.error,
            Some(TaskFailure {
                code: ErrorCode::BAD_PARAMS,
                message: "ms too large".into()
            })
        );
        assert!(record.is_terminal());
    }

    #[test]
    fn a_repeated_field_reads_as_its_last_value() {
        let record = TaskRecord::from_fields([
            (field::ATTEMPT.as_bytes(), &b"1"[..]),
            (field::ATTEMPT.as_bytes(), b"2"),
            (field::SHARDS_DEVICES.as_bytes(), b"GPU-a,,GPU-b"),
            (field::DEADLINE_MS.as_bytes(), b"0"),
        ]);
        assert_eq!(record.attempt, Some(2));
        assert_eq!(record.shards_devices, ["GPU-a", "GPU-b"]);
        assert_eq!(record.deadline_ms, None);
    }
}
