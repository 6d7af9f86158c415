//! Redis high availability: Tandem on a three-master Redis Cluster (every
//! class on the master that owns its hash tag's slot) and on a master with
//! one replica behind three Sentinels, through a master failover, with
//! producers that wait for a replica to have each submission. The harness
//! (`support::ha`) is checked on its own first, so a failure there reads as
//! a broken setup, not as a Tandem bug.

use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tandem_producer::{CancelOutcome, Producer, ProducerError, Task};
use tandem_shared::device::Health;
use tandem_shared::kind::builtin::{
    Noop, Sleep, SleepOutput, SleepParams, SplitSum, SplitSumOutput, SplitSumParams,
};
use tandem_shared::store::{Store, StoreError};
use tandem_shared::{Class, Config, Status, TaskId};

use crate::support::WorkerProcess;
use crate::support::gpus::{PRIMARY, SECONDARY, WAIT, settle};
use crate::support::ha::{
    GuardedSentinel, RedisCluster, SentinelSetup, data_node, lone_sentinel, replica_node,
};
use crate::support::{RedisServer, ScratchDir, bin, wait_until};

/// The slot of each class's hash tag (and of `{models}`), as the cluster
/// computes it (`CLUSTER KEYSLOT`).
const CLASS_SLOTS: [(Class, u16); 4] = [
    (Class::Cpu, 9296),
    (Class::Light, 6713),
    (Class::Heavy, 8060),
    (Class::Parallel, 10041),
];
const MODELS_SLOT: u16 = 3701;

/// Two paced simulated GPUs; the CPU worker reads the same list.
const PACED: &str =
    "RTX 4070 Ti, 12 GiB, 40.09 TFLOPS, paced; RTX 3060 Ti, 8 GiB, 16.2 TFLOPS, paced";
const GIB: u64 = 1 << 30;

/// Routing that keeps each class on its home device (as `gpus.rs`), test
/// kinds, and four shards per live GPU for a splittable task.
const SIMULATED_HOST: &[(&str, &str)] = &[
    ("TANDEM_SIMULATE_GPUS", PACED),
    ("TANDEM_HEAVY_SPILL_MS", "600000"),
    ("TANDEM_LIGHT_HELP_MS", "600000"),
    ("TANDEM_CPU_FALLBACK_MS", "0"),
    ("TANDEM_CONCURRENCY", "1"),
    ("TANDEM_TEST_KINDS", "1"),
    ("TANDEM_SHARDS_PER_GPU", "4"),
];

async fn store(config: &Config) -> Store {
    Store::connect(config).await.expect("store connects")
}

async fn wait_healthy(store: &Store, worker: &WorkerProcess) {
    wait_until(WAIT, &format!("{} healthy", worker.id), || async {
        store
            .workers()
            .await
            .unwrap_or_default()
            .iter()
            .any(|w| w.id == worker.id && w.health == Health::Healthy)
    })
    .await;
}

