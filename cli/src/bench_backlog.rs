//! `tandem bench --phases backlog --n 1000000`: a deep backlog. No-op tasks
//! wait across all four priorities (round robin), filled with pipelined
//! `submit_many` calls (1,000 tasks a round trip, `--producers` in
//! parallel) in steps of ten from 10,000 up to `--n`. At each depth:
//!
//! - memory per waiting task: `used_memory` now less before the first
//!   task, over the tasks waiting;
//! - `tandem queues`: the real command run as a child process, wall time
//!   from spawn to exit (process start included), median and worst of 5;
//! - claim cost: `--workers` worker processes run 2,000 more tasks (filled
//!   on top, so the depth is the same before and after) and the Redis
//!   script time over them, from `INFO commandstats`, is divided by the
//!   tasks acknowledged (`XACK` calls, each commit's own): claim plus
//!   commit script microseconds per task, and script calls per task; and
//!   the same sample's Redis time by command (the commands the scripts
//!   call included, per task acknowledged), to see which one grows.
//!
//! Each depth starts clean: once a sample's workers have stopped (and
//! committed what they held), their consumers are removed from the
//! groups. Left there, they are dead consumers to the next depth's
//! workers, whose claims would take them over during that sample and
//! charge the cost to the deeper backlog.
//!
//! Flat figures down the table are what a deep backlog must show.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use tandem_producer::{Producer, Task};
use tandem_shared::keys::GROUP;
use tandem_shared::kind::builtin::Noop;
use tandem_shared::store::Store;
use tandem_shared::{Class, Config, Priority};

use super::bench::BenchArgs;
use super::bench_cost::Snapshot;
use super::local::LocalWorkers;
use super::table;

/// Tasks per submit round trip while filling.
const FILL_BATCH: usize = 1_000;
/// Tasks the workers run at each depth to measure the claim's cost.
const CLAIM_SAMPLE: usize = 2_000;
/// Runs of `tandem queues` at each depth.
const QUEUES_RUNS: usize = 5;
/// The longest the workers may take for their sample (a stuck run fails
/// rather than hangs; the figures do not depend on it).
const SAMPLE_TIMEOUT: Duration = Duration::from_secs(600);

/// The figures at one depth.
struct Depth {
    waiting: u64,
    fill_per_s: f64,
    bytes_per_task: Option<f64>,
    queues_ms_median: f64,
    queues_ms_max: f64,
    script_us_per_task: Option<f64>,
    script_calls_per_task: Option<f64>,
}

/// The depths measured: 10,000, 100,000, ... below `n`, then `n`.
fn depths(n: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut depth = 10_000;
    while depth < n {
        out.push(depth);
        depth *= 10;
    }
    out.push(n);
    out
}

