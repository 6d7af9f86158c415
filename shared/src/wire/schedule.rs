//! A recurring schedule's hash (`tandem:{<class>}:schedule:<name>`,
//! revision 2.2): its definition (what task to create, when) and its state
//! (next fire, counters). Read leniently for views ([`ScheduleRecord`]),
//! strictly for firing ([`ScheduleRecord::definition`]), which names a
//! missing or malformed field.

use std::collections::HashMap;

use super::NewTask;
use super::field;
use super::field::schedule as sfield;
use super::reader::FieldReader;
use crate::recurring::{Cadence, CatchUp, ScheduleError};
use crate::signature::{Signed, Signer};
use crate::task::{Class, Priority, TaskId};

/// A schedule's definition: when, and the task each tick creates (its id
/// and signature aside, which are the tick's).
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleDef {
    pub name: String,
    pub cadence: Cadence,
    pub catch_up: CatchUp,
    pub kind: String,
    pub class: Class,
    pub priority: Priority,
    /// MessagePack.
    pub params: Vec<u8>,
    pub max_attempts: u32,
    pub memory_bytes: u64,
    /// Each task's deadline, counted from its creation.
    pub deadline_in_ms: Option<u64>,
    /// The producer's HMAC of the definition ([`ScheduleDef::signed`]),
    /// when producers sign: workers with a `signing_key` fire only
    /// schedules whose signature verifies, as they run only signed tasks.
    pub signature: Option<String>,
}

impl ScheduleDef {
    /// The hash fields of the definition, as schedule.lua's `put` writes
    /// them (`name`, the state and the counters are the script's).
    pub fn pairs(&self) -> Vec<(&'static str, Vec<u8>)> {
        let text = |value: String| value.into_bytes();
        let mut pairs = vec![
            (field::KIND, text(self.kind.clone())),
            (field::CLASS, text(self.class.to_string())),
            (field::PRIORITY, text(self.priority.to_string())),
            (field::MAX_ATTEMPTS, text(self.max_attempts.to_string())),
            (field::MEMORY_BYTES, text(self.memory_bytes.to_string())),
            (sfield::CATCH_UP, text(self.catch_up.to_string())),
        ];
        match &self.cadence {
            Cadence::Cron { pattern, zone, .. } => {
                pairs.push((sfield::CRON, text(pattern.clone())));
                pairs.push((sfield::TZ, text(zone.clone())));
            }
            Cadence::Every { every_ms } => {
                pairs.push((sfield::EVERY_MS, text(every_ms.to_string())));
            }
        }
        if let Some(ms) = self.deadline_in_ms {
            pairs.push((sfield::DEADLINE_IN_MS, text(ms.to_string())));
        }
        if let Some(signature) = &self.signature {
            pairs.push((field::SIGNATURE, text(signature.clone())));
        }
        pairs.push((field::PARAMS, self.params.clone()));
        pairs
    }

    /// What a schedule's signature covers, in a task signature's form: the
    /// task's kind, class, priority, max attempts and parameters; as its
    /// id, the schedule's (`tick_task_id` of the name with seed
    /// `definition` at tick 0); as its reply stream, the schedule's name,
    /// cadence and catch-up (`schedule <name> <cadence> catch_up=<policy>`).
    /// Returns the id and that text; sign with [`ScheduleDef::sign`].
    fn signed_parts(&self) -> (TaskId, String) {
        (
            crate::recurring::tick_task_id(self.class, &self.name, "definition", 0),
            format!(
                "schedule {} {} catch_up={}",
                self.name,
                self.cadence.describe_exact(),
                self.catch_up
            ),
        )
    }

    /// The signature of this definition with `signer`.
    pub fn sign(&self, signer: &Signer) -> String {
        let (id, form) = self.signed_parts();
        signer.sign(&self.signed(&id, &form))
    }

    /// True when `signature` (the hash's, if any) is `signer`'s signature
    /// of this definition.
    pub fn verify(&self, signer: &Signer) -> bool {
        let (id, form) = self.signed_parts();
        self.signature
            .as_deref()
            .is_some_and(|given| signer.verify(&self.signed(&id, &form), given))
    }

    fn signed<'a>(&'a self, id: &'a TaskId, form: &'a str) -> Signed<'a> {
        Signed {
            id,
            kind: &self.kind,
            class: self.class,
            priority: self.priority,
            max_attempts: self.max_attempts,
            reply_to: form,
            params: &self.params,
        }
    }

    /// The task the tick at `tick_ms` creates, for a schedule whose ids
    /// are seeded with `seed` (its `created_at_ms`).
    pub fn task(&self, seed: &str, tick_ms: i64) -> NewTask {
        NewTask {
            id: crate::recurring::tick_task_id(self.class, &self.name, seed, tick_ms),
            kind: self.kind.clone(),
            class: self.class,
            priority: self.priority,
            max_attempts: self.max_attempts,
            memory_bytes: self.memory_bytes,
            deadline_in_ms: self.deadline_in_ms,
            idempotency_key: None,
            params: self.params.clone(),
            signature: None,
            // A tick's task is due at its tick, and is not rate-keyed.
            run_at: None,
            rate_key: None,
            timeout_ms: None,
            // Nobody waits on a tick's task by a reply stream.
            notice: false,
        }
    }

    /// The `producer` its tasks name: `schedule:<name>`.
    pub fn producer(&self) -> String {
        format!("schedule:{}", self.name)
    }
}

