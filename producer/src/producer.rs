//! [`Producer`]: submit tasks, wait for them, ask their status, cancel them.
//!
//! # How waiting works
//!
//! Every task a producer submits names the producer's reply stream
//! (`tandem:reply:<producer id>`) in `reply_to`. The worker that commits the
//! task appends the final record to that stream in the same atomic step. A
//! listener task per producer blocks in `XREAD` on the stream and hands each
//! notice to whoever waits for that task: a wait costs no polling, and wakes
//! within one Redis round trip of the commit.
//!
//! A waiter registers first, then reads the task's record once: a task that
//! finished before the registration is found there, one that finishes after
//! it is announced on the stream, so none is missed. Waiting for a task
//! another producer submitted listens on that producer's stream. As a safety
//! net against a lost notice (a reply stream trimmed or lost in a Redis
//! restart, a task submitted with no `reply_to` at all), a waiter also
//! re-reads the record at growing intervals (1 s, 2 s, ... 8 s).

use std::collections::HashMap;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tandem_shared::store::{CancelOutcome, Store, StoreError};
use tandem_shared::wire::TaskRecord;
use tandem_shared::{Config, Status, TaskId};
use tokio::sync::oneshot;

use crate::error::ProducerError;
use crate::outcome::TaskOutcome;
use crate::task::Task;

/// How long one blocking read of a reply stream waits before re-arming.
const LISTEN_BLOCK_MS: u64 = 5_000;
/// Notices read per round trip.
const LISTEN_COUNT: usize = 1_000;
const RECHECK_FIRST: Duration = Duration::from_secs(1);
const RECHECK_MAX: Duration = Duration::from_secs(8);

/// A connection to the queue for submitting and awaiting tasks. Cheap to
/// clone; clones share the connection and the listener.
#[derive(Clone)]
pub struct Producer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("id", &self.inner.producer_id)
            .finish_non_exhaustive()
    }
}

struct Inner {
    store: Store,
    producer_id: String,
    reply_key: String,
    default_max_attempts: u32,
    max_payload_bytes: usize,
    waiters: Mutex<Waiters>,
    /// Reply streams with a running listener, and its task.
    listeners: tokio::sync::Mutex<HashMap<String, tokio::task::JoinHandle<()>>>,
    next_waiter: AtomicU64,
}

type Waiters = HashMap<TaskId, Vec<(u64, oneshot::Sender<TaskOutcome>)>>;

impl Drop for Inner {
    fn drop(&mut self) {
        for (_, listener) in self.listeners.get_mut().drain() {
            listener.abort();
        }
    }
}

