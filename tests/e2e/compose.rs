//! docker-compose.yml, the Dockerfile and deploy/prometheus.yml, checked
//! without a Docker engine: every service that runs a Tandem binary runs
//! here as the container would (its entrypoint, command and environment)
//! with `--check-config`, and the file's structure is what a GPU fleet
//! needs (AOF, health check, one reserved GPU and role per GPU worker, a
//! CPU worker, Prometheus scraping them all).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_yaml::Value;
use tandem_shared::Config;

use crate::support::bin;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn read(name: &str) -> String {
    std::fs::read_to_string(root().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// docker-compose.yml with its `<<` merge keys applied, as Compose reads it.
fn compose() -> Value {
    let mut value: Value = serde_yaml::from_str(&read("docker-compose.yml")).expect("valid YAML");
    value.apply_merge().expect("merge keys");
    value
}

fn services(compose: &Value) -> Vec<(String, Value)> {
    compose["services"]
        .as_mapping()
        .expect("a services mapping")
        .iter()
        .map(|(name, service)| (text(name), service.clone()))
        .collect()
}

fn service(compose: &Value, name: &str) -> Value {
    let service = compose["services"][name].clone();
    assert!(!service.is_null(), "no service {name}");
    service
}

/// A YAML scalar as Compose passes it on: strings as they are, numbers and
/// booleans as written.
fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("not a scalar: {other:?}"),
    }
}

/// `command:` or `entrypoint:` in either form: a list, or a string split
/// on whitespace as Compose does.
fn words(value: &Value) -> Option<Vec<String>> {
    match value {
        Value::Null => None,
        Value::Sequence(items) => Some(items.iter().map(text).collect()),
        Value::String(s) => Some(s.split_whitespace().map(str::to_owned).collect()),
        other => panic!("not a command: {other:?}"),
    }
}

/// `environment:` in either form: a mapping, or a list of `NAME=value`.
fn environment(service: &Value) -> Vec<(String, String)> {
    match &service["environment"] {
        Value::Null => Vec::new(),
        Value::Mapping(map) => map.iter().map(|(k, v)| (text(k), text(v))).collect(),
        Value::Sequence(items) => items
            .iter()
            .map(|item| {
                let item = text(item);
                let (name, value) = item.split_once('=').expect("NAME=value");
                (name.to_owned(), value.to_owned())
            })
            .collect(),
        other => panic!("environment: {other:?}"),
    }
}

fn env_value(service: &Value, name: &str) -> Option<String> {
    environment(service)
        .into_iter()
        .find_map(|(n, v)| (n == name).then_some(v))
}

/// The Dockerfile's last stage: the image the services run.
#[derive(Debug)]
struct Dockerfile {
    from: Vec<String>,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    lines: Vec<String>,
}

impl Dockerfile {
    fn read() -> Self {
        // Continuation lines joined, comments dropped: one instruction a line.
        let joined = read("Dockerfile").replace("\\\n", " ");
        let lines: Vec<String> = joined
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_owned)
            .collect();
        let exec_form = |keyword: &str| -> Vec<String> {
            lines
                .iter()
                .rev()
                .find_map(|l| l.strip_prefix(keyword))
                .map(|json| serde_json::from_str(json.trim()).expect("exec form"))
                .unwrap_or_default()
        };
        Dockerfile {
            from: lines
                .iter()
                .filter(|l| l.starts_with("FROM "))
                .cloned()
                .collect(),
            entrypoint: exec_form("ENTRYPOINT "),
            cmd: exec_form("CMD "),
            lines,
        }
    }
}

