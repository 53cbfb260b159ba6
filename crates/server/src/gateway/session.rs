//! One client's protocol session: takes decoded commands, answers through the outbox, and
//! keeps the connection's state (user, subscriptions, token expiry). It never touches the
//! socket; the pump in `gateway/mod.rs` does.

use std::collections::HashMap;
use std::sync::Arc;

use roomcast_proto::command::{ConnectRequest, HistoryRequest, PublishRequest, SubscribeRequest};
use roomcast_proto::{
    encode_empty_reply, encode_error, encode_error_message, encode_push, encode_reply, ClientInfo,
    ConnectResult, Disconnect, ErrorCode, HistoryResult, Method, PresenceResult,
    PresenceStatsResult, PushBody, RefreshResult, SubscribeResult,
};

use super::keepalive::Peer;
use crate::auth::{now_secs, Claims, TokenError};
use crate::channel::Channel;
use crate::hub::{ConnEntry, ConnId, RoomEvent};
use crate::node::{internal, Node};
use crate::VERSION;

/// What the pump does after a command.
#[derive(Debug, PartialEq)]
pub enum Flow {
    Continue,
    Close(Disconnect),
}

/// A subscription of this connection.
struct Subscription {
    /// Track presence and emit join/leave for it (namespace options at subscribe time).
    presence: bool,
    join_leave: bool,
}

pub struct Session {
    node: Arc<Node>,
    conn: ConnId,
    /// The connection's outbox and keepalive state.
    peer: Arc<Peer>,
    /// Set by a successful connect.
    identity: Option<ClientInfo>,
    /// Unix seconds the token expires at, if it does.
    expires_at: Option<u64>,
    subs: HashMap<Arc<str>, Subscription>,
    /// Command rate limit.
    budget: RateLimit,
}

/// A token bucket: `rate` commands a second on average, bursts up to twice that.
struct RateLimit {
    tokens: f32,
    last: tokio::time::Instant,
}

impl RateLimit {
    fn new(rate: u32) -> RateLimit {
        RateLimit {
            tokens: rate as f32 * 2.0,
            last: tokio::time::Instant::now(),
        }
    }

