//! Technical indicators over close prices: SMA, EMA, Wilder RSI, MACD and
//! Bollinger bands, in f64.
//!
//! Every indicator is a recurrence along one series, so the work is cut by
//! (series, indicator): the CPU twin runs one series per rayon task, the GPU
//! one lane per (indicator, series), a warp per indicator and group of 32
//! consecutive series. A lane's series is contiguous (the wire's layout,
//! concatenated), so the warp stages 8 steps of its 32 series at a time
//! through shared memory, loading and storing runs of 64 contiguous bytes
//! rather than 32 scattered values per instruction. A parallel scan would
//! change the order of the floating-point operations, so the recurrences
//! stay sequential: a request has as many independent chains as
//! (indicator, series) pairs. Both run the same single pass with the same
//! operations in the same order (the CUDA code multiplies with `__dmul_rn`
//! and compiles with `--fmad=false`, so no product is fused into an FMA), so
//! the GPU result is meant to equal the CPU twin bit for bit; the parity
//! test allows 1e-12 relative.
//!
//! Each output line has the length of its series; positions before the
//! indicator is defined hold NaN. Definitions and warm-up (NaN positions,
//! counted from the start of the series):
//!
//! | indicator | lines | definition | NaN positions |
//! |---|---|---|---|
//! | SMA(n) | value | mean of the last n closes | `0..n-1` |
//! | EMA(n) | value | alpha = 2/(n+1); seeded at n-1 with the SMA of the first n closes, then `alpha x + (1-alpha) ema` | `0..n-1` |
//! | RSI(n) | value | Wilder: first averages = simple means of the first n gains and losses (changes 1..=n), then `avg = (avg (n-1) + x)/n`; `100 - 100/(1 + gain/loss)`, 100 when the average loss is 0 (so a constant series reads 100) | `0..n` |
//! | MACD(f, s, g) | macd, signal, histogram | macd = EMA(f) - EMA(s); signal = EMA(g) of macd, seeded with the mean of its first g values; histogram = macd - signal | macd `0..s-1`, signal and histogram `0..s+g-2` |
//! | Bollinger(n, k) | middle, upper, lower | middle = SMA(n); upper/lower = middle ± k σ, σ the population standard deviation (divide by n) of the window | `0..n-1` |
//!
//! Window sums (SMA, Bollinger) roll forward by adding the newest and
//! removing the oldest close, and are recomputed from scratch every n steps
//! so rounding cannot drift along a long series; the window's sum of squared
//! deviations rolls with the exact update
//! `m2 += (new - old) ((new - mean') + (old - mean))` and is recomputed
//! (two-pass) at the same steps.

use rayon::prelude::*;

use crate::driver::DeviceError;
use crate::runtime::{Gpu, Source};

pub const SOURCE: Source = Source {
    module: "indicators",
    code: include_str!("../cuda/indicators.cu"),
    kernels: &["indicators_run"],
};

/// One indicator and its periods. Periods are at least 1; for MACD
/// `fast < slow`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Indicator {
    Sma {
        period: usize,
    },
    Ema {
        period: usize,
    },
    Rsi {
        period: usize,
    },
    Macd {
        fast: usize,
        slow: usize,
        signal: usize,
    },
    Bollinger {
        period: usize,
        k: f64,
    },
}

impl Indicator {
    /// How many output lines it has (see the module table for their order).
    pub fn lines(&self) -> usize {
        match self {
            Indicator::Macd { .. } | Indicator::Bollinger { .. } => 3,
            _ => 1,
        }
    }

    /// The kernel's code and integer parameters, as `indicators.cu` reads
    /// them.
    fn code(&self) -> [u32; 4] {
        let p = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
        match *self {
            Indicator::Sma { period } => [0, p(period), 0, 0],
            Indicator::Ema { period } => [1, p(period), 0, 0],
            Indicator::Rsi { period } => [2, p(period), 0, 0],
            Indicator::Macd { fast, slow, signal } => [3, p(fast), p(slow), p(signal)],
            Indicator::Bollinger { period, .. } => [4, p(period), 0, 0],
        }
    }
}

