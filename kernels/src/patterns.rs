//! Candlestick patterns over OHLC bars: a `u32` bitmask per bar, bit `p`
//! set when pattern `p` completes at that bar (the pattern's last bar).
//!
//! Every bar is classified from itself and the two bars before it in its
//! series, so the GPU runs one thread per bar; the CPU twin runs one series
//! per rayon task through the same [`bar_mask`] rules. The result is exact:
//! GPU and CPU agree bit for bit (the CUDA code multiplies with `__dmul_rn`
//! so no product is fused into an FMA).
//!
//! For a bar: `body = |close - open|`, `range = high - low`,
//! `upper = high - max(open, close)`, `lower = min(open, close) - low`. The
//! rules (pure shape, no trend filter), with the [`Thresholds`]:
//!
//! | bit | pattern | bars | rule |
//! |---|---|---|---|
//! | 0 | doji | 1 | `range > 0` and `body <= doji_body * range` |
//! | 1 | hammer | 1 | `range > 0`, not a doji (`body > doji_body * range`), `lower >= shadow_ratio * body`, `upper <= small_shadow * range` |
//! | 2 | shooting star | 1 | the mirror: not a doji, `upper >= shadow_ratio * body`, `lower <= small_shadow * range` |
//! | 3 | bullish engulfing | 2 | previous bearish (`close < open`), this bullish, `open <= previous close`, `close >= previous open`, `body > previous body` |
//! | 4 | bearish engulfing | 2 | previous bullish, this bearish, `open >= previous close`, `close <= previous open`, `body > previous body` |
//! | 5 | morning star | 3 | first bearish and long (`body >= long_body * range`); second's body `<= star_body * first body` and its top `max(open, close) <= first close`; third bullish, closing above the first body's midpoint |
//! | 6 | evening star | 3 | the mirror: first bullish and long; second's body small and its bottom `min(open, close) >= first close`; third bearish, closing below the first body's midpoint |

use rayon::prelude::*;

use crate::driver::DeviceError;
use crate::runtime::{Gpu, Source};

pub const SOURCE: Source = Source {
    module: "patterns",
    code: include_str!("../cuda/patterns.cu"),
    kernels: &["patterns_run"],
};

pub const DOJI: u32 = 1 << 0;
pub const HAMMER: u32 = 1 << 1;
pub const SHOOTING_STAR: u32 = 1 << 2;
pub const BULLISH_ENGULFING: u32 = 1 << 3;
pub const BEARISH_ENGULFING: u32 = 1 << 4;
pub const MORNING_STAR: u32 = 1 << 5;
pub const EVENING_STAR: u32 = 1 << 6;

/// The pattern names, by bit.
pub const NAMES: [&str; 7] = [
    "doji",
    "hammer",
    "shooting_star",
    "bullish_engulfing",
    "bearish_engulfing",
    "morning_star",
    "evening_star",
];

/// The ratios the rules compare with (see the module table).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// Doji: body at most this fraction of the range.
    pub doji_body: f64,
    /// Hammer, shooting star: long shadow at least this multiple of the body.
    pub shadow_ratio: f64,
    /// Hammer, shooting star: short shadow at most this fraction of the range.
    pub small_shadow: f64,
    /// Stars: the first bar's body at least this fraction of its range.
    pub long_body: f64,
    /// Stars: the middle bar's body at most this fraction of the first's.
    pub star_body: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            doji_body: 0.1,
            shadow_ratio: 2.0,
            small_shadow: 0.1,
            long_body: 0.5,
            star_body: 0.3,
        }
    }
}

/// One series' bars, all four slices of the same length.
#[derive(Debug, Clone, Copy)]
pub struct Ohlc<'a> {
    pub open: &'a [f64],
    pub high: &'a [f64],
    pub low: &'a [f64],
    pub close: &'a [f64],
}

