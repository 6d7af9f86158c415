//! The running-task table: the tasks running on this worker, each with its
//! cancel token, the stream entry it holds (its lease, extended by the
//! dispatcher while the task runs) and the device memory it declared. Tasks
//! claimed ahead of a free slot (`prefetch`) stand here too, not started:
//! their leases are extended, their memory booked and a cancel finds them.
//!
//! The dispatcher starts and finishes tasks here and reads the leases to
//! extend; the cancel listener (`cancel`) cancels tasks by id; the
//! heartbeat, the metrics sampler and the model cache read the memory the
//! running tasks reserve.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tandem_shared::TaskId;
use tokio::sync::Notify;
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
    /// False while the task waits, prefetched, for a slot.
    pub started: bool,
}

/// The tasks running on this worker, shared by the dispatcher (which starts
/// them and extends their leases) and the cancel listener.
#[derive(Debug, Clone, Default)]
pub(crate) struct Running {
    tasks: Arc<Mutex<Tasks>>,
    /// Rung when a cancel stops a task that waits, prefetched, for a slot:
    /// the dispatcher settles it at once.
    held_cancelled: Arc<Notify>,
}

#[derive(Debug, Default)]
pub(crate) struct Tasks {
    running: HashMap<TaskId, RunningTask>,
    /// Cancels that came for tasks not running here (yet): a claim's reply
    /// can reach the dispatcher after the cancel of the task it started
    /// reached the listener. Kept for [`EARLY_CANCEL_TTL`].
    early: HashMap<TaskId, Instant>,
    /// Tasks abandoned past their run-time limit whose computation still
    /// runs: their outcome is committed (no lease to extend), their device
    /// memory still taken.
    abandoned: HashMap<TaskId, u64>,
}

/// How long a cancel for a task this worker is not running is remembered.
const EARLY_CANCEL_TTL: Duration = Duration::from_secs(10);

impl Running {
    /// A task starts now.
    pub fn start(
        &self,
        id: TaskId,
        stream: usize,
        entry_id: String,
        memory: u64,
    ) -> CancellationToken {
        self.enter(id, stream, entry_id, memory, true)
    }

    /// A task claimed ahead of a free slot: it holds its entry and its
    /// memory, and starts later ([`Running::begin`]).
    pub fn hold(
        &self,
        id: TaskId,
        stream: usize,
        entry_id: String,
        memory: u64,
    ) -> CancellationToken {
        self.enter(id, stream, entry_id, memory, false)
    }

    /// A held task starts.
    pub fn begin(&self, id: &TaskId) {
        if let Some(task) = self.lock().running.get_mut(id) {
            task.started = true;
        }
    }

    /// Tasks that occupy a slot: started and not finished, abandoned ones
    /// included (their computation still runs).
    pub fn executing(&self) -> usize {
        let tasks = self.lock();
        tasks.running.values().filter(|t| t.started).count() + tasks.abandoned.len()
    }

    /// Completes when a cancel stopped a held (prefetched) task.
    pub async fn held_cancelled(&self) {
        self.held_cancelled.notified().await;
    }

    fn enter(
        &self,
        id: TaskId,
        stream: usize,
        entry_id: String,
        memory: u64,
        started: bool,
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
                started,
            },
        );
        token
    }

    /// The device memory the running tasks declared, together (abandoned
    /// ones included: their computation still holds it).
    pub fn reserved(&self) -> u64 {
        let tasks = self.lock();
        tasks.running.values().map(|t| t.memory).sum::<u64>()
            + tasks.abandoned.values().sum::<u64>()
    }

    /// The device memory task `id` declared when it started here (0 when
    /// it is not running).
    pub fn memory_of(&self, id: &TaskId) -> u64 {
        self.lock().running.get(id).map_or(0, |t| t.memory)
    }

    pub fn finish(&self, id: &TaskId) {
        let mut tasks = self.lock();
        tasks.running.remove(id);
        tasks.abandoned.remove(id);
    }

    /// A task abandoned past its run-time limit: its outcome is being
    /// committed, so its lease is no longer extended, but its device memory
    /// stays reserved until [`Running::finish`].
    pub fn abandon(&self, id: &TaskId) {
        let mut tasks = self.lock();
        if let Some(task) = tasks.running.remove(id) {
            tasks.abandoned.insert(*id, task.memory);
        }
    }

    /// Cancels a running task; a task not running here is remembered for a
    /// while, in case its start is on its way. True when it was running.
    pub fn cancel(&self, id: &TaskId) -> bool {
        let mut tasks = self.lock();
        if let Some(task) = tasks.running.get(id) {
            task.token.cancel();
            if !task.started {
                self.held_cancelled.notify_one();
            }
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
        self.tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A task's own declaration is told apart from the others' (the model
    /// kinds add it back to the room their activations may use), held
    /// ones included; a task not running here declared nothing.
    #[test]
    fn a_tasks_own_memory_is_told_apart() {
        let running = Running::default();
        let (a, b, c) = (TaskId::new(), TaskId::new(), TaskId::new());
        running.start(a, 0, "1-0".into(), 300);
        running.hold(b, 0, "2-0".into(), 50);
        assert_eq!(running.reserved(), 350);
        assert_eq!(running.memory_of(&a), 300);
        assert_eq!(running.memory_of(&b), 50);
        assert_eq!(running.memory_of(&c), 0);
        assert_eq!(running.reserved() - running.memory_of(&a), 50);
        running.finish(&a);
        assert_eq!(running.memory_of(&a), 0);
    }
}
