//! Monte Carlo pricing under geometric Brownian motion: European, Asian
//! arithmetic and Asian geometric calls, the terminal price distribution.
//!
//! Each path walks the log-price in f32, on the CPU and the GPU alike:
//! `x += (r - q - sigma^2/2) dt + sigma sqrt(dt) z`, with `z` from Philox
//! (stream = the path's index, draw block = step / 4, key = the seed) through
//! [`philox::normal_pair`], so a path depends only on (seed, index). The
//! payoffs go to f64 for the sums.
//!
//! Paths are grouped in fixed blocks of [`BLOCK_PATHS`]. Each block yields
//! its f64 sums ([`BlockSums`], summed in a fixed order within the block);
//! the terminal log-prices go into a fixed histogram of integer counts
//! ([`HISTOGRAM_BINS`] bins over the mean log-price +- 8 sigma sqrt(t), plus
//! underflow and overflow), so any range of blocks computed anywhere merges
//! exactly: block sums are added in block order ([`summarize`]), counts
//! simply add. A split run equals the whole run bit for bit, whatever the
//! number of threads.
//!
//! Percentiles come from the histogram, interpolated linearly in log-price
//! within a bin: they are exact to within one bin, a log-price width of
//! `16 sigma sqrt(t) / 4096 = sigma sqrt(t) / 256` (about 0.08% of the price
//! at sigma sqrt(t) = 0.2). A level that falls in the underflow or overflow
//! count reports the edge of the histogram.
//!
//! The GPU runs one thread per path and reduces each 4096-path block in a
//! fixed order: 1024 lanes of four paths each (path = block * 4096 + k *
//! 1024 + lane), then warp-shuffle trees (see [`run_gpu`]); it counts the
//! histogram with integer atomics. Its prices agree with the CPU
//! twin's within a relative 1e-4: the f32 path math differs by ulps (CUDA's
//! `logf`, `sincospif` and `expf` against the host's polynomials, see
//! [`philox::normal_pair`] and `exp_f32`). The CPU walks [`philox::LANES`]
//! paths at a time, one per lane, so that the generator and the path math
//! vectorise; each path still sees its own operations in order.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;

use crate::driver::DeviceError;
use crate::philox;
use crate::runtime::{Gpu, Source};

pub const SOURCE: Source = Source {
    module: "monte_carlo",
    code: include_str!("../cuda/monte_carlo.cu"),
    kernels: &["gbm_paths", "gbm_block_sums"],
};

/// Paths per block, the unit of merging (and of splitting).
pub const BLOCK_PATHS: u64 = 4096;
/// Bins of the terminal log-price histogram, besides underflow and overflow.
pub const HISTOGRAM_BINS: usize = 4096;
/// Counts in a histogram: underflow, the bins, overflow.
pub const HISTOGRAM_LEN: usize = HISTOGRAM_BINS + 2;
/// Half the width of the histogram, in standard deviations of the terminal
/// log-price.
const HISTOGRAM_HALF_WIDTH: f64 = 8.0;
/// The lanes of a 4096-path block's fixed reduction (`MC_LANES` in the
/// CUDA source): lane l adds paths l, l + 1024, l + 2048, l + 3072.
const GPU_LANES: u32 = 1024;
/// Paths per lane.
const GPU_PATHS_PER_LANE: u32 = BLOCK_PATHS as u32 / GPU_LANES;
/// CUDA blocks per 4096-path block: one per warp of lanes (`MC_WARPS`).
pub const GPU_WARPS_PER_BLOCK: u32 = GPU_LANES / 32;
/// Threads per CUDA block of `gbm_paths`: one warp of lanes, one thread per
/// path (`MC_THREADS`).
pub const GPU_THREADS: u32 = 32 * GPU_PATHS_PER_LANE;
/// 4096-path blocks per pair of launches: bounds the warp-sum buffer
/// (9.4 MiB) and the grid (131 072 CUDA blocks).
const GPU_CHUNK_BLOCKS: u64 = 4096;
/// Blocks a CPU task computes before adding its histogram to the shared one.
const CPU_CHUNK_BLOCKS: u64 = 8;

/// The payoffs, in the order of [`BlockSums::payoff`].
pub const EUROPEAN_CALL: usize = 0;
pub const EUROPEAN_PUT: usize = 1;
pub const ASIAN_ARITHMETIC_CALL: usize = 2;
pub const ASIAN_GEOMETRIC_CALL: usize = 3;
const PAYOFFS: usize = 4;

