//! What a running task sees: its [`TaskContext`] (id, attempt, device,
//! GPU, priority, the model cache), the [`Stop`] flag a computation looks
//! at between steps, and the [`Work`] that counts its computations on
//! blocking threads, so that a cancelled task keeps its slot and device
//! memory until they ended (a thread cannot be dropped like a future).
//! [`Progress`] is how a task reports how far it is: throttled in place
//! (an atomic check), handed to the worker's progress writer.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tandem_shared::{Class, ErrorCode, TaskId};
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
    /// Where its progress reports go (none in unit tests and benches).
    progress: Option<Progress>,
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
            progress: None,
        }
    }

    /// The same context reporting progress through `progress`.
    pub(crate) fn with_progress(mut self, progress: Option<Progress>) -> Self {
        self.progress = progress;
        self
    }

    /// Reports how far the task is: `fraction` done (0 to 1, clamped) and a
    /// short message (cut at 200 bytes). Cheap enough for a hot loop: a
    /// report within `progress_interval_ms` of the last one written is
    /// dropped after one atomic load (a timer re-arms the reporter), and
    /// `message` is only called for a report that goes out. A report of 1
    /// (all done) is never dropped. The last written value is in
    /// the task record (`progress`, `progress_msg`) and, with events on, a
    /// `progress` event.
    pub fn progress(&self, fraction: f64, message: impl FnOnce() -> String) {
        if let Some(progress) = &self.progress {
            progress.report(fraction, message);
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

    /// The flag a computation on a blocking thread checks between steps
    /// (it carries the task's progress reporter too).
    pub fn stop(&self) -> Stop {
        Stop {
            cancel: self.cancel.clone(),
            progress: self.progress.clone(),
        }
    }

    /// The task's computations on blocking threads.
    pub(crate) fn work(&self) -> &Work {
        &self.work
    }

    /// Waits until the task's progress reports so far are written.
    pub(crate) async fn flush_progress(&self) {
        if let Some(progress) = &self.progress {
            progress.flush().await;
        }
    }
}

/// Tells a computation that its task was cancelled. Checked between
/// steps (chunks of blocks, epochs): the computation then ends with
/// `CANCELLED` and frees its thread, its slot and its device memory.
///
/// It also carries the task's progress reporter, so that a computation
/// reports how far it is between the same steps ([`Stop::progress`]).
#[derive(Debug, Clone)]
pub struct Stop {
    cancel: CancellationToken,
    progress: Option<Progress>,
}

impl Stop {
    pub fn new(cancel: CancellationToken) -> Self {
        Self {
            cancel,
            progress: None,
        }
    }

    /// A flag that is never set (benches, tests).
    pub fn never() -> Self {
        Self::new(CancellationToken::new())
    }

    /// A flag that is never set, carrying a progress reporter throttled to
    /// one report per `interval` whose reports go nowhere: for the bench
    /// of what reporting in a hot loop costs (`examples/bench_progress`).
    /// Call it inside a Tokio runtime, which re-arms the throttle.
    pub fn never_reporting(interval: Duration) -> Self {
        let (reports, _dropped) = tokio::sync::mpsc::unbounded_channel();
        let sink = ProgressSink { reports, interval };
        Self {
            cancel: CancellationToken::new(),
            progress: Some(Progress::new(
                sink,
                Class::Cpu,
                TaskId::new(),
                String::new(),
            )),
        }
    }

    pub fn is_set(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// [`TaskContext::progress`], from a blocking thread.
    pub fn progress(&self, fraction: f64, message: impl FnOnce() -> String) {
        if let Some(progress) = &self.progress {
            progress.report(fraction, message);
        }
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

/// One progress report on its way to Redis.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ProgressReport {
    pub class: Class,
    pub id: TaskId,
    /// `<worker> <entry id>`: the record's owner, which fences the write.
    pub owner: String,
    pub fraction: f64,
    pub message: String,
}

/// What goes to the progress writer: a report, or a request to say when
/// every report sent before it is written.
#[derive(Debug)]
pub(crate) enum ProgressItem {
    Report(ProgressReport),
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// Where a worker's tasks send their progress reports (the progress
/// writer, `progress`, drains it), and how often one task may write.
#[derive(Debug, Clone)]
pub struct ProgressSink {
    pub(crate) reports: tokio::sync::mpsc::UnboundedSender<ProgressItem>,
    pub(crate) interval: Duration,
}

/// A running task's progress reporter, shared by its context and its
/// computations' [`Stop`]s.
#[derive(Debug, Clone)]
pub(crate) struct Progress(Arc<ProgressState>);

#[derive(Debug)]
struct ProgressState {
    sink: ProgressSink,
    class: Class,
    id: TaskId,
    owner: String,
    /// Whether the next report may go out: cleared by a report that goes,
    /// set again `interval` later by a timer on the runtime. A report
    /// finding it clear costs one atomic load.
    due: AtomicBool,
    /// Whether any report went out (a flush of none costs nothing).
    sent: AtomicBool,
    /// The runtime the re-arming timers run on (none in plain unit tests:
    /// then only the final report follows the first).
    runtime: Option<tokio::runtime::Handle>,
}

/// How long a finished task waits for its last progress reports to be
/// written before its commit (which would fence them out) goes anyway.
const FLUSH_LIMIT: Duration = Duration::from_secs(2);

impl Progress {
    pub(crate) fn new(sink: ProgressSink, class: Class, id: TaskId, owner: String) -> Self {
        Self(Arc::new(ProgressState {
            sink,
            class,
            id,
            owner,
            due: AtomicBool::new(true),
            sent: AtomicBool::new(false),
            runtime: tokio::runtime::Handle::try_current().ok(),
        }))
    }

    /// Waits (a bounded time) until every report sent so far is written,
    /// so that the task's last report is in its record before its commit
    /// ends the task. Costs nothing for a task that sent none.
    pub(crate) async fn flush(&self) {
        if !self.0.sent.load(Ordering::Relaxed) {
            return;
        }
        let (done, written) = tokio::sync::oneshot::channel();
        if self.0.sink.reports.send(ProgressItem::Flush(done)).is_ok() {
            let _ = tokio::time::timeout(FLUSH_LIMIT, written).await;
        }
    }

    fn report(&self, fraction: f64, message: impl FnOnce() -> String) {
        let state = &*self.0;
        // The final report (all done) always goes, so that the record ends
        // saying so however fast the last steps came.
        let last_step = fraction >= 1.0;
        if !last_step && !state.due.load(Ordering::Relaxed) {
            return;
        }
        let interval = state.sink.interval;
        if !interval.is_zero() {
            // One report per interval even when threads race for it.
            let was_due = state.due.swap(false, Ordering::Relaxed);
            if !was_due && !last_step {
                return;
            }
            if was_due && let Some(runtime) = &state.runtime {
                let rearm = Arc::clone(&self.0);
                runtime.spawn(async move {
                    tokio::time::sleep(interval).await;
                    rearm.due.store(true, Ordering::Relaxed);
                });
            }
        }
        state.sent.store(true, Ordering::Relaxed);
        let fraction = if fraction.is_finite() {
            fraction.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let mut message = message();
        if message.len() > tandem_shared::store::PROGRESS_MSG_MAX {
            let mut cut = tandem_shared::store::PROGRESS_MSG_MAX;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        // The writer is gone only while the worker stops.
        let _ = state
            .sink
            .reports
            .send(ProgressItem::Report(ProgressReport {
                class: state.class,
                id: state.id,
                owner: state.owner.clone(),
                fraction,
                message,
            }));
    }
}

#[cfg(test)]
mod progress_tests {
    use super::*;

    struct Received(tokio::sync::mpsc::UnboundedReceiver<ProgressItem>);

    impl Received {
        fn try_recv(&mut self) -> Result<ProgressReport, ()> {
            match self.0.try_recv() {
                Ok(ProgressItem::Report(report)) => Ok(report),
                _ => Err(()),
            }
        }
    }

    fn reporter(interval: Duration) -> (Progress, Received) {
        let (reports, received) = tokio::sync::mpsc::unbounded_channel();
        let sink = ProgressSink { reports, interval };
        (
            Progress::new(sink, Class::Cpu, TaskId::new(), "w 1-0".into()),
            Received(received),
        )
    }

    #[test]
    fn reports_within_the_interval_of_the_last_one_are_dropped() {
        let (progress, mut received) = reporter(Duration::from_secs(3600));
        for step in 0..1000 {
            progress.report(f64::from(step) / 1000.0, || format!("step {step}"));
        }
        let first = received.try_recv().expect("the first report goes out");
        assert_eq!((first.fraction, first.message.as_str()), (0.0, "step 0"));
        assert!(
            received.try_recv().is_err(),
            "the rest fall within the hour"
        );
    }

    #[test]
    fn without_an_interval_every_report_goes_out_clamped_and_cut() {
        let (progress, mut received) = reporter(Duration::ZERO);
        progress.report(1.5, || "é".repeat(150));
        progress.report(f64::NAN, String::new);
        progress.report(-1.0, String::new);
        let first = received.try_recv().unwrap();
        assert_eq!(first.fraction, 1.0);
        assert!(first.message.len() <= tandem_shared::store::PROGRESS_MSG_MAX);
        assert!(first.message.chars().all(|c| c == 'é'));
        assert_eq!(received.try_recv().unwrap().fraction, 0.0);
        assert_eq!(received.try_recv().unwrap().fraction, 0.0);
    }

    #[test]
    fn the_final_report_goes_out_within_the_interval() {
        let (progress, mut received) = reporter(Duration::from_secs(3600));
        progress.report(0.5, || "half".into());
        progress.report(0.9, || "dropped".into());
        progress.report(1.0, || "done".into());
        assert_eq!(received.try_recv().unwrap().message, "half");
        assert_eq!(received.try_recv().unwrap().message, "done");
        assert!(received.try_recv().is_err());
    }

    #[tokio::test]
    async fn the_reporter_is_rearmed_an_interval_after_a_report() {
        let (progress, mut received) = reporter(Duration::from_millis(20));
        progress.report(0.1, || "first".into());
        progress.report(0.2, || "too soon".into());
        assert_eq!(received.try_recv().unwrap().message, "first");
        assert!(received.try_recv().is_err());
        // Reports keep coming; one goes out once the timer re-armed (a
        // bounded wait for it, not a fixed sleep).
        let limit = std::time::Instant::now() + Duration::from_secs(30);
        let second = loop {
            progress.report(0.3, || "later".into());
            if let Ok(report) = received.try_recv() {
                break report;
            }
            assert!(std::time::Instant::now() < limit, "never re-armed");
            tokio::task::yield_now().await;
        };
        assert_eq!(second.message, "later");
    }

    #[test]
    fn a_dropped_report_does_not_build_its_message() {
        let (progress, _received) = reporter(Duration::from_secs(3600));
        progress.report(0.1, String::new);
        progress.report(0.2, || unreachable!("dropped reports build no message"));
    }
}
