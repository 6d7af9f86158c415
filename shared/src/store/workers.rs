//! Worker heartbeats, the list of live workers, and which workers are gone.

use std::collections::{HashMap, HashSet};

use redis::{Cmd, Value};

use super::reply::{array, hash_map, reply_ok, text};
use super::{Store, StoreError, StreamRef};
use crate::keys::GROUP;
use crate::wire::{WorkerInfo, worker_field};

impl Store {
    /// Writes a worker's registry record with a TTL and adds it to the set;
    /// true when the set held it already (false at the first heartbeat, and
    /// after the registry was lost or the worker was dropped from it).
    pub async fn heartbeat(&self, info: &WorkerInfo, ttl_ms: u64) -> Result<bool, StoreError> {
        let key = self.keys.worker(&info.id);
        let mut hset = redis::cmd("HSET");
        hset.arg(&key);
        for (name, value) in info.to_pairs() {
            hset.arg(name).arg(value);
        }
        let mut expire = redis::cmd("PEXPIRE");
        expire.arg(&key).arg(ttl_ms);
        let mut sadd = redis::cmd("SADD");
        sadd.arg(self.keys.workers()).arg(&info.id);
        let mut added = 0;
        for reply in self.pipeline(&[hset, expire, sadd]).await? {
            if let Value::Int(n) = reply_ok(reply)? {
                added = n;
            }
        }
        Ok(added == 0)
    }

    /// Removes a worker's registry record.
    pub async fn deregister(&self, worker_id: &str) -> Result<(), StoreError> {
        let mut del = redis::cmd("DEL");
        del.arg(self.keys.worker(worker_id));
        let mut srem = redis::cmd("SREM");
        srem.arg(self.keys.workers()).arg(worker_id);
        for reply in self.pipeline(&[del, srem]).await? {
            reply_ok(reply)?;
        }
        Ok(())
    }

    /// The live workers' records. Ids whose record expired are dropped from
    /// the set on the way.
    pub async fn workers(&self) -> Result<Vec<WorkerInfo>, StoreError> {
        let mut members = redis::cmd("SMEMBERS");
        members.arg(self.keys.workers());
        let ids: Vec<String> = array(self.single(members).await?, "SMEMBERS")?
            .into_iter()
            .map(|v| text(v, "SMEMBERS"))
            .collect::<Result<_, _>>()?;
        let cmds: Vec<Cmd> = ids
            .iter()
            .map(|id| {
                let mut cmd = redis::cmd("HGETALL");
                cmd.arg(self.keys.worker(id));
                cmd
            })
            .collect();
        let mut live = Vec::new();
        let mut gone = Vec::new();
        for (id, reply) in ids.iter().zip(self.pipeline(&cmds).await?) {
            let map = hash_map(reply_ok(reply)?, "HGETALL")?;
            if map.is_empty() {
                gone.push(id.clone());
            } else {
                let map: HashMap<String, String> = map
                    .into_iter()
                    .map(|(k, v)| {
                        (
                            String::from_utf8_lossy(&k).into_owned(),
                            String::from_utf8_lossy(&v).into_owned(),
                        )
                    })
                    .collect();
                live.push(WorkerInfo::from_map(&map));
            }
        }
        if !gone.is_empty() {
            let mut srem = redis::cmd("SREM");
            srem.arg(self.keys.workers()).arg(&gone);
            self.single(srem).await?;
        }
        live.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(live)
    }

    /// Consumers of `streams` other than `me`, each with what its registry
    /// record says about its process (`None`: no record, its heartbeat
    /// lapsed: the worker is gone). The records are read after the
    /// consumers, so a worker that registered and claimed since is seen with
    /// its record. The caller decides which of those with a record are gone
    /// too (a peer on the same host can tell from the process table).
    pub async fn consumers(
        &self,
        streams: &[StreamRef],
        me: &str,
    ) -> Result<Vec<Consumer>, StoreError> {
        let cmds: Vec<Cmd> = streams
            .iter()
            .map(|s| {
                let mut cmd = redis::cmd("XINFO");
                cmd.arg("CONSUMERS").arg(&s.key).arg(GROUP);
                cmd
            })
            .collect();
        let mut names = HashSet::new();
        for reply in self.pipeline(&cmds).await? {
            // A stream or group that is missing has no consumers.
            let Ok(reply) = reply_ok(reply) else { continue };
            for consumer in array(reply, "XINFO CONSUMERS")? {
                let info = hash_map(consumer, "XINFO CONSUMERS")?;
                if let Some(name) = info.get(b"name".as_slice()) {
                    let name = String::from_utf8_lossy(name).into_owned();
                    if name != me {
                        names.insert(name);
                    }
                }
            }
        }
        let mut names: Vec<String> = names.into_iter().collect();
        names.sort();
        let cmds: Vec<Cmd> = names
            .iter()
            .map(|name| {
                let mut cmd = redis::cmd("HMGET");
                cmd.arg(self.keys.worker(name))
                    .arg(worker_field::ID)
                    .arg(worker_field::PID)
                    .arg(worker_field::PROCESS);
                cmd
            })
            .collect();
        let mut consumers = Vec::with_capacity(names.len());
        for (name, reply) in names.into_iter().zip(self.pipeline(&cmds).await?) {
            let values = array(reply_ok(reply)?, "HMGET")?;
            let mut values = values.into_iter().map(|v| match v {
                Value::Nil => None,
                other => text(other, "HMGET").ok(),
            });
            let id = values.next().flatten();
            let pid = values.next().flatten().and_then(|p| p.parse().ok());
            let process = values.next().flatten().unwrap_or_default();
            consumers.push(Consumer {
                name,
                record: id.map(|_| ProcessRef {
                    pid: pid.unwrap_or(0),
                    process,
                }),
            });
        }
        Ok(consumers)
    }
}

impl Store {
    /// How many task entries `worker` holds (pending in its name) across
    /// every class's streams: what it was running, as Redis sees it.
    pub async fn held_by(&self, worker: &str) -> Result<usize, StoreError> {
        let cmds: Vec<Cmd> = crate::task::Class::ALL
            .iter()
            .flat_map(|&class| {
                crate::task::Priority::ALL
                    .iter()
                    .map(move |&priority| (class, priority))
            })
            .map(|(class, priority)| {
                let mut cmd = redis::cmd("XPENDING");
                cmd.arg(self.keys.stream(class, priority)).arg(GROUP);
                cmd
            })
            .collect();
        let mut held = 0;
        for reply in self.pipeline(&cmds).await? {
            // A stream or group that is missing holds nothing.
            let Ok(Value::Array(summary)) = reply_ok(reply) else {
                continue;
            };
            let Some(Value::Array(consumers)) = summary.into_iter().nth(3) else {
                continue;
            };
            for consumer in consumers {
                let mut pair = array(consumer, "XPENDING")?.into_iter();
                let (Some(name), Some(count)) = (pair.next(), pair.next()) else {
                    continue;
                };
                if text(name, "XPENDING")? == worker {
                    held += text(count, "XPENDING")?.parse::<usize>().unwrap_or(0);
                }
            }
        }
        Ok(held)
    }
}

/// A consumer of a worker's streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumer {
    /// Its name: the worker id.
    pub name: String,
    /// What its registry record says of its process; `None` when it has no
    /// record (its heartbeat lapsed).
    pub record: Option<ProcessRef>,
}

/// A registry record's process: its pid and instance (see
/// [`WorkerInfo::process`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessRef {
    pub pid: u32,
    pub process: String,
}
