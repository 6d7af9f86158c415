//! The transformer on the GPU: cuBLAS GEMMs (strided-batched over the
//! windows for the attention scores and contexts, one call per head) and
//! the kernels of `cuda/transformer.cu` for what lies between them, the
//! model resident on the device between calls. The CPU twin
//! ([`crate::transformer::forward_cpu`]) is the reference.
//!
//! [`GpuTransformer::upload`] copies the parameters (and the sinusoidal
//! table, when the model uses one) to the device once; every
//! [`GpuTransformer::forward`] after that moves only its inputs and outputs.
//! The forward pass is a host-built list of operations (`plan.rs`) that the
//! device runs in order (`device.rs`); every operation is checked against
//! its buffers before it is launched.
//!
//! A batch larger than the workspace is cut: the windows go through in
//! runs of at most [`GpuTransformer::max_batch`] (or of what the device had
//! room for, the workspace halving until it fits), and the outputs are the
//! same as in one pass, since windows do not interact.
//!
//! cuBLAS's FP32 GEMM (default math mode: no TF32, the shared handle of
//! [`crate::mlp_gpu::cublas`]) and the warp reductions sum in their own
//! order, so results differ from the CPU twin's by rounding (under 1e-4
//! relative); on one GPU model they are the same on every run.
//!
//! Training runs on the GPU too ([`GpuTransformer::train_until`],
//! `train.rs`): a forward that keeps every layer's activations, the
//! backward as a plan like the forward's (`backward.rs`: the GEMMs'
//! gradients in cuBLAS, attention's strided-batched, the LayerNorm, GELU,
//! softmax and pooling backwards in `cuda/transformer.cu`), then Adam or
//! SGD on the device; [`GpuTransformer::train_bytes`] is what it holds. It
//! takes the CPU twin's steps ([`crate::transformer::train_cpu_until`])
//! within rounding.

mod backward;
mod device;
mod plan;
mod train;

use std::sync::{Arc, Mutex};

use cudarc::cublas::CudaBlas;

use self::device::{DeviceModel, Kernels, Workspace, ensure_workspace};
use self::plan::{OUT, RAW, chunks, forward_plan, per_window, table_floats};
use crate::driver::DeviceError;
use crate::mlp_gpu::cublas_for;
use crate::runtime::{Gpu, Source};
use crate::transformer::{Offsets, Positions, Transformer, TransformerError, sinusoidal};

use crate::transformer::Config;

pub const SOURCE: Source = Source {
    module: "transformer",
    code: include_str!("../../cuda/transformer.cu"),
    kernels: &[
        "tf_normalize",
        "tf_bias_positions",
        "tf_bias_add",
        "tf_bias_gelu",
        "tf_layer_norm",
        "tf_softmax",
        "tf_pool",
        "tf_gelu",
        "tf_gelu_backward",
        "tf_ln_stats",
        "tf_ln_backward",
        "tf_ln_gain_grad",
        "tf_column_sums",
        "tf_softmax_backward",
        "tf_pool_backward",
        "tf_sgd",
        "tf_adam",
    ],
};

/// Threads per block of the element-wise kernels.
const THREADS: u32 = 256;

/// Why the GPU path could not run a request.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GpuTransformerError {
    /// The model or the data are malformed, as the CPU twin would say: the
    /// same request fails on any device.
    #[error(transparent)]
    Invalid(#[from] TransformerError),
    /// A dimension beyond what one cuBLAS call takes (`i32`); the CPU twin
    /// can still run it.
    #[error("transformer too large for the GPU path: {0}")]
    TooLarge(String),
    /// The model was uploaded to another GPU than the one passed.
    #[error("the transformer lives on another GPU than GPU {0}")]
    WrongGpu(u32),
    /// The device failed (or has no room); the CPU twin may still run it.
    #[error(transparent)]
    Device(#[from] DeviceError),
}

/// Checks what the CPU twin checks and that one window's largest GEMM
/// operand (the rows of a batch of one window, the widest layer) fits a
/// cuBLAS dimension; larger batches are cut to fit (see
/// [`GpuTransformer::max_batch`]).
fn validate(model: &Transformer) -> Result<(), GpuTransformerError> {
    model.check()?;
    let c = &model.config;
    let widest = [c.window, c.features, 3 * c.d_model, c.ff, c.outputs]
        .into_iter()
        .max()
        .unwrap_or(0);
    if i32::try_from(widest).is_err() || i32::try_from(c.heads * c.window * c.window).is_err() {
        return Err(GpuTransformerError::TooLarge(format!(
            "a dimension of {c:?} exceeds cuBLAS's {}",
            i32::MAX
        )));
    }
    Ok(())
}

/// A transformer resident on one GPU.
///
/// Upload once, then run [`GpuTransformer::forward`] as often as needed
/// (from several threads too: calls take turns on the workspace), and take
/// the parameters back with [`GpuTransformer::download`].
pub struct GpuTransformer {
    model: DeviceModel,
    /// Forward buffers sized for the largest run seen (at most
    /// `max_batch` windows); a smaller run reuses them.
    workspace: Mutex<Option<Workspace>>,
    /// The most windows one pass takes (a training run too); a larger
    /// batch is cut.
    max_batch: usize,
    /// The optimiser's state and the training buffers, from the first
    /// training step until [`GpuTransformer::release_training`].
    training: Option<train::Training>,
}

impl std::fmt::Debug for GpuTransformer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuTransformer")
            .field("config", &self.model.config)
            .field("max_batch", &self.max_batch)
            .field("device_bytes", &self.device_bytes())
            .finish()
    }
}

