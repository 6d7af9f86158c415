//! Flow control in Redis: promoting due delayed tasks (`promote.lua`),
//! pausing and resuming, setting rate limits (`flow.lua`), and reading a
//! class's flow state for `tandem queues`. The claim script enforces what
//! the flow hashes say; see [`crate::flow`] for the vocabulary.

use redis::{Cmd, Value};

use super::reply::{array, hash_map, int, reply_ok};
use super::{Store, StoreError};
use crate::flow::{LimitTarget, PauseTarget, Rate};
use crate::scripts;
use crate::task::{Class, Priority};

/// What one promotion call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Promoted {
    /// Tasks moved to their streams (or found stale and dropped).
    pub promoted: u64,
    /// When the delayed set's head is due (ms, the Redis clock), if any.
    pub next_due_ms: Option<u64>,
    /// The Redis clock when the call ran, ms.
    pub now_ms: u64,
}

/// One rate limit of a class, as `tandem queues` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitState {
    pub target: LimitTarget,
    pub rate: Rate,
    /// When its next start is allowed (ms; the Redis clock), when that is
    /// later than now: tasks are waiting for it.
    pub next_start_ms: Option<u64>,
}

/// A class's flow state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FlowState {
    /// Since when the whole class is paused (ms).
    pub paused_since_ms: Option<u64>,
    pub paused_priorities: Vec<(Priority, u64)>,
    pub paused_kinds: Vec<(String, u64)>,
    /// Tasks each paused kind holds.
    pub held: Vec<(String, u64)>,
    pub limits: Vec<LimitState>,
    /// Tasks in the delayed set (scheduled, limited, or waiting to retry),
    /// and when its head is due.
    pub delayed: u64,
    pub next_due_ms: Option<u64>,
    /// The Redis clock when it was read, ms.
    pub now_ms: u64,
}

impl FlowState {
    /// Nothing paused and no limit.
    pub fn is_free(&self) -> bool {
        self.paused_since_ms.is_none()
            && self.paused_priorities.is_empty()
            && self.paused_kinds.is_empty()
            && self.limits.is_empty()
    }
}

/// How many tasks one promotion call moves at most; a caller that gets
/// this many calls again at once.
pub const PROMOTE_BATCH: u64 = 500;

impl Store {
    /// Promotes the due delayed tasks of each class, one script call per
    /// class in one pipeline; a class's failure does not fail the others.
    pub async fn promote(
        &self,
        classes: &[Class],
    ) -> Result<Vec<Result<Promoted, StoreError>>, StoreError> {
        let cmds: Vec<Cmd> = classes
            .iter()
            .map(|&class| {
                scripts::PROMOTE
                    .invocation(self.events)
                    .key(self.keys.delayed(class))
                    .arg(PROMOTE_BATCH)
                    .into_cmd()
            })
            .collect();
        let replies = self.pipeline(&cmds).await?;
        Ok(replies.into_iter().map(parse_promoted).collect())
    }

    fn flow_cmd(&self, class: Class, op: &str, field: &str, value: Option<&str>) -> Cmd {
        let mut call = scripts::FLOW
            .invocation(self.events)
            .key(self.keys.flow(class))
            .arg(op)
            .arg(field);
        if let Some(value) = value {
            call = call.arg(value);
        }
        call.into_cmd()
    }

    /// Runs one flow operation in each class; returns the sums of the
    /// script's two counts (changed, released).
    async fn flow_op(
        &self,
        classes: &[Class],
        op: &str,
        field: &str,
        value: Option<&str>,
    ) -> Result<(u64, u64), StoreError> {
        let cmds: Vec<Cmd> = classes
            .iter()
            .map(|&class| self.flow_cmd(class, op, field, value))
            .collect();
        let mut changed = 0;
        let mut released = 0;
        for reply in self.pipeline_replicated(&cmds).await? {
            let mut parts = array(reply_ok(reply)?, "flow")?.into_iter();
            changed +=
                u64::try_from(int(parts.next().unwrap_or(Value::Int(0)), "flow")?).unwrap_or(0);
            released +=
                u64::try_from(int(parts.next().unwrap_or(Value::Int(0)), "flow")?).unwrap_or(0);
        }
        Ok((changed, released))
    }

    /// Pauses `target` (a kind: in each of `classes`). Returns how many
    /// classes were not paused there before.
    pub async fn pause(&self, target: &PauseTarget, classes: &[Class]) -> Result<u64, StoreError> {
        let (changed, _) = self
            .flow_op(&target.classes(classes), "pause", &target.field(), None)
            .await?;
        Ok(changed)
    }

    /// Resumes `target`. Returns how many classes it was paused in, and
    /// how many held tasks (of a paused kind) were released.
    pub async fn resume(
        &self,
        target: &PauseTarget,
        classes: &[Class],
    ) -> Result<(u64, u64), StoreError> {
        self.flow_op(&target.classes(classes), "resume", &target.field(), None)
            .await
    }

    /// Sets a rate limit in each of `classes` (each enforces its own).
    pub async fn set_limit(
        &self,
        target: &LimitTarget,
        rate: Rate,
        classes: &[Class],
    ) -> Result<(), StoreError> {
        self.flow_op(classes, "limit", &target.field(), Some(&rate.wire()))
            .await?;
        Ok(())
    }

    /// Removes a rate limit from each of `classes`; returns how many had it.
    pub async fn remove_limit(
        &self,
        target: &LimitTarget,
        classes: &[Class],
    ) -> Result<u64, StoreError> {
        let (changed, _) = self
            .flow_op(classes, "unlimit", &target.field(), None)
            .await?;
        Ok(changed)
    }

