//! `--trading`: the fleet (one worker per GPU, simulated where there is
//! none, plus a CPU worker), its devices as the summary's columns, and
//! where the shards of split tasks ran.

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use tandem_producer::Task;
use tandem_shared::device::{Health, Role};
use tandem_shared::kind::model_kinds::{
    PredictBatch, PredictBatchOutput, PredictBatchParams, SymbolWindow,
};
use tandem_shared::model_format::transformer::{
    Pooling, Positions, TransformerModel, TransformerShape,
};
use tandem_shared::store::{ModelPolicy, Store};
use tandem_shared::wire::WorkerInfo;
use tandem_shared::{Class, Config, Status, TaskId};

use super::summary::trading_summary;
use super::trading_workload::trading_workload;
use super::{DemoArgs, Done, Interrupts, drive, worker_env};
use crate::local::{LocalWorkers, detect_gpus};
use crate::table;
use tandem_producer::Producer;

/// The seed's host, simulated where there is no GPU: a 4070 Ti (the
/// primary) and a 3060 Ti (the secondary), paced so that a task takes as
/// long, relative to the other card, as it would on those GPUs.
const SIMULATED_GPUS: &str =
    "RTX 4070 Ti, 12 GiB, 40.09 TFLOPS, paced; RTX 3060 Ti, 8 GiB, 16.2 TFLOPS, paced";

/// How long a stopping fleet member lets its running task finish: the
/// demo's tasks are disposable, and Ctrl-C should take seconds.
const FLEET_SHUTDOWN_GRACE_MS: &str = "3000";