/// One pricing run. The caller checks the bounds (positive prices,
/// volatility and maturity, finite numbers, at least one step and path).
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Spot price.
    pub s0: f64,
    pub strike: f64,
    /// Risk-free rate, continuously compounded, per year.
    pub rate: f64,
    /// Dividend yield, continuously compounded, per year.
    pub dividend: f64,
    /// Volatility, per square root of a year.
    pub sigma: f64,
    /// Maturity in years.
    pub maturity: f64,
    /// Time steps (monitoring dates of the Asian options) per path.
    pub steps: u32,
    pub paths: u64,
    pub seed: u64,
}

impl Config {
    /// Blocks of [`BLOCK_PATHS`] paths, the last one possibly partial.
    pub fn blocks(&self) -> u64 {
        self.paths.div_ceil(BLOCK_PATHS)
    }

    fn dt(&self) -> f64 {
        self.maturity / f64::from(self.steps)
    }

    /// The log-price drift per year under the risk-neutral measure.
    fn log_drift(&self) -> f64 {
        self.rate - self.dividend - 0.5 * self.sigma * self.sigma
    }

    /// The per-step constants of the f32 walk, shared by CPU and GPU.
    fn walk(&self) -> Walk {
        Walk {
            x0: self.s0.ln() as f32,
            drift: (self.log_drift() * self.dt()) as f32,
            vol: (self.sigma * self.dt().sqrt()) as f32,
            steps: self.steps,
        }
    }

    /// The histogram's lower edge and bin width, in log-price.
    pub fn histogram_range(&self) -> (f64, f64) {
        let center = self.s0.ln() + self.log_drift() * self.maturity;
        let half = HISTOGRAM_HALF_WIDTH * self.sigma * self.maturity.sqrt();
        (center - half, 2.0 * half / HISTOGRAM_BINS as f64)
    }

    fn discount(&self) -> f64 {
        (-self.rate * self.maturity).exp()
    }
}

/// The f64 sums of one block of paths (undiscounted).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BlockSums {
    /// Sum of each payoff (see [`EUROPEAN_CALL`] and the other indices).
    pub payoff: [f64; PAYOFFS],
    /// Sum of each payoff's square.
    pub payoff_sq: [f64; PAYOFFS],
    /// Sum of the terminal prices.
    pub terminal: f64,
}

impl BlockSums {
    /// The number of f64 values in [`BlockSums::to_array`].
    pub const LEN: usize = 2 * PAYOFFS + 1;

    /// The sums as the GPU writes them: payoffs, squares, terminal.
    pub fn to_array(&self) -> [f64; Self::LEN] {
        let mut out = [0.0; Self::LEN];
        out[..PAYOFFS].copy_from_slice(&self.payoff);
        out[PAYOFFS..2 * PAYOFFS].copy_from_slice(&self.payoff_sq);
        out[2 * PAYOFFS] = self.terminal;
        out
    }

    pub fn from_array(values: &[f64; Self::LEN]) -> Self {
        let mut sums = Self::default();
        sums.payoff.copy_from_slice(&values[..PAYOFFS]);
        sums.payoff_sq
            .copy_from_slice(&values[PAYOFFS..2 * PAYOFFS]);
        sums.terminal = values[2 * PAYOFFS];
        sums
    }

    fn add(&mut self, other: &BlockSums) {
        for k in 0..PAYOFFS {
            self.payoff[k] += other.payoff[k];
            self.payoff_sq[k] += other.payoff_sq[k];
        }
        self.terminal += other.terminal;
    }
}

/// What a range of blocks yields: one [`BlockSums`] per block, in block
/// order, and the histogram counts of all its paths.
#[derive(Debug, Clone, PartialEq)]
pub struct Blocks {
    pub sums: Vec<BlockSums>,
    /// [`HISTOGRAM_LEN`] counts: underflow, bins, overflow.
    pub histogram: Vec<u64>,
}

/// A price and its Monte Carlo standard error.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    pub price: f64,
    pub std_error: f64,
}

/// The result of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub european_call: Estimate,
    pub european_put: Estimate,
    pub asian_arithmetic_call: Estimate,
    pub asian_geometric_call: Estimate,
    /// The mean terminal price (undiscounted).
    pub mean_terminal_price: f64,
    /// The terminal price at each requested level, in the same order.
    pub percentiles: Vec<f64>,
    pub paths: u64,
}

/// The f32 walk of one path.
#[derive(Debug, Clone, Copy)]
struct Walk {
    x0: f32,
    drift: f32,
    vol: f32,
    steps: u32,
}

/// Paths walked together, one per lane.
const LANES: usize = philox::LANES;

