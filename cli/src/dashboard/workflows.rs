//! The dashboard's workflows: the recent ones (a summary each, in every
//! snapshot), a workflow's page (`/api/workflows/{id}`: its graph by
//! layer, every node's state, kind, worker, device, times and wait before
//! start, the sinks' results) and that page's live stream
//! (`/api/workflows/{id}/live`, server-sent events until the workflow is
//! final). The cancel is a write action (`actions`).
//!
//! A node's layer is its depth: 0 without parents, else one more than its
//! deepest parent. The page draws a small graph node by node, layer by
//! layer, and a large one as a summary of its layers; the layers come
//! from here so that every client draws the same graph.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Json, Response};
use futures_util::stream::Stream;
use serde_json::{Value, json};
use tandem_shared::TaskId;
use tandem_shared::store::{NodeState, Store, WorkflowState, WorkflowSummary};

use super::{Shared, error};

/// The most nodes a workflow's page lists one by one; a larger workflow
/// lists those that need a look first (running, failed, queued ...) and
/// counts the rest in `nodes_omitted` (its layers still count every node).
pub(super) const NODES_LISTED: usize = 2_000;

/// At most this many sink names in a summary (a fan-out can end in
/// thousands).
const SINKS_SHOWN: usize = 3;

/// A recent workflow as the snapshot lists it.
pub(super) fn summary_json(w: &WorkflowSummary, now_ms: u64) -> Value {
    let took_ms = w.submitted_at_ms.map(|start| {
        w.finished_at_ms
            .unwrap_or(now_ms.max(start))
            .saturating_sub(start)
    });
    json!({
        "id": w.id.to_string(),
        "class": w.class.as_str(),
        "status": w.status,
        "on_failure": w.on_failure,
        "submitted_at_ms": w.submitted_at_ms,
        "finished_at_ms": w.finished_at_ms,
        "took_ms": took_ms,
        "nodes": w.nodes,
        "finished": w.finished_nodes(),
        "succeeded": w.succeeded_nodes(),
        "failed": w.failed,
        "sinks": w.sinks.iter().take(SINKS_SHOWN).collect::<Vec<_>>(),
        "sinks_more": w.sinks.len().saturating_sub(SINKS_SHOWN),
    })
}

/// Each node's layer (see the module's doc), for nodes given with their
/// parents' names. A parent that is not a node, or a cycle (neither passes
/// the submit's checks), counts as no parent.
pub(super) fn layers(parents: &[Vec<&str>], names: &[&str]) -> Vec<usize> {
    let index: HashMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let mut waiting: Vec<usize> = vec![0; names.len()];
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); names.len()];
    for (child, list) in parents.iter().enumerate() {
        for parent in list {
            if let Some(&p) = index.get(parent) {
                waiting[child] += 1;
                children[p].push(child);
            }
        }
    }
    let mut layer = vec![0; names.len()];
    let mut ready: Vec<usize> = (0..names.len()).filter(|&i| waiting[i] == 0).collect();
    while let Some(node) = ready.pop() {
        for &child in &children[node] {
            layer[child] = layer[child].max(layer[node] + 1);
            waiting[child] -= 1;
            if waiting[child] == 0 {
                ready.push(child);
            }
        }
    }
    layer
}

/// How urgently a node in `status` should be listed when a workflow has
/// more nodes than [`NODES_LISTED`]: lower first.
fn listing_rank(status: &str) -> u8 {
    match status {
        "running" | "retrying" => 0,
        "failed" | "expired" | "expired-record" => 1,
        "queued" | "delayed" => 2,
        "cancelled" => 3,
        "succeeded" => 4,
        _ => 5,
    }
}

