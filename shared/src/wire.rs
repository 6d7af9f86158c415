//! Wire format v2: the fields of a task entry, of a task record and of a
//! completion notice. docs/wire-format.md is the prose version of this module.
//!
//! Only this module (and the Lua scripts in `shared/lua/`) knows the field
//! names. Everything but the `params` and `result` blobs is plain UTF-8 text
//! so `redis-cli` shows it as is; the blobs are MessagePack.

use std::collections::HashMap;

use crate::device::{Health, Role};
use crate::task::{Class, ErrorCode, Priority, Status, TaskId};

/// The wire version this build writes and the only one it reads. Version 2
/// moved reply streams under their class's hash tag
/// (`tandem:{<class>}:reply:<producer id>`): a version 1 producer's
/// `reply_to` would never be notified, so its tasks are refused instead.
pub const WIRE_VERSION: u32 = 2;

/// Field names. Entry fields are written by producers into a task stream;
/// record fields live in the task record hash; a completion notice repeats
/// the record.
pub mod field {
    pub const VERSION: &str = "version";
    pub const ID: &str = "id";
    pub const KIND: &str = "kind";
    pub const CLASS: &str = "class";
    pub const PRIORITY: &str = "priority";
    pub const ATTEMPT: &str = "attempt";
    pub const MAX_ATTEMPTS: &str = "max_attempts";
    pub const MEMORY_BYTES: &str = "memory_bytes";
    pub const DEADLINE_MS: &str = "deadline_ms";
    pub const PRODUCER: &str = "producer";
    pub const SUBMITTED_AT_MS: &str = "submitted_at_ms";
    pub const REPLY_TO: &str = "reply_to";
    pub const PARAMS: &str = "params";
    pub const SIGNATURE: &str = "signature";
    /// Written by workers, not producers: how often the task was handed
    /// back because the device running it failed.
    pub const INTERRUPTED: &str = "interrupted";
    /// Written by workers when they hand a task back: the devices (comma
    /// separated) whose workers leave it for another device.
    pub const AVOID: &str = "avoid";
    /// Written by workers on the shards of a split task: the parent task's
    /// id, this shard's index (from 0) and the number of shards.
    pub const PARENT: &str = "parent";
    pub const SHARD: &str = "shard";
    pub const SHARDS: &str = "shards";
    /// Written by the last shard's commit on the parent's merge entry: `1`.
    pub const MERGE: &str = "merge";

    pub const STATUS: &str = "status";
    pub const ENTRY: &str = "entry";
    pub const IDEMPOTENCY_KEY: &str = "idempotency_key";
    pub const WORKER: &str = "worker";
    pub const DEVICE: &str = "device";
    pub const STARTED_AT_MS: &str = "started_at_ms";
    pub const FINISHED_AT_MS: &str = "finished_at_ms";
    pub const RUN_US: &str = "run_us";
    pub const RESULT: &str = "result";
    pub const RESULT_BYTES: &str = "result_bytes";
    pub const ERROR_CODE: &str = "error_code";
    pub const ERROR_MESSAGE: &str = "error_message";
    pub const CANCEL_REQUESTED_AT_MS: &str = "cancel_requested_at_ms";
    pub const RETRY_AT_MS: &str = "retry_at_ms";
    pub const HISTORY: &str = "history";
    pub const DEAD_LETTER: &str = "dead_letter";
    /// On a split parent's record: shards committed so far, and the shard
    /// task ids (space-separated, in shard order).
    pub const SHARDS_DONE: &str = "shards_done";
    pub const SHARD_IDS: &str = "shard_ids";
}

/// A task as a producer hands it over, before Redis adds its times.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTask {
    pub id: TaskId,
    pub kind: String,
    pub class: Class,
    pub priority: Priority,
    pub max_attempts: u32,
    pub memory_bytes: u64,
    /// Relative to the moment Redis accepts the task; the submit script
    /// turns it into an absolute `deadline_ms` on the server's clock.
    pub deadline_in_ms: Option<u64>,
    pub idempotency_key: Option<String>,
    /// MessagePack.
    pub params: Vec<u8>,
    /// The HMAC signature, when the producer signs (see [`crate::signature`]).
    pub signature: Option<String>,
}

impl NewTask {
    /// What a signature of this task covers, sent with `reply_to`.
    pub fn signed<'a>(&'a self, reply_to: Option<&'a str>) -> crate::signature::Signed<'a> {
        crate::signature::Signed {
            id: &self.id,
            kind: &self.kind,
            class: self.class,
            priority: self.priority,
            max_attempts: self.max_attempts,
            reply_to: reply_to.unwrap_or(""),
            params: &self.params,
        }
    }

    /// The plain-text metadata pairs of the entry, which the submit script
    /// also copies into the task record. `params`, `submitted_at_ms` and
    /// `deadline_ms` are added by the script.
    pub fn metadata(&self, producer: &str, reply_to: Option<&str>) -> Vec<(&'static str, String)> {
        let mut pairs = vec![
            (field::VERSION, WIRE_VERSION.to_string()),
            (field::ID, self.id.to_string()),
            (field::KIND, self.kind.clone()),
            (field::CLASS, self.class.to_string()),
            (field::PRIORITY, self.priority.to_string()),
            (field::ATTEMPT, "1".to_owned()),
            (field::MAX_ATTEMPTS, self.max_attempts.to_string()),
            (field::MEMORY_BYTES, self.memory_bytes.to_string()),
            (field::PRODUCER, producer.to_owned()),
        ];
        if let Some(reply_to) = reply_to {
            pairs.push((field::REPLY_TO, reply_to.to_owned()));
        }
        if let Some(signature) = &self.signature {
            pairs.push((field::SIGNATURE, signature.clone()));
        }
        pairs
    }
}

