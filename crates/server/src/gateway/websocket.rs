//! The WebSocket transport: one task per connection pumps bytes between the upgraded TCP
//! socket and the session, framing with `roomcast-ws`.
//!
//! The task waits on three things: the socket becoming readable, the outbox having
//! something to send (or being closed), and, while a write is pending, the socket becoming
//! writable. Keepalive (pings, pong deadline, connect deadline, token expiry) and shutdown
//! reach the connection through its outbox (see `keepalive.rs`), so an idle connection
//! owns no timer and no buffer:
//! - reads go into a buffer that exists only while bytes are being decoded or a frame is
//!   incomplete;
//! - queued frames are copied into one WebSocket message (newline-joined, as the JSON
//!   protocol allows), and that write buffer is freed as soon as the socket took it all;
//! - when the socket does not keep up, the task stops taking from the outbox, which then
//!   fills to its byte limit and closes the connection as "slow".
//!
//! Write timeout: a connection whose socket accepts no byte for `write_timeout` while it
//! has bytes to send is dropped, and so is one that decided to close (slow, no pong,
//! shutdown, ...) and could not hand its close frame to the socket within `write_timeout`
//! of that decision, however slowly the peer reads. The timer exists only while a write
//! is stuck or a close is under way, so idle connections still own none.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use roomcast_proto::Disconnect;
use roomcast_ws::{self as ws, Message};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use super::commands::{self, Inbound};
use super::session::{Now, Session};
use super::transport::{Format, Transport};
use crate::hub::Outbox;
use crate::keepalive::Peer;
use crate::node::Node;

/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 4096;
/// A write buffer this large stops the connection taking more from its outbox.
const WRITE_HIGH_WATER: usize = 64 << 10;
/// Most bytes of queued frames joined into one WebSocket message (a larger frame goes alone).
const MESSAGE_BATCH: usize = 16 << 10;
/// How long a closing connection waits for the client's close frame.
const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// Write timeout of the echo endpoint.
const ECHO_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// The WebSocket side of a connection: frames waiting for the socket.
#[derive(Default)]
pub struct WebSocket {
    /// Encoded WebSocket frames not yet taken by the socket; freed once empty.
    out: BytesMut,
    /// JSON goes in text messages (frames newline-joined), protobuf in binary messages
    /// (length-delimited frames concatenated).
    format: Format,
}

impl Transport for WebSocket {
    fn name(&self) -> &'static str {
        "websocket"
    }

    fn format(&self) -> Format {
        self.format
    }

    fn write(&mut self, frame: &[u8]) {
        match self.format {
            Format::Json => ws::text(&mut self.out, frame),
            Format::Protobuf => {
                ws::binary_header(&mut self.out, frame.len());
                self.out.extend_from_slice(frame);
            }
        }
    }

    fn write_many(&mut self, frames: &[Bytes]) {
        // Protobuf frames carry their own length; JSON ones are newline-separated.
        let sep: &[u8] = match self.format {
            Format::Json => b"\n",
            Format::Protobuf => b"",
        };
        let mut rest = frames;
        while !rest.is_empty() {
            let (n, len) = message_run(rest, sep.len());
            let (run, next) = rest.split_at(n);
            rest = next;
            self.out.reserve(len + 10);
            match self.format {
                Format::Json => ws::text_header(&mut self.out, len),
                Format::Protobuf => ws::binary_header(&mut self.out, len),
            }
            for (i, f) in run.iter().enumerate() {
                if i > 0 {
                    self.out.extend_from_slice(sep);
                }
                self.out.extend_from_slice(f);
            }
        }
    }

    fn close(&mut self, code: u16, reason: &str) {
        ws::close_frame(&mut self.out, code, reason);
    }
}

/// How many of `frames` (at least one) go into the next WebSocket message, and its length with
/// separators: as many as fit in `MESSAGE_BATCH` bytes. A backlog of thousands of pushes is then many messages of a few
/// KiB, not one of megabytes: clients cap a message's size (the Python SDK's `websockets`
/// closes with 1009 past 1 MiB by default) and buffer a whole message before parsing it.
fn message_run(frames: &[Bytes], sep: usize) -> (usize, usize) {
    let mut len = frames[0].len();
    let mut n = 1;
    while n < frames.len() && len + sep + frames[n].len() <= MESSAGE_BATCH {
        len += sep + frames[n].len();
        n += 1;
    }
    (n, len)
}

