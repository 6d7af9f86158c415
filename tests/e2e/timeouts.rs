//! Run-time limits (`timeout_ms`): a task past its limit is stopped through
//! its `Stop` and fails with `TIMEOUT`, retried per its attempts; one that
//! does not stop within the grace period is abandoned, and its slot stays
//! taken until its computation ends. From the producer, the CLI and raw
//! Redis; bad limits refused.

use std::process::Command;
use std::time::Duration;

use tandem_producer::{ProducerError, Task};
use tandem_shared::kind::builtin::{Noop, Spin, SpinParams};
use tandem_shared::{Status, TaskId};

use crate::support::{RedisServer, WorkerProcess, bin};

/// A spin of ten minutes: only a stop ends it sooner, so every verdict
/// below holds however slow the machine is.
const TEN_MINUTES_MS: u64 = 600_000;

fn spin(ms: u64, ignore_stop: bool) -> Task {
    Task::of::<Spin>(&SpinParams { ms, ignore_stop }).unwrap()
}

/// The attempts' error codes, from the record's history.
fn history_codes(history: &str) -> Vec<String> {
    let attempts: Vec<serde_json::Value> = serde_json::from_str(history).unwrap();
    attempts
        .iter()
        .map(|a| a["error_code"].as_str().unwrap_or("").to_owned())
        .collect()
}

#[tokio::test]
async fn a_task_past_its_timeout_is_stopped_retried_and_fails_with_timeout() {
    let redis = RedisServer::start();
    let _worker = WorkerProcess::start(
        &redis,
        &[
            ("TANDEM_TEST_KINDS", "true"),
            ("TANDEM_CONCURRENCY", "1"),
            ("TANDEM_RETRY_BASE_MS", "20"),
        ],
    )
    .await;
    let producer = redis.producer().await;
    let id = producer
        .submit(
            spin(TEN_MINUTES_MS, false)
                .timeout(Duration::from_millis(300))
                .max_attempts(2),
        )
        .await
        .unwrap();
    let outcome = producer.wait(id, Duration::from_secs(120)).await.unwrap();
    assert_eq!(outcome.status, Status::Failed);
    let failure = outcome.failure().unwrap();
    assert_eq!(failure.code.as_str(), "TIMEOUT");
    assert!(
        failure
            .message
            .contains("timeout of 300 ms and was stopped"),
        "{}",
        failure.message
    );
    let record = producer.record(id).await.unwrap().unwrap();
    assert_eq!(
        record.attempt,
        Some(2),
        "TIMEOUT is retried while attempts remain"
    );
    assert_eq!(record.timeout_ms, Some(300));
    assert_eq!(
        history_codes(record.history.as_deref().unwrap()),
        ["TIMEOUT", "TIMEOUT"]
    );
    // Each attempt was stopped well before the spin's ten minutes.
    assert!(record.run_us.unwrap() < TEN_MINUTES_MS * 1000 / 2);

    // The slot came free: the one-slot worker runs the next task.
    let next = producer
        .submit(Task::of::<Noop>(&rmpv::Value::Nil).unwrap())
        .await
        .unwrap();
    let next = producer.wait(next, Duration::from_secs(60)).await.unwrap();
    assert_eq!(next.status, Status::Succeeded);
}

