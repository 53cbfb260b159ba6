//! A room event's push, encoded at most once per format: the first recipient of a format
//! encodes it, every later recipient of that format (live, pending or digest) gets the
//! same `Bytes`. A room whose subscribers all speak JSON never encodes protobuf, and the
//! other way round.
//!
//! Delta subscriptions (`delta: "fossil"`) get a publication in one of two more shapes: in
//! full as the delta mode carries it (JSON: the data as a JSON string; protobuf: the same
//! bytes as the plain push), or as a fossil delta against the room's previous publication
//! (`base`). The delta is computed once, by the first delta recipient that needs it, and
//! shared by every delta recipient of either format; each shape is encoded once per format.
//! Which shape a subscriber gets is decided under the room's lock (`Chain::pick`): the
//! delta only when the last publication it got is this one's base.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use roomcast_proto::{fossil, DeltaData, Format, PushBody};

use super::RoomEvent;
use crate::store::Message;

/// How one recipient gets an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Shape {
    /// As every non-delta subscriber does (and every subscriber a join or leave).
    Plain,
    /// A publication in full, in the delta mode's shape.
    DeltaFull,
    /// A publication as a delta against its base (in full if a delta would not be smaller).
    Delta,
}

/// A delta subscription's chain: the offset of the last publication it got (the only
/// base a delta sent to it may have). `None` right after subscribe or recovery: the next
/// publication goes in full.
#[derive(Debug, Default)]
pub(super) struct Chain {
    last: Option<u64>,
}

impl Chain {
    /// The shape of `frame` for this subscription, which gets it now.
    pub(super) fn pick(&mut self, frame: &Frames) -> Shape {
        let RoomEvent::Publication(m) = &frame.0.event else {
            return Shape::Plain;
        };
        let base = frame.0.base.as_ref().map(|b| b.offset);
        let shape = if base.is_some() && self.last == base {
            Shape::Delta
        } else {
            Shape::DeltaFull
        };
        self.last = Some(m.offset);
        shape
    }
}

/// One event's push frames; cheap to clone (held by pending subscribers and the digest).
#[derive(Clone)]
pub(super) struct Frames(Arc<Inner>);

struct Inner {
    event: RoomEvent,
    /// The room's previous publication: the base of this one's delta.
    base: Option<Arc<Message>>,
    json: OnceLock<Bytes>,
    protobuf: OnceLock<Bytes>,
    /// The delta mode's full JSON push (the protobuf one is `protobuf`).
    json_full: OnceLock<Bytes>,
    /// The fossil delta from `base`; `None` when it would not be smaller than the data.
    delta: OnceLock<Option<String>>,
    json_delta: OnceLock<Bytes>,
    protobuf_delta: OnceLock<Bytes>,
}

impl Frames {
    /// The frames of `event`; `base` is the room's previous publication (delta base).
    pub(super) fn new(event: &RoomEvent, base: Option<Arc<Message>>) -> Frames {
        Frames(Arc::new(Inner {
            event: event.clone(),
            base,
            json: OnceLock::new(),
            protobuf: OnceLock::new(),
            json_full: OnceLock::new(),
            delta: OnceLock::new(),
            json_delta: OnceLock::new(),
            protobuf_delta: OnceLock::new(),
        }))
    }

    /// The push in `format` and `shape`, encoded now if no recipient had it yet.
    pub(super) fn get(&self, format: Format, shape: Shape) -> Bytes {
        let i = &*self.0;
        let RoomEvent::Publication(m) = &i.event else {
            return self.plain(format);
        };
        let delta = match shape {
            Shape::Plain => return self.plain(format),
            Shape::Delta => self.delta(),
            Shape::DeltaFull => None,
        };
        match (format, delta) {
            (Format::Protobuf, None) => self.plain(format),
            (Format::Json, None) => i
                .json_full
                .get_or_init(|| format.delta_push(&m.room, &m.publication(), DeltaData::Full))
                .clone(),
            (_, Some(d)) => {
                let slot = match format {
                    Format::Json => &i.json_delta,
                    Format::Protobuf => &i.protobuf_delta,
                };
                slot.get_or_init(|| {
                    format.delta_push(&m.room, &m.publication(), DeltaData::Delta(d))
                })
                .clone()
            }
        }
    }

    fn plain(&self, format: Format) -> Bytes {
        let slot = match format {
            Format::Json => &self.0.json,
            Format::Protobuf => &self.0.protobuf,
        };
        slot.get_or_init(|| encode(&self.0.event, format)).clone()
    }