/// What runs on top of the WebSocket layer.
enum Handler {
    /// The client protocol.
    Session(Box<Session>),
    /// Echoes text and binary messages (the Autobahn conformance endpoint).
    Echo,
}

impl Handler {
    fn session(&mut self) -> Option<&mut Session> {
        match self {
            Handler::Session(s) => Some(s),
            Handler::Echo => None,
        }
    }
}

/// What woke the connection's task.
enum Event {
    Writable(std::io::Result<()>),
    Outbox,
    Readable(std::io::Result<()>),
    /// The write deadline passed (see `Stall`).
    Deadline,
}

/// How the connection ends.
enum End {
    /// The peer closed, the socket failed or the write timeout passed: nothing more to send.
    Gone,
    /// A close frame was sent; `linger` when the server initiated it and should wait for
    /// the client's close.
    Closed { linger: bool },
}

/// A write that is not getting through: exists (boxed, off the idle task's state) only
/// while the socket has refused bytes or a close is under way.
struct Stall {
    timer: Pin<Box<Sleep>>,
    /// Last time the socket took a byte (or the stall began).
    progress: Instant,
    /// When a close was decided, the connection is gone by this instant at the latest.
    close_by: Option<Instant>,
}

impl Stall {
    fn due(&self, timeout: Duration) -> Instant {
        let idle = self.progress + timeout;
        self.close_by.map_or(idle, |c| c.min(idle))
    }
}

/// Serves the client protocol on an upgraded socket, in the format the handshake chose;
/// `leftover` are bytes the HTTP layer read past the upgrade request, `headers` those of
/// the upgrade request the backend proxies get.
pub async fn serve(
    node: Arc<Node>,
    tcp: TcpStream,
    leftover: Bytes,
    headers: Vec<(hyper::header::HeaderName, hyper::header::HeaderValue)>,
    format: Format,
) {
    let outbox = Arc::new(
        Outbox::new(node.config.outbox_max_bytes)
            .with_reply_limit(node.config.reply_max_bytes)
            .with_format(format),
    );
    let peer = Arc::new(Peer::new(outbox.clone()));
    let mut session = Session::new(node.clone(), peer.clone(), Now::current());
    session.forward_headers(headers);
    let id = session.conn_id();
    node.keepalive.register(id, &peer);
    let mut handler = Handler::Session(Box::new(session));
    let limits = Limits {
        max_message: node.config.max_message_size,
        write_timeout: Duration::from_secs(node.config.write_timeout_secs),
    };
    let code = run(tcp, leftover, &outbox, &mut handler, limits).await;
    node.keepalive.unregister(id);
    if let Some(m) = crate::metrics::get() {
        m.disconnect(code);
    }
    if let Handler::Session(s) = &handler {
        if let Some(who) = s.identity() {
            // No code: the socket ended without a close frame (peer gone, reset, write
            // timeout).
            tracing::info!(client = %who.client, user = %who.user, code, "disconnected");
        }
    }
    // Whatever queued after the end is dropped with the outbox.
    outbox.close(Disconnect::CONNECTION_CLOSED);
    if let Handler::Session(mut s) = handler {
        Box::pin(s.close()).await;
    }
}

/// Echo endpoint for WebSocket conformance runs.
pub async fn serve_echo(tcp: TcpStream, leftover: Bytes, max_message: usize) {
    let outbox = Outbox::new(max_message * 4);
    let limits = Limits {
        max_message,
        write_timeout: ECHO_WRITE_TIMEOUT,
    };
    run(tcp, leftover, &outbox, &mut Handler::Echo, limits).await;
}

#[derive(Clone, Copy)]
struct Limits {
    max_message: usize,
    write_timeout: Duration,
}

