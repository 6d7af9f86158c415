//! The compute kinds through real workers: each kind's task round-trips a
//! worker and its result means what the kind says; a splittable kind split
//! across two (simulated) GPUs gives the bits of the whole run on a CPU
//! worker.

use tandem_producer::{Producer, Task};
use tandem_shared::Status;
use tandem_shared::kind::KindSpec;
use tandem_shared::kind::risk::{MonteCarloRisk, Risk, RiskOutput, RiskParams};

use crate::gpus::{PAIR, PRIMARY, SECONDARY, WAIT, settle, start};
use crate::support::{RedisServer, WorkerProcess};

/// Runs one task of kind `K` and returns its result, and how many shards
/// it was split into.
async fn run<K: KindSpec>(
    redis: &RedisServer,
    producer: &Producer,
    params: &K::Params,
) -> (K::Output, Option<u32>) {
    let id = producer
        .submit(Task::of::<K>(params).unwrap())
        .await
        .unwrap();
    let outcome = producer.wait(id, WAIT).await.unwrap();
    assert_eq!(outcome.status, Status::Succeeded, "{:?}", outcome.record);
    let shards = crate::split::record(redis, &id).await.shards;
    (outcome.result::<K::Output>().unwrap(), shards)
}

fn risk_params() -> RiskParams {
    let n = 4;
    let vol = [0.02, 0.015, 0.03, 0.01];
    let mut covariance = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            let rho = if i == j { 1.0 } else { 0.3 };
            covariance[i * n + j] = rho * vol[i] * vol[j];
        }
    }
    RiskParams::MonteCarlo(MonteCarloRisk {
        weights: vec![1e6, 2e6, 5e5, 1.5e6],
        mu: vec![0.0005, 0.0003, 0.0008, 0.0001],
        covariance,
        scenarios: 100_000,
        seed: 42,
        confidence: vec![0.95, 0.99],
    })
}

#[tokio::test]
async fn risk_split_across_two_gpus_equals_the_whole_run_on_a_cpu_worker() {
    let split_env = [("TANDEM_SHARDS_PER_GPU", "4")];
    let gpus = RedisServer::start();
    let _primary = start(&gpus, PRIMARY, PAIR, &split_env).await;
    let _secondary = start(&gpus, SECONDARY, PAIR, &split_env).await;
    settle().await;
    let (split, shards) = run::<Risk>(&gpus, &gpus.producer().await, &risk_params()).await;
    // 2 GPUs x 4 asked; 25 blocks of 4096 scenarios cut 4 blocks a shard.
    assert_eq!(shards, Some(7));

    let cpu = RedisServer::start();
    let _worker = WorkerProcess::start(&cpu, &[]).await;
    let (whole, shards): (RiskOutput, _) =
        run::<Risk>(&cpu, &cpu.producer().await, &risk_params()).await;
    assert_eq!(shards, None, "a CPU-only host runs it whole");

    assert_eq!(split, whole, "split and whole differ");
    let [p95, p99] = &whole.levels[..] else {
        panic!("two levels: {whole:?}")
    };
    assert!(
        0.0 < p95.var && p95.var < p99.var && p99.var < p99.cvar,
        "{whole:?}"
    );
    assert_eq!((p95.tail_count, p99.tail_count), (5_000, 1_000));
}
