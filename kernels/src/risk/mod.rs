//! Portfolio loss scenarios and their tail: the CPU twin and the GPU launch
//! of the `risk` kind (VaR and CVaR).
//!
//! The scenarios come in fixed blocks of [`BLOCK`]. A run over a range of
//! whole blocks returns a [`Tail`]: the `keep` largest losses, sorted in
//! descending order, and the sum of the losses of each block (summed in
//! scenario order). [`Tail::merge`] of the tails of consecutive block ranges
//! equals the tail of their union bit for bit: the `keep` largest values of
//! a multiset do not depend on how it was cut, and the block sums are only
//! concatenated. So a split run equals a whole run, and the thread count
//! changes nothing.
//!
//! Monte Carlo: scenario j draws the standard normals z from Philox stream
//! j (draw block k / 4 for asset k; Box-Muller on words (0, 1) and (2, 3)),
//! in f32; the loss `-w.(mu + L z)` is computed, in f64, as
//! `base_loss - exposure.z` with `exposure = L^T w` and `base_loss = -w.mu`
//! (host, f64), which costs n rather than n^2 per scenario.
//!
//! Historical: the loss of row t of the returns is `-sum_i w_i r_ti` in f64,
//! summed as [`HIST_LANES`] interleaved partial sums added in a fixed tree
//! (see [`Historical::loss`]), an order that vectorises.
//!
//! GPU: one thread per Monte Carlo scenario, [`HIST_LANES`] per historical
//! row (one per partial sum, added by shuffles), writes its loss; per chunk
//! of [`GPU_CHUNK_BLOCKS`] blocks the device sums each block in scenario
//! order and selects the losses that can be in the tail, and only those
//! cross to the host's [`Tail`] (the `device_tail` module): the same bits as
//! reducing every loss on the host, an exact selection and the same sums.
//! Historical losses equal
//! the CPU's bit for bit (the kernel does the same operations in the same
//! order and does not fuse multiply-adds); Monte Carlo ones differ
//! by a few f32 ulp of the normals (GPU `logf`/`sincospif` against the
//! polynomials of [`philox::normal_pair`]),
//! so VaR, CVaR and the mean agree within [`GPU_RELATIVE_TOLERANCE`].

use std::cmp::Ordering;
use std::ops::Range;

use rayon::prelude::*;

use crate::driver::DeviceError;
use crate::philox;
use crate::runtime::{Gpu, Source};

mod device_tail;

pub use self::device_tail::TailTraffic;

pub const SOURCE: Source = Source {
    module: "risk",
    code: include_str!("../../cuda/risk.cu"),
    kernels: &[
        "risk_mc_losses",
        "risk_hist_losses",
        "risk_block_sums",
        "risk_tail_histogram",
        "risk_tail_select",
    ],
};

/// Scenarios per block.
pub const BLOCK: u64 = 4096;
/// Blocks per GPU chunk (2 Mi scenarios, 16 MiB of losses, and room for
/// half as many tail candidates: 24 MiB in all, within the 32 MiB the
/// kind's memory estimate books).
pub const GPU_CHUNK_BLOCKS: u64 = 512;
/// Blocks a rayon task takes at a time.
const GROUP: usize = 16;
/// How far GPU results may stray from the CPU twin's, relative, on Monte
/// Carlo runs (historical runs agree exactly).
pub const GPU_RELATIVE_TOLERANCE: f64 = 1e-5;
/// Jitter added to the covariance's diagonal, times its largest diagonal
/// entry, when the plain Cholesky factorisation fails: it admits matrices
/// that are positive semidefinite but singular.
pub const CHOLESKY_JITTER: f64 = 1e-10;

/// The number of blocks of `scenarios` scenarios.
pub fn block_count(scenarios: u64) -> u64 {
    scenarios.div_ceil(BLOCK)
}

/// The covariance has no Cholesky factor, even with the jitter.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "the covariance is not positive semidefinite: the Cholesky pivot of row {row} is {pivot:e} \
     even with {jitter:e} added to the diagonal"
)]
pub struct NotPositiveSemidefinite {
    pub row: usize,
    pub pivot: f64,
    pub jitter: f64,
}

/// The lower Cholesky factor L (row-major, n x n, L L^T = covariance) of a
/// symmetric matrix. Tries without jitter, then with [`CHOLESKY_JITTER`].
pub fn cholesky(covariance: &[f64], n: usize) -> Result<Vec<f64>, NotPositiveSemidefinite> {
    assert_eq!(covariance.len(), n * n, "covariance must be n x n");
    match cholesky_with(covariance, n, 0.0) {
        Ok(l) => Ok(l),
        Err(_) => {
            let largest = (0..n).map(|i| covariance[i * n + i]).fold(0.0f64, f64::max);
            // An all-zero matrix still gets a positive jitter.
            let jitter = (CHOLESKY_JITTER * largest).max(f64::MIN_POSITIVE);
            cholesky_with(covariance, n, jitter)
        }
    }
}

/// Rows of `L` that [`cholesky_with`] computes together.
const CHOLESKY_ROWS: usize = 8;

/// Factors `covariance + jitter I` as `L L'`, failing at the first pivot
/// that is not positive. Each entry is `(cov_ij - L_i[..j] . L_j[..j]) /
/// L_jj`. Rows go [`CHOLESKY_ROWS`] at a time, each earlier row read once
/// for all of them while they stay in cache: one row at a time the
/// factorization is bound by memory (n = 2000 on a loaded 2-core machine:
/// 2.7 to 3.1 s against 1.2 to 1.4 s), and the entries are the same bits
/// either way.
fn cholesky_with(
    covariance: &[f64],
    n: usize,
    jitter: f64,
) -> Result<Vec<f64>, NotPositiveSemidefinite> {
    let mut l = vec![0.0; n * n];
    let entry = |l: &mut [f64], i: usize, j: usize| -> Result<(), NotPositiveSemidefinite> {
        let dot: f64 = (0..j).map(|k| l[i * n + k] * l[j * n + k]).sum();
        if i == j {
            let pivot = covariance[i * n + i] + jitter - dot;
            // A NaN pivot fails too.
            if pivot.is_nan() || pivot <= 0.0 {
                return Err(NotPositiveSemidefinite {
                    row: i,
                    pivot,
                    jitter,
                });
            }
            l[i * n + i] = pivot.sqrt();
        } else {
            l[i * n + j] = (covariance[i * n + j] - dot) / l[j * n + j];
        }
        Ok(())
    };
    for first in (0..n).step_by(CHOLESKY_ROWS) {
        let rows = first..(first + CHOLESKY_ROWS).min(n);
        for j in 0..first {
            for i in rows.clone() {
                entry(&mut l, i, j)?;
            }
        }
        for i in rows {
            for j in first..=i {
                entry(&mut l, i, j)?;
            }
        }
    }
    Ok(l)
}

