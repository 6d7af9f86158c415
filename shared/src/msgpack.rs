//! MessagePack encoding of parameters and results.
//!
//! Structs are written as maps with field names (not positional arrays), so
//! a Python service reading a result with `msgpack.unpackb` gets a dict.
//!
//! Decoding is strict about the bytes and says where a value went wrong:
//!
//! - a blob must hold exactly one MessagePack value: bytes that are not
//!   MessagePack, and bytes left over after the value, are
//!   [`CodecError::NotMessagePack`] (a bad payload, not bad parameters);
//! - a value of the wrong shape is a [`ShapeError`] that names the field by
//!   its path (`assets[2].weight`), what was expected and what came, in
//!   words a user of any language reads (`sigma: expected a number, got a
//!   string ("0.2")`), not in Rust types or MessagePack markers.
//!
//! A blob decodes straight from its bytes (`rmp_serde`) when it is exactly
//! one value of the right shape. Otherwise it is read into an
//! [`rmpv::Value`] (by `rmp_serde`, which refuses the reserved marker and
//! bounds the nesting), and the value goes through this module's own serde
//! `Deserializer`, which keeps the path and the structure of each error:
//! `rmp_serde` and `rmpv`'s value deserializer report errors as plain text
//! without a path (`wrong msgpack marker FixStr(3)`).

use std::fmt;

use rmpv::Value;
use serde::Serialize;
use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, Visitor};

/// How deep values may nest (arrays and maps in one another). Reading is
/// recursive: this keeps it well within a thread's stack, and no kind's
/// parameters come near it.
pub const MAX_DEPTH: usize = 128;

/// A value that could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CodecError {
    #[error("cannot encode as MessagePack: {0}")]
    Encode(String),
    /// The bytes are not one MessagePack value: invalid, truncated, or
    /// followed by more bytes.
    #[error("not one MessagePack value: {0}")]
    NotMessagePack(String),
    /// One MessagePack value, of the wrong shape for the type.
    #[error("{0}")]
    Shape(#[from] ShapeError),
}

impl From<rmp_serde::encode::Error> for CodecError {
    fn from(err: rmp_serde::encode::Error) -> Self {
        CodecError::Encode(err.to_string())
    }
}

impl CodecError {
    /// The error code a task whose parameters fail this way ends with:
    /// `BAD_PAYLOAD` for bytes that are not one MessagePack value,
    /// `BAD_PARAMS` for a value of the wrong shape.
    pub fn code(&self) -> crate::ErrorCode {
        match self {
            CodecError::NotMessagePack(_) => crate::ErrorCode::BAD_PAYLOAD,
            CodecError::Shape(_) | CodecError::Encode(_) => crate::ErrorCode::BAD_PARAMS,
        }
    }
}

pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    Ok(rmp_serde::to_vec_named(value)?)
}

/// Decodes `bytes` (results, partial results, anything but a kind's
/// parameters): exactly one MessagePack value, of `T`'s shape; map entries
/// `T` does not know are skipped, so a reader keeps working when a newer
/// writer adds a field. An empty blob reads as MessagePack `nil`, so an
/// entry written without parameters still decodes for kinds that take none.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let bytes = nil_if_empty(bytes);
    // The fast path: straight from the bytes, when they are exactly one
    // value of the right shape. Reading into a `Value` first costs several
    // times as much on large parameters, so only a failure takes that path,
    // for the message (or for a shape `rmp_serde` cannot read directly).
    let mut rest = bytes;
    let mut de = rmp_serde::Deserializer::new(&mut rest);
    de.set_max_depth(MAX_DEPTH);
    if let Ok(value) = T::deserialize(&mut de)
        && rest.is_empty()
    {
        return Ok(value);
    }
    Ok(from_value(&read_value(bytes)?)?)
}

/// Decodes a kind's parameters: as [`decode`], and a field the parameters
/// do not define is an error (a misspelt optional field would otherwise be
/// ignored without a word, and the task run with its default).
///
/// The check encodes the decoded parameters again and looks for every
/// given map key among the keys written back: it sees into internally
/// tagged enums (`{"type": "sma", "period": 5}`), which serde decodes from
/// a buffer that no deserializer can check field by field.
///
/// Parameters taken as a whole [`rmpv::Value`] keep every key they are
/// given: they skip the check, which would cost more than the decoding
/// (the queue bench's no-op tasks).
pub fn decode_params<T: Serialize + DeserializeOwned + 'static>(
    bytes: &[u8],
) -> Result<T, CodecError> {
    let bytes = nil_if_empty(bytes);
    let params: T = decode(bytes)?;
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<rmpv::Value>() {
        return Ok(params);
    }
    let given = Keys::read(bytes)?;
    let kept = Keys::read(&encode(&params)?)?;
    match given.unknown_in(&kept) {
        Some(err) => Err(err.into()),
        None => Ok(params),
    }
}

/// An empty blob is MessagePack `nil`.
fn nil_if_empty(bytes: &[u8]) -> &[u8] {
    const NIL: &[u8] = &[0xc0];
    if bytes.is_empty() { NIL } else { bytes }
}

