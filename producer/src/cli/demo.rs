//! `tandem demo`: the README's main job. A local Redis (unless `REDIS_URL`
//! is set), worker processes, a mixed workload over every priority with a
//! progress bar, a summary, and a clean exit, also on Ctrl-C.
//!
//! `tandem demo --trading` runs the trading kinds instead, on a fleet: one
//! worker per GPU plus a CPU worker (`tandem-worker fleet`), with the
//! seed's two GPUs simulated where the host has none. Its summary says
//! which device ran each workload (and each shard of a split one) and
//! prices one option against Black-Scholes, so the numbers can be checked.

use std::collections::{BTreeMap, HashMap};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use tandem_shared::device::{Health, Role};
use tandem_shared::kind::builtin::{Echo, Fail, FailParams, Noop, Sleep, SleepParams};
use tandem_shared::kind::indicators::{IndicatorSpec, Indicators, IndicatorsParams, Series};
use tandem_shared::kind::monte_carlo::{MonteCarlo, MonteCarloOutput, MonteCarloParams};
use tandem_shared::kind::patterns::{OhlcSeries, Patterns, PatternsParams, Thresholds};
use tandem_shared::kind::portfolio_opt::{Objective, PortfolioOpt, PortfolioOptParams};
use tandem_shared::kind::risk::{HistoricalRisk, MonteCarloRisk, Risk, RiskParams};
use tandem_shared::store::Store;
use tandem_shared::wire::WorkerInfo;
use tandem_shared::{Class, Config, Priority, Status, TaskId};
use tokio::signal::unix::{Signal, SignalKind, signal};

use super::local::{LocalRedis, LocalWorkers, detect_gpus};
use super::table;
use crate::{Producer, Task};

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
}

/// The seed's host, simulated where there is no GPU: a 4070 Ti (the
/// primary) and a 3060 Ti (the secondary), paced so that a task takes as
/// long, relative to the other card, as it would on those GPUs.
const SIMULATED_GPUS: &str =
    "RTX 4070 Ti, 12 GiB, 40.09 TFLOPS, paced; RTX 3060 Ti, 8 GiB, 16.2 TFLOPS, paced";

