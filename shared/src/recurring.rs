//! Recurring schedules without I/O: when a schedule fires next, what a
//! worker does with a tick that came due (fire it, fire once for many
//! missed ticks, or skip them), and the id of the task a tick creates.
//!
//! The fire script (`shared/lua/fire.lua`) computes nothing cron-like: the
//! worker's loop (`worker/src/recurring.rs`) asks [`plan`] what to do with
//! a due tick and passes the answer, fenced by the tick it read, to the
//! script. So every rule about time lives here, tested by tables.
//!
//! # Cadences
//!
//! A schedule fires on a cron pattern in a time zone ([`Cadence::cron`]:
//! five fields, or six with seconds first; names such as `@daily`; the
//! zone an IANA name, by default `UTC`), or every fixed period
//! ([`Cadence::every`], at least one second, counted from the previous
//! tick). Patterns are parsed by `croner` and zones come from the tz
//! database that `jiff` bundles, so every host computes the same times.
//!
//! # Daylight saving time
//!
//! Cron fields are matched against the zone's wall clock, as Vixie cron
//! does: a pattern whose fixed time falls in a spring-forward gap (`30 2 * *
//! *` on 2026-03-08 in America/New_York, where 02:00 jumps to 03:00) fires
//! once, at the jump (03:00 EDT); one whose fixed time happens twice on a
//! fall-back day (`30 1 * * *` on 2026-11-01) fires once, at the first
//! occurrence (01:30 EDT). Patterns with a wildcard or step in their
//! seconds, minutes or hours (`*/15 * * * *`) follow real time: none fires
//! inside a gap, and both passes of a repeated hour fire.
//!
//! # Late and missed ticks
//!
//! A tick is on time while its successor is not yet due and it is at most
//! [`LATE_GRACE_MS`] late: it fires, and the next fire is its successor. A
//! tick later than that was missed (no worker ran): with
//! [`CatchUp::Once`] (the default) every missed tick together fires one
//! task, stamped with the latest of them; with [`CatchUp::Skip`] none
//! fires. Either way the next fire is the first tick after now.

use std::fmt;
use std::str::FromStr;

use croner::Cron;
use croner::parser::{CronParser, Seconds};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use sha2::{Digest, Sha256};

use crate::task::{Class, TaskId};

/// How late a tick may fire and still count as on time (when its successor
/// is not due yet); a later tick was missed.
pub const LATE_GRACE_MS: i64 = 60_000;

/// The shortest `every` period.
pub const MIN_EVERY_MS: u64 = 1_000;

/// The longest schedule name.
pub const MAX_NAME: usize = 64;

/// How many missed cron ticks a catch-up walks through one by one to find
/// the latest; past that it asks the pattern for its previous occurrence.
const CATCH_UP_WALK: usize = 1_000;

/// What is wrong with a schedule, naming the setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("cron: {pattern:?} is not a valid cron expression: {reason}")]
    BadCron { pattern: String, reason: String },
    #[error(
        "tz: {0:?} is not a known time zone (an IANA name such as America/New_York, Europe/London or UTC)"
    )]
    UnknownZone(String),
    #[error("every: {0}")]
    BadEvery(String),
    #[error("cron: {pattern:?} has no occurrence after {after}")]
    NeverFires { pattern: String, after: String },
    #[error("name: {0:?} must be 1-64 characters of A-Z a-z 0-9 _ . -")]
    BadName(String),
    #[error("catch_up: {0:?} is not `once` or `skip`")]
    BadCatchUp(String),
    /// A field of a schedule's hash, named in the message.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}: the time is out of range")]
    OutOfRange(String),
}

/// Checks a schedule name: 1-64 characters of `A-Z a-z 0-9 _ . -`, so it
/// reads plainly inside a key and needs no quoting in a shell.
pub fn check_name(name: &str) -> Result<(), ScheduleError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(ScheduleError::BadName(name.to_owned()))
    }
}

/// When a schedule fires.
#[derive(Debug, Clone)]
pub enum Cadence {
    /// A cron pattern, matched against the wall clock of `zone`.
    Cron {
        pattern: String,
        cron: Box<Cron>,
        zone: String,
        tz: TimeZone,
    },
    /// Every `every_ms`, counted from the previous tick.
    Every { every_ms: u64 },
}

impl PartialEq for Cadence {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (
                Cadence::Cron { pattern, zone, .. },
                Cadence::Cron {
                    pattern: p,
                    zone: z,
                    ..
                },
            ) => pattern == p && zone == z,
            (Cadence::Every { every_ms }, Cadence::Every { every_ms: e }) => every_ms == e,
            _ => false,
        }
    }
}

