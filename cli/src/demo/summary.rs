//! What a run prints at the end: tasks by kind, priority and worker for
//! the plain demo; by workload, shard and device for `--trading`, with one
//! option checked against Black-Scholes.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use tandem_shared::kind::monte_carlo::{MonteCarloOutput, black_scholes};
use tandem_shared::{Priority, Status, TaskId};

use super::trading::{Column, by_column};
use super::trading_workload::REFERENCE;
use super::{Done, Run};
use crate::table;

/// Prints the trading summary; true when every task succeeded.
pub(super) fn trading_summary(
    run: &Run,
    columns: &[Column],
    shards: &HashMap<TaskId, Vec<String>>,
) -> bool {
    let done = &run.done;
    let rate = done.len() as f64 / run.elapsed.as_secs_f64().max(1e-9);
    println!(
        "\n{} tasks in {:.2} s: {} tasks/s, submit to result seen by the producer\n",
        table::thousands(done.len() as u64),
        run.elapsed.as_secs_f64(),
        table::thousands(rate as u64)
    );

    // Devices no column names (a worker that is not the fleet's) go in
    // `other`, shown only when there are some.
    let other = done
        .iter()
        .any(|d| !d.device.is_empty() && Column::of(columns, &d.device).is_none());
    let mut header: Vec<String> = [
        "workload",
        "class",
        "priority",
        "tasks",
        "succeeded",
        "failed",
        "p50 ms",
        "p99 ms",
    ]
    .map(String::from)
    .to_vec();
    header.extend(columns.iter().map(|c| c.label.clone()));
    if other {
        header.push("other".to_owned());
    }
    let mut rows = vec![header];
    let mut by_label: BTreeMap<&str, Vec<&Done>> = BTreeMap::new();
    for d in done {
        by_label.entry(d.kind).or_default().push(d);
    }
    for (label, list) in &by_label {
        let mut latencies: Vec<f64> = list.iter().map(|d| d.latency_ms).collect();
        latencies.sort_by(f64::total_cmp);
        let succeeded = list
            .iter()
            .filter(|d| d.status == Status::Succeeded)
            .count();
        let mut row = vec![
            (*label).to_owned(),
            list[0].class.map(|c| c.to_string()).unwrap_or_default(),
            list[0].priority.to_string(),
            list.len().to_string(),
            succeeded.to_string(),
            (list.len() - succeeded).to_string(),
            table::ms(percentile(&latencies, 50.0)),
            table::ms(percentile(&latencies, 99.0)),
        ];
        let ran = list
            .iter()
            .filter(|d| !d.device.is_empty())
            .map(|d| d.device.as_str());
        let counts = by_column(columns, ran);
        let shown = if other { counts.len() } else { columns.len() };
        row.extend(counts[..shown].iter().map(usize::to_string));
        rows.push(row);
    }
    println!(
        "by workload, with the device that ran each task (a split task: merged it): {}\n",
        columns
            .iter()
            .map(|c| format!("{} = {}", c.label, c.name))
            .collect::<Vec<_>>()
            .join(", ")
    );
    print!("{}", table::render(&rows));

    if !shards.is_empty() {
        println!(
            "\nsplit tasks: each cut into shards that ran as tasks of their own, the faster GPU taking more\n"
        );
        let other = shards
            .values()
            .flatten()
            .any(|device| Column::of(columns, device).is_none());
        let mut header = ["workload", "tasks", "shards"].map(String::from).to_vec();
        header.extend(columns.iter().map(|c| c.label.clone()));
        if other {
            header.push("other".to_owned());
        }
        let mut rows = vec![header];
        let mut by_label: BTreeMap<&str, Vec<&Vec<String>>> = BTreeMap::new();
        for d in done {
            if let Some(devices) = shards.get(&d.id) {
                by_label.entry(d.kind).or_default().push(devices);
            }
        }
        for (label, parents) in &by_label {
            let devices = parents.iter().flat_map(|s| s.iter().map(String::as_str));
            let mut row = vec![
                (*label).to_owned(),
                parents.len().to_string(),
                parents.iter().map(|s| s.len()).sum::<usize>().to_string(),
            ];
            let counts = by_column(columns, devices);
            let shown = if other { counts.len() } else { columns.len() };
            row.extend(counts[..shown].iter().map(usize::to_string));
            rows.push(row);
        }
        print!("{}", table::render(&rows));
    }

    println!("\nby priority (higher priorities overtake lower ones waiting in the queue)\n");
    print!("{}", priority_table(done));

    println!("\nby device (tasks: the record's device; shards: of split tasks)\n");
    let mut rows = vec![
        ["", "device", "name", "tasks", "shards"]
            .map(String::from)
            .to_vec(),
    ];
    for c in columns {
        let tasks = done.iter().filter(|d| d.device == c.device).count();
        let ran_shards = shards
            .values()
            .flatten()
            .filter(|s| **s == c.device)
            .count();
        rows.push(vec![
            c.label.clone(),
            c.device.clone(),
            c.name.clone(),
            tasks.to_string(),
            ran_shards.to_string(),
        ]);
    }
    print!("{}", table::render(&rows));

    if let Some(reference) = done.iter().find(|d| d.result.is_some()) {
        print!(
            "\n{}",
            option_check(reference, shards.get(&reference.id), columns)
        );
    }

    let failed = done
        .iter()
        .filter(|d| d.status != Status::Succeeded)
        .count();
    if failed == 0 {
        println!(
            "\nall {} tasks succeeded",
            table::thousands(done.len() as u64)
        );
    } else {
        println!(
            "\n{failed} of {} tasks did not succeed (`tandem dlq list` shows why while the run's keys last)",
            table::thousands(done.len() as u64)
        );
    }
    failed == 0
}

