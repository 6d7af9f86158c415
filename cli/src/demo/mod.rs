//! `tandem demo`: the README's main job. A local Redis (unless `REDIS_URL`
//! is set), worker processes, a mixed workload over every priority with a
//! progress bar, a summary, and a clean exit, also on Ctrl-C.
//!
//! `tandem demo --trading` runs the trading kinds instead, on a fleet: one
//! worker per GPU plus a CPU worker (`tandem-worker fleet`), with the
//! seed's two GPUs simulated where the host has none. Its summary says
//! which device ran each workload (and each shard of a split one) and
//! prices one option against Black-Scholes, so the numbers can be checked.
//!
//! `tandem demo --trading --pipeline` runs issue 14's trading pipeline on
//! that fleet as one workflow ([`pipeline`]) and prints each step's
//! worker, device, wait and run time.
//!
//! Here: the command, its arguments, and the submit-and-wait loop both
//! runs share ([`drive`]). [`plain`] is the mixed workload, [`pipeline`] the workflow, [`trading`] the
//! fleet, [`trading_workload`] its tasks and their market data, and
//! [`summary`] the tables printed at the end.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use tandem_shared::store::Store;
use tandem_shared::{Class, Config, Priority, Status, TaskId};
use tokio::signal::unix::{Signal, SignalKind, signal};

use super::local::LocalRedis;
use tandem_producer::{Producer, Task};

mod pipeline;
mod plain;
mod summary;
mod trading;
mod trading_workload;

#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Tasks to submit [default: 2000; 200 with --trading].
    #[arg(long)]
    pub tasks: Option<usize>,
    /// Worker processes to start (with --trading the fleet decides: one per
    /// GPU plus a CPU worker).
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Tasks each worker runs at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Run the trading workloads (option pricing, VaR, indicators,
    /// candlestick patterns, portfolio optimization) on a GPU fleet: this
    /// host's GPUs, or two simulated ones when it has none. Exits 1 when a
    /// task did not succeed.
    #[arg(long)]
    pub trading: bool,
    /// With --trading: run the trading pipeline as ONE workflow instead
    /// (indicators + patterns -> features -> predict_batch with a seeded
    /// model -> book -> portfolio_opt -> Monte Carlo VaR), and print where
    /// each step ran, how long it took and waited, and the result. Exits 1
    /// when the workflow did not succeed.
    #[arg(long, requires = "trading")]
    pub pipeline: bool,
    /// With --pipeline: the symbols (at least 10).
    #[arg(long, default_value_t = 1000, requires = "pipeline")]
    pub symbols: usize,
    /// Keep the run's keys in Redis (when REDIS_URL is given), so that
    /// `tandem flow status ID` (with the printed TANDEM_PREFIX) can show
    /// the run afterwards.
    #[arg(long)]
    pub keep: bool,
}

/// One task of a workload, before it is submitted.
struct Planned {
    task: Task,
    /// What the summary groups it by: the kind, or for the trading
    /// workload the kind and what the task is for.
    label: &'static str,
    priority: Priority,
    /// Keep its result for the summary (the option priced against
    /// Black-Scholes).
    keep_result: bool,
}

/// One finished task, as the summary needs it.
struct Done {
    id: TaskId,
    kind: &'static str,
    class: Option<Class>,
    priority: Priority,
    status: Status,
    latency_ms: f64,
    worker: String,
    /// `cpu` or the GPU's UUID, from the task's record.
    device: String,
    /// The MessagePack result, where [`Planned::keep_result`] asked for it.
    result: Option<Vec<u8>>,
}

/// What [`drive`] leaves behind.
struct Run {
    done: Vec<Done>,
    elapsed: Duration,
    interrupted: bool,
}

/// Ctrl-C and SIGTERM, once installed ours to handle.
struct Interrupts {
    ctrl_c: Signal,
    term: Signal,
}

impl Interrupts {
    fn install() -> std::io::Result<Self> {
        Ok(Self {
            ctrl_c: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
        })
    }

