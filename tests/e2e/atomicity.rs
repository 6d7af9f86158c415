//! A script that meets a key of another type writes nothing: Redis does not
//! roll a script back, so each checks its keys' types before its first
//! write. A producer's reply stream of another type only loses the notice.

use std::time::Duration;

use redis::AsyncCommands;
use tandem_producer::Task;
use tandem_shared::kind::builtin::{Fail, FailParams, Noop, Sleep, SleepParams};
use tandem_shared::store::Store;
use tandem_shared::{Class, Status, TaskId};

use crate::support::{RedisServer, WorkerProcess, wait_until};

const WAIT: Duration = Duration::from_secs(60);

fn record_key(id: &TaskId) -> String {
    format!("tandem:{{cpu}}:task:{id}")
}

#[tokio::test]
async fn a_reply_stream_of_another_type_loses_only_the_notice() {
    let redis = RedisServer::start();
    let worker = WorkerProcess::start(&redis, &[]).await;
    let producer = redis.producer().await;
    let mut conn = redis.conn().await;
    // Someone overwrote this producer's reply stream with a string.
    let reply_key = producer.store().keys().reply(Class::Cpu, producer.id());
    let () = conn.set(&reply_key, "not a stream").await.unwrap();

    let id = producer
        .submit(Task::of::<Sleep>(&SleepParams { ms: 1 }).unwrap())
        .await
        .unwrap();
    wait_until(WAIT, "the task committed", || {
        let producer = producer.clone();
        async move { producer.status(id).await.unwrap() == Status::Succeeded }
    })
    .await;
    let why: Option<String> = conn.hget(record_key(&id), "notice_error").await.unwrap();
    let why = why.unwrap_or_default();
    assert!(
        why.contains(&reply_key) && why.contains("holds a string"),
        "the record says why no notice came: {why:?}"
    );
    // Committed whole: acknowledged and deleted, the reply key untouched.
    let stream = "tandem:{cpu}:stream:normal";
    let pending: redis::streams::StreamPendingReply =
        conn.xpending(stream, "workers").await.unwrap();
    assert_eq!(pending.count(), 0);
    let left: u64 = conn.xlen(stream).await.unwrap();
    assert_eq!(left, 0);
    let kept: String = conn.get(&reply_key).await.unwrap();
    assert_eq!(kept, "not a stream");
    // The wait still ends, from the record.
    let outcome = producer.wait(id, WAIT).await.unwrap();
    assert_eq!(outcome.status, Status::Succeeded);
    assert!(
        !worker.log_text().contains("cannot commit the task"),
        "{}",
        worker.log_text()
    );
}

#[tokio::test]
async fn a_commit_that_meets_a_wrong_key_writes_nothing_and_completes_once_it_is_fixed() {
    let redis = RedisServer::start();
    let worker = WorkerProcess::start(&redis, &[("TANDEM_LEASE_TIMEOUT_MS", "1000")]).await;
    let producer = redis.producer().await;
    let mut conn = redis.conn().await;
    // The class's dead-letter stream is a string: a task that fails for
    // good cannot be dead-lettered.
    let dead = "tandem:{cpu}:dead";
    let () = conn.set(dead, "not a stream").await.unwrap();
    let params = FailParams {
        code: "BOOM".into(),
        message: "fails on purpose".into(),
        retry: false,
    };
    let id = producer
        .submit(Task::of::<Fail>(&params).unwrap())
        .await
        .unwrap();
    wait_until(WAIT, "the worker tried to commit", || async {
        worker.log_text().contains("cannot commit the task")
    })
    .await;
    let log = worker.log_text();
    assert!(
        log.contains(&format!("{dead} holds a string, not a stream")),
        "the error names the key: {log}"
    );
    // Nothing of the commit was written: no history, no outcome, the entry
    // still pending (as the log says).
    let status: Option<String> = conn.hget(record_key(&id), "status").await.unwrap();
    assert_eq!(status.as_deref(), Some("running"));
    let fields: Vec<String> = conn.hkeys(record_key(&id)).await.unwrap();
    for field in ["history", "finished_at_ms", "error_code", "dead_letter"] {
        assert!(
            !fields.iter().any(|f| f == field),
            "{field} written: {fields:?}"
        );
    }
    let pending: redis::streams::StreamPendingReply = conn
        .xpending("tandem:{cpu}:stream:normal", "workers")
        .await
        .unwrap();
    assert_eq!(pending.count(), 1);

    // Once the key is fixed, the task is taken over and ends as it should.
    let () = conn.del(dead).await.unwrap();
    let outcome = producer.wait(id, WAIT).await.unwrap();
    assert_eq!(outcome.status, Status::Failed);
    assert!(outcome.record.dead_letter.is_some(), "{:?}", outcome.record);
}

