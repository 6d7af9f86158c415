use super::*;

fn small(causal: bool, pooling: Pooling, positions: Positions) -> Config {
    Config {
        features: 3,
        window: 5,
        d_model: 8,
        heads: 2,
        layers: 2,
        ff: 16,
        outputs: 2,
        causal,
        pooling,
        positions,
    }
}

fn inputs(config: &Config, batch: usize, seed: u64) -> Vec<f32> {
    let mut state = seed;
    (0..batch * config.window_floats())
        .map(|_| 2.0 * unit_f32(splitmix64(&mut state)) - 1.0)
        .collect()
}

#[test]
fn bad_configs_name_the_field() {
    let mut config = small(false, Pooling::Last, Positions::Learned);
    config.heads = 3;
    let error = Transformer::random(config, 1).unwrap_err().to_string();
    assert!(
        error.contains("heads") && error.contains("d_model 8"),
        "{error}"
    );
    config.heads = 2;
    config.window = 0;
    let error = Transformer::random(config, 1).unwrap_err().to_string();
    assert!(error.contains("window"), "{error}");
}

#[test]
fn wrong_lengths_are_refused() {
    let model = Transformer::random(small(false, Pooling::Last, Positions::Learned), 1).unwrap();
    let error = forward_cpu(&model, &[0.0; 7], 1).unwrap_err().to_string();
    assert!(
        error.contains("inputs") && error.contains("expected 15"),
        "{error}"
    );
    let mut broken = model.clone();
    broken.params.pop();
    assert!(matches!(
        forward_cpu(&broken, &[0.0; 15], 1),
        Err(TransformerError::BadParameters { .. })
    ));
}

/// The analytic gradient against central differences in every tensor, in
/// every variant (mask, pooling, positions).
#[test]
fn gradients_match_finite_differences() {
    for (causal, pooling, positions) in [
        (false, Pooling::Last, Positions::Learned),
        (true, Pooling::Mean, Positions::Sinusoidal),
        (true, Pooling::Last, Positions::Learned),
    ] {
        let config = small(causal, pooling, positions);
        let mut model = Transformer::random(config, 7).unwrap();
        // Gains and biases away from 1 and 0, so their gradients matter.
        let mut state = 99;
        for p in model.params.iter_mut().skip(2 * config.features) {
            *p += 0.1 * (2.0 * unit_f32(splitmix64(&mut state)) - 1.0);
        }
        let batch = 3;
        let x = inputs(&config, batch, 3);
        let y: Vec<f32> = (0..batch * config.outputs)
            .map(|i| 0.3 * i as f32 - 0.5)
            .collect();
        let (grad, _) = gradients_cpu(&model, &x, &y, batch).unwrap();
        let names = tensor_list(&config);
        let mut offset = 0;
        for (name, shape) in names {
            let count: usize = shape.iter().product();
            // A few entries of each tensor.
            for j in [0, count / 2, count - 1] {
                let i = offset + j;
                if i < 2 * config.features {
                    continue;
                }
                let h = 1e-2f32;
                let mut plus = model.clone();
                plus.params[i] += h;
                let mut minus = model.clone();
                minus.params[i] -= h;
                let numeric = (loss_cpu(&plus, &x, &y, batch).unwrap()
                    - loss_cpu(&minus, &x, &y, batch).unwrap())
                    / (2.0 * f64::from(h));
                let analytic = f64::from(grad[i]);
                assert!(
                    (numeric - analytic).abs() <= 2e-3 + 2e-2 * numeric.abs(),
                    "{name}[{j}] ({causal}, {pooling:?}, {positions:?}): numeric {numeric}, analytic {analytic}"
                );
            }
            offset += count;
        }
    }
}

/// Under the causal mask a step never sees later steps: a model of window
/// 3 sharing every weight (its positions the first 3 rows) gives the same
/// last-step output for the first 3 steps of a window whatever steps 3 and
/// 4 hold, while the window-5 model's output moves with them.
#[test]
fn the_causal_mask_hides_the_future() {
    let config = small(true, Pooling::Last, Positions::Learned);
    let model = Transformer::random(config, 5).unwrap();
    let x = inputs(&config, 1, 11);
    let mut changed = x.clone();
    for v in &mut changed[3 * config.features..] {
        *v += 1.0;
    }
    assert_ne!(
        forward_cpu(&model, &x, 1).unwrap(),
        forward_cpu(&model, &changed, 1).unwrap(),
        "the last step sees itself"
    );
    let at = Offsets::new(&config).position.unwrap();
    let d = config.d_model;
    let mut params = model.params[..at + 3 * d].to_vec();
    params.extend_from_slice(&model.params[at + 5 * d..]);
    let short = Transformer {
        config: Config {
            window: 3,
            ..config
        },
        params,
    };
    let prefix = 3 * config.features;
    assert_eq!(
        forward_cpu(&short, &x[..prefix], 1).unwrap(),
        forward_cpu(&short, &changed[..prefix], 1).unwrap()
    );
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    let config = small(true, Pooling::Last, Positions::Learned);
    let model = Transformer::random(config, 3).unwrap();
    let batch = 13;
    let x = inputs(&config, batch, 4);
    let y = vec![0.25; batch * config.outputs];
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            (
                forward_cpu(&model, &x, batch).unwrap(),
                gradients_cpu(&model, &x, &y, batch).unwrap(),
            )
        })
    };
    assert_eq!(run(1), run(3));
}