    fn allow(&mut self, rate: u32) -> bool {
        if rate == 0 {
            return true;
        }
        let now = tokio::time::Instant::now();
        let refill = now.duration_since(self.last).as_secs_f32() * rate as f32;
        self.last = now;
        self.tokens = (self.tokens + refill).min(rate as f32 * 2.0);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl Session {
    pub fn new(node: Arc<Node>, peer: Arc<Peer>) -> Session {
        let conn = node.hub.next_conn_id();
        let budget = RateLimit::new(node.config.commands_per_second);
        Session {
            node,
            conn,
            peer,
            identity: None,
            expires_at: None,
            subs: HashMap::new(),
            budget,
        }
    }

    pub fn is_connected(&self) -> bool {
        self.identity.is_some()
    }

    pub fn conn_id(&self) -> ConnId {
        self.conn
    }

    /// The client answered a ping.
    pub fn pong(&self) {
        self.peer.pong();
    }

    fn reply(&self, frame: bytes::Bytes) {
        self.peer.outbox.push_reply(frame);
    }

    fn error(&self, id: u32, err: ErrorCode) {
        self.reply(encode_error(id, err));
    }

    pub async fn handle(&mut self, id: u32, method: Method) -> Flow {
        if self.identity.is_none() && !matches!(method, Method::Connect(_)) {
            // Anything before connect is a protocol violation.
            return Flow::Close(Disconnect::BAD_REQUEST);
        }
        if id == 0 && !matches!(method, Method::Send(_) | Method::Empty) {
            // Commands that expect a reply need an id to carry it.
            return Flow::Close(Disconnect::BAD_REQUEST);
        }
        if !self.budget.allow(self.node.config.commands_per_second) {
            if id != 0 {
                self.error(id, ErrorCode::TOO_MANY_REQUESTS);
            }
            return Flow::Continue;
        }
        match method {
            Method::Connect(req) => return self.connect(id, req).await,
            Method::Subscribe(req) => self.subscribe(id, req).await,
            Method::Unsubscribe(req) => {
                self.unsubscribe(&req.channel).await;
                self.reply(encode_empty_reply(id, "unsubscribe"));
            }
            Method::Publish(req) => self.commit_publishes(vec![(id, req)]).await,
            Method::Presence(req) => self.presence(id, &req.channel, false).await,
            Method::PresenceStats(req) => self.presence(id, &req.channel, true).await,
            Method::History(req) => self.history(id, req).await,
            Method::Ping => self.reply(encode_empty_reply(id, "ping")),
            Method::Send(_) => {} // Asynchronous message with no handler configured: accepted, dropped.
            Method::Rpc(_) => self.error(id, ErrorCode::METHOD_NOT_FOUND),
            Method::Refresh(req) => return self.refresh(id, &req.token),
            Method::SubRefresh(req) => self.sub_refresh(id, &req.channel, &req.token),
            Method::Empty => {}
            Method::Unknown => self.error(id, ErrorCode::METHOD_NOT_FOUND),
        }
        Flow::Continue
    }

    fn verify(&self, token: &str) -> Result<Claims, Flow> {
        match self.node.auth.verify_connection(token) {
            Ok(c) => Ok(c),
            Err(TokenError::Expired) => Err(Flow::Continue),
            Err(TokenError::Invalid(why)) => {
                tracing::debug!(%why, "invalid token");
                Err(Flow::Close(Disconnect::INVALID_TOKEN))
            }
        }
    }

    async fn connect(&mut self, id: u32, req: ConnectRequest) -> Flow {
        if self.identity.is_some() {
            return Flow::Close(Disconnect::BAD_REQUEST);
        }
        let claims = if req.token.is_empty() {
            if !self.node.config.insecure {
                self.error(id, ErrorCode::UNAUTHORIZED);
                return Flow::Close(Disconnect::INVALID_TOKEN);
            }
            Claims::default()
        } else {
            match self.verify(&req.token) {
                Ok(c) => c,
                Err(Flow::Continue) => {
                    // Expired: the SDK fetches a fresh token and connects again.
                    self.error(id, ErrorCode::TOKEN_EXPIRED);
                    return Flow::Continue;
                }
                Err(close) => return close,
            }
        };
        let limit = self.node.config.max_connections_per_user;
        if limit > 0 && self.node.hub.user_conns(&claims.sub).len() >= limit {
            return Flow::Close(Disconnect::CONNECTION_LIMIT);
        }
        let client = uuid::Uuid::new_v4().to_string();
        let mut info = ClientInfo::new(&claims.sub, &client);
        info.conn_info = claims.info;
        self.node.hub.register_conn(
            &info.user,
            self.conn,
            ConnEntry {
                client: client.as_str().into(),
                outbox: self.peer.outbox.clone(),
            },
        );
        self.identity = Some(info);
        self.expires_at = claims.exp;
        self.peer.set_connected(claims.exp);

        // Server-side subscriptions from the token, recovered from the positions the client
        // sent for them.
        let mut subs = HashMap::new();
        let mut activate = Vec::new();
        let mut positions = req.subs;
        for channel in claims.channels {
            if self.subs.contains_key(channel.as_str())
                || Channel::resolve(&self.node.config, &channel).is_err()
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
                    tracing::warn!(%channel, code = e.code, "server-side subscription failed")
                }
            }
        }
        let (expires, ttl) = self.ttl();
        let result = ConnectResult {
            client,
            version: VERSION.into(),
            expires,
            ttl,
            subs,
            ping: self.node.config.ping_interval_secs as u32,
            pong: true,
            node: self.node.id.clone(),
        };
        self.reply(encode_reply(id, "connect", &result));
        for (channel, next) in activate {
            self.node.hub.activate(&channel, self.conn, next);
        }
        Flow::Continue
    }

    fn ttl(&self) -> (bool, u32) {
        match self.expires_at {
            Some(exp) => (true, exp.saturating_sub(now_secs()).max(1) as u32),
            None => (false, 0),
        }
    }

