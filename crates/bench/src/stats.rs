//! Counters and histograms shared by the member tasks of one group, and their serialisable form that
//! worker processes send to the parent, which merges them.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

/// A histogram of microseconds (or milliseconds), 3 significant digits, up to one hour.
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")
}

/// Histogram as (value, count) pairs: small, serde-friendly, and lossless at 3 digits.
pub(crate) type Buckets = Vec<(u64, u64)>;

pub(crate) fn to_buckets(h: &Histogram<u64>) -> Buckets {
    h.iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect()
}

pub(crate) fn merge_into(h: &mut Histogram<u64>, b: &Buckets) {
    for (v, n) in b {
        h.saturating_record_n(*v, *n);
    }
}

/// Live counters of a group; atomics because every member task bumps them concurrently.
#[derive(Default)]
pub(crate) struct Live {
    pub joined: AtomicU64,
    /// Wall-clock ns of the latest first join: the connect rate is measured up to it.
    pub last_join_ns: AtomicU64,
    pub join_failed: AtomicU64,
    /// Unique deliveries (duplicates excluded).
    pub delivered: AtomicU64,
    /// Wall-clock ns of the latest delivery: deliveries/s is measured up to it, not to an arbitrary stop.
    pub last_delivery_ns: AtomicU64,
    pub recovered: AtomicU64,
    pub recover_failed: AtomicU64,
    pub reconnects: AtomicU64,
    /// Connections lost for good (a protocol without recovery, or reconnects that kept failing).
    pub lost: AtomicU64,
    /// Deliveries of another room's publication: a routing bug.
    pub misrouted: AtomicU64,
    /// Storm: members that dropped their connection and are waiting for the reconnect order.
    pub offline: AtomicU64,
    /// Storm: members back after the reconnect order.
    pub rejoined: AtomicU64,
    /// Storm: rejoins whose recovery was not exactly the missed publications in order.
    pub recover_wrong: AtomicU64,
    /// Chat targets: read cursors moved (`roomcast.read` answered) and refused.
    pub reads: AtomicU64,
    pub read_failed: AtomicU64,
    /// Join and leave pushes received (roomcast: only subscriptions that asked get them).
    pub join_leave_pushes: AtomicU64,
}

impl Live {
    pub(crate) fn snapshot(&self) -> Snapshot {
        Snapshot {
            joined: self.joined.load(Relaxed),
            last_join_ns: self.last_join_ns.load(Relaxed),
            join_failed: self.join_failed.load(Relaxed),
            delivered: self.delivered.load(Relaxed),
            last_delivery_ns: self.last_delivery_ns.load(Relaxed),
            recovered: self.recovered.load(Relaxed),
            recover_failed: self.recover_failed.load(Relaxed),
            reconnects: self.reconnects.load(Relaxed),
            lost: self.lost.load(Relaxed),
            misrouted: self.misrouted.load(Relaxed),
            offline: self.offline.load(Relaxed),
            rejoined: self.rejoined.load(Relaxed),
            recover_wrong: self.recover_wrong.load(Relaxed),
            reads: self.reads.load(Relaxed),
            read_failed: self.read_failed.load(Relaxed),
            join_leave_pushes: self.join_leave_pushes.load(Relaxed),
        }
    }
}

/// Point-in-time copy of `Live`, summed over groups by the parent.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Snapshot {
    pub joined: u64,
    pub last_join_ns: u64,
    pub join_failed: u64,
    pub delivered: u64,
    pub last_delivery_ns: u64,
    pub recovered: u64,
    pub recover_failed: u64,
    pub reconnects: u64,
    pub lost: u64,
    pub misrouted: u64,
    pub offline: u64,
    pub rejoined: u64,
    pub recover_wrong: u64,
    #[serde(default)]
    pub reads: u64,
    #[serde(default)]
    pub read_failed: u64,
    #[serde(default)]
    pub join_leave_pushes: u64,
}

impl Snapshot {
    pub(crate) fn add(&mut self, o: &Snapshot) {
        self.joined += o.joined;
        self.last_join_ns = self.last_join_ns.max(o.last_join_ns);
        self.join_failed += o.join_failed;
        self.delivered += o.delivered;
        self.last_delivery_ns = self.last_delivery_ns.max(o.last_delivery_ns);
        self.recovered += o.recovered;
        self.recover_failed += o.recover_failed;
        self.reconnects += o.reconnects;
        self.lost += o.lost;
        self.misrouted += o.misrouted;
        self.offline += o.offline;
        self.rejoined += o.rejoined;
        self.recover_wrong += o.recover_wrong;
        self.reads += o.reads;
        self.read_failed += o.read_failed;
        self.join_leave_pushes += o.join_leave_pushes;
    }
}

/// Publications whose last delivery a group tracks; past this many (a long unpaced run) the
/// later ones are not tracked, so the table stays bounded (2 MiB).
const MAX_TRACKED: usize = 1 << 18;

/// Live-delivery timing of a group: every delivery's publish-to-receipt time, and per
/// publication `(room, seq)` the latest of them (publish to the last delivery, issue #8).
pub(crate) struct Latency {
    pub hist: Histogram<u64>,
    /// `last_us[room][seq]`: the latest receipt of that publication, µs after its publish (0:
    /// none yet). Sequences are dense from 1, so a vector per room, not a hash per delivery.
    last_us: Vec<Vec<u64>>,
    /// Slots allocated over all rooms, bounded by `MAX_TRACKED`.
    slots: usize,
}

impl Default for Latency {
    fn default() -> Self {
        Latency {
            hist: histogram(),
            last_us: Vec::new(),
            slots: 0,
        }
    }
}

