//! The chaos test's fault schedule. Chaos is time-based on purpose: faults
//! must land at random moments of a run under load, not after a condition,
//! so these are the fixed pauses the test needs, each named for what it
//! paces. The draws come from the test's seeded generator, in the order
//! the test makes them, so a printed seed replays the same schedule.

use std::time::Duration;

/// A small deterministic generator, seeded from the clock and printed so a
/// failing run can be replayed.
pub struct Lcg(pub u64);

impl Lcg {
    pub fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % below.max(1)
    }
}

/// The submitter's pace: 90 ms between batches, so submissions spread over
/// the first half of the chaos instead of landing before the first fault.
pub async fn pace_submissions() {
    tokio::time::sleep(Duration::from_millis(90)).await;
}

/// The quiet time before the next fault: 600 ms to 1.5 s, drawn from `rng`.
pub async fn until_next_fault(rng: &mut Lcg) {
    tokio::time::sleep(Duration::from_millis(600 + rng.next(900))).await;
}

/// How long a SIGSTOPped worker stays frozen before its SIGCONT: 1.2 s to
/// 2.7 s, drawn from `rng`: longer than the chaos test's 1 s lease, so a
/// frozen worker's leases can run out and its tasks be taken over.
pub async fn keep_frozen(rng: &mut Lcg) {
    tokio::time::sleep(Duration::from_millis(1_200 + rng.next(1_500))).await;
}
