//! [`Task`]: what a producer submits, built and checked before it is sent.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tandem_shared::kind;
use tandem_shared::kind::KindSpec;
use tandem_shared::kind::model_kinds::{Infer, PredictBatch, Train};
use tandem_shared::wire::RunAt;
use tandem_shared::{Class, Priority, TaskId, msgpack};

use crate::error::ProducerError;

/// The kinds whose class follows the registered class of the model they
/// name: a heavy model's `infer` or `train` needs a heavy worker's room,
/// whatever its batch. (`predict_batch` keeps its own rule: heavy over
/// 100 symbols; `train` is heavy whatever its model while
/// `train_on_primary` holds.)
const MODEL_CLASS_KINDS: [&str; 2] = [Infer::KIND, Train::KIND];

/// Kinds whose device memory comes from their model's registered shape.
const MODEL_MEMORY_KINDS: [&str; 3] = [Infer::KIND, PredictBatch::KIND, Train::KIND];

/// The one field a model kind's parameters are read for here; the others
/// are skipped without being kept.
#[derive(Deserialize)]
struct ModelRef {
    model: String,
}

/// A task to submit. Build it with [`Task::of`] (typed, validated against
/// its [`KindSpec`]), [`Task::new`] (any serializable parameters) or
/// [`Task::raw`] (MessagePack you already have), then set options.
///
/// # Class
///
/// The class (the stream, and so the workers, a task goes to) is, first
/// to apply: the one set with [`Task::class`]; for `infer` (and `train`
/// when the producer's `train_on_primary` is off), the class the model
/// registry records for the named model (looked up when the task is
/// submitted); the class the kind gives its parameters (`train`: heavy,
/// the primary GPU). A model that is not registered leaves the kind's
/// class: the task is submitted anyway, and the worker fails it with
/// `MODEL_NOT_FOUND`.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    pub(crate) id: Option<TaskId>,
    pub(crate) kind: String,
    /// The class chosen with [`Task::class`], or the one the kind gives
    /// these parameters ([`Task::of`]).
    pub(crate) class: Option<Class>,
    /// Whether `class` was chosen with [`Task::class`]: then it wins over
    /// the model's class.
    pub(crate) class_chosen: bool,
    /// Set by [`Task::memory_bytes`]: the model kinds' estimate from the
    /// registered model's shape does not replace it.
    pub(crate) memory_declared: bool,
    pub(crate) priority: Priority,
    pub(crate) params: Vec<u8>,
    pub(crate) max_attempts: Option<u32>,
    pub(crate) memory_bytes: u64,
    pub(crate) deadline: Option<Duration>,
    /// The run-time limit of each attempt ([`Task::timeout`]).
    pub(crate) timeout: Option<Duration>,
    pub(crate) idempotency_key: Option<String>,
    pub(crate) run_at: Option<When>,
    pub(crate) rate_key: Option<String>,
    /// A workflow node whose parameters hold placeholders for its parents'
    /// results: the kind's checks run on the worker, once they are
    /// replaced (`workflow.rs`).
    pub(crate) takes_results: bool,
    /// Whether the commit sends this producer a completion notice
    /// ([`Task::without_notice`]).
    pub(crate) notice: bool,
}

/// When a delayed task is to run, as the producer was told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum When {
    In(Duration),
    At(SystemTime),
}

impl Task {
    /// A task of kind `K`: the parameters are validated now, and the class
    /// and memory estimate come from the kind.
    pub fn of<K: KindSpec>(params: &K::Params) -> Result<Self, ProducerError> {
        K::validate(params).map_err(|e| ProducerError::BadParams {
            kind: K::KIND.to_owned(),
            message: e.0,
        })?;
        let mut task = Self::raw(K::KIND, msgpack::encode(params)?);
        task.class = Some(K::class(params));
        task.memory_bytes = K::memory_estimate(params);
        Ok(task)
    }

    /// A task of any kind with any serializable parameters. Kinds this
    /// crate defines (`tandem_shared::kind`) are validated when submitted
    /// and get their class and memory estimate; other kinds need
    /// [`Task::class`].
    pub fn new(kind: impl Into<String>, params: &impl Serialize) -> Result<Self, ProducerError> {
        Ok(Self::raw(kind, msgpack::encode(params)?))
    }