/// A Monte Carlo run, reduced to what each scenario needs.
#[derive(Debug, Clone, PartialEq)]
pub struct MonteCarlo {
    /// `-w.mu`, the loss at z = 0.
    pub base_loss: f64,
    /// `L^T w`: the loss falls by `exposure[k]` per unit of z_k.
    pub exposure: Vec<f64>,
    pub scenarios: u64,
    pub seed: u64,
}

impl MonteCarlo {
    /// `weights` and `mu` of n assets, the covariance n x n row-major.
    pub fn new(
        weights: &[f64],
        mu: &[f64],
        covariance: &[f64],
        scenarios: u64,
        seed: u64,
    ) -> Result<Self, NotPositiveSemidefinite> {
        let n = weights.len();
        assert_eq!(mu.len(), n, "one mean per asset");
        let l = cholesky(covariance, n)?;
        let exposure = (0..n)
            .map(|k| (k..n).map(|i| weights[i] * l[i * n + k]).sum())
            .collect();
        let base_loss = -weights.iter().zip(mu).map(|(w, m)| w * m).sum::<f64>();
        Ok(Self {
            base_loss,
            exposure,
            scenarios,
            seed,
        })
    }

    /// The loss of scenario `j`.
    #[inline]
    pub fn loss(&self, j: u64) -> f64 {
        let key = philox::key(self.seed);
        let mut sum = 0.0f64;
        for (draw, exposure) in self.exposure.chunks(4).enumerate() {
            let w = philox::philox4x32_10(philox::counter(j, draw as u64), key);
            let (z0, z1) = philox::normal_pair(w[0], w[1]);
            let (z2, z3) = if exposure.len() > 2 {
                philox::normal_pair(w[2], w[3])
            } else {
                (0.0, 0.0)
            };
            for (e, z) in exposure.iter().zip([z0, z1, z2, z3]) {
                sum += e * f64::from(z);
            }
        }
        self.base_loss - sum
    }

    /// Scenarios of block `block`.
    fn block_range(&self, block: u64) -> Range<u64> {
        block * BLOCK..((block + 1) * BLOCK).min(self.scenarios)
    }

    /// Appends the losses of block `block` to `out`: [`MonteCarlo::loss`]
    /// of each scenario, bit for bit, computed [`philox::LANES`] scenarios
    /// at a time.
    fn block_losses(&self, block: u64, out: &mut Vec<f64>) {
        self.block_losses_on(philox::simd(), block, out);
    }

    /// [`MonteCarlo::block_losses`] in the build `simd`, which the CPU
    /// must run.
    fn block_losses_on(&self, simd: philox::Simd, block: u64, out: &mut Vec<f64>) {
        match simd {
            // SAFETY: `simd` comes from `philox::simd`, so the CPU has the
            // features these builds enable.
            #[cfg(target_arch = "x86_64")]
            #[allow(unsafe_code)]
            philox::Simd::Avx512 => unsafe { self.block_losses_avx512(block, out) },
            #[cfg(target_arch = "x86_64")]
            #[allow(unsafe_code)]
            philox::Simd::Avx2 => unsafe { self.block_losses_avx2(block, out) },
            _ => self.block_losses_portable(block, out),
        }
    }

    /// [`MonteCarlo::block_losses`] built for AVX2: the same operations, so
    /// the same bits.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn block_losses_avx2(&self, block: u64, out: &mut Vec<f64>) {
        self.block_losses_portable(block, out);
    }

    /// [`MonteCarlo::block_losses`] built for AVX-512: the same operations,
    /// so the same bits.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,avx512f,avx512vl,avx512dq,avx512bw")]
    fn block_losses_avx512(&self, block: u64, out: &mut Vec<f64>) {
        self.block_losses_portable(block, out);
    }

    #[inline(always)]
    fn block_losses_portable(&self, block: u64, out: &mut Vec<f64>) {
        const LANES: usize = philox::LANES;
        let key = philox::key(self.seed);
        let range = self.block_range(block);
        let mut first = range.start;
        while first < range.end {
            // Lane l sums scenario first + l in the order of `loss`.
            let mut sum = [0.0f64; LANES];
            for (draw, exposure) in self.exposure.chunks(4).enumerate() {
                let words = philox::philox4x32_10_lanes(first, draw as u64, key);
                let z = philox::normals_lanes(&words, if exposure.len() > 2 { 2 } else { 1 });
                for (e, z) in exposure.iter().zip(&z) {
                    for l in 0..LANES {
                        sum[l] += e * f64::from(z[l]);
                    }
                }
            }
            // The scenarios of a partial last group past the block are
            // dropped.
            let count = (range.end - first).min(LANES as u64) as usize;
            out.extend(sum[..count].iter().map(|s| self.base_loss - s));
            first += LANES as u64;
        }
    }
}

/// A historical run: one scenario per row of returns.
#[derive(Debug, Clone, Copy)]
pub struct Historical<'a> {
    /// Position values, n.
    pub weights: &'a [f64],
    /// Returns, rows x n, row-major.
    pub returns: &'a [f64],
}

/// Partial sums of a historical loss: lane l takes assets l, l + 8, l + 16,
/// ... in order (see [`Historical::loss`]).
pub const HIST_LANES: usize = 8;
/// Rows the batched historical kernel carries at once (independent chains
/// that hide the latency of the additions).
const HIST_ROWS: usize = 4;
/// Rows a rayon task takes at a time when computing historical losses.
const HIST_TASK_ROWS: usize = 512;
/// Blocks whose historical losses are held at once (512 KiB).
const HIST_GROUP_BLOCKS: usize = 16;

/// How many rows ahead the historical kernel asks for the returns.
const HIST_PREFETCH_ROWS: usize = HIST_ROWS;

/// Hints the cache that `p` will be read soon. Never dereferences: `p` may
/// lie past the end of the returns.
#[inline(always)]
fn prefetch(p: *const f64) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        // SAFETY: SSE is part of x86-64, and a prefetch never faults,
        // whatever the address.
        #[allow(unsafe_code)]
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(p.cast())
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// The fixed tree that adds the [`HIST_LANES`] partial sums:
/// `((s0 + s4) + (s2 + s6)) + ((s1 + s5) + (s3 + s7))`, the order of a
/// halving reduction (the GPU's shuffles do the same).
#[inline(always)]
fn hist_combine(s: &[f64; HIST_LANES]) -> f64 {
    ((s[0] + s[4]) + (s[2] + s[6])) + ((s[1] + s[5]) + (s[3] + s[7]))
}

