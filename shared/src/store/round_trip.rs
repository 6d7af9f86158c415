//! A worker's round trip: the commits of every task finished since the
//! last one (one `complete.lua` call per class for all of them, see
//! [`super::commit`]), the lease extensions that are due and a claim, as
//! one pipeline (in Cluster, one per slot). The parts are in [`super::claim`],
//! [`super::commit`] and [`super::lease`]; this file puts them together.

use redis::{Cmd, Value};

use super::claim::{ClaimRequest, Claimed, ClassClaims, parse_claimed};
use super::commit::{CommitShape, Committed, Completion, parse_commits};
use super::lease::local_held;
use super::reply::{array, reply_ok, text};
use super::{Store, StoreError, StreamRef};
use crate::task::Class;

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
    /// Runs one round trip: the commits, then the lease extensions, then the
    /// claim, as one pipeline.
    pub async fn round_trip(&self, trip: &Trip<'_>) -> Result<TripResult, StoreError> {
        let groups = self.stream_groups(trip.streams);
        if groups.len() > 1 {
            return self.round_trip_by_class(trip, &groups).await;
        }
        let (mut cmds, shapes): (Vec<Cmd>, Vec<CommitShape>) = self
            .commit_cmds(trip.consumer, trip.completions)
            .into_iter()
            .unzip();
        let commit_count = cmds.len();
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
        replies.truncate(commit_count);
        let commits = parse_commits(trip.completions.len(), &shapes, replies);
        Ok(TripResult {
            commits,
            lost,
            claimed,
        })
    }

    /// The worker's streams cut by slot, as positions in `streams`: in
    /// Cluster one group per class (each class has its own hash tag), else
    /// one group of them all.
    pub(super) fn stream_groups(&self, streams: &[StreamRef]) -> Vec<Vec<usize>> {
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
        let (mut cmds, shapes): (Vec<Cmd>, Vec<CommitShape>) = self
            .commit_cmds(trip.consumer, trip.completions)
            .into_iter()
            .unzip();
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
        let commits = parse_commits(
            trip.completions.len(),
            &shapes,
            replies.by_ref().take(commit_count).collect(),
        );
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
}

/// The streams at positions `members`.
pub(super) fn streams_of(streams: &[StreamRef], members: &[usize]) -> Vec<StreamRef> {
    members.iter().map(|&i| streams[i].clone()).collect()
}
