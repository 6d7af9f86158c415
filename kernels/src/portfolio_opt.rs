//! Long-only, fully invested portfolios (`0 <= w <= max_weight`,
//! `sum w = 1`) of least variance or greatest Sharpe ratio.
//!
//! Two stages:
//! 1. A random search, in f32: `samples` Dirichlet(1) portfolios (candidate
//!    `j` is Philox stream `j`: exponentials `-ln u`, normalized), each
//!    shrunk toward equal weights just enough to respect `max_weight`, each
//!    scored (minus the variance, or the Sharpe ratio). [`search_gpu`] runs
//!    it on the GPU (`cuda/portfolio_opt.cu`, one block per
//!    [`CANDIDATES_PER_BLOCK`] candidates, the blocks' bests reduced on the
//!    host in block order); [`search_cpu`] is its twin with rayon (tiles of
//!    [`TILE`] candidates per pass over the covariance's lower triangle,
//!    each candidate's score the same bits whatever its tile). Both pick
//!    the first best candidate; they agree on the scores within f32
//!    rounding, so near-ties may pick different candidates.
//!
//!    The search splits: [`search_cpu_range`] and [`search_gpu_range`] score
//!    a run of candidates, and [`merge_bests`] of the runs' bests, in
//!    candidate order, is the whole search's best (the first of the best
//!    scores), bit for bit, since each candidate's score does not depend on
//!    the run it falls in. A split task cuts the search into runs of whole
//!    [`SEARCH_BLOCK`]s and refines the merged best once.
//! 2. [`refine`], in f64 on the CPU, from the best candidate:
//!    - min variance: accelerated projected gradient (FISTA with gradient
//!      restart), step `1/L`, `L = 2 min(Gershgorin, Frobenius)` (both bound
//!      the largest eigenvalue); convex, so the global minimum.
//!    - max Sharpe: the convex reformulation `min y'Sy` subject to
//!      `(mu - rf)'y = 1, y >= 0`, `w = y / sum y`, by the same FISTA;
//!      exact when `max_weight` does not bind at its solution. When it
//!      does, a projected gradient ascent of the Sharpe ratio with
//!      backtracking from the best candidate, stopping at a stationary
//!      point ([`Method::LocalAscent`]).
//!
//! The projections are exact: onto `{0 <= w <= u, sum w = 1}` by bisection
//! on the shift `tau` in `clamp(x - tau, 0, u)` then the closed form on the
//! active set; onto `{y >= 0, a'y = 1}` likewise in `max(0, x - lambda a)`.
//!
//! The residual is `max_i |x_i - P(x - g / L)_i| / sum x` (weight units):
//! zero exactly at a KKT point. For the ascent `L = sharpe * lambda / var`,
//! the curvature scale of the Sharpe ratio.
//!
//! Both stages assume a positive semidefinite covariance: with a negative
//! eigenvalue the "variance" of some portfolios is negative, and the
//! minimum runs off to them. [`Problem::check_covariance`] refuses such a
//! matrix (a Cholesky factorization, as `risk` does); it costs `n^3 / 6`
//! multiply-adds, so the caller runs it once per task.

use std::ops::Range;

use rayon::prelude::*;

use crate::driver::DeviceError;
use crate::philox;
use crate::risk::NotPositiveSemidefinite;
use crate::runtime::{Gpu, Source};

pub const SOURCE: Source = Source {
    module: "portfolio_opt",
    code: include_str!("../cuda/portfolio_opt.cu"),
    kernels: &["random_search"],
};

