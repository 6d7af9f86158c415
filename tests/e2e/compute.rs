//! The compute kinds through real workers: each kind's task round-trips a
//! worker and its result means what the kind says; a splittable kind split
//! across two (simulated) GPUs gives the bits of the whole run on a CPU
//! worker.

use tandem_producer::{Producer, ProducerError, Task};
use tandem_shared::Status;
use tandem_shared::kind::KindSpec;
use tandem_shared::kind::indicators::{IndicatorSpec, Indicators, IndicatorsParams, Series};
use tandem_shared::kind::monte_carlo::{MonteCarlo, MonteCarloParams, black_scholes};
use tandem_shared::kind::patterns::{OhlcSeries, Patterns, PatternsParams, Thresholds};
use tandem_shared::kind::portfolio_opt::{Objective, PortfolioOpt, PortfolioOptParams};
use tandem_shared::kind::risk::{MonteCarloRisk, Risk, RiskParams};

use crate::support::gpus::{PAIR, PRIMARY, SECONDARY, WAIT, settle, start, store};
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
    let shards = crate::support::split::record(redis, &id).await.shards;
    (outcome.result::<K::Output>().unwrap(), shards)
}

pub(crate) fn risk_params() -> RiskParams {
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

/// Runs `params` split across two simulated GPUs, then whole on a CPU-only
/// host, and checks the two results are the same bits; returns the result
/// and the shard count.
async fn split_equals_whole<K: KindSpec>(params: &K::Params) -> (K::Output, u32)
where
    K::Output: PartialEq + std::fmt::Debug,
{
    let split_env = [("TANDEM_SHARDS_PER_GPU", "4")];
    let gpus = RedisServer::start();
    let _primary = start(&gpus, PRIMARY, PAIR, &split_env).await;
    let _secondary = start(&gpus, SECONDARY, PAIR, &split_env).await;
    settle(&store(&gpus).await).await;
    let (split, shards) = run::<K>(&gpus, &gpus.producer().await, params).await;

    let cpu = RedisServer::start();
    let _worker = WorkerProcess::start(&cpu, &[]).await;
    let (whole, unsplit) = run::<K>(&cpu, &cpu.producer().await, params).await;
    assert_eq!(unsplit, None, "a CPU-only host runs it whole");
    assert_eq!(split, whole, "split and whole differ");
    (whole, shards.expect("split"))
}

#[tokio::test]
async fn risk_split_across_two_gpus_equals_the_whole_run_on_a_cpu_worker() {
    let (whole, shards) = split_equals_whole::<Risk>(&risk_params()).await;
    // 2 GPUs x 4 asked; 25 blocks of 4096 scenarios cut 4 blocks a shard.
    assert_eq!(shards, 7);
    let [p95, p99] = &whole.levels[..] else {
        panic!("two levels: {whole:?}")
    };
    assert!(
        0.0 < p95.var && p95.var < p99.var && p99.var < p99.cvar,
        "{whole:?}"
    );
    assert_eq!((p95.tail_count, p99.tail_count), (5_000, 1_000));
}

#[tokio::test]
async fn monte_carlo_split_across_two_gpus_prices_the_call_as_black_scholes() {
    let params = MonteCarloParams {
        s0: 100.0,
        strike: 100.0,
        rate: 0.05,
        dividend: 0.0,
        sigma: 0.2,
        maturity: 1.0,
        steps: 1,
        paths: 200_000,
        seed: 7,
        percentiles: vec![5.0, 50.0, 95.0],
    };
    let (whole, shards) = split_equals_whole::<MonteCarlo>(&params).await;
    assert_eq!(shards, 7, "49 blocks of 4096 paths, 7 a shard");
    let (exact, _) = black_scholes(100.0, 100.0, 0.05, 0.0, 0.2, 1.0);
    let call = whole.european_call;
    assert!(
        (call.price - exact).abs() < 3.0 * call.std_error,
        "{call:?} vs {exact}"
    );
    assert_eq!(whole.paths, 200_000);
    let levels: Vec<f64> = whole.percentiles.iter().map(|p| p.price).collect();
    assert!(levels.windows(2).all(|w| w[0] < w[1]), "{levels:?}");
}

#[tokio::test]
async fn the_light_and_optimisation_kinds_round_trip_a_worker() {
    let redis = RedisServer::start();
    let _worker = WorkerProcess::start(&redis, &[]).await;
    let producer = redis.producer().await;

    let closes: Vec<f64> = (1..=30).map(f64::from).collect();
    let indicators = IndicatorsParams {
        series: vec![Series {
            symbol: "RISING".into(),
            closes,
        }],
        indicators: vec![IndicatorSpec::Sma { period: 5 }],
    };
    let (out, _) = run::<Indicators>(&redis, &producer, &indicators).await;
    let sma = &out.series[0].values[0];
    assert_eq!(out.lines, vec!["sma(5)".to_owned()]);
    assert!(sma[..4].iter().all(|v| v.is_nan()), "warm-up: {sma:?}");
    assert_eq!(&sma[4..7], &[3.0, 4.0, 5.0]);

    // A doji (open = close, long shadows) at bar 0.
    let patterns = PatternsParams {
        series: vec![OhlcSeries {
            symbol: "D".into(),
            open: vec![10.0, 10.0],
            high: vec![11.0, 12.0],
            low: vec![9.0, 9.5],
            close: vec![10.0, 11.8],
        }],
        thresholds: Thresholds::default(),
    };
    let (out, _) = run::<Patterns>(&redis, &producer, &patterns).await;
    let doji = out.patterns.iter().position(|p| p == "doji").unwrap();
    assert_eq!(out.series[0].masks[0] & (1 << doji), 1 << doji);
    assert_eq!(out.series[0].masks[1] & (1 << doji), 0);

    // Two uncorrelated assets: the minimum-variance weights are
    // proportional to 1 / variance.
    let portfolio = PortfolioOptParams {
        mu: vec![0.05, 0.03],
        covariance: vec![0.04, 0.0, 0.0, 0.01],
        returns: None,
        assets: None,
        risk_free: 0.0,
        objective: Objective::MinVariance,
        max_weight: 1.0,
        tolerance: 1e-12,
        max_iterations: 100_000,
        seed: 1,
        samples: 1_024,
    };
    let (out, _) = run::<PortfolioOpt>(&redis, &producer, &portfolio).await;
    assert!((out.weights[0] - 0.2).abs() < 1e-8, "{out:?}");
    assert!((out.weights[1] - 0.8).abs() < 1e-8, "{out:?}");

    // Bad parameters never leave the producer.
    let bad = MonteCarloParams {
        sigma: -1.0,
        ..MonteCarloParams {
            s0: 100.0,
            strike: 100.0,
            rate: 0.0,
            dividend: 0.0,
            sigma: 0.2,
            maturity: 1.0,
            steps: 1,
            paths: 10,
            seed: 1,
            percentiles: vec![],
        }
    };
    let err = producer
        .submit(Task::new("monte_carlo", &bad).unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, ProducerError::BadParams { .. }), "{err}");
}
