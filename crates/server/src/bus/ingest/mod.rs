//! The node side of every cluster bus, written once over the broker seam
//! (`bus/broker.rs`): whatever moves the envelopes (Redis, Redis Cluster, NATS), this is
//! where ordering, gap filling, resync, user operations and the node list live.
//!
//! Four tasks, joined by bounded queues, all tracked so a drain can wait for them:
//! - the **publisher** (`publisher.rs`) takes whatever is queued (up to `PIPELINE`) and
//!   hands it to the broker as one batch. When the broker fails it remembers the newest
//!   offset of each room it could not publish and, once the broker answers again,
//!   publishes a *hint* (`room`, `top`) so other nodes fetch what they missed;
//! - the **subscriber** (`subscriber.rs`) owns the broker subscription: opens it,
//!   subscribes this node's channel, the control channel and every watched room,
//!   reconciles watch/unwatch (per command, and every second against the watched set as a
//!   safety net), and checks liveness through the broker itself: this node publishes a
//!   probe on its own channel every second; if none has come back for `STALL`, or the
//!   broker says the subscription may have lost messages, it is replaced, which is
//!   followed by a resync. It decodes what arrives: user operations are applied at once,
//!   heartbeats and leave announcements update the node list, the rest goes to
//!   the receiver;
//! - the **receiver** (`receiver.rs`) runs the per-room reorder (`bus/reorder.rs`) between
//!   the broker and the hub: the hub sees each room's offsets in order, gaps are filled
//!   from the store, and after every (re)subscription each watched room is swept from the
//!   store after the last offset it delivered. The broker is never the source of truth;
//! - the **router** (`router.rs`) sends the events of personal channels to the nodes the
//!   user directory names, on their node channels; personal channels are never
//!   subscribed on the broker (the subscriber leaves them out), yet have a reorder state
//!   on every node with a local subscriber, like any room;
//! - the **heartbeat** (`heartbeat.rs`) sends probes and heartbeats, drops nodes gone
//!   silent (then sweeps from the store: a node that died between a commit and its
//!   publish left publications only the store has) and refreshes this node's entry in the
//!   registry (`presence::Registry`).
//!
//! This node's own events go straight to the receiver too (and their echo from the broker
//! is ignored), so local subscribers do not depend on the broker at all.
//!
//! **Drain** (`Bus::close`): the router finishes what it holds, the publisher sends
//! everything queued, then this node
//! announces on the control channel that it is gone (peers drop it from their node list
//! and sweep their rooms from the store once more), removes its registry entry, and the
//! tasks stop.

mod heartbeat;
mod publisher;
mod receiver;
mod router;
mod subscriber;

pub use router::Personal;

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::broker::{Broker, Channel, Outgoing};
use super::envelope::Envelope;
use super::{Bus, BusError, NodeStats, UserOp};
use crate::hub::{Hub, RoomEvent};
use crate::presence::Registry;
use crate::store::Store;

/// Items handed to the broker per batch at most.
const PIPELINE: usize = 512;
/// Publications waiting for the publisher. Beyond it they are not published on the broker
/// (counted and hinted; other nodes fetch them from the store).
const OUT_QUEUE: usize = 16_384;
/// Events waiting for the receiver (local and from the broker).
const INBOX: usize = 16_384;
/// Watch/unwatch requests waiting for the subscriber.
const COMMANDS: usize = 4096;
/// Personal-channel events waiting for the router.
const ROUTED: usize = 16_384;
/// Time a broker operation may take.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the drain waits for queued publishes to reach the broker.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Work for the receiver.
enum Inbound {
    /// Events to deliver in order (this node's, or decoded from the broker).
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
struct Queued {
    out: Outgoing,
    /// The publication's room and offset, to hint about if it cannot be sent.
    offset: Option<(Arc<str>, u64)>,
    /// Answered once the item (and everything queued before it) was handed to the
    /// broker: the drain's flush marker.
    flushed: Option<oneshot::Sender<()>>,
}

impl Queued {
    fn plain(channel: Channel, env: &Envelope) -> Queued {
        Queued {
            out: Outgoing {
                channel,
                payload: env.encode(),
            },
            offset: None,
            flushed: None,
        }
    }
}

/// State shared by the bus handle and its tasks.
/// Probes go every second: one not back for this long means the broker does not carry
/// this node's messages now (`/ready` says so).
const READY_PROBE_AGE_MS: u64 = 1_800;

struct Shared {
    node: String,
    hub: Arc<Hub>,
    store: Arc<dyn Store>,
    broker: Arc<dyn Broker>,
    registry: Arc<dyn Registry>,
    /// How personal channels are named (`None`: every room is an ordinary one).
    personal: Option<crate::personal::PersonalChannels>,
    started: Instant,
    /// When this node's own probe last came back through the broker (ms after `started`;
    /// 0: never), for the `/ready` check.
    probe_back_ms: AtomicU64,
    /// Rooms this node watches, with the number of outstanding watches (the hub's
    /// new-room/last-leave transitions; they pair up, whatever order they are processed in).
    watched: Mutex<HashMap<Arc<str>, u64>>,
    /// Other nodes by id, with when they were last heard of.
    nodes: Mutex<HashMap<String, (NodeStats, Instant)>>,
    /// Publications not put on the broker because the publisher's queue was full.
    dropped: AtomicU64,
    /// Personal-channel events handed to the router and not yet queued for the publisher
    /// (the drain waits for none to be left before its flush marker).
    routing: AtomicU64,
    /// Set by the drain before its leave announcement: the heartbeat sends nothing more.
    leaving: AtomicBool,
    /// Reorder counters, updated by the receiver (see `NodeStats`).
    early: AtomicU64,
    gap_fills: AtomicU64,
    resyncs: AtomicU64,
}

impl Shared {
    /// Notes that this node's probe came back through the broker.
    fn probe_back(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.probe_back_ms.store(ms.max(1), Relaxed);
    }

