//! roomcast members over the one-way stream transports (`--transport sse|http_stream`): the
//! connect goes in the request that opens the stream (`POST /connection/http_stream` body, or
//! the `cf_connect` query of `GET /connection/sse`), the response is read as it streams
//! (HTTP/1.1 chunked, then newline-delimited JSON or SSE `data:` events), and every later
//! command (the subscribe, pongs) is a `POST /emulation` on the member's own keep-alive
//! connection, as centrifuge-js does. JSON only: what is measured is the server's fan-out into
//! streamed responses, decoded by the same `codec` as WebSocket deliveries.

use crate::http::HttpConn;
use crate::target::{Target, Transport};
use crate::wire::{self, Incoming, Joined, Position};
use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// How long one join (open, connect reply, subscribe reply) may take.
const JOIN_TIMEOUT: Duration = Duration::from_secs(20);
/// Largest chunk-size line or pending frame the reader accepts (a misbehaving server ends the
/// member, not the bench's memory).
const MAX_PENDING: usize = 8 << 20;

/// One member's stream and its emulation connection.
pub(crate) struct StreamConn {
    tcp: TcpStream,
    sse: bool,
    /// Bytes of the body read and not yet split into frames (chunk framing removed).
    body: Vec<u8>,
    /// Raw bytes read past the last complete chunk header.
    raw: Vec<u8>,
    /// Body bytes left in the current chunk.
    chunk_left: usize,
    ended: bool,
    addr: SocketAddr,
    session: String,
    node: String,
    /// Keep-alive connection for emulation requests, opened at the first one.
    emulation: Option<HttpConn>,
}

impl StreamConn {
    /// The next frame's JSON text; `None` once the stream ended.
    pub(crate) async fn next_text(&mut self) -> Result<Option<String>> {
        loop {
            if let Some(f) = self.take_frame()? {
                return Ok(Some(f));
            }
            if self.ended {
                return Ok(None);
            }
            self.read_more().await?;
        }
    }

    /// Sends commands (JSON text) through the emulation endpoint.
    pub(crate) async fn send(&mut self, commands: &str) -> Result<()> {
        if self.emulation.is_none() {
            self.emulation = Some(HttpConn::connect(self.addr).await?);
        }
        let body =
            serde_json::json!({"session": self.session, "node": self.node, "data": commands});
        let conn = self.emulation.as_mut().expect("opened above");
        let (status, _) = conn.post("/emulation", &[], &body.to_string()).await?;
        if status != 204 {
            bail!("emulation request answered {status}");
        }
        Ok(())
    }

    fn take_frame(&mut self) -> Result<Option<String>> {
        let sep: &[u8] = if self.sse { b"\n\n" } else { b"\n" };
        let Some(at) = self.body.windows(sep.len()).position(|w| w == sep) else {
            if self.body.len() > MAX_PENDING {
                bail!("a frame of more than {MAX_PENDING} bytes");
            }
            return Ok(None);
        };
        let frame: Vec<u8> = self.body.drain(..at + sep.len()).take(at).collect();
        let mut text = String::from_utf8(frame).context("frame not UTF-8")?;
        if self.sse {
            text = text
                .strip_prefix("data: ")
                .context("an SSE event without data")?
                .to_owned();
        }
        Ok(Some(text))
    }

    /// Reads from the socket and moves chunk data into `body`.
    async fn read_more(&mut self) -> Result<()> {
        let mut buf = [0u8; 16 << 10];
        let n = self.tcp.read(&mut buf).await?;
        if n == 0 {
            self.ended = true;
            return Ok(());
        }
        self.raw.extend_from_slice(&buf[..n]);
        self.dechunk()
    }

    /// Strips HTTP/1.1 chunk framing from `raw` into `body`.
    fn dechunk(&mut self) -> Result<()> {
        loop {
            if self.chunk_left > 0 {
                let take = self.chunk_left.min(self.raw.len());
                self.body.extend(self.raw.drain(..take));
                self.chunk_left -= take;
                if self.chunk_left > 0 {
                    return Ok(());
                }
                // The CRLF after the data is consumed with the next size line.
            }
            let Some(eol) = self.raw.windows(2).position(|w| w == b"\r\n") else {
                if self.raw.len() > 1024 {
                    bail!("bad chunk framing");
                }
                return Ok(());
            };
            let line = std::str::from_utf8(&self.raw[..eol]).context("chunk size")?;
            let line = line.split(';').next().unwrap_or("").trim();
            if line.is_empty() {
                // The CRLF that ends a chunk's data.
                self.raw.drain(..eol + 2);
                continue;
            }
            let size = usize::from_str_radix(line, 16).context("chunk size")?;
            self.raw.drain(..eol + 2);
            if size == 0 {
                self.ended = true;
                return Ok(());
            }
            self.chunk_left = size;
        }
    }
}

