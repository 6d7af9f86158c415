//! Workflows without I/O: a graph of tasks submitted as one unit (chains,
//! groups, chords), its checks, and how a node's parameters take its
//! parents' results.
//!
//! # Layout
//!
//! - this file: the graph ([`Graph`], [`GraphNode`]) and its checks: names,
//!   parents that exist, no cycle, references only to parents, paths that
//!   the parent kind's result can hold ([`Graph::check`]).
//! - [`refs`]: the `{"$ref": "<parent>", "path": "/json/pointer"}`
//!   placeholders in a node's MessagePack parameters: found at submit,
//!   replaced by the worker at claim ([`refs::substitute`]).
//! - [`spec`]: the JSON or YAML file `tandem flow submit FILE` reads.
//!
//! Redis holds the rest (`shared/lua/workflow_submit.lua`, the commit's
//! hook in `complete.lua`, `workflow_cancel.lua`; see docs/wire-format.md,
//! "Workflows"): a node's record waits as `waiting` until its last parent
//! commits `succeeded`, and that commit, in the same script, appends the
//! node's entry to its stream with the parents' results beside its
//! parameters.
//!
//! # Example
//!
//! ```
//! use tandem_shared::workflow::{Graph, GraphNode};
//!
//! let graph = Graph {
//!     nodes: vec![
//!         GraphNode::new("a", "noop", vec![], vec![]),
//!         GraphNode::new("b", "noop", vec!["a".into()], vec![]),
//!     ],
//! };
//! assert_eq!(graph.check().unwrap(), vec![0, 1]);
//! ```

pub mod refs;
pub mod spec;

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

pub use refs::Ref;

/// The most nodes one workflow may have (the submit is one script).
pub const MAX_NODES: usize = 20_000;

/// What a workflow does when a node fails for good (after its own retries).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Every node not yet finished is cancelled.
    #[default]
    FailFast,
    /// Only the failed node's descendants are cancelled (they can never
    /// run); independent branches go on.
    Continue,
}

impl OnFailure {
    pub const fn as_str(self) -> &'static str {
        match self {
            OnFailure::FailFast => "fail_fast",
            OnFailure::Continue => "continue",
        }
    }
}

impl std::str::FromStr for OnFailure {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fail_fast" => Ok(Self::FailFast),
            "continue" => Ok(Self::Continue),
            other => Err(format!(
                "on_failure is {other:?}; expected fail_fast or continue"
            )),
        }
    }
}

/// Why a workflow was refused at submit; every message names the node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkflowError {
    #[error("node {node:?}: {problem}")]
    Node { node: String, problem: String },
    #[error("workflow: {0}")]
    Graph(String),
}

impl WorkflowError {
    pub fn node(node: &str, problem: impl Into<String>) -> Self {
        Self::Node {
            node: node.to_owned(),
            problem: problem.into(),
        }
    }
}

/// One node as the checks see it.
#[derive(Debug, Clone, PartialEq)]
pub struct GraphNode {
    /// Unique in the workflow: 1-64 letters, digits, `_`, `-`, `.`.
    pub name: String,
    pub kind: String,
    /// The nodes whose success it waits for.
    pub parents: Vec<String>,
    /// The placeholders in its parameters.
    pub refs: Vec<Ref>,
}

impl GraphNode {
    pub fn new(name: &str, kind: &str, parents: Vec<String>, refs: Vec<Ref>) -> Self {
        Self {
            name: name.to_owned(),
            kind: kind.to_owned(),
            parents,
            refs,
        }
    }
}

/// A workflow's nodes, in the order given.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Graph {
    pub nodes: Vec<GraphNode>,
}

impl Graph {
    /// Checks the graph and returns the nodes' indexes in an order where
    /// every parent comes before its children. Refused: no nodes, too many,
    /// a bad or repeated name, a parent that is not a node (or the node
    /// itself, or named twice), a cycle, a reference to a node that is not
    /// a parent, and a path that the parent kind's result cannot hold
    /// (checked for the kinds this crate defines).
    pub fn check(&self) -> Result<Vec<usize>, WorkflowError> {
        if self.nodes.is_empty() {
            return Err(WorkflowError::Graph("it has no nodes".into()));
        }
        if self.nodes.len() > MAX_NODES {
            return Err(WorkflowError::Graph(format!(
                "{} nodes; at most {MAX_NODES}",
                self.nodes.len()
            )));
        }
        let mut index: HashMap<&str, usize> = HashMap::with_capacity(self.nodes.len());
        for (i, node) in self.nodes.iter().enumerate() {
            check_name(&node.name).map_err(|problem| WorkflowError::node(&node.name, problem))?;
            if index.insert(node.name.as_str(), i).is_some() {
                return Err(WorkflowError::node(
                    &node.name,
                    "the name is used by another node too",
                ));
            }
        }
        for node in &self.nodes {
            let mut seen = HashSet::new();
            for parent in &node.parents {
                if parent == &node.name {
                    return Err(WorkflowError::node(
                        &node.name,
                        "it names itself as a parent",
                    ));
                }
                if !index.contains_key(parent.as_str()) {
                    return Err(WorkflowError::node(
                        &node.name,
                        format!("parent {parent:?} is not a node of the workflow"),
                    ));
                }
                if !seen.insert(parent.as_str()) {
                    return Err(WorkflowError::node(
                        &node.name,
                        format!("parent {parent:?} is named twice"),
                    ));
                }
            }
            for r in &node.refs {
                if !seen.contains(r.node.as_str()) {
                    return Err(WorkflowError::node(
                        &node.name,
                        format!(
                            "its params take the result of {:?}, which is not one of its parents ({})",
                            r.node,
                            if node.parents.is_empty() {
                                "it has none".to_owned()
                            } else {
                                node.parents.join(", ")
                            }
                        ),
                    ));
                }
                let parent_kind = &self.nodes[index[r.node.as_str()]].kind;
                if let Some(path) = &r.path {
                    refs::check_path(parent_kind, path).map_err(|problem| {
                        WorkflowError::node(
                            &node.name,
                            format!("path {path:?} into the result of {:?}: {problem}", r.node),
                        )
                    })?;
                }
            }
        }
        // Kahn's algorithm; whatever is left over lies on a cycle.
        let mut waiting: Vec<usize> = self.nodes.iter().map(|n| n.parents.len()).collect();
        let mut children: Vec<Vec<usize>> = vec![Vec::new(); self.nodes.len()];
        for (i, node) in self.nodes.iter().enumerate() {
            for parent in &node.parents {
                children[index[parent.as_str()]].push(i);
            }
        }
        let mut order: Vec<usize> = (0..self.nodes.len()).filter(|&i| waiting[i] == 0).collect();
        let mut next = 0;
        while next < order.len() {
            let i = order[next];
            next += 1;
            for &child in &children[i] {
                waiting[child] -= 1;
                if waiting[child] == 0 {
                    order.push(child);
                }
            }
        }
        if order.len() < self.nodes.len() {
            let on_cycle: Vec<&str> = (0..self.nodes.len())
                .filter(|&i| waiting[i] > 0)
                .map(|i| self.nodes[i].name.as_str())
                .collect();
            return Err(WorkflowError::node(
                on_cycle[0],
                format!(
                    "it is on a cycle (nodes that wait for one another: {})",
                    on_cycle.join(", ")
                ),
            ));
        }
        Ok(order)
    }

