//! Times the `indicators` kind: the CPU twin, and the GPU path with `--gpu`.
//!
//! Run with `cargo run --release -p tandem-kernels --example bench_indicators -- [--gpu]`
//!
//! Cases: 1000 symbols x 2520 closes (ten years of days) and 10 000
//! symbols x 252 closes (one year), each with SMA(20), EMA(20), RSI(14),
//! MACD(12,26,9) and Bollinger(20,2): nine lines. Items are input closes.
//! One `BENCH {...}` line per measurement, the best of a few repetitions;
//! the GPU's `seconds` include the copies to and from the device, its
//! `kernel_seconds` only the kernel, timed with CUDA events.

mod common;

use tandem_kernels::indicators::{self, Indicator, SeriesLines};

const REPETITIONS: usize = 5;

const ALL: [Indicator; 5] = [
    Indicator::Sma { period: 20 },
    Indicator::Ema { period: 20 },
    Indicator::Rsi { period: 14 },
    Indicator::Macd {
        fast: 12,
        slow: 26,
        signal: 9,
    },
    Indicator::Bollinger { period: 20, k: 2.0 },
];

/// Random walks around 100 from a fixed LCG (any fixed data will do).
fn walks(symbols: usize, closes: usize) -> Vec<Vec<f64>> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    (0..symbols)
        .map(|_| {
            let mut price = 100.0;
            (0..closes)
                .map(|_| {
                    state = state
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    let u = (state >> 11) as f64 / (1u64 << 53) as f64;
                    price *= 1.0 + 0.02 * (u - 0.5);
                    price
                })
                .collect()
        })
        .collect()
}

fn report(
    case: &str,
    implementation: &str,
    items: usize,
    timing: common::Timing,
    out: &[SeriesLines],
) {
    let lines = indicators::total_lines(&ALL) as u64;
    common::Line {
        kind: "indicators",
        unit: "values",
        case,
        implementation,
        items: items as u64,
        timing,
        // The closes read once and every output line written once.
        bytes: Some(8 * items as u64 * (1 + lines)),
        flops: None,
    }
    .print();
    if let Some(last) = out
        .first()
        .and_then(|s| s.iter().map(|l| l.last()).collect::<Option<Vec<_>>>())
    {
        eprintln!("  {case} {implementation}: first series, last values {last:.4?}");
    }
}

fn main() {
    let gpu = common::gpu_from_args("bench_indicators", indicators::SOURCE);
    for (case, symbols, closes) in [("1000x2520", 1000, 2520), ("10000x252", 10_000, 252)] {
        let data = walks(symbols, closes);
        let series: Vec<&[f64]> = data.iter().map(Vec::as_slice).collect();
        let items = symbols * closes;
        let (seconds, cpu) =
            common::best(REPETITIONS, || indicators::indicators_cpu(&series, &ALL));
        report(case, "rust_cpu", items, common::Timing::cpu(seconds), &cpu);
        if let Some(gpu) = &gpu {
            let (timing, out) = common::best_gpu(gpu, REPETITIONS, || {
                indicators::indicators_gpu(gpu, &series, &ALL).expect("GPU run")
            });
            report(case, "cuda", items, timing, &out);
            let same = cpu
                .iter()
                .flatten()
                .flatten()
                .zip(out.iter().flatten().flatten());
            let differing = same.filter(|(a, b)| a.to_bits() != b.to_bits()).count();
            eprintln!("  {case}: {differing} values differ from the CPU twin in any bit");
        }
    }
}
