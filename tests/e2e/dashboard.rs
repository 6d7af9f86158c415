//! Queue-level observability against real workers: the state index behind
//! `tandem tasks --status` follows tasks through running, succeeded,
//! failed, dead, requeued and cancelled.

use std::time::Duration;

use tandem_producer::Task;
use tandem_shared::Status;
use tandem_shared::kind::builtin::{Fail, FailParams, Noop, Sleep, SleepParams};

use crate::support::{RedisServer, WorkerProcess, tandem, text, wait_until};

const WAIT: Duration = Duration::from_secs(30);

/// `tandem tasks --status <state> --json`: the ids listed, newest first.
fn listed(redis: &RedisServer, state: &str, extra: &[&str]) -> Vec<String> {
    let out = tandem(
        redis,
        &[&["tasks", "--status", state, "--json"], extra].concat(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
            assert_eq!(
                value["status"].as_str(),
                Some(if state == "dead" { "failed" } else { state }),
                "{line}"
            );
            value["id"].as_str().expect("an id").to_owned()
        })
        .collect()
}

#[tokio::test]
async fn tasks_by_status_follow_each_task_through_its_states() {
    let redis = RedisServer::start();
    let _worker = WorkerProcess::start(&redis, &[("TANDEM_CONCURRENCY", "2")]).await;
    let producer = redis.producer().await;

    let ok = producer
        .submit(Task::of::<Noop>(&rmpv::Value::Nil).unwrap())
        .await
        .unwrap();
    let failing = Task::of::<Fail>(&FailParams {
        code: "E_INDEX".into(),
        message: "listed as failed and dead".into(),
        retry: false,
    })
    .unwrap();
    let failing = producer.submit(failing).await.unwrap();
    assert_eq!(
        producer.wait(ok, WAIT).await.unwrap().status,
        Status::Succeeded
    );
    let failed = producer.wait(failing, WAIT).await.unwrap();
    assert_eq!(failed.status, Status::Failed);
    let letter = failed.record.dead_letter.clone().expect("dead-lettered");

    let long = producer
        .submit(Task::of::<Sleep>(&SleepParams { ms: Sleep::MAX_MS }).unwrap())
        .await
        .unwrap();
    wait_until(WAIT, "the sleep listed as running", || async {
        listed(&redis, "running", &[]) == [long.to_string()]
    })
    .await;
    assert_eq!(listed(&redis, "succeeded", &[]), [ok.to_string()]);
    assert_eq!(listed(&redis, "failed", &[]), [failing.to_string()]);
    assert_eq!(listed(&redis, "dead", &[]), [failing.to_string()]);
    // --kind filters; a table names the task and its error code.
    assert!(listed(&redis, "succeeded", &["--kind", "fail"]).is_empty());
    let out = tandem(&redis, &["tasks", "--status", "failed"]);
    let table = text(&out.stdout);
    assert!(
        table.contains(&failing.to_string()) && table.contains("E_INDEX"),
        "{table}"
    );

    // Cancelled while it runs: it leaves `running` for `cancelled`.
    producer.cancel(long).await.unwrap();
    assert_eq!(
        producer.wait(long, WAIT).await.unwrap().status,
        Status::Cancelled
    );
    assert!(listed(&redis, "running", &[]).is_empty());
    assert_eq!(listed(&redis, "cancelled", &[]), [long.to_string()]);

    // A requeued dead letter leaves `dead` (and `failed`) until it ends again.
    let out = tandem(&redis, &["dlq", "requeue", &letter]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_until(WAIT, "the requeued task dead-lettered anew", || async {
        producer
            .record(failing)
            .await
            .unwrap()
            .is_some_and(|r| r.dead_letter.is_some_and(|d| d != letter))
    })
    .await;
    assert_eq!(listed(&redis, "dead", &[]), [failing.to_string()]);

    // A bad state is refused, naming the flag and the choices.
    let out = tandem(&redis, &["tasks", "--status", "sleeping"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("--status") && err.contains("running"), "{err}");
}

/// `GET path` on a loopback port: (status line, body).
pub(crate) async fn http(port: u16, method: &str, path: &str, extra: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: 0\r\n{extra}\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut reply))
        .await
        .expect("a response")
        .unwrap();
    let reply = String::from_utf8_lossy(&reply).into_owned();
    let (head, body) = reply.split_once("\r\n\r\n").expect("a head and a body");
    let status = head.lines().next().unwrap_or_default().to_owned();
    (status, body.to_owned())
}

