//! What workers do, one round trip at a time: commit finished tasks, extend
//! the leases of running ones, and claim new ones.

use redis::{Cmd, Value};

use super::reply::{array, fields, int, reply_ok, text};
use super::{Store, StoreError, StreamRef};
use crate::keys::GROUP;
use crate::scripts;
use crate::task::{Class, Priority, TaskId};
use crate::wire::{Fields, Finish, TaskEntry};

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
}

/// What becomes of a task after this attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Disposition {
    /// Its record takes its final status now.
    Final,
    /// It goes back into its stream after this many milliseconds.
    Retry { after_ms: u64 },
    /// It goes to the dead-letter stream and its record ends `failed`.
    Dead,
    /// It goes back to the end of its stream at once, for another worker,
    /// declaring at least this much memory (the device it ran on had less
    /// room than that); its record says `queued` again and its history
    /// notes why. Not a failed attempt.
    HandBack { min_memory_bytes: u64 },
    /// It was cut into these shards (entries of its own stream, each a task
    /// with a record of its own); its record stays `running` until the last
    /// shard's commit puts it back as a merge entry (`split.lua`).
    Split { shards: Vec<TaskEntry> },
}

/// A task to commit.
#[derive(Debug, Clone)]
pub struct Completion {
    pub id: TaskId,
    pub class: Class,
    pub priority: Priority,
    pub entry_id: String,
    pub reply_to: Option<String>,
    pub attempt: u32,
    pub disposition: Disposition,
    pub finish: Finish,
}

/// The outcome of committing one task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    /// The outcome is now the task's record (or its retry is scheduled).
    Written,
    /// A cancel requested while the task ran made the record `cancelled`,
    /// whatever the outcome said; the rest of it was discarded.
    Cancelled,
    /// The record was already final; this outcome was discarded.
    AlreadyFinal,
    /// This worker no longer owns the entry (its lease was taken over); the
    /// outcome was discarded and nothing changed.
    LeaseLost,
}

/// One round trip of a worker: commits first (they free slots), then lease
/// extensions, then a claim.
#[derive(Debug)]
pub struct Trip<'a> {
    /// The worker's streams, highest priority first.
    pub streams: &'a [StreamRef],
    /// The worker's consumer name.
    pub consumer: &'a str,
    pub completions: &'a [Completion],
    /// Entries whose leases to extend: (index into `streams`, entry id).
    pub extend: &'a [(usize, String)],
    pub claim: Option<ClaimRequest<'a>>,
}

/// What one round trip did.
#[derive(Debug)]
pub struct TripResult {
    /// One per completion, in order.
    pub commits: Vec<Result<Committed, StoreError>>,
    /// Entry ids whose leases this worker no longer holds.
    pub lost: Option<Result<Vec<String>, StoreError>>,
    pub claimed: Option<Result<Claimed, StoreError>>,
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

    fn claim_cmd(&self, streams: &[StreamRef], consumer: &str, request: &ClaimRequest<'_>) -> Cmd {
        let mut call = scripts::CLAIM.invocation();
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
        for rule in request.rules {
            call = call.arg(rule.as_str());
        }
        call.into_cmd()
    }

    fn split_cmd(&self, consumer: &str, completion: &Completion, shards: &[TaskEntry]) -> Cmd {
        let class = completion.class;
        let mut call = scripts::SPLIT
            .invocation()
            .key(self.keys.task(class, &completion.id))
            .key(self.keys.stream_ref(class, completion.priority))
            .arg(GROUP)
            .arg(&completion.entry_id)
            .arg(consumer)
            .arg(completion.id.to_string())
            .arg(shards.len());
        for shard in shards {
            let fields = shard.fields();
            call = call.arg(shard.id.to_string()).arg(fields.len());
            for (name, value) in fields {
                call = call.arg(name).arg(value);
            }
        }
        call.into_cmd()
    }

