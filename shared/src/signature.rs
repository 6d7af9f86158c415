//! Optional HMAC-SHA256 signing of task entries with a key producers and
//! workers share: a worker configured with a key refuses (dead-letters with
//! `BAD_SIGNATURE`) any task whose `signature` field is missing or wrong, so
//! only producers holding the key can make it run anything.
//!
//! The signature covers what decides what runs and where its result goes:
//! the wire version, task id, kind, class, priority, max attempts, reply
//! stream and parameters. Each is written as `<length>:<bytes>,` (a
//! netstring), in that order, so no two different tasks share a signed form.
//! The attempt number and times are not covered: workers change them on
//! retries, and the submit script sets the deadline. The `signature` field is
//! the lower-case hex HMAC-SHA256 of that form. docs/wire-format.md shows it
//! in Python.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::task::{Class, Priority, TaskId};
use crate::wire::WIRE_VERSION;

/// What a signature covers.
#[derive(Debug, Clone, Copy)]
pub struct Signed<'a> {
    pub id: &'a TaskId,
    pub kind: &'a str,
    pub class: Class,
    pub priority: Priority,
    pub max_attempts: u32,
    /// Empty when the task has no reply stream.
    pub reply_to: &'a str,
    pub params: &'a [u8],
}

impl Signed<'_> {
    /// The bytes the HMAC is computed over.
    pub fn canonical(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.params.len() + 128);
        let mut put = |part: &[u8]| {
            out.extend_from_slice(part.len().to_string().as_bytes());
            out.push(b':');
            out.extend_from_slice(part);
            out.push(b',');
        };
        put(WIRE_VERSION.to_string().as_bytes());
        put(self.id.to_string().as_bytes());
        put(self.kind.as_bytes());
        put(self.class.as_str().as_bytes());
        put(self.priority.as_str().as_bytes());
        put(self.max_attempts.to_string().as_bytes());
        put(self.reply_to.as_bytes());
        put(self.params);
        out
    }
}

/// Signs and verifies with one key.
#[derive(Clone)]
pub struct Signer {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(***)")
    }
}

impl Signer {
    /// A signer for `key`; `None` for an empty key (signing off).
    pub fn new(key: &str) -> Option<Self> {
        if key.is_empty() {
            return None;
        }
        // HMAC takes keys of any length.
        Hmac::<Sha256>::new_from_slice(key.as_bytes())
            .ok()
            .map(|mac| Self { mac })
    }

    /// The `signature` field for a task.
    pub fn sign(&self, task: &Signed<'_>) -> String {
        let mut mac = self.mac.clone();
        mac.update(&task.canonical());
        hex::encode(mac.finalize().into_bytes())
    }

    /// True when `signature` is this key's signature of `task`. The
    /// comparison takes the same time however much of it matches.
    pub fn verify(&self, task: &Signed<'_>, signature: &str) -> bool {
        let Ok(given) = hex::decode(signature.trim()) else {
            return false;
        };
        let mut mac = self.mac.clone();
        mac.update(&task.canonical());
        mac.verify_slice(&given).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task<'a>(id: &'a TaskId, params: &'a [u8], reply_to: &'a str) -> Signed<'a> {
        Signed {
            id,
            kind: "echo",
            class: Class::Cpu,
            priority: Priority::High,
            max_attempts: 3,
            reply_to,
            params,
        }
    }

    #[test]
    fn signatures_verify_with_the_key_only() {
        let id = TaskId::new();
        let signer = Signer::new("shared secret").unwrap();
        let signature = signer.sign(&task(&id, b"\x91\x01", "tandem:{cpu}:reply:p"));
        assert_eq!(signature.len(), 64);
        assert!(signer.verify(&task(&id, b"\x91\x01", "tandem:{cpu}:reply:p"), &signature));
        assert!(
            !Signer::new("other")
                .unwrap()
                .verify(&task(&id, b"\x91\x01", "tandem:{cpu}:reply:p"), &signature)
        );
        assert!(!signer.verify(&task(&id, b"\x91\x02", "tandem:{cpu}:reply:p"), &signature));
        assert!(!signer.verify(&task(&id, b"\x91\x01", "tandem:{cpu}:reply:q"), &signature));
        assert!(!signer.verify(&task(&id, b"\x91\x01", "tandem:{cpu}:reply:p"), "zz"));
        assert!(!signer.verify(&task(&id, b"\x91\x01", "tandem:{cpu}:reply:p"), ""));
        assert!(Signer::new("").is_none());
    }

    /// A signer in a log line or a panic message never shows its key.
    #[test]
    fn a_signer_prints_without_its_key() {
        let signer = Signer::new("shared secret").unwrap();
        assert_eq!(format!("{signer:?}"), "Signer(***)");
    }

    /// The same vector as the Python recipe in docs/wire-format.md gives.
    #[test]
    fn matches_the_documented_python_recipe() {
        let id: TaskId = "01a21a05-0223-7150-a48a-bb5c548aed3d".parse().unwrap();
        let signer = Signer::new("shared secret").unwrap();
        assert_eq!(
            signer.sign(&task(&id, b"\xa2hi", "tandem:{cpu}:reply:p")),
            "770c62215d36d1abf4e602d5eddff1d97d10b58b4af5de3a07bd6596b813e422"
        );
    }

    /// Regression guard: moving bytes between the reply stream and the
    /// parameters must change the signed form.
    #[test]
    fn field_boundaries_are_part_of_the_signature() {
        let id = TaskId::new();
        let a = task(&id, b"P,Q", "r").canonical();
        let b = task(&id, b"Q", "r,P").canonical();
        assert_ne!(a, b);
    }
}
