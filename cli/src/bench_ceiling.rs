//! `tandem bench --phases ceiling`: the most a queue on Redis Streams can do
//! on this redis-server, with the fewest commands the delivery guarantees
//! allow and no Lua and no client logic: each task is one `XADD` (awaited,
//! or `--batch` per pipeline), consumers take them with `XREADGROUP` (at
//! most `--concurrency` a call, one connection per consumer, `--workers`
//! consumers in this process), and finish each with `XACK` + `XDEL` + a
//! result `SET ... EX` in one pipeline: acknowledged, deleted, result kept.
//! No records, no notices, no events, no fencing. Measured like the enqueue
//! phase: the queue is filled first (submitted/s), then consumed
//! (consumed/s from the first to the last finish). Tandem's figures are read
//! as a percentage of it, on the same server in the same run.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use redis::Value;
use tandem_shared::Config;

/// The no-op payload as Tandem sends it (MessagePack), so entries are the
/// same size.
fn payload(i: usize) -> anyhow::Result<Vec<u8>> {
    let value = super::bench::noop_payload(i);
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, &value)?;
    Ok(out)
}

/// Fills the stream, then consumes it. Returns (submitted/s, consumed/s).
pub(crate) async fn run(
    config: &Config,
    n: usize,
    batch: usize,
    consumers: usize,
    per_read: usize,
) -> anyhow::Result<(f64, f64)> {
    let stream = format!("{}:{{ceiling}}:stream", config.prefix);
    let group = "ceiling";
    let (client, mut conn) = stream_with_group(config, "ceiling", &stream, group).await?;
    let started = Instant::now();
    let mut i = 0;
    while i < n {
        let mut pipe = redis::pipe();
        for j in i..(i + batch).min(n) {
            pipe.cmd("XADD")
                .arg(&stream)
                .arg("*")
                .arg("id")
                .arg(j)
                .arg("params")
                .arg(payload(j)?)
                .ignore();
        }
        let _: () = pipe.query_async(&mut conn).await?;
        i += batch;
    }
    let submitted_per_s = n as f64 / started.elapsed().as_secs_f64();

    let done = Arc::new(AtomicUsize::new(0));
    let result_prefix = format!("{}:{{ceiling}}:result:", config.prefix);
    let mut jobs = Vec::new();
    for c in 0..consumers {
        let mut conn = client.get_multiplexed_async_connection().await?;
        let (stream, result_prefix, done) = (stream.clone(), result_prefix.clone(), done.clone());
        jobs.push(tokio::spawn(async move {
            let consumer = format!("c{c}");
            let mut first = None;
            let mut last = None;
            while done.load(Ordering::Relaxed) < n {
                let reply: Value = redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(group)
                    .arg(&consumer)
                    .arg("COUNT")
                    .arg(per_read)
                    .arg("BLOCK")
                    .arg(100)
                    .arg("STREAMS")
                    .arg(&stream)
                    .arg(">")
                    .query_async(&mut conn)
                    .await?;
                let ids: Vec<String> = read_entries(reply)?.into_iter().map(|(id, _)| id).collect();
                if ids.is_empty() {
                    continue;
                }
                let mut pipe = redis::pipe();
                for id in &ids {
                    pipe.cmd("XACK").arg(&stream).arg(group).arg(id).ignore();
                    pipe.cmd("XDEL").arg(&stream).arg(id).ignore();
                    pipe.cmd("SET")
                        .arg(format!("{result_prefix}{id}"))
                        .arg("ok")
                        .arg("EX")
                        .arg(600)
                        .ignore();
                }
                let _: () = pipe.query_async(&mut conn).await?;
                let now = Instant::now();
                first.get_or_insert(now);
                last = Some(now);
                done.fetch_add(ids.len(), Ordering::Relaxed);
            }
            anyhow::Ok((first, last))
        }));
    }
    let (first, last) = first_and_last(jobs, "ceiling").await?;
    let span = match (first, last) {
        (Some(f), Some(l)) => l.duration_since(f).as_secs_f64(),
        _ => 0.0,
    };
    Ok((submitted_per_s, (n - 1) as f64 / span.max(1e-9)))
}

/// A plain connection (no Cluster) to `config`'s server, and `stream`
/// created with the consumer group `group` (for the `phase` named in the
/// error).
pub(crate) async fn stream_with_group(
    config: &Config,
    phase: &str,
    stream: &str,
    group: &str,
) -> anyhow::Result<(redis::Client, redis::aio::MultiplexedConnection)> {
    let client = redis::Client::open(config.redis_url.as_str())
        .with_context(|| format!("the {phase} phase needs a plain redis:// URL (no Cluster)"))?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(group)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut conn)
        .await?;
    Ok((client, conn))
}

/// When a consumer finished its first and its last task (None: it finished
/// none).
pub(crate) type Span = (Option<Instant>, Option<Instant>);

/// Awaits the consumers (at most 300 s): the earliest first finish and the
/// latest last.
pub(crate) async fn first_and_last(
    jobs: Vec<tokio::task::JoinHandle<anyhow::Result<Span>>>,
    phase: &str,
) -> anyhow::Result<Span> {
    let mut first: Option<Instant> = None;
    let mut last: Option<Instant> = None;
    for job in jobs {
        let (f, l) = tokio::time::timeout(Duration::from_secs(300), job)
            .await
            .with_context(|| format!("the {phase}'s consumers did not finish within 300 s"))???;
        first = match (first, f) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        last = last.max(l);
    }
    Ok((first, last))
}

/// (entry id, fields) of each entry of an `XREADGROUP` reply of one stream
/// (RESP2 arrays or a RESP3 map; nil when it timed out).
pub(crate) fn read_entries(reply: Value) -> anyhow::Result<Vec<(String, Vec<Vec<u8>>)>> {
    let streams: Vec<Value> = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(items) => items
            .into_iter()
            .filter_map(|s| match s {
                Value::Array(mut pair) if pair.len() == 2 => pair.pop(),
                _ => None,
            })
            .collect(),
        Value::Map(pairs) => pairs.into_iter().map(|(_, entries)| entries).collect(),
        other => anyhow::bail!("XREADGROUP: unexpected reply {other:?}"),
    };
    let mut out = Vec::new();
    for stream in streams {
        let entries: Vec<(String, Vec<Vec<u8>>)> =
            redis::from_redis_value(stream).context("XREADGROUP: an entry")?;
        out.extend(entries);
    }
    Ok(out)
}
