//! What a worker measures about its device and its tasks, and where it
//! shows it.
//!
//! - `tasks`: the counters the dispatcher feeds (completions by kind, class
//!   and status; errors by code; the claim-to-commit latency histogram;
//!   lease extensions; reclaims).
//! - `device`: reading the device: NVML on a real GPU, a model of the load
//!   on a simulated one, nothing on the CPU.
//! - this module: the [`Sampler`], which every `metrics_interval_ms` turns
//!   both into a [`WorkerMetrics`] that the heartbeat writes into the
//!   worker's registry record; and the `/metrics` endpoints of a worker and
//!   of a fleet.
//! - `prometheus`: registry records in the Prometheus text format.
//! - `http`: the tiny HTTP/1.1 responder for `GET /metrics`.
//!
//! Architecture Invariant: the endpoints render registry records
//! ([`WorkerInfo`]), never live worker state, so a worker's own `/metrics`
//! and its fleet's say the same thing.

pub(crate) mod device;
mod http;
mod prometheus;
pub(crate) mod tasks;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tandem_shared::Config;
use tandem_shared::store::Store;
use tandem_shared::wire::{WorkerInfo, WorkerMetrics};

use crate::running::Running;
use crate::stats::Stats;
use device::{Gauge, Load};
use tandem_shared::clock::now_ms;

/// The latest sample, written by the sampler and read by the heartbeat.
pub(crate) type Latest = Arc<Mutex<WorkerMetrics>>;

/// What the alerts need of each sample of a GPU: sent only when the device
/// was actually read, so a failed NVML call never looks like an idle GPU.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct DeviceSample {
    pub temperature_c: f64,
    /// Busy share over the sample period, 0 to 1.
    pub utilization: f64,
    /// Tasks running at the sample.
    pub active_tasks: usize,
}

/// The latest [`DeviceSample`], watched by the alerts.
pub(crate) type DeviceSamples = tokio::sync::watch::Sender<Option<DeviceSample>>;

/// The worker's record as last written, read by its `/metrics`.
pub(crate) type Published = Arc<Mutex<WorkerInfo>>;

/// Samples the device and the task counters every interval.
#[derive(Debug)]
pub(crate) struct Sampler {
    pub stats: Arc<Stats>,
    pub device: Arc<crate::device::Device>,
    /// The running tasks, for the device memory they booked.
    pub running: Running,
    pub interval: Duration,
    pub latest: Latest,
    /// Each device reading, for the device alerts.
    pub device_samples: DeviceSamples,
}

impl Sampler {
    /// Samples every interval until the worker stops it.
    pub async fn run(self) {
        let mut gauge = Gauge::for_device(&self.device);
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate: a period starts there.
        tick.tick().await;
        let mut last_at = Instant::now();
        self.stats.take_busy(last_at);
        let mut last_commits = self.stats.tasks.totals().commits;
        loop {
            tick.tick().await;
            let now = Instant::now();
            let period = now.saturating_duration_since(last_at);
            last_at = now;
            let sample = self
                .sample(&mut gauge, period, now, &mut last_commits)
                .await;
            *self.latest.lock().unwrap_or_else(PoisonError::into_inner) = sample;
        }
    }

    async fn sample(
        &self,
        gauge: &mut Gauge,
        period: Duration,
        now: Instant,
        last_commits: &mut u64,
    ) -> WorkerMetrics {
        let seconds = period.as_secs_f64().max(1e-3);
        let busy = self.stats.take_busy(now);
        let load = Load {
            busy_share: (busy.as_secs_f64() / seconds).min(1.0),
            memory_booked: self.running.reserved() + self.device.ledger.models_bytes(),
            period,
        };
        let reading = gauge.read(load).await;
        if let Some(reading) = reading {
            self.device_samples.send_replace(Some(DeviceSample {
                temperature_c: reading.temperature_c,
                utilization: reading.utilization,
                active_tasks: self.stats.snapshot().0,
            }));
        }
        let reading = reading.unwrap_or_default();
        let totals = self.stats.tasks.totals();
        let finished = totals.commits.saturating_sub(*last_commits);
        *last_commits = totals.commits;
        WorkerMetrics {
            at_ms: now_ms(),
            gpu_utilization: reading.utilization,
            gpu_memory_used: reading.memory_used,
            gpu_temperature_c: reading.temperature_c,
            gpu_power_w: reading.power_w,
            gpu_sm_clock_mhz: reading.sm_clock_mhz,
            tasks_per_s: finished as f64 / seconds,
            latency_buckets: totals.latency_buckets,
            latency_sum_ms: totals.latency_sum_ms,
            completed: totals.completed,
            errors: totals.errors,
            lease_extensions: totals.lease_extensions,
            reclaims: totals.reclaims,
        }
    }
}

