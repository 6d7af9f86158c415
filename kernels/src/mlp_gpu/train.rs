//! Training on the device: the optimiser's state and buffers,
//! [`GpuMlp::train_step`] and [`GpuMlp::train`].

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream};

use super::device::{DeviceModel, Workspace, ensure_workspace};
use super::step::{gather, step};
use super::{GpuMlp, GpuMlpError, check_rows};
use crate::driver::{DeviceError, Fault};
use crate::mlp::{MlpError, Optimizer, TrainConfig, TrainReport, TrainWatch};
use crate::runtime::Gpu;

/// Checks an optimiser's constants as the CPU twin does.
pub(super) fn check_optimizer(optimizer: &Optimizer) -> Result<(), MlpError> {
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

/// Optimiser state, in the parameters' flat layout.
pub(super) enum OptimizerState {
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
pub(super) struct Training {
    pub(super) capacity: usize,
    /// The batch's targets; device [capacity, outputs].
    pub(super) targets: CudaSlice<f32>,
    /// The loss gradient with respect to a layer's output, ping-ponged
    /// between layers; device [capacity, widest layer].
    pub(super) deltas: [CudaSlice<f32>; 2],
    /// Squared errors of the batch; device [capacity, outputs].
    pub(super) squared: CudaSlice<f32>,
    /// Per-output sums of squared errors, one row per step of an epoch;
    /// device [steps, outputs], grown as needed.
    pub(super) losses: CudaSlice<f32>,
    /// Gradients, flat like the parameters.
    pub(super) grads: CudaSlice<f32>,
    pub(super) optimizer: OptimizerState,
}

impl Training {
    pub(super) fn new(
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

    pub(super) fn bytes(&self) -> u64 {
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
    pub(super) fn matches(&self, optimizer: &Optimizer) -> bool {
        matches!(
            (&self.optimizer, optimizer),
            (OptimizerState::Sgd { .. }, Optimizer::Sgd { .. })
                | (OptimizerState::Adam { .. }, Optimizer::Adam { .. })
        )
    }
}

pub(super) fn optimizer_state(
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

/// The training set on the device for one [`GpuMlp::train`] run.
pub(super) struct DeviceData {
    /// device [samples, inputs]
    pub(super) x: CudaSlice<f32>,
    /// device [samples, outputs]
    pub(super) y: CudaSlice<f32>,
    /// This epoch's sample order; device [samples].
    pub(super) order: CudaSlice<u32>,
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
        let timer = gpu.kernel_timer()?;
        step(model, ws, training, batch, optimizer, 0)?;
        timer.finish()?;
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
        self.train_until(gpu, x, y, samples, config, TrainWatch::NONE)
    }

    /// [`GpuMlp::train`], asking `watch.stop` before each epoch: once it
    /// says yes, training ends with [`MlpError::Stopped`].
    /// `watch.epoch_done` hears each finished epoch.
    pub fn train_until(
        &mut self,
        gpu: &Gpu,
        x: &[f32],
        y: &[f32],
        samples: usize,
        config: &TrainConfig,
        watch: TrainWatch<'_>,
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
            if (watch.stop)() {
                return Err(MlpError::Stopped.into());
            }
            let order = crate::mlp::epoch_order(samples, config.seed, epoch);
            let order: Vec<u32> = order.iter().map(|&i| i as u32).collect();
            stream
                .memcpy_htod(&order, &mut data.order)
                .map_err(DeviceError::from)?;
            let loss = self.epoch(gpu, &mut data, samples, batch, &config.optimizer)?;
            losses.push(loss);
            (watch.epoch_done)(epoch, loss);
            steps += steps_per_epoch as u64;
        }
        Ok(TrainReport { losses, steps })
    }

    /// One pass over `data` in its order; returns the mean squared error
    /// over the epoch's samples, each taken before its step's update.
    fn epoch(
        &mut self,
        gpu: &Gpu,
        data: &mut DeviceData,
        samples: usize,
        batch: usize,
        optimizer: &Optimizer,
    ) -> Result<f64, GpuMlpError> {
        let (model, ws, training) = self.parts()?;
        let outputs = model.outputs();
        let steps = samples.div_ceil(batch);
        let timer = gpu.kernel_timer()?;
        for s in 0..steps {
            let rows = s * batch..((s + 1) * batch).min(samples);
            let count = rows.len();
            let order = data.order.slice(rows);
            gather(model, &order, &data.x, model.inputs(), &mut ws.raw)?;
            gather(model, &order, &data.y, outputs, &mut training.targets)?;
            step(model, ws, training, count, optimizer, s)?;
        }
        timer.finish()?;
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
