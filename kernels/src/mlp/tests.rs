use super::gemm::{Epilogue, Kernel, Packed, gemm_rows, row_major};
use super::*;
use crate::philox;

/// A network with seeded weights, biases and a normalisation that is
/// not the identity, so every term of the forward pass matters.
fn fixture(sizes: &[usize], activation: Activation, seed: u64) -> Mlp {
    let mut mlp = Mlp::random(sizes, activation, seed).expect("valid sizes");
    let mut state = seed ^ 0xABCD;
    for layer in &mut mlp.layers {
        for b in &mut layer.bias {
            *b = 0.2 * (unit_f32(splitmix64(&mut state)) - 0.5);
        }
    }
    for k in 0..mlp.inputs() {
        mlp.input_mean[k] = unit_f32(splitmix64(&mut state)) - 0.5;
        mlp.input_std[k] = 0.5 + unit_f32(splitmix64(&mut state));
    }
    mlp
}

fn uniform(count: usize, low: f32, high: f32, seed: u64) -> Vec<f32> {
    let mut state = seed;
    (0..count)
        .map(|_| low + (high - low) * unit_f32(splitmix64(&mut state)))
        .collect()
}

/// The network in f64 with plain loops, parameters given as f64.
fn reference_forward(
    mlp: &Mlp,
    weights: &[Vec<f64>],
    biases: &[Vec<f64>],
    row: &[f32],
) -> Vec<f64> {
    let mut current: Vec<f64> = row
        .iter()
        .enumerate()
        .map(|(k, v)| (f64::from(*v) - f64::from(mlp.input_mean[k])) / f64::from(mlp.input_std[k]))
        .collect();
    let last = mlp.layers.len() - 1;
    for (index, layer) in mlp.layers.iter().enumerate() {
        current = (0..layer.outputs)
            .map(|o| {
                let mut sum = biases[index][o];
                for k in 0..layer.inputs {
                    sum += weights[index][o * layer.inputs + k] * current[k];
                }
                match (index < last, mlp.activation) {
                    (false, _) => sum,
                    (true, Activation::Relu) => sum.max(0.0),
                    (true, Activation::Tanh) => sum.tanh(),
                }
            })
            .collect();
    }
    current
}

fn parameters_f64(mlp: &Mlp) -> (Vec<Vec<f64>>, Vec<Vec<f64>>) {
    let widen = |v: &Vec<f32>| v.iter().map(|x| f64::from(*x)).collect();
    (
        mlp.layers.iter().map(|l| widen(&l.weight)).collect(),
        mlp.layers.iter().map(|l| widen(&l.bias)).collect(),
    )
}

#[test]
fn forward_matches_f64_reference() {
    let cases: &[(&[usize], Activation, usize)] = &[
        (&[3, 5, 2], Activation::Relu, 1),
        (&[8, 16, 16, 2], Activation::Tanh, 37),
        (&[64, 256, 256, 1], Activation::Relu, 300),
        (&[10, 33, 7], Activation::Tanh, 257),
    ];
    for (seed, &(sizes, activation, batch)) in cases.iter().enumerate() {
        let mlp = fixture(sizes, activation, seed as u64);
        let inputs = uniform(batch * sizes[0], -2.0, 2.0, 100 + seed as u64);
        let got = forward_cpu(&mlp, &inputs, batch).expect("forward");
        let (weights, biases) = parameters_f64(&mlp);
        for (row, chunk) in inputs.chunks_exact(sizes[0]).enumerate() {
            let expect = reference_forward(&mlp, &weights, &biases, chunk);
            for (o, e) in expect.iter().enumerate() {
                let g = f64::from(got[row * mlp.outputs() + o]);
                assert!(
                    (g - e).abs() <= 1e-5 * e.abs().max(1.0),
                    "{sizes:?} row {row} output {o}: {g} vs {e}"
                );
            }
        }
    }
}

#[test]
fn normalisation_is_applied() {
    // One identity layer: the output is the normalised input.
    let mlp = Mlp {
        layers: vec![Layer {
            inputs: 2,
            outputs: 2,
            weight: vec![1.0, 0.0, 0.0, 1.0],
            bias: vec![0.0, 0.5],
        }],
        activation: Activation::Relu,
        input_mean: vec![1.0, 2.0],
        input_std: vec![2.0, 4.0],
    };
    let out = forward_cpu(&mlp, &[3.0, 10.0, -1.0, 2.0], 2).expect("forward");
    assert_eq!(out, vec![1.0, 2.5, -1.0, 0.5]);
}

/// Every SIMD build computes the same bits as the portable one.
#[test]
fn simd_builds_agree_with_portable() {
    let (rows, depth, cols) = (45, 70, 75);
    let a = uniform(rows * depth, -1.0, 1.0, 1);
    let b = uniform(cols * depth, -1.0, 1.0, 2);
    let bias = uniform(cols, -1.0, 1.0, 3);
    let run = |simd| {
        let kernel = Kernel { simd };
        let packed = Packed::pack(kernel, row_major(&b, cols, depth));
        let epilogue = Epilogue {
            bias: Some(&bias),
            activation: Some(Activation::Tanh),
            derivative: None,
        };
        let mut out = vec![0.0; rows * cols];
        gemm_rows(
            kernel,
            row_major(&a, rows, depth),
            0..rows,
            &packed,
            epilogue,
            &mut out,
        );
        out
    };
    let portable = run(philox::Simd::Portable);
    assert_eq!(run(Kernel::detect().simd), portable);
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        assert_eq!(run(philox::Simd::Avx2), portable);
    }
}