/// The value of the sample `series` (`name{labels}`, exactly) in an
/// exposition.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// A `tandem` process that is killed when the test ends, even a failed one.
pub(crate) struct Serving(std::process::Child);

impl Serving {
    pub(crate) fn start(redis: &RedisServer, args: &[&str]) -> Self {
        let child = std::process::Command::new(crate::support::bin("tandem"))
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("REDIS_URL", redis.url())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn tandem");
        Serving(child)
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `tandem exporter` serves the queues: waiting per class and priority,
/// the oldest waiting age, running, retrying and dead letters; a worker
/// counts a kind it does not know as `other`.
#[tokio::test]
async fn the_exporter_serves_queue_metrics_and_kinds_are_bounded() {
    let redis = RedisServer::start();
    let producer = redis.producer().await;
    for _ in 0..5 {
        producer
            .submit(
                Task::of::<Noop>(&rmpv::Value::Nil)
                    .unwrap()
                    .priority(tandem_shared::Priority::High),
            )
            .await
            .unwrap();
    }
    let port = crate::support::free_port();
    let listen = format!("127.0.0.1:{port}");
    let _exporter = Serving::start(&redis, &["exporter", "--listen", &listen]);
    let text = std::sync::Mutex::new(String::new());
    wait_until(WAIT, "the exporter answering", || async {
        let Ok(stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
            return false;
        };
        drop(stream);
        let (status, body) = http(port, "GET", "/metrics", "").await;
        assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
        *text.lock().unwrap() = body;
        true
    })
    .await;
    let text = text.into_inner().unwrap();
    assert_eq!(
        sample(
            &text,
            "tandem_queue_waiting_tasks{class=\"cpu\",priority=\"high\"}"
        ),
        Some(5.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "tandem_queue_waiting_tasks{class=\"cpu\",priority=\"low\"}"
        ),
        Some(0.0),
        "{text}"
    );
    let age = sample(
        &text,
        "tandem_queue_oldest_waiting_age_seconds{class=\"cpu\",priority=\"high\"}",
    );
    assert!(age.is_some_and(|a| a >= 0.0), "{text}");
    assert_eq!(
        sample(&text, "tandem_queue_dead_letters{class=\"cpu\"}"),
        Some(0.0),
        "{text}"
    );

    // A worker runs them, and a task of a kind nobody registered, whose
    // failure it counts under `other` (with its dead letter in the queues).
    let worker = WorkerProcess::start(&redis, &[("TANDEM_METRICS_INTERVAL_MS", "100")]).await;
    let stray = producer
        .submit(Task::raw("no_such_kind_42", Vec::new()).class(tandem_shared::Class::Cpu))
        .await
        .unwrap();
    assert_eq!(
        producer.wait(stray, WAIT).await.unwrap().status,
        Status::Failed
    );
    wait_until(WAIT, "the stray kind counted as other", || async {
        crate::support::gpus::registry(&redis)
            .await
            .iter()
            .any(|w| w.id == worker.id && w.metrics.completed.get("other/cpu/failed") == Some(&1))
    })
    .await;
    let info = crate::support::gpus::registry(&redis).await;
    assert!(
        info.iter().all(|w| w
            .metrics
            .completed
            .keys()
            .all(|k| !k.contains("no_such_kind"))),
        "{info:?}"
    );
    wait_until(
        WAIT,
        "the queues drained and a dead letter counted",
        || async {
            let (_, body) = http(port, "GET", "/metrics", "").await;
            sample(
                &body,
                "tandem_queue_waiting_tasks{class=\"cpu\",priority=\"high\"}",
            ) == Some(0.0)
                && sample(&body, "tandem_queue_dead_letters{class=\"cpu\"}") == Some(1.0)
        },
    )
    .await;
}

const TOKEN: &str = "dashboard-test-token";

/// The headless Chromium the browser tests drive: `TANDEM_CHROMIUM` (set
/// by .ci/run, so that CI always runs them), else `chromium` on PATH; the
/// test is skipped, saying so, only where neither exists.
fn chromium() -> Option<std::path::PathBuf> {
    if let Some(path) = std::env::var_os("TANDEM_CHROMIUM") {
        return Some(path.into());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("chromium"))
            .find(|path| path.is_file())
    })
}

