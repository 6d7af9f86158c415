//! The wire form of a blob reference: what travels in a task's `params`
//! (or a record's `result`) in place of bytes above the blob threshold.
//!
//! A reference is the MessagePack map `{"tandem_blob": "<64 hex digits of
//! the SHA-256 of the bytes>", "len": <their length>}`, with exactly those
//! two keys in that order (docs/wire-format.md, revision 11). The bytes it
//! names are the MessagePack parameters (or result) themselves, so a
//! worker that resolves it decodes them as it would have decoded inline
//! ones. Any other value is not a reference, whatever keys it holds.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The map key that marks a reference.
pub const REF_KEY: &str = "tandem_blob";

/// A reference is a fixmap of two entries, well under this size.
const MAX_REF_BYTES: usize = 128;

/// A reference to one blob: the SHA-256 of its bytes, and their length.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BlobRef {
    /// Lowercase hex SHA-256 of the bytes (64 digits).
    #[serde(rename = "tandem_blob")]
    pub sha256: String,
    /// The bytes' length.
    pub len: u64,
}

/// Why bytes that claim to be a reference are not a valid one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("blob reference: {0}")]
pub struct BadRef(pub String);

impl BlobRef {
    /// The reference to `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self {
            sha256: hex::encode(Sha256::digest(bytes)),
            len: bytes.len() as u64,
        }
    }

    /// The reference as MessagePack, as it travels.
    pub fn encode(&self) -> Vec<u8> {
        // A map of a string and an integer always encodes.
        rmp_serde::to_vec_named(self).unwrap_or_default()
    }

    /// `Some` when `bytes` are a reference (`Err` when they are one with
    /// a bad digest), `None` when they are plain parameters or a plain
    /// result. Costs nothing for bytes that cannot be one.
    pub fn detect(bytes: &[u8]) -> Option<Result<Self, BadRef>> {
        // 0x82: a fixmap of two entries; then the fixstr "tandem_blob".
        const HEAD: &[u8] = b"\x82\xabtandem_blob";
        if bytes.len() > MAX_REF_BYTES || !bytes.starts_with(HEAD) {
            return None;
        }
        let parsed: Self = match rmp_serde::from_slice(bytes) {
            Ok(parsed) => parsed,
            Err(err) => {
                return Some(Err(BadRef(format!(
                    "not a {{tandem_blob, len}} map: {err}"
                ))));
            }
        };
        Some(parsed.checked())
    }

    /// Checks the digest's form: 64 lowercase hex digits.
    pub fn checked(self) -> Result<Self, BadRef> {
        check_digest(&self.sha256)?;
        Ok(self)
    }
}

/// Checks that `digest` is 64 lowercase hex digits (a key-safe SHA-256).
pub fn check_digest(digest: &str) -> Result<(), BadRef> {
    if digest.len() != 64
        || !digest
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(BadRef(format!(
            "field tandem_blob must be 64 lowercase hex digits (a SHA-256), got {digest:?}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reference_round_trips_and_plain_bytes_are_not_one() {
        let blob = BlobRef::of(b"hello");
        assert_eq!(
            blob.sha256,
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        let wire = blob.encode();
        assert_eq!(BlobRef::detect(&wire), Some(Ok(blob)));
        // Plain parameters, a map with other keys, an empty payload.
        let plain = rmp_serde::to_vec_named(&serde_json::json!({"n": 1, "len": 2})).unwrap();
        for bytes in [plain, Vec::new(), vec![0xc0]] {
            assert_eq!(BlobRef::detect(&bytes), None);
        }
    }

    #[test]
    fn a_reference_with_a_bad_digest_is_named() {
        let bad = BlobRef {
            sha256: "NOT-HEX".into(),
            len: 3,
        };
        let err = BlobRef::detect(&bad.encode()).unwrap().unwrap_err();
        assert!(
            err.to_string()
                .contains("field tandem_blob must be 64 lowercase hex"),
            "{err}"
        );
    }
}
