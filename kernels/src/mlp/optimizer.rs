//! The optimizers (SGD with momentum, Adam), their state, and the
//! update they apply after each step.

use rayon::prelude::*;

use super::{Mlp, MlpError};

/// How the weights move along the gradient.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Optimizer {
    /// `v = momentum v + g; p -= lr v` (PyTorch's convention).
    Sgd { lr: f32, momentum: f32 },
    /// Kingma and Ba: `m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
    /// p -= lr (m c1) / (sqrt(v c2) + eps)` with `c1 = 1 / (1 - b1^t)`,
    /// `c2 = 1 / (1 - b2^t)` computed in f64 and rounded to f32.
    Adam {
        lr: f32,
        beta1: f32,
        beta2: f32,
        eps: f32,
    },
}

impl Optimizer {
    /// Adam with the usual betas and epsilon.
    pub fn adam(lr: f32) -> Optimizer {
        Optimizer::Adam {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }

    pub(super) fn check(&self) -> Result<(), MlpError> {
        let (name, values): (&str, &[f32]) = match self {
            Optimizer::Sgd { lr, momentum } => ("SGD", &[*lr, *momentum]),
            Optimizer::Adam {
                lr,
                beta1,
                beta2,
                eps,
            } => ("Adam", &[*lr, *beta1, *beta2, *eps]),
        };
        if values.iter().all(|v| v.is_finite() && *v >= 0.0) {
            Ok(())
        } else {
            Err(MlpError::BadTraining(format!(
                "{name} parameters must be finite and non-negative: {self:?}"
            )))
        }
    }
}

/// One f32 vector per layer weight and bias, shaped like the network's
/// parameters: gradients, and the optimizer's moments.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    pub weight: Vec<Vec<f32>>,
    pub bias: Vec<Vec<f32>>,
}

impl Params {
    /// Zeros shaped like `mlp`'s parameters.
    pub fn zeros(mlp: &Mlp) -> Params {
        Params {
            weight: mlp
                .layers
                .iter()
                .map(|l| vec![0.0; l.weight.len()])
                .collect(),
            bias: mlp.layers.iter().map(|l| vec![0.0; l.bias.len()]).collect(),
        }
    }

    pub(super) fn shaped_like(&self, mlp: &Mlp) -> bool {
        self.weight.len() == mlp.layers.len()
            && self.bias.len() == mlp.layers.len()
            && mlp.layers.iter().enumerate().all(|(i, l)| {
                self.weight[i].len() == l.weight.len() && self.bias[i].len() == l.bias.len()
            })
    }
}

/// The optimizer's memory between steps: momentum (SGD), or first and
/// second moments (Adam), and the step count.
#[derive(Debug, Clone, PartialEq)]
pub struct OptimizerState {
    /// Steps taken so far; Adam's bias corrections use `step + 1`.
    pub step: u64,
    /// SGD's velocity, or Adam's first moment.
    pub first: Params,
    /// Adam's second moment (zeros, unused, under SGD).
    pub second: Params,
}

impl OptimizerState {
    pub fn new(mlp: &Mlp) -> OptimizerState {
        OptimizerState {
            step: 0,
            first: Params::zeros(mlp),
            second: Params::zeros(mlp),
        }
    }
}

/// Parameters per piece of the optimizer's update.
pub(super) const UPDATE_CHUNK: usize = 8192;

/// Below this many parameters in all, the update runs on the calling thread:
/// waking the pool costs more than it saves.
pub(super) const PARALLEL_UPDATE_MIN: usize = 32_768;

