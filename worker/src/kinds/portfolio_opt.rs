//! The `portfolio_opt` kind on a worker: the random search on the GPU when
//! the kernel loaded (else its CPU twin), the refine on the CPU; splittable
//! into shards of whole search blocks
//! ([`tandem_kernels::portfolio_opt::SEARCH_BLOCK`] candidates).
//!
//! A shard's partial is its best candidate (the first of its best scores);
//! the merge takes the first best of the partials in shard order, which is
//! the whole search's best bit for bit, and refines it once. The shard that
//! starts at block 0 first checks that the covariance is positive
//! semidefinite (a Cholesky factorization, `n^3 / 6` multiply-adds, so
//! once per task rather than per shard): an indefinite one fails the task
//! with `BAD_PARAMS`, and a merge only happens after every shard, that one
//! included, succeeded. A task run whole is the one-shard split.
//!
//! A task given `returns` instead of `mu` and `covariance` has its moments
//! computed on the CPU first ([`PortfolioOptParams::with_moments`]), on a
//! GPU worker too, and then runs as the task of those moments; a shard of
//! such a task computes them for itself (a task whose parameters came by
//! blob reference, as a long history does, runs whole).

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use tandem_kernels::portfolio_opt as kernel;
use tandem_kernels::runtime::Gpu;
use tandem_shared::ErrorCode;
use tandem_shared::kind::portfolio_opt::{
    Method, Objective, PortfolioOpt, PortfolioOptOutput, PortfolioOptParams,
};

use crate::compute::Compute;
use crate::context::Stop;
use crate::error::TaskError;
use crate::kind_table::KindTable;
use crate::split::{BlockRange, Split, steps_of, whole};

pub(crate) fn register(kinds: &mut KindTable) {
    kinds.register_split(PortfolioOptKind);
}

struct PortfolioOptKind;

/// What a shard returns: its search blocks (so that the merge can tell
/// every block was searched once) and its best candidate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct SearchPartial {
    blocks: BlockRange,
    index: u64,
    score: f32,
}

fn bad(message: impl std::fmt::Display) -> TaskError {
    TaskError::fatal(ErrorCode::BAD_PARAMS, message.to_string())
}

/// The parameters with `mu` and `covariance`, computed from `returns` when
/// the task gave those.
fn with_moments(p: &PortfolioOptParams) -> Cow<'_, PortfolioOptParams> {
    match p.with_moments() {
        Some(owned) => Cow::Owned(owned),
        None => Cow::Borrowed(p),
    }
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

/// The problem, settings and candidates of a shard, checked; the shard at
/// block 0 checks the covariance too (see the module doc).
fn shard_inputs<'a>(
    params: &'a PortfolioOptParams,
    shard: &BlockRange,
) -> Result<(kernel::Problem<'a>, kernel::Settings, std::ops::Range<u64>), TaskError> {
    let problem = problem(params)?;
    let settings = settings(params)?;
    let blocks = shard.within(kernel::search_blocks(settings.samples))?;
    if blocks.start == 0 {
        problem.check_covariance().map_err(bad)?;
    }
    let candidates = kernel::block_candidates(settings.samples, blocks);
    Ok((problem, settings, candidates))
}

fn partial(shard: &BlockRange, best: kernel::SearchBest) -> SearchPartial {
    SearchPartial {
        blocks: *shard,
        index: best.index,
        score: best.score,
    }
}

impl Compute for PortfolioOptKind {
    type Spec = PortfolioOpt;
    const MODULE: Option<&'static str> = Some(kernel::SOURCE.module);

    fn cpu(
        &self,
        params: &PortfolioOptParams,
        stop: &Stop,
    ) -> Result<PortfolioOptOutput, TaskError> {
        whole(self, None, &with_moments(params), stop)
    }

    fn gpu(
        &self,
        gpu: &Gpu,
        params: &PortfolioOptParams,
        stop: &Stop,
    ) -> Result<PortfolioOptOutput, TaskError> {
        whole(self, Some(gpu), &with_moments(params), stop)
    }
}

impl Split for PortfolioOptKind {
    type Shard = BlockRange;
    type Partial = SearchPartial;

    fn split(&self, params: &PortfolioOptParams, n: usize) -> Vec<BlockRange> {
        let samples = u32::try_from(params.samples).unwrap_or(u32::MAX);
        BlockRange::split(kernel::search_blocks(samples), n)
    }

