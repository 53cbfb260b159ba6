//! Starting and draining a node: bind the listener, wire the components, serve, and on
//! shutdown stop accepting, close every connection with "shutdown", wait for their tasks,
//! then close in order: presence (this node's entries removed as its connections are told
//! to close), the store writer (pending commits finish), the dispatcher (every committed
//! publication handed to the bus), the bus (queued publishes flushed to the broker, then
//! the leave announcement).

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use roomcast_proto::Disconnect;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Auth;
use crate::cluster::Backends;
use crate::config::Config;
use crate::hub::Hub;
use crate::keepalive::Keepalive;
use crate::node::Node;

/// A started node.
pub struct Server {
    pub addr: SocketAddr,
    /// Where the gRPC API listens, when `grpc_api_address` is set.
    pub grpc_addr: Option<SocketAddr>,
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
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
        }
    }
}

impl Server {
    /// Binds, opens the store and starts serving. `config` must have its secrets filled
    /// in (see `Config::ensure_secrets`) unless it is insecure.
    pub async fn start(config: Config) -> anyhow::Result<Server> {
        // A start that fails leaves nothing behind: a data directory this start created
        // (secrets, an empty store) is removed again. An existing one is never touched.
        let created = (!config.data_dir.exists()).then(|| config.data_dir.clone());
        let started = Self::start_in(config).await;
        if let (Err(e), Some(dir)) = (&started, created) {
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {
                    tracing::info!(dir = %dir.display(), "start failed ({e:#}); removed the data directory it had created");
                }
                Err(rm) => {
                    tracing::warn!(dir = %dir.display(), error = %rm, "start failed; could not remove the data directory it had created");
                }
            }
        }
        started
    }

    async fn start_in(mut config: Config) -> anyhow::Result<Server> {
        crate::metrics::enable(config.metrics);
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
        if config.token_hmac_secret.is_none() || config.api_key.is_none() {
            if let Some(path) = config.ensure_secrets()? {
                tracing::info!(path = %path.display(), "generated a token HMAC secret and an API key");
            }
        }
        let secret = config.token_hmac_secret.clone().expect("secret ensured");
        config.validate()?;
        let client = crate::outbound::HttpClient::new();
        let auth = Auth::load(&config, &secret, &client).await?;
        let proxies = Arc::new(crate::proxy::Proxies::new(&config, client.clone())?);
        let refresher = Arc::new(crate::proxy::Refresher::new(
            config.proxy_max_in_flight,
            config.max_data_depth,
        ));
        let hub = Arc::new(Hub::new().with_parallel_above(config.fanout_parallel_above));
        let id = uuid::Uuid::new_v4().to_string();
        let Backends {
            store,
            committed,
            bus,
            presence,
            directory,
            store_name,
        } = Backends::open(&config, &hub, &id).await?;
        let notifier =
            crate::notify::Notifier::new(&config, store.clone(), directory.clone(), &id, client)?;
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let addr = listener.local_addr()?;
        let node = Arc::new(Node {
            auth,
            proxies,
            refresher,
            store,
            bus,
            hub,
            presence,
            directory,
            keepalive: Arc::new(Keepalive::new(
                config.ping_interval_secs,
                config.pong_timeout_secs,
            )),
            id,
            started: Instant::now(),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            published: AtomicU64::new(0),
            room_rates: Default::default(),
            notifier,
            streams: Default::default(),
            session: config.session(),
            config,
        });
        let dispatcher = tokio::spawn(node.clone().dispatch(committed));
        if let Some(n) = &node.notifier {
            node.tasks.spawn(n.clone().run(node.shutdown.clone()));
        }
        node.tasks
            .spawn(node.keepalive.clone().run(node.shutdown.clone()));
        node.tasks.spawn(
            node.refresher
                .clone()
                .run(node.proxies.clone(), node.shutdown.clone()),
        );
        if let Some(jwks) = node.auth.jwks() {
            node.tasks.spawn(jwks.clone().run(node.shutdown.clone()));
        }
        // HTTP and gRPC API calls share one set of `api_max_in_flight` slots.
        let api = crate::http::api::Api::new(node.clone());
        let grpc_addr = match node.config.grpc_api_address {
            Some(at) => Some(crate::grpc::start(&node, at, api.clone()).await?),
            None => None,
        };
        let app = crate::http::router(node.clone(), api);
        let serve = tokio::spawn(accept_loop(
            listener,
            app,
            node.shutdown.clone(),
            node.tasks.clone(),
            Duration::from_secs(node.config.shutdown_grace_secs),
        ));
        tracing::info!(%addr, store = %store_name, "listening on {addr}");
        Ok(Server {
            addr,
            grpc_addr,
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
        // Every connection gets "shutdown" after what is already queued for it.
        self.node.keepalive.close_all(Disconnect::SHUTDOWN);
        // Its clients are leaving: other nodes stop listing them now, not after each
        // connection's close handshake (up to its linger) or a TTL.
        self.node.presence.close().await;
        self.node.tasks.close();
        if tokio::time::timeout(grace, self.node.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("connections still open after the grace period");
        }
        // Connections removed their registry entries as they closed; stop refreshing.
        self.node.directory.close().await;
        let _ = tokio::time::timeout(grace, self.serve).await;
        self.node.store.close().await;
        // The writer has stopped; the dispatcher ends when the committed queue drains,
        // having handed every committed publication to the bus.
        let _ = tokio::time::timeout(grace, self.dispatcher).await;
        // Then the bus flushes them to the broker and announces this node is leaving.
        self.node.bus.close().await;
        drop(self.node);
        tracing::info!("drained");
    }
}

/// Time a client has to send its HTTP request headers (the WebSocket upgrade included).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// hyper's read buffer, which bounds a request's line and headers (the WebSocket upgrade
/// included): larger heads are refused (431) instead of buffered. Bodies stream through
/// and are bounded by their handlers.
const MAX_HEAD_BYTES: usize = 16 << 10;
/// Most headers in one request.
const MAX_HEADERS: usize = 64;

/// Accepts connections until shutdown. Each HTTP connection is served by hyper in a tracked
/// task; running out of file descriptors backs off instead of spinning.
pub async fn accept_loop(
    listener: TcpListener,
    app: axum::Router,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    grace: Duration,
) {
    let service = TowerToHyperService::new(app);
    let mut backoff = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => r,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => {
                backoff = Duration::from_millis(10);
                tcp
            }
            Err(e) => {
                if matches!(e.raw_os_error(), Some(code) if code == 24 || code == 23) {
                    // EMFILE / ENFILE: out of file descriptors until connections close.
                    tracing::warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed: out of file descriptors; backing off");
                } else {
                    tracing::debug!(error = %e, "accept failed");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let service = service.clone();
        let stop = shutdown.clone();
        tasks.spawn(async move {
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_HEAD_BYTES)
                .max_headers(MAX_HEADERS)
                .serve_connection(TokioIo::new(tcp), service)
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(grace, conn).await;
                }
            }
        });
    }
}
