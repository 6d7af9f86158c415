//! The queue's Redis operations, typed: submit, claim, commit, cancel, read.
//!
//! Producers and workers never build queue commands themselves; they call
//! this module, which speaks through the scripts of [`crate::scripts`] and the
//! names of [`crate::keys`] and [`crate::wire`]. Operations that carry many
//! tasks go out as one pipeline, so a batch costs one round trip.
//!
//! - `tasks`: what producers do (submit, find, cancel).
//! - `claim`, `commit`, `lease`: what workers do (claim tasks, commit
//!   their outcomes, extend and hand back leases), put together one round
//!   trip at a time by `round_trip`.
//! - `workers`: the worker registry: heartbeats, live workers, and which
//!   workers are gone.
//! - `alerts`: the alerts stream, the fleet-wide alert locks and the
//!   dead-letter counts they compare.
//! - `dead`: the dead-letter streams.
//! - `data_loss`: telling that Redis lost its data (the canaries), and the
//!   record of the last loss.
//! - `flow`: flow control: promoting due delayed tasks, pauses, rate
//!   limits, a class's flow state.
//! - `events`: the lifecycle events streams, read from a point or followed;
//!   a running task's progress (`progress.lua`).
//! - `model_registry`: the model registry (records, uploaded files).
//! - `schedules`: recurring schedules: put, pause, resume, remove, list,
//!   the due ones, and firing a tick (fire.lua).
//! - `index`: the state index: recent tasks by state (running, succeeded,
//!   failed, cancelled, expired, dead) for `tandem tasks --status` and the
//!   dashboard.
//! - `workflow`: workflows: submit one as a unit, read its state, cancel
//!   it; `workflow_index`: the recent workflows (summaries, for the
//!   dashboard).
//! - `queue_metrics`: the queues for Prometheus, read without a scan.
//! - `stats`: queue depths for the CLI, streams no worker reads; key
//!   clean-up.
//! - `reply`: typed reading of Redis replies.
//! - `link`: the connection under the store: one server, the master a
//!   Sentinel names, or a Cluster (pipelines cut per slot); `WAIT`.

mod alerts;
mod claim;
mod commit;
mod data_loss;
mod dead;
mod events;
mod flow;
mod index;
mod lease;
mod link;
mod model_registry;
mod queue_metrics;
mod reply;
mod round_trip;
mod schedules;
mod stats;
mod tasks;
mod workers;
mod workflow;
mod workflow_index;

use std::sync::Arc;
use std::time::Duration;

use redis::{Cmd, RedisError, Value};

use crate::backoff::{RECONNECT, Retries};
use crate::config::Config;
use crate::keys::Keys;
use crate::scripts::{self, ScriptError};
use crate::task::{Class, Priority};
use crate::wire::Fields;
use link::Link;

pub use alerts::{ALERTS_MAXLEN, Alert, AlertEntry, AlertName, DeadGrowth};
pub use claim::{Blocked, ClaimRequest, Claimed, ClaimedEntry, DeadConsumer, Verdict};
pub use commit::{Committed, Completion, Disposition};
pub use data_loss::{ClassData, DataCheck, DataLoss};
pub use dead::DeadLetter;
pub use events::{EventCursor, PROGRESS_MSG_MAX, ProgressError, check_progress};
pub use flow::{FlowState, LimitState, PROMOTE_BATCH, Promoted};
pub use index::{INDEX_MAX, IndexState, Indexed};
pub use link::Conn;
pub use model_registry::{
    MAX_MODEL_NAME, ModelArch, ModelInfo, ModelPolicy, ModelSource, ModelStoreError,
    check_model_name,
};
pub use queue_metrics::{ClassCounts, QueueSnapshot};
pub use round_trip::{Trip, TripResult};
pub use schedules::{Changed, DUE_BATCH, Due, Fired, Put, ScheduleChange};
pub use stats::{ScanPosition, StreamStats, UnknownStream};
pub use tasks::{CancelOutcome, SUBMIT_BATCH, Submitted};
pub use workers::{Consumer, ProcessRef};
pub use workflow::{GraphEntry, NewNode, NewWorkflow, NodeState, WorkflowCancel, WorkflowState};
pub use workflow_index::{RECENT_WORKFLOWS_MAX, WorkflowSummary};

