//! The claim loop's decisions, without I/O: when the next round trip goes,
//! what it carries, and when an idle worker wakes.
//!
//! [`Schedule`] holds everything the loop remembers between trips: the
//! slots its claimed entries hold, whether there may be work, the dead
//! workers to take over, the periodic passes' timers, the Redis retry
//! backoff, the drain deadline, and the routing refusals of the last claim.
//! The dispatcher asks it for a [`TripPlan`] ([`Schedule::plan`]), sends the
//! plan to Redis, and feeds the outcome back ([`Schedule::apply`],
//! [`Schedule::failed`]); between trips it tells it what happened (a task
//! finished, the rules changed, a task arrived, shutdown began, a timer
//! fired) and sleeps until [`Schedule::next_wake`].
//!
//! Nothing here talks to Redis, reads a clock or touches a channel: the
//! time is an argument, plans and results are plain data, so the unit tests
//! below drive every decision without Redis.

use std::time::Duration;

use tandem_shared::store::{Blocked, DeadConsumer};
use tokio::time::Instant;

use tandem_shared::backoff::{Backoff, RECONNECT};

/// How often the claim includes the aging pass that keeps low priorities
/// from starving.
const AGING_CHECK: Duration = Duration::from_secs(1);
/// How long the loop waits after a failed round trip: 50 ms, doubling up to
/// 2 s while Redis keeps failing (no jitter: one worker, one connection).
const RETRY: Backoff = RECONNECT;
/// How far the next wake-up may lie when no timer asks for one sooner.
const IDLE: Duration = Duration::from_secs(3600);

/// The settings the decisions follow, from the worker's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Tasks this worker runs at once: each claimed entry holds a slot until
    /// its commit.
    pub concurrency: usize,
    /// The most entries one claim asks for.
    pub claim_batch: usize,
    /// How long a finished task's commit may wait for the prefetched tasks
    /// started after it, so that one round trip commits them together and
    /// refills the prefetch (see [`TripInputs::ready`]; zero: it never
    /// waits).
    pub commit_linger: Duration,
    /// A running task's lease: extended every third of it; entries idle
    /// this long are swept every half of it.
    pub lease_timeout: Duration,
    /// How often due retries are moved back into their streams.
    pub promote_interval: Duration,
    /// How long a draining worker waits for its running tasks.
    pub shutdown_grace: Duration,
}

/// What the loop holds as it asks for the next trip.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TripInputs<'a> {
    /// Finished tasks whose commits wait for the trip (every one goes).
    pub commits: usize,
    /// Whether one of those commits may bring work into the streams at
    /// once: a workflow node's outcome releases its children, a split puts
    /// its shards in, a shard's commit may queue its parent's merge. The
    /// trip then carries a claim for the free slots even after a short
    /// claim, which takes that work in the same round trip, after the
    /// commit scripts, instead of one blocking-wait wake-up and a trip
    /// later.
    pub may_release: bool,
    /// Whether a task runs now: its lease needs extending.
    pub running: bool,
    /// Per stream, whether the routing rules leave it on.
    pub streams_on: &'a [bool],
    /// Whether the blocking wait is armed: while it is, the wait point in
    /// force covers every arrival and a claim needs no fresh one.
    pub wait_armed: bool,
    /// Prefetched tasks waiting for a slot after the free ones were filled:
    /// while there are, every slot runs a task, and the commits may linger
    /// (up to [`Limits::commit_linger`], fewer than a claim batch) for the
    /// tasks that end next, so that a worker with a prefetch sends one trip
    /// for many short tasks rather than one each.
    pub ready: usize,
}

/// What the next round trip carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TripPlan {
    /// How many commits it carries: every finished task's.
    pub commits: usize,
    /// Extend the leases of the running tasks.
    pub extend: bool,
    /// A claim, when slots are free and there may be work.
    pub claim: Option<ClaimPlan>,
}

/// The claim a trip carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClaimPlan {
    /// The most entries to take: the free slots, at most a claim batch.
    pub max: usize,
    /// Run the aging pass (every [`AGING_CHECK`]).
    pub aging: bool,
    /// Take over entries idle past their lease (every half lease).
    pub sweep: bool,
    /// Move due retries back into their streams (every promote interval).
    pub promote: bool,
    /// Ask for the streams' newest ids, to arm the blocking wait from.
    pub want_last_ids: bool,
    /// Per stream, whether the blocking wait should cover it: the rules
    /// leave it on and its next entry was not refused.
    pub watch: Vec<bool>,
    /// Only the blocking wait's arrivals brought this claim about, and it
    /// carries no periodic pass, take-over or released work: it may pass
    /// the arrivals, and end at once when another worker's claim took
    /// them (see `ClaimRequest::arrivals`).
    pub gate: bool,
}

/// What a round trip that reached Redis brought back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TripResult {
    /// How many commits it made: each frees its slot.
    pub committed: usize,
    /// What its claim found; `None` when it carried none or the claim
    /// failed.
    pub claim: Option<ClaimResult>,
    /// Its claim failed (then [`Schedule::failed`] follows): the trip
    /// reached Redis, but the backoff goes on growing, so that a claim that
    /// fails every time (a stream key of another type) is not sent again
    /// every 50 ms.
    pub claim_failed: bool,
}

/// What a claim found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClaimResult {
    /// How many entries it took.
    pub taken: usize,
    /// Per stream (empty when none was), why its next entry was not taken.
    pub blocked: Vec<Blocked>,
    /// Whether it returned the streams' newest ids (they ran dry).
    pub last_ids: bool,
    /// It ended at once: another worker's claim had taken the arrivals it
    /// was gated on. The refusals of the claim before still stand.
    pub taken_elsewhere: bool,
}

