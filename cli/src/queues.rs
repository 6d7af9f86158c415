//! `tandem queues`: what waits where, and what waits in streams no worker
//! reads.

use std::process::ExitCode;

use tandem_shared::clock::now_ms;
use tandem_shared::store::{DataLoss, Store};
use tandem_shared::{Class, Config};

use super::table;

pub(crate) async fn run(config: &Config) -> anyhow::Result<ExitCode> {
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
    print_unknown_streams(&store).await?;
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
async fn print_unknown_streams(store: &Store) -> anyhow::Result<()> {
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
