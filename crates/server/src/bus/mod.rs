//! The bus carries room events from the node that made them to every node with
//! subscribers in the room (this one included).
//!
//! On a single node the bus is in-process (`LocalBus`): publishing hands the events straight
//! to the hub. A cluster bus (Redis) publishes to a channel per room and delivers what it
//! receives to its node's hub; `watch`/`unwatch` tell it which rooms this node needs.
//!
//! The bus is never the source of truth: publications are in the store before they are on
//! the bus, and a subscriber that misses one recovers it from the store.

use std::sync::Arc;

use async_trait::async_trait;

use crate::hub::{Hub, RoomEvent};

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
        for e in &events {
            self.hub.dispatch(e);
        }
        Ok(())
    }

    async fn watch(&self, _room: &str) -> Result<(), BusError> {
        Ok(())
    }

    async fn unwatch(&self, _room: &str) {}
}
