//! The Pub/Sub side: a standalone SUBSCRIBE connection, or a cluster connection with
//! sharded subscriptions (SSUBSCRIBE per slot) whose messages arrive as RESP3 pushes. A
//! disconnection of any shard's connection ends the subscription (`next` returns
//! `None`), like a lost connection on standalone Redis: the ingest replaces it,
//! resubscribes everything and sweeps the watched rooms from the store.

use std::collections::HashMap;

use futures_util::StreamExt;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::Slot;
use redis::{PushInfo, PushKind, RedisResult};
use tokio::sync::mpsc;

use super::channel_name;
use super::conn::redis_err;
use crate::bus::broker::Channel;
use crate::bus::BusError;

/// Groups channels by hash slot (sharded subscribe commands must stay within one slot).
fn by_slot(channels: &[String]) -> Vec<Vec<&str>> {
    let mut groups: HashMap<Slot, Vec<&str>> = HashMap::new();
    for c in channels {
        groups.entry(Slot::for_key(c)).or_default().push(c);
    }
    groups.into_values().collect()
}

/// The Pub/Sub side: a standalone SUBSCRIBE connection, or a cluster connection with
/// sharded subscriptions whose messages arrive as RESP3 pushes.
pub(super) enum RedisSubscription {
    Single(redis::aio::PubSubSink, redis::aio::PubSubStream),
    Cluster(ClusterConnection, mpsc::UnboundedReceiver<PushInfo>),
}

impl RedisSubscription {
    pub(super) async fn subscribe(&mut self, channels: &[String]) -> RedisResult<()> {
        match self {
            RedisSubscription::Single(sink, _) => sink.subscribe(channels).await,
            RedisSubscription::Cluster(conn, _) => {
                for group in by_slot(channels) {
                    conn.ssubscribe(group).await?;
                }
                Ok(())
            }
        }
    }

    pub(super) async fn unsubscribe(&mut self, channels: &[String]) -> RedisResult<()> {
        match self {
            RedisSubscription::Single(sink, _) => sink.unsubscribe(channels).await,
            RedisSubscription::Cluster(conn, _) => {
                for group in by_slot(channels) {
                    conn.sunsubscribe(group).await?;
                }
                Ok(())
            }
        }
    }

    /// The next message (channel, payload); `None` when the connection was lost (on a
    /// cluster: any shard's connection dropped, so messages may have been missed).
    pub(super) async fn next(&mut self) -> Option<(String, Vec<u8>)> {
        match self {
            RedisSubscription::Single(_, stream) => {
                let msg = stream.next().await?;
                Some((
                    msg.get_channel_name().to_owned(),
                    msg.get_payload_bytes().to_vec(),
                ))
            }
            RedisSubscription::Cluster(_, rx) => loop {
                let push = rx.recv().await?;
                match push.kind {
                    PushKind::SMessage | PushKind::Message => {
                        let mut data = push.data.into_iter();
                        if let (
                            Some(redis::Value::BulkString(channel)),
                            Some(redis::Value::BulkString(payload)),
                        ) = (data.next(), data.next())
                        {
                            let channel = String::from_utf8_lossy(&channel).into_owned();
                            return Some((channel, payload));
                        }
                    }
                    PushKind::Disconnection => return None,
                    _ => {}
                }
            },
        }
    }
}

#[async_trait::async_trait]
impl crate::bus::broker::Subscription for RedisSubscription {
    async fn subscribe(&mut self, channels: &[Channel]) -> Result<(), BusError> {
        let names: Vec<String> = channels.iter().map(channel_name).collect();
        RedisSubscription::subscribe(self, &names)
            .await
            .map_err(redis_err)
    }

    async fn unsubscribe(&mut self, channels: &[Channel]) -> Result<(), BusError> {
        let names: Vec<String> = channels.iter().map(channel_name).collect();
        RedisSubscription::unsubscribe(self, &names)
            .await
            .map_err(redis_err)
    }

    async fn next(&mut self) -> Option<Vec<u8>> {
        RedisSubscription::next(self)
            .await
            .map(|(_, payload)| payload)
    }
}
