//! The cluster bus over Redis Pub/Sub.
//!
//! Channels (all under the `roomcast:` prefix):
//! - `room:<room>`, one per room with local subscribers: SUBSCRIBE on `watch`, UNSUBSCRIBE
//!   on `unwatch` (per room, never per user);
//! - `node:<id>`, one per node: user-targeted operations (disconnect, unsubscribe) and this
//!   node's own liveness probes;
//! - `control`: node heartbeats, from which `info` lists the cluster.
//!
//! Four tasks, joined by bounded queues:
//! - the **publisher** takes whatever is queued (up to `PIPELINE`) and sends it as one
//!   pipeline: one round trip per batch, never per recipient. When Redis fails it remembers
//!   the newest offset of each room it could not publish and, once Redis answers again,
//!   publishes a *hint* (`room`, `top`) so other nodes fetch what they missed;
//! - the **subscriber** owns the Pub/Sub connection: (re)connects, (re)subscribes every
//!   watched room, reconciles watch/unwatch (per command, and every second against the
//!   watched set as a safety net), and checks liveness: this node publishes a
//!   probe on its own channel every second; if none has come back for `STALL`, the
//!   connection is presumed dead and replaced, which is followed by a resync;
//! - the **receiver** runs the per-room reorder (`cluster/reorder.rs`) between the bus and
//!   the hub: the hub sees each room's offsets in order, gaps are filled from the store,
//!   and after every (re)subscription each watched room is swept from the store after the
//!   last offset it delivered (Redis may have dropped anything while it was away). Redis is
//!   never the source of truth;
//! - the **heartbeat** sends probes and heartbeats and writes this node's channel and
//!   user registry into Redis with a TTL.
//!
//! This node's own events go straight to the receiver too (and their echo from Redis is
//! ignored), so local subscribers do not depend on Redis at all.
//!
//! **Redis Cluster.** `redis_url` chooses the mode by its scheme: `redis://` (or `rediss://`)
//! is one standalone Redis (or a primary behind a proxy), exactly as before;
//! `redis+cluster://[user:password@]host:port[,host:port...]` is a Redis Cluster, given by
//! one or more seed nodes (the rest of the topology is read from them). On a cluster:
//! - room, node and control channels use **sharded** Pub/Sub (`SPUBLISH`, `SSUBSCRIBE`,
//!   `SUNSUBSCRIBE`): a publication reaches only the shard that owns its channel's slot,
//!   never the whole cluster. The subscriber holds one cluster connection (RESP3, pushes
//!   delivered to a channel) that subscribes each channel on its owning shard;
//! - the publisher still takes whatever is queued as one batch, groups it by hash slot
//!   and sends one pipeline per slot, all slots concurrently: one round trip per slot per
//!   batch, never per recipient or per message;
//! - keys used together carry a hash tag so they stay on one shard: a node's registry
//!   (`roomcast:node:{<id>}:channels` / `:users`, written in one MULTI) and a room's
//!   presence (`roomcast:presence:{r:<room>}` / `roomcast:presence-exp:{r:<room>}`, used
//!   together by Lua); reads across nodes' registries go one request per node, concurrently;
//! - a disconnection of any shard's connection is treated like a lost subscription on
//!   standalone Redis: the connection is replaced, everything resubscribed, and the
//!   watched rooms swept from the store. The liveness probe travels on this node's own
//!   channel, so it checks the shard that owns that channel (a silent stall of another
//!   shard is caught by the reorder's gap detection when later publications arrive).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::Slot;
use redis::{PushInfo, PushKind, RedisResult};
use roomcast_proto::{ClientInfo, Disconnect};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{interval, sleep, timeout, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::{Bus, BusError, NodeStats, UserOp};
use crate::cluster::reorder::Reorder;
use crate::hub::{Hub, RoomEvent};
use crate::store::{Message, Range, Store};

/// Items sent per pipeline at most.
const PIPELINE: usize = 512;
/// Publications waiting for the publisher. Beyond it they are not published on Redis
/// (counted and hinted; other nodes fetch them from the store).
const OUT_QUEUE: usize = 16_384;
/// Events waiting for the receiver (local and from Redis).
const INBOX: usize = 16_384;
/// Watch/unwatch requests waiting for the subscriber.
const COMMANDS: usize = 4096;
/// Time a Redis command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// Probe period and the silence after which the subscription is presumed stalled.
const PROBE_EVERY: Duration = Duration::from_secs(1);
const STALL: Duration = Duration::from_secs(3);
/// Heartbeat period; a node unheard of for `NODE_TTL` is gone from `info`.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);
const NODE_TTL: Duration = Duration::from_secs(10);
/// TTL of this node's registry keys (users, channels), refreshed on heartbeat.
pub const REGISTRY_TTL_SECS: u64 = 30;
/// How often the subscriber checks its subscriptions against the watched rooms.
const RECONCILE_EVERY: Duration = Duration::from_secs(1);
/// Rooms remembered as owing a hint at most.
const MAX_OWED: usize = 100_000;
/// Pages (of `SWEEP_PAGE`) a sweep reads per room at most.
const SWEEP_PAGES: usize = 20;
const SWEEP_PAGE: usize = 1000;

const PREFIX: &str = "roomcast:";

fn room_channel(room: &str) -> String {
    format!("{PREFIX}room:{room}")
}

fn node_channel(node: &str) -> String {
    format!("{PREFIX}node:{node}")
}

fn control_channel() -> String {
    format!("{PREFIX}control")
}

/// Registry key of a node's channels (room -> local subscribers). Hash-tagged with the
/// node id, like `users_key`: both are written in one MULTI, so they share a cluster slot.
pub fn channels_key(node: &str) -> String {
    format!("{PREFIX}node:{{{node}}}:channels")
}

/// Registry key of a node's users (user -> local connections).
pub fn users_key(node: &str) -> String {
    format!("{PREFIX}node:{{{node}}}:users")
}

/// The URL scheme that selects Redis Cluster mode.
pub const CLUSTER_SCHEME: &str = "redis+cluster://";

/// Where Redis is: one standalone server, or a cluster's seed nodes.
#[derive(Clone)]
pub enum Target {
    Single(redis::Client),
    /// Seed node URLs (`redis://[creds@]host:port`).
    Cluster(Vec<String>),
}

impl Target {
    /// `redis://...` / `rediss://...`: standalone; `redis+cluster://[creds@]h:p[,h:p...]`:
    /// a Redis Cluster (see the module docs).
    pub fn parse(url: &str) -> Result<Target, BusError> {
        let Some(rest) = url.strip_prefix(CLUSTER_SCHEME) else {
            return Ok(Target::Single(redis::Client::open(url).map_err(redis_err)?));
        };
        let rest = rest.split(['/', '?']).next().unwrap_or_default();
        let (creds, hosts) = match rest.rsplit_once('@') {
            Some((c, h)) => (format!("{c}@"), h),
            None => (String::new(), rest),
        };
        let nodes: Vec<String> = hosts
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(|h| format!("redis://{creds}{h}"))
            .collect();
        if nodes.is_empty() {
            return Err(BusError::Backend(format!(
                "{CLUSTER_SCHEME} needs at least one host:port"
            )));
        }
        // Validates the node addresses now rather than on first use.
        cluster_client(&nodes, None).map_err(redis_err)?;
        Ok(Target::Cluster(nodes))
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Target::Cluster(_))
    }

    /// A multiplexed, self-reconnecting connection for commands and publishes.
    pub async fn connect(&self) -> Result<RedisConn, BusError> {
        match self {
            Target::Single(client) => Ok(RedisConn::Single(manager(client).await?)),
            Target::Cluster(nodes) => {
                let client = cluster_client(nodes, None).map_err(redis_err)?;
                let conn = timeout(COMMAND_TIMEOUT * 2, client.get_async_connection())
                    .await
                    .map_err(|_| BusError::Backend("connecting to redis cluster timed out".into()))?
                    .map_err(redis_err)?;
                Ok(RedisConn::Cluster(conn))
            }
        }
    }

    /// A fresh subscription connection (no channels yet).
    async fn subscription(&self) -> RedisResult<Subscription> {
        match self {
            Target::Single(client) => {
                let (sink, stream) = client.get_async_pubsub().await?.split();
                Ok(Subscription::Single(sink, stream))
            }
            Target::Cluster(nodes) => {
                let (tx, rx) = mpsc::unbounded_channel();
                let client = cluster_client(nodes, Some(tx))?;
                let conn = client.get_async_connection().await?;
                Ok(Subscription::Cluster(conn, rx))
            }
        }
    }
}