#[tokio::test]
async fn scripts_called_through_the_store_refuse_wrong_keys_before_writing() {
    let redis = RedisServer::start();
    let producer = redis.producer().await;
    let store = Store::connect(&redis.config()).await.unwrap();
    let mut conn = redis.conn().await;

    // submit: a stream of another type; no record is left behind (before,
    // the record was created and the entry was not: a task queued forever).
    let stream = "tandem:{cpu}:stream:high";
    let () = conn.set(stream, "x").await.unwrap();
    let id = TaskId::new();
    let err = producer
        .submit(
            Task::of::<Noop>(&rmpv::Value::Nil)
                .unwrap()
                .priority(tandem_shared::Priority::High)
                .with_id(id),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("WRONGTYPE"), "{err}");
    assert!(err.to_string().contains(stream), "{err}");
    let exists: bool = conn.exists(record_key(&id)).await.unwrap();
    assert!(!exists, "submit left a record behind");
    let () = conn.del(stream).await.unwrap();

    // cancel: a task waiting for its retry, with a delayed set of another
    // type; the record stays as it was.
    let waiting = TaskId::new();
    let () = conn
        .hset_multiple(
            record_key(&waiting),
            &[("status", "retrying"), ("priority", "normal")],
        )
        .await
        .unwrap();
    let () = conn.set("tandem:{cpu}:delayed", "x").await.unwrap();
    let err = store.cancel(&waiting).await.unwrap_err();
    assert!(err.to_string().contains("tandem:{cpu}:delayed"), "{err}");
    let status: String = conn.hget(record_key(&waiting), "status").await.unwrap();
    assert_eq!(status, "retrying", "cancel wrote part of its work");
    let () = conn.del("tandem:{cpu}:delayed").await.unwrap();

    // requeue: a dead letter whose task record is of another type; no new
    // entry, and the dead letter is kept.
    let buried = TaskId::new();
    let dead_id: String = redis::cmd("XADD")
        .arg("tandem:{cpu}:dead")
        .arg("*")
        .arg(&[
            ("id", buried.to_string().as_str()),
            ("kind", "noop"),
            ("reason", "BOOM"),
            ("stream", "tandem:{cpu}:stream:normal"),
        ])
        .query_async(&mut conn)
        .await
        .unwrap();
    let () = conn.set(record_key(&buried), "x").await.unwrap();
    let err = store.requeue_dead(Class::Cpu, &dead_id).await.unwrap_err();
    assert!(err.to_string().contains(&record_key(&buried)), "{err}");
    let queued: u64 = conn.xlen("tandem:{cpu}:stream:normal").await.unwrap();
    assert_eq!(queued, 0, "requeue added an entry");
    let letters: u64 = conn.xlen("tandem:{cpu}:dead").await.unwrap();
    assert_eq!(letters, 1, "requeue dropped the dead letter");
}

/// Regression: a task record key of another type failed the claim script
/// half-way (the entries before it started, then an error), and every
/// later claim of that stream failed the same way.
#[tokio::test]
async fn an_entry_whose_record_is_not_a_hash_is_dead_lettered_and_the_stream_goes_on() {
    let redis = RedisServer::start();
    let producer = redis.producer().await;
    let mut conn = redis.conn().await;
    let noop = || Task::of::<tandem_shared::kind::builtin::Noop>(&rmpv::Value::Nil).unwrap();
    let before = producer.submit(noop()).await.unwrap();
    let bad = TaskId::new();
    let () = conn.set(record_key(&bad), "not a record").await.unwrap();
    let mut xadd = redis::cmd("XADD");
    xadd.arg("tandem:{cpu}:stream:normal").arg("*");
    for (field, value) in [
        ("version", b"2".to_vec()),
        ("id", bad.to_string().into_bytes()),
        ("kind", b"noop".to_vec()),
        ("params", vec![0xc0]),
    ] {
        xadd.arg(field).arg(value);
    }
    let _: String = xadd.query_async(&mut conn).await.unwrap();
    let after = producer.submit(noop()).await.unwrap();

    let _worker = WorkerProcess::start(&redis, &[("TANDEM_CONCURRENCY", "4")]).await;
    for id in [before, after] {
        assert!(producer.wait(id, WAIT).await.unwrap().succeeded());
    }
    let dead: redis::streams::StreamRangeReply =
        conn.xrange_all("tandem:{cpu}:dead").await.unwrap();
    assert_eq!(dead.ids.len(), 1);
    let letter = &dead.ids[0];
    let text = |field: &str| -> String {
        letter
            .get::<String>(field)
            .unwrap_or_else(|| panic!("{field} in {letter:?}"))
    };
    assert_eq!(text("reason"), "BAD_PAYLOAD");
    assert!(
        text("error_message").contains("holds a string, not a hash"),
        "{}",
        text("error_message")
    );
    let left: u64 = conn.xlen("tandem:{cpu}:stream:normal").await.unwrap();
    assert_eq!(left, 0);
    // The key that was not a record is left as it was.
    let kept: String = conn.get(record_key(&bad)).await.unwrap();
    assert_eq!(kept, "not a record");
}