/// The optimizer's update of every parameter (element-wise, so any split
/// gives the same bits); `state.step` is already the new step's number. All
/// layers' weights and biases go to the pool as one list of pieces, one
/// parallel region per step rather than one per array.
pub(super) fn apply_update(
    mlp: &mut Mlp,
    state: &mut OptimizerState,
    gradients: &Params,
    optimizer: &Optimizer,
) {
    let rule = UpdateRule::new(optimizer, state.step);
    let OptimizerState { first, second, .. } = state;
    let params = mlp
        .layers
        .iter_mut()
        .flat_map(|l| [&mut l.weight[..], &mut l.bias[..]]);
    let firsts = pairs_mut(&mut first.weight, &mut first.bias);
    let seconds = pairs_mut(&mut second.weight, &mut second.bias);
    let grads = gradients
        .weight
        .iter()
        .zip(&gradients.bias)
        .flat_map(|(w, b)| [&w[..], &b[..]]);
    let mut total = 0;
    let pieces: Vec<UpdatePiece<'_>> = params
        .zip(firsts)
        .zip(seconds)
        .zip(grads)
        .flat_map(|(((params, first), second), gradient)| {
            total += params.len();
            params
                .chunks_mut(UPDATE_CHUNK)
                .zip(first.chunks_mut(UPDATE_CHUNK))
                .zip(second.chunks_mut(UPDATE_CHUNK))
                .zip(gradient.chunks(UPDATE_CHUNK))
                .map(|(((params, first), second), gradient)| UpdatePiece {
                    params,
                    first,
                    second,
                    gradient,
                })
        })
        .collect();
    let apply = |piece: UpdatePiece<'_>| {
        rule.apply_chunk(piece.params, piece.first, piece.second, piece.gradient)
    };
    if total < PARALLEL_UPDATE_MIN {
        pieces.into_iter().for_each(apply);
    } else {
        pieces.into_par_iter().for_each(apply);
    }
}

/// Up to [`UPDATE_CHUNK`] parameters and their optimizer state and
/// gradient, the same stretch of each array.
pub(super) struct UpdatePiece<'a> {
    params: &'a mut [f32],
    first: &'a mut [f32],
    second: &'a mut [f32],
    gradient: &'a [f32],
}

/// Per layer, its weight then its bias array of `weight` and `bias`.
pub(super) fn pairs_mut<'a>(
    weight: &'a mut [Vec<f32>],
    bias: &'a mut [Vec<f32>],
) -> impl Iterator<Item = &'a mut [f32]> {
    weight
        .iter_mut()
        .zip(bias.iter_mut())
        .flat_map(|(w, b)| [&mut w[..], &mut b[..]])
}

/// One step's update with its constants worked out.
#[derive(Debug, Clone, Copy)]
pub(super) enum UpdateRule {
    Sgd {
        lr: f32,
        momentum: f32,
    },
    Adam {
        lr: f32,
        beta1: f32,
        beta2: f32,
        eps: f32,
        correction1: f32,
        correction2: f32,
    },
}

impl UpdateRule {
    pub(super) fn new(optimizer: &Optimizer, step: u64) -> UpdateRule {
        match *optimizer {
            Optimizer::Sgd { lr, momentum } => UpdateRule::Sgd { lr, momentum },
            Optimizer::Adam {
                lr,
                beta1,
                beta2,
                eps,
            } => {
                let t = i32::try_from(step).unwrap_or(i32::MAX);
                UpdateRule::Adam {
                    lr,
                    beta1,
                    beta2,
                    eps,
                    correction1: (1.0 / (1.0 - f64::from(beta1).powi(t))) as f32,
                    correction2: (1.0 / (1.0 - f64::from(beta2).powi(t))) as f32,
                }
            }
        }
    }

    #[inline]
    fn apply_chunk(
        self,
        params: &mut [f32],
        first: &mut [f32],
        second: &mut [f32],
        gradient: &[f32],
    ) {
        let lanes = params
            .iter_mut()
            .zip(first.iter_mut())
            .zip(second.iter_mut())
            .zip(gradient);
        match self {
            UpdateRule::Sgd { lr, momentum } => {
                for (((p, m), _), g) in lanes {
                    *m = momentum * *m + g;
                    *p -= lr * *m;
                }
            }
            UpdateRule::Adam {
                lr,
                beta1,
                beta2,
                eps,
                correction1,
                correction2,
            } => {
                for (((p, m), v), g) in lanes {
                    *m = beta1 * *m + (1.0 - beta1) * g;
                    *v = beta2 * *v + (1.0 - beta2) * (g * g);
                    *p -= lr * (*m * correction1) / ((*v * correction2).sqrt() + eps);
                }
            }
        }
    }
}
