//! Where a bench run's time goes, per task: Redis time by command (the
//! difference of `INFO commandstats` before and after the run), Redis's
//! main-thread CPU (`INFO cpu`), and the client processes' CPU (the bench
//! itself, which is the producer, and each worker process, from
//! `/proc/<pid>/stat`).
//!
//! `INFO commandstats` counts a script's own time under `evalsha` and, in
//! Redis 7, every command the script calls under that command as well: the
//! nested rows are a breakdown of the `evalsha` row, not an addition to it.
//! The figures cover everything Redis did during the run, the bench's own
//! polling included (a few calls), so they are per task an upper bound.

use std::collections::BTreeMap;

use serde::Serialize;
use tandem_shared::store::Store;

/// Counters read at one moment.
#[derive(Debug, Clone, Default)]
pub(crate) struct Snapshot {
    /// command -> (calls, usec)
    commands: BTreeMap<String, (u64, u64)>,
    /// Redis main thread, user + system, seconds.
    redis_cpu_s: Option<f64>,
}

/// Per-task costs of one run.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Cost {
    /// Redis time of every command, us per task.
    pub redis_us: f64,
    /// Of which scripts (`evalsha`, their nested commands included).
    pub script_us: f64,
    /// Redis main-thread CPU, us per task.
    pub redis_cpu_us: Option<f64>,
    /// The bench process (the producers and their waits), CPU us per task.
    pub producer_cpu_us: Option<f64>,
    /// The worker processes together, CPU us per task.
    pub workers_cpu_us: Option<f64>,
    /// Per command: calls and us per task, the busiest first.
    pub commands: Vec<CommandCost>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct CommandCost {
    pub command: String,
    pub calls: f64,
    pub us: f64,
}

/// Commands no script calls: with scripts in a run, Redis's time is theirs
/// plus the scripts' (every other command is taken as called by a script,
/// so a client's own `HSET`, say a heartbeat, is left out: a few calls a
/// second, not per task). Without scripts (the ceiling), every command
/// counts.
fn is_top_level(command: &str) -> bool {
    matches!(
        command,
        "evalsha" | "eval" | "xread" | "xreadgroup" | "subscribe" | "ping" | "info" | "scan"
    ) || command.starts_with("script|")
        || command.starts_with("config|")
        || command.starts_with("client|")
}

impl Snapshot {
    /// Reads the counters; empty when Redis does not answer them (a proxy
    /// that hides INFO): the run's figures then leave them out.
    pub async fn take(store: &Store) -> Self {
        let mut stats = redis::cmd("INFO");
        stats.arg("commandstats");
        let mut cpu = redis::cmd("INFO");
        cpu.arg("cpu");
        let Ok(replies) = store.pipeline(&[stats, cpu]).await else {
            return Self::default();
        };
        let mut snapshot = Self::default();
        let mut texts = replies.into_iter().map(|reply| match reply {
            redis::Value::BulkString(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            redis::Value::VerbatimString { text, .. } => text,
            _ => String::new(),
        });
        for line in texts.next().unwrap_or_default().lines() {
            // cmdstat_evalsha:calls=6030,usec=549577,usec_per_call=91.14,...
            let Some((name, rest)) = line
                .strip_prefix("cmdstat_")
                .and_then(|l| l.split_once(':'))
            else {
                continue;
            };
            let value = |key: &str| {
                rest.split(',')
                    .find_map(|kv| kv.strip_prefix(key))
                    .and_then(|v| v.parse::<u64>().ok())
            };
            if let (Some(calls), Some(usec)) = (value("calls="), value("usec=")) {
                snapshot.commands.insert(name.to_owned(), (calls, usec));
            }
        }
        let cpu_text = texts.next().unwrap_or_default();
        let cpu_of = |key: &str| {
            cpu_text
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().parse::<f64>().ok())
        };
        // Redis 7 names the main thread's own; older ones the process's.
        snapshot.redis_cpu_s = match (
            cpu_of("used_cpu_user_main_thread:"),
            cpu_of("used_cpu_sys_main_thread:"),
        ) {
            (Some(u), Some(s)) => Some(u + s),
            _ => cpu_of("used_cpu_user:")
                .zip(cpu_of("used_cpu_sys:"))
                .map(|(u, s)| u + s),
        };
        snapshot
    }

    /// Calls and usec of `command` since `before`.
    pub fn delta(&self, before: &Self, command: &str) -> (u64, u64) {
        let (calls, usec) = self.commands.get(command).copied().unwrap_or((0, 0));
        let (calls0, usec0) = before.commands.get(command).copied().unwrap_or((0, 0));
        (calls.saturating_sub(calls0), usec.saturating_sub(usec0))
    }
}

