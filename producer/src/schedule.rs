//! [`Schedule`]: a recurring schedule (a cron pattern in a time zone, or a
//! period) of a [`Task`], and the [`Producer`] calls that add, list, show,
//! pause, resume and remove schedules.
//!
//! Workers fire the schedules (`worker/src/recurring.rs`): each tick
//! creates one task, whose id is derived from the schedule and the tick,
//! however many workers run. See `tandem_shared::recurring` for the rules
//! (DST, late and missed ticks).
//!
//! ```no_run
//! use std::time::Duration;
//! use tandem_producer::{CatchUp, Producer, Schedule, Task};
//! use tandem_shared::Class;
//!
//! # async fn example() -> Result<(), tandem_producer::ProducerError> {
//! let producer = Producer::from_env().await?;
//! let eod = Task::new("risk_report", &"book-1")?.class(Class::Cpu);
//! producer
//!     .schedule_add(
//!         Schedule::cron("eod-var", "30 17 * * 1-5", eod)?
//!             .tz("America/New_York")?
//!             .catch_up(CatchUp::Skip),
//!     )
//!     .await?;
//! let revalue = Task::new("echo", &"revalue")?.class(Class::Cpu);
//! producer
//!     .schedule_add(Schedule::every("revalue", Duration::from_secs(300), revalue)?)
//!     .await?;
//! for schedule in producer.schedules().await? {
//!     println!("{} next at {:?}", schedule.name, schedule.next_fire_ms);
//! }
//! # Ok(()) }
//! ```

use std::time::Duration;

use tandem_shared::recurring::{self, Cadence, CatchUp, ScheduleError};
use tandem_shared::store::{Changed, ScheduleChange};
use tandem_shared::task::Class;
use tandem_shared::wire::{ScheduleDef, ScheduleRecord};

use crate::error::ProducerError;
use crate::producer::Producer;
use crate::task::Task;

/// A recurring schedule of a task, checked as it is built.
#[derive(Debug, Clone)]
pub struct Schedule {
    name: String,
    cadence: Cadence,
    catch_up: CatchUp,
    task: Task,
}

impl Schedule {
    /// Fires `task` on a cron pattern (five fields, or six with seconds
    /// first; `@daily` and the like), in UTC unless [`Schedule::tz`] says
    /// otherwise.
    pub fn cron(name: impl Into<String>, pattern: &str, task: Task) -> Result<Self, ProducerError> {
        Self::new(name.into(), Cadence::cron(pattern, None)?, task)
    }

    /// Fires `task` every `period` (at least a second), from one period
    /// after it is added.
    pub fn every(
        name: impl Into<String>,
        period: Duration,
        task: Task,
    ) -> Result<Self, ProducerError> {
        let ms = u64::try_from(period.as_millis()).unwrap_or(u64::MAX);
        Self::new(name.into(), Cadence::every(ms)?, task)
    }

    fn new(name: String, cadence: Cadence, task: Task) -> Result<Self, ProducerError> {
        recurring::check_name(&name)?;
        if task.id.is_some() || task.idempotency_key.is_some() {
            return Err(ProducerError::Schedule(ScheduleError::Invalid(
                "task: a schedule's task takes no id or idempotency key (each tick's id is derived from the schedule and the tick)"
                    .to_owned(),
            )));
        }
        Ok(Self {
            name,
            cadence,
            catch_up: CatchUp::default(),
            task,
        })
    }

    /// The time zone (an IANA name) a cron pattern is read in.
    pub fn tz(mut self, zone: &str) -> Result<Self, ProducerError> {
        let Cadence::Cron { pattern, .. } = &self.cadence else {
            return Err(ProducerError::Schedule(ScheduleError::Invalid(
                "tz: only a cron schedule has a time zone (an `every` period is counted in real time)"
                    .to_owned(),
            )));
        };
        self.cadence = Cadence::cron(pattern, Some(zone))?;
        Ok(self)
    }

    /// What to do with ticks missed while no worker ran (default: fire
    /// once for all of them).
    pub fn catch_up(mut self, catch_up: CatchUp) -> Self {
        self.catch_up = catch_up;
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn cadence(&self) -> &Cadence {
        &self.cadence
    }
}

/// What [`Producer::schedule_add`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScheduleAdded {
    /// The class whose workers run its tasks (and whose slot keeps it).
    pub class: Class,
    /// False when it replaced a schedule of the same name.
    pub created: bool,
    /// Its first fire time (Unix ms, Redis clock).
    pub next_fire_ms: i64,
}

