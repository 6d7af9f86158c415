//! Redis high availability for the end-to-end tests: a three-master Redis
//! Cluster ([`RedisCluster`]) and a master with one replica watched by three
//! Sentinels ([`SentinelSetup`]), each process in its own scratch directory
//! on free loopback ports, and a worker process started with an explicit
//! environment ([`super::WorkerProcess::spawn_with`]). Every guard kills its processes when dropped,
//! also when the test fails, and then shows the tail of their logs.
//!
//! The setups are built for a slow, two-core machine: each waits for the
//! state it promises (slots agreed on by every node; a replica in sync and
//! known to every sentinel) with generous bounds instead of sleeping.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tandem_shared::Config;

use super::{ScratchDir, free_port};

/// How long a cluster may take to agree on its slots.
const CLUSTER_UP: Duration = Duration::from_secs(20);
/// How long a replica may take to sync and the sentinels to find each other.
const SENTINELS_UP: Duration = Duration::from_secs(30);
/// How long one `redis-server` may take to answer its first PING.
const PROCESS_UP: Duration = Duration::from_secs(10);
/// The name the sentinels monitor the master under.
pub const MASTER_NAME: &str = "mymaster";

/// One `redis-server` process (data node or sentinel), killed on drop.
#[derive(Debug)]
pub struct RedisProcess {
    child: Option<Child>,
    /// The port it serves clients on.
    pub port: u16,
    /// What it is, for log headers: "cluster node 0", "sentinel 2", ...
    role: String,
    /// Its working directory: `redis.log`, `nodes.conf`, `sentinel.conf`.
    dir: ScratchDir,
    /// Its command-line arguments, kept for a restart.
    args: Vec<String>,
}