/// The lines of every indicator for one series: `[line][t]`, lines in the
/// order of `indicators`, each indicator's lines as in the module table.
pub type SeriesLines = Vec<Vec<f64>>;

/// Total lines of `indicators`.
pub fn total_lines(indicators: &[Indicator]) -> usize {
    indicators.iter().map(Indicator::lines).sum()
}

/// The CPU twin: every indicator of every series, one series per rayon
/// task (so the result does not depend on the thread count).
pub fn indicators_cpu(series: &[&[f64]], indicators: &[Indicator]) -> Vec<SeriesLines> {
    series
        .par_iter()
        .map(|closes| series_cpu(closes, indicators))
        .collect()
}

/// Every indicator of one series.
pub fn series_cpu(closes: &[f64], indicators: &[Indicator]) -> SeriesLines {
    let mut lines = vec![vec![f64::NAN; closes.len()]; total_lines(indicators)];
    let mut rest = lines.as_mut_slice();
    for indicator in indicators {
        let (mine, tail) = rest.split_at_mut(indicator.lines());
        rest = tail;
        match *indicator {
            Indicator::Sma { period } => sma(closes, period, &mut mine[0]),
            Indicator::Ema { period } => ema(closes, period, &mut mine[0]),
            Indicator::Rsi { period } => rsi(closes, period, &mut mine[0]),
            Indicator::Macd { fast, slow, signal } => {
                let [m, s, h] = mine else { unreachable!() };
                macd(closes, fast, slow, signal, m, s, h);
            }
            Indicator::Bollinger { period, k } => {
                let [mid, up, lo] = mine else { unreachable!() };
                bollinger(closes, period, k, mid, up, lo);
            }
        }
    }
    lines
}

/// The sum of `window`, left to right.
fn window_sum(window: &[f64]) -> f64 {
    let mut sum = 0.0;
    for &x in window {
        sum += x;
    }
    sum
}

/// Whether the window ending at `t` (period `n`) is one where the rolling
/// sums are recomputed from scratch: the first, then every n-th.
fn fresh_window(t: usize, n: usize) -> bool {
    (t + 1).is_multiple_of(n)
}

fn sma(x: &[f64], n: usize, out: &mut [f64]) {
    if n == 0 || n > x.len() {
        return;
    }
    let nf = n as f64;
    let mut sum = 0.0;
    for t in n - 1..x.len() {
        if fresh_window(t, n) {
            sum = window_sum(&x[t + 1 - n..=t]);
        } else {
            sum += x[t] - x[t - n];
        }
        out[t] = sum / nf;
    }
}

fn ema(x: &[f64], n: usize, out: &mut [f64]) {
    if n == 0 || n > x.len() {
        return;
    }
    let alpha = 2.0 / (n as f64 + 1.0);
    let beta = 1.0 - alpha;
    let mut e = window_sum(&x[..n]) / n as f64;
    out[n - 1] = e;
    for t in n..x.len() {
        e = alpha * x[t] + beta * e;
        out[t] = e;
    }
}

fn rsi_value(gain: f64, loss: f64) -> f64 {
    if loss == 0.0 {
        100.0
    } else {
        100.0 - 100.0 / (1.0 + gain / loss)
    }
}

fn rsi(x: &[f64], n: usize, out: &mut [f64]) {
    if n == 0 || n >= x.len() {
        return;
    }
    let nf = n as f64;
    let keep = (n - 1) as f64;
    let (mut gain, mut loss) = (0.0, 0.0);
    for t in 1..x.len() {
        let d = x[t] - x[t - 1];
        let g = if d > 0.0 { d } else { 0.0 };
        let l = if d < 0.0 { -d } else { 0.0 };
        if t < n {
            gain += g;
            loss += l;
            continue;
        }
        if t == n {
            gain = (gain + g) / nf;
            loss = (loss + l) / nf;
        } else {
            gain = (gain * keep + g) / nf;
            loss = (loss * keep + l) / nf;
        }
        out[t] = rsi_value(gain, loss);
    }
}

