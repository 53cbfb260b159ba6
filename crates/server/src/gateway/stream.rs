//! The one-way stream transports (HTTP-streaming and SSE): one task per connection pumps
//! the session's outbox into a streamed HTTP response body, and the commands the
//! emulation endpoint hands it (see `emulation.rs`) into the session.
//!
//! The session, its limits and its keepalive are those of a WebSocket connection: the
//! connection registers with the node's keepalive (pings are the protocol's `{}`, the SDK
//! answers through the emulation endpoint), its outbox is bounded in bytes and closes as
//! "slow" when the client does not read, and recovery is the session's own. What differs
//! is the wire:
//! - frames go into the response body: JSON newline-delimited (HTTP-streaming), protobuf
//!   varint length-delimited (HTTP-streaming with `application/octet-stream`), or one SSE
//!   event per frame (`data: <json>\n\n`);
//! - there is no close frame: a close is the protocol's disconnect push, then the end of
//!   the body;
//! - the body is a channel of `BODY_CHUNKS` chunks that hyper drains as the socket takes
//!   them; while it is full the task stops taking from the outbox (and stops reading
//!   commands), which then fills to its limit and closes as slow. A body that takes
//!   nothing for `write_timeout` while bytes wait, or does not take the disconnect push
//!   within `write_timeout` of the close, ends the connection without more ado.
//! - the client going away drops the body, which the task sees at once.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use roomcast_proto::Disconnect;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::commands::{self, Inbound};
use super::session::{Now, Session};
use super::transport::{Format, Transport};
use crate::hub::Outbox;
use crate::keepalive::Peer;
use crate::node::Node;

/// Chunks the response body holds before the connection stops taking from its outbox.
const BODY_CHUNKS: usize = 4;
/// Bytes waiting for the body past which the connection stops taking from its outbox.
const WRITE_HIGH_WATER: usize = 64 << 10;

/// How frames are laid out in the response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    /// HTTP-streaming: JSON frames each followed by a newline, protobuf frames as they are
    /// (each carries its length).
    Stream,
    /// Server-sent events: one `data:` event per JSON frame.
    EventStream,
}

/// The stream side of a connection: bytes waiting for the response body.
pub(super) struct StreamWire {
    name: &'static str,
    format: Format,
    framing: Framing,
    /// Encoded body bytes not yet handed to the body channel.
    out: BytesMut,
}

impl StreamWire {
    pub(super) fn new(name: &'static str, format: Format, framing: Framing) -> StreamWire {
        StreamWire {
            name,
            format,
            framing,
            out: BytesMut::new(),
        }
    }
}

impl Transport for StreamWire {
    fn name(&self) -> &'static str {
        self.name
    }

    fn format(&self) -> Format {
        self.format
    }

    fn write(&mut self, frame: &[u8]) {
        match (self.framing, self.format) {
            (Framing::EventStream, _) => {
                // One `data:` field per line: a frame is compact JSON, but publication data
                // is sent as the client wrote it and may hold line breaks (whitespace between
                // JSON tokens; inside strings they are escaped). The EventSource joins the
                // fields with `\n`, which is the same JSON.
                for line in frame.split(|b| *b == b'\n' || *b == b'\r') {
                    self.out.extend_from_slice(b"data: ");
                    self.out.extend_from_slice(line);
                    self.out.extend_from_slice(b"\n");
                }
                self.out.extend_from_slice(b"\n");
            }
            (Framing::Stream, Format::Json) => {
                self.out.extend_from_slice(frame);
                self.out.extend_from_slice(b"\n");
            }
            (Framing::Stream, Format::Protobuf) => self.out.extend_from_slice(frame),
        }
    }

    fn write_many(&mut self, frames: &[Bytes]) {
        for f in frames {
            self.write(f);
        }
    }

    fn close(&mut self, code: u16, reason: &str) {
        let reconnect = !(3500..4000).contains(&code) && !(4500..5000).contains(&code);
        let push = self.format.disconnect(code, reason, reconnect);
        self.write(&push);
    }
}

