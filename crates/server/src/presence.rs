//! Who is in a room: one entry per subscribed connection, with its client info.
//!
//! Behind a trait so that a cluster can keep presence in Redis (cluster-wide, with TTLs);
//! a single node keeps it in memory. The cluster's node registry (which channels and
//! users each node has, for the `channels` API) sits behind `Registry`, beside it: both
//! say who is where, and neither is the broker's business (`bus/broker.rs`).

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use roomcast_proto::ClientInfo;

#[async_trait]
pub trait Presence: Send + Sync + 'static {
    async fn add(&self, room: &str, info: ClientInfo);
    async fn remove(&self, room: &str, client: &str);
    /// Entries by client id.
    async fn get(&self, room: &str) -> HashMap<String, ClientInfo>;
    /// The node is draining: its entries are removed now (not after their TTL), and any
    /// background refresh stops. A `remove` afterwards is harmless; an `add` racing the
    /// drain expires on its own.
    async fn close(&self) {}
    /// Whether presence answers now (the `/ready` check): `Err` says why not.
    async fn ready(&self) -> Result<(), String> {
        Ok(())
    }
    /// Number of clients and of distinct users.
    async fn stats(&self, room: &str) -> (u32, u32) {
        let entries = self.get(room).await;
        let users: std::collections::HashSet<&str> =
            entries.values().map(|i| i.user.as_str()).collect();
        (entries.len() as u32, users.len() as u32)
    }
}

/// Each node's channels and users, as the other nodes read them (`channels` API).
#[async_trait]
pub trait Registry: Send + Sync + 'static {
    /// Writes this node's entry (channel -> local subscribers, user -> local connections);
    /// it expires on its own unless refreshed.
    async fn refresh(
        &self,
        node: &str,
        channels: &HashMap<String, usize>,
        users: &HashMap<String, usize>,
    );
    /// Subscriber counts per channel, summed over `nodes`.
    async fn channels(&self, nodes: &[String]) -> HashMap<String, u64>;
    /// Removes a node's entry (it is draining).
    async fn remove(&self, node: &str);
}

/// The registry of nodes sharing one process (tests, in-process clusters).
#[derive(Default)]
pub struct LocalRegistry {
    nodes: Mutex<HashMap<String, HashMap<String, usize>>>,
}

#[async_trait]
impl Registry for LocalRegistry {
    async fn refresh(
        &self,
        node: &str,
        channels: &HashMap<String, usize>,
        _users: &HashMap<String, usize>,
    ) {
        self.nodes
            .lock()
            .expect("registry lock")
            .insert(node.to_owned(), channels.clone());
    }

    async fn channels(&self, nodes: &[String]) -> HashMap<String, u64> {
        let all = self.nodes.lock().expect("registry lock");
        let mut totals = HashMap::new();
        for n in nodes {
            for (room, count) in all.get(n).into_iter().flatten() {
                *totals.entry(room.clone()).or_default() += *count as u64;
            }
        }
        totals
    }

    async fn remove(&self, node: &str) {
        self.nodes.lock().expect("registry lock").remove(node);
    }
}

/// In-memory presence of a single node.
#[derive(Default)]
pub struct LocalPresence {
    rooms: Mutex<HashMap<String, HashMap<String, ClientInfo>>>,
}

#[async_trait]
impl Presence for LocalPresence {
    async fn add(&self, room: &str, info: ClientInfo) {
        self.rooms
            .lock()
            .expect("presence lock")
            .entry(room.to_owned())
            .or_default()
            .insert(info.client.clone(), info);
    }

    async fn remove(&self, room: &str, client: &str) {
        let mut rooms = self.rooms.lock().expect("presence lock");
        if let Some(r) = rooms.get_mut(room) {
            r.remove(client);
            if r.is_empty() {
                rooms.remove(room);
            }
        }
    }

    async fn get(&self, room: &str) -> HashMap<String, ClientInfo> {
        self.rooms
            .lock()
            .expect("presence lock")
            .get(room)
            .cloned()
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn add_remove_and_stats() {
        let p = LocalPresence::default();
        p.add("r", ClientInfo::new("alice", "c1")).await;
        p.add("r", ClientInfo::new("alice", "c2")).await;
        p.add("r", ClientInfo::new("bob", "c3")).await;
        assert_eq!(p.stats("r").await, (3, 2));
        p.remove("r", "c1").await;
        assert_eq!(p.stats("r").await, (2, 2));
        assert!(p.get("other").await.is_empty());
    }
}
