//! Claiming: a worker's request for tasks, the claim script's reply (what
//! it decided for each entry, why a stream's next entry was not taken), and
//! in Cluster one claim per class read as one. The claim rides in the
//! worker's round trip ([`super::round_trip`]).

use redis::{Cmd, Value};

use super::reply::{array, fields, int, reply_ok, text};
use super::round_trip::streams_of;
use super::{Store, StoreError, StreamRef, Trip};
use crate::keys::GROUP;
use crate::scripts;
use crate::wire::{Fields, field};

/// A worker's request to claim tasks.
#[derive(Debug, Clone)]
pub struct ClaimRequest<'a> {
    pub max: usize,
    pub device: &'a str,
    /// When non-zero, entries waiting this long (ms) are taken first.
    pub aging_ms: u64,
    /// Ask for the streams' newest ids should they run dry (to arm the
    /// blocking wait); not needed while a wait is armed.
    pub want_last_ids: bool,
    /// When non-zero, take over entries idle this long (ms), whoever holds
    /// them: their lease ran out.
    pub sweep_idle_ms: u64,
    /// An entry delivered more often than this is poison.
    pub max_deliveries: u32,
    /// Move retries that are due back into their streams first.
    pub promote: bool,
    /// Workers that are gone (their heartbeat lapsed, or their process is
    /// known to have ended): their pending entries are taken over.
    pub dead_consumers: &'a [DeadConsumer],
    /// The worker's free device memory, bytes; `None` for no limit (a CPU
    /// worker).
    pub free_memory: Option<u64>,
    /// One routing rule per stream, in the wire form of
    /// [`crate::routing::Rule::wire`]; empty: take everything.
    pub rules: &'a [String],
    /// The doorbell arrivals that woke an idle worker, as (position in the
    /// claim's streams, entry id): when the claim has nothing else to do
    /// and the group has delivered them all (another worker's claim took
    /// them first), the script returns at once with
    /// [`Claimed::taken_elsewhere`]. Empty: claim in full.
    pub arrivals: &'a [(usize, String)],
}

/// A worker whose tasks are to be taken over, and what is known of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadConsumer {
    /// Its consumer name (the worker id).
    pub name: String,
    /// Its process still exists (stopped or hung): its heartbeat lapsed but
    /// it did not die, so its tasks are not blamed for its death.
    pub stalled: bool,
}

/// What the claim script decided for one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Started on this worker: run it.
    Run,
    /// Past its deadline and not started: record it as expired.
    Expired,
    /// Its record is already final; the script acknowledged it.
    Skip,
    /// No readable task id, or a task record key of another type (the
    /// claim's note says which): bury it.
    Malformed,
    /// Blamed for `max_deliveries` worker deaths (or failed devices): it
    /// kills its workers. Dead-letter it without running it again.
    Poison,
}

/// One claimed entry.
#[derive(Debug, Clone)]
pub struct ClaimedEntry {
    /// Its stream's position in the claim's stream list.
    pub stream_index: usize,
    pub entry_id: String,
    pub verdict: Verdict,
    pub fields: Fields,
    /// Which attempt this delivery is: the entry's attempt plus the times it
    /// was delivered before.
    pub attempt: u32,
    /// For a poison entry, what was observed: how its workers died (alone,
    /// beside other tasks, stalled) and its failed devices. Empty otherwise.
    pub observed: String,
}

/// The result of one claim.
#[derive(Debug, Clone, Default)]
pub struct Claimed {
    pub entries: Vec<ClaimedEntry>,
    /// Present when the streams ran dry: the newest entry id of each stream,
    /// to wait from with a blocking `XREAD`.
    pub last_ids: Option<Vec<String>>,
    /// `stream entry-id` of entries the sweep found deleted while pending.
    pub gone: Vec<String>,
    /// Per stream (empty when none was), why its next entry was not taken.
    pub blocked: Vec<Blocked>,
    /// The claim looked no further: every arrival it was given had been
    /// delivered to another claim already (see [`ClaimRequest::arrivals`]).
    /// Nothing else in the result is meaningful then.
    pub taken_elsewhere: bool,
}

/// Why a stream's next entry was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocked {
    /// It was, or there is none, or the rule is off.
    No,
    /// The routing rule admits it in this many ms (it must wait longer).
    For(u64),
    /// It does not fit the worker's free memory.
    Memory,
    /// No clause of the routing rule admits it.
    Rule,
    /// Its class or priority is paused (`tandem pause`).
    Paused,
}

