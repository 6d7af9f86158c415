//! Wire format v2: the fields of a task entry, of a task record, of a
//! completion notice and of a worker's registry record.
//! docs/wire-format.md is the prose version of this module.
//!
//! Only this module (and the Lua scripts in `shared/lua/`) knows the field
//! names, and inside it only [`field`] spells them. Everything but the
//! `params` and `result` blobs is plain UTF-8 text so `redis-cli` shows it
//! as is; the blobs are MessagePack.
//!
//! # Layout
//!
//! - [`field`]: every field name, as constants (`field::worker` for the
//!   registry record, also reachable as [`worker_field`]).
//! - `entry`: [`NewTask`] (what a producer submits) and [`TaskEntry`] (what
//!   a worker reads from a stream, strictly: [`EntryError`] says why not).
//! - `record`: [`TaskRecord`], the task record hash, read leniently.
//! - `notice`: [`Finish`], what a commit writes into the record and the
//!   completion notice repeats; a notice reads as a [`TaskRecord`].
//! - `worker_record`: [`WorkerInfo`] and [`WorkerMetrics`], a worker's
//!   registry record.
//! - `schedule`: [`ScheduleDef`] and [`ScheduleRecord`], a recurring
//!   schedule's hash (revision 2.2).
//! - `event`: [`TaskEvent`], an entry of a class's lifecycle events stream.
//! - `reader`: the one field reader all of them decode with, which names a
//!   missing or malformed field in its error.

mod entry;
mod event;
pub mod field;
mod notice;
mod reader;
mod record;
mod schedule;
mod worker_record;

pub use entry::{EntryError, NewTask, RunAt, SplitRole, TaskEntry};
pub use event::TaskEvent;
pub use field::worker as worker_field;
pub use notice::{Finish, FinishOutcome};
pub use record::{TaskFailure, TaskProgress, TaskRecord};
pub use schedule::{ScheduleDef, ScheduleRecord};
pub use worker_record::{LATENCY_BUCKETS_MS, WorkerInfo, WorkerMetrics};

/// The wire version this build writes and the only one it reads. Version 2
/// moved reply streams under their class's hash tag
/// (`tandem:{<class>}:reply:<producer id>`): a version 1 producer's
/// `reply_to` would never be notified, so its tasks are refused instead.
pub const WIRE_VERSION: u32 = 2;

/// An entry's fields as Redis returns them.
pub type Fields = Vec<(Vec<u8>, Vec<u8>)>;
