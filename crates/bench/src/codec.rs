//! Encoding publishes and decoding incoming messages for every protocol the bench speaks: the hot path
//! of the member and publisher loops. Decoding borrows from the frame and reads only the fields the
//! bench needs (sequence, room, send time, offset), so a client costs little CPU per delivery.

use crate::target::Kind;
use crate::wire::{channel, Delivery, Incoming, Payload};
use serde::de::IgnoredAny;
use serde::Deserialize;
use std::borrow::Cow;

/// The publish message for WebSocket publishers (roomcast, limit, Socket.IO); `id` is the request id.
pub(crate) fn publish_frame(kind: Kind, room: u32, id: u64, payload: &str) -> String {
    let ch = channel(room);
    match kind {
        Kind::Roomcast => {
            format!("{{\"id\":{id},\"publish\":{{\"channel\":\"{ch}\",\"data\":{payload}}}}}")
        }
        Kind::Limit => payload.to_string(),
        Kind::SocketIo => format!("42{id}[\"pub\",\"{ch}\",{payload}]"),
        Kind::Pusher => unreachable!("pusher publishes over HTTP"),
    }
}

#[derive(Deserialize)]
struct RcFrame<'a> {
    id: Option<u64>,
    #[serde(borrow)]
    push: Option<RcPush<'a>>,
    error: Option<IgnoredAny>,
    publish: Option<IgnoredAny>,
    rpc: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct RcPush<'a> {
    #[serde(borrow, rename = "channel")]
    _channel: Option<Cow<'a, str>>,
    #[serde(rename = "pub")]
    publication: Option<RcPub>,
    join: Option<IgnoredAny>,
    leave: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct RcPub {
    data: Payload,
    offset: Option<u64>,
}

#[derive(Deserialize)]
struct PusherEvent<'a> {
    #[serde(borrow)]
    event: Cow<'a, str>,
    #[serde(borrow)]
    data: Option<Cow<'a, str>>,
}

