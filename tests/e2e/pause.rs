//! Pause and resume (issue 13, point 5), fleet-wide: a class, a class and
//! priority, a kind. Running tasks finish, nothing new starts, producers
//! still submit, and a paused kind does not block the kinds behind it.
//!
//! "Nothing starts" is shown against something that did start after it:
//! a task of a stream the pause does not cover, submitted after the paused
//! ones, runs on the same worker; so the worker claimed past them, and a
//! slow machine cannot make the test pass by being slow.

use std::time::Duration;

use redis::AsyncCommands;
use tandem_producer::{CancelOutcome, Task};
use tandem_shared::flow::PauseTarget;
use tandem_shared::kind::builtin::{Noop, Sleep, SleepParams};
use tandem_shared::task::DelayReason;
use tandem_shared::{Class, Priority, Status, TaskId};

use crate::support::{RedisServer, WorkerProcess, tandem, text, wait_until};

fn noop() -> Task {
    Task::of::<Noop>(&rmpv::Value::Nil).unwrap()
}

fn sleep_task(ms: u64) -> Task {
    Task::of::<Sleep>(&SleepParams { ms }).unwrap()
}

async fn status(producer: &tandem_producer::Producer, id: TaskId) -> Status {
    producer.status(id).await.unwrap()
}

#[tokio::test]
async fn a_paused_class_finishes_running_tasks_and_starts_nothing_until_resumed() {
    let redis = RedisServer::start();
    let _worker = WorkerProcess::start(&redis, &[("TANDEM_CONCURRENCY", "2")]).await;
    let producer = redis.producer().await;

    let running = producer.submit(sleep_task(1_500)).await.unwrap();
    wait_until(Duration::from_secs(20), "the sleep runs", || {
        let producer = producer.clone();
        async move { status(&producer, running).await == Status::Running }
    })
    .await;

    let out = tandem(&redis, &["pause", "cpu"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("paused cpu"),
        "{}",
        text(&out.stdout)
    );
    let queues = tandem(&redis, &["queues"]);
    assert!(
        text(&queues.stdout).contains("whole class"),
        "{}",
        text(&queues.stdout)
    );
    let workers = tandem(&redis, &["workers"]);
    assert!(
        text(&workers.stdout)
            .contains("paused fleet-wide (nothing new of these starts; tandem resume ...): cpu"),
        "{}",
        text(&workers.stdout)
    );

    // Producers still submit; the tasks wait.
    let held: Vec<TaskId> = producer
        .submit_many((0..5).map(|_| noop()).collect())
        .await
        .unwrap();
    // The running task finishes.
    let outcome = producer
        .wait(running, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(outcome.status, Status::Succeeded);
    // A light task, submitted after them, runs on the same (CPU) worker:
    // it claimed past the paused class.
    let light = producer.submit(noop().class(Class::Light)).await.unwrap();
    let outcome = producer.wait(light, Duration::from_secs(30)).await.unwrap();
    assert_eq!(outcome.status, Status::Succeeded);
    for id in &held {
        assert_eq!(status(&producer, *id).await, Status::Queued);
    }

    let out = tandem(&redis, &["resume", "cpu"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for id in held {
        let outcome = producer.wait(id, Duration::from_secs(30)).await.unwrap();
        assert_eq!(outcome.status, Status::Succeeded);
    }
    let out = tandem(&redis, &["resume", "cpu"]);
    assert!(
        text(&out.stdout).contains("was not paused"),
        "{}",
        text(&out.stdout)
    );
}

#[tokio::test]
async fn a_paused_priority_is_passed_over_for_the_next_one() {
    let redis = RedisServer::start();
    let _worker = WorkerProcess::start(&redis, &[]).await;
    let producer = redis.producer().await;
    let target = PauseTarget::Priority(Class::Cpu, Priority::Normal);
    assert_eq!(producer.pause(&target).await.unwrap(), 1);
    assert_eq!(producer.pause(&target).await.unwrap(), 0, "already paused");

    let normal = producer.submit(noop()).await.unwrap();
    let low = producer
        .submit(noop().priority(Priority::Low))
        .await
        .unwrap();
    let outcome = producer.wait(low, Duration::from_secs(30)).await.unwrap();
    assert_eq!(outcome.status, Status::Succeeded);
    assert_eq!(status(&producer, normal).await, Status::Queued);

    assert_eq!(producer.resume(&target).await.unwrap(), (1, 0));
    let outcome = producer
        .wait(normal, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(outcome.status, Status::Succeeded);
}

#[tokio::test]
async fn a_paused_kind_is_held_without_blocking_the_kinds_behind_it() {
    let redis = RedisServer::start();
    let _worker = WorkerProcess::start(&redis, &[]).await;
    let producer = redis.producer().await;
    let mut conn = redis.conn().await;
    let out = tandem(&redis, &["pause", "kind:sleep"]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    // Sleeps first in the stream, then a noop: the noop runs.
    let sleeps = producer
        .submit_many((0..3).map(|_| sleep_task(1)).collect())
        .await
        .unwrap();
    let after = producer.submit(noop()).await.unwrap();
    let outcome = producer.wait(after, Duration::from_secs(30)).await.unwrap();
    assert_eq!(outcome.status, Status::Succeeded);
    for id in &sleeps {
        let record = producer.record(*id).await.unwrap().unwrap();
        assert_eq!(record.status, Some(Status::Delayed), "{id}");
        assert_eq!(record.delay_reason, Some(DelayReason::Paused));
        assert_eq!(record.started_at_ms, None);
    }
    let held: u64 = conn.zcard("tandem:{cpu}:held:sleep").await.unwrap();
    assert_eq!(held, 3);
    let view = tandem(&redis, &["task", &sleeps[0].to_string()]);
    assert!(
        text(&view.stdout).contains("its kind is paused"),
        "{}",
        text(&view.stdout)
    );
    let queues = tandem(&redis, &["queues"]);
    assert!(
        text(&queues.stdout).contains("3 tasks held"),
        "{}",
        text(&queues.stdout)
    );

    // A held task can be cancelled; it leaves the held set.
    assert_eq!(
        producer.cancel(sleeps[2]).await.unwrap(),
        CancelOutcome::Cancelled
    );
    let held: u64 = conn.zcard("tandem:{cpu}:held:sleep").await.unwrap();
    assert_eq!(held, 2);

    let out = tandem(&redis, &["resume", "kind:sleep"]);
    assert!(
        text(&out.stdout).contains("2 held tasks go back"),
        "{}",
        text(&out.stdout)
    );
    for id in &sleeps[..2] {
        let outcome = producer.wait(*id, Duration::from_secs(30)).await.unwrap();
        assert_eq!(outcome.status, Status::Succeeded);
        assert_eq!(outcome.record.attempt, Some(1), "a hold is not a retry");
    }
    let outcome = producer
        .wait(sleeps[2], Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(outcome.status, Status::Cancelled);
    assert_eq!(outcome.record.started_at_ms, None);
}

#[tokio::test]
async fn bad_pause_targets_are_refused_naming_the_problem() {
    let redis = RedisServer::start();
    for (args, complaint) in [
        (vec!["pause", "huge"], "class"),
        (vec!["pause", "cpu:urgent"], "priority"),
        (vec!["pause", "kind:no_such_kind"], "unknown kind"),
        (vec!["resume", "kind:"], "kind \"\""),
        (
            vec!["pause", "cpu", "--class", "heavy"],
            "--class only narrows",
        ),
    ] {
        let out = tandem(&redis, &args);
        assert!(!out.status.success(), "{args:?} was accepted");
        let err = text(&out.stderr);
        assert!(err.contains(complaint), "{args:?}: {err}");
    }
    let out = tandem(&redis, &["pause", "kind:my_kind", "--custom-kind"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut conn = redis.conn().await;
    let paused: bool = conn
        .hexists("tandem:{heavy}:flow", "pause:kind:my_kind")
        .await
        .unwrap();
    assert!(paused, "a kind is paused in every class");
}
