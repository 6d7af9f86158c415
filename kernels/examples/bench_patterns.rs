//! Times the `patterns` kind: the CPU twin, and the GPU path with `--gpu`.
//!
//! Run with `cargo run --release -p tandem-kernels --example bench_patterns -- [--gpu]`
//!
//! Cases: 1000 symbols x 2520 bars and 10 000 symbols x 252 bars, default
//! thresholds, all seven patterns. Items are bars. One `BENCH {...}` line
//! per measurement, the best of a few repetitions; the GPU time includes
//! the copies to and from the device.

use std::time::Instant;

use tandem_kernels::patterns::{self, Ohlc, Thresholds};
use tandem_kernels::runtime::Gpu;

const REPETITIONS: usize = 5;

/// One symbol's bars: open, high, low, close.
type Bars = [Vec<f64>; 4];

/// Random-walk bars from a fixed LCG (any fixed data will do).
fn random_bars(symbols: usize, len: usize) -> Vec<Bars> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..symbols)
        .map(|_| {
            let mut bars: Bars = Default::default();
            let mut price = 100.0;
            for _ in 0..len {
                let open = price * (1.0 + 0.01 * (next() - 0.5));
                let close = open * (1.0 + 0.03 * (next() - 0.5));
                let high = open.max(close) * (1.0 + 0.01 * next() * next());
                let low = open.min(close) * (1.0 - 0.01 * next() * next());
                price = close;
                for (field, value) in bars.iter_mut().zip([open, high, low, close]) {
                    field.push(value);
                }
            }
            bars
        })
        .collect()
}

fn best(mut run: impl FnMut() -> Vec<Vec<u32>>) -> (f64, Vec<Vec<u32>>) {
    let mut best = f64::INFINITY;
    let mut out = Vec::new();
    for _ in 0..REPETITIONS {
        let start = Instant::now();
        out = run();
        best = best.min(start.elapsed().as_secs_f64());
    }
    (best, out)
}

fn report(case: &str, implementation: &str, items: usize, seconds: f64, out: &[Vec<u32>]) {
    println!(
        "BENCH {{\"kind\":\"patterns\",\"case\":\"{case}\",\"impl\":\"{implementation}\",\"items\":{items},\"unit\":\"bars\",\"seconds\":{seconds:.6}}}"
    );
    let counts: Vec<usize> = (0..patterns::NAMES.len())
        .map(|bit| {
            out.iter()
                .flatten()
                .filter(|m| *m & (1 << bit) != 0)
                .count()
        })
        .collect();
    eprintln!("  {case} {implementation}: hits per pattern {counts:?}");
}

fn main() {
    let use_gpu = std::env::args().any(|a| a == "--gpu");
    let gpu = if use_gpu {
        match Gpu::open(0, &[patterns::SOURCE], None) {
            Ok(gpu) if gpu.has(patterns::SOURCE.module) => Some(gpu),
            Ok(gpu) => {
                eprintln!(
                    "bench_patterns: the kernels did not load: {:?}",
                    gpu.disabled
                );
                None
            }
            Err(err) => {
                eprintln!("bench_patterns: no GPU: {}", err.message);
                None
            }
        }
    } else {
        None
    };

    let th = Thresholds::default();
    for (case, symbols, len) in [("1000x2520", 1000, 2520), ("10000x252", 10_000, 252)] {
        let data = random_bars(symbols, len);
        let series: Vec<Ohlc<'_>> = data
            .iter()
            .map(|[open, high, low, close]| Ohlc {
                open,
                high,
                low,
                close,
            })
            .collect();
        let items = symbols * len;
        let (seconds, cpu) = best(|| patterns::patterns_cpu(&series, &th));
        report(case, "rust_cpu", items, seconds, &cpu);
        if let Some(gpu) = &gpu {
            let (seconds, out) =
                best(|| patterns::patterns_gpu(gpu, &series, &th).expect("GPU run"));
            report(case, "cuda", items, seconds, &out);
            assert_eq!(out, cpu, "GPU masks differ from the CPU twin");
        }
    }
}
