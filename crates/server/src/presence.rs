//! Who is in a room: one entry per subscribed connection, with its client info, and the
//! room's counts (clients, distinct users) kept as entries come and go.
//!
//! Behind a trait so that a cluster can keep presence in Redis (cluster-wide, with TTLs);
//! a single node keeps it in memory. The cluster's node registry (which channels and
//! users each node has, for the `channels` API) sits behind `Registry`, beside it: both
//! say who is where, and neither is the broker's business (`bus/broker.rs`).
//!
//! Invariants every implementation keeps: `stats` is O(1) in the room's size (counts are
//! maintained on add/remove/expiry, never by reading the member list), and `get` never
//! answers with more than the `max` entries it is given: a room above it answers
//! `Members::TooMany` with its client count (the protocol has no paging; see README
//! "Large rooms" for why the client gets error 106 rather than a silently cut list).

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use roomcast_proto::ClientInfo;

/// The answer to a `presence` read.
#[derive(Debug, Clone)]
pub enum Members {
    /// Every entry of the room, by client id (at most the `max` asked for).
    Listed(HashMap<String, ClientInfo>),
    /// The room has more than `max` clients: no entries, only how many there are.
    TooMany { clients: u32 },
}

#[async_trait]
pub trait Presence: Send + Sync + 'static {
    async fn add(&self, room: &str, info: ClientInfo);
    async fn remove(&self, room: &str, client: &str);
    /// The room's entries by client id, or `TooMany` when it has more than `max`.
    async fn get(&self, room: &str, max: usize) -> Members;
    /// The node is draining: its entries are removed now (not after their TTL), and any
    /// background refresh stops. A `remove` afterwards is harmless; an `add` racing the
    /// drain expires on its own.
    async fn close(&self) {}
    /// Whether presence answers now (the `/ready` check): `Err` says why not.
    async fn ready(&self) -> Result<(), String> {
        Ok(())
    }
    /// Number of clients and of distinct users, O(1) in the room's size.
    async fn stats(&self, room: &str) -> (u32, u32);
}

/// One room's entries and its distinct users, kept together so the counts never drift
/// from the entries: `users` maps each user to how many of `clients` are theirs.
#[derive(Default, Clone)]
pub struct RoomMembers {
    clients: HashMap<String, ClientInfo>,
    users: HashMap<String, u32>,
}

impl RoomMembers {
    /// Adds or replaces a client's entry.
    pub fn insert(&mut self, info: ClientInfo) {
        let user = info.user.clone();
        match self.clients.insert(info.client.clone(), info) {
            Some(old) if old.user == user => return,
            Some(old) => self.forget_user(&old.user),
            None => {}
        }
        *self.users.entry(user).or_default() += 1;
    }

    /// Removes a client's entry; returns it.
    pub fn remove(&mut self, client: &str) -> Option<ClientInfo> {
        let old = self.clients.remove(client)?;
        self.forget_user(&old.user);
        Some(old)
    }

    fn forget_user(&mut self, user: &str) {
        if let Some(n) = self.users.get_mut(user) {
            *n -= 1;
            if *n == 0 {
                self.users.remove(user);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    pub fn clients(&self) -> &HashMap<String, ClientInfo> {
        &self.clients
    }

    /// Clients and distinct users (O(1)).
    pub fn stats(&self) -> (u32, u32) {
        (self.clients.len() as u32, self.users.len() as u32)
    }

    /// The entries, bounded by `max`.
    pub fn members(&self, max: usize) -> Members {
        if self.clients.len() > max {
            Members::TooMany {
                clients: self.clients.len() as u32,
            }
        } else {
            Members::Listed(self.clients.clone())
        }
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
    rooms: Mutex<HashMap<String, RoomMembers>>,
}

#[async_trait]
impl Presence for LocalPresence {
    async fn add(&self, room: &str, info: ClientInfo) {
        self.rooms
            .lock()
            .expect("presence lock")
            .entry(room.to_owned())
            .or_default()
            .insert(info);
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

    async fn get(&self, room: &str, max: usize) -> Members {
        match self.rooms.lock().expect("presence lock").get(room) {
            Some(r) => r.members(max),
            None => Members::Listed(HashMap::new()),
        }
    }

    async fn stats(&self, room: &str) -> (u32, u32) {
        self.rooms
            .lock()
            .expect("presence lock")
            .get(room)
            .map_or((0, 0), RoomMembers::stats)
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
        // Re-adding an entry (a refresh) changes no count.
        p.add("r", ClientInfo::new("alice", "c2")).await;
        assert_eq!(p.stats("r").await, (3, 2));
        p.remove("r", "c1").await;
        assert_eq!(p.stats("r").await, (2, 2));
        p.remove("r", "c2").await;
        p.remove("r", "c2").await;
        assert_eq!(p.stats("r").await, (1, 1));
        assert!(matches!(p.get("other", 10).await, Members::Listed(m) if m.is_empty()));
        assert_eq!(p.stats("other").await, (0, 0));
    }

    #[tokio::test]
    async fn get_is_bounded() {
        let p = LocalPresence::default();
        for i in 0..5 {
            p.add("r", ClientInfo::new("u", &format!("c{i}"))).await;
        }
        assert!(matches!(p.get("r", 5).await, Members::Listed(m) if m.len() == 5));
        assert!(matches!(
            p.get("r", 4).await,
            Members::TooMany { clients: 5 }
        ));
    }
}