    fn refresh(&mut self, id: u32, token: &str) -> Flow {
        let claims = match self.verify(token) {
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
        self.peer.set_expiry(claims.exp);
        let (expires, ttl) = self.ttl();
        let result = RefreshResult {
            client: identity.client.clone(),
            version: VERSION.into(),
            expires,
            ttl,
        };
        self.reply(encode_reply(id, "refresh", &result));
        Flow::Continue
    }

    /// Checks a subscription token: valid signature, this user, this channel, not expired.
    fn verify_subscription(&self, token: &str, channel: &str) -> Result<(), ErrorCode> {
        let user = &self.identity.as_ref().expect("connected").user;
        match self.node.auth.verify(token) {
            Ok(c) if c.sub == *user && c.channel.as_deref() == Some(channel) => Ok(()),
            Ok(_) => Err(ErrorCode::PERMISSION_DENIED),
            Err(TokenError::Expired) => Err(ErrorCode::TOKEN_EXPIRED),
            Err(TokenError::Invalid(_)) => Err(ErrorCode::PERMISSION_DENIED),
        }
    }

    /// A fresh subscription token for a channel the connection is subscribed to. (Expiry of
    /// subscription tokens is checked at subscribe and refresh; an expired one does not end
    /// a live subscription.)
    fn sub_refresh(&mut self, id: u32, channel: &str, token: &str) {
        if !self.subs.contains_key(channel) {
            return self.error(id, ErrorCode::PERMISSION_DENIED);
        }
        match self.verify_subscription(token, channel) {
            Ok(()) => {
                let exp = self.node.auth.verify(token).ok().and_then(|c| c.exp);
                let result = match exp {
                    Some(exp) => {
                        serde_json::json!({"expires": true, "ttl": exp.saturating_sub(now_secs()).max(1)})
                    }
                    None => serde_json::json!({}),
                };
                self.reply(encode_reply(id, "sub_refresh", &result));
            }
            Err(e) => self.error(id, e),
        }
    }

    async fn subscribe(&mut self, id: u32, req: SubscribeRequest) {
        let user = self.identity.as_ref().expect("connected").user.clone();
        let channel = match Channel::resolve(&self.node.config, &req.channel) {
            Ok(c) => c,
            Err(e) => return self.error(id, e),
        };
        // A subscription token (HS256, claims `sub`, `channel`, `exp`) grants a channel
        // clients may not subscribe to on their own.
        let granted = if req.token.is_empty() {
            channel.options.allow_subscribe_for_client
        } else {
            match self.verify_subscription(&req.token, &req.channel) {
                Ok(()) => true,
                Err(e) => return self.error(id, e),
            }
        };
        if !granted || !channel.admits(&user) {
            return self.error(id, ErrorCode::PERMISSION_DENIED);
        }
        if self.subs.contains_key(req.channel.as_str()) {
            return self.error(id, ErrorCode::ALREADY_SUBSCRIBED);
        }
        if self.subs.len() >= self.node.config.max_channels_per_connection {
            return self.error(id, ErrorCode::LIMIT_EXCEEDED);
        }
        match self.join(&req).await {
            Ok((result, next)) => {
                self.reply(encode_reply(id, "subscribe", &result));
                self.node.hub.activate(&req.channel, self.conn, next);
            }
            Err(e) => self.error(id, e),
        }
    }

    /// Registers a subscription (pending in the hub), recovers its missed publications and
    /// announces it. The caller queues the reply, then activates the subscriber.
    async fn join(
        &mut self,
        req: &SubscribeRequest,
    ) -> Result<(SubscribeResult, Option<u64>), ErrorCode> {
        let node = self.node.clone();
        let options = Channel::resolve(&node.config, &req.channel)?
            .options
            .clone();
        let room: Arc<str> = req.channel.as_str().into();
        let join_leave = options.join_leave && (options.force_push_join_leave || req.join_leave);
        if node
            .hub
            .subscribe(&room, self.conn, self.peer.outbox.clone(), join_leave)
        {
            if let Err(e) = node.bus.watch(&room).await {
                tracing::warn!(error = %e, "bus watch failed");
                self.leave_hub(&room).await;
                return Err(ErrorCode::INTERNAL);
            }
        }
        let recoverable = options.force_recovery || req.recoverable;
        let positioned = recoverable || req.positioned;
        let mut result = SubscribeResult::default();
        let mut next = None;
        if positioned {
            let read = if req.recover {
                let limit = node.config.recovery_max_publications as usize;
                let range = crate::store::Range {
                    since: Some(req.offset),
                    limit: limit + 1,
                    reverse: false,
                };
                node.store.range(&room, range).await
            } else {
                node.store.position(&room).await.map(|p| (Vec::new(), p))
            };
            let (msgs, pos) = match read {
                Ok(r) => r,
                Err(e) => {
                    self.leave_hub(&room).await;
                    return Err(internal(e));
                }
            };
            if req.recover {
                result.was_recovering = true;
                // An empty epoch means "any epoch", as the SDKs use it for `since` without one.
                let same_stream =
                    (req.epoch.is_empty() || req.epoch == pos.epoch) && req.offset <= pos.offset;
                let within = pos.offset - req.offset.min(pos.offset)
                    <= node.config.recovery_max_publications;
                // The reply carries the publications; beyond the byte budget the client
                // pages history instead.
                let bytes: usize = msgs.iter().map(|m| m.data.get().len() + 96).sum();
                if bytes > node.config.recovery_max_bytes {
                    tracing::debug!(bytes, "recovery over the byte budget; client pages history");
                }
                if same_stream && within && bytes <= node.config.recovery_max_bytes {
                    result.recovered = true;
                    result.publications = msgs.iter().map(|m| m.publication()).collect();
                }
            }
            result.recoverable = recoverable;
            result.positioned = positioned;
            result.epoch = pos.epoch;
            result.offset = pos.offset;
            next = Some(pos.offset + 1);
        }
        let identity = self.identity.clone().expect("connected");
        if options.presence {
            node.presence.add(&room, identity.clone()).await;
        }
        if options.join_leave {
            self.announce(RoomEvent::Join {
                room: room.clone(),
                info: identity,
            })
            .await;
        }
        self.subs.insert(
            room,
            Subscription {
                presence: options.presence,
                join_leave: options.join_leave,
            },
        );
        Ok((result, next))
    }

    async fn announce(&self, event: RoomEvent) {
        if let Err(e) = self.node.bus.publish(vec![event]).await {
            tracing::warn!(error = %e, "join/leave not published");
        }
    }

    async fn leave_hub(&self, room: &str) {
        if self.node.hub.unsubscribe(room, self.conn) {
            self.node.bus.unwatch(room).await;
        }
    }

    /// Ends a subscription: hub, presence, leave event. Does nothing if not subscribed.
    pub async fn unsubscribe(&mut self, channel: &str) {
        let Some((room, sub)) = self.subs.remove_entry(channel) else {
            return;
        };
        self.leave_hub(&room).await;
        let identity = self.identity.clone().expect("connected");
        if sub.presence {
            self.node.presence.remove(&room, &identity.client).await;
        }
        if sub.join_leave {
            self.announce(RoomEvent::Leave {
                room,
                info: identity,
            })
            .await;
        }
    }

    /// The server unsubscribes this connection (server API): the client is told with an
    /// unsubscribe push.
    pub async fn server_unsubscribe(&mut self, channel: &str) {
        if self.subs.contains_key(channel) {
            self.unsubscribe(channel).await;
            self.reply(encode_push(
                channel,
                PushBody::Unsubscribe {
                    code: roomcast_proto::codes::unsubscribe::SERVER,
                    reason: "server unsubscribe",
                },
            ));
        }
    }

    /// Pipelined publishes (consecutive `publish` commands read together): each is checked
    /// and refused on its own, the allowed ones are committed together, in order, and each
    /// gets its reply.
    pub async fn publish_batch(&mut self, commands: Vec<(u32, PublishRequest)>) {
        if commands.is_empty() {
            return;
        }
        let mut allowed = Vec::with_capacity(commands.len());
        for (id, req) in commands {
            if self.budget.allow(self.node.config.commands_per_second) {
                allowed.push((id, req));
            } else {
                self.error(id, ErrorCode::TOO_MANY_REQUESTS);
            }
        }
        self.commit_publishes(allowed).await;
    }

    /// Checks each publish, commits the allowed ones together, replies to each.
    async fn commit_publishes(&mut self, commands: Vec<(u32, PublishRequest)>) {
        let Some(identity) = self.identity.clone() else {
            return;
        };
        let mut ids = Vec::with_capacity(commands.len());
        let mut items = Vec::with_capacity(commands.len());
        for (id, req) in commands {
            let data_ok = |()| {
                self.node
                    .check_data(&req.data)
                    .map_err(|_| ErrorCode::BAD_REQUEST)
            };
            match self
                .may_publish(&identity.user, &req.channel)
                .and_then(data_ok)
            {
                Ok(()) => {
                    ids.push(id);
                    items.push((req.channel, req.data));
                }
                Err(e) => self.error(id, e),
            }
        }
        let results = self.node.publish_batch(items, &identity).await;
        for (id, r) in ids.into_iter().zip(results) {
            match r {
                Ok(_) => self.reply(encode_empty_reply(id, "publish")),
                Err(e) => self.error(id, internal(e)),
            }
        }
    }

    fn may_publish(&self, user: &str, channel_name: &str) -> Result<(), ErrorCode> {
        let channel = Channel::resolve(&self.node.config, channel_name)?;
        let allowed = if self.subs.contains_key(channel_name) {
            channel.options.allow_publish_for_subscriber || channel.options.allow_publish_for_client
        } else {
            channel.options.allow_publish_for_client
        };
        if allowed && channel.admits(user) {
            Ok(())
        } else {
            Err(ErrorCode::PERMISSION_DENIED)
        }
    }

    async fn presence(&mut self, id: u32, channel_name: &str, stats: bool) {
        let channel = match Channel::resolve(&self.node.config, channel_name) {
            Ok(c) => c,
            Err(e) => return self.error(id, e),
        };
        if !channel.options.presence {
            return self.error(id, ErrorCode::NOT_AVAILABLE);
        }
        if !self.subs.contains_key(channel_name) || !channel.options.allow_presence_for_subscriber {
            return self.error(id, ErrorCode::PERMISSION_DENIED);
        }
        if stats {
            let (num_clients, num_users) = self.node.presence.stats(channel_name).await;
            self.reply(encode_reply(
                id,
                "presence_stats",
                &PresenceStatsResult {
                    num_clients,
                    num_users,
                },
            ));
        } else {
            let presence = self.node.presence.get(channel_name).await;
            self.reply(encode_reply(id, "presence", &PresenceResult { presence }));
        }
    }

    async fn history(&mut self, id: u32, req: HistoryRequest) {
        let channel = match Channel::resolve(&self.node.config, &req.channel) {
            Ok(c) => c,
            Err(e) => return self.error(id, e),
        };
        if !self.subs.contains_key(req.channel.as_str())
            || !channel.options.allow_history_for_subscriber
        {
            return self.error(id, ErrorCode::PERMISSION_DENIED);
        }
        match self
            .node
            .history(&req.channel, req.limit, req.since.as_ref(), req.reverse)
            .await
        {
            Ok((msgs, pos)) => {
                let result = HistoryResult {
                    publications: msgs.iter().map(|m| m.publication()).collect(),
                    epoch: pos.epoch,
                    offset: pos.offset,
                };
                self.reply(encode_reply(id, "history", &result));
            }
            Err(ErrorCode::UNRECOVERABLE_POSITION) => self.reply(encode_error_message(
                id,
                ErrorCode::UNRECOVERABLE_POSITION,
                "unrecoverable position: the stream's epoch changed",
            )),
            Err(e) => self.error(id, e),
        }
    }

    /// The connection is gone: leave every room, drop presence, unregister.
    pub async fn close(&mut self) {
        let channels: Vec<Arc<str>> = self.subs.keys().cloned().collect();
        for c in channels {
            self.unsubscribe(&c).await;
        }
        if let Some(identity) = &self.identity {
            self.node.hub.unregister_conn(&identity.user, self.conn);
        }
    }
}
