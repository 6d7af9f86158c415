//! The `tandem` command-line tool against real Redis and workers.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use redis::AsyncCommands;

use crate::support::{RedisServer, WorkerProcess, bin};

fn tandem(redis: Option<&RedisServer>, args: &[&str]) -> Output {
    let mut cmd = Command::new(bin("tandem"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("TANDEM_WORKER_BIN", bin("tandem-worker"));
    if let Some(redis) = redis {
        cmd.env("REDIS_URL", redis.url());
    }
    cmd.output().expect("run tandem")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn submit_wait_status_cancel_and_queues() {
    let redis = RedisServer::start();

    // Queued tasks, no worker yet.
    let out = tandem(
        Some(&redis),
        &[
            "submit",
            "sleep",
            "--params",
            r#"{"ms": 5}"#,
            "--priority",
            "high",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let queued_id = stdout(&out).trim().to_owned();
    let out = tandem(Some(&redis), &["submit", "noop", "--priority", "high"]);
    let cancelled_id = stdout(&out).trim().to_owned();

    let out = tandem(Some(&redis), &["queues"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let line = text
        .lines()
        .find(|l| l.starts_with("tandem:{cpu}:stream:high"))
        .expect(&text);
    let cells: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(&cells[1..6], ["cpu", "high", "2", "2", "0"], "{text}");
    assert!(text.contains("2 waiting"), "{text}");

    let out = tandem(Some(&redis), &["status", &queued_id]);
    assert!(stdout(&out).contains("queued"), "{}", stdout(&out));
    let out = tandem(Some(&redis), &["cancel", &cancelled_id]);
    assert!(out.status.success());
    assert!(stdout(&out).contains("will never run"), "{}", stdout(&out));
    let out = tandem(Some(&redis), &["queues"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("1 waiting"), "{}", stdout(&out));
    let out = tandem(Some(&redis), &["wait", &queued_id, "--timeout-ms", "100"]);
    assert_eq!(out.status.code(), Some(5));
    assert!(stderr(&out).contains("did not finish"), "{}", stderr(&out));

    let _worker = WorkerProcess::start(&redis, &[]).await;
    let out = tandem(Some(&redis), &["wait", &queued_id]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("succeeded") && stdout(&out).contains("slept_ms"),
        "{}",
        stdout(&out)
    );

    let out = tandem(
        Some(&redis),
        &[
            "submit",
            "echo",
            "--params",
            r#"{"symbol": "ES", "qty": 3}"#,
            "--wait",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("symbol") && stdout(&out).contains("ES"),
        "{}",
        stdout(&out)
    );

    let out = tandem(
        Some(&redis),
        &[
            "submit",
            "fail",
            "--params",
            r#"{"code": "E_CLI"}"#,
            "--wait",
        ],
    );
    assert_eq!(out.status.code(), Some(4));
    assert!(stdout(&out).contains("E_CLI"), "{}", stdout(&out));

    let out = tandem(
        Some(&redis),
        &["submit", "sleep", "--params", r#"{"ms": 99999999}"#],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("bad parameters"), "{}", stderr(&out));

    let out = tandem(
        Some(&redis),
        &["status", "01a21a05-0223-7150-a48a-bb5c548aed3d"],
    );
    assert_eq!(out.status.code(), Some(3));
}

#[tokio::test]
async fn demo_on_a_given_redis_runs_the_workload_and_cleans_up() {
    let redis = RedisServer::start();
    let out = tandem(Some(&redis), &["demo", "--tasks", "300", "--workers", "2"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("300 tasks in"), "{text}");
    for section in ["kind", "by priority", "by worker", "critical", "low"] {
        assert!(text.contains(section), "{section} missing:\n{text}");
    }
    // Nothing of the demo stays behind in a Redis it did not start.
    let mut conn = redis.conn().await;
    let keys: Vec<String> = conn.keys("*").await.unwrap();
    assert!(keys.is_empty(), "left behind: {keys:?}");
}

#[test]
fn demo_without_redis_url_starts_and_stops_its_own_redis() {
    let out = tandem(None, &["demo", "--tasks", "100", "--workers", "1"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    let port = local_redis_port(&text);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the demo's redis-server still listens on {port}"
    );
}

#[test]
fn demo_cleans_up_on_ctrl_c() {
    use std::io::{BufRead, BufReader};
    use std::sync::{Arc, Mutex};
    let mut child = Command::new(bin("tandem"))
        .args(["demo", "--tasks", "1000000", "--workers", "1"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("TANDEM_WORKER_BIN", bin("tandem-worker"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let demo_pid = child.id();
    // Its output, read as it comes.
    let printed = Arc::new(Mutex::new(String::new()));
    let reader = {
        let printed = printed.clone();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let mut text = printed.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
            }
        })
    };
    let text = || printed.lock().unwrap().clone();
    // The demo takes Ctrl-C as its own once its workload runs: wait until
    // its Redis holds a task record (a bound only against a hang).
    let mut redis: Option<redis::Connection> = None;
    let started = crate::support::poll_until(Duration::from_secs(120), || {
        if redis.is_none() && text().contains("started 1 workers") {
            let port = local_redis_port(&text());
            redis = redis::Client::open(format!("redis://127.0.0.1:{port}"))
                .and_then(|client| client.get_connection())
                .ok();
        }
        redis.as_mut().is_some_and(|conn| {
            let (_, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(0)
                .arg("MATCH")
                .arg("*:task:*")
                .arg("COUNT")
                .arg(1000)
                .query(conn)
                .unwrap_or_default();
            !keys.is_empty()
        })
    });
    assert!(started, "the demo's workload did not start:\n{}", text());
    drop(redis);
    let status = Command::new("kill")
        .args(["-INT", &demo_pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    reader.join().unwrap();
    let text = text();
    assert_eq!(out.status.code(), Some(130), "{}\n{}", text, stderr(&out));
    assert!(text.contains("interrupted"), "{text}");
    let port = local_redis_port(&text);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "redis-server left running"
    );
    assert!(
        worker_pids(demo_pid).is_empty(),
        "worker processes left running"
    );
}

/// `tandem demo --trading ARGS` against `redis`, to its end: its output
/// and its pid (whose worker children must be gone).
fn trading_demo(redis: &RedisServer, args: &[&str]) -> (Output, u32) {
    let child = Command::new(bin("tandem"))
        .args(["demo", "--trading"])
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("TANDEM_WORKER_BIN", bin("tandem-worker"))
        .env("REDIS_URL", redis.url())
        // No GPU, also on a host that has one: the demo simulates the pair.
        .env("CUDA_VISIBLE_DEVICES", "")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let demo_pid = child.id();
    (child.wait_with_output().unwrap(), demo_pid)
}

#[tokio::test]
async fn demo_trading_runs_the_trading_kinds_on_a_simulated_fleet_and_cleans_up() {
    let redis = RedisServer::start();
    let (out, demo_pid) = trading_demo(&redis, &["--tasks", "20"]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    for needle in [
        "simulated: RTX 4070 Ti",
        "20 tasks in",
        "all 20 tasks succeeded",
        "monte_carlo book",
        "split tasks",
        "risk VaR historical",
        "indicators",
        "patterns",
        "portfolio_opt",
        "monte_carlo revaluation (heavy)",
        "Black-Scholes",
        // The design's PredictPriceAsync: the transformer on the heavy
        // GPU, which runs it on its CPU twin (and says so).
        "transformer predictions (price_prediction_transformer, version 1",
        "128 symbols, heavy, high priority, on SIM-0-rtx-4070-ti",
        "ran on the CPU twin (CPU fallback)",
    ] {
        assert!(text.contains(needle), "{needle:?} missing:\n{text}");
    }
    // Each simulated GPU ran tasks or shards: the last two cells of its row
    // in the device table.
    let devices = text.split("\nby device").nth(1).expect(&text);
    for (label, name) in [
        ("primary", "RTX 4070 Ti (simulated)"),
        ("secondary", "RTX 3060 Ti (simulated)"),
    ] {
        let row = devices
            .lines()
            .find(|l| l.starts_with(label))
            .unwrap_or_else(|| panic!("no {label} row:\n{text}"));
        let cells: Vec<&str> = row.split_whitespace().collect();
        let ran: u64 = cells[cells.len() - 2..]
            .iter()
            .map(|c| c.parse::<u64>().expect(row))
            .sum();
        assert!(row.contains(name) && ran > 0, "{row}\n{text}");
    }
    // The fleet and its members are gone, and so are the run's keys.
    assert!(
        demo_worker_pids(demo_pid).is_empty(),
        "worker processes left running"
    );
    let mut conn = redis.conn().await;
    let keys: Vec<String> = conn.keys("*").await.unwrap();
    assert!(keys.is_empty(), "left behind: {keys:?}");
}

/// Issue 14, point 4: the trading pipeline as one workflow. Every step is
/// in the table with its worker and device, the result holds the VaR and
/// a fully invested book, and the workflow Redis kept (`--keep`) is
/// `succeeded`. No timing is asserted: the step boundaries are printed.
#[tokio::test]
async fn demo_trading_pipeline_runs_one_workflow_and_shows_each_step() {
    let redis = RedisServer::start();
    let (out, demo_pid) = trading_demo(&redis, &["--pipeline", "--symbols", "50", "--keep"]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    // The per-step table: every node, its kind, a worker and a device.
    let table = text
        .split("\nnode ")
        .nth(1)
        .and_then(|t| t.split("result (sink nodes)").next())
        .unwrap_or_else(|| panic!("no step table:\n{text}"));
    for (node, kind) in [
        ("indicators", "indicators"),
        ("patterns", "patterns"),
        ("features", "features"),
        ("predict", "predict_batch"),
        ("book", "book"),
        ("optimise", "portfolio_opt"),
        ("var", "risk"),
        ("report", "echo"),
    ] {
        let row = table
            .lines()
            .find(|l| l.split_whitespace().next() == Some(node))
            .unwrap_or_else(|| panic!("no {node} row:\n{text}"));
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells[1], kind, "{row}");
        assert_eq!(cells[3], "succeeded", "{row}");
        assert!(cells[4].starts_with("vm-"), "a worker: {row}");
        assert!(
            row.contains("simulated GPU RTX") || row.contains("cpu (CPU worker)"),
            "a device: {row}"
        );
    }
    assert!(text.contains("step boundary ("), "{text}");
    assert!(text.contains("the 5 ms target"), "{text}");
    assert!(
        demo_worker_pids(demo_pid).is_empty(),
        "worker processes left running"
    );

    // The workflow as Redis kept it, under the run's prefix.
    let line = |start: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(start))
            .unwrap_or_else(|| panic!("no {start:?} line:\n{text}"))
            .to_owned()
    };
    let id = line("submitted workflow ");
    let id = id.split(':').next().expect("an id").to_owned();
    let prefix = line("kept the run's keys under the prefix ");
    let status = Command::new(bin("tandem"))
        .args(["flow", "status", &id, "--json"])
        .env_clear()
        .env("REDIS_URL", redis.url())
        .env("TANDEM_PREFIX", prefix.trim())
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", stderr(&status));
    let state: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(state["status"], "succeeded", "{state}");
    assert_eq!(state["nodes"].as_array().map(Vec::len), Some(8), "{state}");
    let report = &state["result"]["report"];
    let weights: Vec<f64> = report["weights"]
        .as_array()
        .unwrap_or_else(|| panic!("no weights: {state}"))
        .iter()
        .map(|w| w.as_f64().expect("a number"))
        .collect();
    assert_eq!(weights.len(), 50, "{report}");
    assert!(weights.iter().all(|w| *w >= 0.0), "{report}");
    let sum: f64 = weights.iter().sum();
    assert!((sum - 1.0).abs() < 1e-6, "weights sum to {sum}: {report}");
    let var: Vec<f64> = report["var"]
        .as_array()
        .unwrap_or_else(|| panic!("no VaR: {report}"))
        .iter()
        .map(|v| v.as_f64().expect("a number"))
        .collect();
    assert_eq!(var.len(), 2, "{report}");
    assert!(var.iter().all(|v| v.is_finite()), "{report}");
    assert!(text.contains("VaR 99 %: "), "{text}");
}

#[test]
fn bench_runs_every_phase() {
    let out = tandem(
        None,
        &[
            "bench",
            "--n",
            "300",
            "--runs",
            "1",
            "--workers",
            "1",
            "--rate",
            "200",
            "--duration",
            "1",
        ],
    );
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    for phase in ["enqueue, then consume", "drain", "latency"] {
        assert!(text.contains(phase), "{phase} missing:\n{text}");
    }
    assert!(!text.contains("FAILED"), "{text}");
}

/// The floor phases finish every task and write, per task, exactly what
/// docs/BENCHMARKS.md says the floor writes (the counts of `INFO
/// commandstats` do not depend on the machine's speed), with events and
/// without.
#[test]
fn bench_floor_phases_write_only_what_a_task_needs() {
    let scratch = crate::support::ScratchDir::new("floor");
    let json = scratch.path().join("floor.json");
    let out = tandem(
        None,
        &[
            "bench",
            "--phases",
            "floor,floor-consume",
            "--events",
            "on,off",
            "--n",
            "300",
            "--runs",
            "1",
            "--workers",
            "2",
            "--prefetch",
            "4",
            "--json",
            json.to_str().expect("a UTF-8 path"),
        ],
    );
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    for row in ["floor (drain", "floor (enqueue, then consume)"] {
        assert!(text.contains(row), "{row} missing:\n{text}");
    }
    let runs: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("the --json file")).unwrap();
    let runs = runs.as_array().expect("a list of runs");
    assert_eq!(runs.len(), 4, "{runs:?}");
    for run in runs {
        assert_eq!(run["tasks"], 300, "{run}");
        assert!(
            run["completed_per_s"].as_f64().unwrap_or(0.0) > 0.0,
            "{run}"
        );
        let calls = |command: &str| -> f64 {
            run["cost"]["commands"]
                .as_array()
                .expect("commands")
                .iter()
                .find(|c| c["command"] == command)
                .and_then(|c| c["calls"].as_f64())
                .unwrap_or(0.0)
        };
        // Entry, plus three events when they are on.
        let xadds = if run["events"] == true { 4.0 } else { 1.0 };
        let expected = [
            ("hsetnx", 1.0),
            ("xadd", xadds),
            ("hset", 3.0),
            ("hmget", 2.0),
            ("zadd", 2.0),
            ("zrem", 1.0),
            ("expire", 1.0),
            ("xack", 1.0),
            ("xdel", 1.0),
        ];
        for (command, per_task) in expected {
            assert!(
                (calls(command) - per_task).abs() < 1e-9,
                "{command}: {} a task, not {per_task}: {run}",
                calls(command)
            );
        }
    }
}

#[test]
fn scaling_splits_over_each_fleet_and_reports_gaps() {
    let out = tandem(
        None,
        &[
            "scaling",
            "--gpus",
            "1,2",
            "--blocks",
            "40",
            "--block-ms",
            "5",
            "--runs",
            "1",
        ],
    );
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    let row = |gpus: &str| -> Vec<String> {
        text.lines()
            .map(|line| {
                line.split_whitespace()
                    .map(String::from)
                    .collect::<Vec<_>>()
            })
            .find(|cells| cells.first().map(String::as_str) == Some(gpus))
            .unwrap_or_else(|| panic!("no row for {gpus} GPUs:\n{text}"))
    };
    // One GPU runs the task whole; two split it into 2 x 4 shards.
    assert_eq!(row("1")[1], "1", "{text}");
    assert_eq!(row("2")[1], "8", "{text}");
    // Each row has its figures (how fast is a benchmark's business, not a
    // test's: docs/BENCHMARKS.md).
    for gpus in ["1", "2"] {
        let makespan: u64 = row(gpus)[2].replace(',', "").parse().unwrap();
        assert!(makespan > 0, "{text}");
    }
}

fn local_redis_port(text: &str) -> u16 {
    text.split("redis://127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("no local redis URL in:\n{text}"))
}

/// Live processes whose environment names a worker the demo `demo_pid` started.
fn worker_pids(demo_pid: u32) -> Vec<u32> {
    let marker = format!("TANDEM_WORKER_ID=local-{demo_pid}-");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let zombie = status
                .lines()
                .any(|l| l.starts_with("State:") && l.contains('Z'));
            !zombie
                && environ
                    .split(|&b| b == 0)
                    .any(|var| var.starts_with(marker.as_bytes()))
        })
        .collect()
}

/// Live processes of the demo `demo_pid` (a worker, a fleet or its
/// members): their environment names the demo's private prefix.
fn demo_worker_pids(demo_pid: u32) -> Vec<u32> {
    let suffix = format!("-demo-{demo_pid}");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let zombie = status
                .lines()
                .any(|l| l.starts_with("State:") && l.contains('Z'));
            !zombie
                && environ.split(|&b| b == 0).any(|var| {
                    var.starts_with(b"TANDEM_PREFIX=") && var.ends_with(suffix.as_bytes())
                })
        })
        .collect()
}

#[tokio::test]
async fn dlq_list_show_requeue_purge() {
    use tandem_producer::Task;
    use tandem_shared::kind::builtin::{Fail, FailParams};

    let redis = RedisServer::start();
    let _worker = WorkerProcess::start(&redis, &[]).await;
    let producer = redis.producer().await;
    let id = producer
        .submit(
            Task::of::<Fail>(&FailParams {
                code: "E_CLI_DLQ".into(),
                message: "refused".into(),
                retry: false,
            })
            .unwrap(),
        )
        .await
        .unwrap();
    let first = producer.wait(id, Duration::from_secs(20)).await.unwrap();
    let first_letter = first.record.dead_letter.clone().unwrap();

    let out = tandem(Some(&redis), &["dlq", "list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains(&id.to_string())
            && text.contains("E_CLI_DLQ")
            && text.contains("1 dead letters"),
        "{text}"
    );

    let out = tandem(Some(&redis), &["dlq", "show", &id.to_string()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains(&first_letter) && text.contains("refused") && text.contains("attempts"),
        "{text}"
    );

    let out = tandem(Some(&redis), &["dlq", "requeue", &first_letter]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("requeued"), "{}", stdout(&out));
    // It runs again, fails again, and is dead-lettered anew.
    crate::support::wait_until(Duration::from_secs(20), "a new dead letter", || async {
        let record = producer.record(id).await.unwrap();
        record.is_some_and(|r| {
            r.dead_letter.is_some() && r.dead_letter.as_deref() != Some(first_letter.as_str())
        })
    })
    .await;
    let again = producer.wait(id, Duration::from_secs(20)).await.unwrap();
    assert_ne!(
        again.record.dead_letter.as_deref(),
        Some(first_letter.as_str())
    );
    let out = tandem(Some(&redis), &["dlq", "list"]);
    assert!(stdout(&out).contains("1 dead letters"), "{}", stdout(&out));

    let out = tandem(Some(&redis), &["dlq", "purge", "--all"]);
    assert!(stdout(&out).contains("purged 1"), "{}", stdout(&out));
    let out = tandem(Some(&redis), &["dlq", "list"]);
    assert!(stdout(&out).contains("0 dead letters"), "{}", stdout(&out));
    let out = tandem(Some(&redis), &["dlq", "show", "1-1"]);
    assert_eq!(out.status.code(), Some(3));
}

#[test]
fn soak_samples_redis_memory_until_every_task_is_done() {
    let out = tandem(
        None,
        &[
            "soak",
            "--n",
            "3000",
            "--workers",
            "1",
            "--result-ttl-s",
            "1",
            "--sample-ms",
            "300",
        ],
    );
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("3,000 completed") && text.contains("used_memory"),
        "{text}"
    );
    assert!(
        text.contains("0 failed") || !text.contains("failed"),
        "{text}"
    );
}
