//! Correctness bookkeeping for one member's view of one room's publication stream.
//!
//! Every publication carries the publisher's sequence number `s` (1, 2, 3, ...). A member records each
//! sequence number in a growable bitset, so at the end we can say exactly which publications were
//! missing, which arrived twice, and which arrived after a later one (out of order). The bench fails
//! the run if any of these is non-zero.

/// Per-member, per-stream record of received sequence numbers.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    /// Bit `s` set when sequence `s` was received at least once.
    bits: Vec<u64>,
    /// Highest sequence seen so far; a lower, unseen one arriving later is out of order.
    max_seen: u64,
    pub received: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    /// Whether the member ever joined; a member that never did is a join failure, not N misses.
    pub joined: bool,
}

/// What a single delivery turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Seen {
    InOrder,
    Duplicate,
    OutOfOrder,
}

impl Tracker {
    /// Records sequence `seq` (>= 1) and classifies it.
    pub(crate) fn record(&mut self, seq: u64) -> Seen {
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if word >= self.bits.len() {
            self.bits.resize(word + 1, 0);
        }
        self.received += 1;
        if self.bits[word] & (1 << bit) != 0 {
            self.duplicates += 1;
            return Seen::Duplicate;
        }
        self.bits[word] |= 1 << bit;
        if seq < self.max_seen {
            self.out_of_order += 1;
            return Seen::OutOfOrder;
        }
        self.max_seen = seq;
        Seen::InOrder
    }

    /// Highest sequence received so far (0: none).
    pub(crate) fn max_seen(&self) -> u64 {
        self.max_seen
    }

    /// Number of sequences in `1..=sent` that were never received, ignoring those in `excluded`
    /// (publishes the server refused or whose fate is unknown: they are reported separately).
    pub(crate) fn missing(&self, sent: u64, excluded: &[u64]) -> u64 {
        let has = |s: u64| {
            let w = (s / 64) as usize;
            w < self.bits.len() && self.bits[w] & (1 << (s % 64)) != 0
        };
        (1..=sent)
            .filter(|s| !has(*s) && !excluded.contains(s))
            .count() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_deliveries() {
        let mut t = Tracker::default();
        assert_eq!(t.record(1), Seen::InOrder);
        assert_eq!(t.record(3), Seen::InOrder);
        assert_eq!(t.record(2), Seen::OutOfOrder);
        assert_eq!(t.record(3), Seen::Duplicate);
        assert_eq!(t.record(200), Seen::InOrder);
        assert_eq!((t.received, t.duplicates, t.out_of_order), (5, 1, 1));
        assert_eq!(t.missing(200, &[]), 196);
        assert_eq!(t.missing(5, &[4]), 1);
    }
}
