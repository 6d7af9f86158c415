//! Times the MLP's CPU twin: inference and one training epoch.
//!
//! Run with `cargo run --release -p tandem-kernels --example bench_mlp`
//!
//! Cases: an MLP 64-256-256-1 (ReLU, input normalisation) on 65 536
//! samples: `infer` is one forward pass over all of them; `train` is one
//! epoch of mini-batches of 512 with Adam (128 steps). `bench/mlp_numpy.py`
//! runs the same cases. One `BENCH {...}` line per measurement, the best of
//! a few repetitions.
//!
//! `--gpu` adds no line here: the GPU path lives in `mlp_gpu.rs`, and the
//! change that wires it into the workers adds its `cuda` lines to this bench.

// `gpu_from_args` waits for the GPU lines (see above).
#[allow(dead_code)]
mod common;

use tandem_kernels::mlp::{self, Activation, Mlp, Optimizer, TrainConfig};

const SIZES: [usize; 4] = [64, 256, 256, 1];
const SAMPLES: usize = 65_536;
const BATCH_SIZE: usize = 512;

/// Features uniform in [-2, 2) and a smooth target of the first two (any
/// fixed data will do; the timings do not depend on the values).
fn data() -> (Vec<f32>, Vec<f32>) {
    let inputs = SIZES[0];
    let mut state = 0x5EED_u64;
    let x: Vec<f32> = (0..SAMPLES * inputs)
        .map(|_| {
            // An LCG's top bits: plenty for bench data.
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            4.0 * ((state >> 40) as f32 / 16_777_216.0) - 2.0
        })
        .collect();
    let y = x
        .chunks_exact(inputs)
        .map(|row| row[0].sin() + 0.5 * row[1] * row[1])
        .collect();
    (x, y)
}

fn report(kind: &str, case: &str, seconds: f64) {
    common::Line {
        kind,
        unit: "samples",
        case,
        implementation: "rust_cpu",
        items: SAMPLES as u64,
        seconds,
        bytes: None,
    }
    .print();
}

fn main() {
    if std::env::args().any(|a| a == "--gpu") {
        eprintln!("bench_mlp: CPU lines only; the GPU path (mlp_gpu.rs) is not in this bench");
    }
    let (x, y) = data();
    let mut model = Mlp::random(&SIZES, Activation::Relu, 7).expect("valid sizes");
    model.input_mean = vec![0.1; SIZES[0]];
    model.input_std = vec![1.2; SIZES[0]];

    let (seconds, outputs) = common::best(5, || {
        mlp::forward_cpu(&model, &x, SAMPLES).expect("forward")
    });
    report("infer", "mlp64x256x256x1_b65536", seconds);
    eprintln!("  infer: output[0] {:.6}", outputs[0]);

    let config = TrainConfig {
        epochs: 1,
        batch_size: BATCH_SIZE,
        optimizer: Optimizer::adam(1e-3),
        seed: 1,
    };
    let (seconds, report_) = common::best(3, || {
        let mut net = model.clone();
        mlp::train_cpu(&mut net, &x, &y, SAMPLES, &config).expect("train")
    });
    report("train", "mlp64x256x256x1_b65536_bs512_adam", seconds);
    eprintln!(
        "  train: {} steps, epoch loss {:.5}",
        report_.steps, report_.losses[0]
    );
}
