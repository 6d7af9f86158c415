//! The model kinds through real workers: a registered model runs `infer`,
//! `predict_batch` and `train`, stays resident between tasks (hits and
//! misses counted in the registry record), and on a simulated 12 GiB GPU
//! models are admitted, evicted by priority (least recently used first
//! among equals) and refused to the CPU worker when they cannot fit.

use tandem_producer::{Producer, Task};
use tandem_shared::kind::KindSpec;
use tandem_shared::kind::model_kinds::{
    Infer, InferOutput, InferParams, Optimizer, PredictBatch, PredictBatchParams, SymbolWindow,
    Train, TrainParams,
};
use tandem_shared::model_format::{Activation, Model, sha256_hex};
use tandem_shared::store::{ModelPolicy, Store};
use tandem_shared::wire::TaskRecord;
use tandem_shared::{Class, ErrorCode, Priority, Status};

use crate::support::gpus::{WAIT, settle, start, store};
use crate::support::{RedisServer, ScratchDir, WorkerProcess};

async fn upload(store: &Store, name: &str, sizes: &[usize], seed: u64) -> Model {
    let model = Model::random(sizes, Activation::Relu, seed).unwrap();
    let policy = ModelPolicy {
        heavy_threshold_bytes: 5_000_000_000,
        max_upload_bytes: 64 << 20,
    };
    store
        .upload_model(name, &model.encode(), &policy)
        .await
        .unwrap();
    model
}

/// The model's outputs for one row, in f64, straight from its definition.
fn reference(model: &Model, row: &[f32]) -> Vec<f64> {
    let mut x: Vec<f64> = row
        .iter()
        .zip(model.input_mean.iter().zip(&model.input_std))
        .map(|(v, (m, s))| (f64::from(*v) - f64::from(*m)) / f64::from(*s))
        .collect();
    for (i, layer) in model.layers.iter().enumerate() {
        let last = i + 1 == model.layers.len();
        x = (0..layer.outputs)
            .map(|o| {
                let sum: f64 = (0..layer.inputs)
                    .map(|k| f64::from(layer.weight[o * layer.inputs + k]) * x[k])
                    .sum::<f64>()
                    + f64::from(layer.bias[o]);
                if last { sum } else { sum.max(0.0) }
            })
            .collect();
    }
    x
}

async fn run<K: KindSpec>(
    producer: &Producer,
    params: &K::Params,
    priority: Priority,
) -> (TaskRecord, Option<K::Output>) {
    let id = producer
        .submit(Task::of::<K>(params).unwrap().priority(priority))
        .await
        .unwrap();
    let outcome = producer.wait(id, WAIT).await.unwrap();
    let result = outcome.result::<K::Output>().ok();
    (outcome.record, result)
}

fn infer(model: &str, rows: usize, width: usize) -> InferParams {
    InferParams {
        model: model.into(),
        inputs: (0..rows * width).map(|i| (i as f32 * 0.37).sin()).collect(),
        batch: rows as u64,
    }
}