/// The trading workload on a fleet: this host's GPUs, or the seed's two
/// simulated, plus the CPU worker the fleet adds.
pub(super) async fn trading(
    config: &Config,
    store: &Store,
    args: &DemoArgs,
) -> anyhow::Result<ExitCode> {
    let tasks = args.tasks.unwrap_or(200);
    // Installed first: starting a fleet on real GPUs takes a while (each
    // worker compiles its kernels), and a Ctrl-C meanwhile must clean up.
    let mut interrupts = Interrupts::install()?;
    let Some(Fleet {
        mut workers,
        columns,
    }) = start_fleet(config, store, args, &mut interrupts).await?
    else {
        return Ok(ExitCode::from(130));
    };

    let producer = Producer::connect(config).await?;
    if let Err(err) = transformer_predictions(config, store, &producer).await {
        println!("transformer predictions: failed: {err:#}\n");
    }
    let run = drive(&producer, tasks, trading_workload, &mut interrupts).await?;
    let code = if run.interrupted {
        println!("interrupted: stopping workers and cleaning up");
        ExitCode::from(130)
    } else {
        let shards = shard_devices(&producer, &run.done).await?;
        let all_succeeded = trading_summary(&run, &columns, &shards);
        if all_succeeded {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    };
    workers.stop(Duration::from_secs(10));
    Ok(code)
}

/// A started fleet: its processes and its devices.
pub(super) struct Fleet {
    pub(super) workers: LocalWorkers,
    /// One per device, as the summaries name them.
    pub(super) columns: Vec<Column>,
}

/// Starts the fleet (this host's GPUs, or the seed's two simulated, plus
/// a CPU worker), waits until every member is healthy and routes knowing
/// the others, and prints its devices; `None` when interrupted first (the
/// workers are stopped).
pub(super) async fn start_fleet(
    config: &Config,
    store: &Store,
    args: &DemoArgs,
    interrupts: &mut Interrupts,
) -> anyhow::Result<Option<Fleet>> {
    let detected = detect_gpus()?;
    let mut env = worker_env(config, args);
    env.push(("TANDEM_FLEET_CPU_WORKER", "true".to_owned()));
    env.push((
        "TANDEM_SHUTDOWN_GRACE_MS",
        FLEET_SHUTDOWN_GRACE_MS.to_owned(),
    ));
    let mut unset = Vec::new();
    let expected = if detected.gpus.is_empty() {
        println!("no GPU here ({})", detected.source);
        println!(
            "simulated: RTX 4070 Ti (12 GiB, 40.09 TFLOPS) and RTX 3060 Ti (8 GiB, 16.2 TFLOPS), \
             paced: their tasks run on this CPU, each stretched to that GPU's relative speed"
        );
        env.push(("TANDEM_SIMULATE_GPUS", SIMULATED_GPUS.to_owned()));
        // Whatever hid the real GPUs must not hide the simulated ones.
        unset.push("CUDA_VISIBLE_DEVICES");
        2
    } else {
        let whose = if detected.gpus.iter().any(|g| g.simulated) {
            "simulated GPUs (TANDEM_SIMULATE_GPUS)"
        } else {
            "this host's GPUs"
        };
        let gpus: Vec<String> = detected
            .gpus
            .iter()
            .map(|g| format!("{} {} ({}, {})", g.index, g.name, g.uuid, g.role))
            .collect();
        println!("{whose}: {}", gpus.join("; "));
        detected.gpus.len()
    };
    let mut workers = LocalWorkers::start_fleet(&env, &unset, None)?;
    // A real GPU's worker compiles its kernels before it takes tasks.
    let bound = Duration::from_secs(if detected.gpus.iter().all(|g| g.simulated) {
        30
    } else {
        180
    });
    let Some(live) = wait_fleet_ready(store, &mut workers, expected + 1, bound, interrupts).await?
    else {
        println!("interrupted: stopping workers and cleaning up");
        workers.stop(Duration::from_secs(10));
        return Ok(None);
    };
    let columns = Column::from_registry(&live);
    println!(
        "started tandem-worker fleet: {} workers x concurrency {} (prefix {})\n",
        live.len(),
        args.concurrency,
        config.prefix
    );
    print!("{}", legend(&columns));
    // Every member re-reads the registry once a heartbeat; after this long
    // each one routes knowing all the others.
    tokio::time::sleep(Duration::from_millis(config.heartbeat_interval_ms + 200)).await;
    Ok(Some(Fleet { workers, columns }))
}

/// The name the design gives its heavy model.
const TRANSFORMER: &str = "price_prediction_transformer";
/// Symbols whose windows the transformer predicts.
const TRANSFORMER_SYMBOLS: usize = 128;

/// The design's `PredictPriceAsync`: a seeded price-prediction transformer
/// (32 features x 128 steps per window) is uploaded to the registry, and
/// one `predict_batch` over [`TRANSFORMER_SYMBOLS`] symbols' windows (2
/// MiB: a blob reference) goes as `heavy`, `high` priority, to the heavy
/// GPU; prints where it ran and what ran it: a simulated GPU runs the CPU
/// twin, and the output says so.
async fn transformer_predictions(
    config: &Config,
    store: &Store,
    producer: &Producer,
) -> anyhow::Result<()> {
    let shape = TransformerShape {
        features: 32,
        window: 128,
        d_model: 32,
        heads: 4,
        layers: 2,
        ff: 64,
        outputs: 1,
        causal: true,
        pooling: Pooling::Last,
        positions: Positions::Learned,
    };
    let model = TransformerModel::random(shape, 17)?;
    let info = store
        .upload_model(TRANSFORMER, &model.encode(), &ModelPolicy::from(config))
        .await?;
    let per = shape.window * shape.features;
    let symbols: Vec<SymbolWindow> = (0..TRANSFORMER_SYMBOLS)
        .map(|s| SymbolWindow {
            symbol: format!("SYM{s:03}"),
            features: (0..per)
                .map(|i| ((s * 31 + i) as f32 * 0.013).sin())
                .collect(),
        })
        .collect();
    let params = PredictBatchParams {
        model: TRANSFORMER.into(),
        symbols,
    };
    let task = Task::of::<PredictBatch>(&params)?
        .class(Class::Heavy)
        .priority(tandem_shared::Priority::High);
    let started = Instant::now();
    let id = producer.submit(task).await?;
    let outcome = producer.wait(id, Duration::from_secs(300)).await?;
    let record = &outcome.record;
    let out: PredictBatchOutput = outcome
        .result()
        .map_err(|e| anyhow::anyhow!("{e} ({:?})", record.error))?;
    let device = record.device.clone().unwrap_or_else(|| "?".into());
    let first = out
        .predictions
        .first()
        .map(|p| {
            format!(
                "{} {:.4}",
                p.symbol,
                p.values.first().copied().unwrap_or(f32::NAN)
            )
        })
        .unwrap_or_default();
    println!(
        "transformer predictions ({TRANSFORMER}, version {}, {} parameters, {}): {} symbols, \
         heavy, high priority, on {device} in {:.2?}; first: {first}",
        info.version,
        table::thousands(shape.parameter_count()),
        info.class,
        out.predictions.len(),
        started.elapsed(),
    );
    if device.starts_with("SIM-") {
        println!(
            "  ran on the CPU twin (CPU fallback): {device} is a simulated GPU; on a real one \
             the forward pass runs in cuBLAS and cuda/transformer.cu\n"
        );
    } else {
        println!(
            "  ran on {device}: its forward pass on the GPU when the transformer kernels and \
             cuBLAS loaded there, else its CPU twin (the worker logs which)\n"
        );
    }
    Ok(())
}

/// Waits until the fleet's `expected` members are registered and healthy;
/// `None` when interrupted first.
async fn wait_fleet_ready(
    store: &Store,
    workers: &mut LocalWorkers,
    expected: usize,
    bound: Duration,
    interrupts: &mut Interrupts,
) -> anyhow::Result<Option<Vec<WorkerInfo>>> {
    let started = Instant::now();
    loop {
        workers.check_alive()?;
        let live = store.workers().await?;
        if live.len() >= expected && live.iter().all(|w| w.health == Health::Healthy) {
            return Ok(Some(live));
        }
        if started.elapsed() > bound {
            let states: Vec<String> = live
                .iter()
                .map(|w| format!("{} {}", w.device, w.health))
                .collect();
            anyhow::bail!(
                "the fleet did not have {expected} healthy workers within {} s (has: {})",
                bound.as_secs(),
                states.join(", ")
            );
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
            () = interrupts.recv() => return Ok(None),
        }
    }
}

/// A device of the fleet, a column of the summary.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Column {
    /// `primary`, `secondary`, `gpu` (one GPU), `gpuN` (more), or `cpu`.
    pub(super) label: String,
    /// `cpu`, or the GPU's UUID: what task records name.
    pub(super) device: String,
    /// The GPU's name, `(simulated)` included; `CPU worker` for the CPU.
    pub(super) name: String,
    pub(super) role: Role,
}

