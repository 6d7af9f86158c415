//! Wake-ups of an idle fleet: every idle worker's doorbell reads the same
//! arrival, but only the first claim to reach Redis runs in full; the
//! others see the arrival delivered and wait again (claim.lua, "Wake-ups").
//! What must hold: an arrival costs one claim's reads, not one per idle
//! worker, and an arrival the first claim could not take (it was full) is
//! still taken at once by another idle worker.

use std::time::{Duration, Instant};

use tandem_producer::{CancelOutcome, Task};
use tandem_shared::Status;
use tandem_shared::kind::builtin::{Noop, Sleep, SleepParams};

use crate::support::{RedisServer, WorkerProcess, wait_until};

/// Idle workers with one slot each; the periodic promotion (it follows the
/// heartbeat) every 2 s, so the claims the timers bring are few beside the
/// ones arrivals bring.
const IDLE_WORKER: &[(&str, &str)] = &[
    ("TANDEM_CONCURRENCY", "1"),
    ("TANDEM_PREFETCH", "0"),
    ("TANDEM_HEARTBEAT_INTERVAL_MS", "2000"),
    ("TANDEM_HEARTBEAT_TTL_MS", "10000"),
];
const WAIT: Duration = Duration::from_secs(60);

/// Four idle workers, tasks submitted one at a time, each awaited: the
/// streams are read (`XREADGROUP`) about once a task, by the claim that
/// takes it, and not by the three other workers' claims for nothing. A
/// claim the timers bring (aging once a second, promotion every 2 s) may
/// read too; the bound allows two per worker per second elapsed, with
/// slack, so it holds on a slow machine. Before the gate, each task cost
/// four reads (one per worker whose doorbell rang).
#[tokio::test]
async fn an_arrival_is_read_by_one_idle_workers_claim_not_by_all() {
    const WORKERS: u64 = 4;
    const TASKS: u64 = 200;
    let redis = RedisServer::start();
    let producer = redis.producer().await;
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        workers.push(WorkerProcess::start(&redis, IDLE_WORKER).await);
    }
    let noop = || Task::of::<Noop>(&rmpv::Value::Nil).unwrap();
    // Every worker has claimed once and waits on its doorbell.
    let first = producer.submit(noop()).await.unwrap();
    assert!(producer.wait(first, WAIT).await.unwrap().succeeded());

    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut redis.conn().await)
        .await
        .unwrap();
    let started = Instant::now();
    let mut ran_on = std::collections::HashSet::new();
    for _ in 0..TASKS {
        let id = producer.submit(noop()).await.unwrap();
        let outcome = producer.wait(id, WAIT).await.unwrap();
        assert!(outcome.succeeded(), "{outcome:?}");
        ran_on.insert(outcome.record.worker.unwrap_or_default());
    }
    let elapsed = started.elapsed().as_secs() + 1;
    let reads = redis.command_calls("xreadgroup").await;
    let gates = redis.command_calls("xinfo|groups").await;
    let bound = TASKS + 2 * WORKERS * (elapsed + 2);
    eprintln!(
        "{TASKS} tasks in {elapsed} s on {} workers: {reads} XREADGROUP, {gates} XINFO (bound {bound})",
        ran_on.len()
    );
    assert!(reads >= TASKS, "each task was read once: {reads}");
    assert!(
        reads <= bound,
        "{reads} stream reads for {TASKS} tasks on {WORKERS} idle workers in {elapsed} s (at most {bound}): idle workers' claims read for nothing"
    );
    // Every claim an arrival brought checked it at the gate (one
    // `XINFO GROUPS` each, the winner's included), most of the time.
    assert!(gates >= TASKS, "the gate ran: {gates} XINFO");
}

/// Two idle workers of one slot each; two long tasks arrive together. The
/// first claim to run takes one (it is full), and the other worker's claim,
/// gated on the same first arrival, finds it taken, waits again from past
/// it and takes the second at once: both run side by side, not one after
/// the other.
#[tokio::test]
async fn an_arrival_the_first_claim_could_not_take_is_taken_by_another_idle_worker() {
    // No timer brings a claim within the test: the promotion (it follows
    // the heartbeat) and the sweep of expired leases every five minutes.
    // Only the doorbell can make the second worker claim the second task
    // in time.
    const NO_TIMERS: &[(&str, &str)] = &[
        ("TANDEM_CONCURRENCY", "1"),
        ("TANDEM_PREFETCH", "0"),
        ("TANDEM_HEARTBEAT_INTERVAL_MS", "300000"),
        ("TANDEM_HEARTBEAT_TTL_MS", "900000"),
        ("TANDEM_LEASE_TIMEOUT_MS", "600000"),
    ];
    let redis = RedisServer::start();
    let producer = redis.producer().await;
    let a = WorkerProcess::start(&redis, NO_TIMERS).await;
    let b = WorkerProcess::start(&redis, NO_TIMERS).await;
    let warm = producer
        .submit(Task::of::<Noop>(&rmpv::Value::Nil).unwrap())
        .await
        .unwrap();
    assert!(producer.wait(warm, WAIT).await.unwrap().succeeded());

    // Ten minutes: they end in this test only when cancelled.
    let long = || Task::of::<Sleep>(&SleepParams { ms: 600_000 }).unwrap();
    let ids = producer.submit_many(vec![long(), long()]).await.unwrap();
    wait_until(WAIT, "both tasks running, one on each worker", || async {
        let mut on = Vec::new();
        for id in &ids {
            let record = producer.record(*id).await.unwrap().unwrap_or_default();
            if record.status != Some(Status::Running) {
                return false;
            }
            on.push(record.worker.unwrap_or_default());
        }
        on.sort();
        on == {
            let mut both = vec![a.id.clone(), b.id.clone()];
            both.sort();
            both
        }
    })
    .await;
    for id in ids {
        assert_eq!(producer.cancel(id).await.unwrap(), CancelOutcome::Requested);
    }
}