impl Historical<'_> {
    pub fn rows(&self) -> u64 {
        match self.weights.len() {
            0 => 0,
            n => (self.returns.len() / n) as u64,
        }
    }

    /// The loss of row `t`: `-sum_i w_i r_ti` in f64, summed as
    /// [`HIST_LANES`] interleaved partial sums (lane l adds `w_i * r_ti`
    /// for i = l, l + 8, ..., in order, from 0.0, each product rounded
    /// before the addition: no fused multiply-add), then added in the fixed
    /// tree `((s0 + s4) + (s2 + s6)) + ((s1 + s5) + (s3 + s7))`. This is the
    /// definition, plainly written; the batched CPU kernels and the GPU do
    /// the same operations in the same order.
    #[inline]
    pub fn loss(&self, t: u64) -> f64 {
        let n = self.weights.len();
        let row = &self.returns[t as usize * n..(t as usize + 1) * n];
        let mut s = [0.0f64; HIST_LANES];
        for (i, (w, r)) in self.weights.iter().zip(row).enumerate() {
            s[i % HIST_LANES] += w * r;
        }
        -hist_combine(&s)
    }

    /// Rows of block `block` (the tests' generic reduction).
    #[cfg(test)]
    fn block_range(&self, block: u64) -> Range<u64> {
        block * BLOCK..((block + 1) * BLOCK).min(self.rows())
    }

    /// Writes the losses of rows `first..first + out.len()` into `out`, in
    /// the build `simd`, which the CPU must run.
    fn losses_on(&self, simd: philox::Simd, first: u64, out: &mut [f64]) {
        match simd {
            // SAFETY: `simd` comes from `philox::simd` (or names a build
            // it admits), so the CPU has the features these builds enable.
            #[cfg(target_arch = "x86_64")]
            #[allow(unsafe_code)]
            philox::Simd::Avx512 => unsafe { self.losses_avx512(first, out) },
            #[cfg(target_arch = "x86_64")]
            #[allow(unsafe_code)]
            philox::Simd::Avx2 => unsafe { self.losses_avx2(first, out) },
            _ => self.losses_portable(first, out),
        }
    }

    /// [`Historical::losses_on`] built for AVX2: the same operations (no
    /// FMA: Rust never contracts `a * b + c`), so the same bits.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn losses_avx2(&self, first: u64, out: &mut [f64]) {
        self.losses_portable(first, out);
    }

    /// [`Historical::losses_on`] built for AVX-512: the same operations, so
    /// the same bits.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,avx512f,avx512vl,avx512dq,avx512bw")]
    fn losses_avx512(&self, first: u64, out: &mut [f64]) {
        self.losses_portable(first, out);
    }

    #[inline(always)]
    fn losses_portable(&self, first: u64, out: &mut [f64]) {
        let n = self.weights.len();
        let start = first as usize * n;
        let returns = &self.returns[start..start + out.len() * n];
        let mut rows = returns.chunks_exact(HIST_ROWS * n);
        let mut outs = out.chunks_exact_mut(HIST_ROWS);
        for (group, losses) in (&mut rows).zip(&mut outs) {
            self.rows_losses::<HIST_ROWS>(group, losses);
        }
        for (row, loss) in rows.remainder().chunks_exact(n).zip(outs.into_remainder()) {
            self.rows_losses::<1>(row, std::slice::from_mut(loss));
        }
    }

    /// The losses of the `R` consecutive rows in `rows` (R x n), each with
    /// the operations of [`Historical::loss`].
    #[inline(always)]
    fn rows_losses<const R: usize>(&self, rows: &[f64], out: &mut [f64]) {
        const L: usize = HIST_LANES;
        let n = self.weights.len();
        let (weights, weights_rest) = self.weights.as_chunks::<L>();
        let row: [(&[[f64; L]], &[f64]); R] =
            std::array::from_fn(|r| rows[r * n..(r + 1) * n].as_chunks::<L>());
        let ahead = HIST_PREFETCH_ROWS * n;
        let mut s = [[0.0f64; L]; R];
        for (c, w) in weights.iter().enumerate() {
            for r in 0..R {
                let x = &row[r].0[c];
                prefetch(x.as_ptr().wrapping_add(ahead));
                for l in 0..L {
                    s[r][l] += w[l] * x[l];
                }
            }
        }
        for r in 0..R {
            for (l, (w, x)) in weights_rest.iter().zip(row[r].1).enumerate() {
                s[r][l] += w * x;
            }
            out[r] = -hist_combine(&s[r]);
        }
    }
}

/// The tail of a run over whole blocks.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Tail {
    /// The largest losses, at most `keep`, in descending order.
    pub top: Vec<f64>,
    /// The sum of the losses of each block, in block order.
    pub block_sums: Vec<f64>,
}

fn descending(a: &f64, b: &f64) -> Ordering {
    b.total_cmp(a)
}

/// The `keep` largest of the values pushed into it.
struct TopK {
    keep: usize,
    values: Vec<f64>,
}

impl TopK {
    fn new(keep: usize) -> Self {
        Self {
            keep,
            values: Vec::new(),
        }
    }

    fn extend(&mut self, values: &[f64]) {
        self.values.extend_from_slice(values);
        // Selecting only once the buffer holds twice the tail keeps the
        // cost linear in the values pushed.
        if self.values.len() >= 2 * self.keep + BLOCK as usize {
            self.shrink();
        }
    }

    fn shrink(&mut self) {
        if self.values.len() > self.keep {
            if self.keep > 0 {
                self.values
                    .select_nth_unstable_by(self.keep - 1, descending);
            }
            self.values.truncate(self.keep);
        }
    }

    /// The smallest value that can still be in the result: the `keep`-th
    /// largest pushed so far, once there are `keep`; `None` before (or when
    /// `keep` is 0).
    fn floor(&mut self) -> Option<f64> {
        if self.keep == 0 || self.values.len() < self.keep {
            return None;
        }
        self.shrink();
        self.values.iter().copied().min_by(f64::total_cmp)
    }

    fn finish(mut self) -> Vec<f64> {
        self.shrink();
        // Equal under total_cmp means equal bits, so the order is unique.
        self.values.sort_unstable_by(descending);
        self.values
    }
}

impl Tail {
    /// The tail of consecutive block ranges, given in block order.
    pub fn merge(parts: impl IntoIterator<Item = Tail>, keep: usize) -> Tail {
        let mut top = TopK::new(keep);
        let mut block_sums = Vec::new();
        for part in parts {
            top.extend(&part.top);
            block_sums.extend(part.block_sums);
        }
        Tail {
            top: top.finish(),
            block_sums,
        }
    }

