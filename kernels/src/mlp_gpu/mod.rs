//! The MLP on the GPU: cuBLAS SGEMM for the layers, the kernels of
//! `cuda/mlp.cu` for what lies between them, the model resident on the
//! device between calls.
//!
//! [`GpuMlp::upload`] copies a model's parameters to the device once; every
//! [`GpuMlp::forward`] after that moves only its inputs and outputs. The
//! parameters live in one flat buffer, layer by layer `[W0, b0, W1, b1,
//! ...]`, so the gradients and the optimiser state share its layout and one
//! launch updates them all.
//!
//! Row-major data through column-major cuBLAS: a row-major `r x c` matrix
//! is the column-major `c x r` matrix, its transpose. So `Y = X W^T`
//! (`X` batch x inputs, `W` outputs x inputs, both row-major) is computed as
//! the column-major `Y^T = W X^T`: `W`'s buffer read transposed, `X`'s as
//! it is. The backward products follow the same rule (see `Gemm`).
//!
//! cuBLAS's FP32 GEMM (default math mode: no TF32) sums in its own order,
//! so results differ from the CPU twin's by rounding (well under 1e-4
//! relative); on one GPU model they are the same on every run.
//!
//! Training keeps the training set on the device, shuffles on the host
//! with the CPU twin's seeded order ([`crate::mlp::epoch_order`]), uploads
//! the order once per epoch and gathers each mini-batch on the device. The
//! per-step losses stay on the device until the epoch ends.

mod device;
mod gemm;
mod step;
mod train;

use std::sync::{Arc, Mutex};

use cudarc::cublas::CudaBlas;
use cudarc::cublas::sys::cublasStatus_t;

use self::device::{DeviceModel, Kernels, Workspace, ensure_workspace, layout};
use self::train::Training;
use crate::driver::{DeviceError, Fault};
use crate::mlp::{Layer, Mlp, MlpError};
use crate::runtime::{Gpu, Source};

pub const SOURCE: Source = Source {
    module: "mlp",
    code: include_str!("../../cuda/mlp.cu"),
    kernels: &[
        "mlp_normalize",
        "mlp_bias_activation",
        "mlp_mse_gradient",
        "mlp_activation_backward",
        "mlp_column_sums",
        "mlp_sgd",
        "mlp_adam",
        "mlp_gather_rows",
    ],
};

/// Threads per block of the element-wise kernels.
const THREADS: u32 = 256;

