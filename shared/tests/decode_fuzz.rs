//! Property tests (a fuzz target run by proptest) on everything that decodes
//! data from Redis: entries, records, notices. Whatever the bytes, decoding
//! returns a value or a typed error, never a panic; and what a producer
//! encodes, a worker decodes back.

use proptest::prelude::*;
use tandem_shared::wire::{Fields, NewTask, TaskEntry, TaskRecord};
use tandem_shared::{Class, ErrorCode, Priority, TaskId};

const NAMES: &[&str] = &[
    "version",
    "id",
    "kind",
    "class",
    "priority",
    "attempt",
    "max_attempts",
    "memory_bytes",
    "deadline_ms",
    "producer",
    "submitted_at_ms",
    "reply_to",
    "params",
    "signature",
    "status",
    "result",
    "error_code",
    "error_message",
    "history",
    "started_at_ms",
];

fn field_name() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::sample::select(NAMES).prop_map(|n| n.as_bytes().to_vec()),
        proptest::collection::vec(any::<u8>(), 0..12),
    ]
}

fn field_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"1".to_vec()),
        Just(b"2".to_vec()),
        Just(TaskId::new().to_string().into_bytes()),
        "[a-z_]{0,12}".prop_map(String::into_bytes),
        "[0-9]{0,20}".prop_map(String::into_bytes),
        proptest::collection::vec(any::<u8>(), 0..64),
    ]
}

fn fields() -> impl Strategy<Value = Fields> {
    proptest::collection::vec((field_name(), field_value()), 0..20)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn decoding_any_entry_never_panics(fields in fields(), class in 0..4usize, priority in 0..4usize) {
        let class = Class::ALL[class];
        let priority = Priority::ALL[priority];
        match TaskEntry::decode(&fields, class, priority) {
            Ok(entry) => {
                prop_assert_eq!(entry.class, class);
                prop_assert!(!entry.kind.is_empty());
            }
            Err(err) => {
                let known = [ErrorCode::BAD_PAYLOAD, ErrorCode::BAD_WIRE_VERSION];
                prop_assert!(known.contains(&err.code), "{}", err);
                prop_assert!(!err.message.is_empty());
            }
        }
    }

    #[test]
    fn reading_any_record_never_panics(fields in fields()) {
        let record = TaskRecord::from_fields(fields.iter().map(|(k, v)| (k.as_slice(), v.as_slice())));
        // A record that names a status names a known one.
        if let Some(status) = record.status {
            prop_assert!(status.as_str().parse::<tandem_shared::Status>().is_ok());
        }
    }

    #[test]
    fn what_a_producer_encodes_a_worker_decodes(
        kind in "[a-z][a-z0-9_]{0,20}",
        params in proptest::collection::vec(any::<u8>(), 0..200),
        max_attempts in 1u32..10,
        memory in any::<u64>(),
        class in 0..4usize,
        priority in 0..4usize,
    ) {
        let task = NewTask {
            id: TaskId::new(),
            kind,
            class: Class::ALL[class],
            priority: Priority::ALL[priority],
            max_attempts,
            memory_bytes: memory,
            deadline_in_ms: None,
            timeout_ms: None,
            idempotency_key: None,
            params: params.clone(),
            signature: Some("ab".repeat(32)),
            run_at: None,
            rate_key: None,
            notice: true,
        };
        let reply_to = format!("tandem:{{{}}}:reply:producer-1", task.class);
        let mut fields: Fields = task
            .metadata("producer-1", Some(&reply_to))
            .into_iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.into_bytes()))
            .collect();
        fields.push((b"params".to_vec(), params.clone()));
        let entry = TaskEntry::decode(&fields, task.class, task.priority).unwrap();
        prop_assert_eq!(entry.id, task.id);
        prop_assert_eq!(&entry.kind, &task.kind);
        prop_assert_eq!(entry.max_attempts, max_attempts);
        prop_assert_eq!(entry.memory_bytes, memory);
        prop_assert_eq!(&entry.params, &params);
        prop_assert_eq!(&entry.signature, &task.signature);
        prop_assert_eq!(entry.signed().canonical(), task.signed(Some(&reply_to)).canonical());
    }
}
