//! A running node: its configuration and the components every connection and API call
//! share, plus the operations both the client protocol and the server API perform
//! (publish, history, presence).
//!
//! Data flows one way: gateway or API -> `Node::publish` -> store (commit) -> dispatcher
//! -> bus -> hub (on every node with subscribers) -> outboxes -> sockets.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use roomcast_proto::data::DataError;
use roomcast_proto::{ClientInfo, ErrorCode, StreamPosition};
use serde_json::value::RawValue;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Auth;
use crate::bus::Bus;
use crate::config::{Config, SessionConfig};
use crate::hub::{ConnId, Hub, Outbox, RoomEvent, SubMode};
use crate::presence::Presence;
use crate::store::{Appended, Committed, Message, NewMessage, Position, Range, Store, StoreError};

pub struct Node {
    pub config: Config,
    /// What client sessions read of `config`, built once.
    pub session: SessionConfig,
    pub auth: Auth,
    /// The application backend's proxies.
    pub proxies: Arc<crate::proxy::Proxies>,
    /// Connections and subscriptions due for the refresh and sub_refresh proxies.
    pub refresher: Arc<crate::proxy::Refresher>,
    pub store: Arc<dyn Store>,
    pub bus: Arc<dyn Bus>,
    pub hub: Arc<Hub>,
    pub presence: Arc<dyn Presence>,
    /// Which nodes hold each user's connections, and last-seen times (`personal/`).
    pub directory: Arc<dyn crate::personal::Directory>,
    /// Pings, pong deadlines, connect deadlines and token expiry of every connection.
    pub keepalive: Arc<crate::keepalive::Keepalive>,
    /// This node's id (in connect replies and the `info` API).
    pub id: String,
    pub started: Instant,
    /// Cancelled when the node starts draining.
    pub shutdown: CancellationToken,
    /// Every connection task and background task, so the drain can wait for them.
    pub tasks: TaskTracker,
    /// Publications accepted (committed) by this node.
    pub published: AtomicU64,
    /// Publish rate of each room with recent publications (`publish_rate_per_room`).
    pub room_rates: crate::rate::RoomRates,
    /// Offline notifications (`notify/`), when a namespace has `notify_offline`.
    pub notifier: Option<Arc<crate::notify::Notifier>>,
    /// This node's HTTP-streaming and SSE connections by session id, for the emulation
    /// endpoint (`gateway/emulation.rs`).
    pub streams: crate::gateway::emulation::Streams,
}

/// Bytes of a history reply around its publications (`{"id":N,"history":{...}}` or the
/// API's `{"result":{...}}`, the epoch and offset), kept free under `history_max_bytes`.
const HISTORY_ENVELOPE: usize = 512;
/// Publications read from the store by the first page of a history call; later pages are
/// sized from the bytes seen so far.
const FIRST_PAGE: usize = 16;

/// Counts what a serializer writes.
struct Count(usize);

impl std::io::Write for Count {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Bytes a message takes in a reply, as serde_json writes its publication.
fn encoded_len(m: &Message) -> usize {
    let mut c = Count(0);
    // Writing to a counter cannot fail; RawValue data is copied, not parsed.
    let _ = serde_json::to_writer(&mut c, &m.publication());
    c.0 + 1
}

impl Node {
    /// What publication data may be (client protocol and server API alike): valid JSON
    /// (the decoder checked that), nested at most `max_data_depth` deep, with numbers that
    /// fit a 64-bit float. Checked once, when accepted; stored and sent out byte for byte.
    pub fn check_data(&self, data: &RawValue) -> Result<(), DataError> {
        roomcast_proto::data::check(data, self.config.max_data_depth)
    }

