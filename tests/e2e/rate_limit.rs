//! Rate limits (issue 13, point 3): at most N starts per interval per kind
//! and per key, fleet-wide, enforced by the claim script; a limited task
//! waits in the delayed set (holding no slot, blocking no other kind) and
//! survives its worker's death.
//!
//! The limit is checked by counting starts (the records' `started_at_ms`,
//! the Redis clock at the claim) in windows: a slow machine only starts
//! fewer, so it cannot fail the check.

use std::time::Duration;

use redis::AsyncCommands;
use tandem_producer::Task;
use tandem_shared::flow::{LimitTarget, Rate};
use tandem_shared::kind::builtin::{Noop, Sleep, SleepParams};
use tandem_shared::task::DelayReason;
use tandem_shared::{Status, TaskId};

use crate::support::{RedisServer, WorkerProcess, tandem, text, wait_until};

fn noop() -> Task {
    Task::of::<Noop>(&rmpv::Value::Nil).unwrap()
}

/// The most starts in any window of `window_ms` (sorted start times).
fn most_in_window(starts: &[u64], window_ms: u64) -> usize {
    let mut most = 0;
    let mut first = 0;
    for (last, &at) in starts.iter().enumerate() {
        while at - starts[first] >= window_ms {
            first += 1;
        }
        most = most.max(last - first + 1);
    }
    most
}

#[test]
fn windows_are_counted_right() {
    assert_eq!(most_in_window(&[0, 100, 200, 999, 1000, 1001], 1000), 5);
    assert_eq!(most_in_window(&[0, 100, 200, 999, 1100, 1101], 1000), 4);
    assert_eq!(most_in_window(&[0, 1000, 2000], 1000), 1);
    assert_eq!(most_in_window(&[5, 5, 5], 1), 3);
}

