//! Watches the worker registry, once a heartbeat interval: the live workers
//! (routing decides from them) and the dead ones (consumers of this
//! worker's streams whose registry record expired, their heartbeat having
//! lapsed). It only reads; the dispatcher re-routes and takes the dead
//! workers' tasks over with its next claim, so a dead worker's tasks restart
//! within a heartbeat TTL and a tick, long before their leases end.

use std::time::Duration;

use tandem_shared::store::{Store, StreamRef};
use tandem_shared::wire::WorkerInfo;
use tokio::sync::mpsc;

/// What one look at the registry found.
#[derive(Debug, Clone)]
pub(crate) struct Observation {
    pub workers: Vec<WorkerInfo>,
    /// Consumer names whose worker is gone.
    pub dead: Vec<String>,
}

pub(crate) async fn run(
    store: Store,
    streams: Vec<StreamRef>,
    me: String,
    every: Duration,
    found: mpsc::Sender<Observation>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let workers = match store.workers().await {
            Ok(workers) => workers,
            Err(err) => {
                tracing::debug!("reading the worker registry failed: {err}");
                continue;
            }
        };
        let dead = match store.dead_consumers(&streams, &me).await {
            Ok(dead) => dead,
            Err(err) => {
                tracing::debug!("looking for dead workers failed: {err}");
                Vec::new()
            }
        };
        // The dispatcher wants the latest look, not a backlog of them.
        match found.try_send(Observation { workers, dead }) {
            Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => {}
            Err(mpsc::error::TrySendError::Closed(_)) => return,
        }
    }
}
