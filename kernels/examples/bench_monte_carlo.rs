//! Times the `monte_carlo` kind: the CPU twin and, with `--gpu`, the GPU
//! path, on fixed cases, best of a few repetitions.
//!
//! Run with `cargo run --release -p tandem-kernels --example bench_monte_carlo -- [--gpu]`.
//! Prints one line per measurement:
//! `BENCH {"kind":"monte_carlo","case":...,"impl":"rust_cpu"|"cuda","items":paths,"unit":"paths","seconds":...}`.

mod common;

use tandem_kernels::monte_carlo::{self, Config};

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

fn report(case: &str, implementation: &str, paths: u64, seconds: f64) {
    common::Line {
        kind: "monte_carlo",
        unit: "paths",
        case,
        implementation,
        items: paths,
        seconds,
        bytes: None,
    }
    .print();
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
        report(case, "rust_cpu", config.paths, seconds);
        if let Some(gpu) = &gpu {
            // The first launch pays for loading the module's code.
            let warm = monte_carlo::price_gpu(gpu, config, &LEVELS);
            if let Err(err) = warm {
                eprintln!("{case}: GPU failed: {}", err.message);
                continue;
            }
            let mut failed = None;
            let (seconds, ()) =
                common::best(5, || match monte_carlo::price_gpu(gpu, config, &LEVELS) {
                    Ok(out) => call = out.european_call.price,
                    Err(err) => failed = Some(err.message),
                });
            match failed {
                Some(message) => eprintln!("{case}: GPU failed: {message}"),
                None => {
                    eprintln!("{case}: cuda call {call:.6}");
                    report(case, "cuda", config.paths, seconds);
                }
            }
        }
    }
}
