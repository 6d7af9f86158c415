//! Telling that Redis lost its data: a restart without persistence, a
//! failover to a replica that had nothing, a `FLUSHALL`. Such a loss takes
//! every queued task, every record and the consumer groups with it, and
//! nothing in Redis can say so afterwards: the evidence is gone too.
//!
//! So workers keep a canary per class (`<prefix>:{<class>}:canary`, in the
//! class's slot, so on its master in Cluster), a key nothing deletes. Each
//! heartbeat a worker sets it if absent and reads its streams' lengths and
//! whether its own registry record is there ([`Store::check_data`]). A
//! canary it finds missing after it had seen it means the class's data is
//! gone; the worker that finds it records what it knew before
//! ([`Store::record_data_loss`], `<prefix>:data-lost`) and raises
//! `redis_data_lost`. The CLI reads the record back ([`Store::data_loss`])
//! for `tandem queues`, `tandem workers` and the "not found" of `tandem
//! wait`.

use std::collections::HashMap;

use redis::{Cmd, Value};

use super::reply::{fields, int};
use super::{Store, StoreError, StreamRef};
use crate::clock::now_ms;
use crate::task::{Class, TaskId};

/// What one check saw of one class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassData {
    pub class: Class,
    /// The canary was not there (and is now): the class's data is gone,
    /// unless this is the first check on a fresh Redis.
    pub canary_missing: bool,
    /// Each of the class's streams this worker reads: its key and length,
    /// `None` when the key does not exist (nor its consumer groups).
    pub streams: Vec<(String, Option<u64>)>,
}

/// What one [`Store::check_data`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataCheck {
    pub classes: Vec<ClassData>,
    /// The worker's own registry record exists.
    pub worker_record: bool,
}

impl DataCheck {
    /// Each stream's length, absent streams as 0.
    pub fn lengths(&self) -> HashMap<String, u64> {
        self.classes
            .iter()
            .flat_map(|c| &c.streams)
            .map(|(key, len)| (key.clone(), len.unwrap_or(0)))
            .collect()
    }
}

/// A data loss, as the worker that saw it recorded it (`<prefix>:data-lost`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DataLoss {
    /// When it was seen (Unix ms, the worker's clock): the data was lost
    /// since that worker's previous heartbeat.
    pub at_ms: u64,
    /// The worker that saw it.
    pub worker: String,
    /// The classes whose canary was gone.
    pub classes: Vec<String>,
    /// Streams whose key (with its consumer groups) was gone.
    pub streams_gone: Vec<String>,
    /// The worker's own registry record was gone too.
    pub registry_gone: bool,
    /// Each stream's length at the check before: the entries (queued and
    /// running tasks) lost with it.
    pub last_lengths: Vec<(String, u64)>,
}

impl DataLoss {
    /// Tasks that were in the streams at the check before.
    pub fn tasks_lost(&self) -> u64 {
        self.last_lengths.iter().map(|(_, n)| n).sum()
    }

    /// One line for people: what was seen.
    pub fn summary(&self) -> String {
        let mut seen = vec![format!("canary gone for {}", join_or_none(&self.classes))];
        if !self.streams_gone.is_empty() {
            seen.push(format!(
                "consumer groups gone with {} stream(s)",
                self.streams_gone.len()
            ));
        }
        if self.registry_gone {
            seen.push("worker registry gone".to_owned());
        }
        let lengths: Vec<String> = self
            .last_lengths
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(key, n)| format!("{key}={n}"))
            .collect();
        format!(
            "Redis lost its data (seen by {}: {}); {} queued or running task(s) were in the streams \
             at its previous check{}",
            self.worker,
            seen.join(", "),
            self.tasks_lost(),
            if lengths.is_empty() {
                String::new()
            } else {
                format!(" ({})", lengths.join(", "))
            }
        )
    }

    /// True when task `id` was submitted before the loss was seen, so its
    /// record may have gone with the data (a v7 id carries its creation
    /// time).
    pub fn predates(&self, id: &TaskId) -> bool {
        id.as_uuid()
            .get_timestamp()
            .map(|ts| {
                let (secs, nanos) = ts.to_unix();
                secs.saturating_mul(1000) + u64::from(nanos / 1_000_000)
            })
            .is_some_and(|created_ms| created_ms <= self.at_ms)
    }
}

fn join_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(", ")
    }
}

