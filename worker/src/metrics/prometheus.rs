//! Workers' registry records in the Prometheus text exposition format
//! (version 0.0.4): one `# HELP` and `# TYPE` per metric family, then a
//! sample per worker, labelled with what stays the same when the worker
//! restarts: `host`, `member` (`gpu0`, `gpu1`, `sim0`, `cpu`: the fleet's
//! name for it), `device` and `role`; a GPU worker's also with the labels
//! of NVIDIA's DCGM exporter (`gpu`, `UUID`, `modelName`, `Hostname`), so
//! its series join DCGM's without relabelling. `tandem_build_info` and the
//! `process_*` families (CPU time, resident memory, open files, start time,
//! read from /proc for each worker's pid on this host) follow.
//!
//! A worker serves its own record; a fleet serves all its children's, which
//! is why everything here is rendered from [`WorkerInfo`] and nothing from
//! live worker state.

use std::fmt::Write as _;

use tandem_shared::device::Role;
use tandem_shared::wire::{LATENCY_BUCKETS_MS, WorkerInfo};

/// The `Content-Type` of what [`render`] writes.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Type {
    Gauge,
    Counter,
}

/// A metric family with one value per worker (no labels of its own).
struct Simple {
    name: &'static str,
    kind: Type,
    help: &'static str,
    /// Only for workers with a GPU.
    gpu_only: bool,
    value: fn(&WorkerInfo) -> f64,
}

const SIMPLE: &[Simple] = &[
    Simple {
        name: "tandem_gpu_utilization_ratio",
        kind: Type::Gauge,
        help: "Share of the last sample period the GPU was busy (0 to 1).",
        gpu_only: true,
        value: |w| w.metrics.gpu_utilization,
    },
    Simple {
        name: "tandem_gpu_memory_used_bytes",
        kind: Type::Gauge,
        help: "GPU memory in use, all processes.",
        gpu_only: true,
        value: |w| w.metrics.gpu_memory_used as f64,
    },
    Simple {
        name: "tandem_gpu_memory_total_bytes",
        kind: Type::Gauge,
        help: "GPU memory installed.",
        gpu_only: true,
        value: |w| w.memory_total as f64,
    },
    Simple {
        name: "tandem_gpu_temperature_celsius",
        kind: Type::Gauge,
        help: "GPU die temperature.",
        gpu_only: true,
        value: |w| w.metrics.gpu_temperature_c,
    },
    Simple {
        name: "tandem_gpu_power_watts",
        kind: Type::Gauge,
        help: "GPU power draw.",
        gpu_only: true,
        value: |w| w.metrics.gpu_power_w,
    },
    Simple {
        name: "tandem_gpu_sm_clock_hertz",
        kind: Type::Gauge,
        help: "GPU streaming multiprocessor clock.",
        gpu_only: true,
        value: |w| f64::from(w.metrics.gpu_sm_clock_mhz) * 1e6,
    },
    Simple {
        name: "tandem_tasks_active",
        kind: Type::Gauge,
        help: "Tasks running on the worker now.",
        gpu_only: false,
        value: |w| w.active as f64,
    },
    Simple {
        name: "tandem_lease_extensions_total",
        kind: Type::Counter,
        help: "Leases of running tasks the worker extended.",
        gpu_only: false,
        value: |w| w.metrics.lease_extensions as f64,
    },
    Simple {
        name: "tandem_reclaims_total",
        kind: Type::Counter,
        help: "Tasks the worker took over from dead or stalled workers.",
        gpu_only: false,
        value: |w| w.metrics.reclaims as f64,
    },
    Simple {
        name: "tandem_models_resident",
        kind: Type::Gauge,
        help: "Models resident in the worker's device memory.",
        gpu_only: false,
        value: |w| w.models.len() as f64,
    },
    Simple {
        name: "tandem_model_cache_hits_total",
        kind: Type::Counter,
        help: "Model requests served by a resident model.",
        gpu_only: false,
        value: |w| w.model_hits as f64,
    },
    Simple {
        name: "tandem_model_cache_misses_total",
        kind: Type::Counter,
        help: "Model requests that loaded the model.",
        gpu_only: false,
        value: |w| w.model_misses as f64,
    },
];

/// The exposition of these workers' records.
pub(crate) fn render(workers: &[WorkerInfo]) -> String {
    // The registry lists workers in no set order; scrapes read better in one.
    let mut sorted: Vec<WorkerInfo> = workers.to_vec();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    let workers = sorted.as_slice();
    let mut out = String::new();
    for family in SIMPLE {
        header(&mut out, family.name, family.kind, family.help);
        for worker in workers {
            if family.gpu_only && worker.role == Role::Cpu {
                continue;
            }
            sample(
                &mut out,
                family.name,
                &labels(worker, &[]),
                (family.value)(worker),
            );
        }
    }
    kernels_loaded(&mut out, workers);
    completed(&mut out, workers);
    errors(&mut out, workers);
    latency(&mut out, workers);
    build_info(&mut out, workers);
    process(&mut out, workers);
    out
}

