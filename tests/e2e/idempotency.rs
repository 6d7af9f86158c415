//! Idempotency keys: the same key gives the same task, and only one.

use std::time::Duration;

use redis::AsyncCommands;
use tandem_producer::Task;
use tandem_shared::kind::builtin::{Echo, Noop};

use crate::support::{RedisServer, WorkerProcess};

#[tokio::test]
async fn the_same_key_returns_the_same_task_and_creates_no_second() {
    let redis = RedisServer::start();
    let producer = redis.producer().await;
    let task = || {
        Task::of::<Echo>(&"order-42".into())
            .unwrap()
            .idempotency_key("order-42")
    };

    let first = producer.submit(task()).await.unwrap();
    let again = producer.submit(task()).await.unwrap();
    assert_eq!(first, again);
    let other = producer
        .submit(
            Task::of::<Noop>(&rmpv::Value::Nil)
                .unwrap()
                .idempotency_key("order-43"),
        )
        .await
        .unwrap();
    assert_ne!(first, other);

    let mut conn = redis.conn().await;
    let queued: u64 = conn.xlen("tandem:{cpu}:stream:normal").await.unwrap();
    assert_eq!(queued, 2, "one entry per distinct key");

    // A second producer, and a retry after the task finished, get the same id.
    let _worker = WorkerProcess::start(&redis, &[]).await;
    producer.wait(first, Duration::from_secs(20)).await.unwrap();
    let other_producer = redis.producer().await;
    assert_eq!(other_producer.submit(task()).await.unwrap(), first);
    let key: String = conn.get("tandem:{cpu}:idem:order-42").await.unwrap();
    assert_eq!(key, first.to_string());
    let ttl: i64 = conn.ttl("tandem:{cpu}:idem:order-42").await.unwrap();
    assert!(ttl > 0, "idempotency keys expire");

    // submit_many honours keys within one batch too.
    let ids = producer.submit_many(vec![task(), task()]).await.unwrap();
    assert_eq!(ids, vec![first, first]);
}
