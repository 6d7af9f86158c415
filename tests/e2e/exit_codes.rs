//! Exit statuses a script can tell apart (the README's table), and errors
//! that say one cause once, name what they could not reach and the values
//! that would have done: the real `tandem` and `tandem-worker` binaries
//! against a real Redis and workers.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use redis::AsyncCommands;
use tandem_shared::TaskId;
use tandem_shared::device::Role;

use crate::support::gpus::{PAIR, PRIMARY, SECONDARY, registry, start};
use crate::support::{RedisServer, WorkerProcess, bin, free_port};

/// `tandem ARGS` with exactly the environment given (plus PATH).
fn tandem(env: &[(&str, &str)], args: &[&str]) -> Output {
    Command::new(bin("tandem"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .output()
        .expect("run tandem")
}

/// `tandem-worker ARGS` with the simulated pair of GPUs and `env`, for
/// commands that must end by themselves. Its Redis is a loopback port no
/// one listens on, so a worker that wrongly starts reaches no server; and
/// one that wrongly keeps running is killed and fails the test rather than
/// hanging it.
fn worker(env: &[(&str, &str)], args: &[&str]) -> Output {
    let nowhere = format!("redis://127.0.0.1:{}", free_port());
    let mut child = Command::new(bin("tandem-worker"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("TANDEM_REDIS_URL", nowhere)
        .env("TANDEM_SIMULATE_GPUS", PAIR)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tandem-worker");
    let exited = crate::support::poll_until(Duration::from_secs(60), || {
        child.try_wait().expect("wait for tandem-worker").is_some()
    });
    if !exited {
        let _ = child.kill();
        let out = child.wait_with_output().expect("tandem-worker output");
        panic!(
            "tandem-worker {args:?} kept running; it should have stopped at once:\n{}",
            stderr(&out)
        );
    }
    child.wait_with_output().expect("tandem-worker output")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts the exit status and that stderr holds every needle; returns stderr.
#[track_caller]
fn expect(out: &Output, code: i32, needles: &[&str]) -> String {
    let err = stderr(out);
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout:\n{}\nstderr:\n{err}",
        stdout(out)
    );
    for needle in needles {
        assert!(err.contains(needle), "{needle:?} missing from:\n{err}");
    }
    err
}

#[tokio::test]
async fn tandem_exit_codes_tell_the_outcomes_apart() {
    let redis = RedisServer::start();
    let url = redis.url();
    let env = [("REDIS_URL", url.as_str())];
    let _worker = WorkerProcess::start(&redis, &[]).await;

    // 0: done.
    let out = tandem(&env, &["submit", "noop", "--wait"]);
    expect(&out, 0, &[]);

    // 4: the task failed; `wait` on it says the same.
    let out = tandem(
        &env,
        &[
            "submit",
            "fail",
            "--params",
            r#"{"code": "E_EXIT"}"#,
            "--wait",
        ],
    );
    expect(&out, 4, &[]);
    assert!(stdout(&out).contains("E_EXIT"), "{}", stdout(&out));
    let err = stderr(&out);
    let id = err
        .lines()
        .find_map(|l| l.strip_prefix("submitted "))
        .expect(&err)
        .trim()
        .to_owned();
    expect(&tandem(&env, &["wait", &id]), 4, &[]);

    // A prefix no worker serves: tasks stay queued.
    let queued = [("REDIS_URL", url.as_str()), ("TANDEM_PREFIX", "idle")];
    // 5: the wait timed out.
    let out = tandem(&queued, &["submit", "noop"]);
    let id = stdout(&out).trim().to_owned();
    expect(
        &tandem(&queued, &["wait", &id, "--timeout-ms", "50"]),
        5,
        &["did not finish"],
    );
    expect(
        &tandem(&queued, &["submit", "noop", "--wait", "--timeout-ms", "50"]),
        5,
        &["did not finish"],
    );
    // 4 too: cancelled is not succeeded.
    expect(&tandem(&queued, &["cancel", &id]), 0, &[]);
    expect(&tandem(&queued, &["wait", &id]), 4, &[]);

    // 3: not found, whatever the command.
    let unknown = TaskId::new().to_string();
    for command in ["wait", "status", "task", "cancel"] {
        let out = tandem(&env, &[command, &unknown]);
        assert_eq!(out.status.code(), Some(3), "{command}: {}", stderr(&out));
    }

    // 2: bad arguments, found by clap, by the tool or by the kind.
    expect(
        &tandem(&env, &["submit", "noop", "--params", "{x"]),
        2,
        &["--params is not valid JSON"],
    );
    expect(
        &tandem(
            &env,
            &["submit", "sleep", "--params", r#"{"ms": 99999999}"#],
        ),
        2,
        &["bad parameters for kind sleep"],
    );
    expect(
        &tandem(&env, &["submit", "noop", "--memory-bytes", "lots"]),
        2,
        &["--memory-bytes", "lots"],
    );
    expect(
        &tandem(
            &[
                ("REDIS_URL", url.as_str()),
                ("TANDEM_REDIS_TIMEOUT_MS", "zero"),
            ],
            &["queues"],
        ),
        2,
        &["TANDEM_REDIS_TIMEOUT_MS"],
    );
}

#[tokio::test]
async fn errors_list_the_valid_values_and_name_flags_not_rust_apis() {
    let redis = RedisServer::start();
    let url = redis.url();
    let env = [("REDIS_URL", url.as_str())];

    let err = expect(
        &tandem(&env, &["submit", "noop", "--priority", "urgent"]),
        2,
        &["urgent", "one of: critical, high, normal, low"],
    );
    assert!(!err.contains("panicked"), "{err}");

    let err = expect(
        &tandem(&env, &["submit", "frobnicate"]),
        2,
        &[
            "kind \"frobnicate\" is not built in",
            "--class (one of: heavy, light, parallel, cpu)",
        ],
    );
    assert!(
        !err.contains("Task::"),
        "a shell user has no Rust API: {err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn an_unreachable_redis_exits_6_naming_the_url_and_the_cause_once() {
    let port = free_port();
    let url = format!("redis://:secret@127.0.0.1:{port}");
    let env = [
        ("REDIS_URL", url.as_str()),
        ("TANDEM_RECONNECT_TIMEOUT_MS", "200"),
        ("TANDEM_CONNECT_TIMEOUT_MS", "200"),
    ];
    let id = TaskId::new().to_string();
    for args in [
        &["submit", "noop"][..],
        &["wait", &id],
        &["status", &id],
        &["queues"],
        &["workers"],
    ] {
        let out = tandem(&env, args);
        let err = expect(&out, 6, &[]);
        assert!(!err.contains("secret"), "{args:?}: password shown: {err}");
        // Retries may log warnings first; the last line is the verdict.
        let last = err.lines().last().unwrap_or_default();
        assert!(
            last.starts_with(&format!(
                "tandem: cannot reach Redis at redis://:***@127.0.0.1:{port}"
            )),
            "{args:?}: {err}"
        );
        assert_eq!(
            last.to_lowercase().matches("refused").count(),
            1,
            "{args:?}: one cause, once: {last}"
        );
    }
}

#[tokio::test]
async fn a_wrong_password_is_a_config_error_naming_the_url() {
    let redis = RedisServer::start();
    let mut conn = redis.conn().await;
    let () = redis::cmd("CONFIG")
        .arg(&["SET", "requirepass", "right"])
        .query_async(&mut conn)
        .await
        .unwrap();
    let port = redis.url().rsplit(':').next().unwrap().to_owned();
    let url = format!("redis://:wrong@127.0.0.1:{port}");
    for args in [&["submit", "noop"][..], &["queues"]] {
        let out = tandem(&[("REDIS_URL", url.as_str())], args);
        let err = expect(
            &out,
            2,
            &[
                &format!("cannot reach Redis at redis://:***@127.0.0.1:{port}"),
                "uthentication failed",
            ],
        );
        assert!(!err.contains("wrong"), "{args:?}: password shown: {err}");
    }
    // The worker says the same, and does not retry what cannot succeed.
    let out = worker(&[("TANDEM_REDIS_URL", url.as_str())], &["run"]);
    let err = expect(
        &out,
        2,
        &[
            &format!("cannot reach Redis at redis://:***@127.0.0.1:{port}"),
            "uthentication failed",
        ],
    );
    assert!(!err.contains("wrong"), "password shown: {err}");
}

#[test]
fn a_device_no_gpu_matches_is_a_config_error_said_once() {
    for (device, needle) in [
        ("SIM-9", "no GPU has UUID SIM-9"),
        ("5", "no GPU has index 5"),
        // A prefix of both GPUs' UUIDs.
        ("SIM-", "names more than one GPU"),
    ] {
        // No Redis is needed: the device is bound before connecting.
        let out = worker(&[], &["run", "--device", device]);
        let err = expect(&out, 2, &[needle, PRIMARY]);
        assert_eq!(err.matches(needle).count(), 1, "said once:\n{err}");
    }
}

#[test]
fn a_role_pin_naming_two_gpus_is_a_config_error() {
    let pins = [("TANDEM_DEVICE_ROLES", "SIM-=heavy")];
    for args in [&["run", "--device", "0"][..], &["fleet"], &["detect"]] {
        let out = worker(&pins, args);
        expect(
            &out,
            2,
            &[
                "device_roles: SIM- names more than one GPU",
                PRIMARY,
                SECONDARY,
            ],
        );
    }
}

#[tokio::test]
async fn role_pins_and_devices_take_a_unique_uuid_prefix() {
    // Pinned against the scores: the weaker card heavy, the stronger light.
    let pins = [("TANDEM_DEVICE_ROLES", "SIM-1=heavy, SIM-0-rtx=light")];
    let out = worker(&pins, &["detect", "--json"]);
    expect(&out, 0, &[]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let gpus = json["gpus"].as_array().unwrap();
    assert_eq!(gpus[0]["uuid"], PRIMARY);
    assert_eq!(gpus[0]["role"], "light");
    assert_eq!(gpus[1]["role"], "heavy");
    assert!(
        gpus[1]["why"].as_str().unwrap().contains("pinned"),
        "{json}"
    );
    assert_eq!(json["unused_pins"], serde_json::json!([]), "{json}");

    // A worker bound by a UUID prefix runs with the role its pin gives.
    let redis = RedisServer::start();
    let secondary = start(&redis, "SIM-1", PAIR, &pins).await;
    let workers = registry(&redis).await;
    let me = workers.iter().find(|w| w.id == secondary.id).unwrap();
    assert_eq!((me.device.as_str(), me.role), (SECONDARY, Role::Heavy));
}

#[tokio::test]
async fn submit_takes_memory_bytes_in_bytes_or_as_a_size() {
    let redis = RedisServer::start();
    let url = redis.url();
    let env = [("REDIS_URL", url.as_str())];
    let mut conn = redis.conn().await;
    for (given, bytes) in [
        ("1000", 1000u64),
        ("2GiB", 2 << 30),
        ("512 MiB", 512 << 20),
        ("1.5GB", 1_500_000_000),
    ] {
        let out = tandem(&env, &["submit", "noop", "--memory-bytes", given]);
        expect(&out, 0, &[]);
        let id = stdout(&out).trim().to_owned();
        let stored: u64 = conn
            .hget(format!("tandem:{{cpu}}:task:{id}"), "memory_bytes")
            .await
            .unwrap();
        assert_eq!(stored, bytes, "--memory-bytes {given}");
    }
}
