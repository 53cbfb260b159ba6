//! The session's subscriptions: subscribe (with recovery from the store), unsubscribe
//! (client or server initiated), and the reads a subscriber may make (presence, history).
//! A subscription is registered pending in the hub, recovered, replied to, then activated,
//! so no publication falls between the recovery and the live stream (see `hub/mod.rs`).

use std::sync::Arc;
use std::time::Duration;

use roomcast_proto::command::{HistoryRequest, SubscribeRequest};
use roomcast_proto::{
    ErrorCode, HistoryResult, PresenceResult, PresenceStatsResult, PushBody, SubRefreshResult,
    SubscribeResult,
};

use serde::Deserialize;

use super::{Now, Services, Session, Subscription};
use crate::auth::TokenError;
use crate::channel::Channel;
use crate::config::NamespaceOptions;
use crate::hub::{RoomEvent, ServerSubscribe, SubMode};
use crate::node::internal;
use crate::presence::Members;

/// Whether joins and leaves are pushed one by one in a room of `size` local subscribers
/// (the one joining or leaving included): not above `join_leave_max_room_size`, where they
/// would cost a push to every interested member for each of them.
fn pushes_join_leave(options: &NamespaceOptions, size: usize) -> bool {
    options.join_leave_max_room_size == 0 || size <= options.join_leave_max_room_size
}

/// What the subscribe request's `data` may ask of the server (other fields are the
/// application's).
#[derive(Deserialize)]
struct SubscribeData {
    digest: Option<bool>,
}

/// Whether a subscription gets a digest instead of every publication: as its `data` asks
/// (`{"digest": true}` or `false`), else by the namespace's `digest_above` room size.
fn wants_digest(req: &SubscribeRequest, options: &NamespaceOptions, room_size: usize) -> bool {
    let asked = req
        .data
        .as_ref()
        .and_then(|d| serde_json::from_str::<SubscribeData>(d.get()).ok())
        .and_then(|d| d.digest);
    asked.unwrap_or(options.digest_above > 0 && room_size >= options.digest_above)
}

impl<S: Services> Session<S> {
    /// Checks a subscription token: valid signature, this user, this channel, not expired.
    fn verify_subscription(&self, token: &str, channel: &str) -> Result<(), ErrorCode> {
        let user = &self.identity.as_ref().expect("connected").user;
        match self.node.verify(token) {
            Ok(c) if c.sub == *user && c.channel.as_deref() == Some(channel) => Ok(()),
            Ok(_) => Err(ErrorCode::PERMISSION_DENIED),
            Err(TokenError::Expired) => Err(ErrorCode::TOKEN_EXPIRED),
            Err(TokenError::Invalid(_) | TokenError::UnknownKey(_)) => {
                Err(ErrorCode::PERMISSION_DENIED)
            }
        }
    }

    /// A fresh subscription token for a channel the connection is subscribed to. (Expiry of
    /// subscription tokens is checked at subscribe and refresh; an expired one does not end
    /// a live subscription.)
    pub(super) fn sub_refresh(&mut self, id: u32, channel: &str, token: &str, now: Now) {
        if !self.subs.contains_key(channel) {
            return self.error(id, ErrorCode::PERMISSION_DENIED);
        }
        match self.verify_subscription(token, channel) {
            Ok(()) => {
                let exp = self.node.verify(token).ok().and_then(|c| c.exp);
                let result = match exp {
                    Some(exp) => SubRefreshResult {
                        expires: true,
                        ttl: exp.saturating_sub(now.unix).max(1) as u32,
                    },
                    None => SubRefreshResult::default(),
                };
                self.reply(self.format().reply(id, "sub_refresh", &result));
            }
            Err(e) => self.error(id, e),
        }
    }

