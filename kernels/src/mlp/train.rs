//! Training: backpropagation, its workspace, and the training loop
//! (`train_cpu`, `train_step`, `gradients_cpu`).

use super::forward::normalise_into;
use super::gemm::{
    Derivative, Epilogue, Kernel, Packed, Strided, par_gemm, reuse_for_overwrite, row_major,
    weights_transposed,
};
use super::optimizer::{Optimizer, OptimizerState, Params, apply_update};
use super::{Activation, Mlp, MlpError, check_length, splitmix64};

/// Rows per rayon task in the training GEMMs (mini-batches of a few
/// hundred rows still split across the cores).
pub(super) const TRAIN_BLOCK_ROWS: usize = 64;

/// A training run: `epochs` passes over the samples in a seeded shuffled
/// order, in mini-batches of `batch_size` (the last one may be smaller).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub optimizer: Optimizer,
    pub seed: u64,
}

/// What a training run did.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainReport {
    /// Per epoch, the mean squared error over its mini-batches, each taken
    /// before its update (the running training loss, weighted by batch size).
    pub losses: Vec<f64>,
    /// Optimizer steps taken (mini-batches).
    pub steps: u64,
}

/// What a caller hears from a training run between epochs: whether to
/// stop (asked before each epoch), and each finished epoch (its number
/// from 0, its loss), a progress hook.
#[derive(Clone, Copy)]
pub struct TrainWatch<'a> {
    pub stop: &'a dyn Fn() -> bool,
    pub epoch_done: &'a dyn Fn(usize, f64),
}

impl std::fmt::Debug for TrainWatch<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TrainWatch")
    }
}

impl TrainWatch<'static> {
    /// Never stops, hears nothing.
    pub const NONE: Self = Self {
        stop: &|| false,
        epoch_done: &|_, _| {},
    };
}

/// The order of the samples in epoch `epoch` of a run seeded `seed`: a
/// Fisher-Yates shuffle driven by splitmix64 (the GPU path shuffles on the
/// host with this same function).
pub fn epoch_order(samples: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut state = seed
        ^ (epoch as u64)
            .wrapping_add(1)
            .wrapping_mul(0xD1B5_4A32_D192_ED03);
    let mut order: Vec<usize> = (0..samples).collect();
    for i in (1..samples).rev() {
        // Multiply-shift maps 64 random bits onto 0..=i (bias below 2^-40).
        let j = ((u128::from(splitmix64(&mut state)) * (i as u128 + 1)) >> 64) as usize;
        order.swap(i, j);
    }
    order
}

/// Trains `mlp` in place on `samples` rows of `x` (`samples x inputs`)
/// against `y` (`samples x outputs`) with the mean squared error.
pub fn train_cpu(
    mlp: &mut Mlp,
    x: &[f32],
    y: &[f32],
    samples: usize,
    config: &TrainConfig,
) -> Result<TrainReport, MlpError> {
    train_cpu_until(mlp, x, y, samples, config, TrainWatch::NONE)
}

/// [`train_cpu`], asking `watch.stop` before each epoch: once it says yes,
/// training ends with [`MlpError::Stopped`] (the weights are then those of
/// the last whole epoch). `watch.epoch_done` hears each finished epoch.
pub fn train_cpu_until(
    mlp: &mut Mlp,
    x: &[f32],
    y: &[f32],
    samples: usize,
    config: &TrainConfig,
    watch: TrainWatch<'_>,
) -> Result<TrainReport, MlpError> {
    check_training(mlp, x, y, samples)?;
    config.optimizer.check()?;
    if config.batch_size == 0 {
        return Err(MlpError::BadTraining("batch size 0".into()));
    }
    let mut state = OptimizerState::new(mlp);
    let mut workspace = Workspace::new(mlp);
    let mut losses = Vec::with_capacity(config.epochs);
    for epoch in 0..config.epochs {
        if (watch.stop)() {
            return Err(MlpError::Stopped);
        }
        let order = epoch_order(samples, config.seed, epoch);
        let mut weighted = 0.0;
        for indices in order.chunks(config.batch_size) {
            let loss = step_in(
                mlp,
                &mut state,
                &mut workspace,
                x,
                y,
                samples,
                indices,
                &config.optimizer,
            )?;
            weighted += loss * indices.len() as f64;
        }
        losses.push(weighted / samples as f64);
        (watch.epoch_done)(epoch, weighted / samples as f64);
    }
    Ok(TrainReport {
        losses,
        steps: state.step,
    })
}

pub(super) fn check_training(
    mlp: &Mlp,
    x: &[f32],
    y: &[f32],
    samples: usize,
) -> Result<(), MlpError> {
    mlp.check()?;
    check_length("inputs", x, samples, mlp.inputs())?;
    check_length("targets", y, samples, mlp.outputs())?;
    if samples == 0 {
        return Err(MlpError::BadTraining("no samples".into()));
    }
    Ok(())
}

