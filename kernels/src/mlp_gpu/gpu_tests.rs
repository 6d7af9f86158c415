use super::*;
use crate::mlp::{
    Activation, Optimizer, OptimizerState, TrainConfig, forward_cpu, train_cpu,
    train_step as train_step_cpu,
};

/// GPU 0 with the mlp module and a cuBLAS handle, or `None` after printing
/// why the test is skipped: a host without a usable libcublas (a
/// driver-only machine) skips the MLP's GPU tests with a message instead of
/// failing them; every other failure fails.
fn gpu() -> Option<Gpu> {
    let gpu = Gpu::open(0, &[SOURCE], None).expect("GPU 0");
    assert!(gpu.has(SOURCE.module), "{:?}", gpu.disabled);
    match cublas(&gpu) {
        Ok(_) => Some(gpu),
        Err(err) if err.message.starts_with(CUBLAS_NOT_FOUND) => {
            eprintln!("skipped: no cuBLAS ({})", err.message);
            None
        }
        Err(err) => panic!("cuBLAS on GPU 0: {err}"),
    }
}

/// A model with non-trivial biases and normalisation.
fn model(sizes: &[usize], activation: Activation) -> Mlp {
    let mut mlp = Mlp::random(sizes, activation, 42).expect("model");
    for (l, layer) in mlp.layers.iter_mut().enumerate() {
        for (o, b) in layer.bias.iter_mut().enumerate() {
            *b = 0.05 * ((o + l) as f32).sin();
        }
    }
    for k in 0..mlp.inputs() {
        mlp.input_mean[k] = 0.3 * k as f32;
        mlp.input_std[k] = 1.0 + 0.1 * k as f32;
    }
    mlp
}

fn inputs(rows: usize, width: usize, salt: f32) -> Vec<f32> {
    (0..rows * width)
        .map(|i| (i as f32 * 0.618 + salt).sin() * 2.0)
        .collect()
}

/// Each value within `tolerance` relative to the larger of 1 and the
/// reference's magnitude.
fn assert_close(what: &str, got: &[f32], expect: &[f32], tolerance: f32) {
    assert_eq!(got.len(), expect.len(), "{what}: lengths");
    for (i, (g, e)) in got.iter().zip(expect).enumerate() {
        assert!(
            (g - e).abs() <= tolerance * e.abs().max(1.0),
            "{what}[{i}]: GPU {g}, CPU {e}"
        );
    }
}

fn assert_models_close(what: &str, got: &Mlp, expect: &Mlp, tolerance: f32) {
    for (l, (g, e)) in got.layers.iter().zip(&expect.layers).enumerate() {
        assert_close(&format!("{what} W{l}"), &g.weight, &e.weight, tolerance);
        assert_close(&format!("{what} b{l}"), &g.bias, &e.bias, tolerance);
    }
}

/// One handle per GPU: every call and every upload shares it, on the
/// GPU's own stream.
#[test]
fn cublas_loads_once_per_gpu() {
    let Some(gpu) = gpu() else { return };
    let first = cublas(&gpu).expect("cuBLAS");
    let second = cublas(&gpu).expect("cuBLAS");
    assert!(Arc::ptr_eq(&first, &second));
    let mlp = model(&[4, 8, 1], Activation::Relu);
    let a = GpuMlp::upload(&gpu, &mlp).expect("upload");
    let b = GpuMlp::upload(&gpu, &mlp).expect("upload");
    assert!(Arc::ptr_eq(&a.model.blas, &first) && Arc::ptr_eq(&b.model.blas, &first));
    assert!(Arc::ptr_eq(&a.model.stream, gpu.stream()));
}

#[test]
fn forward_matches_the_cpu_twin() {
    let Some(gpu) = gpu() else { return };
    for activation in [Activation::Relu, Activation::Tanh] {
        let mlp = model(&[8, 32, 16, 3], activation);
        let device = GpuMlp::upload(&gpu, &mlp).expect("upload");
        for batch in [1, 37, 300] {
            let x = inputs(batch, 8, batch as f32);
            let got = device.forward(&gpu, &x, batch).expect("forward");
            let expect = forward_cpu(&mlp, &x, batch).expect("CPU forward");
            assert_close(&format!("{activation:?} b{batch}"), &got, &expect, 1e-4);
        }
    }
}