/// A task entry as a worker reads it from a stream.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskEntry {
    pub id: TaskId,
    pub kind: String,
    pub class: Class,
    pub priority: Priority,
    pub attempt: u32,
    pub max_attempts: u32,
    pub memory_bytes: u64,
    pub deadline_ms: Option<u64>,
    pub producer: String,
    pub submitted_at_ms: Option<u64>,
    pub reply_to: Option<String>,
    /// MessagePack.
    pub params: Vec<u8>,
    pub signature: Option<String>,
    /// Set on the shards of a split task and on its merge entry.
    pub split: Option<SplitRole>,
    /// Devices that handed this task back (out of memory there).
    pub avoid: Vec<String>,
}

/// What part of a split task an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitRole {
    /// Shard `index` of `count` of task `parent`; its params are the
    /// parent's params and the shard, as the kind's splitter wrote them.
    Shard {
        parent: TaskId,
        index: u32,
        count: u32,
    },
    /// The parent itself, back once all `count` shards committed: merge
    /// the shards' partial results into its result.
    Merge { count: u32 },
}

impl TaskEntry {
    /// What this entry's signature must cover.
    pub fn signed(&self) -> crate::signature::Signed<'_> {
        crate::signature::Signed {
            id: &self.id,
            kind: &self.kind,
            class: self.class,
            priority: self.priority,
            max_attempts: self.max_attempts,
            reply_to: self.reply_to.as_deref().unwrap_or(""),
            params: &self.params,
        }
    }
}

/// Why an entry could not be read. When the entry named a readable task id
/// it is kept, so the failure can still be written to that task's record.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct EntryError {
    pub code: ErrorCode,
    pub message: String,
    pub id: Option<TaskId>,
    pub reply_to: Option<String>,
}

/// An entry's fields as Redis returns them.
pub type Fields = Vec<(Vec<u8>, Vec<u8>)>;

fn lookup<'a>(fields: &'a Fields, name: &str) -> Option<&'a [u8]> {
    fields
        .iter()
        .find(|(key, _)| key == name.as_bytes())
        .map(|(_, value)| value.as_slice())
}

