//! Delayed tasks (issue 13, point 1): submitted for later from the
//! producer, the CLI and raw Redis; promoted on time, once, however many
//! workers race; cancel, status and `tandem task` work while they wait.

use std::time::{Duration, SystemTime};

use redis::AsyncCommands;
use tandem_producer::{CancelOutcome, Task};
use tandem_shared::kind::builtin::Noop;
use tandem_shared::task::DelayReason;
use tandem_shared::{Status, TaskId};

use crate::support::{RedisServer, WorkerProcess, tandem, text};

const DELAYED: &str = "tandem:{cpu}:delayed";
const STREAM: &str = "tandem:{cpu}:stream:normal";

fn noop() -> Task {
    Task::of::<Noop>(&rmpv::Value::Nil).unwrap()
}

#[tokio::test]
async fn a_delayed_task_waits_out_of_its_stream_then_runs_at_its_time() {
    let redis = RedisServer::start();
    let _worker = WorkerProcess::start(&redis, &[]).await;
    let producer = redis.producer().await;
    let mut conn = redis.conn().await;

    let id = producer
        .submit(noop().delay(Duration::from_millis(1_500)))
        .await
        .unwrap();
    let record = producer.record(id).await.unwrap().unwrap();
    let outcome = producer.wait(id, Duration::from_secs(30)).await.unwrap();
    assert_eq!(outcome.status, Status::Succeeded);
    let run_at = outcome.record.run_at_ms.or(record.run_at_ms).unwrap();
    let started = outcome.record.started_at_ms.unwrap();
    assert!(
        started >= run_at,
        "started at {started}, before its time {run_at}"
    );
    assert_eq!(outcome.record.attempt, Some(1), "a delay is not a retry");
    assert!(run_at >= record.submitted_at_ms.unwrap() + 1_500);
    let left: u64 = conn.zcard(DELAYED).await.unwrap();
    assert_eq!(left, 0);

    // A time already past runs at once, as an undelayed task does.
    let past = producer
        .submit(noop().run_at(SystemTime::UNIX_EPOCH + Duration::from_secs(1)))
        .await
        .unwrap();
    let outcome = producer.wait(past, Duration::from_secs(30)).await.unwrap();
    assert_eq!(outcome.status, Status::Succeeded);
}