/// Candidates one GPU block evaluates together (one pass over the
/// covariance serves them all); `CANDIDATES` in the kernel.
pub const CANDIDATES_PER_BLOCK: usize = 4;
const THREADS: u32 = 256;
/// Candidates the CPU twin scores together, in one pass over the
/// covariance.
const TILE: usize = 16;
/// Tiles per rayon task in the CPU twin.
const CPU_TILES_PER_TASK: usize = 2;
/// Below this size a matrix-vector product is not worth a rayon fork.
const PARALLEL_ROWS: usize = 256;
/// Bisection steps of a projection before its closed-form finish.
const BISECTIONS: usize = 100;
/// Candidates per block of the search as a split cuts it: a shard is a run
/// of whole blocks. A multiple of [`CANDIDATES_PER_BLOCK`] and of
/// [`TILE`] times [`CPU_TILES_PER_TASK`], so that a shard's GPU blocks and
/// CPU tasks are the unsplit run's.
pub const SEARCH_BLOCK: u64 = 256;
const _: () = assert!(
    SEARCH_BLOCK.is_multiple_of(CANDIDATES_PER_BLOCK as u64)
        && SEARCH_BLOCK.is_multiple_of((TILE * CPU_TILES_PER_TASK) as u64)
);

/// The number of [`SEARCH_BLOCK`]s of a search of `samples` candidates.
pub fn search_blocks(samples: u32) -> u64 {
    u64::from(samples.max(1)).div_ceil(SEARCH_BLOCK)
}

/// The candidates of the search blocks `blocks`, within `samples`.
pub fn block_candidates(samples: u32, blocks: Range<u64>) -> Range<u64> {
    let samples = u64::from(samples.max(1));
    let at = |block: u64| block.saturating_mul(SEARCH_BLOCK).min(samples);
    at(blocks.start)..at(blocks.end)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Objective {
    MinVariance,
    MaxSharpe,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// A convex problem solved to its global optimum.
    Convex,
    /// A projected gradient ascent of the Sharpe ratio to a stationary point.
    LocalAscent,
}

/// Why a problem cannot be solved.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PortfolioError {
    #[error("the covariance must hold n * n = {expected} values, got {got}")]
    Shape { expected: usize, got: usize },
    #[error("there must be at least one asset")]
    NoAssets,
    #[error("a value of mu, the covariance or the risk-free rate is not finite")]
    NotFinite,
    #[error("max_weight must be in (0, 1] with n * max_weight >= 1, got {0}")]
    Infeasible(f64),
    #[error("max Sharpe needs a feasible portfolio with a return above the risk-free rate")]
    NoExcessReturn,
    #[error(transparent)]
    NotPositiveSemidefinite(#[from] NotPositiveSemidefinite),
}

/// A problem, checked: sizes agree, values are finite, the set is not
/// empty, and for max Sharpe some feasible portfolio beats the risk-free
/// rate.
#[derive(Debug, Clone, Copy)]
pub struct Problem<'a> {
    mu: &'a [f64],
    covariance: &'a [f64],
    risk_free: f64,
    objective: Objective,
    max_weight: f64,
}

impl<'a> Problem<'a> {
    pub fn new(
        mu: &'a [f64],
        covariance: &'a [f64],
        risk_free: f64,
        objective: Objective,
        max_weight: f64,
    ) -> Result<Self, PortfolioError> {
        let n = mu.len();
        if n == 0 {
            return Err(PortfolioError::NoAssets);
        }
        if covariance.len() != n * n {
            return Err(PortfolioError::Shape {
                expected: n * n,
                got: covariance.len(),
            });
        }
        if !(risk_free.is_finite()
            && mu.iter().all(|m| m.is_finite())
            && covariance.iter().all(|c| c.is_finite()))
        {
            return Err(PortfolioError::NotFinite);
        }
        if !(max_weight > 0.0 && max_weight <= 1.0 && max_weight * n as f64 >= 1.0 - 1e-12) {
            return Err(PortfolioError::Infeasible(max_weight));
        }
        let problem = Problem {
            mu,
            covariance,
            risk_free,
            objective,
            max_weight,
        };
        if objective == Objective::MaxSharpe
            && dot(&problem.excess(), &problem.max_return_portfolio()) <= 0.0
        {
            return Err(PortfolioError::NoExcessReturn);
        }
        Ok(problem)
    }

