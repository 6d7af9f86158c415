//! Runs one claimed task through its handler and turns whatever happens
//! (a result, an error, a panic, a cancel, bad input) into the
//! [`Completion`] the dispatcher commits, with its disposition: final,
//! retry after a backoff, dead-lettered, or handed back for another device.
//! Nothing here fails or panics outward. A GPU worker's task may also end in
//! a [`DeviceFailure`]: its device is unusable and the worker must stop.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use tandem_shared::store::{Completion, Disposition, StreamRef};
use tandem_shared::wire::{EntryError, Finish, FinishOutcome, SplitRole, TaskEntry, TaskFailure};
use tandem_shared::{Class, ErrorCode, Status};
use tokio_util::sync::CancellationToken;

use crate::context::TaskContext;
use crate::device::{Device, Injected};
use crate::error::{Retry, TaskError};
use crate::kind_table::KindTable;
use crate::split::{self, Splitter};

/// After a cancel, how long a task's computation may take to stop before
/// the worker says so in its log.
const STOP_WARNING: Duration = Duration::from_secs(5);

/// A task's device became unusable while it ran (a sticky CUDA error, a
/// hang): no outcome is committed; the worker hands its tasks back and
/// stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeviceFailure {
    pub message: String,
}

pub(crate) use tandem_shared::backoff::Backoff;

/// What the dispatcher knows about a task beyond its entry.
#[derive(Debug)]
pub(crate) enum Plan {
    /// Run it. A splittable task of class `parallel` (not itself a shard)
    /// is cut into at most this many shards instead, when that is 2 or
    /// more.
    Run { split_into: u32 },
    /// A split task's merge entry, with its shards' partial results in
    /// shard order, or why they could not be read.
    Merge(Result<Vec<Vec<u8>>, PartsError>),
}

/// Why a merge entry's partial results could not be read.
#[derive(Debug)]
pub(crate) enum PartsError {
    /// Redis could not be reached: worth another attempt.
    Unreachable(String),
    /// Redis answered, without every shard's result: the entry is no merge
    /// entry of a split that finished.
    Missing(String),
}

impl From<tandem_shared::store::StoreError> for PartsError {
    fn from(err: tandem_shared::store::StoreError) -> Self {
        if err.is_connection() {
            PartsError::Unreachable(err.to_string())
        } else {
            PartsError::Missing(err.to_string())
        }
    }
}

/// The live GPU workers, as the router sees them when a task starts.
#[derive(Debug, Clone, Default)]
pub(crate) struct Fleet {
    /// The largest memory budget of a live GPU worker (0: none lives).
    pub gpu_budget: u64,
    /// Their devices (this worker's included when it is a GPU worker).
    pub gpu_devices: Vec<String>,
}

/// Everything a worker needs to run tasks, shared by all its task runs.
#[derive(Debug, Clone)]
pub(crate) struct Executor {
    pub kinds: KindTable,
    pub worker_id: String,
    /// `cpu` or the GPU's UUID, as records name it.
    pub device_id: String,
    pub device: Arc<Device>,
    /// A GPU task with no result after this long means the device hung.
    pub watchdog: Option<Duration>,
    pub max_payload_bytes: usize,
    pub backoff: Backoff,
    /// Set when tasks must carry a valid signature.
    pub signer: Option<tandem_shared::signature::Signer>,
    /// The model cache the model kinds use.
    pub models: Option<Arc<crate::model_cache::ModelCache>>,
    /// How long a task past its run-time limit has to stop before it is
    /// abandoned (`timeout_grace_ms`).
    pub timeout_grace: Duration,
    /// Run-time limits by kind for tasks without one (`kind_timeout_ms`).
    pub kind_timeouts: std::collections::BTreeMap<String, u64>,
    /// Where running tasks' progress reports go (`None`: dropped).
    pub progress: Option<crate::context::ProgressSink>,
    /// Parameters and results by blob reference (`None`: inline only).
    pub blobs: Option<Arc<crate::blob_cache::BlobCache>>,
}

impl Executor {
    /// A workflow node: its parents' results replace the placeholders in
    /// its parameters before anything else reads them (the signature,
    /// checked before, covers the parameters as submitted). Parameters
    /// and parents' results that came as blob references are read first,
    /// so a placeholder and its path see the real values.
    async fn fill_placeholders(
        &self,
        entry: TaskEntry,
    ) -> Result<TaskEntry, (Box<TaskEntry>, TaskError)> {
        let Some(inputs) = entry.inputs.as_deref() else {
            return Ok(entry);
        };
        let resolved = match &self.blobs {
            Some(blobs) => self.read_blob_inputs(blobs, &entry, inputs).await,
            None => Ok((None, None)),
        };
        let (params, inputs) = match resolved {
            Ok(resolved) => resolved,
            Err(err) => return Err((Box::new(entry), err)),
        };
        // Decoding the parents' results and encoding the filled parameters
        // grow with the results (megabytes for a large fan-in): on a
        // blocking thread, not the claim loop's. The entry keeps the rest.
        let mut entry = entry;
        let own_params = std::mem::take(&mut entry.params);
        let own_inputs = entry.inputs.take();
        let size = [&params, &inputs, &own_inputs]
            .iter()
            .filter_map(|b| b.as_ref().map(Vec::len))
            .sum::<usize>()
            + own_params.len();
        let filled = off_the_loop(size, "filling the placeholders", move || {
            let filled = tandem_shared::workflow::refs::substitute(
                params.as_deref().unwrap_or(&own_params),
                inputs
                    .as_deref()
                    .unwrap_or(own_inputs.as_deref().unwrap_or_default()),
            );
            Ok((filled, own_params, own_inputs))
        })
        .await;
        match filled {
            Ok((Ok(params), _, _)) => Ok(TaskEntry { params, ..entry }),
            Ok((Err(message), params, inputs)) => {
                entry.params = params;
                entry.inputs = inputs;
                Err((
                    Box::new(entry),
                    TaskError::fatal(ErrorCode::BAD_PARAMS, message),
                ))
            }
            Err(err) => Err((Box::new(entry), err)),
        }
    }

