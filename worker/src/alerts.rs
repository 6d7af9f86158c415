//! Alerts: conditions an operator must hear about, each raised as a
//! structured warning in the log and an entry in `<prefix>:alerts`.
//!
//! Device alerts (`gpu_hot`, `gpu_underused`) follow the metrics sampler's
//! readings of this worker's own device; `device_failed` is raised by the
//! worker as it gives up its device, `gpu_cpu_fallback` once as its probe
//! passes with a GPU path off. Queue alerts (`queue_stalled`,
//! `dead_letters_growing`, `unknown_stream`) concern the whole fleet: every
//! worker tries each
//! `alert_interval_ms`, and the one that takes the alert's lock
//! (`SET NX PX`) checks, so a fleet raises each once per interval. A
//! condition that stays true repeats at most once per `alert_interval_ms`:
//! per worker for device alerts (a local record of when each was last
//! raised), per fleet for queue alerts (the lock).
//!
//! `unknown_stream` needs a pass over every key (`SCAN`): each check takes
//! at most [`UNKNOWN_SCAN_STEPS`] steps of it (about 10,000 keys) and the
//! worker carries the cursor to its next turn, so a check costs Redis the
//! same at a million waiting tasks as at a thousand; a pass over `K` keys
//! takes `K / 10,000` of this worker's turns.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tandem_shared::store::{Alert, AlertName, ScanPosition, Store, StoreError};
use tandem_shared::{Class, Config};
use tokio::sync::watch;

use crate::metrics::DeviceSample;
use tandem_shared::clock::now_ms;

/// `SCAN` steps (`COUNT 1000` each) one `unknown_stream` check takes: a
/// keyspace of up to about 10,000 keys (`tandem queues`' bound for its own
/// pass) is covered in one check.
pub(crate) const UNKNOWN_SCAN_STEPS: usize = 10;

/// The alert settings, read once from the configuration.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Thresholds {
    pub temperature_c: f64,
    pub utilization_ratio: f64,
    pub underused: Duration,
    pub oldest_waiting_ms: u64,
    pub dead_letter_growth: u64,
    pub interval: Duration,
}

impl From<&Config> for Thresholds {
    fn from(config: &Config) -> Self {
        Self {
            temperature_c: config.alert_temperature_c,
            utilization_ratio: config.alert_utilization_ratio,
            underused: Duration::from_millis(config.alert_underused_ms),
            oldest_waiting_ms: config.alert_oldest_waiting_ms,
            dead_letter_growth: config.alert_dead_letter_growth,
            interval: Duration::from_millis(config.alert_interval_ms),
        }
    }
}

/// A condition found true, before it is raised.
#[derive(Debug, Clone, PartialEq)]
struct Finding {
    name: AlertName,
    /// The task or dead-letter stream, for queue alerts.
    stream: String,
    value: f64,
    threshold: f64,
    message: String,
}

/// Raises alerts in this worker's name: a warning in the log, and an entry
/// in the alerts stream when Redis takes it.
#[derive(Debug, Clone)]
pub(crate) struct Raiser {
    pub store: Store,
    pub worker: String,
    pub device: String,
}

impl Raiser {
    async fn raise(&self, finding: Finding) {
        tracing::warn!(
            alert = finding.name.as_str(),
            worker = %self.worker,
            device = %self.device,
            stream = %finding.stream,
            value = finding.value,
            threshold = finding.threshold,
            "alert {}: {}",
            finding.name,
            finding.message
        );
        let alert = Alert {
            alert: finding.name.as_str().to_owned(),
            worker: self.worker.clone(),
            device: self.device.clone(),
            stream: finding.stream,
            value: finding.value,
            threshold: finding.threshold,
            message: finding.message,
            at_ms: now_ms(),
        };
        if let Err(err) = self.store.raise_alert(&alert).await {
            tracing::warn!(
                alert = alert.alert,
                "cannot write the alert to Redis: {err}"
            );
        }
    }

    /// `gpu_cpu_fallback`, raised once as the probe passes when `kinds`
    /// run on this GPU worker's CPU; `line` is the start-up line that says
    /// what is off and why.
    pub async fn gpu_cpu_fallback(&self, kinds: usize, line: &str) {
        self.raise(Finding {
            name: AlertName::GpuCpuFallback,
            stream: String::new(),
            value: kinds as f64,
            threshold: 0.0,
            message: line.to_owned(),
        })
        .await;
    }

    /// `redis_data_lost`, raised by the worker that saw the loss first
    /// (see `data_watch`); `value` is how many tasks were in the streams.
    pub async fn redis_data_lost(&self, loss: &tandem_shared::store::DataLoss) {
        self.raise(Finding {
            name: AlertName::RedisDataLost,
            stream: loss.streams_gone.join(","),
            value: loss.tasks_lost() as f64,
            threshold: 0.0,
            message: loss.summary(),
        })
        .await;
    }

    /// `device_failed`, raised as the worker gives its device up.
    pub async fn device_failed(&self, why: &str) {
        self.raise(Finding {
            name: AlertName::DeviceFailed,
            stream: String::new(),
            value: 1.0,
            threshold: 0.0,
            message: format!(
                "device {} failed ({why}); the worker exits for its fleet to restart it",
                self.device
            ),
        })
        .await;
    }
}