/// The map keys of a MessagePack value and where they are, without its
/// scalars: enough to compare the fields given with the fields kept, at a
/// fraction of the cost of reading whole values (parameters can hold
/// arrays of a hundred thousand numbers).
enum Keys {
    Leaf,
    Map(Vec<(Value, Keys)>),
    /// Only the elements that hold maps, by index.
    Array(Vec<(usize, Keys)>),
}

impl Keys {
    fn read(bytes: &[u8]) -> Result<Keys, CodecError> {
        let mut rd = bytes;
        Self::walk(&mut rd, u16::try_from(MAX_DEPTH).unwrap_or(u16::MAX))
            .map_err(|why| CodecError::NotMessagePack(format!("{} bytes: {why}", bytes.len())))
    }

    fn walk(rd: &mut &[u8], depth: u16) -> Result<Keys, String> {
        use rmp::Marker as M;
        use rmp::decode::RmpRead;
        let depth = depth.checked_sub(1).ok_or("nested too deep")?;
        let marker = rmp::decode::read_marker(rd).map_err(|_| "truncated".to_owned())?;
        // The length that follows a marker, in `width` bytes.
        let length = |rd: &mut &[u8], width: u8| -> Result<usize, String> {
            let n = match width {
                1 => rd.read_data_u8().map(u32::from),
                2 => rd.read_data_u16().map(u32::from),
                _ => rd.read_data_u32(),
            };
            let n = n.map_err(|_| "truncated".to_owned())?;
            Ok(usize::try_from(n).unwrap_or(usize::MAX))
        };
        let skip = |rd: &mut &[u8], n: usize| -> Result<Keys, String> {
            *rd = rd.get(n..).ok_or("truncated")?;
            Ok(Keys::Leaf)
        };
        match marker {
            M::FixMap(n) => Self::map(rd, usize::from(n), depth),
            M::Map16 => {
                let n = length(rd, 2)?;
                Self::map(rd, n, depth)
            }
            M::Map32 => {
                let n = length(rd, 4)?;
                Self::map(rd, n, depth)
            }
            M::FixArray(n) => Self::array(rd, usize::from(n), depth),
            M::Array16 => {
                let n = length(rd, 2)?;
                Self::array(rd, n, depth)
            }
            M::Array32 => {
                let n = length(rd, 4)?;
                Self::array(rd, n, depth)
            }
            M::Null | M::True | M::False | M::FixPos(_) | M::FixNeg(_) => Ok(Keys::Leaf),
            M::U8 | M::I8 => skip(rd, 1),
            M::U16 | M::I16 => skip(rd, 2),
            M::U32 | M::I32 | M::F32 => skip(rd, 4),
            M::U64 | M::I64 | M::F64 => skip(rd, 8),
            M::FixStr(n) => skip(rd, usize::from(n)),
            M::Str8 | M::Bin8 => {
                let n = length(rd, 1)?;
                skip(rd, n)
            }
            M::Str16 | M::Bin16 => {
                let n = length(rd, 2)?;
                skip(rd, n)
            }
            M::Str32 | M::Bin32 => {
                let n = length(rd, 4)?;
                skip(rd, n)
            }
            // An extension: its type byte, then its data.
            M::FixExt1 => skip(rd, 2),
            M::FixExt2 => skip(rd, 3),
            M::FixExt4 => skip(rd, 5),
            M::FixExt8 => skip(rd, 9),
            M::FixExt16 => skip(rd, 17),
            M::Ext8 => {
                let n = length(rd, 1)?;
                skip(rd, n.saturating_add(1))
            }
            M::Ext16 => {
                let n = length(rd, 2)?;
                skip(rd, n.saturating_add(1))
            }
            M::Ext32 => {
                let n = length(rd, 4)?;
                skip(rd, n.saturating_add(1))
            }
            M::Reserved => Err("the reserved marker 0xc1".into()),
        }
    }

    fn map(rd: &mut &[u8], n: usize, depth: u16) -> Result<Keys, String> {
        let mut entries = Vec::new();
        for _ in 0..n {
            let key = rmpv::decode::read_value(rd).map_err(|e| e.to_string())?;
            entries.push((key, Self::walk(rd, depth)?));
        }
        Ok(Keys::Map(entries))
    }

    fn array(rd: &mut &[u8], n: usize, depth: u16) -> Result<Keys, String> {
        let mut holding = Vec::new();
        for i in 0..n {
            // Numbers, the bulk of large parameters, are skipped here
            // without a call: a fixed integer, a float32 or a float64.
            let width = match rd.first() {
                Some(0x00..=0x7f | 0xe0..=0xff) => 1,
                Some(0xca) => 5,
                Some(0xcb) => 9,
                _ => 0,
            };
            if width > 0 && rd.len() >= width {
                *rd = &rd[width..];
                continue;
            }
            match Self::walk(rd, depth)? {
                Keys::Leaf => {}
                keys => holding.push((i, keys)),
            }
        }
        Ok(Keys::Array(holding))
    }

