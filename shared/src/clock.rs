//! Wall-clock time as the queue writes it: milliseconds since the Unix
//! epoch, the unit of every `*_ms` field of the wire format.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch on this host's clock: 0 for a clock
/// set before 1970, `u64::MAX` past what a `u64` holds. Task times that
/// must agree across hosts come from the Redis server's clock instead
/// (the scripts read `TIME`); this is for what one process stamps or
/// compares on its own (heartbeats, registrations, ages in the CLI).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_is_in_milliseconds_since_the_epoch() {
        let now = now_ms();
        // After 2020-01-01T00:00:00Z and before 2200: milliseconds, not
        // seconds or microseconds.
        assert!(
            (1_577_836_800_000..7_258_118_400_000).contains(&now),
            "{now}"
        );
    }
}
