//! A node in the test's own process: `Server::start` on port 0 with a fresh data directory,
//! the test's secret and API key, and whatever else the test tunes in its [`Config`].

use roomcast::{Config, Server};
use serde_json::Value;

use crate::{api, publish, Client, API_KEY, SECRET};

/// A running in-process node; [`TestServer::stop`] drains it (dropping it just aborts).
pub struct TestServer {
    /// `None` once stopped.
    pub server: Option<Server>,
    pub addr: std::net::SocketAddr,
    /// The node's data directory (SQLite store), removed on drop.
    pub dir: tempfile::TempDir,
}

/// The configuration of every test node: loopback port 0, `dir` as data directory, the
/// kit's secret and API key, defaults for the rest.
pub fn config(dir: &std::path::Path) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.into(),
        token_hmac_secret: Some(SECRET.into()),
        api_key: Some(API_KEY.into()),
        ..Config::default()
    }
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    /// Starts a node with [`config`] changed by `tune`.
    pub async fn start_with(tune: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path());
        tune(&mut c);
        let server = Server::start(c).await.unwrap();
        TestServer {
            addr: server.addr,
            server: Some(server),
            dir,
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/connection/websocket", self.addr)
    }

    /// A client connected (with a valid token) as `user`.
    pub async fn client(&self, user: &str) -> Client {
        Client::connect(&self.ws_url(), user).await
    }

    /// Calls a server API method; asserts HTTP 200 and returns the body.
    pub async fn api(&self, method: &str, body: Value) -> Value {
        api(self.addr, method, body).await
    }

    /// Publishes through the server API; returns the offset.
    pub async fn publish(&self, channel: &str, data: Value) -> u64 {
        publish(self.addr, channel, data).await
    }

    /// Drains the node (connections closed with "shutdown", store commits flushed).
    pub async fn stop(mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
    }
}