    /// The first map key given here that `kept` (the same value, decoded
    /// and encoded again) lacks.
    fn unknown_in(&self, kept: &Keys) -> Option<ShapeError> {
        match (self, kept) {
            (Keys::Map(given), Keys::Map(kept)) => given.iter().find_map(|(key, value)| match kept
                .iter()
                .find(|(k, _)| k == key)
            {
                Some((_, kept)) => value.unknown_in(kept).map(|e| e.within(segment_of(key))),
                None => Some(ShapeError {
                    path: vec![segment_of(key)],
                    problem: Problem::Unknown {
                        fields: kept
                            .iter()
                            .map(|(k, _)| k.as_str().map_or_else(|| k.to_string(), str::to_owned))
                            .collect(),
                    },
                }),
            }),
            (Keys::Array(given), Keys::Array(kept)) => given.iter().find_map(|(i, value)| {
                let (_, kept) = kept.iter().find(|(k, _)| k == i)?;
                value.unknown_in(kept).map(|e| e.within(Segment::Index(*i)))
            }),
            _ => None,
        }
    }
}

/// Reads `bytes` as exactly one MessagePack value (empty: `nil`).
pub fn read_value(bytes: &[u8]) -> Result<Value, CodecError> {
    if bytes.is_empty() {
        return Ok(Value::Nil);
    }
    let mut de = rmp_serde::Deserializer::new(std::io::Cursor::new(bytes));
    de.set_max_depth(MAX_DEPTH);
    let value = <Value as serde::Deserialize>::deserialize(&mut de).map_err(|err| {
        CodecError::NotMessagePack(format!("{} bytes that do not decode: {err}", bytes.len()))
    })?;
    let used = usize::try_from(de.position()).unwrap_or(usize::MAX);
    if used < bytes.len() {
        return Err(CodecError::NotMessagePack(format!(
            "a value of {used} byte{} followed by {} more bytes ({} in all)",
            if used == 1 { "" } else { "s" },
            bytes.len() - used,
            bytes.len()
        )));
    }
    Ok(value)
}

/// Converts a value already read into `T`, with the errors of this module.
pub fn from_value<T: DeserializeOwned>(value: &Value) -> Result<T, ShapeError> {
    T::deserialize(ValueDe { value }).map_err(|e| locate(e, value))
}

/// Renders MessagePack as JSON-like text for display.
pub fn to_display(bytes: &[u8]) -> String {
    match read_value(bytes) {
        Ok(value) => format!("{value}"),
        Err(_) => format!("<{} bytes of invalid MessagePack>", bytes.len()),
    }
}

/// One step of the path to a value: a map's field, an array's index, or a
/// map key that is not text.
#[derive(Debug, Clone, PartialEq)]
pub enum Segment {
    Field(String),
    Index(usize),
    Key(String),
}

/// What a value was, as the error message names it.
#[derive(Debug, Clone, PartialEq)]
pub enum Got {
    Bool(bool),
    Unsigned(u64),
    Signed(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Nil,
    Array,
    Map,
    Other(String),
}

impl Got {
    fn of(unexpected: de::Unexpected<'_>) -> Self {
        use de::Unexpected as U;
        match unexpected {
            U::Bool(b) => Got::Bool(b),
            U::Unsigned(n) => Got::Unsigned(n),
            U::Signed(n) => Got::Signed(n),
            U::Float(f) => Got::Float(f),
            U::Char(c) => Got::Str(c.to_string()),
            U::Str(s) => Got::Str(s.to_owned()),
            U::Bytes(b) => Got::Bytes(b.to_vec()),
            U::Unit | U::Option => Got::Nil,
            U::Seq => Got::Array,
            U::Map => Got::Map,
            U::NewtypeStruct => Got::Other("a MessagePack extension".into()),
            other => Got::Other(other.to_string()),
        }
    }

    /// Whether `value` is what this describes (used to find a value that
    /// serde reported without its path; see `locate`).
    fn matches(&self, value: &Value) -> bool {
        match (self, value) {
            (Got::Bool(b), Value::Boolean(v)) => b == v,
            (Got::Unsigned(n), Value::Integer(v)) => v.as_u64() == Some(*n),
            (Got::Signed(n), Value::Integer(v)) => v.as_i64() == Some(*n),
            (Got::Float(f), Value::F64(v)) => f.to_bits() == v.to_bits(),
            (Got::Float(f), Value::F32(v)) => f.to_bits() == f64::from(*v).to_bits(),
            (Got::Str(s), Value::String(v)) => v.as_str() == Some(s.as_str()),
            (Got::Bytes(b), Value::Binary(v)) => b == v,
            (Got::Nil, Value::Nil) => true,
            (Got::Array, Value::Array(_)) => true,
            (Got::Map, Value::Map(_)) => true,
            _ => false,
        }
    }
}

impl fmt::Display for Got {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Got::Bool(b) => write!(f, "a boolean ({b})"),
            Got::Unsigned(n) => write!(f, "an integer ({n})"),
            Got::Signed(n) => write!(f, "an integer ({n})"),
            Got::Float(x) => write!(f, "a number ({x})"),
            Got::Str(s) => {
                // A long string is cut: the message names it, not repeats it.
                let cut: String = s.chars().take(40).collect();
                let more = if cut.len() < s.len() { "..." } else { "" };
                write!(f, "a string ({cut:?}{more})")
            }
            Got::Bytes(b) => write!(f, "binary data ({} bytes)", b.len()),
            Got::Nil => f.write_str("nil"),
            Got::Array => f.write_str("an array"),
            Got::Map => f.write_str("a map"),
            Got::Other(text) => f.write_str(text),
        }
    }
}

