//! Prefetch at concurrency 1: the task a worker claims ahead while its one
//! task runs is the worker's (a killed worker loses it to nobody), goes back
//! at once when the worker drains, settles at once when cancelled, and
//! delays a higher priority by that one task at most; with a deeper
//! prefetch, the tasks that end while more wait are committed together.

use std::collections::HashMap;
use std::time::Duration;

use tandem_producer::{CancelOutcome, Producer, Task};
use tandem_shared::kind::builtin::{Sleep, SleepParams};
use tandem_shared::{Priority, Status, TaskId};

use crate::support::{RedisServer, WorkerProcess, wait_until};

/// One slot, prefetch on (its default at concurrency 1, set all the same),
/// short leases.
const ONE_SLOT: &[(&str, &str)] = &[
    ("TANDEM_CONCURRENCY", "1"),
    ("TANDEM_PREFETCH", "1"),
    ("TANDEM_LEASE_TIMEOUT_MS", "1000"),
];
/// Ten minutes: a task that sleeps this long ends within a test only when
/// it is cancelled, so no verdict below depends on the machine's speed.
const FOREVER_MS: u64 = 600_000;
const WAIT: Duration = Duration::from_secs(30);

fn sleep_task(ms: u64) -> Task {
    Task::of::<Sleep>(&SleepParams { ms }).unwrap()
}

async fn status(producer: &Producer, id: TaskId) -> Option<Status> {
    producer.record(id).await.unwrap().and_then(|r| r.status)
}

/// Waits until `id` runs on `worker` (its record says so).
async fn wait_running_on(producer: &Producer, id: TaskId, worker: &WorkerProcess) {
    wait_until(WAIT, "task running", || async {
        let record = producer.record(id).await.unwrap().unwrap_or_default();
        record.status == Some(Status::Running)
            && record.worker.as_deref() == Some(worker.id.as_str())
    })
    .await;
}

/// Waits until `worker`'s log says it holds `id` prefetched.
async fn wait_prefetched(worker: &WorkerProcess, id: TaskId) {
    let id = id.to_string();
    wait_until(WAIT, "task prefetched", || async {
        worker
            .log_text()
            .lines()
            .any(|line| line.contains("prefetched: starts when a slot frees") && line.contains(&id))
    })
    .await;
}

/// The notices in the producer's `cpu` reply stream: how many per task id,
/// and the ids in commit order.
async fn notices(
    redis: &RedisServer,
    producer: &Producer,
) -> (HashMap<TaskId, usize>, Vec<TaskId>) {
    let mut conn = redis.conn().await;
    let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(format!("tandem:{{cpu}}:reply:{}", producer.id()))
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut count = HashMap::new();
    let mut order = Vec::new();
    for entry in entries.ids {
        let id: TaskId = entry.get::<String>("id").unwrap().parse().unwrap();
        *count.entry(id).or_default() += 1;
        order.push(id);
    }
    (count, order)
}

#[tokio::test]
async fn a_killed_worker_loses_neither_its_running_nor_its_prefetched_task() {
    let redis = RedisServer::start();
    let producer = redis.producer().await;
    let victim = WorkerProcess::start(&redis, ONE_SLOT).await;
    // Long enough that the kill, sent the moment the second task is seen
    // prefetched, lands while the first runs.
    let running = producer.submit(sleep_task(3_000)).await.unwrap();
    wait_running_on(&producer, running, &victim).await;
    let waiting = producer.submit(sleep_task(10)).await.unwrap();
    wait_prefetched(&victim, waiting).await;

    victim.signal("KILL");
    let survivor = WorkerProcess::start(&redis, ONE_SLOT).await;
    for id in [running, waiting] {
        let outcome = producer.wait(id, WAIT).await.unwrap();
        assert!(outcome.succeeded(), "{id}: {:?}", outcome.status);
        assert_eq!(
            outcome.record.worker.as_deref(),
            Some(survivor.id.as_str()),
            "{id} finished on the survivor"
        );
    }
    // Each committed exactly once.
    let (count, _) = notices(&redis, &producer).await;
    assert_eq!(count.get(&running), Some(&1));
    assert_eq!(count.get(&waiting), Some(&1));
    // The prefetched one never ran on the killed worker.
    let waiting = waiting.to_string();
    assert!(
        !victim
            .log_text()
            .lines()
            .any(|line| line.contains("task succeeded") && line.contains(&waiting)),
        "{}",
        victim.log_text()
    );
}

