//! Cancelling queued and running tasks.

use std::time::{Duration, Instant};

use redis::AsyncCommands;
use tandem_producer::{CancelOutcome, Task};
use tandem_shared::kind::builtin::{Noop, Sleep, SleepParams};
use tandem_shared::{Status, TaskId};

use crate::support::{RedisServer, WorkerProcess, wait_until};

#[tokio::test]
async fn a_cancelled_queued_task_never_starts() {
    let redis = RedisServer::start();
    let producer = redis.producer().await;
    let doomed = producer
        .submit(Task::of::<Sleep>(&SleepParams { ms: 10 }).unwrap())
        .await
        .unwrap();
    assert_eq!(
        producer.cancel(doomed).await.unwrap(),
        CancelOutcome::Cancelled
    );
    assert_eq!(producer.status(doomed).await.unwrap(), Status::Cancelled);
    // Its entry is gone from the stream.
    let mut conn = redis.conn().await;
    let queued: u64 = conn.xlen("tandem:{cpu}:stream:normal").await.unwrap();
    assert_eq!(queued, 0);

    let _worker = WorkerProcess::start(&redis, &[]).await;
    let after = producer
        .submit(Task::of::<Noop>(&rmpv::Value::Nil).unwrap())
        .await
        .unwrap();
    producer.wait(after, Duration::from_secs(20)).await.unwrap();

    let outcome = producer.wait(doomed, Duration::from_secs(5)).await.unwrap();
    assert_eq!(outcome.status, Status::Cancelled);
    assert_eq!(outcome.failure().unwrap().code.as_str(), "CANCELLED");
    assert_eq!(
        outcome.record.started_at_ms, None,
        "a cancelled queued task must not start"
    );
    assert_eq!(outcome.record.worker, None);
    // Cancelling again reports what happened.
    assert_eq!(
        producer.cancel(doomed).await.unwrap(),
        CancelOutcome::AlreadyFinished(Status::Cancelled)
    );
    assert_eq!(
        producer.cancel(TaskId::new()).await.unwrap(),
        CancelOutcome::NotFound
    );
}

#[tokio::test]
async fn a_cancelled_running_task_is_stopped_and_ends_cancelled() {
    let redis = RedisServer::start();
    let _worker = WorkerProcess::start(&redis, &[]).await;
    let producer = redis.producer().await;
    let long = producer
        .submit(Task::of::<Sleep>(&SleepParams { ms: 60_000 }).unwrap())
        .await
        .unwrap();
    wait_until(Duration::from_secs(20), "task running", || {
        let producer = producer.clone();
        async move { producer.status(long).await.unwrap() == Status::Running }
    })
    .await;

    let asked = Instant::now();
    assert_eq!(
        producer.cancel(long).await.unwrap(),
        CancelOutcome::Requested
    );
    let outcome = producer.wait(long, Duration::from_secs(20)).await.unwrap();
    assert_eq!(outcome.status, Status::Cancelled);
    assert_eq!(outcome.failure().unwrap().code.as_str(), "CANCELLED");
    assert!(outcome.record.started_at_ms.is_some());
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "the sleep was not interrupted"
    );

    // The worker carries on.
    let next = producer
        .submit(Task::of::<Noop>(&rmpv::Value::Nil).unwrap())
        .await
        .unwrap();
    assert!(
        producer
            .wait(next, Duration::from_secs(20))
            .await
            .unwrap()
            .succeeded()
    );
}
