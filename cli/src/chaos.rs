//! `tandem chaos`: how fast a dead worker's tasks restart elsewhere.
//!
//! Starts a private Redis and a `tandem-worker fleet` of the seed's host
//! (two simulated GPUs and a CPU worker, which the fleet restarts when they
//! die), submits a bounded mix of sleep tasks of every class, and while they
//! run kills (SIGKILL) and stops (SIGSTOP, then SIGCONT after a while)
//! members at random. Every take-over leaves a `taken_over` attempt in the
//! task's history (who held it, when another worker took it); the reclaim
//! latency of a task is the time from its worker's kill or stop to that
//! take-over: the first restart by another worker. It prints their
//! distribution for kills and for stops, against the target (median at
//! most a heartbeat TTL + 1 s, p99 at most two TTLs), and what became of
//! the tasks: each must succeed (none lost, none dead-lettered as poison).
//! At most one member is stopped at a time (kills go on meanwhile).
//!
//! Bounded by the task count and by `--max-s`; the heartbeat settings are
//! the configuration's (defaults: 1 s interval, 5 s TTL).

use std::collections::HashMap;
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tandem_shared::clock::now_ms;

use anyhow::Context;
use clap::Args;
use tandem_shared::device::Health;
use tandem_shared::kind::builtin::{Sleep, SleepParams};
use tandem_shared::store::Store;
use tandem_shared::{Class, Config, Status, TaskId};

use super::local::{LocalRedis, LocalWorkers};
use super::table;
use tandem_producer::{Producer, Task};

/// The seed's host: the primary and the secondary GPU.
const SEED_GPUS: &str = "RTX 4070 Ti, 12 GiB, 40.09 TFLOPS; RTX 3060 Ti, 8 GiB, 16.2 TFLOPS";

#[derive(Debug, Args)]
pub struct ChaosArgs {
    /// Tasks to submit (a mix of heavy, light, parallel and cpu sleeps).
    #[arg(long, default_value_t = 3_000)]
    pub tasks: usize,
    /// Longest and shortest sleep of a task (ms).
    #[arg(long, default_value_t = 1_500)]
    pub task_max_ms: u64,
    #[arg(long, default_value_t = 50)]
    pub task_min_ms: u64,
    /// Tasks each worker runs at once.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Workers to kill with SIGKILL.
    #[arg(long, default_value_t = 16)]
    pub kills: usize,
    /// Workers to stop with SIGSTOP (and continue after 1 to 3 heartbeat
    /// TTLs), one at a time.
    #[arg(long, default_value_t = 8)]
    pub stops: usize,
    /// Time between two faults (ms).
    #[arg(long, default_value_t = 4_000)]
    pub every_ms: u64,
    /// Give up after this long (s); what is unfinished then is reported.
    #[arg(long, default_value_t = 300)]
    pub max_s: u64,
    /// Seed of the fault schedule and task mix.
    #[arg(long, default_value_t = 11)]
    pub seed: u64,
    /// Keep the fleet's log (its members' included, at `info`) in
    /// `DIR/fleet.log`, to see why a take-over was slow: which worker saw
    /// which dead, and what each claim took over. Without it the fleet
    /// logs warnings only, to nowhere.
    #[arg(long, value_name = "DIR")]
    pub logs: Option<std::path::PathBuf>,
}

/// One fault the run injected.
#[derive(Debug, Clone)]
struct Fault {
    worker: String,
    kill: bool,
    at_ms: u64,
    /// Tasks the worker held when it was hit.
    held: usize,
}

