//! One client's protocol session: takes decoded commands and the current time, answers
//! through the outbox, and keeps the connection's state (user, subscriptions, token
//! expiry). It never touches a socket (a transport does) nor the node's components: it
//! works over the `Services` trait and its `SessionConfig`, so `tests.rs` drives the
//! protocol without either.
//!
//! - `mod.rs`: the session's own state, command dispatch, connect and refresh;
//! - `rooms.rs`: subscriptions (subscribe with recovery, unsubscribe, presence, history);
//! - `publish.rs`: publishes and the command rate limit;
//! - `backend.rs`: the connect and publish proxies (what the application backend decides);
//! - `refresh.rs`: server-side refresh through the refresh and sub_refresh proxies;
//! - `chat.rs`: the `roomcast.*` rpc methods (read cursors, unread counts, room list);
//! - `status.rs`: `rpc` `roomcast.status` (user status);
//! - `services.rs`: the `Services` trait and its implementation by `Node`.

mod backend;
mod chat;
mod publish;
mod refresh;
mod rooms;
mod services;
mod status;
#[cfg(test)]
mod tests;

pub use services::Services;

use std::collections::HashMap;
use std::sync::Arc;

use roomcast_proto::command::ConnectRequest;
use roomcast_proto::{ClientInfo, ConnectResult, Disconnect, ErrorCode, Method, RefreshResult};

use crate::auth::{Claims, TokenError};
use crate::channel::Channel;
use crate::hub::{ConnEntry, ConnId};
use crate::keepalive::Peer;
use crate::node::Node;
use crate::VERSION;

/// What the pump does after a command.
#[derive(Debug, PartialEq)]
pub enum Flow {
    Continue,
    Close(Disconnect),
}

/// The time a command is handled at: the runtime's clock (rate limit) and Unix seconds
/// (token lifetimes).
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub at: tokio::time::Instant,
    pub unix: u64,
}

impl Now {
    /// The current time.
    pub fn current() -> Now {
        Now {
            at: tokio::time::Instant::now(),
            unix: crate::auth::now_secs(),
        }
    }
}

/// A subscription of this connection.
struct Subscription {
    /// Track presence and emit join/leave for it (namespace options at subscribe time).
    presence: bool,
    join_leave: bool,
}

pub struct Session<S: Services = Node> {
    node: Arc<S>,
    conn: ConnId,
    /// The connection's outbox and keepalive state.
    peer: Arc<Peer>,
    /// Set by a successful connect.
    identity: Option<ClientInfo>,
    /// Unix seconds the token expires at, if it does.
    expires_at: Option<u64>,
    subs: HashMap<Arc<str>, Subscription>,
    /// Command rate limit.
    budget: publish::RateLimit,
    /// Headers of the upgrade request forwarded to the backend proxies
    /// (`proxy_http_headers`; bounded by the HTTP layer's header limits).
    headers: Vec<(hyper::header::HeaderName, hyper::header::HeaderValue)>,
    /// Where the refresh proxy leaves new connection info (server-side refresh only).
    refreshed: Option<Arc<crate::proxy::Refreshed>>,
    /// Something of this session is registered with the node's refresher.
    refreshing: bool,
    /// The id the emulation endpoint knows this connection's stream by (HTTP-streaming
    /// and SSE), sent in the connect reply; empty on WebSocket.
    stream_session: String,
}

impl<S: Services> Session<S> {
    pub fn new(node: Arc<S>, peer: Arc<Peer>, now: Now) -> Session<S> {
        let conn = node.next_conn_id();
        let budget = publish::RateLimit::new(node.config().commands_per_second, now.at);
        Session {
            node,
            conn,
            peer,
            identity: None,
            expires_at: None,
            subs: HashMap::new(),
            budget,
            headers: Vec::new(),
            refreshed: None,
            refreshing: false,
            stream_session: String::new(),
        }
    }

    /// The session id of a stream transport, for the connect reply (see `emulation.rs`).
    pub fn set_stream_session(&mut self, id: String) {
        self.stream_session = id;
    }

    /// Headers of the client's upgrade request to forward to the backend proxies.
    pub fn forward_headers(
        &mut self,
        headers: Vec<(hyper::header::HeaderName, hyper::header::HeaderValue)>,
    ) {
        self.headers = headers;
    }

    pub fn is_connected(&self) -> bool {
        self.identity.is_some()
    }

    /// Who connected (`None` before a successful connect).
    pub fn identity(&self) -> Option<&ClientInfo> {
        self.identity.as_ref()
    }

    pub fn conn_id(&self) -> ConnId {
        self.conn
    }

    /// The client answered a ping.
    pub fn pong(&self) {
        self.peer.pong();
    }

