//! The model kinds' contracts: `infer`, `predict_batch` and `train` run a
//! registered price-prediction model (an MLP, `crate::model_format`, or the
//! encoder-only transformer, `crate::model_format::transformer`, registered
//! with `tandem model`), kept resident on the worker's device between tasks.
//! For a transformer a row (an `infer` row, a symbol's `features`, a
//! training sample) is one window, `window x features` floats, time steps
//! by features, row-major.
//!
//! | kind | class | parameters | result |
//! |---|---|---|---|
//! | `infer` | the model's registered class (the producer library looks it up unless the task sets one; light by default) | `{model, inputs, batch}`: `batch` rows of the model's input width, row-major, f32 | `{outputs, batch, width, model_version, cache_hit}` |
//! | `predict_batch` | light; heavy over 100 symbols (the seed's rule) | `{model, symbols: [{symbol, features}]}`: one feature window per symbol, the model's input width | `{predictions: [{symbol, values}], model_version, cache_hit}` |
//! | `train` | heavy (the seed: training always uses the primary GPU); with `train_on_primary = false`, as `infer` | `{model, x, y, samples, epochs, batch_size, optimizer, seed, out}` | `{losses, steps, model_version, weights or path, sha256}`: the fine-tuned model as a safetensors blob, or written to `model_dir/<out>` on the worker (`out` a plain file name) |
//!
//! Errors: `BAD_PARAMS` for shapes that do not match (the worker checks
//! the model's widths), non-finite numbers, or bounds; `MODEL_NOT_FOUND`
//! when no model has that name; `MODEL_INVALID` when its file fails its
//! checks (hash, format).
//!
//! Memory: a task declares what its activations need on a device; the
//! model itself is booked by the worker's memory ledger while resident.
//! [`KindSpec::memory_estimate`] sees only the parameters (an MLP's
//! activations at an assumed width); once the model's registry record is
//! at hand, `Infer::memory_for`, `PredictBatch::memory_for` and
//! `Train::memory_for` give a transformer's own figure from its shape
//! (the GPU forward's workspace per window; for training the training
//! copy, its optimiser state and gradient, and every layer's activations
//! of a mini-batch), the same bytes the worker's GPU path holds.

use serde::{Deserialize, Serialize};

use super::{BadParams, KindSpec};
use crate::model_format::transformer::{Positions, TransformerShape};
use crate::store::ModelArch;
use crate::task::Class;

/// Most numbers in one task's inputs or training data.
pub const MAX_VALUES: usize = 100_000_000;
/// A `predict_batch` over this many symbols is heavy (the seed's rule).
pub const HEAVY_SYMBOLS: usize = 100;
/// Widest layer the memory estimate assumes when it cannot know the
/// model's (the worker books the real figure).
const ASSUMED_WIDTH: u64 = 1_024;

fn check_model(name: &str) -> Result<(), BadParams> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(BadParams::new(format!(
            "model must be 1-64 letters, digits, '_', '.' or '-', got {name:?}"
        )))
    }
}

fn check_values(what: &str, values: &[f32]) -> Result<(), BadParams> {
    if values.len() > MAX_VALUES {
        return Err(BadParams::new(format!(
            "{what} holds {} numbers; at most {MAX_VALUES}",
            values.len()
        )));
    }
    match values.iter().position(|v| !v.is_finite()) {
        Some(i) => Err(BadParams::new(format!(
            "{what}[{i}] is {}: numbers must be finite",
            values[i]
        ))),
        None => Ok(()),
    }
}

/// Activations of `rows` rows through layers up to [`ASSUMED_WIDTH`] wide,
/// twice (a layer's input and output live at once), f32.
fn activation_bytes(rows: u64) -> u64 {
    rows.saturating_mul(ASSUMED_WIDTH).saturating_mul(2 * 4)
}

