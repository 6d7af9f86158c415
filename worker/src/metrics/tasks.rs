//! What a worker counts about its tasks between samples: completions by
//! kind, class and status, failed attempts by error code, the claim-to-commit
//! latency histogram, lease extensions and reclaims.
//!
//! The dispatcher reports each claim and each written commit; the sampler
//! reads cumulative totals every `metrics_interval_ms`. Counters only grow
//! for the life of the process, as Prometheus counters do.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use tandem_shared::store::{Completion, Disposition};
use tandem_shared::wire::{FinishOutcome, LATENCY_BUCKETS_MS};
use tandem_shared::{Status, TaskId};

/// The kind recorded for a commit whose entry could not be decoded.
const UNKNOWN_KIND: &str = "unknown";

/// The kind recorded for a task of a kind the worker has not registered
/// (the dispatcher maps it), so that the counters' kinds are bounded.
pub(crate) const OTHER_KIND: &str = "other";

/// The task counters, shared by the dispatcher (writer) and the sampler.
#[derive(Debug, Default)]
pub(crate) struct TaskCounters(Mutex<Counts>);

/// Cumulative totals since the worker started.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Counts {
    /// Claimed tasks not yet committed: their kind and when they were
    /// claimed. An entry whose outcome is never committed here (its lease
    /// was lost, its device failed) stays until the process ends; those are
    /// rare and the process restarts after a device failure.
    claimed: HashMap<TaskId, (String, Instant)>,
    /// Commits written, of every disposition: the latency histogram counts
    /// the same commits, so its count equals this.
    pub commits: u64,
    /// Per bucket of [`LATENCY_BUCKETS_MS`], and one more for the rest (not
    /// cumulative).
    pub latency_buckets: Vec<u64>,
    pub latency_sum_ms: f64,
    /// By `kind/class/status`.
    pub completed: BTreeMap<String, u64>,
    /// Failed attempts by error code.
    pub errors: BTreeMap<String, u64>,
    pub lease_extensions: u64,
    pub reclaims: u64,
}

impl TaskCounters {
    /// A claimed task: `reclaimed` when its entry had been delivered before
    /// (taken over from a dead or stalled worker).
    pub fn claimed(&self, id: TaskId, kind: Option<&str>, reclaimed: bool) {
        let mut counts = self.lock();
        let kind = kind.unwrap_or(UNKNOWN_KIND).to_owned();
        counts.claimed.insert(id, (kind, Instant::now()));
        if reclaimed {
            counts.reclaims += 1;
        }
    }

    /// A commit Redis wrote, with the status the record got (`cancelled`
    /// when a cancel came while the task ran, whatever it returned).
    pub fn committed(&self, completion: &Completion, status: Status) {
        let mut counts = self.lock();
        let (kind, claimed_at) = counts
            .claimed
            .remove(&completion.id)
            .map_or((UNKNOWN_KIND.to_owned(), None), |(k, at)| (k, Some(at)));
        counts.commits += 1;
        // A commit without a claim on record (none today) counts as 0 ms,
        // so the histogram still counts every commit.
        let latency_ms = claimed_at.map_or(0.0, |at| at.elapsed().as_secs_f64() * 1_000.0);
        let bucket = LATENCY_BUCKETS_MS
            .iter()
            .position(|&bound| latency_ms <= bound as f64)
            .unwrap_or(LATENCY_BUCKETS_MS.len());
        if counts.latency_buckets.len() <= LATENCY_BUCKETS_MS.len() {
            counts
                .latency_buckets
                .resize(LATENCY_BUCKETS_MS.len() + 1, 0);
        }
        counts.latency_buckets[bucket] += 1;
        counts.latency_sum_ms += latency_ms;
        let label = status_label(completion, status);
        let key = format!("{kind}/{}/{label}", completion.class.as_str());
        *counts.completed.entry(key).or_default() += 1;
        if status == Status::Failed
            && let FinishOutcome::Error(failure) = &completion.finish.outcome
        {
            *counts
                .errors
                .entry(failure.code.as_str().to_owned())
                .or_default() += 1;
        }
    }

    /// A commit that was not written (the task's record was already final,
    /// its lease was lost, Redis refused): nothing to count, but its claim
    /// is done.
    pub fn dropped(&self, id: &TaskId) {
        self.lock().claimed.remove(id);
    }

