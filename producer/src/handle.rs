//! [`TaskHandle`]: an awaitable task. A handle from
//! [`Producer::submit_handle`](crate::Producer::submit_handle) carries the
//! wait registered before its task was sent, so its first wait needs no read
//! of the record; any other wait goes the general way (register, then read).

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

use tandem_shared::store::{BlockingConn, CancelOutcome, EventCursor};
use tandem_shared::wire::TaskProgress;
use tandem_shared::{Status, TaskId};

use crate::error::ProducerError;
use crate::listener::Registration;
use crate::outcome::TaskOutcome;
use crate::producer::Producer;

/// An awaitable task: `handle.await` waits without a time limit.
pub struct TaskHandle {
    id: TaskId,
    producer: Producer,
    /// The wait registered before submitting, used by the first wait.
    registration: Mutex<Option<Registration>>,
}

impl std::fmt::Debug for TaskHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskHandle")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl TaskHandle {
    /// A handle on `id`; `registration` is a wait registered before the
    /// task was sent, if any.
    pub(crate) fn new(id: TaskId, producer: Producer, registration: Option<Registration>) -> Self {
        Self {
            id,
            producer,
            registration: Mutex::new(registration),
        }
    }

    pub fn id(&self) -> TaskId {
        self.id
    }

    /// Waits until the task finishes, at most `timeout`.
    pub async fn wait(&self, timeout: Duration) -> Result<TaskOutcome, ProducerError> {
        let outcome = within(self.id, timeout, self.wait_forever()).await?;
        self.producer.resolve(outcome).await
    }

    async fn wait_forever(&self) -> Result<TaskOutcome, ProducerError> {
        match self.take_registration() {
            Some(registration) => {
                self.producer
                    .await_registered(self.id, registration, false)
                    .await
            }
            None => self.producer.wait_forever(self.id).await,
        }
    }

    /// The wait registered before submitting, once: a later wait (after the
    /// first timed out) registers anew.
    fn take_registration(&self) -> Option<Registration> {
        self.registration
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    pub async fn status(&self) -> Result<Status, ProducerError> {
        self.producer.status(self.id).await
    }

    pub async fn cancel(&self) -> Result<CancelOutcome, ProducerError> {
        self.producer.cancel(self.id).await
    }

    /// The task's progress reports as they come: first the record's last
    /// one (when it has one), then each new one, ending when the task
    /// finishes. Woken by the `progress` events of the task's class (one
    /// blocking `XREAD` on a connection of its own; never a poll) and by
    /// the task's completion notice; with `events` off on the workers only
    /// the record's value comes, and the stream ends with the task.
    pub fn progress(&self) -> ProgressStream {
        progress_stream(self.producer.clone(), self.id)
    }
}

/// [`TaskHandle::progress`]'s stream.
pub type ProgressStream =
    Pin<Box<dyn futures_util::Stream<Item = Result<TaskProgress, ProducerError>> + Send>>;

/// How long one blocking read of the events waits before it re-arms.
const PROGRESS_BLOCK_MS: u64 = 5_000;

/// Where a progress stream stands.
struct Following {
    producer: Producer,
    id: TaskId,
    /// Set once the first step read the record and placed the cursor.
    place: Option<(EventCursor, BlockingConn)>,
    /// Reports read and not yet handed out, oldest first.
    pending: std::collections::VecDeque<TaskProgress>,
    /// The last report handed out: a repeat is skipped.
    last: Option<(u64, String)>,
    /// Completes when the task finishes (its notice).
    finished: Pin<Box<dyn Future<Output = Result<TaskOutcome, ProducerError>> + Send>>,
    done: bool,
}

impl Following {
    fn push(&mut self, progress: TaskProgress) {
        let key = (progress.fraction.to_bits(), progress.message.clone());
        if self.last.as_ref() != Some(&key) {
            self.last = Some(key);
            self.pending.push_back(progress);
        }
    }

    /// Reads the record and places the cursor after the class's newest
    /// event, then reads the record again: a report written in between is
    /// in the second read or after the cursor.
    async fn start(&mut self) -> Result<(), ProducerError> {
        let store = self.producer.store().clone();
        let record = self
            .producer
            .record(self.id)
            .await?
            .ok_or(ProducerError::NotFound(self.id))?;
        let class = record.class.ok_or(ProducerError::NotFound(self.id))?;
        let cursor = store
            .events_now(&[class])
            .await
            .map_err(ProducerError::from)?;
        let conn = store
            .blocking_connection(PROGRESS_BLOCK_MS)
            .await
            .map_err(ProducerError::from)?;
        let record = self
            .producer
            .record(self.id)
            .await?
            .ok_or(ProducerError::NotFound(self.id))?;
        if record.is_terminal() {
            self.done = true;
        }
        if let Some(progress) = record.progress {
            self.push(progress);
        }
        self.place = Some((cursor, conn));
        Ok(())
    }

