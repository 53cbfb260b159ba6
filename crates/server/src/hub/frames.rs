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
    use super::super::{Hub, Out, Outbox, SubMode};
    use super::*;

    fn frames(outbox: &Outbox) -> Vec<Bytes> {
        let mut out = Vec::new();
        outbox.take(&mut out);
        out.into_iter()
            .filter_map(|o| match o {
                Out::Frame(b) => Some(b),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_mixed_room_gets_one_encoding_per_format() {
        let hub = Hub::new();
        let json: Vec<_> = (0..3).map(|_| Arc::new(Outbox::new(1 << 20))).collect();
        let pb: Vec<_> = (0..3)
            .map(|_| Arc::new(Outbox::new(1 << 20).with_format(Format::Protobuf)))
            .collect();
        for (i, ob) in json.iter().chain(&pb).enumerate() {
            hub.subscribe("r", i as u64, ob.clone(), SubMode::default());
            hub.activate("r", i as u64, Some(1));
        }
        hub.dispatch(&publication("r", 1));
        let got: Vec<Bytes> = json.iter().chain(&pb).flat_map(|o| frames(o)).collect();
        assert_eq!(got.len(), 6);
        let (j, p) = got.split_at(3);
        assert!(
            j.iter().all(|b| b.as_ptr() == j[0].as_ptr()),
            "one JSON encoding"
        );
        assert!(
            p.iter().all(|b| b.as_ptr() == p[0].as_ptr()),
            "one protobuf encoding"
        );
        assert_eq!(
            &j[0][..],
            br#"{"push":{"channel":"r","pub":{"data":1,"offset":1}}}"#
        );
        assert_eq!(p[0][0] as usize, p[0].len() - 1, "a length-delimited reply");
    }

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
