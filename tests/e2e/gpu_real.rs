//! On a real GPU (the `gpu-tests` feature; `scripts/gpu-check` runs these):
//! detection through NVML and the CUDA driver, the health probe, and two
//! real worker processes sharing the one GPU, one killed mid-task, the
//! compute kinds on the GPU against a CPU worker (failing when any kernel
//! module or cuBLAS did not load: no silent CPU fallback).

use std::process::Command;
use std::time::Duration;

use tandem_producer::Task;
use tandem_shared::device::Health;
use tandem_shared::kind::builtin::{Sleep, SleepParams};
use tandem_shared::store::Store;
use tandem_shared::{Class, Status};

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
