//! Times the transformer's GPU forward pass against its CPU twin.
//!
//! Run with `cargo run --release -p tandem-kernels --example
//! bench_transformer_gpu -- [--gpu]`
//!
//! The case is the seed's price model: 32 features, window 128, d_model
//! 256, 8 heads, 4 layers, ff 1024, causal, last-step pooling, sinusoidal
//! positions. With `--gpu` (`impl` "cuda"): the model is uploaded once,
//! outside the timing, and each repetition is one
//! [`GpuTransformer::forward`] of 1,000 windows, host inputs in and host
//! outputs back, as a worker serves a `predict_batch`; its first and last
//! windows are checked against the CPU twin. The CPU twin (`impl`
//! "rust_cpu") runs 100 windows, once (1,000 would take minutes on a
//! small host): compare per window. One `BENCH {...}` line per
//! measurement.
//!
//! `bench/transformer_torch.py price 1000 cuda` times the same request in
//! PyTorch CUDA (`scripts/gpu-check` runs both). Training runs on the GPU
//! too (`transformer_gpu::train`) but has no bench line yet: the GPU tests
//! check it against the CPU twin.

mod common;

use tandem_kernels::mlp_gpu;
use tandem_kernels::transformer::{self, Config, Pooling, Positions, Transformer};
use tandem_kernels::transformer_gpu::{self, GpuTransformer};

const WINDOWS: usize = 1000;
const CPU_WINDOWS: usize = 100;
const CASE: &str = "tf_f32_w128_d256_h8_l4";

fn config() -> Config {
    Config {
        features: 32,
        window: 128,
        d_model: 256,
        heads: 8,
        layers: 4,
        ff: 1024,
        outputs: 1,
        causal: true,
        pooling: Pooling::Last,
        positions: Positions::Sinusoidal,
    }
}

/// GEMM flops per window of a forward pass: 2 per multiply-add of the
/// input projection, the Q/K/V, output and feed-forward projections, the
/// scores and the contexts, and the head.
fn flops_per_window(c: &Config) -> u64 {
    let (t, f, d, ff) = (
        c.window as u64,
        c.features as u64,
        c.d_model as u64,
        c.ff as u64,
    );
    let per_layer = t * d * 3 * d + 2 * t * t * d + t * d * d + 2 * t * d * ff;
    2 * (t * f * d + c.layers as u64 * per_layer + d * c.outputs as u64)
}

fn report(implementation: &str, items: usize, timing: common::Timing) {
    common::Line {
        kind: "infer",
        unit: "windows",
        case: CASE,
        implementation,
        items: items as u64,
        timing,
        bytes: None,
        flops: Some(flops_per_window(&config()) * items as u64),
    }
    .print();
}

fn main() {
    let gpu = common::gpu_from_args("bench_transformer_gpu", transformer_gpu::SOURCE);
    let config = config();
    let model = Transformer::random(config, 5).expect("valid config");
    let per = config.window_floats();
    let mut state = 0x5EED_u64;
    let x: Vec<f32> = (0..WINDOWS * per)
        .map(|_| {
            // An LCG's top bits: plenty for bench data.
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            4.0 * ((state >> 40) as f32 / 16_777_216.0) - 2.0
        })
        .collect();

    let (seconds, cpu) = common::best(1, || {
        transformer::forward_cpu(&model, &x[..CPU_WINDOWS * per], CPU_WINDOWS).expect("forward")
    });
    report("rust_cpu", CPU_WINDOWS, common::Timing::cpu(seconds));
    eprintln!("  infer (cpu): output[0] {:.6}", cpu[0]);

    let Some(gpu) = gpu else { return };
    let blas = match mlp_gpu::cublas(&gpu) {
        Ok(blas) => blas,
        Err(err) if err.message.starts_with(mlp_gpu::CUBLAS_NOT_FOUND) => {
            eprintln!(
                "bench_transformer_gpu: skipped: no cuBLAS ({})",
                err.message
            );
            return;
        }
        Err(err) => panic!("cuBLAS on GPU {}: {err}", gpu.ordinal),
    };
    let resident = GpuTransformer::upload_with(&gpu, blas, &model).expect("upload");
    let (timing, outputs) = common::best_gpu(&gpu, 5, || {
        resident.forward(&gpu, &x, WINDOWS).expect("GPU forward")
    });
    report("cuda", WINDOWS, timing);
    let last = &x[(WINDOWS - 1) * per..];
    let expect_last = transformer::forward_cpu(&model, last, 1).expect("forward");
    for (what, got, expect) in [
        ("first", outputs[0], cpu[0]),
        ("last", outputs[WINDOWS - 1], expect_last[0]),
    ] {
        let error = (got - expect).abs() / expect.abs().max(1.0);
        eprintln!(
            "  infer (cuda): {what} window {got:.6}, CPU twin {expect:.6}, error {error:.1e}"
        );
        assert!(
            error <= 1e-4,
            "the GPU's {what} window is off the CPU twin's"
        );
    }
    eprintln!(
        "  workspace: {:.1} MiB for {WINDOWS} windows",
        resident.device_bytes() as f64 / 1_048_576.0
    );
}
