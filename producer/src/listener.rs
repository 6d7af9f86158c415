//! The reply listener: one task per watched reply stream, blocked in `XREAD`
//! on its own connection, handing each completion notice to the waiters
//! registered for that task.
//!
//! [`Waiters`] is the bookkeeping the listener and the waiting calls share:
//! who waits for which task (a [`Registration`] each, removed by its guard
//! however the wait ends), and the resync generation a listener bumps when
//! notices may have been lost (a reconnect, or a reply stream trimmed past
//! unread notices), which tells every waiter to re-read its record once.
//! See "How waiting works" in `producer.rs` for why no notice is missed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tandem_shared::TaskId;
use tandem_shared::backoff::{RECONNECT, Retries};
use tandem_shared::store::Store;
use tandem_shared::wire::{Fields, TaskRecord};
use tokio::sync::{oneshot, watch};

use crate::outcome::TaskOutcome;

/// How long one blocking read of a reply stream waits before re-arming.
const LISTEN_BLOCK_MS: u64 = 5_000;
/// Notices read per round trip.
const LISTEN_COUNT: usize = 1_000;

/// The task reading one reply stream.
pub(crate) struct Listener {
    pub(crate) task: tokio::task::JoinHandle<()>,
    /// The value of the producer's `listeners_started` once it knew its
    /// start position.
    pub(crate) number: u64,
}

/// The waiters of each task: a token each and where its outcome goes.
type WaiterMap = HashMap<TaskId, Vec<(u64, oneshot::Sender<TaskOutcome>)>>;

/// Who waits for which task, and the resync generation. One per producer,
/// shared by its listeners (which hand notices out) and its waiting calls
/// (which register and wait).
pub(crate) struct Waiters {
    /// The waiters of each task: a token (to remove exactly this waiter)
    /// and where its outcome goes. An entry lives from the registration to
    /// the notice or the end of the wait, whichever comes first.
    map: Mutex<WaiterMap>,
    /// The next registration's token.
    next_token: AtomicU64,
    /// Bumped when notices may have been lost; every waiter then re-reads.
    resync: watch::Sender<u64>,
}

