//! `tandem events`: the lifecycle events of tasks (submitted, started,
//! progress, retried, succeeded, failed, dead_lettered, cancelled, expired,
//! requeued, released), from every class's events stream: the latest ones, then, with
//! `--follow`, each new one as it is written.

use std::process::ExitCode;

use tandem_shared::store::Store;
use tandem_shared::wire::TaskEvent;
use tandem_shared::{Class, Config, TaskId};

use super::errors::Usage;
use super::table;

/// The event names the scripts write.
const EVENT_NAMES: &[&str] = &[
    "submitted",
    "started",
    "progress",
    "retried",
    "succeeded",
    "failed",
    "dead_lettered",
    "cancelled",
    "expired",
    "requeued",
    "released",
];

/// How long one blocking read waits before it re-arms.
const FOLLOW_BLOCK_MS: u64 = 2_000;

#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    /// Keep printing new events as they come (Ctrl-C to stop).
    #[arg(long, short)]
    pub follow: bool,
    /// Only events of tasks of these kinds (repeatable).
    #[arg(long)]
    pub kind: Vec<String>,
    /// Only these classes' streams (repeatable; default: all four).
    #[arg(long)]
    pub class: Vec<Class>,
    /// Only events of this task.
    #[arg(long)]
    pub task: Option<TaskId>,
    /// Only events of these names (repeatable): submitted, started,
    /// progress, retried, succeeded, failed, dead_lettered, cancelled,
    /// expired, requeued, released.
    #[arg(long)]
    pub event: Vec<String>,
    /// How many of the latest events to print first (before following).
    #[arg(long, short = 'n', default_value_t = 20)]
    pub count: usize,
    /// One JSON object per line instead of text.
    #[arg(long)]
    pub json: bool,
}

/// What an event must match to be printed.
#[derive(Debug)]
struct Filter {
    kinds: Vec<String>,
    task: Option<TaskId>,
    events: Vec<String>,
}

impl Filter {
    fn admits(&self, event: &TaskEvent) -> bool {
        (self.kinds.is_empty() || event.kind.as_ref().is_some_and(|k| self.kinds.contains(k)))
            && self.task.is_none_or(|task| event.id == Some(task))
            && (self.events.is_empty() || self.events.contains(&event.event))
    }
}

pub(crate) async fn run(config: &Config, args: EventsArgs) -> anyhow::Result<ExitCode> {
    for name in &args.event {
        if !EVENT_NAMES.contains(&name.as_str()) {
            return Err(Usage(format!(
                "--event {name:?} is no event; the events are {}",
                EVENT_NAMES.join(", ")
            ))
            .into());
        }
    }
    let classes = if args.class.is_empty() {
        Class::ALL.to_vec()
    } else {
        args.class.clone()
    };
    let filter = Filter {
        kinds: args.kind.clone(),
        task: args.task,
        events: args.event.clone(),
    };
    let store = Store::connect_retrying(config).await?;
    if !config.events {
        eprintln!(
            "note: events = false in this configuration; workers and producers configured alike write none"
        );
    }
    // The latest events over all streams; a filter applies after, so a
    // narrow filter may print fewer.
    let (recent, mut cursor) = store.recent_events(&classes, args.count).await?;
    for event in recent.iter().filter(|e| filter.admits(e)) {
        print_event(event, args.json);
    }
    if !args.follow {
        return Ok(ExitCode::SUCCESS);
    }
    let mut conn = store.blocking_connection(FOLLOW_BLOCK_MS).await?;
    loop {
        let (events, next) = store
            .follow_events(&mut conn, &cursor, FOLLOW_BLOCK_MS, 1_000)
            .await?;
        cursor = next;
        for event in events.iter().filter(|e| filter.admits(e)) {
            print_event(event, args.json);
        }
    }
}

fn print_event(event: &TaskEvent, json: bool) {
    use std::io::Write;
    let line = if json {
        event_json(event).to_string()
    } else {
        event_text(event)
    };
    // A closed pipe (`| head`) ends the output, not the tool with a panic.
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
        std::process::exit(0);
    }
}