fn percent(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char);
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Opens a member's stream from `src`, connects as `user` and subscribes to `room` (recovering
/// from `recover`).
pub(crate) async fn join(
    src: Ipv4Addr,
    target: &Target,
    room: u32,
    user: &str,
    recover: Option<&Position>,
) -> Result<(StreamConn, Joined)> {
    tokio::time::timeout(JOIN_TIMEOUT, join_inner(src, target, room, user, recover))
        .await
        .map_err(|_| anyhow!("join timed out"))?
}

async fn join_inner(
    src: Ipv4Addr,
    target: &Target,
    room: u32,
    user: &str,
    recover: Option<&Position>,
) -> Result<(StreamConn, Joined)> {
    let addr = target.addr();
    let sock = TcpSocket::new_v4()?;
    if src != Ipv4Addr::LOCALHOST {
        sock.set_reuseaddr(true)?;
        sock.bind(SocketAddr::new(src.into(), 0))?;
    }
    let mut tcp = sock.connect(addr).await?;
    tcp.set_nodelay(true)?;
    wire::no_time_wait(&tcp)?;
    let token = target
        .secret
        .as_deref()
        .map(|s| wire::jwt(s, user))
        .unwrap_or_default();
    let connect = serde_json::json!({"id":1,"connect":{"token":token}}).to_string();
    let sse = target.transport == Transport::Sse;
    let req = if sse {
        format!(
            "GET /connection/sse?cf_connect={} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n",
            percent(&connect)
        )
    } else {
        format!(
            "POST /connection/http_stream HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{connect}",
            connect.len()
        )
    };
    tcp.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    let head = loop {
        let mut buf = [0u8; 4096];
        let n = tcp.read(&mut buf).await?;
        if n == 0 {
            bail!("stream closed before its response head");
        }
        raw.extend_from_slice(&buf[..n]);
        let mut hs = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut hs);
        if let httparse::Status::Complete(len) = resp.parse(&raw)? {
            if resp.code != Some(200) {
                bail!("stream refused: HTTP {:?}", resp.code);
            }
            break len;
        }
    };
    raw.drain(..head);
    let mut conn = StreamConn {
        tcp,
        sse,
        body: Vec::new(),
        raw,
        chunk_left: 0,
        ended: false,
        addr,
        session: String::new(),
        node: String::new(),
        emulation: None,
    };
    conn.dechunk()?;
    let mut joined = Joined::default();
    let reply = expect(&mut conn, &mut joined, 1).await?;
    let r = &reply["connect"];
    conn.session = r["session"].as_str().context("no session")?.to_owned();
    conn.node = r["node"].as_str().unwrap_or_default().to_owned();

    let mut sub = serde_json::json!({"channel": wire::channel(room)});
    if let Some(p) = recover {
        sub["recover"] = true.into();
        sub["offset"] = p.offset.into();
        sub["epoch"] = p.epoch.clone().into();
    }
    conn.send(&serde_json::json!({"id":2,"subscribe":sub}).to_string())
        .await?;
    let mut after = Joined::default();
    let reply = expect(&mut conn, &mut after, 2).await?;
    wire::subscribed(&reply["subscribe"], recover.is_some(), &mut joined)?;
    joined.backlog.append(&mut after.backlog);
    Ok((conn, joined))
}

/// Reads frames until the reply to `id` (an error reply is an error), keeping deliveries and
/// answering pings meanwhile.
async fn expect(conn: &mut StreamConn, joined: &mut Joined, id: u64) -> Result<Value> {
    loop {
        let text = conn
            .next_text()
            .await?
            .context("stream ended before the reply")?;
        if let Ok(v) = serde_json::from_str::<Value>(&text) {
            if v.get("id") == Some(&Value::from(id)) {
                if let Some(e) = v.get("error") {
                    bail!("command {id} refused: {e}");
                }
                return Ok(v);
            }
            if v.get("push").and_then(|p| p.get("disconnect")).is_some() {
                bail!("disconnected while joining: {text}");
            }
        }
        let mut out = Vec::new();
        wire::decode(crate::target::Kind::Roomcast, &text, &mut out);
        for m in out {
            match m {
                Incoming::Delivery(d) => joined.backlog.push(d),
                Incoming::Ping(p) => conn.send(p).await?,
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dechunks_and_splits_frames_across_reads() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut c = StreamConn {
            tcp,
            sse: true,
            body: Vec::new(),
            raw: b"7\r\ndata: {\r\n".to_vec(),
            chunk_left: 0,
            ended: false,
            addr,
            session: String::new(),
            node: String::new(),
            emulation: None,
        };
        c.dechunk().unwrap();
        assert_eq!(c.take_frame().unwrap(), None);
        c.raw.extend_from_slice(b"3\r\n}\n\n\r\n0\r\n\r\n");
        c.dechunk().unwrap();
        assert_eq!(c.take_frame().unwrap().as_deref(), Some("{}"));
        assert!(c.ended);
        assert_eq!(percent("{\"a\":1}"), "%7B%22a%22%3A1%7D");
    }
}
