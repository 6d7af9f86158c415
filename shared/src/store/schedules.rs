//! Recurring schedules in Redis: put, pause, resume, remove (schedule.lua),
//! list and read them, find the due ones, and fire a tick (fire.lua).
//!
//! A schedule lives in its task class's slot: its hash
//! (`tandem:{<class>}:schedule:<name>`) and the class's index
//! (`tandem:{<class>}:schedules`, names scored by next fire time, `+inf`
//! while paused or broken), so the script that fires a tick creates its
//! task in the same slot. Views read every class.

use redis::{Cmd, Value};

use super::reply::{array, hash_map, int, reply_ok, server_time_ms, text};
use super::{Store, StoreError};
use crate::recurring::FirePlan;
use crate::scripts;
use crate::task::{Class, TaskId};
use crate::wire::{NewTask, ScheduleDef, ScheduleRecord};

/// How many due schedules of a class one poll fetches.
pub const DUE_BATCH: usize = 64;

/// A change to an existing schedule (schedule.lua's ops).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScheduleChange {
    Pause,
    /// With its next fire time.
    Resume {
        next_fire_ms: i64,
    },
    Remove,
}

/// What a change found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Changed {
    Done,
    NotFound,
}

/// What `put_schedule` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Put {
    /// False when it replaced a schedule of the same name and class.
    pub created: bool,
    pub revision: u64,
}

/// What one fire call did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fired {
    /// The tick's task: `created` false when a record of its id existed.
    Task { id: TaskId, created: bool },
    /// The next fire time moved without a task (a first fire time, or
    /// missed ticks skipped).
    Advanced,
    /// The fence did not hold (another worker fired it, or a producer
    /// changed it): nothing changed. The word says why.
    Stale(String),
}

/// The due schedules of each class, and when the earliest next one is due.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Due {
    pub now_ms: i64,
    pub due: Vec<(Class, String)>,
    /// The smallest finite next fire time over the classes, when any.
    pub earliest_ms: Option<i64>,
}

fn score(value: Value) -> Result<Option<f64>, StoreError> {
    let parsed = match value {
        Value::Double(d) => d,
        Value::Nil => return Ok(None),
        other => {
            let t = text(other, "ZRANGE WITHSCORES")?;
            match t.as_str() {
                "inf" | "+inf" => f64::INFINITY,
                "-inf" => f64::NEG_INFINITY,
                _ => t.parse().map_err(|_| StoreError::Protocol {
                    what: "ZRANGE WITHSCORES",
                    detail: format!("not a score: {t:?}"),
                })?,
            }
        }
    };
    Ok(Some(parsed))
}

impl Store {
    /// The Redis server's clock, Unix ms: the clock every schedule time is
    /// computed against.
    pub async fn redis_now_ms(&self) -> Result<i64, StoreError> {
        let now = server_time_ms(self.single(redis::cmd("TIME")).await?)?;
        Ok(i64::try_from(now).unwrap_or(i64::MAX))
    }

    /// Creates or replaces the schedule `def.name` of `def.class`; its
    /// first fire is at `first_fire_ms`.
    pub async fn put_schedule(
        &self,
        def: &ScheduleDef,
        first_fire_ms: i64,
    ) -> Result<Put, StoreError> {
        let mut call = scripts::SCHEDULE
            .invocation(self.events)
            .key(self.keys.schedule(def.class, &def.name))
            .key(self.keys.schedules(def.class))
            .arg("put")
            .arg(def.name.as_str())
            .arg(first_fire_ms);
        for (name, value) in def.pairs() {
            call = call.arg(name).arg(value);
        }
        let reply = self.pipeline_replicated(&[call.into_cmd()]).await?;
        let mut items = array(
            reply_ok(reply.into_iter().next().unwrap_or(Value::Nil))?,
            "schedule put",
        )?
        .into_iter();
        let word = text(items.next().unwrap_or(Value::Nil), "schedule put")?;
        let revision = int(items.next().unwrap_or(Value::Nil), "schedule put")?;
        Ok(Put {
            created: word == "created",
            revision: u64::try_from(revision).unwrap_or(0),
        })
    }

