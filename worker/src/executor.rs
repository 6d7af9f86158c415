//! Runs one claimed task through its handler and turns whatever happens
//! (a result, an error, a panic, a cancel, bad input) into the
//! [`Completion`] the dispatcher commits. Nothing here fails or panics
//! outward: every problem becomes a failed completion with a code.

use std::panic::AssertUnwindSafe;
use std::time::Instant;

use futures_util::FutureExt;
use tandem_shared::store::{Completion, StreamRef};
use tandem_shared::wire::{EntryError, Finish, FinishOutcome, TaskEntry, TaskFailure};
use tandem_shared::{ErrorCode, Status};
use tokio_util::sync::CancellationToken;

use crate::handler::{Registry, TaskContext, TaskError};

/// Everything a worker needs to run tasks, shared by all its task runs.
#[derive(Debug, Clone)]
pub(crate) struct Executor {
    pub registry: Registry,
    pub worker_id: String,
    pub device: String,
    pub max_payload_bytes: usize,
}

impl Executor {
    /// Runs a started task to its completion.
    pub async fn execute(
        &self,
        entry: TaskEntry,
        entry_id: String,
        cancel: CancellationToken,
    ) -> Completion {
        let started = Instant::now();
        let outcome = self.run(&entry, cancel).await;
        let run_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let (status, outcome) = match outcome {
            Ok(result) => (Status::Succeeded, FinishOutcome::Result(result)),
            Err(err) if err.code == ErrorCode::CANCELLED => (Status::Cancelled, failure(err)),
            Err(err) => (Status::Failed, failure(err)),
        };
        match &outcome {
            FinishOutcome::Error(f) => tracing::info!(
                task = %entry.id, kind = %entry.kind, code = %f.code, "task failed: {}", f.message
            ),
            FinishOutcome::Result(_) => {
                tracing::debug!(task = %entry.id, kind = %entry.kind, run_us, "task succeeded")
            }
        }
        let finish = self.finish(status, Some(run_us), outcome);
        completion(entry, entry_id, finish)
    }

    async fn run(
        &self,
        entry: &TaskEntry,
        cancel: CancellationToken,
    ) -> Result<Vec<u8>, TaskError> {
        if entry.params.len() > self.max_payload_bytes {
            return Err(TaskError::new(
                ErrorCode::PAYLOAD_TOO_LARGE,
                format!(
                    "params are {} bytes; this worker accepts at most {}",
                    entry.params.len(),
                    self.max_payload_bytes
                ),
            ));
        }
        let ctx = TaskContext::new(entry.id, entry.attempt, self.device.clone(), cancel.clone());
        let prepared = self.registry.prepare(&entry.kind, &entry.params, ctx)?;
        tokio::select! {
            outcome = AssertUnwindSafe(prepared).catch_unwind() => match outcome {
                Ok(outcome) => outcome,
                Err(panic) => Err(TaskError::new(ErrorCode::HANDLER_PANIC, panic_message(&panic))),
            },
            () = cancel.cancelled() => Err(TaskError::new(
                ErrorCode::CANCELLED,
                "cancelled by a producer while running",
            )),
        }
    }

    /// The completion of an entry that could not be decoded, when it named a
    /// task to report to; `None` when it did not.
    pub fn refused(
        &self,
        err: EntryError,
        stream: &StreamRef,
        entry_id: String,
    ) -> Option<Completion> {
        let id = err.id?;
        Some(Completion {
            id,
            class: stream.class,
            priority: stream.priority,
            entry_id,
            reply_to: err.reply_to,
            finish: self.finish(
                Status::Failed,
                None,
                FinishOutcome::Error(TaskFailure {
                    code: err.code,
                    message: err.message,
                }),
            ),
        })
    }

    /// The completion of a task found past its deadline before it started.
    pub fn expired(&self, entry: TaskEntry, entry_id: String) -> Completion {
        let failure = TaskFailure {
            code: ErrorCode::EXPIRED,
            message: format!(
                "deadline {} ms passed before the task started",
                entry.deadline_ms.unwrap_or_default()
            ),
        };
        let finish = self.finish(Status::Expired, None, FinishOutcome::Error(failure));
        completion(entry, entry_id, finish)
    }

