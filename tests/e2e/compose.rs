//! docker-compose.yml, the Dockerfile and deploy/prometheus.yml, checked
//! without a Docker engine: every service that runs a Tandem binary runs
//! here as the container would (its entrypoint, command and environment)
//! with `--check-config`; the worker services run for real against a test
//! Redis on simulated GPUs, each seeing the GPUs its reservation gives it,
//! on a host whose GPU 0 is the smaller card, and the roles must come out
//! right; and the file's structure is what a GPU fleet needs (AOF, health
//! check, GPUs reserved without pinned roles, a CPU worker, Prometheus
//! scraping them all).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use serde_yaml::Value;
use tandem_shared::Config;
use tandem_shared::device::{Health, Role};

use crate::support::gpus::{WAIT, registry};
use crate::support::{RedisServer, ScratchDir, bin, wait_until};

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
    assert_eq!(checked, ["fleet", "cpu", "cli"], "services run");
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
    check(
        "fleet",
        "TANDEM_DEVICE_ROLES",
        "GPU-a=boss",
        "TANDEM_DEVICE_ROLES",
    );
    check(
        "fleet",
        "TANDEM_FLEET_CPU_WORKER",
        "maybe",
        "TANDEM_FLEET_CPU_WORKER",
    );
    check("cpu", "TANDEM_DEVICE", "GPU 1", "TANDEM_DEVICE");
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
    for name in ["fleet", "cpu"] {
        let condition = &service(&compose, name)["depends_on"]["redis"]["condition"];
        assert_eq!(condition.as_str(), Some("service_healthy"), "{name}");
    }
}

/// A service's GPU reservation: `None` when it reserves none, else its
/// `device_ids`, or `count` (`all` or a number).
fn gpu_reservation(name: &str, service: &Value) -> Option<Value> {
    let devices = service["deploy"]["resources"]["reservations"]["devices"].as_sequence()?;
    let gpus: Vec<&Value> = devices
        .iter()
        .filter(|d| {
            words(&d["capabilities"])
                .unwrap_or_default()
                .iter()
                .any(|c| c == "gpu")
        })
        .collect();
    assert_eq!(gpus.len(), 1, "{name}: one GPU reservation");
    let device = gpus[0];
    assert_eq!(device["driver"].as_str(), Some("nvidia"), "{name}");
    if device["device_ids"].is_null() {
        Some(device["count"].clone())
    } else {
        Some(device["device_ids"].clone())
    }
}

/// The `CUDA_VISIBLE_DEVICES` that gives a process the GPUs the NVIDIA
/// runtime gives the service's container: `None` (unset: every GPU) for
/// `count: all`, the first N for `count: N`, the listed ones for
/// `device_ids` (renumbered from 0, as in the container), none without a
/// reservation.
fn visible_devices(name: &str, service: &Value) -> Option<String> {
    match gpu_reservation(name, service) {
        None => Some(String::new()),
        Some(Value::String(all)) if all == "all" => None,
        Some(Value::Number(n)) => {
            let n = n.as_u64().expect("a GPU count");
            Some((0..n).map(|i| i.to_string()).collect::<Vec<_>>().join(","))
        }
        Some(ids @ (Value::Sequence(_) | Value::String(_))) => {
            Some(words(&ids).expect("device_ids").join(","))
        }
        Some(other) => panic!("{name}: GPU reservation {other:?}"),
    }
}

#[test]
fn gpu_workers_get_their_roles_from_detection_and_a_cpu_worker_runs() {
    let compose = compose();
    let image = Dockerfile::read();
    let mut gpu_services = Vec::new();
    for (name, service) in services(&compose) {
        if gpu_reservation(&name, &service).is_none() {
            continue;
        }
        gpu_services.push(name.clone());
        // Nothing pins a GPU or a role: detection ranks the GPUs the
        // container sees, whichever index the larger card has.
        for var in ["TANDEM_ROLE", "TANDEM_DEVICE", "TANDEM_DEVICE_ROLES"] {
            assert_eq!(env_value(&service, var), None, "{name} sets {var}");
        }
        let (program, args) = invocation(&service, &image).expect("runs our image");
        assert_eq!(
            (program.as_str(), args.as_slice()),
            ("tandem-worker", &["fleet".to_owned()][..]),
            "{name}"
        );
        assert_eq!(
            visible_devices(&name, &service),
            None,
            "{name} sees every GPU"
        );
        assert_eq!(
            env_value(&service, "TANDEM_FLEET_CPU_WORKER").as_deref(),
            Some("false"),
            "{name}: the CPU worker is its own service"
        );
    }
    assert_eq!(gpu_services, ["fleet"]);

    let cpu = service(&compose, "cpu");
    assert_eq!(env_value(&cpu, "TANDEM_DEVICE").as_deref(), Some("cpu"));
    assert!(cpu["deploy"].is_null(), "the CPU worker reserves no GPU");
}

