//! The connection under a [`super::Store`], for each deployment `redis_url`
//! names (see [`crate::connect`]):
//!
//! - one server: a reconnecting multiplexed connection;
//! - Sentinel: the same, to the master the sentinels name. When a call
//!   fails for the connection's sake, or the server says it is a replica now
//!   (`READONLY`), the link asks the sentinels again and moves to the new
//!   master; the caller's retry then lands there;
//! - Cluster: redis-rs's cluster connection, which follows the slot map and
//!   `MOVED`/`ASK` redirects. [`Link::run`] sends each command of a call as
//!   a request of its own (redis-rs pipelines them on each master's
//!   connection), so that a redirection repeats only the command it
//!   answers, and sends again, after a short backoff, the commands the
//!   cluster cannot serve while a slot moves or a master fails over, for up
//!   to `reconnect_timeout_ms`. Every Lua script touches the keys of one
//!   class, which share the class's hash tag, hence one slot.
//!
//! With `redis_wait_replicas` > 0, a pipeline that asks for it ends with
//! `WAIT n timeout` (in Cluster, each master written to gets one after the
//! commands), and fewer acknowledgements than asked is an error.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Arg, AsyncConnectionConfig, Client, Cmd, Pipeline, RedisError, RedisFuture, Value};

use super::StoreError;
use crate::backoff::Backoff;
use crate::config::Config;
use crate::connect::{self, Target};
use crate::scripts;

/// Requests that may wait for the shared connection at once.
const PIPELINE_BUFFER: usize = 8_192;

/// Sentinel is asked again at most this often.
const RELOCATE_EVERY: Duration = Duration::from_millis(250);

