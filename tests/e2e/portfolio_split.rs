//! `portfolio_opt` through a worker: an indefinite covariance is refused.

use tandem_producer::{Producer, Task};
use tandem_shared::kind::portfolio_opt::{Objective, PortfolioOpt, PortfolioOptParams};
use tandem_shared::{ErrorCode, Status, TaskId};

use crate::gpus::WAIT;
use crate::support::{RedisServer, WorkerProcess};

/// The example: eigenvalues 3 and -1.
fn indefinite(objective: Objective) -> PortfolioOptParams {
    PortfolioOptParams {
        mu: vec![0.1, 0.2],
        covariance: vec![1.0, -2.0, -2.0, 1.0],
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
async fn an_indefinite_covariance_is_refused_by_a_worker() {
    let cpu = RedisServer::start();
    let _worker = WorkerProcess::start(&cpu, &[]).await;
    for message in refused(&cpu.producer().await).await {
        assert!(message.starts_with("the covariance"), "{message}");
    }
}
