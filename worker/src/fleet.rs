//! `tandem-worker fleet`: one worker process per GPU, each bound to its
//! device by UUID, plus a CPU worker; a child that dies is restarted with
//! backoff; SIGTERM is passed on so every child drains.
//!
//! The fleet detects the GPUs once and assigns the roles (so every child
//! agrees), then starts `tandem-worker run --device <UUID> --role <ROLE>` per
//! GPU and `run --device cpu`. Children inherit the environment (a simulated
//! fleet stays simulated) and the `--config` file, log to the fleet's own
//! output, and die with it: each asks the kernel for SIGTERM when the fleet
//! process goes, so killing the fleet with SIGKILL leaves no orphans
//! claiming tasks.
//!
//! One log line per child and event: started, exited (and why: its device
//! failed, a signal, a status), restarting in how long, stopped.
//!
//! With `metrics_port` set, the fleet serves `/metrics` for all its
//! children at once, from their registry records; the children serve none
//! of their own (they are started with `TANDEM_METRICS_PORT=0`).

use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem_shared::Config;
use tandem_shared::device::Role;
use tokio::process::Command;

use crate::device::Detection;
use crate::metrics::ChildPids;
use crate::shutdown::Shutdown;

/// The variable a fleet sets in its children: its own pid.
pub const PARENT_ENV: &str = "TANDEM_FLEET_PARENT";

/// The variable a fleet sets in its children: its members' devices and
/// roles (`SIM-0-...=heavy,SIM-1-...=light,cpu=cpu`), every member's at the
/// fleet's start, at a restart those running then (see
/// `siblings_at_start`). Until a child has seen
/// a sibling live (or for [`SIBLING_GRACE`]), it counts that sibling as
/// present: right after the fleet starts, no member takes work meant for a
/// sibling that is still starting, or leaves a parallel task unsplit.
pub const SIBLINGS_ENV: &str = "TANDEM_FLEET_SIBLINGS";

/// How long a fleet's member waits, at most, to see a sibling live before
/// it stops counting it as present.
pub const SIBLING_GRACE: Duration = Duration::from_secs(30);

/// The siblings a fleet's child was told of ([`SIBLINGS_ENV`]), less its own
/// device; empty outside a fleet. Malformed items are skipped.
pub fn siblings(own_device: &str) -> Vec<(String, Role)> {
    if std::env::var_os(PARENT_ENV).is_none() {
        return Vec::new();
    }
    parse_siblings(&std::env::var(SIBLINGS_ENV).unwrap_or_default(), own_device)
}

fn parse_siblings(text: &str, own_device: &str) -> Vec<(String, Role)> {
    text.split(',')
        .filter_map(|item| {
            let (device, role) = item.split_once('=')?;
            let role: Role = role.parse().ok()?;
            (!device.is_empty() && device != own_device).then(|| (device.to_owned(), role))
        })
        .collect()
}

/// How long a child must have run for its death to restart the backoff.
const HEALTHY_STRETCH: Duration = Duration::from_secs(10);

/// One worker process the fleet keeps running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// `gpu0`, `sim1`, `cpu`: the prefix of its log lines.
    pub tag: String,
    /// What it runs on, for the log.
    pub label: String,
    /// `run` and its arguments.
    pub args: Vec<String>,
    /// Its device (`cpu`, or the GPU's UUID) and role.
    pub device: String,
    pub role: Role,
}

/// The members for these GPUs: one per GPU with its assigned role, then the
/// CPU worker when `cpu` is set.
pub fn plan(config: &Config, detection: &Detection, cpu: bool) -> Vec<Member> {
    let mut members: Vec<Member> = detection
        .gpus
        .iter()
        .zip(detection.assignments(config))
        .map(|(gpu, assignment)| {
            let tag = if gpu.is_simulated() {
                format!("sim{}", gpu.index)
            } else {
                format!("gpu{}", gpu.index)
            };
            Member {
                label: format!("{}, {}, {}", gpu.label(), gpu.uuid, assignment.role),
                device: gpu.uuid.clone(),
                role: assignment.role,
                tag,
                args: vec![
                    "run".into(),
                    "--device".into(),
                    gpu.uuid.clone(),
                    "--role".into(),
                    assignment.role.to_string(),
                ],
            }
        })
        .collect();
    if cpu {
        members.push(Member {
            tag: "cpu".into(),
            label: format!("CPU, {}", Role::Cpu),
            args: vec!["run".into(), "--device".into(), "cpu".into()],
            device: "cpu".into(),
            role: Role::Cpu,
        });
    }
    members
}

