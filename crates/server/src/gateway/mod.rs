//! One WebSocket connection, from the upgraded TCP socket to the protocol session.
//!
//! A single task per connection waits on three things: the socket becoming readable, the
//! outbox having something to send (or being closed), and, while a write is pending, the
//! socket becoming writable. Keepalive (pings, pong deadline, connect deadline, token
//! expiry) and shutdown reach the connection through its outbox (see `keepalive.rs`), so an
//! idle connection owns no timer and no buffer:
//! - reads go into a buffer that exists only while bytes are being decoded or a frame is
//!   incomplete;
//! - queued frames are copied into one WebSocket message (newline-joined, as the JSON
//!   protocol allows), and that write buffer is freed as soon as the socket took it all;
//! - when the socket does not keep up, the task stops taking from the outbox, which then
//!   fills to its byte limit and closes the connection as "slow".
//!
//! Whatever ends the connection, the session leaves its rooms before the task ends.

use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use roomcast_proto::{decode_commands, Disconnect, Method};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::hub::{Out, Outbox};
use crate::node::Node;

pub mod keepalive;
pub mod session;
pub mod ws;

use keepalive::Peer;
use session::{Flow, Session};
use ws::Message;

/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 4096;
/// A write buffer this large stops the connection taking more from its outbox.
const WRITE_HIGH_WATER: usize = 64 << 10;
/// How long a closing connection waits for the client's close frame.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// What runs on top of the WebSocket layer.
pub enum Handler {
    /// The client protocol.
    Session(Box<Session>),
    /// Echoes text and binary messages (the Autobahn conformance endpoint).
    Echo,
}

/// What woke the connection's task.
enum Event {
    Writable(std::io::Result<()>),
    Outbox,
    Readable(std::io::Result<()>),
}

/// How the connection ends.
enum End {
    /// The peer closed or the socket failed: nothing more to send.
    Gone,
    /// A close frame was sent; `linger` when the server initiated it and should wait for
    /// the client's close.
    Closed { linger: bool },
}

/// Serves the client protocol on an upgraded socket; `leftover` are bytes the HTTP layer
/// read past the upgrade request.
pub async fn serve(node: Arc<Node>, tcp: TcpStream, leftover: Bytes) {
    let outbox = Arc::new(
        Outbox::new(node.config.outbox_max_bytes).with_reply_limit(node.config.reply_max_bytes),
    );
    let peer = Arc::new(Peer::new(outbox.clone()));
    let session = Session::new(node.clone(), peer.clone());
    let id = session.conn_id();
    node.keepalive.register(id, &peer);
    let mut handler = Handler::Session(Box::new(session));
    run(
        tcp,
        leftover,
        &outbox,
        &mut handler,
        node.config.max_message_size,
    )
    .await;
    node.keepalive.unregister(id);
    // Whatever queued after the end is dropped with the outbox.
    outbox.close(Disconnect::CONNECTION_CLOSED);
    if let Handler::Session(mut s) = handler {
        Box::pin(s.close()).await;
    }
}

/// Echo endpoint for WebSocket conformance runs.
pub async fn serve_echo(tcp: TcpStream, leftover: Bytes, max_message: usize) {
    let outbox = Outbox::new(max_message * 4);
    run(tcp, leftover, &outbox, &mut Handler::Echo, max_message).await;
}

