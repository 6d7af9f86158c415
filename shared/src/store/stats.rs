//! Queue depths for `tandem queues`, the streams no worker reads, and
//! clean-up of a prefix's keys.

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

/// A stream under the prefix that no worker reads: not a task stream of a
/// class and priority Tandem knows (`tandem:{cpu}:stream:urgent`,
/// `tandem:{bogus}:stream:normal`), nor a reply, dead-letter or alerts
/// stream. Entries there get no record, no dead letter and no outcome: they
/// wait until someone moves or deletes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownStream {
    pub key: String,
    /// Entries in it.
    pub length: u64,
    /// Age of its oldest entry, by the Redis clock; `None` when empty.
    pub oldest_ms: Option<u64>,
    /// Why no worker reads it, in words.
    pub why: String,
}

/// The server a scan runs on: the one server (or Sentinel's master), or a
/// cluster master.
type Node<'a> = Option<(&'a str, u16)>;

impl Store {
    /// Deletes every key under this store's prefix (demo and benchmark runs
    /// clean up after themselves with it). Returns how many were deleted.
    /// In Cluster, every master is scanned.
    pub async fn purge_prefix(&self) -> Result<u64, StoreError> {
        let pattern = self.keys.scan_pattern();
        let mut deleted = 0;
        for (host, port) in self.scan_nodes().await? {
            let node = host.as_deref().map(|host| (host, port));
            deleted += self.purge_on(node, &pattern).await?;
        }
        Ok(deleted)
    }

    /// Where a scan of every key must run: each master in Cluster, else
    /// the one server (`None`).
    async fn scan_nodes(&self) -> Result<Vec<(Option<String>, u16)>, StoreError> {
        let masters = self.link.masters().await?;
        if masters.is_empty() {
            return Ok(vec![(None, 0)]);
        }
        Ok(masters
            .into_iter()
            .map(|(host, port)| (Some(host), port))
            .collect())
    }

