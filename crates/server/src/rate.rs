//! Token buckets: the command rate limit of one connection, and the publish rate limit of
//! every room (`publish_rate_per_room`), so one chatty client cannot make a large room cost
//! the node. Time is passed in, so tests drive it.
//!
//! The rooms' buckets are bounded: only rooms published to in the last `FULL_AFTER` keep
//! one (an older bucket has refilled completely, so dropping it changes nothing), and idle
//! ones are swept whenever the table has doubled since the last sweep.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// A token bucket: `rate` a second on average, bursts up to twice that.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: f32,
    last: Instant,
}

/// A bucket untouched this long is full again (a burst of `2 * rate` refills in 2 s).
const FULL_AFTER: Duration = Duration::from_secs(2);

/// The room table is swept when it has this many buckets at least.
const MIN_SWEEP: usize = 1024;

impl TokenBucket {
    pub fn new(rate: u32, now: Instant) -> TokenBucket {
        TokenBucket {
            tokens: rate as f32 * 2.0,
            last: now,
        }
    }

    /// Takes a token if there is one; `rate` 0 is no limit.
    pub fn allow(&mut self, rate: u32, now: Instant) -> bool {
        if rate == 0 {
            return true;
        }
        let refill = now.saturating_duration_since(self.last).as_secs_f32() * rate as f32;
        self.last = now;
        self.tokens = (self.tokens + refill).min(rate as f32 * 2.0);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn idle(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last) >= FULL_AFTER
    }
}

/// One bucket per room with recent publishes.
pub struct RoomRates {
    inner: Mutex<Rooms>,
}

struct Rooms {
    buckets: HashMap<Arc<str>, TokenBucket>,
    /// Sweep when the table reaches this size.
    sweep_at: usize,
}

impl Default for RoomRates {
    fn default() -> Self {
        RoomRates {
            inner: Mutex::new(Rooms {
                buckets: HashMap::new(),
                sweep_at: MIN_SWEEP,
            }),
        }
    }
}

impl RoomRates {
    /// Whether one more publication to `room` is allowed at `rate` a second (0: always).
    pub fn allow(&self, room: &str, rate: u32, now: Instant) -> bool {
        if rate == 0 {
            return true;
        }
        let mut rooms = self.inner.lock().expect("room rates lock");
        if let Some(bucket) = rooms.buckets.get_mut(room) {
            return bucket.allow(rate, now);
        }
        if rooms.buckets.len() >= rooms.sweep_at {
            rooms.buckets.retain(|_, b| !b.idle(now));
            rooms.sweep_at = (rooms.buckets.len() * 2).max(MIN_SWEEP);
        }
        let mut bucket = TokenBucket::new(rate, now);
        let allowed = bucket.allow(rate, now);
        rooms.buckets.insert(room.into(), bucket);
        allowed
    }

    /// Rooms holding a bucket.
    pub fn len(&self) -> usize {
        self.inner.lock().expect("room rates lock").buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_room_gets_its_burst_then_its_rate_and_idle_rooms_are_evicted() {
        let rates = RoomRates::default();
        let t0 = Instant::now();
        let allowed = (0..30).filter(|_| rates.allow("r", 10, t0)).count();
        assert_eq!(allowed, 20, "a burst of twice the rate");
        assert!(rates.allow("other", 10, t0), "rooms are limited apart");
        assert!(!rates.allow("r", 10, t0 + Duration::from_millis(50)));
        assert!(rates.allow("r", 10, t0 + Duration::from_millis(150)));
        assert!(
            rates.allow("free", 0, t0) && rates.len() == 2,
            "0: no limit, no state"
        );
        // Many rooms published once, then idle: swept as new rooms come.
        let later = t0 + Duration::from_secs(10);
        for i in 0..MIN_SWEEP * 4 {
            rates.allow(&format!("room-{i}"), 10, t0 + Duration::from_secs(3));
        }
        for i in 0..MIN_SWEEP * 5 {
            rates.allow(&format!("late-{i}"), 10, later);
        }
        assert_eq!(rates.len(), MIN_SWEEP * 5, "the idle rooms are gone");
    }
}