/// A claim that meets a stream of another type fails before its first write
/// (the stream's XLEN checks it when no retry is promoted), naming the key;
/// once the key is fixed the worker claims as before. The stream is above
/// the task's (`high` before `normal`), so every claim meets it before it
/// reads an entry.
#[tokio::test]
async fn a_claim_that_meets_a_stream_of_another_type_writes_nothing() {
    let redis = RedisServer::start();
    let producer = redis.producer().await;
    let mut conn = redis.conn().await;
    let worker = WorkerProcess::start(&redis, &[]).await;
    let wrong = "tandem:{cpu}:stream:high";
    let () = conn.del(wrong).await.unwrap();
    let () = conn.set(wrong, "not a stream").await.unwrap();
    let id = producer
        .submit(Task::of::<Noop>(&rmpv::Value::Nil).unwrap())
        .await
        .unwrap();
    wait_until(WAIT, "a claim refused", || async {
        worker
            .log_text()
            .contains(&format!("{wrong} holds a string, not a stream"))
    })
    .await;
    let status: Option<String> = conn.hget(record_key(&id), "status").await.unwrap();
    assert_eq!(status.as_deref(), Some("queued"), "the claim wrote nothing");
    let () = conn.del(wrong).await.unwrap();
    assert!(producer.wait(id, WAIT).await.unwrap().succeeded());
}

/// A stream of another type below the stream with work does not stop it
/// (revision 2.15): a claim reads the streams' lengths in priority order
/// only as far as it needs, so a one-slot claim whose task waits above the
/// key never meets it. The claims that do reach it (the aging pass's, once
/// a second, which reads every length first, and those that find the
/// queue empty) fail before their first write and name it, as above.
#[tokio::test]
async fn a_stream_of_another_type_below_the_work_does_not_hold_it_up() {
    let redis = RedisServer::start();
    let producer = redis.producer().await;
    let mut conn = redis.conn().await;
    let worker = WorkerProcess::start(&redis, &[("TANDEM_CONCURRENCY", "1")]).await;
    let wrong = "tandem:{cpu}:stream:low";
    let () = conn.del(wrong).await.unwrap();
    let () = conn.set(wrong, "not a stream").await.unwrap();
    for _ in 0..3 {
        let id = producer
            .submit(Task::of::<Noop>(&rmpv::Value::Nil).unwrap())
            .await
            .unwrap();
        assert!(producer.wait(id, WAIT).await.unwrap().succeeded());
    }
    wait_until(WAIT, "a claim refused", || async {
        worker
            .log_text()
            .contains(&format!("{wrong} holds a string, not a stream"))
    })
    .await;
    let kept: String = conn.get(wrong).await.unwrap();
    assert_eq!(kept, "not a stream");
}

