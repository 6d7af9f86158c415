//! Flow control's vocabulary, without I/O: what a pause or a rate limit
//! applies to ([`PauseTarget`], [`LimitTarget`]), a rate ([`Rate`]), and
//! their forms in a class's flow hash (`<prefix>:{class}:flow`, read by the
//! claim script; see docs/wire-format.md). [`crate::store`] reads and
//! writes them.
//!
//! Every class's keys share its hash tag, so a pause or a limit lives in
//! each class it applies to: a kind's pause or limit, unless a class is
//! named, is written to every class, and each class enforces its own limit
//! (in Redis Cluster a script sees one slot). A kind whose tasks all go to
//! one class (the usual case) gets exactly N starts per interval.

use std::fmt;
use std::str::FromStr;

use crate::task::{Class, Priority};

/// What a pause applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PauseTarget {
    /// Every stream of a class: `heavy`.
    Class(Class),
    /// One priority of a class: `heavy:high`.
    Priority(Class, Priority),
    /// One kind, in every class (or those named besides): `kind:risk`.
    Kind(String),
}

/// What a rate limit applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitTarget {
    /// Every task of a kind: `kind:monte_carlo`.
    Kind(String),
    /// Every task submitted with this `rate_key`: `key:vendor-a`.
    Key(String),
}

/// Why a target or a rate was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FlowError(pub String);

/// Checks a kind name or a rate key: 1-200 characters, none of them
/// whitespace or a control character. (A `:` is fine: the field's prefix
/// says where the name starts.)
pub fn check_name(what: &str, name: &str) -> Result<(), FlowError> {
    if name.is_empty()
        || name.len() > 200
        || name.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(FlowError(format!(
            "{what} {name:?} must be 1-200 characters, without whitespace or control characters"
        )));
    }
    Ok(())
}

impl PauseTarget {
    /// The field of the class's flow hash that says this pause.
    pub fn field(&self) -> String {
        match self {
            PauseTarget::Class(_) => "pause".to_owned(),
            PauseTarget::Priority(_, priority) => format!("pause:priority:{priority}"),
            PauseTarget::Kind(kind) => format!("pause:kind:{kind}"),
        }
    }

    /// The classes it is written to: its own, or for a kind `classes`.
    pub fn classes(&self, classes: &[Class]) -> Vec<Class> {
        match self {
            PauseTarget::Class(class) | PauseTarget::Priority(class, _) => vec![*class],
            PauseTarget::Kind(_) => classes.to_vec(),
        }
    }
}

impl FromStr for PauseTarget {
    type Err = FlowError;

    /// `heavy`, `heavy:high` or `kind:risk`.
    fn from_str(text: &str) -> Result<Self, FlowError> {
        if let Some(kind) = text.strip_prefix("kind:") {
            check_name("kind", kind)?;
            return Ok(PauseTarget::Kind(kind.to_owned()));
        }
        let (class, priority) = match text.split_once(':') {
            Some((class, priority)) => (class, Some(priority)),
            None => (text, None),
        };
        let class: Class = class.parse().map_err(|e| {
            FlowError(format!(
                "pause target {text:?}: {e} (or kind:<kind> for a kind)"
            ))
        })?;
        match priority {
            None => Ok(PauseTarget::Class(class)),
            Some(priority) => {
                let priority: Priority = priority
                    .parse()
                    .map_err(|e| FlowError(format!("pause target {text:?}: {e}")))?;
                Ok(PauseTarget::Priority(class, priority))
            }
        }
    }
}

impl fmt::Display for PauseTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PauseTarget::Class(class) => write!(f, "{class}"),
            PauseTarget::Priority(class, priority) => write!(f, "{class}:{priority}"),
            PauseTarget::Kind(kind) => write!(f, "kind:{kind}"),
        }
    }
}

impl LimitTarget {
    /// The field of the class's flow hash (and of its `limit_tat` hash,
    /// without the `limit:`) that holds this limit.
    pub fn field(&self) -> String {
        format!("limit:{self}")
    }
}

impl FromStr for LimitTarget {
    type Err = FlowError;

    /// `kind:<kind>` or `key:<rate key>`.
    fn from_str(text: &str) -> Result<Self, FlowError> {
        if let Some(kind) = text.strip_prefix("kind:") {
            check_name("kind", kind)?;
            Ok(LimitTarget::Kind(kind.to_owned()))
        } else if let Some(key) = text.strip_prefix("key:") {
            check_name("rate key", key)?;
            Ok(LimitTarget::Key(key.to_owned()))
        } else {
            Err(FlowError(format!(
                "limit target {text:?} must be kind:<kind> or key:<rate key>"
            )))
        }
    }
}

impl fmt::Display for LimitTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LimitTarget::Kind(kind) => write!(f, "kind:{kind}"),
            LimitTarget::Key(key) => write!(f, "key:{key}"),
        }
    }
}

/// At most `count` starts per `period_ms`, spaced evenly: one start per
/// `period_ms / count` (GCRA without burst).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub period_ms: u64,
}

impl Rate {
    /// The time between two starts (GCRA's emission interval), µs.
    pub fn interval_us(self) -> f64 {
        self.period_ms as f64 * 1000.0 / f64::from(self.count)
    }

    /// The form the flow hash keeps: `N/P` (P in ms).
    pub fn wire(self) -> String {
        format!("{}/{}", self.count, self.period_ms)
    }

    /// Reads the flow hash's form; `None` when malformed (the claim script
    /// ignores such a value too).
    pub fn from_wire(text: &str) -> Option<Self> {
        let (count, period) = text.split_once('/')?;
        let rate = Rate {
            count: count.parse().ok()?,
            period_ms: period.parse().ok()?,
        };
        (rate.count > 0 && rate.period_ms > 0).then_some(rate)
    }
}

