//! `tandem queues`: what waits where (streams, then delayed sets), what is
//! paused or rate-limited and when a limit next starts a task, and what
//! waits in streams no worker reads.
//!
//! Everything but the last costs a few commands per stream whatever the
//! backlog (`XLEN`, `XINFO GROUPS`, `XRANGE ... COUNT 1`). Streams no worker
//! reads can only be found by a pass over every key (`SCAN`), so above
//! [`SCAN_MAX_KEYS`] keys the view shows what the workers' own interval
//! scan found (their `unknown_stream` alerts) instead, unless `--scan`.

use std::process::ExitCode;

use tandem_shared::clock::now_ms;
use tandem_shared::store::{AlertName, DataLoss, Store};
use tandem_shared::{Class, Config};

use super::table;

/// The most keys `tandem queues` passes over to find streams no worker
/// reads: a pass costs Redis about a microsecond per key, and a million
/// waiting tasks are a million records.
pub(crate) const SCAN_MAX_KEYS: u64 = 10_000;

#[derive(Debug, Clone, Default, clap::Args)]
pub struct QueuesArgs {
    /// Look for streams no worker reads with a pass over every key, however
    /// many (by default only up to 10,000 keys; above, the workers' last
    /// `unknown_stream` alerts are shown).
    #[arg(long)]
    pub scan: bool,
}

