//! Connecting to Redis: one standalone server, or a Redis Cluster given by seed nodes.
//!
//! `redis_url` chooses the mode by its scheme: `redis://` (or `rediss://`) is one
//! standalone Redis (or a primary behind a proxy); `redis+cluster://[user:password@]
//! host:port[,host:port...]` is a Redis Cluster, given by one or more seed nodes (the rest
//! of the topology is read from them). `RedisConn` is the multiplexed, self-reconnecting
//! command connection the broker's publisher, presence and the registry share.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{PushInfo, RedisResult};
use tokio::sync::mpsc;
use tokio::time::timeout;

use super::subscription::RedisSubscription;
use crate::bus::BusError;

/// Time a Redis command may take.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

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
    pub(super) async fn subscription(&self) -> RedisResult<RedisSubscription> {
        match self {
            Target::Single(client) => {
                let (sink, stream) = client.get_async_pubsub().await?.split();
                Ok(RedisSubscription::Single(sink, stream))
            }
            Target::Cluster(nodes) => {
                let (tx, rx) = mpsc::unbounded_channel();
                let client = cluster_client(nodes, Some(tx))?;
                let conn = client.get_async_connection().await?;
                Ok(RedisSubscription::Cluster(conn, rx))
            }
        }
    }
}

pub(super) fn cluster_client(
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

pub fn redis_err(e: impl std::fmt::Display) -> BusError {
    if let Some(m) = crate::metrics::get() {
        m.backend_error("redis");
    }
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
    }
}
