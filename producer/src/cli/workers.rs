//! `tandem workers`: the live worker registry, one line per worker.

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use tandem_shared::Config;
use tandem_shared::device::{Health, format_size};
use tandem_shared::store::Store;
use tandem_shared::wire::WorkerInfo;

use super::table;

pub(crate) async fn run(config: &Config) -> anyhow::Result<ExitCode> {
    let store = Store::connect(config).await?;
    let workers = store.workers().await?;
    if workers.is_empty() {
        println!("no live workers");
        return Ok(ExitCode::SUCCESS);
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let mut rows = vec![
        [
            "worker", "device", "name", "role", "health", "tasks", "memory", "done", "failed",
            "beat",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for w in &workers {
        rows.push(row(w, now));
    }
    print!("{}", table::render(&rows));
    Ok(ExitCode::SUCCESS)
}

fn row(w: &WorkerInfo, now_ms: u64) -> Vec<String> {
    // A healthy worker with tasks running is busy; a stopping one says so.
    let health = match (w.health, w.state.as_str(), w.active) {
        (Health::Healthy, "draining", _) => "draining".to_owned(),
        (Health::Healthy, _, n) if n > 0 => "busy".to_owned(),
        (health, _, _) => health.to_string(),
    };
    let memory = if w.memory_budget > 0 {
        format!(
            "{} / {}",
            format_size(w.memory_reserved),
            format_size(w.memory_budget)
        )
    } else {
        "-".to_owned()
    };
    vec![
        w.id.clone(),
        w.device.clone(),
        if w.device_name.is_empty() {
            "-".to_owned()
        } else {
            w.device_name.clone()
        },
        w.role.to_string(),
        health,
        format!("{}/{}", w.active, w.concurrency),
        memory,
        table::thousands(w.succeeded),
        table::thousands(w.failed),
        table::age(now_ms.saturating_sub(w.heartbeat_at_ms)),
    ]
}

#[cfg(test)]
mod tests {
    use tandem_shared::device::Role;

    use super::*;

    #[test]
    fn rows_say_busy_draining_and_memory() {
        let mut w = WorkerInfo {
            id: "h-sim0-1-ab".into(),
            device: "SIM-0-a".into(),
            device_name: "A (simulated)".into(),
            role: Role::Heavy,
            active: 1,
            concurrency: 2,
            state: "running".into(),
            memory_budget: 10 << 30,
            memory_reserved: 2 << 30,
            heartbeat_at_ms: 1_000,
            ..WorkerInfo::default()
        };
        let r = row(&w, 1_500);
        assert_eq!(r[3], "heavy");
        assert_eq!(r[4], "busy");
        assert_eq!(r[5], "1/2");
        assert_eq!(r[6], "2.0 GiB / 10.0 GiB");
        w.state = "draining".into();
        assert_eq!(row(&w, 1_500)[4], "draining");
        w.health = Health::Failed;
        assert_eq!(row(&w, 1_500)[4], "failed");
        let cpu = WorkerInfo::default();
        assert_eq!(row(&cpu, 0)[6], "-");
    }
}