/// A schedule's hash as read: every field optional, malformed values
/// absent, so a view shows what it can.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ScheduleRecord {
    pub name: String,
    pub class: Option<Class>,
    pub kind: Option<String>,
    pub priority: Option<Priority>,
    pub cron: Option<String>,
    pub tz: Option<String>,
    pub every_ms: Option<u64>,
    pub catch_up: Option<String>,
    pub max_attempts: Option<u32>,
    pub memory_bytes: Option<u64>,
    pub deadline_in_ms: Option<u64>,
    pub params: Option<Vec<u8>>,
    pub paused: bool,
    /// `None` while not computed yet (a schedule written by hand).
    pub next_fire_ms: Option<i64>,
    /// `0` for a schedule written by hand that no call changed yet.
    pub revision: u64,
    /// The raw `revision` and `next_fire_ms` texts, which fire.lua fences on.
    pub revision_text: String,
    pub next_fire_text: String,
    pub created_at_ms: Option<i64>,
    pub updated_at_ms: Option<i64>,
    pub fired: u64,
    pub skipped: u64,
    pub last_fire_ms: Option<i64>,
    pub last_fired_at_ms: Option<i64>,
    pub last_task: Option<TaskId>,
    /// Why workers do not fire it (its definition is unreadable).
    pub error: Option<String>,
    /// The producer's signature of the definition, when producers sign.
    pub signature: Option<String>,
}

impl ScheduleRecord {
    /// Reads a hash as `HGETALL` returned it; `name` is the schedule's name
    /// from its key, which wins over the hash's own `name` field.
    pub fn from_map(name: &str, map: &HashMap<Vec<u8>, Vec<u8>>) -> Self {
        let reader = FieldReader::last_wins(map.iter().map(|(k, v)| (k.as_slice(), v.as_slice())));
        let text = |f: &'static str| reader.lenient_text(f).map(str::to_owned);
        ScheduleRecord {
            name: name.to_owned(),
            class: reader.lenient(field::CLASS),
            kind: text(field::KIND),
            priority: reader.lenient(field::PRIORITY),
            cron: text(sfield::CRON),
            tz: text(sfield::TZ),
            every_ms: reader.lenient(sfield::EVERY_MS),
            catch_up: text(sfield::CATCH_UP),
            max_attempts: reader.lenient(field::MAX_ATTEMPTS),
            memory_bytes: reader.lenient(field::MEMORY_BYTES),
            deadline_in_ms: reader.lenient(sfield::DEADLINE_IN_MS),
            params: reader.raw(field::PARAMS).map(<[u8]>::to_vec),
            paused: reader.lenient_text(sfield::PAUSED) == Some("1"),
            next_fire_ms: reader
                .lenient::<i64>(sfield::NEXT_FIRE_MS)
                .filter(|&ms| ms > 0),
            revision: reader.lenient(sfield::REVISION).unwrap_or(0),
            revision_text: text(sfield::REVISION).unwrap_or_else(|| "0".to_owned()),
            next_fire_text: text(sfield::NEXT_FIRE_MS).unwrap_or_else(|| "0".to_owned()),
            created_at_ms: reader.lenient(sfield::CREATED_AT_MS),
            updated_at_ms: reader.lenient(sfield::UPDATED_AT_MS),
            fired: reader.lenient(sfield::FIRED).unwrap_or(0),
            skipped: reader.lenient(sfield::SKIPPED).unwrap_or(0),
            last_fire_ms: reader.lenient(sfield::LAST_FIRE_MS),
            last_fired_at_ms: reader.lenient(sfield::LAST_FIRED_AT_MS),
            last_task: reader.lenient(sfield::LAST_TASK),
            error: text(sfield::ERROR),
            signature: text(field::SIGNATURE),
        }
    }

    /// The seed of its tasks' ids.
    pub fn seed(&self) -> String {
        self.created_at_ms
            .map(|ms| ms.to_string())
            .unwrap_or_default()
    }

