use super::refine::{matvec, max_abs_diff, project_excess, quadratic};
use super::search::{SearchMatrix, draw_tile, exponentials, philox_tile, score_tile, tile_scores};
use super::*;
use crate::philox;

/// A one-factor covariance: `beta beta' f + diag(idio)`; every
/// correlation positive and small enough that `S^-1 1 > 0`.
fn factor_covariance(n: usize) -> Vec<f64> {
    let beta: Vec<f64> = (0..n)
        .map(|i| 0.5 + 0.5 * ((i * 7 % 11) as f64 / 11.0))
        .collect();
    let idio: Vec<f64> = (0..n)
        .map(|i| 0.02 + 0.03 * ((i * 5 % 13) as f64 / 13.0))
        .collect();
    let mut cov = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            cov[i * n + j] = 0.01 * beta[i] * beta[j] + if i == j { idio[i] } else { 0.0 };
        }
    }
    cov
}

fn returns(n: usize) -> Vec<f64> {
    (0..n)
        .map(|i| 0.04 + 0.06 * ((i * 3 % 7) as f64 / 7.0))
        .collect()
}

fn settings(samples: u32) -> Settings {
    Settings {
        tolerance: 1e-13,
        max_iterations: 200_000,
        seed: 7,
        samples,
    }
}

/// Solves `S x = b` by Gaussian elimination with partial pivoting.
fn solve(cov: &[f64], b: &[f64]) -> Vec<f64> {
    let n = b.len();
    let mut a = cov.to_vec();
    let mut x = b.to_vec();
    for col in 0..n {
        let pivot = (col..n)
            .max_by(|&i, &j| a[i * n + col].abs().total_cmp(&a[j * n + col].abs()))
            .unwrap();
        for k in 0..n {
            a.swap(col * n + k, pivot * n + k);
        }
        x.swap(col, pivot);
        for row in col + 1..n {
            let f = a[row * n + col] / a[col * n + col];
            for k in col..n {
                a[row * n + k] -= f * a[col * n + k];
            }
            x[row] -= f * x[col];
        }
    }
    for col in (0..n).rev() {
        let mut v = x[col];
        for k in col + 1..n {
            v -= a[col * n + k] * x[k];
        }
        x[col] = v / a[col * n + col];
    }
    x
}

fn normalized(x: Vec<f64>) -> Vec<f64> {
    let total: f64 = x.iter().sum();
    x.into_iter().map(|v| v / total).collect()
}

#[test]
fn min_variance_matches_the_closed_form() {
    let n = 20;
    let cov = factor_covariance(n);
    let mu = returns(n);
    let expect = normalized(solve(&cov, &vec![1.0; n]));
    assert!(expect.iter().all(|&w| w > 0.0), "the bound must not bind");
    let problem = Problem::new(&mu, &cov, 0.0, Objective::MinVariance, 1.0).unwrap();
    let solution = optimize_cpu(&problem, &settings(256));
    assert!(solution.converged, "{solution:?}");
    assert_eq!(solution.method, Method::Convex);
    let error = max_abs_diff(&solution.weights, &expect);
    assert!(error <= 1e-8, "error {error}");
    assert!(solution.volatility.powi(2) <= solution.random_best_objective);
}

#[test]
fn max_sharpe_matches_the_tangency_portfolio() {
    let n = 20;
    let cov = factor_covariance(n);
    let rf = 0.01;
    // Returns such that S^-1 (mu - rf) is a known positive vector.
    let v: Vec<f64> = (0..n).map(|i| 1.0 + (i % 4) as f64).collect();
    let mut mu = vec![0.0; n];
    matvec(&cov, &v, &mut mu);
    mu.iter_mut().for_each(|m| *m += rf);
    let excess: Vec<f64> = mu.iter().map(|m| m - rf).collect();
    let expect = normalized(solve(&cov, &excess));
    assert!(expect.iter().all(|&w| w > 0.0), "the bound must not bind");
    let problem = Problem::new(&mu, &cov, rf, Objective::MaxSharpe, 1.0).unwrap();
    let solution = optimize_cpu(&problem, &settings(256));
    assert!(solution.converged, "{solution:?}");
    let error = max_abs_diff(&solution.weights, &expect);
    assert!(error <= 1e-8, "error {error}");
    assert!(solution.sharpe.unwrap() >= solution.random_best_objective);
}