/// What went wrong at the end of an error's path.
#[derive(Debug, Clone, PartialEq)]
pub enum Problem {
    /// A value of the wrong type, or out of the type's range.
    Type { expected: String, got: Got },
    /// An array of the wrong length.
    Length { expected: String, len: usize },
    /// A required field is missing (the path ends with it).
    Missing,
    /// A field the struct does not define (the path ends with it).
    Unknown { fields: Vec<String> },
    /// A name that is none of an enum's variants.
    Variant { got: String, variants: Vec<String> },
    /// A field given twice.
    Duplicate,
    /// Anything else, in the words of the type that refused it.
    Custom(String),
}

/// A MessagePack value of the wrong shape: where, and what went wrong.
#[derive(Debug, Clone, PartialEq)]
pub struct ShapeError {
    pub path: Vec<Segment>,
    pub problem: Problem,
}

impl ShapeError {
    fn new(problem: Problem) -> Self {
        Self {
            path: Vec::new(),
            problem,
        }
    }

    /// The same error, one step further down from the caller's view.
    fn within(mut self, segment: Segment) -> Self {
        self.path.insert(0, segment);
        self
    }

    /// The path as text: `assets[2].weight`; empty for the value itself.
    pub fn path_text(&self) -> String {
        let mut text = String::new();
        for segment in &self.path {
            match segment {
                Segment::Field(name) if text.is_empty() => text.push_str(name),
                Segment::Field(name) => {
                    text.push('.');
                    text.push_str(name);
                }
                Segment::Index(i) => text.push_str(&format!("[{i}]")),
                Segment::Key(key) => text.push_str(&format!("[{key}]")),
            }
        }
        text
    }
}

impl fmt::Display for ShapeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.path_text();
        if !path.is_empty() {
            write!(f, "{path}: ")?;
        }
        match &self.problem {
            Problem::Type { expected, got } => write!(f, "expected {expected}, got {got}"),
            Problem::Length { expected, len } => {
                write!(f, "expected {expected}, got {len} elements")
            }
            Problem::Missing => f.write_str("required field is missing"),
            Problem::Unknown { fields } if fields.is_empty() => {
                f.write_str("unknown field; none are defined here")
            }
            Problem::Unknown { fields } => {
                write!(f, "unknown field; the fields are {}", fields.join(", "))
            }
            Problem::Variant { got, variants } => {
                let names: Vec<String> = variants.iter().map(|v| format!("{v:?}")).collect();
                write!(f, "{got:?} is not one of {}", names.join(", "))
            }
            Problem::Duplicate => f.write_str("given twice"),
            Problem::Custom(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for ShapeError {}

impl de::Error for ShapeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self::new(Problem::Custom(msg.to_string()))
    }

    fn invalid_type(unexp: de::Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        Self::new(Problem::Type {
            expected: expected_in_words(exp),
            got: Got::of(unexp),
        })
    }

    fn invalid_value(unexp: de::Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        Self::invalid_type(unexp, exp)
    }

    fn invalid_length(len: usize, exp: &dyn de::Expected) -> Self {
        Self::new(Problem::Length {
            expected: expected_in_words(exp),
            len,
        })
    }

    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        Self::new(Problem::Variant {
            got: variant.to_owned(),
            variants: expected.iter().map(|v| (*v).to_owned()).collect(),
        })
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        Self {
            path: vec![Segment::Field(field.to_owned())],
            problem: Problem::Unknown {
                fields: expected.iter().map(|f| (*f).to_owned()).collect(),
            },
        }
    }

    fn missing_field(field: &'static str) -> Self {
        Self {
            path: vec![Segment::Field(field.to_owned())],
            problem: Problem::Missing,
        }
    }

    fn duplicate_field(field: &'static str) -> Self {
        Self {
            path: vec![Segment::Field(field.to_owned())],
            problem: Problem::Duplicate,
        }
    }
}

/// What serde expected, in words for someone who writes MessagePack from
/// any language: `f64` is "a number", `u32` "an integer from 0 to
/// 4294967295", `struct MonteCarloParams` "a map".
fn expected_in_words(exp: &dyn de::Expected) -> String {
    let text = exp.to_string();
    let range = |lo: i128, hi: i128| format!("an integer from {lo} to {hi}");
    match text.as_str() {
        "f32" | "f64" => "a number".into(),
        "u8" => range(0, u8::MAX.into()),
        "u16" => range(0, u16::MAX.into()),
        "u32" => range(0, u32::MAX.into()),
        "u64" | "u128" | "usize" => "an integer, 0 or more".into(),
        "i8" => range(i8::MIN.into(), i8::MAX.into()),
        "i16" => range(i16::MIN.into(), i16::MAX.into()),
        "i32" => range(i32::MIN.into(), i32::MAX.into()),
        "i64" | "i128" | "isize" => "an integer".into(),
        "a boolean" => "true or false".into(),
        "a string" | "a borrowed string" | "a character" | "a string or bytes" => "a string".into(),
        "a sequence" => "an array".into(),
        "unit" | "unit value" => "nil".into(),
        "a map" | "any valid MessagePack value" => text,
        _ if text.starts_with("struct ") || text.starts_with("internally tagged enum ") => {
            "a map".into()
        }
        _ if text.starts_with("tuple of ") => format!("an array of {}", &text["tuple of ".len()..]),
        _ if text.starts_with("a tuple of size ") => {
            format!("an array of {} elements", &text["a tuple of size ".len()..])
        }
        _ if text.starts_with("an array of length ") => text,
        _ if text.starts_with("a sequence") => text.replacen("a sequence", "an array", 1),
        _ => text,
    }
}