    /// The delta from the base, computed by the first recipient that needs it.
    fn delta(&self) -> Option<&str> {
        let i = &*self.0;
        i.delta
            .get_or_init(|| {
                let (RoomEvent::Publication(m), Some(base)) = (&i.event, &i.base) else {
                    return None;
                };
                let target = m.data.get();
                fossil::encode_str(base.data.get().as_bytes(), target)
                    .filter(|d| d.len() < target.len())
            })
            .as_deref()
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
pub(super) mod tests {
    use super::super::tests::publication;
    use super::super::{Hub, Out, Outbox, SubMode};
    use super::*;

    pub(crate) fn frames(outbox: &Outbox) -> Vec<Bytes> {
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
        let f = Frames::new(&publication("r", 3), None);
        let a = f.get(Format::Json, Shape::Plain);
        let b = f.clone().get(Format::Json, Shape::Plain);
        assert_eq!(
            a.as_ptr(),
            b.as_ptr(),
            "the same bytes, not a second encoding"
        );
        let p = f.get(Format::Protobuf, Shape::Plain);
        assert_eq!(p.as_ptr(), f.get(Format::Protobuf, Shape::Plain).as_ptr());
        assert_ne!(a, p);
        assert_eq!(p[0] as usize, p.len() - 1, "length-delimited");
    }

    /// A publication of "r" whose data is a long JSON document differing by `offset`.
    pub(crate) fn document(offset: u64) -> RoomEvent {
        let data = format!(
            r#"{{"title":"quarterly report, draft","body":"{}","rev":{offset},"tags":["a","b"]}}"#,
            "lorem ipsum dolor sit amet ".repeat(8)
        );
        RoomEvent::Publication(Arc::new(Message {
            room: "r".into(),
            offset,
            uid: String::new(),
            user: String::new(),
            client: String::new(),
            data: serde_json::value::RawValue::from_string(data).unwrap(),
            info: None,
            ts_ms: 0,
            tombstone: None,
        }))
    }

    /// Decodes what a delta subscription got, as the SDKs do: (data, was it a delta).
    pub(crate) fn decode(frames: &[Bytes], format: Format) -> Vec<(String, bool)> {
        let mut prev: Vec<u8> = Vec::new();
        frames
            .iter()
            .map(|b| {
                let (data, delta) = match format {
                    Format::Json => {
                        let v: serde_json::Value = serde_json::from_slice(b).unwrap();
                        let p = &v["push"]["pub"];
                        let data = p["data"].as_str().expect("a string in delta mode");
                        (data.as_bytes().to_vec(), p["delta"] == true)
                    }
                    Format::Protobuf => {
                        use prost::Message as _;
                        let r =
                            roomcast_proto::protobuf::wire::Reply::decode_length_delimited(&b[..])
                                .unwrap();
                        let p = r.push.unwrap().r#pub.unwrap();
                        (p.data, p.delta)
                    }
                };
                let full = if delta {
                    fossil::apply(&prev, &data, 1 << 20).expect("a valid delta")
                } else {
                    data
                };
                prev = full.clone();
                (String::from_utf8(full).unwrap(), delta)
            })
            .collect()
    }

    #[test]
    fn delta_subscribers_get_full_then_deltas_computed_once() {
        let hub = Hub::new();
        let delta = SubMode {
            delta: true,
            ..SubMode::default()
        };
        let json: Vec<_> = (0..2).map(|_| Arc::new(Outbox::new(1 << 20))).collect();
        let pb: Vec<_> = (0..2)
            .map(|_| Arc::new(Outbox::new(1 << 20).with_format(Format::Protobuf)))
            .collect();
        let plain = Arc::new(Outbox::new(1 << 20));
        for (i, ob) in json.iter().chain(&pb).enumerate() {
            hub.subscribe("r", i as u64, ob.clone(), delta);
            hub.activate("r", i as u64, Some(1));
        }
        hub.subscribe("r", 9, plain.clone(), SubMode::default());
        hub.activate("r", 9, Some(1));
        for o in 1..=4 {
            hub.dispatch(&document(o));
        }
        let want: Vec<String> = (1..=4)
            .map(|o| match document(o) {
                RoomEvent::Publication(m) => m.data.get().to_owned(),
                _ => unreachable!(),
            })
            .collect();
        let shapes = |got: &[(String, bool)]| got.iter().map(|g| g.1).collect::<Vec<_>>();
        let mut json_frames = Vec::new();
        for ob in &json {
            let f = frames(ob);
            let got = decode(&f, Format::Json);
            assert_eq!(
                got.iter().map(|g| &g.0).collect::<Vec<_>>(),
                want.iter().collect::<Vec<_>>()
            );
            assert_eq!(
                shapes(&got),
                [false, true, true, true],
                "full first, then deltas"
            );
            assert!(f[1].len() * 2 < f[0].len(), "a delta is much smaller");
            json_frames.push(f);
        }
        assert_eq!(
            json_frames[0][2].as_ptr(),
            json_frames[1][2].as_ptr(),
            "one delta encoding"
        );
        for ob in &pb {
            let got = decode(&frames(ob), Format::Protobuf);
            assert_eq!(
                got.iter().map(|g| &g.0).collect::<Vec<_>>(),
                want.iter().collect::<Vec<_>>()
            );
            assert_eq!(shapes(&got), [false, true, true, true]);
        }
        // A plain subscriber of the same room still gets the data as JSON, never a delta.
        let f = frames(&plain);
        let v: serde_json::Value = serde_json::from_slice(&f[3]).unwrap();
        assert_eq!(v["push"]["pub"]["data"]["rev"], 4);
    }

    #[test]
    fn a_delta_only_follows_what_the_subscriber_got() {
        let hub = Hub::new();
        let ob = Arc::new(Outbox::new(1 << 20));
        let delta = SubMode {
            delta: true,
            ..SubMode::default()
        };
        hub.dispatch(&document(1)); // no subscriber yet: nothing
        hub.subscribe("r", 1, ob.clone(), delta);
        hub.dispatch(&document(2)); // held while pending
        hub.activate("r", 1, Some(2));
        hub.dispatch(&document(3));
        let got = decode(&frames(&ob), Format::Json);
        assert_eq!(got.iter().map(|g| g.1).collect::<Vec<_>>(), [false, true]);
        // Resubscribed: its chain starts again with a full publication.
        hub.unsubscribe("r", 1);
        hub.subscribe("r", 1, ob.clone(), delta);
        hub.activate("r", 1, Some(4));
        hub.dispatch(&document(4));
        hub.dispatch(&document(5));
        let got = decode(&frames(&ob), Format::Json);
        assert_eq!(got.iter().map(|g| g.1).collect::<Vec<_>>(), [false, true]);
        assert!(got[1].0.contains(r#""rev":5"#));
    }
}