impl Store {
    /// Sets each class's canary if absent, and reads the lengths of
    /// `streams` and whether `worker_id`'s registry record exists, in one
    /// call.
    pub async fn check_data(
        &self,
        streams: &[StreamRef],
        worker_id: &str,
    ) -> Result<DataCheck, StoreError> {
        let mut classes: Vec<Class> = streams.iter().map(|s| s.class).collect();
        classes.dedup();
        let now = now_ms();
        let mut cmds: Vec<Cmd> = Vec::new();
        for &class in &classes {
            let mut set = redis::cmd("SET");
            set.arg(self.keys.canary(class)).arg(now).arg("NX");
            cmds.push(set);
            for stream in streams.iter().filter(|s| s.class == class) {
                let mut exists = redis::cmd("EXISTS");
                exists.arg(&stream.key);
                let mut len = redis::cmd("XLEN");
                len.arg(&stream.key);
                cmds.push(exists);
                cmds.push(len);
            }
        }
        let mut record = redis::cmd("EXISTS");
        record.arg(self.keys.worker(worker_id));
        cmds.push(record);
        let mut replies = self.pipeline(&cmds).await?.into_iter();
        let mut next = || super::reply::reply_ok(replies.next().unwrap_or(Value::Nil));
        let mut seen = Vec::with_capacity(classes.len());
        for &class in &classes {
            // `SET NX` answers OK when it set the key: it was missing.
            let canary_missing = !matches!(next()?, Value::Nil);
            let mut lengths = Vec::new();
            for stream in streams.iter().filter(|s| s.class == class) {
                let exists = int(next()?, "EXISTS")? > 0;
                let len = u64::try_from(int(next()?, "XLEN")?).unwrap_or(0);
                lengths.push((stream.key.clone(), exists.then_some(len)));
            }
            seen.push(ClassData {
                class,
                canary_missing,
                streams: lengths,
            });
        }
        let worker_record = int(next()?, "EXISTS")? > 0;
        Ok(DataCheck {
            classes: seen,
            worker_record,
        })
    }

    /// Writes `loss` as `<prefix>:data-lost`, replacing an earlier one, for
    /// `result_ttl_s` (after which the records it took would have expired
    /// anyway).
    pub async fn record_data_loss(&self, loss: &DataLoss) -> Result<(), StoreError> {
        let key = self.keys.data_lost();
        let mut del = redis::cmd("DEL");
        del.arg(&key);
        let lengths: Vec<String> = loss
            .last_lengths
            .iter()
            .map(|(k, n)| format!("{k}={n}"))
            .collect();
        let mut hset = redis::cmd("HSET");
        hset.arg(&key)
            .arg("at_ms")
            .arg(loss.at_ms)
            .arg("worker")
            .arg(&loss.worker)
            .arg("classes")
            .arg(loss.classes.join(","))
            .arg("streams_gone")
            .arg(loss.streams_gone.join(","))
            .arg("registry_gone")
            .arg(u8::from(loss.registry_gone))
            .arg("last_lengths")
            .arg(lengths.join(","))
            .arg("tasks_lost")
            .arg(loss.tasks_lost())
            .arg("message")
            .arg(loss.summary());
        let mut expire = redis::cmd("EXPIRE");
        expire.arg(&key).arg(self.retention.result_ttl_s.max(1));
        for reply in self.pipeline(&[del, hset, expire]).await? {
            super::reply::reply_ok(reply)?;
        }
        Ok(())
    }

    /// The last data loss a worker recorded, if it has not expired.
    pub async fn data_loss(&self) -> Result<Option<DataLoss>, StoreError> {
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(self.keys.data_lost());
        let fields: HashMap<String, String> = fields(self.single(cmd).await?, "HGETALL")?
            .into_iter()
            .map(|(k, v)| {
                (
                    String::from_utf8_lossy(&k).into_owned(),
                    String::from_utf8_lossy(&v).into_owned(),
                )
            })
            .collect();
        if fields.is_empty() {
            return Ok(None);
        }
        let list = |name: &str| -> Vec<String> {
            fields
                .get(name)
                .map(|v| {
                    v.split(',')
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        Ok(Some(DataLoss {
            at_ms: fields
                .get("at_ms")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            worker: fields.get("worker").cloned().unwrap_or_default(),
            classes: list("classes"),
            streams_gone: list("streams_gone"),
            registry_gone: fields.get("registry_gone").is_some_and(|v| v == "1"),
            last_lengths: list("last_lengths")
                .into_iter()
                .filter_map(|pair| {
                    let (key, n) = pair.rsplit_once('=')?;
                    Some((key.to_owned(), n.parse().ok()?))
                })
                .collect(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loss_says_what_was_seen_and_what_it_took() {
        let loss = DataLoss {
            at_ms: 1_000,
            worker: "w1".into(),
            classes: vec!["cpu".into()],
            streams_gone: vec!["t:{cpu}:stream:normal".into()],
            registry_gone: true,
            last_lengths: vec![
                ("t:{cpu}:stream:normal".into(), 660),
                ("t:{cpu}:stream:low".into(), 0),
            ],
        };
        assert_eq!(loss.tasks_lost(), 660);
        assert_eq!(
            loss.summary(),
            "Redis lost its data (seen by w1: canary gone for cpu, consumer groups gone with 1 \
             stream(s), worker registry gone); 660 queued or running task(s) were in the streams \
             at its previous check (t:{cpu}:stream:normal=660)"
        );
    }

    #[test]
    fn tasks_created_before_the_loss_predate_it() {
        let before = TaskId::new();
        let loss = DataLoss {
            at_ms: now_ms() + 1,
            ..DataLoss::default()
        };
        assert!(loss.predates(&before));
        let after = DataLoss {
            at_ms: 1,
            ..DataLoss::default()
        };
        assert!(!after.predates(&before));
    }
}
