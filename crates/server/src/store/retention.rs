//! Retention: how much of a room's history the store keeps (Centrifugo's `history_size`
//! and `history_ttl`, per namespace), and how trimming stays bounded.
//!
//! Invariants:
//! - retention never touches a room's position: the top offset and epoch stay, so offsets
//!   are never reused and a client's position stays comparable;
//! - reads honour the limits exactly, whether or not the rows are physically gone yet:
//!   a range never returns a publication older than `ttl` or more than `size` below the
//!   top, so history and recovery answer the same on every node and store;
//! - rows are deleted by the writer, inside the transaction of a commit to the room (the
//!   oldest rows of each room the batch wrote, at most [`TRIM_PER_ROOM`] per room per
//!   commit: bounded work, no extra transaction), and by the writer's periodic sweep for
//!   rooms that receive nothing (at most [`SWEEP_ROOMS`] rooms per sweep, resuming where
//!   the last one stopped), so an idle room's expired rows go too.
//!
//! The store learns the limits from the node's configuration through a [`Policy`] (a
//! room name to its [`Limits`]), set once at start (`Store::set_retention`); until then
//! (and in stores used by tests that never set one) everything is kept.

use std::sync::{Arc, RwLock};

/// Rows one commit deletes per room at most.
pub const TRIM_PER_ROOM: i64 = 256;
/// Rooms one background sweep visits at most.
pub const SWEEP_ROOMS: usize = 100;

/// A room's retention limits; 0 means "no limit" for each.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Keep at most this many of the newest publications.
    pub size: u64,
    /// Keep publications at most this many milliseconds old.
    pub ttl_ms: u64,
}

impl Limits {
    /// Whether everything is kept.
    pub fn keeps_all(&self) -> bool {
        self.size == 0 && self.ttl_ms == 0
    }

    /// The highest offset that is trimmed given the room's `top` (0: none by size).
    pub fn size_floor(&self, top: u64) -> u64 {
        if self.size == 0 {
            0
        } else {
            top.saturating_sub(self.size)
        }
    }

    /// Publications stored before this time (ms since the Unix epoch) are trimmed.
    pub fn ts_floor(&self, now_ms: i64) -> i64 {
        if self.ttl_ms == 0 {
            i64::MIN
        } else {
            now_ms.saturating_sub(i64::try_from(self.ttl_ms).unwrap_or(i64::MAX))
        }
    }
}

/// A room name to its limits (from the namespace options).
pub type Policy = Arc<dyn Fn(&str) -> Limits + Send + Sync>;

/// The policy a store applies, shared by its readers and its writer.
#[derive(Default)]
pub struct Retention {
    /// Set once at start; read on every range and commit (an uncontended read lock).
    policy: RwLock<Option<Policy>>,
}

impl Retention {
    pub fn set(&self, policy: Policy) {
        *self.policy.write().expect("retention lock") = Some(policy);
    }

    /// The limits of `room` (keep everything when no policy is set).
    pub fn limits(&self, room: &str) -> Limits {
        match &*self.policy.read().expect("retention lock") {
            Some(p) => p(room),
            None => Limits::default(),
        }
    }

    /// The policy, when one is set (the sweep has nothing to do otherwise).
    pub fn policy(&self) -> Option<Policy> {
        self.policy.read().expect("retention lock").clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floors() {
        let none = Limits::default();
        assert!(none.keeps_all());
        assert_eq!(none.size_floor(100), 0);
        assert_eq!(none.ts_floor(5_000), i64::MIN);
        let l = Limits {
            size: 10,
            ttl_ms: 1_000,
        };
        assert_eq!(l.size_floor(100), 90);
        assert_eq!(l.size_floor(3), 0);
        assert_eq!(l.ts_floor(5_000), 4_000);
        let huge = Limits {
            size: 0,
            ttl_ms: u64::MAX,
        };
        assert_eq!(huge.ts_floor(0), i64::MIN + 1);
        let r = Retention::default();
        assert_eq!(r.limits("a"), none);
        r.set(Arc::new(|room: &str| Limits {
            size: room.len() as u64,
            ttl_ms: 0,
        }));
        assert_eq!(r.limits("abc").size, 3);
    }
}