impl TaskEntry {
    /// Decodes an entry read from the stream of `class` and `priority`. The
    /// stream is authoritative for both; a contradicting field is an error.
    pub fn decode(fields: &Fields, class: Class, priority: Priority) -> Result<Self, EntryError> {
        let id = lookup(fields, field::ID)
            .and_then(|raw| std::str::from_utf8(raw).ok())
            .and_then(|text| text.parse::<TaskId>().ok());
        let reply_to = lookup(fields, field::REPLY_TO)
            .and_then(|raw| std::str::from_utf8(raw).ok())
            .map(str::to_owned);
        let fail = |code: ErrorCode, message: String| EntryError {
            code,
            message,
            id,
            reply_to: reply_to.clone(),
        };
        let text = |name: &'static str| -> Result<Option<&str>, EntryError> {
            lookup(fields, name)
                .map(|raw| {
                    std::str::from_utf8(raw).map_err(|_| {
                        fail(
                            ErrorCode::BAD_PAYLOAD,
                            format!("field {name} is not UTF-8 text"),
                        )
                    })
                })
                .transpose()
        };
        let required = |name: &'static str| -> Result<&str, EntryError> {
            text(name)?.ok_or_else(|| {
                fail(
                    ErrorCode::BAD_PAYLOAD,
                    format!("required field {name} is missing"),
                )
            })
        };
        fn number<T: std::str::FromStr>(
            value: Option<&str>,
            name: &'static str,
            fail: &dyn Fn(ErrorCode, String) -> EntryError,
        ) -> Result<Option<T>, EntryError> {
            value
                .map(|v| {
                    v.parse::<T>().map_err(|_| {
                        fail(
                            ErrorCode::BAD_PAYLOAD,
                            format!("field {name} is not a number: {v:?}"),
                        )
                    })
                })
                .transpose()
        }

        let version = required(field::VERSION)?;
        if version != WIRE_VERSION.to_string() {
            return Err(fail(
                ErrorCode::BAD_WIRE_VERSION,
                format!(
                    "wire version {version:?} is not supported; this worker reads version {WIRE_VERSION}"
                ),
            ));
        }
        let id_text = required(field::ID)?;
        let Some(id) = id else {
            return Err(fail(
                ErrorCode::BAD_PAYLOAD,
                format!("field id is not a UUID: {id_text:?}"),
            ));
        };
        let kind = required(field::KIND)?;
        if kind.is_empty() {
            return Err(fail(ErrorCode::BAD_PAYLOAD, "field kind is empty".into()));
        }
        if let Some(named) = text(field::CLASS)?
            && named != class.as_str()
        {
            return Err(fail(
                ErrorCode::BAD_PAYLOAD,
                format!("field class is {named:?} but the entry is in the {class} stream"),
            ));
        }
        if let Some(named) = text(field::PRIORITY)?
            && named != priority.as_str()
        {
            return Err(fail(
                ErrorCode::BAD_PAYLOAD,
                format!("field priority is {named:?} but the entry is in the {priority} stream"),
            ));
        }
        let attempt = number::<u32>(text(field::ATTEMPT)?, field::ATTEMPT, &fail)?.unwrap_or(1);
        let max_attempts =
            number::<u32>(text(field::MAX_ATTEMPTS)?, field::MAX_ATTEMPTS, &fail)?.unwrap_or(3);
        let memory_bytes =
            number::<u64>(text(field::MEMORY_BYTES)?, field::MEMORY_BYTES, &fail)?.unwrap_or(0);
        let deadline_ms = number::<u64>(text(field::DEADLINE_MS)?, field::DEADLINE_MS, &fail)?
            .filter(|&ms| ms > 0);
        let submitted_at_ms =
            number::<u64>(text(field::SUBMITTED_AT_MS)?, field::SUBMITTED_AT_MS, &fail)?;
        let producer = text(field::PRODUCER)?.unwrap_or_default().to_owned();
        let signature = text(field::SIGNATURE)?.map(str::to_owned);
        let params = lookup(fields, field::PARAMS).unwrap_or_default().to_vec();
        let count = number::<u32>(text(field::SHARDS)?, field::SHARDS, &fail)?;
        let split = match (text(field::PARENT)?, text(field::MERGE)?) {
            (Some(parent), _) => {
                let parent = parent.parse::<TaskId>().map_err(|_| {
                    fail(
                        ErrorCode::BAD_PAYLOAD,
                        format!("field parent is not a UUID: {parent:?}"),
                    )
                })?;
                let index = number::<u32>(text(field::SHARD)?, field::SHARD, &fail)?;
                match (index, count) {
                    (Some(index), Some(count)) if index < count => Some(SplitRole::Shard {
                        parent,
                        index,
                        count,
                    }),
                    _ => {
                        return Err(fail(
                            ErrorCode::BAD_PAYLOAD,
                            "a shard needs fields shard and shards, with shard < shards".into(),
                        ));
                    }
                }
            }
            (None, Some("1")) => match count {
                Some(count) if count > 0 => Some(SplitRole::Merge { count }),
                _ => {
                    return Err(fail(
                        ErrorCode::BAD_PAYLOAD,
                        "a merge entry needs field shards, at least 1".into(),
                    ));
                }
            },
            (None, Some(other)) => {
                return Err(fail(
                    ErrorCode::BAD_PAYLOAD,
                    format!("field merge is {other:?}; workers alone write it, as 1"),
                ));
            }
            // Workers write `shard` only on shards, `shards` only on shards
            // and merge entries: on another entry they are malformed.
            (None, None) => match (text(field::SHARD)?, count) {
                (None, None) => None,
                (Some(_), _) => {
                    return Err(fail(
                        ErrorCode::BAD_PAYLOAD,
                        "field shard without field parent; workers alone write them, on the shards of a split task".into(),
                    ));
                }
                (None, Some(_)) => {
                    return Err(fail(
                        ErrorCode::BAD_PAYLOAD,
                        "field shards without field parent or merge; workers alone write them, on the parts of a split task".into(),
                    ));
                }
            },
        };

        let avoid = text(field::AVOID)?
            .map(|v| {
                v.split(',')
                    .filter(|d| !d.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();

        Ok(TaskEntry {
            id,
            kind: kind.to_owned(),
            class,
            priority,
            attempt,
            max_attempts,
            memory_bytes,
            deadline_ms,
            producer,
            submitted_at_ms,
            reply_to,
            params,
            signature,
            split,
            avoid,
        })
    }

    /// The entry's fields as [`TaskEntry::decode`] reads them back (times
    /// and numbers as text, `params` as given).
    pub fn fields(&self) -> Vec<(&'static str, Vec<u8>)> {
        let text = |value: String| value.into_bytes();
        let mut pairs = vec![
            (field::VERSION, text(WIRE_VERSION.to_string())),
            (field::ID, text(self.id.to_string())),
            (field::KIND, text(self.kind.clone())),
            (field::CLASS, text(self.class.to_string())),
            (field::PRIORITY, text(self.priority.to_string())),
            (field::ATTEMPT, text(self.attempt.to_string())),
            (field::MAX_ATTEMPTS, text(self.max_attempts.to_string())),
            (field::MEMORY_BYTES, text(self.memory_bytes.to_string())),
            (field::PRODUCER, text(self.producer.clone())),
        ];
        let optional = [
            (field::DEADLINE_MS, self.deadline_ms.map(|v| v.to_string())),
            (
                field::SUBMITTED_AT_MS,
                self.submitted_at_ms.map(|v| v.to_string()),
            ),
            (field::REPLY_TO, self.reply_to.clone()),
            (field::SIGNATURE, self.signature.clone()),
            (
                field::AVOID,
                (!self.avoid.is_empty()).then(|| self.avoid.join(",")),
            ),
        ];
        for (name, value) in optional {
            if let Some(value) = value {
                pairs.push((name, text(value)));
            }
        }
        match self.split {
            Some(SplitRole::Shard {
                parent,
                index,
                count,
            }) => {
                pairs.push((field::PARENT, text(parent.to_string())));
                pairs.push((field::SHARD, text(index.to_string())));
                pairs.push((field::SHARDS, text(count.to_string())));
            }
            Some(SplitRole::Merge { count }) => {
                pairs.push((field::MERGE, b"1".to_vec()));
                pairs.push((field::SHARDS, text(count.to_string())));
            }
            None => {}
        }
        pairs.push((field::PARAMS, self.params.clone()));
        pairs
    }

    /// Shard `index` of `count` of this task: a task of its own (new id,
    /// first attempt, no deadline: the parent started), with the same kind,
    /// class, priority, attempts and producer, no reply stream (the
    /// parent's producer hears from the parent), and the shard's `params`.
    /// Unsigned: the splitting worker signs it when workers require it.
    pub fn shard(&self, id: TaskId, index: u32, count: u32, params: Vec<u8>) -> TaskEntry {
        TaskEntry {
            id,
            attempt: 1,
            deadline_ms: None,
            reply_to: None,
            params,
            signature: None,
            split: Some(SplitRole::Shard {
                parent: self.id,
                index,
                count,
            }),
            avoid: Vec::new(),
            ..self.clone()
        }
    }
}

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
    /// When a task waiting for a retry is due.
    pub retry_at_ms: Option<u64>,
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
}

