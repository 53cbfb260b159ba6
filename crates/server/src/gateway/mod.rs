//! One client connection, from the upgraded socket to the protocol session.
//!
//! - `session/`: the protocol state machine (connect, subscriptions, publishes,
//!   refusals), driven by decoded commands, working over the node's services through the
//!   narrow `Services` trait and a narrow `SessionConfig`, so it is unit-tested without
//!   sockets;
//! - `commands.rs`: runs the commands of a batch of client messages through the session
//!   (consecutive publishes share one commit) and writes what the outbox holds through
//!   the transport;
//! - `transport.rs`: the `Transport` seam (name, format, write, write_many, close);
//! - `websocket.rs`: the WebSocket transport and its socket pump (RFC 6455 framing from
//!   the `roomcast-ws` crate), including the write timeout that tears down a connection
//!   whose peer stops reading;
//! - `stream.rs`: the one-way stream transports' pump (outbox into a streamed response
//!   body), used by `http_stream.rs` (HTTP-streaming) and `sse.rs` (server-sent events);
//! - `emulation.rs`: the bidirectional emulation endpoint that carries a stream client's
//!   commands to its stream, and the registry of this node's streams.
//!
//! Whatever ends the connection, the session leaves its rooms before the task ends.

mod commands;
pub mod emulation;
pub mod http_stream;
pub mod session;
pub mod sse;
mod stream;
pub mod transport;
pub mod websocket;

pub use websocket::{serve, serve_echo};
