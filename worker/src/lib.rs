//! The Tandem worker: claims the tasks of its classes from Redis streams in
//! strict priority order, runs them through registered handlers, and commits
//! each outcome exactly once.
//!
//! # Layout
//!
//! In three layers, the lowest first; a module imports only from its own
//! layer and the ones listed before it (the handler layer nothing from the
//! loop, the utilities nothing from either).
//!
//! Utilities and state:
//! - `host`: the host's name (wall-clock milliseconds come from
//!   `tandem_shared::clock`).
//! - [`device`]: GPU detection, binding a worker to its device, the health
//!   probe and the GPU paths it found loaded (kernel modules, cuBLAS),
//!   simulated GPUs and their faults, the device memory ledger.
//! - `running`: the running-task table: each task's cancel token, the entry
//!   it holds (its lease) and the device memory it declared.
//!
//! How kinds plug in (the handler layer):
//! - [`error`]: [`TaskError`] and its [`Retry`] policy.
//! - [`model_cache`]: resident models, reloaded on new versions.
//! - [`context`]: the [`TaskContext`] a task sees, the `Stop` a computation
//!   checks between steps, the `Work` that counts its blocking threads.
//! - [`handler`]: the [`Handler`] trait kinds implement.
//! - [`compute`]: the [`Compute`] trait (CPU twin, GPU path).
//! - [`split`]: the [`Split`] trait, its type-erased `Splitter`, shard
//!   planning, shard runs and the merge.
//! - [`kind_table`]: the [`KindTable`], kind names to handlers and the GPU
//!   paths each needs.
//! - `kinds`: the kinds this crate defines (`builtin`: `noop`, `sleep`,
//!   `echo`, `fail` and the test kinds; one file per compute and model
//!   kind) and `KindTable::with_builtins`.
//!
//! The loop:
//! - `stats`: the worker's task counters.
//! - `executor`: runs one task; turns results, errors and panics into commits.
//! - `doorbell`: wakes an idle worker when a task arrives (blocking `XREAD`).
//! - `cancel`: the pub/sub listener that stops tasks a producer cancelled.
//! - `promoter`: moves due delayed tasks into their streams on time.
//! - `progress`: writes running tasks' progress reports (`progress.lua`).
//! - `watch`: reads the registry: live workers (for routing) and dead ones
//!   (whose tasks are taken over at once).
//! - `router`: this worker's routing rules, from the registry and its role.
//! - `dispatcher`: the claim loop (commit, claim, start, wait).
//! - `prefetch`: the tasks claimed ahead of the free slots, started the
//!   moment a slot frees.
//! - `schedule`: the claim loop's decisions without I/O: what each round
//!   trip carries, when to wake, the Redis retry backoff.
//! - `heartbeat`: keeps the worker's registry record fresh.
//! - `recurring`: fires the recurring schedules that come due (every
//!   worker runs it; the fire script's fence makes each tick fire once).
//! - `data_watch`: before each heartbeat, tells whether Redis lost its data
//!   (the classes' canaries) and raises `redis_data_lost` once per fleet.
//! - `metrics`: samples the device and the task counters into the registry
//!   record every `metrics_interval_ms`; `/metrics` for Prometheus.
//! - `blob_cache`: parameters that came as blob references, fetched once
//!   per device and kept up to `blob_cache_bytes`; results above
//!   `blob_threshold_bytes` stored as blobs; a task's parameter blob held
//!   from its claim and given back at its final commit.
//! - `blob_release`: gives back the parameter blobs of tasks that ended
//!   without a worker (cancelled while queued, waiting or delayed; a
//!   workflow's cancel or fail fast), from the classes' `blobs:release`
//!   lists.
//! - `alerts`: raises alerts (hot or underused GPU, failed device, stalled
//!   queue, growing dead letters) into the log and `<prefix>:alerts`.
//! - [`shutdown`]: the stop signal; SIGTERM and SIGINT trigger it.
//! - [`fleet`]: `tandem-worker fleet`, one worker process per GPU plus a
//!   CPU worker, restarted when they die.
//!
//! # Example
//!
//! ```no_run
//! use tandem_shared::Config;
//! use tandem_worker::{KindTable, shutdown};
//!
//! # async fn example() -> anyhow::Result<()> {
//! let config = Config::load(None)?;
//! let report = tandem_worker::run(&config, KindTable::with_builtins(), shutdown::on_signals()?).await?;
//! println!("{} tasks succeeded", report.succeeded);
//! # Ok(()) }
//! ```

