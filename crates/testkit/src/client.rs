//! The protocol client: one real WebSocket speaking the Centrifugo JSON protocol, with
//! replies matched to commands by id and pushes queued in arrival order.

use std::collections::VecDeque;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::{token, WAIT};

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

    /// Opens `url` and connects as `user` with a valid token; asserts the connect reply.
    pub async fn connect(url: &str, user: &str) -> Client {
        let mut c = Client::open(url).await;
        let reply = c.call(json!({"connect": {"token": token(user)}})).await;
        assert!(reply.get("connect").is_some(), "connect failed: {reply}");
        c
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