/// CPU seconds (user + system) a process has used so far, from
/// `/proc/<pid>/stat`; None where there is no such file (not Linux, or the
/// process is gone).
pub(crate) fn process_cpu_s(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces:
    // count fields after its closing one. utime and stime are fields 14
    // and 15, in clock ticks: USER_HZ, 100 on Linux (proc(5)).
    let after = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// The sum of [`process_cpu_s`] over `pids`; None when any is unknown.
pub(crate) fn processes_cpu_s(pids: &[u32]) -> Option<f64> {
    pids.iter().map(|&pid| process_cpu_s(pid)).sum()
}

/// The per-task costs between two snapshots of a run of `tasks` tasks.
pub(crate) fn cost(
    before: &Snapshot,
    after: &Snapshot,
    tasks: usize,
    producer_cpu_s: Option<f64>,
    workers_cpu_s: Option<f64>,
) -> Cost {
    let n = tasks.max(1) as f64;
    let mut commands = Vec::new();
    let mut redis_us = 0.0;
    let mut script_us = 0.0;
    for (name, &(calls, usec)) in &after.commands {
        let (calls0, usec0) = before.commands.get(name).copied().unwrap_or((0, 0));
        let calls = calls.saturating_sub(calls0) as f64 / n;
        let us = usec.saturating_sub(usec0) as f64 / n;
        if calls == 0.0 {
            continue;
        }
        redis_us += us;
        if name == "evalsha" || name == "eval" {
            script_us += us;
        }
        commands.push(CommandCost {
            command: name.clone(),
            calls,
            us,
        });
    }
    // With scripts, the commands they call are in their time already.
    if script_us > 0.0 {
        redis_us = commands
            .iter()
            .filter(|c| is_top_level(&c.command))
            .map(|c| c.us)
            .sum();
    }
    commands.sort_by(|a, b| b.us.total_cmp(&a.us));
    Cost {
        redis_us,
        script_us,
        redis_cpu_us: after
            .redis_cpu_s
            .zip(before.redis_cpu_s)
            .map(|(a, b)| (a - b) * 1e6 / n),
        producer_cpu_us: producer_cpu_s.map(|s| s * 1e6 / n),
        workers_cpu_us: workers_cpu_s.map(|s| s * 1e6 / n),
        commands,
    }
}

/// One line: `redis 69 us/task (scripts 60; evalsha 3.0/task 60 us, xadd
/// ...), client CPU: producer 40, workers 80 us/task`.
pub(crate) fn describe(cost: &Cost) -> String {
    let top: Vec<String> = cost
        .commands
        .iter()
        .take(12)
        .map(|c| format!("{} {:.1}x {:.1}", c.command, c.calls, c.us))
        .collect();
    let mut out = format!(
        "redis {:.1} us/task (scripts {:.1}; by command, calls and us per task: {})",
        cost.redis_us,
        cost.script_us,
        top.join(", ")
    );
    if let Some(cpu) = cost.redis_cpu_us {
        out.push_str(&format!(", redis CPU {cpu:.1} us/task"));
    }
    if let (Some(p), Some(w)) = (cost.producer_cpu_us, cost.workers_cpu_us) {
        out.push_str(&format!(
            ", client CPU: producer {p:.1}, workers {w:.1} us/task"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(rows: &[(&str, u64, u64)], cpu: f64) -> Snapshot {
        Snapshot {
            commands: rows
                .iter()
                .map(|&(n, c, u)| (n.to_owned(), (c, u)))
                .collect(),
            redis_cpu_s: Some(cpu),
        }
    }

    #[test]
    fn nested_commands_are_a_breakdown_not_an_addition() {
        let before = snap(&[("evalsha", 10, 1000), ("xadd", 5, 50)], 1.0);
        let after = snap(
            &[
                ("evalsha", 310, 21_000),
                ("xadd", 205, 450),
                ("xack", 100, 100),
            ],
            1.5,
        );
        let c = cost(&before, &after, 100, Some(0.01), Some(0.02));
        let raw = cost(&before, &snap(&[("xadd", 105, 150)], 1.0), 100, None, None);
        assert_eq!(raw.redis_us, 1.0, "without scripts every command counts");
        // Only evalsha is top level: 20,000 us over 100 tasks.
        assert_eq!(c.redis_us, 200.0);
        assert_eq!(c.script_us, 200.0);
        assert_eq!(c.commands[0].command, "evalsha");
        assert_eq!(c.commands[0].calls, 3.0);
        assert_eq!(c.redis_cpu_us, Some(5000.0));
        assert_eq!(c.producer_cpu_us, Some(100.0));
        assert_eq!(c.workers_cpu_us, Some(200.0));
    }

    #[test]
    fn this_process_has_a_cpu_time() {
        assert!(process_cpu_s(std::process::id()).is_some());
        assert_eq!(process_cpu_s(u32::MAX), None);
    }
}