/// `tandem_build_info`: 1 per worker, labelled with its version.
fn build_info(out: &mut String, workers: &[WorkerInfo]) {
    let name = "tandem_build_info";
    header(
        out,
        name,
        Type::Gauge,
        "The Tandem version each worker runs (always 1).",
    );
    for worker in workers {
        let extra = [("version", worker.version.as_str())];
        sample(out, name, &labels(worker, &extra), 1.0);
    }
}

/// The `process_*` families of the Prometheus client libraries, for each
/// worker whose pid runs on this host (a fleet serves only its own
/// children; a worker itself); none where /proc cannot be read.
fn process(out: &mut String, workers: &[WorkerInfo]) {
    let host = crate::host::hostname();
    let read: Vec<(&WorkerInfo, ProcessSample)> = workers
        .iter()
        .filter(|w| w.host == host)
        .filter_map(|w| ProcessSample::read(w.pid).map(|p| (w, p)))
        .collect();
    type Value = fn(&ProcessSample) -> f64;
    let families: [(&str, Type, &str, Value); 4] = [
        (
            "process_cpu_seconds_total",
            Type::Counter,
            "User and system CPU time the worker process spent, seconds.",
            |p| p.cpu_seconds,
        ),
        (
            "process_resident_memory_bytes",
            Type::Gauge,
            "Resident memory of the worker process.",
            |p| p.resident_bytes,
        ),
        (
            "process_open_fds",
            Type::Gauge,
            "Open file descriptors of the worker process.",
            |p| p.open_fds,
        ),
        (
            "process_start_time_seconds",
            Type::Gauge,
            "When the worker process started, seconds since the epoch.",
            |p| p.start_time_seconds,
        ),
    ];
    for (name, kind, help, value) in families {
        header(out, name, kind, help);
        for (worker, sample_of) in &read {
            sample(out, name, &labels(worker, &[]), value(sample_of));
        }
    }
}

/// One read of a process's /proc entries.
#[derive(Debug, Clone, Copy, PartialEq)]
struct ProcessSample {
    cpu_seconds: f64,
    resident_bytes: f64,
    open_fds: f64,
    start_time_seconds: f64,
}

impl ProcessSample {
    /// `None` when the process is gone or /proc is not there (not Linux).
    fn read(pid: u32) -> Option<Self> {
        let process = procfs::process::Process::new(i32::try_from(pid).ok()?).ok()?;
        let stat = process.stat().ok()?;
        let ticks = procfs::ticks_per_second().max(1) as f64;
        let boot = procfs::boot_time_secs().ok()? as f64;
        Some(ProcessSample {
            cpu_seconds: (stat.utime + stat.stime) as f64 / ticks,
            resident_bytes: (stat.rss * procfs::page_size()) as f64,
            open_fds: process.fd_count().map_or(0.0, |n| n as f64),
            start_time_seconds: boot + stat.starttime as f64 / ticks,
        })
    }
}

/// One sample per GPU path a GPU worker reported (its record's
/// `kernels_loaded` and `kernels_off`): 1 loaded, 0 off, its kinds on the
/// CPU. None for a CPU worker or one that has not reported yet.
fn kernels_loaded(out: &mut String, workers: &[WorkerInfo]) {
    let name = "tandem_gpu_kernels_loaded";
    header(
        out,
        name,
        Type::Gauge,
        "Whether a GPU path (a kernel module, or cublas for the model kinds) loaded on the worker's GPU: 1, or 0 when the kinds that need it run on the worker's CPU.",
    );
    for worker in workers {
        let paths = worker
            .kernels_loaded
            .iter()
            .map(|m| (m, 1.0))
            .chain(worker.kernels_off.iter().map(|m| (m, 0.0)));
        for (module, value) in paths {
            sample(out, name, &labels(worker, &[("module", module)]), value);
        }
    }
}