/// Watches the device samples and, every interval, the queues.
#[derive(Debug)]
pub(crate) struct Alerts {
    pub raiser: Raiser,
    pub thresholds: Thresholds,
    /// The sampler's device readings; none come on a CPU worker.
    pub samples: watch::Receiver<Option<DeviceSample>>,
}

impl Alerts {
    /// Checks until the worker stops it.
    pub async fn run(mut self) {
        let mut device = DeviceWatch::default();
        // Where this worker's pass over every key, for unknown streams,
        // stands between its checks.
        let mut scan = ScanPosition::default();
        let mut tick = tokio::time::interval(self.thresholds.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Once the sampler stops, `changed` fails at once on every call:
        // stop asking, so the loop does not spin.
        let mut sampling = true;
        loop {
            tokio::select! {
                changed = self.samples.changed(), if sampling => {
                    if changed.is_err() {
                        sampling = false;
                        continue;
                    }
                    let sample = *self.samples.borrow_and_update();
                    if let Some(sample) = sample {
                        for finding in device.check(sample, Instant::now(), &self.thresholds) {
                            self.raiser.raise(finding).await;
                        }
                    }
                }
                _ = tick.tick() => self.check_queues(&mut scan).await,
            }
        }
    }

    async fn check_queues(&self, scan: &mut ScanPosition) {
        if let Err(err) = self.check_stalled().await {
            tracing::warn!("cannot check the queues for alerts: {err}");
        }
        if let Err(err) = self.check_dead_letters().await {
            tracing::warn!("cannot check the dead-letter streams for alerts: {err}");
        }
        if let Err(err) = self.check_unknown_streams(scan).await {
            tracing::warn!("cannot look for streams no worker reads: {err}");
        }
    }

    /// Takes the alert's lock for one interval: true when this worker won
    /// and so checks it for the fleet.
    async fn my_turn(&self, name: AlertName) -> Result<bool, StoreError> {
        let ttl_ms = u64::try_from(self.thresholds.interval.as_millis()).unwrap_or(u64::MAX);
        self.raiser
            .store
            .take_alert_lock(name, &self.raiser.worker, ttl_ms)
            .await
    }

    async fn check_stalled(&self) -> Result<(), StoreError> {
        if !self.my_turn(AlertName::QueueStalled).await? {
            return Ok(());
        }
        let threshold = self.thresholds.oldest_waiting_ms;
        for stream in self.raiser.store.queue_stats(Class::ALL).await? {
            let Some(age_ms) = stream.oldest_waiting_ms.filter(|&age| age > threshold) else {
                continue;
            };
            self.raiser
                .raise(Finding {
                    name: AlertName::QueueStalled,
                    message: format!(
                        "the oldest waiting task of {} has waited {} (over {}); {} waiting, {} consumers",
                        stream.key,
                        seconds(age_ms),
                        seconds(threshold),
                        stream.waiting,
                        stream.consumers
                    ),
                    stream: stream.key,
                    value: age_ms as f64,
                    threshold: threshold as f64,
                })
                .await;
        }
        Ok(())
    }

    async fn check_dead_letters(&self) -> Result<(), StoreError> {
        if !self.my_turn(AlertName::DeadLettersGrowing).await? {
            return Ok(());
        }
        let threshold = self.thresholds.dead_letter_growth;
        for growth in self.raiser.store.dead_letter_growth(Class::ALL).await? {
            let grown = growth.grown();
            if grown < threshold {
                continue;
            }
            self.raiser
                .raise(Finding {
                    name: AlertName::DeadLettersGrowing,
                    message: format!(
                        "{grown} new dead letters in {} since the last check (`tandem dlq list --class {}`)",
                        growth.key, growth.class
                    ),
                    stream: growth.key,
                    value: grown as f64,
                    threshold: threshold as f64,
                })
                .await;
        }
        Ok(())
    }

    /// Entries in a stream no worker reads get no record, no dead letter
    /// and no outcome: without this alert they would wait unseen for ever.
    /// An empty unknown stream harms nothing and raises nothing. One slice
    /// of the pass over every key per check, from `scan`, which it moves
    /// on (a failed slice is taken again next time).
    async fn check_unknown_streams(&self, scan: &mut ScanPosition) -> Result<(), StoreError> {
        if !self.my_turn(AlertName::UnknownStream).await? {
            return Ok(());
        }
        let (streams, next) = self
            .raiser
            .store
            .unknown_streams_slice(*scan, UNKNOWN_SCAN_STEPS)
            .await?;
        *scan = next.unwrap_or_default();
        for stream in streams {
            if stream.length == 0 {
                continue;
            }
            let oldest = stream
                .oldest_ms
                .map(|ms| format!(", the oldest for {}", seconds(ms)))
                .unwrap_or_default();
            self.raiser
                .raise(Finding {
                    name: AlertName::UnknownStream,
                    message: format!(
                        "{} holds {} entries no worker reads ({}){oldest}; `tandem queues` lists it: resubmit them to a task stream, then delete it",
                        stream.key, stream.length, stream.why
                    ),
                    stream: stream.key,
                    value: stream.length as f64,
                    threshold: 0.0,
                })
                .await;
        }
        Ok(())
    }
}

fn seconds(ms: u64) -> String {
    format!("{:.1} s", ms as f64 / 1000.0)
}

/// The device alerts' memory between samples.
#[derive(Debug, Default)]
struct DeviceWatch {
    /// Since when the device has been underused with tasks running; `None`
    /// while it is not.
    underused_since: Option<Instant>,
    /// When each alert was last raised, to repeat it at most once per
    /// interval.
    last_raised: HashMap<AlertName, Instant>,
}

impl DeviceWatch {
    /// The device alerts this sample raises.
    fn check(&mut self, sample: DeviceSample, now: Instant, t: &Thresholds) -> Vec<Finding> {
        let mut found = Vec::new();
        if sample.temperature_c > t.temperature_c {
            found.push(Finding {
                name: AlertName::GpuHot,
                stream: String::new(),
                value: sample.temperature_c,
                threshold: t.temperature_c,
                message: format!(
                    "the GPU is at {:.0} C, above {:.0} C",
                    sample.temperature_c, t.temperature_c
                ),
            });
        }
        if sample.active_tasks > 0 && sample.utilization < t.utilization_ratio {
            let lasted = now.saturating_duration_since(*self.underused_since.get_or_insert(now));
            if lasted > t.underused {
                found.push(Finding {
                    name: AlertName::GpuUnderused,
                    stream: String::new(),
                    value: sample.utilization,
                    threshold: t.utilization_ratio,
                    message: format!(
                        "GPU utilization {:.0} % is under {:.0} % with {} tasks running, for {}",
                        sample.utilization * 100.0,
                        t.utilization_ratio * 100.0,
                        sample.active_tasks,
                        seconds(u64::try_from(lasted.as_millis()).unwrap_or(u64::MAX))
                    ),
                });
            }
        } else {
            self.underused_since = None;
        }
        found.retain(|f| self.due(f.name, now, t.interval));
        found
    }

