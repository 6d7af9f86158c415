//! Times the `risk` kind: the CPU twin, and the GPU path with `--gpu`.
//!
//! Run with `cargo run --release -p tandem-kernels --example bench_risk -- [--gpu]`
//!
//! Cases: Monte Carlo, 50 assets x 10^6 scenarios; historical, 500 assets x
//! 10^4 rows; both at confidence 0.95 and 0.99 (K = 5 % of the scenarios).
//! One `BENCH {...}` line per measurement, the best of a few repetitions.

use std::time::Instant;

use tandem_kernels::philox;
use tandem_kernels::risk::{self, Historical, MonteCarlo, Tail};
use tandem_kernels::runtime::Gpu;

const REPETITIONS: usize = 3;

/// A factor-like covariance: volatilities rising with the index, pairwise
/// correlation 0.3 (positive definite).
fn covariance(n: usize) -> Vec<f64> {
    let vol = |i: usize| 0.01 + 0.0004 * i as f64;
    (0..n * n)
        .map(|ij| {
            let (i, j) = (ij / n, ij % n);
            let rho = if i == j { 1.0 } else { 0.3 };
            rho * vol(i) * vol(j)
        })
        .collect()
}

/// Daily-like returns: 1 % normals from Philox (any fixed data will do).
fn returns(rows: usize, n: usize) -> Vec<f64> {
    (0..rows * n)
        .map(|i| {
            let w = philox::philox4x32_10(philox::counter(i as u64, 0), philox::key(5));
            0.0002 + 0.01 * f64::from(philox::normal_pair(w[0], w[1]).0)
        })
        .collect()
}

fn best(mut run: impl FnMut() -> Tail) -> (f64, Tail) {
    let mut best = f64::INFINITY;
    let mut tail = Tail::default();
    for _ in 0..REPETITIONS {
        let start = Instant::now();
        tail = run();
        best = best.min(start.elapsed().as_secs_f64());
    }
    (best, tail)
}

fn report(case: &str, implementation: &str, items: u64, seconds: f64, tail: &Tail) {
    println!(
        "BENCH {{\"kind\":\"risk\",\"case\":\"{case}\",\"impl\":\"{implementation}\",\"items\":{items},\"unit\":\"scenarios\",\"seconds\":{seconds:.6}}}"
    );
    let k99 = items.div_ceil(100) as usize;
    if let Some((var, cvar)) = tail.var_cvar(k99) {
        eprintln!(
            "  {case} {implementation}: VaR99 {var:.4} CVaR99 {cvar:.4} mean {:.6}",
            tail.mean(items)
        );
    }
}

fn main() {
    let use_gpu = std::env::args().any(|a| a == "--gpu");
    let gpu = if use_gpu {
        match Gpu::open(0, &[risk::SOURCE], None) {
            Ok(gpu) if gpu.has("risk") => Some(gpu),
            Ok(gpu) => {
                eprintln!(
                    "bench_risk: the risk kernels did not load: {:?}",
                    gpu.disabled
                );
                None
            }
            Err(err) => {
                eprintln!("bench_risk: no GPU: {}", err.message);
                None
            }
        }
    } else {
        None
    };

    let n = 50;
    let scenarios = 1_000_000u64;
    let weights: Vec<f64> = (0..n).map(|i| 10_000.0 + 500.0 * i as f64).collect();
    let mu: Vec<f64> = (0..n).map(|i| 0.0001 * (i % 5) as f64).collect();
    let cov = covariance(n);
    let keep = scenarios.div_ceil(20) as usize;
    let blocks = 0..risk::block_count(scenarios);
    let case = "mc_50x1m";
    let build = || MonteCarlo::new(&weights, &mu, &cov, scenarios, 42).expect("positive definite");
    let (seconds, tail) = best(|| risk::monte_carlo_cpu(&build(), blocks.clone(), keep));
    report(case, "rust_cpu", scenarios, seconds, &tail);
    if let Some(gpu) = &gpu {
        let (seconds, tail) =
            best(|| risk::monte_carlo_gpu(gpu, &build(), blocks.clone(), keep).expect("GPU run"));
        report(case, "cuda", scenarios, seconds, &tail);
    }

    let n = 500;
    let rows = 10_000u64;
    let weights: Vec<f64> = (0..n).map(|i| 1_000.0 + 10.0 * i as f64).collect();
    let history = returns(rows as usize, n);
    let run = Historical {
        weights: &weights,
        returns: &history,
    };
    let keep = rows.div_ceil(20) as usize;
    let blocks = 0..risk::block_count(rows);
    let case = "hist_500x10k";
    let (seconds, tail) = best(|| risk::historical_cpu(&run, blocks.clone(), keep));
    report(case, "rust_cpu", rows, seconds, &tail);
    if let Some(gpu) = &gpu {
        let (seconds, tail) =
            best(|| risk::historical_gpu(gpu, &run, blocks.clone(), keep).expect("GPU run"));
        report(case, "cuda", rows, seconds, &tail);
    }
}
