//! Many tasks through several worker processes: every result exactly once.

use std::collections::HashSet;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use redis::AsyncCommands;
use tandem_producer::{Producer, Task};
use tandem_shared::kind::builtin::Noop;
use tandem_shared::{Config, Status, TaskId};

use crate::support::{RedisServer, WorkerProcess, wait_until};

const TASKS: usize = 10_000;

#[tokio::test]
async fn ten_thousand_noops_through_two_workers_each_result_exactly_once() {
    let redis = RedisServer::start();
    let workers = [
        WorkerProcess::start(&redis, &[("TANDEM_CONCURRENCY", "8")]).await,
        WorkerProcess::start(&redis, &[("TANDEM_CONCURRENCY", "8")]).await,
    ];
    let producer = Producer::connect(&Config {
        reply_maxlen: 100_000,
        ..redis.config()
    })
    .await
    .unwrap();

    let mut ids: Vec<TaskId> = Vec::with_capacity(TASKS);
    for _ in 0..TASKS / 500 {
        let batch = (0..500)
            .map(|_| Task::of::<Noop>(&rmpv::Value::Nil).unwrap())
            .collect();
        ids.extend(producer.submit_many(batch).await.unwrap());
    }
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        TASKS,
        "ids are unique"
    );

    let mut waits: FuturesUnordered<_> = ids
        .iter()
        .map(|&id| {
            let producer = producer.clone();
            async move { producer.wait(id, Duration::from_secs(120)).await }
        })
        .collect();
    let mut succeeded = 0;
    while let Some(outcome) = waits.next().await {
        let outcome = outcome.unwrap_or_else(|e| panic!("wait failed: {e:?}"));
        assert_eq!(outcome.status, Status::Succeeded);
        succeeded += 1;
    }
    assert_eq!(succeeded, TASKS);

    // Every task was committed exactly once: one completion notice each.
    let mut conn = redis.conn().await;
    let notices: redis::streams::StreamRangeReply = conn
        .xrange_all(format!("tandem:{{cpu}}:reply:{}", producer.id()))
        .await
        .unwrap();
    let noticed: Vec<String> = notices
        .ids
        .iter()
        .map(|e| e.get::<String>("id").unwrap())
        .collect();
    assert_eq!(noticed.len(), TASKS, "one notice per task");
    assert_eq!(
        noticed.iter().collect::<HashSet<_>>().len(),
        TASKS,
        "no task committed twice"
    );

    // Both workers took part, and their commit counters add up.
    let mut per_worker = Vec::new();
    for worker in &workers {
        let key = format!("tandem:worker:{}", worker.id);
        wait_until(Duration::from_secs(10), "heartbeat counters settle", || {
            let mut conn = conn.clone();
            let key = key.clone();
            async move {
                let ran: Option<u64> = conn.hget(&key, "succeeded").await.unwrap();
                let active: Option<u64> = conn.hget(&key, "active").await.unwrap();
                ran.is_some() && active == Some(0)
            }
        })
        .await;
        let ran: u64 = conn.hget(&key, "succeeded").await.unwrap();
        per_worker.push(ran);
    }
    wait_until(Duration::from_secs(10), "commit counters add up", || {
        let mut conn = conn.clone();
        let keys: Vec<String> = workers
            .iter()
            .map(|w| format!("tandem:worker:{}", w.id))
            .collect();
        async move {
            let mut total = 0;
            for key in keys {
                total += conn.hget::<_, _, u64>(&key, "succeeded").await.unwrap();
            }
            total == TASKS as u64
        }
    })
    .await;
    assert!(
        per_worker.iter().all(|&n| n > 0),
        "both workers ran tasks: {per_worker:?}"
    );

    // Acknowledged entries are deleted: nothing waits or is pending.
    let left: u64 = conn.xlen("tandem:{cpu}:stream:normal").await.unwrap();
    assert_eq!(left, 0);
}
