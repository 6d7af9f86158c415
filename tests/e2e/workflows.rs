//! Workflows: graphs of tasks submitted as one unit, with real redis-server
//! and worker processes. A node starts only after all its parents
//! succeeded, released by its last parent's commit in the same script, and
//! its parameters take its parents' results without the producer seeing
//! them; failures cancel by the workflow's policy, a cancel cascades, and
//! nothing is left behind without a TTL.

use std::collections::HashMap;
use std::time::Duration;

use redis::AsyncCommands;
use serde_json::{Value, json};
use tandem_producer::{
    CancelOutcome, OnFailure, Producer, Task, Workflow, WorkflowCancel, WorkflowRef,
};
use tandem_shared::kind::builtin::{Sleep, SleepParams};
use tandem_shared::{Config, Status, msgpack};

use crate::support::chaos::{Lcg, until_next_fault};
use crate::support::{RedisServer, ScratchDir, WorkerProcess, tandem, text, wait_until};

const WAIT: Duration = Duration::from_secs(60);

fn echo(params: Value) -> Task {
    Task::new("echo", &params).unwrap()
}

fn sleeping_task(ms: u64) -> Task {
    Task::of::<Sleep>(&SleepParams { ms }).unwrap()
}

/// Every key a task or workflow leaves that has no TTL: records, workflow
/// hashes, wait, retry, split and parts hashes (the others are the fleet's
/// and the classes', which live on by design).
async fn keys_without_ttl(redis: &RedisServer) -> Vec<String> {
    let mut conn = redis.conn().await;
    let keys: Vec<String> = conn.keys("tandem:*").await.unwrap();
    let mut left = Vec::new();
    for key in keys {
        let per_task = [
            ":task:",
            ":workflow:",
            ":wait:",
            ":retry:",
            ":split:",
            ":parts:",
        ]
        .iter()
        .any(|part| key.contains(part));
        let ttl: i64 = conn.ttl(&key).await.unwrap();
        if per_task && ttl < 0 {
            left.push(key);
        }
    }
    left
}

#[tokio::test]
async fn chains_groups_and_chords_run_in_order_on_their_parents_results() {
    let redis = RedisServer::start();
    let _worker = WorkerProcess::start(&redis, &[("TANDEM_CONCURRENCY", "4")]).await;
    let producer = redis.producer().await;
    // root -> (left, right) -> join -> last: a chain, a group, a chord.
    let workflow = Workflow::new()
        .node("root", echo(json!({"x": 3, "list": [10, 20, 30]})))
        .node_after(
            "left",
            echo(json!({"v": WorkflowRef::to("root").at("/x")})),
            &["root"],
        )
        .node_after(
            "right",
            echo(json!({"w": WorkflowRef::to("root").at("/list/2")})),
            &["root"],
        )
        .node_after(
            "join",
            echo(json!({"l": WorkflowRef::to("left"), "r": WorkflowRef::to("right").at("/w")})),
            &["left", "right"],
        )
        .node_after(
            "last",
            echo(json!([WorkflowRef::to("join").at("/l/v"), "done"])),
            &["join"],
        );
    let handle = producer.submit_workflow(workflow).await.unwrap();
    let outcome = handle.wait(WAIT).await.unwrap();
    assert_eq!(outcome.status, "succeeded");
    // The workflow's result is its sink's.
    assert_eq!(outcome.results.keys().collect::<Vec<_>>(), vec!["last"]);
    let last: Value = msgpack::decode(&outcome.results["last"]).unwrap();
    assert_eq!(last, json!([3, "done"]));
    let join: Value = outcome.nodes["join"].result().unwrap();
    assert_eq!(join, json!({"l": {"v": 3}, "r": 30}));

    // Each node started after every parent finished, once.
    let state = handle.state().await.unwrap().unwrap();
    let by_name: HashMap<&str, _> = state
        .nodes
        .iter()
        .map(|n| (n.graph.name.as_str(), n))
        .collect();
    for node in &state.nodes {
        assert_eq!(node.status, "succeeded", "{}", node.graph.name);
        assert_eq!(node.record.attempt, Some(1), "{}", node.graph.name);
        let started = node.record.started_at_ms.unwrap();
        for parent in &node.graph.parents {
            let finished = by_name[parent.as_str()].record.finished_at_ms.unwrap();
            assert!(
                started >= finished,
                "{} started before {parent} finished",
                node.graph.name
            );
            assert!(node.released_at_ms.unwrap() >= finished);
        }
    }
    // Nothing is left without a TTL: records, the workflow's hash, no wait
    // hashes.
    assert_eq!(keys_without_ttl(&redis).await, Vec::<String>::new());
}

#[tokio::test]
async fn a_node_waits_while_a_parent_runs_and_starts_when_it_succeeds() {
    let redis = RedisServer::start();
    let _worker = WorkerProcess::start(&redis, &[("TANDEM_CONCURRENCY", "4")]).await;
    let producer = redis.producer().await;
    // `slow` sleeps until it is released by hand: a sleep of 10 minutes
    // would outlast any machine, so the check cannot pass by luck.
    let workflow = Workflow::new()
        .node("fast", echo(json!(1)))
        .node("slow", sleeping_task(600_000))
        .node_after("after_both", echo(json!(2)), &["fast", "slow"]);
    let handle = producer.submit_workflow(workflow).await.unwrap();
    let fast = handle.node("fast").unwrap().wait(WAIT).await.unwrap();
    assert!(fast.succeeded());
    let after = handle.node("after_both").unwrap().id();
    let mut conn = redis.conn().await;
    let key = format!("tandem:{{cpu}}:task:{after}");
    let status: String = conn.hget(&key, "status").await.unwrap();
    assert_eq!(status, "waiting");
    let waiting: u32 = conn.hget(&key, "wf_waiting").await.unwrap();
    assert_eq!(waiting, 1, "one parent (slow) still to succeed");
    assert_eq!(producer.status(after).await.unwrap(), Status::Waiting);
    // The slow parent fails (cancelled): fail fast cancels the waiting node.
    let slow = handle.node("slow").unwrap().id();
    producer.cancel(slow).await.unwrap();
    let outcome = handle.wait(WAIT).await.unwrap();
    assert_eq!(outcome.status, "failed");
    assert_eq!(outcome.nodes["after_both"].status, Status::Cancelled);
    assert_eq!(outcome.nodes["after_both"].record.started_at_ms, None);
    assert!(outcome.results.is_empty());
}

#[tokio::test]
async fn fail_fast_cancels_the_rest_after_the_nodes_own_retries() {
    let redis = RedisServer::start();
    let _worker = WorkerProcess::start(
        &redis,
        &[("TANDEM_CONCURRENCY", "4"), ("TANDEM_RETRY_BASE_MS", "10")],
    )
    .await;
    let producer = redis.producer().await;
    let failing = Task::new("fail", &json!({"code": "BOOM", "retry": true}))
        .unwrap()
        .max_attempts(2);
    let workflow = Workflow::new()
        .node("bad", failing)
        .node("long", sleeping_task(600_000))
        .node_after("after_bad", echo(json!(1)), &["bad"])
        .node_after("after_long", echo(json!(2)), &["long"]);
    let handle = producer.submit_workflow(workflow).await.unwrap();
    let outcome = handle.wait(WAIT).await.unwrap();
    assert_eq!(outcome.status, "failed");
    let bad = &outcome.nodes["bad"];
    assert_eq!(bad.status, Status::Failed);
    assert_eq!(bad.record.attempt, Some(2), "its own retries came first");
    // The running branch was stopped, the waiting nodes never started.
    assert_eq!(outcome.nodes["long"].status, Status::Cancelled);
    for name in ["after_bad", "after_long"] {
        assert_eq!(outcome.nodes[name].status, Status::Cancelled, "{name}");
        assert_eq!(outcome.nodes[name].record.started_at_ms, None, "{name}");
    }
    assert_eq!(keys_without_ttl(&redis).await, Vec::<String>::new());
}

