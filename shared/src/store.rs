//! The queue's Redis operations, typed: submit, claim, commit, cancel, read.
//!
//! Producers and workers never build queue commands themselves; they call
//! this module, which speaks through the scripts of [`crate::scripts`] and the
//! names of [`crate::keys`] and [`crate::wire`]. Operations that carry many
//! tasks go out as one pipeline, so a batch costs one round trip.

use std::collections::HashMap;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client, Cmd, Pipeline, RedisError, Value};

use crate::config::Config;
use crate::keys::{GROUP, Keys};
use crate::scripts::{self, ScriptError};
use crate::task::{Class, Priority, Status, TaskId};
use crate::wire::{Fields, Finish, NewTask, TaskRecord, WorkerInfo};

/// Requests that may wait for the shared connection at once.
const PIPELINE_BUFFER: usize = 8_192;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] RedisError),
    #[error(transparent)]
    Scripts(#[from] ScriptError),
    #[error("unexpected reply from Redis to {what}: {detail}")]
    Protocol { what: &'static str, detail: String },
}

impl StoreError {
    fn protocol(what: &'static str, value: &Value) -> Self {
        let mut detail = format!("{value:?}");
        detail.truncate(200);
        StoreError::Protocol { what, detail }
    }

    /// True when the error says a consumer group or its stream is missing
    /// (Redis was flushed or restarted without persistence).
    pub fn is_missing_group(&self) -> bool {
        match self {
            StoreError::Redis(err) => {
                err.code() == Some("NOGROUP") || err.to_string().contains("NOGROUP")
            }
            _ => false,
        }
    }
}

/// How long finished things stay in Redis, and how big notices get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    pub result_ttl_s: u64,
    pub idempotency_ttl_s: u64,
    pub reply_maxlen: u64,
    pub reply_ttl_s: u64,
    pub inline_result_bytes: usize,
}

impl From<&Config> for Retention {
    fn from(config: &Config) -> Self {
        Self {
            result_ttl_s: config.result_ttl_s,
            idempotency_ttl_s: config.idempotency_ttl_s,
            reply_maxlen: config.reply_maxlen,
            reply_ttl_s: config.reply_ttl_s,
            inline_result_bytes: config.inline_result_bytes,
        }
    }
}

/// What `submit` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Submitted {
    pub id: TaskId,
    pub class: Class,
    /// False when an idempotency key named an existing task, whose id this is.
    pub created: bool,
}

/// One task stream a worker reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRef {
    pub class: Class,
    pub priority: Priority,
    pub key: String,
}

/// A worker's request to claim tasks.
#[derive(Debug, Clone)]
pub struct ClaimRequest<'a> {
    /// Highest priority first.
    pub streams: &'a [StreamRef],
    pub consumer: &'a str,
    pub max: usize,
    pub device: &'a str,
    /// When non-zero, entries waiting this long (ms) are taken first.
    pub aging_ms: u64,
    /// Ask for the streams' newest ids should they run dry (to arm the
    /// blocking wait); not needed while a wait is armed.
    pub want_last_ids: bool,
}

/// What the claim script decided for one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Started on this worker: run it.
    Run,
    /// Past its deadline and not started: record it as expired.
    Expired,
    /// Its record is already final; the script acknowledged it.
    Skip,
    /// No readable task id: refuse it.
    Malformed,
}

/// One claimed entry.
#[derive(Debug, Clone)]
pub struct ClaimedEntry {
    pub stream: StreamRef,
    pub entry_id: String,
    pub verdict: Verdict,
    pub fields: Fields,
}

/// The result of one claim.
#[derive(Debug, Clone, Default)]
pub struct Claimed {
    pub entries: Vec<ClaimedEntry>,
    /// Present when the streams ran dry: the newest entry id of each stream,
    /// to wait from with a blocking `XREAD`.
    pub last_ids: Option<Vec<String>>,
}

/// A finished task to commit.
#[derive(Debug, Clone)]
pub struct Completion {
    pub id: TaskId,
    pub class: Class,
    pub priority: Priority,
    pub entry_id: String,
    pub reply_to: Option<String>,
    pub finish: Finish,
}

/// The outcome of committing one task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    /// The outcome is now the task's record.
    Written,
    /// The record was already final; this outcome was discarded.
    AlreadyFinal,
}

