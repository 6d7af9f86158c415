//! `tandem-worker` as a process: configuration checks and start-up errors.
//! (The end-to-end tests in `tests/` run it against Redis.)

use std::process::Command;

fn worker() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tandem-worker"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    cmd
}

#[test]
fn check_config_prints_the_effective_settings() {
    let out = worker()
        .args(["--check-config", "--concurrency", "3"])
        .env("TANDEM_PREFIX", "checked")
        .env("TANDEM_REDIS_URL", "redis://user:pa55w0rd@127.0.0.1:1/0")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("prefix = checked"), "{text}");
    assert!(text.contains("concurrency = 3"), "{text}");
    assert!(
        !text.contains("pa55w0rd"),
        "the password must not be printed: {text}"
    );
}

#[test]
fn bad_settings_exit_2_naming_the_setting() {
    let check = |var: &str, value: &str, needle: &str| {
        let out = worker()
            .arg("--check-config")
            .env(var, value)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{var}={value}: {out:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(err.contains(needle), "{var}={value}: {err}");
    };
    check("TANDEM_CONCURRENCY", "many", "TANDEM_CONCURRENCY");
    check("TANDEM_CLASSES", "cpu,gpu", "gpu");
    check("TANDEM_PREFIX", "has space", "prefix");
    check("TANDEM_LOG_FORMAT", "xml", "TANDEM_LOG_FORMAT");
}

#[test]
fn settings_lists_every_variable() {
    let out = worker().arg("settings").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for setting in tandem_shared::Config::SETTINGS {
        assert!(text.contains(setting.env), "{} missing", setting.env);
    }
}

#[test]
fn unreachable_redis_is_retried_with_a_clear_message_until_stopped() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = std::env::temp_dir().join(format!(
        "tandem-worker-unreachable-{}.log",
        std::process::id()
    ));
    let mut child = worker()
        .arg("run")
        .env(
            "TANDEM_REDIS_URL",
            format!("redis://:secret@127.0.0.1:{port}"),
        )
        .env("TANDEM_CONNECT_TIMEOUT_MS", "200")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let retries = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("retrying in")
            .count()
    };
    while retries() < 2 {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "no retry logged: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_file(&log);
    // Stopped before it ever reached Redis: "Redis unreachable".
    assert_eq!(exit.code(), Some(6), "{text}");
    assert!(
        text.contains("cannot reach Redis at redis://:***@127.0.0.1"),
        "{text}"
    );
    assert!(
        !text.contains("pa55w0rd"),
        "the password must not be logged: {text}"
    );
    assert!(!text.contains("panicked"), "{text}");
}

/// The `--check-config` output of `tandem-worker ARGS`, as `name = value` lines.
fn checked(args: &[&str]) -> Vec<String> {
    let out = worker().args(args).output().expect("run tandem-worker");
    assert!(out.status.success(), "{args:?}: {out:?}");
    String::from_utf8(out.stdout)
        .expect("UTF-8 settings")
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn flags_mean_the_same_before_and_after_the_command() {
    // Each flag with a value no default has, and the line it must print.
    let shared: [(&[&str], &str); 4] = [
        (
            &["--redis-url", "redis://127.0.0.1:7399"],
            "redis_url = redis://127.0.0.1:7399",
        ),
        (&["--prefix", "elsewhere"], "prefix = elsewhere"),
        (&["--concurrency", "7"], "concurrency = 7"),
        (&["--classes", "heavy,cpu"], "classes = heavy,cpu"),
    ];
    let run_only: [(&[&str], &str); 3] = [
        (&["--device", "GPU-8e0b"], "device = GPU-8e0b"),
        (&["--role", "light"], "role = light"),
        (&["--worker-id", "w-7"], "worker_id = w-7"),
    ];
    let cases = shared
        .iter()
        .map(|case| ("run", case))
        .chain(run_only.iter().map(|case| ("run", case)))
        .chain(shared.iter().map(|case| ("fleet", case)));
    for (command, (flag, line)) in cases {
        let before: Vec<&str> = flag
            .iter()
            .copied()
            .chain([command, "--check-config"])
            .collect();
        let after: Vec<&str> = [command, "--check-config"]
            .into_iter()
            .chain(flag.iter().copied())
            .collect();
        for args in [before, after] {
            let lines = checked(&args);
            assert!(
                lines.iter().any(|l| l == line),
                "{args:?} must print {line:?}:\n{}",
                lines.join("\n")
            );
        }
    }
    // Without a command (a run), too.
    let lines = checked(&["--device", "GPU-8e0b", "--prefix", "p2", "--check-config"]);
    assert!(lines.iter().any(|l| l == "device = GPU-8e0b"), "{lines:?}");
    assert!(lines.iter().any(|l| l == "prefix = p2"), "{lines:?}");
    // `fleet --no-cpu` shows as the setting it overrides.
    let lines = checked(&["fleet", "--no-cpu", "--check-config"]);
    assert!(
        lines.iter().any(|l| l == "fleet_cpu_worker = false"),
        "{lines:?}"
    );
}

#[test]
fn a_run_flag_in_two_places_or_before_another_command_is_refused() {
    for (args, needle) in [
        (
            &["--device", "0", "run", "--device", "1"][..],
            "--device is given both before and after `run`",
        ),
        (
            &["--device", "0", "fleet"][..],
            "`fleet` takes no such flag",
        ),
        (&["--role", "heavy", "detect"][..], "--role"),
    ] {
        let out = worker().args(args).arg("--check-config").output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(err.contains(needle), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: said once: {err}");
    }
}

#[test]
fn a_bad_value_lists_the_valid_ones() {
    let out = worker()
        .args(["run", "--role", "primary", "--check-config"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("one of: heavy, light, both, cpu"), "{err}");
}
