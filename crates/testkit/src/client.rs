//! The protocol client: one real WebSocket speaking the Centrifugo JSON protocol, with
//! replies matched to commands by id and pushes queued in arrival order.

use std::collections::VecDeque;
use std::time::Duration;

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
        Client::try_open(url, WAIT).await.unwrap()
    }

    /// Opens `url` within `within`; the error says why not (for runs where a node may be
    /// down, such as the chaos run).
    pub async fn try_open(url: &str, within: Duration) -> Result<Client, String> {
        let (ws, _) = tokio::time::timeout(within, tokio_tungstenite::connect_async(url))
            .await
            .map_err(|_| format!("opening {url}: timed out"))?
            .map_err(|e| format!("opening {url}: {e}"))?;
        Ok(Client {
            ws,
            next_id: 0,
            inbox: VecDeque::new(),
            closed: None,
            auto_pong: true,
        })
    }

    /// Opens `url` with extra headers on the upgrade request (cookies, for a connect proxy).
    pub async fn open_with_headers(url: &str, headers: &[(&str, &str)]) -> Client {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = url.into_client_request().unwrap();
        for (name, value) in headers {
            req.headers_mut().append(
                tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes())
                    .unwrap(),
                value.parse().unwrap(),
            );
        }
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
            .await
            .expect("opening timed out")
            .expect("opening failed");
        Client {
            ws,
            next_id: 0,
            inbox: VecDeque::new(),
            closed: None,
            auto_pong: true,
        }
    }

    /// Opens `url` and connects as `user`; each step bounded by `within`.
    pub async fn try_connect(url: &str, user: &str, within: Duration) -> Result<Client, String> {
        let mut c = Client::try_open(url, within).await?;
        let reply = c
            .try_call(json!({"connect": {"token": token(user)}}), within)
            .await?;
        match reply.get("connect") {
            Some(_) => Ok(c),
            None => Err(format!("connect refused: {reply}")),
        }
    }

    /// Opens `url` and connects as `user` with a valid token; asserts the connect reply.
    pub async fn connect(url: &str, user: &str) -> Client {
        let mut c = Client::open(url).await;
        let reply = c.call(json!({"connect": {"token": token(user)}})).await;
        assert!(reply.get("connect").is_some(), "connect failed: {reply}");
        c
    }

    /// Opens `url` and connects as `user`, sending `subs` (positions of server-side
    /// subscriptions, as an SDK does on reconnect); asserts and returns the connect reply.
    pub async fn connect_with_subs(url: &str, user: &str, subs: Value) -> (Client, Value) {
        let mut c = Client::open(url).await;
        let reply = c
            .call(json!({"connect": {"token": token(user), "subs": subs}}))
            .await;
        assert!(reply.get("connect").is_some(), "connect failed: {reply}");
        (c, reply)
    }

    pub fn ws_mut(&mut self) -> &mut WebSocketStream<MaybeTlsStream<TcpStream>> {
        &mut self.ws
    }

    pub async fn send_raw(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.unwrap();
    }

    /// Sends a command and waits at most `within` for its reply; an error when the
    /// connection fails or closes first, or the time runs out.
    pub async fn try_call(&mut self, mut cmd: Value, within: Duration) -> Result<Value, String> {
        self.next_id += 1;
        let id = self.next_id;
        cmd["id"] = json!(id);
        let deadline = tokio::time::Instant::now() + within;
        tokio::time::timeout_at(deadline, self.ws.send(Message::text(cmd.to_string())))
            .await
            .map_err(|_| "sending: timed out".to_owned())?
            .map_err(|e| format!("sending: {e}"))?;
        loop {
            if let Some(pos) = self.inbox.iter().position(|v| v["id"] == json!(id)) {
                return Ok(self.inbox.remove(pos).unwrap());
            }
            if let Some(code) = self.closed {
                return Err(format!("closed ({code:?}) before reply {id}"));
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            self.try_fill(left).await?;
        }
    }

    /// Next push (or reply) object, or the close, within `within`.
    pub async fn try_next(&mut self, within: Duration) -> Result<Event, String> {
        loop {
            if let Some(v) = self.inbox.pop_front() {
                return Ok(Event::Frame(v));
            }
            if let Some(code) = self.closed {
                return Ok(Event::Closed(code));
            }
            self.try_fill(within).await?;
        }
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
        self.try_fill(WAIT).await.unwrap();
    }

    /// [`Client::fill`] bounded by `within`; an error on a timeout or a non-JSON frame.
    async fn try_fill(&mut self, within: Duration) -> Result<(), String> {
        let msg = tokio::time::timeout(within, self.ws.next())
            .await
            .map_err(|_| format!("no frame from the server within {within:?}"))?;
        match msg {
            Some(Ok(Message::Text(t))) => {
                for line in t.as_str().split('\n') {
                    let v: Value = serde_json::from_str(line)
                        .map_err(|e| format!("server sent non-JSON ({e}): {line:.200}"))?;
                    if v.as_object().is_some_and(serde_json::Map::is_empty) {
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
        Ok(())
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
