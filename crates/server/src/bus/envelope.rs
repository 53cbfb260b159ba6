//! What travels between nodes, whatever the broker: compact JSON, one object per broker
//! message. Externally tagged (`{"pub": {...}}`): an internally tagged enum would buffer
//! its fields, which raw JSON payloads (`RawValue`) cannot go through.
//!
//! Every envelope names the node that sent it (`n`), so a node ignores its own echoes.

use std::sync::Arc;

use roomcast_proto::{ClientInfo, Disconnect};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{NodeStats, ServerSubscribe, UserOp};
use crate::hub::RoomEvent;
use crate::store::Message;

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Envelope {
    /// A committed publication.
    Pub {
        n: String,
        r: String,
        o: u64,
        uid: String,
        u: String,
        c: String,
        d: Box<RawValue>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        i: Option<ClientInfo>,
        ts: i64,
        /// A tombstone or deletion notice: the deleted offset (`Message::tombstone`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        del: Option<u64>,
    },
    Join {
        n: String,
        r: String,
        i: ClientInfo,
    },
    Leave {
        n: String,
        r: String,
        i: ClientInfo,
    },
    /// The room has publications up to `o` that may not have been published.
    Hint {
        n: String,
        r: String,
        o: u64,
    },
    /// A node checking its own subscription.
    Probe {
        n: String,
    },
    Heartbeat {
        n: String,
        s: NodeStats,
    },
    /// The node is draining: everything it committed has been published; peers drop it
    /// from the node list at once (and sweep their rooms once more from the store).
    Gone {
        n: String,
    },
    Disconnect {
        n: String,
        user: String,
        client: Option<String>,
        code: u16,
        /// Client ids to leave connected.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        keep: Vec<String>,
    },
    Unsubscribe {
        n: String,
        user: String,
        channel: String,
        client: Option<String>,
    },
    /// A server-side subscription of a user's connections.
    Subscribe {
        n: String,
        user: String,
        client: Option<String>,
        s: ServerSubscribe,
    },
    /// A new expiry for a user's connections (or expired now).
    Refresh {
        n: String,
        user: String,
        client: Option<String>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        expired: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expire_at: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        info: Option<Box<RawValue>>,
    },
}

impl Envelope {
    pub fn from_event(node: &str, e: &RoomEvent) -> Envelope {
        match e {
            RoomEvent::Publication(m) => Envelope::Pub {
                n: node.into(),
                r: m.room.to_string(),
                o: m.offset,
                uid: m.uid.clone(),
                u: m.user.clone(),
                c: m.client.clone(),
                d: m.data.clone(),
                i: m.info.clone(),
                ts: m.ts_ms,
                del: m.tombstone,
            },
            RoomEvent::Join { room, info } => Envelope::Join {
                n: node.into(),
                r: room.to_string(),
                i: info.clone(),
            },
            RoomEvent::Leave { room, info } => Envelope::Leave {
                n: node.into(),
                r: room.to_string(),
                i: info.clone(),
            },
        }
    }

    pub fn from_user_op(node: &str, op: &UserOp) -> Envelope {
        match op {
            UserOp::Disconnect {
                user,
                client,
                keep,
                why,
            } => Envelope::Disconnect {
                n: node.into(),
                user: user.clone(),
                client: client.clone(),
                code: why.code,
                keep: keep.clone(),
            },
            UserOp::Unsubscribe {
                user,
                channel,
                client,
            } => Envelope::Unsubscribe {
                n: node.into(),
                user: user.clone(),
                channel: channel.clone(),
                client: client.clone(),
            },
            UserOp::Subscribe { user, client, sub } => Envelope::Subscribe {
                n: node.into(),
                user: user.clone(),
                client: client.clone(),
                s: (**sub).clone(),
            },
            UserOp::Refresh {
                user,
                client,
                expired,
                expire_at,
                info,
            } => Envelope::Refresh {
                n: node.into(),
                user: user.clone(),
                client: client.clone(),
                expired: *expired,
                expire_at: *expire_at,
                info: info.clone(),
            },
        }
    }

