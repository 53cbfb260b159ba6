//! The refresh proxy: a connection the connect proxy let in with an `expire_at` is not
//! asked to refresh a token (it has none); when that time comes the node asks the backend
//! instead, which extends the connection (a new `expire_at`, optionally new connection
//! `info`), ends it (`expired: true`: close 3005 "expired") or lets it live for good
//! (`expire_at` 0). Scheduling and what an answer does are in `refresher.rs`.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{payload, Caller, ProxyError};

/// What the node sends (Centrifugo's refresh proxy request fields).
#[derive(Debug, Serialize)]
pub struct RefreshProxyRequest<'a> {
    /// Who asks: client id, transport, protocol and encoding.
    #[serde(flatten)]
    pub caller: Caller<'a>,
    pub user: &'a str,
}

/// What the backend answers (Centrifugo's refresh proxy result fields).
#[derive(Debug, Default, Deserialize)]
pub struct RefreshProxyResult {
    /// The connection (or subscription) must end now.
    #[serde(default)]
    pub expired: bool,
    /// Unix seconds of the next refresh; 0 or absent: it no longer expires.
    #[serde(default)]
    pub expire_at: u64,
    /// New connection (or channel) info.
    pub info: Option<Box<RawValue>>,
    /// The same, base64-encoded (it must decode to JSON: roomcast stores JSON).
    pub b64info: Option<String>,
}

impl RefreshProxyResult {
    /// The new info, `info` or decoded `b64info`, checked like publication data.
    pub fn new_info(&mut self, max_depth: usize) -> Result<Option<Box<RawValue>>, ProxyError> {
        payload(self.info.take(), self.b64info.take(), "info", max_depth)
    }
}
