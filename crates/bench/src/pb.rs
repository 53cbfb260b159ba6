//! roomcast in the protobuf format (`proto=1`): binary WebSocket messages holding varint
//! length-delimited `Command`s (to the server) and `Reply`s (from it), with the wire types of the
//! workspace's `roomcast-proto` crate.
//!
//! The per-delivery work is the JSON member's, minus the JSON envelope: prost decodes each `Reply`
//! of a frame and the publication's `data` bytes (the bench's own JSON payload) are read straight
//! into a `Payload`, the offset beside it. Pings are empty `Reply`s and are answered with an empty
//! `Command`, as the SDKs do.

use crate::wire::{self, Ask, Delivery, Incoming, Joined, Payload, Position, Ws};
use anyhow::{bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use roomcast_proto::protobuf::wire::{
    Command, ConnectRequest, PublishRequest, Reply, RpcRequest, SubscribeRequest, SubscribeResult,
};
use tokio_tungstenite::tungstenite::Message;

/// The query a WebSocket URL gets to ask for the protobuf format.
pub(crate) const QUERY: &str = "?format=protobuf";

/// The pong: one empty `Command` (its length prefix, zero).
pub(crate) fn pong() -> Message {
    Message::binary(vec![0u8])
}

/// One command as a binary message.
fn message(cmd: &Command) -> Message {
    Message::binary(cmd.encode_length_delimited_to_vec())
}

/// A room publisher's `publish` of the bench payload, request id `id`.
pub(crate) fn publish_frame(room: u32, id: u64, payload: &str) -> Message {
    message(&Command {
        id: id as u32,
        publish: Some(PublishRequest {
            channel: wire::channel(room),
            data: payload.as_bytes().to_vec(),
        }),
        ..Default::default()
    })
}

/// A chat member's cursor move: `rpc roomcast.read` to `offset`.
pub(crate) fn read_frame(id: u64, room: u32, offset: u64) -> Message {
    let data = serde_json::json!({"channel": wire::channel(room), "offset": offset});
    message(&Command {
        id: id as u32,
        rpc: Some(RpcRequest {
            data: data.to_string().into_bytes(),
            method: "roomcast.read".into(),
        }),
        ..Default::default()
    })
}

/// What one decoded `Reply` means to the bench (the protobuf twin of the JSON member's decoding).
fn incoming(r: Reply) -> Incoming {
    if let Some(push) = r.push {
        if push.join.is_some() || push.leave.is_some() {
            return Incoming::JoinLeave;
        }
        return match push.r#pub {
            Some(p) => match serde_json::from_slice::<Payload>(&p.data) {
                Ok(payload) => Incoming::Delivery(Delivery {
                    payload,
                    // proto3 leaves a zero offset out, as JSON does.
                    offset: (p.offset != 0).then_some(p.offset),
                }),
                Err(_) => Incoming::Other,
            },
            None => Incoming::Other,
        };
    }
    if r.id != 0 && (r.publish.is_some() || r.error.is_some()) {
        Incoming::Ack {
            id: Some(r.id.into()),
            ok: r.error.is_none(),
        }
    } else if r.id != 0 && r.rpc.is_some() {
        Incoming::Reply { ok: true }
    } else {
        Incoming::Other
    }
}

/// Splits one binary message into its `Reply`s, each `None` for an empty one (a server ping).
/// A malformed reply ends the frame (what follows its bad length cannot be found).
fn replies(frame: &[u8], mut each: impl FnMut(Option<Reply>)) -> bool {
    let mut rest = frame;
    while !rest.is_empty() {
        match Reply::decode_length_delimited(&mut rest) {
            Ok(r) if r == Reply::default() => each(None),
            Ok(r) => each(Some(r)),
            Err(_) => return false,
        }
    }
    true
}

/// Decodes one binary message into zero or more `Incoming` (the server batches several replies
/// and pushes in one message).
pub(crate) fn decode(frame: &[u8], out: &mut Vec<Incoming>) {
    let whole = replies(frame, |r| {
        out.push(match r {
            None => Incoming::Ping(""),
            Some(r) => incoming(r),
        });
    });
    if !whole {
        out.push(Incoming::Other);
    }
}

/// The connect handshake (publishers use it alone).
pub(crate) async fn hello(ws: &mut Ws, token: String) -> Result<()> {
    let cmd = Command {
        id: 1,
        connect: Some(ConnectRequest {
            token,
            ..Default::default()
        }),
        ..Default::default()
    };
    ws.send(message(&cmd)).await?;
    let reply = expect(ws, 1, &mut Joined::default()).await?;
    refused(&reply, "connect")
}

/// Connects and subscribes to `room` (recovering from `recover` when given), as `wire::join` does
/// in JSON.
pub(crate) async fn join(
    ws: &mut Ws,
    token: String,
    room: u32,
    recover: Option<&Position>,
    ask: Ask,
) -> Result<Joined> {
    hello(ws, token).await?;
    let mut sub = SubscribeRequest {
        channel: wire::channel(room),
        join_leave: ask.join_leave,
        ..Default::default()
    };
    if ask.digest {
        sub.data = br#"{"digest":true}"#.to_vec();
    }
    if let Some(p) = recover {
        sub.recover = true;
        sub.offset = p.offset;
        sub.epoch.clone_from(&p.epoch);
    }
    let cmd = Command {
        id: 2,
        subscribe: Some(sub),
        ..Default::default()
    };
    ws.send(message(&cmd)).await?;
    // Pushes that follow the reply come after the recovered publications it carries.
    let mut after = Joined::default();
    let reply = expect(ws, 2, &mut after).await?;
    refused(&reply, "subscribe")?;
    let mut joined = Joined::default();
    subscribed(
        reply.subscribe.unwrap_or_default(),
        recover.is_some(),
        &mut joined,
    )?;
    joined.backlog.append(&mut after.backlog);
    Ok(joined)
}

