//! One configuration type for producers, workers and the CLI.
//!
//! A setting's value comes from, in rising precedence: its default, the TOML
//! file (`--config` or `TANDEM_CONFIG`), and its environment variable
//! (`TANDEM_<NAME>`; the Redis URL also honours plain `REDIS_URL`). Binaries
//! apply their command-line flags on top. [`Config::SETTINGS`] lists every
//! setting with its variable, default and meaning; `tandem settings` and
//! `tandem-worker settings` print it
//! and the README's table is that list.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::device::{DeviceSelector, Role};
use crate::task::Class;

/// The most tasks `prefetch` may hold ahead of a worker's slots.
const MAX_PREFETCH: usize = 1024;

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    File { path: PathBuf, message: String },
    #[error("environment variable {var}={value:?} is not valid: {message}")]
    Env {
        var: &'static str,
        value: String,
        message: String,
    },
    #[error("setting {name} is not valid: {message}")]
    Invalid { name: &'static str, message: String },
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

/// A setting's value type: parsed from an environment variable, shown in
/// `tandem settings`.
pub trait SettingValue: Sized {
    fn parse_setting(text: &str) -> Result<Self, String>;
    fn show_setting(&self) -> String;
}

impl SettingValue for String {
    fn parse_setting(text: &str) -> Result<Self, String> {
        Ok(text.to_owned())
    }
    fn show_setting(&self) -> String {
        self.clone()
    }
}

macro_rules! number_setting {
    ($($ty:ty),*) => {$(
        impl SettingValue for $ty {
            fn parse_setting(text: &str) -> Result<Self, String> {
                text.trim().parse().map_err(|e| format!("{e}"))
            }
            fn show_setting(&self) -> String {
                self.to_string()
            }
        }
    )*};
}
number_setting!(u16, u32, u64, usize, f64);

impl SettingValue for bool {
    fn parse_setting(text: &str) -> Result<Self, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" | "" => Ok(false),
            other => Err(format!("expected true or false, got {other:?}")),
        }
    }
    fn show_setting(&self) -> String {
        self.to_string()
    }
}

impl SettingValue for LogFormat {
    fn parse_setting(text: &str) -> Result<Self, String> {
        match text.trim() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("expected text or json, got {other:?}")),
        }
    }
    fn show_setting(&self) -> String {
        match self {
            LogFormat::Text => "text".into(),
            LogFormat::Json => "json".into(),
        }
    }
}

