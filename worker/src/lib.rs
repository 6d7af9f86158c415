//! The Tandem worker: claims the tasks of its classes from Redis streams in
//! strict priority order, runs them through registered handlers, and commits
//! each outcome exactly once.
//!
//! # Layout
//!
//! - [`handler`]: the [`Handler`] trait kinds implement, and the [`Registry`].
//! - `builtin`: handlers of the built-in kinds (`noop`, `sleep`, `echo`, `fail`).
//! - `dispatcher`: the claim loop (commit, claim, start, wait).
//! - `executor`: runs one task; turns results, errors and panics into commits.
//! - `waker`: wakes an idle worker when a task arrives (blocking `XREAD`).
//! - `cancel`: stops running tasks a producer cancelled.
//! - `reaper`: finds workers whose heartbeat lapsed, so their tasks are
//!   taken over at once.
//! - `heartbeat`: keeps the worker's registry record fresh.
//! - [`shutdown`]: the stop signal; SIGTERM and SIGINT trigger it.
//!
//! # Example
//!
//! ```no_run
//! use tandem_shared::Config;
//! use tandem_worker::{Registry, shutdown};
//!
//! # async fn example() -> anyhow::Result<()> {
//! let config = Config::load(None)?;
//! let report = tandem_worker::run(&config, Registry::with_builtins(), shutdown::on_signals()?).await?;
//! println!("{} tasks succeeded", report.succeeded);
//! # Ok(()) }
//! ```

mod builtin;
mod cancel;
mod dispatcher;
mod executor;
pub mod handler;
mod heartbeat;
mod reaper;
pub mod shutdown;
mod stats;
mod waker;

use std::sync::Arc;
use std::time::Duration;

use tandem_shared::Config;
use tandem_shared::store::{Store, StoreError, StreamRef};
use tandem_shared::wire::WorkerInfo;

pub use dispatcher::WorkerReport;
pub use handler::{Handler, Registry, Retry, TaskContext, TaskError};
pub use shutdown::Shutdown;

/// The device this worker runs tasks on. Workers bound to GPUs come with
/// device detection; until then every worker is a CPU worker.
const DEVICE: &str = "cpu";

/// Why a worker could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("cannot reach Redis at {url}: {source}")]
    Connect { url: String, source: StoreError },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Runs a worker until `shutdown` fires, then drains it: no new claims,
/// running tasks get `shutdown_grace_ms` to finish, what is still running
/// then goes back to its stream for another worker, the registry record
/// goes. Redis unreachable at start is retried (with a log line each time)
/// until it answers or `shutdown` fires.
pub async fn run(
    config: &Config,
    registry: Registry,
    mut shutdown: Shutdown,
) -> Result<WorkerReport, WorkerError> {
    let store = connect(config, &mut shutdown).await?;
    let worker_id = if config.worker_id.is_empty() {
        default_worker_id()
    } else {
        config.worker_id.clone()
    };
    let streams: Vec<StreamRef> = store
        .keys()
        .streams_in_claim_order(&config.classes)
        .into_iter()
        .map(|(class, priority, key)| StreamRef {
            class,
            priority,
            key,
        })
        .collect();
    store.ensure_groups(&streams).await?;

    let concurrency = config.effective_concurrency();
    let stats = Arc::new(stats::Stats::default());
    let mut heartbeat = heartbeat::Heartbeat {
        store: store.clone(),
        info: WorkerInfo {
            id: worker_id.clone(),
            host: hostname(),
            pid: std::process::id(),
            device: DEVICE.to_owned(),
            classes: config.classes.clone(),
            concurrency,
            state: "running".into(),
            started_at_ms: heartbeat::now_ms(),
            version: env!("CARGO_PKG_VERSION").into(),
            ..WorkerInfo::default()
        },
        stats: Arc::clone(&stats),
        interval: Duration::from_millis(config.heartbeat_interval_ms),
        ttl_ms: config.heartbeat_ttl_ms,
    };
    heartbeat.beat().await?;
    let heartbeat_task = tokio::spawn(heartbeat.run());
    let running = cancel::Running::default();
    let cancel_task = tokio::spawn(cancel::listen(store.clone(), running.clone()));
    let (dead_tx, dead_rx) = tokio::sync::mpsc::unbounded_channel();
    let reaper_task = tokio::spawn(reaper::run(
        store.clone(),
        streams.clone(),
        worker_id.clone(),
        Duration::from_millis(config.heartbeat_interval_ms),
        dead_tx,
    ));

    tracing::info!(
        worker = %worker_id,
        device = DEVICE,
        concurrency,
        classes = ?config.classes,
        kinds = ?registry.kinds(),
        redis = %config.redis_url_redacted(),
        prefix = %config.prefix,
        "worker ready"
    );
    let dispatcher = dispatcher::Dispatcher {
        store: store.clone(),
        executor: Arc::new(executor::Executor {
            registry,
            worker_id: worker_id.clone(),
            device: DEVICE.to_owned(),
            max_payload_bytes: config.max_payload_bytes,
            signer: tandem_shared::signature::Signer::new(config.signing_key.expose()),
            backoff: executor::Backoff {
                base: Duration::from_millis(config.retry_base_ms),
                max: Duration::from_millis(config.retry_max_ms),
            },
        }),
        streams,
        worker_id: worker_id.clone(),
        device: DEVICE.to_owned(),
        concurrency,
        claim_batch: config.claim_batch,
        aging_ms: config.aging_ms,
        block_ms: config.block_ms,
        lease_timeout: Duration::from_millis(config.lease_timeout_ms),
        promote_interval: Duration::from_millis(config.heartbeat_interval_ms),
        max_deliveries: config.max_deliveries,
        shutdown_grace: Duration::from_millis(config.shutdown_grace_ms),
        running,
        stats,
        dead_workers: dead_rx,
    };
    let report = dispatcher.run(shutdown).await;

    heartbeat_task.abort();
    cancel_task.abort();
    reaper_task.abort();
    if let Err(err) = store.deregister(&worker_id).await {
        tracing::warn!("cannot remove the registry record: {err}");
    }
    tracing::info!(
        worker = %worker_id,
        succeeded = report.succeeded,
        failed = report.failed,
        "worker stopped"
    );
    Ok(report)
}

/// Connects to Redis, retrying with backoff while it is unreachable (a fleet
/// may start before its Redis). Errors no retry can fix (a wrong password, a
/// refused script) end the worker at once.
async fn connect(config: &Config, shutdown: &mut Shutdown) -> Result<Store, WorkerError> {
    let url = config.redis_url_redacted();
    let mut delay = Duration::from_millis(100);
    loop {
        match Store::connect(config).await {
            Ok(store) => return Ok(store),
            Err(source) if source.is_connection() && !shutdown.is_triggered() => {
                tracing::warn!("cannot reach Redis at {url}: {source}; retrying in {delay:?}");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shutdown.wait() => return Err(WorkerError::Connect { url, source }),
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(source) => return Err(WorkerError::Connect { url, source }),
        }
    }
}

/// `host-pid-xxxx`: unique per process incarnation, so a restarted worker
/// never inherits its predecessor's pending entries by name.
fn default_worker_id() -> String {
    let random = uuid::Uuid::now_v7().simple().to_string();
    let suffix = &random[random.len() - 4..];
    format!("{}-{}-{}", hostname(), std::process::id(), suffix)
}

fn hostname() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_default();
    let clean: String = raw
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if clean.is_empty() {
        "localhost".into()
    } else {
        clean
    }
}
