//! The lifecycle events streams (`tandem:{<class>}:events`): what each
//! change of a task writes, read as `redis-cli` would; switched off; and
//! `tandem events --follow`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use redis::AsyncCommands;
use tandem_producer::{CancelOutcome, Task};
use tandem_shared::kind::builtin::{Echo, Fail, FailParams, Noop, Sleep, SleepParams};
use tandem_shared::{Config, Status, TaskId};

use crate::support::{RedisServer, WorkerProcess, bin, wait_until};

/// One event as the stream holds it: its fields by name.
type Event = std::collections::HashMap<String, String>;

/// Every event of the `cpu` class, oldest first.
async fn events(redis: &RedisServer) -> Vec<Event> {
    let mut conn = redis.conn().await;
    let entries: redis::streams::StreamRangeReply = conn
        .xrange_all("tandem:{cpu}:events")
        .await
        .expect("XRANGE");
    entries
        .ids
        .into_iter()
        .map(|entry| {
            entry
                .map
                .into_iter()
                .map(|(k, v)| (k, redis::from_redis_value::<String>(v).unwrap()))
                .collect()
        })
        .collect()
}

/// The names of `id`'s events, in order.
fn names_of(events: &[Event], id: TaskId) -> Vec<String> {
    let id = id.to_string();
    events
        .iter()
        .filter(|e| e.get("id") == Some(&id))
        .map(|e| e["event"].clone())
        .collect()
}

/// `id`'s first event named `name`.
fn event<'a>(events: &'a [Event], id: TaskId, name: &str) -> &'a Event {
    let id = id.to_string();
    events
        .iter()
        .find(|e| e.get("id") == Some(&id) && e["event"] == name)
        .unwrap_or_else(|| panic!("no {name} event for {id} in {events:?}"))
}

#[tokio::test]
async fn each_change_of_a_task_writes_one_event_with_its_kind_class_worker_and_device() {
    let redis = RedisServer::start();
    let producer = redis.producer().await;
    // Queued before any worker runs, with a deadline that passes first.
    let expiring = producer
        .submit(
            Task::of::<Noop>(&rmpv::Value::Nil)
                .unwrap()
                .deadline(Duration::from_millis(1)),
        )
        .await
        .unwrap();
    let conn = redis.conn().await;
    let deadline: u64 = conn
        .clone()
        .hget(format!("tandem:{{cpu}}:task:{expiring}"), "deadline_ms")
        .await
        .unwrap();
    wait_until(Duration::from_secs(10), "the deadline passed", || {
        let mut conn = conn.clone();
        async move {
            let (secs, micros): (u64, u64) =
                redis::cmd("TIME").query_async(&mut conn).await.unwrap();
            secs * 1000 + micros / 1000 > deadline
        }
    })
    .await;
    let worker = WorkerProcess::start(&redis, &[("TANDEM_RETRY_BASE_MS", "20")]).await;

    let echoed = producer
        .submit(Task::of::<Echo>(&rmpv::Value::from("hi")).unwrap())
        .await
        .unwrap();
    let failing = producer
        .submit(
            Task::of::<Fail>(&FailParams {
                code: "VENDOR_DOWN".into(),
                message: "try later".into(),
                retry: true,
            })
            .unwrap()
            .max_attempts(2),
        )
        .await
        .unwrap();
    let long = producer
        .submit(Task::of::<Sleep>(&SleepParams { ms: 600_000 }).unwrap())
        .await
        .unwrap();
    for id in [echoed, failing, expiring] {
        producer.wait(id, Duration::from_secs(60)).await.unwrap();
    }
    wait_until(Duration::from_secs(20), "the sleep runs", || {
        let producer = producer.clone();
        async move { producer.status(long).await.unwrap() == Status::Running }
    })
    .await;
    assert_eq!(
        producer.cancel(long).await.unwrap(),
        CancelOutcome::Requested
    );
    let cancelled = producer.wait(long, Duration::from_secs(60)).await.unwrap();
    assert_eq!(cancelled.status, Status::Cancelled);

    let all = events(&redis).await;
    assert_eq!(
        names_of(&all, echoed),
        ["submitted", "started", "succeeded"]
    );
    assert_eq!(
        names_of(&all, failing),
        [
            "submitted",
            "started",
            "retried",
            "started",
            "failed",
            "dead_lettered"
        ]
    );
    assert_eq!(names_of(&all, expiring), ["submitted", "expired"]);
    assert_eq!(names_of(&all, long), ["submitted", "started", "cancelled"]);

    let submitted = event(&all, echoed, "submitted");
    assert_eq!(submitted["kind"], "echo");
    assert_eq!(submitted["class"], "cpu");
    assert!(!submitted.contains_key("worker"), "nobody runs it yet");
    let started = event(&all, echoed, "started");
    assert_eq!(started["worker"], worker.id);
    assert_eq!(started["device"], "cpu");
    assert_eq!(started["attempt"], "1");
    let done = event(&all, echoed, "succeeded");
    assert_eq!(done["worker"], worker.id);
    assert!(done["at_ms"].parse::<u64>().unwrap() >= started["at_ms"].parse::<u64>().unwrap());

    let retried = event(&all, failing, "retried");
    assert_eq!(retried["error_code"], "VENDOR_DOWN");
    assert!(retried["retry_at_ms"].parse::<u64>().is_ok());
    let failed = event(&all, failing, "failed");
    assert_eq!(failed["attempt"], "2");
    assert_eq!(failed["error_code"], "VENDOR_DOWN");
    let record = producer.record(failing).await.unwrap().unwrap();
    assert_eq!(
        Some(&failed["dead_letter"]),
        record.dead_letter.as_ref(),
        "the event names the dead letter"
    );
    assert_eq!(
        event(&all, failing, "dead_lettered")["dead_letter"],
        failed["dead_letter"]
    );
}

