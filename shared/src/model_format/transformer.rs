//! The price-prediction transformer as a safetensors file.
//!
//! Metadata: `format = tandem-transformer`, `version = 1`, `heads`,
//! `window` (time steps per input window), `causal = true | false`,
//! `pooling = last | mean`, `positions = learned | sinusoidal`,
//! `activation = gelu-tanh` (the only one).
//!
//! Tensors, all `F32`, little-endian, in this order (`F` features, `D`
//! d_model, `T` window, `H` the feed-forward width, `O` outputs):
//!
//! - `input.mean`, `input.std` `[F]`: the network sees `(x - mean) / std`;
//! - `embed.weight` `[D, F]`, `embed.bias` `[D]`;
//! - `position.weight` `[T, D]` (learned positions only);
//! - per block `i`: `layer.{i}.norm1.{weight,bias}` `[D]`,
//!   `layer.{i}.attn.in_proj.weight` `[3D, D]` (q, k, v stacked, as
//!   PyTorch's `in_proj_weight`), `layer.{i}.attn.in_proj.bias` `[3D]`,
//!   `layer.{i}.attn.out_proj.weight` `[D, D]`, `.bias` `[D]`,
//!   `layer.{i}.norm2.{weight,bias}` `[D]`, `layer.{i}.ff.linear1.weight`
//!   `[H, D]`, `.bias` `[H]`, `layer.{i}.ff.linear2.weight` `[D, H]`,
//!   `.bias` `[D]`;
//! - `final_norm.{weight,bias}` `[D]`, `head.weight` `[O, D]`,
//!   `head.bias` `[O]`.
//!
//! Weights are `[outputs, inputs]` (PyTorch's `Linear` layout).
//! [`TransformerModel::decode`] checks every rule and names what is wrong.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use safetensors::SafeTensors;
use safetensors::tensor::Dtype;
use serde::{Deserialize, Serialize};

use crate::task::{Class, ParseError, text_enum};

/// The `format` metadata value of a transformer file.
pub const FORMAT: &str = "tandem-transformer";
/// The `version` metadata value this code reads and writes.
pub const VERSION: &str = "1";
/// The `activation` metadata value (GELU, tanh form).
pub const ACTIVATION: &str = "gelu-tanh";
/// Most blocks a transformer may have.
pub const MAX_LAYERS: usize = 256;
/// Most of any width (features, d_model, feed-forward, outputs, window).
pub const MAX_WIDTH: usize = 1 << 16;
/// Most heads.
pub const MAX_HEADS: usize = 1024;
/// Most parameter bytes.
pub const MAX_PARAMETER_BYTES: u64 = 256 << 30;

text_enum! {
    /// Which positions feed the head.
    pub enum Pooling ("pooling") {
        Last = "last",
        Mean = "mean",
    }
}

text_enum! {
    /// Learned or sinusoidal positions.
    pub enum Positions ("positions") {
        Learned = "learned",
        Sinusoidal = "sinusoidal",
    }
}

/// Why bytes are not a valid transformer.
#[derive(Debug, thiserror::Error)]
pub enum TransformerFormatError {
    #[error("not a safetensors file: {0}")]
    NotSafetensors(String),
    #[error("metadata `{field}` is {found:?}, expected {expected}")]
    Metadata {
        field: &'static str,
        found: Option<String>,
        expected: String,
    },
    #[error("tensor `{0}` is missing")]
    MissingTensor(String),
    #[error("tensor `{0}` is not part of the format")]
    ExtraTensor(String),
    #[error("tensor `{tensor}` is {found}, expected F32")]
    Dtype { tensor: String, found: String },
    #[error("tensor `{tensor}` has shape {found:?}, expected {expected:?}")]
    Shape {
        tensor: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("transformer {field}: {problem}")]
    Bad {
        field: &'static str,
        problem: String,
    },
    #[error("tensor `{tensor}` holds {value} at index {index}; every value must be finite")]
    NonFinite {
        tensor: String,
        index: usize,
        value: f32,
    },
    #[error("input.std[{index}] is {value}; every std must be > 0")]
    Std { index: usize, value: f32 },
}

