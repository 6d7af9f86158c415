//! The Redis key schema. Every key Tandem touches is built here.
//!
//! Keys of one class carry the class as a Redis Cluster hash tag
//! (`tandem:{heavy}:...`), so a class's streams, task records, idempotency
//! keys and producers' reply streams share a slot and one Lua script may
//! touch all of them, while different classes spread over a cluster. The
//! model keys share the tag `{models}`. See docs/wire-format.md.

use crate::task::{Class, Priority, TaskId};

/// The consumer group every worker joins on every task stream.
pub const GROUP: &str = "workers";

/// Builds key names under one prefix. The keys a worker names for every
/// task (streams, delayed sets, dead-letter streams) are built once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
    /// Per class (in `Class::ALL` order): the stream of each priority (in
    /// `Priority::ALL` order), the delayed set, the dead-letter stream.
    per_class: Vec<([String; 4], String, String)>,
}

impl Keys {
    /// `prefix` must be non-empty and free of braces and whitespace; the
    /// config module checks that before it gets here.
    pub fn new(prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        let per_class = Class::ALL
            .iter()
            .map(|&class| {
                let base = format!("{prefix}:{{{class}}}:");
                let streams = [
                    Priority::Critical,
                    Priority::High,
                    Priority::Normal,
                    Priority::Low,
                ]
                .map(|priority| format!("{base}stream:{priority}"));
                (streams, format!("{base}delayed"), format!("{base}dead"))
            })
            .collect();
        Self { prefix, per_class }
    }