impl Latency {
    pub(crate) fn record(&mut self, room: u32, seq: u64, us: u64) {
        let us = us.max(1);
        self.hist.saturating_record(us);
        let (r, i) = (room as usize, seq as usize);
        if r >= self.last_us.len() {
            if r >= MAX_TRACKED {
                return;
            }
            self.last_us.resize_with(r + 1, Vec::new);
        }
        let row = &mut self.last_us[r];
        if i >= row.len() {
            let grow = i + 1 - row.len();
            if self.slots + grow > MAX_TRACKED {
                return;
            }
            self.slots += grow;
            row.resize(i + 1, 0);
        }
        row[i] = row[i].max(us);
    }

    /// The per-publication maxima as a serialisable list.
    pub(crate) fn last_list(&self) -> Vec<(u32, u64, u64)> {
        let mut out = Vec::new();
        for (r, row) in self.last_us.iter().enumerate() {
            for (s, &v) in row.iter().enumerate().filter(|(_, v)| **v > 0) {
                out.push((r as u32, s as u64, v));
            }
        }
        out
    }
}

/// Merges per-publication maxima (`Latency::last_list`) of several groups: the max per publication.
pub(crate) fn merge_last(into: &mut Vec<(u32, u64, u64)>, from: &[(u32, u64, u64)]) {
    let mut m: HashMap<(u32, u64), u64> = into.iter().map(|&(r, s, v)| ((r, s), v)).collect();
    for &(r, s, v) in from {
        let e = m.entry((r, s)).or_insert(v);
        *e = (*e).max(v);
    }
    *into = m.into_iter().map(|((r, s), v)| (r, s, v)).collect();
}

/// Histograms of a group; behind mutexes because member tasks record concurrently (uncontended
/// locks cost tens of ns, far below a delivery's cost).
pub(crate) struct Hists {
    /// Publish-to-receipt latency of live deliveries, µs, and each publication's latest.
    pub latency: Mutex<Latency>,
    /// Time to connect and join, µs.
    pub join: Mutex<Histogram<u64>>,
    /// Storm: time from the reconnect order to this member's recovered re-subscription, ms.
    pub recover: Mutex<Histogram<u64>>,
}

impl Default for Hists {
    fn default() -> Self {
        Hists {
            latency: Mutex::new(Latency::default()),
            join: Mutex::new(histogram()),
            recover: Mutex::new(histogram()),
        }
    }
}

/// Final report of one group (a process's share of the members).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct GroupResult {
    pub snap: Snapshot,
    pub missing: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub latency_us: Buckets,
    pub join_us: Buckets,
    pub recover_ms: Buckets,
    /// Per live publication (room, seq): µs from publish to its latest delivery in this group.
    #[serde(default)]
    pub last_us: Vec<(u32, u64, u64)>,
    /// Digest members (issue #8) and what they got: deliveries, deliveries sooner than the
    /// interval after the previous one, not newer than it, and members whose last delivery was
    /// not the newest publication.
    #[serde(default)]
    pub digest: DigestCounts,
}

/// The smaller of two optional values, None only when both are.
pub(crate) fn min_some(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct DigestCounts {
    pub members: u64,
    pub deliveries: u64,
    pub too_soon: u64,
    pub not_newer: u64,
    pub stale: u64,
    /// The shortest gap between two digest deliveries of one member, ms.
    pub min_gap_ms: Option<u64>,
}

impl DigestCounts {
    fn add(&mut self, o: &DigestCounts) {
        self.members += o.members;
        self.deliveries += o.deliveries;
        self.too_soon += o.too_soon;
        self.not_newer += o.not_newer;
        self.stale += o.stale;
        self.min_gap_ms = min_some(self.min_gap_ms, o.min_gap_ms);
    }
}

impl GroupResult {
    /// Histogram of publish-to-last-delivery times, one value per publication, µs.
    pub(crate) fn last_delivery_us(&self) -> Buckets {
        let mut h = histogram();
        for &(_, _, v) in &self.last_us {
            h.saturating_record(v.max(1));
        }
        to_buckets(&h)
    }

    pub(crate) fn add(&mut self, o: &GroupResult) {
        self.snap.add(&o.snap);
        self.missing += o.missing;
        self.duplicates += o.duplicates;
        self.out_of_order += o.out_of_order;
        self.digest.add(&o.digest);
        merge_last(&mut self.last_us, &o.last_us);
        for (mine, theirs) in [
            (&mut self.latency_us, &o.latency_us),
            (&mut self.join_us, &o.join_us),
            (&mut self.recover_ms, &o.recover_ms),
        ] {
            let mut h = histogram();
            merge_into(&mut h, mine);
            merge_into(&mut h, theirs);
            *mine = to_buckets(&h);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_publication_keeps_its_latest_delivery_across_groups() {
        let mut a = Latency::default();
        a.record(0, 1, 50);
        a.record(0, 1, 70);
        a.record(1, 2, 10);
        let mut b = Latency::default();
        b.record(0, 1, 60);
        b.record(0, 3, 5);
        let mut g = GroupResult {
            last_us: a.last_list(),
            ..GroupResult::default()
        };
        g.add(&GroupResult {
            last_us: b.last_list(),
            ..GroupResult::default()
        });
        g.last_us.sort_unstable();
        assert_eq!(g.last_us, vec![(0, 1, 70), (0, 3, 5), (1, 2, 10)]);
        assert_eq!(a.hist.len(), 3, "every delivery is timed");
        let mut full = Latency::default();
        full.record(0, MAX_TRACKED as u64 + 5, 1);
        assert!(
            full.last_list().is_empty(),
            "bounded: not tracked past the cap"
        );
        assert_eq!(full.hist.len(), 1);
    }
}
