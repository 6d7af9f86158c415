//! Wakes an idle worker the moment a task arrives, without polling.
//!
//! When a claim finds every stream empty, the claim script also returns the
//! newest entry id of each stream. The dispatcher arms the doorbell with
//! those ids; the doorbell blocks in `XREAD BLOCK` on its own connection
//! from exactly there, so an entry added after the claim wakes it at once
//! (none can slip between the claim and the wait), and nothing is read
//! twice. The doorbell never claims: it only says "look again", and the
//! claim script keeps strict priority order however the wake came about.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tandem_shared::backoff::{RECONNECT, Retries};
use tandem_shared::store::{BlockingConn, Store};
use tokio::sync::{Notify, watch};

/// Where to wait from: stream keys and the id to wait after in each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WaitPoint {
    pub keys: Vec<String>,
    pub ids: Vec<String>,
}

impl WaitPoint {
    /// The point just after `ring`'s arrivals: the same streams, each one
    /// that had an arrival waited on from that entry.
    pub fn past(ring: &Ring) -> WaitPoint {
        let mut point = WaitPoint::clone(&ring.point);
        for (key, id) in &ring.arrivals {
            if let Some(at) = point.keys.iter().position(|k| k == key) {
                point.ids[at].clone_from(id);
            }
        }
        point
    }
}

/// What rang: the point the wait read from, and each stream's first entry
/// after it (the read asks for one a stream).
#[derive(Debug, Clone)]
pub(crate) struct Ring {
    pub point: Arc<WaitPoint>,
    pub arrivals: Vec<(String, String)>,
}

/// The rings since the dispatcher last looked.
#[derive(Debug, Default)]
pub(crate) struct Rings {
    pub rings: Vec<Ring>,
    /// A ring that was no arrival (the wait failed): look again, whatever
    /// the others were.
    pub blind: bool,
}

/// Rings (wakes the dispatcher) when an entry arrives after the wait point
/// it was armed with. (Its log lines say "waker", the name it had first.)
#[derive(Debug)]
pub(crate) struct Doorbell {
    arm: watch::Sender<Option<Arc<WaitPoint>>>,
    rings: Arc<std::sync::Mutex<Rings>>,
    /// True from `arm` until the wait fires: while armed, the wait point in
    /// force still covers every arrival, and a claim needs no fresh one.
    armed: Arc<AtomicBool>,
    woken: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Doorbell {
    pub fn spawn(store: Store, block_ms: u64) -> Self {
        let (arm, armed) = watch::channel(None);
        let woken = Arc::new(Notify::new());
        let is_armed = Arc::new(AtomicBool::new(false));
        let rings = Arc::new(std::sync::Mutex::new(Rings::default()));
        let task = tokio::spawn(wait_loop(
            store,
            block_ms,
            armed,
            Arc::clone(&is_armed),
            Arc::clone(&woken),
            Arc::clone(&rings),
        ));
        Self {
            arm,
            rings,
            armed: is_armed,
            woken,
            task,
        }
    }

    /// Starts (or moves) the wait.
    pub fn arm(&self, point: WaitPoint) {
        self.armed.store(true, Ordering::SeqCst);
        self.arm.send_replace(Some(Arc::new(point)));
    }

    pub fn is_armed(&self) -> bool {
        self.armed.load(Ordering::SeqCst)
    }

    /// Completes after an entry arrived (or the wait failed and the
    /// dispatcher should look again). A wake that came while nobody was
    /// waiting is kept for the next call.
    pub async fn woken(&self) {
        self.woken.notified().await
    }

    /// The rings since the last call, emptied.
    pub fn take_rings(&self) -> Rings {
        match self.rings.lock() {
            Ok(mut rings) => std::mem::take(&mut *rings),
            // A panic while the lock was held: the rings are unknown.
            Err(_) => Rings {
                rings: Vec::new(),
                blind: true,
            },
        }
    }
}

impl Drop for Doorbell {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn wait_loop(
    store: Store,
    block_ms: u64,
    mut armed: watch::Receiver<Option<Arc<WaitPoint>>>,
    is_armed: Arc<AtomicBool>,
    woken: Arc<Notify>,
    rings: Arc<std::sync::Mutex<Rings>>,
) {
    let note = |ring: Option<Ring>| {
        if let Ok(mut rings) = rings.lock() {
            match ring {
                Some(ring) => rings.rings.push(ring),
                None => rings.blind = true,
            }
        }
    };
    let fire = || {
        is_armed.store(false, Ordering::SeqCst);
        woken.notify_one();
    };
    let mut conn: Option<BlockingConn> = None;
    let mut retries = Retries::new(RECONNECT);
    loop {
        // Wait to be armed with a point we have not consumed yet.
        if armed.changed().await.is_err() {
            return;
        }
        let Some(mut point) = armed.borrow_and_update().clone() else {
            continue;
        };
        loop {
            let reader = match &mut conn {
                Some(c) => c,
                None => match store.blocking_connection(block_ms).await {
                    Ok(c) => conn.insert(c),
                    Err(err) => {
                        let delay = retries.next_delay();
                        tracing::warn!(
                            "waker cannot connect to Redis: {err}; retrying in {delay:?}"
                        );
                        tokio::time::sleep(delay).await;
                        note(None);
                        fire();
                        break;
                    }
                },
            };
            match reader.xread(&point.keys, &point.ids, block_ms, 1).await {
                Ok(read) if !read.is_empty() => {
                    retries.reset();
                    // A point armed while this wait blocked came from a
                    // claim that ran before the fire: the claim the fire
                    // brings about sees everything since and arms afresh
                    // (the fire clears `is_armed`, after this). Waiting
                    // from the older point would only ring again at once
                    // for the same arrival, and cost a claim for nothing.
                    armed.borrow_and_update();
                    note(Some(Ring {
                        arrivals: read
                            .iter()
                            .filter_map(|(key, entries)| {
                                entries.first().map(|(id, _)| (key.clone(), id.clone()))
                            })
                            .collect(),
                        point: Arc::clone(&point),
                    }));
                    fire();
                    break;
                }
                Ok(_) => {
                    // Timed out with nothing new: wait again, from a newer
                    // point if the dispatcher moved it meanwhile.
                    if armed.has_changed().unwrap_or(false) {
                        match armed.borrow_and_update().clone() {
                            Some(newer) => point = newer,
                            None => break,
                        }
                    }
                }
                Err(err) => {
                    tracing::warn!("waker read failed: {err}; reconnecting");
                    conn = None;
                    tokio::time::sleep(retries.next_delay()).await;
                    // The streams may have been recreated; let the
                    // dispatcher claim and re-arm from fresh ids.
                    note(None);
                    fire();
                    break;
                }
            }
        }
    }
}
