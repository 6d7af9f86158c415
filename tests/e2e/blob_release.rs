//! Parameter blobs of tasks that end before a worker runs them are given
//! back (issue 14, point 3: "reference counts so that nothing leaks"): a
//! task cancelled while queued or held, a workflow node that fail fast
//! cancelled, a task that expired before it started. The cancelling script
//! pushes the reference once onto its class's `blobs:release` list and a
//! worker releases it; a task a worker claimed gives it back at its commit.
//! Never twice: a blob two tasks share keeps the other's reference, and a
//! cancel racing a running task releases once.

use std::time::Duration;

use redis::AsyncCommands;
use serde_json::json;
use tandem_producer::{CancelOutcome, OnFailure, Producer, Task, Workflow};
use tandem_shared::blob::BlobRef;
use tandem_shared::config::Config;
use tandem_shared::flow::PauseTarget;
use tandem_shared::kind::builtin::{Sleep, SleepParams};
use tandem_shared::{Status, msgpack};

use crate::support::{RedisServer, WorkerProcess, wait_until};

const WAIT: Duration = Duration::from_secs(120);
const THRESHOLD: usize = 4096;
const RELEASES: &str = "tandem:{cpu}:blobs:release";

/// Parameters above the threshold: `{ms, pad}` (a `sleep` reads `ms`,
/// an `echo` returns it all), 8 KiB of padding that `seed` varies.
fn params(seed: u8, ms: u64) -> serde_json::Value {
    let pad: String = (0..8192)
        .map(|k| char::from(b'a' + ((k * 7 + usize::from(seed)) % 26) as u8))
        .collect();
    json!({"ms": ms, "pad": pad})
}

fn blob_of(value: &serde_json::Value) -> BlobRef {
    BlobRef::of(&msgpack::encode(value).unwrap())
}

async fn producer(redis: &RedisServer) -> Producer {
    let config = Config {
        blob_threshold_bytes: THRESHOLD,
        ..redis.config()
    };
    Producer::connect(&config).await.unwrap()
}

async fn worker(redis: &RedisServer) -> WorkerProcess {
    WorkerProcess::start(
        redis,
        &[
            ("TANDEM_BLOB_THRESHOLD_BYTES", "4096"),
            ("TANDEM_CONCURRENCY", "4"),
        ],
    )
    .await
}

/// The blob's reference count (`None`: no `refs` key) and whether its
/// bytes are there (`meta` and `data`).
async fn refs(redis: &RedisServer, blob: &BlobRef) -> (Option<i64>, bool) {
    let mut conn = redis.conn().await;
    let base = format!("tandem:{{blob:{}}}:", blob.sha256);
    let count: Option<i64> = conn.get(format!("{base}refs")).await.unwrap();
    let present: u64 = conn
        .exists(&[format!("{base}meta"), format!("{base}data")])
        .await
        .unwrap();
    (count, present == 2)
}

async fn wait_for_refs(redis: &RedisServer, blob: &BlobRef, want: i64, what: &str) {
    wait_until(WAIT, what, || async {
        refs(redis, blob).await == (Some(want), true)
    })
    .await;
}

async fn wait_gone(redis: &RedisServer, blob: &BlobRef, what: &str) {
    wait_until(WAIT, what, || async {
        let mut conn = redis.conn().await;
        let keys: Vec<String> = conn
            .keys(format!("tandem:{{blob:{}}}:*", blob.sha256))
            .await
            .unwrap();
        keys.is_empty()
    })
    .await;
}

async fn given_back(redis: &RedisServer) -> u64 {
    redis.conn().await.llen(RELEASES).await.unwrap()
}