impl Store {
    /// Creates the consumer group on each stream (and the stream) if missing.
    /// Groups start at id 0 so tasks submitted before any worker existed run.
    pub async fn ensure_groups(&self, streams: &[StreamRef]) -> Result<(), StoreError> {
        let cmds: Vec<Cmd> = streams
            .iter()
            .map(|s| {
                let mut cmd = redis::cmd("XGROUP");
                cmd.arg("CREATE")
                    .arg(&s.key)
                    .arg(GROUP)
                    .arg("0")
                    .arg("MKSTREAM");
                cmd
            })
            .collect();
        for reply in self.pipeline(&cmds).await? {
            match reply {
                Value::ServerError(e) if e.code() == "BUSYGROUP" => {}
                other => {
                    reply_ok(other)?;
                }
            }
        }
        Ok(())
    }

    pub(super) fn claim_cmd(
        &self,
        streams: &[StreamRef],
        consumer: &str,
        request: &ClaimRequest<'_>,
    ) -> Cmd {
        let mut call = scripts::CLAIM.invocation(self.events);
        for stream in streams {
            call = call.key(&stream.key);
        }
        call = call
            .arg(GROUP)
            .arg(consumer)
            .arg(request.max)
            .arg(request.device)
            .arg(request.aging_ms)
            .arg(if request.want_last_ids { "1" } else { "0" })
            .arg(request.sweep_idle_ms)
            .arg(request.max_deliveries)
            .arg(if request.promote { "1" } else { "0" })
            .arg(
                request
                    .free_memory
                    .map_or_else(|| "-1".to_owned(), |m| m.to_string()),
            )
            .arg(request.dead_consumers.len());
        for dead in request.dead_consumers {
            call = call
                .arg(dead.name.as_str())
                .arg(if dead.stalled { "stalled" } else { "dead" });
        }
        call = call.arg(request.arrivals.len());
        for (index, entry_id) in request.arrivals {
            call = call.arg(index + 1).arg(entry_id.as_str());
        }
        for rule in request.rules {
            call = call.arg(rule.as_str());
        }
        call.into_cmd()
    }
}

/// The device memory an entry declares (`memory_bytes`; 0 when absent or
/// unreadable: the claim script judged it the same way).
fn declared_memory(fields: &Fields) -> u64 {
    fields
        .iter()
        .find(|(name, _)| name.as_slice() == field::MEMORY_BYTES.as_bytes())
        .and_then(|(_, value)| std::str::from_utf8(value).ok()?.parse().ok())
        .unwrap_or(0)
}

/// One claim per class, in turn, until `max` is taken, read as one claim
/// over every stream (Cluster: each class is its own slot).
pub(super) struct ClassClaims<'t, 'a> {
    trip: &'t Trip<'a>,
    request: &'t ClaimRequest<'a>,
    groups: &'t [Vec<usize>],
    /// The next class to claim from, as a position in `groups`.
    next: usize,
    left: usize,
    /// Device memory the entries started so far declared: each class's
    /// claim sees the free memory less this.
    booked: u64,
    claimed: Claimed,
    last_ids: Vec<String>,
    dry: bool,
    blocked: Vec<Blocked>,
    any_blocked: bool,
}

impl<'t, 'a> ClassClaims<'t, 'a> {
    pub(super) fn new(
        trip: &'t Trip<'a>,
        request: &'t ClaimRequest<'a>,
        groups: &'t [Vec<usize>],
    ) -> Self {
        let count = trip.streams.len();
        Self {
            trip,
            request,
            groups,
            next: 0,
            left: request.max,
            booked: 0,
            claimed: Claimed::default(),
            last_ids: vec![String::new(); count],
            dry: true,
            blocked: vec![Blocked::No; count],
            any_blocked: false,
        }
    }

    /// The claim of the next class, for what is left of `max`.
    pub(super) fn next_cmd(&self, store: &Store) -> Cmd {
        self.claim_cmd(store, self.next, self.left)
    }

    /// The claim of class `n` (a position in `groups`) for `max` entries.
    fn claim_cmd(&self, store: &Store, n: usize, max: usize) -> Cmd {
        let members = &self.groups[n];
        let rules: Vec<String> = if self.request.rules.is_empty() {
            Vec::new()
        } else {
            members
                .iter()
                .filter_map(|&i| self.request.rules.get(i).cloned())
                .collect()
        };
        let sub = ClaimRequest {
            max,
            rules: &rules,
            // Positions would have to be mapped per class, and a later
            // class's claim comes after this one's writes: claim in full.
            arrivals: &[],
            free_memory: self
                .request
                .free_memory
                .map(|free| free.saturating_sub(self.booked)),
            ..self.request.clone()
        };
        store.claim_cmd(
            &streams_of(self.trip.streams, members),
            self.trip.consumer,
            &sub,
        )
    }