fn completed(out: &mut String, workers: &[WorkerInfo]) {
    let name = "tandem_tasks_completed_total";
    header(
        out,
        name,
        Type::Counter,
        "Task attempts the worker committed, by kind, class and status (retried, handed_back and split for attempts that did not end the task).",
    );
    for worker in workers {
        for (key, count) in &worker.metrics.completed {
            // `kind/class/status`: the kind may hold a slash, the others not.
            let mut parts = key.rsplitn(3, '/');
            let (Some(status), Some(class), Some(kind)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let extra = [("kind", kind), ("class", class), ("status", status)];
            sample(out, name, &labels(worker, &extra), *count as f64);
        }
    }
}

fn errors(out: &mut String, workers: &[WorkerInfo]) {
    let name = "tandem_task_errors_total";
    header(
        out,
        name,
        Type::Counter,
        "Failed task attempts, by error code.",
    );
    for worker in workers {
        for (code, count) in &worker.metrics.errors {
            sample(out, name, &labels(worker, &[("code", code)]), *count as f64);
        }
    }
}

fn latency(out: &mut String, workers: &[WorkerInfo]) {
    let name = "tandem_task_latency_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Time from claim to commit of the worker's task attempts."
    );
    let _ = writeln!(out, "# TYPE {name} histogram");
    for worker in workers {
        let buckets = &worker.metrics.latency_buckets;
        let mut cumulative = 0u64;
        for (index, bound_ms) in LATENCY_BUCKETS_MS.iter().enumerate() {
            cumulative += buckets.get(index).copied().unwrap_or(0);
            let le = number(*bound_ms as f64 / 1000.0);
            let labels = labels(worker, &[("le", &le)]);
            sample(out, &format!("{name}_bucket"), &labels, cumulative as f64);
        }
        let count: u64 = buckets.iter().sum();
        let labels_inf = labels(worker, &[("le", "+Inf")]);
        sample(out, &format!("{name}_bucket"), &labels_inf, count as f64);
        let plain = labels(worker, &[]);
        let sum_s = worker.metrics.latency_sum_ms / 1000.0;
        sample(out, &format!("{name}_sum"), &plain, sum_s);
        sample(out, &format!("{name}_count"), &plain, count as f64);
    }
}

fn header(out: &mut String, name: &str, kind: Type, help: &str) {
    let kind = match kind {
        Type::Gauge => "gauge",
        Type::Counter => "counter",
    };
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &str, value: f64) {
    let _ = writeln!(out, "{name}{{{labels}}} {}", number(value));
}

/// The fleet's name for a worker, stable across restarts: `gpu<index>`
/// (`sim<index>` for a simulated GPU), or `cpu`.
pub(crate) fn member(worker: &WorkerInfo) -> String {
    match (worker.role, worker.device_index) {
        (Role::Cpu, _) | (_, None) => "cpu".to_owned(),
        (_, Some(index)) if worker.simulated => format!("sim{index}"),
        (_, Some(index)) => format!("gpu{index}"),
    }
}

/// The worker's labels, then `extra`, as `name="value",...`.
fn labels(worker: &WorkerInfo, extra: &[(&str, &str)]) -> String {
    let role = worker.role.to_string();
    let member = member(worker);
    let mut base = vec![
        ("host", worker.host.as_str()),
        ("member", member.as_str()),
        ("device", worker.device.as_str()),
        ("role", role.as_str()),
    ];
    // DCGM exporter's labels: its series and these join on them as they
    // are (`gpu` is the index, as DCGM's).
    let gpu = worker.device_index.map(|i| i.to_string());
    if worker.role != Role::Cpu
        && let Some(gpu) = gpu.as_deref()
    {
        base.extend([
            ("gpu", gpu),
            ("UUID", worker.device.as_str()),
            ("modelName", worker.device_name.as_str()),
            ("Hostname", worker.host.as_str()),
        ]);
    }
    base.iter()
        .chain(extra)
        .map(|(name, value)| format!("{name}=\"{}\"", escape(value)))
        .collect::<Vec<_>>()
        .join(",")
}

/// A label value with `\`, `"` and newlines escaped, as the format asks.
fn escape(value: &str) -> String {
    value
        .replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

/// A sample value: Go-style special values, else the shortest decimal that
/// reads back the same.
fn number(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value == f64::INFINITY {
        "+Inf".into()
    } else if value == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        value.to_string()
    }
}

#[cfg(test)]
mod tests {
    use tandem_shared::wire::WorkerMetrics;

    use super::*;

