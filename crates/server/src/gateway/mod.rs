//! One WebSocket connection: the pump between the socket, the session and the outbox.
//!
//! A single task per connection waits on four things: a client frame (decoded and handed
//! to the session, commands in order), the outbox (everything queued goes out in one
//! WebSocket message, frames joined by newlines as the JSON protocol allows), the timer
//! (server pings, the pong deadline, the connect deadline, token expiry) and the node's
//! shutdown. Whatever ends the loop, the session leaves its rooms before the task ends.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use roomcast_proto::{decode_commands, Disconnect, Method, PING};
use tokio::time::{sleep_until, Instant};

use crate::hub::{Out, Outbox};
use crate::node::Node;

pub mod session;

use session::{Flow, Session};

/// Time a socket has to send its connect command.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Drives one upgraded WebSocket until it closes.
pub async fn serve(node: Arc<Node>, socket: WebSocket) {
    let outbox = Arc::new(Outbox::new(node.config.outbox_max_bytes));
    let mut session = Session::new(node.clone(), outbox.clone());
    let (mut sink, mut stream) = socket.split();
    let ping_every = Duration::from_secs(node.config.ping_interval_secs.max(1));
    let pong_timeout = Duration::from_secs(node.config.pong_timeout_secs.max(1));
    let connect_deadline = Instant::now() + CONNECT_TIMEOUT;
    let mut next_ping = Instant::now() + ping_every;
    let mut pong_due: Option<Instant> = None;
    let mut items = Vec::new();

    let close: Option<Disconnect> = loop {
        let wake = match (session.is_connected(), pong_due) {
            (false, _) => connect_deadline,
            (true, Some(due)) => due.min(next_ping),
            (true, None) => next_ping,
        };
        tokio::select! {
            biased;
            _ = node.shutdown.cancelled() => break Some(Disconnect::SHUTDOWN),
            _ = outbox.ready() => {
                let closing = outbox.take(&mut items);
                if let Err(e) = flush(&mut sink, &mut items, &mut session).await {
                    tracing::debug!(error = %e, "write failed");
                    break None;
                }
                if closing.is_some() {
                    break closing;
                }
            }
            msg = stream.next() => {
                let text = match msg {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Binary(_))) => break Some(Disconnect::BAD_REQUEST),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Close(_))) | None => break None,
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "read failed");
                        break None;
                    }
                };
                match handle_frame(&mut session, &text).await {
                    Ok(got_pong) => if got_pong { pong_due = None },
                    Err(d) => break Some(d),
                }
            }
            _ = sleep_until(wake) => {
                let now = Instant::now();
                if !session.is_connected() {
                    break Some(Disconnect::STALE);
                }
                if pong_due.is_some_and(|due| now >= due) {
                    break Some(Disconnect::NO_PONG);
                }
                if session.expired() {
                    break Some(Disconnect::EXPIRED);
                }
                if now >= next_ping {
                    if sink.send(Message::Text(Utf8Bytes::from_static_str())).await.is_err() {
                        break None;
                    }
                    pong_due.get_or_insert(now + pong_timeout);
                    next_ping = now + ping_every;
                }
            }
        }
    };

    if let Some(why) = close {
        // Replies already queued (an error before a close, an ack before shutdown) go out
        // first; a slow connection's backlog was dropped when it overflowed.
        outbox.take(&mut items);
        let _ = flush(&mut sink, &mut items, &mut session).await;
        let frame = CloseFrame {
            code: why.code,
            reason: Utf8Bytes::from(why.reason),
        };
        let _ = sink.send(Message::Close(Some(frame))).await;
    }
    // Whatever queued after this point is dropped with the outbox.
    outbox.close(Disconnect::CONNECTION_CLOSED);
    session.close().await;
}

trait StaticPing {
    fn from_static_str() -> Self;
}

impl StaticPing for Utf8Bytes {
    /// The server ping, `{}`.
    fn from_static_str() -> Self {
        Utf8Bytes::try_from(Bytes::from_static(PING)).expect("ping is UTF-8")
    }
}

/// Decodes and runs every command of a frame. Returns whether a pong was among them.
async fn handle_frame(session: &mut Session, text: &str) -> Result<bool, Disconnect> {
    let commands = decode_commands(text).map_err(|e| {
        tracing::debug!(error = %e, "malformed frame");
        Disconnect::BAD_REQUEST
    })?;
    let mut pong = false;
    for cmd in commands {
        let (id, method) = cmd.into_method().map_err(|_| Disconnect::BAD_REQUEST)?;
        if matches!(method, Method::Empty) {
            pong = true;
            continue;
        }
        if let Flow::Close(d) = session.handle(id, method).await {
            return Err(d);
        }
    }
    Ok(pong)
}

/// Writes queued frames as one WebSocket message and runs queued control items.
async fn flush<S>(
    sink: &mut S,
    items: &mut Vec<Out>,
    session: &mut Session,
) -> Result<(), axum::Error>
where
    S: futures_util::Sink<Message, Error = axum::Error> + Unpin,
{
    let mut frames: Vec<Bytes> = Vec::new();
    for item in items.drain(..) {
        match item {
            Out::Frame(b) => frames.push(b),
            Out::Unsubscribe { channel } => session.server_unsubscribe(&channel).await,
        }
    }
    let text = match frames.len() {
        0 => return Ok(()),
        1 => frames.pop().expect("one frame"),
        _ => {
            let mut buf = BytesMut::with_capacity(frames.iter().map(|f| f.len() + 1).sum());
            for (i, f) in frames.iter().enumerate() {
                if i > 0 {
                    buf.extend_from_slice(b"\n");
                }
                buf.extend_from_slice(f);
            }
            buf.freeze()
        }
    };
    // Frames are JSON produced by serde_json, hence UTF-8.
    let text = Utf8Bytes::try_from(text).expect("encoded frames are UTF-8");
    sink.send(Message::Text(text)).await
}
