//! Times the `risk` kind: the CPU twin, and the GPU path with `--gpu`.
//!
//! Run with `cargo run --release -p tandem-kernels --example bench_risk -- [--gpu]`
//!
//! Cases: Monte Carlo, 50 assets x 10^6 scenarios; historical, 500 assets x
//! 10^4 rows; both at confidence 0.95 and 0.99 (K = 5 % of the scenarios).
//! One `BENCH {...}` line per measurement, the best of a few repetitions;
//! a GPU line's `kernel_seconds` are the kernels' own (losses, block sums,
//! the tail's selection), and stderr says how many losses crossed to the
//! host.

mod common;

use tandem_kernels::philox;
use tandem_kernels::risk::{self, Historical, MonteCarlo, Tail};

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

fn report(
    case: &str,
    implementation: &str,
    items: u64,
    timing: common::Timing,
    bytes: Option<u64>,
    tail: &Tail,
) {
    common::Line {
        kind: "risk",
        unit: "scenarios",
        case,
        implementation,
        items,
        timing,
        bytes,
        flops: None,
    }
    .print();
    let k99 = items.div_ceil(100) as usize;
    if let Some((var, cvar)) = tail.var_cvar(k99) {
        eprintln!(
            "  {case} {implementation}: VaR99 {var:.4} CVaR99 {cvar:.4} mean {:.6}",
            tail.mean(items)
        );
    }
}

/// How many losses crossed to the host: the device keeps the rest.
fn print_traffic(case: &str, traffic: &risk::TailTraffic) {
    eprintln!(
        "  {case} cuda: {} of {} losses copied to the host ({:.1} %), {} whole chunks, {} failed checks",
        traffic.copied,
        traffic.losses,
        100.0 * traffic.copied as f64 / traffic.losses.max(1) as f64,
        traffic.whole_chunks,
        traffic.check_failures
    );
}

fn main() {
    let gpu = common::gpu_from_args("bench_risk", risk::SOURCE);
    let n = 50;
    let scenarios = 1_000_000u64;
    let weights: Vec<f64> = (0..n).map(|i| 10_000.0 + 500.0 * i as f64).collect();
    let mu: Vec<f64> = (0..n).map(|i| 0.0001 * (i % 5) as f64).collect();
    let cov = covariance(n);
    let keep = scenarios.div_ceil(20) as usize;
    let blocks = 0..risk::block_count(scenarios);
    let case = "mc_50x1m";
    let build = || MonteCarlo::new(&weights, &mu, &cov, scenarios, 42).expect("positive definite");
    let (seconds, tail) = common::best(REPETITIONS, || {
        risk::monte_carlo_cpu(&build(), blocks.clone(), keep)
    });
    report(
        case,
        "rust_cpu",
        scenarios,
        common::Timing::cpu(seconds),
        None,
        &tail,
    );
    if let Some(gpu) = &gpu {
        let (timing, (tail, traffic)) = common::best_gpu(gpu, REPETITIONS, || {
            risk::monte_carlo_gpu_traffic(gpu, &build(), blocks.clone(), keep).expect("GPU run")
        });
        report(case, "cuda", scenarios, timing, None, &tail);
        print_traffic(case, &traffic);
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
    // The returns and the weights, read once.
    let bytes = Some(8 * (rows * n as u64 + n as u64));
    let (seconds, tail) = common::best(REPETITIONS, || {
        risk::historical_cpu(&run, blocks.clone(), keep)
    });
    report(
        case,
        "rust_cpu",
        rows,
        common::Timing::cpu(seconds),
        bytes,
        &tail,
    );
    if let Some(gpu) = &gpu {
        let (timing, (tail, traffic)) = common::best_gpu(gpu, REPETITIONS, || {
            risk::historical_gpu_traffic(gpu, &run, blocks.clone(), keep).expect("GPU run")
        });
        report(case, "cuda", rows, timing, bytes, &tail);
        print_traffic(case, &traffic);
    }
}
