//! Workflows: a graph of tasks submitted as one unit. See
//! [`tandem_shared::workflow`] for the graph's rules and
//! docs/wire-format.md ("Workflows") for what Redis holds.
//!
//! ```no_run
//! use std::time::Duration;
//! use tandem_producer::{Producer, Task, Workflow, WorkflowRef};
//!
//! # async fn example() -> Result<(), tandem_producer::ProducerError> {
//! let producer = Producer::from_env().await?;
//! let workflow = Workflow::new()
//!     .node("a", Task::new("echo", &("x", 1))?)
//!     .node("b", Task::new("echo", &("y", 2))?)
//!     // A chord: `sum` starts once `a` and `b` succeeded, with their
//!     // results: `a`'s second element, and all of `b`'s.
//!     .node_after(
//!         "sum",
//!         Task::new("echo", &[WorkflowRef::to("a").at("/1"), WorkflowRef::to("b")])?,
//!         &["a", "b"],
//!     );
//! let handle = producer.submit_workflow(workflow).await?;
//! let outcome = handle.wait(Duration::from_secs(30)).await?;
//! println!("{}: {:?}", outcome.status, outcome.results.keys());
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Serialize, Serializer};
use tandem_shared::TaskId;
use tandem_shared::store::{NewNode, NewWorkflow, WorkflowCancel, WorkflowState};
use tandem_shared::workflow::refs::{self, Ref};
use tandem_shared::workflow::{Graph, GraphNode, OnFailure, WorkflowError};

use crate::{Producer, ProducerError, Task, TaskHandle, TaskOutcome};

/// A placeholder for a parent's result (or a part of it) in a node's
/// parameters: serializes as `{"$ref": node, "path": pointer}`, which the
/// worker that runs the node replaces with the result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkflowRef(Ref);

impl WorkflowRef {
    /// The whole result of node `node`.
    pub fn to(node: &str) -> Self {
        Self(Ref::new(node, None))
    }

    /// The part of the result at a JSON Pointer (`/levels/0/var`).
    pub fn at(self, path: &str) -> Self {
        Self(Ref::new(&self.0.node, Some(path.to_owned())))
    }
}

impl Serialize for WorkflowRef {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.to_json().serialize(serializer)
    }
}

/// A node being built: its name, its task, its parents' names.
type PendingNode = (String, Task, Vec<String>);

/// A workflow being built: nodes, each a [`Task`] with its parents.
#[derive(Debug, Clone, Default)]
pub struct Workflow {
    id: Option<TaskId>,
    on_failure: OnFailure,
    nodes: Vec<PendingNode>,
}

impl Workflow {
    pub fn new() -> Self {
        Self::default()
    }

    /// What happens when a node fails for good (after its own retries):
    /// [`OnFailure::FailFast`] (default) cancels the rest,
    /// [`OnFailure::Continue`] only the failed node's descendants.
    pub fn on_failure(mut self, policy: OnFailure) -> Self {
        self.on_failure = policy;
        self
    }

    /// Sets the workflow's id (default: a fresh one). Submitting the same
    /// id twice creates it once.
    pub fn with_id(mut self, id: TaskId) -> Self {
        self.id = Some(id);
        self
    }

    /// A node without parents: it starts at once.
    pub fn node(self, name: &str, task: Task) -> Self {
        self.node_after(name, task, &[])
    }

    /// A node that starts once every node in `parents` succeeded.
    pub fn node_after(mut self, name: &str, task: Task, parents: &[&str]) -> Self {
        self.nodes.push((
            name.to_owned(),
            task,
            parents.iter().map(|p| (*p).to_owned()).collect(),
        ));
        self
    }

    /// Checks the graph and returns it parents first, each task marked
    /// when its parameters take parents' results.
    pub(crate) fn checked(self) -> Result<(TaskId, OnFailure, Vec<PendingNode>), ProducerError> {
        let mut graph = Graph::default();
        for (name, task, parents) in &self.nodes {
            let node_refs = refs::refs_in(&task.params)
                .map_err(|problem| WorkflowError::node(name, format!("params: {problem}")))?;
            graph
                .nodes
                .push(GraphNode::new(name, &task.kind, parents.clone(), node_refs));
        }
        let order = graph.check()?;
        let mut slots: Vec<Option<PendingNode>> = self.nodes.into_iter().map(Some).collect();
        let mut ordered = Vec::with_capacity(order.len());
        for i in order {
            if let Some((name, mut task, parents)) = slots[i].take() {
                task.takes_results = !graph.nodes[i].refs.is_empty();
                ordered.push((name, task, parents));
            }
        }
        Ok((self.id.unwrap_or_default(), self.on_failure, ordered))
    }
}

/// A submitted workflow.
#[derive(Debug)]
pub struct WorkflowHandle {
    id: TaskId,
    producer: Producer,
    /// Every node's handle, parents first.
    nodes: Vec<(String, TaskHandle)>,
    /// False when a workflow with this id existed already.
    created: bool,
}

/// How a workflow ended.
#[derive(Debug, Clone)]
pub struct WorkflowOutcome {
    pub id: TaskId,
    /// `succeeded`, `failed` or `cancelled`.
    pub status: String,
    /// The sink nodes' results (MessagePack), by node name: the workflow's
    /// result. A sink that did not succeed is absent.
    pub results: BTreeMap<String, Vec<u8>>,
    /// Every node's outcome, by name.
    pub nodes: BTreeMap<String, TaskOutcome>,
}

