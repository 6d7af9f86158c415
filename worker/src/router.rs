//! This worker's routing rules: recomputed from the registry (the watch
//! task's observations) and its own idleness, turned into the claim
//! script's per-stream rules, and logged when the fleet around it changes.
//! The decisions themselves are `tandem_shared::routing`'s.
//!
//! Idleness flips with every task on a busy worker, so both variants are
//! computed when the registry changes and a flip only picks one.
//!
//! A fleet's member is told its siblings (`fleet::SIBLINGS_ENV`). Until it
//! has seen a sibling live (or for `fleet::SIBLING_GRACE`), it counts that
//! sibling as a live peer with its role: right after a fleet starts, a
//! member whose siblings are still starting or probing takes no work meant
//! for them (a secondary takes no heavy task before it waited the spill
//! bound, the CPU worker no GPU work) and cuts parallel tasks for every GPU
//! of the fleet.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem_shared::device::Role;
use tandem_shared::routing::{self, ClassRule, Peer, Policy};
use tandem_shared::store::StreamRef;
use tandem_shared::wire::WorkerInfo;

use crate::executor::Fleet;

#[derive(Debug)]
pub(crate) struct Router {
    role: Role,
    policy: Policy,
    me: String,
    /// This worker's device and memory budget, for [`Router::fleet`].
    own_device: String,
    own_budget: u64,
    /// The live GPU workers, recomputed when the registry changes (not per
    /// task).
    fleet: Arc<Fleet>,
    /// The class of each stream, by stream index.
    classes: Vec<tandem_shared::Class>,
    peers: Vec<Peer>,
    /// Fleet siblings not yet seen live (device, role), counted as peers
    /// until seen or until `expect_until`.
    expected: Vec<(String, Role)>,
    expect_until: Instant,
    idle: bool,
    /// The class rules while idle (the ones logged).
    class_rules: Vec<ClassRule>,
    /// The wire form of each stream's rule, while idle and while busy.
    wire_idle: Vec<String>,
    wire_busy: Vec<String>,
}

impl Router {
    #[cfg(test)]
    pub fn new(
        role: Role,
        policy: Policy,
        me: String,
        (own_device, own_budget): (String, u64),
        streams: &[StreamRef],
    ) -> Self {
        Self::with_siblings(
            role,
            policy,
            me,
            (own_device, own_budget),
            streams,
            (Vec::new(), Duration::ZERO),
        )
    }

    /// A router that counts `expected` fleet siblings as live until it sees
    /// them live, for at most `grace`.
    pub fn with_siblings(
        role: Role,
        policy: Policy,
        me: String,
        (own_device, own_budget): (String, u64),
        streams: &[StreamRef],
        (expected, grace): (Vec<(String, Role)>, Duration),
    ) -> Self {
        let mut router = Router {
            role,
            policy,
            me,
            own_device,
            own_budget,
            fleet: Arc::default(),
            classes: streams.iter().map(|s| s.class).collect(),
            peers: Vec::new(),
            expected,
            expect_until: Instant::now() + grace,
            idle: true,
            class_rules: Vec::new(),
            wire_idle: Vec::new(),
            wire_busy: Vec::new(),
        };
        router.peers = router.expected_peers();
        router.peers.sort_by_key(|p| (p.role, p.memory_budget));
        router.recompute();
        router.refresh_fleet();
        router
    }

    /// The siblings still expected, as peers. Their memory is not known
    /// yet: taken as unlimited, so that no task counts as too large for
    /// them (the CPU worker takes none for want of a large enough GPU).
    fn expected_peers(&self) -> Vec<Peer> {
        self.expected
            .iter()
            .map(|(device, role)| Peer {
                role: *role,
                memory_budget: if role.is_gpu() { u64::MAX } else { 0 },
                device: device.clone(),
            })
            .collect()
    }

