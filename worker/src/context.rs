//! What a running task sees: its [`TaskContext`] (id, attempt, device,
//! GPU, priority, the model cache), the [`Stop`] flag a computation looks
//! at between steps, and the [`Work`] that counts its computations on
//! blocking threads, so that a cancelled task keeps its slot and device
//! memory until they ended (a thread cannot be dropped like a future).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tandem_shared::{ErrorCode, TaskId};
use tokio_util::sync::CancellationToken;

use crate::error::TaskError;
use crate::model_cache::ModelCache;

/// What a running task knows about itself.
#[derive(Debug, Clone)]
pub struct TaskContext {
    pub id: TaskId,
    pub attempt: u32,
    /// The device the task runs on: `cpu`, or the GPU's UUID.
    pub device: String,
    /// The GPU to launch kernels on: set on a worker bound to a real GPU
    /// whose kernels loaded; `None` on CPU workers and simulated GPUs.
    pub gpu: Option<Arc<tandem_kernels::runtime::Gpu>>,
    /// The task's priority (a high or critical task may evict models).
    pub priority: tandem_shared::Priority,
    /// The worker's model cache, for the model kinds.
    pub models: Option<Arc<ModelCache>>,
    cancel: CancellationToken,
    /// The task's computations on blocking threads, so that a cancelled
    /// task holds its slot (and its device memory) until they stopped.
    work: Work,
}

impl TaskContext {
    pub fn new(id: TaskId, attempt: u32, device: String, cancel: CancellationToken) -> Self {
        Self {
            id,
            attempt,
            device,
            gpu: None,
            priority: tandem_shared::Priority::Normal,
            models: None,
            cancel,
            work: Work::default(),
        }
    }

    /// A context for unit tests: a new task id, attempt 1, on the CPU.
    #[cfg(test)]
    pub(crate) fn for_test() -> Self {
        Self::new(
            tandem_shared::TaskId::new(),
            1,
            "cpu".into(),
            CancellationToken::new(),
        )
    }

    /// The same context with a GPU to launch kernels on.
    pub fn with_gpu(mut self, gpu: Option<Arc<tandem_kernels::runtime::Gpu>>) -> Self {
        self.gpu = gpu;
        self
    }

    /// The same context with the task's priority and the model cache.
    pub fn with_models(
        mut self,
        priority: tandem_shared::Priority,
        models: Option<Arc<ModelCache>>,
    ) -> Self {
        self.priority = priority;
        self.models = models;
        self
    }

    /// The model cache, or why there is none.
    pub fn model_cache(&self) -> Result<&ModelCache, TaskError> {
        self.models.as_deref().ok_or_else(|| {
            TaskError::fatal(
                tandem_shared::ErrorCode::HANDLER_ERROR,
                "this worker has no model cache",
            )
        })
    }

    /// True once a producer asked to cancel this task. Long CPU-bound work
    /// should check it between steps; async work is dropped at its next
    /// await point anyway.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Completes when the task is cancelled.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await
    }

    /// The flag a computation on a blocking thread checks between steps.
    pub fn stop(&self) -> Stop {
        Stop::new(self.cancel.clone())
    }

    /// The task's computations on blocking threads.
    pub(crate) fn work(&self) -> &Work {
        &self.work
    }
}

/// Tells a computation that its task was cancelled. Checked between
/// steps (chunks of blocks, epochs): the computation then ends with
/// `CANCELLED` and frees its thread, its slot and its device memory.
#[derive(Debug, Clone)]
pub struct Stop(CancellationToken);

impl Stop {
    pub fn new(cancel: CancellationToken) -> Self {
        Self(cancel)
    }

    /// A flag that is never set (benches, tests).
    pub fn never() -> Self {
        Self(CancellationToken::new())
    }

    pub fn is_set(&self) -> bool {
        self.0.is_cancelled()
    }

    /// `Err(CANCELLED)` once the task was cancelled.
    pub fn check(&self) -> Result<(), TaskError> {
        if self.is_set() {
            return Err(TaskError::fatal(
                ErrorCode::CANCELLED,
                "cancelled by a producer while running",
            ));
        }
        Ok(())
    }
}

/// Counts a task's computations on blocking threads. A blocking thread
/// cannot be dropped like a future: after a cancel, the executor waits
/// here until every one has returned (they check [`Stop`]), so the task's
/// slot and device memory are not handed to the next task while its
/// computation still runs.
#[derive(Debug, Clone, Default)]
pub struct Work(Arc<WorkState>);

#[derive(Debug, Default)]
struct WorkState {
    running: std::sync::atomic::AtomicUsize,
    done: tokio::sync::Notify,
}

/// Held by a blocking thread while its computation runs.
struct WorkGuard(Arc<WorkState>);

impl Drop for WorkGuard {
    fn drop(&mut self) {
        if self.0.running.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.done.notify_waiters();
        }
    }
}

impl Work {
    fn enter(&self) -> WorkGuard {
        self.0.running.fetch_add(1, Ordering::AcqRel);
        WorkGuard(Arc::clone(&self.0))
    }

    /// Completes when no computation of the task runs.
    pub async fn finished(&self) {
        loop {
            let done = self.0.done.notified();
            if self.0.running.load(Ordering::Acquire) == 0 {
                return;
            }
            done.await;
        }
    }
}

/// Runs `work` on a blocking thread, counted in the task's [`Work`] and
/// given its [`Stop`]; a panic there is a failed attempt.
pub(crate) async fn blocking<T: Send + 'static>(
    ctx: &TaskContext,
    work: impl FnOnce(&Stop) -> Result<T, TaskError> + Send + 'static,
) -> Result<T, TaskError> {
    let running = ctx.work().enter();
    let stop = ctx.stop();
    let work = move || {
        let _running = running;
        work(&stop)
    };
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(join) => Err(TaskError::new(
            ErrorCode::HANDLER_PANIC,
            format!("the computation panicked: {join}"),
        )),
    }
}
