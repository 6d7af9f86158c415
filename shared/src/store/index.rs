//! The state index: per class, one sorted set per [`IndexState`]
//! (`<base>index:<state>`), task ids scored by when they entered the state
//! (ms). The scripts keep it (common.lua's `index_state`, called from
//! `emit_event`, the one call every change of state makes); this module
//! reads it for `tandem tasks --status` and the dashboard.
//!
//! `running` and `retrying` hold the tasks in that state now; each set of
//! ends keeps its newest 10,000 ids ([`INDEX_MAX`]), trimmed on one add in
//! 16, so a few dozen more between trims. An id can outlive
//! its record (records expire) or its state (a handed-back task is queued
//! again before its next start): readers check each id against its record
//! and skip those that no longer match, so the index never shows a wrong
//! state, only, at worst, fewer tasks than it holds.

use std::fmt;
use std::str::FromStr;

use redis::{Cmd, Value};
use serde::{Deserialize, Serialize};

use super::reply::{array, hash_map, int, reply_ok, text};
use super::{Store, StoreError};
use crate::task::{Class, ParseError, Status, TaskId, text_enum};
use crate::wire::TaskRecord;

/// The most ids one class's set of one state keeps (common.lua's
/// `INDEX_MAX`).
pub const INDEX_MAX: usize = 10_000;

text_enum! {
    /// The states the index lists.
    pub enum IndexState ("status") {
        /// Started by a worker and not finished.
        Running = "running",
        /// Failed an attempt; waits for its next one.
        Retrying = "retrying",
        Succeeded = "succeeded",
        /// Ended with an error (a dead-lettered task is also `dead`).
        Failed = "failed",
        Cancelled = "cancelled",
        Expired = "expired",
        /// In a dead-letter stream.
        Dead = "dead",
    }
}

impl IndexState {
    /// Whether a record with `status` is still in this state.
    fn holds(self, record: &TaskRecord) -> bool {
        let status = record.status;
        match self {
            IndexState::Running => status == Some(Status::Running),
            IndexState::Retrying => status == Some(Status::Retrying),
            IndexState::Succeeded => status == Some(Status::Succeeded),
            IndexState::Failed => status == Some(Status::Failed),
            IndexState::Cancelled => status == Some(Status::Cancelled),
            IndexState::Expired => status == Some(Status::Expired),
            IndexState::Dead => status == Some(Status::Failed) && record.dead_letter.is_some(),
        }
    }
}

/// One task the index listed, with its record as read just after.
#[derive(Debug, Clone, PartialEq)]
pub struct Indexed {
    /// When it entered the state (ms since the epoch, Redis clock).
    pub at_ms: u64,
    pub record: TaskRecord,
}

impl Store {
    /// The newest `count` tasks in `state` over `classes`, newest first,
    /// each checked against its record; `kind`, when given, keeps only
    /// tasks of that kind (it filters what the index returned, so fewer than
    /// `count` may come back).
    pub async fn tasks_in_state(
        &self,
        state: IndexState,
        classes: &[Class],
        count: usize,
        kind: Option<&str>,
    ) -> Result<Vec<Indexed>, StoreError> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let stop = isize::try_from(count).unwrap_or(isize::MAX) - 1;
        let cmds: Vec<Cmd> = classes
            .iter()
            .map(|&class| {
                let mut cmd = redis::cmd("ZRANGE");
                cmd.arg(self.keys.index(class, state.as_str()))
                    .arg(0)
                    .arg(stop)
                    .arg("REV")
                    .arg("WITHSCORES");
                cmd
            })
            .collect();
        let mut listed: Vec<(u64, Class, TaskId)> = Vec::new();
        for (&class, reply) in classes.iter().zip(self.pipeline(&cmds).await?) {
            let mut items = array(reply_ok(reply)?, "index")?.into_iter();
            while let Some(member) = items.next() {
                // RESP2 flattens member, score; RESP3 pairs them.
                let (member, score) = match member {
                    Value::Array(mut pair) if pair.len() == 2 => {
                        let score = pair.pop().unwrap_or(Value::Nil);
                        (pair.pop().unwrap_or(Value::Nil), score)
                    }
                    member => (member, items.next().unwrap_or(Value::Nil)),
                };
                let id = text(member, "index member")?;
                // Something other than a task id in the set (written by
                // hand): skipped, as an id whose record is gone is.
                let Ok(id) = id.parse::<TaskId>() else {
                    continue;
                };
                listed.push((score_ms(score)?, class, id));
            }
        }
        listed.sort_by_key(|entry| std::cmp::Reverse(entry.0));
        listed.truncate(count);
        let cmds: Vec<Cmd> = listed
            .iter()
            .map(|(_, class, id)| {
                let mut cmd = redis::cmd("HGETALL");
                cmd.arg(self.keys.task(*class, id));
                cmd
            })
            .collect();
        let records = self.pipeline(&cmds).await?;
        let mut found = Vec::with_capacity(listed.len());
        for ((at_ms, class, id), reply) in listed.into_iter().zip(records) {
            let map = hash_map(reply_ok(reply)?, "task record")?;
            if map.is_empty() {
                continue;
            }
            let mut record = TaskRecord::from_map(&map);
            record.id.get_or_insert(id);
            record.class.get_or_insert(class);
            if !state.holds(&record) {
                continue;
            }
            if kind.is_some_and(|kind| record.kind.as_deref() != Some(kind)) {
                continue;
            }
            found.push(Indexed { at_ms, record });
        }
        Ok(found)
    }

    /// How many ids each class's set of `state` holds (ZCARD: O(1)): for
    /// `running` and `retrying` the tasks in the state now; for an end,
    /// [`INDEX_MAX`] and the few dozen added since its last trim.
    pub async fn index_sizes(&self, state: IndexState) -> Result<Vec<(Class, u64)>, StoreError> {
        let cmds: Vec<Cmd> = Class::ALL
            .iter()
            .map(|&class| {
                let mut cmd = redis::cmd("ZCARD");
                cmd.arg(self.keys.index(class, state.as_str()));
                cmd
            })
            .collect();
        let mut sizes = Vec::with_capacity(Class::ALL.len());
        for (&class, reply) in Class::ALL.iter().zip(self.pipeline(&cmds).await?) {
            let n = int(reply_ok(reply)?, "index size")?;
            sizes.push((class, u64::try_from(n).unwrap_or(0)));
        }
        Ok(sizes)
    }
}

/// A score as whole ms: RESP3 sends a double, RESP2 its text.
fn score_ms(score: Value) -> Result<u64, StoreError> {
    let value = match score {
        Value::Double(d) => d,
        other => {
            let text = text(other, "index score")?;
            text.parse::<f64>().map_err(|_| StoreError::Protocol {
                what: "index score",
                detail: format!("{text:?} is not a number"),
            })?
        }
    };
    Ok(if value.is_finite() && value > 0.0 {
        value as u64
    } else {
        0
    })
}
