//! Split tasks: a splittable `parallel` task claimed while two GPUs are
//! live is cut into shards that any worker runs; the last shard's commit
//! brings the task back to be merged. Real worker processes on simulated,
//! paced GPUs (a shard takes as long, relative to each other, as on the
//! seed's 40 and 16 TFLOPS cards), with the `split_sum` test kind.

use tandem_producer::{Producer, Task};
use tandem_shared::kind::builtin::{SplitSum, SplitSumOutput, SplitSumParams};
use tandem_shared::wire::TaskRecord;
use tandem_shared::{Class, ErrorCode, Status, TaskId};

use crate::support::gpus::{PRIMARY, SECONDARY, WAIT, settle, start, store};
use crate::support::split::{expected, record};
use crate::support::{RedisServer, WorkerProcess, wait_until};

const PACED: &str =
    "RTX 4070 Ti, 12 GiB, 40.09 TFLOPS, paced; RTX 3060 Ti, 8 GiB, 16.2 TFLOPS, paced";
const SPLITTING: &[(&str, &str)] = &[("TANDEM_TEST_KINDS", "1"), ("TANDEM_SHARDS_PER_GPU", "4")];

async fn host(redis: &RedisServer, extra: &[(&str, &str)]) -> Vec<WorkerProcess> {
    let mut env = SPLITTING.to_vec();
    env.extend_from_slice(extra);
    let workers = vec![
        start(redis, PRIMARY, PACED, &env).await,
        start(redis, SECONDARY, PACED, &env).await,
        start(redis, "cpu", PACED, &env).await,
    ];
    settle(&store(redis).await).await;
    workers
}

async fn shards(redis: &RedisServer, parent: &TaskId) -> Vec<TaskRecord> {
    let ids = record(redis, parent).await.shard_ids;
    let mut records = Vec::new();
    for id in &ids {
        records.push(record(redis, id).await);
    }
    records
}

/// Waits until the task is split; returns its shard count.
async fn wait_split(redis: &RedisServer, id: &TaskId) -> u32 {
    wait_until(WAIT, "the task is split", || async {
        record(redis, id).await.shards.is_some()
    })
    .await;
    record(redis, id).await.shards.unwrap_or(0)
}

/// The split and parts hashes of a finished task are gone.
async fn assert_cleaned_up(redis: &RedisServer, id: &TaskId) {
    let mut conn = redis.conn().await;
    for what in ["split", "parts"] {
        let key = format!("tandem:{{parallel}}:{what}:{id}");
        let exists: bool = redis::cmd("EXISTS")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(!exists, "{key} is left behind");
    }
}

/// `split_sum` over `n` terms in blocks of 100.
fn sum(n: u64, block_ms: u64, fail_block: Option<u64>) -> SplitSumParams {
    SplitSumParams {
        n,
        block: 100,
        block_ms,
        fail_block,
    }
}

async fn submit(producer: &Producer, params: &SplitSumParams) -> TaskId {
    producer
        .submit(Task::of::<SplitSum>(params).unwrap())
        .await
        .unwrap()
}

#[tokio::test]
async fn a_split_task_spreads_over_the_gpus_by_speed_and_merges_to_the_whole_result() {
    let redis = RedisServer::start();
    let _host = host(&redis, &[]).await;
    let producer = redis.producer().await;
    let params = sum(40_000, 2, None);
    let id = submit(&producer, &params).await;
    let outcome = producer.wait(id, WAIT).await.unwrap();
    assert_eq!(outcome.status, Status::Succeeded, "{:?}", outcome.record);
    let result: SplitSumOutput = outcome.result().unwrap();
    assert_eq!(result.sum.to_bits(), expected(&params).to_bits());
    assert_eq!(result.blocks, 400);
    assert_eq!(
        outcome.record.shards,
        Some(8),
        "the notice says it was split"
    );

    let parent = record(&redis, &id).await;
    assert_eq!(parent.shards, Some(8), "2 GPUs x 4 shards: {parent:?}");
    assert_eq!(parent.shards_done, Some(8));
    // Its progress went by shards done, the last one all of them.
    let progress = parent.progress.as_ref().expect("progress by shards");
    assert_eq!(
        (progress.fraction, progress.message.as_str()),
        (1.0, "8 of 8 shards done")
    );
    let shards = shards(&redis, &id).await;
    assert_eq!(shards.len(), 8);
    let on = |device: &str| {
        shards
            .iter()
            .filter(|s| s.device.as_deref() == Some(device))
            .count()
    };
    for (index, shard) in shards.iter().enumerate() {
        assert_eq!(shard.status, Some(Status::Succeeded), "{shard:?}");
        assert_eq!(shard.parent, Some(id));
        assert_eq!(shard.shard, Some(index as u32));
        assert!(
            shard.result.is_none(),
            "a shard's result lives with its parent"
        );
    }
    // The faster GPU takes more shards; the CPU worker none (the GPUs are
    // live).
    assert!(
        on(PRIMARY) > on(SECONDARY) && on(SECONDARY) > 0 && on("cpu") == 0,
        "primary {}, secondary {}, cpu {}",
        on(PRIMARY),
        on(SECONDARY),
        on("cpu")
    );
    assert_cleaned_up(&redis, &id).await;
}

#[tokio::test]
async fn with_one_gpu_the_task_runs_whole_with_the_same_bits() {
    let redis = RedisServer::start();
    let _gpu = start(&redis, "0", "Solo, 8 GiB, 20 TFLOPS", SPLITTING).await;
    settle(&store(&redis).await).await;
    let producer = redis.producer().await;
    let params = sum(40_000, 0, None);
    let id = submit(&producer, &params).await;
    let outcome = producer.wait(id, WAIT).await.unwrap();
    let result: SplitSumOutput = outcome.result().unwrap();
    assert_eq!(result.sum.to_bits(), expected(&params).to_bits());
    assert_eq!(record(&redis, &id).await.shards, None, "not split");
}

