//! The recent workflows: per class, the sorted set `<base>workflows` holds
//! the ids of the workflows whose hash is under that class's tag, scored by
//! submit time (ms), the newest [`RECENT_WORKFLOWS_MAX`] kept.
//! `workflow_submit.lua` writes it; this module reads it for the
//! dashboard's workflows view, one summary per workflow from its hash
//! (never its graph, which can hold 20,000 nodes).
//!
//! An id can outlive its workflow's hash (the hash expires `result_ttl_s`
//! after the workflow ends): such ids are skipped, so the list shows fewer
//! workflows, never a wrong one.

use redis::{Cmd, Value};

use super::reply::{array, reply_ok, text};
use super::{Store, StoreError};
use crate::task::{Class, TaskId};

/// The most ids one class's set keeps (`workflow_submit.lua`'s
/// `ZREMRANGEBYRANK`).
pub const RECENT_WORKFLOWS_MAX: usize = 1_000;

/// One workflow as its hash has it now, without its graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkflowSummary {
    pub id: TaskId,
    /// The class whose tag holds its hash (its first node's).
    pub class: Class,
    /// `running`, `succeeded`, `failed` or `cancelled`.
    pub status: String,
    pub on_failure: String,
    pub submitted_at_ms: Option<u64>,
    pub finished_at_ms: Option<u64>,
    pub nodes: u64,
    /// Nodes not yet final.
    pub remaining: u64,
    /// Nodes final other than `succeeded`.
    pub failed: u64,
    /// The nodes no other waits for (their results are the workflow's).
    pub sinks: Vec<String>,
}

impl WorkflowSummary {
    /// Nodes that finished, whatever their end.
    pub fn finished_nodes(&self) -> u64 {
        self.nodes.saturating_sub(self.remaining)
    }

    /// Nodes that succeeded.
    pub fn succeeded_nodes(&self) -> u64 {
        self.finished_nodes().saturating_sub(self.failed)
    }
}

/// The fields a summary reads, in this order.
const FIELDS: [&str; 9] = [
    "status",
    "on_failure",
    "submitted_at_ms",
    "finished_at_ms",
    "nodes",
    "remaining",
    "failed",
    "sinks",
    "id",
];

impl Store {
    /// The newest `count` workflows over every class, newest first (one
    /// pipelined read of the sets, one of the hashes).
    pub async fn recent_workflows(&self, count: usize) -> Result<Vec<WorkflowSummary>, StoreError> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let stop = isize::try_from(count).unwrap_or(isize::MAX) - 1;
        let cmds: Vec<Cmd> = Class::ALL
            .iter()
            .map(|&class| {
                let mut cmd = redis::cmd("ZRANGE");
                cmd.arg(self.keys.workflows(class))
                    .arg(0)
                    .arg(stop)
                    .arg("REV")
                    .arg("WITHSCORES");
                cmd
            })
            .collect();
        let mut listed: Vec<(f64, Class, TaskId)> = Vec::new();
        for (&class, reply) in Class::ALL.iter().zip(self.pipeline(&cmds).await?) {
            let mut items = array(reply_ok(reply)?, "recent workflows")?.into_iter();
            while let Some(member) = items.next() {
                // RESP2 flattens member, score; RESP3 pairs them.
                let (member, score) = match member {
                    Value::Array(mut pair) if pair.len() == 2 => {
                        let score = pair.pop().unwrap_or(Value::Nil);
                        (pair.pop().unwrap_or(Value::Nil), score)
                    }
                    member => (member, items.next().unwrap_or(Value::Nil)),
                };
                // Something other than a workflow id (written by hand) is
                // skipped, as an expired workflow is.
                let Ok(id) = text(member, "recent workflow")?.parse::<TaskId>() else {
                    continue;
                };
                listed.push((score_of(score), class, id));
            }
        }
        listed.sort_by(|a, b| b.0.total_cmp(&a.0));
        listed.truncate(count);
        if listed.is_empty() {
            return Ok(Vec::new());
        }
        let cmds: Vec<Cmd> = listed
            .iter()
            .map(|(_, class, id)| {
                let mut cmd = redis::cmd("HMGET");
                cmd.arg(self.keys.workflow(*class, id)).arg(&FIELDS[..]);
                cmd
            })
            .collect();
        let replies = self.pipeline(&cmds).await?;
        let mut found = Vec::with_capacity(listed.len());
        for ((_, class, id), reply) in listed.into_iter().zip(replies) {
            let values: Vec<Option<String>> = array(reply_ok(reply)?, "workflow summary")?
                .into_iter()
                .map(|v| match v {
                    Value::Nil => None,
                    v => text(v, "workflow field").ok(),
                })
                .collect();
            let get = |i: usize| values.get(i).cloned().flatten();
            let number = |i: usize| get(i).and_then(|v| v.parse::<u64>().ok());
            // No `id` field: the hash expired (or was never whole).
            if get(8).is_none() {
                continue;
            }
            found.push(WorkflowSummary {
                id,
                class,
                status: get(0).unwrap_or_else(|| "unknown".to_owned()),
                on_failure: get(1).unwrap_or_default(),
                submitted_at_ms: number(2),
                finished_at_ms: number(3),
                nodes: number(4).unwrap_or(0),
                remaining: number(5).unwrap_or(0),
                failed: number(6).unwrap_or(0),
                sinks: get(7)
                    .unwrap_or_default()
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect(),
            });
        }
        Ok(found)
    }
}

/// A sorted-set score (text in RESP2, a double in RESP3); 0 when neither.
fn score_of(score: Value) -> f64 {
    match score {
        Value::Double(d) => d,
        other => text(other, "score")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0.0),
    }
}
