//! The claim loop: commits finished tasks, extends the leases of running
//! ones, claims new ones in strict priority order (taking over the tasks of
//! dead workers first), starts them, and waits for the next thing to do.
//!
//! One round trip carries everything: the commits of every task that
//! finished since the last trip, the lease extensions that are due, then one
//! claim for the slots the commits free. Under load the loop never waits on
//! Redis twice for one task; when idle it sleeps in the [`Doorbell`] until a
//! task arrives, a retry falls due or a worker dies.
//!
//! Routing: each claim carries this worker's rule per stream (from the
//! [`Router`]) and its free device memory. A stream whose next entry the
//! rules refused is left out of the blocking wait (new entries behind that
//! one cannot be taken before it) and looked at again when the refusal can
//! change: after the wait the claim named, when a running task frees
//! memory, or when the rules change.
//!
//! The decisions (when a trip goes and what it carries, the periodic
//! passes, the retry backoff, draining, when to wake) are the
//! [`Schedule`]'s, which does no I/O; this loop sends its plans to Redis,
//! acts on the results and feeds them back.
//!
//! Prefetch: with `prefetch` above 0 the claims ask for that many entries
//! beyond the free slots; those wait, claimed and leased, in [`Prefetched`]
//! and start the moment a slot frees, while the trip that commits the
//! finished task claims the next one to hold. A cancel settles a waiting
//! one at once, a pause or a drain hands it back to its stream at once, a
//! deadline that passed while it waited expires it at its turn.
//!
//! Device failure: when a task ends with its device unusable, the worker
//! stops claiming, commits what finished, hands every running task back at
//! once, and returns with the failure, for the process to exit and its
//! fleet to restart it.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::FutureExt;
use tandem_shared::store::{
    ClaimRequest, ClaimedEntry, Committed, Completion, DeadConsumer, Disposition, Store,
    StoreError, StreamRef, Trip, Verdict,
};
use tandem_shared::wire::{SplitRole, TaskEntry};
use tandem_shared::{ErrorCode, Status, TaskId};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::Instrument;

use crate::doorbell::{Doorbell, Ring, WaitPoint};
use crate::executor::{DeviceFailure, Executor, Plan};
use crate::prefetch::{Prefetched, Ready};
use crate::router::Router;
use crate::running::Running;
use crate::schedule::{ClaimResult, Limits, Schedule, TripInputs, TripPlan, TripResult};
use crate::shutdown::Shutdown;
use crate::stats::Stats;
use crate::watch::Observation;

#[derive(Debug)]
pub(crate) struct Dispatcher {
    pub store: Store,
    pub executor: Arc<Executor>,
    /// The streams this worker claims from, highest priority first.
    pub streams: Vec<StreamRef>,
    pub worker_id: String,
    pub device: String,
    pub concurrency: usize,
    /// Tasks claimed ahead of the free slots, to start without a claim
    /// round trip when a slot frees (0: none).
    pub prefetch: usize,
    /// How long a commit may wait for the prefetched tasks that run next.
    pub commit_linger: Duration,
    pub claim_batch: usize,
    pub aging_ms: u64,
    pub block_ms: u64,
    /// A running task's lease; extended every third of it.
    pub lease_timeout: Duration,
    /// How often due retries are moved back into their streams.
    pub promote_interval: Duration,
    pub max_deliveries: u32,
    pub shutdown_grace: Duration,
    pub running: Running,
    pub stats: Arc<Stats>,
    /// Live and dead workers, from the watch task: its latest look.
    pub observations: watch::Receiver<Observation>,
    /// How many live workers the latest look the router took in saw, for the
    /// registry record (`live_seen`), and the heartbeat's nudge to write it.
    pub live_seen: Arc<std::sync::atomic::AtomicUsize>,
    pub nudge: Arc<tokio::sync::Notify>,
    /// Rung by the promoter when it moved due tasks into streams or a
    /// flow control changed (a resume): look again.
    pub flow_changed: Arc<tokio::sync::Notify>,
    pub router: Router,
    /// The worker's device: its memory ledger says what a claim may take.
    pub device_memory: Arc<crate::device::Device>,
    /// Shards per live GPU a splittable parallel task is cut into (0: never).
    pub shards_per_gpu: u32,
}

/// How a started task ended, as its run reports it to the dispatcher.
#[derive(Debug)]
pub(crate) enum Finished {
    Done(Completion),
    /// Sent before the `Done` of a task abandoned past its run-time limit:
    /// its computation still runs, so its slot stays taken after the
    /// commit, until `Released`.
    Abandoned,
    /// An abandoned task's computation ended: its slot is free.
    Released,
    /// An abandoned task's computation runs on a GPU worker, where a kernel
    /// cannot be stopped: after the commits, the worker exits for its fleet
    /// to restart it (as after a device failure).
    Restart(String),
    /// Its device failed; the entry it holds is to be handed back.
    DeviceFailed {
        id: TaskId,
        stream: usize,
        entry_id: String,
        failure: DeviceFailure,
    },
}

