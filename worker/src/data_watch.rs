//! Tells when Redis lost its data (see `tandem_shared::store::data_loss`):
//! before each heartbeat, the worker sets its classes' canaries if absent
//! and notes its streams' lengths and whether its registry record is there.
//! A canary missing after a check that saw (or set) it means the class's
//! data is gone since that check: the worker logs an error with what it
//! knew before, and the first worker of the fleet to see it within
//! `alert_interval_ms` records it (`<prefix>:data-lost`) and raises
//! `redis_data_lost`.

use std::collections::HashMap;
use std::time::Duration;

use tandem_shared::clock::now_ms;
use tandem_shared::store::{AlertName, DataCheck, DataLoss, StreamRef};

use crate::alerts::Raiser;

#[derive(Debug, Clone)]
pub(crate) struct DataWatch {
    pub raiser: Raiser,
    /// The worker's streams, whose classes' canaries it keeps.
    pub streams: Vec<StreamRef>,
    /// How long the fleet-wide lock of the alert is held.
    pub alert_interval: Duration,
    /// Each stream's length at the last check; `None` before the first,
    /// which cannot tell a loss from a fresh Redis.
    pub last_lengths: Option<HashMap<String, u64>>,
    /// A heartbeat since the last check found the worker missing from the
    /// registry (the check before it may have failed while Redis
    /// restarted, and that heartbeat wrote the registry again).
    pub registry_rejoined: bool,
}

impl DataWatch {
    /// One check; a failed one (Redis away) is skipped.
    pub async fn check(&mut self) {
        let store = &self.raiser.store;
        let check = match store.check_data(&self.streams, &self.raiser.worker).await {
            Ok(check) => check,
            Err(err) => {
                tracing::debug!("data check failed: {err}");
                return;
            }
        };
        if let Some(last) = &self.last_lengths
            && let Some(mut loss) = loss_seen(&self.raiser.worker, &check, last)
        {
            loss.registry_gone |= self.registry_rejoined;
            self.report(loss).await;
        }
        self.registry_rejoined = false;
        self.last_lengths = Some(check.lengths());
    }

    async fn report(&self, loss: DataLoss) {
        tracing::error!(
            alert = AlertName::RedisDataLost.as_str(),
            classes = ?loss.classes,
            tasks_lost = loss.tasks_lost(),
            "{}; tasks submitted before now and their records are gone (see docs/operations.md, \
             \"When Redis loses its data\")",
            loss.summary()
        );
        let store = &self.raiser.store;
        let ttl_ms = u64::try_from(self.alert_interval.as_millis()).unwrap_or(u64::MAX);
        match store
            .take_alert_lock(AlertName::RedisDataLost, &self.raiser.worker, ttl_ms)
            .await
        {
            Ok(true) => {
                if let Err(err) = store.record_data_loss(&loss).await {
                    tracing::warn!("cannot record the data loss in Redis: {err}");
                }
                self.raiser.redis_data_lost(&loss).await;
            }
            Ok(false) => {}
            Err(err) => tracing::warn!("cannot take the redis_data_lost lock: {err}"),
        }
    }
}

/// The loss a check shows, if any: a class whose canary was missing,
/// with what the check before knew.
fn loss_seen(worker: &str, check: &DataCheck, last: &HashMap<String, u64>) -> Option<DataLoss> {
    let lost: Vec<_> = check.classes.iter().filter(|c| c.canary_missing).collect();
    if lost.is_empty() {
        return None;
    }
    let streams = lost.iter().flat_map(|c| &c.streams);
    Some(DataLoss {
        at_ms: now_ms(),
        worker: worker.to_owned(),
        classes: lost.iter().map(|c| c.class.to_string()).collect(),
        streams_gone: streams
            .clone()
            .filter(|(_, len)| len.is_none())
            .map(|(key, _)| key.clone())
            .collect(),
        registry_gone: !check.worker_record,
        last_lengths: streams
            .map(|(key, _)| (key.clone(), last.get(key).copied().unwrap_or(0)))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_shared::Class;
    use tandem_shared::store::ClassData;

    fn check(canary_missing: bool, len: Option<u64>, worker_record: bool) -> DataCheck {
        DataCheck {
            classes: vec![ClassData {
                class: Class::Cpu,
                canary_missing,
                streams: vec![("s".into(), len)],
            }],
            worker_record,
        }
    }

    #[test]
    fn a_missing_canary_is_a_loss_with_what_the_check_before_knew() {
        let last = HashMap::from([("s".to_owned(), 660)]);
        assert_eq!(loss_seen("w", &check(false, Some(3), true), &last), None);
        let loss = loss_seen("w", &check(true, None, false), &last).expect("a loss");
        assert_eq!(loss.classes, ["cpu"]);
        assert_eq!(loss.streams_gone, ["s"]);
        assert!(loss.registry_gone);
        assert_eq!(loss.last_lengths, [("s".to_owned(), 660)]);
        // A producer already wrote again: the stream exists, groups or not.
        let loss = loss_seen("w", &check(true, Some(1), true), &last).expect("a loss");
        assert!(loss.streams_gone.is_empty() && !loss.registry_gone);
    }
}
