//! Per-room reordering between the bus and the hub (sans-I/O: the caller fetches from the
//! store and feeds the results back).
//!
//! # Why it is needed
//!
//! Two nodes committing to one room publish on the bus independently, so a node can
//! receive offset N+1 before N. The store is the source of truth: a publication is on the
//! bus only after its commit, so any offset a node has *not* received yet but knows exists
//! (because it received a later one, or a hint) is already readable from the store.
//!
//! # The mechanism
//!
//! For each watched room the node keeps `delivered`, the last offset handed to the hub.
//! - An offset `<= delivered` is a duplicate and is dropped.
//! - `delivered + 1` goes to the hub at once, followed by any held successors.
//! - A later offset is *held* (at most `MAX_HELD` per room; beyond, it is dropped but
//!   remembered in `known_top`, the store has it) and the room is marked as having a gap.
//! - A gap older than `GAP_WAIT` (the missing publication is probably just late on the
//!   bus) is filled from the store: the caller reads `range(after delivered)` and feeds it
//!   back with `fill`, which delivers in order.
//! - The hub therefore sees every room's offsets strictly increasing by one.
//!
//! Until the room's *baseline* (its store position read after the bus subscription was
//! confirmed) is known, everything is held: offsets up to the baseline are in the store
//! read of every subscriber that registered before it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::store::Message;

/// Publications held per room while waiting for a missing one.
pub const MAX_HELD: usize = 10_000;
/// How long a gap may wait for the late publication before the store is asked.
pub const GAP_WAIT: Duration = Duration::from_millis(150);
/// A gap the store cannot fill within this long is skipped: the hub then sees the gap and
/// closes the affected subscriptions with "insufficient state" (they recover).
pub const GAP_GIVE_UP: Duration = Duration::from_secs(5);

#[derive(Default)]
struct RoomOrder {
    /// Last offset handed to the hub; `None` until the baseline is known.
    delivered: Option<u64>,
    /// Publications received ahead of `delivered + 1`.
    held: BTreeMap<u64, Arc<Message>>,
    /// Highest offset known to exist.
    known_top: u64,
    /// When the current gap was noticed.
    gap_since: Option<Instant>,
}

impl RoomOrder {
    /// Hands out everything contiguous after `delivered`.
    fn drain(&mut self, out: &mut Vec<Arc<Message>>, now: Instant) {
        let Some(mut d) = self.delivered else { return };
        while let Some(entry) = self.held.first_entry() {
            let offset = *entry.key();
            if offset <= d {
                entry.remove();
            } else if offset == d + 1 {
                out.push(entry.remove());
                d += 1;
            } else {
                break;
            }
        }
        self.delivered = Some(d);
        self.known_top = self.known_top.max(d);
        if self.known_top > d {
            self.gap_since.get_or_insert(now);
        } else {
            self.gap_since = None;
        }
    }

    fn offer(&mut self, m: Arc<Message>) {
        if self.delivered.is_some_and(|d| m.offset <= d) {
            return;
        }
        self.known_top = self.known_top.max(m.offset);
        if self.held.len() < MAX_HELD {
            self.held.insert(m.offset, m);
        }
    }
}

/// A gap to fill from the store: publications of `room` after `after`, at most `limit`.
#[derive(Debug, PartialEq, Eq)]
pub struct Fetch {
    pub room: Arc<str>,
    pub after: u64,
    pub limit: usize,
}

#[derive(Default)]
pub struct Reorder {
    rooms: HashMap<Arc<str>, RoomOrder>,
    /// Publications that arrived ahead of a missing one (for the `info` counters).
    pub early: u64,
}

impl Reorder {
    /// Sets a room's baseline (creating its state); returns what can now be delivered.
    pub fn baseline(&mut self, room: &Arc<str>, offset: u64, now: Instant) -> Vec<Arc<Message>> {
        let r = self.rooms.entry(room.clone()).or_default();
        r.delivered = Some(r.delivered.map_or(offset, |d| d.max(offset)));
        let mut out = Vec::new();
        r.drain(&mut out, now);
        out
    }

    /// A publication from the bus or this node; returns what can be delivered now, in
    /// order. Publications of rooms that are not watched are dropped.
    pub fn publication(&mut self, m: Arc<Message>, now: Instant) -> Vec<Arc<Message>> {
        let Some(r) = self.rooms.get_mut(&m.room) else {
            return Vec::new();
        };
        if r.delivered.is_some_and(|d| m.offset > d + 1) {
            self.early += 1;
        }
        r.offer(m);
        let mut out = Vec::new();
        r.drain(&mut out, now);
        out
    }

    /// Another node says `room` has publications up to `top` (it could not publish them).
    pub fn hint(&mut self, room: &str, top: u64, now: Instant) {
        if let Some(r) = self.rooms.get_mut(room) {
            r.known_top = r.known_top.max(top);
            if r.delivered.is_some_and(|d| top > d) {
                r.gap_since.get_or_insert(now);
            }
        }
    }