    /// The parameters' bytes when they came as a blob reference, and the
    /// `inputs` map re-encoded with every parent result that came as a
    /// blob reference replaced by the result itself (`None`: as they are).
    async fn read_blob_inputs(
        &self,
        blobs: &crate::blob_cache::BlobCache,
        entry: &TaskEntry,
        inputs: &[u8],
    ) -> Result<(Option<Vec<u8>>, Option<Vec<u8>>), TaskError> {
        let params = blobs
            .params(entry.id, &entry.params)
            .await?
            .map(|bytes| bytes.to_vec());
        let bad = |message: String| TaskError::fatal(ErrorCode::BAD_PAYLOAD, message);
        let mut map: rmpv::Value = tandem_shared::msgpack::decode(inputs)
            .map_err(|e| bad(format!("field inputs is not a MessagePack map: {e}")))?;
        let rmpv::Value::Map(results) = &mut map else {
            return Err(bad("field inputs is not a MessagePack map".into()));
        };
        let mut changed = false;
        for (node, result) in results.iter_mut() {
            let is_ref = matches!(result, rmpv::Value::Map(pairs)
                if pairs.first().and_then(|(k, _)| k.as_str()) == Some("tandem_blob"));
            if !is_ref {
                continue;
            }
            let node = node.as_str().unwrap_or("?").to_owned();
            let reference = tandem_shared::msgpack::encode(&*result)
                .map_err(|e| bad(format!("parent {node:?}'s result: {e}")))?;
            if let Some(bytes) = blobs.parent_result(&node, &reference).await? {
                *result = tandem_shared::msgpack::decode(&bytes).map_err(|e| {
                    bad(format!(
                        "parent {node:?}'s result blob is not MessagePack: {e}"
                    ))
                })?;
                changed = true;
            }
        }
        let inputs = match changed {
            true => Some(
                tandem_shared::msgpack::encode(&map)
                    .map_err(|e| bad(format!("field inputs: {e}")))?,
            ),
            false => None,
        };
        Ok((params, inputs))
    }

    /// Runs a started task to its completion, or to its device's failure.
    #[cfg(test)]
    pub async fn execute(
        &self,
        entry: TaskEntry,
        entry_id: String,
        cancel: CancellationToken,
        plan: Plan,
        fleet: Arc<Fleet>,
    ) -> Result<Completion, DeviceFailure> {
        let mut abandoned = None;
        self.execute_tracked(entry, entry_id, cancel, plan, fleet, &mut abandoned)
            .await
    }

    /// [`Executor::execute`]; when the task ran past its run-time limit and
    /// its computation did not stop within the grace period, the completion
    /// says `TIMEOUT` at once and `abandoned` holds the computation's
    /// [`Work`](crate::context::Work): the task's slot and device memory stay
    /// taken until it ends.
    pub async fn execute_tracked(
        &self,
        entry: TaskEntry,
        entry_id: String,
        cancel: CancellationToken,
        plan: Plan,
        fleet: Arc<Fleet>,
        abandoned: &mut Option<crate::context::Work>,
    ) -> Result<Completion, DeviceFailure> {
        let started = Instant::now();
        // The entry as it came from the stream is held to the payload
        // limit; parameters filled from parents' results or read from a
        // blob below are not (the blob store has its own limit).
        if let Err(err) = self.check_size(&entry) {
            return Ok(self.conclude(entry, entry_id, 0, Err(err)));
        }
        let entry = match self.fill_placeholders(entry).await {
            Ok(entry) => entry,
            Err((entry, err)) => return Ok(self.conclude(*entry, entry_id, 0, Err(err))),
        };
        let parts = match plan {
            Plan::Run { split_into } => {
                if let Some(completion) = self.needs_a_gpu(&entry, &entry_id, fleet.gpu_budget) {
                    return Ok(completion);
                }
                let cutting = Instant::now();
                match self.split(&entry, split_into).await {
                    Ok(Some(shards)) => {
                        // The cut lies inside the node's step boundary (its
                        // first shard starts after the split's commit).
                        tracing::info!(
                            task = %entry.id, kind = %entry.kind, shards = shards.len(),
                            cut_us = u64::try_from(cutting.elapsed().as_micros()).unwrap_or(u64::MAX),
                            "split into shards"
                        );
                        let finish =
                            self.finish(Status::Running, None, FinishOutcome::Result(Vec::new()));
                        let disposition = Disposition::Split { shards };
                        return Ok(completion(entry, entry_id, disposition, finish));
                    }
                    Ok(None) => {}
                    Err(err) => return Ok(self.conclude(entry, entry_id, 0, Err(err))),
                }
                None
            }
            Plan::Merge(parts) => Some(parts),
        };
        let outcome = match self.device.before_task(entry.memory_bytes) {
            Injected::None => {
                self.run_watched(&entry, &entry_id, cancel, parts, abandoned)
                    .await
            }
            Injected::Fail(message) => Err(TaskError::device_failed(message)),
            Injected::OutOfMemory(message) => Err(TaskError::out_of_memory(message)),
            Injected::Hang => {
                tracing::warn!(task = %entry.id, "simulated device hang: this task never finishes");
                self.watched(std::future::pending()).await
            }
            Injected::Die => {
                tracing::error!(task = %entry.id, "simulated device death: the worker process dies now");
                std::process::abort();
            }
        };
        if let Some(stretch) = self.device.pace(started.elapsed()) {
            tokio::time::sleep(stretch).await;
        }
        let run_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        if self.device.is_gpu() {
            match outcome {
                Err(err) if err.code == ErrorCode::DEVICE_FAILED => {
                    return Err(DeviceFailure {
                        message: err.message,
                    });
                }
                Err(err) if err.code == ErrorCode::DEVICE_OUT_OF_MEMORY => {
                    // Back to the stream, avoiding this device, for another
                    // GPU; once every live GPU ran out of memory on it,
                    // declaring more than any can give, for the CPU worker.
                    let tried_all = fleet
                        .gpu_devices
                        .iter()
                        .all(|d| *d == self.device_id || entry.avoid.iter().any(|a| a == d));
                    let min_memory_bytes = if tried_all {
                        entry
                            .memory_bytes
                            .max(self.device.budget.max(fleet.gpu_budget))
                            + 1
                    } else {
                        entry.memory_bytes
                    };
                    tracing::warn!(
                        task = %entry.id, kind = %entry.kind, min_memory_bytes,
                        "out of device memory: handing the task back for a device with more room ({})",
                        err.message
                    );
                    let finish = self.finish(Status::Failed, Some(run_us), failure(err));
                    return Ok(completion(
                        entry,
                        entry_id,
                        Disposition::HandBack { min_memory_bytes },
                        finish,
                    ));
                }
                other => return Ok(self.conclude(entry, entry_id, run_us, other)),
            }
        }
        Ok(self.conclude(entry, entry_id, run_us, outcome))
    }

