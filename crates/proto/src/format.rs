//! The two formats of the client protocol, and replies and pushes encoded for either.
//!
//! A connection picks its format at the handshake (the SDKs ask for protobuf with
//! `?format=protobuf` or the `centrifuge-protobuf` subprotocol) and keeps it. The session
//! encodes its replies with the functions below, for its connection's format; the hub
//! encodes a push at most once per format, however many recipients (see the server's
//! `hub/frames.rs`).
//!
//! JSON frames are bare objects (a transport joins several with newlines); protobuf frames
//! carry their own varint length (a transport concatenates them), so a frame of either
//! format is complete on its own.

use bytes::Bytes;

use crate::codes::ErrorCode;
use crate::protobuf::{self, wire, ReplyResult};
use crate::reply::{self, DeltaData, Publication, PushBody};

/// How replies and pushes are encoded for a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// JSON objects in text messages (protocol v2 JSON).
    #[default]
    Json,
    /// Varint length-delimited protobuf messages in binary messages.
    Protobuf,
}

impl Format {
    /// `{"id":N,"<method>":<result>}` or its protobuf twin.
    pub fn reply<T: ReplyResult>(self, id: u32, method: &str, result: &T) -> Bytes {
        match self {
            Format::Json => reply::encode_reply(id, method, result),
            Format::Protobuf => {
                let mut r = wire::Reply {
                    id,
                    ..Default::default()
                };
                result.put(&mut r);
                protobuf::delimited(&r)
            }
        }
    }

    /// The reply of a command whose result is empty (`publish`, `unsubscribe`, `ping`).
    pub fn empty_reply(self, id: u32, method: &str) -> Bytes {
        match self {
            Format::Json => reply::encode_empty_reply(id, method),
            Format::Protobuf => {
                let mut r = wire::Reply {
                    id,
                    ..Default::default()
                };
                protobuf::put_empty(&mut r, method);
                protobuf::delimited(&r)
            }
        }
    }

    /// An error reply with the code's own message.
    pub fn error(self, id: u32, err: ErrorCode) -> Bytes {
        self.error_message(id, err, err.message)
    }

    /// An error reply with a message that says more than the code's default.
    pub fn error_message(self, id: u32, err: ErrorCode, message: &str) -> Bytes {
        match self {
            Format::Json => reply::encode_error_message(id, err, message),
            Format::Protobuf => protobuf::delimited(&wire::Reply {
                id,
                error: Some(wire::Error {
                    code: err.code,
                    message: message.to_owned(),
                    temporary: err.temporary,
                }),
                ..Default::default()
            }),
        }
    }

    /// A push of a channel (publication, join, leave, unsubscribe, ...).
    pub fn push(self, channel: &str, body: PushBody<'_>) -> Bytes {
        match self {
            Format::Json => reply::encode_push(channel, body),
            Format::Protobuf => protobuf::delimited(&protobuf::push(channel, body)),
        }
    }

    /// A publication pushed to a delta subscription (`delta: true` in its subscribe
    /// reply): in full or as a fossil delta. In JSON the data is a JSON string either way
    /// (see `Publication::with_string_data`); in protobuf it is bytes, as always.
    pub fn delta_push(self, channel: &str, p: &Publication, data: DeltaData<'_>) -> Bytes {
        match self {
            Format::Json => reply::encode_delta_push(channel, p, data),
            Format::Protobuf => protobuf::delimited(&protobuf::delta_push(channel, p, data)),
        }
    }

    /// The disconnect push (`{"push":{"disconnect":{...}}}`): how a transport with no close
    /// frame of its own (HTTP-streaming, SSE) tells the SDK why the stream ends and
    /// whether to reconnect.
    pub fn disconnect(self, code: u16, reason: &str, reconnect: bool) -> Bytes {
        match self {
            Format::Json => reply::encode_disconnect(code, reason, reconnect),
            Format::Protobuf => protobuf::delimited(&wire::Reply {
                push: Some(wire::Push {
                    disconnect: Some(wire::Disconnect {
                        code: code.into(),
                        reason: reason.to_owned(),
                        reconnect,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        }
    }

    /// The server's ping: `{}`, or an empty reply (one zero length byte).
    pub fn ping(self) -> Bytes {
        match self {
            Format::Json => Bytes::from_static(reply::PING),
            Format::Protobuf => Bytes::from_static(&[0]),
        }
    }
}
