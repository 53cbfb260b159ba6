//! Presence in Redis: who is in a room, across every node, with the room's counts.
//!
//! Per room, three keys sharing the `{r:<room>}` hash tag (one Redis Cluster shard, so
//! the Lua scripts may use all three; the refresh pipelines are split per slot on a
//! cluster):
//! - `roomcast:presence:{r:<room>}`, a hash client id -> client info JSON;
//! - `roomcast:presence-exp:{r:<room>}`, a sorted set client id -> expiry (Unix seconds);
//! - `roomcast:presence-users:{r:<room>}`, a hash user -> how many of the room's entries
//!   are theirs, kept by the same scripts that add and drop entries, so the number of
//!   distinct users is one `HLEN` and `stats` never reads the member hash.
//!
//! Every script drops the expired entries first (adjusting the user counts), so neither a
//! read nor a count includes a dead entry; that costs O(entries expired), once each.
//! `stats` is then two `HLEN`s; `get` returns nothing but the count when the room has
//! more entries than it may list. Each node keeps its own entries in memory and re-adds
//! them every fifth of the TTL with a new expiry a TTL ahead (one script call per room and
//! chunk, pipelined), so the entries of a node that dies without cleaning up are gone at
//! most `presence_ttl_secs` (60 s by default, Centrifugo's `presence_ttl`) after its last refresh; the keys also expire when no node refreshes
//! them. While Redis is unreachable, reads answer with this node's own entries.

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
use crate::presence::{Members, Presence, RoomMembers};

/// How often a node refreshes its entries: this fraction of their TTL (a node that misses
/// up to four refreshes in a row keeps its entries).
const REFRESHES_PER_TTL: u32 = 5;
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// Entries refreshed per pipeline (and at most per script call).
const REFRESH_CHUNK: usize = 1000;

fn hash_key(room: &str) -> String {
    format!("roomcast:presence:{{r:{room}}}")
}

fn exp_key(room: &str) -> String {
    format!("roomcast:presence-exp:{{r:{room}}}")
}

fn users_key(room: &str) -> String {
    format!("roomcast:presence-users:{{r:{room}}}")
}

/// Removes one entry and its share of the user counts (KEYS: hash, expiries, users).
/// The user is read from the entry's JSON (written by this file, so it decodes; an entry
/// that does not is dropped without touching the counts).
const DROP: &str = r"
local function drop(c)
  local j = redis.call('HGET', KEYS[1], c)
  redis.call('ZREM', KEYS[2], c)
  if not j then return 0 end
  redis.call('HDEL', KEYS[1], c)
  local ok, info = pcall(cjson.decode, j)
  if ok and type(info) == 'table' and type(info.user) == 'string' then
    if redis.call('HINCRBY', KEYS[3], info.user, -1) <= 0 then
      redis.call('HDEL', KEYS[3], info.user)
    end
  end
  return 1
end
local function prune(now)
  for _, c in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)) do drop(c) end
end
";

/// ARGV: expiry, key TTL, then (client, user, json) per entry.
const ADD: &str = r"
for i = 3, #ARGV, 3 do
  if redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 2]) == 1 then
    redis.call('HINCRBY', KEYS[3], ARGV[i + 1], 1)
  end
  redis.call('ZADD', KEYS[2], ARGV[1], ARGV[i])
end
for k = 1, 3 do redis.call('EXPIRE', KEYS[k], ARGV[2]) end
return 1
";

/// ARGV: client ids.
const REMOVE: &str = r"
for i = 1, #ARGV do drop(ARGV[i]) end
return 1
";

/// ARGV: now. Returns {clients, users}.
const STATS: &str = r"
prune(ARGV[1])
return {redis.call('HLEN', KEYS[1]), redis.call('HLEN', KEYS[3])}
";

/// ARGV: now, max. Returns {clients, entries} (no entries above max).
const GET: &str = r"
prune(ARGV[1])
local n = redis.call('HLEN', KEYS[1])
if n > tonumber(ARGV[2]) then return {n, {}} end
return {n, redis.call('HGETALL', KEYS[1])}
";

/// One room's script invocation with its three keys.
fn keyed<'a>(script: &'a redis::Script, room: &str) -> redis::ScriptInvocation<'a> {
    let mut inv = script.key(hash_key(room));
    inv.key(exp_key(room)).key(users_key(room));
    inv
}

fn now_secs() -> u64 {
    crate::auth::now_secs()
}

/// One entry as the scripts take it: client id, user, client info JSON.
type Entry = (String, String, String);
/// One script call: a room and some of its entries.
type Call = (String, Vec<Entry>);