#[tokio::test]
async fn cancel_status_and_the_task_view_work_on_a_delayed_task() {
    let redis = RedisServer::start();
    let producer = redis.producer().await;
    let mut conn = redis.conn().await;
    let id = producer
        .submit(noop().delay(Duration::from_secs(3_600)))
        .await
        .unwrap();
    let record = producer.record(id).await.unwrap().unwrap();
    assert_eq!(record.status, Some(Status::Delayed));
    assert_eq!(record.delay_reason, Some(DelayReason::Scheduled));
    // It waits out of its stream: its id in the delayed set, scored by its
    // time, its entry's fields in its retry hash.
    let due = record.retry_at_ms.expect("retry_at_ms on a delayed task");
    assert_eq!(record.run_at_ms, Some(due));
    let score: Option<f64> = conn.zscore(DELAYED, id.to_string()).await.unwrap();
    assert_eq!(score, Some(due as f64));
    let queued: u64 = conn.xlen(STREAM).await.unwrap();
    assert_eq!(queued, 0);
    let fields: Vec<String> = conn
        .hkeys(format!("tandem:{{cpu}}:retry:{id}"))
        .await
        .unwrap();
    assert!(fields.contains(&"params".to_owned()), "{fields:?}");
    assert!(!fields.contains(&"delay_ms".to_owned()), "{fields:?}");
    assert_eq!(producer.status(id).await.unwrap(), Status::Delayed);

    let view = tandem(&redis, &["task", &id.to_string()]);
    assert!(view.status.success(), "{}", text(&view.stderr));
    let shown = text(&view.stdout);
    assert!(shown.contains("delayed"), "{shown}");
    assert!(shown.contains("scheduled until"), "{shown}");
    let json = tandem(&redis, &["task", &id.to_string(), "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(json["status"], "delayed");
    assert_eq!(json["delayed"]["reason"], "scheduled");

    assert_eq!(producer.cancel(id).await.unwrap(), CancelOutcome::Cancelled);
    let outcome = producer.wait(id, Duration::from_secs(5)).await.unwrap();
    assert_eq!(outcome.status, Status::Cancelled);
    assert!(
        outcome
            .failure()
            .unwrap()
            .message
            .contains("while it was delayed"),
        "{:?}",
        outcome.failure()
    );
    let left: u64 = conn.zcard(DELAYED).await.unwrap();
    assert_eq!(left, 0, "a cancelled delayed task leaves the delayed set");
    let retry: bool = conn
        .exists(format!("tandem:{{cpu}}:retry:{id}"))
        .await
        .unwrap();
    assert!(!retry);

    // A worker started later never runs it.
    let _worker = WorkerProcess::start(&redis, &[]).await;
    let after = producer.submit(noop()).await.unwrap();
    producer.wait(after, Duration::from_secs(30)).await.unwrap();
    let record = producer.record(id).await.unwrap().unwrap();
    assert_eq!(record.status, Some(Status::Cancelled));
    assert_eq!(record.started_at_ms, None);
}

#[tokio::test]
async fn the_cli_submits_delayed_tasks_and_refuses_bad_times() {
    let redis = RedisServer::start();
    let out = tandem(&redis, &["submit", "noop", "--delay", "1h"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id: TaskId = text(&out.stdout).trim().parse().unwrap();
    let out = tandem(&redis, &["status", &id.to_string()]);
    assert!(
        text(&out.stdout).contains("delayed"),
        "{}",
        text(&out.stdout)
    );

    let out = tandem(
        &redis,
        &["submit", "noop", "--at", "2999-12-03T17:30:00+01:00"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id: TaskId = text(&out.stdout).trim().parse().unwrap();
    let producer = redis.producer().await;
    let record = producer.record(id).await.unwrap().unwrap();
    assert_eq!(record.run_at_ms, Some(32_501_233_800_000));
    // A delayed task's deadline counts from its time.
    let out = tandem(
        &redis,
        &["submit", "noop", "--delay", "1h", "--deadline-ms", "5000"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id: TaskId = text(&out.stdout).trim().parse().unwrap();
    let record = producer.record(id).await.unwrap().unwrap();
    assert_eq!(record.deadline_ms, Some(record.run_at_ms.unwrap() + 5_000));

    for (args, complaint) in [
        (vec!["--delay", "-5s"], "negative"),
        (vec!["--delay", "soon"], "not a duration"),
        (vec!["--at", "tomorrow"], "not a time"),
        (vec!["--at", "2026-12-03 17:30"], "not a time"),
        (
            vec!["--delay", "5s", "--at", "2026-12-03T17:30:00Z"],
            "cannot be used with",
        ),
    ] {
        let mut all = vec!["submit", "noop"];
        all.extend(args.iter().copied());
        let out = tandem(&redis, &all);
        assert!(!out.status.success(), "{args:?} was accepted");
        let err = text(&out.stderr);
        assert!(err.contains(complaint), "{args:?}: {err}");
    }
}

/// Another language's producer: the submit script with `delay_ms` among
/// its metadata pairs, as docs/wire-format.md describes; and a malformed
/// one refused, naming the field, with nothing written.
#[tokio::test]
async fn raw_redis_submits_a_delayed_task_per_the_wire_format() {
    let redis = RedisServer::start();
    let _worker = WorkerProcess::start(&redis, &[]).await;
    let mut conn = redis.conn().await;
    tandem_shared::scripts::load_all(&mut conn).await.unwrap();
    let submit = |id: TaskId, delay: &str| {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(tandem_shared::scripts::SUBMIT.sha())
            .arg(2)
            .arg(STREAM)
            .arg(format!("tandem:{{cpu}}:task:{id}"))
            .arg(id.to_string())
            .arg(0)
            .arg(60)
            .arg("")
            .arg(vec![0xc0u8])
            .arg("version")
            .arg("2")
            .arg("id")
            .arg(id.to_string())
            .arg("kind")
            .arg("noop")
            .arg("class")
            .arg("cpu")
            .arg("priority")
            .arg("normal")
            .arg("delay_ms")
            .arg(delay);
        cmd
    };
    let bad = TaskId::new();
    let err = submit(bad, "-3")
        .query_async::<redis::Value>(&mut conn)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("delay_ms"), "{err}");
    let exists: bool = conn
        .exists(format!("tandem:{{cpu}}:task:{bad}"))
        .await
        .unwrap();
    assert!(!exists, "a refused submit writes nothing");

    let id = TaskId::new();
    let _: redis::Value = submit(id, "300").query_async(&mut conn).await.unwrap();
    let producer = redis.producer().await;
    let outcome = producer.wait(id, Duration::from_secs(30)).await.unwrap();
    assert_eq!(outcome.status, Status::Succeeded);
    // A completion notice does not repeat `run_at_ms`; the record has it.
    let record = producer.record(id).await.unwrap().unwrap();
    assert!(record.started_at_ms.unwrap() >= record.run_at_ms.unwrap());
}

/// Two workers' promoters race for the same due tasks: each task enters
/// its stream once (the stream's `entries-added` counts every XADD) and
/// runs once.
#[tokio::test]
async fn two_workers_racing_promotion_promote_each_task_once() {
    const TASKS: usize = 300;
    let redis = RedisServer::start();
    let a = WorkerProcess::start(&redis, &[("TANDEM_CONCURRENCY", "4")]).await;
    let b = WorkerProcess::start(&redis, &[("TANDEM_CONCURRENCY", "4")]).await;
    let producer = redis.producer().await;
    let mut conn = redis.conn().await;
    let at = SystemTime::now() + Duration::from_millis(1_500);
    let tasks: Vec<Task> = (0..TASKS).map(|_| noop().run_at(at)).collect();
    let ids = producer.submit_many(tasks).await.unwrap();
    for id in &ids {
        let outcome = producer.wait(*id, Duration::from_secs(60)).await.unwrap();
        assert_eq!(outcome.status, Status::Succeeded);
        assert_eq!(outcome.record.attempt, Some(1));
    }
    assert_eq!(
        entries_added(&mut conn, STREAM).await,
        TASKS as i64,
        "each delayed task enters its stream exactly once"
    );
    let left: u64 = conn.zcard(DELAYED).await.unwrap();
    assert_eq!(left, 0);
    drop((a, b));
}

/// How many entries were ever added to a stream (`XINFO STREAM`).
async fn entries_added(conn: &mut redis::aio::MultiplexedConnection, stream: &str) -> i64 {
    let reply: Vec<redis::Value> = redis::cmd("XINFO")
        .arg("STREAM")
        .arg(stream)
        .query_async(conn)
        .await
        .unwrap();
    let mut items = reply.into_iter();
    while let (Some(name), Some(value)) = (items.next(), items.next()) {
        if redis::from_redis_value::<String>(name).unwrap() == "entries-added" {
            return redis::from_redis_value(value).unwrap();
        }
    }
    panic!("XINFO STREAM {stream} has no entries-added")
}

/// On a Redis Cluster (each class its own slot): a delayed task is promoted
/// by the worker's promoter, a kind's pause written to every class holds,
/// and a key's limit parks a second task; all through the cluster client.
#[tokio::test]
async fn delayed_tasks_pauses_and_limits_work_on_a_cluster() {
    use tandem_shared::flow::{LimitTarget, PauseTarget};
    let cluster = crate::support::ha::RedisCluster::start();
    let config = cluster.config();
    let producer = tandem_producer::Producer::connect(&config).await.unwrap();
    let mut worker_env: Vec<(&str, &str)> = vec![("TANDEM_CLASSES", "cpu")];
    worker_env.push(("TANDEM_DEVICE", "cpu"));
    let _worker = WorkerProcess::spawn_with(&cluster.env(), &worker_env);

    let delayed = producer
        .submit(noop().delay(Duration::from_millis(500)))
        .await
        .unwrap();
    let outcome = producer
        .wait(delayed, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(outcome.status, Status::Succeeded);
    // A completion notice does not repeat `run_at_ms`; the record has it.
    let record = producer.record(delayed).await.unwrap().unwrap();
    assert!(record.started_at_ms.unwrap() >= record.run_at_ms.unwrap());

    let sleep = PauseTarget::Kind("sleep".into());
    assert_eq!(
        producer.pause(&sleep).await.unwrap(),
        4,
        "paused in every class"
    );
    let held = producer
        .submit(
            Task::of::<tandem_shared::kind::builtin::Sleep>(
                &tandem_shared::kind::builtin::SleepParams { ms: 1 },
            )
            .unwrap(),
        )
        .await
        .unwrap();
    producer
        .set_rate_limit(&LimitTarget::Key("k".into()), "1/h".parse().unwrap())
        .await
        .unwrap();
    let ids = producer
        .submit_many(vec![noop().rate_key("k"), noop().rate_key("k")])
        .await
        .unwrap();
    producer
        .wait(ids[0], Duration::from_secs(60))
        .await
        .unwrap();
    let after = producer.submit(noop()).await.unwrap();
    producer.wait(after, Duration::from_secs(60)).await.unwrap();
    let record = producer.record(ids[1]).await.unwrap().unwrap();
    assert_eq!(record.delay_reason, Some(DelayReason::Limited));
    let record = producer.record(held).await.unwrap().unwrap();
    assert_eq!(record.delay_reason, Some(DelayReason::Paused));
    assert_eq!(producer.resume(&sleep).await.unwrap(), (4, 1));
    let outcome = producer.wait(held, Duration::from_secs(60)).await.unwrap();
    assert_eq!(outcome.status, Status::Succeeded);
}

/// A producer that writes entries with `XADD` itself delays a task by hand,
/// in one `MULTI`, as docs/wire-format.md's "Flow control" says.
#[tokio::test]
async fn a_task_delayed_by_hand_in_one_multi_runs_at_its_time() {
    let redis = RedisServer::start();
    let _worker = WorkerProcess::start(&redis, &[]).await;
    let mut conn = redis.conn().await;
    let id = TaskId::new();
    let now: u64 = {
        let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await.unwrap();
        secs * 1000 + micros / 1000
    };
    let due = now + 400;
    let record = format!("tandem:{{cpu}}:task:{id}");
    let _: () = redis::pipe()
        .atomic()
        .hset_multiple(
            format!("tandem:{{cpu}}:retry:{id}"),
            &[
                ("version", "2"),
                ("id", &id.to_string()),
                // No `params`: absent reads as nil.
                ("kind", "noop"),
            ],
        )
        .zadd(DELAYED, id.to_string(), due)
        .hset_multiple(
            &record,
            &[
                ("status", "delayed"),
                ("kind", "noop"),
                ("class", "cpu"),
                ("priority", "normal"),
                ("delay_reason", "scheduled"),
                ("retry_at_ms", &due.to_string()),
                ("retry_stream", STREAM),
            ],
        )
        .publish("tandem:promote", "tandem:{cpu}:")
        .query_async(&mut conn)
        .await
        .unwrap();
    let producer = redis.producer().await;
    let outcome = producer.wait(id, Duration::from_secs(30)).await.unwrap();
    assert_eq!(outcome.status, Status::Succeeded);
    let record = producer.record(id).await.unwrap().unwrap();
    assert!(record.started_at_ms.unwrap() >= due);
    assert_eq!(record.attempt, Some(1));
}