    fn class_keys(&self, class: Class) -> &([String; 4], String, String) {
        &self.per_class[class.index()]
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The part shared by every key of a class: `tandem:{heavy}:`.
    pub fn class_base(&self, class: Class) -> String {
        format!("{}:{{{}}}:", self.prefix, class)
    }

    /// The stream of waiting tasks of one class and priority.
    pub fn stream(&self, class: Class, priority: Priority) -> String {
        self.stream_ref(class, priority).to_owned()
    }

    /// [`Keys::stream`], without allocating.
    pub fn stream_ref(&self, class: Class, priority: Priority) -> &str {
        &self.class_keys(class).0[priority.index()]
    }

    /// A task's record: its status, metadata and, once finished, its result.
    pub fn task(&self, class: Class, id: &TaskId) -> String {
        format!("{}task:{}", self.class_base(class), id)
    }

    /// Task ids waiting for a retry, scored by when it is due (ms).
    pub fn delayed(&self, class: Class) -> &str {
        &self.class_keys(class).1
    }

    /// A class's flow control (a hash): its pauses and rate limits, which
    /// the claim script reads. See docs/wire-format.md.
    pub fn flow(&self, class: Class) -> String {
        format!("{}flow", self.class_base(class))
    }

    /// The rate limits' state (a hash): per limit, the time its next start
    /// is allowed (GCRA's theoretical arrival time), microseconds.
    pub fn limit_tat(&self, class: Class) -> String {
        format!("{}limit_tat", self.class_base(class))
    }

    /// Tasks of a paused kind, parked until it resumes (a sorted set, by
    /// when each was parked).
    pub fn held(&self, class: Class, kind: &str) -> String {
        format!("{}held:{}", self.class_base(class), kind)
    }

    /// The channel that wakes the workers' promoters: a delayed set got an
    /// earlier head, or a resume released held tasks.
    pub fn promote_channel(&self) -> String {
        format!("{}:promote", self.prefix)
    }

    /// A task's entry fields while it waits for a retry.
    pub fn retry(&self, class: Class, id: &TaskId) -> String {
        format!("{}retry:{}", self.class_base(class), id)
    }

    /// A split task's entry fields while its shards run.
    pub fn split(&self, class: Class, id: &TaskId) -> String {
        format!("{}split:{}", self.class_base(class), id)
    }

    /// A split task's shard results, by shard index, until it merges.
    pub fn parts(&self, class: Class, id: &TaskId) -> String {
        format!("{}parts:{}", self.class_base(class), id)
    }

    /// A workflow's hash (its state, graph and nodes' record keys), under
    /// the tag of its first node's class.
    pub fn workflow(&self, class: Class, id: &TaskId) -> String {
        format!("{}workflow:{}", self.class_base(class), id)
    }

    /// The recent workflows whose hash is under this class's tag: ids
    /// scored by submit time (ms), the newest
    /// [`crate::store::RECENT_WORKFLOWS_MAX`] kept (`workflow_submit.lua`).
    pub fn workflows(&self, class: Class) -> String {
        format!("{}workflows", self.class_base(class))
    }

    /// A waiting workflow node's entry fields (and its parents' results so
    /// far, `input:<node>`), until its last parent succeeds.
    pub fn workflow_wait(&self, class: Class, id: &TaskId) -> String {
        format!("{}wait:{}", self.class_base(class), id)
    }

    /// The lifecycle events of a class's tasks (a stream, capped).
    pub fn events(&self, class: Class) -> String {
        format!("{}events", self.class_base(class))
    }

    /// The state index of a class: task ids in `state` (`running`,
    /// `succeeded`, ...), scored by when they entered it (store::index).
    pub fn index(&self, class: Class, state: &str) -> String {
        format!("{}index:{}", self.class_base(class), state)
    }

    /// Parameter blob references given back by tasks of a class that ended
    /// without a worker (a cancel while queued, retrying, delayed or
    /// waiting; a workflow's cancel or fail fast): a list of `<ms> <params>`
    /// that workers drain, releasing each once (revision 2.16,
    /// `BlobStore::drain_releases`).
    pub fn blob_releases(&self, class: Class) -> String {
        format!("{}blobs:release", self.class_base(class))
    }

    /// The dead-letter stream of a class.
    pub fn dead(&self, class: Class) -> &str {
        &self.class_keys(class).2
    }

    /// Maps an idempotency key to the task id it created. Scoped per class.
    pub fn idempotency(&self, class: Class, key: &str) -> String {
        format!("{}idem:{}", self.class_base(class), key)
    }

    /// The stream a producer reads to learn that its tasks of `class`
    /// finished: one per producer and class, under the class's hash tag, so
    /// the script that finishes a task writes the notice in the task's slot.
    pub fn reply(&self, class: Class, producer_id: &str) -> String {
        format!("{}reply:{}", self.class_base(class), producer_id)
    }

    /// True when `key` is a reply stream of some class under this prefix.
    pub fn is_reply(&self, key: &str) -> bool {
        Class::ALL
            .iter()
            .any(|&class| self.is_reply_for(class, key))
    }

    /// True when `key` is a reply stream of `class` under this prefix.
    /// Workers only notify such keys for a task of `class`, whatever an
    /// entry's `reply_to` says: any other key may live in another slot.
    pub fn is_reply_for(&self, class: Class, key: &str) -> bool {
        key.strip_prefix(&self.prefix)
            .and_then(|rest| rest.strip_prefix(":{"))
            .and_then(|rest| rest.strip_prefix(class.as_str()))
            .and_then(|rest| rest.strip_prefix("}:reply:"))
            .is_some_and(|id| !id.is_empty())
    }

    /// A recurring schedule of tasks of `class` (a hash: its definition and
    /// its state), under the class's hash tag so the script that fires it
    /// creates the task in the same slot.
    pub fn schedule(&self, class: Class, name: &str) -> String {
        format!("{}schedule:{}", self.class_base(class), name)
    }

    /// The names of a class's schedules, scored by their next fire time
    /// (ms; `+inf` while paused or unreadable): what workers poll.
    pub fn schedules(&self, class: Class) -> String {
        format!("{}schedules", self.class_base(class))
    }

    /// A key nothing deletes, one per class in the class's slot (so on its
    /// master in Cluster): workers set it and check that it is still there;
    /// its absence means Redis lost the class's data (restarted without
    /// persistence, flushed). A string: the Unix ms it was set.
    pub fn canary(&self, class: Class) -> String {
        format!("{}canary", self.class_base(class))
    }

    /// The last data loss a worker saw (a hash; see
    /// `Store::record_data_loss`), kept for `result_ttl_s`.
    pub fn data_lost(&self) -> String {
        format!("{}:data-lost", self.prefix)
    }

    /// A worker's registry record (a hash with a heartbeat TTL).
    pub fn worker(&self, worker_id: &str) -> String {
        format!("{}:worker:{}", self.prefix, worker_id)
    }

    /// The set of registered worker ids.
    pub fn workers(&self) -> String {
        format!("{}:workers", self.prefix)
    }

    /// A registered model's record (a hash): where it lives, its shape,
    /// class, hash and version. The model keys share one hash tag
    /// (`{models}`), so one MULTI may write a record, its blob and the index.
    pub fn model(&self, name: &str) -> String {
        format!("{}:{{models}}:model:{}", self.prefix, name)
    }

    /// An uploaded model's file, for models kept in Redis.
    pub fn model_blob(&self, name: &str) -> String {
        format!("{}:{{models}}:model:{}:blob", self.prefix, name)
    }

    /// The set of registered model names.
    pub fn models(&self) -> String {
        format!("{}:{{models}}:index", self.prefix)
    }

    /// The pub/sub channel on which cancel requests for running tasks go out.
    pub fn cancel_channel(&self) -> String {
        format!("{}:cancel", self.prefix)
    }

    /// The stream of alerts workers raise (capped, newest last).
    pub fn alerts(&self) -> String {
        format!("{}:alerts", self.prefix)
    }

    /// Held for `alert_interval_ms` by the worker that checks a fleet-wide
    /// alert (`queue_stalled`, ...), so the fleet raises it once per interval.
    pub fn alert_lock(&self, alert: &str) -> String {
        format!("{}:alert-lock:{}", self.prefix, alert)
    }

    /// A hash of each dead-letter stream's `entries-added` at the last
    /// `dead_letters_growing` check, so any worker can compare with it.
    pub fn alert_dead_seen(&self) -> String {
        format!("{}:alert-dead-seen", self.prefix)
    }

    /// The `SCAN MATCH` pattern of every key under this prefix (the
    /// prefix holds no glob characters: the configuration allows only
    /// letters, digits, '-', '_', '.' and '@').
    pub fn scan_pattern(&self) -> String {
        format!("{}:*", self.prefix)
    }

    /// Why no worker reads the stream `key` (under this prefix), in words;
    /// `None` when it is a stream Tandem uses: a task stream of a known
    /// class and priority, a reply stream, a dead-letter stream, an events
    /// stream, or the alerts stream.
    pub fn unknown_stream(&self, key: &str) -> Option<String> {
        let known = Class::ALL.iter().any(|&class| {
            self.class_keys(class).0.iter().any(|s| s == key)
                || self.dead(class) == key
                || self.events(class) == key
        }) || self.is_reply(key)
            || key == self.alerts();
        if known {
            return None;
        }
        let list = |names: &[&str]| names.join(", ");
        let classes: Vec<&str> = Class::ALL.iter().map(|c| c.as_str()).collect();
        let priorities: Vec<&str> = Priority::ALL.iter().map(|p| p.as_str()).collect();
        let shape = format!("{}:{{<class>}}:stream:<priority>", self.prefix);
        // `<prefix>:{<tag>}:stream:<priority>`: say which part is wrong.
        let task_like = key
            .strip_prefix(&self.prefix)
            .and_then(|rest| rest.strip_prefix(":{"))
            .and_then(|rest| rest.split_once("}:stream:"));
        Some(match task_like {
            Some((class, _)) if class.parse::<Class>().is_err() => {
                format!("class {class:?} is not one of {}", list(&classes))
            }
            Some((_, priority)) => {
                format!("priority {priority:?} is not one of {}", list(&priorities))
            }
            None => format!("not a task stream ({shape})"),
        })
    }

    /// Every task stream, highest priority first, then in `classes` order.
    pub fn streams_in_claim_order(&self, classes: &[Class]) -> Vec<(Class, Priority, String)> {
        Priority::ALL
            .iter()
            .flat_map(|&priority| {
                classes
                    .iter()
                    .map(move |&class| (class, priority, self.stream(class, priority)))
            })
            .collect()
    }
    /// The part shared by every key of one blob (shared/src/blob/):
    /// `tandem:{blob:<sha256>}:`, its hash tag keeping them in one slot.
    /// Then `meta` (its length, once complete), `refs` (its reference
    /// count), `data` (its bytes, with the Redis backend) and
    /// `partial:<uuid>` (an upload under way).
    pub fn blob(&self, sha256: &str) -> String {
        format!("{}:{{blob:{}}}:", self.prefix, sha256)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names_read_plainly() {
        let keys = Keys::new("tandem");
        let id: TaskId = "0193a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b".parse().unwrap();
        assert_eq!(keys.prefix(), "tandem");
        assert_eq!(
            keys.stream(Class::Heavy, Priority::Critical),
            "tandem:{heavy}:stream:critical"
        );
        assert_eq!(
            keys.task(Class::Cpu, &id),
            "tandem:{cpu}:task:0193a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b"
        );
        assert_eq!(
            keys.idempotency(Class::Light, "k1"),
            "tandem:{light}:idem:k1"
        );
        assert_eq!(keys.reply(Class::Heavy, "p1"), "tandem:{heavy}:reply:p1");
        assert_eq!(keys.worker("w1"), "tandem:worker:w1");
        assert_eq!(keys.workers(), "tandem:workers");
        assert_eq!(
            keys.schedule(Class::Cpu, "book"),
            "tandem:{cpu}:schedule:book"
        );
        assert_eq!(keys.schedules(Class::Heavy), "tandem:{heavy}:schedules");
        assert_eq!(keys.cancel_channel(), "tandem:cancel");
        assert_eq!(keys.promote_channel(), "tandem:promote");
        assert_eq!(keys.flow(Class::Heavy), "tandem:{heavy}:flow");
        assert_eq!(keys.limit_tat(Class::Cpu), "tandem:{cpu}:limit_tat");
        assert_eq!(keys.held(Class::Light, "risk"), "tandem:{light}:held:risk");
        assert_eq!(keys.model("mlp-1"), "tandem:{models}:model:mlp-1");
        assert_eq!(keys.model_blob("mlp-1"), "tandem:{models}:model:mlp-1:blob");
        assert_eq!(keys.models(), "tandem:{models}:index");
        assert_eq!(keys.alerts(), "tandem:alerts");
        assert_eq!(
            keys.alert_lock("queue_stalled"),
            "tandem:alert-lock:queue_stalled"
        );
        assert_eq!(keys.alert_dead_seen(), "tandem:alert-dead-seen");
    }

    #[test]
    fn reply_keys_are_recognised() {
        let keys = Keys::new("tq");
        let check = |key: &str, any: bool, cpu: bool| {
            assert_eq!(keys.is_reply(key), any, "is_reply({key:?})");
            assert_eq!(
                keys.is_reply_for(Class::Cpu, key),
                cpu,
                "is_reply_for(cpu, {key:?})"
            );
        };
        check("tq:{cpu}:reply:abc", true, true);
        check(&keys.reply(Class::Cpu, "abc"), true, true);
        check("tq:{heavy}:reply:abc", true, false);
        check("tq:{cpu}:reply:", false, false);
        check("tq:{gpu}:reply:abc", false, false);
        check("tq:{cpu}reply:abc", false, false);
        check("tq:reply:abc", false, false);
        check("other:{cpu}:reply:abc", false, false);
        check("tqx:{cpu}:reply:abc", false, false);
        check("tq:{cpu}:task:x", false, false);
    }

    #[test]
    fn streams_no_worker_reads_are_told_apart_and_explained() {
        let keys = Keys::new("tq");
        for known in [
            keys.stream(Class::Cpu, Priority::Low),
            keys.stream(Class::Heavy, Priority::Critical),
            keys.dead(Class::Parallel).to_owned(),
            keys.reply(Class::Light, "p1"),
            keys.alerts(),
            keys.events(Class::Heavy),
        ] {
            assert_eq!(keys.unknown_stream(&known), None, "{known}");
        }
        let why = |key: &str| keys.unknown_stream(key).unwrap_or_default();
        assert_eq!(
            why("tq:{cpu}:stream:urgent"),
            "priority \"urgent\" is not one of critical, high, normal, low"
        );
        assert_eq!(
            why("tq:{bogus}:stream:normal"),
            "class \"bogus\" is not one of heavy, light, parallel, cpu"
        );
        assert_eq!(
            why("tq:stream:normal"),
            "not a task stream (tq:{<class>}:stream:<priority>)"
        );
        assert!(why("tq:{cpu}:reply:").starts_with("not a task stream"));
        assert_eq!(keys.scan_pattern(), "tq:*");
    }

    /// The Lua scripts build some keys by hand from a stream key's class
    /// part (`base_of`, then `base .. 'delayed'`, `base .. 'retry:' .. id`,
    /// ...): every such name must be the one these functions give, and
    /// each function's name must be one the scripts build.
    #[test]
    fn the_names_the_lua_scripts_build_are_these() {
        let keys = Keys::new("tandem");
        let id: TaskId = "0193a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b".parse().unwrap();
        let class = Class::Parallel;
        // base_of: everything up to `stream:<priority>`.
        let stream = keys.stream(class, Priority::High);
        let base = stream.strip_suffix("stream:high").unwrap();
        assert_eq!(base, keys.class_base(class));
        assert!(base.starts_with(keys.prefix()));
        let id = id.to_string();
        let expected: Vec<(&str, String, String)> = vec![
            ("delayed", String::new(), keys.delayed(class).to_owned()),
            ("dead", String::new(), keys.dead(class).to_owned()),
            ("events", String::new(), keys.events(class)),
            (
                "retry:",
                id.clone(),
                keys.retry(class, &id.parse().unwrap()),
            ),
            (
                "split:",
                id.clone(),
                keys.split(class, &id.parse().unwrap()),
            ),
            (
                "parts:",
                id.clone(),
                keys.parts(class, &id.parse().unwrap()),
            ),
            ("task:", id.clone(), keys.task(class, &id.parse().unwrap())),
            ("stream:", "high".into(), stream.clone()),
            ("reply:", "p1".into(), keys.reply(class, "p1")),
            ("flow", String::new(), keys.flow(class)),
            ("limit_tat", String::new(), keys.limit_tat(class)),
            ("held:", "risk".into(), keys.held(class, "risk")),
            (
                "wait:",
                id.clone(),
                keys.workflow_wait(class, &id.parse().unwrap()),
            ),
            ("index:", "running".into(), keys.index(class, "running")),
            ("workflows", String::new(), keys.workflows(class)),
            ("blobs:release", String::new(), keys.blob_releases(class)),
        ];
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("lua");
        let mut built = std::collections::BTreeSet::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            for (at, pattern) in text.match_indices("base .. '") {
                let rest = &text[at + pattern.len()..];
                let suffix = &rest[..rest.find('\'').unwrap()];
                built.insert(suffix.to_owned());
            }
        }
        for suffix in &built {
            let (_, tail, key) = expected
                .iter()
                .find(|(s, _, _)| s == suffix)
                .unwrap_or_else(|| {
                    panic!("the scripts build `base .. '{suffix}'`, which no test here names")
                });
            assert_eq!(&format!("{base}{suffix}{tail}"), key, "{suffix}");
        }
        for (suffix, _, _) in &expected {
            assert!(
                built.contains(*suffix),
                "no script builds `base .. '{suffix}'`"
            );
        }
    }

    #[test]
    fn model_keys_share_one_slot() {
        let keys = Keys::new("tq");
        for key in [keys.model("m"), keys.model_blob("m"), keys.models()] {
            assert!(key.starts_with("tq:{models}:"), "{key}");
        }
    }

    #[test]
    fn claim_order_is_priority_major() {
        let keys = Keys::new("t");
        let order = keys.streams_in_claim_order(&[Class::Cpu, Class::Light]);
        let names: Vec<_> = order.iter().map(|(c, p, _)| format!("{c}/{p}")).collect();
        assert_eq!(
            names,
            [
                "cpu/critical",
                "light/critical",
                "cpu/high",
                "light/high",
                "cpu/normal",
                "light/normal",
                "cpu/low",
                "light/low"
            ]
        );
    }
}
