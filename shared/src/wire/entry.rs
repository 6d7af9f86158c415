//! The task entry: what a producer adds to a task stream ([`NewTask`]'s
//! metadata, completed by the submit script) and what a worker reads back
//! ([`TaskEntry`]), strictly: a malformed entry is refused with a reason.

use super::field;
use super::reader::{FieldError, FieldReader};
use super::{Fields, WIRE_VERSION};
use crate::task::{Class, ErrorCode, Priority, TaskId};

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
    /// The run-time limit, ms from the start of each attempt.
    pub timeout_ms: Option<u64>,
    pub idempotency_key: Option<String>,
    /// MessagePack.
    pub params: Vec<u8>,
    /// The HMAC signature, when the producer signs (see [`crate::signature`]).
    pub signature: Option<String>,
    /// When set and in the future, a delayed task: it enters its stream
    /// then (see `submit.lua`).
    pub run_at: Option<RunAt>,
    /// The key whose rate limit the task also counts against.
    pub rate_key: Option<String>,
    /// Whether the commit notifies the submitting producer: its entry then
    /// names the producer's reply stream (`reply_to`) and the commit writes
    /// a completion notice there. Without, the outcome is in the record
    /// only (a fire-and-forget submit: no notice, no reply stream).
    pub notice: bool,
}