impl Producer {
    /// Connects with the given configuration.
    pub async fn connect(config: &Config) -> Result<Self, ProducerError> {
        let store = Store::connect(config)
            .await
            .map_err(|source| ProducerError::Connect {
                url: config.redis_url_redacted(),
                source,
            })?;
        let producer_id = if config.producer_id.is_empty() {
            let id = uuid::Uuid::now_v7().simple().to_string();
            format!("p-{}", &id[id.len() - 12..])
        } else {
            config.producer_id.clone()
        };
        let reply_key = store.keys().reply(&producer_id);
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                producer_id,
                reply_key,
                default_max_attempts: config.default_max_attempts,
                max_payload_bytes: config.max_payload_bytes,
                waiters: Mutex::new(HashMap::new()),
                listeners: tokio::sync::Mutex::new(HashMap::new()),
                next_waiter: AtomicU64::new(0),
            }),
        })
    }

    /// Connects with the configuration from the environment and the file
    /// named by `TANDEM_CONFIG`.
    pub async fn from_env() -> Result<Self, ProducerError> {
        Self::connect(&Config::load(None)?).await
    }

    pub fn id(&self) -> &str {
        &self.inner.producer_id
    }

    /// The queue connection underneath, for inspection.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Submits one task; returns its id once its entry is in Redis.
    pub async fn submit(&self, task: Task) -> Result<TaskId, ProducerError> {
        let mut ids = self.submit_many(vec![task]).await?;
        ids.pop().ok_or_else(|| {
            ProducerError::Store(StoreError::Protocol {
                what: "submit",
                detail: "no reply".into(),
            })
        })
    }

    /// Submits tasks in one round trip. Every task is checked first; if one
    /// is invalid, nothing is sent.
    pub async fn submit_many(&self, tasks: Vec<Task>) -> Result<Vec<TaskId>, ProducerError> {
        let inner = &self.inner;
        let tasks = tasks
            .into_iter()
            .map(|t| t.into_new_task(inner.default_max_attempts, inner.max_payload_bytes))
            .collect::<Result<Vec<_>, _>>()?;
        let submitted = inner
            .store
            .submit_many(&tasks, &inner.producer_id, Some(&inner.reply_key))
            .await?;
        submitted
            .into_iter()
            .map(|s| s.map(|s| s.id).map_err(ProducerError::from))
            .collect()
    }

    /// An awaitable handle on a task.
    pub fn handle(&self, id: TaskId) -> TaskHandle {
        TaskHandle {
            id,
            producer: self.clone(),
        }
    }

    /// Waits until the task finishes, at most `timeout`.
    pub async fn wait(&self, id: TaskId, timeout: Duration) -> Result<TaskOutcome, ProducerError> {
        match tokio::time::timeout(timeout, self.wait_forever(id)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(ProducerError::Timeout {
                id,
                waited: timeout,
            }),
        }
    }

    /// The task's current record, or `None` when no record exists.
    pub async fn record(&self, id: TaskId) -> Result<Option<TaskRecord>, ProducerError> {
        Ok(self.inner.store.find_record(&id).await?)
    }

    /// The task's current status.
    pub async fn status(&self, id: TaskId) -> Result<Status, ProducerError> {
        self.record(id)
            .await?
            .and_then(|r| r.status)
            .ok_or(ProducerError::NotFound(id))
    }

    /// Cancels a task: a queued task never starts; a running one is told to
    /// stop and ends as `cancelled`.
    pub async fn cancel(&self, id: TaskId) -> Result<CancelOutcome, ProducerError> {
        Ok(self.inner.store.cancel(&id).await?)
    }

    async fn wait_forever(&self, id: TaskId) -> Result<TaskOutcome, ProducerError> {
        let own_stream = self.inner.reply_key.clone();
        self.ensure_listener(&own_stream).await?;
        let (_waiter, notified) = self.register(id);
        let mut notified = Some(notified);
        let mut record = self.inner.store.find_record(&id).await?;
        if let Some(r) = &record
            && !r.is_terminal()
            && let Some(foreign) = r.reply_to.as_ref().filter(|k| **k != own_stream)
            && self.inner.store.keys().is_reply(foreign)
        {
            // Another producer's task: listen on its stream too, then look
            // again, in case it finished before the listener started.
            self.ensure_listener(foreign).await?;
            record = self.inner.store.find_record(&id).await?;
        }
        let mut recheck = RECHECK_FIRST;
        loop {
            match record.take() {
                None => return Err(ProducerError::NotFound(id)),
                Some(r) if r.is_terminal() => return self.complete(id, r).await,
                Some(_) => {}
            }
            let notice = async {
                match notified.as_mut() {
                    Some(rx) => rx.await.ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                outcome = notice => match outcome {
                    Some(outcome) => return Ok(outcome),
                    // The notice could not be turned into an outcome; the
                    // record read below decides.
                    None => notified = None,
                },
                () = tokio::time::sleep(recheck) => recheck = (recheck * 2).min(RECHECK_MAX),
            }
            record = self.inner.store.find_record(&id).await?;
        }
    }

    /// Turns a final record into an outcome, fetching a left-out result.
    async fn complete(
        &self,
        id: TaskId,
        mut record: TaskRecord,
    ) -> Result<TaskOutcome, ProducerError> {
        if record.result_left_out()
            && let Some(class) = record.class
        {
            record.result = self.inner.store.result_blob(class, &id).await?;
        }
        TaskOutcome::from_record(id, record).ok_or(ProducerError::NotFound(id))
    }

    fn register(&self, id: TaskId) -> (WaiterGuard, oneshot::Receiver<TaskOutcome>) {
        let (tx, rx) = oneshot::channel();
        let token = self.inner.next_waiter.fetch_add(1, Ordering::Relaxed);
        lock(&self.inner.waiters)
            .entry(id)
            .or_default()
            .push((token, tx));
        let guard = WaiterGuard {
            inner: Arc::downgrade(&self.inner),
            id,
            token,
        };
        (guard, rx)
    }

    async fn ensure_listener(&self, stream: &str) -> Result<(), ProducerError> {
        let mut listeners = self.inner.listeners.lock().await;
        if listeners.get(stream).is_some_and(|l| !l.is_finished()) {
            return Ok(());
        }
        // Start from the newest notice now: older ones are covered by the
        // record check every waiter makes after registering.
        let start = self.inner.store.last_entry_id(stream).await?;
        let task = tokio::spawn(listen(
            Arc::downgrade(&self.inner),
            self.inner.store.clone(),
            stream.to_owned(),
            start,
        ));
        listeners.insert(stream.to_owned(), task);
        Ok(())
    }
}

