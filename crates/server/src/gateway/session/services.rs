//! The node as a session sees it: the narrow set of services the protocol needs (auth,
//! connection registry, rooms, store reads, publishing, presence), so the session can be
//! driven in unit tests over an in-memory implementation. `Node` implements it by
//! delegating to its own methods and components.

use std::future::Future;
use std::sync::Arc;

use roomcast_proto::{ClientInfo, ErrorCode, StreamPosition};
use serde_json::value::RawValue;
use tokio::time::Instant;

use crate::auth::{Claims, TokenError};
use crate::chat::ChatError;
use crate::config::SessionConfig;
use crate::hub::{ConnEntry, ConnId, Outbox, RoomEvent, SubMode};
use crate::node::Node;
use crate::personal::UserStatus;
use crate::presence::Members;
use crate::store::{Appended, Message, Position, Range, StoreError};

/// What a session asks of its node.
pub trait Services: Send + Sync + 'static {
    /// The limits and namespaces sessions follow.
    fn config(&self) -> &SessionConfig;
    /// This node's id (in connect replies).
    fn node_id(&self) -> &str;
    /// Checks a subscription token (or any token: signature, expiry, audience).
    fn verify(&self, token: &str) -> Result<Claims, TokenError>;
    /// Checks a connection token: `verify`, and not a subscription token.
    fn verify_connection(&self, token: &str) -> Result<Claims, TokenError>;
    /// `verify_connection`, the token keys refreshed first when the token names a key id
    /// they lack (see `Auth::verify_fresh`).
    fn verify_connection_fresh(
        &self,
        token: &str,
    ) -> impl Future<Output = Result<Claims, TokenError>> + Send {
        std::future::ready(self.verify_connection(token))
    }
    /// The backend proxies; `None`: no proxy (the in-memory test node).
    fn proxies(&self) -> Option<&crate::proxy::Proxies> {
        None
    }
    /// The schedule of server-side refreshes; `None`: no refresh proxy (test node).
    fn refresher(&self) -> Option<&crate::proxy::Refresher> {
        None
    }
    /// A fresh connection id.
    fn next_conn_id(&self) -> ConnId;
    /// Connections of `user` on this node.
    fn user_conns(&self, user: &str) -> usize;
    /// Registers a connected client (server API disconnects and counts find it).
    fn register(&self, user: &str, conn: ConnId, entry: ConnEntry);
    fn unregister(&self, user: &str, conn: ConnId);
    /// Adds a pending subscriber to a room (see `Node::join`); the room's local
    /// subscribers, this one included.
    fn join(
        &self,
        room: &str,
        conn: ConnId,
        outbox: Arc<Outbox>,
        mode: SubMode,
    ) -> impl Future<Output = Result<usize, ErrorCode>> + Send;
    /// Local subscribers of a room.
    fn room_size(&self, room: &str) -> usize;
    /// Removes a subscriber from a room; the room's local subscribers left.
    fn leave(&self, room: &str, conn: ConnId) -> impl Future<Output = usize> + Send;
    /// Ends a subscriber's pending state once its reply is queued.
    fn activate(&self, room: &str, conn: ConnId, next: Option<u64>);
    /// Publishes a join or leave event.
    fn announce(&self, event: RoomEvent) -> impl Future<Output = ()> + Send;
    /// Stored publications of a room and its position.
    fn range(
        &self,
        room: &str,
        range: Range,
    ) -> impl Future<Output = Result<Arc<(Vec<Message>, Position)>, StoreError>> + Send;
    fn position(&self, room: &str) -> impl Future<Output = Result<Position, StoreError>> + Send;
    /// History with the protocol's semantics (see `Node::history`).
    fn history(
        &self,
        room: &str,
        limit: i64,
        since: Option<&StreamPosition>,
        reverse: bool,
    ) -> impl Future<Output = Result<(Vec<Message>, Position), ErrorCode>> + Send;
    /// Takes one publication from `room`'s publish rate (`rate` a second, 0: no limit).
    fn allow_room_publish(&self, room: &str, rate: u32, now: Instant) -> bool;
    /// Commits publications of one sender together.
    fn publish_batch(
        &self,
        items: Vec<(String, Box<RawValue>)>,
        sender: &ClientInfo,
    ) -> impl Future<Output = Vec<Result<Appended, StoreError>>> + Send;
    fn presence_add(&self, room: &str, info: ClientInfo) -> impl Future<Output = ()> + Send;
    fn presence_remove(&self, room: &str, client: &str) -> impl Future<Output = ()> + Send;
    fn presence(&self, room: &str, max: usize) -> impl Future<Output = Members> + Send;
    /// Number of clients and of distinct users in a room.
    fn presence_stats(&self, room: &str) -> impl Future<Output = (u32, u32)> + Send;
    /// Permission denied unless `user` is a member of `room` (`members_only` namespaces).
    fn check_member(
        &self,
        room: &str,
        user: &str,
    ) -> impl Future<Output = Result<(), ErrorCode>> + Send;
    /// Runs a `roomcast.*` rpc method for `user` (see `chat::rpc`).
    fn chat_rpc(
        &self,
        user: &str,
        method: &str,
        data: Option<&RawValue>,
    ) -> impl Future<Output = Result<Box<RawValue>, ChatError>> + Send;
    /// The user registry: a connection of `user` is here (resolves once recorded).
    fn user_online(&self, _user: &str, _client: &str) -> impl Future<Output = ()> + Send {
        async {}
    }
    /// The connection is gone.
    fn user_offline(&self, _user: &str, _client: &str) -> impl Future<Output = ()> + Send {
        async {}
    }
    /// Status of each user (`Node::user_status`).
    fn user_status(
        &self,
        _users: Vec<String>,
    ) -> impl Future<Output = Result<Vec<UserStatus>, ErrorCode>> + Send {
        async { Err(ErrorCode::METHOD_NOT_FOUND) }
    }
}

