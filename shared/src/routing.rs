//! Role-based routing: which waiting tasks a worker takes, decided from the
//! live worker registry.
//!
//! There is no router process. Every worker reads the registry (roles,
//! health, memory budgets of the workers alive now), computes a [`Rule`] per
//! class for itself with [`rules`], and hands the rules to the claim script,
//! which applies them to the next waiting entry of each stream atomically.
//! Because every worker computes its rules from the same registry, the
//! workers agree on who takes what without talking to each other, and a
//! worker that dies changes everyone's rules within a heartbeat TTL.
//!
//! The decision matrix (the product's routing table; docs/ARCHITECTURE.md shows
//! it as a table):
//!
//! - heavy: the primary (`heavy` or `both`). The secondary (`light`) takes
//!   one when the primary is down, or when it has waited `spill_ms` (the
//!   primary is busy), if it fits the secondary's free memory. The CPU
//!   worker takes what fits no secondary once the primary is down or busy
//!   past the bound, what fits no GPU at all, and anything waiting
//!   `cpu_fallback_ms`.
//! - light: the secondary. The primary helps only when it is idle: one light
//!   task at a time, once one has waited `help_ms` (at once when no
//!   secondary lives). The CPU worker takes them when no secondary lives and
//!   one has waited `help_ms`, or as the last resort.
//! - parallel: every GPU; the CPU worker when none lives or as the last
//!   resort.
//! - cpu: CPU workers; GPU workers only when no CPU worker lives.
//!
//! Classes are chosen by producers, not here: `train` is heavy whatever
//! its model while `train_on_primary` holds (the seed: training always
//! uses the primary GPU), so it follows the heavy row above.
//!
//! A GPU worker never takes a task larger than its free memory, whatever the
//! rule: the claim carries its free memory too.

use std::fmt;

use crate::device::{Health, Role};
use crate::task::Class;
use crate::wire::WorkerInfo;

/// One way a task may qualify: it has waited at least `min_age_ms`, and
/// (when set) it declares more memory than `memory_over` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clause {
    pub min_age_ms: u64,
    pub memory_over: Option<u64>,
}

/// When a worker takes the next waiting task of a class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// Never.
    Off,
    /// When any clause holds; at most `limit` tasks of the class per claim
    /// (0: no limit).
    Take { limit: u32, clauses: Vec<Clause> },
}

impl Rule {
    /// Every task, at once.
    pub fn always() -> Self {
        Rule::Take {
            limit: 0,
            clauses: vec![Clause {
                min_age_ms: 0,
                memory_over: None,
            }],
        }
    }

    pub fn is_off(&self) -> bool {
        matches!(self, Rule::Off)
            || matches!(self, Rule::Take { clauses, .. } if clauses.is_empty())
    }

    /// The claim script's form: `off`, or `limit=N` then `AGE/OVER` per
    /// clause (`-1`: any memory), e.g. `0/-1` for "always".
    pub fn wire(&self) -> String {
        if self.is_off() {
            return "off".into();
        }
        match self {
            Rule::Take { limit, clauses } => {
                let mut out = String::new();
                if *limit > 0 {
                    out.push_str(&format!("limit={limit} "));
                }
                let parts: Vec<String> = clauses
                    .iter()
                    .map(|c| match c.memory_over {
                        Some(over) => format!("{}/{over}", c.min_age_ms),
                        None => format!("{}/-1", c.min_age_ms),
                    })
                    .collect();
                out.push_str(&parts.join(" "));
                out
            }
            _ => "off".into(),
        }
    }
}

/// The bounds the rules use, from the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// A heavy task waiting this long while the primary lives goes to the
    /// secondary (when it fits) or the CPU worker.
    pub spill_ms: u64,
    /// A light task waiting this long goes to an idle primary.
    pub help_ms: u64,
    /// Any task waiting this long goes to a CPU worker; 0: never.
    pub cpu_fallback_ms: u64,
}

/// A live worker, as routing sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub role: Role,
    /// The most device memory its tasks may use (0 for a CPU worker).
    pub memory_budget: u64,
    /// `cpu`, or its GPU's UUID.
    pub device: String,
}