/// The claim loop's state and decisions.
#[derive(Debug)]
pub(crate) struct Schedule {
    limits: Limits,
    /// Claimed entries not yet committed: running, or finished and waiting
    /// for the next round trip. Each holds one slot.
    held: usize,
    /// False once a claim came back with fewer entries than it asked for;
    /// true again when something may have brought work (a task arrived, a
    /// timer, a routing change, freed memory, a dead worker).
    may_have_work: bool,
    /// The dead workers of the latest look: every claim takes over what
    /// they hold until a look no longer lists them (their consumers are
    /// removed once nothing is pending), so a dead worker's tasks are not
    /// left behind when one claim has too few free slots for them all.
    dead_workers: Vec<DeadConsumer>,
    /// When the next claim runs the aging pass, the promotion of due
    /// retries, the sweep of expired leases, and when the running tasks'
    /// leases are next extended.
    next_aging: Instant,
    next_promote: Instant,
    next_sweep: Instant,
    next_extend: Instant,
    /// After a failed round trip: no trip before this.
    retry_at: Option<Instant>,
    /// Round trips failed in a row, for the backoff.
    failures: u32,
    /// Set when shutdown began: no new claims; at this instant the running
    /// tasks are handed back.
    drain_deadline: Option<Instant>,
    /// Routing refusals of the latest claim: per stream why its next entry
    /// was not taken (such a stream is left out of the wait), when a
    /// refusal may lift by waiting, and whether one waits for memory.
    blocked: Vec<Blocked>,
    blocked_until: Option<Instant>,
    memory_blocked: bool,
    /// The streams the armed wait covers.
    watching: Vec<bool>,
    /// The streams the last planned claim would have the wait cover: what
    /// the wait is armed with if that claim returns the newest ids.
    planned_watch: Vec<bool>,
    /// How many entries the last planned claim asked for.
    planned_claim: usize,
    /// Arrivals read by the blocking wait are the only reason to look for
    /// work since the last claim (see [`Schedule::rung`]).
    ring_only: bool,
    /// While commits linger for the prefetched tasks (see
    /// [`TripInputs::ready`]): when they go at the latest.
    linger_until: Option<Instant>,
}

impl Schedule {
    /// A loop starting at `now`: it claims at once (with the aging pass,
    /// the promotion and the sweep) and first extends leases a third of a
    /// lease later.
    pub fn new(limits: Limits, now: Instant) -> Self {
        Self {
            limits,
            held: 0,
            may_have_work: true,
            dead_workers: Vec::new(),
            next_aging: now,
            next_promote: now,
            next_sweep: now,
            next_extend: now + limits.lease_timeout / 3,
            retry_at: None,
            failures: 0,
            drain_deadline: None,
            blocked: Vec::new(),
            blocked_until: None,
            memory_blocked: false,
            watching: Vec::new(),
            planned_watch: Vec::new(),
            planned_claim: 0,
            ring_only: false,
            linger_until: None,
        }
    }

    /// Claimed entries not yet committed.
    pub fn held(&self) -> usize {
        self.held
    }

    pub fn is_draining(&self) -> bool {
        self.drain_deadline.is_some()
    }

    /// The dead workers whose tasks the next claim takes over.
    pub fn dead_workers(&self) -> &[DeadConsumer] {
        &self.dead_workers
    }

    /// Whether nothing runs once `commits` commits are made: the commits go
    /// first in the trip, so their slots count as free. The router's rules
    /// follow it.
    pub fn idle_after(&self, commits: usize) -> bool {
        self.held.saturating_sub(commits) == 0
    }

    /// The next round trip, when one is due now: commits are waiting, a
    /// lease extension is due, or there are free slots and may be work;
    /// never while backing off after a failure. Taking a plan starts the
    /// timers of the passes it carries.
    pub fn plan(&mut self, now: Instant, inputs: &TripInputs<'_>) -> Option<TripPlan> {
        let running_after = self.held.saturating_sub(inputs.commits);
        let free = self.limits.concurrency.saturating_sub(running_after);
        let may_have_work = self.may_have_work || (inputs.commits > 0 && inputs.may_release);
        let want = if self.is_draining() || !may_have_work {
            0
        } else {
            free.min(self.limits.claim_batch)
        };
        let extend = now >= self.next_extend && inputs.running;
        let backing_off = self.retry_at.is_some_and(|at| now < at);
        if !(want > 0 || inputs.commits > 0 || extend) || backing_off {
            self.linger_until = None;
            return None;
        }
        if self.lingers(now, inputs, extend) {
            return None;
        }
        self.linger_until = None;
        if extend {
            self.next_extend = now + self.limits.lease_timeout / 3;
        }
        let take = |due: &mut Instant, every: Duration| {
            let take = want > 0 && now >= *due;
            if take {
                *due = now + every;
            }
            take
        };
        let aging = take(&mut self.next_aging, AGING_CHECK);
        let sweep = take(&mut self.next_sweep, self.limits.lease_timeout / 2);
        let promote = take(&mut self.next_promote, self.limits.promote_interval);
        let watch: Vec<bool> = inputs
            .streams_on
            .iter()
            .enumerate()
            .map(|(i, on)| *on && self.blocked.get(i).is_none_or(|b| *b == Blocked::No))
            .collect();
        let want_last_ids = !inputs.wait_armed || watch != self.watching;
        let gate = self.ring_only
            && !(aging || sweep || promote)
            && self.dead_workers.is_empty()
            && !(inputs.commits > 0 && inputs.may_release)
            && watch == self.watching;
        if want > 0 {
            self.ring_only = false;
        }
        self.planned_watch.clone_from(&watch);
        self.planned_claim = want;
        Some(TripPlan {
            commits: inputs.commits,
            extend,
            claim: (want > 0).then_some(ClaimPlan {
                max: want,
                aging,
                sweep,
                promote,
                want_last_ids,
                watch,
                gate,
            }),
        })
    }

    /// Whether the commits wait at `now` for the prefetched tasks that run
    /// next (see [`TripInputs::ready`]): every slot runs a task and more
    /// wait, no lease extension is due, the commits are fewer than a claim
    /// batch and the first of them has not waited
    /// [`Limits::commit_linger`]. Without a prefetch nothing waits.
    fn lingers(&mut self, now: Instant, inputs: &TripInputs<'_>, extend: bool) -> bool {
        let may = !self.limits.commit_linger.is_zero()
            && inputs.commits > 0
            && inputs.ready > 0
            && !extend
            && !self.is_draining()
            && inputs.commits < self.limits.claim_batch;
        if !may {
            return false;
        }
        now < *self
            .linger_until
            .get_or_insert(now + self.limits.commit_linger)
    }