impl TaskRecord {
    /// Reads whatever known fields are present; unknown fields are ignored
    /// and malformed values read as absent, so a newer writer or a hand
    /// edit never makes a record unreadable.
    pub fn from_fields<'a>(fields: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> Self {
        let mut record = TaskRecord::default();
        let mut error_code = None;
        let mut error_message = None;
        for (name, value) in fields {
            let text = std::str::from_utf8(value).ok();
            fn parse<T: std::str::FromStr>(text: Option<&str>) -> Option<T> {
                text.and_then(|t| t.parse().ok())
            }
            match name {
                b"id" => record.id = parse(text),
                b"status" => record.status = parse(text),
                b"kind" => record.kind = text.map(str::to_owned),
                b"class" => record.class = parse(text),
                b"priority" => record.priority = parse(text),
                b"producer" => record.producer = text.map(str::to_owned),
                b"reply_to" => record.reply_to = text.map(str::to_owned),
                b"entry" => record.entry = text.map(str::to_owned),
                b"worker" => record.worker = text.map(str::to_owned),
                b"device" => record.device = text.map(str::to_owned),
                b"attempt" => record.attempt = parse(text),
                b"max_attempts" => record.max_attempts = parse(text),
                b"submitted_at_ms" => record.submitted_at_ms = parse(text),
                b"deadline_ms" => record.deadline_ms = parse(text).filter(|&ms: &u64| ms > 0),
                b"started_at_ms" => record.started_at_ms = parse(text),
                b"finished_at_ms" => record.finished_at_ms = parse(text),
                b"run_us" => record.run_us = parse(text),
                b"result" => record.result = Some(value.to_vec()),
                b"result_bytes" => record.result_bytes = parse(text),
                b"error_code" => error_code = text.and_then(|t| ErrorCode::parse(t).ok()),
                b"error_message" => error_message = text.map(str::to_owned),
                b"cancel_requested_at_ms" => record.cancel_requested_at_ms = parse(text),
                b"retry_at_ms" => record.retry_at_ms = parse(text),
                b"history" => record.history = text.map(str::to_owned),
                b"dead_letter" => record.dead_letter = text.map(str::to_owned),
                b"parent" => record.parent = parse(text),
                b"shard" => record.shard = parse(text),
                b"shards" => record.shards = parse(text),
                b"shards_done" => record.shards_done = parse(text),
                b"shard_ids" => {
                    record.shard_ids = text
                        .unwrap_or_default()
                        .split_whitespace()
                        .filter_map(|id| id.parse().ok())
                        .collect();
                }
                b"shards_started_at_ms" => record.shards_started_at_ms = parse(text),
                b"shards_run_us" => record.shards_run_us = parse(text),
                b"shards_devices" => {
                    record.shards_devices = text
                        .unwrap_or_default()
                        .split(',')
                        .filter(|d| !d.is_empty())
                        .map(str::to_owned)
                        .collect();
                }
                b"params" => record.params = Some(value.to_vec()),
                _ => {}
            }
        }
        if let Some(code) = error_code {
            record.error = Some(TaskFailure {
                code,
                message: error_message.unwrap_or_default(),
            });
        }
        if record.result_bytes.is_none() {
            record.result_bytes = record.result.as_ref().map(|r| r.len() as u64);
        }
        record
    }

    /// Reads a hash as `HGETALL` returns it.
    pub fn from_map(map: &HashMap<Vec<u8>, Vec<u8>>) -> Self {
        Self::from_fields(map.iter().map(|(k, v)| (k.as_slice(), v.as_slice())))
    }

    /// True when the record says the task finished.
    pub fn is_terminal(&self) -> bool {
        self.status.is_some_and(Status::is_terminal)
    }

    /// True when a notice left the result out because it was large.
    pub fn result_left_out(&self) -> bool {
        self.result.is_none() && self.result_bytes.is_some_and(|n| n > 0)
    }
}

/// What a worker writes into a task record when it finishes with a task.
#[derive(Debug, Clone, PartialEq)]
pub struct Finish {
    pub status: Status,
    pub worker: String,
    pub device: String,
    pub run_us: Option<u64>,
    pub outcome: FinishOutcome,
}

#[derive(Debug, Clone, PartialEq)]
pub enum FinishOutcome {
    /// MessagePack result.
    Result(Vec<u8>),
    Error(TaskFailure),
}

impl Finish {
    /// The record pairs the complete script writes, besides `status` and
    /// `finished_at_ms`, which it sets itself.
    pub fn record_pairs(&self) -> Vec<(&'static str, Vec<u8>)> {
        let mut pairs = vec![
            (field::WORKER, self.worker.clone().into_bytes()),
            (field::DEVICE, self.device.clone().into_bytes()),
        ];
        if let Some(run_us) = self.run_us {
            pairs.push((field::RUN_US, run_us.to_string().into_bytes()));
        }
        match &self.outcome {
            FinishOutcome::Result(bytes) => {
                pairs.push((field::RESULT_BYTES, bytes.len().to_string().into_bytes()));
                pairs.push((field::RESULT, bytes.clone()));
            }
            FinishOutcome::Error(failure) => {
                pairs.push((field::ERROR_CODE, failure.code.to_string().into_bytes()));
                pairs.push((field::ERROR_MESSAGE, failure.message.clone().into_bytes()));
            }
        }
        pairs
    }
}

