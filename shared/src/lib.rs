//! What Tandem producers and workers share: the task model, wire format v2,
//! the Redis key schema, the Lua scripts, the typed queue operations and the
//! configuration.
//!
//! # Layout
//!
//! - [`task`]: ids, classes, priorities, statuses, error codes.
//! - [`kind`]: the [`kind::KindSpec`] contract of a task kind, and the
//!   built-in kinds (`noop`, `sleep`, `echo`, `fail`, the compute and model
//!   kinds, the test kinds).
//! - [`device`]: GPUs, capability scores, roles, simulated GPUs.
//! - [`flow`]: flow control's vocabulary: pause targets, rate-limit
//!   targets, rates.
//! - [`routing`]: which waiting tasks a worker takes, from the worker registry.
//! - [`wire`]: the fields of entries, records, notices and worker records
//!   (wire format v2), one file per format.
//! - [`keys`]: every Redis key name.
//! - [`scripts`]: the Lua scripts of `shared/lua/`, loaded and verified.
//! - [`store`]: the queue's Redis operations, typed; the only code that
//!   sends queue commands.
//! - [`blob`]: the blob store: parameters and results above
//!   `blob_threshold_bytes`, stored once by SHA-256 (in Redis, a shared
//!   directory or S3) and passed by reference.
//! - [`model_format`]: the price-prediction model (an MLP) and its safetensors file.
//! - [`msgpack`]: parameter and result encoding.
//! - [`recurring`]: recurring schedules without I/O: cron patterns and
//!   periods, next fire times (DST included), the catch-up policy, the ids
//!   of the tasks ticks create.
//! - [`signature`]: optional HMAC signing of task entries.
//! - [`connect`]: Redis clients from the configuration (TLS included).
//! - [`config`]: the one configuration type.
//! - [`backoff`]: how retries are spaced (doubling, capped, optional jitter).
//! - [`clock`]: wall-clock milliseconds since the Unix epoch ([`clock::now_ms`]).
//! - [`logging`]: log set-up (text or JSON, `RUST_LOG` or `log_level`).
//! - [`exit`]: the exit statuses of both binaries, and how they print errors.
//! - [`workflow`]: workflows without I/O: the graph of tasks and its checks,
//!   the placeholders that take a parent's result, the workflow file.
//!
//! # Example
//!
//! ```no_run
//! use tandem_shared::{config::Config, store::Store};
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let config = Config::load(None)?;
//! let store = Store::connect(&config).await?;
//! for stream in store.queue_stats(&config.classes).await? {
//!     println!("{}: {} waiting", stream.key, stream.waiting);
//! }
//! # Ok(()) }
//! ```

pub mod backoff;
pub mod blob;
pub mod clock;
pub mod config;
pub mod connect;
pub mod device;
pub mod exit;
pub mod flow;
pub mod keys;
pub mod kind;
pub mod logging;
pub mod model_format;
pub mod msgpack;
pub mod recurring;
pub mod routing;
pub mod scripts;
pub mod signature;
pub mod store;
pub mod task;
pub mod wire;
pub mod workflow;

pub use config::Config;
pub use task::{Class, ErrorCode, Priority, Status, TaskId};
