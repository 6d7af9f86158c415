//! The model and its forward buffers on the device: the kernels of
//! `cuda/mlp.cu`, the parameters' flat layout, the forward workspace.

use std::ops::Range;
use std::sync::Arc;

use cudarc::cublas::CudaBlas;
use cudarc::driver::{
    CudaFunction, CudaSlice, CudaStream, CudaView, CudaViewMut, LaunchConfig, PushKernelArg,
};

use super::gemm::Gemm;
use super::{SOURCE, THREADS};
use crate::driver::DeviceError;
use crate::mlp::{Activation, Mlp};
use crate::runtime::Gpu;

/// The kernels of `cuda/mlp.cu`, looked up once.
pub(super) struct Kernels {
    pub(super) normalize: CudaFunction,
    pub(super) bias_activation: CudaFunction,
    pub(super) mse_gradient: CudaFunction,
    pub(super) activation_backward: CudaFunction,
    pub(super) column_sums: CudaFunction,
    pub(super) sgd: CudaFunction,
    pub(super) adam: CudaFunction,
    pub(super) gather_rows: CudaFunction,
}

impl Kernels {
    pub(super) fn load(gpu: &Gpu) -> Result<Self, DeviceError> {
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
pub(super) fn activation_code(activation: Option<Activation>) -> u32 {
    match activation {
        None => 0,
        Some(Activation::Relu) => 1,
        Some(Activation::Tanh) => 2,
    }
}

/// One thread per element, [`THREADS`] per block.
pub(super) fn elementwise(n: u64) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(u64::from(THREADS)) as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Where layer `l`'s parameters sit in the flat buffer, and its shape.
#[derive(Debug, Clone)]
pub(super) struct LayerSlot {
    pub(super) inputs: usize,
    pub(super) outputs: usize,
    pub(super) weight: Range<usize>,
    pub(super) bias: Range<usize>,
}

/// The layers' slots and the flat buffer's length.
pub(super) fn layout(mlp: &Mlp) -> (Vec<LayerSlot>, usize) {
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

/// The model on the device: what never changes size.
pub(super) struct DeviceModel {
    pub(super) blas: Arc<CudaBlas>,
    pub(super) stream: Arc<CudaStream>,
    pub(super) kernels: Kernels,
    pub(super) activation: Activation,
    pub(super) slots: Vec<LayerSlot>,
    /// The flat parameters `[W0, b0, W1, b1, ...]`; device, row-major
    /// weights.
    pub(super) params: CudaSlice<f32>,
    /// Per input feature; device [inputs].
    pub(super) mean: CudaSlice<f32>,
    pub(super) stdev: CudaSlice<f32>,
}

impl DeviceModel {
    pub(super) fn inputs(&self) -> usize {
        self.slots[0].inputs
    }

    pub(super) fn outputs(&self) -> usize {
        self.slots[self.slots.len() - 1].outputs
    }

    /// Runs the network on the first `batch` raw rows of `ws.raw`, leaving
    /// every layer's output in `ws.activations` (the last is the result).
    pub(super) fn forward(&self, ws: &mut Workspace, batch: usize) -> Result<(), DeviceError> {
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
    pub(super) fn bias_activation(
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
    pub(super) fn column_sums(
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
pub(super) struct Workspace {
    pub(super) capacity: usize,
    /// The raw inputs as they arrive; device [capacity, inputs].
    pub(super) raw: CudaSlice<f32>,
    /// `[0]`: the normalised inputs; `[l + 1]`: layer l's output after its
    /// activation; device [capacity, width].
    pub(super) activations: Vec<CudaSlice<f32>>,
}

impl Workspace {
    pub(super) fn new(
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

    pub(super) fn bytes(&self) -> u64 {
        let floats = self.raw.len() + self.activations.iter().map(|a| a.len()).sum::<usize>();
        4 * floats as u64
    }
}

/// Makes `slot` hold a workspace for at least `batch` rows: the one there
/// when it is big enough, else a new one of exactly `batch` rows.
pub(super) fn ensure_workspace<'a>(
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