    /// The node that sent it.
    pub fn sender(&self) -> &str {
        match self {
            Envelope::Pub { n, .. }
            | Envelope::Join { n, .. }
            | Envelope::Leave { n, .. }
            | Envelope::Hint { n, .. }
            | Envelope::Probe { n }
            | Envelope::Heartbeat { n, .. }
            | Envelope::Gone { n }
            | Envelope::Disconnect { n, .. }
            | Envelope::Unsubscribe { n, .. }
            | Envelope::Subscribe { n, .. }
            | Envelope::Refresh { n, .. } => n,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("envelopes serialize")
    }

    pub fn decode(bytes: &[u8]) -> Result<Envelope, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// What a decoded envelope means to the receiving node.
pub enum Decoded {
    Event(RoomEvent),
    Hint(Arc<str>, u64),
    UserOp(UserOp),
    Heartbeat(String, NodeStats),
    Gone(String),
    /// A probe (the caller checks whose), or this node's own echo.
    Nothing,
}

impl Envelope {
    /// Interprets an envelope received by `me`.
    pub fn into_decoded(self, me: &str) -> Decoded {
        match self {
            Envelope::Pub {
                n,
                r,
                o,
                uid,
                u,
                c,
                d,
                i,
                ts,
                del,
            } if n != me => Decoded::Event(RoomEvent::Publication(Arc::new(Message {
                room: r.into(),
                offset: o,
                uid,
                user: u,
                client: c,
                data: d,
                info: i,
                ts_ms: ts,
                tombstone: del,
            }))),
            Envelope::Join { n, r, i } if n != me => Decoded::Event(RoomEvent::Join {
                room: r.into(),
                info: i,
            }),
            Envelope::Leave { n, r, i } if n != me => Decoded::Event(RoomEvent::Leave {
                room: r.into(),
                info: i,
            }),
            Envelope::Hint { r, o, .. } => Decoded::Hint(r.into(), o),
            Envelope::Heartbeat { n, s } if n != me => Decoded::Heartbeat(n, s),
            Envelope::Gone { n } if n != me => Decoded::Gone(n),
            Envelope::Disconnect {
                user,
                client,
                code,
                keep,
                ..
            } => Decoded::UserOp(UserOp::Disconnect {
                user,
                client,
                keep,
                why: known_disconnect(code),
            }),
            Envelope::Unsubscribe {
                user,
                channel,
                client,
                ..
            } => Decoded::UserOp(UserOp::Unsubscribe {
                user,
                channel,
                client,
            }),
            Envelope::Subscribe {
                user, client, s, ..
            } => Decoded::UserOp(UserOp::Subscribe {
                user,
                client,
                sub: Arc::new(s),
            }),
            Envelope::Refresh {
                user,
                client,
                expired,
                expire_at,
                info,
                ..
            } => Decoded::UserOp(UserOp::Refresh {
                user,
                client,
                expired,
                expire_at,
                info,
            }),
            _ => Decoded::Nothing,
        }
    }
}

/// A disconnect code from the bus, as one of the protocol's operator disconnects.
fn known_disconnect(code: u16) -> Disconnect {
    Disconnect::operator(code).unwrap_or(Disconnect::FORCE_NO_RECONNECT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_with_raw_payloads_round_trip() {
        let mut info = ClientInfo::new("u", "c");
        info.conn_info = Some(RawValue::from_string("{\"a\":[1,2]}".into()).unwrap());
        let m = Message {
            room: "r".into(),
            offset: 7,
            uid: "id".into(),
            user: "u".into(),
            client: "c".into(),
            data: RawValue::from_string("{\"text\":\"hi\"}".into()).unwrap(),
            info: Some(info),
            ts_ms: 5,
            tombstone: None,
        };
        let bytes = Envelope::from_event("n1", &RoomEvent::Publication(Arc::new(m))).encode();
        match Envelope::decode(&bytes).unwrap() {
            Envelope::Pub { n, r, o, d, i, .. } => {
                assert_eq!((n.as_str(), r.as_str(), o), ("n1", "r", 7));
                assert_eq!(d.get(), "{\"text\":\"hi\"}");
                assert_eq!(i.unwrap().conn_info.unwrap().get(), "{\"a\":[1,2]}");
            }
            _ => panic!("a publication"),
        }
        assert!(Envelope::decode(b"{\"bogus\":1}").is_err());
        // Own echoes mean nothing; others' publications are events.
        let own = Envelope::decode(&bytes).unwrap();
        assert!(matches!(own.into_decoded("n1"), Decoded::Nothing));
        let other = Envelope::decode(&bytes).unwrap();
        assert!(matches!(other.into_decoded("n2"), Decoded::Event(_)));
    }

    #[test]
    fn server_subscribe_and_refresh_cross_nodes_intact() {
        let sub = ServerSubscribe {
            channel: "room".into(),
            recover_since: Some(roomcast_proto::StreamPosition {
                offset: 4,
                epoch: "e".into(),
            }),
            info: Some(RawValue::from_string("{\"r\":1}".into()).unwrap()),
            overrides: crate::hub::SubOverrides {
                presence: Some(false),
                ..Default::default()
            },
        };
        let op = UserOp::Subscribe {
            user: "u".into(),
            client: Some("c".into()),
            sub: Arc::new(sub),
        };
        let bytes = Envelope::from_user_op("n1", &op).encode();
        match Envelope::decode(&bytes).unwrap().into_decoded("n2") {
            Decoded::UserOp(UserOp::Subscribe { user, client, sub }) => {
                assert_eq!((user.as_str(), client.as_deref()), ("u", Some("c")));
                assert_eq!(sub.channel, "room");
                assert_eq!(sub.recover_since.as_ref().unwrap().offset, 4);
                assert_eq!(sub.info.as_ref().unwrap().get(), "{\"r\":1}");
                assert_eq!(sub.overrides.presence, Some(false));
                assert_eq!(sub.overrides.join_leave, None);
            }
            _ => panic!("a subscribe"),
        }
        let op = UserOp::Refresh {
            user: "u".into(),
            client: None,
            expired: false,
            expire_at: Some(99),
            info: None,
        };
        let bytes = Envelope::from_user_op("n1", &op).encode();
        match Envelope::decode(&bytes).unwrap().into_decoded("n2") {
            Decoded::UserOp(UserOp::Refresh {
                expired, expire_at, ..
            }) => assert_eq!((expired, expire_at), (false, Some(99))),
            _ => panic!("a refresh"),
        }
    }
}