    /// Publications read from the store for a fetch; returns what can be delivered. A
    /// gap still open after `GAP_GIVE_UP` is skipped (see the module docs).
    pub fn fill(&mut self, room: &str, msgs: Vec<Arc<Message>>, now: Instant) -> Vec<Arc<Message>> {
        let Some(r) = self.rooms.get_mut(room) else {
            return Vec::new();
        };
        for m in msgs {
            r.offer(m);
        }
        let mut out = Vec::new();
        r.drain(&mut out, now);
        if r.gap_since
            .is_some_and(|since| now.duration_since(since) >= GAP_GIVE_UP)
        {
            if let Some((&first, _)) = r.held.first_key_value() {
                tracing::error!(room, first, delivered = ?r.delivered, "store cannot fill a gap; skipping it");
                r.delivered = Some(first - 1);
            } else {
                r.known_top = r.delivered.unwrap_or(0);
            }
            r.gap_since = None;
            r.drain(&mut out, now);
        }
        out
    }

    /// Gaps that waited long enough to be filled from the store.
    pub fn due(&self, now: Instant) -> Vec<Fetch> {
        self.rooms
            .iter()
            .filter_map(|(room, r)| {
                let since = r.gap_since?;
                let after = r.delivered?;
                (now.duration_since(since) >= GAP_WAIT).then(|| Fetch {
                    room: room.clone(),
                    after,
                    limit: (r.known_top - after).clamp(1, 1000) as usize,
                })
            })
            .collect()
    }

    /// Every room with a baseline and its delivered offset (for a sweep after the bus
    /// reconnected: anything after it may have been missed).
    pub fn positions(&self) -> Vec<(Arc<str>, u64)> {
        self.rooms
            .iter()
            .filter_map(|(room, r)| Some((room.clone(), r.delivered?)))
            .collect()
    }

    pub fn forget(&mut self, room: &str) {
        self.rooms.remove(room);
    }

    pub fn is_watched(&self, room: &str) -> bool {
        self.rooms.contains_key(room)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    fn m(offset: u64) -> Arc<Message> {
        Arc::new(Message {
            room: "r".into(),
            offset,
            uid: String::new(),
            user: String::new(),
            client: String::new(),
            data: RawValue::from_string("1".into()).unwrap(),
            info: None,
            ts_ms: 0,
            tombstone: None,
        })
    }

    fn offs(v: &[Arc<Message>]) -> Vec<u64> {
        v.iter().map(|m| m.offset).collect()
    }

    #[test]
    fn out_of_order_is_held_until_the_missing_one_arrives() {
        let mut r = Reorder::default();
        let t = Instant::now();
        let room: Arc<str> = "r".into();
        assert!(r.baseline(&room, 3, t).is_empty());
        assert_eq!(offs(&r.publication(m(5), t)), Vec::<u64>::new());
        assert_eq!(offs(&r.publication(m(4), t)), vec![4, 5]);
        assert_eq!(r.early, 1);
        assert_eq!(
            offs(&r.publication(m(5), t)),
            Vec::<u64>::new(),
            "duplicate"
        );
        assert!(r.due(t + GAP_WAIT).is_empty());
    }

    #[test]
    fn a_gap_is_fetched_after_waiting_then_filled_in_order() {
        let mut r = Reorder::default();
        let t = Instant::now();
        let room: Arc<str> = "r".into();
        r.baseline(&room, 0, t);
        assert_eq!(offs(&r.publication(m(1), t)), vec![1]);
        assert!(r.publication(m(4), t).is_empty());
        assert!(r.due(t).is_empty(), "not yet");
        let due = r.due(t + GAP_WAIT);
        assert_eq!(
            due,
            vec![Fetch {
                room: room.clone(),
                after: 1,
                limit: 3
            }]
        );
        let out = r.fill("r", vec![m(2), m(3), m(4)], t + GAP_WAIT);
        assert_eq!(offs(&out), vec![2, 3, 4]);
        assert!(r.due(t + GAP_WAIT * 10).is_empty());
    }

    #[test]
    fn nothing_goes_out_before_the_baseline() {
        let mut r = Reorder::default();
        let t = Instant::now();
        let room: Arc<str> = "r".into();
        r.baseline(&room, 0, t);
        r.forget("r");
        assert!(r.publication(m(1), t).is_empty(), "unwatched rooms drop");
        r.baseline(&room, 7, t);
        assert!(
            r.publication(m(7), t).is_empty(),
            "in the subscribers' store read"
        );
        assert_eq!(offs(&r.publication(m(8), t)), vec![8]);
    }

    #[test]
    fn hints_open_a_gap_and_unfillable_gaps_are_skipped() {
        let mut r = Reorder::default();
        let t = Instant::now();
        let room: Arc<str> = "r".into();
        r.baseline(&room, 2, t);
        r.hint("r", 4, t);
        assert_eq!(r.due(t + GAP_WAIT).len(), 1);
        assert_eq!(
            offs(&r.fill("r", vec![m(3), m(4)], t + GAP_WAIT)),
            vec![3, 4]
        );
        r.publication(m(7), t);
        let late = t + GAP_GIVE_UP + GAP_WAIT;
        assert_eq!(offs(&r.fill("r", vec![], late)), vec![7], "skipped 5 and 6");
    }
}
