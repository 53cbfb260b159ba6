//! The connect proxy: a client connecting without a token is described to the backend
//! (its client id, transport, the `data`, `name` and `version` it sent, and the forwarded
//! headers, cookies among them), and the backend says who it is.

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::ProxyError;

/// What the node sends (Centrifugo's connect proxy request fields).
#[derive(Debug, Serialize)]
pub struct ConnectProxyRequest<'a> {
    pub client: &'a str,
    pub transport: &'a str,
    pub protocol: &'a str,
    pub encoding: &'a str,
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
        let info = match (self.info.take(), self.b64info.take()) {
            (Some(info), _) => Some(info),
            (None, Some(b64)) => Some(json_from_base64(&b64, "b64info")?),
            (None, None) => None,
        };
        if let Some(info) = &info {
            roomcast_proto::data::check(info, max_depth)
                .map_err(|e| ProxyError::Garbage(format!("info: {e}")))?;
        }
        Ok(info)
    }
}

/// Base64 that must hold JSON (the JSON protocol carries no binary payloads).
pub(super) fn json_from_base64(b64: &str, what: &str) -> Result<Box<RawValue>, ProxyError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| ProxyError::Garbage(format!("{what}: {e}")))?;
    let text =
        String::from_utf8(bytes).map_err(|_| ProxyError::Garbage(format!("{what}: not UTF-8")))?;
    RawValue::from_string(text).map_err(|e| ProxyError::Garbage(format!("{what}: not JSON: {e}")))
}