/// When a delayed task is to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunAt {
    /// This many ms after Redis accepts it (by the Redis clock).
    In(u64),
    /// At this time, ms since the Unix epoch (by the Redis clock).
    At(u64),
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
        if let Some(timeout_ms) = self.timeout_ms {
            pairs.push((field::TIMEOUT_MS, timeout_ms.to_string()));
        }
        if let Some(signature) = &self.signature {
            pairs.push((field::SIGNATURE, signature.clone()));
        }
        if let Some(rate_key) = &self.rate_key {
            pairs.push((field::RATE_KEY, rate_key.clone()));
        }
        // Read by the submit script, not copied into the entry.
        match self.run_at {
            Some(RunAt::In(ms)) => pairs.push((field::DELAY_MS, ms.to_string())),
            Some(RunAt::At(ms)) => pairs.push((field::RUN_AT_MS, ms.to_string())),
            None => {}
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
    /// The run-time limit, ms from the start of each attempt: past it the
    /// task is stopped and fails with `TIMEOUT`.
    pub timeout_ms: Option<u64>,
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
    /// On a workflow node: its parents' results (MessagePack map from node
    /// name to result), which replace the placeholders in `params` before
    /// the handler runs (see [`crate::workflow::refs`]).
    pub inputs: Option<Vec<u8>>,
    /// On a workflow node: how many children take its result (0: none, or
    /// not a workflow node); its worker then sends a result above
    /// `workflow_blob_threshold_bytes` by blob reference.
    pub feeds: u32,
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

impl TaskEntry {
    /// Decodes an entry read from the stream of `class` and `priority`. The
    /// stream is authoritative for both; a contradicting field is an error.
    pub fn decode(fields: &Fields, class: Class, priority: Priority) -> Result<Self, EntryError> {
        let reader =
            FieldReader::first_wins(fields.iter().map(|(k, v)| (k.as_slice(), v.as_slice())));
        // Read leniently first, so that even a refused entry names the task
        // (and the stream to tell) its failure belongs to.
        let id = reader.lenient::<TaskId>(field::ID);
        let reply_to = reader.lenient_text(field::REPLY_TO).map(str::to_owned);
        let fail = |code: ErrorCode, message: String| EntryError {
            code,
            message,
            id,
            reply_to: reply_to.clone(),
        };
        let bad = |message: String| fail(ErrorCode::BAD_PAYLOAD, message);
        let bad_field = |err: FieldError| bad(err.to_string());

        let version = reader.required(field::VERSION).map_err(bad_field)?;
        if version != WIRE_VERSION.to_string() {
            return Err(fail(
                ErrorCode::BAD_WIRE_VERSION,
                format!(
                    "wire version {version:?} is not supported; this worker reads version {WIRE_VERSION}"
                ),
            ));
        }
        let id_text = reader.required(field::ID).map_err(bad_field)?;
        let Some(id) = id else {
            return Err(bad_field(FieldError::NotUuid {
                name: field::ID,
                value: id_text.to_owned(),
            }));
        };
        let kind = reader.required(field::KIND).map_err(bad_field)?;
        if kind.is_empty() {
            return Err(bad_field(FieldError::Empty(field::KIND)));
        }
        if let Some(named) = reader.text(field::CLASS).map_err(bad_field)?
            && named != class.as_str()
        {
            return Err(bad(format!(
                "field {} is {named:?} but the entry is in the {class} stream",
                field::CLASS
            )));
        }
        if let Some(named) = reader.text(field::PRIORITY).map_err(bad_field)?
            && named != priority.as_str()
        {
            return Err(bad(format!(
                "field {} is {named:?} but the entry is in the {priority} stream",
                field::PRIORITY
            )));
        }
        let number = |name: &'static str| reader.number::<u64>(name).map_err(bad_field);
        let attempt = reader
            .number::<u32>(field::ATTEMPT)
            .map_err(bad_field)?
            .unwrap_or(1);
        let max_attempts = reader
            .number::<u32>(field::MAX_ATTEMPTS)
            .map_err(bad_field)?
            .unwrap_or(3);
        let memory_bytes = number(field::MEMORY_BYTES)?.unwrap_or(0);
        let feeds = reader
            .number::<u32>(field::FEEDS)
            .map_err(bad_field)?
            .unwrap_or(0);
        let deadline_ms = number(field::DEADLINE_MS)?.filter(|&ms| ms > 0);
        let submitted_at_ms = number(field::SUBMITTED_AT_MS)?;
        let timeout_ms = number(field::TIMEOUT_MS)?;
        if timeout_ms == Some(0) {
            return Err(bad(format!(
                "field {}: a run-time limit must be at least 1 ms",
                field::TIMEOUT_MS
            )));
        }
        let producer = reader
            .text(field::PRODUCER)
            .map_err(bad_field)?
            .unwrap_or_default()
            .to_owned();
        let signature = reader
            .text(field::SIGNATURE)
            .map_err(bad_field)?
            .map(str::to_owned);
        let params = reader.raw(field::PARAMS).unwrap_or_default().to_vec();
        let inputs = reader.raw(field::INPUTS).map(<[u8]>::to_vec);
        let split = Self::decode_split(&reader).map_err(bad)?;
        let avoid = reader
            .text(field::AVOID)
            .map_err(bad_field)?
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
            timeout_ms,
            producer,
            submitted_at_ms,
            reply_to,
            params,
            signature,
            split,
            avoid,
            inputs,
            feeds,
        })
    }

    /// Reads the split fields, which workers alone write: on a shard
    /// `parent`, `shard` and `shards`; on a merge entry `merge` and
    /// `shards`; on any other entry none of them. The error is the message
    /// of a `BAD_PAYLOAD`.
    fn decode_split(reader: &FieldReader<'_>) -> Result<Option<SplitRole>, String> {
        use field::{MERGE, PARENT, SHARD, SHARDS};
        let text = |name| reader.text(name).map_err(|err| err.to_string());
        let count = reader
            .number::<u32>(SHARDS)
            .map_err(|err| err.to_string())?;
        let split = match (text(PARENT)?, text(MERGE)?) {
            (Some(_), _) => {
                let parent = reader.task_id(PARENT).map_err(|err| err.to_string())?;
                let index = reader.number::<u32>(SHARD).map_err(|err| err.to_string())?;
                match (parent, index, count) {
                    (Some(parent), Some(index), Some(count)) if index < count => {
                        Some(SplitRole::Shard {
                            parent,
                            index,
                            count,
                        })
                    }
                    _ => {
                        return Err(format!(
                            "a shard needs fields {SHARD} and {SHARDS}, with {SHARD} < {SHARDS}"
                        ));
                    }
                }
            }
            (None, Some("1")) => match count {
                Some(count) if count > 0 => Some(SplitRole::Merge { count }),
                _ => {
                    return Err(format!("a merge entry needs field {SHARDS}, at least 1"));
                }
            },
            (None, Some(other)) => {
                return Err(format!(
                    "field {MERGE} is {other:?}; workers alone write it, as 1"
                ));
            }
            // Workers write `shard` only on shards, `shards` only on shards
            // and merge entries: on another entry they are malformed.
            (None, None) => match (text(SHARD)?, count) {
                (None, None) => None,
                (Some(_), _) => {
                    return Err(format!(
                        "field {SHARD} without field {PARENT}; workers alone write them, on the shards of a split task"
                    ));
                }
                (None, Some(_)) => {
                    return Err(format!(
                        "field {SHARDS} without field {PARENT} or {MERGE}; workers alone write them, on the parts of a split task"
                    ));
                }
            },
        };
        Ok(split)
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
            (field::TIMEOUT_MS, self.timeout_ms.map(|v| v.to_string())),
            (
                field::SUBMITTED_AT_MS,
                self.submitted_at_ms.map(|v| v.to_string()),
            ),
            (field::REPLY_TO, self.reply_to.clone()),
            (field::SIGNATURE, self.signature.clone()),
            (
                field::FEEDS,
                (self.feeds > 0).then(|| self.feeds.to_string()),
            ),
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
        if let Some(inputs) = &self.inputs {
            pairs.push((field::INPUTS, inputs.clone()));
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
            inputs: None,
            // A shard's partial result goes to the merge, not to children.
            feeds: 0,
            ..self.clone()
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::field::{
        ATTEMPT, CLASS, DEADLINE_MS, ID, KIND, MERGE, PARAMS, PARENT, SHARD, SHARDS,
        SUBMITTED_AT_MS, VERSION,
    };

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
            timeout_ms: None,
            idempotency_key: None,
            params: vec![0x80],
            signature: None,
            run_at: None,
            rate_key: None,
            notice: true,
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
        pairs.push((
            SUBMITTED_AT_MS.as_bytes().to_vec(),
            b"1700000000000".to_vec(),
        ));
        pairs.push((PARAMS.as_bytes().to_vec(), task.params.clone()));
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
        pairs.push((DEADLINE_MS.as_bytes().to_vec(), b"1700000009999".to_vec()));
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
        bad.retain(|(k, _)| k != SHARDS.as_bytes());
        let err = TaskEntry::decode(&bad, Class::Cpu, Priority::High).unwrap_err();
        assert_eq!(err.code, ErrorCode::BAD_PAYLOAD);
        let mut bad = encode(&merge);
        bad.retain(|(k, _)| k != SHARDS.as_bytes());
        assert!(TaskEntry::decode(&bad, Class::Cpu, Priority::High).is_err());
    }

    #[test]
    fn minimal_entry_uses_documented_defaults() {
        let id = TaskId::new().to_string();
        let entry = TaskEntry::decode(
            &fields(&[(VERSION, b"2"), (ID, id.as_bytes()), (KIND, b"noop")]),
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

    #[test]
    fn feeds_is_read_leniently_and_round_trips() {
        use crate::wire::field::FEEDS;
        let id = TaskId::new().to_string();
        let base: [(&str, &[u8]); 3] = [(VERSION, b"2"), (ID, id.as_bytes()), (KIND, b"noop")];
        // Absent: 0 (a plain task, a sink, an entry from before 2.17).
        let plain = TaskEntry::decode(&fields(&base), Class::Cpu, Priority::Normal).unwrap();
        assert_eq!(plain.feeds, 0);
        assert!(plain.fields().iter().all(|(name, _)| *name != FEEDS));
        let mut pairs = base.to_vec();
        pairs.push((FEEDS, b"3"));
        let node = TaskEntry::decode(&fields(&pairs), Class::Cpu, Priority::Normal).unwrap();
        assert_eq!(node.feeds, 3);
        // A retry re-encodes the entry: the field goes with it.
        let encoded: Fields = node
            .fields()
            .into_iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v))
            .collect();
        assert_eq!(
            TaskEntry::decode(&encoded, Class::Cpu, Priority::Normal).unwrap(),
            node
        );
        // A shard's partial result goes to its merge, not to the children.
        assert_eq!(node.shard(TaskId::new(), 0, 2, Vec::new()).feeds, 0);
        for bad in [&b"many"[..], b"-1"] {
            let mut pairs = base.to_vec();
            pairs.push((FEEDS, bad));
            check_refused(&pairs, ErrorCode::BAD_PAYLOAD, true, "field feeds");
        }
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
            &[(ID, id), (KIND, b"noop")],
            ErrorCode::BAD_PAYLOAD,
            true,
            VERSION,
        );
        check_refused(
            &[(VERSION, b"1"), (ID, id), (KIND, b"noop")],
            ErrorCode::BAD_WIRE_VERSION,
            true,
            "\"1\"",
        );
        check_refused(
            &[(VERSION, b"2"), (KIND, b"noop")],
            ErrorCode::BAD_PAYLOAD,
            false,
            ID,
        );
        check_refused(
            &[(VERSION, b"2"), (ID, b"42"), (KIND, b"noop")],
            ErrorCode::BAD_PAYLOAD,
            false,
            "UUID",
        );
        check_refused(
            &[(VERSION, b"2"), (ID, id)],
            ErrorCode::BAD_PAYLOAD,
            true,
            KIND,
        );
        check_refused(
            &[(VERSION, b"2"), (ID, id), (KIND, b"noop"), (ATTEMPT, b"x")],
            ErrorCode::BAD_PAYLOAD,
            true,
            ATTEMPT,
        );
        check_refused(
            &[
                (VERSION, b"2"),
                (ID, id),
                (KIND, b"noop"),
                (CLASS, b"heavy"),
            ],
            ErrorCode::BAD_PAYLOAD,
            true,
            CLASS,
        );
        check_refused(
            &[(VERSION, b"2"), (ID, id), (KIND, &[0xff, 0xfe])],
            ErrorCode::BAD_PAYLOAD,
            true,
            "UTF-8",
        );
        // Split fields are the workers' (issue 11, point 9): a producer's
        // stray `shard`, `shards` or `merge` is a malformed entry, named.
        let echo: [(&str, &[u8]); 3] = [(VERSION, b"2"), (ID, id), (KIND, b"echo")];
        for (extra, needle) in [
            (&[(SHARD, &b"0"[..])][..], "field shard"),
            (&[(SHARDS, &b"2"[..])][..], "field shards"),
            (&[(MERGE, &b"yes"[..]), (SHARDS, b"2")][..], "field merge"),
            (
                &[(PARENT, &b"p"[..]), (SHARD, b"0"), (SHARDS, b"1")][..],
                "field parent",
            ),
        ] {
            let mut pairs = echo.to_vec();
            pairs.extend_from_slice(extra);
            check_refused(&pairs, ErrorCode::BAD_PAYLOAD, true, needle);
        }
    }
}
