//! Recurring schedules against real redis-server and worker processes:
//! every tick fires once across workers, a worker SIGKILLed as a tick
//! fires and a Redis restart (AOF) double-fire nothing, missed ticks are
//! caught up by policy, pause/resume/rm, DST fire times through the CLI,
//! schedules written by hand in Redis, and bad input refused.
//!
//! Each tick's task id is derived from the schedule and the tick
//! (`recurring::tick_task_id`), so the tests count tasks by tick: a tick
//! that fired twice would show as two records with the same
//! `scheduled_for_ms`, or as `fired + skipped` over the number of ticks.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tandem_producer::{CatchUp, Schedule, Task};
use tandem_shared::recurring::tick_task_id;
use tandem_shared::{Class, TaskId};

use crate::support::{RedisServer, WorkerProcess, tandem, text, wait_until};

type Conn = redis::aio::MultiplexedConnection;

async fn redis_now(conn: &mut Conn) -> i64 {
    let (secs, micros): (i64, i64) = redis::cmd("TIME").query_async(conn).await.expect("TIME");
    secs * 1000 + micros / 1000
}

/// A schedule's hash, its values as text (`params` is MessagePack).
async fn hash(conn: &mut Conn, name: &str) -> HashMap<String, String> {
    let raw: HashMap<String, Vec<u8>> = redis::cmd("HGETALL")
        .arg(format!("tandem:{{cpu}}:schedule:{name}"))
        .query_async(conn)
        .await
        .expect("HGETALL");
    raw.into_iter().map(|(k, v)| (k, text(&v))).collect()
}