/// What the loop keeps about tasks that finished but are not yet committed.
#[derive(Debug, Default)]
struct Outcomes {
    /// Tasks whose lease another worker took over (or whose entry is gone):
    /// their outcome here is dropped, not committed.
    lost: HashSet<TaskId>,
    to_commit: Vec<Completion>,
    /// The first device failure, and the entries its tasks held.
    device_failure: Option<String>,
    failed_entries: Vec<(TaskId, usize, String)>,
}

impl Outcomes {
    /// Takes in what a task's run reported and tells the schedule.
    fn take(&mut self, done: Finished, schedule: &mut Schedule) {
        match done {
            // The abandoned computation holds a slot of its own from now
            // until it ends; the commit frees the task's.
            Finished::Abandoned => schedule.accepted(1),
            Finished::Released => schedule.task_finished(true),
            done => schedule.task_finished(self.absorb(done)),
        }
    }

    /// Queues a finished task's commit, unless its lease was lost: then its
    /// outcome is dropped (the worker that took it over commits). True when
    /// the task's slot came free without a commit.
    fn absorb(&mut self, done: Finished) -> bool {
        match done {
            Finished::Abandoned | Finished::Released => false,
            Finished::Restart(message) => {
                self.device_failure.get_or_insert(message);
                true
            }
            Finished::Done(done) => {
                if self.lost.remove(&done.id) {
                    tracing::info!(task = %done.id, "outcome dropped: the task's lease was lost");
                    true
                } else {
                    self.to_commit.push(done);
                    false
                }
            }
            Finished::DeviceFailed {
                id,
                stream,
                entry_id,
                failure,
            } => {
                if self.lost.remove(&id) {
                    return true;
                }
                tracing::error!(task = %id, "device failed: {}", failure.message);
                self.failed_entries.push((id, stream, entry_id));
                self.device_failure.get_or_insert(failure.message);
                true
            }
        }
    }
}

/// Whether committing `done` may put work into the streams at once: a
/// success can release a workflow node's children or queue a split's merge
/// (its last shard's), a split puts its shards in. The worker cannot tell a
/// workflow node or a last shard from here (the record knows), so every
/// success counts: the trip's claim then costs one claim script when
/// nothing came.
fn may_release(done: &Completion) -> bool {
    match done.disposition {
        Disposition::Split { .. } => true,
        Disposition::Final => done.finish.status == Status::Succeeded,
        Disposition::Retry { .. } | Disposition::Dead | Disposition::HandBack { .. } => false,
    }
}

/// The newest entry of each stream this worker claimed, to tell its own
/// arrivals from others' when the doorbell rings.
#[derive(Debug, Default)]
struct OwnClaims {
    newest: std::collections::HashMap<String, (u64, u64)>,
}

impl OwnClaims {
    fn took(&mut self, stream: &str, entry_id: &str) {
        if let Some(id) = parse_entry_id(entry_id) {
            let newest = self.newest.entry(stream.to_owned()).or_insert(id);
            *newest = (*newest).max(id);
        }
    }

    /// Whether every arrival of `ring` is an entry this worker claimed (or
    /// one before it in its stream, which the claim passed).
    fn covers(&self, ring: &Ring) -> bool {
        ring.arrivals.iter().all(|(stream, id)| {
            match (self.newest.get(stream), parse_entry_id(id)) {
                (Some(newest), Some(id)) => id <= *newest,
                _ => false,
            }
        })
    }
}

/// A stream entry id, `<ms>-<seq>`, as a pair that orders like the ids.
fn parse_entry_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// How a worker's run ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerReport {
    pub succeeded: u64,
    pub failed: u64,
    /// Tasks still running when the shutdown grace period ran out (or the
    /// device failed), handed back to their streams for another worker.
    pub handed_back: Vec<TaskId>,
    /// Set when the worker stopped because its device failed: why.
    pub device_failed: Option<String>,
}