impl GpuTransformer {
    /// Uploads `model` to `gpu`, with the GPU's shared cuBLAS handle
    /// ([`crate::mlp_gpu::cublas`]).
    pub fn upload(gpu: &Gpu, model: &Transformer) -> Result<Self, GpuTransformerError> {
        Self::upload_with(
            gpu,
            cublas_for(gpu, "the transformer runs on its CPU twin")?,
            model,
        )
    }

    /// Uploads `model` to `gpu` with `blas`, which must be a handle on
    /// `gpu`'s stream ([`crate::mlp_gpu::cublas`] gives the GPU's own, in FP32 math).
    pub fn upload_with(
        gpu: &Gpu,
        blas: Arc<CudaBlas>,
        model: &Transformer,
    ) -> Result<Self, GpuTransformerError> {
        validate(model)?;
        let config = model.config;
        let stream = Arc::clone(gpu.stream());
        let positions = match config.positions {
            Positions::Learned => None,
            Positions::Sinusoidal => Some(
                stream
                    .clone_htod(&sinusoidal(config.window, config.d_model))
                    .map_err(DeviceError::from)?,
            ),
        };
        let device = DeviceModel {
            kernels: Kernels::load(gpu)?,
            offsets: Offsets::new(&config),
            config,
            params: stream
                .clone_htod(&model.params)
                .map_err(DeviceError::from)?,
            positions,
            blas,
            stream,
        };
        Ok(Self {
            model: device,
            workspace: Mutex::new(None),
            max_batch: usize::MAX,
            training: None,
        })
    }

    pub fn config(&self) -> &Config {
        &self.model.config
    }

    /// The most windows one pass takes (unbounded until
    /// [`GpuTransformer::set_max_batch`]).
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// Caps one pass at `windows` windows (at least 1): a larger batch is
    /// cut into runs of that many, so its workspace stays within what the
    /// ledger booked ([`GpuTransformer::batch_that_fits`]). A larger
    /// workspace already there is freed.
    pub fn set_max_batch(&mut self, windows: usize) {
        self.max_batch = windows.max(1);
        let cap = self.max_batch;
        self.workspace_mut().take_if(|ws| ws.capacity > cap);
    }

    /// Device memory this model holds now: parameters, the position table,
    /// the forward workspace and any training state (not cuBLAS's own workspace, which belongs
    /// to the handle).
    pub fn device_bytes(&self) -> u64 {
        let fixed = self.model.params.len() + self.model.positions.as_ref().map_or(0, |p| p.len());
        let workspace = match self.workspace.lock() {
            Ok(guard) => guard.as_ref().map_or(0, Workspace::bytes),
            Err(poisoned) => poisoned.into_inner().as_ref().map_or(0, Workspace::bytes),
        };
        4 * fixed as u64 + workspace + self.training_bytes()
    }

    /// Device bytes a model of `config` needs to run `batch` windows in one
    /// pass: parameters, the position table and the workspace. What the
    /// ledger books; [`GpuTransformer::device_bytes`] says the same once
    /// such a pass ran.
    pub fn forward_bytes(config: &Config, batch: usize) -> u64 {
        let per: usize = per_window(config).iter().sum();
        config.parameter_bytes()
            + 4 * table_floats(config) as u64
            + 4 * (batch as u64).saturating_mul(per as u64)
    }

