//! How task kinds plug into a worker: the [`Handler`] trait and the
//! [`KindTable`] that maps kind names to handlers.
//!
//! A handler pairs a [`KindSpec`] (name, class, parameter and output types,
//! validation, memory estimate; shared with producers) with the code that
//! runs it. The table erases the types so the worker can hold handlers of
//! every kind in one map and feed them MessagePack.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tandem_shared::kind::KindSpec;
use tandem_shared::{Class, ErrorCode, TaskId, msgpack};
use tokio_util::sync::CancellationToken;

/// Whether a failed attempt is worth another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Retry after the worker's exponential backoff with jitter, while
    /// attempts remain.
    Backoff,
    /// Retry after this delay, while attempts remain.
    After(std::time::Duration),
    /// Never retry: the same input fails the same way (bad parameters, a
    /// deliberate refusal). The task goes to the dead-letter stream.
    Never,
}

/// Why a task did not produce a result: a code users see, a message, and
/// whether to try again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct TaskError {
    pub code: ErrorCode,
    pub message: String,
    pub retry: Retry,
}

impl TaskError {
    /// An error worth retrying with backoff (a transient condition).
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry: Retry::Backoff,
        }
    }

    /// An error no retry can fix.
    pub fn fatal(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            retry: Retry::Never,
            ..Self::new(code, message)
        }
    }

    /// The device is unusable: a CUDA error that poisons the context
    /// (illegal address, launch failure). A GPU worker marks its device
    /// failed, hands every running task back and exits, for its fleet to
    /// restart it; the task is not charged an attempt.
    pub fn device_failed(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::DEVICE_FAILED, message)
    }

    /// The device ran out of memory: a GPU worker hands the task back for a
    /// device with more room (or the CPU worker) and goes on.
    pub fn out_of_memory(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::DEVICE_OUT_OF_MEMORY, message)
    }

    /// An error worth retrying after `delay` (say, a rate limit's reset).
    pub fn retry_after(
        code: ErrorCode,
        message: impl Into<String>,
        delay: std::time::Duration,
    ) -> Self {
        Self {
            retry: Retry::After(delay),
            ..Self::new(code, message)
        }
    }
}

/// A CUDA error, by what it means for the device.
impl From<tandem_kernels::driver::DeviceError> for TaskError {
    fn from(err: tandem_kernels::driver::DeviceError) -> Self {
        use tandem_kernels::driver::Fault;
        match err.fault {
            Fault::Sticky => TaskError::device_failed(err.message),
            Fault::OutOfMemory => TaskError::out_of_memory(err.message),
            Fault::Other => TaskError::new(ErrorCode::HANDLER_ERROR, err.message),
        }
    }
}

/// An MLP on the GPU failed: bad input fails for good, a device error by
/// what it means for the device.
impl From<tandem_kernels::mlp_gpu::GpuMlpError> for TaskError {
    fn from(err: tandem_kernels::mlp_gpu::GpuMlpError) -> Self {
        use tandem_kernels::mlp_gpu::GpuMlpError;
        match err {
            GpuMlpError::Device(err) => err.into(),
            GpuMlpError::Invalid(err) => TaskError::fatal(ErrorCode::BAD_PARAMS, err.to_string()),
            other => TaskError::fatal(ErrorCode::HANDLER_ERROR, other.to_string()),
        }
    }
}

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
    pub models: Option<Arc<crate::model_cache::ModelCache>>,
    cancel: CancellationToken,
    /// The task's computations on blocking threads, so that a cancelled
    /// task holds its slot (and its device memory) until they stopped.
    work: crate::compute::Work,
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
            work: crate::compute::Work::default(),
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
        models: Option<Arc<crate::model_cache::ModelCache>>,
    ) -> Self {
        self.priority = priority;
        self.models = models;
        self
    }

    /// The model cache, or why there is none.
    pub fn model_cache(&self) -> Result<&crate::model_cache::ModelCache, TaskError> {
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
    pub fn stop(&self) -> crate::compute::Stop {
        crate::compute::Stop::new(self.cancel.clone())
    }

    /// The task's computations on blocking threads.
    pub(crate) fn work(&self) -> &crate::compute::Work {
        &self.work
    }
}

/// Runs the tasks of one kind.
pub trait Handler: Send + Sync + 'static {
    type Spec: KindSpec;

    /// Whether the kind can run on a CPU worker. A kind that needs a GPU
    /// and meets a task too large for every live GPU fails it with
    /// `INSUFFICIENT_GPU_MEMORY` instead.
    const CPU_PATH: bool = true;

    fn run(
        &self,
        params: <Self::Spec as KindSpec>::Params,
        ctx: TaskContext,
    ) -> impl Future<Output = Result<<Self::Spec as KindSpec>::Output, TaskError>> + Send;
}

