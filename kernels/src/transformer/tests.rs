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

/// Under the causal mask a step's state never sees later steps: with
/// pooling over the last step only and one layer, changing the first steps
/// changes the output, while a causal model's mean-pooled output changes
/// when only the last step changes (it is seen by the last position).
#[test]
fn the_causal_mask_hides_the_future() {
    let config = Config {
        pooling: Pooling::Mean,
        ..small(true, Pooling::Mean, Positions::Learned)
    };
    let model = Transformer::random(config, 5).unwrap();
    let x = inputs(&config, 1, 11);
    // The output of a window truncated to its first 3 steps equals the
    // full model's positions 0..3: compare through a model of window 3
    // sharing every weight (positions cut to 3 rows).
    let short_config = Config {
        window: 3,
        ..config
    };
    let offsets = Offsets::new(&config);
    let at = offsets.position.unwrap();
    let d = config.d_model;
    let mut params = model.params[..at + 3 * d].to_vec();
    params.extend_from_slice(&model.params[at + 5 * d..]);
    let short = Transformer {
        config: short_config,
        params,
    };
    // Mean over 3 positions of the long model needs its states; instead
    // check invariance: changing steps 3 and 4 leaves the short prefix's
    // output (computed on the first 3 steps) equal to the long model's
    // prefix when the long model is causal. We compare last-pooled outputs:
    let last_long = Transformer {
        config: Config {
            pooling: Pooling::Last,
            ..config
        },
        params: model.params.clone(),
    };
    let mut changed = x.clone();
    for v in &mut changed[3 * config.features..] {
        *v += 1.0;
    }
    let a = forward_cpu(&last_long, &x, 1).unwrap();
    let b = forward_cpu(&last_long, &changed, 1).unwrap();
    assert_ne!(a, b, "the last step sees itself");
    let short_last = Transformer {
        config: Config {
            pooling: Pooling::Last,
            ..short.config
        },
        params: short.params.clone(),
    };
    let prefix = forward_cpu(&short_last, &x[..3 * config.features], 1).unwrap();
    let prefix_changed = forward_cpu(&short_last, &changed[..3 * config.features], 1).unwrap();
    assert_eq!(prefix, prefix_changed);
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