/// f32 floats one window of a transformer's forward pass holds on a GPU:
/// the GPU forward's workspace per window (`transformer_gpu::plan::
/// per_window`): raw and normalised inputs, the residual stream, a
/// LayerNorm's output, Q/K/V, the attention weights, the heads' contexts,
/// the feed-forward hidden layer, the pooled row and the outputs.
fn forward_floats_per_window(s: &TransformerShape) -> u64 {
    let (t, f, d, ff) = (
        s.window as u64,
        s.features as u64,
        s.d_model as u64,
        s.ff as u64,
    );
    let heads = s.heads as u64;
    2 * t * f + 6 * t * d + heads * t * t + t * ff + d + s.outputs as u64
}

/// f32 floats one window of a transformer's training run holds on a GPU
/// (`transformer_gpu::backward::train_per_window`): every layer's
/// activations, kept for the backward, and the backward's buffers.
fn train_floats_per_window(s: &TransformerShape) -> u64 {
    let (t, f, d, ff) = (
        s.window as u64,
        s.features as u64,
        s.d_model as u64,
        s.ff as u64,
    );
    let (heads, layers, o) = (s.heads as u64, s.layers as u64, s.outputs as u64);
    let scores = heads * t * t;
    let kept = 2 * t * f
        + (layers + 1) * t * d
        + layers * (4 * t * d + 3 * t * d + scores + 2 * t * ff)
        + t * d
        + d
        + o;
    let backward = 2 * t + o + d + 3 * t * d + t * ff + 3 * t * d + scores;
    kept + backward
}

/// A transformer's device memory for a task of `windows` windows beyond
/// the resident model (which the worker's ledger books): its forward
/// activations, from the registry record's shape.
pub fn transformer_forward_bytes(shape: &TransformerShape, windows: u64) -> u64 {
    windows.saturating_mul(4 * forward_floats_per_window(shape))
}

/// A transformer's device memory for training in runs of `windows`
/// windows, beside the resident model (which the worker's ledger books):
/// the training copy of the parameters and its position table, Adam's two
/// moments and the gradient (4 x the parameter bytes), and per window
/// every layer's activations and the backward's buffers
/// (`GpuTransformer::train_bytes`).
pub fn transformer_train_bytes(shape: &TransformerShape, windows: u64) -> u64 {
    let table = match shape.positions {
        Positions::Learned => 0,
        Positions::Sinusoidal => 4 * (shape.window * shape.d_model) as u64,
    };
    (4 * shape.parameter_bytes())
        .saturating_add(table)
        .saturating_add(windows.saturating_mul(4 * train_floats_per_window(shape)))
}

/// A batch of inputs through one model.
#[derive(Debug)]
pub struct Infer;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct InferParams {
    /// The registered model's name.
    pub model: String,
    /// `batch` rows of the model's input width, row-major.
    pub inputs: Vec<f32>,
    pub batch: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct InferOutput {
    /// `batch` rows of `width` outputs, row-major.
    pub outputs: Vec<f32>,
    pub batch: u64,
    pub width: u64,
    /// The registry version of the model that ran.
    pub model_version: u64,
    /// Whether the model was already resident on the worker.
    pub cache_hit: bool,
}

impl KindSpec for Infer {
    const KIND: &'static str = "infer";
    const CLASS: Class = Class::Light;
    type Params = InferParams;
    type Output = InferOutput;

    fn validate(p: &InferParams) -> Result<(), BadParams> {
        check_model(&p.model)?;
        if p.batch == 0 || !(p.inputs.len() as u64).is_multiple_of(p.batch) {
            return Err(BadParams::new(format!(
                "inputs hold {} numbers, not a whole number of rows for batch {}",
                p.inputs.len(),
                p.batch
            )));
        }
        check_values("inputs", &p.inputs)
    }

