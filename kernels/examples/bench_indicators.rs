//! Times the `indicators` kind: the CPU twin, and the GPU path with `--gpu`.
//!
//! Run with `cargo run --release -p tandem-kernels --example bench_indicators -- [--gpu]`
//!
//! Cases: 1000 symbols x 2520 closes (ten years of days) and 10 000
//! symbols x 252 closes (one year), each with SMA(20), EMA(20), RSI(14),
//! MACD(12,26,9) and Bollinger(20,2): nine lines. Items are input closes.
//! One `BENCH {...}` line per measurement, the best of a few repetitions;
//! the GPU time includes the copies to and from the device.

use std::time::Instant;

use tandem_kernels::indicators::{self, Indicator, SeriesLines};
use tandem_kernels::runtime::Gpu;

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

fn best(mut run: impl FnMut() -> Vec<SeriesLines>) -> (f64, Vec<SeriesLines>) {
    let mut best = f64::INFINITY;
    let mut out = Vec::new();
    for _ in 0..REPETITIONS {
        let start = Instant::now();
        out = run();
        best = best.min(start.elapsed().as_secs_f64());
    }
    (best, out)
}

fn report(case: &str, implementation: &str, items: usize, seconds: f64, out: &[SeriesLines]) {
    println!(
        "BENCH {{\"kind\":\"indicators\",\"case\":\"{case}\",\"impl\":\"{implementation}\",\"items\":{items},\"unit\":\"values\",\"seconds\":{seconds:.6}}}"
    );
    if let Some(last) = out
        .first()
        .and_then(|s| s.iter().map(|l| l.last()).collect::<Option<Vec<_>>>())
    {
        eprintln!("  {case} {implementation}: first series, last values {last:.4?}");
    }
}

fn main() {
    let use_gpu = std::env::args().any(|a| a == "--gpu");
    let gpu = if use_gpu {
        match Gpu::open(0, &[indicators::SOURCE], None) {
            Ok(gpu) if gpu.has(indicators::SOURCE.module) => Some(gpu),
            Ok(gpu) => {
                eprintln!(
                    "bench_indicators: the kernels did not load: {:?}",
                    gpu.disabled
                );
                None
            }
            Err(err) => {
                eprintln!("bench_indicators: no GPU: {}", err.message);
                None
            }
        }
    } else {
        None
    };

    for (case, symbols, closes) in [("1000x2520", 1000, 2520), ("10000x252", 10_000, 252)] {
        let data = walks(symbols, closes);
        let series: Vec<&[f64]> = data.iter().map(Vec::as_slice).collect();
        let items = symbols * closes;
        let (seconds, cpu) = best(|| indicators::indicators_cpu(&series, &ALL));
        report(case, "rust_cpu", items, seconds, &cpu);
        if let Some(gpu) = &gpu {
            let (seconds, out) =
                best(|| indicators::indicators_gpu(gpu, &series, &ALL).expect("GPU run"));
            report(case, "cuda", items, seconds, &out);
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