    pub fn assets(&self) -> usize {
        self.mu.len()
    }

    /// Refuses a covariance that is not positive semidefinite: its Cholesky
    /// factorization must succeed, plainly or with [`CHOLESKY_JITTER`] times
    /// the largest variance added to the diagonal (as `risk` does). So a
    /// singular covariance, legitimate for a portfolio (a riskless asset,
    /// the same asset twice), passes, and one with a negative eigenvalue
    /// beyond rounding fails, naming the row whose pivot was not positive.
    /// Costs `n^3 / 6` multiply-adds (n = 2000: some 1.3 s).
    pub fn check_covariance(&self) -> Result<(), PortfolioError> {
        // The same factorization, jitter and message as `risk`'s.
        crate::risk::cholesky(self.covariance, self.assets())?;
        Ok(())
    }

    /// The bound as the projections use it: at least `1/n`, so that the
    /// rounding the constructor tolerates leaves the set non-empty.
    fn bound(&self) -> f64 {
        self.max_weight.max(1.0 / self.assets() as f64)
    }

    fn excess(&self) -> Vec<f64> {
        self.mu.iter().map(|m| m - self.risk_free).collect()
    }

    /// The feasible portfolio of greatest return: the best assets filled up
    /// to the bound in turn (exact for this linear program).
    fn max_return_portfolio(&self) -> Vec<f64> {
        let mut order: Vec<usize> = (0..self.assets()).collect();
        order.sort_by(|&a, &b| self.mu[b].total_cmp(&self.mu[a]));
        let mut w = vec![0.0; self.assets()];
        let mut left = 1.0f64;
        for i in order {
            if left <= 0.0 {
                break;
            }
            w[i] = left.min(self.bound());
            left -= w[i];
        }
        w
    }
}

/// How hard to search and refine.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// Residual (weight units) at which the refine stops.
    pub tolerance: f64,
    pub max_iterations: u64,
    pub seed: u64,
    /// Random candidates, at least 1.
    pub samples: u32,
}

/// The search's best candidate and its f32 score (minus the variance, or
/// the Sharpe ratio).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SearchBest {
    pub index: u64,
    pub score: f32,
}

/// The optimized portfolio.
#[derive(Debug, Clone, PartialEq)]
pub struct Solution {
    pub weights: Vec<f64>,
    pub expected_return: f64,
    pub volatility: f64,
    /// `None` when the volatility is 0.
    pub sharpe: Option<f64>,
    pub method: Method,
    pub iterations: u64,
    pub residual: f64,
    pub converged: bool,
    pub random_best_index: u64,
    /// The start's variance (min variance) or Sharpe ratio (max Sharpe), in
    /// f64.
    pub random_best_objective: f64,
}

/// Search on the CPU, then refine.
pub fn optimize_cpu(problem: &Problem, settings: &Settings) -> Solution {
    refine(problem, settings, search_cpu(problem, settings))
}

/// Search on the GPU, then refine on the CPU.
pub fn optimize_gpu(
    gpu: &Gpu,
    problem: &Problem,
    settings: &Settings,
) -> Result<Solution, DeviceError> {
    let best = search_gpu(gpu, problem, settings)?;
    Ok(refine(problem, settings, best))
}

// ---------------------------------------------------------------- search

/// The f32 inputs of the search: the covariance and the excess returns.
fn search_inputs(problem: &Problem) -> (Vec<f32>, Vec<f32>) {
    let covariance = problem.covariance.iter().map(|&c| c as f32).collect();
    let excess = problem.excess().iter().map(|&a| a as f32).collect();
    (covariance, excess)
}

/// The exponential draws of candidate `j` in f32, as the kernel makes them.
fn exponentials(seed: u64, j: u64, out: &mut [f32]) {
    let key = philox::key(seed);
    for (b, chunk) in out.chunks_mut(4).enumerate() {
        let words = philox::philox4x32_10(philox::counter(j, b as u64), key);
        for (e, &word) in chunk.iter_mut().zip(&words) {
            *e = -philox::u01(word).ln();
        }
    }
}