impl Ohlc<'_> {
    pub fn len(&self) -> usize {
        self.close.len()
    }

    pub fn is_empty(&self) -> bool {
        self.close.is_empty()
    }

    fn bar(&self, i: usize) -> Bar {
        Bar::new(self.open[i], self.high[i], self.low[i], self.close[i])
    }
}

#[derive(Debug, Clone, Copy)]
struct Bar {
    open: f64,
    close: f64,
    body: f64,
    range: f64,
    upper: f64,
    lower: f64,
}

impl Bar {
    fn new(open: f64, high: f64, low: f64, close: f64) -> Self {
        let (top, bottom) = if close > open {
            (close, open)
        } else {
            (open, close)
        };
        Bar {
            open,
            close,
            body: top - bottom,
            range: high - low,
            upper: high - top,
            lower: bottom - low,
        }
    }

    fn bullish(&self) -> bool {
        self.close > self.open
    }

    fn bearish(&self) -> bool {
        self.close < self.open
    }

    fn top(&self) -> f64 {
        if self.close > self.open {
            self.close
        } else {
            self.open
        }
    }

    fn bottom(&self) -> f64 {
        if self.close > self.open {
            self.open
        } else {
            self.close
        }
    }

    fn midpoint(&self) -> f64 {
        0.5 * (self.open + self.close)
    }
}

/// The patterns completing at bar `i` of `bars`.
pub fn bar_mask(bars: &Ohlc<'_>, i: usize, th: &Thresholds) -> u32 {
    let before = |back: usize| i.checked_sub(back).map(|j| bars.bar(j));
    rules(before(2).as_ref(), before(1).as_ref(), &bars.bar(i), th)
}

/// The patterns completing at bar `c`, given the two bars before it in its
/// series when it has them.
fn rules(a: Option<&Bar>, b: Option<&Bar>, c: &Bar, th: &Thresholds) -> u32 {
    let mut mask = 0;
    if c.range > 0.0 {
        if c.body <= th.doji_body * c.range {
            mask |= DOJI;
        } else {
            if c.lower >= th.shadow_ratio * c.body && c.upper <= th.small_shadow * c.range {
                mask |= HAMMER;
            }
            if c.upper >= th.shadow_ratio * c.body && c.lower <= th.small_shadow * c.range {
                mask |= SHOOTING_STAR;
            }
        }
    }
    let Some(b) = b else {
        return mask;
    };
    if b.bearish() && c.bullish() && c.open <= b.close && c.close >= b.open && c.body > b.body {
        mask |= BULLISH_ENGULFING;
    }
    if b.bullish() && c.bearish() && c.open >= b.close && c.close <= b.open && c.body > b.body {
        mask |= BEARISH_ENGULFING;
    }
    let Some(a) = a else {
        return mask;
    };
    let long = a.body >= th.long_body * a.range;
    let small = b.body <= th.star_body * a.body;
    if a.bearish() && long && small && b.top() <= a.close && c.bullish() && c.close > a.midpoint() {
        mask |= MORNING_STAR;
    }
    if a.bullish()
        && long
        && small
        && b.bottom() >= a.close
        && c.bearish()
        && c.close < a.midpoint()
    {
        mask |= EVENING_STAR;
    }
    mask
}

/// The masks of one series: [`bar_mask`] at every bar, each bar's
/// measures computed once.
pub fn series_cpu(bars: &Ohlc<'_>, th: &Thresholds) -> Vec<u32> {
    let mut masks = Vec::with_capacity(bars.len());
    let (mut a, mut b): (Option<Bar>, Option<Bar>) = (None, None);
    for i in 0..bars.len() {
        let c = bars.bar(i);
        masks.push(rules(a.as_ref(), b.as_ref(), &c, th));
        (a, b) = (b, Some(c));
    }
    masks
}