/// A connection to the queue's Redis, whatever the deployment: commands for
/// [`redis::aio::ConnectionLike`] users (the CLI, model uploads, tests).
#[derive(Clone)]
pub enum Conn {
    Server(ConnectionManager),
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Conn::Server(_) => "Conn::Server",
            Conn::Cluster(_) => "Conn::Cluster",
        })
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Server(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Server(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Server(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// The master a Sentinel link talks to now.
#[derive(Clone)]
struct Master {
    client: Client,
    conn: ConnectionManager,
    address: String,
}

struct SentinelLink {
    sentinels: Vec<(String, u16)>,
    master: String,
    tls: bool,
    userinfo: String,
    db: i64,
    current: RwLock<Master>,
    /// When the sentinels were last asked.
    asked: tokio::sync::Mutex<Option<Instant>>,
}

enum Mode {
    Single {
        client: Client,
        conn: ConnectionManager,
    },
    Sentinel(SentinelLink),
    Cluster {
        client: ClusterClient,
        /// The cluster connection now; replaced by a fresh one when calls
        /// time out (see [`Link::renew_cluster`]).
        conn: RwLock<ClusterConnection>,
        /// When it was last replaced.
        renewed: tokio::sync::Mutex<Instant>,
        /// When a command last met a slot on the move (a redirection,
        /// `TRYAGAIN`, ...): for [`UNSETTLED`] after it, a request
        /// unanswered for [`WEDGED`] means the connection is wedged.
        moving: std::sync::Mutex<Option<Instant>>,
        seeds: Vec<(String, u16)>,
        tls: bool,
        userinfo: String,
    },
}

/// A cluster connection that timed out is replaced at most this often.
const RENEW_EVERY: Duration = Duration::from_secs(2);
/// How long after a command met a moving slot the cluster counts as
/// unsettled (see [`WEDGED`]).
const UNSETTLED: Duration = Duration::from_secs(10);
/// While the cluster is unsettled, how long a request may go unanswered
/// before the connection counts as wedged and is replaced: redis-rs's
/// cluster connection can hang after a slot refresh (seen after a slot
/// migration, `ha::a_class_slot_moves_to_another_master_while_the_fleet_runs`,
/// about one run in four), and waiting out `redis_timeout_ms` stalled the
/// class for 5 s more. Queue commands answer in milliseconds; a longer one
/// (a large model blob) cut here fails as a timeout and is retried by its
/// caller like any other.
const WEDGED: Duration = Duration::from_millis(500);

/// How a store reaches Redis. Shared by a store's clones.
pub(super) struct Link {
    config: Config,
    mode: Mode,
    /// `WAIT` this many replicas, at most this long (ms), when asked.
    wait: Option<(u32, u64)>,
}

async fn manager(config: &Config, client: Client) -> Result<ConnectionManager, RedisError> {
    // Thousands of tasks share one connection. Its request queue holds room
    // for as many, so a caller that leaves a request future idle (say,
    // unpolled waits in a local set) cannot fill the queue and stall
    // everyone else; redis-rs's default is 50.
    let manager_config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(config.redis_timeout()))
        .set_connection_timeout(Some(config.connect_timeout()))
        .set_number_of_retries(3)
        .set_pipeline_buffer_size(PIPELINE_BUFFER);
    ConnectionManager::new_with_config(client, manager_config).await
}

fn cluster_config(config: &Config, response_timeout: Duration) -> ClusterConfig {
    ClusterConfig::new()
        .set_connection_timeout(config.connect_timeout())
        .set_response_timeout(response_timeout)
}

impl Link {
    /// Connects to the deployment `config.redis_url` names.
    pub(super) async fn open(config: &Config) -> Result<Self, StoreError> {
        let target = Target::parse(&config.redis_url).map_err(|detail| {
            RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "bad redis_url",
                detail,
            ))
        })?;
        let mode = match target {
            Target::Single { .. } => {
                let client = connect::client(config)?;
                let conn = manager(config, client.clone()).await?;
                Mode::Single { client, conn }
            }
            Target::Sentinel {
                sentinels,
                master,
                tls,
                userinfo,
                db,
            } => {
                let (client, address) =
                    connect::master_client(config, &sentinels, &master, tls, &userinfo, db).await?;
                let conn = manager(config, client.clone()).await?;
                tracing::info!(master = %address, name = %master, "Redis master found by Sentinel");
                Mode::Sentinel(SentinelLink {
                    sentinels,
                    master,
                    tls,
                    userinfo,
                    db,
                    current: RwLock::new(Master {
                        client,
                        conn,
                        address,
                    }),
                    asked: tokio::sync::Mutex::new(Some(Instant::now())),
                })
            }
            Target::Cluster {
                nodes,
                tls,
                userinfo,
            } => {
                let client = connect::cluster_client(config, &nodes, tls, &userinfo)?;
                let conn = client
                    .get_async_connection_with_config(cluster_config(
                        config,
                        config.redis_timeout(),
                    ))
                    .await?;
                Mode::Cluster {
                    client,
                    conn: RwLock::new(conn),
                    renewed: tokio::sync::Mutex::new(Instant::now()),
                    moving: std::sync::Mutex::new(None),
                    seeds: nodes,
                    tls,
                    userinfo,
                }
            }
        };
        let wait = (config.redis_wait_replicas > 0)
            .then_some((config.redis_wait_replicas, config.redis_wait_timeout_ms));
        Ok(Self {
            config: config.clone(),
            mode,
            wait,
        })
    }

    pub(super) fn is_cluster(&self) -> bool {
        matches!(self.mode, Mode::Cluster { .. })
    }

    /// The shared connection.
    pub(super) fn conn(&self) -> Conn {
        match &self.mode {
            Mode::Single { conn, .. } => Conn::Server(conn.clone()),
            Mode::Sentinel(link) => Conn::Server(link.master().conn),
            Mode::Cluster { conn, .. } => Conn::Cluster(current_cluster(conn)),
        }
    }

    /// A client for one server: the server, the master now, or (Cluster) a
    /// seed node, for pub/sub (Cluster forwards every publish to every node).
    fn server_clients(&self) -> Result<Vec<Client>, StoreError> {
        Ok(match &self.mode {
            Mode::Single { client, .. } => vec![client.clone()],
            Mode::Sentinel(link) => vec![link.master().client],
            Mode::Cluster {
                seeds,
                tls,
                userinfo,
                ..
            } => seeds
                .iter()
                .map(|(host, port)| {
                    let url = connect::node_url(*tls, userinfo, &connect::host_port(host, *port));
                    connect::client_for_url(&self.config, &url)
                })
                .collect::<Result<_, _>>()?,
        })
    }

    /// A pub/sub connection.
    pub(super) async fn pubsub(&self) -> Result<redis::aio::PubSub, StoreError> {
        let mut last = None;
        for client in self.server_clients()? {
            match client.get_async_pubsub().await {
                Ok(pubsub) => return Ok(pubsub),
                Err(err) => last = Some(err),
            }
        }
        self.after_error().await;
        Err(last
            .map(StoreError::from)
            .unwrap_or_else(|| StoreError::protocol("pubsub", &Value::Nil)))
    }

    /// A connection of its own for blocking reads that wait up to `timeout`.
    pub(super) async fn blocking(&self, timeout: Duration) -> Result<BlockingConn, StoreError> {
        match &self.mode {
            Mode::Cluster { client, .. } => Ok(BlockingConn::Cluster(Box::new(ClusterReads {
                client: client.clone(),
                config: cluster_config(&self.config, timeout),
                per_slot: HashMap::new(),
            }))),
            _ => {
                let config = AsyncConnectionConfig::new()
                    .set_response_timeout(Some(timeout))
                    .set_connection_timeout(Some(self.config.connect_timeout()));
                let client = self
                    .server_clients()?
                    .into_iter()
                    .next()
                    .ok_or_else(|| StoreError::protocol("blocking connection", &Value::Nil))?;
                match client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                {
                    Ok(conn) => Ok(BlockingConn::Server(conn)),
                    Err(err) => {
                        self.after_error().await;
                        Err(err.into())
                    }
                }
            }
        }
    }

    /// Called after a call failed for the connection's sake: under Sentinel,
    /// asks where the master is now and moves there.
    pub(super) async fn after_error(&self) {
        if let Mode::Sentinel(link) = &self.mode {
            link.relocate(&self.config).await;
        }
    }

    /// Runs `cmds` as one pipeline (in Cluster, each command on its own, see
    /// [`run_cluster`]) and returns one reply per command; a command's own
    /// failure is a `Value::ServerError` in its place. With `replicated`,
    /// `WAIT` follows.
    pub(super) async fn run(
        &self,
        cmds: &[Cmd],
        replicated: bool,
    ) -> Result<Vec<Value>, StoreError> {
        let wait = if replicated { self.wait } else { None };
        let result = match &self.mode {
            Mode::Cluster { conn, moving, .. } => {
                let patience = Duration::from_millis(self.config.reconnect_timeout_ms);
                let result =
                    run_cluster(&current_cluster(conn), cmds, wait, patience, moving).await;
                if let Err(StoreError::Redis(err)) = &result
                    && err.is_timeout()
                {
                    self.renew_cluster().await;
                }
                result
            }
            _ => run_one(self.conn(), cmds.iter().collect(), wait).await,
        };
        if let Err(err) = &result
            && err.is_connection()
        {
            self.after_error().await;
        }
        result
    }

    /// In Cluster, each master in the slot map (`host`, `port`); empty on
    /// one server or under Sentinel, where the shared connection reaches
    /// the only master.
    pub(super) async fn masters(&self) -> Result<Vec<(String, u16)>, StoreError> {
        let Mode::Cluster { conn, .. } = &self.mode else {
            return Ok(Vec::new());
        };
        let mut conn = current_cluster(conn);
        let nodes: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async(&mut conn)
            .await?;
        Ok(cluster_masters(&nodes))
    }

    /// In Cluster, the master serving each key's slot (`host:port`, or
    /// `None` when none does); `None` on one server or under Sentinel.
    pub(super) async fn slot_masters(
        &self,
        keys: &[String],
    ) -> Result<Option<Vec<Option<String>>>, StoreError> {
        let Mode::Cluster { conn, .. } = &self.mode else {
            return Ok(None);
        };
        let mut conn = current_cluster(conn);
        let nodes: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async(&mut conn)
            .await?;
        Ok(Some(
            keys.iter()
                .map(|key| slot_master(&nodes, slot_of(key)))
                .collect(),
        ))
    }

    /// Runs one command on one cluster node.
    pub(super) async fn on_node(
        &self,
        host: &str,
        port: u16,
        cmd: Cmd,
    ) -> Result<Value, StoreError> {
        use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
        let Mode::Cluster { conn, .. } = &self.mode else {
            let mut conn = self.conn();
            return Ok(cmd.query_async(&mut conn).await?);
        };
        let mut conn = current_cluster(conn);
        let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
            host: host.to_owned(),
            port,
        });
        Ok(conn.route_command(cmd, route).await?)
    }
}

