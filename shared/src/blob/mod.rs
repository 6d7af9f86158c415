//! The blob store: task parameters and results too large to travel in a
//! stream entry or a record, stored once by content (SHA-256) and passed
//! by reference ([`BlobRef`]).
//!
//! - [`reference`]: the reference's wire form and its detection.
//! - [`BlobStore`]: put, get, stat, release; the bytes go to Redis (the
//!   default), a directory on a shared volume, or an S3-compatible object
//!   store (`blob_store`), always in chunks of `blob_chunk_bytes`, so that
//!   neither side holds a second copy of a blob.
//!
//! Whatever the backend, each blob's bookkeeping lives in Redis under its
//! own hash tag (`tandem:{blob:<sha256>}:`): its length once complete
//! (`meta`), its reference count (`refs`) and, with the Redis backend, its
//! bytes (`data`). `shared/lua/blob.lua` changes them atomically. A
//! producer's put is one reference (one per task); the worker releases it
//! once the task's final outcome is committed (a dead letter keeps it for
//! its requeue), a cancelling script hands the reference of a task no
//! worker holds to the class's `blobs:release` list
//! ([`BlobStore::drain_releases`]), and the last release deletes the blob.
//! A result blob is one reference that lives as long as the task's record
//! (`result_ttl_s`). Every key carries a TTL, raised (never lowered) by
//! each reference, so that a reference nobody releases (a producer that
//! died mid-submit, a purged dead letter, a release that failed) costs
//! nothing after `blob_ttl_s`. An object store's objects have no TTL of
//! their own: `tandem blob sweep` deletes those whose Redis keys are gone.
//!
//! # Example
//!
//! ```no_run
//! use tandem_shared::{blob::BlobStore, config::Config, store::Store};
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let config = Config::load(None)?;
//! let blobs = BlobStore::open(Store::connect(&config).await?, &config)?;
//! let blob = blobs.put(&vec![0u8; 40 << 20], blobs.ttl_ms()).await?;
//! assert_eq!(blobs.get(&blob).await?.len(), 40 << 20);
//! blobs.release(&blob).await?;
//! # Ok(()) }
//! ```

pub mod reference;

use std::path::Path;
use std::sync::{Arc, LazyLock};

use futures_util::StreamExt;
use object_store::ObjectStore;
use object_store::ObjectStoreExt;
use object_store::path::Path as ObjectPath;
use redis::{AsyncCommands, Script};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

pub use reference::{BadRef, BlobRef, check_digest};

use crate::config::Config;
use crate::store::Store;

/// `shared/lua/blob.lua`: reference counts and TTLs, one blob at a time.
static BLOB_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../../lua/blob.lua")));

/// Object stores take multipart uploads in parts of at least 5 MiB (S3's
/// rule); a smaller blob goes in one request.
const MIN_PART_BYTES: usize = 5 << 20;

/// Why a blob operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob store: redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("blob store: {0}")]
    Objects(#[from] object_store::Error),
    #[error("blob store: {path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    BadRef(#[from] BadRef),
    /// The blob is not (or no longer) in the store: expired, released by
    /// its last holder, or never uploaded.
    #[error("blob {sha256} is not in the blob store (expired after blob_ttl_s, or never stored)")]
    Missing { sha256: String },
    /// The bytes read back are not the ones the reference names.
    #[error("blob {sha256}: read back {detail}: the blob store holds damaged data")]
    Damaged { sha256: String, detail: String },
    #[error("setting blob_store: {0}")]
    Config(String),
}

impl BlobError {
    /// True when another attempt may succeed (the store was unreachable).
    pub fn is_transient(&self) -> bool {
        match self {
            BlobError::Redis(err) => {
                err.is_io_error() || err.is_timeout() || err.is_connection_dropped()
            }
            BlobError::Objects(_) => true,
            _ => false,
        }
    }
}

/// Where blobs' bytes go.
#[derive(Debug, Clone)]
enum Backend {
    /// In Redis, one string per blob, written and read in chunks.
    Redis,
    /// In an object store (a directory, S3): one object per blob, named by
    /// its digest under `prefix`.
    Objects {
        store: Arc<dyn ObjectStore>,
        prefix: ObjectPath,
        /// `blob_store` as configured, for messages.
        url: String,
    },
}

