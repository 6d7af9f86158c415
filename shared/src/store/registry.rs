//! Worker heartbeats, the list of live workers, and which workers are gone.

use std::collections::{HashMap, HashSet};

use redis::Cmd;

use super::reply::{array, hash_map, int, reply_ok, text};
use super::{Store, StoreError, StreamRef};
use crate::keys::GROUP;
use crate::wire::WorkerInfo;

impl Store {
    /// Writes a worker's registry record with a TTL and adds it to the set.
    pub async fn heartbeat(&self, info: &WorkerInfo, ttl_ms: u64) -> Result<(), StoreError> {
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
        for reply in self.pipeline(&[hset, expire, sadd]).await? {
            reply_ok(reply)?;
        }
        Ok(())
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

    /// Consumers of `streams` other than `me` whose worker is gone (its
    /// registry record expired): their pending entries are to be taken over,
    /// and the consumers removed once nothing is pending.
    pub async fn dead_consumers(
        &self,
        streams: &[StreamRef],
        me: &str,
    ) -> Result<Vec<String>, StoreError> {
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
        let names: Vec<String> = names.into_iter().collect();
        let cmds: Vec<Cmd> = names
            .iter()
            .map(|name| {
                let mut cmd = redis::cmd("EXISTS");
                cmd.arg(self.keys.worker(name));
                cmd
            })
            .collect();
        let mut dead = Vec::new();
        for (name, reply) in names.into_iter().zip(self.pipeline(&cmds).await?) {
            if int(reply_ok(reply)?, "EXISTS")? == 0 {
                dead.push(name);
            }
        }
        dead.sort();
        Ok(dead)
    }
}
