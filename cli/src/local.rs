//! Local processes for `tandem demo` and `tandem bench`: a private
//! `redis-server` on a free loopback port, and `tandem-worker` processes
//! (single workers, or a fleet with one worker per GPU). Each guard stops
//! its processes when dropped, so every exit path cleans up.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Deserialize;
use std::os::unix::process::CommandExt;
use tandem_shared::Config;
use tandem_shared::device::Role;
use tandem_shared::store::Store;

/// A `redis-server` started for this run, without persistence.
#[derive(Debug)]
pub(crate) struct LocalRedis {
    child: Child,
    pub url: String,
    dir: PathBuf,
}

impl LocalRedis {
    /// Starts one unless the user named a Redis, and points `config` at it.
    pub fn unless_given(config: &mut Config, given: bool) -> anyhow::Result<Option<Self>> {
        if given {
            return Ok(None);
        }
        let redis = Self::start()?;
        config.redis_url = redis.url.clone();
        Ok(Some(redis))
    }

    pub fn start() -> anyhow::Result<Self> {
        let binary = find_on_path("redis-server").ok_or_else(|| {
            anyhow::anyhow!(
                "redis-server is not installed. Install it (Debian/Ubuntu: `sudo apt-get install redis-server`, \
                 macOS: `brew install redis`) or point REDIS_URL at a running Redis"
            )
        })?;
        let dir = std::env::temp_dir().join(format!("tandem-redis-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new(binary)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--logfile", "redis.log"])
            .arg("--dir")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: Ctrl-C reaches us, and we stop it last.
            .process_group(0)
            .spawn()
            .context("starting redis-server")?;
        let mut redis = Self {
            child,
            url: format!("redis://127.0.0.1:{port}"),
            dir,
        };
        redis.wait_ready(port)?;
        Ok(redis)
    }

    fn wait_ready(&mut self, port: u16) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "redis-server exited at start ({status}); see {}",
                    self.dir.join("redis.log").display()
                );
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("redis-server did not accept connections within 10 s")
    }
}

impl Drop for LocalRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `tandem-worker` processes started for this run.
#[derive(Debug, Default)]
pub(crate) struct LocalWorkers {
    children: Vec<(String, Child)>,
}

impl LocalWorkers {
    /// Starts `count` workers with `env` (TANDEM_* settings) on top of ours.
    pub fn start(
        count: usize,
        env: &[(&str, String)],
        log_dir: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let binary = worker_binary()?;
        let mut workers = Self::default();
        for n in 0..count {
            let id = format!("local-{}-{n}", std::process::id());
            let mut cmd = Command::new(&binary);
            cmd.arg("run")
                .env("TANDEM_WORKER_ID", &id)
                .stdin(Stdio::null())
                .process_group(0);
            for (key, value) in env {
                cmd.env(key, value);
            }
            match log_dir {
                Some(dir) => {
                    let log = std::fs::File::create(dir.join(format!("{id}.log")))?;
                    cmd.stdout(log.try_clone()?).stderr(log);
                }
                None => {
                    cmd.stdout(Stdio::null()).stderr(Stdio::null());
                }
            }
            let child = cmd
                .spawn()
                .with_context(|| format!("starting {}", binary.display()))?;
            workers.children.push((id, child));
        }
        Ok(workers)
    }

    /// Starts one `tandem-worker fleet` with `env` on top of ours: a worker
    /// per GPU it detects (or simulates) plus a CPU worker, which it
    /// restarts when they die and stops when it gets SIGTERM. Its members
    /// inherit `env`, so they get no fixed worker id; the variables in
    /// `unset` are removed from it. Its output (its members' included) goes
    /// to the file `log`, or nowhere.
    pub fn start_fleet(
        env: &[(&str, String)],
        unset: &[&str],
        log: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let binary = worker_binary()?;
        let mut cmd = Command::new(&binary);
        cmd.arg("fleet").stdin(Stdio::null()).process_group(0);
        match log {
            Some(path) => {
                let file = std::fs::File::create(path)
                    .with_context(|| format!("creating {}", path.display()))?;
                cmd.stdout(file.try_clone()?).stderr(file);
            }
            None => {
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        for (key, value) in env {
            cmd.env(key, value);
        }
        for key in unset {
            cmd.env_remove(key);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {} fleet", binary.display()))?;
        Ok(Self {
            children: vec![("fleet".to_owned(), child)],
        })
    }

    /// Starts `count` workers and waits until every one is registered.
    pub async fn start_registered(
        store: &Store,
        count: usize,
        env: &[(&str, String)],
    ) -> anyhow::Result<Self> {
        let mut workers = Self::start(count, env, None)?;
        let started = Instant::now();
        while store.workers().await?.len() < count {
            workers.check_alive()?;
            if started.elapsed() > Duration::from_secs(30) {
                bail!("workers did not register within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(workers)
    }

    /// The workers' process ids.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(|(_, child)| child.id()).collect()
    }

    /// Fails when a worker already exited (a bad setting, Redis unreachable).
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for (id, child) in &mut self.children {
            if let Some(status) = child.try_wait()? {
                bail!("worker {id} exited ({status})");
            }
        }
        Ok(())
    }

    /// SIGTERM every worker (they finish running tasks), then wait up to
    /// `grace` before killing what is left.
    pub fn stop(&mut self, grace: Duration) {
        for (_, child) in &self.children {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let deadline = Instant::now() + grace;
        for (_, child) in &mut self.children {
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        self.children.clear();
    }
}

impl Drop for LocalWorkers {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// This host's GPUs as `tandem-worker detect --json` reports them.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Detected {
    /// One line on where the list came from (the driver, a simulation, or
    /// why there is no GPU).
    pub source: String,
    pub gpus: Vec<DetectedGpu>,
}

/// One GPU of [`Detected`]; the report's other fields are not needed here.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct DetectedGpu {
    pub index: u32,
    /// With `(simulated)` appended for a simulated one.
    pub name: String,
    pub uuid: String,
    pub role: Role,
    pub simulated: bool,
}

/// Runs `tandem-worker detect --json` with our environment, as a fleet
/// started from here would see the host.
pub(crate) fn detect_gpus() -> anyhow::Result<Detected> {
    let binary = worker_binary()?;
    let out = Command::new(&binary)
        .args(["detect", "--json"])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {} detect --json", binary.display()))?;
    if !out.status.success() {
        bail!(
            "tandem-worker detect failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout).context("reading tandem-worker detect --json")
}

/// `tandem-worker` beside this executable (the usual cargo layout), else
/// `$TANDEM_WORKER_BIN`, else on the `PATH`.
fn worker_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("TANDEM_WORKER_BIN") {
        return Ok(PathBuf::from(path));
    }
    if let Ok(exe) = std::env::current_exe()
        && let Some(sibling) = exe.parent().map(|dir| dir.join("tandem-worker"))
        && sibling.exists()
    {
        return Ok(sibling);
    }
    find_on_path("tandem-worker").ok_or_else(|| {
        anyhow::anyhow!("tandem-worker not found next to tandem or on PATH: build it with `cargo build --release`")
    })
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    })
}
