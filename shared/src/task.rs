//! The task model: identifiers, classes, priorities, statuses and error codes.
//!
//! Every type here has one canonical lower-case (or, for error codes,
//! upper-case) text form. That form is what goes over the wire and what an
//! operator reads in `redis-cli`, so `Display` and `FromStr` round-trip and
//! the strings never change within a wire version.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A task's identity: a UUID v7, so ids sort by creation time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TaskId(Uuid);

impl TaskId {
    /// A fresh, time-ordered id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    pub fn as_uuid(&self) -> &Uuid {
        &self.0
    }
}

/// A task id made elsewhere (a schedule's tick ids:
/// `crate::recurring::tick_task_id`).
impl From<Uuid> for TaskId {
    fn from(uuid: Uuid) -> Self {
        Self(uuid)
    }
}

impl Default for TaskId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl FromStr for TaskId {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s)
            .map(TaskId)
            .map_err(|_| ParseError::new("task id", s))
    }
}

/// A text form that does not name any value of the expected type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what}: {value:?}{}", one_of(valid))]
pub struct ParseError {
    pub what: &'static str,
    pub value: String,
    /// The values that would have been accepted, for a closed set (empty
    /// otherwise): the message lists them, so a user need not look them up.
    pub valid: &'static [&'static str],
}

impl ParseError {
    pub fn new(what: &'static str, value: &str) -> Self {
        // Bad input may be arbitrarily long; keep error messages readable.
        let value: String = value.chars().take(80).collect();
        Self {
            what,
            value,
            valid: &[],
        }
    }

    /// A value outside the closed set `valid`.
    pub fn one_of(what: &'static str, value: &str, valid: &'static [&'static str]) -> Self {
        Self {
            valid,
            ..Self::new(what, value)
        }
    }
}

fn one_of(valid: &[&str]) -> String {
    if valid.is_empty() {
        String::new()
    } else {
        format!(" (one of: {})", valid.join(", "))
    }
}

/// Declares a closed enum with a stable text form per variant.
macro_rules! text_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident ($what:literal) {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The position in [`Self::ALL`].
            pub const fn index(self) -> usize {
                self as usize
            }

            /// The wire and display form.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $text, )+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = ParseError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $( $text => Ok($name::$variant), )+
                    _ => Err(ParseError::one_of($what, s, &[$($text),+])),
                }
            }
        }
    };
}
pub(crate) use text_enum;

text_enum! {
    /// Which kind of worker a task is meant for (SPEC.md's routing table).
    pub enum Class ("class") {
        /// Large models, big batches, training: the primary GPU.
        Heavy = "heavy",
        /// Small models, patterns, indicators: the secondary GPU.
        Light = "light",
        /// Split across every live GPU and merged.
        Parallel = "parallel",
        /// Work that never needs a GPU.
        Cpu = "cpu",
    }
}

text_enum! {
    /// Within a class, a waiting task of a higher priority always starts
    /// before one of a lower priority. Declared from highest to lowest, so
    /// `Ord` puts `Critical` first.
    pub enum Priority ("priority") {
        Critical = "critical",
        High = "high",
        Normal = "normal",
        Low = "low",
    }
}

text_enum! {
    /// Where a task is in its life. The last four are terminal: once a task
    /// reaches one of them its record never changes again.
    pub enum Status ("status") {
        /// A workflow node whose parents have not all succeeded; its last
        /// parent's commit puts it in its stream (wire revision 2.7).
        Waiting = "waiting",
        /// In its stream, not yet started.
        Queued = "queued",
        /// Started by a worker; the record names which.
        Running = "running",
        /// Failed an attempt; waits in the delayed set for its next one.
        Retrying = "retrying",
        /// Not in its stream yet: submitted for later, or parked by a rate
        /// limit or a paused kind (the record's `delay_reason` says which).
        Delayed = "delayed",
        /// Finished; the record holds the result.
        Succeeded = "succeeded",
        /// Finished with an error code and message.
        Failed = "failed",
        /// Cancelled by a producer before or while it ran.
        Cancelled = "cancelled",
        /// Found past its deadline before it started; never ran.
        Expired = "expired",
    }
}

