//! The notifier's queue of rooms to look at (sans-I/O): each room at most once, bounded by
//! `notify_queue_max`, and never handed to two workers at once.
//!
//! The queue is only a hint of where to look: the store is the truth (the rooms' top
//! offsets against their notifier cursors). So when it is full a room is not queued and
//! the queue records that it overflowed; the notifier then sweeps the store's backlog,
//! which finds every room left out. Nothing is lost by dropping a wake-up, only delayed.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

pub(super) struct Queue {
    /// Rooms waiting for a worker, oldest first.
    waiting: VecDeque<Arc<str>>,
    /// The rooms of `waiting`, to queue each once.
    queued: HashSet<Arc<str>>,
    /// Rooms a worker has now.
    busy: HashSet<Arc<str>>,
    /// Busy rooms woken again meanwhile: queued again when their worker finishes.
    again: HashSet<Arc<str>>,
    max: usize,
    overflowed: bool,
}

impl Queue {
    pub(super) fn new(max: usize) -> Queue {
        Queue {
            waiting: VecDeque::new(),
            queued: HashSet::new(),
            busy: HashSet::new(),
            again: HashSet::new(),
            max: max.max(1),
            overflowed: false,
        }
    }

    /// Asks for `room` to be looked at.
    pub(super) fn push(&mut self, room: &Arc<str>) {
        if self.busy.contains(room) {
            // At most one entry per busy room, and busy rooms are bounded by the workers.
            self.again.insert(room.clone());
        } else if !self.queued.contains(room) {
            if self.waiting.len() >= self.max {
                self.overflowed = true;
            } else {
                self.queued.insert(room.clone());
                self.waiting.push_back(room.clone());
            }
        }
    }

    /// The next room for a worker (now busy until `finish`).
    pub(super) fn pop(&mut self) -> Option<Arc<str>> {
        let room = self.waiting.pop_front()?;
        self.queued.remove(&room);
        self.busy.insert(room.clone());
        Some(room)
    }

    /// The worker of `room` is done with it.
    pub(super) fn finish(&mut self, room: &Arc<str>) {
        self.busy.remove(room);
        if self.again.remove(room) {
            self.push(room);
        }
    }

    /// Whether wake-ups were dropped since the last call (the caller then sweeps).
    pub(super) fn take_overflow(&mut self) -> bool {
        std::mem::take(&mut self.overflowed)
    }

    pub(super) fn is_full(&self) -> bool {
        self.waiting.len() >= self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Arc<str> {
        s.into()
    }

    #[test]
    fn each_room_once_bounded_and_never_twice_busy() {
        let mut q = Queue::new(2);
        q.push(&r("a"));
        q.push(&r("a"));
        q.push(&r("b"));
        assert!(!q.take_overflow());
        q.push(&r("c"));
        assert!(q.take_overflow(), "a third room overflows");
        assert!(!q.take_overflow(), "reported once");
        let a = q.pop().unwrap();
        assert_eq!(&*a, "a");
        // Woken while busy: not handed out twice, but looked at again afterwards.
        q.push(&a);
        assert_eq!(&*q.pop().unwrap(), "b");
        assert!(q.pop().is_none());
        q.finish(&a);
        assert_eq!(&*q.pop().unwrap(), "a");
        q.finish(&a);
        assert!(q.pop().is_none());
    }
}
