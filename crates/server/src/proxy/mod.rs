//! Backend proxies, as Centrifugo defines them: the node asks the application's backend
//! over HTTP (a JSON POST) before it lets a client connect without a token (`connect`) or
//! publishes what a client sent in a namespace with `proxy_publish` (`publish`). The
//! backend answers `{"result": {...}}` (go ahead, possibly with changes),
//! `{"error": {"code": N, "message": "..."}}` (refuse this command) or
//! `{"disconnect": {"code": N, "reason": "..."}}` (close the connection).
//!
//! - `mod.rs`: the shared call (bounded concurrency, timeout, response size, answer
//!   decoding) and what a failure means to the client;
//! - `connect.rs`, `publish.rs`, `rpc.rs`, `subscribe.rs`, `refresh.rs`, `sub_refresh.rs`:
//!   each proxy's request and result;
//! - `refresher.rs`: when connections and subscriptions are due for the refresh and
//!   sub_refresh proxies, and what the answers do to them.
//!
//! Invariants: every call holds one of `proxy_max_in_flight` slots and ends within the
//! proxy's timeout (waiting for a slot included); an answer that is not one of the three
//! shapes, or larger than `proxy_max_response_bytes`, is a failure like the backend being
//! down: the client gets the temporary "internal" error (100), never a guess.

mod connect;
mod publish;
mod refresh;
pub mod refresher;
mod rpc;
mod sub_refresh;
mod subscribe;

pub use connect::{ConnectProxyRequest, ConnectProxyResult};
pub use publish::{PublishProxyRequest, PublishProxyResult};
pub use refresh::{RefreshProxyRequest, RefreshProxyResult};
pub use refresher::{Refreshed, Refresher};
pub use rpc::{RpcProxyRequest, RpcProxyResult};
pub use sub_refresh::SubRefreshProxyRequest;
pub use subscribe::{SubscribeProxyRequest, SubscribeProxyResult};

use std::sync::Arc;
use std::time::Duration;

use hyper::header::{HeaderName, HeaderValue};
use hyper::{HeaderMap, Uri};
use roomcast_proto::{Disconnect, ErrorCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::config::Config;
use crate::outbound::{parse_url, HttpClient, OutboundError};

/// Longest backend error message passed on to a client.
const MAX_MESSAGE: usize = 256;

/// What the backend decided.
#[derive(Debug)]
pub enum Outcome<T> {
    /// Go ahead with this result.
    Accept(T),
    /// Refuse the command with this error (code, message).
    Refuse(ErrorCode, String),
    /// Close the connection.
    Disconnect(Disconnect),
}

/// The backend gave no decision.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("backend unavailable: {0}")]
    Unavailable(#[from] OutboundError),
    #[error("backend answered garbage: {0}")]
    Garbage(String),
    #[error("no answer within {0:?} (backend slow, or every proxy slot busy)")]
    Timeout(Duration),
}

/// One proxy endpoint.
#[derive(Debug, Clone)]
struct Endpoint {
    uri: Uri,
    timeout: Duration,
}

/// The node's proxies and what they share.
pub struct Proxies {
    client: HttpClient,
    connect: Option<Endpoint>,
    publish: Option<Endpoint>,
    rpc: Option<Endpoint>,
    subscribe: Option<Endpoint>,
    refresh: Option<Endpoint>,
    sub_refresh: Option<Endpoint>,
    /// Names of the upgrade request headers forwarded to the backend.
    headers: Vec<HeaderName>,
    /// Calls in flight at once on this node (`proxy_max_in_flight`): a slow backend
    /// cannot pile up unbounded requests and sockets.
    slots: Arc<Semaphore>,
    max_bytes: usize,
}

/// A backend's answer, as the wire has it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Answer<T> {
    result: Option<T>,
    error: Option<WireError>,
    disconnect: Option<WireDisconnect>,
}

#[derive(Deserialize)]
struct WireError {
    code: u32,
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
struct WireDisconnect {
    code: u16,
    #[serde(default)]
    reason: String,
}

impl Proxies {
    /// The proxies `config` names (its URLs were checked by `Config::validate`).
    pub fn new(config: &Config, client: HttpClient) -> Result<Proxies, OutboundError> {
        let endpoint = |url: &Option<String>, ms: u64| -> Result<Option<Endpoint>, OutboundError> {
            url.as_deref()
                .map(|u| {
                    Ok(Endpoint {
                        uri: parse_url(u)?,
                        timeout: Duration::from_millis(ms.max(1)),
                    })
                })
                .transpose()
        };
        Ok(Proxies {
            client,
            connect: endpoint(
                &config.proxy_connect_endpoint,
                config.proxy_connect_timeout_ms,
            )?,
            publish: endpoint(
                &config.proxy_publish_endpoint,
                config.proxy_publish_timeout_ms,
            )?,
            rpc: endpoint(&config.proxy_rpc_endpoint, config.proxy_rpc_timeout_ms)?,
            subscribe: endpoint(
                &config.proxy_subscribe_endpoint,
                config.proxy_subscribe_timeout_ms,
            )?,
            refresh: endpoint(
                &config.proxy_refresh_endpoint,
                config.proxy_refresh_timeout_ms,
            )?,
            sub_refresh: endpoint(
                &config.proxy_sub_refresh_endpoint,
                config.proxy_sub_refresh_timeout_ms,
            )?,
            headers: config
                .proxy_http_headers
                .iter()
                .filter_map(|h| HeaderName::from_bytes(h.as_bytes()).ok())
                .collect(),
            slots: Arc::new(Semaphore::new(config.proxy_max_in_flight.max(1))),
            max_bytes: config.proxy_max_response_bytes,
        })
    }

