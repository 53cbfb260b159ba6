//! HTTP surface of a node: the connection endpoints (WebSocket; HTTP-streaming, SSE and
//! their emulation endpoint, served by `gateway/`), the server API, health and readiness,
//! metrics, and the embedded chat and admin pages (`page/`, unless `web_pages` is off).
//!
//! The WebSocket handshake is done here rather than by axum's `WebSocketUpgrade`, because
//! roomcast runs its own lean WebSocket layer (see `gateway/ws.rs`) on the raw socket: the
//! upgraded connection is taken back from hyper as the `TcpStream` it was accepted as.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::Router;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::gateway::transport::Format;
use crate::node::Node;

pub mod api;
pub mod chat;
mod connections;
pub mod error;
mod history;
mod page;
mod personal;
pub mod ready;

/// The node's routes; `api` holds the server API's slots (shared with the gRPC API).
pub fn router(node: Arc<Node>, api: api::Api) -> Router {
    let pages = if node.config.web_pages {
        page::routes(node.clone())
    } else {
        Router::new()
    };
    let metrics_route = if node.config.metrics {
        Router::new().route("/metrics", get(metrics))
    } else {
        Router::new()
    };
    Router::new()
        .route("/connection/websocket", any(websocket))
        .route(
            "/connection/http_stream",
            post(crate::gateway::http_stream::open),
        )
        .route("/connection/sse", get(crate::gateway::sse::open))
        .route("/emulation", post(crate::gateway::emulation::handle))
        .route("/api/{method}", post(api::call).with_state(api))
        .route("/health", get(ready::health))
        .route("/ready", get(ready::ready))
        .merge(metrics_route)
        .with_state(node)
        .merge(pages)
}

/// Prometheus text exposition (see `metrics.rs`).
async fn metrics(State(node): State<Arc<Node>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        crate::metrics::render(&node).await,
    )
        .into_response()
}

/// A router with only a WebSocket echo endpoint at `/`, on the same WebSocket layer, for
/// conformance runs (`roomcast ws-echo`).
pub fn echo_router(max_message: usize) -> Router {
    Router::new().route(
        "/",
        any(move |req: Request| async move {
            match handshake(req) {
                Err(r) => r,
                Ok((response, on_upgrade)) => {
                    tokio::spawn(async move {
                        if let Some((tcp, leftover)) = take_socket(on_upgrade).await {
                            crate::gateway::serve_echo(tcp, leftover, max_message).await;
                        }
                    });
                    response
                }
            }
        }),
    )
}

async fn websocket(State(node): State<Arc<Node>>, req: Request) -> Response {
    if let Err(r) = check_origin(&node.config.allowed_origins, req.headers()) {
        return r;
    }
    let limit = node.config.max_connections;
    if limit > 0 && node.keepalive.len() >= limit {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "connection limit reached on this node",
        )
            .into_response();
    }
    let forwarded = node.proxies.forwarded(req.headers());
    let (format, subprotocol) = format_of(&req);
    let (mut response, on_upgrade) = match handshake(req) {
        Ok(x) => x,
        Err(r) => return r,
    };
    if let Some(p) = subprotocol {
        response
            .headers_mut()
            .insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(p));
    }
    // Tracked, so the node's drain waits for the connection.
    let tasks = node.tasks.clone();
    let task = async move {
        if let Some((tcp, leftover)) = Box::pin(take_socket(on_upgrade)).await {
            crate::gateway::serve(node, tcp, leftover, forwarded, format).await;
        }
    };
    tracing::trace!(bytes = size_of_val(&task), "connection task size");
    tasks.spawn(task);
    response
}

/// The subprotocol the SDKs' protobuf builds ask for (centrifuge-js, -dart, -swift, ...).
const PROTOBUF_SUBPROTOCOL: &str = "centrifuge-protobuf";

/// The format a WebSocket client asks for, as the SDKs ask: `format=protobuf` in the query
/// (centrifuge-go, -python) or the `centrifuge-protobuf` subprotocol (the others), which
/// the 101 response must then name. Anything else is JSON.
fn format_of(req: &Request) -> (Format, Option<&'static str>) {
    let asked_subprotocol = req
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == PROTOBUF_SUBPROTOCOL);
    let asked_query = req
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "format=protobuf"));
    match (asked_subprotocol, asked_query) {
        (true, _) => (Format::Protobuf, Some(PROTOBUF_SUBPROTOCOL)),
        (false, true) => (Format::Protobuf, None),
        (false, false) => (Format::Json, None),
    }
}

fn bad(status: StatusCode, message: &'static str) -> Response {
    (status, message).into_response()
}

