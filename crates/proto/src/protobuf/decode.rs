//! Binary frame -> `Command`s: the varint length framing, the protobuf messages, and their
//! conversion into the format-independent command types the session handles.

use prost::Message as _;
use serde_json::value::RawValue;

use super::wire;
use crate::command::{
    ChannelRequest, Command, ConnectRequest, HistoryRequest, Json, PublishRequest, RefreshRequest,
    RpcRequest, SendRequest, StreamPosition, SubRefreshRequest, SubscribeRequest,
};

/// Why a binary frame was refused. Every one closes the connection as a bad request.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("bad length prefix (not a varint of at most 10 bytes)")]
    BadLength,
    #[error("a command of {len} bytes announced with only {left} left in the frame")]
    Truncated { len: u64, left: usize },
    #[error("malformed command: {0}")]
    Malformed(#[from] prost::DecodeError),
    #[error("data is not UTF-8 JSON")]
    NotJson,
}

/// Decodes every command of one binary frame. Stops at the first bad one: the caller
/// closes the connection, so nothing after it matters.
pub fn decode_commands(frame: &[u8]) -> Result<Vec<Command>, DecodeError> {
    let mut out = Vec::new();
    let mut rest = frame;
    while !rest.is_empty() {
        let len = prost::encoding::decode_varint(&mut rest).map_err(|_| DecodeError::BadLength)?;
        if len > rest.len() as u64 {
            return Err(DecodeError::Truncated {
                len,
                left: rest.len(),
            });
        }
        let (msg, tail) = rest.split_at(len as usize);
        rest = tail;
        out.push(command(wire::Command::decode(msg)?)?);
    }
    Ok(out)
}

/// Data bytes as JSON; empty is absent.
fn json(data: Vec<u8>) -> Result<Option<Json>, DecodeError> {
    if data.is_empty() {
        return Ok(None);
    }
    let text = String::from_utf8(data).map_err(|_| DecodeError::NotJson)?;
    RawValue::from_string(text)
        .map(Some)
        .map_err(|_| DecodeError::NotJson)
}

/// Data a request cannot go without (publish, send): empty is not JSON either.
fn required_json(data: Vec<u8>) -> Result<Json, DecodeError> {
    json(data)?.ok_or(DecodeError::NotJson)
}

fn channel(channel: String) -> ChannelRequest {
    ChannelRequest { channel }
}

fn subscribe(r: wire::SubscribeRequest) -> Result<SubscribeRequest, DecodeError> {
    Ok(SubscribeRequest {
        channel: r.channel,
        token: r.token,
        recover: r.recover,
        epoch: r.epoch,
        offset: r.offset,
        data: json(r.data)?,
        positioned: r.positioned,
        recoverable: r.recoverable,
        join_leave: r.join_leave,
        delta: r.delta,
        flag: r.flag,
    })
}