impl Dispatcher {
    pub async fn run(mut self, mut shutdown: Shutdown) -> WorkerReport {
        let waker = Doorbell::spawn(self.store.clone(), self.block_ms);
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Finished>();
        let mut outcomes = Outcomes::default();
        let mut prefetched = Prefetched::default();
        // The schedule counts every claimed entry as a slot: the prefetched
        // ones are slots that do not run yet.
        let limits = Limits {
            concurrency: self.concurrency + self.prefetch,
            claim_batch: self.claim_batch,
            commit_linger: self.commit_linger,
            lease_timeout: self.lease_timeout,
            promote_interval: self.promote_interval,
            shutdown_grace: self.shutdown_grace,
        };
        let mut schedule = Schedule::new(limits, Instant::now());
        let mut own = OwnClaims::default();
        // The ring that alone brought the next claim about: the claim passes
        // its arrivals (see `ClaimRequest::arrivals`).
        let mut gate: Option<Ring> = None;

        loop {
            while let Ok(done) = done_rx.try_recv() {
                outcomes.take(done, &mut schedule);
            }
            // A busy worker takes in the registry's latest look here, not
            // only when it sleeps.
            if self.observations.has_changed().unwrap_or(false) {
                let seen = self.observations.borrow_and_update().clone();
                self.take_in(seen, &mut schedule);
            }
            if outcomes.device_failure.is_some() {
                break;
            }
            // A busy loop goes from trip to trip without reaching the wait
            // below (with prefetch at concurrency 1 it always is: the next
            // task runs while the trip goes), so a shutdown and a flow
            // change are looked at here too.
            if !schedule.is_draining() {
                if shutdown.is_triggered() {
                    self.begin_drain(&mut schedule, &mut prefetched).await;
                } else if self.flow_changed.notified().now_or_never().is_some() {
                    schedule.woken();
                    self.release_paused(&mut prefetched, &mut schedule).await;
                }
            }
            self.settle_prefetched(&mut prefetched, &mut outcomes, &mut schedule, &done_tx);
            let now = Instant::now();
            let commits = outcomes.to_commit.len();
            if self.router.set_idle(schedule.idle_after(commits)) {
                schedule.rules_changed();
            }
            let streams_on: Vec<bool> = (0..self.streams.len())
                .map(|i| self.router.is_on(i))
                .collect();
            let inputs = TripInputs {
                commits,
                may_release: outcomes.to_commit.iter().any(may_release),
                running: !self.running.is_empty(),
                streams_on: &streams_on,
                wait_armed: waker.is_armed(),
                ready: prefetched.len(),
            };
            if let Some(plan) = schedule.plan(now, &inputs) {
                self.round_trip(
                    plan,
                    &mut schedule,
                    &mut outcomes,
                    &mut prefetched,
                    (&waker, &mut own, &mut gate),
                    &done_tx,
                )
                .await;
                continue;
            }
            if schedule.drained() {
                break;
            }

            let wake_at = schedule.next_wake(now, !self.running.is_empty());
            let draining = schedule.is_draining();
            tokio::select! {
                Some(done) = done_rx.recv() => outcomes.take(done, &mut schedule),
                () = waker.woken(), if !draining => {
                    let ring = self.rang(&waker, &own, &mut schedule);
                    gate = match (gate.take(), ring) {
                        (None, ring) => ring,
                        (Some(kept), None) => Some(kept),
                        // Two rings before one claim: no gate, claim in full.
                        (Some(_), Some(_)) => {
                            schedule.woken();
                            None
                        }
                    };
                }
                () = self.flow_changed.notified(), if !draining => {
                    schedule.woken();
                    self.release_paused(&mut prefetched, &mut schedule).await;
                }
                // Settled at the top of the loop.
                () = self.running.held_cancelled(), if !prefetched.is_empty() => {}
                Ok(()) = self.observations.changed() => {
                    let seen = self.observations.borrow_and_update().clone();
                    self.take_in(seen, &mut schedule);
                }
                () = shutdown.wait(), if !draining => {
                    self.begin_drain(&mut schedule, &mut prefetched).await;
                }
                () = tokio::time::sleep_until(wake_at) => {
                    if schedule.timer_fired(Instant::now()) {
                        break;
                    }
                }
            }
        }

        // Tasks that never started are handed back plainly, whatever
        // stopped the loop: a device failure is not theirs.
        let waiting = prefetched.drain();
        let _kept = self.release_held(waiting, &mut schedule, "stopping").await;
        if let Some(message) = outcomes.device_failure.take() {
            return self.device_failed(message, outcomes).await;
        }
        let handed_back = self.hand_back().await;
        WorkerReport {
            succeeded: self.stats.succeeded.load(Ordering::Relaxed),
            failed: self.stats.failed.load(Ordering::Relaxed),
            handed_back,
            device_failed: None,
        }
    }

    /// Shutdown began: no new claims, the running tasks get the grace
    /// period, and the prefetched ones, not started, go back at once for
    /// another worker to start now, not after the grace.
    async fn begin_drain(&self, schedule: &mut Schedule, prefetched: &mut Prefetched) {
        schedule.drain(Instant::now());
        self.stats.draining.store(true, Ordering::Relaxed);
        let waiting = prefetched.drain();
        for kept in self.release_held(waiting, schedule, "draining").await {
            prefetched.push(kept);
        }
        tracing::info!(
            running = schedule.held(),
            "draining: no new claims; waiting up to {:?} for running tasks",
            self.shutdown_grace
        );
    }

