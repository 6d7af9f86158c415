//! How retries are spaced: one doubling backoff, capped, for every loop
//! that retries Redis (a worker's round trips and its doorbell, a
//! producer's reply listener, calls retried while Redis is unreachable)
//! and, with jitter, for a failed task's next attempt.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// A doubling backoff: `base`, `2 base`, `4 base`, ... capped at `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

/// The pause between tries of a connection to Redis: 50 ms doubling up to
/// 2 s (no jitter: one client, one connection).
pub const RECONNECT: Backoff = Backoff {
    base: Duration::from_millis(50),
    max: Duration::from_secs(2),
};

impl Backoff {
    /// The delay after the `attempt`-th failure in a row, without jitter:
    /// base x 2^(attempt - 1), capped.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(30);
        self.base.saturating_mul(1 << exponent).min(self.max)
    }

    /// The [`Backoff::ceiling`], drawn uniformly from its upper half
    /// ("equal jitter"), so tasks that failed together do not retry
    /// together.
    pub fn delay(&self, attempt: u32) -> Duration {
        let full = self.ceiling(attempt);
        let half = full / 2;
        let jitter_ms = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
        let random = random_u64() % jitter_ms.saturating_add(1);
        half + Duration::from_millis(random)
    }
}

/// Failures in a row of one retrying loop, and the pause each asks for.
#[derive(Debug, Clone)]
pub struct Retries {
    policy: Backoff,
    failures: u32,
}

impl Retries {
    pub const fn new(policy: Backoff) -> Self {
        Retries {
            policy,
            failures: 0,
        }
    }

    /// Counts a failure; the pause to take before the next try.
    pub fn next_delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.policy.ceiling(self.failures)
    }

    /// A try succeeded: the next failure pauses `base` again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// A random number without a random-number crate: std seeds each
/// `RandomState` from the OS.
fn random_u64() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(0x5eed);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnects_double_from_50_ms_up_to_2_s_and_reset() {
        let mut retries = Retries::new(RECONNECT);
        let delays: Vec<u128> = (0..8).map(|_| retries.next_delay().as_millis()).collect();
        assert_eq!(delays, [50, 100, 200, 400, 800, 1600, 2000, 2000]);
        retries.reset();
        assert_eq!(retries.next_delay(), Duration::from_millis(50));
    }

    #[test]
    fn jitter_stays_in_the_upper_half_of_the_ceiling() {
        let backoff = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(10),
        };
        for attempt in 1..8 {
            let ceiling = backoff.ceiling(attempt);
            let delay = backoff.delay(attempt);
            assert!(
                delay >= ceiling / 2 && delay <= ceiling,
                "{attempt}: {delay:?}"
            );
        }
    }
}
