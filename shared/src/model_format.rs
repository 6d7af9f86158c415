//! The price-prediction model as the wire knows it: a multi-layer perceptron
//! stored as a safetensors file.
//!
//! A file holds, all `F32`, little-endian:
//!
//! - `layer.{i}.weight` `[outputs, inputs]`, row-major (row o holds the
//!   weights into output o), and `layer.{i}.bias` `[outputs]`, for
//!   `i = 0..layers`; layer i's outputs are layer i+1's inputs;
//! - `input.mean` and `input.std` `[inputs]`: the network sees
//!   `(x - mean) / std`;
//!
//! and the metadata `format = tandem-mlp`, `version = 1`, `activation =
//! relu | tanh` (between hidden layers; the last layer is linear).
//!
//! [`Model::decode`] checks all of that and says what is wrong;
//! [`ModelFile::scan`] checks a file of any size without holding it in
//! memory (the registry's path models may be many gigabytes) and hashes it.
//! The kernels crate has its own plain `Mlp` type; the worker converts, so
//! this crate stays free of compute code.

use std::collections::BTreeSet;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use safetensors::SafeTensors;
use safetensors::tensor::{Dtype, Metadata};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::task::{Class, ParseError, text_enum};

/// The price-prediction transformer's file (`tandem-transformer`).
pub mod transformer;

/// The `format` metadata value of a model file.
pub const FORMAT: &str = "tandem-mlp";
/// The `version` metadata value this code reads and writes.
pub const VERSION: &str = "1";
/// Most layers a model may have.
pub const MAX_LAYERS: usize = 256;
/// Widest layer (inputs or outputs) a model may have.
pub const MAX_WIDTH: usize = 1 << 17;
/// Most parameter bytes a model may have: far above the heavy threshold,
/// far below anything a single device could hold.
pub const MAX_PARAMETER_BYTES: u64 = 256 << 30;
/// The safetensors format's own limit on the JSON header.
const MAX_HEADER_BYTES: u64 = 100_000_000;
/// How much of a file [`ModelFile::scan`] reads at once (a multiple of 4, so
/// a chunk of one tensor holds whole floats).
const SCAN_CHUNK_BYTES: usize = 1 << 20;

text_enum! {
    /// The activation between hidden layers; the output layer is linear.
    pub enum Activation ("activation") {
        Relu = "relu",
        Tanh = "tanh",
    }
}

/// Why bytes are not a valid model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("not a safetensors file: {0}")]
    NotSafetensors(String),
    #[error("metadata `format` is {found:?}, expected \"{FORMAT}\"")]
    Format { found: Option<String> },
    #[error("metadata `version` is {found:?}; this Tandem reads version {VERSION}")]
    Version { found: Option<String> },
    #[error("metadata `activation` is {found:?}, expected relu or tanh")]
    Activation { found: Option<String> },
    #[error("the model has no layers (a file needs `layer.0.weight`, a shape two widths or more)")]
    NoLayers,
    #[error("tensor `{0}` is missing")]
    MissingTensor(String),
    #[error("tensor `{0}` is not part of the format")]
    ExtraTensor(String),
    #[error("tensor `{tensor}` is {found}, expected F32")]
    Dtype { tensor: String, found: String },
    #[error("tensor `{tensor}` has shape {found:?}, expected {expected}")]
    Shape {
        tensor: String,
        found: Vec<usize>,
        expected: String,
    },
    #[error("layer {layer} takes {inputs} inputs but the layer before gives {previous_outputs}")]
    Chain {
        layer: usize,
        inputs: usize,
        previous_outputs: usize,
    },
    #[error("tensor `{tensor}` holds {value} at index {index}; every value must be finite")]
    NonFinite {
        tensor: String,
        index: usize,
        value: f32,
    },
    #[error("input.std[{index}] is {value}; every std must be > 0")]
    Std { index: usize, value: f32 },
    #[error("{what} is {value}, over the limit of {limit}")]
    TooLarge {
        what: &'static str,
        value: u64,
        limit: u64,
    },
    // The field is not named `source`, so the message carries the cause
    // once, whether printed plainly or as an error chain.
    #[error("cannot read {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
}

/// One dense layer: `outputs x inputs` weights, row-major, and `outputs`
/// biases.
#[derive(Debug, Clone, PartialEq)]
pub struct Layer {
    pub inputs: usize,
    pub outputs: usize,
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

/// A network: `x -> (x - mean) / std -> layer 0 -> activation -> ... ->
/// last layer`.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    pub layers: Vec<Layer>,
    pub activation: Activation,
    /// Per input feature.
    pub input_mean: Vec<f32>,
    /// Per input feature; every value > 0.
    pub input_std: Vec<f32>,
}

