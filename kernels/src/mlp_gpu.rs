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

use std::ops::Range;
use std::sync::{Arc, Mutex};

use cudarc::cublas::sys::{cublasOperation_t, cublasStatus_t};
use cudarc::cublas::{CudaBlas, Gemm as _, GemmConfig};
use cudarc::driver::{
    CudaFunction, CudaSlice, CudaStream, CudaView, CudaViewMut, LaunchConfig, PushKernelArg,
};

use crate::driver::{DeviceError, Fault};
use crate::mlp::{Activation, Layer, Mlp, MlpError, Optimizer, TrainConfig, TrainReport};
use crate::runtime::{Gpu, Source};

pub const SOURCE: Source = Source {
    module: "mlp",
    code: include_str!("../cuda/mlp.cu"),
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

fn blas_error(err: cudarc::cublas::result::CublasError) -> DeviceError {
    let fault = match err.0 {
        cublasStatus_t::CUBLAS_STATUS_ALLOC_FAILED => Fault::OutOfMemory,
        _ => Fault::Other,
    };
    DeviceError {
        fault,
        message: format!("cuBLAS: {err}"),
    }
}

/// A cuBLAS handle on `gpu`'s stream, in FP32 math (no TF32). One per
/// device is enough: every [`GpuMlp`] on it can share it through
/// [`GpuMlp::upload_with`]. Fails with "cuBLAS not found" when libcublas
/// is not installed, so the caller can fall back to the CPU.
pub fn cublas(gpu: &Gpu) -> Result<Arc<CudaBlas>, DeviceError> {
    let not_found = |why: &str| DeviceError {
        fault: Fault::Other,
        message: format!("cuBLAS not found: {why}; the MLP runs on the CPU"),
    };
    // SAFETY: only tries to open the library by its usual names.
    #[allow(unsafe_code)]
    if !unsafe { cudarc::cublas::sys::is_culib_present() } {
        return Err(not_found("no libcublas on this machine"));
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

/// The kernels of `cuda/mlp.cu`, looked up once.
struct Kernels {
    normalize: CudaFunction,
    bias_activation: CudaFunction,
    mse_gradient: CudaFunction,
    activation_backward: CudaFunction,
    column_sums: CudaFunction,
    sgd: CudaFunction,
    adam: CudaFunction,
    gather_rows: CudaFunction,
}

impl Kernels {
    fn load(gpu: &Gpu) -> Result<Self, DeviceError> {
        let function = |name| gpu.function(SOURCE.module, name);
        Ok(Self {
            normalize: function("mlp_normalize")?,
            bias_activation: function("mlp_bias_activation")?,
            mse_gradient: function("mlp_mse_gradient")?,
            activation_backward: function("mlp_activation_backward")?,
            column_sums: function("mlp_column_sums")?,
            sgd: function("mlp_sgd")?,
            adam: function("mlp_adam")?,
            gather_rows: function("mlp_gather_rows")?,
        })
    }
}

/// The code `mlp.cu` uses for an activation (`ACT_*`).
fn activation_code(activation: Option<Activation>) -> u32 {
    match activation {
        None => 0,
        Some(Activation::Relu) => 1,
        Some(Activation::Tanh) => 2,
    }
}

/// One thread per element, [`THREADS`] per block.
fn elementwise(n: u64) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(u64::from(THREADS)) as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Where layer `l`'s parameters sit in the flat buffer, and its shape.
#[derive(Debug, Clone)]
struct LayerSlot {
    inputs: usize,
    outputs: usize,
    weight: Range<usize>,
    bias: Range<usize>,
}

/// The layers' slots and the flat buffer's length.
fn layout(mlp: &Mlp) -> (Vec<LayerSlot>, usize) {
    let mut at = 0;
    let slots = mlp
        .layers
        .iter()
        .map(|layer| {
            let weight = at..at + layer.inputs * layer.outputs;
            let bias = weight.end..weight.end + layer.outputs;
            at = bias.end;
            LayerSlot {
                inputs: layer.inputs,
                outputs: layer.outputs,
                weight,
                bias,
            }
        })
        .collect();
    (slots, at)
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

/// Checks an optimiser's constants as the CPU twin does.
fn check_optimizer(optimizer: &Optimizer) -> Result<(), MlpError> {
    let values: &[f32] = match optimizer {
        Optimizer::Sgd { lr, momentum } => &[*lr, *momentum],
        Optimizer::Adam {
            lr,
            beta1,
            beta2,
            eps,
        } => &[*lr, *beta1, *beta2, *eps],
    };
    if values.iter().all(|v| v.is_finite() && *v >= 0.0) {
        Ok(())
    } else {
        Err(MlpError::BadTraining(format!(
            "optimiser parameters must be finite and non-negative: {optimizer:?}"
        )))
    }
}

/// Adam's bias corrections `1 / (1 - b^t)` for step `t` (from 1), in f64
/// rounded to f32, as the CPU twin computes them.
fn adam_corrections(beta1: f32, beta2: f32, step: u64) -> (f32, f32) {
    let t = i32::try_from(step).unwrap_or(i32::MAX);
    let correction = |beta: f32| (1.0 / (1.0 - f64::from(beta).powi(t))) as f32;
    (correction(beta1), correction(beta2))
}

/// A column-major GEMM `C = op(A) op(B)` (alpha 1, beta 0), with the
/// buffers' lengths checked against the shapes before cuBLAS reads them.
struct Gemm {
    /// Whether A, B are read transposed.
    transpose_a: bool,
    transpose_b: bool,
    /// C is m x n; op(A) m x k; op(B) k x n.
    m: usize,
    n: usize,
    k: usize,
    lda: usize,
    ldb: usize,
    ldc: usize,
}

impl Gemm {
    /// `Y^T = W X^T`: layer forward, `Y = X W^T` row-major.
    fn forward(batch: usize, inputs: usize, outputs: usize) -> Self {
        Gemm {
            transpose_a: true,
            transpose_b: false,
            m: outputs,
            n: batch,
            k: inputs,
            lda: inputs,
            ldb: inputs,
            ldc: outputs,
        }
    }

    /// `dW^T = X^T dZ`: the weight gradient `dW = dZ^T X` row-major, A = X,
    /// B = dZ.
    fn weight_gradient(batch: usize, inputs: usize, outputs: usize) -> Self {
        Gemm {
            transpose_a: false,
            transpose_b: true,
            m: inputs,
            n: outputs,
            k: batch,
            lda: inputs,
            ldb: outputs,
            ldc: inputs,
        }
    }

    /// `dX^T = W^T dZ^T`: the input gradient `dX = dZ W` row-major, A = W,
    /// B = dZ.
    fn input_gradient(batch: usize, inputs: usize, outputs: usize) -> Self {
        Gemm {
            transpose_a: false,
            transpose_b: false,
            m: inputs,
            n: batch,
            k: outputs,
            lda: inputs,
            ldb: outputs,
            ldc: inputs,
        }
    }

    fn run(
        &self,
        blas: &CudaBlas,
        a: &CudaView<'_, f32>,
        b: &CudaView<'_, f32>,
        c: &mut CudaViewMut<'_, f32>,
    ) -> Result<(), DeviceError> {
        // Column-major storage: A is lda x (columns of A as stored).
        let a_columns = if self.transpose_a { self.m } else { self.k };
        let b_columns = if self.transpose_b { self.k } else { self.n };
        assert!(a.len() >= self.lda * a_columns, "GEMM: A is too short");
        assert!(b.len() >= self.ldb * b_columns, "GEMM: B is too short");
        assert!(c.len() >= self.ldc * self.n, "GEMM: C is too short");
        let op = |t| {
            if t {
                cublasOperation_t::CUBLAS_OP_T
            } else {
                cublasOperation_t::CUBLAS_OP_N
            }
        };
        // Every dimension is at most a layer width or a batch size, both
        // checked to fit i32 by `validate` and `check_rows`.
        let int = |v: usize| i32::try_from(v).unwrap_or(i32::MAX);
        let config = GemmConfig {
            transa: op(self.transpose_a),
            transb: op(self.transpose_b),
            m: int(self.m),
            n: int(self.n),
            k: int(self.k),
            alpha: 1.0f32,
            lda: int(self.lda),
            ldb: int(self.ldb),
            beta: 0.0f32,
            ldc: int(self.ldc),
        };
        // SAFETY: the asserts above keep every access cuBLAS makes inside
        // the three buffers, which live on the handle's stream.
        #[allow(unsafe_code)]
        unsafe { blas.gemm(config, a, b, c) }.map_err(blas_error)
    }
}

/// The model on the device: what never changes size.
struct DeviceModel {
    blas: Arc<CudaBlas>,
    stream: Arc<CudaStream>,
    kernels: Kernels,
    activation: Activation,
    slots: Vec<LayerSlot>,
    /// The flat parameters `[W0, b0, W1, b1, ...]`; device, row-major
    /// weights.
    params: CudaSlice<f32>,
    /// Per input feature; device [inputs].
    mean: CudaSlice<f32>,
    stdev: CudaSlice<f32>,
}

impl DeviceModel {
    fn inputs(&self) -> usize {
        self.slots[0].inputs
    }

    fn outputs(&self) -> usize {
        self.slots[self.slots.len() - 1].outputs
    }

    /// Runs the network on the first `batch` raw rows of `ws.raw`, leaving
    /// every layer's output in `ws.activations` (the last is the result).
    fn forward(&self, ws: &mut Workspace, batch: usize) -> Result<(), DeviceError> {
        let inputs = self.inputs();
        let n = (batch * inputs) as u64;
        let features = inputs as u32;
        let raw = ws.raw.slice(..batch * inputs);
        let mut normalised = ws.activations[0].slice_mut(..batch * inputs);
        let mut launch = self.stream.launch_builder(&self.kernels.normalize);
        launch
            .arg(&n)
            .arg(&features)
            .arg(&raw)
            .arg(&self.mean)
            .arg(&self.stdev)
            .arg(&mut normalised);
        // SAFETY: mlp_normalize(u64, u32, const f32*, const f32*, const
        // f32*, f32*); raw and normalised hold n values, mean and stdev
        // `features`.
        #[allow(unsafe_code)]
        unsafe {
            launch.launch(elementwise(n))?;
        }
        let last = self.slots.len() - 1;
        for (l, slot) in self.slots.iter().enumerate() {
            let (before, after) = ws.activations.split_at_mut(l + 1);
            let x = before[l].slice(..batch * slot.inputs);
            let mut y = after[0].slice_mut(..batch * slot.outputs);
            let weight = self.params.slice(slot.weight.clone());
            Gemm::forward(batch, slot.inputs, slot.outputs).run(&self.blas, &weight, &x, &mut y)?;
            let activation = (l < last).then_some(self.activation);
            self.bias_activation(slot, activation, &mut y, batch)?;
        }
        Ok(())
    }

    /// `y = act(y + b)` over `batch` rows of layer `slot`'s output.
    fn bias_activation(
        &self,
        slot: &LayerSlot,
        activation: Option<Activation>,
        y: &mut CudaViewMut<'_, f32>,
        batch: usize,
    ) -> Result<(), DeviceError> {
        let n = (batch * slot.outputs) as u64;
        let cols = slot.outputs as u32;
        let code = activation_code(activation);
        let bias = self.params.slice(slot.bias.clone());
        let mut launch = self.stream.launch_builder(&self.kernels.bias_activation);
        launch.arg(&n).arg(&cols).arg(&code).arg(&bias).arg(y);
        // SAFETY: mlp_bias_activation(u64, u32, u32, const f32*, f32*); y
        // holds n values, bias `cols`.
        #[allow(unsafe_code)]
        unsafe {
            launch.launch(elementwise(n))?;
        }
        Ok(())
    }

    /// `sums[c] = sum_r m[r, c]` over `rows` rows of `cols`, in the kernel's
    /// fixed order.
    fn column_sums(
        &self,
        m: &CudaView<'_, f32>,
        rows: usize,
        cols: usize,
        sums: &mut CudaViewMut<'_, f32>,
    ) -> Result<(), DeviceError> {
        assert!(m.len() >= rows * cols && sums.len() >= cols);
        let (rows32, cols32) = (rows as u32, cols as u32);
        let mut launch = self.stream.launch_builder(&self.kernels.column_sums);
        launch.arg(&rows32).arg(&cols32).arg(m).arg(sums);
        let config = LaunchConfig {
            grid_dim: (cols32.div_ceil(32), 1, 1),
            block_dim: (32, 8, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: mlp_column_sums(u32, u32, const f32*, f32*) with blocks
        // of 32 x 8 (its SUM_LANES); lengths asserted above.
        #[allow(unsafe_code)]
        unsafe {
            launch.launch(config)?;
        }
        Ok(())
    }
}

/// Buffers for a batch of up to `capacity` rows, kept between calls.
struct Workspace {
    capacity: usize,
    /// The raw inputs as they arrive; device [capacity, inputs].
    raw: CudaSlice<f32>,
    /// `[0]`: the normalised inputs; `[l + 1]`: layer l's output after its
    /// activation; device [capacity, width].
    activations: Vec<CudaSlice<f32>>,
}

impl Workspace {
    fn new(
        stream: &Arc<CudaStream>,
        slots: &[LayerSlot],
        capacity: usize,
    ) -> Result<Self, DeviceError> {
        let inputs = slots[0].inputs;
        let mut activations = vec![stream.alloc_zeros::<f32>(capacity * inputs)?];
        for slot in slots {
            activations.push(stream.alloc_zeros::<f32>(capacity * slot.outputs)?);
        }
        Ok(Self {
            capacity,
            raw: stream.alloc_zeros::<f32>(capacity * inputs)?,
            activations,
        })
    }

    fn bytes(&self) -> u64 {
        let floats = self.raw.len() + self.activations.iter().map(|a| a.len()).sum::<usize>();
        4 * floats as u64
    }
}

/// Makes `slot` hold a workspace for at least `batch` rows: the one there
/// when it is big enough, else a new one of exactly `batch` rows.
fn ensure_workspace<'a>(
    model: &DeviceModel,
    slot: &'a mut Option<Workspace>,
    batch: usize,
) -> Result<&'a mut Workspace, DeviceError> {
    // Free a workspace too small before allocating the larger one.
    slot.take_if(|ws| ws.capacity < batch);
    let ws = match slot.take() {
        Some(ws) => ws,
        None => Workspace::new(&model.stream, &model.slots, batch)?,
    };
    Ok(slot.insert(ws))
}

/// Optimiser state, in the parameters' flat layout.
enum OptimizerState {
    Sgd {
        velocity: CudaSlice<f32>,
    },
    Adam {
        first: CudaSlice<f32>,
        second: CudaSlice<f32>,
        /// Steps taken, for the bias corrections.
        steps: u64,
    },
}

/// What training needs beyond the forward workspace, for batches of up to
/// `capacity` rows.
struct Training {
    capacity: usize,
    /// The batch's targets; device [capacity, outputs].
    targets: CudaSlice<f32>,
    /// The loss gradient with respect to a layer's output, ping-ponged
    /// between layers; device [capacity, widest layer].
    deltas: [CudaSlice<f32>; 2],
    /// Squared errors of the batch; device [capacity, outputs].
    squared: CudaSlice<f32>,
    /// Per-output sums of squared errors, one row per step of an epoch;
    /// device [steps, outputs], grown as needed.
    losses: CudaSlice<f32>,
    /// Gradients, flat like the parameters.
    grads: CudaSlice<f32>,
    optimizer: OptimizerState,
}

impl Training {
    fn new(
        model: &DeviceModel,
        capacity: usize,
        optimizer: &Optimizer,
    ) -> Result<Self, DeviceError> {
        let stream = &model.stream;
        let outputs = model.outputs();
        let widest = model
            .slots
            .iter()
            .map(|s| s.inputs.max(s.outputs))
            .max()
            .unwrap_or(1);
        let params = model.params.len();
        Ok(Self {
            capacity,
            targets: stream.alloc_zeros(capacity * outputs)?,
            deltas: [
                stream.alloc_zeros(capacity * widest)?,
                stream.alloc_zeros(capacity * widest)?,
            ],
            squared: stream.alloc_zeros(capacity * outputs)?,
            losses: stream.alloc_zeros(outputs)?,
            grads: stream.alloc_zeros(params)?,
            optimizer: optimizer_state(stream, optimizer, params)?,
        })
    }

    fn bytes(&self) -> u64 {
        let state = match &self.optimizer {
            OptimizerState::Sgd { velocity } => velocity.len(),
            OptimizerState::Adam { first, second, .. } => first.len() + second.len(),
        };
        let floats = self.targets.len()
            + self.deltas[0].len()
            + self.deltas[1].len()
            + self.squared.len()
            + self.losses.len()
            + self.grads.len()
            + state;
        4 * floats as u64
    }

    /// Whether the state was made for this kind of optimiser.
    fn matches(&self, optimizer: &Optimizer) -> bool {
        matches!(
            (&self.optimizer, optimizer),
            (OptimizerState::Sgd { .. }, Optimizer::Sgd { .. })
                | (OptimizerState::Adam { .. }, Optimizer::Adam { .. })
        )
    }
}

fn optimizer_state(
    stream: &Arc<CudaStream>,
    optimizer: &Optimizer,
    params: usize,
) -> Result<OptimizerState, DeviceError> {
    Ok(match optimizer {
        Optimizer::Sgd { .. } => OptimizerState::Sgd {
            velocity: stream.alloc_zeros(params)?,
        },
        Optimizer::Adam { .. } => OptimizerState::Adam {
            first: stream.alloc_zeros(params)?,
            second: stream.alloc_zeros(params)?,
            steps: 0,
        },
    })
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
    /// Uploads `mlp` to `gpu` with a cuBLAS handle of its own.
    pub fn upload(gpu: &Gpu, mlp: &Mlp) -> Result<Self, GpuMlpError> {
        Self::upload_with(gpu, cublas(gpu)?, mlp)
    }

    /// Uploads `mlp` to `gpu`, sharing `blas` (from [`cublas`] on the same
    /// GPU) with other models.
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
        model.forward(ws, batch)?;
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

/// The training set on the device for one [`GpuMlp::train`] run.
struct DeviceData {
    /// device [samples, inputs]
    x: CudaSlice<f32>,
    /// device [samples, outputs]
    y: CudaSlice<f32>,
    /// This epoch's sample order; device [samples].
    order: CudaSlice<u32>,
}

impl GpuMlp {
    /// One optimiser step on one mini-batch of `batch` rows (`x` batch x
    /// inputs, `y` batch x outputs, row-major): forward, MSE loss, backward,
    /// update. Returns the batch's loss before the update. The GPU twin of
    /// [`crate::mlp::train_step`].
    pub fn train_step(
        &mut self,
        gpu: &Gpu,
        x: &[f32],
        y: &[f32],
        batch: usize,
        optimizer: &Optimizer,
    ) -> Result<f64, GpuMlpError> {
        check_rows("training inputs", x, batch, self.inputs())?;
        check_rows("training targets", y, batch, self.outputs())?;
        self.check_gpu(gpu)?;
        check_optimizer(optimizer)?;
        if batch == 0 {
            return Err(MlpError::BadTraining("empty mini-batch".into()).into());
        }
        self.prepare_training(batch, optimizer, 1)?;
        let (model, ws, training) = self.parts()?;
        let stream = Arc::clone(&model.stream);
        stream
            .memcpy_htod(x, &mut ws.raw.slice_mut(..x.len()))
            .map_err(DeviceError::from)?;
        stream
            .memcpy_htod(y, &mut training.targets.slice_mut(..y.len()))
            .map_err(DeviceError::from)?;
        step(model, ws, training, batch, optimizer, 0)?;
        let sums = stream
            .clone_dtoh(&training.losses.slice(..model.outputs()))
            .map_err(DeviceError::from)?;
        stream.synchronize().map_err(DeviceError::from)?;
        Ok(sums.iter().map(|&s| f64::from(s)).sum::<f64>() / (batch * model.outputs()) as f64)
    }

    /// Trains on `samples` rows of `x` (samples x inputs) and `y` (samples x
    /// outputs) for `config.epochs` epochs of mini-batches in the CPU twin's
    /// seeded order ([`crate::mlp::train_cpu`]).
    pub fn train(
        &mut self,
        gpu: &Gpu,
        x: &[f32],
        y: &[f32],
        samples: usize,
        config: &TrainConfig,
    ) -> Result<TrainReport, GpuMlpError> {
        check_rows("training inputs", x, samples, self.inputs())?;
        check_rows("training targets", y, samples, self.outputs())?;
        self.check_gpu(gpu)?;
        check_optimizer(&config.optimizer)?;
        if samples == 0 {
            return Err(MlpError::BadTraining("no samples".into()).into());
        }
        if config.batch_size == 0 {
            return Err(MlpError::BadTraining("batch size 0".into()).into());
        }
        if u32::try_from(samples).is_err() {
            return Err(GpuMlpError::TooLarge(format!(
                "{samples} samples; the GPU path indexes at most {}",
                u32::MAX
            )));
        }
        let batch = config.batch_size.min(samples);
        let steps_per_epoch = samples.div_ceil(batch);
        // Each run starts from fresh optimiser moments, as the CPU twin's.
        self.reset_optimizer();
        self.prepare_training(batch, &config.optimizer, steps_per_epoch)?;
        let stream = Arc::clone(&self.model.stream);
        let mut data = DeviceData {
            x: stream.clone_htod(x).map_err(DeviceError::from)?,
            y: stream.clone_htod(y).map_err(DeviceError::from)?,
            order: stream.alloc_zeros(samples).map_err(DeviceError::from)?,
        };
        let mut losses = Vec::with_capacity(config.epochs);
        let mut steps = 0;
        for epoch in 0..config.epochs {
            let order = crate::mlp::epoch_order(samples, config.seed, epoch);
            let order: Vec<u32> = order.iter().map(|&i| i as u32).collect();
            stream
                .memcpy_htod(&order, &mut data.order)
                .map_err(DeviceError::from)?;
            losses.push(self.epoch(&mut data, samples, batch, &config.optimizer)?);
            steps += steps_per_epoch as u64;
        }
        Ok(TrainReport { losses, steps })
    }

    /// One pass over `data` in its order; returns the mean squared error
    /// over the epoch's samples, each taken before its step's update.
    fn epoch(
        &mut self,
        data: &mut DeviceData,
        samples: usize,
        batch: usize,
        optimizer: &Optimizer,
    ) -> Result<f64, GpuMlpError> {
        let (model, ws, training) = self.parts()?;
        let outputs = model.outputs();
        let steps = samples.div_ceil(batch);
        for s in 0..steps {
            let rows = s * batch..((s + 1) * batch).min(samples);
            let count = rows.len();
            let order = data.order.slice(rows);
            gather(model, &order, &data.x, model.inputs(), &mut ws.raw)?;
            gather(model, &order, &data.y, outputs, &mut training.targets)?;
            step(model, ws, training, count, optimizer, s)?;
        }
        let sums = model
            .stream
            .clone_dtoh(&training.losses.slice(..steps * outputs))
            .map_err(DeviceError::from)?;
        model.stream.synchronize().map_err(DeviceError::from)?;
        // In step order, in f64: the same sum on every run.
        let total: f64 = sums.iter().map(|&s| f64::from(s)).sum();
        Ok(total / (samples * outputs) as f64)
    }

    /// Sizes the workspace and the training state for batches of `batch`
    /// rows and `steps` losses per epoch; keeps the optimiser's moments
    /// unless the optimiser changed kind.
    fn prepare_training(
        &mut self,
        batch: usize,
        optimizer: &Optimizer,
        steps: usize,
    ) -> Result<(), DeviceError> {
        let mut ws = self.workspace_mut().take();
        let result = ensure_workspace(&self.model, &mut ws, batch).map(|_| ());
        *self.workspace_mut() = ws;
        result?;
        let keep = self.training.take().filter(|t| t.matches(optimizer));
        let mut training = match keep {
            Some(t) if t.capacity >= batch => t,
            Some(t) => {
                // Larger batches: new buffers, the same optimiser moments.
                let state = t.optimizer;
                let mut grown = Training::new(&self.model, batch, optimizer)?;
                grown.optimizer = state;
                grown
            }
            None => Training::new(&self.model, batch, optimizer)?,
        };
        let outputs = self.model.outputs();
        if training.losses.len() < steps * outputs {
            training.losses = self.model.stream.alloc_zeros(steps * outputs)?;
        }
        self.training = Some(training);
        Ok(())
    }

    /// The model, the workspace and the training state, borrowed apart.
    fn parts(&mut self) -> Result<(&mut DeviceModel, &mut Workspace, &mut Training), DeviceError> {
        let ws = match self.workspace.get_mut() {
            Ok(ws) => ws,
            Err(poisoned) => poisoned.into_inner(),
        };
        match (ws.as_mut(), self.training.as_mut()) {
            (Some(ws), Some(training)) => Ok((&mut self.model, ws, training)),
            _ => Err(DeviceError {
                fault: Fault::Other,
                message: "the training buffers were not prepared".into(),
            }),
        }
    }
}

/// `dst` row r = `src` row `order[r]`, rows of `cols`.
fn gather(
    model: &DeviceModel,
    order: &CudaView<'_, u32>,
    src: &CudaSlice<f32>,
    cols: usize,
    dst: &mut CudaSlice<f32>,
) -> Result<(), DeviceError> {
    let n = (order.len() * cols) as u64;
    assert!(dst.len() as u64 >= n);
    let cols32 = cols as u32;
    let mut launch = model.stream.launch_builder(&model.kernels.gather_rows);
    launch.arg(&n).arg(&cols32).arg(order).arg(src).arg(dst);
    // SAFETY: mlp_gather_rows(u64, u32, const u32*, const f32*, f32*);
    // `dst` holds n values, and every index in `order` is a sample of `src`
    // (a permutation of 0..samples).
    #[allow(unsafe_code)]
    unsafe {
        launch.launch(elementwise(n))?;
    }
    Ok(())
}

/// One training step on the `batch` rows in `ws.raw` and
/// `training.targets`; the batch's per-output squared-error sums go to row
/// `loss_row` of `training.losses`.
fn step(
    model: &mut DeviceModel,
    ws: &mut Workspace,
    training: &mut Training,
    batch: usize,
    optimizer: &Optimizer,
    loss_row: usize,
) -> Result<(), DeviceError> {
    model.forward(ws, batch)?;
    let outputs = model.outputs();
    let last = model.slots.len() - 1;
    let [delta_a, delta_b] = &mut training.deltas;
    loss_gradient(
        model,
        ws,
        &training.targets,
        delta_a,
        &mut training.squared,
        batch,
    )?;
    let squared = training.squared.slice(..batch * outputs);
    let mut loss_sums = training
        .losses
        .slice_mut(loss_row * outputs..(loss_row + 1) * outputs);
    model.column_sums(&squared, batch, outputs, &mut loss_sums)?;
    // The gradient of the current layer's output is in `current`; the
    // product with its weights goes to `previous`, then they swap.
    let (mut current, mut previous) = (delta_a, delta_b);
    for l in (0..=last).rev() {
        let slot = &model.slots[l];
        let delta = current.slice(..batch * slot.outputs);
        let input = ws.activations[l].slice(..batch * slot.inputs);
        Gemm::weight_gradient(batch, slot.inputs, slot.outputs).run(
            &model.blas,
            &input,
            &delta,
            &mut training.grads.slice_mut(slot.weight.clone()),
        )?;
        model.column_sums(
            &delta,
            batch,
            slot.outputs,
            &mut training.grads.slice_mut(slot.bias.clone()),
        )?;
        if l > 0 {
            let mut into = previous.slice_mut(..batch * slot.inputs);
            let weight = model.params.slice(slot.weight.clone());
            Gemm::input_gradient(batch, slot.inputs, slot.outputs).run(
                &model.blas,
                &weight,
                &delta,
                &mut into,
            )?;
            activation_backward(
                model,
                &ws.activations[l].slice(..batch * slot.inputs),
                &mut into,
            )?;
            std::mem::swap(&mut current, &mut previous);
        }
    }
    update(model, training, optimizer)
}

/// The MSE gradient `2 (pred - target) / (batch * outputs)` into `grad`
/// and the squared errors into `squared`.
fn loss_gradient(
    model: &DeviceModel,
    ws: &Workspace,
    targets: &CudaSlice<f32>,
    grad: &mut CudaSlice<f32>,
    squared: &mut CudaSlice<f32>,
    batch: usize,
) -> Result<(), DeviceError> {
    let len = batch * model.outputs();
    let n = len as u64;
    let scale = 2.0f32 / len as f32;
    let pred = ws.activations[model.slots.len()].slice(..len);
    let target = targets.slice(..len);
    let mut grad = grad.slice_mut(..len);
    let mut squared = squared.slice_mut(..len);
    let mut launch = model.stream.launch_builder(&model.kernels.mse_gradient);
    launch
        .arg(&n)
        .arg(&scale)
        .arg(&pred)
        .arg(&target)
        .arg(&mut grad)
        .arg(&mut squared);
    // SAFETY: mlp_mse_gradient(u64, f32, const f32*, const f32*, f32*,
    // f32*); the four views hold n values each.
    #[allow(unsafe_code)]
    unsafe {
        launch.launch(elementwise(n))?;
    }
    Ok(())
}

/// `grad *= act'(z)`, from the hidden layer's output `output = act(z)`.
fn activation_backward(
    model: &DeviceModel,
    output: &CudaView<'_, f32>,
    grad: &mut CudaViewMut<'_, f32>,
) -> Result<(), DeviceError> {
    assert_eq!(output.len(), grad.len());
    let n = grad.len() as u64;
    let code = activation_code(Some(model.activation));
    let mut launch = model
        .stream
        .launch_builder(&model.kernels.activation_backward);
    launch.arg(&n).arg(&code).arg(output).arg(grad);
    // SAFETY: mlp_activation_backward(u64, u32, const f32*, f32*); both
    // hold n values.
    #[allow(unsafe_code)]
    unsafe {
        launch.launch(elementwise(n))?;
    }
    Ok(())
}

/// The optimiser's update of every parameter, one launch.
fn update(
    model: &mut DeviceModel,
    training: &mut Training,
    optimizer: &Optimizer,
) -> Result<(), DeviceError> {
    let n = model.params.len() as u64;
    let stream = Arc::clone(&model.stream);
    match (optimizer, &mut training.optimizer) {
        (&Optimizer::Sgd { lr, momentum }, OptimizerState::Sgd { velocity }) => {
            let mut launch = stream.launch_builder(&model.kernels.sgd);
            launch
                .arg(&n)
                .arg(&lr)
                .arg(&momentum)
                .arg(&training.grads)
                .arg(velocity)
                .arg(&mut model.params);
            // SAFETY: mlp_sgd(u64, f32, f32, const f32*, f32*, f32*); the
            // three buffers hold n values (the flat layout).
            #[allow(unsafe_code)]
            unsafe {
                launch.launch(elementwise(n))?;
            }
        }
        (
            &Optimizer::Adam {
                lr,
                beta1,
                beta2,
                eps,
            },
            OptimizerState::Adam {
                first,
                second,
                steps,
            },
        ) => {
            *steps += 1;
            let (correction1, correction2) = adam_corrections(beta1, beta2, *steps);
            let mut launch = stream.launch_builder(&model.kernels.adam);
            launch
                .arg(&n)
                .arg(&lr)
                .arg(&beta1)
                .arg(&beta2)
                .arg(&eps)
                .arg(&correction1)
                .arg(&correction2)
                .arg(&training.grads)
                .arg(first)
                .arg(second)
                .arg(&mut model.params);
            // SAFETY: mlp_adam(u64, f32 x 6, const f32*, f32*, f32*, f32*);
            // the four buffers hold n values.
            #[allow(unsafe_code)]
            unsafe {
                launch.launch(elementwise(n))?;
            }
        }
        _ => {
            return Err(DeviceError {
                fault: Fault::Other,
                message: "the optimiser state does not match the optimiser".into(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `C = op(A) op(B)` read column-major as cuBLAS reads it, in f64.
    fn column_major_gemm(gemm: &Gemm, a: &[f32], b: &[f32]) -> Vec<f64> {
        let at = |i: usize, p: usize| {
            let (row, col) = if gemm.transpose_a { (p, i) } else { (i, p) };
            f64::from(a[col * gemm.lda + row])
        };
        let bt = |p: usize, j: usize| {
            let (row, col) = if gemm.transpose_b { (j, p) } else { (p, j) };
            f64::from(b[col * gemm.ldb + row])
        };
        let mut c = vec![0.0; gemm.ldc * gemm.n];
        for j in 0..gemm.n {
            for i in 0..gemm.m {
                c[j * gemm.ldc + i] = (0..gemm.k).map(|p| at(i, p) * bt(p, j)).sum();
            }
        }
        c
    }

    /// Row-major `rows x cols` of distinct values.
    fn matrix(rows: usize, cols: usize, salt: f32) -> Vec<f32> {
        (0..rows * cols)
            .map(|i| ((i as f32 * 0.37 + salt).sin() * 4.0).round() / 4.0)
            .collect()
    }

    /// Element (r, c) of a row-major matrix of `cols` columns.
    fn get(m: &[f32], cols: usize, r: usize, c: usize) -> f64 {
        f64::from(m[r * cols + c])
    }

    const BATCH: usize = 5;
    const INPUTS: usize = 3;
    const OUTPUTS: usize = 4;

    /// The column-major products land, read row-major, on `Y = X W^T`.
    #[test]
    fn forward_gemm_is_x_times_w_transposed() {
        let x = matrix(BATCH, INPUTS, 0.1);
        let w = matrix(OUTPUTS, INPUTS, 0.7);
        let y = column_major_gemm(&Gemm::forward(BATCH, INPUTS, OUTPUTS), &w, &x);
        for r in 0..BATCH {
            for o in 0..OUTPUTS {
                let expect: f64 = (0..INPUTS)
                    .map(|i| get(&x, INPUTS, r, i) * get(&w, INPUTS, o, i))
                    .sum();
                assert_eq!(y[r * OUTPUTS + o], expect, "Y[{r}, {o}]");
            }
        }
    }

    /// `dW = dZ^T X`, row-major outputs x inputs.
    #[test]
    fn weight_gradient_gemm_is_delta_transposed_times_x() {
        let x = matrix(BATCH, INPUTS, 0.3);
        let dz = matrix(BATCH, OUTPUTS, 1.1);
        let dw = column_major_gemm(&Gemm::weight_gradient(BATCH, INPUTS, OUTPUTS), &x, &dz);
        for o in 0..OUTPUTS {
            for i in 0..INPUTS {
                let expect: f64 = (0..BATCH)
                    .map(|r| get(&dz, OUTPUTS, r, o) * get(&x, INPUTS, r, i))
                    .sum();
                assert_eq!(dw[o * INPUTS + i], expect, "dW[{o}, {i}]");
            }
        }
    }

    /// `dX = dZ W`, row-major batch x inputs.
    #[test]
    fn input_gradient_gemm_is_delta_times_w() {
        let w = matrix(OUTPUTS, INPUTS, 0.9);
        let dz = matrix(BATCH, OUTPUTS, 2.3);
        let dx = column_major_gemm(&Gemm::input_gradient(BATCH, INPUTS, OUTPUTS), &w, &dz);
        for r in 0..BATCH {
            for i in 0..INPUTS {
                let expect: f64 = (0..OUTPUTS)
                    .map(|o| get(&dz, OUTPUTS, r, o) * get(&w, INPUTS, o, i))
                    .sum();
                assert_eq!(dx[r * INPUTS + i], expect, "dX[{r}, {i}]");
            }
        }
    }

    #[test]
    fn the_flat_layout_packs_each_layer_weights_then_biases() {
        let mlp = Mlp::random(&[3, 5, 2], Activation::Relu, 1).expect("model");
        let (slots, total) = layout(&mlp);
        assert_eq!(slots[0].weight, 0..15);
        assert_eq!(slots[0].bias, 15..20);
        assert_eq!(slots[1].weight, 20..30);
        assert_eq!(slots[1].bias, 30..32);
        assert_eq!(4 * total as u64 + 4 * 6, mlp.parameter_bytes());
    }

    #[test]
    fn adam_corrections_are_the_cpu_twins() {
        let (c1, c2) = adam_corrections(0.9, 0.999, 1);
        assert_eq!(c1, (1.0 / (1.0 - f64::from(0.9f32))) as f32);
        assert_eq!(c2, (1.0 / (1.0 - f64::from(0.999f32))) as f32);
        let (c1, _) = adam_corrections(0.9, 0.999, 1000);
        assert!((c1 - 1.0).abs() < 1e-6);
    }

    #[test]
    fn bad_lengths_and_optimisers_are_the_cpu_twins_errors() {
        let err = check_rows("inputs", &[0.0; 7], 2, 4).unwrap_err();
        assert!(
            matches!(
                err,
                GpuMlpError::Invalid(MlpError::BadLength {
                    expected: 8,
                    got: 7,
                    ..
                })
            ),
            "{err}"
        );
        assert!(check_rows("inputs", &[0.0; 8], 2, 4).is_ok());
        let bad = Optimizer::Sgd {
            lr: f32::NAN,
            momentum: 0.9,
        };
        assert!(matches!(
            check_optimizer(&bad),
            Err(MlpError::BadTraining(_))
        ));
        assert!(check_optimizer(&Optimizer::adam(1e-3)).is_ok());
        let mut broken = Mlp::random(&[3, 5, 2], Activation::Tanh, 1).expect("model");
        broken.layers[1].inputs = 4;
        assert!(matches!(validate(&broken), Err(GpuMlpError::Invalid(_))));
    }

    /// A worker keeps resident models in a cache shared by its threads.
    #[test]
    fn a_resident_model_can_be_shared_between_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<GpuMlp>();
    }

    #[test]
    fn workspace_estimates_count_every_buffer() {
        let mlp = Mlp::random(&[64, 256, 256, 1], Activation::Relu, 1).expect("model");
        // raw and normalised inputs, then each layer's output.
        assert_eq!(
            GpuMlp::forward_bytes(&mlp, 1000),
            4 * 1000 * (64 + 64 + 256 + 256 + 1)
        );
        let train = GpuMlp::train_bytes(&mlp, 65_536, 512);
        assert!(train > GpuMlp::forward_bytes(&mlp, 512) + 3 * mlp.parameter_bytes());
    }
}

/// Needs a GPU with libcublas: `cargo test -p tandem-kernels --features
/// gpu-tests` (scripts/gpu-check). The CPU twin is the reference.
#[cfg(all(test, feature = "gpu-tests"))]
mod gpu_tests {
    use super::*;
    use crate::mlp::{OptimizerState, forward_cpu, train_cpu, train_step as train_step_cpu};

    fn gpu() -> Gpu {
        Gpu::open(0, &[SOURCE], None).expect("GPU 0 with the mlp module")
    }

    /// A model with non-trivial biases and normalisation.
    fn model(sizes: &[usize], activation: Activation) -> Mlp {
        let mut mlp = Mlp::random(sizes, activation, 42).expect("model");
        for (l, layer) in mlp.layers.iter_mut().enumerate() {
            for (o, b) in layer.bias.iter_mut().enumerate() {
                *b = 0.05 * ((o + l) as f32).sin();
            }
        }
        for k in 0..mlp.inputs() {
            mlp.input_mean[k] = 0.3 * k as f32;
            mlp.input_std[k] = 1.0 + 0.1 * k as f32;
        }
        mlp
    }

    fn inputs(rows: usize, width: usize, salt: f32) -> Vec<f32> {
        (0..rows * width)
            .map(|i| (i as f32 * 0.618 + salt).sin() * 2.0)
            .collect()
    }

    /// Each value within `tolerance` relative to the larger of 1 and the
    /// reference's magnitude.
    fn assert_close(what: &str, got: &[f32], expect: &[f32], tolerance: f32) {
        assert_eq!(got.len(), expect.len(), "{what}: lengths");
        for (i, (g, e)) in got.iter().zip(expect).enumerate() {
            assert!(
                (g - e).abs() <= tolerance * e.abs().max(1.0),
                "{what}[{i}]: GPU {g}, CPU {e}"
            );
        }
    }

    fn assert_models_close(what: &str, got: &Mlp, expect: &Mlp, tolerance: f32) {
        for (l, (g, e)) in got.layers.iter().zip(&expect.layers).enumerate() {
            assert_close(&format!("{what} W{l}"), &g.weight, &e.weight, tolerance);
            assert_close(&format!("{what} b{l}"), &g.bias, &e.bias, tolerance);
        }
    }

    #[test]
    fn cublas_loads() {
        cublas(&gpu()).expect("cuBLAS on a GPU machine");
    }

    #[test]
    fn forward_matches_the_cpu_twin() {
        let gpu = gpu();
        for activation in [Activation::Relu, Activation::Tanh] {
            let mlp = model(&[8, 32, 16, 3], activation);
            let device = GpuMlp::upload(&gpu, &mlp).expect("upload");
            for batch in [1, 37, 300] {
                let x = inputs(batch, 8, batch as f32);
                let got = device.forward(&gpu, &x, batch).expect("forward");
                let expect = forward_cpu(&mlp, &x, batch).expect("CPU forward");
                assert_close(&format!("{activation:?} b{batch}"), &got, &expect, 1e-4);
            }
        }
    }

    /// Uploaded once, the model serves many forwards of several sizes; the
    /// workspace grows only for a larger batch, the parameters never change
    /// and the same inputs give the same bits.
    #[test]
    fn a_model_uploaded_once_serves_many_forwards() {
        let gpu = gpu();
        let mlp = model(&[16, 64, 64, 2], Activation::Relu);
        let device = GpuMlp::upload(&gpu, &mlp).expect("upload");
        let resident = device.device_bytes();
        assert_eq!(resident, mlp.parameter_bytes());
        let big = inputs(512, 16, 0.5);
        let first = device.forward(&gpu, &big, 512).expect("forward");
        let with_workspace = device.device_bytes();
        assert_eq!(with_workspace, resident + GpuMlp::forward_bytes(&mlp, 512));
        for call in 0..50 {
            let batch = 1 + call * 10;
            let x = inputs(batch, 16, call as f32);
            let got = device.forward(&gpu, &x, batch).expect("forward");
            let expect = forward_cpu(&mlp, &x, batch).expect("CPU forward");
            assert_close(&format!("call {call}"), &got, &expect, 1e-4);
            assert_eq!(device.device_bytes(), with_workspace, "call {call}");
        }
        assert_eq!(device.forward(&gpu, &big, 512).expect("forward"), first);
        assert_eq!(device.download().expect("download"), mlp);
        assert!(device.forward(&gpu, &[], 0).expect("empty").is_empty());
        assert!(matches!(
            device.forward(&gpu, &big[..100], 512),
            Err(GpuMlpError::Invalid(MlpError::BadLength { .. }))
        ));
    }

    /// Two steps (so the optimiser's moments count) give the CPU twin's
    /// weights and losses.
    #[test]
    fn training_steps_match_the_cpu_twin() {
        let gpu = gpu();
        let optimizers = [
            Optimizer::Sgd {
                lr: 0.05,
                momentum: 0.9,
            },
            Optimizer::adam(1e-2),
        ];
        for activation in [Activation::Relu, Activation::Tanh] {
            for optimizer in optimizers {
                let batch = 64;
                let mut cpu = model(&[6, 24, 12, 2], activation);
                let mut device = GpuMlp::upload(&gpu, &cpu).expect("upload");
                let x = inputs(batch, 6, 1.0);
                let y = inputs(batch, 2, 7.0);
                let indices: Vec<usize> = (0..batch).collect();
                let mut state = OptimizerState::new(&cpu);
                for step in 0..2 {
                    let expect =
                        train_step_cpu(&mut cpu, &mut state, &x, &y, batch, &indices, &optimizer)
                            .expect("CPU step");
                    let got = device
                        .train_step(&gpu, &x, &y, batch, &optimizer)
                        .expect("GPU step");
                    let what = format!("{activation:?} {optimizer:?} step {step}");
                    assert!(
                        (got - expect).abs() <= 1e-4 * expect.max(1.0),
                        "{what}: loss {got} vs {expect}"
                    );
                    assert_models_close(&what, &device.download().expect("download"), &cpu, 1e-4);
                }
            }
        }
    }

    /// y = sin(x1) + 0.5 x2^2 on a few thousand samples: the loss falls by
    /// a large factor in a few epochs, as on the CPU, and starts where the
    /// CPU's does.
    #[test]
    fn training_lowers_the_loss() {
        let gpu = gpu();
        let samples = 4096;
        let x = inputs(samples, 2, 0.0);
        let y: Vec<f32> = x
            .chunks_exact(2)
            .map(|p| p[0].sin() + 0.5 * p[1] * p[1])
            .collect();
        let config = TrainConfig {
            epochs: 8,
            batch_size: 128,
            optimizer: Optimizer::adam(1e-2),
            seed: 7,
        };
        let mut cpu = Mlp::random(&[2, 32, 32, 1], Activation::Tanh, 3).expect("model");
        let mut device = GpuMlp::upload(&gpu, &cpu).expect("upload");
        let report = device
            .train(&gpu, &x, &y, samples, &config)
            .expect("GPU training");
        let cpu_report = train_cpu(&mut cpu, &x, &y, samples, &config).expect("CPU training");
        assert_eq!(report.steps, cpu_report.steps);
        assert_eq!(report.steps, 8 * 32);
        let (first, last) = (report.losses[0], report.losses[7]);
        assert!(last < first / 10.0, "losses {:?}", report.losses);
        // Rounding differences grow over the epoch's steps; the first
        // epoch's running loss still agrees closely.
        assert!(
            (first - cpu_report.losses[0]).abs() <= 1e-2 * cpu_report.losses[0],
            "GPU {:?} CPU {:?}",
            report.losses,
            cpu_report.losses
        );
        // A second run goes on from the trained weights (with fresh
        // moments): its first epoch is far below the first run's.
        let again = device.train(&gpu, &x, &y, samples, &config).expect("again");
        assert!(again.losses[0] < first / 10.0, "{:?}", again.losses);
    }
}
