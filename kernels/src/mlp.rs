//! Multi-layer perceptrons: the model kinds' network (a price-prediction
//! MLP: layers of weights and biases, a hidden activation, input
//! normalisation), its CPU twin (forward and training) and, in
//! [`crate::mlp_gpu`], its GPU path. The file format lives in
//! `tandem_shared::model`; this module sees plain arrays.

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