impl Link {
    /// Replaces the cluster connection with a fresh one, which finds the
    /// slot map from the seed nodes again: after a master died, redis-rs's
    /// connection can hang in a slot refresh that never ends, and every call
    /// on it then times out (seen in
    /// `ha::a_cluster_failover_is_followed_by_the_library_the_cli_and_the_worker`).
    /// At most once per [`RENEW_EVERY`]; calls in flight on the old one end
    /// as they would have.
    async fn renew_cluster(&self) {
        let Mode::Cluster {
            client,
            conn,
            renewed,
            ..
        } = &self.mode
        else {
            return;
        };
        let mut renewed = renewed.lock().await;
        if renewed.elapsed() < RENEW_EVERY {
            return;
        }
        *renewed = Instant::now();
        let config = cluster_config(&self.config, self.config.redis_timeout());
        match client.get_async_connection_with_config(config).await {
            Ok(fresh) => {
                tracing::warn!("Redis Cluster calls timed out; connected to the cluster afresh");
                *conn
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = fresh;
            }
            Err(err) => tracing::warn!("cannot connect to the Redis Cluster afresh yet: {err}"),
        }
    }
}

/// The cluster connection a link holds now.
fn current_cluster(conn: &RwLock<ClusterConnection>) -> ClusterConnection {
    conn.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}

