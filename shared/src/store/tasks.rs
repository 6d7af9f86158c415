//! What producers do: submit tasks, find records, cancel.

use redis::{Cmd, Value};

use super::reply::{array, hash_map, int, reply_ok, text};
use super::{Store, StoreError};
use crate::scripts;
use crate::task::{Class, Status, TaskId};
use crate::wire::{NewTask, TaskRecord};

/// The most tasks one `submit_many.lua` call carries. Redis's time per task
/// falls from 1 to 8-32 tasks a call and rises again beyond (about 35 us at
/// 8-32, 38 at 64, 60 at 100 and more: `scripts/lua-cost`, see
/// docs/BENCHMARKS.md), and a call holds Redis for all of its tasks.
pub const SUBMIT_BATCH: usize = 32;

/// What `submit` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Submitted {
    pub id: TaskId,
    pub class: Class,
    /// False when an idempotency key or the task id named an existing task,
    /// whose id this is.
    pub created: bool,
}

/// The outcome of a cancel request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    NotFound,
    /// It had already finished with this status.
    AlreadyFinished(Status),
    /// It was queued (or waiting for a retry) and will never run.
    Cancelled,
    /// It is running; its worker was told to stop it.
    Requested,
}

impl Store {
    fn submit_cmd(&self, task: &NewTask, producer: &str, reply_to: Option<&str>) -> Cmd {
        let mut call = scripts::SUBMIT
            .invocation(self.events)
            .key(self.keys.stream(task.class, task.priority))
            .key(self.keys.task(task.class, &task.id));
        if let Some(key) = &task.idempotency_key {
            call = call.key(self.keys.idempotency(task.class, key));
        }
        call = call
            .arg(task.id.to_string())
            .arg(task.deadline_in_ms.unwrap_or(0))
            .arg(self.retention.idempotency_ttl_s)
            .arg(task.idempotency_key.as_deref().unwrap_or(""))
            .arg(task.params.as_slice());
        for (name, value) in task.metadata(producer, reply_to) {
            call = call.arg(name).arg(value);
        }
        call.into_cmd()
    }

    /// One `submit_many.lua` call for the tasks of `batch` (indices into
    /// `tasks`, all of one class, so of one Cluster slot); see that
    /// script's header for the argument layout.
    fn submit_batch_cmd(
        &self,
        tasks: &[NewTask],
        batch: &[usize],
        producer: &str,
        reply_to: Option<&str>,
    ) -> Cmd {
        let mut call = scripts::SUBMIT_MANY
            .invocation(self.events)
            .arg(batch.len())
            .arg(batch.first().copied().unwrap_or(0));
        for &i in batch {
            let task = &tasks[i];
            call = call
                .key(self.keys.stream(task.class, task.priority))
                .key(self.keys.task(task.class, &task.id));
            if let Some(key) = &task.idempotency_key {
                call = call.key(self.keys.idempotency(task.class, key));
            }
            let metadata = task.metadata(producer, reply_to);
            call = call
                .arg(if task.idempotency_key.is_some() { 3 } else { 2 })
                .arg(task.id.to_string())
                .arg(task.deadline_in_ms.unwrap_or(0))
                .arg(self.retention.idempotency_ttl_s)
                .arg(task.idempotency_key.as_deref().unwrap_or(""))
                .arg(task.params.as_slice())
                .arg(metadata.len());
            for (name, value) in metadata {
                call = call.arg(name).arg(value);
            }
        }
        call.into_cmd()
    }

