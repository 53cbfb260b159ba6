//! What a digest member (subscribed with `data: {"digest": true}`, issue #8) checks of the stream it
//! gets: not every publication, but at most one per digest interval, each newer than the one
//! before, and after publishing stops, the newest. Live members keep the usual `Tracker`; a digest
//! member keeps this instead, so publications it was never meant to get are not called missing.
//!
//! Sans-I/O: the receipt instant is passed in, so the rules are unit-tested without a server.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How the members of a run subscribe (the same for every member but the digest split).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub(crate) struct SubOpts {
    /// Ask for join/leave pushes (`join_leave: true` in subscribe, the SDKs' `joinLeave`).
    pub join_leave: bool,
    /// Some(n): members idx < n subscribe live, the others with `data: {"digest": true}`.
    pub digest_live: Option<u32>,
    /// The server's `digest_interval_ms`: digest deliveries closer than this (minus the
    /// tolerance) are a problem.
    pub digest_interval_ms: u64,
    /// Slack for receipt jitter between two digest deliveries: the bench sees receipts, not the
    /// server's ticks, and with thousands of digest members a tick's frames reach them over a
    /// spread of scheduling delays.
    pub digest_tolerance_ms: u64,
}

impl SubOpts {
    /// Whether member `idx` subscribes for a digest.
    pub(crate) fn is_digest(&self, idx: u32) -> bool {
        self.digest_live.is_some_and(|live| idx >= live)
    }

    /// Live members of room `room` when `members` are spread over `rooms` by `idx % rooms`.
    pub(crate) fn live_in_room(&self, members: u32, rooms: u32, room: u32) -> u64 {
        let live = self.digest_live.map_or(members, |l| l.min(members));
        let rooms = rooms.max(1);
        u64::from(live / rooms + u32::from(room < live % rooms))
    }

    /// The shortest gap allowed between two digest deliveries.
    pub(crate) fn min_gap(&self) -> Duration {
        Duration::from_millis(
            self.digest_interval_ms
                .saturating_sub(self.digest_tolerance_ms),
        )
    }
}

/// One digest member's record.
#[derive(Debug, Default)]
pub(crate) struct DigestTrack {
    pub deliveries: u64,
    /// Deliveries that came sooner than the interval (minus tolerance) after the previous one.
    pub too_soon: u64,
    /// Deliveries whose sequence was not above the previous one's.
    pub not_newer: u64,
    /// The shortest gap between two consecutive deliveries, ns.
    pub min_gap_ns: Option<u64>,
    /// Sequence and wall-clock ns of the latest delivery.
    last: Option<(u64, u64)>,
}

impl DigestTrack {
    /// Records a delivery of sequence `seq` received at `now_ns`.
    pub(crate) fn record(&mut self, seq: u64, now_ns: u64, min_gap: Duration) {
        self.deliveries += 1;
        if let Some((prev_seq, prev_ns)) = self.last {
            let gap = now_ns.saturating_sub(prev_ns);
            self.min_gap_ns = Some(self.min_gap_ns.map_or(gap, |g| g.min(gap)));
            if gap < min_gap.as_nanos() as u64 {
                self.too_soon += 1;
            }
            if seq <= prev_seq {
                self.not_newer += 1;
            }
        }
        self.last = Some((seq, now_ns));
    }

    /// Sequence of the latest delivery (0: none).
    pub(crate) fn last_seq(&self) -> u64 {
        self.last.map_or(0, |l| l.0)
    }

    /// Whether the latest delivery is the newest publication: at least the newest accepted one
    /// (`newest_acked`), at most the last one sent (an unacknowledged one may have been stored).
    pub(crate) fn has_newest(&self, newest_acked: u64, sent: u64) -> bool {
        let s = self.last_seq();
        s >= newest_acked && s <= sent && s > 0
    }
}

/// The newest publication of `1..=sent` that was accepted (not in `excluded`); 0 if none.
pub(crate) fn newest_acked(sent: u64, excluded: &[u64]) -> u64 {
    (1..=sent)
        .rev()
        .find(|s| !excluded.contains(s))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn gaps_below_the_interval_and_older_sequences_are_counted() {
        let gap = Duration::from_millis(900);
        let mut d = DigestTrack::default();
        d.record(10, 1000 * MS, gap);
        d.record(20, 2000 * MS, gap);
        d.record(25, 2500 * MS, gap); // too soon
        d.record(25, 3600 * MS, gap); // not newer
        assert_eq!((d.deliveries, d.too_soon, d.not_newer), (4, 1, 1));
        assert_eq!(d.min_gap_ns, Some(500 * MS));
        assert!(d.has_newest(25, 25));
        assert!(!d.has_newest(26, 26), "a newer accepted one was published");
        assert!(!DigestTrack::default().has_newest(0, 0));
    }

    #[test]
    fn members_split_into_live_and_digest() {
        let o = SubOpts {
            digest_live: Some(3),
            digest_interval_ms: 1000,
            digest_tolerance_ms: 100,
            ..SubOpts::default()
        };
        assert!(!o.is_digest(2) && o.is_digest(3));
        assert!(!SubOpts::default().is_digest(1_000_000));
        // Members 0..3 live over 2 rooms: 0 and 2 in room 0, 1 in room 1.
        assert_eq!((o.live_in_room(10, 2, 0), o.live_in_room(10, 2, 1)), (2, 1));
        assert_eq!(SubOpts::default().live_in_room(10, 3, 0), 4);
        assert_eq!(o.min_gap(), Duration::from_millis(900));
        assert_eq!(newest_acked(5, &[5, 4]), 3);
        assert_eq!(newest_acked(0, &[]), 0);
    }
}
