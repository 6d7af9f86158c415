//! Large data by reference (issue 14, point 3) through real workers:
//! parameters and results above `blob_threshold_bytes` travel as blob
//! references, a 40 MB returns matrix runs through historical `risk` and a
//! fine-tuning set above 1 MiB through `train`, a worker fetches each blob
//! once and keeps the hot ones (least recently used out), reference counts
//! leave nothing behind after 1,000 round trips and 1,000 workflows, and
//! the directory and S3 backends (a real moto server on loopback) hold the
//! bytes instead of Redis.

use std::path::PathBuf;
use std::time::Duration;

use redis::AsyncCommands;
use tandem_producer::{Producer, Task, Workflow, WorkflowRef};
use tandem_shared::blob::{BlobRef, BlobStore};
use tandem_shared::config::Config;
use tandem_shared::kind::model_kinds::{Optimizer, Train, TrainOutput, TrainParams};
use tandem_shared::kind::portfolio_opt::{
    Objective, PortfolioOpt, PortfolioOptOutput, PortfolioOptParams,
};
use tandem_shared::kind::risk::{HistoricalRisk, Risk, RiskOutput, RiskParams, tail_count};
use tandem_shared::model_format::{Activation, Model};
use tandem_shared::store::{ModelPolicy, Store};
use tandem_shared::{Status, msgpack};

use crate::support::{RedisServer, ScratchDir, WorkerProcess, free_port, wait_until};

/// Generous: a debug build on a busy two-core machine moves 40 MB slowly.
const WAIT: Duration = Duration::from_secs(600);

const ASSETS: usize = 500;
const DAYS: usize = 10_000;

/// Deterministic daily returns, `DAYS` rows of `ASSETS`, about +-2 %.
fn returns_matrix() -> Vec<f64> {
    (0..DAYS * ASSETS)
        .map(|k| {
            let (t, i) = (k / ASSETS, k % ASSETS);
            let x = ((t as f64) * 0.618_033_988 + (i as f64) * 0.414_213_562).fract();
            (x - 0.5) * 0.04 + 0.0002 * ((i % 7) as f64 - 3.0) / 3.0
        })
        .collect()
}