pub(crate) async fn run(config: Config, args: ChaosArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.tasks > 0, "--tasks must be above 0");
    anyhow::ensure!(
        args.task_min_ms <= args.task_max_ms,
        "--task-min-ms must not exceed --task-max-ms"
    );
    let redis = LocalRedis::start()?;
    let config = Config {
        redis_url: redis.url.clone(),
        ..config
    };
    let ttl = Duration::from_millis(config.heartbeat_ttl_ms);
    let env = [
        ("TANDEM_REDIS_URL", config.redis_url.clone()),
        ("TANDEM_PREFIX", config.prefix.clone()),
        ("TANDEM_SIMULATE_GPUS", SEED_GPUS.to_owned()),
        ("TANDEM_CONCURRENCY", args.concurrency.to_string()),
        (
            "TANDEM_HEARTBEAT_INTERVAL_MS",
            config.heartbeat_interval_ms.to_string(),
        ),
        (
            "TANDEM_HEARTBEAT_TTL_MS",
            config.heartbeat_ttl_ms.to_string(),
        ),
        (
            "TANDEM_LOG_LEVEL",
            if args.logs.is_some() { "info" } else { "warn" }.to_owned(),
        ),
    ];
    let log = match &args.logs {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("--logs: cannot create {}", dir.display()))?;
            Some(dir.join("fleet.log"))
        }
        None => None,
    };
    let mut fleet =
        LocalWorkers::start_fleet(&env, &["TANDEM_WORKER_ID", "TANDEM_DEVICE"], log.as_deref())?;
    let store = Store::connect(&config).await?;
    let started = Instant::now();
    while store
        .workers()
        .await?
        .iter()
        .filter(|w| w.health == Health::Healthy)
        .count()
        < 3
    {
        fleet.check_alive()?;
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(60),
            "the fleet did not come up within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "tandem chaos: {} tasks of {}-{} ms on the seed's fleet (2 simulated GPUs + CPU, {} slots each); \
         {} SIGKILLs and {} SIGSTOPs, one every {} ms; heartbeat {} ms, TTL {} ms",
        args.tasks,
        args.task_min_ms,
        args.task_max_ms,
        args.concurrency,
        args.kills,
        args.stops,
        args.every_ms,
        config.heartbeat_interval_ms,
        config.heartbeat_ttl_ms
    );

    let mut rng = Rng(args.seed.max(1));
    let producer = Producer::connect(&config).await?;
    let classes = [Class::Heavy, Class::Light, Class::Parallel, Class::Cpu];
    let tasks: Vec<Task> = (0..args.tasks)
        .map(|_| {
            let ms = args.task_min_ms + rng.below(args.task_max_ms - args.task_min_ms + 1);
            let class = classes[rng.below(classes.len() as u64) as usize];
            Task::of::<Sleep>(&SleepParams { ms }).map(|t| t.class(class).memory_bytes(256 << 20))
        })
        .collect::<Result<_, _>>()?;
    let mut ids = Vec::with_capacity(tasks.len());
    for chunk in tasks.chunks(500) {
        ids.extend(producer.submit_many(chunk.to_vec()).await?);
    }

    // Waits for every task in the background; the faults go on meanwhile.
    let finished = Arc::new(AtomicUsize::new(0));
    let deadline = started + Duration::from_secs(args.max_s);
    let waiter = {
        let producer = producer.clone();
        let ids = ids.clone();
        let finished = Arc::clone(&finished);
        tokio::spawn(async move {
            for id in ids {
                let left = deadline.saturating_duration_since(Instant::now());
                if producer.wait(id, left).await.is_err() {
                    break;
                }
                finished.fetch_add(1, Ordering::Relaxed);
            }
        })
    };

    let mut faults: Vec<Fault> = Vec::new();
    // Stopped workers and when they continue; killed ones, whose records
    // stay in the registry until their TTL runs out.
    let mut stopped: Vec<(u32, Instant)> = Vec::new();
    let mut killed: Vec<u32> = Vec::new();
    let (mut kills, mut stops) = (args.kills, args.stops);
    let mut next_fault = Instant::now() + Duration::from_millis(args.every_ms);
    while finished.load(Ordering::Relaxed) < ids.len() && Instant::now() < deadline {
        let now = Instant::now();
        stopped.retain(|(pid, until)| {
            if now >= *until {
                signal(*pid, "CONT");
                false
            } else {
                true
            }
        });
        if now >= next_fault && kills + stops > 0 {
            next_fault = now + Duration::from_millis(args.every_ms);
            let workers = store.workers().await?;
            // A stopped worker is left alone until it continues.
            let candidates: Vec<_> = workers
                .iter()
                .filter(|w| {
                    w.health == Health::Healthy
                        && !killed.contains(&w.pid)
                        && stopped.iter().all(|(p, _)| *p != w.pid)
                })
                .collect();
            // At most one member is stopped at a time: with two of the
            // three frozen, a class can be left with no worker whose role
            // takes it, which measures routing, not reclaim.
            let kill = stops == 0
                || !stopped.is_empty()
                || (kills > 0 && rng.below((kills + stops) as u64) < kills as u64);
            if !candidates.is_empty() && (!kill || kills > 0) {
                let victim = candidates[rng.below(candidates.len() as u64) as usize];
                let held = store.held_by(&victim.id).await.unwrap_or_default();
                let at_ms = now_ms();
                if kill {
                    signal(victim.pid, "KILL");
                    killed.push(victim.pid);
                    kills -= 1;
                } else {
                    signal(victim.pid, "STOP");
                    let hold = ttl + Duration::from_millis(rng.below(2 * config.heartbeat_ttl_ms));
                    stopped.push((victim.pid, now + hold));
                    stops -= 1;
                }
                faults.push(Fault {
                    worker: victim.id.clone(),
                    kill,
                    at_ms,
                    held,
                });
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (pid, _) in stopped.drain(..) {
        signal(pid, "CONT");
    }
    // The last tasks finish without faults.
    while finished.load(Ordering::Relaxed) < ids.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    waiter.abort();

    let report = collect(&producer, &ids, &faults).await?;
    fleet.stop(Duration::from_secs(10));
    drop(redis);
    Ok(print(&report, &faults, ttl, started.elapsed()))
}

/// What the records say.
#[derive(Debug, Default)]
struct Report {
    /// Reclaim latencies (ms) after kills and after stops.
    after_kill: Vec<u64>,
    after_stop: Vec<u64>,
    outcomes: HashMap<String, usize>,
    /// Tasks dead-lettered as poison.
    poison: Vec<(TaskId, String)>,
    /// Every take-over, to name the slowest (a tail's cause is in who
    /// took what, of which class, from whom).
    take_overs: Vec<TakeOver>,
}

/// One task taken over after a fault.
#[derive(Debug)]
struct TakeOver {
    latency_ms: u64,
    id: TaskId,
    class: String,
    kill: bool,
    /// The worker hit, and the one whose attempt came next.
    from: String,
    to: String,
}

async fn collect(producer: &Producer, ids: &[TaskId], faults: &[Fault]) -> anyhow::Result<Report> {
    let by_worker: HashMap<&str, Vec<&Fault>> = faults.iter().fold(HashMap::new(), |mut map, f| {
        map.entry(f.worker.as_str())
            .or_insert_with(Vec::new)
            .push(f);
        map
    });
    let mut report = Report::default();
    for id in ids {
        let Some(record) = producer.record(*id).await? else {
            *report
                .outcomes
                .entry("lost (no record)".into())
                .or_default() += 1;
            continue;
        };
        let status = record
            .status
            .map_or_else(|| "unknown".to_owned(), |s| s.to_string());
        *report.outcomes.entry(status).or_default() += 1;
        if record.status == Some(Status::Failed)
            && let Some(error) = &record.error
            && error.code.as_str() == "MAX_DELIVERIES"
        {
            report.poison.push((*id, error.message.clone()));
        }
        let history: serde_json::Value =
            serde_json::from_str(record.history.as_deref().unwrap_or("[]")).unwrap_or_default();
        let attempts: Vec<&serde_json::Value> = history.as_array().into_iter().flatten().collect();
        for (n, attempt) in attempts.iter().enumerate() {
            if attempt["status"] != "taken_over" {
                continue;
            }
            let (Some(worker), Some(at)) = (
                attempt["worker"].as_str(),
                attempt["finished_at_ms"]
                    .as_str()
                    .and_then(|t| t.parse::<u64>().ok()),
            ) else {
                continue;
            };
            // The fault that took its worker down: the last one before the
            // take-over.
            let Some(fault) = by_worker
                .get(worker)
                .and_then(|list| list.iter().rev().find(|f| f.at_ms <= at))
            else {
                continue;
            };
            let latency = at - fault.at_ms;
            // The attempt after it, or the record's own for the last.
            let to = attempts
                .get(n + 1)
                .and_then(|next| next["worker"].as_str())
                .or(record.worker.as_deref())
                .unwrap_or("?");
            report.take_overs.push(TakeOver {
                latency_ms: latency,
                id: *id,
                class: record
                    .class
                    .map_or_else(|| "?".to_owned(), |c| c.to_string()),
                kill: fault.kill,
                from: worker.to_owned(),
                to: to.to_owned(),
            });
            if fault.kill {
                report.after_kill.push(latency);
            } else {
                report.after_stop.push(latency);
            }
        }
    }
    Ok(report)
}

fn print(report: &Report, faults: &[Fault], ttl: Duration, took: Duration) -> ExitCode {
    let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    let mut rows = vec![
        [
            "faults",
            "hit",
            "tasks held",
            "taken over",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "max ms",
        ]
        .map(String::from)
        .to_vec(),
    ];
    let mut all: Vec<u64> = Vec::new();
    for (label, kill, latencies) in [
        ("SIGKILL", true, &report.after_kill),
        ("SIGSTOP", false, &report.after_stop),
    ] {
        let hit: Vec<&Fault> = faults.iter().filter(|f| f.kill == kill).collect();
        let mut sorted = latencies.clone();
        sorted.sort_unstable();
        all.extend(&sorted);
        rows.push(vec![
            label.to_owned(),
            hit.len().to_string(),
            hit.iter().map(|f| f.held).sum::<usize>().to_string(),
            sorted.len().to_string(),
            quantile(&sorted, 0.5),
            quantile(&sorted, 0.9),
            quantile(&sorted, 0.99),
            quantile(&sorted, 1.0),
        ]);
    }
    all.sort_unstable();
    rows.push(vec![
        "all".to_owned(),
        faults.len().to_string(),
        faults.iter().map(|f| f.held).sum::<usize>().to_string(),
        all.len().to_string(),
        quantile(&all, 0.5),
        quantile(&all, 0.9),
        quantile(&all, 0.99),
        quantile(&all, 1.0),
    ]);
    println!(
        "\nreclaim latency: a worker's kill or stop to each of its tasks' take-over by another worker"
    );
    print!("{}", table::render(&rows));
    let mut slowest: Vec<&TakeOver> = report.take_overs.iter().collect();
    slowest.sort_by_key(|t| std::cmp::Reverse(t.latency_ms));
    for t in slowest.iter().take(3) {
        println!(
            "slow take-over: {} ms, {} task {} of {} ({}), taken by {}",
            table::thousands(t.latency_ms),
            t.class,
            t.id,
            t.from,
            if t.kill { "killed" } else { "stopped" },
            t.to
        );
    }
    let mut outcomes: Vec<_> = report.outcomes.iter().collect();
    outcomes.sort();
    println!(
        "\ntasks: {} in {:.1} s",
        outcomes
            .iter()
            .map(|(s, n)| format!("{n} {s}"))
            .collect::<Vec<_>>()
            .join(", "),
        took.as_secs_f64()
    );
    for (id, message) in &report.poison {
        println!("dead-lettered as poison: {id}: {message}");
    }
    let p50 = at(&all, 0.5);
    let p99 = at(&all, 0.99);
    let fast = p50.is_none_or(|p| p <= ttl_ms + 1_000) && p99.is_none_or(|p| p <= 2 * ttl_ms);
    let clean = report.poison.is_empty()
        && report
            .outcomes
            .iter()
            .all(|(status, _)| status == "succeeded");
    println!(
        "target: median <= TTL + 1 s ({} ms), p99 <= 2 x TTL ({} ms): {}; every task succeeded: {}",
        ttl_ms + 1_000,
        2 * ttl_ms,
        if fast { "met" } else { "MISSED" },
        if clean { "yes" } else { "NO" }
    );
    if fast && clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn at(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let index = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted.get(index).copied()
}

fn quantile(sorted: &[u64], q: f64) -> String {
    at(sorted, q).map_or_else(|| "-".to_owned(), table::thousands)
}

fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// xorshift64: the fault schedule and the task mix, reproducible by seed.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        if n == 0 { 0 } else { self.0 % n }
    }
}
