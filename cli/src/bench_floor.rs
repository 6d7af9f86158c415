//! `tandem bench --phases floor | floor-consume`: the drain phase, or the
//! enqueue phase's consume, done by the floor of a queue with Tandem's
//! guarantees and views, to tell what no implementation of them could beat
//! on this redis-server from what Tandem's own code costs (issue 18). Each
//! no-op task writes what Tandem's scripts must write for it and nothing
//! else (the scripts in `bench_floor/`, also priced alone by
//! `scripts/lua-floor`):
//!
//! - submit, one awaited call a task (`--batch` tasks a call): its record, created only if its id
//!   has none (the idempotent submit), its entry, the `submitted` event;
//! - start: a blocking `XREADGROUP` per consumer of up to `--concurrency`
//!   plus `--prefetch` entries (an arrival wakes exactly one consumer: no
//!   doorbell, no claim that finds nothing), then one script for what it
//!   read: each record read, written `running` with its owner (the fence),
//!   the `started` event, the state index;
//! - commit, one call for what was read: per task the fence read, the final
//!   state and result, the record's TTL, `XACK` + `XDEL`, the state index
//!   moved, the `succeeded` event.
//!
//! With `events` off (`--events off`) no event is written, as Tandem's
//! scripts write none then. No checks, no routing, no priorities (one
//! stream), no flow control, no
//! heartbeats, no leases, no notices; `--workers` consumers in this process,
//! each on its own connection. `floor` is timed like the drain phase (N
//! over the first submit to the last commit, the consumers waiting before
//! the first submit), `floor-consume` like the enqueue phase (the queue
//! filled first, then consumed: N - 1 over the first to the last commit).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use redis::{Script, Value};
use tandem_shared::Config;

use super::bench_ceiling::{Span, first_and_last, read_entries, stream_with_group};

/// The floor's scripts (see the module docs).
struct Scripts {
    submit: Script,
    claim: Script,
    commit: Script,
}

impl Scripts {
    /// The scripts, with the `events` stream written or not.
    fn new(events: bool) -> Self {
        let load = |source: &str| Script::new(&format!("local EVENTS = {events}\n{source}"));
        Self {
            submit: load(include_str!("bench_floor/submit.lua")),
            claim: load(include_str!("bench_floor/claim.lua")),
            commit: load(include_str!("bench_floor/commit.lua")),
        }
    }
}

/// The floor's keys, in a class slot of their own.
#[derive(Clone)]
struct Keys {
    stream: String,
    events: String,
    running: String,
    succeeded: String,
    task_prefix: String,
}

const GROUP: &str = "floor";