/// This node's entries, re-added on every refresh (room -> its members here).
type Local = Arc<Mutex<HashMap<String, RoomMembers>>>;

/// The scripts, each but `ADD` with the shared `DROP` prelude, and the sources of those the
/// refresh pipelines send as plain `EVAL` (a pipelined `EVALSHA` needs the script loaded on
/// the shard first, and `SCRIPT LOAD` has no key to route it by on a cluster).
struct Scripts {
    add: redis::Script,
    remove: redis::Script,
    stats: redis::Script,
    get: redis::Script,
    remove_src: String,
}

impl Scripts {
    fn new() -> Scripts {
        let with_drop = |body: &str| format!("{DROP}\n{body}");
        Scripts {
            add: redis::Script::new(ADD),
            remove: redis::Script::new(&with_drop(REMOVE)),
            stats: redis::Script::new(&with_drop(STATS)),
            get: redis::Script::new(&with_drop(GET)),
            remove_src: with_drop(REMOVE),
        }
    }
}

pub struct RedisPresence {
    conn: RedisConn,
    /// How long an entry lives without a refresh (`presence_ttl_secs`).
    ttl: Duration,
    local: Local,
    scripts: Arc<Scripts>,
    stop: CancellationToken,
    /// The refresh task, so the drain waits for it.
    tasks: TaskTracker,
}

impl RedisPresence {
    /// Starts presence over `conn`, with its refresh task; entries live `ttl` unrefreshed.
    pub fn start(conn: RedisConn, ttl: Duration) -> Arc<RedisPresence> {
        let p = Arc::new(RedisPresence {
            conn,
            ttl,
            local: Arc::new(Mutex::new(HashMap::new())),
            scripts: Arc::new(Scripts::new()),
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
        });
        p.tasks.spawn(refresh(
            p.conn.clone(),
            p.local.clone(),
            p.scripts.clone(),
            p.stop.clone(),
            p.ttl,
        ));
        p
    }

    fn local_stats(&self, room: &str) -> (u32, u32) {
        self.local
            .lock()
            .expect("presence lock")
            .get(room)
            .map_or((0, 0), RoomMembers::stats)
    }
}

/// `ADD`'s arguments for (client, user, json) entries of one room, living `ttl`.
fn add_argv(ttl: Duration, entries: &[Entry]) -> Vec<String> {
    let mut argv = vec![
        (now_secs() + ttl.as_secs()).to_string(),
        (ttl.as_secs() + 5).to_string(),
    ];
    for (client, user, json) in entries {
        argv.extend([client.clone(), user.clone(), json.clone()]);
    }
    argv
}

/// `REMOVE`'s arguments: the entries' client ids.
fn remove_argv(entries: &[Entry]) -> Vec<String> {
    entries
        .iter()
        .map(|(client, _, _)| client.clone())
        .collect()
}

