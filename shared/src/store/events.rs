//! The lifecycle events streams, one per class (`tandem:{<class>}:events`):
//! reading them, from a point or following. The scripts that change a task
//! write the events (`emit_event` in `shared/lua/common.lua`); nothing here
//! writes one.

use redis::Value;

use super::{Store, StoreError};
use crate::task::Class;
use crate::wire::TaskEvent;

/// Where a reader of the events streams stands: per class, the id of the
/// last entry read (`0-0` reads from the oldest kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventCursor {
    pub positions: Vec<(Class, String)>,
}

impl EventCursor {
    /// From the oldest event each class still keeps.
    pub fn from_start(classes: &[Class]) -> Self {
        Self {
            positions: classes.iter().map(|&c| (c, "0-0".to_owned())).collect(),
        }
    }
}

/// Why a progress report was refused before it reached Redis.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProgressError {
    #[error("progress: expected a fraction from 0 to 1, got {0}")]
    Fraction(f64),
    #[error("progress message: at most {PROGRESS_MSG_MAX} bytes, got {0}")]
    MessageTooLong(usize),
}

/// The longest progress message, bytes: a status line, not a log.
pub const PROGRESS_MSG_MAX: usize = 200;

/// Checks a progress report: a finite fraction from 0 to 1, a short
/// message.
pub fn check_progress(fraction: f64, message: &str) -> Result<(), ProgressError> {
    if !(0.0..=1.0).contains(&fraction) {
        return Err(ProgressError::Fraction(fraction));
    }
    if message.len() > PROGRESS_MSG_MAX {
        return Err(ProgressError::MessageTooLong(message.len()));
    }
    Ok(())
}

impl Store {
    /// Writes a running task's progress into its record and announces it
    /// (`progress.lua`), fenced by the record's owner (`<worker> <entry
    /// id>`). True when written; false when this worker no longer owns the
    /// running task.
    pub async fn report_progress(
        &self,
        class: Class,
        id: &crate::task::TaskId,
        owner: &str,
        fraction: f64,
        message: &str,
    ) -> Result<bool, StoreError> {
        check_progress(fraction, message)?;
        let cmd = crate::scripts::PROGRESS
            .invocation(self.events)
            .key(self.keys.task(class, id))
            .arg(owner)
            .arg(id.to_string())
            .arg(format!("{fraction}"))
            .arg(message)
            .into_cmd();
        let reply: Value = cmd.query_async(&mut self.connection()).await?;
        Ok(super::reply::int(super::reply::reply_ok(reply)?, "progress.lua")? == 1)
    }