#[tokio::test]
async fn sigterm_hands_the_prefetched_task_back_while_the_running_one_finishes() {
    let redis = RedisServer::start();
    let producer = redis.producer().await;
    let mut leaving = WorkerProcess::start(
        &redis,
        &[ONE_SLOT, &[("TANDEM_SHUTDOWN_GRACE_MS", "600000")]].concat(),
    )
    .await;
    let running = producer.submit(sleep_task(FOREVER_MS)).await.unwrap();
    wait_running_on(&producer, running, &leaving).await;
    let waiting = producer.submit(sleep_task(10)).await.unwrap();
    wait_prefetched(&leaving, waiting).await;
    let staying = WorkerProcess::start(&redis, ONE_SLOT).await;

    leaving.signal("TERM");
    let outcome = producer.wait(waiting, WAIT).await.unwrap();
    assert!(outcome.succeeded());
    assert_eq!(outcome.record.worker.as_deref(), Some(staying.id.as_str()));
    // Handed back at once: the leaving worker still drains its long task.
    assert!(leaving.is_alive(), "{}", leaving.log_text());
    assert_eq!(status(&producer, running).await, Some(Status::Running));
    assert!(
        leaving
            .log_text()
            .contains("draining: handed 1 prefetched tasks back"),
        "{}",
        leaving.log_text()
    );

    // The long task ends (cancelled) and the worker exits cleanly.
    assert_eq!(
        producer.cancel(running).await.unwrap(),
        CancelOutcome::Requested
    );
    assert_eq!(leaving.wait_exit(WAIT), Some(0));
    let outcome = producer.wait(running, WAIT).await.unwrap();
    assert_eq!(outcome.status, Status::Cancelled);
    assert_eq!(outcome.record.worker.as_deref(), Some(leaving.id.as_str()));
}

#[tokio::test]
async fn a_cancelled_prefetched_task_ends_cancelled_without_waiting_for_the_slot() {
    let redis = RedisServer::start();
    let producer = redis.producer().await;
    let worker = WorkerProcess::start(&redis, ONE_SLOT).await;
    let running = producer.submit(sleep_task(FOREVER_MS)).await.unwrap();
    wait_running_on(&producer, running, &worker).await;
    let waiting = producer.submit(sleep_task(10)).await.unwrap();
    wait_prefetched(&worker, waiting).await;

    assert_eq!(
        producer.cancel(waiting).await.unwrap(),
        CancelOutcome::Requested
    );
    let outcome = producer.wait(waiting, WAIT).await.unwrap();
    assert_eq!(outcome.status, Status::Cancelled);
    assert_eq!(outcome.failure().unwrap().code.as_str(), "CANCELLED");
    // Settled while the slot is still taken: it did not wait its turn.
    assert_eq!(status(&producer, running).await, Some(Status::Running));
    assert!(
        worker
            .log_text()
            .contains("cancel requested before the prefetched task started"),
        "{}",
        worker.log_text()
    );

    // The worker carries on: the slot frees and the next task runs.
    producer.cancel(running).await.unwrap();
    assert_eq!(
        producer.wait(running, WAIT).await.unwrap().status,
        Status::Cancelled
    );
    let next = producer.submit(sleep_task(10)).await.unwrap();
    assert!(producer.wait(next, WAIT).await.unwrap().succeeded());
}

#[tokio::test]
async fn a_higher_priority_waits_for_the_one_prefetched_task_at_most() {
    let redis = RedisServer::start();
    let producer = redis.producer().await;
    let worker = WorkerProcess::start(&redis, ONE_SLOT).await;
    let low = |ms| sleep_task(ms).priority(Priority::Low);
    let running = producer.submit(low(FOREVER_MS)).await.unwrap();
    wait_running_on(&producer, running, &worker).await;
    let prefetched = producer.submit(low(10)).await.unwrap();
    wait_prefetched(&worker, prefetched).await;
    let behind = producer.submit(low(10)).await.unwrap();
    let urgent = producer
        .submit(sleep_task(10).priority(Priority::High))
        .await
        .unwrap();

    // The slot frees: the prefetched task starts, then the high one, then
    // the low one that waited in the stream.
    producer.cancel(running).await.unwrap();
    for id in [running, prefetched, behind, urgent] {
        producer.wait(id, WAIT).await.unwrap();
    }
    let (_, order) = notices(&redis, &producer).await;
    assert_eq!(order, vec![running, prefetched, urgent, behind]);
}

