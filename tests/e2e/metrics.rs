//! Metrics: a simulated GPU worker's registry record carries its device
//! readings and task counters, sampled every `metrics_interval_ms`; a
//! fleet serves all its children's on `/metrics` in the Prometheus text
//! format; a `hot` simulated GPU reads 95 C.

use std::collections::BTreeMap;

use tandem_producer::Task;
use tandem_shared::device::{Health, Role};
use tandem_shared::kind::builtin::{Fail, FailParams, Sleep, SleepParams};
use tandem_shared::wire::{LATENCY_BUCKETS_MS, WorkerInfo};
use tandem_shared::{Class, Status};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::gpus::{WAIT, registry, wait_healthy};
use crate::support::{RedisServer, WorkerProcess, free_port, wait_until};

const SLEEPS: usize = 30;

/// The families every fleet's `/metrics` lists.
const FAMILIES: &[&str] = &[
    "tandem_gpu_utilization_ratio",
    "tandem_gpu_memory_used_bytes",
    "tandem_gpu_memory_total_bytes",
    "tandem_gpu_temperature_celsius",
    "tandem_gpu_power_watts",
    "tandem_gpu_sm_clock_hertz",
    "tandem_tasks_active",
    "tandem_tasks_completed_total",
    "tandem_task_errors_total",
    "tandem_task_latency_seconds",
    "tandem_lease_extensions_total",
    "tandem_reclaims_total",
    "tandem_models_resident",
    "tandem_model_cache_hits_total",
    "tandem_model_cache_misses_total",
    "tandem_gpu_kernels_loaded",
    "tandem_build_info",
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_open_fds",
    "process_start_time_seconds",
    "tandem_queue_waiting_tasks",
    "tandem_queue_running_tasks",
    "tandem_queue_oldest_waiting_age_seconds",
    "tandem_queue_consumers",
    "tandem_queue_delayed_tasks",
    "tandem_queue_retrying_tasks",
    "tandem_queue_dead_letters",
];

/// The `member` label of a worker's series: the fleet's name for it.
fn member(worker: &WorkerInfo) -> String {
    match worker.device_index {
        Some(index) if worker.role != Role::Cpu => format!("sim{index}"),
        _ => "cpu".to_owned(),
    }
}

async fn record(redis: &RedisServer, id: &str) -> Option<WorkerInfo> {
    registry(redis).await.into_iter().find(|w| w.id == id)
}

#[tokio::test]
async fn a_simulated_gpu_workers_record_carries_its_metrics() {
    let redis = RedisServer::start();
    let worker = WorkerProcess::spawn(
        &redis,
        &[
            ("TANDEM_SIMULATE_GPUS", "Sim, 8 GiB, 10 TFLOPS"),
            ("TANDEM_DEVICE", "0"),
            ("TANDEM_CONCURRENCY", "2"),
            ("TANDEM_METRICS_INTERVAL_MS", "200"),
        ],
    );
    wait_healthy(&redis, &worker.id).await;
    let producer = redis.producer().await;
    let mut ids = Vec::new();
    for _ in 0..SLEEPS {
        let task = Task::of::<Sleep>(&SleepParams { ms: 50 })
            .unwrap()
            .class(Class::Light);
        ids.push(producer.submit(task).await.unwrap());
    }
    let failing = Task::of::<Fail>(&FailParams {
        code: "E_METRICS".into(),
        message: "counted by code".into(),
        retry: false,
    })
    .unwrap()
    .class(Class::Light);
    let failing = producer.submit(failing).await.unwrap();

    // While the tasks run, a sample shows the device busy and tasks
    // finishing. Each is seen at some sample, not necessarily the same one.
    let seen = std::sync::Mutex::new((None, None));
    wait_until(WAIT, "a busy sample and a tasks/s sample", || async {
        let info = record(&redis, &worker.id).await;
        let mut seen = seen.lock().unwrap();
        if let Some(info) = info {
            let m = &info.metrics;
            if m.gpu_utilization > 0.0 {
                seen.0.get_or_insert(m.gpu_utilization);
            }
            if m.tasks_per_s > 0.0 {
                seen.1.get_or_insert(m.tasks_per_s);
            }
        }
        seen.0.is_some() && seen.1.is_some()
    })
    .await;
    let busy = seen.lock().unwrap().0.unwrap_or_default();
    assert!(busy > 0.0 && busy <= 1.0, "utilization {busy}");

    for id in &ids {
        let outcome = producer.wait(*id, WAIT).await.unwrap();
        assert_eq!(outcome.status, Status::Succeeded);
    }
    assert_eq!(
        producer.wait(failing, WAIT).await.unwrap().status,
        Status::Failed
    );

    // Once a sample after the last commit is in the record, it counts
    // every task: by kind, class and status, in the latency histogram, and
    // the failure by its code.
    let done = SLEEPS as u64 + 1;
    wait_until(WAIT, "every task counted", || async {
        record(&redis, &worker.id)
            .await
            .is_some_and(|w| w.metrics.latency_buckets.iter().sum::<u64>() == done)
    })
    .await;
    let info = record(&redis, &worker.id).await.unwrap();
    let m = &info.metrics;
    assert_eq!(m.latency_buckets.len(), LATENCY_BUCKETS_MS.len() + 1);
    let expected: BTreeMap<String, u64> = [
        ("sleep/light/succeeded".to_owned(), SLEEPS as u64),
        ("fail/light/failed".to_owned(), 1),
    ]
    .into();
    assert_eq!(m.completed, expected);
    assert_eq!(m.errors.get("E_METRICS"), Some(&1), "{:?}", m.errors);
    // Each sleep took 50 ms or more from claim to commit.
    assert!(m.latency_sum_ms >= 50.0 * SLEEPS as f64, "{m:?}");
    assert!(
        m.gpu_temperature_c > 0.0 && m.gpu_temperature_c < 95.0,
        "{m:?}"
    );
    assert!(m.gpu_power_w > 0.0 && m.gpu_sm_clock_mhz > 0, "{m:?}");
    assert!(m.gpu_memory_used > 0 && m.gpu_memory_used <= info.memory_total);

    // What redis-cli HGETALL shows.
    let mut conn = redis.conn().await;
    let raw: BTreeMap<String, String> = redis::cmd("HGETALL")
        .arg(format!("tandem:worker:{}", worker.id))
        .query_async(&mut conn)
        .await
        .unwrap();
    for field in [
        "gpu_utilization",
        "gpu_temperature_c",
        "tasks_per_s",
        "latency_buckets",
        "completed",
        "errors",
    ] {
        assert!(raw.contains_key(field), "{field} not in {raw:?}");
    }
    assert!(
        raw["completed"].contains("sleep/light/succeeded="),
        "{raw:?}"
    );
}

