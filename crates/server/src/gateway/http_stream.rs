//! The HTTP-streaming transport (`POST /connection/http_stream`), as centrifuge-js's
//! `HttpStreamTransport` uses it: the request body holds the first commands (the
//! connect), the response is the connection's stream, held open; later commands come
//! through the emulation endpoint (`emulation.rs`).
//!
//! Format from the request's `Content-Type`: `application/octet-stream` is protobuf
//! (varint length-delimited replies, as the SDK's protobuf build reads them), anything
//! else JSON (one reply or push per line). The pump is `stream.rs`'s.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use super::commands::Inbound;
use super::emulation::{is_protobuf, read_body};
use super::stream::{self, Framing, StreamWire};
use super::transport::Format;
use crate::node::Node;

/// `POST /connection/http_stream`.
pub async fn open(State(node): State<Arc<Node>>, req: Request) -> Response {
    if let Err(r) = stream::admit(&node, req.headers()) {
        return r;
    }
    let forwarded = node.proxies.forwarded(req.headers());
    let format = if is_protobuf(&req) {
        Format::Protobuf
    } else {
        Format::Json
    };
    let body = match read_body(req.into_body(), node.config.max_message_size).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let first = match format {
        Format::Protobuf => Inbound::Binary(body.to_vec()),
        Format::Json => match String::from_utf8(body.to_vec()) {
            Ok(t) => Inbound::Text(t),
            Err(_) => return (StatusCode::BAD_REQUEST, "commands are not UTF-8").into_response(),
        },
    };
    let content_type = match format {
        Format::Protobuf => "application/octet-stream",
        Format::Json => "application/json",
    };
    let wire = StreamWire::new("http_stream", format, Framing::Stream);
    let body = stream::open(node, wire, first, forwarded);
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            // nginx: pass the stream through as it is written.
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        body,
    )
        .into_response()
}
