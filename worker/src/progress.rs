//! The progress writer: takes the running tasks' progress reports (already
//! throttled per task by `context::Progress`) and writes them with
//! `progress.lua`, newest per task first-come: when reports pile up while
//! a write is out, only each task's latest is written.
//!
//! A progress report is not a change of the task's state (it stays
//! `running`), so it goes beside the dispatcher's round trips rather than
//! through them; the script is fenced by the record's owner like a commit,
//! so a report that arrives after the task's commit, or after another
//! worker took it over, changes nothing.

use std::collections::HashMap;

use tandem_shared::TaskId;
use tandem_shared::store::Store;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::context::{ProgressItem, ProgressReport};

/// Reports taken from the channel in one go.
const BATCH: usize = 256;

/// Writes reports until every sender is gone (the worker stops).
pub(crate) async fn write(store: Store, mut reports: UnboundedReceiver<ProgressItem>) {
    let mut batch = Vec::with_capacity(BATCH);
    while reports.recv_many(&mut batch, BATCH).await > 0 {
        // Only each task's latest report counts; flushes are answered once
        // what came before them is written.
        let mut latest: HashMap<TaskId, ProgressReport> = HashMap::new();
        let mut flushes = Vec::new();
        for item in batch.drain(..) {
            match item {
                ProgressItem::Report(report) => {
                    latest.insert(report.id, report);
                }
                ProgressItem::Flush(done) => flushes.push(done),
            }
        }
        for report in latest.into_values() {
            match store
                .report_progress(
                    report.class,
                    &report.id,
                    &report.owner,
                    report.fraction,
                    &report.message,
                )
                .await
            {
                Ok(true) => {}
                Ok(false) => tracing::debug!(
                    task = %report.id,
                    "progress not written: the task is no longer running here"
                ),
                Err(err) => tracing::warn!(task = %report.id, "cannot write progress: {err}"),
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}
