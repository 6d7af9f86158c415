//! The seed's routing rules beyond the class matrix, through real workers
//! on simulated GPUs: training goes to the primary GPU whatever its
//! model's size (`train_on_primary`), to the model's class when that is
//! off, and still runs when the primary (or every GPU) is down.

use tandem_producer::{Producer, Task};
use tandem_shared::kind::model_kinds::{Optimizer, Train, TrainParams};
use tandem_shared::model_format::{Activation, Model};
use tandem_shared::store::{ModelPolicy, Store};
use tandem_shared::{Class, Config, Status};

use crate::support::gpus::{PAIR, PRIMARY, SECONDARY, WAIT, start, store};
use crate::support::{RedisServer, WorkerProcess, wait_until};

/// Registers a 4-16-16-1 model (1,508 parameter bytes): under the default
/// heavy threshold (5 GB), so the registry records it as light.
async fn upload_small(store: &Store, name: &str) {
    let model = Model::random(&[4, 16, 16, 1], Activation::Relu, 7).unwrap();
    let policy = ModelPolicy {
        heavy_threshold_bytes: 5_000_000_000,
        max_upload_bytes: 64 << 20,
    };
    let info = store
        .upload_model(name, &model.encode(), &policy)
        .await
        .unwrap();
    assert_eq!(info.class, Class::Light, "{info:?}");
}

fn train(model: &str) -> Task {
    let samples = 16;
    let x: Vec<f32> = (0..samples * 4).map(|i| (i % 7) as f32 / 7.0).collect();
    let y: Vec<f32> = x.chunks(4).map(|r| r[0] - r[1]).collect();
    Task::of::<Train>(&TrainParams {
        model: model.into(),
        x,
        y,
        samples: samples as u64,
        epochs: 1,
        batch_size: 8,
        optimizer: Optimizer::Sgd {
            lr: 0.05,
            momentum: 0.0,
        },
        seed: 1,
        out: None,
    })
    .unwrap()
}

/// Submits a `train` task and waits for it to succeed; the class it was
/// submitted to and the device it ran on.
async fn trained(producer: &Producer, model: &str) -> (Option<Class>, String) {
    let id = producer.submit(train(model)).await.unwrap();
    let outcome = producer.wait(id, WAIT).await.unwrap();
    let record = outcome.record;
    assert_eq!(
        outcome.status,
        Status::Succeeded,
        "{:?}",
        (record.error, record.history)
    );
    (record.class, record.device.unwrap_or_default())
}

/// How many times `worker` logged routing rules containing `why`.
fn logged(worker: &WorkerProcess, why: &str) -> usize {
    worker
        .log_text()
        .lines()
        .filter(|l| l.contains("routing:") && l.contains(why))
        .count()
}

/// Waits until `worker` logs routing rules containing `why` once more than
/// `before` times: it has seen the fleet change (every worker logs its
/// rules when the live workers around it change).
async fn wait_rules(worker: &WorkerProcess, why: &str, before: usize) {
    wait_until(
        WAIT,
        &format!("{} routes by {why:?}", worker.id),
        || async { logged(worker, why) > before },
    )
    .await;
}

#[tokio::test]
async fn a_small_models_training_runs_on_the_primary_unless_told_otherwise() {
    let redis = RedisServer::start();
    let mut primary = start(&redis, PRIMARY, PAIR, &[]).await;
    let mut secondary = start(&redis, SECONDARY, PAIR, &[]).await;
    let cpu = start(&redis, "cpu", PAIR, &[]).await;
    // Each knows the others before any task is submitted: the GPUs keep
    // to their own classes, the CPU worker to what fits no GPU.
    wait_rules(&primary, "idle primary helps with a light backlog", 0).await;
    wait_rules(&secondary, "primary busy past the spill bound", 0).await;
    wait_rules(&cpu, "primary lives", 0).await;
    wait_rules(&cpu, "secondary lives", 0).await;
    upload_small(&store(&redis).await, "small").await;

    // By default training goes to the primary, whatever the model's size.
    let producer = redis.producer().await;
    assert_eq!(
        trained(&producer, "small").await,
        (Some(Class::Heavy), PRIMARY.to_owned())
    );

    // With the setting off, the model's class: light, the secondary.
    let by_model = Producer::connect(&Config {
        train_on_primary: false,
        ..redis.config()
    })
    .await
    .unwrap();
    assert_eq!(
        trained(&by_model, "small").await,
        (Some(Class::Light), SECONDARY.to_owned())
    );

    // The primary stops: training still runs, on the secondary.
    let down = "primary down: secondary takes what fits";
    let before = logged(&secondary, down);
    primary.signal("TERM");
    assert_eq!(primary.wait_exit(WAIT), Some(0));
    wait_rules(&secondary, down, before).await;
    assert_eq!(
        trained(&producer, "small").await,
        (Some(Class::Heavy), SECONDARY.to_owned())
    );

    // And with no GPU at all, on the CPU worker.
    let none = "no GPU lives";
    let before = logged(&cpu, none);
    secondary.signal("TERM");
    assert_eq!(secondary.wait_exit(WAIT), Some(0));
    wait_rules(&cpu, none, before).await;
    assert_eq!(
        trained(&producer, "small").await,
        (Some(Class::Heavy), "cpu".to_owned())
    );
}
