//! Turning Redis replies into typed values. A reply of an unexpected shape
//! is a `StoreError::Protocol`, never a panic.

use std::collections::HashMap;

use redis::Value;

use super::{StoreError, StreamRead};
use crate::wire::Fields;

pub(super) fn reply_ok(value: Value) -> Result<Value, StoreError> {
    match value {
        Value::ServerError(err) => Err(StoreError::Redis(err.into())),
        other => Ok(other),
    }
}

pub(super) fn array(value: Value, what: &'static str) -> Result<Vec<Value>, StoreError> {
    match value {
        Value::Array(items) | Value::Set(items) => Ok(items),
        Value::Nil => Ok(Vec::new()),
        other => Err(StoreError::protocol(what, &other)),
    }
}

pub(super) fn bytes(value: Value, what: &'static str) -> Result<Vec<u8>, StoreError> {
    match value {
        Value::BulkString(bytes) => Ok(bytes),
        Value::SimpleString(text) => Ok(text.into_bytes()),
        Value::Int(n) => Ok(n.to_string().into_bytes()),
        other => Err(StoreError::protocol(what, &other)),
    }
}

pub(super) fn text(value: Value, what: &'static str) -> Result<String, StoreError> {
    let raw = bytes(value, what)?;
    String::from_utf8(raw).map_err(|e| StoreError::Protocol {
        what,
        detail: format!("not UTF-8: {e}"),
    })
}

pub(super) fn int(value: Value, what: &'static str) -> Result<i64, StoreError> {
    match value {
        Value::Int(n) => Ok(n),
        Value::BulkString(_) | Value::SimpleString(_) => {
            let t = text(value, what)?;
            t.parse().map_err(|_| StoreError::Protocol {
                what,
                detail: format!("not an integer: {t:?}"),
            })
        }
        other => Err(StoreError::protocol(what, &other)),
    }
}

pub(super) fn hash_map(
    value: Value,
    what: &'static str,
) -> Result<HashMap<Vec<u8>, Vec<u8>>, StoreError> {
    match value {
        Value::Map(pairs) => pairs
            .into_iter()
            .map(|(k, v)| Ok((bytes(k, what)?, bytes(v, what)?)))
            .collect(),
        other => fields(other, what).map(|f| f.into_iter().collect()),
    }
}

/// A flat `[name, value, name, value, ...]` array as pairs.
pub(super) fn fields(value: Value, what: &'static str) -> Result<Fields, StoreError> {
    let items = array(value, what)?;
    if items.len() % 2 != 0 {
        return Err(StoreError::Protocol {
            what,
            detail: format!("odd number of field items: {}", items.len()),
        });
    }
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut items = items.into_iter();
    while let (Some(name), Some(value)) = (items.next(), items.next()) {
        // Info replies hold nil values (XINFO GROUPS' `lag` when it is
        // unknown); read them as empty.
        let value = match value {
            Value::Nil => Vec::new(),
            other => bytes(other, what)?,
        };
        out.push((bytes(name, what)?, value));
    }
    Ok(out)
}

/// An `XRANGE` / `XREVRANGE` reply: (entry id, fields) per entry.
pub(super) fn stream_entries(reply: Value) -> Result<Vec<(String, Fields)>, StoreError> {
    array(reply, "XRANGE")?
        .into_iter()
        .map(|entry| {
            let mut parts = array(entry, "XRANGE")?.into_iter();
            let id = text(parts.next().unwrap_or(Value::Nil), "XRANGE")?;
            let fields = fields(parts.next().unwrap_or(Value::Nil), "XRANGE")?;
            Ok((id, fields))
        })
        .collect()
}

pub(super) fn parse_stream_read(reply: Value) -> Result<StreamRead, StoreError> {
    let streams = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Map(pairs) => pairs,
        other => array(other, "XREAD")?
            .into_iter()
            .map(|stream| {
                let mut parts = array(stream, "XREAD")?.into_iter();
                Ok((
                    parts.next().unwrap_or(Value::Nil),
                    parts.next().unwrap_or(Value::Nil),
                ))
            })
            .collect::<Result<_, StoreError>>()?,
    };
    streams
        .into_iter()
        .map(|(key, entries)| {
            let key = text(key, "XREAD")?;
            let entries = array(entries, "XREAD")?
                .into_iter()
                .map(|entry| {
                    let mut parts = array(entry, "XREAD")?.into_iter();
                    let id = text(parts.next().unwrap_or(Value::Nil), "XREAD")?;
                    let fields = fields(parts.next().unwrap_or(Value::Nil), "XREAD")?;
                    Ok((id, fields))
                })
                .collect::<Result<_, StoreError>>()?;
            Ok((key, entries))
        })
        .collect()
}

pub(super) fn server_time_ms(reply: Value) -> Result<u64, StoreError> {
    let mut parts = array(reply, "TIME")?.into_iter();
    let secs = int(parts.next().unwrap_or(Value::Nil), "TIME")?;
    let micros = int(parts.next().unwrap_or(Value::Nil), "TIME")?;
    Ok(u64::try_from(secs * 1000 + micros / 1000).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn odd_field_lists_are_protocol_errors() {
        let err = fields(Value::Array(vec![bulk("a")]), "test").unwrap_err();
        assert!(matches!(err, StoreError::Protocol { .. }));
    }

    #[test]
    fn stream_reads_parse_in_resp2_shape() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("s"),
            Value::Array(vec![Value::Array(vec![
                bulk("1-0"),
                Value::Array(vec![bulk("a"), bulk("b")]),
            ])]),
        ])]);
        let read = parse_stream_read(reply).unwrap();
        assert_eq!(
            read,
            vec![(
                "s".to_owned(),
                vec![("1-0".to_owned(), vec![(b"a".to_vec(), b"b".to_vec())])]
            )]
        );
        assert!(parse_stream_read(Value::Nil).unwrap().is_empty());
        assert!(parse_stream_read(bulk("x")).is_err());
    }
}