    /// Takes in a round trip that reached Redis, at `now`: the backoff
    /// resets (unless its claim failed), the commits free their slots, and
    /// a claim's refusals are kept. Returns the streams to arm the blocking wait on when the claim
    /// brought the newest ids.
    pub fn apply(&mut self, now: Instant, result: TripResult) -> Option<Vec<bool>> {
        self.retry_at = None;
        if !result.claim_failed {
            self.failures = 0;
        }
        self.held = self.held.saturating_sub(result.committed);
        let claimed = result.claim?;
        if claimed.taken < self.planned_claim {
            self.may_have_work = false;
        }
        if claimed.taken_elsewhere {
            return None;
        }
        self.blocked = claimed.blocked;
        self.memory_blocked = self.blocked.contains(&Blocked::Memory);
        self.blocked_until = self
            .blocked
            .iter()
            .filter_map(|b| match b {
                Blocked::For(ms) => Some(*ms),
                _ => None,
            })
            .min()
            .map(|ms| now + Duration::from_millis(ms.max(1)));
        if !claimed.last_ids {
            return None;
        }
        self.watching = std::mem::take(&mut self.planned_watch);
        Some(self.watching.clone())
    }

    /// A claimed entry now holds `slots` slots (0 when it needed no run).
    pub fn accepted(&mut self, slots: usize) {
        self.held += slots;
    }

