//! `tandem dashboard`: a web page for the fleet, the queues, tasks by
//! state, workflows, dead letters, alerts and schedules, served by the binary itself
//! (axum; the page, its script and its style are embedded with
//! `include_str!`, so nothing is built with Node) and live through
//! server-sent events: one snapshot a second, read by one task for every
//! open page.
//!
//! - this module: the flags, the routes and the snapshot.
//! - `actions`: the write actions (requeue, purge, cancel a task or a
//!   workflow, pause, resume), each checked against the token; none in
//!   `--read-only` mode.
//! - `workflows`: the recent workflows in the snapshot, a workflow's page
//!   (its graph by layer, its nodes, the sinks' results) and its live
//!   stream.
//! - `assets/`: `index.html`, `app.js`, `style.css`.
//!
//! Bound to loopback by default. Reads go through `Store` as every view
//! does; the only writes are the actions.

mod actions;
mod workflows;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use clap::Args;
use futures_util::stream::Stream;
use serde_json::{Value, json};
use tandem_shared::flow::PauseTarget;
use tandem_shared::store::{IndexState, Store};
use tandem_shared::{Class, Config, TaskId};

#[derive(Debug, Args)]
pub struct DashboardArgs {
    /// Where to listen. Loopback by default: put a proxy with TLS in
    /// front before exposing it.
    #[arg(long, default_value = "127.0.0.1:9470")]
    pub listen: SocketAddr,
    /// The token write actions (requeue, purge, cancel, pause) must send as
    /// `Authorization: Bearer <token>`. Needed unless --read-only.
    /// Overrides the `dashboard_token` setting (file or
    /// `TANDEM_DASHBOARD_TOKEN`).
    #[arg(long)]
    pub token: Option<String>,
    /// No write actions at all: the page shows, and changes nothing.
    #[arg(long)]
    pub read_only: bool,
    /// How often the live snapshot is sent, ms.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(100..=60_000))]
    pub interval_ms: u64,
}

/// What every handler shares.
#[derive(Debug)]
struct App {
    store: Store,
    /// `None` in read-only mode.
    token: Option<String>,
    interval: Duration,
    /// The newest snapshot, sent to every open page (one Redis read per
    /// interval however many pages are open).
    latest: tokio::sync::watch::Receiver<Arc<Value>>,
}

type Shared = Arc<App>;

/// How many tasks of each state, dead letters and alerts a snapshot lists.
const LISTED: usize = 25;

pub(crate) async fn run(config: &Config, args: DashboardArgs) -> anyhow::Result<ExitCode> {
    let from_config = Some(config.dashboard_token.expose().to_owned()).filter(|t| !t.is_empty());
    let token = match (args.read_only, args.token.or(from_config)) {
        (true, _) => None,
        (false, Some(token)) if token.len() >= 8 => Some(token),
        (false, Some(_)) => anyhow::bail!("--token (or dashboard_token): at least 8 characters"),
        (false, None) => anyhow::bail!(
            "--token (or the dashboard_token setting, TANDEM_DASHBOARD_TOKEN) is needed for \
             the write actions; \
             or run with --read-only"
        ),
    };
    let store = Store::connect_retrying(config).await?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {} (--listen): {e}", args.listen))?;
    let interval = Duration::from_millis(args.interval_ms);
    let first = snapshot(&store, token.is_none())
        .await
        .unwrap_or_else(|e| json!({ "error": e }));
    let (publish, latest) = tokio::sync::watch::channel(Arc::new(first));
    let app = Arc::new(App {
        store: store.clone(),
        token,
        interval,
        latest,
    });
    let read_only = app.token.is_none();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            // Only while someone watches: an idle dashboard costs Redis
            // nothing.
            if publish.receiver_count() <= 1 {
                continue;
            }
            let value = snapshot(&store, read_only)
                .await
                .unwrap_or_else(|e| json!({ "error": e }));
            publish.send_replace(Arc::new(value));
        }
    });
    eprintln!(
        "tandem dashboard: http://{}/{}",
        listener.local_addr()?,
        if read_only { " (read-only)" } else { "" }
    );
    axum::serve(listener, router(app)).await?;
    Ok(ExitCode::SUCCESS)
}

