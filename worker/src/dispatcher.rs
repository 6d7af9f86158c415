//! The claim loop: commits finished tasks, claims new ones in strict
//! priority order, starts them, and waits for the next thing to do.
//!
//! One round trip carries both directions: the commits of every task that
//! finished since the last trip, then a claim for the slots those commits
//! free. Under load the loop never waits on Redis twice for one task; when
//! idle it sleeps in the [`Waker`] until a task arrives. The loop alone
//! decides what to claim, so reclaiming other workers' tasks and lease
//! extension can join it as further commands in the same trip.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tandem_shared::store::{
    ClaimRequest, ClaimedEntry, Committed, Completion, Store, StreamRef, Verdict,
};
use tandem_shared::wire::TaskEntry;
use tandem_shared::{Status, TaskId};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::cancel::Running;
use crate::executor::Executor;
use crate::shutdown::Shutdown;
use crate::stats::Stats;
use crate::waker::{WaitPoint, Waker};

/// How often the claim includes the aging pass that keeps low priorities
/// from starving.
const AGING_CHECK: Duration = Duration::from_secs(1);
const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub(crate) struct Dispatcher {
    pub store: Store,
    pub executor: Arc<Executor>,
    /// The streams this worker claims from, highest priority first.
    pub streams: Vec<StreamRef>,
    pub worker_id: String,
    pub device: String,
    pub concurrency: usize,
    pub claim_batch: usize,
    pub aging_ms: u64,
    pub block_ms: u64,
    pub shutdown_grace: Duration,
    pub running: Running,
    pub stats: Arc<Stats>,
}

/// How a worker's run ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerReport {
    pub succeeded: u64,
    pub failed: u64,
    /// Tasks still running when the shutdown grace period ran out; their
    /// entries stay pending in Redis.
    pub abandoned: Vec<TaskId>,
}

impl Dispatcher {
    pub async fn run(self, mut shutdown: Shutdown) -> WorkerReport {
        let waker = Waker::spawn(self.store.clone(), self.block_ms);
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Completion>();
        let stream_keys: Vec<String> = self.streams.iter().map(|s| s.key.clone()).collect();

        // Claimed entries not yet committed: running, or finished and
        // waiting for the next round trip. Each holds one slot.
        let mut held = 0usize;
        let mut to_commit: Vec<Completion> = Vec::new();
        let mut may_have_work = true;
        let mut next_aging = Instant::now();
        let mut retry_at: Option<Instant> = None;
        let mut retry_delay = RETRY_MIN;
        let mut drain_deadline: Option<Instant> = None;

        loop {
            while let Ok(done) = done_rx.try_recv() {
                to_commit.push(done);
            }
            let draining = drain_deadline.is_some();
            // The commits go first in the trip, so their slots count as free.
            let free = self
                .concurrency
                .saturating_sub(held.saturating_sub(to_commit.len()));
            let want = if draining || !may_have_work {
                0
            } else {
                free.min(self.claim_batch)
            };
            let backing_off = retry_at.is_some_and(|at| Instant::now() < at);

            if (want > 0 || !to_commit.is_empty()) && !backing_off {
                let aging_ms = if want > 0 && Instant::now() >= next_aging {
                    next_aging = Instant::now() + AGING_CHECK;
                    self.aging_ms
                } else {
                    0
                };
                let request = ClaimRequest {
                    streams: &self.streams,
                    consumer: &self.worker_id,
                    max: want,
                    device: &self.device,
                    aging_ms,
                    want_last_ids: !waker.is_armed(),
                };
                let claim = (want > 0).then_some(&request);
                match self.store.commit_and_claim(&to_commit, claim).await {
                    Ok((commits, claimed)) => {
                        retry_at = None;
                        retry_delay = RETRY_MIN;
                        for (completion, outcome) in to_commit.drain(..).zip(commits) {
                            held -= 1;
                            self.record_commit(&completion, outcome);
                        }
                        match claimed {
                            None => {}
                            Some(Ok(claimed)) => {
                                if claimed.entries.len() < want {
                                    may_have_work = false;
                                }
                                if let Some(ids) = claimed.last_ids {
                                    waker.arm(WaitPoint {
                                        keys: stream_keys.clone(),
                                        ids,
                                    });
                                }
                                for entry in claimed.entries {
                                    held += self.accept(entry, &done_tx, &mut to_commit).await;
                                }
                            }
                            Some(Err(err)) if err.is_missing_group() => {
                                tracing::warn!(
                                    "consumer groups are gone (Redis flushed or restarted?); recreating them"
                                );
                                if let Err(err) = self.store.ensure_groups(&self.streams).await {
                                    tracing::error!("cannot recreate consumer groups: {err}");
                                    retry_at = Some(Instant::now() + retry_delay);
                                    retry_delay = (retry_delay * 2).min(RETRY_MAX);
                                }
                            }
                            Some(Err(err)) => {
                                tracing::error!("claim failed: {err}");
                                retry_at = Some(Instant::now() + retry_delay);
                                retry_delay = (retry_delay * 2).min(RETRY_MAX);
                            }
                        }
                    }
                    Err(err) => {
                        tracing::warn!(
                            "Redis round trip failed: {err}; retrying in {retry_delay:?} with {} commits held",
                            to_commit.len()
                        );
                        retry_at = Some(Instant::now() + retry_delay);
                        retry_delay = (retry_delay * 2).min(RETRY_MAX);
                    }
                }
                continue;
            }

            if draining && held == 0 {
                break;
            }

            // An idle worker needs no aging pass (it would have claimed any
            // waiting task); a busy one gets it with its next claim.
            let mut wake_at =
                retry_at.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            if let Some(deadline) = drain_deadline {
                wake_at = wake_at.min(deadline);
            }
            tokio::select! {
                Some(done) = done_rx.recv() => to_commit.push(done),
                () = waker.woken(), if !draining => may_have_work = true,
                () = shutdown.wait(), if !draining => {
                    drain_deadline = Some(Instant::now() + self.shutdown_grace);
                    self.stats.draining.store(true, Ordering::Relaxed);
                    tracing::info!(running = held, "draining: no new claims; waiting up to {:?} for running tasks", self.shutdown_grace);
                }
                () = tokio::time::sleep_until(wake_at) => {
                    if drain_deadline.is_some_and(|d| Instant::now() >= d) {
                        break;
                    }
                }
            }
        }

        let abandoned = self.running.ids();
        if !abandoned.is_empty() {
            tracing::warn!(
                "shutdown grace ran out with {} tasks running; their entries stay pending: {:?}",
                abandoned.len(),
                abandoned
            );
        }
        WorkerReport {
            succeeded: self.stats.succeeded.load(Ordering::Relaxed),
            failed: self.stats.failed.load(Ordering::Relaxed),
            abandoned,
        }
    }

