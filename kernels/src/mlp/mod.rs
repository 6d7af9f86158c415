//! Multi-layer perceptrons: the model kinds' network (a price-prediction
//! MLP: layers of weights and biases, a hidden activation, input
//! normalisation), its CPU twin (forward and training) and, in
//! [`crate::mlp_gpu`], its GPU path. The file format lives in
//! `tandem_shared::model_format`; this module sees plain arrays.

mod forward;
mod gemm;
mod optimizer;
mod train;

pub use forward::{forward_cpu, loss_cpu};
pub use optimizer::{Optimizer, OptimizerState, Params};
pub use train::{
    TrainConfig, TrainReport, TrainWatch, epoch_order, gradients_cpu, train_cpu, train_cpu_until,
    train_step,
};

/// The activation between hidden layers; the output layer is linear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Relu,
    Tanh,
}

/// One dense layer: `outputs x inputs` weights, row-major (row o holds the
/// weights into output o), and `outputs` biases.
#[derive(Debug, Clone, PartialEq)]
pub struct Layer {
    pub inputs: usize,
    pub outputs: usize,
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

/// A network: `x -> (x - mean) / std -> layer 0 -> activation -> ... ->
/// last layer` (no activation after the last).
#[derive(Debug, Clone, PartialEq)]
pub struct Mlp {
    pub layers: Vec<Layer>,
    pub activation: Activation,
    /// Per input feature.
    pub input_mean: Vec<f32>,
    pub input_std: Vec<f32>,
}

impl Mlp {
    pub fn inputs(&self) -> usize {
        self.layers.first().map_or(0, |l| l.inputs)
    }

    pub fn outputs(&self) -> usize {
        self.layers.last().map_or(0, |l| l.outputs)
    }

    /// Bytes of parameters (f32), what the model occupies on a device
    /// before activations.
    pub fn parameter_bytes(&self) -> u64 {
        let floats: usize = self
            .layers
            .iter()
            .map(|l| l.weight.len() + l.bias.len())
            .sum::<usize>()
            + self.input_mean.len()
            + self.input_std.len();
        4 * floats as u64
    }
}

/// What is wrong with a network, its inputs or a training request.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MlpError {
    #[error("the MLP has no layers")]
    NoLayers,
    #[error("MLP layer {layer}: {problem}")]
    BadLayer { layer: usize, problem: String },
    #[error("MLP input normalisation: {0}")]
    BadNormalisation(String),
    #[error("MLP {what}: expected {expected} floats ({rows} rows x {width}), got {got}")]
    BadLength {
        what: &'static str,
        expected: usize,
        rows: usize,
        width: usize,
        got: usize,
    },
    #[error("MLP training: {0}")]
    BadTraining(String),
    /// The caller asked training to stop (its task was cancelled).
    #[error("MLP training stopped before its last epoch")]
    Stopped,
}

impl Mlp {
    /// A network of the given layer sizes (`[inputs, hidden..., outputs]`)
    /// with seeded random weights (He-uniform under ReLU, Glorot-uniform
    /// under tanh), zero biases and the identity normalisation: fixtures,
    /// benches and `tandem model new`.
    pub fn random(sizes: &[usize], activation: Activation, seed: u64) -> Result<Mlp, MlpError> {
        if sizes.len() < 2 {
            return Err(MlpError::NoLayers);
        }
        let mut state = seed;
        let layers = sizes
            .windows(2)
            .map(|pair| {
                let (inputs, outputs) = (pair[0], pair[1]);
                let limit = match activation {
                    Activation::Relu => (6.0 / inputs.max(1) as f64).sqrt(),
                    Activation::Tanh => (6.0 / (inputs + outputs).max(1) as f64).sqrt(),
                } as f32;
                let weight = (0..inputs * outputs)
                    .map(|_| limit * (2.0 * unit_f32(splitmix64(&mut state)) - 1.0))
                    .collect();
                Layer {
                    inputs,
                    outputs,
                    weight,
                    bias: vec![0.0; outputs],
                }
            })
            .collect();
        let mlp = Mlp {
            layers,
            activation,
            input_mean: vec![0.0; sizes[0]],
            input_std: vec![1.0; sizes[0]],
        };
        mlp.check()?;
        Ok(mlp)
    }

    /// Checks that the layers chain (each layer's inputs are the previous
    /// one's outputs), that every array has its declared length, and that
    /// the normalisation divides by positive finite numbers.
    pub fn check(&self) -> Result<(), MlpError> {
        if self.layers.is_empty() {
            return Err(MlpError::NoLayers);
        }
        for (index, layer) in self.layers.iter().enumerate() {
            let bad = |problem: String| MlpError::BadLayer {
                layer: index,
                problem,
            };
            if layer.inputs == 0 || layer.outputs == 0 {
                return Err(bad(format!(
                    "{} inputs x {} outputs (both must be positive)",
                    layer.inputs, layer.outputs
                )));
            }
            if index > 0 && layer.inputs != self.layers[index - 1].outputs {
                return Err(bad(format!(
                    "takes {} inputs but the layer before has {} outputs",
                    layer.inputs,
                    self.layers[index - 1].outputs
                )));
            }
            if layer.weight.len() != layer.inputs * layer.outputs {
                return Err(bad(format!(
                    "{} weights for {} x {}",
                    layer.weight.len(),
                    layer.outputs,
                    layer.inputs
                )));
            }
            if layer.bias.len() != layer.outputs {
                return Err(bad(format!(
                    "{} biases for {} outputs",
                    layer.bias.len(),
                    layer.outputs
                )));
            }
        }
        let inputs = self.inputs();
        if self.input_mean.len() != inputs || self.input_std.len() != inputs {
            return Err(MlpError::BadNormalisation(format!(
                "{} means and {} standard deviations for {inputs} inputs",
                self.input_mean.len(),
                self.input_std.len()
            )));
        }
        if let Some(k) = self
            .input_std
            .iter()
            .position(|s| !(s.is_finite() && *s > 0.0))
        {
            return Err(MlpError::BadNormalisation(format!(
                "standard deviation {} of input {k} is not a positive finite number",
                self.input_std[k]
            )));
        }
        Ok(())
    }
}

/// Checks that `data` holds `rows x width` floats.
fn check_length(
    what: &'static str,
    data: &[f32],
    rows: usize,
    width: usize,
) -> Result<(), MlpError> {
    let expected = rows.saturating_mul(width);
    if data.len() == expected {
        Ok(())
    } else {
        Err(MlpError::BadLength {
            what,
            expected,
            rows,
            width,
            got: data.len(),
        })
    }
}

/// splitmix64 (Steele, Lea and Flood): the seeded stream behind the
/// shuffles and the random weights.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The top 24 bits as a float in [0, 1).
fn unit_f32(bits: u64) -> f32 {
    (bits >> 40) as f32 * (1.0 / 16_777_216.0)
}

#[cfg(test)]
mod tests;
