//! Leases, failover, retries, dead letters, fenced commits, poison tasks,
//! graceful hand-back: every accepted task ends committed exactly once or in
//! the dead-letter stream with its reason.

use std::collections::HashMap;
use std::time::{Duration, Instant};
use tandem_shared::clock::now_ms;

use redis::AsyncCommands;
use tandem_producer::{Producer, Task};
use tandem_shared::kind::builtin::{
    Abort, Fail, FailParams, Noop, Panic, PanicParams, Sleep, SleepParams,
};
use tandem_shared::{Status, TaskId};

use crate::support::{RedisServer, WorkerProcess, cpu_time, wait_until};

/// Short leases and backoffs, and the fault-injection kinds.
const FAST: &[(&str, &str)] = &[
    ("TANDEM_LEASE_TIMEOUT_MS", "1000"),
    ("TANDEM_RETRY_BASE_MS", "100"),
    ("TANDEM_RETRY_MAX_MS", "400"),
    ("TANDEM_TEST_KINDS", "1"),
    ("TANDEM_CONCURRENCY", "1"),
];
/// The heartbeat TTL the test workers use (see `WorkerProcess::spawn`).
const HEARTBEAT_TTL: Duration = Duration::from_millis(1_000);
const WAIT: Duration = Duration::from_secs(30);

fn sleep_task(ms: u64) -> Task {
    Task::of::<Sleep>(&SleepParams { ms }).unwrap()
}

async fn wait_running_on(producer: &Producer, id: TaskId, worker: &WorkerProcess) {
    wait_until(Duration::from_secs(20), "task running", || async {
        let record = producer.record(id).await.unwrap().unwrap_or_default();
        record.status == Some(Status::Running)
            && record.worker.as_deref() == Some(worker.id.as_str())
    })
    .await;
}

/// The notices in a producer's reply stream of the `cpu` class, by task id.
async fn notices(redis: &RedisServer, producer: &Producer) -> HashMap<String, usize> {
    let mut conn = redis.conn().await;
    let entries: redis::streams::StreamRangeReply = conn
        .xrange_all(format!("tandem:{{cpu}}:reply:{}", producer.id()))
        .await
        .unwrap();
    let mut count = HashMap::new();
    for entry in entries.ids {
        *count.entry(entry.get::<String>("id").unwrap()).or_default() += 1;
    }
    count
}

