//! Queue-level observability against real workers: the state index behind
//! `tandem tasks --status` follows tasks through running, succeeded,
//! failed, dead, requeued and cancelled.

use std::time::Duration;

use tandem_producer::Task;
use tandem_shared::Status;
use tandem_shared::kind::builtin::{Fail, FailParams, Noop, Sleep, SleepParams};

use crate::support::{RedisServer, WorkerProcess, tandem, text, wait_until};

const WAIT: Duration = Duration::from_secs(30);

/// `tandem tasks --status <state> --json`: the ids listed, newest first.
fn listed(redis: &RedisServer, state: &str, extra: &[&str]) -> Vec<String> {
    let out = tandem(
        redis,
        &[&["tasks", "--status", state, "--json"], extra].concat(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
            assert_eq!(
                value["status"].as_str(),
                Some(if state == "dead" { "failed" } else { state }),
                "{line}"
            );
            value["id"].as_str().expect("an id").to_owned()
        })
        .collect()
}

#[tokio::test]
async fn tasks_by_status_follow_each_task_through_its_states() {
    let redis = RedisServer::start();
    let _worker = WorkerProcess::start(&redis, &[("TANDEM_CONCURRENCY", "2")]).await;
    let producer = redis.producer().await;

    let ok = producer
        .submit(Task::of::<Noop>(&rmpv::Value::Nil).unwrap())
        .await
        .unwrap();
    let failing = Task::of::<Fail>(&FailParams {
        code: "E_INDEX".into(),
        message: "listed as failed and dead".into(),
        retry: false,
    })
    .unwrap();
    let failing = producer.submit(failing).await.unwrap();
    assert_eq!(
        producer.wait(ok, WAIT).await.unwrap().status,
        Status::Succeeded
    );
    let failed = producer.wait(failing, WAIT).await.unwrap();
    assert_eq!(failed.status, Status::Failed);
    let letter = failed.record.dead_letter.clone().expect("dead-lettered");

    let long = producer
        .submit(Task::of::<Sleep>(&SleepParams { ms: Sleep::MAX_MS }).unwrap())
        .await
        .unwrap();
    wait_until(WAIT, "the sleep listed as running", || async {
        listed(&redis, "running", &[]) == [long.to_string()]
    })
    .await;
    assert_eq!(listed(&redis, "succeeded", &[]), [ok.to_string()]);
    assert_eq!(listed(&redis, "failed", &[]), [failing.to_string()]);
    assert_eq!(listed(&redis, "dead", &[]), [failing.to_string()]);
    // --kind filters; a table names the task and its error code.
    assert!(listed(&redis, "succeeded", &["--kind", "fail"]).is_empty());
    let out = tandem(&redis, &["tasks", "--status", "failed"]);
    let table = text(&out.stdout);
    assert!(
        table.contains(&failing.to_string()) && table.contains("E_INDEX"),
        "{table}"
    );

    // Cancelled while it runs: it leaves `running` for `cancelled`.
    producer.cancel(long).await.unwrap();
    assert_eq!(
        producer.wait(long, WAIT).await.unwrap().status,
        Status::Cancelled
    );
    assert!(listed(&redis, "running", &[]).is_empty());
    assert_eq!(listed(&redis, "cancelled", &[]), [long.to_string()]);

    // A requeued dead letter leaves `dead` (and `failed`) until it ends again.
    let out = tandem(&redis, &["dlq", "requeue", &letter]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_until(WAIT, "the requeued task dead-lettered anew", || async {
        producer
            .record(failing)
            .await
            .unwrap()
            .is_some_and(|r| r.dead_letter.is_some_and(|d| d != letter))
    })
    .await;
    assert_eq!(listed(&redis, "dead", &[]), [failing.to_string()]);

    // A bad state is refused, naming the flag and the choices.
    let out = tandem(&redis, &["tasks", "--status", "sleeping"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("--status") && err.contains("running"), "{err}");
}
