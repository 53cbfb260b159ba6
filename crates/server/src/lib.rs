//! roomcast: a real-time chat server that speaks the Centrifugo client protocol v2 and
//! server HTTP API, with durable, store-first history.
//!
//! How a message travels: socket -> `gateway` (session) -> `node::Node::publish` ->
//! `store` (commit, offset) -> dispatcher -> `bus` -> `hub` (fan-out, on every node with
//! subscribers) -> outbox -> socket.

pub mod auth;
pub mod bus;
pub mod channel;
pub mod chat;
pub mod cluster;
pub mod config;
pub mod gateway;
pub mod grpc;
pub mod http;
pub mod hub;
pub mod keepalive;
pub mod metrics;
pub mod node;
pub mod notify;
pub mod outbound;
pub mod personal;
pub mod presence;
pub mod proxy;
pub mod rate;
pub mod server;
pub mod store;

/// This build's version, as connect replies and the `info` API report it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub use config::Config;
pub use server::Server;