/// A synthetic series with a known pattern (the next value of a sine whose
/// phase the window shows): training brings the loss down.
#[test]
fn training_learns_a_pattern() {
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
    let mut model = Transformer::random(config, 21).unwrap();
    let samples = 64;
    let mut x = Vec::new();
    let mut y = Vec::new();
    for s in 0..samples {
        let phase = s as f32 * 0.37;
        for t in 0..config.window {
            x.push((phase + 0.5 * t as f32).sin());
        }
        y.push((phase + 0.5 * config.window as f32).sin());
    }
    let before = loss_cpu(&model, &x, &y, samples).unwrap();
    let train = TrainConfig {
        epochs: 30,
        batch_size: 16,
        optimizer: Optimizer::adam(3e-3),
        seed: 1,
    };
    let report = train_cpu_until(&mut model, &x, &y, samples, &train, TrainWatch::NONE).unwrap();
    let after = loss_cpu(&model, &x, &y, samples).unwrap();
    assert_eq!(report.steps, 30 * 4);
    assert!(after < before / 5.0, "loss {before} -> {after}");
}

/// `tandem model new --arch transformer` makes its weights in the shared
/// crate; they are these bits, in this order.
#[test]
fn the_file_formats_random_weights_are_the_twins() {
    use tandem_shared::model_format::transformer as format;
    for positions in [Positions::Learned, Positions::Sinusoidal] {
        let config = Config {
            positions,
            ..small(true, Pooling::Mean, positions)
        };
        let ours = Transformer::random(config, 42).unwrap();
        let shape = format::TransformerShape {
            features: config.features,
            window: config.window,
            d_model: config.d_model,
            heads: config.heads,
            layers: config.layers,
            ff: config.ff,
            outputs: config.outputs,
            causal: config.causal,
            pooling: format::Pooling::Mean,
            positions: match positions {
                Positions::Learned => format::Positions::Learned,
                Positions::Sinusoidal => format::Positions::Sinusoidal,
            },
        };
        let file = format::TransformerModel::random(shape, 42).unwrap();
        assert_eq!(file.params, ours.params);
        let names: Vec<_> = shape.tensors();
        assert_eq!(names, tensor_list(&config));
        assert_eq!(shape.parameter_count() as usize, config.parameter_count());
    }
}

/// The independent NumPy reference (`bench/transformer_numpy.py
/// reference`, its output committed as `numpy_reference.txt`): the same
/// closed-form weights and inputs, every variant, within 1e-5 relative.
#[test]
fn outputs_match_the_numpy_reference() {
    let reference = include_str!("numpy_reference.txt");
    let mut checked = 0;
    for line in reference.lines() {
        let mut fields = line.split_whitespace();
        let name = fields.next().unwrap();
        let expected: Vec<f32> = fields.map(|v| v.parse().unwrap()).collect();
        let config = Config {
            features: 3,
            window: 6,
            d_model: 8,
            heads: 2,
            layers: 2,
            ff: 12,
            outputs: 2,
            causal: name.contains("causal=true"),
            pooling: if name.contains("pooling=mean") {
                Pooling::Mean
            } else {
                Pooling::Last
            },
            positions: if name.contains("positions=sinusoidal") {
                Positions::Sinusoidal
            } else {
                Positions::Learned
            },
        };
        let f = config.features;
        let params: Vec<f32> = (0..config.parameter_count())
            .map(|i| match i {
                i if i < f => 0.1 * i as f32,
                i if i < 2 * f => 1.0 + 0.25 * (i - f) as f32,
                i => (0.3 * (0.7 * i as f64 + 0.1).sin()) as f32,
            })
            .collect();
        let model = Transformer { config, params };
        let batch = 4;
        let x: Vec<f32> = (0..batch * config.window_floats())
            .map(|j| ((0.37 * j as f64).sin() + 0.1 * (1.3 * j as f64).cos()) as f32)
            .collect();
        let ours = forward_cpu(&model, &x, batch).unwrap();
        assert_eq!(ours.len(), expected.len(), "{name}");
        let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (a, b) in ours.iter().zip(&expected) {
            assert!((a - b).abs() <= 1e-5 * scale, "{name}: twin {a}, numpy {b}");
        }
        checked += 1;
    }
    assert_eq!(checked, 8);
}