    /// Takes in the reply of the claim `next_cmd` made, then claims from the
    /// further classes while `max` is not reached. A class whose consumer
    /// group is gone (its master restarted empty) gets its groups again and
    /// one more try. When `max` is reached with classes left and the round
    /// has housekeeping (promoting due retries, the sweep, dead workers),
    /// those classes get a claim for nothing, at once, that does it.
    pub(super) async fn finish(
        &mut self,
        store: &Store,
        first: Result<Value, StoreError>,
    ) -> Result<Claimed, StoreError> {
        let mut reply = first;
        let mut retried = false;
        loop {
            let streams = streams_of(self.trip.streams, &self.groups[self.next]);
            let part = match reply.and_then(|v| parse_claimed(v, &streams)) {
                Ok(part) => part,
                // The dispatcher recreates every group on this error.
                Err(err) if self.next == 0 => return Err(err),
                Err(err) if err.is_missing_group() && !retried => {
                    tracing::warn!(
                        "consumer groups of {} are gone (its master restarted empty?); recreating them",
                        streams[0].class
                    );
                    retried = true;
                    reply = match store.ensure_groups(&streams).await {
                        Ok(()) => store.single(self.next_cmd(store)).await,
                        Err(err) => Err(err),
                    };
                    continue;
                }
                // Entries claimed from earlier classes are started: hand
                // them over; the next round tries this class again.
                Err(err) => {
                    tracing::warn!("claim from class {} failed: {err}", streams[0].class);
                    self.dry = false;
                    break;
                }
            };
            retried = false;
            self.add(part);
            self.next += 1;
            if self.next == self.groups.len() {
                break;
            }
            if self.left == 0 {
                self.dry = false;
                self.housekeep(store).await;
                break;
            }
            reply = store.single(self.next_cmd(store)).await;
        }
        let mut claimed = std::mem::take(&mut self.claimed);
        claimed.last_ids = self.dry.then(|| std::mem::take(&mut self.last_ids));
        if self.any_blocked {
            claimed.blocked = std::mem::take(&mut self.blocked);
        }
        Ok(claimed)
    }

    /// Claims of nothing for the classes not yet asked, when the round has
    /// work besides claiming: on one server that work is done for every
    /// class by the one claim.
    async fn housekeep(&mut self, store: &Store) {
        let request = self.request;
        if !request.promote && request.sweep_idle_ms == 0 && request.dead_consumers.is_empty() {
            return;
        }
        let rest: Vec<usize> = (self.next..self.groups.len()).collect();
        let cmds: Vec<Cmd> = rest.iter().map(|&n| self.claim_cmd(store, n, 0)).collect();
        let replies = match store.pipeline(&cmds).await {
            Ok(replies) => replies,
            Err(err) => {
                tracing::warn!("housekeeping claims failed: {err}");
                return;
            }
        };
        for (n, reply) in rest.into_iter().zip(replies) {
            let streams = streams_of(self.trip.streams, &self.groups[n]);
            match reply_ok(reply).and_then(|v| parse_claimed(v, &streams)) {
                Ok(part) => {
                    self.next = n;
                    self.add(part);
                }
                Err(err) => {
                    tracing::warn!("housekeeping claim of {} failed: {err}", streams[0].class)
                }
            }
        }
    }

    /// Adds one class's claim, its positions turned into the worker's.
    fn add(&mut self, part: Claimed) {
        let members = &self.groups[self.next];
        self.left = self.left.saturating_sub(part.entries.len());
        for mut entry in part.entries {
            // parse_claimed checked the position against this class's
            // streams.
            entry.stream_index = members[entry.stream_index];
            if entry.verdict == Verdict::Run {
                self.booked = self.booked.saturating_add(declared_memory(&entry.fields));
            }
            self.claimed.entries.push(entry);
        }
        match part.last_ids {
            Some(ids) => {
                for (&i, id) in members.iter().zip(ids) {
                    self.last_ids[i] = id;
                }
            }
            None => self.dry = false,
        }
        self.claimed.gone.extend(part.gone);
        if !part.blocked.is_empty() {
            self.any_blocked = true;
            for (&i, why) in members.iter().zip(part.blocked) {
                self.blocked[i] = why;
            }
        }
    }
}