/// VaR and CVaR as the kind defines them: the k-th largest loss and the
/// mean of the k largest, k = `tail_count(c, N)` (ceil((1 - c) N), with
/// (1 - c) N that is an integer but for rounding taken as that integer).
fn historical_reference(weights: &[f64], returns: &[f64], confidence: f64) -> (f64, f64) {
    let mut losses: Vec<f64> = returns
        .chunks(weights.len())
        .map(|row| -row.iter().zip(weights).map(|(r, w)| r * w).sum::<f64>())
        .collect();
    losses.sort_by(|a, b| b.total_cmp(a));
    let k = tail_count(confidence, losses.len() as u64) as usize;
    (losses[k - 1], losses[..k].iter().sum::<f64>() / k as f64)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

/// Keys of blobs in Redis (`tandem:{blob:<sha>}:...`).
async fn blob_keys(redis: &RedisServer) -> Vec<String> {
    let mut conn = redis.conn().await;
    let mut keys: Vec<String> = conn.keys("tandem:{blob:*").await.unwrap();
    keys.sort();
    keys
}

async fn info_field(redis: &RedisServer, section: &str, field: &str) -> u64 {
    let mut conn = redis.conn().await;
    let info: String = redis::cmd("INFO")
        .arg(section)
        .query_async(&mut conn)
        .await
        .unwrap();
    let prefix = format!("{field}:");
    info.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

async fn wait_for_no_blobs(redis: &RedisServer, what: &str) {
    wait_until(WAIT, what, || async { blob_keys(redis).await.is_empty() }).await;
}

#[tokio::test]
async fn a_40_mb_returns_matrix_runs_through_historical_risk_and_portfolio_opt_by_reference() {
    let redis = RedisServer::start();
    let _worker = WorkerProcess::start(&redis, &[]).await;
    let producer = redis.producer().await;
    let returns = returns_matrix();
    let weights: Vec<f64> = (0..ASSETS).map(|i| 1_000.0 + (i % 10) as f64).collect();
    let risk = RiskParams::Historical(HistoricalRisk {
        weights: weights.clone(),
        returns: returns.clone(),
        confidence: vec![0.95, 0.99],
    });
    let task = Task::of::<Risk>(&risk).unwrap();
    let params_len = task_params_len(&risk);
    assert!(params_len > 40_000_000, "{params_len} bytes of parameters");

    // Three tasks with the same matrix: one blob, fetched once by the
    // worker (its chunks read once), whatever the store holds meanwhile.
    let getrange_before = redis.command_calls("getrange").await;
    let mut ids = vec![producer.submit(task).await.unwrap()];
    for _ in 0..2 {
        ids.push(
            producer
                .submit(Task::of::<Risk>(&risk).unwrap())
                .await
                .unwrap(),
        );
    }
    for id in &ids {
        let outcome = producer.wait(*id, WAIT).await.unwrap();
        assert_eq!(outcome.status, Status::Succeeded, "{:?}", outcome.record);
        let out: RiskOutput = outcome.result().unwrap();
        assert_eq!(out.scenarios, DAYS as u64);
        for (level, c) in out.levels.iter().zip([0.95, 0.99]) {
            let (var, cvar) = historical_reference(&weights, &returns, c);
            assert!(close(level.var, var), "VaR {} vs {var}", level.var);
            assert!(close(level.cvar, cvar), "CVaR {} vs {cvar}", level.cvar);
        }
    }
    let chunk = Config::default().blob_chunk_bytes;
    assert_eq!(
        redis.command_calls("getrange").await - getrange_before,
        params_len.div_ceil(chunk) as u64,
        "the worker read the blob's chunks once for three tasks"
    );
    wait_for_no_blobs(&redis, "every risk task released its parameter blob").await;

    // portfolio_opt on the matrix's 500 assets: mean and covariance
    // estimated from it (a 2 MB covariance, above max_payload_bytes).
    let mut mu = vec![0.0; ASSETS];
    for row in returns.chunks(ASSETS) {
        for (m, r) in mu.iter_mut().zip(row) {
            *m += r / DAYS as f64;
        }
    }
    let mut covariance = vec![0.0; ASSETS * ASSETS];
    for row in returns.chunks(ASSETS) {
        for i in 0..ASSETS {
            let di = row[i] - mu[i];
            for j in i..ASSETS {
                covariance[i * ASSETS + j] += di * (row[j] - mu[j]) / (DAYS - 1) as f64;
            }
        }
    }
    for i in 0..ASSETS {
        for j in 0..i {
            covariance[i * ASSETS + j] = covariance[j * ASSETS + i];
        }
    }
    // The same portfolio from the returns themselves, by blob reference:
    // the worker computes the moments.
    let from_returns = PortfolioOptParams {
        mu: Vec::new(),
        covariance: Vec::new(),
        returns: Some(returns.clone()),
        assets: Some(ASSETS as u64),
        risk_free: 0.0,
        objective: Objective::MinVariance,
        max_weight: 0.05,
        tolerance: 1e-8,
        max_iterations: 20_000,
        seed: 1,
        samples: 16,
    };
    let opt = PortfolioOptParams {
        mu,
        covariance,
        returns: None,
        assets: None,
        risk_free: 0.0,
        objective: Objective::MinVariance,
        max_weight: 0.05,
        tolerance: 1e-8,
        max_iterations: 20_000,
        seed: 1,
        samples: 16,
    };
    assert!(task_params_len_of(&opt) > Config::default().max_payload_bytes);
    let id = producer
        .submit(Task::of::<PortfolioOpt>(&opt).unwrap())
        .await
        .unwrap();
    let outcome = producer.wait(id, WAIT).await.unwrap();
    assert_eq!(outcome.status, Status::Succeeded, "{:?}", outcome.record);
    let out: PortfolioOptOutput = outcome.result().unwrap();
    let total: f64 = out.weights.iter().sum();
    assert!((total - 1.0).abs() < 1e-6, "weights sum to {total}");
    assert!(out.weights.iter().all(|w| *w <= 0.05 + 1e-9));
    wait_for_no_blobs(&redis, "portfolio_opt released its parameter blob").await;

    assert!(task_params_len_of(&from_returns) > 40_000_000);
    let id = producer
        .submit(Task::of::<PortfolioOpt>(&from_returns).unwrap())
        .await
        .unwrap();
    let outcome = producer.wait(id, WAIT).await.unwrap();
    assert_eq!(outcome.status, Status::Succeeded, "{:?}", outcome.record);
    let same: PortfolioOptOutput = outcome.result().unwrap();
    // The moments agree with the test's to rounding (it sums in another
    // order), so the portfolios agree to the solver's tolerance.
    assert_eq!(same.weights.len(), ASSETS);
    let apart = same
        .weights
        .iter()
        .zip(&out.weights)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f64, f64::max);
    assert!(apart < 1e-5, "weights differ by up to {apart}");
    assert!(
        (same.volatility - out.volatility).abs() <= 1e-7 * out.volatility,
        "volatility {} vs {}",
        same.volatility,
        out.volatility
    );
    assert!((same.expected_return - out.expected_return).abs() < 1e-9);
    wait_for_no_blobs(&redis, "portfolio_opt released the returns' blob").await;
}

fn task_params_len(params: &RiskParams) -> usize {
    msgpack::encode(params).unwrap().len()
}

fn task_params_len_of<T: serde::Serialize>(params: &T) -> usize {
    msgpack::encode(params).unwrap().len()
}

#[tokio::test]
async fn a_fine_tuning_set_above_1_mib_runs_through_train_by_reference() {
    let redis = RedisServer::start();
    let _worker = WorkerProcess::start(&redis, &[]).await;
    let store = Store::connect(&redis.config()).await.unwrap();
    let model = Model::random(&[4, 16, 16, 1], Activation::Relu, 3).unwrap();
    let policy = ModelPolicy {
        heavy_threshold_bytes: 5_000_000_000,
        max_upload_bytes: 64 << 20,
    };
    store
        .upload_model("px", &model.encode(), &policy)
        .await
        .unwrap();
    let samples: usize = 100_000;
    let x: Vec<f32> = (0..samples * 4)
        .map(|i| ((i * 7919) % 97) as f32 / 97.0 - 0.5)
        .collect();
    let y: Vec<f32> = x.chunks(4).map(|r| r[0] + r[1] - r[2]).collect();
    let train = TrainParams {
        model: "px".into(),
        x,
        y,
        samples: samples as u64,
        epochs: 2,
        batch_size: 256,
        optimizer: Optimizer::Adam {
            lr: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        },
        seed: 5,
        out: None,
    };
    let len = task_params_len_of(&train);
    assert!(len > 1 << 20, "a fine-tuning set of {len} bytes");
    let producer = redis.producer().await;
    let id = producer
        .submit(Task::of::<Train>(&train).unwrap())
        .await
        .unwrap();
    let outcome = producer.wait(id, WAIT).await.unwrap();
    assert_eq!(outcome.status, Status::Succeeded, "{:?}", outcome.record);
    let trained: TrainOutput = outcome.result().unwrap();
    assert_eq!(trained.losses.len(), 2);
    assert!(
        trained.losses[1] < trained.losses[0],
        "{:?}",
        trained.losses
    );
    assert!(trained.weights.is_some());
    wait_for_no_blobs(&redis, "train released its parameter blob").await;
}

#[tokio::test]
async fn a_large_result_comes_back_by_reference_and_resolves_transparently() {
    let redis = RedisServer::start();
    let _worker = WorkerProcess::start(&redis, &[]).await;
    let producer = redis.producer().await;
    // `echo` returns its parameters: 1.2 MiB in, 1.2 MiB out.
    let payload = rmpv::Value::Binary((0..1200 * 1024).map(|i| (i * 31 % 251) as u8).collect());
    let bytes = msgpack::encode(&payload).unwrap();
    let id = producer
        .submit(Task::new("echo", &payload).unwrap())
        .await
        .unwrap();
    let outcome = producer.wait(id, WAIT).await.unwrap();
    assert_eq!(outcome.status, Status::Succeeded);
    assert_eq!(outcome.result_bytes(), Some(&bytes[..]), "resolved");

    // The record holds the reference; the blob lives as long as the record.
    let record = producer.record(id).await.unwrap().unwrap();
    let blob = BlobRef::detect(record.result.as_deref().unwrap())
        .expect("the record's result is a reference")
        .unwrap();
    assert_eq!(blob, BlobRef::of(&bytes));
    let blobs = BlobStore::open(
        Store::connect(&redis.config()).await.unwrap(),
        &redis.config(),
    )
    .unwrap();
    // Parameters and result are the same bytes here: one blob, whose
    // parameter reference went at the commit, the record's stays.
    let stat = blobs.stat(&blob.sha256).await.unwrap().unwrap();
    assert_eq!(stat.len, bytes.len() as u64);
    wait_until(WAIT, "the parameter reference released", || async {
        blobs.stat(&blob.sha256).await.unwrap().unwrap().refs == 1
    })
    .await;
    let ttl = blobs
        .stat(&blob.sha256)
        .await
        .unwrap()
        .unwrap()
        .ttl_ms
        .unwrap();
    assert!(ttl <= Config::default().result_ttl_s * 1000, "{ttl}");

    // The CLI reads it too.
    let out = crate::support::tandem(&redis, &["blob", "stat", &blob.sha256]);
    let text = crate::support::text(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!("len      {}", bytes.len())),
        "{text}"
    );
    assert!(text.contains("refs     1"), "{text}");
    let out = crate::support::tandem(&redis, &["blob", "get", &blob.sha256]);
    assert!(out.status.success());
    assert_eq!(out.stdout, bytes);
}

