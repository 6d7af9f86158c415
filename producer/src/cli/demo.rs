//! `tandem demo`: the README's main job. A local Redis (unless `REDIS_URL`
//! is set), worker processes, a mixed workload over every priority with a
//! progress bar, a summary, and a clean exit, also on Ctrl-C.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use tandem_shared::kind::builtin::{Echo, Fail, FailParams, Noop, Sleep, SleepParams};
use tandem_shared::store::Store;
use tandem_shared::{Config, Priority, Status};
use tokio::signal::unix::{SignalKind, signal};

use super::local::{LocalRedis, LocalWorkers};
use super::table;
use crate::{Producer, Task};

#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Tasks to submit.
    #[arg(long, default_value_t = 2_000)]
    pub tasks: usize,
    /// Worker processes to start.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Tasks each worker runs at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
}

/// One finished task, as the summary needs it.
struct Done {
    kind: &'static str,
    priority: Priority,
    status: Status,
    latency_ms: f64,
    worker: String,
}

pub(crate) async fn run(
    mut config: Config,
    redis_url_given: bool,
    args: DemoArgs,
) -> anyhow::Result<ExitCode> {
    let _redis = LocalRedis::unless_given(&mut config, redis_url_given)?;
    match &_redis {
        Some(redis) => println!(
            "started a local redis-server at {} (set REDIS_URL to use your own)",
            redis.url
        ),
        None => println!("using Redis at {}", config.redis_url_redacted()),
    }
    // A prefix of its own, so the demo never touches real queues.
    config.prefix = format!("{}-demo-{}", config.prefix, std::process::id());
    let store = Store::connect(&config).await?;

    let env = vec![
        ("TANDEM_REDIS_URL", config.redis_url.clone()),
        ("TANDEM_PREFIX", config.prefix.clone()),
        ("TANDEM_CONCURRENCY", args.concurrency.to_string()),
        ("TANDEM_LOG_LEVEL", "warn".to_owned()),
    ];
    let mut workers = LocalWorkers::start_registered(&store, args.workers, &env).await?;
    println!(
        "started {} workers x concurrency {} (prefix {})",
        args.workers, args.concurrency, config.prefix
    );

    let producer = Producer::connect(&config).await?;
    let bar = ProgressBar::new(args.tasks as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {elapsed_precise} [{bar:40}] {pos}/{len} tasks  {per_sec}  {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );

    let run_started = Instant::now();
    // Each wait runs as a task of its own and reports here: a wait must be
    // polled to release what it holds on the shared connection, so none may
    // sit idle in a local collection while this loop awaits a submit.
    let (finished_tx, mut finished) = tokio::sync::mpsc::unbounded_channel();
    let mut done: Vec<Done> = Vec::with_capacity(args.tasks);
    let mut in_flight = 0usize;
    let mut interrupted = false;
    let mut next = 0usize;
    // Installed now, so a Ctrl-C (or a SIGTERM) from here on is ours to handle.
    let mut ctrl_c = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    while next < args.tasks || in_flight > 0 {
        // Keep up to 500 tasks in flight, submitted in batches of 100.
        if next < args.tasks && in_flight < 500 {
            let batch: Vec<(Task, &'static str, Priority)> =
                (next..(next + 100).min(args.tasks)).map(workload).collect();
            next += batch.len();
            let submitted_at = Instant::now();
            let tasks = batch.iter().map(|(t, _, _)| t.clone()).collect();
            let handles = producer.submit_handles(tasks).await?;
            for (handle, (_, kind, priority)) in handles.into_iter().zip(batch) {
                in_flight += 1;
                let finished = finished_tx.clone();
                tokio::spawn(async move {
                    let outcome = handle.wait(Duration::from_secs(120)).await;
                    let _ = finished.send((kind, priority, submitted_at.elapsed(), outcome));
                });
            }
            continue;
        }
        tokio::select! {
            Some((kind, priority, latency, outcome)) = finished.recv() => {
                in_flight -= 1;
                let outcome = outcome?;
                if outcome.status == Status::Failed {
                    bar.set_message(format!("last failure: {}", outcome.failure().map(|f| f.code.to_string()).unwrap_or_default()));
                }
                done.push(Done {
                    kind,
                    priority,
                    status: outcome.status,
                    latency_ms: latency.as_secs_f64() * 1000.0,
                    worker: outcome.record.worker.clone().unwrap_or_default(),
                });
                bar.inc(1);
            }
            _ = ctrl_c.recv() => {
                interrupted = true;
                break;
            }
            _ = term.recv() => {
                interrupted = true;
                break;
            }
        }
    }
    let elapsed = run_started.elapsed();
    bar.finish_and_clear();

    if interrupted {
        println!("interrupted: stopping workers and cleaning up");
    } else {
        summary(&done, elapsed);
    }
    workers.stop(Duration::from_secs(10));
    if redis_url_given && let Err(err) = store.purge_prefix().await {
        tracing::warn!("cannot delete the run's keys: {err}");
    }
    Ok(if interrupted {
        ExitCode::from(130)
    } else {
        ExitCode::SUCCESS
    })
}

/// The i-th task of the mixed workload: mostly cheap tasks at normal and
/// low priority, some sleeps at high, echoes at critical, a few failures.
fn workload(i: usize) -> (Task, &'static str, Priority) {
    let (task, kind, priority) = match i % 20 {
        0 => (
            Task::of::<Fail>(&FailParams {
                code: "E_DEMO".into(),
                message: "a deliberate failure".into(),
                retry: false,
            }),
            "fail",
            Priority::Normal,
        ),
        1 | 2 | 11 | 12 => (
            Task::of::<Sleep>(&SleepParams {
                ms: 5 + (i as u64 * 7) % 36,
            }),
            "sleep",
            Priority::High,
        ),
        3 | 13 => (
            Task::of::<Echo>(&rmpv::Value::Map(vec![
                ("symbol".into(), "ES".into()),
                ("bid".into(), (4_000.25 + i as f64).into()),
            ])),
            "echo",
            Priority::Critical,
        ),
        4 | 5 | 14 | 15 => (
            Task::of::<Echo>(&format!("order {i}").into()),
            "echo",
            Priority::Normal,
        ),
        n if n % 2 == 0 => (
            Task::of::<Noop>(&rmpv::Value::Nil),
            "noop",
            Priority::Normal,
        ),
        _ => (Task::of::<Noop>(&rmpv::Value::Nil), "noop", Priority::Low),
    };
    // Every spec above is within bounds, so building cannot fail.
    let task = task.unwrap_or_else(|_| Task::raw("noop", vec![0xc0]));
    (task.priority(priority), kind, priority)
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn summary(done: &[Done], elapsed: Duration) {
    let rate = done.len() as f64 / elapsed.as_secs_f64().max(1e-9);
    println!(
        "\n{} tasks in {:.2} s: {} tasks/s, submit to result seen by the producer\n",
        table::thousands(done.len() as u64),
        elapsed.as_secs_f64(),
        table::thousands(rate as u64)
    );

    let mut rows = vec![
        ["kind", "tasks", "succeeded", "failed", "p50 ms", "p99 ms"]
            .map(String::from)
            .to_vec(),
    ];
    let mut by_kind: BTreeMap<&str, Vec<&Done>> = BTreeMap::new();
    for d in done {
        by_kind.entry(d.kind).or_default().push(d);
    }
    for (kind, list) in &by_kind {
        let mut latencies: Vec<f64> = list.iter().map(|d| d.latency_ms).collect();
        latencies.sort_by(f64::total_cmp);
        rows.push(vec![
            (*kind).to_owned(),
            list.len().to_string(),
            list.iter()
                .filter(|d| d.status == Status::Succeeded)
                .count()
                .to_string(),
            list.iter()
                .filter(|d| d.status != Status::Succeeded)
                .count()
                .to_string(),
            table::ms(percentile(&latencies, 50.0)),
            table::ms(percentile(&latencies, 99.0)),
        ]);
    }
    print!("{}", table::render(&rows));

    println!("\nby priority (higher priorities overtake lower ones waiting in the queue)\n");
    let mut rows = vec![
        ["priority", "tasks", "p50 ms", "p99 ms"]
            .map(String::from)
            .to_vec(),
    ];
    for priority in Priority::ALL {
        let mut latencies: Vec<f64> = done
            .iter()
            .filter(|d| d.priority == *priority)
            .map(|d| d.latency_ms)
            .collect();
        if latencies.is_empty() {
            continue;
        }
        latencies.sort_by(f64::total_cmp);
        rows.push(vec![
            priority.to_string(),
            latencies.len().to_string(),
            table::ms(percentile(&latencies, 50.0)),
            table::ms(percentile(&latencies, 99.0)),
        ]);
    }
    print!("{}", table::render(&rows));

    println!("\nby worker\n");
    let mut rows = vec![["worker", "tasks"].map(String::from).to_vec()];
    let mut by_worker: BTreeMap<&str, usize> = BTreeMap::new();
    for d in done {
        *by_worker.entry(d.worker.as_str()).or_default() += 1;
    }
    for (worker, count) in by_worker {
        rows.push(vec![worker.to_owned(), count.to_string()]);
    }
    print!("{}", table::render(&rows));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workload_mixes_every_priority() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..40 {
            seen.insert(workload(i).2);
        }
        assert_eq!(seen.len(), 4);
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 50.0), 2.0);
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 99.0), 4.0);
    }
}