fn macd(
    x: &[f64],
    fast: usize,
    slow: usize,
    signal: usize,
    out_macd: &mut [f64],
    out_signal: &mut [f64],
    out_hist: &mut [f64],
) {
    if fast == 0 || signal == 0 || slow <= fast || slow > x.len() {
        return;
    }
    let alpha_fast = 2.0 / (fast as f64 + 1.0);
    let alpha_slow = 2.0 / (slow as f64 + 1.0);
    let alpha_signal = 2.0 / (signal as f64 + 1.0);
    let (beta_fast, beta_slow, beta_signal) =
        (1.0 - alpha_fast, 1.0 - alpha_slow, 1.0 - alpha_signal);
    let (mut ema_fast, mut ema_slow, mut sig) = (0.0, 0.0, 0.0);
    for t in 0..x.len() {
        if t < fast {
            ema_fast += x[t];
            if t == fast - 1 {
                ema_fast /= fast as f64;
            }
        } else {
            ema_fast = alpha_fast * x[t] + beta_fast * ema_fast;
        }
        if t < slow {
            ema_slow += x[t];
            if t < slow - 1 {
                continue;
            }
            ema_slow /= slow as f64;
        } else {
            ema_slow = alpha_slow * x[t] + beta_slow * ema_slow;
        }
        let m = ema_fast - ema_slow;
        out_macd[t] = m;
        let i = t + 1 - slow;
        if i < signal {
            sig += m;
            if i < signal - 1 {
                continue;
            }
            sig /= signal as f64;
        } else {
            sig = alpha_signal * m + beta_signal * sig;
        }
        out_signal[t] = sig;
        out_hist[t] = m - sig;
    }
}

/// The window's sum of squared deviations from `mean`, left to right.
fn window_m2(window: &[f64], mean: f64) -> f64 {
    let mut m2 = 0.0;
    for &x in window {
        let d = x - mean;
        m2 += d * d;
    }
    m2
}

fn bollinger(x: &[f64], n: usize, k: f64, mid: &mut [f64], up: &mut [f64], lo: &mut [f64]) {
    if n == 0 || n > x.len() {
        return;
    }
    let nf = n as f64;
    let (mut sum, mut mean, mut m2) = (0.0, 0.0, 0.0);
    for t in n - 1..x.len() {
        if fresh_window(t, n) {
            let window = &x[t + 1 - n..=t];
            sum = window_sum(window);
            mean = sum / nf;
            m2 = window_m2(window, mean);
        } else {
            let (new, old) = (x[t], x[t - n]);
            let old_mean = mean;
            sum += new - old;
            mean = sum / nf;
            m2 += (new - old) * ((new - mean) + (old - old_mean));
        }
        let sd = (if m2 > 0.0 { m2 } else { 0.0 } / nf).sqrt();
        mid[t] = mean;
        up[t] = mean + k * sd;
        lo[t] = mean - k * sd;
    }
}

/// Shared memory a warp of the kernel stages its batches in: five tiles of
/// 32 rows of 9 f64 (the closes, the closes `period` steps back, three
/// output lines), its series' offsets (32 u64) and lengths (32 u32);
/// `WARP_DOUBLES` f64 in `indicators.cu`.
const WARP_SHARED_BYTES: u32 = 8 * (5 * 32 * 9 + 32 + 16);
// The largest block (4 warps) stages within the 48 KiB a block gets
// without opting in.
const _: () = assert!(4 * WARP_SHARED_BYTES <= 48 * 1024);
/// The kernel counts a series' closes in `u32` and adds a few steps to
/// them: a series holds fewer than 2^31.
const MAX_SERIES_LEN: usize = 1 << 31;

/// Warps per block for `warps` warps on `sms` multiprocessors: one while
/// that spreads them over every multiprocessor with room to spare (a block
/// goes to one multiprocessor, and a few long recurrences per
/// multiprocessor are all the parallelism a small request has), four once
/// there are more than 16 per multiprocessor, so blocks fill it rather
/// than stopping at its 32 resident blocks. Four warps' staging
/// ([`WARP_SHARED_BYTES`] each) fit the 48 KiB a block gets without opting
/// in.
fn warps_per_block(warps: u64, sms: u32) -> u32 {
    if warps <= 16 * u64::from(sms.max(1)) {
        1
    } else {
        4
    }
}

