//! `tandem schedule add | list | show | pause | resume | rm`: recurring
//! schedules, through the producer library's `Schedule` calls.

use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use tandem_producer::{CatchUp, Producer, ProducerError, Schedule, ScheduleRecord, Task};
use tandem_shared::recurring::{Cadence, format_in};
use tandem_shared::{Class, Config, Priority, exit, msgpack};

use super::errors::{Usage, for_the_shell};
use super::table;

#[derive(Debug, Subcommand)]
pub enum ScheduleCommand {
    /// Add a schedule, or replace the one of that name: --cron EXPR [--tz
    /// ZONE] or --every PERIOD, and the task each tick creates.
    Add(AddArgs),
    /// Every schedule: cadence, next fire (UTC and its zone), counters.
    List {
        /// One JSON object per line instead of a table, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// One schedule's definition and state.
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Stop firing a schedule until it is resumed.
    Pause { name: String },
    /// Fire a paused schedule again, from its next tick after now (ticks
    /// while paused are not caught up).
    Resume { name: String },
    /// Remove a schedule (the tasks it created stay).
    Rm { name: String },
}

#[derive(Debug, clap::Args)]
pub struct AddArgs {
    /// 1-64 characters of A-Z a-z 0-9 _ . -
    pub name: String,
    /// A cron pattern: five fields (minute hour day-of-month month
    /// day-of-week), or six with seconds first; @hourly, @daily, ...
    #[arg(long, conflicts_with = "every", required_unless_present = "every")]
    pub cron: Option<String>,
    /// The IANA time zone the cron pattern is read in (default UTC).
    #[arg(long, requires = "cron")]
    pub tz: Option<String>,
    /// A period instead of a pattern: 30s, 5m, 1h30m (at least 1s).
    #[arg(long)]
    pub every: Option<String>,
    /// Ticks missed while no worker ran: `once` fires one task for all of
    /// them, `skip` fires none.
    #[arg(long, default_value = "once")]
    pub catch_up: String,
    /// The task kind each tick creates.
    #[arg(long)]
    pub kind: String,
    /// Its parameters as JSON, sent as MessagePack.
    #[arg(long, default_value = "null")]
    pub params: String,
    #[arg(long, default_value = "normal")]
    pub priority: Priority,
    /// The class, when the kind is not built in.
    #[arg(long)]
    pub class: Option<Class>,
    #[arg(long)]
    pub max_attempts: Option<u32>,
    /// Each task not started within this long of its tick: expires (30s, 5m).
    #[arg(long)]
    pub deadline: Option<String>,
    /// Device memory each task needs (512MiB, 2GiB); default: the kind's estimate.
    #[arg(long, value_parser = tandem_shared::device::parse_size)]
    pub memory_bytes: Option<u64>,
}

pub(crate) async fn run(config: &Config, command: ScheduleCommand) -> anyhow::Result<ExitCode> {
    // Everything about the arguments is checked before connecting.
    let schedule = match &command {
        ScheduleCommand::Add(args) => Some(build(args)?),
        _ => None,
    };
    let producer = Producer::connect(config).await?;
    match command {
        ScheduleCommand::Add(_) => {
            let Some(schedule) = schedule else {
                return Ok(ExitCode::from(exit::ERROR));
            };
            let name = schedule.name().to_owned();
            let zone = schedule.cadence().zone().unwrap_or("UTC").to_owned();
            let added = producer
                .schedule_add(schedule)
                .await
                .map_err(for_the_shell)?;
            let local = if zone == "UTC" {
                String::new()
            } else {
                format!(" ({})", format_in(added.next_fire_ms, &zone))
            };
            println!(
                "{} schedule {name} (class {}); next fire {}{local}",
                if added.created { "added" } else { "replaced" },
                added.class,
                format_in(added.next_fire_ms, "UTC"),
            );
            Ok(ExitCode::SUCCESS)
        }
        ScheduleCommand::List { json } => {
            let all = producer.schedules().await?;
            if json {
                for record in &all {
                    println!("{}", to_json(record));
                }
            } else if all.is_empty() {
                println!("no schedules");
            } else {
                print_list(&all);
            }
            Ok(ExitCode::SUCCESS)
        }
        ScheduleCommand::Show { name, json } => match producer.schedule(&name).await? {
            Some(record) if json => {
                println!("{}", to_json(&record));
                Ok(ExitCode::SUCCESS)
            }
            Some(record) => {
                print_one(&record);
                Ok(ExitCode::SUCCESS)
            }
            None => {
                eprintln!("tandem: no schedule {name:?}");
                Ok(ExitCode::from(exit::NOT_FOUND))
            }
        },
        ScheduleCommand::Pause { name } => {
            changed(producer.schedule_pause(&name).await, &name, "paused")
        }
        ScheduleCommand::Resume { name } => {
            changed(producer.schedule_resume(&name).await, &name, "resumed")
        }
        ScheduleCommand::Rm { name } => {
            changed(producer.schedule_remove(&name).await, &name, "removed")
        }
    }
}

fn changed(result: Result<(), ProducerError>, name: &str, done: &str) -> anyhow::Result<ExitCode> {
    match result {
        Ok(()) => {
            println!("{done} schedule {name}");
            Ok(ExitCode::SUCCESS)
        }
        Err(ProducerError::ScheduleNotFound(_)) => {
            eprintln!("tandem: no schedule {name:?}");
            Ok(ExitCode::from(exit::NOT_FOUND))
        }
        Err(err) => Err(err.into()),
    }
}

/// The schedule the flags describe, checked (cron pattern, zone, period,
/// catch-up, parameters) before anything is sent.
fn build(args: &AddArgs) -> anyhow::Result<Schedule> {
    let json: serde_json::Value = serde_json::from_str(&args.params)
        .map_err(|e| Usage(format!("--params is not valid JSON: {e}")))?;
    let mut task = Task::new(args.kind.clone(), &json)?.priority(args.priority);
    if let Some(class) = args.class {
        task = task.class(class);
    }
    if let Some(n) = args.max_attempts {
        task = task.max_attempts(n);
    }
    if let Some(bytes) = args.memory_bytes {
        task = task.memory_bytes(bytes);
    }
    if let Some(text) = &args.deadline {
        let ms = Cadence::parse_every(text).map_err(|e| {
            Usage(format!(
                "--deadline: {}",
                e.to_string().trim_start_matches("every: ")
            ))
        })?;
        if ms == 0 {
            return Err(Usage("--deadline: must be more than 0".into()).into());
        }
        task = task.deadline(Duration::from_millis(ms));
    }
    // The library names the setting (`cron: ...`); the tool names the flag.
    let usage = |err: ProducerError| -> anyhow::Error {
        let text = err.to_string();
        if text.starts_with("name:") {
            Usage(format!("NAME{}", &text[4..])).into()
        } else {
            Usage(format!("--{text}")).into()
        }
    };
    let schedule = match (&args.cron, &args.every) {
        (Some(pattern), None) => {
            let schedule = Schedule::cron(args.name.clone(), pattern, task).map_err(usage)?;
            match &args.tz {
                Some(zone) => schedule.tz(zone).map_err(usage)?,
                None => schedule,
            }
        }
        (None, Some(every)) => {
            let ms = Cadence::parse_every(every).map_err(|e| usage(e.into()))?;
            Schedule::every(args.name.clone(), Duration::from_millis(ms), task).map_err(usage)?
        }
        _ => return Err(Usage("give --cron EXPR or --every PERIOD".into()).into()),
    };
    let catch_up: CatchUp =
        args.catch_up
            .parse()
            .map_err(|e: tandem_shared::recurring::ScheduleError| {
                Usage(format!("--{}", e.to_string().replace('_', "-")))
            })?;
    Ok(schedule.catch_up(catch_up))
}

fn cadence_text(record: &ScheduleRecord) -> String {
    match (&record.cron, record.every_ms) {
        (Some(pattern), _) => format!(
            "cron \"{pattern}\" {}",
            record.tz.as_deref().unwrap_or("UTC")
        ),
        (None, Some(ms)) => Cadence::every(ms)
            .map(|c| c.describe())
            .unwrap_or_else(|_| format!("every {ms} ms")),
        (None, None) => "-".to_owned(),
    }
}

fn state(record: &ScheduleRecord) -> &'static str {
    if record.error.is_some() {
        "broken"
    } else if record.paused {
        "paused"
    } else {
        "active"
    }
}