    /// Pauses, resumes or removes the schedule `name` of `class`.
    pub async fn change_schedule(
        &self,
        class: Class,
        name: &str,
        change: ScheduleChange,
    ) -> Result<Changed, StoreError> {
        let call = scripts::SCHEDULE
            .invocation(self.events)
            .key(self.keys.schedule(class, name))
            .key(self.keys.schedules(class));
        let call = match change {
            ScheduleChange::Pause => call.arg("pause").arg(name),
            ScheduleChange::Resume { next_fire_ms } => {
                call.arg("resume").arg(name).arg(next_fire_ms)
            }
            ScheduleChange::Remove => call.arg("remove").arg(name),
        };
        let reply = self.pipeline_replicated(&[call.into_cmd()]).await?;
        let items = array(
            reply_ok(reply.into_iter().next().unwrap_or(Value::Nil))?,
            "schedule change",
        )?;
        let word = text(
            items.into_iter().next().unwrap_or(Value::Nil),
            "schedule change",
        )?;
        Ok(if word == "not_found" {
            Changed::NotFound
        } else {
            Changed::Done
        })
    }

    /// Keeps a schedule whose definition no worker can read out of firing,
    /// with `why` in its `error` field, unless it changed since
    /// `revision_text` was read.
    pub async fn mark_schedule_broken(
        &self,
        class: Class,
        record: &ScheduleRecord,
        why: &str,
    ) -> Result<(), StoreError> {
        let cmd = scripts::SCHEDULE
            .invocation(self.events)
            .key(self.keys.schedule(class, &record.name))
            .key(self.keys.schedules(class))
            .arg("broken")
            .arg(record.name.as_str())
            .arg(record.revision_text.as_str())
            .arg(why)
            .into_cmd();
        self.single(cmd).await.map(|_| ())
    }

    /// The schedule `name` in each class that has one (names are per
    /// class; a producer keeps them unique across classes).
    pub async fn find_schedule(
        &self,
        name: &str,
    ) -> Result<Vec<(Class, ScheduleRecord)>, StoreError> {
        let cmds: Vec<Cmd> = Class::ALL
            .iter()
            .map(|&class| {
                let mut cmd = redis::cmd("HGETALL");
                cmd.arg(self.keys.schedule(class, name));
                cmd
            })
            .collect();
        let mut found = Vec::new();
        for (&class, reply) in Class::ALL.iter().zip(self.pipeline(&cmds).await?) {
            let map = hash_map(reply_ok(reply)?, "HGETALL schedule")?;
            if !map.is_empty() {
                found.push((class, ScheduleRecord::from_map(name, &map)));
            }
        }
        Ok(found)
    }

    /// One schedule of one class, when it exists.
    pub async fn schedule_record(
        &self,
        class: Class,
        name: &str,
    ) -> Result<Option<ScheduleRecord>, StoreError> {
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(self.keys.schedule(class, name));
        let map = hash_map(self.single(cmd).await?, "HGETALL schedule")?;
        Ok((!map.is_empty()).then(|| ScheduleRecord::from_map(name, &map)))
    }

    /// Every schedule of `classes`, by class, then by next fire time
    /// (paused and broken ones last).
    pub async fn list_schedules(
        &self,
        classes: &[Class],
    ) -> Result<Vec<(Class, ScheduleRecord)>, StoreError> {
        let cmds: Vec<Cmd> = classes
            .iter()
            .map(|&class| {
                let mut cmd = redis::cmd("ZRANGE");
                cmd.arg(self.keys.schedules(class)).arg(0).arg(-1);
                cmd
            })
            .collect();
        let mut names = Vec::new();
        for (&class, reply) in classes.iter().zip(self.pipeline(&cmds).await?) {
            for name in array(reply_ok(reply)?, "ZRANGE schedules")? {
                names.push((class, text(name, "ZRANGE schedules")?));
            }
        }
        let cmds: Vec<Cmd> = names
            .iter()
            .map(|(class, name)| {
                let mut cmd = redis::cmd("HGETALL");
                cmd.arg(self.keys.schedule(*class, name));
                cmd
            })
            .collect();
        let mut out = Vec::with_capacity(names.len());
        for ((class, name), reply) in names.into_iter().zip(self.pipeline(&cmds).await?) {
            let map = hash_map(reply_ok(reply)?, "HGETALL schedule")?;
            if !map.is_empty() {
                out.push((class, ScheduleRecord::from_map(&name, &map)));
            }
        }
        Ok(out)
    }

