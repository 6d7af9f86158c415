//! `tandem bench`: queue overhead with no-op tasks, in the phases of the
//! peer benchmark (`../shared/peers/`), so the figures compare side by side.
//!
//! - enqueue: the producers alone submit N tasks (no worker runs), then W
//!   worker processes start on the filled queue: submitted/s, and
//!   consumed/s from the first to the last completion.
//! - drain: workers idle and ready; the producers submit N back to back
//!   while the workers consume: submitted/s and completed/s (N over first
//!   submit to last completion).
//! - latency: one producer submits at a steady rate for a duration:
//!   latency p50/p99/max.
//!
//! "Completed" is stricter than the peers' "the handler ran": a task counts
//! when its producer's `wait` returned, i.e. the result is committed and
//! acknowledged in Redis and the producer was notified. Latency is measured
//! from just before the submit call to that moment. With `--notices off`
//! the enqueue and drain phases submit fire-and-forget tasks
//! (`Task::without_notice`), as the peers' producers do: nothing notifies
//! the producer, and a task counts as completed at its commit, by the
//! record's `finished_at_ms` (read once the run's streams are empty and its
//! cost figures taken).
//!
//! Two phases measure flow control instead, and run only when named
//! (`--phases delayed,rate-limit`; see `bench_flow`): how late delayed
//! tasks enter their streams and start, and how close a rate limit's start
//! rate stays to the limit with workers competing.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use tandem_shared::Config;
use tandem_shared::kind::builtin::Noop;
use tandem_shared::store::Store;
use tokio::sync::mpsc;

use super::bench_cost::{Snapshot, process_cpu_s, processes_cpu_s};
use super::local::{LocalRedis, LocalWorkers};
use super::table;
use tandem_producer::{Producer, Task, TaskHandle};
use tandem_shared::TaskId;
use tandem_shared::wire::field;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Enqueue,
    Drain,
    Latency,
    /// Delayed tasks: lateness of promotion and start (`--n` tasks due
    /// over `--duration` s, `--backlog` more a day ahead).
    Delayed,
    /// A rate limit of `--rate`/s on the no-op kind, `--workers`
    /// competing, for `--duration` s.
    RateLimit,
    /// The ceiling: the enqueue phase's work done with raw stream commands
    /// (XADD; XREADGROUP; XACK + XDEL + result SET), no Lua, no client
    /// logic (see `bench_ceiling`).
    Ceiling,
    /// The floor: the drain phase's work done by scripts that write only
    /// what Tandem's guarantees and views need of a task, and a blocking
    /// `XREADGROUP` per consumer (see `bench_floor`).
    Floor,
    /// The floor of the enqueue phase's consume: the queue filled by the
    /// floor's submits, then consumed by its consumers.
    FloorConsume,
    /// A deep backlog: tasks waiting across all priorities, at 10,000,
    /// 100,000, ... up to `--n`: memory per waiting task, `tandem queues`
    /// time, claim cost per task (see `bench_backlog`).
    Backlog,
    /// A workflow: a chain of `--n` no-op nodes (see `bench_workflow`).
    Chain,
    /// A workflow: `--n` no-op nodes fanned out from one and fanned in
    /// to one (a group and a chord).
    Fan,
}

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// No-op tasks per run of the enqueue and drain phases.
    #[arg(long, default_value_t = 20_000)]
    pub n: usize,
    /// Worker processes.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Tasks each worker runs at once.
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Most tasks a worker claims per round trip (default: the setting).
    #[arg(long)]
    pub claim_batch: Option<usize>,
    /// Tasks each worker claims ahead of its free slots (the `prefetch`
    /// setting; default: the setting, 0). With a prefetch a worker commits
    /// the tasks that end within `commit_linger_ms` in one round trip.
    #[arg(long)]
    pub prefetch: Option<usize>,
    /// Producers (connections) submitting in parallel.
    #[arg(long, default_value_t = 1)]
    pub producers: usize,
    /// Tasks per submit call: 1 is one awaited submit per task; more uses
    /// `submit_many` (one round trip per batch).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    #[arg(long, value_delimiter = ',', default_value = "enqueue,drain,latency")]
    pub phases: Vec<Phase>,
    /// Tasks per second in the latency phase.
    #[arg(long, default_value_t = 500.0)]
    pub rate: f64,
    /// Seconds the latency phase lasts.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Runs of each phase; the table shows the median and the range.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// For the delayed phase: delayed tasks waiting a day ahead in the same
    /// set while it runs.
    #[arg(long, default_value_t = 0)]
    pub backlog: usize,
    /// Also write every run's figures to this JSON file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Lifecycle events on, off, or both interleaved (`on,off`: each run
    /// of a phase once with events and once without, alternating), to
    /// measure what they cost. Default: the `events` setting.
    #[arg(long, value_delimiter = ',')]
    pub events: Vec<Switch>,
    /// Completion notices on (each task's producer waits for its notice),
    /// or off (fire-and-forget submits in the enqueue and drain phases,
    /// completion read from the records afterwards; the latency phase
    /// needs notices).
    #[arg(long, value_enum, default_value = "on")]
    pub notices: Switch,
}

