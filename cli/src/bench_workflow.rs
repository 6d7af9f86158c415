//! `tandem bench --phases chain | fan`: what a workflow's step boundary
//! costs, on a private fleet of `--workers` CPU workers.
//!
//! - chain: one workflow of `--n` no-op nodes in a chain. Per node: the wall
//!   time from submit to the last node's end, over `--n`; and each step
//!   boundary, the time from a node's end (`finished_at_ms`) to its child's
//!   start (`started_at_ms`), both on the Redis clock (whole ms).
//! - fan: one root, `--n` no-op children of it (a group), one node that
//!   waits for all of them (a chord): the wall time from submit to the
//!   chord's end, and nodes per second.

use std::time::{Duration, Instant};

use serde::Serialize;

use tandem_producer::{Producer, Task, Workflow};
use tandem_shared::Config;
use tandem_shared::kind::builtin::Noop;
use tandem_shared::store::Store;

use super::bench::BenchArgs;
use super::local::LocalWorkers;

/// One run of the chain or fan phase (in `tandem bench --json`).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct WorkflowFigures {
    /// Nodes in the workflow (fan: the root, `--n` and the chord).
    pub nodes: usize,
    /// From just before the submit call to the workflow's end, seen by the
    /// producer.
    pub wall_s: f64,
    /// The submit call alone.
    pub submit_s: f64,
    /// Chain: a node's end to its child's start, on the Redis clock (whole
    /// ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boundary_p50_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boundary_p99_ms: Option<i64>,
}

fn noop() -> anyhow::Result<Task> {
    Ok(Task::of::<Noop>(&rmpv::Value::Nil)?)
}

async fn workers(store: &Store, config: &Config, args: &BenchArgs) -> anyhow::Result<LocalWorkers> {
    let env = vec![
        ("TANDEM_REDIS_URL", config.redis_url.clone()),
        ("TANDEM_PREFIX", config.prefix.clone()),
        ("TANDEM_CONCURRENCY", args.concurrency.to_string()),
        ("TANDEM_CLASSES", "cpu".to_owned()),
        ("TANDEM_LOG_LEVEL", "warn".to_owned()),
    ];
    let workers = LocalWorkers::start_registered(store, args.workers, &env).await?;
    // Settle into the blocking wait, as the other phases do.
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(workers)
}

pub(crate) async fn chain(config: &Config, args: &BenchArgs) -> anyhow::Result<WorkflowFigures> {
    let store = Store::connect(config).await?;
    let producer = Producer::connect(config).await?;
    let _workers = workers(&store, config, args).await?;
    let n = args.n.max(2);
    let mut workflow = Workflow::new().node("n0", noop()?);
    for i in 1..n {
        let parent = format!("n{}", i - 1);
        workflow = workflow.node_after(&format!("n{i}"), noop()?, &[parent.as_str()]);
    }
    let started = Instant::now();
    let handle = producer.submit_workflow(workflow).await?;
    let submitted = started.elapsed();
    let outcome = handle.wait(Duration::from_secs(600)).await?;
    let wall = started.elapsed();
    anyhow::ensure!(
        outcome.status == "succeeded",
        "the chain ended {}",
        outcome.status
    );
    let state = handle
        .state()
        .await?
        .ok_or_else(|| anyhow::anyhow!("workflow gone"))?;
    let mut gaps: Vec<i64> = Vec::with_capacity(n);
    for pair in state.nodes.windows(2) {
        if let (Some(end), Some(start)) =
            (pair[0].record.finished_at_ms, pair[1].record.started_at_ms)
        {
            gaps.push(start as i64 - end as i64);
        }
    }
    anyhow::ensure!(!gaps.is_empty(), "no node of the chain has its times");
    gaps.sort_unstable();
    let at = |q: f64| gaps[((gaps.len() - 1) as f64 * q).round() as usize];
    println!(
        "  chain of {n} no-op nodes: {:.3} s, {:.0} µs per node (submit to last end); \
         step boundary (end to child's start, Redis clock): p50 {} ms, p99 {} ms, max {} ms",
        wall.as_secs_f64(),
        wall.as_secs_f64() * 1e6 / n as f64,
        at(0.5),
        at(0.99),
        gaps[gaps.len() - 1]
    );
    Ok(WorkflowFigures {
        nodes: n,
        wall_s: wall.as_secs_f64(),
        submit_s: submitted.as_secs_f64(),
        boundary_p50_ms: Some(at(0.5)),
        boundary_p99_ms: Some(at(0.99)),
    })
}

pub(crate) async fn fan(config: &Config, args: &BenchArgs) -> anyhow::Result<WorkflowFigures> {
    let store = Store::connect(config).await?;
    let producer = Producer::connect(config).await?;
    let _workers = workers(&store, config, args).await?;
    let n = args.n.max(1);
    let names: Vec<String> = (0..n).map(|i| format!("f{i}")).collect();
    let mut workflow = Workflow::new().node("root", noop()?);
    for name in &names {
        workflow = workflow.node_after(name, noop()?, &["root"]);
    }
    let parents: Vec<&str> = names.iter().map(String::as_str).collect();
    workflow = workflow.node_after("chord", noop()?, &parents);
    let started = Instant::now();
    let handle = producer.submit_workflow(workflow).await?;
    let submitted = started.elapsed();
    let outcome = handle.wait(Duration::from_secs(600)).await?;
    let wall = started.elapsed();
    anyhow::ensure!(
        outcome.status == "succeeded",
        "the fan ended {}",
        outcome.status
    );
    println!(
        "  fan-out of {n} no-op nodes and a chord over them: {:.3} s (submit {:.3} s), {:.0} nodes/s",
        wall.as_secs_f64(),
        submitted.as_secs_f64(),
        (n + 2) as f64 / wall.as_secs_f64()
    );
    Ok(WorkflowFigures {
        nodes: n + 2,
        wall_s: wall.as_secs_f64(),
        submit_s: submitted.as_secs_f64(),
        boundary_p50_ms: None,
        boundary_p99_ms: None,
    })
}
