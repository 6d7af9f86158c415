//! Times `portfolio_opt` (random search of 65 536 candidates, then the
//! refine) on 100 and 500 assets, both objectives: the CPU twin, and with
//! `--gpu` the GPU search (the refine is on the CPU either way). Items are
//! the random candidates (unit "portfolios"); each line's seconds cover the
//! search and the refine; a GPU line's `kernel_seconds` the search
//! kernel's time from CUDA events, with GFLOP/s against the device's FP32 peak. `bench/portfolio_opt_numpy.py` builds the same
//! problems.
//!
//! Run with `cargo run --release -p tandem-kernels --example bench_portfolio_opt -- [--gpu]`.

mod common;

use tandem_kernels::portfolio_opt::{self, Objective, Problem, Settings};

const SAMPLES: u32 = 65_536;
const REPEATS: usize = 3;

/// A three-factor covariance with deterministic loadings (the same formulas
/// as the NumPy script), and returns that rise with the loadings.
fn problem_data(n: usize) -> (Vec<f64>, Vec<f64>) {
    let factor_var = [0.04, 0.01, 0.0025];
    let loading = |i: usize, f: usize| 0.5 + 0.5 * (((i + 1) * (f + 2)) as f64 * 0.7).sin();
    let idio = |i: usize| 0.01 + 0.03 * (0.5 + 0.5 * ((i + 1) as f64 * 1.3).cos());
    let mut cov = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            let mut c: f64 = (0..3)
                .map(|f| loading(i, f) * loading(j, f) * factor_var[f])
                .sum();
            if i == j {
                c += idio(i);
            }
            cov[i * n + j] = c;
        }
    }
    let mu = (0..n)
        .map(|i| 0.02 + 0.05 * loading(i, 0) + 0.02 * (0.5 + 0.5 * ((i + 1) as f64 * 2.1).sin()))
        .collect();
    (mu, cov)
}

fn line(case: &str, implementation: &str, n: usize, timing: common::Timing) {
    let n = n as u64;
    common::Line {
        kind: "portfolio_opt",
        unit: "portfolios",
        case,
        implementation,
        items: u64::from(SAMPLES),
        timing,
        bytes: None,
        // Each candidate's variance w' C w (n^2 multiply-adds) and return
        // (n), the search's least arithmetic.
        flops: Some(u64::from(SAMPLES) * (2 * n * n + 2 * n)),
    }
    .print();
}

fn main() {
    let gpu = common::gpu_from_args("bench_portfolio_opt", portfolio_opt::SOURCE);
    let settings = Settings {
        tolerance: 1e-10,
        max_iterations: 100_000,
        seed: 42,
        samples: SAMPLES,
    };
    for n in [100, 500] {
        let (mu, cov) = problem_data(n);
        for (name, objective) in [
            ("min_variance", Objective::MinVariance),
            ("max_sharpe", Objective::MaxSharpe),
        ] {
            let case = format!("n{n}_{name}");
            let Ok(problem) = Problem::new(&mu, &cov, 0.01, objective, 1.0) else {
                eprintln!("{case}: the problem is invalid");
                continue;
            };
            let solution = portfolio_opt::optimize_cpu(&problem, &settings);
            eprintln!(
                "{case}: return {:.6} volatility {:.6} sharpe {:?} iterations {} residual {:.2e} random best {:.6}",
                solution.expected_return,
                solution.volatility,
                solution.sharpe,
                solution.iterations,
                solution.residual,
                solution.random_best_objective
            );
            let (seconds, ()) = common::best(REPEATS, || {
                std::hint::black_box(portfolio_opt::optimize_cpu(&problem, &settings));
            });
            line(&case, "rust_cpu", n, common::Timing::cpu(seconds));
            if let Some(gpu) = &gpu {
                let mut failed = None;
                let (timing, ()) = common::best_gpu(gpu, REPEATS, || {
                    if let Err(err) = portfolio_opt::optimize_gpu(gpu, &problem, &settings) {
                        failed = Some(err.message);
                    }
                });
                match failed {
                    Some(message) => eprintln!("{case}: GPU failed: {message}"),
                    None => line(&case, "cuda", n, timing),
                }
            }
        }
    }
}