    fn is_watched(&self, room: &str) -> bool {
        self.watched
            .lock()
            .expect("watched lock")
            .contains_key(room)
    }

    fn watched_rooms(&self) -> Vec<Arc<str>> {
        self.watched
            .lock()
            .expect("watched lock")
            .keys()
            .cloned()
            .collect()
    }

    /// Whether `room` is a personal channel (routed to nodes, not subscribed on the broker).
    fn is_personal(&self, room: &str) -> bool {
        self.personal
            .as_ref()
            .is_some_and(|p| p.user_of(room).is_some())
    }

    /// The watched rooms the broker carries (personal channels left out).
    fn broker_rooms(&self) -> Vec<Arc<str>> {
        let mut rooms = self.watched_rooms();
        rooms.retain(|r| !self.is_personal(r));
        rooms
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

    /// Other nodes' ids.
    fn peers(&self) -> Vec<String> {
        self.nodes
            .lock()
            .expect("nodes lock")
            .keys()
            .cloned()
            .collect()
    }
}

/// A cluster bus over any broker.
pub struct BrokerBus {
    shared: Arc<Shared>,
    /// To the publisher.
    out: mpsc::Sender<Queued>,
    /// To the receiver.
    inbox: mpsc::Sender<Inbound>,
    /// To the router: events of personal channels.
    routed: Option<mpsc::Sender<RoomEvent>>,
    /// To the subscriber: reconcile a room's subscription, answer when done.
    commands: mpsc::Sender<(Arc<str>, oneshot::Sender<()>)>,
    /// Stops the tasks.
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl BrokerBus {
    /// Starts the bus tasks over `broker`. The node id names this node's channel. With
    /// `personal`, personal channels are routed through the user directory.
    pub fn start(
        broker: Arc<dyn Broker>,
        registry: Arc<dyn Registry>,
        node: String,
        hub: Arc<Hub>,
        store: Arc<dyn Store>,
        personal: Option<Personal>,
    ) -> BrokerBus {
        let shared = Arc::new(Shared {
            node,
            hub,
            store,
            broker,
            registry,
            personal: personal.as_ref().map(|p| p.channels.clone()),
            started: Instant::now(),
            probe_back_ms: AtomicU64::new(0),
            watched: Mutex::new(HashMap::new()),
            nodes: Mutex::new(HashMap::new()),
            dropped: AtomicU64::new(0),
            routing: AtomicU64::new(0),
            leaving: AtomicBool::new(false),
            early: AtomicU64::new(0),
            gap_fills: AtomicU64::new(0),
            resyncs: AtomicU64::new(0),
        });
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let (out_tx, out_rx) = mpsc::channel(OUT_QUEUE);
        let (inbox_tx, inbox_rx) = mpsc::channel(INBOX);
        let (cmd_tx, cmd_rx) = mpsc::channel(COMMANDS);
        let routed = personal.map(|p| {
            let (tx, rx) = mpsc::channel(ROUTED);
            tasks.spawn(router::run(
                shared.clone(),
                p.directory,
                p.channels,
                rx,
                out_tx.clone(),
                stop.clone(),
            ));
            tx
        });
        tasks.spawn(publisher::run(shared.broker.clone(), out_rx, stop.clone()));
        tasks.spawn(receiver::run(shared.clone(), inbox_rx, stop.clone()));
        tasks.spawn(subscriber::run(
            shared.clone(),
            cmd_rx,
            inbox_tx.clone(),
            stop.clone(),
        ));
        tasks.spawn(heartbeat::run(
            shared.clone(),
            out_tx.clone(),
            inbox_tx.clone(),
            stop.clone(),
        ));
        BrokerBus {
            shared,
            out: out_tx,
            inbox: inbox_tx,
            routed,
            commands: cmd_tx,
            stop,
            tasks,
        }
    }

    /// Reads the room's store position and hands it to the receiver as its baseline:
    /// from then on its publications reach the local subscribers in order.
    async fn baseline(&self, room: Arc<str>) -> Result<(), BusError> {
        let baseline = self
            .shared
            .store
            .position(&room)
            .await
            .map_err(|e| BusError::Backend(e.to_string()))?
            .offset;
        self.inbox
            .send(Inbound::Baseline(room, baseline))
            .await
            .map_err(|_| BusError::Backend("bus stopped".into()))
    }

    fn enqueue(&self, item: Queued) {
        if self.out.try_send(item).is_err() {
            // The broker is far behind or away. The receivers fill the gap from the store
            // when a later publication (or the resync after reconnecting) shows it.
            self.shared.dropped.fetch_add(1, Relaxed);
        }
    }
}

impl Drop for BrokerBus {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[async_trait]
impl Bus for BrokerBus {
    fn ready(&self) -> Result<(), String> {
        let back = self.shared.probe_back_ms.load(Relaxed);
        if back == 0 {
            return Err(format!(
                "{}: no probe has come back through the broker yet",
                self.shared.broker.name()
            ));
        }
        let now = u64::try_from(self.shared.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let age = now.saturating_sub(back);
        if age > READY_PROBE_AGE_MS {
            return Err(format!(
                "{}: this node's probe last came back through the broker {age} ms ago",
                self.shared.broker.name()
            ));
        }
        Ok(())
    }

    async fn publish(&self, events: Vec<RoomEvent>) -> Result<(), BusError> {
        for e in &events {
            if let Some(routed) = self
                .routed
                .as_ref()
                .filter(|_| self.shared.is_personal(e.room()))
            {
                self.shared.routing.fetch_add(1, Relaxed);
                if routed.try_send(e.clone()).is_err() {
                    // Stored: the user's other nodes read it on their next gap or resync.
                    self.shared.routing.fetch_sub(1, Relaxed);
                    self.shared.dropped.fetch_add(1, Relaxed);
                }
                continue;
            }
            let offset = match e {
                RoomEvent::Publication(m) if m.offset > 0 => Some((m.room.clone(), m.offset)),
                _ => None,
            };
            self.enqueue(Queued {
                out: Outgoing {
                    channel: Channel::Room(e.room().into()),
                    payload: Envelope::from_event(&self.shared.node, e).encode(),
                },
                offset,
                flushed: None,
            });
        }
        // Local subscribers get them without a broker round trip.
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
        if self.shared.is_personal(&room) {
            // Not on the broker: the router sends it here. Only the baseline is needed.
            return self.baseline(room).await;
        }
        let (ack, done) = oneshot::channel();
        // Bounded waits: while the broker is away the subscriber takes no commands, and a
        // full command queue must not hold a subscribe forever.
        match timeout(COMMAND_TIMEOUT, self.commands.send((room.clone(), ack))).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(BusError::Backend("bus stopped".into())),
            Err(_) => tracing::warn!(%room, "bus subscriber busy; the resync will cover it"),
        }
        // Once the subscription is confirmed, every publication committed from now on
        // reaches this node. When the broker is away the wait ends early: the room is
        // subscribed on reconnect, and the resync then fills what was missed.
        if timeout(COMMAND_TIMEOUT, done).await.is_err() {
            tracing::warn!(%room, "bus subscribe not confirmed; the resync will cover it");
        }
        self.baseline(room).await
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
        if !self.shared.is_personal(&room) {
            let (ack, _done) = oneshot::channel();
            // If this times out the room stays subscribed until the next reconcile; its
            // events are dropped by the reorder meanwhile.
            let _ = timeout(COMMAND_TIMEOUT, self.commands.send((room.clone(), ack))).await;
        }
        let _ = self.inbox.send(Inbound::Forget(room)).await;
    }

