//! The Python example (`examples/python/producer.py`, a thin use of the
//! `tandem` package in clients/python) against a real fleet: a CPU worker
//! and a simulated GPU, which the `monte_carlo` task is routed to. CI sets
//! `TANDEM_PYTHON` to a venv with the package installed, so these tests
//! always run there; elsewhere they use `python3` when it imports it, and
//! are skipped (saying why) when not. The package's own tests are pytest's
//! (clients/python/tests, run by .ci/run).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tandem_shared::kind::monte_carlo::black_scholes;

use crate::support::gpus::{WAIT, settle, wait_healthy};
use crate::support::{RedisServer, ScratchDir, WorkerProcess};

/// One simulated GPU: role `both`, so it always takes `parallel` tasks.
const GPU: &str = "RTX 4070 Ti, 12 GiB, 40.09 TFLOPS";
const GPU_UUID: &str = "SIM-0-rtx-4070-ti";
/// The option `producer.py` prices (its `OPTION`): s0, strike, rate,
/// dividend, sigma, maturity.
const OPTION: (f64, f64, f64, f64, f64, f64) = (100.0, 100.0, 0.05, 0.0, 0.2, 1.0);

#[tokio::test]
async fn python_producer_runs_every_task_on_a_fleet() {
    let Some(python) = python() else { return };
    let redis = RedisServer::start();
    let _fleet = fleet(&redis, &[]).await;
    let output = run_producer(&python, &redis, &[]).await;
    check_output(&output);
}

#[tokio::test]
async fn python_producer_signs_tasks_for_workers_that_require_it() {
    let Some(python) = python() else { return };
    let key = ("TANDEM_SIGNING_KEY", "python-shared-secret");
    let redis = RedisServer::start();
    let _fleet = fleet(&redis, &[key]).await;
    let output = run_producer(&python, &redis, &[key]).await;
    assert!(output.contains("every task is signed"), "{output}");
    check_output(&output);
}

/// The Python to run the example with, or `None` (after saying why) when
/// none has the `tandem` package outside CI.
fn python() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("TANDEM_PYTHON") {
        let path = PathBuf::from(path);
        assert!(
            imports_libraries(&path),
            "TANDEM_PYTHON={} cannot import tandem (pip install ./clients/python)",
            path.display()
        );
        return Some(path);
    }
    let python3 = PathBuf::from("python3");
    if imports_libraries(&python3) {
        return Some(python3);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must run the Python example: set TANDEM_PYTHON to a python with the tandem package (.ci/run does)"
    );
    eprintln!(
        "skipped: no python with the tandem package (set TANDEM_PYTHON, or `pip install ./clients/python`)"
    );
    None
}

fn imports_libraries(python: &Path) -> bool {
    std::process::Command::new(python)
        .args(["-c", "import tandem"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// A simulated GPU worker, then a CPU worker that has seen it (so it leaves
/// the `parallel` task to the GPU), each with `extra` settings.
async fn fleet(redis: &RedisServer, extra: &[(&str, &str)]) -> [WorkerProcess; 2] {
    let mut gpu_env = vec![("TANDEM_SIMULATE_GPUS", GPU), ("TANDEM_DEVICE", GPU_UUID)];
    gpu_env.extend_from_slice(extra);
    let gpu = WorkerProcess::spawn(redis, &gpu_env);
    wait_healthy(redis, &gpu.id).await;
    let cpu = WorkerProcess::start(redis, extra).await;
    settle(&crate::support::gpus::store(redis).await).await;
    [gpu, cpu]
}

/// Runs `producer.py` to its end; asserts it exited 0 and returns its
/// output (stdout, then stderr).
async fn run_producer(python: &Path, redis: &RedisServer, env: &[(&str, &str)]) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    let dir = ScratchDir::new("python");
    let stdout = dir.path().join("stdout");
    let stderr = dir.path().join("stderr");
    let mut child = tokio::process::Command::new(python)
        .arg(root.join("examples/python/producer.py"))
        .args(["--timeout-s", &WAIT.as_secs().to_string()])
        .env("REDIS_URL", redis.url())
        .env("TANDEM_PREFIX", "tandem")
        .env_remove("TANDEM_REDIS_URL")
        .env_remove("TANDEM_SIGNING_KEY")
        .envs(env.iter().copied())
        .stdout(std::fs::File::create(&stdout).expect("stdout file"))
        .stderr(std::fs::File::create(&stderr).expect("stderr file"))
        .kill_on_drop(true)
        .spawn()
        .expect("start producer.py");
    // The producer bounds its own wait by WAIT; this bounds a hang elsewhere.
    let status = tokio::time::timeout(WAIT + Duration::from_secs(30), child.wait())
        .await
        .expect("producer.py did not exit")
        .expect("wait for producer.py");
    let output = format!(
        "{}{}",
        std::fs::read_to_string(&stdout).unwrap_or_default(),
        std::fs::read_to_string(&stderr).unwrap_or_default()
    );
    assert!(
        status.success(),
        "producer.py exited with {status}:\n{output}"
    );
    output
}

/// Every task succeeded where it should have run, the idempotency key gave
/// one task, and the option price is near Black-Scholes.
fn check_output(output: &str) {
    for (label, device) in [
        ("echo", "cpu"),
        ("sleep", "cpu"),
        ("idempotent", "cpu"),
        ("monte_carlo", GPU_UUID),
    ] {
        let line = format!("{label}: succeeded device={device} ");
        assert!(output.contains(&line), "no `{line}` in:\n{output}");
    }
    assert!(
        output.contains("result={'symbol': 'ES', 'qty': 3}"),
        "echo returns its parameters:\n{output}"
    );
    assert!(
        output.contains("idempotent: the second submit returned the same task"),
        "{output}"
    );
    let price = field(output, "european_call=");
    let std_error = field(output, "std_error=");
    let (s0, strike, rate, dividend, sigma, maturity) = OPTION;
    let (call, _) = black_scholes(s0, strike, rate, dividend, sigma, maturity);
    assert!(
        std_error > 0.0 && std_error < 0.5,
        "std_error {std_error}:\n{output}"
    );
    // Generous: six standard errors, and never tighter than 1 %.
    let bound = (6.0 * std_error).max(0.01 * call);
    assert!(
        (price - call).abs() < bound,
        "price {price} is not within {bound} of Black-Scholes {call}:\n{output}"
    );
}

/// The number after `name` on the `monte_carlo european_call=...` line.
fn field(output: &str, name: &str) -> f64 {
    output
        .lines()
        .find(|line| line.starts_with("monte_carlo european_call="))
        .and_then(|line| line.split_whitespace().find_map(|w| w.strip_prefix(name)))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no {name} on the monte_carlo line:\n{output}"))
}