impl SentinelLink {
    fn master(&self) -> Master {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Asks the sentinels where the master is; when it moved, connects
    /// there. At most once per [`RELOCATE_EVERY`]; callers that come while
    /// one asks wait for its answer.
    async fn relocate(&self, config: &Config) {
        let mut asked = self.asked.lock().await;
        if asked.is_some_and(|at| at.elapsed() < RELOCATE_EVERY) {
            return;
        }
        *asked = Some(Instant::now());
        let found = connect::master_client(
            config,
            &self.sentinels,
            &self.master,
            self.tls,
            &self.userinfo,
            self.db,
        )
        .await;
        let (client, address) = match found {
            Ok(found) => found,
            Err(err) => {
                tracing::warn!(name = %self.master, "no sentinel names the master: {err}");
                return;
            }
        };
        let old = self.master().address;
        if old == address {
            return;
        }
        match manager(config, client.clone()).await {
            Ok(conn) => {
                tracing::warn!(from = %old, to = %address, name = %self.master, "Redis master moved (Sentinel failover); reconnected");
                *self
                    .current
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Master {
                    client,
                    conn,
                    address,
                };
            }
            Err(err) => {
                tracing::warn!(master = %address, "cannot reach the new Redis master yet: {err}")
            }
        }
    }
}

/// The master serving `slot` in a `CLUSTER NODES` reply (`host:port`), or
/// `None` when no master lists it (unassigned, or the map is mid-change).
fn slot_master(nodes: &str, slot: u16) -> Option<String> {
    nodes.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let flags = fields.get(2)?;
        if !flags.split(',').any(|f| f == "master") {
            return None;
        }
        let serves = fields.get(8..)?.iter().any(|range| {
            let (start, end) = range.split_once('-').unwrap_or((range, range));
            match (start.parse::<u16>(), end.parse::<u16>()) {
                (Ok(start), Ok(end)) => (start..=end).contains(&slot),
                // `[slot->-node]` migration markers.
                _ => false,
            }
        });
        serves.then(|| fields[1].split('@').next().unwrap_or(fields[1]).to_owned())
    })
}