    /// The schedules of every class due by the Redis clock (at most
    /// [`DUE_BATCH`] per class), and the earliest next fire time: one
    /// round trip.
    pub async fn due_schedules(&self) -> Result<Due, StoreError> {
        let now_ms = self.redis_now_ms().await?;
        let mut cmds = Vec::with_capacity(Class::ALL.len() * 2);
        for &class in Class::ALL {
            let mut due = redis::cmd("ZRANGEBYSCORE");
            due.arg(self.keys.schedules(class))
                .arg("-inf")
                .arg(now_ms)
                .arg("LIMIT")
                .arg(0)
                .arg(DUE_BATCH);
            let mut first = redis::cmd("ZRANGE");
            first
                .arg(self.keys.schedules(class))
                .arg(0)
                .arg(0)
                .arg("WITHSCORES");
            cmds.push(due);
            cmds.push(first);
        }
        let mut replies = self.pipeline(&cmds).await?.into_iter();
        let mut out = Due {
            now_ms,
            ..Due::default()
        };
        for &class in Class::ALL {
            let due = reply_ok(replies.next().unwrap_or(Value::Nil))?;
            for name in array(due, "ZRANGEBYSCORE schedules")? {
                out.due
                    .push((class, text(name, "ZRANGEBYSCORE schedules")?));
            }
            let first = array(
                reply_ok(replies.next().unwrap_or(Value::Nil))?,
                "ZRANGE WITHSCORES",
            )?;
            // RESP2: [name, score]; RESP3: [[name, score]].
            let mut flat = Vec::new();
            for item in first {
                match item {
                    Value::Array(pair) => flat.extend(pair),
                    other => flat.push(other),
                }
            }
            if let Some(score) = flat.into_iter().nth(1).map(score).transpose()?.flatten()
                && score.is_finite()
            {
                let ms = score as i64;
                out.earliest_ms = Some(out.earliest_ms.map_or(ms, |e| e.min(ms)));
            }
        }
        Ok(out)
    }

    /// Fires (or advances) the schedule `record` of `class` as `plan` says,
    /// fenced by the `revision` and `next_fire_ms` it was read with;
    /// `task` is the tick's task when the plan fires one.
    pub async fn fire_schedule(
        &self,
        class: Class,
        record: &ScheduleRecord,
        def: &ScheduleDef,
        plan: &FirePlan,
        task: Option<&NewTask>,
    ) -> Result<Fired, StoreError> {
        let nil = TaskId::from(uuid::Uuid::nil());
        let id = task.map_or(nil, |t| t.id);
        let mut call = scripts::FIRE
            .invocation(self.events)
            .key(self.keys.schedule(class, &record.name))
            .key(self.keys.schedules(class))
            .key(self.keys.stream(class, def.priority))
            .key(self.keys.task(class, &id))
            .arg(record.name.as_str())
            .arg(record.revision_text.as_str())
            .arg(record.next_fire_text.as_str())
            .arg(match (plan.fire, task) {
                (Some(tick), Some(_)) => tick.to_string(),
                _ => String::new(),
            })
            .arg(plan.next_fire_ms)
            .arg(plan.due_ticks)
            .arg(def.deadline_in_ms.unwrap_or(0))
            .arg(def.params.as_slice());
        if let Some(task) = task {
            for (name, value) in task.metadata(&def.producer(), None) {
                call = call.arg(name).arg(value);
            }
        }
        let reply = self.pipeline_replicated(&[call.into_cmd()]).await?;
        let mut items = array(
            reply_ok(reply.into_iter().next().unwrap_or(Value::Nil))?,
            "fire",
        )?
        .into_iter();
        let word = text(items.next().unwrap_or(Value::Nil), "fire")?;
        match word.as_str() {
            "fired" => {
                let id = text(items.next().unwrap_or(Value::Nil), "fire")?;
                let created = int(items.next().unwrap_or(Value::Nil), "fire")? == 1;
                let id = id.parse().map_err(|_| StoreError::Protocol {
                    what: "fire",
                    detail: format!("not a task id: {id:?}"),
                })?;
                Ok(Fired::Task { id, created })
            }
            "advanced" => Ok(Fired::Advanced),
            "stale" => Ok(Fired::Stale(text(
                items.next().unwrap_or(Value::Nil),
                "fire",
            )?)),
            other => Err(StoreError::Protocol {
                what: "fire",
                detail: format!("unknown outcome {other:?}"),
            }),
        }
    }
}