fn cluster_client(
    nodes: &[String],
    push: Option<mpsc::UnboundedSender<PushInfo>>,
) -> RedisResult<redis::cluster::ClusterClient> {
    let mut b = redis::cluster::ClusterClientBuilder::new(nodes.to_vec())
        .connection_timeout(COMMAND_TIMEOUT)
        .response_timeout(COMMAND_TIMEOUT)
        .retries(1);
    if let Some(tx) = push {
        b = b
            .use_protocol(redis::ProtocolVersion::RESP3)
            .push_sender(tx);
    }
    b.build()
}

/// A command connection to standalone Redis or to a cluster (which routes each command
/// to the shard owning its key; a pipeline must stay within one slot).
#[derive(Clone)]
pub enum RedisConn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl RedisConn {
    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisConn::Cluster(_))
    }
}

impl redis::aio::ConnectionLike for RedisConn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            RedisConn::Single(c) => c.req_packed_commands(cmd, offset, count),
            RedisConn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
        }
    }
}

/// Publishes `msgs` in order per channel: standalone, one pipeline of PUBLISH; on a
/// cluster, one pipeline of SPUBLISH per hash slot, the slots concurrently.
async fn publish_all<'a>(
    conn: &mut RedisConn,
    msgs: impl Iterator<Item = (&'a str, &'a [u8])>,
) -> RedisResult<()> {
    match conn {
        RedisConn::Single(_) => {
            let mut pipe = redis::pipe();
            for (channel, payload) in msgs {
                pipe.publish(channel, payload).ignore();
            }
            pipe.query_async::<()>(conn).await
        }
        RedisConn::Cluster(c) => {
            let mut pipes: HashMap<Slot, redis::Pipeline> = HashMap::new();
            for (channel, payload) in msgs {
                pipes
                    .entry(Slot::for_key(channel))
                    .or_insert_with(redis::pipe)
                    .cmd("SPUBLISH")
                    .arg(channel)
                    .arg(payload)
                    .ignore();
            }
            let sends = pipes.into_values().map(|pipe| {
                let mut c = c.clone();
                async move { pipe.query_async::<()>(&mut c).await }
            });
            futures_util::future::try_join_all(sends).await.map(drop)
        }
    }
}

/// Groups channels by hash slot (sharded subscribe commands must stay within one slot).
fn by_slot(channels: &[String]) -> Vec<Vec<&str>> {
    let mut groups: HashMap<Slot, Vec<&str>> = HashMap::new();
    for c in channels {
        groups.entry(Slot::for_key(c)).or_default().push(c);
    }
    groups.into_values().collect()
}