#[tokio::test]
async fn a_task_cancelled_while_queued_gives_its_parameter_blob_back() {
    let redis = RedisServer::start();
    let producer = producer(&redis).await;
    let value = params(1, 0);
    let blob = blob_of(&value);
    // No worker yet: the task stays queued.
    let id = producer
        .submit(Task::new("echo", &value).unwrap())
        .await
        .unwrap();
    assert_eq!(refs(&redis, &blob).await, (Some(1), true));
    assert_eq!(producer.cancel(id).await.unwrap(), CancelOutcome::Cancelled);
    // The cancel gave the reference back, once, for a worker to release.
    assert_eq!(given_back(&redis).await, 1);
    assert_eq!(refs(&redis, &blob).await, (Some(1), true));
    let record = producer.record(id).await.unwrap().unwrap();
    assert_eq!(record.status, Some(Status::Cancelled));

    let _worker = worker(&redis).await;
    wait_gone(&redis, &blob, "the cancelled task's blob released").await;
    assert_eq!(given_back(&redis).await, 0);
}

/// Two tasks with the same parameters hold two references to one blob;
/// the one cancelled while its kind was paused gives back one, and the
/// other still runs and reads the bytes.
#[tokio::test]
async fn a_shared_blob_keeps_the_other_tasks_reference_and_it_still_runs() {
    let redis = RedisServer::start();
    let producer = producer(&redis).await;
    let _worker = worker(&redis).await;
    let echo = PauseTarget::Kind("echo".into());
    producer.pause(&echo).await.unwrap();
    let value = params(2, 0);
    let blob = blob_of(&value);
    let cancelled = producer
        .submit(Task::new("echo", &value).unwrap())
        .await
        .unwrap();
    let kept = producer
        .submit(Task::new("echo", &value).unwrap())
        .await
        .unwrap();
    assert_eq!(refs(&redis, &blob).await, (Some(2), true));
    // The worker's next claim parks it (the pause holds it as `delayed`).
    wait_until(
        WAIT,
        "the cancelled-to-be task held by the pause",
        || async {
            let record = producer.record(cancelled).await.unwrap().unwrap();
            record.status == Some(Status::Delayed)
        },
    )
    .await;

    assert_eq!(
        producer.cancel(cancelled).await.unwrap(),
        CancelOutcome::Cancelled
    );
    // A worker pops the given-back reference, then releases it (two
    // calls): wait for the count, not for the list.
    wait_for_refs(
        &redis,
        &blob,
        1,
        "one reference given back, the other task's kept",
    )
    .await;
    assert_eq!(given_back(&redis).await, 0);

    producer.resume(&echo).await.unwrap();
    let outcome = producer.wait(kept, WAIT).await.unwrap();
    assert_eq!(outcome.status, Status::Succeeded);
    assert_eq!(
        outcome.result_bytes(),
        Some(&msgpack::encode(&value).unwrap()[..])
    );
    // Its parameter reference is given back at its commit; its result is
    // the same bytes, one reference held by its record.
    wait_for_refs(&redis, &blob, 1, "only the result's reference left").await;
    assert_eq!(given_back(&redis).await, 0);
}

/// A cancel of a task a worker holds (here prefetched, waiting for the
/// one slot a long sleep takes) is a request: the worker's commit records
/// `cancelled` and gives the reference back (the parameters were never
/// fetched), and the cancel pushes nothing. A held twin with the same
/// parameters shows the count: two references before, exactly one after.
#[tokio::test]
async fn a_cancel_racing_a_task_its_worker_holds_releases_its_blob_once() {
    let redis = RedisServer::start();
    let producer = producer(&redis).await;
    let worker = WorkerProcess::start(
        &redis,
        &[
            ("TANDEM_BLOB_THRESHOLD_BYTES", "4096"),
            ("TANDEM_CONCURRENCY", "1"),
            ("TANDEM_PREFETCH", "1"),
        ],
    )
    .await;
    let noop = PauseTarget::Kind("noop".into());
    producer.pause(&noop).await.unwrap();
    let value = params(3, 0);
    let blob = blob_of(&value);
    let twin = producer
        .submit(Task::new("noop", &value).unwrap())
        .await
        .unwrap();
    let long = producer
        .submit(Task::of::<Sleep>(&SleepParams { ms: 600_000 }).unwrap())
        .await
        .unwrap();
    wait_until(WAIT, "the sleep is running", || async {
        producer.status(long).await.unwrap() == Status::Running
    })
    .await;
    let held = producer
        .submit(Task::new("echo", &value).unwrap())
        .await
        .unwrap();
    let id = held.to_string();
    wait_until(WAIT, "the echo is prefetched", || async {
        worker
            .log_text()
            .lines()
            .any(|line| line.contains("prefetched: starts when a slot frees") && line.contains(&id))
    })
    .await;
    assert_eq!(refs(&redis, &blob).await, (Some(2), true));

    assert_eq!(
        producer.cancel(held).await.unwrap(),
        CancelOutcome::Requested
    );
    // A second cancel racing the commit changes nothing either.
    let again = producer.cancel(held).await.unwrap();
    assert!(
        matches!(
            again,
            CancelOutcome::Requested | CancelOutcome::AlreadyFinished(Status::Cancelled)
        ),
        "{again:?}"
    );
    let outcome = producer.wait(held, WAIT).await.unwrap();
    assert_eq!(outcome.status, Status::Cancelled);
    wait_for_refs(&redis, &blob, 1, "the held task's reference released").await;
    assert_eq!(given_back(&redis).await, 0, "the cancel pushed nothing");

    // Exactly one went: the twin still reads its parameters, and its
    // commit gives back the last reference.
    producer.cancel(long).await.unwrap();
    producer.resume(&noop).await.unwrap();
    let outcome = producer.wait(twin, WAIT).await.unwrap();
    assert_eq!(outcome.status, Status::Succeeded, "{:?}", outcome.failure());
    wait_gone(&redis, &blob, "the twin's reference released").await;
}