impl Peer {
    /// The workers routing counts: running (not draining), healthy, other
    /// than `me`.
    pub fn live(workers: &[WorkerInfo], me: &str) -> Vec<Peer> {
        workers
            .iter()
            .filter(|w| w.id != me && w.state == "running" && w.health == Health::Healthy)
            .map(|w| Peer {
                role: w.role,
                memory_budget: w.memory_budget,
                device: w.device.clone(),
            })
            .collect()
    }
}

/// A class's rule and the reason, for logs and `tandem workers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassRule {
    pub class: Class,
    pub rule: Rule,
    pub why: &'static str,
}

impl fmt::Display for ClassRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} ({})", self.class, self.rule.wire(), self.why)
    }
}

/// The rules of a worker with role `me`, given the other live workers.
/// `idle` says whether it runs nothing now (the primary helps only then).
pub fn rules(me: Role, idle: bool, peers: &[Peer], policy: &Policy) -> Vec<ClassRule> {
    let heavy_main = peers
        .iter()
        .any(|p| matches!(p.role, Role::Heavy | Role::Both))
        || matches!(me, Role::Heavy | Role::Both);
    let light_main = peers
        .iter()
        .any(|p| matches!(p.role, Role::Light | Role::Both))
        || matches!(me, Role::Light | Role::Both);
    let any_gpu = peers.iter().any(|p| p.role.is_gpu());
    let cpu_peer = peers.iter().any(|p| p.role == Role::Cpu);
    let budget = |pred: &dyn Fn(Role) -> bool| {
        peers
            .iter()
            .filter(|p| pred(p.role))
            .map(|p| p.memory_budget)
            .max()
    };
    let max_gpu = budget(&|r| r.is_gpu());
    let max_secondary = budget(&|r| r == Role::Light);

    let at_once = |memory_over| Clause {
        min_age_ms: 0,
        memory_over,
    };
    let after = |min_age_ms, memory_over| Clause {
        min_age_ms,
        memory_over,
    };
    let take = |clauses: Vec<Clause>| Rule::Take { limit: 0, clauses };
    // The CPU worker's last resort: anything waiting cpu_fallback_ms.
    let fallback = |clauses: &mut Vec<Clause>| {
        if policy.cpu_fallback_ms > 0 {
            clauses.push(after(policy.cpu_fallback_ms, None));
        }
    };
    let rule = |class, rule, why| ClassRule { class, rule, why };

    let heavy = match me {
        Role::Heavy | Role::Both => rule(Class::Heavy, Rule::always(), "primary"),
        Role::Light
            if !peers
                .iter()
                .any(|p| matches!(p.role, Role::Heavy | Role::Both)) =>
        {
            rule(
                Class::Heavy,
                Rule::always(),
                "primary down: secondary takes what fits",
            )
        }
        Role::Light => rule(
            Class::Heavy,
            take(vec![after(policy.spill_ms, None)]),
            "primary busy past the spill bound: secondary takes what fits",
        ),
        Role::Cpu if !any_gpu => rule(Class::Heavy, Rule::always(), "no GPU lives"),
        Role::Cpu if !heavy_main => {
            let mut clauses = vec![at_once(max_secondary)];
            fallback(&mut clauses);
            rule(
                Class::Heavy,
                take(clauses),
                "primary down: CPU takes what fits no secondary",
            )
        }
        Role::Cpu => {
            let mut clauses = vec![at_once(max_gpu), after(policy.spill_ms, max_secondary)];
            fallback(&mut clauses);
            rule(
                Class::Heavy,
                take(clauses),
                "primary lives: CPU takes what fits no GPU, or waited past the spill bound and fits no secondary",
            )
        }
    };

    let light = match me {
        Role::Light | Role::Both => rule(Class::Light, Rule::always(), "secondary"),
        Role::Heavy if !idle => rule(Class::Light, Rule::Off, "primary busy"),
        Role::Heavy if !light_main => rule(
            Class::Light,
            Rule::Take {
                limit: 1,
                clauses: vec![at_once(None)],
            },
            "secondary down: idle primary takes one at a time",
        ),
        Role::Heavy => rule(
            Class::Light,
            Rule::Take {
                limit: 1,
                clauses: vec![after(policy.help_ms, None)],
            },
            "idle primary helps with a light backlog, one at a time",
        ),
        Role::Cpu if !any_gpu => rule(Class::Light, Rule::always(), "no GPU lives"),
        Role::Cpu if !light_main => {
            let mut clauses = vec![after(policy.help_ms, None)];
            fallback(&mut clauses);
            rule(
                Class::Light,
                take(clauses),
                "secondary down: CPU takes what the primary leaves waiting",
            )
        }
        Role::Cpu => {
            let mut clauses = vec![at_once(max_gpu)];
            fallback(&mut clauses);
            rule(
                Class::Light,
                take(clauses),
                "secondary lives: CPU takes what fits no GPU, or the last resort",
            )
        }
    };

    let parallel = match me {
        Role::Heavy | Role::Light | Role::Both => {
            rule(Class::Parallel, Rule::always(), "every GPU")
        }
        Role::Cpu if !any_gpu => rule(Class::Parallel, Rule::always(), "no GPU lives"),
        Role::Cpu => {
            let mut clauses = vec![at_once(max_gpu)];
            fallback(&mut clauses);
            rule(
                Class::Parallel,
                take(clauses),
                "GPUs live: CPU takes what fits no GPU, or the last resort",
            )
        }
    };

    let cpu = match me {
        Role::Cpu => rule(Class::Cpu, Rule::always(), "CPU worker"),
        _ if !cpu_peer => rule(Class::Cpu, Rule::always(), "no CPU worker lives"),
        _ => rule(Class::Cpu, Rule::Off, "CPU workers take cpu tasks"),
    };
    vec![heavy, light, parallel, cpu]
}