/// The serde `Deserializer` over a value read from MessagePack. It visits
/// what MessagePack holds (so serde's own rules for numbers apply: an
/// integer is a fine `f64`), and adds each map field and array index to
/// the path of an error coming out of it.
#[derive(Clone, Copy)]
struct ValueDe<'de> {
    value: &'de Value,
}

impl<'de> ValueDe<'de> {
    fn got(&self) -> Got {
        match self.value {
            Value::Nil => Got::Nil,
            Value::Boolean(b) => Got::Bool(*b),
            Value::Integer(n) => match (n.as_u64(), n.as_i64()) {
                (Some(u), _) => Got::Unsigned(u),
                (None, Some(i)) => Got::Signed(i),
                (None, None) => Got::Other(n.to_string()),
            },
            Value::F32(x) => Got::Float(f64::from(*x)),
            Value::F64(x) => Got::Float(*x),
            Value::String(s) => match s.as_str() {
                Some(s) => Got::Str(s.to_owned()),
                None => Got::Bytes(s.as_bytes().to_vec()),
            },
            Value::Binary(b) => Got::Bytes(b.clone()),
            Value::Array(_) => Got::Array,
            Value::Map(_) => Got::Map,
            Value::Ext(..) => Got::Other("a MessagePack extension".into()),
        }
    }

    fn wrong_type(&self, expected: impl Into<String>) -> ShapeError {
        ShapeError::new(Problem::Type {
            expected: expected.into(),
            got: self.got(),
        })
    }
}

/// The segment a map key adds to a path.
fn segment_of(key: &Value) -> Segment {
    match key.as_str() {
        Some(name) => Segment::Field(name.to_owned()),
        None => Segment::Key(key.to_string()),
    }
}

/// Finds where inside `value` an error that serde raised without a path
/// came from. serde decodes an internally tagged enum (`{"type": "rsi",
/// "period": 14}`) by buffering the map and deserializing its variant from
/// that buffer, out of reach of this module's path keeping, so the error
/// reaches the map's own position. An error that names something other
/// than the map itself is about a value inside it: that value is looked up
/// and taken when it is the only one of its kind and content there (else
/// the path stays at the map).
fn locate(err: ShapeError, value: &Value) -> ShapeError {
    fn find(value: &Value, got: &Got, path: &mut Vec<Segment>, found: &mut Vec<Vec<Segment>>) {
        if got.matches(value) {
            found.push(path.clone());
        }
        match value {
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    path.push(Segment::Index(i));
                    find(item, got, path, found);
                    path.pop();
                }
            }
            Value::Map(entries) => {
                for (key, item) in entries {
                    path.push(segment_of(key));
                    find(item, got, path, found);
                    path.pop();
                }
            }
            _ => {}
        }
    }
    if !err.path.is_empty() || !matches!(value, Value::Map(_) | Value::Array(_)) {
        return err;
    }
    let got = match &err.problem {
        Problem::Type { got, .. } => got.clone(),
        Problem::Variant { got, .. } => Got::Str(got.clone()),
        _ => return err,
    };
    if got.matches(value) {
        return err;
    }
    let mut found = Vec::new();
    find(value, &got, &mut Vec::new(), &mut found);
    match <[_; 1]>::try_from(found) {
        Ok([path]) => ShapeError { path, ..err },
        Err(_) => err,
    }
}

struct SeqAccess<'de> {
    items: std::iter::Enumerate<std::slice::Iter<'de, Value>>,
}