/// Returns the close code sent or received, `None` when the socket ended without one.
async fn run(
    mut tcp: TcpStream,
    leftover: Bytes,
    outbox: &Outbox,
    handler: &mut Handler,
    limits: Limits,
) -> Option<u16> {
    let mut decoder = ws::Decoder::new(limits.max_message);
    let mut inbuf = BytesMut::from(&leftover[..]);
    // `leftover` may be a slice of hyper's whole read buffer: let it go now, or every
    // connection keeps that buffer for life.
    drop(leftover);
    let mut wire = WebSocket {
        out: BytesMut::new(),
        format: outbox.format(),
    };
    let mut closing = false;
    let mut client_closed = false;
    let mut items = Vec::new();
    let mut msgs = Vec::new();
    let mut stall: Option<Box<Stall>> = None;
    let mut code = None;
    // Bytes in `inbuf` not decoded yet (the HTTP layer may have read past the upgrade).
    let mut undecoded = !inbuf.is_empty();
    // The peer shut its side after the bytes in `inbuf`: they are handled (a close frame
    // or commands sent just before a half-close count), then the connection ends.
    let mut peer_eof = false;

    let end = loop {
        if peer_eof && !undecoded {
            // What the handled messages queued goes out if the socket takes it now.
            if !closing {
                outbox.take(&mut items);
                Box::pin(commands::flush(&mut wire, &mut items, handler.session())).await;
            }
            let _ = write_some(&tcp, &mut wire.out);
            break End::Gone;
        }
        if closing && wire.out.is_empty() {
            break End::Closed {
                linger: !client_closed,
            };
        }
        if closing {
            start_close_deadline(&mut stall, limits.write_timeout);
        }
        if undecoded && !closing {
            undecoded = false;
            let consumed = match decoder.decode(&mut inbuf, &mut msgs) {
                Ok(n) => n,
                Err(v) => {
                    msgs.clear();
                    wire.close(v.code, v.reason);
                    code = Some(v.code);
                    closing = true;
                    continue;
                }
            };
            inbuf.advance(consumed);
            if inbuf.is_empty() {
                // Nothing half-received: give the buffer back.
                inbuf = BytesMut::new();
            }
            if !msgs.is_empty() {
                // Boxed, like every future awaited only while there is traffic: the task's
                // own state is what an idle connection pays for.
                let closing_now = Box::pin(on_messages(&mut msgs, handler, &mut wire)).await;
                msgs.clear();
                if let Some((close, reason, by_client)) = closing_now {
                    // Replies queued before the close (an error explaining it) go first.
                    outbox.take(&mut items);
                    Box::pin(commands::flush(&mut wire, &mut items, handler.session())).await;
                    wire.close(close, reason);
                    code = Some(close);
                    closing = true;
                    client_closed = by_client;
                }
            }
            continue;
        }
        // One hand-rolled poll instead of `select!` over `readable()`/`writable()`
        // futures: the task then holds no waiter nodes while it sleeps, which is most of
        // what an idle connection's task would otherwise weigh.
        let want_frames = wire.out.len() < WRITE_HIGH_WATER;
        let event = poll_fn(|cx| {
            if !wire.out.is_empty() {
                if let Poll::Ready(r) = tcp.poll_write_ready(cx) {
                    return Poll::Ready(Event::Writable(r));
                }
            }
            if let Some(s) = stall.as_mut() {
                if s.timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Event::Deadline);
                }
            }
            if !closing && outbox.poll_wait(cx, want_frames).is_ready() {
                return Poll::Ready(Event::Outbox);
            }
            // No more commands while the client is not reading what it asked for.
            if !closing && want_frames {
                if let Poll::Ready(r) = tcp.poll_read_ready(cx) {
                    return Poll::Ready(Event::Readable(r));
                }
            }
            Poll::Pending
        })
        .await;
        match event {
            Event::Writable(r) => {
                let Ok(wrote) = r.and_then(|()| write_some(&tcp, &mut wire.out)) else {
                    break End::Gone;
                };
                note_progress(&mut stall, wrote, &wire.out, limits.write_timeout);
            }
            Event::Deadline => {
                let s = stall.as_mut().expect("a deadline has a stall");
                let due = s.due(limits.write_timeout);
                if Instant::now() >= due {
                    tracing::debug!(
                        closing,
                        pending = wire.out.len(),
                        "write timeout: the peer takes nothing; dropping the connection"
                    );
                    break End::Gone;
                }
                s.timer.as_mut().reset(due);
            }
            Event::Outbox => {
                let close = outbox.take(&mut items);
                Box::pin(commands::flush(&mut wire, &mut items, handler.session())).await;
                if let Some(why) = close {
                    wire.close(why.code, why.reason);
                    code = Some(why.code);
                    closing = true;
                }
            }
            Event::Readable(r) => {
                if r.is_err() {
                    break End::Gone;
                }
                match read_some(&tcp, &mut inbuf, limits.max_message) {
                    Ok(open) => {
                        undecoded = !inbuf.is_empty();
                        peer_eof = !open;
                    }
                    Err(_) => break End::Gone,
                }
            }
        }
    };

    if let End::Closed { linger } = end {
        Box::pin(finish_close(&mut tcp, linger)).await;
    }
    code
}