async fn run(
    mut tcp: TcpStream,
    leftover: Bytes,
    outbox: &Outbox,
    handler: &mut Handler,
    max_message: usize,
) {
    let mut decoder = ws::Decoder::new(max_message);
    let mut inbuf = BytesMut::from(&leftover[..]);
    // `leftover` may be a slice of hyper's whole read buffer: let it go now, or every
    // connection keeps that buffer for life.
    drop(leftover);
    let mut out = BytesMut::new();
    let mut closing = false;
    let mut client_closed = false;
    let mut items = Vec::new();
    let mut msgs = Vec::new();
    // Bytes in `inbuf` not decoded yet (the HTTP layer may have read past the upgrade).
    let mut undecoded = !inbuf.is_empty();

    let end = loop {
        if closing && out.is_empty() {
            break End::Closed {
                linger: !client_closed,
            };
        }
        if undecoded && !closing {
            undecoded = false;
            let consumed = match decoder.decode(&mut inbuf, &mut msgs) {
                Ok(n) => n,
                Err(v) => {
                    msgs.clear();
                    ws::close_frame(&mut out, v.code, v.reason);
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
                let closing_now = Box::pin(on_messages(&mut msgs, handler, &mut out)).await;
                msgs.clear();
                if let Some((code, reason, by_client)) = closing_now {
                    // Replies queued before the close (an error explaining it) go first.
                    outbox.take(&mut items);
                    if let Handler::Session(s) = handler {
                        Box::pin(encode(&mut out, &mut items, s)).await;
                    }
                    ws::close_frame(&mut out, code, reason);
                    closing = true;
                    client_closed = by_client;
                }
            }
            continue;
        }
        // One hand-rolled poll instead of `select!` over `readable()`/`writable()`
        // futures: the task then holds no waiter nodes while it sleeps, which is most of
        // what an idle connection's task would otherwise weigh.
        let want_frames = out.len() < WRITE_HIGH_WATER;
        let event = poll_fn(|cx| {
            if !out.is_empty() {
                if let Poll::Ready(r) = tcp.poll_write_ready(cx) {
                    return Poll::Ready(Event::Writable(r));
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
                if r.is_err() || write_some(&tcp, &mut out).is_err() {
                    break End::Gone;
                }
            }
            Event::Outbox => {
                let close = outbox.take(&mut items);
                if let Handler::Session(s) = handler {
                    Box::pin(encode(&mut out, &mut items, s)).await;
                }
                if let Some(why) = close {
                    ws::close_frame(&mut out, why.code, why.reason);
                    closing = true;
                }
            }
            Event::Readable(r) => {
                if r.is_err() {
                    break End::Gone;
                }
                match read_some(&tcp, &mut inbuf, max_message) {
                    Ok(true) => undecoded = !inbuf.is_empty(),
                    Ok(false) | Err(_) => break End::Gone,
                }
            }
        }
    };

    if let End::Closed { linger } = end {
        Box::pin(finish_close(&mut tcp, linger)).await;
    }
}

/// Handles one client message; returns a close to send, if the connection must end.
/// Handles the messages of one read, in order; returns a close to send, if the connection
/// must end. Text messages that arrived together are handled together, so that pipelined
/// publishes share one commit.
async fn on_messages(
    msgs: &mut Vec<Message>,
    handler: &mut Handler,
    out: &mut BytesMut,
) -> Option<(u16, &'static str, bool)> {
    let mut texts: Vec<String> = Vec::new();
    for msg in msgs.drain(..) {
        let msg = match (msg, &*handler) {
            (Message::Text(text), Handler::Session(_)) => {
                texts.push(text);
                continue;
            }
            (other, _) => other,
        };
        if let Some(close) = run_texts(&mut texts, handler).await {
            return Some(close);
        }
        match msg {
            Message::Ping(payload) => ws::pong(out, &payload),
            Message::Pong => {}
            Message::Close(code, _) => return Some((code.unwrap_or(ws::close::NORMAL), "", true)),
            Message::Text(text) => {
                // Echo (the session's texts were gathered above).
                ws::text_header(out, text.len());
                out.extend_from_slice(text.as_bytes());
            }
            Message::Binary(data) => match handler {
                Handler::Echo => {
                    ws::binary_header(out, data.len());
                    out.extend_from_slice(&data);
                }
                Handler::Session(_) => {
                    let why = Disconnect::BAD_REQUEST;
                    return Some((why.code, why.reason, false));
                }
            },
        }
    }
    run_texts(&mut texts, handler).await
}

/// Runs gathered text messages through the session.
async fn run_texts(
    texts: &mut Vec<String>,
    handler: &mut Handler,
) -> Option<(u16, &'static str, bool)> {
    if texts.is_empty() {
        return None;
    }
    let Handler::Session(s) = handler else {
        return None;
    };
    let result = handle_texts(s, texts).await;
    texts.clear();
    result.err().map(|why| (why.code, why.reason, false))
}

/// Decodes and runs the commands of several text messages. Consecutive publishes are
/// committed together; every other command runs on its own, in order.
async fn handle_texts(session: &mut Session, texts: &[String]) -> Result<(), Disconnect> {
    let mut publishes = Vec::new();
    for text in texts {
        let commands = decode_commands(text).map_err(|e| {
            tracing::debug!(error = %e, "malformed frame");
            Disconnect::BAD_REQUEST
        })?;
        for cmd in commands {
            let (id, method) = cmd.into_method().map_err(|_| Disconnect::BAD_REQUEST)?;
            match method {
                Method::Empty => session.pong(),
                Method::Publish(p) if id != 0 && session.is_connected() => publishes.push((id, p)),
                other => {
                    session.publish_batch(std::mem::take(&mut publishes)).await;
                    if let Flow::Close(d) = session.handle(id, other).await {
                        return Err(d);
                    }
                }
            }
        }
    }
    session.publish_batch(publishes).await;
    Ok(())
}

/// Appends the queued frames as one text message and runs queued control items.
async fn encode(out: &mut BytesMut, items: &mut Vec<Out>, session: &mut Session) {
    let mut frames: Vec<Bytes> = Vec::new();
    for item in items.drain(..) {
        match item {
            Out::Frame(b) => frames.push(b),
            Out::Unsubscribe { channel } => Box::pin(session.server_unsubscribe(&channel)).await,
        }
    }
    if frames.is_empty() {
        return;
    }
    let len = frames.iter().map(Bytes::len).sum::<usize>() + frames.len() - 1;
    out.reserve(len + 10);
    ws::text_header(out, len);
    for (i, f) in frames.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(b"\n");
        }
        out.extend_from_slice(f);
    }
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

/// Writes what the socket takes; frees the buffer once it is all written.
fn write_some(tcp: &TcpStream, out: &mut BytesMut) -> std::io::Result<()> {
    while !out.is_empty() {
        match tcp.try_write(out) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => out.advance(n),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    *out = BytesMut::new();
    Ok(())
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
            Err(_) => return,
        }
    }
}