/// The masters in a `CLUSTER NODES` reply that are not failing.
fn cluster_masters(nodes: &str) -> Vec<(String, u16)> {
    nodes
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let address = fields.nth(1)?;
            let flags = fields.next()?;
            let flags: Vec<&str> = flags.split(',').collect();
            if !flags.contains(&"master") || flags.iter().any(|f| f.starts_with("fail")) {
                return None;
            }
            let address = address.split('@').next()?;
            let (host, port) = address.rsplit_once(':')?;
            Some((host.to_owned(), port.parse().ok()?))
        })
        .collect()
}

/// The Redis Cluster slot of a key: CRC16 (XMODEM) of its hash tag (the
/// part between the first `{` and the next `}`, when not empty), or of the
/// whole key, mod 16384.
pub(super) fn slot_of(key: impl AsRef<[u8]>) -> u16 {
    let bytes = key.as_ref();
    let hashed = bytes
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &bytes[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(bytes);
    let mut crc: u16 = 0;
    for &byte in hashed {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16_384
}

/// The key a command addresses first (which decides its slot), or `None`
/// for a command without keys.
fn first_key(cmd: &Cmd) -> Option<Vec<u8>> {
    let mut args = cmd.args_iter().filter_map(|arg| match arg {
        Arg::Simple(bytes) => Some(bytes),
        _ => None,
    });
    let name = args.next()?.to_ascii_uppercase();
    let key = match name.as_slice() {
        b"EVALSHA" | b"EVAL" => {
            let _script = args.next()?;
            let numkeys = std::str::from_utf8(args.next()?)
                .ok()?
                .parse::<usize>()
                .ok()?;
            if numkeys == 0 {
                return None;
            }
            args.next()?
        }
        b"XGROUP" | b"XINFO" | b"OBJECT" | b"MEMORY" => args.nth(1)?,
        b"PING" | b"SCRIPT" | b"WAIT" | b"PUBLISH" | b"INFO" | b"TIME" | b"MULTI" | b"EXEC"
        | b"CLUSTER" | b"SCAN" | b"CONFIG" | b"DBSIZE" | b"CLIENT" | b"ROLE" => return None,
        _ => args.next()?,
    };
    Some(key.to_vec())
}

/// How long a cluster command whose slot is moving (or whose master is
/// failing over) waits before it is sent again: doubling from 10 ms up to
/// 200 ms, so work resumes within a fifth of a second of the slot settling.
const SLOT_MOVING: Backoff = Backoff {
    base: Duration::from_millis(10),
    max: Duration::from_millis(200),
};

/// Runs `cmds` on a cluster, each command a request of its own: redis-rs
/// routes each by its key and pipelines the requests on each master's
/// connection, so the commands of one slot still share round trips. Sending
/// them one by one means a redirection or a `TRYAGAIN` repeats only the
/// command it answers: a pipeline would be sent again whole by redis-rs,
/// running its other commands twice (a claim that ran twice leaves the
/// first run's entries pending until their lease runs out).
///
/// A command the cluster cannot serve now, because its slot is moving
/// between masters (`MOVED`, `ASK`, `TRYAGAIN`, a script that met a key
/// already moved, see [`super::is_slot_moving`]) or its master is failing
/// over (`CLUSTERDOWN`, `LOADING`, ...), is sent again after a short
/// backoff ([`SLOT_MOVING`]), until `patience` has passed; then the call
/// fails with its error. Every queue operation is safe to repeat (see
/// `Store::submit_many`), and one that did nothing surely is.
///
/// With `wait`, each master written to gets `WAIT` once the commands are
/// answered (on the same connection, which is one per master).
async fn run_cluster(
    conn: &ClusterConnection,
    cmds: &[Cmd],
    wait: Option<(u32, u64)>,
    patience: Duration,
    moving: &std::sync::Mutex<Option<Instant>>,
) -> Result<Vec<Value>, StoreError> {
    let deadline = Instant::now() + patience;
    let unsettled = || {
        moving
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some_and(|at| at.elapsed() < UNSETTLED)
    };
    let mut replies: Vec<Value> = vec![Value::Nil; cmds.len()];
    let mut todo: Vec<usize> = (0..cmds.len()).collect();
    let mut tries = 0u32;
    let mut scripts_loaded = false;
    while !todo.is_empty() {
        let sent = todo.iter().map(|&index| {
            let mut conn = conn.clone();
            async move { conn.req_packed_command(&cmds[index]).await }
        });
        let answers = if unsettled() {
            tokio::time::timeout(WEDGED, futures_util::future::join_all(sent))
                .await
                .map_err(|_| {
                    RedisError::from(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no answer within 0.5 s while the cluster's slots move: the connection is taken as wedged",
                    ))
                })?
        } else {
            futures_util::future::join_all(sent).await
        };
        let mut again = Vec::new();
        let mut noscript = false;
        let mut last: Option<RedisError> = None;
        for (&index, answer) in todo.iter().zip(answers) {
            match answer {
                Ok(Value::ServerError(e)) if e.code() == "NOSCRIPT" && !scripts_loaded => {
                    noscript = true;
                    again.push(index);
                }
                Ok(Value::ServerError(e)) if super::is_retryable_reply(&e) => {
                    again.push(index);
                    last = Some(RedisError::from(e));
                }
                Ok(value) => replies[index] = value,
                Err(err) if super::is_retryable_redirect(&err) => {
                    again.push(index);
                    last = Some(err);
                }
                Err(err) => return Err(err.into()),
            }
        }
        if noscript {
            // A NOSCRIPT reply means the command did nothing: load the
            // scripts (on every master) and send it again at once.
            scripts::load_all(&mut Conn::Cluster(conn.clone())).await?;
            scripts_loaded = true;
        }
        if let Some(err) = last {
            *moving
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
            tries += 1;
            let delay = SLOT_MOVING.ceiling(tries);
            if Instant::now() + delay >= deadline {
                return Err(err.into());
            }
            if tries == 1 {
                tracing::debug!(
                    commands = again.len(),
                    "the cluster cannot serve these commands now ({err}); sending them again"
                );
            }
            tokio::time::sleep(delay).await;
        }
        todo = again;
    }
    if let Some((replicas, timeout_ms)) = wait {
        wait_on_masters(conn, cmds, replicas, timeout_ms).await?;
    }
    Ok(replies)
}

/// `WAIT replicas timeout_ms` on the master of each slot `cmds` address;
/// fewer acknowledgements than asked anywhere is an error.
async fn wait_on_masters(
    conn: &ClusterConnection,
    cmds: &[Cmd],
    replicas: u32,
    timeout_ms: u64,
) -> Result<(), StoreError> {
    use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
    let mut slots: Vec<u16> = cmds.iter().filter_map(first_key).map(slot_of).collect();
    slots.sort_unstable();
    slots.dedup();
    let waits = slots.into_iter().map(|slot| {
        let mut conn = conn.clone();
        let mut cmd = redis::cmd("WAIT");
        cmd.arg(replicas).arg(timeout_ms);
        let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::new(
            slot,
            SlotAddr::Master,
        )));
        async move { conn.route_command(cmd, route).await }
    });
    for acked in futures_util::future::join_all(waits).await {
        let acked = match acked? {
            Value::Int(n) => n,
            other => return Err(StoreError::protocol("WAIT", &other)),
        };
        if acked < i64::from(replicas) {
            return Err(StoreError::NotReplicated {
                acked: u32::try_from(acked).unwrap_or(0),
                wanted: replicas,
            });
        }
    }
    Ok(())
}