    /// A task whose parameters are already MessagePack.
    pub fn raw(kind: impl Into<String>, params: Vec<u8>) -> Self {
        Self {
            id: None,
            kind: kind.into(),
            class: None,
            class_chosen: false,
            memory_declared: false,
            priority: Priority::Normal,
            params,
            max_attempts: None,
            memory_bytes: 0,
            deadline: None,
            timeout: None,
            idempotency_key: None,
            run_at: None,
            rate_key: None,
            takes_results: false,
            notice: true,
        }
    }

    /// Sends the task to this class, whatever its kind or model would
    /// choose.
    pub fn class(mut self, class: Class) -> Self {
        self.class = Some(class);
        self.class_chosen = true;
        self
    }

    pub fn priority(mut self, priority: Priority) -> Self {
        self.priority = priority;
        self
    }

    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Some(attempts);
        self
    }

    /// Device memory the task needs, when the kind cannot estimate it.
    pub fn memory_bytes(mut self, bytes: u64) -> Self {
        self.memory_bytes = bytes;
        self.memory_declared = true;
        self
    }

    /// A task not started within this time of its submission (by the Redis
    /// clock) never starts and ends as `expired`.
    pub fn deadline(mut self, within: Duration) -> Self {
        self.deadline = Some(within);
        self
    }

    /// A delayed task: it enters its stream this long after Redis accepts
    /// it (by the Redis clock), and no worker sees it before. Until then its
    /// status is `delayed`; cancel works on it. A deadline counts from that
    /// time. Replaces an earlier [`Task::run_at`].
    pub fn delay(mut self, after: Duration) -> Self {
        self.run_at = Some(When::In(after));
        self
    }

    /// A delayed task that runs at `time` (by the Redis clock); a time past
    /// runs it at once. See [`Task::delay`].
    pub fn run_at(mut self, time: SystemTime) -> Self {
        self.run_at = Some(When::At(time));
        self
    }

    /// Fire and forget: the worker that commits the task writes no
    /// completion notice to this producer (the task's entry names no reply
    /// stream). The outcome is in the task's record all the same, for
    /// `tandem task`, [`Producer::status`], [`Producer::record`] and
    /// [`Producer::wait`]; a wait on such a task re-reads the record (after
    /// 1 s, then backing off to 8 s) instead of being told, so use it
    /// for tasks whose outcome nobody awaits (`tandem submit --no-notice`).
    /// Saves the commit's notice and the producer's read of
    /// it (see docs/BENCHMARKS.md). A workflow's nodes always notify.
    ///
    /// [`Producer::status`]: crate::Producer::status
    /// [`Producer::record`]: crate::Producer::record
    /// [`Producer::wait`]: crate::Producer::wait
    pub fn without_notice(mut self) -> Self {
        self.notice = false;
        self
    }

    /// Counts the task against the rate limit of this key (a tenant, a
    /// vendor, a symbol: `tandem limit set key:<key> 100/s`) besides its
    /// kind's. Without a limit on the key it changes nothing.
    pub fn rate_key(mut self, key: impl Into<String>) -> Self {
        self.rate_key = Some(key.into());
        self
    }

    /// A run-time limit for each attempt, from its start: past it the
    /// worker stops the task, which fails with `TIMEOUT` (and is retried
    /// while attempts remain). A computation that does not stop within the
    /// worker's `timeout_grace_ms` is abandoned: the task fails all the
    /// same, and its slot stays taken until the computation ends. Unlike
    /// [`Task::deadline`], which bounds the wait before the start. At least
    /// 1 ms.
    pub fn timeout(mut self, limit: Duration) -> Self {
        self.timeout = Some(limit);
        self
    }

    /// Submitting again with the same key (within the idempotency TTL, in
    /// the same class) returns the first task's id and creates nothing.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Uses this id instead of a fresh UUID v7.
    pub fn with_id(mut self, id: TaskId) -> Self {
        self.id = Some(id);
        self
    }

    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The class the task has before it is submitted: the one chosen with
    /// [`Task::class`], or the one its kind gives its parameters
    /// ([`Task::of`]); `None` when neither set one. Submitting may still
    /// send an `infer` or `train` task without a chosen class to its
    /// model's registered class (see [`Task`]).
    pub fn preset_class(&self) -> Option<Class> {
        self.class
    }

    /// The model whose registered class this task goes to: the `model`
    /// parameter of an `infer` or `train` task with no class set. `None`
    /// also when the parameters do not decode; checking them reports that.
    pub(crate) fn model_deciding_class(&self, train_on_primary: bool) -> Option<String> {
        if self.class_chosen
            || !MODEL_CLASS_KINDS.contains(&self.kind.as_str())
            || (train_on_primary && self.kind == Train::KIND)
        {
            return None;
        }
        msgpack::decode::<ModelRef>(&self.params)
            .ok()
            .map(|r| r.model)
    }

    /// The model whose registered shape decides this task's device memory:
    /// the `model` parameter of an `infer`, `predict_batch` or `train` task
    /// that declares no memory of its own (a transformer's activations are
    /// not an MLP's, and only the registry record tells them apart).
    pub(crate) fn model_deciding_memory(&self) -> Option<String> {
        if self.memory_declared || !MODEL_MEMORY_KINDS.contains(&self.kind.as_str()) {
            return None;
        }
        msgpack::decode::<ModelRef>(&self.params)
            .ok()
            .map(|r| r.model)
    }

    /// Checks everything that can be checked before sending, and fills in
    /// what the submitter left to defaults.
    pub(crate) fn into_new_task(
        self,
        default_max_attempts: u32,
        max_payload_bytes: usize,
    ) -> Result<tandem_shared::wire::NewTask, ProducerError> {
        let bad = |message: String| ProducerError::BadParams {
            kind: self.kind.clone(),
            message,
        };
        if self.kind.is_empty() || self.kind.len() > 64 || !self.kind.chars().all(is_name_char) {
            return Err(bad(format!(
                "kind {:?} must be 1-64 letters, digits, '_', '-' or '.'",
                self.kind
            )));
        }
        if self.params.len() > max_payload_bytes {
            return Err(ProducerError::PayloadTooLarge {
                bytes: self.params.len(),
                limit: max_payload_bytes,
            });
        }
        let known = kind::known(&self.kind, &self.params);
        if let Some(Err(e)) = known.as_ref().map(|k| k.checked.clone())
            && !self.takes_results
        {
            return Err(bad(e.0));
        }
        if let Some(key) = &self.idempotency_key
            && (key.is_empty()
                || key.len() > 200
                || key.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err(ProducerError::BadIdempotencyKey(key.clone()));
        }
        if let Some(key) = &self.rate_key {
            tandem_shared::flow::check_name("rate_key", key).map_err(|e| bad(e.0))?;
        }
        let run_at = match self.run_at {
            None => None,
            Some(When::In(after)) => Some(RunAt::In(
                u64::try_from(after.as_millis())
                    .map_err(|_| bad(format!("delay {after:?} is too long")))?,
            )),
            Some(When::At(time)) => Some(RunAt::At(
                time.duration_since(UNIX_EPOCH)
                    .ok()
                    .and_then(|since| u64::try_from(since.as_millis()).ok())
                    .ok_or_else(|| {
                        bad(format!("run_at {time:?} is before 1970 or too far ahead"))
                    })?,
            )),
        };
        if self.max_attempts == Some(0) {
            return Err(bad("max_attempts must be at least 1".into()));
        }
        let class = self
            .class
            .or_else(|| known.as_ref().map(|k| k.class))
            .ok_or_else(|| ProducerError::MissingClass(self.kind.clone()))?;
        let timeout_ms = match self.timeout {
            Some(limit) if limit.is_zero() => {
                return Err(bad("timeout must be at least 1 ms".into()));
            }
            Some(limit) => Some(u64::try_from(limit.as_millis()).unwrap_or(u64::MAX).max(1)),
            None => None,
        };
        let deadline_in_ms = self
            .deadline
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1));
        Ok(tandem_shared::wire::NewTask {
            id: self.id.unwrap_or_default(),
            kind: self.kind,
            class,
            priority: self.priority,
            max_attempts: self.max_attempts.unwrap_or(default_max_attempts),
            // The kind's estimate unless the task declares its own.
            memory_bytes: match self.memory_bytes {
                0 => known.map_or(0, |k| k.memory_bytes),
                declared => declared,
            },
            deadline_in_ms,
            timeout_ms,
            idempotency_key: self.idempotency_key,
            params: self.params,
            signature: None,
            run_at,
            rate_key: self.rate_key,
            notice: self.notice,
        })
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')
}