/// `--events`: on or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Switch {
    On,
    Off,
}

/// One run of one phase.
#[derive(Debug, Clone, Serialize)]
struct RunFigures {
    phase: Phase,
    run: usize,
    /// Whether lifecycle events were written.
    events: bool,
    /// Whether each task's commit notified its producer.
    notices: bool,
    tasks: usize,
    submitted_per_s: Option<f64>,
    completed_per_s: Option<f64>,
    latency_p50_ms: Option<f64>,
    latency_p99_ms: Option<f64>,
    latency_max_ms: Option<f64>,
    /// Redis memory still held per task after the run (records, notices).
    redis_bytes_per_task: Option<f64>,
    failed: usize,
    /// Where the time went, per task (see `bench_cost`).
    cost: Option<super::bench_cost::Cost>,
    /// The chain and fan phases' figures (see `bench_workflow`).
    #[serde(skip_serializing_if = "Option::is_none")]
    workflow: Option<super::bench_workflow::WorkflowFigures>,
}

/// When one task was submitted and when its producer saw it finish.
struct Timing {
    submit_started: Instant,
    finished: Instant,
    ok: bool,
}

const PHASE_TIMEOUT: Duration = Duration::from_secs(300);

pub(crate) async fn run(
    mut config: Config,
    redis_url_given: bool,
    args: BenchArgs,
) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.n > 1 && args.workers > 0 && args.producers > 0 && args.batch > 0,
        "n > 1, workers, producers and batch > 0"
    );
    anyhow::ensure!(
        args.notices == Switch::On || !args.phases.contains(&Phase::Latency),
        "--notices off: the latency phase times each task by its notice; run it with notices on"
    );
    let _redis = LocalRedis::unless_given(&mut config, redis_url_given)?;
    println!(
        "tandem bench: redis {}, {} worker processes x concurrency {}{}, {} producer(s), {} per submit call, N = {}{}",
        config.redis_url_redacted(),
        args.workers,
        args.concurrency,
        match args.prefetch {
            Some(n) if n > 0 => format!(" (prefetch {n})"),
            _ => String::new(),
        },
        args.producers,
        if args.batch == 1 {
            "one task".to_owned()
        } else {
            format!("{} tasks", args.batch)
        },
        args.n,
        if args.notices == Switch::Off {
            ", no completion notices"
        } else {
            ""
        }
    );
    // Results are not needed after a run: keep them briefly.
    config.result_ttl_s = 600;
    config.reply_maxlen = (args.n as u64).max(10_000) * 2;

    let switches: Vec<bool> = if args.events.is_empty() {
        vec![config.events]
    } else {
        args.events.iter().map(|s| *s == Switch::On).collect()
    };
    let configured_events = config.events;
    let mut figures = Vec::new();
    for &phase in &args.phases {
        if phase == Phase::Backlog {
            let base = config.prefix.clone();
            config.prefix = format!("{base}-bench-{}-backlog", std::process::id());
            let env = worker_env(&config, &args);
            let outcome = super::bench_backlog::run(&config, &args, &env).await;
            let store = Store::connect(&config).await?;
            if let Err(err) = store.purge_prefix().await {
                tracing::warn!("cannot delete the run's keys: {err}");
            }
            config.prefix = base;
            outcome.context("backlog")?;
            continue;
        }
        if matches!(
            phase,
            Phase::Delayed | Phase::RateLimit | Phase::Chain | Phase::Fan
        ) {
            for run in 1..=args.runs {
                let base = config.prefix.clone();
                config.prefix = format!("{base}-bench-{}-{run}", std::process::id());
                let outcome = match phase {
                    Phase::Delayed => super::bench_flow::delayed(&config, &args)
                        .await
                        .map(|()| None),
                    Phase::Chain => super::bench_workflow::chain(&config, &args).await.map(Some),
                    Phase::Fan => super::bench_workflow::fan(&config, &args).await.map(Some),
                    _ => super::bench_flow::rate_limit(&config, &args)
                        .await
                        .map(|()| None),
                };
                let store = Store::connect(&config).await?;
                if let Err(err) = store.purge_prefix().await {
                    tracing::warn!("cannot delete the run's keys: {err}");
                }
                config.prefix = base;
                let workflow = outcome.with_context(|| format!("{phase:?} run {run}"))?;
                if let Some(workflow) = workflow {
                    figures.push(RunFigures {
                        phase,
                        run,
                        events: config.events,
                        notices: true,
                        tasks: workflow.nodes,
                        submitted_per_s: None,
                        completed_per_s: Some(workflow.nodes as f64 / workflow.wall_s),
                        latency_p50_ms: None,
                        latency_p99_ms: None,
                        latency_max_ms: None,
                        redis_bytes_per_task: None,
                        failed: 0,
                        cost: None,
                        workflow: Some(workflow),
                    });
                }
            }
            continue;
        }
        for run in 1..=args.runs {
            // Interleaved: on, off, on, off... so that drift in a noisy
            // machine hits both alike.
            for &events in &switches {
                let base = config.prefix.clone();
                config.prefix = format!("{base}-bench-{}-{run}", std::process::id());
                config.events = events;
                let outcome = one_run(&config, &args, phase, run).await;
                let store = Store::connect(&config).await?;
                if let Err(err) = store.purge_prefix().await {
                    tracing::warn!("cannot delete the run's keys: {err}");
                }
                config.prefix = base;
                config.events = configured_events;
                let f = outcome.with_context(|| format!("{phase:?} run {run}"))?;
                let label = if switches.len() > 1 {
                    format!(" (events {})", if events { "on" } else { "off" })
                } else {
                    String::new()
                };
                println!("  {phase:?} run {run}{label}: {}", describe(&f));
                figures.push(f);
            }
        }
    }
    if !figures.is_empty() {
        println!();
        print!("{}", summary_table(&figures));
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&figures)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn one_run(
    config: &Config,
    args: &BenchArgs,
    phase: Phase,
    run: usize,
) -> anyhow::Result<RunFigures> {
    let store = Store::connect(config).await?;
    let memory_before = store.used_memory().await;
    let mut producers = Vec::with_capacity(args.producers);
    for _ in 0..args.producers {
        producers.push(Producer::connect(config).await?);
    }
    let env = worker_env(config, args);
    let notices = args.notices == Switch::On;
    let mut figures = RunFigures {
        phase,
        run,
        events: config.events,
        notices,
        tasks: 0,
        submitted_per_s: None,
        completed_per_s: None,
        latency_p50_ms: None,
        latency_p99_ms: None,
        latency_max_ms: None,
        redis_bytes_per_task: None,
        failed: 0,
        cost: None,
        workflow: None,
    };
    let stats_before = Snapshot::take(&store).await;
    let me = std::process::id();
    let producer_cpu_before = process_cpu_s(me);
    // Worker CPU from after their start (registration and settling are
    // not the run's) to the end of the run.
    let mut workers_cpu_before = None;
    // Without notices: the tasks whose records tell when they finished,
    // read after the cost figures are taken, and the submits' first moment.
    let mut unnotified = None;
    let _workers;
    match phase {
        Phase::Enqueue if !notices => {
            let (handles, submit_secs) =
                submit_all(&producers, args.n, args.batch, None, false).await?;
            figures.submitted_per_s = Some(args.n as f64 / submit_secs);
            tokio::time::sleep(Duration::from_millis(500)).await;
            _workers = start_workers(&store, args.workers, &env).await?;
            workers_cpu(&_workers, &mut workers_cpu_before);
            drained(&store).await?;
            unnotified = Some((handles, None));
            figures.tasks = args.n;
        }
        Phase::Drain if !notices => {
            _workers = start_workers(&store, args.workers, &env).await?;
            workers_cpu(&_workers, &mut workers_cpu_before);
            let first_submit_ms = redis_ms(&store).await?;
            let (handles, submit_secs) =
                submit_all(&producers, args.n, args.batch, None, false).await?;
            figures.submitted_per_s = Some(args.n as f64 / submit_secs);
            drained(&store).await?;
            unnotified = Some((handles, Some(first_submit_ms)));
            figures.tasks = args.n;
        }
        Phase::Enqueue => {
            let (handles, submit_secs) =
                submit_all(&producers, args.n, args.batch, None, true).await?;
            figures.submitted_per_s = Some(args.n as f64 / submit_secs);
            // The waits were registered with the submits; start awaiting them
            // before any worker runs.
            let (tx, mut rx) = mpsc::unbounded_channel();
            for (handle, started) in handles {
                spawn_wait(handle, started, tx.clone());
            }
            drop(tx);
            tokio::time::sleep(Duration::from_millis(500)).await;
            _workers = start_workers(&store, args.workers, &env).await?;
            workers_cpu(&_workers, &mut workers_cpu_before);
            let timings = collect(&mut rx, args.n).await?;
            let mut finished: Vec<Instant> = timings.iter().map(|t| t.finished).collect();
            finished.sort();
            let span = finished[finished.len() - 1]
                .duration_since(finished[0])
                .as_secs_f64();
            figures.completed_per_s = Some((args.n - 1) as f64 / span.max(1e-9));
            figures.failed = timings.iter().filter(|t| !t.ok).count();
            figures.tasks = args.n;
        }
        Phase::Drain => {
            _workers = start_workers(&store, args.workers, &env).await?;
            workers_cpu(&_workers, &mut workers_cpu_before);
            let (tx, mut rx) = mpsc::unbounded_channel();
            let first_submit = Instant::now();
            let (_, submit_secs) =
                submit_all(&producers, args.n, args.batch, Some(tx), true).await?;
            let timings = collect(&mut rx, args.n).await?;
            let last = timings
                .iter()
                .map(|t| t.finished)
                .max()
                .unwrap_or(first_submit);
            figures.submitted_per_s = Some(args.n as f64 / submit_secs);
            figures.completed_per_s =
                Some(args.n as f64 / last.duration_since(first_submit).as_secs_f64());
            figures.failed = timings.iter().filter(|t| !t.ok).count();
            latencies(&mut figures, &timings);
            figures.tasks = args.n;
        }
        Phase::Delayed | Phase::RateLimit | Phase::Chain | Phase::Fan | Phase::Backlog => {
            anyhow::bail!("the {phase:?} phase has a runner of its own")
        }
        Phase::Ceiling => {
            _workers = LocalWorkers::default();
            let (submitted, consumed) = super::bench_ceiling::run(
                config,
                args.n,
                args.batch,
                args.workers,
                args.concurrency,
            )
            .await?;
            figures.submitted_per_s = Some(submitted);
            figures.completed_per_s = Some(consumed);
            figures.tasks = args.n;
        }
        Phase::Floor | Phase::FloorConsume => {
            _workers = LocalWorkers::default();
            // As many entries a read as a worker of these settings claims.
            let per_read = args.concurrency + args.prefetch.unwrap_or(0);
            let (submitted, completed) = super::bench_floor::run(
                config,
                args.n,
                args.batch,
                args.workers,
                per_read,
                phase == Phase::FloorConsume,
            )
            .await?;
            figures.submitted_per_s = Some(submitted);
            figures.completed_per_s = Some(completed);
            figures.tasks = args.n;
        }
        Phase::Latency => {
            _workers = start_workers(&store, args.workers, &env).await?;
            workers_cpu(&_workers, &mut workers_cpu_before);
            let producer = &producers[0];
            let total = (args.rate * args.duration).round() as usize;
            let (tx, mut rx) = mpsc::unbounded_channel();
            let start = Instant::now();
            for i in 0..total {
                let due = start + Duration::from_secs_f64(i as f64 / args.rate);
                tokio::time::sleep_until(due.into()).await;
                let submit_started = Instant::now();
                let handle = producer.submit_handle(noop(i)?).await?;
                spawn_wait(handle, submit_started, tx.clone());
            }
            drop(tx);
            let timings = collect(&mut rx, total).await?;
            figures.failed = timings.iter().filter(|t| !t.ok).count();
            latencies(&mut figures, &timings);
            figures.tasks = total;
        }
    }
    let stats_after = Snapshot::take(&store).await;
    // (The ceiling's and the floor's consumers run in this process: their
    // CPU is the producer's figure.)
    let workers_cpu_s = if matches!(phase, Phase::Ceiling | Phase::Floor | Phase::FloorConsume) {
        Some(0.0)
    } else {
        workers_cpu(&_workers, &mut workers_cpu_before)
    };
    let producer_cpu_s = process_cpu_s(me)
        .zip(producer_cpu_before)
        .map(|(a, b)| a - b);
    figures.cost = Some(super::bench_cost::cost(
        &stats_before,
        &stats_after,
        figures.tasks,
        producer_cpu_s,
        workers_cpu_s,
    ));
    if let (Some(before), Some(after)) = (memory_before, store.used_memory().await) {
        figures.redis_bytes_per_task =
            Some(after.saturating_sub(before) as f64 / figures.tasks as f64);
    }
    if let Some((handles, first_submit_ms)) = unnotified {
        let ids: Vec<TaskId> = handles.iter().map(|(h, _)| h.id()).collect();
        let (finished_ms, failed) = finished_by_records(&store, &ids).await?;
        figures.failed = failed;
        let (first, last) = (finished_ms[0], finished_ms[finished_ms.len() - 1]);
        figures.completed_per_s = Some(match first_submit_ms {
            // Drain: N over first submit to last commit.
            Some(start) => args.n as f64 / (last.saturating_sub(start).max(1) as f64 / 1000.0),
            // Consume: between the first and the last commit.
            None => (args.n - 1) as f64 / (last.saturating_sub(first).max(1) as f64 / 1000.0),
        });
    }
    Ok(figures)
}

