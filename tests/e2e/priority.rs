//! Strict priority order, and no starvation of low priorities.

use std::time::Duration;

use tandem_producer::Task;
use tandem_shared::kind::builtin::{Noop, Sleep, SleepParams};
use tandem_shared::{Priority, TaskId};

use crate::support::{RedisServer, WorkerProcess};

/// The ids in the producer's `cpu` reply stream, in commit order.
async fn commit_order(redis: &RedisServer, producer_id: &str) -> Vec<TaskId> {
    let mut conn = redis.conn().await;
    let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(format!("tandem:{{cpu}}:reply:{producer_id}"))
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    entries
        .ids
        .iter()
        .map(|e| {
            let id: String = e.get("id").unwrap();
            id.parse().unwrap()
        })
        .collect()
}

#[tokio::test]
async fn a_waiting_higher_priority_always_starts_first() {
    let redis = RedisServer::start();
    let producer = redis.producer().await;

    // Submitted lowest first and interleaved, before any worker runs.
    let mut by_priority: Vec<(Priority, TaskId)> = Vec::new();
    for _ in 0..5 {
        for priority in [
            Priority::Low,
            Priority::Normal,
            Priority::High,
            Priority::Critical,
        ] {
            let task = Task::of::<Noop>(&rmpv::Value::Nil)
                .unwrap()
                .priority(priority);
            by_priority.push((priority, producer.submit(task).await.unwrap()));
        }
    }
    let _worker = WorkerProcess::start(&redis, &[("TANDEM_CONCURRENCY", "1")]).await;
    for (_, id) in &by_priority {
        producer.wait(*id, Duration::from_secs(20)).await.unwrap();
    }

    let order = commit_order(&redis, producer.id()).await;
    let priorities: Vec<Priority> = order
        .iter()
        .map(|id| by_priority.iter().find(|(_, t)| t == id).unwrap().0)
        .collect();
    let mut expected = priorities.clone();
    expected.sort();
    assert_eq!(priorities, expected, "tasks ran out of priority order");
    assert_eq!(priorities.len(), 20);
}

#[tokio::test]
async fn batched_claims_keep_priority_order() {
    let redis = RedisServer::start();
    let producer = redis.producer().await;
    let mut low = Vec::new();
    let mut critical = Vec::new();
    for i in 0..200 {
        let (priority, list) = if i % 2 == 0 {
            (Priority::Low, &mut low)
        } else {
            (Priority::Critical, &mut critical)
        };
        list.push(
            Task::of::<Noop>(&rmpv::Value::Nil)
                .unwrap()
                .priority(priority),
        );
    }
    let low = producer.submit_many(low).await.unwrap();
    let critical = producer.submit_many(critical).await.unwrap();
    let _worker = WorkerProcess::start(
        &redis,
        &[("TANDEM_CONCURRENCY", "16"), ("TANDEM_CLAIM_BATCH", "16")],
    )
    .await;
    for id in low.iter().chain(&critical) {
        producer.wait(*id, Duration::from_secs(20)).await.unwrap();
    }
    let mut last_critical_start = 0;
    let mut first_low_start = u64::MAX;
    for id in &critical {
        let record = producer.record(*id).await.unwrap().unwrap();
        last_critical_start = last_critical_start.max(record.started_at_ms.unwrap());
    }
    for id in &low {
        let record = producer.record(*id).await.unwrap().unwrap();
        first_low_start = first_low_start.min(record.started_at_ms.unwrap());
    }
    assert!(
        last_critical_start <= first_low_start,
        "a low task started at {first_low_start} before the last critical at {last_critical_start}"
    );
}

#[tokio::test]
async fn low_priority_is_not_starved_by_a_flood() {
    let redis = RedisServer::start();
    let producer = redis.producer().await;
    // Two seconds of high-priority work for a single slot, with one low task.
    let flood: Vec<Task> = (0..100)
        .map(|_| {
            Task::of::<Sleep>(&SleepParams { ms: 20 })
                .unwrap()
                .priority(Priority::High)
        })
        .collect();
    let flood = producer.submit_many(flood).await.unwrap();
    let low = producer
        .submit(
            Task::of::<Noop>(&rmpv::Value::Nil)
                .unwrap()
                .priority(Priority::Low),
        )
        .await
        .unwrap();
    let _worker = WorkerProcess::start(
        &redis,
        &[("TANDEM_CONCURRENCY", "1"), ("TANDEM_AGING_MS", "300")],
    )
    .await;

    let low_done = producer.wait(low, Duration::from_secs(20)).await.unwrap();
    let last = producer
        .wait(*flood.last().unwrap(), Duration::from_secs(20))
        .await
        .unwrap();
    assert!(
        low_done.record.finished_at_ms.unwrap() < last.record.started_at_ms.unwrap(),
        "the low task waited for the whole flood: {:?} vs {:?}",
        low_done.record,
        last.record
    );
}