fn num(hash: &HashMap<String, String>, field: &str) -> i64 {
    hash.get(field).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// The tasks schedule `name` created: (tick, id, status), by tick.
async fn tick_tasks(conn: &mut Conn, name: &str) -> Vec<(i64, TaskId, String)> {
    let mut keys: Vec<String> = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg("tandem:{cpu}:task:*")
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await
            .expect("SCAN");
        keys.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    let mut out = Vec::new();
    for key in keys {
        let (schedule, tick, id, status): (
            Option<String>,
            Option<i64>,
            Option<String>,
            Option<String>,
        ) = redis::cmd("HMGET")
            .arg(&key)
            .arg("schedule")
            .arg("scheduled_for_ms")
            .arg("id")
            .arg("status")
            .query_async(conn)
            .await
            .expect("HMGET");
        if schedule.as_deref() == Some(name) {
            let id = id
                .expect("a scheduled task's record has its id")
                .parse()
                .expect("a task id");
            out.push((
                tick.expect("scheduled_for_ms"),
                id,
                status.unwrap_or_default(),
            ));
        }
    }
    out.sort_by_key(|(tick, _, _)| *tick);
    out
}

/// Every tick of an `every period_ms` schedule from `first_tick` up to its
/// current next fire was either fired once (one task, with the id derived
/// from the tick) or counted as skipped; returns the tasks.
async fn assert_each_tick_once(
    conn: &mut Conn,
    name: &str,
    first_tick: i64,
    period_ms: i64,
) -> Vec<(i64, TaskId, String)> {
    let state = hash(conn, name).await;
    let next = num(&state, "next_fire_ms");
    let seed = state.get("created_at_ms").cloned().unwrap_or_default();
    let tasks: Vec<_> = tick_tasks(conn, name)
        .await
        .into_iter()
        .filter(|(tick, _, _)| *tick < next)
        .collect();
    let ticks: HashSet<i64> = tasks.iter().map(|(tick, _, _)| *tick).collect();
    assert_eq!(ticks.len(), tasks.len(), "a tick fired twice: {tasks:?}");
    for (tick, id, _) in &tasks {
        assert_eq!(
            (tick - first_tick) % period_ms,
            0,
            "tick {tick} is off the grid"
        );
        assert_eq!(
            *id,
            tick_task_id(Class::Cpu, name, &seed, *tick),
            "tick {tick}"
        );
    }
    assert_eq!(num(&state, "fired"), tasks.len() as i64, "{state:?}");
    assert_eq!(
        num(&state, "fired") + num(&state, "skipped"),
        (next - first_tick) / period_ms,
        "every tick from {first_tick} to {next} is fired or skipped once: {state:?}"
    );
    tasks
}

async fn wait_fired(conn: &Conn, name: &str, at_least: i64, what: &str) {
    wait_until(Duration::from_secs(60), what, || {
        let mut conn = conn.clone();
        let name = name.to_owned();
        async move { num(&hash(&mut conn, &name).await, "fired") >= at_least }
    })
    .await;
}

async fn wait_all_succeeded(conn: &Conn, name: &str) {
    wait_until(
        Duration::from_secs(60),
        "every scheduled task succeeded",
        || {
            let mut conn = conn.clone();
            let name = name.to_owned();
            async move {
                tick_tasks(&mut conn, &name)
                    .await
                    .iter()
                    .all(|(_, _, status)| status == "succeeded")
            }
        },
    )
    .await;
}

fn echo() -> Task {
    Task::new("echo", &"tick")
        .expect("a task")
        .class(Class::Cpu)
}

#[tokio::test]
async fn an_every_schedule_fires_each_tick_once_with_three_workers() {
    let redis = RedisServer::start();
    let workers: Vec<WorkerProcess> = vec![
        WorkerProcess::start(&redis, &[]).await,
        WorkerProcess::start(&redis, &[]).await,
        WorkerProcess::start(&redis, &[]).await,
    ];
    let producer = redis.producer().await;
    let added = producer
        .schedule_add(Schedule::every("book", Duration::from_secs(1), echo()).expect("a schedule"))
        .await
        .expect("added");
    assert!(added.created);
    assert_eq!(added.class, Class::Cpu);
    let mut conn = redis.conn().await;
    wait_fired(&conn, "book", 5, "five ticks fired").await;
    let tasks = assert_each_tick_once(&mut conn, "book", added.next_fire_ms, 1_000).await;
    assert!(tasks.len() >= 5);
    wait_all_succeeded(&conn, "book").await;
    // The schedule reads plainly in Redis, and through the library.
    let state = hash(&mut conn, "book").await;
    assert_eq!(state.get("every_ms").map(String::as_str), Some("1000"));
    assert_eq!(state.get("kind").map(String::as_str), Some("echo"));
    let shown = producer
        .schedule("book")
        .await
        .expect("read")
        .expect("there");
    assert!(shown.next_fire_ms.expect("a next fire") > added.next_fire_ms);
    drop(workers);
}

#[tokio::test]
async fn a_worker_sigkilled_as_ticks_fire_and_a_redis_restart_double_fire_nothing() {
    let mut redis = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let mut workers = vec![
        WorkerProcess::start(&redis, &[]).await,
        WorkerProcess::start(&redis, &[]).await,
        WorkerProcess::start(&redis, &[]).await,
    ];
    let producer = redis.producer().await;
    let first = producer
        .schedule_add(Schedule::every("risk", Duration::from_secs(1), echo()).expect("a schedule"))
        .await
        .expect("added")
        .next_fire_ms;
    let mut conn = redis.conn().await;
    for round in 0..3 {
        // Kill a worker the moment a tick comes due, when every worker
        // wakes to fire it.
        let next = num(&hash(&mut conn, "risk").await, "next_fire_ms");
        wait_until(Duration::from_secs(30), "the tick is due", || {
            let mut conn = conn.clone();
            async move { redis_now(&mut conn).await >= next }
        })
        .await;
        workers.remove(0).signal("KILL");
        workers.push(WorkerProcess::spawn(&redis, &[]));
        let fired = num(&hash(&mut conn, "risk").await, "fired");
        wait_fired(&conn, "risk", fired + 2, "two more ticks").await;
        let tasks = assert_each_tick_once(&mut conn, "risk", first, 1_000).await;
        assert!(tasks.len() >= 2 * (round + 1), "round {round}: {tasks:?}");
    }
    // Redis crashes (SIGKILL) and comes back from its append-only file.
    let before = num(&hash(&mut conn, "risk").await, "fired");
    redis.crash_and_restart();
    let mut conn = redis.conn().await;
    wait_fired(&conn, "risk", before + 3, "three ticks after the restart").await;
    assert_each_tick_once(&mut conn, "risk", first, 1_000).await;
    wait_all_succeeded(&conn, "risk").await;
}

/// Ticks missed while no worker ran: the stored next fire lies 2.5 periods
/// in the past (as after a 2.5-hour outage of an hourly schedule) when the
/// first worker starts.
#[tokio::test]
async fn missed_ticks_fire_once_by_default_and_not_at_all_with_skip() {
    let redis = RedisServer::start();
    let producer = redis.producer().await;
    let hour = Duration::from_secs(3_600);
    for (name, catch_up) in [("once", CatchUp::Once), ("skip", CatchUp::Skip)] {
        producer
            .schedule_add(
                Schedule::every(name, hour, echo())
                    .expect("a schedule")
                    .catch_up(catch_up),
            )
            .await
            .expect("added");
    }
    let mut conn = redis.conn().await;
    let missed_since = redis_now(&mut conn).await - 9_000_000;
    for name in ["once", "skip"] {
        let _: () = redis::cmd("HSET")
            .arg(format!("tandem:{{cpu}}:schedule:{name}"))
            .arg("next_fire_ms")
            .arg(missed_since)
            .query_async(&mut conn)
            .await
            .expect("HSET");
        let _: () = redis::cmd("ZADD")
            .arg("tandem:{cpu}:schedules")
            .arg(missed_since)
            .arg(name)
            .query_async(&mut conn)
            .await
            .expect("ZADD");
    }
    let _worker = WorkerProcess::start(&redis, &[]).await;
    wait_until(Duration::from_secs(30), "both schedules caught up", || {
        let mut conn = conn.clone();
        async move {
            let mut done = true;
            for name in ["once", "skip"] {
                done &= num(&hash(&mut conn, name).await, "next_fire_ms") != missed_since;
            }
            done
        }
    })
    .await;
    let hour_ms = 3_600_000;
    // Three ticks were due (-2.5 h, -1.5 h, -0.5 h): `once` fired the
    // latest and counted two skipped, `skip` fired none.
    let once = hash(&mut conn, "once").await;
    assert_eq!(
        (num(&once, "fired"), num(&once, "skipped")),
        (1, 2),
        "{once:?}"
    );
    assert_eq!(num(&once, "next_fire_ms"), missed_since + 3 * hour_ms);
    let fired = tick_tasks(&mut conn, "once").await;
    assert_eq!(fired.len(), 1, "{fired:?}");
    assert_eq!(fired[0].0, missed_since + 2 * hour_ms);
    let skip = hash(&mut conn, "skip").await;
    assert_eq!(
        (num(&skip, "fired"), num(&skip, "skipped")),
        (0, 3),
        "{skip:?}"
    );
    assert_eq!(num(&skip, "next_fire_ms"), missed_since + 3 * hour_ms);
    assert!(tick_tasks(&mut conn, "skip").await.is_empty());
    wait_all_succeeded(&conn, "once").await;
}

#[tokio::test]
async fn pause_resume_and_rm_through_the_cli() {
    let redis = RedisServer::start();
    let _worker = WorkerProcess::start(&redis, &[]).await;
    let out = tandem(
        &redis,
        &[
            "schedule",
            "add",
            "pulse",
            "--every",
            "1s",
            "--kind",
            "echo",
            "--params",
            "\"hi\"",
            "--deadline",
            "30s",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("added schedule pulse (class cpu); next fire "));
    let mut conn = redis.conn().await;
    wait_fired(&conn, "pulse", 2, "two ticks").await;
    // A task's story names its schedule and tick.
    let (tick, id, _) = tick_tasks(&mut conn, "pulse").await[0];
    let story = tandem(&redis, &["task", &id.to_string(), "--json"]);
    let story: serde_json::Value = serde_json::from_slice(&story.stdout).expect("JSON");
    assert_eq!(story["submitted"]["schedule"], "pulse");
    assert_eq!(story["submitted"]["scheduled_for_ms"], tick);
    assert_eq!(story["submitted"]["producer"], "schedule:pulse");
    // Its deadline is 30 s after its creation (`--deadline 30s`).
    let deadline = story["submitted"]["deadline_ms"]
        .as_i64()
        .expect("a deadline");
    let submitted = story["submitted"]["at_ms"].as_i64().expect("submitted");
    assert_eq!(deadline - submitted, 30_000);
    let story = text(&tandem(&redis, &["task", &id.to_string()]).stdout);
    assert!(story.contains("schedule    pulse, its tick of "), "{story}");

    let out = tandem(&redis, &["schedule", "pause", "pulse"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let paused = hash(&mut conn, "pulse").await;
    assert_eq!(paused.get("paused").map(String::as_str), Some("1"));
    let listed = text(&tandem(&redis, &["schedule", "list"]).stdout);
    assert!(listed.contains("paused"), "{listed}");
    // Three periods pass (by the Redis clock) with nothing fired.
    let until = redis_now(&mut conn).await + 3_000;
    wait_until(Duration::from_secs(30), "three periods passed", || {
        let mut conn = conn.clone();
        async move { redis_now(&mut conn).await >= until }
    })
    .await;
    assert_eq!(
        num(&hash(&mut conn, "pulse").await, "fired"),
        num(&paused, "fired")
    );

    let resumed_at = redis_now(&mut conn).await;
    let out = tandem(&redis, &["schedule", "resume", "pulse"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // No catch-up of the paused ticks: the next fire is after the resume.
    assert!(num(&hash(&mut conn, "pulse").await, "next_fire_ms") > resumed_at);
    wait_fired(
        &conn,
        "pulse",
        num(&paused, "fired") + 1,
        "a tick after resume",
    )
    .await;

    let show = tandem(&redis, &["schedule", "show", "pulse"]);
    let shown = text(&show.stdout);
    assert!(
        shown.contains("every 1s") && shown.contains("active"),
        "{shown}"
    );
    let out = tandem(&redis, &["schedule", "rm", "pulse"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(hash(&mut conn, "pulse").await.is_empty());
    let members: Vec<String> = redis::cmd("ZRANGE")
        .arg("tandem:{cpu}:schedules")
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .expect("ZRANGE");
    assert!(members.is_empty());
    assert_eq!(
        text(&tandem(&redis, &["schedule", "list"]).stdout),
        "no schedules\n"
    );
    // Its tasks stay; a second rm says there is nothing to remove.
    assert!(!tick_tasks(&mut conn, "pulse").await.is_empty());
    assert_eq!(
        tandem(&redis, &["schedule", "rm", "pulse"]).status.code(),
        Some(3)
    );
}

#[tokio::test]
async fn cron_fire_times_across_dst_changes_are_stored_and_shown_in_both_zones() {
    let redis = RedisServer::start();
    // The second Sunday of March at 02:30 in New York: the US spring-forward
    // day, when 02:30 does not exist; the first Sunday of November at
    // 01:30: the fall-back day, when it happens twice.
    for (name, cron) in [("spring", "30 2 * 3 0#2"), ("fall", "30 1 * 11 0#1")] {
        let out = tandem(
            &redis,
            &[
                "schedule",
                "add",
                name,
                "--cron",
                cron,
                "--tz",
                "America/New_York",
                "--kind",
                "echo",
            ],
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        // The first fire, in UTC and in New York.
        let said = text(&out.stdout);
        assert!(
            said.contains(" UTC (") && said.ends_with(" EDT)\n"),
            "{said}"
        );
    }
    let mut conn = redis.conn().await;
    let spring = num(&hash(&mut conn, "spring").await, "next_fire_ms");
    let fall = num(&hash(&mut conn, "fall").await, "next_fire_ms");
    let show = |name: &str| {
        let out = tandem(&redis, &["schedule", "show", name, "--json"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("JSON")
    };
    let spring_shown = show("spring");
    assert_eq!(spring_shown["next_fire_ms"], spring);
    // Fires at the jump: 03:00 EDT, 07:00 UTC.
    let utc = spring_shown["next_fire_utc"].as_str().expect("utc");
    let local = spring_shown["next_fire_local"].as_str().expect("local");
    assert!(utc.ends_with(" 07:00:00 UTC"), "{utc}");
    assert!(local.ends_with(" 03:00:00 EDT"), "{local}");
    assert_eq!(&utc[..10], &local[..10]);
    // Fires once, at the first 01:30 (EDT, 05:30 UTC), not at 01:30 EST.
    let fall_shown = show("fall");
    assert_eq!(fall_shown["next_fire_ms"], fall);
    let utc = fall_shown["next_fire_utc"].as_str().expect("utc");
    let local = fall_shown["next_fire_local"].as_str().expect("local");
    assert!(utc.ends_with(" 05:30:00 UTC"), "{utc}");
    assert!(local.ends_with(" 01:30:00 EDT"), "{local}");
    let listed = text(&tandem(&redis, &["schedule", "list"]).stdout);
    assert!(
        listed.contains("03:00:00 EDT") && listed.contains("01:30:00 EDT"),
        "{listed}"
    );
}

#[tokio::test]
async fn schedules_written_by_hand_in_redis_fire_and_bad_ones_are_marked() {
    let redis = RedisServer::start();
    let mut conn = redis.conn().await;
    // What a service in another language writes: a hash and an index
    // entry due now (`0`), no first fire time, no id seed.
    let params = rmpv::Value::from("raw");
    let mut blob = Vec::new();
    rmpv::encode::write_value(&mut blob, &params).expect("msgpack");
    for (name, fields) in [
        ("raw", vec![("every_ms", "1000")]),
        ("badcron", vec![("cron", "61 * * * *")]),
        (
            "badzone",
            vec![("cron", "* * * * *"), ("tz", "Mars/Olympus")],
        ),
    ] {
        let mut cmd = redis::cmd("HSET");
        cmd.arg(format!("tandem:{{cpu}}:schedule:{name}"))
            .arg("kind")
            .arg("echo")
            .arg("class")
            .arg("cpu")
            .arg("params")
            .arg(blob.as_slice());
        for (field, value) in fields {
            cmd.arg(field).arg(value);
        }
        let _: () = cmd.query_async(&mut conn).await.expect("HSET");
        let _: () = redis::cmd("ZADD")
            .arg("tandem:{cpu}:schedules")
            .arg(0)
            .arg(name)
            .query_async(&mut conn)
            .await
            .expect("ZADD");
    }
    let _worker = WorkerProcess::start(&redis, &[]).await;
    wait_fired(&conn, "raw", 2, "the hand-written schedule fired twice").await;
    let state = hash(&mut conn, "raw").await;
    let first = tick_tasks(&mut conn, "raw").await[0].0;
    assert_each_tick_once(&mut conn, "raw", first, 1_000).await;
    assert!(state.contains_key("created_at_ms"), "{state:?}");
    wait_all_succeeded(&conn, "raw").await;
    for (name, why) in [
        (
            "badcron",
            "cron: \"61 * * * *\" is not a valid cron expression",
        ),
        ("badzone", "tz: \"Mars/Olympus\" is not a known time zone"),
    ] {
        wait_until(
            Duration::from_secs(30),
            "the bad schedule is marked",
            || {
                let mut conn = conn.clone();
                async move { hash(&mut conn, name).await.contains_key("error") }
            },
        )
        .await;
        let state = hash(&mut conn, name).await;
        assert!(state["error"].contains(why), "{state:?}");
        let score: Option<String> = redis::cmd("ZSCORE")
            .arg("tandem:{cpu}:schedules")
            .arg(name)
            .query_async(&mut conn)
            .await
            .expect("ZSCORE");
        assert_eq!(score.as_deref(), Some("inf"));
        assert!(tick_tasks(&mut conn, name).await.is_empty());
    }
    let listed = text(&tandem(&redis, &["schedule", "list"]).stdout);
    assert!(listed.contains("broken"), "{listed}");
}

#[tokio::test]
async fn bad_schedules_are_refused_with_the_flag_and_the_problem() {
    let redis = RedisServer::start();
    let add = |extra: &[&str]| {
        let mut args = vec!["schedule", "add", "bad", "--kind", "echo"];
        args.extend_from_slice(extra);
        tandem(&redis, &args)
    };
    for (extra, expect) in [
        (
            &["--cron", "61 * * * *"][..],
            "--cron: \"61 * * * *\" is not a valid cron expression",
        ),
        (
            &["--cron", "every day"][..],
            "--cron: \"every day\" is not a valid cron expression",
        ),
        (
            &["--cron", "30 17 * * 1-5", "--tz", "America/Nowhere"][..],
            "--tz: \"America/Nowhere\" is not a known time zone",
        ),
        (&["--every", "0"][..], "--every: must be more than 0"),
        (&["--every", "0s"][..], "--every: must be more than 0"),
        (
            &["--every", "soon"][..],
            "--every: \"soon\" is not a duration",
        ),
        (
            &["--every", "5m", "--catch-up", "all"][..],
            "--catch-up: \"all\" is not `once` or `skip`",
        ),
    ] {
        let out = add(extra);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{extra:?}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains(expect),
            "{extra:?}: {}",
            text(&out.stderr)
        );
    }
    let out = tandem(
        &redis,
        &["schedule", "add", "a b", "--every", "5m", "--kind", "echo"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("NAME: \"a b\" must be 1-64 characters"));
    // Neither cron nor every: clap says which flags are missing.
    assert_eq!(add(&[]).status.code(), Some(2));
    // Nothing was written.
    let mut conn = redis.conn().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("tandem:*schedule*")
        .query_async(&mut conn)
        .await
        .expect("KEYS");
    assert!(keys.is_empty(), "{keys:?}");
    // A name another class holds is refused by the library.
    let producer = redis.producer().await;
    producer
        .schedule_add(Schedule::every("dup", Duration::from_secs(60), echo()).expect("a schedule"))
        .await
        .expect("added");
    let heavy = Task::new("echo", &"x").expect("a task").class(Class::Heavy);
    let err = producer
        .schedule_add(Schedule::every("dup", Duration::from_secs(60), heavy).expect("a schedule"))
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("exists in class cpu"), "{err}");
    assert_eq!(
        tandem(&redis, &["schedule", "pause", "nothing"])
            .status
            .code(),
        Some(3)
    );
}

/// On a fleet that requires signed tasks, a schedule a producer with the
/// key added fires signed tasks that run; one written into Redis without
/// the key never fires (it would make workers sign anything).
#[tokio::test]
async fn a_signing_fleet_fires_only_schedules_signed_with_its_key() {
    let redis = RedisServer::start();
    let key = "k1-very-secret";
    let _worker = WorkerProcess::start(&redis, &[("TANDEM_SIGNING_KEY", key)]).await;
    let config = tandem_shared::Config {
        signing_key: tandem_shared::config::Secret::new(key),
        ..redis.config()
    };
    let producer = tandem_producer::Producer::connect(&config)
        .await
        .expect("producer");
    let first = producer
        .schedule_add(
            Schedule::every("signed", Duration::from_secs(1), echo()).expect("a schedule"),
        )
        .await
        .expect("added")
        .next_fire_ms;
    let mut conn = redis.conn().await;
    assert!(hash(&mut conn, "signed").await.contains_key("signature"));
    // A forged copy: the same definition without the signature.
    let _: () = redis::cmd("HSET")
        .arg("tandem:{cpu}:schedule:forged")
        .arg("kind")
        .arg("echo")
        .arg("class")
        .arg("cpu")
        .arg("every_ms")
        .arg(1000)
        .query_async(&mut conn)
        .await
        .expect("HSET");
    let _: () = redis::cmd("ZADD")
        .arg("tandem:{cpu}:schedules")
        .arg(0)
        .arg("forged")
        .query_async(&mut conn)
        .await
        .expect("ZADD");
    wait_fired(&conn, "signed", 2, "two signed ticks").await;
    assert_each_tick_once(&mut conn, "signed", first, 1_000).await;
    wait_all_succeeded(&conn, "signed").await;
    wait_until(
        Duration::from_secs(30),
        "the forged schedule is marked",
        || {
            let mut conn = conn.clone();
            async move { hash(&mut conn, "forged").await.contains_key("error") }
        },
    )
    .await;
    let forged = hash(&mut conn, "forged").await;
    assert!(
        forged["error"].starts_with("signature: missing or wrong"),
        "{forged:?}"
    );
    assert!(tick_tasks(&mut conn, "forged").await.is_empty());
}

/// On a three-master Redis Cluster every class's schedules live in its
/// slot, so the fire script (schedule, index, stream and task record in one
/// call) runs there; the views read every class's master.
#[tokio::test]
async fn schedules_of_several_classes_fire_on_a_redis_cluster() {
    let cluster = crate::support::ha::RedisCluster::start();
    let _worker = WorkerProcess::spawn_with(&cluster.env(), &[("TANDEM_CPU_FALLBACK_MS", "0")]);
    let producer = tandem_producer::Producer::connect(&cluster.config())
        .await
        .expect("producer connects to the cluster");
    let every = Duration::from_secs(1);
    for (name, class) in [("c-cpu", Class::Cpu), ("c-parallel", Class::Parallel)] {
        let task = Task::new("echo", &name).expect("a task").class(class);
        let added = producer
            .schedule_add(Schedule::every(name, every, task).expect("a schedule"))
            .await
            .expect("added");
        assert_eq!(added.class, class);
    }
    wait_until(
        Duration::from_secs(60),
        "both classes' schedules fired twice",
        || {
            let producer = producer.clone();
            async move {
                let all = producer.schedules().await.expect("list");
                all.len() == 2 && all.iter().all(|s| s.fired >= 2)
            }
        },
    )
    .await;
    for name in ["c-cpu", "c-parallel"] {
        let record = producer.schedule(name).await.expect("read").expect("there");
        let id = record.last_task.expect("a last task");
        let task = producer
            .record(id)
            .await
            .expect("read")
            .expect("its task exists");
        assert_eq!(task.producer.as_deref(), Some(&*format!("schedule:{name}")));
        producer.schedule_pause(name).await.expect("paused");
        producer.schedule_remove(name).await.expect("removed");
    }
    assert!(producer.schedules().await.expect("list").is_empty());
}

/// A key of the wrong type where a tick's task record goes: the fire
/// changes nothing (no half-written tick), the worker goes on firing the
/// other schedules, and the tick fires once the key is fixed.
#[tokio::test]
async fn a_wrong_typed_key_holds_up_its_own_tick_only() {
    let redis = RedisServer::start();
    let worker = WorkerProcess::start(&redis, &[]).await;
    let producer = redis.producer().await;
    let minute = Duration::from_secs(60);
    let mut conn = redis.conn().await;
    for name in ["stuck", "fine"] {
        producer
            .schedule_add(Schedule::every(name, minute, echo()).expect("a schedule"))
            .await
            .expect("added");
    }
    // Both due now, by the Redis clock (their next tick a minute later).
    let tick = redis_now(&mut conn).await;
    let seed = hash(&mut conn, "stuck").await["created_at_ms"].clone();
    let record = format!(
        "tandem:{{cpu}}:task:{}",
        tick_task_id(Class::Cpu, "stuck", &seed, tick)
    );
    let _: () = redis::cmd("SET")
        .arg(&record)
        .arg("not a hash")
        .query_async(&mut conn)
        .await
        .expect("SET");
    for name in ["stuck", "fine"] {
        let _: () = redis::pipe()
            .atomic()
            .cmd("HSET")
            .arg(format!("tandem:{{cpu}}:schedule:{name}"))
            .arg("next_fire_ms")
            .arg(tick)
            .cmd("ZADD")
            .arg("tandem:{cpu}:schedules")
            .arg(tick)
            .arg(name)
            .query_async(&mut conn)
            .await
            .expect("MULTI");
    }
    wait_until(
        Duration::from_secs(30),
        "the worker met the wrong type",
        || {
            let log = worker.log_text();
            async move { log.contains("WRONGTYPE") }
        },
    )
    .await;
    wait_fired(&conn, "fine", 1, "the other schedule fired").await;
    let state = hash(&mut conn, "stuck").await;
    assert_eq!(num(&state, "fired"), 0, "{state:?}");
    assert_eq!(
        num(&state, "next_fire_ms"),
        tick,
        "nothing moved: {state:?}"
    );
    let _: () = redis::cmd("DEL")
        .arg(&record)
        .query_async(&mut conn)
        .await
        .expect("DEL");
    wait_fired(&conn, "stuck", 1, "the stuck tick fired once fixed").await;
    let fired = tick_tasks(&mut conn, "stuck").await;
    assert_eq!(fired.len(), 1, "{fired:?}");
    assert_eq!(fired[0].0, tick);
    assert_eq!(
        num(&hash(&mut conn, "stuck").await, "next_fire_ms"),
        tick + 60_000
    );
}

/// Adding a schedule under a name it already has replaces its definition
/// (the next task carries the new parameters) and keeps its counters and
/// id seed; the fences make a worker that read the old definition fire
/// nothing from it.
#[tokio::test]
async fn adding_again_replaces_the_definition_and_keeps_the_counters() {
    let redis = RedisServer::start();
    let _worker = WorkerProcess::start(&redis, &[]).await;
    let producer = redis.producer().await;
    let every = Duration::from_secs(1);
    let old = Task::new("echo", &"old").expect("a task").class(Class::Cpu);
    producer
        .schedule_add(Schedule::every("book", every, old).expect("a schedule"))
        .await
        .expect("added");
    let mut conn = redis.conn().await;
    wait_fired(&conn, "book", 2, "two ticks").await;
    let before = hash(&mut conn, "book").await;
    let new = Task::new("echo", &"new").expect("a task").class(Class::Cpu);
    let replaced = producer
        .schedule_add(Schedule::every("book", every, new).expect("a schedule"))
        .await
        .expect("replaced");
    assert!(!replaced.created);
    let after = hash(&mut conn, "book").await;
    assert_eq!(after["created_at_ms"], before["created_at_ms"]);
    assert_eq!(num(&after, "revision"), 2);
    assert!(num(&after, "fired") >= num(&before, "fired"));
    wait_fired(
        &conn,
        "book",
        num(&after, "fired") + 1,
        "a tick after the replacement",
    )
    .await;
    // The newest task carries the new parameters.
    let latest = tick_tasks(&mut conn, "book").await.pop().expect("a task");
    let producer_outcome = producer
        .wait(latest.1, Duration::from_secs(30))
        .await
        .expect("the task finishes");
    let echoed: String = producer_outcome.result().expect("an echo");
    assert_eq!(echoed, "new");
    // No tick fired twice across the replacement.
    let tasks = tick_tasks(&mut conn, "book").await;
    let ticks: HashSet<i64> = tasks.iter().map(|t| t.0).collect();
    assert_eq!(ticks.len(), tasks.len(), "{tasks:?}");
}
