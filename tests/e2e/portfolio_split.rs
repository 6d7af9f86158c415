//! `portfolio_opt` split across two (simulated) GPUs: the random search is
//! cut into shards of whole candidate blocks, the shards' best candidates
//! merged and refined once, and the result is the bits of the unsplit run
//! on a single CPU worker. An indefinite covariance is refused by a worker,
//! split or whole.

use tandem_producer::{Producer, Task};
use tandem_shared::kind::portfolio_opt::{
    Objective, PortfolioOpt, PortfolioOptOutput, PortfolioOptParams,
};
use tandem_shared::wire::TaskRecord;
use tandem_shared::{ErrorCode, Status, TaskId};

use crate::support::gpus::{PAIR, PRIMARY, SECONDARY, WAIT, settle, start, store};
use crate::support::split::record;
use crate::support::{RedisServer, WorkerProcess};

/// Twenty assets on one factor, at most 12 % in each, 4,096 candidates
/// (16 search blocks).
pub(crate) fn params(objective: Objective) -> PortfolioOptParams {
    let n = 20;
    let beta: Vec<f64> = (0..n).map(|i| 0.6 + 0.04 * i as f64).collect();
    let mut covariance = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            let idio = if i == j { 0.01 + 0.002 * i as f64 } else { 0.0 };
            covariance[i * n + j] = 0.02 * beta[i] * beta[j] + idio;
        }
    }
    PortfolioOptParams {
        mu: (0..n).map(|i| 0.03 + 0.004 * (i % 7) as f64).collect(),
        covariance,
        returns: None,
        assets: None,
        risk_free: 0.01,
        objective,
        max_weight: 0.12,
        tolerance: 1e-11,
        max_iterations: 50_000,
        seed: 2026,
        samples: 4_096,
    }
}

/// The example: eigenvalues 3 and -1.
fn indefinite(objective: Objective) -> PortfolioOptParams {
    PortfolioOptParams {
        mu: vec![0.1, 0.2],
        covariance: vec![1.0, -2.0, -2.0, 1.0],
        returns: None,
        assets: None,
        risk_free: 0.0,
        objective,
        max_weight: 1.0,
        tolerance: 1e-10,
        max_iterations: 1_000,
        seed: 0,
        samples: 4_096,
    }
}

async fn submit(producer: &Producer, params: &PortfolioOptParams) -> TaskId {
    producer
        .submit(Task::of::<PortfolioOpt>(params).unwrap())
        .await
        .unwrap()
}

/// Runs `params` to success; returns the result and the parent's record.
async fn solve(
    redis: &RedisServer,
    producer: &Producer,
    params: &PortfolioOptParams,
) -> (PortfolioOptOutput, TaskRecord) {
    let id = submit(producer, params).await;
    let outcome = producer.wait(id, WAIT).await.unwrap();
    assert_eq!(outcome.status, Status::Succeeded, "{:?}", outcome.record);
    (outcome.result().unwrap(), record(redis, &id).await)
}

/// Submits the indefinite covariance under both objectives; each task
/// fails with `BAD_PARAMS` naming the failed Cholesky pivot. Returns the
/// error messages.
async fn refused(producer: &Producer) -> Vec<String> {
    let mut messages = Vec::new();
    for objective in [Objective::MinVariance, Objective::MaxSharpe] {
        let id = submit(producer, &indefinite(objective)).await;
        let outcome = producer.wait(id, WAIT).await.unwrap();
        assert_eq!(outcome.status, Status::Failed, "{objective:?}: {outcome:?}");
        let error = outcome.record.error.clone().expect("an error");
        assert_eq!(error.code, ErrorCode::BAD_PARAMS, "{error:?}");
        assert!(
            error.message.contains(
                "the covariance is not positive semidefinite: the Cholesky pivot of row 1 is -2.99"
            ),
            "{error:?}"
        );
        assert_eq!(outcome.record.attempt, Some(1), "not retried");
        messages.push(error.message);
    }
    messages
}

#[tokio::test]
async fn portfolio_opt_split_across_two_gpus_equals_the_whole_run_on_a_cpu_worker() {
    let split_env = [("TANDEM_SHARDS_PER_GPU", "4")];
    let gpus = RedisServer::start();
    let _primary = start(&gpus, PRIMARY, PAIR, &split_env).await;
    let _secondary = start(&gpus, SECONDARY, PAIR, &split_env).await;
    settle(&store(&gpus).await).await;
    let gpu_producer = gpus.producer().await;

    let cpu = RedisServer::start();
    let _worker = WorkerProcess::start(&cpu, &[]).await;
    let cpu_producer = cpu.producer().await;

    for objective in [Objective::MinVariance, Objective::MaxSharpe] {
        let p = params(objective);
        let (split, parent) = solve(&gpus, &gpu_producer, &p).await;
        // 2 GPUs x 4 shards of 2 search blocks each.
        assert_eq!(parent.shards, Some(8), "{objective:?}: {parent:?}");
        assert_eq!(parent.shards_done, Some(8));
        let (whole, unsplit) = solve(&cpu, &cpu_producer, &p).await;
        assert_eq!(unsplit.shards, None, "a CPU-only host runs it whole");
        assert_eq!(
            tandem_shared::msgpack::encode(&split).unwrap(),
            tandem_shared::msgpack::encode(&whole).unwrap(),
            "{objective:?}: split and whole differ: {split:?} {whole:?}"
        );
        assert!(whole.converged, "{whole:?}");
        assert!(
            whole.weights.iter().all(|&w| (0.0..=0.12).contains(&w)),
            "{whole:?}"
        );
        assert!(whole.random_best_index < 4_096);
    }

    // Split, the shard at block 0 refuses the covariance and fails the
    // task.
    for message in refused(&gpu_producer).await {
        assert!(message.starts_with("shard 0 of 8 failed: "), "{message}");
    }
}

/// Whole, the worker refuses the covariance before the search.
#[tokio::test]
async fn an_indefinite_covariance_is_refused_by_a_worker() {
    let cpu = RedisServer::start();
    let _worker = WorkerProcess::start(&cpu, &[]).await;
    for message in refused(&cpu.producer().await).await {
        assert!(message.starts_with("the covariance"), "{message}");
    }
}