    fn complete_cmd(&self, consumer: &str, completion: &Completion) -> Cmd {
        let class = completion.class;
        let mut call = scripts::COMPLETE
            .invocation()
            .key(self.keys.task(class, &completion.id))
            .key(self.keys.stream_ref(class, completion.priority))
            .key(self.keys.delayed(class))
            .key(self.keys.dead(class));
        if let Some(reply_to) = &completion.reply_to
            && self.keys.is_reply_for(class, reply_to)
        {
            call = call.key(reply_to);
        }
        let (disposition, after_ms) = match &completion.disposition {
            Disposition::Final => ("final", 0),
            Disposition::Retry { after_ms } => ("retry", *after_ms),
            Disposition::Dead => ("dead", 0),
            Disposition::HandBack { min_memory_bytes } => ("handback", *min_memory_bytes),
            Disposition::Split { shards } => return self.split_cmd(consumer, completion, shards),
        };
        call = call
            .arg(GROUP)
            .arg(&completion.entry_id)
            .arg(consumer)
            .arg(self.retention.result_ttl_s)
            .arg(self.retention.reply_maxlen)
            .arg(self.retention.reply_ttl_s)
            .arg(self.retention.inline_result_bytes)
            .arg(completion.id.to_string())
            .arg(completion.finish.status.as_str())
            .arg(disposition)
            .arg(after_ms)
            .arg(self.retention.dead_letter_maxlen)
            .arg(completion.attempt);
        for (name, value) in completion.finish.record_pairs() {
            call = call.arg(name).arg(value);
        }
        call.into_cmd()
    }

    fn extend_cmd(&self, streams: &[StreamRef], consumer: &str, held: &[(usize, String)]) -> Cmd {
        let mut call = scripts::EXTEND.invocation();
        for stream in streams {
            call = call.key(&stream.key);
        }
        call = call.arg(GROUP).arg(consumer);
        for (index, entry_id) in held {
            call = call.arg(index + 1).arg(entry_id.as_str());
        }
        call.into_cmd()
    }

    /// Runs one round trip: the commits, then the lease extensions, then the
    /// claim, as one pipeline.
    pub async fn round_trip(&self, trip: &Trip<'_>) -> Result<TripResult, StoreError> {
        let groups = self.stream_groups(trip.streams);
        if groups.len() > 1 {
            return self.round_trip_by_class(trip, &groups).await;
        }
        let mut cmds: Vec<Cmd> = trip
            .completions
            .iter()
            .map(|c| self.complete_cmd(trip.consumer, c))
            .collect();
        if !trip.extend.is_empty() {
            cmds.push(self.extend_cmd(trip.streams, trip.consumer, trip.extend));
        }
        if let Some(request) = &trip.claim {
            cmds.push(self.claim_cmd(trip.streams, trip.consumer, request));
        }
        let mut replies = self.pipeline(&cmds).await?;
        if replies.len() != cmds.len() {
            return Err(StoreError::Protocol {
                what: "round trip",
                detail: format!("{} replies for {} commands", replies.len(), cmds.len()),
            });
        }
        let claimed = trip.claim.as_ref().map(|_| {
            let reply = replies.pop().unwrap_or(Value::Nil);
            reply_ok(reply).and_then(|v| parse_claimed(v, trip.streams))
        });
        let lost = (!trip.extend.is_empty()).then(|| {
            let reply = replies.pop().unwrap_or(Value::Nil);
            reply_ok(reply).and_then(|v| {
                array(v, "extend")?
                    .into_iter()
                    .map(|id| text(id, "extend"))
                    .collect()
            })
        });
        let commits = replies.into_iter().map(parse_committed).collect();
        Ok(TripResult {
            commits,
            lost,
            claimed,
        })
    }

