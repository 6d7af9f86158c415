//! The model and its workspace on the device, and the executor of the
//! forward plan: each [`Op`] checked against its buffers, then launched
//! (cuBLAS for the GEMMs, `cuda/transformer.cu` for the rest).

use std::sync::Arc;

use cudarc::cublas::sys::cublasOperation_t;
use cudarc::cublas::{CudaBlas, Gemm as _, GemmConfig, StridedBatchedConfig};
use cudarc::driver::{
    CudaFunction, CudaSlice, CudaStream, CudaView, CudaViewMut, LaunchConfig, PushKernelArg,
};

use super::plan::{Buf, GemmOp, Op, View, WORKSPACE, per_window};
use super::{SOURCE, THREADS};
use crate::driver::{DeviceError, Fault};
use crate::mlp_gpu::classify_blas;
use crate::runtime::Gpu;
use crate::transformer::{Config, Offsets};

/// The kernels of `cuda/transformer.cu`, looked up once.
pub(super) struct Kernels {
    normalize: CudaFunction,
    bias_positions: CudaFunction,
    bias_add: CudaFunction,
    bias_gelu: CudaFunction,
    layer_norm: CudaFunction,
    softmax: CudaFunction,
    pool: CudaFunction,
    gelu: CudaFunction,
    gelu_backward: CudaFunction,
    ln_stats: CudaFunction,
    ln_backward: CudaFunction,
    ln_gain_grad: CudaFunction,
    column_sums: CudaFunction,
    softmax_backward: CudaFunction,
    pool_backward: CudaFunction,
}

impl Kernels {
    pub(super) fn load(gpu: &Gpu) -> Result<Self, DeviceError> {
        let function = |name| gpu.function(SOURCE.module, name);
        Ok(Self {
            normalize: function("tf_normalize")?,
            bias_positions: function("tf_bias_positions")?,
            bias_add: function("tf_bias_add")?,
            bias_gelu: function("tf_bias_gelu")?,
            layer_norm: function("tf_layer_norm")?,
            softmax: function("tf_softmax")?,
            pool: function("tf_pool")?,
            gelu: function("tf_gelu")?,
            gelu_backward: function("tf_gelu_backward")?,
            ln_stats: function("tf_ln_stats")?,
            ln_backward: function("tf_ln_backward")?,
            ln_gain_grad: function("tf_ln_gain_grad")?,
            column_sums: function("tf_column_sums")?,
            softmax_backward: function("tf_softmax_backward")?,
            pool_backward: function("tf_pool_backward")?,
        })
    }
}

/// Rows per block of the warp-per-row kernels (`TF_ROWS` in the .cu).
pub(super) const ROWS_PER_BLOCK: u32 = 8;

/// One thread per element, [`THREADS`] per block.
pub(super) fn elementwise(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: ((n as u64).div_ceil(u64::from(THREADS)) as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One warp per row, [`ROWS_PER_BLOCK`] rows per block.
pub(super) fn warp_per_row(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (
            (rows as u64).div_ceil(u64::from(ROWS_PER_BLOCK)) as u32,
            1,
            1,
        ),
        block_dim: (32, ROWS_PER_BLOCK, 1),
        shared_mem_bytes: 0,
    }
}

/// Columns per block of the column-sum kernels (`tf_column_sums`,
/// `tf_ln_gain_grad`): blocks of (32, `TF_SUM_LANES` = 8).
pub(super) fn column_blocks(cols: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: ((cols as u64).div_ceil(32) as u32, 1, 1),
        block_dim: (32, 8, 1),
        shared_mem_bytes: 0,
    }
}

/// The model on the device: what never changes size.
pub(super) struct DeviceModel {
    pub(super) blas: Arc<CudaBlas>,
    pub(super) stream: Arc<CudaStream>,
    pub(super) kernels: Kernels,
    pub(super) config: Config,
    pub(super) offsets: Offsets,
    /// The flat parameters, in `transformer::tensor_list` order; device.
    pub(super) params: CudaSlice<f32>,
    /// The sinusoidal table; device [window, d_model]; `None` with learned
    /// positions (they are parameters).
    pub(super) positions: Option<CudaSlice<f32>>,
}