impl Cadence {
    /// A cron pattern (five fields, or six with seconds first) in `zone`
    /// (an IANA name; `None`: UTC).
    pub fn cron(pattern: &str, zone: Option<&str>) -> Result<Self, ScheduleError> {
        let pattern = pattern.trim();
        let bad = |reason: String| ScheduleError::BadCron {
            pattern: pattern.to_owned(),
            reason,
        };
        if pattern.is_empty() {
            return Err(bad("it is empty".to_owned()));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .build()
            .parse(pattern)
            .map_err(|err| bad(err.to_string()))?;
        let zone = zone.map(str::trim).unwrap_or("UTC");
        let tz = TimeZone::get(zone).map_err(|_| ScheduleError::UnknownZone(zone.to_owned()))?;
        let cadence = Cadence::Cron {
            pattern: pattern.to_owned(),
            cron: Box::new(cron),
            zone: zone.to_owned(),
            tz,
        };
        // A pattern that never matches (`0 0 30 2 *`) is refused now, not
        // found out by a worker later.
        cadence.next_after(0)?;
        Ok(cadence)
    }

    /// Every `every_ms` milliseconds, at least [`MIN_EVERY_MS`].
    pub fn every(every_ms: u64) -> Result<Self, ScheduleError> {
        if every_ms == 0 {
            return Err(ScheduleError::BadEvery(
                "must be more than 0 (at least 1s)".to_owned(),
            ));
        }
        if every_ms < MIN_EVERY_MS {
            return Err(ScheduleError::BadEvery(format!(
                "{every_ms} ms is shorter than the shortest period, 1s"
            )));
        }
        if i64::try_from(every_ms).is_err() {
            return Err(ScheduleError::BadEvery(format!(
                "{every_ms} ms is too long"
            )));
        }
        Ok(Cadence::Every { every_ms })
    }

    /// Parses a period such as `5m`, `90s`, `1h30m` or `2 days` (jiff's
    /// friendly duration format, or ISO 8601 `PT5M`) into milliseconds.
    pub fn parse_every(text: &str) -> Result<u64, ScheduleError> {
        // jiff wants a unit; a bare zero is zero in any unit.
        if text.trim() == "0" {
            return Ok(0);
        }
        let duration: SignedDuration = text.trim().parse().map_err(|err| {
            ScheduleError::BadEvery(format!(
                "{text:?} is not a duration such as 30s, 5m, 1h30m ({err})"
            ))
        })?;
        if duration.is_negative() {
            return Err(ScheduleError::BadEvery(format!("{text:?} is negative")));
        }
        u64::try_from(duration.as_millis())
            .map_err(|_| ScheduleError::BadEvery(format!("{text:?} is too long")))
    }

    /// The zone's name, for a cron cadence.
    pub fn zone(&self) -> Option<&str> {
        match self {
            Cadence::Cron { zone, .. } => Some(zone),
            Cadence::Every { .. } => None,
        }
    }

    /// The first tick strictly after `after_ms` (Unix ms).
    pub fn next_after(&self, after_ms: i64) -> Result<i64, ScheduleError> {
        match self {
            Cadence::Every { every_ms } => after_ms
                .checked_add(*every_ms as i64)
                .ok_or_else(|| ScheduleError::OutOfRange("every".to_owned())),
            Cadence::Cron {
                pattern, cron, tz, ..
            } => {
                let mut from = zoned(after_ms, tz)?;
                // croner searches by whole seconds; a start inside a second
                // may return that second, which is not after it.
                loop {
                    let next = cron.find_next_occurrence(&from, false).map_err(|err| {
                        ScheduleError::NeverFires {
                            pattern: pattern.clone(),
                            after: format!("{} ({err})", from.timestamp()),
                        }
                    })?;
                    let ms = next.timestamp().as_millisecond();
                    if ms > after_ms {
                        return Ok(ms);
                    }
                    from = next;
                }
            }
        }
    }

    /// The latest tick at or before `now_ms`, walking from `tick_ms` (a
    /// tick at or before `now_ms`), and how many ticks were due from
    /// `tick_ms` to it, both included (a cron catch-up counts one by one
    /// up to [`CATCH_UP_WALK`] ticks; past that the count is a floor).
    fn latest_due(&self, tick_ms: i64, now_ms: i64) -> Result<(i64, u64), ScheduleError> {
        match self {
            Cadence::Every { every_ms } => {
                let every = *every_ms as i64;
                let periods = (now_ms - tick_ms) / every;
                Ok((tick_ms + periods * every, periods as u64 + 1))
            }
            Cadence::Cron { cron, tz, .. } => {
                let mut latest = tick_ms;
                let mut count = 1;
                for _ in 0..CATCH_UP_WALK {
                    let next = self.next_after(latest)?;
                    if next > now_ms {
                        return Ok((latest, count));
                    }
                    latest = next;
                    count += 1;
                }
                let previous = cron
                    .find_previous_occurrence(&zoned(now_ms, tz)?, true)
                    .map(|z| z.timestamp().as_millisecond())
                    .unwrap_or(latest);
                Ok((previous.clamp(latest, now_ms), count + 1))
            }
        }
    }

    /// The cadence exactly, for signatures: `cron <pattern> <zone>` or
    /// `every_ms <n>`.
    pub fn describe_exact(&self) -> String {
        match self {
            Cadence::Cron { pattern, zone, .. } => format!("cron {pattern} {zone}"),
            Cadence::Every { every_ms } => format!("every_ms {every_ms}"),
        }
    }

    /// The cadence as people write it: `cron "30 17 * * 1-5" America/New_York`
    /// or `every 5m`.
    pub fn describe(&self) -> String {
        match self {
            Cadence::Cron { pattern, zone, .. } => format!("cron \"{pattern}\" {zone}"),
            Cadence::Every { every_ms } => {
                let duration = SignedDuration::from_millis(*every_ms as i64);
                format!("every {duration:#}")
            }
        }
    }
}

fn zoned(ms: i64, tz: &TimeZone) -> Result<jiff::Zoned, ScheduleError> {
    Timestamp::from_millisecond(ms)
        .map(|t| t.to_zoned(tz.clone()))
        .map_err(|_| ScheduleError::OutOfRange(format!("{ms} ms")))
}

/// Formats a Unix time in a zone, for people: `2026-03-08 03:00:00 EDT`.
pub fn format_in(ms: i64, zone: &str) -> String {
    let Ok(tz) = TimeZone::get(zone) else {
        return format!("{ms} ms");
    };
    match zoned(ms, &tz) {
        Ok(z) => z.strftime("%Y-%m-%d %H:%M:%S %Z").to_string(),
        Err(_) => format!("{ms} ms"),
    }
}

/// What to do with ticks missed while no worker ran.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CatchUp {
    /// Fire one task for all of them (stamped with the latest).
    #[default]
    Once,
    /// Fire none; go on from the next tick.
    Skip,
}

