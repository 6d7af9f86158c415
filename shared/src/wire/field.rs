//! Every field name of wire format v2, and the only place in `wire` that
//! spells one: the decoders and encoders of the other files name fields
//! through these constants, so a rename here is a rename everywhere (and a
//! new wire version).
//!
//! Entry fields are written by producers into a task stream; record fields
//! live in the task record hash; a completion notice repeats the record.
//! [`worker`] holds the fields of a worker's registry record.

pub const VERSION: &str = "version";
pub const ID: &str = "id";
pub const KIND: &str = "kind";
pub const CLASS: &str = "class";
pub const PRIORITY: &str = "priority";
pub const ATTEMPT: &str = "attempt";
pub const MAX_ATTEMPTS: &str = "max_attempts";
pub const MEMORY_BYTES: &str = "memory_bytes";
pub const DEADLINE_MS: &str = "deadline_ms";
pub const PRODUCER: &str = "producer";
pub const SUBMITTED_AT_MS: &str = "submitted_at_ms";
pub const REPLY_TO: &str = "reply_to";
pub const PARAMS: &str = "params";
pub const SIGNATURE: &str = "signature";
/// Written by workers, not producers: how often the task was handed
/// back because the device running it failed.
pub const INTERRUPTED: &str = "interrupted";
/// Written by workers when they hand a task back: the devices (comma
/// separated) whose workers leave it for another device.
pub const AVOID: &str = "avoid";
/// On a released workflow node: its parents' results, a MessagePack map
/// from parent node name to result (written by the commit that released it).
pub const INPUTS: &str = "inputs";
/// On a workflow node with children (written by `workflow_submit.lua`):
/// how many, so that its worker sends a large result by blob reference
/// (`workflow_blob_threshold_bytes`) instead of copying it into each child.
pub const FEEDS: &str = "feeds";
/// Written by workers on the shards of a split task: the parent task's
/// id, this shard's index (from 0) and the number of shards.
pub const PARENT: &str = "parent";
/// On a `released` event: the workflow node whose commit released it.
pub const PARENT_NODE: &str = "parent_node";
pub const SHARD: &str = "shard";
pub const SHARDS: &str = "shards";
/// Written by the last shard's commit on the parent's merge entry: `1`.
pub const MERGE: &str = "merge";
/// Flow control (wire 2.x, issue 13). Sent by producers as metadata pairs
/// the submit script reads and does not copy into the entry: when a
/// delayed task is due, ms since the epoch by the Redis clock, or ms from
/// now.
pub const RUN_AT_MS: &str = "run_at_ms";
pub const DELAY_MS: &str = "delay_ms";
/// A workflow node's deadline, ms (revision 2.13): sent among the node's
/// metadata pairs, read by `workflow_submit.lua` (which writes
/// `deadline_ms`) and not copied, as `run_at_ms` and `delay_ms`. A node
/// with parents keeps its delay as `wf_delay_ms` in its record until its
/// release.
pub const DEADLINE_IN_MS: &str = "deadline_in_ms";
/// The key whose rate limit (`limit:key:<rate_key>`) a task counts
/// against, besides its kind's: a tenant, a vendor, a symbol.
pub const RATE_KEY: &str = "rate_key";
/// Written by the claim script on an entry parked by a rate limit: the
/// start time it reserved, microseconds since the epoch.
pub const LIMIT_SLOT_US: &str = "limit_slot_us";

pub const STATUS: &str = "status";
pub const ENTRY: &str = "entry";
pub const IDEMPOTENCY_KEY: &str = "idempotency_key";
pub const WORKER: &str = "worker";
pub const DEVICE: &str = "device";
pub const STARTED_AT_MS: &str = "started_at_ms";
pub const FINISHED_AT_MS: &str = "finished_at_ms";
pub const RUN_US: &str = "run_us";
pub const RESULT: &str = "result";
pub const RESULT_BYTES: &str = "result_bytes";
pub const ERROR_CODE: &str = "error_code";
pub const ERROR_MESSAGE: &str = "error_message";
pub const CANCEL_REQUESTED_AT_MS: &str = "cancel_requested_at_ms";
pub const RETRY_AT_MS: &str = "retry_at_ms";
/// On a `delayed` record: why it waits (`scheduled`, `limited`, `paused`).
pub const DELAY_REASON: &str = "delay_reason";
pub const HISTORY: &str = "history";
pub const DEAD_LETTER: &str = "dead_letter";
/// On a split parent's record: shards committed so far, and the shard
/// task ids (space-separated, in shard order).
pub const SHARDS_DONE: &str = "shards_done";
pub const SHARD_IDS: &str = "shard_ids";
/// On a split parent's record once it succeeded (written by the merge's
/// commit): when its first shard started, the handler time of all its
/// shards (microseconds), and the devices they ran on (comma separated).
pub const SHARDS_STARTED_AT_MS: &str = "shards_started_at_ms";
pub const SHARDS_RUN_US: &str = "shards_run_us";
pub const SHARDS_DEVICES: &str = "shards_devices";
/// A task's run-time limit (ms from its start), in its entry and record.
pub const TIMEOUT_MS: &str = "timeout_ms";
/// A running task's last progress report (written by `progress.lua`):
/// the fraction done (0 to 1), a short message, when it was written.
pub const PROGRESS: &str = "progress";
pub const PROGRESS_MSG: &str = "progress_msg";
pub const PROGRESS_AT_MS: &str = "progress_at_ms";
/// Fields of an entry of a class's events stream (besides `id`, `kind`,
/// `class`, `worker`, `device`, `attempt`, `error_code`, `retry_at_ms`,
/// `dead_letter` and the progress fields): the event's name and time.
pub const EVENT: &str = "event";
pub const AT_MS: &str = "at_ms";

