//! Keeps the worker's registry record fresh.
//!
//! The record (`tandem:worker:<id>`, wire format "Worker registry") carries a
//! TTL of `heartbeat_ttl_ms`, refreshed every `heartbeat_interval_ms`; when
//! the heartbeats stop, the record expires and the worker is gone.

use std::sync::Arc;
use std::time::Duration;

use tandem_shared::store::{Store, StoreError};
use tandem_shared::wire::WorkerInfo;

use crate::running::Running;
use crate::stats::Stats;
use tandem_shared::clock::now_ms;

#[derive(Debug, Clone)]
pub(crate) struct Heartbeat {
    pub store: Store,
    pub info: WorkerInfo,
    pub stats: Arc<Stats>,
    /// The running tasks, for the memory they reserve.
    pub running: Running,
    /// The device, for the models resident in its memory ledger and its
    /// GPU paths.
    pub device: Arc<crate::device::Device>,
    /// The kinds, for those a GPU path that is off leaves on the CPU.
    pub kinds: crate::KindTable,
    pub interval: Duration,
    pub ttl_ms: u64,
    /// Asks for a beat now (the health changed).
    pub nudge: Arc<tokio::sync::Notify>,
    /// The metrics sampler's latest sample, written with each beat.
    pub metrics: crate::metrics::Latest,
    /// Each beat's record, for the worker's own `/metrics` (kept even when
    /// Redis is away, when the numbers matter most).
    pub published: crate::metrics::Published,
    /// Live workers in the registry look the router last took in (the
    /// record's `live_seen`).
    pub live_seen: Arc<std::sync::atomic::AtomicUsize>,
    /// Checks, before each beat (which writes the registry record again),
    /// that Redis still has the data it had.
    pub data_watch: crate::data_watch::DataWatch,
}

impl Heartbeat {
    /// Writes the record once, with fresh counters and state.
    pub async fn beat(&mut self) -> Result<(), StoreError> {
        let (active, succeeded, failed) = self.stats.snapshot();
        self.info.active = active;
        self.info.succeeded = succeeded;
        self.info.failed = failed;
        self.info.state = self.stats.state().to_owned();
        self.info.health = self.stats.health();
        self.info.memory_reserved = self.running.reserved();
        let ledger = &self.device.ledger;
        self.info.models = ledger.residents().into_iter().map(|m| m.name).collect();
        self.info.memory_models = ledger.models_bytes();
        (self.info.model_hits, self.info.model_misses) = ledger.hits_and_misses();
        self.info.heartbeat_at_ms = now_ms();
        self.info.live_seen = self.live_seen.load(std::sync::atomic::Ordering::Relaxed);
        if let Some(paths) = self.device.gpu_paths() {
            let (on_cpu, _) = self.kinds.by_gpu_path(|p| paths.has(p));
            self.info.kernels_loaded = paths.loaded().into_iter().map(str::to_owned).collect();
            self.info.kernels_off = paths.off().into_iter().map(str::to_owned).collect();
            self.info.kernels_off_why = paths.why_off();
            self.info.cpu_fallback = on_cpu.into_iter().map(str::to_owned).collect();
        }
        self.info.metrics = self
            .metrics
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        self.published
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone_from(&self.info);
        let registered = self.store.heartbeat(&self.info, self.ttl_ms).await?;
        if !registered {
            self.data_watch.registry_rejoined = true;
        }
        Ok(())
    }

    /// Beats every interval until the worker stops it.
    pub async fn run(mut self) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = self.nudge.notified() => {}
            }
            self.data_watch.check().await;
            if let Err(err) = self.beat().await {
                tracing::warn!("heartbeat failed: {err}");
            }
        }
    }
}