/// The outcome of a cancel request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    NotFound,
    /// It had already finished with this status.
    AlreadyFinished(Status),
    /// It was queued and will never run.
    Cancelled,
    /// It is running; its worker was told to stop it.
    Requested,
}

/// Counts for one task stream, for `tandem queues`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamStats {
    pub class: Class,
    pub priority: Priority,
    pub key: String,
    /// Entries not yet delivered to any worker.
    pub waiting: u64,
    /// Entries delivered and not yet acknowledged.
    pub pending: u64,
    pub consumers: u64,
    /// Age of the oldest waiting entry, by the Redis clock.
    pub oldest_waiting_ms: Option<u64>,
}

/// A connection to the queue.
#[derive(Clone)]
pub struct Store {
    client: Client,
    conn: ConnectionManager,
    keys: Keys,
    retention: Retention,
    blocking_timeout_margin_ms: u64,
    connect_timeout: std::time::Duration,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("keys", &self.keys)
            .field("retention", &self.retention)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Connects, and loads and verifies the scripts.
    pub async fn connect(config: &Config) -> Result<Self, StoreError> {
        let client = Client::open(config.redis_url.as_str())?;
        // Thousands of tasks share one connection. Its request queue holds
        // room for as many, so a caller that leaves a request future idle
        // (say, unpolled waits in a local set) cannot fill the queue and
        // stall everyone else; redis-rs's default is 50.
        let manager_config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(config.redis_timeout()))
            .set_connection_timeout(Some(config.connect_timeout()))
            .set_number_of_retries(3)
            .set_pipeline_buffer_size(PIPELINE_BUFFER);
        let mut conn = ConnectionManager::new_with_config(client.clone(), manager_config).await?;
        scripts::load_all(&mut conn).await?;
        Ok(Self {
            client,
            conn,
            keys: Keys::new(config.prefix.clone()),
            retention: Retention::from(config),
            blocking_timeout_margin_ms: config.redis_timeout_ms,
            connect_timeout: config.connect_timeout(),
        })
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn retention(&self) -> &Retention {
        &self.retention
    }

    /// The shared multiplexed connection, for commands outside the queue
    /// protocol (tests, the CLI's inspection views).
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// A dedicated connection for blocking reads that wait up to `block_ms`.
    /// Blocking commands must not share the multiplexed connection, where
    /// they would hold up every other command.
    pub async fn blocking_connection(&self, block_ms: u64) -> Result<BlockingConn, StoreError> {
        let timeout = std::time::Duration::from_millis(block_ms + self.blocking_timeout_margin_ms);
        let config = AsyncConnectionConfig::new()
            .set_response_timeout(Some(timeout))
            .set_connection_timeout(Some(self.connect_timeout));
        let conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        Ok(BlockingConn { conn })
    }

    /// A pub/sub connection.
    pub async fn pubsub(&self) -> Result<redis::aio::PubSub, StoreError> {
        Ok(self.client.get_async_pubsub().await?)
    }

