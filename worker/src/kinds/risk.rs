//! The `risk` kind on a worker: VaR and CVaR by Monte Carlo or from
//! history, splittable into shards of whole scenario blocks.
//!
//! A shard's partial is the `K` largest losses of its scenarios (K the tail
//! of the lowest confidence level over all N scenarios), sorted in
//! descending order, and one loss sum per block; the merge takes the K
//! largest of all partials and adds the block sums in block order, so a
//! split run equals the whole run bit for bit.

use serde::{Deserialize, Serialize};
use tandem_kernels::risk::{self as kernel, Historical, MonteCarlo, Tail};
use tandem_kernels::runtime::Gpu;
use tandem_shared::ErrorCode;
use tandem_shared::kind::risk::{Risk, RiskLevel, RiskOutput, RiskParams, tail_count};

use crate::compute::Compute;
use crate::context::Stop;
use crate::error::TaskError;
use crate::kind_table::KindTable;
use crate::split::{BlockRange, Split, steps_of, whole};

pub(crate) fn register(kinds: &mut KindTable) {
    kinds.register_split(RiskKind);
}

pub(crate) struct RiskKind;

/// What a shard returns: see the module doc.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct RiskPartial {
    /// The largest losses of the shard, at most K, descending.
    top: Vec<f64>,
    /// The loss sum of each of the shard's blocks, in block order.
    block_sums: Vec<f64>,
}

/// What the kernels need for the parameters' method.
enum Run<'a> {
    MonteCarlo(MonteCarlo),
    Historical(Historical<'a>),
}

fn prepare(params: &RiskParams) -> Result<Run<'_>, TaskError> {
    Ok(match params {
        RiskParams::MonteCarlo(p) => Run::MonteCarlo(
            MonteCarlo::new(&p.weights, &p.mu, &p.covariance, p.scenarios, p.seed)
                .map_err(|e| TaskError::fatal(ErrorCode::BAD_PARAMS, e.to_string()))?,
        ),
        RiskParams::Historical(p) => Run::Historical(Historical {
            weights: &p.weights,
            returns: &p.returns,
        }),
    })
}

/// K, the number of losses a partial keeps.
fn keep(params: &RiskParams) -> usize {
    params.max_tail_count() as usize
}

fn partial(tail: Tail) -> RiskPartial {
    RiskPartial {
        top: tail.top,
        block_sums: tail.block_sums,
    }
}

impl Compute for RiskKind {
    type Spec = Risk;
    const MODULE: Option<&'static str> = Some("risk");

    fn cpu(&self, params: &RiskParams, stop: &Stop) -> Result<RiskOutput, TaskError> {
        whole(self, None, params, stop)
    }

    fn gpu(&self, gpu: &Gpu, params: &RiskParams, stop: &Stop) -> Result<RiskOutput, TaskError> {
        whole(self, Some(gpu), params, stop)
    }
}

impl Split for RiskKind {
    type Shard = BlockRange;
    type Partial = RiskPartial;

    fn split(&self, params: &RiskParams, n: usize) -> Vec<BlockRange> {
        BlockRange::split(kernel::block_count(params.scenarios()), n)
    }

    /// Runs of at least 256 blocks (1,048,576 scenarios: some 40 ms for
    /// 50 assets on two cores).
    fn cpu_steps(&self, params: &RiskParams) -> usize {
        steps_of(kernel::block_count(params.scenarios()), 256)
    }

    fn cpu_shard(&self, params: &RiskParams, shard: &BlockRange) -> Result<RiskPartial, TaskError> {
        let blocks = shard.within(kernel::block_count(params.scenarios()))?;
        Ok(partial(match prepare(params)? {
            Run::MonteCarlo(run) => kernel::monte_carlo_cpu(&run, blocks, keep(params)),
            Run::Historical(run) => kernel::historical_cpu(&run, blocks, keep(params)),
        }))
    }

    fn gpu_shard(
        &self,
        gpu: &Gpu,
        params: &RiskParams,
        shard: &BlockRange,
    ) -> Result<RiskPartial, TaskError> {
        let blocks = shard.within(kernel::block_count(params.scenarios()))?;
        Ok(partial(match prepare(params)? {
            Run::MonteCarlo(run) => kernel::monte_carlo_gpu(gpu, &run, blocks, keep(params))?,
            Run::Historical(run) => kernel::historical_gpu(gpu, &run, blocks, keep(params))?,
        }))
    }

