//! How the tool ends: the exit status an error maps to (one table for both
//! binaries, `tandem_shared::exit`, documented in the README), and errors
//! worded for a shell user rather than a Rust caller.

use tandem_shared::Class;
use tandem_shared::config::ConfigError;
use tandem_shared::exit;
use tandem_shared::store::StoreError;

use tandem_producer::ProducerError;

/// A bad argument the tool itself found (`--params` that is not JSON, a
/// size it cannot read): exit 2, like clap's own argument errors.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Usage(pub String);

/// The exit status for the error that ended a command: the first cause in
/// the chain that one of the table's codes names, else 1.
pub(crate) fn exit_code(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if cause.is::<Usage>() || cause.is::<ConfigError>() {
            return exit::USAGE;
        }
        // A wrong password or user is the configuration's fault: retrying
        // will not help, as it may where Redis is unreachable.
        if cause
            .downcast_ref::<redis::RedisError>()
            .is_some_and(is_refused_credentials)
        {
            return exit::USAGE;
        }
        if let Some(err) = cause.downcast_ref::<ProducerError>() {
            match err {
                ProducerError::Config(_)
                | ProducerError::BadParams { .. }
                | ProducerError::PayloadTooLarge { .. }
                | ProducerError::MissingClass(_)
                | ProducerError::BadIdempotencyKey(_)
                | ProducerError::Schedule(_)
                | ProducerError::ScheduleNameTaken { .. }
                | ProducerError::Workflow(_) => return exit::USAGE,
                ProducerError::NotFound(_)
                | ProducerError::ScheduleNotFound(_)
                | ProducerError::WorkflowNotFound(_) => {
                    return exit::NOT_FOUND;
                }
                ProducerError::Timeout { .. } => return exit::TIMED_OUT,
                ProducerError::TaskFailed { .. } => return exit::TASK_FAILED,
                ProducerError::Connect { source, .. } | ProducerError::Store(source)
                    if source.is_connection() =>
                {
                    return exit::UNREACHABLE;
                }
                _ => {}
            }
        }
        if let Some(err) = cause.downcast_ref::<StoreError>()
            && err.is_connection()
        {
            return exit::UNREACHABLE;
        }
    }
    exit::ERROR
}

/// The error as one line for stderr: each cause once, and, when Redis could
/// not be reached or refused the credentials, its URL (without the
/// password) even where the failing call did not say.
pub(crate) fn message(err: &anyhow::Error, redis_url_redacted: &str) -> String {
    let line = exit::one_line(err.chain());
    let refused = err.chain().any(|cause| {
        cause
            .downcast_ref::<redis::RedisError>()
            .is_some_and(is_refused_credentials)
    });
    if (refused || exit_code(err) == exit::UNREACHABLE) && !line.contains("cannot reach Redis") {
        format!("cannot reach Redis at {redis_url_redacted}: {line}")
    } else {
        line
    }
}

/// A producer error reworded for the shell: the library's names its Rust
/// API where the tool has a flag.
pub(crate) fn for_the_shell(err: ProducerError) -> anyhow::Error {
    match err {
        ProducerError::MissingClass(kind) => {
            let classes: Vec<&str> = Class::ALL.iter().map(|c| c.as_str()).collect();
            Usage(format!(
                "kind {kind:?} is not built in, so its class must be given with --class \
                 (one of: {})",
                classes.join(", ")
            ))
            .into()
        }
        other => other.into(),
    }
}

/// Redis refused the user or password of `redis_url`.
fn is_refused_credentials(err: &redis::RedisError) -> bool {
    err.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(err.code(), Some("NOAUTH" | "WRONGPASS"))
}
