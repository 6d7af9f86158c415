//! How task kinds plug into a worker: the [`Handler`] trait a kind
//! implements, and its type-erased form the [`KindTable`] holds.
//!
//! A handler pairs a [`KindSpec`] (name, class, parameter and output types,
//! validation, memory estimate; shared with producers) with the code that
//! runs it. The erased form decodes and validates MessagePack parameters
//! and encodes the output, so the worker can hold handlers of every kind in
//! one map.
//!
//! [`KindTable`]: crate::KindTable

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tandem_shared::kind::KindSpec;
use tandem_shared::{Class, ErrorCode, msgpack};

use crate::context::TaskContext;
use crate::error::{TaskError, decode_error};

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
pub(crate) trait ErasedHandler: Send + Sync {
    fn class(&self) -> Class;
    fn cpu_path(&self) -> bool;
    fn prepare(self: Arc<Self>, params: &[u8], ctx: TaskContext) -> Result<Prepared, TaskError>;
}

pub(crate) struct Typed<H>(pub H);

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