    /// The round trip, or its claim, failed at `now`: no trip for the
    /// returned delay, which doubles with each failure in a row, capped.
    pub fn failed(&mut self, now: Instant) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let delay = RETRY.ceiling(self.failures);
        self.retry_at = Some(now + delay);
        delay
    }

    /// A started task ended. `freed`: its slot came free without a commit
    /// (its lease was lost, or its device failed). Memory may have come
    /// free, so a claim refused for memory is tried again.
    pub fn task_finished(&mut self, freed: bool) {
        if freed {
            self.held = self.held.saturating_sub(1);
        }
        if self.memory_blocked {
            self.look_again();
        }
    }

    /// The routing rules changed: streams they refused may deliver now.
    pub fn rules_changed(&mut self) {
        self.look_again();
    }

    /// The blocking wait failed, or something other than an arrival may
    /// have brought work: the next claim runs in full.
    pub fn woken(&mut self) {
        self.look_again();
    }

    /// The blocking wait read an arrival (another's entry). When nothing
    /// else made the loop look for work since its last claim, the next
    /// claim may be gated on the arrivals ([`ClaimPlan::gate`]).
    pub fn rung(&mut self) {
        if !self.may_have_work {
            self.ring_only = true;
        }
        self.may_have_work = true;
    }

    /// Something may have brought work: the next plan claims, in full.
    fn look_again(&mut self) {
        self.may_have_work = true;
        self.ring_only = false;
    }

    /// Takes in the dead workers of a look at the registry. True when the
    /// list changed to a non-empty one while not draining: their tasks are
    /// to be taken over now. A draining worker takes nothing over.
    pub fn workers_seen(&mut self, dead: Vec<DeadConsumer>) -> bool {
        let same = |a: &[DeadConsumer], b: &[DeadConsumer]| {
            a.len() == b.len() && a.iter().zip(b).all(|(a, b)| a.name == b.name)
        };
        let newly = !self.is_draining() && !dead.is_empty() && !same(&dead, &self.dead_workers);
        if newly {
            self.look_again();
        }
        self.dead_workers = if self.is_draining() { Vec::new() } else { dead };
        newly
    }

    /// Shutdown began at `now`: no new claims; the running tasks have the
    /// grace period to finish.
    pub fn drain(&mut self, now: Instant) {
        self.drain_deadline = Some(now + self.limits.shutdown_grace);
    }

    /// Draining and nothing held: the loop ends.
    pub fn drained(&self) -> bool {
        self.is_draining() && self.held == 0
    }

    /// The wake-up timer fired at `now`. True when the grace period ran
    /// out: the loop ends and hands back what still runs. Otherwise a due
    /// promotion or sweep, or a routing refusal that may have lifted, makes
    /// the next plan claim.
    pub fn timer_fired(&mut self, now: Instant) -> bool {
        if self.drain_deadline.is_some_and(|deadline| now >= deadline) {
            return true;
        }
        if !self.is_draining() && now >= self.next_promote.min(self.next_sweep) {
            self.look_again();
        }
        if self.blocked_until.is_some_and(|at| now >= at) {
            self.blocked_until = None;
            self.look_again();
        }
        false
    }

    /// When an idle loop (no trip due at `now`) wakes at the latest: a
    /// retry after a failed trip, a lease extension (when a task runs), the
    /// periodic promotion and sweep (an idle worker also runs those), a
    /// routing refusal that may lift, or the end of the grace period.
    pub fn next_wake(&self, now: Instant, running: bool) -> Instant {
        let draining = self.is_draining();
        let mut wake_at = self.retry_at.unwrap_or(now + IDLE);
        if running {
            wake_at = wake_at.min(self.next_extend);
        }
        // The periodic passes and a refusal's lifting go with a claim, and
        // a claim needs a free slot: a worker whose slots are all taken waits
        // for a task to end (which wakes it) instead. Waking for a pass it
        // cannot run would find the timer still due and spin.
        let free = self.held < self.limits.concurrency;
        if !draining && free {
            wake_at = wake_at.min(self.next_promote).min(self.next_sweep);
            if let Some(at) = self.blocked_until {
                wake_at = wake_at.min(at);
            }
        }
        if let Some(deadline) = self.drain_deadline {
            wake_at = wake_at.min(deadline);
        }
        if let Some(at) = self.linger_until {
            wake_at = wake_at.min(at);
        }
        wake_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Leases extended every 1 s, swept every 1.5 s; retries promoted every
    /// 500 ms; aging every second.
    const LIMITS: Limits = Limits {
        concurrency: 4,
        claim_batch: 3,
        commit_linger: Duration::from_millis(2),
        lease_timeout: Duration::from_secs(3),
        promote_interval: Duration::from_millis(500),
        shutdown_grace: Duration::from_secs(10),
    };
    const BOTH_ON: &[bool] = &[true, true];

    /// A schedule started at `start`, and the instant `ms` after it.
    struct Clock {
        start: Instant,
    }

    impl Clock {
        fn new() -> (Self, Schedule) {
            let start = Instant::now();
            (Clock { start }, Schedule::new(LIMITS, start))
        }

        fn at(&self, ms: u64) -> Instant {
            self.start + Duration::from_millis(ms)
        }
    }

    fn inputs(commits: usize, running: bool) -> TripInputs<'static> {
        TripInputs {
            commits,
            may_release: false,
            running,
            streams_on: BOTH_ON,
            wait_armed: true,
            ready: 0,
        }
    }

    /// Only the claim of a plan (none when no trip is due).
    fn claim_at(schedule: &mut Schedule, now: Instant) -> Option<ClaimPlan> {
        schedule.plan(now, &inputs(0, false)).and_then(|p| p.claim)
    }

    fn claimed(taken: usize, blocked: &[Blocked], last_ids: bool) -> TripResult {
        TripResult {
            committed: 0,
            claim: Some(ClaimResult {
                taken,
                blocked: blocked.to_vec(),
                last_ids,
                taken_elsewhere: false,
            }),
            claim_failed: false,
        }
    }

    fn dead(names: &[&str]) -> Vec<DeadConsumer> {
        names
            .iter()
            .map(|name| DeadConsumer {
                name: (*name).to_owned(),
                stalled: false,
            })
            .collect()
    }

    /// Makes a claim at `now` that comes back short: no more claims until
    /// something may have brought work.
    fn run_dry(schedule: &mut Schedule, now: Instant) {
        assert!(claim_at(schedule, now).is_some(), "a claim was due");
        assert_eq!(schedule.apply(now, claimed(0, &[], false)), None);
        assert_eq!(claim_at(schedule, now), None, "a dry claim stops claiming");
    }

    /// Fills every slot at `clock.at(0)`: a claim batch, then the rest.
    fn filled(clock: &Clock, schedule: &mut Schedule) {
        for want in [3, 1] {
            let claim = claim_at(schedule, clock.at(0)).expect("a claim");
            assert_eq!(claim.max, want);
            schedule.apply(clock.at(0), claimed(want, &[], false));
            for _ in 0..want {
                schedule.accepted(1);
            }
        }
    }

    #[test]
    fn a_full_worker_sleeps_through_its_due_passes_and_runs_them_once_a_slot_frees() {
        let (clock, mut schedule) = Clock::new();
        filled(&clock, &mut schedule);
        assert_eq!(schedule.held(), LIMITS.concurrency);

        // The promotion is due at 500 ms; every slot is taken, so no trip
        // goes, and the loop sleeps until the lease extension, not until a
        // time already past.
        let now = clock.at(600);
        assert_eq!(schedule.plan(now, &inputs(0, true)), None);
        let wake = schedule.next_wake(now, true);
        assert!(wake > now, "woke {:?} before now", now - wake);
        assert_eq!(wake, clock.at(1000), "the lease extension's time");

        // A task ends: its commit's trip carries a claim with the passes due.
        let plan = schedule.plan(now, &inputs(1, true)).expect("a trip");
        let claim = plan.claim.expect("a claim for the freed slot");
        assert_eq!((claim.max, claim.promote, claim.sweep), (1, true, false));
    }

    #[test]
    fn commits_wait_for_the_prefetched_tasks_up_to_the_linger_and_a_batch() {
        let ms = |d: Duration| u64::try_from(d.as_millis()).expect("ms");
        let linger = ms(LIMITS.commit_linger);
        let waiting = |commits: usize, ready: usize| TripInputs {
            ready,
            ..inputs(commits, true)
        };
        let (clock, mut schedule) = Clock::new();
        filled(&clock, &mut schedule);
        // A task ended and the next prefetched one took its slot while two
        // more wait: the commit waits, the loop wakes by the linger.
        let first = clock.at(100);
        assert_eq!(schedule.plan(first, &waiting(1, 2)), None);
        assert_eq!(schedule.next_wake(first, true), clock.at(100 + linger));
        // The next task ends before the linger is out: both wait, and the
        // linger still counts from the first.
        let second = clock.at(100 + linger - 1);
        assert_eq!(schedule.plan(second, &waiting(2, 1)), None);
        assert_eq!(schedule.next_wake(second, true), clock.at(100 + linger));
        // The linger is out: one trip commits both and claims their slots.
        let plan = schedule
            .plan(clock.at(100 + linger), &waiting(2, 1))
            .expect("a trip");
        assert_eq!(plan.commits, 2);
        assert_eq!(plan.claim.map(|c| c.max), Some(2));
        schedule.apply(
            clock.at(100 + linger),
            TripResult {
                committed: 2,
                ..claimed(2, &[], false)
            },
        );
        schedule.accepted(1);
        schedule.accepted(1);
        // After a trip the next commit lingers afresh, one that may release
        // work too: the worker has tasks to run, and its trip claims what
        // came.
        let releasing = TripInputs {
            may_release: true,
            ..waiting(1, 2)
        };
        assert_eq!(schedule.plan(clock.at(200), &releasing), None);
        assert_eq!(
            schedule.next_wake(clock.at(200), true),
            clock.at(200 + linger)
        );

        // The commit goes at once when no prefetched task waits, when the
        // commits make a claim batch, when a lease extension is due, or
        // while draining.
        for (what, inputs, at) in [
            ("no prefetched task", waiting(1, 0), 300),
            ("a claim batch", waiting(LIMITS.claim_batch, 2), 300),
            ("an extension due", waiting(1, 2), 1000),
        ] {
            let (clock, mut schedule) = Clock::new();
            filled(&clock, &mut schedule);
            let plan = schedule.plan(clock.at(at), &inputs);
            assert_eq!(plan.map(|p| p.commits), Some(inputs.commits), "{what}");
            assert!(
                schedule.next_wake(clock.at(at), true) > clock.at(at + linger),
                "{what}: no linger timer left"
            );
        }
        let (clock, mut schedule) = Clock::new();
        filled(&clock, &mut schedule);
        schedule.drain(clock.at(300));
        let plan = schedule.plan(clock.at(300), &waiting(1, 2));
        assert_eq!(plan.map(|p| p.commits), Some(1), "draining");
        // A linger of zero: never.
        let clock = Clock::new().0;
        let mut schedule = Schedule::new(
            Limits {
                commit_linger: Duration::ZERO,
                ..LIMITS
            },
            clock.at(0),
        );
        filled(&clock, &mut schedule);
        let plan = schedule.plan(clock.at(300), &waiting(1, 2));
        assert_eq!(plan.map(|p| p.commits), Some(1), "no linger");
    }

    #[test]
    fn a_fresh_loop_claims_at_once_with_every_periodic_pass() {
        let (clock, mut schedule) = Clock::new();
        let plan = schedule.plan(clock.at(0), &inputs(0, false));
        assert_eq!(
            plan,
            Some(TripPlan {
                commits: 0,
                extend: false,
                claim: Some(ClaimPlan {
                    max: 3,
                    aging: true,
                    sweep: true,
                    promote: true,
                    want_last_ids: true,
                    watch: vec![true, true],
                    gate: false,
                }),
            })
        );
    }

    /// After a dry claim at 0 whose periodic passes ran, a ring at `ms`
    /// (before any of them is due again) and the claim it brings.
    fn claim_after_ring(schedule: &mut Schedule, clock: &Clock, ms: u64) -> ClaimPlan {
        assert!(claim_at(schedule, clock.at(0)).is_some(), "a claim was due");
        let armed = schedule.apply(clock.at(0), claimed(0, &[], true));
        assert_eq!(armed, Some(vec![true, true]), "the wait is armed");
        schedule.rung();
        claim_at(schedule, clock.at(ms)).expect("a ring brings a claim")
    }

    #[test]
    fn a_claim_only_a_ring_brought_about_is_gated_on_it() {
        let (clock, mut schedule) = Clock::new();
        let claim = claim_after_ring(&mut schedule, &clock, 100);
        assert!(
            claim.gate && !claim.aging && !claim.promote && !claim.sweep,
            "{claim:?}"
        );

        // The ring is used up by the claim: the next one (a full claim came
        // back, there may be more) is not gated.
        schedule.apply(clock.at(100), claimed(claim.max, &[], false));
        let next = claim_at(&mut schedule, clock.at(150)).expect("a claim");
        assert!(!next.gate, "{next:?}");
    }

    #[test]
    fn a_claim_any_other_wake_up_brought_about_is_not_gated() {
        type Wake = fn(&mut Schedule);
        let others: [(&str, Wake); 4] = [
            ("a failed wait", Schedule::woken),
            ("routing rules", Schedule::rules_changed),
            ("a dead worker", |s: &mut Schedule| {
                s.workers_seen(dead(&["w9"]));
            }),
            ("freed memory", |s: &mut Schedule| {
                s.memory_blocked = true;
                s.task_finished(true);
            }),
        ];
        for (what, wake) in others {
            // The other reason before the ring, and after it.
            for first in [true, false] {
                let (clock, mut schedule) = Clock::new();
                assert!(claim_at(&mut schedule, clock.at(0)).is_some());
                schedule.apply(clock.at(0), claimed(0, &[], true));
                if first {
                    wake(&mut schedule);
                    schedule.rung();
                } else {
                    schedule.rung();
                    wake(&mut schedule);
                }
                let claim = claim_at(&mut schedule, clock.at(100)).expect("a claim");
                assert!(!claim.gate, "{what} (first: {first}): {claim:?}");
            }
        }

        // A ring whose claim carries a periodic pass, or commits that may
        // release work, is not gated either.
        let (clock, mut schedule) = Clock::new();
        let claim = claim_after_ring(&mut schedule, &clock, 500);
        assert!(claim.promote && !claim.gate, "{claim:?}");
        let (clock, mut schedule) = Clock::new();
        assert!(claim_at(&mut schedule, clock.at(0)).is_some());
        schedule.apply(clock.at(0), claimed(0, &[], true));
        schedule.rung();
        let releasing = TripInputs {
            may_release: true,
            ..inputs(1, false)
        };
        let plan = schedule.plan(clock.at(100), &releasing).expect("a trip");
        assert!(!plan.claim.expect("a claim").gate);
    }

    #[test]
    fn a_claim_another_worker_answered_keeps_the_refusals_and_stops_claiming() {
        let (clock, mut schedule) = Clock::new();
        let refused = [Blocked::No, Blocked::Memory];
        assert!(claim_at(&mut schedule, clock.at(0)).is_some());
        schedule.apply(clock.at(0), claimed(0, &refused, true));
        // The wait is armed without the refused stream from the next claim on.
        schedule.woken();
        let claim = claim_at(&mut schedule, clock.at(50)).expect("a claim");
        assert_eq!(claim.watch, vec![true, false]);
        schedule.apply(clock.at(50), claimed(0, &refused, true));
        schedule.rung();
        let claim = claim_at(&mut schedule, clock.at(100)).expect("a claim");
        assert!(claim.gate, "{claim:?}");
        let elsewhere = TripResult {
            committed: 0,
            claim: Some(ClaimResult {
                taken: 0,
                blocked: Vec::new(),
                last_ids: false,
                taken_elsewhere: true,
            }),
            claim_failed: false,
        };
        assert_eq!(
            schedule.apply(clock.at(100), elsewhere),
            None,
            "nothing to arm from"
        );
        assert_eq!(
            claim_at(&mut schedule, clock.at(150)),
            None,
            "no claim until something comes"
        );
        assert_eq!(schedule.blocked, refused.to_vec());
        // The memory refusal of the claim before still stands: a task that
        // ends brings a claim.
        schedule.task_finished(false);
        assert!(claim_at(&mut schedule, clock.at(200)).is_some());
    }

    #[test]
    fn aging_promotion_and_sweeps_run_on_their_timers() {
        let (clock, mut schedule) = Clock::new();
        // (ms, aging every 1 s, sweep every half lease, promotion every 500 ms)
        for (ms, aging, sweep, promote) in [
            (0, true, true, true),
            (400, false, false, false),
            (500, false, false, true),
            (999, false, false, false),
            (1_000, true, false, true),
            (1_499, false, false, false),
            (1_500, false, true, true),
            (1_700, false, false, false),
            (2_000, true, false, true),
            (3_000, true, true, true),
        ] {
            let claim = claim_at(&mut schedule, clock.at(ms)).expect("a claim");
            assert_eq!(
                (claim.aging, claim.sweep, claim.promote),
                (aging, sweep, promote),
                "at {ms} ms"
            );
            // A full claim: there may be more work.
            schedule.apply(clock.at(ms), claimed(claim.max, &[], false));
        }
    }

    #[test]
    fn periodic_passes_wait_for_a_claim_to_carry_them() {
        let (clock, mut schedule) = Clock::new();
        run_dry(&mut schedule, clock.at(0));
        // A trip with commits only carries no pass and consumes no timer.
        let plan = schedule.plan(clock.at(1_600), &inputs(1, false));
        assert_eq!(plan.map(|p| p.claim), Some(None));
        schedule.woken();
        let claim = claim_at(&mut schedule, clock.at(1_700)).expect("a claim");
        assert!(claim.aging && claim.sweep && claim.promote, "{claim:?}");
    }

    #[test]
    fn an_idle_loop_wakes_for_the_next_promotion_or_sweep() {
        let (clock, mut schedule) = Clock::new();
        run_dry(&mut schedule, clock.at(0));
        assert_eq!(schedule.next_wake(clock.at(0), false), clock.at(500));
        // Waking before it is due changes nothing; at it, a claim goes.
        assert!(!schedule.timer_fired(clock.at(499)));
        assert_eq!(claim_at(&mut schedule, clock.at(499)), None);
        assert!(!schedule.timer_fired(clock.at(500)));
        let claim = claim_at(&mut schedule, clock.at(500)).expect("a claim");
        assert!(claim.promote && !claim.sweep && !claim.aging, "{claim:?}");
        schedule.apply(clock.at(500), claimed(0, &[], false));
        assert_eq!(schedule.next_wake(clock.at(500), false), clock.at(1_000));
    }

    #[test]
    fn leases_are_extended_every_third_of_a_lease_while_tasks_run() {
        let (clock, mut schedule) = Clock::new();
        run_dry(&mut schedule, clock.at(0));
        // (ms, a task runs, whether the trip extends: None for no trip)
        for (ms, running, extend) in [
            (500, true, None),
            (999, true, None),
            (1_000, false, None),
            (1_000, true, Some(true)),
            (1_500, true, None),
            (1_999, true, None),
            (2_100, true, Some(true)),
            (3_099, true, None),
            (3_100, true, Some(true)),
        ] {
            let plan = schedule.plan(clock.at(ms), &inputs(0, running));
            assert_eq!(plan.map(|p| p.extend), extend, "at {ms} ms");
        }
        // A running task's next extension wakes an idle loop; without one,
        // the promotion and the sweep do.
        let (clock, mut schedule) = Clock::new();
        run_dry(&mut schedule, clock.at(0));
        schedule.timer_fired(clock.at(600));
        let claim = claim_at(&mut schedule, clock.at(600));
        assert!(claim.is_some_and(|c| c.promote));
        schedule.apply(clock.at(600), claimed(0, &[], false));
        schedule.timer_fired(clock.at(1_100));
        assert!(claim_at(&mut schedule, clock.at(1_100)).is_some());
        schedule.apply(clock.at(1_100), claimed(0, &[], false));
        assert_eq!(schedule.next_wake(clock.at(1_100), true), clock.at(1_000));
        assert_eq!(schedule.next_wake(clock.at(1_100), false), clock.at(1_500));
    }

    #[test]
    fn a_trip_carries_the_commits_and_a_claim_for_the_free_slots_at_most_a_batch() {
        // (slots held, commits waiting, the claim's size)
        for (held, commits, max) in [
            (0, 0, Some(3)),
            (2, 0, Some(2)),
            (3, 0, Some(1)),
            (4, 0, None),
            (4, 1, Some(1)),
            (4, 4, Some(3)),
            (6, 1, None),
        ] {
            let (clock, mut schedule) = Clock::new();
            schedule.accepted(held);
            let plan = schedule.plan(clock.at(0), &inputs(commits, false));
            let expect = (commits > 0 || max.is_some()).then_some((commits, max));
            assert_eq!(
                plan.map(|p| (p.commits, p.claim.map(|c| c.max))),
                expect,
                "{held} held, {commits} commits"
            );
        }
    }

    #[test]
    fn commits_and_slots_freed_without_a_commit_free_their_slots() {
        let (clock, mut schedule) = Clock::new();
        schedule.accepted(4);
        assert_eq!(schedule.held(), 4);
        assert!(!schedule.idle_after(3));
        assert!(schedule.idle_after(4));
        assert_eq!(claim_at(&mut schedule, clock.at(0)), None);
        // A task whose lease was lost (or whose device failed) frees its
        // slot at once; one that finished holds it until its commit.
        schedule.task_finished(true);
        schedule.task_finished(false);
        assert_eq!(schedule.held(), 3);
        let plan = schedule
            .plan(clock.at(0), &inputs(1, true))
            .expect("a trip");
        assert_eq!(plan.claim.map(|c| c.max), Some(2));
        schedule.apply(
            clock.at(0),
            TripResult {
                committed: 1,
                claim: None,
                claim_failed: false,
            },
        );
        assert_eq!(schedule.held(), 2);
    }

    #[test]
    fn a_short_claim_stops_claiming_until_something_may_have_brought_work() {
        type Nudge = fn(&mut Schedule, Instant);
        let nudges: [(&str, Nudge); 5] = [
            ("a task arrived", |s, _| s.woken()),
            ("the rules changed", |s, _| s.rules_changed()),
            ("a worker died", |s, _| {
                assert!(s.workers_seen(dead(&["w2"])));
            }),
            ("a promotion fell due", |s, now| {
                assert!(!s.timer_fired(now + Duration::from_millis(500)));
            }),
            ("a refused claim may pass by now", |s, now| {
                s.apply(now, claimed(0, &[Blocked::For(50)], false));
                assert!(!s.timer_fired(now + Duration::from_millis(50)));
            }),
        ];
        for (why, nudge) in nudges {
            let (clock, mut schedule) = Clock::new();
            run_dry(&mut schedule, clock.at(0));
            // A full claim keeps claiming; a short one stops.
            nudge(&mut schedule, clock.at(0));
            assert!(
                claim_at(&mut schedule, clock.at(0) + Duration::from_millis(500)).is_some(),
                "{why}"
            );
        }
        // A task that ends frees no work when no claim waited for memory.
        let (clock, mut schedule) = Clock::new();
        run_dry(&mut schedule, clock.at(0));
        schedule.task_finished(false);
        assert_eq!(claim_at(&mut schedule, clock.at(0)), None);
    }

    #[test]
    fn a_commit_that_may_release_work_carries_a_claim_after_a_short_one() {
        // (commits, whether one may release work, the claim's size)
        for (commits, may_release, max) in [(1, false, None), (1, true, Some(3)), (0, true, None)] {
            let (clock, mut schedule) = Clock::new();
            schedule.accepted(commits);
            run_dry(&mut schedule, clock.at(0));
            schedule.task_finished(false);
            let inputs = TripInputs {
                may_release,
                ..inputs(commits, false)
            };
            let plan = schedule.plan(clock.at(0), &inputs);
            assert_eq!(
                plan.map(|p| p.claim.map(|c| c.max)),
                (commits > 0).then_some(max),
                "{commits} commits, may release: {may_release}"
            );
        }
        // A claim that comes back short after it stops claiming again.
        let (clock, mut schedule) = Clock::new();
        schedule.accepted(1);
        run_dry(&mut schedule, clock.at(0));
        schedule.task_finished(false);
        let inputs = TripInputs {
            may_release: true,
            ..inputs(1, false)
        };
        assert!(schedule.plan(clock.at(0), &inputs).is_some());
        schedule.apply(
            clock.at(0),
            TripResult {
                committed: 1,
                ..claimed(0, &[], false)
            },
        );
        assert_eq!(claim_at(&mut schedule, clock.at(0)), None);
    }

    #[test]
    fn a_claim_refused_for_memory_is_tried_again_when_a_task_ends() {
        let (clock, mut schedule) = Clock::new();
        assert!(claim_at(&mut schedule, clock.at(0)).is_some());
        schedule.apply(
            clock.at(0),
            claimed(1, &[Blocked::Memory, Blocked::No], false),
        );
        schedule.accepted(1);
        assert_eq!(claim_at(&mut schedule, clock.at(0)), None);
        schedule.task_finished(false);
        let plan = schedule
            .plan(clock.at(0), &inputs(1, false))
            .expect("a trip");
        assert_eq!(
            plan.claim.map(|c| (c.max, c.watch)),
            Some((3, vec![false, true]))
        );
        // Once a claim is no longer refused for memory, an ending task
        // brings no claim.
        schedule.apply(clock.at(0), claimed(0, &[Blocked::No, Blocked::No], false));
        schedule.task_finished(false);
        assert_eq!(claim_at(&mut schedule, clock.at(0)), None);
    }

    #[test]
    fn refused_streams_and_streams_outside_the_role_are_left_out_of_the_wait() {
        let (clock, mut schedule) = Clock::new();
        let now = clock.at(0);
        let claim = claim_at(&mut schedule, now).expect("a claim");
        assert_eq!(claim.watch, [true, true]);
        // The claim refused stream 0's next entry by rule and found the
        // streams dry: the wait is armed as that claim planned it.
        let arm = schedule.apply(now, claimed(0, &[Blocked::Rule, Blocked::No], true));
        assert_eq!(arm, Some(vec![true, true]));
        // The next claim leaves stream 0 out and asks for fresh ids, since
        // the wait covers other streams than it should.
        schedule.woken();
        let claim = claim_at(&mut schedule, now).expect("a claim");
        assert_eq!(
            (claim.watch.clone(), claim.want_last_ids),
            (vec![false, true], true)
        );
        let arm = schedule.apply(now, claimed(0, &[Blocked::Rule, Blocked::No], true));
        assert_eq!(arm, Some(vec![false, true]));
        // Armed with the right streams: no fresh ids needed.
        schedule.woken();
        let claim = claim_at(&mut schedule, now).expect("a claim");
        assert_eq!(
            (claim.watch.clone(), claim.want_last_ids),
            (vec![false, true], false)
        );
        // ... unless the wait fired (it is no longer armed).
        schedule.apply(now, claimed(0, &[Blocked::Rule, Blocked::No], false));
        schedule.woken();
        let not_armed = TripInputs {
            wait_armed: false,
            ..inputs(0, false)
        };
        let plan = schedule.plan(now, &not_armed).expect("a trip");
        assert_eq!(plan.claim.map(|c| c.want_last_ids), Some(true));
        // A stream the rules turn off (work outside the role) is never
        // watched; a refusal for age or memory leaves its stream out too.
        for (on, blocked, watch) in [
            ([false, true], [Blocked::No, Blocked::No], [false, true]),
            ([true, false], [Blocked::No, Blocked::No], [true, false]),
            ([true, true], [Blocked::For(10), Blocked::No], [false, true]),
            ([true, true], [Blocked::No, Blocked::Memory], [true, false]),
            ([true, true], [Blocked::Rule, Blocked::Rule], [false, false]),
        ] {
            let (clock, mut schedule) = Clock::new();
            schedule.plan(clock.at(0), &inputs(0, false));
            schedule.apply(clock.at(0), claimed(3, &blocked, false));
            let inputs = TripInputs {
                streams_on: &on,
                ..inputs(0, false)
            };
            let plan = schedule.plan(clock.at(0), &inputs).expect("a trip");
            assert_eq!(
                plan.claim.map(|c| c.watch),
                Some(watch.to_vec()),
                "{on:?} {blocked:?}"
            );
        }
    }

    #[test]
    fn a_refusal_that_lifts_with_age_wakes_the_loop_when_it_may_pass() {
        // (the refusals, when the loop wakes for them (ms after the claim))
        for (blocked, wake) in [
            (vec![Blocked::For(250), Blocked::For(100), Blocked::No], 100),
            (vec![Blocked::No, Blocked::For(0)], 1),
            (vec![Blocked::Rule, Blocked::Memory], 500),
        ] {
            let (clock, mut schedule) = Clock::new();
            assert!(claim_at(&mut schedule, clock.at(0)).is_some());
            schedule.apply(clock.at(0), claimed(0, &blocked, false));
            assert_eq!(
                schedule.next_wake(clock.at(0), false),
                clock.at(wake),
                "{blocked:?}"
            );
            assert!(!schedule.timer_fired(clock.at(wake - 1)));
            assert_eq!(claim_at(&mut schedule, clock.at(wake - 1)), None);
            assert!(!schedule.timer_fired(clock.at(wake)));
            assert!(
                claim_at(&mut schedule, clock.at(wake)).is_some(),
                "{blocked:?}"
            );
        }
    }

    #[test]
    fn redis_failures_back_off_doubling_to_a_cap_and_reset_on_success() {
        let (clock, mut schedule) = Clock::new();
        let mut now = clock.at(0);
        for expect in [50, 100, 200, 400, 800, 1_600, 2_000, 2_000] {
            assert!(schedule.plan(now, &inputs(1, true)).is_some());
            let delay = schedule.failed(now);
            assert_eq!(delay, Duration::from_millis(expect));
            // No trip while backing off, commits or not; the loop wakes at
            // the retry (or sooner for the periodic passes).
            let retry = now + delay;
            assert_eq!(
                schedule.plan(retry - Duration::from_millis(1), &inputs(1, true)),
                None
            );
            assert!(schedule.next_wake(now, true) <= retry);
            now = retry;
        }
        assert!(schedule.plan(now, &inputs(1, true)).is_some());
        schedule.apply(now, claimed(3, &[], false));
        assert_eq!(schedule.failed(now), Duration::from_millis(50));
    }

    #[test]
    fn a_claim_that_keeps_failing_backs_off_though_its_trips_reach_redis() {
        // Each trip reaches Redis (its commits go through) but its claim
        // fails: the delay doubles as for a trip that failed whole, and the
        // first claim that succeeds resets it.
        let (clock, mut schedule) = Clock::new();
        let mut at = 0;
        for delay in [50, 100, 200, 400] {
            assert!(
                claim_at(&mut schedule, clock.at(at)).is_some(),
                "at {at} ms"
            );
            let result = TripResult {
                committed: 0,
                claim: None,
                claim_failed: true,
            };
            assert_eq!(schedule.apply(clock.at(at), result), None);
            assert_eq!(schedule.failed(clock.at(at)), Duration::from_millis(delay));
            assert!(
                schedule
                    .plan(clock.at(at + delay - 1), &inputs(0, false))
                    .is_none(),
                "no trip before the {delay} ms are up"
            );
            at += delay;
        }
        assert!(claim_at(&mut schedule, clock.at(at)).is_some());
        schedule.apply(clock.at(at), claimed(0, &[], false));
        assert_eq!(schedule.failed(clock.at(at)), Duration::from_millis(50));
    }

    #[test]
    fn draining_stops_claims_and_ends_when_nothing_is_held() {
        let (clock, mut schedule) = Clock::new();
        assert!(claim_at(&mut schedule, clock.at(0)).is_some());
        schedule.apply(clock.at(0), claimed(2, &[], false));
        schedule.accepted(2);
        schedule.drain(clock.at(100));
        assert!(schedule.is_draining());
        // No claim, whatever may have brought work; commits and lease
        // extensions still go.
        schedule.woken();
        schedule.rules_changed();
        assert!(!schedule.timer_fired(clock.at(600)));
        assert_eq!(claim_at(&mut schedule, clock.at(600)), None);
        let plan = schedule.plan(clock.at(1_000), &inputs(1, true));
        assert_eq!(
            plan,
            Some(TripPlan {
                commits: 1,
                extend: true,
                claim: None
            })
        );
        assert!(!schedule.drained());
        schedule.apply(
            clock.at(1_000),
            TripResult {
                committed: 1,
                claim: None,
                claim_failed: false,
            },
        );
        assert!(!schedule.drained(), "one task still runs");
        schedule.task_finished(true);
        assert!(schedule.drained());
    }

    #[test]
    fn the_grace_period_ends_a_drain_and_only_the_deadline_and_leases_wake_it() {
        let (clock, mut schedule) = Clock::new();
        assert!(claim_at(&mut schedule, clock.at(0)).is_some());
        schedule.apply(
            clock.at(0),
            claimed(1, &[Blocked::No, Blocked::For(50)], false),
        );
        schedule.accepted(1);
        schedule.drain(clock.at(100));
        // Neither the promotion, the sweep nor the refusal wake a draining
        // loop: the leases and the end of the grace period do.
        assert_eq!(schedule.next_wake(clock.at(100), false), clock.at(10_100));
        assert_eq!(schedule.next_wake(clock.at(100), true), clock.at(1_000));
        assert!(!schedule.timer_fired(clock.at(10_099)));
        assert!(schedule.timer_fired(clock.at(10_100)));
    }

    #[test]
    fn dead_workers_are_taken_over_until_a_look_no_longer_lists_them() {
        let (_clock, mut schedule) = Clock::new();
        // (the look's dead workers, whether that is news, what the claims
        // take over)
        for (look, news, taken_over) in [
            (vec!["w1"], true, vec!["w1"]),
            (vec!["w1"], false, vec!["w1"]),
            (vec!["w1", "w2"], true, vec!["w1", "w2"]),
            (vec!["w2"], true, vec!["w2"]),
            (vec![], false, vec![]),
            (vec!["w2"], true, vec!["w2"]),
        ] {
            assert_eq!(schedule.workers_seen(dead(&look)), news, "{look:?}");
            let names: Vec<&str> = schedule
                .dead_workers()
                .iter()
                .map(|d| d.name.as_str())
                .collect();
            assert_eq!(names, taken_over);
        }
        // A draining worker takes nothing over.
        schedule.drain(Instant::now());
        assert!(!schedule.workers_seen(dead(&["w3"])));
        assert!(schedule.dead_workers().is_empty());
    }

    #[test]
    fn a_worker_that_died_is_taken_over_by_the_next_claim() {
        let (clock, mut schedule) = Clock::new();
        run_dry(&mut schedule, clock.at(0));
        assert!(schedule.workers_seen(dead(&["w1"])));
        assert!(claim_at(&mut schedule, clock.at(10)).is_some());
        assert_eq!(schedule.dead_workers(), dead(&["w1"]));
    }
}
