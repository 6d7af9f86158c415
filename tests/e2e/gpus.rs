//! GPUs with simulated devices: detection output, roles, smoke tests of the
//! routing decision matrix (its rows are unit tests of
//! `tandem_shared::routing`; the claim loop's reaction to them, of the
//! worker's `schedule`), out-of-memory hand-back, device failure (sticky
//! errors, hangs, deaths) and the fleet that restarts its workers. Every
//! worker here is a real `tandem-worker` process; the GPUs are simulated
//! (`TANDEM_SIMULATE_GPUS`) and run their tasks on the CPU.

use std::process::Command;

use tandem_producer::{Producer, Task};
use tandem_shared::device::{Health, Role};
use tandem_shared::kind::builtin::{Sleep, SleepParams};
use tandem_shared::wire::TaskRecord;
use tandem_shared::{Class, Status, TaskId};

use crate::support::gpus::{PAIR, PRIMARY, SECONDARY, WAIT, registry, settle, start, store};
use crate::support::{RedisServer, WorkerProcess, bin, wait_until};

/// A gibibyte, the unit of the simulated cards' memory.
const GIB: u64 = 1 << 30;

/// The seed's host: the primary, the secondary and a CPU worker, each with
/// `extra` settings, started and aware of each other.
async fn seed_host(
    redis: &RedisServer,
    extra: &[(&str, &str)],
) -> (WorkerProcess, WorkerProcess, WorkerProcess) {
    let primary = start(redis, PRIMARY, PAIR, extra).await;
    let secondary = start(redis, SECONDARY, PAIR, extra).await;
    let cpu = start(redis, "cpu", PAIR, extra).await;
    settle(&store(redis).await).await;
    (primary, secondary, cpu)
}

fn task(class: Class, ms: u64, memory: u64) -> Task {
    Task::of::<Sleep>(&SleepParams { ms })
        .unwrap()
        .class(class)
        .memory_bytes(memory)
}

async fn submit(
    producer: &Producer,
    class: Class,
    ms: u64,
    memory: u64,
    count: usize,
) -> Vec<TaskId> {
    let mut ids = Vec::new();
    for _ in 0..count {
        ids.push(producer.submit(task(class, ms, memory)).await.unwrap());
    }
    ids
}

/// Waits for every task to succeed; returns their records.
async fn finished(producer: &Producer, ids: &[TaskId]) -> Vec<TaskRecord> {
    let mut records = Vec::new();
    for id in ids {
        let outcome = producer.wait(*id, WAIT).await.unwrap();
        assert_eq!(
            outcome.status,
            Status::Succeeded,
            "{id}: {:?}",
            outcome.record
        );
        records.push(outcome.record);
    }
    records
}

fn devices(records: &[TaskRecord]) -> Vec<String> {
    records
        .iter()
        .map(|r| r.device.clone().unwrap_or_default())
        .collect()
}

fn assert_all_on(records: &[TaskRecord], device: &str) {
    assert!(
        devices(records).iter().all(|d| d == device),
        "expected every task on {device}: {:?}",
        devices(records)
    );
}

