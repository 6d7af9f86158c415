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

/// Waits until the task's record says it runs.
async fn wait_running(producer: &tandem_producer::Producer, id: TaskId) {
    wait_until(Duration::from_secs(20), "task running", || {
        let producer = producer.clone();
        async move { producer.status(id).await.unwrap() == Status::Running }
    })
    .await;
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
    wait_running(&producer, long).await;

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

/// User plus system CPU time of a process, from `/proc/<pid>/stat`.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // The kernel's USER_HZ is 100 on Linux.
    Duration::from_millis(ticks * 10)
}

#[tokio::test]
async fn a_cancelled_monte_carlo_stops_computing() {
    use tandem_shared::kind::monte_carlo::{MonteCarlo, MonteCarloParams};
    let redis = RedisServer::start();
    let worker = WorkerProcess::start(&redis, &[("TANDEM_CONCURRENCY", "1")]).await;
    let producer = redis.producer().await;
    // About a minute and a half of work in a debug build: 1024 blocks of
    // 4096 paths, run in 16 steps of 2^26 path steps, with a look at the
    // cancel between them.
    let params = MonteCarloParams {
        s0: 100.0,
        strike: 100.0,
        rate: 0.05,
        dividend: 0.0,
        sigma: 0.2,
        maturity: 1.0,
        steps: 252,
        paths: 4_194_304,
        seed: 3,
        percentiles: vec![],
    };
    let long = producer
        .submit(Task::of::<MonteCarlo>(&params).unwrap())
        .await
        .unwrap();
    wait_running(&producer, long).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let asked = Instant::now();
    assert_eq!(
        producer.cancel(long).await.unwrap(),
        CancelOutcome::Requested
    );
    let outcome = producer.wait(long, Duration::from_secs(30)).await.unwrap();
    assert_eq!(outcome.status, Status::Cancelled);
    assert!(
        asked.elapsed() < Duration::from_secs(15),
        "the computation did not stop at its next step: {:?}",
        asked.elapsed()
    );
    // The computation's threads are idle now: the worker burns next to
    // no CPU (a computation still running would burn about a core).
    let before = cpu_time(worker.pid());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let burnt = cpu_time(worker.pid()) - before;
    assert!(
        burnt < Duration::from_millis(300),
        "the worker used {burnt:?} of CPU in the second after the cancel"
    );
}
