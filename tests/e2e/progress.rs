//! Progress reports: a handler's reports reach the task record, the
//! `progress` events and the producer's `TaskHandle::progress()` stream;
//! the stepped kinds (`monte_carlo`, `risk`, `portfolio_opt`, here the
//! cheap `split_sum` that runs the same steps) report their steps;
//! `tandem wait` and `tandem task` show them. (`train` reports its epochs:
//! `model_kinds.rs`.)

use std::process::Command;
use std::time::Duration;

use futures_util::StreamExt;
use redis::AsyncCommands;
use tandem_producer::Task;
use tandem_shared::Status;
use tandem_shared::kind::builtin::{Spin, SpinParams, SplitSum, SplitSumParams};

use crate::support::{RedisServer, WorkerProcess, bin};

#[tokio::test]
async fn a_handlers_reports_reach_the_record_the_events_and_the_producers_stream() {
    let redis = RedisServer::start();
    let _worker = WorkerProcess::start(
        &redis,
        &[
            ("TANDEM_TEST_KINDS", "true"),
            ("TANDEM_PROGRESS_INTERVAL_MS", "50"),
        ],
    )
    .await;
    let producer = redis.producer().await;
    const SPIN_MS: u64 = 1_500;
    let handle = producer
        .submit_handle(
            Task::of::<Spin>(&SpinParams {
                ms: SPIN_MS,
                ignore_stop: false,
            })
            .unwrap(),
        )
        .await
        .unwrap();
    // The stream ends when the task does.
    let reports: Vec<_> = tokio::time::timeout(
        Duration::from_secs(120),
        handle.progress().collect::<Vec<_>>(),
    )
    .await
    .expect("the progress stream ends with the task");
    let reports: Vec<_> = reports.into_iter().map(|r| r.unwrap()).collect();
    let outcome = handle.wait(Duration::from_secs(60)).await.unwrap();
    assert_eq!(outcome.status, Status::Succeeded);

    // A 1.5 s spin reporting every millisecond, written at most every
    // 50 ms: several reports, in order, each saying how far it is.
    assert!(reports.len() >= 2, "{reports:?}");
    for pair in reports.windows(2) {
        assert!(pair[0].fraction <= pair[1].fraction, "{reports:?}");
    }
    for report in &reports {
        assert!((0.0..=1.0).contains(&report.fraction));
        assert!(
            report.message.starts_with("spun ") && report.message.ends_with(" of 1500 ms"),
            "{report:?}"
        );
    }

    // The record keeps the last report; the events stream has them all.
    let record = producer.record(handle.id()).await.unwrap().unwrap();
    let last = record.progress.expect("the record keeps the last report");
    assert!(last.at_ms.is_some());
    assert!(last.message.ends_with(" of 1500 ms"));
    let mut conn = redis.conn().await;
    let fraction: String = conn
        .hget(format!("tandem:{{cpu}}:task:{}", handle.id()), "progress")
        .await
        .unwrap();
    assert!(fraction.parse::<f64>().is_ok(), "{fraction}");
    let events: redis::streams::StreamRangeReply =
        conn.xrange_all("tandem:{cpu}:events").await.unwrap();
    let progress_events = events
        .ids
        .iter()
        .filter(|e| {
            e.get::<String>("event").as_deref() == Some("progress")
                && e.get::<String>("id") == Some(handle.id().to_string())
        })
        .count();
    assert!(progress_events >= reports.len(), "{progress_events} events");
}

#[tokio::test]
async fn a_stepped_kind_reports_its_steps_and_the_cli_shows_them() {
    let redis = RedisServer::start();
    let _worker = WorkerProcess::start(
        &redis,
        &[
            ("TANDEM_TEST_KINDS", "true"),
            ("TANDEM_PROGRESS_INTERVAL_MS", "0"),
        ],
    )
    .await;
    let producer = redis.producer().await;
    // Eight blocks of 100 ms, run whole (one worker, no GPU) in steps of
    // two blocks: four steps.
    let params = SplitSumParams {
        n: 8_000,
        block: 1_000,
        block_ms: 100,
        fail_block: None,
    };
    let id = producer
        .submit(Task::of::<SplitSum>(&params).unwrap())
        .await
        .unwrap();
    let out = Command::new(bin("tandem"))
        .args(["wait", &id.to_string(), "--timeout-ms", "300000"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("REDIS_URL", redis.url())
        .output()
        .expect("run tandem");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // Not a terminal: a plain line per report, the last step among them
    // (the stream starts from the record, so the first steps may be
    // behind it already).
    assert!(
        stderr.contains(&format!("{id}: progress 100.0 % step 4 of 4")),
        "{stderr}"
    );

    let record = producer.record(id).await.unwrap().unwrap();
    let last = record.progress.unwrap();
    assert_eq!((last.fraction, last.message.as_str()), (1.0, "step 4 of 4"));
    let out = Command::new(bin("tandem"))
        .args(["task", &id.to_string()])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("REDIS_URL", redis.url())
        .output()
        .expect("run tandem");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("progress    100.0 % step 4 of 4"),
        "{stdout}"
    );
    // split_sum is a `parallel` kind: its events are that class's.
    let mut conn = redis.conn().await;
    let events: redis::streams::StreamRangeReply =
        conn.xrange_all("tandem:{parallel}:events").await.unwrap();
    let steps: Vec<String> = events
        .ids
        .iter()
        .filter(|e| e.get::<String>("event").as_deref() == Some("progress"))
        .filter_map(|e| e.get::<String>("progress_msg"))
        .collect();
    // Every step is written unless reports pile up behind a slow write
    // (then only the latest goes): in order, ending with the last.
    assert_eq!(
        steps.last().map(String::as_str),
        Some("step 4 of 4"),
        "{steps:?}"
    );
    let mut sorted = steps.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, steps, "in step order, each once");
}
