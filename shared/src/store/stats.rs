//! Queue depths for `tandem queues`, and clean-up of a prefix's keys.

use redis::{Cmd, Value};

use super::reply::{array, hash_map, int, reply_ok, server_time_ms, text};
use super::{Store, StoreError};
use crate::keys::GROUP;
use crate::task::{Class, Priority};

/// Counts for one task stream, for `tandem queues`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamStats {
    pub class: Class,
    pub priority: Priority,
    pub key: String,
    /// Entries not yet delivered to any worker.
    pub waiting: u64,
    /// Entries delivered and not yet acknowledged.
    pub pending: u64,
    pub consumers: u64,
    /// Age of the oldest waiting entry, by the Redis clock.
    pub oldest_waiting_ms: Option<u64>,
}

impl Store {
    /// Deletes every key under this store's prefix (demo and benchmark runs
    /// clean up after themselves with it). Returns how many were deleted.
    /// In Cluster, every master is scanned.
    pub async fn purge_prefix(&self) -> Result<u64, StoreError> {
        let pattern = format!("{}:*", self.keys.prefix());
        let masters = self.link.masters().await?;
        let mut deleted = 0;
        if masters.is_empty() {
            deleted += self.purge_on(None, &pattern).await?;
        }
        for (host, port) in &masters {
            deleted += self.purge_on(Some((host, *port)), &pattern).await?;
        }
        Ok(deleted)
    }

