//! `tandem scaling`: a `parallel` task split over 1, 2, 4 … GPUs, and the
//! gaps each GPU spends between its shards.
//!
//! Every run starts a fleet of N identical simulated GPUs (one worker each,
//! one task at a time, no CPU help) on a private Redis and submits one
//! `split_sum` task whose blocks sleep a fixed time: its work is known
//! exactly (blocks x block_ms), so the figures are the queue's own, not a
//! kernel's. Per N it prints the makespan (submission to the merged result)
//! against the ideal (work / N), and the gaps between one shard's end and
//! the next one's start on the same GPU: the time the queue keeps a GPU
//! idle between tasks.

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use tandem_producer::{Producer, Task};
use tandem_shared::kind::builtin::{SplitSum, SplitSumParams};
use tandem_shared::store::Store;
use tandem_shared::{Class, Config, Status};

use super::local::{LocalRedis, LocalWorkers};
use super::table;

#[derive(Debug, Args)]
pub struct ScalingArgs {
    /// Numbers of simulated GPUs to run with.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    pub gpus: Vec<usize>,
    /// Blocks of work in the task.
    #[arg(long, default_value_t = 800)]
    pub blocks: u64,
    /// Time each block takes (ms).
    #[arg(long, default_value_t = 5)]
    pub block_ms: u64,
    /// Shards per live GPU (the `shards_per_gpu` setting).
    #[arg(long, default_value_t = 4)]
    pub shards_per_gpu: u32,
    /// Tasks per number of GPUs; the table shows medians.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
}

/// What one task's run showed.
struct RunFigures {
    shards: usize,
    makespan_ms: u64,
    busy_ms: u64,
    gaps_ms: Vec<u64>,
}

