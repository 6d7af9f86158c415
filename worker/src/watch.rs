//! Watches the worker registry, once a heartbeat interval: the live workers
//! (routing decides from them) and the dead ones, whose tasks are taken
//! over. It only reads; the dispatcher re-routes and takes the dead workers'
//! tasks over with its next claim.
//!
//! A consumer of this worker's streams is dead when its registry record
//! expired (its heartbeat lapsed: about a heartbeat TTL after it died), or,
//! sooner, when its record names a process this worker can see has ended:
//! a peer on the same host, in the same boot and pid namespace, whose pid
//! no longer runs with the start time the record gives. That is what lets
//! the members of a fleet take over a killed sibling's tasks within a
//! heartbeat interval instead of a TTL. A process that still exists (a
//! SIGSTOPped or hung worker) is never judged dead this way; once its
//! record lapses its tasks are taken over as `stalled`, which does not
//! count against them as a death (see the claim script's blame), and the
//! commit fence keeps it from finishing them should it come back.

use std::collections::HashMap;
use std::time::Duration;

use tandem_shared::device::Health;
use tandem_shared::store::{Consumer, DeadConsumer, ProcessRef, Store, StreamRef};
use tandem_shared::wire::WorkerInfo;
use tokio::sync::watch;

/// What one look at the registry found.
#[derive(Debug, Clone, Default)]
pub(crate) struct Observation {
    /// The workers whose records are in the registry, less those whose
    /// process is known to have ended.
    pub workers: Vec<WorkerInfo>,
    /// Consumers whose worker is gone.
    pub dead: Vec<DeadConsumer>,
}

impl Observation {
    /// Live workers routing counts (running and healthy), `me` included.
    pub fn live(&self) -> usize {
        self.workers
            .iter()
            .filter(|w| w.state == "running" && w.health == Health::Healthy)
            .count()
    }
}

pub(crate) async fn run(
    store: Store,
    streams: Vec<StreamRef>,
    me: String,
    every: Duration,
    found: watch::Sender<Observation>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let local = Instance::own();
    // The processes of the consumers seen with a record, for when the
    // record is gone: was the process still there (stalled) or not?
    let mut known: HashMap<String, ProcessRef> = HashMap::new();
    loop {
        tick.tick().await;
        let workers = match store.workers().await {
            Ok(workers) => workers,
            Err(err) => {
                tracing::debug!("reading the worker registry failed: {err}");
                continue;
            }
        };
        let consumers = match store.consumers(&streams, &me).await {
            Ok(consumers) => consumers,
            Err(err) => {
                tracing::debug!("looking for dead workers failed: {err}");
                Vec::new()
            }
        };
        // Routing leaves out a worker whose process has ended, and one that
        // is stopped (SIGSTOP): it takes nothing while stopped, so its
        // peers route around it at once. A stopped worker's tasks are still
        // only taken over once its record lapses.
        let out_of_routing = |pid: u32, process: &str| {
            local.as_ref().is_some_and(|l| {
                matches!(
                    l.judge_state(pid, process),
                    Some(State::Ended | State::Stopped)
                )
            })
        };
        let dead = judge_consumers(&consumers, &mut known, |p| {
            local
                .as_ref()
                .map_or(Liveness::Unknown, |l| l.judge(p.pid, &p.process))
        });
        let workers: Vec<WorkerInfo> = workers
            .into_iter()
            .filter(|w| w.id == me || !out_of_routing(w.pid, &w.process))
            .collect();
        for gone in dead.iter().filter(|d| !d.stalled) {
            if consumers
                .iter()
                .any(|c| c.name == gone.name && c.record.is_some())
            {
                tracing::info!(worker = %gone.name, "its process has ended (its record is still there): taking its tasks over now");
            }
        }
        if found.send(Observation { workers, dead }).is_err() {
            return;
        }
    }
}

/// The dead among `consumers`: those without a record (stalled when their
/// process, as last seen, still exists), and those whose record names a
/// process that has ended. `known` remembers each consumer's process.
fn judge_consumers(
    consumers: &[Consumer],
    known: &mut HashMap<String, ProcessRef>,
    judge: impl Fn(&ProcessRef) -> Liveness,
) -> Vec<DeadConsumer> {
    let mut dead = Vec::new();
    for consumer in consumers {
        match &consumer.record {
            Some(process) => {
                known.insert(consumer.name.clone(), process.clone());
                if judge(process) == Liveness::Ended {
                    dead.push(DeadConsumer {
                        name: consumer.name.clone(),
                        stalled: false,
                    });
                }
            }
            None => {
                let stalled = known
                    .get(&consumer.name)
                    .is_some_and(|p| judge(p) == Liveness::Exists);
                dead.push(DeadConsumer {
                    name: consumer.name.clone(),
                    stalled,
                });
            }
        }
    }
    known.retain(|name, _| consumers.iter().any(|c| &c.name == name));
    dead
}

/// What this host's process table says of a registry record's process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Liveness {
    /// It runs, or is stopped or hung: it may come back.
    Exists,
    /// It has ended (its pid is free, or runs another process, or is a
    /// zombie waiting for its parent).
    Ended,
    /// Another host, boot or pid namespace, or no record of it: no telling.
    Unknown,
}

