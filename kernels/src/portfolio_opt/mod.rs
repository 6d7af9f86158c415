//! Long-only, fully invested portfolios (`0 <= w <= max_weight`,
//! `sum w = 1`) of least variance or greatest Sharpe ratio.
//!
//! Two stages:
//! 1. A random search, in f32: `samples` Dirichlet(1) portfolios (candidate
//!    `j` is Philox stream `j`: exponentials `-ln u`, normalized), each
//!    shrunk toward equal weights just enough to respect `max_weight`, each
//!    scored (minus the variance, or the Sharpe ratio). [`search_gpu`] runs
//!    it on the GPU (`cuda/portfolio_opt.cu`, one block per tile of
//!    [`gpu_tile`] candidates, whose weights sit in shared memory while
//!    the block reads the covariance, the blocks' bests reduced on the
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

//! # Layout
//!
//! - `search`: stage 1, on the CPU and the GPU, by runs of candidates.
//! - `refine`: stage 2, with the projections.

#[cfg(all(test, feature = "gpu-tests"))]
mod gpu_tests;
mod refine;
mod search;
#[cfg(test)]
mod tests;

use std::ops::Range;

use refine::dot;

pub use refine::{candidate, project_box_simplex, refine};
pub use search::{merge_bests, search_cpu, search_cpu_range, search_gpu, search_gpu_range};

use crate::driver::DeviceError;
use crate::risk::NotPositiveSemidefinite;
use crate::runtime::{Gpu, Source};

pub const SOURCE: Source = Source {
    module: "portfolio_opt",
    code: include_str!("../../cuda/portfolio_opt.cu"),
    kernels: &[
        "random_search_4",
        "random_search_8",
        "random_search_16",
        "random_search_32",
    ],
};

/// The tiles a GPU block may score, largest first (`random_search_<tile>`
/// in the kernel): candidates that share the block's reads of the
/// covariance.
pub const GPU_TILES: [usize; 4] = [32, 16, 8, 4];
/// Shared memory a GPU block may use: what every CUDA device gives a block
/// without opting in, so a problem gets the same tile, and its candidates
/// the same scores, on every device.
pub const GPU_SHARED_BYTES: usize = 48 * 1024;
const THREADS: u32 = 256;
/// Warps of a GPU block (`WARPS` in the kernel).
const WARPS: usize = THREADS as usize / 32;

/// The tile of a GPU search over `n` assets: the largest of [`GPU_TILES`]
/// whose weights (`tile n` f32 in dynamic shared memory) and reduction
/// scratch (`tile (WARPS + 1)` f32, static) fit [`GPU_SHARED_BYTES`]; `None`
/// when even the smallest does not (more than 3 063 assets).
pub fn gpu_tile(n: usize) -> Option<usize> {
    GPU_TILES
        .into_iter()
        .find(|&tile| gpu_shared_bytes(n, tile) <= GPU_SHARED_BYTES)
}

/// The shared memory a GPU block over `n` assets uses with `tile`: the
/// weights (dynamic) and the scratch (static).
fn gpu_shared_bytes(n: usize, tile: usize) -> usize {
    n.saturating_add(WARPS + 1).saturating_mul(4 * tile)
}
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
/// of whole blocks. A multiple of every one of [`GPU_TILES`] and of
/// [`TILE`] times [`CPU_TILES_PER_TASK`], so that a shard's GPU blocks and
/// CPU tasks are the unsplit run's.
pub const SEARCH_BLOCK: u64 = 256;
const _: () = assert!(
    SEARCH_BLOCK.is_multiple_of(GPU_TILES[0] as u64)
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
