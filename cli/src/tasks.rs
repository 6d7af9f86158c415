//! `tandem submit | wait | status | cancel`, and `tandem task`: a task's
//! whole story, from submission through every attempt to its outcome.

use std::process::ExitCode;
use std::time::Duration;

use futures_util::StreamExt;
use tandem_shared::store::Store;
use tandem_shared::wire::TaskRecord;
use tandem_shared::{Class, Config, Priority, Status, TaskId, exit, msgpack};

use super::errors::{Usage, for_the_shell};
use super::table;
use tandem_producer::{CancelOutcome, Producer, ProducerError, Task, TaskOutcome};

#[derive(Debug, clap::Args)]
pub struct SubmitArgs {
    /// The task's kind, e.g. noop, sleep, echo, fail.
    pub kind: String,
    /// Parameters as JSON, sent as MessagePack, e.g. '{"ms": 100}'.
    #[arg(long, default_value = "null")]
    pub params: String,
    /// Parameters as JSON, read from this file instead of --params (for
    /// large ones: above blob_threshold_bytes they travel as a blob).
    #[arg(long, conflicts_with = "params")]
    pub params_file: Option<std::path::PathBuf>,
    #[arg(long, default_value = "normal")]
    pub priority: Priority,
    /// The class, when the kind is not built in.
    #[arg(long)]
    pub class: Option<Class>,
    /// Not started within this many ms of submission: expires.
    #[arg(long)]
    pub deadline_ms: Option<u64>,
    /// Run-time limit of each attempt, with a unit (200ms, 30s, 5m): past
    /// it the worker stops the task, which fails with TIMEOUT (retried while
    /// attempts remain).
    #[arg(long, value_parser = parse_timeout)]
    pub timeout: Option<Duration>,
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
    /// Run it later: this long after submission, e.g. 30s, 5m, 1h30m,
    /// 250ms (a delayed task; its status is `delayed` until then).
    #[arg(long, value_parser = parse_delay, conflicts_with = "at", allow_hyphen_values = true)]
    pub delay: Option<Duration>,
    /// Run it at this time, RFC 3339 with an offset, e.g.
    /// 2026-12-03T17:30:00Z or 2026-12-03T12:30:00-05:00.
    #[arg(long, value_parser = parse_at)]
    pub at: Option<std::time::SystemTime>,
    /// Count it against this key's rate limit (`tandem limit set
    /// key:<key> ...`) besides its kind's: a tenant, a vendor, a symbol.
    #[arg(long)]
    pub rate_key: Option<String>,
    /// Wait for the outcome and print it.
    #[arg(long)]
    pub wait: bool,
    /// Fire and forget: the worker's commit writes no completion notice
    /// (the outcome is in the task's record all the same; `tandem wait`
    /// then re-reads the record, 1 s to 8 s apart, instead of being told).
    #[arg(long, conflicts_with = "wait")]
    pub no_notice: bool,
    /// How long --wait waits, in ms (not the task's run-time limit:
    /// that is --timeout).
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
    let json: serde_json::Value = match &args.params_file {
        Some(path) => {
            let file = std::fs::File::open(path)
                .map_err(|e| Usage(format!("--params-file {}: {e}", path.display())))?;
            serde_json::from_reader(std::io::BufReader::new(file)).map_err(|e| {
                Usage(format!(
                    "--params-file {} is not valid JSON: {e}",
                    path.display()
                ))
            })?
        }
        None => serde_json::from_str(&args.params)
            .map_err(|e| Usage(format!("--params is not valid JSON: {e}")))?,
    };
    let mut task = Task::new(args.kind, &json)?.priority(args.priority);
    if let Some(class) = args.class {
        task = task.class(class);
    }
    if let Some(ms) = args.deadline_ms {
        task = task.deadline(Duration::from_millis(ms));
    }
    if let Some(limit) = args.timeout {
        task = task.timeout(limit);
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
    if let Some(after) = args.delay {
        task = task.delay(after);
    }
    if let Some(time) = args.at {
        task = task.run_at(time);
    }
    if let Some(key) = args.rate_key {
        task = task.rate_key(key);
    }
    if args.no_notice {
        task = task.without_notice();
    }
    let producer = Producer::connect(config).await?;
    let id = producer.submit(task).await.map_err(for_the_shell)?;
    if !args.wait {
        println!("{id}");
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("submitted {id}");
    let outcome =
        wait_showing_shards(&producer, id, Duration::from_millis(args.timeout_ms)).await?;
    print_outcome(&outcome);
    Ok(exit_code(&outcome))
}

pub(crate) async fn wait(config: &Config, args: WaitArgs) -> anyhow::Result<ExitCode> {
    let producer = Producer::connect(config).await?;
    let outcome =
        match wait_showing_shards(&producer, args.id, Duration::from_millis(args.timeout_ms)).await
        {
            Err(err)
                if matches!(
                    err.downcast_ref::<ProducerError>(),
                    Some(ProducerError::NotFound(_))
                ) =>
            {
                eprintln!("{}", not_found(producer.store(), args.id).await);
                return Ok(ExitCode::from(exit::NOT_FOUND));
            }
            other => other?,
        };
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
            eprintln!("{}", not_found(producer.store(), args.id).await);
            Ok(ExitCode::from(exit::NOT_FOUND))
        }
    }
}