/// A model's architecture without its values: what the registry records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelShape {
    /// Layer widths from the inputs to the outputs: `[16, 64, 64, 1]` is
    /// three layers.
    pub sizes: Vec<usize>,
    pub activation: Activation,
}

impl ModelShape {
    /// Checks widths and counts against the format's bounds.
    pub fn new(sizes: &[usize], activation: Activation) -> Result<Self, ModelError> {
        if sizes.len() < 2 {
            return Err(ModelError::NoLayers);
        }
        bound("layer count", sizes.len() as u64 - 1, MAX_LAYERS as u64)?;
        for &width in sizes {
            bound("a layer width", width as u64, MAX_WIDTH as u64)?;
            if width == 0 {
                return Err(ModelError::Shape {
                    tensor: "layer sizes".into(),
                    found: sizes.to_vec(),
                    expected: "every width at least 1".into(),
                });
            }
        }
        let shape = Self {
            sizes: sizes.to_vec(),
            activation,
        };
        bound(
            "the parameter size in bytes",
            shape.parameter_bytes(),
            MAX_PARAMETER_BYTES,
        )?;
        Ok(shape)
    }

    pub fn inputs(&self) -> usize {
        self.sizes.first().copied().unwrap_or(0)
    }

    /// Bytes of parameters (f32): weights, biases and normalisation, what
    /// the model occupies on a device before activations.
    pub fn parameter_bytes(&self) -> u64 {
        let layers: u64 = self
            .sizes
            .windows(2)
            .map(|pair| (pair[0] as u64 + 1) * pair[1] as u64)
            .sum();
        4 * (layers + 2 * self.inputs() as u64)
    }

    /// Heavy when the parameters are over `threshold_bytes`, else light.
    pub fn class(&self, threshold_bytes: u64) -> Class {
        if self.parameter_bytes() > threshold_bytes {
            Class::Heavy
        } else {
            Class::Light
        }
    }

    /// The widths as the registry writes them: `16,64,64,1`.
    pub fn sizes_text(&self) -> String {
        self.sizes
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }
}

fn bound(what: &'static str, value: u64, limit: u64) -> Result<(), ModelError> {
    if value > limit {
        return Err(ModelError::TooLarge { what, value, limit });
    }
    Ok(())
}

impl Model {
    /// A model of the given widths with random weights: He initialisation
    /// for relu, Xavier for tanh, zero biases, identity normalisation (mean
    /// 0, std 1). The same arguments give the same bits on every host.
    pub fn random(sizes: &[usize], activation: Activation, seed: u64) -> Result<Self, ModelError> {
        let shape = ModelShape::new(sizes, activation)?;
        let mut normal = Normal::new(seed);
        let layers = shape
            .sizes
            .windows(2)
            .map(|pair| {
                let (inputs, outputs) = (pair[0], pair[1]);
                let std = init_std(activation, inputs, outputs);
                let weight = (0..inputs * outputs)
                    .map(|_| (normal.sample() * std) as f32)
                    .collect();
                Layer {
                    inputs,
                    outputs,
                    weight,
                    bias: vec![0.0; outputs],
                }
            })
            .collect();
        Ok(Self {
            layers,
            activation,
            input_mean: vec![0.0; shape.inputs()],
            input_std: vec![1.0; shape.inputs()],
        })
    }

    /// The architecture.
    pub fn shape(&self) -> ModelShape {
        let mut sizes: Vec<usize> = self.layers.first().map(|l| l.inputs).into_iter().collect();
        sizes.extend(self.layers.iter().map(|l| l.outputs));
        ModelShape {
            sizes,
            activation: self.activation,
        }
    }

    pub fn parameter_bytes(&self) -> u64 {
        self.shape().parameter_bytes()
    }

    /// Heavy when the parameters are over `threshold_bytes`, else light.
    pub fn class(&self, threshold_bytes: u64) -> Class {
        self.shape().class(threshold_bytes)
    }