/// What the store knows of one blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobStat {
    pub sha256: String,
    pub len: u64,
    /// Holders of a reference: tasks waiting or running with it as their
    /// parameters, records with it as their result.
    pub refs: i64,
    /// Until it expires unless referenced again (ms; `None`: no TTL).
    pub ttl_ms: Option<u64>,
    /// Where its bytes are: `redis` or the `blob_store` URL.
    pub backend: String,
}

/// The blob store of one deployment.
#[derive(Clone)]
pub struct BlobStore {
    store: Store,
    backend: Backend,
    chunk_bytes: usize,
    ttl_ms: u64,
    threshold: usize,
}

impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStore")
            .field("backend", &self.backend_name())
            .field("chunk_bytes", &self.chunk_bytes)
            .field("ttl_ms", &self.ttl_ms)
            .field("threshold", &self.threshold)
            .finish()
    }
}

impl BlobStore {
    /// The blob store `config` describes, over `store`'s connection (which
    /// keeps every blob's bookkeeping, and its bytes with the Redis
    /// backend).
    pub fn open(store: Store, config: &Config) -> Result<Self, BlobError> {
        Ok(Self {
            store,
            backend: backend(config)?,
            chunk_bytes: config.blob_chunk_bytes.max(1),
            ttl_ms: config.blob_ttl_s.saturating_mul(1000),
            threshold: config.blob_threshold_bytes,
        })
    }

    /// Parameters and results larger than this travel as blobs (`None`:
    /// never).
    pub fn threshold(&self) -> Option<usize> {
        (self.threshold > 0).then_some(self.threshold)
    }

    /// How long a blob nobody references again lives (`blob_ttl_s`, ms).
    pub fn ttl_ms(&self) -> u64 {
        self.ttl_ms
    }

    fn backend_name(&self) -> &str {
        match &self.backend {
            Backend::Redis => "redis",
            Backend::Objects { url, .. } => url,
        }
    }

    fn object_path(prefix: &ObjectPath, sha256: &str) -> ObjectPath {
        prefix.clone().join(sha256)
    }

    /// Runs `blob.lua`'s `op` on the blob's keys.
    async fn script(
        &self,
        sha256: &str,
        op: &str,
        ttl_ms: u64,
        len: u64,
        partial: Option<&str>,
    ) -> Result<i64, BlobError> {
        let base = self.store.keys().blob(sha256);
        let mut invocation = BLOB_SCRIPT.prepare_invoke();
        invocation
            .key(format!("{base}meta"))
            .key(format!("{base}refs"))
            .key(format!("{base}data"));
        if let Some(partial) = partial {
            invocation.key(partial);
        }
        invocation.arg(op).arg(ttl_ms).arg(len);
        Ok(invocation
            .invoke_async(&mut self.store.connection())
            .await?)
    }

    /// Stores `bytes` (unless the store holds them already) and takes one
    /// reference to them, alive for at least `ttl_ms`.
    pub async fn put(&self, bytes: &[u8], ttl_ms: u64) -> Result<BlobRef, BlobError> {
        let blob = BlobRef::of(bytes);
        if self
            .script(&blob.sha256, "ref", ttl_ms, blob.len, None)
            .await?
            == 1
        {
            return Ok(blob);
        }
        let chunks = bytes.chunks(self.chunk_bytes).map(Ok::<_, BlobError>);
        self.upload(&blob, ttl_ms, futures_util::stream::iter(chunks))
            .await?;
        Ok(blob)
    }