#[tokio::test]
async fn a_registered_model_runs_infer_predict_and_train_and_stays_resident() {
    let redis = RedisServer::start();
    let _worker = WorkerProcess::start(&redis, &[]).await;
    let store = store(&redis).await;
    let producer = redis.producer().await;
    let model = upload(&store, "px", &[4, 16, 16, 1], 3).await;

    let params = infer("px", 3, 4);
    let (record, out) = run::<Infer>(&producer, &params, Priority::Normal).await;
    let out: InferOutput = out.unwrap_or_else(|| panic!("{record:?}"));
    assert!(!out.cache_hit, "first use loads the model");
    assert_eq!((out.batch, out.width, out.model_version), (3, 1, 1));
    for (row, got) in params.inputs.chunks(4).zip(&out.outputs) {
        let want = reference(&model, row)[0];
        assert!(
            (f64::from(*got) - want).abs() < 1e-5 * want.abs().max(1.0),
            "{got} vs {want}"
        );
    }
    let (_, again) = run::<Infer>(&producer, &params, Priority::Normal).await;
    let again = again.unwrap();
    assert!(again.cache_hit, "the model stayed resident");
    assert_eq!(again.outputs, out.outputs);

    let windows = PredictBatchParams {
        model: "px".into(),
        symbols: vec![
            SymbolWindow {
                symbol: "AAPL".into(),
                features: params.inputs[..4].to_vec(),
            },
            SymbolWindow {
                symbol: "MSFT".into(),
                features: params.inputs[4..8].to_vec(),
            },
        ],
    };
    let (_, predicted) = run::<PredictBatch>(&producer, &windows, Priority::Normal).await;
    let predicted = predicted.unwrap();
    assert_eq!(predicted.predictions[1].symbol, "MSFT");
    assert_eq!(predicted.predictions[1].values, vec![out.outputs[1]]);

    // Fine-tune on y = x0 + x1 - x2: the loss falls and the new weights
    // come back as a model file.
    let samples = 256;
    let x: Vec<f32> = (0..samples * 4)
        .map(|i| ((i * 7919) % 97) as f32 / 97.0 - 0.5)
        .collect();
    let y: Vec<f32> = x.chunks(4).map(|r| r[0] + r[1] - r[2]).collect();
    let train = TrainParams {
        model: "px".into(),
        x,
        y,
        samples: samples as u64,
        epochs: 30,
        batch_size: 32,
        optimizer: Optimizer::Adam {
            lr: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        },
        seed: 5,
        out: None,
    };
    let (record, trained) = run::<Train>(&producer, &train, Priority::Normal).await;
    let trained = trained.unwrap_or_else(|| panic!("{record:?}"));
    let (first, last) = (trained.losses[0], trained.losses[29]);
    assert!(last < first / 4.0, "loss {first} -> {last}");
    let weights = trained.weights.expect("the model comes back");
    assert_eq!(sha256_hex(&weights), trained.sha256);
    assert_eq!(Model::decode(&weights).unwrap().shape(), model.shape());
    // It reported its progress by epoch with the loss; the last report
    // (all done) is never throttled away.
    let stored = producer.record(record.id.unwrap()).await.unwrap().unwrap();
    let progress = stored.progress.expect("train reports its epochs");
    assert_eq!(progress.fraction, 1.0);
    assert!(
        progress.message.starts_with("epoch 30 of 30, loss "),
        "{}",
        progress.message
    );
    let reported: f64 = progress.message["epoch 30 of 30, loss ".len()..]
        .parse()
        .unwrap();
    assert!(
        (reported - f64::from(last)).abs() < 1e-5,
        "{reported} vs {last}"
    );

    // An unknown model fails for good, saying so.
    let (record, _) = run::<Infer>(&producer, &infer("nope", 1, 4), Priority::Normal).await;
    assert_eq!(record.status, Some(Status::Failed));
    assert_eq!(
        record.error.map(|e| e.code),
        Some(ErrorCode::from_static("MODEL_NOT_FOUND"))
    );
}

/// One simulated 12 GiB GPU (budget 90 %: 11.6 GB) where each 21,380-byte
/// model is booked at 100,000 times its size (2.14 GB): five fit, a sixth
/// does not.
const BIG: &str = "Big, 12 GiB, 40 TFLOPS, model_scale=100000";
const SIZES: [usize; 4] = [16, 64, 64, 1];

async fn resident(store: &Store) -> Vec<String> {
    let workers = store.workers().await.unwrap();
    let gpu = workers
        .iter()
        .find(|w| w.device.starts_with("SIM-"))
        .unwrap();
    gpu.models.clone()
}

/// The simulated GPU worker's last heartbeat time.
async fn heartbeat_at(store: &Store) -> u64 {
    let workers = store.workers().await.unwrap();
    workers
        .iter()
        .find(|w| w.device.starts_with("SIM-"))
        .map_or(0, |w| w.heartbeat_at_ms)
}

/// Waits until the GPU worker wrote two heartbeats after this call, so its
/// registry record shows the ledger as it is now (the first one may have
/// been sampled before the last commit).
async fn beat(store: &Store) {
    for _ in 0..2 {
        let seen = heartbeat_at(store).await;
        crate::support::wait_until(WAIT, "a heartbeat", || async {
            heartbeat_at(store).await > seen
        })
        .await;
    }
}

