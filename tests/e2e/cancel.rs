//! Cancelling queued and running tasks.

use std::time::Duration;

use redis::AsyncCommands;
use tandem_producer::{CancelOutcome, Task};
use tandem_shared::kind::builtin::{Noop, Sleep, SleepParams};
use tandem_shared::{Status, TaskId};

use crate::support::{RedisServer, WorkerProcess, cpu_time, wait_until};

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
    // Ten minutes of sleep: only an interrupted sleep ends before that, so
    // the verdict below does not depend on how busy the machine is.
    const SLEEP_MS: u64 = 600_000;
    let long = producer
        .submit(Task::of::<Sleep>(&SleepParams { ms: SLEEP_MS }).unwrap())
        .await
        .unwrap();
    wait_running(&producer, long).await;

    assert_eq!(
        producer.cancel(long).await.unwrap(),
        CancelOutcome::Requested
    );
    let outcome = producer
        .wait(long, Duration::from_millis(SLEEP_MS))
        .await
        .unwrap();
    assert_eq!(outcome.status, Status::Cancelled);
    assert_eq!(outcome.failure().unwrap().code.as_str(), "CANCELLED");
    let started = outcome.record.started_at_ms.expect("it started");
    let finished = outcome.record.finished_at_ms.expect("it finished");
    assert!(
        finished - started < SLEEP_MS,
        "the sleep was not interrupted: it ran {} ms",
        finished - started
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

/// The worker's CPU time while it runs one sleep task of two seconds.
async fn sleep_cpu(producer: &tandem_producer::Producer, pid: u32, backstop: Duration) -> Duration {
    let from = cpu_time(pid);
    let marker = producer
        .submit(Task::of::<Sleep>(&SleepParams { ms: 2_000 }).unwrap())
        .await
        .unwrap();
    assert!(producer.wait(marker, backstop).await.unwrap().succeeded());
    cpu_time(pid) - from
}

/// Monte Carlo parameters of `blocks` blocks of 4096 paths over 252 steps.
fn monte_carlo_params(blocks: u64) -> tandem_shared::kind::monte_carlo::MonteCarloParams {
    tandem_shared::kind::monte_carlo::MonteCarloParams {
        s0: 100.0,
        strike: 100.0,
        rate: 0.05,
        dividend: 0.0,
        sigma: 0.2,
        maturity: 1.0,
        steps: 252,
        paths: blocks * 4096,
        seed: 3,
        percentiles: vec![],
    }
}

/// The verdict is bound by work, not by time: the test first measures the
/// worker's CPU time for one step's worth of paths (a CPU run goes in steps
/// of about 2^26 path steps, with a look at the cancel between them), then
/// cancels a run of 16 such steps once it has burnt half a step, and allows
/// the computation at most two more steps' worth of CPU after the cancel.
/// Without the look between steps it would burn some fourteen. CPU time, not
/// wall time, so a loaded machine stretches both sides alike.
#[tokio::test]
async fn a_cancelled_monte_carlo_stops_computing() {
    use tandem_shared::kind::monte_carlo::MonteCarlo;
    // 65 blocks x 4096 paths x 252 steps is one step of 2^26 path steps.
    const STEP_BLOCKS: u64 = 65;
    let redis = RedisServer::start();
    let worker = WorkerProcess::start(&redis, &[("TANDEM_CONCURRENCY", "1")]).await;
    let producer = redis.producer().await;
    // No bound on how long the machine takes, only a backstop for a hang.
    let backstop = Duration::from_secs(1_800);

    // What the idle worker burns (heartbeats, metrics, its log) while a
    // sleep task runs, to compare with the same after the cancel.
    let idle_cpu = sleep_cpu(&producer, worker.pid(), backstop).await;

    let before = cpu_time(worker.pid());
    let one_step = producer
        .submit(Task::of::<MonteCarlo>(&monte_carlo_params(STEP_BLOCKS)).unwrap())
        .await
        .unwrap();
    assert!(producer.wait(one_step, backstop).await.unwrap().succeeded());
    let step_cpu = cpu_time(worker.pid()) - before;

    let long = producer
        .submit(Task::of::<MonteCarlo>(&monte_carlo_params(16 * STEP_BLOCKS)).unwrap())
        .await
        .unwrap();
    wait_running(&producer, long).await;
    let running_from = cpu_time(worker.pid());
    wait_until(backstop, "half a step of work done", || async {
        cpu_time(worker.pid()) - running_from >= step_cpu / 2
    })
    .await;

    let asked = cpu_time(worker.pid());
    assert_eq!(
        producer.cancel(long).await.unwrap(),
        CancelOutcome::Requested
    );
    let outcome = producer.wait(long, backstop).await.unwrap();
    assert_eq!(outcome.status, Status::Cancelled);
    let after_cancel = cpu_time(worker.pid()) - asked;
    assert!(
        after_cancel <= step_cpu * 2,
        "the computation did not stop at its next step: {after_cancel:?} of CPU after the \
         cancel, one step takes {step_cpu:?}"
    );
    // The computation's threads are idle now: the worker burns what it
    // burnt idle before, while a sleep task runs (a computation still
    // running would burn a step's worth in seconds of it).
    let after_cpu = sleep_cpu(&producer, worker.pid(), backstop).await;
    assert!(
        after_cpu <= idle_cpu * 2 + step_cpu / 8,
        "the worker used {after_cpu:?} of CPU during a 2 s sleep after the cancel, \
         {idle_cpu:?} before it (a step: {step_cpu:?})"
    );
}