/// The best of a 0.001 grid over the 3-asset simplex within the bound:
/// (least variance, greatest Sharpe).
fn grid_best(mu: &[f64], cov: &[f64], rf: f64, bound: f64) -> (f64, f64) {
    let (mut least, mut greatest) = (f64::INFINITY, f64::NEG_INFINITY);
    for i in 0..=1000u32 {
        for j in 0..=1000 - i {
            let w = [
                f64::from(i) / 1000.0,
                f64::from(j) / 1000.0,
                f64::from(1000 - i - j) / 1000.0,
            ];
            if w.iter().any(|&x| x > bound + 1e-12) {
                continue;
            }
            let var = quadratic(cov, &w);
            least = least.min(var);
            let ret = dot(mu, &w) - rf;
            greatest = greatest.max(ret / var.sqrt());
        }
    }
    (least, greatest)
}

fn check_grid(mu: [f64; 3], cov: [f64; 9], rf: f64, bound: f64) {
    let (least, greatest) = grid_best(&mu, &cov, rf, bound);
    let s = settings(4096);
    for objective in [Objective::MinVariance, Objective::MaxSharpe] {
        let problem = Problem::new(&mu, &cov, rf, objective, bound).unwrap();
        let solution = optimize_cpu(&problem, &s);
        let w = &solution.weights;
        assert!(w.iter().all(|&x| (0.0..=bound).contains(&x)), "{w:?}");
        assert!((w.iter().sum::<f64>() - 1.0).abs() <= 1e-14, "{w:?}");
        match objective {
            Objective::MinVariance => {
                let var = solution.volatility.powi(2);
                assert!(var <= least + 1e-12, "{var} vs grid {least}");
                assert!(solution.converged, "{solution:?}");
            }
            Objective::MaxSharpe => {
                let sharpe = solution.sharpe.unwrap();
                assert!(sharpe >= greatest - 1e-12, "{sharpe} vs grid {greatest}");
                assert!(solution.converged, "{solution:?}");
            }
        }
    }
}

#[test]
fn beats_a_grid_on_three_assets() {
    // Unbounded, then with a binding bound, then a negatively
    // correlated pair, then an asset below the risk-free rate.
    let cov = [0.04, 0.006, 0.0, 0.006, 0.09, 0.01, 0.0, 0.01, 0.16];
    check_grid([0.05, 0.08, 0.12], cov, 0.02, 1.0);
    check_grid([0.05, 0.08, 0.12], cov, 0.02, 0.4);
    let hedged = [0.04, -0.03, 0.002, -0.03, 0.05, 0.0, 0.002, 0.0, 0.01];
    check_grid([0.07, 0.09, 0.03], hedged, 0.01, 1.0);
    check_grid([0.07, 0.09, 0.03], hedged, 0.01, 0.45);
    check_grid([0.01, 0.08, 0.12], cov, 0.02, 0.5);
}

#[test]
fn bounds_are_respected() {
    let n = 30;
    let cov = factor_covariance(n);
    let mu = returns(n);
    for objective in [Objective::MinVariance, Objective::MaxSharpe] {
        let problem = Problem::new(&mu, &cov, 0.01, objective, 0.05).unwrap();
        let solution = optimize_cpu(&problem, &settings(512));
        let w = &solution.weights;
        assert!(w.iter().all(|&x| (0.0..=0.05).contains(&x)), "{w:?}");
        assert!((w.iter().sum::<f64>() - 1.0).abs() <= 1e-14);
        assert!(solution.converged, "{objective:?}: {solution:?}");
    }
}

#[test]
fn projection_is_exact() {
    let x: Vec<f64> = (0..50)
        .map(|i| ((i * 37 % 17) as f64 - 8.0) / 3.0)
        .collect();
    for u in [1.0, 0.2, 0.05, 0.02] {
        let mut w = vec![0.0; 50];
        project_box_simplex(&x, u, &mut w);
        assert!((w.iter().sum::<f64>() - 1.0).abs() <= 1e-15, "u = {u}");
        assert!(w.iter().all(|&v| (0.0..=u).contains(&v)));
        // Idempotent.
        let mut again = vec![0.0; 50];
        project_box_simplex(&w, u, &mut again);
        assert!(max_abs_diff(&w, &again) <= 1e-15);
    }
    let a: Vec<f64> = (0..50).map(|i| (i as f64 - 20.0) / 100.0).collect();
    let mut y = vec![0.0; 50];
    project_excess(&x, &a, &mut y);
    assert!((dot(&a, &y) - 1.0).abs() <= 1e-14);
    assert!(y.iter().all(|&v| v >= 0.0));
}