#[cfg(test)]
mod tests {
    use tandem_shared::kind::builtin::{Sleep, SleepParams};
    use tandem_shared::kind::model_kinds::{
        HEAVY_SYMBOLS, InferParams, Optimizer, PredictBatch, PredictBatchParams, SymbolWindow,
        TrainParams,
    };

    use super::*;

    fn check(task: Task) -> Result<tandem_shared::wire::NewTask, ProducerError> {
        task.into_new_task(3, 1024)
    }

    #[test]
    fn typed_tasks_are_validated_up_front() {
        let err = Task::of::<Sleep>(&SleepParams {
            ms: Sleep::MAX_MS + 1,
        })
        .unwrap_err();
        assert!(
            matches!(err, ProducerError::BadParams { ref kind, .. } if kind == "sleep"),
            "{err}"
        );
        let ok = check(Task::of::<Sleep>(&SleepParams { ms: 5 }).unwrap()).unwrap();
        assert_eq!(ok.class, Class::Cpu);
        assert_eq!(ok.max_attempts, 3);
    }

    #[test]
    fn the_preset_class_is_the_chosen_one_or_the_kinds() {
        let typed = Task::of::<Sleep>(&SleepParams { ms: 5 }).unwrap();
        assert_eq!(typed.preset_class(), Some(Class::Cpu));
        assert_eq!(typed.class(Class::Heavy).preset_class(), Some(Class::Heavy));
        let untyped = Task::raw("my_kind", vec![0xc0]);
        assert_eq!(untyped.preset_class(), None);
        assert_eq!(
            untyped.class(Class::Light).preset_class(),
            Some(Class::Light)
        );
    }

