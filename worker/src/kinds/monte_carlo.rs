//! The `monte_carlo` kind on a worker: GBM option pricing, splittable into
//! shards of whole 4096-path blocks (`tandem_kernels::monte_carlo`).

use serde::{Deserialize, Serialize};
use tandem_kernels::monte_carlo::{self as mc, BlockSums, Config};
use tandem_kernels::runtime::Gpu;
use tandem_shared::ErrorCode;
use tandem_shared::kind::monte_carlo::{
    Estimate, MonteCarlo, MonteCarloOutput, MonteCarloParams, Percentile,
};

use crate::compute::Compute;
use crate::context::Stop;
use crate::error::TaskError;
use crate::kind_table::KindTable;
use crate::split::{BlockRange, Split, steps_of, whole};

pub(crate) fn register(kinds: &mut KindTable) {
    kinds.register_split(MonteCarloKind);
}

struct MonteCarloKind;

/// What a shard returns: the sums of each of its blocks, in block order
/// ([`BlockSums::LEN`] values per block), and its histogram counts.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct BlockPartial {
    sums: Vec<f64>,
    histogram: Vec<u64>,
}

fn config(p: &MonteCarloParams) -> Config {
    Config {
        s0: p.s0,
        strike: p.strike,
        rate: p.rate,
        dividend: p.dividend,
        sigma: p.sigma,
        maturity: p.maturity,
        steps: p.steps,
        paths: p.paths,
        seed: p.seed,
    }
}

fn partial(blocks: mc::Blocks) -> BlockPartial {
    BlockPartial {
        sums: blocks.sums.iter().flat_map(BlockSums::to_array).collect(),
        histogram: blocks.histogram,
    }
}

fn estimate(e: mc::Estimate) -> Estimate {
    Estimate {
        price: e.price,
        std_error: e.std_error,
    }
}

impl Compute for MonteCarloKind {
    type Spec = MonteCarlo;
    const MODULE: Option<&'static str> = Some(mc::SOURCE.module);

    fn cpu(&self, params: &MonteCarloParams, stop: &Stop) -> Result<MonteCarloOutput, TaskError> {
        whole(self, None, params, stop)
    }

    fn gpu(
        &self,
        gpu: &Gpu,
        params: &MonteCarloParams,
        stop: &Stop,
    ) -> Result<MonteCarloOutput, TaskError> {
        whole(self, Some(gpu), params, stop)
    }
}

impl Split for MonteCarloKind {
    type Shard = BlockRange;
    type Partial = BlockPartial;

    fn split(&self, params: &MonteCarloParams, n: usize) -> Vec<BlockRange> {
        BlockRange::split(config(params).blocks(), n)
    }

    /// Runs of about 2^26 path steps (some 80 ms on two cores), and at
    /// least 16 blocks.
    fn cpu_steps(&self, params: &MonteCarloParams) -> usize {
        let per_block = mc::BLOCK_PATHS * u64::from(params.steps.max(1));
        steps_of(config(params).blocks(), ((1 << 26) / per_block).max(16))
    }

    fn cpu_shard(
        &self,
        params: &MonteCarloParams,
        shard: &BlockRange,
    ) -> Result<BlockPartial, TaskError> {
        let config = config(params);
        let blocks = shard.within(config.blocks())?;
        Ok(partial(mc::run_cpu(&config, blocks)))
    }

    fn gpu_shard(
        &self,
        gpu: &Gpu,
        params: &MonteCarloParams,
        shard: &BlockRange,
    ) -> Result<BlockPartial, TaskError> {
        let config = config(params);
        let blocks = shard.within(config.blocks())?;
        Ok(partial(mc::run_gpu(gpu, &config, blocks)?))
    }

    fn merge(
        &self,
        params: &MonteCarloParams,
        parts: Vec<BlockPartial>,
    ) -> Result<MonteCarloOutput, TaskError> {
        let config = config(params);
        let bad = |message: String| TaskError::fatal(ErrorCode::BAD_RESULT, message);
        let mut sums = Vec::with_capacity(config.blocks() as usize);
        let mut histogram = vec![0u64; mc::HISTOGRAM_LEN];
        for part in parts {
            if part.histogram.len() != mc::HISTOGRAM_LEN || part.sums.len() % BlockSums::LEN != 0 {
                return Err(bad(format!(
                    "a partial holds {} sums and {} counts; expected a multiple of {} and {}",
                    part.sums.len(),
                    part.histogram.len(),
                    BlockSums::LEN,
                    mc::HISTOGRAM_LEN
                )));
            }
            for chunk in part.sums.chunks_exact(BlockSums::LEN) {
                let mut values = [0.0; BlockSums::LEN];
                values.copy_from_slice(chunk);
                sums.push(BlockSums::from_array(&values));
            }
            for (total, count) in histogram.iter_mut().zip(part.histogram) {
                *total += count;
            }
        }
        if sums.len() as u64 != config.blocks() || histogram.iter().sum::<u64>() != config.paths {
            return Err(bad(format!(
                "the partials cover {} blocks and {} paths; the task has {} and {}",
                sums.len(),
                histogram.iter().sum::<u64>(),
                config.blocks(),
                config.paths
            )));
        }
        let summary = mc::summarize(&config, &sums, &histogram, &params.percentiles);
        Ok(MonteCarloOutput {
            european_call: estimate(summary.european_call),
            european_put: estimate(summary.european_put),
            asian_arithmetic_call: estimate(summary.asian_arithmetic_call),
            asian_geometric_call: estimate(summary.asian_geometric_call),
            mean_terminal_price: summary.mean_terminal_price,
            percentiles: params
                .percentiles
                .iter()
                .zip(summary.percentiles)
                .map(|(&level, price)| Percentile { level, price })
                .collect(),
            paths: summary.paths,
        })
    }
}