impl WorkflowHandle {
    pub fn id(&self) -> TaskId {
        self.id
    }

    /// False when the submit found a workflow of this id already there.
    pub fn created(&self) -> bool {
        self.created
    }

    /// The handle on one node.
    pub fn node(&self, name: &str) -> Option<&TaskHandle> {
        self.nodes.iter().find(|(n, _)| n == name).map(|(_, h)| h)
    }

    /// Waits until every node is final, at most `timeout` in all. Costs no
    /// polling: each node's completion notice wakes it.
    pub async fn wait(&self, timeout: Duration) -> Result<WorkflowOutcome, ProducerError> {
        let waits = self.nodes.iter().map(|(name, handle)| async move {
            Ok::<_, ProducerError>((name.clone(), handle.wait(timeout).await?))
        });
        let nodes: BTreeMap<String, TaskOutcome> = futures_util::future::try_join_all(waits)
            .await?
            .into_iter()
            .collect();
        let state = self
            .producer
            .workflow_state(self.id)
            .await?
            .ok_or(ProducerError::WorkflowNotFound(self.id))?;
        let results = state
            .sinks
            .iter()
            .filter_map(|sink| {
                let outcome = nodes.get(sink)?;
                outcome.result_bytes().map(|r| (sink.clone(), r.to_vec()))
            })
            .collect();
        Ok(WorkflowOutcome {
            id: self.id,
            status: state.status,
            results,
            nodes,
        })
    }

    /// The workflow's state now, with every node's record.
    pub async fn state(&self) -> Result<Option<WorkflowState>, ProducerError> {
        self.producer.workflow_state(self.id).await
    }

    /// Cancels every node not yet finished.
    pub async fn cancel(&self) -> Result<WorkflowCancel, ProducerError> {
        self.producer.cancel_workflow(self.id).await
    }
}

impl Producer {
    /// Submits a workflow as one unit, after checking it: a cycle, a
    /// missing parent, a kind that is not built in without a class, bad
    /// parameters of a node that takes no results, a placeholder for a
    /// node that is not a parent, a path that the parent kind's result
    /// cannot hold: each refused naming the node, with nothing sent. On
    /// Redis Cluster every node must be of one class (the submit is one
    /// script, in one slot).
    pub async fn submit_workflow(
        &self,
        workflow: Workflow,
    ) -> Result<WorkflowHandle, ProducerError> {
        let (id, on_failure, ordered) = workflow.checked()?;
        let names: Vec<String> = ordered.iter().map(|(n, _, _)| n.clone()).collect();
        let parents: Vec<Vec<String>> = ordered.iter().map(|(_, _, p)| p.clone()).collect();
        // Every node notifies: its handle and the workflow's wait listen.
        let tasks = ordered
            .into_iter()
            .map(|(_, mut t, _)| {
                t.notice = true;
                t
            })
            .collect::<Vec<_>>();
        let kinds: Vec<String> = tasks.iter().map(|t| t.kind().to_owned()).collect();
        let prepared = self.prepare(tasks).await.map_err(|err| match err {
            ProducerError::BadParams { kind, message } => {
                // Name the node: the first of that kind whose check fails.
                let node = kinds
                    .iter()
                    .position(|k| *k == kind)
                    .map_or("?", |i| names[i].as_str());
                ProducerError::Workflow(WorkflowError::node(
                    node,
                    format!("bad parameters for kind {kind}: {message}"),
                ))
            }
            ProducerError::MissingClass(kind) => {
                let node = kinds
                    .iter()
                    .position(|k| *k == kind)
                    .map_or("?", |i| names[i].as_str());
                ProducerError::Workflow(WorkflowError::node(
                    node,
                    format!("kind {kind:?} is unknown (not built in), so the node needs a class"),
                ))
            }
            other => other,
        })?;
        if self.store().is_cluster()
            && let Some(first) = prepared.first()
            && let Some((i, other)) = prepared
                .iter()
                .enumerate()
                .find(|(_, t)| t.class != first.class)
        {
            return Err(ProducerError::Workflow(WorkflowError::node(
                &names[i],
                format!(
                    "its class {} differs from {} of node {:?}; on Redis Cluster a workflow's nodes share one class",
                    other.class, first.class, names[0]
                ),
            )));
        }
        let workflow = NewWorkflow {
            id,
            on_failure,
            nodes: prepared
                .into_iter()
                .zip(names.iter().cloned().zip(parents))
                .map(|(task, (name, parents))| NewNode {
                    name,
                    task,
                    parents,
                })
                .collect(),
        };
        let (created, handles) = self.send_workflow(&workflow).await?;
        Ok(WorkflowHandle {
            id,
            producer: self.clone(),
            nodes: names.into_iter().zip(handles).collect(),
            created,
        })
    }

    /// A workflow's state, with every node's record; `None` when unknown or
    /// expired.
    pub async fn workflow_state(&self, id: TaskId) -> Result<Option<WorkflowState>, ProducerError> {
        Ok(self.retrying(|| self.store().workflow(&id)).await?)
    }

    /// Cancels every node of the workflow not yet finished.
    pub async fn cancel_workflow(&self, id: TaskId) -> Result<WorkflowCancel, ProducerError> {
        Ok(self.retrying(|| self.store().cancel_workflow(&id)).await?)
    }
}
