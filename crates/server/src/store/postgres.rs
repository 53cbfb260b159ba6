//! PostgreSQL store: the shared durable message store of a cluster. Every node appends
//! through its own writer task (group commit) and reads through a small pool.
//!
//! # How offsets stay unique and gap-free across nodes
//!
//! A room's top offset lives in one row of `roomcast_rooms`. A node's writer takes every
//! queued append into one transaction and, for each room in it (in room-name order, so two
//! writers never lock rooms in opposite orders and cannot deadlock):
//!
//! 1. `INSERT .. ON CONFLICT (room) DO UPDATE SET top = roomcast_rooms.top RETURNING top`
//!    creates the row if needed and takes its **row lock**, held until the transaction ends;
//! 2. assigns `top + 1 ..= top + n` to the room's `n` new messages, inserts them and
//!    writes the new `top` into the row;
//! 3. commits.
//!
//! A writer on another node that wants the same room blocks on step 1 until this
//! transaction ends, then (READ COMMITTED re-reads the locked row) sees the committed
//! `top`: an offset is never handed out twice. If the transaction aborts, the `top` update
//! aborts with the messages, so the next writer reuses those offsets: no permanent hole.
//! `(room, seq)` is also the primary key of `roomcast_messages`, so even a bug here could
//! not store two messages under one offset.
//!
//! Committed messages are handed to this node's dispatcher in commit order before `append`
//! resolves. Two nodes' commits to one room reach the bus in any order; the receiving side
//! reorders (see `bus/redis.rs`): every offset it has not seen is in the store already,
//! because publishing happens only after commit.
//!
//! One ambiguity remains, as with any client/server database: if the connection drops
//! during `COMMIT`, the append reports an error though it may have committed. The message
//! is then in history but was not published live; subscribers get it through gap fetches or
//! recovery, never out of order.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use serde_json::value::RawValue;
use tokio_postgres::{Client, IsolationLevel, NoTls};

use super::retention::{Limits, Policy, SWEEP_ROOMS, TRIM_PER_ROOM};
use super::writer::{big, Backend, Batch, Committer, GroupStore};
use super::{Appended, Committed, Message, NewMessage, Position, Range, StoreError};

/// Read connections in the pool.
const READERS: usize = 4;
/// Any single statement longer than this is a failure, not a wait.
const STATEMENT_TIMEOUT_MS: u32 = 10_000;