fn next_fire(record: &ScheduleRecord) -> (String, String) {
    match record.next_fire_ms {
        _ if record.paused || record.error.is_some() => ("-".to_owned(), "-".to_owned()),
        Some(ms) => (
            format_in(ms, "UTC"),
            format_in(ms, record.tz.as_deref().unwrap_or("UTC")),
        ),
        None => ("(not computed yet)".to_owned(), "-".to_owned()),
    }
}

fn print_list(all: &[ScheduleRecord]) {
    let mut rows = vec![
        [
            "name",
            "class",
            "kind",
            "cadence",
            "state",
            "next fire (UTC)",
            "next fire (zone)",
            "fired",
            "skipped",
            "last task",
        ]
        .map(str::to_owned)
        .to_vec(),
    ];
    for record in all {
        let (utc, zoned) = next_fire(record);
        rows.push(vec![
            record.name.clone(),
            record.class.map(|c| c.to_string()).unwrap_or_default(),
            record.kind.clone().unwrap_or_default(),
            cadence_text(record),
            state(record).to_owned(),
            utc,
            zoned,
            record.fired.to_string(),
            record.skipped.to_string(),
            record
                .last_task
                .map(|id| id.to_string())
                .unwrap_or_else(|| "-".to_owned()),
        ]);
    }
    print!("{}", table::render(&rows));
}

