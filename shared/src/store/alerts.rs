//! The alerts stream (`<prefix>:alerts`): what workers raise when a device
//! runs hot or idle, a device fails, a queue stalls, dead letters pile up
//! or entries wait in a stream no worker reads;
//! the locks that let one worker of a fleet check the fleet-wide ones; and
//! the dead-letter counts those checks compare.

use std::fmt;

use redis::Value;

use super::reply::{array, fields, int, reply_ok, text};
use super::{Store, StoreError};
use crate::task::Class;

/// Approximate length cap of the alerts stream (entries).
pub const ALERTS_MAXLEN: u64 = 10_000;

/// Which condition an alert reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AlertName {
    /// The device is hotter than `alert_temperature_c`.
    GpuHot,
    /// The device's utilization stayed under `alert_utilization_ratio`
    /// while tasks ran, for longer than `alert_underused_ms`.
    GpuUnderused,
    /// The worker's device failed; the worker exits for its fleet to
    /// restart it.
    DeviceFailed,
    /// A stream's oldest waiting task is older than `alert_oldest_waiting_ms`.
    QueueStalled,
    /// A dead-letter stream grew by `alert_dead_letter_growth` or more
    /// entries since the last check.
    DeadLettersGrowing,
    /// A stream under the prefix that no worker reads holds entries (a
    /// class or priority Tandem does not know, say).
    UnknownStream,
    /// A GPU worker runs kinds on its CPU because a kernel module or
    /// cuBLAS did not load; raised once, as its probe passes.
    GpuCpuFallback,
    /// Redis lost its data (a class's canary vanished: a restart without
    /// persistence, a flush); raised once per fleet by the worker that saw
    /// it (see `store::data_loss`).
    RedisDataLost,
}

impl AlertName {
    pub const ALL: [AlertName; 8] = [
        AlertName::GpuHot,
        AlertName::GpuUnderused,
        AlertName::DeviceFailed,
        AlertName::QueueStalled,
        AlertName::DeadLettersGrowing,
        AlertName::UnknownStream,
        AlertName::GpuCpuFallback,
        AlertName::RedisDataLost,
    ];

    /// The stable name in the stream's `alert` field and in log lines.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertName::GpuHot => "gpu_hot",
            AlertName::GpuUnderused => "gpu_underused",
            AlertName::DeviceFailed => "device_failed",
            AlertName::QueueStalled => "queue_stalled",
            AlertName::DeadLettersGrowing => "dead_letters_growing",
            AlertName::UnknownStream => "unknown_stream",
            AlertName::GpuCpuFallback => "gpu_cpu_fallback",
            AlertName::RedisDataLost => "redis_data_lost",
        }
    }
}

impl fmt::Display for AlertName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One alert, as written to and read from the stream. Names are kept as
/// text on the way back, so an alert a newer worker raised still lists.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Alert {
    /// `gpu_hot`, `queue_stalled`, ... (see [`AlertName`]).
    pub alert: String,
    /// The worker that raised it.
    pub worker: String,
    /// The device it is about, or (for queue alerts) the raising worker's.
    pub device: String,
    /// The task, dead-letter or unknown stream a queue alert is about;
    /// empty for device alerts.
    pub stream: String,
    /// What was measured, in the threshold's unit.
    pub value: f64,
    pub threshold: f64,
    /// One line for people.
    pub message: String,
    /// When it was raised (Unix ms, by the worker's clock).
    pub at_ms: u64,
}

/// An alert read back, with its entry id in the stream.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertEntry {
    pub id: String,
    pub alert: Alert,
}

/// One dead-letter stream's count of entries ever added, now and at the
/// previous check (`None` at the first check of a fleet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadGrowth {
    pub class: Class,
    pub key: String,
    pub added: u64,
    pub previous: Option<u64>,
}

impl DeadGrowth {
    /// Entries added since the previous check (0 at the first).
    pub fn grown(&self) -> u64 {
        self.previous
            .map_or(0, |previous| self.added.saturating_sub(previous))
    }
}

impl Store {
    /// Appends `alert` to the alerts stream; returns its entry id.
    pub async fn raise_alert(&self, alert: &Alert) -> Result<String, StoreError> {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(self.keys.alerts())
            .arg("MAXLEN")
            .arg("~")
            .arg(ALERTS_MAXLEN)
            .arg("*")
            .arg("alert")
            .arg(&alert.alert)
            .arg("worker")
            .arg(&alert.worker)
            .arg("device")
            .arg(&alert.device);
        if !alert.stream.is_empty() {
            cmd.arg("stream").arg(&alert.stream);
        }
        cmd.arg("value")
            .arg(alert.value.to_string())
            .arg("threshold")
            .arg(alert.threshold.to_string())
            .arg("message")
            .arg(&alert.message)
            .arg("at_ms")
            .arg(alert.at_ms);
        text(self.single(cmd).await?, "XADD")
    }

    /// The newest `count` alerts, newest first.
    pub async fn alerts(&self, count: usize) -> Result<Vec<AlertEntry>, StoreError> {
        let mut cmd = redis::cmd("XREVRANGE");
        cmd.arg(self.keys.alerts())
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(count);
        array(self.single(cmd).await?, "XREVRANGE")?
            .into_iter()
            .map(|entry| {
                let mut parts = array(entry, "XREVRANGE")?.into_iter();
                let id = text(parts.next().unwrap_or(Value::Nil), "XREVRANGE")?;
                let fields = fields(parts.next().unwrap_or(Value::Nil), "XREVRANGE")?;
                Ok(AlertEntry {
                    id,
                    alert: alert_from_fields(&fields),
                })
            })
            .collect()
    }

