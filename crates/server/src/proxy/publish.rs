//! The publish proxy: a publication from a client, in a namespace with `proxy_publish`,
//! is sent to the backend before anything is stored; the backend accepts it (optionally
//! with new data, which subscribers and history then see instead) or refuses it.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{payload, Caller, ProxyError};

/// What the node sends (Centrifugo's publish proxy request fields).
#[derive(Debug, Serialize)]
pub struct PublishProxyRequest<'a> {
    /// Who asks: client id, transport, protocol and encoding.
    #[serde(flatten)]
    pub caller: Caller<'a>,
    pub user: &'a str,
    pub channel: &'a str,
    pub data: &'a RawValue,
    /// The publisher's connection info, when it has some.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info: Option<&'a RawValue>,
}

/// What the backend answers when it accepts.
#[derive(Debug, Default, Deserialize)]
pub struct PublishProxyResult {
    /// Replaces the client's data when present.
    pub data: Option<Box<RawValue>>,
    /// The same, base64-encoded (it must decode to JSON on this JSON-protocol server).
    pub b64data: Option<String>,
    /// Accepted and ignored: roomcast stores every publication (store-first history).
    #[serde(default)]
    pub skip_history: bool,
}

impl PublishProxyResult {
    /// The data to publish instead of the client's, checked like client data; `None`:
    /// publish the client's data as it is.
    pub fn rewritten(self, max_depth: usize) -> Result<Option<Box<RawValue>>, ProxyError> {
        let data = payload(self.data, self.b64data, "data", max_depth)?;
        Ok(data)
    }
}