/// A worker's registry record, refreshed with every heartbeat and expiring
/// when the heartbeats stop.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WorkerInfo {
    pub id: String,
    pub host: String,
    pub pid: u32,
    /// Which process instance this is, for peers on the same host:
    /// `<boot id>/<pid namespace>/<start time in clock ticks>` (Linux; empty
    /// elsewhere). A peer in the same boot and pid namespace whose `pid` no
    /// longer runs with that start time knows the worker is gone.
    pub process: String,
    /// Live workers (running, healthy, itself included) in its last read of
    /// the registry: what its routing is computed from.
    pub live_seen: usize,
    /// `cpu`, or the UUID of the GPU the worker is bound to (`GPU-...`;
    /// `SIM-...` for a simulated one).
    pub device: String,
    /// What the worker is for: `heavy`, `light`, `both` or `cpu`.
    pub role: Role,
    /// Whether its device takes tasks: `probing`, `healthy` or `failed`.
    pub health: Health,
    /// The GPU's name (`(simulated)` appended for a simulated one); empty
    /// for a CPU worker.
    pub device_name: String,
    /// The GPU's index among the host's visible GPUs.
    pub device_index: Option<u32>,
    pub pci_bus_id: String,
    pub simulated: bool,
    /// The capability score roles were assigned by.
    pub score: f64,
    /// `9.0`; `sim` for a simulated GPU.
    pub compute_capability: String,
    /// The GPU's memory, bytes.
    pub memory_total: u64,
    /// The part of it tasks may use.
    pub memory_budget: u64,
    /// The memory the running tasks declared.
    pub memory_reserved: u64,
    /// Models resident on the device (booked in its memory ledger), least
    /// recently used first, and what they hold together.
    pub models: Vec<String>,
    pub memory_models: u64,
    /// Model cache hits and misses since the worker started.
    pub model_hits: u64,
    pub model_misses: u64,
    pub classes: Vec<Class>,
    pub concurrency: usize,
    /// `running` or `draining` (stopping: claims nothing new).
    pub state: String,
    pub started_at_ms: u64,
    pub heartbeat_at_ms: u64,
    /// Tasks running now.
    pub active: usize,
    /// Tasks committed since start, by outcome.
    pub succeeded: u64,
    pub failed: u64,
    /// The Tandem version of the worker binary.
    pub version: String,
    /// Device and task metrics, sampled every `metrics_interval_ms`.
    pub metrics: WorkerMetrics,
}

/// Upper bounds (ms) of the task latency histogram's buckets; a last
/// bucket counts the rest.
pub const LATENCY_BUCKETS_MS: [u64; 10] = [1, 5, 10, 50, 100, 500, 1_000, 5_000, 10_000, 60_000];

/// What a worker measures, in its registry record: its device (from NVML on
/// a real GPU, simulated values on a simulated one; zero on a CPU worker)
/// and its tasks.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WorkerMetrics {
    /// When these were sampled (worker clock, ms).
    pub at_ms: u64,
    /// GPU busy share over the last sample period, 0 to 1.
    pub gpu_utilization: f64,
    /// Device memory in use (all processes), bytes.
    pub gpu_memory_used: u64,
    pub gpu_temperature_c: f64,
    pub gpu_power_w: f64,
    pub gpu_sm_clock_mhz: u32,
    /// Tasks finished per second over the last sample period.
    pub tasks_per_s: f64,
    /// Finished tasks per latency bucket (claim to commit), bounds
    /// [`LATENCY_BUCKETS_MS`] and one more for the rest.
    pub latency_buckets: Vec<u64>,
    /// Sum of those latencies, ms.
    pub latency_sum_ms: f64,
    /// Finished tasks by `kind/class/status`.
    pub completed: std::collections::BTreeMap<String, u64>,
    /// Failed attempts by error code.
    pub errors: std::collections::BTreeMap<String, u64>,
    /// Lease extensions sent, and entries taken over from dead or stalled
    /// workers.
    pub lease_extensions: u64,
    pub reclaims: u64,
}