use reply::reply_ok;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] RedisError),
    #[error(transparent)]
    Scripts(#[from] ScriptError),
    #[error("unexpected reply from Redis to {what}: {detail}")]
    Protocol { what: &'static str, detail: String },
    /// `WAIT` heard from fewer replicas than `redis_wait_replicas` within
    /// `redis_wait_timeout_ms`. The write happened on the master; a failover
    /// now could lose it.
    #[error(
        "written, but only {acked} of {wanted} replicas confirmed it in time (redis_wait_replicas); \
         a failover could lose it"
    )]
    NotReplicated { acked: u32, wanted: u32 },
    /// A progress report out of bounds (checked before it is sent).
    #[error(transparent)]
    BadProgress(#[from] ProgressError),
}

impl StoreError {
    fn protocol(what: &'static str, value: &Value) -> Self {
        let mut detail = format!("{value:?}");
        detail.truncate(200);
        StoreError::Protocol { what, detail }
    }

    /// The same error again, for each task of a commit batch that failed as
    /// a whole (the Redis error kept as it is, so that its code still
    /// tells what happened; the others by their message).
    pub(super) fn duplicate(&self) -> Self {
        match self {
            StoreError::Redis(err) => StoreError::Redis(err.clone()),
            StoreError::Protocol { what, detail } => StoreError::Protocol {
                what,
                detail: detail.clone(),
            },
            other => StoreError::Protocol {
                what: "commit",
                detail: other.to_string(),
            },
        }
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

    /// True when the error is the connection's, not the command's: Redis
    /// unreachable, restarting, or too slow. Such a call may be retried.
    ///
    /// Loading the scripts counts too: a restart can break the connection
    /// (a broken pipe) or answer `LOADING` while they are loaded, and
    /// `SCRIPT LOAD` changes nothing a retry could repeat wrongly.
    pub fn is_connection(&self) -> bool {
        match self {
            StoreError::Redis(err) => is_connection_error(err),
            StoreError::Scripts(ScriptError::Load { source, .. }) => is_connection_error(source),
            _ => false,
        }
    }
}

/// True when a Redis error is the connection's or the server's state
/// (unreachable, restarting, loading its data, failing over), not the
/// command's.
fn is_connection_error(err: &RedisError) -> bool {
    // A TLS peer whose certificate fails verification fails the same way
    // every time; rustls says so in every such error's text (it reaches us
    // as an I/O error of its own kind only).
    if err.is_io_error() && err.to_string().contains("invalid peer certificate") {
        return false;
    }
    err.is_io_error()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || err.is_timeout()
        || err.kind() == redis::ErrorKind::ClusterConnectionNotFound
        || err.code().is_some_and(is_unavailable_code)
        || is_wait_on_replica(err)
}

/// `WAIT` sent to a replica: `ERR WAIT cannot be used with replica
/// instances`. The connection reached a master that was demoted (a Sentinel
/// failover), like `READONLY`, which a write there would have answered
/// unless a script caught it first.
fn is_wait_on_replica(err: &RedisError) -> bool {
    err.code() == Some("ERR")
        && err
            .detail()
            .is_some_and(|d| d.starts_with("WAIT cannot be used with replica"))
}

/// Server replies that say the server did not run the command because it
/// cannot serve now: loading its dataset after a restart (`LOADING`), a
/// replica that lost its master, a cluster mid-change, or a former master
/// that became a replica. Such a command did nothing, so it may be sent
/// again.
pub(crate) fn is_unavailable_code(code: &str) -> bool {
    matches!(
        code,
        "LOADING" | "MASTERDOWN" | "TRYAGAIN" | "READONLY" | "CLUSTERDOWN"
    )
}

/// True when a Redis Cluster reply says the command's slot is moving
/// between masters, so the command did not run there and will run once it
/// is sent where the slot is (`MOVED`, `ASK`) or once the keys it needs are
/// together again (`TRYAGAIN`), and, for a Lua script, that it met a key
/// that had already moved (Redis stops the script at that call, which it
/// reports as an `ERR`). Such a script may have done its first writes:
/// every queue operation is safe to repeat (see `Store::submit_many`), but
/// a claim stopped after reading entries leaves them pending until their
/// lease runs out (docs/operations.md, "Resharding").
pub(crate) fn is_slot_moving(code: &str, detail: &str) -> bool {
    matches!(code, "MOVED" | "ASK" | "TRYAGAIN")
        || ([
            // Redis 7: a key of the script's slot that is not here.
            "attempted to access a non local key",
            // A key not declared to EVAL, mid-migration.
            "undeclared keys were accessed during rehashing",
            "attempted to access a slot not served",
            "while the cluster is down",
        ]
        .iter()
        .any(|text| detail.contains(text)))
}

/// A reply in a command's place that says the cluster cannot serve it now
/// (its slot is moving, or its master is failing over or loading): sent
/// again, it will run.
pub(crate) fn is_retryable_reply(err: &redis::ServerError) -> bool {
    is_unavailable_code(err.code()) || is_slot_moving(err.code(), err.details().unwrap_or(""))
}

/// [`is_retryable_reply`] for an error redis-rs returned after its own
/// retries (it follows `MOVED` and `ASK` and waits out `TRYAGAIN` a few
/// times first).
pub(crate) fn is_retryable_redirect(err: &RedisError) -> bool {
    err.code().is_some_and(|code| {
        is_unavailable_code(code) || is_slot_moving(code, err.detail().unwrap_or(""))
    })
}

/// How long finished things stay in Redis, and how big notices get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    pub result_ttl_s: u64,
    pub idempotency_ttl_s: u64,
    pub reply_maxlen: u64,
    pub reply_ttl_s: u64,
    pub inline_result_bytes: usize,
    pub dead_letter_maxlen: u64,
}

