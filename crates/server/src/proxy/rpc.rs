//! The RPC proxy: a client's `rpc` call (any method but roomcast's own `roomcast.*`) is
//! answered by the backend; its result's `data` is the reply the client gets.

use roomcast_proto::RpcResult;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{payload, Caller, ProxyError};

/// What the node sends (Centrifugo's RPC proxy request fields).
#[derive(Debug, Serialize)]
pub struct RpcProxyRequest<'a> {
    /// Who asks: client id, transport, protocol and encoding.
    #[serde(flatten)]
    pub caller: Caller<'a>,
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
        let data = payload(self.data, self.b64data, "data", max_depth)?;
        Ok(RpcResult { data })
    }
}
