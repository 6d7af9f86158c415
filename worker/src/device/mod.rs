//! The device a worker runs on: the CPU, a real GPU, or a simulated one.
//!
//! - `detect`: which GPUs this host has (NVML and the CUDA driver, matched
//!   by UUID or PCI bus id), or the simulated ones the configuration names.
//! - `gpu_paths`: which kernel modules and cuBLAS a GPU worker loaded, and
//!   which kinds that leaves on its CPU.
//! - this module: binding a worker to one of them with its role and memory
//!   budget, the health probe, and the faults a simulated GPU injects.
//!
//! A simulated GPU goes through everything a real one does (role, registry,
//! memory accounting, routing, failure handling) but runs its tasks on the
//! CPU, and says `(simulated)` wherever it is shown.

pub mod detect;
pub mod gpu_paths;
pub mod ledger;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use tandem_kernels::runtime::Gpu as Runtime;

use tandem_shared::Config;
use tandem_shared::device::{Faults, Gpu, Role};

pub use detect::Detection;
pub use gpu_paths::GpuPaths;

/// A worker's device, bound at start.
#[derive(Debug)]
pub struct Device {
    /// `None` for a CPU worker.
    pub gpu: Option<Gpu>,
    pub role: Role,
    /// Why the role (shown by `detect` and the start-up log line).
    pub why: String,
    /// The most memory the worker's tasks may declare at once, bytes: the
    /// GPU's memory less the reserve. 0 for a CPU worker (no limit).
    pub budget: u64,
    /// What the budget holds now: running tasks, resident models.
    pub ledger: ledger::Ledger,
    sim: SimState,
    /// A real GPU's kernels, compiled and loaded by the first passing probe.
    runtime: OnceLock<Arc<Runtime>>,
    /// A GPU's paths (real or simulated), set by the first passing probe.
    paths: OnceLock<GpuPaths>,
}

/// A simulated GPU's fault counters, for this process.
#[derive(Debug, Default)]
struct SimState {
    started: AtomicU64,
    probes: AtomicU32,
    /// Set once a sticky fault hit: every later task fails too.
    poisoned: AtomicBool,
}

/// What a simulated device does to the task about to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Injected {
    None,
    /// A sticky device error, with its message.
    Fail(String),
    /// The task never finishes.
    Hang,
    /// The worker process dies now.
    Die,
    /// The device runs out of memory.
    OutOfMemory(String),
}

impl Device {
    /// A CPU worker's device.
    pub fn cpu() -> Self {
        Device {
            gpu: None,
            role: Role::Cpu,
            why: "no GPU".into(),
            budget: 0,
            ledger: ledger::Ledger::new(0),
            sim: SimState::default(),
            runtime: OnceLock::new(),
            paths: OnceLock::new(),
        }
    }

    /// Binds to the GPU `config.device` selects (or the CPU), with the role
    /// `config.role` gives, else the one the host's GPUs rank it at.
    pub fn bind(config: &Config, detection: &Detection) -> Result<Self, String> {
        let Some(gpu) = config.device.pick(&detection.gpus)?.cloned() else {
            return Ok(Self::cpu());
        };
        let assignment = detection
            .assignments(config)
            .into_iter()
            .zip(&detection.gpus)
            .find(|(_, g)| g.uuid == gpu.uuid)
            .map(|(a, _)| a);
        let (role, why) = match (config.role, assignment) {
            (Some(role), _) => (role, "set by --role / TANDEM_ROLE".to_owned()),
            (None, Some(a)) => (a.role, a.why),
            (None, None) => (Role::Both, "the only GPU".to_owned()),
        };
        let reserve = u64::from(config.device_memory_reserve_pct);
        let budget = gpu.memory_total / 100 * (100 - reserve);
        Ok(Device {
            gpu: Some(gpu),
            role,
            why,
            budget,
            ledger: ledger::Ledger::new(budget),
            sim: SimState::default(),
            runtime: OnceLock::new(),
            paths: OnceLock::new(),
        })
    }

    /// `cpu`, or the GPU's UUID: what task records and the registry name.
    pub fn id(&self) -> String {
        self.gpu
            .as_ref()
            .map_or_else(|| "cpu".to_owned(), |g| g.uuid.clone())
    }

