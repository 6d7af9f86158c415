//! A round trip per built-in kind; a bad field named wherever parameters
//! are checked.

use std::process::Command;
use std::time::Duration;

use redis::AsyncCommands;

use tandem_producer::{ProducerError, Task};
use tandem_shared::Status;
use tandem_shared::kind::builtin::{Echo, Fail, FailParams, Noop, Sleep, SleepOutput, SleepParams};

use crate::support::{RedisServer, WorkerProcess, bin};

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

/// Regression (issue 11, point 11): a field of the wrong type failed with
/// `wrong msgpack marker FixStr(3)`. The Rust producer and `tandem submit
/// --params` check the parameters of a built-in kind before sending, and
/// say which field is wrong and how; nothing reaches the queue.
#[tokio::test]
async fn a_bad_field_is_named_by_the_producer_and_by_tandem_submit() {
    let redis = RedisServer::start();
    let producer = redis.producer().await;
    let option = serde_json::json!({"s0": 100.0, "strike": 100.0, "rate": 0.03, "sigma": "0.2",
                                    "maturity": 1.0, "steps": 4, "paths": 1000, "seed": 1});
    let wanted = r#"sigma: expected a number, got a string ("0.2")"#;

    let err = producer
        .submit(Task::new("monte_carlo", &option).unwrap())
        .await
        .unwrap_err();
    match &err {
        ProducerError::BadParams { kind, message } => {
            assert_eq!((kind.as_str(), message.as_str()), ("monte_carlo", wanted));
        }
        other => panic!("expected BadParams, got {other:?}"),
    }

    let out = Command::new(bin("tandem"))
        .args(["submit", "monte_carlo", "--params", &option.to_string()])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("REDIS_URL", redis.url())
        .output()
        .expect("run tandem");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains(wanted), "{stderr}");
    assert_eq!(
        stderr.matches("sigma").count(),
        1,
        "the cause is said once: {stderr}"
    );

    let mut conn = redis.conn().await;
    let queued: u64 = conn.xlen("tandem:{parallel}:stream:normal").await.unwrap();
    assert_eq!(queued, 0, "nothing was submitted");
}