    /// Runs of `2^27 / n^2` candidates (`n^2 / 2` multiply-adds each: some
    /// 20 ms on two cores), and at least 4 blocks.
    fn cpu_steps(&self, params: &PortfolioOptParams) -> usize {
        let samples = u32::try_from(params.samples).unwrap_or(u32::MAX);
        let n = params.assets_count().max(1) as u64;
        let per_block = kernel::SEARCH_BLOCK * n * n;
        steps_of(
            kernel::search_blocks(samples),
            ((1 << 27) / per_block).max(4),
        )
    }

    fn cpu_shard(
        &self,
        params: &PortfolioOptParams,
        shard: &BlockRange,
    ) -> Result<SearchPartial, TaskError> {
        let params = with_moments(params);
        let (problem, settings, candidates) = shard_inputs(&params, shard)?;
        Ok(partial(
            shard,
            kernel::search_cpu_range(&problem, &settings, candidates),
        ))
    }

    fn gpu_shard(
        &self,
        gpu: &Gpu,
        params: &PortfolioOptParams,
        shard: &BlockRange,
    ) -> Result<SearchPartial, TaskError> {
        let params = with_moments(params);
        let (problem, settings, candidates) = shard_inputs(&params, shard)?;
        Ok(partial(
            shard,
            kernel::search_gpu_range(gpu, &problem, &settings, candidates)?,
        ))
    }