/// Central differences of the f64 reference loss against the f32
/// gradients, on every parameter of a tiny network.
#[test]
fn gradients_match_finite_differences() {
    for activation in [Activation::Relu, Activation::Tanh] {
        let mlp = fixture(&[3, 5, 4, 2], activation, 7);
        let samples = 9;
        let x = uniform(samples * 3, -1.5, 1.5, 8);
        let y = uniform(samples * 2, -1.0, 1.0, 9);
        let indices = [4, 0, 8, 2, 2, 7];
        let (loss, gradients) = gradients_cpu(&mlp, &x, &y, samples, &indices).expect("grads");
        let (weights, biases) = parameters_f64(&mlp);
        let reference_loss = |weights: &[Vec<f64>], biases: &[Vec<f64>]| {
            let mut sum = 0.0;
            for &i in &indices {
                let out = reference_forward(&mlp, weights, biases, &x[i * 3..i * 3 + 3]);
                for (o, p) in out.iter().enumerate() {
                    sum += (p - f64::from(y[i * 2 + o])).powi(2);
                }
            }
            sum / (indices.len() * 2) as f64
        };
        let base = reference_loss(&weights, &biases);
        assert!(
            (loss - base).abs() <= 1e-6 * base.max(1.0),
            "{loss} vs {base}"
        );
        let h = 1e-6;
        let mut largest = 0.0f64;
        let mut worst = 0.0f64;
        for layer in 0..mlp.layers.len() {
            for (is_bias, count) in [(false, weights[layer].len()), (true, biases[layer].len())] {
                for e in 0..count {
                    let shifted = |delta: f64| {
                        let (mut w, mut b) = (weights.clone(), biases.clone());
                        let target = if is_bias {
                            &mut b[layer][e]
                        } else {
                            &mut w[layer][e]
                        };
                        *target += delta;
                        reference_loss(&w, &b)
                    };
                    let numeric = (shifted(h) - shifted(-h)) / (2.0 * h);
                    let analytic = f64::from(if is_bias {
                        gradients.bias[layer][e]
                    } else {
                        gradients.weight[layer][e]
                    });
                    largest = largest.max(numeric.abs());
                    worst = worst.max((numeric - analytic).abs());
                }
            }
        }
        assert!(largest > 1e-3, "{activation:?}: gradients vanish");
        assert!(
            worst <= 1e-4 * largest,
            "{activation:?}: error {worst} of {largest}"
        );
    }
}

/// y = sin(x1) + 0.5 x2^2 + noise over x in [-2, 2]^2.
fn regression_set(samples: usize) -> (Vec<f32>, Vec<f32>) {
    let x = uniform(samples * 2, -2.0, 2.0, 11);
    let noise = uniform(samples, -0.05, 0.05, 12);
    let y = x
        .chunks_exact(2)
        .zip(&noise)
        .map(|(row, n)| row[0].sin() + 0.5 * row[1] * row[1] + n)
        .collect();
    (x, y)
}

#[test]
fn training_lowers_the_loss() {
    let samples = 2048;
    let (x, y) = regression_set(samples);
    let optimizers = [
        (Optimizer::adam(0.01), Activation::Tanh),
        (
            Optimizer::Sgd {
                lr: 0.05,
                momentum: 0.9,
            },
            Activation::Relu,
        ),
    ];
    for (optimizer, activation) in optimizers {
        let mut mlp = Mlp::random(&[2, 32, 32, 1], activation, 3).expect("sizes");
        let before = loss_cpu(&mlp, &x, &y, samples).expect("loss");
        let config = TrainConfig {
            epochs: 30,
            batch_size: 64,
            optimizer,
            seed: 5,
        };
        let report = train_cpu(&mut mlp, &x, &y, samples, &config).expect("train");
        let after = loss_cpu(&mlp, &x, &y, samples).expect("loss");
        assert_eq!(report.steps, 30 * 32);
        assert_eq!(report.losses.len(), 30);
        assert!(
            report.losses[29] < report.losses[0],
            "{optimizer:?}: {:?}",
            report.losses
        );
        assert!(after < before / 20.0, "{optimizer:?}: {before} -> {after}");
    }
}

fn on_threads<T: Send>(threads: usize, run: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool")
        .install(run)
}