fn print_one(record: &ScheduleRecord) {
    let zone = record.tz.as_deref().unwrap_or("UTC");
    let (utc, zoned) = next_fire(record);
    let line = |name: &str, value: String| println!("{name:<18}{value}");
    line("name", record.name.clone());
    line(
        "class",
        record.class.map(|c| c.to_string()).unwrap_or_default(),
    );
    line("cadence", cadence_text(record));
    line(
        "catch-up",
        record.catch_up.clone().unwrap_or_else(|| "once".to_owned()),
    );
    line("state", state(record).to_owned());
    if let Some(error) = &record.error {
        line("error", error.clone());
    }
    line("next fire (UTC)", utc);
    if zone != "UTC" {
        line(&format!("next fire ({zone})"), zoned);
    }
    line("kind", record.kind.clone().unwrap_or_default());
    line(
        "priority",
        record.priority.map(|p| p.to_string()).unwrap_or_default(),
    );
    line(
        "params",
        record
            .params
            .as_deref()
            .map(params_json)
            .unwrap_or_else(|| "null".to_owned()),
    );
    if let Some(n) = record.max_attempts {
        line("max attempts", n.to_string());
    }
    if let Some(ms) = record.deadline_in_ms {
        line("deadline", table::duration(Duration::from_millis(ms)));
    }
    line("fired", record.fired.to_string());
    line("skipped", record.skipped.to_string());
    if let Some(ms) = record.last_fire_ms {
        let local = if zone == "UTC" {
            String::new()
        } else {
            format!(" ({})", format_in(ms, zone))
        };
        line("last tick", format!("{}{local}", format_in(ms, "UTC")));
    }
    if let Some(id) = record.last_task {
        line("last task", id.to_string());
    }
    line("revision", record.revision.to_string());
}

fn params_json(bytes: &[u8]) -> String {
    msgpack::decode::<serde_json::Value>(bytes)
        .map(|v| v.to_string())
        .unwrap_or_else(|_| format!("({} bytes of MessagePack)", bytes.len()))
}

fn to_json(record: &ScheduleRecord) -> serde_json::Value {
    serde_json::json!({
        "name": record.name,
        "class": record.class.map(|c| c.to_string()),
        "kind": record.kind,
        "priority": record.priority.map(|p| p.to_string()),
        "cron": record.cron,
        "tz": record.tz,
        "every_ms": record.every_ms,
        "catch_up": record.catch_up,
        "params": record.params.as_deref().map(|b| msgpack::decode::<serde_json::Value>(b).ok()),
        "paused": record.paused,
        "error": record.error,
        "next_fire_ms": record.next_fire_ms,
        "next_fire_utc": record.next_fire_ms.map(|ms| format_in(ms, "UTC")),
        "next_fire_local": record.next_fire_ms.map(|ms| format_in(ms, record.tz.as_deref().unwrap_or("UTC"))),
        "fired": record.fired,
        "skipped": record.skipped,
        "last_fire_ms": record.last_fire_ms,
        "last_task": record.last_task.map(|id| id.to_string()),
        "revision": record.revision,
    })
}
