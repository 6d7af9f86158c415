//! Committing: what becomes of a task after an attempt ([`Disposition`]),
//! the commit that writes its outcome, notifies its producer and
//! acknowledges its entry in one script (`complete.lua`, or `split.lua`
//! for a task cut into shards), and the burial of an entry that names no
//! task. Commits ride in the worker's round trip ([`super::round_trip`]).

use redis::{Cmd, ToRedisArgs, Value};

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

    /// The keys and arguments of one task's commit, in `complete.lua`'s
    /// numbering of a task; `None` for a split, which `split.lua` commits.
    fn commit_part(&self, consumer: &str, completion: &Completion) -> Option<CommitPart> {
        let class = completion.class;
        let (disposition, after_ms) = match &completion.disposition {
            Disposition::Final => ("final", 0),
            Disposition::Retry { after_ms } => ("retry", *after_ms),
            Disposition::Dead => ("dead", 0),
            Disposition::HandBack { min_memory_bytes } => ("handback", *min_memory_bytes),
            Disposition::Split { .. } => return None,
        };
        let mut keys = vec![
            self.keys.task(class, &completion.id),
            self.keys.stream_ref(class, completion.priority).to_owned(),
            self.keys.delayed(class).to_owned(),
            self.keys.dead(class).to_owned(),
        ];
        if let Some(reply_to) = &completion.reply_to
            && self.keys.is_reply_for(class, reply_to)
        {
            keys.push(reply_to.clone());
        }
        let mut args: Vec<Vec<u8>> = Vec::new();
        GROUP.write_redis_args(&mut args);
        completion.entry_id.write_redis_args(&mut args);
        consumer.write_redis_args(&mut args);
        self.retention.result_ttl_s.write_redis_args(&mut args);
        self.retention.reply_maxlen.write_redis_args(&mut args);
        self.retention.reply_ttl_s.write_redis_args(&mut args);
        self.retention
            .inline_result_bytes
            .write_redis_args(&mut args);
        completion.id.to_string().write_redis_args(&mut args);
        completion
            .finish
            .status
            .as_str()
            .write_redis_args(&mut args);
        disposition.write_redis_args(&mut args);
        after_ms.write_redis_args(&mut args);
        self.retention
            .dead_letter_maxlen
            .write_redis_args(&mut args);
        completion.attempt.write_redis_args(&mut args);
        for (name, value) in completion.finish.record_pairs() {
            args.push(name.as_bytes().to_vec());
            args.push(value);
        }
        Some(CommitPart { keys, args })
    }

    /// One `complete.lua` call that commits `parts` (tasks of one class).
    fn complete_batch_cmd(&self, parts: &[CommitPart]) -> Cmd {
        let mut call = scripts::COMPLETE.invocation(self.events);
        for part in parts {
            for key in &part.keys {
                call = call.key(key);
            }
        }
        call = call.arg(parts.len());
        for part in parts {
            call = call.arg(part.keys.len()).arg(part.args.len());
            for arg in &part.args {
                call = call.arg(arg.as_slice());
            }
        }
        call.into_cmd()
    }

    /// The calls that commit `completions`: one `complete.lua` call per
    /// class for up to [`COMMIT_BATCH_MAX`] of its tasks (a class's keys
    /// share one hash slot), one `split.lua` call per split; each with the
    /// positions in `completions` it commits, in its reply's order.
    pub(super) fn commit_cmds(
        &self,
        consumer: &str,
        completions: &[Completion],
    ) -> Vec<(Cmd, CommitShape)> {
        let mut cmds = Vec::new();
        // (class, positions, parts) of the batches being filled.
        let mut batches: Vec<(Class, Vec<usize>, Vec<CommitPart>)> = Vec::new();
        for (at, completion) in completions.iter().enumerate() {
            match self.commit_part(consumer, completion) {
                None => {
                    if let Disposition::Split { shards } = &completion.disposition {
                        cmds.push((
                            self.split_cmd(consumer, completion, shards),
                            CommitShape::One(at),
                        ));
                    }
                }
                Some(part) => {
                    let open = batches.iter_mut().find(|(class, positions, _)| {
                        *class == completion.class && positions.len() < COMMIT_BATCH_MAX
                    });
                    match open {
                        Some((_, positions, parts)) => {
                            positions.push(at);
                            parts.push(part);
                        }
                        None => batches.push((completion.class, vec![at], vec![part])),
                    }
                }
            }
        }
        for (_, positions, parts) in batches {
            cmds.push((
                self.complete_batch_cmd(&parts),
                CommitShape::Batch(positions),
            ));
        }
        cmds
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

/// The most tasks one `complete.lua` call commits: a script runs alone on
/// the server, so a batch is kept to a few milliseconds of its time.
pub(super) const COMMIT_BATCH_MAX: usize = 64;

/// One task's keys and arguments in a commit batch.
#[derive(Debug)]
struct CommitPart {
    keys: Vec<String>,
    args: Vec<Vec<u8>>,
}

/// Which completions one commit call carries (positions in the trip's
/// completions).
#[derive(Debug)]
pub(super) enum CommitShape {
    /// A `split.lua` call: its reply is the task's.
    One(usize),
    /// A `complete.lua` batch: its reply holds one reply per task, in order.
    Batch(Vec<usize>),
}

/// The outcome of each of `count` completions from the replies to the
/// calls `commit_cmds` made, in the completions' order. A call that failed
/// as a whole (the connection's pipeline succeeded, the script did not)
/// fails each task it carried; a task's own error fails only that task.
pub(super) fn parse_commits(
    count: usize,
    shapes: &[CommitShape],
    replies: Vec<Value>,
) -> Vec<Result<Committed, StoreError>> {
    let mut out: Vec<Option<Result<Committed, StoreError>>> = (0..count).map(|_| None).collect();
    for (shape, reply) in shapes.iter().zip(replies) {
        match shape {
            CommitShape::One(at) => {
                if let Some(slot) = out.get_mut(*at) {
                    *slot = Some(parse_committed(reply));
                }
            }
            CommitShape::Batch(positions) => match reply {
                Value::Array(items) if items.len() == positions.len() => {
                    for (at, item) in positions.iter().zip(items) {
                        if let Some(slot) = out.get_mut(*at) {
                            *slot = Some(parse_committed(item));
                        }
                    }
                }
                other => {
                    let failed = match reply_ok(other) {
                        Err(err) => err,
                        Ok(other) => {
                            let mut detail =
                                format!("expected {} replies, got {other:?}", positions.len());
                            detail.truncate(200);
                            StoreError::Protocol {
                                what: "commit batch",
                                detail,
                            }
                        }
                    };
                    for at in positions {
                        if let Some(slot) = out.get_mut(*at) {
                            *slot = Some(Err(failed.duplicate()));
                        }
                    }
                }
            },
        }
    }
    out.into_iter()
        .map(|found| {
            found.unwrap_or_else(|| {
                Err(StoreError::Protocol {
                    what: "commit batch",
                    detail: "no reply for this task".to_owned(),
                })
            })
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_task_of_a_batch_gets_its_own_reply_and_a_failed_call_fails_all_it_carried() {
        let shapes = [
            CommitShape::Batch(vec![0, 2]),
            CommitShape::One(1),
            CommitShape::Batch(vec![3, 4]),
        ];
        let replies = vec![
            Value::Array(vec![Value::Int(-1), Value::Int(1)]),
            Value::Int(2),
            Value::Int(7),
        ];
        let got = parse_commits(6, &shapes, replies);
        assert!(matches!(got[0], Ok(Committed::LeaseLost)));
        assert!(matches!(got[1], Ok(Committed::Cancelled)));
        assert!(matches!(got[2], Ok(Committed::Written)));
        // A reply of the wrong shape fails each task of its call.
        assert!(matches!(got[3], Err(StoreError::Protocol { .. })));
        assert!(matches!(got[4], Err(StoreError::Protocol { .. })));
        // A completion no call carried has no outcome.
        assert!(matches!(got[5], Err(StoreError::Protocol { .. })));
    }
}