mod alerts;
mod blob_cache;
mod blob_release;
mod cancel;
pub mod compute;
pub mod context;
mod data_watch;
pub mod device;
mod dispatcher;
mod doorbell;
pub mod error;
mod executor;
pub mod fleet;
pub mod handler;
mod heartbeat;
mod host;
pub mod kind_table;
mod kinds;
mod metrics;
pub mod model_cache;
mod prefetch;
mod progress;
mod promoter;
mod recurring;
mod router;
mod running;
mod schedule;
pub mod shutdown;
pub mod split;
mod stats;
mod watch;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tandem_shared::Config;
use tandem_shared::device::Health;
use tandem_shared::routing;
use tandem_shared::store::{Store, StoreError, StreamRef};
use tandem_shared::wire::WorkerInfo;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use compute::Compute;
pub use context::TaskContext;
pub use device::{Detection, Device};
pub use dispatcher::WorkerReport;
pub use error::{Retry, TaskError};
pub use handler::Handler;
pub use kind_table::KindTable;
pub use shutdown::Shutdown;
pub use split::Split;

/// The exit status of a worker whose device failed: its fleet restarts it,
/// and the new process probes the device before taking tasks.
pub const EXIT_DEVICE_FAILED: u8 = tandem_shared::exit::DEVICE_FAILED;

/// Why a worker could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("cannot reach Redis at {url}: {source}")]
    Connect { url: String, source: StoreError },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot use device {selector}: {message}")]
    Device { selector: String, message: String },
    #[error(transparent)]
    Blobs(#[from] tandem_shared::blob::BlobError),
}

/// Binds the device `config.device` names: the CPU, or a detected (or
/// simulated) GPU with its role.
pub fn bind_device(config: &Config) -> Result<Device, WorkerError> {
    let fail = |message: String| WorkerError::Device {
        selector: config.device.to_string(),
        message,
    };
    if config.device == tandem_shared::device::DeviceSelector::Cpu {
        return Ok(Device::cpu());
    }
    let detection = Detection::run(config).map_err(fail)?;
    if let Some(note) = &detection.note {
        tracing::warn!("{note}");
    }
    Device::bind(config, &detection).map_err(|m| fail(format!("{m} ({})", detection.source)))
}

