//! The NATS broker (core NATS publish/subscribe, `async-nats`) under the broker seam
//! (`bus/broker.rs`). Ordering, gap fill, resync, probes and heartbeats are the shared
//! ingest's (`bus/ingest/`); this file only moves envelopes.
//!
//! Subjects: `roomcast.room.<room>`, `roomcast.node.<id>`, `roomcast.control`. A room
//! name is one subject token: bytes other than ASCII letters, digits, `-` and `_` are
//! written `%XX`, so `.`, `*`, `>` and spaces in room names never make wildcards or extra
//! tokens, and two rooms never share a subject.
//!
//! - **Publishing** goes through one long-lived client (it reconnects by itself). A batch
//!   is queued on the client, then followed by a request to a subject nobody serves: the
//!   server answers it ("no responders") only after it has processed everything before it
//!   on the connection, so `publish` returns once the server has the batch, and a failed
//!   or stalled server is an error the ingest turns into hints. (The client's `flush` only
//!   writes the socket; it proves nothing.)
//! - **Each subscription has its own client connection.** Core NATS resubscribes by itself
//!   after a reconnect, but what was published in between is gone, and a slow consumer's
//!   messages are dropped: on either event (and on a stall the ingest's probe detects) the
//!   subscription ends, the ingest opens a new connection and sweeps the watched rooms
//!   from the store. `subscribe` returns after the same round trip, so the server has the
//!   interest before the ingest reads the room's baseline from the store.
//!
//! Presence and the node registry stay in Redis (see `cluster/mod.rs` for why).

use std::collections::HashMap;
use std::fmt::Write;
use std::time::Duration;

use async_nats::client::RequestErrorKind;
use async_nats::{Client, ConnectOptions, Event};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::SelectAll;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::broker::{Broker, Channel, Outgoing, Subscription};
use super::BusError;

/// Time to connect (the ingest bounds every other operation).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Messages a subscription buffers before NATS calls it a slow consumer (and drops).
const SUBSCRIPTION_CAPACITY: usize = 65_536;

/// The NATS subject of a broker channel.
pub fn subject(c: &Channel) -> String {
    match c {
        Channel::Room(room) => {
            let mut s = String::with_capacity(14 + room.len());
            s.push_str("roomcast.room.");
            if room.is_empty() {
                // A token may not be empty; `%` never starts an escaped byte with no digits.
                s.push('%');
            }
            for b in room.bytes() {
                if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                    s.push(b as char);
                } else {
                    let _ = write!(s, "%{b:02X}");
                }
            }
            s
        }
        Channel::Node(node) => {
            // Node ids are UUIDs; anything else is escaped like a room.
            let escaped = subject(&Channel::Room(node.clone()));
            format!("roomcast.node.{}", &escaped["roomcast.room.".len()..])
        }
        Channel::Control => "roomcast.control".into(),
    }
}

fn nats_err(e: impl std::fmt::Display) -> BusError {
    BusError::Backend(format!("nats: {e}"))
}

/// A round trip to the server: answered once it processed everything this connection
/// sent before. The subject is this connection's own, so nobody serves it.
async fn round_trip(client: &Client, subject: &str) -> Result<(), BusError> {
    match client.request(subject.to_owned(), Bytes::new()).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == RequestErrorKind::NoResponders => Ok(()),
        Err(e) => Err(nats_err(e)),
    }
}

fn sync_subject() -> String {
    format!("roomcast.sync.{}", uuid::Uuid::new_v4().simple())
}

fn options(name: &str) -> ConnectOptions {
    ConnectOptions::new()
        .name(name)
        .connection_timeout(CONNECT_TIMEOUT)
        .request_timeout(Some(CONNECT_TIMEOUT))
        .subscription_capacity(SUBSCRIPTION_CAPACITY)
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((attempts as u64 * 100).clamp(100, 1000))
        })
}

pub struct NatsBroker {
    url: String,
    /// The publisher's connection.
    client: Client,
    /// The publisher's round-trip subject.
    sync: String,
}