/// How to start children: the worker binary, and the arguments every child
/// gets before its own (`--config FILE`, say).
#[derive(Debug, Clone)]
pub struct Launch {
    pub exe: PathBuf,
    pub common: Vec<String>,
    pub restart: Duration,
    pub restart_max: Duration,
    /// How long a stopping child may take before it is killed.
    pub stop_timeout: Duration,
    /// Where the fleet serves its children's `/metrics` (0: nowhere).
    pub metrics_port: u16,
    /// The fleet's settings, for reading the registry at each scrape.
    pub config: Config,
}

impl Launch {
    pub fn new(config: &Config, exe: PathBuf, common: Vec<String>) -> Self {
        Launch {
            exe,
            common,
            restart: Duration::from_millis(config.fleet_restart_ms),
            restart_max: Duration::from_millis(config.fleet_restart_max_ms),
            stop_timeout: Duration::from_millis(config.shutdown_grace_ms) + Duration::from_secs(10),
            metrics_port: config.metrics_port,
            config: config.clone(),
        }
    }
}

/// Runs the members until `shutdown`, then stops them all and returns.
pub async fn run(members: Vec<Member>, launch: Launch, shutdown: Shutdown) {
    tracing::info!(
        members = members.len(),
        "fleet starting: {}",
        members
            .iter()
            .map(|m| format!("{} ({})", m.tag, m.label))
            .collect::<Vec<_>>()
            .join("; ")
    );
    let roster: Arc<Vec<(String, String)>> = Arc::new(
        members
            .iter()
            .map(|m| (m.tag.clone(), format!("{}={}", m.device, m.role)))
            .collect(),
    );
    let children = ChildPids::default();
    let metrics_server = match launch.metrics_port {
        0 => None,
        port => crate::metrics::serve_fleet(port, launch.config.clone(), children.clone()).await,
    };
    let tasks: Vec<_> = members
        .into_iter()
        .map(|member| {
            tokio::spawn(supervise(
                member,
                Arc::clone(&roster),
                launch.clone(),
                children.clone(),
                shutdown.clone(),
            ))
        })
        .collect();
    for task in tasks {
        if let Err(err) = task.await {
            tracing::error!("a fleet supervisor failed: {err}");
        }
    }
    if let Some(server) = metrics_server {
        server.abort();
    }
    tracing::info!("fleet stopped");
}