    /// Reads a model file, checking every rule of the format.
    pub fn decode(bytes: &[u8]) -> Result<Self, ModelError> {
        let (header_len, metadata) = SafeTensors::read_metadata(bytes)
            .map_err(|e| ModelError::NotSafetensors(e.to_string()))?;
        let shape = check_layout(&metadata)?;
        let data = bytes.get(8 + header_len..).unwrap_or_default();
        let tensor = |name: &str| -> Result<Vec<f32>, ModelError> {
            let (start, end) = metadata
                .info(name)
                .map(|info| info.data_offsets)
                .ok_or_else(|| ModelError::MissingTensor(name.to_owned()))?;
            let raw = data.get(start..end).ok_or_else(|| {
                ModelError::NotSafetensors(format!("tensor `{name}` lies outside the file"))
            })?;
            let values = floats(raw);
            check_values(name, 0, &values)?;
            Ok(values)
        };
        let layers = shape
            .sizes
            .windows(2)
            .enumerate()
            .map(|(i, pair)| {
                Ok(Layer {
                    inputs: pair[0],
                    outputs: pair[1],
                    weight: tensor(&format!("layer.{i}.weight"))?,
                    bias: tensor(&format!("layer.{i}.bias"))?,
                })
            })
            .collect::<Result<_, ModelError>>()?;
        Ok(Self {
            layers,
            activation: shape.activation,
            input_mean: tensor("input.mean")?,
            input_std: tensor("input.std")?,
        })
    }

    /// The model as a safetensors file: tensors in layer order, then the
    /// normalisation, so equal models give equal bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut tensors: Vec<(String, Vec<usize>, &[f32])> = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            tensors.push((
                format!("layer.{i}.weight"),
                vec![layer.outputs, layer.inputs],
                &layer.weight,
            ));
            tensors.push((format!("layer.{i}.bias"), vec![layer.outputs], &layer.bias));
        }
        tensors.push((
            "input.mean".into(),
            vec![self.input_mean.len()],
            &self.input_mean,
        ));
        tensors.push((
            "input.std".into(),
            vec![self.input_std.len()],
            &self.input_std,
        ));

        // The header is written by hand rather than through
        // `safetensors::serialize`, whose only failures cannot happen here
        // and which would otherwise need an `expect`.
        let mut header = format!(
            "{{\"__metadata__\":{{\"activation\":\"{}\",\"format\":\"{FORMAT}\",\"version\":\"{VERSION}\"}}",
            self.activation
        );
        let mut offset = 0usize;
        for (name, shape, values) in &tensors {
            let end = offset + 4 * values.len();
            let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
            header.push_str(&format!(
                ",\"{name}\":{{\"dtype\":\"F32\",\"shape\":[{}],\"data_offsets\":[{offset},{end}]}}",
                dims.join(",")
            ));
            offset = end;
        }
        header.push('}');
        // The format pads the header with spaces so the data is 8-aligned.
        while header.len() % 8 != 0 {
            header.push(' ');
        }
        let mut out = Vec::with_capacity(8 + header.len() + offset);
        out.extend_from_slice(&(header.len() as u64).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        for (_, _, values) in &tensors {
            for value in values.iter() {
                out.extend_from_slice(&value.to_le_bytes());
            }
        }
        out
    }
}

/// The standard deviation of a layer's initial weights.
fn init_std(activation: Activation, inputs: usize, outputs: usize) -> f64 {
    match activation {
        // He: keeps the variance of relu activations constant over depth.
        Activation::Relu => (2.0 / inputs as f64).sqrt(),
        // Xavier (Glorot normal): balances forward and backward variance
        // for a symmetric activation.
        Activation::Tanh => (2.0 / (inputs + outputs) as f64).sqrt(),
    }
}

/// Standard normal samples from splitmix64 and Box-Muller: small, seeded,
/// and the same on every host.
struct Normal {
    state: u64,
    spare: Option<f64>,
}

impl Normal {
    fn new(seed: u64) -> Self {
        Self {
            state: seed,
            spare: None,
        }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1]: never 0, so the logarithm below is finite.
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    fn sample(&mut self) -> f64 {
        if let Some(spare) = self.spare.take() {
            return spare;
        }
        let radius = (-2.0 * self.uniform().ln()).sqrt();
        let angle = std::f64::consts::TAU * self.uniform();
        self.spare = Some(radius * angle.sin());
        radius * angle.cos()
    }
}