fn history(record: &TaskRecord) -> Vec<serde_json::Value> {
    serde_json::from_str::<serde_json::Value>(record.history.as_deref().unwrap_or("[]"))
        .unwrap()
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Waits until `n` workers' records say healthy.
async fn wait_healthy(redis: &RedisServer, n: usize) {
    wait_until(WAIT, &format!("{n} healthy members"), || async {
        registry(redis)
            .await
            .iter()
            .filter(|w| w.health == Health::Healthy)
            .count()
            == n
    })
    .await;
}

/// SIGKILLs process `pid`.
fn kill9(pid: u32) {
    let status = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -KILL {pid}");
}

/// SIGTERM reaches every member of a fleet: they drain and deregister (a
/// killed member's record expires with its heartbeat), and the fleet exits
/// cleanly.
async fn stop_fleet(redis: &RedisServer, fleet: &mut WorkerProcess) {
    fleet.signal("TERM");
    assert_eq!(fleet.wait_exit(WAIT), Some(0));
    wait_until(WAIT, "the registry empties", || async {
        registry(redis).await.is_empty()
    })
    .await;
}

#[test]
fn detect_prints_roles_why_and_labels_simulated_gpus() {
    let out = Command::new(bin("tandem-worker"))
        .arg("detect")
        .env_clear()
        .env("TANDEM_SIMULATE_GPUS", PAIR)
        .output()
        .unwrap();
    assert!(out.status.success());
    let table = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "INDEX",
        "UUID",
        "PCI BUS ID",
        "MEMORY",
        "CC",
        "SMS",
        "SCORE",
        "ROLE",
        "WHY",
        "RTX 4070 Ti (simulated)",
        PRIMARY,
        "12.0 GiB",
        "heavy",
        "light",
        "more capable of two",
    ] {
        assert!(table.contains(needle), "{needle} missing:\n{table}");
    }

    // JSON for scripts; CUDA_VISIBLE_DEVICES leaves the second GPU only,
    // which, alone, is `both`.
    let out = Command::new(bin("tandem-worker"))
        .args(["detect", "--json"])
        .env_clear()
        .env("TANDEM_SIMULATE_GPUS", PAIR)
        .env("CUDA_VISIBLE_DEVICES", "1")
        .output()
        .unwrap();
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let gpus = json["gpus"].as_array().unwrap();
    assert_eq!(gpus.len(), 1);
    assert_eq!(gpus[0]["uuid"], SECONDARY);
    assert_eq!(gpus[0]["index"], 0);
    assert_eq!(gpus[0]["role"], "both");
    assert_eq!(gpus[0]["simulated"], true);

    // No simulation: the real driver, which CI machines lack.
    let out = Command::new(bin("tandem-worker"))
        .arg("detect")
        .env_clear()
        .output()
        .unwrap();
    assert!(out.status.success(), "detect never fails for want of a GPU");
    let text = String::from_utf8(out.stdout).unwrap();
    if text.contains("no GPU") {
        assert!(text.contains("CPU workers only"), "{text}");
    }

    // A device that is not there is a clear error.
    let out = Command::new(bin("tandem-worker"))
        .args(["run", "--device", "5"])
        .env_clear()
        .env("TANDEM_SIMULATE_GPUS", PAIR)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("no GPU has index 5") && err.contains(PRIMARY),
        "{err}"
    );
}

#[tokio::test]
async fn roles_and_devices_show_in_the_registry() {
    let redis = RedisServer::start();
    let primary = start(&redis, "0", PAIR, &[]).await;
    let secondary = start(&redis, SECONDARY, PAIR, &[]).await;
    let workers = registry(&redis).await;
    let find = |id: &str| workers.iter().find(|w| w.id == id).unwrap().clone();
    let p = find(&primary.id);
    assert_eq!((p.role, p.device.as_str()), (Role::Heavy, PRIMARY));
    assert_eq!(p.device_name, "RTX 4070 Ti (simulated)");
    assert!(p.simulated);
    assert_eq!(p.memory_total, 12 * GIB);
    assert_eq!(p.memory_budget, 12 * GIB / 100 * 90);
    let s = find(&secondary.id);
    assert_eq!((s.role, s.device_index), (Role::Light, Some(1)));

    // `tandem workers` shows the same.
    let out = Command::new(bin("tandem"))
        .arg("workers")
        .env_clear()
        .env("TANDEM_REDIS_URL", redis.url())
        .output()
        .unwrap();
    assert!(out.status.success());
    let table = String::from_utf8(out.stdout).unwrap();
    for needle in [
        primary.id.as_str(),
        PRIMARY,
        "RTX 4070 Ti (simulated)",
        "heavy",
        "light",
        "healthy",
        "0 B / 10.8 GiB",
    ] {
        assert!(table.contains(needle), "{needle} missing:\n{table}");
    }
}

#[tokio::test]
async fn heavy_to_the_primary_light_to_the_secondary_cpu_to_the_cpu_worker() {
    let redis = RedisServer::start();
    let (_primary, _secondary, _cpu) = seed_host(&redis, &[]).await;
    let producer = redis.producer().await;
    let heavy = submit(&producer, Class::Heavy, 20, GIB, 5).await;
    let light = submit(&producer, Class::Light, 20, GIB, 5).await;
    let cpu = submit(&producer, Class::Cpu, 20, 0, 5).await;
    assert_all_on(&finished(&producer, &heavy).await, PRIMARY);
    assert_all_on(&finished(&producer, &light).await, SECONDARY);
    assert_all_on(&finished(&producer, &cpu).await, "cpu");
}

