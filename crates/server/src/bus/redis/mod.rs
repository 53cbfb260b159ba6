//! The Redis broker: Redis Pub/Sub (standalone) or sharded Pub/Sub (Redis Cluster) under
//! the broker seam (`bus/broker.rs`). Ordering, gap fill, resync, probes and heartbeats
//! are the shared ingest's (`bus/ingest/`); this folder only moves envelopes.
//!
//! - `conn.rs`: where Redis is (`Target`: one server or a cluster's seeds) and the
//!   multiplexed command connection (`RedisConn`) shared with presence and the registry;
//! - `publish.rs`: one batch as one pipeline (standalone) or one pipeline per hash slot
//!   (cluster), never one round trip per message;
//! - `subscription.rs`: the SUBSCRIBE / SSUBSCRIBE connection.
//!
//! Channels (all under the `roomcast:` prefix): `room:<room>`, one per room with local
//! subscribers (subscribed per room, never per user); `node:<id>`, one per node (user
//! operations and the node's own liveness probes); `control` (heartbeats, leave
//! announcements). On a cluster they use sharded Pub/Sub, so a room's publications reach
//! only the shard that owns its channel's slot. The liveness probe travels on the node's
//! own channel, so it checks the shard that owns that channel (a silent stall of another
//! shard is caught by the reorder's gap detection when later publications arrive).

pub mod conn;
mod publish;
mod subscription;

use async_trait::async_trait;

pub use conn::{RedisConn, Target, CLUSTER_SCHEME};

use super::broker::{Broker, Channel, Outgoing, Subscription};
use super::BusError;

/// Prefix of every Redis key and channel roomcast uses.
pub const PREFIX: &str = "roomcast:";

/// The Redis channel of a broker channel.
pub fn channel_name(c: &Channel) -> String {
    match c {
        Channel::Room(room) => format!("{PREFIX}room:{room}"),
        Channel::Node(node) => format!("{PREFIX}node:{node}"),
        Channel::Control => format!("{PREFIX}control"),
    }
}

pub struct RedisBroker {
    target: Target,
    /// The publisher's connection (pipelines; self-reconnecting).
    conn: RedisConn,
}

impl RedisBroker {
    /// Connects to Redis at `url` (see `conn.rs` for the schemes).
    pub async fn connect(url: &str) -> Result<RedisBroker, BusError> {
        let target = Target::parse(url)?;
        let conn = target.connect().await?;
        Ok(RedisBroker { target, conn })
    }
}

#[async_trait]
impl Broker for RedisBroker {
    fn name(&self) -> &'static str {
        if self.target.is_cluster() {
            "redis-cluster"
        } else {
            "redis"
        }
    }

    async fn publish(&self, batch: &[Outgoing]) -> Result<(), BusError> {
        let names: Vec<String> = batch.iter().map(|o| channel_name(&o.channel)).collect();
        let msgs = names
            .iter()
            .zip(batch)
            .map(|(name, o)| (name.as_str(), o.payload.as_slice()));
        let mut conn = self.conn.clone();
        publish::publish_all(&mut conn, msgs)
            .await
            .map_err(conn::redis_err)
    }

    async fn subscription(&self) -> Result<Box<dyn Subscription>, BusError> {
        let sub = self.target.subscription().await.map_err(conn::redis_err)?;
        Ok(Box::new(sub))
    }
}