/// One optimizer step on the mini-batch `indices` (rows of `x` and `y`, in
/// that order): forward, backward, update. Returns the batch's mean squared
/// error before the update.
pub fn train_step(
    mlp: &mut Mlp,
    state: &mut OptimizerState,
    x: &[f32],
    y: &[f32],
    samples: usize,
    indices: &[usize],
    optimizer: &Optimizer,
) -> Result<f64, MlpError> {
    let mut workspace = Workspace::new(mlp);
    step_in(
        mlp,
        state,
        &mut workspace,
        x,
        y,
        samples,
        indices,
        optimizer,
    )
}

/// [`train_step`] with the run's buffers.
#[allow(clippy::too_many_arguments)]
pub(super) fn step_in(
    mlp: &mut Mlp,
    state: &mut OptimizerState,
    workspace: &mut Workspace,
    x: &[f32],
    y: &[f32],
    samples: usize,
    indices: &[usize],
    optimizer: &Optimizer,
) -> Result<f64, MlpError> {
    optimizer.check()?;
    if !(state.first.shaped_like(mlp) && state.second.shaped_like(mlp)) {
        return Err(MlpError::BadTraining(
            "the optimizer state is not shaped like the network".into(),
        ));
    }
    let loss = gradients_in(mlp, workspace, x, y, samples, indices)?;
    state.step += 1;
    apply_update(mlp, state, &workspace.gradients, optimizer);
    Ok(loss)
}

/// The mean squared error of the mini-batch `indices` and its gradient with
/// respect to every weight and bias (the inputs' normalisation is fixed).
/// Every sum over the batch runs in the order of `indices`.
pub fn gradients_cpu(
    mlp: &Mlp,
    x: &[f32],
    y: &[f32],
    samples: usize,
    indices: &[usize],
) -> Result<(f64, Params), MlpError> {
    let mut workspace = Workspace::new(mlp);
    let loss = gradients_in(mlp, &mut workspace, x, y, samples, indices)?;
    Ok((loss, workspace.gradients))
}

/// [`gradients_cpu`] into `workspace.gradients`; returns the loss.
pub(super) fn gradients_in(
    mlp: &Mlp,
    workspace: &mut Workspace,
    x: &[f32],
    y: &[f32],
    samples: usize,
    indices: &[usize],
) -> Result<f64, MlpError> {
    check_training(mlp, x, y, samples)?;
    if indices.is_empty() {
        return Err(MlpError::BadTraining("empty mini-batch".into()));
    }
    if let Some(bad) = indices.iter().find(|&&i| i >= samples) {
        return Err(MlpError::BadTraining(format!(
            "mini-batch index {bad} out of range for {samples} samples"
        )));
    }
    if !workspace.gradients.shaped_like(mlp) {
        *workspace = Workspace::new(mlp);
    }
    let kernel = Kernel::detect();
    forward_batch(kernel, mlp, x, indices, workspace);
    let loss = output_delta(mlp, workspace, y, indices);
    backward(kernel, mlp, workspace, indices.len());
    Ok(loss)
}

/// The buffers of one training step, kept from step to step: a run maps
/// them once, where fresh buffers on every mini-batch spent more time in
/// page faults than in arithmetic. Every buffer is overwritten before it is
/// read, so a step's results do not depend on what the last step left.
#[derive(Debug)]
pub(super) struct Workspace {
    /// Entry 0: the mini-batch's normalised inputs; entry l + 1: layer l's
    /// output (`batch x outputs`, row-major), kept for the backward pass.
    activations: Vec<Vec<f32>>,
    /// The loss's gradient at the output of the layer being
    /// back-propagated (`batch x outputs`), and at its input.
    delta: Vec<f32>,
    delta_next: Vec<f32>,
    /// The step's gradient, shaped like the network's parameters.
    gradients: Params,
    /// Per layer, `W^T` packed as the B of the forward GEMM.
    forward_weights: Vec<Packed>,
    /// The B operands of the backward pass: a layer's input activations
    /// transposed (for `dW`) and its weights (for the next delta).
    packed_activations: Packed,
    packed_weights: Packed,
}

impl Workspace {
    pub(super) fn new(mlp: &Mlp) -> Workspace {
        Workspace {
            activations: vec![Vec::new(); mlp.layers.len() + 1],
            delta: Vec::new(),
            delta_next: Vec::new(),
            gradients: Params::zeros(mlp),
            forward_weights: mlp.layers.iter().map(|_| Packed::empty()).collect(),
            packed_activations: Packed::empty(),
            packed_weights: Packed::empty(),
        }
    }
}