impl RedisProcess {
    /// Starts `redis-server` with `args(port)` in a fresh directory, trying
    /// new free ports when one is taken between the probe and the bind.
    /// `args` may write files (a sentinel's configuration) into the directory.
    fn start(role: &str, mut args: impl FnMut(u16, &ScratchDir) -> Vec<String>) -> Self {
        let dir = ScratchDir::new(&role.replace(' ', "-"));
        let mut process = RedisProcess {
            child: None,
            port: 0,
            role: role.to_owned(),
            args: Vec::new(),
            dir,
        };
        for _ in 0..10 {
            process.port = free_port();
            process.args = args(process.port, &process.dir);
            process.spawn();
            if process.wait_ready(PROCESS_UP) {
                return process;
            }
            // The port was taken between our probe and redis binding it.
            process.kill();
        }
        panic!(
            "could not start {role} on a free port\n{}",
            process.log_tail(30)
        );
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("redis log");
        let child = Command::new("redis-server")
            .args(&self.args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("redis-server must be installed to run the end-to-end tests");
        self.child = Some(child);
    }

    /// Waits until the process answers PING; false if it exited or did not
    /// answer in time.
    fn wait_ready(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if !self.is_alive() {
                return false;
            }
            // Up when it answers; NOAUTH is an answer (a sentinel with a
            // password).
            if let Ok(mut conn) = self.try_conn() {
                match redis::cmd("PING").query::<String>(&mut conn) {
                    Ok(_) => return true,
                    Err(err) if err.code() == Some("NOAUTH") => return true,
                    Err(_) => {}
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    fn is_alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGKILL: no shutdown, no save, as a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the process again on the same port, directory and arguments.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + PROCESS_UP;
        loop {
            self.spawn();
            if self.wait_ready(PROCESS_UP) {
                return;
            }
            self.kill();
            assert!(
                Instant::now() < deadline,
                "{} did not come back on port {}\n{}",
                self.role,
                self.port,
                self.log_tail(30)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `INFO replication`, or why it could not be read: for test failures.
    pub fn info_replication(&self) -> Result<String, String> {
        query(self, redis::cmd("INFO").arg("replication"))
    }

    /// A blocking connection with short timeouts, for setting up and probing.
    pub fn try_conn(&self) -> redis::RedisResult<redis::Connection> {
        let conn =
            redis::Client::open(self.url())?.get_connection_with_timeout(Duration::from_secs(2))?;
        conn.set_read_timeout(Some(Duration::from_secs(5)))?;
        conn.set_write_timeout(Some(Duration::from_secs(5)))?;
        Ok(conn)
    }

    /// A blocking connection; panics when the process does not answer.
    pub fn blocking_conn(&self) -> redis::Connection {
        self.try_conn()
            .unwrap_or_else(|e| panic!("connect to {} on port {}: {e}", self.role, self.port))
    }

    /// An async connection to this one process, as `redis-cli -p PORT` would
    /// make (in a cluster it does not follow redirections).
    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(30)));
        redis::Client::open(self.url())
            .expect("url")
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .unwrap_or_else(|e| panic!("connect to {} on port {}: {e}", self.role, self.port))
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// The last `lines` lines of the process's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(lines).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "---- log of {} (port {}, last lines) ----\n{}",
                self.role,
                self.port,
                self.log_tail(25)
            );
        }
    }
}

/// Arguments every data node gets: loopback only, nothing persisted.
fn data_node_args(port: u16) -> Vec<String> {
    [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The settings test processes use, pointing at `redis_url`.
fn test_config(redis_url: String) -> Config {
    Config {
        redis_url,
        heartbeat_interval_ms: 200,
        heartbeat_ttl_ms: 1_000,
        shutdown_grace_ms: 5_000,
        ..Config::default()
    }
}

/// Waits, blocking, until `check` holds; panics with `what` and the last
/// state `check` described after `timeout`.
fn wait_blocking(timeout: Duration, what: &str, mut check: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match check() {
            Ok(()) => return,
            Err(state) => state,
        };
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}; last seen: {last}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs one command on a fresh blocking connection to `process`.
fn query<T: redis::FromRedisValue>(process: &RedisProcess, cmd: &redis::Cmd) -> Result<T, String> {
    let mut conn = process.try_conn().map_err(|e| e.to_string())?;
    cmd.query(&mut conn).map_err(|e| e.to_string())
}

/// The value of `field` in an `INFO`-style text (`field:value` lines).
pub fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|line| line.trim().strip_prefix(field)?.strip_prefix(':'))
}

/// The slots of each cluster node: A, B and C in that order.
pub const SLOT_RANGES: [(u16, u16); 3] = [(0, 7000), (7001, 9000), (9001, 16383)];

/// A Redis Cluster of three masters without replicas. Node A (index 0)
/// serves slots 0-7000 (`{light}` 6713, `{models}` 3701), node B 7001-9000
/// (`{heavy}` 8060), node C 9001-16383 (`{cpu}` 9296, `{parallel}` 10041),
/// so the classes spread over the masters.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisProcess>,
    /// Replicas added by [`RedisCluster::add_replica`], apart from the
    /// three masters so that indices and [`RedisCluster::len`] keep meaning
    /// the masters.
    replicas: Vec<RedisProcess>,
}

