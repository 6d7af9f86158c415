//! `tandem submit | wait | status | cancel`, and `tandem task`: a task's
//! whole story, from submission through every attempt to its outcome.

use std::process::ExitCode;
use std::time::Duration;

use tandem_shared::wire::TaskRecord;
use tandem_shared::{Class, Config, Priority, Status, TaskId, exit, msgpack};

use super::errors::{Usage, for_the_shell};
use super::table;
use crate::{CancelOutcome, Producer, Task, TaskOutcome};

#[derive(Debug, clap::Args)]
pub struct SubmitArgs {
    /// The task's kind, e.g. noop, sleep, echo, fail.
    pub kind: String,
    /// Parameters as JSON, sent as MessagePack, e.g. '{"ms": 100}'.
    #[arg(long, default_value = "null")]
    pub params: String,
    #[arg(long, default_value = "normal")]
    pub priority: Priority,
    /// The class, when the kind is not built in.
    #[arg(long)]
    pub class: Option<Class>,
    /// Not started within this many ms of submission: expires.
    #[arg(long)]
    pub deadline_ms: Option<u64>,
    /// Submitting again with the same key returns the first task.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    #[arg(long)]
    pub max_attempts: Option<u32>,
    /// Device memory the task needs, in bytes or as a size (512MiB, 2GiB,
    /// 8GB): routing sends it only to GPUs with that much free. Default:
    /// the kind's estimate.
    #[arg(long, value_parser = parse_memory)]
    pub memory_bytes: Option<u64>,
    /// Wait for the outcome and print it.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits, in ms.
    #[arg(long, default_value_t = 60_000)]
    pub timeout_ms: u64,
}

#[derive(Debug, clap::Args)]
pub struct WaitArgs {
    pub id: TaskId,
    #[arg(long, default_value_t = 60_000)]
    pub timeout_ms: u64,
}

#[derive(Debug, clap::Args)]
pub struct TaskArgs {
    pub id: TaskId,
}

#[derive(Debug, clap::Args)]
pub struct TaskViewArgs {
    pub id: TaskId,
    /// One JSON object instead of text, for scripts.
    #[arg(long)]
    pub json: bool,
}

pub(crate) async fn submit(config: &Config, args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let json: serde_json::Value = serde_json::from_str(&args.params)
        .map_err(|e| Usage(format!("--params is not valid JSON: {e}")))?;
    let mut task = Task::new(args.kind, &json)?.priority(args.priority);
    if let Some(class) = args.class {
        task = task.class(class);
    }
    if let Some(ms) = args.deadline_ms {
        task = task.deadline(Duration::from_millis(ms));
    }
    if let Some(key) = args.idempotency_key {
        task = task.idempotency_key(key);
    }
    if let Some(n) = args.max_attempts {
        task = task.max_attempts(n);
    }
    if let Some(bytes) = args.memory_bytes {
        task = task.memory_bytes(bytes);
    }
    let producer = Producer::connect(config).await?;
    let id = producer.submit(task).await.map_err(for_the_shell)?;
    if !args.wait {
        println!("{id}");
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("submitted {id}");
    let outcome = producer
        .wait(id, Duration::from_millis(args.timeout_ms))
        .await?;
    print_outcome(&outcome);
    Ok(exit_code(&outcome))
}

pub(crate) async fn wait(config: &Config, args: WaitArgs) -> anyhow::Result<ExitCode> {
    let producer = Producer::connect(config).await?;
    let outcome = producer
        .wait(args.id, Duration::from_millis(args.timeout_ms))
        .await?;
    print_outcome(&outcome);
    Ok(exit_code(&outcome))
}

pub(crate) async fn status(config: &Config, args: TaskArgs) -> anyhow::Result<ExitCode> {
    let producer = Producer::connect(config).await?;
    match producer.record(args.id).await? {
        Some(record) => {
            print_record(&record);
            Ok(ExitCode::SUCCESS)
        }
        None => {
            eprintln!(
                "task {} not found (never submitted, or its record expired)",
                args.id
            );
            Ok(ExitCode::from(exit::NOT_FOUND))
        }
    }
}

pub(crate) async fn task(config: &Config, args: TaskViewArgs) -> anyhow::Result<ExitCode> {
    let producer = Producer::connect(config).await?;
    let Some(record) = producer.record(args.id).await? else {
        eprintln!(
            "task {} not found (never submitted, or its record expired)",
            args.id
        );
        return Ok(ExitCode::from(exit::NOT_FOUND));
    };
    let attempts = attempts(&record);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&story_json(&record, &attempts))?
        );
    } else {
        print!("{}", story_text(&record, &attempts));
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn cancel(config: &Config, args: TaskArgs) -> anyhow::Result<ExitCode> {
    let producer = Producer::connect(config).await?;
    let (text, code) = match producer.cancel(args.id).await? {
        CancelOutcome::Cancelled => ("cancelled: it was queued and will never run".to_owned(), 0),
        CancelOutcome::Requested => ("cancel requested: its worker is stopping it".to_owned(), 0),
        CancelOutcome::AlreadyFinished(status) => {
            (format!("already finished: {status}"), exit::ERROR)
        }
        CancelOutcome::NotFound => ("not found".to_owned(), exit::NOT_FOUND),
    };
    println!("{}: {text}", args.id);
    Ok(ExitCode::from(code))
}

fn exit_code(outcome: &TaskOutcome) -> ExitCode {
    if outcome.succeeded() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(exit::TASK_FAILED)
    }
}

