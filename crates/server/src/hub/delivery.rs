//! What one subscriber gets of a room event: held while its subscribe is pending, admitted
//! by offset once it is live (a gap closes it), and in which shape (plain, or for a delta
//! subscription in full or as a delta, see `frames.rs`). Every decision here is made under
//! the room's shard lock, so a subscriber's chain of deltas follows its outbox's order.

use std::sync::atomic::Ordering;

use roomcast_proto::Disconnect;

use super::frames::{Frames, Shape};
use super::{Hub, Sub, MAX_PENDING};

/// Holds an event for a pending subscriber (true), or leaves it to be delivered (false).
pub(super) fn hold(sub: &mut Sub, offset: u64, frame: &Frames) -> bool {
    let Some(held) = &mut sub.pending else {
        return false;
    };
    if held.len() >= MAX_PENDING {
        sub.outbox.close(Disconnect::INSUFFICIENT_STATE);
    } else {
        held.push((offset, frame.clone()));
    }
    true
}

/// The shape in which `sub` gets `frame` now (moving a delta subscription's chain on).
pub(super) fn shape(sub: &mut Sub, frame: &Frames) -> Shape {
    match &mut sub.delta {
        Some(chain) => chain.pick(frame),
        None => Shape::Plain,
    }
}

impl Hub {
    /// Puts a publication into a live subscriber's outbox if it is the next one it needs.
    pub(super) fn deliver(&self, sub: &mut Sub, offset: u64, frame: Frames) {
        if self.admit(sub, offset) {
            self.put(sub, frame);
        }
    }

    /// Whether a live subscriber takes the publication at `offset` (it is the next one it
    /// needs, or it is not positioned), moving it past it; a gap closes the subscriber.
    pub(super) fn admit(&self, sub: &mut Sub, offset: u64) -> bool {
        match sub.next {
            None => true,
            Some(next) if offset < next => false, // already delivered (by recovery): not twice
            Some(next) if offset == next => {
                sub.next = Some(next + 1);
                true
            }
            Some(next) => {
                tracing::warn!(
                    offset,
                    expected = next,
                    "gap in a subscription's offsets; client will recover"
                );
                self.gaps.fetch_add(1, Ordering::Relaxed);
                sub.outbox.close(Disconnect::INSUFFICIENT_STATE);
                false
            }
        }
    }

    /// Writes an event to a subscriber, in its format and shape.
    pub(super) fn put(&self, sub: &mut Sub, frame: Frames) {
        let shape = shape(sub, &frame);
        if sub.outbox.push(frame.get(sub.outbox.format(), shape)) {
            self.deliveries.fetch_add(1, Ordering::Relaxed);
        }
    }
}
