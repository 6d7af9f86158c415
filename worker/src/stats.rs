//! Counters a worker keeps about itself, read by its heartbeat.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};

use tandem_shared::device::Health;

#[derive(Debug, Default)]
pub(crate) struct Stats {
    /// Tasks running now.
    pub active: AtomicUsize,
    /// Commits written, by outcome.
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
    /// Set once the worker stops claiming.
    pub draining: AtomicBool,
    /// The device's health, as `Health::index`.
    health: AtomicU8,
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
}
