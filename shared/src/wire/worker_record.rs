//! A worker's registry record (`tandem:worker:<id>`, a hash): who the
//! worker is, its device, its role and health, its counters and metrics.
//! Written whole with every heartbeat ([`WorkerInfo::to_pairs`]) and read
//! leniently ([`WorkerInfo::from_map`]).

use std::collections::HashMap;

use super::reader::FieldReader;
use super::{WIRE_VERSION, field};
use crate::device::{Health, Role};
use crate::task::Class;

/// A worker's registry record, refreshed with every heartbeat and expiring
/// when the heartbeats stop.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WorkerInfo {
    pub id: String,
    pub host: String,
    pub pid: u32,
    /// Which process instance this is, for peers on the same host:
    /// `<boot id>/<pid namespace>/<start time in clock ticks>` (Linux; empty
    /// elsewhere). A peer in the same boot and pid namespace whose `pid` no
    /// longer runs with that start time knows the worker is gone.
    pub process: String,
    /// Live workers (running, healthy, itself included) in its last read of
    /// the registry: what its routing is computed from.
    pub live_seen: usize,
    /// `cpu`, or the UUID of the GPU the worker is bound to (`GPU-...`;
    /// `SIM-...` for a simulated one).
    pub device: String,
    /// What the worker is for: `heavy`, `light`, `both` or `cpu`.
    pub role: Role,
    /// Whether its device takes tasks: `probing`, `healthy` or `failed`.
    pub health: Health,
    /// The GPU's name (`(simulated)` appended for a simulated one); empty
    /// for a CPU worker.
    pub device_name: String,
    /// The GPU's index among the host's visible GPUs.
    pub device_index: Option<u32>,
    pub pci_bus_id: String,
    pub simulated: bool,
    /// The capability score roles were assigned by.
    pub score: f64,
    /// `9.0`; `sim` for a simulated GPU.
    pub compute_capability: String,
    /// The GPU's memory, bytes.
    pub memory_total: u64,
    /// The part of it tasks may use.
    pub memory_budget: u64,
    /// The memory the running tasks declared.
    pub memory_reserved: u64,
    /// Models resident on the device (booked in its memory ledger), least
    /// recently used first, and what they hold together.
    pub models: Vec<String>,
    pub memory_models: u64,
    /// Model cache hits and misses since the worker started.
    pub model_hits: u64,
    pub model_misses: u64,
    /// A GPU worker's GPU paths (the kernel modules it compiled, and
    /// `cublas` for the model kinds) that loaded, and those that did not,
    /// once its probe passed. Both empty on a CPU worker, on a GPU worker
    /// still probing, and in records of workers older than this field
    /// (wire revision 2.1): "not reported", never "all loaded".
    pub kernels_loaded: Vec<String>,
    pub kernels_off: Vec<String>,
    /// Why the paths in `kernels_off` are off, one line for people
    /// (`monte_carlo, risk: NVRTC (libnvrtc) is not installed: ...`).
    pub kernels_off_why: String,
    /// The kinds this GPU worker runs on its CPU because a path they need
    /// is off: what the fleet must not mistake for GPU work.
    pub cpu_fallback: Vec<String>,
    pub classes: Vec<Class>,
    pub concurrency: usize,
    /// `running` or `draining` (stopping: claims nothing new).
    pub state: String,
    pub started_at_ms: u64,
    pub heartbeat_at_ms: u64,
    /// Tasks running now.
    pub active: usize,
    /// Tasks committed since start, by outcome.
    pub succeeded: u64,
    pub failed: u64,
    /// The Tandem version of the worker binary.
    pub version: String,
    /// Device and task metrics, sampled every `metrics_interval_ms`.
    pub metrics: WorkerMetrics,
}

/// Upper bounds (ms) of the task latency histogram's buckets; a last
/// bucket counts the rest.
pub const LATENCY_BUCKETS_MS: [u64; 10] = [1, 5, 10, 50, 100, 500, 1_000, 5_000, 10_000, 60_000];

