//! The broker seam (centrifuge's `Broker`): what a message transport must do for the
//! cluster bus, and nothing more.
//!
//! A broker moves opaque, already-encoded envelopes (`envelope.rs`) between nodes on three
//! kinds of channel (`Channel`): one per room, one per node, and one shared control
//! channel. It publishes batches in order per channel, and hands out subscriptions that
//! subscribe and unsubscribe channels and yield what arrives. It knows nothing of offsets,
//! ordering, the store or the hub: the shared ingest (`ingest/`) does all of that once for
//! every broker, so Redis, Redis Cluster and NATS implement only this file's two traits.
//!
//! Guarantees asked of a broker: at most once, in order per channel per publisher, while
//! the subscription lives. A subscription that may have lost messages (connection dropped,
//! reconnected behind our back) must end (`next` returns `None`): the ingest then opens a
//! new one and resyncs every watched room from the store. A silent stall is caught by the
//! ingest itself, through a probe it publishes on its own node channel.

use std::sync::Arc;

use async_trait::async_trait;

use super::BusError;

/// Where an envelope travels; each broker maps these to its own names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Channel {
    /// A room's publications, joins, leaves and hints.
    Room(Arc<str>),
    /// One node's user operations and its own liveness probes.
    Node(Arc<str>),
    /// Node-to-node control: heartbeats and leave announcements.
    Control,
}

/// One envelope to publish.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub channel: Channel,
    pub payload: Vec<u8>,
}

#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// A name for logs (`redis`, `redis-cluster`, `nats`).
    fn name(&self) -> &'static str;
    /// Publishes the batch, in order per channel, in as few round trips as the broker
    /// allows. An error means some of it may not have been published. The caller bounds
    /// the time it may take.
    async fn publish(&self, batch: &[Outgoing]) -> Result<(), BusError>;
    /// A fresh subscription, with no channels yet. The caller bounds the time.
    async fn subscription(&self) -> Result<Box<dyn Subscription>, BusError>;
}

/// One subscription connection, owned by the ingest's subscriber task.
#[async_trait]
pub trait Subscription: Send {
    /// Subscribes the channels; once it returns, what is published on them arrives.
    async fn subscribe(&mut self, channels: &[Channel]) -> Result<(), BusError>;
    async fn unsubscribe(&mut self, channels: &[Channel]) -> Result<(), BusError>;
    /// The next envelope; `None` once the subscription may have lost messages (it is then
    /// replaced).
    async fn next(&mut self) -> Option<Vec<u8>>;
}