/// The first of the best scores, in order (blocks or candidates); a NaN
/// score counts as minus infinity.
fn first_best(candidates: impl IntoIterator<Item = SearchBest>) -> Option<SearchBest> {
    candidates.into_iter().fold(None, |best, mut c| {
        if c.score.is_nan() {
            c.score = f32::NEG_INFINITY;
        }
        match best {
            Some(b) if c.score <= b.score => Some(b),
            _ => Some(c),
        }
    })
}

/// The search's best from the bests of runs of candidates given in
/// candidate order: the first of the best scores (ties go to the lowest
/// index), so the bests of any cut of the candidates into runs merge to
/// the best of one run over them all. `None` for no runs.
pub fn merge_bests(runs: impl IntoIterator<Item = SearchBest>) -> Option<SearchBest> {
    first_best(runs)
}

/// The random search on the CPU over every candidate: see
/// [`search_cpu_range`].
pub fn search_cpu(problem: &Problem, settings: &Settings) -> SearchBest {
    search_cpu_range(problem, settings, 0..u64::from(settings.samples.max(1)))
}

/// The random search on the CPU over the candidates `candidates`: the
/// kernel's twin (the same candidates and formulas in f32, summed in
/// another order). Tiles of [`TILE`] candidates share each pass over the
/// covariance; every candidate's score is a fixed sequence of f32
/// operations (see [`tile_scores`]), the same whatever the tile, the
/// thread or the range it falls in, so the first best is the same too.
/// An empty range gives candidate `candidates.start` scored minus infinity.
pub fn search_cpu_range(
    problem: &Problem,
    settings: &Settings,
    candidates: Range<u64>,
) -> SearchBest {
    let matrix = SearchMatrix::new(problem);
    let n = matrix.n;
    let start = candidates.start;
    let count = candidates.end.saturating_sub(start);
    let tiles = count.div_ceil(TILE as u64) as usize;
    let tasks = tiles.div_ceil(CPU_TILES_PER_TASK);
    let max_weight = problem.max_weight as f32;
    let max_sharpe = problem.objective == Objective::MaxSharpe;
    let bests: Vec<Option<SearchBest>> = (0..tasks)
        .into_par_iter()
        .map_init(
            || vec![0.0f32; TILE * n],
            |weights, task| {
                let first_tile = task * CPU_TILES_PER_TASK;
                let last_tile = (first_tile + CPU_TILES_PER_TASK).min(tiles);
                first_best((first_tile..last_tile).flat_map(|tile| {
                    let first = start + (tile * TILE) as u64;
                    let count = (candidates.end - first).min(TILE as u64) as usize;
                    let scores = score_tile(
                        &matrix,
                        settings.seed,
                        first,
                        max_weight,
                        max_sharpe,
                        weights,
                    );
                    (0..count).map(move |c| SearchBest {
                        index: first + c as u64,
                        score: scores[c],
                    })
                }))
            },
        )
        .collect();
    first_best(bests.into_iter().flatten()).unwrap_or(SearchBest {
        index: start,
        score: f32::NEG_INFINITY,
    })
}

/// The covariance as the CPU search reads it, in f32: the diagonal, and
/// below it `S_ik + S_ki` (`k < i`), row `i` packed from `i (i - 1) / 2`,
/// so that `w'Sw = sum_i w_i (S_ii w_i + sum_{k<i} (S_ik + S_ki) w_k)` costs
/// half the products.
#[derive(Debug)]
struct SearchMatrix {
    n: usize,
    diagonal: Vec<f32>,
    lower: Vec<f32>,
    excess: Vec<f32>,
}