    /// Store first, then publish: resolves once the message is committed (and handed to
    /// the dispatcher, which fans it out in commit order).
    pub async fn publish(
        &self,
        room: &str,
        data: Box<RawValue>,
        sender: Option<&ClientInfo>,
        idempotency_key: Option<String>,
    ) -> Result<Appended, StoreError> {
        if self.is_ephemeral(room) {
            return Ok(self
                .publish_live(vec![(room.to_owned(), data)], sender)
                .await);
        }
        let msg = NewMessage {
            room: room.to_owned(),
            data,
            user: sender.map(|s| s.user.clone()).unwrap_or_default(),
            client: sender.map(|s| s.client.clone()).unwrap_or_default(),
            info: sender.cloned(),
            idempotency_key,
        };
        let r = self.store.append(msg).await?;
        if !r.duplicate {
            self.published
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(r)
    }

    /// `publish` for several publications of one sender, committed together (offsets in
    /// the order given).
    pub async fn publish_batch(
        &self,
        items: Vec<(String, Box<RawValue>)>,
        sender: &ClientInfo,
    ) -> Vec<Result<Appended, StoreError>> {
        if items.iter().any(|(room, _)| self.is_ephemeral(room)) {
            // Mixed with durable ones (rare): each on its own path, results in order.
            let mut out = Vec::with_capacity(items.len());
            for (room, data) in items {
                out.push(self.publish(&room, data, Some(sender), None).await);
            }
            return out;
        }
        let msgs = items
            .into_iter()
            .map(|(room, data)| NewMessage {
                room,
                data,
                user: sender.user.clone(),
                client: sender.client.clone(),
                info: Some(sender.clone()),
                idempotency_key: None,
            })
            .collect();
        let results = self.store.append_batch(msgs).await;
        let fresh = results
            .iter()
            .filter(|r| matches!(r, Ok(a) if !a.duplicate))
            .count();
        self.published
            .fetch_add(fresh as u64, std::sync::atomic::Ordering::Relaxed);
        results
    }

    /// Whether `room`'s namespace is ephemeral (publications live only).
    pub fn is_ephemeral(&self, room: &str) -> bool {
        crate::channel::Channel::resolve(&self.config, room).is_ok_and(|c| c.options.ephemeral)
    }

    /// Publishes without storing (ephemeral namespaces): to the room's subscribers on every
    /// node now, with no offset (unpositioned: never in history, recovery or unread), so a
    /// subscriber that is away misses it, as intended for typing indicators. Answers
    /// offset 0 and no epoch.
    async fn publish_live(
        &self,
        items: Vec<(String, Box<RawValue>)>,
        sender: Option<&ClientInfo>,
    ) -> Appended {
        let now = crate::store::now_ms();
        let events: Vec<RoomEvent> = items
            .into_iter()
            .map(|(room, data)| {
                RoomEvent::Publication(Arc::new(Message {
                    room: room.into(),
                    offset: 0,
                    uid: uuid::Uuid::new_v4().to_string(),
                    user: sender.map(|s| s.user.clone()).unwrap_or_default(),
                    client: sender.map(|s| s.client.clone()).unwrap_or_default(),
                    data,
                    info: sender.cloned(),
                    ts_ms: now,
                    tombstone: None,
                }))
            })
            .collect();
        self.published
            .fetch_add(events.len() as u64, std::sync::atomic::Ordering::Relaxed);
        if let Err(e) = self.bus.publish(events).await {
            tracing::warn!(error = %e, "live publication not published");
        }
        Appended {
            offset: 0,
            epoch: String::new(),
            duplicate: false,
        }
    }

    /// Deletes the publication at `offset` (its payload; the offset stays, as a tombstone)
    /// and tells the room's subscribers on every node with a live deletion notice: an
    /// unpositioned publication with `data: null` and `tags: {"deleted": "<offset>"}`.
    /// `false` when no publication is stored there.
    pub async fn delete_publication(&self, room: &str, offset: u64) -> Result<bool, ErrorCode> {
        let Some(tombstone) = self.store.delete(room, offset).await.map_err(internal)? else {
            return Ok(false);
        };
        let notice = Message {
            offset: 0,
            ts_ms: crate::store::now_ms(),
            ..tombstone
        };
        if let Err(e) = self
            .bus
            .publish(vec![RoomEvent::Publication(Arc::new(notice))])
            .await
        {
            // Deleted in the store: history and recovery show it; open clients see it
            // deleted once they reload.
            tracing::warn!(error = %e, "deletion notice not published");
        }
        Ok(true)
    }

    /// Removes every stored publication of `room` (Centrifugo's `history_remove`); the
    /// position stays.
    pub async fn remove_history(&self, room: &str) -> Result<u64, ErrorCode> {
        self.store.clear(room).await.map_err(internal)
    }

    /// Refuses a publication to `room` beyond its namespace's `publish_rate_per_room`
    /// (error 111, "too many requests"), from clients and the server API alike.
    pub fn check_room_rate(
        &self,
        room: &str,
        options: &crate::config::NamespaceOptions,
    ) -> Result<(), ErrorCode> {
        if self
            .room_rates
            .allow(room, options.publish_rate_per_room, Instant::now())
        {
            Ok(())
        } else {
            Err(ErrorCode::TOO_MANY_REQUESTS)
        }
    }

    /// History with the protocol's semantics: `limit` 0 returns only the position, a
    /// negative limit as many as allowed; `since` with another epoch is an unrecoverable
    /// position.
    ///
    /// The reply is bounded in bytes too (`history_max_bytes`): publications are read from
    /// the store in pages and the call stops at the last one that fits (always at least
    /// one, so the client makes progress), so a short page means "continue with `since`
    /// at the last offset returned" and never more than about the cap is held at once.
    pub async fn history(
        &self,
        room: &str,
        limit: i64,
        since: Option<&StreamPosition>,
        reverse: bool,
    ) -> Result<(Vec<Message>, Position), ErrorCode> {
        if self.is_ephemeral(room) {
            // Nothing is stored: history is not available there (as in Centrifugo).
            return Err(ErrorCode::NOT_AVAILABLE);
        }
        let max = self.config.history_max_limit as i64;
        let limit = if limit < 0 || limit > max { max } else { limit } as usize;
        if limit == 0 && since.is_none() {
            let pos = self.store.position(room).await.map_err(internal)?;
            return Ok((Vec::new(), pos));
        }
        let cap = self
            .config
            .history_max_bytes
            .saturating_sub(HISTORY_ENVELOPE);
        let mut out: Vec<Message> = Vec::new();
        let mut bytes = 0usize;
        let mut cursor = since.map(|s| s.offset);
        let mut page = limit.min(FIRST_PAGE);
        loop {
            let range = Range {
                since: cursor,
                limit: page,
                reverse,
            };
            let (msgs, pos) = self.store.range(room, range).await.map_err(internal)?;
            if let Some(s) = since {
                if !s.epoch.is_empty() && s.epoch != pos.epoch {
                    return Err(ErrorCode::UNRECOVERABLE_POSITION);
                }
            }
            let got = msgs.len();
            let mut full = false;
            for m in msgs {
                let n = encoded_len(&m);
                if !out.is_empty() && bytes + n > cap {
                    full = true;
                    break;
                }
                bytes += n;
                cursor = Some(m.offset);
                out.push(m);
            }
            if full || got < page || out.len() >= limit {
                return Ok((out, pos));
            }
            // Size the next page from what the publications weigh so far.
            let avg = (bytes / out.len()).max(1);
            page = (cap.saturating_sub(bytes) / avg + 1).clamp(1, limit - out.len());
        }
    }

    /// Adds a (pending) local subscriber to a room; the first one on this node makes the
    /// bus carry the room here. On a bus failure the subscriber is removed again. Returns
    /// the room's local subscribers, this one included.
    pub async fn join(
        &self,
        room: &str,
        conn: ConnId,
        outbox: Arc<Outbox>,
        mode: SubMode,
    ) -> Result<usize, ErrorCode> {
        let joined = self.hub.subscribe(room, conn, outbox, mode);
        if let Some(m) = crate::metrics::get() {
            m.subscriptions.inc();
        }
        if let (Some(id), Some(every)) = (joined.start_digest, mode.digest) {
            let timer = self
                .hub
                .clone()
                .run_digest(room.into(), id, every, self.shutdown.clone());
            self.tasks.spawn(timer);
        }
        if joined.new_room {
            if let Err(e) = self.bus.watch(room).await {
                tracing::warn!(error = %e, "bus watch failed");
                self.leave(room, conn).await;
                return Err(ErrorCode::INTERNAL);
            }
        }
        Ok(joined.size)
    }

    /// Removes a local subscriber; the last one on this node stops the bus carrying the room.
    /// Returns the room's local subscribers left.
    pub async fn leave(&self, room: &str, conn: ConnId) -> usize {
        let left = self.hub.unsubscribe(room, conn);
        if left.is_some() {
            if let Some(m) = crate::metrics::get() {
                m.subscriptions.dec();
            }
        }
        if left == Some(0) {
            self.bus.unwatch(room).await;
        }
        left.unwrap_or(0)
    }

    /// Publishes a join or leave to the room's subscribers on every node (not stored).
    pub async fn announce(&self, event: RoomEvent) {
        if let Err(e) = self.bus.publish(vec![event]).await {
            tracing::warn!(error = %e, "join/leave not published");
        }
    }

    /// Runs until the store's committed stream ends: publishes every committed message on
    /// the bus, in commit order.
    pub async fn dispatch(self: Arc<Self>, mut committed: Committed) {
        while let Some(batch) = committed.recv().await {
            if let Some(n) = &self.notifier {
                n.committed(&batch);
            }
            let events = batch.into_iter().map(RoomEvent::Publication).collect();
            if let Err(e) = self.bus.publish(events).await {
                // The messages are durable; subscribers that miss them recover from the
                // store (gap detection or reconnect).
                tracing::warn!(error = %e, "bus publish failed");
            }
        }
    }
}

pub fn internal(e: StoreError) -> ErrorCode {
    tracing::error!(error = %e, "store error");
    ErrorCode::INTERNAL
}