    /// VaR (the k-th largest loss) and CVaR (the mean of the k largest);
    /// `None` when k is 0 or the tail holds fewer than k losses.
    pub fn var_cvar(&self, k: usize) -> Option<(f64, f64)> {
        if k == 0 || k > self.top.len() {
            return None;
        }
        let sum: f64 = self.top[..k].iter().sum();
        Some((self.top[k - 1], sum / k as f64))
    }

    /// The mean loss over `scenarios` scenarios: the block sums added in
    /// block order.
    pub fn mean(&self, scenarios: u64) -> f64 {
        self.block_sums.iter().sum::<f64>() / scenarios as f64
    }
}

/// Sums and selects over `blocks`, in parallel, writing each block's losses
/// with `losses_of(block, buffer)`.
fn reduce_blocks(
    blocks: Range<u64>,
    keep: usize,
    losses_of: impl Fn(u64, &mut Vec<f64>) + Sync,
) -> Tail {
    let mut block_sums = vec![0.0; (blocks.end.saturating_sub(blocks.start)) as usize];
    let top = block_sums
        .par_chunks_mut(GROUP)
        .enumerate()
        .fold(
            || (TopK::new(keep), Vec::with_capacity(BLOCK as usize)),
            |(mut top, mut losses), (group, sums)| {
                for (i, sum) in sums.iter_mut().enumerate() {
                    let block = blocks.start + (group * GROUP + i) as u64;
                    losses.clear();
                    losses_of(block, &mut losses);
                    // Sequential, in scenario order: the same on every run.
                    *sum = losses.iter().sum();
                    top.extend(&losses);
                }
                (top, losses)
            },
        )
        .map(|(top, _)| top)
        .reduce(
            || TopK::new(keep),
            |mut a, b| {
                a.extend(&b.values);
                a
            },
        );
    Tail {
        top: top.finish(),
        block_sums,
    }
}

/// The tail of Monte Carlo blocks `blocks`, keeping the `keep` largest
/// losses, on the CPU.
pub fn monte_carlo_cpu(run: &MonteCarlo, blocks: Range<u64>, keep: usize) -> Tail {
    reduce_blocks(blocks, keep, |block, out| run.block_losses(block, out))
}

/// The tail of historical blocks `blocks` on the CPU.
///
/// The same tail, bit for bit, as the generic block reduction over
/// [`Historical::loss`] of each row: per group of `HIST_GROUP_BLOCKS`
/// blocks, one parallel pass computes the losses and their top ones in
/// tasks of `HIST_TASK_ROWS` rows, then each block's losses are summed in
/// row order.
pub fn historical_cpu(run: &Historical<'_>, blocks: Range<u64>, keep: usize) -> Tail {
    let simd = philox::simd();
    let rows = run.rows();
    let mut block_sums = vec![0.0; (blocks.end.saturating_sub(blocks.start)) as usize];
    let mut top = TopK::new(keep);
    let mut losses = Vec::new();
    for (group, sums) in block_sums.chunks_mut(HIST_GROUP_BLOCKS).enumerate() {
        let first_block = blocks.start + (group * HIST_GROUP_BLOCKS) as u64;
        let first = (first_block * BLOCK).min(rows);
        let end = ((first_block + sums.len() as u64) * BLOCK).min(rows);
        losses.clear();
        losses.resize((end - first) as usize, 0.0);
        let group_top = losses
            .par_chunks_mut(HIST_TASK_ROWS)
            .enumerate()
            .fold(
                || TopK::new(keep),
                |mut top, (task, out)| {
                    run.losses_on(simd, first + (task * HIST_TASK_ROWS) as u64, out);
                    top.extend(out);
                    top
                },
            )
            .reduce(
                || TopK::new(keep),
                |mut a, b| {
                    a.extend(&b.values);
                    a
                },
            );
        for (i, sum) in sums.iter_mut().enumerate() {
            let block = first_block + i as u64;
            let lo = (block * BLOCK).min(rows) - first;
            let hi = ((block + 1) * BLOCK).min(rows) - first;
            // Sequential, in row order: the same on every run.
            *sum = losses[lo as usize..hi as usize].iter().sum();
        }
        top.extend(&group_top.values);
    }
    Tail {
        top: top.finish(),
        block_sums,
    }
}

/// Grid for `count` threads, 256 per block.
/// Launches `risk_mc_losses` for scenarios `first .. first + count` of
/// `run` into `losses[..count]`.
fn launch_mc_losses(
    gpu: &Gpu,
    function: &cudarc::driver::CudaFunction,
    run: &MonteCarlo,
    first: u64,
    count: u32,
    exposure: &cudarc::driver::CudaSlice<f64>,
    losses: &mut cudarc::driver::CudaSlice<f64>,
) -> Result<(), DeviceError> {
    use cudarc::driver::PushKernelArg;
    assert!(losses.len() >= count as usize && exposure.len() == run.exposure.len());
    let n_assets = run.exposure.len() as u32;
    let mut launch = gpu.stream().launch_builder(function);
    launch
        .arg(&run.seed)
        .arg(&first)
        .arg(&count)
        .arg(&n_assets)
        .arg(&run.base_loss)
        .arg(exposure)
        .arg(losses);
    // SAFETY: the arguments match `risk_mc_losses(u64, u64, u32, u32, f64,
    // const f64*, f64*)`; `exposure` holds n_assets values and `losses` at
    // least `count` (asserted).
    #[allow(unsafe_code)]
    unsafe {
        launch.launch(launch_config(count))?;
    }
    Ok(())
}