/// The Pub/Sub side: a standalone SUBSCRIBE connection, or a cluster connection with
/// sharded subscriptions whose messages arrive as RESP3 pushes.
enum Subscription {
    Single(redis::aio::PubSubSink, redis::aio::PubSubStream),
    Cluster(ClusterConnection, mpsc::UnboundedReceiver<PushInfo>),
}

impl Subscription {
    async fn subscribe(&mut self, channels: &[String]) -> RedisResult<()> {
        match self {
            Subscription::Single(sink, _) => sink.subscribe(channels).await,
            Subscription::Cluster(conn, _) => {
                for group in by_slot(channels) {
                    conn.ssubscribe(group).await?;
                }
                Ok(())
            }
        }
    }

    async fn unsubscribe(&mut self, channels: &[String]) -> RedisResult<()> {
        match self {
            Subscription::Single(sink, _) => sink.unsubscribe(channels).await,
            Subscription::Cluster(conn, _) => {
                for group in by_slot(channels) {
                    conn.sunsubscribe(group).await?;
                }
                Ok(())
            }
        }
    }

    /// The next message (channel, payload); `None` when the connection was lost (on a
    /// cluster: any shard's connection dropped, so messages may have been missed).
    async fn next(&mut self) -> Option<(String, Vec<u8>)> {
        match self {
            Subscription::Single(_, stream) => {
                let msg = stream.next().await?;
                Some((
                    msg.get_channel_name().to_owned(),
                    msg.get_payload_bytes().to_vec(),
                ))
            }
            Subscription::Cluster(_, rx) => loop {
                let push = rx.recv().await?;
                match push.kind {
                    PushKind::SMessage | PushKind::Message => {
                        let mut data = push.data.into_iter();
                        if let (
                            Some(redis::Value::BulkString(channel)),
                            Some(redis::Value::BulkString(payload)),
                        ) = (data.next(), data.next())
                        {
                            let channel = String::from_utf8_lossy(&channel).into_owned();
                            return Some((channel, payload));
                        }
                    }
                    PushKind::Disconnection => return None,
                    _ => {}
                }
            },
        }
    }
}

/// What travels on the bus: compact JSON, one object per Redis message. Externally
/// tagged (`{"pub": {...}}`): an internally tagged enum would buffer its fields, which
/// raw JSON payloads (`RawValue`) cannot go through.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Envelope {
    /// A committed publication.
    Pub {
        n: String,
        r: String,
        o: u64,
        uid: String,
        u: String,
        c: String,
        d: Box<RawValue>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        i: Option<ClientInfo>,
        ts: i64,
    },
    Join {
        n: String,
        r: String,
        i: ClientInfo,
    },
    Leave {
        n: String,
        r: String,
        i: ClientInfo,
    },
    /// The room has publications up to `o` that may not have been published.
    Hint {
        n: String,
        r: String,
        o: u64,
    },
    /// A node checking its own subscription.
    Probe {
        n: String,
    },
    Heartbeat {
        n: String,
        s: NodeStats,
    },
    Disconnect {
        n: String,
        user: String,
        client: Option<String>,
        code: u16,
    },
    Unsubscribe {
        n: String,
        user: String,
        channel: String,
        client: Option<String>,
    },
}

impl Envelope {
    fn from_event(node: &str, e: &RoomEvent) -> Envelope {
        match e {
            RoomEvent::Publication(m) => Envelope::Pub {
                n: node.into(),
                r: m.room.to_string(),
                o: m.offset,
                uid: m.uid.clone(),
                u: m.user.clone(),
                c: m.client.clone(),
                d: m.data.clone(),
                i: m.info.clone(),
                ts: m.ts_ms,
            },
            RoomEvent::Join { room, info } => Envelope::Join {
                n: node.into(),
                r: room.to_string(),
                i: info.clone(),
            },
            RoomEvent::Leave { room, info } => Envelope::Leave {
                n: node.into(),
                r: room.to_string(),
                i: info.clone(),
            },
        }
    }

    fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("envelopes serialize")
    }
}

/// A disconnect code from the bus, as one of the protocol's operator disconnects.
fn known_disconnect(code: u16) -> Disconnect {
    Disconnect::operator(code).unwrap_or(Disconnect::FORCE_NO_RECONNECT)
}

/// Work for the receiver.
enum Inbound {
    /// Events to deliver in order (this node's, or decoded from Redis).
    Events(Vec<RoomEvent>),
    Hint(Arc<str>, u64),
    /// The room's store position read after its subscription was confirmed.
    Baseline(Arc<str>, u64),
    /// The room may have lost its last local subscriber.
    Forget(Arc<str>),
    /// The subscription was (re)established: sweep these rooms (`None`: every room) from
    /// the store after what they delivered.
    Resync(Option<Vec<Arc<str>>>),
}

/// One item for the publisher.
struct Outgoing {
    channel: String,
    payload: Vec<u8>,
    /// The publication's room and offset, to hint about if it cannot be sent.
    offset: Option<(Arc<str>, u64)>,
}