impl CatchUp {
    pub fn as_str(self) -> &'static str {
        match self {
            CatchUp::Once => "once",
            CatchUp::Skip => "skip",
        }
    }
}

impl fmt::Display for CatchUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CatchUp {
    type Err = ScheduleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "once" => Ok(CatchUp::Once),
            "skip" => Ok(CatchUp::Skip),
            other => Err(ScheduleError::BadCatchUp(other.to_owned())),
        }
    }
}

/// What a worker does with a due tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FirePlan {
    /// The tick whose task to create (its time stamps the task), or `None`
    /// when the missed ticks are skipped.
    pub fire: Option<i64>,
    /// How many ticks were due (1 on time; more when some were missed).
    pub due_ticks: u64,
    /// The schedule's next fire time.
    pub next_fire_ms: i64,
}

/// What to do at `now_ms` with the tick stored for `tick_ms`; `None` while
/// it is not due.
pub fn plan(
    cadence: &Cadence,
    catch_up: CatchUp,
    tick_ms: i64,
    now_ms: i64,
) -> Result<Option<FirePlan>, ScheduleError> {
    if tick_ms > now_ms {
        return Ok(None);
    }
    let successor = cadence.next_after(tick_ms)?;
    if successor > now_ms && now_ms - tick_ms <= LATE_GRACE_MS {
        return Ok(Some(FirePlan {
            fire: Some(tick_ms),
            due_ticks: 1,
            next_fire_ms: successor,
        }));
    }
    let (latest, due_ticks) = cadence.latest_due(tick_ms, now_ms)?;
    Ok(Some(FirePlan {
        fire: match catch_up {
            CatchUp::Once => Some(latest),
            CatchUp::Skip => None,
        },
        due_ticks,
        next_fire_ms: cadence.next_after(latest)?,
    }))
}

