//! [`Producer`]: submit tasks, wait for them, ask their status, cancel them.
//!
//! The reply listener and the waiter bookkeeping live in `listener.rs`,
//! [`TaskHandle`] in `handle.rs`.
//!
//! # How waiting works
//!
//! A producer has one reply stream per class, under the class's hash tag
//! (`tandem:{<class>}:reply:<producer id>`), and every task it submits names
//! the stream of its own class in `reply_to`. The worker that commits the
//! task appends the final record to that stream in the same atomic step
//! (which, on Redis Cluster, may only touch keys of the task's slot). A
//! listener task per reply stream blocks in `XREAD` on it and hands each
//! notice to whoever waits for that task: a wait costs no polling, and wakes
//! within one Redis round trip of the commit. A producer listens only on the
//! streams of classes it submitted to or waits on.
//!
//! A waiter registers first, then reads the task's record once: a task that
//! finished before the registration is found there, one that finishes after
//! it is announced on the stream, so none is missed. A listener that started
//! after that read (the first wait on a class) may have missed a notice, so
//! the waiter then reads the record once more. [`Producer::submit_handle`]
//! starts the listeners and registers before it submits, so the common
//! "submit, then await" costs no read at all. Waiting for a task another
//! producer submitted listens on that producer's stream of the task's class.
//!
//! Notices can be lost only when the listener's connection broke (Redis
//! restarted) or the reply stream was trimmed past an unread notice (the
//! listener fell `reply_maxlen` behind). The listener notices both and tells
//! every waiter to re-read its record once. A task submitted without a
//! `reply_to` (a raw submission) has no notices at all; its waiter re-reads
//! the record at growing intervals (1 s, 2 s, ... 8 s).
//!
//! All calls of one producer share one multiplexed connection. A request
//! future left idle after its first poll (a wait in a `FuturesUnordered` the
//! caller stopped polling) keeps its slot in the connection's request queue;
//! the queue has 8,192 slots, so keep waits polled (spawn them, as
//! `tandem demo` does) when you hold more than that.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tandem_shared::blob::{BlobRef, BlobStore};
use tandem_shared::flow::{LimitTarget, PauseTarget, Rate};
use tandem_shared::kind::model_kinds::memory_for_model;
use tandem_shared::signature::Signer;
use tandem_shared::store::{
    self, CancelOutcome, ModelArch, ModelStoreError, Store, StoreError, Submitted,
};
use tandem_shared::wire::{NewTask, TaskRecord};
use tandem_shared::{Class, Config, Status, TaskId};

use crate::error::ProducerError;
use crate::handle::{TaskHandle, within};
use crate::listener::{self, Listener, Registration, Waiters};
use crate::outcome::TaskOutcome;
use crate::task::Task;

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
    /// This producer's reply stream of each class, by `Class::index()`.
    reply_keys: Vec<String>,
    default_max_attempts: u32,
    max_payload_bytes: usize,
    /// Who waits for which task, and the resync generation; shared with
    /// the listeners.
    waiters: Arc<Waiters>,
    /// Reply streams with a running listener, and that listener.
    listeners: tokio::sync::Mutex<HashMap<String, Listener>>,
    /// How many listeners have found where to start reading; a listener's
    /// number tells a waiter whether it started after the waiter read.
    listeners_started: AtomicU64,
    /// How long a call keeps retrying while Redis is unreachable.
    reconnect_timeout: Duration,
    /// `redis_url` without its password, for messages.
    redis_url: String,
    /// Signs every task when a signing key is configured.
    signer: Option<Signer>,
    /// `train` tasks go to the heavy class whatever their model.
    train_on_primary: bool,
    /// Where parameters above `blob_threshold_bytes` go, and results
    /// that came back as a blob reference are read from.
    blobs: BlobStore,
    /// Largest blob this producer stores (`max_blob_bytes`).
    max_blob_bytes: u64,
}

impl Inner {
    /// This producer's reply stream for tasks of `class`.
    fn reply_key(&self, class: Class) -> &str {
        &self.reply_keys[class.index()]
    }

    /// Runs `op` until it succeeds, fails for a reason other than the
    /// connection, or Redis stayed unreachable (or not ready: restarting,
    /// loading its data) for `reconnect_timeout`. Every operation retried
    /// here is safe to repeat: reads, cancels (a second cancel finds the
    /// first one's work done) and submits (see [`Producer::send`]).
    async fn retry<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        store::retry_connection(self.reconnect_timeout, &self.redis_url, op).await
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        for (_, listener) in self.listeners.get_mut().drain() {
            listener.task.abort();
        }
    }
}

