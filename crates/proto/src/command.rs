//! Commands a client sends. One WebSocket text frame carries one or more JSON objects
//! separated by newlines; each object has an `id` and exactly one method field. An empty
//! object `{}` (no id, no method) is the client's pong to a server ping. A command with an
//! id and no method this server knows (`{"id":3,"foo":{}}`) is `Method::Unknown`, answered
//! with error 104 "method not found" as Centrifugo does, so the SDK does not wait forever.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Arbitrary JSON the client attaches (publication data, connect data, rpc data). Kept as
/// raw text: the server stores and forwards it without parsing it again.
pub type Json = Box<RawValue>;

#[derive(Debug, Default, Deserialize)]
pub struct Command {
    #[serde(default)]
    pub id: u32,
    pub connect: Option<ConnectRequest>,
    pub subscribe: Option<SubscribeRequest>,
    pub unsubscribe: Option<ChannelRequest>,
    pub publish: Option<PublishRequest>,
    pub presence: Option<ChannelRequest>,
    pub presence_stats: Option<ChannelRequest>,
    pub history: Option<HistoryRequest>,
    /// Present (even as `"ping":null`) means a ping.
    #[serde(default, deserialize_with = "present")]
    pub ping: Option<serde_json::Value>,
    pub send: Option<SendRequest>,
    pub rpc: Option<RpcRequest>,
    pub refresh: Option<RefreshRequest>,
    pub sub_refresh: Option<SubRefreshRequest>,
}

/// The one method a command carries, taken out of its `Option` fields.
#[derive(Debug)]
pub enum Method {
    Connect(ConnectRequest),
    Subscribe(SubscribeRequest),
    Unsubscribe(ChannelRequest),
    Publish(PublishRequest),
    Presence(ChannelRequest),
    PresenceStats(ChannelRequest),
    History(HistoryRequest),
    Ping,
    Send(SendRequest),
    Rpc(RpcRequest),
    Refresh(RefreshRequest),
    SubRefresh(SubRefreshRequest),
    /// `{}`: a pong, or an empty command.
    Empty,
    /// An id and no method this server knows: answered with "method not found".
    Unknown,
}

/// Deserializes a field that is present, whatever its value (`null` included), as `Some`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<serde_json::Value>, D::Error> {
    serde_json::Value::deserialize(d).map(Some)
}

