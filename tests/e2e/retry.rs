//! A producer retries while Redis is not there yet, restarting, or loading
//! its data: the first connection, the scripts' loading and `LOADING`
//! replies are all inside `reconnect_timeout_ms`, for the library and the
//! `tandem` CLI.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use redis::AsyncCommands;
use tandem_producer::{Producer, Task};
use tandem_shared::kind::builtin::{Sleep, SleepParams};
use tandem_shared::{Config, TaskId};

use crate::support::{RedisServer, ScratchDir, bin, free_port, poll_tick, wait_until};

/// The connections a client under test opened (and had closed at once)
/// before Redis ran: 1 + the 3 retries redis-rs makes within a connect.
/// Waiting for more than that proves the client retried beyond them, which
/// the producer did not before (it gave up after about 1.2 s).
const TRIES_BEFORE_REDIS: usize = 6;

/// Listens on `port` in Redis's place and closes every connection at once,
/// until `TRIES_BEFORE_REDIS` came or `gave_up` says the client stopped.
async fn refuse_until_retried(port: u16, gave_up: impl Fn() -> Option<String>) {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind the port Redis will use");
    let mut tries = 0;
    while tries < TRIES_BEFORE_REDIS {
        tokio::select! {
            accepted = listener.accept() => {
                drop(accepted.expect("accept"));
                tries += 1;
            }
            () = poll_tick() => {
                if let Some(why) = gave_up() {
                    panic!("the client gave up after {tries} connection tries: {why}");
                }
            }
        }
    }
}

#[tokio::test]
async fn a_producer_started_before_redis_waits_for_it_and_submits() {
    let port = free_port();
    let config = Config {
        redis_url: format!("redis://127.0.0.1:{port}"),
        connect_timeout_ms: 500,
        reconnect_timeout_ms: 120_000,
        ..Config::default()
    };
    let connecting = tokio::spawn({
        let config = config.clone();
        async move {
            let producer = Producer::connect(&config).await?;
            producer
                .submit(Task::of::<Sleep>(&SleepParams { ms: 1 }).unwrap())
                .await
        }
    });
    refuse_until_retried(port, || {
        connecting
            .is_finished()
            .then(|| "Producer::connect returned".to_owned())
    })
    .await;
    let redis = RedisServer::start_on(port);
    let id = tokio::time::timeout(Duration::from_secs(120), connecting)
        .await
        .expect("the producer connects once Redis runs")
        .unwrap()
        .expect("connect and submit succeed once Redis runs");
    let mut conn = redis.conn().await;
    let status: Option<String> = conn
        .hget(format!("tandem:{{cpu}}:task:{id}"), "status")
        .await
        .unwrap();
    assert_eq!(status.as_deref(), Some("queued"));
}

