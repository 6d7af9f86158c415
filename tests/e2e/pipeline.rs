//! The trading pipeline's glue kinds, `features` and `book`, end to end:
//! examples/workflows/trading-pipeline.yaml as its header says to run it
//! (the model registered with `tandem model new`, the spec with `tandem
//! flow submit`), and a bad join refused naming the field.

use serde_json::{Value, json};
use tandem_producer::{Task, Workflow, WorkflowRef};
use tandem_shared::Status;

use crate::support::{RedisServer, WorkerProcess, tandem, text};

#[tokio::test]
async fn the_trading_pipeline_example_runs_with_flow_submit() {
    let redis = RedisServer::start();
    let _worker = WorkerProcess::start(&redis, &[("TANDEM_CONCURRENCY", "2")]).await;
    let out = tandem(
        &redis,
        &[
            "model",
            "new",
            "pipeline_mlp",
            "--layers",
            "56,32,1",
            "--activation",
            "tanh",
            "--seed",
            "23",
            "--upload",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/workflows/trading-pipeline.yaml"
    );
    let out = tandem(&redis, &["flow", "submit", example, "--wait"]);
    let shown = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{shown}{}", text(&out.stderr));
    let id = text(&out.stderr)
        .trim()
        .strip_prefix("submitted workflow ")
        .unwrap()
        .to_owned();
    let out = tandem(&redis, &["flow", "status", &id, "--json"]);
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["status"], "succeeded", "{status}");
    for node in status["nodes"].as_array().unwrap() {
        assert_eq!(node["status"], "succeeded", "{node}");
    }
    let report = &status["result"]["report"];
    // The book keeps the top 10 of the 12 symbols, each named once.
    let symbols: Vec<&str> = report["symbols"]
        .as_array()
        .expect("symbols")
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert_eq!(symbols.len(), 10, "{report}");
    let mut distinct = symbols.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), 10, "{report}");
    let weights: Vec<f64> = report["weights"]
        .as_array()
        .expect("weights")
        .iter()
        .map(|w| w.as_f64().unwrap())
        .collect();
    assert_eq!(weights.len(), 10, "{report}");
    let total: f64 = weights.iter().sum();
    assert!((total - 1.0).abs() < 1e-9, "{report}");
    assert!(weights.iter().all(|w| (-1e-12..=0.2 + 1e-9).contains(w)));
    let var = report["var"].as_array().expect("var");
    let cvar = report["cvar"].as_array().expect("cvar");
    assert_eq!((var.len(), cvar.len()), (2, 2), "{report}");
    assert!(var[1].as_f64() >= var[0].as_f64(), "{report}");
    assert!(cvar[0].as_f64() >= var[0].as_f64(), "{report}");
    assert!(
        report["sharpe"].as_f64().is_some_and(|s| s > 0.0),
        "{report}"
    );
}

/// A window longer than the indicators' defined values is refused by the
/// worker that runs `features`, naming the series, the line and the bar;
/// fail fast cancels the child.
#[tokio::test]
async fn a_window_into_the_warm_up_fails_naming_the_line_and_bar() {
    let redis = RedisServer::start();
    let _worker = WorkerProcess::start(&redis, &[]).await;
    let producer = redis.producer().await;
    let closes = [100.0, 101.0, 100.5, 102.0, 101.5];
    let workflow = Workflow::new()
        .node(
            "indicators",
            Task::new(
                "indicators",
                &json!({"series": [{"symbol": "AAA", "closes": closes}],
                        "indicators": [{"type": "sma", "period": 3}]}),
            )
            .unwrap(),
        )
        .node_after(
            "features",
            Task::new(
                "features",
                &json!({"indicators": WorkflowRef::to("indicators"), "window": 4}),
            )
            .unwrap(),
            &["indicators"],
        )
        .node_after(
            "after",
            Task::new(
                "echo",
                &json!({"x": WorkflowRef::to("features").at("/names")}),
            )
            .unwrap(),
            &["features"],
        );
    let handle = producer.submit_workflow(workflow).await.unwrap();
    let outcome = handle
        .wait(std::time::Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(outcome.status, "failed");
    let features = &outcome.nodes["features"];
    assert_eq!(features.status, Status::Failed);
    let failure = features.failure().expect("a failure");
    assert_eq!(failure.code.to_string(), "BAD_PARAMS");
    assert!(
        failure.message.contains(
            "indicators.series[0] (\"AAA\"): line \"sma(3)\" is NaN at bar 1, inside the window"
        ),
        "{}",
        failure.message
    );
    assert_eq!(outcome.nodes["after"].status, Status::Cancelled);
}