impl SearchMatrix {
    fn new(problem: &Problem) -> Self {
        let n = problem.assets();
        let cov = problem.covariance;
        let diagonal = (0..n).map(|i| cov[i * n + i] as f32).collect();
        let mut lower = Vec::with_capacity(n * n.saturating_sub(1) / 2);
        for i in 0..n {
            lower.extend((0..i).map(|k| (cov[i * n + k] + cov[k * n + i]) as f32));
        }
        let excess = problem.excess().iter().map(|&a| a as f32).collect();
        SearchMatrix {
            n,
            diagonal,
            lower,
            excess,
        }
    }

    /// Row `i` of the packed lower triangle (`i` values).
    fn row(&self, i: usize) -> &[f32] {
        let start = i * i.saturating_sub(1) / 2;
        &self.lower[start..start + i]
    }
}

/// Draws the tile of candidates from `first` (as the kernel does: Philox
/// exponentials, normalized, shrunk toward equal weights to fit
/// `max_weight`) into `weights`, asset-major: `weights[k * TILE + c]` is
/// asset `k` of candidate `first + c`. The tile's streams run side by side,
/// each with the same operations in the same order as [`exponentials`] and
/// the kernel's normalization.
#[inline(always)]
fn draw_tile(seed: u64, first: u64, max_weight: f32, weights: &mut [f32]) {
    let (rows, _) = weights.as_chunks_mut::<TILE>();
    let n = rows.len();
    let key = philox::key(seed);
    let mut sum = [0.0f32; TILE];
    let mut largest = [0.0f32; TILE];
    for (b, block) in rows.chunks_mut(4).enumerate() {
        let words = philox_tile(first, b as u64, key);
        for (row, words) in block.iter_mut().zip(&words) {
            for c in 0..TILE {
                let e = -philox::u01(words[c]).ln();
                row[c] = e;
                sum[c] += e;
                largest[c] = largest[c].max(e);
            }
        }
    }
    let equal = 1.0 / n as f32;
    let mut scale = [0.0f32; TILE];
    let mut shift = [0.0f32; TILE];
    for c in 0..TILE {
        let inv = 1.0 / sum[c];
        let top = largest[c] * inv;
        (scale[c], shift[c]) = if top > max_weight {
            let t = (top - max_weight) / (top - equal);
            ((1.0 - t) * inv, t * equal)
        } else {
            (inv, 0.0)
        };
    }
    for row in rows {
        for c in 0..TILE {
            row[c] = row[c] * scale[c] + shift[c];
        }
    }
}

/// Philox4x32-10 (as [`philox::philox4x32_10`]) of draw block `b` of the
/// streams `first..first + TILE`, lane `c` for stream `first + c`:
/// `out[q][c]` is word `q`.
#[inline(always)]
fn philox_tile(first: u64, b: u64, key: [u32; 2]) -> [[u32; TILE]; 4] {
    const M0: u64 = 0xD251_1F53;
    const M1: u64 = 0xCD9E_8D57;
    let mut x: [[u32; TILE]; 4] = [
        std::array::from_fn(|c| (first + c as u64) as u32),
        std::array::from_fn(|c| ((first + c as u64) >> 32) as u32),
        [b as u32; TILE],
        [(b >> 32) as u32; TILE],
    ];
    let mut key = key;
    for round in 0..10 {
        if round > 0 {
            key = [
                key[0].wrapping_add(0x9E37_79B9),
                key[1].wrapping_add(0xBB67_AE85),
            ];
        }
        let mut next = [[0u32; TILE]; 4];
        for c in 0..TILE {
            let p0 = M0 * u64::from(x[0][c]);
            let p1 = M1 * u64::from(x[2][c]);
            next[0][c] = (p1 >> 32) as u32 ^ x[1][c] ^ key[0];
            next[1][c] = p1 as u32;
            next[2][c] = (p0 >> 32) as u32 ^ x[3][c] ^ key[1];
            next[3][c] = p0 as u32;
        }
        x = next;
    }
    x
}

