//! The bus carries room events from the node that made them to every node with
//! subscribers in the room (this one included).
//!
//! On a single node the bus is in-process (`LocalBus`): publishing hands the events straight
//! to the hub. A cluster bus publishes to a channel per room and delivers what it
//! receives to its node's hub; `watch`/`unwatch` tell it which rooms this node needs.
//!
//! The bus is never the source of truth: publications are in the store before they are on
//! the bus, and a subscriber that misses one recovers it from the store.
//!
//! Layout (each file owns one thing; imports go downwards only: `ingest` -> `broker`,
//! `envelope`, `reorder`; brokers -> `broker`; nothing here imports `cluster/`):
//! - `Bus` (this file): what the node and the gateway call; `LocalBus`;
//! - `broker.rs`: the broker seam, the only thing a message transport implements;
//! - `envelope.rs`: the wire format between nodes, the same on every broker;
//! - `ingest/`: `BrokerBus`, the cluster `Bus` over any broker (publisher, subscriber,
//!   receiver with the per-room `reorder.rs`, heartbeat and node list);
//! - `redis/`, `nats.rs`, `memory.rs` (in-process): the brokers;
//! - `conformance.rs` (tests only): the behaviour suite every broker passes.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use roomcast_proto::Disconnect;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::hub::{Hub, Out, RoomEvent, ServerSubscribe};

pub mod broker;
/// The broker behaviour suite; public behind the `conformance` feature (enabled for the
/// integration tests through the self dev-dependency), so it never ships in the binary.
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
pub mod envelope;
pub mod ingest;
pub mod memory;
pub mod nats;
pub mod redis;
pub mod reorder;

/// An operation on a user's connections, wherever they are connected (server API
/// `disconnect`, `unsubscribe`, `subscribe` and `refresh`).
#[derive(Debug, Clone)]
pub enum UserOp {
    Disconnect {
        user: String,
        client: Option<String>,
        /// Client ids to leave connected (the API's `whitelist`).
        keep: Vec<String>,
        why: Disconnect,
    },
    Unsubscribe {
        user: String,
        channel: String,
        client: Option<String>,
    },
    /// Subscribes the connections server-side; each gets a subscribe push.
    Subscribe {
        user: String,
        client: Option<String>,
        sub: Arc<ServerSubscribe>,
    },
    /// Sets when the connections expire (`expire_at`, Unix seconds; `None`: never), or
    /// closes them as expired at once (`expired`).
    Refresh {
        user: String,
        client: Option<String>,
        expired: bool,
        expire_at: Option<u64>,
        info: Option<Box<RawValue>>,
    },
}

impl UserOp {
    /// Applies the operation to this node's connections.
    pub fn apply(&self, hub: &Hub) {
        match self {
            UserOp::Disconnect {
                user,
                client,
                keep,
                why,
            } => {
                for conn in hub.user_conns(user) {
                    if client.as_deref().is_none_or(|c| c == &*conn.client)
                        && !keep.iter().any(|k| **k == *conn.client)
                    {
                        conn.outbox.close(why.clone());
                    }
                }
            }
            UserOp::Unsubscribe {
                user,
                channel,
                client,
            } => {
                for conn in targets(hub, user, client) {
                    conn.outbox.control(Out::Unsubscribe {
                        channel: channel.as_str().into(),
                        code: roomcast_proto::codes::unsubscribe::SERVER,
                    });
                }
            }
            UserOp::Subscribe { user, client, sub } => {
                for conn in targets(hub, user, client) {
                    conn.outbox.control(Out::Subscribe(sub.clone()));
                }
            }
            UserOp::Refresh {
                user,
                client,
                expired,
                expire_at,
                info,
            } => {
                for conn in targets(hub, user, client) {
                    if *expired {
                        conn.outbox.close(Disconnect::EXPIRED);
                    } else {
                        conn.outbox.control(Out::Refresh {
                            expire_at: *expire_at,
                            info: info.clone(),
                        });
                    }
                }
            }
        }
    }
}

/// The user's connections on this node an operation is for: all, or the one `client`.
fn targets(hub: &Hub, user: &str, client: &Option<String>) -> Vec<crate::hub::ConnEntry> {
    let mut conns = hub.user_conns(user);
    if let Some(c) = client {
        conns.retain(|conn| *conn.client == **c);
    }
    conns
}

/// One node as the `info` API shows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct NodeStats {
    pub uid: String,
    pub name: String,
    pub version: String,
    pub num_clients: u64,
    pub num_users: u64,
    pub num_channels: u64,
    pub uptime: u64,
    /// Cluster bus counters: publications that arrived ahead of a missing one (held by the
    /// reorder), publications read from the store to fill gaps, resyncs after the
    /// subscription was replaced, publications not put on Redis (queue full).
    #[serde(default)]
    pub bus_early: u64,
    #[serde(default)]
    pub bus_gap_fills: u64,
    #[serde(default)]
    pub bus_resyncs: u64,
    #[serde(default)]
    pub bus_dropped: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("bus: {0}")]
    Backend(String),
}

#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Publishes events, in order: events of one room reach every node in this order.
    async fn publish(&self, events: Vec<RoomEvent>) -> Result<(), BusError>;
    /// This node now has subscribers in `room`.
    async fn watch(&self, room: &str) -> Result<(), BusError>;
    /// This node has no subscriber left in `room`.
    async fn unwatch(&self, room: &str);
    /// Applies a user-targeted operation on every node (this one included).
    async fn user_op(&self, op: UserOp) -> Result<(), BusError>;
    /// Every live node of the cluster with its counts; empty when the bus knows only this
    /// node (the caller describes it).
    async fn nodes(&self) -> Vec<NodeStats> {
        Vec::new()
    }
    /// Cluster-wide subscriber counts per channel; `None` when the bus knows only this
    /// node (the caller reads its hub).
    async fn channels(&self) -> Option<HashMap<String, u64>> {
        None
    }
    /// Whether the bus carries publications now (the `/ready` check): `Err` says why not.
    fn ready(&self) -> Result<(), String> {
        Ok(())
    }
    /// Drains: everything already handed to `publish` reaches the broker, then peers are
    /// told this node is leaving. Nothing may be published afterwards.
    async fn close(&self) {}
}

/// The in-process bus of a single node.
pub struct LocalBus {
    hub: Arc<Hub>,
}

impl LocalBus {
    pub fn new(hub: Arc<Hub>) -> LocalBus {
        LocalBus { hub }
    }
}

#[async_trait]
impl Bus for LocalBus {
    async fn publish(&self, events: Vec<RoomEvent>) -> Result<(), BusError> {
        self.hub.dispatch_many(&events);
        Ok(())
    }

    async fn watch(&self, _room: &str) -> Result<(), BusError> {
        Ok(())
    }

    async fn unwatch(&self, _room: &str) {}

    async fn user_op(&self, op: UserOp) -> Result<(), BusError> {
        op.apply(&self.hub);
        Ok(())
    }
}
