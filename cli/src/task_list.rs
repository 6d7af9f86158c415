//! `tandem tasks --status <state>`: the newest tasks in a state, read from
//! the state index (shared's `store::index`) without a scan.

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Args;
use tandem_shared::store::{IndexState, Indexed, Store};
use tandem_shared::{Class, Config};

use super::table;

#[derive(Debug, Args)]
pub struct TasksArgs {
    /// The state: running, succeeded, failed, cancelled, expired or dead.
    #[arg(long)]
    pub status: IndexState,
    /// Only tasks of this kind.
    #[arg(long)]
    pub kind: Option<String>,
    /// Only tasks of this class.
    #[arg(long)]
    pub class: Option<Class>,
    /// At most this many tasks (newest first).
    #[arg(long, default_value_t = 20)]
    pub count: usize,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub(crate) async fn run(config: &Config, args: TasksArgs) -> anyhow::Result<ExitCode> {
    let store = Store::connect_retrying(config).await?;
    let classes: Vec<Class> = match args.class {
        Some(class) => vec![class],
        None => Class::ALL.to_vec(),
    };
    let tasks = store
        .tasks_in_state(args.status, &classes, args.count, args.kind.as_deref())
        .await?;
    if args.json {
        for task in &tasks {
            println!("{}", json(task));
        }
        return Ok(ExitCode::SUCCESS);
    }
    if tasks.is_empty() {
        println!("no {} tasks", args.status);
        return Ok(ExitCode::SUCCESS);
    }
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let mut rows = vec![
        ["id", "class", "kind", "since", "attempt", "worker", "error"]
            .map(String::from)
            .to_vec(),
    ];
    for task in &tasks {
        let r = &task.record;
        rows.push(vec![
            r.id.map(|id| id.to_string()).unwrap_or_default(),
            r.class.map(|c| c.to_string()).unwrap_or_default(),
            r.kind.clone().unwrap_or_default(),
            table::age(now_ms.saturating_sub(task.at_ms)),
            r.attempt.map(|a| a.to_string()).unwrap_or_default(),
            r.worker.clone().unwrap_or_default(),
            r.error
                .as_ref()
                .map(|e| e.code.to_string())
                .unwrap_or_default(),
        ]);
    }
    print!("{}", table::render(&rows));
    Ok(ExitCode::SUCCESS)
}

/// A task as the dashboard's API and `--json` show it.
pub(crate) fn json(task: &Indexed) -> serde_json::Value {
    let r = &task.record;
    serde_json::json!({
        "id": r.id.map(|id| id.to_string()),
        "status": r.status.map(|s| s.to_string()),
        "class": r.class.map(|c| c.to_string()),
        "priority": r.priority.map(|p| p.to_string()),
        "kind": r.kind,
        "since_ms": task.at_ms,
        "attempt": r.attempt,
        "worker": r.worker,
        "device": r.device,
        "submitted_at_ms": r.submitted_at_ms,
        "started_at_ms": r.started_at_ms,
        "finished_at_ms": r.finished_at_ms,
        "error_code": r.error.as_ref().map(|e| e.code.to_string()),
        "error_message": r.error.as_ref().map(|e| e.message.clone()),
        "dead_letter": r.dead_letter,
    })
}