/// Version 1 of the schema (later versions: `postgres_chat::MIGRATIONS`).
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS roomcast_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS roomcast_rooms (room TEXT PRIMARY KEY, epoch TEXT NOT NULL, top BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS roomcast_messages (
    room TEXT NOT NULL, seq BIGINT NOT NULL, uid TEXT NOT NULL,
    sender_user TEXT NOT NULL, sender_client TEXT NOT NULL, data TEXT NOT NULL, info TEXT,
    ts_ms BIGINT NOT NULL,
    PRIMARY KEY (room, seq));
CREATE TABLE IF NOT EXISTS roomcast_idempotency (
    room TEXT NOT NULL, key TEXT NOT NULL, seq BIGINT NOT NULL, created_ms BIGINT NOT NULL,
    PRIMARY KEY (room, key));
";

/// Advisory lock key serializing schema creation between nodes starting together.
const SCHEMA_LOCK: i64 = 0x726f_6f6d_6361_7374; // "roomcast"

/// The PostgreSQL store.
pub type PostgresStore = GroupStore<PostgresReaders>;

/// The read side: a small connection pool.
pub struct PostgresReaders {
    /// Read connections.
    readers: Pool,
    /// Epoch of rooms that have no row yet (the database's own, made when it was set up).
    base_epoch: String,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    if let Some(m) = crate::metrics::get() {
        m.backend_error("postgres");
    }
    StoreError::Backend(e.to_string())
}

fn parse_config(url: &str) -> Result<tokio_postgres::Config, StoreError> {
    let mut config: tokio_postgres::Config = url
        .parse()
        .map_err(|e| StoreError::Backend(format!("bad PostgreSQL URL: {e}")))?;
    config.connect_timeout(Duration::from_secs(5));
    config.options(format!("-c statement_timeout={STATEMENT_TIMEOUT_MS}"));
    config.application_name("roomcast");
    Ok(config)
}

/// Opens one connection and spawns its driver.
async fn connect(config: &tokio_postgres::Config) -> Result<Client, StoreError> {
    let (client, conn) = config.connect(NoTls).await.map_err(backend)?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::warn!(error = %e, "postgres connection ended");
        }
    });
    Ok(client)
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user:pass@host:port/db`), creates the schema if
    /// needed and starts the writer. Committed messages are sent to the returned receiver,
    /// in commit order.
    pub async fn connect(
        url: &str,
        idempotency_ttl: Duration,
    ) -> Result<(PostgresStore, Committed), StoreError> {
        let config = parse_config(url)?;
        let mut client = connect(&config).await?;
        let tx = client.transaction().await.map_err(backend)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
            .await
            .map_err(backend)?;
        tx.batch_execute(SCHEMA).await.map_err(backend)?;
        super::postgres_chat::migrate(&tx).await?;
        let fresh = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
        tx.execute(
            "INSERT INTO roomcast_meta (key, value) VALUES ('epoch', $1) ON CONFLICT (key) DO NOTHING",
            &[&fresh],
        )
        .await
        .map_err(backend)?;
        let base_epoch: String = tx
            .query_one("SELECT value FROM roomcast_meta WHERE key = 'epoch'", &[])
            .await
            .map_err(backend)?
            .get(0);
        tx.commit().await.map_err(backend)?;

        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let readers = Pool::builder(manager)
            .max_size(READERS)
            .wait_timeout(Some(Duration::from_secs(10)))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(backend)?;

        let committer = PostgresCommitter {
            config,
            client: Some(client),
            base_epoch: base_epoch.clone(),
        };
        let readers = PostgresReaders {
            readers,
            base_epoch,
        };
        Ok(GroupStore::start(readers, committer, idempotency_ttl))
    }
}

impl PostgresReaders {
    pub(super) async fn reader(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.readers.get().await.map_err(backend)
    }
}

fn message_from_row(room: &Arc<str>, r: &tokio_postgres::Row) -> Result<Message, StoreError> {
    let data: String = r.try_get(4).map_err(backend)?;
    let info: Option<String> = r.try_get(5).map_err(backend)?;
    Ok(Message {
        room: room.clone(),
        offset: r.try_get::<_, i64>(0).map_err(backend)? as u64,
        uid: r.try_get(1).map_err(backend)?,
        user: r.try_get(2).map_err(backend)?,
        client: r.try_get(3).map_err(backend)?,
        data: RawValue::from_string(data).map_err(backend)?,
        info: info
            .map(|i| serde_json::from_str(&i))
            .transpose()
            .map_err(backend)?,
        ts_ms: r.try_get(6).map_err(backend)?,
        tombstone: r
            .try_get::<_, bool>(7)
            .map_err(backend)?
            .then_some(r.try_get::<_, i64>(0).map_err(backend)? as u64),
    })
}

/// The columns `message_from_row` reads, in order.
const COLUMNS: &str = "seq, uid, sender_user, sender_client, data, info, ts_ms, deleted";

/// Deletes, for each room, the oldest rows its limits trim given its top (at most
/// `TRIM_PER_ROOM` each: a range of the primary key from the room's first row), in one
/// statement.
async fn trim(
    client: &impl tokio_postgres::GenericClient,
    rooms: &[(String, Limits, u64)],
    now_ms: i64,
) -> Result<u64, StoreError> {
    if rooms.is_empty() {
        return Ok(0);
    }
    let names: Vec<&str> = rooms.iter().map(|(r, _, _)| r.as_str()).collect();
    let floors: Vec<i64> = rooms
        .iter()
        .map(|(_, l, top)| big(l.size_floor(*top)))
        .collect();
    let ts_floors: Vec<i64> = rooms.iter().map(|(_, l, _)| l.ts_floor(now_ms)).collect();
    client
        .execute(
            "DELETE FROM roomcast_messages m
             USING UNNEST($1::text[], $2::bigint[], $3::bigint[]) AS u(room, floor, ts_floor)
             WHERE m.room = u.room
               AND m.seq < (SELECT MIN(x.seq) FROM roomcast_messages x WHERE x.room = u.room) + $4
               AND (m.seq <= u.floor OR m.ts_ms < u.ts_floor)",
            &[&names, &floors, &ts_floors, &TRIM_PER_ROOM],
        )
        .await
        .map_err(backend)
}

async fn position_of(
    client: &impl tokio_postgres::GenericClient,
    room: &str,
    base_epoch: &str,
) -> Result<Position, StoreError> {
    let row = client
        .query_opt(
            "SELECT top, epoch FROM roomcast_rooms WHERE room = $1",
            &[&room],
        )
        .await
        .map_err(backend)?;
    Ok(match row {
        Some(r) => Position {
            offset: r.get::<_, i64>(0) as u64,
            epoch: r.get(1),
        },
        None => Position {
            offset: 0,
            epoch: base_epoch.to_owned(),
        },
    })
}

#[async_trait]
impl Backend for PostgresReaders {
    type Committer = PostgresCommitter;

    async fn range(
        &self,
        room: &str,
        range: Range,
        limits: Limits,
    ) -> Result<(Vec<Message>, Position), StoreError> {
        let mut conn = self.reader().await?;
        // One snapshot, so the position and the rows agree.
        let tx = conn
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(backend)?;
        let pos = position_of(&*tx, room, &self.base_epoch).await?;
        let limit = big(range.limit as u64);
        // Retention: rows at or below `floor`, or older than `ts_floor`, are trimmed
        // (maybe not deleted yet) and never read.
        let floor = big(limits.size_floor(pos.offset));
        let ts_floor = limits.ts_floor(super::writer::now_ms());
        let (cols, kept) = (COLUMNS, "seq > $4 AND ts_ms >= $5");
        let (sql, bound) = match (range.reverse, range.since) {
            (false, since) => (
                format!("SELECT {cols} FROM roomcast_messages WHERE room = $1 AND seq > $2 AND {kept} ORDER BY seq ASC LIMIT $3"),
                big(since.unwrap_or(0)),
            ),
            (true, Some(before)) => (
                format!("SELECT {cols} FROM roomcast_messages WHERE room = $1 AND seq < $2 AND {kept} ORDER BY seq DESC LIMIT $3"),
                big(before),
            ),
            (true, None) => (
                format!("SELECT {cols} FROM roomcast_messages WHERE room = $1 AND seq <= $2 AND {kept} ORDER BY seq DESC LIMIT $3"),
                i64::MAX,
            ),
        };
        let rows = tx
            .query(&sql, &[&room, &bound, &limit, &floor, &ts_floor])
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        let room: Arc<str> = room.into();
        let msgs = rows
            .iter()
            .map(|r| message_from_row(&room, r))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((msgs, pos))
    }

    async fn position(&self, room: &str) -> Result<Position, StoreError> {
        let conn = self.reader().await?;
        position_of(&**conn, room, &self.base_epoch).await
    }

    async fn delete(&self, room: &str, offset: u64) -> Result<Option<Message>, StoreError> {
        let conn = self.reader().await?;
        let row = conn
            .query_opt(
                &format!(
                    "UPDATE roomcast_messages SET data = 'null', info = NULL, deleted = true
                     WHERE room = $1 AND seq = $2 RETURNING {COLUMNS}"
                ),
                &[&room, &big(offset)],
            )
            .await
            .map_err(backend)?;
        let room: Arc<str> = room.into();
        row.map(|r| message_from_row(&room, &r)).transpose()
    }

    async fn clear_some(&self, room: &str, top: u64, limit: i64) -> Result<u64, StoreError> {
        let conn = self.reader().await?;
        conn.execute(
            "DELETE FROM roomcast_messages WHERE room = $1 AND seq <= $2
               AND seq < (SELECT MIN(seq) FROM roomcast_messages WHERE room = $1) + $3",
            &[&room, &big(top), &limit],
        )
        .await
        .map_err(backend)
    }

    async fn writable(&self) -> Result<(), StoreError> {
        let conn = self.reader().await?;
        let row = conn
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .map_err(backend)?;
        if row.get::<_, bool>(0) {
            return Err(StoreError::Backend(
                "the database is a read-only replica (in recovery)".into(),
            ));
        }
        Ok(())
    }

    async fn close_readers(&self) {
        self.readers.close();
    }
}

/// The writer's half: its own connection, reconnected when it broke.
pub struct PostgresCommitter {
    config: tokio_postgres::Config,
    /// The writer's own connection; `None` after it broke, until reconnected.
    client: Option<Client>,
    base_epoch: String,
}

impl PostgresCommitter {
    /// The writer's connection, reconnecting once if it broke.
    async fn client(&mut self) -> Result<&mut Client, StoreError> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = None;
            self.client = Some(connect(&self.config).await?);
        }
        Ok(self.client.as_mut().expect("connected above"))
    }
}

#[async_trait]
impl Committer for PostgresCommitter {
    /// PostgreSQL text cannot hold NUL; such an append fails alone instead of failing the
    /// whole batch (a channel name is client input).
    fn refuse(&self, m: &NewMessage) -> Option<StoreError> {
        (!storable(m)).then(|| StoreError::Backend("a NUL character cannot be stored".into()))
    }

    async fn commit(&mut self, batch: Batch) -> (Batch, Result<Vec<Appended>, StoreError>) {
        let base_epoch = self.base_epoch.clone();
        let result = match self.client().await {
            Ok(client) => write_batch(client, &batch, &base_epoch).await,
            Err(e) => Err(e),
        };
        if result.is_err() && self.client.as_ref().is_some_and(Client::is_closed) {
            self.client = None;
        }
        (batch, result)
    }

    async fn cleanup(&mut self, cutoff_ms: i64) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute(
                "DELETE FROM roomcast_idempotency WHERE created_ms < $1",
                &[&cutoff_ms],
            )
            .await
            .map(drop)
            .map_err(backend)
    }

    async fn sweep(
        &mut self,
        after: String,
        policy: Policy,
        now_ms: i64,
    ) -> Result<Option<String>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT room, top FROM roomcast_rooms WHERE room > $1 COLLATE \"C\"
                 ORDER BY room COLLATE \"C\" LIMIT $2",
                &[&after, &(SWEEP_ROOMS as i64)],
            )
            .await
            .map_err(backend)?;
        let visited: Vec<(String, u64)> = rows
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1) as u64))
            .collect();
        let due: Vec<(String, Limits, u64)> = visited
            .iter()
            .map(|(room, top)| (room.clone(), policy(room), *top))
            .filter(|(_, l, _)| !l.keeps_all())
            .collect();
        trim(&*client, &due, now_ms).await?;
        Ok(match visited.last() {
            Some((room, _)) if visited.len() == SWEEP_ROOMS => Some(room.clone()),
            _ => None,
        })
    }
}

/// Whether PostgreSQL can store the append's text columns (JSON payloads and infos are
/// serialized with NUL escaped, so only the raw strings matter).
fn storable(m: &NewMessage) -> bool {
    let ok = |s: &str| !s.contains('\0');
    ok(&m.room)
        && ok(&m.user)
        && ok(&m.client)
        && ok(m.data.get())
        && m.idempotency_key.as_deref().is_none_or(ok)
}

/// One group-commit transaction. Returns, for every entry in order, its offset and
/// epoch, and whether it was a duplicate.
async fn write_batch(
    client: &mut Client,
    batch: &Batch,
    base_epoch: &str,
) -> Result<Vec<Appended>, StoreError> {
    let now = batch.now_ms;
    let cutoff = batch.key_cutoff_ms;
    let entries = &batch.entries;
    // Entries of each room, in arrival order; rooms in name order (the lock order).
    let mut by_room: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, e) in entries.iter().enumerate() {
        by_room.entry(e.msg.room.as_str()).or_default().push(i);
    }
    let tx = client.transaction().await.map_err(backend)?;
    let mut results: Vec<Option<Appended>> = (0..entries.len()).map(|_| None).collect();
    let mut tops: Vec<(String, i64)> = Vec::new();
    for (room, idxs) in &by_room {
        // Step 1: create-or-lock the room's row (held until commit).
        let row = tx
            .query_one(
                "INSERT INTO roomcast_rooms (room, epoch, top) VALUES ($1, $2, 0)
                 ON CONFLICT (room) DO UPDATE SET top = roomcast_rooms.top
                 RETURNING top, epoch",
                &[room, &base_epoch],
            )
            .await
            .map_err(backend)?;
        let mut top = row.get::<_, i64>(0) as u64;
        let epoch: String = row.get(1);
        // Keys already used in this batch, so a retry queued behind its original is one
        // message too.
        let mut batch_keys: HashMap<&str, u64> = HashMap::new();
        for &i in idxs {
            let m = &entries[i].msg;
            let duplicate = |offset| Appended {
                offset,
                epoch: epoch.clone(),
                duplicate: true,
            };
            if let Some(key) = m.idempotency_key.as_deref() {
                if let Some(&offset) = batch_keys.get(key) {
                    results[i] = Some(duplicate(offset));
                    continue;
                }
                // The room row is locked, so no other node can insert this key meanwhile.
                let seen = tx
                    .query_opt(
                        "SELECT seq FROM roomcast_idempotency WHERE room = $1 AND key = $2 AND created_ms >= $3",
                        &[room, &key, &cutoff],
                    )
                    .await
                    .map_err(backend)?;
                if let Some(r) = seen {
                    results[i] = Some(duplicate(r.get::<_, i64>(0) as u64));
                    continue;
                }
                batch_keys.insert(key, top + 1);
            }
            top += 1;
            results[i] = Some(Appended {
                offset: top,
                epoch: epoch.clone(),
                duplicate: false,
            });
        }
        tops.push((room.to_string(), big(top)));
    }

    // Step 2: insert the new messages (one statement) and move the tops (one statement).
    let (mut rooms, mut seqs, mut uids, mut users, mut clients, mut datas, mut infos) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    let (mut key_rooms, mut keys, mut key_seqs) = (Vec::new(), Vec::new(), Vec::new());
    for (e, r) in entries.iter().zip(&results) {
        let r = r.as_ref().expect("every entry decided");
        if r.duplicate {
            continue;
        }
        let m = &e.msg;
        rooms.push(m.room.as_str());
        seqs.push(big(r.offset));
        uids.push(e.uid.as_str());
        users.push(m.user.as_str());
        clients.push(m.client.as_str());
        datas.push(m.data.get());
        infos.push(e.info_json.as_deref());
        if let Some(key) = &m.idempotency_key {
            key_rooms.push(m.room.as_str());
            keys.push(key.as_str());
            key_seqs.push(big(r.offset));
        }
    }
    if !rooms.is_empty() {
        tx.execute(
            "INSERT INTO roomcast_messages (room, seq, uid, sender_user, sender_client, data, info, ts_ms)
             SELECT u.*, $8 FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[]) AS u",
            &[&rooms, &seqs, &uids, &users, &clients, &datas, &infos, &now],
        )
        .await
        .map_err(backend)?;
        let top_of: HashMap<&str, i64> = tops.iter().map(|(r, t)| (r.as_str(), *t)).collect();
        let trims: Vec<(String, Limits, u64)> = batch
            .trims
            .iter()
            .filter_map(|(room, limits)| {
                let top = *top_of.get(room.as_str())?;
                Some((room.clone(), *limits, top as u64))
            })
            .collect();
        let (top_rooms, top_values): (Vec<String>, Vec<i64>) = tops.into_iter().unzip();
        tx.execute(
            "UPDATE roomcast_rooms r SET top = u.top FROM UNNEST($1::text[], $2::bigint[]) AS u(room, top) WHERE r.room = u.room",
            &[&top_rooms, &top_values],
        )
        .await
        .map_err(backend)?;
        trim(&tx, &trims, now).await?;
    }
    if !keys.is_empty() {
        tx.execute(
            "INSERT INTO roomcast_idempotency (room, key, seq, created_ms)
             SELECT u.room, u.key, u.seq, $4 FROM UNNEST($1::text[], $2::text[], $3::bigint[]) AS u(room, key, seq)
             ON CONFLICT (room, key) DO UPDATE SET seq = excluded.seq, created_ms = excluded.created_ms",
            &[&key_rooms, &keys, &key_seqs, &now],
        )
        .await
        .map_err(backend)?;
    }
    tx.commit().await.map_err(backend)?;
    Ok(results
        .into_iter()
        .map(|r| r.expect("every entry decided"))
        .collect())
}