/// What a worker measures, in its registry record: its device (from NVML on
/// a real GPU, simulated values on a simulated one; zero on a CPU worker)
/// and its tasks.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WorkerMetrics {
    /// When these were sampled (worker clock, ms).
    pub at_ms: u64,
    /// GPU busy share over the last sample period, 0 to 1.
    pub gpu_utilization: f64,
    /// Device memory in use (all processes), bytes.
    pub gpu_memory_used: u64,
    pub gpu_temperature_c: f64,
    pub gpu_power_w: f64,
    pub gpu_sm_clock_mhz: u32,
    /// Tasks finished per second over the last sample period.
    pub tasks_per_s: f64,
    /// Finished tasks per latency bucket (claim to commit), bounds
    /// [`LATENCY_BUCKETS_MS`] and one more for the rest.
    pub latency_buckets: Vec<u64>,
    /// Sum of those latencies, ms.
    pub latency_sum_ms: f64,
    /// Finished tasks by `kind/class/status`.
    pub completed: std::collections::BTreeMap<String, u64>,
    /// Failed attempts by error code.
    pub errors: std::collections::BTreeMap<String, u64>,
    /// Lease extensions sent, and entries taken over from dead or stalled
    /// workers.
    pub lease_extensions: u64,
    pub reclaims: u64,
}