#[tokio::test]
async fn a_raw_redis_producer_puts_a_blob_with_the_cli_and_references_it() {
    let redis = RedisServer::start();
    let _worker = WorkerProcess::start(&redis, &[]).await;
    let dir = ScratchDir::new("blob-put");
    let file = dir.path().join("params.msgpack");
    let payload = rmpv::Value::Binary(vec![7u8; 2 << 20]);
    let bytes = msgpack::encode(&payload).unwrap();
    std::fs::write(&file, &bytes).unwrap();
    let out = crate::support::tandem(&redis, &["blob", "put", file.to_str().unwrap()]);
    let text = crate::support::text(&out.stdout);
    assert!(out.status.success(), "{text}");
    let blob: BlobRef = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(blob, BlobRef::of(&bytes));
    // The reference as the task's params (what any MessagePack library
    // writes for the map); submitted here through the producer's raw
    // path: a task whose params are the reference bytes.
    let producer = redis.producer().await;
    let id = producer
        .submit(Task::raw("noop", blob.encode()).class(tandem_shared::Class::Cpu))
        .await
        .unwrap();
    let outcome = producer.wait(id, WAIT).await.unwrap();
    assert_eq!(outcome.status, Status::Succeeded, "{:?}", outcome.record);
    wait_for_no_blobs(&redis, "the task released the CLI's reference").await;
}

