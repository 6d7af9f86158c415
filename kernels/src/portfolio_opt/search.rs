//! Stage 1, the random search in f32: the CPU twin (tiles of candidates
//! per pass over the packed covariance, AVX2 where the CPU has it) and the
//! GPU launch, each over a run of candidates that [`merge_bests`] joins.

use std::ops::Range;

use rayon::prelude::*;

use super::{
    CPU_TILES_PER_TASK, Objective, Problem, SOURCE, SearchBest, Settings, THREADS, TILE, gpu_tile,
};
use crate::driver::DeviceError;
use crate::philox;
use crate::runtime::Gpu;

/// The f32 inputs of the search: the covariance and the excess returns.
fn search_inputs(problem: &Problem) -> (Vec<f32>, Vec<f32>) {
    let covariance = problem.covariance.iter().map(|&c| c as f32).collect();
    let excess = problem.excess().iter().map(|&a| a as f32).collect();
    (covariance, excess)
}

/// The exponential draws of candidate `j` in f32, as the kernel makes them.
pub(super) fn exponentials(seed: u64, j: u64, out: &mut [f32]) {
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
pub(super) struct SearchMatrix {
    pub(super) n: usize,
    pub(super) diagonal: Vec<f32>,
    lower: Vec<f32>,
    pub(super) excess: Vec<f32>,
}

impl SearchMatrix {
    pub(super) fn new(problem: &Problem) -> Self {
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
    pub(super) fn row(&self, i: usize) -> &[f32] {
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
pub(super) fn draw_tile(seed: u64, first: u64, max_weight: f32, weights: &mut [f32]) {
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
pub(super) fn philox_tile(first: u64, b: u64, key: [u32; 2]) -> [[u32; TILE]; 4] {
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
pub(super) fn score_tile(
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
pub(super) fn score_tile_avx2(
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
pub(super) fn tile_scores<const R: usize>(
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
/// `u32`): one block per tile of [`gpu_tile`] candidates from
/// `candidates.start`, the blocks' bests merged in block order. A
/// candidate's score does not depend on the block it falls in nor on its
/// place in the tile (each sums its own moments in a fixed order, the same
/// for every place), so runs merge exactly ([`merge_bests`]).
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
    // The kernel counts candidates in u32, the last block's tile included;
    // a search has at most 2^24.
    let (Ok(start), Ok(end)) = (
        u32::try_from(candidates.start),
        u32::try_from(candidates.end),
    ) else {
        return Ok(empty);
    };
    if start >= end || end > u32::MAX - 32 {
        return Ok(empty);
    }
    let n = problem.assets();
    let tile = gpu_tile(n).ok_or_else(|| DeviceError {
        fault: crate::driver::Fault::Other,
        message: format!("{n} assets do not fit the GPU search's shared memory"),
    })?;
    let (covariance, excess) = search_inputs(problem);
    let blocks = (end - start).div_ceil(tile as u32);
    let stream = gpu.stream();
    let function = gpu.function(SOURCE.module, &format!("random_search_{tile}"))?;
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
        shared_mem_bytes: (tile * n * std::mem::size_of::<f32>()) as u32,
    };
    let timer = gpu.kernel_timer()?;
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
    // SAFETY: the arguments match `random_search_<tile>(u64, u32, u32, u32,
    // f32, i32, const f32*, const f32*, u32*, f32*)`; the covariance holds
    // n * n values and the excess n; each output holds one value per block
    // (ceil((end - start) / tile) of them); the dynamic shared memory holds
    // the tile's weights, tile * n f32, which with the kernel's static
    // scratch fit the 48 KiB a block gets without opting in (`gpu_tile`);
    // `end + tile` does not overflow u32.
    #[allow(unsafe_code)]
    unsafe {
        launch.launch(config)?;
    }
    timer.finish()?;
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
