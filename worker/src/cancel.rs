//! Listens for cancel requests and stops the running tasks they name.
//!
//! The cancel script publishes a task's id on the cancel channel when the
//! task is running. Every worker listens; the one running it cancels the
//! task's token. A missed message (the subscription was down) does not
//! change the outcome, only its speed: the commit script still records the
//! task as cancelled, because the request is also in the task record.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tandem_shared::TaskId;
use tandem_shared::store::Store;
use tokio_util::sync::CancellationToken;

/// A task running on this worker: how to stop it, and which entry it holds.
#[derive(Debug, Clone)]
pub(crate) struct RunningTask {
    pub token: CancellationToken,
    /// Index into the worker's streams.
    pub stream: usize,
    pub entry_id: String,
    /// The device memory the task declared.
    pub memory: u64,
}

/// The tasks running on this worker, shared by the dispatcher (which starts
/// them and extends their leases) and the cancel listener.
#[derive(Debug, Clone, Default)]
pub(crate) struct Running(Arc<Mutex<Tasks>>);

#[derive(Debug, Default)]
pub(crate) struct Tasks {
    running: HashMap<TaskId, RunningTask>,
    /// Cancels that came for tasks not running here (yet): a claim's reply
    /// can reach the dispatcher after the cancel of the task it started
    /// reached the listener. Kept for [`EARLY_CANCEL_TTL`].
    early: HashMap<TaskId, Instant>,
}

/// How long a cancel for a task this worker is not running is remembered.
const EARLY_CANCEL_TTL: Duration = Duration::from_secs(10);

impl Running {
    pub fn start(
        &self,
        id: TaskId,
        stream: usize,
        entry_id: String,
        memory: u64,
    ) -> CancellationToken {
        let token = CancellationToken::new();
        let mut tasks = self.lock();
        if tasks.early.remove(&id).is_some() {
            tracing::info!(task = %id, "cancel requested as the task started: stopping it");
            token.cancel();
        }
        tasks.running.insert(
            id,
            RunningTask {
                token: token.clone(),
                stream,
                entry_id,
                memory,
            },
        );
        token
    }

    /// The device memory the running tasks declared, together.
    pub fn reserved(&self) -> u64 {
        self.lock().running.values().map(|t| t.memory).sum()
    }

    pub fn finish(&self, id: &TaskId) {
        self.lock().running.remove(id);
    }

    /// Cancels a running task; a task not running here is remembered for a
    /// while, in case its start is on its way. True when it was running.
    pub fn cancel(&self, id: &TaskId) -> bool {
        let mut tasks = self.lock();
        if let Some(task) = tasks.running.get(id) {
            task.token.cancel();
            return true;
        }
        let now = Instant::now();
        tasks
            .early
            .retain(|_, at| now.duration_since(*at) < EARLY_CANCEL_TTL);
        tasks.early.insert(*id, now);
        false
    }

    /// Stops the tasks holding these entries (their leases were lost) and
    /// returns their ids.
    pub fn stop_entries(&self, entry_ids: &[String]) -> Vec<TaskId> {
        self.lock()
            .running
            .iter()
            .filter(|(_, task)| entry_ids.contains(&task.entry_id))
            .map(|(id, task)| {
                task.token.cancel();
                *id
            })
            .collect()
    }

    /// Every running task's (stream index, entry id): the leases to extend.
    pub fn leases(&self) -> Vec<(usize, String)> {
        self.lock()
            .running
            .values()
            .map(|task| (task.stream, task.entry_id.clone()))
            .collect()
    }

    /// The ids of the tasks running now.
    pub fn ids(&self) -> Vec<TaskId> {
        self.lock().running.keys().copied().collect()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().running.is_empty()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tasks> {
        // A panic while holding this lock cannot leave the map inconsistent
        // (every operation is a single insert, remove or lookup).
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Subscribes to the cancel channel until the task is aborted, resubscribing
/// after connection loss. `subscribed` fires once the first subscription
/// holds, so the worker claims nothing whose cancel it could miss.
pub(crate) async fn listen(
    store: Store,
    running: Running,
    subscribed: tokio::sync::oneshot::Sender<()>,
) {
    let channel = store.keys().cancel_channel();
    let mut backoff = Duration::from_millis(100);
    let mut subscribed = Some(subscribed);
    loop {
        match store.pubsub().await {
            Ok(mut pubsub) => match pubsub.subscribe(&channel).await {
                Ok(()) => {
                    backoff = Duration::from_millis(100);
                    if let Some(tx) = subscribed.take() {
                        let _ = tx.send(());
                    }
                    let mut messages = pubsub.on_message();
                    while let Some(message) = messages.next().await {
                        let payload: Vec<u8> = message.get_payload_bytes().to_vec();
                        let Some(id) = std::str::from_utf8(&payload)
                            .ok()
                            .and_then(|t| t.parse::<TaskId>().ok())
                        else {
                            tracing::warn!(
                                "ignoring a malformed cancel message ({} bytes)",
                                payload.len()
                            );
                            continue;
                        };
                        if running.cancel(&id) {
                            tracing::info!(task = %id, "cancel requested: stopping the task");
                        }
                    }
                    tracing::warn!("cancel subscription ended; resubscribing");
                }
                Err(err) => tracing::warn!("cannot subscribe to {channel}: {err}"),
            },
            Err(err) => tracing::warn!("cancel listener cannot connect: {err}"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}