    async fn user_op(&self, op: UserOp) -> Result<(), BusError> {
        op.apply(&self.shared.hub);
        let env = Envelope::from_user_op(&self.shared.node, &op);
        for id in self.shared.peers() {
            self.out
                .send(Queued::plain(Channel::Node(id.into()), &env))
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
        let others = self.shared.peers();
        if !others.is_empty() {
            for (room, n) in self.shared.registry.channels(&others).await {
                *totals.entry(room).or_default() += n;
            }
        }
        Some(totals)
    }

    async fn close(&self) {
        // Everything queued so far reaches the broker first (the marker is answered once
        // the publisher got past it), then the announcement that this node is gone.
        self.shared.leaving.store(true, Relaxed);
        // Personal-channel events still with the router go first (they are queued for the
        // publisher once routed).
        let routed = timeout(FLUSH_TIMEOUT, async {
            while self.shared.routing.load(Relaxed) > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        if routed.await.is_err() {
            tracing::warn!("bus drain: personal-channel events still being routed");
        }
        let (flushed, done) = oneshot::channel();
        let gone = Envelope::Gone {
            n: self.shared.node.clone(),
        };
        let mut marker = Queued::plain(Channel::Control, &gone);
        marker.flushed = Some(flushed);
        let sent = timeout(FLUSH_TIMEOUT, async {
            self.out.send(marker).await.is_ok() && done.await.is_ok()
        })
        .await;
        if !matches!(sent, Ok(true)) {
            tracing::warn!("bus drain: queued publishes not confirmed by the broker");
        }
        self.shared.registry.remove(&self.shared.node).await;
        self.stop.cancel();
        self.tasks.close();
        if timeout(COMMAND_TIMEOUT, self.tasks.wait()).await.is_err() {
            tracing::warn!("bus drain: tasks still running");
        }
    }
}

#[cfg(test)]
mod tests;