impl WorkerMetrics {
    fn counts_text(counts: &std::collections::BTreeMap<String, u64>) -> String {
        counts
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn counts(text: &str) -> std::collections::BTreeMap<String, u64> {
        text.split(',')
            .filter_map(|pair| {
                let (k, v) = pair.rsplit_once('=')?;
                Some((k.to_owned(), v.parse().ok()?))
            })
            .collect()
    }
}

/// Registry record field names.
pub mod worker_field {
    pub const ID: &str = "id";
    pub const HOST: &str = "host";
    pub const PID: &str = "pid";
    pub const PROCESS: &str = "process";
    pub const LIVE_SEEN: &str = "live_seen";
    pub const DEVICE: &str = "device";
    pub const ROLE: &str = "role";
    pub const HEALTH: &str = "health";
    pub const DEVICE_NAME: &str = "device_name";
    pub const DEVICE_INDEX: &str = "device_index";
    pub const PCI_BUS_ID: &str = "pci_bus_id";
    pub const SIMULATED: &str = "simulated";
    pub const SCORE: &str = "score";
    pub const COMPUTE_CAPABILITY: &str = "compute_capability";
    pub const MEMORY_TOTAL: &str = "memory_total";
    pub const MEMORY_BUDGET: &str = "memory_budget";
    pub const MEMORY_RESERVED: &str = "memory_reserved";
    pub const MODELS: &str = "models";
    pub const MEMORY_MODELS: &str = "memory_models";
    pub const MODEL_HITS: &str = "model_hits";
    pub const MODEL_MISSES: &str = "model_misses";
    pub const CLASSES: &str = "classes";
    pub const CONCURRENCY: &str = "concurrency";
    pub const STATE: &str = "state";
    pub const STARTED_AT_MS: &str = "started_at_ms";
    pub const HEARTBEAT_AT_MS: &str = "heartbeat_at_ms";
    pub const ACTIVE: &str = "active";
    pub const METRICS_AT_MS: &str = "metrics_at_ms";
    pub const GPU_UTILIZATION: &str = "gpu_utilization";
    pub const GPU_MEMORY_USED: &str = "gpu_memory_used";
    pub const GPU_TEMPERATURE_C: &str = "gpu_temperature_c";
    pub const GPU_POWER_W: &str = "gpu_power_w";
    pub const GPU_SM_CLOCK_MHZ: &str = "gpu_sm_clock_mhz";
    pub const TASKS_PER_S: &str = "tasks_per_s";
    pub const LATENCY_BUCKETS: &str = "latency_buckets";
    pub const LATENCY_SUM_MS: &str = "latency_sum_ms";
    pub const COMPLETED: &str = "completed";
    pub const ERRORS: &str = "errors";
    pub const LEASE_EXTENSIONS: &str = "lease_extensions";
    pub const RECLAIMS: &str = "reclaims";
    pub const SUCCEEDED: &str = "succeeded";
    pub const FAILED: &str = "failed";
    pub const VERSION: &str = "version";
    pub const WIRE: &str = "wire";
}

impl WorkerInfo {
    /// The record's fields; a CPU worker's has no GPU fields but the
    /// memory ones (0).
    pub fn to_pairs(&self) -> Vec<(&'static str, String)> {
        use worker_field as f;
        let m = &self.metrics;
        let classes = self
            .classes
            .iter()
            .map(|c| c.as_str())
            .collect::<Vec<_>>()
            .join(",");
        let pairs = vec![
            (f::ID, self.id.clone()),
            (f::HOST, self.host.clone()),
            (f::PID, self.pid.to_string()),
            (f::PROCESS, self.process.clone()),
            (f::LIVE_SEEN, self.live_seen.to_string()),
            (f::DEVICE, self.device.clone()),
            (f::ROLE, self.role.as_str().to_owned()),
            (f::HEALTH, self.health.as_str().to_owned()),
            (f::DEVICE_NAME, self.device_name.clone()),
            (
                f::DEVICE_INDEX,
                self.device_index.map(|i| i.to_string()).unwrap_or_default(),
            ),
            (f::PCI_BUS_ID, self.pci_bus_id.clone()),
            (f::SIMULATED, u8::from(self.simulated).to_string()),
            (f::SCORE, self.score.to_string()),
            (f::COMPUTE_CAPABILITY, self.compute_capability.clone()),
            (f::MEMORY_TOTAL, self.memory_total.to_string()),
            (f::MEMORY_BUDGET, self.memory_budget.to_string()),
            (f::MEMORY_RESERVED, self.memory_reserved.to_string()),
            (f::MODELS, self.models.join(",")),
            (f::MEMORY_MODELS, self.memory_models.to_string()),
            (f::MODEL_HITS, self.model_hits.to_string()),
            (f::MODEL_MISSES, self.model_misses.to_string()),
            (f::CLASSES, classes),
            (f::CONCURRENCY, self.concurrency.to_string()),
            (f::STATE, self.state.clone()),
            (f::STARTED_AT_MS, self.started_at_ms.to_string()),
            (f::HEARTBEAT_AT_MS, self.heartbeat_at_ms.to_string()),
            (f::ACTIVE, self.active.to_string()),
            (f::SUCCEEDED, self.succeeded.to_string()),
            (f::FAILED, self.failed.to_string()),
            (f::VERSION, self.version.clone()),
            (f::WIRE, WIRE_VERSION.to_string()),
            (f::METRICS_AT_MS, m.at_ms.to_string()),
            (f::GPU_UTILIZATION, m.gpu_utilization.to_string()),
            (f::GPU_MEMORY_USED, m.gpu_memory_used.to_string()),
            (f::GPU_TEMPERATURE_C, m.gpu_temperature_c.to_string()),
            (f::GPU_POWER_W, m.gpu_power_w.to_string()),
            (f::GPU_SM_CLOCK_MHZ, m.gpu_sm_clock_mhz.to_string()),
            (f::TASKS_PER_S, m.tasks_per_s.to_string()),
            (
                f::LATENCY_BUCKETS,
                m.latency_buckets
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            (f::LATENCY_SUM_MS, m.latency_sum_ms.to_string()),
            (f::COMPLETED, WorkerMetrics::counts_text(&m.completed)),
            (f::ERRORS, WorkerMetrics::counts_text(&m.errors)),
            (f::LEASE_EXTENSIONS, m.lease_extensions.to_string()),
            (f::RECLAIMS, m.reclaims.to_string()),
        ];
        // A CPU worker has no device name, index, bus id or compute
        // capability: those fields are left out rather than empty.
        pairs.into_iter().filter(|(_, v)| !v.is_empty()).collect()
    }

    /// Reads a registry hash leniently, as [`TaskRecord::from_fields`].
    pub fn from_map(map: &HashMap<String, String>) -> Self {
        use worker_field as f;
        let text = |name: &str| map.get(name).cloned().unwrap_or_default();
        let number = |name: &str| map.get(name).and_then(|v| v.parse().ok()).unwrap_or(0);
        let float = |name: &str| {
            map.get(name)
                .and_then(|v| v.parse::<f64>().ok())
                .filter(|v| v.is_finite())
                .unwrap_or(0.0)
        };
        WorkerInfo {
            id: text(f::ID),
            host: text(f::HOST),
            pid: map.get(f::PID).and_then(|v| v.parse().ok()).unwrap_or(0),
            process: text(f::PROCESS),
            live_seen: map
                .get(f::LIVE_SEEN)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            device: text(f::DEVICE),
            // A record without a role is a CPU worker's (wire v1 before GPUs).
            role: map
                .get(f::ROLE)
                .and_then(|v| v.parse().ok())
                .unwrap_or(Role::Cpu),
            health: map
                .get(f::HEALTH)
                .and_then(|v| v.parse().ok())
                .unwrap_or(Health::Healthy),
            device_name: text(f::DEVICE_NAME),
            device_index: map.get(f::DEVICE_INDEX).and_then(|v| v.parse().ok()),
            pci_bus_id: text(f::PCI_BUS_ID),
            simulated: map.get(f::SIMULATED).is_some_and(|v| v == "1"),
            score: map
                .get(f::SCORE)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0),
            compute_capability: text(f::COMPUTE_CAPABILITY),
            memory_total: number(f::MEMORY_TOTAL),
            memory_budget: number(f::MEMORY_BUDGET),
            memory_reserved: number(f::MEMORY_RESERVED),
            models: map
                .get(f::MODELS)
                .map(|v| {
                    v.split(',')
                        .filter(|m| !m.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
            memory_models: number(f::MEMORY_MODELS),
            model_hits: number(f::MODEL_HITS),
            model_misses: number(f::MODEL_MISSES),
            classes: map
                .get(f::CLASSES)
                .map(|v| v.split(',').filter_map(|c| c.parse().ok()).collect())
                .unwrap_or_default(),
            concurrency: map
                .get(f::CONCURRENCY)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            state: text(f::STATE),
            started_at_ms: number(f::STARTED_AT_MS),
            heartbeat_at_ms: number(f::HEARTBEAT_AT_MS),
            active: map.get(f::ACTIVE).and_then(|v| v.parse().ok()).unwrap_or(0),
            succeeded: number(f::SUCCEEDED),
            failed: number(f::FAILED),
            version: text(f::VERSION),
            metrics: WorkerMetrics {
                at_ms: number(f::METRICS_AT_MS),
                gpu_utilization: float(f::GPU_UTILIZATION),
                gpu_memory_used: number(f::GPU_MEMORY_USED),
                gpu_temperature_c: float(f::GPU_TEMPERATURE_C),
                gpu_power_w: float(f::GPU_POWER_W),
                gpu_sm_clock_mhz: map
                    .get(f::GPU_SM_CLOCK_MHZ)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
                tasks_per_s: float(f::TASKS_PER_S),
                latency_buckets: map
                    .get(f::LATENCY_BUCKETS)
                    .map(|v| v.split(',').filter_map(|c| c.parse().ok()).collect())
                    .unwrap_or_default(),
                latency_sum_ms: float(f::LATENCY_SUM_MS),
                completed: map
                    .get(f::COMPLETED)
                    .map(|v| WorkerMetrics::counts(v))
                    .unwrap_or_default(),
                errors: map
                    .get(f::ERRORS)
                    .map(|v| WorkerMetrics::counts(v))
                    .unwrap_or_default(),
                lease_extensions: number(f::LEASE_EXTENSIONS),
                reclaims: number(f::RECLAIMS),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &[u8])]) -> Fields {
        pairs
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.to_vec()))
            .collect()
    }

    fn new_task() -> NewTask {
        NewTask {
            id: TaskId::new(),
            kind: "sleep".into(),
            class: Class::Cpu,
            priority: Priority::High,
            max_attempts: 3,
            memory_bytes: 0,
            deadline_in_ms: None,
            idempotency_key: None,
            params: vec![0x80],
            signature: None,
        }
    }

    #[test]
    fn metadata_then_decode_round_trips() {
        let task = new_task();
        let mut pairs: Fields = task
            .metadata("p1", Some("tandem:{cpu}:reply:p1"))
            .into_iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.into_bytes()))
            .collect();
        pairs.push((b"submitted_at_ms".to_vec(), b"1700000000000".to_vec()));
        pairs.push((b"params".to_vec(), task.params.clone()));
        let entry = TaskEntry::decode(&pairs, Class::Cpu, Priority::High).unwrap();
        assert_eq!(entry.id, task.id);
        assert_eq!(entry.kind, "sleep");
        assert_eq!(entry.attempt, 1);
        assert_eq!(entry.producer, "p1");
        assert_eq!(entry.reply_to.as_deref(), Some("tandem:{cpu}:reply:p1"));
        assert_eq!(entry.submitted_at_ms, Some(1_700_000_000_000));
        assert_eq!(entry.params, vec![0x80]);
    }