/// Checks the header: metadata, the set of tensors, dtypes and shapes.
fn check_layout(metadata: &Metadata) -> Result<ModelShape, ModelError> {
    let meta = metadata.metadata().as_ref();
    let field = |name: &str| meta.and_then(|m| m.get(name)).cloned();
    let format = field("format");
    if format.as_deref() != Some(FORMAT) {
        return Err(ModelError::Format { found: format });
    }
    let version = field("version");
    if version.as_deref() != Some(VERSION) {
        return Err(ModelError::Version { found: version });
    }
    let found = field("activation");
    let activation = found
        .as_deref()
        .and_then(|a| a.parse::<Activation>().ok())
        .ok_or(ModelError::Activation { found })?;

    let tensors = metadata.tensors();
    let layer_count = count_layers(tensors.keys())?;
    let mut expected = Vec::with_capacity(2 * layer_count + 2);
    for i in 0..layer_count {
        expected.push(format!("layer.{i}.weight"));
        expected.push(format!("layer.{i}.bias"));
    }
    expected.push("input.mean".into());
    expected.push("input.std".into());
    if let Some(missing) = expected.iter().find(|n| !tensors.contains_key(*n)) {
        return Err(ModelError::MissingTensor(missing.clone()));
    }
    let known: BTreeSet<&str> = expected.iter().map(String::as_str).collect();
    let mut extra: Vec<&String> = tensors
        .keys()
        .filter(|n| !known.contains(n.as_str()))
        .collect();
    extra.sort();
    if let Some(extra) = extra.first() {
        return Err(ModelError::ExtraTensor((*extra).clone()));
    }
    for name in &expected {
        let dtype = tensors[name].dtype;
        if dtype != Dtype::F32 {
            return Err(ModelError::Dtype {
                tensor: name.clone(),
                found: dtype.to_string(),
            });
        }
    }
    let shape_of = |name: &str| tensors[name].shape.clone();
    let sizes = chain_sizes(layer_count, &shape_of)?;
    let inputs = sizes[0];
    for name in ["input.mean", "input.std"] {
        let shape = shape_of(name);
        if shape != [inputs] {
            return Err(ModelError::Shape {
                tensor: name.into(),
                found: shape,
                expected: format!("[{inputs}] (layer 0's inputs)"),
            });
        }
    }
    ModelShape::new(&sizes, activation)
}

/// The number of layers: one more than the highest `layer.{i}.*` index.
/// Gaps are found later as missing tensors.
fn count_layers<'a>(names: impl Iterator<Item = &'a String>) -> Result<usize, ModelError> {
    let mut highest: Option<usize> = None;
    for name in names {
        let index = name
            .strip_prefix("layer.")
            .and_then(|rest| rest.split_once('.'))
            .and_then(|(index, _)| index.parse::<usize>().ok());
        if let Some(index) = index {
            highest = Some(highest.map_or(index, |h| h.max(index)));
        }
    }
    let count = highest.ok_or(ModelError::NoLayers)?.saturating_add(1);
    bound("layer count", count as u64, MAX_LAYERS as u64)?;
    Ok(count)
}

/// Checks that weights are `[outputs, inputs]`, biases `[outputs]`, and that
/// each layer takes what the one before gives; returns the widths.
fn chain_sizes(
    layer_count: usize,
    shape_of: &dyn Fn(&str) -> Vec<usize>,
) -> Result<Vec<usize>, ModelError> {
    let mut sizes = Vec::with_capacity(layer_count + 1);
    for i in 0..layer_count {
        let name = format!("layer.{i}.weight");
        let weight = shape_of(&name);
        let &[outputs, inputs] = weight.as_slice() else {
            return Err(ModelError::Shape {
                tensor: name,
                found: weight,
                expected: "[outputs, inputs]".into(),
            });
        };
        match sizes.last() {
            None => sizes.push(inputs),
            Some(&previous_outputs) if previous_outputs != inputs => {
                return Err(ModelError::Chain {
                    layer: i,
                    inputs,
                    previous_outputs,
                });
            }
            Some(_) => {}
        }
        let name = format!("layer.{i}.bias");
        let bias = shape_of(&name);
        if bias != [outputs] {
            return Err(ModelError::Shape {
                tensor: name,
                found: bias,
                expected: format!("[{outputs}] (the weight's outputs)"),
            });
        }
        sizes.push(outputs);
    }
    Ok(sizes)
}

/// Little-endian f32s; `raw.len()` is a multiple of 4 (checked by the
/// safetensors header validation against the F32 shape).
fn floats(raw: &[u8]) -> Vec<f32> {
    raw.chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// Every value finite; every std positive. `first` is the index of
/// `values[0]` within the tensor, for the message.
fn check_values(tensor: &str, first: usize, values: &[f32]) -> Result<(), ModelError> {
    for (offset, &value) in values.iter().enumerate() {
        let index = first + offset;
        if !value.is_finite() {
            return Err(ModelError::NonFinite {
                tensor: tensor.to_owned(),
                index,
                value,
            });
        }
        if tensor == "input.std" && value <= 0.0 {
            return Err(ModelError::Std { index, value });
        }
    }
    Ok(())
}

/// A model file checked and hashed without loading it whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFile {
    pub shape: ModelShape,
    /// The file's size.
    pub bytes: u64,
    /// SHA-256 of the whole file, lower-case hex: workers compare it with
    /// what they load.
    pub sha256: String,
}

