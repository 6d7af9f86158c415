//! Producer behaviour: typed errors before sending, waiting on tasks of
//! other producers, time-outs and unknown ids.

use std::time::{Duration, Instant};

use redis::AsyncCommands;
use tandem_producer::{ProducerError, Task};
use tandem_shared::kind::builtin::{Echo, Sleep, SleepParams};
use tandem_shared::{Class, Config, Priority, TaskId};

use crate::support::{RedisServer, WorkerProcess};

#[tokio::test]
async fn bad_parameters_give_typed_errors_and_send_nothing() {
    let redis = RedisServer::start();
    let producer = tandem_producer::Producer::connect(&Config {
        max_payload_bytes: 1_000,
        ..redis.config()
    })
    .await
    .unwrap();

    let err = producer
        .submit(Task::new("sleep", &"soon").unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, ProducerError::BadParams { .. }), "{err}");

    let err = producer
        .submit(Task::of::<Echo>(&"x".repeat(2_000).into()).unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(err, ProducerError::PayloadTooLarge { limit: 1_000, .. }),
        "{err}"
    );

    let err = producer
        .submit(Task::raw("my_model", vec![0xc0]))
        .await
        .unwrap_err();
    assert!(matches!(err, ProducerError::MissingClass(_)), "{err}");

    // A batch with one bad task sends none of them.
    let batch = vec![
        Task::of::<Echo>(&"fine".into()).unwrap(),
        Task::new("sleep", &"bad").unwrap(),
    ];
    assert!(producer.submit_many(batch).await.is_err());
    let mut conn = redis.conn().await;
    let keys: Vec<String> = conn.keys("tandem:*stream*").await.unwrap();
    for key in keys {
        assert_eq!(
            conn.xlen::<_, u64>(&key).await.unwrap(),
            0,
            "{key} holds an entry"
        );
    }
}

#[tokio::test]
async fn waiting_on_another_producers_task_timeouts_and_unknown_ids() {
    let redis = RedisServer::start();
    let submitter = redis.producer().await;
    let watcher = redis.producer().await;

    let unknown = TaskId::new();
    assert!(matches!(
        watcher.wait(unknown, Duration::from_secs(1)).await,
        Err(ProducerError::NotFound(id)) if id == unknown
    ));
    assert!(matches!(
        watcher.status(unknown).await,
        Err(ProducerError::NotFound(_))
    ));

    let slow = submitter
        .submit(
            Task::of::<Sleep>(&SleepParams { ms: 300 })
                .unwrap()
                .priority(Priority::High),
        )
        .await
        .unwrap();
    // No worker yet: the wait times out with a typed error.
    assert!(matches!(
        watcher.wait(slow, Duration::from_millis(200)).await,
        Err(ProducerError::Timeout { id, .. }) if id == slow
    ));

    let _worker = WorkerProcess::start(&redis, &[]).await;
    let started = Instant::now();
    let outcome = watcher.handle(slow).await.unwrap();
    assert!(outcome.succeeded());
    // Woken by the submitter's reply stream, not by the slow safety re-check.
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );

    // Custom kinds go where their producer says.
    let custom = submitter
        .submit(Task::new("echo", &"to light").unwrap().class(Class::Light))
        .await
        .unwrap();
    let outcome = watcher.wait(custom, Duration::from_secs(20)).await.unwrap();
    assert_eq!(outcome.record.class, Some(Class::Light));
}

#[tokio::test]
async fn sigterm_lets_running_tasks_finish_and_deregisters() {
    let redis = RedisServer::start();
    let mut worker = WorkerProcess::start(&redis, &[]).await;
    let producer = redis.producer().await;
    let id = producer
        .submit(Task::of::<Sleep>(&SleepParams { ms: 500 }).unwrap())
        .await
        .unwrap();
    crate::support::wait_until(Duration::from_secs(10), "task running", || {
        let producer = producer.clone();
        async move { producer.status(id).await.unwrap() == tandem_shared::Status::Running }
    })
    .await;
    worker.signal("TERM");
    assert_eq!(worker.wait_exit(Duration::from_secs(10)), Some(0));
    let outcome = producer.wait(id, Duration::from_secs(1)).await.unwrap();
    assert!(outcome.succeeded(), "the running task finished before exit");
    let mut conn = redis.conn().await;
    let registered: bool = conn
        .exists(format!("tandem:worker:{}", worker.id))
        .await
        .unwrap();
    assert!(!registered, "the registry record is removed");
}

/// Regression: redis-rs queues requests to a shared connection in a bounded
/// channel (50 by default). Wait futures polled once and then left idle, as
/// in a `FuturesUnordered` the caller stops polling while it awaits a submit,
/// held that channel's slots and stalled every later request.
#[tokio::test]
async fn idle_wait_futures_do_not_stall_later_submits() {
    use futures_util::StreamExt;
    use futures_util::stream::FuturesUnordered;
    use tandem_shared::kind::builtin::Noop;

    let redis = RedisServer::start();
    let _worker = WorkerProcess::start(&redis, &[("TANDEM_CONCURRENCY", "8")]).await;
    let producer = redis.producer().await;
    let noops = |n| -> Vec<Task> {
        (0..n)
            .map(|_| Task::of::<Noop>(&rmpv::Value::Nil).unwrap())
            .collect()
    };

    let ids = producer.submit_many(noops(600)).await.unwrap();
    let mut waits: FuturesUnordered<_> = ids
        .into_iter()
        .map(|id| {
            let producer = producer.clone();
            async move { producer.wait(id, Duration::from_secs(60)).await }
        })
        .collect();
    // Poll the waits until one finishes, then leave the rest idle while
    // submitting more.
    assert!(waits.next().await.unwrap().unwrap().succeeded());
    for _ in 0..5 {
        tokio::time::timeout(Duration::from_secs(10), producer.submit_many(noops(100)))
            .await
            .expect("a submit stalled behind idle waits")
            .unwrap();
    }
    while let Some(outcome) = waits.next().await {
        assert!(outcome.unwrap().succeeded());
    }
}