/// A commit batch (one `complete.lua` call for several tasks) keeps each
/// task's fence and outcome: a task whose lease another worker took over
/// changes nothing and says so, a task whose dead-letter stream is of
/// another type fails alone with WRONGTYPE, and the others commit.
#[tokio::test]
async fn a_commit_batch_keeps_each_tasks_fence_and_outcome() {
    let redis = RedisServer::start();
    // Connecting loads the scripts.
    let _producer = redis.producer().await;
    let mut conn = redis.conn().await;
    let base = "tandem:{cpu}:";
    let stream = format!("{base}stream:normal");
    let () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg("workers")
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut conn)
        .await
        .unwrap();
    let bad_dead = format!("{base}dead-of-another-type");
    let () = conn.set(&bad_dead, "not a stream").await.unwrap();
    // Four running tasks held by w1; the second was taken over by w2.
    let ids: Vec<TaskId> = (0..4).map(|_| TaskId::new()).collect();
    let mut entries = Vec::new();
    for id in &ids {
        let entry: String = conn
            .xadd(&stream, "*", &[("id", id.to_string())])
            .await
            .unwrap();
        entries.push(entry);
    }
    let _: redis::streams::StreamReadReply = conn
        .xread_options(
            &[&stream],
            &[">"],
            &redis::streams::StreamReadOptions::default().group("workers", "w1"),
        )
        .await
        .unwrap();
    for (i, (id, entry)) in ids.iter().zip(&entries).enumerate() {
        let holder = if i == 1 { "w2" } else { "w1" };
        let owner = format!("{holder} {entry}");
        let () = conn
            .hset_multiple(
                record_key(id),
                &[
                    ("status", "running"),
                    ("priority", "normal"),
                    ("attempt", "1"),
                    ("owner", owner.as_str()),
                    ("started_at_ms", "1"),
                ],
            )
            .await
            .unwrap();
    }
    // Tasks 0, 1 and 3 succeed; task 2 dies into a key of another type.
    let mut call = tandem_shared::scripts::COMPLETE.invocation(true);
    for (i, id) in ids.iter().enumerate() {
        let dead = if i == 2 {
            bad_dead.clone()
        } else {
            format!("{base}dead")
        };
        call = call
            .key(record_key(id))
            .key(&stream)
            .key(format!("{base}delayed"))
            .key(dead);
    }
    call = call.arg(ids.len());
    for (i, (id, entry)) in ids.iter().zip(&entries).enumerate() {
        let (status, disposition, pairs) = if i == 2 {
            (
                "failed",
                "dead",
                ["error_code", "BOOM", "error_message", "no"],
            )
        } else {
            ("succeeded", "final", ["worker", "w1", "result", "ok"])
        };
        call = call
            .arg(4)
            .arg(13 + pairs.len())
            .arg("workers")
            .arg(entry)
            .arg("w1")
            .arg(60)
            .arg(100)
            .arg(60)
            .arg(1_000)
            .arg(id.to_string())
            .arg(status)
            .arg(disposition)
            .arg(0)
            .arg(100)
            .arg(1);
        for value in pairs {
            call = call.arg(value);
        }
    }
    // As the worker sends it (a pipeline that keeps errors as values): one
    // task's error is an element of the array.
    let mut pipe = redis::pipe();
    pipe.add_command(call.into_cmd()).ignore_errors();
    let mut replies: Vec<redis::Value> = pipe.query_async(&mut conn).await.unwrap();
    let reply = replies.pop().unwrap();
    let redis::Value::Array(replies) = reply else {
        panic!("a commit batch answers with an array: {reply:?}");
    };
    assert_eq!(replies.len(), 4, "one reply per task: {replies:?}");
    assert_eq!(replies[0], redis::Value::Int(1));
    assert_eq!(replies[1], redis::Value::Int(-1), "w2 holds task 1 now");
    assert!(
        matches!(&replies[2], redis::Value::ServerError(err) if err.code() == "WRONGTYPE"),
        "task 2's dead-letter stream is a string: {:?}",
        replies[2]
    );
    assert_eq!(replies[3], redis::Value::Int(1));

    for (i, id) in ids.iter().enumerate() {
        let status: String = conn.hget(record_key(id), "status").await.unwrap();
        let want = if i == 0 || i == 3 {
            "succeeded"
        } else {
            "running"
        };
        assert_eq!(status, want, "task {i}");
    }
    let result: String = conn.hget(record_key(&ids[3]), "result").await.unwrap();
    assert_eq!(result, "ok");
    // Only the committed tasks' entries are gone; the fenced one and the
    // one that failed stay pending for whoever holds them.
    let left: redis::streams::StreamRangeReply = conn.xrange_all(&stream).await.unwrap();
    let left: Vec<&str> = left.ids.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(left, [entries[1].as_str(), entries[2].as_str()]);
    let pending: redis::streams::StreamPendingReply =
        conn.xpending(&stream, "workers").await.unwrap();
    assert_eq!(pending.count(), 2);
}