impl WorkerMetrics {
    fn counts_text(counts: &std::collections::BTreeMap<String, u64>) -> String {
        counts
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn counts(text: &str) -> std::collections::BTreeMap<String, u64> {
        text.split(',')
            .filter_map(|pair| {
                let (k, v) = pair.rsplit_once('=')?;
                Some((k.to_owned(), v.parse().ok()?))
            })
            .collect()
    }
}

impl WorkerInfo {
    /// The record's fields; a CPU worker's has no GPU fields but the
    /// memory ones (0).
    pub fn to_pairs(&self) -> Vec<(&'static str, String)> {
        use field::worker as f;
        let m = &self.metrics;
        let classes = self
            .classes
            .iter()
            .map(|c| c.as_str())
            .collect::<Vec<_>>()
            .join(",");
        let pairs = vec![
            (f::ID, self.id.clone()),
            (f::HOST, self.host.clone()),
            (f::PID, self.pid.to_string()),
            (f::PROCESS, self.process.clone()),
            (f::LIVE_SEEN, self.live_seen.to_string()),
            (f::DEVICE, self.device.clone()),
            (f::ROLE, self.role.as_str().to_owned()),
            (f::HEALTH, self.health.as_str().to_owned()),
            (f::DEVICE_NAME, self.device_name.clone()),
            (
                f::DEVICE_INDEX,
                self.device_index.map(|i| i.to_string()).unwrap_or_default(),
            ),
            (f::PCI_BUS_ID, self.pci_bus_id.clone()),
            (f::SIMULATED, u8::from(self.simulated).to_string()),
            (f::SCORE, self.score.to_string()),
            (f::COMPUTE_CAPABILITY, self.compute_capability.clone()),
            (f::MEMORY_TOTAL, self.memory_total.to_string()),
            (f::MEMORY_BUDGET, self.memory_budget.to_string()),
            (f::MEMORY_RESERVED, self.memory_reserved.to_string()),
            (f::MODELS, self.models.join(",")),
            (f::MEMORY_MODELS, self.memory_models.to_string()),
            (f::MODEL_HITS, self.model_hits.to_string()),
            (f::MODEL_MISSES, self.model_misses.to_string()),
            (f::KERNELS_LOADED, self.kernels_loaded.join(",")),
            (f::KERNELS_OFF, self.kernels_off.join(",")),
            (f::KERNELS_OFF_WHY, one_line(&self.kernels_off_why)),
            (f::CPU_FALLBACK, self.cpu_fallback.join(",")),
            (f::CLASSES, classes),
            (f::CONCURRENCY, self.concurrency.to_string()),
            (f::STATE, self.state.clone()),
            (f::STARTED_AT_MS, self.started_at_ms.to_string()),
            (f::HEARTBEAT_AT_MS, self.heartbeat_at_ms.to_string()),
            (f::ACTIVE, self.active.to_string()),
            (f::SUCCEEDED, self.succeeded.to_string()),
            (f::FAILED, self.failed.to_string()),
            (f::VERSION, self.version.clone()),
            (f::WIRE, WIRE_VERSION.to_string()),
            (f::METRICS_AT_MS, m.at_ms.to_string()),
            (f::GPU_UTILIZATION, m.gpu_utilization.to_string()),
            (f::GPU_MEMORY_USED, m.gpu_memory_used.to_string()),
            (f::GPU_TEMPERATURE_C, m.gpu_temperature_c.to_string()),
            (f::GPU_POWER_W, m.gpu_power_w.to_string()),
            (f::GPU_SM_CLOCK_MHZ, m.gpu_sm_clock_mhz.to_string()),
            (f::TASKS_PER_S, m.tasks_per_s.to_string()),
            (
                f::LATENCY_BUCKETS,
                m.latency_buckets
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            (f::LATENCY_SUM_MS, m.latency_sum_ms.to_string()),
            (f::COMPLETED, WorkerMetrics::counts_text(&m.completed)),
            (f::ERRORS, WorkerMetrics::counts_text(&m.errors)),
            (f::LEASE_EXTENSIONS, m.lease_extensions.to_string()),
            (f::RECLAIMS, m.reclaims.to_string()),
        ];
        // A CPU worker has no device name, index, bus id or compute
        // capability, nor GPU paths: those fields are left out rather than
        // empty.
        pairs.into_iter().filter(|(_, v)| !v.is_empty()).collect()
    }

    /// Reads a registry hash leniently, as [`TaskRecord::from_fields`]:
    /// a missing or malformed number reads as 0, text as empty.
    ///
    /// [`TaskRecord::from_fields`]: super::TaskRecord::from_fields
    pub fn from_map(map: &HashMap<String, String>) -> Self {
        use field::worker as f;
        let fields = FieldReader::last_wins(map.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())));
        let text = |name| fields.lenient_text(name).unwrap_or_default().to_owned();
        let number = |name| -> u64 { fields.lenient(name).unwrap_or(0) };
        let float = |name| {
            fields
                .lenient::<f64>(name)
                .filter(|v| v.is_finite())
                .unwrap_or(0.0)
        };
        let owned_list = |name| -> Vec<String> {
            fields
                .lenient_list(name, ',')
                .into_iter()
                .map(str::to_owned)
                .collect()
        };
        let list = |name| -> Vec<&str> {
            fields
                .lenient_text(name)
                .map(|v| v.split(',').collect())
                .unwrap_or_default()
        };
        WorkerInfo {
            id: text(f::ID),
            host: text(f::HOST),
            pid: fields.lenient(f::PID).unwrap_or(0),
            process: text(f::PROCESS),
            live_seen: fields.lenient(f::LIVE_SEEN).unwrap_or(0),
            device: text(f::DEVICE),
            // A record without a role is a CPU worker's (wire v1 before GPUs).
            role: fields.lenient(f::ROLE).unwrap_or(Role::Cpu),
            health: fields.lenient(f::HEALTH).unwrap_or(Health::Healthy),
            device_name: text(f::DEVICE_NAME),
            device_index: fields.lenient(f::DEVICE_INDEX),
            pci_bus_id: text(f::PCI_BUS_ID),
            simulated: fields.lenient_text(f::SIMULATED) == Some("1"),
            score: fields.lenient(f::SCORE).unwrap_or(0.0),
            compute_capability: text(f::COMPUTE_CAPABILITY),
            memory_total: number(f::MEMORY_TOTAL),
            memory_budget: number(f::MEMORY_BUDGET),
            memory_reserved: number(f::MEMORY_RESERVED),
            models: fields
                .lenient_list(f::MODELS, ',')
                .into_iter()
                .map(str::to_owned)
                .collect(),
            memory_models: number(f::MEMORY_MODELS),
            model_hits: number(f::MODEL_HITS),
            model_misses: number(f::MODEL_MISSES),
            kernels_loaded: owned_list(f::KERNELS_LOADED),
            kernels_off: owned_list(f::KERNELS_OFF),
            kernels_off_why: text(f::KERNELS_OFF_WHY),
            cpu_fallback: owned_list(f::CPU_FALLBACK),
            classes: list(f::CLASSES)
                .into_iter()
                .filter_map(|c| c.parse().ok())
                .collect(),
            concurrency: fields.lenient(f::CONCURRENCY).unwrap_or(0),
            state: text(f::STATE),
            started_at_ms: number(f::STARTED_AT_MS),
            heartbeat_at_ms: number(f::HEARTBEAT_AT_MS),
            active: fields.lenient(f::ACTIVE).unwrap_or(0),
            succeeded: number(f::SUCCEEDED),
            failed: number(f::FAILED),
            version: text(f::VERSION),
            metrics: WorkerMetrics {
                at_ms: number(f::METRICS_AT_MS),
                gpu_utilization: float(f::GPU_UTILIZATION),
                gpu_memory_used: number(f::GPU_MEMORY_USED),
                gpu_temperature_c: float(f::GPU_TEMPERATURE_C),
                gpu_power_w: float(f::GPU_POWER_W),
                gpu_sm_clock_mhz: fields.lenient(f::GPU_SM_CLOCK_MHZ).unwrap_or(0),
                tasks_per_s: float(f::TASKS_PER_S),
                latency_buckets: list(f::LATENCY_BUCKETS)
                    .into_iter()
                    .filter_map(|c| c.parse().ok())
                    .collect(),
                latency_sum_ms: float(f::LATENCY_SUM_MS),
                completed: fields
                    .lenient_text(f::COMPLETED)
                    .map(WorkerMetrics::counts)
                    .unwrap_or_default(),
                errors: fields
                    .lenient_text(f::ERRORS)
                    .map(WorkerMetrics::counts)
                    .unwrap_or_default(),
                lease_extensions: number(f::LEASE_EXTENSIONS),
                reclaims: number(f::RECLAIMS),
            },
        }
    }
}

