//! `tandem soak`: pushes a million no-op tasks through a small fleet and
//! samples Redis memory as it goes. Entries are deleted when committed and
//! records expire after `--result-ttl-s`, so once that window has passed,
//! memory must stay flat however many tasks went through.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tandem_shared::Config;
use tandem_shared::kind::builtin::Noop;
use tandem_shared::store::Store;
use tokio::sync::Semaphore;

use super::local::{LocalRedis, LocalWorkers};
use super::table;
use tandem_producer::{Producer, Task};

#[derive(Debug, Clone, clap::Args)]
pub struct SoakArgs {
    /// Tasks to push through.
    #[arg(long, default_value_t = 1_000_000)]
    pub n: u64,
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Tasks per submit call.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Most tasks submitted and not yet finished.
    #[arg(long, default_value_t = 20_000)]
    pub in_flight: usize,
    /// How long finished records stay in Redis (s).
    #[arg(long, default_value_t = 20)]
    pub result_ttl_s: u64,
    /// How often Redis memory is sampled (ms).
    #[arg(long, default_value_t = 2_000)]
    pub sample_ms: u64,
}

pub(crate) async fn run(
    mut config: Config,
    redis_url_given: bool,
    args: SoakArgs,
) -> anyhow::Result<ExitCode> {
    let _redis = LocalRedis::unless_given(&mut config, redis_url_given)?;
    config.prefix = format!("{}-soak-{}", config.prefix, std::process::id());
    config.result_ttl_s = args.result_ttl_s;
    config.reply_ttl_s = args.result_ttl_s.max(1);
    let store = Store::connect(&config).await?;
    let env = vec![
        ("TANDEM_REDIS_URL", config.redis_url.clone()),
        ("TANDEM_PREFIX", config.prefix.clone()),
        ("TANDEM_CONCURRENCY", args.concurrency.to_string()),
        ("TANDEM_RESULT_TTL_S", args.result_ttl_s.to_string()),
        ("TANDEM_REPLY_TTL_S", args.result_ttl_s.max(1).to_string()),
        ("TANDEM_LOG_LEVEL", "warn".to_owned()),
    ];
    let mut workers = LocalWorkers::start_registered(&store, args.workers, &env).await?;
    let started = Instant::now();
    println!(
        "soak: {} no-op tasks, {} workers x {}, records kept {} s, Redis {}",
        table::thousands(args.n),
        args.workers,
        args.concurrency,
        args.result_ttl_s,
        config.redis_url_redacted()
    );

    let producer = Producer::connect(&config).await?;
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let slots = Arc::new(Semaphore::new(args.in_flight));
    let submitter = {
        let producer = producer.clone();
        let done = Arc::clone(&done);
        let failed = Arc::clone(&failed);
        let slots = Arc::clone(&slots);
        let (n, batch) = (args.n, args.batch as u64);
        tokio::spawn(async move {
            let mut sent = 0;
            while sent < n {
                let size = batch.min(n - sent);
                // Each finished task gives its slot back.
                slots.acquire_many(size as u32).await?.forget();
                let tasks = (0..size)
                    .map(|_| Task::of::<Noop>(&rmpv::Value::Nil))
                    .collect::<Result<Vec<_>, _>>()?;
                let handles = producer.submit_handles(tasks).await?;
                sent += size;
                for handle in handles {
                    let (done, failed, slots) =
                        (Arc::clone(&done), Arc::clone(&failed), Arc::clone(&slots));
                    tokio::spawn(async move {
                        let ok = handle
                            .wait(Duration::from_secs(600))
                            .await
                            .is_ok_and(|o| o.succeeded());
                        if !ok {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                        done.fetch_add(1, Ordering::Relaxed);
                        slots.add_permits(1);
                    });
                }
            }
            anyhow::Ok(())
        })
    };

    let mut samples: Vec<(f64, u64, u64)> = Vec::new();
    let mut rows = vec![
        ["elapsed s", "completed", "tasks/s", "Redis used_memory MB"]
            .map(String::from)
            .to_vec(),
    ];
    let mut last = (Instant::now(), 0u64);
    loop {
        tokio::time::sleep(Duration::from_millis(args.sample_ms)).await;
        let completed = done.load(Ordering::Relaxed);
        let memory = store.used_memory().await.unwrap_or(0);
        let elapsed = started.elapsed().as_secs_f64();
        let rate = (completed - last.1) as f64 / last.0.elapsed().as_secs_f64();
        last = (Instant::now(), completed);
        samples.push((elapsed, completed, memory));
        println!(
            "  {elapsed:7.1} s  {:>9} completed  {:>7}/s  {:7.1} MB",
            table::thousands(completed),
            table::thousands(rate as u64),
            memory as f64 / 1e6
        );
        rows.push(vec![
            format!("{elapsed:.0}"),
            table::thousands(completed),
            table::thousands(rate as u64),
            format!("{:.1}", memory as f64 / 1e6),
        ]);
        if completed >= args.n {
            break;
        }
        workers.check_alive()?;
    }
    submitter.await??;
    workers.stop(Duration::from_secs(10));

    // After the first TTL window, records expire as fast as new ones come.
    let warm = samples
        .iter()
        .filter(|(t, _, _)| *t > args.result_ttl_s as f64 * 1.5);
    let (low, high) = warm.fold((u64::MAX, 0), |(lo, hi), s| (lo.min(s.2), hi.max(s.2)));
    println!();
    print!("{}", table::render(&rows));
    if high > 0 {
        println!(
            "\nafter the first {} s: used_memory between {:.1} and {:.1} MB; {} failed",
            (args.result_ttl_s as f64 * 1.5) as u64,
            low as f64 / 1e6,
            high as f64 / 1e6,
            failed.load(Ordering::Relaxed)
        );
    }
    if let Err(err) = store.purge_prefix().await {
        tracing::warn!("cannot delete the soak's keys: {err}");
    }
    Ok(ExitCode::SUCCESS)
}
