//! The connect proxy: a client connecting without a token is described to the backend
//! (its client id, transport, the `data`, `name` and `version` it sent, and the forwarded
//! headers, cookies among them), and the backend says who it is.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{payload, Caller, ProxyError};

/// What the node sends (Centrifugo's connect proxy request fields).
#[derive(Debug, Serialize)]
pub struct ConnectProxyRequest<'a> {
    /// Who asks: client id, transport, protocol and encoding.
    #[serde(flatten)]
    pub caller: Caller<'a>,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub name: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub version: &'a str,
    /// The connect command's `data`, as the client sent it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<&'a RawValue>,
}

/// What the backend grants (fields roomcast does not use, such as `meta` and `subs`,
/// are accepted and ignored).
#[derive(Debug, Deserialize)]
pub struct ConnectProxyResult {
    /// The user id; empty for an anonymous connection.
    #[serde(default)]
    pub user: String,
    /// Unix seconds the connection expires at; 0 or absent: never.
    #[serde(default)]
    pub expire_at: u64,
    /// Connection info attached to the client's publications, joins and presence.
    pub info: Option<Box<RawValue>>,
    /// The same, base64-encoded (it must decode to JSON on this JSON-protocol server).
    pub b64info: Option<String>,
    /// Channels the server subscribes the connection to.
    #[serde(default)]
    pub channels: Vec<String>,
}

impl ConnectProxyResult {
    /// The connection info, `info` or decoded `b64info`, checked like publication data.
    pub fn conn_info(&mut self, max_depth: usize) -> Result<Option<Box<RawValue>>, ProxyError> {
        payload(self.info.take(), self.b64info.take(), "info", max_depth)
    }
}
