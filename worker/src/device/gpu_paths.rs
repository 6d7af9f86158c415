//! Which GPU paths a GPU worker has: each kernel module of
//! `tandem_kernels::SOURCES` it compiled and loaded, and cuBLAS (`cublas`)
//! for the model kinds, each loaded or off with the reason. A kind whose
//! path is off runs its CPU twin on the GPU worker's host: correct, but not
//! what the fleet bought the GPU for, so the worker says so loudly (one
//! ERROR line at start, the registry record's `kernels_off` and
//! `cpu_fallback`, `tandem workers`, and `tandem_gpu_kernels_loaded` in
//! `/metrics`) rather than only in a warning.
//!
//! A simulated GPU reports its paths as a real one would: all loaded,
//! unless its description has `no_nvrtc` (no kernel module loads) or
//! `no_cublas` (cuBLAS is off), so the reporting is tested on any machine.

use tandem_kernels::runtime::Gpu as Runtime;
use tandem_shared::device::Faults;

/// The path of the model kinds' matrix products.
pub const CUBLAS: &str = "cublas";

/// The paths the model kinds (`infer`, `predict_batch`, `train`) need: the
/// MLP kernels and cuBLAS.
pub const MODEL_PATHS: &[&str] = &["mlp", CUBLAS];

/// The paths a transformer's GPU copy needs: its kernels and cuBLAS.
/// Without them a transformer runs its CPU twin on a GPU worker too.
pub const TRANSFORMER_PATHS: &[&str] = &["transformer", CUBLAS];

/// A GPU worker's paths, in `SOURCES` order then `cublas`, each `None`
/// when loaded or `Some(why)` when off. Set once, when the first probe
/// passes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuPaths {
    paths: Vec<(&'static str, Option<String>)>,
}

impl GpuPaths {
    /// A real GPU's paths: its runtime's modules (what did not compile or
    /// load is in `runtime.disabled`), and `cublas`, off with `cublas_off`'s
    /// reason when given.
    pub fn of_runtime(runtime: &Runtime, cublas_off: Option<String>) -> Self {
        let mut paths: Vec<(&'static str, Option<String>)> = tandem_kernels::SOURCES
            .iter()
            .map(|source| {
                let why = runtime
                    .disabled
                    .iter()
                    .find(|(module, _)| *module == source.module)
                    .map(|(_, why)| why.clone())
                    .or_else(|| (!runtime.has(source.module)).then(|| "not loaded".to_owned()));
                (source.module, why)
            })
            .collect();
        paths.push((CUBLAS, cublas_off));
        GpuPaths { paths }
    }

    /// A simulated GPU's paths: all loaded, but for its faults.
    pub fn simulated(faults: &Faults) -> Self {
        let mut paths: Vec<(&'static str, Option<String>)> = tandem_kernels::SOURCES
            .iter()
            .map(|source| {
                let why = faults
                    .no_nvrtc
                    .then(|| "NVRTC (libnvrtc) is not installed (simulated: no_nvrtc)".to_owned());
                (source.module, why)
            })
            .collect();
        let cublas = faults.no_cublas.then(|| {
            "cuBLAS not found: no libcublas on this machine (simulated: no_cublas)".to_owned()
        });
        paths.push((CUBLAS, cublas));
        GpuPaths { paths }
    }

    /// The paths that loaded.
    pub fn loaded(&self) -> Vec<&'static str> {
        self.paths
            .iter()
            .filter(|(_, why)| why.is_none())
            .map(|(path, _)| *path)
            .collect()
    }

    /// The paths that are off.
    pub fn off(&self) -> Vec<&'static str> {
        self.paths
            .iter()
            .filter(|(_, why)| why.is_some())
            .map(|(path, _)| *path)
            .collect()
    }

    /// Whether `path` loaded (an unknown path did not).
    pub fn has(&self, path: &str) -> bool {
        self.paths
            .iter()
            .any(|(p, why)| *p == path && why.is_none())
    }

