//! Starting and draining a node: bind the listener, wire the components, serve, and on
//! shutdown stop accepting, close every connection with "shutdown", wait for their tasks,
//! then finish pending store commits.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Auth;
use crate::bus::LocalBus;
use crate::config::Config;
use crate::hub::Hub;
use crate::node::Node;
use crate::presence::LocalPresence;
use crate::store::sqlite::SqliteStore;

/// A started node.
pub struct Server {
    pub addr: SocketAddr,
    pub node: Arc<Node>,
    serve: JoinHandle<()>,
    dispatcher: JoinHandle<()>,
}

/// Raises the open-files soft limit to the hard limit; returns the new soft limit.
pub fn raise_fd_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "could not raise the open-files limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE)
                .map(|(soft, _)| soft)
                .unwrap_or(1024)
        }
    }
}

impl Server {
    /// Binds, opens the store and starts serving. `config` must have its secrets filled
    /// in (see `Config::ensure_secrets`) unless it is insecure.
    pub async fn start(mut config: Config) -> anyhow::Result<Server> {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
        if config.token_hmac_secret.is_none() || config.api_key.is_none() {
            if let Some(path) = config.ensure_secrets()? {
                tracing::info!(path = %path.display(), "generated a token HMAC secret and an API key");
            }
        }
        let secret = config.token_hmac_secret.clone().expect("secret ensured");
        let auth = Auth::new(
            &secret,
            config.token_audience.as_deref(),
            config.token_issuer.as_deref(),
        );
        let db = config.data_dir.join("messages.db");
        let (store, committed) =
            SqliteStore::open(&db, Duration::from_secs(config.idempotency_ttl_secs))
                .with_context(|| format!("opening message store {}", db.display()))?;
        let hub = Arc::new(Hub::new());
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let addr = listener.local_addr()?;
        let node = Arc::new(Node {
            auth,
            store: Arc::new(store),
            bus: Arc::new(LocalBus::new(hub.clone())),
            hub,
            presence: Arc::new(LocalPresence::default()),
            id: uuid::Uuid::new_v4().to_string(),
            started: Instant::now(),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            published: AtomicU64::new(0),
            config,
        });
        let dispatcher = tokio::spawn(node.clone().dispatch(committed));
        let app = crate::http::router(node.clone());
        let stop = node.shutdown.clone();
        let serve = tokio::spawn(async move {
            let result = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
            if let Err(e) = result {
                tracing::error!(error = %e, "server stopped");
            }
        });
        tracing::info!(%addr, db = %db.display(), "listening on {addr}");
        Ok(Server {
            addr,
            node,
            serve,
            dispatcher,
        })
    }

    /// Drains: no new connections, every connection closed with "shutdown" after its
    /// queued frames, then the store's pending commits. Waits at most the grace period
    /// for connections.
    pub async fn shutdown(self) {
        let grace = Duration::from_secs(self.node.config.shutdown_grace_secs);
        self.node.shutdown.cancel();
        self.node.tasks.close();
        if tokio::time::timeout(grace, self.node.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("connections still open after the grace period");
        }
        let _ = tokio::time::timeout(grace, self.serve).await;
        self.node.store.close().await;
        // The writer has stopped; the dispatcher ends when the committed queue drains.
        drop(self.node);
        let _ = tokio::time::timeout(grace, self.dispatcher).await;
        tracing::info!("drained");
    }
}