/// Runs a worker until `shutdown` fires, then drains it: no new claims,
/// running tasks get `shutdown_grace_ms` to finish, what is still running
/// then goes back to its stream for another worker, the registry record
/// goes. Redis unreachable at start is retried (with a log line each time)
/// until it answers or `shutdown` fires.
///
/// A GPU worker first probes its device (with backoff, as `probing` in the
/// registry) and takes tasks once a probe passes. When the device fails
/// while running tasks, the worker hands them all back, leaves its record
/// saying `failed`, and returns with [`WorkerReport::device_failed`] set.
pub async fn run(
    config: &Config,
    kinds: KindTable,
    mut shutdown: Shutdown,
) -> Result<WorkerReport, WorkerError> {
    let device = Arc::new(bind_device(config)?);
    let store = connect(config, &mut shutdown).await?;
    let worker_id = if config.worker_id.is_empty() {
        default_worker_id(&device.tag())
    } else {
        config.worker_id.clone()
    };
    let streams: Vec<StreamRef> = routing::claim_order(device.role, &config.classes)
        .into_iter()
        .map(|(class, priority)| StreamRef {
            class,
            priority,
            key: store.keys().stream(class, priority),
        })
        .collect();
    store.ensure_groups(&streams).await?;

    let concurrency = config.effective_concurrency();
    let stats = Arc::new(stats::Stats::default());
    stats.set_health(if device.is_gpu() {
        Health::Probing
    } else {
        Health::Healthy
    });
    let running = running::Running::default();
    let nudge = Arc::new(tokio::sync::Notify::new());
    let latest_metrics = metrics::Latest::default();
    let published = metrics::Published::default();
    let live_seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let gpu = device.gpu.as_ref();
    let alerter = alerts::Raiser {
        store: store.clone(),
        worker: worker_id.clone(),
        device: device.id(),
    };
    let mut heartbeat = heartbeat::Heartbeat {
        store: store.clone(),
        info: WorkerInfo {
            id: worker_id.clone(),
            host: host::hostname(),
            pid: std::process::id(),
            process: watch::Instance::record_field(),
            device: device.id(),
            role: device.role,
            device_name: gpu.map(|g| g.label()).unwrap_or_default(),
            device_index: gpu.map(|g| g.index),
            pci_bus_id: gpu.map(|g| g.pci_bus_id.clone()).unwrap_or_default(),
            simulated: gpu.is_some_and(|g| g.is_simulated()),
            score: gpu.map(|g| g.score()).unwrap_or_default(),
            compute_capability: gpu.map(|g| g.compute_capability_text()).unwrap_or_default(),
            memory_total: gpu.map(|g| g.memory_total).unwrap_or_default(),
            memory_budget: device.budget,
            classes: config.classes.clone(),
            concurrency,
            state: "running".into(),
            started_at_ms: tandem_shared::clock::now_ms(),
            version: env!("CARGO_PKG_VERSION").into(),
            ..WorkerInfo::default()
        },
        stats: Arc::clone(&stats),
        running: running.clone(),
        device: Arc::clone(&device),
        kinds: kinds.clone(),
        interval: Duration::from_millis(config.heartbeat_interval_ms),
        ttl_ms: config.heartbeat_ttl_ms,
        nudge: Arc::clone(&nudge),
        metrics: Arc::clone(&latest_metrics),
        published: Arc::clone(&published),
        live_seen: Arc::clone(&live_seen),
        data_watch: data_watch::DataWatch {
            raiser: alerter.clone(),
            streams: streams.clone(),
            alert_interval: Duration::from_millis(config.alert_interval_ms),
            last_lengths: None,
            registry_rejoined: false,
        },
    };
    heartbeat.beat().await?;
    let mut background = Background::new();
    background.spawn(heartbeat.clone().run());
    let (device_samples, samples) = tokio::sync::watch::channel(None);
    background.spawn(
        metrics::Sampler {
            stats: Arc::clone(&stats),
            device: Arc::clone(&device),
            running: running.clone(),
            interval: Duration::from_millis(config.metrics_interval_ms),
            latest: latest_metrics,
            device_samples,
        }
        .run(),
    );
    background.spawn(
        alerts::Alerts {
            raiser: alerter.clone(),
            thresholds: alerts::Thresholds::from(config),
            samples,
        }
        .run(),
    );
    background.spawn(
        recurring::Recurring {
            store: store.clone(),
            signer: tandem_shared::signature::Signer::new(config.signing_key.expose()),
            default_max_attempts: config.default_max_attempts,
            worker_id: worker_id.clone(),
        }
        .run(),
    );
    if config.metrics_port != 0
        && let Some(server) = metrics::serve_worker(config.metrics_port, published).await
    {
        background.spawn(server);
    }

    if device.is_gpu() && !probe_until_healthy(config, &device, &mut shutdown).await {
        background.stop().await;
        if let Err(err) = store.deregister(&worker_id).await {
            tracing::warn!("cannot remove the registry record: {err}");
        }
        return Ok(WorkerReport::default());
    }
    // Said before the record reads `healthy`: whoever sees the worker
    // healthy can find the line and the alert already written.
    report_cpu_fallback(&device, &kinds, &alerter).await;
    stats.set_health(Health::Healthy);
    nudge.notify_one();

    let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
    // Routing starts from the registry as it is now, not from an empty one
    // (which would have a CPU worker take GPU work until its first look).
    let siblings = fleet::siblings(&device.id());
    if !siblings.is_empty() {
        tracing::info!(siblings = ?siblings, "in a fleet: counting its members as live until seen live");
    }
    let mut router = router::Router::with_siblings(
        device.role,
        config.routing_policy(),
        worker_id.clone(),
        (device.id(), device.budget),
        &streams,
        (siblings, fleet::SIBLING_GRACE),
    );
    match store.workers().await {
        Ok(workers) => {
            router.observe(&workers);
            let live = watch::Observation {
                workers,
                dead: Vec::new(),
            }
            .live();
            live_seen.store(live, std::sync::atomic::Ordering::Relaxed);
            nudge.notify_one();
        }
        Err(err) => tracing::warn!("cannot read the worker registry yet: {err}"),
    }

    let flow_changed = Arc::new(tokio::sync::Notify::new());
    let mut promoted_classes: Vec<tandem_shared::Class> = Vec::new();
    for stream in &streams {
        if !promoted_classes.contains(&stream.class) {
            promoted_classes.push(stream.class);
        }
    }
    let blob_store = tandem_shared::blob::BlobStore::open(store.clone(), config)?;
    background.spawn(blob_release::run(
        blob_store.clone(),
        promoted_classes.clone(),
    ));
    background.spawn(promoter::run(
        store.clone(),
        promoted_classes,
        Arc::clone(&flow_changed),
    ));
    let (progress_tx, progress_rx) = tokio::sync::mpsc::unbounded_channel();
    background.spawn(progress::write(store.clone(), progress_rx));
    background.spawn(cancel::listen(
        store.clone(),
        running.clone(),
        subscribed_tx,
    ));
    // Claim nothing before cancels can reach this worker; a listener that
    // cannot subscribe (it keeps trying) holds the worker up no longer than
    // this.
    if tokio::time::timeout(Duration::from_secs(5), subscribed)
        .await
        .is_err()
    {
        tracing::warn!("the cancel listener is not subscribed yet; starting without it");
    }
    let (seen_tx, seen_rx) = tokio::sync::watch::channel(watch::Observation::default());
    background.spawn(watch::run(
        store.clone(),
        streams.clone(),
        worker_id.clone(),
        Duration::from_millis(config.heartbeat_interval_ms),
        seen_tx,
    ));

    tracing::info!(
        worker = %worker_id,
        device = %device.id(),
        name = gpu.map(|g| g.label()).unwrap_or_default(),
        role = %device.role,
        why = %device.why,
        memory_budget = device.budget,
        concurrency,
        prefetch = config.effective_prefetch(),
        classes = ?config.classes,
        kinds = ?kinds.names(),
        redis = %config.redis_url_redacted(),
        prefix = %config.prefix,
        "worker ready"
    );
    let dispatcher = dispatcher::Dispatcher {
        store: store.clone(),
        executor: Arc::new(executor::Executor {
            kinds,
            worker_id: worker_id.clone(),
            device_id: device.id(),
            device: Arc::clone(&device),
            watchdog: (config.device_watchdog_ms > 0)
                .then(|| Duration::from_millis(config.device_watchdog_ms)),
            max_payload_bytes: config.max_payload_bytes,
            signer: tandem_shared::signature::Signer::new(config.signing_key.expose()),
            models: Some(Arc::new(model_cache::ModelCache::new(
                store.clone(),
                Arc::clone(&device),
                running.clone(),
                config.model_dir.clone(),
            ))),
            backoff: executor::Backoff {
                base: Duration::from_millis(config.retry_base_ms),
                max: Duration::from_millis(config.retry_max_ms),
            },
            timeout_grace: Duration::from_millis(config.timeout_grace_ms),
            kind_timeouts: config.kind_timeout_ms.clone(),
            progress: Some(context::ProgressSink {
                reports: progress_tx,
                interval: Duration::from_millis(config.progress_interval_ms),
            }),
            blobs: Some(Arc::new(blob_cache::BlobCache::new(
                blob_store,
                config.blob_cache_bytes,
                config.result_ttl_s.saturating_mul(1000),
                config.workflow_blob_threshold_bytes,
            ))),
        }),
        router,
        device_memory: Arc::clone(&device),
        shards_per_gpu: config.shards_per_gpu,
        streams,
        worker_id: worker_id.clone(),
        device: device.id(),
        concurrency,
        prefetch: config.effective_prefetch(),
        commit_linger: Duration::from_millis(config.commit_linger_ms),
        claim_batch: config.claim_batch,
        aging_ms: config.aging_ms,
        block_ms: config.block_ms,
        lease_timeout: Duration::from_millis(config.lease_timeout_ms),
        promote_interval: Duration::from_millis(config.heartbeat_interval_ms),
        max_deliveries: config.max_deliveries,
        shutdown_grace: Duration::from_millis(config.shutdown_grace_ms),
        running,
        stats: Arc::clone(&stats),
        observations: seen_rx,
        live_seen,
        nudge: Arc::clone(&nudge),
        flow_changed,
    };
    let report = dispatcher.run(shutdown).await;

    // The dispatcher has drained: the heartbeat, metrics, alerts, cancel
    // listener and watch stop before the record is marked failed or removed
    // (so no late beat writes it again).
    background.stop().await;
    if let Some(why) = &report.device_failed {
        // The record stays, saying `failed`, until its TTL runs out: peers
        // re-route at once, and operators see what happened.
        stats.set_health(Health::Failed);
        if let Err(err) = heartbeat.beat().await {
            tracing::warn!("cannot mark the device failed in the registry: {err}");
        }
        alerter.device_failed(why).await;
        tracing::error!(worker = %worker_id, device = %device.id(), "device failed: {why}; exiting for the fleet to restart this worker");
    } else {
        if let Err(err) = store.deregister(&worker_id).await {
            tracing::warn!("cannot remove the registry record: {err}");
        }
        tracing::info!(
            worker = %worker_id,
            succeeded = report.succeeded,
            failed = report.failed,
            "worker stopped"
        );
    }
    Ok(report)
}

