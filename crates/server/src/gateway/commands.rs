//! Between a transport and the session: the commands of the client messages one read
//! delivered go through the session in order (consecutive publishes are committed
//! together), and what the connection's outbox holds goes out through the transport.

use bytes::Bytes;
use roomcast_proto::{decode_commands, protobuf, Command, Disconnect, Format, Method};

use super::session::{Flow, Now, Session};
use super::transport::Transport;
use crate::hub::Out;

/// One client message: text carries JSON commands, binary carries protobuf ones.
pub(super) enum Inbound {
    Text(String),
    Binary(Vec<u8>),
}

/// The commands of one message, if it is of the connection's format and well formed.
fn decode(msg: &Inbound, format: Format) -> Result<Vec<Command>, Disconnect> {
    let decoded = match (msg, format) {
        (Inbound::Text(text), Format::Json) => decode_commands(text).map_err(|e| e.to_string()),
        (Inbound::Binary(data), Format::Protobuf) => {
            protobuf::decode_commands(data).map_err(|e| e.to_string())
        }
        (_, format) => Err(format!(
            "a message not in the connection's format ({format:?})"
        )),
    };
    decoded.map_err(|error| {
        tracing::debug!(%error, "malformed frame");
        Disconnect::BAD_REQUEST
    })
}

/// Decodes and runs the commands of several client messages. Consecutive publishes are
/// committed together; every other command runs on its own, in order. An error is the
/// close the connection must end with.
pub(super) async fn run(session: &mut Session, msgs: &[Inbound]) -> Result<(), Disconnect> {
    // One clock reading for the batch: the commands of one read arrived together.
    let now = Now::current();
    let mut publishes = Vec::new();
    let format = session.format();
    for msg in msgs {
        let commands = decode(msg, format)?;
        for cmd in commands {
            let (id, method) = cmd.into_method().map_err(|_| Disconnect::BAD_REQUEST)?;
            if let Some(m) = crate::metrics::get() {
                m.command(crate::metrics::method_name(&method));
            }
            match method {
                Method::Empty => session.pong(),
                Method::Publish(p) if id != 0 && session.is_connected() => publishes.push((id, p)),
                other => {
                    session
                        .publish_batch(std::mem::take(&mut publishes), now)
                        .await;
                    if let Flow::Close(d) = session.handle(id, other, now).await {
                        return Err(d);
                    }
                }
            }
        }
    }
    session.publish_batch(publishes, now).await;
    Ok(())
}

/// Writes the queued frames in one `write_many` and runs queued control items.
pub(super) async fn flush(
    transport: &mut impl Transport,
    items: &mut Vec<Out>,
    session: Option<&mut Session>,
) {
    let mut frames: Vec<Bytes> = Vec::with_capacity(items.len());
    let mut session = session;
    for item in items.drain(..) {
        match item {
            Out::Frame(b) => frames.push(b),
            Out::Unsubscribe { channel, code } => {
                if let Some(s) = session.as_deref_mut() {
                    Box::pin(s.server_unsubscribe(&channel, code)).await;
                }
            }
            Out::Subscribe(sub) => {
                if let Some(s) = session.as_deref_mut() {
                    // Its push goes out with the next flush, after what is queued here.
                    Box::pin(s.server_subscribe(&sub)).await;
                }
            }
            Out::Refresh { expire_at, info } => {
                if let Some(s) = session.as_deref_mut() {
                    s.server_refresh(expire_at, info);
                }
            }
        }
    }
    if !frames.is_empty() {
        transport.write_many(&frames);
    }
}