/// `GET path` on the loopback port; the status line and the body.
pub(crate) async fn get(port: u16, path: &str) -> (String, String) {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut reply = String::new();
    // The server closes after its response: read to the end.
    tokio::time::timeout(WAIT, stream.read_to_string(&mut reply))
        .await
        .expect("a response")
        .unwrap();
    let (head, body) = reply.split_once("\r\n\r\n").expect("a head and a body");
    let status = head.lines().next().unwrap_or_default().to_owned();
    (status, body.to_owned())
}

/// A sample line's metric name, labels and value; panics on anything else.
pub(crate) fn parse_sample(line: &str) -> (String, BTreeMap<String, String>, f64) {
    let (series, value) = line
        .rsplit_once(' ')
        .unwrap_or_else(|| panic!("not `name{{labels}} value`: {line:?}"));
    let (name, labels) = series
        .split_once('{')
        .unwrap_or_else(|| panic!("no labels: {line:?}"));
    let labels = labels
        .strip_suffix('}')
        .unwrap_or_else(|| panic!("labels not closed: {line:?}"));
    let labels = labels
        .split("\",")
        .map(|pair| {
            let (k, v) = pair
                .split_once("=\"")
                .unwrap_or_else(|| panic!("bad label {pair:?} in {line:?}"));
            (k.to_owned(), v.trim_end_matches('"').to_owned())
        })
        .collect();
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}")),
    };
    (name.to_owned(), labels, value)
}