    /// Leases extended in one round trip.
    pub fn extended(&self, leases: usize) {
        self.lock().lease_extensions += u64::try_from(leases).unwrap_or(u64::MAX);
    }

    /// The totals now (without the claims in flight).
    pub fn totals(&self) -> Counts {
        let counts = self.lock();
        Counts {
            claimed: HashMap::new(),
            latency_buckets: if counts.latency_buckets.is_empty() {
                vec![0; LATENCY_BUCKETS_MS.len() + 1]
            } else {
                counts.latency_buckets.clone()
            },
            completed: counts.completed.clone(),
            errors: counts.errors.clone(),
            ..*counts
        }
    }

    /// The counters stay usable after a panic elsewhere: they are plain
    /// numbers, valid whatever was interrupted.
    fn lock(&self) -> MutexGuard<'_, Counts> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The status a commit is counted under: the final status, or what becomes
/// of a task that is not final yet (`retried`, `handed_back`, `split`).
fn status_label(completion: &Completion, status: Status) -> &'static str {
    if status == Status::Cancelled {
        return status.as_str();
    }
    match completion.disposition {
        Disposition::Retry { .. } => "retried",
        Disposition::HandBack { .. } => "handed_back",
        Disposition::Split { .. } => "split",
        Disposition::Final | Disposition::Dead => status.as_str(),
    }
}

#[cfg(test)]
mod tests {
    use tandem_shared::wire::{Finish, TaskFailure};
    use tandem_shared::{Class, ErrorCode, Priority};

    use super::*;

    fn completion(id: TaskId, status: Status, disposition: Disposition) -> Completion {
        let outcome = if status == Status::Succeeded {
            FinishOutcome::Result(Vec::new())
        } else {
            FinishOutcome::Error(TaskFailure {
                code: ErrorCode::from_static("E_TEST"),
                message: String::new(),
            })
        };
        Completion {
            id,
            class: Class::Light,
            priority: Priority::Normal,
            entry_id: "1-0".into(),
            reply_to: None,
            attempt: 1,
            disposition,
            finish: Finish {
                status,
                worker: "w".into(),
                device: "cpu".into(),
                run_us: None,
                outcome,
            },
        }
    }

    #[test]
    fn commits_count_by_kind_class_status_and_error_code() {
        let counters = TaskCounters::default();
        let (a, b, c, d) = (TaskId::new(), TaskId::new(), TaskId::new(), TaskId::new());
        counters.claimed(a, Some("noop"), false);
        counters.claimed(b, Some("fail"), true);
        counters.claimed(c, Some("fail"), false);
        counters.claimed(d, Some("sleep"), false);
        let committed = |id, status, disposition| {
            counters.committed(&completion(id, status, disposition), status);
        };
        committed(a, Status::Succeeded, Disposition::Final);
        committed(b, Status::Failed, Disposition::Retry { after_ms: 10 });
        committed(c, Status::Failed, Disposition::Dead);
        // It succeeded, but a cancel came while it ran: the record says
        // cancelled, and so do the counters.
        counters.committed(
            &completion(d, Status::Succeeded, Disposition::Final),
            Status::Cancelled,
        );
        counters.extended(3);
        let totals = counters.totals();
        assert_eq!(totals.commits, 4);
        assert_eq!(totals.latency_buckets.iter().sum::<u64>(), 4);
        assert_eq!(totals.latency_buckets.len(), LATENCY_BUCKETS_MS.len() + 1);
        assert_eq!(
            totals.completed,
            [
                ("fail/light/failed".to_owned(), 1),
                ("fail/light/retried".to_owned(), 1),
                ("noop/light/succeeded".to_owned(), 1),
                ("sleep/light/cancelled".to_owned(), 1),
            ]
            .into()
        );
        assert_eq!(totals.errors, [("E_TEST".to_owned(), 2)].into());
        assert_eq!((totals.reclaims, totals.lease_extensions), (1, 3));
        assert!(counters.lock().claimed.is_empty());
    }

    #[test]
    fn an_idle_worker_has_an_empty_histogram_of_the_right_shape() {
        let totals = TaskCounters::default().totals();
        assert_eq!(
            totals.latency_buckets,
            vec![0; LATENCY_BUCKETS_MS.len() + 1]
        );
        assert_eq!(totals.commits, 0);
    }
}
