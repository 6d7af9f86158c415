//! Times the `monte_carlo` kind: the CPU twin and, with `--gpu`, the GPU
//! path, on fixed cases, best of a few repetitions.
//!
//! Run with `cargo run --release -p tandem-kernels --example bench_monte_carlo -- [--gpu]`.
//! Prints one line per measurement:
//! `BENCH {"kind":"monte_carlo","case":...,"impl":"rust_cpu"|"cuda","items":paths,"unit":"paths","seconds":...}`,
//! a GPU line with `"kernel_seconds"` too (CUDA events around the launches);
//! stderr gives the launch's occupancy and waves on the device.

mod common;

use tandem_kernels::monte_carlo::{self, Config};
use tandem_kernels::runtime::{self, Gpu};

const LEVELS: [f64; 3] = [5.0, 50.0, 95.0];

fn config(paths: u64, steps: u32) -> Config {
    Config {
        s0: 100.0,
        strike: 100.0,
        rate: 0.03,
        dividend: 0.0,
        sigma: 0.2,
        maturity: 1.0,
        steps,
        paths,
        seed: 42,
    }
}

fn report(case: &str, implementation: &str, paths: u64, timing: common::Timing) {
    common::Line {
        kind: "monte_carlo",
        unit: "paths",
        case,
        implementation,
        items: paths,
        timing,
        bytes: None,
        flops: None,
    }
    .print();
}

/// The driver's occupancy for `gbm_paths` and the waves `config` takes.
fn print_waves(gpu: &Gpu, case: &str, config: &Config) {
    let shape = gpu.shape();
    let per_sm = gpu
        .function(monte_carlo::SOURCE.module, "gbm_paths")
        .and_then(|f| gpu.blocks_per_sm(&f, monte_carlo::GPU_THREADS, 0));
    match (shape, per_sm) {
        (Ok(shape), Ok(per_sm)) => {
            let blocks = config.blocks() * u64::from(monte_carlo::GPU_WARPS_PER_BLOCK);
            let resident = u64::from(shape.sm_count) * u64::from(per_sm);
            let (waves, used) = runtime::waves(blocks, resident);
            eprintln!(
                "  {case}: {blocks} blocks of {} threads, {per_sm} per SM on {} SMs: {waves} waves, {:.1} % of the SMs' time used",
                monte_carlo::GPU_THREADS,
                shape.sm_count,
                100.0 * used
            );
        }
        (Err(err), _) | (_, Err(err)) => eprintln!("  {case}: no occupancy: {}", err.message),
    }
}

fn main() {
    let gpu = common::gpu_from_args("bench_monte_carlo", monte_carlo::SOURCE);
    let cases = [
        ("1M_paths_252_steps", config(1_000_000, 252)),
        ("10M_paths_1_step", config(10_000_000, 1)),
    ];
    for (case, config) in &cases {
        let mut call = 0.0;
        let (seconds, ()) = common::best(3, || {
            call = monte_carlo::price_cpu(config, &LEVELS).european_call.price;
        });
        eprintln!("{case}: rust_cpu call {call:.6}");
        report(case, "rust_cpu", config.paths, common::Timing::cpu(seconds));
        if let Some(gpu) = &gpu {
            // The first launch pays for loading the module's code.
            let warm = monte_carlo::price_gpu(gpu, config, &LEVELS);
            if let Err(err) = warm {
                eprintln!("{case}: GPU failed: {}", err.message);
                continue;
            }
            let mut failed = None;
            let (timing, ()) = common::best_gpu(gpu, 5, || {
                match monte_carlo::price_gpu(gpu, config, &LEVELS) {
                    Ok(out) => call = out.european_call.price,
                    Err(err) => failed = Some(err.message),
                }
            });
            match failed {
                Some(message) => eprintln!("{case}: GPU failed: {message}"),
                None => {
                    eprintln!("{case}: cuda call {call:.6}");
                    report(case, "cuda", config.paths, timing);
                    print_waves(gpu, case, config);
                }
            }
        }
    }
}