#[test]
fn no_excess_return_is_an_error() {
    let cov = [0.04, 0.0, 0.0, 0.09];
    assert_eq!(
        Problem::new(&[0.01, 0.02], &cov, 0.03, Objective::MaxSharpe, 1.0).unwrap_err(),
        PortfolioError::NoExcessReturn
    );
    assert!(Problem::new(&[0.01, 0.02], &cov, 0.03, Objective::MinVariance, 1.0).is_ok());
    assert_eq!(
        Problem::new(&[0.01, 0.02], &cov, 0.0, Objective::MinVariance, 0.4).unwrap_err(),
        PortfolioError::Infeasible(0.4)
    );
}

#[test]
fn deterministic_whatever_the_threads() {
    let n = 300;
    let cov = factor_covariance(n);
    let mu = returns(n);
    let problem = Problem::new(&mu, &cov, 0.01, Objective::MaxSharpe, 0.02).unwrap();
    let s = Settings {
        max_iterations: 2000,
        ..settings(1000)
    };
    let run = |threads: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| optimize_cpu(&problem, &s))
    };
    let one = run(1);
    let three = run(3);
    assert_eq!(one.random_best_index, three.random_best_index);
    assert_eq!(
        one.weights.iter().map(|w| w.to_bits()).collect::<Vec<_>>(),
        three
            .weights
            .iter()
            .map(|w| w.to_bits())
            .collect::<Vec<_>>()
    );
    assert_eq!(one.residual.to_bits(), three.residual.to_bits());
}

/// Candidate `j`'s score by the sequence [`tile_scores`] documents, one
/// candidate alone.
fn reference_score(matrix: &SearchMatrix, seed: u64, j: u64, max_weight: f32, sharpe: bool) -> f32 {
    let n = matrix.n;
    let mut w = vec![0.0f32; n];
    exponentials(seed, j, &mut w);
    let sum: f32 = w.iter().sum();
    let largest = w.iter().fold(0.0f32, |m, &e| m.max(e));
    let inv = 1.0 / sum;
    let top = largest * inv;
    let equal = 1.0 / n as f32;
    let (scale, shift) = if top > max_weight {
        let t = (top - max_weight) / (top - equal);
        ((1.0 - t) * inv, t * equal)
    } else {
        (inv, 0.0)
    };
    w.iter_mut().for_each(|x| *x = *x * scale + shift);
    let mut var = 0.0f32;
    for i in 0..n {
        let mut d = 0.0f32;
        for (k, &l) in matrix.row(i).iter().enumerate() {
            d += l * w[k];
        }
        d += matrix.diagonal[i] * w[i];
        var += w[i] * d;
    }
    if !sharpe {
        return -var;
    }
    let mut ret = 0.0f32;
    for (&a, &x) in matrix.excess.iter().zip(&w) {
        ret += a * x;
    }
    if var > 0.0 {
        ret / var.sqrt()
    } else {
        f32::NEG_INFINITY
    }
}

/// The GPU tile for each size: the largest whose weights and scratch fit
/// 48 KiB, down to 4 at the largest size allowed (2000 assets) and beyond.
#[test]
fn gpu_tile_is_the_largest_that_fits_shared_memory() {
    for (n, tile) in [
        (1, Some(32)),
        (100, Some(32)),
        (375, Some(32)),
        (376, Some(16)),
        (500, Some(16)),
        (759, Some(16)),
        (760, Some(8)),
        (1527, Some(8)),
        (1528, Some(4)),
        (2000, Some(4)),
        (3063, Some(4)),
        (3064, None),
        (usize::MAX, None),
    ] {
        assert_eq!(gpu_tile(n), tile, "n = {n}");
    }
    for n in 1..=2000 {
        let tile = gpu_tile(n).unwrap();
        // Weights (dynamic) plus the kernel's static scratch: tile * WARPS
        // f32 for the reductions and tile f32 for the returns.
        let bytes = 4 * tile * n + 4 * tile * (8 + 1);
        assert!(bytes <= 48 * 1024, "n = {n}, tile {tile}: {bytes} bytes");
        assert!(SEARCH_BLOCK.is_multiple_of(tile as u64));
    }
}

#[test]
fn philox_tile_is_philox() {
    let key = philox::key(0x1234_5678_9abc_def0);
    let first = (1u64 << 32) - 5;
    for b in [0u64, 3, 1 << 33] {
        let mut expect = [[0u32; TILE]; 4];
        for c in 0..TILE {
            let words = philox::philox4x32_10(philox::counter(first + c as u64, b), key);
            for (lanes, word) in expect.iter_mut().zip(words) {
                lanes[c] = word;
            }
        }
        assert_eq!(philox_tile(first, b, key), expect, "b {b}");
    }
}

