//! Stage 2, the refinement in f64 on the CPU: FISTA for min variance and
//! the convex form of max Sharpe, the Sharpe ascent when `max_weight`
//! binds, and the exact projections they step through.

use rayon::prelude::*;

use super::search::exponentials;
use super::{
    BISECTIONS, Method, Objective, PARALLEL_ROWS, Problem, SearchBest, Settings, Solution,
};

/// Candidate `j` in f64: its f32 exponentials normalized and shrunk as in
/// the search, then projected (which only mends rounding).
pub fn candidate(problem: &Problem, seed: u64, j: u64) -> Vec<f64> {
    let n = problem.assets();
    let mut draws = vec![0.0f32; n];
    exponentials(seed, j, &mut draws);
    let sum: f64 = draws.iter().map(|&e| f64::from(e)).sum();
    let mut w: Vec<f64> = draws.iter().map(|&e| f64::from(e) / sum).collect();
    let top = w.iter().fold(0.0f64, |m, &x| m.max(x));
    let bound = problem.bound();
    let equal = 1.0 / n as f64;
    if top > bound {
        let t = (top - bound) / (top - equal);
        for x in &mut w {
            *x = (1.0 - t) * *x + t * equal;
        }
    }
    let mut out = vec![0.0; n];
    project_box_simplex(&w, bound, &mut out);
    out
}

/// Refines the search's best candidate (f64, CPU).
pub fn refine(problem: &Problem, settings: &Settings, best: SearchBest) -> Solution {
    let n = problem.assets();
    let cov = problem.covariance;
    let start = candidate(problem, settings.seed, best.index);
    let excess = problem.excess();
    let lambda = eigenvalue_bound(cov, n);
    let random_best_objective = match problem.objective {
        Objective::MinVariance => quadratic(cov, &start),
        Objective::MaxSharpe => sharpe(&excess, cov, &start).unwrap_or(f64::NEG_INFINITY),
    };
    let bound = problem.bound();
    let (weights, method, iterations, residual) = match problem.objective {
        Objective::MinVariance => {
            let project = |x: &[f64], out: &mut [f64]| project_box_simplex(x, bound, out);
            let run = fista(cov, 2.0 * lambda, &start, project, settings);
            (run.x, Method::Convex, run.iterations, run.residual)
        }
        Objective::MaxSharpe => {
            let project = |x: &[f64], out: &mut [f64]| project_excess(x, &excess, out);
            let run = fista(cov, 2.0 * lambda, &start, project, settings);
            let total: f64 = run.x.iter().sum();
            let w: Vec<f64> = run.x.iter().map(|y| y / total).collect();
            if w.iter().all(|&x| x <= bound) {
                (w, Method::Convex, run.iterations, run.residual)
            } else {
                // The bound binds: the reformulation's answer is not
                // feasible, so climb from the best candidate instead.
                let start = if dot(&excess, &start) > 0.0 {
                    start
                } else {
                    problem.max_return_portfolio()
                };
                let ascent = sharpe_ascent(cov, &excess, lambda, bound, &start, settings);
                (
                    ascent.x,
                    Method::LocalAscent,
                    run.iterations + ascent.iterations,
                    ascent.residual,
                )
            }
        }
    };
    let expected_return = dot(problem.mu, &weights);
    let variance = quadratic(cov, &weights).max(0.0);
    let volatility = variance.sqrt();
    let sharpe = (volatility > 0.0).then(|| (expected_return - problem.risk_free) / volatility);
    Solution {
        weights,
        expected_return,
        volatility,
        sharpe,
        method,
        iterations,
        residual,
        converged: residual <= settings.tolerance,
        random_best_index: best.index,
        random_best_objective,
    }
}

struct Run {
    x: Vec<f64>,
    iterations: u64,
    residual: f64,
}

/// `a . b` in four lanes, a fixed order.
pub(super) fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0.0f64; 4];
    let mut chunks_a = a.chunks_exact(4);
    let mut chunks_b = b.chunks_exact(4);
    for (x, y) in (&mut chunks_a).zip(&mut chunks_b) {
        for l in 0..4 {
            acc[l] += x[l] * y[l];
        }
    }
    let tail: f64 = chunks_a
        .remainder()
        .iter()
        .zip(chunks_b.remainder())
        .map(|(x, y)| x * y)
        .sum();
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

/// `out = S x`, each row a [`dot`], so the result does not depend on the
/// threads.
pub(super) fn matvec(cov: &[f64], x: &[f64], out: &mut [f64]) {
    let n = x.len();
    if n >= PARALLEL_ROWS {
        out.par_iter_mut()
            .zip(cov.par_chunks_exact(n))
            .for_each(|(o, row)| *o = dot(row, x));
    } else {
        for (o, row) in out.iter_mut().zip(cov.chunks_exact(n)) {
            *o = dot(row, x);
        }
    }
}