    /// `gpu0` / `sim1` / `cpu`: a short tag for worker ids and log lines.
    pub fn tag(&self) -> String {
        match &self.gpu {
            None => "cpu".into(),
            Some(g) if g.is_simulated() => format!("sim{}", g.index),
            Some(g) => format!("gpu{}", g.index),
        }
    }

    pub fn is_gpu(&self) -> bool {
        self.gpu.is_some()
    }

    fn faults(&self) -> Option<Faults> {
        self.gpu
            .as_ref()
            .and_then(|g| g.simulated.as_ref())
            .map(|s| s.faults)
    }

    /// How much longer than it ran a task takes on a paced simulated GPU:
    /// the run is stretched to elapsed x PACE_TFLOPS / tflops.
    pub fn pace(&self, elapsed: std::time::Duration) -> Option<std::time::Duration> {
        let sim = self.gpu.as_ref()?.simulated.as_ref()?;
        let stretch = tandem_shared::device::PACE_TFLOPS / sim.tflops - 1.0;
        (sim.paced && stretch > 0.0).then(|| elapsed.mul_f64(stretch))
    }

    /// How many times its size a model is booked at: 1, or a simulated
    /// GPU's `model_scale`.
    pub fn model_scale(&self) -> u64 {
        self.gpu
            .as_ref()
            .and_then(|g| g.simulated.as_ref())
            .map_or(1, |s| s.model_scale.max(1))
    }

    /// What the worker's tasks may still declare: the ledger's free memory,
    /// capped by what the driver reports free on a real GPU. `None` for a
    /// CPU worker (no limit).
    pub fn free_memory(&self, tasks_reserved: u64) -> Option<u64> {
        if !self.is_gpu() {
            return None;
        }
        let driver_free = self.runtime().and_then(|gpu| gpu.free_memory().ok());
        Some(self.ledger.free(tasks_reserved, driver_free))
    }

    /// The real GPU's kernels, once a probe passed; `None` on the CPU and
    /// simulated GPUs (whose tasks run the CPU twins).
    pub fn runtime(&self) -> Option<Arc<Runtime>> {
        self.runtime.get().cloned()
    }

    /// A GPU's paths once a probe passed; `None` on the CPU and before.
    pub fn gpu_paths(&self) -> Option<&GpuPaths> {
        self.paths.get()
    }

    /// Whether this GPU worker runs work needing `paths` on its GPU: a
    /// probe passed and every one of them loaded.
    pub fn has_gpu_paths(&self, paths: &[&str]) -> bool {
        self.gpu_paths()
            .is_some_and(|have| paths.iter().all(|p| have.has(p)))
    }

    /// Checks the device works before it takes tasks: a real GPU writes and
    /// reads back device memory, then compiles and loads the kernels, runs
    /// the self-test kernel against the CPU's Philox and opens cuBLAS; a
    /// simulated one fails its first `probe_failures` probes. A passing
    /// probe records the GPU's paths ([`Device::gpu_paths`]): a path that
    /// is off does not fail the probe (its kinds run on the CPU, and the
    /// worker says so), a sticky device error does.
    pub async fn probe(&self) -> Result<(), String> {
        let Some(gpu) = &self.gpu else {
            return Ok(());
        };
        if let Some(faults) = self.faults() {
            let n = self.sim.probes.fetch_add(1, Ordering::SeqCst);
            return if n < faults.probe_failures {
                Err(format!(
                    "simulated probe failure {} of {}",
                    n + 1,
                    faults.probe_failures
                ))
            } else {
                let _ = self.paths.set(GpuPaths::simulated(&faults));
                Ok(())
            };
        }
        let ordinal = gpu.index;
        let cache = tandem_kernels::runtime::default_cache_dir();
        let opened = tokio::task::spawn_blocking(move || {
            tandem_kernels::driver::probe(ordinal).map_err(|e| e.message)?;
            let runtime = Runtime::open(ordinal, tandem_kernels::SOURCES, cache.as_deref())
                .map_err(|e| e.message)?;
            if runtime.has(tandem_kernels::selftest::SOURCE.module) {
                let n = 4096;
                let gpu_words = tandem_kernels::selftest::philox_words_gpu(&runtime, 7, n)
                    .map_err(|e| format!("the self-test kernel failed: {}", e.message))?;
                if gpu_words != tandem_kernels::selftest::philox_words_cpu(7, n) {
                    return Err("the self-test kernel's numbers differ from the CPU's".to_owned());
                }
            }
            // cuBLAS once here, so that a host without it is reported at
            // start (and once), not found out model by model.
            let cublas_off = match tandem_kernels::mlp_gpu::cublas(&runtime) {
                Ok(_) => None,
                Err(err) if err.fault == tandem_kernels::driver::Fault::Sticky => {
                    return Err(format!("opening cuBLAS: {}", err.message));
                }
                Err(err) => Some(err.message),
            };
            let paths = GpuPaths::of_runtime(&runtime, cublas_off);
            Ok((runtime, paths))
        })
        .await;
        match opened {
            Ok(Ok((runtime, paths))) => {
                tracing::info!(
                    gpu = runtime.ordinal,
                    "kernels compiled with {}",
                    runtime.compiler_summary()
                );
                let _ = self.runtime.set(Arc::new(runtime));
                let _ = self.paths.set(paths);
                Ok(())
            }
            Ok(Err(why)) => Err(why),
            Err(join) => Err(format!("the probe panicked: {join}")),
        }
    }

