//! Forward: the network's outputs and its loss on the CPU.

use rayon::prelude::*;

use super::gemm::{Epilogue, Kernel, Packed, gemm_rows, pack_weights_transposed, row_major};
use super::{Mlp, MlpError, check_length};

/// Batch rows per rayon task in [`forward_cpu`]: the block's activations
/// (256 x 256 floats per layer) stay in L2 from one layer to the next.
pub(super) const FORWARD_BLOCK_ROWS: usize = 256;

/// `(x - mean) / std`, row by row, into `out`.
pub(super) fn normalise_into(mlp: &Mlp, inputs: &[f32], out: &mut [f32]) {
    let width = mlp.inputs();
    for (row_in, row_out) in inputs.chunks_exact(width).zip(out.chunks_exact_mut(width)) {
        for k in 0..width {
            row_out[k] = (row_in[k] - mlp.input_mean[k]) / mlp.input_std[k];
        }
    }
}

/// The network's outputs (`batch x outputs`, row-major) for `inputs`
/// (`batch x inputs`, row-major): normalisation, then `y = x W^T + b` per
/// layer with the activation between hidden layers. Blocks of batch rows
/// run in parallel and go through every layer while their activations are
/// in cache; the bits do not depend on the thread count or the batch split.
pub fn forward_cpu(mlp: &Mlp, inputs: &[f32], batch: usize) -> Result<Vec<f32>, MlpError> {
    mlp.check()?;
    check_length("inputs", inputs, batch, mlp.inputs())?;
    let kernel = Kernel::detect();
    let packed: Vec<Packed> = mlp
        .layers
        .iter()
        .map(|layer| pack_weights_transposed(kernel, layer))
        .collect();
    let mut outputs = vec![0.0; batch * mlp.outputs()];
    outputs
        .par_chunks_mut(FORWARD_BLOCK_ROWS * mlp.outputs())
        .zip(inputs.par_chunks(FORWARD_BLOCK_ROWS * mlp.inputs()))
        .for_each(|(out, block)| forward_block(kernel, mlp, &packed, block, out));
    Ok(outputs)
}

/// One block of rows through the whole network.
pub(super) fn forward_block(
    kernel: Kernel,
    mlp: &Mlp,
    packed: &[Packed],
    inputs: &[f32],
    out: &mut [f32],
) {
    let rows = inputs.len() / mlp.inputs();
    let mut current = vec![0.0; inputs.len()];
    normalise_into(mlp, inputs, &mut current);
    let last = mlp.layers.len() - 1;
    for (index, (layer, b)) in mlp.layers.iter().zip(packed).enumerate() {
        let epilogue = Epilogue {
            bias: Some(&layer.bias),
            activation: (index < last).then_some(mlp.activation),
            derivative: None,
        };
        let a = row_major(&current, rows, layer.inputs);
        if index == last {
            gemm_rows(kernel, a, 0..rows, b, epilogue, out);
            return;
        }
        let mut next = vec![0.0; rows * layer.outputs];
        gemm_rows(kernel, a, 0..rows, b, epilogue, &mut next);
        current = next;
    }
}

/// Mean squared error of the network on `samples` rows of `x` against `y`
/// (`samples x outputs`): the mean over samples and outputs, summed in f64
/// in a fixed order.
pub fn loss_cpu(mlp: &Mlp, x: &[f32], y: &[f32], samples: usize) -> Result<f64, MlpError> {
    mlp.check()?;
    check_length("targets", y, samples, mlp.outputs())?;
    if samples == 0 {
        return Err(MlpError::BadTraining("no samples".into()));
    }
    let predictions = forward_cpu(mlp, x, samples)?;
    let block = FORWARD_BLOCK_ROWS * mlp.outputs();
    // Per-block sums, then the blocks in order: the same sum whatever the
    // thread count.
    let partial: Vec<f64> = predictions
        .par_chunks(block)
        .zip(y.par_chunks(block))
        .map(|(p, t)| squared_error(p, t))
        .collect();
    Ok(partial.iter().sum::<f64>() / (samples * mlp.outputs()) as f64)
}

pub(super) fn squared_error(predictions: &[f32], targets: &[f32]) -> f64 {
    predictions
        .iter()
        .zip(targets)
        .map(|(p, t)| {
            let d = f64::from(*p) - f64::from(*t);
            d * d
        })
        .sum()
}