/// The indicators as the kernel reads them: per indicator its kind, three
/// integer parameters and its first line, and its `k` (Bollinger's, else 0).
fn kernel_codes(indicators: &[Indicator]) -> (Vec<u32>, Vec<f64>) {
    let mut codes = Vec::with_capacity(5 * indicators.len());
    let mut ks = Vec::with_capacity(indicators.len());
    let mut line = 0u32;
    for indicator in indicators {
        codes.extend_from_slice(&indicator.code());
        codes.push(line);
        line += indicator.lines() as u32;
        ks.push(match indicator {
            Indicator::Bollinger { k, .. } => *k,
            _ => 0.0,
        });
    }
    (codes, ks)
}

/// The GPU path: one warp per (indicator, group of 32 consecutive series),
/// one lane per series, the warp staging 8 steps of its series at a time
/// through shared memory so that its loads and stores are coalesced. Same
/// result as [`indicators_cpu`], bit for bit.
pub fn indicators_gpu(
    gpu: &Gpu,
    series: &[&[f64]],
    indicators: &[Indicator],
) -> Result<Vec<SeriesLines>, DeviceError> {
    use cudarc::driver::sys::CUdevice_attribute;
    use cudarc::driver::{LaunchConfig, PushKernelArg};

    let n_lines = total_lines(indicators);
    let total: usize = series.iter().map(|s| s.len()).sum();
    if total == 0 || n_lines == 0 {
        return Ok(series
            .iter()
            .map(|s| vec![vec![f64::NAN; s.len()]; n_lines])
            .collect());
    }
    let too_large = |message: String| DeviceError {
        fault: crate::driver::Fault::Other,
        message,
    };
    if let Some(long) = series.iter().position(|s| s.len() >= MAX_SERIES_LEN) {
        return Err(too_large(format!(
            "series {long} holds 2^31 closes or more, more than the kernel counts"
        )));
    }
    let n_series = u32::try_from(series.len())
        .ok()
        .filter(|&n| n <= u32::MAX - 31)
        .ok_or_else(|| {
            too_large(format!(
                "{} series is more than the kernel counts",
                series.len()
            ))
        })?;
    let mut closes = Vec::with_capacity(total);
    let mut offsets = Vec::with_capacity(series.len() + 1);
    offsets.push(0u64);
    for s in series {
        closes.extend_from_slice(s);
        offsets.push(closes.len() as u64);
    }
    let (codes, ks) = kernel_codes(indicators);

    let stream = gpu.stream();
    let function = gpu.function(SOURCE.module, "indicators_run")?;
    let sms = gpu
        .context()
        .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?;
    let d_closes = stream.clone_htod(&closes)?; // device [total]
    let d_offsets = stream.clone_htod(&offsets)?; // device [n_series + 1]
    let d_codes = stream.clone_htod(&codes)?; // device [5 n_indicators]
    let d_ks = stream.clone_htod(&ks)?; // device [n_indicators]
    // SAFETY: the kernel writes every value of every line (NaN where the
    // indicator is not defined) before anything reads the buffer.
    #[allow(unsafe_code)]
    let mut d_out = unsafe { stream.alloc::<f64>(total * n_lines)? }; // device [total n_lines]
    let n_indicators = indicators.len() as u32;
    let n_lines_u32 = n_lines as u32;
    let warps = u64::from(n_series.div_ceil(32)) * u64::from(n_indicators);
    let block_warps = warps_per_block(warps, u32::try_from(sms).unwrap_or(1));
    let blocks = u32::try_from(warps.div_ceil(u64::from(block_warps)))
        .map_err(|_| too_large(format!("{warps} warps is more than one launch holds")))?;
    let config = LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (32 * block_warps, 1, 1),
        shared_mem_bytes: block_warps * WARP_SHARED_BYTES,
    };
    let timer = gpu.kernel_timer()?;
    let mut launch = stream.launch_builder(&function);
    launch
        .arg(&d_closes)
        .arg(&d_offsets)
        .arg(&n_series)
        .arg(&d_codes)
        .arg(&d_ks)
        .arg(&n_indicators)
        .arg(&n_lines_u32)
        .arg(&mut d_out);
    // SAFETY: the arguments match `indicators_run(const double*, const
    // u64*, unsigned, const unsigned*, const double*, unsigned, unsigned,
    // double*)`; every series s is read within closes[offsets[s] ..
    // offsets[s+1]] and written only within out[offsets[s] n_lines ..
    // offsets[s+1] n_lines], inside the buffers; each warp stages in its
    // own WARP_SHARED_BYTES of the dynamic shared memory (block_warps of
    // them, at most 47 616 bytes); warps past the last (indicator, group)
    // return at once.
    #[allow(unsafe_code)]
    unsafe {
        launch.launch(config)?;
    }
    timer.finish()?;
    let out = stream.clone_dtoh(&d_out)?;
    Ok(series
        .iter()
        .zip(&offsets)
        .map(|(s, &offset)| {
            let base = offset as usize * n_lines;
            (0..n_lines)
                .map(|l| out[base + l * s.len()..base + (l + 1) * s.len()].to_vec())
                .collect()
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAN: f64 = f64::NAN;

    fn assert_close(got: &[f64], want: &[f64], rel: f64, what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (t, (&g, &w)) in got.iter().zip(want).enumerate() {
            if w.is_nan() {
                assert!(g.is_nan(), "{what}[{t}]: got {g}, want NaN");
            } else {
                let tol = rel * w.abs().max(1.0);
                assert!((g - w).abs() <= tol, "{what}[{t}]: got {g}, want {w}");
            }
        }
    }

    fn one(x: &[f64], indicator: Indicator) -> SeriesLines {
        series_cpu(x, &[indicator])
    }

    #[test]
    fn sma_and_ema_by_hand() {
        let x = [2.0, 4.0, 6.0, 8.0, 12.0, 10.0];
        assert_close(
            &one(&x, Indicator::Sma { period: 3 })[0],
            &[NAN, NAN, 4.0, 6.0, 26.0 / 3.0, 10.0],
            1e-15,
            "sma",
        );
        // alpha = 0.5: 4 (seed), 0.5*8+0.5*4, 0.5*12+0.5*6, 0.5*10+0.5*9.
        assert_close(
            &one(&x, Indicator::Ema { period: 3 })[0],
            &[NAN, NAN, 4.0, 6.0, 9.0, 9.5],
            0.0,
            "ema",
        );
        assert_close(&one(&x, Indicator::Sma { period: 1 })[0], &x, 0.0, "sma 1");
        assert_close(&one(&x, Indicator::Ema { period: 1 })[0], &x, 0.0, "ema 1");
    }

    #[test]
    fn rsi_by_hand() {
        // Changes 1, 1, -1, 2, -1. At 3: gain 2/3, loss 1/3, RS 2. At 4:
        // gain (2/3*2+2)/3 = 10/9, loss (1/3*2)/3 = 2/9, RS 5. At 5: gain
        // 20/27, loss 13/27, RS 20/13.
        let x = [10.0, 11.0, 12.0, 11.0, 13.0, 12.0];
        assert_close(
            &one(&x, Indicator::Rsi { period: 3 })[0],
            &[
                NAN,
                NAN,
                NAN,
                100.0 - 100.0 / 3.0,
                100.0 - 100.0 / 6.0,
                100.0 - 1300.0 / 33.0,
            ],
            1e-13,
            "rsi",
        );
    }

    #[test]
    fn rsi_matches_the_stockcharts_wilder_example() {
        // StockCharts' RSI(14) worksheet (cs-rsi.xls, the Wilder method):
        // its closes and its RSI column, printed to two decimals (first
        // average gain 0.2384, loss 0.0996).
        let closes = [
            44.3389, 44.0902, 44.1497, 43.6124, 44.3278, 44.8264, 45.0955, 45.4245, 45.8433,
            46.0826, 45.8931, 46.0328, 45.6140, 46.2820, 46.2820, 46.0028, 46.0328, 46.4116,
            46.2222, 45.6439, 46.2122, 46.2521, 45.7137, 46.4515, 45.7835, 45.3548, 44.0288,
            44.1783, 44.2181, 44.5672, 43.4205, 42.6628, 43.1314,
        ];
        let want = [
            70.53, 66.32, 66.55, 69.41, 66.36, 57.97, 62.93, 63.26, 56.06, 62.38, 54.71, 50.42,
            39.99, 41.46, 41.87, 45.46, 37.30, 33.08, 37.77,
        ];
        let got = &one(&closes, Indicator::Rsi { period: 14 })[0];
        assert!(got[..14].iter().all(|v| v.is_nan()));
        for (i, &w) in want.iter().enumerate() {
            let g = got[14 + i];
            assert!((g - w).abs() <= 0.005 + 1e-9, "rsi[{}]: {g} vs {w}", 14 + i);
        }
    }

    #[test]
    fn bollinger_by_hand() {
        // Windows [1,2,3] and [2,3,4]: mean 2 and 3, variance 2/3; window
        // [3,4,6]: mean 13/3, variance 14/9.
        let x = [1.0, 2.0, 3.0, 4.0, 6.0];
        let lines = one(&x, Indicator::Bollinger { period: 3, k: 2.0 });
        let sd = (2.0f64 / 3.0).sqrt();
        let sd2 = 14.0f64.sqrt() / 3.0;
        assert_close(
            &lines[0],
            &[NAN, NAN, 2.0, 3.0, 13.0 / 3.0],
            1e-15,
            "middle",
        );
        assert_close(
            &lines[1],
            &[
                NAN,
                NAN,
                2.0 + 2.0 * sd,
                3.0 + 2.0 * sd,
                13.0 / 3.0 + 2.0 * sd2,
            ],
            1e-14,
            "upper",
        );
        assert_close(
            &lines[2],
            &[
                NAN,
                NAN,
                2.0 - 2.0 * sd,
                3.0 - 2.0 * sd,
                13.0 / 3.0 - 2.0 * sd2,
            ],
            1e-14,
            "lower",
        );
    }

    #[test]
    fn macd_of_a_straight_line_is_constant() {
        // On x_t = t + 1, EMA(n) lags by (n-1)/2 once seeded (the seed is the
        // mean of the first n, which already lags so); EMA(2) - EMA(3) =
        // 0.5 from t = 2, its EMA(2) is 0.5 from t = 3, histogram 0.
        let x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0];
        let lines = one(
            &x,
            Indicator::Macd {
                fast: 2,
                slow: 3,
                signal: 2,
            },
        );
        assert_close(
            &lines[0],
            &[NAN, NAN, 0.5, 0.5, 0.5, 0.5, 0.5],
            1e-14,
            "macd",
        );
        assert_close(
            &lines[1],
            &[NAN, NAN, NAN, 0.5, 0.5, 0.5, 0.5],
            1e-14,
            "signal",
        );
        assert_close(
            &lines[2],
            &[NAN, NAN, NAN, 0.0, 0.0, 0.0, 0.0],
            1e-14,
            "hist",
        );
    }

    /// Obviously-correct definitions, one window at a time.
    fn naive(x: &[f64], indicator: Indicator) -> SeriesLines {
        let len = x.len();
        let mean = |w: &[f64]| w.iter().sum::<f64>() / w.len() as f64;
        let ema = |x: &[f64], start: usize, n: usize| {
            let mut out = vec![NAN; x.len()];
            if start + n > x.len() {
                return out;
            }
            let alpha = 2.0 / (n as f64 + 1.0);
            out[start + n - 1] = mean(&x[start..start + n]);
            for t in start + n..x.len() {
                out[t] = alpha * x[t] + (1.0 - alpha) * out[t - 1];
            }
            out
        };
        match indicator {
            Indicator::Sma { period: n } => {
                vec![
                    (0..len)
                        .map(|t| {
                            if t + 1 >= n {
                                mean(&x[t + 1 - n..=t])
                            } else {
                                NAN
                            }
                        })
                        .collect(),
                ]
            }
            Indicator::Ema { period } => vec![ema(x, 0, period)],
            Indicator::Rsi { period: n } => {
                let mut out = vec![NAN; len];
                let d: Vec<f64> = (1..len).map(|t| x[t] - x[t - 1]).collect();
                if n < len {
                    let mut g = d[..n].iter().map(|v| v.max(0.0)).sum::<f64>() / n as f64;
                    let mut l = d[..n].iter().map(|v| (-v).max(0.0)).sum::<f64>() / n as f64;
                    for t in n..len {
                        if t > n {
                            g = (g * (n - 1) as f64 + d[t - 1].max(0.0)) / n as f64;
                            l = (l * (n - 1) as f64 + (-d[t - 1]).max(0.0)) / n as f64;
                        }
                        out[t] = if l == 0.0 {
                            100.0
                        } else {
                            100.0 - 100.0 / (1.0 + g / l)
                        };
                    }
                }
                vec![out]
            }
            Indicator::Macd { fast, slow, signal } => {
                let f = ema(x, 0, fast);
                let s = ema(x, 0, slow);
                let m: Vec<f64> = f.iter().zip(&s).map(|(a, b)| a - b).collect();
                let sig = ema(&m, slow - 1, signal);
                let h = m.iter().zip(&sig).map(|(a, b)| a - b).collect();
                vec![m, sig, h]
            }
            Indicator::Bollinger { period: n, k } => {
                let mut lines = vec![vec![NAN; len]; 3];
                for t in n.saturating_sub(1)..len {
                    let w = &x[t + 1 - n..=t];
                    let mu = mean(w);
                    let sd = (w.iter().map(|v| (v - mu) * (v - mu)).sum::<f64>() / n as f64).sqrt();
                    lines[0][t] = mu;
                    lines[1][t] = mu + k * sd;
                    lines[2][t] = mu - k * sd;
                }
                lines
            }
        }
    }

    /// A random walk around 100, from a fixed LCG.
    pub(crate) fn walk(len: usize, seed: u64) -> Vec<f64> {
        let mut state = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let mut price = 100.0;
        (0..len)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let u = (state >> 11) as f64 / (1u64 << 53) as f64;
                price *= 1.0 + 0.02 * (u - 0.5);
                price
            })
            .collect()
    }

    const ALL: [Indicator; 8] = [
        Indicator::Sma { period: 20 },
        Indicator::Ema { period: 12 },
        Indicator::Rsi { period: 14 },
        Indicator::Macd {
            fast: 12,
            slow: 26,
            signal: 9,
        },
        Indicator::Bollinger { period: 20, k: 2.0 },
        Indicator::Sma { period: 1 },
        Indicator::Rsi { period: 1 },
        Indicator::Bollinger { period: 7, k: 1.5 },
    ];

    #[test]
    fn matches_the_naive_definitions_on_a_random_walk() {
        let x = walk(3000, 7);
        let lines = series_cpu(&x, &ALL);
        let mut at = 0;
        for indicator in ALL {
            for (l, want) in naive(&x, indicator).iter().enumerate() {
                assert_close(
                    &lines[at + l],
                    want,
                    1e-9,
                    &format!("{indicator:?} line {l}"),
                );
            }
            at += indicator.lines();
        }
    }

    #[test]
    fn warm_up_positions_are_nan_and_the_rest_finite() {
        let x = walk(100, 3);
        let lines = series_cpu(&x, &ALL[..5]);
        // Lines: sma 20, ema 12, rsi 14, macd, signal, hist, middle, upper, lower.
        let warm = [19, 11, 14, 25, 33, 33, 19, 19, 19];
        for (l, (line, &w)) in lines.iter().zip(&warm).enumerate() {
            assert!(line[..w].iter().all(|v| v.is_nan()), "line {l}");
            assert!(line[w..].iter().all(|v| v.is_finite()), "line {l}");
        }
    }

    #[test]
    fn constant_series() {
        let x = vec![42.5; 60];
        let lines = series_cpu(&x, &ALL[..5]);
        // Lines: sma, ema, rsi, macd, signal, hist, middle, upper, lower;
        // all defined from 33 on.
        let defined = |l: usize| &lines[l][33..];
        assert!(defined(0).iter().all(|&v| v == 42.5));
        assert!(defined(1).iter().all(|&v| (v - 42.5).abs() < 1e-12));
        assert!(defined(2).iter().all(|&v| v == 100.0), "RSI with no losses");
        assert!(defined(3).iter().chain(defined(5)).all(|v| v.abs() < 1e-12));
        assert!(defined(6).iter().all(|&v| v == 42.5));
        assert_eq!(defined(7), defined(8), "Bollinger width 0");
        assert_eq!(defined(6), defined(7));
    }

    /// `WARP_SHARED_BYTES` is what `indicators.cu` stages per warp.
    #[test]
    fn warp_shared_bytes_match_the_kernel() {
        for define in [
            "#define BATCH 8\n",
            "#define PITCH (BATCH + 1)\n",
            "#define TILE (32 * PITCH)\n",
            "#define WARP_DOUBLES (5 * TILE + 32 + 16)\n",
        ] {
            assert!(SOURCE.code.contains(define), "{define}");
        }
        assert_eq!(WARP_SHARED_BYTES, 8 * (5 * 32 * (8 + 1) + 32 + 16));
    }

    #[test]
    fn warps_per_block_spreads_few_warps_and_fills_with_many() {
        for (warps, sms, want) in [
            (1, 132, 1),
            (160, 132, 1),
            (16 * 132, 132, 1),
            (16 * 132 + 1, 132, 4),
            (100_000, 132, 4),
            (10, 0, 1),
        ] {
            assert_eq!(warps_per_block(warps, sms), want, "{warps} warps on {sms}");
        }
    }

    #[test]
    fn short_and_empty_series() {
        let out = indicators_cpu(&[&[], &[1.0, 2.0]], &ALL);
        assert_eq!(out[0].len(), total_lines(&ALL));
        assert!(out[0].iter().all(|l| l.is_empty()));
        // Too short for anything but SMA(1) and RSI(1).
        for (l, line) in out[1].iter().enumerate() {
            assert_eq!(line.len(), 2);
            if l != 9 && l != 10 {
                assert!(line.iter().all(|v| v.is_nan()), "line {l}");
            }
        }
        assert_eq!(out[1][9], vec![1.0, 2.0]);
        assert!(out[1][10][0].is_nan() && out[1][10][1] == 100.0);
    }
}