impl Command {
    /// Splits the command into its id and method. More than one method field is a bad
    /// request, reported as `Err(id)`.
    pub fn into_method(self) -> Result<(u32, Method), u32> {
        let id = self.id;
        let mut found: Vec<Method> = Vec::with_capacity(1);
        if let Some(r) = self.connect {
            found.push(Method::Connect(r));
        }
        if let Some(r) = self.subscribe {
            found.push(Method::Subscribe(r));
        }
        if let Some(r) = self.unsubscribe {
            found.push(Method::Unsubscribe(r));
        }
        if let Some(r) = self.publish {
            found.push(Method::Publish(r));
        }
        if let Some(r) = self.presence {
            found.push(Method::Presence(r));
        }
        if let Some(r) = self.presence_stats {
            found.push(Method::PresenceStats(r));
        }
        if let Some(r) = self.history {
            found.push(Method::History(r));
        }
        if self.ping.is_some() {
            found.push(Method::Ping);
        }
        if let Some(r) = self.send {
            found.push(Method::Send(r));
        }
        if let Some(r) = self.rpc {
            found.push(Method::Rpc(r));
        }
        if let Some(r) = self.refresh {
            found.push(Method::Refresh(r));
        }
        if let Some(r) = self.sub_refresh {
            found.push(Method::SubRefresh(r));
        }
        match found.len() {
            0 if id == 0 => Ok((id, Method::Empty)),
            0 => Ok((id, Method::Unknown)),
            1 => Ok((id, found.pop().expect("one method"))),
            _ => Err(id),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct ConnectRequest {
    #[serde(default)]
    pub token: String,
    pub data: Option<Json>,
    /// Server-side subscriptions the client wants recovered, by channel.
    #[serde(default)]
    pub subs: std::collections::HashMap<String, SubscribeRequest>,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub version: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct SubscribeRequest {
    #[serde(default)]
    pub channel: String,
    #[serde(default)]
    pub token: String,
    #[serde(default)]
    pub recover: bool,
    #[serde(default)]
    pub epoch: String,
    #[serde(default)]
    pub offset: u64,
    pub data: Option<Json>,
    #[serde(default)]
    pub positioned: bool,
    #[serde(default)]
    pub recoverable: bool,
    #[serde(default)]
    pub join_leave: bool,
    /// The delta compression asked for (`"fossil"`), empty for none.
    #[serde(default)]
    pub delta: String,
    /// Subscription flags (bits): [`SubscribeRequest::REJECT_UNRECOVERED`] asks for error
    /// 112 instead of `recovered: false` (the SDKs set it when the application gives a
    /// `getState`/`get_state` callback, which they then call again).
    #[serde(default)]
    pub flag: i64,
}

impl SubscribeRequest {
    /// The flag bit asking that an unrecovered subscribe be refused with error 112.
    pub const REJECT_UNRECOVERED: i64 = 2;
}

#[derive(Debug, Default, Deserialize)]
pub struct ChannelRequest {
    #[serde(default)]
    pub channel: String,
}

#[derive(Debug, Deserialize)]
pub struct PublishRequest {
    #[serde(default)]
    pub channel: String,
    pub data: Json,
}

#[derive(Debug, Default, Deserialize, Serialize, Clone)]
pub struct StreamPosition {
    #[serde(default)]
    pub offset: u64,
    #[serde(default)]
    pub epoch: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct HistoryRequest {
    #[serde(default)]
    pub channel: String,
    /// 0: no publications, only the position; negative: as many as allowed.
    #[serde(default)]
    pub limit: i64,
    pub since: Option<StreamPosition>,
    #[serde(default)]
    pub reverse: bool,
}

#[derive(Debug, Deserialize)]
pub struct SendRequest {
    pub data: Json,
}

#[derive(Debug, Deserialize)]
pub struct RpcRequest {
    #[serde(default)]
    pub method: String,
    pub data: Option<Json>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RefreshRequest {
    #[serde(default)]
    pub token: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct SubRefreshRequest {
    #[serde(default)]
    pub channel: String,
    #[serde(default)]
    pub token: String,
}

/// Decodes every command of one text frame. Stops at the first malformed object: the
/// caller answers a malformed frame with a bad-request disconnect, so nothing after it
/// matters.
pub fn decode_commands(frame: &str) -> Result<Vec<Command>, serde_json::Error> {
    let mut out = Vec::new();
    for cmd in serde_json::Deserializer::from_str(frame).into_iter::<Command>() {
        out.push(cmd?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_several_commands_per_frame() {
        let frame = "{\"id\":1,\"connect\":{\"token\":\"t\"}}\n{\"id\":2,\"subscribe\":{\"channel\":\"a\",\"recover\":true,\"offset\":5,\"epoch\":\"e\"}}\n{}";
        let cmds = decode_commands(frame).unwrap();
        assert_eq!(cmds.len(), 3);
        let (id, m) = cmds.into_iter().nth(1).unwrap().into_method().unwrap();
        assert_eq!(id, 2);
        match m {
            Method::Subscribe(s) => {
                assert_eq!(
                    (s.channel.as_str(), s.recover, s.offset, s.epoch.as_str()),
                    ("a", true, 5, "e")
                );
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn empty_object_is_pong_and_two_methods_are_rejected() {
        let cmds = decode_commands("{}").unwrap();
        assert!(matches!(
            cmds.into_iter().next().unwrap().into_method(),
            Ok((0, Method::Empty))
        ));
        let cmds = decode_commands(
            "{\"id\":3,\"presence\":{\"channel\":\"a\"},\"history\":{\"channel\":\"a\"}}",
        )
        .unwrap();
        assert_eq!(
            cmds.into_iter().next().unwrap().into_method().unwrap_err(),
            3
        );
    }

    #[test]
    fn unknown_methods_and_null_ping_are_seen() {
        let method = |s: &str| {
            let cmd = decode_commands(s).unwrap().into_iter().next().unwrap();
            cmd.into_method().unwrap()
        };
        assert!(matches!(
            method(r#"{"id":3,"foo":{}}"#),
            (3, Method::Unknown)
        ));
        assert!(matches!(method(r#"{"id":4}"#), (4, Method::Unknown)));
        assert!(matches!(
            method(r#"{"id":5,"ping":null}"#),
            (5, Method::Ping)
        ));
        assert!(matches!(method(r#"{"foo":1}"#), (0, Method::Empty)));
    }

    #[test]
    fn malformed_json_is_an_error_not_a_panic() {
        assert!(decode_commands("{\"id\":1,").is_err());
        assert!(decode_commands("[1,2]").is_err());
        assert!(decode_commands("{\"id\":\"x\"}").is_err());
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        /// Any JSON value, a few levels deep.
        fn json() -> impl Strategy<Value = serde_json::Value> {
            let leaf = prop_oneof![
                Just(serde_json::Value::Null),
                any::<bool>().prop_map(serde_json::Value::from),
                any::<i64>().prop_map(serde_json::Value::from),
                any::<f64>()
                    .prop_filter("finite", |f| f.is_finite())
                    .prop_map(serde_json::Value::from),
                ".{0,12}".prop_map(serde_json::Value::from),
            ];
            leaf.prop_recursive(4, 32, 6, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
                    prop::collection::hash_map("[a-z_]{1,10}", inner, 0..6)
                        .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
                ]
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(3000))]

            #[test]
            fn decoder_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
                let text = String::from_utf8_lossy(&bytes);
                if let Ok(cmds) = decode_commands(&text) {
                    for c in cmds {
                        let _ = c.into_method();
                    }
                }
            }

            #[test]
            fn decoder_never_panics_on_json(v in json(), method in "[a-z_]{1,14}", id in any::<u32>()) {
                // Arbitrary JSON as a whole frame and as the body of every method name.
                let _ = decode_commands(&v.to_string());
                let frame = serde_json::json!({ "id": id, method: v }).to_string();
                if let Ok(cmds) = decode_commands(&frame) {
                    for c in cmds {
                        let _ = c.into_method();
                    }
                }
            }

            #[test]
            fn data_check_never_panics(text in ".{0,200}", depth in 0usize..80) {
                let _ = crate::data::check_text(&text, depth);
            }

            #[test]
            fn commands_round_trip(
                id in 1u32..,
                channel in ".{0,40}",
                limit in any::<i64>(),
                offset in any::<u64>(),
                epoch in "[a-zA-Z0-9]{0,12}",
                reverse in any::<bool>(),
                data in json(),
            ) {
                // What a client encodes is what the server decodes, several per frame.
                let history = serde_json::json!({"id": id, "history": {
                    "channel": channel, "limit": limit, "reverse": reverse,
                    "since": {"offset": offset, "epoch": epoch}}});
                let publish = serde_json::json!({"id": id, "publish": {"channel": channel, "data": data}});
                let frame = format!("{history}\n{publish}\n{{}}");
                let mut cmds = decode_commands(&frame).unwrap().into_iter();
                match cmds.next().unwrap().into_method().unwrap() {
                    (got, Method::History(h)) => {
                        prop_assert_eq!(got, id);
                        prop_assert_eq!(&h.channel, &channel);
                        prop_assert_eq!((h.limit, h.reverse), (limit, reverse));
                        let since = h.since.unwrap();
                        prop_assert_eq!((since.offset, since.epoch), (offset, epoch));
                    }
                    other => prop_assert!(false, "not history: {:?}", other),
                }
                match cmds.next().unwrap().into_method().unwrap() {
                    (got, Method::Publish(p)) => {
                        prop_assert_eq!(got, id);
                        prop_assert_eq!(&p.channel, &channel);
                        // Data is kept as sent, byte for byte.
                        prop_assert_eq!(p.data.get(), data.to_string());
                    }
                    other => prop_assert!(false, "not publish: {:?}", other),
                }
                prop_assert!(matches!(cmds.next().unwrap().into_method(), Ok((0, Method::Empty))));
            }
        }
    }
}