    /// Each class's flow state, read in one pipeline.
    pub async fn flow_states(&self, classes: &[Class]) -> Result<Vec<FlowState>, StoreError> {
        let mut cmds = Vec::new();
        for &class in classes {
            cmds.push(hgetall(&self.keys.flow(class)));
            cmds.push(hgetall(&self.keys.limit_tat(class)));
            let mut card = redis::cmd("ZCARD");
            card.arg(self.keys.delayed(class));
            cmds.push(card);
            let mut head = redis::cmd("ZRANGE");
            head.arg(self.keys.delayed(class))
                .arg(0)
                .arg(0)
                .arg("WITHSCORES");
            cmds.push(head);
            cmds.push(redis::cmd("TIME"));
        }
        let replies = self.pipeline(&cmds).await?;
        let mut replies = replies.into_iter();
        let mut states = Vec::with_capacity(classes.len());
        for &class in classes {
            let mut next = || reply_ok(replies.next().unwrap_or(Value::Nil));
            let flow = hash_map(next()?, "flow")?;
            let tats = hash_map(next()?, "limit_tat")?;
            let delayed = u64::try_from(int(next()?, "ZCARD")?).unwrap_or(0);
            let head = array(next()?, "ZRANGE")?;
            let now_ms = super::reply::server_time_ms(next()?)?;
            let mut state = FlowState {
                delayed,
                now_ms,
                next_due_ms: head.get(1).and_then(|v| score_ms(v.clone())),
                ..FlowState::default()
            };
            let mut kinds = Vec::new();
            for (name, value) in &flow {
                let (Ok(name), Ok(value)) = (std::str::from_utf8(name), std::str::from_utf8(value))
                else {
                    continue;
                };
                let since = value.parse::<u64>().unwrap_or(0);
                if name == "pause" {
                    state.paused_since_ms = Some(since);
                } else if let Some(priority) = name.strip_prefix("pause:priority:") {
                    if let Ok(priority) = priority.parse() {
                        state.paused_priorities.push((priority, since));
                    }
                } else if let Some(kind) = name.strip_prefix("pause:kind:") {
                    state.paused_kinds.push((kind.to_owned(), since));
                    kinds.push(kind.to_owned());
                } else if let Some(target) = name.strip_prefix("limit:")
                    && let (Ok(target), Some(rate)) =
                        (target.parse::<LimitTarget>(), Rate::from_wire(value))
                {
                    let tat_us = tats
                        .get(target.to_string().as_bytes())
                        .and_then(|v| std::str::from_utf8(v).ok()?.parse::<f64>().ok());
                    let next_start_ms = tat_us
                        .map(|us| (us / 1000.0).ceil() as u64)
                        .filter(|&ms| ms > now_ms);
                    state.limits.push(LimitState {
                        target,
                        rate,
                        next_start_ms,
                    });
                }
            }
            state.paused_priorities.sort();
            state.paused_kinds.sort();
            state.limits.sort_by_key(|limit| limit.target.to_string());
            if !kinds.is_empty() {
                kinds.sort();
                let cmds: Vec<Cmd> = kinds
                    .iter()
                    .map(|kind| {
                        let mut card = redis::cmd("ZCARD");
                        card.arg(self.keys.held(class, kind));
                        card
                    })
                    .collect();
                for (kind, reply) in kinds.into_iter().zip(self.pipeline(&cmds).await?) {
                    let count = u64::try_from(int(reply_ok(reply)?, "ZCARD")?).unwrap_or(0);
                    state.held.push((kind, count));
                }
            }
            states.push(state);
        }
        Ok(states)
    }
}

fn hgetall(key: &str) -> Cmd {
    let mut cmd = redis::cmd("HGETALL");
    cmd.arg(key);
    cmd
}

/// A sorted-set score as whole ms.
fn score_ms(value: Value) -> Option<u64> {
    match value {
        Value::Double(d) => Some(d as u64),
        Value::Int(n) => u64::try_from(n).ok(),
        Value::BulkString(b) => std::str::from_utf8(&b)
            .ok()?
            .parse::<f64>()
            .ok()
            .map(|d| d as u64),
        Value::SimpleString(s) => s.parse::<f64>().ok().map(|d| d as u64),
        _ => None,
    }
}

fn parse_promoted(reply: Value) -> Result<Promoted, StoreError> {
    let mut parts = array(reply_ok(reply)?, "promote")?.into_iter();
    let mut next = |what| int(parts.next().unwrap_or(Value::Nil), what);
    let promoted = u64::try_from(next("promote")?).unwrap_or(0);
    let next_due = next("promote")?;
    let now_ms = u64::try_from(next("promote")?).unwrap_or(0);
    Ok(Promoted {
        promoted,
        next_due_ms: u64::try_from(next_due).ok(),
        now_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn promote_replies_parse() {
        let reply = Value::Array(vec![Value::Int(3), Value::Int(1_700), Value::Int(1_650)]);
        assert_eq!(
            parse_promoted(reply).unwrap(),
            Promoted {
                promoted: 3,
                next_due_ms: Some(1_700),
                now_ms: 1_650
            }
        );
        let empty = Value::Array(vec![Value::Int(0), Value::Int(-1), Value::Int(9)]);
        assert_eq!(parse_promoted(empty).unwrap().next_due_ms, None);
        assert!(parse_promoted(Value::Nil).is_err());
    }
}
