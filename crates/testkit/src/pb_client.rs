//! The protocol client in the protobuf format: one real WebSocket (asking for the
//! `centrifuge-protobuf` subprotocol, as the SDKs do) that sends length-delimited
//! `Command`s in binary messages and splits the server's binary messages into `Reply`s.
//! Server pings (empty replies) are answered with an empty command.

use std::collections::VecDeque;

use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use roomcast_proto::protobuf::wire;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::{token, WAIT};

pub struct PbClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u32,
    /// Replies and pushes received but not yet taken.
    inbox: VecDeque<wire::Reply>,
    /// The close code, once the server closed (`Some(None)`: closed without one).
    pub closed: Option<Option<u16>>,
    /// The subprotocol the server's 101 named.
    pub subprotocol: Option<String>,
    /// Answer server pings automatically.
    pub auto_pong: bool,
    /// Server pings received.
    pub pings: usize,
}

/// How a client asks for the protobuf format.
#[derive(Debug, Clone, Copy)]
pub enum Ask {
    /// The `centrifuge-protobuf` subprotocol (centrifuge-js and most SDKs).
    Subprotocol,
    /// `?format=protobuf` on the URL (centrifuge-go, centrifuge-python).
    Query,
}

impl PbClient {
    /// Opens `url` (a `ws://.../connection/websocket` URL) in the protobuf format.
    pub async fn open(url: &str, ask: Ask) -> PbClient {
        let url = match ask {
            Ask::Subprotocol => url.to_owned(),
            Ask::Query => format!("{url}?format=protobuf"),
        };
        let mut req = url.into_client_request().unwrap();
        if let Ask::Subprotocol = ask {
            req.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                HeaderValue::from_static("centrifuge-protobuf"),
            );
        }
        let (ws, resp) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
            .await
            .expect("opening: timed out")
            .expect("opening");
        let subprotocol = resp
            .headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        PbClient {
            ws,
            next_id: 0,
            inbox: VecDeque::new(),
            closed: None,
            subprotocol,
            auto_pong: true,
            pings: 0,
        }
    }

    /// Opens `url` and connects as `user` with a valid token; asserts the connect reply.
    pub async fn connect(url: &str, ask: Ask, user: &str) -> PbClient {
        let mut c = PbClient::open(url, ask).await;
        let r = c
            .call(wire::Command {
                connect: Some(wire::ConnectRequest {
                    token: token(user),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await;
        assert!(r.connect.is_some(), "connect failed: {r:?}");
        c
    }

    /// Sends bytes as one binary message, as they are.
    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        self.ws.send(Message::binary(bytes)).await.unwrap();
    }

    /// Sends a text message (not this connection's format).
    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.unwrap();
    }

    /// Sends commands in one binary message, each with the next id; returns the ids.
    pub async fn send(&mut self, cmds: Vec<wire::Command>) -> Vec<u32> {
        let mut buf = Vec::new();
        let mut ids = Vec::new();
        for mut cmd in cmds {
            self.next_id += 1;
            cmd.id = self.next_id;
            ids.push(cmd.id);
            cmd.encode_length_delimited(&mut buf).unwrap();
        }
        self.send_binary(buf).await;
        ids
    }

    /// Sends a command and waits for its reply; pushes that arrive meanwhile stay queued.
    pub async fn call(&mut self, cmd: wire::Command) -> wire::Reply {
        let id = self.send(vec![cmd]).await[0];
        self.reply(id).await
    }

    pub async fn reply(&mut self, id: u32) -> wire::Reply {
        loop {
            if let Some(pos) = self.inbox.iter().position(|r| r.id == id) {
                return self.inbox.remove(pos).unwrap();
            }
            if let Some(code) = self.closed {
                panic!("closed ({code:?}) while waiting for reply {id}");
            }
            self.fill().await;
        }
    }

    /// Subscribes; asserts success and returns the result.
    pub async fn subscribe(&mut self, req: wire::SubscribeRequest) -> wire::SubscribeResult {
        let channel = req.channel.clone();
        let r = self
            .call(wire::Command {
                subscribe: Some(req),
                ..Default::default()
            })
            .await;
        match r.subscribe {
            Some(result) => result,
            None => panic!("subscribe to {channel} failed: {:?}", r.error),
        }
    }

    /// Next push matching `pred`, skipping others.
    pub async fn next_push(&mut self, pred: impl Fn(&wire::Push) -> bool) -> wire::Push {
        loop {
            if let Some(pos) = self
                .inbox
                .iter()
                .position(|r| r.push.as_ref().is_some_and(&pred))
            {
                let r = self.inbox.remove(pos).unwrap();
                return r.push.unwrap();
            }
            if let Some(code) = self.closed {
                panic!("closed ({code:?}) while waiting for a push");
            }
            self.fill().await;
        }
    }

    /// Next publication of `channel`.
    pub async fn next_pub(&mut self, channel: &str) -> wire::Publication {
        self.next_push(|p| p.channel == channel && p.r#pub.is_some())
            .await
            .r#pub
            .unwrap()
    }

    /// Waits for the server to close; returns the close code.
    pub async fn closed_code(&mut self) -> Option<u16> {
        while self.closed.is_none() {
            self.fill().await;
        }
        self.closed.unwrap()
    }

    /// Reads one WebSocket message into the inbox, or records the close. A text message
    /// or a binary one that does not split into replies fails the test.
    async fn fill(&mut self) {
        let msg = tokio::time::timeout(WAIT, self.ws.next())
            .await
            .unwrap_or_else(|_| panic!("no message from the server within {WAIT:?}"));
        match msg {
            Some(Ok(Message::Binary(data))) => {
                let mut rest = &data[..];
                while !rest.is_empty() {
                    let r = wire::Reply::decode_length_delimited(&mut rest)
                        .expect("server sent a malformed reply");
                    if r == wire::Reply::default() {
                        // A ping: pong with an empty command.
                        self.pings += 1;
                        if self.auto_pong {
                            self.ws.send(Message::binary(vec![0u8])).await.ok();
                        }
                        continue;
                    }
                    self.inbox.push_back(r);
                }
            }
            Some(Ok(Message::Text(t))) => panic!("text message on a protobuf connection: {t}"),
            Some(Ok(Message::Close(frame))) => self.closed = Some(frame.map(|f| u16::from(f.code))),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => self.closed = Some(None),
        }
    }
}