/// A transformer's architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransformerShape {
    pub features: usize,
    pub window: usize,
    pub d_model: usize,
    pub heads: usize,
    pub layers: usize,
    pub ff: usize,
    pub outputs: usize,
    pub causal: bool,
    pub pooling: Pooling,
    pub positions: Positions,
}

impl TransformerShape {
    /// Checks every size against the format's bounds.
    pub fn check(&self) -> Result<(), TransformerFormatError> {
        let bad = |field, problem: String| Err(TransformerFormatError::Bad { field, problem });
        for (field, value, limit) in [
            ("features", self.features, MAX_WIDTH),
            ("window", self.window, MAX_WIDTH),
            ("d_model", self.d_model, MAX_WIDTH),
            ("heads", self.heads, MAX_HEADS),
            ("layers", self.layers, MAX_LAYERS),
            ("ff", self.ff, MAX_WIDTH),
            ("outputs", self.outputs, MAX_WIDTH),
        ] {
            if value == 0 || value > limit {
                return bad(field, format!("{value} is not within 1..={limit}"));
            }
        }
        if !self.d_model.is_multiple_of(self.heads) {
            return bad(
                "heads",
                format!(
                    "{} heads do not divide d_model {}",
                    self.heads, self.d_model
                ),
            );
        }
        if self.parameter_bytes() > MAX_PARAMETER_BYTES {
            return bad(
                "size",
                format!(
                    "{} parameter bytes, over the limit of {MAX_PARAMETER_BYTES}",
                    self.parameter_bytes()
                ),
            );
        }
        Ok(())
    }

    /// Every tensor's name and shape, in file order.
    pub fn tensors(&self) -> Vec<(String, Vec<usize>)> {
        let (f, d, h) = (self.features, self.d_model, self.ff);
        let mut list = vec![
            ("input.mean".to_string(), vec![f]),
            ("input.std".to_string(), vec![f]),
            ("embed.weight".to_string(), vec![d, f]),
            ("embed.bias".to_string(), vec![d]),
        ];
        if self.positions == Positions::Learned {
            list.push(("position.weight".into(), vec![self.window, d]));
        }
        for i in 0..self.layers {
            for (name, shape) in [
                ("norm1.weight", vec![d]),
                ("norm1.bias", vec![d]),
                ("attn.in_proj.weight", vec![3 * d, d]),
                ("attn.in_proj.bias", vec![3 * d]),
                ("attn.out_proj.weight", vec![d, d]),
                ("attn.out_proj.bias", vec![d]),
                ("norm2.weight", vec![d]),
                ("norm2.bias", vec![d]),
                ("ff.linear1.weight", vec![h, d]),
                ("ff.linear1.bias", vec![h]),
                ("ff.linear2.weight", vec![d, h]),
                ("ff.linear2.bias", vec![d]),
            ] {
                list.push((format!("layer.{i}.{name}"), shape));
            }
        }
        list.push(("final_norm.weight".into(), vec![d]));
        list.push(("final_norm.bias".into(), vec![d]));
        list.push(("head.weight".into(), vec![self.outputs, d]));
        list.push(("head.bias".into(), vec![self.outputs]));
        list
    }

    /// Floats of parameters (saturating: bounds are checked on the bytes).
    pub fn parameter_count(&self) -> u64 {
        let (f, d, h, t, o) = (
            self.features as u64,
            self.d_model as u64,
            self.ff as u64,
            self.window as u64,
            self.outputs as u64,
        );
        // Two norms, in_proj, out_proj, linear1, linear2 (weights and biases).
        let block = 4 * d + (3 * d * d + 3 * d) + (d * d + d) + (h * d + h) + (d * h + d);
        let positions = if self.positions == Positions::Learned {
            t * d
        } else {
            0
        };
        2 * f + d * f + d + positions + self.layers as u64 * block + 2 * d + o * d + o
    }

    pub fn parameter_bytes(&self) -> u64 {
        self.parameter_count().saturating_mul(4)
    }

    /// Heavy when the parameters are over `threshold_bytes`, else light.
    pub fn class(&self, threshold_bytes: u64) -> Class {
        if self.parameter_bytes() > threshold_bytes {
            Class::Heavy
        } else {
            Class::Light
        }
    }