    /// Takes in the live workers; true when the rules changed.
    pub fn observe(&mut self, workers: &[WorkerInfo]) -> bool {
        let mut peers = Peer::live(workers, &self.me);
        if !self.expected.is_empty() {
            let before = self.expected.len();
            if Instant::now() >= self.expect_until {
                self.expected.clear();
            }
            self.expected
                .retain(|(device, _)| !peers.iter().any(|p| &p.device == device));
            if self.expected.len() < before {
                tracing::debug!(
                    waiting_for = ?self.expected,
                    "fleet siblings seen live (or no longer waited for)"
                );
            }
            peers.extend(self.expected_peers());
        }
        peers.sort_by_key(|p| (p.role, p.memory_budget));
        if peers == self.peers {
            return false;
        }
        self.peers = peers;
        self.refresh_fleet();
        let before = self.class_rules.clone();
        let changed = self.recompute();
        if self.class_rules != before {
            let summary: Vec<String> = self.class_rules.iter().map(ToString::to_string).collect();
            tracing::info!(
                role = %self.role,
                live = self.peers.len(),
                "routing: {}",
                summary.join("; ")
            );
        }
        changed
    }

    /// Live healthy GPU workers, this one included when it is one: what a
    /// split parallel task spreads over.
    pub fn live_gpus(&self) -> u32 {
        u32::try_from(self.fleet.gpu_devices.len()).unwrap_or(u32::MAX)
    }

    /// The live GPU workers' devices and largest budget, as a task starts.
    pub fn fleet(&self) -> Arc<Fleet> {
        Arc::clone(&self.fleet)
    }

    fn refresh_fleet(&mut self) {
        let mine = (self.role != Role::Cpu).then(|| (self.own_device.clone(), self.own_budget));
        let gpus: Vec<(String, u64)> = mine
            .into_iter()
            .chain(
                self.peers
                    .iter()
                    .filter(|p| p.role != Role::Cpu)
                    .map(|p| (p.device.clone(), p.memory_budget)),
            )
            .collect();
        self.fleet = Arc::new(Fleet {
            gpu_budget: gpus.iter().map(|(_, budget)| *budget).max().unwrap_or(0),
            gpu_devices: gpus.into_iter().map(|(device, _)| device).collect(),
        });
    }

    /// Sets whether the worker runs nothing now; true when the rules changed.
    pub fn set_idle(&mut self, idle: bool) -> bool {
        if idle == self.idle {
            return false;
        }
        self.idle = idle;
        self.wire_idle != self.wire_busy
    }

    /// One rule per stream, for the claim.
    pub fn rules(&self) -> &[String] {
        if self.idle {
            &self.wire_idle
        } else {
            &self.wire_busy
        }
    }

    /// Whether stream `index` may deliver anything to this worker now.
    pub fn is_on(&self, index: usize) -> bool {
        self.rules().get(index).is_some_and(|w| w != "off")
    }

    /// True when the rules take every task at once: the claim then needs no
    /// look at entries before reading them.
    pub fn is_plain(&self) -> bool {
        self.rules().iter().all(|w| w == "0/-1")
    }

    /// Recomputes both variants; true when the rules in force changed.
    fn recompute(&mut self) -> bool {
        let before = self.rules().to_vec();
        let wire = |rules: &[ClassRule]| -> Vec<String> {
            self.classes
                .iter()
                .map(|class| {
                    rules
                        .iter()
                        .find(|r| r.class == *class)
                        .map_or_else(|| "off".to_owned(), |r| r.rule.wire())
                })
                .collect()
        };
        let idle = routing::rules(self.role, true, &self.peers, &self.policy);
        let busy = routing::rules(self.role, false, &self.peers, &self.policy);
        self.wire_idle = wire(&idle);
        self.wire_busy = wire(&busy);
        self.class_rules = idle;
        self.rules() != before.as_slice()
    }
}

#[cfg(test)]
mod tests {
    use tandem_shared::device::Health;
    use tandem_shared::{Class, Priority};

    use super::*;