    /// Takes the lock of a fleet-wide alert for `ttl_ms` (`SET NX PX`):
    /// true when this worker got it and so checks the alert this interval.
    pub async fn take_alert_lock(
        &self,
        alert: AlertName,
        worker: &str,
        ttl_ms: u64,
    ) -> Result<bool, StoreError> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.keys.alert_lock(alert.as_str()))
            .arg(worker)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms.max(1));
        Ok(!matches!(self.single(cmd).await?, Value::Nil))
    }

    /// Each class's dead-letter stream: entries ever added (which trimming
    /// does not lower, unlike its length) now and at the previous call,
    /// whose counts this call replaces.
    pub async fn dead_letter_growth(
        &self,
        classes: &[Class],
    ) -> Result<Vec<DeadGrowth>, StoreError> {
        let seen_key = self.keys.alert_dead_seen();
        let mut cmds = Vec::with_capacity(classes.len() + 1);
        for &class in classes {
            let mut info = redis::cmd("XINFO");
            info.arg("STREAM").arg(self.keys.dead(class));
            cmds.push(info);
        }
        let mut seen = redis::cmd("HGETALL");
        seen.arg(&seen_key);
        cmds.push(seen);
        let mut replies = self.pipeline(&cmds).await?.into_iter();
        let mut growth = Vec::with_capacity(classes.len());
        for &class in classes {
            let added = match replies.next().unwrap_or(Value::Nil) {
                // No dead letter yet: XINFO says the key does not exist.
                Value::ServerError(_) => 0,
                reply => entries_added(reply_ok(reply)?)?,
            };
            growth.push(DeadGrowth {
                class,
                key: self.keys.dead(class).to_owned(),
                added,
                previous: None,
            });
        }
        let previous = fields(reply_ok(replies.next().unwrap_or(Value::Nil))?, "HGETALL")?;
        let mut save = redis::cmd("HSET");
        save.arg(&seen_key);
        for g in &mut growth {
            g.previous = previous
                .iter()
                .find(|(k, _)| k == g.key.as_bytes())
                .and_then(|(_, v)| String::from_utf8_lossy(v).parse().ok());
            save.arg(&g.key).arg(g.added);
        }
        self.single(save).await?;
        Ok(growth)
    }
}

/// `entries-added` from an `XINFO STREAM` reply (a flat array in RESP2, a
/// map in RESP3); its other fields hold nested entries.
fn entries_added(reply: Value) -> Result<u64, StoreError> {
    let pairs: Vec<(Value, Value)> = match reply {
        Value::Map(pairs) => pairs,
        other => {
            let mut flat = array(other, "XINFO STREAM")?.into_iter();
            let mut pairs = Vec::new();
            while let (Some(k), Some(v)) = (flat.next(), flat.next()) {
                pairs.push((k, v));
            }
            pairs
        }
    };
    for (key, value) in pairs {
        if text(key, "XINFO STREAM").is_ok_and(|k| k == "entries-added") {
            return Ok(u64::try_from(int(value, "XINFO STREAM")?).unwrap_or(0));
        }
    }
    Err(StoreError::Protocol {
        what: "XINFO STREAM",
        detail: "no entries-added (Redis 7 or later reports it)".into(),
    })
}

fn alert_from_fields(fields: &crate::wire::Fields) -> Alert {
    let get = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name.as_bytes())
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default()
    };
    Alert {
        alert: get("alert"),
        worker: get("worker"),
        device: get("device"),
        stream: get("stream"),
        value: get("value").parse().unwrap_or(0.0),
        threshold: get("threshold").parse().unwrap_or(0.0),
        message: get("message"),
        at_ms: get("at_ms").parse().unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn entries_added_is_found_among_nested_fields() {
        let reply = Value::Array(vec![
            bulk("length"),
            Value::Int(2),
            bulk("first-entry"),
            Value::Array(vec![bulk("1-0"), Value::Array(vec![])]),
            bulk("entries-added"),
            Value::Int(7),
        ]);
        assert_eq!(entries_added(reply).unwrap(), 7);
        assert!(entries_added(Value::Array(vec![bulk("length"), Value::Int(2)])).is_err());
    }

    #[test]
    fn growth_counts_from_the_previous_check() {
        let growth = |added, previous| DeadGrowth {
            class: Class::Cpu,
            key: "k".into(),
            added,
            previous,
        };
        assert_eq!(growth(5, None).grown(), 0);
        assert_eq!(growth(5, Some(2)).grown(), 3);
        assert_eq!(growth(5, Some(9)).grown(), 0);
    }

    #[test]
    fn alert_names_are_stable() {
        let names: Vec<&str> = AlertName::ALL.iter().map(|a| a.as_str()).collect();
        assert_eq!(
            names,
            [
                "gpu_hot",
                "gpu_underused",
                "device_failed",
                "queue_stalled",
                "dead_letters_growing",
                "unknown_stream",
                "gpu_cpu_fallback",
                "redis_data_lost"
            ]
        );
    }
}
