//! Times the MLP: the CPU twin, and the GPU path with `--gpu`.
//!
//! Run with `cargo run --release -p tandem-kernels --example bench_mlp -- [--gpu]`
//!
//! Cases: an MLP 64-256-256-1 (ReLU, input normalisation) on 65 536
//! samples: `infer` is one forward pass over all of them; `train` is one
//! epoch of mini-batches of 512 with Adam (128 steps). `bench/mlp_numpy.py`
//! and `bench/mlp_torch.py` run the same cases. One `BENCH {...}` line per
//! measurement, the best of a few repetitions.
//!
//! With `--gpu` the same cases run on the GPU (`impl` "cuda"): the model is
//! uploaded once, outside the timing, and each `infer` is one
//! [`GpuMlp::forward`] call, host inputs in and host outputs back, as a
//! worker serves a task; each `train` is one [`GpuMlp::train`] call, which
//! also copies the training set to the device. Then the model cache's two
//! latencies, one request of one sample each (`infer`, unit "requests"):
//! `cold_load`, uploading the model (on a cuBLAS handle the device already
//! has) and its first forward, against `warm`, a forward on the resident
//! model.

mod common;

use std::sync::Arc;
use std::time::Instant;

use tandem_kernels::mlp::{self, Activation, Mlp, Optimizer, TrainConfig};
use tandem_kernels::mlp_gpu::{self, GpuMlp};
use tandem_kernels::runtime::Gpu;

const SIZES: [usize; 4] = [64, 256, 256, 1];
const SAMPLES: usize = 65_536;
const BATCH_SIZE: usize = 512;
const INFER_CASE: &str = "mlp64x256x256x1_b65536";
const TRAIN_CASE: &str = "mlp64x256x256x1_b65536_bs512_adam";

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

/// Multiply-adds of one sample through the layers' GEMMs: sum of inputs x
/// outputs.
fn gemm_macs() -> u64 {
    SIZES.windows(2).map(|w| (w[0] * w[1]) as u64).sum()
}

/// GEMM flops per sample: a forward pass is 2 per multiply-add; a training
/// step adds the weight and input gradients' GEMMs, 6 in all (the GEMMs
/// only: the element-wise kernels are memory-bound and small beside them).
fn flops(kind: &str, items: u64) -> Option<u64> {
    match kind {
        "infer" => Some(2 * gemm_macs() * items),
        "train" => Some(6 * gemm_macs() * items),
        _ => None,
    }
}

fn report(
    kind: &str,
    case: &str,
    implementation: &str,
    unit: &str,
    items: u64,
    timing: common::Timing,
) {
    common::Line {
        kind,
        unit,
        case,
        implementation,
        items,
        timing,
        bytes: None,
        flops: flops(kind, items),
    }
    .print();
}

fn train_config() -> TrainConfig {
    TrainConfig {
        epochs: 1,
        batch_size: BATCH_SIZE,
        optimizer: Optimizer::adam(1e-3),
        seed: 1,
    }
}

fn main() {
    let gpu = common::gpu_from_args("bench_mlp", mlp_gpu::SOURCE);
    let (x, y) = data();
    let mut model = Mlp::random(&SIZES, Activation::Relu, 7).expect("valid sizes");
    model.input_mean = vec![0.1; SIZES[0]];
    model.input_std = vec![1.2; SIZES[0]];
    let samples = SAMPLES as u64;

    let (seconds, outputs) = common::best(5, || {
        mlp::forward_cpu(&model, &x, SAMPLES).expect("forward")
    });
    report(
        "infer",
        INFER_CASE,
        "rust_cpu",
        "samples",
        samples,
        common::Timing::cpu(seconds),
    );
    eprintln!("  infer: output[0] {:.6}", outputs[0]);

    let config = train_config();
    let (seconds, trained) = common::best(3, || {
        let mut net = model.clone();
        mlp::train_cpu(&mut net, &x, &y, SAMPLES, &config).expect("train")
    });
    report(
        "train",
        TRAIN_CASE,
        "rust_cpu",
        "samples",
        samples,
        common::Timing::cpu(seconds),
    );
    eprintln!(
        "  train: {} steps, epoch loss {:.5}",
        trained.steps, trained.losses[0]
    );

    if let Some(gpu) = &gpu {
        bench_gpu(gpu, &model, &x, &y);
    }
}

/// The `cuda` lines: the same cases on the GPU, then cold load against a
/// warm request.
fn bench_gpu(gpu: &Gpu, model: &Mlp, x: &[f32], y: &[f32]) {
    let samples = SAMPLES as u64;
    // A host without libcublas (a driver-only machine) skips the GPU cases
    // with a message; any other failure is one.
    let blas = match mlp_gpu::cublas(gpu) {
        Ok(blas) => blas,
        Err(err) if err.message.starts_with(mlp_gpu::CUBLAS_NOT_FOUND) => {
            eprintln!("bench_mlp: skipped: no cuBLAS ({})", err.message);
            return;
        }
        Err(err) => panic!("cuBLAS on GPU {}: {err}", gpu.ordinal),
    };
    let resident = GpuMlp::upload_with(gpu, Arc::clone(&blas), model).expect("upload");
    let (timing, outputs) = common::best_gpu(gpu, 5, || {
        resident.forward(gpu, x, SAMPLES).expect("GPU forward")
    });
    report("infer", INFER_CASE, "cuda", "samples", samples, timing);
    eprintln!("  infer (cuda): output[0] {:.6}", outputs[0]);

    let config = train_config();
    let mut training = GpuMlp::upload_with(gpu, Arc::clone(&blas), model).expect("upload");
    // Each call starts from fresh optimiser moments; the weights carry on
    // from the last repetition, which does not change the work.
    let (timing, trained) = common::best_gpu(gpu, 3, || {
        training
            .train(gpu, x, y, SAMPLES, &config)
            .expect("GPU train")
    });
    report("train", TRAIN_CASE, "cuda", "samples", samples, timing);
    eprintln!(
        "  train (cuda): {} steps, epoch loss {:.5}",
        trained.steps, trained.losses[0]
    );
    drop(training);

    let request = &x[..SIZES[0]];
    // Cold: a model not on the device yet. Timed by hand so that freeing
    // each fresh copy falls outside the clock.
    let mut cold = f64::INFINITY;
    gpu.take_kernel_time();
    let mut cold_kernel = f64::INFINITY;
    for _ in 0..5 {
        let start = Instant::now();
        let fresh = GpuMlp::upload_with(gpu, Arc::clone(&blas), model).expect("upload");
        fresh.forward(gpu, request, 1).expect("GPU forward");
        cold = cold.min(start.elapsed().as_secs_f64());
        cold_kernel = cold_kernel.min(gpu.take_kernel_time().as_secs_f64());
        drop(fresh);
    }
    let cold_timing = common::Timing {
        seconds: cold,
        kernel_seconds: Some(cold_kernel),
        peak: common::Peak::of(gpu),
    };
    report("infer", "cold_load", "cuda", "requests", 1, cold_timing);
    // Warm: the resident model, its workspace already allocated.
    let (warm, _) = common::best_gpu(gpu, 20, || {
        resident.forward(gpu, request, 1).expect("GPU forward")
    });
    report("infer", "warm", "cuda", "requests", 1, warm);
    eprintln!(
        "  cache: cold load {:.3} ms, warm {:.3} ms",
        cold * 1e3,
        warm.seconds * 1e3
    );
}
