//! `tandem dlq list | show | requeue | purge`: the dead-letter streams.

use std::process::ExitCode;

use clap::Subcommand;
use tandem_shared::store::{DeadLetter, Store};
use tandem_shared::{Class, Config, TaskId};

use super::table;

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// The newest dead letters of each class.
    List {
        /// Only this class.
        #[arg(long)]
        class: Option<Class>,
        /// At most this many per class.
        #[arg(long, default_value_t = 50)]
        count: usize,
    },
    /// Every field of one dead letter (by its id or its task's id).
    Show { id: String },
    /// Put dead letters back into their streams as fresh first attempts.
    Requeue {
        /// Dead-letter ids or task ids.
        ids: Vec<String>,
        /// Every dead letter (of --class, or of all classes).
        #[arg(long)]
        all: bool,
        #[arg(long)]
        class: Option<Class>,
    },
    /// Delete dead letters.
    Purge {
        /// Dead-letter ids or task ids.
        ids: Vec<String>,
        /// Every dead letter (of --class, or of all classes).
        #[arg(long)]
        all: bool,
        #[arg(long)]
        class: Option<Class>,
    },
}

pub(crate) async fn run(config: &Config, command: DlqCommand) -> anyhow::Result<ExitCode> {
    let store = Store::connect_retrying(config).await?;
    match command {
        DlqCommand::List { class, count } => {
            let letters = store.dead_letters(classes(class), count).await?;
            print_list(&letters);
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::Show { id } => match resolve(&store, &id).await? {
            Some(letter) => {
                print_letter(&letter);
                Ok(ExitCode::SUCCESS)
            }
            None => {
                eprintln!("no dead letter {id}");
                Ok(ExitCode::from(3))
            }
        },
        DlqCommand::Requeue { ids, all, class } => {
            let letters = select(&store, &ids, all, class).await?;
            let mut missing = false;
            for letter in &letters {
                match store.requeue_dead(letter.class, &letter.id).await? {
                    Some((task, entry)) => println!(
                        "requeued {} (task {}) as entry {entry}",
                        letter.id,
                        task.map_or_else(|| "-".to_owned(), |t| t.to_string())
                    ),
                    None => {
                        missing = true;
                        eprintln!("dead letter {} is gone or names no stream", letter.id);
                    }
                }
            }
            Ok(code(missing || letters.len() < ids.len()))
        }
        DlqCommand::Purge { ids, all, class } => {
            if all && ids.is_empty() {
                let mut total = 0;
                for &class in classes(class) {
                    total += store.purge_dead(class, None).await?;
                }
                println!("purged {total} dead letters");
                return Ok(ExitCode::SUCCESS);
            }
            let letters = select(&store, &ids, false, class).await?;
            let mut total = 0;
            for letter in &letters {
                total += store
                    .purge_dead(letter.class, Some(std::slice::from_ref(&letter.id)))
                    .await?;
            }
            println!("purged {total} dead letters");
            Ok(code(letters.len() < ids.len()))
        }
    }
}

fn code(failed: bool) -> ExitCode {
    if failed {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    }
}

fn classes(class: Option<Class>) -> &'static [Class] {
    match class {
        Some(Class::Heavy) => &[Class::Heavy],
        Some(Class::Light) => &[Class::Light],
        Some(Class::Parallel) => &[Class::Parallel],
        Some(Class::Cpu) => &[Class::Cpu],
        None => Class::ALL,
    }
}

/// A dead letter by its own id, or by the id of the task it holds.
async fn resolve(store: &Store, id: &str) -> anyhow::Result<Option<DeadLetter>> {
    if let Ok(task) = id.parse::<TaskId>() {
        let dead_id = store
            .find_record(&task)
            .await?
            .and_then(|record| record.dead_letter);
        return match dead_id {
            Some(dead_id) => Ok(store.dead_letter(&dead_id).await?),
            None => Ok(None),
        };
    }
    Ok(store.dead_letter(id).await?)
}

async fn select(
    store: &Store,
    ids: &[String],
    all: bool,
    class: Option<Class>,
) -> anyhow::Result<Vec<DeadLetter>> {
    if all {
        return Ok(store.dead_letters(classes(class), usize::MAX >> 1).await?);
    }
    let mut letters = Vec::new();
    for id in ids {
        match resolve(store, id).await? {
            Some(letter) => letters.push(letter),
            None => eprintln!("no dead letter {id}"),
        }
    }
    Ok(letters)
}

fn print_list(letters: &[DeadLetter]) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut rows = vec![
        [
            "dead letter",
            "class",
            "task",
            "kind",
            "reason",
            "attempts",
            "age",
            "message",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for letter in letters {
        let mut message = letter.message.clone();
        if message.chars().count() > 60 {
            message = message.chars().take(57).collect::<String>() + "...";
        }
        rows.push(vec![
            letter.id.clone(),
            letter.class.to_string(),
            letter
                .task_id
                .map_or_else(|| "-".to_owned(), |t| t.to_string()),
            letter.kind.clone().unwrap_or_else(|| "-".to_owned()),
            letter.reason.clone(),
            letter.attempts.to_string(),
            table::age(now.saturating_sub(letter.dead_at_ms)),
            message,
        ]);
    }
    print!("{}", table::render(&rows));
    println!("\n{} dead letters", letters.len());
}

fn print_letter(letter: &DeadLetter) {
    let mut rows = vec![vec!["field".to_owned(), "value".to_owned()]];
    rows.push(vec!["dead letter".to_owned(), letter.id.clone()]);
    rows.push(vec!["class".to_owned(), letter.class.to_string()]);
    for (name, value) in &letter.fields {
        let name = String::from_utf8_lossy(name).into_owned();
        let value = if name == "params" {
            tandem_shared::msgpack::to_display(value)
        } else {
            moment(&name, &String::from_utf8_lossy(value))
        };
        if name != "history" {
            rows.push(vec![name, value]);
        }
    }
    print!("{}", table::render(&rows));
    if let Ok(history) = serde_json::from_str::<serde_json::Value>(&letter.history)
        && let Some(attempts) = history.as_array()
    {
        println!("\nattempts\n");
        let mut rows = vec![
            [
                "attempt", "worker", "device", "started", "finished", "took", "error",
            ]
            .map(String::from)
            .to_vec(),
        ];
        for attempt in attempts {
            let get = |key: &str| attempt[key].as_str().unwrap_or("-").to_owned();
            let ms = |key: &str| get(key).parse::<u64>().ok();
            let took = match (ms("started_at_ms"), ms("finished_at_ms")) {
                (Some(s), Some(f)) => table::age(f.saturating_sub(s)),
                _ => "-".to_owned(),
            };
            rows.push(vec![
                get("attempt"),
                get("worker"),
                get("device"),
                moment("started_at_ms", &get("started_at_ms")),
                moment("finished_at_ms", &get("finished_at_ms")),
                took,
                format!("{}: {}", get("error_code"), get("error_message")),
            ]);
        }
        print!("{}", table::render(&rows));
    }
}

/// A field that holds a moment (`..._ms` since the epoch, as every such
/// field of an entry does) in the views' time format; other fields as they
/// are.
fn moment(name: &str, value: &str) -> String {
    match value.parse::<u64>() {
        Ok(ms) if name.ends_with("_at_ms") || name == "deadline_ms" => table::time(ms),
        _ => value.to_owned(),
    }
}