    #[test]
    fn untyped_builtins_are_validated_at_submit() {
        let err = check(Task::new("sleep", &"soon").unwrap()).unwrap_err();
        assert!(matches!(err, ProducerError::BadParams { .. }), "{err}");
    }

    #[test]
    fn rules_before_sending() {
        let err = check(Task::raw("my_kind", vec![0xc0])).unwrap_err();
        assert!(matches!(err, ProducerError::MissingClass(_)), "{err}");
        assert!(check(Task::raw("my_kind", vec![0xc0]).class(Class::Light)).is_ok());

        let err = check(Task::raw("noop", vec![0; 2048])).unwrap_err();
        assert!(
            matches!(
                err,
                ProducerError::PayloadTooLarge {
                    bytes: 2048,
                    limit: 1024
                }
            ),
            "{err}"
        );

        let err = check(Task::raw("noop", vec![0xc0]).idempotency_key("has space")).unwrap_err();
        assert!(matches!(err, ProducerError::BadIdempotencyKey(_)), "{err}");

        let err = check(Task::raw("bad kind", vec![0xc0]).class(Class::Cpu)).unwrap_err();
        assert!(matches!(err, ProducerError::BadParams { .. }), "{err}");

        let deadline =
            check(Task::raw("noop", vec![]).deadline(Duration::from_micros(10))).unwrap();
        assert_eq!(deadline.deadline_in_ms, Some(1));
    }