    /// On a CPU worker, a task whose kind has no CPU path: hand it back for
    /// a GPU when one could take it, else fail it with
    /// `INSUFFICIENT_GPU_MEMORY` (it fits no live GPU).
    fn needs_a_gpu(
        &self,
        entry: &TaskEntry,
        entry_id: &str,
        gpu_budget: u64,
    ) -> Option<Completion> {
        if self.device.is_gpu() || self.kinds.has_cpu_path(&entry.kind) {
            return None;
        }
        // No live GPU at all: nothing would ever take it.
        let (status, disposition, message) = if gpu_budget == 0 || entry.memory_bytes > gpu_budget {
            (
                Status::Failed,
                Disposition::Dead,
                format!(
                    "kind {:?} has no CPU path and the task needs {} bytes of device memory; the largest live GPU budget is {gpu_budget}",
                    entry.kind, entry.memory_bytes
                ),
            )
        } else {
            (
                Status::Failed,
                Disposition::HandBack {
                    min_memory_bytes: entry.memory_bytes,
                },
                format!("kind {:?} has no CPU path: left for a GPU", entry.kind),
            )
        };
        tracing::info!(task = %entry.id, kind = %entry.kind, "{message}");
        let failure = TaskFailure {
            code: ErrorCode::INSUFFICIENT_GPU_MEMORY,
            message,
        };
        let finish = self.finish(status, None, FinishOutcome::Error(failure));
        Some(completion(
            entry.clone(),
            entry_id.to_owned(),
            disposition,
            finish,
        ))
    }

    /// The shards of a splittable `parallel` task, when it is one and
    /// splits into 2 or more; `None`: run it whole. The cutting (decoding,
    /// checking and encoding the parameters once a shard, signing) runs on
    /// a blocking thread: on the worker's one runtime thread it would hold
    /// up the claim loop, and with it the commit of the split itself.
    async fn split(
        &self,
        entry: &TaskEntry,
        split_into: u32,
    ) -> Result<Option<Vec<TaskEntry>>, TaskError> {
        if split_into < 2 || entry.class != Class::Parallel || entry.split.is_some() {
            return Ok(None);
        }
        // Parameters that came as a blob run whole: each shard's entry
        // would carry their bytes inline.
        if tandem_shared::blob::BlobRef::detect(&entry.params).is_some() {
            return Ok(None);
        }
        // Nor do parameters a workflow node's placeholders filled beyond
        // the payload limit: its shards' entries would break it.
        if entry.params.len() > self.max_payload_bytes {
            return Ok(None);
        }
        let Some(splitter) = self.kinds.splitter(&entry.kind) else {
            return Ok(None);
        };
        let entry = entry.clone();
        let signer = self.signer.clone();
        off_the_loop(usize::MAX, "cutting the task into shards", move || {
            split::shard_entries(&*splitter, &entry, split_into, signer.as_ref())
        })
        .await
    }

    /// Runs the task under the device watchdog, when there is one.
    async fn run_watched(
        &self,
        entry: &TaskEntry,
        entry_id: &str,
        cancel: CancellationToken,
        parts: Option<Result<Vec<Vec<u8>>, PartsError>>,
        abandoned: &mut Option<crate::context::Work>,
    ) -> Result<Vec<u8>, TaskError> {
        self.watched(self.run(entry, entry_id, cancel, parts, abandoned))
            .await
    }

    async fn watched(
        &self,
        run: impl std::future::Future<Output = Result<Vec<u8>, TaskError>>,
    ) -> Result<Vec<u8>, TaskError> {
        match self.watchdog.filter(|_| self.device.is_gpu()) {
            Some(limit) => tokio::time::timeout(limit, run).await.unwrap_or_else(|_| {
                Err(TaskError::device_failed(format!(
                    "no result after {} ms: the device hung (device_watchdog_ms)",
                    limit.as_millis()
                )))
            }),
            None => run.await,
        }
    }

    /// The completion of a task that ran.
    fn conclude(
        &self,
        entry: TaskEntry,
        entry_id: String,
        run_us: u64,
        outcome: Result<Vec<u8>, TaskError>,
    ) -> Completion {
        let (status, disposition, outcome) = match outcome {
            Ok(result) => (
                Status::Succeeded,
                Disposition::Final,
                FinishOutcome::Result(result),
            ),
            Err(err) if err.code == ErrorCode::CANCELLED => {
                (Status::Cancelled, Disposition::Final, failure(err))
            }
            Err(err) => {
                let disposition = self.after_failure(&entry, &err);
                let verb = match disposition {
                    Disposition::Retry { .. } => "will retry",
                    _ => "dead-lettered",
                };
                tracing::info!(
                    task = %entry.id, kind = %entry.kind, attempt = entry.attempt, code = %err.code,
                    "attempt failed ({verb}): {}", err.message
                );
                (Status::Failed, disposition, failure(err))
            }
        };
        if status == Status::Succeeded {
            tracing::debug!(task = %entry.id, kind = %entry.kind, run_us, "task succeeded");
        }
        let finish = self.finish(status, Some(run_us), outcome);
        completion(entry, entry_id, disposition, finish)
    }