/// Regression: with prefetch a busy worker goes from round trip to round
/// trip and never reached the wait that saw SIGTERM, so it kept claiming
/// until the backlog ran dry (the backlog bench's stopped workers were
/// killed still holding entries).
#[tokio::test]
async fn a_busy_worker_with_prefetch_stops_claiming_at_sigterm() {
    let redis = RedisServer::start();
    let producer = redis.producer().await;
    const BACKLOG: usize = 20_000;
    let tasks: Vec<Task> = (0..BACKLOG)
        .map(|_| Task::of::<tandem_shared::kind::builtin::Noop>(&rmpv::Value::Nil).unwrap())
        .collect();
    let ids = producer.submit_many(tasks).await.unwrap();
    let mut worker = WorkerProcess::start(&redis, ONE_SLOT).await;
    let first = ids[0];
    wait_until(WAIT, "the worker busy with the backlog", || async {
        status(&producer, first).await == Some(Status::Succeeded)
    })
    .await;

    worker.signal("TERM");
    assert_eq!(worker.wait_exit(WAIT), Some(0), "{}", worker.log_text());
    let mut conn = redis.conn().await;
    let stream = "tandem:{cpu}:stream:normal";
    let pending: redis::streams::StreamPendingReply = redis::cmd("XPENDING")
        .arg(stream)
        .arg("workers")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(pending.count(), 0, "the worker left entries pending");
    let left: usize = redis::cmd("XLEN")
        .arg(stream)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        left > 0,
        "the worker ran the whole backlog of {BACKLOG} after SIGTERM instead of stopping"
    );
}

/// A worker of one slot holding 15 tasks ahead, with a commit linger:
/// the tasks that end while it has more to run are committed together, in
/// the round trip that claims the next ones, so a batch of short tasks
/// costs one commit and one claim script, not one of each per task. Every
/// task is still committed once, with its outcome. (The linger is long, so
/// that a trip goes when the prefetched tasks run out, whatever the
/// machine's speed.)
#[tokio::test]
async fn a_worker_with_a_prefetch_commits_the_tasks_that_end_meanwhile_together() {
    const TASKS: u64 = 160;
    let redis = RedisServer::start();
    let producer = redis.producer().await;
    let ids = producer
        .submit_many((0..TASKS).map(|_| sleep_task(0)).collect())
        .await
        .unwrap();
    let before = redis.command_calls("evalsha").await;
    let started = std::time::Instant::now();
    let _worker = WorkerProcess::start(
        &redis,
        &[
            ("TANDEM_CONCURRENCY", "1"),
            ("TANDEM_PREFETCH", "15"),
            ("TANDEM_COMMIT_LINGER_MS", "60000"),
        ],
    )
    .await;
    // Every commit acknowledges its entry (a producer's wait, below, runs a
    // script of its own, so the count is taken first).
    wait_until(WAIT, "every task committed", || async {
        redis.command_calls("xack").await >= TASKS
    })
    .await;
    let scripts = redis.command_calls("evalsha").await - before;
    let elapsed = started.elapsed().as_secs() + 1;
    // A claim and a commit per task would be 2 x TASKS calls; batches of
    // up to 16 make about TASKS / 8. The worker's registry and heartbeat
    // scripts run on their timers: a few a second.
    let bound = TASKS / 2 + 4 * elapsed;
    eprintln!("{TASKS} tasks in {elapsed} s: {scripts} script calls (bound {bound})");
    assert!(
        scripts <= bound,
        "{scripts} script calls for {TASKS} tasks in {elapsed} s (at most {bound}): commits were not batched"
    );
    let (count, _) = notices(&redis, &producer).await;
    for id in &ids {
        let outcome = producer.wait(*id, WAIT).await.unwrap();
        assert!(outcome.succeeded(), "{id}: {:?}", outcome.status);
        assert_eq!(count.get(id), Some(&1), "{id} committed once");
    }
}