/// The forward buffers for up to `capacity` windows, kept between calls.
pub(super) struct Workspace {
    pub(super) capacity: usize,
    /// In [`WORKSPACE`] order; device [capacity x per_window].
    pub(super) buffers: Vec<CudaSlice<f32>>,
}

impl Workspace {
    pub(super) fn new(
        stream: &Arc<CudaStream>,
        config: &Config,
        capacity: usize,
    ) -> Result<Self, DeviceError> {
        let ws = Self::with_sizes(stream, &per_window(config), &[0; 10], capacity)?;
        debug_assert_eq!(ws.buffers.len(), WORKSPACE.len());
        Ok(ws)
    }

    /// Buffers of `capacity x per[i] + fixed[i]` floats each.
    pub(super) fn with_sizes(
        stream: &Arc<CudaStream>,
        per: &[usize],
        fixed: &[usize],
        capacity: usize,
    ) -> Result<Self, DeviceError> {
        let buffers = per
            .iter()
            .zip(fixed)
            .map(|(floats, fixed)| stream.alloc_zeros::<f32>(capacity * floats + fixed))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { capacity, buffers })
    }

    pub(super) fn bytes(&self) -> u64 {
        4 * self.buffers.iter().map(|b| b.len() as u64).sum::<u64>()
    }
}

/// Makes `slot` hold a workspace for at least `wanted` windows, or fewer
/// when the device has no room: a smaller workspace is tried, halving down
/// to one window, and the caller cuts the batch to what it got.
pub(super) fn ensure_workspace<'a>(
    model: &DeviceModel,
    slot: &'a mut Option<Workspace>,
    wanted: usize,
) -> Result<&'a mut Workspace, DeviceError> {
    ensure_with(slot, wanted, |capacity| {
        Workspace::new(&model.stream, &model.config, capacity)
    })
}

/// [`ensure_workspace`] with any constructor (the training workspace's
/// too).
pub(super) fn ensure_with(
    slot: &mut Option<Workspace>,
    wanted: usize,
    make: impl Fn(usize) -> Result<Workspace, DeviceError>,
) -> Result<&mut Workspace, DeviceError> {
    let wanted = wanted.max(1);
    // Free a workspace too small before allocating the larger one.
    slot.take_if(|ws| ws.capacity < wanted);
    if let Some(ws) = slot.take() {
        return Ok(slot.insert(ws));
    }
    let mut capacity = wanted;
    loop {
        match make(capacity) {
            Ok(ws) => return Ok(slot.insert(ws)),
            Err(err) if err.fault == Fault::OutOfMemory && capacity > 1 => {
                capacity = capacity.div_ceil(2);
            }
            Err(err) => return Err(err),
        }
    }
}

fn blas_error(err: cudarc::cublas::result::CublasError) -> DeviceError {
    DeviceError {
        fault: classify_blas(err.0),
        message: format!("cuBLAS: {err}"),
    }
}

fn plan_error(message: String) -> DeviceError {
    DeviceError {
        fault: Fault::Other,
        message: format!("transformer plan: {message}"),
    }
}

impl DeviceModel {
    fn length(&self, ws: &Workspace, buf: Buf) -> usize {
        match buf {
            Buf::Params => self.params.len(),
            Buf::Positions => self.positions.as_ref().map_or(0, CudaSlice::len),
            Buf::Work(i) => ws.buffers.get(i).map_or(0, CudaSlice::len),
        }
    }

    /// Runs `ops` (a plan from `plan::forward_plan`) on the workspace.
    pub(super) fn run(&self, ws: &mut Workspace, ops: &[Op]) -> Result<(), DeviceError> {
        for op in ops {
            op.check(&|buf| self.length(ws, buf)).map_err(plan_error)?;
            self.launch(ws, op)?;
        }
        Ok(())
    }

