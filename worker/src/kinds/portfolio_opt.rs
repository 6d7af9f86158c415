//! The `portfolio_opt` kind on a worker: the random search on the GPU when
//! the kernel loaded (else its CPU twin), the refine on the CPU. The
//! covariance is checked to be positive semidefinite first (a Cholesky
//! factorization, `n^3 / 6` multiply-adds): an indefinite one fails the
//! task with `BAD_PARAMS`.

use tandem_kernels::portfolio_opt as kernel;
use tandem_kernels::runtime::Gpu;
use tandem_shared::ErrorCode;
use tandem_shared::kind::portfolio_opt::{
    Method, Objective, PortfolioOpt, PortfolioOptOutput, PortfolioOptParams,
};

use crate::compute::{Compute, Stop};
use crate::handler::{Registry, TaskError};

pub(crate) fn register(registry: &mut Registry) {
    registry.register_compute(PortfolioOptKind);
}

struct PortfolioOptKind;

fn bad(message: impl std::fmt::Display) -> TaskError {
    TaskError::fatal(ErrorCode::BAD_PARAMS, message.to_string())
}

fn problem(p: &PortfolioOptParams) -> Result<kernel::Problem<'_>, TaskError> {
    let objective = match p.objective {
        Objective::MinVariance => kernel::Objective::MinVariance,
        Objective::MaxSharpe => kernel::Objective::MaxSharpe,
    };
    kernel::Problem::new(&p.mu, &p.covariance, p.risk_free, objective, p.max_weight).map_err(bad)
}

fn settings(p: &PortfolioOptParams) -> Result<kernel::Settings, TaskError> {
    Ok(kernel::Settings {
        tolerance: p.tolerance,
        max_iterations: p.max_iterations,
        seed: p.seed,
        samples: u32::try_from(p.samples).map_err(|_| bad("samples must be below 2^32"))?,
    })
}

fn output(s: kernel::Solution) -> PortfolioOptOutput {
    PortfolioOptOutput {
        weights: s.weights,
        expected_return: s.expected_return,
        volatility: s.volatility,
        sharpe: s.sharpe,
        method: match s.method {
            kernel::Method::Convex => Method::Convex,
            kernel::Method::LocalAscent => Method::LocalAscent,
        },
        iterations: s.iterations,
        residual: s.residual,
        converged: s.converged,
        random_best_index: s.random_best_index,
        random_best_objective: s.random_best_objective,
    }
}

impl Compute for PortfolioOptKind {
    type Spec = PortfolioOpt;
    const MODULE: Option<&'static str> = Some("portfolio_opt");

    fn cpu(
        &self,
        params: &PortfolioOptParams,
        stop: &Stop,
    ) -> Result<PortfolioOptOutput, TaskError> {
        let problem = problem(params)?;
        problem.check_covariance().map_err(bad)?;
        let settings = settings(params)?;
        let best = kernel::search_cpu(&problem, &settings);
        stop.check()?;
        Ok(output(kernel::refine(&problem, &settings, best)))
    }

    fn gpu(
        &self,
        gpu: &Gpu,
        params: &PortfolioOptParams,
        _stop: &Stop,
    ) -> Result<PortfolioOptOutput, TaskError> {
        let problem = problem(params)?;
        problem.check_covariance().map_err(bad)?;
        Ok(output(kernel::optimize_gpu(
            gpu,
            &problem,
            &settings(params)?,
        )?))
    }
}

#[cfg(test)]
mod tests {
    use tandem_shared::msgpack;
    use tokio_util::sync::CancellationToken;

    use super::*;

    fn params(objective: Objective) -> PortfolioOptParams {
        PortfolioOptParams {
            mu: vec![0.05, 0.08, 0.12],
            covariance: vec![0.04, 0.006, 0.0, 0.006, 0.09, 0.01, 0.0, 0.01, 0.16],
            risk_free: 0.02,
            objective,
            max_weight: 1.0,
            tolerance: 1e-12,
            max_iterations: 10_000,
            seed: 3,
            samples: 1000,
        }
    }

    async fn run(params: &PortfolioOptParams) -> Result<Vec<u8>, TaskError> {
        let mut registry = Registry::new();
        register(&mut registry);
        let ctx = crate::handler::TaskContext::new(
            tandem_shared::TaskId::new(),
            1,
            "cpu".into(),
            CancellationToken::new(),
        );
        registry
            .prepare("portfolio_opt", &msgpack::encode(params).unwrap(), ctx)?
            .await
    }

    #[tokio::test]
    async fn runs_through_the_registry() {
        for objective in [Objective::MinVariance, Objective::MaxSharpe] {
            let p = params(objective);
            let out: PortfolioOptOutput = msgpack::decode(&run(&p).await.unwrap()).unwrap();
            assert!(out.converged, "{out:?}");
            assert_eq!(out.method, Method::Convex);
            assert!((out.weights.iter().sum::<f64>() - 1.0).abs() < 1e-14);
            assert!(out.weights.iter().all(|&w| w >= 0.0));
            assert_eq!(out, PortfolioOptKind.cpu(&p, &Stop::never()).unwrap());
            match objective {
                Objective::MinVariance => {
                    assert!(out.volatility.powi(2) <= out.random_best_objective)
                }
                Objective::MaxSharpe => {
                    assert!(out.sharpe.unwrap() >= out.random_best_objective)
                }
            }
        }
    }

    /// The example: eigenvalues 3 and -1, so `(1/2, 1/2)` has
    /// variance -1/2. Both objectives refuse it.
    #[tokio::test]
    async fn an_indefinite_covariance_is_bad_params() {
        for objective in [Objective::MinVariance, Objective::MaxSharpe] {
            let p = PortfolioOptParams {
                mu: vec![0.1, 0.2],
                covariance: vec![1.0, -2.0, -2.0, 1.0],
                risk_free: 0.0,
                objective,
                max_weight: 1.0,
                tolerance: 1e-10,
                max_iterations: 1_000,
                seed: 0,
                samples: 1_024,
            };
            let err = run(&p).await.unwrap_err();
            assert_eq!(err.code, ErrorCode::BAD_PARAMS, "{objective:?}");
            assert!(
                err.message.starts_with(
                    "the covariance is not positive semidefinite: the Cholesky pivot of row 1 is -2.99"
                ),
                "{}",
                err.message
            );
        }
        // A singular one (a riskless asset) is fine.
        let mut p = params(Objective::MinVariance);
        p.covariance = vec![0.04, 0.006, 0.0, 0.006, 0.09, 0.0, 0.0, 0.0, 0.0];
        let out: PortfolioOptOutput = msgpack::decode(&run(&p).await.unwrap()).unwrap();
        assert!(out.converged && out.weights[2] > 1.0 - 1e-9, "{out:?}");
    }

    #[tokio::test]
    async fn no_return_above_the_risk_free_rate_is_bad_params() {
        let mut p = params(Objective::MaxSharpe);
        p.risk_free = 0.2;
        let err = run(&p).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::BAD_PARAMS);
        assert!(err.message.contains("risk_free"), "{}", err.message);
    }
}