pub(super) fn parse_claimed(reply: Value, streams: &[StreamRef]) -> Result<Claimed, StoreError> {
    let mut parts = array(reply, "claim")?.into_iter();
    let entries = array(parts.next().unwrap_or(Value::Nil), "claim")?;
    let last_ids = array(parts.next().unwrap_or(Value::Nil), "claim")?;
    let gone = array(parts.next().unwrap_or(Value::Nil), "claim")?;
    let blocked = array(parts.next().unwrap_or(Value::Array(vec![])), "claim")?
        .into_iter()
        .map(|v| {
            int(v, "claim").map(|code| match code {
                0 => Blocked::No,
                -1 => Blocked::Memory,
                -3 => Blocked::Paused,
                n if n > 0 => Blocked::For(u64::try_from(n).unwrap_or(0)),
                _ => Blocked::Rule,
            })
        })
        .collect::<Result<_, _>>()?;
    let taken_elsewhere = match parts.next() {
        None => false,
        Some(flag) => int(flag, "claim")? == 1,
    };
    let mut claimed = Claimed {
        blocked,
        taken_elsewhere,
        entries: Vec::with_capacity(entries.len()),
        last_ids: None,
        gone: gone
            .into_iter()
            .map(|v| text(v, "claim"))
            .collect::<Result<_, _>>()?,
    };
    for entry in entries {
        let mut items = array(entry, "claim")?.into_iter();
        let index = int(items.next().unwrap_or(Value::Nil), "claim")?;
        let stream_index = usize::try_from(index - 1)
            .ok()
            .filter(|&i| i < streams.len())
            .ok_or_else(|| StoreError::Protocol {
                what: "claim",
                detail: format!("stream index {index} out of range"),
            })?;
        let entry_id = text(items.next().unwrap_or(Value::Nil), "claim")?;
        let verdict = match text(items.next().unwrap_or(Value::Nil), "claim")?.as_str() {
            "run" => Verdict::Run,
            "expired" => Verdict::Expired,
            "skip" => Verdict::Skip,
            "malformed" => Verdict::Malformed,
            "poison" => Verdict::Poison,
            other => {
                return Err(StoreError::Protocol {
                    what: "claim",
                    detail: format!("unknown verdict {other:?}"),
                });
            }
        };
        let fields = fields(items.next().unwrap_or(Value::Nil), "claim")?;
        let attempt = int(items.next().unwrap_or(Value::Int(1)), "claim")?;
        let observed = match items.next() {
            Some(value) => text(value, "claim")?,
            None => String::new(),
        };
        claimed.entries.push(ClaimedEntry {
            stream_index,
            entry_id,
            verdict,
            fields,
            attempt: u32::try_from(attempt).unwrap_or(1).max(1),
            observed,
        });
    }
    if !last_ids.is_empty() {
        let ids = last_ids
            .into_iter()
            .map(|v| text(v, "claim"))
            .collect::<Result<Vec<_>, _>>()?;
        claimed.last_ids = Some(ids);
    }
    Ok(claimed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::{Class, Priority};

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn claim_replies_parse() {
        let streams = vec![StreamRef {
            class: Class::Cpu,
            priority: Priority::High,
            key: "t:{cpu}:stream:high".into(),
        }];
        let reply = Value::Array(vec![
            Value::Array(vec![Value::Array(vec![
                Value::Int(1),
                bulk("1-0"),
                bulk("poison"),
                Value::Array(vec![bulk("id"), bulk("x")]),
                Value::Int(4),
                bulk("its worker died 3 times"),
            ])]),
            Value::Array(vec![bulk("1-0")]),
            Value::Array(vec![bulk("t:{cpu}:stream:high 0-1")]),
            Value::Array(vec![Value::Int(250)]),
        ]);
        let claimed = parse_claimed(reply, &streams).unwrap();
        assert_eq!(claimed.entries.len(), 1);
        assert_eq!(claimed.entries[0].verdict, Verdict::Poison);
        assert_eq!(claimed.entries[0].stream_index, 0);
        assert_eq!(claimed.entries[0].attempt, 4);
        assert_eq!(claimed.entries[0].observed, "its worker died 3 times");
        assert_eq!(
            claimed.entries[0].fields,
            vec![(b"id".to_vec(), b"x".to_vec())]
        );
        assert_eq!(claimed.last_ids, Some(vec!["1-0".to_owned()]));
        assert_eq!(claimed.gone, vec!["t:{cpu}:stream:high 0-1".to_owned()]);
        assert_eq!(claimed.blocked, vec![Blocked::For(250)]);

        let out_of_range = Value::Array(vec![
            Value::Array(vec![Value::Array(vec![
                Value::Int(2),
                bulk("1-0"),
                bulk("run"),
                Value::Array(vec![]),
            ])]),
            Value::Array(vec![]),
        ]);
        assert!(parse_claimed(out_of_range, &streams).is_err());
        assert!(parse_claimed(bulk("garbage"), &streams).is_err());
    }
}