    /// Stores the file at `path`, read twice in chunks (once for its
    /// digest, once to upload it), never whole in memory; one reference.
    pub async fn put_file(&self, path: &Path, ttl_ms: u64) -> Result<BlobRef, BlobError> {
        let file_error = |source| BlobError::File {
            path: path.display().to_string(),
            source,
        };
        let mut file = tokio::fs::File::open(path).await.map_err(file_error)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; self.chunk_bytes];
        let mut len = 0u64;
        loop {
            let n = file.read(&mut buf).await.map_err(file_error)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            len += n as u64;
        }
        let blob = BlobRef {
            sha256: hex::encode(hasher.finalize()),
            len,
        };
        if self
            .script(&blob.sha256, "ref", ttl_ms, blob.len, None)
            .await?
            == 1
        {
            return Ok(blob);
        }
        let file = tokio::fs::File::open(path).await.map_err(file_error)?;
        let chunk_bytes = self.chunk_bytes;
        let chunks = futures_util::stream::unfold(Some(file), move |file| async move {
            let mut file = file?;
            let mut chunk = Vec::with_capacity(chunk_bytes);
            match (&mut file)
                .take(chunk_bytes as u64)
                .read_to_end(&mut chunk)
                .await
            {
                Ok(0) => None,
                Ok(_) => Some((Ok(chunk), Some(file))),
                Err(source) => Some((Err(source), None)),
            }
        })
        .map(|chunk| chunk.map_err(file_error));
        self.upload(&blob, ttl_ms, chunks).await?;
        Ok(blob)
    }

    /// Writes the blob's bytes, chunk by chunk, then marks it complete.
    async fn upload<C: AsRef<[u8]>>(
        &self,
        blob: &BlobRef,
        ttl_ms: u64,
        chunks: impl futures_util::Stream<Item = Result<C, BlobError>>,
    ) -> Result<(), BlobError> {
        let mut chunks = std::pin::pin!(chunks);
        match &self.backend {
            Backend::Redis => {
                // Appended to a key of its own, renamed once complete: a
                // reader never sees half a blob, and an upload that dies
                // half-way leaves a key that expires.
                let partial = format!(
                    "{}partial:{}",
                    self.store.keys().blob(&blob.sha256),
                    uuid::Uuid::now_v7()
                );
                let mut conn = self.store.connection();
                let mut first = true;
                while let Some(chunk) = chunks.next().await {
                    let () = redis::pipe()
                        .cmd("APPEND")
                        .arg(&partial)
                        .arg(chunk?.as_ref())
                        .ignore()
                        .cmd("PEXPIRE")
                        .arg(&partial)
                        .arg(ttl_ms)
                        .ignore()
                        .query_async(&mut conn)
                        .await?;
                    first = false;
                }
                // An empty blob has no chunk: its data key is never made.
                let partial = (!first).then_some(partial.as_str());
                self.script(&blob.sha256, "stored", ttl_ms, blob.len, partial)
                    .await?;
            }
            Backend::Objects { store, prefix, .. } => {
                let path = Self::object_path(prefix, &blob.sha256);
                if blob.len < MIN_PART_BYTES as u64 {
                    let mut bytes = Vec::with_capacity(blob.len as usize);
                    while let Some(chunk) = chunks.next().await {
                        bytes.extend_from_slice(chunk?.as_ref());
                    }
                    store.put(&path, bytes.into()).await?;
                } else {
                    let upload = store.put_multipart(&path).await?;
                    let mut writer = object_store::WriteMultipart::new_with_chunk_size(
                        upload,
                        self.chunk_bytes.max(MIN_PART_BYTES),
                    );
                    while let Some(chunk) = chunks.next().await {
                        writer.wait_for_capacity(2).await?;
                        writer.write(chunk?.as_ref());
                    }
                    writer.finish().await?;
                }
                self.script(&blob.sha256, "stored", ttl_ms, blob.len, None)
                    .await?;
            }
        }
        Ok(())
    }

    /// The blob's bytes, read in chunks into one buffer and checked against
    /// its digest.
    pub async fn get(&self, blob: &BlobRef) -> Result<Vec<u8>, BlobError> {
        check_digest(&blob.sha256)?;
        let missing = || BlobError::Missing {
            sha256: blob.sha256.clone(),
        };
        let base = self.store.keys().blob(&blob.sha256);
        let mut conn = self.store.connection();
        let stored: Option<u64> = conn.get(format!("{base}meta")).await?;
        let len = stored.ok_or_else(missing)?;
        let damaged = |detail: String| BlobError::Damaged {
            sha256: blob.sha256.clone(),
            detail,
        };
        if len != blob.len {
            return Err(damaged(format!("a length of {len}, not {}", blob.len)));
        }
        let capacity = usize::try_from(len).map_err(|_| damaged(format!("{len} bytes")))?;
        let mut bytes = Vec::with_capacity(capacity);
        match &self.backend {
            Backend::Redis => {
                let data = format!("{base}data");
                while (bytes.len() as u64) < len {
                    let start = bytes.len();
                    let end = (start + self.chunk_bytes).min(capacity) - 1;
                    let chunk: Vec<u8> = redis::cmd("GETRANGE")
                        .arg(&data)
                        .arg(start)
                        .arg(end)
                        .query_async(&mut conn)
                        .await?;
                    if chunk.is_empty() {
                        return Err(missing());
                    }
                    bytes.extend_from_slice(&chunk);
                }
            }
            Backend::Objects { store, prefix, .. } => {
                let path = Self::object_path(prefix, &blob.sha256);
                let mut stream = match store.get(&path).await {
                    Ok(got) => got.into_stream(),
                    Err(object_store::Error::NotFound { .. }) => return Err(missing()),
                    Err(err) => return Err(err.into()),
                };
                while let Some(chunk) = stream.next().await {
                    bytes.extend_from_slice(&chunk?);
                }
            }
        }
        if bytes.len() as u64 != len {
            return Err(damaged(format!("{} bytes, not {len}", bytes.len())));
        }
        let digest = hex::encode(Sha256::digest(&bytes));
        if digest != blob.sha256 {
            return Err(damaged(format!("bytes whose SHA-256 is {digest}")));
        }
        Ok(bytes)
    }

    /// What the store knows of a blob, `None` when it holds no such blob.
    pub async fn stat(&self, sha256: &str) -> Result<Option<BlobStat>, BlobError> {
        check_digest(sha256)?;
        let base = self.store.keys().blob(sha256);
        let mut conn = self.store.connection();
        let (len, refs, ttl): (Option<u64>, Option<i64>, i64) = redis::pipe()
            .get(format!("{base}meta"))
            .get(format!("{base}refs"))
            .pttl(format!("{base}meta"))
            .query_async(&mut conn)
            .await?;
        Ok(len.map(|len| BlobStat {
            sha256: sha256.to_owned(),
            len,
            refs: refs.unwrap_or(0),
            ttl_ms: u64::try_from(ttl).ok(),
            backend: self.backend_name().to_owned(),
        }))
    }

    /// Gives back one reference; the last one deletes the blob. True when
    /// it was deleted.
    pub async fn release(&self, blob: &BlobRef) -> Result<bool, BlobError> {
        check_digest(&blob.sha256)?;
        let deleted = self.script(&blob.sha256, "release", 0, 0, None).await? == 1;
        if deleted && let Backend::Objects { store, prefix, .. } = &self.backend {
            match store.delete(&Self::object_path(prefix, &blob.sha256)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(err) => return Err(err.into()),
            }
        }
        Ok(deleted)
    }

    /// Releases the parameter blob references that tasks of `class` gave
    /// back when they ended without a worker (`<class base>blobs:release`,
    /// pushed by common.lua's `give_back_params`), at most `limit` of
    /// them. Each element is popped (`LPOP`: one worker gets it) before it
    /// is released, so none is released twice; one whose release fails
    /// after the pop is lost, and the blob's TTL is its backstop. One
    /// older than `blob_ttl_s` is dropped unreleased: its reference has
    /// expired, and the blob, if it exists, may be a later put's.
    pub async fn drain_releases(
        &self,
        class: crate::Class,
        limit: usize,
    ) -> Result<Drained, BlobError> {
        let key = self.store.keys().blob_releases(class);
        let mut conn = self.store.connection();
        let popped: Option<Vec<Vec<u8>>> = redis::cmd("LPOP")
            .arg(&key)
            .arg(limit.max(1))
            .query_async(&mut conn)
            .await?;
        let now = crate::clock::now_ms();
        let mut drained = Drained::default();
        for element in popped.unwrap_or_default() {
            match parse_release(&element) {
                Some((at_ms, blob)) if now.saturating_sub(at_ms) <= self.ttl_ms => {
                    match self.release(&blob).await {
                        Ok(deleted) => {
                            drained.released += 1;
                            drained.deleted += u64::from(deleted);
                        }
                        Err(err) => {
                            drained.failed += 1;
                            tracing::warn!(blob = %blob.sha256, "cannot release a given-back parameter blob ({err}); it expires after blob_ttl_s");
                        }
                    }
                }
                Some(_) => drained.stale += 1,
                None => {
                    drained.unreadable += 1;
                    tracing::warn!(key = %key, "skipping an element that is no `<ms> <blob reference>`");
                }
            }
        }
        Ok(drained)
    }

    /// With an object store: deletes the objects whose Redis keys are gone
    /// (expired after `blob_ttl_s` unreleased) and that are older than
    /// `blob_ttl_s` (so that no upload under way is taken). Returns how
    /// many went. With the Redis backend, TTLs do it all: 0.
    pub async fn sweep(&self) -> Result<u64, BlobError> {
        let Backend::Objects { store, prefix, .. } = &self.backend else {
            return Ok(0);
        };
        let mut objects = store.list(Some(prefix));
        let mut conn = self.store.connection();
        let mut swept = 0;
        let ttl = i64::try_from(self.ttl_ms).unwrap_or(i64::MAX);
        let now = crate::clock::now_ms() as i64;
        while let Some(object) = objects.next().await {
            let object = object?;
            let Some(sha256) = object.location.filename().map(str::to_owned) else {
                continue;
            };
            if check_digest(&sha256).is_err() || now - object.last_modified.timestamp_millis() < ttl
            {
                continue;
            }
            let known: bool = conn
                .exists(format!("{}meta", self.store.keys().blob(&sha256)))
                .await?;
            if !known {
                store.delete(&object.location).await?;
                swept += 1;
            }
        }
        Ok(swept)
    }
}