/// The program and arguments a service's container starts, when it runs
/// Tandem's image: its `entrypoint` (else the image's, with the image's CMD
/// as default arguments) and its `command`. Overriding the entrypoint drops
/// the image's CMD, as Docker does.
fn invocation(service: &Value, image: &Dockerfile) -> Option<(String, Vec<String>)> {
    let ours = !service["build"].is_null()
        || service["image"]
            .as_str()
            .is_some_and(|i| i.starts_with("tandem"));
    if !ours {
        return None;
    }
    let (entrypoint, default_cmd) = match words(&service["entrypoint"]) {
        Some(entrypoint) => (entrypoint, Vec::new()),
        None => (image.entrypoint.clone(), image.cmd.clone()),
    };
    let (program, rest) = entrypoint.split_first().expect("an entrypoint");
    let mut args = rest.to_vec();
    args.extend(words(&service["command"]).unwrap_or(default_cmd));
    Some((program.clone(), args))
}

/// Runs `program --check-config args...` with exactly `env`.
fn check_config(program: &str, args: &[String], env: &[(String, String)]) -> Output {
    assert!(
        program == "tandem-worker" || program == "tandem",
        "unknown program {program}"
    );
    Command::new(bin(program))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .arg("--check-config")
        .args(args)
        .output()
        .expect("run the binary")
}

#[test]
fn every_tandem_service_passes_its_own_check_config() {
    let compose = compose();
    let image = Dockerfile::read();
    let mut checked = Vec::new();
    for (name, service) in services(&compose) {
        let Some((program, args)) = invocation(&service, &image) else {
            continue;
        };
        let env = environment(&service);
        let out = check_config(&program, &args, &env);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{name}: {program} --check-config {args:?} failed: {}{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Every variable must be a setting the binary knows and shows with
        // the service's value: a misspelt name would be silently ignored.
        for (var, value) in &env {
            match Config::SETTINGS.iter().find(|s| s.env == var.as_str()) {
                Some(setting) => {
                    let line = format!("{} = {value}", setting.name);
                    assert!(
                        stdout.lines().any(|l| l == line),
                        "{name}: `{line}` missing from:\n{stdout}"
                    );
                }
                None => panic!("{name}: {var} is not a Tandem setting"),
            }
        }
        checked.push(name);
    }
    assert_eq!(checked, ["gpu0", "gpu1", "cpu", "cli"], "services run");
}

#[test]
fn a_broken_setting_fails_check_config_with_exit_2_naming_it() {
    let compose = compose();
    let image = Dockerfile::read();
    let check = |name: &str, var: &str, value: &str, needle: &str| {
        let (program, args) = invocation(&service(&compose, name), &image).expect("ours");
        let mut env = environment(&service(&compose, name));
        env.retain(|(k, _)| k != var);
        env.push((var.to_owned(), value.to_owned()));
        let out = check_config(&program, &args, &env);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name} {var}={value}: {stderr}");
        assert!(stderr.contains(needle), "{name} {var}={value}: {stderr}");
    };
    check("gpu0", "TANDEM_ROLE", "bogus", "TANDEM_ROLE");
    check("gpu1", "TANDEM_DEVICE", "GPU 1", "TANDEM_DEVICE");
    check("cpu", "TANDEM_LOG_FORMAT", "xml", "TANDEM_LOG_FORMAT");
    check("cli", "TANDEM_PREFIX", "has space", "prefix");
}

#[test]
fn redis_keeps_an_append_only_file_and_reports_health() {
    let compose = compose();
    let redis = service(&compose, "redis");
    let command = words(&redis["command"]).expect("a redis command").join(" ");
    assert!(command.contains("--appendonly yes"), "{command}");
    assert!(command.contains("--appendfsync everysec"), "{command}");
    let probe = words(&redis["healthcheck"]["test"])
        .expect("a health check")
        .join(" ");
    assert!(probe.contains("redis-cli ping"), "{probe}");
    // Workers wait for that health check, not just for the container.
    for name in ["gpu0", "gpu1", "cpu"] {
        let condition = &service(&compose, name)["depends_on"]["redis"]["condition"];
        assert_eq!(condition.as_str(), Some("service_healthy"), "{name}");
    }
}