/// Runs `n` tasks, `batch` a submit call, each call awaited, while
/// `consumers` take up to `per_read` at a time, or (`prefill`) after all
/// were submitted. Returns (submitted/s, completed/s).
pub(crate) async fn run(
    config: &Config,
    n: usize,
    batch: usize,
    consumers: usize,
    per_read: usize,
    prefill: bool,
) -> anyhow::Result<(f64, f64)> {
    let base = format!("{}:{{floor}}:", config.prefix);
    let keys = Keys {
        stream: format!("{base}stream:normal"),
        events: format!("{base}events"),
        running: format!("{base}index:running"),
        succeeded: format!("{base}index:succeeded"),
        task_prefix: format!("{base}task:"),
    };
    let (client, mut conn) = stream_with_group(config, "floor", &keys.stream, GROUP).await?;
    let scripts = Arc::new(Scripts::new(config.events));

    let done = Arc::new(AtomicUsize::new(0));
    let mut jobs = Vec::new();
    let mut spawn_consumers = async || -> anyhow::Result<()> {
        for c in 0..consumers {
            // Each consumer blocks on its own connection.
            let conn = client.get_multiplexed_async_connection().await?;
            let (keys, scripts, done) = (keys.clone(), scripts.clone(), done.clone());
            let consumer = Consumer {
                name: format!("c{c}"),
                keys,
                scripts,
                done,
                n,
                per_read,
            };
            jobs.push(tokio::spawn(consumer.run(conn)));
        }
        Ok(())
    };
    if !prefill {
        spawn_consumers().await?;
        // Let every consumer reach its blocking read first, as the drain
        // phase's workers are idle and ready when it starts.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let producer = format!("p-{}", std::process::id());
    let started = Instant::now();
    let mut i = 0;
    while i < n {
        let count = batch.min(n - i);
        let mut call = scripts.submit.prepare_invoke();
        call.key(&keys.stream).key(&keys.events).arg(count);
        for j in i..i + count {
            let id = tandem_shared::TaskId::new().to_string();
            let mut params = Vec::new();
            rmpv::encode::write_value(&mut params, &super::bench::noop_payload(j))?;
            let pairs: [(&str, &[u8]); 10] = [
                ("version", b"2"),
                ("id", id.as_bytes()),
                ("kind", b"noop"),
                ("class", b"floor"),
                ("priority", b"normal"),
                ("attempt", b"1"),
                ("max_attempts", b"3"),
                ("memory_bytes", b"0"),
                ("producer", producer.as_bytes()),
                ("params", &params),
            ];
            call.key(format!("{}{id}", keys.task_prefix))
                .arg(&id)
                .arg(pairs.len());
            for (name, value) in pairs {
                call.arg(name).arg(value);
            }
        }
        let _: Value = call.invoke_async(&mut conn).await.context("floor submit")?;
        i += count;
    }
    let submitted_per_s = n as f64 / started.elapsed().as_secs_f64();
    if prefill {
        spawn_consumers().await?;
    }
    let (first, last) = first_and_last(jobs, "floor").await?;
    let last = last.context("the floor's consumers finished no task")?;
    let completed_per_s = if prefill {
        let first = first.unwrap_or(started);
        (n - 1) as f64 / last.duration_since(first).as_secs_f64().max(1e-9)
    } else {
        n as f64 / last.duration_since(started).as_secs_f64().max(1e-9)
    };
    Ok((submitted_per_s, completed_per_s))
}

/// One consumer of the floor.
struct Consumer {
    name: String,
    keys: Keys,
    scripts: Arc<Scripts>,
    done: Arc<AtomicUsize>,
    n: usize,
    per_read: usize,
}

impl Consumer {
    /// Blocks for up to `per_read` entries, starts them, commits them, until
    /// `n` tasks are done among all consumers. Returns when it finished its
    /// first and its last tasks.
    async fn run(self, mut conn: redis::aio::MultiplexedConnection) -> anyhow::Result<Span> {
        let (keys, scripts) = (&self.keys, &self.scripts);
        let (mut first, mut last) = (None, None);
        while self.done.load(Ordering::Relaxed) < self.n {
            let reply: Value = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(GROUP)
                .arg(&self.name)
                .arg("COUNT")
                .arg(self.per_read)
                .arg("BLOCK")
                .arg(100)
                .arg("STREAMS")
                .arg(&keys.stream)
                .arg(">")
                .query_async(&mut conn)
                .await?;
            let read = entries(reply)?;
            if read.is_empty() {
                continue;
            }
            // The start of what was delivered (claim.lua, which reads
            // nothing itself when given entries).
            let mut start = scripts.claim.prepare_invoke();
            start
                .key(&keys.stream)
                .key(&keys.events)
                .key(&keys.running)
                .arg(GROUP)
                .arg(&self.name)
                .arg(read.len())
                .arg(&keys.task_prefix);
            let mut commit = scripts.commit.prepare_invoke();
            commit
                .key(&keys.stream)
                .key(&keys.events)
                .key(&keys.running)
                .key(&keys.succeeded)
                .arg(GROUP)
                .arg(&self.name)
                .arg(read.len());
            for (entry_id, task_id) in &read {
                start.arg(entry_id).arg(task_id);
                commit
                    .key(format!("{}{task_id}", keys.task_prefix))
                    .arg(task_id)
                    .arg(entry_id);
            }
            let _: Value = start.invoke_async(&mut conn).await.context("floor start")?;
            let _: Value = commit
                .invoke_async(&mut conn)
                .await
                .context("floor commit")?;
            let now = Instant::now();
            first.get_or_insert(now);
            last = Some(now);
            self.done.fetch_add(read.len(), Ordering::Relaxed);
        }
        Ok((first, last))
    }
}

/// (entry id, task id) of each entry of an `XREADGROUP` reply.
fn entries(reply: Value) -> anyhow::Result<Vec<(String, String)>> {
    read_entries(reply)?
        .into_iter()
        .map(|(entry_id, fields)| {
            let task_id = fields
                .chunks(2)
                .find(|pair| pair.first().is_some_and(|name| name == b"id"))
                .and_then(|pair| pair.get(1))
                .context("XREADGROUP: an entry without an `id` field")?;
            Ok((entry_id, String::from_utf8_lossy(task_id).into_owned()))
        })
        .collect()
}
