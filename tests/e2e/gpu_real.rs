//! On a real GPU (the `gpu-tests` feature; `scripts/gpu-check` runs these):
//! detection through NVML and the CUDA driver, the health probe, and two
//! real worker processes sharing the one GPU, one killed mid-task.

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
    tokio::time::sleep(Duration::from_millis(500)).await;

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