    /// The first best of the partials (they come in shard order, so in
    /// candidate order), refined once.
    fn merge(
        &self,
        params: &PortfolioOptParams,
        parts: Vec<SearchPartial>,
    ) -> Result<PortfolioOptOutput, TaskError> {
        let params = with_moments(params);
        let problem = problem(&params)?;
        let settings = settings(&params)?;
        let blocks = kernel::search_blocks(settings.samples);
        let bad_result = |message: String| TaskError::fatal(ErrorCode::BAD_RESULT, message);
        let mut next = 0;
        for part in &parts {
            let candidates =
                kernel::block_candidates(settings.samples, part.blocks.first..part.blocks.end);
            if part.blocks.first != next
                || part.blocks.end <= part.blocks.first
                || !candidates.contains(&part.index)
            {
                return Err(bad_result(format!(
                    "a partial covers search blocks {}..{} with its best candidate {}; expected blocks from {next} and a candidate among them",
                    part.blocks.first, part.blocks.end, part.index
                )));
            }
            next = part.blocks.end;
        }
        if next != blocks {
            return Err(bad_result(format!(
                "the partials cover search blocks 0..{next}; the task has {blocks}"
            )));
        }
        let best = kernel::merge_bests(parts.iter().map(|p| kernel::SearchBest {
            index: p.index,
            score: p.score,
        }))
        .ok_or_else(|| bad_result("no partial to merge".into()))?;
        Ok(output(kernel::refine(&problem, &settings, best)))
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
            returns: None,
            assets: None,
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
        let mut kinds = KindTable::new();
        register(&mut kinds);
        let ctx = crate::context::TaskContext::new(
            tandem_shared::TaskId::new(),
            1,
            "cpu".into(),
            CancellationToken::new(),
        );
        kinds
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

    /// Twelve assets, a one-factor covariance, 2,000 candidates: 8 search
    /// blocks, the last partial.
    fn twelve(objective: Objective, max_weight: f64) -> PortfolioOptParams {
        let n = 12;
        let beta: Vec<f64> = (0..n).map(|i| 0.5 + 0.05 * i as f64).collect();
        let mut covariance = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                let idio = if i == j { 0.02 + 0.002 * i as f64 } else { 0.0 };
                covariance[i * n + j] = 0.01 * beta[i] * beta[j] + idio;
            }
        }
        PortfolioOptParams {
            mu: (0..n).map(|i| 0.04 + 0.005 * (i % 5) as f64).collect(),
            covariance,
            returns: None,
            assets: None,
            risk_free: 0.01,
            objective,
            max_weight,
            tolerance: 1e-11,
            max_iterations: 20_000,
            seed: 17,
            samples: 2_000,
        }
    }

    #[tokio::test]
    async fn a_split_run_equals_the_whole_run_bit_for_bit() {
        let mut kinds = KindTable::new();
        register(&mut kinds);
        let splitter = kinds.splitter("portfolio_opt").expect("splittable");
        let ctx = crate::context::TaskContext::for_test;
        for p in [
            twelve(Objective::MinVariance, 1.0),
            twelve(Objective::MaxSharpe, 1.0),
            twelve(Objective::MaxSharpe, 0.15),
        ] {
            let bytes = msgpack::encode(&p).unwrap();
            let whole = PortfolioOptKind.cpu(&p, &Stop::never()).unwrap();
            assert!(whole.converged, "{whole:?}");
            for n in [1, 2, 3, 7, 8, 50] {
                let shards = splitter.split(&bytes, n).unwrap();
                assert!(!shards.is_empty() && shards.len() <= n, "{n}");
                if n >= 8 {
                    assert_eq!(shards.len(), 8, "one block a shard");
                }
                let mut parts = Vec::new();
                for shard in &shards {
                    parts.push(splitter.run_shard(shard, &ctx()).unwrap().await.unwrap());
                }
                let merged: PortfolioOptOutput =
                    msgpack::decode(&splitter.merge(&bytes, &parts).unwrap()).unwrap();
                assert_eq!(
                    msgpack::encode(&merged).unwrap(),
                    msgpack::encode(&whole).unwrap(),
                    "{:?} {n} shards",
                    p.objective
                );
            }
        }
    }

    #[test]
    fn missing_or_stray_partials_are_a_bad_result() {
        let p = twelve(Objective::MinVariance, 1.0);
        let shards = PortfolioOptKind.split(&p, 3);
        let parts: Vec<SearchPartial> = shards
            .iter()
            .map(|s| PortfolioOptKind.cpu_shard(&p, s).unwrap())
            .collect();
        let merge = |parts: Vec<SearchPartial>| PortfolioOptKind.merge(&p, parts).unwrap_err();
        let err = merge(parts[..2].to_vec());
        assert_eq!(err.code, ErrorCode::BAD_RESULT);
        assert!(
            err.message.contains("cover search blocks 0..6"),
            "{}",
            err.message
        );
        let swapped = vec![parts[1].clone(), parts[0].clone(), parts[2].clone()];
        assert_eq!(merge(swapped).code, ErrorCode::BAD_RESULT);
        let mut stray = parts.clone();
        stray[1].index = 0;
        assert_eq!(merge(stray).code, ErrorCode::BAD_RESULT);
        assert_eq!(merge(Vec::new()).code, ErrorCode::BAD_RESULT);
        let outside = BlockRange { first: 5, end: 99 };
        assert_eq!(
            PortfolioOptKind.cpu_shard(&p, &outside).unwrap_err().code,
            ErrorCode::BAD_PARAMS
        );
    }

    #[test]
    fn the_cpu_run_goes_in_steps_and_stops_when_cancelled() {
        let at = |assets: usize, samples: u64| {
            PortfolioOptKind.cpu_steps(&PortfolioOptParams {
                mu: vec![0.0; assets],
                samples,
                ..params(Objective::MinVariance)
            })
        };
        // 2^27 / (256 n^2) blocks a step, 4 at the least, 64 steps at most.
        assert_eq!(at(3, 65_536), 1);
        assert_eq!(at(100, 65_536), 4);
        assert_eq!(at(500, 65_536), 64);
        assert_eq!(at(500, 2_048), 2);
        let cancel = tokio_util::sync::CancellationToken::new();
        cancel.cancel();
        let err = PortfolioOptKind
            .cpu(&params(Objective::MinVariance), &Stop::new(cancel))
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::CANCELLED);
    }

    /// The example: eigenvalues 3 and -1, so `(1/2, 1/2)` has
    /// variance -1/2. Both objectives refuse it, run whole or as the shard
    /// at block 0; the other shards leave the check to that one.
    #[tokio::test]
    async fn an_indefinite_covariance_is_bad_params() {
        let mut kinds = KindTable::new();
        register(&mut kinds);
        let splitter = kinds.splitter("portfolio_opt").expect("splittable");
        for objective in [Objective::MinVariance, Objective::MaxSharpe] {
            let p = PortfolioOptParams {
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
            let shards = splitter.split(&msgpack::encode(&p).unwrap(), 4).unwrap();
            assert_eq!(shards.len(), 4);
            let ctx = crate::context::TaskContext::for_test;
            let err = splitter
                .run_shard(&shards[0], &ctx())
                .unwrap()
                .await
                .unwrap_err();
            assert_eq!(err.code, ErrorCode::BAD_PARAMS);
            splitter
                .run_shard(&shards[1], &ctx())
                .unwrap()
                .await
                .unwrap();
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