    fn merge(&self, params: &RiskParams, parts: Vec<RiskPartial>) -> Result<RiskOutput, TaskError> {
        let scenarios = params.scenarios();
        let tail = Tail::merge(
            parts.into_iter().map(|p| Tail {
                top: p.top,
                block_sums: p.block_sums,
            }),
            keep(params),
        );
        if tail.block_sums.len() as u64 != kernel::block_count(scenarios) {
            return Err(TaskError::fatal(
                ErrorCode::BAD_RESULT,
                format!(
                    "the partials cover {} blocks, the task has {}",
                    tail.block_sums.len(),
                    kernel::block_count(scenarios)
                ),
            ));
        }
        let levels = params
            .confidence()
            .iter()
            .map(|&confidence| {
                let k = tail_count(confidence, scenarios);
                let (var, cvar) = tail.var_cvar(k as usize).ok_or_else(|| {
                    TaskError::fatal(
                        ErrorCode::BAD_RESULT,
                        format!(
                            "the partials hold {} tail losses, {k} needed",
                            tail.top.len()
                        ),
                    )
                })?;
                Ok(RiskLevel {
                    confidence,
                    var,
                    cvar,
                    tail_count: k,
                })
            })
            .collect::<Result<Vec<_>, TaskError>>()?;
        Ok(RiskOutput {
            levels,
            mean_loss: tail.mean(scenarios),
            scenarios,
        })
    }
}

#[cfg(test)]
mod tests {
    use tandem_shared::kind::risk::{HistoricalRisk, MonteCarloRisk};
    use tandem_shared::msgpack;

    use super::*;
    use crate::context::TaskContext;

    fn monte_carlo() -> RiskParams {
        RiskParams::MonteCarlo(MonteCarloRisk {
            weights: vec![1_000.0, -400.0, 2_500.0],
            mu: vec![0.001, 0.0005, 0.002],
            covariance: vec![
                0.0004, 0.00018, -0.00006, //
                0.00018, 0.0009, 0.000225, //
                -0.00006, 0.000225, 0.000225,
            ],
            scenarios: 30_001,
            seed: 11,
            confidence: vec![0.99, 0.95],
        })
    }

    fn historical() -> RiskParams {
        let returns = (0..20_000 * 3)
            .map(|i| ((i * 7919) % 2003) as f64 / 1e4 - 0.1)
            .collect();
        RiskParams::Historical(HistoricalRisk {
            weights: vec![1.0, -2.0, 3.0],
            returns,
            confidence: vec![0.9, 0.975],
        })
    }

    fn ctx() -> TaskContext {
        TaskContext::for_test()
    }

    #[tokio::test]
    async fn runs_through_the_registry() {
        let mut kinds = KindTable::new();
        register(&mut kinds);
        let params = msgpack::encode(&monte_carlo()).unwrap();
        let out = kinds
            .prepare("risk", &params, ctx())
            .unwrap()
            .await
            .unwrap();
        let out: RiskOutput = msgpack::decode(&out).unwrap();
        assert_eq!(out.scenarios, 30_001);
        assert_eq!(out.levels.len(), 2);
        assert_eq!(out.levels[0].confidence, 0.99);
        assert_eq!(out.levels[0].tail_count, 301);
        assert!(out.levels[0].var > out.levels[1].var);
        assert!(out.levels[0].cvar > out.levels[0].var);

        // Not positive semidefinite: eigenvalues 3 and -1.
        let bad = RiskParams::MonteCarlo(MonteCarloRisk {
            weights: vec![1.0, 1.0],
            mu: vec![0.0, 0.0],
            covariance: vec![1.0, 2.0, 2.0, 1.0],
            scenarios: 10,
            seed: 1,
            confidence: vec![0.9],
        });
        let bad = msgpack::encode(&bad).unwrap();
        let err = kinds
            .prepare("risk", &bad, ctx())
            .unwrap()
            .await
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::BAD_PARAMS);
        assert!(
            err.message.contains("positive semidefinite"),
            "{}",
            err.message
        );
    }

    #[tokio::test]
    async fn a_split_run_equals_the_whole_run_bit_for_bit() {
        let mut kinds = KindTable::new();
        register(&mut kinds);
        let splitter = kinds.splitter("risk").expect("registered");
        for params in [monte_carlo(), historical()] {
            let whole = RiskKind.cpu(&params, &Stop::never()).unwrap();
            let encoded = msgpack::encode(&params).unwrap();
            for n in [1, 2, 3, 7] {
                let shards = splitter.split(&encoded, n).unwrap();
                assert!(shards.len() <= n);
                let mut parts = Vec::new();
                for shard in &shards {
                    parts.push(splitter.run_shard(shard, &ctx()).unwrap().await.unwrap());
                }
                let merged: RiskOutput =
                    msgpack::decode(&splitter.merge(&encoded, &parts).unwrap()).unwrap();
                let bits = |o: &RiskOutput| {
                    let mut bits = vec![o.mean_loss.to_bits(), o.scenarios];
                    for level in &o.levels {
                        bits.extend([level.var.to_bits(), level.cvar.to_bits(), level.tail_count]);
                    }
                    bits
                };
                assert_eq!(bits(&merged), bits(&whole), "{n} shards");
            }
        }
    }
}