/// Milliseconds since the Unix epoch by the Redis clock, which stamps the
/// records' times (Redis may run on another host).
async fn redis_ms(store: &Store) -> anyhow::Result<u64> {
    let reply = store.pipeline(&[redis::cmd("TIME")]).await?;
    let time: Vec<u64> = match reply.into_iter().next() {
        Some(value) => redis::from_redis_value(value).context("TIME")?,
        None => anyhow::bail!("TIME: no reply"),
    };
    match time.as_slice() {
        [secs, micros] => Ok(secs * 1000 + micros / 1000),
        other => anyhow::bail!("TIME: unexpected reply {other:?}"),
    }
}

/// Waits until every submitted no-op task was committed for good: its
/// stream is empty (a commit deletes the entry) and so is the class's
/// delayed set (where a retried one would wait). An `XLEN` and a `ZCARD`
/// every 2 ms, a few hundred calls a second.
async fn drained(store: &Store) -> anyhow::Result<()> {
    let class = noop(0)?.preset_class().context("the no-op kind's class")?;
    let stream = store.keys().stream(class, tandem_shared::Priority::Normal);
    let delayed = store.keys().delayed(class);
    let deadline = Instant::now() + PHASE_TIMEOUT;
    loop {
        let mut xlen = redis::cmd("XLEN");
        xlen.arg(&stream);
        let mut zcard = redis::cmd("ZCARD");
        zcard.arg(delayed);
        let replies = store.pipeline(&[xlen, zcard]).await?;
        let left = match replies.as_slice() {
            [redis::Value::Int(queued), redis::Value::Int(retrying)] => queued + retrying,
            other => anyhow::bail!("XLEN {stream}, ZCARD {delayed}: unexpected reply {other:?}"),
        };
        if left == 0 {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{left} tasks still queued in {stream} or {delayed} after {PHASE_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Every task's commit time from its record (`finished_at_ms`, sorted),
/// and how many did not succeed; read 1,000 records per round trip.
async fn finished_by_records(store: &Store, ids: &[TaskId]) -> anyhow::Result<(Vec<u64>, usize)> {
    let class = noop(0)?.preset_class().context("the no-op kind's class")?;
    let mut finished = Vec::with_capacity(ids.len());
    let mut failed = 0;
    for chunk in ids.chunks(1000) {
        let cmds: Vec<redis::Cmd> = chunk
            .iter()
            .map(|id| {
                let mut cmd = redis::cmd("HMGET");
                cmd.arg(store.keys().task(class, id))
                    .arg(field::STATUS)
                    .arg(field::FINISHED_AT_MS);
                cmd
            })
            .collect();
        let replies = store.pipeline(&cmds).await?;
        anyhow::ensure!(
            replies.len() == chunk.len(),
            "{} replies for {} record reads",
            replies.len(),
            chunk.len()
        );
        for (id, reply) in chunk.iter().zip(replies) {
            let values: Vec<Option<String>> = redis::from_redis_value(reply)
                .with_context(|| format!("the record of task {id}"))?;
            let (status, at) = match values.as_slice() {
                [status, at] => (status.as_deref(), at.as_deref()),
                _ => anyhow::bail!("the record of task {id}: HMGET gave {values:?}"),
            };
            let at = at
                .and_then(|at| at.parse::<u64>().ok())
                .with_context(|| format!("task {id} has no finished_at_ms (status {status:?})"))?;
            if status != Some("succeeded") {
                failed += 1;
            }
            finished.push(at);
        }
    }
    finished.sort_unstable();
    anyhow::ensure!(!finished.is_empty(), "no task to time");
    Ok((finished, failed))
}

fn worker_env(config: &Config, args: &BenchArgs) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("TANDEM_REDIS_URL", config.redis_url.clone()),
        ("TANDEM_PREFIX", config.prefix.clone()),
        ("TANDEM_CONCURRENCY", args.concurrency.to_string()),
        ("TANDEM_RESULT_TTL_S", config.result_ttl_s.to_string()),
        ("TANDEM_REPLY_MAXLEN", config.reply_maxlen.to_string()),
        ("TANDEM_LOG_LEVEL", "warn".to_owned()),
        ("TANDEM_EVENTS", config.events.to_string()),
    ];
    if let Some(batch) = args.claim_batch {
        env.push(("TANDEM_CLAIM_BATCH", batch.to_string()));
    }
    if let Some(prefetch) = args.prefetch {
        env.push(("TANDEM_PREFETCH", prefetch.to_string()));
    }
    env
}

/// The first call notes the workers' CPU seconds so far in `before` (and
/// returns None); the next returns the CPU they used since.
fn workers_cpu(workers: &LocalWorkers, before: &mut Option<f64>) -> Option<f64> {
    let now = processes_cpu_s(&workers.pids());
    match before.take() {
        None => {
            *before = now;
            None
        }
        Some(b) => now.map(|n| n - b),
    }
}

/// Starts the workers and waits until all are registered, plus a second to
/// settle into their blocking wait (as the peer harness does).
async fn start_workers(
    store: &Store,
    count: usize,
    env: &[(&str, String)],
) -> anyhow::Result<LocalWorkers> {
    let workers = LocalWorkers::start_registered(store, count, env).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(workers)
}

/// The peers' payload, as MessagePack.
fn noop(i: usize) -> anyhow::Result<Task> {
    Ok(Task::of::<Noop>(&noop_payload(i))?)
}

/// The payload every peer's no-op job carries (see ../shared/peers), the
/// same bytes for Tandem's tasks and the raw ceiling's entries.
pub(super) fn noop_payload(i: usize) -> rmpv::Value {
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    rmpv::Value::Map(vec![
        ("i".into(), (i as u64).into()),
        ("ts".into(), now_us.into()),
        ("user_id".into(), ((i % 1000) as u64).into()),
        (
            "email".into(),
            format!("user{}@example.com", i % 1000).into(),
        ),
        ("amount".into(), 12.5.into()),
    ])
}

/// Each producer submits its share of `n` tasks, `batch` per call, each call
/// awaited before the next; without `notices`, fire-and-forget tasks. With
/// `waits`, every task's wait starts as soon as its submit returns; without,
/// the handles are returned with their submit start times. Also returns the
/// seconds from the first call to the last return.
async fn submit_all(
    producers: &[Producer],
    n: usize,
    batch: usize,
    waits: Option<mpsc::UnboundedSender<Timing>>,
    notices: bool,
) -> anyhow::Result<(Vec<(TaskHandle, Instant)>, f64)> {
    let shares = producers.len();
    let started = Instant::now();
    let mut jobs = Vec::with_capacity(shares);
    for (p, producer) in producers.iter().enumerate() {
        let producer = producer.clone();
        let waits = waits.clone();
        let indices: Vec<usize> = (p..n).step_by(shares).collect();
        jobs.push(tokio::spawn(async move {
            let mut out = Vec::with_capacity(indices.len());
            for chunk in indices.chunks(batch) {
                let tasks = chunk
                    .iter()
                    .map(|&i| noop(i).map(|t| if notices { t } else { t.without_notice() }))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let submit_started = Instant::now();
                let handles = if tasks.len() == 1 {
                    let task = tasks.into_iter().next().context("one task")?;
                    vec![producer.submit_handle(task).await?]
                } else {
                    producer.submit_handles(tasks).await?
                };
                for handle in handles {
                    match &waits {
                        Some(tx) => spawn_wait(handle, submit_started, tx.clone()),
                        None => out.push((handle, submit_started)),
                    }
                }
            }
            anyhow::Ok(out)
        }));
    }
    let mut handles = Vec::with_capacity(n);
    for job in jobs {
        handles.extend(job.await??);
    }
    Ok((handles, started.elapsed().as_secs_f64()))
}

fn spawn_wait(handle: TaskHandle, submit_started: Instant, tx: mpsc::UnboundedSender<Timing>) {
    tokio::spawn(async move {
        let ok = handle
            .wait(PHASE_TIMEOUT)
            .await
            .is_ok_and(|outcome| outcome.succeeded());
        let _ = tx.send(Timing {
            submit_started,
            finished: Instant::now(),
            ok,
        });
    });
}

async fn collect(
    rx: &mut mpsc::UnboundedReceiver<Timing>,
    n: usize,
) -> anyhow::Result<Vec<Timing>> {
    let mut timings = Vec::with_capacity(n);
    let deadline = tokio::time::Instant::now() + PHASE_TIMEOUT;
    while timings.len() < n {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(t)) => timings.push(t),
            Ok(None) => break,
            Err(_) => anyhow::bail!(
                "only {} of {n} tasks finished within {PHASE_TIMEOUT:?}",
                timings.len()
            ),
        }
    }
    anyhow::ensure!(
        timings.len() == n,
        "only {} of {n} tasks finished",
        timings.len()
    );
    Ok(timings)
}

