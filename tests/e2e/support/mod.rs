//! Test support: a private `redis-server` per test, real worker processes,
//! and bounded waits. Every guard kills what it started when dropped, also
//! when the test fails, and then shows the process's log.

#![allow(dead_code)]

pub mod chaos;
pub mod gpus;
pub mod ha;
pub mod split;

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tandem_producer::Producer;
use tandem_shared::Config;

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A scratch directory removed on drop.
#[derive(Debug)]
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    pub fn new(what: &str) -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("tandem-e2e-{}-{what}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create scratch dir");
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `redis-server` of this test's own, on a free loopback port.
#[derive(Debug)]
pub struct RedisServer {
    child: Child,
    pub port: u16,
    pub dir: ScratchDir,
    /// Extra `redis-server` arguments, kept for restarts.
    extra: Vec<String>,
    /// The CA certificate (PEM file) of a TLS-only server.
    pub tls_ca: Option<PathBuf>,
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts with extra `redis-server` arguments, e.g. `["--appendonly", "yes"]`.
    pub fn start_with(extra: &[&str]) -> Self {
        let dir = ScratchDir::new("redis");
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        for _ in 0..10 {
            let port = free_port();
            let mut child = spawn_redis(port, dir.path(), &extra);
            if wait_for_pong(&mut child, port) {
                return RedisServer {
                    child,
                    port,
                    dir,
                    extra,
                    tls_ca: None,
                };
            }
            // The port was taken between our probe and redis binding it.
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("could not start redis-server on a free port");
    }

    /// Starts a server on a given port (a test that started a client first).
    pub fn start_on(port: u16) -> Self {
        let dir = ScratchDir::new("redis");
        let mut child = spawn_redis(port, dir.path(), &[]);
        assert!(
            wait_for_pong(&mut child, port),
            "redis-server did not start on port {port}"
        );
        RedisServer {
            child,
            port,
            dir,
            extra: Vec::new(),
            tls_ca: None,
        }
    }

    /// A server that speaks TLS only, with a certificate for 127.0.0.1
    /// signed by a CA made for this test.
    pub fn start_tls() -> Self {
        let dir = ScratchDir::new("redis-tls");
        let ca_key = rcgen::KeyPair::generate().expect("ca key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "tandem test CA");
        let ca_cert = ca_params.self_signed(&ca_key).expect("ca cert");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let server_key = rcgen::KeyPair::generate().expect("server key");
        let server_params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .expect("server params");
        let server_cert = server_params
            .signed_by(&server_key, &issuer)
            .expect("server cert");
        let write = |name: &str, text: String| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).expect("write pem");
            path
        };
        let ca = write("ca.pem", ca_cert.pem());
        let cert = write("server.pem", server_cert.pem());
        let key = write("server.key", server_key.serialize_pem());
        for _ in 0..10 {
            let port = free_port();
            let extra: Vec<String> = [
                "--port".to_owned(),
                "0".to_owned(),
                "--tls-port".to_owned(),
                port.to_string(),
                "--tls-cert-file".to_owned(),
                cert.display().to_string(),
                "--tls-key-file".to_owned(),
                key.display().to_string(),
                "--tls-ca-cert-file".to_owned(),
                ca.display().to_string(),
                "--tls-auth-clients".to_owned(),
                "no".to_owned(),
            ]
            .into();
            let mut child = spawn_redis(0, dir.path(), &extra);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return RedisServer {
                        child,
                        port,
                        dir,
                        extra,
                        tls_ca: Some(ca),
                    };
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("could not start a TLS redis-server");
    }

    /// Kills the server (SIGKILL: no shutdown save) and starts it again on
    /// the same port and directory, as a crash and restart would.
    pub fn crash_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut child = spawn_redis(self.port, self.dir.path(), &self.extra);
            if wait_for_pong(&mut child, self.port) {
                self.child = child;
                return;
            }
            let _ = child.kill();
            let _ = child.wait();
            assert!(
                Instant::now() < deadline,
                "redis-server did not come back on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls_ca.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The settings a worker process needs to reach this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![("TANDEM_REDIS_URL", self.url())];
        if let Some(ca) = &self.tls_ca {
            env.push(("TANDEM_TLS_CA_FILE", ca.display().to_string()));
        }
        env
    }

    /// A configuration pointing at this server with test-friendly timings.
    pub fn config(&self) -> Config {
        Config {
            redis_url: self.url(),
            tls_ca_file: self
                .tls_ca
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            heartbeat_interval_ms: 200,
            heartbeat_ttl_ms: 1_000,
            shutdown_grace_ms: 5_000,
            ..Config::default()
        }
    }

    pub async fn producer(&self) -> Producer {
        Producer::connect(&self.config())
            .await
            .expect("producer connects")
    }

    /// A plain connection, to look at Redis as `redis-cli` would.
    /// How many times Redis ran `command` since it started or the last
    /// `CONFIG RESETSTAT` (`calls` in `INFO commandstats`; 0 when never).
    /// A subcommand is named as Redis names it: `xinfo|groups`.
    pub async fn command_calls(&self, command: &str) -> u64 {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut self.conn().await)
            .await
            .expect("INFO commandstats");
        let prefix = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        let config =
            redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(30)));
        tandem_shared::connect::client(&self.config())
            .expect("url")
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .expect("connect")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real `tandem-worker` process.
#[derive(Debug)]
pub struct WorkerProcess {
    child: Option<Child>,
    pub id: String,
    log: PathBuf,
    _dir: ScratchDir,
}

