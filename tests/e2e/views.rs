//! The operator's views against a live worker and real tasks: `tandem
//! workers`, `tandem task ID` (the whole story of a task), `tandem top
//! --once`.

use std::time::Duration;

use tandem_shared::{Status, TaskId};

use crate::support::{RedisServer, WorkerProcess, tandem, wait_until};

/// Runs `tandem` and returns its stdout, failing the test on a non-zero exit.
pub(crate) fn tandem_ok(redis: &RedisServer, args: &[&str]) -> String {
    let out = tandem(redis, args);
    assert!(
        out.status.success(),
        "tandem {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn workers_lists_the_worker_with_its_device() {
    let redis = RedisServer::start();
    let worker = WorkerProcess::start(&redis, &[]).await;
    let text = tandem_ok(&redis, &["workers"]);
    let header: Vec<&str> = text.lines().next().unwrap().split_whitespace().collect();
    for column in ["util", "temp", "power", "tasks/s"] {
        assert!(header.contains(&column), "{column} missing:\n{text}");
    }
    let line = text
        .lines()
        .find(|l| l.contains(&worker.id))
        .unwrap_or_else(|| panic!("no row for {}:\n{text}", worker.id));
    let cells: Vec<&str> = line.split_whitespace().collect();
    // host, worker, device, name, role, health, then the device readings,
    // which a CPU worker has none of.
    assert_eq!(
        &cells[1..7],
        [worker.id.as_str(), "cpu", "-", "cpu", "healthy", "-"]
    );
}

/// A retryable failure, then, before its retry is due, the parked entry's
/// kind turned from `fail` to `echo` (atomically, only while it is still
/// parked): the retry succeeds, so the task failed once, then succeeded.
#[tokio::test]
async fn task_shows_a_failed_attempt_then_the_successful_one_and_the_result() {
    let redis = RedisServer::start();
    let worker = WorkerProcess::start(
        &redis,
        &[
            ("TANDEM_TEST_KINDS", "1"),
            // Retries wait 1 to 2 s: time enough to edit the parked entry.
            ("TANDEM_RETRY_BASE_MS", "2000"),
            ("TANDEM_RETRY_MAX_MS", "2000"),
        ],
    )
    .await;
    let id = tandem_ok(
        &redis,
        &[
            "submit",
            "fail",
            "--params",
            r#"{"code": "E_FLAKY", "message": "upstream timed out", "retry": true}"#,
            "--max-attempts",
            "3",
        ],
    )
    .trim()
    .to_owned();
    let task_id: TaskId = id.parse().unwrap();
    let producer = redis.producer().await;
    wait_until(Duration::from_secs(20), "first attempt failed", || async {
        let record = producer.record(task_id).await.unwrap().unwrap_or_default();
        record.status == Some(Status::Retrying)
    })
    .await;
    let edited: i64 = redis::Script::new(
        "if redis.call('ZSCORE', KEYS[1], ARGV[1]) then \
           return redis.call('HSET', KEYS[2], 'kind', 'echo') + 1 end return 0",
    )
    .key("tandem:{cpu}:delayed")
    .key(format!("tandem:{{cpu}}:retry:{id}"))
    .arg(&id)
    .invoke_async(&mut redis.conn().await)
    .await
    .unwrap();
    assert_eq!(edited, 1, "the retry was no longer parked");
    tandem_ok(&redis, &["wait", &id]);

    let text = tandem_ok(&redis, &["task", &id]);
    assert!(
        text.starts_with(&format!("task {id}  fail  succeeded")),
        "{text}"
    );
    assert!(
        text.contains("class cpu, priority normal, at most 3 attempts"),
        "{text}"
    );
    assert!(text.contains("2 (1 retry, 0 hand-backs)"), "{text}");
    assert!(text.contains("upstream timed out"), "{text}");
    let attempt_rows: Vec<&str> = text.lines().filter(|l| l.contains(&worker.id)).collect();
    assert_eq!(attempt_rows.len(), 2, "{text}");
    assert!(
        attempt_rows[0].contains("failed") && attempt_rows[0].contains("E_FLAKY"),
        "{text}"
    );
    assert!(attempt_rows[1].contains("succeeded"), "{text}");
    let result = text.lines().find(|l| l.starts_with("result")).expect(&text);
    assert!(
        result.contains("E_FLAKY"),
        "echo returns its params: {text}"
    );

    let json: serde_json::Value =
        serde_json::from_str(&tandem_ok(&redis, &["task", &id, "--json"])).unwrap();
    assert_eq!(json["status"], "succeeded");
    let attempts = json["attempts"].as_array().unwrap();
    let story: Vec<(&str, &str)> = attempts
        .iter()
        .map(|a| (a["status"].as_str().unwrap(), a["worker"].as_str().unwrap()))
        .collect();
    assert_eq!(
        story,
        [
            ("failed", worker.id.as_str()),
            ("succeeded", worker.id.as_str())
        ]
    );
    assert_eq!(attempts[0]["error_code"], "E_FLAKY");
    assert_eq!(json["retries"], 1);
    assert_eq!(json["result"]["code"], "E_FLAKY");

    let out = tandem(&redis, &["task", &TaskId::new().to_string()]);
    assert_eq!(out.status.code(), Some(3));
}

#[tokio::test]
async fn top_once_shows_the_worker_and_the_queues() {
    let redis = RedisServer::start();
    // A worker for the cpu class only: a heavy task waits with no one to
    // take it.
    let worker = WorkerProcess::start(&redis, &[("TANDEM_CLASSES", "cpu")]).await;
    tandem_ok(
        &redis,
        &[
            "submit",
            "sleep",
            "--params",
            r#"{"ms": 1}"#,
            "--class",
            "heavy",
        ],
    );

    let text = tandem_ok(
        &redis,
        &["top", "--once", "--width", "220", "--height", "30"],
    );
    assert_eq!(text.lines().count(), 30, "{text}");
    let row = text
        .lines()
        .find(|l| l.contains(&worker.id))
        .unwrap_or_else(|| panic!("no row for {}:\n{text}", worker.id));
    assert!(row.contains("cpu") && row.contains("healthy"), "{text}");
    // The class x priority matrix: heavy has one task waiting at normal.
    let heavy = text
        .lines()
        .find(|l| l.starts_with("│heavy "))
        .unwrap_or_else(|| panic!("no heavy row:\n{text}"));
    let cells: Vec<&str> = heavy.trim_matches('│').split_whitespace().collect();
    // class, critical, high, normal, low, running.
    assert_eq!(&cells[..6], ["heavy", "-", "-", "1", "-", "0"], "{text}");
    assert!(text.contains("1 waiting"), "{text}");
}
