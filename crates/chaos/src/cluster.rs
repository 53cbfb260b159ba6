//! The system under test: Redis, PostgreSQL and three `roomcast serve` nodes, each node
//! reaching Redis and PostgreSQL through its own [`Proxy`], so any node can be partitioned
//! from both. Owns every process of the run; all of them end when it drops.
//!
//! A node keeps its port and data directory across kills, so its clients reconnect to the
//! same URL, as behind a fixed address. Its log goes to `DIR/node-N.log`; a line with
//! `panicked` is counted as a finding.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use roomcast_testkit::{Node, Postgres, Proxy, Redis};

/// One node's place in the cluster: its address and directory outlive its processes.
pub(crate) struct Slot {
    pub node: Option<Node>,
    pub addr: SocketAddr,
    pub redis_proxy: Proxy,
    pub pg_proxy: Proxy,
    dir: tempfile::TempDir,
    store_url: String,
    config: PathBuf,
    log: std::fs::File,
    pub panics: u64,
    pub starts: u32,
}

pub(crate) struct Cluster {
    pub redis: Redis,
    pub pg: Postgres,
    pub slots: Vec<Slot>,
}

/// Node configuration: clients may publish without subscribing (the writers), and a
/// small outbox so a stalled reader is closed as slow within seconds.
const NODE_CONFIG: &str = "outbox_max_bytes = 65536\n\
    [default_namespace]\nallow_publish_for_client = true\n";

impl Cluster {
    /// Starts Redis, PostgreSQL (a fresh database) and `nodes` nodes; logs into `out`.
    pub(crate) async fn start(nodes: usize, out: &Path) -> Cluster {
        let redis = tokio::task::block_in_place(Redis::start);
        let pg = tokio::task::block_in_place(Postgres::start);
        let db = pg.fresh_db().await;
        let pg_addr: SocketAddr = db
            .trim_start_matches("postgres://")
            .split_once('@')
            .and_then(|(_, rest)| rest.split_once('/'))
            .and_then(|(hostport, _)| hostport.parse().ok())
            .expect("the test PostgreSQL URL has host:port");
        let config = out.join("node.toml");
        std::fs::write(&config, NODE_CONFIG).expect("write the node config");
        let mut slots = Vec::new();
        for i in 0..nodes {
            let redis_proxy = Proxy::start(([127, 0, 0, 1], redis.port).into()).await;
            let pg_proxy = Proxy::start(pg_addr).await;
            let store_url = db.replace(&pg_addr.to_string(), &pg_proxy.addr.to_string());
            let log = std::fs::File::create(out.join(format!("node-{i}.log"))).unwrap();
            let mut slot = Slot {
                node: None,
                addr: "127.0.0.1:0".parse().unwrap(),
                redis_proxy,
                pg_proxy,
                dir: tempfile::tempdir().unwrap(),
                store_url,
                config: config.clone(),
                log,
                panics: 0,
                starts: 0,
            };
            slot.start();
            slots.push(slot);
        }
        Cluster { redis, pg, slots }
    }

    /// Copies every node's new log lines into its file (counting panics).
    pub(crate) fn drain_logs(&mut self) {
        for s in &mut self.slots {
            s.drain_log();
        }
    }
}

impl Slot {
    /// Starts (or restarts, on the same port and directory) the node; blocks until ready.
    pub(crate) fn start(&mut self) {
        let redis = format!("redis://{}", self.redis_proxy.addr);
        let builder = Node::builder()
            .listen(self.addr)
            .data_dir(self.dir.path())
            .redis(&redis)
            .store(&self.store_url)
            .arg("--config")
            .arg(&self.config);
        let node = tokio::task::block_in_place(|| builder.start());
        self.addr = node.addr;
        self.node = Some(node);
        self.starts += 1;
    }

    /// kill -9 (the log read first, so nothing it wrote is lost).
    pub(crate) fn kill(&mut self) {
        if let Some(n) = &mut self.node {
            n.kill();
        }
        self.drain_log();
        self.node = None;
    }

    pub(crate) fn signal(&self, sig: &str) {
        if let Some(n) = &self.node {
            n.signal(sig);
        }
    }

    pub(crate) fn ws_url(&self) -> String {
        format!("ws://{}/connection/websocket", self.addr)
    }

    fn drain_log(&mut self) {
        let Some(n) = &self.node else { return };
        for line in n.logs().try_iter() {
            if line.contains("panicked") {
                self.panics += 1;
            }
            let _ = writeln!(self.log, "{line}");
        }
    }
}