/// `text` on one line: a reason quoted from a compiler or loader may span
/// several, and the record's text fields are one line each.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_info_round_trips() {
        let info = WorkerInfo {
            id: "host-1-ab".into(),
            host: "node-7".into(),
            pid: 1,
            process: "boot/4026531836/123".into(),
            live_seen: 3,
            device: "SIM-0-a".into(),
            role: Role::Heavy,
            health: Health::Probing,
            device_name: "A (simulated)".into(),
            device_index: Some(0),
            pci_bus_id: String::new(),
            simulated: true,
            score: 52.09,
            compute_capability: "sim".into(),
            memory_total: 12 << 30,
            memory_budget: 11 << 30,
            memory_reserved: 1 << 30,
            models: vec!["px".into(), "risk-net".into()],
            memory_models: 42_760,
            model_hits: 7,
            model_misses: 2,
            kernels_loaded: vec!["selftest".into(), "mlp".into()],
            kernels_off: vec!["monte_carlo".into(), "cublas".into()],
            kernels_off_why:
                "monte_carlo: NVRTC (libnvrtc) is not installed | cublas: no libcublas".into(),
            cpu_fallback: vec!["infer".into(), "monte_carlo".into()],
            classes: vec![Class::Cpu, Class::Heavy],
            concurrency: 4,
            state: "running".into(),
            started_at_ms: 5,
            heartbeat_at_ms: 6,
            active: 2,
            succeeded: 10,
            failed: 1,
            version: "0.1.0".into(),
            metrics: WorkerMetrics {
                at_ms: 7,
                gpu_utilization: 0.83,
                gpu_memory_used: 3 << 30,
                gpu_temperature_c: 71.5,
                gpu_power_w: 215.25,
                gpu_sm_clock_mhz: 2_520,
                tasks_per_s: 123.5,
                latency_buckets: vec![0, 4, 9, 1, 0, 0, 0, 0, 0, 0, 2],
                latency_sum_ms: 812.75,
                completed: [("infer/light/succeeded".to_owned(), 12)].into(),
                errors: [("DEVICE_OUT_OF_MEMORY".to_owned(), 2)].into(),
                lease_extensions: 40,
                reclaims: 3,
            },
        };
        let map = info
            .to_pairs()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        assert_eq!(WorkerInfo::from_map(&map), info);
        // A record from before GPUs is a healthy CPU worker's.
        let old: HashMap<String, String> = [(field::worker::ID.to_owned(), "w".to_owned())].into();
        let old = WorkerInfo::from_map(&old);
        assert_eq!(
            (old.role, old.health, old.device_index),
            (Role::Cpu, Health::Healthy, None)
        );
        // A record from before wire revision 2.1 reports no GPU paths: not
        // "all loaded", not "all off".
        assert!(old.kernels_loaded.is_empty() && old.kernels_off.is_empty());
        assert!(old.cpu_fallback.is_empty() && old.kernels_off_why.is_empty());
    }

    /// A reason that spans lines (an NVRTC log) is written on one.
    #[test]
    fn the_reason_kernels_are_off_is_one_line() {
        let info = WorkerInfo {
            kernels_off: vec!["risk".into()],
            kernels_off_why: "risk: compile failed\n  error: x\n".into(),
            ..WorkerInfo::default()
        };
        let pairs = info.to_pairs();
        let why = pairs
            .iter()
            .find(|(k, _)| *k == field::worker::KERNELS_OFF_WHY)
            .map(|(_, v)| v.as_str());
        assert_eq!(why, Some("risk: compile failed error: x"));
    }
}