/// Why the GPU path could not run a request.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GpuMlpError {
    /// The model or the data are malformed, as the CPU twin would say: the
    /// same request fails on any device.
    #[error(transparent)]
    Invalid(#[from] MlpError),
    /// A dimension beyond what one cuBLAS call takes (`i32`); the CPU twin
    /// can still run it.
    #[error("too large for the GPU path: {0}")]
    TooLarge(String),
    /// The model was uploaded to another GPU than the one passed.
    #[error("the model lives on another GPU than GPU {0}")]
    WrongGpu(u32),
    /// The device failed (or has no room); the CPU twin may still run it.
    #[error(transparent)]
    Device(#[from] DeviceError),
}

/// What a cuBLAS status means for the device, as [`crate::driver::classify`]
/// says for driver errors. cuBLAS reports a poisoned context or a lost GPU
/// as `CUBLAS_STATUS_EXECUTION_FAILED` (its kernel did not run) or
/// `CUBLAS_STATUS_INTERNAL_ERROR` (its own copies or launches failed). The
/// MLP path validates every dimension before a call (so `INVALID_VALUE`
/// is what a bad argument gives), which leaves a failed device as the cause
/// of those two: they mark the device failed rather than only failing the
/// task, as the driver's sticky errors do.
pub fn classify_blas(status: cublasStatus_t) -> Fault {
    match status {
        cublasStatus_t::CUBLAS_STATUS_ALLOC_FAILED => Fault::OutOfMemory,
        cublasStatus_t::CUBLAS_STATUS_EXECUTION_FAILED
        | cublasStatus_t::CUBLAS_STATUS_INTERNAL_ERROR => Fault::Sticky,
        _ => Fault::Other,
    }
}

fn blas_error(err: cudarc::cublas::result::CublasError) -> DeviceError {
    DeviceError {
        fault: classify_blas(err.0),
        message: format!("cuBLAS: {err}"),
    }
}

/// The cuBLAS handle on `gpu`'s stream, in FP32 math (no TF32): the one
/// the `Gpu` holds, created on the first call and shared by every
/// [`GpuMlp`] on that GPU after it (a handle created and destroyed per
/// model would synchronise the device each time). Fails with "cuBLAS not
/// found" when libcublas is not installed, so the caller can fall back to
/// the CPU; a failed creation is tried again on the next call.
pub fn cublas(gpu: &Gpu) -> Result<Arc<CudaBlas>, DeviceError> {
    let mut slot = match gpu.blas_slot().lock() {
        Ok(slot) => slot,
        // Only an `Option` is behind the lock: still sound after a panic.
        Err(poisoned) => poisoned.into_inner(),
    };
    if let Some(blas) = slot.as_ref() {
        return Ok(Arc::clone(blas));
    }
    let blas = new_handle(gpu)?;
    *slot = Some(Arc::clone(&blas));
    Ok(blas)
}

/// Why cuBLAS cannot be used on this machine, or `None` when it can be
/// loaded: what the GPU tests and `bench_mlp` print when they skip.
pub fn cublas_missing() -> Option<String> {
    // SAFETY: only tries to open the library by its usual names.
    #[allow(unsafe_code)]
    if unsafe { cudarc::cublas::sys::is_culib_present() } {
        None
    } else {
        Some("no libcublas.so found by the dynamic loader (LD_LIBRARY_PATH)".into())
    }
}

/// [`cublas`] for a model's upload: when cuBLAS is missing, the error
/// says what runs instead (`fallback`: "the MLP runs on the CPU"), so a
/// log names the model architecture it was for.
pub fn cublas_for(gpu: &Gpu, fallback: &str) -> Result<Arc<CudaBlas>, DeviceError> {
    cublas(gpu).map_err(|err| with_fallback(err, fallback))
}

/// A "cuBLAS not found" error with what runs instead appended; any other
/// error as it is.
fn with_fallback(mut err: DeviceError, fallback: &str) -> DeviceError {
    if err.message.starts_with(CUBLAS_NOT_FOUND) {
        err.message = format!("{}; {fallback}", err.message);
    }
    err
}

/// How the error of [`cublas`] starts when there is no usable libcublas
/// (rather than a failing device).
pub const CUBLAS_NOT_FOUND: &str = "cuBLAS not found";

fn new_handle(gpu: &Gpu) -> Result<Arc<CudaBlas>, DeviceError> {
    let not_found = |why: &str| DeviceError {
        fault: Fault::Other,
        message: format!("{CUBLAS_NOT_FOUND}: {why}"),
    };
    if let Some(why) = cublas_missing() {
        return Err(not_found(&why));
    }
    // cudarc's loader panics when the library lacks a function it binds.
    let stream = Arc::clone(gpu.stream());
    let blas = std::panic::catch_unwind(move || CudaBlas::new(stream))
        .map_err(|_| not_found("the libcublas found is unusable (a function is missing)"))?
        .map_err(blas_error)?;
    // SAFETY: the handle is live; the mode is a valid enum value.
    #[allow(unsafe_code)]
    unsafe {
        cudarc::cublas::sys::cublasSetMathMode(
            *blas.handle(),
            cudarc::cublas::sys::cublasMath_t::CUBLAS_DEFAULT_MATH,
        )
    }
    .result()
    .map_err(blas_error)?;
    Ok(Arc::new(blas))
}

/// Checks what the CPU twin checks ([`Mlp::check`]) and that every width
/// fits a cuBLAS dimension.
fn validate(mlp: &Mlp) -> Result<(), GpuMlpError> {
    mlp.check()?;
    match mlp
        .layers
        .iter()
        .position(|l| i32::try_from(l.inputs).is_err() || i32::try_from(l.outputs).is_err())
    {
        Some(l) => Err(GpuMlpError::TooLarge(format!(
            "layer {l} is {} x {}; cuBLAS takes at most {} a side",
            mlp.layers[l].outputs,
            mlp.layers[l].inputs,
            i32::MAX
        ))),
        None => Ok(()),
    }
}

/// Checks that `values` holds `rows` rows of `width` (the CPU twin's
/// error), and that `rows` fits a cuBLAS dimension.
fn check_rows(
    what: &'static str,
    values: &[f32],
    rows: usize,
    width: usize,
) -> Result<(), GpuMlpError> {
    let expected = rows.saturating_mul(width);
    if values.len() != expected {
        return Err(MlpError::BadLength {
            what,
            expected,
            rows,
            width,
            got: values.len(),
        }
        .into());
    }
    if i32::try_from(rows).is_err() {
        return Err(GpuMlpError::TooLarge(format!(
            "{rows} rows of {what}; cuBLAS takes at most {} a call",
            i32::MAX
        )));
    }
    Ok(())
}

/// An MLP resident on one GPU.
///
/// Upload once, then run [`GpuMlp::forward`] as often as needed (from
/// several threads too: calls take turns on the workspace) or train it with
/// [`GpuMlp::train`] and take the new weights with [`GpuMlp::download`].
pub struct GpuMlp {
    model: DeviceModel,
    /// Forward buffers sized for the largest batch seen; a smaller batch
    /// reuses them.
    workspace: Mutex<Option<Workspace>>,
    /// Training buffers and optimiser state, from the first training step
    /// until [`GpuMlp::release_training`]; the optimiser's moments carry
    /// over between [`GpuMlp::train_step`] calls, as the CPU twin's
    /// `OptimizerState` does.
    training: Option<Training>,
}

impl std::fmt::Debug for GpuMlp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuMlp")
            .field(
                "layers",
                &self
                    .model
                    .slots
                    .iter()
                    .map(|s| (s.inputs, s.outputs))
                    .collect::<Vec<_>>(),
            )
            .field("activation", &self.model.activation)
            .field("device_bytes", &self.device_bytes())
            .finish()
    }
}