/// The siblings (`device=role`, comma-separated) a member is told of when
/// it starts: at its first start every member of the fleet (they all start
/// now), at a restart only the members running then. A sibling that is down
/// (in its own restart delay) must not count as live for [`SIBLING_GRACE`]:
/// the work meant for it would wait for it (a GPU member told of a CPU
/// worker takes no cpu task), as `tandem chaos` saw when the CPU worker
/// waited out a 30 s restart delay and both GPU members, restarted
/// meanwhile, left its tasks alone for 30 s.
fn siblings_at_start(
    roster: &[(String, String)],
    first: bool,
    running: impl Fn(&str) -> bool,
) -> String {
    roster
        .iter()
        .filter(|(tag, _)| first || running(tag))
        .map(|(_, sibling)| sibling.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// Keeps one member running until shutdown.
async fn supervise(
    member: Member,
    roster: Arc<Vec<(String, String)>>,
    launch: Launch,
    children: ChildPids,
    mut shutdown: Shutdown,
) {
    let tag = member.tag.as_str();
    let mut delay = launch.restart;
    let mut starts = 0u32;
    while !shutdown.is_triggered() {
        let started = Instant::now();
        let siblings = siblings_at_start(&roster, starts == 0, |tag| {
            children
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .contains_key(tag)
        });
        let mut command = Command::new(&launch.exe);
        command
            .args(&launch.common)
            .args(&member.args)
            .env(PARENT_ENV, std::process::id().to_string())
            .env(SIBLINGS_ENV, &siblings)
            // The fleet serves every child's metrics on its own port.
            .env("TANDEM_METRICS_PORT", "0")
            .kill_on_drop(true);
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(err) => {
                tracing::error!(
                    member = tag,
                    "cannot start {}: {err}; retrying in {delay:?}",
                    launch.exe.display()
                );
                if wait_or_stop(delay, &mut shutdown).await {
                    return;
                }
                delay = (delay * 2).min(launch.restart_max);
                continue;
            }
        };
        starts += 1;
        let pid = child.id().unwrap_or(0);
        set_child(&children, tag, Some(pid));
        if starts == 1 {
            tracing::info!(member = tag, pid, "started ({})", member.label);
        } else {
            tracing::info!(
                member = tag,
                pid,
                restart = starts - 1,
                "restarted ({})",
                member.label
            );
        }
        tokio::select! {
            status = child.wait() => {
                set_child(&children, tag, None);
                let ran = started.elapsed();
                let why = match status {
                    Ok(status) => describe(status),
                    Err(err) => format!("cannot be waited on ({err})"),
                };
                if shutdown.is_triggered() {
                    tracing::info!(member = tag, pid, "stopped: {why}");
                    return;
                }
                // A child that ran a good while had a healthy stretch: its
                // next failure starts the backoff over. A crash loop dies
                // within seconds of each start; a worker killed after
                // running for a while (an OOM kill, an operator) comes back
                // after the first delay, not a grown one.
                if ran >= launch.restart_max.min(HEALTHY_STRETCH) {
                    delay = launch.restart;
                }
                tracing::warn!(member = tag, pid, "exited after {:.1} s: {why}; restarting in {delay:?}", ran.as_secs_f64());
                if wait_or_stop(delay, &mut shutdown).await {
                    return;
                }
                delay = (delay * 2).min(launch.restart_max);
            }
            () = shutdown.wait() => {
                stop(tag, &mut child, pid, launch.stop_timeout).await;
                return;
            }
        }
    }
}

/// Records a member's running child (`None`: none runs), whose registry
/// record the fleet's `/metrics` shows.
fn set_child(children: &ChildPids, tag: &str, pid: Option<u32>) {
    let mut children = children
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match pid {
        Some(pid) => children.insert(tag.to_owned(), pid),
        None => children.remove(tag),
    };
}

/// Sleeps `delay`; true when shutdown came first.
async fn wait_or_stop(delay: Duration, shutdown: &mut Shutdown) -> bool {
    tokio::select! {
        () = tokio::time::sleep(delay) => false,
        () = shutdown.wait() => true,
    }
}

/// Passes SIGTERM on and waits for the child to drain; kills it when it
/// takes longer than `timeout`.
async fn stop(tag: &str, child: &mut tokio::process::Child, pid: u32, timeout: Duration) {
    let target = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw);
    match target {
        Some(target) => {
            if let Err(err) = rustix::process::kill_process(target, rustix::process::Signal::TERM) {
                tracing::warn!(member = tag, pid, "cannot send SIGTERM: {err}");
            }
        }
        None => tracing::warn!(member = tag, "no pid to send SIGTERM to"),
    }
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => tracing::info!(member = tag, pid, "stopped: {}", describe(status)),
        Ok(Err(err)) => tracing::warn!(member = tag, pid, "cannot be waited on: {err}"),
        Err(_) => {
            tracing::warn!(
                member = tag,
                pid,
                "did not stop within {timeout:?}; killing it"
            );
            if let Err(err) = child.kill().await {
                tracing::error!(member = tag, pid, "cannot kill: {err}");
            }
        }
    }
}

