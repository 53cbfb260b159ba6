//! Replies and pushes the server sends, and their encoding.
//!
//! Every frame is encoded once into `Bytes`: a publication push is built once per message
//! and the same bytes go to every recipient.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::collections::HashMap;

use crate::codes::ErrorCode;

/// Who did something: attached to publications made by clients, to join/leave pushes and
/// to presence entries.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientInfo {
    pub user: String,
    pub client: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub conn_info: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub chan_info: Option<Box<RawValue>>,
}

impl ClientInfo {
    pub fn new(user: &str, client: &str) -> Self {
        ClientInfo {
            user: user.to_owned(),
            client: client.to_owned(),
            conn_info: None,
            chan_info: None,
        }
    }
}

/// A publication as the client sees it, in pushes, subscribe replies and history.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Publication {
    pub data: Box<RawValue>,
    #[serde(skip_serializing_if = "is_zero", default)]
    pub offset: u64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub info: Option<ClientInfo>,
    /// Centrifugo's publication tags; roomcast sets `{"deleted": "<offset>"}` on a deleted
    /// publication (history, recovery) and on the live notice of a deletion.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tags: Option<HashMap<String, String>>,
}

impl Publication {
    /// The publication as a JSON delta subscription gets it in full: its data as a JSON
    /// string holding the data's JSON text (the SDKs parse that string, and take its UTF-8
    /// bytes as the base of the next delta).
    pub fn with_string_data(&self) -> Publication {
        let text = serde_json::to_string(self.data.get()).expect("a string serializes");
        Publication {
            data: RawValue::from_string(text).expect("a JSON string is JSON"),
            offset: self.offset,
            info: self.info.clone(),
            tags: self.tags.clone(),
        }
    }
}

/// A publication's data as a delta subscription gets it.
#[derive(Debug, Clone, Copy)]
pub enum DeltaData<'a> {
    /// In full (`delta: false`): the next delta's base.
    Full,
    /// A fossil delta against the previous publication the subscription got.
    Delta(&'a str),
}

/// `{"push":{"channel":"...","pub":{"data":"<text or delta>",...,"delta":true}}}`: a
/// publication pushed to a JSON delta subscription (the data is always a JSON string).
pub fn encode_delta_push(channel: &str, p: &Publication, data: DeltaData<'_>) -> Bytes {
    #[derive(Serialize)]
    struct Pub<'a> {
        data: &'a str,
        #[serde(skip_serializing_if = "is_zero")]
        offset: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        info: Option<&'a ClientInfo>,
        #[serde(skip_serializing_if = "is_false")]
        delta: bool,
    }
    let (text, delta) = match data {
        DeltaData::Full => (p.data.get(), false),
        DeltaData::Delta(d) => (d, true),
    };
    #[derive(Serialize)]
    struct Inner<'a> {
        channel: &'a str,
        #[serde(rename = "pub")]
        publication: Pub<'a>,
    }
    #[derive(Serialize)]
    struct Outer<'a> {
        push: Inner<'a>,
    }
    let push = Outer {
        push: Inner {
            channel,
            publication: Pub {
                data: text,
                offset: p.offset,
                info: p.info.as_ref(),
                delta,
            },
        },
    };
    Bytes::from(serde_json::to_vec(&push).expect("push serializes"))
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}
fn is_false(v: &bool) -> bool {
    !*v
}

#[derive(Debug, Default, Serialize)]
pub struct ConnectResult {
    pub client: String,
    pub version: String,
    #[serde(skip_serializing_if = "is_false")]
    pub expires: bool,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub ttl: u32,
    #[serde(skip_serializing_if = "HashMap::is_empty")]
    pub subs: HashMap<String, SubscribeResult>,
    /// Seconds between server pings; the client expects one within this plus its margin.
    pub ping: u32,
    /// Whether the client must answer pings.
    pub pong: bool,
    /// The stream's session id over the HTTP-streaming and SSE transports: the SDK sends
    /// it with every command it POSTs to the emulation endpoint. Empty on WebSocket.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub session: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub node: String,
}

fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}