/// `--memory-bytes`: plain bytes or a size, read as simulated GPUs' sizes are.
fn parse_memory(text: &str) -> Result<u64, String> {
    tandem_shared::device::parse_size(text)
}

fn print_outcome(outcome: &TaskOutcome) {
    print_record(&outcome.record);
}

/// One run of a task on a worker, from the record's history or, for the run
/// the record itself describes, from its own fields.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
struct Attempt {
    attempt: Option<u32>,
    worker: Option<String>,
    device: Option<String>,
    started_at_ms: Option<u64>,
    finished_at_ms: Option<u64>,
    /// `handed_back`, or the status the attempt ended (or is) in.
    status: Option<String>,
    error_code: Option<String>,
    error_message: Option<String>,
}

/// Every attempt, oldest first. The history holds the finished attempts of a
/// task that needed more than one or did not succeed; the record's own
/// fields describe the latest run, which the history lacks while it runs and
/// when a first attempt succeeded. A history that does not parse (a hand
/// edit) reads as empty rather than hiding the rest of the story.
fn attempts(record: &TaskRecord) -> Vec<Attempt> {
    let history: Vec<serde_json::Value> = record
        .history
        .as_deref()
        .and_then(|h| serde_json::from_str(h).ok())
        .unwrap_or_default();
    let mut attempts: Vec<Attempt> = history.iter().map(attempt_of).collect();
    let latest_listed = attempts
        .iter()
        .any(|a| a.started_at_ms.is_some() && a.started_at_ms == record.started_at_ms);
    if record.started_at_ms.is_some() && !latest_listed {
        attempts.push(Attempt {
            attempt: record.attempt,
            worker: record.worker.clone(),
            device: record.device.clone(),
            started_at_ms: record.started_at_ms,
            finished_at_ms: record.finished_at_ms,
            status: record.status.map(|s| s.to_string()),
            error_code: record.error.as_ref().map(|e| e.code.to_string()),
            error_message: record.error.as_ref().map(|e| e.message.clone()),
        });
    }
    attempts
}