/// `e^x` in f32 within about one ulp (Cephes' `expf` reduction, a minimax
/// polynomial), without branches so that it vectorises. Overflows to
/// infinity above about 88.7, as `expf` does.
#[inline(always)]
fn exp_f32(x: f32) -> f32 {
    // Adding 1.5 * 2^23 rounds to an integer, left in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-104.0, 89.0);
    let big = x * std::f32::consts::LOG2_E + ROUND;
    let n = big - ROUND;
    let ni = big.to_bits() as i32 - ROUND.to_bits() as i32;
    // ln 2 = 0.693359375 - 2.12194440e-4, the first part exact in few bits.
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let p = 0.499_999_94
        + r * (0.166_665_21 + r * (0.041_668_39 + r * (0.008_368_71 + r * 0.001_381_461_3)));
    let p = 1.0 + r + r * r * p;
    // 2^n in two factors, each a normal float for n in [-150, 128].
    let n1 = ni >> 1;
    let n2 = ni - n1;
    let two = |k: i32| f32::from_bits(((k + 127) as u32) << 23);
    p * two(n1) * two(n2)
}

/// What [`LANES`] paths leave: their terminal log-prices and prices, and
/// the f32 sums of their prices and log-prices over the monitoring dates.
struct PathEnds {
    x: [f32; LANES],
    terminal: [f32; LANES],
    sum_price: [f32; LANES],
    sum_log: [f32; LANES],
}

/// Walks paths `first..first + LANES`, each in its lane: every path sees
/// the same operations in the same order as alone (and as on the GPU).
#[inline(always)]
fn simulate(walk: Walk, key: [u32; 2], first: u64) -> PathEnds {
    let mut x = [walk.x0; LANES];
    let mut sum_price = [0.0f32; LANES];
    let mut sum_log = [0.0f32; LANES];
    let mut step = 0u32;
    while step < walk.steps {
        let words = philox::philox4x32_10_lanes(first, u64::from(step / 4), key);
        let left = (walk.steps - step).min(4) as usize;
        // The second pair is drawn only when needed (one-step paths are a
        // common case); the GPU skips it the same way.
        let z = philox::normals_lanes(&words, if left > 2 { 2 } else { 1 });
        for z in &z[..left] {
            for l in 0..LANES {
                x[l] += walk.drift + walk.vol * z[l];
                sum_log[l] += x[l];
                sum_price[l] += exp_f32(x[l]);
            }
        }
        step += 4;
    }
    PathEnds {
        x,
        terminal: x.map(exp_f32),
        sum_price,
        sum_log,
    }
}

/// The histogram slot of a terminal log-price: 0 underflow, `1..=BINS`
/// the bins, `BINS + 1` overflow.
fn slot(x: f32, lower: f64, inv_width: f64) -> usize {
    let position = (f64::from(x) - lower) * inv_width;
    if position.is_nan() || position < 0.0 {
        0
    } else if position >= HISTOGRAM_BINS as f64 {
        HISTOGRAM_BINS + 1
    } else {
        1 + position as usize
    }
}

/// Computes one block's sums, adding its terminal prices to `histogram`.
fn cpu_block(config: &Config, block: u64, histogram: &mut [u64]) -> BlockSums {
    cpu_block_on(philox::simd(), config, block, histogram)
}

/// [`cpu_block`] in the build `simd`, which the CPU must run.
fn cpu_block_on(
    simd: philox::Simd,
    config: &Config,
    block: u64,
    histogram: &mut [u64],
) -> BlockSums {
    match simd {
        // SAFETY: `simd` comes from `philox::simd`, so the CPU has the
        // features these builds enable.
        #[cfg(target_arch = "x86_64")]
        #[allow(unsafe_code)]
        philox::Simd::Avx512 => unsafe { cpu_block_avx512(config, block, histogram) },
        #[cfg(target_arch = "x86_64")]
        #[allow(unsafe_code)]
        philox::Simd::Avx2 => unsafe { cpu_block_avx2(config, block, histogram) },
        _ => cpu_block_portable(config, block, histogram),
    }
}

/// [`cpu_block`] built for AVX2: the same operations, so the same bits.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn cpu_block_avx2(config: &Config, block: u64, histogram: &mut [u64]) -> BlockSums {
    cpu_block_portable(config, block, histogram)
}

/// [`cpu_block`] built for AVX-512: the same operations, so the same bits.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avx512f,avx512vl,avx512dq,avx512bw")]
fn cpu_block_avx512(config: &Config, block: u64, histogram: &mut [u64]) -> BlockSums {
    cpu_block_portable(config, block, histogram)
}

