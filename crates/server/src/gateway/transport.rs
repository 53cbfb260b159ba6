//! The seam between a session and the wire, cut as centrifuge cuts it: a transport has a
//! name and a format, and moves frames the session already encoded (`write`,
//! `write_many`) and the end of the connection (`close`). The session never knows which
//! transport carries it: WebSocket (`websocket.rs`), and HTTP-streaming and SSE
//! (`stream.rs`, one implementation for both, framing the body each its own way).

use bytes::Bytes;

/// How replies and pushes are encoded for a transport: JSON (several frames of one write
/// newline-joined) or protobuf (length-delimited frames concatenated). Owned by the proto
/// crate, which encodes for both.
pub use roomcast_proto::Format;

/// Moves encoded frames to one client. Writes are buffered by the transport and leave
/// when its socket takes them; a transport bounds what it buffers (see the pump that
/// owns it).
pub trait Transport {
    /// The transport's name, as metrics and logs show it ("websocket").
    fn name(&self) -> &'static str;
    /// The format the session must encode for.
    fn format(&self) -> Format;
    /// Queues one encoded reply or push.
    fn write(&mut self, frame: &[u8]);
    /// Queues several frames, in order; the transport may join them into one message.
    fn write_many(&mut self, frames: &[Bytes]);
    /// Queues the end of the connection with a protocol close code and reason, after what
    /// was written before.
    fn close(&mut self, code: u16, reason: &str);
}