/// After a write: a write that left bytes behind starts (or feeds) the stall timer; one
/// that emptied the buffer ends it.
fn note_progress(stall: &mut Option<Box<Stall>>, wrote: usize, out: &BytesMut, timeout: Duration) {
    if out.is_empty() {
        if stall.as_ref().is_some_and(|s| s.close_by.is_none()) {
            *stall = None;
        }
        return;
    }
    match stall {
        Some(s) => {
            if wrote > 0 {
                // The timer is moved lazily, when it fires.
                s.progress = Instant::now();
            }
        }
        None => {
            let now = Instant::now();
            *stall = Some(Box::new(Stall {
                timer: Box::pin(tokio::time::sleep_until(now + timeout)),
                progress: now,
                close_by: None,
            }));
        }
    }
}

/// Once a close is decided, the connection is gone within `timeout` however the peer reads.
fn start_close_deadline(stall: &mut Option<Box<Stall>>, timeout: Duration) {
    let now = Instant::now();
    match stall {
        Some(s) if s.close_by.is_some() => {}
        Some(s) => {
            s.close_by = Some(now + timeout);
            let due = s.due(timeout);
            s.timer.as_mut().reset(due);
        }
        None => {
            *stall = Some(Box::new(Stall {
                timer: Box::pin(tokio::time::sleep_until(now + timeout)),
                progress: now,
                close_by: Some(now + timeout),
            }));
        }
    }
}

/// Handles the messages of one read, in order; returns a close to send, if the connection
/// must end. Data messages that arrived together are handled together, so that pipelined
/// publishes share one commit. (A message of the other format than the connection's is a
/// bad request: `commands::run` refuses it.)
async fn on_messages(
    msgs: &mut Vec<Message>,
    handler: &mut Handler,
    wire: &mut WebSocket,
) -> Option<(u16, &'static str, bool)> {
    let mut texts: Vec<Inbound> = Vec::new();
    for msg in msgs.drain(..) {
        let msg = match (msg, &*handler) {
            (Message::Text(text), Handler::Session(_)) => {
                texts.push(Inbound::Text(text));
                continue;
            }
            (Message::Binary(data), Handler::Session(_)) => {
                texts.push(Inbound::Binary(data));
                continue;
            }
            (other, _) => other,
        };
        if let Some(close) = run_texts(&mut texts, handler).await {
            return Some(close);
        }
        match msg {
            Message::Ping(payload) => ws::pong(&mut wire.out, &payload),
            Message::Pong => {}
            Message::Close(code, _) => return Some((code.unwrap_or(ws::close::NORMAL), "", true)),
            // Echo (the session's texts were gathered above).
            Message::Text(text) => wire.write(text.as_bytes()),
            // Echo (the session's were gathered above).
            Message::Binary(data) => {
                ws::binary_header(&mut wire.out, data.len());
                wire.out.extend_from_slice(&data);
            }
        }
    }
    run_texts(&mut texts, handler).await
}

/// Runs gathered data messages through the session.
async fn run_texts(
    texts: &mut Vec<Inbound>,
    handler: &mut Handler,
) -> Option<(u16, &'static str, bool)> {
    if texts.is_empty() {
        return None;
    }
    let s = handler.session()?;
    let result = commands::run(s, texts).await;
    texts.clear();
    result.err().map(|why| (why.code, why.reason, false))
}

