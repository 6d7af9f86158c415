//! Counters a worker keeps about itself, read by its heartbeat and its
//! metrics sampler.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tandem_shared::device::Health;

use crate::metrics::tasks::TaskCounters;

#[derive(Debug, Default)]
pub(crate) struct Stats {
    /// Tasks running now.
    pub active: AtomicUsize,
    /// Commits written, by outcome.
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
    /// Set once the worker stops claiming.
    pub draining: AtomicBool,
    /// Completions, errors, latencies, lease extensions and reclaims.
    pub tasks: TaskCounters,
    /// The device's health, as `Health::index`.
    health: AtomicU8,
    /// When tasks ran, for the device's busy share.
    busy: Mutex<BusyClock>,
}

/// How long at least one task ran since the last sample: a simulated GPU's
/// utilization, as NVML measures a real one's ("one or more kernels").
#[derive(Debug, Default)]
struct BusyClock {
    running: usize,
    /// Since when a task has been running, while one is.
    busy_since: Option<Instant>,
    /// Busy time since the last sample, up to `busy_since`.
    busy: Duration,
}

impl Stats {
    pub fn state(&self) -> &'static str {
        if self.draining.load(Ordering::Relaxed) {
            "draining"
        } else {
            "running"
        }
    }

    pub fn health(&self) -> Health {
        let index = usize::from(self.health.load(Ordering::Relaxed));
        Health::ALL.get(index).copied().unwrap_or_default()
    }

    pub fn set_health(&self, health: Health) {
        let index = u8::try_from(health.index()).unwrap_or(0);
        self.health.store(index, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> (usize, u64, u64) {
        (
            self.active.load(Ordering::Relaxed),
            self.succeeded.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }

    /// A task started running.
    pub fn task_started(&self) {
        self.active.fetch_add(1, Ordering::Relaxed);
        let mut busy = self.busy();
        busy.running += 1;
        if busy.running == 1 {
            busy.busy_since = Some(Instant::now());
        }
    }

    /// A task stopped running.
    pub fn task_ended(&self) {
        self.active.fetch_sub(1, Ordering::Relaxed);
        let mut busy = self.busy();
        busy.running = busy.running.saturating_sub(1);
        if busy.running == 0
            && let Some(since) = busy.busy_since.take()
        {
            busy.busy += since.elapsed();
        }
    }

    /// The busy time since the last call, up to `now`.
    pub fn take_busy(&self, now: Instant) -> Duration {
        let mut busy = self.busy();
        let mut total = std::mem::take(&mut busy.busy);
        if let Some(since) = busy.busy_since.as_mut() {
            total += now.saturating_duration_since(*since);
            *since = now;
        }
        total
    }

    /// The clock is plain numbers, valid whatever a panicking holder was
    /// doing.
    fn busy(&self) -> MutexGuard<'_, BusyClock> {
        self.busy
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_time_counts_while_any_task_runs() {
        let stats = Stats::default();
        let start = Instant::now();
        assert_eq!(stats.take_busy(start), Duration::ZERO);
        stats.task_started();
        stats.task_started();
        stats.task_ended();
        std::thread::sleep(Duration::from_millis(20));
        let busy = stats.take_busy(Instant::now());
        assert!(busy >= Duration::from_millis(20), "{busy:?}");
        stats.task_ended();
        assert_eq!(stats.active.load(Ordering::Relaxed), 0);
        let later = Instant::now() + Duration::from_secs(1);
        assert!(stats.take_busy(later) < Duration::from_millis(500));
        // Idle: nothing more accrues.
        assert_eq!(stats.take_busy(later), Duration::ZERO);
    }
}