fn command(c: wire::Command) -> Result<Command, DecodeError> {
    let connect = match c.connect {
        Some(r) => Some(ConnectRequest {
            token: r.token,
            data: json(r.data)?,
            subs: r
                .subs
                .into_iter()
                .map(|(k, v)| Ok((k, subscribe(v)?)))
                .collect::<Result<_, DecodeError>>()?,
            name: r.name,
            version: r.version,
        }),
        None => None,
    };
    let publish = match c.publish {
        Some(r) => Some(PublishRequest {
            channel: r.channel,
            data: required_json(r.data)?,
        }),
        None => None,
    };
    let send = match c.send {
        Some(r) => Some(SendRequest {
            data: required_json(r.data)?,
        }),
        None => None,
    };
    let rpc = match c.rpc {
        Some(r) => Some(RpcRequest {
            method: r.method,
            data: json(r.data)?,
        }),
        None => None,
    };
    Ok(Command {
        id: c.id,
        connect,
        subscribe: c.subscribe.map(subscribe).transpose()?,
        unsubscribe: c.unsubscribe.map(|r| channel(r.channel)),
        publish,
        presence: c.presence.map(|r| channel(r.channel)),
        presence_stats: c.presence_stats.map(|r| channel(r.channel)),
        history: c.history.map(|r| HistoryRequest {
            channel: r.channel,
            limit: i64::from(r.limit),
            since: r.since.map(|s| StreamPosition {
                offset: s.offset,
                epoch: s.epoch,
            }),
            reverse: r.reverse,
        }),
        ping: c.ping.map(|_| serde_json::Value::Null),
        send,
        rpc,
        refresh: c.refresh.map(|r| RefreshRequest { token: r.token }),
        sub_refresh: c.sub_refresh.map(|r| SubRefreshRequest {
            channel: r.channel,
            token: r.token,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Method;
    use proptest::prelude::*;

    fn frame(cmds: &[wire::Command]) -> Vec<u8> {
        let mut out = Vec::new();
        for c in cmds {
            c.encode_length_delimited(&mut out).unwrap();
        }
        out
    }

    #[test]
    fn decodes_several_commands_and_the_empty_pong() {
        let f = frame(&[
            wire::Command {
                id: 1,
                publish: Some(wire::PublishRequest {
                    channel: "a".into(),
                    data: br#"{"x":1}"#.to_vec(),
                }),
                ..Default::default()
            },
            wire::Command::default(),
            wire::Command {
                id: 2,
                ping: Some(wire::PingRequest {}),
                ..Default::default()
            },
        ]);
        let mut cmds = decode_commands(&f).unwrap().into_iter();
        match cmds.next().unwrap().into_method().unwrap() {
            (1, Method::Publish(p)) => {
                assert_eq!((p.channel.as_str(), p.data.get()), ("a", r#"{"x":1}"#));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            cmds.next().unwrap().into_method(),
            Ok((0, Method::Empty))
        ));
        assert!(matches!(
            cmds.next().unwrap().into_method(),
            Ok((2, Method::Ping))
        ));
    }

    #[test]
    fn refuses_bad_framing_without_allocating_by_it() {
        assert!(matches!(
            decode_commands(&[0xff; 11]),
            Err(DecodeError::BadLength)
        ));
        let mut huge = Vec::new();
        prost::encoding::encode_varint(u64::MAX, &mut huge);
        assert!(matches!(
            decode_commands(&huge),
            Err(DecodeError::Truncated { .. })
        ));
        assert!(matches!(
            decode_commands(&[3, 0x0a, 1, 0]),
            Err(DecodeError::Malformed(_))
        ));
        let not_json = frame(&[wire::Command {
            id: 1,
            publish: Some(wire::PublishRequest::default()),
            ..Default::default()
        }]);
        assert!(matches!(
            decode_commands(&not_json),
            Err(DecodeError::NotJson)
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        #[test]
        fn never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(cmds) = decode_commands(&bytes) {
                for c in cmds {
                    let _ = c.into_method();
                }
            }
        }

        #[test]
        fn history_round_trips(id in 1u32.., channel in ".{0,30}", limit in any::<i32>(),
                               offset in any::<u64>(), epoch in "[a-z0-9]{0,8}", reverse in any::<bool>()) {
            let f = frame(&[wire::Command {
                id,
                history: Some(wire::HistoryRequest {
                    channel: channel.clone(),
                    limit,
                    since: Some(wire::StreamPosition { offset, epoch: epoch.clone() }),
                    reverse,
                }),
                ..Default::default()
            }]);
            let cmd = decode_commands(&f).unwrap().pop().unwrap();
            match cmd.into_method().unwrap() {
                (got, Method::History(h)) => {
                    prop_assert_eq!(got, id);
                    prop_assert_eq!(h.channel, channel);
                    prop_assert_eq!((h.limit, h.reverse), (i64::from(limit), reverse));
                    let since = h.since.unwrap();
                    prop_assert_eq!((since.offset, since.epoch), (offset, epoch));
                }
                other => prop_assert!(false, "not history: {:?}", other),
            }
        }
    }
}
