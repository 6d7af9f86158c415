//! The price-prediction transformer (issue 17): `tandem model new --arch
//! transformer` writes the seeded model the file format's
//! `TransformerModel::random` makes, names what is wrong with bad arguments
//! and registers it; a real worker serves a registered transformer
//! (`predict_batch` of 1,000 symbols x 128 steps x 32 features by blob
//! reference, `infer`) with the CPU twin's bits, and `train` fine-tunes it;
//! the NumPy reference the twin is held to runs here too.

use std::process::{Command, Output};

use redis::AsyncCommands;
use std::time::Duration;

use tandem_kernels::transformer as xf;
use tandem_producer::Task;
use tandem_shared::kind::KindSpec;
use tandem_shared::kind::model_kinds::{
    Infer, InferOutput, InferParams, Optimizer, PredictBatch, PredictBatchOutput,
    PredictBatchParams, SymbolWindow, Train, TrainOutput, TrainParams,
};
use tandem_shared::model_format::sha256_hex;
use tandem_shared::model_format::transformer::{
    Pooling, Positions, TransformerModel, TransformerShape,
};
use tandem_shared::store::{ModelArch, ModelPolicy, Store};
use tandem_shared::{Class, Status};

use crate::support::{RedisServer, ScratchDir, WorkerProcess, bin};

