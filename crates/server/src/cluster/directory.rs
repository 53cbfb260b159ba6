//! The per-user registry in Redis (`personal::Directory`): one hash per user,
//! `roomcast:user:{<user>}`, so finding which nodes hold a user's connections is one call
//! whatever the cluster size.
//!
//! Fields: each connection's client id -> `<expires unix ms>:<node id>`, rewritten by its
//! node every third of `user_registry_ttl_secs`; and `~seen` -> the unix ms the user was
//! last known connected. Expiry is per field (a hash has one TTL for all its fields, and
//! a user with a connection on a live node keeps the key alive): the lookup script
//! (`LOOKUP`, atomic) returns the nodes of live fields and deletes expired ones, folding
//! their last refresh into `~seen`. So a user whose node died reads offline at most a TTL
//! later, with a last-seen time within a refresh period of the death. The key itself lives
//! `SEEN_TTL` after the last write: last-seen survives node restarts, and users gone for
//! good are forgotten eventually.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::cluster_routing::Slot;
use tokio::time::{interval, timeout, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bus::redis::{RedisConn, PREFIX};
use crate::hub::Hub;
use crate::personal::{now_ms, Directory, DirectoryError, UserEntry};

/// How long a user's key (and so its last-seen time) outlives its last write.
pub const SEEN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// Users per refresh pipeline.
const REFRESH_CHUNK: usize = 1000;
/// The field holding the last-seen time (client ids are UUIDs, never this).
const SEEN: &str = "~seen";

/// The key of a user's hash (hash-tagged: one slot per user on a Redis Cluster).
pub fn user_key(user: &str) -> String {
    format!("{PREFIX}user:{{{user}}}")
}

/// KEYS[1] the user's hash; ARGV[1] now (ms), ARGV[2] the TTL (ms). Returns
/// `{last_seen, node...}`, each node once.
const LOOKUP: &str = r"
local now = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local all = redis.call('HGETALL', KEYS[1])
local seen = 0
local nodes = {}
local out = {}
local pruned = false
for i = 1, #all, 2 do
  local f, v = all[i], all[i + 1]
  if f == '~seen' then
    seen = math.max(seen, tonumber(v) or 0)
  else
    local sep = string.find(v, ':', 1, true)
    local exp = sep and tonumber(string.sub(v, 1, sep - 1)) or 0
    if exp > now then
      local node = string.sub(v, sep + 1)
      if not nodes[node] then
        nodes[node] = true
        table.insert(out, node)
      end
    else
      redis.call('HDEL', KEYS[1], f)
      seen = math.max(seen, exp - ttl)
      pruned = true
    end
  end
end
if pruned and seen > 0 then
  redis.call('HSET', KEYS[1], '~seen', seen)
end
table.insert(out, 1, tostring(seen))
return out
";

/// KEYS[1] the user's hash; ARGV[1] the client, ARGV[2] now (ms), ARGV[3] the key's TTL (s).
const REMOVE: &str = r"
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[1], '~seen', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
";

pub struct RedisDirectory {
    conn: RedisConn,
    node: String,
    ttl: Duration,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl RedisDirectory {
    /// Starts the refresh of this node's entries (its hub's connections) every third of
    /// `ttl`.
    pub fn start(conn: RedisConn, node: &str, hub: Arc<Hub>, ttl: Duration) -> Arc<RedisDirectory> {
        let d = Arc::new(RedisDirectory {
            conn,
            node: node.to_owned(),
            ttl,
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
        });
        d.tasks.spawn(refresh(
            d.conn.clone(),
            d.node.clone(),
            hub,
            ttl,
            d.stop.clone(),
        ));
        d
    }

    fn entry(&self) -> String {
        entry(&self.node, self.ttl)
    }
}

/// A connection's field value: `<expires ms>:<node>`.
fn entry(node: &str, ttl: Duration) -> String {
    format!("{}:{node}", now_ms() + ttl.as_millis() as i64)
}

impl Drop for RedisDirectory {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn bounded<T>(
    f: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, DirectoryError> {
    match timeout(COMMAND_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(DirectoryError::Backend(e.to_string())),
        Err(_) => Err(DirectoryError::Backend("timed out".into())),
    }
}

/// A lookup's reply as an entry.
fn parse(reply: Vec<String>) -> UserEntry {
    let mut it = reply.into_iter();
    let seen = it.next().and_then(|s| s.parse::<i64>().ok()).unwrap_or(0);
    UserEntry {
        nodes: it.collect(),
        last_seen_ms: (seen > 0).then_some(seen),
    }
}

#[async_trait]
impl Directory for RedisDirectory {
    async fn add(&self, user: &str, client: &str) {
        let key = user_key(user);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hset(&key, client, self.entry())
            .ignore()
            .hset(&key, SEEN, now_ms())
            .ignore()
            .expire(&key, SEEN_TTL.as_secs() as i64)
            .ignore();
        let mut conn = self.conn.clone();
        if let Err(e) = bounded(pipe.query_async::<()>(&mut conn)).await {
            tracing::warn!(error = %e, "user registry add failed; the next refresh retries");
        }
    }

    async fn remove(&self, user: &str, client: &str) {
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(REMOVE)
            .arg(1)
            .arg(user_key(user))
            .arg(client)
            .arg(now_ms())
            .arg(SEEN_TTL.as_secs());
        if let Err(e) = bounded(cmd.query_async::<i64>(&mut conn)).await {
            tracing::warn!(error = %e, "user registry removal failed; it expires on its own");
        }
    }

    async fn lookup(&self, users: &[String]) -> Result<Vec<UserEntry>, DirectoryError> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let now = now_ms();
        let ttl = self.ttl.as_millis() as i64;
        let script = |user: &str| {
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(LOOKUP).arg(1).arg(user_key(user)).arg(now).arg(ttl);
            cmd
        };
        let mut conn = self.conn.clone();
        let replies: Vec<Vec<String>> = if conn.is_cluster() {
            // Each user's key is on its own shard: one request per user, concurrently.
            let reads = users.iter().map(|u| {
                let mut c = conn.clone();
                let cmd = script(u);
                async move { cmd.query_async::<Vec<String>>(&mut c).await }
            });
            bounded(futures_util::future::try_join_all(reads)).await?
        } else {
            let mut pipe = redis::pipe();
            for u in users {
                pipe.add_command(script(u));
            }
            bounded(pipe.query_async::<Vec<Vec<String>>>(&mut conn)).await?
        };
        Ok(replies.into_iter().map(parse).collect())
    }

    async fn close(&self) {
        self.stop.cancel();
        self.tasks.close();
        let _ = timeout(COMMAND_TIMEOUT, self.tasks.wait()).await;
    }
}

/// Rewrites this node's connections of every local user, every third of the TTL.
async fn refresh(
    mut conn: RedisConn,
    node: String,
    hub: Arc<Hub>,
    ttl: Duration,
    stop: CancellationToken,
) {
    let mut tick = interval(ttl / 3);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let users = hub.user_clients();
        let value = entry(&node, ttl);
        let now = now_ms();
        'chunks: for chunk in users.chunks(REFRESH_CHUNK) {
            let mut pipes: HashMap<Option<Slot>, redis::Pipeline> = HashMap::new();
            for (user, clients) in chunk {
                let key = user_key(user);
                let slot = conn.is_cluster().then(|| Slot::for_key(&key));
                let pipe = pipes.entry(slot).or_insert_with(redis::pipe);
                let mut fields: Vec<(&str, String)> =
                    clients.iter().map(|c| (&**c, value.clone())).collect();
                fields.push((SEEN, now.to_string()));
                pipe.hset_multiple(&key, &fields)
                    .ignore()
                    .expire(&key, SEEN_TTL.as_secs() as i64)
                    .ignore();
            }
            for pipe in pipes.into_values() {
                if let Err(e) = bounded(pipe.query_async::<()>(&mut conn)).await {
                    tracing::warn!(error = %e, "user registry refresh failed");
                    break 'chunks;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn lookup_replies_parse() {
        let e = super::parse(vec!["0".into()]);
        assert!(e.nodes.is_empty() && e.last_seen_ms.is_none());
        let e = super::parse(vec!["17".into(), "a".into(), "b".into()]);
        assert_eq!((e.nodes.len(), e.last_seen_ms), (2, Some(17)));
    }
}