    /// Retry while attempts remain and the error allows it; else dead.
    fn after_failure(&self, entry: &TaskEntry, err: &TaskError) -> Disposition {
        if entry.attempt >= entry.max_attempts {
            return Disposition::Dead;
        }
        let delay = match err.retry {
            Retry::Never => return Disposition::Dead,
            Retry::Backoff => self.backoff.delay(entry.attempt),
            Retry::After(delay) => delay,
        };
        Disposition::Retry {
            after_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
        }
    }

    fn check_size(&self, entry: &TaskEntry) -> Result<(), TaskError> {
        if entry.params.len() > self.max_payload_bytes {
            return Err(TaskError::fatal(
                ErrorCode::PAYLOAD_TOO_LARGE,
                format!(
                    "params are {} bytes; this worker accepts at most {}",
                    entry.params.len(),
                    self.max_payload_bytes
                ),
            ));
        }
        Ok(())
    }

    /// The splitter of a shard's or merge entry's kind. Only workers write
    /// the fields that make an entry a shard (`parent`, `shard`, `shards`)
    /// or a merge entry (`merge`), and only for kinds that split: on an
    /// entry of a kind this worker runs but does not split, they are a
    /// malformed entry (`BAD_PAYLOAD`), named. A kind this worker does not
    /// run at all stays `UNKNOWN_KIND`.
    fn splitter(&self, entry: &TaskEntry) -> Result<Arc<dyn Splitter>, TaskError> {
        if let Some(splitter) = self.kinds.splitter(&entry.kind) {
            return Ok(splitter);
        }
        if self.kinds.class_of(&entry.kind).is_none() {
            return Err(TaskError::fatal(
                ErrorCode::UNKNOWN_KIND,
                format!(
                    "no handler for kind {:?}; this worker runs {:?}",
                    entry.kind,
                    self.kinds.names()
                ),
            ));
        }
        let fields = match entry.split {
            Some(SplitRole::Merge { .. }) => "field merge",
            _ => "fields parent, shard and shards",
        };
        Err(TaskError::fatal(
            ErrorCode::BAD_PAYLOAD,
            format!(
                "{fields} mark a part of a split task, but kind {:?} does not split; workers alone write them",
                entry.kind
            ),
        ))
    }

    async fn run(
        &self,
        entry: &TaskEntry,
        entry_id: &str,
        cancel: CancellationToken,
        parts: Option<Result<Vec<Vec<u8>>, PartsError>>,
        abandoned: &mut Option<crate::context::Work>,
    ) -> Result<Vec<u8>, TaskError> {
        // Parameters that came as a blob reference: its bytes, from the
        // worker's cache or fetched once.
        let from_blob = match &self.blobs {
            Some(blobs) => blobs.params(entry.id, &entry.params).await?,
            None => None,
        };
        let params = from_blob.as_deref().map_or(&entry.params[..], |b| &b[..]);
        let progress = self.progress.as_ref().map(|sink| {
            crate::context::Progress::new(
                sink.clone(),
                entry.class,
                entry.id,
                format!("{} {entry_id}", self.worker_id),
            )
        });
        let ctx = TaskContext::new(
            entry.id,
            entry.attempt,
            self.device_id.clone(),
            cancel.clone(),
        )
        .with_gpu(self.device.runtime())
        .with_models(entry.priority, self.models.clone())
        .with_progress(progress);
        let limit = entry
            .timeout_ms
            .or_else(|| self.kind_timeouts.get(&entry.kind).copied())
            .map(Duration::from_millis);
        let prepared = match (entry.split, parts) {
            (Some(SplitRole::Shard { .. }), _) => {
                split::run_shard_entry(&*self.splitter(entry)?, &entry.params, &ctx)?
            }
            (Some(SplitRole::Merge { .. }), Some(parts)) => {
                let splitter = self.splitter(entry)?;
                let parts = parts.map_err(|err| match err {
                    PartsError::Unreachable(why) => TaskError::new(
                        ErrorCode::HANDLER_ERROR,
                        format!("cannot read the shards' results: {why}"),
                    ),
                    PartsError::Missing(why) => TaskError::fatal(
                        ErrorCode::BAD_PAYLOAD,
                        format!(
                            "field merge marks a split task whose shards all finished, but their results are not there \
                             (workers alone write merge): {why}"
                        ),
                    ),
                })?;
                split::merge_entry(splitter, entry.params.clone(), parts, &ctx)
            }
            _ => {
                let for_handler = ctx.clone();
                self.kinds.prepare(&entry.kind, params, for_handler)?
            }
        };
        let outcome = tokio::select! {
            outcome = AssertUnwindSafe(prepared).catch_unwind() => match outcome {
                Ok(outcome) => outcome,
                // A panic counts as a failed attempt, retried like an error.
                Err(panic) => Err(TaskError::new(ErrorCode::HANDLER_PANIC, panic_message(&panic))),
            },
            () = cancel.cancelled() => Err(TaskError::fatal(
                ErrorCode::CANCELLED,
                "cancelled by a producer while running",
            )),
            () = past(limit) => {
                // The same path as a cancel: the token sets the task's Stop.
                cancel.cancel();
                Err(TaskError::new(
                    ErrorCode::TIMEOUT,
                    format!(
                        "ran past its timeout of {} ms and was stopped",
                        limit.map_or(0, |l| l.as_millis())
                    ),
                ))
            }
        };
        let timed_out = matches!(&outcome, Err(err) if err.code == ErrorCode::TIMEOUT);
        if timed_out {
            // Stopped within the grace period: the slot comes free with the
            // commit, as after a cancel. Else abandoned: the outcome is
            // committed now, and the slot stays taken until the computation
            // ends (the dispatcher waits on `abandoned`).
            if tokio::time::timeout(self.timeout_grace, ctx.work().finished())
                .await
                .is_err()
            {
                tracing::warn!(
                    task = %entry.id, kind = %entry.kind,
                    grace_ms = self.timeout_grace.as_millis(),
                    "the task ran past its timeout and did not stop within the grace period: abandoned; \
                     its slot and device memory stay taken until its computation ends"
                );
                *abandoned = Some(ctx.work().clone());
                return Err(TaskError::new(
                    ErrorCode::TIMEOUT,
                    format!(
                        "ran past its timeout of {} ms and did not stop within {} ms: abandoned",
                        limit.map_or(0, |l| l.as_millis()),
                        self.timeout_grace.as_millis()
                    ),
                ));
            }
            return outcome;
        }
        // After a cancel the handler's future is dropped, which stops async
        // work; a computation on a blocking thread stops at its next look at
        // the cancel. Until it has, the task keeps its slot and its device
        // memory, so the next task does not start beside it. (Otherwise the
        // handler awaited its computations to the end.)
        if cancel.is_cancelled() {
            self.wait_for_computations(entry, ctx.work()).await;
        }
        // The last report goes in before the commit, which ends the task
        // (and fences later reports out).
        ctx.flush_progress().await;
        match (outcome, &self.blobs) {
            // A result above the threshold goes as a blob reference (a
            // lower one for a workflow node whose children take it).
            (Ok(result), Some(blobs)) => blobs.result(result, entry.feeds).await,
            (outcome, _) => outcome,
        }
    }