    /// The output view (mutable) and the input views of `op`, which
    /// `Op::check` has shown lie in their buffers, the output in a
    /// workspace buffer no input is in.
    fn views<'a>(
        &'a self,
        ws: &'a mut Workspace,
        output: View,
        inputs: &[View],
    ) -> Result<(CudaViewMut<'a, f32>, Vec<CudaView<'a, f32>>), DeviceError> {
        let Buf::Work(o) = output.buf else {
            return Err(plan_error("an output outside the workspace".into()));
        };
        let (before, rest) = ws.buffers.split_at_mut(o);
        let Some((target, after)) = rest.split_first_mut() else {
            return Err(plan_error(format!("no workspace buffer {o}")));
        };
        let range = |v: &View| v.offset..v.offset + v.len;
        let out = target.slice_mut(range(&output));
        let mut views = Vec::with_capacity(inputs.len());
        for view in inputs {
            let slice = match view.buf {
                Buf::Params => &self.params,
                Buf::Positions => self
                    .positions
                    .as_ref()
                    .ok_or_else(|| plan_error("no position table on the device".into()))?,
                Buf::Work(i) if i < o => &before[i],
                Buf::Work(i) if i > o => after
                    .get(i - o - 1)
                    .ok_or_else(|| plan_error(format!("no workspace buffer {i}")))?,
                Buf::Work(_) => return Err(plan_error("an op reads what it writes".into())),
            };
            views.push(slice.slice(range(view)));
        }
        Ok((out, views))
    }

    fn launch(&self, ws: &mut Workspace, op: &Op) -> Result<(), DeviceError> {
        let (mut out, inputs) = self.views(ws, op.output(), &op.inputs())?;
        let k = &self.kernels;
        // Every count below was bounded by `Op::check` (a view's length);
        // the u32 ones are widths and windows, far below u32::MAX for any
        // model `validate` admits.
        let u32_of = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
        match op {
            Op::Gemm(g) => return self.gemm(g, &inputs[0], &inputs[1], &mut out),
            Op::Normalize { n, features, .. } => {
                let (n64, features) = (*n as u64, u32_of(*features));
                let mut launch = self.stream.launch_builder(&k.normalize);
                launch
                    .arg(&n64)
                    .arg(&features)
                    .arg(&inputs[0])
                    .arg(&inputs[1])
                    .arg(&inputs[2])
                    .arg(&mut out);
                // SAFETY: tf_normalize(u64, u32, const f32*, const f32*,
                // const f32*, f32*); x and out hold n values, mean and
                // stdev `features` (Op::check).
                #[allow(unsafe_code)]
                unsafe {
                    launch.launch(elementwise(*n))?;
                }
            }
            Op::BiasPositions {
                n, cols, period, ..
            } => {
                let (n64, cols, period) = (*n as u64, u32_of(*cols), u32_of(*period));
                let mut launch = self.stream.launch_builder(&k.bias_positions);
                launch
                    .arg(&n64)
                    .arg(&cols)
                    .arg(&period)
                    .arg(&inputs[0])
                    .arg(&inputs[1])
                    .arg(&mut out);
                // SAFETY: tf_bias_positions(u64, u32, u32, const f32*,
                // const f32*, f32*); y holds n values, bias `cols`,
                // positions `period x cols` (Op::check).
                #[allow(unsafe_code)]
                unsafe {
                    launch.launch(elementwise(*n))?;
                }
            }
            Op::BiasAdd { n, cols, .. } | Op::BiasGelu { n, cols, .. } => {
                let function = match op {
                    Op::BiasAdd { .. } => &k.bias_add,
                    _ => &k.bias_gelu,
                };
                let (n64, cols) = (*n as u64, u32_of(*cols));
                let mut launch = self.stream.launch_builder(function);
                launch.arg(&n64).arg(&cols).arg(&inputs[0]).arg(&mut out);
                // SAFETY: tf_bias_add / tf_bias_gelu(u64, u32, const f32*,
                // f32*); y holds n values, bias `cols` (Op::check).
                #[allow(unsafe_code)]
                unsafe {
                    launch.launch(elementwise(*n))?;
                }
            }
            Op::LayerNorm { rows, width, .. } => {
                let (rows32, width) = (u32_of(*rows), u32_of(*width));
                let mut launch = self.stream.launch_builder(&k.layer_norm);
                launch
                    .arg(&rows32)
                    .arg(&width)
                    .arg(&inputs[0])
                    .arg(&inputs[1])
                    .arg(&inputs[2])
                    .arg(&mut out);
                // SAFETY: tf_layer_norm(u32, u32, const f32*, const f32*,
                // const f32*, f32*) in blocks of (32, TF_ROWS); x and out
                // hold rows x width values, gain and bias `width`.
                #[allow(unsafe_code)]
                unsafe {
                    launch.launch(warp_per_row(*rows))?;
                }
            }
            Op::Softmax {
                rows,
                width,
                causal,
                scale,
                ..
            } => {
                let (rows64, width) = (*rows as u64, u32_of(*width));
                let causal = u32::from(*causal);
                let mut launch = self.stream.launch_builder(&k.softmax);
                launch
                    .arg(&rows64)
                    .arg(&width)
                    .arg(&causal)
                    .arg(scale)
                    .arg(&mut out);
                // SAFETY: tf_softmax(u64, u32, u32, f32, f32*) in blocks of
                // (32, TF_ROWS); scores hold rows x width values.
                #[allow(unsafe_code)]
                unsafe {
                    launch.launch(warp_per_row(*rows))?;
                }
            }
            Op::Pool {
                n,
                steps,
                width,
                mean,
                ..
            } => {
                let (n64, steps, width) = (*n as u64, u32_of(*steps), u32_of(*width));
                let mean = u32::from(*mean);
                let mut launch = self.stream.launch_builder(&k.pool);
                launch
                    .arg(&n64)
                    .arg(&steps)
                    .arg(&width)
                    .arg(&mean)
                    .arg(&inputs[0])
                    .arg(&mut out);
                // SAFETY: tf_pool(u64, u32, u32, u32, const f32*, f32*);
                // pooled holds n = windows x width values, z windows x
                // steps x width.
                #[allow(unsafe_code)]
                unsafe {
                    launch.launch(elementwise(*n))?;
                }
            }
            Op::Copy { src, .. } => {
                let mut dst = out.slice_mut(..src.len);
                self.stream.memcpy_dtod(&inputs[0], &mut dst)?;
            }
            Op::Gelu { n, .. } | Op::GeluBack { n, .. } => {
                let function = match op {
                    Op::Gelu { .. } => &k.gelu,
                    _ => &k.gelu_backward,
                };
                let n64 = *n as u64;
                let mut launch = self.stream.launch_builder(function);
                launch.arg(&n64).arg(&inputs[0]).arg(&mut out);
                // SAFETY: tf_gelu / tf_gelu_backward(u64, const f32*,
                // f32*); u and the output hold n values (Op::check).
                #[allow(unsafe_code)]
                unsafe {
                    launch.launch(elementwise(*n))?;
                }
            }
            Op::LnStats { rows, width, .. } => {
                let (rows32, width) = (u32_of(*rows), u32_of(*width));
                let mut launch = self.stream.launch_builder(&k.ln_stats);
                launch
                    .arg(&rows32)
                    .arg(&width)
                    .arg(&inputs[0])
                    .arg(&mut out);
                // SAFETY: tf_ln_stats(u32, u32, const f32*, f32*) in blocks
                // of (32, TF_ROWS); x holds rows x width values, stats 2
                // rows (Op::check).
                #[allow(unsafe_code)]
                unsafe {
                    launch.launch(warp_per_row(*rows))?;
                }
            }
            Op::LnBack {
                rows,
                width,
                accumulate,
                ..
            } => {
                let (rows32, width) = (u32_of(*rows), u32_of(*width));
                let accumulate = u32::from(*accumulate);
                let mut launch = self.stream.launch_builder(&k.ln_backward);
                launch
                    .arg(&rows32)
                    .arg(&width)
                    .arg(&accumulate)
                    .arg(&inputs[0])
                    .arg(&inputs[1])
                    .arg(&inputs[2])
                    .arg(&inputs[3])
                    .arg(&mut out);
                // SAFETY: tf_ln_backward(u32, u32, u32, const f32* dy,
                // const f32* x, const f32* stats, const f32* gain, f32*
                // dx) in blocks of (32, TF_ROWS); dy, x and dx hold rows x
                // width values, stats 2 rows, gain width (Op::check).
                #[allow(unsafe_code)]
                unsafe {
                    launch.launch(warp_per_row(*rows))?;
                }
            }
            Op::LnGainGrad { rows, width, .. } => {
                let (rows32, width32) = (u32_of(*rows), u32_of(*width));
                let mut launch = self.stream.launch_builder(&k.ln_gain_grad);
                launch
                    .arg(&rows32)
                    .arg(&width32)
                    .arg(&inputs[0])
                    .arg(&inputs[1])
                    .arg(&inputs[2])
                    .arg(&mut out);
                // SAFETY: tf_ln_gain_grad(u32, u32, const f32* dy, const
                // f32* x, const f32* stats, f32* dgain) in blocks of (32,
                // 8); dy and x hold rows x width values, stats 2 rows,
                // dgain width (Op::check).
                #[allow(unsafe_code)]
                unsafe {
                    launch.launch(column_blocks(*width))?;
                }
            }
            Op::ColumnSums { rows, cols, .. } => {
                let (rows32, cols32) = (u32_of(*rows), u32_of(*cols));
                let mut launch = self.stream.launch_builder(&k.column_sums);
                launch
                    .arg(&rows32)
                    .arg(&cols32)
                    .arg(&inputs[0])
                    .arg(&mut out);
                // SAFETY: tf_column_sums(u32, u32, const f32*, f32*) in
                // blocks of (32, 8); m holds rows x cols values, sums cols
                // (Op::check).
                #[allow(unsafe_code)]
                unsafe {
                    launch.launch(column_blocks(*cols))?;
                }
            }
            Op::SoftmaxBack {
                rows, width, scale, ..
            } => {
                let (rows64, width) = (*rows as u64, u32_of(*width));
                let mut launch = self.stream.launch_builder(&k.softmax_backward);
                launch
                    .arg(&rows64)
                    .arg(&width)
                    .arg(scale)
                    .arg(&inputs[0])
                    .arg(&mut out);
                // SAFETY: tf_softmax_backward(u64, u32, f32, const f32*,
                // f32*) in blocks of (32, TF_ROWS); probs and d hold rows x
                // width values (Op::check).
                #[allow(unsafe_code)]
                unsafe {
                    launch.launch(warp_per_row(*rows))?;
                }
            }
            Op::PoolBack {
                n,
                steps,
                width,
                mean,
                ..
            } => {
                let (n64, steps, width) = (*n as u64, u32_of(*steps), u32_of(*width));
                let mean = u32::from(*mean);
                let mut launch = self.stream.launch_builder(&k.pool_backward);
                launch
                    .arg(&n64)
                    .arg(&steps)
                    .arg(&width)
                    .arg(&mean)
                    .arg(&inputs[0])
                    .arg(&mut out);
                // SAFETY: tf_pool_backward(u64, u32, u32, u32, const f32*,
                // f32*); dz holds n = windows x steps x width values,
                // dpooled windows x width (Op::check).
                #[allow(unsafe_code)]
                unsafe {
                    launch.launch(elementwise(*n))?;
                }
            }
        }
        Ok(())
    }

    fn gemm(
        &self,
        g: &GemmOp,
        a: &CudaView<'_, f32>,
        b: &CudaView<'_, f32>,
        c: &mut CudaViewMut<'_, f32>,
    ) -> Result<(), DeviceError> {
        let op = |t| {
            if t {
                cublasOperation_t::CUBLAS_OP_T
            } else {
                cublasOperation_t::CUBLAS_OP_N
            }
        };
        // Op::check has shown every dimension fits i32.
        let int = |v: usize| i32::try_from(v).unwrap_or(i32::MAX);
        let long = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
        let gemm = GemmConfig {
            transa: op(g.transpose_a),
            transb: op(g.transpose_b),
            m: int(g.m),
            n: int(g.n),
            k: int(g.k),
            alpha: g.alpha,
            lda: int(g.lda),
            ldb: int(g.ldb),
            beta: g.beta,
            ldc: int(g.ldc),
        };
        // SAFETY: Op::check has shown every matrix cuBLAS reads or writes
        // (batch - 1 strides plus ld x (columns - 1) + rows floats from its
        // view's start) lies inside its view; the buffers live on the
        // handle's stream.
        #[allow(unsafe_code)]
        if g.batch == 1 {
            unsafe { self.blas.gemm(gemm, a, b, c) }
        } else {
            let config = StridedBatchedConfig {
                gemm,
                batch_size: int(g.batch),
                stride_a: long(g.stride_a),
                stride_b: long(g.stride_b),
                stride_c: long(g.stride_c),
            };
            unsafe { self.blas.gemm_strided_batched(config, a, b, c) }
        }
        .map_err(blas_error)
    }
}