impl NatsBroker {
    pub async fn connect(url: &str) -> Result<NatsBroker, BusError> {
        let client = tokio::time::timeout(
            CONNECT_TIMEOUT * 2,
            options("roomcast-publisher").connect(url),
        )
        .await
        .map_err(|_| nats_err("connect timed out"))?
        .map_err(nats_err)?;
        Ok(NatsBroker {
            url: url.to_owned(),
            client,
            sync: sync_subject(),
        })
    }
}

#[async_trait]
impl Broker for NatsBroker {
    fn name(&self) -> &'static str {
        "nats"
    }

    async fn publish(&self, batch: &[Outgoing]) -> Result<(), BusError> {
        for o in batch {
            self.client
                .publish(subject(&o.channel), o.payload.clone().into())
                .await
                .map_err(nats_err)?;
        }
        round_trip(&self.client, &self.sync).await
    }

    async fn subscription(&self) -> Result<Box<dyn Subscription>, BusError> {
        let lost = CancellationToken::new();
        let on_event = lost.clone();
        let client = options("roomcast-subscriber")
            .event_callback(move |event| {
                let lost = on_event.clone();
                async move {
                    match event {
                        Event::Disconnected | Event::Closed | Event::SlowConsumer(_) => {
                            tracing::warn!(%event, "nats subscription connection event");
                            lost.cancel();
                        }
                        _ => {}
                    }
                }
            })
            .connect(&self.url)
            .await
            .map_err(nats_err)?;
        Ok(Box::new(NatsSubscription {
            client,
            sync: sync_subject(),
            lost,
            subjects: HashMap::new(),
            streams: SelectAll::new(),
        }))
    }
}

type Stream = futures_util::stream::BoxStream<'static, async_nats::Message>;

struct NatsSubscription {
    client: Client,
    /// This connection's round-trip subject.
    sync: String,
    /// Cancelled when the connection dropped or messages were dropped.
    lost: CancellationToken,
    /// One token per subscribed subject: cancelling it ends (and drops, so unsubscribes)
    /// that subject's stream inside `streams`.
    subjects: HashMap<String, CancellationToken>,
    streams: SelectAll<Stream>,
}

#[async_trait]
impl Subscription for NatsSubscription {
    async fn subscribe(&mut self, channels: &[Channel]) -> Result<(), BusError> {
        for c in channels {
            let name = subject(c);
            if self.subjects.contains_key(&name) {
                continue;
            }
            let sub = self
                .client
                .subscribe(name.clone())
                .await
                .map_err(nats_err)?;
            let done = CancellationToken::new();
            self.streams
                .push(sub.take_until(done.clone().cancelled_owned()).boxed());
            self.subjects.insert(name, done);
        }
        // The server has the interest once it answered a ping sent after the SUBs.
        round_trip(&self.client, &self.sync).await
    }

    async fn unsubscribe(&mut self, channels: &[Channel]) -> Result<(), BusError> {
        for c in channels {
            if let Some(done) = self.subjects.remove(&subject(c)) {
                done.cancel();
            }
        }
        Ok(())
    }

    async fn next(&mut self) -> Option<Vec<u8>> {
        loop {
            tokio::select! {
                _ = self.lost.cancelled() => return None,
                msg = self.streams.next(), if !self.streams.is_empty() => match msg {
                    Some(m) => return Some(m.payload.to_vec()),
                    // An unsubscribed stream ended; the others go on.
                    None => continue,
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_one_token_per_room_and_injective() {
        let room = |r: &str| subject(&Channel::Room(r.into()));
        assert_eq!(room("chat_1-a"), "roomcast.room.chat_1-a");
        assert_eq!(room("a.b"), "roomcast.room.a%2Eb");
        assert_eq!(room("a*>%"), "roomcast.room.a%2A%3E%25");
        assert_eq!(room("é"), "roomcast.room.%C3%A9");
        assert_ne!(room("a%2Eb"), room("a.b"));
        assert_eq!(room(""), "roomcast.room.%");
        assert_eq!(subject(&Channel::Node("0a-b".into())), "roomcast.node.0a-b");
        assert_eq!(subject(&Channel::Control), "roomcast.control");
    }
}