fn latencies(figures: &mut RunFigures, timings: &[Timing]) {
    let mut ms: Vec<f64> = timings
        .iter()
        .map(|t| t.finished.duration_since(t.submit_started).as_secs_f64() * 1000.0)
        .collect();
    ms.sort_by(f64::total_cmp);
    let pick = |q: f64| {
        let rank = ((q / 100.0) * ms.len() as f64).ceil() as usize;
        ms[rank.clamp(1, ms.len()) - 1]
    };
    if !ms.is_empty() {
        figures.latency_p50_ms = Some(pick(50.0));
        figures.latency_p99_ms = Some(pick(99.0));
        figures.latency_max_ms = ms.last().copied();
    }
}

fn describe(f: &RunFigures) -> String {
    let mut parts = Vec::new();
    if let Some(v) = f.submitted_per_s {
        parts.push(format!("submitted {}/s", table::thousands(v as u64)));
    }
    if let Some(v) = f.completed_per_s {
        parts.push(format!("completed {}/s", table::thousands(v as u64)));
    }
    if let (Some(p50), Some(p99), Some(max)) =
        (f.latency_p50_ms, f.latency_p99_ms, f.latency_max_ms)
    {
        parts.push(format!(
            "latency p50 {} p99 {} max {} ms",
            table::ms(p50),
            table::ms(p99),
            table::ms(max)
        ));
    }
    if let Some(b) = f.redis_bytes_per_task {
        parts.push(format!("{b:.0} B/task kept in Redis"));
    }
    if f.failed > 0 {
        parts.push(format!("{} FAILED", f.failed));
    }
    let mut line = parts.join(", ");
    if let Some(cost) = &f.cost {
        line.push_str("\n    ");
        line.push_str(&super::bench_cost::describe(cost));
    }
    line
}

