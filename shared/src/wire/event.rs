//! A lifecycle event: one entry of a class's events stream
//! (`tandem:{<class>}:events`), written by the scripts that change a task
//! (`emit_event` in `shared/lua/common.lua`). Read leniently, as records
//! are: an unknown event name is kept as text, unknown fields are ignored,
//! so a newer writer's events still read.

use super::field;
use super::reader::FieldReader;
use crate::task::{Class, ErrorCode, TaskId};

/// One lifecycle event.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TaskEvent {
    /// The stream entry id (`<ms>-<seq>`), where a reader resumes.
    pub entry_id: String,
    /// `submitted`, `started`, `progress`, `retried`, `succeeded`,
    /// `failed`, `dead_lettered`, `cancelled`, `expired`, `requeued` or
    /// `released` (a workflow node whose last parent succeeded).
    pub event: String,
    pub id: Option<TaskId>,
    pub kind: Option<String>,
    pub class: Option<Class>,
    pub worker: Option<String>,
    pub device: Option<String>,
    pub attempt: Option<u32>,
    /// When the script wrote it (Redis clock).
    pub at_ms: Option<u64>,
    pub error_code: Option<ErrorCode>,
    /// On `retried`: when the next attempt is due.
    pub retry_at_ms: Option<u64>,
    /// On `failed` and `dead_lettered`: the dead letter's id.
    pub dead_letter: Option<String>,
    /// On `progress`: the fraction done (0 to 1) and the message.
    pub progress: Option<f64>,
    pub progress_msg: Option<String>,
    /// On `released`: the parent node whose commit released it.
    pub parent_node: Option<String>,
}

impl TaskEvent {
    /// Reads an events stream entry.
    pub fn from_fields<'a>(
        entry_id: &str,
        fields: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
    ) -> Self {
        let fields = FieldReader::last_wins(fields);
        let text = |name| fields.lenient_text(name).map(str::to_owned);
        Self {
            entry_id: entry_id.to_owned(),
            event: text(field::EVENT).unwrap_or_default(),
            id: fields.lenient(field::ID),
            kind: text(field::KIND),
            class: fields.lenient(field::CLASS),
            worker: text(field::WORKER),
            device: text(field::DEVICE),
            attempt: fields.lenient(field::ATTEMPT),
            at_ms: fields.lenient(field::AT_MS),
            error_code: fields
                .lenient_text(field::ERROR_CODE)
                .and_then(|code| ErrorCode::parse(code).ok()),
            retry_at_ms: fields.lenient(field::RETRY_AT_MS),
            dead_letter: text(field::DEAD_LETTER),
            progress: fields
                .lenient::<f64>(field::PROGRESS)
                .filter(|p| p.is_finite()),
            progress_msg: text(field::PROGRESS_MSG),
            parent_node: text(field::PARENT_NODE),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(pairs: &[(&str, &str)]) -> TaskEvent {
        TaskEvent::from_fields(
            "1-0",
            pairs.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())),
        )
    }

    #[test]
    fn an_event_reads_every_field_it_carries() {
        let id = TaskId::new();
        let event = read(&[
            (field::EVENT, "retried"),
            (field::ID, &id.to_string()),
            (field::CLASS, "cpu"),
            (field::AT_MS, "1700000000000"),
            (field::KIND, "fail"),
            (field::WORKER, "w1"),
            (field::DEVICE, "cpu"),
            (field::ATTEMPT, "2"),
            (field::ERROR_CODE, "HANDLER_ERROR"),
            (field::RETRY_AT_MS, "1700000001000"),
        ]);
        assert_eq!(event.event, "retried");
        assert_eq!(event.id, Some(id));
        assert_eq!(event.class, Some(Class::Cpu));
        assert_eq!(event.attempt, Some(2));
        assert_eq!(
            event.error_code.as_ref().map(|c| c.as_str()),
            Some("HANDLER_ERROR")
        );
        assert_eq!(event.retry_at_ms, Some(1_700_000_001_000));
        assert_eq!(event.entry_id, "1-0");
    }

    #[test]
    fn malformed_values_read_as_absent() {
        let event = read(&[
            (field::EVENT, "started"),
            (field::ID, "not-a-uuid"),
            (field::PROGRESS, "NaN"),
            (field::ATTEMPT, "-1"),
            (field::CLASS, "gpu"),
        ]);
        assert_eq!(event.event, "started");
        assert_eq!(event.id, None);
        assert_eq!(event.progress, None);
        assert_eq!(event.attempt, None);
        assert_eq!(event.class, None);
    }
}
