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

fn echo(params: serde_json::Value) -> Task {
    Task::new("echo", &params).unwrap()
}

/// root -> (left, right) -> join -> last: a chain, a group and a chord,
/// whose sink `last` ends with `[3, "done"]`.
fn chain_and_chord() -> tandem_producer::Workflow {
    use serde_json::json;
    use tandem_producer::{Workflow, WorkflowRef};
    Workflow::new()
        .node("root", echo(json!({"x": 3, "list": [10, 20, 30]})))
        .node_after(
            "left",
            echo(json!({"v": WorkflowRef::to("root").at("/x")})),
            &["root"],
        )
        .node_after(
            "right",
            echo(json!({"w": WorkflowRef::to("root").at("/list/2")})),
            &["root"],
        )
        .node_after(
            "join",
            echo(json!({"l": WorkflowRef::to("left"), "r": WorkflowRef::to("right").at("/w")})),
            &["left", "right"],
        )
        .node_after(
            "last",
            echo(json!([WorkflowRef::to("join").at("/l/v"), "done"])),
            &["join"],
        )
}

/// A sleep of an hour that only a cancel ends, and a node after it.
fn cancellable() -> tandem_producer::Workflow {
    tandem_producer::Workflow::new()
        .node(
            "long",
            Task::of::<Sleep>(&SleepParams { ms: Sleep::MAX_MS }).unwrap(),
        )
        .node_after("after", echo(serde_json::json!(1)), &["long"])
}

async fn get_json(port: u16, path: &str) -> (String, serde_json::Value) {
    let (status, body) = http(port, "GET", path, "").await;
    let value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
    (status, value)
}