/// `median [min–max]` of one figure over the runs of one phase.
fn spread(values: &[f64], format: fn(f64) -> String) -> String {
    if values.is_empty() {
        return "-".to_owned();
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    if sorted.len() == 1 {
        return format(median);
    }
    format!(
        "{} [{}–{}]",
        format(median),
        format(sorted[0]),
        format(sorted[sorted.len() - 1])
    )
}

fn summary_table(figures: &[RunFigures]) -> String {
    let per_s = |v: f64| table::thousands(v.round() as u64);
    let mut rows = vec![
        [
            "phase",
            "runs",
            "submitted/s",
            "completed/s",
            "p50 ms",
            "p99 ms",
            "max ms",
            "B/task in Redis",
            "Redis us/task",
            "client CPU us/task",
        ]
        .map(String::from)
        .to_vec(),
    ];
    let both = figures.iter().any(|f| f.events) && figures.iter().any(|f| !f.events);
    let cases = [
        Phase::Enqueue,
        Phase::Drain,
        Phase::Latency,
        Phase::Ceiling,
        Phase::Floor,
        Phase::FloorConsume,
    ]
    .into_iter()
    .flat_map(|phase| [(phase, true), (phase, false)]);
    for (phase, events) in cases {
        let runs: Vec<&RunFigures> = figures
            .iter()
            .filter(|f| f.phase == phase && f.events == events)
            .collect();
        if runs.is_empty() {
            continue;
        }
        let pick = |get: fn(&RunFigures) -> Option<f64>| {
            runs.iter().filter_map(|f| get(f)).collect::<Vec<_>>()
        };
        let name = match phase {
            Phase::Enqueue => "enqueue, then consume",
            Phase::Drain => "drain",
            Phase::Latency => "latency",
            Phase::Delayed => "delayed",
            Phase::RateLimit => "rate-limit",
            Phase::Ceiling => "ceiling (raw XADD, XREADGROUP, XACK+XDEL+SET)",
            Phase::Floor => "floor (drain, only the writes the guarantees need)",
            Phase::FloorConsume => "floor (enqueue, then consume)",
            Phase::Backlog => "backlog",
            Phase::Chain => "chain",
            Phase::Fan => "fan",
        };
        let name = if both {
            format!("{name}, events {}", if events { "on" } else { "off" })
        } else {
            name.to_owned()
        };
        rows.push(vec![
            name,
            runs.len().to_string(),
            spread(&pick(|f| f.submitted_per_s), per_s),
            spread(&pick(|f| f.completed_per_s), per_s),
            spread(&pick(|f| f.latency_p50_ms), table::ms),
            spread(&pick(|f| f.latency_p99_ms), table::ms),
            spread(&pick(|f| f.latency_max_ms), table::ms),
            spread(&pick(|f| f.redis_bytes_per_task), |v| format!("{v:.0}")),
            spread(&pick(|f| f.cost.as_ref().map(|c| c.redis_us)), |v| {
                format!("{v:.1}")
            }),
            spread(
                &pick(|f| {
                    let c = f.cost.as_ref()?;
                    Some(c.producer_cpu_us? + c.workers_cpu_us?)
                }),
                |v| format!("{v:.0}"),
            ),
        ]);
    }
    table::render(&rows)
}