#[tokio::test]
async fn primary_dies_heavy_tasks_that_fit_run_on_the_secondary_the_rest_on_the_cpu() {
    let redis = RedisServer::start();
    let (primary, _secondary, _cpu) = seed_host(&redis, &[]).await;
    let producer = redis.producer().await;
    // One heavy task in flight on the primary when it dies, and a backlog.
    let running = producer
        .submit(task(Class::Heavy, 5_000, GIB))
        .await
        .unwrap();
    wait_until(WAIT, "the heavy task runs on the primary", || async {
        producer.record(running).await.unwrap().is_some_and(|r| {
            r.status == Some(Status::Running) && r.device.as_deref() == Some(PRIMARY)
        })
    })
    .await;
    let fits = submit(&producer, Class::Heavy, 20, 2 * GIB, 3).await;
    let too_big = submit(&producer, Class::Heavy, 20, 10 * GIB, 3).await;
    primary.signal("KILL");

    let taken_over = finished(&producer, &[running]).await;
    assert_all_on(&taken_over, SECONDARY);
    assert_all_on(&finished(&producer, &fits).await, SECONDARY);
    assert_all_on(&finished(&producer, &too_big).await, "cpu");
}

#[tokio::test]
async fn an_idle_primary_helps_with_a_light_backlog_one_task_at_a_time() {
    let redis = RedisServer::start();
    let help = [("TANDEM_LIGHT_HELP_MS", "200")];
    let primary = start(&redis, PRIMARY, PAIR, &help).await;
    let _secondary = start(&redis, SECONDARY, PAIR, &help).await;
    settle(&store(&redis).await).await;
    let producer = redis.producer().await;
    let ids = submit(&producer, Class::Light, 400, GIB, 6).await;
    let records = finished(&producer, &ids).await;
    let on_primary: Vec<&TaskRecord> = records
        .iter()
        .filter(|r| r.device.as_deref() == Some(PRIMARY))
        .collect();
    assert!(
        !on_primary.is_empty(),
        "the idle primary never helped: {:?}",
        devices(&records)
    );
    assert!(
        records
            .iter()
            .any(|r| r.device.as_deref() == Some(SECONDARY))
    );
    // One at a time: the primary's light tasks never overlap.
    let mut spans: Vec<(u64, u64)> = on_primary
        .iter()
        .map(|r| (r.started_at_ms.unwrap(), r.finished_at_ms.unwrap()))
        .collect();
    spans.sort();
    for pair in spans.windows(2) {
        assert!(
            pair[1].0 >= pair[0].1,
            "overlapping light tasks on the primary: {spans:?}"
        );
    }
    drop(primary);
}

#[tokio::test]
async fn a_busy_primary_spills_heavy_tasks_to_the_secondary_if_they_fit_else_to_the_cpu() {
    let redis = RedisServer::start();
    let spill = [("TANDEM_HEAVY_SPILL_MS", "300")];
    let (_primary, _secondary, _cpu) = seed_host(&redis, &spill).await;
    let producer = redis.producer().await;
    let long = producer
        .submit(task(Class::Heavy, 4_000, GIB))
        .await
        .unwrap();
    wait_until(WAIT, "the primary is busy", || async {
        producer.status(long).await.unwrap() == Status::Running
    })
    .await;
    let fits = submit(&producer, Class::Heavy, 10, 2 * GIB, 2).await;
    let spilled = finished(&producer, &fits).await;
    assert_all_on(&spilled, SECONDARY);
    let too_big = submit(&producer, Class::Heavy, 10, 9 * GIB, 1).await;
    let to_cpu = finished(&producer, &too_big).await;
    assert_all_on(&to_cpu, "cpu");
    let long = finished(&producer, &[long]).await;
    assert_all_on(&long, PRIMARY);
    // They did not wait for the primary: each started (by the Redis clock)
    // before the primary's long task ended.
    let primary_free = long[0].finished_at_ms.unwrap();
    for record in spilled.iter().chain(&to_cpu) {
        assert!(
            record.started_at_ms.unwrap() < primary_free,
            "a spilled task waited for the primary: {record:?}"
        );
    }
}