#[inline(always)]
fn cpu_block_portable(config: &Config, block: u64, histogram: &mut [u64]) -> BlockSums {
    let walk = config.walk();
    let key = philox::key(config.seed);
    let (lower, width) = config.histogram_range();
    let inv_width = 1.0 / width;
    let steps = f64::from(config.steps);
    let mut sums = BlockSums::default();
    let first = block * BLOCK_PATHS;
    let end = (first + BLOCK_PATHS).min(config.paths);
    let mut path = first;
    while path < end {
        let ends = simulate(walk, key, path);
        // The paths of a partial last group past `end` are dropped.
        for l in 0..(end - path).min(LANES as u64) as usize {
            let terminal = f64::from(ends.terminal[l]);
            let average = f64::from(ends.sum_price[l]) / steps;
            let geometric = (f64::from(ends.sum_log[l]) / steps).exp();
            let payoffs = [
                (terminal - config.strike).max(0.0),
                (config.strike - terminal).max(0.0),
                (average - config.strike).max(0.0),
                (geometric - config.strike).max(0.0),
            ];
            for (k, payoff) in payoffs.into_iter().enumerate() {
                sums.payoff[k] += payoff;
                sums.payoff_sq[k] += payoff * payoff;
            }
            sums.terminal += terminal;
            histogram[slot(ends.x[l], lower, inv_width)] += 1;
        }
        path += LANES as u64;
    }
    sums
}

/// The CPU twin: the sums and histogram of `blocks`, on rayon's pool.
pub fn run_cpu(config: &Config, blocks: Range<u64>) -> Blocks {
    let histogram: Vec<AtomicU64> = (0..HISTOGRAM_LEN).map(|_| AtomicU64::new(0)).collect();
    let chunks: Vec<Range<u64>> = blocks
        .clone()
        .step_by(CPU_CHUNK_BLOCKS as usize)
        .map(|start| start..(start + CPU_CHUNK_BLOCKS).min(blocks.end))
        .collect();
    let sums: Vec<Vec<BlockSums>> = chunks
        .into_par_iter()
        .map(|chunk| {
            let mut local = vec![0u64; HISTOGRAM_LEN];
            let sums = chunk
                .map(|block| cpu_block(config, block, &mut local))
                .collect();
            // Integer counts add exactly in any order.
            for (total, count) in histogram.iter().zip(local) {
                if count != 0 {
                    total.fetch_add(count, Ordering::Relaxed);
                }
            }
            sums
        })
        .collect();
    Blocks {
        sums: sums.into_iter().flatten().collect(),
        histogram: histogram.into_iter().map(AtomicU64::into_inner).collect(),
    }
}

