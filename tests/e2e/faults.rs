//! Redis faults: a crash and restart mid-run, and a Redis that is not there
//! yet when a worker starts.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tandem_producer::{Producer, Task};
use tandem_shared::kind::builtin::{Sleep, SleepParams};
use tandem_shared::{Config, Status};

use crate::support::{RedisServer, WorkerProcess, free_port, wait_until};

#[tokio::test]
async fn a_redis_crash_and_restart_mid_run_loses_no_accepted_task() {
    let mut redis = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let env = [
        ("TANDEM_LEASE_TIMEOUT_MS", "1000"),
        ("TANDEM_CONCURRENCY", "4"),
    ];
    let mut workers = [
        WorkerProcess::start(&redis, &env).await,
        WorkerProcess::start(&redis, &env).await,
    ];
    let producer = Producer::connect(&Config {
        reconnect_timeout_ms: 60_000,
        ..redis.config()
    })
    .await
    .unwrap();

    const TOTAL: usize = 600;
    let accepted = Arc::new(AtomicUsize::new(0));
    // The submitter stops after a third until the crash begins, so that its
    // next call meets the restart whatever the machine's speed.
    let crashing = Arc::new(tokio::sync::Notify::new());
    let submitting = {
        let producer = producer.clone();
        let accepted = Arc::clone(&accepted);
        let crashing = Arc::clone(&crashing);
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for _ in 0..TOTAL / 20 {
                if ids.len() == TOTAL / 3 {
                    crashing.notified().await;
                }
                let batch = (0..20)
                    .map(|_| Task::of::<Sleep>(&SleepParams { ms: 5 }).unwrap())
                    .collect();
                // Every submit that returns is accepted; a call that spans the
                // restart retries until Redis is back.
                ids.extend(producer.submit_many(batch).await.unwrap());
                accepted.store(ids.len(), Ordering::SeqCst);
            }
            ids
        })
    };
    wait_until(Duration::from_secs(30), "a third submitted", || async {
        accepted.load(Ordering::SeqCst) >= TOTAL / 3
    })
    .await;
    crashing.notify_one();
    redis.crash_and_restart();
    let ids = submitting.await.unwrap();
    assert_eq!(ids.len(), TOTAL);

    for id in &ids {
        let outcome = producer.wait(*id, Duration::from_secs(60)).await.unwrap();
        assert_eq!(
            outcome.status,
            Status::Succeeded,
            "{id}: {:?}",
            outcome.record
        );
    }
    for worker in &mut workers {
        assert!(worker.is_alive(), "a worker died:\n{}", worker.log_text());
    }
    assert!(
        workers
            .iter()
            .any(|w| w.log_text().contains("Redis round trip failed")),
        "the restart went unnoticed, so the test tested nothing"
    );
}

#[tokio::test]
async fn a_worker_started_before_redis_waits_for_it_and_then_works() {
    let port = free_port();
    let placeholder = RedisServer::start();
    // A worker pointed at a port where nothing listens yet.
    let mut worker = WorkerProcess::spawn(
        &placeholder,
        &[("TANDEM_REDIS_URL", &format!("redis://127.0.0.1:{port}"))],
    );
    wait_until(Duration::from_secs(20), "a clear retry message", || async {
        worker
            .log_text()
            .contains("cannot reach Redis at redis://127.0.0.1:")
    })
    .await;
    assert!(worker.is_alive());

    let redis = RedisServer::start_on(port);
    worker.wait_registered(&redis).await;
    let producer = redis.producer().await;
    let id = producer
        .submit(Task::of::<Sleep>(&SleepParams { ms: 1 }).unwrap())
        .await
        .unwrap();
    assert!(
        producer
            .wait(id, Duration::from_secs(20))
            .await
            .unwrap()
            .succeeded()
    );
    assert!(!worker.log_text().contains("panicked"));
}