    /// Sends one planned round trip to Redis, acts on what it brought back
    /// (records the commits, stops tasks whose lease was lost, arms the
    /// blocking wait, starts the claimed tasks) and feeds the outcome to the
    /// schedule.
    async fn round_trip(
        &self,
        plan: TripPlan,
        schedule: &mut Schedule,
        outcomes: &mut Outcomes,
        prefetched: &mut Prefetched,
        (waker, own, gate): (&Doorbell, &mut OwnClaims, &mut Option<Ring>),
        done: &mpsc::UnboundedSender<Finished>,
    ) {
        let lease_ms = u64::try_from(self.lease_timeout.as_millis()).unwrap_or(u64::MAX);
        let leases = if plan.extend {
            self.running.leases()
        } else {
            Vec::new()
        };
        let want = plan.claim.as_ref().map_or(0, |claim| claim.max);
        // Any claim uses the ring up; only a gated one passes its arrivals.
        let ring = if plan.claim.is_some() {
            gate.take()
        } else {
            None
        };
        let arrivals: Vec<(usize, String)> = match (&ring, &plan.claim) {
            (Some(ring), Some(claim)) if claim.gate => self.arrivals_of(ring),
            _ => Vec::new(),
        };
        let free_memory = self.device_memory.free_memory(self.running.reserved());
        let outcome = {
            let rules: &[String] = if self.router.is_plain() && free_memory.is_none() {
                &[]
            } else {
                self.router.rules()
            };
            let claim = plan.claim.as_ref().map(|claim| ClaimRequest {
                max: claim.max,
                device: &self.device,
                aging_ms: if claim.aging { self.aging_ms } else { 0 },
                want_last_ids: claim.want_last_ids,
                sweep_idle_ms: if claim.sweep { lease_ms } else { 0 },
                max_deliveries: self.max_deliveries,
                promote: claim.promote,
                dead_consumers: schedule.dead_workers(),
                free_memory,
                rules,
                arrivals: &arrivals,
            });
            let to_commit = &outcomes.to_commit;
            let trip = Trip {
                streams: &self.streams,
                consumer: &self.worker_id,
                completions: to_commit,
                extend: &leases,
                claim,
            };
            // One span per round trip: the commits, the lease extensions
            // and the claim it carries.
            let span = tracing::debug_span!(
                "round_trip",
                worker = %self.worker_id,
                commits = to_commit.len(),
                extends = leases.len(),
                claim = want,
            );
            self.store.round_trip(&trip).instrument(span).await
        };
        let result = match outcome {
            Ok(result) => result,
            Err(err) => {
                let delay = schedule.failed(Instant::now());
                tracing::warn!(
                    "Redis round trip failed: {err}; retrying in {delay:?} with {} commits held",
                    outcomes.to_commit.len()
                );
                return;
            }
        };
        if let Some(Ok(lost)) = &result.lost {
            let extended = leases.len().saturating_sub(lost.len());
            self.stats.tasks.extended(extended);
        }
        let mut committed = 0;
        for (completion, outcome) in outcomes.to_commit.drain(..).zip(result.commits) {
            committed += 1;
            self.record_commit(&completion, outcome);
        }
        match result.lost {
            Some(Ok(lost)) if !lost.is_empty() => {
                for id in self.running.stop_entries(&lost) {
                    tracing::warn!(task = %id, "lease lost (another worker took the task over); stopping it");
                    outcomes.lost.insert(id);
                }
            }
            Some(Err(err)) => tracing::warn!("lease extension failed: {err}"),
            _ => {}
        }
        let (claimed, claim_error) = match result.claimed {
            None => (None, None),
            Some(Ok(claimed)) => (Some(claimed), None),
            Some(Err(err)) => (None, Some(err)),
        };
        let arm = schedule.apply(
            Instant::now(),
            TripResult {
                committed,
                claim: claimed.as_ref().map(|claimed| ClaimResult {
                    taken: claimed.entries.len(),
                    blocked: claimed.blocked.clone(),
                    last_ids: claimed.last_ids.is_some(),
                    taken_elsewhere: claimed.taken_elsewhere,
                }),
                claim_failed: claim_error.is_some(),
            },
        );
        if let Some(claimed) = claimed {
            // Another worker's claim took the arrivals: wait again from just
            // past them, as after one's own (see `rang`).
            if claimed.taken_elsewhere
                && let Some(ring) = &ring
            {
                waker.arm(WaitPoint::past(ring));
            }
            if let (Some(ids), Some(watch)) = (claimed.last_ids, arm) {
                let (keys, ids): (Vec<String>, Vec<String>) = self
                    .streams
                    .iter()
                    .zip(ids)
                    .zip(&watch)
                    .filter(|(_, on)| **on)
                    .map(|((s, id), _)| (s.key.clone(), id))
                    .unzip();
                if !keys.is_empty() {
                    waker.arm(WaitPoint { keys, ids });
                }
            }
            for gone in &claimed.gone {
                tracing::warn!(entry = %gone, "a pending entry was deleted from its stream before it finished; its task cannot be recovered");
            }
            for entry in claimed.entries {
                if let Some(stream) = self.streams.get(entry.stream_index) {
                    own.took(&stream.key, &entry.entry_id);
                }
                let slots = self
                    .accept(entry, done, &mut outcomes.to_commit, prefetched)
                    .await;
                schedule.accepted(slots);
            }
        }
        if let Some(err) = claim_error {
            if err.is_missing_group() {
                tracing::warn!(
                    "consumer groups are gone (Redis flushed or restarted without persistence?); recreating them"
                );
                if let Err(err) = self.store.ensure_groups(&self.streams).await {
                    tracing::error!("cannot recreate consumer groups: {err}");
                    schedule.failed(Instant::now());
                }
            } else {
                tracing::error!("claim failed: {err}");
                schedule.failed(Instant::now());
            }
        }
    }

