//! `tandem workers`: the live worker registry, one line per worker, with
//! each device's latest readings and whether a GPU worker's kernels
//! loaded (`--json`: one object per worker). `tandem top` shows the same
//! rows.

use std::process::ExitCode;

use clap::Args;
use serde_json::json;
use tandem_shared::clock::now_ms;

use tandem_shared::device::Health;
use tandem_shared::store::Store;
use tandem_shared::wire::WorkerInfo;
use tandem_shared::{Class, Config};

use super::table;

/// The column names, in the order [`row`] fills them.
pub(crate) const HEADER: [&str; 17] = [
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
    "kernels",
];

#[derive(Debug, Args)]
pub struct WorkersArgs {
    /// One JSON array of the workers (the registry's fields, numbers as
    /// numbers, lists as arrays) instead of the table.
    #[arg(long)]
    pub json: bool,
}

pub(crate) async fn run(config: &Config, args: WorkersArgs) -> anyhow::Result<ExitCode> {
    let store = Store::connect_retrying(config).await?;
    let workers = store.workers().await?;
    if args.json {
        let all: Vec<serde_json::Value> = workers.iter().map(to_json).collect();
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(ExitCode::SUCCESS);
    }
    super::queues::print_data_loss(&store).await?;
    if workers.is_empty() {
        println!("no live workers");
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", table::render(&rows(&workers, now_ms())));
    // What a GPU worker runs on its CPU, and why, under the table: the
    // column says which kinds, this says why.
    for w in workers.iter().filter(|w| !w.kernels_off.is_empty()) {
        println!(
            "{}: GPU paths off: {} ({})",
            w.id,
            w.kernels_off.join(", "),
            w.kernels_off_why
        );
    }
    // Pauses are the fleet's, not a worker's: every worker of a paused
    // class starts nothing of it.
    let states = store.flow_states(Class::ALL).await?;
    let mut paused = Vec::new();
    for (class, state) in Class::ALL.iter().zip(&states) {
        if state.paused_since_ms.is_some() {
            paused.push(class.to_string());
        }
        paused.extend(
            state
                .paused_priorities
                .iter()
                .map(|(p, _)| format!("{class}:{p}")),
        );
        paused.extend(
            state
                .paused_kinds
                .iter()
                .map(|(k, _)| format!("kind:{k} in {class}")),
        );
    }
    if !paused.is_empty() {
        println!(
            "paused fleet-wide (nothing new of these starts; tandem resume ...): {}",
            paused.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A worker as `--json` prints it.
pub(crate) fn to_json(w: &WorkerInfo) -> serde_json::Value {
    let gpu = w.device != "cpu" && !w.device.is_empty();
    json!({
        "id": w.id,
        "host": w.host,
        "pid": w.pid,
        "device": w.device,
        "device_name": w.device_name,
        "device_index": w.device_index,
        "simulated": w.simulated,
        "compute_capability": w.compute_capability,
        "role": w.role.to_string(),
        "health": w.health.to_string(),
        "state": w.state,
        "classes": w.classes.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
        "concurrency": w.concurrency,
        "active": w.active,
        "succeeded": w.succeeded,
        "failed": w.failed,
        "memory_total": w.memory_total,
        "memory_budget": w.memory_budget,
        "memory_reserved": w.memory_reserved,
        "models": w.models,
        "tasks_per_s": w.metrics.tasks_per_s,
        "gpu_utilization": gpu.then_some(w.metrics.gpu_utilization),
        "gpu_memory_used": gpu.then_some(w.metrics.gpu_memory_used),
        "gpu_temperature_c": gpu.then_some(w.metrics.gpu_temperature_c),
        "gpu_power_w": gpu.then_some(w.metrics.gpu_power_w),
        "kernels_loaded": w.kernels_loaded,
        "kernels_off": w.kernels_off,
        "kernels_off_why": w.kernels_off_why,
        "cpu_fallback": w.cpu_fallback,
        "started_at_ms": w.started_at_ms,
        "heartbeat_at_ms": w.heartbeat_at_ms,
        "version": w.version,
    })
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
        kernels(w),
    ]
}

/// A GPU worker's kernels: `ok` when every GPU path loaded, else the kinds
/// it runs on its CPU (`CPU fallback: infer, train`), or the paths off when
/// no kind needs them; `-` for a CPU worker and one not reporting (still
/// probing, or older than the field).
fn kernels(w: &WorkerInfo) -> String {
    match (
        w.kernels_loaded.is_empty() && w.kernels_off.is_empty(),
        w.kernels_off.is_empty(),
        w.cpu_fallback.is_empty(),
    ) {
        (true, _, _) => "-".to_owned(),
        (false, true, _) => "ok".to_owned(),
        (false, false, false) => format!("CPU fallback: {}", w.cpu_fallback.join(", ")),
        (false, false, true) => format!("off: {}", w.kernels_off.join(", ")),
    }
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
    fn the_kernels_column_says_what_a_gpu_worker_runs_on_its_cpu() {
        let mut w = WorkerInfo {
            device: "GPU-1".into(),
            ..WorkerInfo::default()
        };
        // Still probing, or a record older than the field: nothing known.
        assert_eq!(cell(&row(&w, 0), "kernels"), "-");
        w.kernels_loaded = vec!["risk".into(), "cublas".into()];
        assert_eq!(cell(&row(&w, 0), "kernels"), "ok");
        w.kernels_off = vec!["selftest".into()];
        assert_eq!(cell(&row(&w, 0), "kernels"), "off: selftest");
        w.kernels_off = vec!["mlp".into(), "cublas".into()];
        w.cpu_fallback = vec!["infer".into(), "train".into()];
        assert_eq!(cell(&row(&w, 0), "kernels"), "CPU fallback: infer, train");
        let json = to_json(&w);
        assert_eq!(json["cpu_fallback"], json!(["infer", "train"]));
        assert_eq!(json["kernels_off"], json!(["mlp", "cublas"]));
        assert_eq!(json["gpu_utilization"], json!(0.0));
        let cpu = to_json(&WorkerInfo {
            device: "cpu".into(),
            ..WorkerInfo::default()
        });
        assert_eq!(cpu["gpu_utilization"], serde_json::Value::Null);
        assert_eq!(cpu["cpu_fallback"], json!([]));
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