#[tokio::test]
async fn a_kind_limit_holds_fleet_wide_across_competing_workers() {
    const TASKS: usize = 40;
    let redis = RedisServer::start();
    let mut workers = Vec::new();
    for _ in 0..2 {
        workers.push(WorkerProcess::start(&redis, &[("TANDEM_CONCURRENCY", "4")]).await);
    }
    let out = tandem(&redis, &["limit", "set", "kind:noop", "10/s"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("100ms between starts"),
        "{}",
        text(&out.stdout)
    );
    let producer = redis.producer().await;
    let ids = producer
        .submit_many((0..TASKS).map(|_| noop()).collect())
        .await
        .unwrap();
    let mut starts = Vec::new();
    for id in ids {
        let outcome = producer.wait(id, Duration::from_secs(60)).await.unwrap();
        assert_eq!(outcome.status, Status::Succeeded);
        assert_eq!(outcome.record.attempt, Some(1), "a wait is not a retry");
        starts.push(outcome.record.started_at_ms.unwrap());
    }
    starts.sort_unstable();
    // GCRA without burst spaces starts 100 ms apart; a reserved turn may
    // start up to one interval and 50 ms late, so a window of the period
    // holds at most N + 2.
    let most = most_in_window(&starts, 1_000);
    assert!(
        most <= 12,
        "{most} starts in one second under 10/s: {starts:?}"
    );
    let span = starts[TASKS - 1] - starts[0];
    assert!(
        span >= (TASKS as u64 - 2) * 100,
        "{TASKS} starts in {span} ms under 10/s"
    );
    drop(workers);
}

#[tokio::test]
async fn a_limited_task_waits_parked_without_blocking_other_kinds_or_keys() {
    let redis = RedisServer::start();
    let _worker = WorkerProcess::start(&redis, &[("TANDEM_CONCURRENCY", "2")]).await;
    let producer = redis.producer().await;
    let mut conn = redis.conn().await;
    producer
        .set_rate_limit(
            &LimitTarget::Key("vendor-a".into()),
            "1/min".parse().unwrap(),
        )
        .await
        .unwrap();
    let sleep_task = |key: &str| {
        Task::of::<Sleep>(&SleepParams { ms: 1 })
            .unwrap()
            .rate_key(key)
    };
    // Three for vendor-a first, then one for vendor-b and a noop.
    let a: Vec<TaskId> = producer
        .submit_many(vec![
            sleep_task("vendor-a"),
            sleep_task("vendor-a"),
            sleep_task("vendor-a"),
        ])
        .await
        .unwrap();
    let b = producer.submit(sleep_task("vendor-b")).await.unwrap();
    let other = producer.submit(noop()).await.unwrap();
    for id in [a[0], b, other] {
        let outcome = producer.wait(id, Duration::from_secs(30)).await.unwrap();
        assert_eq!(outcome.status, Status::Succeeded);
    }
    let first_start = producer
        .record(a[0])
        .await
        .unwrap()
        .unwrap()
        .started_at_ms
        .unwrap();
    // The other two wait their turns, one a minute, out of the stream.
    for (turn, id) in a[1..].iter().enumerate() {
        let record = producer.record(*id).await.unwrap().unwrap();
        assert_eq!(record.status, Some(Status::Delayed), "{id}");
        assert_eq!(record.delay_reason, Some(DelayReason::Limited));
        assert_eq!(record.rate_key.as_deref(), Some("vendor-a"));
        let due = record.retry_at_ms.unwrap();
        let expect = first_start + 60_000 * (turn as u64 + 1);
        assert!(
            due.abs_diff(expect) <= 1_000,
            "turn {turn} due at {due}, expected about {expect}"
        );
    }
    let queued: u64 = conn.xlen("tandem:{cpu}:stream:normal").await.unwrap();
    assert_eq!(queued, 0, "parked tasks hold no place in the stream");
    let queues = tandem(&redis, &["queues"]);
    let shown = text(&queues.stdout);
    assert!(shown.contains("key:vendor-a"), "{shown}");
    assert!(shown.contains("limited: next start in"), "{shown}");
    let list = tandem(&redis, &["limit", "list"]);
    assert!(
        text(&list.stdout).contains("1/min"),
        "{}",
        text(&list.stdout)
    );

    // Removing the limit leaves the parked tasks to their reserved turns;
    // cancelling one works.
    assert_eq!(
        producer.cancel(a[2]).await.unwrap(),
        tandem_producer::CancelOutcome::Cancelled
    );
    let parked: u64 = conn.zcard("tandem:{cpu}:delayed").await.unwrap();
    assert_eq!(parked, 1);
    let out = tandem(&redis, &["limit", "rm", "key:vendor-a"]);
    assert!(
        text(&out.stdout).contains("key:vendor-a: no limit"),
        "{}",
        text(&out.stdout)
    );
    let state: bool = conn
        .hexists("tandem:{cpu}:limit_tat", "key:vendor-a")
        .await
        .unwrap();
    assert!(!state, "a removed limit leaves no state");
    let out = tandem(&redis, &["limit", "rm", "key:vendor-a"]);
    assert!(
        text(&out.stdout).contains("had no limit"),
        "{}",
        text(&out.stdout)
    );
}

/// A worker SIGKILLed while a rate-limited task waits: the task is not the
/// worker's (it waits in Redis), so it still runs, once, at its turn, on
/// another worker.
#[tokio::test]
async fn a_rate_limited_task_runs_once_after_its_worker_is_killed() {
    let redis = RedisServer::start();
    let first = WorkerProcess::start(&redis, &[]).await;
    let producer = redis.producer().await;
    let mut conn = redis.conn().await;
    producer
        .set_rate_limit(
            &LimitTarget::Kind("noop".into()),
            Rate {
                count: 1,
                period_ms: 3_000,
            },
        )
        .await
        .unwrap();
    let ids = producer.submit_many(vec![noop(), noop()]).await.unwrap();
    producer
        .wait(ids[0], Duration::from_secs(30))
        .await
        .unwrap();
    let second = ids[1];
    wait_until(Duration::from_secs(20), "the second task parked", || {
        let producer = producer.clone();
        async move {
            producer.record(second).await.unwrap().unwrap().delay_reason
                == Some(DelayReason::Limited)
        }
    })
    .await;
    let due = producer
        .record(ids[1])
        .await
        .unwrap()
        .unwrap()
        .retry_at_ms
        .unwrap();
    first.signal("KILL");
    drop(first);

    let _second = WorkerProcess::start(&redis, &[]).await;
    let outcome = producer
        .wait(ids[1], Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(outcome.status, Status::Succeeded);
    assert_eq!(outcome.record.attempt, Some(1));
    assert!(outcome.record.started_at_ms.unwrap() >= due);
    // Three entries ever: the two submitted, and the parked one back.
    let info: Vec<redis::Value> = redis::cmd("XINFO")
        .arg("STREAM")
        .arg("tandem:{cpu}:stream:normal")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut items = info.into_iter();
    let mut added = None;
    while let (Some(name), Some(value)) = (items.next(), items.next()) {
        if redis::from_redis_value::<String>(name).unwrap() == "entries-added" {
            added = Some(redis::from_redis_value::<i64>(value).unwrap());
        }
    }
    assert_eq!(added, Some(3), "the waiting task came back once");
}

#[tokio::test]
async fn bad_limits_are_refused_naming_the_problem() {
    let redis = RedisServer::start();
    for (args, complaint) in [
        (vec!["limit", "set", "kind:noop", "0/s"], "a rate of 0"),
        (
            vec!["limit", "set", "kind:noop", "ten/s"],
            "not a whole number",
        ),
        (vec!["limit", "set", "kind:noop", "10/fortnight"], "unit"),
        (
            vec!["limit", "set", "noop", "10/s"],
            "kind:<kind> or key:<rate key>",
        ),
        (vec!["limit", "set", "kind:nope", "10/s"], "unknown kind"),
    ] {
        let out = tandem(&redis, &args);
        assert!(!out.status.success(), "{args:?} was accepted");
        let err = text(&out.stderr);
        assert!(err.contains(complaint), "{args:?}: {err}");
    }
    let out = tandem(&redis, &["submit", "noop", "--rate-key", "has space"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("rate_key"),
        "{}",
        text(&out.stderr)
    );
}
