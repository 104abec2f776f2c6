//! A queue of items due at instants, for the shells that feed the engine.
//!
//! Items come out in (instant, insertion) order, so two items due at the
//! same instant keep the order they were queued in and a run stays a pure
//! function of its inputs.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::types::Timestamp;

struct Scheduled<T> {
    at: Timestamp,
    sequence: u64,
    item: T,
}

impl<T> PartialEq for Scheduled<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.sequence) == (other.at, other.sequence)
    }
}
impl<T> Eq for Scheduled<T> {}
impl<T> PartialOrd for Scheduled<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Scheduled<T> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.sequence).cmp(&(other.at, other.sequence))
    }
}

pub struct TimeQueue<T> {
    heap: BinaryHeap<Reverse<Scheduled<T>>>,
    sequence: u64,
}

impl<T> Default for TimeQueue<T> {
    fn default() -> Self {
        Self { heap: BinaryHeap::new(), sequence: 0 }
    }
}

impl<T> TimeQueue<T> {
    pub fn push(&mut self, at: Timestamp, item: T) {
        self.sequence += 1;
        self.heap.push(Reverse(Scheduled { at, sequence: self.sequence, item }));
    }

    /// When the next item is due.
    pub fn next_at(&self) -> Option<Timestamp> {
        self.heap.peek().map(|Reverse(s)| s.at)
    }

    /// The next item, if it is due at or before `until`.
    pub fn pop_due(&mut self, until: Timestamp) -> Option<(Timestamp, T)> {
        if self.next_at()? > until {
            return None;
        }
        self.pop()
    }

    pub fn pop(&mut self) -> Option<(Timestamp, T)> {
        self.heap.pop().map(|Reverse(s)| (s.at, s.item))
    }

    /// Keeps the items `keep` says to and returns the others, in no particular order;
    /// the kept ones come out in the order they would have.
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) -> Vec<T> {
        let mut dropped = Vec::new();
        let kept: Vec<Reverse<Scheduled<T>>> = std::mem::take(&mut self.heap)
            .into_vec()
            .into_iter()
            .filter_map(|Reverse(s)| {
                if keep(&s.item) {
                    Some(Reverse(s))
                } else {
                    dropped.push(s.item);
                    None
                }
            })
            .collect();
        self.heap = BinaryHeap::from(kept);
        dropped
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}
