//! Training on the GPU: each mini-batch's windows go through the training
//! forward (`backward.rs`, every activation kept) in runs that fit the
//! training workspace; the host takes the outputs, computes the MSE loss
//! and its gradient as the CPU twin does, and sends the gradient back for
//! the backward, which adds each run's share to one gradient buffer; then
//! one Adam (or SGD) update on the device (`tf_adam`, `tf_sgd`: what the
//! CPU twin's `apply_update` computes). The parameters stay on the device throughout;
//! [`GpuTransformer::download`] takes them back.
//!
//! The input normalisation (the first `2 x features` parameters) is data:
//! its gradient is zero and the update leaves it be, as the CPU twin's.

use cudarc::driver::{CudaFunction, CudaSlice, PushKernelArg};

use super::backward::{
    T_DOUT, T_GRAD, T_OUT, T_RAW, TRAIN_WORKSPACE, backward_plan, train_fixed, train_forward_plan,
    train_per_window,
};
use super::device::{Workspace, elementwise, ensure_with};
use super::plan::{Op, chunks, table_floats};
use super::{GpuTransformer, GpuTransformerError};
use crate::driver::DeviceError;
use crate::runtime::Gpu;
use crate::transformer::{
    Config, Optimizer, TrainConfig, TrainReport, TrainWatch, TransformerError, check_length,
};

/// What training keeps on the device between steps.
pub(super) struct Training {
    /// The training forward's activations and the backward's buffers, for
    /// up to `capacity` windows a run, and the gradient.
    workspace: Option<Workspace>,
    /// Adam's first moments (SGD's velocity); device [parameters].
    first: CudaSlice<f32>,
    /// Adam's second moments; device [parameters].
    second: CudaSlice<f32>,
    /// Updates made since the moments were zeroed.
    step: u64,
    adam: CudaFunction,
    sgd: CudaFunction,
}

/// The training buffers' floats for `capacity` windows a run.
fn workspace_floats(config: &Config, capacity: usize) -> u64 {
    let per: usize = train_per_window(config).iter().sum();
    let fixed: usize = train_fixed(config).iter().sum();
    (capacity as u64).saturating_mul(per as u64) + fixed as u64
}

/// Adam's bias corrections `1 / (1 - b^t)` for step `t` (from 1), in f64
/// rounded to f32, as the CPU twin's `apply_update` computes them.
fn adam_corrections(beta1: f32, beta2: f32, step: u64) -> (f32, f32) {
    let t = i32::try_from(step).unwrap_or(i32::MAX);
    let correction = |beta: f32| (1.0 / (1.0 - f64::from(beta).powi(t))) as f32;
    (correction(beta1), correction(beta2))
}

impl GpuTransformer {
    /// Device bytes training a model of `config` needs with runs of
    /// `batch` windows: parameters, the position table, the optimiser's
    /// two moments, the gradient, and the training forward's activations
    /// (every layer's, kept for the backward) with the backward's buffers.
    /// What the ledger books for a `train`.
    pub fn train_bytes(config: &Config, batch: usize) -> u64 {
        3 * config.parameter_bytes()
            + 4 * table_floats(config) as u64
            + 4 * workspace_floats(config, batch)
    }

    /// The most windows of one training run whose
    /// [`GpuTransformer::train_bytes`] fits in `bytes`: 0 when not even one
    /// window fits. The caller caps the runs with
    /// [`GpuTransformer::set_max_batch`]; a larger mini-batch is then cut
    /// into runs whose gradients add up.
    pub fn train_batch_that_fits(config: &Config, bytes: u64) -> usize {
        let fixed = Self::train_bytes(config, 0);
        let per = Self::train_bytes(config, 1) - fixed;
        match bytes.checked_sub(fixed) {
            Some(room) if per > 0 => usize::try_from(room / per).unwrap_or(usize::MAX),
            _ => 0,
        }
    }

    /// Forgets the optimiser's moments: the next step starts Adam afresh.
    pub fn reset_optimizer(&mut self) {
        self.training = None;
    }

    /// Frees the training buffers and the optimiser state.
    pub fn release_training(&mut self) {
        self.training = None;
    }

    /// Bytes the training state holds now (moments and buffers).
    pub(super) fn training_bytes(&self) -> u64 {
        self.training.as_ref().map_or(0, |t| {
            4 * (t.first.len() + t.second.len()) as u64
                + t.workspace.as_ref().map_or(0, Workspace::bytes)
        })
    }

    fn training(&mut self, gpu: &Gpu) -> Result<&mut Training, GpuTransformerError> {
        if self.training.is_none() {
            let n = self.model.params.len();
            let stream = &self.model.stream;
            self.training = Some(Training {
                workspace: None,
                first: stream.alloc_zeros(n).map_err(DeviceError::from)?,
                second: stream.alloc_zeros(n).map_err(DeviceError::from)?,
                step: 0,
                adam: gpu.function(super::SOURCE.module, "tf_adam")?,
                sgd: gpu.function(super::SOURCE.module, "tf_sgd")?,
            });
        }
        match self.training.as_mut() {
            Some(training) => Ok(training),
            None => Err(DeviceError {
                fault: crate::driver::Fault::Other,
                message: "training state missing".into(),
            }
            .into()),
        }
    }

