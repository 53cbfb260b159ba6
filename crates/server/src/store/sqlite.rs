//! SQLite store: one writer thread that group-commits, and a small pool of readers.
//!
//! The database runs in WAL mode with `synchronous=FULL`, so a commit is durable when it
//! returns. Appends queue to the writer thread, which takes everything queued (up to
//! `MAX_BATCH`) into one transaction: one fsync for many messages. Offsets are assigned
//! inside that transaction from the `rooms` row, which is also updated there, so offset
//! assignment and the durable write are one atomic step; the writer is the only writer,
//! so no two appends can race for an offset.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};

use super::{Appended, Committed, Message, NewMessage, Position, Range, Store, StoreError};

/// Most appends one transaction takes.
const MAX_BATCH: usize = 1024;
/// Appends waiting for the writer; callers wait (backpressure) beyond it.
const QUEUE: usize = 8192;
/// Committed batches waiting for the dispatcher.
const COMMITTED_QUEUE: usize = 1024;
/// Read connections kept open.
const READERS: usize = 4;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rooms (room TEXT PRIMARY KEY, epoch TEXT NOT NULL, top INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS messages (
    room TEXT NOT NULL, offset INTEGER NOT NULL, uid TEXT NOT NULL,
    user TEXT NOT NULL, client TEXT NOT NULL, data TEXT NOT NULL, info TEXT,
    ts_ms INTEGER NOT NULL,
    PRIMARY KEY (room, offset)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS idempotency (
    room TEXT NOT NULL, key TEXT NOT NULL, offset INTEGER NOT NULL, created_ms INTEGER NOT NULL,
    PRIMARY KEY (room, key)) WITHOUT ROWID;
";

enum Request {
    Append(NewMessage, oneshot::Sender<Result<Appended, StoreError>>),
    /// Everything queued before it is committed when it is answered.
    Close(oneshot::Sender<()>),
}

pub struct SqliteStore {
    /// Queue to the writer thread (bounded: appends wait when the writer is behind).
    writer: mpsc::Sender<Request>,
    /// Open read connections; a read takes one or opens a new one.
    readers: Arc<Mutex<Vec<Connection>>>,
    path: Arc<Path>,
    /// Epoch of rooms that have no row yet (the store's own, made when it was created).
    base_epoch: String,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn open(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`. Committed messages are sent to
    /// the returned receiver, in commit order.
    pub fn open(
        path: &Path,
        idempotency_ttl: Duration,
    ) -> Result<(SqliteStore, Committed), StoreError> {
        let conn = open(path).map_err(backend)?;
        conn.execute_batch(SCHEMA).map_err(backend)?;
        let base_epoch: String = match conn
            .query_row("SELECT value FROM meta WHERE key = 'epoch'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(backend)?
        {
            Some(e) => e,
            None => {
                let e = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
                conn.execute("INSERT INTO meta (key, value) VALUES ('epoch', ?1)", [&e])
                    .map_err(backend)?;
                e
            }
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        let (committed_tx, committed_rx) = mpsc::channel(COMMITTED_QUEUE);
        let writer = Writer {
            conn,
            base_epoch: base_epoch.clone(),
            tops: HashMap::new(),
            committed: committed_tx,
            idempotency_ttl,
        };
        std::thread::Builder::new()
            .name("roomcast-sqlite-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(backend)?;
        let store = SqliteStore {
            writer: tx,
            readers: Arc::new(Mutex::new(Vec::new())),
            path: path.into(),
            base_epoch,
        };
        Ok((store, committed_rx))
    }

    /// Runs `f` on a read connection in the blocking pool.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let readers = self.readers.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let pooled = readers.lock().expect("reader pool lock").pop();
            let conn = match pooled {
                Some(c) => c,
                None => open(&path).map_err(backend)?,
            };
            let out = f(&conn).map_err(backend);
            let mut pool = readers.lock().expect("reader pool lock");
            if pool.len() < READERS {
                pool.push(conn);
            }
            out
        })
        .await
        .map_err(backend)?
    }
}

fn position_of(conn: &Connection, room: &str, base_epoch: &str) -> rusqlite::Result<Position> {
    let row: Option<(u64, String)> = conn
        .query_row(
            "SELECT top, epoch FROM rooms WHERE room = ?1",
            [room],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)),
        )
        .optional()?;
    Ok(match row {
        Some((offset, epoch)) => Position { offset, epoch },
        None => Position {
            offset: 0,
            epoch: base_epoch.to_owned(),
        },
    })
}

fn message_from_row(room: &Arc<str>, r: &rusqlite::Row<'_>) -> rusqlite::Result<Message> {
    let data: String = r.get(4)?;
    let info: Option<String> = r.get(5)?;
    let bad = |e: serde_json::Error| {
        rusqlite::Error::FromSqlConversionFailure(4, rusqlite::types::Type::Text, Box::new(e))
    };
    Ok(Message {
        room: room.clone(),
        offset: r.get::<_, i64>(0)? as u64,
        uid: r.get(1)?,
        user: r.get(2)?,
        client: r.get(3)?,
        data: RawValue::from_string(data).map_err(bad)?,
        info: info
            .map(|i| serde_json::from_str(&i))
            .transpose()
            .map_err(bad)?,
        ts_ms: r.get(6)?,
    })
}

#[async_trait]
impl Store for SqliteStore {
    async fn append(&self, msg: NewMessage) -> Result<Appended, StoreError> {
        let mut results = super::queue_appends(&self.writer, vec![msg], Request::Append).await;
        results.pop().unwrap_or(Err(StoreError::Closed))
    }

    async fn append_batch(&self, msgs: Vec<NewMessage>) -> Vec<Result<Appended, StoreError>> {
        // Queued together, committed together.
        super::queue_appends(&self.writer, msgs, Request::Append).await
    }

    async fn range(
        &self,
        room: &str,
        range: Range,
    ) -> Result<(Vec<Message>, Position), StoreError> {
        let room: Arc<str> = room.into();
        let base = self.base_epoch.clone();
        self.read(move |conn| {
            // One transaction, so the position and the rows agree.
            let tx = conn.unchecked_transaction()?;
            let pos = position_of(&tx, &room, &base)?;
            let limit = range.limit as i64;
            let cols = "offset, uid, user, client, data, info, ts_ms";
            let (sql, bound) = match (range.reverse, range.since) {
                (false, since) => (format!("SELECT {cols} FROM messages WHERE room = ?1 AND offset > ?2 ORDER BY offset ASC LIMIT ?3"), since.unwrap_or(0) as i64),
                (true, Some(before)) => (format!("SELECT {cols} FROM messages WHERE room = ?1 AND offset < ?2 ORDER BY offset DESC LIMIT ?3"), before as i64),
                (true, None) => (format!("SELECT {cols} FROM messages WHERE room = ?1 AND offset <= ?2 ORDER BY offset DESC LIMIT ?3"), i64::MAX),
            };
            let mut stmt = tx.prepare_cached(&sql)?;
            let rows = stmt.query_map(params![&*room, bound, limit], |r| message_from_row(&room, r))?;
            let msgs = rows.collect::<rusqlite::Result<Vec<_>>>()?;
            drop(stmt);
            tx.finish()?;
            Ok((msgs, pos))
        })
        .await
    }

    async fn position(&self, room: &str) -> Result<Position, StoreError> {
        let room = room.to_owned();
        let base = self.base_epoch.clone();
        self.read(move |conn| position_of(conn, &room, &base)).await
    }

    async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.writer.send(Request::Close(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// The writer thread's state.
struct Writer {
    conn: Connection,
    base_epoch: String,
    /// Cached `(top, epoch)` of rooms written since start; cleared if a commit fails, so
    /// it never runs ahead of the database.
    tops: HashMap<String, (u64, String)>,
    /// Where committed messages go, in commit order (bounded: the writer waits for the
    /// dispatcher rather than growing memory).
    committed: mpsc::Sender<Vec<Arc<Message>>>,
    idempotency_ttl: Duration,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        let mut last_cleanup = Instant::now();
        let mut batch = Vec::with_capacity(64);
        while let Some(first) = rx.blocking_recv() {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            let mut closing = None;
            let mut appends = Vec::with_capacity(batch.len());
            for req in batch.drain(..) {
                match req {
                    Request::Append(m, reply) => appends.push((m, reply)),
                    Request::Close(reply) => closing = Some(reply),
                }
            }
            if !appends.is_empty() {
                self.commit(appends);
            }
            if last_cleanup.elapsed() > Duration::from_secs(30) {
                last_cleanup = Instant::now();
                let cutoff = now_ms() - self.idempotency_ttl.as_millis() as i64;
                if let Err(e) = self
                    .conn
                    .execute("DELETE FROM idempotency WHERE created_ms < ?1", [cutoff])
                {
                    tracing::warn!(error = %e, "idempotency cleanup failed");
                }
            }
            if let Some(reply) = closing {
                let _ = reply.send(());
                break;
            }
        }
        tracing::debug!("sqlite writer stopped");
    }

    fn commit(
        &mut self,
        appends: Vec<(NewMessage, oneshot::Sender<Result<Appended, StoreError>>)>,
    ) {
        let now = now_ms();
        let cutoff = now - self.idempotency_ttl.as_millis() as i64;
        let mut results = Vec::with_capacity(appends.len());
        let mut fresh = Vec::new();
        let outcome = (|| -> rusqlite::Result<()> {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            for (m, _) in &appends {
                if let Some(key) = &m.idempotency_key {
                    let seen: Option<i64> = tx
                        .prepare_cached("SELECT offset FROM idempotency WHERE room = ?1 AND key = ?2 AND created_ms >= ?3")?
                        .query_row(params![m.room, key, cutoff], |r| r.get(0))
                        .optional()?;
                    if let Some(offset) = seen {
                        let offset = offset as u64;
                        let epoch = position_of(&tx, &m.room, &self.base_epoch)?.epoch;
                        results.push(Appended {
                            offset,
                            epoch,
                            duplicate: true,
                        });
                        continue;
                    }
                }
                let (top, epoch) = match self.tops.get(&m.room) {
                    Some(t) => t.clone(),
                    None => {
                        let p = position_of(&tx, &m.room, &self.base_epoch)?;
                        (p.offset, p.epoch)
                    }
                };
                let offset = top + 1;
                let uid = uuid::Uuid::new_v4().to_string();
                let info = m
                    .info
                    .as_ref()
                    .map(|i| serde_json::to_string(i).expect("client info serializes"));
                tx.prepare_cached(
                    "INSERT INTO messages (room, offset, uid, user, client, data, info, ts_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )?
                .execute(params![m.room, offset as i64, uid, m.user, m.client, m.data.get(), info, now])?;
                tx.prepare_cached(
                    "INSERT INTO rooms (room, epoch, top) VALUES (?1, ?2, ?3) ON CONFLICT (room) DO UPDATE SET top = excluded.top",
                )?
                .execute(params![m.room, epoch, offset as i64])?;
                if let Some(key) = &m.idempotency_key {
                    tx.prepare_cached(
                        "INSERT OR REPLACE INTO idempotency (room, key, offset, created_ms) VALUES (?1, ?2, ?3, ?4)",
                    )?
                    .execute(params![m.room, key, offset as i64, now])?;
                }
                self.tops.insert(m.room.clone(), (offset, epoch.clone()));
                results.push(Appended {
                    offset,
                    epoch,
                    duplicate: false,
                });
                fresh.push(Arc::new(Message {
                    room: m.room.as_str().into(),
                    offset,
                    uid,
                    user: m.user.clone(),
                    client: m.client.clone(),
                    data: m.data.clone(),
                    info: m.info.clone(),
                    ts_ms: now,
                }));
            }
            tx.commit()
        })();
        match outcome {
            Ok(()) => {
                // Hand the committed messages to the dispatcher before acknowledging, so
                // they are published in commit order.
                if !fresh.is_empty() && self.committed.blocking_send(fresh).is_err() {
                    tracing::debug!("dispatcher gone; committed messages are in history only");
                }
                for ((_, reply), result) in appends.into_iter().zip(results) {
                    let _ = reply.send(Ok(result));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "store commit failed");
                self.tops.clear();
                for (_, reply) in appends {
                    let _ = reply.send(Err(backend(&e)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance as suite;

    fn fresh() -> (tempfile::TempDir, SqliteStore, Committed) {
        let dir = tempfile::tempdir().unwrap();
        let (s, c) = SqliteStore::open(&dir.path().join("m.db"), Duration::from_secs(300)).unwrap();
        (dir, s, c)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn conformance_offsets() {
        let (_d, s, _c) = fresh();
        suite::offsets_are_contiguous_per_room(&s).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn conformance_ranges() {
        let (_d, s, _c) = fresh();
        suite::ranges(&s).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn conformance_idempotency() {
        let (_d, s, mut c) = fresh();
        suite::idempotent_appends(&s, &mut c).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn conformance_concurrency() {
        let (_d, s, mut c) = fresh();
        let s: Arc<dyn Store> = Arc::new(s);
        // The committed queue holds 1024 batches; 400 appends fit without a reader.
        suite::concurrent_appends_commit_in_order(s, &mut c).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn reopened_store_keeps_offsets_and_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        let epoch = {
            let (s, _c) = SqliteStore::open(&path, Duration::from_secs(300)).unwrap();
            s.append(suite::msg("p", "1", None)).await.unwrap();
            let e = s.append(suite::msg("p", "2", None)).await.unwrap().epoch;
            s.close().await;
            e
        };
        let (s, _c) = SqliteStore::open(&path, Duration::from_secs(300)).unwrap();
        assert_eq!(
            s.position("p").await.unwrap(),
            Position {
                offset: 2,
                epoch: epoch.clone()
            }
        );
        let r = s.append(suite::msg("p", "3", None)).await.unwrap();
        assert_eq!((r.offset, r.epoch), (3, epoch));
    }
}