/// One cluster-enabled data node (not yet part of a cluster).
fn cluster_node(role: &str) -> RedisProcess {
    RedisProcess::start(role, |port, _| {
        // The bus port is chosen, not port + 10000, which may be past
        // 65535 for an ephemeral port.
        let bus = std::iter::repeat_with(free_port)
            .find(|bus| *bus != port)
            .expect("a free port");
        let mut args = data_node_args(port);
        args.extend(
            [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
                "--cluster-port",
                &bus.to_string(),
                // Every node names itself 127.0.0.1 in CLUSTER SLOTS even
                // before it has heard a MEET.
                "--cluster-announce-ip",
                "127.0.0.1",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        args
    })
}

/// The cluster bus port of a node [`cluster_node`] started.
fn bus_port(node: &RedisProcess) -> u16 {
    let args = &node.args;
    args.iter()
        .position(|a| a == "--cluster-port")
        .and_then(|at| args.get(at + 1))
        .and_then(|port| port.parse().ok())
        .expect("bus port")
}

impl RedisCluster {
    /// Starts the three nodes, joins them, assigns the slots and waits until
    /// every node reports `cluster_state:ok` and the same slot map.
    pub fn start() -> Self {
        let nodes: Vec<RedisProcess> = (0..3)
            .map(|i| cluster_node(&format!("cluster node {i}")))
            .collect();
        let cluster = RedisCluster {
            nodes,
            replicas: Vec::new(),
        };
        cluster.form();
        cluster
    }

    fn bus_port(&self, i: usize) -> u16 {
        bus_port(&self.nodes[i])
    }

    /// Starts a replica of node `of` and waits until it is in sync and
    /// every master knows it as a replica; returns its index for
    /// [`RedisCluster::replica`].
    pub fn add_replica(&mut self, of: usize) -> usize {
        let index = self.replicas.len();
        let replica = cluster_node(&format!("cluster replica {index} of node {of}"));
        let master_id: String =
            query(&self.nodes[of], redis::cmd("CLUSTER").arg("MYID")).expect("node id");
        let _: () = query(
            &self.nodes[0],
            redis::cmd("CLUSTER")
                .arg("MEET")
                .arg("127.0.0.1")
                .arg(replica.port)
                .arg(bus_port(&replica)),
        )
        .expect("CLUSTER MEET the replica");
        // The replica must have heard of its master before it can follow it.
        wait_blocking(CLUSTER_UP, "the replica to follow its master", || {
            query::<String>(
                &replica,
                redis::cmd("CLUSTER").arg("REPLICATE").arg(&master_id),
            )
            .map(|_| ())
        });
        let replica_id: String =
            query(&replica, redis::cmd("CLUSTER").arg("MYID")).expect("node id");
        wait_blocking(CLUSTER_UP, "the replica to sync and be known", || {
            let info: String = query(&self.nodes[of], redis::cmd("INFO").arg("replication"))?;
            let online = info_field(&info, "slave0").is_some_and(|slave| {
                slave.contains(&format!("port={},", replica.port)) && slave.contains("state=online")
            });
            if !online {
                return Err(info);
            }
            for (i, node) in self.nodes.iter().enumerate() {
                let nodes: String = query(node, redis::cmd("CLUSTER").arg("NODES"))?;
                let known = nodes.lines().any(|line| {
                    line.starts_with(&replica_id)
                        && line.contains("slave")
                        && line.contains(&master_id)
                });
                if !known {
                    return Err(format!("node {i} sees: {nodes}"));
                }
            }
            Ok(())
        });
        self.replicas.push(replica);
        index
    }

    /// Replica `i` (see [`RedisCluster::add_replica`]).
    pub fn replica(&self, i: usize) -> &RedisProcess {
        &self.replicas[i]
    }

    /// SIGKILLs node `i`: no shutdown, no save, as a crash.
    pub fn kill_node(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Waits until replica `replica` serves `slot` as a master and every
    /// live node agrees and says the cluster is ok again.
    pub fn wait_promoted(&self, replica: usize, slot: u16, timeout: Duration) {
        let promoted = &self.replicas[replica];
        wait_blocking(timeout, "the replica to take over the slot", || {
            let live = self
                .nodes
                .iter()
                .filter(|node| node.try_conn().is_ok())
                .chain(std::iter::once(promoted));
            for node in live {
                let info: String = query(node, redis::cmd("CLUSTER").arg("INFO"))?;
                if info_field(&info, "cluster_state") != Some("ok") {
                    return Err(format!("port {}: {info}", node.port));
                }
                let owner = cluster_slots(node)?
                    .into_iter()
                    .find(|(start, end, _, _)| (*start..=*end).contains(&i64::from(slot)))
                    .map(|(_, _, _, port)| port);
                if owner != Some(i64::from(promoted.port)) {
                    return Err(format!(
                        "port {} names port {owner:?} for slot {slot}",
                        node.port
                    ));
                }
            }
            Ok(())
        });
    }

    fn form(&self) {
        let mut first = self.nodes[0].blocking_conn();
        for i in 1..self.nodes.len() {
            let _: () = redis::cmd("CLUSTER")
                .arg("MEET")
                .arg("127.0.0.1")
                .arg(self.nodes[i].port)
                .arg(self.bus_port(i))
                .query(&mut first)
                .unwrap_or_else(|e| panic!("CLUSTER MEET node {i}: {e}"));
        }
        for (node, (start, end)) in self.nodes.iter().zip(SLOT_RANGES) {
            let _: () = redis::cmd("CLUSTER")
                .arg("ADDSLOTSRANGE")
                .arg(start)
                .arg(end)
                .query(&mut node.blocking_conn())
                .unwrap_or_else(|e| panic!("CLUSTER ADDSLOTSRANGE {start} {end}: {e}"));
        }
        let expected: Vec<(i64, i64, String, i64)> = self
            .nodes
            .iter()
            .zip(SLOT_RANGES)
            .map(|(node, (start, end))| {
                (
                    i64::from(start),
                    i64::from(end),
                    "127.0.0.1".to_owned(),
                    i64::from(node.port),
                )
            })
            .collect();
        wait_blocking(CLUSTER_UP, "the cluster to agree on its slots", || {
            for (i, node) in self.nodes.iter().enumerate() {
                let info: String = query(node, redis::cmd("CLUSTER").arg("INFO"))?;
                if info_field(&info, "cluster_state") != Some("ok")
                    || info_field(&info, "cluster_known_nodes") != Some("3")
                {
                    return Err(format!("node {i}: {info}"));
                }
                let slots = cluster_slots(node)?;
                if slots != expected {
                    return Err(format!("node {i} sees slots {slots:?}"));
                }
            }
            Ok(())
        });
    }

    /// `redis+cluster://127.0.0.1:a,127.0.0.1:b,127.0.0.1:c`
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", seeds.join(","))
    }

    /// The settings a worker process needs to reach the cluster.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![("TANDEM_REDIS_URL", self.url())]
    }

    /// A configuration pointing at the cluster with test-friendly timings.
    pub fn config(&self) -> Config {
        test_config(self.url())
    }

    pub fn port(&self, i: usize) -> u16 {
        self.nodes[i].port
    }

    pub fn node(&self, i: usize) -> &RedisProcess {
        &self.nodes[i]
    }

    /// A plain connection to node `i` alone: a key of another node's slot
    /// answers MOVED.
    pub async fn node_conn(&self, i: usize) -> redis::aio::MultiplexedConnection {
        self.nodes[i].conn().await
    }

    /// The index of the node that serves `slot`.
    pub fn owner_of(&self, slot: u16) -> usize {
        SLOT_RANGES
            .iter()
            .position(|(start, end)| (*start..=*end).contains(&slot))
            .expect("a slot below 16384")
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Moves `slot` from node `from` to node `to` as `redis-cli --cluster
    /// reshard` does, keys and all, while clients keep using it: IMPORTING
    /// and MIGRATING, `MIGRATE` in batches, then the new owner everywhere.
    /// Afterwards [`RedisCluster::owner_of`] no longer tells the truth for it.
    pub fn move_slot(&self, slot: u16, from: usize, to: usize) {
        self.move_slot_paced(slot, from, to, 100, Duration::ZERO);
    }

    /// [`RedisCluster::move_slot`], `batch` keys per `MIGRATE` and a pause
    /// after each, as a cautious operator's script does; returns how many
    /// keys moved.
    pub fn move_slot_paced(
        &self,
        slot: u16,
        from: usize,
        to: usize,
        batch: usize,
        pause: Duration,
    ) -> usize {
        let id = |i: usize| -> String {
            query(&self.nodes[i], &redis::cmd("CLUSTER").arg("MYID").clone()).expect("node id")
        };
        let (from_id, to_id) = (id(from), id(to));
        let setslot = |i: usize, args: &[&str]| {
            let mut cmd = redis::cmd("CLUSTER");
            cmd.arg("SETSLOT").arg(slot).arg(args);
            query::<String>(&self.nodes[i], &cmd).expect("SETSLOT");
        };
        setslot(to, &["IMPORTING", &from_id]);
        setslot(from, &["MIGRATING", &to_id]);
        let mut moved = 0;
        loop {
            let keys: Vec<String> = query(
                &self.nodes[from],
                redis::cmd("CLUSTER")
                    .arg("GETKEYSINSLOT")
                    .arg(slot)
                    .arg(batch),
            )
            .expect("GETKEYSINSLOT");
            if keys.is_empty() {
                break;
            }
            moved += keys.len();
            let mut migrate = redis::cmd("MIGRATE");
            migrate
                .arg("127.0.0.1")
                .arg(self.nodes[to].port)
                .arg("")
                .arg(0)
                .arg(5_000)
                .arg("KEYS")
                .arg(&keys);
            query::<String>(&self.nodes[from], &migrate).expect("MIGRATE");
            std::thread::sleep(pause);
        }
        for i in 0..self.nodes.len() {
            setslot(i, &["NODE", &to_id]);
        }
        moved
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

/// `CLUSTER SLOTS` of one node as `(start, end, master ip, master port)`,
/// sorted by start.
fn cluster_slots(node: &RedisProcess) -> Result<Vec<(i64, i64, String, i64)>, String> {
    let ranges: Vec<redis::Value> = query(node, redis::cmd("CLUSTER").arg("SLOTS"))?;
    let mut slots = Vec::new();
    for range in ranges {
        let redis::Value::Array(items) = range else {
            return Err(format!("odd CLUSTER SLOTS entry {range:?}"));
        };
        let parsed: Option<(i64, i64, (String, i64))> = (|| {
            let start = redis::from_redis_value_ref(items.first()?).ok()?;
            let end = redis::from_redis_value_ref(items.get(1)?).ok()?;
            let redis::Value::Array(master) = items.get(2)? else {
                return None;
            };
            let ip = redis::from_redis_value_ref(master.first()?).ok()?;
            let port = redis::from_redis_value_ref(master.get(1)?).ok()?;
            Some((start, end, (ip, port)))
        })();
        let (start, end, (ip, port)) =
            parsed.ok_or_else(|| format!("odd CLUSTER SLOTS entry {items:?}"))?;
        slots.push((start, end, ip, port));
    }
    slots.sort();
    Ok(slots)
}

/// A master and one replica watched by three Sentinels (quorum 2; the
/// master is down after 1 s without an answer).
#[derive(Debug)]
pub struct SentinelSetup {
    master: RedisProcess,
    replica: RedisProcess,
    sentinels: Vec<RedisProcess>,
    /// The port the master had when the setup started.
    pub first_master_port: u16,
}

/// A data node (no persistence) on a free port.
pub fn data_node(role: &str) -> RedisProcess {
    RedisProcess::start(role, |port, _| data_node_args(port))
}

/// A data node that replicates the one on `master`.
pub fn replica_node(role: &str, master: u16) -> RedisProcess {
    RedisProcess::start(role, |port, _| {
        let mut args = data_node_args(port);
        args.extend([
            "--replicaof".to_owned(),
            "127.0.0.1".to_owned(),
            master.to_string(),
        ]);
        args
    })
}

/// One sentinel that watches the node on `watched` as [`MASTER_NAME`]
/// alone (quorum 1), with `requirepass` when given a password.
pub fn lone_sentinel(role: &str, watched: u16, password: Option<&str>) -> RedisProcess {
    RedisProcess::start(role, |port, dir| {
        let conf = dir.path().join("sentinel.conf");
        let auth = password
            .map(|p| format!("requirepass {p}\n"))
            .unwrap_or_default();
        let text = format!(
            "port {port}\n\
             bind 127.0.0.1\n\
             dir {dir}\n\
             {auth}\
             sentinel monitor {MASTER_NAME} 127.0.0.1 {watched} 1\n",
            dir = dir.path().display(),
        );
        std::fs::write(&conf, text).expect("write sentinel.conf");
        vec![conf.display().to_string(), "--sentinel".to_owned()]
    })
}

/// A master and one sentinel that requires `password` (its
/// `requirepass`), watching it under [`MASTER_NAME`] alone (quorum 1).
#[derive(Debug)]
pub struct GuardedSentinel {
    pub master: RedisProcess,
    pub sentinel: RedisProcess,
}

impl GuardedSentinel {
    pub fn start(password: &str) -> Self {
        let master = data_node("guarded master");
        let sentinel = lone_sentinel("guarded sentinel", master.port, Some(password));
        GuardedSentinel { master, sentinel }
    }

    /// `redis+sentinel://127.0.0.1:<sentinel>/mymaster`
    pub fn url(&self) -> String {
        format!(
            "redis+sentinel://127.0.0.1:{}/{MASTER_NAME}",
            self.sentinel.port
        )
    }

    /// A configuration pointing at the sentinel, without its password.
    pub fn config(&self) -> Config {
        test_config(self.url())
    }
}

impl SentinelSetup {
    /// Starts the pair and the sentinels and waits until the replica is in
    /// sync and every sentinel knows the master, the replica and the other
    /// two sentinels.
    pub fn start() -> Self {
        let master = RedisProcess::start("sentinel master", |port, _| data_node_args(port));
        let replica = RedisProcess::start("sentinel replica", |port, _| {
            let mut args = data_node_args(port);
            args.extend(
                ["--replicaof", "127.0.0.1", &master.port.to_string()]
                    .iter()
                    .map(|s| s.to_string()),
            );
            args
        });
        wait_blocking(SENTINELS_UP, "the replica to sync", || {
            let info: String = query(&master, redis::cmd("INFO").arg("replication"))?;
            let online = info_field(&info, "slave0").is_some_and(|slave| {
                slave.contains(&format!("port={},", replica.port)) && slave.contains("state=online")
            });
            if online { Ok(()) } else { Err(info) }
        });
        let sentinels = (0..3)
            .map(|i| {
                RedisProcess::start(&format!("sentinel {i}"), |port, dir| {
                    // A sentinel rewrites its configuration file, so each
                    // gets its own.
                    let conf = dir.path().join("sentinel.conf");
                    let text = format!(
                        "port {port}\n\
                         bind 127.0.0.1\n\
                         dir {dir}\n\
                         sentinel monitor {MASTER_NAME} 127.0.0.1 {master} 2\n\
                         sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                         sentinel failover-timeout {MASTER_NAME} 4000\n\
                         sentinel parallel-syncs {MASTER_NAME} 1\n",
                        dir = dir.path().display(),
                        master = master.port,
                    );
                    std::fs::write(&conf, text).expect("write sentinel.conf");
                    vec![conf.display().to_string(), "--sentinel".to_owned()]
                })
            })
            .collect();
        let setup = SentinelSetup {
            first_master_port: master.port,
            master,
            replica,
            sentinels,
        };
        setup.wait_sentinels_agree(setup.master.port, setup.replica.port, SENTINELS_UP);
        setup
    }

    /// Waits until every live sentinel names `master` as the master and
    /// knows `replica` as its (connected) replica and the other sentinels.
    fn wait_sentinels_agree(&self, master: u16, replica: u16, timeout: Duration) {
        wait_blocking(timeout, "every sentinel to know the setup", || {
            for (i, sentinel) in self.sentinels.iter().enumerate() {
                let named = sentinel_master_port(sentinel)?;
                if named != master {
                    return Err(format!("sentinel {i} names master port {named}"));
                }
                let replicas: Vec<Vec<String>> = query(
                    sentinel,
                    redis::cmd("SENTINEL").arg("REPLICAS").arg(MASTER_NAME),
                )?;
                let known = replicas.iter().any(|fields| {
                    field(fields, "port") == Some(&replica.to_string())
                        && field(fields, "flags").is_some_and(|flags| {
                            !flags.contains("disconnected") && !flags.contains("s_down")
                        })
                });
                if !known {
                    return Err(format!("sentinel {i} sees replicas {replicas:?}"));
                }
                let others: Vec<Vec<String>> = query(
                    sentinel,
                    redis::cmd("SENTINEL").arg("SENTINELS").arg(MASTER_NAME),
                )?;
                if others.len() != self.sentinels.len() - 1 {
                    return Err(format!("sentinel {i} sees sentinels {others:?}"));
                }
            }
            Ok(())
        });
    }

    /// `redis+sentinel://127.0.0.1:s1,127.0.0.1:s2,127.0.0.1:s3/mymaster`
    pub fn url(&self) -> String {
        let sentinels: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        format!("redis+sentinel://{}/{MASTER_NAME}", sentinels.join(","))
    }

    /// The settings a worker process needs to reach the master.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![("TANDEM_REDIS_URL", self.url())]
    }

    /// A configuration pointing at the sentinels with test-friendly timings.
    pub fn config(&self) -> Config {
        test_config(self.url())
    }

    /// The process that started as the master.
    pub fn master(&self) -> &RedisProcess {
        &self.master
    }

    /// The process that started as the replica.
    pub fn replica(&self) -> &RedisProcess {
        &self.replica
    }

    pub fn sentinel(&self, i: usize) -> &RedisProcess {
        &self.sentinels[i]
    }

    /// SIGKILLs the process that started as the master.
    pub fn kill_master(&mut self) {
        self.master.kill();
    }

    /// SIGKILLs whichever data node the sentinels name as the master now;
    /// returns the port of the other one, which they should promote.
    pub async fn kill_current_master(&mut self) -> u16 {
        if self.current_master_port().await == self.master.port {
            self.master.kill();
            self.replica.port
        } else {
            self.replica.kill();
            self.master.port
        }
    }

    /// Starts the data node that was killed again (empty: nothing was
    /// persisted) and waits, as [`SentinelSetup::restart_old_master_as_replica`]
    /// does, until the pair is whole again.
    pub async fn restart_killed_as_replica(&mut self, timeout: Duration) {
        if self.replica.child.is_none() {
            std::mem::swap(&mut self.master, &mut self.replica);
            self.restart_old_master_as_replica(timeout).await;
            std::mem::swap(&mut self.master, &mut self.replica);
        } else {
            self.restart_old_master_as_replica(timeout).await;
        }
    }

    /// Waits until every sentinel names the node on `port` as the master
    /// and that node has taken the role.
    pub async fn wait_failover_to(&self, port: u16, timeout: Duration) {
        let node = if port == self.master.port {
            &self.master
        } else {
            &self.replica
        };
        let deadline = Instant::now() + timeout;
        loop {
            let mut last = String::new();
            let mut promoted = true;
            for (i, sentinel) in self.sentinels.iter().enumerate() {
                match sentinel_master_port(sentinel) {
                    Ok(named) if named == port => {}
                    other => {
                        promoted = false;
                        last = format!("sentinel {i}: {other:?}");
                    }
                }
            }
            if promoted {
                let info = node.info_replication();
                match info {
                    Ok(info) if info_field(&info, "role") == Some("master") => return,
                    other => last = format!("node {port}: {other:?}"),
                }
            }
            assert!(
                Instant::now() < deadline,
                "no failover to port {port} within {timeout:?}; last seen: {last}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Starts the killed master again (empty: nothing was persisted) and
    /// waits until the sentinels have made it a replica of the new master
    /// and it is in sync, so the pair has two copies again.
    ///
    /// On a loaded machine the sentinels may fail over once more (the new
    /// master answered late, past `down-after-milliseconds`) and promote the
    /// rejoined node once it is in sync: then the pair is whole the other
    /// way round, which is as good. So the wait is for whichever node the
    /// sentinels name to have the other one as an online replica.
    ///
    /// It comes back as a replica of the current master with
    /// `replica-priority 0`, raised to 100 only once it has synced: Sentinel
    /// may otherwise promote a replica that has never synced (its
    /// `master_link_down_since_seconds` reads -1, which passes the staleness
    /// check: redis/redis#13533). A second failover while the empty node's
    /// first sync ran would elect it, the pair would copy it, and every
    /// earlier task would be gone: what the one failure of
    /// `ha::sentinel_failover_loses_no_replicated_submission` under load
    /// showed (each task acknowledged before the kill missing, those
    /// after it present).
    /// docs/operations.md tells operators the same.
    pub async fn restart_old_master_as_replica(&mut self, timeout: Duration) {
        let master_now = self.current_master_port().await;
        let usual = self.master.args.clone();
        self.master.args.extend(
            [
                "--replicaof",
                "127.0.0.1",
                &master_now.to_string(),
                "--replica-priority",
                "0",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        self.master.restart();
        self.master.args = usual;
        let deadline = Instant::now() + timeout;
        loop {
            let named = self.current_master_port().await;
            let (master, replica) = if named == self.master.port {
                (&self.master, &self.replica)
            } else {
                (&self.replica, &self.master)
            };
            let info = master.info_replication();
            let synced = info.as_ref().is_ok_and(|info| {
                info_field(info, "role") == Some("master")
                    && info_field(info, "slave0").is_some_and(|slave| {
                        slave.contains(&format!("port={},", replica.port))
                            && slave.contains("state=online")
                    })
            });
            // In sync once the replica itself says its link is up (the
            // master says `online` when it has sent the snapshot, before
            // the replica has loaded it).
            let loaded = synced
                && replica
                    .info_replication()
                    .is_ok_and(|info| info_field(&info, "master_link_status") == Some("up"));
            // Now it may be promoted (a later failover may need it to be).
            if loaded
                && query::<String>(
                    &self.master,
                    redis::cmd("CONFIG")
                        .arg("SET")
                        .arg("replica-priority")
                        .arg("100"),
                )
                .is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the old master did not rejoin within {timeout:?}; the sentinels name port \
                 {named}, whose replication info is: {info:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The data node the sentinels name as the master now.
    pub async fn current_master(&self) -> &RedisProcess {
        if self.current_master_port().await == self.master.port {
            &self.master
        } else {
            &self.replica
        }
    }

    /// The master's port as the first live sentinel names it.
    pub async fn current_master_port(&self) -> u16 {
        let mut errors = Vec::new();
        for sentinel in &self.sentinels {
            match sentinel_master_port(sentinel) {
                Ok(port) => return port,
                Err(e) => errors.push(e),
            }
        }
        panic!("no sentinel names a master: {errors:?}");
    }

    /// Waits until every sentinel names the replica as the master and the
    /// replica has taken the role.
    pub async fn wait_failover(&self, timeout: Duration) {
        let replica = self.replica.port;
        let deadline = Instant::now() + timeout;
        loop {
            let mut last = String::new();
            let mut promoted = true;
            for (i, sentinel) in self.sentinels.iter().enumerate() {
                match sentinel_master_port(sentinel) {
                    Ok(port) if port == replica => {}
                    other => {
                        promoted = false;
                        last = format!("sentinel {i}: {other:?}");
                    }
                }
            }
            if promoted {
                let info = self.replica.info_replication();
                match info {
                    Ok(info) if info_field(&info, "role") == Some("master") => return,
                    other => last = format!("replica: {other:?}"),
                }
            }
            assert!(
                Instant::now() < deadline,
                "no failover to port {replica} within {timeout:?}; last seen: {last}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// `SENTINEL GET-MASTER-ADDR-BY-NAME` on one sentinel.
fn sentinel_master_port(sentinel: &RedisProcess) -> Result<u16, String> {
    let addr: Option<(String, String)> = query(
        sentinel,
        redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(MASTER_NAME),
    )?;
    let (_, port) = addr.ok_or("the sentinel knows no master")?;
    port.parse()
        .map_err(|e| format!("odd master port {port:?}: {e}"))
}

/// The value after `name` in a sentinel's flat field list.
fn field<'a>(fields: &'a [String], name: &str) -> Option<&'a String> {
    fields
        .chunks(2)
        .find(|pair| pair.first().is_some_and(|k| k == name))
        .and_then(|pair| pair.get(1))
}