/// State shared by the bus handle and its tasks.
struct Shared {
    node: String,
    hub: Arc<Hub>,
    store: Arc<dyn Store>,
    started: Instant,
    /// Rooms this node watches, with the number of outstanding watches (the hub's
    /// new-room/last-leave transitions; they pair up, whatever order they are processed in).
    watched: Mutex<HashMap<Arc<str>, u64>>,
    /// Other nodes by id, with when they were last heard of.
    nodes: Mutex<HashMap<String, (NodeStats, Instant)>>,
    /// Publications not put on Redis because the publisher's queue was full.
    pub dropped: std::sync::atomic::AtomicU64,
    /// Reorder counters, updated by the receiver (see `NodeStats`).
    early: std::sync::atomic::AtomicU64,
    gap_fills: std::sync::atomic::AtomicU64,
    resyncs: std::sync::atomic::AtomicU64,
}

impl Shared {
    fn is_watched(&self, room: &str) -> bool {
        self.watched
            .lock()
            .expect("watched lock")
            .contains_key(room)
    }

    fn stats(&self) -> NodeStats {
        let (clients, users) = self.hub.counts();
        NodeStats {
            uid: self.node.clone(),
            name: self.node.clone(),
            version: crate::VERSION.into(),
            num_clients: clients as u64,
            num_users: users as u64,
            num_channels: self.hub.channels().len() as u64,
            uptime: self.started.elapsed().as_secs(),
            bus_early: self.early.load(Relaxed),
            bus_gap_fills: self.gap_fills.load(Relaxed),
            bus_resyncs: self.resyncs.load(Relaxed),
            bus_dropped: self.dropped.load(Relaxed),
        }
    }
}

pub struct RedisBus {
    shared: Arc<Shared>,
    /// To the publisher.
    out: mpsc::Sender<Outgoing>,
    /// To the receiver.
    inbox: mpsc::Sender<Inbound>,
    /// To the subscriber: reconcile a room's subscription, answer when done.
    commands: mpsc::Sender<(Arc<str>, oneshot::Sender<()>)>,
    /// Registry reads (`channels`).
    conn: RedisConn,
    /// Stops the tasks.
    stop: CancellationToken,
}

fn redis_err(e: impl std::fmt::Display) -> BusError {
    BusError::Backend(e.to_string())
}

/// Opens a multiplexed, self-reconnecting connection to `client`'s Redis.
pub async fn manager(client: &redis::Client) -> Result<ConnectionManager, BusError> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(COMMAND_TIMEOUT))
        .set_response_timeout(Some(COMMAND_TIMEOUT))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    timeout(
        COMMAND_TIMEOUT * 2,
        client.get_connection_manager_with_config(config),
    )
    .await
    .map_err(|_| BusError::Backend("connecting to redis timed out".into()))?
    .map_err(redis_err)
}

impl RedisBus {
    /// Connects to Redis at `url` and starts the bus tasks. The node id names its channel.
    pub async fn start(
        url: &str,
        node: String,
        hub: Arc<Hub>,
        store: Arc<dyn Store>,
    ) -> Result<RedisBus, BusError> {
        let target = Target::parse(url)?;
        let conn = target.connect().await?;
        let shared = Arc::new(Shared {
            node,
            hub,
            store,
            started: Instant::now(),
            watched: Mutex::new(HashMap::new()),
            nodes: Mutex::new(HashMap::new()),
            dropped: std::sync::atomic::AtomicU64::new(0),
            early: std::sync::atomic::AtomicU64::new(0),
            gap_fills: std::sync::atomic::AtomicU64::new(0),
            resyncs: std::sync::atomic::AtomicU64::new(0),
        });
        let stop = CancellationToken::new();
        let (out_tx, out_rx) = mpsc::channel(OUT_QUEUE);
        let (inbox_tx, inbox_rx) = mpsc::channel(INBOX);
        let (cmd_tx, cmd_rx) = mpsc::channel(COMMANDS);
        tokio::spawn(publisher(conn.clone(), out_rx, stop.clone()));
        tokio::spawn(receiver(shared.clone(), inbox_rx, stop.clone()));
        tokio::spawn(subscriber(
            shared.clone(),
            target,
            cmd_rx,
            inbox_tx.clone(),
            stop.clone(),
        ));
        tokio::spawn(heartbeat(
            shared.clone(),
            conn.clone(),
            out_tx.clone(),
            inbox_tx.clone(),
            stop.clone(),
        ));
        Ok(RedisBus {
            shared,
            out: out_tx,
            inbox: inbox_tx,
            commands: cmd_tx,
            conn,
            stop,
        })
    }

    fn enqueue(&self, item: Outgoing) {
        if self.out.try_send(item).is_err() {
            // Redis is far behind or away. The receivers fill the gap from the store when
            // a later publication (or the resync after reconnecting) shows it.
            self.shared
                .dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Live node ids (this one included).
    fn node_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .shared
            .nodes
            .lock()
            .expect("nodes lock")
            .keys()
            .cloned()
            .collect();
        ids.push(self.shared.node.clone());
        ids
    }
}

impl Drop for RedisBus {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[async_trait]
impl Bus for RedisBus {
    async fn publish(&self, events: Vec<RoomEvent>) -> Result<(), BusError> {
        for e in &events {
            let offset = match e {
                RoomEvent::Publication(m) => Some((m.room.clone(), m.offset)),
                _ => None,
            };
            self.enqueue(Outgoing {
                channel: room_channel(e.room()),
                payload: Envelope::from_event(&self.shared.node, e).encode(),
                offset,
            });
        }
        // Local subscribers get them without a Redis round trip.
        self.inbox
            .send(Inbound::Events(events))
            .await
            .map_err(|_| BusError::Backend("bus stopped".into()))
    }