pub(super) fn quadratic(cov: &[f64], x: &[f64]) -> f64 {
    let mut sx = vec![0.0; x.len()];
    matvec(cov, x, &mut sx);
    dot(x, &sx)
}

fn sharpe(excess: &[f64], cov: &[f64], w: &[f64]) -> Option<f64> {
    let var = quadratic(cov, w);
    (var > 0.0).then(|| dot(excess, w) / var.sqrt())
}

/// An upper bound of the covariance's largest eigenvalue: the smaller of
/// the Gershgorin and Frobenius bounds.
fn eigenvalue_bound(cov: &[f64], n: usize) -> f64 {
    let gershgorin = cov
        .chunks_exact(n)
        .map(|row| row.iter().map(|c| c.abs()).sum::<f64>())
        .fold(0.0f64, f64::max);
    let frobenius = cov.iter().map(|c| c * c).sum::<f64>().sqrt();
    gershgorin.min(frobenius)
}

pub(super) fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()))
}

/// Projects `x` onto `{0 <= w <= u, sum w = 1}`: `w = clamp(x - tau, 0,
/// u)`, `tau` by bisection (the sum falls as `tau` grows), then exactly from
/// the free set. Needs `n u >= 1`.
pub fn project_box_simplex(x: &[f64], u: f64, out: &mut [f64]) {
    let total = |tau: f64| x.iter().map(|&v| (v - tau).clamp(0.0, u)).sum::<f64>();
    let lowest = x.iter().copied().fold(f64::INFINITY, f64::min);
    let highest = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    // At lo every weight is u (sum n u >= 1), at hi every weight is 0.
    let (mut lo, mut hi) = (lowest - u, highest);
    for _ in 0..BISECTIONS {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        if total(mid) >= 1.0 {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let mid = 0.5 * (lo + hi);
    let (mut free_sum, mut free, mut upper) = (0.0, 0usize, 0usize);
    for &v in x {
        let w = v - mid;
        if w >= u {
            upper += 1;
        } else if w > 0.0 {
            free += 1;
            free_sum += v;
        }
    }
    let tau = if free > 0 {
        (free_sum + upper as f64 * u - 1.0) / free as f64
    } else {
        mid
    };
    for (o, &v) in out.iter_mut().zip(x) {
        *o = (v - tau).clamp(0.0, u);
    }
    // The subtractions round at the scale of x; one correction over the
    // free weights brings the sum back to 1 at the scale of the weights.
    if free > 0 {
        let shift = (1.0 - out.iter().sum::<f64>()) / free as f64;
        for o in out.iter_mut().filter(|o| **o > 0.0 && **o < u) {
            *o = (*o + shift).clamp(0.0, u);
        }
    }
}

/// Projects `x` onto `{y >= 0, a'y = 1}`: `y = max(0, x - lambda a)`,
/// `lambda` by bisection (`a'y` falls as `lambda` grows), then exactly from
/// the free set. Needs some `a_i > 0`.
pub(super) fn project_excess(x: &[f64], a: &[f64], out: &mut [f64]) {
    let total = |lambda: f64| {
        x.iter()
            .zip(a)
            .map(|(&v, &ai)| ai * (v - lambda * ai).max(0.0))
            .sum::<f64>()
    };
    let (mut lo, mut hi) = (-1.0f64, 1.0f64);
    // Doubling reaches the crossing long before overflow for finite
    // inputs; the caps only stop a runaway.
    for _ in 0..2000 {
        if total(lo) >= 1.0 {
            break;
        }
        lo *= 2.0;
    }
    for _ in 0..2000 {
        if total(hi) <= 1.0 {
            break;
        }
        hi *= 2.0;
    }
    for _ in 0..BISECTIONS {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        if total(mid) >= 1.0 {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let mid = 0.5 * (lo + hi);
    let (mut ax, mut aa) = (0.0, 0.0);
    for (&v, &ai) in x.iter().zip(a) {
        if v - mid * ai > 0.0 {
            ax += ai * v;
            aa += ai * ai;
        }
    }
    let lambda = if aa > 0.0 { (ax - 1.0) / aa } else { mid };
    for ((o, &v), &ai) in out.iter_mut().zip(x).zip(a) {
        *o = (v - lambda * ai).max(0.0);
    }
}

/// Minimizes `x' S x` over the set `project` projects onto: FISTA with
/// step `1/lipschitz` and the gradient restart of O'Donoghue and Candes.
fn fista(
    cov: &[f64],
    lipschitz: f64,
    start: &[f64],
    project: impl Fn(&[f64], &mut [f64]),
    settings: &Settings,
) -> Run {
    let n = start.len();
    let mut x = vec![0.0; n];
    project(start, &mut x);
    if lipschitz <= 0.0 {
        // A zero covariance: every feasible point is optimal.
        return Run {
            x,
            iterations: 0,
            residual: 0.0,
        };
    }
    let step = 1.0 / lipschitz;
    let mut y = x.clone();
    let mut next = vec![0.0; n];
    let mut gradient = vec![0.0; n];
    let mut trial = vec![0.0; n];
    let mut t = 1.0f64;
    let residual_at = |point: &[f64], gradient: &mut [f64], trial: &mut [f64], out: &mut [f64]| {
        matvec(cov, point, gradient);
        for ((z, &p), &g) in trial.iter_mut().zip(point).zip(gradient.iter()) {
            *z = p - 2.0 * step * g;
        }
        project(trial, out);
        max_abs_diff(point, out) / point.iter().sum::<f64>()
    };
    let mut iterations = 0;
    let mut scratch = vec![0.0; n];
    while iterations < settings.max_iterations {
        iterations += 1;
        let at_y = residual_at(&y, &mut gradient, &mut trial, &mut next);
        if at_y <= settings.tolerance {
            let at_next = residual_at(&next, &mut gradient, &mut trial, &mut scratch);
            if at_next <= settings.tolerance {
                return Run {
                    x: next,
                    iterations,
                    residual: at_next,
                };
            }
        }
        let restart = y
            .iter()
            .zip(&next)
            .zip(&x)
            .map(|((yi, ni), xi)| (yi - ni) * (ni - xi))
            .sum::<f64>()
            > 0.0;
        if restart {
            t = 1.0;
        }
        let t_next = 0.5 * (1.0 + (1.0 + 4.0 * t * t).sqrt());
        let momentum = if restart { 0.0 } else { (t - 1.0) / t_next };
        for ((yi, &ni), xi) in y.iter_mut().zip(&next).zip(&mut x) {
            *yi = ni + momentum * (ni - *xi);
            *xi = ni;
        }
        t = t_next;
    }
    let residual = residual_at(&x, &mut gradient, &mut trial, &mut scratch);
    Run {
        x,
        iterations,
        residual,
    }
}

/// Projected gradient ascent of the Sharpe ratio over the bounded simplex
/// from `start` (excess return > 0), with the step `var / (sharpe lambda)`
/// (the inverse of the ratio's curvature scale) halved for good whenever a
/// step loses more than rounding. A value test of sufficient increase
/// cannot resolve steps below the square root of the precision, so the
/// step is fixed rather than searched.
fn sharpe_ascent(
    cov: &[f64],
    excess: &[f64],
    lambda: f64,
    bound: f64,
    start: &[f64],
    settings: &Settings,
) -> Run {
    let n = start.len();
    let mut w = start.to_vec();
    let mut sw = vec![0.0; n];
    let mut gradient = vec![0.0; n];
    let mut trial = vec![0.0; n];
    let mut next = vec![0.0; n];
    let mut s_next = vec![0.0; n];
    let mut iterations = 0;
    let mut step_scale = 1.0f64;
    matvec(cov, &w, &mut sw);
    let residual = loop {
        let var = dot(&w, &sw);
        let ret = dot(excess, &w);
        if !(var > 0.0 && ret > 0.0 && lambda > 0.0) {
            // No curvature to climb: the start is where it ends.
            break 0.0;
        }
        let sd = var.sqrt();
        let value = ret / sd;
        for ((g, &a), &s) in gradient.iter_mut().zip(excess).zip(&sw) {
            *g = a / sd - ret * s / (var * sd);
        }
        let reference = var / (value * lambda);
        let ascend = |step: f64, trial: &mut [f64], out: &mut [f64]| {
            for ((z, &x), &g) in trial.iter_mut().zip(&w).zip(&gradient) {
                *z = x + step * g;
            }
            project_box_simplex(trial, bound, out);
        };
        ascend(reference, &mut trial, &mut next);
        let residual = max_abs_diff(&w, &next);
        if residual <= settings.tolerance || iterations >= settings.max_iterations {
            break residual;
        }
        iterations += 1;
        let mut accepted = false;
        for _ in 0..60 {
            if step_scale != 1.0 {
                ascend(reference * step_scale, &mut trial, &mut next);
            }
            matvec(cov, &next, &mut s_next);
            let var_next = dot(&next, &s_next);
            let value_next = if var_next > 0.0 {
                dot(excess, &next) / var_next.sqrt()
            } else {
                f64::NEG_INFINITY
            };
            if value_next >= value - 4.0 * f64::EPSILON * value {
                accepted = true;
                break;
            }
            step_scale *= 0.5;
        }
        if !accepted {
            break residual;
        }
        std::mem::swap(&mut w, &mut next);
        std::mem::swap(&mut sw, &mut s_next);
    };
    Run {
        x: w,
        iterations,
        residual,
    }
}