/// The figures of docs/operations.md ("Blobs"): 1,000 round trips of
/// tasks whose parameters go by reference (`noop`, result inline) leave
/// no blob key; 1,000 whose results go by reference too (`echo`) leave
/// exactly one blob per record, each with one reference and a TTL no
/// longer than the record's.
#[tokio::test]
async fn a_thousand_round_trips_leave_no_blob_behind_but_their_records_results() {
    const N: usize = 1_000;
    let redis = RedisServer::start();
    let threshold = ("TANDEM_BLOB_THRESHOLD_BYTES", "4096");
    let _worker = WorkerProcess::start(&redis, &[threshold, ("TANDEM_CONCURRENCY", "8")]).await;
    let config = Config {
        blob_threshold_bytes: 4096,
        ..redis.config()
    };
    let producer = Producer::connect(&config).await.unwrap();
    let params = |i: usize| {
        rmpv::Value::Binary(
            (0..8192)
                .map(|k| ((k * 7 + i * 13) % 256) as u8)
                .chain((i as u32).to_le_bytes())
                .collect(),
        )
    };
    let mut conn = redis.conn().await;
    let keys_before: u64 = redis::cmd("DBSIZE").query_async(&mut conn).await.unwrap();
    let memory_before = info_field(&redis, "memory", "used_memory").await;

    for kind in ["noop", "echo"] {
        let tasks: Vec<Task> = (0..N)
            .map(|i| Task::new(kind, &params(i)).unwrap())
            .collect();
        let handles = producer.submit_handles(tasks).await.unwrap();
        for (i, handle) in handles.iter().enumerate() {
            let outcome = handle.wait(WAIT).await.unwrap();
            assert_eq!(outcome.status, Status::Succeeded);
            if kind == "echo" {
                assert_eq!(
                    outcome.result_bytes(),
                    Some(&msgpack::encode(&params(i)).unwrap()[..])
                );
            }
        }
        if kind == "noop" {
            wait_for_no_blobs(&redis, "1,000 noop tasks released their parameter blobs").await;
            let dbsize: u64 = redis::cmd("DBSIZE").query_async(&mut conn).await.unwrap();
            let memory = info_field(&redis, "memory", "used_memory").await;
            eprintln!(
                "after {N} noop round trips (8 KiB params by reference): {dbsize} keys, 0 blob keys, used_memory {memory} bytes (before any: {keys_before} keys, {memory_before} bytes)"
            );
        } else {
            // One blob per record: meta, refs and data keys, each refs 1.
            wait_until(WAIT, "every parameter reference released", || async {
                let keys = blob_keys(&redis).await;
                let refs: Vec<&String> = keys.iter().filter(|k| k.ends_with(":refs")).collect();
                if refs.len() != N || keys.len() != 3 * N {
                    return false;
                }
                let mut conn = redis.conn().await;
                let mut all_one = true;
                for key in refs {
                    let n: i64 = conn.get(key).await.unwrap();
                    all_one &= n == 1;
                }
                all_one
            })
            .await;
            let dbsize: u64 = redis::cmd("DBSIZE").query_async(&mut conn).await.unwrap();
            let memory = info_field(&redis, "memory", "used_memory").await;
            let limit = config.result_ttl_s * 1000;
            for key in blob_keys(&redis).await {
                let ttl: i64 = conn.pttl(&key).await.unwrap();
                assert!(ttl > 0 && ttl as u64 <= limit, "{key}: {ttl} ms");
            }
            eprintln!(
                "after {N} echo round trips (8 KiB params and results by reference): {dbsize} keys ({} blob keys, each with a TTL within result_ttl_s), used_memory {memory} bytes",
                3 * N
            );
        }
    }
}

