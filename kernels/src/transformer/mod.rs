//! An encoder-only transformer over windows of market features: the
//! price-prediction model of the heavy role, and its CPU twin (forward,
//! gradients, Adam).
//!
//! A window is `window x features` floats (time steps by features). The
//! network: `(x - mean) / std`, an input projection to `d_model`, plus
//! learned or sinusoidal positions; `layers` pre-norm blocks, each
//! `x + attention(LN1(x))` (multi-head self-attention, optionally causal)
//! then `x + W2 gelu(W1 LN2(x) + b1) + b2`; a final LayerNorm; the last
//! position (or the mean over positions) through a linear head to
//! `outputs` values. GELU is the tanh form (PyTorch's
//! `gelu(approximate="tanh")`); LayerNorm's epsilon is [`LN_EPS`].
//!
//! Parameters live in one flat `Vec<f32>` in the order of [`tensor_list`]
//! (the safetensors file's tensor order, `tandem_shared::model_format::
//! transformer`), so the optimizer runs over one array. This module knows
//! nothing of the file format; the worker converts.

mod cpu;

pub use cpu::{AdamState, forward_cpu, gradients_cpu, loss_cpu, train_cpu_until, train_step};

pub use crate::mlp::{Optimizer, TrainConfig, TrainReport, TrainWatch};

/// LayerNorm's epsilon (PyTorch's default).
pub const LN_EPS: f32 = 1e-5;

/// Which positions' states feed the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The last time step's state.
    Last,
    /// The mean of every time step's state.
    Mean,
}

/// How the network knows where in the window a step is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Positions {
    /// A `window x d_model` table, trained with the rest.
    Learned,
    /// `sin(t / 10000^(2i / d_model))` in even columns, `cos` in odd ones.
    Sinusoidal,
}

/// The architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    pub features: usize,
    pub window: usize,
    pub d_model: usize,
    pub heads: usize,
    pub layers: usize,
    /// Width of each block's feed-forward hidden layer.
    pub ff: usize,
    pub outputs: usize,
    pub causal: bool,
    pub pooling: Pooling,
    pub positions: Positions,
}

/// What is wrong with a transformer, its inputs or a training request.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TransformerError {
    #[error("transformer {field}: {problem}")]
    BadConfig {
        field: &'static str,
        problem: String,
    },
    #[error("transformer parameters: expected {expected} floats, got {got}")]
    BadParameters { expected: usize, got: usize },
    #[error("transformer {what}: expected {expected} floats ({rows} rows x {width}), got {got}")]
    BadLength {
        what: &'static str,
        expected: usize,
        rows: usize,
        width: usize,
        got: usize,
    },
    #[error("transformer training: {0}")]
    BadTraining(String),
    #[error("transformer training stopped before its last epoch")]
    Stopped,
}

impl Config {
    pub fn head_dim(&self) -> usize {
        self.d_model / self.heads.max(1)
    }

    /// Floats per input window.
    pub fn window_floats(&self) -> usize {
        self.window * self.features
    }

    /// Checks every size is positive and the heads divide `d_model`.
    pub fn check(&self) -> Result<(), TransformerError> {
        let fields = [
            ("features", self.features),
            ("window", self.window),
            ("d_model", self.d_model),
            ("heads", self.heads),
            ("layers", self.layers),
            ("ff", self.ff),
            ("outputs", self.outputs),
        ];
        for (field, value) in fields {
            if value == 0 {
                return Err(TransformerError::BadConfig {
                    field,
                    problem: "must be at least 1".into(),
                });
            }
        }
        if !self.d_model.is_multiple_of(self.heads) {
            return Err(TransformerError::BadConfig {
                field: "heads",
                problem: format!(
                    "{} heads do not divide d_model {}",
                    self.heads, self.d_model
                ),
            });
        }
        Ok(())
    }

    /// Floats of parameters.
    pub fn parameter_count(&self) -> usize {
        tensor_list(self)
            .iter()
            .map(|(_, shape)| shape.iter().product::<usize>())
            .sum()
    }