#[derive(Debug, Default, Serialize)]
pub struct RefreshResult {
    pub client: String,
    pub version: String,
    #[serde(skip_serializing_if = "is_false")]
    pub expires: bool,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub ttl: u32,
}

#[derive(Debug, Default, Serialize)]
pub struct SubscribeResult {
    #[serde(skip_serializing_if = "is_false")]
    pub expires: bool,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub ttl: u32,
    #[serde(skip_serializing_if = "is_false")]
    pub recoverable: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub epoch: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub publications: Vec<Publication>,
    #[serde(skip_serializing_if = "is_false")]
    pub recovered: bool,
    #[serde(skip_serializing_if = "is_zero")]
    pub offset: u64,
    #[serde(skip_serializing_if = "is_false")]
    pub positioned: bool,
    #[serde(skip_serializing_if = "is_false")]
    pub was_recovering: bool,
    /// Delta compression is on for this subscription: its publications' data come as
    /// fossil deltas against the previous one when `delta` is set on them.
    #[serde(skip_serializing_if = "is_false")]
    pub delta: bool,
}

#[derive(Debug, Default, Serialize)]
pub struct SubRefreshResult {
    #[serde(skip_serializing_if = "is_false")]
    pub expires: bool,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub ttl: u32,
}

#[derive(Debug, Default, Serialize)]
pub struct HistoryResult {
    pub publications: Vec<Publication>,
    pub epoch: String,
    pub offset: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct PresenceResult {
    pub presence: HashMap<String, ClientInfo>,
}

#[derive(Debug, Default, Serialize)]
pub struct PresenceStatsResult {
    pub num_clients: u32,
    pub num_users: u32,
}

#[derive(Debug, Serialize)]
pub struct RpcResult {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Box<RawValue>>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: u32,
    message: &'a str,
    #[serde(skip_serializing_if = "is_false")]
    temporary: bool,
}

/// `{"id":N,"<method>":<result>}`.
pub fn encode_reply<T: Serialize>(id: u32, method: &str, result: &T) -> Bytes {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(b"{\"id\":");
    out.extend_from_slice(id.to_string().as_bytes());
    out.extend_from_slice(b",\"");
    out.extend_from_slice(method.as_bytes());
    out.extend_from_slice(b"\":");
    serde_json::to_writer(&mut out, result).expect("reply types always serialize");
    out.push(b'}');
    Bytes::from(out)
}

/// `{"id":N,"<method>":{}}`: the reply of commands whose result is empty.
pub fn encode_empty_reply(id: u32, method: &str) -> Bytes {
    Bytes::from(format!("{{\"id\":{id},\"{method}\":{{}}}}"))
}

/// `{"id":N,"error":{"code":C,"message":"..."}}`.
pub fn encode_error(id: u32, err: ErrorCode) -> Bytes {
    encode_error_message(id, err, err.message)
}

/// An error reply with a message that says more than the code's default.
pub fn encode_error_message(id: u32, err: ErrorCode, message: &str) -> Bytes {
    #[derive(Serialize)]
    struct Reply<'a> {
        id: u32,
        error: ErrorBody<'a>,
    }
    let reply = Reply {
        id,
        error: ErrorBody {
            code: err.code,
            message,
            temporary: err.temporary,
        },
    };
    Bytes::from(serde_json::to_vec(&reply).expect("error reply serializes"))
}