impl GpuMlp {
    /// Uploads `mlp` to `gpu`, with the GPU's shared cuBLAS handle
    /// ([`cublas`]).
    pub fn upload(gpu: &Gpu, mlp: &Mlp) -> Result<Self, GpuMlpError> {
        Self::upload_with(gpu, cublas_for(gpu, "the MLP runs on the CPU")?, mlp)
    }

    /// Uploads `mlp` to `gpu` with `blas`, which must be a handle on
    /// `gpu`'s stream ([`cublas`] gives the GPU's own).
    pub fn upload_with(gpu: &Gpu, blas: Arc<CudaBlas>, mlp: &Mlp) -> Result<Self, GpuMlpError> {
        validate(mlp)?;
        let stream = Arc::clone(gpu.stream());
        let (slots, total) = layout(mlp);
        let mut flat = Vec::with_capacity(total);
        for layer in &mlp.layers {
            flat.extend_from_slice(&layer.weight);
            flat.extend_from_slice(&layer.bias);
        }
        let model = DeviceModel {
            kernels: Kernels::load(gpu)?,
            activation: mlp.activation,
            params: stream.clone_htod(&flat).map_err(DeviceError::from)?,
            mean: stream
                .clone_htod(&mlp.input_mean)
                .map_err(DeviceError::from)?,
            stdev: stream
                .clone_htod(&mlp.input_std)
                .map_err(DeviceError::from)?,
            slots,
            blas,
            stream,
        };
        Ok(Self {
            model,
            workspace: Mutex::new(None),
            training: None,
        })
    }

    pub fn inputs(&self) -> usize {
        self.model.inputs()
    }

    pub fn outputs(&self) -> usize {
        self.model.outputs()
    }

    /// Device memory this model holds now: parameters, normalisation,
    /// forward workspace and training state (not cuBLAS's own workspace,
    /// which belongs to the handle).
    pub fn device_bytes(&self) -> u64 {
        let fixed = 4 * (self.model.params.len() + self.model.mean.len() + self.model.stdev.len());
        let workspace = match self.workspace.lock() {
            Ok(guard) => guard.as_ref().map_or(0, Workspace::bytes),
            Err(poisoned) => poisoned.into_inner().as_ref().map_or(0, Workspace::bytes),
        };
        fixed as u64 + workspace + self.training.as_ref().map_or(0, Training::bytes)
    }

    /// Device bytes a forward of `batch` rows needs beyond the parameters:
    /// what the ledger reserves before a task runs.
    pub fn forward_bytes(mlp: &Mlp, batch: usize) -> u64 {
        let widths: usize = mlp.inputs() * 2 + mlp.layers.iter().map(|l| l.outputs).sum::<usize>();
        4 * (batch as u64) * widths as u64
    }

