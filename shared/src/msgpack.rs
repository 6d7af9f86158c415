//! MessagePack encoding of parameters and results.
//!
//! Structs are written as maps with field names (not positional arrays), so
//! a Python service reading a result with `msgpack.unpackb` gets a dict.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A value that could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("cannot encode as MessagePack: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("not valid MessagePack for this type: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
}

pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    Ok(rmp_serde::to_vec_named(value)?)
}

/// Decodes `bytes`; an empty blob reads as MessagePack `nil`, so an entry
/// written without parameters still decodes for kinds that take none.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    const NIL: &[u8] = &[0xc0];
    let bytes = if bytes.is_empty() { NIL } else { bytes };
    Ok(rmp_serde::from_slice(bytes)?)
}

/// Renders MessagePack as JSON-like text for display.
pub fn to_display(bytes: &[u8]) -> String {
    match decode::<rmpv::Value>(bytes) {
        Ok(value) => format!("{value}"),
        Err(_) => format!("<{} bytes of invalid MessagePack>", bytes.len()),
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
}