/// Reads what the socket has. Returns false on EOF.
fn read_some(tcp: &TcpStream, inbuf: &mut BytesMut, max_message: usize) -> std::io::Result<bool> {
    // Enough for a whole message plus framing; beyond that the decoder has already
    // refused the message as too big.
    let cap = max_message + 64 + READ_CHUNK;
    loop {
        if inbuf.len() >= cap {
            return Ok(true);
        }
        inbuf.reserve(READ_CHUNK);
        match tcp.try_read_buf(inbuf) {
            Ok(0) => return Ok(false),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Writes what the socket takes; frees the buffer once it is all written. Returns the
/// bytes written.
fn write_some(tcp: &TcpStream, out: &mut BytesMut) -> std::io::Result<usize> {
    let mut wrote = 0;
    while !out.is_empty() {
        match tcp.try_write(out) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                out.advance(n);
                wrote += n;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(wrote),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    *out = BytesMut::new();
    Ok(wrote)
}

/// After our close frame: shut down our side and, when we initiated the close, wait for the
/// client's close frame or EOF so that it sees a clean close.
async fn finish_close(tcp: &mut TcpStream, linger: bool) {
    let _ = tcp.shutdown().await;
    if linger {
        let _ = tokio::time::timeout(CLOSE_LINGER, drain_until_eof(tcp)).await;
    }
}

async fn drain_until_eof(tcp: &TcpStream) {
    let mut buf = [0u8; 256];
    loop {
        if tcp.readable().await.is_err() {
            return;
        }
        match tcp.try_read(&mut buf) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                tracing::trace!(error = %e, "read after close");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(lens: &[usize]) -> Vec<Bytes> {
        lens.iter().map(|&n| Bytes::from(vec![b'x'; n])).collect()
    }

    /// The messages `write_many` wrote: (first header byte, payload length) of each. Server
    /// frames are unmasked and the codec's decoder takes client (masked) ones: the headers
    /// are read here.
    fn messages(out: &[u8]) -> Vec<(u8, usize)> {
        let mut got = Vec::new();
        let mut rest = out;
        while !rest.is_empty() {
            let (len, head) = match rest[1] & 0x7f {
                126 => (u16::from_be_bytes([rest[2], rest[3]]) as usize, 4),
                127 => (
                    u64::from_be_bytes(rest[2..10].try_into().unwrap()) as usize,
                    10,
                ),
                n => (n as usize, 2),
            };
            got.push((rest[0], len));
            rest = &rest[head + len..];
        }
        got
    }

    #[test]
    fn queued_frames_are_joined_into_messages_of_at_most_message_batch_bytes() {
        let mut w = WebSocket::default();
        // 15 frames of 1 KiB, a last one of the rest, and their 15 separators fill a message.
        let last = MESSAGE_BATCH - 15 * 1024 - 15;
        let mut lens = vec![1024; 15];
        lens.push(last);
        w.write_many(&frames(&lens));
        assert_eq!(messages(&w.out), vec![(0x81, MESSAGE_BATCH)]);

        // One byte more moves the last frame to a second message.
        let mut w = WebSocket::default();
        lens[15] += 1;
        w.write_many(&frames(&lens));
        assert_eq!(
            messages(&w.out),
            vec![(0x81, MESSAGE_BATCH - last - 1), (0x81, last + 1)]
        );

        // A frame larger than the batch goes alone, between the others.
        let mut w = WebSocket::default();
        w.write_many(&frames(&[10, MESSAGE_BATCH * 3, 20, 30]));
        assert_eq!(
            messages(&w.out),
            vec![(0x81, 10), (0x81, MESSAGE_BATCH * 3), (0x81, 20 + 1 + 30)]
        );

        // Protobuf frames carry their own lengths: no separators, binary messages.
        let mut w = WebSocket {
            out: BytesMut::new(),
            format: Format::Protobuf,
        };
        w.write_many(&frames(&[MESSAGE_BATCH / 2, MESSAGE_BATCH / 2, 1]));
        assert_eq!(messages(&w.out), vec![(0x82, MESSAGE_BATCH), (0x82, 1)]);
    }
}