    /// Computes the MSE gradient over `windows` windows into the gradient
    /// buffer (zeroed first), in runs that fit; returns the squared error
    /// summed over the batch (in f64, window order, as the CPU twin).
    fn accumulate(
        &mut self,
        gpu: &Gpu,
        inputs: &[f32],
        targets: &[f32],
        windows: usize,
    ) -> Result<f64, GpuTransformerError> {
        let config = self.model.config;
        let (per, o) = (config.window_floats(), config.outputs);
        let limit = self.max_batch.min(i32::MAX as usize / config.window.max(1));
        let stream = std::sync::Arc::clone(&self.model.stream);
        self.training(gpu)?;
        let model = &self.model;
        let Some(training) = self.training.as_mut() else {
            return Ok(0.0);
        };
        let ws = ensure_with(&mut training.workspace, windows.min(limit), |capacity| {
            let ws = Workspace::with_sizes(
                &stream,
                &train_per_window(&config),
                &train_fixed(&config),
                capacity,
            )?;
            debug_assert_eq!(ws.buffers.len(), TRAIN_WORKSPACE.len());
            Ok(ws)
        })?;
        let capacity = ws.capacity.min(limit);
        stream
            .memset_zeros(&mut ws.buffers[T_GRAD])
            .map_err(DeviceError::from)?;
        // d(mean of squares)/dy = 2 (y - t) / (batch x outputs), over the
        // whole mini-batch whatever the runs.
        let factor = 2.0 / (windows * o) as f32;
        let mut error = 0.0;
        let mut plans: Vec<(usize, Vec<Op>, Vec<Op>)> = Vec::new();
        for run in chunks(windows, capacity) {
            let count = run.len();
            let values = &inputs[run.start * per..run.end * per];
            stream
                .memcpy_htod(values, &mut ws.buffers[T_RAW].slice_mut(..values.len()))
                .map_err(DeviceError::from)?;
            if !plans.iter().any(|(n, _, _)| *n == count) {
                plans.push((
                    count,
                    train_forward_plan(&config, &model.offsets, count),
                    backward_plan(&config, &model.offsets, count),
                ));
            }
            let Some((_, forward, backward)) = plans.iter().find(|(n, _, _)| *n == count) else {
                continue;
            };
            model.run(ws, forward)?;
            let mut y = vec![0.0f32; count * o];
            stream
                .memcpy_dtoh(&ws.buffers[T_OUT].slice(..count * o), &mut y)
                .map_err(DeviceError::from)?;
            stream.synchronize().map_err(DeviceError::from)?;
            let wanted = &targets[run.start * o..run.end * o];
            let mut dy = Vec::with_capacity(y.len());
            for (y, t) in y.iter().zip(wanted) {
                let d = f64::from(*y) - f64::from(*t);
                error += d * d;
                dy.push(factor * (y - t));
            }
            stream
                .memcpy_htod(&dy, &mut ws.buffers[T_DOUT].slice_mut(..dy.len()))
                .map_err(DeviceError::from)?;
            model.run(ws, backward)?;
        }
        Ok(error)
    }

    /// The MSE gradient over `windows` windows of `inputs` against
    /// `targets` (flat, like the parameters) and the loss, as
    /// [`crate::transformer::gradients_cpu`]; the parameters unchanged.
    pub fn gradients(
        &mut self,
        gpu: &Gpu,
        inputs: &[f32],
        targets: &[f32],
        windows: usize,
    ) -> Result<(Vec<f32>, f64), GpuTransformerError> {
        let error = self.checked_accumulate(gpu, inputs, targets, windows)?;
        let stream = std::sync::Arc::clone(&self.model.stream);
        let training = self.training(gpu)?;
        let grad = match training.workspace.as_ref() {
            Some(ws) => stream.clone_dtoh(&ws.buffers[T_GRAD]),
            None => Ok(Vec::new()),
        }
        .map_err(DeviceError::from)?;
        stream.synchronize().map_err(DeviceError::from)?;
        let o = self.model.config.outputs;
        Ok((grad, error / (windows * o) as f64))
    }

    fn checked_accumulate(
        &mut self,
        gpu: &Gpu,
        inputs: &[f32],
        targets: &[f32],
        windows: usize,
    ) -> Result<f64, GpuTransformerError> {
        let config = self.model.config;
        check_length("inputs", inputs, windows, config.window_floats())?;
        check_length("targets", targets, windows, config.outputs)?;
        self.check_gpu(gpu)?;
        if windows == 0 {
            return Err(TransformerError::BadTraining("no windows".into()).into());
        }
        let timer = gpu.kernel_timer()?;
        let error = self.accumulate(gpu, inputs, targets, windows)?;
        timer.finish()?;
        Ok(error)
    }