/// Runs the `tandem` CLI against `redis_url`.
fn tandem(redis_url: &str, args: &[&str]) -> Output {
    Command::new(bin("tandem"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("TANDEM_REDIS_URL", redis_url)
        .output()
        .expect("run tandem")
}

/// `tandem ARGS` that must succeed; its standard output.
fn tandem_ok(redis_url: &str, args: &[&str]) -> String {
    let out = tandem(redis_url, args);
    assert!(
        out.status.success(),
        "tandem {args:?} exited {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A task of the built-in `sleep` kind, sleeping `ms` in its handler and
/// declaring `memory` bytes of device memory.
fn sleep_task(class: Class, ms: u64, memory: u64) -> Task {
    Task::of::<Sleep>(&SleepParams { ms })
        .unwrap()
        .class(class)
        .memory_bytes(memory)
}

/// The keys node `node` holds in `slot` (`CLUSTER GETKEYSINSLOT` answers
/// for the node's own keys, whoever owns the slot).
async fn keys_in_slot(cluster: &RedisCluster, node: usize, slot: u16) -> Vec<String> {
    let mut conn = cluster.node_conn(node).await;
    redis::cmd("CLUSTER")
        .arg("GETKEYSINSLOT")
        .arg(slot)
        .arg(1000)
        .query_async(&mut conn)
        .await
        .unwrap()
}

/// Asserts `key` (of `slot`) is on the node that owns the slot and on no
/// other.
async fn assert_only_on_owner(cluster: &RedisCluster, key: &str, slot: u16) {
    let owner = cluster.owner_of(slot);
    let mut conn = cluster.node_conn(owner).await;
    let exists: bool = redis::cmd("EXISTS")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        exists,
        "{key} is not on node {owner}, the owner of slot {slot}"
    );
    for node in (0..cluster.len()).filter(|n| *n != owner) {
        let keys = keys_in_slot(cluster, node, slot).await;
        assert!(
            keys.is_empty(),
            "node {node} holds keys of slot {slot}, owned by node {owner}: {keys:?}"
        );
    }
}

// ---- The harness alone ----

#[tokio::test]
async fn harness_cluster_spreads_the_class_slots_and_redirects() {
    let cluster = RedisCluster::start();
    let mut a = cluster.node_conn(0).await;
    // The slots the brief promises, computed by Redis itself.
    for (class, slot) in CLASS_SLOTS {
        let computed: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(format!("tandem:{{{class}}}:stream:normal"))
            .query_async(&mut a)
            .await
            .unwrap();
        assert_eq!(computed, slot, "{class}");
    }
    let computed: u16 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg("tandem:{models}:index")
        .query_async(&mut a)
        .await
        .unwrap();
    assert_eq!(computed, MODELS_SLOT);
    let owners: Vec<usize> = CLASS_SLOTS
        .iter()
        .map(|(_, slot)| cluster.owner_of(*slot))
        .collect();
    assert_eq!(owners, [2, 0, 1, 2], "cpu, light, heavy, parallel");
    assert_eq!(cluster.owner_of(MODELS_SLOT), 0);

    // Node A takes a key of its slot; node B sends the client to A.
    let key = "tandem:{light}:probe";
    let _: () = redis::cmd("SET")
        .arg(key)
        .arg("x")
        .query_async(&mut a)
        .await
        .unwrap();
    let mut b = cluster.node_conn(1).await;
    let moved = redis::cmd("GET")
        .arg(key)
        .query_async::<Option<String>>(&mut b)
        .await
        .expect_err("node B does not serve {light}");
    assert_eq!(moved.code(), Some("MOVED"), "{moved}");
    assert_eq!(
        moved.redirect_node(),
        Some((format!("127.0.0.1:{}", cluster.port(0)).as_str(), 6713)),
        "{moved}"
    );
    assert_only_on_owner(&cluster, key, 6713).await;
    assert!(
        cluster.url().starts_with("redis+cluster://127.0.0.1:")
            && cluster.url().matches(',').count() == 2,
        "{}",
        cluster.url()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_sentinels_fail_over_to_the_replica_and_the_old_master_rejoins() {
    let mut setup = SentinelSetup::start();
    let first = setup.first_master_port;
    assert_eq!(setup.current_master_port().await, first);
    assert_eq!(
        setup.url(),
        format!(
            "redis+sentinel://127.0.0.1:{},127.0.0.1:{},127.0.0.1:{}/mymaster",
            setup.sentinel(0).port,
            setup.sentinel(1).port,
            setup.sentinel(2).port
        )
    );

    // A write on the master reaches the replica.
    let mut master = setup.master().conn().await;
    let _: () = redis::cmd("SET")
        .arg("before")
        .arg("1")
        .query_async(&mut master)
        .await
        .unwrap();
    let replicas: u64 = redis::cmd("WAIT")
        .arg(1)
        .arg(5_000)
        .query_async(&mut master)
        .await
        .unwrap();
    assert_eq!(replicas, 1);

    let killed = Instant::now();
    setup.kill_master();
    setup.wait_failover(Duration::from_secs(30)).await;
    println!("failover took {:?}", killed.elapsed());
    let replica_port = setup.replica().port;
    assert_eq!(setup.current_master_port().await, replica_port);
    assert_ne!(replica_port, first);

    // The promoted replica has the write and takes new ones.
    let mut promoted = setup.replica().conn().await;
    let before: Option<String> = redis::cmd("GET")
        .arg("before")
        .query_async(&mut promoted)
        .await
        .unwrap();
    assert_eq!(before.as_deref(), Some("1"));
    let _: () = redis::cmd("SET")
        .arg("after")
        .arg("2")
        .query_async(&mut promoted)
        .await
        .unwrap();

    let restarted = Instant::now();
    setup
        .restart_old_master_as_replica(Duration::from_secs(60))
        .await;
    println!("the old master rejoined in {:?}", restarted.elapsed());
    // Whichever node is the master now (see restart_old_master_as_replica).
    let mut promoted = setup.current_master().await.conn().await;
    let replicas: u64 = redis::cmd("WAIT")
        .arg(1)
        .arg(5_000)
        .query_async(&mut promoted)
        .await
        .unwrap();
    assert_eq!(replicas, 1, "the rejoined node replicates the new master");
}

// ---- Tandem on a cluster ----

#[tokio::test]
async fn cluster_runs_every_class() {
    let cluster = RedisCluster::start();
    let config = cluster.config();
    let producer = Producer::connect(&config)
        .await
        .expect("producer connects to the cluster");

    // Cancelled while queued: no worker runs yet.
    let doomed = producer
        .submit(sleep_task(Class::Heavy, 10, GIB))
        .await
        .unwrap();
    assert_eq!(
        producer.cancel(doomed).await.unwrap(),
        CancelOutcome::Cancelled
    );
    assert_eq!(producer.status(doomed).await.unwrap(), Status::Cancelled);

    let store = store(&config).await;
    let env = cluster.env();
    let workers: Vec<WorkerProcess> = [PRIMARY, SECONDARY, "cpu"]
        .into_iter()
        .map(|device| {
            let mut worker_env = SIMULATED_HOST.to_vec();
            worker_env.push(("TANDEM_DEVICE", device));
            WorkerProcess::spawn_with(&env, &worker_env)
        })
        .collect();
    for worker in &workers {
        wait_healthy(&store, worker).await;
    }
    settle(&store).await;

    let cpu = producer.submit(sleep_task(Class::Cpu, 5, 0)).await.unwrap();
    let light = producer
        .submit(sleep_task(Class::Light, 5, GIB))
        .await
        .unwrap();
    let heavy = producer
        .submit(sleep_task(Class::Heavy, 5, 2 * GIB))
        .await
        .unwrap();
    let params = SplitSumParams {
        n: 20_000,
        block: 100,
        block_ms: 1,
        fail_block: None,
    };
    let parallel = producer
        .submit(Task::of::<SplitSum>(&params).unwrap())
        .await
        .unwrap();

    for (id, device) in [(cpu, "cpu"), (light, SECONDARY), (heavy, PRIMARY)] {
        let outcome = producer.wait(id, WAIT).await.unwrap();
        assert_eq!(outcome.status, Status::Succeeded, "{:?}", outcome.record);
        assert_eq!(outcome.result::<SleepOutput>().unwrap().slept_ms, 5);
        assert_eq!(
            outcome.record.device.as_deref(),
            Some(device),
            "{:?}",
            outcome.record
        );
    }
    let outcome = producer.wait(parallel, WAIT).await.unwrap();
    assert_eq!(outcome.status, Status::Succeeded, "{:?}", outcome.record);
    let result: SplitSumOutput = outcome.result().unwrap();
    assert_eq!(
        result.sum.to_bits(),
        crate::support::split::expected(&params).to_bits()
    );
    assert_eq!(result.blocks, 200);
    let record = store.find_record(&parallel).await.unwrap().expect("record");
    assert_eq!(
        (record.shards, record.shards_done),
        (Some(8), Some(8)),
        "split over the two GPUs: {record:?}"
    );

    // Every class's stream lives on the master of its slot, and only there.
    for (class, slot) in CLASS_SLOTS {
        assert_only_on_owner(&cluster, &format!("tandem:{{{class}}}:stream:normal"), slot).await;
    }

    // The cancelled task never ran.
    let outcome = producer.wait(doomed, WAIT).await.unwrap();
    assert_eq!(outcome.status, Status::Cancelled);
    assert_eq!(outcome.record.started_at_ms, None, "{:?}", outcome.record);

    // The CLI reads the cluster.
    let url = cluster.url();
    let queues = tandem_ok(&url, &["queues"]);
    for (class, slot) in CLASS_SLOTS {
        assert!(
            queues.contains(&format!("tandem:{{{class}}}:stream:normal")),
            "{class} missing from:\n{queues}"
        );
        // Where each class lives: its slot on its master.
        let home = format!("127.0.0.1:{}", cluster.port(cluster.owner_of(slot)));
        assert!(
            queues.lines().any(|line| {
                let cells: Vec<&str> = line.split_whitespace().collect();
                cells == [class.as_str(), &slot.to_string(), &home]
            }),
            "{class} on {home} missing from:\n{queues}"
        );
    }
    let listed = tandem_ok(&url, &["workers"]);
    for worker in &workers {
        assert!(
            listed.contains(&worker.id),
            "{} missing from:\n{listed}",
            worker.id
        );
    }

    // A model lands in the {models} slot, on node A only.
    let dir = ScratchDir::new("ha-model");
    let path = dir.path().join("m1.safetensors");
    let text = tandem_ok(
        &url,
        &[
            "model",
            "new",
            "m1",
            "--layers",
            "4,8,1",
            "--seed",
            "1",
            "--out",
            path.to_str().unwrap(),
            "--register",
        ],
    );
    assert!(text.contains("registered model m1"), "{text}");
    let list = tandem_ok(&url, &["model", "list"]);
    assert!(
        list.lines()
            .any(|l| l.split_whitespace().next() == Some("m1")),
        "{list}"
    );
    let model_keys = keys_in_slot(&cluster, cluster.owner_of(MODELS_SLOT), MODELS_SLOT).await;
    assert!(
        model_keys.iter().any(|k| k.contains("m1")),
        "no key of model m1 in slot {MODELS_SLOT}: {model_keys:?}"
    );
    for key in &model_keys {
        assert_only_on_owner(&cluster, key, MODELS_SLOT).await;
    }
}

// ---- Tandem behind Sentinels, through a failover ----

/// What the submitting loop saw, split at the kill: a submission counts as
/// "after" when it started once the kill was decided (the flag is set just
/// before the SIGKILL), so all but at most the first of them were
/// acknowledged by the promoted replica.
#[derive(Debug, Default)]
struct Submissions {
    acked_before: Vec<TaskId>,
    acked_after: Vec<TaskId>,
    errors_before: usize,
    errors_after: usize,
    /// The first few distinct error messages, for the test output.
    error_samples: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_loses_no_replicated_submission() {
    let mut setup = SentinelSetup::start();
    let env = setup.env();
    let workers: Vec<WorkerProcess> = (0..2)
        .map(|_| WorkerProcess::spawn_with(&env, &[]))
        .collect();
    let config = Config {
        redis_wait_replicas: 1,
        redis_wait_timeout_ms: 1_000,
        reconnect_timeout_ms: 30_000,
        ..setup.config()
    };
    let store = store(&config).await;
    for worker in &workers {
        wait_healthy(&store, worker).await;
    }
    let producer = Producer::connect(&config)
        .await
        .expect("producer connects through the sentinels");

    let killed = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Submissions::default()));
    let submitting = tokio::spawn({
        let (producer, killed, stop, seen) =
            (producer.clone(), killed.clone(), stop.clone(), seen.clone());
        async move {
            while !stop.load(Ordering::SeqCst) {
                let after = killed.load(Ordering::SeqCst);
                let result = producer.submit(sleep_task(Class::Cpu, 5, 0)).await;
                let mut seen = seen.lock().unwrap();
                match (result, after) {
                    (Ok(id), false) => seen.acked_before.push(id),
                    (Ok(id), true) => seen.acked_after.push(id),
                    (Err(e), after) => {
                        if after {
                            seen.errors_after += 1;
                        } else {
                            seen.errors_before += 1;
                        }
                        let text = format!("{e:#}");
                        if seen.error_samples.len() < 5 && !seen.error_samples.contains(&text) {
                            seen.error_samples.push(text);
                        }
                    }
                }
            }
        }
    });
    let count = |after: bool| {
        let seen = seen.lock().unwrap();
        if after {
            seen.acked_after.len()
        } else {
            seen.acked_before.len()
        }
    };

    wait_until(
        Duration::from_secs(60),
        "100 acknowledged submissions",
        || async { count(false) >= 100 },
    )
    .await;
    killed.store(true, Ordering::SeqCst);
    setup.kill_master();
    let kill = Instant::now();
    setup.wait_failover(Duration::from_secs(30)).await;
    let failover = kill.elapsed();
    // The promoted replica has no replica of its own until the old master
    // is back, so WAIT 1 cannot succeed before then.
    setup
        .restart_old_master_as_replica(Duration::from_secs(60))
        .await;
    let rejoined = kill.elapsed();
    let acked =
        crate::support::eventually(Duration::from_secs(90), || async { count(true) >= 100 }).await;
    if !acked {
        let master = setup.current_master_port().await;
        let seen = seen.lock().unwrap();
        panic!(
            "fewer than 100 submissions acknowledged within 90 s after the old master \
             rejoined ({rejoined:?} after the kill; failover after {failover:?}): {} before the \
             kill, {} after; submit errors {} before, {} after, samples {:?}; the sentinels \
             name port {master} (first master {}, replica {}); replication: {:?} / {:?}",
            seen.acked_before.len(),
            seen.acked_after.len(),
            seen.errors_before,
            seen.errors_after,
            seen.error_samples,
            setup.first_master_port,
            setup.replica().port,
            setup.master().info_replication(),
            setup.replica().info_replication(),
        );
    }
    stop.store(true, Ordering::SeqCst);
    submitting.await.unwrap();

    // Either data node: on a loaded machine the sentinels may fail over a
    // second time, back to the old master once it rejoined and synced (see
    // `restart_old_master_as_replica`); what counts is below, that no
    // acknowledged submission is missing from whichever is the master now.
    let master = setup.current_master_port().await;
    assert!(
        master == setup.replica().port || master == setup.first_master_port,
        "the sentinels name port {master}, not one of the pair"
    );

    let seen = std::mem::take(&mut *seen.lock().unwrap());
    println!(
        "acknowledged: {} before the kill, {} after; submit errors: {} before, {} after; \
         failover after {failover:?}, old master back as a replica after {rejoined:?}; \
         sample errors: {:?}",
        seen.acked_before.len(),
        seen.acked_after.len(),
        seen.errors_before,
        seen.errors_after,
        seen.error_samples
    );

    // Every acknowledged submission runs to the end on the new master.
    let pending: Vec<TaskId> = seen
        .acked_before
        .iter()
        .chain(&seen.acked_after)
        .copied()
        .collect();
    let pending = std::sync::Mutex::new(pending);
    let last: std::sync::Mutex<Vec<(TaskId, String)>> = std::sync::Mutex::new(Vec::new());
    let done = crate::support::eventually(Duration::from_secs(90), || async {
        let ids = pending.lock().unwrap().clone();
        let mut still = Vec::new();
        let mut why = Vec::new();
        for id in ids {
            match producer.status(id).await {
                Ok(Status::Succeeded) => {}
                other => {
                    why.push((id, format!("{other:?}")));
                    still.push(id);
                }
            }
        }
        let empty = still.is_empty();
        *pending.lock().unwrap() = still;
        *last.lock().unwrap() = why;
        empty
    })
    .await;
    let last = last.into_inner().unwrap();
    assert!(
        done,
        "{} acknowledged tasks did not succeed within 90 s (of {} before and {} after \
         the kill); first: {:?}",
        last.len(),
        seen.acked_before.len(),
        seen.acked_after.len(),
        &last[..last.len().min(10)]
    );
}

// ---- A master demoted under its clients ----

/// A client whose server turned into a replica (a Sentinel failover
/// demoted it) must see that, as an error of the connection's kind that
/// sends it to look for the master again. The submit script's first write
/// is a pcall (to tell a key of another type); it used to turn the
/// replica's READONLY into a WRONGTYPE, and the WAIT after it gave an
/// error nobody recognised: under load a producer stayed on the replica,
/// failing every submit, for as long as it ran.
#[tokio::test]
async fn a_submit_to_a_demoted_master_is_refused_as_readonly_not_wrongtype() {
    let master = RedisServer::start();
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &master.port.to_string()]);
    wait_until(Duration::from_secs(60), "the replica to sync", || async {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut replica.conn().await)
            .await
            .unwrap();
        info.contains("master_link_status:up")
    })
    .await;

    for wait_replicas in [0, 1] {
        let config = Config {
            redis_wait_replicas: wait_replicas,
            redis_wait_timeout_ms: 100,
            reconnect_timeout_ms: 300,
            ..replica.config()
        };
        let producer = Producer::connect(&config).await.unwrap();
        let err = producer
            .submit(Task::of::<Noop>(&rmpv::Value::Nil).unwrap())
            .await
            .expect_err("a replica takes no submission");
        let text = format!("{err:#}");
        assert!(
            matches!(&err, ProducerError::Store(e) if e.is_connection()),
            "WAIT {wait_replicas}: not an error of the connection's kind: {text}"
        );
        assert!(
            matches!(&err, ProducerError::Store(StoreError::Redis(e)) if e.code() == Some("READONLY")),
            "WAIT {wait_replicas}: {text}"
        );
    }

    // The script itself, as a raw Redis caller runs it (the producers above
    // loaded it there): READONLY, code and all.
    let sha = tandem_shared::scripts::SUBMIT.sha().to_owned();
    let mut conn = replica.conn().await;
    let err = redis::cmd("EVALSHA")
        .arg(&sha)
        .arg(2)
        .arg("tandem:{cpu}:stream:normal")
        .arg("tandem:{cpu}:task:0199d3c4-0000-7000-8000-000000000001")
        .arg("0199d3c4-0000-7000-8000-000000000001")
        .arg(0)
        .arg(60)
        .arg("")
        .arg(b"\xc0".as_slice())
        .arg("kind")
        .arg("noop")
        .query_async::<redis::Value>(&mut conn)
        .await
        .expect_err("a replica refuses the write");
    assert_eq!(err.code(), Some("READONLY"), "{err}");
}

// ---- WAIT without replicas ----

#[tokio::test]
async fn wait_reports_missing_replicas() {
    let redis = RedisServer::start();
    let config = Config {
        redis_wait_replicas: 1,
        redis_wait_timeout_ms: 100,
        ..redis.config()
    };
    let producer = Producer::connect(&config).await.unwrap();
    let started = Instant::now();
    let err = producer
        .submit(Task::of::<Noop>(&rmpv::Value::Nil).unwrap())
        .await
        .expect_err("no replica can confirm the submission");
    assert!(
        matches!(
            err,
            ProducerError::Store(StoreError::NotReplicated {
                acked: 0,
                wanted: 1
            })
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("replicas confirmed"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the error came after {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_sentinel_with_a_password_is_asked_with_redis_sentinel_password() {
    let setup = GuardedSentinel::start("s3cr:t@pw");
    let refused = Store::connect(&setup.config())
        .await
        .expect_err("the sentinel wants its password");
    assert!(format!("{refused}").contains("NOAUTH"), "{refused}");

    let config = Config {
        redis_sentinel_password: tandem_shared::config::Secret::new("s3cr:t@pw"),
        ..setup.config()
    };
    let store = Store::connect(&config)
        .await
        .expect("the password opens the sentinel");
    let mut conn = store.connection();
    let port: String = redis::cmd("CONFIG")
        .arg("GET")
        .arg("port")
        .query_async::<Vec<String>>(&mut conn)
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(
        port,
        setup.master.port.to_string(),
        "connected to the master"
    );
}

/// Milliseconds since the Unix epoch, the clock of `finished_at_ms`.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Issue 20, point 1 (regression: no `cpu` task completed for the whole 29 s
/// of its slot's migration; claims failed with "Script attempted to access
/// a non local key" and `TRYAGAIN`, a submit failed with `TRYAGAIN`). The
/// `{cpu}` slot moves, 20 keys every 0.2 s as in the report, under a running
/// worker and a producer that keeps submitting: no submission fails, every
/// task succeeds, and no gap between completions is longer than the
/// migration plus one second (Redis refuses a script whose keys are split
/// between the two masters, and one that creates a key, until the slot
/// settles; see docs/operations.md, "Resharding").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_class_slot_moves_to_another_master_while_the_fleet_runs() {
    let cluster = RedisCluster::start();
    let env = cluster.env();
    let worker = WorkerProcess::spawn_with(&env, &[("TANDEM_LEASE_TIMEOUT_MS", "3000")]);
    let store = store(&cluster.config()).await;
    wait_healthy(&store, &worker).await;
    let producer = Producer::connect(&cluster.config())
        .await
        .expect("producer connects to the cluster");
    let cpu_slot = 9296;
    let from = cluster.owner_of(cpu_slot);
    let to = (from + 1) % cluster.len();

    // Keys for the slot to carry: the records of finished tasks.
    let first: Vec<Task> = (0..300).map(|_| sleep_task(Class::Cpu, 0, 0)).collect();
    let mut ids = producer.submit_many(first).await.unwrap();
    for id in &ids {
        let outcome = producer.wait(*id, Duration::from_secs(60)).await.unwrap();
        assert_eq!(outcome.status, Status::Succeeded, "{id}");
    }

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let submitting = tokio::spawn({
        let (producer, stop, acked) = (producer.clone(), stop.clone(), acked.clone());
        async move {
            let mut errors = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                match producer.submit(sleep_task(Class::Cpu, 2, 0)).await {
                    Ok(id) => acked.lock().unwrap().push(id),
                    Err(e) => errors.push(format!("{e:#}")),
                }
            }
            errors
        }
    });
    let count = || acked.lock().unwrap().len();
    wait_until(Duration::from_secs(30), "50 submissions", || async {
        count() >= 50
    })
    .await;
    // Reshard the cpu class's slot under the running fleet and producer.
    let started = Instant::now();
    let started_ms = now_ms();
    let keys = tokio::task::block_in_place(|| {
        cluster.move_slot_paced(cpu_slot, from, to, 20, Duration::from_millis(200))
    });
    let migration = started.elapsed();
    let ended_ms = now_ms();
    let moved_at = count();
    wait_until(
        Duration::from_secs(60),
        "50 submissions after the move",
        || async move { count() >= moved_at + 50 },
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    let errors = submitting.await.unwrap();
    assert!(errors.is_empty(), "submits failed: {errors:?}");

    ids.extend(std::mem::take(&mut *acked.lock().unwrap()));
    let waited = Instant::now();
    let mut finished = Vec::with_capacity(ids.len());
    for id in &ids {
        let outcome = producer.wait(*id, Duration::from_secs(60)).await.unwrap();
        assert_eq!(outcome.status, Status::Succeeded, "{id}");
        finished.push(outcome.record.finished_at_ms.expect("finished"));
    }
    let all_done = waited.elapsed();
    // The longest stretch without a completion that overlaps the migration.
    finished.sort_unstable();
    let (gap_from, gap_to) = finished
        .windows(2)
        .map(|w| (w[0], w[1]))
        .filter(|(a, b)| *b >= started_ms && *a <= ended_ms)
        .max_by_key(|(a, b)| b - a)
        .expect("completions around the migration");
    let gap = Duration::from_millis(gap_to - gap_from);
    let during = finished
        .iter()
        .filter(|t| (started_ms..=ended_ms).contains(t))
        .count();
    println!(
        "{keys} keys of slot {cpu_slot} moved in {migration:?}, 20 every 0.2 s; longest gap \
         in completions {gap:?} (from {} ms before the migration to {} ms after its start); \
         {during} completions during it; {} submissions, {moved_at} before the move's end; \
         every task succeeded {all_done:?} after the last submission",
        started_ms.saturating_sub(gap_from),
        gap_to.saturating_sub(started_ms),
        ids.len()
    );
    assert!(
        keys >= 300,
        "only {keys} keys moved: the migration is too short to measure"
    );
    // A second beyond the migration. About one run in four, the worker's
    // redis-rs cluster connection wedges after its last slot refresh
    // (every call on it hangs); the link takes a request unanswered for
    // 0.5 s while slots move as a wedge and connects afresh (`Redis Cluster
    // calls timed out; connected to the cluster afresh`), which keeps even
    // those runs within the second (waiting out `redis_timeout_ms` made
    // the gap 9 s for a 3.8 s migration).
    assert!(
        gap <= migration + Duration::from_secs(1),
        "no completion for {gap:?}, the migration took {migration:?}"
    );
    // The class's keys live on the new master now.
    let mut conn = cluster.node_conn(to).await;
    let exists: bool = redis::cmd("EXISTS")
        .arg("tandem:{cpu}:stream:normal")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(exists, "the cpu stream moved to node {to}");
    assert!(
        worker.log_text().contains("worker ready"),
        "the worker never started"
    );
}

#[tokio::test]
async fn a_gpu_claiming_class_by_class_books_the_memory_of_each_class() {
    // One 12 GiB GPU (10.8 GiB budget) serving heavy and light, two tasks
    // at a time. A heavy and a light task of 6 GiB each fit only one at a
    // time: the light class's claim must see what the heavy one booked.
    let cluster = RedisCluster::start();
    let config = cluster.config();
    let producer = Producer::connect(&config)
        .await
        .expect("producer connects to the cluster");
    let heavy = producer
        .submit(sleep_task(Class::Heavy, 1_500, 6 * GIB))
        .await
        .unwrap();
    let light = producer
        .submit(sleep_task(Class::Light, 1_500, 6 * GIB))
        .await
        .unwrap();
    let store = store(&config).await;
    let worker = WorkerProcess::spawn_with(
        &cluster.env(),
        &[
            ("TANDEM_SIMULATE_GPUS", "RTX 4070 Ti, 12 GiB, 40.09 TFLOPS"),
            ("TANDEM_CPU_FALLBACK_MS", "0"),
            ("TANDEM_CONCURRENCY", "2"),
            ("TANDEM_DEVICE", PRIMARY),
        ],
    );
    wait_healthy(&store, &worker).await;
    let mut spans = Vec::new();
    for id in [heavy, light] {
        let outcome = producer.wait(id, Duration::from_secs(60)).await.unwrap();
        assert_eq!(outcome.status, Status::Succeeded, "{:?}", outcome.record);
        let record = outcome.record;
        spans.push((
            record.started_at_ms.expect("started"),
            record.finished_at_ms.expect("finished"),
        ));
    }
    spans.sort();
    assert!(
        spans[0].1 <= spans[1].0,
        "12 GiB declared on a 10.8 GiB budget ran at once: {spans:?}"
    );
}

#[tokio::test]
async fn a_class_whose_consumer_group_vanished_gets_it_back() {
    // A CPU worker serves cpu first, then the other classes. The light
    // class's master loses its consumer groups (as a restart without
    // persistence would); a light task still runs.
    let cluster = RedisCluster::start();
    let config = cluster.config();
    let store = store(&config).await;
    let worker = WorkerProcess::spawn_with(&cluster.env(), &[("TANDEM_CPU_FALLBACK_MS", "0")]);
    wait_healthy(&store, &worker).await;
    let light_node = cluster.owner_of(6713);
    let mut conn = cluster.node_conn(light_node).await;
    for priority in ["critical", "high", "normal", "low"] {
        let _: i64 = redis::cmd("XGROUP")
            .arg("DESTROY")
            .arg(format!("tandem:{{light}}:stream:{priority}"))
            .arg("workers")
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let producer = Producer::connect(&config).await.unwrap();
    let id = producer
        .submit(sleep_task(Class::Light, 10, 0))
        .await
        .unwrap();
    let outcome = producer
        .wait(id, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", worker.log_text()));
    assert_eq!(outcome.status, Status::Succeeded);
    assert!(worker.log_text().contains("recreating them"));
    // Groups destroyed by hand are not a data loss: the canary is there.
    let lost: Vec<_> = store
        .alerts(100)
        .await
        .unwrap()
        .into_iter()
        .filter(|a| a.alert.alert == "redis_data_lost")
        .collect();
    assert!(lost.is_empty(), "{lost:?}");
}

#[tokio::test]
async fn a_sentinel_naming_a_replica_is_passed_over_for_one_naming_the_master() {
    // The first sentinel is stale: it names a node that is a replica now.
    let master = data_node("master");
    let replica = replica_node("replica", master.port);
    let stale = lone_sentinel("stale sentinel", replica.port, None);
    let good = lone_sentinel("good sentinel", master.port, None);
    let config = Config {
        redis_url: format!(
            "redis+sentinel://127.0.0.1:{},127.0.0.1:{}/mymaster",
            stale.port, good.port
        ),
        ..Config::default()
    };
    let store = Store::connect(&config).await.expect("connects");
    let mut conn = store.connection();
    let port: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("port")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(port[1], master.port.to_string(), "connected to the master");
}

// ---- Failovers under a long-lived producer and the CLI (issue 20) ----

/// What one submit gave: when it started, and the task id or the error.
type SubmitSeen = (Instant, Result<TaskId, String>);

/// A long-lived library producer submitting `cpu` sleeps in a task of its
/// own, one every 10 ms at most (a producer's steady stream, not a flood
/// that thousands of waits would have to check afterwards), noting what
/// each call gave.
struct Submitter {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<SubmitSeen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Submitter {
    fn start(producer: Producer) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let (stop, seen) = (stop.clone(), seen.clone());
            async move {
                let mut pace = tokio::time::interval(Duration::from_millis(10));
                while !stop.load(Ordering::SeqCst) {
                    pace.tick().await;
                    let started = Instant::now();
                    let result = producer.submit(sleep_task(Class::Cpu, 1, 0)).await;
                    let result = result.map_err(|e| format!("{e:#}"));
                    seen.lock().unwrap().push((started, result));
                }
            }
        });
        Submitter { stop, seen, task }
    }

    /// Acknowledged submissions that started at `since` or later.
    fn acked_since(&self, since: Instant) -> usize {
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .filter(|(at, result)| *at >= since && result.is_ok())
            .count()
    }

    async fn wait_acked_since(&self, since: Instant, count: usize, what: &str) {
        wait_until(Duration::from_secs(90), what, || async {
            self.acked_since(since) >= count
        })
        .await;
    }

    async fn stop(self) -> Vec<SubmitSeen> {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap();
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

/// One `tandem submit` process: when it started, how long it took, and its
/// exit status, standard output and standard error.
#[derive(Debug)]
struct CliSubmit {
    started: Instant,
    took: Duration,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl CliSubmit {
    /// Whether the run was in flight at some point from `from` to `to`.
    /// (The runs start on their own thread: the first may start just
    /// before the kill is timed and still wait through the failover.)
    fn overlaps(&self, from: Instant, to: Instant) -> bool {
        self.started < to && self.started + self.took > from
    }
}

/// Runs `tandem submit` processes one after another until `done` is set
/// and `after` more have run since (a failover's whole span, and past it).
fn cli_submits_until(url: &str, done: &AtomicBool, after: usize) -> Vec<CliSubmit> {
    let mut runs = Vec::new();
    let mut since_done = 0;
    while since_done < after {
        if done.load(Ordering::SeqCst) {
            since_done += 1;
        }
        let started = Instant::now();
        let out = tandem(
            url,
            &[
                "submit",
                "sleep",
                "--params",
                r#"{"ms": 1}"#,
                "--class",
                "cpu",
            ],
        );
        runs.push(CliSubmit {
            started,
            took: started.elapsed(),
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    runs
}

/// Every submission succeeded, library and CLI alike; returns the task ids.
fn all_acknowledged(seen: &[SubmitSeen], cli: &[CliSubmit]) -> Vec<(Instant, TaskId)> {
    let errors: Vec<&String> = seen.iter().filter_map(|(_, r)| r.as_ref().err()).collect();
    assert!(
        errors.is_empty(),
        "{} of {} library submits failed: {:?}",
        errors.len(),
        seen.len(),
        &errors[..errors.len().min(5)]
    );
    let failed: Vec<(Option<i32>, &str)> = cli
        .iter()
        .filter(|run| run.code != Some(0))
        .map(|run| (run.code, run.stderr.as_str()))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} `tandem submit` runs failed (exit status, stderr): {:?}",
        failed.len(),
        cli.len(),
        &failed[..failed.len().min(5)]
    );
    let mut ids: Vec<(Instant, TaskId)> = seen
        .iter()
        .filter_map(|(at, r)| Some((*at, *r.as_ref().ok()?)))
        .collect();
    for run in cli {
        let id: TaskId = run
            .stdout
            .parse()
            .unwrap_or_else(|e| panic!("`tandem submit` printed {:?}: {e:?}", run.stdout));
        ids.push((run.started, id));
    }
    ids
}

/// A span of time in which an acknowledged submission may be lost with
/// Redis's asynchronous replication (`redis_wait_replicas` is for that):
/// the second before a master is killed, or a failover nobody asked for.
#[derive(Debug, Clone, Copy)]
struct Risky {
    from: Instant,
    to: Instant,
}

impl Risky {
    /// The second before a kill at `kill`.
    fn before_kill(kill: Instant) -> Self {
        Risky {
            from: kill.checked_sub(Duration::from_secs(1)).unwrap_or(kill),
            to: kill,
        }
    }
}

/// Waits for every task; one may be missing only when it was acknowledged
/// in a `risky` span. Returns how many were lost that way.
async fn all_succeed(producer: &Producer, ids: &[(Instant, TaskId)], risky: &[Risky]) -> usize {
    let mut lost = 0;
    for (at, id) in ids {
        match producer.wait(*id, Duration::from_secs(90)).await {
            Ok(outcome) => assert_eq!(outcome.status, Status::Succeeded, "{id}"),
            Err(ProducerError::NotFound(_))
                if risky.iter().any(|span| (span.from..=span.to).contains(at)) =>
            {
                lost += 1;
            }
            Err(e) => panic!(
                "task {id}, submitted {:?} ago (risky spans {:?} ago): {e}",
                at.elapsed(),
                risky
                    .iter()
                    .map(|span| (span.from.elapsed(), span.to.elapsed()))
                    .collect::<Vec<_>>()
            ),
        }
    }
    lost
}

/// Issue 20, point 2 (regression: two `tandem submit` runs failed with
/// `redis: Moved: 9296 127.0.0.1:7745` while a master failed over). The
/// master of the `cpu` slot dies; its replica takes over. A long-lived
/// library producer and `tandem submit` processes, one after another,
/// submit through the whole failover without an error, and the worker runs
/// every task on the new master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_failover_is_followed_by_the_library_the_cli_and_the_worker() {
    let mut cluster = RedisCluster::start();
    let cpu_slot = 9296;
    let home = cluster.owner_of(cpu_slot);
    let replica = cluster.add_replica(home);
    let config = cluster.config();
    let worker = WorkerProcess::spawn_with(&cluster.env(), &[("TANDEM_LEASE_TIMEOUT_MS", "3000")]);
    let store = store(&config).await;
    wait_healthy(&store, &worker).await;
    let producer = Producer::connect(&config).await.unwrap();
    let started = Instant::now();
    let submitter = Submitter::start(producer.clone());
    submitter
        .wait_acked_since(started, 20, "20 submissions before the kill")
        .await;

    let promoted = Arc::new(AtomicBool::new(false));
    let cli = tokio::task::spawn_blocking({
        let (url, promoted) = (cluster.url(), promoted.clone());
        move || cli_submits_until(&url, &promoted, 3)
    });
    let killed = Instant::now();
    cluster.kill_node(home);
    tokio::task::block_in_place(|| {
        cluster.wait_promoted(replica, cpu_slot, Duration::from_secs(60));
    });
    let failover = killed.elapsed();
    promoted.store(true, Ordering::SeqCst);
    let after = Instant::now();
    submitter
        .wait_acked_since(after, 20, "20 submissions after the failover")
        .await;
    let cli = cli.await.unwrap();
    let seen = submitter.stop().await;
    let slowest = cli.iter().map(|run| run.took).max().unwrap_or_default();
    let ids = all_acknowledged(&seen, &cli);
    let lost = all_succeed(&producer, &ids, &[Risky::before_kill(killed)]).await;
    println!(
        "failover in {failover:?}; {} library submits, {} `tandem submit` runs (slowest \
         {slowest:?}), no error; {lost} acknowledged just before the kill were lost with \
         the master; the worker connected to the cluster afresh: {}",
        seen.len(),
        cli.len(),
        worker
            .log_text()
            .contains("connected to the cluster afresh")
    );
    assert!(
        cli.iter().any(|run| run.overlaps(killed, after)),
        "no `tandem submit` ran during the failover: {cli:?}"
    );
}

/// Issue 20, point 3 (regression: during a Sentinel failover's ~2.3 s,
/// `tandem submit` failed at once with `Connection refused`, and once with
/// `loading script: Connection reset by peer`). One library producer lives
/// through two failovers (there and back) and keeps submitting; `tandem
/// submit` processes run through each. No submit fails: each waits until
/// the sentinels name the new master, within `reconnect_timeout_ms`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_submits_through_two_sentinel_failovers() {
    let mut setup = SentinelSetup::start();
    let env = setup.env();
    let workers: Vec<WorkerProcess> = (0..2)
        .map(|_| WorkerProcess::spawn_with(&env, &[]))
        .collect();
    let config = Config {
        reconnect_timeout_ms: 30_000,
        ..setup.config()
    };
    let store = store(&config).await;
    for worker in &workers {
        wait_healthy(&store, worker).await;
    }
    let producer = Producer::connect(&config).await.unwrap();
    let submitter = Submitter::start(producer.clone());
    let mut risky = Vec::new();
    let mut cli = Vec::new();
    let mut failovers = Vec::new();
    for round in 0..2 {
        let since = Instant::now();
        submitter
            .wait_acked_since(since, 30, &format!("30 submissions before kill {round}"))
            .await;
        let promoted = Arc::new(AtomicBool::new(false));
        let runs = tokio::task::spawn_blocking({
            let (url, promoted) = (setup.url(), promoted.clone());
            move || cli_submits_until(&url, &promoted, 3)
        });
        let killed = Instant::now();
        let next = setup.kill_current_master().await;
        risky.push(Risky::before_kill(killed));
        setup.wait_failover_to(next, Duration::from_secs(30)).await;
        failovers.push(killed.elapsed());
        promoted.store(true, Ordering::SeqCst);
        let after = Instant::now();
        submitter
            .wait_acked_since(after, 30, &format!("30 submissions after failover {round}"))
            .await;
        let runs = runs.await.unwrap();
        assert!(
            runs.iter().any(|run| run.overlaps(killed, after)),
            "no `tandem submit` ran during failover {round}: {runs:?}"
        );
        cli.extend(runs);
        // The pair whole again, for the next failover. On a loaded machine
        // the sentinels may fail over once more, back to the restarted node
        // once it has synced (see `restart_old_master_as_replica`): what the
        // demoted master acknowledged in between is lost with it.
        let restarting = Instant::now();
        setup
            .restart_killed_as_replica(Duration::from_secs(60))
            .await;
        if setup.current_master_port().await != next {
            println!("the sentinels failed over once more while the killed node rejoined");
            risky.push(Risky {
                from: restarting,
                to: Instant::now(),
            });
        }
    }
    let seen = submitter.stop().await;
    let slowest = cli.iter().map(|run| run.took).max().unwrap_or_default();
    let ids = all_acknowledged(&seen, &cli);
    let lost = all_succeed(&producer, &ids, &risky).await;
    println!(
        "failovers in {failovers:?}; {} library submits, {} `tandem submit` runs (slowest \
         {slowest:?}), no error; {lost} acknowledged just before a kill were lost with the \
         master",
        seen.len(),
        cli.len()
    );
}

// ---- Data lost by an empty restart (issue 20, point 4) ----

/// Issue 20, point 4 (regression: a Redis restarted without persistence
/// lost 660 acknowledged tasks, and the only sign was one WARN line from
/// one of two workers). Two workers; tasks queued behind two long ones;
/// Redis restarts empty. Exactly one `redis_data_lost` alert comes, from
/// the worker that saw it, with what it saw (its registry record gone, the
/// tasks that were in the streams); `tandem queues` and `tandem workers`
/// say so in a line; `tandem wait` on a lost task says its record vanished
/// with the data, and on a task submitted since, that it was never
/// submitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_losing_its_data_is_loud() {
    let mut redis = RedisServer::start();
    let workers = [
        WorkerProcess::start(&redis, &[("TANDEM_CONCURRENCY", "1")]).await,
        WorkerProcess::start(&redis, &[("TANDEM_CONCURRENCY", "1")]).await,
    ];
    let producer = Producer::connect(&Config {
        reconnect_timeout_ms: 30_000,
        ..redis.config()
    })
    .await
    .unwrap();
    let done = producer.submit(sleep_task(Class::Cpu, 1, 0)).await.unwrap();
    assert_eq!(
        producer.wait(done, WAIT).await.unwrap().status,
        Status::Succeeded
    );
    let queued: Vec<Task> = (0..12).map(|_| sleep_task(Class::Cpu, 60_000, 0)).collect();
    let queued = producer.submit_many(queued).await.unwrap();
    // Every worker has checked the data since: its registry record was
    // written again after the submission, just after its check.
    let submitted = tandem_shared::clock::now_ms();
    let store = producer.store().clone();
    wait_until(
        WAIT,
        "a heartbeat of each worker after the submission",
        || async {
            let seen = store.workers().await.unwrap_or_default();
            workers.iter().all(|w| {
                seen.iter()
                    .any(|s| s.id == w.id && s.heartbeat_at_ms > submitted + 300)
            })
        },
    )
    .await;

    redis.crash_and_restart();
    let lost_at = tandem_shared::clock::now_ms();
    let alerts = || async {
        store
            .alerts(100)
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|a| a.alert.alert == "redis_data_lost")
            .collect::<Vec<_>>()
    };
    wait_until(WAIT, "a redis_data_lost alert", || async {
        !alerts().await.is_empty()
    })
    .await;
    // Both workers have beaten (and checked) twice since: still one alert.
    let raised = tandem_shared::clock::now_ms();
    wait_until(WAIT, "two more heartbeats of each worker", || async {
        let seen = store.workers().await.unwrap_or_default();
        workers.iter().all(|w| {
            seen.iter()
                .any(|s| s.id == w.id && s.heartbeat_at_ms > raised + 400)
        })
    })
    .await;
    let alerts = alerts().await;
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let alert = &alerts[0].alert;
    assert!(workers.iter().any(|w| w.id == alert.worker), "{alert:?}");
    assert!(alert.at_ms >= lost_at, "{alert:?}");
    // 12 queued or running tasks were in the streams.
    assert_eq!(alert.value, 12.0, "{alert:?}");
    for part in [
        "Redis lost its data",
        "canary gone for cpu",
        "worker registry gone",
        "12 queued or running task(s)",
    ] {
        assert!(alert.message.contains(part), "{part:?} not in {alert:?}");
    }
    let reporter = workers.iter().find(|w| w.id == alert.worker).unwrap();
    wait_until(WAIT, "the reporter's error line", || async {
        reporter.log_text().contains("Redis lost its data")
    })
    .await;

    let url = redis.url();
    for view in ["queues", "workers"] {
        let text = tandem_ok(&url, &[view]);
        let first = text.lines().next().unwrap_or_default();
        assert!(
            first.starts_with("DATA LOST ") && first.contains("12 queued or running task(s)"),
            "tandem {view}:\n{text}"
        );
    }
    let out = tandem(
        &url,
        &["wait", &queued[0].to_string(), "--timeout-ms", "5000"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("its record vanished with Redis's data"),
        "{stderr}"
    );
    let never = TaskId::new();
    let out = tandem(&url, &["wait", &never.to_string(), "--timeout-ms", "5000"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("never submitted"), "{stderr}");
    let out = tandem(&url, &["status", &done.to_string()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("its record vanished with Redis's data"),
        "{stderr}"
    );
}
