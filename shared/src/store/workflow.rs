//! Workflows in Redis: submit one as a unit, read its state with its
//! nodes' records, cancel it. The graph's checks are
//! [`crate::workflow`]'s; the scripts are `workflow_submit.lua`,
//! `workflow_cancel.lua` and the commit's hook (`workflow_settle` in
//! `common.lua`).

use std::collections::HashMap;

use redis::{Cmd, Value};
use serde::{Deserialize, Serialize};

use super::reply::{array, hash_map, int, reply_ok, text};
use super::{Store, StoreError};
use crate::scripts;
use crate::task::{Class, TaskId};
use crate::wire::{NewTask, TaskRecord, field};
use crate::workflow::OnFailure;

/// A checked workflow, ready to send.
#[derive(Debug, Clone)]
pub struct NewWorkflow {
    pub id: TaskId,
    pub on_failure: OnFailure,
    /// Parents before children.
    pub nodes: Vec<NewNode>,
}

/// One node of a [`NewWorkflow`].
#[derive(Debug, Clone)]
pub struct NewNode {
    pub name: String,
    pub task: NewTask,
    pub parents: Vec<String>,
}

/// A node as the workflow's `graph` field describes it (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraphEntry {
    pub name: String,
    pub id: TaskId,
    pub class: Class,
    pub kind: String,
    #[serde(default)]
    pub parents: Vec<String>,
}

/// A workflow as Redis has it now.
#[derive(Debug, Clone)]
pub struct WorkflowState {
    pub id: TaskId,
    /// `running`, `succeeded`, `failed` (a node did not succeed) or
    /// `cancelled`.
    pub status: String,
    pub on_failure: String,
    pub submitted_at_ms: Option<u64>,
    pub finished_at_ms: Option<u64>,
    /// The nodes no other waits for: their results are the workflow's.
    pub sinks: Vec<String>,
    pub nodes: Vec<NodeState>,
}

/// One node of a [`WorkflowState`].
#[derive(Debug, Clone)]
pub struct NodeState {
    pub graph: GraphEntry,
    /// The record's `status` as written (`waiting` included), or
    /// `expired-record` when the record is gone.
    pub status: String,
    /// When its last parent's commit released it (Redis clock).
    pub released_at_ms: Option<u64>,
    pub record: TaskRecord,
}

impl WorkflowState {
    pub fn is_final(&self) -> bool {
        self.status != "running"
    }
}

/// What a workflow cancel did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkflowCancel {
    NotFound,
    /// It had finished with this status.
    Finished(String),
    /// `ended` nodes are cancelled now, `asked` running ones were told to
    /// stop.
    Cancelled {
        ended: u64,
        asked: u64,
    },
}