    /// One optimiser step on one mini-batch of `batch` windows; returns
    /// the loss before it. The GPU twin of
    /// [`crate::transformer::train_step`], the optimiser's moments kept
    /// between calls (until [`GpuTransformer::reset_optimizer`]).
    pub fn train_step(
        &mut self,
        gpu: &Gpu,
        inputs: &[f32],
        targets: &[f32],
        batch: usize,
        optimizer: &Optimizer,
    ) -> Result<f64, GpuTransformerError> {
        let error = self.checked_accumulate(gpu, inputs, targets, batch)?;
        self.update(optimizer)?;
        Ok(error / (batch * self.model.config.outputs) as f64)
    }

    /// The optimiser's update from the gradient buffer.
    fn update(&mut self, optimizer: &Optimizer) -> Result<(), GpuTransformerError> {
        let frozen = 2 * self.model.config.features;
        let stream = std::sync::Arc::clone(&self.model.stream);
        let training = self.training.as_mut().ok_or_else(|| DeviceError {
            fault: crate::driver::Fault::Other,
            message: "no gradient to apply".into(),
        })?;
        let Some(ws) = training.workspace.as_ref() else {
            return Err(DeviceError {
                fault: crate::driver::Fault::Other,
                message: "no gradient to apply".into(),
            }
            .into());
        };
        training.step += 1;
        let params = &mut self.model.params;
        let n = params.len().saturating_sub(frozen);
        if n == 0 {
            return Ok(());
        }
        let n64 = n as u64;
        let grad = ws.buffers[T_GRAD].slice(frozen..frozen + n);
        let mut first = training.first.slice_mut(frozen..frozen + n);
        let mut param = params.slice_mut(frozen..frozen + n);
        match *optimizer {
            Optimizer::Sgd { lr, momentum } => {
                let mut launch = stream.launch_builder(&training.sgd);
                launch
                    .arg(&n64)
                    .arg(&lr)
                    .arg(&momentum)
                    .arg(&grad)
                    .arg(&mut first)
                    .arg(&mut param);
                // SAFETY: tf_sgd(u64, f32, f32, const f32*, f32*, f32*);
                // the three views hold n values each.
                #[allow(unsafe_code)]
                unsafe {
                    launch.launch(elementwise(n)).map_err(DeviceError::from)?;
                }
            }
            Optimizer::Adam {
                lr,
                beta1,
                beta2,
                eps,
            } => {
                let (c1, c2) = adam_corrections(beta1, beta2, training.step);
                let mut second = training.second.slice_mut(frozen..frozen + n);
                let mut launch = stream.launch_builder(&training.adam);
                launch
                    .arg(&n64)
                    .arg(&lr)
                    .arg(&beta1)
                    .arg(&beta2)
                    .arg(&eps)
                    .arg(&c1)
                    .arg(&c2)
                    .arg(&grad)
                    .arg(&mut first)
                    .arg(&mut second)
                    .arg(&mut param);
                // SAFETY: tf_adam(u64, f32 x 6, const f32*, f32*, f32*,
                // f32*); the four views hold n values each.
                #[allow(unsafe_code)]
                unsafe {
                    launch.launch(elementwise(n)).map_err(DeviceError::from)?;
                }
            }
        }
        Ok(())
    }

    /// Trains in place on `samples` windows against `targets` (`samples x
    /// outputs`) as [`crate::transformer::train_cpu_until`]: the same
    /// seeded epoch order and mini-batches, fresh optimiser moments, and
    /// `watch.stop` asked before each epoch.
    pub fn train_until(
        &mut self,
        gpu: &Gpu,
        inputs: &[f32],
        targets: &[f32],
        samples: usize,
        config: &TrainConfig,
        watch: TrainWatch<'_>,
    ) -> Result<TrainReport, GpuTransformerError> {
        let model = self.model.config;
        let (per, o) = (model.window_floats(), model.outputs);
        check_length("inputs", inputs, samples, per)?;
        check_length("targets", targets, samples, o)?;
        self.check_gpu(gpu)?;
        if samples == 0 {
            return Err(TransformerError::BadTraining("no windows".into()).into());
        }
        if config.batch_size == 0 || config.epochs == 0 {
            return Err(TransformerError::BadTraining(
                "epochs and batch_size must be at least 1".into(),
            )
            .into());
        }
        self.reset_optimizer();
        let mut report = TrainReport {
            losses: Vec::new(),
            steps: 0,
        };
        for epoch in 0..config.epochs {
            if (watch.stop)() {
                return Err(TransformerError::Stopped.into());
            }
            let order = crate::mlp::epoch_order(samples, config.seed, epoch);
            let mut weighted = 0.0;
            for chunk in order.chunks(config.batch_size) {
                let mut x = Vec::with_capacity(chunk.len() * per);
                let mut y = Vec::with_capacity(chunk.len() * o);
                for &i in chunk {
                    x.extend_from_slice(&inputs[i * per..(i + 1) * per]);
                    y.extend_from_slice(&targets[i * o..(i + 1) * o]);
                }
                let loss = self.train_step(gpu, &x, &y, chunk.len(), &config.optimizer)?;
                weighted += loss * chunk.len() as f64;
                report.steps += 1;
            }
            let loss = weighted / samples as f64;
            report.losses.push(loss);
            (watch.epoch_done)(epoch, loss);
        }
        self.model.stream.synchronize().map_err(DeviceError::from)?;
        Ok(report)
    }
}