#[tokio::test]
async fn a_fail_fast_workflows_unrun_node_gives_its_parameter_blob_back() {
    let redis = RedisServer::start();
    let producer = producer(&redis).await;
    let _worker = worker(&redis).await;
    let value = params(4, 0);
    let blob = blob_of(&value);
    let failing = Task::new("fail", &json!({"code": "BOOM"}))
        .unwrap()
        .max_attempts(1);
    let workflow = Workflow::new()
        .on_failure(OnFailure::FailFast)
        .node("bad", failing)
        .node_after("after_bad", Task::new("echo", &value).unwrap(), &["bad"]);
    let handle = producer.submit_workflow(workflow).await.unwrap();
    let outcome = handle.wait(WAIT).await.unwrap();
    assert_eq!(outcome.status, "failed");
    assert_eq!(outcome.nodes["after_bad"].status, Status::Cancelled);
    assert_eq!(outcome.nodes["after_bad"].record.started_at_ms, None);
    wait_gone(&redis, &blob, "the unrun node's blob released").await;
    assert_eq!(given_back(&redis).await, 0);
}

#[tokio::test]
async fn a_task_that_expired_before_it_started_gives_its_parameter_blob_back() {
    let redis = RedisServer::start();
    let producer = producer(&redis).await;
    let value = params(5, 0);
    let blob = blob_of(&value);
    let id = producer
        .submit(
            Task::new("echo", &value)
                .unwrap()
                .deadline(Duration::from_millis(100)),
        )
        .await
        .unwrap();
    let deadline = producer
        .record(id)
        .await
        .unwrap()
        .unwrap()
        .deadline_ms
        .unwrap();
    // The worker starts once the deadline passed on the Redis clock.
    wait_until(WAIT, "the deadline passed", || async {
        let mut conn = redis.conn().await;
        let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await.unwrap();
        secs * 1000 + micros / 1000 > deadline
    })
    .await;
    assert_eq!(refs(&redis, &blob).await, (Some(1), true));
    let _worker = worker(&redis).await;
    let outcome = producer.wait(id, WAIT).await.unwrap();
    assert_eq!(outcome.status, Status::Expired);
    assert_eq!(outcome.record.started_at_ms, None);
    wait_gone(&redis, &blob, "the expired task's blob released").await;
}