    /// No proxy at all (tests, and nodes that configure none).
    pub fn none() -> Proxies {
        Proxies {
            client: HttpClient::new(),
            connect: None,
            publish: None,
            rpc: None,
            subscribe: None,
            refresh: None,
            sub_refresh: None,
            headers: Vec::new(),
            slots: Arc::new(Semaphore::new(1)),
            max_bytes: 0,
        }
    }

    pub fn has_connect(&self) -> bool {
        self.connect.is_some()
    }

    pub fn has_publish(&self) -> bool {
        self.publish.is_some()
    }

    pub fn has_rpc(&self) -> bool {
        self.rpc.is_some()
    }

    pub fn has_refresh(&self) -> bool {
        self.refresh.is_some()
    }

    pub fn has_sub_refresh(&self) -> bool {
        self.sub_refresh.is_some()
    }

    /// Asks the refresh proxy; `None` when there is none.
    pub async fn refresh(
        &self,
        req: &RefreshProxyRequest<'_>,
        headers: &[(HeaderName, HeaderValue)],
    ) -> Option<Result<Outcome<RefreshProxyResult>, ProxyError>> {
        let endpoint = self.refresh.as_ref()?;
        Some(self.call(endpoint, req, headers).await)
    }

    /// Asks the sub_refresh proxy; `None` when there is none.
    pub async fn sub_refresh(
        &self,
        req: &SubRefreshProxyRequest<'_>,
        headers: &[(HeaderName, HeaderValue)],
    ) -> Option<Result<Outcome<RefreshProxyResult>, ProxyError>> {
        let endpoint = self.sub_refresh.as_ref()?;
        Some(self.call(endpoint, req, headers).await)
    }

    /// The configured headers of a client's upgrade request, to forward with its calls.
    pub fn forwarded(&self, headers: &HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
        let mut out = Vec::new();
        for name in &self.headers {
            for value in headers.get_all(name) {
                out.push((name.clone(), value.clone()));
            }
        }
        out
    }

    /// Asks the connect proxy; `None` when there is none.
    pub async fn connect(
        &self,
        req: &ConnectProxyRequest<'_>,
        headers: &[(HeaderName, HeaderValue)],
    ) -> Option<Result<Outcome<ConnectProxyResult>, ProxyError>> {
        let endpoint = self.connect.as_ref()?;
        Some(self.call(endpoint, req, headers).await)
    }

    /// Asks the publish proxy; `None` when there is none.
    pub async fn publish(
        &self,
        req: &PublishProxyRequest<'_>,
        headers: &[(HeaderName, HeaderValue)],
    ) -> Option<Result<Outcome<PublishProxyResult>, ProxyError>> {
        let endpoint = self.publish.as_ref()?;
        Some(self.call(endpoint, req, headers).await)
    }

    /// Asks the RPC proxy; `None` when there is none.
    pub async fn rpc(
        &self,
        req: &RpcProxyRequest<'_>,
        headers: &[(HeaderName, HeaderValue)],
    ) -> Option<Result<Outcome<RpcProxyResult>, ProxyError>> {
        let endpoint = self.rpc.as_ref()?;
        Some(self.call(endpoint, req, headers).await)
    }

    /// Asks the subscribe proxy; `None` when there is none.
    pub async fn subscribe(
        &self,
        req: &SubscribeProxyRequest<'_>,
        headers: &[(HeaderName, HeaderValue)],
    ) -> Option<Result<Outcome<SubscribeProxyResult>, ProxyError>> {
        let endpoint = self.subscribe.as_ref()?;
        Some(self.call(endpoint, req, headers).await)
    }

    async fn call<Q: Serialize, R: DeserializeOwned>(
        &self,
        endpoint: &Endpoint,
        req: &Q,
        headers: &[(HeaderName, HeaderValue)],
    ) -> Result<Outcome<R>, ProxyError> {
        let body = serde_json::to_vec(req).expect("proxy requests serialize");
        let exchange = async {
            let _slot = self.slots.acquire().await.expect("never closed");
            self.client
                .post_json(
                    &endpoint.uri,
                    headers,
                    body,
                    endpoint.timeout,
                    self.max_bytes,
                )
                .await
        };
        let resp = tokio::time::timeout(endpoint.timeout, exchange)
            .await
            .map_err(|_| ProxyError::Timeout(endpoint.timeout))??;
        decode(&resp.body)
    }
}

/// Who a proxy request is about: the fields every request starts with.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Caller<'a> {
    pub client: &'a str,
    pub transport: &'a str,
    pub protocol: &'a str,
    pub encoding: &'a str,
}