/// Uploaded once, the model serves many forwards of several sizes; the
/// workspace grows only for a larger batch, the parameters never change
/// and the same inputs give the same bits.
#[test]
fn a_model_uploaded_once_serves_many_forwards() {
    let Some(gpu) = gpu() else { return };
    let mlp = model(&[16, 64, 64, 2], Activation::Relu);
    let device = GpuMlp::upload(&gpu, &mlp).expect("upload");
    let resident = device.device_bytes();
    assert_eq!(resident, mlp.parameter_bytes());
    let big = inputs(512, 16, 0.5);
    let first = device.forward(&gpu, &big, 512).expect("forward");
    let with_workspace = device.device_bytes();
    assert_eq!(with_workspace, resident + GpuMlp::forward_bytes(&mlp, 512));
    for call in 0..50 {
        let batch = 1 + call * 10;
        let x = inputs(batch, 16, call as f32);
        let got = device.forward(&gpu, &x, batch).expect("forward");
        let expect = forward_cpu(&mlp, &x, batch).expect("CPU forward");
        assert_close(&format!("call {call}"), &got, &expect, 1e-4);
        assert_eq!(device.device_bytes(), with_workspace, "call {call}");
    }
    assert_eq!(device.forward(&gpu, &big, 512).expect("forward"), first);
    assert_eq!(device.download().expect("download"), mlp);
    assert!(device.forward(&gpu, &[], 0).expect("empty").is_empty());
    assert!(matches!(
        device.forward(&gpu, &big[..100], 512),
        Err(GpuMlpError::Invalid(MlpError::BadLength { .. }))
    ));
}

/// Two steps (so the optimiser's moments count) give the CPU twin's
/// weights and losses.
#[test]
fn training_steps_match_the_cpu_twin() {
    let Some(gpu) = gpu() else { return };
    let optimizers = [
        Optimizer::Sgd {
            lr: 0.05,
            momentum: 0.9,
        },
        Optimizer::adam(1e-2),
    ];
    for activation in [Activation::Relu, Activation::Tanh] {
        for optimizer in optimizers {
            let batch = 64;
            let mut cpu = model(&[6, 24, 12, 2], activation);
            let mut device = GpuMlp::upload(&gpu, &cpu).expect("upload");
            let x = inputs(batch, 6, 1.0);
            let y = inputs(batch, 2, 7.0);
            let indices: Vec<usize> = (0..batch).collect();
            let mut state = OptimizerState::new(&cpu);
            for step in 0..2 {
                let expect =
                    train_step_cpu(&mut cpu, &mut state, &x, &y, batch, &indices, &optimizer)
                        .expect("CPU step");
                let got = device
                    .train_step(&gpu, &x, &y, batch, &optimizer)
                    .expect("GPU step");
                let what = format!("{activation:?} {optimizer:?} step {step}");
                assert!(
                    (got - expect).abs() <= 1e-4 * expect.max(1.0),
                    "{what}: loss {got} vs {expect}"
                );
                assert_models_close(&what, &device.download().expect("download"), &cpu, 1e-4);
            }
        }
    }
}

/// y = sin(x1) + 0.5 x2^2 on a few thousand samples: the loss falls by
/// a large factor in a few epochs, as on the CPU, and starts where the
/// CPU's does.
#[test]
fn training_lowers_the_loss() {
    let Some(gpu) = gpu() else { return };
    let samples = 4096;
    let x = inputs(samples, 2, 0.0);
    let y: Vec<f32> = x
        .chunks_exact(2)
        .map(|p| p[0].sin() + 0.5 * p[1] * p[1])
        .collect();
    let config = TrainConfig {
        epochs: 8,
        batch_size: 128,
        optimizer: Optimizer::adam(1e-2),
        seed: 7,
    };
    let mut cpu = Mlp::random(&[2, 32, 32, 1], Activation::Tanh, 3).expect("model");
    let mut device = GpuMlp::upload(&gpu, &cpu).expect("upload");
    let report = device
        .train(&gpu, &x, &y, samples, &config)
        .expect("GPU training");
    let cpu_report = train_cpu(&mut cpu, &x, &y, samples, &config).expect("CPU training");
    assert_eq!(report.steps, cpu_report.steps);
    assert_eq!(report.steps, 8 * 32);
    let (first, last) = (report.losses[0], report.losses[7]);
    assert!(last < first / 10.0, "losses {:?}", report.losses);
    // Rounding differences grow over the epoch's steps; the first
    // epoch's running loss still agrees closely.
    assert!(
        (first - cpu_report.losses[0]).abs() <= 1e-2 * cpu_report.losses[0],
        "GPU {:?} CPU {:?}",
        report.losses,
        cpu_report.losses
    );
    // A second run goes on from the trained weights (with fresh
    // moments): its first epoch is far below the first run's.
    let again = device.train(&gpu, &x, &y, samples, &config).expect("again");
    assert!(again.losses[0] < first / 10.0, "{:?}", again.losses);
}