    fn stream(class: Class) -> StreamRef {
        StreamRef {
            class,
            priority: Priority::Normal,
            key: format!("t:{{{class}}}:stream:normal"),
        }
    }

    fn worker(id: &str, role: Role, health: Health) -> WorkerInfo {
        WorkerInfo {
            id: id.into(),
            role,
            health,
            state: "running".into(),
            memory_budget: 8 << 30,
            ..WorkerInfo::default()
        }
    }

    #[test]
    fn rules_follow_the_registry_and_idleness() {
        let streams = [
            stream(Class::Heavy),
            stream(Class::Light),
            stream(Class::Cpu),
        ];
        let policy = Policy {
            spill_ms: 2_000,
            help_ms: 500,
            cpu_fallback_ms: 0,
        };
        let mut router = Router::new(
            Role::Heavy,
            policy,
            "me".into(),
            ("SIM-me".into(), 8 << 30),
            &streams,
        );
        // Alone: light work at once (no secondary), cpu work too (no CPU worker).
        assert_eq!(router.rules(), ["0/-1", "limit=1 0/-1", "0/-1"]);
        let fleet = [
            worker("me", Role::Heavy, Health::Healthy),
            worker("sec", Role::Light, Health::Healthy),
            worker("cpu", Role::Cpu, Health::Healthy),
        ];
        assert!(router.observe(&fleet));
        assert!(!router.observe(&fleet), "the same registry changes nothing");
        assert_eq!(router.rules(), ["0/-1", "limit=1 500/-1", "off"]);
        assert!(!router.is_on(2));
        assert!(router.set_idle(false));
        assert_eq!(router.rules()[1], "off");
        // A failed or draining secondary does not count.
        let mut failed = fleet.clone();
        failed[1].health = Health::Failed;
        assert!(router.set_idle(true));
        assert!(router.observe(&failed));
        assert_eq!(router.rules()[1], "limit=1 0/-1");
        let mut draining = fleet.clone();
        draining[1].state = "draining".into();
        assert!(!router.observe(&draining));
        assert!(!router.is_plain());
    }

    #[test]
    fn fleet_siblings_count_as_live_until_seen_live() {
        let streams = [
            stream(Class::Heavy),
            stream(Class::Parallel),
            stream(Class::Cpu),
        ];
        let policy = Policy {
            spill_ms: 2_000,
            help_ms: 500,
            cpu_fallback_ms: 0,
        };
        let siblings = vec![
            ("SIM-0".to_owned(), Role::Heavy),
            ("cpu".to_owned(), Role::Cpu),
        ];
        let mut router = Router::with_siblings(
            Role::Light,
            policy,
            "me".into(),
            ("SIM-1".into(), 8 << 30),
            &streams,
            (siblings.clone(), Duration::from_secs(3600)),
        );
        // The primary is still starting: heavy work only once it waited the
        // spill bound, no cpu work, and parallel tasks cut for two GPUs.
        assert_eq!(router.rules()[0], format!("2000/-1"));
        assert_eq!(router.rules()[2], "off");
        assert_eq!(router.live_gpus(), 2);
        // Registered but probing is not live yet.
        let mut primary = worker("p", Role::Heavy, Health::Probing);
        primary.device = "SIM-0".into();
        assert!(!router.observe(std::slice::from_ref(&primary)));
        assert_eq!(router.live_gpus(), 2);
        // Seen live, then gone: the primary is down, the secondary takes
        // its work at once.
        primary.health = Health::Healthy;
        router.observe(std::slice::from_ref(&primary));
        assert!(router.observe(&[]));
        assert_eq!(router.rules()[0], "0/-1");
        assert_eq!(router.live_gpus(), 1);

        // Past the grace, siblings never seen no longer count.
        let mut late = Router::with_siblings(
            Role::Light,
            policy,
            "me".into(),
            ("SIM-1".into(), 8 << 30),
            &streams,
            (siblings, Duration::ZERO),
        );
        assert!(late.observe(&[]));
        assert_eq!(late.rules()[0], "0/-1");
    }
}