    /// The worker's streams cut by slot, as positions in `streams`: in
    /// Cluster one group per class (each class has its own hash tag), else
    /// one group of them all.
    fn stream_groups(&self, streams: &[StreamRef]) -> Vec<Vec<usize>> {
        if !self.is_cluster() {
            return vec![(0..streams.len()).collect()];
        }
        let mut groups: Vec<(Class, Vec<usize>)> = Vec::new();
        for (index, stream) in streams.iter().enumerate() {
            match groups.iter_mut().find(|(class, _)| *class == stream.class) {
                Some((_, members)) => members.push(index),
                None => groups.push((stream.class, vec![index])),
            }
        }
        groups.into_iter().map(|(_, members)| members).collect()
    }

    /// A round trip when the worker's streams lie in several slots (Cluster):
    /// the commits, one lease extension per class and the first class's
    /// claim go out as one call (one pipeline per slot, at once); then, while
    /// `max` is not reached, one claim per further class, in the order of
    /// the worker's classes. Within a class, priorities hold as on one
    /// server; across classes, the first class is served first.
    async fn round_trip_by_class(
        &self,
        trip: &Trip<'_>,
        groups: &[Vec<usize>],
    ) -> Result<TripResult, StoreError> {
        let mut cmds: Vec<Cmd> = trip
            .completions
            .iter()
            .map(|c| self.complete_cmd(trip.consumer, c))
            .collect();
        let commit_count = cmds.len();
        for members in groups {
            let held = local_held(members, trip.extend);
            if !held.is_empty() {
                cmds.push(self.extend_cmd(
                    &streams_of(trip.streams, members),
                    trip.consumer,
                    &held,
                ));
            }
        }
        let extend_count = cmds.len() - commit_count;
        let mut claims = trip
            .claim
            .as_ref()
            .map(|request| ClassClaims::new(trip, request, groups));
        // The first class's claim rides along when the commits and
        // extensions are all of its class (its slot): a call to one master,
        // which fails or succeeds as a whole. Commits of other classes go
        // first on their own, so that a failure of another master cannot
        // throw away the reply of a claim that ran (its entries would wait
        // for their lease to run out).
        let first_class = trip.streams[groups[0][0]].class;
        let one_slot = trip.completions.iter().all(|c| c.class == first_class)
            && groups[1..]
                .iter()
                .all(|members| local_held(members, trip.extend).is_empty());
        let rides = one_slot && claims.is_some();
        if rides && let Some(claims) = &claims {
            cmds.push(claims.next_cmd(self));
        }
        let replies = self.pipeline(&cmds).await?;
        if replies.len() != cmds.len() {
            return Err(StoreError::Protocol {
                what: "round trip",
                detail: format!("{} replies for {} commands", replies.len(), cmds.len()),
            });
        }
        let mut replies = replies.into_iter();
        let commits = replies
            .by_ref()
            .take(commit_count)
            .map(parse_committed)
            .collect();
        let extends: Vec<Value> = replies.by_ref().take(extend_count).collect();
        let lost = (!trip.extend.is_empty()).then(|| {
            let mut lost = Vec::new();
            for reply in extends {
                for id in array(reply_ok(reply)?, "extend")? {
                    lost.push(text(id, "extend")?);
                }
            }
            Ok(lost)
        });
        let claimed = match claims.as_mut() {
            Some(claims) => {
                let first = if rides {
                    reply_ok(replies.next().unwrap_or(Value::Nil))
                } else {
                    self.single(claims.next_cmd(self)).await
                };
                Some(claims.finish(self, first).await)
            }
            None => None,
        };
        Ok(TripResult {
            commits,
            lost,
            claimed,
        })
    }