#[tokio::test]
async fn out_of_memory_hands_the_task_back_for_more_room_and_the_worker_goes_on() {
    let redis = RedisServer::start();
    let solo = "Solo, 4 GiB, 10 TFLOPS, oom_above=1 GiB";
    let gpu = start(&redis, "0", solo, &[]).await;
    let _cpu = start(&redis, "cpu", solo, &[]).await;
    settle(&store(&redis).await).await;
    let producer = redis.producer().await;
    let big = producer
        .submit(task(Class::Heavy, 10, 2 * GIB))
        .await
        .unwrap();
    assert_all_on(&finished(&producer, &[big]).await, "cpu");
    let record = producer.record(big).await.unwrap().unwrap();
    let history = history(&record);
    assert!(
        history.iter().any(|h| h["status"] == "handed_back"
            && h["error_code"] == "DEVICE_OUT_OF_MEMORY"
            && h["device"] == "SIM-0-solo"),
        "{history:?}"
    );
    // Not fatal: the GPU worker runs the next task that fits.
    let small = producer
        .submit(task(Class::Heavy, 10, GIB / 2))
        .await
        .unwrap();
    assert_all_on(&finished(&producer, &[small]).await, "SIM-0-solo");
    drop(gpu);
}

#[tokio::test]
async fn a_hung_device_is_failed_by_the_watchdog_and_its_task_runs_elsewhere() {
    let redis = RedisServer::start();
    let hangs = "Solo, 4 GiB, 10 TFLOPS, hang_after=0";
    let mut gpu = start(&redis, "0", hangs, &[("TANDEM_DEVICE_WATCHDOG_MS", "500")]).await;
    let _cpu = start(&redis, "cpu", hangs, &[]).await;
    settle(&store(&redis).await).await;
    let producer = redis.producer().await;
    let id = producer.submit(task(Class::Heavy, 10, GIB)).await.unwrap();
    // The registry says so (until the record's TTL runs out), then the
    // worker exits for its fleet to restart it.
    wait_until(WAIT, "the device marked failed", || async {
        registry(&redis)
            .await
            .iter()
            .any(|w| w.id == gpu.id && w.health == Health::Failed)
    })
    .await;
    assert_eq!(
        gpu.wait_exit(WAIT),
        Some(3),
        "a failed device exits with status 3"
    );
    assert_all_on(&finished(&producer, &[id]).await, "cpu");
    let record = producer.record(id).await.unwrap().unwrap();
    assert!(
        history(&record)
            .iter()
            .any(|h| h["status"] == "handed_back" && h["error_code"] == "DEVICE_FAILED"),
        "{:?}",
        history(&record)
    );
    assert!(gpu.log_text().contains("device hung"), "{}", gpu.log_text());
}

#[tokio::test]
async fn a_device_that_dies_mid_task_loses_nothing() {
    let redis = RedisServer::start();
    let dies = "Solo, 4 GiB, 10 TFLOPS, die_after=0";
    let mut gpu = start(&redis, "0", dies, &[]).await;
    let _cpu = start(&redis, "cpu", dies, &[]).await;
    settle(&store(&redis).await).await;
    let producer = redis.producer().await;
    let id = producer.submit(task(Class::Heavy, 10, GIB)).await.unwrap();
    gpu.wait_exit(WAIT);
    assert_all_on(&finished(&producer, &[id]).await, "cpu");
}

