//! The dashboard's write actions: requeue or purge a dead letter, cancel a
//! task or a workflow, pause or resume a class, a class's priority or a kind. Each needs `Authorization: Bearer <token>` with the token the
//! dashboard was started with; in `--read-only` mode there is none and
//! every action is refused.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use serde_json::json;
use tandem_shared::flow::PauseTarget;
use tandem_shared::store::{CancelOutcome, WorkflowCancel};
use tandem_shared::{Class, TaskId};

use super::{Shared, error};

/// `None` when the request may write, else the refusal.
fn refused(app: &Shared, headers: &HeaderMap) -> Option<Response> {
    let Some(token) = app.token.as_deref() else {
        return Some(error(
            StatusCode::FORBIDDEN,
            "the dashboard runs --read-only: no write actions".into(),
        ));
    };
    let sent = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match sent {
        Some(sent) if constant_time_eq(sent.as_bytes(), token.as_bytes()) => None,
        Some(_) => Some(error(StatusCode::UNAUTHORIZED, "wrong token".into())),
        None => Some(error(
            StatusCode::UNAUTHORIZED,
            "a write needs the dashboard's token (Authorization: Bearer <token>)".into(),
        )),
    }
}

/// Compares without stopping at the first difference, so that timing does
/// not tell how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn class_of(text: &str) -> Result<Class, String> {
    text.parse().map_err(|e| format!("class: {e}"))
}

pub(super) async fn requeue(
    State(app): State<Shared>,
    headers: HeaderMap,
    Path((class, id)): Path<(String, String)>,
) -> Response {
    if let Some(refusal) = refused(&app, &headers) {
        return refusal;
    }
    let class = match class_of(&class) {
        Ok(class) => class,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    match app.store.requeue_dead(class, &id).await {
        Ok(Some((task, entry))) => Json(json!({
            "requeued": id,
            "task": task.map(|t| t.to_string()),
            "entry": entry,
        }))
        .into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            format!("no dead letter {id} in {class}"),
        ),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

pub(super) async fn purge(
    State(app): State<Shared>,
    headers: HeaderMap,
    Path((class, id)): Path<(String, String)>,
) -> Response {
    if let Some(refusal) = refused(&app, &headers) {
        return refusal;
    }
    let class = match class_of(&class) {
        Ok(class) => class,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    match app
        .store
        .purge_dead(class, Some(std::slice::from_ref(&id)))
        .await
    {
        Ok(0) => error(
            StatusCode::NOT_FOUND,
            format!("no dead letter {id} in {class}"),
        ),
        Ok(n) => Json(json!({ "purged": n })).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// The write's token checked, then `id` parsed as the id of a `what`
/// (a task or a workflow): the refusal or the 400 as the response.
fn guarded_id(
    app: &Shared,
    headers: &HeaderMap,
    id: &str,
    what: &str,
) -> Result<TaskId, Box<Response>> {
    if let Some(refusal) = refused(app, headers) {
        return Err(Box::new(refusal));
    }
    id.parse::<TaskId>().map_err(|_| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            format!("{what} id {id:?} is not a {what} id"),
        ))
    })
}

pub(super) async fn cancel(
    State(app): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let id = match guarded_id(&app, &headers, &id, "task") {
        Ok(id) => id,
        Err(refusal) => return *refusal,
    };
    match app.store.cancel(&id).await {
        Ok(outcome) => {
            let said = match outcome {
                CancelOutcome::Cancelled => "cancelled",
                CancelOutcome::Requested => "cancel requested",
                CancelOutcome::AlreadyFinished(_) => "already finished",
                CancelOutcome::NotFound => {
                    return error(StatusCode::NOT_FOUND, format!("no task {id}"));
                }
            };
            Json(json!({ "task": id.to_string(), "outcome": said })).into_response()
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// Cancels every node of a workflow that has not finished
/// (`tandem flow cancel`).
pub(super) async fn cancel_workflow(
    State(app): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let id = match guarded_id(&app, &headers, &id, "workflow") {
        Ok(id) => id,
        Err(refusal) => return *refusal,
    };
    match app.store.cancel_workflow(&id).await {
        Ok(WorkflowCancel::NotFound) => error(StatusCode::NOT_FOUND, format!("no workflow {id}")),
        Ok(WorkflowCancel::Finished(status)) => Json(json!({
            "workflow": id.to_string(),
            "outcome": "already finished",
            "status": status,
        }))
        .into_response(),
        Ok(WorkflowCancel::Cancelled { ended, asked }) => Json(json!({
            "workflow": id.to_string(),
            "outcome": "cancelled",
            "nodes_cancelled": ended,
            "running_asked_to_stop": asked,
        }))
        .into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// The target of a pause or a resume, as `tandem pause` takes it: a class
/// (`heavy`), a class's priority (`heavy:high`) or a kind (`kind:risk`,
/// in every class).
fn pause_target(text: &str) -> Result<PauseTarget, String> {
    text.parse::<PauseTarget>()
        .map_err(|e| format!("target: {}", e.0))
}

pub(super) async fn pause(
    State(app): State<Shared>,
    headers: HeaderMap,
    Path(target): Path<String>,
) -> Response {
    if let Some(refusal) = refused(&app, &headers) {
        return refusal;
    }
    let target = match pause_target(&target) {
        Ok(target) => target,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    match app.store.pause(&target, Class::ALL).await {
        Ok(newly) => Json(json!({
            "paused": target.to_string(),
            "already": newly == 0,
        }))
        .into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

pub(super) async fn resume(
    State(app): State<Shared>,
    headers: HeaderMap,
    Path(target): Path<String>,
) -> Response {
    if let Some(refusal) = refused(&app, &headers) {
        return refusal;
    }
    let target = match pause_target(&target) {
        Ok(target) => target,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    match app.store.resume(&target, Class::ALL).await {
        Ok((0, _)) => error(StatusCode::NOT_FOUND, format!("{target} is not paused")),
        Ok((_, released)) => Json(json!({
            "resumed": target.to_string(),
            "released": released,
        }))
        .into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}