/// The seed's two cards with the smaller one first: GPU 0 is the 3060 Ti.
const SMALL_FIRST: &str = "RTX 3060 Ti, 8 GiB, 16.2 TFLOPS; RTX 4070 Ti, 12 GiB, 40.09 TFLOPS";

/// A service's container, run here as a process: killed on drop, its log
/// shown when the test fails.
struct Container {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("---- log of service {} ----\n{text}", self.name);
        }
    }
}

/// A worker service's environment on this host: the file's, pointed at
/// the test Redis, with the simulated GPUs its reservation lets it see.
fn host_env(
    name: &str,
    service: &Value,
    redis: &RedisServer,
    scratch: &Path,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = environment(service)
        .into_iter()
        .filter(|(k, _)| {
            // The service's network and volume, replaced below; no metrics
            // port that another test might hold.
            !matches!(
                k.as_str(),
                "TANDEM_REDIS_URL" | "TANDEM_METRICS_PORT" | "TANDEM_MODEL_DIR"
            )
        })
        .collect();
    env.extend(redis.env().into_iter().map(|(k, v)| (k.to_owned(), v)));
    env.push(("TANDEM_MODEL_DIR".into(), scratch.display().to_string()));
    env.push(("TANDEM_SIMULATE_GPUS".into(), SMALL_FIRST.into()));
    if let Some(visible) = visible_devices(name, service) {
        env.push(("CUDA_VISIBLE_DEVICES".into(), visible));
    }
    env
}

fn command(program: &str, env: &[(String, String)]) -> Command {
    let mut cmd = Command::new(bin(program));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (k, v)));
    cmd
}

#[tokio::test]
async fn on_a_host_whose_gpu0_is_the_smaller_card_the_roles_come_out_right() {
    let compose = compose();
    let image = Dockerfile::read();
    let redis = RedisServer::start();
    let scratch = ScratchDir::new("compose");
    let mut containers = Vec::new();
    let mut gpus_seen = 0;
    for (name, service) in services(&compose) {
        let Some((program, args)) = invocation(&service, &image) else {
            continue;
        };
        if program != "tandem-worker" {
            continue;
        }
        let env = host_env(&name, &service, &redis, scratch.path());

        // What the container would detect: the larger card is heavy.
        let out = command(&program, &env)
            .args(["detect", "--json"])
            .output()
            .expect("run detect");
        assert!(out.status.success(), "{name}: {out:?}");
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        let gpus = json["gpus"].as_array().cloned().unwrap_or_default();
        for gpu in &gpus {
            let want = if gpus.len() == 1 {
                "both"
            } else if gpu["name"].as_str().unwrap_or_default().contains("4070") {
                "heavy"
            } else {
                "light"
            };
            assert_eq!(gpu["role"], want, "{name}: {gpu}");
        }
        gpus_seen += gpus.len();

        // The service's exact command line.
        let log = scratch.path().join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("log");
        let child = command(&program, &env)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log"))
            .stderr(file)
            .spawn()
            .expect("start the service");
        containers.push(Container { name, child, log });
    }
    assert_eq!(gpus_seen, 2, "the host's two GPUs are served");

    // Every GPU and the CPU get a healthy worker: the 4070 Ti (GPU 1) is
    // the primary, the 3060 Ti (GPU 0) the secondary.
    wait_until(WAIT, "a healthy worker per GPU and the CPU", || async {
        let workers = registry(&redis).await;
        workers.len() == 3 && workers.iter().all(|w| w.health == Health::Healthy)
    })
    .await;
    let mut roles: Vec<(String, Option<u32>, Role)> = registry(&redis)
        .await
        .into_iter()
        .map(|w| (w.device_name, w.device_index, w.role))
        .collect();
    roles.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        roles,
        [
            (String::new(), None, Role::Cpu),
            ("RTX 3060 Ti (simulated)".to_owned(), Some(0), Role::Light),
            ("RTX 4070 Ti (simulated)".to_owned(), Some(1), Role::Heavy),
        ],
        "{} services",
        containers.len()
    );
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
    for name in ["fleet", "cpu"] {
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
    // The CUDA base image's own driver check (r570+ for 12.8) would refuse
    // hosts the code runs on (r525+): the README states that requirement.
    assert!(
        image
            .lines
            .iter()
            .any(|l| l == "ENV NVIDIA_DISABLE_REQUIRE=1"),
        "the base image's driver check is off"
    );
    assert!(
        read("README.md").contains("r525"),
        "the README states the driver the image needs"
    );

    let ignored = read(".dockerignore");
    assert!(
        ignored.lines().any(|l| l.trim() == "target"),
        "the build context leaves target/ out"
    );
}