/// Checks an RFC 6455 upgrade request and builds the 101 response.
// The error is the response itself, built once per refused request: no need to box it.
#[allow(clippy::result_large_err)]
fn handshake(mut req: Request) -> Result<(Response, hyper::upgrade::OnUpgrade), Response> {
    let h = req.headers();
    if req.method() != Method::GET {
        return Err(bad(
            StatusCode::METHOD_NOT_ALLOWED,
            "WebSocket upgrade needs GET",
        ));
    }
    let has_token = |name: header::HeaderName, token: &str| {
        h.get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    if !has_token(header::UPGRADE, "websocket") || !has_token(header::CONNECTION, "upgrade") {
        return Err(bad(
            StatusCode::BAD_REQUEST,
            "expected a WebSocket upgrade request",
        ));
    }
    if h.get(header::SEC_WEBSOCKET_VERSION)
        .and_then(|v| v.to_str().ok())
        != Some("13")
    {
        let mut r = bad(
            StatusCode::UPGRADE_REQUIRED,
            "unsupported WebSocket version (13 is)",
        );
        r.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return Err(r);
    }
    let Some(key) = h.get(header::SEC_WEBSOCKET_KEY) else {
        return Err(bad(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key"));
    };
    let accept = roomcast_ws::accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    let response = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::UPGRADE, "websocket")
        .header(header::CONNECTION, "Upgrade")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .body(Body::empty())
        .expect("static response parts are valid");
    Ok((response, on_upgrade))
}

/// Waits for hyper to hand the connection over and takes back the TCP socket.
async fn take_socket(on_upgrade: hyper::upgrade::OnUpgrade) -> Option<(TcpStream, bytes::Bytes)> {
    let upgraded = match on_upgrade.await {
        Ok(u) => u,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            return None;
        }
    };
    match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => Some((parts.io.into_inner(), parts.read_buf)),
        Err(_) => {
            tracing::error!("upgraded connection is not a TCP socket");
            None
        }
    }
}

/// Browsers send `Origin`; only listed origins (or, with no list, the server's own: an
/// `http` or `https` origin whose host and port are the `Host` header) may connect. Other
/// clients send no `Origin` and are not affected. An `Origin` that is not ASCII matches
/// nothing (it is not treated as absent).
#[allow(clippy::result_large_err)]
pub(crate) fn check_origin(allowed: &[String], h: &HeaderMap) -> Result<(), Response> {
    let Some(origin) = h.get(header::ORIGIN) else {
        return Ok(());
    };
    let Ok(origin) = origin.to_str() else {
        return Err(bad(StatusCode::FORBIDDEN, "origin not allowed"));
    };
    let ok = if allowed.is_empty() {
        let host = h
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        match origin.split_once("://") {
            Some((scheme, rest)) => {
                (scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https"))
                    && !host.is_empty()
                    && rest.eq_ignore_ascii_case(host)
            }
            None => false,
        }
    } else {
        allowed
            .iter()
            .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
    };
    if ok {
        Ok(())
    } else {
        Err(bad(StatusCode::FORBIDDEN, "origin not allowed"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, host.parse().unwrap());
        if let Some(o) = origin {
            h.insert(header::ORIGIN, o.parse().unwrap());
        }
        h
    }

    #[test]
    fn origins() {
        assert!(check_origin(&[], &headers(None, "a:1")).is_ok());
        assert!(check_origin(&[], &headers(Some("http://a:1"), "a:1")).is_ok());
        assert!(check_origin(&[], &headers(Some("http://evil"), "a:1")).is_err());
        let list = vec!["https://chat.example".to_owned()];
        assert!(check_origin(&list, &headers(Some("https://chat.example"), "x")).is_ok());
        assert!(check_origin(&list, &headers(Some("https://other.example"), "x")).is_err());
        assert!(check_origin(&["*".to_owned()], &headers(Some("https://any"), "x")).is_ok());
        // Issue 10: the scheme counts, and a non-ASCII origin is a mismatch.
        assert!(check_origin(&[], &headers(Some("https://a:1"), "a:1")).is_ok());
        assert!(check_origin(&[], &headers(Some("evil://a:1"), "a:1")).is_err());
        assert!(check_origin(&[], &headers(Some("null"), "a:1")).is_err());
        let mut h = headers(None, "a:1");
        h.insert(
            header::ORIGIN,
            HeaderValue::from_bytes(b"http://a:1\xff").unwrap(),
        );
        assert!(check_origin(&[], &h).is_err());
        assert!(check_origin(&["*".to_owned()], &h).is_err());
    }
}