fn router(app: Shared) -> Router {
    Router::new()
        .route("/", get(page))
        .route(
            "/app.js",
            get(|| {
                asset(
                    "text/javascript; charset=utf-8",
                    include_str!("assets/app.js"),
                )
            }),
        )
        .route(
            "/style.css",
            get(|| asset("text/css; charset=utf-8", include_str!("assets/style.css"))),
        )
        .route("/api/snapshot", get(current))
        .route("/api/live", get(live))
        .route("/api/tasks/{id}", get(task))
        .route("/api/dlq/{class}/{id}/requeue", post(actions::requeue))
        .route("/api/dlq/{class}/{id}/purge", post(actions::purge))
        .route("/api/tasks/{id}/cancel", post(actions::cancel))
        .route("/api/workflows/{id}", get(workflows::workflow))
        .route("/api/workflows/{id}/live", get(workflows::live))
        .route("/api/workflows/{id}/cancel", post(actions::cancel_workflow))
        .route("/api/pause/{target}", post(actions::pause))
        .route("/api/resume/{target}", post(actions::resume))
        .route("/metrics", get(metrics))
        .with_state(app)
}

/// The page, with a snapshot read now inside it, so that it shows the
/// fleet at once (before its event stream connects) and a screenshot
/// taken at load shows data.
async fn page(State(app): State<Shared>) -> Response {
    let value = snapshot(&app.store, app.token.is_none())
        .await
        .unwrap_or_else(|e| json!({ "error": e }));
    // `<` escaped, so that no text in the data can close the script tag.
    let data = value.to_string().replace('<', "\\u003c");
    let html = include_str!("assets/index.html").replace(
        "<!--SNAPSHOT-->",
        &format!("<script id=\"initial\" type=\"application/json\">{data}</script>"),
    );
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response()
}

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn current(State(app): State<Shared>) -> Json<Value> {
    let value = snapshot(&app.store, app.token.is_none())
        .await
        .unwrap_or_else(|e| json!({ "error": e }));
    Json(value)
}

/// A snapshot read now, then each one the shared reader publishes, as
/// server-sent events.
async fn live(State(app): State<Shared>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let mut latest = app.latest.clone();
    latest.borrow_and_update();
    let now = snapshot(&app.store, app.token.is_none())
        .await
        .unwrap_or_else(|e| json!({ "error": e }));
    let first = Event::default().event("snapshot").data(now.to_string());
    let rest = futures_util::stream::unfold(latest, |mut latest| async move {
        latest.changed().await.ok()?;
        let value = Arc::clone(&latest.borrow_and_update());
        let event = Event::default().event("snapshot").data(value.to_string());
        Some((Ok(event), latest))
    });
    let stream =
        futures_util::StreamExt::chain(futures_util::stream::once(async { Ok(first) }), rest);
    Sse::new(stream).keep_alive(KeepAlive::new().interval(app.interval * 15))
}

/// The queue metrics, as `tandem exporter` serves them.
async fn metrics(State(app): State<Shared>) -> Response {
    match crate::exporter::render(&app.store).await {
        Ok(text) => (
            [(header::CONTENT_TYPE, crate::exporter::PROMETHEUS_TEXT)],
            text,
        )
            .into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why).into_response(),
    }
}

