//! Tasks claimed ahead of the worker's free slots: while its tasks run, the
//! worker holds up to `prefetch` more, claimed and decoded, and starts the
//! next one the moment a slot frees, without waiting for a claim round trip
//! (the trip that commits the finished task claims the next one to hold).
//!
//! A prefetched task is the worker's like a running one: its entry is
//! pending with this consumer, it stands in the running-task table (so its
//! lease is extended, a cancel finds its token, and a dead worker's claim
//! takes it over), and its declared memory is booked from the claim on. It
//! has not started: a cancel settles it as `cancelled` at once, a deadline
//! that passed while it waited expires it when its turn comes, and a
//! draining worker, or a pause of its class, priority or kind, hands it
//! back to its stream at once.
//!
//! Architecture Invariant: a prefetched task starts only when a slot is
//! free and the worker is not draining; nothing here talks to Redis (the
//! dispatcher releases what [`Prefetched::take_paused`] and
//! [`Prefetched::drain`] give it).

use std::collections::VecDeque;

use tandem_shared::TaskId;
use tandem_shared::store::FlowState;
use tandem_shared::wire::TaskEntry;
use tokio_util::sync::CancellationToken;

/// One task claimed ahead: the decoded entry, the stream entry it holds and
/// its cancel token (from the running-task table).
#[derive(Debug)]
pub(crate) struct Ready {
    pub entry: TaskEntry,
    /// Index into the worker's streams.
    pub stream: usize,
    pub entry_id: String,
    pub token: CancellationToken,
}

impl Ready {
    pub fn id(&self) -> TaskId {
        self.entry.id
    }

    /// Its `(stream index, entry id)`, as a release takes it.
    pub fn lease(&self) -> (usize, String) {
        (self.stream, self.entry_id.clone())
    }

    /// Whether its deadline passed by `now_ms` (this host's clock: the claim
    /// checked it by the Redis clock when it took the task).
    pub fn expired(&self, now_ms: u64) -> bool {
        self.entry.deadline_ms.is_some_and(|d| d > 0 && now_ms > d)
    }

    /// Whether a flow state of its class pauses it: the whole class, its
    /// priority or its kind.
    fn paused_by(&self, flow: &FlowState) -> bool {
        flow.paused_since_ms.is_some()
            || flow
                .paused_priorities
                .iter()
                .any(|(priority, _)| *priority == self.entry.priority)
            || flow
                .paused_kinds
                .iter()
                .any(|(kind, _)| *kind == self.entry.kind)
    }
}

/// The tasks held ahead, in claim order (which is priority order).
#[derive(Debug, Default)]
pub(crate) struct Prefetched {
    queue: VecDeque<Ready>,
}

impl Prefetched {
    pub fn push(&mut self, ready: Ready) {
        self.queue.push_back(ready);
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// How many tasks are held.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// The next task to start, in claim order.
    pub fn next(&mut self) -> Option<Ready> {
        self.queue.pop_front()
    }

    /// Takes out the tasks whose token was cancelled (a cancel request, or
    /// their lease was lost): they never start.
    pub fn take_cancelled(&mut self) -> Vec<Ready> {
        self.take_where(|ready| ready.token.is_cancelled())
    }

    /// Takes out the tasks a pause now holds, given each class's flow state
    /// as `(class, state)`: they go back to their streams.
    pub fn take_paused(&mut self, flows: &[(tandem_shared::Class, FlowState)]) -> Vec<Ready> {
        self.take_where(|ready| {
            flows
                .iter()
                .any(|(class, flow)| *class == ready.entry.class && ready.paused_by(flow))
        })
    }

    /// Takes out every task held: the worker drains or stops.
    pub fn drain(&mut self) -> Vec<Ready> {
        self.queue.drain(..).collect()
    }

    /// The classes of the tasks held, each once.
    pub fn classes(&self) -> Vec<tandem_shared::Class> {
        let mut classes: Vec<tandem_shared::Class> = Vec::new();
        for ready in &self.queue {
            if !classes.contains(&ready.entry.class) {
                classes.push(ready.entry.class);
            }
        }
        classes
    }

    fn take_where(&mut self, mut pick: impl FnMut(&Ready) -> bool) -> Vec<Ready> {
        let (taken, kept): (Vec<Ready>, Vec<Ready>) = self.queue.drain(..).partition(|r| pick(r));
        self.queue = kept.into();
        taken
    }
}

#[cfg(test)]
mod tests {
    use tandem_shared::{Class, Priority};