/// The order a worker with role `role` claims its `classes` in: its main
/// classes by priority first (highest priority first, then role order),
/// then the classes it only helps with, by priority.
pub fn claim_order(role: Role, classes: &[Class]) -> Vec<(Class, crate::task::Priority)> {
    use crate::task::Priority;
    let (main, help): (&[Class], &[Class]) = match role {
        Role::Heavy => (
            &[Class::Heavy, Class::Parallel],
            &[Class::Light, Class::Cpu],
        ),
        Role::Light => (
            &[Class::Light, Class::Parallel],
            &[Class::Heavy, Class::Cpu],
        ),
        Role::Both => (
            &[Class::Heavy, Class::Light, Class::Parallel],
            &[Class::Cpu],
        ),
        Role::Cpu => (&[], &[]),
    };
    let by_priority = |set: Vec<Class>| -> Vec<(Class, Priority)> {
        Priority::ALL
            .iter()
            .flat_map(|&p| set.iter().map(move |&c| (c, p)))
            .collect()
    };
    if role == Role::Cpu {
        // A CPU worker keeps the configured order: cpu tasks first by default.
        return by_priority(classes.to_vec());
    }
    let keep = |set: &[Class]| -> Vec<Class> {
        set.iter()
            .copied()
            .filter(|c| classes.contains(c))
            .collect()
    };
    let mut order = by_priority(keep(main));
    order.extend(by_priority(keep(help)));
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::Priority;

    const GIB: u64 = 1 << 30;
    const POLICY: Policy = Policy {
        spill_ms: 2_000,
        help_ms: 500,
        cpu_fallback_ms: 30_000,
    };

    fn peer(role: Role, gib: u64) -> Peer {
        Peer {
            role,
            memory_budget: gib * GIB,
            device: format!("SIM-{role}-{gib}"),
        }
    }

    fn rule_of(me: Role, idle: bool, peers: &[Peer], class: Class) -> Rule {
        rules(me, idle, peers, &POLICY)
            .into_iter()
            .find(|r| r.class == class)
            .unwrap()
            .rule
    }

    fn clauses(rule: &Rule) -> Vec<(u64, Option<u64>)> {
        match rule {
            Rule::Take { clauses, .. } => clauses
                .iter()
                .map(|c| (c.min_age_ms, c.memory_over))
                .collect(),
            Rule::Off => vec![],
        }
    }

    #[test]
    fn heavy_goes_to_the_primary() {
        let both = [peer(Role::Light, 7), peer(Role::Cpu, 0)];
        assert_eq!(
            rule_of(Role::Heavy, false, &both, Class::Heavy),
            Rule::always()
        );
        // The secondary waits for the spill bound while the primary lives.
        let secondary = rule_of(Role::Light, true, &[peer(Role::Heavy, 11)], Class::Heavy);
        assert_eq!(clauses(&secondary), [(2_000, None)]);
        // The CPU worker: what fits no GPU at once, what waited past the
        // bound and fits no secondary, anything at the fallback.
        let cpu = rule_of(
            Role::Cpu,
            true,
            &[peer(Role::Heavy, 11), peer(Role::Light, 7)],
            Class::Heavy,
        );
        assert_eq!(
            clauses(&cpu),
            [(0, Some(11 * GIB)), (2_000, Some(7 * GIB)), (30_000, None)]
        );
    }

    #[test]
    fn primary_down_sends_what_fits_to_the_secondary_and_the_rest_to_the_cpu() {
        let peers = [peer(Role::Light, 7), peer(Role::Cpu, 0)];
        assert_eq!(
            rule_of(Role::Light, true, &[peer(Role::Cpu, 0)], Class::Heavy),
            Rule::always()
        );
        let cpu = rule_of(Role::Cpu, true, &[peers[0].clone()], Class::Heavy);
        assert_eq!(clauses(&cpu), [(0, Some(7 * GIB)), (30_000, None)]);
    }

    #[test]
    fn both_gpus_down_leaves_everything_to_the_cpu() {
        for class in [Class::Heavy, Class::Light, Class::Parallel, Class::Cpu] {
            assert_eq!(
                rule_of(Role::Cpu, true, &[], class),
                Rule::always(),
                "{class}"
            );
            assert_eq!(
                rule_of(Role::Cpu, true, &[peer(Role::Cpu, 0)], class),
                Rule::always()
            );
        }
    }

    #[test]
    fn light_goes_to_the_secondary_and_an_idle_primary_helps() {
        let with_secondary = [peer(Role::Light, 7)];
        assert_eq!(
            rule_of(Role::Light, false, &[peer(Role::Heavy, 11)], Class::Light),
            Rule::always()
        );
        assert_eq!(
            rule_of(Role::Heavy, false, &with_secondary, Class::Light),
            Rule::Off
        );
        let help = rule_of(Role::Heavy, true, &with_secondary, Class::Light);
        assert_eq!(
            help,
            Rule::Take {
                limit: 1,
                clauses: vec![Clause {
                    min_age_ms: 500,
                    memory_over: None
                }]
            }
        );
        assert_eq!(help.wire(), "limit=1 500/-1");
        // No secondary: an idle primary takes light work at once.
        assert_eq!(
            clauses(&rule_of(Role::Heavy, true, &[], Class::Light)),
            [(0, None)]
        );
        // ... and the CPU worker what the primary leaves waiting.
        let cpu = rule_of(Role::Cpu, true, &[peer(Role::Heavy, 11)], Class::Light);
        assert_eq!(clauses(&cpu), [(500, None), (30_000, None)]);
    }

    #[test]
    fn parallel_goes_to_every_gpu() {
        for role in [Role::Heavy, Role::Light, Role::Both] {
            assert_eq!(
                rule_of(role, false, &[peer(Role::Cpu, 0)], Class::Parallel),
                Rule::always()
            );
        }
        let cpu = rule_of(Role::Cpu, true, &[peer(Role::Both, 20)], Class::Parallel);
        assert_eq!(clauses(&cpu), [(0, Some(20 * GIB)), (30_000, None)]);
    }

    #[test]
    fn cpu_tasks_stay_on_cpu_workers_while_one_lives() {
        assert_eq!(
            rule_of(Role::Heavy, true, &[peer(Role::Cpu, 0)], Class::Cpu),
            Rule::Off
        );
        assert_eq!(rule_of(Role::Heavy, true, &[], Class::Cpu), Rule::always());
        assert_eq!(
            rule_of(Role::Cpu, true, &[peer(Role::Both, 20)], Class::Cpu),
            Rule::always()
        );
    }

    #[test]
    fn one_gpu_takes_every_gpu_class() {
        for class in [Class::Heavy, Class::Light, Class::Parallel] {
            assert_eq!(
                rule_of(Role::Both, false, &[peer(Role::Cpu, 0)], class),
                Rule::always()
            );
        }
    }

    /// The seed's pair and CPU worker as the end-to-end tests run them:
    /// routing bounds so long that only the rule under test moves tasks,
    /// no last-resort fallback.
    const STILL: Policy = Policy {
        spill_ms: 600_000,
        help_ms: 600_000,
        cpu_fallback_ms: 0,
    };

    fn still_rule(me: Role, idle: bool, peers: &[Peer], class: Class) -> Rule {
        rules(me, idle, peers, &STILL)
            .into_iter()
            .find(|r| r.class == class)
            .unwrap()
            .rule
    }

    /// Was the end-to-end test `parallel_tasks_run_on_every_gpu_and_not_the_cpu`.
    #[test]
    fn parallel_tasks_go_to_both_gpus_of_the_seed_and_not_its_cpu_worker() {
        let (primary, secondary, cpu) = (
            peer(Role::Heavy, 11),
            peer(Role::Light, 7),
            peer(Role::Cpu, 0),
        );
        for idle in [true, false] {
            let me_primary = [secondary.clone(), cpu.clone()];
            let me_secondary = [primary.clone(), cpu.clone()];
            for (me, peers) in [(Role::Heavy, &me_primary), (Role::Light, &me_secondary)] {
                assert_eq!(
                    still_rule(me, idle, peers, Class::Parallel),
                    Rule::always(),
                    "{me} idle={idle}"
                );
            }
            // The CPU worker takes only what fits no GPU: a 1 GiB task
            // fits the primary's 11 GiB.
            let by_cpu = still_rule(
                Role::Cpu,
                idle,
                &[primary.clone(), secondary.clone()],
                Class::Parallel,
            );
            assert_eq!(clauses(&by_cpu), [(0, Some(11 * GIB))]);
        }
    }

    /// Was the end-to-end test `both_gpus_die_and_the_cpu_worker_runs_everything`.
    #[test]
    fn the_cpu_worker_takes_every_class_at_once_when_both_gpus_died() {
        for class in [Class::Heavy, Class::Light, Class::Parallel, Class::Cpu] {
            for idle in [true, false] {
                assert_eq!(
                    still_rule(Role::Cpu, idle, &[], class),
                    Rule::always(),
                    "{class} idle={idle}"
                );
            }
        }
        // Before they died, it took no heavy, light or parallel task that
        // fits a GPU.
        let seed = [peer(Role::Heavy, 11), peer(Role::Light, 7)];
        for class in [Class::Heavy, Class::Light, Class::Parallel] {
            let before = still_rule(Role::Cpu, true, &seed, class);
            assert!(
                clauses(&before)
                    .iter()
                    .all(|(_, over)| over.is_some_and(|over| over >= 7 * GIB)),
                "{class}: {before:?}"
            );
        }
    }

    /// Was the end-to-end test `the_primary_coming_back_takes_heavy_tasks_again`.
    #[test]
    fn a_primary_coming_back_takes_heavy_tasks_from_the_secondary_again() {
        let (primary, secondary, cpu) = (
            peer(Role::Heavy, 11),
            peer(Role::Light, 7),
            peer(Role::Cpu, 0),
        );
        // Primary down: the secondary takes heavy tasks at once (those
        // that fit: the claim carries its free memory), the CPU worker
        // only what fits no secondary.
        assert_eq!(
            still_rule(Role::Light, false, std::slice::from_ref(&cpu), Class::Heavy),
            Rule::always()
        );
        let by_cpu = still_rule(
            Role::Cpu,
            true,
            std::slice::from_ref(&secondary),
            Class::Heavy,
        );
        assert_eq!(clauses(&by_cpu), [(0, Some(7 * GIB))]);
        // Primary back: it takes them at once; the secondary only past
        // the spill bound, the CPU worker only what fits no GPU at once.
        let back = [primary.clone(), cpu.clone()];
        assert_eq!(
            clauses(&still_rule(Role::Light, true, &back, Class::Heavy)),
            [(600_000, None)]
        );
        assert_eq!(
            still_rule(Role::Heavy, false, &[secondary.clone(), cpu], Class::Heavy),
            Rule::always()
        );
        let by_cpu = still_rule(Role::Cpu, true, &[primary, secondary], Class::Heavy);
        assert_eq!(
            clauses(&by_cpu),
            [(0, Some(11 * GIB)), (600_000, Some(7 * GIB))]
        );
    }

    #[test]
    fn no_fallback_when_disabled() {
        let policy = Policy {
            cpu_fallback_ms: 0,
            ..POLICY
        };
        let cpu = rules(
            Role::Cpu,
            true,
            &[peer(Role::Heavy, 11), peer(Role::Light, 7)],
            &policy,
        );
        assert_eq!(clauses(&cpu[1].rule), [(0, Some(11 * GIB))]);
    }

    #[test]
    fn the_wire_form_reads_plainly() {
        assert_eq!(Rule::always().wire(), "0/-1");
        assert_eq!(Rule::Off.wire(), "off");
        assert!(
            Rule::Take {
                limit: 0,
                clauses: vec![]
            }
            .is_off()
        );
        let rule = Rule::Take {
            limit: 0,
            clauses: vec![
                Clause {
                    min_age_ms: 0,
                    memory_over: Some(7),
                },
                Clause {
                    min_age_ms: 30,
                    memory_over: None,
                },
            ],
        };
        assert_eq!(rule.wire(), "0/7 30/-1");
    }

    /// Only running, healthy workers other than this one count: a
    /// draining, probing or failed worker takes nothing, so routing must
    /// not leave work to it.
    #[test]
    fn live_peers_are_the_other_running_healthy_workers() {
        let worker = |id: &str, state: &str, health: Health, role: Role| WorkerInfo {
            id: id.into(),
            state: state.into(),
            health,
            role,
            memory_budget: 7 * GIB,
            device: format!("SIM-{id}"),
            ..WorkerInfo::default()
        };
        let workers = [
            worker("me", "running", Health::Healthy, Role::Heavy),
            worker("light", "running", Health::Healthy, Role::Light),
            worker("draining", "draining", Health::Healthy, Role::Light),
            worker("probing", "running", Health::Probing, Role::Light),
            worker("failed", "running", Health::Failed, Role::Light),
        ];
        assert_eq!(
            Peer::live(&workers, "me"),
            [Peer {
                role: Role::Light,
                memory_budget: 7 * GIB,
                device: "SIM-light".into(),
            }]
        );
        // Seen from another worker, "me" is a live peer too.
        let devices: Vec<String> = Peer::live(&workers, "light")
            .into_iter()
            .map(|p| p.device)
            .collect();
        assert_eq!(devices, ["SIM-me"]);
    }

    /// What `tandem workers` and the logs print for a class's rule.
    #[test]
    fn a_class_rule_prints_its_class_wire_form_and_reason() {
        let heavy = &rules(Role::Light, true, &[peer(Role::Heavy, 11)], &POLICY)[0];
        assert_eq!(
            heavy.to_string(),
            "heavy: 2000/-1 (primary busy past the spill bound: secondary takes what fits)"
        );
    }

    #[test]
    fn claim_order_puts_the_roles_main_classes_first() {
        let all = [Class::Cpu, Class::Light, Class::Parallel, Class::Heavy];
        let order = claim_order(Role::Heavy, &all);
        assert_eq!(order.len(), 16);
        assert_eq!(order[0], (Class::Heavy, Priority::Critical));
        assert_eq!(order[1], (Class::Parallel, Priority::Critical));
        assert_eq!(order[7], (Class::Parallel, Priority::Low));
        assert_eq!(order[8], (Class::Light, Priority::Critical));
        let cpu = claim_order(Role::Cpu, &all);
        assert_eq!(cpu[0], (Class::Cpu, Priority::Critical));
        assert_eq!(cpu[1], (Class::Light, Priority::Critical));
        // The configured classes filter every role.
        let only_heavy = claim_order(Role::Light, &[Class::Heavy]);
        assert!(only_heavy.iter().all(|(c, _)| *c == Class::Heavy));
        assert_eq!(only_heavy.len(), 4);
    }
}