fn launch_config(count: u32) -> cudarc::driver::LaunchConfig {
    cudarc::driver::LaunchConfig {
        grid_dim: (count.div_ceil(256), 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Device memory [`monte_carlo_gpu`] allocates for a run of `scenarios`
/// scenarios (`blocks` blocks) and `n_assets` assets, bytes: one chunk of
/// losses, the tail's scratch, the block sums and the exposure.
pub fn monte_carlo_gpu_memory(scenarios: u64, blocks: u64, n_assets: usize) -> u64 {
    let chunk_len = (GPU_CHUNK_BLOCKS * BLOCK).min(scenarios).max(1);
    8 * (chunk_len + blocks.max(1) + n_assets as u64)
        + device_tail::Scratch::bytes(chunk_len as usize)
}

/// The tail of Monte Carlo blocks `blocks` with the losses computed on the
/// GPU, [`GPU_CHUNK_BLOCKS`] blocks per launch, and reduced there (see
/// [`monte_carlo_gpu_traffic`]).
pub fn monte_carlo_gpu(
    gpu: &Gpu,
    run: &MonteCarlo,
    blocks: Range<u64>,
    keep: usize,
) -> Result<Tail, DeviceError> {
    Ok(monte_carlo_gpu_traffic(gpu, run, blocks, keep)?.0)
}

/// [`monte_carlo_gpu`], and what crossed to the host. Per chunk, the
/// device sums each block in scenario order and keeps only the losses
/// that can be in the tail (the `device_tail` module): the same [`Tail`],
/// bit for bit, as reducing every loss on the host.
pub fn monte_carlo_gpu_traffic(
    gpu: &Gpu,
    run: &MonteCarlo,
    blocks: Range<u64>,
    keep: usize,
) -> Result<(Tail, TailTraffic), DeviceError> {
    let n_blocks = blocks.end.saturating_sub(blocks.start);
    let mut traffic = TailTraffic::default();
    if n_blocks == 0 {
        return Ok((Tail::default(), traffic));
    }
    let stream = gpu.stream();
    let function = gpu.function(SOURCE.module, "risk_mc_losses")?;
    let exposure = stream.clone_htod(&run.exposure)?;
    let chunk_len = (GPU_CHUNK_BLOCKS * BLOCK).min(run.scenarios).max(1) as usize;
    let mut losses = stream.alloc_zeros::<f64>(chunk_len)?;
    let mut sums = stream.alloc_zeros::<f64>(n_blocks as usize)?;
    let mut scratch = device_tail::Scratch::new(gpu, chunk_len)?;
    let mut top = TopK::new(keep);
    let mut start = blocks.start;
    while start < blocks.end {
        let chunk = start..(start + GPU_CHUNK_BLOCKS).min(blocks.end);
        let first = chunk.start * BLOCK;
        // Blocks past the last scenario hold none.
        let count = (chunk.end * BLOCK).min(run.scenarios).saturating_sub(first);
        let count32 = count as u32;
        let timer = gpu.kernel_timer()?;
        if count > 0 {
            // A chunk is at most chunk_len, the losses' length.
            launch_mc_losses(gpu, &function, run, first, count32, &exposure, &mut losses)?;
        }
        timer.finish()?;
        let at = (chunk.start - blocks.start) as usize;
        let mut chunk_sums = sums.slice_mut(at..at + (chunk.end - chunk.start) as usize);
        scratch.reduce(
            gpu,
            losses.slice(..count as usize),
            &mut chunk_sums,
            keep,
            &mut top,
            &mut traffic,
        )?;
        start = chunk.end;
    }
    let block_sums = stream.clone_dtoh(&sums)?;
    Ok((
        Tail {
            top: top.finish(),
            block_sums,
        },
        traffic,
    ))
}

/// The tail of historical blocks `blocks` with the losses computed on the
/// GPU (the shard's rows uploaded at once) and reduced there, as
/// [`monte_carlo_gpu`] does.
pub fn historical_gpu(
    gpu: &Gpu,
    run: &Historical<'_>,
    blocks: Range<u64>,
    keep: usize,
) -> Result<Tail, DeviceError> {
    Ok(historical_gpu_traffic(gpu, run, blocks, keep)?.0)
}

/// [`historical_gpu`], and what crossed to the host.
pub fn historical_gpu_traffic(
    gpu: &Gpu,
    run: &Historical<'_>,
    blocks: Range<u64>,
    keep: usize,
) -> Result<(Tail, TailTraffic), DeviceError> {
    use cudarc::driver::PushKernelArg;
    let n = run.weights.len();
    let first = (blocks.start * BLOCK).min(run.rows());
    let end = (blocks.end * BLOCK).min(run.rows());
    let rows = (end - first) as u32;
    if rows == 0 {
        return Ok((historical_cpu(run, blocks, keep), TailTraffic::default()));
    }
    let stream = gpu.stream();
    let function = gpu.function(SOURCE.module, "risk_hist_losses")?;
    let weights = stream.clone_htod(run.weights)?;
    let returns = stream.clone_htod(&run.returns[first as usize * n..end as usize * n])?;
    let mut losses = stream.alloc_zeros::<f64>(rows as usize)?;
    let n_assets = n as u32;
    let timer = gpu.kernel_timer()?;
    let mut launch = stream.launch_builder(&function);
    launch
        .arg(&rows)
        .arg(&n_assets)
        .arg(&weights)
        .arg(&returns)
        .arg(&mut losses);
    // HIST_LANES threads per row, 256 (a whole number of warps) per block.
    let config = cudarc::driver::LaunchConfig {
        grid_dim: (
            (u64::from(rows) * HIST_LANES as u64).div_ceil(256) as u32,
            1,
            1,
        ),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: the arguments match `risk_hist_losses(u32, u32, const f64*,
    // const f64*, f64*)`; `returns` holds rows x n_assets values, `losses`
    // rows.
    #[allow(unsafe_code)]
    unsafe {
        launch.launch(config)?;
    }
    timer.finish()?;
    let n_blocks = blocks.end.saturating_sub(blocks.start);
    let chunk_len = (GPU_CHUNK_BLOCKS * BLOCK).min(u64::from(rows)) as usize;
    let mut sums = stream.alloc_zeros::<f64>(n_blocks as usize)?;
    // The returns (rows x n values, at least a chunk) hold the candidates:
    // no memory beyond the kind's estimate but the counts and the sums.
    let mut scratch = device_tail::Scratch::reusing(gpu, returns, chunk_len)?;
    let mut top = TopK::new(keep);
    let mut traffic = TailTraffic::default();
    let mut start = blocks.start;
    while start < blocks.end {
        let chunk = start..(start + GPU_CHUNK_BLOCKS).min(blocks.end);
        // The chunk's rows, from the shard's first: blocks start at whole
        // multiples of BLOCK, and those past the last row hold none.
        let lo = ((chunk.start * BLOCK).min(end) - first) as usize;
        let hi = ((chunk.end * BLOCK).min(end) - first) as usize;
        let at = (chunk.start - blocks.start) as usize;
        let mut chunk_sums = sums.slice_mut(at..at + (chunk.end - chunk.start) as usize);
        scratch.reduce(
            gpu,
            losses.slice(lo..hi),
            &mut chunk_sums,
            keep,
            &mut top,
            &mut traffic,
        )?;
        start = chunk.end;
    }
    let block_sums = stream.clone_dtoh(&sums)?;
    Ok((
        Tail {
            top: top.finish(),
            block_sums,
        },
        traffic,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// k = ceil((1 - c) N), for the tests' round cases.
    fn tail_count(confidence: f64, scenarios: u64) -> usize {
        ((1.0 - confidence) * scenarios as f64 - 1e-9).ceil() as usize
    }

    /// The standard normal quantile, by bisection on the distribution function.
    fn normal_quantile(p: f64) -> f64 {
        let (mut lo, mut hi) = (-10.0f64, 10.0f64);
        for _ in 0..200 {
            let mid = 0.5 * (lo + hi);
            if normal_cdf(mid) < p {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        0.5 * (lo + hi)
    }

    fn normal_cdf(x: f64) -> f64 {
        crate::monte_carlo::testutil::norm_cdf(x)
    }

    fn normal_pdf(x: f64) -> f64 {
        (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt()
    }

    /// Three assets with correlated returns.
    fn portfolio() -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let weights = vec![1_000.0, -400.0, 2_500.0];
        let mu = vec![0.001, 0.0005, 0.002];
        let vol = [0.02, 0.03, 0.015];
        let corr = [[1.0, 0.3, -0.2], [0.3, 1.0, 0.5], [-0.2, 0.5, 1.0]];
        let cov = (0..9)
            .map(|ij| {
                let (i, j) = (ij / 3, ij % 3);
                corr[i][j] * vol[i] * vol[j]
            })
            .collect();
        (weights, mu, cov)
    }

    #[test]
    fn cholesky_of_a_known_matrix() {
        // [[4, 12, -16], [12, 37, -43], [-16, -43, 98]] = L L^T with
        // L = [[2, 0, 0], [6, 1, 0], [-8, 5, 3]].
        let a = [4.0, 12.0, -16.0, 12.0, 37.0, -43.0, -16.0, -43.0, 98.0];
        let l = cholesky(&a, 3).unwrap();
        assert_eq!(l, vec![2.0, 0.0, 0.0, 6.0, 1.0, 0.0, -8.0, 5.0, 3.0]);
    }

    #[test]
    fn cholesky_jitters_singular_matrices_and_refuses_indefinite_ones() {
        // Rank one: positive semidefinite, singular.
        let l = cholesky(&[1.0, 1.0, 1.0, 1.0], 2).unwrap();
        assert!(
            (l[0] - 1.0).abs() < 1e-9 && (l[2] - 1.0).abs() < 1e-9,
            "{l:?}"
        );
        assert!(l[3] > 0.0 && l[3] < 1e-4, "{l:?}");
        assert!(cholesky(&[0.0; 4], 2).is_ok());
        // Eigenvalues 3 and -1.
        let err = cholesky(&[1.0, 2.0, 2.0, 1.0], 2).unwrap_err();
        assert_eq!(err.row, 1);
        assert!(err.pivot < 0.0);
        assert!(err.to_string().contains("not positive semidefinite"));
    }

    #[test]
    fn monte_carlo_matches_the_gaussian_formulas() {
        let (weights, mu, cov) = portfolio();
        let scenarios = 1_000_000;
        let run = MonteCarlo::new(&weights, &mu, &cov, scenarios, 2024).unwrap();
        let keep = tail_count(0.95, scenarios);
        let tail = monte_carlo_cpu(&run, 0..block_count(scenarios), keep);
        assert_eq!(tail.top.len(), keep);
        assert_eq!(tail.block_sums.len() as u64, block_count(scenarios));
        let mean_loss = -weights.iter().zip(&mu).map(|(w, m)| w * m).sum::<f64>();
        let variance: f64 = (0..9)
            .map(|ij| weights[ij / 3] * cov[ij] * weights[ij % 3])
            .sum();
        let sigma = variance.sqrt();
        for c in [0.95, 0.99] {
            let z = normal_quantile(c);
            let var = mean_loss + z * sigma;
            let cvar = mean_loss + sigma * normal_pdf(z) / (1.0 - c);
            let (got_var, got_cvar) = tail.var_cvar(tail_count(c, scenarios)).unwrap();
            // Sampling error at 10^6 scenarios is well under 1 %.
            assert!(
                (got_var / var - 1.0).abs() < 0.02,
                "VaR {c}: {got_var} vs {var}"
            );
            assert!(
                (got_cvar / cvar - 1.0).abs() < 0.02,
                "CVaR {c}: {got_cvar} vs {cvar}"
            );
        }
        let got_mean = tail.mean(scenarios);
        assert!(
            (got_mean - mean_loss).abs() < 0.01 * sigma,
            "{got_mean} vs {mean_loss}"
        );
    }

    #[test]
    fn historical_on_a_hand_checked_matrix() {
        // Weights (2, 1); losses -(2 r0 + r1) of the five rows:
        // 0.1, -0.5, 0.4, 0.0, 0.25.
        let returns = [
            -0.1, 0.1, //
            0.2, 0.1, //
            -0.1, -0.2, //
            0.0, 0.0, //
            -0.05, -0.15,
        ];
        let run = Historical {
            weights: &[2.0, 1.0],
            returns: &returns,
        };
        let tail = historical_cpu(&run, 0..1, 3);
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        let want = [0.4, 0.25, 0.1];
        assert!(
            tail.top.iter().zip(want).all(|(a, b)| close(*a, b)),
            "{:?}",
            tail.top
        );
        // c = 0.8: k = 1, VaR = CVaR = 0.4. c = 0.5: k = 3, VaR = 0.1,
        // CVaR = 0.75 / 3.
        let (var, cvar) = tail.var_cvar(1).unwrap();
        assert!(close(var, 0.4) && close(cvar, 0.4));
        let (var, cvar) = tail.var_cvar(3).unwrap();
        assert!(close(var, 0.1) && close(cvar, 0.25), "{var} {cvar}");
        assert!(close(tail.mean(5), 0.25 / 5.0));
        assert_eq!(tail.var_cvar(4), None);
    }

    #[test]
    fn deterministic_whatever_the_threads_and_the_cut() {
        let (weights, mu, cov) = portfolio();
        let scenarios = 50_000;
        let run = MonteCarlo::new(&weights, &mu, &cov, scenarios, 9).unwrap();
        let blocks = block_count(scenarios);
        let keep = 700;
        let on = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| monte_carlo_cpu(&run, 0..blocks, keep))
        };
        let one = on(1);
        assert_eq!(one, on(4));
        assert_eq!(one, monte_carlo_cpu(&run, 0..blocks, keep));
        let cut = Tail::merge(
            [0..3, 3..4, 4..blocks].map(|r| monte_carlo_cpu(&run, r, keep)),
            keep,
        );
        assert_eq!(one, cut);
        // Scenario j depends only on (seed, j).
        assert_eq!(run.loss(12_345).to_bits(), run.loss(12_345).to_bits());
        let other = MonteCarlo::new(&weights, &mu, &cov, 2 * scenarios, 9).unwrap();
        assert_eq!(run.loss(12_345).to_bits(), other.loss(12_345).to_bits());

        let returns: Vec<f64> = (0..9_000 * 4)
            .map(|i| ((i * 7919) % 2003) as f64 / 1e4 - 0.1)
            .collect();
        let hist = Historical {
            weights: &[1.0, -2.0, 3.0, 0.5],
            returns: &returns,
        };
        let whole = historical_cpu(&hist, 0..3, 500);
        let cut = Tail::merge(
            [
                historical_cpu(&hist, 0..1, 500),
                historical_cpu(&hist, 1..3, 500),
            ],
            500,
        );
        assert_eq!(whole, cut);
    }

    #[test]
    fn the_loss_is_minus_the_weighted_simulated_returns() {
        let (weights, mu, cov) = portfolio();
        let run = MonteCarlo::new(&weights, &mu, &cov, 10, 3).unwrap();
        let l = cholesky(&cov, 3).unwrap();
        let w = philox::philox4x32_10(philox::counter(7, 0), philox::key(3));
        let (z0, z1) = philox::normal_pair(w[0], w[1]);
        let (z2, _) = philox::normal_pair(w[2], w[3]);
        let z = [z0, z1, z2].map(f64::from);
        let direct: f64 = -(0..3)
            .map(|i| weights[i] * (mu[i] + (0..3).map(|k| l[i * 3 + k] * z[k]).sum::<f64>()))
            .sum::<f64>();
        assert!(
            (run.loss(7) - direct).abs() < 1e-9,
            "{} vs {direct}",
            run.loss(7)
        );
    }

    #[test]
    fn historical_losses_follow_the_lane_order_in_every_build() {
        let mut builds = vec![philox::Simd::Portable, philox::simd()];
        if builds[1] == philox::Simd::Avx512 {
            builds.push(philox::Simd::Avx2);
        }
        let bits = |losses: &[f64]| losses.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for n in [1, 3, 8, 13, 500] {
            // A partial last block whose rows are no multiple of HIST_ROWS.
            let rows = BLOCK as usize + 7;
            let weights: Vec<f64> = (0..n).map(|i| 1_000.0 + 10.0 * i as f64).collect();
            let returns: Vec<f64> = (0..rows * n)
                .map(|i| ((i * 7919) % 2003) as f64 / 1e4 - 0.1003)
                .collect();
            let run = Historical {
                weights: &weights,
                returns: &returns,
            };
            // The definition: lane l adds the assets l, l + 8, ..., then
            // the fixed tree.
            let plain = |t: usize| {
                let mut s = [0.0f64; 8];
                for i in 0..n {
                    s[i % 8] += weights[i] * returns[t * n + i];
                }
                -(((s[0] + s[4]) + (s[2] + s[6])) + ((s[1] + s[5]) + (s[3] + s[7])))
            };
            let want: Vec<u64> = (0..rows).map(|t| plain(t).to_bits()).collect();
            let single: Vec<f64> = (0..rows as u64).map(|t| run.loss(t)).collect();
            assert_eq!(bits(&single), want, "n {n}");
            for &simd in &builds {
                for (first, count) in [(0, rows), (5, 11), (BLOCK as usize, 7)] {
                    let mut out = vec![0.0; count];
                    run.losses_on(simd, first as u64, &mut out);
                    assert_eq!(bits(&out), want[first..first + count], "n {n} {simd:?}");
                }
            }
            // The two-pass tail equals the generic reduction over `loss`,
            // past the last row too (empty blocks).
            for (blocks, keep) in [(0..2, 300), (1..4, 5_000), (0..1, 0)] {
                let generic = reduce_blocks(blocks.clone(), keep, |block, out| {
                    out.extend(run.block_range(block).map(|t| run.loss(t)));
                });
                let tail = historical_cpu(&run, blocks, keep);
                assert_eq!(bits(&tail.top), bits(&generic.top), "n {n}");
                assert_eq!(bits(&tail.block_sums), bits(&generic.block_sums), "n {n}");
            }
            let one_thread = rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .build()
                .unwrap()
                .install(|| historical_cpu(&run, 0..2, 300));
            assert_eq!(one_thread, historical_cpu(&run, 0..2, 300));
        }
    }

    /// The GPU path's device memory stays within what the kind books for a
    /// run: 8 x (4 Mi + n) bytes (`Risk::memory_estimate`), at the largest
    /// run (10^8 scenarios, 1 000 assets).
    #[test]
    fn the_gpu_path_fits_the_memory_the_kind_books() {
        let (scenarios, n) = (100_000_000u64, 1_000usize);
        let booked = 8 * ((1u64 << 22) + n as u64);
        let used = monte_carlo_gpu_memory(scenarios, block_count(scenarios), n);
        assert!(used <= booked, "{used} > {booked}");
        assert!(monte_carlo_gpu_memory(10, 1, 3) <= 8 * (10 + 3) + 16_384);
    }

    #[test]
    fn batched_losses_equal_the_scenario_losses() {
        let (weights, mu, cov) = portfolio();
        // 3 assets (a partial draw block), 2 blocks, the last partial.
        let run = MonteCarlo::new(&weights, &mu, &cov, BLOCK + 37, 11).unwrap();
        let bits = |losses: &[f64]| losses.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let mut builds = vec![philox::Simd::Portable, philox::simd()];
        if builds[1] == philox::Simd::Avx512 {
            builds.push(philox::Simd::Avx2);
        }
        for block in 0..2 {
            let single: Vec<u64> = run
                .block_range(block)
                .map(|j| run.loss(j).to_bits())
                .collect();
            for &simd in &builds {
                let mut batched = Vec::new();
                run.block_losses_on(simd, block, &mut batched);
                assert_eq!(bits(&batched), single, "{simd:?}");
            }
        }
    }
}

#[cfg(all(test, feature = "gpu-tests"))]
mod gpu_tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= GPU_RELATIVE_TOLERANCE * a.abs().max(b.abs()).max(1e-12)
    }

    /// The old GPU path: every loss of `blocks` computed on the device,
    /// copied to the host and reduced there by the CPU twin's code. The
    /// device reduction must give its bits.
    fn monte_carlo_host_reduced(
        gpu: &Gpu,
        run: &MonteCarlo,
        blocks: Range<u64>,
        keep: usize,
    ) -> Tail {
        let stream = gpu.stream();
        let function = gpu
            .function(SOURCE.module, "risk_mc_losses")
            .expect("kernel");
        let exposure = stream.clone_htod(&run.exposure).expect("upload");
        let first = blocks.start * BLOCK;
        let count = ((blocks.end * BLOCK).min(run.scenarios) - first) as u32;
        let mut losses = stream.alloc_zeros::<f64>(count as usize).expect("alloc");
        launch_mc_losses(gpu, &function, run, first, count, &exposure, &mut losses)
            .expect("launch");
        let host = stream.clone_dtoh(&losses).expect("copy");
        reduce_blocks(blocks, keep, |block, buffer| {
            let range = run.block_range(block);
            buffer.extend_from_slice(
                &host[(range.start - first) as usize..(range.end - first) as usize],
            );
        })
    }

    /// Issue 19 point 10: the tail reduced on the device equals, bit for
    /// bit, every loss copied and reduced on the host, for tails smaller
    /// than a chunk (few losses cross), larger (whole chunks), none, and
    /// losses all equal (zero weights: no cut separates them).
    #[test]
    fn the_device_reduction_gives_the_host_reduction_bits() {
        let gpu = Gpu::open(0, crate::SOURCES, None).expect("GPU 0");
        assert!(gpu.has("risk"), "{:?}", gpu.disabled);
        let n = 5;
        let weights: Vec<f64> = (0..n).map(|i| 1_000.0 * (i as f64 + 1.0)).collect();
        let mu = vec![0.0005; n];
        let cov: Vec<f64> = (0..n * n)
            .map(|ij| if ij / n == ij % n { 4e-4 } else { 1e-4 })
            .collect();
        let scenarios = 3 * GPU_CHUNK_BLOCKS * BLOCK + 777;
        let run = MonteCarlo::new(&weights, &mu, &cov, scenarios, 5).unwrap();
        let all = 0..block_count(scenarios);
        for (blocks, keep) in [
            (all.clone(), 20_000),
            (all.clone(), 1),
            (all.clone(), 3_000_000),
            (all.clone(), 0),
            (3..block_count(scenarios), 50_000),
        ] {
            let (tail, traffic) =
                monte_carlo_gpu_traffic(&gpu, &run, blocks.clone(), keep).unwrap();
            let want = monte_carlo_host_reduced(&gpu, &run, blocks.clone(), keep);
            let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&tail.top), bits(&want.top), "{blocks:?} keep {keep}");
            assert_eq!(bits(&tail.block_sums), bits(&want.block_sums), "{blocks:?}");
            assert_eq!(traffic.check_failures, 0, "{traffic:?}");
            if keep <= 50_000 {
                assert!(
                    traffic.copied <= traffic.losses / 10,
                    "keep {keep}: {traffic:?}"
                );
            }
        }
        let flat = MonteCarlo::new(
            &[0.0; 3],
            &[0.0; 3],
            &[1e-4, 0.0, 0.0, 0.0, 1e-4, 0.0, 0.0, 0.0, 1e-4],
            100_000,
            1,
        )
        .unwrap();
        let blocks = 0..block_count(100_000);
        let (tail, traffic) = monte_carlo_gpu_traffic(&gpu, &flat, blocks.clone(), 500).unwrap();
        assert_eq!(tail, monte_carlo_host_reduced(&gpu, &flat, blocks, 500));
        assert_eq!(traffic.check_failures, 0, "{traffic:?}");
    }

    #[test]
    fn gpu_agrees_with_the_cpu() {
        let gpu = Gpu::open(0, crate::SOURCES, None).expect("GPU 0");
        assert!(gpu.has("risk"), "{:?}", gpu.disabled);
        // 7 assets: a partial last draw block. More than one GPU chunk.
        let n = 7;
        let weights: Vec<f64> = (0..n).map(|i| 100.0 * (i as f64 - 2.5)).collect();
        let mu: Vec<f64> = (0..n).map(|i| 0.001 * i as f64).collect();
        let cov: Vec<f64> = (0..n * n)
            .map(|ij| {
                let (i, j) = (ij / n, ij % n);
                let rho = if i == j { 1.0 } else { 0.25 };
                rho * 0.01 * (1.0 + 0.1 * i as f64) * (1.0 + 0.1 * j as f64) * 0.01
            })
            .collect();
        let scenarios = GPU_CHUNK_BLOCKS * BLOCK + 12_345;
        let run = MonteCarlo::new(&weights, &mu, &cov, scenarios, 77).unwrap();
        let blocks = 1..block_count(scenarios);
        let keep = 50_000;
        let cpu = monte_carlo_cpu(&run, blocks.clone(), keep);
        let gpu_tail = monte_carlo_gpu(&gpu, &run, blocks, keep).unwrap();
        assert_eq!(cpu.block_sums.len(), gpu_tail.block_sums.len());
        for k in [1, 100, keep] {
            let (a, b) = (cpu.var_cvar(k).unwrap(), gpu_tail.var_cvar(k).unwrap());
            assert!(close(a.0, b.0) && close(a.1, b.1), "k {k}: {a:?} vs {b:?}");
        }
        let (a, b) = (cpu.mean(scenarios), gpu_tail.mean(scenarios));
        assert!((a - b).abs() < 1e-6 * 1_000.0, "{a} vs {b}");

        let returns: Vec<f64> = (0..20_000 * 5)
            .map(|i| ((i * 7919) % 2003) as f64 / 1e4 - 0.1)
            .collect();
        let hist = Historical {
            weights: &[1.0, -2.0, 3.0, 0.5, 7.0],
            returns: &returns,
        };
        let blocks = 1..block_count(hist.rows());
        assert_eq!(
            historical_cpu(&hist, blocks.clone(), 900),
            historical_gpu(&gpu, &hist, blocks, 900).unwrap()
        );
        // 37 assets: several products per lane and a partial last chunk;
        // bit for bit too.
        let n = 37;
        let weights: Vec<f64> = (0..n).map(|i| 50.0 * (i as f64 - 17.5)).collect();
        let returns: Vec<f64> = (0..9_000 * n)
            .map(|i| ((i * 7919) % 2003) as f64 / 1e4 - 0.1003)
            .collect();
        let hist = Historical {
            weights: &weights,
            returns: &returns,
        };
        let blocks = 0..block_count(hist.rows());
        assert_eq!(
            historical_cpu(&hist, blocks.clone(), 450),
            historical_gpu(&gpu, &hist, blocks.clone(), 450).unwrap()
        );
        // More rows than a chunk, a tail of 1 % and one larger than a chunk:
        // the device reduction equals the CPU twin bit for bit.
        let rows = 2 * GPU_CHUNK_BLOCKS as usize * BLOCK as usize + 999;
        let returns: Vec<f64> = (0..rows * 3)
            .map(|i| ((i * 7919) % 20_011) as f64 / 1e5 - 0.1)
            .collect();
        let hist = Historical {
            weights: &[1.0, -2.0, 3.0],
            returns: &returns,
        };
        let blocks = 0..block_count(hist.rows());
        for keep in [rows / 100, 3 * rows / 4] {
            let (tail, traffic) =
                historical_gpu_traffic(&gpu, &hist, blocks.clone(), keep).unwrap();
            assert_eq!(
                historical_cpu(&hist, blocks.clone(), keep),
                tail,
                "keep {keep}"
            );
            assert_eq!(traffic.check_failures, 0, "{traffic:?}");
        }
    }
}
