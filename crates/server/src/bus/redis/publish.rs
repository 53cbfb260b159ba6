//! Publishing a batch: standalone, one pipeline of PUBLISH; on a cluster, one pipeline of
//! SPUBLISH per hash slot, the slots concurrently: one round trip per slot per batch,
//! never per recipient or per message.

use std::collections::HashMap;

use redis::cluster_routing::Slot;
use redis::RedisResult;

use super::conn::RedisConn;

/// Publishes `msgs` in order per channel: standalone, one pipeline of PUBLISH; on a
/// cluster, one pipeline of SPUBLISH per hash slot, the slots concurrently.
pub(super) async fn publish_all<'a>(
    conn: &mut RedisConn,
    msgs: impl Iterator<Item = (&'a str, &'a [u8])>,
) -> RedisResult<()> {
    match conn {
        RedisConn::Single(_) => {
            let mut pipe = redis::pipe();
            for (channel, payload) in msgs {
                pipe.publish(channel, payload).ignore();
            }
            pipe.query_async::<()>(conn).await
        }
        RedisConn::Cluster(c) => {
            let mut pipes: HashMap<Slot, redis::Pipeline> = HashMap::new();
            for (channel, payload) in msgs {
                pipes
                    .entry(Slot::for_key(channel))
                    .or_insert_with(redis::pipe)
                    .cmd("SPUBLISH")
                    .arg(channel)
                    .arg(payload)
                    .ignore();
            }
            let sends = pipes.into_values().map(|pipe| {
                let mut c = c.clone();
                async move { pipe.query_async::<()>(&mut c).await }
            });
            futures_util::future::try_join_all(sends).await.map(drop)
        }
    }
}
