//! What every `bench_<kind>` example shares: the GPU that `--gpu` asks
//! for, best-of timing, and the `BENCH {json}` line `scripts/bench-compute`
//! reads.

use std::time::Instant;

use tandem_kernels::runtime::{self, Gpu, Source};

/// The GPU with `source` loaded, when `--gpu` was given and one is usable;
/// why not goes to stderr.
pub fn gpu_from_args(bench: &str, source: Source) -> Option<Gpu> {
    if !std::env::args().any(|a| a == "--gpu") {
        return None;
    }
    match Gpu::open(0, &[source], runtime::default_cache_dir().as_deref()) {
        Ok(gpu) if gpu.has(source.module) => Some(gpu),
        Ok(gpu) => {
            eprintln!("{bench}: the kernels did not load: {:?}", gpu.disabled);
            None
        }
        Err(err) => {
            eprintln!("{bench}: no GPU: {}", err.message);
            None
        }
    }
}

/// The best wall time of `repetitions` runs of `run` (at least one), in
/// seconds, and the last run's output.
pub fn best<T>(repetitions: usize, mut run: impl FnMut() -> T) -> (f64, T) {
    let start = Instant::now();
    let mut out = run();
    let mut best = start.elapsed().as_secs_f64();
    for _ in 1..repetitions {
        let start = Instant::now();
        out = run();
        best = best.min(start.elapsed().as_secs_f64());
    }
    (best, out)
}

/// One measurement of a kind's bench.
pub struct Line<'a> {
    pub kind: &'a str,
    pub unit: &'a str,
    pub case: &'a str,
    pub implementation: &'a str,
    pub items: u64,
    pub seconds: f64,
    /// The least traffic one pass must move (memory-bound cases only), so
    /// a GB/s figure can be printed; the same definition as bench/*.py.
    pub bytes: Option<u64>,
}

impl Line<'_> {
    pub fn print(&self) {
        let bytes = self
            .bytes
            .map_or_else(String::new, |b| format!(",\"bytes\":{b}"));
        println!(
            "BENCH {{\"kind\":\"{}\",\"case\":\"{}\",\"impl\":\"{}\",\"items\":{},\"unit\":\"{}\",\"seconds\":{:.6}{bytes}}}",
            self.kind, self.case, self.implementation, self.items, self.unit, self.seconds
        );
    }
}