    /// One `SCAN` step on `node`: the next cursor (0: done) and the keys
    /// matching `pattern`, of Redis type `kind` when given.
    async fn scan_step(
        &self,
        node: Node<'_>,
        cursor: u64,
        pattern: &str,
        kind: Option<&str>,
    ) -> Result<(u64, Vec<String>), StoreError> {
        let mut scan = redis::cmd("SCAN");
        scan.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1_000);
        if let Some(kind) = kind {
            scan.arg("TYPE").arg(kind);
        }
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
        let keys = array(parts.next().unwrap_or(Value::Nil), "SCAN")?
            .into_iter()
            .map(|k| text(k, "SCAN"))
            .collect::<Result<_, _>>()?;
        Ok((next, keys))
    }

    /// Scans one server (a cluster node, or the server) and deletes the
    /// matching keys, one `UNLINK` per key in Cluster (keys of many slots).
    async fn purge_on(&self, node: Node<'_>, pattern: &str) -> Result<u64, StoreError> {
        let mut cursor: u64 = 0;
        let mut deleted = 0;
        loop {
            let (next, keys) = self.scan_step(node, cursor, pattern, None).await?;
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

    /// Keys in the database (`DBSIZE`, O(1); in Cluster, the masters'
    /// sum): what a pass over every key, such as [`Self::unknown_streams`],
    /// would visit.
    pub async fn key_count(&self) -> Result<u64, StoreError> {
        let mut total = 0;
        for (host, port) in self.scan_nodes().await? {
            let reply = match host.as_deref() {
                Some(host) => self.link.on_node(host, port, redis::cmd("DBSIZE")).await?,
                None => self.single(redis::cmd("DBSIZE")).await?,
            };
            total += u64::try_from(int(reply_ok(reply)?, "DBSIZE")?).unwrap_or(0);
        }
        Ok(total)
    }

    /// Every stream under the prefix that no worker reads, by key, with its
    /// length, its oldest entry's age and why (see [`UnknownStream`]).
    /// `SCAN ... TYPE stream` over the whole keyspace (every master in
    /// Cluster), so it costs a pass over all keys: for the CLI, not for a
    /// hot path; a worker's interval check takes the pass in slices
    /// ([`Self::unknown_streams_slice`]).
    pub async fn unknown_streams(&self) -> Result<Vec<UnknownStream>, StoreError> {
        let mut found: Vec<(String, String)> = Vec::new();
        let mut at = Some(ScanPosition::default());
        while let Some(from) = at {
            let (keys, next) = self.unknown_stream_keys(from, usize::MAX).await?;
            found.extend(keys);
            at = next;
        }
        self.describe_unknown_streams(found).await
    }

    /// One slice of the pass [`Self::unknown_streams`] makes: at most
    /// `steps` `SCAN` steps (of `COUNT 1000`) from `from`, so its cost is
    /// bounded whatever the keyspace. Returns the streams found in the
    /// slice and where the next one starts (`None`: the pass is complete;
    /// start the next pass at `ScanPosition::default()`).
    pub async fn unknown_streams_slice(
        &self,
        from: ScanPosition,
        steps: usize,
    ) -> Result<(Vec<UnknownStream>, Option<ScanPosition>), StoreError> {
        let (found, next) = self.unknown_stream_keys(from, steps.max(1)).await?;
        Ok((self.describe_unknown_streams(found).await?, next))
    }

    /// The unknown streams' keys (and why) in at most `steps` `SCAN` steps
    /// from `from`, and where the pass stands after them.
    async fn unknown_stream_keys(
        &self,
        from: ScanPosition,
        steps: usize,
    ) -> Result<(Vec<(String, String)>, Option<ScanPosition>), StoreError> {
        let pattern = self.keys.scan_pattern();
        let nodes = self.scan_nodes().await?;
        let mut found: Vec<(String, String)> = Vec::new();
        let mut at = from;
        let mut taken = 0;
        // The masters may have changed since the last slice: past the last
        // one, the pass is over.
        while let Some((host, port)) = nodes.get(at.node) {
            if taken == steps {
                return Ok((found, Some(at)));
            }
            let node = host.as_deref().map(|host| (host, *port));
            let (next, keys) = self
                .scan_step(node, at.cursor, &pattern, Some("stream"))
                .await?;
            taken += 1;
            found.extend(
                keys.into_iter()
                    .filter_map(|key| self.keys.unknown_stream(&key).map(|why| (key, why))),
            );
            at = if next == 0 {
                ScanPosition {
                    node: at.node + 1,
                    cursor: 0,
                }
            } else {
                ScanPosition {
                    node: at.node,
                    cursor: next,
                }
            };
        }
        Ok((found, None))
    }

    /// Each unknown stream's length and oldest entry's age.
    async fn describe_unknown_streams(
        &self,
        mut found: Vec<(String, String)>,
    ) -> Result<Vec<UnknownStream>, StoreError> {
        // SCAN may return a key more than once.
        found.sort();
        found.dedup();
        if found.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmds = vec![redis::cmd("TIME")];
        for (key, _) in &found {
            let mut xlen = redis::cmd("XLEN");
            xlen.arg(key);
            let mut first = redis::cmd("XRANGE");
            first.arg(key).arg("-").arg("+").arg("COUNT").arg(1);
            cmds.push(xlen);
            cmds.push(first);
        }
        let mut replies = self.pipeline(&cmds).await?.into_iter();
        let now_ms = server_time_ms(reply_ok(replies.next().unwrap_or(Value::Nil))?)?;
        let mut streams = Vec::with_capacity(found.len());
        for (key, why) in found {
            let length = match replies.next().unwrap_or(Value::Nil) {
                // Deleted, or made another type, since the scan.
                Value::ServerError(_) => continue,
                reply => u64::try_from(int(reply_ok(reply)?, "XLEN")?).unwrap_or(0),
            };
            let oldest_ms = match replies.next().unwrap_or(Value::Nil) {
                Value::ServerError(_) => None,
                reply => first_entry_ms(reply_ok(reply)?)?.map(|ms| now_ms.saturating_sub(ms)),
            };
            streams.push(UnknownStream {
                key,
                length,
                oldest_ms,
                why,
            });
        }
        Ok(streams)
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

/// When the first entry of an `XRANGE ... COUNT 1` reply was added (the
/// milliseconds of its id); `None` for an empty stream.
fn first_entry_ms(reply: Value) -> Result<Option<u64>, StoreError> {
    let Some(entry) = array(reply, "XRANGE")?.into_iter().next() else {
        return Ok(None);
    };
    let id = text(
        array(entry, "XRANGE")?
            .into_iter()
            .next()
            .unwrap_or(Value::Nil),
        "XRANGE",
    )?;
    Ok(id.split('-').next().and_then(|ms| ms.parse().ok()))
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

/// Where a pass over every key in slices stands (see
/// [`Store::unknown_streams_slice`]): the server (in Cluster, the index of
/// a master) and its `SCAN` cursor. The default is a pass's start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanPosition {
    node: usize,
    cursor: u64,
}
