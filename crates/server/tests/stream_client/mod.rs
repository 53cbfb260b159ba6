//! A raw HTTP client of roomcast's stream transports for the integration tests (hyper's
//! client over a TCP socket): opens HTTP-streaming and SSE streams, reads their frames as the
//! SDKs do (JSON lines, protobuf length-delimited replies, SSE events), and sends commands
//! through `POST /emulation`. Pings are answered through emulation unless told not to.

#![allow(dead_code)] // Each test binary uses a part.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use prost::Message as _;
use roomcast_proto::protobuf::wire;
use roomcast_testkit::*;
use serde_json::{json, Value};

/// How a stream's body is framed.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Kind {
    /// HTTP-streaming, JSON lines.
    Lines,
    /// HTTP-streaming, protobuf length-delimited replies.
    Protobuf,
    /// SSE events.
    Sse,
}

/// One HTTP request on its own connection; the response's status, content type and body.
pub(crate) async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    content_type: &str,
    body: Bytes,
) -> (u16, String, Incoming) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .header("content-type", content_type)
        .body(Full::new(body))
        .unwrap();
    let resp = tokio::time::timeout(WAIT, send.send_request(req))
        .await
        .expect("response head in time")
        .unwrap();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (resp.status().as_u16(), ct, resp.into_body())
}

/// A `POST /emulation`; the status.
pub(crate) async fn emulate(addr: SocketAddr, content_type: &str, body: Vec<u8>) -> u16 {
    let (status, _, mut b) = request(addr, "POST", "/emulation", content_type, body.into()).await;
    while let Some(Ok(_)) = b.frame().await {}
    status
}

fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A client of one stream: the frames it read (JSON values; protobuf replies as their
/// bytes), and the session and node its connect reply named.
pub(crate) struct Stream {
    addr: SocketAddr,
    kind: Kind,
    body: Incoming,
    buf: BytesMut,
    inbox: VecDeque<Value>,
    pb_inbox: VecDeque<wire::Reply>,
    ended: bool,
    pub(crate) session: String,
    pub(crate) node: String,
    next_id: u32,
    /// Answer server pings through emulation.
    pub(crate) auto_pong: bool,
}

impl Stream {
    /// Opens a stream whose first commands are `first` (JSON text or protobuf bytes).
    pub(crate) async fn open(addr: SocketAddr, kind: Kind, first: Vec<u8>) -> (u16, Stream) {
        let (status, ct, body) = match kind {
            Kind::Lines => {
                request(
                    addr,
                    "POST",
                    "/connection/http_stream",
                    "application/json",
                    first.into(),
                )
                .await
            }
            Kind::Protobuf => {
                let ct = "application/octet-stream";
                request(addr, "POST", "/connection/http_stream", ct, first.into()).await
            }
            Kind::Sse => {
                let q = percent(std::str::from_utf8(&first).unwrap());
                let path = format!("/connection/sse?cf_connect={q}");
                request(addr, "GET", &path, "text/plain", Bytes::new()).await
            }
        };
        if status == 200 {
            let want = match kind {
                Kind::Lines => "application/json",
                Kind::Protobuf => "application/octet-stream",
                Kind::Sse => "text/event-stream",
            };
            assert_eq!(ct, want);
        }
        let s = Stream {
            addr,
            kind,
            body,
            buf: BytesMut::new(),
            inbox: VecDeque::new(),
            pb_inbox: VecDeque::new(),
            ended: false,
            session: String::new(),
            node: String::new(),
            next_id: 100,
            auto_pong: true,
        };
        (status, s)
    }

    /// A JSON stream (HTTP-streaming or SSE) connected as `user` with these connect
    /// options (`subs` for recovery); returns the connect result.
    pub(crate) async fn connect(
        addr: SocketAddr,
        kind: Kind,
        user: &str,
        extra: Value,
    ) -> (Stream, Value) {
        let mut connect = json!({"token": token(user)});
        connect
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let first = json!({"id": 1, "connect": connect}).to_string();
        let (status, mut s) = Stream::open(addr, kind, first.into_bytes()).await;
        assert_eq!(status, 200);
        let r = s.reply(1).await;
        let result = r["connect"].clone();
        s.session = result["session"]
            .as_str()
            .expect("session in the reply")
            .into();
        s.node = result["node"].as_str().unwrap().into();
        (s, result)
    }

    /// Reads one body chunk and splits what is complete into frames; false at the end.
    async fn fill(&mut self, within: Duration) -> bool {
        if self.ended {
            return false;
        }
        let frame = tokio::time::timeout(within, self.body.frame())
            .await
            .expect("a chunk of the stream in time");
        let Some(Ok(frame)) = frame else {
            self.ended = true;
            return false;
        };
        if let Ok(data) = frame.into_data() {
            self.buf.extend_from_slice(&data);
        }
        self.split().await;
        true
    }

    async fn split(&mut self) {
        loop {
            match self.kind {
                Kind::Lines | Kind::Sse => {
                    let sep: &[u8] = if self.kind == Kind::Sse {
                        b"\n\n"
                    } else {
                        b"\n"
                    };
                    let Some(at) = self.buf.windows(sep.len()).position(|w| w == sep) else {
                        return;
                    };
                    let line = self.buf.split_to(at + sep.len());
                    let mut text = std::str::from_utf8(&line[..at]).unwrap().to_owned();
                    if self.kind == Kind::Sse {
                        // An event's data fields, joined with newlines as EventSource does.
                        let fields: Vec<&str> = text
                            .split('\n')
                            .map(|l| l.strip_prefix("data: ").expect("an SSE data field"))
                            .collect();
                        text = fields.join("\n");
                    }
                    let v: Value = serde_json::from_str(&text).unwrap();
                    if v.as_object().is_some_and(serde_json::Map::is_empty) {
                        if self.auto_pong {
                            assert_eq!(self.send("{}").await, 204);
                        }
                        continue;
                    }
                    self.inbox.push_back(v);
                }
                Kind::Protobuf => {
                    let mut peek = &self.buf[..];
                    let Ok(len) = prost::encoding::decode_varint(&mut peek) else {
                        return;
                    };
                    let head = self.buf.len() - peek.len();
                    if peek.len() < len as usize {
                        return;
                    }
                    self.buf.advance(head);
                    let msg = self.buf.split_to(len as usize);
                    self.pb_inbox
                        .push_back(wire::Reply::decode(&msg[..]).unwrap());
                }
            }
        }
    }

    /// The next JSON frame (not a ping), or `None` once the stream ended.
    pub(crate) async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(v) = self.inbox.pop_front() {
                return Some(v);
            }
            if !self.fill(WAIT).await {
                return None;
            }
        }
    }

    pub(crate) async fn next_pb(&mut self) -> Option<wire::Reply> {
        loop {
            if let Some(v) = self.pb_inbox.pop_front() {
                return Some(v);
            }
            if !self.fill(WAIT).await {
                return None;
            }
        }
    }

    /// Reads (answering pings) for `span`; false if the stream ended meanwhile.
    pub(crate) async fn idle(&mut self, span: Duration) -> bool {
        let until = tokio::time::Instant::now() + span;
        while !self.ended {
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.body.frame()).await {
                Err(_) => return true,
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                    self.split().await;
                }
                Ok(_) => self.ended = true,
            }
        }
        false
    }

    /// Reads until the reply to `id` (pushes before it stay queued).
    pub(crate) async fn reply(&mut self, id: u32) -> Value {
        loop {
            if let Some(i) = self.inbox.iter().position(|v| v["id"] == id) {
                return self.inbox.remove(i).unwrap();
            }
            assert!(
                self.fill(WAIT).await,
                "stream ended before the reply to {id}"
            );
        }
    }

    /// Sends JSON commands through emulation, as centrifuge-js does (`data` a string).
    pub(crate) async fn send(&self, commands: &str) -> u16 {
        let body = json!({"session": self.session, "node": self.node, "data": commands});
        emulate(self.addr, "application/json", body.to_string().into_bytes()).await
    }

    /// One command through emulation, its reply from the stream.
    pub(crate) async fn call(&mut self, mut cmd: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        cmd["id"] = id.into();
        assert_eq!(self.send(&cmd.to_string()).await, 204);
        self.reply(id).await
    }

    /// The disconnect push the stream ended with, if any.
    pub(crate) async fn disconnect_code(&mut self) -> Option<u64> {
        let mut code = None;
        while let Some(v) = self.next().await {
            if let Some(c) = v["push"]["disconnect"]["code"].as_u64() {
                code = Some(c);
            }
        }
        code
    }

    pub(crate) async fn next_pub(&mut self, channel: &str) -> Value {
        loop {
            let v = self.next().await.expect("stream open");
            if v["push"]["channel"] == channel && v["push"].get("pub").is_some() {
                return v["push"]["pub"].clone();
            }
        }
    }
}