/// A same-host process's state, as far as routing cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    Running,
    /// Stopped (SIGSTOP) or traced: it takes and finishes nothing now.
    Stopped,
    Ended,
}

/// This process's instance: boot id, pid namespace and start time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Instance {
    boot: String,
    namespace: String,
}

impl Instance {
    /// This process's boot and pid namespace; `None` where `/proc` does not
    /// tell them (not Linux).
    pub fn own() -> Option<Self> {
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
        let namespace = std::fs::read_link("/proc/self/ns/pid").ok()?;
        let namespace: String = namespace
            .to_string_lossy()
            .chars()
            .filter(char::is_ascii_digit)
            .collect();
        let boot = boot.trim().to_owned();
        (!boot.is_empty() && !namespace.is_empty()).then_some(Instance { boot, namespace })
    }

    /// The `process` field of this process's registry record (empty where
    /// it cannot be told).
    pub fn record_field() -> String {
        let pid = std::process::id();
        match (Self::own(), process_stat(pid)) {
            (Some(me), Some((_, start))) => format!("{}/{}/{start}", me.boot, me.namespace),
            _ => String::new(),
        }
    }

    /// Whether the process a record names (`pid`, `process`) still exists.
    pub fn judge(&self, pid: u32, process: &str) -> Liveness {
        match self.judge_state(pid, process) {
            None => Liveness::Unknown,
            Some(State::Ended) => Liveness::Ended,
            Some(State::Running | State::Stopped) => Liveness::Exists,
        }
    }

    /// The state of the process a record names; `None` when it cannot be
    /// told from here.
    pub fn judge_state(&self, pid: u32, process: &str) -> Option<State> {
        let mut parts = process.split('/');
        let (Some(boot), Some(namespace), Some(start), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        if boot != self.boot || namespace != self.namespace || pid == 0 {
            return None;
        }
        let start = start.parse::<u64>().ok()?;
        Some(match process_stat(pid) {
            None => State::Ended,
            Some((state, started)) => {
                if started != start || matches!(state, 'Z' | 'X' | 'x') {
                    State::Ended
                } else if matches!(state, 'T' | 't') {
                    State::Stopped
                } else {
                    State::Running
                }
            }
        })
    }
}

/// A process's state letter and start time (clock ticks after boot), from
/// `/proc/<pid>/stat`; `None` when there is no such process.
fn process_stat(pid: u32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat)
}

/// The state (field 3) and start time (field 22) of a `/proc/<pid>/stat`
/// line. The command name (field 2) may hold spaces and parentheses, so the
/// fields are counted from its last `)`.
fn parse_stat(stat: &str) -> Option<(char, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_past_odd_command_names() {
        let line = "4242 (tandem (worker) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    5 3 0 0 20 0 9 0 123456 1000000 500 18446744073709551615";
        assert_eq!(parse_stat(line), Some(('S', 123_456)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn this_process_exists_and_a_reused_or_foreign_pid_is_told_apart() {
        let Some(me) = Instance::own() else {
            return; // Not Linux: nothing to judge with.
        };
        let field = Instance::record_field();
        let pid = std::process::id();
        assert_eq!(me.judge(pid, &field), Liveness::Exists);
        // The same pid with another start time: the pid was reused.
        let (prefix, start) = field.rsplit_once('/').unwrap();
        let other = format!("{prefix}/{}", start.parse::<u64>().unwrap() + 1);
        assert_eq!(me.judge(pid, &other), Liveness::Ended);
        // Another boot or pid namespace, or nothing recorded: no telling.
        assert_eq!(
            me.judge(
                pid,
                &format!("x/{}", &field[field.find('/').unwrap() + 1..])
            ),
            Liveness::Unknown
        );
        assert_eq!(me.judge(pid, ""), Liveness::Unknown);
    }

    #[test]
    fn a_lapsed_record_is_dead_and_stalled_while_its_process_exists() {
        let process = |pid| ProcessRef {
            pid,
            process: String::new(),
        };
        let mut known = HashMap::new();
        let judge = |p: &ProcessRef| match p.pid {
            1 => Liveness::Exists,
            2 => Liveness::Ended,
            _ => Liveness::Unknown,
        };
        let seen = [
            Consumer {
                name: "stopped".into(),
                record: Some(process(1)),
            },
            Consumer {
                name: "killed".into(),
                record: Some(process(2)),
            },
            Consumer {
                name: "remote".into(),
                record: Some(process(3)),
            },
        ];
        let dead = judge_consumers(&seen, &mut known, judge);
        assert_eq!(
            dead,
            [DeadConsumer {
                name: "killed".into(),
                stalled: false
            }]
        );
        // Their records lapse.
        let lapsed: Vec<Consumer> = seen
            .iter()
            .map(|c| Consumer {
                name: c.name.clone(),
                record: None,
            })
            .collect();
        let dead = judge_consumers(&lapsed, &mut known, judge);
        let stalled: Vec<(&str, bool)> =
            dead.iter().map(|d| (d.name.as_str(), d.stalled)).collect();
        assert_eq!(
            stalled,
            [("stopped", true), ("killed", false), ("remote", false)]
        );
    }
}
