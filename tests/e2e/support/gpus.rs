//! Simulated GPU hosts, for every test that runs workers on simulated
//! GPUs: the seed's pair of cards, starting a worker on one and waiting
//! for its device to be healthy, and waiting until every live worker
//! routes from the whole fleet. The routing, fault, split, view, metrics
//! and model tests all start their hosts this way.

use std::time::Duration;

use tandem_shared::device::Health;
use tandem_shared::store::Store;
use tandem_shared::wire::WorkerInfo;

use super::{RedisServer, WorkerProcess, wait_until};

/// The seed's pair: the 4070 Ti is the primary (heavy), the 3060 Ti the
/// secondary (light). Budgets (90 %): 10.8 GiB and 7.2 GiB.
pub const PAIR: &str = "RTX 4070 Ti, 12 GiB, 40.09 TFLOPS; RTX 3060 Ti, 8 GiB, 16.2 TFLOPS";
pub const PRIMARY: &str = "SIM-0-rtx-4070-ti";
pub const SECONDARY: &str = "SIM-1-rtx-3060-ti";
pub const WAIT: Duration = Duration::from_secs(30);

/// Routing bounds long enough that only the rule under test moves tasks.
const STILL: &[(&str, &str)] = &[
    ("TANDEM_HEAVY_SPILL_MS", "600000"),
    ("TANDEM_LIGHT_HELP_MS", "600000"),
    ("TANDEM_CPU_FALLBACK_MS", "0"),
    ("TANDEM_CONCURRENCY", "1"),
];

fn env<'a>(
    device: &'a str,
    spec: &'a str,
    extra: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    let mut env = vec![("TANDEM_SIMULATE_GPUS", spec), ("TANDEM_DEVICE", device)];
    env.extend_from_slice(STILL);
    env.extend_from_slice(extra);
    env
}

pub async fn store(redis: &RedisServer) -> Store {
    Store::connect(&redis.config()).await.expect("store")
}

pub async fn registry(redis: &RedisServer) -> Vec<WorkerInfo> {
    store(redis).await.workers().await.expect("registry")
}

/// Starts a worker on `device` and waits until its device is healthy.
pub async fn start(
    redis: &RedisServer,
    device: &str,
    spec: &str,
    extra: &[(&str, &str)],
) -> WorkerProcess {
    let worker = WorkerProcess::spawn(redis, &env(device, spec, extra));
    wait_healthy(redis, &worker.id).await;
    worker
}

pub async fn wait_healthy(redis: &RedisServer, id: &str) {
    wait_until(WAIT, &format!("{id} healthy"), || async {
        registry(redis)
            .await
            .iter()
            .any(|w| w.id == id && w.health == Health::Healthy)
    })
    .await;
}

/// Waits until every live worker routes from the whole live fleet: each
/// one's registry record says its last registry read (the one its routing
/// took in) saw as many live workers as there are.
pub async fn settle(store: &Store) {
    wait_until(WAIT, "every worker has seen the whole fleet", || async {
        let workers = store.workers().await.expect("registry");
        let live: Vec<&WorkerInfo> = workers
            .iter()
            .filter(|w| w.state == "running" && w.health == Health::Healthy)
            .collect();
        !live.is_empty() && live.iter().all(|w| w.live_seen == live.len())
    })
    .await;
}