/// The worker's background tasks (heartbeat, metrics sampler, alerts,
/// `/metrics` server, cancel listener, registry watch): one set, stopped
/// together by one token, as mini-redis stops its connection handlers.
/// Each task runs until the token is cancelled, and is then dropped where
/// it awaits (a Redis round trip, a tick, an accept, an NVML read on a
/// blocking thread); none blocks the runtime, so all end at once. Dropping
/// the set (a dropped `run`) aborts what is left.
struct Background {
    stop: CancellationToken,
    tasks: JoinSet<()>,
}

impl Background {
    fn new() -> Self {
        Self {
            stop: CancellationToken::new(),
            tasks: JoinSet::new(),
        }
    }

    /// Runs `task` until it returns or the background stops.
    fn spawn(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        let stop = self.stop.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                biased;
                () = stop.cancelled() => {}
                () = task => {}
            }
        });
    }

    /// Cancels every task and waits until each has ended. A task that
    /// panicked earlier has already said so (the panic hook printed it).
    async fn stop(mut self) {
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Says, once and at ERROR level, when a GPU worker runs kinds on its CPU
/// because a GPU path (kernel module, cuBLAS) is off, and raises
/// `gpu_cpu_fallback`: a fleet must not believe such a worker computes on
/// its GPU. Nothing when every path loaded, or on a CPU worker.
async fn report_cpu_fallback(device: &Device, kinds: &KindTable, alerter: &alerts::Raiser) {
    let Some(paths) = device.gpu_paths() else {
        return;
    };
    let (on_cpu, on_gpu) = kinds.by_gpu_path(|p| paths.has(p));
    if let Some(line) = paths.start_line(&on_cpu, &on_gpu) {
        tracing::error!(
            device = %device.id(),
            kernels_off = %paths.off().join(","),
            cpu_fallback = %on_cpu.join(","),
            "{line}"
        );
        alerter.gpu_cpu_fallback(on_cpu.len(), &line).await;
    }
}

/// Probes the device until a probe passes (true) or `shutdown` fires
/// (false), waiting `probe_backoff_ms`, doubling up to
/// `probe_backoff_max_ms`, between failures.
async fn probe_until_healthy(config: &Config, device: &Device, shutdown: &mut Shutdown) -> bool {
    let mut delay = Duration::from_millis(config.probe_backoff_ms);
    let max = Duration::from_millis(config.probe_backoff_max_ms);
    let mut failures = 0u32;
    loop {
        match device.probe().await {
            Ok(()) => {
                if failures > 0 {
                    tracing::info!(device = %device.id(), failures, "probe passed: the device is healthy again");
                } else {
                    tracing::info!(device = %device.id(), "probe passed");
                }
                return true;
            }
            Err(why) => {
                failures += 1;
                tracing::warn!(device = %device.id(), failures, "probe failed: {why}; next probe in {delay:?}");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.wait() => return false,
        }
        delay = (delay * 2).min(max);
    }
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

/// `host-device-pid-xxxx` (device `cpu`, `gpu0`, `sim1`): unique per
/// process incarnation, so a restarted worker never inherits its
/// predecessor's pending entries by name.
fn default_worker_id(device_tag: &str) -> String {
    let random = uuid::Uuid::now_v7().simple().to_string();
    let suffix = &random[random.len() - 4..];
    format!(
        "{}-{device_tag}-{}-{suffix}",
        host::hostname(),
        std::process::id()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tells, when dropped, that the future holding it was dropped.
    struct DropFlag(Option<tokio::sync::oneshot::Sender<()>>);

    impl Drop for DropFlag {
        fn drop(&mut self) {
            if let Some(tx) = self.0.take() {
                let _ = tx.send(());
            }
        }
    }

    #[tokio::test]
    async fn stopping_the_background_ends_every_task_and_waits_for_them() {
        let mut background = Background::new();
        // Tasks that never end by themselves (three parked for good, one
        // looping on a timer), and one that finished already.
        let mut dropped = Vec::new();
        for _ in 0..3 {
            let (tx, rx) = tokio::sync::oneshot::channel();
            dropped.push(rx);
            let flag = DropFlag(Some(tx));
            background.spawn(async move {
                let _flag = flag;
                std::future::pending::<()>().await;
            });
        }
        background.spawn(async {
            loop {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        background.spawn(async {});
        // A bound, not a speed: a task that outlived the cancel would hang.
        tokio::time::timeout(Duration::from_secs(30), background.stop())
            .await
            .expect("every background task ended");
        for mut rx in dropped {
            assert!(rx.try_recv().is_ok(), "stop() returned before a task ended");
        }
    }
}
