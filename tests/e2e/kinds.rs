//! A round trip per built-in kind.

use std::time::Duration;

use tandem_producer::{ProducerError, Task};
use tandem_shared::Status;
use tandem_shared::kind::builtin::{Echo, Fail, FailParams, Noop, Sleep, SleepOutput, SleepParams};

use crate::support::{RedisServer, WorkerProcess};

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn every_builtin_kind_round_trips() {
    let redis = RedisServer::start();
    let _worker = WorkerProcess::start(&redis, &[]).await;
    let producer = redis.producer().await;

    let noop = producer
        .submit(Task::of::<Noop>(&rmpv::Value::Nil).unwrap())
        .await
        .unwrap();
    let outcome = producer.wait(noop, WAIT).await.unwrap();
    assert_eq!(outcome.status, Status::Succeeded);
    outcome.result::<()>().unwrap();

    let sleep = producer
        .submit(Task::of::<Sleep>(&SleepParams { ms: 50 }).unwrap())
        .await
        .unwrap();
    let outcome = producer.wait(sleep, WAIT).await.unwrap();
    assert_eq!(outcome.result::<SleepOutput>().unwrap().slept_ms, 50);
    assert!(
        outcome.record.run_us.unwrap() >= 50_000,
        "{:?}",
        outcome.record
    );

    let payload = rmpv::Value::Map(vec![
        ("symbol".into(), "AAPL".into()),
        (
            "prices".into(),
            rmpv::Value::Array(vec![1.5.into(), 2.25.into()]),
        ),
    ]);
    let echo = producer
        .submit(Task::of::<Echo>(&payload).unwrap())
        .await
        .unwrap();
    let outcome = producer.handle(echo).await.unwrap();
    assert_eq!(outcome.result::<rmpv::Value>().unwrap(), payload);
    assert_eq!(outcome.record.worker.as_deref(), Some(_worker.id.as_str()));
    assert_eq!(outcome.record.device.as_deref(), Some("cpu"));
    assert_eq!(outcome.record.attempt, Some(1));

    let fail = producer
        .submit(
            Task::of::<Fail>(&FailParams {
                code: "E_DELIBERATE".into(),
                message: "asked to fail".into(),
                retry: false,
            })
            .unwrap(),
        )
        .await
        .unwrap();
    let outcome = producer.wait(fail, WAIT).await.unwrap();
    assert_eq!(outcome.status, Status::Failed);
    let failure = outcome.failure().unwrap();
    assert_eq!(failure.code.as_str(), "E_DELIBERATE");
    assert_eq!(failure.message, "asked to fail");
    match outcome.result::<()>() {
        Err(ProducerError::TaskFailed { code, .. }) => assert_eq!(code.as_str(), "E_DELIBERATE"),
        other => panic!("expected TaskFailed, got {other:?}"),
    }
    assert_eq!(producer.status(fail).await.unwrap(), Status::Failed);
}
