//! Deadlines: a task found past its deadline is not started.

use std::time::Duration;

use tandem_producer::Task;
use tandem_shared::Status;
use tandem_shared::kind::builtin::Echo;

use crate::support::{RedisServer, WorkerProcess};

#[tokio::test]
async fn a_task_past_its_deadline_expires_without_running() {
    let redis = RedisServer::start();
    let producer = redis.producer().await;
    let late = producer
        .submit(
            Task::of::<Echo>(&"late".into())
                .unwrap()
                .deadline(Duration::from_millis(100)),
        )
        .await
        .unwrap();
    let in_time = producer
        .submit(
            Task::of::<Echo>(&"in time".into())
                .unwrap()
                .deadline(Duration::from_secs(60)),
        )
        .await
        .unwrap();
    let record = producer.record(late).await.unwrap().unwrap();
    let deadline = record.deadline_ms.unwrap();
    assert_eq!(deadline, record.submitted_at_ms.unwrap() + 100);

    // The worker starts only once the deadline has passed on the Redis
    // clock (the clock the scripts judge deadlines by).
    let conn = redis.conn().await;
    crate::support::wait_until(Duration::from_secs(20), "the deadline passed", || {
        let mut conn = conn.clone();
        async move {
            let (secs, micros): (u64, u64) =
                redis::cmd("TIME").query_async(&mut conn).await.unwrap();
            secs * 1000 + micros / 1000 > deadline
        }
    })
    .await;
    let _worker = WorkerProcess::start(&redis, &[]).await;

    let outcome = producer.wait(late, Duration::from_secs(20)).await.unwrap();
    assert_eq!(outcome.status, Status::Expired);
    assert_eq!(outcome.failure().unwrap().code.as_str(), "EXPIRED");
    assert_eq!(
        outcome.record.started_at_ms, None,
        "an expired task must not start"
    );
    assert!(outcome.record.finished_at_ms.unwrap() > deadline);

    let outcome = producer
        .wait(in_time, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(outcome.result::<String>().unwrap(), "in time");
}
