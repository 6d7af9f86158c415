use super::*;
use crate::mlp_gpu::{CUBLAS_NOT_FOUND, cublas};
use crate::transformer::{
    AdamState, Optimizer, Pooling, TrainConfig, TrainWatch, forward_cpu, gradients_cpu,
    train_cpu_until, train_step,
};

/// GPU 0 with the transformer module and a cuBLAS handle, or `None` after
/// printing why the test is skipped: a host without a usable libcublas (a
/// driver-only machine) skips these tests with a message instead of
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

fn config(causal: bool, pooling: Pooling, positions: Positions) -> Config {
    Config {
        features: 5,
        window: 24,
        d_model: 32,
        heads: 4,
        layers: 2,
        ff: 64,
        outputs: 3,
        causal,
        pooling,
        positions,
    }
}

/// A seeded model with non-trivial normalisation, biases and gains.
fn model(config: Config) -> Transformer {
    let mut model = Transformer::random(config, 11).expect("model");
    let offsets = Offsets::new(&config);
    for k in 0..config.features {
        model.params[offsets.mean + k] = 0.2 * k as f32;
        model.params[offsets.std + k] = 1.0 + 0.3 * k as f32;
    }
    for (i, p) in model.params[2 * config.features..].iter_mut().enumerate() {
        *p += 0.05 * (i as f32 * 0.37).sin();
    }
    model
}

