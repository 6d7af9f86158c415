//! Alerts with simulated devices and short settings: a `hot` GPU raises
//! `gpu_hot`, an `underused` one running tasks `gpu_underused`, a failing
//! device `device_failed` before its worker exits; a task no worker takes
//! raises `queue_stalled` (once per interval for a fleet of two), dead
//! letters `dead_letters_growing`, entries in a stream no worker reads
//! `unknown_stream` (on one server and on every master of a Cluster);
//! `tandem alerts` lists them, `tandem queues` the unknown streams.

use std::process::Command;

use tandem_producer::Task;
use tandem_shared::Class;
use tandem_shared::kind::builtin::{Fail, FailParams, Sleep, SleepParams};
use tandem_shared::store::{Alert, AlertEntry, ScanPosition};

use crate::support::gpus::{WAIT, store, wait_healthy};
use crate::support::ha::RedisCluster;
use crate::support::{RedisServer, WorkerProcess, bin, wait_until};

/// Settings short enough that every alert comes within a few seconds.
const SHORT: &[(&str, &str)] = &[
    ("TANDEM_METRICS_INTERVAL_MS", "200"),
    ("TANDEM_ALERT_INTERVAL_MS", "1000"),
    ("TANDEM_ALERT_UNDERUSED_MS", "500"),
    ("TANDEM_ALERT_OLDEST_WAITING_MS", "300"),
];

fn env<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut env = SHORT.to_vec();
    env.extend_from_slice(extra);
    env
}

fn gpu_env(spec: &str) -> Vec<(&str, &str)> {
    env(&[
        ("TANDEM_SIMULATE_GPUS", spec),
        ("TANDEM_DEVICE", "0"),
        ("TANDEM_CONCURRENCY", "2"),
    ])
}

/// The alerts stream, newest first.
async fn alerts(redis: &RedisServer) -> Vec<AlertEntry> {
    store(redis).await.alerts(1_000).await.expect("alerts")
}

/// Waits for an alert named `name` raised by `worker`; returns it.
async fn wait_alert(redis: &RedisServer, name: &str, worker: &str) -> Alert {
    let matches = |a: &Alert| a.alert == name && a.worker == worker;
    wait_until(WAIT, &format!("{name} from {worker}"), || async {
        alerts(redis).await.iter().any(|e| matches(&e.alert))
    })
    .await;
    alerts(redis)
        .await
        .into_iter()
        .map(|e| e.alert)
        .find(|a| matches(a))
        .unwrap()
}

fn sleep_task(class: Class, ms: u64) -> Task {
    Task::of::<Sleep>(&SleepParams { ms }).unwrap().class(class)
}

#[tokio::test]
async fn a_hot_gpu_raises_gpu_hot() {
    let redis = RedisServer::start();
    let worker = WorkerProcess::spawn(&redis, &gpu_env("Hot, 8 GiB, 10 TFLOPS, hot"));
    let alert = wait_alert(&redis, "gpu_hot", &worker.id).await;
    assert_eq!((alert.value, alert.threshold), (95.0, 85.0), "{alert:?}");
    assert!(alert.device.starts_with("SIM-"), "{alert:?}");
    assert!(alert.at_ms > 0 && !alert.message.is_empty(), "{alert:?}");
    // The structured warning in the log, with its fields.
    let log = worker.log_text();
    assert!(
        log.contains("alert gpu_hot") && log.contains("value=95"),
        "{log}"
    );
}

#[tokio::test]
async fn an_underused_gpu_running_tasks_raises_gpu_underused() {
    let redis = RedisServer::start();
    let worker = WorkerProcess::spawn(&redis, &gpu_env("Idle, 8 GiB, 10 TFLOPS, underused"));
    wait_healthy(&redis, &worker.id).await;
    let producer = redis.producer().await;
    // About four seconds of back-to-back work on two slots.
    for _ in 0..80 {
        producer
            .submit(sleep_task(Class::Light, 100))
            .await
            .unwrap();
    }
    let alert = wait_alert(&redis, "gpu_underused", &worker.id).await;
    assert_eq!((alert.value, alert.threshold), (0.2, 0.5), "{alert:?}");
}