    /// Resolves at the next Ctrl-C or SIGTERM.
    async fn recv(&mut self) {
        tokio::select! {
            _ = self.ctrl_c.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}

pub(crate) async fn run(
    mut config: Config,
    redis_url_given: bool,
    args: DemoArgs,
) -> anyhow::Result<ExitCode> {
    let _redis = LocalRedis::unless_given(&mut config, redis_url_given)?;
    match &_redis {
        Some(redis) => println!(
            "started a local redis-server at {} (set REDIS_URL to use your own)",
            redis.url
        ),
        None => println!("using Redis at {}", config.redis_url_redacted()),
    }
    // A prefix of its own, so the demo never touches real queues.
    config.prefix = format!("{}-demo-{}", config.prefix, std::process::id());
    let store = Store::connect(&config).await?;
    let code = if args.pipeline {
        pipeline::pipeline(&config, &store, &args).await?
    } else if args.trading {
        trading::trading(&config, &store, &args).await?
    } else {
        plain::plain(&config, &store, &args).await?
    };
    if redis_url_given && args.keep {
        println!("kept the run's keys under the prefix {}", config.prefix);
    } else if redis_url_given && let Err(err) = store.purge_prefix().await {
        tracing::warn!("cannot delete the run's keys: {err}");
    }
    Ok(code)
}

/// The environment every demo worker gets.
fn worker_env(config: &Config, args: &DemoArgs) -> Vec<(&'static str, String)> {
    vec![
        ("TANDEM_REDIS_URL", config.redis_url.clone()),
        ("TANDEM_PREFIX", config.prefix.clone()),
        ("TANDEM_CONCURRENCY", args.concurrency.to_string()),
        ("TANDEM_LOG_LEVEL", "warn".to_owned()),
    ]
}

/// Submits `count` tasks of `workload` and waits for each, with a progress
/// bar, until all are done or the user interrupts.
async fn drive(
    producer: &Producer,
    count: usize,
    workload: impl Fn(usize) -> anyhow::Result<Planned>,
    interrupts: &mut Interrupts,
) -> anyhow::Result<Run> {
    let bar = ProgressBar::new(count as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {elapsed_precise} [{bar:40}] {pos}/{len} tasks  {per_sec}  {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );

    let run_started = Instant::now();
    // Each wait runs as a task of its own and reports here: a wait must be
    // polled to release what it holds on the shared connection, so none may
    // sit idle in a local collection while this loop awaits a submit.
    let (finished_tx, mut finished) = tokio::sync::mpsc::unbounded_channel();
    let mut done: Vec<Done> = Vec::with_capacity(count);
    let mut in_flight = 0usize;
    let mut interrupted = false;
    let mut next = 0usize;
    while next < count || in_flight > 0 {
        // Keep up to 500 tasks in flight, submitted in batches of 100.
        if next < count && in_flight < 500 {
            let batch = (next..(next + 100).min(count))
                .map(&workload)
                .collect::<anyhow::Result<Vec<Planned>>>()?;
            next += batch.len();
            let submitted_at = Instant::now();
            let tasks = batch.iter().map(|p| p.task.clone()).collect();
            let handles = producer.submit_handles(tasks).await?;
            for (handle, planned) in handles.into_iter().zip(batch) {
                in_flight += 1;
                let finished = finished_tx.clone();
                tokio::spawn(async move {
                    let outcome = handle.wait(Duration::from_secs(120)).await;
                    let _ = finished.send((planned, submitted_at.elapsed(), outcome));
                });
            }
            continue;
        }
        tokio::select! {
            Some((planned, latency, outcome)) = finished.recv() => {
                in_flight -= 1;
                let outcome = outcome?;
                if outcome.status == Status::Failed {
                    bar.set_message(format!("last failure: {}", outcome.failure().map(|f| f.code.to_string()).unwrap_or_default()));
                }
                let Planned { task, label, priority, keep_result } = planned;
                done.push(Done {
                    id: outcome.id,
                    kind: label,
                    class: task.preset_class(),
                    priority,
                    status: outcome.status,
                    latency_ms: latency.as_secs_f64() * 1000.0,
                    worker: outcome.record.worker.clone().unwrap_or_default(),
                    device: outcome.record.device.clone().unwrap_or_default(),
                    result: keep_result.then(|| outcome.record.result.clone()).flatten(),
                });
                bar.inc(1);
            }
            () = interrupts.recv() => {
                interrupted = true;
                break;
            }
        }
    }
    let elapsed = run_started.elapsed();
    bar.finish_and_clear();
    Ok(Run {
        done,
        elapsed,
        interrupted,
    })
}
