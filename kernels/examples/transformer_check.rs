//! The transformer's CPU twin against PyTorch: writes what
//! `bench/transformer_torch.py` compares, and times what it benchmarks.
//!
//! `cargo run --release -p tandem-kernels --example transformer_check --
//! check DIR` writes, for a small model (4 features, window 16, d_model 32,
//! 4 heads, 2 layers, ff 64, learned positions, last-step pooling):
//! `plain.safetensors` and `causal.safetensors` (the same weights, the
//! mask off and on), `x.f32` (8 windows), `y.f32` (their targets),
//! `out_plain.f32` and `out_causal.f32` (the twin's outputs),
//! `stepped.safetensors` (the causal model after one Adam step, lr 1e-3,
//! on those 8 windows) and `losses.txt` (20 epochs of Adam on a sine whose
//! phase the window shows).
//!
//! `... -- bench WINDOWS` times inference over WINDOWS windows and one
//! training epoch (batches of 32) of a model of 32 features, window 128,
//! d_model 64, 4 heads, 2 layers, ff 256; one `BENCH {...}` line each, the
//! best of three.

use std::path::Path;
use std::time::Instant;

use tandem_kernels::mlp::TrainWatch;
use tandem_kernels::transformer::{
    self, AdamState, Config, Optimizer, Pooling, Positions, TrainConfig, Transformer,
};
use tandem_shared::model_format::transformer::{
    self as format, TransformerModel, TransformerShape,
};

fn to_file(model: &Transformer) -> Vec<u8> {
    let c = model.config;
    TransformerModel {
        shape: TransformerShape {
            features: c.features,
            window: c.window,
            d_model: c.d_model,
            heads: c.heads,
            layers: c.layers,
            ff: c.ff,
            outputs: c.outputs,
            causal: c.causal,
            pooling: match c.pooling {
                Pooling::Last => format::Pooling::Last,
                Pooling::Mean => format::Pooling::Mean,
            },
            positions: match c.positions {
                Positions::Learned => format::Positions::Learned,
                Positions::Sinusoidal => format::Positions::Sinusoidal,
            },
        },
        params: model.params.clone(),
    }
    .encode()
}

fn floats(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn uniform(count: usize, seed: u64) -> Vec<f32> {
    let mut state = seed;
    (0..count)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((state >> 40) as f32 / 16_777_216.0) * 2.0 - 1.0
        })
        .collect()
}

fn check(dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    std::fs::create_dir_all(dir)?;
    let config = Config {
        features: 4,
        window: 16,
        d_model: 32,
        heads: 4,
        layers: 2,
        ff: 64,
        outputs: 1,
        causal: false,
        pooling: Pooling::Last,
        positions: Positions::Learned,
    };
    let mut plain = Transformer::random(config, 17)?;
    // Non-trivial normalisation, gains and biases.
    let noise = uniform(plain.params.len(), 5);
    for (i, p) in plain.params.iter_mut().enumerate() {
        if i < config.features {
            *p = 0.1 * i as f32;
        } else if i < 2 * config.features {
            *p = 1.0 + 0.25 * (i - config.features) as f32;
        } else {
            *p += 0.05 * noise[i];
        }
    }
    let causal = Transformer {
        config: Config {
            causal: true,
            ..config
        },
        params: plain.params.clone(),
    };
    let batch = 8;
    let x = uniform(batch * config.window_floats(), 9);
    let y = uniform(batch, 13);
    std::fs::write(dir.join("plain.safetensors"), to_file(&plain))?;
    std::fs::write(dir.join("causal.safetensors"), to_file(&causal))?;
    std::fs::write(dir.join("x.f32"), floats(&x))?;
    std::fs::write(dir.join("y.f32"), floats(&y))?;
    std::fs::write(
        dir.join("out_plain.f32"),
        floats(&transformer::forward_cpu(&plain, &x, batch)?),
    )?;
    std::fs::write(
        dir.join("out_causal.f32"),
        floats(&transformer::forward_cpu(&causal, &x, batch)?),
    )?;
    let mut stepped = causal.clone();
    let mut state = AdamState::new(&stepped);
    transformer::train_step(
        &mut stepped,
        &mut state,
        &x,
        &y,
        batch,
        &Optimizer::adam(1e-3),
    )?;
    std::fs::write(dir.join("stepped.safetensors"), to_file(&stepped))?;

    // A sine whose phase the window shows; the target is the next value.
    let series = Config {
        features: 1,
        causal: true,
        ..config
    };
    let mut model = Transformer::random(series, 3)?;
    let samples = 128;
    let mut sx = Vec::new();
    let mut sy = Vec::new();
    for s in 0..samples {
        let phase = s as f32 * 0.37;
        sx.extend((0..series.window).map(|t| (phase + 0.4 * t as f32).sin()));
        sy.push((phase + 0.4 * series.window as f32).sin());
    }
    let train = TrainConfig {
        epochs: 20,
        batch_size: 16,
        optimizer: Optimizer::adam(1e-3),
        seed: 1,
    };
    let report =
        transformer::train_cpu_until(&mut model, &sx, &sy, samples, &train, TrainWatch::NONE)?;
    let lines: Vec<String> = report.losses.iter().map(|l| format!("{l:.6e}")).collect();
    std::fs::write(dir.join("losses.txt"), lines.join("\n") + "\n")?;
    println!("wrote {}", dir.display());
    Ok(())
}

fn bench(windows: usize) -> Result<(), Box<dyn std::error::Error>> {
    let config = Config {
        features: 32,
        window: 128,
        d_model: 64,
        heads: 4,
        layers: 2,
        ff: 256,
        outputs: 1,
        causal: true,
        pooling: Pooling::Last,
        positions: Positions::Learned,
    };
    let model = Transformer::random(config, 1)?;
    let x = uniform(windows * config.window_floats(), 2);
    let y = uniform(windows, 3);
    let threads = rayon::current_num_threads();
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let start = Instant::now();
        std::hint::black_box(transformer::forward_cpu(&model, &x, windows)?);
        best = best.min(start.elapsed().as_secs_f64());
    }
    println!(
        "BENCH {{\"impl\":\"rust\",\"case\":\"xf_infer_w{windows}\",\"threads\":{threads},\"seconds\":{best:.4},\"windows_per_s\":{:.1}}}",
        windows as f64 / best
    );
    let train = TrainConfig {
        epochs: 1,
        batch_size: 32,
        optimizer: Optimizer::adam(1e-3),
        seed: 1,
    };
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let mut m = model.clone();
        let start = Instant::now();
        transformer::train_cpu_until(&mut m, &x, &y, windows, &train, TrainWatch::NONE)?;
        best = best.min(start.elapsed().as_secs_f64());
    }
    println!(
        "BENCH {{\"impl\":\"rust\",\"case\":\"xf_train_epoch_w{windows}_bs32\",\"threads\":{threads},\"seconds\":{best:.4},\"windows_per_s\":{:.1}}}",
        windows as f64 / best
    );
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [mode, dir] if mode == "check" => check(Path::new(dir)),
        [mode, windows] if mode == "bench" => bench(windows.parse()?),
        _ => Err("usage: transformer_check check DIR | bench WINDOWS".into()),
    }
}