/// Serves a worker's own `/metrics` on `port` from its last heartbeat: the
/// port is bound here, and the returned future serves it (the worker runs
/// it among its background tasks); `None` (with an error logged) when the
/// port cannot be bound: the worker still runs.
pub(crate) async fn serve_worker(
    port: u16,
    published: Published,
) -> Option<impl Future<Output = ()> + Send + 'static> {
    let listener = match http::bind(port).await {
        Ok(listener) => listener,
        Err(why) => {
            tracing::error!("{why}; the worker runs without it");
            return None;
        }
    };
    tracing::info!(port, "serving /metrics");
    let render = move || {
        let published = Arc::clone(&published);
        async move {
            let info = published
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            Ok(prometheus::render(&[info]))
        }
    };
    Some(http::serve(listener, render))
}

/// A fleet's children, by member tag: the pid of each one running now.
pub(crate) type ChildPids = Arc<Mutex<BTreeMap<String, u32>>>;

/// Serves a fleet's `/metrics` on `port`: its running children's registry
/// records (this host, their pids), read at each scrape. `None` (with an
/// error logged) when the port cannot be bound.
pub(crate) async fn serve_fleet(
    port: u16,
    config: Config,
    children: ChildPids,
) -> Option<tokio::task::JoinHandle<()>> {
    let listener = match http::bind(port).await {
        Ok(listener) => listener,
        Err(why) => {
            tracing::error!("{why}; the fleet runs without it");
            return None;
        }
    };
    tracing::info!(port, "serving the fleet's /metrics");
    let source = Arc::new(FleetSource {
        config,
        store: tokio::sync::Mutex::new(None),
        children,
        host: crate::host::hostname(),
    });
    let render = move || {
        let source = Arc::clone(&source);
        async move { source.render().await }
    };
    Some(tokio::spawn(http::serve(listener, render)))
}

/// Where a fleet's `/metrics` reads its children's records.
#[derive(Debug)]
struct FleetSource {
    config: Config,
    /// Connected at the first scrape, and again after a failed one: Redis
    /// may start after the fleet.
    store: tokio::sync::Mutex<Option<Store>>,
    children: ChildPids,
    host: String,
}

impl FleetSource {
    async fn render(&self) -> Result<String, String> {
        let mut slot = self.store.lock().await;
        let store = match slot.as_ref() {
            Some(store) => store.clone(),
            None => {
                let store = Store::connect(&self.config)
                    .await
                    .map_err(|e| format!("cannot reach Redis for the workers' records: {e}"))?;
                slot.insert(store).clone()
            }
        };
        drop(slot);
        let workers = match store.workers().await {
            Ok(workers) => workers,
            Err(err) => {
                *self.store.lock().await = None;
                return Err(format!("cannot read the workers' records: {err}"));
            }
        };
        let pids: Vec<u32> = self
            .children
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .copied()
            .collect();
        let mine: Vec<WorkerInfo> = workers
            .into_iter()
            .filter(|w| w.host == self.host && pids.contains(&w.pid))
            .collect();
        let mut text = prometheus::render(&mine);
        // The queues: the same for every fleet on the same Redis (a
        // Prometheus rule aggregates them with `max without (instance)`).
        match store.queue_snapshot().await {
            Ok(queues) => text.push_str(&queues.render()),
            Err(err) => return Err(format!("cannot read the queues: {err}")),
        }
        Ok(text)
    }
}