    fn memory_estimate(p: &InferParams) -> u64 {
        activation_bytes(p.batch)
    }
}

impl Infer {
    /// [`KindSpec::memory_estimate`] once the model's registry record is
    /// known (`arch`): a transformer's forward activations for the batch's
    /// windows, an MLP's estimate as before.
    pub fn memory_for(p: &InferParams, arch: &ModelArch) -> u64 {
        match arch {
            ModelArch::Transformer(shape) => transformer_forward_bytes(shape, p.batch),
            ModelArch::Mlp(_) => Self::memory_estimate(p),
        }
    }
}

/// Many symbols' feature windows through one model.
#[derive(Debug)]
pub struct PredictBatch;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SymbolWindow {
    pub symbol: String,
    /// The model's input width of features.
    pub features: Vec<f32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PredictBatchParams {
    pub model: String,
    pub symbols: Vec<SymbolWindow>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Prediction {
    pub symbol: String,
    pub values: Vec<f32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PredictBatchOutput {
    /// One per symbol, in the order given.
    pub predictions: Vec<Prediction>,
    pub model_version: u64,
    pub cache_hit: bool,
}

impl KindSpec for PredictBatch {
    const KIND: &'static str = "predict_batch";
    const CLASS: Class = Class::Light;
    type Params = PredictBatchParams;
    type Output = PredictBatchOutput;

    fn validate(p: &PredictBatchParams) -> Result<(), BadParams> {
        check_model(&p.model)?;
        let Some(first) = p.symbols.first() else {
            return Err(BadParams::new("symbols is empty"));
        };
        let width = first.features.len();
        let mut total = 0usize;
        for (i, window) in p.symbols.iter().enumerate() {
            if window.features.len() != width {
                return Err(BadParams::new(format!(
                    "symbols[{i}] ({}) has {} features; symbols[0] has {width}",
                    window.symbol,
                    window.features.len()
                )));
            }
            total = total.saturating_add(width);
            check_values(&format!("symbols[{i}].features"), &window.features)?;
        }
        if total > MAX_VALUES {
            return Err(BadParams::new(format!(
                "{total} features in all; at most {MAX_VALUES}"
            )));
        }
        Ok(())
    }

    fn memory_estimate(p: &PredictBatchParams) -> u64 {
        activation_bytes(p.symbols.len() as u64)
    }

    fn class(p: &PredictBatchParams) -> Class {
        if p.symbols.len() > HEAVY_SYMBOLS {
            Class::Heavy
        } else {
            Class::Light
        }
    }
}

/// How training steps update the weights.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Optimizer {
    Sgd {
        lr: f32,
        #[serde(default)]
        momentum: f32,
    },
    Adam {
        lr: f32,
        #[serde(default = "default_beta1")]
        beta1: f32,
        #[serde(default = "default_beta2")]
        beta2: f32,
        #[serde(default = "default_eps")]
        eps: f32,
    },
}

fn default_beta1() -> f32 {
    0.9
}

fn default_beta2() -> f32 {
    0.999
}

fn default_eps() -> f32 {
    1e-8
}

/// Fine-tunes a model on given data (mean squared error).
#[derive(Debug)]
pub struct Train;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TrainParams {
    pub model: String,
    /// `samples` rows of the model's input width.
    pub x: Vec<f32>,
    /// `samples` rows of the model's output width.
    pub y: Vec<f32>,
    pub samples: u64,
    pub epochs: u32,
    pub batch_size: u32,
    pub optimizer: Optimizer,
    #[serde(default)]
    pub seed: u64,
    /// Write the fine-tuned model here (a path the worker can write, on
    /// the fleet's shared volume) instead of returning it in the result.
    #[serde(default)]
    pub out: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TrainOutput {
    /// Mean loss of each epoch.
    pub losses: Vec<f32>,
    pub steps: u64,
    /// The version of the model training started from.
    pub model_version: u64,
    /// The fine-tuned model as a safetensors file, unless `out` was given.
    #[serde(with = "serde_bytes_opt", default)]
    #[schemars(with = "Option<Vec<u8>>", extend("x-msgpack" = "bin"))]
    pub weights: Option<Vec<u8>>,
    /// Where it was written, when `out` was given.
    pub path: Option<String>,
    /// SHA-256 of the fine-tuned model file.
    pub sha256: String,
}

impl KindSpec for Train {
    const KIND: &'static str = "train";
    /// The seed's rule: training always uses the primary GPU when it is
    /// there, whatever the model's size (a producer with
    /// `train_on_primary = false` uses the model's class instead).
    const CLASS: Class = Class::Heavy;
    type Params = TrainParams;
    type Output = TrainOutput;

    fn validate(p: &TrainParams) -> Result<(), BadParams> {
        check_model(&p.model)?;
        if p.samples == 0
            || !(p.x.len() as u64).is_multiple_of(p.samples)
            || !(p.y.len() as u64).is_multiple_of(p.samples)
        {
            return Err(BadParams::new(format!(
                "x ({}) and y ({}) must each hold a whole number of rows for {} samples",
                p.x.len(),
                p.y.len(),
                p.samples
            )));
        }
        if p.epochs == 0 || p.epochs > 10_000 {
            return Err(BadParams::new("epochs must be 1 to 10000"));
        }
        if p.batch_size == 0 {
            return Err(BadParams::new("batch_size must be at least 1"));
        }
        let lr = match p.optimizer {
            Optimizer::Sgd { lr, momentum } => {
                if !(0.0..1.0).contains(&momentum) {
                    return Err(BadParams::new("momentum must be in [0, 1)"));
                }
                lr
            }
            Optimizer::Adam {
                lr,
                beta1,
                beta2,
                eps,
            } => {
                let beta = 0.0..1.0;
                if !beta.contains(&beta1) || !beta.contains(&beta2) || eps.is_nan() || eps <= 0.0 {
                    return Err(BadParams::new(
                        "Adam needs beta1 and beta2 in [0, 1) and eps > 0",
                    ));
                }
                lr
            }
        };
        if !(lr > 0.0 && lr.is_finite()) {
            return Err(BadParams::new(format!("lr must be positive, got {lr}")));
        }
        check_values("x", &p.x)?;
        check_values("y", &p.y)
    }

    fn memory_estimate(p: &TrainParams) -> u64 {
        // The training set stays on the device; activations of a batch.
        let data = 4 * (p.x.len() + p.y.len()) as u64;
        data.saturating_add(2 * activation_bytes(u64::from(p.batch_size)))
    }
}

impl PredictBatch {
    /// [`KindSpec::memory_estimate`] once the model's registry record is
    /// known: a transformer's forward activations for one window per
    /// symbol, an MLP's estimate as before.
    pub fn memory_for(p: &PredictBatchParams, arch: &ModelArch) -> u64 {
        match arch {
            ModelArch::Transformer(shape) => {
                transformer_forward_bytes(shape, p.symbols.len() as u64)
            }
            ModelArch::Mlp(_) => Self::memory_estimate(p),
        }
    }
}

impl Train {
    /// [`KindSpec::memory_estimate`] once the model's registry record is
    /// known: a transformer's training on the GPU (the training copy, its
    /// optimiser state and gradient, and a mini-batch's activations kept
    /// for the backward; the data stays on the host), an MLP's estimate as
    /// before.
    pub fn memory_for(p: &TrainParams, arch: &ModelArch) -> u64 {
        match arch {
            ModelArch::Transformer(shape) => {
                transformer_train_bytes(shape, u64::from(p.batch_size).min(p.samples))
            }
            ModelArch::Mlp(_) => Self::memory_estimate(p),
        }
    }
}

/// A transformer task's device memory once its model's registry record is
/// known (what `memory_for` of [`Infer`], [`PredictBatch`] and [`Train`]
/// give), from its encoded parameters; `None` for an MLP (the kind's own
/// estimate, already set), another kind, or parameters that do not decode
/// (the kind's own checks report those). Reads only the counts it needs:
/// the inputs are skipped, not decoded a second time.
pub fn memory_for_model(kind: &str, params: &[u8], arch: &ModelArch) -> Option<u64> {
    use serde::de::IgnoredAny;
    #[derive(Deserialize)]
    struct Windows {
        batch: u64,
    }
    #[derive(Deserialize)]
    struct Symbols {
        symbols: Vec<IgnoredAny>,
    }
    #[derive(Deserialize)]
    struct Runs {
        samples: u64,
        batch_size: u32,
    }
    let ModelArch::Transformer(shape) = arch else {
        return None;
    };
    use crate::msgpack::decode;
    match kind {
        Infer::KIND => decode::<Windows>(params)
            .ok()
            .map(|p| transformer_forward_bytes(shape, p.batch)),
        PredictBatch::KIND => decode::<Symbols>(params)
            .ok()
            .map(|p| transformer_forward_bytes(shape, p.symbols.len() as u64)),
        Train::KIND => decode::<Runs>(params)
            .ok()
            .map(|p| transformer_train_bytes(shape, u64::from(p.batch_size).min(p.samples))),
        _ => None,
    }
}

/// `Option<Vec<u8>>` as MessagePack bin, not an array of numbers.
mod serde_bytes_opt {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(bytes) => s.serialize_some(&Bin(bytes)),
            None => s.serialize_none(),
        }
    }

    struct Bin<'a>(&'a [u8]);