    /// Submits tasks in one round trip. Each returned item matches the task
    /// at the same position; one task's failure does not fail the others.
    /// `reply_to` names the stream a task's completion notice goes to, by
    /// the task's class: a reply stream of that class ([`Keys::reply`]), as
    /// workers notify no other key. A task without [`NewTask::notice`]
    /// names none.
    ///
    /// A lone task goes by `submit.lua`; more go by `submit_many.lua`, one
    /// call per run of up to [`SUBMIT_BATCH`] tasks of one class (a call's
    /// keys must share a Cluster slot), all calls in one pipeline.
    ///
    /// [`Keys::reply`]: crate::keys::Keys::reply
    pub async fn submit_many<'a>(
        &self,
        tasks: &[NewTask],
        producer: &str,
        reply_to: impl Fn(Class) -> Option<&'a str>,
    ) -> Result<Vec<Result<Submitted, StoreError>>, StoreError> {
        if let [task] = tasks {
            let replies = self
                .pipeline_replicated(&[self.submit_cmd(
                    task,
                    producer,
                    reply_to(task.class).filter(|_| task.notice),
                )])
                .await?;
            let reply = replies
                .into_iter()
                .next()
                .ok_or_else(|| StoreError::Protocol {
                    what: "submit",
                    detail: "no reply for 1 task".to_owned(),
                })?;
            return Ok(vec![parse_submitted(task.class, reply)]);
        }
        // Runs of consecutive tasks of one class and one `notice` (a call
        // names one reply stream), each at most SUBMIT_BATCH.
        let mut batches: Vec<Vec<usize>> = Vec::new();
        for (i, task) in tasks.iter().enumerate() {
            match batches.last_mut() {
                Some(batch)
                    if batch.len() < SUBMIT_BATCH
                        && tasks[batch[0]].class == task.class
                        && tasks[batch[0]].notice == task.notice =>
                {
                    batch.push(i)
                }
                _ => batches.push(vec![i]),
            }
        }
        let cmds: Vec<Cmd> = batches
            .iter()
            .map(|batch| {
                let first = &tasks[batch[0]];
                let reply = reply_to(first.class).filter(|_| first.notice);
                self.submit_batch_cmd(tasks, batch, producer, reply)
            })
            .collect();
        let replies = self.pipeline_replicated(&cmds).await?;
        if replies.len() != batches.len() {
            return Err(StoreError::Protocol {
                what: "submit_many",
                detail: format!("{} replies for {} calls", replies.len(), batches.len()),
            });
        }
        let mut out = Vec::with_capacity(tasks.len());
        for (batch, reply) in batches.iter().zip(replies) {
            let items = array(reply_ok(reply)?, "submit_many")?;
            if items.len() != batch.len() {
                return Err(StoreError::Protocol {
                    what: "submit_many",
                    detail: format!("{} replies for {} tasks", items.len(), batch.len()),
                });
            }
            for (&i, item) in batch.iter().zip(items) {
                out.push(parse_submitted(tasks[i].class, item));
            }
        }
        Ok(out)
    }

    /// The newest entry id of a stream, or `0-0` when it is empty or absent:
    /// the point a blocking read starts from to see only what comes next.
    pub async fn last_entry_id(&self, stream: &str) -> Result<String, StoreError> {
        let mut cmd = redis::cmd("XREVRANGE");
        cmd.arg(stream).arg("+").arg("-").arg("COUNT").arg(1);
        let entries = array(self.single(cmd).await?, "XREVRANGE")?;
        match entries.into_iter().next() {
            Some(entry) => {
                let id = array(entry, "XREVRANGE")?
                    .into_iter()
                    .next()
                    .unwrap_or(Value::Nil);
                text(id, "XREVRANGE")
            }
            None => Ok("0-0".to_owned()),
        }
    }

    /// The highest id ever deleted from a stream (by trimming or XDEL), or
    /// `None` when nothing was: a reader that had not read up to it lost
    /// entries.
    pub async fn max_deleted_entry_id(&self, stream: &str) -> Result<Option<String>, StoreError> {
        let mut cmd = redis::cmd("XINFO");
        cmd.arg("STREAM").arg(stream);
        let info = array(self.single(cmd).await?, "XINFO STREAM")?;
        let mut items = info.into_iter();
        while let (Some(name), Some(value)) = (items.next(), items.next()) {
            if text(name, "XINFO STREAM")? == "max-deleted-entry-id" {
                let id = text(value, "XINFO STREAM")?;
                return Ok((id != "0-0").then_some(id));
            }
        }
        Ok(None)
    }

    /// A task's parameters, from wherever they still are: its entry while
    /// it is queued or running, its retry hash while it waits for a retry,
    /// its dead letter once dead-lettered. `None` once it finished (the
    /// entry is deleted at its commit). The record does not keep a copy:
    /// a parameter blob over 64 bytes would turn every record from a
    /// compact listpack into a hash table (about 1.3 KB more per task, for
    /// `result_ttl_s`), and a large one would be kept twice.
    pub async fn task_params(&self, record: &TaskRecord) -> Result<Option<Vec<u8>>, StoreError> {
        let pick = |fields: crate::wire::Fields| {
            fields
                .into_iter()
                .find(|(name, _)| name == crate::wire::field::PARAMS.as_bytes())
                .map(|(_, value)| value)
        };
        if let Some(params) = &record.params {
            return Ok(Some(params.clone()));
        }
        let (Some(id), Some(class)) = (record.id, record.class) else {
            return Ok(None);
        };
        if let (Some(entry), Some(priority)) = (&record.entry, record.priority) {
            let mut cmd = redis::cmd("XRANGE");
            cmd.arg(self.keys.stream(class, priority))
                .arg(entry)
                .arg(entry);
            // An entry id the stream refuses reads as no entry.
            if let Ok(reply) = reply_ok(self.single(cmd).await?)
                && let Some(first) = array(reply, "XRANGE")?.into_iter().next()
            {
                let mut parts = array(first, "XRANGE")?.into_iter();
                let _id = parts.next();
                let fields = super::reply::fields(parts.next().unwrap_or(Value::Nil), "XRANGE")?;
                if let Some(params) = pick(fields) {
                    return Ok(Some(params));
                }
            }
        }
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(self.keys.retry(class, &id));
        let retry = super::reply::fields(self.single(cmd).await?, "HGETALL")?;
        if let Some(params) = pick(retry) {
            return Ok(Some(params));
        }
        if let Some(dead) = &record.dead_letter
            && let Some(letter) = self.dead_letter(dead).await?
        {
            return Ok(pick(letter.fields));
        }
        Ok(None)
    }

    /// Finds a task's record in whichever class holds it, in one call (in
    /// Cluster, one script per class, at once: the classes' slots differ).
    pub async fn find_record(&self, id: &TaskId) -> Result<Option<TaskRecord>, StoreError> {
        let groups: Vec<&[Class]> = if self.is_cluster() {
            Class::ALL.chunks(1).collect()
        } else {
            vec![Class::ALL]
        };
        let cmds: Vec<Cmd> = groups
            .iter()
            .map(|classes| {
                let mut call = scripts::FIND.invocation(self.events);
                for &class in *classes {
                    call = call.key(self.keys.task(class, id));
                }
                call.into_cmd()
            })
            .collect();
        for (classes, reply) in groups.iter().zip(self.pipeline(&cmds).await?) {
            let mut parts = array(reply_ok(reply)?, "find")?.into_iter();
            let index = int(parts.next().unwrap_or(Value::Nil), "find")?;
            let Some(class) = usize::try_from(index - 1).ok().and_then(|i| classes.get(i)) else {
                continue;
            };
            let map = hash_map(parts.next().unwrap_or(Value::Nil), "find")?;
            let mut record = TaskRecord::from_map(&map);
            record.id.get_or_insert(*id);
            record.class.get_or_insert(*class);
            return Ok(Some(record));
        }
        Ok(None)
    }

    /// The result blob of a finished task, when a notice left it out.
    pub async fn result_blob(
        &self,
        class: Class,
        id: &TaskId,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let mut cmd = redis::cmd("HGET");
        cmd.arg(self.keys.task(class, id))
            .arg(crate::wire::field::RESULT);
        match self.single(cmd).await? {
            Value::Nil => Ok(None),
            Value::BulkString(bytes) => Ok(Some(bytes)),
            other => Err(StoreError::protocol("HGET result", &other)),
        }
    }

    /// The shard results of a split task, in shard order; an error when
    /// any of its `shards` shards is missing.
    pub async fn split_parts(
        &self,
        class: Class,
        id: &TaskId,
        shards: u32,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(self.keys.parts(class, id));
        let map = hash_map(self.single(cmd).await?, "HGETALL parts")?;
        (0..shards)
            .map(|index| {
                map.get(index.to_string().as_bytes())
                    .cloned()
                    .ok_or_else(|| StoreError::Protocol {
                        what: "split parts",
                        detail: format!(
                            "shard {index} of {shards} of task {id} has no result ({} found)",
                            map.len()
                        ),
                    })
            })
            .collect()
    }

    /// Cancels a task, whichever class holds it.
    ///
    /// What the reply promises (cancel.lua decides it atomically against
    /// every claim, commit, split, retry and take-over, each one script):
    /// - [`CancelOutcome::Cancelled`]: the task is final as `cancelled` now;
    ///   it never starts (again), and no later commit changes its record.
    /// - [`CancelOutcome::Requested`]: the request is in the record; the
    ///   task ends `cancelled` (or `expired`, when its deadline passed
    ///   first), never `succeeded` or `failed`, whichever worker commits
    ///   it, after any take-over, hand-back or split.
    /// - [`CancelOutcome::AlreadyFinished`]: it had finished before the
    ///   cancel; that status stands.
    ///
    /// It is written like a submit, with `WAIT` when `redis_wait_replicas`
    /// is set, so an accepted cancel survives a failover as well as an
    /// accepted submit does; [`StoreError::NotReplicated`] says it might not.
    pub async fn cancel(&self, id: &TaskId) -> Result<CancelOutcome, StoreError> {
        let cmds: Vec<Cmd> = Class::ALL
            .iter()
            .map(|&class| {
                scripts::CANCEL
                    .invocation(self.events)
                    .key(self.keys.task(class, id))
                    .arg(self.keys.cancel_channel())
                    .arg(self.retention.result_ttl_s)
                    .arg(self.retention.reply_maxlen)
                    .arg(self.retention.reply_ttl_s)
                    .arg(id.to_string())
                    .into_cmd()
            })
            .collect();
        for reply in self.pipeline_replicated(&cmds).await? {
            let items = array(reply_ok(reply)?, "cancel")?;
            let mut items = items.into_iter();
            let word = text(items.next().unwrap_or(Value::Nil), "cancel")?;
            match word.as_str() {
                "not_found" => continue,
                "cancelled" => return Ok(CancelOutcome::Cancelled),
                "requested" => return Ok(CancelOutcome::Requested),
                "finished" => {
                    let status = text(items.next().unwrap_or(Value::Nil), "cancel")?;
                    let status = status.parse().map_err(|_| StoreError::Protocol {
                        what: "cancel",
                        detail: format!("unknown status {status:?}"),
                    })?;
                    return Ok(CancelOutcome::AlreadyFinished(status));
                }
                other => {
                    return Err(StoreError::Protocol {
                        what: "cancel",
                        detail: format!("unknown outcome {other:?}"),
                    });
                }
            }
        }
        Ok(CancelOutcome::NotFound)
    }
}

fn parse_submitted(class: Class, reply: Value) -> Result<Submitted, StoreError> {
    let items = array(reply_ok(reply)?, "submit")?;
    let mut items = items.into_iter();
    let id = text(items.next().unwrap_or(Value::Nil), "submit")?;
    let created = int(items.next().unwrap_or(Value::Nil), "submit")? == 1;
    let id = id.parse().map_err(|_| StoreError::Protocol {
        what: "submit",
        detail: format!("idempotency key names a non-task id {id:?}"),
    })?;
    Ok(Submitted { id, class, created })
}