impl From<&Config> for Retention {
    fn from(config: &Config) -> Self {
        Self {
            result_ttl_s: config.result_ttl_s,
            idempotency_ttl_s: config.idempotency_ttl_s,
            reply_maxlen: config.reply_maxlen,
            reply_ttl_s: config.reply_ttl_s,
            inline_result_bytes: config.inline_result_bytes,
            dead_letter_maxlen: config.dead_letter_maxlen,
        }
    }
}

/// One task stream a worker reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRef {
    pub class: Class,
    pub priority: Priority,
    pub key: String,
}

/// A connection to the queue.
#[derive(Clone)]
pub struct Store {
    link: Arc<Link>,
    keys: Keys,
    retention: Retention,
    blocking_timeout_margin_ms: u64,
    /// Whether the scripts this store calls write lifecycle events
    /// (setting `events`): it picks each script's variant.
    events: bool,
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
    /// Connects (to the server, the master Sentinel names, or the cluster
    /// `redis_url` names), and loads and verifies the scripts.
    pub async fn connect(config: &Config) -> Result<Self, StoreError> {
        let link = Link::open(config).await?;
        scripts::load_all(&mut link.conn()).await?;
        Ok(Self {
            link: Arc::new(link),
            keys: Keys::new(config.prefix.clone()),
            retention: Retention::from(config),
            blocking_timeout_margin_ms: config.redis_timeout_ms,
            events: config.events,
        })
    }