#[tokio::test]
async fn models_are_admitted_then_evicted_by_priority_least_recently_used_first() {
    let redis = RedisServer::start();
    let gpu = start(&redis, "0", BIG, &[]).await;
    let _cpu = start(&redis, "cpu", BIG, &[]).await;
    settle(&store(&redis).await).await;
    let store = store(&redis).await;
    let producer = redis.producer().await;
    for (i, name) in ["m1", "m2", "m3", "m4", "m5", "m6"].iter().enumerate() {
        upload(&store, name, &SIZES, i as u64).await;
    }
    let on = |record: &TaskRecord| record.device.clone().unwrap_or_default();

    // Five fit: each runs on the GPU and stays.
    for (name, priority) in [
        ("m1", Priority::Low),
        ("m2", Priority::Low),
        ("m3", Priority::Normal),
        ("m4", Priority::Normal),
        ("m5", Priority::Low),
    ] {
        let (record, out) = run::<Infer>(&producer, &infer(name, 2, 16), priority).await;
        assert!(out.is_some(), "{record:?}");
        assert_eq!(on(&record), "SIM-0-big");
    }
    beat(&store).await;
    assert_eq!(resident(&store).await, ["m1", "m2", "m3", "m4", "m5"]);

    // A normal task never evicts: its model does not fit, so the task goes
    // to the CPU worker and the GPU's models stay.
    let (record, out) = run::<Infer>(&producer, &infer("m6", 2, 16), Priority::Normal).await;
    assert!(out.is_some(), "{record:?}");
    assert_eq!(on(&record), "cpu");
    beat(&store).await;
    assert_eq!(resident(&store).await, ["m1", "m2", "m3", "m4", "m5"]);

    // A high one evicts the least recently used of the lowest priority.
    let (record, _) = run::<Infer>(&producer, &infer("m6", 2, 16), Priority::High).await;
    assert_eq!(on(&record), "SIM-0-big");
    beat(&store).await;
    assert_eq!(resident(&store).await, ["m2", "m3", "m4", "m5", "m6"]);

    // Using m2 makes m5 the least recently used low one: it goes next.
    run::<Infer>(&producer, &infer("m2", 1, 16), Priority::Low).await;
    let (record, _) = run::<Infer>(&producer, &infer("m1", 1, 16), Priority::Critical).await;
    assert_eq!(on(&record), "SIM-0-big");
    beat(&store).await;
    let models = resident(&store).await;
    assert!(!models.contains(&"m5".to_owned()), "{models:?}");
    assert!(models.contains(&"m2".to_owned()), "{models:?}");

    // A model larger than the whole budget runs on the CPU, even at
    // critical priority.
    upload(&store, "huge", &[64, 256, 256, 1], 9).await;
    let huge = InferParams {
        model: "huge".into(),
        inputs: vec![0.5; 64],
        batch: 1,
    };
    let (record, out) = run::<Infer>(&producer, &huge, Priority::Critical).await;
    assert!(out.is_some(), "{record:?}");
    assert_eq!(on(&record), "cpu");

    // Hits and misses are counted in the registry record.
    let workers = store.workers().await.unwrap();
    let info = workers.iter().find(|w| w.id == gpu.id).unwrap();
    assert!(info.model_hits >= 1 && info.model_misses >= 7, "{info:?}");
}

/// A model of 1,508 parameter bytes (4-16-16-1), uploaded under a heavy
/// threshold of 1,000 bytes: the registry records it as heavy.
async fn upload_heavy(store: &Store, name: &str) -> Model {
    let model = Model::random(&[4, 16, 16, 1], Activation::Relu, 11).unwrap();
    let policy = ModelPolicy {
        heavy_threshold_bytes: 1_000,
        max_upload_bytes: 64 << 20,
    };
    let info = store
        .upload_model(name, &model.encode(), &policy)
        .await
        .unwrap();
    assert_eq!(info.class, Class::Heavy, "{info:?}");
    model
}

