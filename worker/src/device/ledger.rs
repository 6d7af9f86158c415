//! A GPU worker's device memory: the budget (the device's memory less the
//! reserve), what running tasks declared, what resident models hold, and
//! what the driver says is free. A task is claimed only when its memory
//! fits what is left (the claim script compares); models stay resident
//! between tasks until a task of higher priority needs their room.
//!
//! Eviction rule (issue 6): a `high` or `critical` task that does not fit
//! evicts resident models of lower priority, lowest priority first and the
//! least recently used first among equals, until it fits; a `normal` or
//! `low` task never evicts.

use std::sync::{Mutex, MutexGuard, PoisonError};

use tandem_shared::Priority;

/// How urgent a priority is: `low` 0 up to `critical` 3. (`Priority`'s own
/// order puts `critical` first, as streams are read.)
fn urgency(priority: Priority) -> usize {
    Priority::ALL.len() - 1 - priority.index()
}

/// A model kept on the device between tasks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resident {
    pub name: String,
    pub bytes: u64,
    /// The highest priority of the tasks that loaded or used it: a model
    /// only low-priority tasks wanted gives way first, and one a critical
    /// task needed stays out of a high task's reach though a low task used
    /// it since (the model is no less needed for that).
    pub priority: Priority,
    /// When it was last used, on the ledger's own clock.
    last_used: u64,
}

/// Why a task's memory cannot be made to fit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{needed} bytes do not fit: {free} free of a {budget}-byte budget ({models} held by models this task may not evict)"
)]
pub struct NoRoom {
    pub needed: u64,
    pub free: u64,
    pub budget: u64,
    pub models: u64,
}

#[derive(Debug)]
pub struct Ledger {
    budget: u64,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    models: Vec<Resident>,
    clock: u64,
    hits: u64,
    misses: u64,
}