#[tokio::test]
async fn tandem_submit_started_before_redis_waits_for_it() {
    let port = free_port();
    let child = Command::new(bin("tandem"))
        .args(["submit", "noop"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("REDIS_URL", format!("redis://127.0.0.1:{port}"))
        .env("TANDEM_CONNECT_TIMEOUT_MS", "500")
        .env("TANDEM_RECONNECT_TIMEOUT_MS", "120000")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tandem");
    let child = Arc::new(std::sync::Mutex::new(Some(child)));
    refuse_until_retried(port, || {
        let mut guard = child.lock().unwrap();
        let exited = guard.as_mut()?.try_wait().ok()??;
        let out = guard.take()?.wait_with_output().ok()?;
        Some(format!(
            "tandem submit exited ({exited}): {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    })
    .await;
    let redis = RedisServer::start_on(port);
    let child = child.lock().unwrap().take().expect("still running");
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let id: TaskId = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("tandem submit prints the task id");
    let mut conn = redis.conn().await;
    let status: Option<String> = conn
        .hget(format!("tandem:{{cpu}}:task:{id}"), "status")
        .await
        .unwrap();
    assert_eq!(status.as_deref(), Some("queued"), "{stderr}");
    // The outage is told once, with the URL, not once per try.
    assert_eq!(
        stderr.matches("unreachable or not ready").count(),
        1,
        "{stderr}"
    );
    assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");
}

/// A redis-server with AOF whose loading is slowed down (`key-load-delay`,
/// a setting Redis keeps for its own tests): after a restart it answers
/// `LOADING` for at least `keys` x 50 µs, however fast the machine.
struct SlowLoadingRedis {
    child: Child,
    port: u16,
    dir: ScratchDir,
}

impl SlowLoadingRedis {
    fn spawn(port: u16, dir: &Path) -> Child {
        Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .args(["--key-load-delay", "50"])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server")
    }

    async fn start() -> Self {
        let dir = ScratchDir::new("loading");
        let port = free_port();
        let child = Self::spawn(port, dir.path());
        let redis = Self { child, port, dir };
        wait_until(Duration::from_secs(60), "redis-server answers", || {
            redis.info_field("persistence", "loading")
        })
        .await;
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A fresh connection each time: it works while the server loads
    /// (`INFO` is served then), and across restarts.
    async fn conn(&self) -> Option<redis::aio::MultiplexedConnection> {
        redis::Client::open(self.url())
            .ok()?
            .get_multiplexed_async_connection()
            .await
            .ok()
    }

    /// Fetches `INFO section` and returns whether `name` is 0 (or, for
    /// `loading`, whether the server is up and done loading).
    async fn info_field(&self, section: &str, name: &str) -> bool {
        self.info_value(section, name).await.as_deref() == Some("0")
    }

    async fn info_value(&self, section: &str, name: &str) -> Option<String> {
        let mut conn = self.conn().await?;
        let info: String = redis::cmd("INFO")
            .arg(section)
            .query_async(&mut conn)
            .await
            .ok()?;
        info.lines()
            .find_map(|line| line.strip_prefix(&format!("{name}:")))
            .map(|v| v.trim().to_owned())
    }

    /// SIGKILL, then the same server again on the same port and files.
    fn crash_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Self::spawn(self.port, self.dir.path());
    }
}

impl Drop for SlowLoadingRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn submits_across_a_restart_that_loads_for_seconds_all_succeed_once() {
    let mut redis = SlowLoadingRedis::start().await;
    // Ballast: 100,000 keys make the restarted server load for at least
    // 5 s, more than twice the producer's longest pause between retries
    // (2 s), so some of its retries land while the server says LOADING.
    {
        let mut conn = redis.conn().await.expect("connect");
        for chunk in 0..20 {
            let mut pipe = redis::pipe();
            for i in 0..5_000 {
                pipe.set(format!("ballast:{chunk}:{i}"), "x").ignore();
            }
            let () = pipe.query_async(&mut conn).await.unwrap();
        }
    }
    let producer = Producer::connect(&Config {
        redis_url: redis.url(),
        reconnect_timeout_ms: 120_000,
        ..Config::default()
    })
    .await
    .unwrap();

    // Submit batches in a loop until told to stop; every call must return
    // Ok, however long the outage.
    let stop = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicUsize::new(0));
    let submitting = tokio::spawn({
        let (producer, stop, accepted) = (producer.clone(), stop.clone(), accepted.clone());
        async move {
            let mut ids = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let batch = (0..5)
                    .map(|_| Task::of::<Sleep>(&SleepParams { ms: 1 }).unwrap())
                    .collect();
                match producer.submit_many(batch).await {
                    Ok(batch) => ids.extend(batch),
                    Err(err) => return Err((ids.len(), err)),
                }
                accepted.store(ids.len(), Ordering::SeqCst);
                tokio::task::yield_now().await;
            }
            Ok(ids)
        }
    });
    wait_until(
        Duration::from_secs(60),
        "some submits before the crash",
        || {
            let accepted = accepted.clone();
            async move { accepted.load(Ordering::SeqCst) >= 50 }
        },
    )
    .await;
    redis.crash_and_restart();
    let before_load_ended = accepted.load(Ordering::SeqCst);
    wait_until(
        Duration::from_secs(300),
        "the restarted server loaded",
        || redis.info_field("persistence", "loading"),
    )
    .await;
    // (Or the loop ended early: a submit failed, reported below.)
    wait_until(
        Duration::from_secs(120),
        "submits after the restart",
        || {
            let done = accepted.load(Ordering::SeqCst) >= before_load_ended + 50;
            let failed = submitting.is_finished();
            async move { done || failed }
        },
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    let ids = match submitting.await.unwrap() {
        Ok(ids) => ids,
        Err((done, err)) => panic!("a submit failed after {done} accepted: {err}"),
    };

    // The producer really met LOADING: the server counts the error replies
    // it sent, and nothing else talked to it while it loaded (INFO, which
    // the test uses, is served while loading).
    let loading_errors = redis
        .info_value("errorstats", "errorstat_LOADING")
        .await
        .unwrap_or_default();
    assert!(
        loading_errors.starts_with("count=") && loading_errors != "count=0",
        "the producer never got a LOADING reply ({loading_errors:?}): the test tested nothing"
    );
    eprintln!(
        "{} submits accepted across the restart; the server sent LOADING {loading_errors}",
        ids.len()
    );
    // Every accepted task is there once: a record and one entry each.
    let mut conn = redis.conn().await.expect("connect");
    let entries: redis::streams::StreamRangeReply =
        conn.xrange_all("tandem:{cpu}:stream:normal").await.unwrap();
    let mut in_stream: Vec<String> = entries
        .ids
        .iter()
        .filter_map(|entry| entry.get::<String>("id"))
        .collect();
    in_stream.sort();
    let mut accepted_ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
    accepted_ids.sort();
    assert_eq!(in_stream, accepted_ids, "each accepted task has one entry");
    for id in &ids {
        let status: Option<String> = conn
            .hget(format!("tandem:{{cpu}}:task:{id}"), "status")
            .await
            .unwrap();
        assert_eq!(status.as_deref(), Some("queued"), "{id}");
    }
}