/// Why a child ended, in words.
pub fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(0), _) => "exited cleanly".into(),
        (Some(code), _) if code == i32::from(crate::EXIT_DEVICE_FAILED) => {
            format!("its device failed (status {code}); the new process probes it first")
        }
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => "ended".into(),
    }
}

/// In a child of a fleet: ask for SIGTERM when the fleet dies, and stop at
/// once if it already has. Outside a fleet, does nothing.
pub fn follow_parent() -> Result<(), String> {
    let Ok(parent) = std::env::var(PARENT_ENV) else {
        return Ok(());
    };
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM))
        .map_err(|e| format!("cannot ask to be stopped with the fleet: {e}"))?;
    let current = rustix::process::getppid().map(|p| p.as_raw_nonzero().get().to_string());
    if current.as_deref() != Some(parent.as_str()) {
        return Err(format!("the fleet (pid {parent}) is gone"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fleet_has_one_member_per_gpu_and_a_cpu_worker() {
        let config = Config {
            simulate_gpus: "RTX 3060 Ti, 8 GiB, 16.2 TFLOPS; RTX 4070 Ti, 12 GiB, 40.09 TFLOPS"
                .into(),
            ..Config::default()
        };
        let detection = Detection::simulated(&config, None).unwrap();
        let members = plan(&config, &detection, true);
        let tags: Vec<&str> = members.iter().map(|m| m.tag.as_str()).collect();
        assert_eq!(tags, ["sim0", "sim1", "cpu"]);
        assert_eq!(
            members[1].args,
            ["run", "--device", "SIM-1-rtx-4070-ti", "--role", "heavy"]
        );
        assert!(members[0].label.contains("(simulated)"));
        assert!(members[0].label.ends_with("light"));
        assert_eq!(members[2].args, ["run", "--device", "cpu"]);
        assert_eq!(
            (members[1].device.as_str(), members[1].role),
            ("SIM-1-rtx-4070-ti", Role::Heavy)
        );
        assert_eq!(plan(&config, &detection, false).len(), 2);
    }

    #[test]
    fn a_child_reads_its_siblings_less_itself() {
        let text = "SIM-0-a=heavy,SIM-1-b=light,cpu=cpu,bogus,x=nonsense";
        assert_eq!(
            parse_siblings(text, "SIM-0-a"),
            [
                ("SIM-1-b".to_owned(), Role::Light),
                ("cpu".to_owned(), Role::Cpu)
            ]
        );
        assert!(parse_siblings("", "cpu").is_empty());
    }

    #[test]
    fn a_restarted_member_is_told_only_of_the_siblings_running_then() {
        let roster: Vec<(String, String)> = [
            ("sim0", "SIM-0-a=heavy"),
            ("sim1", "SIM-1-b=light"),
            ("cpu", "cpu=cpu"),
        ]
        .iter()
        .map(|(tag, sibling)| ((*tag).to_owned(), (*sibling).to_owned()))
        .collect();
        let nothing_runs = |_: &str| false;
        assert_eq!(
            siblings_at_start(&roster, true, nothing_runs),
            "SIM-0-a=heavy,SIM-1-b=light,cpu=cpu"
        );
        // sim0 restarts while the CPU worker waits out its restart delay.
        let told = siblings_at_start(&roster, false, |tag| tag == "sim1");
        assert_eq!(told, "SIM-1-b=light");
        assert_eq!(
            parse_siblings(&told, "SIM-0-a"),
            [("SIM-1-b".to_owned(), Role::Light)]
        );
        assert_eq!(siblings_at_start(&roster, false, nothing_runs), "");
    }

    #[test]
    fn exit_statuses_read_plainly() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(describe(ExitStatus::from_raw(0)), "exited cleanly");
        assert!(describe(ExitStatus::from_raw(3 << 8)).contains("device failed"));
        assert_eq!(describe(ExitStatus::from_raw(9)), "killed by signal 9");
    }
}