#[tokio::test]
async fn continue_lets_independent_branches_finish() {
    let redis = RedisServer::start();
    let _worker = WorkerProcess::start(&redis, &[("TANDEM_CONCURRENCY", "4")]).await;
    let producer = redis.producer().await;
    let workflow = Workflow::new()
        .on_failure(OnFailure::Continue)
        .node("bad", Task::new("fail", &json!({"code": "BOOM"})).unwrap())
        .node("good", echo(json!({"ok": true})))
        .node_after("after_bad", echo(json!(1)), &["bad"])
        .node_after("after_after_bad", echo(json!(1)), &["after_bad"])
        .node_after(
            "after_good",
            echo(json!(WorkflowRef::to("good"))),
            &["good"],
        );
    let handle = producer.submit_workflow(workflow).await.unwrap();
    let outcome = handle.wait(WAIT).await.unwrap();
    assert_eq!(outcome.status, "failed", "a node failed");
    assert_eq!(outcome.nodes["bad"].status, Status::Failed);
    assert_eq!(outcome.nodes["after_bad"].status, Status::Cancelled);
    assert_eq!(outcome.nodes["after_after_bad"].status, Status::Cancelled);
    assert_eq!(outcome.nodes["after_good"].status, Status::Succeeded);
    // The sinks that succeeded are the result.
    let results: Vec<&String> = outcome.results.keys().collect();
    assert_eq!(results, vec!["after_good"]);
    let value: Value = msgpack::decode(&outcome.results["after_good"]).unwrap();
    assert_eq!(value, json!({"ok": true}));
}

#[tokio::test]
async fn cancelling_one_waiting_node_settles_its_workflow() {
    let redis = RedisServer::start();
    // No worker: every node stays queued or waiting.
    let producer = redis.producer().await;
    let workflow = Workflow::new()
        .on_failure(OnFailure::Continue)
        .node("a", echo(json!(1)))
        .node_after("b", echo(json!(2)), &["a"])
        .node_after("c", echo(json!(3)), &["b"]);
    let handle = producer.submit_workflow(workflow).await.unwrap();
    let b = handle.node("b").unwrap().id();
    assert_eq!(producer.cancel(b).await.unwrap(), CancelOutcome::Cancelled);
    // Its descendant went with it; its parent is still queued.
    let state = handle.state().await.unwrap().unwrap();
    let statuses: Vec<(&str, &str)> = state
        .nodes
        .iter()
        .map(|n| (n.graph.name.as_str(), n.status.as_str()))
        .collect();
    assert_eq!(
        statuses,
        vec![("a", "queued"), ("b", "cancelled"), ("c", "cancelled")]
    );
    let a = handle.node("a").unwrap().id();
    assert_eq!(producer.cancel(a).await.unwrap(), CancelOutcome::Cancelled);
    let outcome = handle.wait(WAIT).await.unwrap();
    assert_eq!(outcome.status, "failed");
    assert_eq!(keys_without_ttl(&redis).await, Vec::<String>::new());
}

#[tokio::test]
async fn cancelling_a_workflow_cancels_every_unfinished_node() {
    let redis = RedisServer::start();
    let _worker = WorkerProcess::start(&redis, &[("TANDEM_CONCURRENCY", "2")]).await;
    let producer = redis.producer().await;
    let workflow = Workflow::new()
        .node("done", echo(json!(1)))
        .node("running", sleeping_task(600_000))
        .node_after("waiting", echo(json!(2)), &["running"])
        .node_after("also_waiting", echo(json!(3)), &["running", "done"]);
    let handle = producer.submit_workflow(workflow).await.unwrap();
    handle.node("done").unwrap().wait(WAIT).await.unwrap();
    let running = handle.node("running").unwrap().id();
    wait_until(WAIT, "node running", || {
        let producer = producer.clone();
        async move { producer.status(running).await.unwrap() == Status::Running }
    })
    .await;
    match handle.cancel().await.unwrap() {
        WorkflowCancel::Cancelled { ended, asked } => assert_eq!((ended, asked), (2, 1)),
        other => panic!("{other:?}"),
    }
    let outcome = handle.wait(WAIT).await.unwrap();
    assert_eq!(outcome.status, "cancelled");
    assert_eq!(outcome.nodes["done"].status, Status::Succeeded);
    for name in ["running", "waiting", "also_waiting"] {
        assert_eq!(outcome.nodes[name].status, Status::Cancelled, "{name}");
    }
    assert_eq!(
        handle.cancel().await.unwrap(),
        WorkflowCancel::Finished("cancelled".into())
    );
    assert_eq!(keys_without_ttl(&redis).await, Vec::<String>::new());
}

#[tokio::test]
async fn bad_workflow_files_are_refused_naming_the_node() {
    let redis = RedisServer::start();
    let dir = ScratchDir::new("workflows");
    let cases: Vec<(&str, &str, &str)> = vec![
        (
            "cycle.json",
            r#"{"nodes": [{"name": "a", "kind": "noop", "after": ["b"]},
                          {"name": "b", "kind": "noop", "after": ["a"]}]}"#,
            "node \"a\": it is on a cycle",
        ),
        (
            "missing.yaml",
            "nodes:\n  - name: a\n    kind: noop\n    after: [ghost]\n",
            "node \"a\": parent \"ghost\" is not a node of the workflow",
        ),
        (
            "unknown.json",
            r#"{"nodes": [{"name": "x", "kind": "no_such_kind"}]}"#,
            "node \"x\": kind \"no_such_kind\" is unknown",
        ),
        (
            "path.yaml",
            "nodes:\n  - name: var\n    kind: risk\n    params: {}\n  - name: use\n    kind: echo\n    after: [var]\n    params: {x: {$ref: var, path: /levels/0/nope}}\n",
            "node \"use\": path \"/levels/0/nope\" into the result of \"var\": a risk result has no field \"nope\"",
        ),
        (
            "notparent.json",
            r#"{"nodes": [{"name": "a", "kind": "echo"},
                          {"name": "b", "kind": "echo", "params": {"$ref": "a"}}]}"#,
            "node \"b\": its params take the result of \"a\", which is not one of its parents",
        ),
        (
            "badparams.json",
            r#"{"nodes": [{"name": "s", "kind": "sleep", "params": {"ms": "long"}}]}"#,
            "node \"s\": bad parameters for kind sleep",
        ),
    ];
    for (file, body, expect) in cases {
        let path = dir.path().join(file);
        std::fs::write(&path, body).unwrap();
        let out = tandem(&redis, &["flow", "submit", path.to_str().unwrap()]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{file}: {err}");
        assert!(
            err.contains(expect),
            "{file}: expected {expect:?} in {err:?}"
        );
    }
    // Nothing was written.
    let mut conn = redis.conn().await;
    let keys: Vec<String> = conn.keys("tandem:*").await.unwrap();
    assert!(
        keys.iter()
            .all(|k| !k.contains(":task:") && !k.contains(":workflow:")),
        "{keys:?}"
    );
}