    impl serde::Serialize for Bin<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(self.0)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Option::<rmpv::Value>::deserialize(d).and_then(|value| match value {
            None | Some(rmpv::Value::Nil) => Ok(None),
            Some(rmpv::Value::Binary(bytes)) => Ok(Some(bytes)),
            Some(rmpv::Value::Array(items)) => items
                .into_iter()
                .map(|v| v.as_u64().and_then(|n| u8::try_from(n).ok()))
                .collect::<Option<Vec<u8>>>()
                .map(Some)
                .ok_or_else(|| serde::de::Error::custom("weights: not bytes")),
            Some(_) => Err(serde::de::Error::custom("weights: not bytes")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msgpack;

    fn infer() -> InferParams {
        InferParams {
            model: "px".into(),
            inputs: vec![0.5; 8],
            batch: 2,
        }
    }

    #[test]
    fn bounds_and_shapes_are_checked() {
        assert!(Infer::validate(&infer()).is_ok());
        let bad = |p: InferParams| Infer::validate(&p).unwrap_err().0;
        assert!(
            bad(InferParams {
                batch: 3,
                ..infer()
            })
            .contains("whole number of rows")
        );
        assert!(
            bad(InferParams {
                model: "a b".into(),
                ..infer()
            })
            .contains("model must")
        );
        let mut nan = infer();
        nan.inputs[5] = f32::NAN;
        assert!(bad(nan).contains("inputs[5] is NaN"));
    }

    #[test]
    fn predict_batch_is_heavy_over_100_symbols() {
        let window = |i: usize| SymbolWindow {
            symbol: format!("S{i}"),
            features: vec![1.0; 4],
        };
        let params = |n: usize| PredictBatchParams {
            model: "px".into(),
            symbols: (0..n).map(window).collect(),
        };
        assert_eq!(PredictBatch::class(&params(100)), Class::Light);
        assert_eq!(PredictBatch::class(&params(101)), Class::Heavy);
        let mut ragged = params(3);
        ragged.symbols[2].features.pop();
        let err = PredictBatch::validate(&ragged).unwrap_err().0;
        assert!(err.contains("symbols[2] (S2) has 3 features"), "{err}");
        // The producer sees the class through the kind table too.
        let known = super::super::known("predict_batch", &msgpack::encode(&params(101)).unwrap());
        assert_eq!(known.map(|k| k.class), Some(Class::Heavy));
    }

    #[test]
    fn train_checks_its_optimizer_and_weights_travel_as_bytes() {
        let params = TrainParams {
            model: "px".into(),
            x: vec![0.0; 6],
            y: vec![0.0; 3],
            samples: 3,
            epochs: 2,
            batch_size: 2,
            optimizer: Optimizer::Adam {
                lr: 1e-3,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
            },
            seed: 1,
            out: None,
        };
        assert!(Train::validate(&params).is_ok());
        let sgd = TrainParams {
            optimizer: Optimizer::Sgd {
                lr: 0.1,
                momentum: 1.0,
            },
            ..params.clone()
        };
        assert!(Train::validate(&sgd).unwrap_err().0.contains("momentum"));
        // Defaults fill in Adam's betas.
        let adam: Optimizer =
            msgpack::decode(&msgpack::encode(&adam_map(&[("type", "adam")], 0.01)).unwrap())
                .unwrap();
        assert_eq!(
            adam,
            Optimizer::Adam {
                lr: 0.01,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8
            }
        );
        let out = TrainOutput {
            losses: vec![1.0, 0.5],
            steps: 4,
            model_version: 1,
            weights: Some(vec![1, 2, 3]),
            path: None,
            sha256: "x".into(),
        };
        let bytes = msgpack::encode(&out).unwrap();
        // A bin field: 0xc4, length 3.
        assert!(bytes.windows(5).any(|w| w == [0xc4, 3, 1, 2, 3]));
        assert_eq!(msgpack::decode::<TrainOutput>(&bytes).unwrap(), out);
    }

    /// `{type: adam, lr}` as a MessagePack map.
    fn adam_map(pairs: &[(&str, &str)], lr: f64) -> rmpv::Value {
        let mut map: Vec<(rmpv::Value, rmpv::Value)> = pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect();
        map.push(("lr".into(), lr.into()));
        rmpv::Value::Map(map)
    }

    fn seed_shape() -> TransformerShape {
        TransformerShape {
            features: 32,
            window: 128,
            d_model: 256,
            heads: 8,
            layers: 4,
            ff: 1024,
            outputs: 1,
            causal: true,
            pooling: crate::model_format::transformer::Pooling::Last,
            positions: Positions::Sinusoidal,
        }
    }

    /// A transformer's estimate comes from its registry record's shape, not
    /// the MLP formula: the forward's activations per window for `infer`
    /// and `predict_batch`, forward and backward for `train`; an MLP keeps
    /// the kind's estimate.
    #[test]
    fn a_transformers_memory_comes_from_its_registered_shape() {
        let shape = seed_shape();
        let arch = ModelArch::Transformer(shape);
        let (t, f, d) = (128u64, 32u64, 256u64);
        let forward_per_window = 4 * (2 * t * f + 6 * t * d + 8 * t * t + t * 1024 + d + 1);
        let p = InferParams {
            model: "px".into(),
            inputs: vec![0.0; 2 * 128 * 32],
            batch: 2,
        };
        assert_eq!(Infer::memory_for(&p, &arch), 2 * forward_per_window);
        assert_ne!(Infer::memory_for(&p, &arch), Infer::memory_estimate(&p));
        let mlp = ModelArch::Mlp(crate::model_format::ModelShape {
            sizes: vec![4, 8, 1],
            activation: crate::model_format::Activation::Relu,
        });
        assert_eq!(Infer::memory_for(&p, &mlp), Infer::memory_estimate(&p));
        let symbols = PredictBatchParams {
            model: "px".into(),
            symbols: (0..1000)
                .map(|i| SymbolWindow {
                    symbol: format!("S{i}"),
                    features: vec![0.0; 128 * 32],
                })
                .collect(),
        };
        assert_eq!(
            PredictBatch::memory_for(&symbols, &arch),
            1000 * forward_per_window
        );
        // Training keeps every layer's activations: per window more than
        // the forward's, plus 4 x the parameters (copy, two moments,
        // gradient) and the sinusoidal table.
        let train = |batch_size: u32, samples: u64| TrainParams {
            model: "px".into(),
            x: Vec::new(),
            y: Vec::new(),
            samples,
            epochs: 1,
            batch_size,
            optimizer: Optimizer::Sgd {
                lr: 0.1,
                momentum: 0.0,
            },
            seed: 0,
            out: None,
        };
        let fixed = 4 * shape.parameter_bytes() + 4 * t * d;
        let one = Train::memory_for(&train(1, 64), &arch);
        assert!(one - fixed > 4 * forward_per_window, "{one}");
        let per_window = one - fixed;
        assert_eq!(
            Train::memory_for(&train(16, 64), &arch),
            fixed + 16 * per_window
        );
        // A mini-batch larger than the data takes the data's windows.
        assert_eq!(
            Train::memory_for(&train(512, 10), &arch),
            fixed + 10 * per_window
        );
    }
}