impl Services for Node {
    fn config(&self) -> &SessionConfig {
        &self.session
    }

    fn node_id(&self) -> &str {
        &self.id
    }

    fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        self.auth.verify(token)
    }

    fn verify_connection(&self, token: &str) -> Result<Claims, TokenError> {
        self.auth.verify_connection(token)
    }

    async fn verify_connection_fresh(&self, token: &str) -> Result<Claims, TokenError> {
        self.auth.verify_connection_fresh(token).await
    }

    fn proxies(&self) -> Option<&crate::proxy::Proxies> {
        Some(&self.proxies)
    }
    fn refresher(&self) -> Option<&crate::proxy::Refresher> {
        Some(&self.refresher)
    }

    fn next_conn_id(&self) -> ConnId {
        self.hub.next_conn_id()
    }

    fn user_conns(&self, user: &str) -> usize {
        self.hub.user_conns(user).len()
    }

    fn register(&self, user: &str, conn: ConnId, entry: ConnEntry) {
        self.hub.register_conn(user, conn, entry);
    }

    fn unregister(&self, user: &str, conn: ConnId) {
        self.hub.unregister_conn(user, conn);
    }

    async fn join(
        &self,
        room: &str,
        conn: ConnId,
        outbox: Arc<Outbox>,
        mode: SubMode,
    ) -> Result<usize, ErrorCode> {
        Node::join(self, room, conn, outbox, mode).await
    }

    fn room_size(&self, room: &str) -> usize {
        self.hub.room_size(room)
    }

    async fn leave(&self, room: &str, conn: ConnId) -> usize {
        Node::leave(self, room, conn).await
    }

    fn activate(&self, room: &str, conn: ConnId, next: Option<u64>) {
        self.hub.activate(room, conn, next);
    }

    async fn announce(&self, event: RoomEvent) {
        Node::announce(self, event).await;
    }

    async fn range(
        &self,
        room: &str,
        range: Range,
    ) -> Result<Arc<(Vec<Message>, Position)>, StoreError> {
        self.store.range_shared(room, range).await
    }

    async fn position(&self, room: &str) -> Result<Position, StoreError> {
        self.store.position(room).await
    }

    async fn history(
        &self,
        room: &str,
        limit: i64,
        since: Option<&StreamPosition>,
        reverse: bool,
    ) -> Result<(Vec<Message>, Position), ErrorCode> {
        Node::history(self, room, limit, since, reverse).await
    }

    fn allow_room_publish(&self, room: &str, rate: u32, now: Instant) -> bool {
        self.room_rates.allow(room, rate, now)
    }

    async fn publish_batch(
        &self,
        items: Vec<(String, Box<RawValue>)>,
        sender: &ClientInfo,
    ) -> Vec<Result<Appended, StoreError>> {
        Node::publish_batch(self, items, sender).await
    }

    async fn presence_add(&self, room: &str, info: ClientInfo) {
        self.presence.add(room, info).await;
    }

    async fn presence_remove(&self, room: &str, client: &str) {
        self.presence.remove(room, client).await;
    }

    async fn presence(&self, room: &str, max: usize) -> Members {
        self.presence.get(room, max).await
    }

    async fn presence_stats(&self, room: &str) -> (u32, u32) {
        self.presence.stats(room).await
    }

    async fn user_online(&self, user: &str, client: &str) {
        self.directory.add(user, client).await;
    }

    async fn user_offline(&self, user: &str, client: &str) {
        self.directory.remove(user, client).await;
    }

    async fn user_status(&self, users: Vec<String>) -> Result<Vec<UserStatus>, ErrorCode> {
        Node::user_status(self, &users).await.map_err(|e| e.code())
    }

    async fn check_member(&self, room: &str, user: &str) -> Result<(), ErrorCode> {
        Node::check_member(self, room, user).await
    }

    async fn chat_rpc(
        &self,
        user: &str,
        method: &str,
        data: Option<&RawValue>,
    ) -> Result<Box<RawValue>, ChatError> {
        crate::chat::rpc::call(self, user, method, data).await
    }
}