#[tokio::test]
async fn a_failed_device_raises_device_failed_before_its_worker_exits() {
    let redis = RedisServer::start();
    let mut worker = WorkerProcess::spawn(&redis, &gpu_env("Bad, 8 GiB, 10 TFLOPS, fail_after=0"));
    wait_healthy(&redis, &worker.id).await;
    let producer = redis.producer().await;
    producer.submit(sleep_task(Class::Light, 10)).await.unwrap();
    assert_eq!(worker.wait_exit(WAIT), Some(3), "{}", worker.log_text());
    // Read after the exit: the worker wrote it on its way out.
    let raised: Vec<Alert> = alerts(&redis).await.into_iter().map(|e| e.alert).collect();
    let failed = raised
        .iter()
        .find(|a| a.alert == "device_failed")
        .unwrap_or_else(|| panic!("no device_failed in {raised:?}"));
    assert_eq!(failed.worker, worker.id);
    assert!(failed.device.starts_with("SIM-"), "{failed:?}");
}

#[tokio::test]
async fn a_task_no_worker_takes_raises_queue_stalled_once_per_interval_for_the_fleet() {
    let redis = RedisServer::start();
    // Two CPU workers that take only `cpu` tasks: the heavy task waits.
    let cpu_only = env(&[("TANDEM_CLASSES", "cpu")]);
    let first = WorkerProcess::start(&redis, &cpu_only).await;
    let second = WorkerProcess::start(&redis, &cpu_only).await;
    let producer = redis.producer().await;
    producer.submit(sleep_task(Class::Heavy, 10)).await.unwrap();

    let stalled = || async {
        let mut found: Vec<Alert> = alerts(&redis)
            .await
            .into_iter()
            .map(|e| e.alert)
            .filter(|a| a.alert == "queue_stalled")
            .collect();
        found.reverse();
        found
    };
    wait_until(WAIT, "three queue_stalled alerts", || async {
        stalled().await.len() >= 3
    })
    .await;
    let found = stalled().await;
    for alert in &found {
        assert_eq!(alert.stream, "tandem:{heavy}:stream:normal", "{alert:?}");
        assert!(alert.value > 300.0 && alert.threshold == 300.0, "{alert:?}");
        assert!(
            alert.worker == first.id || alert.worker == second.id,
            "{alert:?}"
        );
    }
    // One worker per interval (1 s) raised it; both raising would put
    // entries a few milliseconds apart.
    for pair in found.windows(2) {
        let gap = pair[1].at_ms.saturating_sub(pair[0].at_ms);
        assert!(gap >= 500, "two alerts {gap} ms apart: {found:?}");
    }

    // `tandem alerts` lists them, newest first.
    let out = Command::new(bin("tandem"))
        .args(["alerts", "--count", "2"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("REDIS_URL", redis.url())
        .output()
        .expect("run tandem");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let header = text.lines().next().unwrap_or_default();
    assert!(
        header.contains("alert") && header.contains("threshold"),
        "{text}"
    );
    let rows: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("queue_stalled"))
        .collect();
    assert_eq!(rows.len(), 2, "two alerts: {text}");
    assert!(rows.iter().all(|l| l.contains("{heavy}")), "{text}");
}

#[tokio::test]
async fn dead_letters_raise_dead_letters_growing() {
    let redis = RedisServer::start();
    let worker = WorkerProcess::start(&redis, &env(&[])).await;
    let producer = redis.producer().await;
    for _ in 0..2 {
        let task = Task::of::<Fail>(&FailParams {
            code: "E_ALERT".into(),
            message: "dead on arrival".into(),
            retry: false,
        })
        .unwrap()
        .class(Class::Cpu);
        let id = producer.submit(task).await.unwrap();
        producer.wait(id, WAIT).await.unwrap();
    }
    let alert = wait_alert(&redis, "dead_letters_growing", &worker.id).await;
    assert_eq!(alert.stream, "tandem:{cpu}:dead", "{alert:?}");
    assert!(alert.value >= 1.0 && alert.threshold == 1.0, "{alert:?}");
}

/// Appends `count` entries shaped like a task's to `key`, as a producer
/// that got the class or priority wrong would.
async fn add_entries(conn: &mut impl redis::aio::ConnectionLike, key: &str, count: usize) {
    for _ in 0..count {
        let _: String = redis::cmd("XADD")
            .arg(key)
            .arg("*")
            .arg("kind")
            .arg("noop")
            .arg("params")
            .arg(b"\x80".as_slice())
            .query_async(conn)
            .await
            .unwrap();
    }
}

/// `tandem queues` against `url`; its output.
fn tandem_queues(url: &str) -> String {
    tandem_queues_with(url, &[])
}

/// `tandem queues ARGS` against `url`; its output.
fn tandem_queues_with(url: &str, args: &[&str]) -> String {
    let out = Command::new(bin("tandem"))
        .arg("queues")
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("TANDEM_REDIS_URL", url)
        .output()
        .expect("run tandem");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `tandem queues` row of `key`, whatever the column widths.
fn row<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .find(|l| l.split_whitespace().next() == Some(key))
        .unwrap_or_else(|| panic!("no row for {key}:\n{text}"))
}

#[tokio::test]
async fn entries_in_streams_no_worker_reads_raise_unknown_stream_and_show_in_queues() {
    let redis = RedisServer::start();
    let mut conn = redis.conn().await;
    // A priority and a class Tandem does not know: no worker reads these.
    add_entries(&mut conn, "tandem:{cpu}:stream:urgent", 2).await;
    add_entries(&mut conn, "tandem:{bogus}:stream:normal", 1).await;
    // An empty one holds nothing up: listed, never alerted.
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg("tandem:{cpu}:stream:later")
        .arg("workers")
        .arg("$")
        .arg("MKSTREAM")
        .query_async(&mut conn)
        .await
        .unwrap();
    // Streams Tandem does read or write: a task stream, a reply stream, a
    // dead-letter stream and the alerts stream are never unknown.
    let worker = WorkerProcess::start(&redis, &env(&[])).await;
    let producer = redis.producer().await;
    let ok = producer.submit(sleep_task(Class::Cpu, 1)).await.unwrap();
    producer.wait(ok, WAIT).await.unwrap();
    let failing = Task::of::<Fail>(&FailParams {
        code: "E_ALERT".into(),
        message: "to the dead letters".into(),
        retry: false,
    })
    .unwrap()
    .class(Class::Cpu);
    let dead = producer.submit(failing).await.unwrap();
    producer.wait(dead, WAIT).await.unwrap();

    let urgent = wait_alert(&redis, "unknown_stream", &worker.id).await;
    let unknown = || async {
        let mut found: Vec<Alert> = alerts(&redis)
            .await
            .into_iter()
            .map(|e| e.alert)
            .filter(|a| a.alert == "unknown_stream")
            .collect();
        found.sort_by(|a, b| a.stream.cmp(&b.stream));
        found
    };
    wait_until(WAIT, "unknown_stream for both streams", || async {
        let found = unknown().await;
        ["tandem:{bogus}:stream:normal", "tandem:{cpu}:stream:urgent"]
            .iter()
            .all(|key| found.iter().any(|a| a.stream == *key))
    })
    .await;
    assert!(urgent.message.contains("no worker reads"), "{urgent:?}");
    for alert in unknown().await {
        let (value, why) = match alert.stream.as_str() {
            "tandem:{cpu}:stream:urgent" => (2.0, "priority \"urgent\" is not one of"),
            "tandem:{bogus}:stream:normal" => (1.0, "class \"bogus\" is not one of"),
            _ => panic!("only the two streams holding entries are alerted: {alert:?}"),
        };
        assert_eq!((alert.value, alert.threshold), (value, 0.0), "{alert:?}");
        assert!(alert.message.contains(why), "{alert:?}");
    }

    // `tandem queues` lists all three, and none of the streams Tandem uses.
    let text = tandem_queues(&redis.url());
    let section = text
        .split_once("unknown stream")
        .map(|(_, after)| after)
        .unwrap_or_else(|| panic!("no unknown streams section:\n{text}"));
    for (key, entries, why) in [
        ("tandem:{bogus}:stream:normal", "1", "class \"bogus\""),
        ("tandem:{cpu}:stream:later", "0", "priority \"later\""),
        ("tandem:{cpu}:stream:urgent", "2", "priority \"urgent\""),
    ] {
        let line = row(section, key);
        assert_eq!(line.split_whitespace().nth(1), Some(entries), "{line}");
        assert!(line.contains(why), "{line}");
    }
    for known in [
        "tandem:{cpu}:stream:normal",
        "tandem:{cpu}:dead",
        "tandem:alerts",
    ] {
        assert!(
            !section.lines().any(|l| l.starts_with(known)),
            "{known} is not unknown:\n{text}"
        );
    }
    assert!(!section.contains(":reply:"), "{text}");
    assert!(
        section.contains("3 entries in 3 streams no worker reads"),
        "{text}"
    );
}

/// A deep backlog is a key per waiting task, and finding unknown streams
/// is a pass over every key: above 10,000 keys `tandem queues` shows the
/// workers' `unknown_stream` alerts instead (so it answers in
/// milliseconds at a million waiting tasks), and scans on `--scan`.
#[tokio::test]
async fn above_ten_thousand_keys_queues_shows_unknown_streams_from_the_alerts() {
    let redis = RedisServer::start();
    let mut conn = redis.conn().await;
    add_entries(&mut conn, "tandem:{cpu}:stream:urgent", 2).await;
    let worker = WorkerProcess::start(&redis, &env(&[])).await;
    wait_alert(&redis, "unknown_stream", &worker.id).await;
    // Small keyspace: the scan runs.
    let text = tandem_queues(&redis.url());
    assert!(text.contains("2 entries in 1 streams"), "{text}");

    let mut pipe = redis::pipe();
    for i in 0..10_001 {
        pipe.cmd("SET")
            .arg(format!("elsewhere:{i}"))
            .arg(1)
            .ignore();
    }
    let _: () = pipe.query_async(&mut conn).await.unwrap();
    let text = tandem_queues(&redis.url());
    assert!(
        text.contains("not looked for here") && !text.contains("entries in 1 streams"),
        "{text}"
    );
    let line = row(&text, "tandem:{cpu}:stream:urgent");
    assert_eq!(line.split_whitespace().nth(1), Some("2"), "{line}");
    assert!(line.contains("priority \"urgent\""), "{line}");

    let text = tandem_queues_with(&redis.url(), &["--scan"]);
    assert!(text.contains("2 entries in 1 streams"), "{text}");
    assert!(!text.contains("not looked for here"), "{text}");
}

/// A worker's `unknown_stream` check takes the pass over every key in
/// slices of at most 10 `SCAN` steps and carries the cursor to its next
/// turn, so that a check costs the same at a million keys: at 30,000 keys
/// one step is not the whole pass, slices in turn cover it, and the
/// worker still finds and alerts a stream no worker reads.
#[tokio::test]
async fn above_ten_thousand_keys_the_workers_scan_in_slices_and_still_alert() {
    let redis = RedisServer::start();
    let mut conn = redis.conn().await;
    let mut pipe = redis::pipe();
    for i in 0..30_000 {
        pipe.cmd("SET")
            .arg(format!("elsewhere:{i}"))
            .arg(1)
            .ignore();
    }
    let _: () = pipe.query_async(&mut conn).await.unwrap();
    add_entries(&mut conn, "tandem:{cpu}:stream:urgent", 3).await;

    let store = tandem_shared::store::Store::connect(&redis.config())
        .await
        .expect("store");
    let (_, next) = store
        .unknown_streams_slice(ScanPosition::default(), 1)
        .await
        .expect("one step");
    assert!(next.is_some(), "one SCAN step passed over 30,001 keys");
    let mut at = Some(ScanPosition::default());
    let mut slices = 0;
    let mut found = Vec::new();
    while let Some(from) = at {
        let (streams, next) = store
            .unknown_streams_slice(from, 10)
            .await
            .expect("a slice");
        found.extend(streams.into_iter().map(|s| (s.key, s.length)));
        slices += 1;
        at = next;
    }
    assert!(slices >= 2, "30,001 keys in {slices} slice(s) of 10 steps");
    assert_eq!(found, [("tandem:{cpu}:stream:urgent".to_owned(), 3)]);

    let worker = WorkerProcess::start(&redis, &env(&[])).await;
    let alert = wait_alert(&redis, "unknown_stream", &worker.id).await;
    assert_eq!(
        (alert.stream.as_str(), alert.value),
        ("tandem:{cpu}:stream:urgent", 3.0),
        "{alert:?}"
    );
}

#[tokio::test]
async fn unknown_streams_are_found_on_every_cluster_master() {
    // `{light}` lives on node A, `{heavy}` on node B, `{cpu}` on node C.
    let cluster = RedisCluster::start();
    let store = tandem_shared::store::Store::connect(&cluster.config())
        .await
        .expect("store");
    let mut conn = store.connection();
    let keys = [
        "tandem:{light}:stream:soon",
        "tandem:{heavy}:stream:urgent",
        "tandem:{cpu}:stream:later",
    ];
    for (i, key) in keys.iter().enumerate() {
        add_entries(&mut conn, key, i + 1).await;
    }
    // A known stream on each master is left out.
    for class in ["light", "heavy", "cpu"] {
        add_entries(&mut conn, &format!("tandem:{{{class}}}:stream:normal"), 1).await;
    }
    let found = store.unknown_streams().await.expect("unknown streams");
    let mut got: Vec<(String, u64)> = found.iter().map(|s| (s.key.clone(), s.length)).collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("tandem:{cpu}:stream:later".to_owned(), 3),
            ("tandem:{heavy}:stream:urgent".to_owned(), 2),
            ("tandem:{light}:stream:soon".to_owned(), 1),
        ]
    );
    assert!(found.iter().all(|s| s.oldest_ms.is_some()), "{found:?}");
    let text = tandem_queues(&cluster.url());
    for key in keys {
        row(&text, key);
    }
}