fn refused(reply: &Reply, what: &str) -> Result<()> {
    match &reply.error {
        Some(e) => bail!("{what} refused: {} {}", e.code, e.message),
        None => Ok(()),
    }
}

/// Reads a subscribe result into `joined`, as `wire::subscribed` does for JSON.
fn subscribed(r: SubscribeResult, asked_recovery: bool, joined: &mut Joined) -> Result<()> {
    let mut pos = Position {
        offset: r.offset,
        epoch: r.epoch,
    };
    if asked_recovery {
        joined.recovered = Some(r.recovered);
    }
    for p in r.publications {
        let payload: Payload = serde_json::from_slice(&p.data)
            .context("recovered publication without bench payload")?;
        let offset = (p.offset != 0).then_some(p.offset);
        if let Some(o) = offset {
            pos.offset = pos.offset.max(o);
        }
        joined.backlog.push(Delivery { payload, offset });
    }
    joined.position = Some(pos);
    Ok(())
}

/// Reads until the reply to command `id`, answering pings and keeping the publications that
/// arrive meanwhile (before it, or after it in the same message).
async fn expect(ws: &mut Ws, id: u32, joined: &mut Joined) -> Result<Reply> {
    loop {
        let frame = match ws.next().await {
            Some(Ok(Message::Binary(b))) => b,
            Some(Ok(Message::Close(c))) => bail!("closed by server: {c:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => bail!("connection ended"),
        };
        let mut reply = None;
        let mut pings = 0;
        let whole = replies(&frame, |r| match r {
            None => pings += 1,
            Some(r) if reply.is_none() && r.id == id && r.push.is_none() => reply = Some(r),
            Some(r) => {
                if let Incoming::Delivery(d) = incoming(r) {
                    joined.backlog.push(d);
                }
            }
        });
        for _ in 0..pings {
            ws.send(pong()).await?;
        }
        if !whole {
            bail!("malformed protobuf frame from the server");
        }
        if let Some(r) = reply {
            return Ok(r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use roomcast_proto::protobuf::wire::{ClientInfo, Error, Join, Publication, Push};

    fn frame(replies: &[Reply]) -> Vec<u8> {
        let mut buf = Vec::new();
        for r in replies {
            r.encode_length_delimited(&mut buf).unwrap();
        }
        buf
    }

    fn publication(seq: u64, offset: u64) -> Reply {
        Reply {
            push: Some(Push {
                channel: "room3".into(),
                r#pub: Some(Publication {
                    data: wire::payload(3, seq, 64).into_bytes(),
                    offset,
                    info: Some(ClientInfo {
                        user: "p3".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn decodes_several_replies_of_one_frame() {
        let f = frame(&[
            publication(7, 9),
            Reply::default(),
            Reply {
                id: 4,
                publish: Some(Default::default()),
                ..Default::default()
            },
            Reply {
                id: 5,
                error: Some(Error {
                    code: 103,
                    message: "permission denied".into(),
                    temporary: false,
                }),
                ..Default::default()
            },
            Reply {
                id: 6,
                rpc: Some(Default::default()),
                ..Default::default()
            },
            Reply {
                push: Some(Push {
                    channel: "room3".into(),
                    join: Some(Join::default()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            publication(8, 0),
        ]);
        let mut out = vec![];
        decode(&f, &mut out);
        assert_eq!(out.len(), 7, "{out:?}");
        assert!(matches!(
            out[0],
            Incoming::Delivery(Delivery {
                payload: Payload { r: 3, s: 7, .. },
                offset: Some(9)
            })
        ));
        assert!(matches!(out[1], Incoming::Ping(_)));
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
        assert!(matches!(out[4], Incoming::Reply { ok: true }));
        assert!(matches!(out[5], Incoming::JoinLeave));
        assert!(matches!(
            out[6],
            Incoming::Delivery(Delivery {
                payload: Payload { s: 8, .. },
                offset: None
            })
        ));
    }

    #[test]
    fn a_truncated_frame_keeps_what_came_before_it() {
        let mut f = frame(&[publication(1, 1), publication(2, 2)]);
        f.truncate(f.len() - 3);
        let mut out = vec![];
        decode(&f, &mut out);
        assert!(matches!(
            out[..],
            [
                Incoming::Delivery(Delivery {
                    payload: Payload { s: 1, .. },
                    ..
                }),
                Incoming::Other
            ]
        ));
    }

    #[test]
    fn a_subscribe_result_brings_position_and_recovered_publications() {
        let r = SubscribeResult {
            epoch: "e".into(),
            offset: 10,
            recovered: true,
            publications: vec![Publication {
                data: wire::payload(3, 11, 0).into_bytes(),
                offset: 11,
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut j = Joined::default();
        subscribed(r, true, &mut j).unwrap();
        let pos = j.position.unwrap();
        assert_eq!((pos.offset, pos.epoch.as_str()), (11, "e"));
        assert_eq!(j.recovered, Some(true));
        assert_eq!(j.backlog[0].payload.s, 11);
    }

    #[test]
    fn commands_are_length_delimited() {
        let Message::Binary(b) = publish_frame(2, 5, r#"{"r":2}"#) else {
            panic!("binary")
        };
        let cmd = Command::decode_length_delimited(&b[..]).unwrap();
        let p = cmd.publish.unwrap();
        assert_eq!((cmd.id, p.channel.as_str()), (5, "room2"));
        assert_eq!(p.data, br#"{"r":2}"#);
        assert_eq!(pong().into_data().as_ref(), &[0u8]);
    }
}
