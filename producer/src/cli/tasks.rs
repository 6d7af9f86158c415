//! `tandem submit | wait | status | cancel`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use tandem_shared::wire::TaskRecord;
use tandem_shared::{Class, Config, Priority, TaskId, msgpack};

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

pub(crate) async fn submit(config: &Config, args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let json: serde_json::Value =
        serde_json::from_str(&args.params).context("--params is not valid JSON")?;
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
    let producer = Producer::connect(config).await?;
    let id = producer.submit(task).await?;
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
            Ok(ExitCode::from(3))
        }
    }
}

pub(crate) async fn cancel(config: &Config, args: TaskArgs) -> anyhow::Result<ExitCode> {
    let producer = Producer::connect(config).await?;
    let (text, code) = match producer.cancel(args.id).await? {
        CancelOutcome::Cancelled => ("cancelled: it was queued and will never run".to_owned(), 0),
        CancelOutcome::Requested => ("cancel requested: its worker is stopping it".to_owned(), 0),
        CancelOutcome::AlreadyFinished(status) => (format!("already finished: {status}"), 1),
        CancelOutcome::NotFound => ("not found".to_owned(), 3),
    };
    println!("{}: {text}", args.id);
    Ok(ExitCode::from(code))
}

fn exit_code(outcome: &TaskOutcome) -> ExitCode {
    if outcome.succeeded() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn print_outcome(outcome: &TaskOutcome) {
    print_record(&outcome.record);
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
