//! The exit statuses of `tandem` and `tandem-worker`, one table for both,
//! so that a script can tell the outcomes apart (README, "Exit codes"), and
//! the one-line form of an error chain both binaries print.

use std::error::Error;

/// Done.
pub const SUCCESS: u8 = 0;
/// Any error the codes below do not name (Redis refused a command, a file
/// could not be read, ...).
pub const ERROR: u8 = 1;
/// Bad arguments or configuration: an unknown flag or value, parameters
/// that are not JSON or that the kind refuses, a setting out of range, a
/// `--device` no GPU matches. Running it again unchanged fails again.
pub const USAGE: u8 = 2;
/// `tandem`: the task, model or dead letter named does not exist (or its
/// record expired).
pub const NOT_FOUND: u8 = 3;
/// `tandem-worker`: the worker's device failed; its fleet restarts it.
pub const DEVICE_FAILED: u8 = 3;
/// `tandem`: the task ended without succeeding (failed, dead-lettered,
/// expired or cancelled).
pub const TASK_FAILED: u8 = 4;
/// `tandem`: the task did not finish within the wait's timeout; it may still.
pub const TIMED_OUT: u8 = 5;
/// Redis could not be reached (refused, unresolvable, timed out, loading)
/// within the retry window.
pub const UNREACHABLE: u8 = 6;
/// Stopped by Ctrl-C (128 + SIGINT, as shells report it).
pub const INTERRUPTED: u8 = 130;

/// `error: cause: root cause` on one line, like anyhow's `{:#}`, but a
/// cause whose text the line already holds is left out: many errors
/// (redis-rs's among them) repeat their source in their own message, and
/// printing every level would say "Connection refused" several times.
pub fn one_line<'a>(chain: impl IntoIterator<Item = &'a (dyn Error + 'static)>) -> String {
    let mut line = String::new();
    for cause in chain {
        let text = cause.to_string();
        let text = text.trim();
        if text.is_empty() || line.contains(text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(text);
    }
    line
}

/// The chain of causes of `err`, starting with `err` itself.
pub fn chain<'a>(
    err: &'a (dyn Error + 'static),
) -> impl Iterator<Item = &'a (dyn Error + 'static)> {
    std::iter::successors(Some(err), |&e| e.source())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot reach Redis at redis://h:1: {0}")]
    struct Outer(#[source] Middle);

    #[derive(Debug, thiserror::Error)]
    #[error("redis: {0}")]
    struct Middle(#[source] std::io::Error);

    #[test]
    fn a_cause_repeated_by_its_parent_is_printed_once() {
        let err = Outer(Middle(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "Connection refused (os error 111)",
        )));
        assert_eq!(
            one_line(chain(&err)),
            "cannot reach Redis at redis://h:1: redis: Connection refused (os error 111)"
        );
    }

    #[derive(Debug, thiserror::Error)]
    #[error("cannot write the model")]
    struct Plain(#[source] std::io::Error);

    #[test]
    fn distinct_causes_are_all_kept() {
        let err = Plain(std::io::Error::other("disk full"));
        assert_eq!(one_line(chain(&err)), "cannot write the model: disk full");
    }
}