#[tokio::test]
async fn with_events_off_nothing_is_written() {
    let redis = RedisServer::start();
    let _worker = WorkerProcess::start(&redis, &[("TANDEM_EVENTS", "false")]).await;
    let producer = tandem_producer::Producer::connect(&Config {
        events: false,
        ..redis.config()
    })
    .await
    .unwrap();
    let id = producer
        .submit(Task::of::<Echo>(&rmpv::Value::from(1)).unwrap())
        .await
        .unwrap();
    let outcome = producer.wait(id, Duration::from_secs(60)).await.unwrap();
    assert_eq!(outcome.status, Status::Succeeded);
    let mut conn = redis.conn().await;
    let exists: bool = conn.exists("tandem:{cpu}:events").await.unwrap();
    assert!(!exists, "events = false writes no events stream");
}

/// A `tandem events --follow` child whose stdout lines arrive on a channel.
struct Follower {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Follower {
    fn start(redis: &RedisServer, args: &[&str]) -> Self {
        let mut child = Command::new(bin("tandem"))
            .arg("events")
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("REDIS_URL", redis.url())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run tandem events");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Self { child, lines }
    }

    /// Lines until one contains `wanted` (bounded by a generous limit).
    fn until(&self, wanted: &str) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("no line with {wanted:?}; saw {seen:#?}"));
            let found = line.contains(wanted);
            seen.push(line);
            if found {
                return seen;
            }
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn tandem_events_follow_prints_new_events_of_the_kinds_asked_for() {
    let redis = RedisServer::start();
    let _worker = WorkerProcess::start(&redis, &[]).await;
    let producer = redis.producer().await;
    // An event from before the follower starts: `--count 0` leaves it out.
    let before = producer
        .submit(Task::of::<Echo>(&rmpv::Value::from(0)).unwrap())
        .await
        .unwrap();
    producer
        .wait(before, Duration::from_secs(60))
        .await
        .unwrap();

    let follower = Follower::start(&redis, &["--follow", "--kind", "echo", "--count", "0"]);
    // The follower is reading once an event it must print shows up: echo
    // tasks until one does (bounded by a generous limit).
    let limit = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let id = producer
            .submit(Task::of::<Echo>(&rmpv::Value::from(1)).unwrap())
            .await
            .unwrap();
        producer.wait(id, Duration::from_secs(60)).await.unwrap();
        if follower
            .lines
            .recv_timeout(Duration::from_millis(500))
            .is_ok()
        {
            break;
        }
        assert!(
            std::time::Instant::now() < limit,
            "the follower printed nothing"
        );
    }

    let noop = producer
        .submit(Task::of::<Noop>(&rmpv::Value::Nil).unwrap())
        .await
        .unwrap();
    producer.wait(noop, Duration::from_secs(60)).await.unwrap();
    let echoed = producer
        .submit(Task::of::<Echo>(&rmpv::Value::from(2)).unwrap())
        .await
        .unwrap();
    producer
        .wait(echoed, Duration::from_secs(60))
        .await
        .unwrap();

    let lines = follower.until(&format!("{echoed}"));
    let lines = [lines, follower.until("succeeded")].concat();
    let text = lines.join("\n");
    assert!(
        !text.contains(&noop.to_string()),
        "a noop is not an echo:\n{text}"
    );
    assert!(
        !text.contains(&before.to_string()),
        "--count 0 prints no old event:\n{text}"
    );
    let mine: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains(&echoed.to_string()))
        .collect();
    assert!(mine.iter().any(|l| l.contains("submitted")), "{text}");
    assert!(
        mine.iter()
            .any(|l| l.contains("succeeded") && l.contains("echo  cpu")),
        "{text}"
    );
}

#[test]
fn tandem_events_refuses_an_unknown_event_name() {
    let out = Command::new(bin("tandem"))
        .args(["events", "--event", "finished"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("REDIS_URL", "redis://127.0.0.1:1")
        .output()
        .expect("run tandem");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--event \"finished\" is no event"),
        "{stderr}"
    );
    assert!(
        stderr.contains("succeeded"),
        "the message lists the events: {stderr}"
    );
}
