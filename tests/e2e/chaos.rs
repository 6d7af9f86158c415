//! Chaos: 5,000 tasks through 3 worker processes while workers are killed
//! (SIGKILL) and frozen (SIGSTOP, then SIGCONT), and Redis crashes once and
//! restarts from its append-only file. At the end every task has exactly one
//! committed outcome: a result, or a dead letter with its reason. None is
//! lost; a task may have run more than once, and the count is printed.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use tandem_producer::{Producer, Task};
use tandem_shared::kind::builtin::{Sleep, SleepParams};
use tandem_shared::{Config, Status, TaskId};

use crate::support::chaos::{Lcg, keep_frozen, pace_submissions, until_next_fault};
use crate::support::{RedisServer, WorkerProcess};

const TASKS: usize = 5_000;
const WORKERS: usize = 3;
const CHAOS_FOR: Duration = Duration::from_secs(20);
const ENV: &[(&str, &str)] = &[
    ("TANDEM_LEASE_TIMEOUT_MS", "1000"),
    ("TANDEM_CONCURRENCY", "4"),
    ("TANDEM_LOG_LEVEL", "warn"),
];

#[tokio::test]
async fn chaos_loses_nothing_and_commits_each_task_once() {
    let seed = std::env::var("TANDEM_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("chaos seed {seed} (set TANDEM_CHAOS_SEED to replay)");
    let mut rng = Lcg(seed);
    let mut redis = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let mut workers: Vec<WorkerProcess> = Vec::new();
    for _ in 0..WORKERS {
        workers.push(WorkerProcess::start(&redis, ENV).await);
    }
    let producer = Producer::connect(&Config {
        reconnect_timeout_ms: 60_000,
        ..redis.config()
    })
    .await
    .unwrap();

    // Submit over the first half of the chaos, in batches.
    let submitting = {
        let producer = producer.clone();
        let seed = rng.next(u64::MAX);
        tokio::spawn(async move {
            let mut rng = Lcg(seed);
            let mut ids = Vec::with_capacity(TASKS);
            while ids.len() < TASKS {
                let batch = (0..50)
                    .map(|_| {
                        Task::of::<Sleep>(&SleepParams {
                            ms: 1 + rng.next(20),
                        })
                        .unwrap()
                    })
                    .collect();
                ids.extend(producer.submit_many(batch).await.unwrap());
                pace_submissions().await;
            }
            ids
        })
    };

    let started = Instant::now();
    let mut restarted_redis = false;
    let (mut kills, mut stops) = (0, 0);
    while started.elapsed() < CHAOS_FOR {
        until_next_fault(&mut rng).await;
        if !restarted_redis && started.elapsed() > CHAOS_FOR / 2 {
            println!(
                "chaos: Redis crashes and restarts at {:?}",
                started.elapsed()
            );
            redis.crash_and_restart();
            restarted_redis = true;
            continue;
        }
        let victim = rng.next(workers.len() as u64) as usize;
        if rng.next(2) == 0 {
            kills += 1;
            workers[victim].signal("KILL");
            // The fleet would restart it; so does this test.
            workers[victim] = WorkerProcess::spawn(&redis, ENV);
        } else {
            stops += 1;
            workers[victim].signal("STOP");
            keep_frozen(&mut rng).await;
            workers[victim].signal("CONT");
        }
    }
    println!("chaos: {kills} SIGKILLs, {stops} SIGSTOP/SIGCONTs, one Redis restart");
    let ids: Vec<TaskId> = submitting.await.unwrap();
    assert_eq!(ids.len(), TASKS);

    let mut by_status: HashMap<Status, usize> = HashMap::new();
    let mut ran_more_than_once = 0;
    for id in &ids {
        let outcome = producer
            .wait(*id, Duration::from_secs(120))
            .await
            .unwrap_or_else(|e| panic!("task {id} was lost: {e}"));
        *by_status.entry(outcome.status).or_default() += 1;
        match outcome.status {
            Status::Succeeded => {}
            Status::Failed => {
                let letter = outcome
                    .record
                    .dead_letter
                    .as_deref()
                    .expect("a failed task is dead-lettered");
                let letter = producer
                    .store()
                    .dead_letter(letter)
                    .await
                    .unwrap()
                    .expect("its dead letter exists");
                assert!(!letter.reason.is_empty());
            }
            other => panic!("task {id} ended {other}"),
        }
        if outcome.record.attempt.unwrap_or(1) > 1 {
            ran_more_than_once += 1;
        }
    }

    // Committed once: one completion notice per task, no more.
    let mut conn = redis.conn().await;
    let notices: redis::streams::StreamRangeReply = conn
        .xrange_all(format!("tandem:{{cpu}}:reply:{}", producer.id()))
        .await
        .unwrap();
    let mut per_task: HashMap<String, usize> = HashMap::new();
    for notice in &notices.ids {
        *per_task
            .entry(notice.get::<String>("id").unwrap())
            .or_default() += 1;
    }
    let twice: Vec<_> = per_task.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "committed more than once: {twice:?}");
    assert_eq!(per_task.len(), TASKS, "a notice for every task");
    let dead: u64 = conn.xlen("tandem:{cpu}:dead").await.unwrap();
    assert_eq!(
        dead as usize,
        by_status.get(&Status::Failed).copied().unwrap_or(0)
    );
    println!(
        "chaos: {} succeeded, {} dead-lettered, 0 lost; {ran_more_than_once} tasks ran more than once (committed once)",
        by_status.get(&Status::Succeeded).copied().unwrap_or(0),
        dead
    );
}

