//! The one field reader every decoder of `wire` goes through: it looks
//! fields up by their [`field`](super::field) constants and, when a decoder
//! is strict, reports a missing or malformed field by its name.

use std::str::FromStr;

use crate::task::TaskId;

/// What is wrong with one field, named by the field. The messages are part
/// of what users see (an entry's `error_message`), so they stay as they are.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FieldError {
    #[error("required field {0} is missing")]
    Missing(&'static str),
    #[error("field {0} is not UTF-8 text")]
    NotText(&'static str),
    #[error("field {0} is empty")]
    Empty(&'static str),
    #[error("field {name} is not a number: {value:?}")]
    NotNumber { name: &'static str, value: String },
    #[error("field {name} is not a UUID: {value:?}")]
    NotUuid { name: &'static str, value: String },
}

/// The fields of one entry, record or notice, borrowed from what Redis
/// returned. A stream entry may repeat a field: an entry is read as its
/// first occurrence says ([`FieldReader::first_wins`]), a record or notice
/// as its last ([`FieldReader::last_wins`]), the way a hash would keep it.
pub(crate) struct FieldReader<'a> {
    /// Name and value pairs in the order Redis returned them.
    pairs: Vec<(&'a [u8], &'a [u8])>,
    /// Whether a repeated field reads as its last occurrence.
    last_wins: bool,
}

impl<'a> FieldReader<'a> {
    /// A reader for which the first occurrence of a repeated field counts.
    pub(crate) fn first_wins(pairs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> Self {
        FieldReader {
            pairs: pairs.into_iter().collect(),
            last_wins: false,
        }
    }

    /// A reader for which the last occurrence of a repeated field counts.
    pub(crate) fn last_wins(pairs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> Self {
        FieldReader {
            pairs: pairs.into_iter().collect(),
            last_wins: true,
        }
    }

    /// The field's bytes, as they are.
    pub(crate) fn raw(&self, name: &'static str) -> Option<&'a [u8]> {
        let matches = |(key, _): &&(&'a [u8], &'a [u8])| *key == name.as_bytes();
        let found = if self.last_wins {
            self.pairs.iter().rev().find(matches)
        } else {
            self.pairs.iter().find(matches)
        };
        found.map(|&(_, value)| value)
    }

    /// The field as text; bytes that are not UTF-8 are an error.
    pub(crate) fn text(&self, name: &'static str) -> Result<Option<&'a str>, FieldError> {
        self.raw(name)
            .map(|raw| std::str::from_utf8(raw).map_err(|_| FieldError::NotText(name)))
            .transpose()
    }

    /// The field as text, which must be there.
    pub(crate) fn required(&self, name: &'static str) -> Result<&'a str, FieldError> {
        self.text(name)?.ok_or(FieldError::Missing(name))
    }

    /// The field as a number, when it is there.
    pub(crate) fn number<T: FromStr>(&self, name: &'static str) -> Result<Option<T>, FieldError> {
        self.text(name)?
            .map(|value| {
                value.parse::<T>().map_err(|_| FieldError::NotNumber {
                    name,
                    value: value.to_owned(),
                })
            })
            .transpose()
    }

    /// The field as a task id, when it is there.
    pub(crate) fn task_id(&self, name: &'static str) -> Result<Option<TaskId>, FieldError> {
        self.text(name)?
            .map(|value| {
                value.parse::<TaskId>().map_err(|_| FieldError::NotUuid {
                    name,
                    value: value.to_owned(),
                })
            })
            .transpose()
    }

    /// Lenient: the field as text, absent when it is not UTF-8.
    pub(crate) fn lenient_text(&self, name: &'static str) -> Option<&'a str> {
        self.raw(name).and_then(|raw| std::str::from_utf8(raw).ok())
    }

    /// Lenient: the field parsed, absent when it is not text or does not
    /// parse.
    pub(crate) fn lenient<T: FromStr>(&self, name: &'static str) -> Option<T> {
        self.lenient_text(name).and_then(|text| text.parse().ok())
    }

    /// Lenient: the field as a list split at `separator`, empty items
    /// dropped; an absent or unreadable field is an empty list.
    pub(crate) fn lenient_list(&self, name: &'static str, separator: char) -> Vec<&'a str> {
        self.lenient_text(name)
            .map(|text| {
                text.split(separator)
                    .filter(|item| !item.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::field;

    fn pairs<'a>(list: &'a [(&'a str, &'a [u8])]) -> Vec<(&'a [u8], &'a [u8])> {
        list.iter().map(|(k, v)| (k.as_bytes(), *v)).collect()
    }

    #[test]
    fn repeated_fields_read_as_first_or_last() {
        let list: [(&str, &[u8]); 2] = [(field::KIND, b"a"), (field::KIND, b"b")];
        assert_eq!(
            FieldReader::first_wins(pairs(&list)).raw(field::KIND),
            Some(&b"a"[..])
        );
        assert_eq!(
            FieldReader::last_wins(pairs(&list)).raw(field::KIND),
            Some(&b"b"[..])
        );
    }

    #[test]
    fn strict_reads_name_the_field() {
        let list: [(&str, &[u8]); 3] = [
            (field::ATTEMPT, b"x"),
            (field::KIND, &[0xff]),
            (field::PARENT, b"p"),
        ];
        let reader = FieldReader::first_wins(pairs(&list));
        let message = |err: FieldError| err.to_string();
        assert_eq!(
            message(reader.required(field::ID).unwrap_err()),
            "required field id is missing"
        );
        assert_eq!(
            message(reader.number::<u32>(field::ATTEMPT).unwrap_err()),
            "field attempt is not a number: \"x\""
        );
        assert_eq!(
            message(reader.text(field::KIND).unwrap_err()),
            "field kind is not UTF-8 text"
        );
        assert_eq!(
            message(reader.task_id(field::PARENT).unwrap_err()),
            "field parent is not a UUID: \"p\""
        );
        assert_eq!(reader.number::<u32>(field::SHARD), Ok(None));
    }

    #[test]
    fn lenient_reads_make_bad_values_absent() {
        let list: [(&str, &[u8]); 3] = [
            (field::RUN_US, b"soon"),
            (field::KIND, &[0xff]),
            (field::AVOID, b"a,,b"),
        ];
        let reader = FieldReader::last_wins(pairs(&list));
        assert_eq!(reader.lenient::<u64>(field::RUN_US), None);
        assert_eq!(reader.lenient_text(field::KIND), None);
        assert_eq!(reader.lenient_list(field::AVOID, ','), ["a", "b"]);
        assert!(reader.lenient_list(field::SHARD_IDS, ' ').is_empty());
    }
}
