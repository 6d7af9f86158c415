//! The worker's side of the blob store: parameters that came as a blob
//! reference are fetched once per device (one worker process per device)
//! and kept, least recently used first out, up to `blob_cache_bytes`;
//! results above `blob_threshold_bytes` are stored as blobs (above
//! `workflow_blob_threshold_bytes` for a workflow node with children, whose
//! result the releasing commit would otherwise copy into each); a task's
//! parameter blob is released once its final outcome is committed.
//!
//! Tasks that need the same blob at once share one fetch: the first asks
//! the store, the others wait for its bytes.

use std::collections::HashMap;
use std::sync::Arc;

use tandem_shared::blob::{BlobError, BlobRef, BlobStore};
use tandem_shared::store::{Committed, Completion, Disposition, StoreError};
use tandem_shared::{ErrorCode, TaskId};
use tokio::sync::OnceCell;

use crate::error::TaskError;

type Bytes = Arc<Vec<u8>>;

/// One cached blob, or its fetch under way.
#[derive(Debug)]
struct Slot {
    bytes: Arc<OnceCell<Bytes>>,
    /// Counted in `Lru::bytes` (set once fetched).
    counted: u64,
    last_used: u64,
}

#[derive(Debug, Default)]
struct Lru {
    slots: HashMap<String, Slot>,
    bytes: u64,
    clock: u64,
}

/// A worker's blob cache, and the parameter blobs its running tasks hold.
#[derive(Debug)]
pub(crate) struct BlobCache {
    blobs: BlobStore,
    capacity: u64,
    /// How long a result blob lives: as long as the record naming it
    /// (`result_ttl_s`, ms).
    result_ttl_ms: u64,
    /// `workflow_blob_threshold_bytes` (0: off).
    workflow_threshold: usize,
    lru: std::sync::Mutex<Lru>,
    /// The parameter blob of each task this worker ran from one, until its
    /// commit.
    held: std::sync::Mutex<HashMap<TaskId, BlobRef>>,
}

impl BlobCache {
    pub fn new(
        blobs: BlobStore,
        capacity: u64,
        result_ttl_ms: u64,
        workflow_threshold: usize,
    ) -> Self {
        Self {
            blobs,
            capacity,
            result_ttl_ms,
            workflow_threshold,
            lru: std::sync::Mutex::default(),
            held: std::sync::Mutex::default(),
        }
    }