    /// A cursor after the newest event of each class, so that a follower
    /// sees only what happens from now on.
    pub async fn events_now(&self, classes: &[Class]) -> Result<EventCursor, StoreError> {
        let mut positions = Vec::with_capacity(classes.len());
        for &class in classes {
            let newest: Value = redis::cmd("XREVRANGE")
                .arg(self.keys.events(class))
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1)
                .query_async(&mut self.connection())
                .await?;
            let id = super::reply::stream_entries(newest)?
                .into_iter()
                .next()
                .map_or_else(|| "0-0".to_owned(), |(id, _)| id);
            positions.push((class, id));
        }
        Ok(EventCursor { positions })
    }

    /// The newest `count` events of the classes together, oldest first
    /// (ordered by their time, then class), and a cursor after the newest
    /// event of each class.
    pub async fn recent_events(
        &self,
        classes: &[Class],
        count: usize,
    ) -> Result<(Vec<TaskEvent>, EventCursor), StoreError> {
        let mut events = Vec::new();
        let mut positions = Vec::with_capacity(classes.len());
        for &class in classes {
            let newest: Value = redis::cmd("XREVRANGE")
                .arg(self.keys.events(class))
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(count.max(1))
                .query_async(&mut self.connection())
                .await?;
            let entries = super::reply::stream_entries(newest)?;
            positions.push((
                class,
                entries
                    .first()
                    .map_or_else(|| "0-0".to_owned(), |(id, _)| id.clone()),
            ));
            events.extend(entries.into_iter().map(|(id, fields)| {
                TaskEvent::from_fields(
                    &id,
                    fields.iter().map(|(k, v)| (k.as_slice(), v.as_slice())),
                )
            }));
        }
        events.sort_by_key(|e| (stream_id_key(&e.entry_id), e.class.map(Class::index)));
        let keep = events.len().saturating_sub(count);
        events.drain(..keep);
        Ok((events, EventCursor { positions }))
    }

    /// Up to `count` events of each class after the cursor, oldest first
    /// per class (classes one after another), and the cursor moved past
    /// them. Does not wait.
    pub async fn read_events(
        &self,
        cursor: &EventCursor,
        count: usize,
    ) -> Result<(Vec<TaskEvent>, EventCursor), StoreError> {
        let mut events = Vec::new();
        let mut next = cursor.clone();
        for (class, last) in &mut next.positions {
            let found: Value = redis::cmd("XRANGE")
                .arg(self.keys.events(*class))
                .arg(format!("({last}"))
                .arg("+")
                .arg("COUNT")
                .arg(count)
                .query_async(&mut self.connection())
                .await?;
            for (id, fields) in super::reply::stream_entries(found)? {
                events.push(TaskEvent::from_fields(
                    &id,
                    fields.iter().map(|(k, v)| (k.as_slice(), v.as_slice())),
                ));
                *last = id;
            }
        }
        Ok((events, next))
    }

    /// Waits up to `block_ms` for events after the cursor (one blocking
    /// `XREAD` over the classes' streams; in Cluster, one class per call in
    /// turn), and returns them with the cursor moved past them; none when
    /// the wait ran out.
    pub async fn follow_events(
        &self,
        conn: &mut super::BlockingConn,
        cursor: &EventCursor,
        block_ms: u64,
        count: usize,
    ) -> Result<(Vec<TaskEvent>, EventCursor), StoreError> {
        let mut next = cursor.clone();
        let groups: Vec<Vec<usize>> = if self.is_cluster() {
            (0..next.positions.len()).map(|i| vec![i]).collect()
        } else {
            vec![(0..next.positions.len()).collect()]
        };
        let block_each = if groups.is_empty() {
            block_ms
        } else {
            (block_ms / groups.len() as u64).max(1)
        };
        let mut events = Vec::new();
        for group in groups {
            let keys: Vec<String> = group
                .iter()
                .map(|&i| self.keys.events(next.positions[i].0))
                .collect();
            let ids: Vec<String> = group.iter().map(|&i| next.positions[i].1.clone()).collect();
            let found = conn.xread(&keys, &ids, block_each, count).await?;
            for (key, entries) in found {
                let Some(&i) = group
                    .iter()
                    .find(|&&i| self.keys.events(next.positions[i].0) == key)
                else {
                    continue;
                };
                for (id, fields) in entries {
                    events.push(TaskEvent::from_fields(
                        &id,
                        fields.iter().map(|(k, v)| (k.as_slice(), v.as_slice())),
                    ));
                    next.positions[i].1 = id;
                }
            }
            if !events.is_empty() {
                break;
            }
        }
        Ok((events, next))
    }
}

/// A stream entry id (`<ms>-<seq>`) as numbers, for ordering; a malformed
/// one sorts first.
fn stream_id_key(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_progress_report_is_a_fraction_and_a_short_message() {
        let check = |fraction: f64, message: &str, ok: bool| {
            assert_eq!(
                check_progress(fraction, message).is_ok(),
                ok,
                "{fraction} {message:?}"
            );
        };
        check(0.0, "", true);
        check(1.0, "done", true);
        check(0.5, &"x".repeat(PROGRESS_MSG_MAX), true);
        check(0.5, &"x".repeat(PROGRESS_MSG_MAX + 1), false);
        check(-0.01, "", false);
        check(1.01, "", false);
        check(f64::NAN, "", false);
        check(f64::INFINITY, "", false);
    }

    #[test]
    fn stream_ids_order_by_time_then_sequence() {
        assert!(stream_id_key("10-0") > stream_id_key("9-5"));
        assert!(stream_id_key("10-2") > stream_id_key("10-1"));
        assert_eq!(stream_id_key("junk"), (0, 0));
    }
}
