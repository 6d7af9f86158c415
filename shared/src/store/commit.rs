//! Committing: what becomes of a task after an attempt ([`Disposition`]),
//! the commit that writes its outcome, notifies its producer and
//! acknowledges its entry in one script (`complete.lua`, or `split.lua`
//! for a task cut into shards), and the burial of an entry that names no
//! task. Commits ride in the worker's round trip ([`super::round_trip`]).

use redis::{Cmd, Value};

use super::reply::{reply_ok, text};
use super::{Store, StoreError, StreamRef};
use crate::keys::GROUP;
use crate::scripts;
use crate::task::{Class, Priority, TaskId};
use crate::wire::{Finish, TaskEntry};

/// What becomes of a task after this attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Disposition {
    /// Its record takes its final status now.
    Final,
    /// It goes back into its stream after this many milliseconds.
    Retry { after_ms: u64 },
    /// It goes to the dead-letter stream and its record ends `failed`.
    Dead,
    /// It goes back to the end of its stream at once, for another worker,
    /// declaring at least this much memory (the device it ran on had less
    /// room than that); its record says `queued` again and its history
    /// notes why. Not a failed attempt.
    HandBack { min_memory_bytes: u64 },
    /// It was cut into these shards (entries of its own stream, each a task
    /// with a record of its own); its record stays `running` until the last
    /// shard's commit puts it back as a merge entry (`split.lua`).
    Split { shards: Vec<TaskEntry> },
}

/// A task to commit.
#[derive(Debug, Clone)]
pub struct Completion {
    pub id: TaskId,
    pub class: Class,
    pub priority: Priority,
    pub entry_id: String,
    pub reply_to: Option<String>,
    pub attempt: u32,
    pub disposition: Disposition,
    pub finish: Finish,
}

/// The outcome of committing one task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    /// The outcome is now the task's record (or its retry is scheduled).
    Written,
    /// A cancel requested while the task ran made the record `cancelled`,
    /// whatever the outcome said; the rest of it was discarded.
    Cancelled,
    /// The record was already final; this outcome was discarded.
    AlreadyFinal,
    /// This worker no longer owns the entry (its lease was taken over); the
    /// outcome was discarded and nothing changed.
    LeaseLost,
}

impl Store {
    fn split_cmd(&self, consumer: &str, completion: &Completion, shards: &[TaskEntry]) -> Cmd {
        let class = completion.class;
        let mut call = scripts::SPLIT
            .invocation(self.events)
            .key(self.keys.task(class, &completion.id))
            .key(self.keys.stream_ref(class, completion.priority))
            .arg(GROUP)
            .arg(&completion.entry_id)
            .arg(consumer)
            .arg(completion.id.to_string())
            .arg(shards.len());
        for shard in shards {
            let fields = shard.fields();
            call = call.arg(shard.id.to_string()).arg(fields.len());
            for (name, value) in fields {
                call = call.arg(name).arg(value);
            }
        }
        call.into_cmd()
    }

    pub(super) fn complete_cmd(&self, consumer: &str, completion: &Completion) -> Cmd {
        let class = completion.class;
        let mut call = scripts::COMPLETE
            .invocation(self.events)
            .key(self.keys.task(class, &completion.id))
            .key(self.keys.stream_ref(class, completion.priority))
            .key(self.keys.delayed(class))
            .key(self.keys.dead(class));
        if let Some(reply_to) = &completion.reply_to
            && self.keys.is_reply_for(class, reply_to)
        {
            call = call.key(reply_to);
        }
        let (disposition, after_ms) = match &completion.disposition {
            Disposition::Final => ("final", 0),
            Disposition::Retry { after_ms } => ("retry", *after_ms),
            Disposition::Dead => ("dead", 0),
            Disposition::HandBack { min_memory_bytes } => ("handback", *min_memory_bytes),
            Disposition::Split { shards } => return self.split_cmd(consumer, completion, shards),
        };
        call = call
            .arg(GROUP)
            .arg(&completion.entry_id)
            .arg(consumer)
            .arg(self.retention.result_ttl_s)
            .arg(self.retention.reply_maxlen)
            .arg(self.retention.reply_ttl_s)
            .arg(self.retention.inline_result_bytes)
            .arg(completion.id.to_string())
            .arg(completion.finish.status.as_str())
            .arg(disposition)
            .arg(after_ms)
            .arg(self.retention.dead_letter_maxlen)
            .arg(completion.attempt);
        for (name, value) in completion.finish.record_pairs() {
            call = call.arg(name).arg(value);
        }
        call.into_cmd()
    }

    /// Moves an entry that names no task to the dead-letter stream of its
    /// class, while `consumer` owns it. Returns the dead letter's id, or
    /// `None` when the entry was taken over meanwhile.
    pub async fn bury(
        &self,
        stream: &StreamRef,
        entry_id: &str,
        consumer: &str,
        code: &str,
        message: &str,
    ) -> Result<Option<String>, StoreError> {
        let cmd = scripts::BURY
            .invocation(self.events)
            .key(&stream.key)
            .key(self.keys.dead(stream.class))
            .arg(GROUP)
            .arg(entry_id)
            .arg(consumer)
            .arg(code)
            .arg(message)
            .arg(self.retention.dead_letter_maxlen)
            .into_cmd();
        match self.single(cmd).await? {
            Value::Int(-1) => Ok(None),
            other => Ok(Some(text(other, "bury")?)),
        }
    }
}

pub(super) fn parse_committed(reply: Value) -> Result<Committed, StoreError> {
    match reply_ok(reply)? {
        Value::Int(1) => Ok(Committed::Written),
        Value::Int(2) => Ok(Committed::Cancelled),
        Value::Int(0) => Ok(Committed::AlreadyFinal),
        Value::Int(-1) => Ok(Committed::LeaseLost),
        other => Err(StoreError::protocol("complete", &other)),
    }
}