/// One history entry. The scripts write numbers as strings; take either.
fn attempt_of(entry: &serde_json::Value) -> Attempt {
    let text = |name: &str| match &entry[name] {
        serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    Attempt {
        attempt: text("attempt").and_then(|t| t.parse().ok()),
        worker: text("worker"),
        device: text("device"),
        started_at_ms: text("started_at_ms").and_then(|t| t.parse().ok()),
        finished_at_ms: text("finished_at_ms").and_then(|t| t.parse().ok()),
        status: text("status"),
        error_code: text("error_code"),
        error_message: text("error_message"),
    }
}

/// Hand-backs (not failures: the task went back to its stream for another
/// device or worker) and retries (attempts after the first).
fn hand_backs_and_retries(record: &TaskRecord, attempts: &[Attempt]) -> (usize, u32) {
    let hand_backs = attempts
        .iter()
        .filter(|a| a.status.as_deref() == Some("handed_back"))
        .count();
    let highest = attempts
        .iter()
        .filter_map(|a| a.attempt)
        .chain(record.attempt)
        .max()
        .unwrap_or(1);
    (hand_backs, highest.saturating_sub(1))
}

/// The result as JSON where MessagePack maps onto it, else as display text.
fn result_json(record: &TaskRecord) -> serde_json::Value {
    match &record.result {
        Some(bytes) => msgpack::decode::<serde_json::Value>(bytes)
            .unwrap_or_else(|_| serde_json::Value::String(msgpack::to_display(bytes))),
        None => serde_json::Value::Null,
    }
}

fn story_json(record: &TaskRecord, attempts: &[Attempt]) -> serde_json::Value {
    let (hand_backs, retries) = hand_backs_and_retries(record, attempts);
    let text = |v: Option<String>| v.map_or(serde_json::Value::Null, serde_json::Value::from);
    serde_json::json!({
        "id": text(record.id.map(|i| i.to_string())),
        "kind": record.kind,
        "status": text(record.status.map(|s| s.to_string())),
        "submitted": {
            "at_ms": record.submitted_at_ms,
            "producer": record.producer,
            "class": text(record.class.map(|c| c.to_string())),
            "priority": text(record.priority.map(|p| p.to_string())),
            "max_attempts": record.max_attempts,
            "deadline_ms": record.deadline_ms,
        },
        "attempts": attempts,
        "hand_backs": hand_backs,
        "retries": retries,
        "retry_at_ms": record.retry_at_ms,
        "split": {
            "shards": record.shards,
            "shards_done": record.shards_done,
            "shard_ids": record.shard_ids.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "parent": text(record.parent.map(|p| p.to_string())),
            "shard": record.shard,
        },
        "finished_at_ms": record.finished_at_ms,
        "run_us": record.run_us,
        "result": result_json(record),
        "result_bytes": record.result_bytes,
        "error": record.error.as_ref().map(|e| serde_json::json!({
            "code": e.code.to_string(),
            "message": e.message,
        })),
        "dead_letter": record.dead_letter,
        "cancel_requested_at_ms": record.cancel_requested_at_ms,
    })
}

/// The story as text: a heading, what was submitted, a table of attempts,
/// then how it ended (or where it stands).
fn story_text(record: &TaskRecord, attempts: &[Attempt]) -> String {
    let dash = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
    let submitted = record.submitted_at_ms.unwrap_or(0);
    // Attempt times read as offsets from submission: easier to follow
    // than a column of epoch milliseconds.
    let offset = |ms: Option<u64>| {
        ms.map_or_else(
            || "-".to_owned(),
            |ms| format!("+{}", table::age(ms.saturating_sub(submitted))),
        )
    };
    let mut out = format!(
        "task {}  {}  {}\n",
        dash(record.id.map(|i| i.to_string())),
        dash(record.kind.clone()),
        dash(record.status.map(|s| s.to_string())),
    );
    let mut line = |name: &str, value: String| out.push_str(&format!("{name:<12}{value}\n"));
    line(
        "submitted",
        format!(
            "{} by {}, class {}, priority {}, at most {} attempts",
            record.submitted_at_ms.map_or_else(|| "-".to_owned(), utc),
            dash(record.producer.clone()),
            dash(record.class.map(|c| c.to_string())),
            dash(record.priority.map(|p| p.to_string())),
            record.max_attempts.unwrap_or(1),
        ),
    );
    if let Some(deadline) = record.deadline_ms {
        line("deadline", utc(deadline));
    }
    if let Some(shards) = record.shards {
        line(
            "split",
            format!(
                "shards {} of {shards} done",
                record.shards_done.unwrap_or(0)
            ),
        );
    }
    if let (Some(parent), Some(shard)) = (record.parent, record.shard) {
        line("shard of", format!("{parent} (shard {shard})"));
    }
    let (hand_backs, retries) = hand_backs_and_retries(record, attempts);
    line(
        "attempts",
        format!(
            "{} ({}, {})",
            attempts.len(),
            plural(retries as usize, "retry", "retries"),
            plural(hand_backs, "hand-back", "hand-backs"),
        ),
    );
    if let Some(due) = record
        .retry_at_ms
        .filter(|_| record.status == Some(Status::Retrying))
    {
        line("retry due", offset(Some(due)));
    }
    if let Some(ms) = record.cancel_requested_at_ms {
        line("cancel asked", offset(Some(ms)));
    }
    if let Some(ms) = record.finished_at_ms.filter(|_| record.is_terminal()) {
        line(
            "finished",
            format!(
                "{} ({} after submission)",
                utc(ms),
                table::age(ms.saturating_sub(submitted))
            ),
        );
    }
    if let Some(error) = &record.error.as_ref().filter(|_| record.is_terminal()) {
        line("error", format!("{}: {}", error.code, error.message));
    }
    if let Some(result) = &record.result {
        line("result", msgpack::to_display(result));
    } else if record.result_left_out() {
        line(
            "result",
            format!("{} bytes (not shown)", record.result_bytes.unwrap_or(0)),
        );
    }
    if let Some(dead) = &record.dead_letter {
        line("dead letter", dead.clone());
    }
    if !attempts.is_empty() {
        out.push('\n');
        out.push_str(&attempts_table(attempts, offset));
    }
    out
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn attempts_table(attempts: &[Attempt], offset: impl Fn(Option<u64>) -> String) -> String {
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_owned());
    let mut rows = vec![
        [
            "attempt", "worker", "device", "started", "finished", "took", "status", "error",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for a in attempts {
        let took = match (a.started_at_ms, a.finished_at_ms) {
            (Some(s), Some(f)) => table::age(f.saturating_sub(s)),
            _ => "-".to_owned(),
        };
        let error = match (&a.error_code, &a.error_message) {
            (Some(code), Some(message)) => format!("{code}: {message}"),
            (Some(code), None) => code.clone(),
            _ => "-".to_owned(),
        };
        rows.push(vec![
            a.attempt.map_or_else(|| "-".to_owned(), |n| n.to_string()),
            dash(&a.worker),
            dash(&a.device),
            offset(a.started_at_ms),
            offset(a.finished_at_ms),
            took,
            dash(&a.status),
            error,
        ]);
    }
    table::render(&rows)
}

/// Milliseconds since the epoch as `2026-01-31 12:00:05.250 UTC`: the
/// tool has no calendar crate, and the civil-date arithmetic is short
/// (Howard Hinnant's `civil_from_days`).
fn utc(ms: u64) -> String {
    let days = (ms / 86_400_000) as i64;
    let in_day = ms % 86_400_000;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{:03} UTC",
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1_000 % 60,
        in_day % 1_000
    )
}

/// A record as `field  value` lines, the result rendered as JSON.
fn print_record(record: &TaskRecord) {
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
    let time = |v: Option<u64>| v.map(|ms| ms.to_string());
    let mut rows = vec![vec!["field".to_owned(), "value".to_owned()]];
    let mut row = |name: &str, value: String| rows.push(vec![name.to_owned(), value]);
    row("id", opt(record.id.map(|i| i.to_string())));
    row("status", opt(record.status.map(|s| s.to_string())));
    row("kind", opt(record.kind.clone()));
    row("class", opt(record.class.map(|c| c.to_string())));
    row("priority", opt(record.priority.map(|p| p.to_string())));
    row(
        "attempt",
        opt(record
            .attempt
            .map(|a| format!("{a} of {}", record.max_attempts.unwrap_or(1)))),
    );
    row("worker", opt(record.worker.clone()));
    row("device", opt(record.device.clone()));
    if let Some(shards) = record.shards {
        row(
            "shards",
            format!("{} of {shards} done", record.shards_done.unwrap_or(0)),
        );
    }
    if let (Some(parent), Some(shard)) = (record.parent, record.shard) {
        row("shard of", format!("{parent} (shard {shard})"));
    }
    row("submitted_at_ms", opt(time(record.submitted_at_ms)));
    if let Some(deadline) = record.deadline_ms {
        row("deadline_ms", deadline.to_string());
    }
    row("started_at_ms", opt(time(record.started_at_ms)));
    row("finished_at_ms", opt(time(record.finished_at_ms)));
    if let (Some(s), Some(f)) = (record.submitted_at_ms, record.finished_at_ms) {
        row("total", table::age(f.saturating_sub(s)));
    }
    if let Some(us) = record.run_us {
        row("run", format!("{} ms", table::ms(us as f64 / 1000.0)));
    }
    if let Some(error) = &record.error {
        row("error", format!("{}: {}", error.code, error.message));
    }
    if let Some(result) = &record.result {
        row("result", msgpack::to_display(result));
    } else if record.result_left_out() {
        row(
            "result",
            format!("{} bytes (not shown)", record.result_bytes.unwrap_or(0)),
        );
    }
    print!("{}", table::render(&rows));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(entries: &[serde_json::Value]) -> Option<String> {
        Some(serde_json::Value::from(entries.to_vec()).to_string())
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00.000 UTC");
        assert_eq!(utc(951_782_400_123), "2000-02-29 00:00:00.123 UTC");
        assert_eq!(utc(1_767_225_599_999), "2025-12-31 23:59:59.999 UTC");
    }

    #[test]
    fn a_first_attempt_that_succeeded_comes_from_the_record() {
        let record = TaskRecord {
            status: Some(Status::Succeeded),
            attempt: Some(1),
            worker: Some("w1".into()),
            started_at_ms: Some(10),
            finished_at_ms: Some(20),
            ..TaskRecord::default()
        };
        let got = attempts(&record);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].worker.as_deref(), Some("w1"));
        assert_eq!(got[0].status.as_deref(), Some("succeeded"));
        assert_eq!(hand_backs_and_retries(&record, &got), (0, 0));
    }

    #[test]
    fn history_and_the_running_attempt_are_listed_once_each() {
        let failed = serde_json::json!({"attempt": "1", "started_at_ms": "10",
            "finished_at_ms": 20, "status": "failed", "worker": "w1", "device": "cpu",
            "error_code": "E_FLAKY", "error_message": "timed out"});
        let handed = serde_json::json!({"attempt": "2", "started_at_ms": "30",
            "finished_at_ms": 40, "status": "handed_back", "worker": "w2"});
        let mut record = TaskRecord {
            status: Some(Status::Running),
            attempt: Some(2),
            worker: Some("w3".into()),
            started_at_ms: Some(50),
            history: history(&[failed.clone(), handed.clone()]),
            ..TaskRecord::default()
        };
        let got = attempts(&record);
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].error_code.as_deref(), Some("E_FLAKY"));
        assert_eq!(got[0].finished_at_ms, Some(20));
        assert_eq!(got[1].status.as_deref(), Some("handed_back"));
        assert_eq!(got[2].status.as_deref(), Some("running"));
        assert_eq!(hand_backs_and_retries(&record, &got), (1, 1));

        // Once it finished, its history has the last attempt too.
        let done = serde_json::json!({"attempt": "2", "started_at_ms": "50",
            "finished_at_ms": 60, "status": "succeeded", "worker": "w3"});
        record.status = Some(Status::Succeeded);
        record.history = history(&[failed, handed, done]);
        assert_eq!(attempts(&record).len(), 3);
        let text = story_text(&record, &attempts(&record));
        assert!(text.contains("3 (1 retry, 1 hand-back)"), "{text}");
        assert!(text.contains("E_FLAKY: timed out"), "{text}");
    }

    #[test]
    fn a_history_that_does_not_parse_reads_as_empty() {
        let record = TaskRecord {
            history: Some("not json".into()),
            ..TaskRecord::default()
        };
        assert!(attempts(&record).is_empty());
    }
}