fn history(record: &tandem_shared::wire::TaskRecord) -> Vec<serde_json::Value> {
    serde_json::from_str::<serde_json::Value>(record.history.as_deref().unwrap_or("[]"))
        .unwrap()
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn history_len(record: &tandem_shared::wire::TaskRecord) -> usize {
    let history: serde_json::Value =
        serde_json::from_str(record.history.as_deref().unwrap_or("[]")).unwrap();
    history.as_array().map_or(0, Vec::len)
}

#[tokio::test]
async fn a_task_running_five_leases_keeps_its_lease_and_finishes_once_where_it_started() {
    let redis = RedisServer::start();
    let first = WorkerProcess::start(&redis, FAST).await;
    let producer = redis.producer().await;
    let id = producer.submit(sleep_task(5_000)).await.unwrap();
    wait_running_on(&producer, id, &first).await;
    // An idle second worker sweeps for expired leases all along.
    let _second = WorkerProcess::start(&redis, FAST).await;

    let outcome = producer.wait(id, WAIT).await.unwrap();
    assert!(outcome.succeeded());
    assert_eq!(outcome.record.worker.as_deref(), Some(first.id.as_str()));
    assert_eq!(outcome.record.attempt, Some(1), "never taken over");
    let record = producer.record(id).await.unwrap().unwrap();
    // A first attempt that succeeded needs no history.
    assert_eq!(history_len(&record), 0, "{:?}", record.history);
    assert_eq!(notices(&redis, &producer).await[&id.to_string()], 1);
}

#[tokio::test]
async fn a_killed_workers_task_completes_on_another_within_the_heartbeat_ttl_and_a_second() {
    let redis = RedisServer::start();
    let producer = redis.producer().await;
    // The survivor starts first and is kept busy for a moment, so the
    // victim, started next, is the one to take the task (without prefetch:
    // a busy survivor would otherwise claim it ahead).
    let survivor =
        WorkerProcess::start(&redis, &[FAST, &[("TANDEM_PREFETCH", "0")]].concat()).await;
    let blocker = producer.submit(sleep_task(800)).await.unwrap();
    wait_running_on(&producer, blocker, &survivor).await;
    let victim = WorkerProcess::start(&redis, FAST).await;
    let task_ms = 300;
    let id = producer.submit(sleep_task(task_ms)).await.unwrap();
    wait_running_on(&producer, id, &victim).await;

    let killed_at_ms = now_ms();
    let killed = Instant::now();
    victim.signal("KILL");
    let outcome = producer.wait(id, WAIT).await.unwrap();
    let took = killed.elapsed();
    let restarted_after = Duration::from_millis(
        outcome
            .record
            .started_at_ms
            .unwrap()
            .saturating_sub(killed_at_ms),
    );
    println!(
        "failover: SIGKILL to restart on another worker {restarted_after:?}, to completion {took:?} (task {task_ms} ms)"
    );
    assert!(outcome.succeeded());
    assert_eq!(outcome.record.worker.as_deref(), Some(survivor.id.as_str()));
    assert_eq!(
        outcome.record.attempt,
        Some(2),
        "the take-over is the second attempt"
    );
    assert!(
        took < HEARTBEAT_TTL + Duration::from_secs(1),
        "completed {took:?} after the kill: more than the heartbeat TTL + 1 s"
    );

    // The dead worker's consumer leaves the group once nothing is pending.
    let conn = redis.conn().await;
    wait_until(Duration::from_secs(10), "dead consumer removed", || {
        let mut conn = conn.clone();
        let victim = victim.id.clone();
        async move {
            let info: redis::Value = redis::cmd("XINFO")
                .arg("CONSUMERS")
                .arg("tandem:{cpu}:stream:normal")
                .arg("workers")
                .query_async(&mut conn)
                .await
                .unwrap();
            !format!("{info:?}").contains(&victim)
        }
    })
    .await;
}

#[tokio::test]
async fn failing_tasks_retry_with_backoff_then_go_to_the_dead_letter_stream() {
    let redis = RedisServer::start();
    let _worker = WorkerProcess::start(&redis, FAST).await;
    let producer = redis.producer().await;
    let task = Task::of::<Fail>(&FailParams {
        code: "E_FLAKY".into(),
        message: "upstream timed out".into(),
        retry: true,
    })
    .unwrap()
    .max_attempts(3);
    let id = producer.submit(task).await.unwrap();
    let outcome = producer.wait(id, WAIT).await.unwrap();

    assert_eq!(outcome.status, Status::Failed);
    let failure = outcome.failure().unwrap();
    assert_eq!(
        (failure.code.as_str(), failure.message.as_str()),
        ("E_FLAKY", "upstream timed out")
    );
    let record = producer.record(id).await.unwrap().unwrap();
    assert_eq!(record.attempt, Some(3));
    let history: Vec<serde_json::Value> =
        serde_json::from_str(record.history.as_deref().unwrap()).unwrap();
    assert_eq!(history.len(), 3, "{history:?}");
    let started: Vec<u64> = history
        .iter()
        .map(|a| a["started_at_ms"].as_str().unwrap().parse().unwrap())
        .collect();
    let finished: Vec<u64> = history
        .iter()
        .map(|a| a["finished_at_ms"].as_str().unwrap().parse().unwrap())
        .collect();
    // Equal jitter: the n-th retry waits between half and all of 100 x 2^(n-1) ms.
    assert!(started[1] - finished[0] >= 50, "{history:?}");
    assert!(started[2] - finished[1] >= 100, "{history:?}");
    for (n, attempt) in history.iter().enumerate() {
        assert_eq!(attempt["attempt"], (n + 1).to_string());
        assert_eq!(attempt["error_code"], "E_FLAKY");
    }

    // The dead letter: the original entry, the reason, the attempts.
    let dead_id = record.dead_letter.clone().expect("a dead-letter id");
    let letter = producer
        .store()
        .dead_letter(&dead_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(letter.task_id, Some(id));
    assert_eq!(letter.reason, "E_FLAKY");
    assert_eq!(letter.attempts, 3);
    assert_eq!(letter.kind.as_deref(), Some("fail"));
    let letter_history: serde_json::Value = serde_json::from_str(&letter.history).unwrap();
    assert_eq!(letter_history.as_array().unwrap().len(), 3);
    assert!(letter.fields.iter().any(|(k, _)| k == b"params"));
}

#[tokio::test]
async fn a_delayed_retry_does_not_block_its_stream() {
    let redis = RedisServer::start();
    let _worker = WorkerProcess::start(
        &redis,
        &[
            FAST,
            &[
                ("TANDEM_RETRY_BASE_MS", "3000"),
                ("TANDEM_RETRY_MAX_MS", "3000"),
            ],
        ]
        .concat(),
    )
    .await;
    let producer = redis.producer().await;
    let flaky = producer
        .submit(
            Task::of::<Fail>(&FailParams {
                code: "E_FLAKY".into(),
                message: String::new(),
                retry: true,
            })
            .unwrap()
            .max_attempts(2),
        )
        .await
        .unwrap();
    wait_until(Duration::from_secs(20), "first attempt failed", || async {
        producer.status(flaky).await.unwrap() == Status::Retrying
    })
    .await;
    let asked = Instant::now();
    let next = producer
        .submit(Task::of::<Noop>(&rmpv::Value::Nil).unwrap())
        .await
        .unwrap();
    assert!(producer.wait(next, WAIT).await.unwrap().succeeded());
    assert!(
        asked.elapsed() < Duration::from_millis(1_000),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(producer.status(flaky).await.unwrap(), Status::Retrying);
    let record = producer.record(flaky).await.unwrap().unwrap();
    assert!(record.retry_at_ms.is_some());
    // A task waiting for its retry can be cancelled like a queued one.
    assert_eq!(
        producer.cancel(flaky).await.unwrap(),
        tandem_producer::CancelOutcome::Cancelled
    );
    let mut conn = redis.conn().await;
    let delayed: u64 = conn.zcard("tandem:{cpu}:delayed").await.unwrap();
    assert_eq!(delayed, 0);
}

#[tokio::test]
async fn a_stalled_worker_past_its_lease_commits_nothing_and_carries_on() {
    let redis = RedisServer::start();
    let stalled = WorkerProcess::start(&redis, FAST).await;
    let producer = redis.producer().await;
    let id = producer.submit(sleep_task(1_500)).await.unwrap();
    wait_running_on(&producer, id, &stalled).await;
    stalled.signal("STOP");
    let rescuer = WorkerProcess::start(&redis, FAST).await;

    let outcome = producer.wait(id, WAIT).await.unwrap();
    assert_eq!(outcome.record.worker.as_deref(), Some(rescuer.id.as_str()));
    stalled.signal("CONT");
    // The stalled worker wakes with its task long finished; its commit is
    // refused by the fence and dropped quietly.
    wait_until(
        Duration::from_secs(20),
        "the stalled worker's commit was refused",
        || async {
            let log = stalled.log_text();
            log.contains("another worker took this task over") || log.contains("lease lost")
        },
    )
    .await;
    let record = producer.record(id).await.unwrap().unwrap();
    assert_eq!(record.worker.as_deref(), Some(rescuer.id.as_str()));
    let attempts = history(&record);
    let committed = attempts
        .iter()
        .filter(|a| a["status"] != "taken_over")
        .count();
    assert_eq!(
        committed, 1,
        "exactly one committed attempt: {:?}",
        record.history
    );
    assert!(
        attempts
            .iter()
            .any(|a| a["status"] == "taken_over" && a["worker"] == stalled.id.as_str()),
        "the take-over is in the history: {:?}",
        record.history
    );
    assert_eq!(notices(&redis, &producer).await[&id.to_string()], 1);

    // It carries on with other work.
    drop(rescuer);
    let next = producer.submit(sleep_task(10)).await.unwrap();
    let outcome = producer.wait(next, WAIT).await.unwrap();
    assert_eq!(outcome.record.worker.as_deref(), Some(stalled.id.as_str()));
}

#[tokio::test]
async fn a_panicking_task_is_retried_then_dead_lettered_and_the_worker_lives() {
    let redis = RedisServer::start();
    let mut worker = WorkerProcess::start(&redis, FAST).await;
    let producer = redis.producer().await;
    let id = producer
        .submit(
            Task::of::<Panic>(&PanicParams {
                message: "index out of bounds".into(),
            })
            .unwrap()
            .max_attempts(2),
        )
        .await
        .unwrap();
    let outcome = producer.wait(id, WAIT).await.unwrap();
    assert_eq!(outcome.status, Status::Failed);
    let failure = outcome.failure().unwrap();
    assert_eq!(failure.code.as_str(), "HANDLER_PANIC");
    assert!(
        failure.message.contains("index out of bounds"),
        "{failure:?}"
    );
    assert_eq!(outcome.record.attempt, Some(2));
    assert!(outcome.record.dead_letter.is_some());
    assert!(worker.is_alive());
    let next = producer.submit(sleep_task(1)).await.unwrap();
    assert!(producer.wait(next, WAIT).await.unwrap().succeeded());
}

#[tokio::test]
async fn a_task_that_kills_its_workers_is_dead_lettered_after_max_deliveries() {
    let redis = RedisServer::start();
    let env = [FAST, &[("TANDEM_MAX_DELIVERIES", "2")]].concat();
    let mut workers = [
        WorkerProcess::start(&redis, &env).await,
        WorkerProcess::start(&redis, &env).await,
        WorkerProcess::start(&redis, &env).await,
    ];
    let producer = redis.producer().await;
    let id = producer
        .submit(Task::of::<Abort>(&rmpv::Value::Nil).unwrap())
        .await
        .unwrap();
    let outcome = producer.wait(id, WAIT).await.unwrap();
    assert_eq!(outcome.status, Status::Failed);
    assert_eq!(outcome.failure().unwrap().code.as_str(), "MAX_DELIVERIES");
    let letter = producer
        .store()
        .dead_letter(outcome.record.dead_letter.as_deref().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(letter.reason, "MAX_DELIVERIES");
    // The message says what was seen: each worker died running it alone.
    let message = &outcome.failure().unwrap().message;
    assert!(
        message.contains("died 2 times while it was the only task running"),
        "{message}"
    );
    let record = producer.record(id).await.unwrap().unwrap();
    let taken_over: Vec<serde_json::Value> = history(&record)
        .into_iter()
        .filter(|a| a["status"] == "taken_over")
        .collect();
    assert_eq!(taken_over.len(), 2, "{:?}", record.history);
    assert!(
        taken_over.iter().all(|a| a["error_code"] == "WORKER_LOST"
            && a["error_message"]
                .as_str()
                .unwrap()
                .contains("only task running")),
        "{taken_over:?}"
    );
    // Two deliveries killed two workers; the third did not run it.
    let alive = workers
        .iter_mut()
        .map(|w| w.is_alive())
        .filter(|&alive| alive)
        .count();
    assert_eq!(alive, 1, "exactly the two workers that ran it died");
    let next = producer.submit(sleep_task(1)).await.unwrap();
    assert!(producer.wait(next, WAIT).await.unwrap().succeeded());
}

#[tokio::test]
async fn sigterm_hands_unfinished_tasks_back_and_another_worker_finishes_them() {
    let redis = RedisServer::start();
    let mut leaving = WorkerProcess::start(
        &redis,
        &[FAST, &[("TANDEM_SHUTDOWN_GRACE_MS", "300")]].concat(),
    )
    .await;
    let producer = redis.producer().await;
    let long = producer.submit(sleep_task(1_500)).await.unwrap();
    wait_running_on(&producer, long, &leaving).await;
    let staying = WorkerProcess::start(&redis, FAST).await;

    leaving.signal("TERM");
    let handed = Instant::now();
    assert_eq!(leaving.wait_exit(Duration::from_secs(10)), Some(0));
    assert!(
        leaving.log_text().contains("handed 1 running tasks back"),
        "{}",
        leaving.log_text()
    );
    let outcome = producer.wait(long, WAIT).await.unwrap();
    assert!(outcome.succeeded());
    assert_eq!(outcome.record.worker.as_deref(), Some(staying.id.as_str()));
    // Started again at once, not after a lease ran out.
    assert!(
        handed.elapsed() < Duration::from_millis(1_500 + 900),
        "{:?}",
        handed.elapsed()
    );
    let mut conn = redis.conn().await;
    let registered: bool = conn
        .exists(format!("tandem:worker:{}", leaving.id))
        .await
        .unwrap();
    assert!(!registered);
}

/// XREADGROUP's COUNT applies per stream: a read over several streams can
/// deliver more than asked. A worker must never hold more than it can start.
#[tokio::test]
async fn a_worker_never_holds_more_entries_than_its_slots() {
    let redis = RedisServer::start();
    let producer = redis.producer().await;
    let mut tasks = Vec::new();
    for priority in tandem_shared::Priority::ALL {
        for _ in 0..10 {
            tasks.push(sleep_task(100).priority(*priority));
        }
    }
    let ids = producer.submit_many(tasks).await.unwrap();
    let worker =
        WorkerProcess::start(&redis, &[FAST, &[("TANDEM_CONCURRENCY", "3")]].concat()).await;
    let mut conn = redis.conn().await;
    let mut most = 0;
    // Samples until every entry is committed (a commit deletes its entry),
    // however long the machine takes.
    loop {
        // All four pending lists in one MULTI, so that the sample is one
        // moment: read one after another, an entry that moved from one
        // list to another between the reads was counted twice.
        let mut sample = redis::pipe();
        sample.atomic();
        for priority in tandem_shared::Priority::ALL {
            sample
                .cmd("XLEN")
                .arg(format!("tandem:{{cpu}}:stream:{priority}"));
        }
        for priority in tandem_shared::Priority::ALL {
            sample
                .cmd("XPENDING")
                .arg(format!("tandem:{{cpu}}:stream:{priority}"))
                .arg("workers")
                .arg("-")
                .arg("+")
                .arg(100)
                .arg(&worker.id);
        }
        let (l0, l1, l2, l3, p0, p1, p2, p3): (
            u64,
            u64,
            u64,
            u64,
            redis::streams::StreamPendingCountReply,
            redis::streams::StreamPendingCountReply,
            redis::streams::StreamPendingCountReply,
            redis::streams::StreamPendingCountReply,
        ) = sample.query_async(&mut conn).await.unwrap();
        let held = [p0, p1, p2, p3].iter().map(|p| p.ids.len()).sum::<usize>();
        most = most.max(held);
        if l0 + l1 + l2 + l3 == 0 {
            break;
        }
    }
    assert!(most <= 3, "held {most} entries with 3 slots");
    assert!(most > 0, "sampled nothing");
    for id in ids {
        producer.wait(id, WAIT).await.unwrap();
    }
}

/// An entry deleted while its worker was dead cannot be run again; the
/// worker that takes the dead worker's entries over says so in its log.
#[tokio::test]
async fn a_pending_entry_deleted_behind_a_dead_worker_is_logged() {
    let redis = RedisServer::start();
    let victim = WorkerProcess::start(&redis, FAST).await;
    let producer = redis.producer().await;
    let id = producer.submit(sleep_task(10_000)).await.unwrap();
    wait_running_on(&producer, id, &victim).await;
    victim.signal("KILL");
    let entry = producer.record(id).await.unwrap().unwrap().entry.unwrap();
    let mut conn = redis.conn().await;
    let _: u64 = conn
        .xdel("tandem:{cpu}:stream:normal", &[&entry])
        .await
        .unwrap();
    let survivor = WorkerProcess::start(&redis, FAST).await;
    wait_until(
        Duration::from_secs(20),
        "the lost entry is logged",
        || async {
            survivor
                .log_text()
                .contains("deleted from its stream before it finished")
        },
    )
    .await;
    assert!(
        survivor.log_text().contains(&entry),
        "{}",
        survivor.log_text()
    );
}

/// A killed worker on this host is known dead as soon as its process is
/// gone: its tasks restart on another worker within a heartbeat interval or
/// two, while its registry record (a long TTL here) is still there.
#[tokio::test]
async fn a_killed_workers_tasks_are_taken_over_before_its_heartbeat_lapses() {
    let redis = RedisServer::start();
    let env = [
        FAST,
        &[
            ("TANDEM_HEARTBEAT_TTL_MS", "120000"),
            ("TANDEM_LEASE_TIMEOUT_MS", "240000"),
        ],
    ]
    .concat();
    let victim = WorkerProcess::start(&redis, &env).await;
    let producer = redis.producer().await;
    let id = producer.submit(sleep_task(60_000)).await.unwrap();
    wait_running_on(&producer, id, &victim).await;
    let survivor = WorkerProcess::start(&redis, &env).await;

    victim.signal("KILL");
    // The bound is far below the TTL: only the dead process tells.
    wait_until(
        Duration::from_secs(60),
        "the task restarted on the survivor",
        || async {
            let record = producer.record(id).await.unwrap().unwrap_or_default();
            record.status == Some(Status::Running)
                && record.worker.as_deref() == Some(survivor.id.as_str())
        },
    )
    .await;
    let mut conn = redis.conn().await;
    let registered: bool = conn
        .exists(format!("tandem:worker:{}", victim.id))
        .await
        .unwrap();
    assert!(
        registered,
        "the take-over waited for the victim's record to lapse"
    );
    assert!(
        survivor.log_text().contains("its process has ended"),
        "{}",
        survivor.log_text()
    );
    let record = producer.record(id).await.unwrap().unwrap();
    let taken_over = history(&record);
    assert!(
        taken_over.iter().any(|a| a["status"] == "taken_over"
            && a["worker"] == victim.id.as_str()
            && a["device"] == "cpu"),
        "{taken_over:?}"
    );
}

/// A worker's death beside other tasks does not count as a crash of each:
/// healthy tasks outlive more deaths than `max_deliveries`.
#[tokio::test]
async fn healthy_tasks_of_a_worker_killed_four_times_are_not_dead_lettered() {
    let redis = RedisServer::start();
    let env = [
        FAST,
        &[("TANDEM_CONCURRENCY", "4"), ("TANDEM_MAX_DELIVERIES", "3")],
    ]
    .concat();
    let mut holder = WorkerProcess::start(&redis, &env).await;
    let producer = redis.producer().await;
    let ids = producer
        .submit_many((0..3).map(|_| sleep_task(120_000)).collect())
        .await
        .unwrap();
    let all_running_on = |worker: String, attempt: u32| {
        let producer = producer.clone();
        let ids = ids.clone();
        async move {
            wait_until(
                Duration::from_secs(60),
                &format!("all three running on {worker}, attempt {attempt}"),
                || async {
                    let mut all = true;
                    for id in &ids {
                        let record = producer.record(*id).await.unwrap().unwrap_or_default();
                        all &= record.status == Some(Status::Running)
                            && record.worker.as_deref() == Some(worker.as_str())
                            && record.attempt == Some(attempt);
                    }
                    all
                },
            )
            .await;
        }
    };
    all_running_on(holder.id.clone(), 1).await;
    for kill in 1..=4u32 {
        // Only the next holder is there to take them over, all at once.
        let next = WorkerProcess::start(&redis, &env).await;
        holder.signal("KILL");
        all_running_on(next.id.clone(), kill + 1).await;
        holder = next;
    }
    for id in &ids {
        let record = producer.record(*id).await.unwrap().unwrap();
        assert_eq!(record.error, None, "{record:?}");
        let deaths: Vec<serde_json::Value> = history(&record)
            .into_iter()
            .filter(|a| a["status"] == "taken_over")
            .collect();
        assert_eq!(deaths.len(), 4, "{:?}", record.history);
        assert!(
            deaths
                .iter()
                .all(|a| a["error_message"].as_str().unwrap().contains("counted 1/3")),
            "{deaths:?}"
        );
    }
    assert!(holder.is_alive());
}

#[tokio::test]
async fn a_worker_whose_slots_are_all_taken_sleeps_while_its_task_runs() {
    // Its promotion and sweep timers come due while the task runs; it
    // cannot claim then, and used to wake for them over and over (a whole
    // core while a long task ran).
    let redis = RedisServer::start();
    let producer = redis.producer().await;
    let worker = WorkerProcess::start(&redis, &[("TANDEM_CONCURRENCY", "1")]).await;
    let id = producer
        .submit(Task::of::<Sleep>(&SleepParams { ms: 3_000 }).unwrap())
        .await
        .unwrap();
    wait_until(Duration::from_secs(30), "the task to start", || async {
        producer.status(id).await.unwrap() == Status::Running
    })
    .await;
    let (cpu_before, started) = (cpu_time(worker.pid()).as_secs_f64(), Instant::now());
    let outcome = producer.wait(id, Duration::from_secs(60)).await.unwrap();
    assert!(outcome.succeeded(), "{outcome:?}");
    let (cpu, wall) = (
        cpu_time(worker.pid()).as_secs_f64() - cpu_before,
        started.elapsed().as_secs_f64(),
    );
    // A sleeping loop uses a few ms; a spinning one all the CPU it is given.
    assert!(
        cpu < 0.25 * wall,
        "the worker used {cpu:.2} s of CPU in {wall:.2} s while its one slot was taken"
    );
}