#[test]
fn each_gpu_worker_reserves_its_gpu_with_a_role_and_a_cpu_worker_runs() {
    let compose = compose();
    let mut reserved = BTreeSet::new();
    // The seed's host: the faster GPU 0 takes heavy work, GPU 1 light.
    for (name, gpu, expected_role) in [("gpu0", "0", "heavy"), ("gpu1", "1", "light")] {
        let worker = service(&compose, name);
        let devices = worker["deploy"]["resources"]["reservations"]["devices"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{name} reserves no device"));
        assert_eq!(devices.len(), 1, "{name}: one GPU per worker");
        let device = &devices[0];
        assert_eq!(device["driver"].as_str(), Some("nvidia"), "{name}");
        let capabilities = words(&device["capabilities"]).expect("capabilities");
        assert!(capabilities.iter().any(|c| c == "gpu"), "{name}");
        let ids = words(&device["device_ids"]).expect("device_ids");
        assert_eq!(ids, [gpu], "{name} is pinned to its GPU");
        reserved.extend(ids);
        assert_eq!(
            env_value(&worker, "TANDEM_ROLE").as_deref(),
            Some(expected_role),
            "{name}"
        );
        // The container sees only its reserved GPU, always as index 0.
        assert_eq!(
            env_value(&worker, "TANDEM_DEVICE").as_deref(),
            Some("0"),
            "{name}"
        );
    }
    assert_eq!(reserved.len(), 2, "two different GPUs");

    let cpu = service(&compose, "cpu");
    assert_eq!(env_value(&cpu, "TANDEM_DEVICE").as_deref(), Some("cpu"));
    assert!(cpu["deploy"].is_null(), "the CPU worker reserves no GPU");
}

#[test]
fn prometheus_is_optional_and_scrapes_every_worker() {
    let compose = compose();
    let prometheus = service(&compose, "prometheus");
    let profiles = words(&prometheus["profiles"]).expect("profiles");
    assert_eq!(profiles, ["monitoring"]);
    let volumes = words(&prometheus["volumes"]).expect("volumes").join(" ");
    assert!(volumes.contains("./deploy/prometheus.yml:"), "{volumes}");

    let config: Value = serde_yaml::from_str(&read("deploy/prometheus.yml")).expect("YAML");
    let mut targets = BTreeSet::new();
    for job in config["scrape_configs"]
        .as_sequence()
        .expect("scrape_configs")
    {
        for group in job["static_configs"].as_sequence().expect("static_configs") {
            targets.extend(words(&group["targets"]).expect("targets"));
        }
    }
    for name in ["gpu0", "gpu1", "cpu"] {
        let port = env_value(&service(&compose, name), "TANDEM_METRICS_PORT")
            .unwrap_or_else(|| panic!("{name} sets no metrics port"));
        let target = format!("{name}:{port}");
        assert!(targets.contains(&target), "{target} not in {targets:?}");
    }
}

#[test]
fn dockerfile_builds_in_stages_and_ships_both_binaries() {
    let image = Dockerfile::read();
    assert!(image.from.len() >= 2, "multi-stage: {:?}", image.from);
    assert!(
        image
            .lines
            .iter()
            .any(|l| l.contains("cargo build --release --locked")),
        "the builder builds release binaries from Cargo.lock"
    );
    let copied = image
        .lines
        .iter()
        .filter(|l| l.starts_with("COPY --from="))
        .flat_map(|l| l.split_whitespace())
        .filter_map(|word| word.rsplit('/').next())
        .collect::<BTreeSet<_>>();
    for binary in ["tandem-worker", "tandem"] {
        assert!(copied.contains(binary), "{binary} not copied: {copied:?}");
    }
    let user = image
        .lines
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER");
    assert!(!matches!(user.trim(), "root" | "0"), "runs as root");
    assert_eq!(image.entrypoint, ["tandem-worker"]);

    let ignored = read(".dockerignore");
    assert!(
        ignored.lines().any(|l| l.trim() == "target"),
        "the build context leaves target/ out"
    );
}
