//! `tandem queues`: what waits where.

use std::process::ExitCode;

use tandem_shared::store::Store;
use tandem_shared::{Class, Config};

use super::table;

pub(crate) async fn run(config: &Config) -> anyhow::Result<ExitCode> {
    let store = Store::connect(config).await?;
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
