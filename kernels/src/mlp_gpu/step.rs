//! One training step's launches: gather the mini-batch, the loss
//! gradient, backpropagation and the optimiser's update.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, PushKernelArg};

use super::device::{DeviceModel, Workspace, activation_code, elementwise};
use super::gemm::Gemm;
use super::train::{OptimizerState, Training};
use crate::driver::{DeviceError, Fault};
use crate::mlp::Optimizer;

/// Adam's bias corrections `1 / (1 - b^t)` for step `t` (from 1), in f64
/// rounded to f32, as the CPU twin computes them.
pub(super) fn adam_corrections(beta1: f32, beta2: f32, step: u64) -> (f32, f32) {
    let t = i32::try_from(step).unwrap_or(i32::MAX);
    let correction = |beta: f32| (1.0 / (1.0 - f64::from(beta).powi(t))) as f32;
    (correction(beta1), correction(beta2))
}

/// `dst` row r = `src` row `order[r]`, rows of `cols`.
pub(super) fn gather(
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
pub(super) fn step(
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
pub(super) fn loss_gradient(
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
pub(super) fn activation_backward(
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
pub(super) fn update(
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