    /// The architecture in one line, as the registry shows it.
    pub fn summary(&self) -> String {
        format!(
            "transformer features={} window={} d_model={} heads={} layers={} ff={} outputs={} causal={} pooling={} positions={}",
            self.features,
            self.window,
            self.d_model,
            self.heads,
            self.layers,
            self.ff,
            self.outputs,
            self.causal,
            self.pooling,
            self.positions
        )
    }
}

/// A transformer: its shape and its parameters, flat, in
/// [`TransformerShape::tensors`] order.
#[derive(Debug, Clone, PartialEq)]
pub struct TransformerModel {
    pub shape: TransformerShape,
    pub params: Vec<f32>,
}

/// Whether `bytes` is a safetensors file tagged as a transformer (the
/// decoder to use; it may still be invalid).
pub fn is_transformer(bytes: &[u8]) -> bool {
    SafeTensors::read_metadata(bytes).is_ok_and(|(_, metadata)| {
        metadata
            .metadata()
            .as_ref()
            .and_then(|m| m.get("format"))
            .is_some_and(|f| f == FORMAT)
    })
}

impl TransformerModel {
    /// Seeded random weights, as `tandem_kernels::transformer::Transformer::
    /// random` makes them (the same bits): projections uniform in
    /// `+-sqrt(1 / inputs)`, learned positions `+-0.02`, LayerNorm gains 1,
    /// biases 0, identity normalisation.
    pub fn random(shape: TransformerShape, seed: u64) -> Result<Self, TransformerFormatError> {
        shape.check()?;
        let mut state = seed;
        let mut next = || {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z ^ (z >> 31)) >> 40) as f32 * (1.0 / 16_777_216.0)
        };
        let mut params = Vec::with_capacity(shape.parameter_count() as usize);
        for (name, dims) in shape.tensors() {
            let count: usize = dims.iter().product();
            let gain = name.ends_with("std") || name.contains("norm") && name.ends_with("weight");
            if gain {
                params.extend(std::iter::repeat_n(1.0, count));
            } else if name.ends_with("bias") || name.ends_with("mean") {
                params.extend(std::iter::repeat_n(0.0, count));
            } else {
                let limit = if name == "position.weight" {
                    0.02
                } else {
                    (1.0 / dims[1] as f64).sqrt() as f32
                };
                params.extend((0..count).map(|_| limit * (2.0 * next() - 1.0)));
            }
        }
        Ok(Self { shape, params })
    }

    /// Reads a transformer file, checking every rule of the format.
    pub fn decode(bytes: &[u8]) -> Result<Self, TransformerFormatError> {
        let (header_len, metadata) = SafeTensors::read_metadata(bytes)
            .map_err(|e| TransformerFormatError::NotSafetensors(e.to_string()))?;
        let meta = metadata.metadata().clone().unwrap_or_default();
        let field = |name: &str| meta.get(name).cloned();
        let expect = |name: &'static str, wanted: &str| {
            let found = field(name);
            if found.as_deref() == Some(wanted) {
                Ok(())
            } else {
                Err(TransformerFormatError::Metadata {
                    field: name,
                    found,
                    expected: format!("{wanted:?}"),
                })
            }
        };
        expect("format", FORMAT)?;
        expect("version", VERSION)?;
        expect("activation", ACTIVATION)?;
        let number = |name: &'static str| -> Result<usize, TransformerFormatError> {
            let found = field(name);
            found
                .as_deref()
                .and_then(|v| v.parse::<usize>().ok())
                .ok_or(TransformerFormatError::Metadata {
                    field: name,
                    found,
                    expected: "a whole number".into(),
                })
        };
        let heads = number("heads")?;
        let window = number("window")?;
        let causal = match field("causal").as_deref() {
            Some("true") => true,
            Some("false") => false,
            found => {
                return Err(TransformerFormatError::Metadata {
                    field: "causal",
                    found: found.map(str::to_owned),
                    expected: "\"true\" or \"false\"".into(),
                });
            }
        };
        let pooling = field("pooling")
            .as_deref()
            .and_then(|v| v.parse::<Pooling>().ok())
            .ok_or_else(|| TransformerFormatError::Metadata {
                field: "pooling",
                found: field("pooling"),
                expected: "\"last\" or \"mean\"".into(),
            })?;
        let positions = field("positions")
            .as_deref()
            .and_then(|v| v.parse::<Positions>().ok())
            .ok_or_else(|| TransformerFormatError::Metadata {
                field: "positions",
                found: field("positions"),
                expected: "\"learned\" or \"sinusoidal\"".into(),
            })?;
        let tensors = metadata.tensors();
        let dims = |name: &str| -> Result<Vec<usize>, TransformerFormatError> {
            tensors
                .get(name)
                .map(|info| info.shape.clone())
                .ok_or_else(|| TransformerFormatError::MissingTensor(name.to_owned()))
        };
        let dim = |name: &str, axis: usize| -> Result<usize, TransformerFormatError> {
            let shape = dims(name)?;
            shape.get(axis).copied().ok_or(TransformerFormatError::Bad {
                field: "shape",
                problem: format!("tensor `{name}` has shape {shape:?}, too few axes"),
            })
        };
        let mut layers = 0;
        while tensors.contains_key(&format!("layer.{layers}.norm1.weight")) {
            layers += 1;
            if layers > MAX_LAYERS {
                break;
            }
        }
        if layers == 0 {
            return Err(TransformerFormatError::MissingTensor(
                "layer.0.norm1.weight".into(),
            ));
        }
        let shape = TransformerShape {
            features: dim("embed.weight", 1)?,
            window,
            d_model: dim("embed.weight", 0)?,
            heads,
            layers,
            ff: dim("layer.0.ff.linear1.weight", 0)?,
            outputs: dim("head.weight", 0)?,
            causal,
            pooling,
            positions,
        };
        shape.check()?;
        let expected = shape.tensors();
        let known: BTreeSet<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
        let mut extra: Vec<&String> = tensors
            .keys()
            .filter(|n| !known.contains(n.as_str()))
            .collect();
        extra.sort();
        if let Some(extra) = extra.first() {
            return Err(TransformerFormatError::ExtraTensor((*extra).clone()));
        }
        let data = bytes.get(8 + header_len..).unwrap_or_default();
        let mut params = Vec::with_capacity(shape.parameter_count() as usize);
        for (name, wanted) in &expected {
            let info = tensors
                .get(name)
                .ok_or_else(|| TransformerFormatError::MissingTensor(name.clone()))?;
            if info.dtype != Dtype::F32 {
                return Err(TransformerFormatError::Dtype {
                    tensor: name.clone(),
                    found: info.dtype.to_string(),
                });
            }
            if &info.shape != wanted {
                return Err(TransformerFormatError::Shape {
                    tensor: name.clone(),
                    found: info.shape.clone(),
                    expected: wanted.clone(),
                });
            }
            let (start, end) = info.data_offsets;
            let raw = data.get(start..end).ok_or_else(|| {
                TransformerFormatError::NotSafetensors(format!(
                    "tensor `{name}` lies outside the file"
                ))
            })?;
            for (index, chunk) in raw.chunks_exact(4).enumerate() {
                let value = f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
                if !value.is_finite() {
                    return Err(TransformerFormatError::NonFinite {
                        tensor: name.clone(),
                        index,
                        value,
                    });
                }
                if name == "input.std" && value <= 0.0 {
                    return Err(TransformerFormatError::Std { index, value });
                }
                params.push(value);
            }
        }
        Ok(Self { shape, params })
    }

    /// The model as a safetensors file, tensors in format order.
    pub fn encode(&self) -> Vec<u8> {
        let s = &self.shape;
        let mut header = format!(
            "{{\"__metadata__\":{{\"activation\":\"{ACTIVATION}\",\"causal\":\"{}\",\"format\":\"{FORMAT}\",\"heads\":\"{}\",\"pooling\":\"{}\",\"positions\":\"{}\",\"version\":\"{VERSION}\",\"window\":\"{}\"}}",
            s.causal, s.heads, s.pooling, s.positions, s.window
        );
        let mut offset = 0usize;
        for (name, shape) in s.tensors() {
            let end = offset + 4 * shape.iter().product::<usize>();
            let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
            header.push_str(&format!(
                ",\"{name}\":{{\"dtype\":\"F32\",\"shape\":[{}],\"data_offsets\":[{offset},{end}]}}",
                dims.join(",")
            ));
            offset = end;
        }
        header.push('}');
        while header.len() % 8 != 0 {
            header.push(' ');
        }
        let mut out = Vec::with_capacity(8 + header.len() + offset);
        out.extend_from_slice(&(header.len() as u64).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        for value in &self.params {
            out.extend_from_slice(&value.to_le_bytes());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> TransformerModel {
        let shape = TransformerShape {
            features: 3,
            window: 4,
            d_model: 8,
            heads: 2,
            layers: 2,
            ff: 16,
            outputs: 1,
            causal: true,
            pooling: Pooling::Last,
            positions: Positions::Learned,
        };
        let count = shape.parameter_count() as usize;
        let mut params: Vec<f32> = (0..count).map(|i| (i as f32 * 0.37).sin()).collect();
        // input.std: positive.
        for p in &mut params[3..6] {
            *p = 1.5;
        }
        TransformerModel { shape, params }
    }

    #[test]
    fn round_trip_is_bit_for_bit() {
        let model = sample();
        assert_eq!(model.shape.tensors().len(), 4 + 1 + 2 * 12 + 4);
        let listed: usize = model
            .shape
            .tensors()
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        assert_eq!(listed as u64, model.shape.parameter_count());
        let bytes = model.encode();
        assert!(is_transformer(&bytes));
        let back = TransformerModel::decode(&bytes).unwrap();
        assert_eq!(back, model);
        assert_eq!(back.encode(), bytes);
        // The safetensors crate reads it too.
        let read = SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(read.tensor("head.weight").unwrap().shape(), &[1, 8]);
    }

    fn replace(bytes: &[u8], from: &str, to: &str) -> Vec<u8> {
        let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header = std::str::from_utf8(&bytes[8..8 + len]).unwrap();
        let mut changed = header.replacen(from, to, 1);
        assert_ne!(changed, header, "{from} not in the header");
        while changed.len() < len {
            changed.push(' ');
        }
        while !changed.len().is_multiple_of(8) {
            changed.push(' ');
        }
        let mut out = (changed.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(changed.as_bytes());
        out.extend_from_slice(&bytes[8 + len..]);
        out
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        let good = sample().encode();
        let cases = [
            (
                "\"format\":\"tandem-transformer\"",
                "\"format\":\"tandem-mlp\"",
                "metadata `format`",
            ),
            (
                "\"version\":\"1\"",
                "\"version\":\"2\"",
                "metadata `version`",
            ),
            (
                "\"heads\":\"2\"",
                "\"heads\":\"3\"",
                "3 heads do not divide d_model 8",
            ),
            ("\"heads\":\"2\"", "\"heads\":\"x\"", "metadata `heads`"),
            (
                "\"causal\":\"true\"",
                "\"causal\":\"yes\"",
                "metadata `causal`",
            ),
            (
                "\"pooling\":\"last\"",
                "\"pooling\":\"max\"",
                "metadata `pooling`",
            ),
            (
                "\"activation\":\"gelu-tanh\"",
                "\"activation\":\"relu\"",
                "metadata `activation`",
            ),
            (
                "\"window\":\"4\"",
                "\"window\":\"5\"",
                "tensor `position.weight` has shape [4, 8], expected [5, 8]",
            ),
            (
                "\"head.bias\"",
                "\"head.extra\"",
                "tensor `head.extra` is not part of the format",
            ),
            (
                "\"input.mean\":{\"dtype\":\"F32\"",
                "\"input.mean\":{\"dtype\":\"I32\"",
                "tensor `input.mean` is I32",
            ),
        ];
        for (from, to, expect) in cases {
            let error = TransformerModel::decode(&replace(&good, from, to))
                .unwrap_err()
                .to_string();
            assert!(error.contains(expect), "{from} -> {to}: {error}");
        }
        let mut model = sample();
        model.params[4] = 0.0;
        let error = TransformerModel::decode(&model.encode())
            .unwrap_err()
            .to_string();
        assert!(error.contains("input.std[1] is 0"), "{error}");
        let mut model = sample();
        model.params[40] = f32::NAN;
        let error = TransformerModel::decode(&model.encode())
            .unwrap_err()
            .to_string();
        assert!(error.contains("must be finite"), "{error}");
        assert!(TransformerModel::decode(b"garbage").is_err());
    }
}