    async fn watch(&self, room: &str) -> Result<(), BusError> {
        let room: Arc<str> = room.into();
        *self
            .shared
            .watched
            .lock()
            .expect("watched lock")
            .entry(room.clone())
            .or_default() += 1;
        let (ack, done) = oneshot::channel();
        // Bounded waits: while Redis is away the subscriber takes no commands, and a full
        // command queue must not hold a subscribe forever.
        match timeout(COMMAND_TIMEOUT, self.commands.send((room.clone(), ack))).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(BusError::Backend("bus stopped".into())),
            Err(_) => tracing::warn!(%room, "redis subscriber busy; the resync will cover it"),
        }
        // Once SUBSCRIBE is confirmed, every publication committed from now on reaches
        // this node. When Redis is away the wait ends early: the room is subscribed on
        // reconnect, and the resync then fills what was missed from the store.
        if timeout(COMMAND_TIMEOUT, done).await.is_err() {
            tracing::warn!(%room, "redis subscribe not confirmed; the resync will cover it");
        }
        let baseline = self
            .shared
            .store
            .position(&room)
            .await
            .map_err(redis_err)?
            .offset;
        self.inbox
            .send(Inbound::Baseline(room, baseline))
            .await
            .map_err(|_| BusError::Backend("bus stopped".into()))
    }

    async fn unwatch(&self, room: &str) {
        let room: Arc<str> = room.into();
        {
            let mut watched = self.shared.watched.lock().expect("watched lock");
            if let Some(n) = watched.get_mut(&room) {
                *n -= 1;
                if *n == 0 {
                    watched.remove(&room);
                }
            }
        }
        let (ack, _done) = oneshot::channel();
        // If this times out the room stays subscribed until the next reconnect, which
        // subscribes only watched rooms; its events are dropped by the reorder meanwhile.
        let _ = timeout(COMMAND_TIMEOUT, self.commands.send((room.clone(), ack))).await;
        let _ = self.inbox.send(Inbound::Forget(room)).await;
    }

    async fn user_op(&self, op: UserOp) -> Result<(), BusError> {
        op.apply(&self.shared.hub);
        let me = &self.shared.node;
        for id in self.node_ids() {
            if &id == me {
                continue;
            }
            let env = match &op {
                UserOp::Disconnect { user, client, why } => Envelope::Disconnect {
                    n: me.clone(),
                    user: user.clone(),
                    client: client.clone(),
                    code: why.code,
                },
                UserOp::Unsubscribe {
                    user,
                    channel,
                    client,
                } => Envelope::Unsubscribe {
                    n: me.clone(),
                    user: user.clone(),
                    channel: channel.clone(),
                    client: client.clone(),
                },
            };
            self.out
                .send(Outgoing {
                    channel: node_channel(&id),
                    payload: env.encode(),
                    offset: None,
                })
                .await
                .map_err(|_| BusError::Backend("bus stopped".into()))?;
        }
        Ok(())
    }

    async fn nodes(&self) -> Vec<NodeStats> {
        let mut all = vec![self.shared.stats()];
        all.extend(
            self.shared
                .nodes
                .lock()
                .expect("nodes lock")
                .values()
                .map(|(s, _)| s.clone()),
        );
        all.sort_by(|a, b| a.uid.cmp(&b.uid));
        all
    }

