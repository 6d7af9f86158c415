//! Times the `patterns` kind: the CPU twin, and the GPU path with `--gpu`.
//!
//! Run with `cargo run --release -p tandem-kernels --example bench_patterns -- [--gpu]`
//!
//! Cases: 1000 symbols x 2520 bars and 10 000 symbols x 252 bars, default
//! thresholds, all seven patterns. Items are bars. One `BENCH {...}` line
//! per measurement, the best of a few repetitions; the GPU's `seconds`
//! include the copies to and from the device, its `kernel_seconds` only the
//! kernel (CUDA events), with GB/s against the device's peak.

mod common;

use tandem_kernels::patterns::{self, Ohlc, Thresholds};

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

fn report(
    case: &str,
    implementation: &str,
    items: usize,
    timing: common::Timing,
    out: &[Vec<u32>],
) {
    common::Line {
        kind: "patterns",
        unit: "bars",
        case,
        implementation,
        items: items as u64,
        timing,
        // Four f64 prices read and one u32 mask written per bar.
        bytes: Some(36 * items as u64),
        flops: None,
    }
    .print();
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
    let gpu = common::gpu_from_args("bench_patterns", patterns::SOURCE);
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
        let (seconds, cpu) = common::best(REPETITIONS, || patterns::patterns_cpu(&series, &th));
        report(case, "rust_cpu", items, common::Timing::cpu(seconds), &cpu);
        if let Some(gpu) = &gpu {
            let (timing, out) = common::best_gpu(gpu, REPETITIONS, || {
                patterns::patterns_gpu(gpu, &series, &th).expect("GPU run")
            });
            report(case, "cuda", items, timing, &out);
            assert_eq!(out, cpu, "GPU masks differ from the CPU twin");
        }
    }
}