    /// The most windows of one pass whose [`GpuTransformer::forward_bytes`]
    /// fits in `bytes`: 0 when not even the parameters and one window fit.
    /// A caller with that much room sets it with
    /// [`GpuTransformer::set_max_batch`] and lets the batch be cut.
    pub fn batch_that_fits(config: &Config, bytes: u64) -> usize {
        let fixed = Self::forward_bytes(config, 0);
        let per = Self::forward_bytes(config, 1) - fixed;
        match bytes.checked_sub(fixed) {
            Some(room) if per > 0 => usize::try_from(room / per).unwrap_or(usize::MAX),
            _ => 0,
        }
    }

    /// Frees the forward workspace (the next forward allocates again).
    pub fn release_workspace(&mut self) {
        *self.workspace_mut() = None;
    }

    /// [`GpuTransformer::release_workspace`] on a shared model: waits for
    /// a forward in flight on another thread (they take turns on the
    /// workspace), then frees it. The ledger books a forward's activations
    /// only while its task runs, so a worker frees them when the task is
    /// done rather than leave memory the ledger counts as free held by an
    /// idle model.
    pub fn free_workspace(&self) {
        let mut guard = match self.workspace.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        *guard = None;
    }

    fn workspace_mut(&mut self) -> &mut Option<Workspace> {
        // A panic while the lock was held leaves buffers that are only
        // overwritten by the next call: still usable.
        match self.workspace.get_mut() {
            Ok(ws) => ws,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The outputs (`windows x outputs`, row-major) for `windows` windows
    /// of inputs (`windows x window x features`, row-major), as
    /// [`crate::transformer::forward_cpu`].
    pub fn forward(
        &self,
        gpu: &Gpu,
        inputs: &[f32],
        windows: usize,
    ) -> Result<Vec<f32>, GpuTransformerError> {
        let config = self.model.config;
        let (per, outputs) = (config.window_floats(), config.outputs);
        crate::transformer::check_length("inputs", inputs, windows, per)?;
        self.check_gpu(gpu)?;
        if windows == 0 {
            return Ok(Vec::new());
        }
        let mut guard = match self.workspace.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let model = &self.model;
        // One pass's rows (windows x window) are one GEMM dimension: i32.
        let limit = self.max_batch.min(i32::MAX as usize / config.window.max(1));
        let ws = ensure_workspace(model, &mut guard, windows.min(limit))?;
        let capacity = ws.capacity.min(limit);
        let mut out = vec![0.0f32; windows * outputs];
        let timer = gpu.kernel_timer()?;
        let mut plans: Vec<(usize, Vec<plan::Op>)> = Vec::new();
        for run in chunks(windows, capacity) {
            let count = run.len();
            let values = &inputs[run.start * per..run.end * per];
            model
                .stream
                .memcpy_htod(values, &mut ws.buffers[RAW].slice_mut(..values.len()))
                .map_err(DeviceError::from)?;
            // At most two run lengths: the full one and the remainder.
            if !plans.iter().any(|(n, _)| *n == count) {
                plans.push((count, forward_plan(&config, &model.offsets, count)));
            }
            if let Some((_, ops)) = plans.iter().find(|(n, _)| *n == count) {
                model.run(ws, ops)?;
            }
            model
                .stream
                .memcpy_dtoh(
                    &ws.buffers[OUT].slice(..count * outputs),
                    &mut out[run.start * outputs..run.end * outputs],
                )
                .map_err(DeviceError::from)?;
        }
        timer.finish()?;
        model.stream.synchronize().map_err(DeviceError::from)?;
        Ok(out)
    }

    /// The model with its current parameters, back on the host.
    pub fn download(&self) -> Result<Transformer, GpuTransformerError> {
        let params = self
            .model
            .stream
            .clone_dtoh(&self.model.params)
            .map_err(DeviceError::from)?;
        self.model.stream.synchronize().map_err(DeviceError::from)?;
        Ok(Transformer {
            config: self.model.config,
            params,
        })
    }

    /// The model lives on the stream of the GPU it was uploaded to; another
    /// GPU's handle would launch its kernels in the wrong context.
    fn check_gpu(&self, gpu: &Gpu) -> Result<(), GpuTransformerError> {
        if Arc::ptr_eq(gpu.stream(), &self.model.stream) {
            Ok(())
        } else {
            Err(GpuTransformerError::WrongGpu(gpu.ordinal))
        }
    }
}

#[cfg(test)]
mod tests;

/// Needs a GPU with libcublas: `cargo test -p tandem-kernels --features
/// gpu-tests` (scripts/gpu-check). The CPU twin is the reference.
#[cfg(all(test, feature = "gpu-tests"))]
mod gpu_tests;