#[test]
fn same_bits_on_one_and_four_threads() {
    let mlp = fixture(&[64, 256, 256, 1], Activation::Relu, 21);
    let batch = 700;
    let inputs = uniform(batch * 64, -2.0, 2.0, 22);
    let one = on_threads(1, || forward_cpu(&mlp, &inputs, batch)).expect("forward");
    let four = on_threads(4, || forward_cpu(&mlp, &inputs, batch)).expect("forward");
    assert_eq!(one, four);

    let samples = 600;
    let (x, y) = regression_set(samples);
    let train = || {
        let mut net = fixture(&[2, 64, 64, 1], Activation::Tanh, 23);
        let config = TrainConfig {
            epochs: 2,
            batch_size: 200,
            optimizer: Optimizer::adam(0.01),
            seed: 24,
        };
        let report = train_cpu(&mut net, &x, &y, samples, &config).expect("train");
        (net, report)
    };
    assert_eq!(on_threads(1, train), on_threads(4, train));
}

#[test]
fn epoch_order_is_a_seeded_permutation() {
    let order = epoch_order(1000, 1, 0);
    let mut sorted = order.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
    assert_ne!(order, (0..1000).collect::<Vec<_>>());
    assert_eq!(order, epoch_order(1000, 1, 0));
    assert_ne!(order, epoch_order(1000, 1, 1));
    assert_ne!(order, epoch_order(1000, 2, 0));
}

#[test]
fn bad_shapes_are_errors() {
    let mlp = fixture(&[3, 4, 2], Activation::Relu, 1);
    let err = forward_cpu(&mlp, &[0.0; 7], 2).expect_err("short inputs");
    assert_eq!(
        err,
        MlpError::BadLength {
            what: "inputs",
            expected: 6,
            rows: 2,
            width: 3,
            got: 7
        }
    );
    assert!(err.to_string().contains("expected 6 floats"), "{err}");

    let mut broken = mlp.clone();
    broken.layers[1].inputs = 5;
    broken.layers[1].weight = vec![0.0; 10];
    assert!(matches!(
        forward_cpu(&broken, &[0.0; 3], 1),
        Err(MlpError::BadLayer { layer: 1, .. })
    ));
    let mut broken = mlp.clone();
    broken.layers[0].bias.pop();
    assert!(matches!(
        broken.check(),
        Err(MlpError::BadLayer { layer: 0, .. })
    ));
    let mut broken = mlp.clone();
    broken.input_std[2] = 0.0;
    assert!(matches!(broken.check(), Err(MlpError::BadNormalisation(_))));
    let empty = Mlp {
        layers: vec![],
        ..mlp.clone()
    };
    assert_eq!(forward_cpu(&empty, &[], 0), Err(MlpError::NoLayers));

    let (x, y) = (vec![0.0; 12], vec![0.0; 8]);
    let mut net = mlp.clone();
    let config = TrainConfig {
        epochs: 1,
        batch_size: 2,
        optimizer: Optimizer::adam(0.01),
        seed: 1,
    };
    assert!(matches!(
        train_cpu(&mut net, &x, &y[..7], 4, &config),
        Err(MlpError::BadLength {
            what: "targets",
            ..
        })
    ));
    let zero_batch = TrainConfig {
        batch_size: 0,
        ..config
    };
    assert!(matches!(
        train_cpu(&mut net, &x, &y, 4, &zero_batch),
        Err(MlpError::BadTraining(_))
    ));
    let bad_lr = TrainConfig {
        optimizer: Optimizer::adam(f32::NAN),
        ..config
    };
    assert!(matches!(
        train_cpu(&mut net, &x, &y, 4, &bad_lr),
        Err(MlpError::BadTraining(_))
    ));
    let mut state = OptimizerState::new(&net);
    let out_of_range = train_step(&mut net, &mut state, &x, &y, 4, &[0, 4], &config.optimizer);
    assert!(matches!(out_of_range, Err(MlpError::BadTraining(m)) if m.contains("index 4")));
    let other = OptimizerState::new(&fixture(&[3, 5, 2], Activation::Relu, 1));
    let mut other = other;
    assert!(train_step(&mut net, &mut other, &x, &y, 4, &[0], &config.optimizer).is_err());
    assert_eq!(net, mlp, "failed calls leave the network as it was");
}

#[test]
fn training_stops_between_epochs_when_asked() {
    let samples = 256;
    let (x, y) = regression_set(samples);
    let config = TrainConfig {
        epochs: 10,
        batch_size: 64,
        optimizer: Optimizer::adam(0.01),
        seed: 5,
    };
    // Stopped before the third epoch: the weights are those after two.
    let asked = std::cell::Cell::new(0);
    let stop = || {
        asked.set(asked.get() + 1);
        asked.get() > 2
    };
    let mut stopped = Mlp::random(&[2, 8, 1], Activation::Tanh, 3).expect("sizes");
    let err = crate::mlp::train_cpu_until(
        &mut stopped,
        &x,
        &y,
        samples,
        &config,
        crate::mlp::TrainWatch {
            stop: &stop,
            epoch_done: &|_, _| {},
        },
    );
    assert!(matches!(err, Err(MlpError::Stopped)), "{err:?}");
    assert_eq!(asked.get(), 3);

    let mut two = Mlp::random(&[2, 8, 1], Activation::Tanh, 3).expect("sizes");
    let config = TrainConfig {
        epochs: 2,
        ..config
    };
    train_cpu(&mut two, &x, &y, samples, &config).expect("train");
    assert_eq!(stopped, two);
}