/// The directory backend: the bytes are a file under the directory, not a
/// Redis key, and the file goes when the last reference does.
#[tokio::test]
async fn the_directory_backend_keeps_bytes_on_the_shared_volume() {
    let redis = RedisServer::start();
    let dir = ScratchDir::new("blob-dir");
    let store_url = dir.path().display().to_string();
    let _worker = WorkerProcess::start(&redis, &[("TANDEM_BLOB_STORE", &store_url)]).await;
    let config = Config {
        blob_store: store_url.clone(),
        ..redis.config()
    };
    round_trip_through_objects(&redis, &config, Some(dir.path().join("blobs"))).await;
}

/// A 6 MiB task through an object store backend; `files`: where a
/// directory backend keeps the objects, to look at.
async fn round_trip_through_objects(redis: &RedisServer, config: &Config, files: Option<PathBuf>) {
    let producer = Producer::connect(config).await.unwrap();
    let payload = rmpv::Value::Binary((0..6 << 20).map(|i| (i % 253) as u8).collect());
    let bytes = msgpack::encode(&payload).unwrap();
    let blob = BlobRef::of(&bytes);
    let blobs = BlobStore::open(Store::connect(config).await.unwrap(), config).unwrap();
    // Put by hand first (one reference held here), so that the bytes are
    // still there to look at after the task gives its reference back.
    assert_eq!(blobs.put(&bytes, blobs.ttl_ms()).await.unwrap(), blob);
    let id = producer
        .submit(Task::new("noop", &payload).unwrap())
        .await
        .unwrap();
    let outcome = producer.wait(id, WAIT).await.unwrap();
    assert_eq!(outcome.status, Status::Succeeded, "{:?}", outcome.record);
    wait_until(WAIT, "the task released its reference", || async {
        blobs.stat(&blob.sha256).await.unwrap().unwrap().refs == 1
    })
    .await;
    assert!(
        !blob_keys(redis).await.iter().any(|k| k.ends_with(":data")),
        "no bytes in Redis"
    );
    if let Some(files) = &files {
        assert_eq!(
            std::fs::metadata(files.join(&blob.sha256)).unwrap().len(),
            bytes.len() as u64
        );
    }
    assert_eq!(blobs.get(&blob).await.unwrap(), bytes);
    assert!(blobs.release(&blob).await.unwrap(), "the last reference");
    assert!(blobs.stat(&blob.sha256).await.unwrap().is_none());
    if let Some(files) = &files {
        assert!(!files.join(&blob.sha256).exists(), "the file went with it");
    }
    let missing = blobs.get(&blob).await.unwrap_err().to_string();
    assert!(missing.contains("is not in the blob store"), "{missing}");
}