/// `tandem chaos`, bounded small: a private Redis and fleet, faults while
/// tasks run, the reclaim latency table from the records' take-overs, and
/// every task succeeding (none lost, none dead-lettered as poison). Only
/// what does not depend on the machine's speed is checked, not the latency
/// target the command also reports.
#[test]
fn tandem_chaos_reports_reclaim_latency_and_every_task_succeeds() {
    let logs = crate::support::ScratchDir::new("chaos-logs");
    let out = std::process::Command::new(crate::support::bin("tandem"))
        .args([
            "chaos",
            "--tasks",
            "240",
            "--task-min-ms",
            "200",
            "--task-max-ms",
            "400",
            "--concurrency",
            "4",
            "--kills",
            "2",
            "--stops",
            "1",
            "--every-ms",
            "800",
            "--logs",
        ])
        .arg(logs.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("TANDEM_WORKER_BIN", crate::support::bin("tandem-worker"))
        .env("TANDEM_HEARTBEAT_INTERVAL_MS", "200")
        .env("TANDEM_HEARTBEAT_TTL_MS", "1000")
        .output()
        .expect("run tandem chaos");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let errors = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        text.contains("every task succeeded: yes"),
        "{text}\n{errors}"
    );
    assert!(text.contains("240 succeeded"), "{text}");
    // The table: one row per fault kind and the total, whose `taken over`
    // column counts the take-overs found in the records. The queue is
    // saturated when the first fault hits (240 tasks of at least 200 ms on
    // 12 slots), so its victim held tasks that were taken over.
    let all: Vec<&str> = text
        .lines()
        .find(|line| line.starts_with("all "))
        .unwrap_or_else(|| panic!("no total row:\n{text}"))
        .split_whitespace()
        .collect();
    let faults: usize = all[1].parse().unwrap();
    let taken_over: usize = all[3].parse().unwrap();
    assert!(faults >= 1, "{text}");
    assert!(taken_over >= 1, "{text}");
    // The slowest take-overs are named: class, task, the worker hit and
    // the one that took the task.
    let slow: Vec<&str> = text
        .lines()
        .filter(|line| line.starts_with("slow take-over: "))
        .collect();
    assert_eq!(slow.len(), taken_over.min(3), "{text}");
    assert!(
        slow.iter()
            .all(|line| line.contains(" of ") && line.contains(" taken by ")),
        "{text}"
    );
    // `--logs`: the fleet's log, its members' lines at info among its own,
    // the taker of a slow take-over seen taking over.
    let log = std::fs::read_to_string(logs.path().join("fleet.log")).unwrap();
    assert!(log.contains("fleet starting"), "{log}");
    assert!(log.contains("killed by signal 9"), "{log}");
    let taker = slow[0].rsplit(' ').next().unwrap();
    assert!(
        log.lines()
            .any(|line| line.contains("worker ready") && line.contains(taker)),
        "{taker} not in the log:\n{log}"
    );
}