/// Draws the tile from `first` ([`draw_tile`]) and scores it
/// ([`tile_scores`]).
fn score_tile(
    matrix: &SearchMatrix,
    seed: u64,
    first: u64,
    max_weight: f32,
    max_sharpe: bool,
    weights: &mut [f32],
) -> [f32; TILE] {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, the only feature `score_tile_avx2`
        // enables.
        #[allow(unsafe_code)]
        return unsafe { score_tile_avx2(matrix, seed, first, max_weight, max_sharpe, weights) };
    }
    draw_tile(seed, first, max_weight, weights);
    tile_scores::<2>(matrix, weights, max_sharpe)
}

/// [`score_tile`] compiled for AVX2 (eight lanes, sixteen registers: four
/// rows at a time). The same operations in the same order as without it (no
/// FMA), so the same bits.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn score_tile_avx2(
    matrix: &SearchMatrix,
    seed: u64,
    first: u64,
    max_weight: f32,
    max_sharpe: bool,
    weights: &mut [f32],
) -> [f32; TILE] {
    draw_tile(seed, first, max_weight, weights);
    tile_scores::<4>(matrix, weights, max_sharpe)
}

/// The scores (minus the variance, or the Sharpe ratio) of a tile drawn by
/// [`draw_tile`]. For each candidate, in f32 and in this order:
/// `d_i = ((((0 + L_i0 w_0) + L_i1 w_1) + ...) + L_i,i-1 w_i-1) + S_ii w_i`
/// with `L` the packed lower triangle of [`SearchMatrix`], then
/// `var = (0 + w_0 d_0) + w_1 d_1 + ...` over the rows in order and
/// `ret = (0 + a_0 w_0) + a_1 w_1 + ...`; no fused multiply-adds. Rows are
/// taken a few at a time and the candidates side by side, which only
/// changes which lane does what (`R` rows at a time).
#[inline(always)]
fn tile_scores<const R: usize>(
    matrix: &SearchMatrix,
    weights: &[f32],
    max_sharpe: bool,
) -> [f32; TILE] {
    let (weights, _) = weights.as_chunks::<TILE>();
    let n = matrix.n;
    let mut variance = [0.0f32; TILE];
    let mut i = 0;
    while i + R <= n {
        let d = lower_dots::<R>(matrix, weights, i);
        for (r, d) in d.iter().enumerate() {
            let w = &weights[i + r];
            for c in 0..TILE {
                variance[c] += w[c] * d[c];
            }
        }
        i += R;
    }
    while i < n {
        let [d] = lower_dots::<1>(matrix, weights, i);
        let w = &weights[i];
        for c in 0..TILE {
            variance[c] += w[c] * d[c];
        }
        i += 1;
    }
    let mut scores = [0.0f32; TILE];
    if max_sharpe {
        let mut ret = [0.0f32; TILE];
        for (&a, w) in matrix.excess.iter().zip(weights) {
            for c in 0..TILE {
                ret[c] += a * w[c];
            }
        }
        for c in 0..TILE {
            scores[c] = if variance[c] > 0.0 {
                ret[c] / variance[c].sqrt()
            } else {
                f32::NEG_INFINITY
            };
        }
    } else {
        for c in 0..TILE {
            scores[c] = -variance[c];
        }
    }
    scores
}

/// `d_(i+r)` of [`tile_scores`] for the `R` rows from `i`, every candidate
/// of the tile: the columns below `i` that all the rows share, with `R`
/// rows x [`TILE`] candidates of independent sums, then each row's corner
/// and diagonal.
#[inline(always)]
fn lower_dots<const R: usize>(
    matrix: &SearchMatrix,
    weights: &[[f32; TILE]],
    i: usize,
) -> [[f32; TILE]; R] {
    let rows: [&[f32]; R] = std::array::from_fn(|r| matrix.row(i + r));
    let mut acc = [[0.0f32; TILE]; R];
    for (k, w) in weights[..i].iter().enumerate() {
        let s: [f32; R] = std::array::from_fn(|r| rows[r][k]);
        for r in 0..R {
            for c in 0..TILE {
                acc[r][c] += s[r] * w[c];
            }
        }
    }
    for (r, acc) in acc.iter_mut().enumerate() {
        for k in i..i + r {
            let s = rows[r][k];
            for c in 0..TILE {
                acc[c] += s * weights[k][c];
            }
        }
        let s = matrix.diagonal[i + r];
        for c in 0..TILE {
            acc[c] += s * weights[i + r][c];
        }
    }
    acc
}

