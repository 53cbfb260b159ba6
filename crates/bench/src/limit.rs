//! The limit baseline: the least a WebSocket fan-out server can do on this machine. No protocol, no
//! store, no auth: each publication is framed once into a shared `Bytes` and the same bytes are written
//! to every member's socket, batching whatever is queued into one write. The bench starts it as a child
//! process (`roomcast-bench limit-server`) so its RSS and CPU are measured like any other server's.
//!
//! URL: `/ws?room=N` joins room N; `/ws?room=N&pub=1` publishes each text frame it sends to room N and
//! is answered with a one-byte text frame "a" per publish (so the generator can time acks everywhere).

use anyhow::{bail, Context, Result};
use bytes::{Buf, Bytes, BytesMut};
use roomcast_ws::{Decoder, Message};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::broadcast;

/// Per-room queue depth; a member that falls this far behind is disconnected (and shows as missing
/// in the bench), never silently skipped.
const ROOM_QUEUE: usize = 8192;
/// Most frames coalesced into one write.
const BATCH: usize = 256;
/// Largest publication accepted from a publisher.
const MAX_MESSAGE: usize = 1 << 20;
/// The pre-encoded ack frame: FIN + text opcode, length 1, "a".
const ACK: &[u8] = &[0x81, 0x01, b'a'];

/// Rooms by number; a mutex because joins are rare next to sends, which clone the Sender out first.
type Rooms = Arc<Mutex<HashMap<u32, broadcast::Sender<Bytes>>>>;

/// Serves until killed. `reuseport` lets several limit processes share one port (the kernel spreads
/// connections over them): only for idle runs past one process's 20,000 files, since each process has
/// its own rooms and would not fan out to the others' members.
pub(crate) async fn serve(listen: &str, reuseport: bool) -> Result<()> {
    // A deep accept queue: std's default backlog (128) overflows under a join burst, and SYN retries
    // then add whole seconds to connect times that have nothing to do with the server's work.
    let addr: std::net::SocketAddr = listen.parse().context("listen address")?;
    let sock = TcpSocket::new_v4()?;
    sock.set_reuseaddr(true)?;
    sock.set_reuseport(reuseport)?;
    sock.bind(addr)?;
    let listener = sock.listen(4096)?;
    // The parent reads the chosen port from this line.
    println!("LISTEN {}", listener.local_addr()?);
    let rooms: Rooms = Arc::default();
    loop {
        let (stream, _) = listener.accept().await?;
        let rooms = rooms.clone();
        tokio::spawn(async move {
            let _ = connection(stream, rooms).await;
        });
    }
}

async fn connection(mut stream: TcpStream, rooms: Rooms) -> Result<()> {
    stream.set_nodelay(true)?;
    let (room, publisher) = handshake(&mut stream).await?;
    let tx = rooms
        .lock()
        .unwrap()
        .entry(room)
        .or_insert_with(|| broadcast::channel(ROOM_QUEUE).0)
        .clone();
    if publisher {
        publish_loop(stream, tx).await
    } else {
        member_loop(stream, tx.subscribe()).await
    }
}

/// Reads the HTTP upgrade request and answers 101; returns (room, is_publisher).
async fn handshake(stream: &mut TcpStream) -> Result<(u32, bool)> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("closed during handshake");
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut hs = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut hs);
        if let httparse::Status::Complete(_) = req.parse(&buf)? {
            let path = req.path.unwrap_or("/");
            let query = path.split_once('?').map_or("", |(_, q)| q);
            let mut room = 0;
            let mut publisher = false;
            for kv in query.split('&') {
                match kv.split_once('=') {
                    Some(("room", v)) => room = v.parse().context("room")?,
                    Some(("pub", "1")) => publisher = true,
                    _ => {}
                }
            }
            let key = req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("sec-websocket-key"))
                .context("no Sec-WebSocket-Key")?
                .value;
            let resp = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                roomcast_ws::accept_key(key)
            );
            stream.write_all(resp.as_bytes()).await?;
            return Ok((room, publisher));
        }
        if buf.len() > 8192 {
            bail!("handshake too large");
        }
    }
}

/// Server-to-client text frame (unmasked).
pub(crate) fn frame(payload: &[u8]) -> Bytes {
    let mut f = BytesMut::with_capacity(payload.len() + 10);
    roomcast_ws::text(&mut f, payload);
    f.freeze()
}

async fn publish_loop(stream: TcpStream, tx: broadcast::Sender<Bytes>) -> Result<()> {
    let (mut rd, mut wr) = stream.into_split();
    let mut buf = BytesMut::with_capacity(4096);
    let mut decoder = Decoder::new(MAX_MESSAGE);
    let mut msgs = Vec::new();
    loop {
        if rd.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
        let consumed = decoder
            .decode(&mut buf, &mut msgs)
            .map_err(|v| anyhow::anyhow!("publisher broke framing: {}", v.reason))?;
        buf.advance(consumed);
        let mut acks = 0;
        for msg in msgs.drain(..) {
            match msg {
                Message::Text(t) => {
                    // Zero receivers is fine: the room may be empty.
                    let _ = tx.send(frame(t.as_bytes()));
                    acks += 1;
                }
                Message::Binary(b) => {
                    let _ = tx.send(frame(&b));
                    acks += 1;
                }
                Message::Close(..) => return Ok(()),
                Message::Ping(_) | Message::Pong => {}
            }
        }
        if acks > 0 {
            wr.write_all(&ACK.repeat(acks)).await?;
        }
    }
}

async fn member_loop(stream: TcpStream, mut rx: broadcast::Receiver<Bytes>) -> Result<()> {
    let (mut rd, mut wr) = stream.into_split();
    let mut scratch = [0u8; 256];
    let mut out = BytesMut::new();
    loop {
        tokio::select! {
            r = rx.recv() => {
                let first = match r {
                    Ok(f) => f,
                    Err(broadcast::error::RecvError::Lagged(n)) => bail!("member lagged by {n}; disconnecting"),
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                };
                out.clear();
                out.extend_from_slice(&first);
                // Coalesce what is already queued into this write.
                for _ in 1..BATCH {
                    match rx.try_recv() {
                        Ok(f) => out.extend_from_slice(&f),
                        Err(broadcast::error::TryRecvError::Lagged(n)) => bail!("member lagged by {n}"),
                        Err(_) => break,
                    }
                }
                wr.write_all(&out).await?;
            }
            // Members send nothing but a close; EOF or a close frame ends the connection.
            n = rd.read(&mut scratch) => if n? == 0 { return Ok(()) },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_a_publication() {
        assert_eq!(&frame(b"hi")[..], &[0x81, 2, b'h', b'i']);
    }
}