/// Where the browser tests leave their screenshots: target/dashboard-screenshots.
fn artefacts() -> std::path::PathBuf {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/dashboard-screenshots");
    std::fs::create_dir_all(&dir).expect("artefact dir");
    dir
}

/// Loads `url` in headless Chromium; returns the DOM after the page's
/// scripts ran, and with `screenshot`, saves the page there too.
fn browse(chromium: &std::path::Path, url: &str, screenshot: Option<&std::path::Path>) -> String {
    let profile = crate::support::ScratchDir::new("chromium");
    let mut cmd = std::process::Command::new(chromium);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--window-size=1400,1300",
        "--timeout=3000",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()));
    match screenshot {
        Some(path) => cmd.arg(format!("--screenshot={}", path.display())),
        None => cmd.arg("--dump-dom"),
    };
    let out = cmd.arg(url).output().expect("run chromium");
    assert!(out.status.success(), "chromium: {}", text(&out.stderr));
    text(&out.stdout)
}

/// One `data:` line of each server-sent event on `/api/live`, the first
/// `count` of them.
async fn live_snapshots(port: u16, count: usize) -> Vec<serde_json::Value> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    stream
        .write_all(
            b"GET /api/live HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n",
        )
        .await
        .unwrap();
    let mut lines = tokio::io::BufReader::new(stream).lines();
    let mut found = Vec::new();
    while found.len() < count {
        let line = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .expect("an event")
            .unwrap()
            .expect("the stream open");
        if let Some(data) = line.strip_prefix("data: ") {
            found.push(serde_json::from_str(data).expect("a JSON snapshot"));
        }
    }
    found
}