/// Every candidate's tiled score is the one-candidate sequence bit for
/// bit, whatever the rows per step and the instruction set.
#[test]
fn tile_scores_are_each_candidates_own() {
    for n in [1, 2, 3, 7, 30, 41] {
        let cov = factor_covariance(n);
        let mu = returns(n);
        for (objective, bound) in [
            (Objective::MinVariance, 1.0),
            (Objective::MaxSharpe, 1.0),
            (Objective::MaxSharpe, (2.0 / n as f64).min(1.0)),
        ] {
            let problem = Problem::new(&mu, &cov, 0.01, objective, bound).unwrap();
            let matrix = SearchMatrix::new(&problem);
            let sharpe = objective == Objective::MaxSharpe;
            let max_weight = bound as f32;
            let mut weights = vec![0.0f32; TILE * n];
            for first in [0u64, 48, (1 << 32) - 8] {
                let dispatched = score_tile(&matrix, 5, first, max_weight, sharpe, &mut weights);
                draw_tile(5, first, max_weight, &mut weights);
                let two = tile_scores::<2>(&matrix, &weights, sharpe);
                let three = tile_scores::<3>(&matrix, &weights, sharpe);
                for c in 0..TILE {
                    let one = reference_score(&matrix, 5, first + c as u64, max_weight, sharpe);
                    for got in [dispatched[c], two[c], three[c]] {
                        assert_eq!(
                            got.to_bits(),
                            one.to_bits(),
                            "n {n} {objective:?} j {}",
                            first + c as u64
                        );
                    }
                }
            }
        }
    }
}

/// Cuts `blocks` into `shards` runs of whole blocks, in order.
fn cut(blocks: u64, shards: u64) -> Vec<Range<u64>> {
    let per = blocks.div_ceil(shards).max(1);
    (0..blocks)
        .step_by(per as usize)
        .map(|first| first..(first + per).min(blocks))
        .collect()
}

/// The search cut into runs of whole blocks, each searched alone and
/// merged, is the whole search bit for bit, and so is what the refine
/// makes of it; ties (every score equal) go to the lowest index.
#[test]
fn a_split_search_merges_to_the_whole_search_bit_for_bit() {
    let n = 12;
    let cov = factor_covariance(n);
    let mu = returns(n);
    let zero = vec![0.0; n * n];
    let cases = [
        (&cov, Objective::MinVariance, 1.0, 2_500u32),
        (&cov, Objective::MaxSharpe, 0.2, 2_049),
        (&cov, Objective::MaxSharpe, 1.0, 300),
        // Every candidate scores -0 (min variance) or minus infinity
        // (no variance, so no Sharpe ratio): candidate 0 wins.
        (&zero, Objective::MinVariance, 1.0, 1_000),
        (&zero, Objective::MaxSharpe, 1.0, 1_000),
    ];
    for (cov, objective, bound, samples) in cases {
        let problem = Problem::new(&mu, cov, 0.01, objective, bound).unwrap();
        let s = Settings {
            max_iterations: 5_000,
            ..settings(samples)
        };
        let whole = search_cpu(&problem, &s);
        let blocks = search_blocks(samples);
        assert_eq!(blocks, u64::from(samples).div_ceil(SEARCH_BLOCK));
        for shards in [1, 2, 3, 5, blocks] {
            let runs = cut(blocks, shards);
            assert!(runs.len() as u64 <= shards);
            let merged =
                merge_bests(runs.into_iter().map(|blocks| {
                    search_cpu_range(&problem, &s, block_candidates(samples, blocks))
                }))
                .unwrap();
            assert_eq!(merged.index, whole.index, "{objective:?} {shards} shards");
            assert_eq!(merged.score.to_bits(), whole.score.to_bits());
        }
        if cov.iter().all(|&c| c == 0.0) {
            assert_eq!(whole.index, 0, "{objective:?}: ties go to the first");
        }
        let a = refine(&problem, &s, whole);
        let b = refine(&problem, &s, merge_bests([whole]).unwrap());
        assert_eq!(
            a.weights.iter().map(|w| w.to_bits()).collect::<Vec<_>>(),
            b.weights.iter().map(|w| w.to_bits()).collect::<Vec<_>>()
        );
    }
    // A NaN score loses to every other; no runs, no best.
    let nan = SearchBest {
        index: 0,
        score: f32::NAN,
    };
    let low = SearchBest {
        index: 7,
        score: -1e30,
    };
    assert_eq!(merge_bests([nan, low]), Some(low));
    assert_eq!(merge_bests([]), None);
    assert_eq!(block_candidates(600, 2..9), 512..600);
    assert_eq!(block_candidates(600, u64::MAX - 1..u64::MAX), 600..600);
}

