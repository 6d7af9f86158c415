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
mod models;
mod registry;
mod reply;
mod stats;
mod tasks;
mod trip;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client, Cmd, Pipeline, RedisError, Value};

use crate::config::Config;
use crate::keys::Keys;
use crate::scripts::{self, ScriptError};
use crate::task::{Class, Priority};
use crate::wire::Fields;

pub use alerts::{ALERTS_MAXLEN, Alert, AlertEntry, AlertName, DeadGrowth};
pub use dead::DeadLetter;
pub use models::{
    MAX_MODEL_NAME, ModelInfo, ModelPolicy, ModelSource, ModelStoreError, check_model_name,
};
pub use stats::StreamStats;
pub use tasks::{CancelOutcome, Submitted};
pub use trip::{
    Blocked, ClaimRequest, Claimed, ClaimedEntry, Committed, Completion, Disposition, Trip,
    TripResult, Verdict,
};

use reply::reply_ok;

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
        let client = crate::connect::client(config)?;
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
        reply::parse_stream_read(reply)
    }
}