    async fn channels(&self) -> Option<HashMap<String, u64>> {
        let mut totals: HashMap<String, u64> = HashMap::new();
        for (room, n) in self.shared.hub.channels() {
            *totals.entry(room).or_default() += n as u64;
        }
        let others: Vec<String> = self
            .node_ids()
            .into_iter()
            .filter(|id| id != &self.shared.node)
            .collect();
        if others.is_empty() {
            return Some(totals);
        }
        let mut conn = self.conn.clone();
        let read = async {
            if conn.is_cluster() {
                // Each node's key is on its own shard: one request per node, concurrently.
                let reads = others.iter().map(|id| {
                    let mut c = conn.clone();
                    let key = channels_key(id);
                    async move {
                        redis::cmd("HGETALL")
                            .arg(key)
                            .query_async::<HashMap<String, u64>>(&mut c)
                            .await
                    }
                });
                futures_util::future::try_join_all(reads).await
            } else {
                let mut pipe = redis::pipe();
                for id in &others {
                    pipe.hgetall(channels_key(id));
                }
                pipe.query_async::<Vec<HashMap<String, u64>>>(&mut conn)
                    .await
            }
        };
        match timeout(COMMAND_TIMEOUT, read).await {
            Ok(Ok(maps)) => {
                for m in maps {
                    for (room, n) in m {
                        *totals.entry(room).or_default() += n;
                    }
                }
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "reading other nodes' channels failed"),
            Err(_) => tracing::warn!("reading other nodes' channels timed out"),
        }
        Some(totals)
    }
}

/// Sends queued items as pipelines; hints about what could not be sent.
async fn publisher(mut conn: RedisConn, mut rx: mpsc::Receiver<Outgoing>, stop: CancellationToken) {
    let mut batch = Vec::with_capacity(PIPELINE);
    // Rooms whose publications did not reach Redis, with the newest such offset.
    let mut owed: HashMap<Arc<str>, u64> = HashMap::new();
    loop {
        let first = tokio::select! {
            _ = stop.cancelled() => return,
            item = rx.recv() => match item { Some(i) => i, None => return },
        };
        batch.push(first);
        while batch.len() < PIPELINE {
            match rx.try_recv() {
                Ok(i) => batch.push(i),
                Err(_) => break,
            }
        }
        let hints: Vec<(Arc<str>, u64)> = owed.iter().map(|(r, o)| (r.clone(), *o)).collect();
        let hint_msgs: Vec<(String, Vec<u8>)> = hints
            .iter()
            .map(|(room, top)| {
                let env = Envelope::Hint {
                    n: String::new(),
                    r: room.to_string(),
                    o: *top,
                };
                (room_channel(room), env.encode())
            })
            .collect();
        let msgs = batch
            .iter()
            .map(|i| (i.channel.as_str(), i.payload.as_slice()))
            .chain(hint_msgs.iter().map(|(c, p)| (c.as_str(), p.as_slice())));
        match timeout(COMMAND_TIMEOUT, publish_all(&mut conn, msgs)).await {
            Ok(Ok(())) => {
                for (room, top) in hints {
                    if owed.get(&room) == Some(&top) {
                        owed.remove(&room);
                    }
                }
            }
            failed => {
                match failed {
                    Ok(Err(e)) => tracing::warn!(error = %e, "redis publish failed"),
                    _ => tracing::warn!("redis publish timed out"),
                }
                for item in &batch {
                    if let Some((room, offset)) = &item.offset {
                        if owed.len() < MAX_OWED || owed.contains_key(room) {
                            let top = owed.entry(room.clone()).or_default();
                            *top = (*top).max(*offset);
                        }
                    }
                }
            }
        }
        batch.clear();
    }
}

/// Owns the Pub/Sub connection: subscriptions, liveness, reconnects.
async fn subscriber(
    shared: Arc<Shared>,
    target: Target,
    mut commands: mpsc::Receiver<(Arc<str>, oneshot::Sender<()>)>,
    inbox: mpsc::Sender<Inbound>,
    stop: CancellationToken,
) {
    let own = node_channel(&shared.node);
    let control = control_channel();
    let mut backoff = Duration::from_millis(100);
    loop {
        if stop.is_cancelled() {
            return;
        }
        let mut subs = match timeout(COMMAND_TIMEOUT, target.subscription()).await {
            Ok(Ok(p)) => p,
            failed => {
                match failed {
                    Ok(Err(e)) => tracing::warn!(error = %e, "redis pubsub connect failed"),
                    _ => tracing::warn!("redis pubsub connect timed out"),
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        // Subscribe the fixed channels and every watched room.
        let rooms: Vec<Arc<str>> = shared
            .watched
            .lock()
            .expect("watched lock")
            .keys()
            .cloned()
            .collect();
        let mut subscribed: HashSet<Arc<str>> = HashSet::new();
        let mut ok = matches!(
            timeout(
                COMMAND_TIMEOUT,
                subs.subscribe(&[own.clone(), control.clone()])
            )
            .await,
            Ok(Ok(()))
        );
        for chunk in rooms.chunks(500) {
            if !ok {
                break;
            }
            let names: Vec<String> = chunk.iter().map(|r| room_channel(r)).collect();
            ok = matches!(
                timeout(COMMAND_TIMEOUT, subs.subscribe(&names)).await,
                Ok(Ok(()))
            );
            subscribed.extend(chunk.iter().cloned());
        }
        if !ok {
            tracing::warn!("redis resubscribe failed; reconnecting");
            sleep(backoff).await;
            continue;
        }
        backoff = Duration::from_millis(100);
        tracing::info!(rooms = subscribed.len(), "redis bus subscribed");
        // Anything published while the subscription was down is in the store.
        if inbox.send(Inbound::Resync(None)).await.is_err() {
            return;
        }
        let mut last_probe = Instant::now();
        let mut last_reconcile = Instant::now();
        let mut tick = interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                cmd = commands.recv() => {
                    let Some((room, ack)) = cmd else { return };
                    let want = shared.is_watched(&room);
                    let has = subscribed.contains(&room);
                    let result = if want && !has {
                        subscribed.insert(room.clone());
                        timeout(COMMAND_TIMEOUT, subs.subscribe(&[room_channel(&room)])).await
                    } else if !want && has {
                        subscribed.remove(&room);
                        timeout(COMMAND_TIMEOUT, subs.unsubscribe(&[room_channel(&room)])).await
                    } else {
                        Ok(Ok(()))
                    };
                    if !matches!(result, Ok(Ok(()))) {
                        tracing::warn!(%room, "redis (un)subscribe failed; reconnecting");
                        break;
                    }
                    let _ = ack.send(());
                }
                msg = subs.next() => {
                    let Some((channel, payload)) = msg else {
                        tracing::warn!("redis pubsub connection lost; reconnecting");
                        break;
                    };
                    match serde_json::from_slice::<Envelope>(&payload) {
                        Ok(Envelope::Probe { n }) if n == shared.node => last_probe = Instant::now(),
                        Ok(env) => {
                            if !handle(&shared, &inbox, env).await {
                                return;
                            }
                        }
                        Err(e) => tracing::warn!(%channel, error = %e, "undecodable bus message"),
                    }
                }
                _ = tick.tick() => {
                    if last_probe.elapsed() > STALL {
                        tracing::warn!("no probe came back through redis; resubscribing");
                        break;
                    }
                    if last_reconcile.elapsed() >= RECONCILE_EVERY {
                        last_reconcile = Instant::now();
                        match reconcile(&shared, &mut subs, &mut subscribed).await {
                            Ok(added) if added.is_empty() => {}
                            Ok(added) => {
                                // Subscribed late (a watch command timed out): read what
                                // those rooms may have missed.
                                if inbox.send(Inbound::Resync(Some(added))).await.is_err() {
                                    return;
                                }
                            }
                            Err(()) => {
                                tracing::warn!("redis reconcile failed; reconnecting");
                                break;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Makes the Redis subscriptions match the watched rooms (a safety net behind the
/// per-watch commands). Returns the rooms it subscribed.
async fn reconcile(
    shared: &Shared,
    subs: &mut Subscription,
    subscribed: &mut HashSet<Arc<str>>,
) -> Result<Vec<Arc<str>>, ()> {
    let watched: HashSet<Arc<str>> = shared
        .watched
        .lock()
        .expect("watched lock")
        .keys()
        .cloned()
        .collect();
    let added: Vec<Arc<str>> = watched.difference(subscribed).cloned().collect();
    let removed: Vec<Arc<str>> = subscribed.difference(&watched).cloned().collect();
    for chunk in added.chunks(500) {
        let names: Vec<String> = chunk.iter().map(|r| room_channel(r)).collect();
        if !matches!(
            timeout(COMMAND_TIMEOUT, subs.subscribe(&names)).await,
            Ok(Ok(()))
        ) {
            return Err(());
        }
        subscribed.extend(chunk.iter().cloned());
    }
    for chunk in removed.chunks(500) {
        let names: Vec<String> = chunk.iter().map(|r| room_channel(r)).collect();
        if !matches!(
            timeout(COMMAND_TIMEOUT, subs.unsubscribe(&names)).await,
            Ok(Ok(()))
        ) {
            return Err(());
        }
        for r in chunk {
            subscribed.remove(r);
        }
    }
    Ok(added)
}

/// Handles one decoded message from Redis. Returns false when the node is stopping.
async fn handle(shared: &Shared, inbox: &mpsc::Sender<Inbound>, env: Envelope) -> bool {
    let event = match env {
        Envelope::Pub {
            n,
            r,
            o,
            uid,
            u,
            c,
            d,
            i,
            ts,
        } => {
            if n == shared.node {
                return true; // delivered locally already
            }
            RoomEvent::Publication(Arc::new(Message {
                room: r.into(),
                offset: o,
                uid,
                user: u,
                client: c,
                data: d,
                info: i,
                ts_ms: ts,
            }))
        }
        Envelope::Join { n, r, i } | Envelope::Leave { n, r, i } if n == shared.node => {
            let _ = (r, i);
            return true;
        }
        Envelope::Join { r, i, .. } => RoomEvent::Join {
            room: r.into(),
            info: i,
        },
        Envelope::Leave { r, i, .. } => RoomEvent::Leave {
            room: r.into(),
            info: i,
        },
        Envelope::Hint { r, o, .. } => return inbox.send(Inbound::Hint(r.into(), o)).await.is_ok(),
        Envelope::Probe { .. } => return true,
        Envelope::Heartbeat { n, s } => {
            if n != shared.node {
                shared
                    .nodes
                    .lock()
                    .expect("nodes lock")
                    .insert(n, (s, Instant::now()));
            }
            return true;
        }
        Envelope::Disconnect {
            user, client, code, ..
        } => {
            UserOp::Disconnect {
                user,
                client,
                why: known_disconnect(code),
            }
            .apply(&shared.hub);
            return true;
        }
        Envelope::Unsubscribe {
            user,
            channel,
            client,
            ..
        } => {
            UserOp::Unsubscribe {
                user,
                channel,
                client,
            }
            .apply(&shared.hub);
            return true;
        }
    };
    inbox.send(Inbound::Events(vec![event])).await.is_ok()
}

/// The reorder between the bus and the hub (see `cluster/reorder.rs`).
async fn receiver(
    shared: Arc<Shared>,
    mut inbox: mpsc::Receiver<Inbound>,
    stop: CancellationToken,
) {
    let mut order = Reorder::default();
    let mut tick = interval(Duration::from_millis(50));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let deliver = |msgs: Vec<Arc<Message>>| {
        for m in msgs {
            shared.hub.dispatch(&RoomEvent::Publication(m));
        }
    };
    loop {
        let item = tokio::select! {
            _ = stop.cancelled() => return,
            item = inbox.recv() => match item { Some(i) => i, None => return },
            _ = tick.tick() => {
                let now = Instant::now();
                for f in order.due(now) {
                    let range = Range { since: Some(f.after), limit: f.limit, reverse: false };
                    match shared.store.range(&f.room, range).await {
                        Ok((msgs, _)) => {
                            shared.gap_fills.fetch_add(msgs.len() as u64, Relaxed);
                            let msgs = msgs.into_iter().map(Arc::new).collect();
                            deliver(order.fill(&f.room, msgs, Instant::now()));
                        }
                        Err(e) => tracing::warn!(room = %f.room, error = %e, "gap fetch failed"),
                    }
                }
                continue;
            }
        };
        let now = Instant::now();
        match item {
            Inbound::Events(events) => {
                for e in events {
                    match e {
                        RoomEvent::Publication(m) => deliver(order.publication(m, now)),
                        other => shared.hub.dispatch(&other),
                    }
                }
                shared.early.store(order.early, Relaxed);
            }
            Inbound::Hint(room, top) => order.hint(&room, top, now),
            Inbound::Baseline(room, offset) => {
                if shared.is_watched(&room) {
                    deliver(order.baseline(&room, offset, now));
                }
            }
            Inbound::Forget(room) => {
                if !shared.is_watched(&room) {
                    order.forget(&room);
                }
            }
            Inbound::Resync(only) => {
                shared.resyncs.fetch_add(1, Relaxed);
                let mut swept = 0usize;
                let mut rooms = order.positions();
                if let Some(only) = only {
                    let only: HashSet<Arc<str>> = only.into_iter().collect();
                    rooms.retain(|(r, _)| only.contains(r));
                }
                for (room, after) in rooms {
                    let mut after = after;
                    for _ in 0..SWEEP_PAGES {
                        let range = Range {
                            since: Some(after),
                            limit: SWEEP_PAGE,
                            reverse: false,
                        };
                        match shared.store.range(&room, range).await {
                            Ok((msgs, _)) => {
                                let n = msgs.len();
                                if let Some(last) = msgs.last() {
                                    after = last.offset;
                                }
                                swept += n;
                                let msgs = msgs.into_iter().map(Arc::new).collect();
                                deliver(order.fill(&room, msgs, Instant::now()));
                                if n < SWEEP_PAGE {
                                    break;
                                }
                            }
                            Err(e) => {
                                tracing::warn!(%room, error = %e, "resync read failed");
                                break;
                            }
                        }
                    }
                }
                tracing::info!(swept, "bus resync: caught up from the store");
            }
        }
    }
}

/// Probes, heartbeats and the registry.
async fn heartbeat(
    shared: Arc<Shared>,
    mut conn: RedisConn,
    out: mpsc::Sender<Outgoing>,
    inbox: mpsc::Sender<Inbound>,
    stop: CancellationToken,
) {
    let mut tick = interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_beat: Option<Instant> = None;
    let own = node_channel(&shared.node);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let probe = Envelope::Probe {
            n: shared.node.clone(),
        };
        let _ = out.try_send(Outgoing {
            channel: own.clone(),
            payload: probe.encode(),
            offset: None,
        });
        if last_beat.is_some_and(|t| t.elapsed() < HEARTBEAT_EVERY) {
            continue;
        }
        last_beat = Some(Instant::now());
        let mut gone = false;
        shared
            .nodes
            .lock()
            .expect("nodes lock")
            .retain(|id, (_, seen)| {
                let alive = seen.elapsed() < NODE_TTL;
                if !alive {
                    tracing::warn!(node = %id, "node went silent; catching up from the store");
                    gone = true;
                }
                alive
            });
        // A node that died between a commit and its publish left publications only the
        // store has; if nothing is published after them, no gap would reveal them.
        if gone && inbox.send(Inbound::Resync(None)).await.is_err() {
            return;
        }
        let stats = shared.stats();
        let beat = Envelope::Heartbeat {
            n: shared.node.clone(),
            s: stats,
        };
        let _ = out.try_send(Outgoing {
            channel: control_channel(),
            payload: beat.encode(),
            offset: None,
        });
        // The registry: this node's channels and users, gone TTL after it stops.
        let channels = shared.hub.channels();
        let users = shared.hub.users();
        let mut pipe = redis::pipe();
        pipe.atomic();
        let ck = channels_key(&shared.node);
        let uk = users_key(&shared.node);
        pipe.del(&ck).ignore().del(&uk).ignore();
        if !channels.is_empty() {
            pipe.hset_multiple(&ck, &channels).ignore();
        }
        if !users.is_empty() {
            pipe.hset_multiple(&uk, &users).ignore();
        }
        pipe.expire(&ck, REGISTRY_TTL_SECS as i64)
            .ignore()
            .expire(&uk, REGISTRY_TTL_SECS as i64)
            .ignore();
        match timeout(COMMAND_TIMEOUT, pipe.query_async::<()>(&mut conn)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "registry refresh failed"),
            Err(_) => tracing::warn!("registry refresh timed out"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_urls_list_their_seed_nodes() {
        match Target::parse("redis+cluster://u:pw@127.0.0.1:7000,127.0.0.1:7001/").unwrap() {
            Target::Cluster(nodes) => assert_eq!(
                nodes,
                ["redis://u:pw@127.0.0.1:7000", "redis://u:pw@127.0.0.1:7001"]
            ),
            Target::Single(_) => panic!("a cluster"),
        }
        assert!(!Target::parse("redis://127.0.0.1:6379")
            .unwrap()
            .is_cluster());
        assert!(Target::parse("redis+cluster://").is_err());
        assert!(Target::parse("not a url").is_err());
        // Keys used together share a hash slot.
        assert_eq!(
            Slot::for_key(channels_key("n1")),
            Slot::for_key(users_key("n1"))
        );
    }

    #[test]
    fn envelopes_with_raw_payloads_round_trip() {
        let mut info = ClientInfo::new("u", "c");
        info.conn_info = Some(RawValue::from_string("{\"a\":[1,2]}".into()).unwrap());
        let m = Message {
            room: "r".into(),
            offset: 7,
            uid: "id".into(),
            user: "u".into(),
            client: "c".into(),
            data: RawValue::from_string("{\"text\":\"hi\"}".into()).unwrap(),
            info: Some(info),
            ts_ms: 5,
        };
        let bytes = Envelope::from_event("n1", &RoomEvent::Publication(Arc::new(m))).encode();
        match serde_json::from_slice::<Envelope>(&bytes).unwrap() {
            Envelope::Pub { n, r, o, d, i, .. } => {
                assert_eq!((n.as_str(), r.as_str(), o), ("n1", "r", 7));
                assert_eq!(d.get(), "{\"text\":\"hi\"}");
                assert_eq!(i.unwrap().conn_info.unwrap().get(), "{\"a\":[1,2]}");
            }
            _ => panic!("a publication"),
        }
        assert!(serde_json::from_slice::<Envelope>(b"{\"bogus\":1}").is_err());
    }
}