    /// The nodes no other node waits for: their results are the
    /// workflow's.
    pub fn sinks(&self) -> Vec<&str> {
        let parents: HashSet<&str> = self
            .nodes
            .iter()
            .flat_map(|n| n.parents.iter().map(String::as_str))
            .collect();
        self.nodes
            .iter()
            .map(|n| n.name.as_str())
            .filter(|name| !parents.contains(name))
            .collect()
    }
}

/// A node name: 1-64 letters, digits, `_`, `-` or `.` (it becomes part of
/// the entry field `input:<name>`).
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err(format!(
            "the name {name:?} must be 1-64 letters, digits, '_', '-' or '.'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, parents: &[&str]) -> GraphNode {
        GraphNode::new(
            name,
            "noop",
            parents.iter().map(|p| (*p).to_owned()).collect(),
            vec![],
        )
    }

    fn check(nodes: Vec<GraphNode>) -> Result<Vec<usize>, String> {
        Graph { nodes }.check().map_err(|e| e.to_string())
    }

    #[test]
    fn chains_groups_and_chords_are_ordered_parents_first() {
        assert_eq!(
            check(vec![node("b", &["a"]), node("a", &[])]),
            Ok(vec![1, 0])
        );
        let chord = vec![
            node("sum", &["x", "y"]),
            node("x", &["root"]),
            node("y", &["root"]),
            node("root", &[]),
        ];
        assert_eq!(check(chord), Ok(vec![3, 1, 2, 0]));
    }

    #[test]
    fn bad_graphs_are_refused_naming_the_node() {
        let cases: Vec<(Vec<GraphNode>, &str)> = vec![
            (vec![], "workflow: it has no nodes"),
            (
                vec![node("a", &["b"]), node("b", &["a"])],
                "node \"a\": it is on a cycle (nodes that wait for one another: a, b)",
            ),
            (
                vec![node("a", &["ghost"])],
                "node \"a\": parent \"ghost\" is not a node of the workflow",
            ),
            (
                vec![node("a", &["a"])],
                "node \"a\": it names itself as a parent",
            ),
            (
                vec![node("a", &[]), node("a", &[])],
                "node \"a\": the name is used by another node too",
            ),
            (
                vec![node("a b", &[])],
                "node \"a b\": the name \"a b\" must be 1-64 letters, digits, '_', '-' or '.'",
            ),
        ];
        for (nodes, expect) in cases {
            assert_eq!(check(nodes), Err(expect.to_owned()));
        }
    }

    #[test]
    fn a_reference_must_name_a_parent_and_a_path_the_result_can_hold() {
        let mut child = node("c", &["p"]);
        child.refs = vec![Ref::new("q", None)];
        let got = check(vec![node("p", &[]), child.clone()]).unwrap_err();
        assert!(
            got.starts_with("node \"c\": its params take the result of \"q\""),
            "{got}"
        );

        let mut parent = node("p", &[]);
        parent.kind = "risk".into();
        child.refs = vec![Ref::new("p", Some("/no_such_field".into()))];
        let got = check(vec![parent.clone(), child.clone()]).unwrap_err();
        assert!(
            got.starts_with("node \"c\": path \"/no_such_field\" into the result of \"p\""),
            "{got}"
        );

        child.refs = vec![Ref::new("p", Some("/levels/0/var".into()))];
        assert!(check(vec![parent, child]).is_ok());
    }

    #[test]
    fn sinks_are_the_nodes_nobody_waits_for() {
        let graph = Graph {
            nodes: vec![node("a", &[]), node("b", &["a"]), node("c", &["a"])],
        };
        assert_eq!(graph.sinks(), vec!["b", "c"]);
    }
}
