//! Cancels raced against claims and commits: whatever the timing, a task
//! ends as the cancel's reply promised (docs/wire-format.md, "Cancel"):
//! `Cancelled` and `Requested` end `cancelled`, `AlreadyFinished(s)` keeps
//! `s`. The race is run a fixed number of times, not for a time.

use std::collections::HashMap;
use std::time::Duration;

use tandem_producer::{CancelOutcome, Producer, Task};
use tandem_shared::kind::builtin::{Noop, Sleep, SleepParams};
use tandem_shared::store::{Store, StoreError};
use tandem_shared::{Config, Status, TaskId};

use crate::support::{RedisServer, WorkerProcess};

const ROUNDS: usize = 15;
const BATCH: usize = 24;
/// Status reads a canceller makes at most while waiting for its task to
/// leave the queue.
const MAX_POLLS: usize = 100_000;

/// Cancels `id` at the moment `how` says: 0 at once (against the claim),
/// 1 as soon as it left the queue (against the commit), 2 after it ran to
/// its end, 3 after it started a long run.
async fn cancel_when(producer: &Producer, id: TaskId, how: usize) -> CancelOutcome {
    match how {
        0 => {}
        1 | 3 => {
            let mut polls = 0;
            while producer.status(id).await.unwrap() == Status::Queued {
                polls += 1;
                assert!(polls < MAX_POLLS, "{id} never left the queue");
            }
        }
        _ => {
            producer.wait(id, Duration::from_secs(60)).await.unwrap();
        }
    }
    producer.cancel(id).await.unwrap()
}

#[tokio::test]
async fn a_cancel_raced_against_claims_and_commits_keeps_its_promise() {
    let redis = RedisServer::start();
    let env = [("TANDEM_CONCURRENCY", "8")];
    let _workers = [
        WorkerProcess::start(&redis, &env).await,
        WorkerProcess::start(&redis, &env).await,
    ];
    let producer = redis.producer().await;
    let mut tally: HashMap<String, usize> = HashMap::new();
    for _ in 0..ROUNDS {
        // Mostly tasks of 0-3 ms, so cancels meet them queued, being
        // claimed, running and committing; one long task per round, so a
        // cancel meets a running task every round.
        let tasks = (0..BATCH)
            .map(|i| {
                let ms = if i % 4 == 3 { 60_000 } else { (i % 4) as u64 };
                Task::of::<Sleep>(&SleepParams { ms }).unwrap()
            })
            .collect();
        let ids = producer.submit_many(tasks).await.unwrap();
        let cancels = ids.iter().enumerate().map(|(i, &id)| {
            let producer = producer.clone();
            // Every fourth task is the long one: cancelled once it runs.
            let how = if i % 4 == 3 { 3 } else { i % 3 };
            async move { (id, how, cancel_when(&producer, id, how).await) }
        });
        for (id, how, reply) in futures_util::future::join_all(cancels).await {
            let outcome = producer.wait(id, Duration::from_secs(60)).await.unwrap();
            let record = &outcome.record;
            match reply {
                CancelOutcome::Cancelled => {
                    assert_eq!(outcome.status, Status::Cancelled, "{id}: {record:?}");
                    assert_eq!(
                        record.started_at_ms, None,
                        "{id} was cancelled while queued, yet started: {record:?}"
                    );
                }
                CancelOutcome::Requested => {
                    assert_eq!(outcome.status, Status::Cancelled, "{id}: {record:?}");
                }
                CancelOutcome::AlreadyFinished(status) => {
                    assert_eq!(outcome.status, status, "{id}: {record:?}");
                }
                CancelOutcome::NotFound => panic!("{id} not found"),
            }
            match how {
                // A cancel after the task left the queue never finds it
                // queued.
                1 => assert_ne!(reply, CancelOutcome::Cancelled, "{id}: {record:?}"),
                2 => assert_eq!(
                    reply,
                    CancelOutcome::AlreadyFinished(Status::Succeeded),
                    "{id}"
                ),
                3 => assert_eq!(reply, CancelOutcome::Requested, "{id}: {record:?}"),
                _ => {}
            }
            *tally.entry(format!("{reply:?}")).or_default() += 1;
        }
    }
    // The mix the race produced (printed for the record; the verdict does
    // not depend on it).
    eprintln!("cancel replies over {} tasks: {tally:?}", ROUNDS * BATCH);
}