/// Decodes one WebSocket text message into zero or more `Incoming` (roomcast batches several
/// newline-separated replies and pushes in one message).
pub(crate) fn decode(kind: Kind, text: &str, out: &mut Vec<Incoming>) {
    match kind {
        Kind::Roomcast => {
            for line in text.split('\n').map(str::trim).filter(|l| !l.is_empty()) {
                if line == "{}" {
                    out.push(Incoming::Ping("{}"));
                    continue;
                }
                if let Some(d) = publication_push(line) {
                    out.push(Incoming::Delivery(d));
                    continue;
                }
                let Ok(f) = serde_json::from_str::<RcFrame>(line) else {
                    out.push(Incoming::Other);
                    continue;
                };
                if f.push
                    .as_ref()
                    .is_some_and(|p| p.join.is_some() || p.leave.is_some())
                {
                    out.push(Incoming::JoinLeave);
                } else if let Some(p) = f.push.and_then(|p| p.publication) {
                    out.push(Incoming::Delivery(Delivery {
                        payload: p.data,
                        offset: p.offset,
                    }));
                } else if f.id.is_some() && (f.publish.is_some() || f.error.is_some()) {
                    out.push(Incoming::Ack {
                        id: f.id,
                        ok: f.error.is_none(),
                    });
                } else if f.id.is_some() && f.rpc.is_some() {
                    out.push(Incoming::Reply { ok: true });
                } else {
                    out.push(Incoming::Other);
                }
            }
        }
        Kind::Limit => out.push(if text == "a" {
            Incoming::Ack { id: None, ok: true }
        } else {
            match serde_json::from_str::<Payload>(text) {
                Ok(payload) => Incoming::Delivery(Delivery {
                    payload,
                    offset: None,
                }),
                Err(_) => Incoming::Other,
            }
        }),
        Kind::SocketIo => out.push(decode_socketio(text)),
        Kind::Pusher => out.push(match serde_json::from_str::<PusherEvent>(text) {
            Ok(e) if e.event == "pusher:ping" => {
                Incoming::Ping(r#"{"event":"pusher:pong","data":{}}"#)
            }
            Ok(e) if e.event == "m" => e
                .data
                .and_then(|d| serde_json::from_str::<Payload>(&d).ok())
                .map_or(Incoming::Other, |payload| {
                    Incoming::Delivery(Delivery {
                        payload,
                        offset: None,
                    })
                }),
            _ => Incoming::Other,
        }),
    }
}

/// A roomcast publication push as the server writes it, `{"push":{"channel":"..","pub":{"data":
/// <payload>,"offset":N...`, read without the generic parse of the wrapper: the same fields
/// (payload, offset) come out, but the generator, which shares this machine's two cores with the
/// server it measures, spends ~150 ns per delivery on it instead of ~300 (the limit's bare payload
/// takes ~140). Any other shape returns None and takes the full parse.
fn publication_push(line: &str) -> Option<Delivery> {
    let rest = line.strip_prefix(r#"{"push":{"channel":""#)?;
    // Bench channel names (`room<N>`) have no escapes.
    let rest = &rest[rest.find('"')?..];
    let rest = rest.strip_prefix(r#"","pub":{"data":"#)?;
    let mut values = serde_json::Deserializer::from_str(rest).into_iter::<Payload>();
    let payload = values.next()?.ok()?;
    let rest = rest[values.byte_offset()..].strip_prefix(r#","offset":"#)?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let offset = rest[..digits].parse().ok()?;
    matches!(rest.as_bytes().get(digits), Some(b'}' | b',')).then_some(Delivery {
        payload,
        offset: Some(offset),
    })
}

fn decode_socketio(text: &str) -> Incoming {
    if text == "2" {
        return Incoming::Ping("3");
    }
    if let Some(rest) = text.strip_prefix("42[") {
        // 42["m",{payload}]
        return match serde_json::from_str::<(IgnoredAny, Payload)>(&text[2..]) {
            Ok((_, payload)) if !rest.is_empty() => Incoming::Delivery(Delivery {
                payload,
                offset: None,
            }),
            _ => Incoming::Other,
        };
    }
    if let Some(rest) = text.strip_prefix("43") {
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if let Ok(id) = digits.parse() {
            return Incoming::Ack {
                id: Some(id),
                ok: true,
            };
        }
    }
    Incoming::Other
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::payload;

    #[test]
    fn decodes_roomcast_batch() {
        let text = "{\"push\":{\"channel\":\"room1\",\"pub\":{\"data\":{\"r\":1,\"s\":7,\"t\":5,\"p\":\"xx\"},\"offset\":9}}}\n{}\n{\"id\":4,\"publish\":{}}\n{\"id\":5,\"error\":{\"code\":103}}";
        let mut out = vec![];
        decode(Kind::Roomcast, text, &mut out);
        assert!(matches!(
            out[0],
            Incoming::Delivery(Delivery {
                payload: Payload { s: 7, .. },
                offset: Some(9)
            })
        ));
        assert!(matches!(out[1], Incoming::Ping("{}")));
        assert!(matches!(
            out[2],
            Incoming::Ack {
                id: Some(4),
                ok: true
            }
        ));
        assert!(matches!(
            out[3],
            Incoming::Ack {
                id: Some(5),
                ok: false
            }
        ));
        out.clear();
        let jl = "{\"push\":{\"channel\":\"room1\",\"join\":{\"info\":{\"user\":\"m1\",\"client\":\"c\"}}}}\n{\"push\":{\"channel\":\"room1\",\"leave\":{\"info\":{\"user\":\"m1\"}}}}";
        decode(Kind::Roomcast, jl, &mut out);
        assert!(matches!(
            out[..],
            [Incoming::JoinLeave, Incoming::JoinLeave]
        ));
    }

    #[test]
    fn a_publication_push_reads_the_same_by_the_short_path_and_the_full_one() {
        use roomcast_proto::reply::{encode_push, ClientInfo, Publication, PushBody};
        let data = payload(3, 8, 128);
        let mut p = Publication {
            data: serde_json::value::RawValue::from_string(data).unwrap(),
            offset: 41,
            info: None,
            tags: None,
        };
        for info in [None, Some(ClientInfo::new("p3", "c1"))] {
            p.info = info;
            let b = encode_push("room3", PushBody::Pub(&p));
            let line = std::str::from_utf8(&b).unwrap();
            let short = publication_push(line).expect("the server's push takes the short path");
            let full: RcFrame = serde_json::from_str(line).unwrap();
            let full = full.push.and_then(|p| p.publication).unwrap();
            assert_eq!(
                (short.payload.r, short.payload.s, short.payload.t),
                (3, 8, full.data.t)
            );
            assert_eq!(short.offset, full.offset);
            assert_eq!(short.offset, Some(41));
        }
        // Other shapes, or a broken tail, go to the full parse.
        for other in [
            r#"{"push":{"channel":"room3","join":{"info":{"user":"u"}}}}"#,
            r#"{"push":{"channel":"room3","pub":{"data":{"r":1,"s":2,"t":3},"offset":x}}}"#,
            r#"{"push":{"channel":"room3","pub":{"data":{"r":1,"s":2,"t":3}}}}"#,
            r#"{"push":{"channel":"room3","pub":{"data":{"r":1},"offset":4}}}"#,
            r#"{"push":{"channel":"room3","pub":{"data":{"r":1,"s":2,"t":3},"offset":4"#,
        ] {
            assert!(publication_push(other).is_none(), "{other}");
        }
    }

    #[test]
    fn decodes_peers() {
        let p = payload(3, 8, 64);
        assert!(p.len() >= 64);
        let mut out = vec![];
        decode(Kind::SocketIo, &format!("42[\"m\",{p}]"), &mut out);
        decode(Kind::SocketIo, "4317[]", &mut out);
        let pusher = serde_json::json!({"event":"m","channel":"room3","data":p}).to_string();
        decode(Kind::Pusher, &pusher, &mut out);
        decode(Kind::Limit, &p, &mut out);
        assert!(matches!(
            out[0],
            Incoming::Delivery(Delivery {
                payload: Payload { r: 3, s: 8, .. },
                ..
            })
        ));
        assert!(matches!(out[1], Incoming::Ack { id: Some(17), .. }));
        assert!(matches!(out[2], Incoming::Delivery(_)));
        assert!(matches!(out[3], Incoming::Delivery(_)));
    }
}
