//! The protobuf format of the client protocol: the wire types generated from
//! `proto/client.proto` at build time (pure Rust, no `protoc`), the decoding of a binary
//! frame into the same `Command`s the JSON format yields, and the encoding of replies and
//! pushes.
//!
//! Framing: a binary frame holds one or more messages, each preceded by its length as a
//! varint. The decoder never allocates by a length it read: a length is checked against
//! the bytes actually in the frame first, so memory stays bounded by the frame size (which
//! the WebSocket layer bounds), and prost bounds nesting depth.
//!
//! Data (`data` of publications, connect, rpc, ...) is bytes in this format. roomcast
//! stores and forwards JSON, read by JSON and protobuf clients alike, so data a protobuf
//! client sends must be UTF-8 JSON; anything else is a malformed command (see
//! `DecodeError::NotJson`). Data sent to protobuf clients is the stored JSON text's bytes.

mod decode;
mod encode;

pub use decode::{decode_commands, DecodeError};
pub use encode::{delimited, ReplyResult};
pub(crate) use encode::{delta_push, push, put_empty};

/// The generated wire types.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod wire {
    include!(concat!(env!("OUT_DIR"), "/roomcast.client.rs"));
}