/// The moto server to test S3 against: `TANDEM_MOTO_SERVER`, else the one
/// `.ci/run` installs in target/moto-venv; `None` (after saying why)
/// outside CI when there is none.
fn moto_server() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("TANDEM_MOTO_SERVER") {
        return Some(PathBuf::from(path));
    }
    let venv =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/moto-venv/bin/moto_server");
    if venv.exists() {
        return Some(venv);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must run the S3 test: set TANDEM_MOTO_SERVER (.ci/run installs moto in target/moto-venv)"
    );
    eprintln!("skipped: no moto server (pip install 'moto[server]'; set TANDEM_MOTO_SERVER)");
    None
}

/// A moto S3 server on a free loopback port, killed on drop.
struct Moto(std::process::Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The S3 backend against a real S3-compatible server (moto) on loopback.
#[tokio::test]
async fn the_s3_backend_keeps_bytes_in_a_bucket() {
    let Some(moto) = moto_server() else { return };
    let port = free_port();
    let _moto = Moto(
        std::process::Command::new(moto)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start moto_server"),
    );
    // Create the bucket (moto takes unsigned requests).
    wait_until(WAIT, "moto answers and makes the bucket", || async move {
        use std::io::{Read, Write};
        let Ok(mut tcp) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
            return false;
        };
        let request = format!(
            "PUT /tandem-blobs HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        if tcp.write_all(request.as_bytes()).is_err() {
            return false;
        }
        let mut reply = String::new();
        let _ = tcp.read_to_string(&mut reply);
        reply.starts_with("HTTP/1.1 200") || reply.starts_with("HTTP/1.0 200")
    })
    .await;
    let redis = RedisServer::start();
    let endpoint = format!("http://127.0.0.1:{port}");
    let env = [
        ("TANDEM_BLOB_STORE", "s3://tandem-blobs/tandem"),
        ("TANDEM_BLOB_S3_ENDPOINT", endpoint.as_str()),
        ("TANDEM_BLOB_S3_REGION", "us-east-1"),
        ("TANDEM_BLOB_S3_ACCESS_KEY_ID", "test"),
        ("TANDEM_BLOB_S3_SECRET_ACCESS_KEY", "test"),
    ];
    let _worker = WorkerProcess::start(&redis, &env).await;
    let config = Config {
        blob_store: "s3://tandem-blobs/tandem".into(),
        blob_s3_endpoint: endpoint.clone(),
        blob_s3_region: "us-east-1".into(),
        blob_s3_access_key_id: "test".into(),
        blob_s3_secret_access_key: tandem_shared::config::Secret::new("test"),
        ..redis.config()
    };
    round_trip_through_objects(&redis, &config, None).await;
}

/// `tandem submit --params-file`: parameters above the threshold go by
/// reference from the command line too, and `--wait` prints the result the
/// blob holds.
#[tokio::test]
async fn tandem_submit_sends_a_large_params_file_by_reference() {
    let redis = RedisServer::start();
    let _worker = WorkerProcess::start(&redis, &[]).await;
    let dir = ScratchDir::new("blob-submit");
    let file = dir.path().join("params.json");
    let text = "r".repeat(1200 * 1024);
    std::fs::write(&file, serde_json::to_string(&text).unwrap()).unwrap();
    let getrange_before = redis.command_calls("getrange").await;
    let out = crate::support::tandem(
        &redis,
        &[
            "submit",
            "echo",
            "--params-file",
            file.to_str().unwrap(),
            "--wait",
        ],
    );
    let stdout = crate::support::text(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        crate::support::text(&out.stderr)
    );
    assert!(
        stdout.contains(&text),
        "the echoed 1.2 MiB string is printed"
    );
    // The worker read the parameters' blob, and `--wait` the result's.
    assert!(redis.command_calls("getrange").await > getrange_before);
    let out = crate::support::tandem(
        &redis,
        &["submit", "echo", "--params-file", "/nonexistent.json"],
    );
    assert!(!out.status.success());
    assert!(crate::support::text(&out.stderr).contains("--params-file /nonexistent.json"));
}

