//! Structured logs: with `log_format = json`, every event of a task's run
//! carries its id, kind, worker and device (the `task` span), and the
//! executor's events sit in an `execute` span, commits in a `commit` span.

use tandem_producer::Task;
use tandem_shared::Status;
use tandem_shared::kind::builtin::{Fail, FailParams};

use crate::support::{RedisServer, WorkerProcess, wait_until};

#[tokio::test]
async fn json_log_events_carry_the_task_its_kind_worker_and_device() {
    let redis = RedisServer::start();
    // The harness logs tandem_worker at debug: the commit's event shows.
    let worker = WorkerProcess::start(&redis, &[("TANDEM_LOG_FORMAT", "json")]).await;
    let producer = redis.producer().await;
    let params = FailParams {
        code: "E_TRACED".into(),
        message: "for the log".into(),
        retry: false,
    };
    let id = producer
        .submit(Task::of::<Fail>(&params).unwrap())
        .await
        .unwrap();
    let outcome = producer
        .wait(id, std::time::Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(outcome.status, Status::Failed);

    let id_text = id.to_string();
    let events = || -> Vec<serde_json::Value> {
        worker
            .log_text()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    };
    wait_until(
        std::time::Duration::from_secs(10),
        "the commit is logged",
        || async { events().iter().any(|e| span(e, "commit").is_some()) },
    )
    .await;
    let events = events();
    assert!(!events.is_empty(), "the worker logs JSON lines");

    let failed = events
        .iter()
        .find(|e| {
            e["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("attempt failed"))
        })
        .unwrap_or_else(|| panic!("no 'attempt failed' event in {events:?}"));
    let task = span(failed, "task").expect("the event is inside the task span");
    assert_eq!(task["task"], id_text.as_str());
    assert_eq!(task["kind"], "fail");
    assert_eq!(task["worker"], worker.id.as_str());
    assert_eq!(task["device"], "cpu");
    assert!(span(failed, "execute").is_some(), "{failed}");

    let commit = events
        .iter()
        .filter_map(|e| span(e, "commit"))
        .find(|c| c["task"] == id_text.as_str());
    assert!(commit.is_some(), "no commit span names the task");
}

/// The span named `name` among an event's spans, with its fields.
fn span<'a>(event: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    event["spans"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == name)
}