/// Removes its waiter when the wait ends, however it ends.
struct WaiterGuard {
    inner: Weak<Inner>,
    id: TaskId,
    token: u64,
}

impl Drop for WaiterGuard {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.upgrade() {
            let mut waiters = lock(&inner.waiters);
            if let Some(list) = waiters.get_mut(&self.id) {
                list.retain(|(token, _)| *token != self.token);
                if list.is_empty() {
                    waiters.remove(&self.id);
                }
            }
        }
    }
}

fn lock(waiters: &Mutex<Waiters>) -> std::sync::MutexGuard<'_, Waiters> {
    // Every critical section is a single map operation; a panic inside one
    // cannot leave the map inconsistent.
    waiters
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Reads one reply stream and hands notices to waiters until the producer
/// is dropped.
async fn listen(inner: Weak<Inner>, store: Store, stream: String, mut last_id: String) {
    let mut conn = None;
    let mut backoff = Duration::from_millis(50);
    loop {
        let reader = match &mut conn {
            Some(c) => c,
            None => match store.blocking_connection(LISTEN_BLOCK_MS).await {
                Ok(c) => conn.insert(c),
                Err(err) => {
                    tracing::warn!("reply listener cannot connect: {err}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
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
        let Some(inner) = inner.upgrade() else { return };
        match read {
            Ok(streams) => {
                backoff = Duration::from_millis(50);
                for (_, entries) in streams {
                    for (entry_id, fields) in entries {
                        last_id = entry_id;
                        deliver(&inner, &store, &fields).await;
                    }
                }
            }
            Err(err) => {
                tracing::warn!("reply listener read failed: {err}; reconnecting");
                conn = None;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

async fn deliver(inner: &Inner, store: &Store, fields: &tandem_shared::wire::Fields) {
    let mut record =
        TaskRecord::from_fields(fields.iter().map(|(k, v)| (k.as_slice(), v.as_slice())));
    let Some(id) = record.id else { return };
    let senders = match lock(&inner.waiters).remove(&id) {
        Some(senders) if !senders.is_empty() => senders,
        _ => return,
    };
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
    for (_, sender) in senders {
        let _ = sender.send(outcome.clone());
    }
}

/// An awaitable task: `handle.await` waits without a time limit.
#[derive(Debug, Clone)]
pub struct TaskHandle {
    id: TaskId,
    producer: Producer,
}

impl TaskHandle {
    pub fn id(&self) -> TaskId {
        self.id
    }

    pub async fn wait(&self, timeout: Duration) -> Result<TaskOutcome, ProducerError> {
        self.producer.wait(self.id, timeout).await
    }

    pub async fn status(&self) -> Result<Status, ProducerError> {
        self.producer.status(self.id).await
    }

    pub async fn cancel(&self) -> Result<CancelOutcome, ProducerError> {
        self.producer.cancel(self.id).await
    }
}

impl IntoFuture for TaskHandle {
    type Output = Result<TaskOutcome, ProducerError>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move { self.producer.wait_forever(self.id).await })
    }
}