fn event_json(event: &TaskEvent) -> serde_json::Value {
    serde_json::json!({
        "entry": event.entry_id,
        "event": event.event,
        "id": event.id.map(|i| i.to_string()),
        "kind": event.kind,
        "class": event.class.map(|c| c.to_string()),
        "worker": event.worker,
        "device": event.device,
        "attempt": event.attempt,
        "at_ms": event.at_ms,
        "error_code": event.error_code.as_ref().map(|c| c.as_str().to_owned()),
        "retry_at_ms": event.retry_at_ms,
        "dead_letter": event.dead_letter,
        "progress": event.progress,
        "progress_msg": event.progress_msg,
        "parent_node": event.parent_node,
    })
}

/// `12:00:01.250  started        <id>  echo  cpu  attempt 1  w1 on cpu`.
fn event_text(event: &TaskEvent) -> String {
    let dash = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
    let mut text = format!(
        "{}  {:<13}  {}  {}  {}",
        event.at_ms.map_or_else(|| "-".to_owned(), table::time),
        event.event,
        dash(event.id.map(|i| i.to_string())),
        dash(event.kind.clone()),
        dash(event.class.map(|c| c.to_string())),
    );
    if let Some(attempt) = event.attempt {
        text.push_str(&format!("  attempt {attempt}"));
    }
    if let Some(worker) = &event.worker {
        text.push_str(&format!("  {worker} on {}", dash(event.device.clone())));
    }
    if let Some(code) = &event.error_code {
        text.push_str(&format!("  {code}"));
    }
    if let Some(progress) = event.progress {
        text.push_str(&format!("  {:.1} %", progress * 100.0));
        if let Some(message) = event.progress_msg.as_ref().filter(|m| !m.is_empty()) {
            text.push_str(&format!(" {message}"));
        }
    }
    if let Some(at) = event.retry_at_ms {
        text.push_str(&format!("  retry at {}", table::time(at)));
    }
    if let Some(dead) = &event.dead_letter {
        text.push_str(&format!("  dead letter {dead}"));
    }
    if let Some(parent) = &event.parent_node {
        text.push_str(&format!("  after {parent}"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(name: &str, kind: &str) -> TaskEvent {
        TaskEvent {
            entry_id: "1-0".into(),
            event: name.into(),
            id: Some(TaskId::new()),
            kind: Some(kind.into()),
            class: Some(Class::Cpu),
            ..TaskEvent::default()
        }
    }

    #[test]
    fn a_filter_admits_what_every_given_condition_names() {
        let echo = event("started", "echo");
        let open = Filter {
            kinds: vec![],
            task: None,
            events: vec![],
        };
        assert!(open.admits(&echo));
        let by_kind = Filter {
            kinds: vec!["noop".into()],
            task: None,
            events: vec![],
        };
        assert!(!by_kind.admits(&echo));
        assert!(by_kind.admits(&event("started", "noop")));
        let by_task = Filter {
            kinds: vec![],
            task: echo.id,
            events: vec!["started".into()],
        };
        assert!(by_task.admits(&echo));
        assert!(!by_task.admits(&event("started", "echo")));
        assert!(!by_task.admits(&TaskEvent {
            event: "succeeded".into(),
            ..echo.clone()
        }));
    }

    #[test]
    fn the_text_line_says_what_the_event_carries() {
        let mut progress = event("progress", "monte_carlo");
        progress.progress = Some(0.425);
        progress.progress_msg = Some("step 3 of 7".into());
        progress.worker = Some("w1".into());
        progress.device = Some("cpu".into());
        let text = event_text(&progress);
        assert!(text.contains("progress"), "{text}");
        assert!(text.contains("monte_carlo  cpu"), "{text}");
        assert!(text.contains("42.5 % step 3 of 7"), "{text}");
        assert!(text.contains("w1 on cpu"), "{text}");
    }
}