/// A batch goes to Redis as one `submit_many.lua` call per run of up to
/// `SUBMIT_BATCH` tasks of a class, its entries in the batch's order; a
/// task that cannot be submitted fails alone, its error naming its index.
#[tokio::test]
async fn a_batch_is_one_script_call_per_run_and_a_bad_task_fails_alone() {
    use tandem_shared::kind::builtin::Noop;
    use tandem_shared::store::SUBMIT_BATCH;

    let redis = RedisServer::start();
    let producer = redis.producer().await;
    let mut conn = redis.conn().await;
    let noop = || Task::of::<Noop>(&rmpv::Value::Nil).unwrap();
    let stream = "tandem:{cpu}:stream:normal";

    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut conn)
        .await
        .unwrap();
    let n = SUBMIT_BATCH + 7;
    let ids = producer
        .submit_many((0..n).map(|_| noop()).collect())
        .await
        .unwrap();
    assert_eq!(
        redis.command_calls("evalsha").await,
        2,
        "two calls for {n} tasks"
    );
    let entries: redis::streams::StreamRangeReply = conn.xrange_all(stream).await.unwrap();
    let in_stream: Vec<String> = entries
        .ids
        .iter()
        .map(|entry| entry.get::<String>("id").unwrap())
        .collect();
    let submitted: Vec<String> = ids.iter().map(ToString::to_string).collect();
    assert_eq!(
        in_stream, submitted,
        "one entry per task, in the batch's order"
    );

    // An idempotency key that holds a hash: that task fails, naming its
    // index, and writes nothing; the tasks around it are submitted.
    let clash = "tandem:{cpu}:idem:clash";
    let _: () = conn.hset(clash, "not", "a string").await.unwrap();
    let batch = vec![noop(), noop().idempotency_key("clash"), noop()];
    let err = producer.submit_many(batch).await.unwrap_err();
    let text = format!("{err:#}");
    assert!(
        text.contains("WRONGTYPE") && text.contains("task 1:"),
        "{text}"
    );
    assert_eq!(conn.xlen::<_, usize>(stream).await.unwrap(), n + 2);
    let kind: String = redis::cmd("TYPE")
        .arg(clash)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(kind, "hash");
}

#[tokio::test]
async fn a_task_without_notice_writes_none_and_its_outcome_is_in_the_record() {
    let redis = RedisServer::start();
    let producer = redis.producer().await;
    let _worker = WorkerProcess::start(&redis, &[]).await;
    let mut conn = redis.conn().await;

    // One batch of both: a call names one reply stream, so they go apart.
    let ids = producer
        .submit_many(vec![
            Task::of::<Echo>(&"quiet".into()).unwrap().without_notice(),
            Task::of::<Echo>(&"told".into()).unwrap(),
        ])
        .await
        .unwrap();
    let (quiet, told) = (ids[0], ids[1]);
    for (id, text) in [(quiet, "quiet"), (told, "told")] {
        let outcome = producer.wait(id, Duration::from_secs(30)).await.unwrap();
        assert!(outcome.succeeded(), "{outcome:?}");
        assert_eq!(outcome.result::<String>().unwrap(), text);
    }
    let class = producer
        .record(quiet)
        .await
        .unwrap()
        .unwrap()
        .class
        .unwrap();
    let quiet_key = format!("tandem:{{{class}}}:task:{quiet}");
    let reply_to: Option<String> = conn.hget(&quiet_key, "reply_to").await.unwrap();
    assert_eq!(reply_to, None, "the entry named no reply stream");

    // The reply stream holds the one notice asked for.
    let stream = format!("tandem:{{{class}}}:reply:{}", producer.id());
    let notices: redis::streams::StreamRangeReply = conn.xrange_all(&stream).await.unwrap();
    let noticed: Vec<String> = notices
        .ids
        .iter()
        .map(|n| n.get::<String>("id").unwrap())
        .collect();
    assert_eq!(noticed, vec![told.to_string()]);

    // The CLI's fire and forget: no reply stream at all, and `tandem wait`
    // reads the outcome from the record.
    let cli = RedisServer::start();
    let _cli_worker = WorkerProcess::start(&cli, &[]).await;
    let out = crate::support::tandem(
        &cli,
        &[
            "submit",
            "echo",
            "--params",
            "\"from the shell\"",
            "--no-notice",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        crate::support::text(&out.stderr)
    );
    let id = crate::support::text(&out.stdout).trim().to_owned();
    let out = crate::support::tandem(&cli, &["wait", &id, "--timeout-ms", "30000"]);
    assert!(
        out.status.success(),
        "{}",
        crate::support::text(&out.stderr)
    );
    assert!(
        crate::support::text(&out.stdout).contains("from the shell"),
        "{}",
        crate::support::text(&out.stdout)
    );
    let mut cli_conn = cli.conn().await;
    let replies: Vec<String> = cli_conn.keys("tandem:*reply*").await.unwrap();
    assert!(replies.is_empty(), "reply streams: {replies:?}");
}