text_enum! {
    /// Why a `delayed` task waits.
    pub enum DelayReason ("delay_reason") {
        /// Submitted to run later (`run_at_ms`, `delay_ms`).
        Scheduled = "scheduled",
        /// A rate limit's next start is its; it waits for it.
        Limited = "limited",
        /// Its kind is paused; a resume releases it.
        Paused = "paused",
    }
}

impl Status {
    pub const fn is_terminal(self) -> bool {
        matches!(
            self,
            Status::Succeeded | Status::Failed | Status::Cancelled | Status::Expired
        )
    }
}

/// A stable, upper-case error code that users and scripts match on.
///
/// The well-known codes are associated constants; handlers may use codes of
/// their own (the `fail` kind passes one through), so this is an open set.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ErrorCode(Cow<'static, str>);

impl ErrorCode {
    /// The entry could not be decoded: missing fields, bad MessagePack.
    pub const BAD_PAYLOAD: ErrorCode = ErrorCode::from_static("BAD_PAYLOAD");
    /// The parameters decoded but break the kind's rules or bounds.
    pub const BAD_PARAMS: ErrorCode = ErrorCode::from_static("BAD_PARAMS");
    /// No handler is registered for the task's kind.
    pub const UNKNOWN_KIND: ErrorCode = ErrorCode::from_static("UNKNOWN_KIND");
    /// The entry was written in a wire version this worker does not speak.
    pub const BAD_WIRE_VERSION: ErrorCode = ErrorCode::from_static("BAD_WIRE_VERSION");
    /// The parameters are larger than the configured limit.
    pub const PAYLOAD_TOO_LARGE: ErrorCode = ErrorCode::from_static("PAYLOAD_TOO_LARGE");
    /// A producer cancelled the task.
    pub const CANCELLED: ErrorCode = ErrorCode::from_static("CANCELLED");
    /// The task's deadline passed before it started.
    pub const EXPIRED: ErrorCode = ErrorCode::from_static("EXPIRED");
    /// The handler panicked.
    pub const HANDLER_PANIC: ErrorCode = ErrorCode::from_static("HANDLER_PANIC");
    /// The handler returned an error without a code of its own.
    pub const HANDLER_ERROR: ErrorCode = ErrorCode::from_static("HANDLER_ERROR");
    /// The result could not be encoded.
    pub const BAD_RESULT: ErrorCode = ErrorCode::from_static("BAD_RESULT");
    /// No GPU has room for the task and its kind has no CPU path.
    pub const INSUFFICIENT_GPU_MEMORY: ErrorCode =
        ErrorCode::from_static("INSUFFICIENT_GPU_MEMORY");
    /// The device failed while running the task (a sticky CUDA error, a
    /// hung kernel): the task went back to its stream for another device.
    pub const DEVICE_FAILED: ErrorCode = ErrorCode::from_static("DEVICE_FAILED");
    /// The device ran out of memory running the task: it went back to its
    /// stream for a device with more room, or the CPU worker.
    pub const DEVICE_OUT_OF_MEMORY: ErrorCode = ErrorCode::from_static("DEVICE_OUT_OF_MEMORY");
    /// Delivered more than `max_deliveries` times: every worker that ran it
    /// died, so it is not run again.
    pub const MAX_DELIVERIES: ErrorCode = ErrorCode::from_static("MAX_DELIVERIES");
    /// The entry's signature is missing or wrong.
    pub const BAD_SIGNATURE: ErrorCode = ErrorCode::from_static("BAD_SIGNATURE");
    /// It ran past its run-time limit (`timeout_ms`) and was stopped, or
    /// abandoned when it did not stop within the grace period. Retryable
    /// per the task's attempts.
    pub const TIMEOUT: ErrorCode = ErrorCode::from_static("TIMEOUT");

    pub const fn from_static(code: &'static str) -> Self {
        Self(Cow::Borrowed(code))
    }

