//! End-to-end tests: each starts its own `redis-server` on a free loopback
//! port and real `tandem-worker` processes, and drives them with the
//! producer library or raw Redis commands.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

mod alerts;
mod atomicity;
mod blob_release;
mod blobs;
mod cancel;
mod cancel_race;
mod chaos;
mod cli;
mod cli_views;
mod compose;
mod compute;
mod cpu_fallback;
mod dashboard;
mod deadline;
mod delayed;
mod events;
mod exit_codes;
mod faults;
#[cfg(feature = "gpu-tests")]
mod gpu_real;
mod gpus;
mod ha;
mod idempotency;
mod kinds;
mod kinds_cli;
mod metrics;
mod model_kinds;
mod models;
mod parity;
mod pause;
mod pipeline;
mod portfolio_split;
mod prefetch;
mod priority;
mod producer;
mod progress;
mod python;
mod rate_limit;
mod reliability;
mod retry;
mod routing_rules;
mod schedules;
mod security;
mod split;
mod timeouts;
mod tracing;
mod transformer;
mod views;
mod volume;
mod wakeups;
mod wire;
mod workflows;