/// The random search on the GPU over every candidate.
pub fn search_gpu(
    gpu: &Gpu,
    problem: &Problem,
    settings: &Settings,
) -> Result<SearchBest, DeviceError> {
    search_gpu_range(
        gpu,
        problem,
        settings,
        0..u64::from(settings.samples.max(1)),
    )
}

/// The random search on the GPU over the candidates `candidates` (within
/// `u32`): one block per [`CANDIDATES_PER_BLOCK`] candidates from
/// `candidates.start`, the blocks' bests merged in block order. A
/// candidate's score does not depend on the block it falls in (each sums
/// its own moments in a fixed order), so runs merge exactly
/// ([`merge_bests`]).
pub fn search_gpu_range(
    gpu: &Gpu,
    problem: &Problem,
    settings: &Settings,
    candidates: Range<u64>,
) -> Result<SearchBest, DeviceError> {
    use cudarc::driver::{LaunchConfig, PushKernelArg};
    let empty = SearchBest {
        index: candidates.start,
        score: f32::NEG_INFINITY,
    };
    // The kernel counts candidates in u32; a search has at most 2^24.
    let (Ok(start), Ok(end)) = (
        u32::try_from(candidates.start),
        u32::try_from(candidates.end),
    ) else {
        return Ok(empty);
    };
    if start >= end {
        return Ok(empty);
    }
    let n = problem.assets();
    let (covariance, excess) = search_inputs(problem);
    let blocks = (end - start).div_ceil(CANDIDATES_PER_BLOCK as u32);
    let stream = gpu.stream();
    let function = gpu.function(SOURCE.module, "random_search")?;
    let covariance = stream.clone_htod(&covariance)?;
    let excess = stream.clone_htod(&excess)?;
    let mut best_index = stream.alloc_zeros::<u32>(blocks as usize)?;
    let mut best_score = stream.alloc_zeros::<f32>(blocks as usize)?;
    let n32 = n as u32;
    let max_weight = problem.max_weight as f32;
    let max_sharpe = i32::from(problem.objective == Objective::MaxSharpe);
    let config = LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: (CANDIDATES_PER_BLOCK * n * std::mem::size_of::<f32>()) as u32,
    };
    let mut launch = stream.launch_builder(&function);
    launch
        .arg(&settings.seed)
        .arg(&start)
        .arg(&end)
        .arg(&n32)
        .arg(&max_weight)
        .arg(&max_sharpe)
        .arg(&covariance)
        .arg(&excess)
        .arg(&mut best_index)
        .arg(&mut best_score);
    // SAFETY: the arguments match `random_search(u64, u32, u32, u32, f32,
    // i32, const f32*, const f32*, u32*, f32*)`; the covariance holds n * n
    // values and the excess n; each output holds one value per block
    // (ceil((end - start) / 4) of them); the dynamic shared memory holds
    // the block's 4 n weights (at most 32 000 bytes for n <= 2000, under
    // the 48 KiB default).
    #[allow(unsafe_code)]
    unsafe {
        launch.launch(config)?;
    }
    let index = stream.clone_dtoh(&best_index)?;
    let score = stream.clone_dtoh(&best_score)?;
    Ok(
        first_best(index.iter().zip(&score).map(|(&i, &s)| SearchBest {
            index: u64::from(i),
            score: s,
        }))
        .unwrap_or(empty),
    )
}

