//! The parity statement (docs/ARCHITECTURE.md, "Parity across devices"),
//! on CPU workers: a split task whose every shard runs on CPU workers
//! equals the whole run on a CPU worker bit for bit, for each splittable
//! kind (`monte_carlo`, `risk` Monte Carlo and historical, `portfolio_opt`
//! under both objectives). `compute.rs` and `portfolio_split.rs` check the
//! same with shards on simulated GPUs (CPU twins in GPU workers' processes);
//! here the shards run on CPU workers themselves. The cross-device half
//! (a real GPU's shards merged with a CPU worker's) is in `gpu_real.rs`.

use std::collections::BTreeSet;

use tandem_producer::{Producer, Task};
use tandem_shared::Status;
use tandem_shared::kind::monte_carlo::{MonteCarlo, MonteCarloParams};
use tandem_shared::kind::portfolio_opt::{Objective, PortfolioOpt, PortfolioOptParams};
use tandem_shared::kind::risk::{HistoricalRisk, Risk, RiskParams};
use tandem_shared::wire::TaskRecord;

use crate::support::gpus::{PAIR, PRIMARY, SECONDARY, WAIT, settle, start, store};
use crate::support::split::record;
use crate::support::{RedisServer, WorkerProcess};

/// A task of a splittable kind, with parameters that cut into several
/// blocks.
#[derive(Debug, Clone)]
pub(crate) enum Case {
    MonteCarlo(MonteCarloParams),
    Risk(&'static str, RiskParams),
    Portfolio(PortfolioOptParams),
}

impl Case {
    /// One case per splittable kind and variant.
    pub(crate) fn all() -> Vec<Case> {
        vec![
            Case::MonteCarlo(MonteCarloParams {
                s0: 100.0,
                strike: 105.0,
                rate: 0.03,
                dividend: 0.01,
                sigma: 0.25,
                maturity: 1.0,
                steps: 16,
                paths: 100_000,
                seed: 11,
                percentiles: vec![1.0, 50.0, 99.0],
            }),
            Case::Risk("monte carlo", crate::compute::risk_params()),
            Case::Risk("historical", historical()),
            Case::Portfolio(crate::portfolio_split::params(Objective::MinVariance)),
            Case::Portfolio(crate::portfolio_split::params(Objective::MaxSharpe)),
        ]
    }

    pub(crate) fn name(&self) -> String {
        match self {
            Case::MonteCarlo(_) => "monte_carlo".into(),
            Case::Risk(variant, _) => format!("risk ({variant})"),
            Case::Portfolio(p) => format!("portfolio_opt ({:?})", p.objective),
        }
    }

    fn task(&self) -> Task {
        match self {
            Case::MonteCarlo(p) => Task::of::<MonteCarlo>(p),
            Case::Risk(_, p) => Task::of::<Risk>(p),
            Case::Portfolio(p) => Task::of::<PortfolioOpt>(p),
        }
        .expect("valid parameters")
    }

    /// Runs the task to success, declaring `memory_bytes`; returns the
    /// result's MessagePack bytes and the task's record.
    pub(crate) async fn run(
        &self,
        redis: &RedisServer,
        producer: &Producer,
        memory_bytes: u64,
    ) -> (Vec<u8>, TaskRecord) {
        let id = producer
            .submit(self.task().memory_bytes(memory_bytes))
            .await
            .expect("submit");
        let outcome = producer.wait(id, WAIT).await.expect("wait");
        assert_eq!(
            outcome.status,
            Status::Succeeded,
            "{}: {:?}",
            self.name(),
            outcome.record
        );
        let bytes = outcome.result_bytes().expect("a result").to_vec();
        (bytes, record(redis, &id).await)
    }
}

/// 30,000 days of three assets' returns: 8 blocks of 4,096 rows.
fn historical() -> RiskParams {
    let assets = 3;
    let returns = (0..30_000 * assets)
        .map(|i| ((i * 7_919) % 2_003) as f64 / 1e4 - 0.1003)
        .collect();
    RiskParams::Historical(HistoricalRisk {
        weights: vec![2e6, -5e5, 1e6],
        returns,
        confidence: vec![0.95, 0.99],
    })
}

/// More memory than either simulated GPU of [`PAIR`] has: only CPU
/// workers take such a task, and its shards (which declare the parent's
/// memory).
const MORE_THAN_ANY_GPU: u64 = 64 << 30;

#[tokio::test]
async fn a_task_split_over_cpu_workers_equals_the_whole_run_bit_for_bit() {
    // Two simulated GPUs make the fleet split parallel tasks (2 x 4
    // shards); the tasks are too large for them, so CPU workers claim the
    // parent, split it and run every shard.
    let split = RedisServer::start();
    let split_env = [("TANDEM_SHARDS_PER_GPU", "4")];
    let _primary = start(&split, PRIMARY, PAIR, &split_env).await;
    let _secondary = start(&split, SECONDARY, PAIR, &split_env).await;
    let _cpu_workers = [
        WorkerProcess::start(&split, &[("TANDEM_CONCURRENCY", "2")]).await,
        WorkerProcess::start(&split, &[("TANDEM_CONCURRENCY", "2")]).await,
    ];
    settle(&store(&split).await).await;
    let split_producer = split.producer().await;

    let whole = RedisServer::start();
    let _whole_worker = WorkerProcess::start(&whole, &[]).await;
    let whole_producer = whole.producer().await;

    for case in Case::all() {
        let (split_bits, parent) = case.run(&split, &split_producer, MORE_THAN_ANY_GPU).await;
        let shards = parent.shards.unwrap_or(0);
        assert!(shards >= 2, "{}: not split: {parent:?}", case.name());
        assert_eq!(
            parent.shards_devices,
            ["cpu"],
            "{}: a shard ran on a GPU: {parent:?}",
            case.name()
        );
        let mut workers = BTreeSet::new();
        for shard in &parent.shard_ids {
            let shard = record(&split, shard).await;
            assert_eq!(shard.device.as_deref(), Some("cpu"), "{shard:?}");
            workers.insert(shard.worker.unwrap_or_default());
        }
        let (whole_bits, unsplit) = case.run(&whole, &whole_producer, 0).await;
        assert_eq!(
            unsplit.shards,
            None,
            "{}: a CPU-only host runs it whole",
            case.name()
        );
        assert_eq!(
            split_bits,
            whole_bits,
            "{}: {shards} shards on {} CPU worker(s) differ from the whole run",
            case.name(),
            workers.len()
        );
    }
}