    /// The format this connection's replies are encoded in.
    pub fn format(&self) -> roomcast_proto::Format {
        self.peer.outbox.format()
    }

    fn reply(&self, frame: bytes::Bytes) {
        self.peer.outbox.push_reply(frame);
    }

    fn error(&self, id: u32, err: ErrorCode) {
        if let Some(m) = crate::metrics::get() {
            m.command_error(err.code);
        }
        self.reply(self.format().error(id, err));
    }

    pub async fn handle(&mut self, id: u32, method: Method, now: Now) -> Flow {
        if self.identity.is_none() && !matches!(method, Method::Connect(_)) {
            // Anything before connect is a protocol violation.
            return Flow::Close(Disconnect::BAD_REQUEST);
        }
        self.take_refreshed();
        if id == 0 && !matches!(method, Method::Send(_) | Method::Empty) {
            // Commands that expect a reply need an id to carry it.
            return Flow::Close(Disconnect::BAD_REQUEST);
        }
        if !self
            .budget
            .allow(self.node.config().commands_per_second, now.at)
        {
            if id != 0 {
                self.error(id, ErrorCode::TOO_MANY_REQUESTS);
            }
            return Flow::Continue;
        }
        match method {
            Method::Connect(req) => return self.connect(id, req, now).await,
            Method::Subscribe(req) => self.subscribe(id, req).await,
            Method::Unsubscribe(req) => {
                self.unsubscribe(&req.channel).await;
                self.reply(self.format().empty_reply(id, "unsubscribe"));
            }
            Method::Publish(req) => self.commit_publishes(vec![(id, req)], now).await,
            Method::Presence(req) => self.presence(id, &req.channel, false).await,
            Method::PresenceStats(req) => self.presence(id, &req.channel, true).await,
            Method::History(req) => self.history(id, req).await,
            Method::Ping => self.reply(self.format().empty_reply(id, "ping")),
            Method::Send(_) => {} // Asynchronous message with no handler configured: accepted, dropped.
            Method::Rpc(req) if req.method == status::STATUS => self.status(id, req).await,
            Method::Rpc(req) if req.method.starts_with(crate::chat::rpc::PREFIX) => {
                self.chat_rpc(id, req).await;
            }
            // The backend's methods (roomcast's own `roomcast.*` ones are never proxied).
            Method::Rpc(req) if self.proxies_rpc(&req.method) => {
                return self.proxy_rpc(id, req).await
            }
            // No RPC handler for this method: "not available", as the SDKs expect.
            Method::Rpc(_) => self.error(id, ErrorCode::NOT_AVAILABLE),
            Method::Refresh(req) => return self.refresh(id, &req.token, now).await,
            Method::SubRefresh(req) => self.sub_refresh(id, &req.channel, &req.token, now),
            Method::Empty => {}
            Method::Unknown => self.error(id, ErrorCode::METHOD_NOT_FOUND),
        }
        Flow::Continue
    }

    async fn verify(&self, token: &str) -> Result<Claims, Flow> {
        match self.node.verify_connection_fresh(token).await {
            Ok(c) => Ok(c),
            Err(TokenError::Expired) => Err(Flow::Continue),
            Err(e @ (TokenError::Invalid(_) | TokenError::UnknownKey(_))) => {
                // The reason only (signature, expiry, audience, key id): never the token.
                let why = e.to_string();
                tracing::info!(reason = %why, "connection refused: invalid token");
                if let Some(m) = crate::metrics::get() {
                    m.token_refusals.inc();
                }
                Err(Flow::Close(Disconnect::INVALID_TOKEN))
            }
        }
    }