/// A task ready to run: its parameters decoded and validated.
pub type Prepared = Pin<Box<dyn Future<Output = Result<Vec<u8>, TaskError>> + Send>>;

/// A handler with its types erased.
trait ErasedHandler: Send + Sync {
    fn class(&self) -> Class;
    fn cpu_path(&self) -> bool;
    fn prepare(self: Arc<Self>, params: &[u8], ctx: TaskContext) -> Result<Prepared, TaskError>;
}

struct Typed<H>(H);

impl<H: Handler> ErasedHandler for Typed<H> {
    fn class(&self) -> Class {
        H::Spec::CLASS
    }

    fn cpu_path(&self) -> bool {
        H::CPU_PATH
    }

    fn prepare(self: Arc<Self>, params: &[u8], ctx: TaskContext) -> Result<Prepared, TaskError> {
        let params: <H::Spec as KindSpec>::Params =
            msgpack::decode_params(params).map_err(|err| decode_error(&err))?;
        H::Spec::validate(&params).map_err(|e| TaskError::fatal(ErrorCode::BAD_PARAMS, e.0))?;
        Ok(Box::pin(async move {
            let output = self.0.run(params, ctx).await?;
            msgpack::encode(&output)
                .map_err(|e| TaskError::fatal(ErrorCode::BAD_RESULT, e.to_string()))
        }))
    }
}

/// Bytes that are not one MessagePack value are a bad payload; MessagePack
/// of the wrong shape is bad parameters, named by field (`sigma: expected a
/// number, got a string ("0.2")`).
pub(crate) fn decode_error(err: &msgpack::CodecError) -> TaskError {
    let message = match err {
        msgpack::CodecError::NotMessagePack(_) => format!("params are {err}"),
        _ => err.to_string(),
    };
    TaskError::fatal(err.code(), message)
}

/// The kinds a worker can run.
#[derive(Clone, Default)]
pub struct KindTable {
    handlers: HashMap<&'static str, Arc<dyn ErasedHandler>>,
    /// The split operations of splittable kinds.
    splitters: HashMap<&'static str, Arc<dyn crate::compute::Splitter>>,
}

impl fmt::Debug for KindTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.names()).finish()
    }
}

impl KindTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// A table with the built-in kinds (`noop`, `sleep`, `echo`, `fail`)
    /// and every compute and model kind.
    pub fn with_builtins() -> Self {
        let mut kinds = Self::new();
        crate::builtin::register(&mut kinds);
        crate::kinds::register(&mut kinds);
        kinds
    }

    /// Adds the test kinds `panic`, `abort`, `gpu_only` and `split_sum`.
    pub fn add_test_kinds(&mut self) -> &mut Self {
        crate::builtin::register_test_kinds(self);
        self
    }

    /// Adds a handler; a later one for the same kind replaces the earlier.
    pub fn register<H: Handler>(&mut self, handler: H) -> &mut Self {
        self.handlers
            .insert(H::Spec::KIND, Arc::new(Typed(handler)));
        self
    }

    /// Registered kind names, sorted.
    pub fn names(&self) -> Vec<&'static str> {
        let mut kinds: Vec<_> = self.handlers.keys().copied().collect();
        kinds.sort_unstable();
        kinds
    }

    pub(crate) fn add_splitter(
        &mut self,
        kind: &'static str,
        splitter: Arc<dyn crate::compute::Splitter>,
    ) {
        self.splitters.insert(kind, splitter);
    }

    /// The split operations of `kind`, when it is splittable.
    pub(crate) fn splitter(&self, kind: &str) -> Option<Arc<dyn crate::compute::Splitter>> {
        self.splitters.get(kind).cloned()
    }

    /// Whether `kind` can run on a CPU worker (unknown kinds: yes, so they
    /// fail as unknown).
    pub fn has_cpu_path(&self, kind: &str) -> bool {
        self.handlers.get(kind).is_none_or(|h| h.cpu_path())
    }

    pub fn class_of(&self, kind: &str) -> Option<Class> {
        self.handlers.get(kind).map(|h| h.class())
    }

    /// Decodes and validates the parameters of a task of `kind`.
    pub fn prepare(
        &self,
        kind: &str,
        params: &[u8],
        ctx: TaskContext,
    ) -> Result<Prepared, TaskError> {
        let handler = self.handlers.get(kind).ok_or_else(|| {
            TaskError::fatal(
                ErrorCode::UNKNOWN_KIND,
                format!(
                    "no handler for kind {kind:?}; this worker runs {:?}",
                    self.names()
                ),
            )
        })?;
        Arc::clone(handler).prepare(params, ctx)
    }
}