impl ModelFile {
    /// Reads `path` once, front to back: checks the header as
    /// [`Model::decode`] does, every value as it streams past, and hashes
    /// the bytes.
    pub fn scan(path: &Path) -> Result<Self, ModelError> {
        let io = |error| ModelError::Io {
            path: path.to_owned(),
            error,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let bytes = file.metadata().map_err(io)?.len();
        let mut reader = std::io::BufReader::with_capacity(SCAN_CHUNK_BYTES, file);
        let mut hasher = Sha256::new();
        let header = read_header(&mut reader, bytes, &mut hasher, path)?;
        let metadata: Metadata = serde_json::from_slice(&header)
            .map_err(|e| ModelError::NotSafetensors(format!("bad header: {e}")))?;
        let data_len = (bytes - 8 - header.len() as u64) as usize;
        if metadata.data_len() != data_len {
            return Err(ModelError::NotSafetensors(format!(
                "the header describes {} data bytes, the file holds {data_len}",
                metadata.data_len()
            )));
        }
        let shape = check_layout(&metadata)?;
        let mut chunk = vec![0u8; SCAN_CHUNK_BYTES];
        // Tensors are contiguous from offset 0 (the header validation checks
        // that), so reading them in offset order reads the data front to back.
        for name in metadata.offset_keys() {
            let (start, end) = metadata.info(&name).map_or((0, 0), |i| i.data_offsets);
            let mut done = start;
            while done < end {
                let len = (end - done).min(SCAN_CHUNK_BYTES);
                reader.read_exact(&mut chunk[..len]).map_err(io)?;
                hasher.update(&chunk[..len]);
                check_values(&name, (done - start) / 4, &floats(&chunk[..len]))?;
                done += len;
            }
        }
        Ok(Self {
            shape,
            bytes,
            sha256: hex::encode(hasher.finalize()),
        })
    }
}

/// Reads and hashes the length prefix and the JSON header; returns the
/// header.
fn read_header(
    reader: &mut impl Read,
    file_bytes: u64,
    hasher: &mut Sha256,
    path: &Path,
) -> Result<Vec<u8>, ModelError> {
    let io = |error| ModelError::Io {
        path: path.to_owned(),
        error,
    };
    if file_bytes < 8 {
        return Err(ModelError::NotSafetensors(format!(
            "{file_bytes} bytes, too short for the header length"
        )));
    }
    let mut prefix = [0u8; 8];
    reader.read_exact(&mut prefix).map_err(io)?;
    hasher.update(prefix);
    let header_len = u64::from_le_bytes(prefix);
    if header_len > MAX_HEADER_BYTES || header_len > file_bytes - 8 {
        return Err(ModelError::NotSafetensors(format!(
            "header length {header_len} does not fit a {file_bytes}-byte file"
        )));
    }
    let mut header = vec![0u8; header_len as usize];
    reader.read_exact(&mut header).map_err(io)?;
    hasher.update(&header);
    Ok(header)
}

/// SHA-256 of bytes, lower-case hex, as [`ModelFile::sha256`].
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use safetensors::tensor::TensorView;

    use super::*;

    /// A small model with distinct, awkward values (negative zero, a
    /// subnormal, large magnitudes) so a round trip that loses bits shows.
    fn sample() -> Model {
        let mut model = Model::random(&[3, 4, 2], Activation::Tanh, 7).unwrap();
        model.layers[0].weight[0] = -0.0;
        model.layers[0].weight[1] = f32::MIN_POSITIVE / 2.0;
        model.layers[1].bias = vec![1.5e30, -2.25];
        model.input_mean = vec![0.5, -1.0, 100.0];
        model.input_std = vec![2.0, 0.25, 1e-20];
        model
    }

    type Tensors = Vec<(String, Dtype, Vec<usize>, Vec<u8>)>;