/// A task's page: its record, parameters, attempts, progress, shards and
/// result or error.
async fn task(State(app): State<Shared>, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<TaskId>() else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("task id {id:?} is not a task id"),
        );
    };
    let mut record = match app.store.find_record(&id).await {
        Ok(Some(record)) => record,
        Ok(None) => return error(StatusCode::NOT_FOUND, format!("no task {id}")),
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    if let Ok(params) = app.store.task_params(&record).await {
        record.params = params;
    }
    let mut shards = Vec::new();
    for shard in &record.shard_ids {
        if let Ok(Some(found)) = app.store.find_record(shard).await {
            shards.push(json!({
                "id": shard.to_string(),
                "status": found.status.map(|s| s.to_string()),
                "device": found.device,
                "worker": found.worker,
            }));
        }
    }
    let mut value = crate::tasks::task_json(&record);
    value["shard_runs"] = Value::Array(shards);
    Json(value).into_response()
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// Everything the page shows, read once for every open page.
async fn snapshot(store: &Store, read_only: bool) -> Result<Value, String> {
    let text = |e: tandem_shared::store::StoreError| e.to_string();
    let workers = store.workers().await.map_err(text)?;
    let queues = store.queue_snapshot().await.map_err(text)?;
    let alerts = store.alerts(LISTED).await.map_err(text)?;
    let dead = store.dead_letters(Class::ALL, LISTED).await.map_err(text)?;
    let schedules = store.list_schedules(Class::ALL).await.map_err(text)?;
    let flows = store.flow_states(Class::ALL).await.map_err(text)?;
    let recent = store.recent_workflows(LISTED).await.map_err(text)?;
    let mut paused = Vec::new();
    let mut kinds = Vec::new();
    for (&class, flow) in Class::ALL.iter().zip(&flows) {
        if flow.paused_since_ms.is_some() {
            paused.push(PauseTarget::Class(class).to_string());
        }
        for (priority, _) in &flow.paused_priorities {
            paused.push(PauseTarget::Priority(class, *priority).to_string());
        }
        for (kind, _) in &flow.paused_kinds {
            let target = PauseTarget::Kind(kind.clone()).to_string();
            if !kinds.contains(&target) {
                kinds.push(target);
            }
        }
    }
    // Classes and their priorities first, then kinds (paused in every class).
    paused.append(&mut kinds);
    let mut tasks = serde_json::Map::new();
    for state in [
        IndexState::Running,
        IndexState::Retrying,
        IndexState::Succeeded,
        IndexState::Failed,
        IndexState::Dead,
        IndexState::Cancelled,
    ] {
        let listed = store
            .tasks_in_state(state, Class::ALL, LISTED, None)
            .await
            .map_err(text)?;
        tasks.insert(
            state.to_string(),
            listed.iter().map(crate::task_list::json).collect(),
        );
    }
    let mut sorted = workers;
    sorted.sort_by(|a, b| (&a.host, &a.device).cmp(&(&b.host, &b.device)));
    let completed: u64 = sorted
        .iter()
        .flat_map(|w| w.metrics.completed.values())
        .sum();
    let at_ms = tandem_shared::clock::now_ms();
    Ok(json!({
        "at_ms": at_ms,
        "read_only": read_only,
        "workers": sorted.iter().map(|w| {
            let mut v = crate::workers::to_json(w);
            v["member"] = json!(member(w));
            v
        }).collect::<Vec<_>>(),
        "completed_total": completed,
        "streams": queues.streams.iter().map(|s| json!({
            "class": s.class.as_str(),
            "priority": s.priority.as_str(),
            "waiting": s.waiting,
            "running": s.pending,
            "consumers": s.consumers,
            "oldest_waiting_ms": s.oldest_waiting_ms,
        })).collect::<Vec<_>>(),
        "classes": queues.classes.iter().map(|c| json!({
            "class": c.class.as_str(),
            "delayed": c.delayed,
            "retrying": c.retrying,
            "dead_letters": c.dead_letters,
        })).collect::<Vec<_>>(),
        "paused": paused,
        "tasks": tasks,
        "workflows": recent
            .iter()
            .map(|w| workflows::summary_json(w, at_ms))
            .collect::<Vec<_>>(),
        "dead_letters": dead.iter().map(|d| json!({
            "id": d.id,
            "class": d.class.as_str(),
            "task_id": d.task_id.map(|t| t.to_string()),
            "kind": d.kind,
            "reason": d.reason,
            "message": d.message,
            "attempts": d.attempts,
            "dead_at_ms": d.dead_at_ms,
        })).collect::<Vec<_>>(),
        "alerts": alerts.iter().map(|a| json!({
            "alert": a.alert.alert,
            "worker": a.alert.worker,
            "device": a.alert.device,
            "stream": a.alert.stream,
            "value": a.alert.value,
            "threshold": a.alert.threshold,
            "message": a.alert.message,
            "at_ms": a.alert.at_ms,
        })).collect::<Vec<_>>(),
        "schedules": schedules.iter().map(|(class, s)| json!({
            "name": s.name,
            "class": class.as_str(),
            "kind": s.kind,
            "cron": s.cron,
            "tz": s.tz,
            "every_ms": s.every_ms,
            "paused": s.paused,
            "next_fire_ms": s.next_fire_ms,
        })).collect::<Vec<_>>(),
    }))
}

/// The fleet's name for a worker (as `/metrics` labels it).
fn member(w: &tandem_shared::wire::WorkerInfo) -> String {
    match w.device_index {
        Some(index) if w.device != "cpu" && w.simulated => format!("sim{index}"),
        Some(index) if w.device != "cpu" => format!("gpu{index}"),
        _ => "cpu".to_owned(),
    }
}