fn entry(info: &ClientInfo) -> Entry {
    let json = serde_json::to_string(info).expect("client info serializes");
    (info.client.clone(), info.user.clone(), json)
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

/// Runs one `EVAL` of `source` per (room, chunk of entries) in pipelines: one per chunk of
/// `REFRESH_CHUNK` entries on a standalone Redis, one per hash slot on a cluster.
async fn pipelined(
    conn: &mut RedisConn,
    source: &str,
    calls: &[Call],
    argv: impl Fn(&[Entry]) -> Vec<String>,
) -> redis::RedisResult<()> {
    let mut start = 0;
    while start < calls.len() {
        let mut pipes: HashMap<Option<Slot>, redis::Pipeline> = HashMap::new();
        let mut entries = 0;
        let mut end = start;
        while end < calls.len() && (entries == 0 || entries + calls[end].1.len() <= REFRESH_CHUNK) {
            let (room, chunk) = &calls[end];
            let slot = conn.is_cluster().then(|| Slot::for_key(hash_key(room)));
            pipes
                .entry(slot)
                .or_insert_with(redis::pipe)
                .cmd("EVAL")
                .arg(source)
                .arg(3)
                .arg(hash_key(room))
                .arg(exp_key(room))
                .arg(users_key(room))
                .arg(argv(chunk))
                .ignore();
            entries += chunk.len();
            end += 1;
        }
        for pipe in pipes.into_values() {
            with_timeout(pipe.query_async::<()>(conn)).await?;
        }
        start = end;
    }
    Ok(())
}

/// This node's entries as script calls: per room, chunks of at most `REFRESH_CHUNK`.
fn calls_of(rooms: impl Iterator<Item = Call>) -> Vec<Call> {
    let mut calls = Vec::new();
    for (room, entries) in rooms {
        for chunk in entries.chunks(REFRESH_CHUNK) {
            calls.push((room.clone(), chunk.to_vec()));
        }
    }
    calls
}

/// Re-adds this node's entries every `ttl / REFRESHES_PER_TTL`.
async fn refresh(
    mut conn: RedisConn,
    local: Local,
    scripts: Arc<Scripts>,
    stop: CancellationToken,
    ttl: Duration,
) {
    let mut tick = interval(ttl / REFRESHES_PER_TTL);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let snapshot: Vec<Call> = local
            .lock()
            .expect("presence lock")
            .iter()
            .map(|(room, m)| (room.clone(), m.clients().values().map(entry).collect()))
            .collect();
        let calls = calls_of(snapshot.into_iter());
        if let Err(e) = pipelined(&mut conn, ADD, &calls, |e| add_argv(ttl, e)).await {
            tracing::warn!(error = %e, "presence refresh failed");
            continue;
        }
        // An entry removed while its refresh was in flight may have been re-added after
        // its removal: remove it again, or it would count until its TTL.
        let gone: Vec<Call> = {
            let local = local.lock().expect("presence lock");
            calls
                .into_iter()
                .filter_map(|(room, entries)| {
                    let here = local.get(&room);
                    let gone: Vec<_> = entries
                        .into_iter()
                        .filter(|(c, _, _)| here.is_none_or(|m| !m.clients().contains_key(c)))
                        .collect();
                    (!gone.is_empty()).then_some((room, gone))
                })
                .collect()
        };
        if let Err(e) = pipelined(&mut conn, &scripts.remove_src, &gone, remove_argv).await {
            tracing::warn!(error = %e, "presence removal after refresh failed");
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
        let rooms = std::mem::take(&mut *self.local.lock().expect("presence lock"));
        let calls = calls_of(
            rooms
                .into_iter()
                .map(|(room, m)| (room, m.clients().values().map(entry).collect())),
        );
        let mut conn = self.conn.clone();
        if let Err(e) = pipelined(&mut conn, &self.scripts.remove_src, &calls, remove_argv).await {
            tracing::warn!(error = %e, "presence removal failed; entries expire on their own");
        }
    }

    async fn add(&self, room: &str, info: ClientInfo) {
        let e = entry(&info);
        self.local
            .lock()
            .expect("presence lock")
            .entry(room.to_owned())
            .or_default()
            .insert(info);
        let mut conn = self.conn.clone();
        let mut inv = keyed(&self.scripts.add, room);
        for a in add_argv(self.ttl, std::slice::from_ref(&e)) {
            inv.arg(a);
        }
        if let Err(e) = with_timeout(inv.invoke_async::<i64>(&mut conn)).await {
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
        let mut inv = keyed(&self.scripts.remove, room);
        inv.arg(client);
        if let Err(e) = with_timeout(inv.invoke_async::<i64>(&mut conn)).await {
            // The entry expires on its own.
            tracing::warn!(error = %e, "presence remove failed");
        }
    }

    async fn stats(&self, room: &str) -> (u32, u32) {
        let mut conn = self.conn.clone();
        let mut inv = keyed(&self.scripts.stats, room);
        inv.arg(now_secs());
        match with_timeout(inv.invoke_async::<(u32, u32)>(&mut conn)).await {
            Ok(counts) => counts,
            Err(e) => {
                tracing::warn!(error = %e, "presence stats failed; answering with this node's");
                self.local_stats(room)
            }
        }
    }

    async fn get(&self, room: &str, max: usize) -> Members {
        let mut conn = self.conn.clone();
        let mut inv = keyed(&self.scripts.get, room);
        inv.arg(now_secs()).arg(max);
        match with_timeout(inv.invoke_async::<(u32, HashMap<String, String>)>(&mut conn)).await {
            Ok((clients, _)) if clients as usize > max => Members::TooMany { clients },
            Ok((_, entries)) => Members::Listed(
                entries
                    .into_iter()
                    .filter_map(|(client, json)| match serde_json::from_str(&json) {
                        Ok(info) => Some((client, info)),
                        Err(e) => {
                            tracing::warn!(%room, error = %e, "bad presence entry ignored");
                            None
                        }
                    })
                    .collect(),
            ),
            Err(e) => {
                tracing::warn!(error = %e, "presence read failed; answering with this node's");
                match self.local.lock().expect("presence lock").get(room) {
                    Some(m) => m.members(max),
                    None => Members::Listed(HashMap::new()),
                }
            }
        }
    }
}