impl Waiters {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            map: Mutex::new(HashMap::new()),
            next_token: AtomicU64::new(0),
            resync: watch::Sender::new(0),
        })
    }

    /// Registers a waiter for `id`. Its notice arrives on the registration's
    /// receiver; dropping the registration (or its guard) removes it.
    pub(crate) fn register(self: &Arc<Self>, id: TaskId) -> Registration {
        let (tx, rx) = oneshot::channel();
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        self.lock().entry(id).or_default().push((token, tx));
        Registration {
            guard: WaiterGuard {
                waiters: Arc::downgrade(self),
                id,
                token,
            },
            receiver: rx,
        }
    }

    /// Removes every waiter of `id` and returns where their outcome goes
    /// (empty when nobody waits).
    fn take(&self, id: &TaskId) -> Vec<oneshot::Sender<TaskOutcome>> {
        self.lock()
            .remove(id)
            .map(|list| list.into_iter().map(|(_, sender)| sender).collect())
            .unwrap_or_default()
    }

    /// Removes one waiter, and its task's entry once no waiter is left.
    fn remove(&self, id: &TaskId, token: u64) {
        let mut map = self.lock();
        if let Some(list) = map.get_mut(id) {
            list.retain(|(t, _)| *t != token);
            if list.is_empty() {
                map.remove(id);
            }
        }
    }

    /// Hands `outcome` to every waiter of its task, as the listener does
    /// with a notice; returns how many waited.
    #[cfg(test)]
    pub(crate) fn notify(&self, outcome: &TaskOutcome) -> usize {
        let senders = self.take(&outcome.id);
        let count = senders.len();
        send_all(senders, outcome);
        count
    }

    /// Tells every waiter that notices may have been lost.
    pub(crate) fn resync(&self) {
        self.resync.send_modify(|generation| *generation += 1);
    }

    /// A receiver that changes with every [`Waiters::resync`].
    pub(crate) fn subscribe_resync(&self) -> watch::Receiver<u64> {
        self.resync.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WaiterMap> {
        // Every critical section is a single map operation; a panic inside one
        // cannot leave the map inconsistent.
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A waiter in the map, and where its notice arrives.
pub(crate) struct Registration {
    pub(crate) guard: WaiterGuard,
    pub(crate) receiver: oneshot::Receiver<TaskOutcome>,
}

/// Removes its waiter when the wait ends, however it ends.
pub(crate) struct WaiterGuard {
    waiters: Weak<Waiters>,
    id: TaskId,
    token: u64,
}

impl Drop for WaiterGuard {
    fn drop(&mut self) {
        if let Some(waiters) = self.waiters.upgrade() {
            waiters.remove(&self.id, self.token);
        }
    }
}

/// Spawns the listener of `stream`, reading from after `start` (an entry id).
pub(crate) fn spawn(
    waiters: Weak<Waiters>,
    store: Store,
    stream: String,
    start: String,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(listen(waiters, store, stream, start))
}

/// Reads one reply stream and hands notices to waiters until the producer
/// is dropped (its waiters with it).
async fn listen(waiters: Weak<Waiters>, store: Store, stream: String, mut last_id: String) {
    let mut conn = None;
    // 50 ms after a failed connect or read, doubling up to 2 s, back to
    // 50 ms after a successful read.
    let mut backoff = Retries::new(RECONNECT);
    let mut reconnected = false;
    loop {
        let reader = match &mut conn {
            Some(c) => c,
            None => match store.blocking_connection(LISTEN_BLOCK_MS).await {
                Ok(c) => {
                    if reconnected {
                        // Notices may have come and gone while we were away.
                        if let Some(waiters) = waiters.upgrade() {
                            waiters.resync();
                        }
                    }
                    conn.insert(c)
                }
                Err(err) => {
                    tracing::warn!("reply listener cannot connect: {err}");
                    tokio::time::sleep(backoff.next_delay()).await;
                    continue;
                }
            },
        };
        let read = reader
            .xread(
                std::slice::from_ref(&stream),
                std::slice::from_ref(&last_id),
                LISTEN_BLOCK_MS,
                LISTEN_COUNT,
            )
            .await;
        let Some(waiters) = waiters.upgrade() else {
            return;
        };
        match read {
            Ok(streams) => {
                backoff.reset();
                let read_from = last_id.clone();
                let mut count = 0;
                for (_, entries) in streams {
                    for (entry_id, fields) in entries {
                        count += 1;
                        last_id = entry_id;
                        deliver(&waiters, &store, &fields).await;
                    }
                }
                // A full batch means we are behind; if the stream was trimmed
                // past where we read from, notices were lost.
                if count == LISTEN_COUNT
                    && let Ok(Some(deleted)) = store.max_deleted_entry_id(&stream).await
                    && stream_id_after(&deleted, &read_from)
                {
                    tracing::warn!(
                        stream,
                        "reply stream trimmed past unread notices; waiters re-read their records"
                    );
                    waiters.resync();
                }
            }
            Err(err) => {
                tracing::warn!("reply listener read failed: {err}; reconnecting");
                reconnected = true;
                conn = None;
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

/// Hands one notice to the waiters of its task, fetching a result that was
/// left out of the notice (only when someone waits).
async fn deliver(waiters: &Waiters, store: &Store, fields: &Fields) {
    let mut record =
        TaskRecord::from_fields(fields.iter().map(|(k, v)| (k.as_slice(), v.as_slice())));
    let Some(id) = record.id else { return };
    let senders = waiters.take(&id);
    if senders.is_empty() {
        return;
    }
    if record.result_left_out()
        && let Some(class) = record.class
    {
        match store.result_blob(class, &id).await {
            Ok(blob) => record.result = blob,
            Err(err) => tracing::warn!(task = %id, "cannot fetch a large result: {err}"),
        }
    }
    let Some(outcome) = TaskOutcome::from_record(id, record) else {
        return;
    };
    send_all(senders, &outcome);
}

/// Sends `outcome` to every sender; a waiter that has gone is skipped.
fn send_all(senders: Vec<oneshot::Sender<TaskOutcome>>, outcome: &TaskOutcome) {
    for sender in senders {
        let _ = sender.send(outcome.clone());
    }
}

/// True when stream id `a` (`ms-seq`) is after `b`.
fn stream_id_after(a: &str, b: &str) -> bool {
    let parse = |id: &str| {
        let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
        (
            ms.parse::<u64>().unwrap_or(0),
            seq.parse::<u64>().unwrap_or(0),
        )
    };
    parse(a) > parse(b)
}

#[cfg(test)]
mod tests {
    use tandem_shared::Status;

    use super::*;

    fn outcome(id: TaskId) -> TaskOutcome {
        let record = TaskRecord {
            id: Some(id),
            status: Some(Status::Succeeded),
            ..TaskRecord::default()
        };
        TaskOutcome::from_record(id, record).expect("a final record")
    }

    fn waiting(waiters: &Waiters, id: &TaskId) -> usize {
        waiters.lock().get(id).map_or(0, Vec::len)
    }

    #[test]
    fn a_notice_reaches_every_waiter_of_its_task_and_no_other() {
        let waiters = Waiters::new();
        let (task, other) = (TaskId::new(), TaskId::new());
        let mut first = waiters.register(task);
        let mut second = waiters.register(task);
        let mut unrelated = waiters.register(other);

        assert_eq!(waiters.notify(&outcome(task)), 2);

        assert_eq!(first.receiver.try_recv().map(|o| o.id), Ok(task));
        assert_eq!(second.receiver.try_recv().map(|o| o.id), Ok(task));
        assert!(unrelated.receiver.try_recv().is_err());
        assert_eq!(waiting(&waiters, &task), 0, "a notice is handed out once");
        assert_eq!(waiting(&waiters, &other), 1);
    }

    #[test]
    fn a_notice_nobody_waits_for_is_dropped() {
        let waiters = Waiters::new();
        let id = TaskId::new();
        assert_eq!(waiters.notify(&outcome(id)), 0);
        assert!(!waiters.lock().contains_key(&id));
    }

    #[test]
    fn an_ended_wait_removes_only_its_own_waiter() {
        let waiters = Waiters::new();
        let task = TaskId::new();
        let first = waiters.register(task);
        let mut second = waiters.register(task);
        assert_eq!(waiting(&waiters, &task), 2);

        drop(first);
        assert_eq!(waiting(&waiters, &task), 1);
        assert_eq!(waiters.notify(&outcome(task)), 1);
        assert_eq!(second.receiver.try_recv().map(|o| o.id), Ok(task));

        // The last waiter's guard removes the task's entry altogether.
        let third = waiters.register(task);
        drop(third);
        assert!(!waiters.lock().contains_key(&task));
    }

    #[test]
    fn a_guard_outliving_its_waiters_does_nothing() {
        let waiters = Waiters::new();
        let registration = waiters.register(TaskId::new());
        drop(waiters);
        drop(registration);
    }

    #[test]
    fn a_resync_reaches_every_subscriber() {
        let waiters = Waiters::new();
        let mut early = waiters.subscribe_resync();
        let mut late = waiters.subscribe_resync();
        assert!(!early.has_changed().unwrap());

        waiters.resync();
        assert!(early.has_changed().unwrap());
        assert!(late.has_changed().unwrap());
        assert_eq!(*early.borrow_and_update(), 1);
        assert!(!early.has_changed().unwrap());

        waiters.resync();
        assert_eq!(*early.borrow_and_update(), 2);
        assert_eq!(*late.borrow_and_update(), 2);
    }

    /// The trim check: notices were lost when the stream's newest deleted
    /// entry is after the id the listener read from.
    #[test]
    fn stream_ids_compare_by_time_then_sequence() {
        let check = |deleted: &str, read_from: &str, lost: bool| {
            assert_eq!(
                stream_id_after(deleted, read_from),
                lost,
                "{deleted} after {read_from}"
            );
        };
        check("0-0", "0-0", false); // never trimmed, read from the start
        check("5-0", "5-0", false); // trimmed up to exactly where we read
        check("5-1", "5-0", true);
        check("6-0", "5-9", true);
        check("5-9", "6-0", false);
        check("10-0", "9-0", true); // numbers, not strings
        check("9-0", "10-0", false);
        check("7", "6-3", true); // a bare time means sequence 0
        check("7", "7-0", false);
    }
}
