//! Counters a worker keeps about itself, read by its heartbeat.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

#[derive(Debug, Default)]
pub(crate) struct Stats {
    /// Tasks running now.
    pub active: AtomicUsize,
    /// Commits written, by outcome.
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
    /// Set once the worker stops claiming.
    pub draining: AtomicBool,
}

impl Stats {
    pub fn state(&self) -> &'static str {
        if self.draining.load(Ordering::Relaxed) {
            "draining"
        } else {
            "running"
        }
    }

    pub fn snapshot(&self) -> (usize, u64, u64) {
        (
            self.active.load(Ordering::Relaxed),
            self.succeeded.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}
