//! Presence in Redis: who is in a room, across every node.
//!
//! Per room, a hash `roomcast:presence:{r:<room>}` (client id -> client info JSON) and a
//! sorted set `roomcast:presence-exp:{r:<room>}` (client id -> expiry, Unix seconds). The
//! `{r:<room>}` hash tag keeps a room's two keys on one Redis Cluster shard (the Lua
//! scripts use both); the refresh pipelines are split per slot on a cluster. Reads drop
//! expired entries first (one Lua script, so a read never returns a dead entry). Each node
//! keeps its own entries in memory and re-adds them every `REFRESH` with a new expiry
//! `TTL` ahead, so the entries of a node that dies without cleaning up are gone at most
//! `TTL` (25 s) after its last refresh; both keys also expire when no node refreshes them.
//! While Redis is unreachable, reads answer with this node's own entries.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use redis::cluster_routing::Slot;
use roomcast_proto::ClientInfo;
use tokio::time::{interval, timeout, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bus::redis::RedisConn;
use crate::presence::Presence;

/// How long an entry lives without a refresh.
pub const TTL: Duration = Duration::from_secs(25);
/// How often a node refreshes its entries.
pub const REFRESH: Duration = Duration::from_secs(5);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// Entries refreshed per pipeline.
const REFRESH_CHUNK: usize = 1000;

fn hash_key(room: &str) -> String {
    format!("roomcast:presence:{{r:{room}}}")
}

fn exp_key(room: &str) -> String {
    format!("roomcast:presence-exp:{{r:{room}}}")
}

const ADD: &str = r"
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return 1
";

const GET: &str = r"
local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
for _, c in ipairs(dead) do redis.call('HDEL', KEYS[1], c) end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
return redis.call('HGETALL', KEYS[1])
";

fn now_secs() -> u64 {
    crate::auth::now_secs()
}

pub struct RedisPresence {
    conn: RedisConn,
    /// This node's entries, re-added on every refresh (room -> client -> info).
    local: Arc<Mutex<HashMap<String, HashMap<String, ClientInfo>>>>,
    add: redis::Script,
    get: redis::Script,
    stop: CancellationToken,
    /// The refresh task, so the drain waits for it.
    tasks: TaskTracker,
}

impl RedisPresence {
    /// Starts presence over `conn`, with its refresh task.
    pub fn start(conn: RedisConn) -> Arc<RedisPresence> {
        let p = Arc::new(RedisPresence {
            conn,
            local: Arc::new(Mutex::new(HashMap::new())),
            add: redis::Script::new(ADD),
            get: redis::Script::new(GET),
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
        });
        p.tasks
            .spawn(refresh(p.conn.clone(), p.local.clone(), p.stop.clone()));
        p
    }

    async fn write(&self, room: &str, info: &ClientInfo) -> redis::RedisResult<()> {
        let json = serde_json::to_string(info).expect("client info serializes");
        let mut conn = self.conn.clone();
        let mut inv = self.add.key(hash_key(room));
        inv.key(exp_key(room))
            .arg(&info.client)
            .arg(json)
            .arg(now_secs() + TTL.as_secs())
            .arg(TTL.as_secs() + 5);
        with_timeout(inv.invoke_async::<i64>(&mut conn))
            .await
            .map(drop)
    }
}

async fn with_timeout<T>(
    f: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> redis::RedisResult<T> {
    match timeout(COMMAND_TIMEOUT, f).await {
        Ok(r) => r,
        Err(_) => Err(redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "redis presence command timed out",
        ))),
    }
}