#[cfg(all(test, feature = "gpu-tests"))]
mod gpu_tests {
    use super::tests::walk;
    use super::*;

    #[test]
    fn gpu_matches_the_cpu_twin() {
        let gpu = Gpu::open(0, crate::SOURCES, None).expect("GPU 0");
        assert!(gpu.has(SOURCE.module), "{:?}", gpu.disabled);
        let indicators = [
            Indicator::Sma { period: 20 },
            Indicator::Ema { period: 12 },
            Indicator::Rsi { period: 14 },
            Indicator::Macd {
                fast: 12,
                slow: 26,
                signal: 9,
            },
            Indicator::Bollinger { period: 20, k: 2.0 },
            Indicator::Bollinger { period: 1, k: 2.0 },
        ];
        let data: Vec<Vec<f64>> = (0..300).map(|s| walk(s * 7 % 600, s as u64)).collect();
        let series: Vec<&[f64]> = data.iter().map(Vec::as_slice).collect();
        let cpu = indicators_cpu(&series, &indicators);
        let gpu_out = indicators_gpu(&gpu, &series, &indicators).unwrap();
        let mut exact = true;
        for (s, (c, g)) in cpu.iter().zip(&gpu_out).enumerate() {
            for (l, (cl, gl)) in c.iter().zip(g).enumerate() {
                for (t, (&a, &b)) in cl.iter().zip(gl).enumerate() {
                    exact &= a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
                    if a.is_nan() {
                        assert!(b.is_nan(), "series {s} line {l} t {t}: {b} vs NaN");
                    } else {
                        assert!(
                            (a - b).abs() <= 1e-12 * a.abs().max(1.0),
                            "series {s} line {l} t {t}: {b} vs {a}"
                        );
                    }
                }
            }
        }
        eprintln!("GPU equals the CPU twin bit for bit: {exact}");
    }
}
