//! Queue-level metrics for Prometheus (a fleet's `/metrics`, `tandem
//! exporter`, the dashboard): per class and priority the waiting and
//! running tasks and the oldest waiting age; per class the delayed,
//! retrying and dead-lettered tasks.
//!
//! Every number comes from a command whose cost does not grow with the
//! queue: `XLEN`, `XINFO GROUPS` and one `XRANGE ... COUNT 1` per stream
//! (see [`Store::queue_stats`]), `ZCARD` of the delayed set and of the
//! state index's `retrying` set, and `XLEN` of the dead-letter stream per
//! class: at most 61 commands in three round trips, the same with a
//! million tasks waiting as with none.

use std::fmt::Write as _;

use redis::{Cmd, Value};

use super::reply::{int, reply_ok};
use super::{Store, StoreError, StreamStats};
use crate::task::Class;

/// One read of the queues.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueSnapshot {
    /// Per stream (class and priority), in claim order.
    pub streams: Vec<StreamStats>,
    /// Per class.
    pub classes: Vec<ClassCounts>,
}

/// What a class holds outside its streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassCounts {
    pub class: Class,
    /// The delayed set: tasks submitted for later, parked by a rate limit,
    /// or waiting for a retry.
    pub delayed: u64,
    /// Of those, the ones waiting for a retry (the state index).
    pub retrying: u64,
    /// Entries in the dead-letter stream.
    pub dead_letters: u64,
}

impl Store {
    /// The queues, read cheaply enough to scrape every few seconds whatever
    /// their depth.
    pub async fn queue_snapshot(&self) -> Result<QueueSnapshot, StoreError> {
        let streams = self.queue_stats(Class::ALL).await?;
        let mut cmds: Vec<Cmd> = Vec::with_capacity(Class::ALL.len() * 3);
        for &class in Class::ALL {
            let mut delayed = redis::cmd("ZCARD");
            delayed.arg(self.keys.delayed(class));
            let mut retrying = redis::cmd("ZCARD");
            retrying.arg(self.keys.index(class, "retrying"));
            let mut dead = redis::cmd("XLEN");
            dead.arg(self.keys.dead(class));
            cmds.extend([delayed, retrying, dead]);
        }
        let mut replies = self.pipeline(&cmds).await?.into_iter();
        let mut count = |what: &'static str| -> Result<u64, StoreError> {
            let n = int(reply_ok(replies.next().unwrap_or(Value::Nil))?, what)?;
            Ok(u64::try_from(n).unwrap_or(0))
        };
        let mut classes = Vec::with_capacity(Class::ALL.len());
        for &class in Class::ALL {
            classes.push(ClassCounts {
                class,
                delayed: count("ZCARD of the delayed set")?,
                retrying: count("ZCARD of the retrying index")?,
                dead_letters: count("XLEN of the dead letters")?,
            });
        }
        Ok(QueueSnapshot { streams, classes })
    }
}

impl QueueSnapshot {
    /// The snapshot in the Prometheus text exposition format (0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        type PerStream = fn(&StreamStats) -> f64;
        let per_stream: [(&str, &str, PerStream); 4] = [
            (
                "tandem_queue_waiting_tasks",
                "Tasks in the stream not yet delivered to a worker.",
                |s| s.waiting as f64,
            ),
            (
                "tandem_queue_running_tasks",
                "Tasks delivered to a worker and not yet committed (the group's pending entries).",
                |s| s.pending as f64,
            ),
            (
                "tandem_queue_oldest_waiting_age_seconds",
                "Age of the oldest waiting task, by the Redis clock; 0 when none waits.",
                |s| s.oldest_waiting_ms.unwrap_or(0) as f64 / 1000.0,
            ),
            (
                "tandem_queue_consumers",
                "Workers (consumers of the group) that read the stream.",
                |s| s.consumers as f64,
            ),
        ];
        for (name, help, value) in per_stream {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for stream in &self.streams {
                let _ = writeln!(
                    out,
                    "{name}{{class=\"{}\",priority=\"{}\"}} {}",
                    stream.class,
                    stream.priority,
                    value(stream)
                );
            }
        }
        type PerClass = fn(&ClassCounts) -> u64;
        let per_class: [(&str, &str, PerClass); 3] = [
            (
                "tandem_queue_delayed_tasks",
                "Tasks in the class's delayed set: submitted for later, parked by a rate limit or a paused kind's turn, or waiting for a retry.",
                |c| c.delayed,
            ),
            (
                "tandem_queue_retrying_tasks",
                "Tasks waiting for their next attempt after a failed one.",
                |c| c.retrying,
            ),
            (
                "tandem_queue_dead_letters",
                "Entries in the class's dead-letter stream.",
                |c| c.dead_letters,
            ),
        ];
        for (name, help, value) in per_class {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for class in &self.classes {
                let _ = writeln!(out, "{name}{{class=\"{}\"}} {}", class.class, value(class));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::Priority;

    #[test]
    fn renders_one_series_per_stream_and_per_class() {
        let snapshot = QueueSnapshot {
            streams: vec![StreamStats {
                class: Class::Cpu,
                priority: Priority::High,
                key: "tandem:{cpu}:stream:high".into(),
                waiting: 7,
                pending: 2,
                consumers: 1,
                oldest_waiting_ms: Some(1500),
            }],
            classes: vec![ClassCounts {
                class: Class::Cpu,
                delayed: 3,
                retrying: 1,
                dead_letters: 4,
            }],
        };
        let text = snapshot.render();
        for line in [
            "tandem_queue_waiting_tasks{class=\"cpu\",priority=\"high\"} 7",
            "tandem_queue_running_tasks{class=\"cpu\",priority=\"high\"} 2",
            "tandem_queue_oldest_waiting_age_seconds{class=\"cpu\",priority=\"high\"} 1.5",
            "tandem_queue_consumers{class=\"cpu\",priority=\"high\"} 1",
            "tandem_queue_delayed_tasks{class=\"cpu\"} 3",
            "tandem_queue_retrying_tasks{class=\"cpu\"} 1",
            "tandem_queue_dead_letters{class=\"cpu\"} 4",
            "# TYPE tandem_queue_waiting_tasks gauge",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }
}
