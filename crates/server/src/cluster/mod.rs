//! Cluster mode: the pieces a node needs to run as one of many behind a load balancer,
//! sharing a PostgreSQL store, a broker (Redis or NATS) and Redis for presence.
//!
//! - `presence`: presence in Redis, cluster-wide, with TTLs refreshed on heartbeat;
//! - `registry`: each node's channels and users in Redis (the `channels` API);
//! - `directory`: the per-user registry in Redis (which nodes hold a user's connections,
//!   last-seen times), for send-to-user and user status (`personal/`);
//! - `Backends` (this file): the store, bus and presence chosen from the configuration.
//!
//! The bus is `bus/ingest/` over a broker of `bus/redis/` or `bus/nats.rs`, the store
//! `store/postgres.rs`. This folder imports `bus/`, never the reverse.
//!
//! **Why presence stays in Redis with NATS.** Presence needs one expiry per entry (a node
//! that dies must vanish from every room it was in) and an atomic read of one room's
//! live entries; Redis gives both in one Lua script. NATS KV (JetStream) expires only a
//! whole bucket's keys by age, per-key TTLs need nats-server 2.11 (Debian ships 2.9), and
//! listing a room means a key scan per read. So `--nats` moves the bus (the hot path:
//! publications, probes, control) and keeps presence and the registry on `--redis`.

pub mod directory;
pub mod presence;
pub mod registry;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::bus::broker::Broker;
use crate::bus::ingest::{BrokerBus, Personal};
use crate::bus::nats::NatsBroker;
use crate::bus::redis::{RedisBroker, Target};
use crate::bus::{Bus, LocalBus};
use crate::config::Config;
use crate::hub::Hub;
use crate::personal::{Directory, LocalDirectory};
use crate::presence::{LocalPresence, Presence};
use crate::store::postgres::PostgresStore;
use crate::store::sqlite::SqliteStore;
use crate::store::{Committed, Store};

/// The store, bus and presence a node runs with, chosen from its configuration:
/// `store_url` (`postgres://...`; unset: SQLite in the data directory) and `redis_url`
/// (`redis://...` for one Redis, `redis+cluster://host:port[,host:port...]` for a Redis
/// Cluster with sharded Pub/Sub; unset: the in-process bus and presence of a single node).
pub struct Backends {
    pub store: Arc<dyn Store>,
    pub committed: Committed,
    pub bus: Arc<dyn Bus>,
    pub presence: Arc<dyn Presence>,
    /// Which nodes hold each user's connections.
    pub directory: Arc<dyn Directory>,
    /// Where the messages are, for the log (no password).
    pub store_name: String,
}

impl Backends {
    pub async fn open(config: &Config, hub: &Arc<Hub>, node_id: &str) -> anyhow::Result<Backends> {
        let ttl = Duration::from_secs(config.idempotency_ttl_secs);
        let (store, committed, store_name): (Arc<dyn Store>, Committed, String) =
            match config.store_url.as_deref().filter(|u| !u.is_empty()) {
                None => {
                    let db = config.data_dir.join("messages.db");
                    let (s, c) = SqliteStore::open(&db, ttl)
                        .with_context(|| format!("opening message store {}", db.display()))?;
                    (Arc::new(s), c, db.display().to_string())
                }
                Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                    let name = redact(url);
                    let (s, c) = PostgresStore::connect(url, ttl)
                        .await
                        .with_context(|| format!("opening message store {name}"))?;
                    (Arc::new(s), c, name)
                }
                Some(url) => anyhow::bail!(
                    "store_url {}: only postgres:// (or postgresql://) URLs are supported; leave it unset for SQLite",
                    redact(url)
                ),
            };
        // Identical reads (a room's members recovering at once) share one.
        let store = crate::store::coalesce::Coalesced::wrap(store);
        // Retention per namespace (`history_size`, `history_ttl`), as the store applies it
        // (and the shared reads age by).
        let namespaces = config.clone();
        store.set_retention(Arc::new(move |room: &str| {
            crate::channel::Channel::resolve(&namespaces, room)
                .map(|c| c.options.retention())
                .unwrap_or_default()
        }));
        let redis_url = config.redis_url.as_deref().filter(|u| !u.is_empty());
        let nats_url = config.nats_url.as_deref().filter(|u| !u.is_empty());
        type Parts = (Arc<dyn Bus>, Arc<dyn Presence>, Arc<dyn Directory>);
        let (bus, presence, directory): Parts = match (redis_url, nats_url) {
            (None, None) => (
                Arc::new(LocalBus::new(hub.clone())),
                Arc::new(LocalPresence::default()),
                Arc::new(LocalDirectory::new(node_id)),
            ),
            (None, Some(_)) => anyhow::bail!(
                "nats_url needs redis_url too: presence and the node registry are kept in Redis"
            ),
            (Some(url), nats) => {
                let name = redact(url);
                let target = Target::parse(url).context("redis URL")?;
                let conn = target
                    .connect()
                    .await
                    .with_context(|| format!("connecting presence to {name}"))?;
                let broker: Arc<dyn Broker> = match nats {
                    None => Arc::new(
                        RedisBroker::connect(url)
                            .await
                            .with_context(|| format!("connecting the bus to {name}"))?,
                    ),
                    Some(nats) => Arc::new(
                        NatsBroker::connect(nats)
                            .await
                            .with_context(|| format!("connecting the bus to {}", redact(nats)))?,
                    ),
                };
                tracing::info!(broker = broker.name(), redis = %name, "cluster bus on {}, presence on redis", broker.name());
                let registry = Arc::new(registry::RedisRegistry::new(conn.clone()));
                let directory: Arc<dyn Directory> = directory::RedisDirectory::start(
                    conn.clone(),
                    node_id,
                    hub.clone(),
                    Duration::from_secs(config.user_registry_ttl_secs),
                );
                let personal = Personal {
                    channels: config.personal_channels(),
                    directory: directory.clone(),
                };
                let bus = BrokerBus::start(
                    broker,
                    registry,
                    node_id.to_owned(),
                    hub.clone(),
                    store.clone(),
                    Some(personal),
                );
                (
                    Arc::new(bus),
                    presence::RedisPresence::start(
                        conn,
                        Duration::from_secs(config.presence_ttl_secs),
                    ),
                    directory,
                )
            }
        };
        Ok(Backends {
            store,
            committed,
            bus,
            presence,
            directory,
            store_name,
        })
    }
}

/// A URL without its password, for logs and errors.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn unknown_store_schemes_and_bad_urls_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let hub = std::sync::Arc::new(super::Hub::new());
        let mut config = super::Config {
            data_dir: dir.path().into(),
            store_url: Some("mysql://u:pw@h/db".into()),
            ..super::Config::default()
        };
        let err = super::Backends::open(&config, &hub, "n")
            .await
            .err()
            .unwrap();
        assert!(err.to_string().contains("postgres://"), "{err}");
        assert!(!err.to_string().contains("pw"), "password redacted: {err}");
        config.store_url = None;
        config.redis_url = Some("not a url".into());
        assert!(super::Backends::open(&config, &hub, "n").await.is_err());
        // NATS carries the bus only: presence needs Redis beside it.
        config.redis_url = None;
        config.nats_url = Some("nats://127.0.0.1:1".into());
        let err = super::Backends::open(&config, &hub, "n")
            .await
            .err()
            .unwrap();
        assert!(err.to_string().contains("redis_url"), "{err}");
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            super::redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(
            super::redact("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
    }
}
