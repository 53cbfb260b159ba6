//! The SQLite store's committed room positions, kept in memory so a subscribe, the
//! commonest read of a join, is answered without a database read.
//!
//! Reading a position from SQLite means a trip through Tokio's blocking pool: a thread is
//! woken (or started) and the answer wakes the task back. In a burst of joins that was a
//! fifth of the server's CPU and the largest single cost of a join (perf, 10,000 members
//! joining at 100 in flight; BENCHMARKS.md). SQLite has one writer, this node's group-commit
//! writer, so the node can know every room's position exactly:
//!
//! - the writer calls [`Positions::committed`] for each room of a batch once the batch's
//!   transaction has committed and before the batch is dispatched: a read served from here
//!   is never older than one from the database made at the same moment, nor newer than what
//!   is committed;
//! - at open, a store of up to [`MAX_POSITIONS`] rooms loads them all ([`Positions::load`]):
//!   the map is then *complete* (every room with a row is in it), so a room missing from it
//!   has no row and is at offset 0 of the store's epoch, with no read at all (every user's
//!   personal channel is such a room until something is sent to it);
//! - otherwise a room the writer has not written since start is read from the database once
//!   and remembered ([`Positions::fill`]), unless the writer committed anything meanwhile (a
//!   version counter, so a read that raced a commit cannot put an older position back);
//! - bounded: past [`MAX_POSITIONS`] rooms the writer forgets them all and the map is no
//!   longer complete (rooms are read again).
//!
//! The writer also starts each batch from these positions (reading the database only for a
//! room it cannot answer), so it keeps no map of its own.
//!
//! Anything else that changes a room's `top` or `epoch` row must call `committed` too.

use std::collections::HashMap;
use std::sync::Mutex;

use super::Position;

/// Most rooms remembered.
pub(super) const MAX_POSITIONS: usize = 100_000;

#[derive(Default)]
pub(super) struct Positions {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    rooms: HashMap<String, Position>,
    /// Bumped by every commit, so a fill that began before one is dropped.
    version: u64,
    /// `Some(store epoch)` while `rooms` holds every room that has a row.
    complete: Option<String>,
}

impl Positions {
    /// Every room with a row, read at open (before any commit); `base_epoch` is the epoch
    /// of rooms without one. Too many rooms: nothing is loaded.
    pub(super) fn load(&self, rooms: HashMap<String, Position>, base_epoch: &str) {
        if rooms.len() < MAX_POSITIONS {
            let mut inner = self.inner.lock().expect("positions lock");
            inner.rooms = rooms;
            inner.complete = Some(base_epoch.to_owned());
        }
    }

    /// A remembered position, with the version to pass to `fill` on a miss.
    pub(super) fn get(&self, room: &str) -> Result<Position, u64> {
        let inner = self.inner.lock().expect("positions lock");
        if let Some(p) = inner.rooms.get(room) {
            return Ok(p.clone());
        }
        match &inner.complete {
            Some(epoch) => Ok(Position {
                offset: 0,
                epoch: epoch.clone(),
            }),
            None => Err(inner.version),
        }
    }

    /// Remembers `pos`, read from the database after `get` returned `version`, unless a
    /// commit happened since (its position may be newer) or the map is full.
    pub(super) fn fill(&self, room: &str, pos: &Position, version: u64) {
        let mut inner = self.inner.lock().expect("positions lock");
        if inner.version == version && inner.rooms.len() < MAX_POSITIONS {
            inner
                .rooms
                .entry(room.to_owned())
                .or_insert_with(|| pos.clone());
        }
    }

    /// The writer committed these rooms' positions.
    pub(super) fn committed<'a>(&self, rooms: impl IntoIterator<Item = (&'a str, u64, &'a str)>) {
        let mut inner = self.inner.lock().expect("positions lock");
        inner.version += 1;
        if inner.rooms.len() >= MAX_POSITIONS {
            inner.rooms.clear();
            inner.complete = None;
        }
        for (room, offset, epoch) in rooms {
            let p = Position {
                offset,
                epoch: epoch.to_owned(),
            };
            inner.rooms.insert(room.to_owned(), p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(offset: u64) -> Position {
        Position {
            offset,
            epoch: "e".into(),
        }
    }

    #[test]
    fn a_fill_that_raced_a_commit_is_dropped() {
        let p = Positions::default();
        let v = p.get("r").unwrap_err();
        p.committed([("r", 5, "e")]);
        p.fill("r", &pos(4), v);
        assert_eq!(p.get("r").unwrap().offset, 5);
        let v = p.get("s").unwrap_err();
        p.committed([("r", 6, "e")]);
        p.fill("s", &pos(0), v);
        assert!(
            p.get("s").is_err(),
            "a fill older than a commit is not kept"
        );
        let v = p.get("s").unwrap_err();
        p.fill("s", &pos(0), v);
        assert_eq!(p.get("s").unwrap().offset, 0);
    }

    #[test]
    fn a_complete_map_answers_rooms_without_a_row() {
        let p = Positions::default();
        assert!(p.get("new").is_err());
        p.load(HashMap::from([("old".to_owned(), pos(3))]), "base");
        assert_eq!(p.get("old").unwrap().offset, 3);
        let new = p.get("new").unwrap();
        assert_eq!((new.offset, new.epoch.as_str()), (0, "base"));
        p.committed([("new", 1, "base")]);
        assert_eq!(p.get("new").unwrap().offset, 1);
        // Over the bound the map is forgotten and no longer complete.
        let many = (0..MAX_POSITIONS)
            .map(|i| (i.to_string(), pos(1)))
            .collect();
        let q = Positions::default();
        q.load(many, "base");
        assert!(q.get("x").is_err(), "too many rooms: nothing loaded");
    }

    #[test]
    fn the_map_is_bounded() {
        let p = Positions::default();
        for i in 0..MAX_POSITIONS + 10 {
            let v = p.get(&i.to_string()).unwrap_err();
            p.fill(&i.to_string(), &pos(1), v);
        }
        assert_eq!(p.inner.lock().unwrap().rooms.len(), MAX_POSITIONS);
        p.committed([("x", 1, "e")]);
        assert_eq!(p.inner.lock().unwrap().rooms.len(), 1);
    }
}