    /// Runs commands as one pipeline and returns one reply per command; a
    /// command's own failure is a `Value::ServerError` in its place. When
    /// Redis lost the scripts (restart, flush) they are loaded and the
    /// pipeline runs once more: a NOSCRIPT reply means the call did nothing.
    pub async fn pipeline(&self, cmds: &[Cmd]) -> Result<Vec<Value>, StoreError> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = Pipeline::with_capacity(cmds.len());
        for cmd in cmds {
            pipe.add_command(cmd.clone());
        }
        pipe.ignore_errors();
        let mut conn = self.conn.clone();
        let replies: Vec<Value> = pipe.query_async(&mut conn).await?;
        let lost_scripts = replies
            .iter()
            .any(|v| matches!(v, Value::ServerError(e) if e.code() == "NOSCRIPT"));
        if !lost_scripts {
            return Ok(replies);
        }
        scripts::load_all(&mut conn).await?;
        Ok(pipe.query_async(&mut conn).await?)
    }

    async fn single(&self, cmd: Cmd) -> Result<Value, StoreError> {
        let reply = self
            .pipeline(std::slice::from_ref(&cmd))
            .await?
            .into_iter()
            .next()
            .unwrap_or(Value::Nil);
        reply_ok(reply)
    }

    // ----------------------------------------------------------- producers

    fn submit_cmd(&self, task: &NewTask, producer: &str, reply_to: Option<&str>) -> Cmd {
        let mut call = scripts::SUBMIT
            .invocation()
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

    /// Submits tasks in one round trip. Each returned item matches the task
    /// at the same position; one task's failure does not fail the others.
    pub async fn submit_many(
        &self,
        tasks: &[NewTask],
        producer: &str,
        reply_to: Option<&str>,
    ) -> Result<Vec<Result<Submitted, StoreError>>, StoreError> {
        let cmds: Vec<Cmd> = tasks
            .iter()
            .map(|t| self.submit_cmd(t, producer, reply_to))
            .collect();
        let replies = self.pipeline(&cmds).await?;
        if replies.len() != tasks.len() {
            return Err(StoreError::Protocol {
                what: "submit",
                detail: format!("{} replies for {} tasks", replies.len(), tasks.len()),
            });
        }
        Ok(tasks
            .iter()
            .zip(replies)
            .map(|(task, reply)| parse_submitted(task.class, reply))
            .collect())
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

    /// Finds a task's record in whichever class holds it, in one call.
    pub async fn find_record(&self, id: &TaskId) -> Result<Option<TaskRecord>, StoreError> {
        let mut call = scripts::FIND.invocation();
        for &class in Class::ALL {
            call = call.key(self.keys.task(class, id));
        }
        let mut parts = array(self.single(call.into_cmd()).await?, "find")?.into_iter();
        let index = int(parts.next().unwrap_or(Value::Nil), "find")?;
        let Some(class) = usize::try_from(index - 1)
            .ok()
            .and_then(|i| Class::ALL.get(i))
        else {
            return Ok(None);
        };
        let map = hash_map(parts.next().unwrap_or(Value::Nil), "find")?;
        let mut record = TaskRecord::from_map(&map);
        record.id.get_or_insert(*id);
        record.class.get_or_insert(*class);
        Ok(Some(record))
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

    /// Cancels a task, whichever class holds it.
    pub async fn cancel(&self, id: &TaskId) -> Result<CancelOutcome, StoreError> {
        let cmds: Vec<Cmd> = Class::ALL
            .iter()
            .map(|&class| {
                scripts::CANCEL
                    .invocation()
                    .key(self.keys.task(class, id))
                    .arg(self.keys.cancel_channel())
                    .arg(self.retention.result_ttl_s)
                    .arg(self.retention.reply_maxlen)
                    .arg(self.retention.reply_ttl_s)
                    .arg(id.to_string())
                    .arg(self.keys.reply(""))
                    .into_cmd()
            })
            .collect();
        for reply in self.pipeline(&cmds).await? {
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

    // ------------------------------------------------------------- workers

    /// Creates the consumer group on each stream (and the stream) if missing.
    /// Groups start at id 0 so tasks submitted before any worker existed run.
    pub async fn ensure_groups(&self, streams: &[StreamRef]) -> Result<(), StoreError> {
        let cmds: Vec<Cmd> = streams
            .iter()
            .map(|s| {
                let mut cmd = redis::cmd("XGROUP");
                cmd.arg("CREATE")
                    .arg(&s.key)
                    .arg(GROUP)
                    .arg("0")
                    .arg("MKSTREAM");
                cmd
            })
            .collect();
        for reply in self.pipeline(&cmds).await? {
            match reply {
                Value::ServerError(e) if e.code() == "BUSYGROUP" => {}
                other => {
                    reply_ok(other)?;
                }
            }
        }
        Ok(())
    }

    fn claim_cmd(&self, request: &ClaimRequest<'_>) -> Cmd {
        let mut call = scripts::CLAIM.invocation();
        for stream in request.streams {
            call = call.key(&stream.key);
        }
        call.arg(GROUP)
            .arg(request.consumer)
            .arg(request.max)
            .arg(request.device)
            .arg(request.aging_ms)
            .arg(if request.want_last_ids { "1" } else { "0" })
            .into_cmd()
    }

    fn complete_cmd(&self, completion: &Completion) -> Cmd {
        let mut call = scripts::COMPLETE
            .invocation()
            .key(self.keys.task(completion.class, &completion.id))
            .key(self.keys.stream(completion.class, completion.priority));
        if let Some(reply_to) = &completion.reply_to
            && self.keys.is_reply(reply_to)
        {
            call = call.key(reply_to);
        }
        call = call
            .arg(GROUP)
            .arg(&completion.entry_id)
            .arg(self.retention.result_ttl_s)
            .arg(self.retention.reply_maxlen)
            .arg(self.retention.reply_ttl_s)
            .arg(self.retention.inline_result_bytes)
            .arg(completion.id.to_string())
            .arg(completion.finish.status.as_str());
        for (name, value) in completion.finish.record_pairs() {
            call = call.arg(name).arg(value);
        }
        call.into_cmd()
    }

    /// Commits finished tasks and, when asked, claims new ones, in one round
    /// trip: the commits go first, so the slots they free are claimed at once.
    pub async fn commit_and_claim(
        &self,
        completions: &[Completion],
        claim: Option<&ClaimRequest<'_>>,
    ) -> Result<
        (
            Vec<Result<Committed, StoreError>>,
            Option<Result<Claimed, StoreError>>,
        ),
        StoreError,
    > {
        let mut cmds: Vec<Cmd> = completions.iter().map(|c| self.complete_cmd(c)).collect();
        if let Some(request) = claim {
            cmds.push(self.claim_cmd(request));
        }
        let mut replies = self.pipeline(&cmds).await?;
        if replies.len() != cmds.len() {
            return Err(StoreError::Protocol {
                what: "commit and claim",
                detail: format!("{} replies for {} commands", replies.len(), cmds.len()),
            });
        }
        let claimed = claim.map(|request| {
            let reply = replies.pop().unwrap_or(Value::Nil);
            reply_ok(reply).and_then(|v| parse_claimed(v, request.streams))
        });
        let commits = replies
            .into_iter()
            .map(|reply| match reply_ok(reply)? {
                Value::Int(1) => Ok(Committed::Written),
                Value::Int(0) => Ok(Committed::AlreadyFinal),
                other => Err(StoreError::protocol("complete", &other)),
            })
            .collect();
        Ok((commits, claimed))
    }

    /// Acknowledges and deletes an entry that cannot be turned into a task.
    pub async fn discard(&self, stream: &StreamRef, entry_id: &str) -> Result<(), StoreError> {
        let mut ack = redis::cmd("XACK");
        ack.arg(&stream.key).arg(GROUP).arg(entry_id);
        let mut del = redis::cmd("XDEL");
        del.arg(&stream.key).arg(entry_id);
        for reply in self.pipeline(&[ack, del]).await? {
            reply_ok(reply)?;
        }
        Ok(())
    }

    /// Writes a worker's registry record with a TTL and adds it to the set.
    pub async fn heartbeat(&self, info: &WorkerInfo, ttl_ms: u64) -> Result<(), StoreError> {
        let key = self.keys.worker(&info.id);
        let mut hset = redis::cmd("HSET");
        hset.arg(&key);
        for (name, value) in info.to_pairs() {
            hset.arg(name).arg(value);
        }
        let mut expire = redis::cmd("PEXPIRE");
        expire.arg(&key).arg(ttl_ms);
        let mut sadd = redis::cmd("SADD");
        sadd.arg(self.keys.workers()).arg(&info.id);
        for reply in self.pipeline(&[hset, expire, sadd]).await? {
            reply_ok(reply)?;
        }
        Ok(())
    }

    /// Removes a worker's registry record.
    pub async fn deregister(&self, worker_id: &str) -> Result<(), StoreError> {
        let mut del = redis::cmd("DEL");
        del.arg(self.keys.worker(worker_id));
        let mut srem = redis::cmd("SREM");
        srem.arg(self.keys.workers()).arg(worker_id);
        for reply in self.pipeline(&[del, srem]).await? {
            reply_ok(reply)?;
        }
        Ok(())
    }

    /// The live workers' records. Ids whose record expired are dropped from
    /// the set on the way.
    pub async fn workers(&self) -> Result<Vec<WorkerInfo>, StoreError> {
        let mut members = redis::cmd("SMEMBERS");
        members.arg(self.keys.workers());
        let ids: Vec<String> = array(self.single(members).await?, "SMEMBERS")?
            .into_iter()
            .map(|v| text(v, "SMEMBERS"))
            .collect::<Result<_, _>>()?;
        let cmds: Vec<Cmd> = ids
            .iter()
            .map(|id| {
                let mut cmd = redis::cmd("HGETALL");
                cmd.arg(self.keys.worker(id));
                cmd
            })
            .collect();
        let mut live = Vec::new();
        let mut gone = Vec::new();
        for (id, reply) in ids.iter().zip(self.pipeline(&cmds).await?) {
            let map = hash_map(reply_ok(reply)?, "HGETALL")?;
            if map.is_empty() {
                gone.push(id.clone());
            } else {
                let map: HashMap<String, String> = map
                    .into_iter()
                    .map(|(k, v)| {
                        (
                            String::from_utf8_lossy(&k).into_owned(),
                            String::from_utf8_lossy(&v).into_owned(),
                        )
                    })
                    .collect();
                live.push(WorkerInfo::from_map(&map));
            }
        }
        if !gone.is_empty() {
            let mut srem = redis::cmd("SREM");
            srem.arg(self.keys.workers()).arg(&gone);
            self.single(srem).await?;
        }
        live.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(live)
    }

    /// Deletes every key under this store's prefix (demo and benchmark runs
    /// clean up after themselves with it). Returns how many were deleted.
    pub async fn purge_prefix(&self) -> Result<u64, StoreError> {
        let mut conn = self.conn.clone();
        let pattern = format!("{}:*", self.keys.prefix());
        let mut cursor: u64 = 0;
        let mut deleted = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1_000)
                .query_async(&mut conn)
                .await?;
            if !keys.is_empty() {
                let n: u64 = redis::cmd("UNLINK")
                    .arg(&keys)
                    .query_async(&mut conn)
                    .await?;
                deleted += n;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }

    /// Depth, pending count, consumers and oldest waiting age per stream.
    pub async fn queue_stats(&self, classes: &[Class]) -> Result<Vec<StreamStats>, StoreError> {
        let streams = self.keys.streams_in_claim_order(classes);
        let mut cmds = vec![redis::cmd("TIME")];
        for (_, _, key) in &streams {
            let mut xlen = redis::cmd("XLEN");
            xlen.arg(key);
            let mut groups = redis::cmd("XINFO");
            groups.arg("GROUPS").arg(key);
            cmds.push(xlen);
            cmds.push(groups);
        }
        let mut replies = self.pipeline(&cmds).await?.into_iter();
        let now_ms = server_time_ms(reply_ok(replies.next().unwrap_or(Value::Nil))?)?;

        let mut stats = Vec::new();
        let mut next_waiting = Vec::new();
        for (class, priority, key) in streams {
            let length = int(reply_ok(replies.next().unwrap_or(Value::Nil))?, "XLEN")?;
            let (pending, consumers, last_delivered) = match replies.next().unwrap_or(Value::Nil) {
                // A stream no worker has created yet has no groups.
                Value::ServerError(_) => (0, 0, None),
                reply => group_info(reply_ok(reply)?)?,
            };
            let length = u64::try_from(length).unwrap_or(0);
            let waiting = length.saturating_sub(pending);
            if waiting > 0 {
                let mut range = redis::cmd("XRANGE");
                let start = last_delivered.map_or_else(|| "-".to_owned(), |id| format!("({id}"));
                range.arg(&key).arg(start).arg("+").arg("COUNT").arg(1);
                next_waiting.push((stats.len(), range));
            }
            stats.push(StreamStats {
                class,
                priority,
                key,
                waiting,
                pending,
                consumers,
                oldest_waiting_ms: None,
            });
        }
        let cmds: Vec<Cmd> = next_waiting.iter().map(|(_, c)| c.clone()).collect();
        let replies = self.pipeline(&cmds).await?;
        for ((index, _), reply) in next_waiting.iter().zip(replies) {
            let entries = array(reply_ok(reply)?, "XRANGE")?;
            if let Some(entry) = entries.into_iter().next() {
                let id = array(entry, "XRANGE")?
                    .into_iter()
                    .next()
                    .unwrap_or(Value::Nil);
                let id = text(id, "XRANGE")?;
                let added_ms: u64 = id
                    .split('-')
                    .next()
                    .and_then(|ms| ms.parse().ok())
                    .unwrap_or(now_ms);
                stats[*index].oldest_waiting_ms = Some(now_ms.saturating_sub(added_ms));
            }
        }
        Ok(stats)
    }
}

/// A connection reserved for blocking reads.
#[derive(Clone)]
pub struct BlockingConn {
    conn: MultiplexedConnection,
}

impl std::fmt::Debug for BlockingConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BlockingConn")
    }
}

/// Entries returned by a blocking read, per stream: (stream key, entries).
pub type StreamRead = Vec<(String, Vec<(String, Fields)>)>;

impl BlockingConn {
    /// `XREAD BLOCK block_ms COUNT count STREAMS keys... ids...`: waits until
    /// an entry newer than `ids` arrives in any of `keys`, or the time is up
    /// (an empty result).
    pub async fn xread(
        &mut self,
        keys: &[String],
        ids: &[String],
        block_ms: u64,
        count: usize,
    ) -> Result<StreamRead, StoreError> {
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(block_ms)
            .arg("STREAMS");
        cmd.arg(keys).arg(ids);
        let reply: Value = cmd.query_async(&mut self.conn).await?;
        parse_stream_read(reply)
    }
}

// ------------------------------------------------------------------ replies

fn reply_ok(value: Value) -> Result<Value, StoreError> {
    match value {
        Value::ServerError(err) => Err(StoreError::Redis(err.into())),
        other => Ok(other),
    }
}

fn array(value: Value, what: &'static str) -> Result<Vec<Value>, StoreError> {
    match value {
        Value::Array(items) | Value::Set(items) => Ok(items),
        Value::Nil => Ok(Vec::new()),
        other => Err(StoreError::protocol(what, &other)),
    }
}

fn bytes(value: Value, what: &'static str) -> Result<Vec<u8>, StoreError> {
    match value {
        Value::BulkString(bytes) => Ok(bytes),
        Value::SimpleString(text) => Ok(text.into_bytes()),
        Value::Int(n) => Ok(n.to_string().into_bytes()),
        other => Err(StoreError::protocol(what, &other)),
    }
}

fn text(value: Value, what: &'static str) -> Result<String, StoreError> {
    let raw = bytes(value, what)?;
    String::from_utf8(raw).map_err(|e| StoreError::Protocol {
        what,
        detail: format!("not UTF-8: {e}"),
    })
}

fn int(value: Value, what: &'static str) -> Result<i64, StoreError> {
    match value {
        Value::Int(n) => Ok(n),
        Value::BulkString(_) | Value::SimpleString(_) => {
            let t = text(value, what)?;
            t.parse().map_err(|_| StoreError::Protocol {
                what,
                detail: format!("not an integer: {t:?}"),
            })
        }
        other => Err(StoreError::protocol(what, &other)),
    }
}

fn hash_map(value: Value, what: &'static str) -> Result<HashMap<Vec<u8>, Vec<u8>>, StoreError> {
    match value {
        Value::Map(pairs) => pairs
            .into_iter()
            .map(|(k, v)| Ok((bytes(k, what)?, bytes(v, what)?)))
            .collect(),
        other => fields(other, what).map(|f| f.into_iter().collect()),
    }
}

/// A flat `[name, value, name, value, ...]` array as pairs.
fn fields(value: Value, what: &'static str) -> Result<Fields, StoreError> {
    let items = array(value, what)?;
    if items.len() % 2 != 0 {
        return Err(StoreError::Protocol {
            what,
            detail: format!("odd number of field items: {}", items.len()),
        });
    }
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut items = items.into_iter();
    while let (Some(name), Some(value)) = (items.next(), items.next()) {
        out.push((bytes(name, what)?, bytes(value, what)?));
    }
    Ok(out)
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

fn parse_claimed(reply: Value, streams: &[StreamRef]) -> Result<Claimed, StoreError> {
    let mut parts = array(reply, "claim")?.into_iter();
    let entries = array(parts.next().unwrap_or(Value::Nil), "claim")?;
    let last_ids = array(parts.next().unwrap_or(Value::Nil), "claim")?;
    let mut claimed = Claimed {
        entries: Vec::with_capacity(entries.len()),
        last_ids: None,
    };
    for entry in entries {
        let mut items = array(entry, "claim")?.into_iter();
        let index = int(items.next().unwrap_or(Value::Nil), "claim")?;
        let stream = usize::try_from(index - 1)
            .ok()
            .and_then(|i| streams.get(i))
            .ok_or_else(|| StoreError::Protocol {
                what: "claim",
                detail: format!("stream index {index} out of range"),
            })?;
        let entry_id = text(items.next().unwrap_or(Value::Nil), "claim")?;
        let verdict = match text(items.next().unwrap_or(Value::Nil), "claim")?.as_str() {
            "run" => Verdict::Run,
            "expired" => Verdict::Expired,
            "skip" => Verdict::Skip,
            "malformed" => Verdict::Malformed,
            other => {
                return Err(StoreError::Protocol {
                    what: "claim",
                    detail: format!("unknown verdict {other:?}"),
                });
            }
        };
        let fields = fields(items.next().unwrap_or(Value::Nil), "claim")?;
        claimed.entries.push(ClaimedEntry {
            stream: stream.clone(),
            entry_id,
            verdict,
            fields,
        });
    }
    if !last_ids.is_empty() {
        let ids = last_ids
            .into_iter()
            .map(|v| text(v, "claim"))
            .collect::<Result<Vec<_>, _>>()?;
        claimed.last_ids = Some(ids);
    }
    Ok(claimed)
}

fn parse_stream_read(reply: Value) -> Result<StreamRead, StoreError> {
    let streams = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Map(pairs) => pairs,
        other => array(other, "XREAD")?
            .into_iter()
            .map(|stream| {
                let mut parts = array(stream, "XREAD")?.into_iter();
                Ok((
                    parts.next().unwrap_or(Value::Nil),
                    parts.next().unwrap_or(Value::Nil),
                ))
            })
            .collect::<Result<_, StoreError>>()?,
    };
    streams
        .into_iter()
        .map(|(key, entries)| {
            let key = text(key, "XREAD")?;
            let entries = array(entries, "XREAD")?
                .into_iter()
                .map(|entry| {
                    let mut parts = array(entry, "XREAD")?.into_iter();
                    let id = text(parts.next().unwrap_or(Value::Nil), "XREAD")?;
                    let fields = fields(parts.next().unwrap_or(Value::Nil), "XREAD")?;
                    Ok((id, fields))
                })
                .collect::<Result<_, StoreError>>()?;
            Ok((key, entries))
        })
        .collect()
}

fn server_time_ms(reply: Value) -> Result<u64, StoreError> {
    let mut parts = array(reply, "TIME")?.into_iter();
    let secs = int(parts.next().unwrap_or(Value::Nil), "TIME")?;
    let micros = int(parts.next().unwrap_or(Value::Nil), "TIME")?;
    Ok(u64::try_from(secs * 1000 + micros / 1000).unwrap_or(0))
}

/// (pending, consumers, last delivered id) of the `workers` group.
fn group_info(reply: Value) -> Result<(u64, u64, Option<String>), StoreError> {
    for group in array(reply, "XINFO GROUPS")? {
        let info = hash_map(group, "XINFO GROUPS")?;
        let get = |name: &str| {
            info.get(name.as_bytes())
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        if get("name").as_deref() == Some(GROUP) {
            let pending = get("pending").and_then(|v| v.parse().ok()).unwrap_or(0);
            let consumers = get("consumers").and_then(|v| v.parse().ok()).unwrap_or(0);
            return Ok((pending, consumers, get("last-delivered-id")));
        }
    }
    Ok((0, 0, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn claim_replies_parse() {
        let streams = vec![StreamRef {
            class: Class::Cpu,
            priority: Priority::High,
            key: "t:{cpu}:stream:high".into(),
        }];
        let reply = Value::Array(vec![
            Value::Array(vec![Value::Array(vec![
                Value::Int(1),
                bulk("1-0"),
                bulk("run"),
                Value::Array(vec![bulk("id"), bulk("x")]),
            ])]),
            Value::Array(vec![bulk("1-0")]),
        ]);
        let claimed = parse_claimed(reply, &streams).unwrap();
        assert_eq!(claimed.entries.len(), 1);
        assert_eq!(claimed.entries[0].verdict, Verdict::Run);
        assert_eq!(
            claimed.entries[0].fields,
            vec![(b"id".to_vec(), b"x".to_vec())]
        );
        assert_eq!(claimed.last_ids, Some(vec!["1-0".to_owned()]));

        let out_of_range = Value::Array(vec![
            Value::Array(vec![Value::Array(vec![
                Value::Int(2),
                bulk("1-0"),
                bulk("run"),
                Value::Array(vec![]),
            ])]),
            Value::Array(vec![]),
        ]);
        assert!(parse_claimed(out_of_range, &streams).is_err());
        assert!(parse_claimed(bulk("garbage"), &streams).is_err());
    }

    #[test]
    fn odd_field_lists_are_protocol_errors() {
        let err = fields(Value::Array(vec![bulk("a")]), "test").unwrap_err();
        assert!(matches!(err, StoreError::Protocol { .. }));
    }
}
