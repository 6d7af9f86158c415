//! What every `bench_<kind>` example shares: the GPU that `--gpu` asks
//! for (with kernel timing on), best-of timing, the device's peak figures,
//! and the `BENCH {json}` line `scripts/bench-compute` reads.

use std::time::Instant;

use tandem_kernels::runtime::{self, Gpu, Source};

/// The GPU with `source` loaded, when `--gpu` was given and one is usable;
/// why not goes to stderr. Kernel timing is on, and the device's peak
/// figures go to stderr.
pub fn gpu_from_args(bench: &str, source: Source) -> Option<Gpu> {
    if !std::env::args().any(|a| a == "--gpu") {
        return None;
    }
    match Gpu::open(0, &[source], runtime::default_cache_dir().as_deref()) {
        Ok(gpu) if gpu.has(source.module) => {
            gpu.time_kernels(true);
            match Peak::of(&gpu) {
                Some(peak) => eprintln!(
                    "{bench}: sm_{}{}, {} SMs, peak {:.0} GB/s, {:.1} FP32 TFLOP/s",
                    gpu.compute_capability.0,
                    gpu.compute_capability.1,
                    peak.sm_count,
                    peak.bytes_per_second / 1e9,
                    peak.fp32_flops / 1e12
                ),
                None => eprintln!("{bench}: the device's attributes are unreadable"),
            }
            Some(gpu)
        }
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

/// A device's peak figures.
#[derive(Debug, Clone, Copy)]
pub struct Peak {
    pub sm_count: u32,
    /// Memory clock x bus width x 2, from the driver's attributes.
    pub bytes_per_second: f64,
    /// SMs x FP32 cores per SM x clock x 2 (an FMA is two operations),
    /// with the worker's cores-per-SM table.
    pub fp32_flops: f64,
}

impl Peak {
    pub fn of(gpu: &Gpu) -> Option<Peak> {
        let shape = gpu.shape().ok()?;
        let cores = tandem_shared::device::fp32_cores_per_sm(gpu.compute_capability);
        Some(Peak {
            sm_count: shape.sm_count,
            bytes_per_second: shape.peak_bytes_per_second(),
            fp32_flops: f64::from(shape.sm_count)
                * f64::from(cores)
                * f64::from(shape.clock_mhz)
                * 1e6
                * 2.0,
        })
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

/// [`best`] on `gpu`, with the least kernel time of a repetition (CUDA
/// events around the launches, [`Gpu::take_kernel_time`]) beside it.
pub fn best_gpu<T>(gpu: &Gpu, repetitions: usize, mut run: impl FnMut() -> T) -> (Timing, T) {
    gpu.take_kernel_time();
    let mut kernel = f64::INFINITY;
    let (seconds, out) = best(repetitions, || {
        let out = run();
        kernel = kernel.min(gpu.take_kernel_time().as_secs_f64());
        out
    });
    (
        Timing {
            seconds,
            kernel_seconds: Some(kernel),
            peak: Peak::of(gpu),
        },
        out,
    )
}

/// A measurement's times: end to end (host data in, host results out) and,
/// on a GPU, the kernels' own.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub seconds: f64,
    pub kernel_seconds: Option<f64>,
    pub peak: Option<Peak>,
}

impl Timing {
    /// A CPU measurement: no kernel time, no device peak.
    pub fn cpu(seconds: f64) -> Self {
        Timing {
            seconds,
            kernel_seconds: None,
            peak: None,
        }
    }
}

/// One measurement of a kind's bench.
pub struct Line<'a> {
    pub kind: &'a str,
    pub unit: &'a str,
    pub case: &'a str,
    pub implementation: &'a str,
    pub items: u64,
    pub timing: Timing,
    /// The least traffic one pass must move (memory-bound cases only), so
    /// a GB/s figure can be printed; the same definition as bench/*.py.
    pub bytes: Option<u64>,
    /// The floating-point operations one pass must do (compute-bound cases
    /// only), so a GFLOP/s figure can be printed.
    pub flops: Option<u64>,
}

impl Line<'_> {
    /// `BENCH {...}`: the fields every bench has printed (`seconds` end to
    /// end), then, on a GPU, `kernel_seconds` and the kernels' GB/s or
    /// GFLOP/s beside the device's peak and their ratio.
    pub fn print(&self) {
        let mut extra = String::new();
        if let Some(bytes) = self.bytes {
            extra.push_str(&format!(",\"bytes\":{bytes}"));
        }
        if let Some(flops) = self.flops {
            extra.push_str(&format!(",\"flops\":{flops}"));
        }
        if let Some(kernel) = self.timing.kernel_seconds {
            extra.push_str(&format!(",\"kernel_seconds\":{kernel:.6}"));
            let peak = self.timing.peak;
            // Every number finite: the line is JSON.
            if let (Some(bytes), Some(peak)) = (self.bytes, peak)
                && kernel > 0.0
                && peak.bytes_per_second > 0.0
            {
                let rate = bytes as f64 / kernel;
                extra.push_str(&format!(
                    ",\"kernel_gb_per_s\":{:.1},\"peak_gb_per_s\":{:.1},\"of_peak_bandwidth\":{:.3}",
                    rate / 1e9,
                    peak.bytes_per_second / 1e9,
                    rate / peak.bytes_per_second
                ));
            }
            if let (Some(flops), Some(peak)) = (self.flops, peak)
                && kernel > 0.0
                && peak.fp32_flops > 0.0
            {
                let rate = flops as f64 / kernel;
                extra.push_str(&format!(
                    ",\"kernel_gflop_per_s\":{:.1},\"peak_gflop_per_s\":{:.1},\"of_peak_fp32\":{:.3}",
                    rate / 1e9,
                    peak.fp32_flops / 1e9,
                    rate / peak.fp32_flops
                ));
            }
        }
        println!(
            "BENCH {{\"kind\":\"{}\",\"case\":\"{}\",\"impl\":\"{}\",\"items\":{},\"unit\":\"{}\",\"seconds\":{:.6}{extra}}}",
            self.kind, self.case, self.implementation, self.items, self.unit, self.timing.seconds
        );
    }
}
