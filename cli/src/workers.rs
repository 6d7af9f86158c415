//! `tandem workers`: the live worker registry, one line per worker, with
//! each device's latest readings. `tandem top` shows the same rows.

use std::process::ExitCode;
use tandem_shared::clock::now_ms;

use tandem_shared::Config;
use tandem_shared::device::Health;
use tandem_shared::store::Store;
use tandem_shared::wire::WorkerInfo;

use super::table;

/// The column names, in the order [`row`] fills them.
pub(crate) const HEADER: [&str; 16] = [
    "host",
    "worker",
    "device",
    "name",
    "role",
    "health",
    "util",
    "gpu memory",
    "temp",
    "power",
    "tasks",
    "tasks/s",
    "booked",
    "done",
    "failed",
    "beat",
];

pub(crate) async fn run(config: &Config) -> anyhow::Result<ExitCode> {
    let store = Store::connect_retrying(config).await?;
    let workers = store.workers().await?;
    if workers.is_empty() {
        println!("no live workers");
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", table::render(&rows(&workers, now_ms())));
    Ok(ExitCode::SUCCESS)
}

/// The header and one row per worker.
pub(crate) fn rows(workers: &[WorkerInfo], now_ms: u64) -> Vec<Vec<String>> {
    let mut rows = vec![HEADER.map(String::from).to_vec()];
    rows.extend(workers.iter().map(|w| row(w, now_ms)));
    rows
}

fn row(w: &WorkerInfo, now_ms: u64) -> Vec<String> {
    // A healthy worker with tasks running is busy; a stopping one says so.
    let health = match (w.health, w.state.as_str(), w.active) {
        (Health::Healthy, "draining", _) => "draining".to_owned(),
        (Health::Healthy, _, n) if n > 0 => "busy".to_owned(),
        (health, _, _) => health.to_string(),
    };
    let booked = if w.memory_budget > 0 {
        format!(
            "{} / {}",
            table::bytes(w.memory_reserved),
            table::bytes(w.memory_budget)
        )
    } else {
        "-".to_owned()
    };
    let [util, gpu_memory, temp, power] = device_readings(w);
    vec![
        dash(&w.host),
        w.id.clone(),
        w.device.clone(),
        dash(&w.device_name),
        w.role.to_string(),
        health,
        util,
        gpu_memory,
        temp,
        power,
        format!("{}/{}", w.active, w.concurrency),
        format!("{:.1}", w.metrics.tasks_per_s),
        booked,
        table::thousands(w.succeeded),
        table::thousands(w.failed),
        table::age(now_ms.saturating_sub(w.heartbeat_at_ms)),
    ]
}

/// Utilization, memory used / total, temperature and power. A CPU worker
/// has no device to read, and a GPU worker that has not sampled yet
/// (`at_ms` still 0) has nothing to show: both read `-` rather than zeros
/// that look like an idle, cold device.
fn device_readings(w: &WorkerInfo) -> [String; 4] {
    let m = &w.metrics;
    if w.device == "cpu" || w.device.is_empty() || m.at_ms == 0 {
        return ["-", "-", "-", "-"].map(String::from);
    }
    [
        format!("{:.0}%", m.gpu_utilization * 100.0),
        format!(
            "{} / {}",
            table::bytes(m.gpu_memory_used),
            table::bytes(w.memory_total)
        ),
        format!("{:.0}C", m.gpu_temperature_c),
        format!("{:.0}W", m.gpu_power_w),
    ]
}

fn dash(text: &str) -> String {
    if text.is_empty() {
        "-".to_owned()
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use tandem_shared::device::Role;
    use tandem_shared::wire::WorkerMetrics;

    use super::*;

    fn cell(r: &[String], name: &str) -> String {
        let at = HEADER.iter().position(|h| *h == name).unwrap();
        r[at].clone()
    }

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
        assert_eq!(r.len(), HEADER.len());
        assert_eq!(cell(&r, "role"), "heavy");
        assert_eq!(cell(&r, "health"), "busy");
        assert_eq!(cell(&r, "tasks"), "1/2");
        assert_eq!(cell(&r, "booked"), "2.0 GiB / 10.0 GiB");
        w.state = "draining".into();
        assert_eq!(cell(&row(&w, 1_500), "health"), "draining");
        w.health = Health::Failed;
        assert_eq!(cell(&row(&w, 1_500), "health"), "failed");
        let cpu = WorkerInfo::default();
        assert_eq!(cell(&row(&cpu, 0), "booked"), "-");
    }

    #[test]
    fn device_columns_show_readings_on_a_gpu_and_dashes_on_the_cpu() {
        let metrics = WorkerMetrics {
            at_ms: 5,
            gpu_utilization: 0.734,
            gpu_memory_used: 3 << 30,
            gpu_temperature_c: 71.4,
            gpu_power_w: 245.6,
            tasks_per_s: 12.34,
            ..WorkerMetrics::default()
        };
        let gpu = WorkerInfo {
            device: "GPU-1".into(),
            memory_total: 12 << 30,
            metrics: metrics.clone(),
            ..WorkerInfo::default()
        };
        let r = row(&gpu, 0);
        let got: Vec<String> = ["util", "gpu memory", "temp", "power", "tasks/s"]
            .iter()
            .map(|c| cell(&r, c))
            .collect();
        assert_eq!(got, ["73%", "3.0 GiB / 12.0 GiB", "71C", "246W", "12.3"]);

        let cpu = WorkerInfo {
            device: "cpu".into(),
            metrics,
            ..WorkerInfo::default()
        };
        let r = row(&cpu, 0);
        for column in ["util", "gpu memory", "temp", "power"] {
            assert_eq!(cell(&r, column), "-", "{column}");
        }
        assert_eq!(cell(&r, "tasks/s"), "12.3");
    }
}