impl Ledger {
    pub fn new(budget: u64) -> Self {
        Self {
            budget,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The ledger's state stays consistent across a panic elsewhere.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// Bytes the resident models hold.
    pub fn models_bytes(&self) -> u64 {
        self.lock().models.iter().map(|m| m.bytes).sum()
    }

    /// What tasks may still declare: the budget less the running tasks'
    /// `tasks_reserved` and the models, and never more than the driver's
    /// free memory (`driver_free`, when known: another process may use the
    /// device too). The driver's figure is not reduced by what running
    /// tasks declared: the ledger does not know how much of that they have
    /// allocated already, and subtracting it would count an allocated task
    /// twice. A task admitted into memory that another process took
    /// meanwhile meets an out-of-memory error, which hands it back to the
    /// queue (`ErrorCode::DEVICE_OUT_OF_MEMORY`), never fails it.
    pub fn free(&self, tasks_reserved: u64, driver_free: Option<u64>) -> u64 {
        let booked = self
            .budget
            .saturating_sub(tasks_reserved)
            .saturating_sub(self.models_bytes());
        match driver_free {
            Some(free) => booked.min(free),
            None => booked,
        }
    }

    /// Marks `name` used by a task of `priority` (raising the model's
    /// priority to it, never lowering it); true when it is resident (a cache
    /// hit, counted), false when it must be loaded (a miss).
    pub fn touch(&self, name: &str, priority: Priority) -> bool {
        let mut inner = self.lock();
        inner.clock += 1;
        let now = inner.clock;
        let hit = match inner.models.iter_mut().find(|m| m.name == name) {
            Some(model) => {
                model.last_used = now;
                if urgency(priority) > urgency(model.priority) {
                    model.priority = priority;
                }
                true
            }
            None => false,
        };
        if hit {
            inner.hits += 1;
        } else {
            inner.misses += 1;
        }
        hit
    }

    /// Cache hits and misses so far.
    pub fn hits_and_misses(&self) -> (u64, u64) {
        let inner = self.lock();
        (inner.hits, inner.misses)
    }

    /// The resident models, least recently used first.
    pub fn residents(&self) -> Vec<Resident> {
        let mut models = self.lock().models.clone();
        models.sort_by_key(|m| m.last_used);
        models
    }

    /// Makes `needed` bytes free for a task of `priority`, evicting what
    /// the rule allows (see the module doc), and returns the names evicted,
    /// in eviction order; the caller frees their device memory. Nothing is
    /// evicted when the task cannot be made to fit.
    pub fn make_room(
        &self,
        needed: u64,
        priority: Priority,
        tasks_reserved: u64,
    ) -> Result<Vec<String>, NoRoom> {
        let mut inner = self.lock();
        let held: u64 = inner.models.iter().map(|m| m.bytes).sum();
        let free = self
            .budget
            .saturating_sub(tasks_reserved)
            .saturating_sub(held);
        if needed <= free {
            return Ok(Vec::new());
        }
        let may_evict = urgency(priority) >= urgency(Priority::High);
        let mut victims: Vec<&Resident> = inner
            .models
            .iter()
            .filter(|m| may_evict && urgency(m.priority) < urgency(priority))
            .collect();
        victims.sort_by_key(|m| (urgency(m.priority), m.last_used));
        let evictable: u64 = victims.iter().map(|m| m.bytes).sum();
        if needed > free + evictable {
            return Err(NoRoom {
                needed,
                free,
                budget: self.budget,
                models: held - evictable,
            });
        }
        let mut gained = 0;
        let mut evicted = Vec::new();
        for victim in victims {
            if free + gained >= needed {
                break;
            }
            gained += victim.bytes;
            evicted.push(victim.name.clone());
        }
        inner.models.retain(|m| !evicted.contains(&m.name));
        Ok(evicted)
    }

    /// Records `name` as resident, holding `bytes`, after the caller loaded
    /// it (having made room first).
    pub fn admit(&self, name: &str, bytes: u64, priority: Priority) {
        let mut inner = self.lock();
        inner.clock += 1;
        let now = inner.clock;
        inner.models.retain(|m| m.name != name);
        inner.models.push(Resident {
            name: name.to_owned(),
            bytes,
            priority,
            last_used: now,
        });
    }

    /// Forgets `name` (the caller freed it).
    pub fn evict(&self, name: &str) {
        self.lock().models.retain(|m| m.name != name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    /// The seed's primary: 12 GiB less a 10 % reserve.
    fn primary() -> Ledger {
        Ledger::new(12 * GIB * 9 / 10)
    }

    #[test]
    fn free_memory_counts_tasks_models_and_the_driver() {
        let ledger = primary();
        let budget = ledger.budget();
        assert_eq!(ledger.free(0, None), budget);
        ledger.admit("small", GIB, Priority::Normal);
        assert_eq!(ledger.free(2 * GIB, None), budget - 3 * GIB);
        // Another process holds most of the device: the driver wins.
        assert_eq!(ledger.free(0, Some(GIB / 2)), GIB / 2);
        assert_eq!(ledger.free(u64::MAX, None), 0);
    }

    #[test]
    fn a_cache_hit_is_counted_and_refreshes_the_model() {
        let ledger = primary();
        assert!(!ledger.touch("m", Priority::Low));
        ledger.admit("m", GIB, Priority::Low);
        ledger.admit("n", GIB, Priority::Low);
        assert!(ledger.touch("m", Priority::Low));
        assert_eq!(ledger.hits_and_misses(), (1, 1));
        let order: Vec<String> = ledger.residents().into_iter().map(|m| m.name).collect();
        assert_eq!(order, ["n", "m"], "m was used last");
        assert!(ledger.touch("n", Priority::Low));
        assert!(!ledger.touch("absent", Priority::Low));
        assert!(ledger.touch("m", Priority::Low));
        assert_eq!(ledger.hits_and_misses(), (3, 2));
    }

    #[test]
    fn high_priority_evicts_lower_priority_models_least_recently_used_first() {
        let ledger = Ledger::new(10 * GIB);
        ledger.admit("low-old", 3 * GIB, Priority::Low);
        ledger.admit("normal", 3 * GIB, Priority::Normal);
        ledger.admit("low-new", 3 * GIB, Priority::Low);
        ledger.admit("critical", GIB / 2, Priority::Critical);
        // 0.5 GiB free; a 4 GiB high task needs two 3 GiB models gone:
        // both low ones (lowest priority first), the older one first.
        let evicted = ledger.make_room(4 * GIB, Priority::High, 0).unwrap();
        assert_eq!(evicted, ["low-old", "low-new"]);
        assert_eq!(ledger.models_bytes(), 3 * GIB + GIB / 2);
        // Next, the normal one goes before anything of equal priority.
        let evicted = ledger.make_room(8 * GIB, Priority::High, 0).unwrap();
        assert_eq!(evicted, ["normal"]);
    }

    #[test]
    fn normal_and_low_tasks_never_evict() {
        let ledger = Ledger::new(4 * GIB);
        ledger.admit("low", 3 * GIB, Priority::Low);
        for priority in [Priority::Normal, Priority::Low] {
            let err = ledger.make_room(2 * GIB, priority, 0).unwrap_err();
            assert_eq!(err.free, GIB);
            assert_eq!(err.models, 3 * GIB);
        }
        assert_eq!(ledger.models_bytes(), 3 * GIB, "nothing was evicted");
        // What fits needs no eviction at any priority.
        assert_eq!(ledger.make_room(GIB, Priority::Low, 0), Ok(vec![]));
    }

    #[test]
    fn a_model_keeps_the_highest_priority_that_used_it() {
        let ledger = Ledger::new(4 * GIB);
        ledger.admit("m", 3 * GIB, Priority::Low);
        assert!(ledger.touch("m", Priority::Critical));
        assert!(ledger.touch("m", Priority::Low), "a later low use");
        let priorities: Vec<Priority> = ledger.residents().iter().map(|m| m.priority).collect();
        assert_eq!(priorities, [Priority::Critical]);
        // So a high task may not evict it...
        assert!(ledger.make_room(2 * GIB, Priority::High, 0).is_err());
        // ...while a model only low tasks used gives way.
        ledger.evict("m");
        ledger.admit("n", 3 * GIB, Priority::Low);
        assert!(ledger.touch("n", Priority::Low));
        assert_eq!(
            ledger.make_room(2 * GIB, Priority::High, 0),
            Ok(vec!["n".to_owned()])
        );
    }

    #[test]
    fn evicting_a_model_frees_its_bytes_and_keeps_the_others() {
        let ledger = Ledger::new(10 * GIB);
        ledger.admit("a", 3 * GIB, Priority::Normal);
        ledger.admit("b", 2 * GIB, Priority::Normal);
        ledger.evict("a");
        assert_eq!(ledger.models_bytes(), 2 * GIB);
        assert_eq!(ledger.free(0, None), 8 * GIB);
        let names: Vec<String> = ledger.residents().into_iter().map(|m| m.name).collect();
        assert_eq!(names, ["b"]);
        ledger.evict("not resident");
        assert_eq!(ledger.models_bytes(), 2 * GIB);
    }

    #[test]
    fn evicting_everything_allowed_for_an_exact_fit_is_enough() {
        let ledger = Ledger::new(4 * GIB);
        ledger.admit("low", GIB, Priority::Low);
        ledger.admit("normal", 2 * GIB, Priority::Normal);
        // 1 GiB free and 3 GiB evictable: 4 GiB fits exactly.
        assert_eq!(
            ledger.make_room(4 * GIB, Priority::High, 0),
            Ok(vec!["low".to_owned(), "normal".to_owned()])
        );
        assert_eq!(ledger.models_bytes(), 0);
    }

    /// A critical task evicts as a high one does; no task evicts a model
    /// of its own priority.
    #[test]
    fn critical_tasks_evict_too_but_never_a_model_of_their_own_priority() {
        let ledger = Ledger::new(4 * GIB);
        ledger.admit("high", 2 * GIB, Priority::High);
        ledger.admit("low", GIB, Priority::Low);
        // A high task may evict only "low": 2 GiB at most, 3 GiB asked.
        let err = ledger.make_room(3 * GIB, Priority::High, 0).unwrap_err();
        assert_eq!((err.free, err.models), (GIB, 2 * GIB));
        assert_eq!(
            ledger.make_room(3 * GIB, Priority::Critical, 0),
            Ok(vec!["low".to_owned(), "high".to_owned()])
        );
        assert_eq!(ledger.models_bytes(), 0);
    }

    /// Eviction stops as soon as the task fits: an exact fit leaves the
    /// next candidate resident.
    #[test]
    fn eviction_stops_once_the_task_fits_exactly() {
        let ledger = Ledger::new(4 * GIB);
        for name in ["a", "b", "c"] {
            ledger.admit(name, GIB, Priority::Low);
        }
        assert_eq!(
            ledger.make_room(2 * GIB, Priority::High, 0),
            Ok(vec!["a".to_owned()])
        );
        assert_eq!(ledger.models_bytes(), 2 * GIB);
    }

    #[test]
    fn nothing_is_evicted_when_even_eviction_cannot_make_it_fit() {
        let ledger = Ledger::new(4 * GIB);
        ledger.admit("low", GIB, Priority::Low);
        ledger.admit("critical", 2 * GIB, Priority::Critical);
        // A high task may evict only "low": 2 GiB at most, 3 GiB asked.
        let err = ledger.make_room(3 * GIB, Priority::High, 0).unwrap_err();
        assert_eq!((err.free, err.models), (GIB, 2 * GIB));
        assert_eq!(ledger.models_bytes(), 3 * GIB);
        // Running tasks' reservations count against it too.
        assert!(
            ledger
                .make_room(2 * GIB, Priority::Critical, 4 * GIB)
                .is_err()
        );
    }
}