    fn record_commit(
        &self,
        completion: &Completion,
        outcome: Result<Committed, tandem_shared::store::StoreError>,
    ) {
        match outcome {
            Ok(Committed::Written) => {
                let counter = if completion.finish.status == Status::Succeeded {
                    &self.stats.succeeded
                } else {
                    &self.stats.failed
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Committed::AlreadyFinal) => tracing::debug!(
                task = %completion.id,
                "task already had a final record; this outcome was discarded"
            ),
            Err(err) => tracing::error!(
                task = %completion.id,
                "cannot commit the task: {err}; its entry stays pending"
            ),
        }
    }

    /// Acts on one claimed entry; returns the number of slots it now holds.
    async fn accept(
        &self,
        claimed: ClaimedEntry,
        done: &mpsc::UnboundedSender<Completion>,
        to_commit: &mut Vec<Completion>,
    ) -> usize {
        let ClaimedEntry {
            stream,
            entry_id,
            verdict,
            fields,
        } = claimed;
        if verdict == Verdict::Skip {
            return 0;
        }
        if verdict == Verdict::Malformed {
            tracing::error!(
                stream = %stream.key, entry = %entry_id,
                "refusing an entry without a readable task id; deleting it"
            );
            if let Err(err) = self.store.discard(&stream, &entry_id).await {
                tracing::error!("cannot delete malformed entry {entry_id}: {err}");
            }
            return 0;
        }
        let entry = match TaskEntry::decode(&fields, stream.class, stream.priority) {
            Ok(entry) => entry,
            Err(err) => {
                tracing::warn!(
                    stream = %stream.key, entry = %entry_id, code = %err.code,
                    "refusing entry: {}", err.message
                );
                return match self.executor.refused(err, &stream, entry_id) {
                    Some(completion) => {
                        to_commit.push(completion);
                        1
                    }
                    None => 0,
                };
            }
        };
        if verdict == Verdict::Expired {
            tracing::info!(task = %entry.id, kind = %entry.kind, "deadline passed before start: expired");
            to_commit.push(self.executor.expired(entry, entry_id));
            return 1;
        }

        let id = entry.id;
        let cancel = self.running.start(id);
        self.stats.active.fetch_add(1, Ordering::Relaxed);
        let executor = Arc::clone(&self.executor);
        let running = self.running.clone();
        let stats = Arc::clone(&self.stats);
        let done = done.clone();
        tokio::spawn(async move {
            let completion = executor.execute(entry, entry_id, cancel).await;
            running.finish(&id);
            stats.active.fetch_sub(1, Ordering::Relaxed);
            // The receiver lives as long as the dispatcher; if it is gone the
            // worker is exiting and the entry stays pending.
            let _ = done.send(completion);
        });
        1
    }
}
