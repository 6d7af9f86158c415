//! Fires recurring schedules. Every worker runs this loop: it sleeps until
//! the earliest next fire time of any schedule (at most [`POLL_MAX`], so a
//! schedule added or resumed meanwhile is seen), reads the due ones, asks
//! `tandem_shared::recurring::plan` what to do with each, and calls the
//! fire script with that decision, fenced by what it read. Many workers
//! racing on one tick are fine: the first call moves the fence, the others
//! change nothing (`stale`), so each tick creates one task however many
//! workers and fleets run.
//!
//! A schedule whose hash cannot be read as a schedule (written by hand
//! with a bad cron pattern, an unknown zone, no kind) is marked with
//! `error` and left out of firing until a producer replaces or resumes it.

use std::time::Duration;

use tandem_shared::recurring::{self, FirePlan};
use tandem_shared::signature::Signer;
use tandem_shared::store::{Fired, Store, StoreError};
use tandem_shared::task::Class;

/// The longest sleep between two looks at the schedules.
pub(crate) const POLL_MAX: Duration = Duration::from_secs(1);

/// The loop's settings and connection.
#[derive(Debug)]
pub(crate) struct Recurring {
    pub store: Store,
    /// Signs the tasks ticks create, when the fleet requires signatures.
    pub signer: Option<Signer>,
    pub default_max_attempts: u32,
    pub worker_id: String,
}

impl Recurring {
    /// Runs until dropped (the worker's background set stops it).
    pub(crate) async fn run(self) {
        let mut failures = 0u32;
        loop {
            let wait = match self.round().await {
                Ok(wait) => {
                    failures = 0;
                    wait
                }
                Err(err) => {
                    failures += 1;
                    if failures == 1 {
                        tracing::warn!("cannot fire recurring schedules: {err}; retrying");
                    } else {
                        tracing::debug!("recurring schedules still failing: {err}");
                    }
                    POLL_MAX
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// One look: fires what is due; returns how long to sleep.
    async fn round(&self) -> Result<Duration, StoreError> {
        let due = self.store.due_schedules().await?;
        let mut moved = 0;
        for (class, name) in &due.due {
            match self.fire_one(*class, name, due.now_ms).await {
                Ok(true) => moved += 1,
                Ok(false) => {}
                // Redis is away: the next look retries them all.
                Err(err) if err.is_connection() => return Err(err),
                // One schedule's failure (a key of another type, say)
                // holds up no other.
                Err(err) => {
                    tracing::warn!(schedule = %name, %class, "cannot fire the schedule: {err}");
                }
            }
        }
        if moved > 0 {
            // Look again at once: a batch may have left more due ones, and
            // the earliest time read before firing is stale.
            return Ok(Duration::from_millis(10));
        }
        Ok(sleep_for(due.now_ms, due.earliest_ms))
    }

    /// Fires one due schedule; true when it moved (fired or advanced).
    async fn fire_one(&self, class: Class, name: &str, now_ms: i64) -> Result<bool, StoreError> {
        let Some(record) = self.store.schedule_record(class, name).await? else {
            return Ok(false);
        };
        if record.paused {
            return Ok(false);
        }
        let record = &record;
        let broken = |why: String| async move {
            tracing::warn!(schedule = name, %class, "schedule cannot fire: {why}");
            self.store
                .mark_schedule_broken(class, record, &why)
                .await
                .map(|()| false)
        };
        let def = match record.definition(self.default_max_attempts) {
            Ok(def) if def.class == class => def,
            Ok(def) => {
                return broken(format!(
                    "class: the hash says {} but its key is class {class}'s",
                    def.class
                ))
                .await;
            }
            Err(err) => return broken(err.to_string()).await,
        };
        if let Some(signer) = &self.signer
            && !def.verify(signer)
        {
            return broken(
                "signature: missing or wrong (workers with a signing_key fire only schedules a producer with the key signed)"
                    .to_owned(),
            )
            .await;
        }
        let plan = match record.next_fire_ms {
            // Written by hand without a first fire time: compute it.
            None => def.cadence.next_after(now_ms).map(|next| {
                Some(FirePlan {
                    fire: None,
                    due_ticks: 0,
                    next_fire_ms: next,
                })
            }),
            Some(tick) => recurring::plan(&def.cadence, def.catch_up, tick, now_ms),
        };
        let plan = match plan {
            Ok(Some(plan)) => plan,
            Ok(None) => return Ok(false),
            Err(err) => return broken(err.to_string()).await,
        };
        let task = plan.fire.map(|tick| {
            let mut task = def.task(&record.seed(), tick);
            if let Some(signer) = &self.signer {
                task.signature = Some(signer.sign(&task.signed(None)));
            }
            task
        });
        let fired = self
            .store
            .fire_schedule(class, record, &def, &plan, task.as_ref())
            .await?;
        let moved = !matches!(fired, Fired::Stale(_));
        match fired {
            Fired::Task { id, created } => tracing::info!(
                schedule = name,
                %class,
                task = %id,
                tick_ms = plan.fire.unwrap_or_default(),
                due_ticks = plan.due_ticks,
                next_fire_ms = plan.next_fire_ms,
                created,
                worker = %self.worker_id,
                "schedule fired"
            ),
            Fired::Advanced => tracing::info!(
                schedule = name,
                %class,
                skipped = plan.due_ticks,
                next_fire_ms = plan.next_fire_ms,
                "schedule advanced without a task"
            ),
            Fired::Stale(why) => {
                tracing::debug!(schedule = name, %class, "another caller moved the schedule first ({why})");
            }
        }
        Ok(moved)
    }
}

/// How long to sleep at `now_ms` when the earliest schedule is due at
/// `earliest_ms`: until then, at most [`POLL_MAX`].
fn sleep_for(now_ms: i64, earliest_ms: Option<i64>) -> Duration {
    match earliest_ms {
        Some(at) if at > now_ms => {
            Duration::from_millis(u64::try_from(at - now_ms).unwrap_or(0)).min(POLL_MAX)
        }
        Some(_) => Duration::ZERO,
        None => POLL_MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleeps_until_the_earliest_fire_at_most_a_second() {
        let ms = Duration::from_millis;
        assert_eq!(sleep_for(1_000, None), POLL_MAX);
        assert_eq!(sleep_for(1_000, Some(1_250)), ms(250));
        assert_eq!(sleep_for(1_000, Some(60_000)), POLL_MAX);
        assert_eq!(sleep_for(1_000, Some(1_000)), ms(0));
        assert_eq!(sleep_for(1_000, Some(900)), ms(0));
    }
}