    /// Waits for the next reports, or the end of the task.
    async fn next_reports(&mut self) -> Result<(), ProducerError> {
        let store = self.producer.store().clone();
        let Some((cursor, conn)) = &mut self.place else {
            return Ok(());
        };
        let events = tokio::select! {
            read = store.follow_events(conn, cursor, PROGRESS_BLOCK_MS, 256) => {
                let (events, next) = read.map_err(ProducerError::from)?;
                *cursor = next;
                events
            }
            _ = &mut self.finished => {
                // Its reports were written before its commit: whatever of
                // them the blocking read has not brought yet is there now.
                self.done = true;
                let (events, next) = store
                    .read_events(cursor, 10_000)
                    .await
                    .map_err(ProducerError::from)?;
                *cursor = next;
                events
            }
        };
        let mut reports = Vec::new();
        for event in events.into_iter().filter(|e| e.id == Some(self.id)) {
            match (event.event.as_str(), event.progress) {
                ("progress", Some(fraction)) => reports.push(TaskProgress {
                    fraction,
                    message: event.progress_msg.unwrap_or_default(),
                    at_ms: event.at_ms,
                }),
                ("succeeded" | "failed" | "cancelled" | "expired", _) => self.done = true,
                _ => {}
            }
        }
        for report in reports {
            self.push(report);
        }
        Ok(())
    }
}

fn progress_stream(producer: Producer, id: TaskId) -> ProgressStream {
    let finished = {
        let producer = producer.clone();
        Box::pin(async move { producer.wait_forever(id).await })
    };
    let state = Following {
        producer,
        id,
        place: None,
        pending: std::collections::VecDeque::new(),
        last: None,
        finished,
        done: false,
    };
    Box::pin(futures_util::stream::unfold(
        state,
        |mut state| async move {
            loop {
                if let Some(progress) = state.pending.pop_front() {
                    return Some((Ok(progress), state));
                }
                if state.done {
                    return None;
                }
                let step = if state.place.is_none() {
                    state.start().await
                } else {
                    state.next_reports().await
                };
                if let Err(err) = step {
                    state.done = true;
                    return Some((Err(err), state));
                }
            }
        },
    ))
}

impl IntoFuture for TaskHandle {
    type Output = Result<TaskOutcome, ProducerError>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move { self.wait_forever().await })
    }
}

/// Runs a wait for task `id` for at most `timeout`; past it, the wait is
/// dropped (and with it its registration) and the error says how long it
/// waited.
pub(crate) async fn within(
    id: TaskId,
    timeout: Duration,
    wait: impl Future<Output = Result<TaskOutcome, ProducerError>>,
) -> Result<TaskOutcome, ProducerError> {
    match tokio::time::timeout(timeout, wait).await {
        Ok(outcome) => outcome,
        Err(_) => Err(ProducerError::Timeout {
            id,
            waited: timeout,
        }),
    }
}

#[cfg(test)]
mod tests {
    use tandem_shared::wire::TaskRecord;

    use super::*;
    use crate::listener::Waiters;

    fn outcome(id: TaskId) -> TaskOutcome {
        let record = TaskRecord {
            id: Some(id),
            status: Some(Status::Failed),
            ..TaskRecord::default()
        };
        TaskOutcome::from_record(id, record).expect("a final record")
    }

    #[tokio::test]
    async fn a_wait_past_its_time_says_how_long_it_waited() {
        let id = TaskId::new();
        // A zero limit on a wait that never ends: no clock needed.
        let err = within(id, Duration::ZERO, std::future::pending())
            .await
            .unwrap_err();
        match err {
            ProducerError::Timeout {
                id: timed_out,
                waited,
            } => {
                assert_eq!(timed_out, id);
                assert_eq!(waited, Duration::ZERO);
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_wait_within_its_time_returns_what_the_wait_returned() {
        let id = TaskId::new();
        let done = within(
            id,
            Duration::from_secs(3600),
            async move { Ok(outcome(id)) },
        )
        .await
        .unwrap();
        assert_eq!((done.id, done.status), (id, Status::Failed));

        let missing = within(id, Duration::from_secs(3600), async move {
            Err(ProducerError::NotFound(id))
        })
        .await;
        assert!(matches!(missing, Err(ProducerError::NotFound(found)) if found == id));
    }

    /// What makes "submit, then await" cost no read: the notice of a task
    /// that finished before its handle was awaited waits in the handle's
    /// registration.
    #[tokio::test]
    async fn a_notice_before_the_await_is_kept_for_it() {
        let waiters = Waiters::new();
        let id = TaskId::new();
        let registration = waiters.register(id);

        // The listener hands the notice out before anyone awaits.
        let delivered = waiters.notify(&outcome(id));
        assert_eq!(delivered, 1);

        let Registration { guard, receiver } = registration;
        let received = receiver.await.expect("the notice was kept");
        assert_eq!(received.id, id);
        drop(guard);
    }

    /// A handle dropped before its task finished leaves no waiter behind.
    #[test]
    fn a_dropped_registration_leaves_no_waiter() {
        let waiters = Waiters::new();
        let id = TaskId::new();
        let slot = Mutex::new(Some(waiters.register(id)));
        drop(slot);
        assert_eq!(waiters.notify(&outcome(id)), 0);
    }
}