    fn lru(&self) -> std::sync::MutexGuard<'_, Lru> {
        self.lru
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<TaskId, BlobRef>> {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The parameters of task `id`, when they came as a blob reference:
    /// the blob's bytes, from the cache or fetched. `None`: inline.
    pub async fn params(&self, id: TaskId, params: &[u8]) -> Result<Option<Bytes>, TaskError> {
        let Some((blob, bytes)) = self.fetch_ref(params, "the parameters'").await? else {
            return Ok(None);
        };
        self.held().insert(id, blob);
        Ok(Some(bytes))
    }

    /// Task `id`'s parameter blob, when its parameters are a blob
    /// reference, is held from its claim, whether the task runs or not:
    /// one that ends unrun (expired, cancelled while prefetched, refused)
    /// gives it back at its commit too.
    pub fn hold(&self, id: TaskId, params: &[u8]) {
        if let Some(Ok(blob)) = BlobRef::detect(params) {
            self.held().insert(id, blob);
        }
    }

    /// A workflow parent's result that came as a blob reference: the
    /// result's bytes, from the cache or fetched. `None`: inline. The
    /// blob's reference belongs to the parent's record, so none is held.
    pub async fn parent_result(
        &self,
        node: &str,
        result: &[u8],
    ) -> Result<Option<Bytes>, TaskError> {
        let what = format!("parent {node:?}'s result");
        Ok(self.fetch_ref(result, &what).await?.map(|(_, bytes)| bytes))
    }

    /// The blob `bytes` refer to and its contents; `None` when `bytes` are
    /// no blob reference. `what` names the bytes in errors.
    async fn fetch_ref(
        &self,
        bytes: &[u8],
        what: &str,
    ) -> Result<Option<(BlobRef, Bytes)>, TaskError> {
        let blob = match BlobRef::detect(bytes) {
            None => return Ok(None),
            Some(Err(err)) => {
                return Err(TaskError::fatal(
                    ErrorCode::BAD_PAYLOAD,
                    format!("{what} blob reference: {err}"),
                ));
            }
            Some(Ok(blob)) => blob,
        };
        let contents = self.get(&blob).await.map_err(|err| {
            let message = format!("cannot fetch {what} blob: {err}");
            if err.is_transient() {
                TaskError::new(ErrorCode::HANDLER_ERROR, message)
            } else {
                TaskError::fatal(ErrorCode::BAD_PAYLOAD, message)
            }
        })?;
        Ok(Some((blob, contents)))
    }

    /// A blob's bytes: cached, being fetched by another task, or fetched
    /// now.
    async fn get(&self, blob: &BlobRef) -> Result<Bytes, BlobError> {
        let cell = {
            let mut lru = self.lru();
            lru.clock += 1;
            let now = lru.clock;
            let slot = lru
                .slots
                .entry(blob.sha256.clone())
                .or_insert_with(|| Slot {
                    bytes: Arc::default(),
                    counted: 0,
                    last_used: now,
                });
            slot.last_used = now;
            Arc::clone(&slot.bytes)
        };
        let bytes = cell
            .get_or_try_init(|| async {
                tracing::debug!(blob = %blob.sha256, len = blob.len, "fetching a blob");
                self.blobs.get(blob).await.map(Arc::new)
            })
            .await;
        let bytes = match bytes {
            Ok(bytes) => Arc::clone(bytes),
            Err(err) => {
                self.lru().slots.remove(&blob.sha256);
                return Err(err);
            }
        };
        self.keep(&blob.sha256, bytes.len() as u64);
        Ok(bytes)
    }

    /// Counts a fetched blob in the cache and evicts the least recently
    /// used ones beyond the capacity (this one too, when it alone is
    /// larger).
    fn keep(&self, sha256: &str, len: u64) {
        let mut lru = self.lru();
        if let Some(slot) = lru.slots.get_mut(sha256)
            && slot.counted == 0
        {
            slot.counted = len.max(1);
            lru.bytes += len.max(1);
        }
        while lru.bytes > self.capacity {
            let Some(oldest) = lru
                .slots
                .iter()
                .filter(|(_, slot)| slot.counted > 0)
                .min_by_key(|(_, slot)| slot.last_used)
                .map(|(sha, _)| sha.clone())
            else {
                break;
            };
            if let Some(slot) = lru.slots.remove(&oldest) {
                lru.bytes -= slot.counted;
            }
        }
    }

    /// The size above which a result goes as a blob (`None`: never):
    /// `blob_threshold_bytes`, or for a workflow node that feeds children
    /// the smaller of it and `workflow_blob_threshold_bytes` (either one
    /// alone when the other is off).
    pub fn result_threshold(&self, feeds: u32) -> Option<usize> {
        let workflow =
            (feeds > 0 && self.workflow_threshold > 0).then_some(self.workflow_threshold);
        match (self.blobs.threshold(), workflow) {
            (Some(all), Some(node)) => Some(all.min(node)),
            (all, node) => all.or(node),
        }
    }

    /// A result above the threshold ([`Self::result_threshold`] for a task
    /// feeding `feeds` workflow children) becomes a blob, and the result its
    /// reference; smaller ones stay as they are.
    pub async fn result(&self, result: Vec<u8>, feeds: u32) -> Result<Vec<u8>, TaskError> {
        match self.result_threshold(feeds) {
            Some(threshold) if result.len() > threshold => {}
            _ => return Ok(result),
        }
        let blob = self
            .blobs
            .put(&result, self.result_ttl_ms)
            .await
            .map_err(|err| {
                TaskError::new(
                    ErrorCode::HANDLER_ERROR,
                    format!("cannot store the result as a blob: {err}"),
                )
            })?;
        Ok(blob.encode())
    }

    /// After a commit: a task whose outcome is now final gives back its
    /// parameter blob (in the background; the blob's TTL is the backstop
    /// when that fails). A retry or a hand-back keeps it for the next
    /// attempt, wherever that runs, and a dead letter keeps it for its
    /// requeue (a purged or trimmed one leaves it to the blob's TTL); so
    /// does a commit that changed nothing
    /// (already final: whoever ended it gave it back, see common.lua's
    /// `give_back_params`; lease lost: the task's new owner holds it).
    pub fn committed(
        self: &Arc<Self>,
        completion: &Completion,
        outcome: &Result<Committed, StoreError>,
    ) {
        let Some(blob) = self.held().remove(&completion.id) else {
            return;
        };
        // A dead letter keeps the reference with the entry's fields: `tandem
        // dlq requeue` hands them to a new entry, whose final commit gives
        // it back (releasing it here too would give it back twice).
        let final_now = matches!(completion.disposition, Disposition::Final)
            && matches!(outcome, Ok(Committed::Written | Committed::Cancelled));
        if !final_now {
            return;
        }
        let cache = Arc::clone(self);
        tokio::spawn(async move {
            if let Err(err) = cache.blobs.release(&blob).await {
                tracing::warn!(blob = %blob.sha256, "cannot release a parameter blob ({err}); it expires after blob_ttl_s");
            }
        });
    }
}