/// The CPU twin: the masks of every series, one series per rayon task.
pub fn patterns_cpu(series: &[Ohlc<'_>], th: &Thresholds) -> Vec<Vec<u32>> {
    series.par_iter().map(|bars| series_cpu(bars, th)).collect()
}

/// The GPU path: one thread per bar. Equals [`patterns_cpu`].
pub fn patterns_gpu(
    gpu: &Gpu,
    series: &[Ohlc<'_>],
    th: &Thresholds,
) -> Result<Vec<Vec<u32>>, DeviceError> {
    use cudarc::driver::{LaunchConfig, PushKernelArg};

    let total: usize = series.iter().map(Ohlc::len).sum();
    if total == 0 {
        return Ok(series.iter().map(|_| Vec::new()).collect());
    }
    // Struct of arrays, series concatenated: open, high, low, close.
    let mut bars = Vec::with_capacity(4 * total);
    for field in 0..4 {
        for s in series {
            bars.extend_from_slice([s.open, s.high, s.low, s.close][field]);
        }
    }
    let mut offsets = Vec::with_capacity(series.len() + 1);
    offsets.push(0u64);
    let mut at = 0u64;
    for s in series {
        at += s.len() as u64;
        offsets.push(at);
    }
    let thresholds = [
        th.doji_body,
        th.shadow_ratio,
        th.small_shadow,
        th.long_body,
        th.star_body,
    ];

    let stream = gpu.stream();
    let function = gpu.function(SOURCE.module, "patterns_run")?;
    let d_bars = stream.clone_htod(&bars)?; // device [4 total]
    let d_offsets = stream.clone_htod(&offsets)?; // device [n_series + 1]
    let d_thresholds = stream.clone_htod(&thresholds)?; // device [5]
    let mut d_masks = stream.alloc_zeros::<u32>(total)?; // device [total]
    let total_u64 = total as u64;
    let n_series = series.len() as u32;
    let block = 256u32;
    // One thread per bar: past 2^32 blocks of 256 the launch could not
    // cover them all, so say so rather than leave bars unmarked.
    let blocks = u32::try_from(total.div_ceil(block as usize)).map_err(|_| DeviceError {
        fault: crate::driver::Fault::Other,
        message: format!("{total} bars exceed one launch of patterns_run"),
    })?;
    let config = LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (block, 1, 1),
        shared_mem_bytes: 0,
    };
    let timer = gpu.kernel_timer()?;
    let mut launch = stream.launch_builder(&function);
    launch
        .arg(&d_bars)
        .arg(&total_u64)
        .arg(&d_offsets)
        .arg(&n_series)
        .arg(&d_thresholds)
        .arg(&mut d_masks);
    // SAFETY: the arguments match `patterns_run(const double*, unsigned long
    // long, const unsigned long long*, unsigned, const double*, unsigned*)`;
    // thread g < total writes masks[g] only.
    #[allow(unsafe_code)]
    unsafe {
        launch.launch(config)?;
    }
    timer.finish()?;
    let masks = stream.clone_dtoh(&d_masks)?;
    Ok(offsets
        .windows(2)
        .map(|w| masks[w[0] as usize..w[1] as usize].to_vec())
        .collect())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::test_device::{Device, test_device};

    /// Bars given as (open, high, low, close).
    pub(crate) struct Bars {
        open: Vec<f64>,
        high: Vec<f64>,
        low: Vec<f64>,
        close: Vec<f64>,
    }

    impl Bars {
        pub(crate) fn new(bars: &[(f64, f64, f64, f64)]) -> Self {
            Bars {
                open: bars.iter().map(|b| b.0).collect(),
                high: bars.iter().map(|b| b.1).collect(),
                low: bars.iter().map(|b| b.2).collect(),
                close: bars.iter().map(|b| b.3).collect(),
            }
        }

        pub(crate) fn ohlc(&self) -> Ohlc<'_> {
            Ohlc {
                open: &self.open,
                high: &self.high,
                low: &self.low,
                close: &self.close,
            }
        }
    }

    fn last_mask(bars: &[(f64, f64, f64, f64)]) -> u32 {
        let bars = Bars::new(bars);
        let masks = series_cpu(&bars.ohlc(), &Thresholds::default());
        masks[masks.len() - 1]
    }

    /// `bars` completes `pattern` at its last bar when `hit`, not when not.
    fn check(name: &str, pattern: u32, bars: &[(f64, f64, f64, f64)], hit: bool) {
        let mask = last_mask(bars);
        assert_eq!(mask & pattern != 0, hit, "{name}: mask {mask:#b}");
    }

    #[test]
    fn doji() {
        check("doji", DOJI, &[(10.0, 11.0, 9.0, 10.1)], true); // body 0.1, range 2
        check("doji at the bound", DOJI, &[(10.0, 11.0, 9.0, 10.2)], true); // 0.2 = 10 %
        check("doji miss", DOJI, &[(10.0, 11.0, 9.0, 10.3)], false); // 15 %
        check("flat bar", DOJI, &[(10.0, 10.0, 10.0, 10.0)], false);
    }

    #[test]
    fn hammer() {
        // Body 1 (10-11), lower shadow 3, upper 0.2 of range 4.2.
        check("hammer", HAMMER, &[(10.0, 11.2, 7.0, 11.0)], true);
        check(
            "hammer, bearish body",
            HAMMER,
            &[(11.0, 11.2, 7.0, 10.0)],
            true,
        );
        // Lower shadow 1.5 < 2 x body.
        check(
            "hammer miss: short shadow",
            HAMMER,
            &[(10.0, 11.2, 8.5, 11.0)],
            false,
        );
        // Upper shadow 1.0 > 10 % of range 5.
        check(
            "hammer miss: upper shadow",
            HAMMER,
            &[(10.0, 12.0, 7.0, 11.0)],
            false,
        );
        assert_eq!(last_mask(&[(10.0, 11.2, 7.0, 11.0)]), HAMMER);
    }

    #[test]
    fn shooting_star() {
        check(
            "shooting star",
            SHOOTING_STAR,
            &[(11.0, 14.0, 9.8, 10.0)],
            true,
        );
        // Lower shadow 0.8 > 10 % of range 5.
        check(
            "shooting star miss",
            SHOOTING_STAR,
            &[(11.0, 14.0, 9.2, 10.0)],
            false,
        );
        assert_eq!(last_mask(&[(11.0, 14.0, 9.8, 10.0)]), SHOOTING_STAR);
    }

    #[test]
    fn engulfing() {
        let down = (11.0, 11.2, 9.8, 10.0);
        check(
            "bullish engulfing",
            BULLISH_ENGULFING,
            &[down, (9.9, 11.5, 9.7, 11.4)],
            true,
        );
        // Closes at 10.9, below the previous open.
        check(
            "bullish miss",
            BULLISH_ENGULFING,
            &[down, (9.9, 11.5, 9.7, 10.9)],
            false,
        );
        let up_bar = (10.0, 11.2, 9.8, 11.0);
        check(
            "bearish engulfing",
            BEARISH_ENGULFING,
            &[up_bar, (11.1, 11.3, 9.5, 9.6)],
            true,
        );
        // Opens at 10.9, below the previous close.
        check(
            "bearish miss",
            BEARISH_ENGULFING,
            &[up_bar, (10.9, 11.3, 9.5, 9.6)],
            false,
        );
        // Equal bodies do not engulf.
        check(
            "bullish, equal body",
            BULLISH_ENGULFING,
            &[down, (10.0, 11.2, 9.8, 11.0)],
            false,
        );
    }

    #[test]
    fn stars() {
        let long_down = (12.0, 12.2, 9.8, 10.0); // body 2 of range 2.4
        let star_low = (9.6, 9.8, 9.2, 9.5); // body 0.1, top 9.6 <= 10
        check(
            "morning star",
            MORNING_STAR,
            &[long_down, star_low, (9.7, 11.6, 9.6, 11.5)],
            true,
        );
        // Third closes at 10.9, below the first body's midpoint 11.
        check(
            "morning star miss: weak third",
            MORNING_STAR,
            &[long_down, star_low, (9.7, 11.6, 9.6, 10.9)],
            false,
        );
        // The star's body (1.0) is half the first's: too big.
        check(
            "morning star miss: big star",
            MORNING_STAR,
            &[long_down, (9.9, 10.0, 8.8, 8.9), (9.7, 11.6, 9.6, 11.5)],
            false,
        );
        let long_up = (10.0, 12.2, 9.8, 12.0);
        let star_high = (12.4, 12.8, 12.2, 12.5);
        check(
            "evening star",
            EVENING_STAR,
            &[long_up, star_high, (12.3, 12.4, 10.4, 10.5)],
            true,
        );
        // The star opens inside the first body (bottom 11.9 < 12).
        check(
            "evening star miss: no gap",
            EVENING_STAR,
            &[long_up, (11.9, 12.8, 11.8, 12.0), (12.3, 12.4, 10.4, 10.5)],
            false,
        );
    }

    #[test]
    fn two_and_three_bar_patterns_need_their_bars() {
        // The bars before index 0 and 1 of a series do not exist.
        let bars = Bars::new(&[(9.9, 11.5, 9.7, 11.4)]);
        assert_eq!(series_cpu(&bars.ohlc(), &Thresholds::default()), vec![0]);
        assert!(patterns_cpu(&[], &Thresholds::default()).is_empty());
    }

    /// A random walk of bars, from a fixed LCG, with some dojis, long
    /// shadows and gaps.
    pub(crate) fn random_bars(len: usize, seed: u64) -> Bars {
        let mut state = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut next = || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut price = 100.0;
        let bars: Vec<_> = (0..len)
            .map(|_| {
                let open = price * (1.0 + 0.01 * (next() - 0.5));
                let close = open * (1.0 + 0.03 * (next() - 0.5));
                let high = open.max(close) * (1.0 + 0.01 * next() * next());
                let low = open.min(close) * (1.0 - 0.01 * next() * next());
                price = close;
                (open, high, low, close)
            })
            .collect();
        Bars::new(&bars)
    }

    #[test]
    fn random_bars_hit_every_pattern() {
        let bars = random_bars(20_000, 1);
        let masks = series_cpu(&bars.ohlc(), &Thresholds::default());
        for (i, &m) in masks.iter().enumerate() {
            assert_eq!(
                bar_mask(&bars.ohlc(), i, &Thresholds::default()),
                m,
                "bar {i}"
            );
        }
        for (bit, name) in NAMES.iter().enumerate() {
            assert!(masks.iter().any(|m| m & (1 << bit) != 0), "{name} never");
        }
    }

    /// The masks of `series` computed on `device`.
    fn patterns_on(device: &Device, series: &[Ohlc<'_>], th: &Thresholds) -> Vec<Vec<u32>> {
        match device {
            Device::Cpu => patterns_cpu(series, th),
            #[cfg(feature = "gpu-tests")]
            Device::Gpu(gpu) => patterns_gpu(gpu, series, th).expect("GPU run"),
        }
    }

    /// On every device, 200 random series of 0 to 699 bars get at each
    /// bar the mask of the rules applied to that bar alone ([`bar_mask`]),
    /// bit for bit.
    fn masks_equal_the_per_bar_rules(device: &Device) {
        let data: Vec<_> = (0..200)
            .map(|s| random_bars(s * 13 % 700, s as u64))
            .collect();
        let series: Vec<Ohlc<'_>> = data.iter().map(|b| b.ohlc()).collect();
        let th = Thresholds::default();
        let masks = patterns_on(device, &series, &th);
        assert_eq!(masks.len(), series.len());
        for (s, (bars, masks)) in series.iter().zip(&masks).enumerate() {
            let expect: Vec<u32> = (0..bars.len()).map(|i| bar_mask(bars, i, &th)).collect();
            assert_eq!(*masks, expect, "series {s}");
        }
    }

    test_device!(
        masks_equal_the_per_bar_rules,
        masks_equal_the_per_bar_rules_cpu,
        masks_equal_the_per_bar_rules_gpu
    );
}