    #[test]
    fn delays_and_rate_keys_before_sending() {
        let noop = || Task::raw("noop", vec![0xc0]);
        let delayed = check(noop().delay(Duration::from_millis(1_500))).unwrap();
        assert_eq!(delayed.run_at, Some(RunAt::In(1_500)));
        let at = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let timed = check(noop().delay(Duration::from_secs(1)).run_at(at)).unwrap();
        assert_eq!(
            timed.run_at,
            Some(RunAt::At(1_800_000_000_000)),
            "the last one set wins"
        );
        let early = UNIX_EPOCH - Duration::from_secs(1);
        let err = check(noop().run_at(early)).unwrap_err();
        assert!(err.to_string().contains("run_at"), "{err}");
        let keyed = check(noop().rate_key("vendor-a")).unwrap();
        assert_eq!(keyed.rate_key.as_deref(), Some("vendor-a"));
        for bad in ["", "has space", "tab\there"] {
            let err = check(noop().rate_key(bad)).unwrap_err();
            assert!(err.to_string().contains("rate_key"), "{bad:?}: {err}");
        }
        let pairs = keyed.metadata("p", None);
        assert!(pairs.contains(&("rate_key", "vendor-a".to_owned())));
        let pairs = delayed.metadata("p", None);
        assert!(pairs.contains(&("delay_ms", "1500".to_owned())));
    }

    fn infer_params(model: &str) -> InferParams {
        InferParams {
            model: model.into(),
            inputs: vec![0.5; 8],
            batch: 2,
        }
    }

    fn train_params(model: &str) -> TrainParams {
        TrainParams {
            model: model.into(),
            x: vec![0.5; 8],
            y: vec![1.0; 2],
            samples: 2,
            epochs: 1,
            batch_size: 2,
            optimizer: Optimizer::Sgd {
                lr: 0.1,
                momentum: 0.0,
            },
            seed: 0,
            out: None,
        }
    }

    #[test]
    fn infer_and_train_without_a_class_ask_for_their_model() {
        let cases: [(Task, Option<&str>); 8] = [
            (Task::of::<Infer>(&infer_params("px")).unwrap(), Some("px")),
            (Task::new("infer", &infer_params("py")).unwrap(), Some("py")),
            (Task::of::<Train>(&train_params("pz")).unwrap(), Some("pz")),
            // An explicit class wins: nothing to look up.
            (
                Task::of::<Infer>(&infer_params("px"))
                    .unwrap()
                    .class(Class::Light),
                None,
            ),
            (
                Task::new("train", &train_params("pz"))
                    .unwrap()
                    .class(Class::Heavy),
                None,
            ),
            // predict_batch keeps its own rule.
            (
                Task::new(
                    "predict_batch",
                    &PredictBatchParams {
                        model: "px".into(),
                        symbols: Vec::new(),
                    },
                )
                .unwrap(),
                None,
            ),
            // Parameters that do not decode are reported by the checks.
            (Task::raw("infer", vec![0xc1]), None),
            (Task::new("my_kind", &infer_params("px")).unwrap(), None),
        ];
        for (i, (task, model)) in cases.into_iter().enumerate() {
            assert_eq!(
                task.model_deciding_class(false).as_deref(),
                model,
                "case {i}"
            );
        }
        // Training goes to the primary whatever its model, unless told not to.
        let train = Task::of::<Train>(&train_params("pz")).unwrap();
        assert_eq!(train.class, Some(Class::Heavy));
        assert_eq!(train.model_deciding_class(true), None);
        let infer = Task::of::<Infer>(&infer_params("px")).unwrap();
        assert_eq!(infer.model_deciding_class(true).as_deref(), Some("px"));
    }

    #[test]
    fn an_explicit_class_beats_the_kinds() {
        let many = PredictBatchParams {
            model: "px".into(),
            symbols: (0..=HEAVY_SYMBOLS)
                .map(|i| SymbolWindow {
                    symbol: format!("S{i}"),
                    features: vec![1.0; 4],
                })
                .collect(),
        };
        let class = |task: Task| task.into_new_task(3, 1 << 20).unwrap().class;
        assert_eq!(
            class(Task::of::<PredictBatch>(&many).unwrap()),
            Class::Heavy
        );
        assert_eq!(
            class(Task::of::<PredictBatch>(&many).unwrap().class(Class::Light)),
            Class::Light
        );
        // Before any model is looked up, infer has the kind's class.
        assert_eq!(
            class(Task::of::<Infer>(&infer_params("px")).unwrap()),
            Class::Light
        );
    }
}