/// A workflow's page: `tandem flow status --json`'s fields, each node with
/// its layer, the layers' summary, and at most [`NODES_LISTED`] nodes.
pub(super) fn page_json(state: &WorkflowState) -> Value {
    let names: Vec<&str> = state.nodes.iter().map(|n| n.graph.name.as_str()).collect();
    let parents: Vec<Vec<&str>> = state
        .nodes
        .iter()
        .map(|n| n.graph.parents.iter().map(String::as_str).collect())
        .collect();
    let layer = layers(&parents, &names);
    let mut value = crate::workflow::to_json(state);
    let mut summary: Vec<LayerSummary> = Vec::new();
    for (node, &depth) in state.nodes.iter().zip(&layer) {
        if summary.len() <= depth {
            summary.resize_with(depth + 1, LayerSummary::default);
        }
        summary[depth].add(node);
    }
    let mut listed: Vec<(usize, Value)> = match value["nodes"].take() {
        Value::Array(nodes) => nodes.into_iter().enumerate().collect(),
        _ => Vec::new(),
    };
    for (i, node) in &mut listed {
        node["layer"] = json!(layer[*i]);
    }
    let total = listed.len();
    if total > NODES_LISTED {
        listed.sort_by_key(|(i, _)| (listing_rank(&state.nodes[*i].status), layer[*i], *i));
        listed.truncate(NODES_LISTED);
        listed.sort_by_key(|(i, _)| (layer[*i], *i));
    }
    let finished = state
        .nodes
        .iter()
        .filter(|n| {
            matches!(
                n.status.as_str(),
                "succeeded" | "failed" | "cancelled" | "expired" | "expired-record"
            )
        })
        .count();
    value["nodes_total"] = json!(total);
    value["nodes_finished"] = json!(finished);
    value["nodes_omitted"] = json!(total - listed.len());
    value["nodes"] = Value::Array(listed.into_iter().map(|(_, node)| node).collect());
    value["layers"] = Value::Array(summary.iter().map(LayerSummary::to_json).collect());
    value
}

/// One layer's nodes, counted by state and kind.
#[derive(Debug, Default)]
struct LayerSummary {
    nodes: usize,
    /// In the order first met, so that the page's order is stable.
    by_status: Vec<(String, usize)>,
    kinds: Vec<String>,
}

impl LayerSummary {
    fn add(&mut self, node: &NodeState) {
        self.nodes += 1;
        match self.by_status.iter_mut().find(|(s, _)| *s == node.status) {
            Some((_, count)) => *count += 1,
            None => self.by_status.push((node.status.clone(), 1)),
        }
        if !self.kinds.contains(&node.graph.kind) {
            self.kinds.push(node.graph.kind.clone());
        }
    }

    fn to_json(&self) -> Value {
        let by_status: serde_json::Map<String, Value> = self
            .by_status
            .iter()
            .map(|(status, count)| (status.clone(), json!(count)))
            .collect();
        json!({ "nodes": self.nodes, "by_status": by_status, "kinds": self.kinds })
    }
}

fn parse_id(id: &str) -> Result<TaskId, String> {
    id.parse::<TaskId>()
        .map_err(|_| format!("workflow id {id:?} is not a workflow id"))
}

/// The page of workflow `id`, read now; `None` when it is unknown or
/// expired.
async fn read(store: &Store, id: &TaskId) -> Result<Option<Value>, String> {
    match store.workflow(id).await {
        Ok(state) => Ok(state.as_ref().map(page_json)),
        Err(e) => Err(e.to_string()),
    }
}

/// `GET /api/workflows/{id}`.
pub(super) async fn workflow(State(app): State<Shared>, Path(id): Path<String>) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    match read(&app.store, &id).await {
        Ok(Some(value)) => Json(value).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, missing(&id)),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

fn missing(id: &TaskId) -> String {
    format!("no workflow {id} (never submitted, or expired after result_ttl_s)")
}

/// What the live stream does next.
enum Next {
    /// Read the workflow now (the first read).
    Now,
    /// Read it after the interval, sending it only when it changed since
    /// `last`.
    After(String),
    Done,
}