/// The id of the task that schedule `name` of `class` creates for the tick
/// at `tick_ms`: a UUID v7 whose time is the tick's and whose other bits
/// are a hash of the class, name, `seed` (the schedule's creation time, so
/// a schedule removed and added again does not meet its predecessor's
/// ids) and tick. Any worker computes the same id, so a fire that is
/// retried, or raced by another worker, cannot create a second task.
pub fn tick_task_id(class: Class, name: &str, seed: &str, tick_ms: i64) -> TaskId {
    let digest = Sha256::new()
        .chain_update(b"tandem-schedule\0")
        .chain_update(class.as_str().as_bytes())
        .chain_update(b"\0")
        .chain_update(name.as_bytes())
        .chain_update(b"\0")
        .chain_update(seed.as_bytes())
        .chain_update(b"\0")
        .chain_update(tick_ms.to_be_bytes())
        .finalize();
    let mut random = [0u8; 10];
    random.copy_from_slice(&digest[..10]);
    let millis = u64::try_from(tick_ms).unwrap_or(0);
    TaskId::from(uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unix ms of a wall-clock time in a zone (the earlier one when it
    /// happens twice).
    fn at(zone: &str, text: &str) -> i64 {
        let civil: jiff::civil::DateTime = text.parse().expect("a civil time");
        civil
            .to_zoned(TimeZone::get(zone).expect("a zone"))
            .expect("a valid time")
            .timestamp()
            .as_millisecond()
    }

    fn utc(text: &str) -> i64 {
        let t: Timestamp = text.parse().expect("an instant");
        t.as_millisecond()
    }

    fn ny(pattern: &str) -> Cadence {
        Cadence::cron(pattern, Some("America/New_York")).expect("a valid cadence")
    }

    /// The next `n` fires after `from`, as UTC instants.
    fn fires(cadence: &Cadence, from: i64, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        let mut at = from;
        for _ in 0..n {
            at = cadence.next_after(at).expect("a next fire");
            out.push(Timestamp::from_millisecond(at).expect("ms").to_string());
        }
        out
    }

    #[test]
    fn a_weekday_close_in_new_york_follows_the_offset_change() {
        let cadence = ny("30 17 * * 1-5");
        // Friday 2026-03-06 (EST, UTC-5), then Monday 2026-03-09 (EDT, UTC-4).
        assert_eq!(
            fires(&cadence, utc("2026-03-06T12:00:00Z"), 2),
            ["2026-03-06T22:30:00Z", "2026-03-09T21:30:00Z"]
        );
    }

    #[test]
    fn spring_forward_fires_a_skipped_fixed_time_once_at_the_jump() {
        // 2026-03-08: 02:00 EST jumps to 03:00 EDT; 02:30 does not exist.
        let cadence = ny("30 2 * * *");
        assert_eq!(
            fires(&cadence, utc("2026-03-07T00:00:00Z"), 3),
            [
                "2026-03-07T07:30:00Z", // 02:30 EST
                "2026-03-08T07:00:00Z", // the jump: 03:00 EDT
                "2026-03-09T06:30:00Z", // 02:30 EDT
            ]
        );
    }

    #[test]
    fn spring_forward_skips_interval_ticks_inside_the_gap() {
        let cadence = ny("*/30 * * * *");
        assert_eq!(
            fires(&cadence, at("America/New_York", "2026-03-08T01:00:00"), 3),
            [
                "2026-03-08T06:30:00Z", // 01:30 EST
                "2026-03-08T07:00:00Z", // 03:00 EDT (02:00 and 02:30 do not exist)
                "2026-03-08T07:30:00Z", // 03:30 EDT
            ]
        );
    }

    #[test]
    fn fall_back_fires_a_repeated_fixed_time_once() {
        // 2026-11-01: 02:00 EDT falls back to 01:00 EST; 01:30 happens twice.
        let cadence = ny("30 1 * * *");
        assert_eq!(
            fires(&cadence, utc("2026-10-31T12:00:00Z"), 3),
            [
                "2026-11-01T05:30:00Z", // 01:30 EDT, the first 01:30
                "2026-11-02T06:30:00Z", // 01:30 EST the next day; not 06:30Z on the 1st
                "2026-11-03T06:30:00Z",
            ]
        );
    }

    #[test]
    fn fall_back_runs_interval_ticks_through_both_passes() {
        let every_half_hour = ny("*/30 * * * *");
        assert_eq!(
            fires(&every_half_hour, utc("2026-11-01T04:45:00Z"), 5),
            [
                "2026-11-01T05:00:00Z", // 01:00 EDT
                "2026-11-01T05:30:00Z", // 01:30 EDT
                "2026-11-01T06:00:00Z", // 01:00 EST
                "2026-11-01T06:30:00Z", // 01:30 EST
                "2026-11-01T07:00:00Z", // 02:00 EST
            ]
        );
    }

    #[test]
    fn bad_patterns_and_zones_are_refused_naming_the_setting() {
        let check = |pattern: &str, zone: Option<&str>, expect: &str| {
            let err = Cadence::cron(pattern, zone).expect_err(pattern).to_string();
            assert!(err.contains(expect), "{pattern:?} {zone:?}: {err}");
        };
        check(
            "61 * * * *",
            None,
            "cron: \"61 * * * *\" is not a valid cron",
        );
        check("every monday", None, "is not a valid cron expression");
        check(
            "",
            None,
            "cron: \"\" is not a valid cron expression: it is empty",
        );
        check("* * *", None, "is not a valid cron expression");
        check("0 0 30 2 *", None, "has no occurrence");
        check(
            "* * * * *",
            Some("Mars/Olympus"),
            "tz: \"Mars/Olympus\" is not a known time zone",
        );
        assert!(Cadence::cron("@daily", Some("Europe/London")).is_ok());
        assert!(Cadence::cron("*/2 * * * * *", None).is_ok());
    }

    #[test]
    fn periods_parse_and_zero_or_short_ones_are_refused() {
        let ms = |text: &str| Cadence::parse_every(text);
        assert_eq!(ms("5m"), Ok(300_000));
        assert_eq!(ms("1h30m"), Ok(5_400_000));
        assert_eq!(ms("90s"), Ok(90_000));
        assert_eq!(ms("PT2S"), Ok(2_000));
        assert!(
            ms("soon")
                .unwrap_err()
                .to_string()
                .starts_with("every: \"soon\"")
        );
        assert!(ms("-5m").unwrap_err().to_string().contains("negative"));
        let zero = Cadence::every(0).unwrap_err().to_string();
        assert_eq!(zero, "every: must be more than 0 (at least 1s)");
        assert!(Cadence::every(500).is_err());
        assert_eq!(
            Cadence::every(1_000).map(|c| c.describe()),
            Ok("every 1s".to_owned())
        );
        assert_eq!(
            Cadence::every(300_000).map(|c| c.describe()),
            Ok("every 5m".to_owned())
        );
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("eod-var.ny_1").is_ok());
        for bad in ["", "a b", "a:b", "{x}", &"n".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn plans_fire_on_time_ticks_and_catch_up_missed_ones_by_policy() {
        let every = Cadence::every(10_000).expect("a cadence");
        let check = |catch_up, tick, now, expect: Option<FirePlan>| {
            assert_eq!(
                plan(&every, catch_up, tick, now).expect("a plan"),
                expect,
                "{catch_up} tick {tick} now {now}"
            );
        };
        let fire = |fire: Option<i64>, due_ticks, next_fire_ms| {
            Some(FirePlan {
                fire,
                due_ticks,
                next_fire_ms,
            })
        };
        // Not due yet.
        check(CatchUp::Once, 100_000, 99_999, None);
        // On time (or a little late): the tick fires, the next follows it.
        check(
            CatchUp::Once,
            100_000,
            100_000,
            fire(Some(100_000), 1, 110_000),
        );
        check(
            CatchUp::Skip,
            100_000,
            109_999,
            fire(Some(100_000), 1, 110_000),
        );
        // Three ticks due (100, 110, 120 s): once fires the latest, skip none;
        // both go on from the first tick after now, on the same grid.
        check(
            CatchUp::Once,
            100_000,
            125_000,
            fire(Some(120_000), 3, 130_000),
        );
        check(CatchUp::Skip, 100_000, 125_000, fire(None, 3, 130_000));
        // A long period: one tick, later than the grace, was missed.
        let hourly = Cadence::every(3_600_000).expect("a cadence");
        let late = 100_000 + LATE_GRACE_MS + 1;
        assert_eq!(
            plan(&hourly, CatchUp::Skip, 100_000, late).expect("a plan"),
            fire(None, 1, 3_700_000)
        );
        assert_eq!(
            plan(&hourly, CatchUp::Once, 100_000, late).expect("a plan"),
            fire(Some(100_000), 1, 3_700_000)
        );
    }

    #[test]
    fn a_cron_catch_up_fires_the_latest_missed_tick_and_resumes_after_now() {
        let cadence = ny("30 17 * * 1-5");
        let tick = utc("2026-03-06T22:30:00Z");
        let now = utc("2026-03-11T12:00:00Z");
        let planned = plan(&cadence, CatchUp::Once, tick, now)
            .expect("a plan")
            .expect("due");
        assert_eq!(planned.fire, Some(utc("2026-03-10T21:30:00Z")));
        assert_eq!(planned.next_fire_ms, utc("2026-03-11T21:30:00Z"));
        // Friday 6th, Monday 9th, Tuesday 10th.
        assert_eq!(planned.due_ticks, 3);
        let skipped = plan(&cadence, CatchUp::Skip, tick, now)
            .expect("a plan")
            .expect("due");
        assert_eq!(skipped.fire, None);
        assert_eq!(skipped.next_fire_ms, planned.next_fire_ms);
    }

    #[test]
    fn a_long_catch_up_finds_the_latest_tick_past_the_walk() {
        // Every second, missed for two hours: 7200 ticks, more than the
        // walk takes one by one.
        let cadence = Cadence::cron("* * * * * *", None).expect("a cadence");
        let tick = utc("2026-12-03T10:00:00Z");
        let now = utc("2026-12-03T12:00:00.250Z");
        let planned = plan(&cadence, CatchUp::Once, tick, now)
            .expect("a plan")
            .expect("due");
        assert_eq!(planned.fire, Some(utc("2026-12-03T12:00:00Z")));
        assert_eq!(planned.next_fire_ms, utc("2026-12-03T12:00:01Z"));
        // Counted one by one up to the walk's length, then a floor.
        assert_eq!(planned.due_ticks, CATCH_UP_WALK as u64 + 2);
        // Inside a second: the next fire is the next whole second.
        assert_eq!(
            cadence.next_after(utc("2026-12-03T12:00:00.250Z")),
            Ok(utc("2026-12-03T12:00:01Z"))
        );
    }

    #[test]
    fn a_catch_up_across_a_dst_change_resumes_on_the_new_offset() {
        // A 02:30 daily job in New York, last fired Saturday 02:30 EST;
        // nothing ran until Monday 12:00 EDT: the latest missed tick is
        // Monday 02:30 EDT, the next Tuesday 02:30 EDT.
        let cadence = ny("30 2 * * *");
        let planned = plan(
            &cadence,
            CatchUp::Once,
            utc("2026-03-07T07:30:00Z"),
            at("America/New_York", "2026-03-09T12:00:00"),
        )
        .expect("a plan")
        .expect("due");
        assert_eq!(planned.fire, Some(utc("2026-03-09T06:30:00Z")));
        assert_eq!(planned.next_fire_ms, utc("2026-03-10T06:30:00Z"));
    }

    #[test]
    fn tick_ids_are_v7_stamped_with_the_tick_and_differ_by_every_input() {
        let id = tick_task_id(Class::Cpu, "book", "1", 1_780_000_000_000);
        assert_eq!(id, tick_task_id(Class::Cpu, "book", "1", 1_780_000_000_000));
        assert_eq!(id.as_uuid().get_version_num(), 7);
        let (secs, nanos) = id
            .as_uuid()
            .get_timestamp()
            .expect("a v7 timestamp")
            .to_unix();
        assert_eq!(
            secs * 1000 + u64::from(nanos) / 1_000_000,
            1_780_000_000_000
        );
        for other in [
            tick_task_id(Class::Heavy, "book", "1", 1_780_000_000_000),
            tick_task_id(Class::Cpu, "book2", "1", 1_780_000_000_000),
            tick_task_id(Class::Cpu, "book", "2", 1_780_000_000_000),
            tick_task_id(Class::Cpu, "book", "1", 1_780_000_000_001),
        ] {
            assert_ne!(id, other);
        }
    }

    #[test]
    fn catch_up_reads_and_prints() {
        assert_eq!("once".parse(), Ok(CatchUp::Once));
        assert_eq!("skip".parse(), Ok(CatchUp::Skip));
        assert_eq!(
            "never".parse::<CatchUp>().unwrap_err().to_string(),
            "catch_up: \"never\" is not `once` or `skip`"
        );
        assert_eq!(
            format_in(utc("2026-03-08T07:00:00Z"), "America/New_York"),
            "2026-03-08 03:00:00 EDT"
        );
    }
}