impl<'a> Caller<'a> {
    /// A client on the WebSocket transport with the JSON protocol.
    pub fn websocket_json(client: &'a str) -> Caller<'a> {
        Caller {
            client,
            transport: "websocket",
            protocol: "json",
            encoding: "json",
        }
    }
}

/// A JSON payload the backend gave as `json` or as `b64` (base64 of JSON: this server
/// speaks the JSON protocol, which carries no binary), checked like publication data.
fn payload(
    json: Option<Box<serde_json::value::RawValue>>,
    b64: Option<String>,
    what: &str,
    max_depth: usize,
) -> Result<Option<Box<serde_json::value::RawValue>>, ProxyError> {
    let value = match (json, b64) {
        (Some(v), _) => Some(v),
        (None, Some(b64)) => Some(json_from_base64(&b64, what)?),
        (None, None) => None,
    };
    if let Some(v) = &value {
        roomcast_proto::data::check(v, max_depth)
            .map_err(|e| ProxyError::Garbage(format!("{what}: {e}")))?;
    }
    Ok(value)
}

/// Base64 that must hold JSON (the JSON protocol carries no binary payloads).
fn json_from_base64(b64: &str, what: &str) -> Result<Box<serde_json::value::RawValue>, ProxyError> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| ProxyError::Garbage(format!("{what}: {e}")))?;
    let text =
        String::from_utf8(bytes).map_err(|_| ProxyError::Garbage(format!("{what}: not UTF-8")))?;
    serde_json::value::RawValue::from_string(text)
        .map_err(|e| ProxyError::Garbage(format!("{what}: not JSON: {e}")))
}

/// A backend's answer as an outcome.
fn decode<R: DeserializeOwned>(body: &[u8]) -> Result<Outcome<R>, ProxyError> {
    let answer: Answer<R> =
        serde_json::from_slice(body).map_err(|e| ProxyError::Garbage(e.to_string()))?;
    match answer {
        Answer {
            result: Some(r),
            error: None,
            disconnect: None,
        } => Ok(Outcome::Accept(r)),
        Answer {
            result: None,
            error: Some(e),
            disconnect: None,
        } => {
            // Application codes as Centrifugo allows them (400-1999); a backend naming
            // a protocol code (100-399) or nonsense gets "internal".
            if !(400..2000).contains(&e.code) {
                return Err(ProxyError::Garbage(format!("error code {}", e.code)));
            }
            let code = ErrorCode {
                code: e.code,
                message: "",
                temporary: false,
            };
            Ok(Outcome::Refuse(
                code,
                e.message.chars().take(MAX_MESSAGE).collect(),
            ))
        }
        Answer {
            result: None,
            error: None,
            disconnect: Some(d),
        } => {
            // Disconnect codes are the protocol's (3000-3999) or the application's
            // (4000-4999); the backend's reason is logged, the close frame says "backend".
            if !(3000..5000).contains(&d.code) {
                return Err(ProxyError::Garbage(format!("disconnect code {}", d.code)));
            }
            tracing::debug!(code = d.code, reason = %d.reason.chars().take(MAX_MESSAGE).collect::<String>(), "backend disconnects a client");
            Ok(Outcome::Disconnect(Disconnect {
                code: d.code,
                reason: "disconnected by the backend",
            }))
        }
        _ => Err(ProxyError::Garbage(
            "not exactly one of result, error and disconnect".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct R {
        #[allow(dead_code)]
        user: String,
    }

    #[test]
    fn answers_decode_into_outcomes_and_anything_else_is_garbage() {
        assert!(matches!(
            decode::<R>(br#"{"result":{"user":"a"}}"#),
            Ok(Outcome::Accept(_))
        ));
        match decode::<R>(br#"{"error":{"code":1000,"message":"no"}}"#) {
            Ok(Outcome::Refuse(c, m)) => assert_eq!((c.code, m.as_str()), (1000, "no")),
            other => panic!("{other:?}"),
        }
        match decode::<R>(br#"{"disconnect":{"code":4500,"reason":"bye"}}"#) {
            Ok(Outcome::Disconnect(d)) => assert_eq!(d.code, 4500),
            other => panic!("{other:?}"),
        }
        for bad in [
            &b"nope"[..],
            b"{}",
            b"[]",
            br#"{"result":{"user":"a"},"error":{"code":1000}}"#,
            br#"{"error":{"code":100}}"#,
            br#"{"disconnect":{"code":1000}}"#,
            br#"{"result":{"nouser":1}}"#,
            br#"{"result":{"user":"a"},"extra":1}"#,
        ] {
            assert!(
                matches!(decode::<R>(bad), Err(ProxyError::Garbage(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