/// Task 0's European call and put, priced by Monte Carlo, against the
/// Black-Scholes formula.
fn option_check(reference: &Done, shards: Option<&Vec<String>>, columns: &[Column]) -> String {
    let p = &REFERENCE;
    let Some(output) = reference
        .result
        .as_deref()
        .and_then(|bytes| tandem_shared::msgpack::decode::<MonteCarloOutput>(bytes).ok())
    else {
        return format!(
            "option check: task {} has no result ({})\n",
            reference.id, reference.status
        );
    };
    let ran = match shards {
        Some(devices) => {
            let counts = by_column(columns, devices.iter().map(String::as_str));
            let on: Vec<String> = columns
                .iter()
                .zip(&counts)
                .filter(|(_, n)| **n > 0)
                .map(|(c, n)| format!("{} {n}", c.label))
                .collect();
            format!("split into {} shards: {}", devices.len(), on.join(", "))
        }
        None => format!(
            "run whole on {}",
            Column::of(columns, &reference.device).map_or(reference.device.as_str(), |c| &c.label)
        ),
    };
    let (call, put) = black_scholes(p.s0, p.strike, p.rate, p.dividend, p.sigma, p.maturity);
    let mut text = format!(
        "option check: European options, S = {} K = {} r = {} % q = {} % sigma = {} % T = {} year, \
         {} paths x {} steps, {ran}\n\n",
        p.s0,
        p.strike,
        p.rate * 100.0,
        p.dividend * 100.0,
        p.sigma * 100.0,
        p.maturity,
        table::thousands(output.paths),
        p.steps,
    );
    let mut rows = vec![
        [
            "",
            "Monte Carlo",
            "standard error",
            "Black-Scholes",
            "difference",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for (name, estimate, exact) in [
        ("call", output.european_call, call),
        ("put", output.european_put, put),
    ] {
        let off = (estimate.price - exact) / estimate.std_error;
        rows.push(vec![
            name.to_owned(),
            format!("{:.4}", estimate.price),
            format!("{:.4}", estimate.std_error),
            format!("{exact:.4}"),
            format!("{off:+.2} s.e."),
        ]);
    }
    text.push_str(&table::render(&rows));
    text
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub(super) fn summary(done: &[Done], elapsed: Duration) {
    let rate = done.len() as f64 / elapsed.as_secs_f64().max(1e-9);
    println!(
        "\n{} tasks in {:.2} s: {} tasks/s, submit to result seen by the producer\n",
        table::thousands(done.len() as u64),
        elapsed.as_secs_f64(),
        table::thousands(rate as u64)
    );

    let mut rows = vec![
        ["kind", "tasks", "succeeded", "failed", "p50 ms", "p99 ms"]
            .map(String::from)
            .to_vec(),
    ];
    let mut by_kind: BTreeMap<&str, Vec<&Done>> = BTreeMap::new();
    for d in done {
        by_kind.entry(d.kind).or_default().push(d);
    }
    for (kind, list) in &by_kind {
        let mut latencies: Vec<f64> = list.iter().map(|d| d.latency_ms).collect();
        latencies.sort_by(f64::total_cmp);
        rows.push(vec![
            (*kind).to_owned(),
            list.len().to_string(),
            list.iter()
                .filter(|d| d.status == Status::Succeeded)
                .count()
                .to_string(),
            list.iter()
                .filter(|d| d.status != Status::Succeeded)
                .count()
                .to_string(),
            table::ms(percentile(&latencies, 50.0)),
            table::ms(percentile(&latencies, 99.0)),
        ]);
    }
    print!("{}", table::render(&rows));

    println!("\nby priority (higher priorities overtake lower ones waiting in the queue)\n");
    print!("{}", priority_table(done));

    println!("\nby worker\n");
    let mut rows = vec![["worker", "tasks"].map(String::from).to_vec()];
    let mut by_worker: BTreeMap<&str, usize> = BTreeMap::new();
    for d in done {
        *by_worker.entry(d.worker.as_str()).or_default() += 1;
    }
    for (worker, count) in by_worker {
        rows.push(vec![worker.to_owned(), count.to_string()]);
    }
    print!("{}", table::render(&rows));
}

/// Latency by priority: the table both summaries show.
fn priority_table(done: &[Done]) -> String {
    let mut rows = vec![
        ["priority", "tasks", "p50 ms", "p99 ms"]
            .map(String::from)
            .to_vec(),
    ];
    for priority in Priority::ALL {
        let mut latencies: Vec<f64> = done
            .iter()
            .filter(|d| d.priority == *priority)
            .map(|d| d.latency_ms)
            .collect();
        if latencies.is_empty() {
            continue;
        }
        latencies.sort_by(f64::total_cmp);
        rows.push(vec![
            priority.to_string(),
            latencies.len().to_string(),
            table::ms(percentile(&latencies, 50.0)),
            table::ms(percentile(&latencies, 99.0)),
        ]);
    }
    table::render(&rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_takes_the_nearest_rank() {
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 50.0), 2.0);
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 99.0), 4.0);
    }
}