fn inputs(windows: usize, config: &Config, salt: f32) -> Vec<f32> {
    (0..windows * config.window_floats())
        .map(|i| (i as f32 * 0.618 + salt).sin() * 1.5)
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

/// Causal and not, each pooling, each positions kind: the GPU's forward is
/// the CPU twin's within 1e-4.
#[test]
fn forward_matches_the_cpu_twin() {
    let Some(gpu) = gpu() else { return };
    for causal in [false, true] {
        for pooling in [Pooling::Last, Pooling::Mean] {
            for positions in [Positions::Learned, Positions::Sinusoidal] {
                let config = config(causal, pooling, positions);
                let model = model(config);
                let x = inputs(9, &config, 0.3);
                let expect = forward_cpu(&model, &x, 9).expect("cpu");
                let resident = GpuTransformer::upload(&gpu, &model).expect("upload");
                let got = resident.forward(&gpu, &x, 9).expect("GPU forward");
                let what = format!("causal {causal}, {pooling:?}, {positions:?}");
                assert_close(&what, &got, &expect, 1e-4);
                // The same resident model again: the same bits.
                let again = resident.forward(&gpu, &x, 9).expect("GPU forward");
                assert_eq!(got, again, "{what}: a second run");
            }
        }
    }
}

/// A batch larger than the workspace allowed is cut into runs, and gives
/// the same answer as one pass; the workspace stays within the cap.
#[test]
fn a_batch_larger_than_the_workspace_is_cut() {
    let Some(gpu) = gpu() else { return };
    let config = config(true, Pooling::Mean, Positions::Learned);
    let model = model(config);
    let x = inputs(11, &config, 1.1);
    let whole = GpuTransformer::upload(&gpu, &model)
        .expect("upload")
        .forward(&gpu, &x, 11)
        .expect("one pass");
    let mut small = GpuTransformer::upload(&gpu, &model).expect("upload");
    small.set_max_batch(4);
    let cut = small.forward(&gpu, &x, 11).expect("cut");
    assert_close("cut against whole", &cut, &whole, 1e-5);
    assert_close(
        "cut against the CPU",
        &cut,
        &forward_cpu(&model, &x, 11).expect("cpu"),
        1e-4,
    );
    assert_eq!(
        small.device_bytes(),
        GpuTransformer::forward_bytes(&config, 4),
        "the workspace holds 4 windows"
    );
}

/// What the ledger books for a pass of `batch` windows is what the model
/// holds after one; a forward of no windows is empty; download gives the
/// parameters back bit for bit.
#[test]
fn device_bytes_and_download() {
    let Some(gpu) = gpu() else { return };
    let config = config(false, Pooling::Last, Positions::Sinusoidal);
    let model = model(config);
    let resident = GpuTransformer::upload(&gpu, &model).expect("upload");
    assert_eq!(
        resident.device_bytes(),
        GpuTransformer::forward_bytes(&config, 0)
    );
    assert!(resident.forward(&gpu, &[], 0).expect("empty").is_empty());
    resident
        .forward(&gpu, &inputs(6, &config, 0.0), 6)
        .expect("forward");
    assert_eq!(
        resident.device_bytes(),
        GpuTransformer::forward_bytes(&config, 6)
    );
    // Freed on a shared model, the workspace is gone; the next forward
    // allocates again and gives the same outputs.
    let before = resident
        .forward(&gpu, &inputs(6, &config, 0.0), 6)
        .expect("forward");
    resident.free_workspace();
    assert_eq!(
        resident.device_bytes(),
        GpuTransformer::forward_bytes(&config, 0)
    );
    let again = resident
        .forward(&gpu, &inputs(6, &config, 0.0), 6)
        .expect("forward after the workspace was freed");
    assert_eq!(before, again);
    assert_eq!(resident.download().expect("download"), model);
}

/// Inputs of the wrong length fail as the CPU twin's do, naming them.
#[test]
fn bad_inputs_are_refused_by_name() {
    let Some(gpu) = gpu() else { return };
    let config = config(false, Pooling::Last, Positions::Learned);
    let resident = GpuTransformer::upload(&gpu, &model(config)).expect("upload");
    let err = resident
        .forward(&gpu, &[0.0; 7], 1)
        .expect_err("7 floats are not a window");
    assert!(
        matches!(err, GpuTransformerError::Invalid(_)) && err.to_string().contains("inputs"),
        "{err}"
    );
}

/// The realistic model (d_model 256, 4 layers, 8 heads, window 128, 32
/// features) over 1,000 windows: the first and last windows agree with the
/// CPU twin (which runs only those, to keep the test short).
#[test]
fn the_realistic_model_matches_on_its_ends() {
    let Some(gpu) = gpu() else { return };
    let config = Config {
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
    };
    let model = Transformer::random(config, 3).expect("model");
    let windows = 1000;
    let x = inputs(windows, &config, 0.7);
    let resident = GpuTransformer::upload(&gpu, &model).expect("upload");
    let got = resident.forward(&gpu, &x, windows).expect("GPU forward");
    let per = config.window_floats();
    for w in [0, windows - 1] {
        let expect = forward_cpu(&model, &x[w * per..(w + 1) * per], 1).expect("cpu");
        assert_close(&format!("window {w}"), &got[w..w + 1], &expect, 1e-4);
    }
}

fn targets(windows: usize, config: &Config) -> Vec<f32> {
    (0..windows * config.outputs)
        .map(|i| (i as f32 * 0.9).cos())
        .collect()
}

/// Each gradient within `tolerance` of the CPU twin's, relative to the
/// largest (sums of many terms round differently on the GPU).
fn assert_gradients_close(what: &str, got: &[f32], expect: &[f32], tolerance: f32) {
    assert_eq!(got.len(), expect.len(), "{what}: lengths");
    let scale = expect.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert!(scale > 0.0, "{what}: an all-zero gradient checks nothing");
    for (i, (g, e)) in got.iter().zip(expect).enumerate() {
        assert!(
            (g - e).abs() <= tolerance * scale,
            "{what}[{i}]: GPU {g}, CPU {e} (largest {scale})"
        );
    }
}

/// Causal and not, each pooling, each positions kind: the GPU's gradient
/// and loss are the CPU twin's, and one optimiser step (SGD with momentum,
/// then Adam) leaves the weights within 1e-4 of the CPU twin's step.
#[test]
fn one_training_step_matches_the_cpu_twin() {
    let Some(gpu) = gpu() else { return };
    for causal in [false, true] {
        for pooling in [Pooling::Last, Pooling::Mean] {
            for positions in [Positions::Learned, Positions::Sinusoidal] {
                let config = config(causal, pooling, positions);
                let model = model(config);
                let what = format!("causal {causal}, {pooling:?}, {positions:?}");
                let (x, y) = (inputs(9, &config, 0.4), targets(9, &config));
                let (expect, loss) = gradients_cpu(&model, &x, &y, 9).expect("cpu");
                let mut resident = GpuTransformer::upload(&gpu, &model).expect("upload");
                let (got, got_loss) = resident.gradients(&gpu, &x, &y, 9).expect("GPU gradient");
                assert_gradients_close(&what, &got, &expect, 1e-4);
                assert!(
                    (got_loss - loss).abs() <= 1e-4 * loss,
                    "{what}: loss GPU {got_loss}, CPU {loss}"
                );
                assert_eq!(resident.download().expect("download"), model, "{what}");
                let scale = expect.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                for optimizer in [
                    Optimizer::Sgd {
                        lr: 0.05,
                        momentum: 0.9,
                    },
                    Optimizer::Adam {
                        lr: 1e-3,
                        beta1: 0.9,
                        beta2: 0.999,
                        eps: 1e-8,
                    },
                ] {
                    let mut cpu = model.clone();
                    let mut state = AdamState::new(&cpu);
                    train_step(&mut cpu, &mut state, &x, &y, 9, &optimizer).expect("cpu step");
                    let mut resident = GpuTransformer::upload(&gpu, &model).expect("upload");
                    resident
                        .train_step(&gpu, &x, &y, 9, &optimizer)
                        .expect("GPU step");
                    let stepped = resident.download().expect("download");
                    for (i, ((g, c), grad)) in stepped
                        .params
                        .iter()
                        .zip(&cpu.params)
                        .zip(&expect)
                        .enumerate()
                    {
                        // Adam's first step moves each weight by about lr
                        // times the sign of its gradient: a gradient within
                        // rounding of zero has no sign to agree on.
                        if matches!(optimizer, Optimizer::Adam { .. }) && grad.abs() < 1e-4 * scale
                        {
                            continue;
                        }
                        assert!(
                            (g - c).abs() <= 1e-4 * c.abs().max(1.0),
                            "{what}, {optimizer:?}: weight {i}: GPU {g}, CPU {c}"
                        );
                    }
                }
            }
        }
    }
}

/// A mini-batch cut into runs of 2 windows (the workspace capped) gives
/// the gradient of one run, and the training state is what it booked.
#[test]
fn a_mini_batch_cut_into_runs_gives_the_same_gradient() {
    let Some(gpu) = gpu() else { return };
    let config = config(true, Pooling::Last, Positions::Learned);
    let model = model(config);
    let (x, y) = (inputs(7, &config, 2.0), targets(7, &config));
    let mut whole = GpuTransformer::upload(&gpu, &model).expect("upload");
    let (one_run, _) = whole.gradients(&gpu, &x, &y, 7).expect("one run");
    let mut cut = GpuTransformer::upload(&gpu, &model).expect("upload");
    cut.set_max_batch(2);
    let (runs, _) = cut.gradients(&gpu, &x, &y, 7).expect("runs");
    assert_gradients_close("runs against one run", &runs, &one_run, 1e-5);
    assert_eq!(
        cut.device_bytes(),
        GpuTransformer::train_bytes(&config, 2),
        "parameters, moments, gradient and the buffers of 2 windows"
    );
    cut.release_training();
    assert_eq!(
        cut.device_bytes(),
        GpuTransformer::forward_bytes(&config, 0)
    );
}

/// Training on the GPU learns a pattern (the next value of a sine, as the
/// CPU twin's `training_learns_a_pattern`): its epoch loss falls five-fold
/// in 30 epochs, its runs cut to 5 windows, and its first epoch's loss is
/// the twin's within 1e-2.
#[test]
fn training_on_the_gpu_lowers_the_loss() {
    let Some(gpu) = gpu() else { return };
    let config = Config {
        features: 1,
        window: 8,
        d_model: 16,
        heads: 2,
        layers: 1,
        ff: 32,
        outputs: 1,
        causal: true,
        pooling: Pooling::Last,
        positions: Positions::Sinusoidal,
    };
    let model = Transformer::random(config, 21).expect("model");
    let (x, y, samples) = sine_pattern(&config);
    let train = TrainConfig {
        epochs: 30,
        batch_size: 16,
        optimizer: Optimizer::adam(3e-3),
        seed: 1,
    };
    let mut resident = GpuTransformer::upload(&gpu, &model).expect("upload");
    resident.set_max_batch(5);
    let report = resident
        .train_until(&gpu, &x, &y, samples, &train, TrainWatch::NONE)
        .expect("GPU training");
    let mut twin = model.clone();
    let expect =
        train_cpu_until(&mut twin, &x, &y, samples, &train, TrainWatch::NONE).expect("cpu");
    assert_eq!(report.steps, expect.steps);
    let (first, last) = (report.losses[0], report.losses[train.epochs - 1]);
    assert!(last < first / 5.0, "GPU losses {:?}", report.losses);
    // Within 1e-2: after the first step the two runs' weights differ by
    // rounding, which Adam's sign-like first steps can widen on gradients
    // near zero.
    assert!(
        (first - expect.losses[0]).abs() <= 1e-2 * expect.losses[0],
        "first epoch: GPU {:?}, CPU {:?}",
        report.losses,
        expect.losses
    );
}

/// 64 windows of a sine at different phases; the target is its next value.
fn sine_pattern(config: &Config) -> (Vec<f32>, Vec<f32>, usize) {
    let samples = 64;
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for s in 0..samples {
        let phase = s as f32 * 0.37;
        for t in 0..config.window {
            x.push((phase + 0.5 * t as f32).sin());
        }
        y.push((phase + 0.5 * config.window as f32).sin());
    }
    (x, y, samples)
}
