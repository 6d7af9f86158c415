//! The queue's Redis operations, typed: submit, claim, commit, cancel, read.
//!
//! Producers and workers never build queue commands themselves; they call
//! this module, which speaks through the scripts of [`crate::scripts`] and the
//! names of [`crate::keys`] and [`crate::wire`]. Operations that carry many
//! tasks go out as one pipeline, so a batch costs one round trip.
//!
//! - `tasks`: what producers do (submit, find, cancel).
//! - `trip`: what workers do (claim, commit, extend leases), one round trip
//!   at a time.
//! - `registry`: worker heartbeats, and which workers are gone.
//! - `alerts`: the alerts stream, the fleet-wide alert locks and the
//!   dead-letter counts they compare.
//! - `dead`: the dead-letter streams.
//! - `models`: the model registry (records, uploaded files).
//! - `stats`: queue depths for the CLI; key clean-up.
//! - `reply`: typed reading of Redis replies.

mod alerts;
mod dead;
mod link;
mod models;
mod registry;
mod reply;
mod stats;
mod tasks;
mod trip;

use std::sync::Arc;

use redis::{Cmd, RedisError, Value};

use crate::config::Config;
use crate::keys::Keys;
use crate::scripts::{self, ScriptError};
use crate::task::{Class, Priority};
use crate::wire::Fields;
use link::Link;

pub use alerts::{ALERTS_MAXLEN, Alert, AlertEntry, AlertName, DeadGrowth};
pub use dead::DeadLetter;
pub use link::Conn;
pub use models::{
    MAX_MODEL_NAME, ModelInfo, ModelPolicy, ModelSource, ModelStoreError, check_model_name,
};
pub use registry::{Consumer, ProcessRef};
pub use stats::StreamStats;
pub use tasks::{CancelOutcome, Submitted};
pub use trip::{
    Blocked, ClaimRequest, Claimed, ClaimedEntry, Committed, Completion, DeadConsumer, Disposition,
    Trip, TripResult, Verdict,
};

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

    /// True when the error is the connection's, not the command's: Redis
    /// unreachable, restarting, or too slow. Such a call may be retried.
    pub fn is_connection(&self) -> bool {
        match self {
            StoreError::Redis(err) => {
                err.is_io_error()
                    || err.is_connection_dropped()
                    || err.is_connection_refusal()
                    || err.is_timeout()
                    || err.code() == Some("LOADING")
                    || err.code() == Some("MASTERDOWN")
                    || err.code() == Some("TRYAGAIN")
                    || err.code() == Some("READONLY")
                    || err.code() == Some("CLUSTERDOWN")
                    || err.kind() == redis::ErrorKind::ClusterConnectionNotFound
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
        })
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
        let timeout = std::time::Duration::from_millis(block_ms + self.blocking_timeout_margin_ms);
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
    }
}