    /// Bytes of parameters (f32).
    pub fn parameter_bytes(&self) -> u64 {
        4 * self.parameter_count() as u64
    }

    /// Bytes of activations one window needs in a forward pass (the
    /// largest live set: the residual stream, the q/k/v projections, one
    /// head's score matrix per head, the feed-forward hidden layer), what
    /// the ledger books per window of a batch on top of the parameters.
    pub fn activation_bytes_per_window(&self) -> u64 {
        let (t, d) = (self.window as u64, self.d_model as u64);
        let floats = t * self.features as u64
            + 4 * t * d
            + 3 * t * d
            + self.heads as u64 * t * t
            + 2 * t * self.ff as u64;
        4 * floats
    }
}

/// Every tensor's name and shape, in the file's (and the flat array's)
/// order.
pub fn tensor_list(config: &Config) -> Vec<(String, Vec<usize>)> {
    let (f, d, ff) = (config.features, config.d_model, config.ff);
    let mut list = vec![
        ("input.mean".to_string(), vec![f]),
        ("input.std".to_string(), vec![f]),
        ("embed.weight".to_string(), vec![d, f]),
        ("embed.bias".to_string(), vec![d]),
    ];
    if config.positions == Positions::Learned {
        list.push(("position.weight".into(), vec![config.window, d]));
    }
    for i in 0..config.layers {
        let p = |name: &str| format!("layer.{i}.{name}");
        list.push((p("norm1.weight"), vec![d]));
        list.push((p("norm1.bias"), vec![d]));
        list.push((p("attn.in_proj.weight"), vec![3 * d, d]));
        list.push((p("attn.in_proj.bias"), vec![3 * d]));
        list.push((p("attn.out_proj.weight"), vec![d, d]));
        list.push((p("attn.out_proj.bias"), vec![d]));
        list.push((p("norm2.weight"), vec![d]));
        list.push((p("norm2.bias"), vec![d]));
        list.push((p("ff.linear1.weight"), vec![ff, d]));
        list.push((p("ff.linear1.bias"), vec![ff]));
        list.push((p("ff.linear2.weight"), vec![d, ff]));
        list.push((p("ff.linear2.bias"), vec![d]));
    }
    list.push(("final_norm.weight".into(), vec![d]));
    list.push(("final_norm.bias".into(), vec![d]));
    list.push(("head.weight".into(), vec![config.outputs, d]));
    list.push(("head.bias".into(), vec![config.outputs]));
    list
}

/// Offsets of one block's tensors in the flat array.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BlockOffsets {
    pub(crate) norm1_w: usize,
    pub(crate) norm1_b: usize,
    pub(crate) in_w: usize,
    pub(crate) in_b: usize,
    pub(crate) out_w: usize,
    pub(crate) out_b: usize,
    pub(crate) norm2_w: usize,
    pub(crate) norm2_b: usize,
    pub(crate) ff1_w: usize,
    pub(crate) ff1_b: usize,
    pub(crate) ff2_w: usize,
    pub(crate) ff2_b: usize,
}

/// Offsets of every tensor in the flat array.
#[derive(Debug, Clone)]
pub(crate) struct Offsets {
    pub(crate) mean: usize,
    pub(crate) std: usize,
    pub(crate) embed_w: usize,
    pub(crate) embed_b: usize,
    pub(crate) position: Option<usize>,
    pub(crate) blocks: Vec<BlockOffsets>,
    pub(crate) final_w: usize,
    pub(crate) final_b: usize,
    pub(crate) head_w: usize,
    pub(crate) head_b: usize,
    pub(crate) total: usize,
}

