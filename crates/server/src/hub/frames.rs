//! A room event's push, encoded at most once per format: the first recipient of a format
//! encodes it, every later recipient of that format (live, pending or digest) gets the
//! same `Bytes`. A room whose subscribers all speak JSON never encodes protobuf, and the
//! other way round.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use roomcast_proto::{Format, PushBody};

use super::RoomEvent;

/// One event's push frames; cheap to clone (held by pending subscribers and the digest).
#[derive(Clone)]
pub(super) struct Frames(Arc<Inner>);

struct Inner {
    event: RoomEvent,
    json: OnceLock<Bytes>,
    protobuf: OnceLock<Bytes>,
}

impl Frames {
    pub(super) fn new(event: &RoomEvent) -> Frames {
        Frames(Arc::new(Inner {
            event: event.clone(),
            json: OnceLock::new(),
            protobuf: OnceLock::new(),
        }))
    }

    /// The push in `format`, encoded now if no recipient of that format had it yet.
    pub(super) fn get(&self, format: Format) -> Bytes {
        let slot = match format {
            Format::Json => &self.0.json,
            Format::Protobuf => &self.0.protobuf,
        };
        slot.get_or_init(|| encode(&self.0.event, format)).clone()
    }
}

fn encode(event: &RoomEvent, format: Format) -> Bytes {
    let room = event.room();
    match event {
        RoomEvent::Publication(m) => format.push(room, PushBody::Pub(&m.publication())),
        RoomEvent::Join { info, .. } => format.push(room, PushBody::Join { info }),
        RoomEvent::Leave { info, .. } => format.push(room, PushBody::Leave { info }),
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::publication;
    use super::*;

    #[test]
    fn each_format_is_encoded_once_and_shared() {
        let f = Frames::new(&publication("r", 3));
        let a = f.get(Format::Json);
        let b = f.clone().get(Format::Json);
        assert_eq!(
            a.as_ptr(),
            b.as_ptr(),
            "the same bytes, not a second encoding"
        );
        let p = f.get(Format::Protobuf);
        assert_eq!(p.as_ptr(), f.get(Format::Protobuf).as_ptr());
        assert_ne!(a, p);
        assert_eq!(p[0] as usize, p.len() - 1, "length-delimited");
    }
}
