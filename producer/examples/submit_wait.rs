//! The Rust side of the Python client's benchmark
//! (`clients/python/bench/bench.py`): submits N no-op tasks, one awaited
//! submit per task (or `--batch B` per `submit_many`), then waits for every
//! result, and prints one JSON line: seconds spent submitting and in all.
//!
//! Run with `cargo run --release -p tandem-producer --example submit_wait --
//! N [B]` against a fleet (`REDIS_URL`).

use std::time::{Duration, Instant};

use tandem_producer::{Producer, Task};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().ok_or("usage: submit_wait N [BATCH]")?.parse()?;
    let batch: usize = args.next().map_or(Ok(1), |b| b.parse())?.max(1);
    let producer = Producer::from_env().await?;
    // Connected, scripts loaded and the reply listener started before the
    // clock starts, as the Python client's warm-up does.
    producer
        .submit_handle(Task::new("noop", &())?)
        .await?
        .wait(Duration::from_secs(60))
        .await?;
    let start = Instant::now();
    let mut handles = Vec::with_capacity(n);
    let mut i = 0;
    while i < n {
        let tasks = (i..(i + batch).min(n))
            .map(|i| Task::new("noop", &i))
            .collect::<Result<Vec<_>, _>>()?;
        i += tasks.len();
        handles.extend(producer.submit_handles(tasks).await?);
    }
    let submitted = start.elapsed();
    for handle in handles {
        let outcome = handle.wait(Duration::from_secs(600)).await?;
        if outcome.status != tandem_shared::Status::Succeeded {
            return Err(format!("task {} ended {:?}", outcome.id, outcome.status).into());
        }
    }
    let total = start.elapsed();
    println!(
        "{{\"n\": {n}, \"submit_s\": {}, \"total_s\": {}}}",
        submitted.as_secs_f64(),
        total.as_secs_f64()
    );
    Ok(())
}