/// The checks every new connection passes, whatever its transport: the origin, and the
/// node's connection limit.
#[allow(clippy::result_large_err)]
pub(super) fn admit(node: &Node, headers: &HeaderMap) -> Result<(), Response> {
    crate::http::check_origin(&node.config.allowed_origins, headers)?;
    let limit = node.config.max_connections;
    if limit > 0 && node.keepalive.len() >= limit {
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            "connection limit reached on this node",
        )
            .into_response());
    }
    Ok(())
}

/// Starts a stream connection whose first commands came with the request (`first`) and
/// returns the response body it streams into. The task is tracked by the node, so a drain
/// waits for it; the node's keepalive closes it on shutdown.
pub(super) fn open(
    node: Arc<Node>,
    wire: StreamWire,
    first: Inbound,
    headers: Vec<(hyper::header::HeaderName, hyper::header::HeaderValue)>,
) -> Body {
    let (tx, mut rx) = mpsc::channel::<Bytes>(BODY_CHUNKS);
    let tasks = node.tasks.clone();
    tasks.spawn(serve(node, wire, first, headers, tx));
    Body::from_stream(futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx).map(|c| c.map(Ok::<_, Infallible>))
    }))
}

async fn serve(
    node: Arc<Node>,
    mut wire: StreamWire,
    first: Inbound,
    headers: Vec<(hyper::header::HeaderName, hyper::header::HeaderValue)>,
    body: mpsc::Sender<Bytes>,
) {
    let outbox = Arc::new(
        Outbox::new(node.config.outbox_max_bytes)
            .with_reply_limit(node.config.reply_max_bytes)
            .with_format(wire.format),
    );
    let peer = Arc::new(Peer::new(outbox.clone()));
    let mut session = Session::new(node.clone(), peer.clone(), Now::current());
    session.forward_headers(headers);
    let (stream_id, mut commands) = node.streams.open();
    session.set_stream_session(stream_id.to_string());
    let id = session.conn_id();
    node.keepalive.register(id, &peer);
    let write_timeout = Duration::from_secs(node.config.write_timeout_secs);
    let code = Box::pin(pump(
        &mut session,
        &outbox,
        &mut wire,
        first,
        &mut commands,
        &body,
        write_timeout,
    ))
    .await;
    node.streams.close(&stream_id);
    node.keepalive.unregister(id);
    if let Some(m) = crate::metrics::get() {
        m.disconnect(code);
    }
    if let Some(who) = session.identity() {
        tracing::info!(client = %who.client, user = %who.user, code, transport = wire.name, "disconnected");
    }
    outbox.close(Disconnect::CONNECTION_CLOSED);
    Box::pin(session.close()).await;
}

/// Why the pump woke.
enum Event {
    /// The body took a chunk (`false`: the body is gone).
    Sent(bool),
    /// The client went away (the response body was dropped).
    Gone,
    /// Bytes waited `write_timeout` without the body taking any.
    Deadline,
    Outbox,
    Command(Option<Inbound>),
}