impl Column {
    /// One per live worker's device: the GPUs by index, then the CPU.
    fn from_registry(live: &[WorkerInfo]) -> Vec<Column> {
        let mut gpus: Vec<&WorkerInfo> = live.iter().filter(|w| w.device != "cpu").collect();
        gpus.sort_by_key(|w| (w.device_index, w.device.clone()));
        gpus.dedup_by(|a, b| a.device == b.device);
        let pair = gpus.len() == 2;
        let mut columns: Vec<Column> = gpus
            .iter()
            .map(|w| Column {
                label: match (gpus.len(), w.role) {
                    (1, _) => "gpu".to_owned(),
                    (_, Role::Heavy) if pair => "primary".to_owned(),
                    (_, Role::Light) if pair => "secondary".to_owned(),
                    _ => format!("gpu{}", w.device_index.unwrap_or_default()),
                },
                device: w.device.clone(),
                name: w.device_name.clone(),
                role: w.role,
            })
            .collect();
        if live.iter().any(|w| w.device == "cpu") {
            columns.push(Column {
                label: "cpu".to_owned(),
                device: "cpu".to_owned(),
                name: "CPU worker".to_owned(),
                role: Role::Cpu,
            });
        }
        columns
    }

    /// The column of `device`, when it is one of the fleet's.
    pub(super) fn of<'a>(columns: &'a [Column], device: &str) -> Option<&'a Column> {
        columns.iter().find(|c| c.device == device)
    }
}

fn legend(columns: &[Column]) -> String {
    let mut rows = vec![["", "device", "name", "role"].map(String::from).to_vec()];
    for c in columns {
        rows.push(vec![
            c.label.clone(),
            c.device.clone(),
            c.name.clone(),
            c.role.to_string(),
        ]);
    }
    table::render(&rows)
}

/// Where the shards of each split task ran: parent id to shard devices.
async fn shard_devices(
    producer: &Producer,
    done: &[Done],
) -> anyhow::Result<HashMap<TaskId, Vec<String>>> {
    let mut shards = HashMap::new();
    for d in done {
        if d.class != Some(Class::Parallel) || d.status != Status::Succeeded {
            continue;
        }
        let Some(record) = producer.record(d.id).await? else {
            continue;
        };
        if record.shard_ids.is_empty() {
            continue;
        }
        let mut devices = Vec::with_capacity(record.shard_ids.len());
        for shard in &record.shard_ids {
            let device = producer.record(*shard).await?.and_then(|r| r.device);
            devices.push(device.unwrap_or_default());
        }
        shards.insert(d.id, devices);
    }
    Ok(shards)
}

/// Counts per fleet column (in column order), then devices outside it.
pub(super) fn by_column<'a>(
    columns: &[Column],
    devices: impl Iterator<Item = &'a str>,
) -> Vec<usize> {
    let mut counts = vec![0; columns.len() + 1];
    for device in devices {
        match columns.iter().position(|c| c.device == device) {
            Some(at) => counts[at] += 1,
            None => counts[columns.len()] += 1,
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_name_the_pair_primary_and_secondary_and_the_cpu_last() {
        let worker = |device: &str, role, index| WorkerInfo {
            device: device.to_owned(),
            role,
            device_index: index,
            device_name: format!("{device} name"),
            ..WorkerInfo::default()
        };
        let live = [
            worker("cpu", Role::Cpu, None),
            worker("SIM-1", Role::Light, Some(1)),
            worker("SIM-0", Role::Heavy, Some(0)),
        ];
        let labels: Vec<String> = Column::from_registry(&live)
            .into_iter()
            .map(|c| c.label)
            .collect();
        assert_eq!(labels, ["primary", "secondary", "cpu"]);
        let single = Column::from_registry(&live[..2]);
        assert_eq!(single[0].label, "gpu");
        let columns = Column::from_registry(&live);
        assert_eq!(
            by_column(&columns, ["SIM-0", "cpu", "SIM-0", "GPU-x"].into_iter()),
            [2, 0, 1, 1]
        );
    }
}