fn small_train(model: &str, out: Option<&str>) -> TrainParams {
    let samples = 32;
    let x: Vec<f32> = (0..samples * 4)
        .map(|i| ((i * 31) % 17) as f32 / 17.0 - 0.5)
        .collect();
    let y: Vec<f32> = x.chunks(4).map(|r| r[0] - r[3]).collect();
    TrainParams {
        model: model.into(),
        x,
        y,
        samples: samples as u64,
        epochs: 2,
        batch_size: 8,
        optimizer: Optimizer::Sgd {
            lr: 0.05,
            momentum: 0.0,
        },
        seed: 1,
        out: out.map(str::to_owned),
    }
}

/// The class a submitted task's record was written with.
async fn submitted_class(producer: &Producer, task: Task) -> Class {
    let id = producer.submit(task).await.unwrap();
    let record = producer.record(id).await.unwrap().expect("a record");
    record.class.expect("a class")
}

#[tokio::test]
async fn infer_and_train_go_to_their_models_registered_class_unless_told() {
    let redis = RedisServer::start();
    let store = store(&redis).await;
    let producer = redis.producer().await;
    upload_heavy(&store, "big").await;
    upload(&store, "small", &[4, 16, 16, 1], 3).await;

    // No class given: the model's registered class, typed or not.
    let typed = Task::of::<Infer>(&infer("big", 2, 4)).unwrap();
    assert_eq!(submitted_class(&producer, typed).await, Class::Heavy);
    let untyped = Task::new("infer", &infer("big", 2, 4)).unwrap();
    assert_eq!(submitted_class(&producer, untyped).await, Class::Heavy);
    let train = Task::of::<Train>(&small_train("big", None)).unwrap();
    assert_eq!(submitted_class(&producer, train).await, Class::Heavy);

    // An explicit class wins.
    let told = Task::of::<Infer>(&infer("big", 2, 4))
        .unwrap()
        .class(Class::Light);
    assert_eq!(submitted_class(&producer, told).await, Class::Light);

    // A batch mixing models: each task gets its own model's class.
    let batch = vec![
        Task::of::<Infer>(&infer("big", 1, 4)).unwrap(),
        Task::of::<Infer>(&infer("small", 1, 4)).unwrap(),
        Task::of::<Train>(&small_train("big", None)).unwrap(),
        Task::of::<Infer>(&infer("unregistered", 1, 4)).unwrap(),
    ];
    let ids = producer.submit_many(batch).await.unwrap();
    let mut classes = Vec::new();
    for id in &ids {
        classes.push(producer.record(*id).await.unwrap().unwrap().class);
    }
    assert_eq!(
        classes,
        [
            Some(Class::Heavy),
            Some(Class::Light),
            Some(Class::Heavy),
            Some(Class::Light)
        ]
    );

    // The heavy tasks run (a worker takes every class), and the one whose
    // model is not registered was submitted with the kind's class and fails
    // saying so.
    let _worker = WorkerProcess::start(&redis, &[]).await;
    let outcome = producer.wait(ids[0], WAIT).await.unwrap();
    assert!(outcome.succeeded(), "{:?}", outcome.record);
    assert_eq!(outcome.record.class, Some(Class::Heavy));
    let outcome = producer.wait(ids[3], WAIT).await.unwrap();
    assert_eq!(
        outcome.failure().map(|f| f.code.clone()),
        Some(ErrorCode::from_static("MODEL_NOT_FOUND"))
    );
}

