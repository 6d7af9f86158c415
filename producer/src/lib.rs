//! The Tandem producer library: submit tasks to a Tandem queue, wait for
//! their results (pushed, not polled), ask their status, cancel them.
//! The `tandem` command-line tool is a crate of its own (`tandem-cli`), so
//! this library compiles none of its dependencies.
//!
//! # Layout
//!
//! - [`Producer`]: the connection; submit (now or delayed), wait, status,
//!   cancel; pause, resume and rate limits.
//! - [`TaskHandle`]: an awaitable task (`handle.await`), from
//!   [`Producer::submit_handle`] or [`Producer::handle`].
//! - `listener`: the reply-stream listener that hands completion notices to
//!   waiting calls, and the bookkeeping of who waits for what.
//! - [`Task`]: a task to submit, with its options (priority, deadline,
//!   idempotency key, ...), checked before it is sent.
//! - [`Schedule`]: a recurring schedule (cron in a time zone, or a
//!   period) of a task; `Producer::schedule_add`, `schedules`, `schedule`,
//!   `schedule_pause`, `schedule_resume`, `schedule_remove`.
//! - [`TaskOutcome`]: how a task ended.
//! - [`Workflow`]: a graph of tasks submitted as one unit (chains, groups,
//!   chords), whose nodes take their parents' results through
//!   [`WorkflowRef`] placeholders; [`Producer::submit_workflow`] returns a
//!   [`WorkflowHandle`] (wait, state, cancel).
//! - [`ProducerError`]: every way a call can fail.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use tandem_producer::{Producer, Task};
//! use tandem_shared::Priority;
//! use tandem_shared::kind::builtin::{Sleep, SleepParams, SleepOutput};
//!
//! # async fn example() -> Result<(), tandem_producer::ProducerError> {
//! let producer = Producer::from_env().await?;
//! let task = Task::of::<Sleep>(&SleepParams { ms: 10 })?.priority(Priority::High);
//! let id = producer.submit(task).await?;
//! let outcome = producer.wait(id, Duration::from_secs(5)).await?;
//! let output: SleepOutput = outcome.result()?;
//! assert_eq!(output.slept_ms, 10);
//!
//! // Or keep a handle and await it.
//! let handle = producer.handle(producer.submit(Task::new("echo", &"hi")?).await?);
//! let echoed: String = handle.await?.result()?;
//! # Ok(()) }
//! ```

mod error;
mod handle;
mod listener;
mod outcome;
mod producer;
mod schedule;
mod task;
mod workflow;

pub use error::ProducerError;
pub use handle::{ProgressStream, TaskHandle};
pub use outcome::TaskOutcome;
pub use producer::Producer;
pub use schedule::{Schedule, ScheduleAdded};
pub use tandem_shared::recurring::CatchUp;
pub use tandem_shared::store::CancelOutcome;
pub use tandem_shared::store::{NodeState, WorkflowCancel, WorkflowState};
pub use tandem_shared::wire::ScheduleRecord;
pub use tandem_shared::wire::TaskProgress;
pub use tandem_shared::workflow::OnFailure;
pub use task::Task;
pub use workflow::{Workflow, WorkflowHandle, WorkflowOutcome, WorkflowRef};