#[tokio::test]
async fn an_accepted_cancel_is_replicated_like_a_submit() {
    let redis = RedisServer::start();
    let producer = redis.producer().await;
    let id = producer
        .submit(Task::of::<Noop>(&rmpv::Value::Nil).unwrap())
        .await
        .unwrap();
    // A store that asks for one replica, which this lone server lacks: the
    // cancel is written, but its reply must not claim it is safe from a
    // failover.
    let store = Store::connect(&Config {
        redis_wait_replicas: 1,
        redis_wait_timeout_ms: 100,
        ..redis.config()
    })
    .await
    .unwrap();
    match store.cancel(&id).await {
        Err(StoreError::NotReplicated {
            acked: 0,
            wanted: 1,
        }) => {}
        other => panic!("expected NotReplicated, got {other:?}"),
    }
}

/// A split task whose cancel was requested before it was split ends
/// `cancelled` when one of its shards fails, not `failed` (the cancel's
/// `Requested` promise). The shard's commit is made by hand here: a shard
/// whose worker holds it fails for good.
#[tokio::test]
async fn a_split_task_whose_cancel_was_requested_ends_cancelled_when_a_shard_fails() {
    use redis::AsyncCommands;
    let redis = RedisServer::start();
    // Connecting loads the scripts.
    let _producer = redis.producer().await;
    let mut conn = redis.conn().await;
    let base = "tandem:{cpu}:";
    let stream = format!("{base}stream:normal");
    let (parent, failing, queued) = (TaskId::new(), TaskId::new(), TaskId::new());
    let record = |id: &TaskId| format!("{base}task:{id}");
    let () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg("workers")
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut conn)
        .await
        .unwrap();
    // The parent: split into two shards, a cancel requested while it ran.
    let shard_ids = format!("{failing} {queued}");
    let () = conn
        .hset_multiple(
            record(&parent),
            &[
                ("status", "running"),
                ("priority", "normal"),
                ("shards", "2"),
                ("shards_done", "0"),
                ("shard_ids", shard_ids.as_str()),
                ("cancel_requested_at_ms", "1"),
            ],
        )
        .await
        .unwrap();
    let parent_id = parent.to_string();
    let () = conn
        .hset_multiple(
            format!("{base}split:{parent}"),
            &[
                ("id", parent_id.as_str()),
                ("kind", "split_sum"),
                ("priority", "normal"),
            ],
        )
        .await
        .unwrap();
    // Shard 0, held by worker w1; shard 1 still queued.
    let failing_id = failing.to_string();
    let _: String = conn
        .xadd(&stream, "*", &[("id", failing_id.as_str())])
        .await
        .unwrap();
    let read: redis::streams::StreamReadReply = conn
        .xread_options(
            &[&stream],
            &[">"],
            &redis::streams::StreamReadOptions::default().group("workers", "w1"),
        )
        .await
        .unwrap();
    let entry = read.keys[0].ids[0].id.clone();
    let owner = format!("w1 {entry}");
    let () = conn
        .hset_multiple(
            record(&failing),
            &[
                ("status", "running"),
                ("parent", parent_id.as_str()),
                ("shard", "0"),
                ("owner", owner.as_str()),
                ("started_at_ms", "1"),
            ],
        )
        .await
        .unwrap();
    let queued_id = queued.to_string();
    let queued_entry: String = conn
        .xadd(&stream, "*", &[("id", queued_id.as_str())])
        .await
        .unwrap();
    let () = conn
        .hset_multiple(
            record(&queued),
            &[
                ("status", "queued"),
                ("priority", "normal"),
                ("entry", queued_entry.as_str()),
            ],
        )
        .await
        .unwrap();

    // Shard 0 fails for good.
    let commit = tandem_shared::scripts::COMPLETE
        .invocation(true)
        .key(record(&failing))
        .key(&stream)
        .key(format!("{base}delayed"))
        .key(format!("{base}dead"))
        // A commit batch of one task: its 4 keys and 17 arguments.
        .arg(1)
        .arg(4)
        .arg(17)
        .arg("workers")
        .arg(&entry)
        .arg("w1")
        .arg(60)
        .arg(100)
        .arg(60)
        .arg(1_000)
        .arg(&failing_id)
        .arg("failed")
        .arg("dead")
        .arg(0)
        .arg(100)
        .arg(1)
        .arg("error_code")
        .arg("SPLIT_SUM_FAILED")
        .arg("error_message")
        .arg("boom")
        .into_cmd();
    let committed: Vec<i64> = commit.query_async(&mut conn).await.unwrap();
    assert_eq!(committed, [1]);

    let status: String = conn.hget(record(&parent), "status").await.unwrap();
    assert_eq!(
        status, "cancelled",
        "a requested cancel ended the task {status}"
    );
    let code: String = conn.hget(record(&parent), "error_code").await.unwrap();
    assert_eq!(code, "CANCELLED");
    let dead: u64 = conn.xlen(format!("{base}dead")).await.unwrap();
    assert_eq!(dead, 0, "a cancelled task is not dead-lettered");
    let other: String = conn.hget(record(&queued), "status").await.unwrap();
    assert_eq!(other, "cancelled", "the other shard is cancelled too");
}