/// Parameters of 1.2 MiB (above the 1 MiB threshold: they go by
/// reference), one blob per `which`.
fn cache_params(which: u8) -> rmpv::Value {
    rmpv::Value::Binary(
        (0..1_200 * 1024u32)
            .map(|k| (k % 251) as u8 ^ which)
            .collect(),
    )
}

/// A worker with `TANDEM_CONCURRENCY` 1 and `TANDEM_BLOB_CACHE_BYTES`
/// `cache_bytes` runs one `noop` task at a time, on the parameter blob
/// each of `sequence` names; per task, how many chunks the worker read
/// from Redis (`GETRANGE` calls). Each blob is released (gone from the
/// store) before the next task puts it again, so only the worker's cache
/// can spare a read.
async fn chunk_reads(cache_bytes: u64, sequence: &[u8]) -> Vec<u64> {
    let redis = RedisServer::start();
    let cache = cache_bytes.to_string();
    let _worker = WorkerProcess::start(
        &redis,
        &[
            ("TANDEM_CONCURRENCY", "1"),
            ("TANDEM_BLOB_CACHE_BYTES", cache.as_str()),
        ],
    )
    .await;
    let producer = redis.producer().await;
    let mut reads = Vec::new();
    for which in sequence {
        let before = redis.command_calls("getrange").await;
        let id = producer
            .submit(Task::new("noop", &cache_params(*which)).unwrap())
            .await
            .unwrap();
        let outcome = producer.wait(id, WAIT).await.unwrap();
        assert_eq!(outcome.status, Status::Succeeded, "{:?}", outcome.record);
        wait_for_no_blobs(&redis, "the task released its parameter blob").await;
        reads.push(redis.command_calls("getrange").await - before);
    }
    reads
}

/// "A worker fetches each blob once per device and keeps hot ones cached"
/// (one worker process per device): a blob it ran a task on is not read
/// again, even after the store dropped and got it back; without a cache
/// it is read every time; with room for two blobs the least recently
/// used goes first, and a hot one stays.
#[tokio::test]
async fn a_worker_fetches_a_blob_once_and_keeps_the_hot_ones() {
    let len = msgpack::encode(&cache_params(0)).unwrap().len();
    let chunks = len.div_ceil(Config::default().blob_chunk_bytes) as u64;
    assert!(chunks >= 2, "{len} bytes in {chunks} chunks");
    let (x, y, z) = (1, 2, 3);

    assert_eq!(
        chunk_reads(Config::default().blob_cache_bytes, &[x, x, x]).await,
        [chunks, 0, 0],
        "the default cache: read once for three tasks"
    );
    assert_eq!(
        chunk_reads(0, &[x, x]).await,
        [chunks, chunks],
        "no cache: read for each task"
    );
    // Room for two: x, y, x (x hot), z (evicts y, the least recently
    // used), x (still there), y (read again; evicts z).
    let room_for_two = (len as u64) * 5 / 2;
    assert_eq!(
        chunk_reads(room_for_two, &[x, y, x, z, x, y]).await,
        [chunks, chunks, 0, chunks, 0, chunks],
        "least recently used out first"
    );
}

