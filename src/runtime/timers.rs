//! The loop's timers: a min-heap of deadlines with lazy cancellation.
//! Every timer's callback runs exactly once: `Fired` at its deadline, or
//! `Cancelled` after `cancel` or when the loop is freed.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerOutcome {
    Fired,
    Cancelled,
}

pub type TimerCallback = Box<dyn FnOnce(TimerOutcome) + Send>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TimerId(pub u64);

/// Timer ids are unique in the process, so an id from one loop can never
/// cancel another loop's timer.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

#[derive(Default)]
pub struct Timers {
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
    callbacks: HashMap<u64, TimerCallback>,
    /// The loop was freed: no timer may be added any more.
    pub sealed: bool,
}

impl Timers {
    pub fn add(&mut self, deadline: Instant, cb: TimerCallback) -> TimerId {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        self.heap.push(Reverse((deadline, id)));
        self.callbacks.insert(id, cb);
        TimerId(id)
    }

    /// Takes the callback of a timer that has not fired yet.
    pub fn cancel(&mut self, id: TimerId) -> Option<TimerCallback> {
        self.callbacks.remove(&id.0)
    }

    /// The earliest live deadline.
    pub fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(Reverse((deadline, id))) = self.heap.peek() {
            if self.callbacks.contains_key(id) {
                return Some(*deadline);
            }
            self.heap.pop();
        }
        None
    }

    /// Removes and returns the callbacks due at `now`, earliest first.
    pub fn take_due(&mut self, now: Instant) -> Vec<TimerCallback> {
        let mut due = Vec::new();
        while let Some(Reverse((deadline, id))) = self.heap.peek() {
            if *deadline > now {
                break;
            }
            let id = *id;
            self.heap.pop();
            if let Some(cb) = self.callbacks.remove(&id) {
                due.push(cb);
            }
        }
        due
    }

    pub fn is_empty(&self) -> bool {
        self.callbacks.is_empty()
    }

    pub fn take_all(&mut self) -> Vec<TimerCallback> {
        self.heap.clear();
        let mut all: Vec<(u64, TimerCallback)> = self.callbacks.drain().collect();
        all.sort_by_key(|(id, _)| *id);
        all.into_iter().map(|(_, cb)| cb).collect()
    }
}