#[tokio::test]
async fn flow_submit_and_status_show_each_nodes_state_device_and_time() {
    let redis = RedisServer::start();
    let _worker = WorkerProcess::start(&redis, &[]).await;
    let dir = ScratchDir::new("workflows");
    let path = dir.path().join("pipeline.yaml");
    std::fs::write(
        &path,
        "on_failure: continue\nnodes:\n  - name: first\n    kind: echo\n    params: {a: 1}\n  - name: second\n    kind: echo\n    after: [first]\n    params: {b: {$ref: first, path: /a}}\n",
    )
    .unwrap();
    let out = tandem(
        &redis,
        &["flow", "submit", path.to_str().unwrap(), "--wait"],
    );
    let shown = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{shown}{}", text(&out.stderr));
    assert!(
        shown.contains("succeeded  (on failure: continue)"),
        "{shown}"
    );
    assert!(shown.contains("second: {\"b\":1}"), "{shown}");
    let id = text(&out.stderr)
        .trim()
        .strip_prefix("submitted workflow ")
        .unwrap()
        .to_owned();
    let out = tandem(&redis, &["flow", "status", &id, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["status"], "succeeded");
    assert_eq!(status["result"], json!({"second": {"b": 1}}));
    for node in status["nodes"].as_array().unwrap() {
        assert_eq!(node["status"], "succeeded");
        assert_eq!(node["device"], "cpu");
        assert!(
            node["run_us"].is_u64() && node["waited_ms"].is_u64(),
            "{node}"
        );
    }
    let out = tandem(&redis, &["flow", "cancel", &id]);
    assert!(text(&out.stdout).contains("had already finished: succeeded"));
    let out = tandem(
        &redis,
        &["flow", "status", "01a21a05-0223-7150-a48a-bb5c548aed3d"],
    );
    assert_eq!(out.status.code(), Some(3), "not found");
}

/// Workflows under chaos: workers SIGKILLed and Redis crashed and restarted
/// from its append-only file while chains and chords run. Every node is
/// released once (one `submitted`-or-release start: its lifecycle events
/// show one start per attempt the record accounts for), never before its
/// parents succeeded, and every workflow succeeds.
#[tokio::test]
async fn nodes_start_once_after_their_parents_under_kills_and_a_redis_restart() {
    const WORKFLOWS: usize = 24;
    const ENV: &[(&str, &str)] = &[
        ("TANDEM_LEASE_TIMEOUT_MS", "1000"),
        ("TANDEM_CONCURRENCY", "4"),
        ("TANDEM_LOG_LEVEL", "warn"),
        ("TANDEM_MAX_DELIVERIES", "100"),
    ];
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    println!("workflow chaos seed {seed}");
    let mut rng = Lcg(seed);
    let mut redis = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let mut workers = [
        WorkerProcess::start(&redis, ENV).await,
        WorkerProcess::start(&redis, ENV).await,
    ];
    let producer = Producer::connect(&Config {
        reconnect_timeout_ms: 60_000,
        ..redis.config()
    })
    .await
    .unwrap();
    let mut handles = Vec::new();
    for _ in 0..WORKFLOWS {
        // a -> (b, c) -> d -> e, each sleeping as long as its parent says.
        let workflow = Workflow::new()
            .node("a", sleeping_task(400))
            .node_after(
                "b",
                Task::new(
                    "sleep",
                    &json!({"ms": WorkflowRef::to("a").at("/slept_ms")}),
                )
                .unwrap(),
                &["a"],
            )
            .node_after("c", sleeping_task(300), &["a"])
            .node_after(
                "d",
                Task::new(
                    "sleep",
                    &json!({"ms": WorkflowRef::to("b").at("/slept_ms")}),
                )
                .unwrap(),
                &["b", "c"],
            )
            .node_after(
                "e",
                Task::new(
                    "sleep",
                    &json!({"ms": WorkflowRef::to("d").at("/slept_ms")}),
                )
                .unwrap(),
                &["d"],
            );
        handles.push(producer.submit_workflow(workflow).await.unwrap());
    }
    // Faults while they run: a worker killed, Redis crashed, another kill.
    for fault in 0..3 {
        until_next_fault(&mut rng).await;
        if fault == 1 {
            redis.crash_and_restart();
        } else {
            let victim = rng.next(workers.len() as u64) as usize;
            workers[victim].signal("KILL");
            workers[victim] = WorkerProcess::spawn(&redis, ENV);
        }
    }
    let mut started_events: HashMap<String, u32> = HashMap::new();
    let mut released_nodes: Vec<(String, usize)> = Vec::new();
    for handle in &handles {
        let outcome = handle.wait(Duration::from_secs(120)).await.unwrap();
        assert_eq!(outcome.status, "succeeded", "workflow {}", handle.id());
        let state = handle.state().await.unwrap().unwrap();
        let by_name: HashMap<&str, _> = state
            .nodes
            .iter()
            .map(|n| (n.graph.name.as_str(), n))
            .collect();
        for node in &state.nodes {
            // The first start of the node (an attempt a dead worker began
            // is in its history) came after every parent finished.
            let history: Vec<Value> = node
                .record
                .history
                .as_deref()
                .map(|h| serde_json::from_str(h).unwrap())
                .unwrap_or_default();
            let first_start = history
                .iter()
                .filter_map(|a| a["started_at_ms"].as_str()?.parse::<u64>().ok())
                .chain(node.record.started_at_ms)
                .min()
                .unwrap();
            for parent in &node.graph.parents {
                let finished = by_name[parent.as_str()].record.finished_at_ms.unwrap();
                assert!(
                    first_start >= finished,
                    "{} started before {parent}",
                    node.graph.name
                );
            }
            started_events.insert(node.graph.id.to_string(), 1 + history.len() as u32);
            released_nodes.push((node.graph.id.to_string(), node.graph.parents.len()));
        }
    }
    // Every `started` event of a node is an attempt its record accounts
    // for: a release twice would start it once more than that.
    let mut conn = redis.conn().await;
    let events: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg("tandem:{cpu}:events")
        .arg("-")
        .arg("+")
        .query_async::<redis::streams::StreamRangeReply>(&mut conn)
        .await
        .unwrap()
        .ids
        .into_iter()
        .map(|e| {
            let map = e
                .map
                .into_iter()
                .filter_map(|(k, v)| Some((k, redis::from_redis_value::<String>(v).ok()?)))
                .collect();
            (e.id, map)
        })
        .collect();
    let mut starts: HashMap<String, u32> = HashMap::new();
    let mut releases: HashMap<String, u32> = HashMap::new();
    for (_, event) in &events {
        match event.get("event").map(String::as_str) {
            Some("started") => *starts.entry(event["id"].clone()).or_default() += 1,
            Some("released") => *releases.entry(event["id"].clone()).or_default() += 1,
            _ => {}
        }
    }
    for (id, allowed) in &started_events {
        let seen = starts.get(id).copied().unwrap_or(0);
        assert!(
            seen >= 1 && seen <= *allowed,
            "node {id}: {seen} starts, {allowed} attempts recorded"
        );
    }
    // Each node with parents was released exactly once (by its last
    // parent's commit), a root never: kills and the restart neither
    // repeated nor lost a release.
    assert_eq!(released_nodes.len(), WORKFLOWS * 5);
    for (id, parents) in &released_nodes {
        let seen = releases.get(id).copied().unwrap_or(0);
        assert_eq!(
            seen,
            u32::from(*parents > 0),
            "node {id} ({parents} parents): released {seen} times"
        );
    }
}

/// A parent's result above `blob_threshold_bytes` is committed as a blob
/// reference; its child's placeholder, and a path into it, still see the
/// result itself, read from the blob before the placeholders are filled.
/// The worker's payload limit (8 KiB here) holds the entries as they come
/// from the stream, not the parameters filled from a 15 KB result.
#[tokio::test]
async fn a_childs_path_reaches_into_a_parents_result_that_went_by_blob() {
    let redis = RedisServer::start();
    let threshold = ("TANDEM_BLOB_THRESHOLD_BYTES", "4096");
    let limit = ("TANDEM_MAX_PAYLOAD_BYTES", "8192");
    let _worker = WorkerProcess::start(&redis, &[threshold, limit]).await;
    let config = Config {
        blob_threshold_bytes: 4096,
        ..redis.config()
    };
    let producer = Producer::connect(&config).await.unwrap();
    let big: Vec<u64> = (0..5_000).collect();
    let workflow = Workflow::new()
        .node("root", echo(json!({"big": big, "tag": "root"})))
        .node_after(
            "pick",
            echo(json!({"third": WorkflowRef::to("root").at("/big/3"),
                        "tag": WorkflowRef::to("root").at("/tag")})),
            &["root"],
        )
        .node_after(
            "whole",
            echo(json!({"n": WorkflowRef::to("root")})),
            &["root"],
        );
    let handle = producer.submit_workflow(workflow).await.unwrap();
    let outcome = handle.wait(WAIT).await.unwrap();
    assert_eq!(outcome.status, "succeeded", "{:?}", outcome.nodes);
    let pick: Value = outcome.nodes["pick"].result().unwrap();
    assert_eq!(pick, json!({"third": 3, "tag": "root"}));
    // The root's result itself went by reference (so the test tests the
    // blob path), and the whole of it reached `whole`.
    let mut conn = redis.conn().await;
    let blobs: Vec<String> = conn.keys("tandem:{blob:*").await.unwrap();
    assert!(!blobs.is_empty(), "the root's result went inline");
    let whole: Value = outcome.nodes["whole"].result().unwrap();
    assert_eq!(whole["n"]["big"].as_array().map(Vec::len), Some(5_000));
    assert_eq!(whole["n"]["tag"], json!("root"));
}

/// A node with children sends a result above `workflow_blob_threshold_bytes`
/// (64 KiB by default, well under `blob_threshold_bytes`' 1 MiB) as a blob
/// reference, so the commit releasing its child passes the reference, not
/// ~100 KB; the child still gets the bytes. A sink's result of the same
/// size stays inline (the workflow's outcome is unchanged), and so does the
/// parent's on a worker with the setting off.
#[tokio::test]
async fn a_parents_large_result_goes_to_its_child_by_reference() {
    use tandem_shared::blob::BlobRef;
    let big = "f".repeat(100 * 1024);
    let chain = || {
        Workflow::new()
            .node("a", echo(json!({"big": big})))
            .node_after(
                "b",
                echo(json!({"got": WorkflowRef::to("a").at("/big")})),
                &["a"],
            )
    };
    for (setting, parent_by_blob) in [(None, true), (Some("0"), false)] {
        let redis = RedisServer::start();
        let env: Vec<(&str, &str)> = setting
            .map(|v| ("TANDEM_WORKFLOW_BLOB_THRESHOLD_BYTES", v))
            .into_iter()
            .collect();
        let _worker = WorkerProcess::start(&redis, &env).await;
        let producer = redis.producer().await;
        let handle = producer.submit_workflow(chain()).await.unwrap();
        let outcome = handle.wait(WAIT).await.unwrap();
        assert_eq!(outcome.status, "succeeded", "{:?}", outcome.nodes);
        // The child received the parent's bytes: its result echoes them.
        let b: Value = outcome.nodes["b"].result().unwrap();
        assert_eq!(b["got"].as_str(), Some(big.as_str()));
        let state = producer.workflow_state(handle.id()).await.unwrap().unwrap();
        let result = |name: &str| {
            let node = state.nodes.iter().find(|n| n.graph.name == name).unwrap();
            node.record.result.clone().unwrap()
        };
        let a = result("a");
        assert_eq!(
            BlobRef::detect(&a).is_some(),
            parent_by_blob,
            "setting {setting:?}: a's result ({} bytes) went by blob",
            a.len()
        );
        // The sink keeps the normal threshold: its ~100 KB result is inline.
        let b = result("b");
        assert!(BlobRef::detect(&b).is_none() && b.len() > 100 * 1024);
    }
}

/// The workflow hash's `status` and `remaining`.
async fn workflow_counts(redis: &RedisServer, id: impl std::fmt::Display) -> (String, i64) {
    let mut conn = redis.conn().await;
    let key = format!("tandem:{{cpu}}:workflow:{id}");
    let (status, remaining): (String, i64) = redis::cmd("HMGET")
        .arg(&key)
        .arg("status")
        .arg("remaining")
        .query_async(&mut conn)
        .await
        .unwrap();
    (status, remaining)
}

/// Regression: `tandem dlq requeue` of a dead workflow node counted it
/// final twice (once when it was dead-lettered, once at its next end), so
/// the workflow ended while another node still ran. A requeue counts it
/// as not final again, and reopens a workflow it had ended.
#[tokio::test]
async fn a_requeued_dead_node_counts_once_in_its_workflow() {
    let redis = RedisServer::start();
    let _worker = WorkerProcess::start(&redis, &[("TANDEM_CONCURRENCY", "4")]).await;
    let producer = redis.producer().await;
    let failing = || Task::new("fail", &json!({"code": "BOOM"})).unwrap();
    let workflow = Workflow::new()
        .on_failure(OnFailure::Continue)
        .node("bad", failing())
        .node("long", sleeping_task(600_000));
    let handle = producer.submit_workflow(workflow).await.unwrap();
    let bad = handle.node("bad").unwrap();
    let first = bad.wait(WAIT).await.unwrap();
    let letter = first.record.dead_letter.clone().expect("a dead letter");
    assert_eq!(
        workflow_counts(&redis, handle.id()).await,
        ("running".to_owned(), 1)
    );

    let out = tandem(&redis, &["dlq", "requeue", &letter]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_until(WAIT, "the requeued node's new dead letter", || async {
        let record = producer.record(bad.id()).await.unwrap();
        record.is_some_and(|r| r.dead_letter.is_some_and(|d| d != letter))
    })
    .await;
    // `long` still runs: the workflow is not over, and counts it alone.
    assert_eq!(
        workflow_counts(&redis, handle.id()).await,
        ("running".to_owned(), 1)
    );
    handle.cancel().await.unwrap();
    let outcome = handle.wait(WAIT).await.unwrap();
    assert_eq!(outcome.status, "cancelled");
    assert_eq!(
        workflow_counts(&redis, handle.id()).await,
        ("cancelled".to_owned(), 0)
    );

    // A requeue reopens a workflow its failure had ended, until it ends
    // again.
    let alone = producer
        .submit_workflow(Workflow::new().node("only", failing()))
        .await
        .unwrap();
    let only = alone.node("only").unwrap();
    let letter = only.wait(WAIT).await.unwrap().record.dead_letter.unwrap();
    assert_eq!(
        workflow_counts(&redis, alone.id()).await,
        ("failed".to_owned(), 0)
    );
    let out = tandem(&redis, &["dlq", "requeue", &letter]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_until(WAIT, "the reopened workflow to end again", || async {
        let record = producer.record(only.id()).await.unwrap();
        record.is_some_and(|r| r.dead_letter.is_some_and(|d| d != letter))
    })
    .await;
    assert_eq!(
        workflow_counts(&redis, alone.id()).await,
        ("failed".to_owned(), 0)
    );
    let mut conn = redis.conn().await;
    let failed: i64 = conn
        .hget(format!("tandem:{{cpu}}:workflow:{}", alone.id()), "failed")
        .await
        .unwrap();
    assert_eq!(failed, 1);
    assert_eq!(keys_without_ttl(&redis).await, Vec::<String>::new());
}

/// A node's release is a lifecycle event, `released`, naming the parent
/// whose commit released it, between that commit's `succeeded` and the
/// node's `started`.
#[tokio::test]
async fn a_node_release_is_a_lifecycle_event() {
    let redis = RedisServer::start();
    let _worker = WorkerProcess::start(&redis, &[("TANDEM_CONCURRENCY", "4")]).await;
    let producer = redis.producer().await;
    let workflow = Workflow::new()
        .node("a", echo(json!(1)))
        .node("b", echo(json!(2)))
        .node_after("c", echo(json!(3)), &["a", "b"]);
    let handle = producer.submit_workflow(workflow).await.unwrap();
    assert_eq!(handle.wait(WAIT).await.unwrap().status, "succeeded");
    let c = handle.node("c").unwrap().id().to_string();
    let mut conn = redis.conn().await;
    let entries: redis::streams::StreamRangeReply =
        conn.xrange_all("tandem:{cpu}:events").await.unwrap();
    let events: Vec<(String, String, Option<String>)> = entries
        .ids
        .iter()
        .map(|e| {
            let get = |name: &str| e.get::<String>(name);
            (
                get("event").unwrap_or_default(),
                get("id").unwrap_or_default(),
                get("parent_node"),
            )
        })
        .collect();
    let released: Vec<usize> = (0..events.len())
        .filter(|&i| events[i].0 == "released")
        .collect();
    assert_eq!(released.len(), 1, "one release, of c: {events:?}");
    let at = released[0];
    assert_eq!(events[at].1, c);
    let parent = events[at].2.clone().expect("parent_node");
    let parent_id = handle.node(&parent).unwrap().id().to_string();
    let position = |event: &str, id: &str| {
        events
            .iter()
            .position(|(e, i, _)| e == event && i == id)
            .unwrap_or_else(|| panic!("no {event} of {id}: {events:?}"))
    };
    // Its last parent's success came first; the other parent's too.
    assert_eq!(position("succeeded", &parent_id) + 1, at, "{events:?}");
    let other = if parent == "a" { "b" } else { "a" };
    assert!(position("succeeded", &handle.node(other).unwrap().id().to_string()) < at);
    assert!(position("started", &c) > at);
}

/// A path projects a parent's result into the shape the next kind takes:
/// a portfolio optimised from a returns matrix, its weights the book of a
/// historical VaR over the same matrix, and `*` collecting every level's
/// VaR into one array (a negative index counting from the end). A path
/// that the parent kind's result cannot hold is refused at submit, naming
/// the node.
#[tokio::test]
async fn paths_project_results_into_the_next_kinds_inputs() {
    let redis = RedisServer::start();
    let _worker = WorkerProcess::start(&redis, &[("TANDEM_CONCURRENCY", "4")]).await;
    let producer = redis.producer().await;
    // 60 periods of 4 assets, from a fixed generator.
    let mut lcg = Lcg(7);
    let returns: Vec<f64> = (0..60 * 4)
        .map(|k| 0.0005 * (k % 4) as f64 + 0.02 * (lcg.next(1_000_000) as f64 / 1e6 - 0.5))
        .collect();
    let opt = Task::new(
        "portfolio_opt",
        &json!({
            "returns": returns, "assets": 4, "objective": "min_variance",
            "max_weight": 0.6, "samples": 256, "seed": 3,
        }),
    )
    .unwrap();
    let var = Task::new(
        "risk",
        &json!({
            "method": "historical",
            "weights": WorkflowRef::to("opt").at("/weights"),
            "returns": returns,
            "confidence": [0.95, 0.99],
        }),
    )
    .unwrap();
    let report = echo(json!({
        "vars": WorkflowRef::to("var").at("/levels/*/var"),
        "last": WorkflowRef::to("var").at("/levels/-1/confidence"),
        "weights": WorkflowRef::to("opt").at("/weights"),
    }));
    let workflow = Workflow::new()
        .node("opt", opt.clone())
        .node_after("var", var.clone(), &["opt"])
        .node_after("report", report, &["var", "opt"]);
    let handle = producer.submit_workflow(workflow).await.unwrap();
    let outcome = handle.wait(WAIT).await.unwrap();
    assert_eq!(outcome.status, "succeeded");
    let weights: Vec<f64> = outcome.nodes["opt"].result::<Value>().unwrap()["weights"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_f64().unwrap())
        .collect();
    assert_eq!(weights.len(), 4);
    let levels: Value = outcome.nodes["var"].result().unwrap();
    let vars: Vec<Value> = levels["levels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["var"].clone())
        .collect();
    assert_eq!(vars.len(), 2);
    let report: Value = msgpack::decode(&outcome.results["report"]).unwrap();
    assert_eq!(
        report,
        json!({"vars": vars, "last": 0.99, "weights": weights})
    );
    // The VaR is the optimised book's: the same risk task with the weights
    // written out gives the same levels.
    let direct = Task::new(
        "risk",
        &json!({
            "method": "historical", "weights": weights, "returns": returns,
            "confidence": [0.95, 0.99],
        }),
    )
    .unwrap();
    let id = producer.submit(direct).await.unwrap();
    let direct: Value = producer.wait(id, WAIT).await.unwrap().result().unwrap();
    assert_eq!(direct["levels"], levels["levels"]);

    // A path into a field the parent kind's result does not have, past a
    // wildcard: refused before anything is sent.
    let bad = Workflow::new().node("opt", opt).node_after(
        "var",
        Task::new(
            "echo",
            &json!({"w": WorkflowRef::to("opt").at("/weights/*/value")}),
        )
        .unwrap(),
        &["opt"],
    );
    let err = producer.submit_workflow(bad).await.unwrap_err().to_string();
    assert!(
        err.contains("node \"var\": path \"/weights/*/value\" into the result of \"opt\""),
        "{err}"
    );
}

/// examples/workflows/portfolio-var.yaml, as its header says to run it:
/// three kinds as one workflow, each step's inputs projected from its
/// parents' results.
#[tokio::test]
async fn the_portfolio_var_example_runs_with_flow_submit() {
    let redis = RedisServer::start();
    let _worker = WorkerProcess::start(&redis, &[("TANDEM_CONCURRENCY", "2")]).await;
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/workflows/portfolio-var.yaml"
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
    let report = &status["result"]["report"];
    let weights = report["weights"].as_array().expect("weights");
    assert_eq!(weights.len(), 4, "{report}");
    let total: f64 = weights.iter().map(|w| w.as_f64().unwrap()).sum();
    assert!((total - 1.0).abs() < 1e-9, "{report}");
    assert!(weights.iter().all(|w| w.as_f64().unwrap() <= 0.5 + 1e-9));
    let var = report["var"].as_array().expect("var");
    let cvar = report["cvar"].as_array().expect("cvar");
    assert_eq!((var.len(), cvar.len()), (2, 2), "{report}");
    // 99 % VaR at least the 95 %, and each CVaR at least its VaR.
    assert!(var[1].as_f64() >= var[0].as_f64(), "{report}");
    assert!(cvar[0].as_f64() >= var[0].as_f64(), "{report}");
    assert_eq!(report["confidence"], json!(0.99));
    for node in status["nodes"].as_array().unwrap() {
        assert_eq!(node["status"], "succeeded", "{node}");
    }
}

/// A node's deadline holds, as a plain task's (regression:
/// `workflow_submit.lua` dropped it): fixed at submit, it passes while the
/// node waits for its parent, and the node, released past it, expires
/// without starting. The workflow's `on_failure` applies to an expired
/// node as to a failure: fail fast cancels the rest, continue only its
/// descendants.
#[tokio::test]
async fn a_node_whose_deadline_passes_while_its_parent_runs_expires() {
    let redis = RedisServer::start();
    let _worker = WorkerProcess::start(&redis, &[("TANDEM_CONCURRENCY", "4")]).await;
    let producer = redis.producer().await;
    // The parent sleeps 400 ms from its start, which comes after the
    // submit: it commits past `late`'s deadline (submit + 100 ms) however
    // slow the machine.
    let late = || echo(json!("late")).deadline(Duration::from_millis(100));
    let check_late = |outcome: &tandem_producer::WorkflowOutcome| {
        let late = &outcome.nodes["late"];
        assert_eq!(late.status, Status::Expired);
        assert_eq!(late.failure().unwrap().code.as_str(), "EXPIRED");
        assert_eq!(
            late.record.started_at_ms, None,
            "an expired node never starts"
        );
        let deadline = late
            .record
            .deadline_ms
            .expect("the node's deadline is kept");
        assert_eq!(deadline, late.record.submitted_at_ms.unwrap() + 100);
        let parent_done = outcome.nodes["parent"].record.finished_at_ms.unwrap();
        assert!(parent_done > deadline, "it passed while the parent ran");
        assert_eq!(outcome.nodes["after_late"].status, Status::Cancelled);
        assert_eq!(outcome.nodes["after_late"].record.started_at_ms, None);
        assert_eq!(outcome.status, "failed");
    };

    // Fail fast: the expiry cancels the independent branch still running.
    let workflow = Workflow::new()
        .node("parent", sleeping_task(400))
        .node_after("late", late(), &["parent"])
        .node_after("after_late", echo(json!(2)), &["late"])
        .node("long", sleeping_task(600_000));
    let outcome = producer
        .submit_workflow(workflow)
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    check_late(&outcome);
    assert_eq!(outcome.nodes["long"].status, Status::Cancelled);

    // Continue: a sibling with a deadline it meets runs; only the expired
    // node's descendants are cancelled.
    let workflow = Workflow::new()
        .on_failure(OnFailure::Continue)
        .node("parent", sleeping_task(400))
        .node_after("late", late(), &["parent"])
        .node_after("after_late", echo(json!(2)), &["late"])
        .node_after(
            "in_time",
            echo(json!("in time")).deadline(Duration::from_secs(600)),
            &["parent"],
        );
    let outcome = producer
        .submit_workflow(workflow)
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    check_late(&outcome);
    let in_time = &outcome.nodes["in_time"];
    assert_eq!(in_time.status, Status::Succeeded);
    assert_eq!(
        in_time.record.deadline_ms,
        Some(in_time.record.submitted_at_ms.unwrap() + 600_000)
    );
    assert_eq!(keys_without_ttl(&redis).await, Vec::<String>::new());
}

/// A node's delay counts from its release: it starts no earlier than its
/// delay after its last parent's commit (a node without parents, after its
/// submit, as a plain delayed task). Judged on the timestamps Redis
/// recorded, not on a clock here. Regression: `workflow_submit.lua` copied
/// `delay_ms` into the entry and ran the node at once.
#[tokio::test]
async fn a_delayed_node_starts_its_delay_after_its_parent_finishes() {
    let redis = RedisServer::start();
    let _worker = WorkerProcess::start(&redis, &[("TANDEM_CONCURRENCY", "4")]).await;
    let producer = redis.producer().await;
    let workflow = Workflow::new()
        .node("first", echo(json!(1)).delay(Duration::from_millis(200)))
        .node_after(
            "second",
            echo(json!(WorkflowRef::to("first"))).delay(Duration::from_millis(300)),
            &["first"],
        );
    let handle = producer.submit_workflow(workflow).await.unwrap();
    let outcome = handle.wait(WAIT).await.unwrap();
    assert_eq!(outcome.status, "succeeded");
    let state = producer.workflow_state(handle.id()).await.unwrap().unwrap();
    let node = |name: &str| {
        state
            .nodes
            .iter()
            .find(|n| n.graph.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    };
    let first = &node("first").record;
    let run_at = first.run_at_ms.expect("a delayed root node has its time");
    assert_eq!(run_at, first.submitted_at_ms.unwrap() + 200);
    assert!(first.started_at_ms.unwrap() >= run_at, "{first:?}");

    let second = node("second");
    let released = second.released_at_ms.expect("released by its parent");
    assert_eq!(
        released,
        first.finished_at_ms.unwrap(),
        "by its parent's commit"
    );
    assert_eq!(second.record.run_at_ms, Some(released + 300));
    let started = second.record.started_at_ms.unwrap();
    assert!(
        started >= released + 300,
        "started {started}, released {released}"
    );
    let value: Value = msgpack::decode(&outcome.results["second"]).unwrap();
    assert_eq!(value, json!(1), "it still took its parent's result");
}

/// A delayed node waits in the delayed set, as a plain delayed task, its
/// entry's fields without the scheduling fields a worker would misread
/// (`delay_ms`, `run_at_ms`, `deadline_in_ms`) but with its `deadline_ms`
/// and its parent's result; a workflow cancel takes it out.
#[tokio::test]
async fn a_delayed_node_waits_in_the_delayed_set_until_cancelled() {
    let redis = RedisServer::start();
    let _worker = WorkerProcess::start(&redis, &[("TANDEM_CONCURRENCY", "4")]).await;
    let producer = redis.producer().await;
    let hour = Duration::from_secs(3600);
    let workflow = Workflow::new()
        .node("root_later", echo(json!(0)).delay(hour))
        .node("parent", echo(json!(1)))
        .node_after(
            "child_later",
            echo(json!(WorkflowRef::to("parent")))
                .delay(hour)
                .deadline(2 * hour),
            &["parent"],
        );
    let handle = producer.submit_workflow(workflow).await.unwrap();
    let mut conn = redis.conn().await;
    for name in ["root_later", "child_later"] {
        let id = handle.node(name).unwrap().id();
        let record = format!("tandem:{{cpu}}:task:{id}");
        wait_until(WAIT, "the node is delayed", || {
            let mut conn = conn.clone();
            let record = record.clone();
            async move {
                let status: Option<String> = conn.hget(&record, "status").await.unwrap();
                status.as_deref() == Some("delayed")
            }
        })
        .await;
        let reason: String = conn.hget(&record, "delay_reason").await.unwrap();
        assert_eq!(reason, "scheduled", "{name}");
        let score: Option<f64> = conn
            .zscore("tandem:{cpu}:delayed", id.to_string())
            .await
            .unwrap();
        assert!(score.is_some(), "{name} is in the delayed set");
        let fields: HashMap<String, Vec<u8>> = conn
            .hgetall(format!("tandem:{{cpu}}:retry:{id}"))
            .await
            .unwrap();
        for scheduling in ["delay_ms", "run_at_ms", "deadline_in_ms", "wf_delay_ms"] {
            assert!(
                !fields.contains_key(scheduling),
                "{name}: {scheduling} in {fields:?}"
            );
        }
        assert!(fields.contains_key("params"), "{name}");
        if name == "child_later" {
            assert!(
                fields.contains_key("inputs"),
                "the parent's result goes with it"
            );
            let deadline: u64 = String::from_utf8_lossy(&fields["deadline_ms"])
                .parse()
                .unwrap();
            let submitted: u64 = conn.hget(&record, "submitted_at_ms").await.unwrap();
            assert_eq!(deadline, submitted + 2 * 3_600_000);
        }
    }
    match producer.cancel_workflow(handle.id()).await.unwrap() {
        WorkflowCancel::Cancelled { ended, .. } => assert_eq!(ended, 2),
        other => panic!("{other:?}"),
    }
    let outcome = handle.wait(WAIT).await.unwrap();
    assert_eq!(outcome.status, "cancelled");
    for name in ["root_later", "child_later"] {
        assert_eq!(outcome.nodes[name].status, Status::Cancelled, "{name}");
        assert_eq!(outcome.nodes[name].record.started_at_ms, None, "{name}");
    }
    let delayed: u64 = conn.zcard("tandem:{cpu}:delayed").await.unwrap();
    assert_eq!(delayed, 0);
    assert_eq!(keys_without_ttl(&redis).await, Vec::<String>::new());
}

/// A workflow file's `delay_ms` and `deadline_ms` hold as the producer's
/// do: the delayed node becomes runnable its delay after its parent's
/// commit released it, and the node whose deadline passes while its parent
/// runs expires (under `continue`, its sibling branch goes on).
#[tokio::test]
async fn a_workflow_files_delay_and_deadline_hold() {
    let redis = RedisServer::start();
    let _worker = WorkerProcess::start(&redis, &[("TANDEM_CONCURRENCY", "4")]).await;
    let dir = ScratchDir::new("workflows");
    let path = dir.path().join("scheduled.yaml");
    std::fs::write(
        &path,
        "on_failure: continue\nnodes:\n  - {name: first, kind: echo, params: {a: 1}}\n  - {name: later, kind: echo, after: [first], delay_ms: 300, params: {$ref: first, path: /a}}\n  - {name: slow, kind: sleep, params: {ms: 400}}\n  - {name: hurried, kind: echo, after: [slow], deadline_ms: 1, params: {}}\n",
    )
    .unwrap();
    let out = tandem(
        &redis,
        &["flow", "submit", path.to_str().unwrap(), "--wait"],
    );
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    let id: tandem_shared::TaskId = text(&out.stderr)
        .trim()
        .strip_prefix("submitted workflow ")
        .unwrap()
        .parse()
        .unwrap();
    let producer = redis.producer().await;
    let state = producer.workflow_state(id).await.unwrap().unwrap();
    let node = |name: &str| {
        state
            .nodes
            .iter()
            .find(|n| n.graph.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    };
    let later = node("later");
    let released = later.released_at_ms.expect("released by its parent");
    assert_eq!(later.record.status, Some(Status::Succeeded));
    assert_eq!(later.record.run_at_ms, Some(released + 300));
    assert!(later.record.started_at_ms.unwrap() >= released + 300);
    let hurried = &node("hurried").record;
    assert_eq!(hurried.status, Some(Status::Expired), "{hurried:?}");
    assert_eq!(hurried.started_at_ms, None);
}

/// One node of a workflow as a service in another language lays it out
/// for `workflow_submit.lua` (docs/wire-format.md, "Workflows").
struct RawNode {
    name: &'static str,
    id: tandem_shared::TaskId,
    parents: usize,
    children: Vec<tandem_shared::TaskId>,
    params: Value,
}

fn raw_node(name: &'static str, parents: usize, params: Value) -> RawNode {
    RawNode {
        name,
        id: tandem_shared::TaskId::new(),
        parents,
        children: Vec::new(),
        params,
    }
}

fn raw_record(id: &tandem_shared::TaskId) -> String {
    format!("tandem:{{cpu}}:task:{id}")
}

/// `EVAL` of `workflow_submit.lua` (with `common.lua`, as every script) on
/// workflow `id` and `nodes` in the order given: `echo` tasks of class
/// `cpu`, no reply stream.
fn raw_workflow_submit(id: &tandem_shared::TaskId, nodes: &[RawNode]) -> redis::Cmd {
    let graph: Vec<Value> = nodes
        .iter()
        .map(|n| json!({"name": n.name, "id": n.id.to_string(), "class": "cpu", "kind": "echo", "parents": []}))
        .collect();
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(tandem_shared::scripts::WORKFLOW_SUBMIT.source)
        .arg(1)
        .arg(format!("tandem:{{cpu}}:workflow:{id}"))
        .arg(id.to_string())
        .arg("fail_fast")
        .arg(serde_json::to_string(&graph).unwrap())
        .arg(nodes.last().map_or("", |n| n.name))
        .arg(nodes.len());
    for node in nodes {
        let children: Vec<String> = node.children.iter().map(raw_record).collect();
        let id = node.id.to_string();
        let pairs = [
            ("version", "2"),
            ("id", id.as_str()),
            ("kind", "echo"),
            ("class", "cpu"),
            ("priority", "normal"),
            ("attempt", "1"),
            ("max_attempts", "3"),
            ("producer", "raw-service"),
        ];
        cmd.arg(node.name)
            .arg(&id)
            .arg(raw_record(&node.id))
            .arg("tandem:{cpu}:stream:normal")
            .arg(node.parents)
            .arg(children.join(" "))
            .arg(msgpack::encode(&node.params).unwrap())
            .arg(pairs.len());
        for (name, value) in pairs {
            cmd.arg(name).arg(value);
        }
    }
    cmd
}

/// The wire format's entry point: `workflow_submit.lua` called directly,
/// as a service in another language does. A consistent layout runs (a
/// chain whose child takes a path into its parent's result, filled by the
/// worker). A layout whose shape is wrong is refused naming the node, with
/// nothing written: before this check, a cycle or a parent count nobody
/// meets left nodes `waiting` forever, without a TTL, and the workflow
/// `running`.
#[tokio::test]
async fn the_submit_script_refuses_a_bad_graph_from_any_caller_naming_the_node() {
    let redis = RedisServer::start();
    let _worker = WorkerProcess::start(&redis, &[]).await;
    let mut conn = redis.conn().await;

    // a -> b, b takes a's /x.
    let mut a = raw_node("a", 0, json!({"x": 7, "y": [1, 2]}));
    let b = raw_node("b", 1, json!({"got": {"$ref": "a", "path": "/y/1"}}));
    a.children.push(b.id);
    let (a_id, b_id) = (a.id, b.id);
    let wf = tandem_shared::TaskId::new();
    let reply: Vec<redis::Value> = raw_workflow_submit(&wf, &[a, b])
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(reply.len(), 2);
    wait_until(WAIT, "the raw workflow succeeds", || async {
        let mut conn = redis.conn().await;
        let status: Option<String> = conn
            .hget(format!("tandem:{{cpu}}:workflow:{wf}"), "status")
            .await
            .unwrap();
        status.as_deref() == Some("succeeded")
    })
    .await;
    let result: Vec<u8> = conn.hget(raw_record(&b_id), "result").await.unwrap();
    let result: Value = msgpack::decode(&result).unwrap();
    assert_eq!(result, json!({"got": 2}));
    let a_status: String = conn.hget(raw_record(&a_id), "status").await.unwrap();
    assert_eq!(a_status, "succeeded");

    // What a submit writes: records, workflow hashes, wait hashes, stream
    // entries and the index of recent workflows.
    async fn written(conn: &mut redis::aio::MultiplexedConnection) -> (Vec<String>, u64, u64) {
        let mut keys: Vec<String> = conn.keys("tandem:*").await.unwrap();
        keys.retain(|k| {
            [":task:", ":workflow:", ":wait:"]
                .iter()
                .any(|p| k.contains(p))
        });
        keys.sort();
        let entries: u64 = conn.xlen("tandem:{cpu}:stream:normal").await.unwrap();
        let recent: u64 = conn.zcard("tandem:{cpu}:workflows").await.unwrap();
        (keys, entries, recent)
    }
    let before = written(&mut conn).await;
    type Layout = fn() -> Vec<RawNode>;
    let cases: Vec<(&str, Layout, &str)> = vec![
        (
            "a cycle: each names the other as its child",
            || {
                let mut a = raw_node("a", 1, json!(1));
                let mut b = raw_node("b", 1, json!(2));
                a.children.push(b.id);
                b.children.push(a.id);
                vec![a, b]
            },
            "node \"a\": it comes before its parent \"b\"",
        ),
        (
            "a parent nobody is: b waits for one, no node names it",
            || vec![raw_node("a", 0, json!(1)), raw_node("b", 1, json!(2))],
            "node \"b\": it says 1 parents, but 0 nodes name it as a child",
        ),
        (
            "a child that is no node of the workflow",
            || {
                let mut a = raw_node("a", 0, json!(1));
                a.children.push(tandem_shared::TaskId::new());
                vec![a]
            },
            "node \"a\": its child \"tandem:{cpu}:task:",
        ),
        (
            "a child before its parent",
            || {
                let mut a = raw_node("a", 0, json!(1));
                let b = raw_node("b", 1, json!(2));
                a.children.push(b.id);
                vec![b, a]
            },
            "node \"b\": it comes before its parent \"a\"",
        ),
        (
            "a name used twice",
            || vec![raw_node("a", 0, json!(1)), raw_node("a", 0, json!(2))],
            "node \"a\": the name is used by another node too",
        ),
    ];
    for (what, layout, expect) in cases {
        let nodes = layout();
        let err = raw_workflow_submit(&tandem_shared::TaskId::new(), &nodes)
            .query_async::<redis::Value>(&mut conn)
            .await
            .expect_err(what)
            .to_string();
        assert!(
            err.contains(expect),
            "{what}: expected {expect:?} in {err:?}"
        );
        assert!(err.contains("the workflow was not submitted"), "{err}");
    }
    assert_eq!(
        written(&mut conn).await,
        before,
        "a refused submit writes nothing"
    );
}

/// The Rust producer refuses what `tandem flow submit` refuses, naming the
/// node, with nothing sent: a cycle, a missing parent, an unknown kind
/// (without a class), a path into a result that does not exist.
#[tokio::test]
async fn the_rust_producer_refuses_bad_workflows_naming_the_node() {
    let redis = RedisServer::start();
    let producer = redis.producer().await;
    let cases: Vec<(Workflow, &str)> = vec![
        (
            Workflow::new()
                .node_after("a", echo(json!(1)), &["b"])
                .node_after("b", echo(json!(2)), &["a"]),
            "node \"a\": it is on a cycle",
        ),
        (
            Workflow::new().node_after("a", echo(json!(1)), &["ghost"]),
            "node \"a\": parent \"ghost\" is not a node of the workflow",
        ),
        (
            Workflow::new()
                .node("ok", echo(json!(1)))
                .node("x", Task::new("no_such_kind", &json!({})).unwrap()),
            "node \"x\": kind \"no_such_kind\" is unknown",
        ),
        (
            Workflow::new()
                .node("var", Task::new("risk", &json!({})).unwrap())
                .node_after(
                    "use",
                    echo(json!({"x": WorkflowRef::to("var").at("/levels/0/nope")})),
                    &["var"],
                ),
            "node \"use\": path \"/levels/0/nope\" into the result of \"var\": a risk result has no field \"nope\"",
        ),
    ];
    for (workflow, expect) in cases {
        let err = producer
            .submit_workflow(workflow)
            .await
            .expect_err(expect)
            .to_string();
        assert!(err.contains(expect), "expected {expect:?} in {err:?}");
    }
    let mut conn = redis.conn().await;
    let keys: Vec<String> = conn.keys("tandem:*").await.unwrap();
    assert!(
        keys.iter()
            .all(|k| !k.contains(":task:") && !k.contains(":workflow")),
        "nothing was written: {keys:?}"
    );
}

/// "Each node is a normal task of any kind, class and priority, routed to
/// the right GPU as usual": on the seed's host (simulated primary and
/// secondary cards, a CPU worker), a workflow whose nodes are heavy, light
/// and cpu runs each on the device its class goes to, released across
/// classes, with a critical-priority chord.
#[tokio::test]
async fn a_workflows_nodes_run_where_their_class_routes_them() {
    use crate::support::gpus::{PAIR, PRIMARY, SECONDARY, settle, start, store};
    use tandem_shared::{Class, Priority};

    let redis = RedisServer::start();
    let _primary = start(&redis, PRIMARY, PAIR, &[]).await;
    let _secondary = start(&redis, SECONDARY, PAIR, &[]).await;
    let _cpu = start(&redis, "cpu", PAIR, &[]).await;
    settle(&store(&redis).await).await;
    let producer = redis.producer().await;
    let on = |class: Class| {
        sleeping_task(20)
            .class(class)
            .memory_bytes(if class == Class::Cpu { 0 } else { 1 << 30 })
    };
    let workflow = Workflow::new()
        .node("heavy_root", on(Class::Heavy))
        .node_after("light", on(Class::Light), &["heavy_root"])
        .node_after("cpu", on(Class::Cpu), &["heavy_root"])
        .node_after(
            "heavy_chord",
            on(Class::Heavy).priority(Priority::Critical),
            &["light", "cpu"],
        );
    let handle = producer.submit_workflow(workflow).await.unwrap();
    let outcome = handle.wait(WAIT).await.unwrap();
    assert_eq!(outcome.status, "succeeded");
    for (name, device, class) in [
        ("heavy_root", PRIMARY, "heavy"),
        ("light", SECONDARY, "light"),
        ("cpu", "cpu", "cpu"),
        ("heavy_chord", PRIMARY, "heavy"),
    ] {
        let record = &outcome.nodes[name].record;
        assert_eq!(record.device.as_deref(), Some(device), "{name}: {record:?}");
        assert_eq!(
            record.class.map(|c| c.to_string()).as_deref(),
            Some(class),
            "{name}"
        );
    }
    assert_eq!(
        outcome.nodes["heavy_chord"].record.priority,
        Some(Priority::Critical)
    );
}

/// `tandem flow cancel ID` on a workflow still running: the running node is
/// asked to stop, the waiting one ends at once, and `tandem flow status`
/// shows every node but the finished one `cancelled`.
#[tokio::test]
async fn flow_cancel_from_the_command_line_cancels_every_unfinished_node() {
    let redis = RedisServer::start();
    let _worker = WorkerProcess::start(&redis, &[("TANDEM_CONCURRENCY", "2")]).await;
    let dir = ScratchDir::new("workflows");
    let path = dir.path().join("long.yaml");
    std::fs::write(
        &path,
        "nodes:\n  - name: quick\n    kind: echo\n    params: 1\n  - name: long\n    kind: sleep\n    params: {ms: 600000}\n  - name: after\n    kind: echo\n    after: [long, quick]\n    params: 2\n",
    )
    .unwrap();
    let out = tandem(&redis, &["flow", "submit", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let id: tandem_shared::TaskId = text(&out.stdout).trim().parse().unwrap();
    let producer = redis.producer().await;
    wait_until(WAIT, "quick done and long running", || async {
        let state = producer.workflow_state(id).await.unwrap().unwrap();
        let status = |name: &str| {
            state
                .nodes
                .iter()
                .find(|n| n.graph.name == name)
                .map(|n| n.status.clone())
        };
        status("quick").as_deref() == Some("succeeded")
            && status("long").as_deref() == Some("running")
    })
    .await;
    let out = tandem(&redis, &["flow", "cancel", &id.to_string()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("1 nodes cancelled, 1 running nodes asked to stop"),
        "{}",
        text(&out.stdout)
    );
    wait_until(WAIT, "the workflow ends cancelled", || async {
        let out = tandem(&redis, &["flow", "status", &id.to_string(), "--json"]);
        let Ok(status) = serde_json::from_slice::<Value>(&out.stdout) else {
            return false;
        };
        status["status"] == "cancelled"
    })
    .await;
    let out = tandem(&redis, &["flow", "status", &id.to_string(), "--json"]);
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    for node in status["nodes"].as_array().unwrap() {
        let expect = if node["name"] == "quick" {
            "succeeded"
        } else {
            "cancelled"
        };
        assert_eq!(node["status"], expect, "{node}");
    }
    assert_eq!(keys_without_ttl(&redis).await, Vec::<String>::new());
}

/// `tandem flow submit` with a node whose parameters are above
/// `blob_threshold_bytes` (1.2 MiB): they go by reference from the command
/// line, the sink's result comes back as a blob, and `--wait` and `tandem
/// flow status` print the result itself, not the reference.
#[tokio::test]
async fn flow_submit_sends_large_params_by_reference_and_shows_a_blob_result() {
    let redis = RedisServer::start();
    let _worker = WorkerProcess::start(&redis, &[]).await;
    let dir = ScratchDir::new("workflows");
    let path = dir.path().join("large.json");
    let big = "q".repeat(1_200 * 1024);
    let spec = json!({"nodes": [
        {"name": "first", "kind": "echo", "params": {"big": big, "n": 5}},
        {"name": "second", "kind": "echo", "after": ["first"],
         "params": {"n": {"$ref": "first", "path": "/n"}, "big": {"$ref": "first", "path": "/big"}}},
    ]});
    std::fs::write(&path, serde_json::to_vec(&spec).unwrap()).unwrap();
    let mut conn = redis.conn().await;
    let out = tandem(
        &redis,
        &["flow", "submit", path.to_str().unwrap(), "--wait"],
    );
    let shown = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        shown.contains(&big) && !shown.contains("tandem_blob"),
        "the sink's result is printed, not its reference: {}",
        &shown[..shown.len().min(2_000)]
    );
    let id = text(&out.stderr)
        .trim()
        .strip_prefix("submitted workflow ")
        .unwrap()
        .to_owned();
    // The parameters went by reference (the record keeps the reference,
    // not 1.2 MiB), and the sink's result is a blob.
    let state = redis
        .producer()
        .await
        .workflow_state(id.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    for node in &state.nodes {
        let result = node.record.result.as_deref().unwrap();
        assert!(
            tandem_shared::blob::BlobRef::detect(result).is_some(),
            "{}'s result went by blob",
            node.graph.name
        );
    }
    let blobs: Vec<String> = conn.keys("tandem:{blob:*").await.unwrap();
    assert!(!blobs.is_empty());
    let out = tandem(&redis, &["flow", "status", &id, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["result"]["second"]["n"], json!(5));
    assert_eq!(
        status["result"]["second"]["big"].as_str(),
        Some(big.as_str())
    );
}