pub(crate) async fn run(
    config: &Config,
    args: &BenchArgs,
    env: &[(&str, String)],
) -> anyhow::Result<()> {
    let store = Store::connect(config).await?;
    let memory_empty = store.used_memory().await;
    let mut producers = Vec::with_capacity(args.producers);
    for _ in 0..args.producers {
        producers.push(Producer::connect(config).await?);
    }
    let mut submitted = 0;
    let mut rows = Vec::new();
    for depth in depths(args.n) {
        // The workers of the last sample may have run a few more than it:
        // top up to the depth.
        let add = (depth as u64).saturating_sub(waiting(&store).await?) as usize;
        let started = Instant::now();
        fill(&producers, submitted, add).await?;
        let fill_per_s = add as f64 / started.elapsed().as_secs_f64();
        submitted += add;
        let waiting = waiting(&store).await?;
        let bytes_per_task = memory_empty
            .zip(store.used_memory().await)
            .map(|(empty, now)| now.saturating_sub(empty) as f64 / waiting.max(1) as f64);
        let mut queues_ms = Vec::with_capacity(QUEUES_RUNS);
        for _ in 0..QUEUES_RUNS {
            queues_ms.push(time_queues(config)?);
        }
        queues_ms.sort_by(f64::total_cmp);

        // The claim sample runs on top of the depth: fill it first.
        fill(&producers, submitted, CLAIM_SAMPLE).await?;
        submitted += CLAIM_SAMPLE;
        let mut workers = LocalWorkers::start_registered(&store, args.workers, env).await?;
        let before = Snapshot::take(&store).await;
        let sample_started = Instant::now();
        while self::waiting(&store).await? > waiting {
            workers.check_alive()?;
            anyhow::ensure!(
                sample_started.elapsed() < SAMPLE_TIMEOUT,
                "the workers did not run {CLAIM_SAMPLE} tasks within {SAMPLE_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        workers.stop(Duration::from_secs(10));
        let after = Snapshot::take(&store).await;
        remove_consumers(&store).await?;
        let acked = after.delta(&before, "xack").0;
        let (calls, usec) = after.delta(&before, "evalsha");
        let per_task = |x: u64| (acked > 0).then(|| x as f64 / acked as f64);
        let row = Depth {
            waiting,
            fill_per_s,
            bytes_per_task,
            queues_ms_median: queues_ms[queues_ms.len() / 2],
            queues_ms_max: queues_ms[queues_ms.len() - 1],
            script_us_per_task: per_task(usec),
            script_calls_per_task: per_task(calls),
        };
        println!(
            "  backlog {}: filled at {:.0}/s, {} bytes per waiting task, tandem queues {:.1} ms (max {:.1}), claim + commit {} us per task in {} script calls",
            table::thousands(row.waiting),
            row.fill_per_s,
            row.bytes_per_task.map_or("?".into(), |b| format!("{b:.0}")),
            row.queues_ms_median,
            row.queues_ms_max,
            row.script_us_per_task
                .map_or("?".into(), |u| format!("{u:.1}")),
            row.script_calls_per_task
                .map_or("?".into(), |c| format!("{c:.2}")),
        );
        println!(
            "    by command: {}",
            super::bench_cost::describe(&super::bench_cost::cost(
                &before,
                &after,
                usize::try_from(acked).unwrap_or(usize::MAX),
                None,
                None
            ))
        );
        rows.push(row);
    }
    println!();
    print!("{}", render(&rows));
    Ok(())
}

/// Submits `count` no-op tasks numbered from `first`, priorities in turn,
/// `FILL_BATCH` per round trip, the producers in parallel.
async fn fill(producers: &[Producer], first: usize, count: usize) -> anyhow::Result<()> {
    let shares = producers.len();
    let mut jobs = Vec::with_capacity(shares);
    for (p, producer) in producers.iter().enumerate() {
        let producer = producer.clone();
        let indices: Vec<usize> = (first + p..first + count).step_by(shares).collect();
        jobs.push(tokio::spawn(async move {
            for chunk in indices.chunks(FILL_BATCH) {
                let tasks = chunk
                    .iter()
                    .map(|&i| {
                        let priority = Priority::ALL[i % Priority::ALL.len()];
                        Ok(Task::of::<Noop>(&rmpv::Value::from(i as u64))?.priority(priority))
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                producer.submit_many(tasks).await?;
            }
            anyhow::Ok(())
        }));
    }
    for job in jobs {
        job.await??;
    }
    Ok(())
}

/// Removes every consumer from the task streams' groups once the sample's
/// workers stopped. A stopped worker hands back or commits what it held, so
/// none has pending entries; one that does (a worker killed past its grace)
/// is an error: removing it would strand its entries, and keeping it would
/// have the next sample take it over.
async fn remove_consumers(store: &Store) -> anyhow::Result<()> {
    let keys: Vec<String> = store
        .keys()
        .streams_in_claim_order(Class::ALL)
        .into_iter()
        .map(|(_, _, key)| key)
        .collect();
    let infos: Vec<redis::Cmd> = keys
        .iter()
        .map(|key| {
            let mut cmd = redis::cmd("XINFO");
            cmd.arg("CONSUMERS").arg(key).arg(GROUP);
            cmd
        })
        .collect();
    let mut removals = Vec::new();
    for (key, reply) in keys.iter().zip(store.pipeline(&infos).await?) {
        // A stream or group not created yet has no consumers.
        let redis::Value::Array(consumers) = reply else {
            continue;
        };
        for consumer in consumers {
            let fields = consumer_fields(consumer)
                .with_context(|| format!("reading the consumers of {key}"))?;
            anyhow::ensure!(
                fields.pending == 0,
                "consumer {} of {key} still holds {} entries after its worker stopped",
                fields.name,
                fields.pending
            );
            let mut cmd = redis::cmd("XGROUP");
            cmd.arg("DELCONSUMER").arg(key).arg(GROUP).arg(&fields.name);
            removals.push(cmd);
        }
    }
    if !removals.is_empty() {
        store.pipeline(&removals).await?;
    }
    Ok(())
}

/// A consumer's name and pending count, from `XINFO CONSUMERS`.
struct ConsumerFields {
    name: String,
    pending: u64,
}

fn consumer_fields(consumer: redis::Value) -> anyhow::Result<ConsumerFields> {
    use redis::Value;
    let text = |v: &Value| match v {
        Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    let pairs: Vec<(Value, Value)> = match consumer {
        Value::Map(pairs) => pairs,
        Value::Array(flat) => {
            anyhow::ensure!(flat.len() % 2 == 0, "an odd number of fields");
            let mut flat = flat.into_iter();
            let mut pairs = Vec::new();
            while let (Some(k), Some(v)) = (flat.next(), flat.next()) {
                pairs.push((k, v));
            }
            pairs
        }
        other => anyhow::bail!("a consumer is {other:?}, not fields"),
    };
    let field = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| text(k).as_deref() == Some(name))
            .map(|(_, v)| v)
            .with_context(|| format!("no `{name}` field"))
    };
    let name = text(field("name")?).context("field `name` is not text")?;
    let pending = match field("pending")? {
        Value::Int(n) => u64::try_from(*n).context("field `pending` is negative")?,
        other => anyhow::bail!("field `pending` is {other:?}, not a count"),
    };
    Ok(ConsumerFields { name, pending })
}

/// Tasks waiting (not yet claimed) in every task stream.
async fn waiting(store: &Store) -> anyhow::Result<u64> {
    Ok(store
        .queue_stats(Class::ALL)
        .await?
        .iter()
        .map(|s| s.waiting)
        .sum())
}

/// Runs `tandem queues` against the bench's server and prefix: ms from
/// spawn to exit.
fn time_queues(config: &Config) -> anyhow::Result<f64> {
    let exe = std::env::current_exe().context("finding the tandem binary")?;
    let started = Instant::now();
    let status = Command::new(exe)
        .arg("queues")
        .env("TANDEM_REDIS_URL", &config.redis_url)
        .env("TANDEM_PREFIX", &config.prefix)
        .stdout(Stdio::null())
        .status()
        .context("running tandem queues")?;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    anyhow::ensure!(status.success(), "tandem queues failed: {status}");
    Ok(ms)
}

fn render(rows: &[Depth]) -> String {
    let mut out = vec![
        [
            "waiting",
            "filled/s",
            "bytes per waiting task",
            "tandem queues ms (median / max)",
            "claim + commit script us per task",
            "script calls per task",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for r in rows {
        out.push(vec![
            table::thousands(r.waiting),
            format!("{:.0}", r.fill_per_s),
            r.bytes_per_task.map_or("-".into(), |b| format!("{b:.0}")),
            format!("{:.1} / {:.1}", r.queues_ms_median, r.queues_ms_max),
            r.script_us_per_task
                .map_or("-".into(), |u| format!("{u:.1}")),
            r.script_calls_per_task
                .map_or("-".into(), |c| format!("{c:.2}")),
        ]);
    }
    table::render(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depths_go_up_in_tens_to_n() {
        assert_eq!(depths(10_000), [10_000]);
        assert_eq!(depths(1_000_000), [10_000, 100_000, 1_000_000]);
        assert_eq!(depths(250_000), [10_000, 100_000, 250_000]);
        assert_eq!(depths(5_000), [5_000]);
    }
}
