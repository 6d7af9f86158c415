//! The plain demo: a mixed workload of built-in kinds on CPU workers.

use std::process::ExitCode;
use std::time::Duration;

use tandem_shared::kind::builtin::{Echo, Fail, FailParams, Noop, Sleep, SleepParams};
use tandem_shared::store::Store;
use tandem_shared::{Config, Priority};

use super::summary::summary;
use super::{DemoArgs, Interrupts, Planned, drive, worker_env};
use crate::local::LocalWorkers;
use tandem_producer::{Producer, Task};

/// The mixed workload of built-in kinds on `--workers` CPU workers.
pub(super) async fn plain(
    config: &Config,
    store: &Store,
    args: &DemoArgs,
) -> anyhow::Result<ExitCode> {
    let tasks = args.tasks.unwrap_or(2_000);
    let env = worker_env(config, args);
    let mut workers = LocalWorkers::start_registered(store, args.workers, &env).await?;
    println!(
        "started {} workers x concurrency {} (prefix {})",
        args.workers, args.concurrency, config.prefix
    );

    let producer = Producer::connect(config).await?;
    // Installed now, so a Ctrl-C (or a SIGTERM) from here on is ours to handle.
    let mut interrupts = Interrupts::install()?;
    let run = drive(&producer, tasks, |i| Ok(workload(i)), &mut interrupts).await?;
    if run.interrupted {
        println!("interrupted: stopping workers and cleaning up");
    } else {
        summary(&run.done, run.elapsed);
    }
    workers.stop(Duration::from_secs(10));
    Ok(if run.interrupted {
        ExitCode::from(130)
    } else {
        ExitCode::SUCCESS
    })
}

/// The i-th task of the mixed workload: mostly cheap tasks at normal and
/// low priority, some sleeps at high, echoes at critical, a few failures.
fn workload(i: usize) -> Planned {
    let (task, kind, priority) = match i % 20 {
        0 => (
            Task::of::<Fail>(&FailParams {
                code: "E_DEMO".into(),
                message: "a deliberate failure".into(),
                retry: false,
            }),
            "fail",
            Priority::Normal,
        ),
        1 | 2 | 11 | 12 => (
            Task::of::<Sleep>(&SleepParams {
                ms: 5 + (i as u64 * 7) % 36,
            }),
            "sleep",
            Priority::High,
        ),
        3 | 13 => (
            Task::of::<Echo>(&rmpv::Value::Map(vec![
                ("symbol".into(), "ES".into()),
                ("bid".into(), (4_000.25 + i as f64).into()),
            ])),
            "echo",
            Priority::Critical,
        ),
        4 | 5 | 14 | 15 => (
            Task::of::<Echo>(&format!("order {i}").into()),
            "echo",
            Priority::Normal,
        ),
        n if n % 2 == 0 => (
            Task::of::<Noop>(&rmpv::Value::Nil),
            "noop",
            Priority::Normal,
        ),
        _ => (Task::of::<Noop>(&rmpv::Value::Nil), "noop", Priority::Low),
    };
    // Every spec above is within bounds, so building cannot fail.
    let task = task.unwrap_or_else(|_| Task::raw("noop", vec![0xc0]));
    Planned {
        task: task.priority(priority),
        label: kind,
        priority,
        keep_result: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workload_mixes_every_priority() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..40 {
            seen.insert(workload(i).priority);
        }
        assert_eq!(seen.len(), 4);
    }
}