    fn worker(id: &str, role: Role) -> WorkerInfo {
        WorkerInfo {
            id: id.into(),
            host: "h".into(),
            device: if role == Role::Cpu { "cpu" } else { "SIM-0-a" }.into(),
            device_index: (role != Role::Cpu).then_some(0),
            device_name: if role == Role::Cpu {
                ""
            } else {
                "Sim (simulated)"
            }
            .into(),
            simulated: true,
            version: "0.1.0".into(),
            role,
            memory_total: 8 << 30,
            active: 2,
            kernels_loaded: if role == Role::Cpu {
                Vec::new()
            } else {
                vec!["risk".into()]
            },
            kernels_off: if role == Role::Cpu {
                Vec::new()
            } else {
                vec!["cublas".into()]
            },
            metrics: WorkerMetrics {
                gpu_utilization: 0.5,
                gpu_sm_clock_mhz: 1_500,
                latency_buckets: vec![1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                latency_sum_ms: 70_004.0,
                completed: [
                    ("noop/cpu/succeeded".to_owned(), 3),
                    ("fail/cpu/failed".to_owned(), 1),
                ]
                .into(),
                errors: [("E_X".to_owned(), 1)].into(),
                ..WorkerMetrics::default()
            },
            ..WorkerInfo::default()
        }
    }

    /// Every line is a comment or `name{labels} value`.
    fn samples(text: &str) -> Vec<(&str, &str, f64)> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|line| {
                let (series, value) = line.rsplit_once(' ').expect("name{labels} value");
                let (name, labels) = series.split_once('{').expect("labels");
                let labels = labels.strip_suffix('}').expect("closing brace");
                let value = match value {
                    "+Inf" => f64::INFINITY,
                    v => v.parse().expect("a number"),
                };
                (name, labels, value)
            })
            .collect()
    }

    #[test]
    fn renders_gauges_counters_and_a_cumulative_histogram() {
        let text = render(&[worker("g", Role::Heavy), worker("c", Role::Cpu)]);
        let samples = samples(&text);
        let find = |name: &str, label: &str| {
            samples
                .iter()
                .find(|(n, l, _)| *n == name && l.contains(label))
                .map(|(_, _, v)| *v)
        };
        assert_eq!(
            find("tandem_gpu_utilization_ratio", "member=\"sim0\""),
            Some(0.5)
        );
        assert_eq!(
            find("tandem_gpu_sm_clock_hertz", "member=\"sim0\""),
            Some(1.5e9)
        );
        // A CPU worker has no GPU series.
        assert_eq!(find("tandem_gpu_utilization_ratio", "member=\"cpu\""), None);
        assert_eq!(find("tandem_tasks_active", "member=\"cpu\""), Some(2.0));
        assert_eq!(
            find(
                "tandem_tasks_completed_total",
                "kind=\"noop\",class=\"cpu\",status=\"succeeded\""
            ),
            Some(3.0)
        );
        assert_eq!(find("tandem_task_errors_total", "code=\"E_X\""), Some(1.0));
        assert_eq!(
            find("tandem_task_latency_seconds_bucket", "le=\"0.001\""),
            Some(1.0)
        );
        assert_eq!(
            find("tandem_task_latency_seconds_bucket", "le=\"0.005\""),
            Some(3.0)
        );
        assert_eq!(
            find("tandem_task_latency_seconds_bucket", "le=\"60\""),
            Some(3.0)
        );
        assert_eq!(
            find("tandem_task_latency_seconds_bucket", "le=\"+Inf\""),
            Some(4.0)
        );
        assert_eq!(
            find("tandem_task_latency_seconds_count", "member=\"sim0\""),
            Some(4.0)
        );
        assert_eq!(
            find("tandem_task_latency_seconds_sum", "member=\"sim0\""),
            Some(70.004)
        );
        // A GPU worker's paths: 1 loaded, 0 off; none for the CPU worker.
        assert_eq!(
            find("tandem_gpu_kernels_loaded", "module=\"risk\""),
            Some(1.0)
        );
        assert_eq!(
            find("tandem_gpu_kernels_loaded", "module=\"cublas\""),
            Some(0.0)
        );
        assert!(
            !samples
                .iter()
                .any(|(n, l, _)| *n == "tandem_gpu_kernels_loaded" && l.contains("member=\"cpu\""))
        );
        // DCGM's labels on a GPU worker's series, none on a CPU worker's.
        assert_eq!(
            find(
                "tandem_gpu_temperature_celsius",
                "gpu=\"0\",UUID=\"SIM-0-a\",modelName=\"Sim (simulated)\",Hostname=\"h\""
            ),
            Some(0.0)
        );
        assert!(
            !samples
                .iter()
                .any(|(_, l, _)| l.contains("member=\"cpu\"") && l.contains("UUID="))
        );
        assert_eq!(find("tandem_build_info", "version=\"0.1.0\""), Some(1.0));
        // The pre-computed rate is gone: rate() over the counter replaces it.
        assert!(!text.contains("tandem_tasks_per_second"));
        // One HELP and TYPE per family, whatever the number of workers.
        assert_eq!(text.matches("# TYPE tandem_tasks_active gauge").count(), 1);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(number(f64::NAN), "NaN");
        assert_eq!(number(0.25), "0.25");
    }
}
