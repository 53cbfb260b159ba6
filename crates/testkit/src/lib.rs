//! roomcast's test kit: everything an integration test needs to drive real servers through
//! real sockets, written once.
//!
//! - [`TestServer`]: a node in this process on port 0 with a fresh data directory.
//! - [`Node`]: a `roomcast serve` child process, ready once it wrote its `--ready-fd` JSON
//!   line (no log scraping); killed, signalled or drained by its PID.
//! - [`api_raw`], [`api`], [`publish`]: the server HTTP API over a raw socket.
//! - [`Client`] (one WebSocket speaking the JSON protocol), [`PbClient`] (the same in the
//!   protobuf format) and [`Subscriber`] (a client
//!   that recovers after closes, as an SDK does).
//! - [`services`]: private Redis, Redis Cluster, PostgreSQL, NATS (JetStream) and nginx
//!   on free loopback ports in temporary directories. A missing program fails the test
//!   with the Debian package to install; nothing ever skips.
//! - [`Proxy`]: a TCP proxy the test cuts (drop and refuse connections) and heals, to
//!   partition a node from Redis or PostgreSQL.
//! - [`eventually`]: poll a condition with a deadline.
//!
//! Every test file takes it all with `use roomcast_testkit::*;`.

mod api;
mod client;
mod node;
mod pb_client;
mod proxy;
mod server;
pub mod services;
mod subscriber;
mod wait;

use std::time::Duration;

use roomcast::auth::{now_secs, Auth, Claims};

pub use api::{api, api_raw, get, publish, try_api, try_api_raw};
pub use client::{error_code, Client, Event};
pub use node::{roomcast_bin, Node, NodeBuilder};
pub use pb_client::{Ask, PbClient};
pub use proxy::Proxy;
pub use server::{config, TestServer};
pub use services::{free_port, Nats, Nginx, Postgres, Redis, RedisCluster};
pub use subscriber::Subscriber;
pub use wait::eventually;

/// HMAC secret of every test node's connection tokens.
pub const SECRET: &str = "test-secret";
/// Server API key of every test node.
pub const API_KEY: &str = "test-api-key";
/// The longest any single wait on a server may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(20);

/// A connection token for `user`, valid for an hour.
pub fn token(user: &str) -> String {
    token_with(Claims {
        sub: user.into(),
        exp: Some(now_secs() + 3600),
        ..Claims::default()
    })
}

/// A connection token with these claims, signed with [`SECRET`].
pub fn token_with(claims: Claims) -> String {
    Auth::new(SECRET, None, None).mint(&claims)
}