pub(crate) async fn run(config: Config, args: ScalingArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.blocks > 0 && args.runs > 0 && args.gpus.iter().all(|&n| n > 0),
        "blocks, runs and every number of GPUs must be above 0"
    );
    let work_ms = args.blocks * args.block_ms;
    println!(
        "tandem scaling: one split_sum of {} blocks x {} ms = {} ms of work, {} shards per GPU, {} runs each",
        args.blocks, args.block_ms, work_ms, args.shards_per_gpu, args.runs
    );
    let mut rows = vec![
        [
            "GPUs",
            "shards",
            "makespan ms",
            "ideal ms",
            "efficiency",
            "GPUs busy",
            "gap p50 ms",
            "gap max ms",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for &gpus in &args.gpus {
        let runs = one_fleet(&config, &args, gpus).await?;
        let median = |mut values: Vec<u64>| {
            values.sort_unstable();
            values.get(values.len() / 2).copied().unwrap_or(0)
        };
        let makespan = median(runs.iter().map(|r| r.makespan_ms).collect());
        let busy = median(runs.iter().map(|r| r.busy_ms).collect());
        let mut gaps: Vec<u64> = runs.iter().flat_map(|r| r.gaps_ms.clone()).collect();
        gaps.sort_unstable();
        let ideal = work_ms / gpus as u64;
        rows.push(vec![
            gpus.to_string(),
            runs.first().map_or(0, |r| r.shards).to_string(),
            table::thousands(makespan),
            table::thousands(ideal),
            format!("{:.0} %", 100.0 * ideal as f64 / makespan.max(1) as f64),
            format!(
                "{:.0} %",
                100.0 * busy as f64 / (makespan.max(1) * gpus as u64) as f64
            ),
            gaps.get(gaps.len() / 2)
                .map_or_else(|| "-".to_owned(), u64::to_string),
            gaps.last().map_or_else(|| "-".to_owned(), u64::to_string),
        ]);
    }
    print!("\n{}", table::render(&rows));
    println!(
        "\nefficiency: ideal / makespan; GPUs busy: time in shards / (GPUs x makespan); \
         gap: one shard's end to the next one's start on the same GPU"
    );
    Ok(ExitCode::SUCCESS)
}

/// Starts a private Redis and a fleet of `gpus` simulated GPUs, runs the
/// task `args.runs` times, stops everything.
async fn one_fleet(
    config: &Config,
    args: &ScalingArgs,
    gpus: usize,
) -> anyhow::Result<Vec<RunFigures>> {
    let redis = LocalRedis::start()?;
    let config = Config {
        redis_url: redis.url.clone(),
        ..config.clone()
    };
    let spec = (0..gpus)
        .map(|i| format!("Sim GPU {i}, 16 GiB, 20 TFLOPS"))
        .collect::<Vec<_>>()
        .join("; ");
    let env = [
        ("TANDEM_REDIS_URL", config.redis_url.clone()),
        ("TANDEM_PREFIX", config.prefix.clone()),
        ("TANDEM_SIMULATE_GPUS", spec),
        ("TANDEM_TEST_KINDS", "1".to_owned()),
        ("TANDEM_CONCURRENCY", "1".to_owned()),
        ("TANDEM_SHARDS_PER_GPU", args.shards_per_gpu.to_string()),
        ("TANDEM_CPU_FALLBACK_MS", "600000".to_owned()),
        ("TANDEM_LOG_LEVEL", "warn".to_owned()),
    ];
    let mut fleet = LocalWorkers::start_fleet(&env, &["TANDEM_WORKER_ID", "TANDEM_DEVICE"], None)?;
    let store = Store::connect(&config).await?;
    let started = std::time::Instant::now();
    loop {
        fleet.check_alive()?;
        let live = store
            .workers()
            .await?
            .iter()
            .filter(|w| w.device != "cpu")
            .count();
        if live >= gpus {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(60),
            "{gpus} simulated GPU workers did not register within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let every worker see the others (routing reads the registry).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let producer = Producer::connect(&config).await?;
    let mut runs = Vec::with_capacity(args.runs);
    for _ in 0..args.runs {
        runs.push(one_task(&producer, &store, args).await?);
    }
    fleet.stop(Duration::from_secs(5));
    drop(redis);
    Ok(runs)
}

async fn one_task(
    producer: &Producer,
    store: &Store,
    args: &ScalingArgs,
) -> anyhow::Result<RunFigures> {
    let params = SplitSumParams {
        n: args.blocks * 10,
        block: 10,
        block_ms: args.block_ms,
        fail_block: None,
    };
    let id = producer
        .submit(Task::of::<SplitSum>(&params)?.class(Class::Parallel))
        .await?;
    let outcome = producer.wait(id, Duration::from_secs(600)).await?;
    anyhow::ensure!(
        outcome.status == Status::Succeeded,
        "the task ended {:?}",
        outcome.status
    );
    let record = store
        .find_record(&id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("the task's record is gone"))?;
    let (Some(submitted), Some(finished)) = (record.submitted_at_ms, record.finished_at_ms) else {
        anyhow::bail!("the record lacks its times");
    };
    // One (start, end) per shard, per GPU; an unsplit task is its own shard.
    let mut spans: HashMap<String, Vec<(u64, u64)>> = HashMap::new();
    let mut shard_records = Vec::new();
    if record.shard_ids.is_empty() {
        shard_records.push(record);
    } else {
        for shard in &record.shard_ids {
            match store.find_record(shard).await? {
                Some(r) => shard_records.push(r),
                None => anyhow::bail!("shard {shard} has no record (expired?)"),
            }
        }
    }
    let shards = shard_records.len();
    let mut busy_ms = 0;
    for r in shard_records {
        if let (Some(device), Some(start), Some(end)) =
            (r.device, r.started_at_ms, r.finished_at_ms)
        {
            busy_ms += end.saturating_sub(start);
            spans.entry(device).or_default().push((start, end));
        }
    }
    let mut gaps_ms = Vec::new();
    for runs in spans.values_mut() {
        runs.sort_unstable();
        for pair in runs.windows(2) {
            gaps_ms.push(pair[1].0.saturating_sub(pair[0].1));
        }
    }
    Ok(RunFigures {
        shards,
        makespan_ms: finished.saturating_sub(submitted),
        busy_ms,
        gaps_ms,
    })
}
