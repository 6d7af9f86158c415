//! What reporting progress in a hot loop costs: the same loop of cheap
//! steps without a report, and with `Stop::progress` called on every step
//! (throttled to one report per 250 ms, as `progress_interval_ms` is by
//! default), interleaved without/with so that a noisy machine's drift
//! hits both alike. Prints nanoseconds per step, median of the rounds.
//!
//! Run with `cargo run --release -p tandem-worker --example bench_progress`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use tandem_worker::context::Stop;

/// Steps per timed loop.
const STEPS: u64 = 50_000_000;
/// Rounds of (without, with).
const ROUNDS: usize = 7;

/// A step of work worth reporting around: a few floating-point operations.
#[inline(always)]
fn step(acc: f64, i: u64) -> f64 {
    acc.mul_add(0.999_999_9, (i as f64).sqrt() * 1e-9)
}

fn without(_: &Stop) -> f64 {
    let mut acc = 0.0;
    for i in 0..STEPS {
        acc = step(acc, black_box(i));
    }
    acc
}

fn with(stop: &Stop) -> f64 {
    let per_step = 1.0 / STEPS as f64;
    let mut acc = 0.0;
    for i in 0..STEPS {
        acc = step(acc, black_box(i));
        stop.progress(i as f64 * per_step, || format!("step {i} of {STEPS}"));
    }
    acc
}

fn time(run: fn(&Stop) -> f64, stop: &Stop) -> f64 {
    let started = Instant::now();
    black_box(run(stop));
    started.elapsed().as_nanos() as f64 / STEPS as f64
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let _inside = runtime.enter();
    let stop = Stop::never_reporting(Duration::from_millis(250));
    let (mut plain, mut reporting) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        plain.push(time(without, &stop));
        reporting.push(time(with, &stop));
    }
    let (plain, reporting) = (median(&mut plain), median(&mut reporting));
    println!("{STEPS} steps, median of {ROUNDS} interleaved rounds:");
    println!("  without progress:             {plain:.3} ns/step");
    println!("  with stop.progress each step: {reporting:.3} ns/step");
    println!(
        "  difference:                   {:+.3} ns/step ({:+.1} %)",
        reporting - plain,
        (reporting / plain - 1.0) * 100.0
    );
}
