//! `tandem` as a process, without Redis: help, settings, argument errors.
//! (The end-to-end tests in `tests/` run its commands against Redis.)

use std::process::Command;

fn tandem() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tandem"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    cmd
}

#[test]
fn help_names_every_command() {
    let out = tandem().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    // The headline says what the tool is, not which crate it came from.
    assert!(
        text.starts_with("Tandem, a GPU-aware job queue on Redis Streams"),
        "{text}"
    );
    for command in [
        "submit", "wait", "status", "cancel", "queues", "demo", "bench", "settings",
    ] {
        assert!(
            text.contains(command),
            "{command} missing from help:\n{text}"
        );
    }
}

#[test]
fn settings_is_the_readme_table() {
    let out = tandem().arg("settings").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("TANDEM_REDIS_URL") && text.contains("redis://127.0.0.1:6379"),
        "{text}"
    );
}

#[test]
fn bad_arguments_are_refused() {
    let out = tandem()
        .args(["submit", "echo", "--priority", "urgent"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("urgent") && err.contains("one of: critical, high, normal, low"),
        "{err}"
    );

    let out = tandem().args(["status", "not-a-uuid"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));

    let out = tandem()
        .arg("queues")
        .env("TANDEM_REDIS_TIMEOUT_MS", "zero")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8(out.stderr)
            .unwrap()
            .contains("TANDEM_REDIS_TIMEOUT_MS")
    );
}

#[test]
fn the_readme_lists_every_setting_as_it_is() {
    let out = tandem().args(["settings", "--markdown"]).output().unwrap();
    let table = String::from_utf8(out.stdout).unwrap();
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    for row in table.lines() {
        assert!(
            readme.contains(row),
            "README.md's configuration table is out of date (regenerate it with scripts/readme-settings); missing:\n{row}"
        );
    }
}