    /// Scans one server (a cluster node, or the server) and deletes the
    /// matching keys, one `UNLINK` per key in Cluster (keys of many slots).
    async fn purge_on(&self, node: Option<(&str, u16)>, pattern: &str) -> Result<u64, StoreError> {
        let mut cursor: u64 = 0;
        let mut deleted = 0;
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(1_000);
            let reply = match node {
                Some((host, port)) => self.link.on_node(host, port, scan).await?,
                None => self.single(scan).await?,
            };
            let mut parts = array(reply, "SCAN")?.into_iter();
            let next: u64 = text(parts.next().unwrap_or(Value::Nil), "SCAN")?
                .parse()
                .map_err(|_| StoreError::Protocol {
                    what: "SCAN",
                    detail: "bad cursor".into(),
                })?;
            let keys: Vec<String> = array(parts.next().unwrap_or(Value::Nil), "SCAN")?
                .into_iter()
                .map(|k| text(k, "SCAN"))
                .collect::<Result<_, _>>()?;
            let unlinks: Vec<Cmd> = keys
                .iter()
                .map(|key| {
                    let mut cmd = redis::cmd("UNLINK");
                    cmd.arg(key);
                    cmd
                })
                .collect();
            for reply in self.pipeline(&unlinks).await? {
                deleted += u64::try_from(int(reply_ok(reply)?, "UNLINK")?).unwrap_or(0);
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }

    /// In Cluster, where each class lives: its hash slot and the master
    /// serving it (`host:port`; `None` while no master lists the slot).
    /// `None` on one server or under Sentinel.
    pub async fn class_homes(
        &self,
        classes: &[Class],
    ) -> Result<Option<Vec<(Class, u16, Option<String>)>>, StoreError> {
        let keys: Vec<String> = classes
            .iter()
            .map(|&class| self.keys.class_base(class))
            .collect();
        let Some(masters) = self.link.slot_masters(&keys).await? else {
            return Ok(None);
        };
        Ok(Some(
            classes
                .iter()
                .zip(&keys)
                .zip(masters)
                .map(|((&class, key), master)| (class, super::link::slot_of(key), master))
                .collect(),
        ))
    }

    /// Redis's `used_memory`, in bytes (in Cluster, the masters' sum), or
    /// `None` when the server will not say (an ACL user without `INFO`).
    pub async fn used_memory(&self) -> Option<u64> {
        let info_cmd = || {
            let mut cmd = redis::cmd("INFO");
            cmd.arg("memory");
            cmd
        };
        let parse = |reply: Value| -> Option<u64> {
            let info = text(reply, "INFO").ok()?;
            info.lines()
                .find_map(|line| line.strip_prefix("used_memory:"))
                .and_then(|v| v.trim().parse().ok())
        };
        let masters = self.link.masters().await.ok()?;
        if masters.is_empty() {
            return parse(self.single(info_cmd()).await.ok()?);
        }
        let mut total = 0;
        for (host, port) in &masters {
            total += parse(self.link.on_node(host, *port, info_cmd()).await.ok()?)?;
        }
        Some(total)
    }

    /// Depth, pending count, consumers and oldest waiting age per stream.
    pub async fn queue_stats(&self, classes: &[Class]) -> Result<Vec<StreamStats>, StoreError> {
        let streams = self.keys.streams_in_claim_order(classes);
        let mut cmds = vec![redis::cmd("TIME")];
        for (_, _, key) in &streams {
            let mut xlen = redis::cmd("XLEN");
            xlen.arg(key);
            let mut groups = redis::cmd("XINFO");
            groups.arg("GROUPS").arg(key);
            cmds.push(xlen);
            cmds.push(groups);
        }
        let mut replies = self.pipeline(&cmds).await?.into_iter();
        let now_ms = server_time_ms(reply_ok(replies.next().unwrap_or(Value::Nil))?)?;

        let mut stats = Vec::new();
        let mut next_waiting = Vec::new();
        for (class, priority, key) in streams {
            let length = int(reply_ok(replies.next().unwrap_or(Value::Nil))?, "XLEN")?;
            let (pending, consumers, last_delivered) = match replies.next().unwrap_or(Value::Nil) {
                // A stream no worker has created yet has no groups.
                Value::ServerError(_) => (0, 0, None),
                reply => group_info(reply_ok(reply)?)?,
            };
            let length = u64::try_from(length).unwrap_or(0);
            let waiting = length.saturating_sub(pending);
            if waiting > 0 {
                let mut range = redis::cmd("XRANGE");
                let start = last_delivered.map_or_else(|| "-".to_owned(), |id| format!("({id}"));
                range.arg(&key).arg(start).arg("+").arg("COUNT").arg(1);
                next_waiting.push((stats.len(), range));
            }
            stats.push(StreamStats {
                class,
                priority,
                key,
                waiting,
                pending,
                consumers,
                oldest_waiting_ms: None,
            });
        }
        let cmds: Vec<Cmd> = next_waiting.iter().map(|(_, c)| c.clone()).collect();
        let replies = self.pipeline(&cmds).await?;
        for ((index, _), reply) in next_waiting.iter().zip(replies) {
            let entries = array(reply_ok(reply)?, "XRANGE")?;
            if let Some(entry) = entries.into_iter().next() {
                let id = array(entry, "XRANGE")?
                    .into_iter()
                    .next()
                    .unwrap_or(Value::Nil);
                let id = text(id, "XRANGE")?;
                let added_ms: u64 = id
                    .split('-')
                    .next()
                    .and_then(|ms| ms.parse().ok())
                    .unwrap_or(now_ms);
                stats[*index].oldest_waiting_ms = Some(now_ms.saturating_sub(added_ms));
            }
        }
        Ok(stats)
    }
}

/// (pending, consumers, last delivered id) of the `workers` group.
fn group_info(reply: Value) -> Result<(u64, u64, Option<String>), StoreError> {
    for group in array(reply, "XINFO GROUPS")? {
        let info = hash_map(group, "XINFO GROUPS")?;
        let get = |name: &str| {
            info.get(name.as_bytes())
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        if get("name").as_deref() == Some(GROUP) {
            let pending = get("pending").and_then(|v| v.parse().ok()).unwrap_or(0);
            let consumers = get("consumers").and_then(|v| v.parse().ok()).unwrap_or(0);
            return Ok((pending, consumers, get("last-delivered-id")));
        }
    }
    Ok((0, 0, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    /// Regression: Redis reports a group's `lag` (and `entries-read`) as nil
    /// when entries were deleted, which once failed every `queue_stats`.
    #[test]
    fn group_info_reads_nil_fields() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("name"),
            bulk(GROUP),
            bulk("consumers"),
            Value::Int(2),
            bulk("pending"),
            Value::Int(3),
            bulk("last-delivered-id"),
            bulk("5-0"),
            bulk("entries-read"),
            Value::Nil,
            bulk("lag"),
            Value::Nil,
        ])]);
        assert_eq!(group_info(reply).unwrap(), (3, 2, Some("5-0".to_owned())));
    }
}
