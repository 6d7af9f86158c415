//! Compute kinds: a CPU twin and a GPU path ([`Compute`]), run on a
//! blocking thread, on the worker's GPU when the kind's kernels loaded
//! there, else on the CPU (the async runtime never waits on a kernel).
//! [`KindTable::register_compute`] turns a kind into a handler; a kind whose
//! work divides into blocks also implements [`Split`] (see `split`).
//!
//! [`KindTable::register_compute`]: crate::KindTable::register_compute
//! [`Split`]: crate::split::Split

use std::sync::Arc;

use tandem_kernels::runtime::Gpu;
use tandem_shared::kind::KindSpec;

use crate::context::{Stop, TaskContext, blocking};
use crate::error::TaskError;
use crate::handler::Handler;

/// The parameters of a compute kind's spec.
pub type Params<C> = <<C as Compute>::Spec as KindSpec>::Params;
/// The output of a compute kind's spec.
pub type Output<C> = <<C as Compute>::Spec as KindSpec>::Output;

/// A kind that computes: a CPU twin, and a GPU path when it has kernels.
pub trait Compute: Send + Sync + 'static {
    type Spec: KindSpec;
    /// The kernel module (`tandem_kernels::SOURCES`) the GPU path needs;
    /// `None` for a CPU-only kind.
    const MODULE: Option<&'static str>;

    /// The CPU twin. Deterministic: the same parameters give the same
    /// result, bit for bit, whatever the number of threads. A long one
    /// checks `stop` between steps.
    fn cpu(&self, params: &Params<Self>, stop: &Stop) -> Result<Output<Self>, TaskError>;

    /// The GPU path; it agrees with the CPU twin within the kind's stated
    /// tolerance.
    fn gpu(
        &self,
        gpu: &Gpu,
        params: &Params<Self>,
        stop: &Stop,
    ) -> Result<Output<Self>, TaskError> {
        let _ = gpu;
        self.cpu(params, stop)
    }
}

/// The GPU to use for a kind: the worker's, when the kind's module loaded.
pub(crate) fn gpu_for(module: Option<&str>, ctx: &TaskContext) -> Option<Arc<Gpu>> {
    let module = module?;
    ctx.gpu.clone().filter(|gpu| gpu.has(module))
}

/// A [`Compute`] kind as a [`Handler`].
pub(crate) struct Computing<C>(pub Arc<C>);

impl<C: Compute> Handler for Computing<C> {
    type Spec = C::Spec;

    async fn run(&self, params: Params<C>, ctx: TaskContext) -> Result<Output<C>, TaskError> {
        let kind = Arc::clone(&self.0);
        let gpu = gpu_for(C::MODULE, &ctx);
        blocking(&ctx, move |stop| match gpu {
            Some(gpu) => kind.gpu(&gpu, &params, stop),
            None => kind.cpu(&params, stop),
        })
        .await
    }
}