    /// Device bytes [`GpuMlp::train`] on `samples` samples in batches of
    /// `batch` needs beyond the parameters (with Adam, the larger case).
    pub fn train_bytes(mlp: &Mlp, samples: usize, batch: usize) -> u64 {
        let params = mlp.parameter_bytes() / 4;
        let widest = mlp
            .layers
            .iter()
            .map(|l| l.inputs.max(l.outputs))
            .max()
            .unwrap_or(0) as u64;
        let outputs = mlp.outputs() as u64;
        let (samples, batch) = (samples as u64, batch as u64);
        let data = samples * (mlp.inputs() as u64 + outputs + 1);
        let steps = samples.div_ceil(batch.max(1));
        let per_batch = batch * (2 * widest + 2 * outputs);
        Self::forward_bytes(mlp, batch as usize)
            + 4 * (data + per_batch + steps * outputs + 3 * params)
    }

    /// Frees the forward workspace (the next forward allocates again).
    pub fn release_workspace(&mut self) {
        *self.workspace_mut() = None;
    }

    /// Frees the training buffers and the optimiser's state.
    pub fn release_training(&mut self) {
        self.training = None;
    }

    /// Zeroes the optimiser's moments and step count: the next
    /// [`GpuMlp::train_step`] is a first step. [`GpuMlp::train`] does this
    /// itself.
    pub fn reset_optimizer(&mut self) {
        // New state is allocated on the next step; dropping it is enough.
        self.training = None;
    }

    fn workspace_mut(&mut self) -> &mut Option<Workspace> {
        // A panic while the lock was held leaves buffers that are only
        // overwritten by the next call: still usable.
        match self.workspace.get_mut() {
            Ok(ws) => ws,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The network's outputs for `batch` rows of inputs (row-major,
    /// `batch x inputs`), `batch x outputs` row-major.
    pub fn forward(
        &self,
        gpu: &Gpu,
        inputs: &[f32],
        batch: usize,
    ) -> Result<Vec<f32>, GpuMlpError> {
        check_rows("inputs", inputs, batch, self.inputs())?;
        self.check_gpu(gpu)?;
        if batch == 0 {
            return Ok(Vec::new());
        }
        let mut guard = match self.workspace.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let model = &self.model;
        let ws = ensure_workspace(model, &mut guard, batch)?;
        model
            .stream
            .memcpy_htod(inputs, &mut ws.raw.slice_mut(..inputs.len()))
            .map_err(DeviceError::from)?;
        let timer = gpu.kernel_timer()?;
        model.forward(ws, batch)?;
        timer.finish()?;
        let outputs = batch * model.outputs();
        let mut out = vec![0.0f32; outputs];
        model
            .stream
            .memcpy_dtoh(
                &ws.activations[model.slots.len()].slice(..outputs),
                &mut out,
            )
            .map_err(DeviceError::from)?;
        model.stream.synchronize().map_err(DeviceError::from)?;
        Ok(out)
    }

    /// The model with its current parameters, back on the host.
    pub fn download(&self) -> Result<Mlp, GpuMlpError> {
        let model = &self.model;
        let flat = model
            .stream
            .clone_dtoh(&model.params)
            .map_err(DeviceError::from)?;
        let input_mean = model
            .stream
            .clone_dtoh(&model.mean)
            .map_err(DeviceError::from)?;
        let input_std = model
            .stream
            .clone_dtoh(&model.stdev)
            .map_err(DeviceError::from)?;
        model.stream.synchronize().map_err(DeviceError::from)?;
        let layers = model
            .slots
            .iter()
            .map(|slot| Layer {
                inputs: slot.inputs,
                outputs: slot.outputs,
                weight: flat[slot.weight.clone()].to_vec(),
                bias: flat[slot.bias.clone()].to_vec(),
            })
            .collect();
        Ok(Mlp {
            layers,
            activation: model.activation,
            input_mean,
            input_std,
        })
    }

    /// The model lives on the stream of the GPU it was uploaded to; another
    /// GPU's handle would launch its kernels in the wrong context.
    fn check_gpu(&self, gpu: &Gpu) -> Result<(), GpuMlpError> {
        if Arc::ptr_eq(gpu.stream(), &self.model.stream) {
            Ok(())
        } else {
            Err(GpuMlpError::WrongGpu(gpu.ordinal))
        }
    }
}

#[cfg(test)]
mod tests;

/// Needs a GPU with libcublas: `cargo test -p tandem-kernels --features
/// gpu-tests` (scripts/gpu-check). The CPU twin is the reference.
#[cfg(all(test, feature = "gpu-tests"))]
mod gpu_tests;
