//! On a real GPU (the `gpu-tests` feature; `scripts/gpu-check` runs these):
//! detection through NVML and the CUDA driver, the health probe, and two
//! real worker processes sharing the one GPU, one killed mid-task, the
//! compute kinds on the GPU against a CPU worker (failing when any kernel
//! module or cuBLAS did not load: no silent CPU fallback), and the parity
//! statement across devices (a split task's shards on the GPU and on a CPU
//! worker against the whole run on each); the transformer's forward and its
//! training on the GPU against its CPU twin.

use std::process::Command;
use std::time::Duration;

use tandem_producer::Task;
use tandem_shared::device::Health;
use tandem_shared::kind::builtin::{Sleep, SleepParams};
use tandem_shared::store::Store;
use tandem_shared::{Class, Status};

use crate::parity::Case;
use crate::support::{RedisServer, WorkerProcess, bin, wait_until};

const WAIT: Duration = Duration::from_secs(60);

fn detect() -> serde_json::Value {
    let out = Command::new(bin("tandem-worker"))
        .args(["detect", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn detection_finds_the_gpu_with_its_measured_properties() {
    let report = detect();
    let gpus = report["gpus"].as_array().expect("gpus");
    assert!(!gpus.is_empty(), "no GPU detected: {report}");
    for gpu in gpus {
        assert!(gpu["uuid"].as_str().unwrap().starts_with("GPU-"), "{gpu}");
        assert!(!gpu["pci_bus_id"].as_str().unwrap().is_empty(), "{gpu}");
        assert!(gpu["sms"].as_u64().unwrap() > 0, "{gpu}");
        assert!(gpu["clock_mhz"].as_u64().unwrap() > 0, "{gpu}");
        assert!(gpu["memory_bytes"].as_u64().unwrap() > 1 << 30, "{gpu}");
        assert_eq!(gpu["simulated"], false);
        assert_ne!(gpu["compute_capability"], "sim");
    }
    if gpus.len() == 1 {
        assert_eq!(gpus[0]["role"], "both", "one GPU is both: {report}");
    }
    // NVML's view joined by UUID: the power limit comes from it.
    assert!(
        gpus.iter().all(|g| g["power_limit_w"].as_u64().is_some()),
        "NVML did not match the CUDA devices: {report}"
    );
}

#[tokio::test]
async fn two_workers_share_the_gpu_and_a_killed_ones_task_finishes_on_the_other() {
    let redis = RedisServer::start();
    let uuid = detect()["gpus"][0]["uuid"].as_str().unwrap().to_owned();
    let env = [
        ("TANDEM_DEVICE", uuid.as_str()),
        ("TANDEM_CONCURRENCY", "1"),
    ];
    let mut a = WorkerProcess::spawn(&redis, &env);
    let mut b = WorkerProcess::spawn(&redis, &env);
    let store = Store::connect(&redis.config()).await.unwrap();
    // Each probed the real device before registering as healthy.
    wait_until(WAIT, "both workers healthy on the GPU", || async {
        let workers = store.workers().await.unwrap();
        workers.len() == 2
            && workers
                .iter()
                .all(|w| w.health == Health::Healthy && w.device == uuid)
    })
    .await;
    // Both route from the whole fleet before the task comes.
    crate::support::gpus::settle(&store).await;

    let producer = redis.producer().await;
    let id = producer
        .submit(
            Task::of::<Sleep>(&SleepParams { ms: 3_000 })
                .unwrap()
                .class(Class::Heavy)
                .memory_bytes(1 << 30),
        )
        .await
        .unwrap();
    wait_until(WAIT, "the task runs", || async {
        producer.status(id).await.unwrap() == Status::Running
    })
    .await;
    let holder = producer
        .record(id)
        .await
        .unwrap()
        .and_then(|r| r.worker)
        .unwrap_or_default();
    let (victim, survivor) = if holder == a.id {
        (&mut a, &b)
    } else {
        (&mut b, &a)
    };
    victim.signal("KILL");
    let outcome = producer.wait(id, WAIT).await.unwrap();
    assert_eq!(outcome.status, Status::Succeeded);
    assert_eq!(outcome.record.worker.as_deref(), Some(survivor.id.as_str()));
    assert_eq!(outcome.record.device.as_deref(), Some(uuid.as_str()));
}

/// Runs `params` on a worker of `redis` and returns the record and result.
async fn run_on<K: tandem_shared::kind::KindSpec>(
    redis: &RedisServer,
    params: &K::Params,
) -> (tandem_shared::wire::TaskRecord, K::Output) {
    let producer = redis.producer().await;
    let id = producer
        .submit(Task::of::<K>(params).unwrap())
        .await
        .unwrap();
    let outcome = producer.wait(id, WAIT).await.unwrap();
    assert_eq!(outcome.status, Status::Succeeded, "{:?}", outcome.record);
    let result = outcome.result::<K::Output>().unwrap();
    (outcome.record, result)
}

fn close(a: f64, b: f64, relative: f64) -> bool {
    (a - b).abs() <= relative * a.abs().max(b.abs()).max(1e-300)
}

/// The compute kinds through a worker on the real GPU (kernels compiled by
/// NVRTC at its start, launched through the worker) against a CPU worker,
/// within each kind's stated tolerance.
#[tokio::test]
async fn compute_kinds_on_the_gpu_agree_with_a_cpu_worker() {
    use tandem_shared::kind::indicators::{IndicatorSpec, Indicators, IndicatorsParams, Series};
    use tandem_shared::kind::monte_carlo::{MonteCarlo, MonteCarloParams};
    use tandem_shared::kind::risk::{MonteCarloRisk, Risk, RiskParams};

    let gpu = RedisServer::start();
    let uuid = detect()["gpus"][0]["uuid"].as_str().unwrap().to_owned();
    let gpu_worker = WorkerProcess::spawn(&gpu, &[("TANDEM_DEVICE", uuid.as_str())]);
    let store = Store::connect(&gpu.config()).await.unwrap();
    wait_until(WAIT, "the GPU worker is healthy", || async {
        store
            .workers()
            .await
            .unwrap()
            .iter()
            .any(|w| w.health == Health::Healthy && w.device == uuid)
    })
    .await;
    assert_every_gpu_path_loaded(&store, &uuid).await;
    let cpu = RedisServer::start();
    let _cpu_worker = WorkerProcess::start(&cpu, &[]).await;

    let mc = MonteCarloParams {
        s0: 100.0,
        strike: 105.0,
        rate: 0.03,
        dividend: 0.01,
        sigma: 0.25,
        maturity: 1.0,
        steps: 64,
        paths: 1_000_000,
        seed: 11,
        percentiles: vec![1.0, 50.0, 99.0],
    };
    let (record, on_gpu) = run_on::<MonteCarlo>(&gpu, &mc).await;
    assert_eq!(record.device.as_deref(), Some(uuid.as_str()));
    let (_, on_cpu) = run_on::<MonteCarlo>(&cpu, &mc).await;
    for (g, c) in [
        (on_gpu.european_call, on_cpu.european_call),
        (on_gpu.european_put, on_cpu.european_put),
        (on_gpu.asian_arithmetic_call, on_cpu.asian_arithmetic_call),
        (on_gpu.asian_geometric_call, on_cpu.asian_geometric_call),
    ] {
        assert!(close(g.price, c.price, 1e-4), "{g:?} vs {c:?}");
    }

    let n = 8;
    let covariance: Vec<f64> = (0..n * n)
        .map(|k| if k / n == k % n { 4e-4 } else { 1e-4 })
        .collect();
    let risk = RiskParams::MonteCarlo(MonteCarloRisk {
        weights: vec![1e6; n],
        mu: vec![2e-4; n],
        covariance,
        scenarios: 1_000_000,
        seed: 5,
        confidence: vec![0.95, 0.99],
    });
    let (_, on_gpu) = run_on::<Risk>(&gpu, &risk).await;
    let (_, on_cpu) = run_on::<Risk>(&cpu, &risk).await;
    for (g, c) in on_gpu.levels.iter().zip(&on_cpu.levels) {
        assert!(
            close(g.var, c.var, 1e-5) && close(g.cvar, c.cvar, 1e-5),
            "{g:?} vs {c:?}"
        );
    }

    let closes: Vec<f64> = (0..5_000)
        .map(|t| 100.0 + (t as f64 * 0.01).sin())
        .collect();
    let indicators = IndicatorsParams {
        series: vec![Series {
            symbol: "S".into(),
            closes,
        }],
        indicators: vec![
            IndicatorSpec::Sma { period: 20 },
            IndicatorSpec::Rsi { period: 14 },
        ],
    };
    let (_, on_gpu) = run_on::<Indicators>(&gpu, &indicators).await;
    let (_, on_cpu) = run_on::<Indicators>(&cpu, &indicators).await;
    for (g, c) in on_gpu.series[0].values.iter().zip(&on_cpu.series[0].values) {
        for (x, y) in g.iter().zip(c) {
            assert!(
                (x.is_nan() && y.is_nan()) || close(*x, *y, 1e-12),
                "{x} vs {y}"
            );
        }
    }

    let log = gpu_worker.log_text();
    assert!(
        !log.contains("CPU fallback on a GPU worker"),
        "a kernel module or cuBLAS did not load:\n{log}"
    );
}

/// Fails unless the healthy worker on GPU `uuid` reports every GPU path
/// (kernel module, cuBLAS) loaded: a worker whose NVRTC, kernels or cuBLAS
/// did not load runs those kinds on its CPU, which must not pass for a
/// GPU run.
async fn assert_every_gpu_path_loaded(store: &Store, uuid: &str) {
    wait_until(WAIT, "the GPU worker reports its GPU paths", || async {
        store
            .workers()
            .await
            .unwrap()
            .iter()
            .any(|w| w.device == uuid && !(w.kernels_loaded.is_empty() && w.kernels_off.is_empty()))
    })
    .await;
    for worker in store.workers().await.unwrap() {
        if worker.device != uuid {
            continue;
        }
        assert!(
            worker.kernels_off.is_empty(),
            "{}: GPU paths off: {:?} ({}); on its CPU: {:?}",
            worker.id,
            worker.kernels_off,
            worker.kernels_off_why,
            worker.cpu_fallback
        );
        for path in [
            "monte_carlo",
            "risk",
            "indicators",
            "patterns",
            "portfolio_opt",
            "mlp",
            "cublas",
        ] {
            assert!(
                worker.kernels_loaded.iter().any(|p| p == path),
                "{path} not loaded: {worker:?}"
            );
        }
    }
}

fn relative(a: f64, b: f64) -> f64 {
    (a - b).abs() / a.abs().max(b.abs()).max(1e-300)
}

/// The parity statement's bound between two results of `case` computed on
/// different devices (docs/ARCHITECTURE.md, "Parity across devices");
/// `historical` risk is bit for bit.
fn assert_within_bound(case: &Case, a: &[u8], b: &[u8], what: &str) {
    use tandem_shared::kind::monte_carlo::MonteCarloOutput;
    use tandem_shared::kind::portfolio_opt::PortfolioOptOutput;
    use tandem_shared::kind::risk::RiskOutput;
    use tandem_shared::msgpack::decode;

    let name = case.name();
    match case {
        Case::MonteCarlo(p) => {
            let (x, y): (MonteCarloOutput, MonteCarloOutput) =
                (decode(a).unwrap(), decode(b).unwrap());
            for (g, c) in [
                (&x.european_call, &y.european_call),
                (&x.european_put, &y.european_put),
                (&x.asian_arithmetic_call, &y.asian_arithmetic_call),
                (&x.asian_geometric_call, &y.asian_geometric_call),
            ] {
                assert!(
                    relative(g.price, c.price) <= 1e-4,
                    "{what} {name}: {g:?} vs {c:?}"
                );
                assert!(
                    relative(g.std_error, c.std_error) <= 1e-4,
                    "{what} {name}: {g:?} vs {c:?}"
                );
            }
            assert!(relative(x.mean_terminal_price, y.mean_terminal_price) <= 1e-4);
            // A percentile is read from the histogram: within one bin, a
            // log-price width of sigma sqrt(t) / 256.
            let bin = p.sigma * p.maturity.sqrt() / 256.0;
            for (g, c) in x.percentiles.iter().zip(&y.percentiles) {
                assert!(
                    (g.price.ln() - c.price.ln()).abs() <= bin,
                    "{what} {name}: {g:?} vs {c:?}"
                );
            }
        }
        Case::Risk("historical", _) => assert_eq!(a, b, "{what} {name}: not bit for bit"),
        Case::Risk(..) => {
            let (x, y): (RiskOutput, RiskOutput) = (decode(a).unwrap(), decode(b).unwrap());
            let scale = x.levels.iter().map(|l| l.var.abs()).fold(0.0, f64::max);
            for (g, c) in x.levels.iter().zip(&y.levels) {
                assert!(
                    relative(g.var, c.var) <= 1e-5 && relative(g.cvar, c.cvar) <= 1e-5,
                    "{what} {name}: {g:?} vs {c:?}"
                );
                assert_eq!(g.tail_count, c.tail_count);
            }
            assert!(
                (x.mean_loss - y.mean_loss).abs() <= 1e-5 * scale,
                "{what} {name}: {} vs {}",
                x.mean_loss,
                y.mean_loss
            );
        }
        Case::Portfolio(_) => {
            let (x, y): (PortfolioOptOutput, PortfolioOptOutput) =
                (decode(a).unwrap(), decode(b).unwrap());
            let worst = x
                .weights
                .iter()
                .zip(&y.weights)
                .map(|(g, c)| (g - c).abs())
                .fold(0.0, f64::max);
            assert!(worst <= 1e-7, "{what} {name}: weights differ by {worst}");
            assert!(
                relative(x.random_best_objective, y.random_best_objective) <= 1e-4,
                "{what} {name}: {x:?} vs {y:?}"
            );
        }
    }
}

/// The parity statement across devices: a split task's shards run on the
/// GPU (two workers share it, so the fleet splits) and on a CPU worker,
/// and the merged result is checked against the whole run on the GPU and
/// on a CPU worker: bit for bit against the whole run on the device type
/// that ran every shard, within the stated bound otherwise (bit for bit
/// for historical risk whatever the devices).
#[tokio::test]
async fn split_tasks_across_the_gpu_and_a_cpu_worker_keep_the_parity_statement() {
    let uuid = detect()["gpus"][0]["uuid"].as_str().unwrap().to_owned();
    let mixed = RedisServer::start();
    let gpu_env = [
        ("TANDEM_DEVICE", uuid.as_str()),
        ("TANDEM_CONCURRENCY", "1"),
        ("TANDEM_SHARDS_PER_GPU", "4"),
    ];
    let _gpu_workers = [
        WorkerProcess::spawn(&mixed, &gpu_env),
        WorkerProcess::spawn(&mixed, &gpu_env),
    ];
    // A CPU worker with room for most shards, taking any parallel task
    // that waited a millisecond: the shards spread over both devices.
    let _cpu_worker = WorkerProcess::spawn(
        &mixed,
        &[
            ("TANDEM_CONCURRENCY", "8"),
            ("TANDEM_CPU_FALLBACK_MS", "1"),
            ("TANDEM_SHARDS_PER_GPU", "4"),
        ],
    );
    let store = Store::connect(&mixed.config()).await.unwrap();
    wait_until(WAIT, "two GPU workers and a CPU worker healthy", || async {
        let workers = store.workers().await.unwrap();
        workers.len() == 3 && workers.iter().all(|w| w.health == Health::Healthy)
    })
    .await;
    assert_every_gpu_path_loaded(&store, &uuid).await;
    crate::support::gpus::settle(&store).await;
    let mixed_producer = mixed.producer().await;

    let on_gpu = RedisServer::start();
    let _whole_gpu = WorkerProcess::spawn(&on_gpu, &[("TANDEM_DEVICE", uuid.as_str())]);
    let gpu_store = Store::connect(&on_gpu.config()).await.unwrap();
    wait_until(WAIT, "the whole-run GPU worker is healthy", || async {
        gpu_store
            .workers()
            .await
            .unwrap()
            .iter()
            .any(|w| w.health == Health::Healthy)
    })
    .await;
    let gpu_producer = on_gpu.producer().await;
    let on_cpu = RedisServer::start();
    let _whole_cpu = WorkerProcess::start(&on_cpu, &[]).await;
    let cpu_producer = on_cpu.producer().await;

    for case in Case::all() {
        let name = case.name();
        let (whole_gpu, record) = case.run(&on_gpu, &gpu_producer, 0).await;
        assert_eq!(record.device.as_deref(), Some(uuid.as_str()), "{name}");
        assert_eq!(record.shards, None, "{name}: one GPU runs it whole");
        let (whole_cpu, _) = case.run(&on_cpu, &cpu_producer, 0).await;
        assert_within_bound(&case, &whole_gpu, &whole_cpu, "whole GPU vs whole CPU");

        let (split, parent) = case.run(&mixed, &mixed_producer, 0).await;
        assert!(
            parent.shards.unwrap_or(0) >= 2,
            "{name}: not split: {parent:?}"
        );
        let devices = &parent.shards_devices;
        eprintln!(
            "{name}: {} shards on {devices:?}",
            parent.shards.unwrap_or(0)
        );
        if devices.as_slice() == [uuid.as_str()] {
            assert_eq!(
                split, whole_gpu,
                "{name}: every shard on the GPU, not bit for bit"
            );
        } else if devices.as_slice() == ["cpu"] {
            assert_eq!(
                split, whole_cpu,
                "{name}: every shard on the CPU, not bit for bit"
            );
        } else {
            assert_within_bound(&case, &split, &whole_gpu, "mixed split vs whole GPU");
            assert_within_bound(&case, &split, &whole_cpu, "mixed split vs whole CPU");
        }
    }
}

/// The transformer through a worker on the real GPU (its forward pass in
/// cuBLAS and `cuda/transformer.cu`, the `transformer` path loaded: no
/// silent CPU fallback) against the CPU twin run here on the same weights
/// and windows, causal and not, within 1e-4 of the outputs' scale.
#[tokio::test]
async fn the_transformer_on_the_gpu_agrees_with_its_cpu_twin() {
    use tandem_kernels::transformer as xf;
    use tandem_shared::kind::model_kinds::{
        PredictBatch, PredictBatchOutput, PredictBatchParams, SymbolWindow,
    };

    use crate::transformer::{market, shape, twin, upload_transformer};

    let gpu = RedisServer::start();
    let uuid = detect()["gpus"][0]["uuid"].as_str().unwrap().to_owned();
    let _gpu_worker = WorkerProcess::spawn(&gpu, &[("TANDEM_DEVICE", uuid.as_str())]);
    let store = Store::connect(&gpu.config()).await.unwrap();
    wait_until(WAIT, "the GPU worker is healthy", || async {
        store
            .workers()
            .await
            .unwrap()
            .iter()
            .any(|w| w.health == Health::Healthy && w.device == uuid)
    })
    .await;
    assert_every_gpu_path_loaded(&store, &uuid).await;
    let producer = gpu.producer().await;
    let (symbols, window, features) = (256, 64, 16);
    for (name, causal) in [("gpu-xf", false), ("gpu-xf-causal", true)] {
        let model = upload_transformer(&store, name, shape(features, window, 32, causal), 1).await;
        let inputs = market(symbols, window, features);
        let params = PredictBatchParams {
            model: name.into(),
            symbols: inputs
                .chunks(window * features)
                .enumerate()
                .map(|(i, w)| SymbolWindow {
                    symbol: format!("S{i}"),
                    features: w.to_vec(),
                })
                .collect(),
        };
        let id = producer
            .submit(Task::of::<PredictBatch>(&params).unwrap())
            .await
            .unwrap();
        let outcome = producer.wait(id, WAIT).await.unwrap();
        assert_eq!(outcome.status, Status::Succeeded, "{:?}", outcome.record);
        assert_eq!(outcome.record.device.as_deref(), Some(uuid.as_str()));
        let out: PredictBatchOutput = outcome.result().unwrap();
        let got: Vec<f32> = out
            .predictions
            .iter()
            .flat_map(|p| p.values.clone())
            .collect();
        let want = xf::forward_cpu(&twin(&model), &inputs, symbols).unwrap();
        assert_eq!(got.len(), want.len());
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        let worst = got
            .iter()
            .zip(&want)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            worst / scale <= 1e-4,
            "{name}: max |gpu - twin| / max |twin| = {:e}",
            worst / scale
        );
    }
}

/// `train` of a transformer resident on the real GPU runs there (forward,
/// backward and Adam on the device: the worker logs the GPU path, not the
/// CPU twin's): its loss falls on a known pattern, its first epoch's loss
/// is the CPU twin's within rounding, and the fine-tuned file registers as
/// the next version, which serves.
#[tokio::test]
async fn train_of_a_transformer_runs_on_the_gpu_and_its_loss_falls() {
    use tandem_kernels::transformer as xf;
    use tandem_shared::kind::model_kinds::{Infer, InferParams, Optimizer, Train, TrainParams};
    use tandem_shared::model_format::transformer::TransformerModel;
    use tandem_shared::store::ModelPolicy;

    use crate::transformer::{market, shape, twin, upload_transformer};

    let redis = RedisServer::start();
    let uuid = detect()["gpus"][0]["uuid"].as_str().unwrap().to_owned();
    let worker = WorkerProcess::spawn(&redis, &[("TANDEM_DEVICE", uuid.as_str())]);
    let store = Store::connect(&redis.config()).await.unwrap();
    wait_until(WAIT, "the GPU worker is healthy", || async {
        store
            .workers()
            .await
            .unwrap()
            .iter()
            .any(|w| w.health == Health::Healthy && w.device == uuid)
    })
    .await;
    assert_every_gpu_path_loaded(&store, &uuid).await;
    let (samples, window, features) = (64, 16, 4);
    let shape = shape(features, window, 16, true);
    let model = upload_transformer(&store, "gpu-xf-train", shape, 5_000_000_000).await;
    // The target is the mean of the last step's features.
    let x = market(samples, window, features);
    let y: Vec<f32> = x
        .chunks(window * features)
        .map(|w| w[(window - 1) * features..].iter().sum::<f32>() / features as f32)
        .collect();
    let epochs = 12;
    let train = TrainParams {
        model: "gpu-xf-train".into(),
        x,
        y,
        samples: samples as u64,
        epochs,
        batch_size: 16,
        optimizer: Optimizer::Adam {
            lr: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        },
        seed: 3,
        out: None,
    };
    let (record, out) = run_on::<Train>(&redis, &train).await;
    assert_eq!(record.device.as_deref(), Some(uuid.as_str()));
    let log = worker.log_text();
    assert!(log.contains("transformer trained on the GPU"), "{log}");
    assert!(!log.contains("trains on the CPU twin"), "{log}");
    assert_eq!(out.steps, u64::from(epochs) * 4);
    let (first, last) = (out.losses[0], out.losses[epochs as usize - 1]);
    assert!(
        last < first / 4.0,
        "loss {first} -> {last}: {:?}",
        out.losses
    );
    let mut cpu = twin(&model);
    let config = xf::TrainConfig {
        epochs: epochs as usize,
        batch_size: 16,
        optimizer: xf::Optimizer::Adam {
            lr: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        },
        seed: 3,
    };
    let expect = xf::train_cpu_until(
        &mut cpu,
        &train.x,
        &train.y,
        samples,
        &config,
        xf::TrainWatch::NONE,
    )
    .unwrap();
    // Within 1e-2: after the first step the runs' weights differ by
    // rounding, which Adam's sign-like first steps can widen on gradients
    // near zero (one step is checked within 1e-4 by the kernels' GPU tests).
    assert!(
        close(f64::from(first), expect.losses[0], 1e-2),
        "first epoch: GPU {:?}, CPU twin {:?}",
        out.losses,
        expect.losses
    );
    // The fine-tuned file registers as the next version and serves.
    let weights = out.weights.expect("the model comes back");
    let tuned = TransformerModel::decode(&weights).unwrap();
    assert_eq!(tuned.shape, shape);
    let policy = ModelPolicy {
        heavy_threshold_bytes: 5_000_000_000,
        max_upload_bytes: 64 << 20,
    };
    let info = store
        .upload_model("gpu-xf-train", &weights, &policy)
        .await
        .unwrap();
    assert_eq!(info.version, 2);
    let infer = InferParams {
        model: "gpu-xf-train".into(),
        inputs: train.x[..window * features].to_vec(),
        batch: 1,
    };
    let (_, served) = run_on::<Infer>(&redis, &infer).await;
    assert_eq!(served.model_version, 2);
    let want = xf::forward_cpu(&twin(&tuned), &infer.inputs, 1).unwrap();
    assert!(
        close(f64::from(served.outputs[0]), f64::from(want[0]), 1e-4),
        "served {:?}, twin {want:?}",
        served.outputs
    );
}
