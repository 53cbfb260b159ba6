//! Wire types of the Centrifugo client protocol v2, in its two formats (JSON and
//! protobuf), as roomcast speaks it.
//!
//! This crate owns the shape of every command a client sends, every reply and push the
//! server sends, their encoding in either format, and the protocol's error and disconnect
//! codes. It does no I/O and knows nothing of tokio, so the server, the tests and the load
//! generator all share it.
//!
//! Field names follow `centrifugal/protocol`'s `client.proto` (the JSON format uses the same
//! names); optional fields are omitted when empty, as the SDKs expect. The protobuf schema
//! is `proto/client.proto`, compiled at build time without `protoc`.

pub mod codes;
pub mod command;
pub mod data;
pub mod emulation;
pub mod format;
pub mod fossil;
pub mod protobuf;
pub mod reply;

pub use codes::{Disconnect, ErrorCode};
pub use command::{decode_commands, Command, Method, StreamPosition};
pub use format::Format;
pub use reply::*;