/// The kinds of push a channel can carry.
#[derive(Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PushBody<'a> {
    Pub(&'a Publication),
    Join { info: &'a ClientInfo },
    Leave { info: &'a ClientInfo },
    Unsubscribe { code: u32, reason: &'a str },
    Subscribe(&'a SubscribeResult),
    Message { data: &'a RawValue },
}

/// `{"push":{"channel":"...","pub":{...}}}` and the other pushes.
pub fn encode_push(channel: &str, body: PushBody<'_>) -> Bytes {
    #[derive(Serialize)]
    struct Inner<'a> {
        #[serde(skip_serializing_if = "str::is_empty")]
        channel: &'a str,
        #[serde(flatten)]
        body: PushBody<'a>,
    }
    #[derive(Serialize)]
    struct Outer<'a> {
        push: Inner<'a>,
    }
    Bytes::from(
        serde_json::to_vec(&Outer {
            push: Inner { channel, body },
        })
        .expect("push serializes"),
    )
}

/// `{"push":{"disconnect":{"code":C,"reason":"...","reconnect":B}}}`.
pub fn encode_disconnect(code: u16, reason: &str, reconnect: bool) -> Bytes {
    let body = serde_json::json!({
        "push": {"disconnect": {"code": code, "reason": reason, "reconnect": reconnect}}
    });
    Bytes::from(serde_json::to_vec(&body).expect("disconnect push serializes"))
}

/// The server's ping: an empty object.
pub const PING: &[u8] = b"{}";

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    #[test]
    fn publication_push_has_the_sdk_shape() {
        let p = Publication {
            data: raw("{\"text\":\"hi\"}"),
            offset: 7,
            info: Some(ClientInfo::new("alice", "c1")),
            tags: None,
        };
        let b = encode_push("chat:1", PushBody::Pub(&p));
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["push"]["channel"], "chat:1");
        assert_eq!(v["push"]["pub"]["offset"], 7);
        assert_eq!(v["push"]["pub"]["data"]["text"], "hi");
        assert_eq!(v["push"]["pub"]["info"]["user"], "alice");
    }

    #[test]
    fn join_and_unsubscribe_pushes() {
        let info = ClientInfo::new("bob", "c2");
        let v: serde_json::Value =
            serde_json::from_slice(&encode_push("r", PushBody::Join { info: &info })).unwrap();
        assert_eq!(v["push"]["join"]["info"]["client"], "c2");
        let v: serde_json::Value = serde_json::from_slice(&encode_push(
            "r",
            PushBody::Unsubscribe {
                code: 2000,
                reason: "server unsubscribe",
            },
        ))
        .unwrap();
        assert_eq!(v["push"]["unsubscribe"]["code"], 2000);
    }

    #[test]
    fn delta_pushes_carry_data_as_a_json_string() {
        let p = Publication {
            data: raw(r#"{"a":"é"}"#),
            offset: 3,
            info: None,
            tags: None,
        };
        let v: serde_json::Value =
            serde_json::from_slice(&encode_delta_push("r", &p, DeltaData::Full)).unwrap();
        assert_eq!(v["push"]["pub"]["data"], r#"{"a":"é"}"#);
        assert_eq!(v["push"]["pub"]["offset"], 3);
        assert!(v["push"]["pub"].get("delta").is_none());
        let v: serde_json::Value =
            serde_json::from_slice(&encode_delta_push("r", &p, DeltaData::Delta("9\n1@0,0;")))
                .unwrap();
        assert_eq!(v["push"]["pub"]["data"], "9\n1@0,0;");
        assert_eq!(v["push"]["pub"]["delta"], true);
        let s = p.with_string_data();
        assert_eq!(
            serde_json::from_str::<String>(s.data.get()).unwrap(),
            p.data.get()
        );
    }

    #[test]
    fn disconnect_push() {
        let v: serde_json::Value =
            serde_json::from_slice(&encode_disconnect(3008, "slow", true)).unwrap();
        assert_eq!(v["push"]["disconnect"]["code"], 3008);
        assert_eq!(v["push"]["disconnect"]["reason"], "slow");
        assert_eq!(v["push"]["disconnect"]["reconnect"], true);
    }

    #[test]
    fn replies_and_errors() {
        let v: serde_json::Value =
            serde_json::from_slice(&encode_error(4, ErrorCode::PERMISSION_DENIED)).unwrap();
        assert_eq!(v["id"], 4);
        assert_eq!(v["error"]["code"], 103);
        let v: serde_json::Value =
            serde_json::from_slice(&encode_empty_reply(5, "publish")).unwrap();
        assert_eq!(v["publish"], serde_json::json!({}));
        let r = SubscribeResult {
            recoverable: true,
            epoch: "e".into(),
            offset: 3,
            ..Default::default()
        };
        let v: serde_json::Value =
            serde_json::from_slice(&encode_reply(6, "subscribe", &r)).unwrap();
        assert_eq!(v["subscribe"]["offset"], 3);
        assert!(v["subscribe"].get("recovered").is_none());
    }
}