    pub(super) async fn subscribe(&mut self, id: u32, req: SubscribeRequest) {
        let user = self.identity.as_ref().expect("connected").user.clone();
        let channel = match Channel::resolve(self.node.config(), &req.channel) {
            Ok(c) => c,
            Err(e) => return self.error(id, e),
        };
        // A subscription token (HS256, claims `sub`, `channel`, `exp`) grants a channel
        // clients may not subscribe to on their own.
        if !req.delta.is_empty() && req.delta != "fossil" {
            return self.reply(self.format().error_message(
                id,
                ErrorCode::BAD_REQUEST,
                "unknown delta type (only \"fossil\")",
            ));
        }
        let sub_refresh = channel.options.proxy_sub_refresh;
        let mut expire_at = 0;
        let granted = if req.token.is_empty() && channel.options.proxy_subscribe {
            // The backend decides; on a refusal or failure it has already been answered.
            match self.proxy_subscribe(id, &req).await {
                Some(exp) => expire_at = exp,
                None => return,
            }
            true
        } else if req.token.is_empty() {
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
        if channel.options.members_only {
            if let Err(e) = self.node.check_member(&req.channel, &user).await {
                return self.error(id, e);
            }
        }
        if self.subs.contains_key(req.channel.as_str()) {
            if self.personal_channel().as_deref() == Some(req.channel.as_str()) {
                // A client subscribing to its own personal channel itself (written before
                // server-side personal subscriptions): it is subscribed already, so the
                // reply gives the position and publications keep coming as they do.
                return match self.node.position(&req.channel).await {
                    Ok(pos) => {
                        let result = SubscribeResult {
                            recoverable: true,
                            positioned: true,
                            epoch: pos.epoch,
                            offset: pos.offset,
                            ..SubscribeResult::default()
                        };
                        self.reply(self.format().reply(id, "subscribe", &result));
                    }
                    Err(e) => self.error(id, internal(e)),
                };
            }
            return self.error(id, ErrorCode::ALREADY_SUBSCRIBED);
        }
        // The personal channel is the server's own subscription: not counted.
        let own = self
            .personal_channel()
            .filter(|c| self.subs.contains_key(c.as_str()));
        if self.subs.len() - usize::from(own.is_some())
            >= self.node.config().max_channels_per_connection
        {
            return self.error(id, ErrorCode::LIMIT_EXCEEDED);
        }
        match self.join(&req).await {
            Ok((result, next)) => {
                self.reply(self.format().reply(id, "subscribe", &result));
                self.node.activate(&req.channel, self.conn, next);
                if expire_at > 0 && sub_refresh {
                    self.schedule_sub_refresh(&req.channel, expire_at);
                }
            }
            Err(e) => self.error(id, e),
        }
    }

    /// This connection's personal channel, when personal channels are on.
    fn personal_channel(&self) -> Option<String> {
        let user = &self.identity.as_ref()?.user;
        self.node.config().personal.as_ref()?.channel(user)
    }

    /// Registers a subscription (pending in the hub), recovers its missed publications and
    /// announces it. The caller queues the reply, then activates the subscriber.
    pub(super) async fn join(
        &mut self,
        req: &SubscribeRequest,
    ) -> Result<(SubscribeResult, Option<u64>), ErrorCode> {
        self.join_as(req, None).await
    }

    /// `join`, for a server-side subscription when `server` is given: its overrides of the
    /// namespace options apply, and its `info` is the channel info presence and join/leave
    /// show for this subscription.
    async fn join_as(
        &mut self,
        req: &SubscribeRequest,
        server: Option<&ServerSubscribe>,
    ) -> Result<(SubscribeResult, Option<u64>), ErrorCode> {
        let node = self.node.clone();
        let mut options = Channel::resolve(node.config(), &req.channel)?
            .options
            .clone();
        let mut identity = self.identity.clone().expect("connected");
        if let Some(server) = server {
            let o = &server.overrides;
            options.presence = o.presence.unwrap_or(options.presence);
            options.join_leave = o.join_leave.unwrap_or(options.join_leave);
            options.force_push_join_leave = o
                .force_push_join_leave
                .unwrap_or(options.force_push_join_leave);
            options.force_recovery = o.force_recovery.unwrap_or(options.force_recovery);
            identity.chan_info.clone_from(&server.info);
        }
        if self.personal_channel().as_deref() == Some(req.channel.as_str()) {
            // Its only subscribers are the user's own connections: presence and join/leave
            // would tell them nothing (`user_status` says where the user is), at a registry
            // write and a routed event per connect.
            options.presence = false;
            options.join_leave = false;
        }
        let room: Arc<str> = req.channel.as_str().into();
        let digest = wants_digest(req, &options, node.room_size(&room));
        // Delta compression when asked for and the namespace allows it; not negotiated
        // (full publications, `delta` absent from the reply) otherwise, as Centrifugo does.
        let delta =
            req.delta == "fossil" && options.allowed_delta_types.iter().any(|t| t == "fossil");
        let mode = SubMode {
            join_leave: options.join_leave && (options.force_push_join_leave || req.join_leave),
            digest: digest.then(|| Duration::from_millis(options.digest_interval_ms)),
            delta,
        };
        let size = node
            .join(&room, self.conn, self.peer.outbox.clone(), mode)
            .await?;
        // An ephemeral room has no stream to position in or recover from.
        let recoverable = !options.ephemeral && (options.force_recovery || req.recoverable);
        let positioned = !options.ephemeral && (recoverable || req.positioned);
        let mut result = SubscribeResult::default();
        let mut next = None;
        if positioned {
            // A digest subscription recovers nothing: it learns the newest position.
            let read = if req.recover && !digest {
                let limit = node.config().recovery_max_publications as usize;
                let range = crate::store::Range {
                    since: Some(req.offset),
                    limit: limit + 1,
                    reverse: false,
                };
                node.range(&room, range).await
            } else {
                node.position(&room)
                    .await
                    .map(|p| Arc::new((Vec::new(), p)))
            };
            let read = match read {
                Ok(r) => r,
                Err(e) => {
                    node.leave(&room, self.conn).await;
                    return Err(internal(e));
                }
            };
            let (msgs, pos) = (&read.0, &read.1);
            if req.recover {
                result.was_recovering = true;
                // An empty epoch means "any epoch", as the SDKs use it for `since` without one.
                let same_stream =
                    (req.epoch.is_empty() || req.epoch == pos.epoch) && req.offset <= pos.offset;
                let within = pos.offset - req.offset.min(pos.offset)
                    <= node.config().recovery_max_publications;
                // The reply carries the publications; beyond the byte budget the client
                // pages history instead.
                let bytes = crate::store::budget_bytes(msgs);
                if bytes > node.config().recovery_max_bytes {
                    tracing::debug!(bytes, "recovery over the byte budget; client pages history");
                }
                // Retention (or `history_remove`) may have removed what follows the
                // client's position: only a gap-free run from its next offset recovers.
                let contiguous = req.offset >= pos.offset
                    || msgs.first().map(|m| m.offset) == Some(req.offset + 1);
                if same_stream
                    && within
                    && contiguous
                    && bytes <= node.config().recovery_max_bytes
                    && !digest
                {
                    result.recovered = true;
                    result.publications = msgs
                        .iter()
                        .map(crate::store::Message::publication)
                        .collect();
                }
            }
            if req.recover {
                if let Some(m) = crate::metrics::get() {
                    m.recovery(result.recovered, result.publications.len());
                }
                if !result.recovered && req.flag & SubscribeRequest::REJECT_UNRECOVERED != 0 {
                    // The SDK asked for the error, to reload its state (`getState`) and
                    // subscribe again from the position it returns.
                    node.leave(&room, self.conn).await;
                    return Err(ErrorCode::UNRECOVERABLE_POSITION);
                }
            }
            if delta && self.format() == roomcast_proto::Format::Json {
                // The delta mode's JSON shape: data as strings (see `with_string_data`).
                for p in &mut result.publications {
                    *p = p.with_string_data();
                }
            }
            result.recoverable = recoverable;
            result.positioned = positioned;
            result.epoch = pos.epoch.clone();
            result.offset = pos.offset;
            next = Some(pos.offset + 1);
        }
        result.delta = delta;
        if options.presence {
            node.presence_add(&room, identity.clone()).await;
        }
        if options.join_leave && pushes_join_leave(&options, size) {
            node.announce(RoomEvent::Join {
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

    /// Ends a subscription: hub, presence, leave event. Does nothing if not subscribed.
    pub async fn unsubscribe(&mut self, channel: &str) {
        let Some((room, sub)) = self.subs.remove_entry(channel) else {
            return;
        };
        self.forget_sub_refresh(channel);
        let left = self.node.leave(&room, self.conn).await;
        let identity = self.identity.clone().expect("connected");
        if sub.presence {
            self.node.presence_remove(&room, &identity.client).await;
        }
        let pushed = Channel::resolve(self.node.config(), &room)
            .is_ok_and(|c| pushes_join_leave(c.options, left + 1));
        if sub.join_leave && pushed {
            self.node
                .announce(RoomEvent::Leave {
                    room,
                    info: identity,
                })
                .await;
        }
    }

    /// The server unsubscribes this connection (server API, or an expired subscription):
    /// the client is told with an unsubscribe push of `code`.
    pub async fn server_unsubscribe(&mut self, channel: &str, code: u32) {
        if self.subs.contains_key(channel) {
            self.unsubscribe(channel).await;
            self.reply(self.format().push(
                channel,
                PushBody::Unsubscribe {
                    code,
                    reason: roomcast_proto::codes::unsubscribe::reason(code),
                },
            ));
        }
    }

    /// The server subscribes this connection (server API `subscribe`): as the client's own
    /// subscribe would (recovering from `recover_since` when given), and the client learns
    /// it from a subscribe push carrying the result. Already subscribed, a channel that
    /// does not resolve, or the connection's channel limit reached: nothing happens (the
    /// API call is answered before its connections act on it; the reason is logged).
    pub async fn server_subscribe(&mut self, sub: &ServerSubscribe) {
        if !self.is_connected() || self.subs.contains_key(sub.channel.as_str()) {
            return;
        }
        let own = self
            .personal_channel()
            .filter(|c| self.subs.contains_key(c.as_str()));
        if self.subs.len() - usize::from(own.is_some())
            >= self.node.config().max_channels_per_connection
        {
            tracing::info!(channel = %sub.channel, "server-side subscribe over the channel limit");
            return;
        }
        let since = sub.recover_since.clone();
        let req = SubscribeRequest {
            channel: sub.channel.clone(),
            recover: since.is_some(),
            epoch: since.as_ref().map(|p| p.epoch.clone()).unwrap_or_default(),
            offset: since.as_ref().map_or(0, |p| p.offset),
            positioned: sub.overrides.force_positioning.unwrap_or(false),
            recoverable: since.is_some(),
            join_leave: sub.overrides.force_push_join_leave.unwrap_or(false),
            ..SubscribeRequest::default()
        };
        match self.join_as(&req, Some(sub)).await {
            Ok((result, next)) => {
                self.reply(
                    self.format()
                        .push(&sub.channel, PushBody::Subscribe(&result)),
                );
                self.node.activate(&sub.channel, self.conn, next);
            }
            Err(e) => {
                tracing::info!(channel = %sub.channel, code = e.code, "server-side subscribe failed");
            }
        }
    }

    pub(super) async fn presence(&mut self, id: u32, channel_name: &str, stats: bool) {
        let channel = match Channel::resolve(self.node.config(), channel_name) {
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
            let (num_clients, num_users) = self.node.presence_stats(channel_name).await;
            self.reply(self.format().reply(
                id,
                "presence_stats",
                &PresenceStatsResult {
                    num_clients,
                    num_users,
                },
            ));
        } else {
            let max = channel.options.presence_max_entries;
            match self.node.presence(channel_name, max).await {
                Members::Listed(presence) => {
                    self.reply(
                        self.format()
                            .reply(id, "presence", &PresenceResult { presence }),
                    );
                }
                Members::TooMany { .. } => self.error(id, ErrorCode::LIMIT_EXCEEDED),
            }
        }
    }

    pub(super) async fn history(&mut self, id: u32, req: HistoryRequest) {
        let channel = match Channel::resolve(self.node.config(), &req.channel) {
            Ok(c) => c,
            Err(e) => return self.error(id, e),
        };
        if !self.subs.contains_key(req.channel.as_str())
            || !channel.options.allow_history_for_subscriber
        {
            return self.error(id, ErrorCode::PERMISSION_DENIED);
        }
        if channel.options.members_only {
            // Checked again: the user may have been removed since subscribing.
            let user = &self.identity.as_ref().expect("connected").user;
            if let Err(e) = self.node.check_member(&req.channel, user).await {
                return self.error(id, e);
            }
        }
        match self
            .node
            .history(&req.channel, req.limit, req.since.as_ref(), req.reverse)
            .await
        {
            Ok((msgs, pos)) => {
                let result = HistoryResult {
                    publications: msgs
                        .iter()
                        .map(crate::store::Message::publication)
                        .collect(),
                    epoch: pos.epoch,
                    offset: pos.offset,
                };
                self.reply(self.format().reply(id, "history", &result));
            }
            Err(ErrorCode::UNRECOVERABLE_POSITION) => self.reply(self.format().error_message(
                id,
                ErrorCode::UNRECOVERABLE_POSITION,
                "unrecoverable position: the stream's epoch changed",
            )),
            Err(e) => self.error(id, e),
        }
    }
}
