//! Digest delivery (fan-out-on-read): a room's digest subscribers get, at most once per
//! interval, the room's newest publication (with its real offset), not every one. A
//! publication costs the digest side O(1) (it replaces the room's newest frame); one timer
//! per room with digest subscribers then writes that frame to each of them, once per
//! interval and only when there is something new. A digest subscription is not positioned
//! in the hub: its client learns the newest offset and pages `history` for the rest.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::{ConnId, Frames, Hub, Sub};

/// The digest side of a room.
#[derive(Default)]
pub(super) struct Digest {
    pub(super) subs: HashMap<ConnId, Sub>,
    /// The newest publication of the room (offset, encoded push).
    pub(super) latest: Option<(u64, Frames)>,
    /// `latest` has not reached every digest subscriber yet.
    pub(super) undelivered: bool,
    /// The id of the room's running timer.
    pub(super) timer: Option<u64>,
}

impl Digest {
    /// Notes the room's newest publication for the digest subscribers, if it has any (the
    /// room's timer sends it).
    pub(super) fn note(&mut self, offset: u64, frame: &Frames) {
        if !self.subs.is_empty() {
            self.latest = Some((offset, frame.clone()));
            self.undelivered = true;
        }
    }
}

impl Hub {
    /// One digest tick of a room: the newest publication to every active digest subscriber
    /// that has not had it. Returns false when timer `id` must stop (no digest subscriber
    /// left, or the room is gone and another timer owns its successor).
    pub fn flush_digest(&self, room: &str, id: u64) -> bool {
        let mut shard = self.shard(room).lock().expect("hub shard lock");
        let Some(r) = shard.get_mut(room) else {
            return false;
        };
        let d = &mut r.digest;
        if d.timer != Some(id) {
            return false;
        }
        if d.subs.is_empty() {
            d.timer = None;
            d.latest = None;
            return false;
        }
        if !d.undelivered {
            return true;
        }
        let Some((offset, frame)) = d.latest.clone() else {
            return true;
        };
        let mut waiting = false;
        for sub in d.subs.values_mut() {
            if sub.pending.is_some() {
                waiting = true; // its reply is not out yet: the next tick
                continue;
            }
            if sub.next.is_some_and(|next| offset < next) {
                continue; // its subscribe reply already said this offset
            }
            sub.next = Some(offset + 1);
            self.put(sub, frame.clone());
        }
        d.undelivered = waiting;
        true
    }

    /// The digest timer of a room: ticks every `every` until no digest subscriber is left
    /// or `stop` is cancelled.
    pub async fn run_digest(
        self: Arc<Self>,
        room: Arc<str>,
        id: u64,
        every: Duration,
        stop: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            if !self.flush_digest(&room, id) {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{offsets, publication};
    use super::super::{Outbox, SubMode};
    use super::*;

    #[test]
    fn digest_subscribers_get_the_newest_once_per_tick_and_live_ones_everything() {
        let hub = Hub::new();
        let live = Arc::new(Outbox::new(1 << 20));
        let dig = Arc::new(Outbox::new(1 << 20));
        let digest = SubMode {
            digest: Some(Duration::from_secs(1)),
            ..SubMode::default()
        };
        assert_eq!(
            hub.subscribe("r", 1, live.clone(), SubMode::default())
                .start_digest,
            None
        );
        let id = hub
            .subscribe("r", 2, dig.clone(), digest)
            .start_digest
            .expect("the first digest subscriber starts the room's timer");
        let again = hub.subscribe("r", 3, Arc::new(Outbox::new(1 << 20)), digest);
        assert_eq!(
            (again.start_digest, again.size),
            (None, 3),
            "one timer per room"
        );
        hub.activate("r", 1, Some(1));
        hub.activate("r", 2, Some(1));
        for o in 1..=5 {
            hub.dispatch(&publication("r", o));
        }
        assert_eq!(offsets(&live).0, vec![1, 2, 3, 4, 5]);
        assert!(offsets(&dig).0.is_empty(), "nothing before the tick");
        assert!(hub.flush_digest("r", id));
        assert_eq!(offsets(&dig).0, vec![5], "the newest, with its offset");
        assert!(hub.flush_digest("r", id));
        assert!(offsets(&dig).0.is_empty(), "nothing new: nothing sent");
        hub.dispatch(&publication("r", 6));
        assert!(hub.flush_digest("r", id));
        assert_eq!(offsets(&dig).0, vec![6]);
        hub.unsubscribe("r", 2);
        hub.unsubscribe("r", 3);
        assert!(
            !hub.flush_digest("r", id),
            "no digest subscriber: the timer stops"
        );
        assert!(hub
            .subscribe("r", 4, dig.clone(), digest)
            .start_digest
            .is_some_and(|new| new != id));
        assert!(!hub.flush_digest("r", id), "a stopped timer stays stopped");
    }
}