/// `GET /api/workflows/{id}/live`: the page as server-sent `workflow`
/// events, one each interval in which it changed, the last when the
/// workflow is final; then the stream ends. An unknown workflow gets one
/// `missing` event.
pub(super) async fn live(State(app): State<Shared>, Path(id): Path<String>) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    let interval = app.interval;
    let store = app.store.clone();
    let stream = futures_util::stream::unfold(Next::Now, move |next| {
        let store = store.clone();
        async move {
            let last = match next {
                Next::Done => return None,
                Next::Now => None,
                Next::After(last) => Some(last),
            };
            let mut waited = last.is_some();
            loop {
                if waited {
                    tokio::time::sleep(interval).await;
                }
                waited = true;
                let value = match read(&store, &id).await {
                    Ok(Some(value)) => value,
                    Ok(None) => {
                        let data = json!({ "error": missing(&id) }).to_string();
                        let event = Event::default().event("missing").data(data);
                        return Some((Ok::<_, Infallible>(event), Next::Done));
                    }
                    // Redis unreachable for now: said, and tried again.
                    Err(e) => {
                        let data = json!({ "error": e }).to_string();
                        let event = Event::default().event("trouble").data(data);
                        let next = Next::After(last.unwrap_or_default());
                        return Some((Ok(event), next));
                    }
                };
                let text = value.to_string();
                if last.as_deref() == Some(text.as_str()) {
                    continue;
                }
                let done = value["status"].as_str().is_some_and(|s| s != "running");
                let event = Event::default().event("workflow").data(&text);
                let next = if done { Next::Done } else { Next::After(text) };
                return Some((Ok(event), next));
            }
        }
    });
    sse(stream, app.interval)
}

fn sse(
    stream: impl Stream<Item = Result<Event, Infallible>> + Send + 'static,
    interval: Duration,
) -> Response {
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(interval * 15))
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(graph: &[(&str, &[&str])], expect: &[usize]) {
        let names: Vec<&str> = graph.iter().map(|(n, _)| *n).collect();
        let parents: Vec<Vec<&str>> = graph.iter().map(|(_, p)| p.to_vec()).collect();
        assert_eq!(layers(&parents, &names), expect, "{graph:?}");
    }

    #[test]
    fn a_node_is_one_layer_below_its_deepest_parent() {
        check(&[("a", &[])], &[0]);
        // A chain.
        check(&[("a", &[]), ("b", &["a"]), ("c", &["b"])], &[0, 1, 2]);
        // A group and its chord.
        check(
            &[
                ("root", &[]),
                ("x", &["root"]),
                ("y", &["root"]),
                ("join", &["x", "y"]),
            ],
            &[0, 1, 1, 2],
        );
        // A short and a long branch into one node: the long one counts.
        check(
            &[("a", &[]), ("b", &["a"]), ("c", &["b"]), ("d", &["a", "c"])],
            &[0, 1, 2, 3],
        );
        // Children listed before their parents.
        check(&[("c", &["b"]), ("b", &["a"]), ("a", &[])], &[2, 1, 0]);
        // Two roots.
        check(&[("a", &[]), ("b", &[]), ("c", &["b"])], &[0, 0, 1]);
    }

    #[test]
    fn what_cannot_pass_the_submit_still_gets_a_layer() {
        // A parent that is not a node.
        check(&[("a", &["ghost"])], &[0]);
        // A cycle: its nodes are never released, and stay at layer 0.
        check(&[("a", &["b"]), ("b", &["a"])], &[0, 0]);
    }

    #[test]
    fn the_nodes_that_need_a_look_are_listed_first() {
        let mut statuses = [
            "waiting",
            "succeeded",
            "cancelled",
            "queued",
            "failed",
            "running",
        ];
        statuses.sort_by_key(|s| listing_rank(s));
        assert_eq!(
            statuses,
            [
                "running",
                "failed",
                "queued",
                "cancelled",
                "succeeded",
                "waiting"
            ]
        );
    }
}