/// Runs one pipeline on one connection. When Redis lost the scripts
/// (restart, flush, a failover to a server that never loaded them) they
/// are loaded and the pipeline runs once more: a NOSCRIPT reply means the
/// call did nothing. A reply that says the server cannot serve now
/// (`LOADING` while a restarted server reads its AOF or RDB, `READONLY`
/// from a master that became a replica, `MASTERDOWN`, `TRYAGAIN`,
/// `CLUSTERDOWN`) fails the whole call with that error, which is of the
/// connection's kind, so the caller retries: the command it answers did
/// nothing. (A pipeline that straddles the start of a reload may have run
/// its first commands; every queue operation is safe to repeat, see
/// `Store::submit_many`.)
async fn run_one(
    mut conn: Conn,
    cmds: Vec<&Cmd>,
    wait: Option<(u32, u64)>,
) -> Result<Vec<Value>, StoreError> {
    if cmds.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = Pipeline::with_capacity(cmds.len() + 1);
    for cmd in &cmds {
        pipe.add_command((*cmd).clone());
    }
    if let Some((replicas, timeout_ms)) = wait {
        pipe.cmd("WAIT").arg(replicas).arg(timeout_ms);
    }
    pipe.ignore_errors();
    let mut replies: Vec<Value> = pipe.query_async(&mut conn).await?;
    if replies
        .iter()
        .any(|v| matches!(v, Value::ServerError(e) if e.code() == "NOSCRIPT"))
    {
        scripts::load_all(&mut conn).await?;
        replies = pipe.query_async(&mut conn).await?;
    }
    if let Some(Value::ServerError(e)) = replies
        .iter()
        .find(|v| matches!(v, Value::ServerError(e) if super::is_unavailable_code(e.code())))
    {
        return Err(RedisError::from(e.clone()).into());
    }
    if let Some((replicas, _)) = wait {
        let acked = match replies.pop() {
            Some(Value::Int(n)) => n,
            // A replica refuses `WAIT` (`is_connection_error` knows the
            // reply): a master demoted under this connection.
            Some(Value::ServerError(e)) => return Err(RedisError::from(e).into()),
            Some(other) => return Err(StoreError::protocol("WAIT", &other)),
            None => 0,
        };
        if acked < i64::from(replicas) {
            return Err(StoreError::NotReplicated {
                acked: u32::try_from(acked).unwrap_or(0),
                wanted: replicas,
            });
        }
    }
    Ok(replies)
}