    /// Hands a stopping worker's unfinished entries back to their streams,
    /// as new entries another worker starts at once. Returns how many.
    /// `device_failure` (an error code and message) says the worker's
    /// device failed: each entry's `interrupted` count goes up and the
    /// task's history notes why.
    pub async fn release(
        &self,
        streams: &[StreamRef],
        consumer: &str,
        held: &[(usize, String)],
        device_failure: Option<(&str, &str)>,
    ) -> Result<u64, StoreError> {
        let (why, message) = device_failure.unwrap_or(("shutdown", ""));
        let mut cmds = Vec::new();
        for members in self.stream_groups(streams) {
            let held = local_held(&members, held);
            if held.is_empty() {
                continue;
            }
            let mut call = scripts::RELEASE.invocation();
            for &i in &members {
                call = call.key(&streams[i].key);
            }
            call = call.arg(GROUP).arg(consumer).arg(why).arg(message);
            for (index, entry_id) in &held {
                call = call.arg(index + 1).arg(entry_id.as_str());
            }
            cmds.push(call.into_cmd());
        }
        let mut released = 0;
        for reply in self.pipeline(&cmds).await? {
            released += u64::try_from(int(reply_ok(reply)?, "release")?).unwrap_or(0);
        }
        Ok(released)
    }

    /// Moves an entry that names no task to the dead-letter stream of its
    /// class, while `consumer` owns it. Returns the dead letter's id, or
    /// `None` when the entry was taken over meanwhile.
    pub async fn bury(
        &self,
        stream: &StreamRef,
        entry_id: &str,
        consumer: &str,
        code: &str,
        message: &str,
    ) -> Result<Option<String>, StoreError> {
        let cmd = scripts::BURY
            .invocation()
            .key(&stream.key)
            .key(self.keys.dead(stream.class))
            .arg(GROUP)
            .arg(entry_id)
            .arg(consumer)
            .arg(code)
            .arg(message)
            .arg(self.retention.dead_letter_maxlen)
            .into_cmd();
        match self.single(cmd).await? {
            Value::Int(-1) => Ok(None),
            other => Ok(Some(text(other, "bury")?)),
        }
    }
}

/// The device memory an entry declares (`memory_bytes`; 0 when absent or
/// unreadable: the claim script judged it the same way).
fn declared_memory(fields: &Fields) -> u64 {
    fields
        .iter()
        .find(|(name, _)| name.as_slice() == crate::wire::field::MEMORY_BYTES.as_bytes())
        .and_then(|(_, value)| std::str::from_utf8(value).ok()?.parse().ok())
        .unwrap_or(0)
}

/// The streams at positions `members`.
fn streams_of(streams: &[StreamRef], members: &[usize]) -> Vec<StreamRef> {
    members.iter().map(|&i| streams[i].clone()).collect()
}

/// One claim per class, in turn, until `max` is taken, read as one claim
/// over every stream (Cluster: each class is its own slot).
struct ClassClaims<'t, 'a> {
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
    fn new(trip: &'t Trip<'a>, request: &'t ClaimRequest<'a>, groups: &'t [Vec<usize>]) -> Self {
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
    fn next_cmd(&self, store: &Store) -> Cmd {
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
    async fn finish(
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

/// `held` (positions in the worker's streams, entry ids) narrowed to the
/// streams `members` names, with positions in `members`.
fn local_held(members: &[usize], held: &[(usize, String)]) -> Vec<(usize, String)> {
    held.iter()
        .filter_map(|(index, id)| {
            let local = members.iter().position(|m| m == index)?;
            Some((local, id.clone()))
        })
        .collect()
}

fn parse_committed(reply: Value) -> Result<Committed, StoreError> {
    match reply_ok(reply)? {
        Value::Int(1) => Ok(Committed::Written),
        Value::Int(2) => Ok(Committed::Cancelled),
        Value::Int(0) => Ok(Committed::AlreadyFinal),
        Value::Int(-1) => Ok(Committed::LeaseLost),
        other => Err(StoreError::protocol("complete", &other)),
    }
}

fn parse_claimed(reply: Value, streams: &[StreamRef]) -> Result<Claimed, StoreError> {
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
                n if n > 0 => Blocked::For(u64::try_from(n).unwrap_or(0)),
                _ => Blocked::Rule,
            })
        })
        .collect::<Result<_, _>>()?;
    let mut claimed = Claimed {
        blocked,
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