    fn finish(&self, status: Status, run_us: Option<u64>, outcome: FinishOutcome) -> Finish {
        Finish {
            status,
            worker: self.worker_id.clone(),
            device: self.device.clone(),
            run_us,
            outcome,
        }
    }
}

fn completion(entry: TaskEntry, entry_id: String, finish: Finish) -> Completion {
    Completion {
        id: entry.id,
        class: entry.class,
        priority: entry.priority,
        entry_id,
        reply_to: entry.reply_to,
        finish,
    }
}

fn failure(err: TaskError) -> FinishOutcome {
    FinishOutcome::Error(TaskFailure {
        code: err.code,
        message: err.message,
    })
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    let detail = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown payload".to_owned());
    format!("handler panicked: {detail}")
}

#[cfg(test)]
mod tests {
    use tandem_shared::kind::{BadParams, KindSpec};
    use tandem_shared::{Class, Priority, TaskId, msgpack};

    use super::*;
    use crate::handler::Handler;

    struct Explode;
    impl KindSpec for Explode {
        const KIND: &'static str = "explode";
        const CLASS: Class = Class::Cpu;
        type Params = rmpv::Value;
        type Output = ();
        fn validate(_: &rmpv::Value) -> Result<(), BadParams> {
            Ok(())
        }
    }
    struct ExplodeHandler;
    impl Handler for ExplodeHandler {
        type Spec = Explode;
        async fn run(&self, _: rmpv::Value, _: TaskContext) -> Result<(), TaskError> {
            panic!("boom")
        }
    }

    fn executor() -> Executor {
        let mut registry = Registry::with_builtins();
        registry.register(ExplodeHandler);
        Executor {
            registry,
            worker_id: "w".into(),
            device: "cpu".into(),
            max_payload_bytes: 64,
        }
    }

    fn entry(kind: &str, params: Vec<u8>) -> TaskEntry {
        TaskEntry {
            id: TaskId::new(),
            kind: kind.into(),
            class: Class::Cpu,
            priority: Priority::Normal,
            attempt: 1,
            max_attempts: 3,
            memory_bytes: 0,
            deadline_ms: None,
            producer: "p".into(),
            submitted_at_ms: None,
            reply_to: None,
            params,
        }
    }

    fn error_code(completion: &Completion) -> Option<&str> {
        match &completion.finish.outcome {
            FinishOutcome::Error(f) => Some(f.code.as_str()),
            FinishOutcome::Result(_) => None,
        }
    }

    #[tokio::test]
    async fn panics_become_failures() {
        let done = executor()
            .execute(
                entry("explode", vec![]),
                "1-0".into(),
                CancellationToken::new(),
            )
            .await;
        assert_eq!(done.finish.status, Status::Failed);
        assert_eq!(error_code(&done), Some("HANDLER_PANIC"));
    }

    #[tokio::test]
    async fn oversized_params_are_refused() {
        let big = msgpack::encode(&"x".repeat(100)).unwrap();
        let done = executor()
            .execute(entry("echo", big), "1-0".into(), CancellationToken::new())
            .await;
        assert_eq!(error_code(&done), Some("PAYLOAD_TOO_LARGE"));
    }

    #[tokio::test]
    async fn cancel_stops_a_running_task() {
        let cancel = CancellationToken::new();
        let params =
            msgpack::encode(&tandem_shared::kind::builtin::SleepParams { ms: 60_000 }).unwrap();
        let exec = executor();
        let run = exec.execute(entry("sleep", params), "1-0".into(), cancel.clone());
        cancel.cancel();
        let done = tokio::time::timeout(std::time::Duration::from_secs(5), run)
            .await
            .expect("a cancelled sleep ends at once");
        assert_eq!(done.finish.status, Status::Cancelled);
        assert_eq!(error_code(&done), Some("CANCELLED"));
    }
}