    /// [`Store::connect`], retried while Redis is unreachable or not ready
    /// (not started yet, restarting, loading its data) for up to
    /// `reconnect_timeout_ms`, as producer calls are: a producer started
    /// with (or just before) its Redis waits for it. Errors no retry can
    /// fix (a bad URL, a wrong password, a script Redis altered) return at
    /// once, as does the last error once the time is up.
    pub async fn connect_retrying(config: &Config) -> Result<Self, StoreError> {
        let timeout = Duration::from_millis(config.reconnect_timeout_ms);
        retry_connection(timeout, &config.redis_url_redacted(), || {
            Self::connect(config)
        })
        .await
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn retention(&self) -> &Retention {
        &self.retention
    }

    /// True when Redis is a cluster: calls that name keys of several
    /// classes go out as one call per class (one slot each).
    pub fn is_cluster(&self) -> bool {
        self.link.is_cluster()
    }

    /// The shared multiplexed connection, for commands outside the queue
    /// protocol (tests, the CLI's inspection views). In Cluster, a command
    /// or an atomic pipeline must stay within one slot.
    pub fn connection(&self) -> Conn {
        self.link.conn()
    }

    /// A dedicated connection for blocking reads that wait up to `block_ms`.
    /// Blocking commands must not share the multiplexed connection, where
    /// they would hold up every other command.
    pub async fn blocking_connection(&self, block_ms: u64) -> Result<BlockingConn, StoreError> {
        let timeout = Duration::from_millis(block_ms + self.blocking_timeout_margin_ms);
        Ok(BlockingConn {
            inner: self.link.blocking(timeout).await?,
        })
    }

    /// A pub/sub connection.
    pub async fn pubsub(&self) -> Result<redis::aio::PubSub, StoreError> {
        self.link.pubsub().await
    }

    /// Runs commands as one pipeline (in Cluster, one per slot, at once) and
    /// returns one reply per command; a command's own failure is a
    /// `Value::ServerError` in its place. When Redis lost the scripts
    /// (restart, flush, failover) they are loaded and the pipeline runs once
    /// more: a NOSCRIPT reply means the call did nothing.
    pub async fn pipeline(&self, cmds: &[Cmd]) -> Result<Vec<Value>, StoreError> {
        self.link.run(cmds, false).await
    }

    /// [`Store::pipeline`], then `WAIT redis_wait_replicas` when that is set:
    /// an `Ok` means the replicas have the writes too.
    /// [`StoreError::NotReplicated`] when too few confirmed in time.
    pub async fn pipeline_replicated(&self, cmds: &[Cmd]) -> Result<Vec<Value>, StoreError> {
        self.link.run(cmds, true).await
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
}

/// Runs `op` until it succeeds, fails for a reason other than the
/// connection ([`StoreError::is_connection`]), or `timeout` has passed; waits
/// 50 ms after the first failure, doubling up to 2 s. The first failure is
/// logged as a warning naming `url`, later ones at debug level, so a long
/// outage says its cause once. Only operations that are safe to repeat may
/// be retried here: a failed call may have run on the server before its
/// reply was lost.
pub async fn retry_connection<T, F, Fut>(
    timeout: Duration,
    url: &str,
    mut op: F,
) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut retries = Retries::new(RECONNECT);
    let mut delay = retries.next_delay();
    let mut failures = 0u32;
    loop {
        match op().await {
            Err(err) if err.is_connection() && tokio::time::Instant::now() + delay < deadline => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(
                        "Redis at {url} is unreachable or not ready ({err}); retrying for up to {} ms",
                        timeout.as_millis()
                    );
                } else {
                    tracing::debug!(
                        "Redis at {url} still unavailable ({err}); retrying in {delay:?}"
                    );
                }
                tokio::time::sleep(delay).await;
                delay = retries.next_delay();
            }
            Ok(value) => {
                if failures > 0 {
                    tracing::info!("Redis at {url} answered after {failures} failed tries");
                }
                return Ok(value);
            }
            Err(err) => return Err(err),
        }
    }
}

/// A connection reserved for blocking reads.
pub struct BlockingConn {
    inner: link::BlockingConn,
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
        let mut read = StreamRead::new();
        for reply in self.inner.xread_raw(keys, ids, block_ms, count).await? {
            read.extend(reply::parse_stream_read(reply)?);
        }
        Ok(read)
    }
}