#[tokio::test]
async fn killing_a_worker_mid_split_loses_nothing_and_gives_the_same_result() {
    let redis = RedisServer::start();
    let mut host = host(&redis, &[]).await;
    let producer = redis.producer().await;
    let params = sum(40_000, 4, None);
    let id = submit(&producer, &params).await;
    wait_split(&redis, &id).await;
    wait_until(WAIT, "a shard runs on the secondary", || async {
        shards(&redis, &id)
            .await
            .iter()
            .any(|s| s.status == Some(Status::Running) && s.device.as_deref() == Some(SECONDARY))
    })
    .await;
    host[1].signal("KILL");
    host[1].wait_exit(WAIT);

    let outcome = producer.wait(id, WAIT).await.unwrap();
    assert_eq!(outcome.status, Status::Succeeded, "{:?}", outcome.record);
    let result: SplitSumOutput = outcome.result().unwrap();
    assert_eq!(result.sum.to_bits(), expected(&params).to_bits());
    let shards = shards(&redis, &id).await;
    assert!(shards.iter().all(|s| s.status == Some(Status::Succeeded)));
    let taken_over = shards.iter().filter(|s| s.attempt.unwrap_or(1) > 1).count();
    assert!(
        taken_over >= 1,
        "the killed worker's shard ran again: {shards:?}"
    );
    assert_cleaned_up(&redis, &id).await;
}

#[tokio::test]
async fn a_shard_that_fails_fails_its_task_once_and_cancels_the_rest() {
    let redis = RedisServer::start();
    let _host = host(&redis, &[]).await;
    let producer = redis.producer().await;
    let params = sum(40_000, 2, Some(0));
    let id = submit(&producer, &params).await;
    let outcome = producer.wait(id, WAIT).await.unwrap();
    assert_eq!(outcome.status, Status::Failed);
    let error = outcome.record.error.clone().expect("error");
    assert_eq!(error.code, ErrorCode::from_static("SPLIT_SUM_FAILED"));
    assert!(
        error.message.starts_with("shard 0 of 8 failed: "),
        "{error:?}"
    );

    // One dead letter, the task itself (so a requeue runs it whole again).
    let dead = store(&redis)
        .await
        .dead_letters(&[Class::Parallel], 10)
        .await
        .unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].task_id, Some(id));
    assert_eq!(dead[0].reason, "SPLIT_SUM_FAILED");
    wait_until(WAIT, "every shard is final", || async {
        shards(&redis, &id)
            .await
            .iter()
            .all(TaskRecord::is_terminal)
    })
    .await;
    assert_cleaned_up(&redis, &id).await;
}

#[tokio::test]
async fn cancelling_a_split_task_cancels_its_shards() {
    let redis = RedisServer::start();
    let _host = host(&redis, &[]).await;
    let producer = redis.producer().await;
    let params = sum(40_000, 20, None);
    let id = submit(&producer, &params).await;
    wait_split(&redis, &id).await;
    producer.cancel(id).await.unwrap();
    let outcome = producer.wait(id, WAIT).await.unwrap();
    assert_eq!(outcome.status, Status::Cancelled);
    wait_until(WAIT, "every shard is final", || async {
        shards(&redis, &id)
            .await
            .iter()
            .all(TaskRecord::is_terminal)
    })
    .await;
    assert_cleaned_up(&redis, &id).await;

    // The workers go on.
    let small = sum(1_000, 0, None);
    let next = submit(&producer, &small).await;
    let outcome = producer.wait(next, WAIT).await.unwrap();
    assert_eq!(outcome.status, Status::Succeeded);
}

/// A raw submission (what a Python service does with redis-py and msgpack)
/// is split the same, and its notice carries the merged result under its
/// own id; `tandem status` shows the shard progress.
#[tokio::test]
async fn a_raw_submission_is_split_and_its_producer_hears_the_merged_result() {
    let redis = RedisServer::start();
    let _host = host(&redis, &[]).await;
    let mut conn = redis.conn().await;
    let id = TaskId::new();
    let params = sum(20_000, 1, None);
    let reply = "tandem:{parallel}:reply:python-svc";
    let _: String = redis::cmd("XADD")
        .arg("tandem:{parallel}:stream:normal")
        .arg("*")
        .arg(&[
            "version",
            "2",
            "id",
            &id.to_string(),
            "kind",
            "split_sum",
            "reply_to",
            reply,
        ])
        .arg("params")
        .arg(tandem_shared::msgpack::encode(&params).unwrap())
        .query_async(&mut conn)
        .await
        .unwrap();
    let read: redis::streams::StreamReadReply = redis::cmd("XREAD")
        .arg("BLOCK")
        .arg(30_000)
        .arg("STREAMS")
        .arg(reply)
        .arg("0-0")
        .query_async(&mut conn)
        .await
        .unwrap();
    let notice = &read.keys[0].ids[0];
    assert_eq!(notice.get::<String>("id").unwrap(), id.to_string());
    assert_eq!(notice.get::<String>("status").unwrap(), "succeeded");
    let result: Vec<u8> = notice.get("result").unwrap();
    let result: SplitSumOutput = tandem_shared::msgpack::decode(&result).unwrap();
    assert_eq!(result.sum.to_bits(), expected(&params).to_bits());
    assert_eq!(read.keys[0].ids.len(), 1, "one notice, for the task only");

    let out = std::process::Command::new(crate::support::bin("tandem"))
        .args(["status", &id.to_string()])
        .env_clear()
        .env("REDIS_URL", redis.url())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("8 of 8 done"), "{text}");
}