impl Store {
    /// Submits a workflow as one script. Returns false when a workflow with
    /// this id existed already (a retried submit): nothing new is created.
    /// On Redis Cluster every node must be of one class (one slot); the
    /// caller checks that first.
    pub async fn submit_workflow<'a>(
        &self,
        workflow: &NewWorkflow,
        producer: &str,
        reply_to: impl Fn(Class) -> Option<&'a str>,
    ) -> Result<bool, StoreError> {
        let home = workflow
            .nodes
            .first()
            .map_or(Class::Cpu, |node| node.task.class);
        let record_of: HashMap<&str, String> = workflow
            .nodes
            .iter()
            .map(|n| (n.name.as_str(), self.keys.task(n.task.class, &n.task.id)))
            .collect();
        let mut children: HashMap<&str, Vec<&str>> = HashMap::new();
        for node in &workflow.nodes {
            for parent in &node.parents {
                children
                    .entry(parent.as_str())
                    .or_default()
                    .push(record_of[node.name.as_str()].as_str());
            }
        }
        let graph: Vec<GraphEntry> = workflow
            .nodes
            .iter()
            .map(|n| GraphEntry {
                name: n.name.clone(),
                id: n.task.id,
                class: n.task.class,
                kind: n.task.kind.clone(),
                parents: n.parents.clone(),
            })
            .collect();
        let graph = serde_json::to_string(&graph).map_err(|e| StoreError::Protocol {
            what: "workflow graph",
            detail: e.to_string(),
        })?;
        let sinks: Vec<&str> = workflow
            .nodes
            .iter()
            .filter(|n| !children.contains_key(n.name.as_str()))
            .map(|n| n.name.as_str())
            .collect();
        let mut call = scripts::WORKFLOW_SUBMIT
            .invocation(self.events)
            .key(self.keys.workflow(home, &workflow.id))
            .arg(workflow.id.to_string())
            .arg(workflow.on_failure.as_str())
            .arg(graph)
            .arg(sinks.join(" "))
            .arg(workflow.nodes.len());
        for node in &workflow.nodes {
            let task = &node.task;
            let mut metadata = task.metadata(producer, reply_to(task.class));
            // Read by the script (which writes `deadline_ms`), not copied.
            if let Some(ms) = task.deadline_in_ms.filter(|&ms| ms > 0) {
                metadata.push((field::DEADLINE_IN_MS, ms.to_string()));
            }
            call = call
                .arg(node.name.as_str())
                .arg(task.id.to_string())
                .arg(record_of[node.name.as_str()].as_str())
                .arg(self.keys.stream_ref(task.class, task.priority))
                .arg(node.parents.len())
                .arg(
                    children
                        .get(node.name.as_str())
                        .map(|c| c.join(" "))
                        .unwrap_or_default(),
                )
                .arg(task.params.as_slice())
                .arg(metadata.len());
            for (name, value) in metadata {
                call = call.arg(name).arg(value);
            }
        }
        let reply = self
            .pipeline_replicated(&[call.into_cmd()])
            .await?
            .into_iter()
            .next()
            .unwrap_or(Value::Nil);
        let mut items = array(reply_ok(reply)?, "workflow submit")?.into_iter();
        let _id = items.next();
        Ok(int(items.next().unwrap_or(Value::Nil), "workflow submit")? == 1)
    }

    /// The class whose tag holds workflow `id`'s hash, and the hash.
    async fn find_workflow(
        &self,
        id: &TaskId,
    ) -> Result<Option<(Class, HashMap<Vec<u8>, Vec<u8>>)>, StoreError> {
        let cmds: Vec<Cmd> = Class::ALL
            .iter()
            .map(|&class| {
                let mut cmd = redis::cmd("HGETALL");
                cmd.arg(self.keys.workflow(class, id));
                cmd
            })
            .collect();
        for (&class, reply) in Class::ALL.iter().zip(self.pipeline(&cmds).await?) {
            let map = hash_map(reply_ok(reply)?, "HGETALL workflow")?;
            if !map.is_empty() {
                return Ok(Some((class, map)));
            }
        }
        Ok(None)
    }

    /// A workflow's state with every node's record (one round trip for the
    /// workflow, one pipelined for the nodes); `None` when it is unknown or
    /// expired.
    pub async fn workflow(&self, id: &TaskId) -> Result<Option<WorkflowState>, StoreError> {
        let Some((_, map)) = self.find_workflow(id).await? else {
            return Ok(None);
        };
        let get = |name: &str| {
            map.get(name.as_bytes())
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        let number = |name: &str| get(name).and_then(|v| v.parse::<u64>().ok());
        let graph: Vec<GraphEntry> = serde_json::from_str(&get("graph").unwrap_or_default())
            .map_err(|e| StoreError::Protocol {
                what: "workflow graph",
                detail: e.to_string(),
            })?;
        let cmds: Vec<Cmd> = graph
            .iter()
            .map(|node| {
                let mut cmd = redis::cmd("HGETALL");
                cmd.arg(self.keys.task(node.class, &node.id));
                cmd
            })
            .collect();
        let replies = if cmds.is_empty() {
            Vec::new()
        } else {
            self.pipeline(&cmds).await?
        };
        let mut nodes = Vec::with_capacity(graph.len());
        for (entry, reply) in graph.into_iter().zip(replies) {
            let record_map = hash_map(reply_ok(reply)?, "HGETALL node")?;
            let raw = |name: &str| {
                record_map
                    .get(name.as_bytes())
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            };
            let status = raw("status").unwrap_or_else(|| "expired-record".to_owned());
            let released_at_ms = raw("released_at_ms").and_then(|v| v.parse().ok());
            let mut record = TaskRecord::from_map(&record_map);
            record.id.get_or_insert(entry.id);
            record.class.get_or_insert(entry.class);
            nodes.push(NodeState {
                graph: entry,
                status,
                released_at_ms,
                record,
            });
        }
        Ok(Some(WorkflowState {
            id: *id,
            status: get("status").unwrap_or_else(|| "unknown".to_owned()),
            on_failure: get("on_failure").unwrap_or_default(),
            submitted_at_ms: number("submitted_at_ms"),
            finished_at_ms: number("finished_at_ms"),
            sinks: get("sinks")
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_owned)
                .collect(),
            nodes,
        }))
    }

    /// Cancels every node of a workflow that is not final (see
    /// `workflow_cancel.lua`).
    pub async fn cancel_workflow(&self, id: &TaskId) -> Result<WorkflowCancel, StoreError> {
        let Some((class, _)) = self.find_workflow(id).await? else {
            return Ok(WorkflowCancel::NotFound);
        };
        let cmd = scripts::WORKFLOW_CANCEL
            .invocation(self.events)
            .key(self.keys.workflow(class, id))
            .arg(self.retention.result_ttl_s)
            .arg(self.retention.reply_maxlen)
            .arg(self.retention.reply_ttl_s)
            .into_cmd();
        let reply = self
            .pipeline_replicated(&[cmd])
            .await?
            .into_iter()
            .next()
            .unwrap_or(Value::Nil);
        let mut items = array(reply_ok(reply)?, "workflow cancel")?.into_iter();
        let word = text(items.next().unwrap_or(Value::Nil), "workflow cancel")?;
        match word.as_str() {
            "not_found" => Ok(WorkflowCancel::NotFound),
            "finished" => Ok(WorkflowCancel::Finished(text(
                items.next().unwrap_or(Value::Nil),
                "workflow cancel",
            )?)),
            "cancelled" => {
                let mut count = || -> Result<u64, StoreError> {
                    let n = int(items.next().unwrap_or(Value::Nil), "workflow cancel")?;
                    Ok(u64::try_from(n).unwrap_or(0))
                };
                let ended = count()?;
                let asked = count()?;
                Ok(WorkflowCancel::Cancelled { ended, asked })
            }
            other => Err(StoreError::Protocol {
                what: "workflow cancel",
                detail: format!("unknown outcome {other:?}"),
            }),
        }
    }
}
