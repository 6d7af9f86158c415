//! No silent CPU fallback (issue 19): a GPU worker whose kernels (no
//! NVRTC) or cuBLAS did not load says so at start in one ERROR line, in its
//! registry record, in `tandem workers` (text and `--json`) and in
//! `/metrics`. Simulated GPUs with `no_nvrtc` and `no_cublas` report their
//! paths the way a real GPU on such a host does.

use crate::metrics::{get, parse_sample};
use crate::support::gpus::{WAIT, registry, wait_healthy};
use crate::support::{RedisServer, WorkerProcess, free_port, wait_until};
use crate::views::tandem_ok;

const SPEC: &str = "A, 8 GiB, 10 TFLOPS, no_nvrtc; B, 8 GiB, 10 TFLOPS, no_cublas";

/// Every kind with a GPU path, sorted: what a GPU without NVRTC runs on
/// its CPU.
const COMPUTE_KINDS: [&str; 8] = [
    "indicators",
    "infer",
    "monte_carlo",
    "patterns",
    "portfolio_opt",
    "predict_batch",
    "risk",
    "train",
];
const MODEL_KINDS: [&str; 3] = ["infer", "predict_batch", "train"];

/// `tandem_gpu_kernels_loaded` by module, from a `/metrics` body.
fn loaded_by_module(body: &str) -> Vec<(String, f64)> {
    body.lines()
        .filter(|l| l.starts_with("tandem_gpu_kernels_loaded{"))
        .map(parse_sample)
        .map(|(_, labels, value)| (labels["module"].clone(), value))
        .collect()
}