#[tokio::test]
async fn a_sticky_error_fails_the_device_and_the_fleet_restarts_and_probes_it() {
    let redis = RedisServer::start();
    let flaky = "Solo, 4 GiB, 10 TFLOPS, fail_after=2, probe_failures=2";
    let mut fleet = WorkerProcess::spawn_fleet(
        &redis,
        &[
            ("TANDEM_SIMULATE_GPUS", flaky),
            ("TANDEM_CONCURRENCY", "2"),
            ("TANDEM_FLEET_RESTART_MS", "100"),
            ("TANDEM_PROBE_BACKOFF_MS", "100"),
            ("TANDEM_CPU_FALLBACK_MS", "0"),
        ],
    );
    wait_until(WAIT, "a healthy GPU worker and a CPU worker", || async {
        let workers = registry(&redis).await;
        workers
            .iter()
            .any(|w| w.role == Role::Both && w.health == Health::Healthy)
            && workers.iter().any(|w| w.role == Role::Cpu)
    })
    .await;
    let first_gpu_worker = registry(&redis)
        .await
        .into_iter()
        .find(|w| w.role == Role::Both)
        .unwrap();
    settle(&store(&redis).await).await;
    let producer = redis.producer().await;
    let ids = submit(&producer, Class::Heavy, 300, GIB, 6).await;
    finished(&producer, &ids).await;
    let mut records = Vec::new();
    for id in &ids {
        records.push(producer.record(*id).await.unwrap().unwrap());
    }
    // The third task hit the sticky error: it and the one beside it went
    // back, marked in their history, and ran again.
    let handed_back: Vec<&TaskRecord> = records
        .iter()
        .filter(|r| {
            history(r)
                .iter()
                .any(|h| h["error_code"] == "DEVICE_FAILED")
        })
        .collect();
    assert!(
        !handed_back.is_empty(),
        "no task was handed back: {records:?}"
    );

    // The fleet restarted the worker; it probed (failing twice) and is
    // healthy again, under a new id.
    wait_until(WAIT, "a new healthy GPU worker", || async {
        registry(&redis).await.iter().any(|w| {
            w.role == Role::Both && w.health == Health::Healthy && w.id != first_gpu_worker.id
        })
    })
    .await;
    let log = fleet.log_text();
    for needle in [
        "its device failed (status 3)",
        "restarted",
        "simulated probe failure 2 of 2",
        "probe passed: the device is healthy again",
    ] {
        assert!(
            log.contains(needle),
            "{needle:?} not in the fleet log:\n{log}"
        );
    }
    settle(&store(&redis).await).await;
    let again = producer.submit(task(Class::Heavy, 10, GIB)).await.unwrap();
    assert_all_on(&finished(&producer, &[again]).await, "SIM-0-solo");

    stop_fleet(&redis, &mut fleet).await;
}

#[tokio::test]
async fn the_fleet_runs_a_worker_per_gpu_and_restarts_one_that_is_killed() {
    let redis = RedisServer::start();
    let mut fleet = WorkerProcess::spawn_fleet(
        &redis,
        &[
            ("TANDEM_SIMULATE_GPUS", PAIR),
            ("TANDEM_FLEET_RESTART_MS", "100"),
        ],
    );
    wait_until(WAIT, "three members registered", || async {
        let workers = registry(&redis).await;
        let mut roles: Vec<Role> = workers.iter().map(|w| w.role).collect();
        roles.sort();
        roles == [Role::Heavy, Role::Light, Role::Cpu]
            && workers.iter().all(|w| w.health == Health::Healthy)
    })
    .await;
    let workers = registry(&redis).await;
    let primary = workers
        .iter()
        .find(|w| w.role == Role::Heavy)
        .unwrap()
        .clone();
    assert_eq!(primary.device, PRIMARY);
    assert!(primary.id.contains("-sim0-"), "{}", primary.id);
    kill9(primary.pid);
    wait_until(WAIT, "the primary restarted", || async {
        registry(&redis)
            .await
            .iter()
            .any(|w| w.device == PRIMARY && w.pid != primary.pid && w.health == Health::Healthy)
    })
    .await;
    assert!(
        fleet.log_text().contains("killed by signal 9"),
        "{}",
        fleet.log_text()
    );

    stop_fleet(&redis, &mut fleet).await;
}