#[tokio::test]
async fn a_fleet_serves_its_childrens_metrics_and_a_hot_gpu_reads_95_c() {
    let redis = RedisServer::start();
    let port = free_port();
    let port_text = port.to_string();
    let mut fleet = WorkerProcess::spawn_fleet(
        &redis,
        &[
            (
                "TANDEM_SIMULATE_GPUS",
                "Cool, 12 GiB, 40 TFLOPS; Hot, 8 GiB, 16 TFLOPS, hot",
            ),
            ("TANDEM_METRICS_PORT", &port_text),
            ("TANDEM_METRICS_INTERVAL_MS", "200"),
        ],
    );
    wait_until(WAIT, "three members healthy", || async {
        let workers = registry(&redis).await;
        workers.len() == 3 && workers.iter().all(|w| w.health == Health::Healthy)
    })
    .await;
    wait_until(WAIT, "the hot GPU's record reads 95 C", || async {
        registry(&redis)
            .await
            .iter()
            .any(|w| w.device == "SIM-1-hot" && w.metrics.gpu_temperature_c == 95.0)
    })
    .await;
    let workers = registry(&redis).await;

    // Every child's series, as of their latest records.
    let body = std::sync::Mutex::new(String::new());
    wait_until(WAIT, "every child's series on /metrics", || async {
        let (status, text) = get(port, "/metrics").await;
        assert_eq!(status, "HTTP/1.1 200 OK", "{text}");
        let all = workers
            .iter()
            .all(|w| text.contains(&format!("member=\"{}\"", member(w))));
        *body.lock().unwrap() = text;
        all
    })
    .await;
    let body = body.into_inner().unwrap();
    let samples: Vec<_> = body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(parse_sample)
        .collect();
    for family in FAMILIES {
        assert!(
            body.contains(&format!("# TYPE {family} ")),
            "{family} missing:\n{body}"
        );
    }
    for worker in &workers {
        let theirs: Vec<_> = samples
            .iter()
            .filter(|(_, labels, _)| labels.get("member") == Some(&member(worker)))
            .collect();
        assert!(!theirs.is_empty(), "{}", worker.id);
        for (_, labels, _) in &theirs {
            assert_eq!(labels["device"], worker.device);
            assert_eq!(labels["role"], worker.role.to_string());
            assert_eq!(labels["host"], worker.host);
            // No label names the process: a restarted worker continues
            // the same series.
            assert!(
                labels
                    .values()
                    .all(|v| !v.contains(&worker.pid.to_string()))
            );
            // A GPU worker's series carry DCGM's labels, as DCGM spells them.
            if worker.role != Role::Cpu {
                assert_eq!(labels["UUID"], worker.device);
                assert_eq!(labels["gpu"], worker.device_index.unwrap().to_string());
                assert_eq!(labels["modelName"], worker.device_name);
                assert_eq!(labels["Hostname"], worker.host);
            }
        }
        // Its process, read from /proc, and its version.
        let family = |name: &str| theirs.iter().find(|(n, _, _)| n == name).map(|s| s.2);
        assert!(
            family("process_resident_memory_bytes").unwrap_or(0.0) > 0.0,
            "{body}"
        );
        assert!(
            family("process_start_time_seconds").unwrap_or(0.0) > 1.0e9,
            "{body}"
        );
        assert_eq!(family("tandem_build_info"), Some(1.0), "{body}");
        let has_gpu_series = theirs
            .iter()
            .any(|(name, _, _)| name == "tandem_gpu_temperature_celsius");
        assert_eq!(has_gpu_series, worker.role != Role::Cpu, "{}", worker.id);
        // A sound simulated GPU reports every GPU path loaded (the kernel
        // modules and cuBLAS), a CPU worker none.
        let paths: Vec<(&str, f64)> = theirs
            .iter()
            .filter(|(name, _, _)| name == "tandem_gpu_kernels_loaded")
            .map(|(_, labels, value)| (labels["module"].as_str(), *value))
            .collect();
        assert!(worker.kernels_off.is_empty(), "{worker:?}");
        assert_eq!(paths.len(), worker.kernels_loaded.len(), "{body}");
        assert!(paths.iter().all(|(_, v)| *v == 1.0), "{body}");
        assert_eq!(
            paths.iter().any(|(module, _)| *module == "cublas"),
            worker.role != Role::Cpu,
            "{}: {body}",
            worker.id
        );
    }
    let hot = samples.iter().find(|(name, labels, _)| {
        name == "tandem_gpu_temperature_celsius" && labels["device"] == "SIM-1-hot"
    });
    assert_eq!(hot.map(|(_, _, v)| *v), Some(95.0), "{body}");

    let (status, _) = get(port, "/").await;
    assert_eq!(status, "HTTP/1.1 404 Not Found");

    fleet.signal("TERM");
    assert_eq!(fleet.wait_exit(WAIT), Some(0));
}

/// On a real GPU (`gpu-tests`): NVML's readings of the worker's device,
/// found by its UUID, reach the registry record.
#[cfg(feature = "gpu-tests")]
#[tokio::test]
async fn a_real_gpu_workers_record_carries_nvml_readings() {
    let redis = RedisServer::start();
    let worker = WorkerProcess::spawn(
        &redis,
        &[
            ("TANDEM_DEVICE", "0"),
            ("TANDEM_METRICS_INTERVAL_MS", "200"),
        ],
    );
    // The first probe compiles the kernels: give it time.
    wait_until(
        std::time::Duration::from_secs(120),
        "NVML readings in the record",
        || async {
            record(&redis, &worker.id).await.is_some_and(|w| {
                let m = &w.metrics;
                w.health == Health::Healthy
                    && m.gpu_memory_used > 0
                    && m.gpu_memory_used <= w.memory_total
                    && m.gpu_temperature_c > 0.0
                    && m.gpu_sm_clock_mhz > 0
                    && (0.0..=1.0).contains(&m.gpu_utilization)
            })
        },
    )
    .await;
}
