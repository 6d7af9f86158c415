//! `tandem alerts`: the latest alerts workers raised, newest first.

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Args;
use tandem_shared::Config;
use tandem_shared::store::{AlertEntry, Store};

use super::table;

#[derive(Debug, Args)]
pub struct AlertsArgs {
    /// At most this many alerts.
    #[arg(long, default_value_t = 20)]
    pub count: usize,
}

pub(crate) async fn run(config: &Config, args: AlertsArgs) -> anyhow::Result<ExitCode> {
    let store = Store::connect_retrying(config).await?;
    let alerts = store.alerts(args.count).await?;
    if alerts.is_empty() {
        println!("no alerts");
        return Ok(ExitCode::SUCCESS);
    }
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let mut rows = vec![
        [
            "ago",
            "alert",
            "worker",
            "device",
            "value",
            "threshold",
            "message",
        ]
        .map(String::from)
        .to_vec(),
    ];
    rows.extend(alerts.iter().map(|entry| row(entry, now_ms)));
    print!("{}", table::render(&rows));
    Ok(ExitCode::SUCCESS)
}

fn row(entry: &AlertEntry, now_ms: u64) -> Vec<String> {
    let a = &entry.alert;
    vec![
        table::age(now_ms.saturating_sub(a.at_ms)),
        a.alert.clone(),
        a.worker.clone(),
        a.device.clone(),
        number(a.value),
        number(a.threshold),
        a.message.clone(),
    ]
}

/// Whole numbers without a fraction, others with two decimals.
fn number(value: f64) -> String {
    if value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.2}")
    }
}