/// A connection reserved for blocking reads.
pub enum BlockingConn {
    Server(MultiplexedConnection),
    /// One cluster connection per slot read, so a read blocked on one slot
    /// never holds up another's.
    Cluster(Box<ClusterReads>),
}

/// A cluster client and the connections of the slots read so far.
pub struct ClusterReads {
    client: ClusterClient,
    config: ClusterConfig,
    per_slot: HashMap<u16, ClusterConnection>,
}

impl std::fmt::Debug for BlockingConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BlockingConn")
    }
}

fn xread_cmd(keys: &[&String], ids: &[&String], block_ms: u64, count: usize) -> Cmd {
    let mut cmd = redis::cmd("XREAD");
    cmd.arg("COUNT")
        .arg(count)
        .arg("BLOCK")
        .arg(block_ms)
        .arg("STREAMS");
    cmd.arg(keys).arg(ids);
    cmd
}

impl BlockingConn {
    /// `XREAD BLOCK` over `keys` from `ids`; in Cluster, one read per slot at
    /// once, answered by the first that has entries (or all empty).
    pub(super) async fn xread_raw(
        &mut self,
        keys: &[String],
        ids: &[String],
        block_ms: u64,
        count: usize,
    ) -> Result<Vec<Value>, StoreError> {
        match self {
            BlockingConn::Server(conn) => {
                let all_keys: Vec<&String> = keys.iter().collect();
                let all_ids: Vec<&String> = ids.iter().collect();
                let cmd = xread_cmd(&all_keys, &all_ids, block_ms, count);
                Ok(vec![cmd.query_async(conn).await?])
            }
            BlockingConn::Cluster(reads) => {
                let ClusterReads {
                    client,
                    config,
                    per_slot,
                } = reads.as_mut();
                let mut by_slot: Vec<(u16, Vec<&String>, Vec<&String>)> = Vec::new();
                for (key, id) in keys.iter().zip(ids) {
                    let slot = slot_of(key);
                    match by_slot.iter_mut().find(|(s, _, _)| *s == slot) {
                        Some((_, k, i)) => {
                            k.push(key);
                            i.push(id);
                        }
                        None => by_slot.push((slot, vec![key], vec![id])),
                    }
                }
                for (slot, _, _) in &by_slot {
                    if !per_slot.contains_key(slot) {
                        let conn = client
                            .get_async_connection_with_config(config.clone())
                            .await?;
                        per_slot.insert(*slot, conn);
                    }
                }
                let mut reads: FuturesUnordered<_> = by_slot
                    .into_iter()
                    .filter_map(|(slot, k, i)| {
                        let mut conn = per_slot.get(&slot)?.clone();
                        let cmd = xread_cmd(&k, &i, block_ms, count);
                        Some(async move {
                            let reply: Result<Value, RedisError> = cmd.query_async(&mut conn).await;
                            (slot, reply)
                        })
                    })
                    .collect();
                let mut replies = Vec::new();
                while let Some((slot, reply)) = reads.next().await {
                    match reply {
                        Ok(Value::Nil) => {}
                        Ok(value) => {
                            replies.push(value);
                            break;
                        }
                        Err(err) => {
                            per_slot.remove(&slot);
                            return Err(err.into());
                        }
                    }
                }
                Ok(replies)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_routed_by_their_first_key() {
        let eval = |key: &str| {
            let mut cmd = redis::cmd("EVALSHA");
            cmd.arg("abc").arg(1).arg(key).arg("x");
            cmd
        };
        let mut xgroup = redis::cmd("XGROUP");
        xgroup.arg("CREATE").arg("t:{cpu}:stream:low").arg("g");
        let mut hget = redis::cmd("HGET");
        hget.arg("t:{heavy}:task:1").arg("status");
        let mut keyless = redis::cmd("EVALSHA");
        keyless.arg("abc").arg(0);
        let slots: Vec<Option<u16>> = [
            eval("t:{cpu}:task:1"),
            hget,
            redis::cmd("TIME"),
            xgroup,
            eval("t:{heavy}:stream:high"),
            keyless,
        ]
        .iter()
        .map(|cmd| first_key(cmd).map(slot_of))
        .collect();
        let (cpu, heavy) = (Some(slot_of("{cpu}")), Some(slot_of("{heavy}")));
        assert_eq!(slots, [cpu, heavy, None, cpu, heavy, None]);
    }

    #[test]
    fn slots_and_their_masters_come_from_cluster_nodes() {
        assert_eq!(slot_of("tandem:{heavy}:stream:high"), 8060);
        assert_eq!(slot_of("tandem:{light}:x"), 6713);
        // Redis's own examples (CLUSTER KEYSLOT).
        assert_eq!(slot_of("somekey"), 11058);
        assert_eq!(slot_of("{user1000}.following"), slot_of("user1000"));
        // Agrees with redis-rs, which routes by it.
        for key in ["a", "tandem:{cpu}:task:1", "x{}y", "{", "}{x}"] {
            assert_eq!(
                format!("{:?}", redis::cluster_routing::Slot::for_key(key)),
                format!("Slot({})", slot_of(key)),
                "{key}"
            );
        }
        let nodes = "a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-7000 7002\n\
                     b2 127.0.0.1:7001@17001 master - 0 0 2 connected 7001 7003-16383 [7002->-a1]\n\
                     c3 127.0.0.1:7002@17002 slave b2 0 0 2 connected\n";
        assert_eq!(slot_master(nodes, 6713).as_deref(), Some("127.0.0.1:7000"));
        assert_eq!(slot_master(nodes, 7001).as_deref(), Some("127.0.0.1:7001"));
        assert_eq!(slot_master(nodes, 7002).as_deref(), Some("127.0.0.1:7000"));
        assert_eq!(slot_master(nodes, 8060).as_deref(), Some("127.0.0.1:7001"));
    }

    #[test]
    fn masters_come_from_cluster_nodes() {
        let nodes = "a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460\n\
                     b2 127.0.0.1:7001@17001 master - 0 0 2 connected 5461-10922\n\
                     c3 127.0.0.1:7002@17002 slave b2 0 0 2 connected\n\
                     d4 127.0.0.1:7003@17003 master,fail - 0 0 3 disconnected\n";
        assert_eq!(
            cluster_masters(nodes),
            vec![
                ("127.0.0.1".to_owned(), 7000),
                ("127.0.0.1".to_owned(), 7001)
            ]
        );
    }
}