impl<'de> de::SeqAccess<'de> for SeqAccess<'de> {
    type Error = ShapeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, ShapeError> {
        match self.items.next() {
            None => Ok(None),
            Some((index, value)) => seed
                .deserialize(ValueDe { value })
                .map(Some)
                .map_err(|e| locate(e, value).within(Segment::Index(index))),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

struct MapAccess<'de> {
    entries: std::slice::Iter<'de, (Value, Value)>,
    /// The value of the entry whose key was just read, and its segment.
    pending: Option<(&'de Value, Segment)>,
}

impl<'de> de::MapAccess<'de> for MapAccess<'de> {
    type Error = ShapeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, ShapeError> {
        let Some((key, value)) = self.entries.next() else {
            return Ok(None);
        };
        let segment = segment_of(key);
        self.pending = Some((value, segment.clone()));
        let key = ValueDe { value: key };
        match seed.deserialize(key) {
            Ok(key) => Ok(Some(key)),
            // An unknown field or variant already names itself.
            Err(e) if !e.path.is_empty() => Err(e),
            Err(e) => Err(e.within(segment)),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, ShapeError> {
        let (value, segment) = self.pending.take().ok_or_else(|| {
            <ShapeError as de::Error>::custom("a map value was read before its key")
        })?;
        seed.deserialize(ValueDe { value })
            .map_err(|e| locate(e, value).within(segment))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

/// An extension value as rmpv reads one: a pair of its type and its bytes.
struct ExtAccess<'de> {
    tag: i8,
    data: &'de [u8],
    next: usize,
}

impl<'de> de::SeqAccess<'de> for ExtAccess<'de> {
    type Error = ShapeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, ShapeError> {
        self.next += 1;
        match self.next {
            1 => seed.deserialize(self.tag.into_deserializer()).map(Some),
            2 => seed
                .deserialize(de::value::BorrowedBytesDeserializer::new(self.data))
                .map(Some),
            _ => Ok(None),
        }
    }
}

struct ExtDe<'de> {
    tag: i8,
    data: &'de [u8],
}

impl<'de> de::Deserializer<'de> for ExtDe<'de> {
    type Error = ShapeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ShapeError> {
        visitor.visit_seq(ExtAccess {
            tag: self.tag,
            data: self.data,
            next: 0,
        })
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

/// An enum written as a map of one entry, `{variant: content}`, as
/// `rmp_serde` writes a variant that carries data.
struct EnumAccess<'de> {
    variant: &'de Value,
    content: &'de Value,
}

impl<'de> de::EnumAccess<'de> for EnumAccess<'de> {
    type Error = ShapeError;
    type Variant = VariantAccess<'de>;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, VariantAccess<'de>), ShapeError> {
        let variant = seed.deserialize(ValueDe {
            value: self.variant,
        })?;
        let access = VariantAccess {
            content: ValueDe {
                value: self.content,
            },
            segment: segment_of(self.variant),
        };
        Ok((variant, access))
    }
}

struct VariantAccess<'de> {
    content: ValueDe<'de>,
    segment: Segment,
}