/// The workflows view over HTTP: the snapshot lists the recent workflows
/// newest first with their progress; a workflow's page has every node
/// with its layer, state, worker, device and times, and the sinks'
/// results; its live stream ends with the final state; the cancel is a
/// write action (401 without the token, 403 read-only).
#[tokio::test]
async fn the_dashboard_shows_workflows_and_cancels_one_with_the_token() {
    let redis = RedisServer::start();
    let _worker = WorkerProcess::start(&redis, &[("TANDEM_CONCURRENCY", "2")]).await;
    let producer = redis.producer().await;
    let done = producer.submit_workflow(chain_and_chord()).await.unwrap();
    assert_eq!(done.wait(WAIT).await.unwrap().status, "succeeded");
    let running = producer.submit_workflow(cancellable()).await.unwrap();
    let long = running.node("long").unwrap().id();
    wait_until(WAIT, "the long node running", || async {
        producer
            .record(long)
            .await
            .unwrap()
            .is_some_and(|r| r.status == Some(Status::Running))
    })
    .await;

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
    answering(port).await;

    // The list: newest first, with progress and sinks.
    let (status, snap) = get_json(port, "/api/snapshot").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    let listed = snap["workflows"].as_array().expect("a workflows list");
    assert_eq!(listed.len(), 2, "{snap}");
    assert_eq!(listed[0]["id"], running.id().to_string());
    assert_eq!(listed[0]["status"], "running");
    assert_eq!(listed[0]["nodes"], 2);
    assert_eq!(listed[0]["finished"], 0);
    assert_eq!(listed[1]["id"], done.id().to_string());
    assert_eq!(listed[1]["status"], "succeeded");
    assert_eq!(listed[1]["nodes"], 5);
    assert_eq!(listed[1]["finished"], 5);
    assert_eq!(listed[1]["succeeded"], 5);
    assert_eq!(listed[1]["sinks"], serde_json::json!(["last"]));
    let took = listed[1]["took_ms"].as_u64().expect("took_ms");
    let (start, end) = (
        listed[1]["submitted_at_ms"].as_u64().unwrap(),
        listed[1]["finished_at_ms"].as_u64().unwrap(),
    );
    assert_eq!(took, end - start);

    // The finished workflow's page: every node, its layer and parents,
    // where it ran, its times; the sink's result.
    let (status, page) = get_json(port, &format!("/api/workflows/{}", done.id())).await;
    assert_eq!(status, "HTTP/1.1 200 OK", "{page}");
    assert_eq!(page["status"], "succeeded");
    assert_eq!(page["nodes_total"], 5);
    assert_eq!(page["nodes_finished"], 5);
    assert_eq!(page["nodes_omitted"], 0);
    let layer_of: std::collections::HashMap<&str, u64> = page["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["name"].as_str().unwrap(), n["layer"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        layer_of,
        [
            ("root", 0),
            ("left", 1),
            ("right", 1),
            ("join", 2),
            ("last", 3)
        ]
        .into_iter()
        .collect()
    );
    for node in page["nodes"].as_array().unwrap() {
        assert_eq!(node["status"], "succeeded", "{node}");
        assert_eq!(node["kind"], "echo", "{node}");
        assert!(
            node["worker"].is_string() && node["device"] == "cpu",
            "{node}"
        );
        assert!(
            node["waited_ms"].is_u64() && node["run_us"].is_u64(),
            "{node}"
        );
        assert!(node["started_at_ms"].as_u64() <= node["finished_at_ms"].as_u64());
    }
    let join = page["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "join")
        .unwrap();
    assert_eq!(join["after"], serde_json::json!(["left", "right"]));
    assert_eq!(
        page["layers"],
        serde_json::json!([
            {"nodes": 1, "by_status": {"succeeded": 1}, "kinds": ["echo"]},
            {"nodes": 2, "by_status": {"succeeded": 2}, "kinds": ["echo"]},
            {"nodes": 1, "by_status": {"succeeded": 1}, "kinds": ["echo"]},
            {"nodes": 1, "by_status": {"succeeded": 1}, "kinds": ["echo"]},
        ])
    );
    assert_eq!(page["result"], serde_json::json!({"last": [3, "done"]}));

    // Its live stream sends the final state once and ends.
    let (status, body) = http(
        port,
        "GET",
        &format!("/api/workflows/{}/live", done.id()),
        "",
    )
    .await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    let events: Vec<&str> = body.lines().filter(|l| l.starts_with("event: ")).collect();
    assert_eq!(events, ["event: workflow"], "{body}");
    assert!(body.contains("\"status\":\"succeeded\""), "{body}");

    // Bad and unknown ids.
    let (status, body) = http(port, "GET", "/api/workflows/not-an-id", "").await;
    assert_eq!(status, "HTTP/1.1 400 Bad Request", "{body}");
    assert!(body.contains("workflow id"), "{body}");
    let unknown = tandem_shared::TaskId::new();
    let (status, body) = http(port, "GET", &format!("/api/workflows/{unknown}"), "").await;
    assert_eq!(status, "HTTP/1.1 404 Not Found", "{body}");
    let (_, body) = http(port, "GET", &format!("/api/workflows/{unknown}/live"), "").await;
    assert!(body.contains("event: missing"), "{body}");

    // The cancel: refused without the token, with a wrong one, and by a
    // read-only dashboard; the running workflow untouched.
    let cancel = format!("/api/workflows/{}/cancel", running.id());
    let (status, body) = http(port, "POST", &cancel, "").await;
    assert_eq!(status, "HTTP/1.1 401 Unauthorized", "{body}");
    let (status, _) = http(
        port,
        "POST",
        &cancel,
        "Authorization: Bearer wrong-token\r\n",
    )
    .await;
    assert_eq!(status, "HTTP/1.1 401 Unauthorized");
    let ro_port = crate::support::free_port();
    let ro_listen = format!("127.0.0.1:{ro_port}");
    let _read_only = Serving::start(
        &redis,
        &["dashboard", "--listen", &ro_listen, "--read-only"],
    );
    answering(ro_port).await;
    let auth = format!("Authorization: Bearer {TOKEN}\r\n");
    let (status, body) = http(ro_port, "POST", &cancel, &auth).await;
    assert_eq!(status, "HTTP/1.1 403 Forbidden", "{body}");
    let (_, page) = get_json(port, &format!("/api/workflows/{}", running.id())).await;
    assert_eq!(page["status"], "running", "{page}");

    // With the token: every unfinished node cancelled, the running one
    // asked to stop.
    let (status, body) = http(port, "POST", &cancel, &auth).await;
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    let reply: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(reply["outcome"], "cancelled", "{body}");
    wait_until(WAIT, "the workflow cancelled", || async {
        let (_, page) = get_json(port, &format!("/api/workflows/{}", running.id())).await;
        page["status"] == "cancelled"
            && page["nodes"]
                .as_array()
                .is_some_and(|n| n.iter().all(|n| n["status"] == "cancelled"))
    })
    .await;
    let (status, body) = http(port, "POST", &cancel, &auth).await;
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    assert!(body.contains("already finished"), "{body}");
    let (status, _) = http(
        port,
        "POST",
        &format!("/api/workflows/{unknown}/cancel"),
        &auth,
    )
    .await;
    assert_eq!(status, "HTTP/1.1 404 Not Found");
}

/// A workflow in a real browser: the page, open before the workflow can
/// run (its kind paused), shows the nodes waiting, then, with no reload,
/// every node reaching `succeeded` and the sink's result; a 1,002-node
/// fan-out and a 1,000-node chain are summarised by layer; a cancel clicked without the token is
/// refused, with it the running workflow is cancelled. Screenshots:
/// target/dashboard-screenshots/workflow.png, workflow-large.png (a
/// fan-out of 1,000), workflow-chain.png (a chain of 1,000),
/// workflow-cancelled.png.
#[tokio::test]
async fn a_workflow_page_follows_its_nodes_and_cancels_by_click() {
    let (Some(chromium), Some(driver)) = (chromium(), chromedriver()) else {
        eprintln!(
            "no chromium (TANDEM_CHROMIUM or PATH) or no chromedriver (TANDEM_CHROMEDRIVER or PATH): the workflow browser test is skipped"
        );
        return;
    };
    let redis = RedisServer::start();
    let _worker = WorkerProcess::start(&redis, &[("TANDEM_CONCURRENCY", "2")]).await;
    let producer = redis.producer().await;
    let out = tandem(&redis, &["pause", "kind:echo"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let flow = producer.submit_workflow(chain_and_chord()).await.unwrap();

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
    let profile = crate::support::ScratchDir::new("chromium-workflow");
    let (_driver, page) = browser(&driver, &chromium, profile.path()).await;
    page.goto(&format!("http://{listen}/")).await.unwrap();

    // The list links to the workflow's page.
    let link = format!("tr[data-workflow=\"{}\"] a", flow.id());
    wait_until(WAIT, "the workflow listed and clicked", || {
        click(&page, &link)
    })
    .await;
    let node_state = |name: &str| format!("#wf-nodes tr[data-node=\"{name}\"] td.node-status");
    wait_until(WAIT, "the chord shown waiting", || async {
        text_of(&page, &node_state("join")).await == "waiting"
    })
    .await;
    assert_eq!(text_of(&page, "#wf-status").await, "running");
    assert_eq!(text_of(&page, "#wf-progress").await, "0 of 5");

    // Resumed: the open page follows every node to `succeeded`.
    let out = tandem(&redis, &["resume", "kind:echo"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_until(WAIT, "every node shown succeeded", || async {
        let mut all = true;
        for name in ["root", "left", "right", "join", "last"] {
            all &= text_of(&page, &node_state(name)).await == "succeeded";
        }
        all && text_of(&page, "#wf-status").await == "succeeded"
    })
    .await;
    assert_eq!(text_of(&page, "#wf-progress").await, "5 of 5");
    let result: serde_json::Value =
        serde_json::from_str(&text_of(&page, "#wf-result").await).expect("the result as JSON");
    assert_eq!(result, serde_json::json!({"last": [3, "done"]}));
    // Drawn node by node: five boxes in the graph.
    let boxes = page
        .find_all(fantoccini::Locator::Css("#wf-graph g[data-node]"))
        .await
        .unwrap();
    assert_eq!(boxes.len(), 5);
    std::fs::write(
        artefacts().join("workflow.png"),
        page.screenshot().await.unwrap(),
    )
    .unwrap();

    // 1,002 nodes: a root, a fan-out of 1,000 (their kind paused) and a
    // chord: summarised by layer, the table capped.
    let out = tandem(&redis, &["pause", "kind:noop"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut large = tandem_producer::Workflow::new().node("root", echo(serde_json::json!(0)));
    let fan: Vec<String> = (0..1000).map(|i| format!("part{i:04}")).collect();
    for name in &fan {
        large = large.node_after(
            name,
            Task::of::<Noop>(&rmpv::Value::Nil).unwrap(),
            &["root"],
        );
    }
    let parents: Vec<&str> = fan.iter().map(String::as_str).collect();
    large = large.node_after("gather", echo(serde_json::json!(1)), &parents);
    let large = producer.submit_workflow(large).await.unwrap();
    large.node("root").unwrap().wait(WAIT).await.unwrap();
    page.goto(&format!("http://{listen}/#workflow/{}", large.id()))
        .await
        .unwrap();
    wait_until(WAIT, "the large workflow summarised by layer", || async {
        let layers = text_of(&page, "#wf-layers").await;
        layers.contains("1000") && layers.contains("succeeded 1")
    })
    .await;
    assert_eq!(text_of(&page, "#wf-progress").await, "1 of 1002");
    let rows = page
        .find_all(fantoccini::Locator::Css("#wf-nodes tbody tr"))
        .await
        .unwrap();
    assert_eq!(rows.len(), 300);
    assert!(text_of(&page, "#wf-more").await.contains("702 more nodes"));
    std::fs::write(
        artefacts().join("workflow-large.png"),
        page.screenshot().await.unwrap(),
    )
    .unwrap();
    producer.cancel_workflow(large.id()).await.unwrap();

    // A chain of 1,000 (its kind still paused): 1,000 layers, the table of
    // layers grouped into 40 rows of 25.
    let mut chain = tandem_producer::Workflow::new();
    for i in 0..1000 {
        let task = Task::of::<Noop>(&rmpv::Value::Nil).unwrap();
        let name = format!("step{i:04}");
        chain = match i {
            0 => chain.node(&name, task),
            _ => chain.node_after(&name, task, &[&format!("step{:04}", i - 1)]),
        };
    }
    let chain = producer.submit_workflow(chain).await.unwrap();
    page.goto(&format!("http://{listen}/#workflow/{}", chain.id()))
        .await
        .unwrap();
    wait_until(WAIT, "the chain summarised by layer", || async {
        text_of(&page, "#wf-progress").await == "0 of 1000"
    })
    .await;
    let bands = page
        .find_all(fantoccini::Locator::Css("#wf-layers tbody tr"))
        .await
        .unwrap();
    assert_eq!(bands.len(), 40);
    assert!(text_of(&page, "#wf-layers").await.contains("975–999"));
    std::fs::write(
        artefacts().join("workflow-chain.png"),
        page.screenshot().await.unwrap(),
    )
    .unwrap();
    producer.cancel_workflow(chain.id()).await.unwrap();

    // The cancel: clicked without the token, refused; with it, the
    // running workflow ends cancelled, shown live.
    let running = producer.submit_workflow(cancellable()).await.unwrap();
    page.goto(&format!("http://{listen}/#workflow/{}", running.id()))
        .await
        .unwrap();
    wait_until(WAIT, "the long node shown running", || async {
        text_of(&page, &node_state("long")).await == "running"
    })
    .await;
    wait_until(WAIT, "the cancel clicked", || click(&page, "#wf-cancel")).await;
    wait_until(WAIT, "the refusal shown", || async {
        text_of(&page, "#workflow-action")
            .await
            .contains("refused (401)")
    })
    .await;
    assert_eq!(
        producer
            .workflow_state(running.id())
            .await
            .unwrap()
            .unwrap()
            .status,
        "running"
    );
    let token = page.find(fantoccini::Locator::Css("#token")).await.unwrap();
    token.send_keys(TOKEN).await.unwrap();
    wait_until(WAIT, "the cancel clicked", || click(&page, "#wf-cancel")).await;
    wait_until(WAIT, "the workflow shown cancelled", || async {
        text_of(&page, "#wf-status").await == "cancelled"
            && text_of(&page, &node_state("long")).await == "cancelled"
            && text_of(&page, &node_state("after")).await == "cancelled"
    })
    .await;
    assert!(
        text_of(&page, "#workflow-action")
            .await
            .contains("\"outcome\":\"cancelled\"")
    );
    std::fs::write(
        artefacts().join("workflow-cancelled.png"),
        page.screenshot().await.unwrap(),
    )
    .unwrap();
    page.close().await.unwrap();
}