impl Producer {
    /// Connects with the given configuration. While Redis is unreachable or
    /// not ready (not started yet, restarting, loading its data), connecting
    /// and loading the scripts are retried for up to `reconnect_timeout_ms`,
    /// as every later call is.
    pub async fn connect(config: &Config) -> Result<Self, ProducerError> {
        let store =
            Store::connect_retrying(config)
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
        let reply_keys = Class::ALL
            .iter()
            .map(|&class| store.keys().reply(class, &producer_id))
            .collect();
        let blobs = BlobStore::open(store.clone(), config)?;
        Ok(Self {
            inner: Arc::new(Inner {
                blobs,
                max_blob_bytes: config.max_blob_bytes,
                store,
                producer_id,
                reply_keys,
                default_max_attempts: config.default_max_attempts,
                max_payload_bytes: config.max_payload_bytes,
                waiters: Waiters::new(),
                listeners: tokio::sync::Mutex::new(HashMap::new()),
                listeners_started: AtomicU64::new(0),
                reconnect_timeout: Duration::from_millis(config.reconnect_timeout_ms),
                redis_url: config.redis_url_redacted(),
                signer: Signer::new(config.signing_key.expose()),
                train_on_primary: config.train_on_primary,
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

    /// Runs a store call, retried while Redis is unreachable or not ready
    /// for up to `reconnect_timeout_ms`, as every producer call is. Only
    /// calls that are safe to repeat belong here.
    pub(crate) async fn retrying<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        self.inner.retry(op).await
    }

    /// The signing key's signer, when one is configured.
    pub(crate) fn signer(&self) -> Option<&Signer> {
        self.inner.signer.as_ref()
    }

    /// The queue connection underneath, for inspection.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Submits one task; returns its id once its entry is in Redis.
    pub async fn submit(&self, task: Task) -> Result<TaskId, ProducerError> {
        self.submit_many(vec![task])
            .await?
            .pop()
            .ok_or_else(no_reply)
    }

    /// Submits tasks in one round trip. Every task is checked first; if one
    /// is invalid, nothing is sent.
    ///
    /// `infer` tasks with no class set go to their model's registered
    /// class (`train` ones too when `train_on_primary` is off; see
    /// [`Task`]): their models are looked up first,
    /// once per distinct model, all lookups in flight together, so a batch
    /// costs one more round trip, not one per task. A model that is not
    /// registered leaves the kind's class; the worker then fails the task
    /// with `MODEL_NOT_FOUND`.
    pub async fn submit_many(&self, tasks: Vec<Task>) -> Result<Vec<TaskId>, ProducerError> {
        let tasks = self.prepare(tasks).await?;
        self.send(&tasks)
            .await?
            .into_iter()
            .map(|s| s.map(|s| s.id).map_err(ProducerError::from))
            .collect()
    }

    /// Sends prepared tasks, retrying while Redis is unreachable or not
    /// ready. Each task names this producer's reply stream of its class.
    ///
    /// A call that failed on the connection may have gone through before
    /// its reply was lost, so a retry must not submit anything twice. It
    /// cannot: every task carries its id, chosen here before the first
    /// try, and submit.lua creates a task only when that id has no record
    /// yet (and, with an idempotency key, only when the key names no task).
    /// A retry of a task that did go through finds its record and reports
    /// the same id with `created` false; its entry is in the stream once.
    /// This holds while the record exists: a finished task's record expires
    /// after `result_ttl_s`, far beyond `reconnect_timeout_ms`.
    async fn send(
        &self,
        tasks: &[NewTask],
    ) -> Result<Vec<Result<Submitted, StoreError>>, ProducerError> {
        let inner: &Inner = &self.inner;
        Ok(inner
            .retry(|| {
                inner.store.submit_many(tasks, &inner.producer_id, |class| {
                    Some(inner.reply_key(class))
                })
            })
            .await?)
    }

    /// Submits one task and returns an awaitable handle on it. The wait is
    /// registered before the task is sent, so awaiting the handle costs no
    /// Redis command beyond the submit.
    pub async fn submit_handle(&self, task: Task) -> Result<TaskHandle, ProducerError> {
        self.submit_handles(vec![task])
            .await?
            .pop()
            .ok_or_else(no_reply)
    }

    /// [`Producer::submit_many`], returning awaitable handles.
    pub async fn submit_handles(&self, tasks: Vec<Task>) -> Result<Vec<TaskHandle>, ProducerError> {
        let inner = &self.inner;
        let tasks = self.prepare(tasks).await?;
        for &class in Class::ALL {
            if tasks.iter().any(|t| t.class == class && t.notice) {
                self.ensure_listener(inner.reply_key(class)).await?;
            }
        }
        // A task without a notice has nothing to register for: its handle
        // waits the general way (re-reading the record).
        let mut registrations: Vec<Option<Registration>> = tasks
            .iter()
            .map(|t| t.notice.then(|| self.register(t.id)))
            .collect();
        let submitted = self.send(&tasks).await?;
        let mut handles = Vec::with_capacity(tasks.len());
        for (submitted, registration) in submitted.into_iter().zip(registrations.drain(..)) {
            let submitted = submitted?;
            // An idempotency key that named an earlier task: that task may
            // have finished already, so its handle waits the general way.
            let registration = registration.filter(|_| submitted.created);
            handles.push(TaskHandle::new(submitted.id, self.clone(), registration));
        }
        Ok(handles)
    }

    /// Checks, completes and (with a key) signs tasks before sending. Every
    /// task is checked before any model is looked up, so an invalid batch
    /// costs no round trip.
    pub(crate) async fn prepare(&self, tasks: Vec<Task>) -> Result<Vec<NewTask>, ProducerError> {
        let inner = &self.inner;
        let mut checked = Vec::with_capacity(tasks.len());
        let threshold = inner.blobs.threshold();
        for t in tasks {
            let model = t.model_deciding_class(inner.train_on_primary);
            let memory_model = t.model_deciding_memory();
            // Parameters above the blob threshold travel as a reference:
            // checked whole here, then stored once the batch checks out.
            let by_ref = threshold.is_some_and(|threshold| t.params.len() > threshold);
            if by_ref && t.params.len() as u64 > inner.max_blob_bytes {
                return Err(ProducerError::BlobTooLarge {
                    bytes: t.params.len(),
                    limit: inner.max_blob_bytes,
                });
            }
            let limit = if by_ref {
                usize::MAX
            } else {
                inner.max_payload_bytes
            };
            let task = t.into_new_task(inner.default_max_attempts, limit)?;
            checked.push((task, model, memory_model));
        }
        let names: Vec<&str> = checked
            .iter()
            .flat_map(|(_, model, memory)| [model.as_deref(), memory.as_deref()])
            .flatten()
            .collect();
        let models = self.registered_models(names).await?;
        let mut prepared = Vec::with_capacity(checked.len());
        for (mut task, model, memory_model) in checked {
            if let Some((class, _)) = model.and_then(|m| models.get(&m)) {
                task.class = *class;
            }
            if let Some(bytes) = memory_model.and_then(|m| {
                let (_, arch) = models.get(&m)?;
                memory_for_model(&task.kind, &task.params, arch)
            }) {
                task.memory_bytes = bytes;
            }
            if threshold.is_some_and(|threshold| task.params.len() > threshold) {
                let blob = inner.blobs.put(&task.params, inner.blobs.ttl_ms()).await?;
                task.params = blob.encode();
            }
            prepared.push(task);
        }
        Ok(prepared
            .into_iter()
            .map(|mut task| {
                if let Some(signer) = &inner.signer {
                    let reply_to = task.notice.then(|| inner.reply_key(task.class));
                    task.signature = Some(signer.sign(&task.signed(reply_to)));
                }
                task
            })
            .collect())
    }

    /// The registered class and architecture of each named model, looked
    /// up once per distinct name, the lookups sharing the connection
    /// concurrently (one pipelined round trip). A model that is not
    /// registered is absent, and so is one whose record is damaged (logged;
    /// the worker fails its tasks, saying why): their tasks keep the kind's
    /// class and memory estimate.
    async fn registered_models(
        &self,
        mut distinct: Vec<&str>,
    ) -> Result<HashMap<String, (Class, ModelArch)>, ProducerError> {
        distinct.sort_unstable();
        distinct.dedup();
        let lookups = distinct.into_iter().map(|name| async move {
            let model = self.inner.retry(|| self.registered_model(name)).await?;
            Ok::<_, ProducerError>(model.map(|model| (name.to_owned(), model)))
        });
        Ok(futures_util::future::try_join_all(lookups)
            .await?
            .into_iter()
            .flatten()
            .collect())
    }

    /// One model's registered class and architecture; only a failure to
    /// reach Redis is an error (and is retried).
    async fn registered_model(&self, name: &str) -> Result<Option<(Class, ModelArch)>, StoreError> {
        match self.inner.store.model_info(name).await {
            Ok(info) => Ok(info.map(|info| (info.class, info.arch))),
            Err(ModelStoreError::Store(err)) => Err(err),
            Err(err) => {
                tracing::warn!(model = name, "submitting with the kind's class: {err}");
                Ok(None)
            }
        }
    }

    /// An awaitable handle on any task.
    pub fn handle(&self, id: TaskId) -> TaskHandle {
        TaskHandle::new(id, self.clone(), None)
    }

    /// Waits until the task finishes, at most `timeout`.
    pub async fn wait(&self, id: TaskId, timeout: Duration) -> Result<TaskOutcome, ProducerError> {
        let outcome = within(id, timeout, self.wait_forever(id)).await?;
        self.resolve(outcome).await
    }

    /// The task's current record, or `None` when no record exists.
    pub async fn record(&self, id: TaskId) -> Result<Option<TaskRecord>, ProducerError> {
        Ok(self
            .inner
            .retry(|| self.inner.store.find_record(&id))
            .await?)
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
        Ok(self.inner.retry(|| self.inner.store.cancel(&id)).await?)
    }

    /// Pauses `target` fleet-wide: running tasks finish, nothing it covers
    /// starts, submitting still works. A kind is paused in every class.
    /// Returns how many classes were not paused for it before.
    pub async fn pause(&self, target: &PauseTarget) -> Result<u64, ProducerError> {
        Ok(self.inner.store.pause(target, Class::ALL).await?)
    }

    /// Resumes `target`; the tasks a paused kind held run. Returns how many
    /// classes it was paused in, and the held tasks released.
    pub async fn resume(&self, target: &PauseTarget) -> Result<(u64, u64), ProducerError> {
        Ok(self.inner.store.resume(target, Class::ALL).await?)
    }

    /// Sets a fleet-wide rate limit: at most `rate` starts of `target`'s
    /// tasks, in each class (see [`tandem_shared::flow`]).
    pub async fn set_rate_limit(
        &self,
        target: &LimitTarget,
        rate: Rate,
    ) -> Result<(), ProducerError> {
        Ok(self.inner.store.set_limit(target, rate, Class::ALL).await?)
    }

    /// Removes a rate limit; returns how many classes had it.
    pub async fn remove_rate_limit(&self, target: &LimitTarget) -> Result<u64, ProducerError> {
        Ok(self.inner.store.remove_limit(target, Class::ALL).await?)
    }

    /// Waits for a task with no wait registered yet: registers, reads the
    /// record, and waits for the notice unless the task has finished.
    pub(crate) async fn wait_forever(&self, id: TaskId) -> Result<TaskOutcome, ProducerError> {
        let registration = self.register(id);
        let listeners_before = self.inner.listeners_started.load(Ordering::SeqCst);
        let mut record = self
            .inner
            .retry(|| self.inner.store.find_record(&id))
            .await?;
        let mut periodic = false;
        if let Some(r) = &record
            && !r.is_terminal()
        {
            // Workers notify only a reply stream of the task's own class.
            match (r.class, r.reply_to.as_deref()) {
                (Some(class), Some(stream))
                    if self.inner.store.keys().is_reply_for(class, stream) =>
                {
                    // Ours or another producer's stream. A listener that
                    // started after the read above may have missed the
                    // notice: look again, in case it finished meanwhile.
                    if self.ensure_listener(stream).await? > listeners_before {
                        record = self
                            .inner
                            .retry(|| self.inner.store.find_record(&id))
                            .await?;
                    }
                }
                _ => periodic = true,
            }
        }
        match record {
            None => Err(ProducerError::NotFound(id)),
            Some(r) if r.is_terminal() => self.complete(id, r).await,
            Some(_) => self.await_registered(id, registration, periodic).await,
        }
    }

    /// Waits for the notice of a registered task; re-reads its record when
    /// notices may have been lost, or periodically when it has none.
    pub(crate) async fn await_registered(
        &self,
        id: TaskId,
        registration: Registration,
        mut periodic: bool,
    ) -> Result<TaskOutcome, ProducerError> {
        let Registration {
            guard: _guard,
            receiver,
        } = registration;
        let mut receiver = Some(receiver);
        let mut resync = self.inner.waiters.subscribe_resync();
        let mut recheck = RECHECK_FIRST;
        loop {
            let notice = async {
                match receiver.as_mut() {
                    Some(rx) => rx.await.ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                outcome = notice => match outcome {
                    Some(outcome) => return Ok(outcome),
                    // The listener could not turn the notice into an outcome:
                    // the record decides, re-read until final.
                    None => {
                        receiver = None;
                        periodic = true;
                    }
                },
                _ = resync.changed() => {}
                () = tokio::time::sleep(recheck), if periodic => recheck = (recheck * 2).min(RECHECK_MAX),
            }
            match self
                .inner
                .retry(|| self.inner.store.find_record(&id))
                .await?
            {
                None => return Err(ProducerError::NotFound(id)),
                Some(r) if r.is_terminal() => return self.complete(id, r).await,
                Some(_) => {}
            }
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
            record.result = self
                .inner
                .retry(|| self.inner.store.result_blob(class, &id))
                .await?;
        }
        TaskOutcome::from_record(id, record).ok_or(ProducerError::NotFound(id))
    }

    /// A result that came back as a blob reference, replaced by the blob's
    /// bytes (a result inline stays as it is).
    pub(crate) async fn resolve(
        &self,
        mut outcome: TaskOutcome,
    ) -> Result<TaskOutcome, ProducerError> {
        if let Some(bytes) = self
            .resolve_result(outcome.record.result.as_deref())
            .await?
        {
            outcome.record.result = Some(bytes);
        }
        Ok(outcome)
    }

    /// The bytes behind a result that is a blob reference; `None` for any
    /// other result.
    pub async fn resolve_result(
        &self,
        result: Option<&[u8]>,
    ) -> Result<Option<Vec<u8>>, ProducerError> {
        match result.and_then(BlobRef::detect) {
            None => Ok(None),
            Some(blob) => {
                let blob = blob.map_err(tandem_shared::blob::BlobError::from)?;
                Ok(Some(self.inner.blobs.get(&blob).await?))
            }
        }
    }

    /// The blob store this producer puts large parameters in.
    pub fn blobs(&self) -> &BlobStore {
        &self.inner.blobs
    }

    /// Sends a prepared workflow (see `workflow.rs`) and returns a handle
    /// on each node, in the workflow's order, registered before the send
    /// as [`Producer::submit_handles`] does; false when a workflow with its
    /// id existed already (a retried submit). Retried while Redis is
    /// unreachable: the script creates nothing when the id exists.
    pub(crate) async fn send_workflow(
        &self,
        workflow: &tandem_shared::store::NewWorkflow,
    ) -> Result<(bool, Vec<TaskHandle>), ProducerError> {
        let inner: &Inner = &self.inner;
        for &class in Class::ALL {
            if workflow.nodes.iter().any(|n| n.task.class == class) {
                self.ensure_listener(inner.reply_key(class)).await?;
            }
        }
        let registrations: Vec<Registration> = workflow
            .nodes
            .iter()
            .map(|n| self.register(n.task.id))
            .collect();
        let created = inner
            .retry(|| {
                inner
                    .store
                    .submit_workflow(workflow, &inner.producer_id, |class| {
                        Some(inner.reply_key(class))
                    })
            })
            .await?;
        let handles = workflow
            .nodes
            .iter()
            .zip(registrations)
            .map(|(n, registration)| {
                TaskHandle::new(n.task.id, self.clone(), created.then_some(registration))
            })
            .collect();
        Ok((created, handles))
    }

    fn register(&self, id: TaskId) -> Registration {
        self.inner.waiters.register(id)
    }

    /// Starts a listener on `stream` unless one runs; returns the running
    /// listener's number (see `Inner::listeners_started`).
    async fn ensure_listener(&self, stream: &str) -> Result<u64, ProducerError> {
        let mut listeners = self.inner.listeners.lock().await;
        if let Some(listener) = listeners.get(stream)
            && !listener.task.is_finished()
        {
            return Ok(listener.number);
        }
        // Start from the newest notice now: older ones are covered by the
        // record check every waiter makes after registering.
        let start = self
            .inner
            .retry(|| self.inner.store.last_entry_id(stream))
            .await?;
        // Numbered once the start is known: a waiter that read its record
        // before this number was taken sees every notice written after.
        let number = self.inner.listeners_started.fetch_add(1, Ordering::SeqCst) + 1;
        let task = listener::spawn(
            Arc::downgrade(&self.inner.waiters),
            self.inner.store.clone(),
            stream.to_owned(),
            start,
        );
        listeners.insert(stream.to_owned(), Listener { task, number });
        Ok(number)
    }
}

fn no_reply() -> ProducerError {
    ProducerError::Store(StoreError::Protocol {
        what: "submit",
        detail: "no reply".into(),
    })
}
