//! The SSE transport (`GET /connection/sse`), as centrifuge-js's `SseTransport` uses it:
//! the connect command comes JSON-encoded in the `cf_connect` query parameter, the
//! response is a `text/event-stream` with one `data:` event per reply or push; later
//! commands come through the emulation endpoint (`emulation.rs`). JSON only (an
//! EventSource carries text). The pump is `stream.rs`'s.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::commands::Inbound;
use super::stream::{self, Framing, StreamWire};
use super::transport::Format;
use crate::node::Node;

#[derive(Deserialize)]
pub struct Params {
    /// The first commands (the connect), JSON.
    cf_connect: Option<String>,
}

/// `GET /connection/sse?cf_connect=...`.
pub async fn open(
    State(node): State<Arc<Node>>,
    Query(params): Query<Params>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = stream::admit(&node, &headers) {
        return r;
    }
    let Some(first) = params.cf_connect else {
        return (StatusCode::BAD_REQUEST, "no cf_connect parameter").into_response();
    };
    // The request head is bounded by the HTTP layer already; the commands are bounded as
    // any client message.
    if first.len() > node.config.max_message_size {
        return (StatusCode::PAYLOAD_TOO_LARGE, "cf_connect too large").into_response();
    }
    let forwarded = node.proxies.forwarded(&headers);
    let wire = StreamWire::new("sse", Format::Json, Framing::EventStream);
    let body = stream::open(node, wire, Inbound::Text(first), forwarded);
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        body,
    )
        .into_response()
}