    /// True (and noted) when `name` was not raised within the last interval.
    fn due(&mut self, name: AlertName, now: Instant, interval: Duration) -> bool {
        match self.last_raised.get(&name) {
            Some(&at) if now.saturating_duration_since(at) < interval => false,
            _ => {
                self.last_raised.insert(name, now);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thresholds() -> Thresholds {
        Thresholds {
            temperature_c: 85.0,
            utilization_ratio: 0.5,
            underused: Duration::from_secs(60),
            oldest_waiting_ms: 60_000,
            dead_letter_growth: 1,
            interval: Duration::from_secs(60),
        }
    }

    fn sample(temperature_c: f64, utilization: f64, active_tasks: usize) -> DeviceSample {
        DeviceSample {
            temperature_c,
            utilization,
            active_tasks,
        }
    }

    fn names(found: &[Finding]) -> Vec<AlertName> {
        found.iter().map(|f| f.name).collect()
    }

    #[test]
    fn a_hot_gpu_alerts_once_per_interval() {
        let t = thresholds();
        let mut watch = DeviceWatch::default();
        let start = Instant::now();
        let found = watch.check(sample(95.0, 1.0, 1), start, &t);
        assert_eq!(names(&found), [AlertName::GpuHot]);
        assert_eq!((found[0].value, found[0].threshold), (95.0, 85.0));
        assert!(
            watch
                .check(sample(95.0, 1.0, 1), start + Duration::from_secs(30), &t)
                .is_empty()
        );
        let again = watch.check(sample(95.0, 1.0, 1), start + Duration::from_secs(61), &t);
        assert_eq!(names(&again), [AlertName::GpuHot]);
        assert!(
            watch
                .check(sample(85.0, 1.0, 1), start + Duration::from_secs(200), &t)
                .is_empty()
        );
    }

    #[test]
    fn underuse_alerts_only_after_lasting_with_tasks_running() {
        let t = thresholds();
        let mut watch = DeviceWatch::default();
        let start = Instant::now();
        let at = |s| start + Duration::from_secs(s);
        // Idle (no tasks) is not underused, however low the utilization.
        assert!(watch.check(sample(40.0, 0.0, 0), at(0), &t).is_empty());
        assert!(watch.check(sample(40.0, 0.2, 2), at(10), &t).is_empty());
        assert!(watch.check(sample(40.0, 0.2, 2), at(70), &t).is_empty());
        let found = watch.check(sample(40.0, 0.2, 2), at(71), &t);
        assert_eq!(names(&found), [AlertName::GpuUnderused]);
        // A busy sample resets the clock.
        assert!(watch.check(sample(40.0, 0.9, 2), at(200), &t).is_empty());
        assert!(watch.check(sample(40.0, 0.2, 2), at(201), &t).is_empty());
        assert!(watch.check(sample(40.0, 0.2, 2), at(260), &t).is_empty());
        assert_eq!(
            names(&watch.check(sample(40.0, 0.2, 2), at(262), &t)),
            [AlertName::GpuUnderused]
        );
    }
}
