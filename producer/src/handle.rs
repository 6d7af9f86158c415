//! [`TaskHandle`]: an awaitable task. A handle from
//! [`Producer::submit_handle`](crate::Producer::submit_handle) carries the
//! wait registered before its task was sent, so its first wait needs no read
//! of the record; any other wait goes the general way (register, then read).

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

use tandem_shared::store::CancelOutcome;
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
        within(self.id, timeout, self.wait_forever()).await
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