#[tokio::test]
async fn a_gpu_worker_without_nvrtc_or_cublas_says_so_everywhere() {
    let redis = RedisServer::start();
    let ports = [free_port(), free_port()];
    let workers: Vec<WorkerProcess> = ports
        .iter()
        .enumerate()
        .map(|(index, port)| {
            WorkerProcess::spawn(
                &redis,
                &[
                    ("TANDEM_SIMULATE_GPUS", SPEC),
                    ("TANDEM_DEVICE", &index.to_string()),
                    ("TANDEM_METRICS_PORT", &port.to_string()),
                ],
            )
        })
        .collect();
    let [no_nvrtc, no_cublas] = &workers[..] else {
        unreachable!("two workers")
    };
    for worker in &workers {
        wait_healthy(&redis, &worker.id).await;
    }
    // The first beat after the probe passed carries the paths.
    wait_until(WAIT, "both records report their GPU paths", || async {
        let records = registry(&redis).await;
        records.len() == 2 && records.iter().all(|w| !w.kernels_off.is_empty())
    })
    .await;
    let records = registry(&redis).await;
    let record = |id: &str| records.iter().find(|w| w.id == id).expect("record");

    // The registry record.
    let a = record(&no_nvrtc.id);
    assert_eq!(a.kernels_loaded, ["cublas"], "{a:?}");
    for module in [
        "monte_carlo",
        "risk",
        "indicators",
        "patterns",
        "portfolio_opt",
        "mlp",
    ] {
        assert!(a.kernels_off.iter().any(|m| m == module), "{module}: {a:?}");
    }
    assert_eq!(a.cpu_fallback, COMPUTE_KINDS, "{a:?}");
    assert!(a.kernels_off_why.contains("NVRTC"), "{a:?}");
    let b = record(&no_cublas.id);
    assert_eq!(b.kernels_off, ["cublas"], "{b:?}");
    assert!(b.kernels_loaded.iter().any(|m| m == "mlp"), "{b:?}");
    assert_eq!(b.cpu_fallback, MODEL_KINDS, "{b:?}");
    assert!(b.kernels_off_why.starts_with("cublas: "), "{b:?}");

    // One ERROR line at start, naming what is off, why, and what runs
    // where; the worker writes it, and raises the alert, before its record
    // says `healthy`.
    for (worker, off, kinds) in [
        (no_nvrtc, "monte_carlo", "indicators, infer, monte_carlo"),
        (no_cublas, "cublas", "infer, predict_batch, train"),
    ] {
        let log = worker.log_text();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("CPU fallback on a GPU worker") && l.contains("ERROR"))
            .collect();
        assert_eq!(lines.len(), 1, "{log}");
        let line = lines[0];
        assert!(line.contains(off), "{line}");
        assert!(
            line.contains(&format!("run on this worker's CPU: {kinds}")),
            "{line}"
        );
    }
    assert!(
        no_cublas
            .log_text()
            .contains("on its GPU: indicators, monte_carlo, patterns, portfolio_opt, risk"),
        "{}",
        no_cublas.log_text()
    );

    // One `gpu_cpu_fallback` alert from each, counting the kinds.
    let alerts = crate::support::gpus::store(&redis)
        .await
        .alerts(20)
        .await
        .expect("alerts");
    for (worker, kinds) in [(no_nvrtc, 8.0), (no_cublas, 3.0)] {
        let theirs: Vec<_> = alerts
            .iter()
            .filter(|a| a.alert.alert == "gpu_cpu_fallback" && a.alert.worker == worker.id)
            .collect();
        assert_eq!(theirs.len(), 1, "{alerts:?}");
        assert_eq!(theirs[0].alert.value, kinds, "{alerts:?}");
    }

    // `tandem workers`: the kernels column, and why under the table.
    let text = tandem_ok(&redis, &["workers"]);
    let header = text.lines().next().expect("header");
    assert!(header.trim_end().ends_with("kernels"), "{text}");
    let row = |id: &str| {
        text.lines()
            .find(|l| l.contains(id) && !l.contains("GPU paths off"))
            .unwrap_or_else(|| panic!("no row for {id}:\n{text}"))
    };
    assert!(
        row(&no_nvrtc.id).ends_with(&format!("CPU fallback: {}", COMPUTE_KINDS.join(", "))),
        "{text}"
    );
    assert!(
        row(&no_cublas.id).ends_with("CPU fallback: infer, predict_batch, train"),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l.starts_with(&format!(
            "{}: GPU paths off: cublas (cublas: ",
            no_cublas.id
        ))),
        "{text}"
    );

    // `tandem workers --json`.
    let json: serde_json::Value =
        serde_json::from_str(&tandem_ok(&redis, &["workers", "--json"])).expect("JSON");
    let listed = json.as_array().expect("an array");
    assert_eq!(listed.len(), 2, "{json}");
    for (worker, kinds) in [
        (no_nvrtc, &COMPUTE_KINDS[..]),
        (no_cublas, &MODEL_KINDS[..]),
    ] {
        let entry = listed
            .iter()
            .find(|w| w["id"] == worker.id.as_str())
            .unwrap_or_else(|| panic!("{} missing: {json}", worker.id));
        assert_eq!(entry["cpu_fallback"], serde_json::json!(kinds), "{entry}");
        assert_eq!(entry["health"], "healthy", "{entry}");
        assert!(!entry["kernels_off_why"].as_str().unwrap_or("").is_empty());
    }

    // `/metrics`: 0 for each path off, 1 for each loaded.
    for (port, off, on) in [(ports[0], "risk", "cublas"), (ports[1], "cublas", "risk")] {
        let body = std::sync::Mutex::new(String::new());
        wait_until(WAIT, "the paths on /metrics", || async {
            let (_, text) = get(port, "/metrics").await;
            let found = !loaded_by_module(&text).is_empty();
            *body.lock().unwrap() = text;
            found
        })
        .await;
        let body = body.into_inner().unwrap();
        let loaded = loaded_by_module(&body);
        assert!(loaded.contains(&(off.to_owned(), 0.0)), "{body}");
        assert!(loaded.contains(&(on.to_owned(), 1.0)), "{body}");
    }
}
