//! The RPC proxy: a client's `rpc` call (any method but roomcast's own `roomcast.*`) is
//! answered by the backend; its result's `data` is the reply the client gets.

use roomcast_proto::RpcResult;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::connect::json_from_base64;
use super::ProxyError;

/// What the node sends (Centrifugo's RPC proxy request fields).
#[derive(Debug, Serialize)]
pub struct RpcProxyRequest<'a> {
    pub client: &'a str,
    pub transport: &'a str,
    pub protocol: &'a str,
    pub encoding: &'a str,
    pub user: &'a str,
    pub method: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<&'a RawValue>,
    /// The caller's connection info, when it has some.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info: Option<&'a RawValue>,
}

/// What the backend answers.
#[derive(Debug, Default, Deserialize)]
pub struct RpcProxyResult {
    pub data: Option<Box<RawValue>>,
    /// The same, base64-encoded (it must decode to JSON on this JSON-protocol server).
    pub b64data: Option<String>,
}

impl RpcProxyResult {
    /// The client's reply (`{"id":N,"rpc":{"data":...}}`), its data checked like publication data.
    pub fn reply(self, max_depth: usize) -> Result<RpcResult, ProxyError> {
        let data = match (self.data, self.b64data) {
            (Some(d), _) => Some(d),
            (None, Some(b64)) => Some(json_from_base64(&b64, "b64data")?),
            (None, None) => None,
        };
        if let Some(d) = &data {
            roomcast_proto::data::check(d, max_depth)
                .map_err(|e| ProxyError::Garbage(format!("data: {e}")))?;
        }
        Ok(RpcResult { data })
    }
}