    /// After a commit (the dispatcher's): gives back the task's parameter
    /// blob once its outcome is final.
    pub fn committed(
        &self,
        completion: &Completion,
        outcome: &Result<tandem_shared::store::Committed, tandem_shared::store::StoreError>,
    ) {
        if let Some(blobs) = &self.blobs {
            blobs.committed(completion, outcome);
        }
    }

    /// Waits until no computation of the task runs on a blocking thread,
    /// with a warning when one takes long to stop.
    async fn wait_for_computations(&self, entry: &TaskEntry, work: &crate::context::Work) {
        let finished = work.finished();
        tokio::pin!(finished);
        if tokio::time::timeout(STOP_WARNING, &mut finished)
            .await
            .is_ok()
        {
            return;
        }
        tracing::warn!(
            task = %entry.id,
            kind = %entry.kind,
            "the task's computation still runs {} s after its cancel; its slot stays taken until it ends",
            STOP_WARNING.as_secs()
        );
        finished.await;
        tracing::info!(task = %entry.id, "the cancelled computation ended");
    }

    /// The completion of an entry that could not be decoded, when it named a
    /// task to report to (it goes to the dead-letter stream); `None` when it
    /// did not.
    pub fn refused(
        &self,
        err: EntryError,
        stream: &StreamRef,
        entry_id: String,
        attempt: u32,
    ) -> Option<Completion> {
        let id = err.id?;
        Some(Completion {
            id,
            class: stream.class,
            priority: stream.priority,
            entry_id,
            reply_to: err.reply_to,
            attempt,
            disposition: Disposition::Dead,
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

    /// Refuses a task without a valid signature, when this worker checks
    /// them; the task goes to the dead-letter stream.
    pub fn unsigned(&self, entry: &TaskEntry, entry_id: &str) -> Option<Completion> {
        let signer = self.signer.as_ref()?;
        let message = match &entry.signature {
            Some(signature) if signer.verify(&entry.signed(), signature) => return None,
            Some(_) => {
                "the signature does not match this task (wrong key, or the entry was altered)"
            }
            None => "the task is not signed and this worker requires signatures",
        };
        let failure = TaskFailure {
            code: ErrorCode::BAD_SIGNATURE,
            message: message.to_owned(),
        };
        let finish = self.finish(Status::Failed, None, FinishOutcome::Error(failure));
        Some(completion(
            entry.clone(),
            entry_id.to_owned(),
            Disposition::Dead,
            finish,
        ))
    }

    /// The completion of a task cancelled while it waited, prefetched, for
    /// a slot: it never ran.
    pub fn cancelled_before_start(&self, entry: TaskEntry, entry_id: String) -> Completion {
        let err = TaskError::fatal(
            ErrorCode::CANCELLED,
            "cancelled by a producer before it started",
        );
        self.conclude(entry, entry_id, 0, Err(err))
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
        completion(entry, entry_id, Disposition::Final, finish)
    }

    /// The completion of a task that kills its workers (the claim blamed it
    /// for `max_deliveries` deaths, see the claim script): it goes to the
    /// dead-letter stream unrun, saying what was `observed`.
    pub fn poison(&self, entry: TaskEntry, entry_id: String, observed: &str) -> Completion {
        let failure = TaskFailure {
            code: ErrorCode::MAX_DELIVERIES,
            message: if observed.is_empty() {
                "its workers died running it too often".to_owned()
            } else {
                observed.to_owned()
            },
        };
        let finish = self.finish(Status::Failed, None, FinishOutcome::Error(failure));
        completion(entry, entry_id, Disposition::Dead, finish)
    }

    fn finish(&self, status: Status, run_us: Option<u64>, outcome: FinishOutcome) -> Finish {
        Finish {
            status,
            worker: self.worker_id.clone(),
            device: self.device_id.clone(),
            run_us,
            outcome,
        }
    }
}

/// Below this many bytes of input, work a task needs before it starts runs
/// in place: a blocking thread's hand-off would cost more than the work.
const IN_PLACE_BYTES: usize = 64 * 1024;

/// Runs CPU work a task needs before it starts (`what`, over `bytes` of
/// input) on a blocking thread: the worker's one runtime thread runs the
/// claim loop and every connection, which must not wait for it. A panic
/// there fails the attempt. Small work runs in place.
async fn off_the_loop<T: Send + 'static>(
    bytes: usize,
    what: &str,
    work: impl FnOnce() -> Result<T, TaskError> + Send + 'static,
) -> Result<T, TaskError> {
    if bytes < IN_PLACE_BYTES {
        return work();
    }
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(join) => Err(TaskError::new(
            ErrorCode::HANDLER_PANIC,
            format!("{what} panicked: {join}"),
        )),
    }
}

/// Completes once `limit` has passed (never without one).
async fn past(limit: Option<Duration>) {
    match limit {
        Some(limit) => tokio::time::sleep(limit).await,
        None => std::future::pending().await,
    }
}

fn completion(
    entry: TaskEntry,
    entry_id: String,
    disposition: Disposition,
    finish: Finish,
) -> Completion {
    Completion {
        id: entry.id,
        class: entry.class,
        priority: entry.priority,
        entry_id,
        reply_to: entry.reply_to,
        attempt: entry.attempt,
        disposition,
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
    use tandem_shared::{Priority, TaskId, msgpack};

    use super::*;
    use crate::handler::Handler;

    /// Run whole (no split).
    const WHOLE: Plan = Plan::Run { split_into: 0 };

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

    /// A computation on a blocking thread that runs until its task is
    /// cancelled, then takes 300 ms more to end (a step finishing), and
    /// says when it ended.
    struct Spin;
    impl KindSpec for Spin {
        const KIND: &'static str = "spin";
        const CLASS: Class = Class::Cpu;
        type Params = rmpv::Value;
        type Output = ();
        fn validate(_: &rmpv::Value) -> Result<(), BadParams> {
            Ok(())
        }
    }
    static SPIN_ENDED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    struct SpinHandler;
    impl Handler for SpinHandler {
        type Spec = Spin;
        async fn run(&self, _: rmpv::Value, ctx: TaskContext) -> Result<(), TaskError> {
            crate::context::blocking(&ctx, |stop| {
                while !stop.is_set() {
                    std::thread::sleep(Duration::from_millis(5));
                }
                std::thread::sleep(Duration::from_millis(300));
                SPIN_ENDED.store(true, std::sync::atomic::Ordering::SeqCst);
                stop.check()
            })
            .await
        }
    }

    fn executor() -> Executor {
        let mut kinds = KindTable::with_builtins();
        kinds.register(ExplodeHandler);
        kinds.register(SpinHandler);
        Executor {
            kinds,
            worker_id: "w".into(),
            device_id: "cpu".into(),
            device: Arc::new(Device::cpu()),
            watchdog: None,
            max_payload_bytes: 64,
            signer: None,
            models: None,
            backoff: Backoff {
                base: Duration::from_millis(100),
                max: Duration::from_secs(1),
            },
            timeout_grace: Duration::from_millis(200),
            kind_timeouts: std::collections::BTreeMap::new(),
            progress: None,
            blobs: None,
        }
    }

    fn entry(kind: &str, params: Vec<u8>, attempt: u32) -> TaskEntry {
        TaskEntry {
            id: TaskId::new(),
            kind: kind.into(),
            class: Class::Cpu,
            priority: Priority::Normal,
            attempt,
            max_attempts: 3,
            memory_bytes: 0,
            deadline_ms: None,
            timeout_ms: None,
            producer: "p".into(),
            submitted_at_ms: None,
            reply_to: None,
            params,
            signature: None,
            split: None,
            avoid: Vec::new(),
            inputs: None,
            feeds: 0,
        }
    }

    fn error_code(completion: &Completion) -> Option<&str> {
        match &completion.finish.outcome {
            FinishOutcome::Error(f) => Some(f.code.as_str()),
            FinishOutcome::Result(_) => None,
        }
    }

    async fn run(kind: &str, params: Vec<u8>, attempt: u32) -> Completion {
        executor()
            .execute(
                entry(kind, params, attempt),
                "1-0".into(),
                CancellationToken::new(),
                WHOLE,
                Arc::default(),
            )
            .await
            .expect("a CPU worker has no device to fail")
    }

    #[tokio::test]
    async fn panics_are_retried_until_attempts_run_out() {
        let first = run("explode", vec![], 1).await;
        assert_eq!(first.finish.status, Status::Failed);
        assert_eq!(error_code(&first), Some("HANDLER_PANIC"));
        assert!(
            matches!(first.disposition, Disposition::Retry { .. }),
            "{:?}",
            first.disposition
        );
        let last = run("explode", vec![], 3).await;
        assert_eq!(last.disposition, Disposition::Dead);
    }

    #[tokio::test]
    async fn errors_say_whether_to_retry() {
        let fatal = msgpack::encode(&tandem_shared::kind::builtin::FailParams {
            code: "E_NO".into(),
            message: String::new(),
            retry: false,
        })
        .unwrap();
        assert_eq!(run("fail", fatal, 1).await.disposition, Disposition::Dead);
        let transient = msgpack::encode(&tandem_shared::kind::builtin::FailParams {
            code: "E_AGAIN".into(),
            message: String::new(),
            retry: true,
        })
        .unwrap();
        assert!(matches!(
            run("fail", transient, 1).await.disposition,
            Disposition::Retry { .. }
        ));
        assert_eq!(run("nope", vec![], 1).await.disposition, Disposition::Dead);
        let ok = run("noop", vec![], 1).await;
        assert_eq!(
            (ok.finish.status, ok.disposition),
            (Status::Succeeded, Disposition::Final)
        );
    }

    #[tokio::test]
    async fn oversized_params_are_refused() {
        let big = msgpack::encode(&"x".repeat(100)).unwrap();
        let done = run("echo", big, 1).await;
        assert_eq!(error_code(&done), Some("PAYLOAD_TOO_LARGE"));
        assert_eq!(done.disposition, Disposition::Dead);
    }

    #[tokio::test]
    async fn cancel_stops_a_running_task() {
        let cancel = CancellationToken::new();
        let params =
            msgpack::encode(&tandem_shared::kind::builtin::SleepParams { ms: 60_000 }).unwrap();
        let exec = executor();
        let run = exec.execute(
            entry("sleep", params, 1),
            "1-0".into(),
            cancel.clone(),
            WHOLE,
            Arc::default(),
        );
        cancel.cancel();
        let done = tokio::time::timeout(Duration::from_secs(5), run)
            .await
            .expect("a cancelled sleep ends at once")
            .unwrap();
        assert_eq!(done.finish.status, Status::Cancelled);
        assert_eq!(error_code(&done), Some("CANCELLED"));
        assert_eq!(done.disposition, Disposition::Final);
    }

    #[tokio::test]
    async fn a_cancelled_computation_holds_its_task_until_its_thread_ends() {
        let cancel = CancellationToken::new();
        let exec = executor();
        let run = exec.execute(
            entry("spin", msgpack::encode(&()).unwrap(), 1),
            "1-0".into(),
            cancel.clone(),
            WHOLE,
            Arc::default(),
        );
        let canceller = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            cancel.cancel();
        };
        let (done, ()) = tokio::time::timeout(Duration::from_secs(5), async {
            tokio::join!(run, canceller)
        })
        .await
        .expect("the computation sees the cancel and ends");
        let done = done.unwrap();
        assert!(
            SPIN_ENDED.load(std::sync::atomic::Ordering::SeqCst),
            "the task was given back while its computation still ran"
        );
        assert_eq!(done.finish.status, Status::Cancelled);
        assert_eq!(error_code(&done), Some("CANCELLED"));
    }

    fn gpu_executor(spec: &str, watchdog: Option<Duration>) -> Executor {
        let config = tandem_shared::Config {
            simulate_gpus: spec.into(),
            device: tandem_shared::device::DeviceSelector::Index(0),
            ..tandem_shared::Config::default()
        };
        let detection = crate::device::Detection::simulated(&config, None).unwrap();
        let device = Device::bind(&config, &detection).unwrap();
        Executor {
            device_id: device.id(),
            device: Arc::new(device),
            watchdog,
            ..executor()
        }
    }

    #[tokio::test]
    async fn out_of_memory_hands_the_task_back_above_the_devices_budget() {
        let exec = gpu_executor("A, 1 GiB, 1 TFLOPS, oom_above=1000", None);
        let mut big = entry("noop", vec![], 1);
        big.memory_bytes = 2000;
        let done = exec
            .execute(
                big,
                "1-0".into(),
                CancellationToken::new(),
                WHOLE,
                Arc::default(),
            )
            .await
            .unwrap();
        assert_eq!(
            done.disposition,
            Disposition::HandBack {
                min_memory_bytes: exec.device.budget + 1
            }
        );
        assert_eq!(error_code(&done), Some("DEVICE_OUT_OF_MEMORY"));
        // A task that fits runs.
        let small = exec
            .execute(
                entry("noop", vec![], 1),
                "2-0".into(),
                CancellationToken::new(),
                WHOLE,
                Arc::default(),
            )
            .await
            .unwrap();
        assert_eq!(small.finish.status, Status::Succeeded);
    }

    #[tokio::test]
    async fn sticky_errors_and_hangs_fail_the_device() {
        let exec = gpu_executor("A, 1 GiB, 1 TFLOPS, fail_after=0", None);
        let failed = exec
            .execute(
                entry("noop", vec![], 1),
                "1-0".into(),
                CancellationToken::new(),
                WHOLE,
                Arc::default(),
            )
            .await;
        assert!(failed.unwrap_err().message.contains("ILLEGAL_ADDRESS"));

        let exec = gpu_executor(
            "A, 1 GiB, 1 TFLOPS, hang_after=0",
            Some(Duration::from_millis(50)),
        );
        let hung = exec
            .execute(
                entry("noop", vec![], 1),
                "1-0".into(),
                CancellationToken::new(),
                WHOLE,
                Arc::default(),
            )
            .await;
        assert!(hung.unwrap_err().message.contains("hung"));

        // A handler's device error means the same.
        let exec = gpu_executor("A, 1 GiB, 1 TFLOPS", None);
        let err: TaskError = tandem_kernels::driver::DeviceError {
            fault: tandem_kernels::driver::Fault::Sticky,
            message: "CUDA_ERROR_ILLEGAL_ADDRESS".into(),
        }
        .into();
        assert_eq!(err.code, ErrorCode::DEVICE_FAILED);
        assert!(exec.device.is_gpu());
    }

    /// Regression (issue 11, point 3): params that are not one MessagePack
    /// value ran (0x6e read as the integer 110, the rest ignored).
    #[tokio::test]
    async fn params_that_are_not_one_messagepack_value_are_a_bad_payload() {
        let mut trailing = msgpack::encode(&"hi").unwrap();
        trailing.push(0xc0);
        for params in [b"not msgpack".to_vec(), trailing, vec![0xc1]] {
            let done = run("echo", params.clone(), 1).await;
            assert_eq!(error_code(&done), Some("BAD_PAYLOAD"), "{params:?}");
            assert_eq!(done.disposition, Disposition::Dead);
        }
        let done = run("echo", b"not msgpack".to_vec(), 1).await;
        let FinishOutcome::Error(failure) = &done.finish.outcome else {
            panic!("failed")
        };
        assert_eq!(
            failure.message,
            "params are not one MessagePack value: a value of 1 byte followed by 10 more bytes (11 in all)"
        );
    }

    /// Regression (issue 11, point 9): `parent`/`shard`/`shards` on an
    /// entry of a kind that does not split failed UNKNOWN_KIND, `merge=1`
    /// HANDLER_ERROR (retried); both are malformed entries.
    #[tokio::test]
    async fn split_fields_on_an_entry_that_is_no_split_part_are_a_bad_payload() {
        let mut exec = executor();
        exec.kinds.add_test_kinds();
        let echo = msgpack::encode(&"hi").unwrap();
        let execute = |entry: TaskEntry, plan: Plan| {
            let exec = exec.clone();
            async move {
                exec.execute(
                    entry,
                    "1-0".into(),
                    CancellationToken::new(),
                    plan,
                    Arc::default(),
                )
                .await
                .unwrap()
            }
        };
        let message = |done: &Completion| match &done.finish.outcome {
            FinishOutcome::Error(f) => f.message.clone(),
            FinishOutcome::Result(_) => String::new(),
        };

        let mut shard = entry("echo", echo.clone(), 1);
        shard.split = Some(SplitRole::Shard {
            parent: TaskId::new(),
            index: 0,
            count: 1,
        });
        let done = execute(shard.clone(), WHOLE).await;
        assert_eq!(error_code(&done), Some("BAD_PAYLOAD"));
        assert_eq!(done.disposition, Disposition::Dead);
        assert!(
            message(&done).contains("fields parent, shard and shards"),
            "{}",
            message(&done)
        );

        let mut merge = entry("echo", echo.clone(), 1);
        merge.split = Some(SplitRole::Merge { count: 2 });
        let done = execute(merge.clone(), Plan::Merge(Ok(vec![]))).await;
        assert_eq!(error_code(&done), Some("BAD_PAYLOAD"));
        assert!(message(&done).contains("field merge"), "{}", message(&done));

        // A kind that splits, whose merge entry has no shard results: the
        // entry is no merge of a finished split. Redis out of reach is
        // another matter: retried.
        let params = msgpack::encode(&tandem_shared::kind::builtin::SplitSumParams {
            n: 10,
            block: 5,
            block_ms: 0,
            fail_block: None,
        })
        .unwrap();
        let mut merge = entry("split_sum", params.clone(), 1);
        merge.split = Some(SplitRole::Merge { count: 2 });
        let missing = PartsError::Missing("shard 0 of 2 has no result".into());
        let done = execute(merge.clone(), Plan::Merge(Err(missing))).await;
        assert_eq!(error_code(&done), Some("BAD_PAYLOAD"));
        assert_eq!(done.disposition, Disposition::Dead);
        let unreachable = PartsError::Unreachable("connection refused".into());
        let done = execute(merge, Plan::Merge(Err(unreachable))).await;
        assert_eq!(error_code(&done), Some("HANDLER_ERROR"));
        assert!(matches!(done.disposition, Disposition::Retry { .. }));

        // A forged shard of a kind that splits: its params are no shard's.
        let mut shard = entry("split_sum", params, 1);
        shard.split = Some(SplitRole::Shard {
            parent: TaskId::new(),
            index: 0,
            count: 1,
        });
        let done = execute(shard, WHOLE).await;
        assert_eq!(error_code(&done), Some("BAD_PAYLOAD"));
        assert!(
            message(&done).contains("not a shard's"),
            "{}",
            message(&done)
        );

        // A kind the worker does not run at all stays unknown.
        let mut unknown = entry("teleport", echo, 1);
        unknown.split = Some(SplitRole::Merge { count: 1 });
        let done = execute(unknown, Plan::Merge(Ok(vec![]))).await;
        assert_eq!(error_code(&done), Some("UNKNOWN_KIND"));
    }

    #[test]
    fn backoff_doubles_with_jitter_and_a_cap() {
        let backoff = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_millis(1_000),
        };
        for (attempt, full) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1_000),
            (40, 1_000),
        ] {
            assert_eq!(backoff.ceiling(attempt), Duration::from_millis(full));
            for _ in 0..50 {
                let delay = backoff.delay(attempt).as_millis() as u64;
                assert!(
                    (full / 2..=full).contains(&delay),
                    "attempt {attempt}: {delay} ms"
                );
            }
        }
        let spread: std::collections::HashSet<_> = (0..50).map(|_| backoff.delay(4)).collect();
        assert!(spread.len() > 5, "jitter spreads retries: {spread:?}");
    }

    #[tokio::test]
    async fn a_kind_without_a_cpu_path_fails_on_a_cpu_worker_when_no_gpu_can_take_it() {
        let mut exec = executor();
        exec.kinds.add_test_kinds();
        let params = msgpack::encode(&tandem_shared::kind::builtin::SleepParams { ms: 1 }).unwrap();
        let mut task = entry("gpu_only", params, 1);
        task.memory_bytes = 1 << 30;
        let fleet = |gpu_budget| {
            Arc::new(Fleet {
                gpu_budget,
                gpu_devices: vec!["GPU-a".into()],
            })
        };
        let done = exec
            .execute(
                task.clone(),
                "1-0".into(),
                CancellationToken::new(),
                WHOLE,
                fleet(0),
            )
            .await
            .unwrap();
        assert_eq!(done.disposition, Disposition::Dead);
        assert_eq!(error_code(&done), Some("INSUFFICIENT_GPU_MEMORY"));
        // A live GPU with room: left for it, not failed.
        let done = exec
            .execute(
                task,
                "1-0".into(),
                CancellationToken::new(),
                WHOLE,
                fleet(8 << 30),
            )
            .await
            .unwrap();
        assert!(matches!(done.disposition, Disposition::HandBack { .. }));
    }
}
