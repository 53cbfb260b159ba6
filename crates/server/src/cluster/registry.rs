//! The node registry in Redis: each node's channels and users, read by the others for the
//! `channels` API.
//!
//! Per node, two hashes `roomcast:node:{<id>}:channels` (room -> local subscribers) and
//! `roomcast:node:{<id>}:users` (user -> local connections), rewritten in one MULTI on
//! every heartbeat with a TTL (`REGISTRY_TTL_SECS`), so a node that dies is gone a TTL
//! later; a draining node deletes its own at once. Hash-tagged with the node id: both keys
//! share a cluster slot. On a Redis Cluster reads go one request per node, concurrently.

use std::collections::HashMap;

use async_trait::async_trait;
use tokio::time::timeout;

use crate::bus::redis::{RedisConn, PREFIX};
use crate::presence::Registry;

/// TTL of a node's registry keys, refreshed on heartbeat.
pub const REGISTRY_TTL_SECS: u64 = 30;
const COMMAND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Registry key of a node's channels (room -> local subscribers).
pub fn channels_key(node: &str) -> String {
    format!("{PREFIX}node:{{{node}}}:channels")
}

/// Registry key of a node's users (user -> local connections).
pub fn users_key(node: &str) -> String {
    format!("{PREFIX}node:{{{node}}}:users")
}

pub struct RedisRegistry {
    conn: RedisConn,
}

impl RedisRegistry {
    pub fn new(conn: RedisConn) -> RedisRegistry {
        RedisRegistry { conn }
    }
}

#[async_trait]
impl Registry for RedisRegistry {
    async fn refresh(
        &self,
        node: &str,
        channels: &HashMap<String, usize>,
        users: &HashMap<String, usize>,
    ) {
        let mut pipe = redis::pipe();
        pipe.atomic();
        let ck = channels_key(node);
        let uk = users_key(node);
        pipe.del(&ck).ignore().del(&uk).ignore();
        if !channels.is_empty() {
            let items: Vec<(&String, &usize)> = channels.iter().collect();
            pipe.hset_multiple(&ck, &items).ignore();
        }
        if !users.is_empty() {
            let items: Vec<(&String, &usize)> = users.iter().collect();
            pipe.hset_multiple(&uk, &items).ignore();
        }
        pipe.expire(&ck, REGISTRY_TTL_SECS as i64)
            .ignore()
            .expire(&uk, REGISTRY_TTL_SECS as i64)
            .ignore();
        let mut conn = self.conn.clone();
        match timeout(COMMAND_TIMEOUT, pipe.query_async::<()>(&mut conn)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "registry refresh failed"),
            Err(_) => tracing::warn!("registry refresh timed out"),
        }
    }

    async fn channels(&self, nodes: &[String]) -> HashMap<String, u64> {
        let mut conn = self.conn.clone();
        let read = async {
            if conn.is_cluster() {
                // Each node's key is on its own shard: one request per node, concurrently.
                let reads = nodes.iter().map(|id| {
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
                for id in nodes {
                    pipe.hgetall(channels_key(id));
                }
                pipe.query_async::<Vec<HashMap<String, u64>>>(&mut conn)
                    .await
            }
        };
        let mut totals: HashMap<String, u64> = HashMap::new();
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
        totals
    }

    async fn remove(&self, node: &str) {
        let mut conn = self.conn.clone();
        // Two commands: on a cluster both keys are in one slot, but DEL of several keys
        // is still routed as one.
        let mut pipe = redis::pipe();
        pipe.del(channels_key(node))
            .ignore()
            .del(users_key(node))
            .ignore();
        if !matches!(
            timeout(COMMAND_TIMEOUT, pipe.query_async::<()>(&mut conn)).await,
            Ok(Ok(()))
        ) {
            tracing::warn!("registry removal failed; it expires on its own");
        }
    }
}

#[cfg(test)]
mod tests {
    use redis::cluster_routing::Slot;

    #[test]
    fn a_nodes_keys_share_a_hash_slot() {
        assert_eq!(
            Slot::for_key(super::channels_key("n1")),
            Slot::for_key(super::users_key("n1"))
        );
    }
}