impl FromStr for Rate {
    type Err = FlowError;

    /// `100/s`, `5/min`, `1000/h`, `10/250ms`, `100/10s`, `3/d`: a count,
    /// `/`, and a period (a number, default 1, then `ms`, `s`, `min`, `h` or
    /// `d`).
    fn from_str(text: &str) -> Result<Self, FlowError> {
        let bad = |why: &str| {
            FlowError(format!(
                "rate {text:?}: {why}; write it as N/period, e.g. 100/s, 5/min, 10/250ms"
            ))
        };
        let (count, period) = text.split_once('/').ok_or_else(|| bad("no '/'"))?;
        let count: u32 = count
            .trim()
            .parse()
            .map_err(|_| bad("the count is not a whole number"))?;
        if count == 0 {
            return Err(bad(
                "a rate of 0 would never start anything (pause instead)",
            ));
        }
        let period = period.trim();
        let split = period
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| bad("the period has no unit"))?;
        let (number, unit) = period.split_at(split);
        let number: u64 = if number.is_empty() {
            1
        } else {
            number
                .parse()
                .map_err(|_| bad("the period's number is too large"))?
        };
        let unit_ms: u64 = match unit {
            "ms" => 1,
            "s" | "sec" => 1_000,
            "m" | "min" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(bad("the period's unit is not one of ms, s, min, h, d")),
        };
        let period_ms = number
            .checked_mul(unit_ms)
            .filter(|&ms| ms > 0)
            .ok_or_else(|| bad("the period must be above 0 and under 2^64 ms"))?;
        Ok(Rate { count, period_ms })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.period_ms {
            1_000 => write!(f, "{}/s", self.count),
            60_000 => write!(f, "{}/min", self.count),
            3_600_000 => write!(f, "{}/h", self.count),
            ms if ms % 1_000 == 0 => write!(f, "{}/{}s", self.count, ms / 1_000),
            ms => write!(f, "{}/{}ms", self.count, ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(text: &str) -> Result<(u32, u64), String> {
        text.parse::<Rate>()
            .map(|r| (r.count, r.period_ms))
            .map_err(|e| e.0)
    }

    #[test]
    fn rates_parse() {
        for (text, expect) in [
            ("100/s", (100, 1_000)),
            ("5/min", (5, 60_000)),
            ("1000/h", (1_000, 3_600_000)),
            ("10/250ms", (10, 250)),
            ("100/10s", (100, 10_000)),
            ("3/d", (3, 86_400_000)),
            (" 7 / 2s ", (7, 2_000)),
        ] {
            assert_eq!(rate(text), Ok(expect), "{text}");
        }
        for (text, complaint) in [
            ("0/s", "a rate of 0"),
            ("100", "no '/'"),
            ("x/s", "not a whole number"),
            ("-1/s", "not a whole number"),
            ("10/5", "no unit"),
            ("10/5y", "unit"),
            ("10/0s", "above 0"),
        ] {
            let err = rate(text).unwrap_err();
            assert!(err.contains(complaint), "{text}: {err}");
            assert!(err.contains(text), "{text}: {err}");
        }
    }

    #[test]
    fn rates_round_trip_through_their_wire_form_and_display() {
        for text in ["100/s", "5/min", "1000/h", "10/250ms", "100/10s"] {
            let rate: Rate = text.parse().unwrap();
            assert_eq!(Rate::from_wire(&rate.wire()), Some(rate));
            assert_eq!(rate.to_string().parse::<Rate>().unwrap(), rate);
        }
        assert_eq!(Rate::from_wire("0/1000"), None);
        assert_eq!(Rate::from_wire("1/0"), None);
        assert_eq!(Rate::from_wire("junk"), None);
        assert_eq!("4/s".parse::<Rate>().unwrap().interval_us(), 250_000.0);
    }

    #[test]
    fn pause_targets_parse() {
        assert_eq!(
            "heavy".parse::<PauseTarget>(),
            Ok(PauseTarget::Class(Class::Heavy))
        );
        assert_eq!(
            "heavy:high".parse::<PauseTarget>(),
            Ok(PauseTarget::Priority(Class::Heavy, Priority::High))
        );
        assert_eq!(
            "kind:risk".parse::<PauseTarget>(),
            Ok(PauseTarget::Kind("risk".into()))
        );
        for (text, complaint) in [
            ("huge", "class"),
            ("heavy:urgent", "priority"),
            ("kind:", "kind \"\""),
            ("kind:a b", "whitespace"),
        ] {
            let err = text.parse::<PauseTarget>().unwrap_err().0;
            assert!(err.contains(complaint), "{text}: {err}");
        }
        for text in ["heavy", "light:low", "kind:risk"] {
            assert_eq!(text.parse::<PauseTarget>().unwrap().to_string(), text);
        }
        assert_eq!(
            PauseTarget::Priority(Class::Cpu, Priority::Low).field(),
            "pause:priority:low"
        );
        assert_eq!(PauseTarget::Kind("risk".into()).field(), "pause:kind:risk");
    }

    #[test]
    fn limit_targets_parse() {
        assert_eq!(
            "kind:risk".parse::<LimitTarget>().map(|t| t.field()),
            Ok("limit:kind:risk".to_owned())
        );
        assert_eq!(
            "key:vendor-a".parse::<LimitTarget>().map(|t| t.field()),
            Ok("limit:key:vendor-a".to_owned())
        );
        let err = "vendor-a".parse::<LimitTarget>().unwrap_err().0;
        assert!(err.contains("kind:<kind> or key:<rate key>"), "{err}");
    }
}
