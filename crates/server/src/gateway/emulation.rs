//! Bidirectional emulation: the endpoint (`POST /emulation`) through which a client on a
//! one-way stream (HTTP-streaming, SSE) sends its commands after the first, and the
//! registry of this node's streams it routes them by.
//!
//! Each stream gets a random session id (a v4 UUID: whoever knows it can send commands on
//! that connection, so it is never logged), sent in its connect reply with this node's
//! id. The SDK POSTs `{session, node, data}` (or the protobuf `EmulationRequest`); the
//! commands are handed to the stream's task through a bounded queue and run there in the
//! order they arrive, with the connection's limits. Answers, as centrifuge-js reads them:
//! - 204: handed to the stream, or the session is gone from this running node (its
//!   stream has ended, so the SDK learns of it there);
//! - 404: the request names another node: this node cannot reach that session. roomcast
//!   does not forward emulation requests between nodes; a cluster needs sticky routing
//!   (every request of a client to the same node: `ip_hash` in `deploy/nginx/roomcast.conf`).
//!   The SDK closes the stream on 404 and connects again, to whichever node it reaches;
//! - 400 (malformed, too many commands), 413 (body too large), 408 (body too slow):
//!   the command is refused, the stream goes on;
//! - 503: the stream's queue stayed full for `QUEUE_WAIT` (its client reads none of the
//!   replies): the SDK closes the stream and reconnects.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use roomcast_proto::emulation::{self, Commands};
use tokio::sync::mpsc;

use super::commands::Inbound;
use crate::node::Node;

/// Emulation requests queued for one stream before senders wait.
const QUEUE: usize = 16;
/// How long a request waits for room in its stream's queue before it is answered 503.
const QUEUE_WAIT: Duration = Duration::from_secs(5);
/// Time a client has to send the whole body of a request (the stream's first commands or
/// an emulation request).
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Commands one emulation request may carry (an SDK sends its resubscriptions in one).
pub const MAX_COMMANDS: usize = 1024;
/// Bytes an emulation request may add to the commands it carries (its envelope).
const ENVELOPE: usize = 1024;

/// This node's streams by session id.
#[derive(Default)]
pub struct Streams {
    /// The queue of each open stream; an entry lives exactly as long as its stream's task.
    by_session: Mutex<HashMap<Arc<str>, mpsc::Sender<Inbound>>>,
}

impl Streams {
    /// Registers a new stream: its session id and the queue its commands arrive on.
    pub(super) fn open(&self) -> (Arc<str>, mpsc::Receiver<Inbound>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let id: Arc<str> = uuid::Uuid::new_v4().to_string().into();
        self.by_session
            .lock()
            .expect("streams lock")
            .insert(id.clone(), tx);
        (id, rx)
    }

    /// The stream ended.
    pub(super) fn close(&self, id: &str) {
        self.by_session.lock().expect("streams lock").remove(id);
    }

    fn queue(&self, id: &str) -> Option<mpsc::Sender<Inbound>> {
        self.by_session
            .lock()
            .expect("streams lock")
            .get(id)
            .cloned()
    }

    /// Open streams on this node.
    pub fn len(&self) -> usize {
        self.by_session.lock().expect("streams lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whether a request says its body is protobuf (`application/octet-stream`, as the SDKs'
/// protobuf builds send).
pub fn is_protobuf(req: &Request) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().starts_with("application/octet-stream"))
}

/// Reads a request body of at most `limit` bytes within `BODY_TIMEOUT`; the error is the
/// response to give.
pub async fn read_body(body: Body, limit: usize) -> Result<bytes::Bytes, Response> {
    let limited = http_body_util::Limited::new(body, limit);
    match tokio::time::timeout(BODY_TIMEOUT, limited.collect()).await {
        Err(_) => Err((StatusCode::REQUEST_TIMEOUT, "request body too slow").into_response()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            Err((StatusCode::PAYLOAD_TOO_LARGE, "request body too large").into_response())
        }
        Ok(Err(_)) => Err((StatusCode::BAD_REQUEST, "request body unreadable").into_response()),
        Ok(Ok(c)) => Ok(c.to_bytes()),
    }
}

/// `POST /emulation`.
pub async fn handle(State(node): State<Arc<Node>>, req: Request) -> Response {
    if let Err(r) = crate::http::check_origin(&node.config.allowed_origins, req.headers()) {
        return r;
    }
    let protobuf = is_protobuf(&req);
    let body = match read_body(req.into_body(), node.config.max_message_size + ENVELOPE).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let decoded = if protobuf {
        emulation::decode_protobuf(&body, MAX_COMMANDS)
    } else {
        emulation::decode_json(&body, MAX_COMMANDS)
    };
    let request = match decoded {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(error = %e, "emulation request refused");
            return (StatusCode::BAD_REQUEST, e.to_string()).into_response();
        }
    };
    if !request.node.is_empty() && request.node != node.id {
        // Not forwarded between nodes: see the module doc (sticky routing).
        return (
            StatusCode::NOT_FOUND,
            "the session is on another node (emulation needs sticky routing)",
        )
            .into_response();
    }
    let Some(queue) = node.streams.queue(&request.session) else {
        return StatusCode::NO_CONTENT.into_response();
    };
    let msg = match request.commands {
        Commands::Text(t) => Inbound::Text(t),
        Commands::Binary(b) => Inbound::Binary(b),
    };
    match tokio::time::timeout(QUEUE_WAIT, queue.send(msg)).await {
        // Sent, or the stream ended meanwhile: either way nothing more to say.
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the stream takes no commands (its client reads nothing)",
        )
            .into_response(),
    }
}
