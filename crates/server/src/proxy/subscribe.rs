//! The subscribe proxy: a client subscribing without a token to a channel of a
//! `proxy_subscribe` namespace is granted or refused by the backend (in place of
//! `allow_subscribe_for_client`).

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::Caller;

/// What the node sends (Centrifugo's subscribe proxy request fields).
#[derive(Debug, Serialize)]
pub struct SubscribeProxyRequest<'a> {
    /// Who asks: client id, transport, protocol and encoding.
    #[serde(flatten)]
    pub caller: Caller<'a>,
    pub user: &'a str,
    pub channel: &'a str,
    /// The subscribe command's `data`, as the client sent it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<&'a RawValue>,
    /// The subscriber's connection info, when it has some.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info: Option<&'a RawValue>,
}

/// What the backend answers when it grants. Its fields `info`, `data` and `override` are
/// accepted and not used yet: the grant itself is the answer.
#[derive(Debug, Default, Deserialize)]
pub struct SubscribeProxyResult {
    /// Unix seconds the subscription expires at, in a namespace with `proxy_sub_refresh`
    /// (the sub_refresh proxy is asked then); 0 or absent: never.
    #[serde(default)]
    pub expire_at: u64,
}