impl Drop for RedisPresence {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Re-adds this node's entries every `REFRESH`.
async fn refresh(
    mut conn: RedisConn,
    local: Arc<Mutex<HashMap<String, HashMap<String, ClientInfo>>>>,
    stop: CancellationToken,
) {
    let mut tick = interval(REFRESH);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let entries: Vec<(String, String, String)> = local
            .lock()
            .expect("presence lock")
            .iter()
            .flat_map(|(room, clients)| {
                clients.iter().map(move |(c, info)| {
                    let json = serde_json::to_string(info).expect("client info serializes");
                    (room.clone(), c.clone(), json)
                })
            })
            .collect();
        let expiry = now_secs() + TTL.as_secs();
        'chunks: for chunk in entries.chunks(REFRESH_CHUNK) {
            // Standalone: one pipeline per chunk; cluster: one per hash slot.
            let mut pipes: HashMap<Option<Slot>, redis::Pipeline> = HashMap::new();
            for (room, client, json) in chunk {
                let slot = conn.is_cluster().then(|| Slot::for_key(hash_key(room)));
                let pipe = pipes.entry(slot).or_insert_with(redis::pipe);
                // The script's body, inlined as plain commands (a pipeline of EVALSHA
                // would need the script loaded first).
                pipe.hset(hash_key(room), client, json).ignore();
                pipe.zadd(exp_key(room), client, expiry).ignore();
                pipe.expire(hash_key(room), (TTL.as_secs() + 5) as i64)
                    .ignore();
                pipe.expire(exp_key(room), (TTL.as_secs() + 5) as i64)
                    .ignore();
            }
            for pipe in pipes.into_values() {
                if let Err(e) = with_timeout(pipe.query_async::<()>(&mut conn)).await {
                    tracing::warn!(error = %e, "presence refresh failed");
                    break 'chunks;
                }
            }
        }
    }
}

/// How long `/ready` waits for Redis to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(1);

#[async_trait]
impl Presence for RedisPresence {
    async fn ready(&self) -> Result<(), String> {
        let mut conn = self.conn.clone();
        match timeout(
            READY_TIMEOUT,
            redis::cmd("PING").query_async::<String>(&mut conn),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("presence (redis): {e}")),
            Err(_) => Err("presence (redis): no answer to PING within 1 s".into()),
        }
    }

    async fn close(&self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        // This node's entries go now, not a TTL later (connections closed by the drain
        // have normally removed theirs already).
        let entries: Vec<(String, String)> =
            std::mem::take(&mut *self.local.lock().expect("presence lock"))
                .into_iter()
                .flat_map(|(room, clients)| clients.into_keys().map(move |c| (room.clone(), c)))
                .collect();
        let mut conn = self.conn.clone();
        for chunk in entries.chunks(REFRESH_CHUNK) {
            let mut pipes: HashMap<Option<Slot>, redis::Pipeline> = HashMap::new();
            for (room, client) in chunk {
                let slot = conn.is_cluster().then(|| Slot::for_key(hash_key(room)));
                let pipe = pipes.entry(slot).or_insert_with(redis::pipe);
                pipe.hdel(hash_key(room), client).ignore();
                pipe.zrem(exp_key(room), client).ignore();
            }
            for pipe in pipes.into_values() {
                if let Err(e) = with_timeout(pipe.query_async::<()>(&mut conn)).await {
                    tracing::warn!(error = %e, "presence removal failed; entries expire on their own");
                    return;
                }
            }
        }
    }

    async fn add(&self, room: &str, info: ClientInfo) {
        self.local
            .lock()
            .expect("presence lock")
            .entry(room.to_owned())
            .or_default()
            .insert(info.client.clone(), info.clone());
        if let Err(e) = self.write(room, &info).await {
            // The refresh adds it once Redis answers again.
            tracing::warn!(error = %e, "presence add failed");
        }
    }

    async fn remove(&self, room: &str, client: &str) {
        {
            let mut local = self.local.lock().expect("presence lock");
            if let Some(r) = local.get_mut(room) {
                r.remove(client);
                if r.is_empty() {
                    local.remove(room);
                }
            }
        }
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        pipe.hdel(hash_key(room), client)
            .ignore()
            .zrem(exp_key(room), client)
            .ignore();
        if let Err(e) = with_timeout(pipe.query_async::<()>(&mut conn)).await {
            // The entry expires on its own.
            tracing::warn!(error = %e, "presence remove failed");
        }
    }

    async fn get(&self, room: &str) -> HashMap<String, ClientInfo> {
        let mut conn = self.conn.clone();
        let mut inv = self.get.key(hash_key(room));
        inv.key(exp_key(room)).arg(now_secs());
        match with_timeout(inv.invoke_async::<HashMap<String, String>>(&mut conn)).await {
            Ok(entries) => entries
                .into_iter()
                .filter_map(|(client, json)| match serde_json::from_str(&json) {
                    Ok(info) => Some((client, info)),
                    Err(e) => {
                        tracing::warn!(%room, error = %e, "bad presence entry ignored");
                        None
                    }
                })
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "presence read failed; answering with this node's");
                self.local
                    .lock()
                    .expect("presence lock")
                    .get(room)
                    .cloned()
                    .unwrap_or_default()
            }
        }
    }
}