impl Producer {
    /// Adds a schedule, or replaces the one of the same name (keeping its
    /// counters and task ids: a tick that fired is not fired again). A
    /// name used by a schedule of another class is refused: remove that
    /// one first. The task is checked as a submit checks it.
    pub async fn schedule_add(&self, schedule: Schedule) -> Result<ScheduleAdded, ProducerError> {
        let mut prepared = self.prepare(vec![schedule.task]).await?;
        let task = prepared.pop().ok_or_else(|| {
            ProducerError::Schedule(ScheduleError::Invalid("task: nothing to schedule".into()))
        })?;
        let mut def = ScheduleDef {
            name: schedule.name,
            cadence: schedule.cadence,
            catch_up: schedule.catch_up,
            kind: task.kind,
            class: task.class,
            priority: task.priority,
            params: task.params,
            max_attempts: task.max_attempts,
            memory_bytes: task.memory_bytes,
            deadline_in_ms: task.deadline_in_ms,
            signature: None,
        };
        if let Some(signer) = self.signer() {
            def.signature = Some(def.sign(signer));
        }
        let store = self.store();
        for (class, _) in self.retrying(|| store.find_schedule(&def.name)).await? {
            if class != def.class {
                return Err(ProducerError::ScheduleNameTaken {
                    name: def.name,
                    class,
                });
            }
        }
        let now = self.retrying(|| store.redis_now_ms()).await?;
        let next_fire_ms = def.cadence.next_after(now)?;
        // A put repeated after a lost reply writes the same definition
        // again (its revision one more).
        let put = self
            .retrying(|| store.put_schedule(&def, next_fire_ms))
            .await?;
        Ok(ScheduleAdded {
            class: def.class,
            created: put.created,
            next_fire_ms,
        })
    }

    /// Every schedule, by class, then by next fire time (paused and broken
    /// ones last).
    pub async fn schedules(&self) -> Result<Vec<ScheduleRecord>, ProducerError> {
        let store = self.store();
        Ok(self
            .retrying(|| store.list_schedules(Class::ALL))
            .await?
            .into_iter()
            .map(|(class, mut record)| {
                record.class = Some(class);
                record
            })
            .collect())
    }

    /// The schedule `name`, when there is one.
    pub async fn schedule(&self, name: &str) -> Result<Option<ScheduleRecord>, ProducerError> {
        recurring::check_name(name)?;
        let store = self.store();
        Ok(self
            .retrying(|| store.find_schedule(name))
            .await?
            .into_iter()
            .next()
            .map(|(class, mut record)| {
                record.class = Some(class);
                record
            }))
    }

    /// Stops firing the schedule `name` until it is resumed.
    pub async fn schedule_pause(&self, name: &str) -> Result<(), ProducerError> {
        self.change(name, |_| Ok(ScheduleChange::Pause)).await
    }

    /// Fires the schedule `name` again, from its first tick after now:
    /// ticks while it was paused are not caught up. Also clears the
    /// `error` of a schedule a worker could not read (written by hand),
    /// once it reads.
    pub async fn schedule_resume(&self, name: &str) -> Result<(), ProducerError> {
        let store = self.store();
        let now = self.retrying(|| store.redis_now_ms()).await?;
        self.change(name, |record| {
            let def = record.definition(3)?;
            Ok(ScheduleChange::Resume {
                next_fire_ms: def.cadence.next_after(now)?,
            })
        })
        .await
    }

    /// Removes the schedule `name`; tasks it created stay.
    pub async fn schedule_remove(&self, name: &str) -> Result<(), ProducerError> {
        self.change(name, |_| Ok(ScheduleChange::Remove)).await
    }

    async fn change(
        &self,
        name: &str,
        change: impl Fn(&ScheduleRecord) -> Result<ScheduleChange, ScheduleError>,
    ) -> Result<(), ProducerError> {
        recurring::check_name(name)?;
        let store = self.store();
        let found = self.retrying(|| store.find_schedule(name)).await?;
        if found.is_empty() {
            return Err(ProducerError::ScheduleNotFound(name.to_owned()));
        }
        for (class, record) in found {
            let change = change(&record)?;
            // Pause, resume and remove may be repeated after a lost reply.
            if self
                .retrying(|| store.change_schedule(class, name, change))
                .await?
                == Changed::NotFound
            {
                return Err(ProducerError::ScheduleNotFound(name.to_owned()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task() -> Task {
        Task::new("echo", &"x").expect("a task").class(Class::Cpu)
    }

    #[test]
    fn bad_schedules_are_refused_naming_the_setting() {
        let message =
            |result: Result<Schedule, ProducerError>| result.expect_err("refused").to_string();
        assert!(message(Schedule::cron("a", "61 * * * *", task())).starts_with("cron: "));
        assert!(
            message(Schedule::cron("a", "* * * * *", task()).and_then(|s| s.tz("Mars/Base")))
                .starts_with("tz: \"Mars/Base\" is not a known time zone")
        );
        assert_eq!(
            message(Schedule::every("a", Duration::ZERO, task())),
            "every: must be more than 0 (at least 1s)"
        );
        assert!(
            message(Schedule::every("a b", Duration::from_secs(1), task())).starts_with("name: ")
        );
        assert!(
            message(Schedule::every("a", Duration::from_secs(1), task()).and_then(|s| s.tz("UTC")))
                .starts_with("tz: only a cron schedule")
        );
        assert!(
            message(Schedule::every(
                "a",
                Duration::from_secs(1),
                task().idempotency_key("k")
            ))
            .contains("no id or idempotency key")
        );
        let ok = Schedule::cron("eod", "30 17 * * 1-5", task())
            .and_then(|s| s.tz("America/New_York"))
            .expect("a schedule");
        assert_eq!(ok.cadence().zone(), Some("America/New_York"));
    }
}