pub(crate) async fn run(config: &Config, args: &QueuesArgs) -> anyhow::Result<ExitCode> {
    let store = Store::connect_retrying(config).await?;
    print_data_loss(&store).await?;
    let stats = store.queue_stats(Class::ALL).await?;
    let mut rows = vec![
        [
            "stream",
            "class",
            "priority",
            "in stream",
            "waiting",
            "pending",
            "consumers",
            "oldest waiting",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for s in &stats {
        rows.push(vec![
            s.key.clone(),
            s.class.to_string(),
            s.priority.to_string(),
            table::thousands(s.waiting + s.pending),
            table::thousands(s.waiting),
            table::thousands(s.pending),
            s.consumers.to_string(),
            s.oldest_waiting_ms
                .map_or_else(|| "-".to_owned(), table::age),
        ]);
    }
    print!("{}", table::render(&rows));
    let waiting: u64 = stats.iter().map(|s| s.waiting).sum();
    let pending: u64 = stats.iter().map(|s| s.pending).sum();
    println!(
        "\n{} waiting, {} running or awaiting commit",
        table::thousands(waiting),
        table::thousands(pending)
    );
    print_flow(&store).await?;
    print_unknown_streams(&store, args.scan).await?;
    if let Some(homes) = store.class_homes(Class::ALL).await? {
        // Redis Cluster: each class is one hash slot on one master.
        let mut rows = vec![["class", "slot", "master"].map(String::from).to_vec()];
        for (class, slot, master) in homes {
            rows.push(vec![
                class.to_string(),
                slot.to_string(),
                master.unwrap_or_else(|| "(none: slot unassigned or moving)".into()),
            ]);
        }
        print!("\n{}", table::render(&rows));
    }
    Ok(ExitCode::SUCCESS)
}

/// The last data loss a worker recorded (`redis_data_lost`), as one line
/// above the tables: the queues shown are what is left after it.
pub(crate) async fn print_data_loss(store: &Store) -> anyhow::Result<()> {
    if let Some(loss) = store.data_loss().await? {
        println!("{}\n", data_loss_line(&loss));
    }
    Ok(())
}

/// Delayed tasks per class, then every pause and rate limit.
async fn print_flow(store: &Store) -> anyhow::Result<()> {
    let states = store.flow_states(Class::ALL).await?;
    let mut rows = vec![
        ["class", "delayed", "next due", "paused"]
            .map(String::from)
            .to_vec(),
    ];
    for (class, state) in Class::ALL.iter().zip(&states) {
        if state.delayed == 0 && state.is_free() {
            continue;
        }
        let mut paused: Vec<String> = Vec::new();
        if state.paused_since_ms.is_some() {
            paused.push("whole class".into());
        }
        paused.extend(state.paused_priorities.iter().map(|(p, _)| p.to_string()));
        paused.extend(state.paused_kinds.iter().map(|(k, _)| format!("kind:{k}")));
        rows.push(vec![
            class.to_string(),
            table::thousands(state.delayed),
            state.next_due_ms.map_or_else(
                || "-".to_owned(),
                |ms| match ms.checked_sub(state.now_ms) {
                    Some(ahead) if ahead > 0 => format!("in {}", table::age(ahead)),
                    _ => "now".to_owned(),
                },
            ),
            if paused.is_empty() {
                "-".to_owned()
            } else {
                paused.join(", ")
            },
        ]);
    }
    if rows.len() > 1 {
        print!("\n{}", table::render(&rows));
    }
    let flow = super::flow::flow_rows(Class::ALL, &states);
    if flow.len() > 1 {
        print!("\n{}", table::render(&flow));
    }
    Ok(())
}

/// `DATA LOST 12s ago: <what was seen>; ...`
pub(crate) fn data_loss_line(loss: &DataLoss) -> String {
    format!(
        "DATA LOST {} ago: {}. Tasks submitted before then, and their records, are gone \
         (see docs/operations.md, \"When Redis loses its data\")",
        table::age(now_ms().saturating_sub(loss.at_ms)),
        loss.summary()
    )
}

/// Streams under the prefix that no worker reads (a class or priority
/// Tandem does not know): their entries would otherwise wait unseen.
/// Found by a pass over every key when there are at most
/// [`SCAN_MAX_KEYS`] (or `scan`); else from the workers' alerts.
async fn print_unknown_streams(store: &Store, scan: bool) -> anyhow::Result<()> {
    let keys = store.key_count().await?;
    if !scan && keys > SCAN_MAX_KEYS {
        return print_unknown_stream_alerts(store, keys).await;
    }
    let unknown = store.unknown_streams().await?;
    if unknown.is_empty() {
        return Ok(());
    }
    let mut rows = vec![
        [
            "unknown stream",
            "entries",
            "oldest",
            "why no worker reads it",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for s in &unknown {
        rows.push(vec![
            s.key.clone(),
            table::thousands(s.length),
            s.oldest_ms.map_or_else(|| "-".to_owned(), table::age),
            s.why.clone(),
        ]);
    }
    print!("\n{}", table::render(&rows));
    let entries: u64 = unknown.iter().map(|s| s.length).sum();
    println!(
        "\n{} entries in {} streams no worker reads: resubmit them to a task stream, then delete the streams",
        table::thousands(entries),
        unknown.len()
    );
    Ok(())
}

/// Alerts read to find the workers' latest `unknown_stream` findings.
const ALERTS_READ: usize = 500;

/// The streams no worker reads as the workers' own scan last found them
/// (each `unknown_stream` alert, newest per stream), with a line saying
/// why this view did not scan.
async fn print_unknown_stream_alerts(store: &Store, keys: u64) -> anyhow::Result<()> {
    let mut seen = std::collections::BTreeSet::new();
    let mut rows = vec![
        ["unknown stream", "entries", "alerted", "message"]
            .map(String::from)
            .to_vec(),
    ];
    let now = now_ms();
    for entry in store.alerts(ALERTS_READ).await? {
        let alert = entry.alert;
        if alert.alert != AlertName::UnknownStream.as_str() || !seen.insert(alert.stream.clone()) {
            continue;
        }
        rows.push(vec![
            alert.stream,
            table::thousands(alert.value as u64),
            format!("{} ago", table::age(now.saturating_sub(alert.at_ms))),
            alert.message,
        ]);
    }
    if rows.len() > 1 {
        print!("\n{}", table::render(&rows));
    }
    println!(
        "\nStreams no worker reads: not looked for here ({} keys; finding them is a pass over every key): {}; `tandem queues --scan` looks now",
        table::thousands(keys),
        if rows.len() > 1 {
            "above, as the workers' `unknown_stream` alerts last found them"
        } else {
            "the workers look through about 10,000 keys each alert interval and have raised no `unknown_stream` alert lately"
        }
    );
    Ok(())
}