/// A member restarted while a sibling is down (waiting out its restart
/// delay) is not told of that sibling: told of it, it would count it live
/// until seen live, up to 30 s, and leave its work alone (a GPU member
/// takes no cpu task while it counts a CPU worker live). `tandem chaos`
/// saw cpu tasks wait 30 s so: the CPU worker, killed again and again,
/// waited out a 30 s delay while both GPU members were restarted.
#[tokio::test]
async fn a_member_restarted_while_a_sibling_is_down_is_not_told_of_it() {
    let redis = RedisServer::start();
    let mut fleet = WorkerProcess::spawn_fleet(
        &redis,
        &[
            ("TANDEM_SIMULATE_GPUS", PAIR),
            ("TANDEM_FLEET_RESTART_MS", "2000"),
            ("TANDEM_FLEET_RESTART_MAX_MS", "600000"),
        ],
    );
    // The healthy records of a role's workers (a killed one's lingers
    // until its heartbeat lapses).
    let pids = |role: Role| {
        let redis = &redis;
        async move {
            registry(redis)
                .await
                .iter()
                .filter(|w| w.role == role && w.health == Health::Healthy)
                .map(|w| w.pid)
                .collect::<Vec<u32>>()
        }
    };
    wait_healthy(&redis, 3).await;
    let first_cpu = pids(Role::Cpu).await[0];
    let primary = pids(Role::Heavy).await[0];
    kill9(first_cpu);
    wait_until(WAIT, "the CPU worker restarted", || async {
        pids(Role::Cpu).await.iter().any(|&p| p != first_cpu)
    })
    .await;
    let cpu = pids(Role::Cpu)
        .await
        .into_iter()
        .find(|&p| p != first_cpu)
        .unwrap();
    // Killed again within seconds of its start, the CPU worker waits twice
    // the delay (4 s); the primary, killed for the first time, the delay
    // (2 s): it restarts while the CPU worker is down.
    kill9(cpu);
    kill9(primary);
    wait_until(WAIT, "the primary restarted", || async {
        pids(Role::Heavy).await.iter().any(|&p| p != primary)
    })
    .await;
    let log = fleet.log_text();
    let line_of = |needle: &[&str]| {
        log.lines()
            .position(|line| needle.iter().all(|n| line.contains(n)))
    };
    let primary_back = line_of(&["restarted (", "member=\"sim0\"", "restart=1"])
        .unwrap_or_else(|| panic!("no restart of the primary in the log:\n{log}"));
    let cpu_back = line_of(&["restarted (", "member=\"cpu\"", "restart=2"]);
    assert!(
        cpu_back.is_none_or(|line| line > primary_back),
        "the CPU worker was back before the primary restarted; nothing to judge:\n{log}"
    );
    // What the restarted primary was told: the second line naming siblings
    // that does not name its own device (the others' lines name it).
    let told = log
        .lines()
        .filter(|line| line.contains("counting its members as live") && !line.contains(PRIMARY))
        .nth(1)
        .unwrap_or_else(|| panic!("the restarted primary names no siblings:\n{log}"));
    assert!(told.contains(SECONDARY), "{told}");
    assert!(
        !told.contains("\"cpu\""),
        "told of the CPU worker while it was down: {told}"
    );

    stop_fleet(&redis, &mut fleet).await;
}

#[tokio::test]
async fn a_task_that_fails_every_device_it_touches_ends_as_poison() {
    let redis = RedisServer::start();
    let mut fleet = WorkerProcess::spawn_fleet(
        &redis,
        &[
            (
                "TANDEM_SIMULATE_GPUS",
                "Bad, 4 GiB, 10 TFLOPS, fail_after=0",
            ),
            ("TANDEM_FLEET_CPU_WORKER", "false"),
            ("TANDEM_FLEET_RESTART_MS", "100"),
            ("TANDEM_MAX_DELIVERIES", "3"),
        ],
    );
    let producer = redis.producer().await;
    let id = producer.submit(task(Class::Heavy, 10, GIB)).await.unwrap();
    let outcome = producer.wait(id, WAIT).await.unwrap();
    assert_eq!(outcome.status, Status::Failed);
    assert_eq!(outcome.failure().unwrap().code.as_str(), "MAX_DELIVERIES");
    let record = producer.record(id).await.unwrap().unwrap();
    let interruptions = history(&record)
        .iter()
        .filter(|h| h["error_code"] == "DEVICE_FAILED")
        .count();
    assert_eq!(interruptions, 3, "{:?}", record.history);
    fleet.signal("TERM");
    assert_eq!(fleet.wait_exit(WAIT), Some(0));
}