/// How long a stopping fleet member lets its running task finish: the
/// demo's tasks are disposable, and Ctrl-C should take seconds.
const FLEET_SHUTDOWN_GRACE_MS: &str = "3000";

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
    let code = if args.trading {
        trading(&config, &store, &args).await?
    } else {
        plain(&config, &store, &args).await?
    };
    if redis_url_given && let Err(err) = store.purge_prefix().await {
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

/// The mixed workload of built-in kinds on `--workers` CPU workers.
async fn plain(config: &Config, store: &Store, args: &DemoArgs) -> anyhow::Result<ExitCode> {
    let tasks = args.tasks.unwrap_or(2_000);
    let env = worker_env(config, args);
    let mut workers = LocalWorkers::start_registered(store, args.workers, &env).await?;
    println!(
        "started {} workers x concurrency {} (prefix {})",
        args.workers, args.concurrency, config.prefix
    );

    let producer = Producer::connect(config).await?;
    // Installed now, so a Ctrl-C (or a SIGTERM) from here on is ours to handle.
    let mut interrupts = Interrupts::install()?;
    let run = drive(&producer, tasks, |i| Ok(workload(i)), &mut interrupts).await?;
    if run.interrupted {
        println!("interrupted: stopping workers and cleaning up");
    } else {
        summary(&run.done, run.elapsed);
    }
    workers.stop(Duration::from_secs(10));
    Ok(if run.interrupted {
        ExitCode::from(130)
    } else {
        ExitCode::SUCCESS
    })
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
                    class: task.class,
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

/// The i-th task of the mixed workload: mostly cheap tasks at normal and
/// low priority, some sleeps at high, echoes at critical, a few failures.
fn workload(i: usize) -> Planned {
    let (task, kind, priority) = match i % 20 {
        0 => (
            Task::of::<Fail>(&FailParams {
                code: "E_DEMO".into(),
                message: "a deliberate failure".into(),
                retry: false,
            }),
            "fail",
            Priority::Normal,
        ),
        1 | 2 | 11 | 12 => (
            Task::of::<Sleep>(&SleepParams {
                ms: 5 + (i as u64 * 7) % 36,
            }),
            "sleep",
            Priority::High,
        ),
        3 | 13 => (
            Task::of::<Echo>(&rmpv::Value::Map(vec![
                ("symbol".into(), "ES".into()),
                ("bid".into(), (4_000.25 + i as f64).into()),
            ])),
            "echo",
            Priority::Critical,
        ),
        4 | 5 | 14 | 15 => (
            Task::of::<Echo>(&format!("order {i}").into()),
            "echo",
            Priority::Normal,
        ),
        n if n % 2 == 0 => (
            Task::of::<Noop>(&rmpv::Value::Nil),
            "noop",
            Priority::Normal,
        ),
        _ => (Task::of::<Noop>(&rmpv::Value::Nil), "noop", Priority::Low),
    };
    // Every spec above is within bounds, so building cannot fail.
    let task = task.unwrap_or_else(|_| Task::raw("noop", vec![0xc0]));
    Planned {
        task: task.priority(priority),
        label: kind,
        priority,
        keep_result: false,
    }
}

/// The trading workload on a fleet: this host's GPUs, or the seed's two
/// simulated, plus the CPU worker the fleet adds.
async fn trading(config: &Config, store: &Store, args: &DemoArgs) -> anyhow::Result<ExitCode> {
    let tasks = args.tasks.unwrap_or(200);
    // Installed first: starting a fleet on real GPUs takes a while (each
    // worker compiles its kernels), and a Ctrl-C meanwhile must clean up.
    let mut interrupts = Interrupts::install()?;
    let detected = detect_gpus()?;
    let mut env = worker_env(config, args);
    env.push(("TANDEM_FLEET_CPU_WORKER", "true".to_owned()));
    env.push((
        "TANDEM_SHUTDOWN_GRACE_MS",
        FLEET_SHUTDOWN_GRACE_MS.to_owned(),
    ));
    let mut unset = Vec::new();
    let expected = if detected.gpus.is_empty() {
        println!("no GPU here ({})", detected.source);
        println!(
            "simulated: RTX 4070 Ti (12 GiB, 40.09 TFLOPS) and RTX 3060 Ti (8 GiB, 16.2 TFLOPS), \
             paced: their tasks run on this CPU, each stretched to that GPU's relative speed"
        );
        env.push(("TANDEM_SIMULATE_GPUS", SIMULATED_GPUS.to_owned()));
        // Whatever hid the real GPUs must not hide the simulated ones.
        unset.push("CUDA_VISIBLE_DEVICES");
        2
    } else {
        let whose = if detected.gpus.iter().any(|g| g.simulated) {
            "simulated GPUs (TANDEM_SIMULATE_GPUS)"
        } else {
            "this host's GPUs"
        };
        let gpus: Vec<String> = detected
            .gpus
            .iter()
            .map(|g| format!("{} {} ({}, {})", g.index, g.name, g.uuid, g.role))
            .collect();
        println!("{whose}: {}", gpus.join("; "));
        detected.gpus.len()
    };
    let mut workers = LocalWorkers::start_fleet(&env, &unset)?;
    // A real GPU's worker compiles its kernels before it takes tasks.
    let bound = Duration::from_secs(if detected.gpus.iter().all(|g| g.simulated) {
        30
    } else {
        180
    });
    let Some(live) =
        wait_fleet_ready(store, &mut workers, expected + 1, bound, &mut interrupts).await?
    else {
        println!("interrupted: stopping workers and cleaning up");
        workers.stop(Duration::from_secs(10));
        return Ok(ExitCode::from(130));
    };
    let columns = Column::from_registry(&live);
    println!(
        "started tandem-worker fleet: {} workers x concurrency {} (prefix {})\n",
        live.len(),
        args.concurrency,
        config.prefix
    );
    print!("{}", legend(&columns));
    // Every member re-reads the registry once a heartbeat; after this long
    // each one routes knowing all the others.
    tokio::time::sleep(Duration::from_millis(config.heartbeat_interval_ms + 200)).await;

    let producer = Producer::connect(config).await?;
    let run = drive(&producer, tasks, trading_workload, &mut interrupts).await?;
    let code = if run.interrupted {
        println!("interrupted: stopping workers and cleaning up");
        ExitCode::from(130)
    } else {
        let shards = shard_devices(&producer, &run.done).await?;
        let all_succeeded = trading_summary(&run, &columns, &shards);
        if all_succeeded {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    };
    workers.stop(Duration::from_secs(10));
    Ok(code)
}

/// Waits until the fleet's `expected` members are registered and healthy;
/// `None` when interrupted first.
async fn wait_fleet_ready(
    store: &Store,
    workers: &mut LocalWorkers,
    expected: usize,
    bound: Duration,
    interrupts: &mut Interrupts,
) -> anyhow::Result<Option<Vec<WorkerInfo>>> {
    let started = Instant::now();
    loop {
        workers.check_alive()?;
        let live = store.workers().await?;
        if live.len() >= expected && live.iter().all(|w| w.health == Health::Healthy) {
            return Ok(Some(live));
        }
        if started.elapsed() > bound {
            let states: Vec<String> = live
                .iter()
                .map(|w| format!("{} {}", w.device, w.health))
                .collect();
            anyhow::bail!(
                "the fleet did not have {expected} healthy workers within {} s (has: {})",
                bound.as_secs(),
                states.join(", ")
            );
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
            () = interrupts.recv() => return Ok(None),
        }
    }
}

/// A device of the fleet, a column of the summary.
#[derive(Debug, Clone, PartialEq)]
struct Column {
    /// `primary`, `secondary`, `gpu` (one GPU), `gpuN` (more), or `cpu`.
    label: String,
    /// `cpu`, or the GPU's UUID: what task records name.
    device: String,
    /// The GPU's name, `(simulated)` included; `CPU worker` for the CPU.
    name: String,
    role: Role,
}

impl Column {
    /// One per live worker's device: the GPUs by index, then the CPU.
    fn from_registry(live: &[WorkerInfo]) -> Vec<Column> {
        let mut gpus: Vec<&WorkerInfo> = live.iter().filter(|w| w.device != "cpu").collect();
        gpus.sort_by_key(|w| (w.device_index, w.device.clone()));
        gpus.dedup_by(|a, b| a.device == b.device);
        let pair = gpus.len() == 2;
        let mut columns: Vec<Column> = gpus
            .iter()
            .map(|w| Column {
                label: match (gpus.len(), w.role) {
                    (1, _) => "gpu".to_owned(),
                    (_, Role::Heavy) if pair => "primary".to_owned(),
                    (_, Role::Light) if pair => "secondary".to_owned(),
                    _ => format!("gpu{}", w.device_index.unwrap_or_default()),
                },
                device: w.device.clone(),
                name: w.device_name.clone(),
                role: w.role,
            })
            .collect();
        if live.iter().any(|w| w.device == "cpu") {
            columns.push(Column {
                label: "cpu".to_owned(),
                device: "cpu".to_owned(),
                name: "CPU worker".to_owned(),
                role: Role::Cpu,
            });
        }
        columns
    }

    /// The column of `device`, when it is one of the fleet's.
    fn of<'a>(columns: &'a [Column], device: &str) -> Option<&'a Column> {
        columns.iter().find(|c| c.device == device)
    }
}

fn legend(columns: &[Column]) -> String {
    let mut rows = vec![["", "device", "name", "role"].map(String::from).to_vec()];
    for c in columns {
        rows.push(vec![
            c.label.clone(),
            c.device.clone(),
            c.name.clone(),
            c.role.to_string(),
        ]);
    }
    table::render(&rows)
}

/// The i-th task of the trading workload, in a cycle of 20: option quotes
/// (high), a book of options split across the GPUs (normal), VaR by Monte
/// Carlo before trading (critical) and from history (normal, one of them
/// on the CPU worker), indicators (normal) and candlestick patterns (low)
/// over a batch of symbols, a portfolio optimization (normal) and a large
/// revaluation sent as `heavy` (low). Sized so that a laptop runs the
/// cycle in about a second.
fn trading_workload(i: usize) -> anyhow::Result<Planned> {
    let seed = 0x7a4d_e000 + i as u64;
    let (task, label, priority) = match i % 20 {
        0 | 10 => (
            Task::of::<MonteCarlo>(&option_book(i))?,
            "monte_carlo book",
            Priority::Normal,
        ),
        1 | 2 | 3 | 11 | 12 | 13 | 19 => (
            Task::of::<MonteCarlo>(&option_quote(i))?,
            "monte_carlo quote",
            Priority::High,
        ),
        4 | 14 => (
            Task::of::<Risk>(&var_monte_carlo(seed))?,
            "risk VaR monte carlo",
            Priority::Critical,
        ),
        5 => (
            Task::of::<Risk>(&var_historical(seed))?,
            "risk VaR historical",
            Priority::Normal,
        ),
        15 => (
            // Small enough for the CPU: what the fleet's CPU worker is for.
            Task::of::<Risk>(&var_historical(seed))?.class(Class::Cpu),
            "risk VaR historical (cpu)",
            Priority::Normal,
        ),
        6 | 16 => (
            Task::of::<Indicators>(&indicators(seed))?,
            "indicators",
            Priority::Normal,
        ),
        7 | 17 => (
            Task::of::<Patterns>(&patterns(seed))?,
            "patterns",
            Priority::Low,
        ),
        8 | 18 => (
            Task::of::<PortfolioOpt>(&portfolio(seed, i % 20 == 8))?,
            "portfolio_opt",
            Priority::Normal,
        ),
        _ => (
            Task::of::<MonteCarlo>(&revaluation(seed))?.class(Class::Heavy),
            "monte_carlo revaluation (heavy)",
            Priority::Low,
        ),
    };
    Ok(Planned {
        task: task.priority(priority),
        label,
        priority,
        keep_result: i == 0,
    })
}

/// The option the summary prices against Black-Scholes: task 0.
const REFERENCE: MonteCarloParams = MonteCarloParams {
    s0: 100.0,
    strike: 100.0,
    rate: 0.03,
    dividend: 0.01,
    sigma: 0.2,
    maturity: 1.0,
    steps: 64,
    paths: 1 << 17,
    seed: 20_240_607,
    percentiles: Vec::new(),
};

/// A book's worth of paths: 32 blocks of 4096, so it splits across GPUs.
fn option_book(i: usize) -> MonteCarloParams {
    if i == 0 {
        return REFERENCE;
    }
    MonteCarloParams {
        strike: 90.0 + (i % 7) as f64 * 5.0,
        seed: REFERENCE.seed + i as u64,
        percentiles: vec![5.0, 50.0, 95.0],
        ..REFERENCE
    }
}

/// A quick quote across the smile: one block of paths, run whole.
fn option_quote(i: usize) -> MonteCarloParams {
    MonteCarloParams {
        s0: 100.0,
        strike: 80.0 + (i % 9) as f64 * 5.0,
        rate: 0.03,
        dividend: 0.0,
        sigma: 0.18 + (i % 5) as f64 * 0.03,
        maturity: 0.25 * (1 + i % 4) as f64,
        steps: 32,
        paths: 4096,
        seed: 0x9e37 + i as u64,
        percentiles: Vec::new(),
    }
}

/// A year of daily steps over many paths: work for the primary GPU.
fn revaluation(seed: u64) -> MonteCarloParams {
    MonteCarloParams {
        steps: 252,
        paths: 1 << 16,
        seed,
        percentiles: vec![1.0, 50.0, 99.0],
        ..REFERENCE
    }
}

/// Assets in the risk and portfolio workloads.
const ASSETS: usize = 25;

/// A one-factor market of `ASSETS` assets: betas, idiosyncratic daily
/// volatilities, and the factor's daily volatility.
struct Market {
    beta: Vec<f64>,
    idio: Vec<f64>,
    factor: f64,
}

impl Market {
    fn new(rng: &mut SplitMix64) -> Self {
        Market {
            beta: (0..ASSETS).map(|_| 0.6 + 0.8 * rng.uniform()).collect(),
            idio: (0..ASSETS).map(|_| 0.008 + 0.012 * rng.uniform()).collect(),
            factor: 0.011,
        }
    }

    /// The daily covariance, row-major: symmetric to the bit, and positive
    /// definite (a rank-one factor plus a positive diagonal).
    fn covariance(&self) -> Vec<f64> {
        let mut cov = vec![0.0; ASSETS * ASSETS];
        for i in 0..ASSETS {
            for j in 0..ASSETS {
                cov[i * ASSETS + j] = self.beta[i] * self.beta[j] * self.factor * self.factor;
            }
            cov[i * ASSETS + i] += self.idio[i] * self.idio[i];
        }
        cov
    }

    /// `days` rows of daily returns drawn from the model.
    fn returns(&self, days: usize, rng: &mut SplitMix64) -> Vec<f64> {
        let mut returns = Vec::with_capacity(days * ASSETS);
        for _ in 0..days {
            let factor = self.factor * rng.normal();
            for a in 0..ASSETS {
                returns.push(0.0002 + self.beta[a] * factor + self.idio[a] * rng.normal());
            }
        }
        returns
    }
}

/// Position values of a book, in currency units.
fn positions(rng: &mut SplitMix64) -> Vec<f64> {
    (0..ASSETS)
        .map(|_| (200_000.0 + 800_000.0 * rng.uniform()).round())
        .collect()
}

/// One-day VaR of the book before it trades, by Monte Carlo.
fn var_monte_carlo(seed: u64) -> RiskParams {
    let mut rng = SplitMix64(seed);
    let market = Market::new(&mut rng);
    RiskParams::MonteCarlo(MonteCarloRisk {
        weights: positions(&mut rng),
        mu: vec![0.0002; ASSETS],
        covariance: market.covariance(),
        scenarios: 32_768,
        seed,
        confidence: vec![0.95, 0.99],
    })
}

/// One-day VaR from two years of daily returns.
fn var_historical(seed: u64) -> RiskParams {
    let mut rng = SplitMix64(seed);
    let market = Market::new(&mut rng);
    RiskParams::Historical(HistoricalRisk {
        weights: positions(&mut rng),
        returns: market.returns(500, &mut rng),
        confidence: vec![0.95, 0.99],
    })
}

/// Symbols in the indicator and pattern batches, and bars per symbol (a
/// trading day of one-minute bars).
const SYMBOLS: usize = 12;
const BARS: usize = 390;

/// A day of one-minute OHLC bars per symbol, from a random walk.
fn bars(seed: u64) -> Vec<OhlcSeries> {
    let mut rng = SplitMix64(seed);
    (0..SYMBOLS)
        .map(|s| {
            let mut close = 20.0 + 200.0 * rng.uniform();
            let mut series = OhlcSeries {
                symbol: format!("SYM{s:02}"),
                open: Vec::with_capacity(BARS),
                high: Vec::with_capacity(BARS),
                low: Vec::with_capacity(BARS),
                close: Vec::with_capacity(BARS),
            };
            for _ in 0..BARS {
                let open = close;
                close = open * (0.0012 * rng.normal()).exp();
                let top = open.max(close) * (1.0 + 0.0008 * rng.uniform());
                let bottom = open.min(close) * (1.0 - 0.0008 * rng.uniform());
                series.open.push(open);
                series.high.push(top);
                series.low.push(bottom);
                series.close.push(close);
            }
            series
        })
        .collect()
}

fn indicators(seed: u64) -> IndicatorsParams {
    IndicatorsParams {
        series: bars(seed)
            .into_iter()
            .map(|s| Series {
                symbol: s.symbol,
                closes: s.close,
            })
            .collect(),
        indicators: vec![
            IndicatorSpec::Rsi { period: 14 },
            IndicatorSpec::Macd {
                fast: 12,
                slow: 26,
                signal: 9,
            },
            IndicatorSpec::Bollinger { period: 20, k: 2.0 },
        ],
    }
}

fn patterns(seed: u64) -> PatternsParams {
    PatternsParams {
        series: bars(seed),
        thresholds: Thresholds::default(),
    }
}

/// A long-only portfolio of the market's assets: the greatest Sharpe ratio
/// with at most 15 % in any one, or the least variance.
fn portfolio(seed: u64, max_sharpe: bool) -> PortfolioOptParams {
    let mut rng = SplitMix64(seed);
    let market = Market::new(&mut rng);
    PortfolioOptParams {
        // Daily returns: the factor's premium by beta, plus some alpha.
        mu: (0..ASSETS)
            .map(|a| 0.0003 * market.beta[a] + 0.0002 * rng.normal())
            .collect(),
        covariance: market.covariance(),
        risk_free: 0.0001,
        objective: if max_sharpe {
            Objective::MaxSharpe
        } else {
            Objective::MinVariance
        },
        max_weight: 0.15,
        tolerance: 1e-10,
        max_iterations: 100_000,
        seed,
        samples: 8_192,
    }
}

/// A small, fast generator for the demo's market data (SplitMix64).
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    fn normal(&mut self) -> f64 {
        let u = 1.0 - self.uniform();
        let v = self.uniform();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

/// Where the shards of each split task ran: parent id to shard devices.
async fn shard_devices(
    producer: &Producer,
    done: &[Done],
) -> anyhow::Result<HashMap<TaskId, Vec<String>>> {
    let mut shards = HashMap::new();
    for d in done {
        if d.class != Some(Class::Parallel) || d.status != Status::Succeeded {
            continue;
        }
        let Some(record) = producer.record(d.id).await? else {
            continue;
        };
        if record.shard_ids.is_empty() {
            continue;
        }
        let mut devices = Vec::with_capacity(record.shard_ids.len());
        for shard in &record.shard_ids {
            let device = producer.record(*shard).await?.and_then(|r| r.device);
            devices.push(device.unwrap_or_default());
        }
        shards.insert(d.id, devices);
    }
    Ok(shards)
}

/// Counts per fleet column (in column order), then devices outside it.
fn by_column<'a>(columns: &[Column], devices: impl Iterator<Item = &'a str>) -> Vec<usize> {
    let mut counts = vec![0; columns.len() + 1];
    for device in devices {
        match columns.iter().position(|c| c.device == device) {
            Some(at) => counts[at] += 1,
            None => counts[columns.len()] += 1,
        }
    }
    counts
}

/// Prints the trading summary; true when every task succeeded.
fn trading_summary(run: &Run, columns: &[Column], shards: &HashMap<TaskId, Vec<String>>) -> bool {
    let done = &run.done;
    let rate = done.len() as f64 / run.elapsed.as_secs_f64().max(1e-9);
    println!(
        "\n{} tasks in {:.2} s: {} tasks/s, submit to result seen by the producer\n",
        table::thousands(done.len() as u64),
        run.elapsed.as_secs_f64(),
        table::thousands(rate as u64)
    );

    // Devices no column names (a worker that is not the fleet's) go in
    // `other`, shown only when there are some.
    let other = done
        .iter()
        .any(|d| !d.device.is_empty() && Column::of(columns, &d.device).is_none());
    let mut header: Vec<String> = [
        "workload",
        "class",
        "priority",
        "tasks",
        "succeeded",
        "failed",
        "p50 ms",
        "p99 ms",
    ]
    .map(String::from)
    .to_vec();
    header.extend(columns.iter().map(|c| c.label.clone()));
    if other {
        header.push("other".to_owned());
    }
    let mut rows = vec![header];
    let mut by_label: BTreeMap<&str, Vec<&Done>> = BTreeMap::new();
    for d in done {
        by_label.entry(d.kind).or_default().push(d);
    }
    for (label, list) in &by_label {
        let mut latencies: Vec<f64> = list.iter().map(|d| d.latency_ms).collect();
        latencies.sort_by(f64::total_cmp);
        let succeeded = list
            .iter()
            .filter(|d| d.status == Status::Succeeded)
            .count();
        let mut row = vec![
            (*label).to_owned(),
            list[0].class.map(|c| c.to_string()).unwrap_or_default(),
            list[0].priority.to_string(),
            list.len().to_string(),
            succeeded.to_string(),
            (list.len() - succeeded).to_string(),
            table::ms(percentile(&latencies, 50.0)),
            table::ms(percentile(&latencies, 99.0)),
        ];
        let ran = list
            .iter()
            .filter(|d| !d.device.is_empty())
            .map(|d| d.device.as_str());
        let counts = by_column(columns, ran);
        let shown = if other { counts.len() } else { columns.len() };
        row.extend(counts[..shown].iter().map(usize::to_string));
        rows.push(row);
    }
    println!(
        "by workload, with the device that ran each task (a split task: merged it): {}\n",
        columns
            .iter()
            .map(|c| format!("{} = {}", c.label, c.name))
            .collect::<Vec<_>>()
            .join(", ")
    );
    print!("{}", table::render(&rows));

    if !shards.is_empty() {
        println!(
            "\nsplit tasks: each cut into shards that ran as tasks of their own, the faster GPU taking more\n"
        );
        let other = shards
            .values()
            .flatten()
            .any(|device| Column::of(columns, device).is_none());
        let mut header = ["workload", "tasks", "shards"].map(String::from).to_vec();
        header.extend(columns.iter().map(|c| c.label.clone()));
        if other {
            header.push("other".to_owned());
        }
        let mut rows = vec![header];
        let mut by_label: BTreeMap<&str, Vec<&Vec<String>>> = BTreeMap::new();
        for d in done {
            if let Some(devices) = shards.get(&d.id) {
                by_label.entry(d.kind).or_default().push(devices);
            }
        }
        for (label, parents) in &by_label {
            let devices = parents.iter().flat_map(|s| s.iter().map(String::as_str));
            let mut row = vec![
                (*label).to_owned(),
                parents.len().to_string(),
                parents.iter().map(|s| s.len()).sum::<usize>().to_string(),
            ];
            let counts = by_column(columns, devices);
            let shown = if other { counts.len() } else { columns.len() };
            row.extend(counts[..shown].iter().map(usize::to_string));
            rows.push(row);
        }
        print!("{}", table::render(&rows));
    }

    println!("\nby priority (higher priorities overtake lower ones waiting in the queue)\n");
    print!("{}", priority_table(done));

    println!("\nby device (tasks: the record's device; shards: of split tasks)\n");
    let mut rows = vec![
        ["", "device", "name", "tasks", "shards"]
            .map(String::from)
            .to_vec(),
    ];
    for c in columns {
        let tasks = done.iter().filter(|d| d.device == c.device).count();
        let ran_shards = shards
            .values()
            .flatten()
            .filter(|s| **s == c.device)
            .count();
        rows.push(vec![
            c.label.clone(),
            c.device.clone(),
            c.name.clone(),
            tasks.to_string(),
            ran_shards.to_string(),
        ]);
    }
    print!("{}", table::render(&rows));

    if let Some(reference) = done.iter().find(|d| d.result.is_some()) {
        print!(
            "\n{}",
            option_check(reference, shards.get(&reference.id), columns)
        );
    }

    let failed = done
        .iter()
        .filter(|d| d.status != Status::Succeeded)
        .count();
    if failed == 0 {
        println!(
            "\nall {} tasks succeeded",
            table::thousands(done.len() as u64)
        );
    } else {
        println!(
            "\n{failed} of {} tasks did not succeed (`tandem dlq list` shows why while the run's keys last)",
            table::thousands(done.len() as u64)
        );
    }
    failed == 0
}

/// Task 0's European call and put, priced by Monte Carlo, against the
/// Black-Scholes formula.
fn option_check(reference: &Done, shards: Option<&Vec<String>>, columns: &[Column]) -> String {
    let p = &REFERENCE;
    let Some(output) = reference
        .result
        .as_deref()
        .and_then(|bytes| tandem_shared::msgpack::decode::<MonteCarloOutput>(bytes).ok())
    else {
        return format!(
            "option check: task {} has no result ({})\n",
            reference.id, reference.status
        );
    };
    let ran = match shards {
        Some(devices) => {
            let counts = by_column(columns, devices.iter().map(String::as_str));
            let on: Vec<String> = columns
                .iter()
                .zip(&counts)
                .filter(|(_, n)| **n > 0)
                .map(|(c, n)| format!("{} {n}", c.label))
                .collect();
            format!("split into {} shards: {}", devices.len(), on.join(", "))
        }
        None => format!(
            "run whole on {}",
            Column::of(columns, &reference.device).map_or(reference.device.as_str(), |c| &c.label)
        ),
    };
    let (call, put) = black_scholes(p.s0, p.strike, p.rate, p.dividend, p.sigma, p.maturity);
    let mut text = format!(
        "option check: European options, S = {} K = {} r = {} % q = {} % sigma = {} % T = {} year, \
         {} paths x {} steps, {ran}\n\n",
        p.s0,
        p.strike,
        p.rate * 100.0,
        p.dividend * 100.0,
        p.sigma * 100.0,
        p.maturity,
        table::thousands(output.paths),
        p.steps,
    );
    let mut rows = vec![
        [
            "",
            "Monte Carlo",
            "standard error",
            "Black-Scholes",
            "difference",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for (name, estimate, exact) in [
        ("call", output.european_call, call),
        ("put", output.european_put, put),
    ] {
        let off = (estimate.price - exact) / estimate.std_error;
        rows.push(vec![
            name.to_owned(),
            format!("{:.4}", estimate.price),
            format!("{:.4}", estimate.std_error),
            format!("{exact:.4}"),
            format!("{off:+.2} s.e."),
        ]);
    }
    text.push_str(&table::render(&rows));
    text
}

/// European call and put prices under Black-Scholes with a continuous
/// dividend yield.
fn black_scholes(s: f64, k: f64, r: f64, q: f64, sigma: f64, t: f64) -> (f64, f64) {
    let vol = sigma * t.sqrt();
    let d1 = ((s / k).ln() + (r - q + sigma * sigma / 2.0) * t) / vol;
    let d2 = d1 - vol;
    let (spot, strike) = (s * (-q * t).exp(), k * (-r * t).exp());
    let call = spot * norm_cdf(d1) - strike * norm_cdf(d2);
    let put = strike * norm_cdf(-d2) - spot * norm_cdf(-d1);
    (call, put)
}

/// The standard normal distribution function, through the Numerical
/// Recipes `erfc` (relative error below 1.2e-7: far below the Monte Carlo
/// error it is compared with).
fn norm_cdf(x: f64) -> f64 {
    let z = x.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.5 * z);
    let erfc = t
        * (-z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87
                                        + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    if x >= 0.0 {
        1.0 - 0.5 * erfc
    } else {
        0.5 * erfc
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn summary(done: &[Done], elapsed: Duration) {
    let rate = done.len() as f64 / elapsed.as_secs_f64().max(1e-9);
    println!(
        "\n{} tasks in {:.2} s: {} tasks/s, submit to result seen by the producer\n",
        table::thousands(done.len() as u64),
        elapsed.as_secs_f64(),
        table::thousands(rate as u64)
    );

    let mut rows = vec![
        ["kind", "tasks", "succeeded", "failed", "p50 ms", "p99 ms"]
            .map(String::from)
            .to_vec(),
    ];
    let mut by_kind: BTreeMap<&str, Vec<&Done>> = BTreeMap::new();
    for d in done {
        by_kind.entry(d.kind).or_default().push(d);
    }
    for (kind, list) in &by_kind {
        let mut latencies: Vec<f64> = list.iter().map(|d| d.latency_ms).collect();
        latencies.sort_by(f64::total_cmp);
        rows.push(vec![
            (*kind).to_owned(),
            list.len().to_string(),
            list.iter()
                .filter(|d| d.status == Status::Succeeded)
                .count()
                .to_string(),
            list.iter()
                .filter(|d| d.status != Status::Succeeded)
                .count()
                .to_string(),
            table::ms(percentile(&latencies, 50.0)),
            table::ms(percentile(&latencies, 99.0)),
        ]);
    }
    print!("{}", table::render(&rows));

    println!("\nby priority (higher priorities overtake lower ones waiting in the queue)\n");
    print!("{}", priority_table(done));

    println!("\nby worker\n");
    let mut rows = vec![["worker", "tasks"].map(String::from).to_vec()];
    let mut by_worker: BTreeMap<&str, usize> = BTreeMap::new();
    for d in done {
        *by_worker.entry(d.worker.as_str()).or_default() += 1;
    }
    for (worker, count) in by_worker {
        rows.push(vec![worker.to_owned(), count.to_string()]);
    }
    print!("{}", table::render(&rows));
}

/// Latency by priority: the table both summaries show.
fn priority_table(done: &[Done]) -> String {
    let mut rows = vec![
        ["priority", "tasks", "p50 ms", "p99 ms"]
            .map(String::from)
            .to_vec(),
    ];
    for priority in Priority::ALL {
        let mut latencies: Vec<f64> = done
            .iter()
            .filter(|d| d.priority == *priority)
            .map(|d| d.latency_ms)
            .collect();
        if latencies.is_empty() {
            continue;
        }
        latencies.sort_by(f64::total_cmp);
        rows.push(vec![
            priority.to_string(),
            latencies.len().to_string(),
            table::ms(percentile(&latencies, 50.0)),
            table::ms(percentile(&latencies, 99.0)),
        ]);
    }
    table::render(&rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workload_mixes_every_priority() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..40 {
            seen.insert(workload(i).priority);
        }
        assert_eq!(seen.len(), 4);
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 50.0), 2.0);
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 99.0), 4.0);
    }

    #[test]
    fn every_trading_task_is_valid_and_the_cycle_covers_every_class_and_priority() {
        let mut classes = std::collections::HashSet::new();
        let mut priorities = std::collections::HashSet::new();
        for i in 0..20 {
            let planned = trading_workload(i).unwrap_or_else(|e| panic!("task {i}: {e:#}"));
            classes.extend(planned.task.class);
            priorities.insert(planned.priority);
            assert_eq!(planned.keep_result, i == 0);
        }
        assert_eq!(classes.len(), Class::ALL.len(), "{classes:?}");
        assert_eq!(priorities.len(), Priority::ALL.len(), "{priorities:?}");
    }

    #[test]
    fn black_scholes_matches_published_values() {
        // Hull's example: S = 42, K = 40, r = 10 %, sigma = 20 %, T = 0.5.
        let (call, put) = black_scholes(42.0, 40.0, 0.1, 0.0, 0.2, 0.5);
        assert!((call - 4.76).abs() < 0.005 && (put - 0.81).abs() < 0.005);
        // Put-call parity with a dividend yield.
        let (s, k, r, q, t) = (100.0, 95.0, 0.03, 0.01, 2.0);
        let (call, put) = black_scholes(s, k, r, q, 0.3, t);
        let parity = s * f64::exp(-q * t) - k * f64::exp(-r * t);
        assert!((call - put - parity).abs() < 1e-6);
    }

    #[test]
    fn columns_name_the_pair_primary_and_secondary_and_the_cpu_last() {
        let worker = |device: &str, role, index| WorkerInfo {
            device: device.to_owned(),
            role,
            device_index: index,
            device_name: format!("{device} name"),
            ..WorkerInfo::default()
        };
        let live = [
            worker("cpu", Role::Cpu, None),
            worker("SIM-1", Role::Light, Some(1)),
            worker("SIM-0", Role::Heavy, Some(0)),
        ];
        let labels: Vec<String> = Column::from_registry(&live)
            .into_iter()
            .map(|c| c.label)
            .collect();
        assert_eq!(labels, ["primary", "secondary", "cpu"]);
        let single = Column::from_registry(&live[..2]);
        assert_eq!(single[0].label, "gpu");
        let columns = Column::from_registry(&live);
        assert_eq!(
            by_column(&columns, ["SIM-0", "cpu", "SIM-0", "GPU-x"].into_iter()),
            [2, 0, 1, 1]
        );
    }
}