/// "Nothing leaks (measure keys and memory after 1,000 workflows)": 1,000
/// workflows `a -> (b, c) -> d` whose root takes 8 KiB of parameters and
/// returns them (both above a 4 KiB threshold: by reference), its children
/// take paths into that result, and the chord `d` both children's
/// results. After them: no parameter blob, one result blob per root (the
/// blob of a result lives as long as its record), no wait hash, and every
/// record, workflow hash and blob key with a TTL within `result_ttl_s`.
/// The figures printed are in docs/BENCHMARKS.md.
#[tokio::test]
async fn a_thousand_workflows_leave_only_records_with_a_ttl_and_their_result_blobs() {
    const N: usize = 1_000;
    let redis = RedisServer::start();
    let threshold = ("TANDEM_BLOB_THRESHOLD_BYTES", "4096");
    let _worker = WorkerProcess::start(&redis, &[threshold, ("TANDEM_CONCURRENCY", "8")]).await;
    let config = Config {
        blob_threshold_bytes: 4096,
        ..redis.config()
    };
    let producer = Producer::connect(&config).await.unwrap();
    let mut conn = redis.conn().await;
    let keys_before: u64 = redis::cmd("DBSIZE").query_async(&mut conn).await.unwrap();
    let memory_before = info_field(&redis, "memory", "used_memory").await;
    let data = |i: usize| -> Vec<u8> {
        (0..8192)
            .map(|k| ((k * 7 + i * 13) % 256) as u8)
            .chain((i as u32).to_le_bytes())
            .collect()
    };
    let echo = |params: serde_json::Value| Task::new("echo", &params).unwrap();
    for batch in 0..N / 100 {
        let mut handles = Vec::new();
        for i in batch * 100..(batch + 1) * 100 {
            let root = rmpv::Value::Map(vec![
                ("n".into(), (i as u64).into()),
                ("data".into(), rmpv::Value::Binary(data(i))),
            ]);
            let workflow = Workflow::new()
                .node("a", Task::new("echo", &root).unwrap())
                .node_after(
                    "b",
                    echo(serde_json::json!({"n": WorkflowRef::to("a").at("/n")})),
                    &["a"],
                )
                .node_after(
                    "c",
                    echo(serde_json::json!({"m": WorkflowRef::to("a").at("/n")})),
                    &["a"],
                )
                .node_after(
                    "d",
                    echo(serde_json::json!({"b": WorkflowRef::to("b"), "c": WorkflowRef::to("c")})),
                    &["b", "c"],
                );
            handles.push((i, producer.submit_workflow(workflow).await.unwrap()));
        }
        for (i, handle) in handles {
            let outcome = handle.wait(WAIT).await.unwrap();
            assert_eq!(outcome.status, "succeeded", "workflow {i}");
            let d: serde_json::Value = msgpack::decode(&outcome.results["d"]).unwrap();
            assert_eq!(d, serde_json::json!({"b": {"n": i}, "c": {"m": i}}));
        }
    }

    // The roots gave their parameter blobs back; their results' blobs
    // stay, one reference each (the record's).
    wait_until(WAIT, "one result blob per root, nothing else", || async {
        let keys = blob_keys(&redis).await;
        if keys.len() != 3 * N {
            return false;
        }
        let mut conn = redis.conn().await;
        for key in keys.iter().filter(|k| k.ends_with(":refs")) {
            let n: i64 = conn.get(key).await.unwrap();
            if n != 1 {
                return false;
            }
        }
        true
    })
    .await;
    let limit_ms = config.result_ttl_s * 1000;
    let keys: Vec<String> = conn.keys("tandem:*").await.unwrap();
    let mut counts = [0usize; 4];
    for key in &keys {
        let per_workflow = [":task:", ":workflow:", ":wait:", "{blob:"]
            .iter()
            .position(|part| key.contains(part));
        let Some(at) = per_workflow else { continue };
        counts[at] += 1;
        let ttl: i64 = conn.pttl(key).await.unwrap();
        assert!(
            ttl > 0 && ttl as u64 <= limit_ms,
            "{key}: a TTL of {ttl} ms (at most result_ttl_s)"
        );
    }
    assert_eq!(
        counts,
        [4 * N, N, 0, 3 * N],
        "records, workflows, wait hashes, blob keys"
    );
    let dbsize: u64 = redis::cmd("DBSIZE").query_async(&mut conn).await.unwrap();
    let memory = info_field(&redis, "memory", "used_memory").await;
    eprintln!(
        "after {N} workflows a -> (b, c) -> d (8 KiB root params and result by reference): {dbsize} keys ({} records, {N} workflow hashes, {} blob keys, 0 wait hashes; every one with a TTL within result_ttl_s); used_memory {memory} bytes (before: {keys_before} keys, {memory_before} bytes; {} bytes per workflow)",
        4 * N,
        3 * N,
        (memory.saturating_sub(memory_before)) / N as u64
    );
}