#[tokio::test]
async fn train_writes_its_model_into_model_dir_when_asked() {
    let redis = RedisServer::start();
    let dir = ScratchDir::new("model-dir");
    let dir_text = dir.path().to_str().unwrap();
    let _worker = WorkerProcess::start(&redis, &[("TANDEM_MODEL_DIR", dir_text)]).await;
    let store = store(&redis).await;
    let producer = redis.producer().await;
    let model = upload(&store, "px", &[4, 16, 16, 1], 3).await;

    let params = small_train("px", Some("tuned.st"));
    let (record, trained) = run::<Train>(&producer, &params, Priority::Normal).await;
    let trained = trained.unwrap_or_else(|| panic!("{record:?}"));
    assert!(trained.weights.is_none(), "the model went to the file");
    let path = trained.path.expect("the path written");
    assert_eq!(std::path::Path::new(&path), dir.path().join("tuned.st"));
    let file = std::fs::read(&path).unwrap();
    assert_eq!(sha256_hex(&file), trained.sha256);
    let tuned = Model::decode(&file).unwrap();
    assert_eq!(tuned.shape(), model.shape());
    assert_ne!(
        tuned.encode(),
        model.encode(),
        "training changed the weights"
    );

    // Only a plain file name inside model_dir.
    let escape = small_train("px", Some("../x"));
    let (record, _) = run::<Train>(&producer, &escape, Priority::Normal).await;
    assert_eq!(record.status, Some(Status::Failed));
    let error = record.error.expect("an error");
    assert_eq!(error.code, ErrorCode::BAD_PARAMS, "{}", error.message);
    assert!(!dir.path().parent().unwrap().join("x").exists());
}

#[tokio::test]
async fn train_with_out_fails_on_a_worker_without_model_dir() {
    let redis = RedisServer::start();
    let _worker = WorkerProcess::start(&redis, &[]).await;
    let store = store(&redis).await;
    let producer = redis.producer().await;
    upload(&store, "px", &[4, 16, 16, 1], 3).await;

    let params = small_train("px", Some("tuned.st"));
    let (record, _) = run::<Train>(&producer, &params, Priority::Normal).await;
    assert_eq!(record.status, Some(Status::Failed));
    let error = record.error.expect("an error");
    assert_eq!(error.code, ErrorCode::BAD_PARAMS);
    assert!(error.message.contains("model_dir"), "{}", error.message);
}

/// Issue 19: a sticky device error while a model is uploaded no longer
/// leaves the worker serving on a dead GPU with its model on the CPU. The
/// task goes back (`DEVICE_FAILED`, not charged an attempt), the worker
/// exits with status 3 and its fleet restarts it; with no CPU worker and
/// every upload failing, the task ends once its deliveries are spent.
#[tokio::test]
async fn a_sticky_error_during_a_model_upload_fails_the_device() {
    let redis = RedisServer::start();
    upload(&store(&redis).await, "m1", &SIZES, 1).await;
    let mut fleet = WorkerProcess::spawn_fleet(
        &redis,
        &[
            (
                "TANDEM_SIMULATE_GPUS",
                "Bad, 12 GiB, 40 TFLOPS, upload_fails",
            ),
            ("TANDEM_FLEET_CPU_WORKER", "false"),
            ("TANDEM_FLEET_RESTART_MS", "100"),
            ("TANDEM_MAX_DELIVERIES", "2"),
        ],
    );
    let producer = redis.producer().await;
    let id = producer
        .submit(Task::of::<Infer>(&infer("m1", 2, 16)).unwrap())
        .await
        .unwrap();
    let outcome = producer.wait(id, WAIT).await.unwrap();
    assert_eq!(outcome.status, Status::Failed, "{:?}", outcome.record);
    assert_eq!(
        outcome.failure().map(|f| f.code.as_str()),
        Some("MAX_DELIVERIES"),
        "{:?}",
        outcome.record
    );
    let record = producer.record(id).await.unwrap().unwrap();
    let history: Vec<serde_json::Value> =
        serde_json::from_str(record.history.as_deref().unwrap_or("[]")).unwrap();
    let device_failed: Vec<&serde_json::Value> = history
        .iter()
        .filter(|h| h["error_code"] == "DEVICE_FAILED")
        .collect();
    assert_eq!(device_failed.len(), 2, "{history:?}");
    assert!(
        device_failed.iter().all(|h| h["error_message"]
            .as_str()
            .is_some_and(|m| m.contains("uploading model \"m1\""))),
        "{history:?}"
    );
    let log = fleet.log_text();
    for needle in ["its device failed (status 3)", "restarted"] {
        assert!(
            log.contains(needle),
            "{needle:?} not in the fleet log:\n{log}"
        );
    }
    assert!(!log.contains("model runs on the CPU"), "{log}");
    fleet.signal("TERM");
    assert_eq!(fleet.wait_exit(WAIT), Some(0));
}