    /// The sample's tensors and metadata, to be spoiled one way per case and
    /// written by the safetensors crate (an independent writer).
    fn parts() -> (Tensors, HashMap<String, String>) {
        let model = sample();
        let raw = |values: &[f32]| values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut tensors = Vec::new();
        for (i, layer) in model.layers.iter().enumerate() {
            tensors.push((
                format!("layer.{i}.weight"),
                Dtype::F32,
                vec![layer.outputs, layer.inputs],
                raw(&layer.weight),
            ));
            tensors.push((
                format!("layer.{i}.bias"),
                Dtype::F32,
                vec![layer.outputs],
                raw(&layer.bias),
            ));
        }
        tensors.push((
            "input.mean".into(),
            Dtype::F32,
            vec![3],
            raw(&model.input_mean),
        ));
        tensors.push((
            "input.std".into(),
            Dtype::F32,
            vec![3],
            raw(&model.input_std),
        ));
        let meta = [
            ("format", FORMAT),
            ("version", VERSION),
            ("activation", "tanh"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .into();
        (tensors, meta)
    }

    fn write(tensors: &Tensors, meta: HashMap<String, String>) -> Vec<u8> {
        let views: Vec<(String, TensorView<'_>)> = tensors
            .iter()
            .map(|(name, dtype, shape, data)| {
                (
                    name.clone(),
                    TensorView::new(*dtype, shape.clone(), data).unwrap(),
                )
            })
            .collect();
        safetensors::serialize(views, Some(meta)).unwrap()
    }

    fn set(tensors: &mut Tensors, name: &str, dtype: Dtype, shape: &[usize], values: &[f32]) {
        let data = match dtype {
            Dtype::F64 => values
                .iter()
                .flat_map(|v| f64::from(*v).to_le_bytes())
                .collect(),
            _ => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        };
        let entry = (name.to_owned(), dtype, shape.to_vec(), data);
        match tensors.iter_mut().find(|t| t.0 == name) {
            Some(t) => *t = entry,
            None => tensors.push(entry),
        }
    }

    #[test]
    fn round_trip_is_bit_for_bit() {
        let model = sample();
        let bytes = model.encode();
        let back = Model::decode(&bytes).unwrap();
        let bits = |m: &Model| -> Vec<u32> {
            m.layers
                .iter()
                .flat_map(|l| l.weight.iter().chain(&l.bias))
                .chain(&m.input_mean)
                .chain(&m.input_std)
                .map(|v| v.to_bits())
                .collect()
        };
        assert_eq!(bits(&back), bits(&model));
        assert_eq!(back.shape(), model.shape());
        assert_eq!(back.encode(), bytes);
        // The file written by the safetensors crate decodes to the same model.
        let (tensors, meta) = parts();
        assert_eq!(
            bits(&Model::decode(&write(&tensors, meta)).unwrap()),
            bits(&model)
        );
    }

    #[test]
    fn encoded_files_read_in_the_safetensors_crate() {
        let model = sample();
        let bytes = model.encode();
        let file = SafeTensors::deserialize(&bytes).unwrap();
        let weight = file.tensor("layer.1.weight").unwrap();
        assert_eq!(weight.dtype(), Dtype::F32);
        assert_eq!(weight.shape(), [2, 4]);
        assert_eq!(floats(weight.data()), model.layers[1].weight);
        let (_, metadata) = SafeTensors::read_metadata(&bytes).unwrap();
        let meta = metadata.metadata().clone().unwrap();
        assert_eq!(meta["format"], "tandem-mlp");
        assert_eq!(meta["version"], "1");
        assert_eq!(meta["activation"], "tanh");
    }

    /// Spoils the sample with `change` and expects `decode` to say `expect`.
    fn check(change: impl FnOnce(&mut Tensors, &mut HashMap<String, String>), expect: &str) {
        let (mut tensors, mut meta) = parts();
        change(&mut tensors, &mut meta);
        let err = Model::decode(&write(&tensors, meta))
            .unwrap_err()
            .to_string();
        assert_eq!(err, expect);
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        check(
            |_, m| drop(m.insert("format".into(), "gguf".into())),
            "metadata `format` is Some(\"gguf\"), expected \"tandem-mlp\"",
        );
        check(
            |_, m| drop(m.remove("format")),
            "metadata `format` is None, expected \"tandem-mlp\"",
        );
        check(
            |_, m| drop(m.insert("version".into(), "2".into())),
            "metadata `version` is Some(\"2\"); this Tandem reads version 1",
        );
        check(
            |_, m| drop(m.insert("activation".into(), "gelu".into())),
            "metadata `activation` is Some(\"gelu\"), expected relu or tanh",
        );
        check(
            |t, _| t.retain(|t| t.0 != "layer.1.bias"),
            "tensor `layer.1.bias` is missing",
        );
        check(
            |t, _| t.retain(|t| t.0 != "input.std"),
            "tensor `input.std` is missing",
        );
        check(
            |t, _| t.retain(|t| !t.0.starts_with("layer.")),
            "the model has no layers (a file needs `layer.0.weight`, a shape two widths or more)",
        );
        check(
            |t, _| set(t, "layer.2.bias", Dtype::F32, &[1], &[0.0]),
            "tensor `layer.2.weight` is missing",
        );
        check(
            |t, _| set(t, "optimizer.state", Dtype::F32, &[1], &[0.0]),
            "tensor `optimizer.state` is not part of the format",
        );
        check(
            |t, _| set(t, "layer.0.bias", Dtype::F64, &[4], &[0.0; 4]),
            "tensor `layer.0.bias` is F64, expected F32",
        );
        check(
            |t, _| set(t, "layer.0.weight", Dtype::F32, &[12], &[0.0; 12]),
            "tensor `layer.0.weight` has shape [12], expected [outputs, inputs]",
        );
        check(
            |t, _| set(t, "layer.1.weight", Dtype::F32, &[2, 5], &[0.0; 10]),
            "layer 1 takes 5 inputs but the layer before gives 4",
        );
        check(
            |t, _| set(t, "layer.0.bias", Dtype::F32, &[3], &[0.0; 3]),
            "tensor `layer.0.bias` has shape [3], expected [4] (the weight's outputs)",
        );
        check(
            |t, _| set(t, "input.mean", Dtype::F32, &[4], &[0.0; 4]),
            "tensor `input.mean` has shape [4], expected [3] (layer 0's inputs)",
        );
        check(
            |t, _| set(t, "layer.1.bias", Dtype::F32, &[2], &[0.0, f32::NAN]),
            "tensor `layer.1.bias` holds NaN at index 1; every value must be finite",
        );
        check(
            |t, _| {
                set(
                    t,
                    "input.mean",
                    Dtype::F32,
                    &[3],
                    &[0.0, 0.0, f32::INFINITY],
                )
            },
            "tensor `input.mean` holds inf at index 2; every value must be finite",
        );
        check(
            |t, _| set(t, "input.std", Dtype::F32, &[3], &[1.0, 0.0, 1.0]),
            "input.std[1] is 0; every std must be > 0",
        );
        check(
            |t, _| set(t, "input.std", Dtype::F32, &[3], &[1.0, 1.0, -2.0]),
            "input.std[2] is -2; every std must be > 0",
        );
    }

    #[test]
    fn sizes_over_the_bounds_are_refused() {
        let (mut tensors, meta) = parts();
        let wide = MAX_WIDTH + 1;
        set(
            &mut tensors,
            "layer.1.weight",
            Dtype::F32,
            &[wide, 4],
            &vec![0.0; wide * 4],
        );
        set(
            &mut tensors,
            "layer.1.bias",
            Dtype::F32,
            &[wide],
            &vec![0.0; wide],
        );
        let err = Model::decode(&write(&tensors, meta))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!("a layer width is {wide}, over the limit of {MAX_WIDTH}")
        );
        let err = ModelShape::new(&vec![2; MAX_LAYERS + 2], Activation::Relu).unwrap_err();
        assert!(matches!(
            err,
            ModelError::TooLarge {
                what: "layer count",
                ..
            }
        ));
        // 128k x 128k x 17 layers of f32 is over 256 GiB.
        let err = ModelShape::new(&[MAX_WIDTH; 18], Activation::Relu).unwrap_err();
        assert!(matches!(
            err,
            ModelError::TooLarge {
                what: "the parameter size in bytes",
                ..
            }
        ));
    }

    #[test]
    fn garbage_is_not_a_model() {
        for bytes in [&b""[..], b"hello world, not a model", &[255u8; 64]] {
            let err = Model::decode(bytes).unwrap_err();
            assert!(matches!(err, ModelError::NotSafetensors(_)), "{err}");
        }
        // A valid safetensors file of another format.
        let (tensors, _) = parts();
        let err = Model::decode(&write(&tensors, HashMap::new())).unwrap_err();
        assert!(matches!(err, ModelError::Format { found: None }));
    }

    #[test]
    fn class_follows_the_threshold() {
        // [16, 64, 64, 1]: (17*64 + 65*64 + 65*1) + 2*16 = 5345 floats.
        let model = Model::random(&[16, 64, 64, 1], Activation::Relu, 1).unwrap();
        assert_eq!(model.parameter_bytes(), 4 * 5345);
        assert_eq!(model.class(4 * 5345), Class::Light);
        assert_eq!(model.class(4 * 5345 - 1), Class::Heavy);
        assert_eq!(model.class(5_000_000_000), Class::Light);
        // A 5 GB model by shape alone: 40000 x 40000 x 1 layer = 6.4 GB.
        let big = ModelShape::new(&[40_000, 40_000], Activation::Relu).unwrap();
        assert_eq!(big.class(5_000_000_000), Class::Heavy);
        assert_eq!(big.sizes_text(), "40000,40000");
    }

    #[test]
    fn random_is_deterministic() {
        let a = Model::random(&[8, 16, 1], Activation::Relu, 42).unwrap();
        let b = Model::random(&[8, 16, 1], Activation::Relu, 42).unwrap();
        let c = Model::random(&[8, 16, 1], Activation::Relu, 43).unwrap();
        assert_eq!(a.encode(), b.encode());
        assert_ne!(a.layers[0].weight, c.layers[0].weight);
        assert_eq!(a.input_mean, vec![0.0; 8]);
        assert_eq!(a.input_std, vec![1.0; 8]);
        assert!(a.layers.iter().all(|l| l.bias.iter().all(|&b| b == 0.0)));
        // Pinned so a change in the generator shows (the first splitmix64
        // output of seed 42 is 0xbdd732262feb6e95).
        let mut normal = Normal::new(42);
        assert_eq!(normal.next_u64(), 0xbdd7_3226_2feb_6e95);
    }

    /// Sample mean and standard deviation of a layer's weights.
    fn moments(values: &[f32]) -> (f64, f64) {
        let n = values.len() as f64;
        let mean = values.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let var = values
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / n;
        (mean, var.sqrt())
    }

    #[test]
    fn random_weights_have_the_init_scale() {
        // 131072 weights per layer: the sample std is within 1% of the true
        // one with overwhelming probability (its relative error is about
        // 1/sqrt(2n) = 0.2%).
        let relu = Model::random(&[256, 512, 2], Activation::Relu, 3).unwrap();
        let (mean, std) = moments(&relu.layers[0].weight);
        assert!(mean.abs() < 0.01 * std, "mean {mean}");
        let he = (2.0f64 / 256.0).sqrt();
        assert!((std / he - 1.0).abs() < 0.01, "std {std}, He {he}");

        let tanh = Model::random(&[256, 512, 2], Activation::Tanh, 3).unwrap();
        let (_, std) = moments(&tanh.layers[0].weight);
        let xavier = (2.0f64 / (256.0 + 512.0)).sqrt();
        assert!(
            (std / xavier - 1.0).abs() < 0.01,
            "std {std}, Xavier {xavier}"
        );
        // Gaussian: about 68.27% within one std.
        let within = tanh.layers[0]
            .weight
            .iter()
            .filter(|&&w| f64::from(w).abs() < xavier)
            .count() as f64
            / tanh.layers[0].weight.len() as f64;
        assert!((within - 0.6827).abs() < 0.01, "{within}");
    }

    #[test]
    fn bad_sizes_for_random_are_refused() {
        assert!(matches!(
            Model::random(&[4], Activation::Relu, 0),
            Err(ModelError::NoLayers)
        ));
        assert!(matches!(
            Model::random(&[4, 0, 1], Activation::Relu, 0),
            Err(ModelError::Shape { .. })
        ));
    }

    fn temp_file(name: &str, bytes: &[u8]) -> PathBuf {
        let path = std::env::temp_dir().join(format!("tandem-model-{}-{name}", std::process::id()));
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn scanning_a_file_checks_and_hashes_it() {
        // Over one scan chunk, so values straddle reads.
        let model = Model::random(&[600, 700, 1], Activation::Relu, 5).unwrap();
        let bytes = model.encode();
        assert!(bytes.len() > SCAN_CHUNK_BYTES);
        let path = temp_file("good", &bytes);
        let file = ModelFile::scan(&path).unwrap();
        assert_eq!(file.shape, model.shape());
        assert_eq!(file.bytes, bytes.len() as u64);
        assert_eq!(file.sha256, sha256_hex(&bytes));
        // SHA-256 of "abc", FIPS 180-2's example.
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );

        let mut spoiled = model.clone();
        let last = spoiled.layers[0].weight.len() - 1;
        spoiled.layers[0].weight[last] = f32::NAN;
        std::fs::write(&path, spoiled.encode()).unwrap();
        let err = ModelFile::scan(&path).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "tensor `layer.0.weight` holds NaN at index {last}; every value must be finite"
            )
        );

        std::fs::write(&path, &bytes[..bytes.len() - 4]).unwrap();
        assert!(matches!(
            ModelFile::scan(&path),
            Err(ModelError::NotSafetensors(_))
        ));
        std::fs::write(&path, b"not a model").unwrap();
        assert!(matches!(
            ModelFile::scan(&path),
            Err(ModelError::NotSafetensors(_))
        ));
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(ModelFile::scan(&path), Err(ModelError::Io { .. })));
    }
}