impl SettingValue for Vec<Class> {
    fn parse_setting(text: &str) -> Result<Self, String> {
        text.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| s.parse::<Class>().map_err(|e| e.to_string()))
            .collect()
    }
    fn show_setting(&self) -> String {
        self.iter()
            .map(|c| c.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl SettingValue for DeviceSelector {
    fn parse_setting(text: &str) -> Result<Self, String> {
        text.parse()
            .map_err(|e: crate::task::ParseError| e.to_string())
    }
    fn show_setting(&self) -> String {
        self.to_string()
    }
}

impl Serialize for DeviceSelector {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for DeviceSelector {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // A TOML integer is an index too.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Index(u32),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Index(i) => Ok(DeviceSelector::Index(i)),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl SettingValue for Option<Role> {
    fn parse_setting(text: &str) -> Result<Self, String> {
        match text.trim() {
            "" | "auto" => Ok(None),
            other => other
                .parse()
                .map(Some)
                .map_err(|e: crate::task::ParseError| e.to_string()),
        }
    }
    fn show_setting(&self) -> String {
        self.map_or_else(|| "auto".to_owned(), |r| r.to_string())
    }
}

/// `prefetch`: a count, or `auto` (empty) for the default by concurrency.
impl SettingValue for Option<usize> {
    fn parse_setting(text: &str) -> Result<Self, String> {
        match text.trim() {
            "" | "auto" => Ok(None),
            other => other
                .parse()
                .map(Some)
                .map_err(|_| format!("{other:?} is not `auto` or a whole number of tasks")),
        }
    }
    fn show_setting(&self) -> String {
        self.map_or_else(|| "auto".to_owned(), |n| n.to_string())
    }
}

impl SettingValue for BTreeMap<String, Role> {
    fn parse_setting(text: &str) -> Result<Self, String> {
        crate::device::parse_role_pins(text)
    }
    fn show_setting(&self) -> String {
        self.iter()
            .map(|(uuid, role)| format!("{uuid}={role}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// `kind_timeout_ms`: kind names to run-time limits in ms.
impl SettingValue for BTreeMap<String, u64> {
    fn parse_setting(text: &str) -> Result<Self, String> {
        let mut limits = BTreeMap::new();
        for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (kind, ms) = pair
                .split_once('=')
                .ok_or_else(|| format!("{pair:?} is not KIND=MS (e.g. risk=30000)"))?;
            let ms: u64 = ms
                .trim()
                .parse()
                .map_err(|_| format!("{pair:?}: the limit must be a whole number of ms"))?;
            limits.insert(kind.trim().to_owned(), ms);
        }
        Ok(limits)
    }
    fn show_setting(&self) -> String {
        self.iter()
            .map(|(kind, ms)| format!("{kind}={ms}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// A secret setting: never shown in logs, `--check-config` or `Debug`.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that uses it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.show_setting())
    }
}

impl SettingValue for Secret {
    fn parse_setting(text: &str) -> Result<Self, String> {
        Ok(Secret(text.to_owned()))
    }
    fn show_setting(&self) -> String {
        if self.0.is_empty() {
            String::new()
        } else {
            "***".to_owned()
        }
    }
}

/// What `tandem settings` and the README show about one setting.
#[derive(Debug, Clone, Copy)]
pub struct SettingInfo {
    pub name: &'static str,
    pub env: &'static str,
    pub default: fn() -> String,
    pub doc: &'static str,
}

macro_rules! settings {
    ($(
        $(#[doc = $doc:literal])+
        $name:ident : $ty:ty = $default:expr, $env:literal;
    )*) => {
        /// Every Tandem setting. See the module documentation for where values
        /// come from. `Debug` and `Display` hide secrets and the password in
        /// the Redis URL.
        #[derive(Clone, PartialEq, Serialize, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct Config {
            $( $(#[doc = $doc])+ pub $name: $ty, )*
        }

        impl Default for Config {
            fn default() -> Self {
                Self { $( $name: $default, )* }
            }
        }

        impl Config {
            /// Every setting, in the order of the README's table.
            pub const SETTINGS: &'static [SettingInfo] = &[$(
                SettingInfo {
                    name: stringify!($name),
                    env: $env,
                    default: || {
                        let value: $ty = $default;
                        value.show_setting()
                    },
                    doc: concat!($($doc),+),
                },
            )*];

            /// Overrides settings from `TANDEM_*` variables read through `var`.
            fn apply_env(&mut self, var: &dyn Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
                $(
                    if let Some(value) = var($env) {
                        self.$name = <$ty as SettingValue>::parse_setting(&value).map_err(|message| {
                            ConfigError::Env { var: $env, value: value.clone(), message }
                        })?;
                    }
                )*
                Ok(())
            }

            /// The current value of every setting, as `(name, value)`.
            pub fn values(&self) -> Vec<(&'static str, String)> {
                vec![$( (stringify!($name), self.$name.show_setting()), )*]
            }
        }
    };
}

settings! {
    /// Redis to connect to: `redis://[user:password@]host:port[/db]`; Sentinel `redis+sentinel://[user:password@]s1:p1,s2:p2/<master>[/db]`; Cluster `redis+cluster://[user:password@]h1:p1,h2:p2` (`rediss...` for TLS). Plain `REDIS_URL` works too.
    redis_url: String = "redis://127.0.0.1:6379".into(), "TANDEM_REDIS_URL";
    /// Password of the sentinels themselves (their `requirepass`), for a `redis+sentinel://` URL; empty: none.
    redis_sentinel_password: Secret = Secret::default(), "TANDEM_REDIS_SENTINEL_PASSWORD";
    /// Replicas that must confirm a submission (`WAIT`) before it counts as accepted; 0: do not wait.
    redis_wait_replicas: u32 = 0, "TANDEM_REDIS_WAIT_REPLICAS";
    /// How long a submission waits for `redis_wait_replicas` (ms).
    redis_wait_timeout_ms: u64 = 1_000, "TANDEM_REDIS_WAIT_TIMEOUT_MS";
    /// First part of every key, so several Tandem deployments can share one Redis.
    prefix: String = "tandem".into(), "TANDEM_PREFIX";
    /// How long a Redis command may take before it counts as failed (ms).
    redis_timeout_ms: u64 = 5_000, "TANDEM_REDIS_TIMEOUT_MS";
    /// How long connecting to Redis may take (ms).
    connect_timeout_ms: u64 = 2_000, "TANDEM_CONNECT_TIMEOUT_MS";
    /// How long a producer call keeps retrying while Redis is unreachable (ms; 0: fail at once).
    reconnect_timeout_ms: u64 = 30_000, "TANDEM_RECONNECT_TIMEOUT_MS";
    /// This producer's id, naming its reply streams (one per class); empty means a fresh random id per process.
    producer_id: String = String::new(), "TANDEM_PRODUCER_ID";
    /// Attempts a task gets when its producer does not say.
    default_max_attempts: u32 = 3, "TANDEM_DEFAULT_MAX_ATTEMPTS";
    /// Largest parameters a producer sends inline and a worker accepts inline (bytes); larger ones travel as a blob reference while `blob_threshold_bytes` is on.
    max_payload_bytes: usize = 1 << 20, "TANDEM_MAX_PAYLOAD_BYTES";
    /// How long a finished task's record and result stay in Redis (s).
    result_ttl_s: u64 = 86_400, "TANDEM_RESULT_TTL_S";
    /// How long an idempotency key keeps returning the task it created (s).
    idempotency_ttl_s: u64 = 86_400, "TANDEM_IDEMPOTENCY_TTL_S";
    /// Approximate length cap of each producer's reply stream (entries).
    reply_maxlen: u64 = 10_000, "TANDEM_REPLY_MAXLEN";
    /// A reply stream nobody writes to for this long disappears (s).
    reply_ttl_s: u64 = 3_600, "TANDEM_REPLY_TTL_S";
    /// Results up to this size travel inside the completion notice; larger ones are fetched (bytes).
    inline_result_bytes: usize = 16 * 1024, "TANDEM_INLINE_RESULT_BYTES";
    /// Where blobs (parameters and results above `blob_threshold_bytes`) are stored: `redis`, a directory on a volume every producer and worker shares (`/mnt/blobs` or `file:///mnt/blobs`), or an S3-compatible bucket (`s3://bucket[/prefix]`, credentials and region from `AWS_*` variables).
    blob_store: String = "redis".into(), "TANDEM_BLOB_STORE";
    /// Parameters and results larger than this travel as a blob reference instead of inline (bytes; 0: never, and `max_payload_bytes` caps parameters).
    blob_threshold_bytes: usize = 1 << 20, "TANDEM_BLOB_THRESHOLD_BYTES";
    /// A workflow node with children sends a result larger than this as a blob reference, so that the commit releasing its children passes them the reference instead of copying the bytes into each (bytes; the smaller of this and `blob_threshold_bytes` when both are on; 0: `blob_threshold_bytes` alone). Sinks and plain tasks keep `blob_threshold_bytes`.
    workflow_blob_threshold_bytes: usize = 64 * 1024, "TANDEM_WORKFLOW_BLOB_THRESHOLD_BYTES";
    /// How long an unreleased blob lives after its last reference was taken (s): the backstop for references nobody gives back.
    blob_ttl_s: u64 = 86_400, "TANDEM_BLOB_TTL_S";
    /// Blobs are written and read in chunks of this size (bytes).
    blob_chunk_bytes: usize = 1 << 20, "TANDEM_BLOB_CHUNK_BYTES";
    /// Largest blob a producer stores (bytes).
    max_blob_bytes: u64 = 1 << 30, "TANDEM_MAX_BLOB_BYTES";
    /// A worker keeps the blobs it fetched, up to this many bytes, so that a blob is fetched once per device (bytes; 0: no cache).
    blob_cache_bytes: u64 = 1 << 30, "TANDEM_BLOB_CACHE_BYTES";
    /// The S3 endpoint for an `s3://` `blob_store` other than AWS (MinIO, Ceph, moto): `http://host:port`; empty: AWS's.
    blob_s3_endpoint: String = String::new(), "TANDEM_BLOB_S3_ENDPOINT";
    /// The region of an `s3://` `blob_store`; empty: `AWS_REGION`, else `us-east-1`.
    blob_s3_region: String = String::new(), "TANDEM_BLOB_S3_REGION";
    /// The access key id for an `s3://` `blob_store`; empty: `AWS_ACCESS_KEY_ID` (or the instance's role).
    blob_s3_access_key_id: String = String::new(), "TANDEM_BLOB_S3_ACCESS_KEY_ID";
    /// The secret access key for an `s3://` `blob_store`; empty: `AWS_SECRET_ACCESS_KEY`.
    blob_s3_secret_access_key: Secret = Secret::default(), "TANDEM_BLOB_S3_SECRET_ACCESS_KEY";
    /// This worker's id (its consumer name); empty means `<host>-<device>-<pid>-<4 hex digits>`, new for each process.
    worker_id: String = String::new(), "TANDEM_WORKER_ID";
    /// Tasks a worker runs at once; 0 means one per CPU core.
    concurrency: usize = 0, "TANDEM_CONCURRENCY";
    /// Classes a worker may take (routing decides among them by its role); a CPU worker prefers them in this order at equal priority.
    classes: Vec<Class> = vec![Class::Cpu, Class::Light, Class::Parallel, Class::Heavy], "TANDEM_CLASSES";
    /// Most tasks a worker claims in one round trip.
    claim_batch: usize = 64, "TANDEM_CLAIM_BATCH";
    /// Tasks a worker claims ahead of its free slots while its tasks run, to start the next one without a claim round trip (leased to it, handed back at shutdown, cancels and pauses honoured); 0: off, as by default (a busy GPU worker holding the next task keeps it from an idle device: heavy spill, light help); `auto`: 1 at `concurrency` 1, else 0.
    prefetch: Option<usize> = Some(0), "TANDEM_PREFETCH";
    /// With a prefetch: how long a finished task's commit may wait while every slot runs a task and prefetched ones wait, so that one round trip commits the tasks that end meanwhile and refills the prefetch (ms; 0: each commit goes at once).
    commit_linger_ms: u64 = 2, "TANDEM_COMMIT_LINGER_MS";
    /// A claimed task's lease: a worker extends it while the task runs; one not extended this long is taken over (ms).
    lease_timeout_ms: u64 = 30_000, "TANDEM_LEASE_TIMEOUT_MS";
    /// A task blamed for this many worker deaths (1 when it was its worker's only task, 1/n among n, 0 for a stalled worker) or failed devices is dead-lettered without running.
    max_deliveries: u32 = 3, "TANDEM_MAX_DELIVERIES";
    /// First retry delay; each further retry doubles it, with jitter (ms).
    retry_base_ms: u64 = 1_000, "TANDEM_RETRY_BASE_MS";
    /// Longest retry delay (ms).
    retry_max_ms: u64 = 60_000, "TANDEM_RETRY_MAX_MS";
    /// Approximate length cap of each class's dead-letter stream (entries).
    dead_letter_maxlen: u64 = 100_000, "TANDEM_DEAD_LETTER_MAXLEN";
    /// Write lifecycle events (submitted, started, progress, retried, succeeded, failed, ...) to each class's `events` stream; set it alike on producers and workers (each writes the events of the changes it makes).
    events: bool = true, "TANDEM_EVENTS";
    /// How long a task past its `timeout` has to stop before its worker abandons it (ms).
    timeout_grace_ms: u64 = 2_000, "TANDEM_TIMEOUT_GRACE_MS";
    /// A worker's run-time limit for tasks of a kind that carry no `timeout` of their own (ms): a TOML table, or `risk=30000,train=600000`.
    kind_timeout_ms: BTreeMap<String, u64> = BTreeMap::new(), "TANDEM_KIND_TIMEOUT_MS";
    /// Least time between two progress writes of one task (ms); a report sooner than that after the last one written is dropped (0: write every report).
    progress_interval_ms: u64 = 250, "TANDEM_PROGRESS_INTERVAL_MS";
    /// How long an idle worker's blocking wait for new tasks lasts before it re-arms (ms).
    block_ms: u64 = 2_000, "TANDEM_BLOCK_MS";
    /// How often a worker refreshes its registry record (ms).
    heartbeat_interval_ms: u64 = 1_000, "TANDEM_HEARTBEAT_INTERVAL_MS";
    /// A worker whose record is older than this is gone (ms).
    heartbeat_ttl_ms: u64 = 5_000, "TANDEM_HEARTBEAT_TTL_MS";
    /// How often a worker samples its device (utilization, memory, temperature, power, clock) and its tasks (tasks/s, latency, completions, errors) into its registry record (ms).
    metrics_interval_ms: u64 = 2_000, "TANDEM_METRICS_INTERVAL_MS";
    /// A GPU hotter than this raises `gpu_hot` (degrees C).
    alert_temperature_c: f64 = 85.0, "TANDEM_ALERT_TEMPERATURE_C";
    /// A GPU whose utilization stays under this share (0 to 1) while tasks run raises `gpu_underused`, after `alert_underused_ms`.
    alert_utilization_ratio: f64 = 0.5, "TANDEM_ALERT_UTILIZATION_RATIO";
    /// How long a GPU must stay under `alert_utilization_ratio` with tasks running before `gpu_underused` (ms).
    alert_underused_ms: u64 = 60_000, "TANDEM_ALERT_UNDERUSED_MS";
    /// A stream whose oldest waiting task is older than this raises `queue_stalled` (ms).
    alert_oldest_waiting_ms: u64 = 60_000, "TANDEM_ALERT_OLDEST_WAITING_MS";
    /// A dead-letter stream that grew by at least this many entries since the last check raises `dead_letters_growing`.
    alert_dead_letter_growth: u64 = 1, "TANDEM_ALERT_DEAD_LETTER_GROWTH";
    /// How often the queue alerts are checked (by one worker of the fleet) and the most often any alert repeats while its condition holds (ms).
    alert_interval_ms: u64 = 60_000, "TANDEM_ALERT_INTERVAL_MS";
    /// Port of the Prometheus `/metrics` endpoint on all interfaces; `tandem-worker fleet` serves every child's there (0 = off).
    metrics_port: u16 = 0, "TANDEM_METRICS_PORT";
    /// A task waiting longer than this is started ahead of higher priorities, so none starves (ms; 0 = never).
    aging_ms: u64 = 30_000, "TANDEM_AGING_MS";
    /// How long a stopping worker lets its running tasks finish (ms).
    shutdown_grace_ms: u64 = 30_000, "TANDEM_SHUTDOWN_GRACE_MS";
    /// The device a worker runs on: `cpu`, a GPU's UUID (or a unique prefix), or its index among the visible GPUs (`tandem-worker detect` lists them).
    device: DeviceSelector = DeviceSelector::Cpu, "TANDEM_DEVICE";
    /// A GPU worker's role (`heavy`, `light`, `both`); `auto` assigns it from the host's GPUs' capability.
    role: Option<Role> = None, "TANDEM_ROLE";
    /// Roles pinned by GPU UUID, over the capability ranking: a TOML table, or `GPU-a=heavy,GPU-b=light`.
    device_roles: BTreeMap<String, Role> = BTreeMap::new(), "TANDEM_DEVICE_ROLES";
    /// Simulated GPUs for machines without one (tests, demos), replacing detection: `RTX 4070 Ti, 12 GiB, 40.09 TFLOPS; RTX 3060 Ti, 8 GiB, 16.2 TFLOPS`, each optionally with faults `fail_after=N`, `hang_after=N`, `die_after=N`, `oom_above=SIZE`, `probe_failures=N`, `hot` (its temperature reads 95 C), `underused` (its utilization reads 0.2 while tasks run), `upload_fails` (every model upload hits a sticky device error), `no_nvrtc` (no kernel module loads: its compute kinds run on the CPU, reported as a real GPU without NVRTC reports it), `no_cublas` (likewise its model kinds, as without libcublas), `paced` (tasks take as long, relative to each other, as on GPUs of those speeds) and `model_scale=N` (a resident model is booked at N times its size).
    simulate_gpus: String = String::new(), "TANDEM_SIMULATE_GPUS";
    /// Share of a GPU's memory kept free of tasks, for the CUDA context and fragmentation (percent).
    device_memory_reserve_pct: u32 = 10, "TANDEM_DEVICE_MEMORY_RESERVE_PCT";
    /// A model whose parameters are over this size is heavy (the primary GPU), else light (bytes; 5 GB per the seed).
    model_heavy_threshold_bytes: u64 = 5_000_000_000, "TANDEM_MODEL_HEAVY_THRESHOLD_BYTES";
    /// `train` tasks go to the heavy class (the primary GPU; the secondary or a CPU worker only by the fallback rules), whatever their model's size; false: to their model's registered class, as `infer` does. Read by producers, which choose a task's class.
    train_on_primary: bool = true, "TANDEM_TRAIN_ON_PRIMARY";
    /// Largest model file `tandem model upload` stores in Redis; larger ones are registered by path (bytes).
    max_model_upload_bytes: usize = 64 << 20, "TANDEM_MAX_MODEL_UPLOAD_BYTES";
    /// A heavy task waiting this long while the primary GPU is busy goes to the secondary if it fits, else the CPU worker (ms).
    heavy_spill_ms: u64 = 2_000, "TANDEM_HEAVY_SPILL_MS";
    /// A light task waiting this long goes to an idle primary GPU, one at a time (ms).
    light_help_ms: u64 = 500, "TANDEM_LIGHT_HELP_MS";
    /// A GPU task waiting this long goes to a CPU worker, the last resort (ms; 0 = only when no GPU can take it).
    cpu_fallback_ms: u64 = 30_000, "TANDEM_CPU_FALLBACK_MS";
    /// A splittable `parallel` task claimed while two or more GPU workers are live is cut into this many shards per live GPU, which any worker may run; 0: never split.
    shards_per_gpu: u32 = 4, "TANDEM_SHARDS_PER_GPU";
    /// A directory on the fleet's shared volume where `train` tasks may write fine-tuned models (`out`); empty: they come back in the result only.
    model_dir: String = String::new(), "TANDEM_MODEL_DIR";
    /// A GPU task running longer than this means the device hung: it is marked failed and its tasks handed back (ms; 0 = off).
    device_watchdog_ms: u64 = 0, "TANDEM_DEVICE_WATCHDOG_MS";
    /// First wait between health probes of a device that failed; doubles up to `probe_backoff_max_ms` (ms).
    probe_backoff_ms: u64 = 1_000, "TANDEM_PROBE_BACKOFF_MS";
    /// Longest wait between health probes (ms).
    probe_backoff_max_ms: u64 = 30_000, "TANDEM_PROBE_BACKOFF_MAX_MS";
    /// `tandem-worker fleet` also runs a CPU worker.
    fleet_cpu_worker: bool = true, "TANDEM_FLEET_CPU_WORKER";
    /// First wait before the fleet restarts a worker that died; doubles up to `fleet_restart_max_ms` (ms).
    fleet_restart_ms: u64 = 1_000, "TANDEM_FLEET_RESTART_MS";
    /// Longest wait before a restart (ms).
    fleet_restart_max_ms: u64 = 30_000, "TANDEM_FLEET_RESTART_MAX_MS";
    /// Also run the test kinds `panic`, `abort`, `gpu_only` and `split_sum` (tests, demos and `tandem scaling` only: `abort` kills the worker).
    test_kinds: bool = false, "TANDEM_TEST_KINDS";
    /// CA certificate (PEM file) to verify a `rediss://` server with; empty: the system's roots.
    tls_ca_file: String = String::new(), "TANDEM_TLS_CA_FILE";
    /// Client certificate (PEM file) for servers that ask for one; needs `tls_key_file`.
    tls_cert_file: String = String::new(), "TANDEM_TLS_CERT_FILE";
    /// The client certificate's private key (PEM file).
    tls_key_file: String = String::new(), "TANDEM_TLS_KEY_FILE";
    /// Shared key for HMAC-SHA256 task signatures: producers sign, workers refuse unsigned or wrongly signed tasks; empty: off.
    signing_key: Secret = Secret::default(), "TANDEM_SIGNING_KEY";
    /// The token `tandem dashboard`'s write actions (requeue, purge, cancel, pause) must send as `Authorization: Bearer <token>` (at least 8 characters; `--token` overrides it); empty: the dashboard needs `--token` or `--read-only`.
    dashboard_token: Secret = Secret::default(), "TANDEM_DASHBOARD_TOKEN";
    /// Log line format: `text` or `json`.
    log_format: LogFormat = LogFormat::Text, "TANDEM_LOG_FORMAT";
    /// Log filter, as RUST_LOG (which wins when set): `info`, `tandem_worker=debug`, ...
    log_level: String = "info".into(), "TANDEM_LOG_LEVEL";
}

impl Config {
    /// Loads defaults, then the file (the given path, else `TANDEM_CONFIG`),
    /// then the environment, and validates the result.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(path, &|name| std::env::var(name).ok())
    }

    /// [`Config::load`] with the environment supplied by `var` (for tests).
    pub fn load_from(
        path: Option<&Path>,
        var: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let file = path
            .map(Path::to_path_buf)
            .or_else(|| var("TANDEM_CONFIG").map(PathBuf::from));
        let mut config = match file {
            Some(path) => Self::from_file(&path)?,
            None => Self::default(),
        };
        // Plain REDIS_URL is the convention many tools share; the Tandem
        // variable wins when both are set.
        if let Some(url) = var("REDIS_URL") {
            config.redis_url = url;
        }
        config.apply_env(var)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads a TOML file of settings; unknown names are an error.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::File {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    /// Checks the values that have rules beyond their type.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |name, message: &str| {
            Err(ConfigError::Invalid {
                name,
                message: message.to_owned(),
            })
        };
        let key_safe = |s: &str| {
            s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
        };
        if self.prefix.is_empty() || !key_safe(&self.prefix) {
            return invalid(
                "prefix",
                "must be non-empty ASCII letters, digits, '-', '_', '.' or '@'",
            );
        }
        if !key_safe(&self.producer_id) {
            return invalid(
                "producer_id",
                "may hold only letters, digits, '-', '_', '.', '@'",
            );
        }
        if !key_safe(&self.worker_id) {
            return invalid(
                "worker_id",
                "may hold only letters, digits, '-', '_', '.', '@'",
            );
        }
        if self.blob_chunk_bytes == 0 {
            return invalid("blob_chunk_bytes", "must be at least 1");
        }
        if self.blob_ttl_s == 0 {
            return invalid("blob_ttl_s", "must be at least 1");
        }
        if self.tls_cert_file.is_empty() != self.tls_key_file.is_empty() {
            return invalid(
                "tls_cert_file",
                "needs tls_key_file, and the other way round",
            );
        }
        if self.classes.is_empty() {
            return invalid("classes", "a worker needs at least one class");
        }
        if self.claim_batch == 0 {
            return invalid("claim_batch", "must be at least 1");
        }
        if self.commit_linger_ms > 60_000 {
            return invalid(
                "commit_linger_ms",
                "must be at most 60000 (a commit waits this long at most; its task's slot stays taken)",
            );
        }
        if self.prefetch.is_some_and(|n| n > MAX_PREFETCH) {
            return invalid(
                "prefetch",
                "must be at most 1024 (each prefetched task waits, leased, behind the running ones)",
            );
        }
        if self.default_max_attempts == 0 {
            return invalid("default_max_attempts", "must be at least 1");
        }
        if self.lease_timeout_ms <= self.heartbeat_interval_ms {
            return invalid(
                "lease_timeout_ms",
                "must be longer than heartbeat_interval_ms",
            );
        }
        if self.max_deliveries == 0 {
            return invalid("max_deliveries", "must be at least 1");
        }
        if self.retry_max_ms < self.retry_base_ms {
            return invalid("retry_max_ms", "must be at least retry_base_ms");
        }
        if self.heartbeat_ttl_ms <= self.heartbeat_interval_ms {
            return invalid(
                "heartbeat_ttl_ms",
                "must be longer than heartbeat_interval_ms",
            );
        }
        if let Err(err) = crate::device::parse_simulated(&self.simulate_gpus) {
            return invalid("simulate_gpus", &err.to_string());
        }
        for (kind, &ms) in &self.kind_timeout_ms {
            if kind.is_empty() || ms == 0 {
                return invalid(
                    "kind_timeout_ms",
                    &format!(
                        "{kind:?} = {ms}: each entry needs a kind name and a limit of at least 1 ms"
                    ),
                );
            }
        }
        if let Err(message) = crate::device::check_role_pins(&self.device_roles) {
            return invalid("device_roles", &message);
        }
        if self.role == Some(Role::Cpu) {
            return invalid(
                "role",
                "a GPU worker's role is heavy, light or both; a CPU worker is `device = cpu`",
            );
        }
        if self.device_memory_reserve_pct > 90 {
            return invalid("device_memory_reserve_pct", "must be at most 90");
        }
        // Redis refuses strings over 512 MiB.
        if self.max_model_upload_bytes > 512 << 20 {
            return invalid(
                "max_model_upload_bytes",
                "must be at most 536870912 (512 MiB)",
            );
        }
        if let Err(detail) = crate::connect::Target::parse(&self.redis_url) {
            return invalid("redis_url", &detail);
        }
        // WAIT holds the connection it runs on: it must end before the
        // calls queued behind it time out.
        if self.redis_wait_replicas > 0 && self.redis_wait_timeout_ms >= self.redis_timeout_ms {
            return invalid("redis_wait_timeout_ms", "must be below redis_timeout_ms");
        }
        if !(0.0..=1.0).contains(&self.alert_utilization_ratio) {
            return invalid("alert_utilization_ratio", "must be between 0 and 1");
        }
        if !self.alert_temperature_c.is_finite() {
            return invalid("alert_temperature_c", "must be a number of degrees");
        }
        if self.probe_backoff_max_ms < self.probe_backoff_ms {
            return invalid("probe_backoff_max_ms", "must be at least probe_backoff_ms");
        }
        if self.fleet_restart_max_ms < self.fleet_restart_ms {
            return invalid("fleet_restart_max_ms", "must be at least fleet_restart_ms");
        }
        for (name, value) in [
            ("probe_backoff_ms", self.probe_backoff_ms),
            ("fleet_restart_ms", self.fleet_restart_ms),
            ("block_ms", self.block_ms),
            ("redis_timeout_ms", self.redis_timeout_ms),
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("redis_wait_timeout_ms", self.redis_wait_timeout_ms),
            ("result_ttl_s", self.result_ttl_s),
            ("idempotency_ttl_s", self.idempotency_ttl_s),
            ("reply_ttl_s", self.reply_ttl_s),
            ("dead_letter_maxlen", self.dead_letter_maxlen),
            ("metrics_interval_ms", self.metrics_interval_ms),
            ("alert_interval_ms", self.alert_interval_ms),
            ("alert_dead_letter_growth", self.alert_dead_letter_growth),
        ] {
            if value == 0 {
                return invalid(name, "must be at least 1");
            }
        }
        Ok(())
    }

    /// The worker's concurrency with `0` resolved to the number of cores.
    pub fn effective_concurrency(&self) -> usize {
        if self.concurrency > 0 {
            self.concurrency
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }

    /// Tasks the worker claims ahead of its free slots (0 unless set),
    /// with `auto` resolved: one at concurrency 1 (the worker would
    /// otherwise wait a claim round trip between every two tasks), none
    /// above it (a free slot among several is refilled while the others
    /// run).
    pub fn effective_prefetch(&self) -> usize {
        self.prefetch
            .unwrap_or(usize::from(self.effective_concurrency() == 1))
    }

    /// The routing bounds.
    pub fn routing_policy(&self) -> crate::routing::Policy {
        crate::routing::Policy {
            spill_ms: self.heavy_spill_ms,
            help_ms: self.light_help_ms,
            cpu_fallback_ms: self.cpu_fallback_ms,
        }
    }

    pub fn redis_timeout(&self) -> Duration {
        Duration::from_millis(self.redis_timeout_ms)
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    /// The Redis URL with any password replaced, for logs.
    pub fn redis_url_redacted(&self) -> String {
        redact_url(&self.redis_url)
    }
}

/// Replaces the password part of a Redis URL with `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    let user = userinfo.split_once(':').map_or("", |(user, _)| user);
    format!("{scheme}://{user}:***@{host}")
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_struct("Config");
        for (name, value) in self.values() {
            let value = if name == "redis_url" {
                redact_url(&value)
            } else {
                value
            };
            map.field(name, &value);
        }
        map.finish()
    }
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, value) in self.values() {
            let value = if name == "redis_url" {
                redact_url(&value)
            } else {
                value
            };
            writeln!(f, "{name} = {value}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn load(env: &[(&str, &str)], file: Option<&Path>) -> Result<Config, ConfigError> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load_from(file, &|name| env.get(name).cloned())
    }

    #[test]
    fn defaults_are_valid() {
        let config = load(&[], None).unwrap();
        assert_eq!(config, Config::default());
        assert_eq!(config.prefix, "tandem");
        assert_eq!(Config::SETTINGS.len(), config.values().len());
    }

    #[test]
    fn prefetch_is_off_unless_set_to_auto_or_a_count() {
        let one = load(&[("TANDEM_CONCURRENCY", "1")], None).unwrap();
        assert_eq!(one.prefetch, Some(0));
        assert_eq!(one.effective_prefetch(), 0);
        let auto_one = load(
            &[("TANDEM_CONCURRENCY", "1"), ("TANDEM_PREFETCH", "auto")],
            None,
        )
        .unwrap();
        assert_eq!(auto_one.effective_prefetch(), 1);
        let four = load(
            &[("TANDEM_CONCURRENCY", "4"), ("TANDEM_PREFETCH", "auto")],
            None,
        )
        .unwrap();
        assert_eq!(four.effective_prefetch(), 0);
        let off = load(
            &[("TANDEM_CONCURRENCY", "1"), ("TANDEM_PREFETCH", "0")],
            None,
        )
        .unwrap();
        assert_eq!(off.effective_prefetch(), 0);
        let auto = load(&[("TANDEM_PREFETCH", "auto")], None).unwrap();
        assert_eq!(auto.prefetch, None);
        let two = load(&[("TANDEM_PREFETCH", "2")], None).unwrap();
        assert_eq!(two.effective_prefetch(), 2);
        let err = load(&[("TANDEM_PREFETCH", "some")], None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("TANDEM_PREFETCH"), "{err}");
        let err = load(&[("TANDEM_PREFETCH", "5000")], None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("prefetch"), "{err}");
    }

    #[test]
    fn the_commit_linger_is_two_ms_and_at_most_a_minute() {
        assert_eq!(load(&[], None).unwrap().commit_linger_ms, 2);
        let off = load(&[("TANDEM_COMMIT_LINGER_MS", "0")], None).unwrap();
        assert_eq!(off.commit_linger_ms, 0);
        let err = load(&[("TANDEM_COMMIT_LINGER_MS", "60001")], None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("commit_linger_ms"), "{err}");
        assert!(err.contains("at most 60000"), "{err}");
    }

    #[test]
    fn env_overrides_file_overrides_default() {
        let dir = std::env::temp_dir().join(format!("tandem-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tandem.toml");
        std::fs::write(
            &path,
            "prefix = \"fromfile\"\nconcurrency = 3\nclasses = [\"cpu\"]\n",
        )
        .unwrap();

        let config = load(&[("TANDEM_CONCURRENCY", "7")], Some(&path)).unwrap();
        assert_eq!(config.prefix, "fromfile");
        assert_eq!(config.concurrency, 7);
        assert_eq!(config.classes, vec![Class::Cpu]);

        let via_env = load(&[("TANDEM_CONFIG", path.to_str().unwrap())], None).unwrap();
        assert_eq!(via_env.prefix, "fromfile");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn redis_url_env_names() {
        let plain = load(&[("REDIS_URL", "redis://a:1")], None).unwrap();
        assert_eq!(plain.redis_url, "redis://a:1");
        let both = load(
            &[
                ("REDIS_URL", "redis://a:1"),
                ("TANDEM_REDIS_URL", "redis://b:2"),
            ],
            None,
        )
        .unwrap();
        assert_eq!(both.redis_url, "redis://b:2");
    }

    #[test]
    fn bad_values_name_the_setting() {
        let err = load(&[("TANDEM_CONCURRENCY", "many")], None).unwrap_err();
        assert!(err.to_string().contains("TANDEM_CONCURRENCY"), "{err}");
        let err = load(&[("TANDEM_CLASSES", "cpu,gpu")], None).unwrap_err();
        assert!(err.to_string().contains("gpu"), "{err}");
        let err = load(&[("TANDEM_PREFIX", "a{b}")], None).unwrap_err();
        assert!(err.to_string().contains("prefix"), "{err}");
        let err = load(&[("TANDEM_HEARTBEAT_TTL_MS", "10")], None).unwrap_err();
        assert!(err.to_string().contains("heartbeat_ttl_ms"), "{err}");
    }

    #[test]
    fn device_settings_read_from_file_and_env() {
        let dir = std::env::temp_dir().join(format!("tandem-config-dev-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("gpu.toml");
        std::fs::write(
            &path,
            "device = 1\nrole = \"light\"\n[device_roles]\n\"GPU-abc\" = \"heavy\"\n",
        )
        .unwrap();
        let config = load(&[], Some(&path)).unwrap();
        assert_eq!(config.device, DeviceSelector::Index(1));
        assert_eq!(config.role, Some(Role::Light));
        assert_eq!(config.device_roles.get("GPU-abc"), Some(&Role::Heavy));

        let config = load(
            &[
                ("TANDEM_DEVICE", "GPU-1234"),
                ("TANDEM_ROLE", "auto"),
                ("TANDEM_DEVICE_ROLES", "GPU-a=light,GPU-b=both"),
            ],
            Some(&path),
        )
        .unwrap();
        assert_eq!(config.device, DeviceSelector::Uuid("GPU-1234".into()));
        assert_eq!(config.role, None);
        assert_eq!(config.device_roles.len(), 2);
        assert!(
            config
                .to_string()
                .contains("device_roles = GPU-a=light,GPU-b=both")
        );

        for (var, value, needle) in [
            ("TANDEM_SIMULATE_GPUS", "RTX, 12 GiB", "TFLOPS"),
            ("TANDEM_DEVICE_ROLES", "GPU-a=cpu", "device_roles"),
            ("TANDEM_ROLE", "cpu", "role"),
            ("TANDEM_ROLE", "boss", "boss"),
        ] {
            let err = load(&[(var, value)], None).unwrap_err().to_string();
            assert!(err.contains(needle), "{var}={value}: {err}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn kind_timeouts_read_from_file_and_env_and_bad_ones_are_named() {
        let dir = std::env::temp_dir().join(format!("tandem-config-limits-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("limits.toml");
        std::fs::write(
            &path,
            "[kind_timeout_ms]
risk = 30000
",
        )
        .unwrap();
        let config = load(&[], Some(&path)).unwrap();
        assert_eq!(config.kind_timeout_ms.get("risk"), Some(&30_000));
        let config = load(
            &[("TANDEM_KIND_TIMEOUT_MS", "risk=5000, train=600000")],
            Some(&path),
        )
        .unwrap();
        assert_eq!(config.kind_timeout_ms.len(), 2);
        assert!(
            config
                .to_string()
                .contains("kind_timeout_ms = risk=5000,train=600000")
        );
        for (value, needle) in [
            ("risk", "is not KIND=MS"),
            ("risk=soon", "whole number of ms"),
            ("risk=0", "at least 1 ms"),
            ("=100", "a kind name"),
        ] {
            let err = load(&[("TANDEM_KIND_TIMEOUT_MS", value)], None)
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{value}: {err}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unknown_file_settings_are_refused() {
        let dir = std::env::temp_dir().join(format!("tandem-config-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.toml");
        std::fs::write(&path, "prefx = \"typo\"\n").unwrap();
        let err = load(&[], Some(&path)).unwrap_err();
        assert!(err.to_string().contains("prefx"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn secrets_never_show() {
        let config = Config {
            signing_key: Secret::new("hunter2"),
            redis_url: "rediss://app:pw@h:6380".into(),
            ..Config::default()
        };
        for shown in [config.to_string(), format!("{config:?}")] {
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(!shown.contains("pw@"), "{shown}");
            assert!(shown.contains("***"), "{shown}");
        }
        assert_eq!(config.signing_key.expose(), "hunter2");
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("redis://user:secret@host:6379/0"),
            "redis://user:***@host:6379/0"
        );
        assert_eq!(redact_url("redis://:secret@host"), "redis://:***@host");
        assert_eq!(redact_url("redis://host:6379"), "redis://host:6379");
        let config = Config {
            redis_url: "redis://u:pw@h".into(),
            ..Config::default()
        };
        assert!(!config.to_string().contains("pw"));
    }
}
