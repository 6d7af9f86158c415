//! The wire format as `redis-cli` and a Python service see it: plain-text
//! names and values, MessagePack only for parameters and results; raw
//! submissions; bad entries refused with a reason while the worker goes on.

use std::collections::HashMap;
use std::time::Duration;

use redis::AsyncCommands;
use tandem_producer::Task;
use tandem_shared::kind::builtin::{Echo, Noop, SleepParams};
use tandem_shared::{Status, TaskId, msgpack};

use crate::support::{RedisServer, WorkerProcess, wait_until};

type Hash = HashMap<String, Vec<u8>>;

fn text(hash: &Hash, field: &str) -> String {
    let raw = hash
        .get(field)
        .unwrap_or_else(|| panic!("field {field} missing from {:?}", hash.keys()));
    String::from_utf8(raw.clone()).unwrap_or_else(|_| panic!("field {field} is not plain text"))
}

fn assert_plain_text_except(hash: &Hash, blobs: &[&str]) {
    for (name, value) in hash {
        assert!(
            name.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
            "field name {name:?}"
        );
        if !blobs.contains(&name.as_str()) {
            let value = std::str::from_utf8(value).unwrap_or_else(|_| panic!("{name} is not text"));
            assert!(
                !value.is_empty() && value.chars().all(|c| !c.is_control()),
                "{name} = {value:?}"
            );
        }
    }
}

#[tokio::test]
async fn entries_and_records_read_plainly_in_redis_cli() {
    let redis = RedisServer::start();
    let producer = redis.producer().await;
    let id = producer
        .submit(
            Task::of::<Echo>(&"hello".into())
                .unwrap()
                .deadline(Duration::from_secs(600)),
        )
        .await
        .unwrap();
    let mut conn = redis.conn().await;

    // XRANGE tandem:{cpu}:stream:normal - +
    let entries: redis::streams::StreamRangeReply =
        conn.xrange_all("tandem:{cpu}:stream:normal").await.unwrap();
    assert_eq!(entries.ids.len(), 1);
    let entry: Hash = entries.ids[0]
        .map
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                redis::from_redis_value_ref::<Vec<u8>>(v).unwrap(),
            )
        })
        .collect();
    assert_plain_text_except(&entry, &["params"]);
    assert_eq!(text(&entry, "version"), "2");
    assert_eq!(text(&entry, "id"), id.to_string());
    assert_eq!(text(&entry, "kind"), "echo");
    assert_eq!(text(&entry, "class"), "cpu");
    assert_eq!(text(&entry, "priority"), "normal");
    assert_eq!(text(&entry, "attempt"), "1");
    assert_eq!(text(&entry, "max_attempts"), "3");
    assert_eq!(text(&entry, "memory_bytes"), "0");
    assert_eq!(text(&entry, "producer"), producer.id());
    assert_eq!(
        text(&entry, "reply_to"),
        format!("tandem:{{cpu}}:reply:{}", producer.id())
    );
    let submitted: u64 = text(&entry, "submitted_at_ms").parse().unwrap();
    let deadline: u64 = text(&entry, "deadline_ms").parse().unwrap();
    assert_eq!(deadline, submitted + 600_000);
    assert_eq!(
        msgpack::decode::<String>(&entry["params"]).unwrap(),
        "hello"
    );

    // HGETALL tandem:{cpu}:task:<id> while queued, then finished.
    let key = format!("tandem:{{cpu}}:task:{id}");
    let queued: Hash = conn.hgetall(&key).await.unwrap();
    assert_plain_text_except(&queued, &["params"]);
    assert_eq!(text(&queued, "status"), "queued");
    assert_eq!(text(&queued, "entry"), entries.ids[0].id);

    let worker = WorkerProcess::start(&redis, &[]).await;
    producer.wait(id, Duration::from_secs(20)).await.unwrap();
    let done: Hash = conn.hgetall(&key).await.unwrap();
    assert_plain_text_except(&done, &["params", "result"]);
    assert_eq!(text(&done, "status"), "succeeded");
    assert_eq!(text(&done, "worker"), worker.id);
    assert_eq!(text(&done, "device"), "cpu");
    assert_eq!(
        text(&done, "result_bytes"),
        done["result"].len().to_string()
    );
    for time in [
        "submitted_at_ms",
        "started_at_ms",
        "finished_at_ms",
        "run_us",
    ] {
        text(&done, time).parse::<u64>().unwrap();
    }
    assert_eq!(msgpack::decode::<String>(&done["result"]).unwrap(), "hello");
    let ttl: i64 = conn.ttl(&key).await.unwrap();
    assert!(
        ttl > 0 && ttl <= 86_400,
        "finished records expire: ttl {ttl}"
    );

    // The worker registry record.
    let registry: Hash = conn
        .hgetall(format!("tandem:worker:{}", worker.id))
        .await
        .unwrap();
    assert_plain_text_except(&registry, &[]);
    assert_eq!(text(&registry, "device"), "cpu");
    assert_eq!(text(&registry, "state"), "running");
    let members: Vec<String> = conn.smembers("tandem:workers").await.unwrap();
    assert_eq!(members, vec![worker.id.clone()]);
    let groups: redis::Value = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg("tandem:{cpu}:stream:normal")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        format!("{groups:?}").contains("workers"),
        "the consumer group is named workers"
    );
}