    use super::*;

    fn ready(kind: &str, class: Class, priority: Priority, deadline_ms: Option<u64>) -> Ready {
        Ready {
            entry: TaskEntry {
                id: TaskId::new(),
                kind: kind.into(),
                class,
                priority,
                attempt: 1,
                max_attempts: 3,
                memory_bytes: 0,
                deadline_ms,
                timeout_ms: None,
                producer: "p".into(),
                submitted_at_ms: None,
                reply_to: None,
                params: Vec::new(),
                signature: None,
                split: None,
                avoid: Vec::new(),
                inputs: None,
                feeds: 0,
            },
            stream: 0,
            entry_id: "1-0".into(),
            token: CancellationToken::new(),
        }
    }

    fn held(tasks: Vec<Ready>) -> (Prefetched, Vec<TaskId>) {
        let ids = tasks.iter().map(Ready::id).collect();
        let mut prefetched = Prefetched::default();
        for task in tasks {
            prefetched.push(task);
        }
        (prefetched, ids)
    }

    fn ids(tasks: &[Ready]) -> Vec<TaskId> {
        tasks.iter().map(Ready::id).collect()
    }

    #[test]
    fn tasks_start_in_claim_order_and_cancelled_ones_leave_from_anywhere() {
        let (mut prefetched, all) = held(vec![
            ready("noop", Class::Cpu, Priority::High, None),
            ready("noop", Class::Cpu, Priority::Low, None),
            ready("noop", Class::Cpu, Priority::Low, None),
        ]);
        assert!(prefetched.take_cancelled().is_empty());
        prefetched.queue[1].token.cancel();
        assert_eq!(ids(&prefetched.take_cancelled()), vec![all[1]]);
        assert_eq!(prefetched.next().map(|r| r.id()), Some(all[0]));
        assert_eq!(prefetched.next().map(|r| r.id()), Some(all[2]));
        assert!(prefetched.next().is_none());
        assert!(prefetched.is_empty());
    }

    #[test]
    fn a_pause_takes_out_the_tasks_of_its_class_priority_or_kind() {
        let cases: &[(&str, FlowState, &[usize])] = &[
            ("nothing paused", FlowState::default(), &[]),
            (
                "the class",
                FlowState {
                    paused_since_ms: Some(1),
                    ..FlowState::default()
                },
                &[0, 1, 2],
            ),
            (
                "a priority",
                FlowState {
                    paused_priorities: vec![(Priority::Low, 1)],
                    ..FlowState::default()
                },
                &[1],
            ),
            (
                "a kind",
                FlowState {
                    paused_kinds: vec![("sleep".into(), 1)],
                    ..FlowState::default()
                },
                &[2],
            ),
        ];
        for (what, flow, paused) in cases {
            let (mut prefetched, all) = held(vec![
                ready("noop", Class::Cpu, Priority::High, None),
                ready("noop", Class::Cpu, Priority::Low, None),
                ready("sleep", Class::Cpu, Priority::High, None),
                ready("noop", Class::Light, Priority::Low, None),
            ]);
            assert_eq!(prefetched.classes(), vec![Class::Cpu, Class::Light]);
            let taken = prefetched.take_paused(&[(Class::Cpu, flow.clone())]);
            let expect: Vec<TaskId> = paused.iter().map(|&i| all[i]).collect();
            assert_eq!(ids(&taken), expect, "{what}");
            // The other class's flow state did not pause its task.
            let mut left = Vec::new();
            while let Some(ready) = prefetched.next() {
                left.push(ready.id());
            }
            assert!(left.contains(&all[3]), "{what}");
        }
    }

    #[test]
    fn a_deadline_passed_by_now_expires_the_task() {
        let no_deadline = ready("noop", Class::Cpu, Priority::Low, None);
        let due_at_100 = ready("noop", Class::Cpu, Priority::Low, Some(100));
        assert!(!no_deadline.expired(u64::MAX));
        assert!(!due_at_100.expired(100));
        assert!(due_at_100.expired(101));
    }
}
