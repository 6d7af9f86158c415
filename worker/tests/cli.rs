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
        .env("TANDEM_REDIS_URL", "redis://user:secret@127.0.0.1:1/0")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("prefix = checked"), "{text}");
    assert!(text.contains("concurrency = 3"), "{text}");
    assert!(
        !text.contains("secret"),
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
fn unreachable_redis_is_a_clear_error_not_a_panic() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = worker()
        .arg("run")
        .env("TANDEM_REDIS_URL", format!("redis://127.0.0.1:{port}"))
        .env("TANDEM_CONNECT_TIMEOUT_MS", "300")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("cannot reach Redis"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