/// What a Python service does with redis-py and msgpack alone.
#[tokio::test]
async fn a_raw_submission_runs_and_notifies() {
    let redis = RedisServer::start();
    let _worker = WorkerProcess::start(&redis, &[]).await;
    let mut conn = redis.conn().await;
    let id = TaskId::new().to_string();
    let params = msgpack::encode(&vec![1, 2, 3]).unwrap();
    let reply = "tandem:{cpu}:reply:python-svc";
    let start: String = redis::cmd("XADD")
        .arg(reply)
        .arg("*")
        .arg("hello")
        .arg("1")
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg(format!("tandem:{{cpu}}:task:{id}"))
        .arg(&[
            "status", "queued", "kind", "echo", "class", "cpu", "priority", "high", "reply_to",
            reply,
        ])
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: String = redis::cmd("XADD")
        .arg("tandem:{cpu}:stream:high")
        .arg("*")
        .arg(&["version", "2", "id", &id, "kind", "echo", "reply_to", reply])
        .arg("params")
        .arg(params.as_slice())
        .query_async(&mut conn)
        .await
        .unwrap();

    // XREAD BLOCK 10000 STREAMS tandem:{cpu}:reply:python-svc <start>
    let read: redis::streams::StreamReadReply = redis::cmd("XREAD")
        .arg("BLOCK")
        .arg(10_000)
        .arg("STREAMS")
        .arg(reply)
        .arg(&start)
        .query_async(&mut conn)
        .await
        .unwrap();
    let notice = &read.keys[0].ids[0];
    assert_eq!(notice.get::<String>("id").unwrap(), id);
    assert_eq!(notice.get::<String>("status").unwrap(), "succeeded");
    let result: Vec<u8> = notice.get("result").unwrap();
    assert_eq!(msgpack::decode::<Vec<i32>>(&result).unwrap(), vec![1, 2, 3]);

    // A producer can wait on it too, by id alone.
    let producer = redis.producer().await;
    let outcome = producer
        .wait(id.parse().unwrap(), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(outcome.result::<Vec<i32>>().unwrap(), vec![1, 2, 3]);
}

/// Regression: a notice goes only to a reply stream of the task's own class
/// (its Redis Cluster slot); a `reply_to` naming another class's stream, or
/// the version 1 form `tandem:reply:<id>`, is never written to, neither by a
/// cancel nor by a commit. The task still finishes and can be waited for.
#[tokio::test]
async fn notices_go_only_to_a_reply_stream_of_the_tasks_class() {
    let redis = RedisServer::start();
    let mut conn = redis.conn().await;
    let producer = redis.producer().await;
    let own = "tandem:{cpu}:reply:svc";
    let foreign = ["tandem:{heavy}:reply:svc", "tandem:reply:svc"];
    let raw_conn = conn.clone();
    let raw = move |reply_to: &'static str| {
        let mut conn = raw_conn.clone();
        async move {
            let id = TaskId::new().to_string();
            let _: () = redis::cmd("HSET")
                .arg(format!("tandem:{{cpu}}:task:{id}"))
                .arg(&["status", "queued", "kind", "noop", "class", "cpu"])
                .arg(&["priority", "normal", "reply_to", reply_to])
                .query_async(&mut conn)
                .await
                .unwrap();
            let entry: String = redis::cmd("XADD")
                .arg("tandem:{cpu}:stream:normal")
                .arg("*")
                .arg(&[
                    "version", "2", "id", &id, "kind", "noop", "reply_to", reply_to,
                ])
                .query_async(&mut conn)
                .await
                .unwrap();
            let _: () = conn
                .hset(format!("tandem:{{cpu}}:task:{id}"), "entry", entry)
                .await
                .unwrap();
            id.parse::<TaskId>().unwrap()
        }
    };

    // Cancelled while queued (no worker yet): cancel.lua.
    for reply_to in [own, foreign[0], foreign[1]] {
        let id = raw(reply_to).await;
        assert_eq!(
            producer.cancel(id).await.unwrap(),
            tandem_shared::store::CancelOutcome::Cancelled
        );
    }
    let notices: redis::streams::StreamRangeReply = conn.xrange_all(own).await.unwrap();
    assert_eq!(notices.ids.len(), 1, "the own-class stream is notified");
    for key in foreign {
        assert!(!conn.exists::<_, bool>(key).await.unwrap(), "{key}");
    }

    // Committed by a worker: complete.lua.
    let _worker = WorkerProcess::start(&redis, &[]).await;
    for reply_to in foreign {
        let id = raw(reply_to).await;
        let outcome = producer.wait(id, Duration::from_secs(20)).await.unwrap();
        assert_eq!(outcome.status, Status::Succeeded);
    }
    let id = raw(own).await;
    let outcome = producer.wait(id, Duration::from_secs(20)).await.unwrap();
    assert_eq!(outcome.status, Status::Succeeded);
    let notices: redis::streams::StreamRangeReply = conn.xrange_all(own).await.unwrap();
    assert_eq!(notices.ids.len(), 2);
    for key in foreign {
        assert!(!conn.exists::<_, bool>(key).await.unwrap(), "{key}");
    }
}

