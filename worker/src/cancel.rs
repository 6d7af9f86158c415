//! Listens for cancel requests and stops the running tasks they name.
//!
//! The cancel script publishes a task's id on the cancel channel when the
//! task is running. Every worker listens; the one running it cancels the
//! task's token. A missed message (the subscription was down) does not
//! change the outcome, only its speed: the commit script still records the
//! task as cancelled, because the request is also in the task record.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
}

/// The tasks running on this worker, shared by the dispatcher (which starts
/// them and extends their leases) and the cancel listener.
#[derive(Debug, Clone, Default)]
pub(crate) struct Running(Arc<Mutex<HashMap<TaskId, RunningTask>>>);

impl Running {
    pub fn start(&self, id: TaskId, stream: usize, entry_id: String) -> CancellationToken {
        let token = CancellationToken::new();
        self.lock().insert(
            id,
            RunningTask {
                token: token.clone(),
                stream,
                entry_id,
            },
        );
        token
    }

    pub fn finish(&self, id: &TaskId) {
        self.lock().remove(id);
    }

    pub fn cancel(&self, id: &TaskId) -> bool {
        match self.lock().get(id) {
            Some(task) => {
                task.token.cancel();
                true
            }
            None => false,
        }
    }

    /// Stops the tasks holding these entries (their leases were lost) and
    /// returns their ids.
    pub fn stop_entries(&self, entry_ids: &[String]) -> Vec<TaskId> {
        self.lock()
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
            .values()
            .map(|task| (task.stream, task.entry_id.clone()))
            .collect()
    }

    /// The ids of the tasks running now.
    pub fn ids(&self) -> Vec<TaskId> {
        self.lock().keys().copied().collect()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TaskId, RunningTask>> {
        // A panic while holding this lock cannot leave the map inconsistent
        // (every operation is a single insert, remove or lookup).
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Subscribes to the cancel channel until the task is aborted, resubscribing
/// after connection loss.
pub(crate) async fn listen(store: Store, running: Running) {
    let channel = store.keys().cancel_channel();
    let mut backoff = Duration::from_millis(100);
    loop {
        match store.pubsub().await {
            Ok(mut pubsub) => match pubsub.subscribe(&channel).await {
                Ok(()) => {
                    backoff = Duration::from_millis(100);
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