// ---------------------------------------------------------------- refine

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
fn dot(a: &[f64], b: &[f64]) -> f64 {
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
fn matvec(cov: &[f64], x: &[f64], out: &mut [f64]) {
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

fn quadratic(cov: &[f64], x: &[f64]) -> f64 {
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

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
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
fn project_excess(x: &[f64], a: &[f64], out: &mut [f64]) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn reference_score(
        matrix: &SearchMatrix,
        seed: u64,
        j: u64,
        max_weight: f32,
        sharpe: bool,
    ) -> f32 {
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
                    let dispatched =
                        score_tile(&matrix, 5, first, max_weight, sharpe, &mut weights);
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
                let merged = merge_bests(runs.into_iter().map(|blocks| {
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
}

#[cfg(all(test, feature = "gpu-tests"))]
mod gpu_tests {
    use super::*;

    fn covariance(n: usize) -> (Vec<f64>, Vec<f64>) {
        let mut cov = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                let rho = if i == j { 1.0 } else { 0.3 };
                let sd = 0.1 + 0.2 * ((i * 7 % 13) as f64 / 13.0);
                let sd_j = 0.1 + 0.2 * ((j * 7 % 13) as f64 / 13.0);
                cov[i * n + j] = rho * sd * sd_j;
            }
        }
        let mu = (0..n)
            .map(|i| 0.03 + 0.08 * ((i * 5 % 11) as f64 / 11.0))
            .collect();
        (mu, cov)
    }

    /// The GPU's best score equals the CPU twin's within f32 rounding
    /// (1e-4 relative), and both refines agree within 1e-7.
    #[test]
    fn gpu_search_matches_the_cpu_twin() {
        let gpu = Gpu::open(0, crate::SOURCES, None).expect("GPU 0");
        assert!(gpu.disabled.is_empty(), "{:?}", gpu.disabled);
        for n in [3, 100, 517] {
            let (mu, cov) = covariance(n);
            for (objective, bound) in [
                (Objective::MinVariance, 1.0),
                (Objective::MaxSharpe, 1.0),
                (Objective::MinVariance, 0.9f64.max(2.0 / n as f64)),
                (Objective::MaxSharpe, 2.0f64.min(5.0 / n as f64).max(0.4)),
            ] {
                let problem = Problem::new(&mu, &cov, 0.01, objective, bound).unwrap();
                let s = Settings {
                    tolerance: 1e-12,
                    max_iterations: 100_000,
                    seed: 99,
                    samples: 10_001,
                };
                let cpu = search_cpu(&problem, &s);
                let gpu_best = search_gpu(&gpu, &problem, &s).unwrap();
                let scale = cpu.score.abs().max(1e-30);
                assert!(
                    (cpu.score - gpu_best.score).abs() <= 1e-4 * scale,
                    "n {n} {objective:?}: cpu {cpu:?} gpu {gpu_best:?}"
                );
                // Cut into runs of whole search blocks, the GPU merges to
                // its own whole search bit for bit.
                let blocks = search_blocks(s.samples);
                for runs in [2, 3, blocks] {
                    let per = blocks.div_ceil(runs);
                    let merged = merge_bests((0..blocks).step_by(per as usize).map(|first| {
                        let range = block_candidates(s.samples, first..(first + per).min(blocks));
                        search_gpu_range(&gpu, &problem, &s, range).unwrap()
                    }))
                    .unwrap();
                    assert_eq!(
                        merged.index, gpu_best.index,
                        "n {n} {objective:?} {runs} runs"
                    );
                    assert_eq!(merged.score.to_bits(), gpu_best.score.to_bits());
                }
                let a = refine(&problem, &s, cpu);
                let b = optimize_gpu(&gpu, &problem, &s).unwrap();
                let diff = max_abs_diff(&a.weights, &b.weights);
                assert!(
                    diff <= 1e-7,
                    "n {n} {objective:?}: weights differ by {diff}"
                );
            }
        }
    }
}