    /// A code from untrusted text: upper-case ASCII letters, digits and
    /// underscores, 1 to 64 characters, starting with a letter.
    pub fn parse(code: &str) -> Result<Self, ParseError> {
        let valid = !code.is_empty()
            && code.len() <= 64
            && code.starts_with(|c: char| c.is_ascii_uppercase())
            && code
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
        if valid {
            Ok(Self(Cow::Owned(code.to_owned())))
        } else {
            Err(ParseError::new("error code", code))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_forms_round_trip() {
        for class in Class::ALL {
            assert_eq!(class.as_str().parse::<Class>(), Ok(*class));
        }
        for priority in Priority::ALL {
            assert_eq!(priority.as_str().parse::<Priority>(), Ok(*priority));
        }
        for status in Status::ALL {
            assert_eq!(status.as_str().parse::<Status>(), Ok(*status));
        }
        assert!("HEAVY".parse::<Class>().is_err());
        assert!("urgent".parse::<Priority>().is_err());
    }

    #[test]
    fn priorities_order_highest_first() {
        let mut all = Priority::ALL.to_vec();
        all.reverse();
        all.sort();
        assert_eq!(all, Priority::ALL);
        assert!(Priority::Critical < Priority::Low);
    }

    #[test]
    fn task_ids_are_time_ordered_v7() {
        let a = TaskId::new();
        let b = TaskId::new();
        assert!(a < b);
        assert_eq!(a.as_uuid().get_version_num(), 7);
        assert_eq!(a.to_string().parse::<TaskId>(), Ok(a));
        assert!("not-a-uuid".parse::<TaskId>().is_err());
        // The default id is a fresh one, never a shared nil id.
        let (c, d) = (TaskId::default(), TaskId::default());
        assert!(b < c && c < d);
        assert_eq!(c.as_uuid().get_version_num(), 7);
    }

    /// A parse error names what was expected and, for a closed set, every
    /// accepted value; long input is cut to 80 characters.
    #[test]
    fn parse_errors_name_the_field_and_the_accepted_values() {
        let message = |err: ParseError| err.to_string();
        assert_eq!(
            message("urgent".parse::<Priority>().unwrap_err()),
            "invalid priority: \"urgent\" (one of: critical, high, normal, low)"
        );
        assert_eq!(
            message("gpu".parse::<Class>().unwrap_err()),
            "invalid class: \"gpu\" (one of: heavy, light, parallel, cpu)"
        );
        assert_eq!(
            message("x".parse::<TaskId>().unwrap_err()),
            "invalid task id: \"x\""
        );
        let long = "y".repeat(200);
        let err = long.parse::<TaskId>().unwrap_err();
        assert_eq!(err.value, "y".repeat(80));
    }

    /// The four final statuses, and only they: a wait ends, a record
    /// expires and a commit is refused on exactly these (the Lua scripts'
    /// `is_terminal` lists the same four).
    #[test]
    fn only_final_statuses_are_terminal() {
        let terminal: Vec<Status> = Status::ALL
            .iter()
            .copied()
            .filter(|s| s.is_terminal())
            .collect();
        assert_eq!(
            terminal,
            [
                Status::Succeeded,
                Status::Failed,
                Status::Cancelled,
                Status::Expired
            ]
        );
        let common = include_str!("../lua/common.lua");
        let lua = common
            .lines()
            .find(|l| l.contains("return status == "))
            .expect("common.lua's is_terminal");
        for status in Status::ALL {
            let named = lua.contains(&format!("'{}'", status.as_str()));
            assert_eq!(named, status.is_terminal(), "{status} in `{lua}`");
        }
    }

    /// An error code prints as itself: it is what the record's `error_code`
    /// holds and what scripts match on.
    #[test]
    fn error_codes_display_as_written() {
        for code in [ErrorCode::BAD_PARAMS, ErrorCode::DEVICE_FAILED] {
            assert_eq!(code.to_string(), code.as_str());
        }
        assert_eq!(ErrorCode::MAX_DELIVERIES.to_string(), "MAX_DELIVERIES");
        let parsed = ErrorCode::parse("E42").unwrap();
        assert_eq!(format!("{parsed}"), "E42");
    }

    #[test]
    fn error_codes_from_untrusted_text() {
        let check = |code: &str, ok: bool| assert_eq!(ErrorCode::parse(code).is_ok(), ok, "{code}");
        check("BAD_PARAMS", true);
        check("E42", true);
        check("", false);
        check("lower", false);
        check("9LIVES", false);
        check("WITH SPACE", false);
        check(&"A".repeat(64), true);
        check(&"A".repeat(65), false);
    }
}
