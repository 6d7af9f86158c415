//! `tandem bench --phases delayed | rate-limit`: flow control measured.
//!
//! - delayed: tasks submitted to run at times spread over a window; per
//!   task, how late it entered its stream (the promoted entry's id is the
//!   Redis clock at its `XADD`) and how late it started (`started_at_ms`),
//!   both against its `run_at_ms`, all on the Redis clock. With
//!   `--backlog N`, N more delayed tasks wait a day ahead in the same set,
//!   to show that a promotion costs the same beside a million.
//! - rate-limit: `--workers` workers compete for no-op tasks of a kind
//!   limited to `--rate` starts a second; the start rate over
//!   `--duration` seconds (after a settling second), and the busiest and
//!   idlest one-second windows.

use std::time::{Duration, SystemTime};

use anyhow::Context;
use tandem_producer::{Producer, Task};
use tandem_shared::Config;
use tandem_shared::flow::{LimitTarget, Rate};
use tandem_shared::kind::KindSpec;
use tandem_shared::kind::builtin::Noop;
use tandem_shared::store::Store;
use tandem_shared::wire::TaskRecord;

use super::bench::BenchArgs;
use super::local::LocalWorkers;

fn noop() -> anyhow::Result<Task> {
    Ok(Task::of::<Noop>(&rmpv::Value::Nil)?)
}

/// The value at quantile `q` of sorted `values`.
fn quantile(values: &[i64], q: f64) -> i64 {
    let at = ((values.len() - 1) as f64 * q).round() as usize;
    values[at]
}

fn distribution(what: &str, mut values: Vec<i64>) {
    values.sort_unstable();
    println!(
        "  {what}: p50 {} ms, p99 {} ms, max {} ms, min {} ms ({} tasks)",
        quantile(&values, 0.5),
        quantile(&values, 0.99),
        values[values.len() - 1],
        values[0],
        values.len()
    );
}

async fn workers(store: &Store, config: &Config, args: &BenchArgs) -> anyhow::Result<LocalWorkers> {
    let env = vec![
        ("TANDEM_REDIS_URL", config.redis_url.clone()),
        ("TANDEM_PREFIX", config.prefix.clone()),
        ("TANDEM_CONCURRENCY", args.concurrency.to_string()),
        ("TANDEM_CLASSES", "cpu".to_owned()),
        ("TANDEM_LOG_LEVEL", "warn".to_owned()),
    ];
    let workers = LocalWorkers::start_registered(store, args.workers, &env).await?;
    // Settle into the blocking wait, as the other phases do.
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(workers)
}

/// Waits for every task and returns its record once final.
async fn finished_records(
    producer: &Producer,
    ids: &[tandem_shared::TaskId],
) -> anyhow::Result<Vec<TaskRecord>> {
    let mut out = Vec::with_capacity(ids.len());
    for &id in ids {
        let outcome = producer.wait(id, Duration::from_secs(600)).await?;
        anyhow::ensure!(
            outcome.status == tandem_shared::Status::Succeeded,
            "task {id} ended {}",
            outcome.status
        );
        out.push(producer.record(id).await?.context("record gone")?);
    }
    Ok(out)
}

pub(crate) async fn delayed(config: &Config, args: &BenchArgs) -> anyhow::Result<()> {
    let store = Store::connect(config).await?;
    let producer = Producer::connect(config).await?;
    if args.backlog > 0 {
        let far = SystemTime::now() + Duration::from_secs(86_400);
        let started = std::time::Instant::now();
        let mut left = args.backlog;
        while left > 0 {
            let batch = left.min(1_000);
            let tasks = (0..batch)
                .map(|_| noop().map(|t| t.run_at(far)))
                .collect::<anyhow::Result<Vec<_>>>()?;
            producer.submit_many(tasks).await?;
            left -= batch;
        }
        println!(
            "  backlog: {} delayed tasks a day ahead, submitted in {:.1} s",
            args.backlog,
            started.elapsed().as_secs_f64()
        );
    }
    let _workers = workers(&store, config, args).await?;
    // Spread over the window, starting two seconds ahead so that every
    // submit returns before the first is due.
    let window = Duration::from_secs_f64(args.duration);
    let first = SystemTime::now() + Duration::from_secs(2);
    let mut ids = Vec::with_capacity(args.n);
    for chunk in (0..args.n).collect::<Vec<_>>().chunks(500) {
        let tasks = chunk
            .iter()
            .map(|&i| {
                let at = first + window.mul_f64(i as f64 / args.n as f64);
                noop().map(|t| t.run_at(at))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        ids.extend(producer.submit_many(tasks).await?);
    }
    let records = finished_records(&producer, &ids).await?;
    let mut promoted = Vec::new();
    let mut started = Vec::new();
    for record in &records {
        let run_at = record.run_at_ms.context("run_at_ms")? as i64;
        let entry_ms: i64 = record
            .entry
            .as_deref()
            .and_then(|e| e.split('-').next()?.parse().ok())
            .context("entry id")?;
        promoted.push(entry_ms - run_at);
        started.push(record.started_at_ms.context("started_at_ms")? as i64 - run_at);
    }
    println!(
        "delayed: {} tasks due over {:.0} s, {} workers x {}, backlog {}",
        args.n, args.duration, args.workers, args.concurrency, args.backlog
    );
    distribution("due -> in its stream", promoted);
    distribution("due -> started", started);
    Ok(())
}

pub(crate) async fn rate_limit(config: &Config, args: &BenchArgs) -> anyhow::Result<()> {
    let store = Store::connect(config).await?;
    let producer = Producer::connect(config).await?;
    let rate = Rate {
        count: args.rate.round() as u32,
        period_ms: 1_000,
    };
    store
        .set_limit(
            &LimitTarget::Kind(<Noop as KindSpec>::KIND.to_owned()),
            rate,
            &[tandem_shared::Class::Cpu],
        )
        .await?;
    let _workers = workers(&store, config, args).await?;
    // Enough to keep the limit busy past the measured window.
    let total = (args.rate * (args.duration + 3.0)).ceil() as usize;
    let mut ids = Vec::with_capacity(total);
    for chunk in (0..total).collect::<Vec<_>>().chunks(500) {
        let tasks = chunk
            .iter()
            .map(|_| noop())
            .collect::<anyhow::Result<Vec<_>>>()?;
        ids.extend(producer.submit_many(tasks).await?);
    }
    let records = finished_records(&producer, &ids).await?;
    let mut starts: Vec<u64> = records.iter().filter_map(|r| r.started_at_ms).collect();
    starts.sort_unstable();
    let from = starts[0] + 1_000;
    let to = from + (args.duration * 1000.0) as u64;
    let in_window = starts.iter().filter(|&&s| s >= from && s < to).count();
    let measured = in_window as f64 / args.duration;
    let mut busiest = 0;
    let mut idlest = usize::MAX;
    let mut second = from;
    while second + 1_000 <= to {
        let n = starts
            .iter()
            .filter(|&&s| s >= second && s < second + 1_000)
            .count();
        busiest = busiest.max(n);
        idlest = idlest.min(n);
        second += 1_000;
    }
    println!(
        "rate-limit: kind noop limited to {rate}, {} workers x {} competing, {} tasks",
        args.workers, args.concurrency, total
    );
    println!(
        "  start rate over {:.0} s: {measured:.2}/s ({:+.2} % of the limit); one-second windows: busiest {busiest}, idlest {idlest}",
        args.duration,
        (measured / args.rate - 1.0) * 100.0
    );
    Ok(())
}