    async fn connect(&mut self, id: u32, req: ConnectRequest, now: Now) -> Flow {
        if self.identity.is_some() {
            return Flow::Close(Disconnect::BAD_REQUEST);
        }
        let client = uuid::Uuid::new_v4().to_string();
        let from_proxy = req.token.is_empty() && self.has_connect_proxy();
        let claims = if from_proxy {
            match self.proxy_connect(id, &req, &client).await {
                Ok(c) => c,
                Err(flow) => return flow,
            }
        } else if req.token.is_empty() {
            if !self.node.config().insecure {
                self.error(id, ErrorCode::UNAUTHORIZED);
                return Flow::Close(Disconnect::INVALID_TOKEN);
            }
            Claims::default()
        } else {
            match self.verify(&req.token).await {
                Ok(c) => c,
                Err(Flow::Continue) => {
                    // Expired: the SDK fetches a fresh token and connects again.
                    self.error(id, ErrorCode::TOKEN_EXPIRED);
                    return Flow::Continue;
                }
                Err(close) => return close,
            }
        };
        let limit = self.node.config().max_connections_per_user;
        if limit > 0 && self.node.user_conns(&claims.sub) >= limit {
            return Flow::Close(Disconnect::CONNECTION_LIMIT);
        }
        let mut info = ClientInfo::new(&claims.sub, &client);
        info.conn_info = claims.info;
        self.node.register(
            &info.user,
            self.conn,
            ConnEntry {
                client: client.as_str().into(),
                outbox: self.peer.outbox.clone(),
            },
        );
        // In the user registry before the personal channel's store position is read, so
        // that any publication to it committed after that read is routed here.
        if !info.user.is_empty() {
            self.node.user_online(&info.user, &client).await;
        }
        self.identity = Some(info);
        match claims.exp {
            // The backend refreshes it when it expires: no client-side refresh.
            Some(exp) if from_proxy && self.refreshes_server_side() => {
                self.peer.set_connected(None);
                self.schedule_refresh(exp);
            }
            exp => {
                self.expires_at = exp;
                self.peer.set_connected(exp);
            }
        }

        // Server-side subscriptions: the user's personal channel and those of the token,
        // recovered from the positions the client sent for them.
        let mut subs = HashMap::new();
        let mut activate = Vec::new();
        let mut positions = req.subs;
        let personal = (self.node.config().personal.as_ref()).and_then(|p| p.channel(&claims.sub));
        for channel in personal.into_iter().chain(claims.channels) {
            if self.subs.contains_key(channel.as_str())
                || Channel::resolve(self.node.config(), &channel).is_err()
            {
                continue;
            }
            let mut sreq = positions.remove(&channel).unwrap_or_default();
            sreq.channel = channel.clone();
            match self.join(&sreq).await {
                Ok((result, next)) => {
                    subs.insert(channel.clone(), result);
                    activate.push((channel, next));
                }
                Err(e) => {
                    tracing::warn!(%channel, code = e.code, "server-side subscription failed");
                }
            }
        }
        let (expires, ttl) = self.ttl(now);
        let result = ConnectResult {
            client,
            version: VERSION.into(),
            expires,
            ttl,
            subs,
            ping: self.node.config().ping_interval_secs as u32,
            pong: true,
            session: self.stream_session.clone(),
            node: self.node.node_id().to_owned(),
        };
        tracing::info!(client = %result.client, user = %claims.sub, "connected");
        if let Some(m) = crate::metrics::get() {
            m.connects.inc();
        }
        self.reply(self.format().reply(id, "connect", &result));
        for (channel, next) in activate {
            self.node.activate(&channel, self.conn, next);
        }
        Flow::Continue
    }

    fn ttl(&self, now: Now) -> (bool, u32) {
        match self.expires_at {
            Some(exp) => (true, exp.saturating_sub(now.unix).max(1) as u32),
            None => (false, 0),
        }
    }

    async fn refresh(&mut self, id: u32, token: &str, now: Now) -> Flow {
        let claims = match self.verify(token).await {
            Ok(c) => c,
            Err(Flow::Continue) => {
                self.error(id, ErrorCode::TOKEN_EXPIRED);
                return Flow::Continue;
            }
            Err(close) => return close,
        };
        let identity = self.identity.as_ref().expect("connected");
        if claims.sub != identity.user {
            return Flow::Close(Disconnect::INVALID_TOKEN);
        }
        self.expires_at = claims.exp;
        self.peer.set_expiry(claims.exp);
        let (expires, ttl) = self.ttl(now);
        let result = RefreshResult {
            client: identity.client.clone(),
            version: VERSION.into(),
            expires,
            ttl,
        };
        self.reply(self.format().reply(id, "refresh", &result));
        Flow::Continue
    }

    /// The server sets when this connection expires (server API `refresh`): Unix seconds,
    /// `None` for never (the keepalive closes it as expired then). A new `info` is the
    /// connection info of the subscriptions made from now on.
    pub fn server_refresh(
        &mut self,
        expire_at: Option<u64>,
        info: Option<Box<serde_json::value::RawValue>>,
    ) {
        let Some(identity) = self.identity.as_mut() else {
            return;
        };
        if info.is_some() {
            identity.conn_info = info;
        }
        self.expires_at = expire_at;
        self.peer.set_expiry(expire_at);
    }

    /// The connection is gone: leave every room, drop presence, unregister.
    pub async fn close(&mut self) {
        self.forget_refresh();
        let channels: Vec<Arc<str>> = self.subs.keys().cloned().collect();
        for c in channels {
            self.unsubscribe(&c).await;
        }
        if let Some(identity) = &self.identity {
            self.node.unregister(&identity.user, self.conn);
            if !identity.user.is_empty() {
                self.node
                    .user_offline(&identity.user, &identity.client)
                    .await;
            }
        }
    }
}