fn tandem(redis: &RedisServer, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = Command::new(bin("tandem"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("REDIS_URL", redis.url())
        .envs(env.iter().copied());
    cmd.output().expect("run tandem")
}

#[test]
fn model_new_writes_a_seeded_transformer() {
    let redis = RedisServer::start();
    let dir = ScratchDir::new("transformer");
    let path = dir.path().join("xf.safetensors");
    let path_text = path.to_str().unwrap();
    let args = [
        "model",
        "new",
        "xf",
        "--arch",
        "transformer",
        "--layers",
        "2",
        "--d-model",
        "32",
        "--heads",
        "4",
        "--window",
        "16",
        "--features",
        "8",
        "--causal",
        "--seed",
        "5",
        "--out",
        path_text,
    ];
    // 2 blocks of d_model 32 and ff 128: 16 (normalisation) + 288 (input
    // projection) + 512 (positions) + 2 x 12,704 + 64 + 33 (final norm,
    // head) = 26,321 floats, 105,284 bytes.
    let out = tandem(
        &redis,
        &[("TANDEM_MODEL_HEAVY_THRESHOLD_BYTES", "105283")],
        &args,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("26,321 parameters (105,284 bytes), heavy"),
        "{text}"
    );
    let file = std::fs::read(&path).unwrap();
    let shape = TransformerShape {
        features: 8,
        window: 16,
        d_model: 32,
        heads: 4,
        layers: 2,
        ff: 128,
        outputs: 1,
        causal: true,
        pooling: Pooling::Last,
        positions: Positions::Learned,
    };
    let expected = TransformerModel::random(shape, 5).unwrap();
    assert_eq!(file, expected.encode());
    assert_eq!(TransformerModel::decode(&file).unwrap(), expected);
    // One byte under the threshold's line, light.
    let out = tandem(
        &redis,
        &[("TANDEM_MODEL_HEAVY_THRESHOLD_BYTES", "105284")],
        &args,
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("bytes), light"));

    for (change, expect) in [
        (
            ("--layers", "2,3"),
            "--layers: a transformer takes one number",
        ),
        (("--heads", "5"), "5 heads do not divide d_model 32"),
        (("--window", "0"), "window: 0 is not within"),
    ] {
        let mut bad: Vec<&str> = args.to_vec();
        let at = bad.iter().position(|a| *a == change.0).unwrap();
        bad[at + 1] = change.1;
        let out = tandem(&redis, &[], &bad);
        let error = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && error.contains(expect),
            "{change:?}: {error}"
        );
    }
    // Registered by path: the record says transformer, its config and
    // class.
    let mut register = args.to_vec();
    register.push("--register");
    let out = tandem(&redis, &[], &register);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("registered model xf version 1"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = tandem(&redis, &[], &["model", "show", "xf"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for expect in [
        "transformer",
        "tandem-transformer version 1",
        "features=8 window=16 d_model=32 heads=4 layers=2 ff=128 outputs=1 causal=true pooling=last positions=learned",
        "gelu-tanh",
        "105,284",
    ] {
        assert!(text.contains(expect), "{expect}: {text}");
    }
}

pub(crate) fn shape(
    features: usize,
    window: usize,
    d_model: usize,
    causal: bool,
) -> TransformerShape {
    TransformerShape {
        features,
        window,
        d_model,
        heads: 2,
        layers: 1,
        ff: 2 * d_model,
        outputs: 1,
        causal,
        pooling: Pooling::Last,
        positions: Positions::Learned,
    }
}

pub(crate) async fn upload_transformer(
    store: &Store,
    name: &str,
    shape: TransformerShape,
    heavy_threshold_bytes: u64,
) -> TransformerModel {
    let model = TransformerModel::random(shape, 11).unwrap();
    let policy = ModelPolicy {
        heavy_threshold_bytes,
        max_upload_bytes: 64 << 20,
    };
    let info = store
        .upload_model(name, &model.encode(), &policy)
        .await
        .unwrap();
    assert_eq!(info.arch, ModelArch::Transformer(shape));
    model
}

/// The kernels' twin of a file's model (the worker converts the same way).
pub(crate) fn twin(model: &TransformerModel) -> xf::Transformer {
    let s = model.shape;
    xf::Transformer {
        config: xf::Config {
            features: s.features,
            window: s.window,
            d_model: s.d_model,
            heads: s.heads,
            layers: s.layers,
            ff: s.ff,
            outputs: s.outputs,
            causal: s.causal,
            pooling: xf::Pooling::Last,
            positions: xf::Positions::Learned,
        },
        params: model.params.clone(),
    }
}

/// A slow wave per symbol plus noise-like wiggles, `window x features`.
pub(crate) fn market(symbols: usize, window: usize, features: usize) -> Vec<f32> {
    (0..symbols * window * features)
        .map(|i| {
            let (s, rest) = (i / (window * features), i % (window * features));
            let (t, f) = (rest / features, rest % features);
            ((s as f32 * 0.13 + t as f32 * 0.05 + f as f32 * 0.7).sin()
                + 0.1 * ((i * 7919 % 101) as f32 / 101.0 - 0.5))
                * (1.0 + f as f32 * 0.01)
        })
        .collect()
}

/// How many times Redis ran GETRANGE (blob chunks read), INFO commandstats.
async fn getrange_calls(redis: &RedisServer) -> u64 {
    let mut conn = redis.conn().await;
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .unwrap();
    info.lines()
        .find_map(|line| line.strip_prefix("cmdstat_getrange:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Waits for the task's end, however long the loaded machine takes (the
/// hour is only a guard against a hang).
const NO_HURRY: Duration = Duration::from_secs(3_600);

#[tokio::test]
async fn predict_batch_serves_a_thousand_symbol_transformer_by_blob_reference() {
    let redis = RedisServer::start();
    let _worker = WorkerProcess::start(&redis, &[]).await;
    let store = crate::support::gpus::store(&redis).await;
    let producer = redis.producer().await;
    // 1,000 symbols x 128 steps x 32 features (16 MiB of f32): over the
    // 1 MiB blob threshold, so the producer stores the parameters as a blob
    // and the entry carries its reference. A small d_model keeps the CPU
    // time low; the model is heavy by its registered class (threshold 1).
    let (symbols, window, features) = (1_000, 128, 32);
    let model = upload_transformer(&store, "px-xf", shape(features, window, 8, true), 1).await;
    let inputs = market(symbols, window, features);
    let params = PredictBatchParams {
        model: "px-xf".into(),
        symbols: inputs
            .chunks(window * features)
            .enumerate()
            .map(|(i, w)| SymbolWindow {
                symbol: format!("SYM{i:04}"),
                features: w.to_vec(),
            })
            .collect(),
    };
    let task = Task::of::<PredictBatch>(&params).unwrap();
    let id = producer.submit(task).await.unwrap();
    let outcome = producer.wait(id, NO_HURRY).await.unwrap();
    let record = outcome.record.clone();
    let out: PredictBatchOutput = outcome
        .result()
        .unwrap_or_else(|e| panic!("{e}: {record:?}"));
    assert_eq!(record.class, Some(Class::Heavy), "{record:?}");
    // The worker read the parameters' blob in chunks (GETRANGE): they did
    // not travel inline.
    let sent = tandem_shared::msgpack::encode(&params).unwrap().len();
    assert!(sent > 16 << 20, "{sent} bytes of parameters");
    let chunk = tandem_shared::Config::default().blob_chunk_bytes;
    assert!(
        getrange_calls(&redis).await >= sent.div_ceil(chunk) as u64,
        "the parameters travelled inline"
    );
    assert_eq!(out.predictions.len(), symbols);
    assert_eq!(out.predictions[999].symbol, "SYM0999");
    // The CPU twin on the same weights and inputs, here: the same bits.
    let want = xf::forward_cpu(&twin(&model), &inputs, symbols).unwrap();
    let got: Vec<f32> = out
        .predictions
        .iter()
        .flat_map(|p| p.values.clone())
        .collect();
    assert_eq!(got, want);
    // Outputs differ between symbols (the windows reached the model).
    assert!(want.iter().any(|v| (v - want[0]).abs() > 1e-4), "{want:?}");

    // infer: the same windows as rows; a wrong width is named.
    let rows = 3;
    let infer = InferParams {
        model: "px-xf".into(),
        inputs: inputs[..rows * window * features].to_vec(),
        batch: rows as u64,
    };
    let id = producer
        .submit(Task::of::<Infer>(&infer).unwrap())
        .await
        .unwrap();
    let out: InferOutput = producer.wait(id, NO_HURRY).await.unwrap().result().unwrap();
    assert!(out.cache_hit, "the transformer stayed resident");
    assert_eq!((out.batch, out.width), (3, 1));
    assert_eq!(out.outputs, want[..rows]);
    let wrong = InferParams {
        inputs: vec![0.5; 2 * 10],
        batch: 2,
        ..infer
    };
    let id = producer
        .submit(Task::of::<Infer>(&wrong).unwrap())
        .await
        .unwrap();
    let outcome = producer.wait(id, NO_HURRY).await.unwrap();
    let error = outcome
        .record
        .error
        .clone()
        .map(|e| e.message)
        .unwrap_or_default();
    assert_eq!(outcome.record.status, Some(Status::Failed));
    assert!(
        error.contains("2 rows of the model's width 4096"),
        "{error}"
    );
}

#[tokio::test]
async fn train_fine_tunes_a_transformer_and_its_loss_falls() {
    let redis = RedisServer::start();
    let worker = WorkerProcess::start(&redis, &[]).await;
    let store = crate::support::gpus::store(&redis).await;
    let producer = redis.producer().await;
    let (samples, window, features) = (64, 16, 4);
    let shape = shape(features, window, 16, true);
    upload_transformer(&store, "tiny-xf", shape, 5_000_000_000).await;
    // A known pattern: the target is the mean of the last step's features.
    let x = market(samples, window, features);
    let y: Vec<f32> = x
        .chunks(window * features)
        .map(|w| w[(window - 1) * features..].iter().sum::<f32>() / features as f32)
        .collect();
    let epochs = 12;
    let train = TrainParams {
        model: "tiny-xf".into(),
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
    let id = producer
        .submit(Task::of::<Train>(&train).unwrap())
        .await
        .unwrap();
    let outcome = producer.wait(id, NO_HURRY).await.unwrap();
    let record = outcome.record.clone();
    let out: TrainOutput = outcome
        .result()
        .unwrap_or_else(|e| panic!("{e}: {record:?}"));
    assert_eq!(out.losses.len(), epochs as usize);
    assert_eq!(out.steps, u64::from(epochs) * 4);
    // A CPU worker trains on the twin, and says so.
    let log = worker.log_text();
    assert!(log.contains("transformer trained on the CPU twin"), "{log}");
    let (first, last) = (out.losses[0], out.losses[epochs as usize - 1]);
    assert!(
        last < first / 4.0,
        "loss {first} -> {last}: {:?}",
        out.losses
    );
    // The fine-tuned transformer comes back as a file of the same shape;
    // registered, it is the next version and serves.
    let weights = out.weights.expect("the model comes back");
    assert_eq!(sha256_hex(&weights), out.sha256);
    let tuned = TransformerModel::decode(&weights).unwrap();
    assert_eq!(tuned.shape, shape);
    let policy = ModelPolicy {
        heavy_threshold_bytes: 5_000_000_000,
        max_upload_bytes: 64 << 20,
    };
    let info = store
        .upload_model("tiny-xf", &weights, &policy)
        .await
        .unwrap();
    assert_eq!(info.version, 2);
    let infer = InferParams {
        model: "tiny-xf".into(),
        inputs: train.x[..window * features].to_vec(),
        batch: 1,
    };
    let id = producer
        .submit(Task::of::<Infer>(&infer).unwrap())
        .await
        .unwrap();
    let served: InferOutput = producer.wait(id, NO_HURRY).await.unwrap().result().unwrap();
    assert_eq!(served.model_version, 2);
    assert_eq!(
        served.outputs,
        xf::forward_cpu(&twin(&tuned), &infer.inputs, 1).unwrap()
    );
}

/// A model kind's device memory, which the claim fits to a GPU's free
/// memory, comes from the registered model's shape: a transformer's
/// activations (forward for `infer` and `predict_batch`, forward and
/// backward for `train`), not the MLP's formula; a task that declares its
/// own memory keeps it. Read from the task records, no worker running.
#[tokio::test]
async fn a_transformer_tasks_memory_comes_from_its_registered_shape() {
    let redis = RedisServer::start();
    let store = crate::support::gpus::store(&redis).await;
    let producer = redis.producer().await;
    let s = shape(8, 16, 32, true);
    upload_transformer(&store, "mem-xf", s, 1 << 30).await;
    let arch = ModelArch::Transformer(s);
    let window = 16 * 8;
    let infer = InferParams {
        model: "mem-xf".into(),
        inputs: vec![0.25; 4 * window],
        batch: 4,
    };
    let predict = PredictBatchParams {
        model: "mem-xf".into(),
        symbols: (0..3)
            .map(|i| SymbolWindow {
                symbol: format!("S{i}"),
                features: vec![0.5; window],
            })
            .collect(),
    };
    let train = TrainParams {
        model: "mem-xf".into(),
        x: vec![0.1; 32 * window],
        y: vec![0.0; 32],
        samples: 32,
        epochs: 1,
        batch_size: 8,
        optimizer: Optimizer::Sgd {
            lr: 0.01,
            momentum: 0.0,
        },
        seed: 1,
        out: None,
    };
    let expected = [
        Infer::memory_for(&infer, &arch),
        PredictBatch::memory_for(&predict, &arch),
        Train::memory_for(&train, &arch),
        12_345,
    ];
    assert_ne!(
        expected[0],
        Infer::memory_estimate(&infer),
        "a transformer's own figure"
    );
    let tasks = vec![
        Task::of::<Infer>(&infer).unwrap(),
        Task::of::<PredictBatch>(&predict).unwrap(),
        Task::of::<Train>(&train).unwrap(),
        Task::of::<Infer>(&infer).unwrap().memory_bytes(12_345),
    ];
    let ids = producer.submit_many(tasks).await.unwrap();
    let mut conn = redis.conn().await;
    for (id, expected) in ids.into_iter().zip(expected) {
        let record = producer.record(id).await.unwrap().unwrap();
        let class = record.class.expect("a class");
        let stored: u64 = conn
            .hget(format!("tandem:{{{class}}}:task:{id}"), "memory_bytes")
            .await
            .unwrap();
        assert_eq!(stored, expected, "{record:?}");
    }
}

/// A Python with NumPy: `TANDEM_PYTHON` (CI's venv, which has it), else
/// `python3` when it imports numpy; `None` (after saying why) outside CI
/// when neither does.
fn python_with_numpy() -> Option<std::path::PathBuf> {
    let imports = |python: &std::path::Path| {
        Command::new(python)
            .args(["-c", "import numpy"])
            .output()
            .is_ok_and(|out| out.status.success())
    };
    if let Ok(path) = std::env::var("TANDEM_PYTHON") {
        let path = std::path::PathBuf::from(path);
        assert!(
            imports(&path),
            "TANDEM_PYTHON={} cannot import numpy",
            path.display()
        );
        return Some(path);
    }
    let python3 = std::path::PathBuf::from("python3");
    if imports(&python3) {
        return Some(python3);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must run the NumPy reference: set TANDEM_PYTHON to a python with numpy (.ci/run does)"
    );
    eprintln!("skipped: no python with numpy (set TANDEM_PYTHON)");
    None
}

/// Each line of a reference file: the model's name and its outputs.
fn reference_lines(text: &str) -> Vec<(String, Vec<f64>)> {
    text.lines()
        .map(|line| {
            let mut fields = line.split_whitespace();
            let name = fields.next().expect("a model name").to_string();
            let values = fields
                .map(|v| v.parse().unwrap_or_else(|e| panic!("{name}: {v:?}: {e}")))
                .collect();
            (name, values)
        })
        .collect()
}

/// The independent NumPy reference runs here, not only its committed
/// output: `bench/transformer_numpy.py reference` prints what
/// `kernels/src/transformer/numpy_reference.txt` holds (which the CPU
/// twin's unit test `outputs_match_the_numpy_reference` is held to), every
/// model of it, within 1e-6 of the largest output (NumPy's float32 sums
/// may round differently from one build to another).
#[test]
fn the_numpy_reference_is_what_its_script_computes() {
    let Some(python) = python_with_numpy() else {
        return;
    };
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    let out = Command::new(&python)
        .arg(root.join("bench/transformer_numpy.py"))
        .arg("reference")
        .output()
        .expect("run bench/transformer_numpy.py");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let computed = reference_lines(&String::from_utf8_lossy(&out.stdout));
    let committed = reference_lines(include_str!(
        "../../kernels/src/transformer/numpy_reference.txt"
    ));
    assert_eq!(computed.len(), 8, "every variant");
    let names = |lines: &[(String, Vec<f64>)]| -> Vec<String> {
        lines.iter().map(|(name, _)| name.clone()).collect()
    };
    assert_eq!(names(&computed), names(&committed));
    for ((name, now), (_, then)) in computed.iter().zip(&committed) {
        assert_eq!(now.len(), then.len(), "{name}");
        let scale = then.iter().fold(0f64, |m, v| m.max(v.abs()));
        assert!(scale > 0.0, "{name}: all zero");
        for (a, b) in now.iter().zip(then) {
            assert!(
                (a - b).abs() <= 1e-6 * scale,
                "{name}: the script prints {a}, the committed reference {b}"
            );
        }
    }
}