impl<'de> de::VariantAccess<'de> for VariantAccess<'de> {
    type Error = ShapeError;

    fn unit_variant(self) -> Result<(), ShapeError> {
        match self.content.value {
            Value::Nil => Ok(()),
            _ => Err(self.content.wrong_type("nil").within(self.segment)),
        }
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<T::Value, ShapeError> {
        seed.deserialize(self.content)
            .map_err(|e| locate(e, self.content.value).within(self.segment))
    }

    fn tuple_variant<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, ShapeError> {
        de::Deserializer::deserialize_seq(self.content, visitor).map_err(|e| e.within(self.segment))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ShapeError> {
        de::Deserializer::deserialize_struct(self.content, "", fields, visitor)
            .map_err(|e| e.within(self.segment))
    }
}

impl<'de> de::Deserializer<'de> for ValueDe<'de> {
    type Error = ShapeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ShapeError> {
        match self.value {
            Value::Nil => visitor.visit_unit(),
            Value::Boolean(b) => visitor.visit_bool(*b),
            Value::Integer(n) => match (n.as_u64(), n.as_i64()) {
                (Some(u), _) => visitor.visit_u64(u),
                (None, Some(i)) => visitor.visit_i64(i),
                (None, None) => Err(self.wrong_type(expected_in_words(&visitor))),
            },
            Value::F32(x) => visitor.visit_f32(*x),
            Value::F64(x) => visitor.visit_f64(*x),
            Value::String(s) => match s.as_str() {
                Some(text) => visitor.visit_borrowed_str(text),
                None => visitor.visit_borrowed_bytes(s.as_bytes()),
            },
            Value::Binary(bytes) => visitor.visit_borrowed_bytes(bytes),
            Value::Array(items) => {
                let mut access = SeqAccess {
                    items: items.iter().enumerate(),
                };
                let expected = expected_in_words(&visitor);
                let value = visitor.visit_seq(&mut access)?;
                if access.items.len() > 0 {
                    return Err(ShapeError::new(Problem::Length {
                        expected,
                        len: items.len(),
                    }));
                }
                Ok(value)
            }
            Value::Map(entries) => {
                let mut access = MapAccess {
                    entries: entries.iter(),
                    pending: None,
                };
                visitor.visit_map(&mut access)
            }
            Value::Ext(tag, data) => visitor.visit_newtype_struct(ExtDe { tag: *tag, data }),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ShapeError> {
        match self.value {
            Value::Nil => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, ShapeError> {
        // rmp_serde writes a unit struct as an empty array.
        match self.value {
            Value::Nil => visitor.visit_unit(),
            Value::Array(items) if items.is_empty() => visitor.visit_unit(),
            _ => Err(self.wrong_type("nil")),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, ShapeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ShapeError> {
        match self.value {
            Value::String(s) if s.as_str().is_some() => {
                let name = s.as_str().unwrap_or_default();
                visitor.visit_enum(de::value::BorrowedStrDeserializer::new(name))
            }
            Value::Map(entries) if entries.len() == 1 => {
                let (variant, content) = &entries[0];
                visitor.visit_enum(EnumAccess { variant, content })
            }
            _ => {
                let names: Vec<String> = variants.iter().map(|v| format!("{v:?}")).collect();
                Err(self.wrong_type(format!("one of {}", names.join(", "))))
            }
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit seq tuple tuple_struct map struct identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Sample {
        ms: u64,
        name: String,
    }

    #[test]
    fn structs_are_maps() {
        let bytes = encode(&Sample {
            ms: 5,
            name: "x".into(),
        })
        .unwrap();
        let value: rmpv::Value = decode(&bytes).unwrap();
        assert!(value.is_map(), "{value}");
        assert_eq!(decode::<Sample>(&bytes).unwrap().ms, 5);
    }

    #[test]
    fn empty_is_nil() {
        assert_eq!(decode::<rmpv::Value>(&[]).unwrap(), rmpv::Value::Nil);
        assert!(decode::<Sample>(&[]).is_err());
        assert!(decode::<Sample>(&[0xc1]).is_err());
    }

    /// Regression (issue 11, point 3): "not msgpack" read as the integer
    /// 110 (0x6e), the rest ignored; bytes after a valid value ignored.
    #[test]
    fn a_blob_is_exactly_one_value() {
        let err = decode::<rmpv::Value>(b"not msgpack").unwrap_err();
        assert!(matches!(err, CodecError::NotMessagePack(_)), "{err:?}");
        assert_eq!(
            err.to_string(),
            "not one MessagePack value: a value of 1 byte followed by 10 more bytes (11 in all)"
        );
        assert_eq!(err.code(), crate::ErrorCode::BAD_PAYLOAD);

        let mut trailing = encode(&Sample {
            ms: 5,
            name: "x".into(),
        })
        .unwrap();
        trailing.push(0x01);
        let err = decode_params::<Sample>(&trailing).unwrap_err();
        assert!(matches!(err, CodecError::NotMessagePack(_)), "{err:?}");

        for bad in [&[0xc1][..], &[0xc1, 0xff], &[0x92, 0x01], &[0xd9]] {
            let err = decode::<rmpv::Value>(bad).unwrap_err();
            assert!(
                matches!(err, CodecError::NotMessagePack(_)),
                "{bad:?}: {err:?}"
            );
        }
        assert_eq!(
            to_display(b"not msgpack"),
            "<11 bytes of invalid MessagePack>"
        );
    }

    /// A whole `Value` takes every key as given (it skips the unknown-field
    /// check) and is held to the same rules otherwise.
    #[test]
    fn value_params_keep_every_key_and_still_refuse_bad_bytes() {
        let map = rmpv::Value::Map(vec![("any".into(), 1.into()), ("other".into(), "x".into())]);
        let bytes = encode(&map).unwrap();
        assert_eq!(decode_params::<rmpv::Value>(&bytes).unwrap(), map);
        let mut trailing = bytes.clone();
        trailing.push(0x01);
        let err = decode_params::<rmpv::Value>(&trailing).unwrap_err();
        assert!(matches!(err, CodecError::NotMessagePack(_)), "{err:?}");
        let err = decode_params::<rmpv::Value>(b"not msgpack").unwrap_err();
        assert!(matches!(err, CodecError::NotMessagePack(_)), "{err:?}");
    }

    /// Deep nesting ends in an error or a value, never in a stack
    /// overflow (a task thread's stack is 2 MiB; so is a test's). rmp_serde's
    /// own bound (1024) overflowed it in a debug build.
    #[test]
    fn deep_nesting_is_bounded() {
        for depth in [MAX_DEPTH - 1, MAX_DEPTH + 1, 5_000] {
            let mut bytes = vec![0x91; depth];
            bytes.push(0xc0);
            let value = decode_params::<rmpv::Value>(&bytes);
            assert_eq!(value.is_ok(), depth < MAX_DEPTH, "{depth}: {value:?}");
            let mut bytes = vec![0x91; depth];
            bytes.push(0xa1);
            bytes.push(b'x');
            assert!(decode_params::<Sample>(&bytes).is_err());
        }
    }

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Asset {
        name: String,
        weight: f64,
        #[serde(default)]
        tags: Vec<String>,
    }

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(rename_all = "snake_case")]
    enum Goal {
        MaxSharpe,
        MinVariance,
        Target(f64),
    }

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(tag = "type", rename_all = "snake_case")]
    enum Indicator {
        Sma { period: u32 },
        Band { period: u32, k: f64 },
    }

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Book {
        assets: Vec<Asset>,
        #[serde(default)]
        goal: Option<Goal>,
        #[serde(default)]
        indicators: Vec<Indicator>,
        #[serde(default)]
        seed: u32,
    }

    fn book_error(json: serde_json::Value) -> String {
        let bytes = encode(&json).unwrap();
        match decode_params::<Book>(&bytes) {
            Ok(book) => panic!("{json} decoded: {book:?}"),
            Err(err) => err.to_string(),
        }
    }

    #[test]
    fn shape_errors_name_the_field_expected_and_got() {
        use serde_json::json;
        let cases = [
            (
                json!({"assets": [{"name": "a", "weight": 1}, {"name": "b", "weight": 2},
                                  {"name": "c", "weight": "0.2"}]}),
                r#"assets[2].weight: expected a number, got a string ("0.2")"#,
            ),
            (
                json!({"assets": [{"name": "a"}]}),
                "assets[0].weight: required field is missing",
            ),
            (json!({}), "assets: required field is missing"),
            (
                json!({"assets": [], "sede": 1}),
                "sede: unknown field; the fields are assets, goal, indicators, seed",
            ),
            (
                json!({"assets": [], "seed": -1}),
                "seed: expected an integer from 0 to 4294967295, got an integer (-1)",
            ),
            (
                json!({"assets": [], "seed": 5_000_000_000u64}),
                "seed: expected an integer from 0 to 4294967295, got an integer (5000000000)",
            ),
            (
                json!({"assets": [], "seed": 1.5}),
                "seed: expected an integer from 0 to 4294967295, got a number (1.5)",
            ),
            (
                json!({"assets": {"name": "a"}}),
                "assets: expected an array, got a map",
            ),
            (
                json!({"assets": [{"name": "a", "weight": 1, "tags": [true]}]}),
                "assets[0].tags[0]: expected a string, got a boolean (true)",
            ),
            (
                json!({"assets": [], "goal": "max_return"}),
                r#"goal: "max_return" is not one of "max_sharpe", "min_variance", "target""#,
            ),
            (
                json!({"assets": [], "goal": {"target": "high"}}),
                r#"goal.target: expected a number, got a string ("high")"#,
            ),
            (
                json!({"assets": [], "goal": 3}),
                r#"goal: expected one of "max_sharpe", "min_variance", "target", got an integer (3)"#,
            ),
            // Internally tagged: serde buffers the map; the field is found
            // by the value it names.
            (
                json!({"assets": [], "indicators": [{"type": "sma", "period": 5},
                                                    {"type": "band", "period": "7", "k": 2}]}),
                r#"indicators[1].period: expected an integer from 0 to 4294967295, got a string ("7")"#,
            ),
            (
                json!({"assets": [], "indicators": [{"type": "band", "period": 7}]}),
                "indicators[0].k: required field is missing",
            ),
            (
                json!({"assets": [], "indicators": [{"type": "ema", "period": 7}]}),
                r#"indicators[0].type: "ema" is not one of "sma", "band""#,
            ),
            (
                json!({"assets": [], "indicators": [{"period": 7}]}),
                "indicators[0].type: required field is missing",
            ),
            (
                json!({"assets": [], "indicators": [{"type": "sma", "period": 7, "perod": 3}]}),
                "indicators[0].perod: unknown field; the fields are type, period",
            ),
            (json!("x"), r#"expected a map, got a string ("x")"#),
        ];
        for (json, message) in cases {
            assert_eq!(book_error(json.clone()), message, "{json}");
        }
        // Integers are fine numbers; unknown fields are skipped by decode.
        let ok = json!({"assets": [{"name": "a", "weight": 1}], "goal": {"target": 2},
                        "indicators": [{"type": "band", "period": 3, "k": 2}], "extra": 1});
        let book: Book = decode(&encode(&ok).unwrap()).unwrap();
        assert_eq!(book.assets[0].weight, 1.0);
        assert_eq!(book.goal, Some(Goal::Target(2.0)));
        assert!(decode_params::<Book>(&encode(&ok).unwrap()).is_err());
    }

    #[test]
    fn what_rmp_serde_writes_reads_back() {
        let book = Book {
            assets: vec![Asset {
                name: "a".into(),
                weight: 0.25,
                tags: vec!["x".into()],
            }],
            goal: Some(Goal::MinVariance),
            indicators: vec![Indicator::Band { period: 3, k: 1.5 }],
            seed: 7,
        };
        let bytes = encode(&book).unwrap();
        assert_eq!(decode_params::<Book>(&bytes).unwrap(), book);
        let target = encode(&Goal::Target(0.5)).unwrap();
        assert_eq!(decode::<Goal>(&target).unwrap(), Goal::Target(0.5));
        // Binary, extension and nested values survive a trip through Value.
        let value = rmpv::Value::Map(vec![
            ("bin".into(), rmpv::Value::Binary(vec![1, 2])),
            ("ext".into(), rmpv::Value::Ext(-1, vec![0, 0, 0, 1])),
            ("f32".into(), rmpv::Value::F32(1.5)),
            ("neg".into(), rmpv::Value::from(-3)),
        ]);
        let mut bytes = Vec::new();
        rmpv::encode::write_value(&mut bytes, &value).unwrap();
        assert_eq!(decode::<rmpv::Value>(&bytes).unwrap(), value);
        assert_eq!(decode::<()>(&encode(&()).unwrap()).unwrap(), ());
        #[derive(Debug, Serialize, Deserialize, PartialEq)]
        struct Unit;
        assert_eq!(decode::<Unit>(&encode(&Unit).unwrap()).unwrap(), Unit);
        assert_eq!(
            decode::<Option<u8>>(&encode(&Some(3u8)).unwrap()).unwrap(),
            Some(3)
        );
        assert_eq!(
            decode::<(u8, String)>(&encode(&(1u8, "a")).unwrap()).unwrap(),
            (1, "a".into())
        );
        let err = decode::<(u8, u8)>(&encode(&[1, 2, 3]).unwrap()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "expected an array of 2 elements, got 3 elements"
        );
    }
}