    #[test]
    fn shards_and_merge_entries_round_trip_through_their_fields() {
        let mut pairs: Fields = new_task()
            .metadata("p1", Some("tandem:{cpu}:reply:p1"))
            .into_iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.into_bytes()))
            .collect();
        pairs.push((b"deadline_ms".to_vec(), b"1700000009999".to_vec()));
        let parent = TaskEntry::decode(&pairs, Class::Cpu, Priority::High).unwrap();
        assert_eq!(parent.split, None);
        let encode = |entry: &TaskEntry| -> Fields {
            entry
                .fields()
                .into_iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v))
                .collect()
        };
        assert_eq!(
            TaskEntry::decode(&encode(&parent), Class::Cpu, Priority::High).unwrap(),
            parent
        );

        let shard = parent.shard(TaskId::new(), 2, 5, vec![0x91, 0x01]);
        let read = TaskEntry::decode(&encode(&shard), Class::Cpu, Priority::High).unwrap();
        assert_eq!(read, shard);
        assert_eq!(
            read.split,
            Some(SplitRole::Shard {
                parent: parent.id,
                index: 2,
                count: 5
            })
        );
        // A shard reports to nobody and has no deadline: its parent started.
        assert_eq!((read.reply_to, read.deadline_ms), (None, None));

        let merge = TaskEntry {
            split: Some(SplitRole::Merge { count: 5 }),
            ..parent.clone()
        };
        let read = TaskEntry::decode(&encode(&merge), Class::Cpu, Priority::High).unwrap();
        assert_eq!(read, merge);

        let mut bad = encode(&shard);
        bad.retain(|(k, _)| k != b"shards");
        let err = TaskEntry::decode(&bad, Class::Cpu, Priority::High).unwrap_err();
        assert_eq!(err.code, ErrorCode::BAD_PAYLOAD);
        let mut bad = encode(&merge);
        bad.retain(|(k, _)| k != b"shards");
        assert!(TaskEntry::decode(&bad, Class::Cpu, Priority::High).is_err());
    }

    #[test]
    fn minimal_entry_uses_documented_defaults() {
        let id = TaskId::new().to_string();
        let entry = TaskEntry::decode(
            &fields(&[("version", b"2"), ("id", id.as_bytes()), ("kind", b"noop")]),
            Class::Light,
            Priority::Low,
        )
        .unwrap();
        assert_eq!(entry.attempt, 1);
        assert_eq!(entry.max_attempts, 3);
        assert_eq!(entry.deadline_ms, None);
        assert!(entry.params.is_empty());
        assert_eq!(entry.class, Class::Light);
    }

    fn check_refused(pairs: &[(&str, &[u8])], code: ErrorCode, keeps_id: bool, needle: &str) {
        let err = TaskEntry::decode(&fields(pairs), Class::Cpu, Priority::Normal).unwrap_err();
        assert_eq!(err.code, code, "{err}");
        assert_eq!(err.id.is_some(), keeps_id, "{err}");
        assert!(err.message.contains(needle), "{err}");
    }

    #[test]
    fn bad_entries_are_refused_with_a_reason() {
        let id = TaskId::new().to_string();
        let id = id.as_bytes();
        check_refused(
            &[("id", id), ("kind", b"noop")],
            ErrorCode::BAD_PAYLOAD,
            true,
            "version",
        );
        check_refused(
            &[("version", b"1"), ("id", id), ("kind", b"noop")],
            ErrorCode::BAD_WIRE_VERSION,
            true,
            "\"1\"",
        );
        check_refused(
            &[("version", b"2"), ("kind", b"noop")],
            ErrorCode::BAD_PAYLOAD,
            false,
            "id",
        );
        check_refused(
            &[("version", b"2"), ("id", b"42"), ("kind", b"noop")],
            ErrorCode::BAD_PAYLOAD,
            false,
            "UUID",
        );
        check_refused(
            &[("version", b"2"), ("id", id)],
            ErrorCode::BAD_PAYLOAD,
            true,
            "kind",
        );
        check_refused(
            &[
                ("version", b"2"),
                ("id", id),
                ("kind", b"noop"),
                ("attempt", b"x"),
            ],
            ErrorCode::BAD_PAYLOAD,
            true,
            "attempt",
        );
        check_refused(
            &[
                ("version", b"2"),
                ("id", id),
                ("kind", b"noop"),
                ("class", b"heavy"),
            ],
            ErrorCode::BAD_PAYLOAD,
            true,
            "class",
        );
        check_refused(
            &[("version", b"2"), ("id", id), ("kind", &[0xff, 0xfe])],
            ErrorCode::BAD_PAYLOAD,
            true,
            "UTF-8",
        );
        // Split fields are the workers' (issue 11, point 9): a producer's
        // stray `shard`, `shards` or `merge` is a malformed entry, named.
        let echo: [(&str, &[u8]); 3] = [("version", b"2"), ("id", id), ("kind", b"echo")];
        for (extra, needle) in [
            (&[("shard", &b"0"[..])][..], "field shard"),
            (&[("shards", &b"2"[..])][..], "field shards"),
            (
                &[("merge", &b"yes"[..]), ("shards", b"2")][..],
                "field merge",
            ),
            (
                &[("parent", &b"p"[..]), ("shard", b"0"), ("shards", b"1")][..],
                "field parent",
            ),
        ] {
            let mut pairs = echo.to_vec();
            pairs.extend_from_slice(extra);
            check_refused(&pairs, ErrorCode::BAD_PAYLOAD, true, needle);
        }
    }

    #[test]
    fn records_read_leniently() {
        let record = TaskRecord::from_fields([
            (&b"status"[..], &b"failed"[..]),
            (b"attempt", b"2"),
            (b"error_code", b"BAD_PARAMS"),
            (b"error_message", b"ms too large"),
            (b"run_us", b"not a number"),
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
    fn worker_info_round_trips() {
        let info = WorkerInfo {
            id: "host-1-ab".into(),
            host: "host".into(),
            pid: 1,
            process: "boot/4026531836/123".into(),
            live_seen: 3,
            device: "SIM-0-a".into(),
            role: Role::Heavy,
            health: Health::Probing,
            device_name: "A (simulated)".into(),
            device_index: Some(0),
            pci_bus_id: String::new(),
            simulated: true,
            score: 52.09,
            compute_capability: "sim".into(),
            memory_total: 12 << 30,
            memory_budget: 11 << 30,
            memory_reserved: 1 << 30,
            models: vec!["px".into(), "risk-net".into()],
            memory_models: 42_760,
            model_hits: 7,
            model_misses: 2,
            classes: vec![Class::Cpu, Class::Heavy],
            concurrency: 4,
            state: "running".into(),
            started_at_ms: 5,
            heartbeat_at_ms: 6,
            active: 2,
            succeeded: 10,
            failed: 1,
            version: "0.1.0".into(),
            metrics: WorkerMetrics {
                at_ms: 7,
                gpu_utilization: 0.83,
                gpu_memory_used: 3 << 30,
                gpu_temperature_c: 71.5,
                gpu_power_w: 215.25,
                gpu_sm_clock_mhz: 2_520,
                tasks_per_s: 123.5,
                latency_buckets: vec![0, 4, 9, 1, 0, 0, 0, 0, 0, 0, 2],
                latency_sum_ms: 812.75,
                completed: [("infer/light/succeeded".to_owned(), 12)].into(),
                errors: [("DEVICE_OUT_OF_MEMORY".to_owned(), 2)].into(),
                lease_extensions: 40,
                reclaims: 3,
            },
        };
        let map = info
            .to_pairs()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        assert_eq!(WorkerInfo::from_map(&map), info);
        // A record from before GPUs is a healthy CPU worker's.
        let old: HashMap<String, String> = [("id".to_owned(), "w".to_owned())].into();
        let old = WorkerInfo::from_map(&old);
        assert_eq!(
            (old.role, old.health, old.device_index),
            (Role::Cpu, Health::Healthy, None)
        );
    }

    #[test]
    fn finish_pairs_carry_result_or_error() {
        let ok = Finish {
            status: Status::Succeeded,
            worker: "w".into(),
            device: "cpu".into(),
            run_us: Some(12),
            outcome: FinishOutcome::Result(vec![1, 2, 3]),
        };
        let names: Vec<_> = ok.record_pairs().iter().map(|(k, _)| *k).collect();
        assert_eq!(
            names,
            ["worker", "device", "run_us", "result_bytes", "result"]
        );
        let record = TaskRecord::from_fields(
            ok.record_pairs()
                .iter()
                .map(|(k, v)| (k.as_bytes(), v.as_slice())),
        );
        assert_eq!(record.result.as_deref(), Some(&[1u8, 2, 3][..]));
        assert_eq!(record.result_bytes, Some(3));
    }
}