#[test]
fn an_indefinite_covariance_is_refused_and_a_singular_one_accepted() {
    // Eigenvalues 3 and -1: w = (1/2, 1/2) has variance -1/2.
    let mu = [0.1, 0.2];
    let indefinite = [1.0, -2.0, -2.0, 1.0];
    for objective in [Objective::MinVariance, Objective::MaxSharpe] {
        let problem = Problem::new(&mu, &indefinite, 0.0, objective, 1.0).unwrap();
        let err = problem.check_covariance().unwrap_err();
        let PortfolioError::NotPositiveSemidefinite(pivot) = &err else {
            panic!("{err:?}");
        };
        assert_eq!(pivot.row, 1);
        // 1 + j - 4 / (1 + j), j the jitter 1e-10.
        assert!((pivot.pivot + 3.0).abs() < 1e-9, "{pivot:?}");
        assert_eq!(pivot.jitter, 1e-10);
        assert!(
            err.to_string().starts_with(
                "the covariance is not positive semidefinite: the Cholesky pivot of row 1 is -2.99"
            ),
            "{err}"
        );
    }
    // Slightly indefinite beyond rounding (eigenvalue -1e-6 of 1).
    let problem = Problem::new(
        &mu,
        &[1.0, 1.000001, 1.000001, 1.0],
        0.0,
        Objective::MinVariance,
        1.0,
    )
    .unwrap();
    assert!(problem.check_covariance().is_err());

    // Singular but positive semidefinite: a riskless asset (all its
    // weight goes there, variance 0), and the same asset twice (any
    // split between the twins is optimal).
    let cash = [0.04, 0.006, 0.0, 0.006, 0.09, 0.0, 0.0, 0.0, 0.0];
    let problem =
        Problem::new(&[0.05, 0.08, 0.01], &cash, 0.0, Objective::MinVariance, 1.0).unwrap();
    problem.check_covariance().unwrap();
    let solution = optimize_cpu(&problem, &settings(512));
    assert!(solution.converged, "{solution:?}");
    assert!(solution.weights[2] > 1.0 - 1e-9, "{solution:?}");
    assert!(solution.volatility < 1e-5, "{solution:?}");
    let twins = [0.04, 0.04, 0.0, 0.04, 0.04, 0.0, 0.0, 0.0, 0.09];
    let problem = Problem::new(
        &[0.05, 0.05, 0.08],
        &twins,
        0.0,
        Objective::MinVariance,
        1.0,
    )
    .unwrap();
    problem.check_covariance().unwrap();
    let solution = optimize_cpu(&problem, &settings(512));
    assert!(solution.converged, "{solution:?}");
    // Least variance: 9/13 in the twins together, 4/13 in the third.
    let var = solution.volatility.powi(2);
    let least = 0.04 * 0.09 / 0.13;
    assert!((var - least).abs() <= 1e-12, "{var} vs {least}");
    // The zero matrix, and a larger factor model, pass too.
    let zero = Problem::new(&mu, &[0.0; 4], 0.0, Objective::MinVariance, 1.0).unwrap();
    zero.check_covariance().unwrap();
    let n = 40;
    let (cov, mu) = (factor_covariance(n), returns(n));
    let problem = Problem::new(&mu, &cov, 0.0, Objective::MinVariance, 1.0).unwrap();
    problem.check_covariance().unwrap();
}

#[test]
fn the_search_finds_a_good_candidate_and_its_score_is_the_f64_one() {
    let n = 10;
    let cov = factor_covariance(n);
    let mu = returns(n);
    let problem = Problem::new(&mu, &cov, 0.0, Objective::MinVariance, 1.0).unwrap();
    let best = search_cpu(&problem, &settings(4001));
    assert!(best.index < 4001);
    let w = candidate(&problem, 7, best.index);
    let var = quadratic(&cov, &w);
    assert!(
        (f64::from(-best.score) - var).abs() <= 1e-5 * var,
        "{best:?} {var}"
    );
    // Better than candidate 0 (almost surely, with 4001 of them).
    assert!(var < quadratic(&cov, &candidate(&problem, 7, 0)));
}