/// The GPU path: the same sums and histogram as [`run_cpu`], within the
/// module's tolerance.
///
/// `gbm_paths` runs one thread per path, [`GPU_THREADS`] per CUDA block and
/// [`GPU_WARPS_PER_BLOCK`] CUDA blocks per 4096-path block, and writes one
/// set of sums per warp of lanes; `gbm_block_sums` adds each block's warp
/// sums. The order of the additions is the one of a block of 1024 threads
/// of four paths each (the CUDA source says which), so the bits do not
/// depend on the launch shape. One path per thread keeps the last wave
/// short: on a 60-SM RTX 4070 Ti, 1M paths were 245 blocks of 1024 threads,
/// one resident per SM, so 5 waves with the fifth 8 % full (82 % of the
/// SMs' time used); they are now 7 840 blocks of 128 threads, 10 resident
/// per SM (44 registers a thread, ptxas for sm_89), 14 waves, 93 % used
/// (see [`crate::runtime::waves`]; `bench_monte_carlo` prints the
/// driver's occupancy and the waves on the device it runs on).
pub fn run_gpu(gpu: &Gpu, config: &Config, blocks: Range<u64>) -> Result<Blocks, DeviceError> {
    use cudarc::driver::{LaunchConfig, PushKernelArg};
    let n_blocks = blocks.end.saturating_sub(blocks.start);
    if n_blocks == 0 {
        return Ok(Blocks {
            sums: Vec::new(),
            histogram: vec![0; HISTOGRAM_LEN],
        });
    }
    let walk = config.walk();
    let (lower, width) = config.histogram_range();
    let inv_width = 1.0 / width;
    let stream = gpu.stream();
    let paths = gpu.function(SOURCE.module, "gbm_paths")?;
    let block_sums = gpu.function(SOURCE.module, "gbm_block_sums")?;
    let chunk_blocks = n_blocks.min(GPU_CHUNK_BLOCKS);
    let warps_per_block = u64::from(GPU_WARPS_PER_BLOCK);
    let mut warp_sums =
        stream.alloc_zeros::<f64>((chunk_blocks * warps_per_block) as usize * BlockSums::LEN)?;
    let mut sums = stream.alloc_zeros::<f64>(n_blocks as usize * BlockSums::LEN)?;
    let mut histogram = stream.alloc_zeros::<u64>(HISTOGRAM_LEN)?;
    let timer = gpu.kernel_timer()?;
    let mut first = blocks.start;
    while first < blocks.end {
        let count = (blocks.end - first).min(GPU_CHUNK_BLOCKS);
        // At most GPU_CHUNK_BLOCKS x 32 CUDA blocks: far below 2^31.
        let grid = (count * warps_per_block) as u32;
        let mut launch = stream.launch_builder(&paths);
        launch
            .arg(&config.seed)
            .arg(&config.paths)
            .arg(&first)
            .arg(&walk.steps)
            .arg(&walk.x0)
            .arg(&walk.drift)
            .arg(&walk.vol)
            .arg(&config.strike)
            .arg(&lower)
            .arg(&inv_width)
            .arg(&mut warp_sums)
            .arg(&mut histogram);
        let launch_config = LaunchConfig {
            grid_dim: (grid, 1, 1),
            block_dim: (GPU_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the arguments match `gbm_paths(u64, u64, u64, u32, f32,
        // f32, f32, f64, f64, f64, double*, u64*)`; `warp_sums` holds 9
        // values for each of the `grid` CUDA blocks (grid <= chunk_blocks x
        // 32) and `histogram` HISTOGRAM_LEN counts; blocks of GPU_THREADS,
        // the kernel's MC_THREADS.
        #[allow(unsafe_code)]
        unsafe {
            launch.launch(launch_config)?;
        }
        let offset = ((first - blocks.start) as usize) * BlockSums::LEN;
        let mut out = sums.slice_mut(offset..offset + count as usize * BlockSums::LEN);
        let count32 = count as u32;
        let mut launch = stream.launch_builder(&block_sums);
        launch.arg(&count32).arg(&warp_sums).arg(&mut out);
        // One warp per 4096-path block, 8 warps per CUDA block.
        let launch_config = LaunchConfig {
            grid_dim: (count32.div_ceil(8), 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the arguments match `gbm_block_sums(u32, const double*,
        // double*)`; `warp_sums` holds count x 32 x 9 values written by the
        // launch before on the same stream, `out` count x 9.
        #[allow(unsafe_code)]
        unsafe {
            launch.launch(launch_config)?;
        }
        first += count;
    }
    timer.finish()?;
    let histogram: Vec<u64> = stream.clone_dtoh(&histogram)?;
    // 72 bytes per 4096 paths (18 MB at the 10^9-path limit), through the
    // GPU's page-locked staging buffer.
    let sums = gpu.read_back(&sums, |flat| {
        flat.chunks_exact(BlockSums::LEN)
            .map(|chunk| {
                let mut values = [0.0; BlockSums::LEN];
                values.copy_from_slice(chunk);
                BlockSums::from_array(&values)
            })
            .collect()
    })?;
    Ok(Blocks { sums, histogram })
}

/// Device memory [`run_gpu`] allocates for `blocks` blocks, in bytes: the
/// sums of each block, the warp sums of one chunk, the histogram.
pub fn gpu_memory(blocks: u64) -> u64 {
    let warp_sums = blocks.min(GPU_CHUNK_BLOCKS) * u64::from(GPU_WARPS_PER_BLOCK);
    (blocks + warp_sums) * BlockSums::LEN as u64 * 8 + HISTOGRAM_LEN as u64 * 8
}

/// Prices and percentiles from every block's sums, given in block order,
/// and the histogram of every path. `levels` are percentiles in (0, 100).
pub fn summarize(
    config: &Config,
    sums: &[BlockSums],
    histogram: &[u64],
    levels: &[f64],
) -> Summary {
    let mut total = BlockSums::default();
    for block in sums {
        total.add(block);
    }
    let n = config.paths as f64;
    let discount = config.discount();
    let estimate = |k: usize| {
        let mean = total.payoff[k] / n;
        let std_error = if config.paths > 1 {
            let variance = ((total.payoff_sq[k] - total.payoff[k] * mean) / (n - 1.0)).max(0.0);
            discount * (variance / n).sqrt()
        } else {
            0.0
        };
        Estimate {
            price: discount * mean,
            std_error,
        }
    };
    Summary {
        european_call: estimate(EUROPEAN_CALL),
        european_put: estimate(EUROPEAN_PUT),
        asian_arithmetic_call: estimate(ASIAN_ARITHMETIC_CALL),
        asian_geometric_call: estimate(ASIAN_GEOMETRIC_CALL),
        mean_terminal_price: total.terminal / n,
        percentiles: levels
            .iter()
            .map(|&level| percentile(config, histogram, level))
            .collect(),
        paths: config.paths,
    }
}

/// The price at `level` percent of the histogram's paths, interpolated
/// linearly in log-price within its bin.
fn percentile(config: &Config, histogram: &[u64], level: f64) -> f64 {
    let (lower, width) = config.histogram_range();
    let total: u64 = histogram.iter().sum();
    let rank = level / 100.0 * total as f64;
    let mut below = 0u64;
    for (index, &count) in histogram.iter().enumerate() {
        if count > 0 && (below + count) as f64 >= rank {
            return match index {
                0 => lower.exp(),
                i if i > HISTOGRAM_BINS => (lower + HISTOGRAM_BINS as f64 * width).exp(),
                i => {
                    let fraction = ((rank - below as f64) / count as f64).clamp(0.0, 1.0);
                    (lower + ((i - 1) as f64 + fraction) * width).exp()
                }
            };
        }
        below += count;
    }
    (lower + HISTOGRAM_BINS as f64 * width).exp()
}

/// A whole run on the CPU.
pub fn price_cpu(config: &Config, levels: &[f64]) -> Summary {
    let blocks = run_cpu(config, 0..config.blocks());
    summarize(config, &blocks.sums, &blocks.histogram, levels)
}

/// A whole run on the GPU.
pub fn price_gpu(gpu: &Gpu, config: &Config, levels: &[f64]) -> Result<Summary, DeviceError> {
    let blocks = run_gpu(gpu, config, 0..config.blocks())?;
    Ok(summarize(config, &blocks.sums, &blocks.histogram, levels))
}

#[cfg(test)]
pub(crate) mod testutil {
    use super::Config;

    pub fn config(paths: u64, steps: u32) -> Config {
        Config {
            s0: 100.0,
            strike: 105.0,
            rate: 0.03,
            dividend: 0.01,
            sigma: 0.25,
            maturity: 1.0,
            steps,
            paths,
            seed: 0x5eed_1234,
        }
    }

    /// The standard normal distribution function, through the Numerical
    /// Recipes `erfc` (relative error below 1.2e-7, ample for 3-SE checks).
    pub fn norm_cdf(x: f64) -> f64 {
        let z = x.abs() / std::f64::consts::SQRT_2;
        let t = 1.0 / (1.0 + 0.5 * z);
        let erfc = t
            * (-z * z - 1.265_512_23
                + t * (1.000_023_68
                    + t * (0.374_091_96
                        + t * (0.096_784_18
                            + t * (-0.186_288_06
                                + t * (0.278_868_07
                                    + t * (-1.135_203_98
                                        + t * (1.488_515_87
                                            + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
                .exp();
        if x >= 0.0 {
            1.0 - 0.5 * erfc
        } else {
            0.5 * erfc
        }
    }

    /// Black-Scholes call on a lognormal `ln S ~ N(mean, var)` discounted at
    /// `discount`: `discount * (E[S] N(d1) - K N(d2))`.
    pub fn lognormal_call(mean: f64, var: f64, strike: f64, discount: f64) -> f64 {
        let sd = var.sqrt();
        let d2 = (mean - strike.ln()) / sd;
        let d1 = d2 + sd;
        discount * ((mean + 0.5 * var).exp() * norm_cdf(d1) - strike * norm_cdf(d2))
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;
    use crate::test_device::{Device, test_device};

    #[test]
    fn european_call_matches_black_scholes_and_parity_holds() {
        for steps in [1, 12] {
            let c = config(200_000, steps);
            let out = price_cpu(&c, &[]);
            let t = c.maturity;
            let bs = lognormal_call(
                c.s0.ln() + c.log_drift() * t,
                c.sigma * c.sigma * t,
                c.strike,
                c.discount(),
            );
            let call = out.european_call;
            assert!(
                (call.price - bs).abs() < 3.0 * call.std_error,
                "{steps} steps: MC {call:?}, Black-Scholes {bs}"
            );
            // Put-call parity, path by path: C - P = e^{-rt} (mean S_T - K).
            let put = out.european_put;
            let pathwise = c.discount() * (out.mean_terminal_price - c.strike);
            assert!(
                (call.price - put.price - pathwise).abs() < 1e-9 * c.s0,
                "{call:?} {put:?} {pathwise}"
            );
            // And against the forward: the sampling error of C - P is at
            // most the sum of the two errors.
            let forward = c.s0 * (-c.dividend * t).exp() - c.strike * c.discount();
            assert!(
                (call.price - put.price - forward).abs() < 3.0 * (call.std_error + put.std_error),
                "{call:?} {put:?} {forward}"
            );
        }
    }

    #[test]
    fn geometric_asian_matches_the_discrete_closed_form() {
        let c = config(40_000, 50);
        let out = price_cpu(&c, &[]);
        // ln G = ln s0 + nu dt (n+1)/2 + sigma/n sum W(t_i), with variance
        // sigma^2 dt (n+1)(2n+1)/(6n) over the monitoring dates t_i = i dt.
        let n = f64::from(c.steps);
        let dt = c.dt();
        let mean = c.s0.ln() + c.log_drift() * dt * (n + 1.0) / 2.0;
        let var = c.sigma * c.sigma * dt * (n + 1.0) * (2.0 * n + 1.0) / (6.0 * n);
        let exact = lognormal_call(mean, var, c.strike, c.discount());
        let geo = out.asian_geometric_call;
        assert!(
            (geo.price - exact).abs() < 3.0 * geo.std_error,
            "MC {geo:?}, closed form {exact}"
        );
        // The arithmetic average dominates the geometric one path by path.
        assert!(out.asian_arithmetic_call.price >= geo.price);
    }

    #[test]
    fn percentiles_match_lognormal_quantiles() {
        let c = config(200_000, 1);
        // (level, standard normal quantile)
        let levels: [(f64, f64); 7] = [
            (1.0, -2.326_347_874_040_841),
            (5.0, -1.644_853_626_951_472),
            (25.0, -0.674_489_750_196_082),
            (50.0, 0.0),
            (75.0, 0.674_489_750_196_082),
            (95.0, 1.644_853_626_951_472),
            (99.0, 2.326_347_874_040_841),
        ];
        let out = price_cpu(&c, &levels.map(|(level, _)| level));
        let (_, width) = c.histogram_range();
        let sd = c.sigma * c.maturity.sqrt();
        let mean = c.s0.ln() + c.log_drift() * c.maturity;
        for ((level, z), got) in levels.iter().zip(&out.percentiles) {
            let p = level / 100.0;
            let density = (-0.5 * z * z).exp() / (2.0 * std::f64::consts::PI).sqrt();
            // The sample quantile's standard deviation, in log-price.
            let sampling = sd * (p * (1.0 - p) / c.paths as f64).sqrt() / density;
            let error = (got.ln() - (mean + sd * z)).abs();
            assert!(
                error < width + 4.0 * sampling,
                "level {level}: {got}, error {error} in log-price"
            );
        }
    }

    #[test]
    fn same_seed_same_bits_other_seed_other_bits() {
        let c = config(10_000, 5);
        let a = price_cpu(&c, &[50.0]);
        assert_eq!(a, price_cpu(&c, &[50.0]));
        let other = Config { seed: 7, ..c };
        assert_ne!(a.european_call, price_cpu(&other, &[50.0]).european_call);
    }

    #[test]
    fn thread_counts_do_not_change_the_bits() {
        let c = config(100_000, 3);
        let run = |threads| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| run_cpu(&c, 0..c.blocks()))
        };
        assert_eq!(run(1), run(4));
    }

    /// `blocks` of `c`, run on `device`.
    fn run_on(device: &Device, c: &Config, blocks: Range<u64>) -> Blocks {
        match device {
            Device::Cpu => run_cpu(c, blocks),
            #[cfg(feature = "gpu-tests")]
            Device::Gpu(gpu) => run_gpu(gpu, c, blocks).expect("GPU run"),
        }
    }

    /// On every device a run repeats bit for bit, its histogram counts
    /// every path, and block ranges cut anywhere concatenate to the whole
    /// run: the sums in block order, the histograms added, the same
    /// summary.
    fn block_ranges_repeat_and_concatenate_to_the_whole(device: &Device) {
        // (paths, steps, blocks, cut): the last block partial, then one
        // path in the last block.
        for (paths, steps, blocks, cut) in [
            (9 * BLOCK_PATHS + 123, 2, 10, 3),
            (20 * BLOCK_PATHS + 5, 10, 21, 7),
        ] {
            let c = config(paths, steps);
            let whole = run_on(device, &c, 0..c.blocks());
            assert_eq!(whole, run_on(device, &c, 0..c.blocks()));
            assert_eq!(whole.sums.len(), blocks);
            assert_eq!(whole.histogram.iter().sum::<u64>(), c.paths);
            let first = run_on(device, &c, 0..cut);
            let second = run_on(device, &c, cut..c.blocks());
            let sums: Vec<_> = first.sums.iter().chain(&second.sums).copied().collect();
            assert_eq!(sums, whole.sums);
            let histogram: Vec<u64> = first
                .histogram
                .iter()
                .zip(&second.histogram)
                .map(|(a, b)| a + b)
                .collect();
            assert_eq!(histogram, whole.histogram);
            let levels = [10.0, 90.0];
            assert_eq!(
                summarize(&c, &sums, &histogram, &levels),
                summarize(&c, &whole.sums, &whole.histogram, &levels)
            );
        }
    }

    test_device!(
        block_ranges_repeat_and_concatenate_to_the_whole,
        block_ranges_repeat_and_concatenate_to_the_whole_cpu,
        block_ranges_repeat_and_concatenate_to_the_whole_gpu
    );

    #[test]
    fn block_sums_round_trip_through_arrays() {
        let sums = BlockSums {
            payoff: [1.0, 2.0, 3.0, 4.0],
            payoff_sq: [5.0, 6.0, 7.0, 8.0],
            terminal: 9.0,
        };
        assert_eq!(BlockSums::from_array(&sums.to_array()), sums);
    }

    #[test]
    fn one_path_has_no_standard_error() {
        let out = price_cpu(&config(1, 3), &[50.0]);
        assert_eq!(out.paths, 1);
        assert_eq!(out.european_call.std_error, 0.0);
        assert!(out.percentiles[0].is_finite());
    }

    #[test]
    fn exp_is_within_an_ulp_or_two() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = f64::from(x).exp();
            let spacing = 2.0f64.powi(want.log2().floor() as i32 - 23);
            worst = worst.max((f64::from(exp_f32(x)) - want).abs() / spacing);
            x += 0.000_37;
        }
        assert!(worst <= 2.0, "{worst} ulp");
        assert_eq!(exp_f32(0.0), 1.0);
        assert_eq!(exp_f32(100.0), f32::INFINITY);
        assert_eq!(exp_f32(-200.0), 0.0);
    }

    #[test]
    fn every_simd_build_gives_the_portable_bits() {
        use philox::Simd;
        let builds = match philox::simd() {
            Simd::Avx512 => vec![Simd::Avx2, Simd::Avx512],
            Simd::Avx2 => vec![Simd::Avx2],
            Simd::Portable => vec![],
        };
        let c = config(BLOCK_PATHS + 21, 9);
        for block in 0..2 {
            let mut want = vec![0u64; HISTOGRAM_LEN];
            let sums = cpu_block_portable(&c, block, &mut want);
            for &simd in &builds {
                let mut got = vec![0u64; HISTOGRAM_LEN];
                assert_eq!(cpu_block_on(simd, &c, block, &mut got), sums, "{simd:?}");
                assert_eq!(got, want, "{simd:?}");
            }
        }
    }
}

#[cfg(all(test, feature = "gpu-tests"))]
mod gpu_tests {
    use super::testutil::config;
    use super::*;

    fn gpu() -> Gpu {
        let gpu = Gpu::open(0, crate::SOURCES, None).expect("GPU 0");
        assert!(gpu.disabled.is_empty(), "{:?}", gpu.disabled);
        gpu
    }

    fn close(a: f64, b: f64, relative: f64) -> bool {
        (a - b).abs() <= relative * a.abs().max(b.abs())
    }

    /// A run longer than one chunk of launches gives, block for block, the
    /// bits of the chunks run alone: the reduction of a 4096-path block
    /// does not depend on where its launch starts.
    #[test]
    fn chunks_of_launches_give_the_bits_of_one() {
        let gpu = gpu();
        let c = config(GPU_CHUNK_BLOCKS * BLOCK_PATHS + 3 * BLOCK_PATHS + 5, 1);
        let whole = run_gpu(&gpu, &c, 0..c.blocks()).unwrap();
        let head = run_gpu(&gpu, &c, 0..GPU_CHUNK_BLOCKS).unwrap();
        let tail = run_gpu(&gpu, &c, GPU_CHUNK_BLOCKS - 1..c.blocks()).unwrap();
        assert_eq!(whole.sums.len() as u64, c.blocks());
        assert_eq!(whole.sums[..head.sums.len()], head.sums[..]);
        assert_eq!(whole.sums[GPU_CHUNK_BLOCKS as usize - 1..], tail.sums[..]);
        let paths: u64 = whole.histogram.iter().sum();
        assert_eq!(paths, c.paths);
    }

    /// Prices agree within a relative 1e-4; percentiles within one bin.
    #[test]
    fn gpu_matches_the_cpu_twin() {
        let gpu = gpu();
        let levels = [5.0, 50.0, 95.0];
        for (paths, steps) in [(100_000, 1), (50_000, 63), (9 * BLOCK_PATHS + 77, 7)] {
            let c = config(paths, steps);
            let cpu = price_cpu(&c, &levels);
            let dev = price_gpu(&gpu, &c, &levels).unwrap();
            for (a, b) in [
                (cpu.european_call, dev.european_call),
                (cpu.european_put, dev.european_put),
                (cpu.asian_arithmetic_call, dev.asian_arithmetic_call),
                (cpu.asian_geometric_call, dev.asian_geometric_call),
            ] {
                assert!(
                    close(a.price, b.price, 1e-4),
                    "{paths}x{steps}: {a:?} {b:?}"
                );
                assert!(close(a.std_error, b.std_error, 1e-4), "{a:?} {b:?}");
            }
            assert!(close(
                cpu.mean_terminal_price,
                dev.mean_terminal_price,
                1e-4
            ));
            let (_, width) = c.histogram_range();
            for (a, b) in cpu.percentiles.iter().zip(&dev.percentiles) {
                assert!((a.ln() - b.ln()).abs() <= width, "{a} {b}");
            }
        }
    }
}