    /// The definition, checked: a cron pattern and zone that parse, or a
    /// period; a class, kind and priority. The error names the field.
    pub fn definition(&self, default_max_attempts: u32) -> Result<ScheduleDef, ScheduleError> {
        let invalid = |what: &str| ScheduleError::Invalid(what.to_owned());
        let cadence = match (&self.cron, self.every_ms) {
            (Some(pattern), None) => Cadence::cron(pattern, self.tz.as_deref())?,
            (None, Some(every_ms)) => Cadence::every(every_ms)?,
            (Some(_), Some(_)) => return Err(invalid("cron and every_ms: give one, not both")),
            (None, None) => return Err(invalid("cron or every_ms: one is required")),
        };
        let catch_up = match &self.catch_up {
            Some(text) => text.parse()?,
            None => CatchUp::default(),
        };
        let kind = self
            .kind
            .clone()
            .filter(|k| !k.is_empty())
            .ok_or_else(|| invalid("kind: required field is missing"))?;
        let class = self
            .class
            .ok_or_else(|| invalid("class: missing or not one of heavy, light, parallel, cpu"))?;
        Ok(ScheduleDef {
            name: self.name.clone(),
            cadence,
            catch_up,
            kind,
            class,
            priority: self.priority.unwrap_or(Priority::Normal),
            params: self.params.clone().unwrap_or_default(),
            max_attempts: self.max_attempts.unwrap_or(default_max_attempts),
            memory_bytes: self.memory_bytes.unwrap_or(0),
            deadline_in_ms: self.deadline_in_ms.filter(|&ms| ms > 0),
            signature: self.signature.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: &str = field::KIND;
    const C: &str = field::CLASS;

    fn map(pairs: &[(&str, &str)]) -> HashMap<Vec<u8>, Vec<u8>> {
        pairs
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn a_definition_round_trips_through_its_pairs() {
        let def = ScheduleDef {
            name: "book".into(),
            cadence: Cadence::cron("30 17 * * 1-5", Some("America/New_York")).expect("cron"),
            catch_up: CatchUp::Skip,
            kind: "risk".into(),
            class: Class::Parallel,
            priority: Priority::High,
            params: vec![0x80],
            max_attempts: 2,
            memory_bytes: 5,
            deadline_in_ms: Some(60_000),
            signature: Some("ab".into()),
        };
        let stored: HashMap<Vec<u8>, Vec<u8>> = def
            .pairs()
            .into_iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v))
            .collect();
        let record = ScheduleRecord::from_map("book", &stored);
        assert_eq!(record.definition(3), Ok(def));
        assert_eq!(record.revision_text, "0");
        assert_eq!(record.next_fire_ms, None);
    }

    #[test]
    fn a_hand_written_schedule_needs_a_cadence_kind_and_class() {
        let check = |pairs: &[(&str, &str)], expect: &str| {
            let err = ScheduleRecord::from_map("x", &map(pairs))
                .definition(3)
                .expect_err(expect)
                .to_string();
            assert!(err.contains(expect), "{err}");
        };
        check(&[(K, "echo"), (C, "cpu")], "cron or every_ms");
        check(
            &[
                (K, "echo"),
                (C, "cpu"),
                ("cron", "* * * * *"),
                ("every_ms", "1000"),
            ],
            "not both",
        );
        check(&[(C, "cpu"), ("every_ms", "1000")], "kind: required");
        check(&[(K, "echo"), (C, "gpu"), ("every_ms", "1000")], "class:");
        check(&[(K, "echo"), (C, "cpu"), ("every_ms", "0")], "every:");
        check(
            &[
                (K, "echo"),
                (C, "cpu"),
                ("cron", "* * * * *"),
                ("tz", "Nowhere"),
            ],
            "tz: \"Nowhere\"",
        );
        check(
            &[
                (K, "echo"),
                (C, "cpu"),
                ("every_ms", "1000"),
                ("catch_up", "all"),
            ],
            "catch_up: \"all\"",
        );
        let ok =
            ScheduleRecord::from_map("x", &map(&[(K, "echo"), (C, "cpu"), ("every_ms", "1000")]));
        let def = ok.definition(3).expect("a definition");
        assert_eq!(
            (def.priority, def.max_attempts, def.catch_up),
            (Priority::Normal, 3, CatchUp::Once)
        );
        assert_eq!(def.producer(), "schedule:x");
    }

    #[test]
    fn a_signature_covers_the_task_and_the_cadence() {
        let signer = Signer::new("k").expect("a signer");
        let record =
            ScheduleRecord::from_map("x", &map(&[(K, "echo"), (C, "cpu"), ("every_ms", "1000")]));
        let mut def = record.definition(3).expect("a definition");
        assert!(!def.verify(&signer), "unsigned");
        def.signature = Some(def.sign(&signer));
        assert!(def.verify(&signer));
        assert!(!def.verify(&Signer::new("other").expect("a signer")));
        for change in [
            |d: &mut ScheduleDef| d.cadence = Cadence::every(2_000).expect("every"),
            |d: &mut ScheduleDef| d.catch_up = CatchUp::Skip,
            |d: &mut ScheduleDef| d.kind = "noop".into(),
            |d: &mut ScheduleDef| d.params = vec![1],
            |d: &mut ScheduleDef| d.name = "y".into(),
            |d: &mut ScheduleDef| d.priority = Priority::High,
        ] {
            let mut changed = def.clone();
            change(&mut changed);
            assert!(!changed.verify(&signer), "{changed:?}");
        }
    }
}
