//! Finds dead workers: consumers of this worker's streams whose registry
//! record expired (their heartbeat lapsed). It only reads; the dispatcher
//! takes their tasks over with its next claim, so a dead worker's tasks
//! restart within a heartbeat TTL and a tick, long before their leases end.

use std::time::Duration;

use tandem_shared::store::{Store, StreamRef};
use tokio::sync::mpsc;

pub(crate) async fn run(
    store: Store,
    streams: Vec<StreamRef>,
    me: String,
    every: Duration,
    found: mpsc::UnboundedSender<Vec<String>>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match store.dead_consumers(&streams, &me).await {
            Ok(dead) if !dead.is_empty() => {
                if found.send(dead).is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(err) => tracing::debug!("looking for dead workers failed: {err}"),
        }
    }
}