async fn xadd(conn: &mut redis::aio::MultiplexedConnection, fields: &[(&str, &[u8])]) {
    let mut cmd = redis::cmd("XADD");
    cmd.arg("tandem:{cpu}:stream:normal").arg("*");
    for (k, v) in fields {
        cmd.arg(*k).arg(*v);
    }
    let _: String = cmd.query_async(conn).await.unwrap();
}

#[tokio::test]
async fn bad_entries_are_dead_lettered_with_a_precise_reason_and_the_worker_goes_on() {
    let redis = RedisServer::start();
    let worker = WorkerProcess::start(&redis, &[("TANDEM_MAX_PAYLOAD_BYTES", "100")]).await;
    let mut conn = redis.conn().await;
    let producer = redis.producer().await;

    type Fields = Vec<(&'static str, Vec<u8>)>;
    let v2 = || ("version", b"2".to_vec());
    let cases: Vec<(&str, Fields)> = vec![
        (
            "BAD_WIRE_VERSION",
            vec![("version", b"1".to_vec()), ("kind", b"noop".to_vec())],
        ),
        ("UNKNOWN_KIND", vec![v2(), ("kind", b"teleport".to_vec())]),
        (
            "BAD_PAYLOAD",
            vec![
                v2(),
                ("kind", b"sleep".to_vec()),
                ("params", vec![0xc1, 0xff]),
            ],
        ),
        (
            "BAD_PARAMS",
            vec![
                v2(),
                ("kind", b"sleep".to_vec()),
                ("params", msgpack::encode(&"x").unwrap()),
            ],
        ),
        (
            "BAD_PARAMS",
            vec![
                v2(),
                ("kind", b"sleep".to_vec()),
                (
                    "params",
                    msgpack::encode(&SleepParams { ms: u64::MAX }).unwrap(),
                ),
            ],
        ),
        (
            "PAYLOAD_TOO_LARGE",
            vec![
                v2(),
                ("kind", b"echo".to_vec()),
                ("params", msgpack::encode(&"x".repeat(200)).unwrap()),
            ],
        ),
        ("BAD_PAYLOAD", vec![("kind", b"noop".to_vec())]),
        ("BAD_PAYLOAD", vec![v2()]),
    ];
    let mut ids = Vec::new();
    for (code, fields) in &cases {
        let id = TaskId::new();
        let id_text = id.to_string();
        let mut all: Vec<(&str, &[u8])> = vec![("id", id_text.as_bytes())];
        all.extend(fields.iter().map(|(k, v)| (*k, v.as_slice())));
        xadd(&mut conn, &all).await;
        ids.push((id, *code));
    }
    // An entry with no task id has no record and no producer to tell; it
    // goes to the dead-letter stream all the same.
    xadd(&mut conn, &[("version", b"2"), ("kind", b"noop")]).await;

    for (id, code) in &ids {
        // Raw entries come without a record; the worker creates it.
        wait_until(Duration::from_secs(20), "record written", || {
            let producer = producer.clone();
            let id = *id;
            async move { producer.record(id).await.unwrap().is_some() }
        })
        .await;
        let outcome = producer.wait(*id, Duration::from_secs(20)).await.unwrap();
        assert_eq!(outcome.status, Status::Failed, "{code}");
        let failure = outcome.failure().unwrap();
        assert_eq!(failure.code.as_str(), *code, "{failure:?}");
        assert!(!failure.message.is_empty());
        // The producer's error and the dead letter's reason agree.
        let letter = producer
            .store()
            .dead_letter(
                outcome
                    .record
                    .dead_letter
                    .as_deref()
                    .expect("dead-lettered"),
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(letter.reason, *code);
        assert_eq!(letter.task_id, Some(*id));
        assert_eq!(letter.message, failure.message);
    }
    let dead: redis::streams::StreamRangeReply =
        conn.xrange_all("tandem:{cpu}:dead").await.unwrap();
    assert_eq!(
        dead.ids.len(),
        cases.len() + 1,
        "one dead letter per bad entry"
    );
    let orphan = dead
        .ids
        .iter()
        .find(|e| !e.map.contains_key("id"))
        .expect("the id-less entry");
    assert_eq!(orphan.get::<String>("reason").unwrap(), "BAD_PAYLOAD");

    let after = producer
        .submit(Task::of::<Noop>(&rmpv::Value::Nil).unwrap())
        .await
        .unwrap();
    assert!(
        producer
            .wait(after, Duration::from_secs(20))
            .await
            .unwrap()
            .succeeded()
    );
    let left: u64 = conn.xlen("tandem:{cpu}:stream:normal").await.unwrap();
    assert_eq!(left, 0, "every bad entry is gone from the task stream");
    assert!(worker.log_text().contains("without a readable task id"));
}

/// Regression (issue 11, points 3, 9 and 11), straight into Redis as any
/// client could: params that are not one MessagePack value ran (`not
/// msgpack` read as the integer 110); split fields a producer set failed
/// `UNKNOWN_KIND` (`parent`, `shard`) or `HANDLER_ERROR` (`merge`); a field
/// of the wrong type failed with `wrong msgpack marker FixStr(3)`. Each now
/// ends with its documented reason and a message naming the field.
#[tokio::test]
async fn malformed_params_and_split_fields_end_with_the_documented_reason() {
    let redis = RedisServer::start();
    let _worker = WorkerProcess::start(&redis, &[("TANDEM_TEST_KINDS", "1")]).await;
    let mut conn = redis.conn().await;
    let producer = redis.producer().await;

    let echo = msgpack::encode(&"hi").unwrap();
    let mut trailing = echo.clone();
    trailing.push(0x01);
    let option = serde_json::json!({"s0": 100.0, "strike": 100.0, "rate": 0.03, "sigma": "0.2",
                                    "maturity": 1.0, "steps": 4, "paths": 1000, "seed": 1});
    let parent = TaskId::new().to_string();
    type Case = (&'static str, Vec<(&'static str, Vec<u8>)>, &'static str);
    let cases: Vec<Case> = vec![
        (
            "BAD_PAYLOAD",
            vec![
                ("kind", b"echo".to_vec()),
                ("params", b"not msgpack".to_vec()),
            ],
            "params are not one MessagePack value: a value of 1 byte followed by 10 more bytes (11 in all)",
        ),
        (
            "BAD_PAYLOAD",
            vec![("kind", b"echo".to_vec()), ("params", trailing)],
            "followed by 1 more bytes",
        ),
        (
            "BAD_PAYLOAD",
            vec![
                ("kind", b"echo".to_vec()),
                ("parent", parent.clone().into_bytes()),
                ("shard", b"0".to_vec()),
                ("shards", b"2".to_vec()),
                ("params", echo.clone()),
            ],
            "fields parent, shard and shards mark a part of a split task, but kind \"echo\" does not split",
        ),
        (
            "BAD_PAYLOAD",
            vec![
                ("kind", b"echo".to_vec()),
                ("merge", b"1".to_vec()),
                ("shards", b"2".to_vec()),
                ("params", echo.clone()),
            ],
            "field merge mark",
        ),
        (
            "BAD_PAYLOAD",
            vec![
                ("kind", b"split_sum".to_vec()),
                ("merge", b"1".to_vec()),
                ("shards", b"2".to_vec()),
                (
                    "params",
                    msgpack::encode(&serde_json::json!({"n": 10})).unwrap(),
                ),
            ],
            "field merge marks a split task whose shards all finished, but their results are not there",
        ),
        (
            "BAD_PAYLOAD",
            vec![
                ("kind", b"echo".to_vec()),
                ("shard", b"0".to_vec()),
                ("params", echo),
            ],
            "field shard without field parent",
        ),
        (
            "BAD_PARAMS",
            vec![
                ("kind", b"monte_carlo".to_vec()),
                ("params", msgpack::encode(&option).unwrap()),
            ],
            "sigma: expected a number, got a string (\"0.2\")",
        ),
    ];
    let mut ids = Vec::new();
    for (code, fields, needle) in &cases {
        let id = TaskId::new();
        let id_text = id.to_string();
        let mut all: Vec<(&str, &[u8])> = vec![("version", b"2"), ("id", id_text.as_bytes())];
        all.extend(fields.iter().map(|(k, v)| (*k, v.as_slice())));
        xadd(&mut conn, &all).await;
        ids.push((id, *code, *needle));
    }
    for (id, code, needle) in ids {
        wait_until(Duration::from_secs(20), "record written", || {
            let producer = producer.clone();
            async move { producer.record(id).await.unwrap().is_some() }
        })
        .await;
        let outcome = producer.wait(id, Duration::from_secs(20)).await.unwrap();
        assert_eq!(outcome.status, Status::Failed, "{needle}");
        let failure = outcome.failure().unwrap();
        assert_eq!(failure.code.as_str(), code, "{failure:?}");
        assert!(
            failure.message.contains(needle),
            "{needle:?} in {failure:?}"
        );
        // Refused for good at once: one attempt, dead-lettered with the reason.
        assert_eq!(outcome.record.attempt, Some(1), "{failure:?}");
        let letter = producer
            .store()
            .dead_letter(
                outcome
                    .record
                    .dead_letter
                    .as_deref()
                    .expect("dead-lettered"),
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(letter.reason, code);
    }
    let left: u64 = conn.xlen("tandem:{cpu}:stream:normal").await.unwrap();
    assert_eq!(left, 0, "every bad entry is gone from the task stream");
}