/// Registry record field names (`tandem:worker:<id>`), also reachable as
/// `wire::worker_field`.
pub mod worker {
    pub const ID: &str = "id";
    pub const HOST: &str = "host";
    pub const PID: &str = "pid";
    pub const PROCESS: &str = "process";
    pub const LIVE_SEEN: &str = "live_seen";
    pub const DEVICE: &str = "device";
    pub const ROLE: &str = "role";
    pub const HEALTH: &str = "health";
    pub const DEVICE_NAME: &str = "device_name";
    pub const DEVICE_INDEX: &str = "device_index";
    pub const PCI_BUS_ID: &str = "pci_bus_id";
    pub const SIMULATED: &str = "simulated";
    pub const SCORE: &str = "score";
    pub const COMPUTE_CAPABILITY: &str = "compute_capability";
    pub const MEMORY_TOTAL: &str = "memory_total";
    pub const MEMORY_BUDGET: &str = "memory_budget";
    pub const MEMORY_RESERVED: &str = "memory_reserved";
    pub const MODELS: &str = "models";
    pub const MEMORY_MODELS: &str = "memory_models";
    pub const MODEL_HITS: &str = "model_hits";
    pub const MODEL_MISSES: &str = "model_misses";
    pub const KERNELS_LOADED: &str = "kernels_loaded";
    pub const KERNELS_OFF: &str = "kernels_off";
    pub const KERNELS_OFF_WHY: &str = "kernels_off_why";
    pub const CPU_FALLBACK: &str = "cpu_fallback";
    pub const CLASSES: &str = "classes";
    pub const CONCURRENCY: &str = "concurrency";
    pub const STATE: &str = "state";
    pub const STARTED_AT_MS: &str = "started_at_ms";
    pub const HEARTBEAT_AT_MS: &str = "heartbeat_at_ms";
    pub const ACTIVE: &str = "active";
    pub const METRICS_AT_MS: &str = "metrics_at_ms";
    pub const GPU_UTILIZATION: &str = "gpu_utilization";
    pub const GPU_MEMORY_USED: &str = "gpu_memory_used";
    pub const GPU_TEMPERATURE_C: &str = "gpu_temperature_c";
    pub const GPU_POWER_W: &str = "gpu_power_w";
    pub const GPU_SM_CLOCK_MHZ: &str = "gpu_sm_clock_mhz";
    pub const TASKS_PER_S: &str = "tasks_per_s";
    pub const LATENCY_BUCKETS: &str = "latency_buckets";
    pub const LATENCY_SUM_MS: &str = "latency_sum_ms";
    pub const COMPLETED: &str = "completed";
    pub const ERRORS: &str = "errors";
    pub const LEASE_EXTENSIONS: &str = "lease_extensions";
    pub const RECLAIMS: &str = "reclaims";
    pub const SUCCEEDED: &str = "succeeded";
    pub const FAILED: &str = "failed";
    pub const VERSION: &str = "version";
    pub const WIRE: &str = "wire";
}

/// On the record of a task a recurring schedule created (revision 2.2):
/// the schedule's name, and the tick it was created for (Unix ms).
pub const SCHEDULE: &str = "schedule";
pub const SCHEDULED_FOR_MS: &str = "scheduled_for_ms";

/// Fields of a recurring schedule's hash (`tandem:{<class>}:schedule:<name>`,
/// revision 2.2), besides the task's own (`kind`, `class`, `priority`,
/// `max_attempts`, `memory_bytes`, `params`), which keep their names.
pub mod schedule {
    pub const NAME: &str = "name";
    pub const CRON: &str = "cron";
    pub const TZ: &str = "tz";
    pub const EVERY_MS: &str = "every_ms";
    pub const CATCH_UP: &str = "catch_up";
    pub const DEADLINE_IN_MS: &str = "deadline_in_ms";
    pub const PAUSED: &str = "paused";
    pub const NEXT_FIRE_MS: &str = "next_fire_ms";
    pub const REVISION: &str = "revision";
    pub const CREATED_AT_MS: &str = "created_at_ms";
    pub const UPDATED_AT_MS: &str = "updated_at_ms";
    pub const FIRED: &str = "fired";
    pub const SKIPPED: &str = "skipped";
    pub const LAST_FIRE_MS: &str = "last_fire_ms";
    pub const LAST_FIRED_AT_MS: &str = "last_fired_at_ms";
    pub const LAST_TASK: &str = "last_task";
    pub const ERROR: &str = "error";
}