    /// The doorbell rang. When every arrival it read is an entry this
    /// worker's own claims already took (the child its commit released,
    /// claimed in the same round trip, or its own shards), there is nothing
    /// to look for: the wait moves past them, no claim goes. Another's
    /// arrival is a wake-up, and the ring is returned for the claim to be
    /// gated on: every idle worker watching the stream read the same
    /// arrival, and only the first claim to reach Redis needs to run in
    /// full. A failed wait is a wake-up with no gate.
    fn rang(&self, waker: &Doorbell, own: &OwnClaims, schedule: &mut Schedule) -> Option<Ring> {
        let rings = waker.take_rings();
        match rings.rings.as_slice() {
            [.., last] if !rings.blind && rings.rings.iter().all(|r| own.covers(r)) => {
                waker.arm(WaitPoint::past(last));
                None
            }
            [only] if !rings.blind && !only.arrivals.is_empty() => {
                schedule.rung();
                Some(only.clone())
            }
            _ => {
                schedule.woken();
                None
            }
        }
    }

    /// A ring's arrivals as (position in this worker's streams, entry id);
    /// empty (no gate) if one is not among them.
    fn arrivals_of(&self, ring: &Ring) -> Vec<(usize, String)> {
        let found: Option<Vec<(usize, String)>> = ring
            .arrivals
            .iter()
            .map(|(key, id)| {
                let at = self.streams.iter().position(|s| &s.key == key)?;
                Some((at, id.clone()))
            })
            .collect();
        found.unwrap_or_default()
    }

    /// Takes in a look at the registry: the router's view of the live
    /// workers (the record's `live_seen` follows it), and the dead workers
    /// whose tasks the next claims take over.
    fn take_in(&mut self, seen: Observation, schedule: &mut Schedule) {
        if self.router.observe(&seen.workers) {
            schedule.rules_changed();
        }
        let live = seen.live();
        if self.live_seen.swap(live, Ordering::Relaxed) != live {
            self.nudge.notify_one();
        }
        if schedule.workers_seen(seen.dead) {
            let (stalled, dead): (Vec<&DeadConsumer>, Vec<&DeadConsumer>) =
                schedule.dead_workers().iter().partition(|d| d.stalled);
            tracing::info!(
                dead = ?dead.iter().map(|d| &d.name).collect::<Vec<_>>(),
                stalled = ?stalled.iter().map(|d| &d.name).collect::<Vec<_>>(),
                "workers gone: taking over their tasks"
            );
        }
    }

    /// The device failed: commit what finished before, hand back every task
    /// still running (and the ones that hit the failure) at once, and stop.
    async fn device_failed(&self, message: String, outcomes: Outcomes) -> WorkerReport {
        self.stats.draining.store(true, Ordering::Relaxed);
        if !outcomes.to_commit.is_empty() {
            let trip = Trip {
                streams: &self.streams,
                consumer: &self.worker_id,
                completions: &outcomes.to_commit,
                extend: &[],
                claim: None,
            };
            match self.store.round_trip(&trip).await {
                Ok(result) => {
                    for (completion, outcome) in outcomes.to_commit.iter().zip(result.commits) {
                        self.record_commit(completion, outcome);
                    }
                }
                Err(err) => tracing::error!(
                    "cannot commit {} finished tasks ({err}); they run again elsewhere when their lease runs out",
                    outcomes.to_commit.len()
                ),
            }
        }
        let mut handed_back = self.running.ids();
        for id in &handed_back {
            self.running.cancel(id);
        }
        let mut leases = self.running.leases();
        for (id, stream, entry_id) in outcomes.failed_entries {
            handed_back.push(id);
            leases.push((stream, entry_id));
        }
        let code = ErrorCode::DEVICE_FAILED;
        match self
            .store
            .release(
                &self.streams,
                &self.worker_id,
                &leases,
                Some((code.as_str(), &message)),
            )
            .await
        {
            Ok(count) => tracing::error!(
                "device failed ({message}): handed {count} tasks back to their streams; this worker stops"
            ),
            Err(err) => tracing::error!(
                "device failed ({message}) and handing {} tasks back failed ({err}); they run again elsewhere once this worker's heartbeat lapses",
                leases.len()
            ),
        }
        WorkerReport {
            succeeded: self.stats.succeeded.load(Ordering::Relaxed),
            failed: self.stats.failed.load(Ordering::Relaxed),
            handed_back,
            device_failed: Some(message),
        }
    }