impl WorkerProcess {
    /// Starts a worker against `redis` with test timings and `env` on top.
    pub fn spawn(redis: &RedisServer, env: &[(&str, &str)]) -> Self {
        Self::spawn_command(&redis.env(), &["run"], env, true)
    }

    /// Starts a worker whose Redis settings are `redis_env` (a Sentinel or
    /// Cluster URL, say), with test timings and `env` on top.
    pub fn spawn_with(redis_env: &[(&'static str, String)], env: &[(&str, &str)]) -> Self {
        Self::spawn_command(redis_env, &["run"], env, true)
    }

    /// Starts `tandem-worker fleet` against `redis`; its children get the
    /// same test timings (and ids of their own).
    pub fn spawn_fleet(redis: &RedisServer, env: &[(&str, &str)]) -> Self {
        Self::spawn_command(&redis.env(), &["fleet"], env, false)
    }

    fn spawn_command(
        redis_env: &[(&'static str, String)],
        args: &[&str],
        env: &[(&str, &str)],
        with_id: bool,
    ) -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let id = format!("test-worker-{}-{n}", std::process::id());
        let dir = ScratchDir::new("worker");
        let log = dir.path().join("worker.log");
        let file = std::fs::File::create(&log).expect("worker log");
        let mut cmd = Command::new(bin("tandem-worker"));
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(redis_env.iter().map(|(k, v)| (k, v)));
        if with_id {
            cmd.env("TANDEM_WORKER_ID", &id);
        }
        cmd.env("TANDEM_HEARTBEAT_INTERVAL_MS", "200")
            .env("TANDEM_HEARTBEAT_TTL_MS", "1000")
            .env("TANDEM_SHUTDOWN_GRACE_MS", "5000")
            .env("TANDEM_LOG_LEVEL", "info,tandem_worker=debug")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log"))
            .stderr(file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn tandem-worker");
        Self {
            child: Some(child),
            id,
            log,
            _dir: dir,
        }
    }

    /// Starts a worker and waits until it is registered (ready to claim).
    pub async fn start(redis: &RedisServer, env: &[(&str, &str)]) -> Self {
        let worker = Self::spawn(redis, env);
        worker.wait_registered(redis).await;
        worker
    }

    pub async fn wait_registered(&self, redis: &RedisServer) {
        let mut conn = redis.conn().await;
        let key = format!("tandem:worker:{}", self.id);
        wait_until(Duration::from_secs(20), "worker registered", || {
            let mut conn = conn.clone();
            let key = key.clone();
            async move {
                let exists: bool = redis::cmd("EXISTS")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
                    .unwrap_or(false);
                exists
            }
        })
        .await;
        let _ = &mut conn;
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Sends a signal by name (TERM, KILL, STOP, CONT).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// True while the process runs.
    pub fn is_alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Waits for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "worker {} did not exit within {timeout:?}\n{}",
            self.id,
            self.log_text()
        );
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            let text = self.log_text();
            let tail: Vec<&str> = text.lines().rev().take(60).collect();
            eprintln!("---- log of {} (last lines) ----", self.id);
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// The path of a binary of this workspace, built next to the test binary.
pub fn bin(name: &str) -> PathBuf {
    if let Ok(dir) = std::env::var("TANDEM_BIN_DIR") {
        return PathBuf::from(dir).join(name);
    }
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/e2e-<hash> -> target/<profile>/<name>
    let path = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join(name))
        .expect("target dir");
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace` so the binaries are built",
        path.display()
    );
    assert_fresh(&path, name);
    path
}

/// `cargo test -p tandem-tests` alone does not rebuild the binaries the tests
/// run; catch a binary older than its sources instead of testing old code.
fn assert_fresh(binary: &Path, name: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    let sources: &[&str] = match name {
        "tandem-worker" => &["worker/src", "shared/src", "shared/lua", "kernels/src"],
        "tandem" => &["cli/src", "producer/src", "shared/src", "shared/lua"],
        _ => &[],
    };
    let built = modified(binary);
    for dir in sources {
        if let Some(newer) = newest_file(&root.join(dir)).filter(|(time, _)| *time > built) {
            panic!(
                "{} is older than {}: run `cargo test --workspace` (or `cargo build`) so the tests run current code",
                binary.display(),
                newer.1.display()
            );
        }
    }
}

fn modified(path: &Path) -> std::time::SystemTime {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .unwrap_or(std::time::UNIX_EPOCH)
}

fn newest_file(dir: &Path) -> Option<(std::time::SystemTime, PathBuf)> {
    let mut newest: Option<(std::time::SystemTime, PathBuf)> = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let candidate = if path.is_dir() {
            newest_file(&path)
        } else {
            Some((modified(&path), path))
        };
        if let Some(c) = candidate
            && newest.as_ref().is_none_or(|n| c.0 > n.0)
        {
            newest = Some(c);
        }
    }
    newest
}

/// Starts `redis-server` on `port` (0: no plain port; `extra` names a TLS one).
fn spawn_redis(port: u16, dir: &Path, extra: &[String]) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("redis.log"))
        .expect("redis log");
    Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .args(extra)
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("redis-server must be installed to run the end-to-end tests (apt-get install redis-server)")
}

fn wait_for_pong(child: &mut Child, port: u16) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
            let mut reply = [0u8; 7];
            if stream.write_all(b"PING\r\n").is_ok()
                && std::io::Read::read_exact(&mut stream, &mut reply).is_ok()
                && &reply == b"+PONG\r\n"
            {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Runs the `tandem` CLI against `redis`, with nothing from this process's
/// environment but `PATH`.
pub fn tandem(redis: &RedisServer, args: &[&str]) -> std::process::Output {
    Command::new(bin("tandem"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("REDIS_URL", redis.url())
        .output()
        .expect("run tandem")
}

/// A process's output as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// User plus system CPU time of a process, from `/proc/<pid>/stat`.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // The kernel's USER_HZ is 100 on Linux.
    Duration::from_millis(ticks * 10)
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Polls `check` (blocking code, for tests without a runtime) until it
/// returns true; false once `timeout` passed without it.
pub fn poll_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `check` until it returns true; false once `timeout` passed without
/// it, for a caller that says more than [`wait_until`] can.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The tick of a `select!` that waits for an event and, between events,
/// looks at a condition that sends none (has the client under test given
/// up?): 50 ms, the one fixed pause such a loop needs.
pub async fn poll_tick() {
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// Polls `check` until it returns true, panicking after `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