/// What one [`BlobStore::drain_releases`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// References released.
    pub released: u64,
    /// Of those, the last ones: the blob was deleted.
    pub deleted: u64,
    /// Older than `blob_ttl_s`: dropped unreleased.
    pub stale: u64,
    /// Not `<ms> <blob reference>`: dropped.
    pub unreadable: u64,
    /// Popped, but the release failed: left to the blob's TTL.
    pub failed: u64,
}

impl Drained {
    /// How many elements were popped.
    pub fn popped(&self) -> u64 {
        self.released + self.stale + self.unreadable + self.failed
    }
}

/// One element of a class's `blobs:release` list: when it was given back
/// (ms, Redis clock) and the reference; `None` when it is not that.
fn parse_release(element: &[u8]) -> Option<(u64, BlobRef)> {
    let space = element.iter().position(|&b| b == b' ')?;
    let at_ms = std::str::from_utf8(&element[..space]).ok()?.parse().ok()?;
    let blob = BlobRef::detect(&element[space + 1..])?.ok()?;
    Some((at_ms, blob))
}

/// The backend `blob_store` names: `redis`, a directory (`file:///path` or
/// an absolute path), or `s3://bucket[/prefix]` (endpoint from
/// `blob_s3_endpoint`, credentials and region from the usual `AWS_*`
/// variables).
fn backend(config: &Config) -> Result<Backend, BlobError> {
    let url = config.blob_store.trim();
    if url.is_empty() || url == "redis" {
        return Ok(Backend::Redis);
    }
    let bad = |message: String| BlobError::Config(message);
    if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad(format!(
                "{url:?} names no bucket (s3://bucket[/prefix])"
            )));
        }
        let mut builder = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
        let endpoint = config.blob_s3_endpoint.trim();
        if !endpoint.is_empty() {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"))
                .with_virtual_hosted_style_request(false);
        }
        if !config.blob_s3_region.is_empty() {
            builder = builder.with_region(&config.blob_s3_region);
        }
        if !config.blob_s3_access_key_id.is_empty() {
            builder = builder
                .with_access_key_id(&config.blob_s3_access_key_id)
                .with_secret_access_key(config.blob_s3_secret_access_key.expose());
        }
        let s3 = builder
            .build()
            .map_err(|err| bad(format!("{url:?}: {err}")))?;
        return Ok(Backend::Objects {
            store: Arc::new(s3),
            prefix: ObjectPath::from(prefix),
            url: url.to_owned(),
        });
    }
    let dir = url.strip_prefix("file://").unwrap_or(url);
    if !dir.starts_with('/') {
        return Err(bad(format!(
            "{url:?} is none of `redis`, an absolute directory (or file:///dir), s3://bucket[/prefix]"
        )));
    }
    std::fs::create_dir_all(dir).map_err(|err| bad(format!("cannot create {dir}: {err}")))?;
    let local = object_store::local::LocalFileSystem::new_with_prefix(dir)
        .map_err(|err| bad(format!("{dir}: {err}")))?;
    Ok(Backend::Objects {
        store: Arc::new(local),
        prefix: ObjectPath::from("blobs"),
        url: url.to_owned(),
    })
}

#[cfg(test)]
mod release_tests {
    use super::*;

    #[test]
    fn a_given_back_element_reads_as_its_time_and_reference() {
        let blob = BlobRef::of(b"parameters");
        let mut element = b"1733370000000 ".to_vec();
        element.extend(blob.encode());
        assert_eq!(
            parse_release(&element),
            Some((1_733_370_000_000, blob.clone()))
        );

        let mut no_time = b"soon ".to_vec();
        no_time.extend(blob.encode());
        assert_eq!(parse_release(&no_time), None);
        assert_eq!(parse_release(&blob.encode()), None, "no time");
        assert_eq!(
            parse_release(b"1733370000000 \x81\xa1a\x01"),
            None,
            "no reference"
        );
    }
}