#[tokio::test]
async fn a_task_that_ignores_its_stop_is_abandoned_and_holds_its_slot_until_it_ends() {
    let redis = RedisServer::start();
    let worker = WorkerProcess::start(
        &redis,
        &[
            ("TANDEM_TEST_KINDS", "true"),
            ("TANDEM_CONCURRENCY", "1"),
            ("TANDEM_TIMEOUT_GRACE_MS", "100"),
            // The check below reads `started_at_ms`, which a prefetched
            // task gets at its claim, not at its start.
            ("TANDEM_PREFETCH", "0"),
        ],
    )
    .await;
    let producer = redis.producer().await;
    // It spins 6 s whatever it is told; its limit is 200 ms.
    const SPIN_MS: u64 = 6_000;
    let stubborn = producer
        .submit(
            spin(SPIN_MS, true)
                .timeout(Duration::from_millis(200))
                .max_attempts(1),
        )
        .await
        .unwrap();
    let next = producer
        .submit(Task::of::<Noop>(&rmpv::Value::Nil).unwrap())
        .await
        .unwrap();

    let outcome = producer
        .wait(stubborn, Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(outcome.status, Status::Failed);
    let failure = outcome.failure().unwrap();
    assert_eq!(failure.code.as_str(), "TIMEOUT");
    assert!(failure.message.contains("abandoned"), "{}", failure.message);

    let next = producer.wait(next, Duration::from_secs(120)).await.unwrap();
    assert_eq!(next.status, Status::Succeeded);
    // The abandoned spin kept the only slot until it ended, SPIN_MS after
    // it started at the earliest: the noop cannot have started before.
    let stubborn_started = outcome.record.started_at_ms.unwrap();
    let next_started = next.record.started_at_ms.unwrap();
    assert!(
        next_started >= stubborn_started + SPIN_MS,
        "the next task started {} ms after the abandoned one, before its computation ended",
        next_started - stubborn_started
    );
    // Its outcome was committed long before that.
    assert!(outcome.record.finished_at_ms.unwrap() < stubborn_started + SPIN_MS);
    let log = worker.log_text();
    assert!(log.contains("abandoned computation ended"), "{log}");
}

#[tokio::test]
async fn a_timeout_from_raw_redis_is_honoured_and_a_zero_one_refused() {
    let redis = RedisServer::start();
    let _worker = WorkerProcess::start(&redis, &[("TANDEM_TEST_KINDS", "true")]).await;
    let producer = redis.producer().await;
    let mut conn = redis.conn().await;
    let limited = submit_raw(&mut conn, "250").await;
    let zero = submit_raw(&mut conn, "0").await;

    let outcome = producer
        .wait(limited, Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(outcome.failure().unwrap().code.as_str(), "TIMEOUT");
    let outcome = producer.wait(zero, Duration::from_secs(120)).await.unwrap();
    let failure = outcome.failure().unwrap();
    assert_eq!(failure.code.as_str(), "BAD_PAYLOAD");
    assert!(
        failure.message.contains("timeout_ms") && failure.message.contains("at least 1 ms"),
        "{}",
        failure.message
    );
}

/// Submits a ten-minute spin as another language would: a record, then an
/// entry with `timeout_ms`.
async fn submit_raw(conn: &mut redis::aio::MultiplexedConnection, timeout_ms: &str) -> TaskId {
    let params = tandem_shared::msgpack::encode(&SpinParams {
        ms: TEN_MINUTES_MS,
        ignore_stop: false,
    })
    .unwrap();
    {
        let id = TaskId::new().to_string();
        let _: () = redis::cmd("HSET")
            .arg(format!("tandem:{{cpu}}:task:{id}"))
            .arg(&["status", "queued", "kind", "spin", "class", "cpu"])
            .query_async(conn)
            .await
            .unwrap();
        let _: String = redis::cmd("XADD")
            .arg("tandem:{cpu}:stream:normal")
            .arg("*")
            .arg(&[
                "version",
                "2",
                "id",
                &id,
                "kind",
                "spin",
                "max_attempts",
                "1",
                "timeout_ms",
                timeout_ms,
            ])
            .arg("params")
            .arg(params.as_slice())
            .query_async(conn)
            .await
            .unwrap();
        id.parse::<TaskId>().unwrap()
    }
}

#[tokio::test]
async fn a_zero_timeout_is_refused_by_the_producer_and_the_cli() {
    let redis = RedisServer::start();
    let producer = redis.producer().await;
    let err = producer
        .submit(spin(10, false).timeout(Duration::ZERO))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ProducerError::BadParams { message, .. } if message.contains("timeout must be at least 1 ms")),
        "{err}"
    );

    for (flag, why) in [
        ("0ms", "under 1 ms"),
        ("soon", "give a duration with its unit"),
        ("-5s", "give a duration with its unit"),
    ] {
        let out = Command::new(bin("tandem"))
            .args(["submit", "noop", &format!("--timeout={flag}")])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("REDIS_URL", redis.url())
            .output()
            .expect("run tandem");
        assert!(!out.status.success(), "--timeout {flag} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("--timeout") && stderr.contains(why),
            "--timeout {flag}: {stderr}"
        );
    }

    // A good one reaches the record.
    let out = Command::new(bin("tandem"))
        .args(["submit", "noop", "--timeout", "1500ms"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("REDIS_URL", redis.url())
        .output()
        .expect("run tandem");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id: TaskId = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let record = producer.record(id).await.unwrap().unwrap();
    assert_eq!(record.timeout_ms, Some(1500));
}

#[tokio::test]
async fn a_gpu_worker_whose_computation_cannot_be_stopped_commits_then_restarts() {
    use crate::support::gpus;
    let redis = RedisServer::start();
    let mut worker = gpus::start(
        &redis,
        "0",
        "Sim, 8 GiB, 10 TFLOPS",
        &[
            ("TANDEM_TEST_KINDS", "true"),
            ("TANDEM_TIMEOUT_GRACE_MS", "100"),
        ],
    )
    .await;
    let producer = redis.producer().await;
    // A kernel-like computation: it never looks at its Stop.
    let stuck = producer
        .submit(
            spin(TEN_MINUTES_MS, true)
                .class(tandem_shared::Class::Heavy)
                .timeout(Duration::from_millis(200))
                .max_attempts(1),
        )
        .await
        .unwrap();
    assert_eq!(
        worker.wait_exit(gpus::WAIT),
        Some(3),
        "the worker exits for its fleet to restart it:\n{}",
        worker.log_text()
    );
    // The outcome was committed before it went.
    let record = producer.record(stuck).await.unwrap().unwrap();
    assert_eq!(record.status, Some(Status::Failed));
    let failure = record.error.unwrap();
    assert_eq!(failure.code.as_str(), "TIMEOUT");
    assert!(failure.message.contains("abandoned"), "{}", failure.message);
    assert!(
        worker
            .log_text()
            .contains("cannot be stopped: restarting the worker"),
        "{}",
        worker.log_text()
    );
}

#[tokio::test]
async fn a_kinds_default_limit_applies_to_its_tasks_without_one() {
    let redis = RedisServer::start();
    let _worker = WorkerProcess::start(
        &redis,
        &[
            ("TANDEM_TEST_KINDS", "true"),
            ("TANDEM_KIND_TIMEOUT_MS", "spin=300"),
        ],
    )
    .await;
    let producer = redis.producer().await;
    let defaulted = producer
        .submit(spin(TEN_MINUTES_MS, false).max_attempts(1))
        .await
        .unwrap();
    let outcome = producer
        .wait(defaulted, Duration::from_secs(120))
        .await
        .unwrap();
    let failure = outcome.failure().unwrap();
    assert_eq!(failure.code.as_str(), "TIMEOUT");
    assert!(
        failure.message.contains("timeout of 300 ms"),
        "{}",
        failure.message
    );
    // A task's own limit wins over its kind's.
    let own = producer
        .submit(
            spin(1_000, false)
                .timeout(Duration::from_secs(600))
                .max_attempts(1),
        )
        .await
        .unwrap();
    let outcome = producer.wait(own, Duration::from_secs(120)).await.unwrap();
    assert_eq!(outcome.status, Status::Succeeded);
}
