//! Gives back the parameter blob references of tasks that ended without a
//! worker: a cancel of a queued, retrying, delayed or waiting task, a
//! workflow's cancel or fail fast (common.lua's `give_back_params` pushes
//! each reference once onto its class's `blobs:release` list, in the
//! script that deletes the task's fields). Every worker drains the lists
//! of its classes every [`INTERVAL`] ([`BlobStore::drain_releases`]: each
//! element is popped by one worker and released once). Tasks a worker
//! claimed give theirs back at their commit instead
//! (`BlobCache::committed`).

use std::time::Duration;

use tandem_shared::Class;
use tandem_shared::blob::BlobStore;

/// How often the lists are read: a given-back blob lingers about this
/// long (its TTL would keep it for `blob_ttl_s`).
pub(crate) const INTERVAL: Duration = Duration::from_secs(1);

/// At most this many elements per class and pass; a full pass goes again
/// at once.
const BATCH: usize = 100;

/// Runs until the worker drops it.
pub(crate) async fn run(blobs: BlobStore, classes: Vec<Class>) {
    let mut failures = 0u32;
    loop {
        let mut again = false;
        for &class in &classes {
            match blobs.drain_releases(class, BATCH).await {
                Ok(drained) => {
                    failures = 0;
                    if drained.popped() > 0 {
                        tracing::debug!(%class, ?drained, "gave back parameter blobs of tasks that ended unrun");
                    }
                    again |= drained.popped() >= BATCH as u64;
                }
                Err(err) => {
                    failures += 1;
                    if failures == 1 || failures.is_power_of_two() {
                        tracing::warn!(%class, "cannot read the given-back blob references ({err}); trying again");
                    }
                }
            }
        }
        if !again {
            tokio::time::sleep(INTERVAL).await;
        }
    }
}