#[cfg(test)]
mod tests {
    use tandem_shared::msgpack;

    use super::*;
    use crate::context::TaskContext;

    fn params() -> MonteCarloParams {
        MonteCarloParams {
            s0: 100.0,
            strike: 100.0,
            rate: 0.03,
            dividend: 0.01,
            sigma: 0.2,
            maturity: 0.5,
            steps: 4,
            // 13 blocks, the last partial.
            paths: 12 * 4096 + 1000,
            seed: 99,
            percentiles: vec![5.0, 50.0, 95.0],
        }
    }

    fn ctx() -> TaskContext {
        TaskContext::for_test()
    }

    #[tokio::test]
    async fn runs_through_the_registry() {
        let mut kinds = KindTable::new();
        register(&mut kinds);
        let p = params();
        let bytes = msgpack::encode(&p).unwrap();
        let out = kinds
            .prepare("monte_carlo", &bytes, ctx())
            .unwrap()
            .await
            .unwrap();
        let out: MonteCarloOutput = msgpack::decode(&out).unwrap();
        assert_eq!(out, MonteCarloKind.cpu(&p, &Stop::never()).unwrap());
        assert_eq!(out.paths, p.paths);
        assert_eq!(out.percentiles.len(), 3);
        assert!(out.european_call.price > 0.0 && out.european_call.std_error > 0.0);

        let bad = MonteCarloParams { steps: 0, ..p };
        let err = kinds
            .prepare("monte_carlo", &msgpack::encode(&bad).unwrap(), ctx())
            .err()
            .expect("rejected");
        assert_eq!(err.code, ErrorCode::BAD_PARAMS);
    }

    #[test]
    fn the_cpu_run_goes_in_steps_of_about_2_26_path_steps_and_stops_when_cancelled() {
        let at = |blocks: u64, steps: u32| {
            MonteCarloKind.cpu_steps(&MonteCarloParams {
                paths: blocks * mc::BLOCK_PATHS,
                steps,
                ..params()
            })
        };
        // 65 blocks of 252 steps make one step; 16 blocks at the least.
        assert_eq!(at(64, 252), 1);
        assert_eq!(at(130, 252), 2);
        assert_eq!(at(245, 252), 3);
        assert_eq!(at(10_000, 1), 1);
        assert_eq!(at(32, 1_000_000), 2);
        assert_eq!(at(1 << 20, 252), 64);

        let cancel = tokio_util::sync::CancellationToken::new();
        cancel.cancel();
        let err = MonteCarloKind
            .cpu(&params(), &Stop::new(cancel))
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::CANCELLED);
    }

    #[tokio::test]
    async fn a_split_run_equals_the_whole_run_bit_for_bit() {
        let mut kinds = KindTable::new();
        register(&mut kinds);
        let splitter = kinds.splitter("monte_carlo").expect("splittable");
        let p = params();
        let bytes = msgpack::encode(&p).unwrap();
        let whole = MonteCarloKind.cpu(&p, &Stop::never()).unwrap();
        for n in [1, 2, 3, 7] {
            let shards = splitter.split(&bytes, n).unwrap();
            assert!(!shards.is_empty() && shards.len() <= n, "{n}");
            let mut parts = Vec::new();
            for shard in &shards {
                parts.push(splitter.run_shard(shard, &ctx()).unwrap().await.unwrap());
            }
            let merged: MonteCarloOutput =
                msgpack::decode(&splitter.merge(&bytes, &parts).unwrap()).unwrap();
            assert_eq!(
                msgpack::encode(&merged).unwrap(),
                msgpack::encode(&whole).unwrap(),
                "{n} shards"
            );
        }
    }

    #[test]
    fn a_missing_partial_is_a_bad_result() {
        let p = params();
        let shards = MonteCarloKind.split(&p, 2);
        let first = MonteCarloKind.cpu_shard(&p, &shards[0]).unwrap();
        let err = MonteCarloKind.merge(&p, vec![first]).unwrap_err();
        assert_eq!(err.code, ErrorCode::BAD_RESULT);
        let outside = BlockRange { first: 5, end: 99 };
        assert_eq!(
            MonteCarloKind.cpu_shard(&p, &outside).unwrap_err().code,
            ErrorCode::BAD_PARAMS
        );
    }
}