/// Runs the connection; returns the close code it ended with, `None` when the client went
/// away (or stopped reading) before a close was sent.
async fn pump(
    session: &mut Session,
    outbox: &Outbox,
    wire: &mut StreamWire,
    first: Inbound,
    commands: &mut mpsc::Receiver<Inbound>,
    body: &mpsc::Sender<Bytes>,
    write_timeout: Duration,
) -> Option<u16> {
    let mut items = Vec::new();
    // Set once a close is decided: the code, and the instant the body must have taken
    // everything by.
    let mut closing: Option<(u16, Instant)> = None;
    // While bytes wait for the body: when the body last took some (or they began waiting).
    let mut stuck_since: Option<Instant> = None;

    if let Err(why) = commands::run(session, &[first]).await {
        closing = Some(begin_close(session, outbox, wire, &mut items, why, write_timeout).await);
    }
    loop {
        if let Some((code, _)) = closing {
            if wire.out.is_empty() {
                return Some(code);
            }
        }
        if !wire.out.is_empty() && stuck_since.is_none() {
            stuck_since = Some(Instant::now());
        }
        let due = match (closing, stuck_since) {
            (Some((_, by)), Some(s)) => Some(by.min(s + write_timeout)),
            (None, Some(s)) => Some(s + write_timeout),
            (Some((_, by)), None) => Some(by),
            (None, None) => None,
        };
        let want_frames = closing.is_none() && wire.out.len() < WRITE_HIGH_WATER;
        let event = tokio::select! {
            biased;
            () = body.closed() => Event::Gone,
            permit = body.reserve(), if !wire.out.is_empty() => match permit {
                Ok(p) => {
                    p.send(wire.out.split().freeze());
                    Event::Sent(true)
                }
                Err(_) => Event::Sent(false),
            },
            () = sleep_until(due) => Event::Deadline,
            () = outbox.wait(want_frames), if closing.is_none() => Event::Outbox,
            cmd = commands.recv(), if want_frames => Event::Command(cmd),
        };
        match event {
            Event::Gone | Event::Sent(false) => return None,
            Event::Sent(true) => {
                // `split` left an empty buffer that may hold a large allocation: free it.
                wire.out = BytesMut::new();
                stuck_since = None;
            }
            Event::Deadline => {
                tracing::debug!(
                    closing = closing.is_some(),
                    pending = wire.out.len(),
                    "write timeout: the stream's client takes nothing; dropping the connection"
                );
                return None;
            }
            Event::Outbox => {
                let close = outbox.take(&mut items);
                Box::pin(commands::flush(wire, &mut items, Some(session))).await;
                if let Some(why) = close {
                    wire.close(why.code, why.reason);
                    closing = Some((why.code, Instant::now() + write_timeout));
                }
            }
            Event::Command(Some(msg)) => {
                if let Err(why) = Box::pin(commands::run(session, &[msg])).await {
                    closing = Some(
                        begin_close(session, outbox, wire, &mut items, why, write_timeout).await,
                    );
                }
            }
            // The registry drops a stream's sender only when the stream ends.
            Event::Command(None) => return None,
        }
    }
}

/// The session decided to close: what it queued before (an error explaining it) goes
/// first, then the disconnect push.
async fn begin_close(
    session: &mut Session,
    outbox: &Outbox,
    wire: &mut StreamWire,
    items: &mut Vec<crate::hub::Out>,
    why: Disconnect,
    write_timeout: Duration,
) -> (u16, Instant) {
    outbox.take(items);
    Box::pin(commands::flush(wire, items, Some(session))).await;
    wire.close(why.code, why.reason);
    (why.code, Instant::now() + write_timeout)
}

/// Sleeps until `due`, or forever without one.
async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(framing: Framing, format: Format, frames: &[&[u8]]) -> Vec<u8> {
        let mut w = StreamWire::new("t", format, framing);
        let frames: Vec<Bytes> = frames.iter().map(|f| Bytes::copy_from_slice(f)).collect();
        w.write_many(&frames);
        w.out.to_vec()
    }

    #[test]
    fn frames_are_laid_out_as_the_sdks_read_them() {
        let lines = written(Framing::Stream, Format::Json, &[b"{}", b"{\"id\":1}"]);
        assert_eq!(lines, b"{}\n{\"id\":1}\n");
        let pb = written(Framing::Stream, Format::Protobuf, &[&[1, 8], &[0]]);
        assert_eq!(pb, [1, 8, 0]);
        let sse = written(
            Framing::EventStream,
            Format::Json,
            &[b"{}", b"{\"a\":\r\n1}"],
        );
        assert_eq!(sse, b"data: {}\n\ndata: {\"a\":\ndata: \ndata: 1}\n\n");
    }

    #[test]
    fn a_close_is_a_disconnect_push() {
        let mut w = StreamWire::new("t", Format::Json, Framing::Stream);
        w.close(3008, "slow");
        let v: serde_json::Value = serde_json::from_slice(&w.out[..w.out.len() - 1]).unwrap();
        assert_eq!(v["push"]["disconnect"]["code"], 3008);
        assert_eq!(v["push"]["disconnect"]["reconnect"], true);
        let mut w = StreamWire::new("t", Format::Json, Framing::Stream);
        w.close(3501, "bad request");
        let v: serde_json::Value = serde_json::from_slice(&w.out[..w.out.len() - 1]).unwrap();
        assert_eq!(v["push"]["disconnect"]["reconnect"], false);
    }
}