    /// Gives the tasks still running at the end of the grace period back to
    /// their streams, so another worker starts them at once.
    async fn hand_back(&self) -> Vec<TaskId> {
        let unfinished = self.running.ids();
        if unfinished.is_empty() {
            return unfinished;
        }
        let leases = self.running.leases();
        match self
            .store
            .release(&self.streams, &self.worker_id, &leases, None)
            .await
        {
            Ok(count) => tracing::warn!(
                "shutdown grace ran out: handed {count} running tasks back to their streams: {unfinished:?}"
            ),
            Err(err) => tracing::error!(
                "cannot hand back {} running tasks ({err}); they will be taken over when their lease runs out",
                unfinished.len()
            ),
        }
        unfinished
    }

    fn record_commit(&self, completion: &Completion, outcome: Result<Committed, StoreError>) {
        let _commit = tracing::info_span!(
            "commit",
            task = %completion.id,
            worker = %self.worker_id,
            device = %self.device,
            status = %completion.finish.status,
        )
        .entered();
        // What the record says now: a cancel requested while the task ran
        // turned its outcome into `cancelled` (regression: such a task was
        // counted, and shown in the worker's metrics, as succeeded).
        let status = match outcome {
            Ok(Committed::Cancelled) => Status::Cancelled,
            _ => completion.finish.status,
        };
        self.executor.committed(completion, &outcome);
        if matches!(outcome, Ok(Committed::Written | Committed::Cancelled)) {
            self.stats.tasks.committed(completion, status);
        } else {
            self.stats.tasks.dropped(&completion.id);
        }
        match outcome {
            Ok(Committed::Written | Committed::Cancelled) => {
                tracing::debug!(%status, "committed");
                if status == Status::Succeeded {
                    self.stats.succeeded.fetch_add(1, Ordering::Relaxed);
                } else if !matches!(
                    completion.disposition,
                    tandem_shared::store::Disposition::Retry { .. }
                        | tandem_shared::store::Disposition::Split { .. }
                ) {
                    self.stats.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(Committed::AlreadyFinal) => tracing::debug!(
                task = %completion.id,
                "task already had a final record; this outcome was discarded"
            ),
            Ok(Committed::LeaseLost) => tracing::info!(
                task = %completion.id,
                "another worker took this task over; its outcome here was discarded"
            ),
            Err(err) => tracing::error!(
                task = %completion.id,
                "cannot commit the task: {err}; its entry stays pending until its lease runs out"
            ),
        }
    }

    /// Acts on one claimed entry; returns the number of slots it now holds.
    async fn accept(
        &self,
        claimed: ClaimedEntry,
        done: &mpsc::UnboundedSender<Finished>,
        to_commit: &mut Vec<Completion>,
        prefetched: &mut Prefetched,
    ) -> usize {
        let ClaimedEntry {
            stream_index,
            entry_id,
            verdict,
            fields,
            attempt,
            observed,
        } = claimed;
        let stream = &self.streams[stream_index];
        match verdict {
            Verdict::Skip => return 0,
            Verdict::Malformed => {
                // The claim says what is wrong when it is not the id.
                let message = if observed.is_empty() {
                    tracing::error!(
                        stream = %stream.key, entry = %entry_id,
                        "an entry without a readable task id: moving it to the dead-letter stream"
                    );
                    "the entry has no readable task id"
                } else {
                    tracing::error!(
                        stream = %stream.key, entry = %entry_id,
                        "a malformed entry ({observed}): moving it to the dead-letter stream"
                    );
                    observed.as_str()
                };
                if let Err(err) = self
                    .store
                    .bury(
                        stream,
                        &entry_id,
                        &self.worker_id,
                        ErrorCode::BAD_PAYLOAD.as_str(),
                        message,
                    )
                    .await
                {
                    tracing::error!("cannot dead-letter entry {entry_id}: {err}");
                }
                return 0;
            }
            Verdict::Run | Verdict::Expired | Verdict::Poison => {}
        }
        let mut entry = match TaskEntry::decode(&fields, stream.class, stream.priority) {
            Ok(entry) => entry,
            Err(err) => {
                tracing::warn!(
                    stream = %stream.key, entry = %entry_id, code = %err.code,
                    "refusing entry: {}", err.message
                );
                if let Some(id) = err.id {
                    self.stats.tasks.claimed(id, None, false);
                }
                return match self.executor.refused(err, stream, entry_id, attempt) {
                    Some(completion) => {
                        to_commit.push(completion);
                        1
                    }
                    None => 0,
                };
            }
        };
        if let Some(blobs) = &self.executor.blobs {
            blobs.hold(entry.id, &entry.params);
        }
        // The delivery's attempt is the entry's plus its earlier deliveries:
        // more means a worker that had it died or stalled.
        let reclaimed = attempt > entry.attempt;
        // A kind this worker has not registered is counted as `other`: the
        // kind comes from whoever submitted, and Prometheus series must
        // not grow with what producers type.
        let counted_kind = if self.executor.kinds.class_of(&entry.kind).is_some() {
            entry.kind.as_str()
        } else {
            crate::metrics::tasks::OTHER_KIND
        };
        self.stats
            .tasks
            .claimed(entry.id, Some(counted_kind), reclaimed);
        entry.attempt = attempt;
        if let Some(refused) = self.executor.unsigned(&entry, &entry_id) {
            tracing::warn!(task = %entry.id, "refusing a task without a valid signature");
            to_commit.push(refused);
            return 1;
        }
        match verdict {
            Verdict::Expired => {
                tracing::info!(task = %entry.id, kind = %entry.kind, "deadline passed before start: expired");
                to_commit.push(self.executor.expired(entry, entry_id));
                return 1;
            }
            Verdict::Poison => {
                tracing::warn!(task = %entry.id, kind = %entry.kind, attempt, "it kills its workers: dead-lettered unrun ({observed})");
                to_commit.push(self.executor.poison(entry, entry_id, &observed));
                return 1;
            }
            _ => {}
        }

        // Every slot runs: this one waits, claimed ahead, for the first to
        // free (claims ask for more than the free slots only to prefetch).
        if self.running.executing() >= self.concurrency {
            let token =
                self.running
                    .hold(entry.id, stream_index, entry_id.clone(), entry.memory_bytes);
            tracing::debug!(task = %entry.id, "prefetched: starts when a slot frees");
            prefetched.push(Ready {
                entry,
                stream: stream_index,
                entry_id,
                token,
            });
            return 1;
        }
        let cancel =
            self.running
                .start(entry.id, stream_index, entry_id.clone(), entry.memory_bytes);
        self.launch(entry, stream_index, entry_id, cancel, done);
        1
    }

    /// Settles the prefetched tasks the loop can act on now: the cancelled
    /// ones (a cancel request commits `cancelled`, a lost lease drops
    /// them), then, while slots are free and the worker is not draining,
    /// starts the next ones in claim order (a deadline that passed while
    /// one waited expires it instead).
    fn settle_prefetched(
        &self,
        prefetched: &mut Prefetched,
        outcomes: &mut Outcomes,
        schedule: &mut Schedule,
        done: &mpsc::UnboundedSender<Finished>,
    ) {
        if prefetched.is_empty() {
            return;
        }
        for ready in prefetched.take_cancelled() {
            let id = ready.id();
            self.running.finish(&id);
            if outcomes.lost.remove(&id) {
                tracing::info!(task = %id, "prefetched task dropped: its lease was lost");
                schedule.task_finished(true);
            } else {
                tracing::info!(task = %id, "cancel requested before the prefetched task started");
                outcomes.to_commit.push(
                    self.executor
                        .cancelled_before_start(ready.entry, ready.entry_id),
                );
            }
        }
        if schedule.is_draining() {
            return;
        }
        while self.running.executing() < self.concurrency {
            let Some(ready) = prefetched.next() else {
                break;
            };
            let id = ready.id();
            if ready.expired(tandem_shared::clock::now_ms()) {
                tracing::info!(task = %id, kind = %ready.entry.kind, "deadline passed while prefetched: expired");
                self.running.finish(&id);
                outcomes
                    .to_commit
                    .push(self.executor.expired(ready.entry, ready.entry_id));
                continue;
            }
            self.running.begin(&id);
            self.launch(ready.entry, ready.stream, ready.entry_id, ready.token, done);
        }
    }

    /// A flow control changed: the prefetched tasks a pause now holds (their
    /// class, priority or kind) go back to their streams, where the claim
    /// passes them over or parks them until the resume.
    async fn release_paused(&self, prefetched: &mut Prefetched, schedule: &mut Schedule) {
        if prefetched.is_empty() {
            return;
        }
        let classes = prefetched.classes();
        let flows = match self.store.flow_states(&classes).await {
            Ok(flows) => classes.into_iter().zip(flows).collect::<Vec<_>>(),
            Err(err) => {
                tracing::warn!(
                    "cannot read the flow controls after a change: {err}; the prefetched tasks stay"
                );
                return;
            }
        };
        let paused = prefetched.take_paused(&flows);
        for kept in self.release_held(paused, schedule, "paused").await {
            prefetched.push(kept);
        }
    }

    /// Hands prefetched tasks that never started back to their streams, as
    /// new entries another worker can start at once, and frees their slots.
    /// When Redis cannot be reached they are returned, to be held again:
    /// they stay in the running-task table, the hand-back at the end of the
    /// run tries again, and failing that their leases lapse and another
    /// worker takes them over.
    async fn release_held(
        &self,
        held: Vec<Ready>,
        schedule: &mut Schedule,
        why: &str,
    ) -> Vec<Ready> {
        if held.is_empty() {
            return held;
        }
        let leases: Vec<(usize, String)> = held.iter().map(Ready::lease).collect();
        let ids: Vec<TaskId> = held.iter().map(Ready::id).collect();
        match self
            .store
            .release(&self.streams, &self.worker_id, &leases, None)
            .await
        {
            Ok(count) => {
                tracing::info!(
                    "{why}: handed {count} prefetched tasks back to their streams: {ids:?}"
                );
                for id in &ids {
                    self.running.finish(id);
                    schedule.task_finished(true);
                }
                Vec::new()
            }
            Err(err) => {
                tracing::warn!(
                    "{why}: cannot hand back {} prefetched tasks ({err}); they go back with the running ones, or when their lease runs out",
                    ids.len()
                );
                held
            }
        }
    }

    /// Starts a task on its own tokio task; its run reports to `done`.
    fn launch(
        &self,
        entry: TaskEntry,
        stream_index: usize,
        entry_id: String,
        cancel: tokio_util::sync::CancellationToken,
        done: &mpsc::UnboundedSender<Finished>,
    ) {
        let id = entry.id;
        self.stats.task_started();
        let executor = Arc::clone(&self.executor);
        let running = self.running.clone();
        let stats = Arc::clone(&self.stats);
        let done = done.clone();
        // Split only across two or more GPUs: one GPU gains nothing from
        // shards but their overhead.
        let gpus = self.router.live_gpus();
        let split_into = if gpus >= 2 {
            gpus.saturating_mul(self.shards_per_gpu)
        } else {
            0
        };
        let fleet = self.router.fleet();
        let store = self.store.clone();
        // Every event of the task's run carries its id, kind, worker and
        // device (the JSON log lines list them under `spans`).
        let span = tracing::info_span!(
            "task",
            task = %id,
            kind = %entry.kind,
            worker = %self.worker_id,
            device = %self.device,
            attempt = entry.attempt,
        );
        let run = async move {
            let plan = match entry.split {
                Some(SplitRole::Merge { count }) => Plan::Merge(
                    store
                        .split_parts(entry.class, &entry.id, count)
                        .await
                        .map_err(Into::into),
                ),
                _ => Plan::Run { split_into },
            };
            let mut abandoned = None;
            let finished = match executor
                .execute_tracked(entry, entry_id.clone(), cancel, plan, fleet, &mut abandoned)
                .instrument(tracing::info_span!("execute"))
                .await
            {
                Ok(completion) => Finished::Done(completion),
                Err(failure) => Finished::DeviceFailed {
                    id,
                    stream: stream_index,
                    entry_id,
                    failure,
                },
            };
            // The receiver lives as long as the dispatcher; if it is gone the
            // worker is exiting and the entry was handed back.
            if let Some(work) = abandoned {
                // Past its run-time limit and not stopped: the outcome is
                // committed now, the slot and the device memory stay taken
                // until the computation ends. A kernel on a GPU cannot be
                // stopped at all: a GPU worker (a simulated one too, which
                // behaves as one) restarts once the commit is in.
                running.abandon(&id);
                let _ = done.send(Finished::Abandoned);
                let _ = done.send(finished);
                if executor.device.is_gpu() {
                    let _ = done.send(Finished::Restart(format!(
                        "task {id} ran past its timeout and its GPU computation cannot be stopped: \
                         restarting the worker"
                    )));
                }
                work.finished().await;
                tracing::info!(task = %id, "the abandoned computation ended; its slot is free");
                running.finish(&id);
                stats.task_ended();
                let _ = done.send(Finished::Released);
            } else {
                running.finish(&id);
                stats.task_ended();
                let _ = done.send(finished);
            }
        };
        tokio::spawn(run.instrument(span));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::doorbell::Ring;

    fn ring(arrivals: &[(&str, &str)]) -> Ring {
        Ring {
            point: Arc::new(WaitPoint {
                keys: vec!["a".into(), "b".into()],
                ids: vec!["5-0".into(), "7-1".into()],
            }),
            arrivals: arrivals
                .iter()
                .map(|(k, id)| ((*k).to_owned(), (*id).to_owned()))
                .collect(),
        }
    }

    /// A ring is the worker's own when each arrival is at or before the
    /// newest entry it claimed in that stream; ids order by ms, then seq.
    #[test]
    fn a_ring_is_the_workers_own_only_for_entries_its_claims_passed() {
        let mut own = OwnClaims::default();
        own.took("a", "10-2");
        own.took("a", "9-5");
        own.took("b", "not an id");
        for (arrivals, covered) in [
            (vec![("a", "10-2")], true),
            (vec![("a", "9-9")], true),
            (vec![("a", "10-3")], false),
            (vec![("a", "11-0")], false),
            (vec![("a", "10-1"), ("b", "8-0")], false),
            (vec![("c", "1-0")], false),
            (vec![("a", "x-1")], false),
        ] {
            assert_eq!(own.covers(&ring(&arrivals)), covered, "{arrivals:?}");
        }
        assert!(parse_entry_id("10-2") < parse_entry_id("10-10"));
        assert!(parse_entry_id("9-99") < parse_entry_id("10-0"));
    }

    /// The wait moves past a ring's arrivals, in their streams only.
    #[test]
    fn the_wait_moves_past_the_arrivals_of_a_ring() {
        let point = WaitPoint::past(&ring(&[("b", "8-0")]));
        assert_eq!(point.keys, vec!["a".to_owned(), "b".to_owned()]);
        assert_eq!(point.ids, vec!["5-0".to_owned(), "8-0".to_owned()]);
    }
}