#[tokio::test]
async fn the_fleets_members_stop_when_the_fleet_is_killed() {
    let redis = RedisServer::start();
    let mut fleet = WorkerProcess::spawn_fleet(
        &redis,
        &[("TANDEM_SIMULATE_GPUS", "Solo, 4 GiB, 10 TFLOPS")],
    );
    wait_until(WAIT, "two healthy members", || async {
        let workers = registry(&redis).await;
        workers.len() == 2 && workers.iter().all(|w| w.health == Health::Healthy)
    })
    .await;
    let pids: Vec<u32> = registry(&redis).await.iter().map(|w| w.pid).collect();
    fleet.signal("KILL");
    fleet.wait_exit(WAIT);
    // Each member asked the kernel for SIGTERM when its parent dies: none
    // is left behind claiming tasks.
    wait_until(WAIT, "the members exit with the fleet", || async {
        pids.iter()
            .all(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
    })
    .await;
}

#[tokio::test]
async fn a_gpu_only_task_too_large_for_every_gpu_fails_with_insufficient_gpu_memory() {
    use tandem_shared::kind::builtin::GpuOnly;
    let redis = RedisServer::start();
    let (_primary, _secondary, cpu) = seed_host(&redis, &[("TANDEM_TEST_KINDS", "1")]).await;
    let producer = redis.producer().await;
    let task = |memory: u64| {
        Task::of::<GpuOnly>(&SleepParams { ms: 10 })
            .unwrap()
            .memory_bytes(memory)
    };
    let fits = producer.submit(task(GIB)).await.unwrap();
    let too_big = producer.submit(task(20 * GIB)).await.unwrap();
    assert_all_on(&finished(&producer, &[fits]).await, PRIMARY);
    let outcome = producer.wait(too_big, WAIT).await.unwrap();
    assert_eq!(outcome.status, Status::Failed, "{:?}", outcome.record);
    let error = outcome.record.error.clone().unwrap();
    assert_eq!(
        error.code,
        tandem_shared::ErrorCode::INSUFFICIENT_GPU_MEMORY
    );
    assert!(error.message.contains("no CPU path"), "{error:?}");
    assert_eq!(outcome.record.worker.as_deref(), Some(cpu.id.as_str()));
    assert!(outcome.record.dead_letter.is_some());
}

#[tokio::test]
async fn out_of_memory_on_the_primary_hands_the_task_to_the_secondary() {
    let redis = RedisServer::start();
    let pair =
        "RTX 4070 Ti, 12 GiB, 40.09 TFLOPS, oom_above=1 GiB; RTX 3060 Ti, 8 GiB, 16.2 TFLOPS";
    let spill = [("TANDEM_HEAVY_SPILL_MS", "1000")];
    let _primary = start(&redis, PRIMARY, pair, &spill).await;
    let _secondary = start(&redis, SECONDARY, pair, &spill).await;
    let _cpu = start(&redis, "cpu", pair, &spill).await;
    settle(&store(&redis).await).await;
    let producer = redis.producer().await;
    let id = producer
        .submit(task(Class::Heavy, 10, 2 * GIB))
        .await
        .unwrap();
    let records = finished(&producer, &[id]).await;
    // The primary ran out of memory launching it; the secondary, which has
    // room for 2 GiB, ran it (not the CPU worker).
    assert_all_on(&records, SECONDARY);
    let record = producer.record(id).await.unwrap().unwrap();
    let history = history(&record);
    assert!(
        history.iter().any(|h| h["status"] == "handed_back"
            && h["error_code"] == "DEVICE_OUT_OF_MEMORY"
            && h["device"] == PRIMARY),
        "{history:?}"
    );
}

/// Right after a fleet starts, every member knows its siblings: a heavy
/// task goes to the primary and a parallel task is split across the GPUs,
/// whether it was submitted before the members came up or the moment they
/// were all healthy. Several fresh fleets, alternating the two.
#[tokio::test]
async fn right_after_a_fleet_starts_heavy_goes_to_the_primary_and_parallel_splits() {
    use tandem_shared::kind::builtin::{SplitSum, SplitSumParams};
    for round in 0..4 {
        let redis = RedisServer::start();
        let mut fleet = WorkerProcess::spawn_fleet(
            &redis,
            &[
                ("TANDEM_SIMULATE_GPUS", PAIR),
                ("TANDEM_TEST_KINDS", "1"),
                ("TANDEM_HEAVY_SPILL_MS", "600000"),
                ("TANDEM_CPU_FALLBACK_MS", "0"),
            ],
        );
        let producer = redis.producer().await;
        if round % 2 == 1 {
            wait_healthy(&redis, 3).await;
        }
        let heavy = producer.submit(task(Class::Heavy, 10, GIB)).await.unwrap();
        let params = SplitSumParams {
            n: 8_000,
            block: 100,
            block_ms: 1,
            fail_block: None,
        };
        let parallel = producer
            .submit(Task::of::<SplitSum>(&params).unwrap())
            .await
            .unwrap();
        let records = finished(&producer, &[heavy]).await;
        assert!(
            devices(&records).iter().all(|d| d == PRIMARY),
            "round {round}: the heavy task ran on {:?}",
            devices(&records)
        );
        let outcome = producer.wait(parallel, WAIT).await.unwrap();
        assert!(outcome.succeeded(), "round {round}: {:?}", outcome.record);
        let record = producer.record(parallel).await.unwrap().unwrap();
        assert_eq!(
            record.shards,
            Some(8),
            "round {round}: not split for two GPUs: {record:?}"
        );
        stop_fleet(&redis, &mut fleet).await;
    }
}