/// A dead letter keeps its task's reference for `tandem dlq requeue`: the
/// requeued task reads its parameters again, and a blob another task
/// shares is given back once per task, never twice.
#[tokio::test]
async fn a_dead_letter_keeps_its_reference_for_its_requeue() {
    let redis = RedisServer::start();
    let producer = producer(&redis).await;
    let _worker = worker(&redis).await;
    let noop = PauseTarget::Kind("noop".into());
    producer.pause(&noop).await.unwrap();
    let message: String = (0..8192)
        .map(|k| char::from(b'a' + (k % 26) as u8))
        .collect();
    let value = json!({"code": "BOOM", "message": message});
    let blob = blob_of(&value);
    let twin = producer
        .submit(Task::new("noop", &value).unwrap())
        .await
        .unwrap();
    let failing = producer
        .submit(Task::new("fail", &value).unwrap())
        .await
        .unwrap();
    let first = producer.wait(failing, WAIT).await.unwrap();
    assert_eq!(first.status, Status::Failed);
    let letter = first.record.dead_letter.clone().expect("a dead letter");
    assert_eq!(
        refs(&redis, &blob).await,
        (Some(2), true),
        "the dead letter's and the twin's"
    );

    let out = crate::support::tandem(&redis, &["dlq", "requeue", &letter]);
    assert!(
        out.status.success(),
        "{}",
        crate::support::text(&out.stderr)
    );
    wait_until(WAIT, "the requeued task's new dead letter", || async {
        let record = producer.record(failing).await.unwrap();
        record.is_some_and(|r| r.dead_letter.is_some_and(|d| d != letter))
    })
    .await;
    let second = producer.record(failing).await.unwrap().unwrap();
    assert_eq!(
        second.error.as_ref().map(|e| e.code.as_str()),
        Some("BOOM"),
        "it read its parameters again: {second:?}"
    );
    assert_eq!(refs(&redis, &blob).await, (Some(2), true));

    producer.resume(&noop).await.unwrap();
    let outcome = producer.wait(twin, WAIT).await.unwrap();
    assert_eq!(outcome.status, Status::Succeeded, "{:?}", outcome.failure());
    wait_for_refs(
        &redis,
        &blob,
        1,
        "the twin's reference released, the dead letter's kept",
    )
    .await;
}

/// Purging a dead letter is the last use of its task's reference: `tandem
/// dlq purge ID` and `purge --all` give it back (revision 2.18), so the blob
/// goes once nothing else holds it, not when its TTL runs out.
#[tokio::test]
async fn a_purged_dead_letter_gives_its_reference_back() {
    let redis = RedisServer::start();
    let producer = producer(&redis).await;
    let _worker = worker(&redis).await;
    let failing = |seed: u8| {
        let message: String = (0..8192)
            .map(|k| char::from(b'a' + ((k + usize::from(seed)) % 26) as u8))
            .collect();
        json!({"code": "BOOM", "message": message})
    };
    let (one, two, three) = (failing(1), failing(2), failing(3));
    let mut letters = Vec::new();
    for value in [&one, &two, &three] {
        let id = producer
            .submit(Task::new("fail", value).unwrap().max_attempts(1))
            .await
            .unwrap();
        let outcome = producer.wait(id, WAIT).await.unwrap();
        assert_eq!(outcome.status, Status::Failed);
        letters.push(outcome.record.dead_letter.clone().expect("a dead letter"));
        assert_eq!(
            refs(&redis, &blob_of(value)).await,
            (Some(1), true),
            "the dead letter holds the reference"
        );
    }

    // `tandem dlq purge ARGS` succeeds and says how many it purged.
    let purge = |args: &[&str], said: &str| {
        let out = crate::support::tandem(&redis, &[&["dlq", "purge"], args].concat());
        let stdout = crate::support::text(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            crate::support::text(&out.stderr)
        );
        assert!(stdout.contains(said), "{stdout}");
    };
    purge(&[&letters[0]], "purged 1 dead letters");
    wait_gone(&redis, &blob_of(&one), "the purged letter's blob released").await;
    assert_eq!(
        refs(&redis, &blob_of(&two)).await,
        (Some(1), true),
        "the other letters keep theirs"
    );

    purge(&["--all"], "purged 2 dead letters");
    wait_gone(
        &redis,
        &blob_of(&two),
        "a letter purged with --all released",
    )
    .await;
    wait_gone(
        &redis,
        &blob_of(&three),
        "a letter purged with --all released",
    )
    .await;
    let left: u64 = redis.conn().await.xlen("tandem:{cpu}:dead").await.unwrap();
    assert_eq!(left, 0);
}
