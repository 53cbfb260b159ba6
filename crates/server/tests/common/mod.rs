//! Shared helpers of the integration tests: a real node on port 0 with a fresh data
//! directory, a real WebSocket client speaking the JSON protocol, and a server API caller.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use roomcast::auth::{now_secs, Auth, Claims};
use roomcast::{Config, Server};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const SECRET: &str = "test-secret";
pub const API_KEY: &str = "test-api-key";
pub const WAIT: Duration = Duration::from_secs(20);

pub struct TestServer {
    pub server: Option<Server>,
    pub addr: std::net::SocketAddr,
    pub dir: tempfile::TempDir,
}

pub fn config(dir: &std::path::Path) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.into(),
        token_hmac_secret: Some(SECRET.into()),
        api_key: Some(API_KEY.into()),
        ..Config::default()
    }
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tune: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path());
        tune(&mut c);
        let server = Server::start(c).await.unwrap();
        TestServer {
            addr: server.addr,
            server: Some(server),
            dir,
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/connection/websocket", self.addr)
    }

    pub async fn client(&self, user: &str) -> Client {
        let mut c = Client::open(&self.ws_url()).await;
        let reply = c.call(json!({"connect": {"token": token(user)}})).await;
        assert!(reply.get("connect").is_some(), "connect failed: {reply}");
        c
    }

    pub async fn api(&self, method: &str, body: Value) -> Value {
        let (status, v) = api_raw(self.addr, method, Some(API_KEY), &body.to_string()).await;
        assert_eq!(status, 200, "{method}: {v}");
        v
    }

    pub async fn publish(&self, channel: &str, data: Value) -> u64 {
        let v = self
            .api("publish", json!({"channel": channel, "data": data}))
            .await;
        v["result"]["offset"]
            .as_u64()
            .unwrap_or_else(|| panic!("publish failed: {v}"))
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
    }
}

pub fn token(user: &str) -> String {
    token_with(Claims {
        sub: user.into(),
        exp: Some(now_secs() + 3600),
        ..Claims::default()
    })
}

pub fn token_with(claims: Claims) -> String {
    Auth::new(SECRET, None, None).mint(&claims)
}

/// A minimal HTTP/1.1 POST over a raw socket: the tests need no HTTP client dependency.
pub async fn api_raw(
    addr: std::net::SocketAddr,
    method: &str,
    key: Option<&str>,
    body: &str,
) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.unwrap();
    let key_header = key
        .map(|k| format!("X-API-Key: {k}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "POST /api/{method} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{key_header}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8(out).unwrap();
    let status: u16 = text[9..12].parse().unwrap();
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// What the server sent: a reply/push object, or the close frame's code.
#[derive(Debug)]
pub enum Event {
    Frame(Value),
    Closed(Option<u16>),
}

pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u32,
    /// Objects received but not yet taken.
    inbox: VecDeque<Value>,
    pub closed: Option<Option<u16>>,
    /// Answer server pings automatically.
    pub auto_pong: bool,
}

impl Client {
    pub async fn open(url: &str) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        Client {
            ws,
            next_id: 0,
            inbox: VecDeque::new(),
            closed: None,
            auto_pong: true,
        }
    }

    pub fn ws_mut(&mut self) -> &mut WebSocketStream<MaybeTlsStream<TcpStream>> {
        &mut self.ws
    }

    pub async fn send_raw(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.unwrap();
    }

    /// Sends a command with the next id; returns the id.
    pub async fn send(&mut self, mut cmd: Value) -> u32 {
        self.next_id += 1;
        cmd["id"] = json!(self.next_id);
        self.send_raw(&cmd.to_string()).await;
        self.next_id
    }

    /// Sends a command and waits for its reply; pushes that arrive meanwhile stay queued.
    pub async fn call(&mut self, cmd: Value) -> Value {
        let id = self.send(cmd).await;
        self.reply(id).await
    }

    pub async fn reply(&mut self, id: u32) -> Value {
        loop {
            if let Some(pos) = self.inbox.iter().position(|v| v["id"] == json!(id)) {
                return self.inbox.remove(pos).unwrap();
            }
            if let Some(code) = self.closed {
                panic!("closed ({code:?}) while waiting for reply {id}");
            }
            self.fill().await;
        }
    }

    /// Next push (or reply) object, in order.
    pub async fn next(&mut self) -> Event {
        loop {
            if let Some(v) = self.inbox.pop_front() {
                return Event::Frame(v);
            }
            if let Some(code) = self.closed {
                return Event::Closed(code);
            }
            self.fill().await;
        }
    }

    /// Next publication push for `channel`, skipping other pushes.
    pub async fn next_pub(&mut self, channel: &str) -> Value {
        loop {
            match self.next().await {
                Event::Frame(v)
                    if v["push"]["channel"] == channel && v["push"].get("pub").is_some() =>
                {
                    return v["push"]["pub"].clone()
                }
                Event::Frame(_) => continue,
                Event::Closed(c) => panic!("closed ({c:?}) while waiting for a publication"),
            }
        }
    }

    /// Next push matching `pred`.
    pub async fn next_push(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        loop {
            match self.next().await {
                Event::Frame(v) if v.get("push").is_some() && pred(&v["push"]) => {
                    return v["push"].clone()
                }
                Event::Frame(_) => continue,
                Event::Closed(c) => panic!("closed ({c:?}) while waiting for a push"),
            }
        }
    }

    /// Waits for the server to close; returns the close code.
    pub async fn closed_code(&mut self) -> Option<u16> {
        loop {
            if let Event::Closed(code) = self.next().await {
                return code;
            }
        }
    }

    /// Reads one WebSocket message into the inbox (several objects per message are split;
    /// server pings are answered, not queued), or records the close.
    async fn fill(&mut self) {
        let msg = tokio::time::timeout(WAIT, self.ws.next())
            .await
            .expect("timed out waiting for the server");
        match msg {
            Some(Ok(Message::Text(t))) => {
                for line in t.as_str().split('\n') {
                    let v: Value = serde_json::from_str(line).expect("server sent JSON");
                    if v.as_object().is_some_and(|o| o.is_empty()) {
                        if self.auto_pong {
                            self.ws.send(Message::text("{}")).await.ok();
                        }
                        continue;
                    }
                    self.inbox.push_back(v);
                }
            }
            Some(Ok(Message::Close(frame))) => self.closed = Some(frame.map(|f| u16::from(f.code))),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => self.closed = Some(None),
        }
    }

    pub async fn subscribe(&mut self, channel: &str) -> Value {
        let r = self.call(json!({"subscribe": {"channel": channel}})).await;
        assert!(
            r.get("subscribe").is_some(),
            "subscribe to {channel} failed: {r}"
        );
        r["subscribe"].clone()
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// Error code of a reply, if it is an error.
pub fn error_code(reply: &Value) -> Option<u64> {
    reply["error"]["code"].as_u64()
}