/// Regression: a task whose cancel the worker never heard of (its pub/sub
/// message lost) succeeded, the commit made the record `cancelled`, and the
/// worker still counted it as succeeded in its registry record and metrics.
#[tokio::test]
async fn a_commit_turned_cancelled_is_counted_as_cancelled() {
    let redis = RedisServer::start();
    let worker = WorkerProcess::start(&redis, &[("TANDEM_CONCURRENCY", "1")]).await;
    let producer = redis.producer().await;
    let id = producer
        .submit(Task::of::<Sleep>(&SleepParams { ms: 1_500 }).unwrap())
        .await
        .unwrap();
    crate::support::wait_until(Duration::from_secs(30), "the sleep runs", || {
        let producer = producer.clone();
        async move { producer.status(id).await.unwrap() == Status::Running }
    })
    .await;
    // The cancel as cancel.lua records it, without its message to workers.
    let mut conn = redis.conn().await;
    let () = redis::cmd("HSET")
        .arg(format!("tandem:{{cpu}}:task:{id}"))
        .arg("cancel_requested_at_ms")
        .arg(1)
        .query_async(&mut conn)
        .await
        .unwrap();
    let outcome = producer.wait(id, Duration::from_secs(60)).await.unwrap();
    assert_eq!(outcome.status, Status::Cancelled);
    let store = Store::connect(&redis.config()).await.unwrap();
    crate::support::wait_until(Duration::from_secs(30), "the worker's counts", || {
        let store = store.clone();
        let worker_id = worker.id.clone();
        async move {
            let workers = store.workers().await.unwrap();
            workers.iter().any(|w| {
                w.id == worker_id && w.metrics.completed.get("sleep/cpu/cancelled") == Some(&1)
            })
        }
    })
    .await;
    let workers = store.workers().await.unwrap();
    let record = workers.iter().find(|w| w.id == worker.id).unwrap();
    assert_eq!(record.succeeded, 0, "{record:?}");
    assert_eq!(record.metrics.completed.get("sleep/cpu/succeeded"), None);
}