#[cfg(test)]
mod tests {
    use redis::{ErrorKind, RedisError};

    use super::StoreError;

    #[test]
    fn outages_are_connection_errors_and_command_errors_are_not() {
        let error = |kind: ErrorKind| StoreError::Redis(RedisError::from((kind, "test")));
        assert!(error(ErrorKind::Io).is_connection());
        assert!(error(ErrorKind::ClusterConnectionNotFound).is_connection());
        assert!(!error(ErrorKind::InvalidClientConfig).is_connection());
        let not_replicated = StoreError::NotReplicated {
            acked: 0,
            wanted: 1,
        };
        assert!(!not_replicated.is_connection());
        // Server replies, as Redis sends them.
        let reply = |text: &str| match redis::parse_redis_value(format!("-{text}\r\n").as_bytes()) {
            Ok(redis::Value::ServerError(e)) => StoreError::Redis(RedisError::from(e)),
            other => panic!("{other:?}"),
        };
        assert!(reply("READONLY You can't write against a read only replica.").is_connection());
        assert!(
            reply("ERR WAIT cannot be used with replica instances. Please also note ...")
                .is_connection()
        );
        assert!(!reply("ERR wrong number of arguments for 'wait' command").is_connection());
        assert!(
            !reply("WRONGTYPE Operation against a key holding the wrong kind of value")
                .is_connection()
        );
    }

    #[test]
    fn a_moving_slot_is_told_from_a_script_error() {
        use super::is_slot_moving;
        let check = |code: &str, detail: &str, moving: bool| {
            assert_eq!(is_slot_moving(code, detail), moving, "{code} {detail}");
        };
        check("MOVED", "9296 127.0.0.1:7745", true);
        check("ASK", "9296 127.0.0.1:7745", true);
        check(
            "TRYAGAIN",
            "Multiple keys request during rehashing of slot",
            true,
        );
        // Issue 20: what a script meets when a key it touches moved.
        check(
            "ERR",
            "Script attempted to access a non local key in a cluster node script: 7a1b..., on @user_script:88.",
            true,
        );
        check(
            "ERR",
            "Unable to execute command 'hget' in script because undeclared keys were accessed during rehashing of the slot",
            true,
        );
        check("ERR", "user_script:12: bad argument #1", false);
        check(
            "WRONGTYPE",
            "Operation against a key holding the wrong kind of value",
            false,
        );
        check("NOSCRIPT", "No matching script", false);
    }

    #[test]
    fn loading_and_lost_connections_are_retried_and_bad_certificates_are_not() {
        let io = |kind: std::io::ErrorKind, text: &str| {
            StoreError::Redis(RedisError::from(std::io::Error::new(kind, text)))
        };
        assert!(io(std::io::ErrorKind::ConnectionRefused, "refused").is_connection());
        assert!(io(std::io::ErrorKind::BrokenPipe, "broken pipe").is_connection());
        assert!(
            !io(
                std::io::ErrorKind::InvalidData,
                "invalid peer certificate: UnknownIssuer"
            )
            .is_connection()
        );
        let loading = StoreError::Redis(RedisError::from((
            ErrorKind::Server(redis::ServerErrorKind::BusyLoading),
            "LOADING",
        )));
        assert!(loading.is_connection());
        // Loading the scripts counts as the connection's when its cause is.
        let script_load = |source: RedisError| {
            StoreError::Scripts(crate::scripts::ScriptError::Load {
                name: "submit.lua",
                source,
            })
        };
        assert!(
            script_load(RedisError::from(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "broken pipe"
            )))
            .is_connection()
        );
        assert!(
            !script_load(RedisError::from((
                ErrorKind::Server(redis::ServerErrorKind::ResponseError),
                "ERR"
            )))
            .is_connection()
        );
    }
}