/// The dashboard against a live fleet of two simulated GPUs and a CPU
/// worker: the pages render in a real browser (screenshots under
/// target/dashboard-screenshots), live values change while tasks run, a
/// requeue puts a dead letter back, and writes without the token, or to a
/// read-only dashboard, are refused.
#[tokio::test]
async fn the_dashboard_shows_a_live_fleet_and_guards_its_writes() {
    let redis = RedisServer::start();
    let _fleet = WorkerProcess::spawn_fleet(
        &redis,
        &[
            (
                "TANDEM_SIMULATE_GPUS",
                "RTX 4070 Ti, 12 GiB, 40 TFLOPS; RTX 3060 Ti, 8 GiB, 16 TFLOPS",
            ),
            ("TANDEM_METRICS_INTERVAL_MS", "200"),
            ("TANDEM_CONCURRENCY", "2"),
        ],
    );
    wait_until(WAIT, "three members live", || async {
        crate::support::gpus::registry(&redis).await.len() == 3
    })
    .await;
    let producer = redis.producer().await;
    let failing = Task::of::<Fail>(&FailParams {
        code: "E_DASHBOARD".into(),
        message: "shown on the page".into(),
        retry: false,
    })
    .unwrap();
    let failing = producer.submit(failing).await.unwrap();
    let letter = producer
        .wait(failing, WAIT)
        .await
        .unwrap()
        .record
        .dead_letter
        .expect("dead-lettered");

    let port = crate::support::free_port();
    let listen = format!("127.0.0.1:{port}");
    let _dashboard = Serving::start(
        &redis,
        &[
            "dashboard",
            "--listen",
            &listen,
            "--token",
            TOKEN,
            "--interval-ms",
            "200",
        ],
    );
    wait_until(WAIT, "the dashboard answering", || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;

    // Live: while sleeps run, the snapshots the page receives change
    // without a reload (the fleet's finished count grows).
    let mut sleeps = Vec::new();
    for _ in 0..8 {
        let task = Task::of::<Sleep>(&SleepParams { ms: 300 }).unwrap();
        sleeps.push(producer.submit(task).await.unwrap());
    }
    let done = |snap: &serde_json::Value| snap["completed_total"].as_u64().unwrap_or(0);
    let snaps = std::sync::Mutex::new(Vec::new());
    wait_until(
        WAIT,
        "a live snapshot counting more finished tasks",
        || async {
            let batch = live_snapshots(port, 3).await;
            let changed = batch.windows(2).any(|w| done(&w[1]) > done(&w[0]));
            *snaps.lock().unwrap() = batch;
            changed
        },
    )
    .await;
    let snaps = snaps.into_inner().unwrap();
    assert_eq!(snaps[0]["workers"].as_array().map(Vec::len), Some(3));
    for id in &sleeps {
        producer.wait(*id, WAIT).await.unwrap();
    }

    // The page in a real browser: the fleet, the queues, the dead letter.
    if let Some(chromium) = chromium() {
        let url = format!("http://{listen}/");
        let mut dom = String::new();
        wait_until(WAIT, "the page rendered with a snapshot", || {
            dom = browse(&chromium, &url, None);
            let ready = dom.contains("data-member=\"sim0\"") && dom.contains(&letter);
            async move { ready }
        })
        .await;
        for expected in [
            "data-member=\"sim1\"",
            "data-member=\"cpu\"",
            "RTX 4070 Ti (simulated)",
            "data-cell=\"cpu:normal\"",
            "data-class=\"cpu\"",
            "E_DASHBOARD",
            ">requeue</button>",
        ] {
            assert!(dom.contains(expected), "{expected} missing from\n{dom}");
        }
        let task_url = format!("http://{listen}/#task/{failing}");
        wait_until(WAIT, "the task page rendered", || {
            dom = browse(&chromium, &task_url, None);
            let ready = dom.contains("id=\"task-status\">failed<");
            async move { ready }
        })
        .await;
        assert!(
            dom.contains("shown on the page") && dom.contains("E_DASHBOARD"),
            "{dom}"
        );
        browse(&chromium, &url, Some(&artefacts().join("overview.png")));
        browse(&chromium, &task_url, Some(&artefacts().join("task.png")));
    } else {
        eprintln!(
            "no chromium (TANDEM_CHROMIUM, or chromium on PATH): the browser part is skipped"
        );
    }

    // Writes: refused without the token and with a wrong one; a requeue
    // with it puts the dead letter back into its stream.
    let requeue = format!("/api/dlq/cpu/{letter}/requeue");
    let (status, body) = http(port, "POST", &requeue, "").await;
    assert_eq!(status, "HTTP/1.1 401 Unauthorized", "{body}");
    assert!(body.contains("token"), "{body}");
    let (status, _) = http(
        port,
        "POST",
        &requeue,
        "Authorization: Bearer wrong-token\r\n",
    )
    .await;
    assert_eq!(status, "HTTP/1.1 401 Unauthorized");
    let letters = |snap: serde_json::Value| snap["classes"][3]["dead_letters"].as_u64();
    let (_, body) = http(port, "GET", "/api/snapshot", "").await;
    assert_eq!(
        letters(serde_json::from_str(&body).unwrap()),
        Some(1),
        "{body}"
    );
    let auth = format!("Authorization: Bearer {TOKEN}\r\n");
    let (status, body) = http(port, "POST", &requeue, &auth).await;
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    assert!(body.contains(&failing.to_string()), "{body}");
    // It ran again: a new dead letter, the old one gone.
    wait_until(WAIT, "the requeued task dead-lettered anew", || async {
        producer
            .record(failing)
            .await
            .unwrap()
            .is_some_and(|r| r.dead_letter.is_some_and(|d| d != letter))
    })
    .await;
    let (status, _) = http(port, "POST", &requeue, &auth).await;
    assert_eq!(status, "HTTP/1.1 404 Not Found");

    // A read-only dashboard has no token, and refuses every write.
    let ro_port = crate::support::free_port();
    let ro_listen = format!("127.0.0.1:{ro_port}");
    let _read_only = Serving::start(
        &redis,
        &["dashboard", "--listen", &ro_listen, "--read-only"],
    );
    wait_until(WAIT, "the read-only dashboard answering", || async {
        tokio::net::TcpStream::connect(("127.0.0.1", ro_port))
            .await
            .is_ok()
    })
    .await;
    let (status, body) = http(
        ro_port,
        "POST",
        &format!("/api/tasks/{failing}/cancel"),
        &auth,
    )
    .await;
    assert_eq!(status, "HTTP/1.1 403 Forbidden", "{body}");
    assert!(body.contains("read-only"), "{body}");
    let (_, body) = http(ro_port, "GET", "/api/snapshot", "").await;
    assert!(body.contains("\"read_only\":true"), "{body}");

    // Without a token and without --read-only it does not start.
    let out = tandem(&redis, &["dashboard", "--listen", "127.0.0.1:0"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--read-only"),
        "{}",
        text(&out.stderr)
    );
}

/// Waits until a dashboard on `port` accepts connections.
async fn answering(port: u16) {
    wait_until(WAIT, "the dashboard answering", || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;
}

/// The pause targets the dashboard's snapshot shows.
async fn paused(port: u16) -> Vec<String> {
    let (_, body) = http(port, "GET", "/api/snapshot", "").await;
    let snap: serde_json::Value = serde_json::from_str(&body).expect("a JSON snapshot");
    snap["paused"]
        .as_array()
        .unwrap_or_else(|| panic!("no paused list in {body}"))
        .iter()
        .map(|t| t.as_str().expect("a target").to_owned())
        .collect()
}

/// The token comes from the `dashboard_token` setting of the config file
/// (`--token` overrides it); pause and resume (a class's priority, a kind)
/// are write actions behind it, and the queues view shows what is paused,
/// the same pause `tandem pause` and `tandem resume` see.
#[tokio::test]
async fn the_dashboard_pauses_and_resumes_with_the_token_from_config() {
    let redis = RedisServer::start();
    let dir = crate::support::ScratchDir::new("dashboard-config");
    let config = dir.path().join("tandem.toml");
    std::fs::write(&config, format!("dashboard_token = \"{TOKEN}\"\n")).unwrap();
    let config = config.display().to_string();
    let port = crate::support::free_port();
    let listen = format!("127.0.0.1:{port}");
    let _dashboard = Serving::start(
        &redis,
        &["--config", &config, "dashboard", "--listen", &listen],
    );
    answering(port).await;
    assert!(paused(port).await.is_empty());

    let auth = format!("Authorization: Bearer {TOKEN}\r\n");
    let (status, body) = http(port, "POST", "/api/pause/cpu:high", "").await;
    assert_eq!(status, "HTTP/1.1 401 Unauthorized", "{body}");
    assert!(paused(port).await.is_empty());
    let (status, body) = http(port, "POST", "/api/pause/cpu:high", &auth).await;
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    let (status, body) = http(port, "POST", "/api/pause/kind:noop", &auth).await;
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    wait_until(WAIT, "both pauses shown", || async {
        paused(port).await == ["cpu:high", "kind:noop"]
    })
    .await;
    // A bad target is refused, naming it.
    let (status, body) = http(port, "POST", "/api/pause/warm", &auth).await;
    assert_eq!(status, "HTTP/1.1 400 Bad Request", "{body}");
    assert!(body.contains("target"), "{body}");

    // The same pause as the CLI's: `tandem resume` finds it.
    let out = tandem(&redis, &["resume", "cpu:high"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("resumed"),
        "{}",
        text(&out.stdout)
    );
    let (status, body) = http(port, "POST", "/api/resume/kind:noop", &auth).await;
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    wait_until(WAIT, "nothing paused", || async {
        paused(port).await.is_empty()
    })
    .await;
    let (status, _) = http(port, "POST", "/api/resume/kind:noop", &auth).await;
    assert_eq!(status, "HTTP/1.1 404 Not Found");

    // --token overrides the file's token.
    let flag_port = crate::support::free_port();
    let flag_listen = format!("127.0.0.1:{flag_port}");
    let _flagged = Serving::start(
        &redis,
        &[
            "--config",
            &config,
            "dashboard",
            "--listen",
            &flag_listen,
            "--token",
            "token-from-the-flag",
        ],
    );
    answering(flag_port).await;
    let (status, _) = http(flag_port, "POST", "/api/pause/cpu", &auth).await;
    assert_eq!(status, "HTTP/1.1 401 Unauthorized");
    let (status, body) = http(
        flag_port,
        "POST",
        "/api/pause/cpu",
        "Authorization: Bearer token-from-the-flag\r\n",
    )
    .await;
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    assert_eq!(paused(flag_port).await, ["cpu"]);

    // A token in the file too short is refused, naming the setting.
    std::fs::write(
        dir.path().join("short.toml"),
        "dashboard_token = \"short\"\n",
    )
    .unwrap();
    let short = dir.path().join("short.toml").display().to_string();
    let out = tandem(
        &redis,
        &["--config", &short, "dashboard", "--listen", "127.0.0.1:0"],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("dashboard_token"),
        "{}",
        text(&out.stderr)
    );
}

/// chromedriver: `TANDEM_CHROMEDRIVER` (set by .ci/run), else
/// `chromedriver` on PATH.
fn chromedriver() -> Option<std::path::PathBuf> {
    if let Some(path) = std::env::var_os("TANDEM_CHROMEDRIVER") {
        return Some(path.into());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("chromedriver"))
            .find(|path| path.is_file())
    })
}

/// A chromedriver process on a loopback port, killed when the test ends.
struct Driver(std::process::Child, u16);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A headless Chromium session driven over WebDriver (plain HTTP on
/// loopback: no TLS in the client).
async fn browser(
    driver: &std::path::Path,
    chromium: &std::path::Path,
    profile: &std::path::Path,
) -> (Driver, fantoccini::Client) {
    let port = crate::support::free_port();
    let child = std::process::Command::new(driver)
        .arg(format!("--port={port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn chromedriver");
    let driver = Driver(child, port);
    answering(driver.1).await;
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": chromium.display().to_string(),
            "args": [
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                "--window-size=1400,1300",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let client = fantoccini::ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.1))
        .await
        .expect("a WebDriver session");
    (driver, client)
}

/// The text of the element `css` on the open page ("" while it is absent
/// or being re-rendered).
async fn text_of(page: &fantoccini::Client, css: &str) -> String {
    match page.find(fantoccini::Locator::Css(css)).await {
        Ok(element) => element.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Clicks the element `css`; false while it is absent, or was replaced by
/// the next snapshot between finding and clicking it.
async fn click(page: &fantoccini::Client, css: &str) -> bool {
    match page.find(fantoccini::Locator::Css(css)).await {
        Ok(element) => element.click().await.is_ok(),
        Err(_) => false,
    }
}

/// The dashboard in a real browser, driven by clicks over WebDriver: the
/// page, open once, shows values that change while tasks run (server-sent
/// events, no reload); a requeue clicked without the token is refused and
/// the page says so; with the token typed in, the click puts the dead
/// letter back; a pause typed and clicked shows in the queues view, and
/// its resume button lifts it.
#[tokio::test]
async fn the_dashboard_is_driven_by_clicks_in_a_real_browser() {
    let (Some(chromium), Some(driver)) = (chromium(), chromedriver()) else {
        eprintln!(
            "no chromium (TANDEM_CHROMIUM or PATH) or no chromedriver (TANDEM_CHROMEDRIVER or PATH): the click-driven browser test is skipped"
        );
        return;
    };
    let redis = RedisServer::start();
    let _worker = WorkerProcess::start(
        &redis,
        &[
            ("TANDEM_CONCURRENCY", "2"),
            ("TANDEM_METRICS_INTERVAL_MS", "200"),
        ],
    )
    .await;
    let producer = redis.producer().await;
    let failing = Task::of::<Fail>(&FailParams {
        code: "E_CLICKED".into(),
        message: "requeued by a click".into(),
        retry: false,
    })
    .unwrap();
    let failing = producer.submit(failing).await.unwrap();
    let letter = producer
        .wait(failing, WAIT)
        .await
        .unwrap()
        .record
        .dead_letter
        .expect("dead-lettered");

    let port = crate::support::free_port();
    let listen = format!("127.0.0.1:{port}");
    let _dashboard = Serving::start(
        &redis,
        &[
            "dashboard",
            "--listen",
            &listen,
            "--token",
            TOKEN,
            "--interval-ms",
            "300",
        ],
    );
    answering(port).await;
    let profile = crate::support::ScratchDir::new("chromium-webdriver");
    let (_driver, page) = browser(&driver, &chromium, profile.path()).await;
    page.goto(&format!("http://{listen}/")).await.unwrap();

    // Live: the CPU worker's finished count in the open page grows while
    // sleeps run, with no reload.
    let done = |text: String| text.trim().parse::<u64>().ok();
    let cell = "tr[data-member=\"cpu\"] td.done";
    let before = std::sync::Mutex::new(None);
    wait_until(WAIT, "the page showing the worker", || async {
        let shown = done(text_of(&page, cell).await);
        *before.lock().unwrap() = shown;
        shown.is_some()
    })
    .await;
    let before = before.into_inner().unwrap().unwrap_or_default();
    let mut sleeps = Vec::new();
    for _ in 0..4 {
        let task = Task::of::<Sleep>(&SleepParams { ms: 100 }).unwrap();
        sleeps.push(producer.submit(task).await.unwrap());
    }
    for id in &sleeps {
        producer.wait(*id, WAIT).await.unwrap();
    }
    wait_until(
        WAIT,
        "the open page counting the finished sleeps",
        || async { done(text_of(&page, cell).await).is_some_and(|now| now >= before + 4) },
    )
    .await;

    // A requeue clicked without the token: refused, and the page says so.
    let requeue = format!("button[data-act=\"requeue\"][data-id=\"{letter}\"]");
    wait_until(WAIT, "the requeue button clicked", || {
        click(&page, &requeue)
    })
    .await;
    wait_until(WAIT, "the refusal shown", || async {
        text_of(&page, "#action-result")
            .await
            .contains("refused (401)")
    })
    .await;
    assert_eq!(
        producer
            .record(failing)
            .await
            .unwrap()
            .and_then(|r| r.dead_letter),
        Some(letter.clone())
    );

    // With the token typed in, the same click puts the dead letter back:
    // the task runs again and is dead-lettered anew.
    let token = page.find(fantoccini::Locator::Css("#token")).await.unwrap();
    token.send_keys(TOKEN).await.unwrap();
    wait_until(WAIT, "the requeue button clicked", || {
        click(&page, &requeue)
    })
    .await;
    wait_until(WAIT, "the requeue shown", || async {
        text_of(&page, "#action-result")
            .await
            .starts_with("requeue: ")
    })
    .await;
    wait_until(WAIT, "the requeued task dead-lettered anew", || async {
        producer
            .record(failing)
            .await
            .unwrap()
            .is_some_and(|r| r.dead_letter.is_some_and(|d| d != letter))
    })
    .await;

    // Pause typed and clicked; shown in the queues view; its resume
    // button lifts it.
    page.find(fantoccini::Locator::Css("#pause-target"))
        .await
        .unwrap()
        .send_keys("cpu:low")
        .await
        .unwrap();
    assert!(click(&page, "#pause-go").await);
    wait_until(WAIT, "the pause shown in the queues view", || async {
        text_of(&page, "#paused").await.contains("cpu:low")
    })
    .await;
    let resume = "button[data-act=\"resume\"][data-target=\"cpu:low\"]";
    wait_until(WAIT, "the resume button clicked", || click(&page, resume)).await;
    wait_until(WAIT, "nothing paused shown", || async {
        text_of(&page, "#paused").await == "nothing"
    })
    .await;
    let shot = page.screenshot().await.unwrap();
    std::fs::write(artefacts().join("clicked.png"), shot).unwrap();
    page.close().await.unwrap();
}