/// Fills `workspace.activations` for the rows `indices`: entry 0 is the
/// normalised inputs, entry l + 1 the output of layer l.
pub(super) fn forward_batch(
    kernel: Kernel,
    mlp: &Mlp,
    x: &[f32],
    indices: &[usize],
    workspace: &mut Workspace,
) {
    let width = mlp.inputs();
    let batch = indices.len();
    let inputs = &mut workspace.activations[0];
    reuse_for_overwrite(inputs, batch * width);
    for (row_out, &i) in inputs.chunks_exact_mut(width).zip(indices) {
        normalise_into(mlp, &x[i * width..(i + 1) * width], row_out);
    }
    let last = mlp.layers.len() - 1;
    for (index, layer) in mlp.layers.iter().enumerate() {
        let b = &mut workspace.forward_weights[index];
        b.repack(kernel, weights_transposed(layer));
        let epilogue = Epilogue {
            bias: Some(&layer.bias),
            activation: (index < last).then_some(mlp.activation),
            derivative: None,
        };
        let (done, rest) = workspace.activations.split_at_mut(index + 1);
        let out = &mut rest[0];
        reuse_for_overwrite(out, batch * layer.outputs);
        let a = row_major(&done[index], batch, layer.inputs);
        par_gemm(kernel, a, b, epilogue, out, TRAIN_BLOCK_ROWS);
    }
}

/// The batch loss; `workspace.delta` becomes `dL/d output = 2 (output - y)
/// / (batch outputs)`.
pub(super) fn output_delta(
    mlp: &Mlp,
    workspace: &mut Workspace,
    y: &[f32],
    indices: &[usize],
) -> f64 {
    let outputs = mlp.outputs();
    let predicted = &workspace.activations[mlp.layers.len()];
    let count = indices.len() * outputs;
    let scale = 2.0 / count as f32;
    let delta = &mut workspace.delta;
    reuse_for_overwrite(delta, count);
    let mut sum = 0.0;
    for (row, &i) in indices.iter().enumerate() {
        let target = &y[i * outputs..(i + 1) * outputs];
        for o in 0..outputs {
            let difference = predicted[row * outputs + o] - target[o];
            sum += f64::from(difference) * f64::from(difference);
            delta[row * outputs + o] = scale * difference;
        }
    }
    sum / count as f64
}

/// Backpropagation from `workspace.delta` (the loss's gradient at the
/// output) into `workspace.gradients`.
pub(super) fn backward(kernel: Kernel, mlp: &Mlp, workspace: &mut Workspace, batch: usize) {
    let Workspace {
        activations,
        delta,
        delta_next,
        gradients,
        packed_activations,
        packed_weights,
        ..
    } = workspace;
    for (index, layer) in mlp.layers.iter().enumerate().rev() {
        let (inputs, outputs) = (layer.inputs, layer.outputs);
        let previous = &activations[index];
        // dW (outputs x inputs) = delta^T (outputs x batch) . previous
        // (batch x inputs): the sum over the batch is the GEMM's depth.
        packed_activations.repack(
            kernel,
            Strided {
                data: previous,
                rows: inputs,
                depth: batch,
                row_stride: 1,
                depth_stride: inputs,
            },
        );
        let delta_t = Strided {
            data: delta,
            rows: outputs,
            depth: batch,
            row_stride: 1,
            depth_stride: outputs,
        };
        par_gemm(
            kernel,
            delta_t,
            packed_activations,
            Epilogue::NONE,
            &mut gradients.weight[index],
            TRAIN_BLOCK_ROWS,
        );
        let bias = &mut gradients.bias[index];
        bias.fill(0.0);
        for row in delta.chunks_exact(outputs) {
            for (sum, d) in bias.iter_mut().zip(row) {
                *sum += d;
            }
        }
        if index == 0 {
            break;
        }
        // delta_prev (batch x inputs) = delta (batch x outputs) . W, times
        // the activation's derivative, read from the activation itself.
        packed_weights.repack(
            kernel,
            Strided {
                data: &layer.weight,
                rows: inputs,
                depth: outputs,
                row_stride: 1,
                depth_stride: inputs,
            },
        );
        let epilogue = Epilogue {
            derivative: Some(Derivative {
                activation: mlp.activation,
                activated: previous,
            }),
            ..Epilogue::NONE
        };
        reuse_for_overwrite(delta_next, batch * inputs);
        par_gemm(
            kernel,
            row_major(delta, batch, outputs),
            packed_weights,
            epilogue,
            delta_next,
            TRAIN_BLOCK_ROWS,
        );
        std::mem::swap(delta, delta_next);
    }
}

/// `delta * activation'(z)`, written in terms of `a = activation(z)`.
#[inline(always)]
pub(super) fn scale_by_derivative(activation: Activation, delta: f32, activated: f32) -> f32 {
    match activation {
        Activation::Relu => {
            if activated > 0.0 {
                delta
            } else {
                0.0
            }
        }
        Activation::Tanh => delta * (1.0 - activated * activated),
    }
}