pub(crate) async fn task(config: &Config, args: TaskViewArgs) -> anyhow::Result<ExitCode> {
    let producer = Producer::connect(config).await?;
    let Some(mut record) = producer.record(args.id).await? else {
        eprintln!("{}", not_found(producer.store(), args.id).await);
        return Ok(ExitCode::from(exit::NOT_FOUND));
    };
    // The parameters live in the entry (or retry hash, or dead letter),
    // not in the record.
    let store = Store::connect_retrying(config).await?;
    record.params = store.task_params(&record).await?;
    let attempts = attempts(&record);
    // A split task's work was done by its shards: their records tell where
    // and how long (a shard whose record expired is left out).
    let mut shards = Vec::with_capacity(record.shard_ids.len());
    for id in &record.shard_ids {
        if let Some(shard) = producer.record(*id).await? {
            shards.push(shard);
        }
    }
    if args.json {
        let mut json = story_json(&record, &attempts);
        json["split"]["shard_runs"] = shards.iter().map(shard_json).collect();
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        print!("{}", story_text(&record, &attempts));
        if !shards.is_empty() {
            out_shards(&record, &shards);
        }
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

/// Why task `id` has no record. When a worker recorded a data loss
/// (`redis_data_lost`) after the task was submitted, its record vanished
/// with Redis's data; otherwise it was never submitted, or its record
/// expired after `result_ttl_s`.
async fn not_found(store: &Store, id: TaskId) -> String {
    match store.data_loss().await {
        Ok(Some(loss)) if loss.predates(&id) => format!(
            "task {id} not found: its record vanished with Redis's data, lost before {} ago \
             ({}); submit it again (see docs/operations.md, \"When Redis loses its data\")",
            table::age(tandem_shared::clock::now_ms().saturating_sub(loss.at_ms)),
            loss.summary()
        ),
        _ => format!("task {id} not found (never submitted, or its record expired)"),
    }
}
/// How long a finished wait gives the progress stream to hand over the
/// reports written before the outcome.
const PROGRESS_DRAIN: Duration = Duration::from_secs(2);

/// How often a wait reads a parallel task's record for its shards.
const SHARD_POLL: Duration = Duration::from_millis(250);

/// Waits for the outcome; while a split task's shards run, says on stderr
/// how many are done whenever that changes (stdout stays what `status`
/// prints). Only a `parallel` task can be split, so the record is read
/// periodically only for one.
async fn wait_showing_shards(
    producer: &Producer,
    id: TaskId,
    timeout: Duration,
) -> anyhow::Result<TaskOutcome> {
    let wait = producer.wait(id, timeout);
    tokio::pin!(wait);
    let mut progress = producer.handle(id).progress();
    let mut following = true;
    let mut bar = ProgressView::new(id);
    let mut poll = tokio::time::interval(SHARD_POLL);
    let mut polling = true;
    let mut shown: Option<u32> = None;
    let mut show = |record: &TaskRecord| {
        if let Some(shards) = record.shards.filter(|_| record.parent.is_none()) {
            let done = record.shards_done.unwrap_or(0);
            if shown != Some(done) {
                eprintln!("{id}: shards {done} of {shards} done");
                shown = Some(done);
            }
        }
    };
    let mut outcome = loop {
        tokio::select! {
            outcome = &mut wait => break outcome?,
            report = progress.next(), if following => match report {
                Some(Ok(report)) => bar.show(&report),
                // Progress is a view: without it the wait goes on.
                Some(Err(err)) => {
                    tracing::debug!("cannot follow the task's progress: {err}");
                    following = false;
                }
                None => following = false,
            },
            _ = poll.tick(), if polling => {
                if let Some(record) = producer.record(id).await? {
                    polling = record.class == Some(Class::Parallel) && !record.is_terminal();
                    show(&record);
                }
            }
        }
    };
    // The reports written before the outcome, which the wait may have
    // beaten to the screen (the stream ends with the task).
    while following {
        match tokio::time::timeout(PROGRESS_DRAIN, progress.next()).await {
            Ok(Some(Ok(report))) => bar.show(&report),
            _ => following = false,
        }
    }
    bar.finish();
    // A notice from a worker older than the notice's full field list lacks
    // the kind (and more): the record has them.
    if outcome.record.kind.is_none()
        && let Some(record) = producer.record(id).await?
        && record.is_terminal()
    {
        let result = outcome.record.result.take();
        outcome.record = record;
        outcome.record.result = outcome.record.result.take().or(result);
    }
    show(&outcome.record);
    Ok(outcome)
}

fn exit_code(outcome: &TaskOutcome) -> ExitCode {
    if outcome.succeeded() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(exit::TASK_FAILED)
    }
}

/// `--timeout`: a duration with its unit, at least 1 ms.
fn parse_timeout(text: &str) -> Result<Duration, String> {
    let limit = parse_duration(text, "a run-time limit is at least 1ms")?;
    if limit < Duration::from_millis(1) {
        return Err(format!(
            "{text:?} is under 1 ms; a run-time limit must be at least 1ms"
        ));
    }
    Ok(limit)
}

/// A duration in jiff's friendly form (200ms, 30s, 5m, 1h30m, "2 hours"),
/// not negative; `negative` says what a negative one should have been.
fn parse_duration(text: &str, negative: &str) -> Result<Duration, String> {
    let signed: jiff::SignedDuration = text.trim().parse().map_err(|e| {
        format!("{text:?} is not a duration ({e}); give a duration with its unit, e.g. 250ms, 30s, 5m or 1h30m")
    })?;
    if signed.is_negative() {
        return Err(format!(
            "{text:?} is negative ({negative}); give a duration with its unit, e.g. 250ms, 30s, 5m or 1h30m"
        ));
    }
    Duration::try_from(signed).map_err(|e| format!("{text:?}: {e}"))
}

/// `--memory-bytes`: plain bytes or a size, read as simulated GPUs' sizes are.
/// Why and until when a delayed task waits, as a line of text.
fn delayed_text(record: &TaskRecord) -> String {
    use tandem_shared::task::DelayReason;
    let until = record
        .retry_at_ms
        .map_or_else(String::new, |ms| format!(" until {}", table::time(ms)));
    match record.delay_reason {
        Some(DelayReason::Scheduled) | None => format!("scheduled{until}"),
        Some(DelayReason::Limited) => format!("rate-limited: its turn comes{until}"),
        Some(DelayReason::Paused) => "held: its kind is paused (tandem resume kind:...)".to_owned(),
    }
}

/// `--delay`: a duration (see [`parse_duration`]), 0 or more.
fn parse_delay(text: &str) -> Result<Duration, String> {
    parse_duration(text, "a delay is 0 or more; to run at once, leave it out")
}

/// `--at`: an RFC 3339 time with an offset (Z or +hh:mm).
fn parse_at(text: &str) -> Result<std::time::SystemTime, String> {
    let time: jiff::Timestamp = text.trim().parse().map_err(|e| {
        format!(
            "{text:?} is not a time with an offset ({e}); write it like 2026-12-03T17:30:00Z or 2026-12-03T12:30:00-05:00"
        )
    })?;
    Ok(std::time::SystemTime::from(time))
}

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

/// A task's whole story as `tandem task --json` prints it (the dashboard's
/// task page reads it too).
pub(crate) fn task_json(record: &TaskRecord) -> serde_json::Value {
    story_json(record, &attempts(record))
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
            "schedule": record.schedule,
            "scheduled_for_ms": record.scheduled_for_ms,
            "timeout_ms": record.timeout_ms,
        },
        "progress": record.progress.as_ref().map(|p| serde_json::json!({
            "fraction": p.fraction,
            "message": p.message,
            "at_ms": p.at_ms,
        })),
        "attempts": attempts,
        "hand_backs": hand_backs,
        "retries": retries,
        "retry_at_ms": record.retry_at_ms,
        "delayed": {
            "reason": text(record.delay_reason.map(|r| r.to_string())),
            "run_at_ms": record.run_at_ms,
            "rate_key": record.rate_key,
        },
        "split": {
            "shards": record.shards,
            "shards_done": record.shards_done,
            "shard_ids": record.shard_ids.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "parent": text(record.parent.map(|p| p.to_string())),
            "shard": record.shard,
            "shards_started_at_ms": record.shards_started_at_ms,
            "shards_run_us": record.shards_run_us,
            "devices": record.shards_devices,
        },
        "params": record.params.as_deref().map_or(serde_json::Value::Null, |bytes| {
            msgpack::decode::<serde_json::Value>(bytes)
                .unwrap_or_else(|_| serde_json::Value::String(msgpack::to_display(bytes)))
        }),
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
            record
                .submitted_at_ms
                .map_or_else(|| "-".to_owned(), table::time),
            dash(record.producer.clone()),
            dash(record.class.map(|c| c.to_string())),
            dash(record.priority.map(|p| p.to_string())),
            record.max_attempts.unwrap_or(1),
        ),
    );
    line("params", params_text(record));
    if let Some(deadline) = record.deadline_ms {
        line("deadline", table::time(deadline));
    }
    if let Some(name) = &record.schedule {
        line(
            "schedule",
            format!(
                "{name}, its tick of {}",
                record
                    .scheduled_for_ms
                    .map_or_else(|| "-".to_owned(), table::time)
            ),
        );
    }
    if let Some(limit) = record.timeout_ms {
        line("timeout", table::age(limit));
    }
    if let Some(progress) = &record.progress {
        line("progress", progress_text(progress));
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
    if let Some(first) = record.shards_started_at_ms {
        // The whole task, not its merge step: the shards did the work.
        line(
            "ran",
            format!(
                "{}, first shard started {} after submission",
                whole_task_summary(record),
                table::age(first.saturating_sub(submitted)),
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
    if record.status == Some(Status::Delayed) {
        line("delayed", delayed_text(record));
    } else if let Some(ms) = record.run_at_ms {
        line("run at", table::time(ms));
    }
    if let Some(key) = &record.rate_key {
        line("rate key", key.clone());
    }
    if let Some(ms) = record.cancel_requested_at_ms {
        line("cancel asked", offset(Some(ms)));
    }
    if let Some(ms) = record.finished_at_ms.filter(|_| record.is_terminal()) {
        line(
            "finished",
            format!(
                "{} ({} after submission)",
                table::time(ms),
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
            format!(
                "{} (not shown)",
                table::bytes(record.result_bytes.unwrap_or(0))
            ),
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

/// The parameters as submitted, decoded as `dlq show` shows them.
fn params_text(record: &TaskRecord) -> String {
    match &record.params {
        Some(params) => msgpack::to_display(params),
        None => "- (not kept once it finished: they travel in its entry, deleted at its commit)"
            .to_owned(),
    }
}

/// A split task's wall time (first shard start to merge), compute time
/// (all shards and the merge) and devices, e.g. `wall 1.2s, compute 2.3s
/// over 8 shards on SIM-0-a, SIM-1-b`.
fn whole_task_summary(record: &TaskRecord) -> String {
    let wall = match (record.shards_started_at_ms, record.finished_at_ms) {
        (Some(first), Some(finished)) => table::age(finished.saturating_sub(first)),
        _ => "-".to_owned(),
    };
    format!(
        "wall {wall}, compute {} over {} shards on {}",
        table::micros(record.shards_run_us.unwrap_or(0) + record.run_us.unwrap_or(0)),
        record.shards.unwrap_or(0),
        if record.shards_devices.is_empty() {
            "-".to_owned()
        } else {
            record.shards_devices.join(", ")
        },
    )
}

fn shard_json(shard: &TaskRecord) -> serde_json::Value {
    serde_json::json!({
        "shard": shard.shard,
        "id": shard.id.map(|i| i.to_string()),
        "status": shard.status.map(|s| s.to_string()),
        "attempt": shard.attempt,
        "worker": shard.worker,
        "device": shard.device,
        "started_at_ms": shard.started_at_ms,
        "finished_at_ms": shard.finished_at_ms,
        "run_us": shard.run_us,
    })
}

/// The shards of a split task, one line each: where each ran, when (from
/// the task's submission) and for how long.
fn out_shards(record: &TaskRecord, shards: &[TaskRecord]) {
    let submitted = record.submitted_at_ms.unwrap_or(0);
    let dash = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
    let offset = |ms: Option<u64>| {
        ms.map_or_else(
            || "-".to_owned(),
            |ms| format!("+{}", table::age(ms.saturating_sub(submitted))),
        )
    };
    let mut rows = vec![
        [
            "shard", "worker", "device", "started", "finished", "run", "status",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for shard in shards {
        rows.push(vec![
            dash(shard.shard.map(|s| s.to_string())),
            dash(shard.worker.clone()),
            dash(shard.device.clone()),
            offset(shard.started_at_ms),
            offset(shard.finished_at_ms),
            dash(shard.run_us.map(table::micros)),
            dash(shard.status.map(|s| s.to_string())),
        ]);
    }
    print!("\n{}", table::render(&rows));
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

/// How a wait shows progress on stderr: a bar on a terminal, else a plain
/// line per report.
struct ProgressView {
    id: TaskId,
    /// The bar, on a terminal, once a first report came.
    bar: Option<indicatif::ProgressBar>,
    terminal: bool,
}

impl ProgressView {
    fn new(id: TaskId) -> Self {
        use std::io::IsTerminal;
        Self {
            id,
            bar: None,
            terminal: std::io::stderr().is_terminal(),
        }
    }

    fn show(&mut self, progress: &tandem_shared::wire::TaskProgress) {
        if !self.terminal {
            eprintln!("{}: progress {}", self.id, progress_text(progress));
            return;
        }
        let bar = self.bar.get_or_insert_with(|| {
            let bar = indicatif::ProgressBar::new(1000);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{elapsed_precise} [{bar:40}] {percent:>3} %  {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar
        });
        // Per mille, so that the bar moves between whole percents.
        bar.set_position((progress.fraction * 1000.0).round() as u64);
        bar.set_message(progress.message.clone());
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

/// A progress report as one line: `42.0 % step 3 of 7 (at 12:00:01.250)`.
fn progress_text(progress: &tandem_shared::wire::TaskProgress) -> String {
    let mut text = format!("{:.1} %", progress.fraction * 100.0);
    if !progress.message.is_empty() {
        text.push(' ');
        text.push_str(&progress.message);
    }
    if let Some(at) = progress.at_ms {
        text.push_str(&format!(" (at {})", table::time(at)));
    }
    text
}

/// A record as `field  value` lines, the result rendered as JSON: what
/// `status` prints, and `wait` for the same task.
fn print_record(record: &TaskRecord) {
    print!("{}", record_text(record));
}

fn record_text(record: &TaskRecord) -> String {
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
    let time = |v: Option<u64>| v.map(table::time);
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
            .map(|a| format!("{a} of {}", opt(record.max_attempts.map(|m| m.to_string()))))),
    );
    // A split task ran on its shards' devices; its own worker only merged.
    let split = record.shards.is_some() && record.parent.is_none();
    if split && !record.shards_devices.is_empty() {
        row("devices", record.shards_devices.join(", "));
        row(
            "merged by",
            format!(
                "{} on {}",
                opt(record.worker.clone()),
                opt(record.device.clone())
            ),
        );
    } else {
        row("worker", opt(record.worker.clone()));
        row("device", opt(record.device.clone()));
    }
    if let Some(shards) = record.shards {
        row(
            "shards",
            format!("{} of {shards} done", record.shards_done.unwrap_or(0)),
        );
    }
    if let (Some(parent), Some(shard)) = (record.parent, record.shard) {
        row("shard of", format!("{parent} (shard {shard})"));
    }
    row("submitted", opt(time(record.submitted_at_ms)));
    if record.status == Some(Status::Delayed) {
        row("delayed", delayed_text(record));
    }
    if let Some(deadline) = record.deadline_ms {
        row("deadline", table::time(deadline));
    }
    if let Some(limit) = record.timeout_ms {
        row("timeout", table::age(limit));
    }
    if let Some(progress) = &record.progress {
        row("progress", progress_text(progress));
    }
    let started = record.shards_started_at_ms.or(record.started_at_ms);
    row("started", opt(time(started)));
    row("finished", opt(time(record.finished_at_ms)));
    if let (Some(s), Some(f)) = (record.submitted_at_ms, record.finished_at_ms) {
        row("total", table::age(f.saturating_sub(s)));
    }
    if let (Some(first), Some(f)) = (record.shards_started_at_ms, record.finished_at_ms) {
        // From the first shard's start to the merge's commit.
        row("wall", table::age(f.saturating_sub(first)));
    }
    match (record.shards_run_us, record.run_us) {
        (Some(shards), merge) => row(
            "compute",
            format!(
                "{} ({} shards, merge {})",
                table::micros(shards + merge.unwrap_or(0)),
                record.shards.unwrap_or(0),
                table::micros(merge.unwrap_or(0))
            ),
        ),
        (None, Some(us)) => row("run", table::micros(us)),
        (None, None) => {}
    }
    if let Some(error) = &record.error {
        row("error", format!("{}: {}", error.code, error.message));
    }
    if let Some(result) = &record.result {
        row("result", msgpack::to_display(result));
    } else if record.result_left_out() {
        row(
            "result",
            format!(
                "{} (not shown)",
                table::bytes(record.result_bytes.unwrap_or(0))
            ),
        );
    }
    table::render(&rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(entries: &[serde_json::Value]) -> Option<String> {
        Some(serde_json::Value::from(entries.to_vec()).to_string())
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