impl Offsets {
    pub(crate) fn new(config: &Config) -> Offsets {
        let list = tensor_list(config);
        let mut at = Vec::with_capacity(list.len());
        let mut offset = 0;
        for (_, shape) in &list {
            at.push(offset);
            offset += shape.iter().product::<usize>();
        }
        let mut next = at.into_iter();
        let mut take = || next.next().unwrap_or(0);
        let mean = take();
        let std = take();
        let embed_w = take();
        let embed_b = take();
        let position = (config.positions == Positions::Learned).then(&mut take);
        let blocks = (0..config.layers)
            .map(|_| BlockOffsets {
                norm1_w: take(),
                norm1_b: take(),
                in_w: take(),
                in_b: take(),
                out_w: take(),
                out_b: take(),
                norm2_w: take(),
                norm2_b: take(),
                ff1_w: take(),
                ff1_b: take(),
                ff2_w: take(),
                ff2_b: take(),
            })
            .collect();
        Offsets {
            mean,
            std,
            embed_w,
            embed_b,
            position,
            blocks,
            final_w: take(),
            final_b: take(),
            head_w: take(),
            head_b: take(),
            total: offset,
        }
    }
}

/// A transformer: its architecture and its parameters, flat, in
/// [`tensor_list`] order.
#[derive(Debug, Clone, PartialEq)]
pub struct Transformer {
    pub config: Config,
    pub params: Vec<f32>,
}

impl Transformer {
    /// Checks the configuration, the parameter count and the input
    /// normalisation (every std positive and finite).
    pub fn check(&self) -> Result<(), TransformerError> {
        self.config.check()?;
        let expected = self.config.parameter_count();
        if self.params.len() != expected {
            return Err(TransformerError::BadParameters {
                expected,
                got: self.params.len(),
            });
        }
        let offsets = Offsets::new(&self.config);
        let std = &self.params[offsets.std..offsets.std + self.config.features];
        if let Some(k) = std.iter().position(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(TransformerError::BadConfig {
                field: "input.std",
                problem: format!("value {} at {k} is not a positive finite number", std[k]),
            });
        }
        Ok(())
    }

    /// Seeded random weights: projections uniform in `+-sqrt(1 / inputs)`
    /// (PyTorch's `Linear` default scale), learned positions `+-0.02`,
    /// LayerNorm gains 1, biases 0, identity normalisation. The same
    /// arguments give the same bits on every host.
    pub fn random(config: Config, seed: u64) -> Result<Transformer, TransformerError> {
        config.check()?;
        let mut state = seed;
        let mut params = Vec::with_capacity(config.parameter_count());
        for (name, shape) in tensor_list(&config) {
            let count: usize = shape.iter().product();
            let constant =
                if name.ends_with("std") || name.contains("norm") && name.ends_with("weight") {
                    Some(1.0)
                } else if name.ends_with("bias") || name.ends_with("mean") {
                    Some(0.0)
                } else {
                    None
                };
            match constant {
                Some(value) => params.extend(std::iter::repeat_n(value, count)),
                None => {
                    let limit = if name == "position.weight" {
                        0.02
                    } else {
                        (1.0 / shape[1] as f64).sqrt() as f32
                    };
                    params.extend(
                        (0..count).map(|_| limit * (2.0 * unit_f32(splitmix64(&mut state)) - 1.0)),
                    );
                }
            }
        }
        let model = Transformer { config, params };
        model.check()?;
        Ok(model)
    }
}

/// The sinusoidal position table, `window x d_model`.
pub fn sinusoidal(window: usize, d_model: usize) -> Vec<f32> {
    let mut table = vec![0.0; window * d_model];
    for t in 0..window {
        for c in 0..d_model {
            let pair = (c / 2) as f64;
            let angle = t as f64 / 10_000f64.powf(2.0 * pair / d_model as f64);
            table[t * d_model + c] = if c % 2 == 0 { angle.sin() } else { angle.cos() } as f32;
        }
    }
    table
}

pub(crate) fn check_length(
    what: &'static str,
    data: &[f32],
    rows: usize,
    width: usize,
) -> Result<(), TransformerError> {
    let expected = rows.saturating_mul(width);
    if data.len() == expected {
        Ok(())
    } else {
        Err(TransformerError::BadLength {
            what,
            expected,
            rows,
            width,
            got: data.len(),
        })
    }
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn unit_f32(bits: u64) -> f32 {
    (bits >> 40) as f32 * (1.0 / 16_777_216.0)
}

#[cfg(test)]
mod tests;