    /// Why the paths that are off are off, one line: paths with the same
    /// reason together (a missing NVRTC turns every module off for one
    /// reason), `a, b: reason | c: other reason`. Empty when none is off.
    pub fn why_off(&self) -> String {
        let mut groups: Vec<(Vec<&str>, &str)> = Vec::new();
        for (path, why) in &self.paths {
            let Some(why) = why else { continue };
            match groups.iter_mut().find(|(_, w)| *w == why.as_str()) {
                Some((paths, _)) => paths.push(path),
                None => groups.push((vec![path], why.as_str())),
            }
        }
        let text = groups
            .iter()
            .map(|(paths, why)| format!("{}: {why}", paths.join(", ")))
            .collect::<Vec<_>>()
            .join(" | ");
        text.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    /// The one line a GPU worker logs at start (at ERROR level) when any
    /// path is off: what is off and why, which kinds run on this GPU
    /// worker's CPU and which on its GPU. `None` when every path loaded.
    pub fn start_line(&self, on_cpu: &[&str], on_gpu: &[&str]) -> Option<String> {
        let off = self.off();
        if off.is_empty() {
            return None;
        }
        let list = |kinds: &[&str]| {
            if kinds.is_empty() {
                "none".to_owned()
            } else {
                kinds.join(", ")
            }
        };
        Some(format!(
            "CPU fallback on a GPU worker: GPU paths off: {} ({}); these kinds run on this worker's CPU: {}; on its GPU: {}",
            off.join(", "),
            self.why_off(),
            list(on_cpu),
            list(on_gpu),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(paths: &GpuPaths) -> Vec<&'static str> {
        paths.paths.iter().map(|(p, _)| *p).collect()
    }

    #[test]
    fn a_simulated_gpu_reports_its_paths_as_a_real_one_would() {
        let all = GpuPaths::simulated(&Faults::default());
        let mut expect: Vec<&str> = tandem_kernels::SOURCES.iter().map(|s| s.module).collect();
        expect.push(CUBLAS);
        assert_eq!(names(&all), expect);
        assert_eq!(all.loaded(), expect);
        assert!(all.off().is_empty() && all.why_off().is_empty());
        assert_eq!(all.start_line(&[], &["risk"]), None);

        let no_nvrtc = GpuPaths::simulated(&Faults {
            no_nvrtc: true,
            ..Faults::default()
        });
        assert_eq!(no_nvrtc.loaded(), [CUBLAS]);
        assert!(!no_nvrtc.has("monte_carlo") && no_nvrtc.has(CUBLAS));
        // One reason for every module: said once.
        let why = no_nvrtc.why_off();
        assert_eq!(why.matches("NVRTC").count(), 1, "{why}");
        assert!(why.starts_with("selftest, monte_carlo, risk"), "{why}");

        let no_cublas = GpuPaths::simulated(&Faults {
            no_cublas: true,
            ..Faults::default()
        });
        assert_eq!(no_cublas.off(), [CUBLAS]);
        assert!(no_cublas.has("mlp") && !no_cublas.has(CUBLAS));
    }

    #[test]
    fn the_start_line_says_what_is_off_why_and_what_runs_where() {
        let paths = GpuPaths {
            paths: vec![
                ("risk", Some("compile failed:\n  error".into())),
                ("patterns", None),
                ("mlp", Some("the CUBIN does not load".into())),
                (CUBLAS, Some("compile failed:\n  error".into())),
            ],
        };
        assert_eq!(
            paths.why_off(),
            "risk, cublas: compile failed: error | mlp: the CUBIN does not load"
        );
        let line = paths
            .start_line(&["infer", "risk"], &["patterns"])
            .expect("paths are off");
        assert_eq!(
            line,
            "CPU fallback on a GPU worker: GPU paths off: risk, mlp, cublas \
             (risk, cublas: compile failed: error | mlp: the CUBIN does not load); \
             these kinds run on this worker's CPU: infer, risk; on its GPU: patterns"
        );
        assert!(
            paths
                .start_line(&[], &[])
                .expect("off")
                .ends_with("CPU: none; on its GPU: none")
        );
        assert!(!paths.has("unknown"));
    }
}