    /// Called before a model is uploaded: a simulated GPU with
    /// `upload_fails` hits a sticky error (and every task after it fails
    /// too), as does one already poisoned. Real GPUs and the CPU inject
    /// nothing here; their uploads fail for real.
    pub fn before_upload(&self) -> Option<String> {
        let faults = self.faults()?;
        if self.sim.poisoned.load(Ordering::SeqCst) {
            return Some("simulated CUDA_ERROR_ILLEGAL_ADDRESS (the context is poisoned)".into());
        }
        if faults.upload_fails {
            self.sim.poisoned.store(true, Ordering::SeqCst);
            return Some(
                "simulated CUDA_ERROR_UNKNOWN while copying the model to the device".into(),
            );
        }
        None
    }

    /// Called as each task starts: what a simulated GPU's faults do to it.
    /// Real GPUs and the CPU inject nothing.
    pub fn before_task(&self, memory_bytes: u64) -> Injected {
        let Some(faults) = self.faults() else {
            return Injected::None;
        };
        if self.sim.poisoned.load(Ordering::SeqCst) {
            return Injected::Fail(
                "simulated CUDA_ERROR_ILLEGAL_ADDRESS (the context is poisoned)".into(),
            );
        }
        let done = self.sim.started.fetch_add(1, Ordering::SeqCst);
        if faults.die_after.is_some_and(|n| done >= n) {
            return Injected::Die;
        }
        if faults.fail_after.is_some_and(|n| done >= n) {
            self.sim.poisoned.store(true, Ordering::SeqCst);
            return Injected::Fail(format!(
                "simulated CUDA_ERROR_ILLEGAL_ADDRESS after {done} tasks"
            ));
        }
        if faults.hang_after.is_some_and(|n| done >= n) {
            return Injected::Hang;
        }
        if let Some(limit) = faults.oom_above
            && memory_bytes > limit
        {
            return Injected::OutOfMemory(format!(
                "simulated CUDA_ERROR_OUT_OF_MEMORY: the task declares {memory_bytes} bytes, the device holds {limit}"
            ));
        }
        Injected::None
    }
}

#[cfg(test)]
mod tests {
    use tandem_shared::device::DeviceSelector;

    use super::*;

    fn simulated(spec: &str) -> (Config, Detection) {
        let config = Config {
            simulate_gpus: spec.into(),
            ..Config::default()
        };
        let detection = Detection::simulated(&config, None).unwrap();
        (config, detection)
    }

    #[test]
    fn binds_by_uuid_or_index_with_the_assigned_role() {
        let (mut config, detection) =
            simulated("RTX 4070 Ti, 12 GiB, 40.09 TFLOPS; RTX 3060 Ti, 8 GiB, 16.2 TFLOPS");
        config.device = "SIM-1".parse().unwrap();
        let device = Device::bind(&config, &detection).unwrap();
        assert_eq!(device.role, Role::Light);
        assert_eq!(device.id(), "SIM-1-rtx-3060-ti");
        assert_eq!(device.tag(), "sim1");
        assert_eq!(device.budget, (8u64 << 30) / 100 * 90);

        config.device = DeviceSelector::Index(0);
        config.role = Some(Role::Both);
        let device = Device::bind(&config, &detection).unwrap();
        assert_eq!(device.role, Role::Both);
        assert!(device.why.contains("--role"));

        config.device = DeviceSelector::Index(4);
        assert!(
            Device::bind(&config, &detection)
                .unwrap_err()
                .contains("no GPU has index 4")
        );
        config.device = DeviceSelector::Cpu;
        assert_eq!(Device::bind(&config, &detection).unwrap().role, Role::Cpu);
    }

    #[tokio::test]
    async fn simulated_faults_fire_in_order() {
        let (mut config, detection) =
            simulated("A, 4 GiB, 10 TFLOPS, fail_after=2, oom_above=1 GiB, probe_failures=1");
        config.device = DeviceSelector::Index(0);
        let device = Device::bind(&config, &detection).unwrap();
        assert!(device.probe().await.is_err());
        assert!(device.probe().await.is_ok());
        assert_eq!(device.before_task(0), Injected::None);
        assert!(matches!(
            device.before_task(2 << 30),
            Injected::OutOfMemory(_)
        ));
        assert!(matches!(device.before_task(0), Injected::Fail(_)));
        // Sticky: every later task fails too.
        assert!(matches!(device.before_task(0), Injected::Fail(_)));

        let (mut config, detection) =
            simulated("A, 4 GiB, 10 TFLOPS, hang_after=1; B, 4 GiB, 10 TFLOPS, die_after=0");
        config.device = DeviceSelector::Index(0);
        let hangs = Device::bind(&config, &detection).unwrap();
        assert_eq!(hangs.before_task(0), Injected::None);
        assert_eq!(hangs.before_task(0), Injected::Hang);
        config.device = DeviceSelector::Index(1);
        assert_eq!(
            Device::bind(&config, &detection).unwrap().before_task(0),
            Injected::Die
        );
        assert_eq!(Device::cpu().before_task(u64::MAX), Injected::None);
    }

    #[tokio::test]
    async fn a_passing_probe_records_the_gpu_paths() {
        let (mut config, detection) = simulated(
            "A, 4 GiB, 10 TFLOPS, probe_failures=1, no_nvrtc; B, 4 GiB, 10 TFLOPS, no_cublas; C, 4 GiB, 10 TFLOPS",
        );
        config.device = DeviceSelector::Index(0);
        let no_nvrtc = Device::bind(&config, &detection).unwrap();
        assert!(no_nvrtc.probe().await.is_err());
        assert_eq!(no_nvrtc.gpu_paths(), None, "not before a probe passed");
        assert!(no_nvrtc.probe().await.is_ok());
        let paths = no_nvrtc.gpu_paths().expect("set by the probe");
        assert_eq!(paths.loaded(), [gpu_paths::CUBLAS]);
        assert!(!no_nvrtc.has_gpu_paths(gpu_paths::MODEL_PATHS));
        assert!(!no_nvrtc.has_gpu_paths(&["risk"]));

        config.device = DeviceSelector::Index(1);
        let no_cublas = Device::bind(&config, &detection).unwrap();
        assert!(no_cublas.probe().await.is_ok());
        assert!(no_cublas.has_gpu_paths(&["risk", "mlp"]));
        assert!(!no_cublas.has_gpu_paths(gpu_paths::MODEL_PATHS));

        config.device = DeviceSelector::Index(2);
        let sound = Device::bind(&config, &detection).unwrap();
        assert!(sound.probe().await.is_ok());
        assert!(sound.gpu_paths().expect("set").off().is_empty());
        assert!(sound.has_gpu_paths(gpu_paths::MODEL_PATHS));

        let cpu = Device::cpu();
        assert!(cpu.probe().await.is_ok());
        assert_eq!(cpu.gpu_paths(), None);
        assert!(!cpu.has_gpu_paths(&[]));
    }

    #[test]
    fn a_simulated_upload_fault_is_sticky() {
        let (mut config, detection) =
            simulated("A, 4 GiB, 10 TFLOPS, upload_fails; B, 4 GiB, 10 TFLOPS");
        config.device = DeviceSelector::Index(0);
        let failing = Device::bind(&config, &detection).unwrap();
        assert!(failing.before_upload().is_some());
        // The context is poisoned: the next upload and every task fail too.
        assert!(failing.before_upload().is_some());
        assert!(matches!(failing.before_task(0), Injected::Fail(_)));
        config.device = DeviceSelector::Index(1);
        assert_eq!(
            Device::bind(&config, &detection).unwrap().before_upload(),
            None
        );
        assert_eq!(Device::cpu().before_upload(), None);
    }
}
