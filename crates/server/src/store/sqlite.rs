//! SQLite store: a backend of the shared group-commit writer (`writer.rs`), and a small
//! pool of readers.
//!
//! The database runs in WAL mode with `synchronous=FULL`, so a commit is durable when it
//! returns. The writer hands every batch to [`SqliteCommitter::commit`], which runs it as
//! one transaction on a blocking thread: one fsync for many messages. Offsets are assigned
//! inside that transaction from the `rooms` row, which is also updated there (once per
//! room per batch), so offset assignment and the durable write are one atomic step; the
//! writer is the only writer, so no two appends can race for an offset.
//!
//! Opening checks that the file is whole (`integrity.rs`) and refuses a damaged or
//! vanished store instead of writing into it or starting afresh.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde_json::value::RawValue;

use super::integrity;
use super::retention::{Limits, Policy, SWEEP_ROOMS, TRIM_PER_ROOM};
use super::sqlite_positions::Positions;
use super::writer::{big, Backend, Batch, Committer, GroupStore};
use super::{Appended, Committed, Message, Position, Range, StoreError};

/// Read connections kept open.
const READERS: usize = 4;

/// Version 1 of the schema (later versions: `sqlite_chat::MIGRATIONS`).
pub(super) const SCHEMA: &str = "
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

/// The SQLite store.
pub type SqliteStore = GroupStore<SqliteReaders>;

/// The read side: a pool of connections used on the blocking pool.
pub struct SqliteReaders {
    /// Open read connections; a read takes one or opens a new one.
    pool: Arc<Mutex<Vec<Connection>>>,
    /// At most `READERS` reads run at once, each on a kept connection: past that a read
    /// waits here instead of opening (and closing) a connection of its own, as 1,000
    /// concurrent recoveries otherwise did.
    slots: Arc<tokio::sync::Semaphore>,
    path: Arc<Path>,
    /// Epoch of rooms that have no row yet (the store's own, made when it was created).
    pub(super) base_epoch: String,
    /// Committed room positions (see `sqlite_positions.rs`), shared with the writer.
    positions: Arc<Positions>,
    /// Read-cursor moves, committed in batches (see `sqlite_chat::start_cursor_writer`).
    pub(super) cursors: tokio::sync::mpsc::Sender<super::sqlite_chat::CursorMove>,
}

pub(super) fn backend(e: impl std::fmt::Display) -> StoreError {
    if let Some(m) = crate::metrics::get() {
        m.backend_error("sqlite");
    }
    StoreError::Backend(e.to_string())
}

pub(super) fn open_connection(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    // Plans that do not depend on bound values: without this every `LIMIT ?` (and, with
    // STAT4 compiled in, every range bound) marks the statement to be re-prepared on its
    // next bind, so a cached statement was parsed and planned again on every read
    // (~10% of the server's CPU in a reconnect storm's profile). Every query here is a
    // keyed index lookup whose plan does not change with the values.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    Ok(conn)
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, after checking that an existing
    /// one is whole. Must be called within a Tokio runtime (it starts the writer task).
    /// Committed messages are sent to the returned receiver, in commit order.
    pub fn open(
        path: &Path,
        idempotency_ttl: Duration,
    ) -> Result<(SqliteStore, Committed), StoreError> {
        let existed = integrity::check_before_open(path)?;
        let mut conn = open_connection(path).map_err(backend)?;
        conn.execute_batch(SCHEMA).map_err(backend)?;
        super::sqlite_chat::migrate(&mut conn)?;
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
        if !existed {
            integrity::mark_created(path)?;
        }
        let positions = Arc::new(Positions::default());
        if let Some(all) = all_positions(&conn).map_err(backend)? {
            positions.load(all, &base_epoch);
        }
        let committer = SqliteCommitter {
            state: Some(WriterState {
                positions: positions.clone(),
                conn,
                base_epoch: base_epoch.clone(),
            }),
        };
        let path: Arc<Path> = path.into();
        let readers = SqliteReaders {
            positions,
            pool: Arc::new(Mutex::new(Vec::new())),
            slots: Arc::new(tokio::sync::Semaphore::new(READERS)),
            cursors: super::sqlite_chat::start_cursor_writer(path.clone(), base_epoch.clone()),
            path,
            base_epoch,
        };
        Ok(GroupStore::start(readers, committer, idempotency_ttl))
    }
}

impl SqliteReaders {
    /// Runs `f` on a read connection in the blocking pool.
    pub(super) async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let readers = self.pool.clone();
        let path = self.path.clone();
        let slot = self.slots.clone().acquire_owned().await.map_err(backend)?;
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            let pooled = readers.lock().expect("reader pool lock").pop();
            let conn = match pooled {
                Some(c) => c,
                None => open_connection(&path).map_err(backend)?,
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

/// Every room's position, or none if there are more than `MAX_POSITIONS` (counted first).
fn all_positions(conn: &Connection) -> rusqlite::Result<Option<HashMap<String, Position>>> {
    let n: i64 = conn.query_row("SELECT COUNT(*) FROM rooms", [], |r| r.get(0))?;
    if n as usize >= super::sqlite_positions::MAX_POSITIONS {
        return Ok(None);
    }
    let mut stmt = conn.prepare("SELECT room, top, epoch FROM rooms")?;
    let rows = stmt.query_map([], |r| {
        let pos = Position {
            offset: r.get::<_, i64>(1)? as u64,
            epoch: r.get(2)?,
        };
        Ok((r.get::<_, String>(0)?, pos))
    })?;
    rows.collect::<rusqlite::Result<_>>().map(Some)
}

pub(super) fn position_of(
    conn: &Connection,
    room: &str,
    base_epoch: &str,
) -> rusqlite::Result<Position> {
    let row: Option<(u64, String)> = conn
        .prepare_cached("SELECT top, epoch FROM rooms WHERE room = ?1")?
        .query_row([room], |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)))
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
        tombstone: r.get::<_, bool>(7)?.then_some(r.get::<_, i64>(0)? as u64),
    })
}

/// The columns `message_from_row` reads, in order.
const COLUMNS: &str = "offset, uid, user, client, data, info, ts_ms, deleted";

/// Deletes the oldest rows of `room` that `limits` trims, given its `top` (at most
/// `TRIM_PER_ROOM`: a range of the primary key from the room's first row).
fn trim(
    conn: &Connection,
    room: &str,
    limits: Limits,
    top: u64,
    now_ms: i64,
) -> rusqlite::Result<usize> {
    conn.prepare_cached(
        "DELETE FROM messages WHERE room = ?1
           AND offset < (SELECT MIN(offset) FROM messages WHERE room = ?1) + ?4
           AND (offset <= ?2 OR ts_ms < ?3)",
    )?
    .execute(params![
        room,
        big(limits.size_floor(top)),
        limits.ts_floor(now_ms),
        TRIM_PER_ROOM
    ])
}

#[async_trait]
impl Backend for SqliteReaders {
    type Committer = SqliteCommitter;

    async fn range(
        &self,
        room: &str,
        range: Range,
        limits: Limits,
    ) -> Result<(Vec<Message>, Position), StoreError> {
        let room: Arc<str> = room.into();
        let base = self.base_epoch.clone();
        let now = super::writer::now_ms();
        self.read(move |conn| {
            // One transaction, so the position and the rows agree.
            let tx = conn.unchecked_transaction()?;
            let pos = position_of(&tx, &room, &base)?;
            let limit = big(range.limit as u64);
            // Retention: rows at or below `floor`, or older than `ts_floor`, are trimmed
            // (maybe not deleted yet) and never read.
            let floor = big(limits.size_floor(pos.offset));
            let ts_floor = limits.ts_floor(now);
            let kept = "offset > ?4 AND ts_ms >= ?5";
            let (sql, bound) = match (range.reverse, range.since) {
                (false, since) => (format!("SELECT {COLUMNS} FROM messages WHERE room = ?1 AND offset > ?2 AND {kept} ORDER BY offset ASC LIMIT ?3"), big(since.unwrap_or(0))),
                (true, Some(before)) => (format!("SELECT {COLUMNS} FROM messages WHERE room = ?1 AND offset < ?2 AND {kept} ORDER BY offset DESC LIMIT ?3"), big(before)),
                (true, None) => (format!("SELECT {COLUMNS} FROM messages WHERE room = ?1 AND offset <= ?2 AND {kept} ORDER BY offset DESC LIMIT ?3"), i64::MAX),
            };
            let mut stmt = tx.prepare_cached(&sql)?;
            let rows = stmt.query_map(params![&*room, bound, limit, floor, ts_floor], |r| message_from_row(&room, r))?;
            let msgs = rows.collect::<rusqlite::Result<Vec<_>>>()?;
            drop(stmt);
            tx.finish()?;
            Ok((msgs, pos))
        })
        .await
    }

    async fn position(&self, room: &str) -> Result<Position, StoreError> {
        let version = match self.positions.get(room) {
            Ok(p) => return Ok(p),
            Err(v) => v,
        };
        let owned = room.to_owned();
        let base = self.base_epoch.clone();
        let p = self
            .read(move |conn| position_of(conn, &owned, &base))
            .await?;
        self.positions.fill(room, &p, version);
        Ok(p)
    }

    async fn delete(&self, room: &str, offset: u64) -> Result<Option<Message>, StoreError> {
        let room: Arc<str> = room.into();
        self.read(move |conn| {
            let tx = super::sqlite_chat::write_tx(conn)?;
            tx.prepare_cached(
                "UPDATE messages SET data = 'null', info = NULL, deleted = 1
                 WHERE room = ?1 AND offset = ?2",
            )?
            .execute(params![&*room, big(offset)])?;
            let row = tx
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM messages WHERE room = ?1 AND offset = ?2"
                ))?
                .query_row(params![&*room, big(offset)], |r| message_from_row(&room, r))
                .optional()?;
            tx.commit()?;
            Ok(row)
        })
        .await
    }

    async fn clear_some(&self, room: &str, top: u64, limit: i64) -> Result<u64, StoreError> {
        let room = room.to_owned();
        self.read(move |conn| {
            let tx = super::sqlite_chat::write_tx(conn)?;
            let n = tx
                .prepare_cached(
                    "DELETE FROM messages WHERE room = ?1 AND offset <= ?2
                       AND offset < (SELECT MIN(offset) FROM messages WHERE room = ?1) + ?3",
                )?
                .execute(params![room, big(top), limit])?;
            tx.commit()?;
            Ok(n as u64)
        })
        .await
    }

    async fn writable(&self) -> Result<(), StoreError> {
        // Takes the write lock for an instant (waits behind a commit, up to the busy
        // timeout): fails on a read-only file system, a locked or vanished database.
        self.read(|conn| conn.execute_batch("BEGIN IMMEDIATE; ROLLBACK;"))
            .await
    }
}

/// Whether the current runtime is multi-threaded (so `block_in_place` may be used on it).
fn multi_threaded() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}

/// Runs a commit: in place on a multi-threaded runtime (`block_in_place` hands the worker's
/// other tasks to another thread meanwhile), so the committing task carries on without
/// waiting to be scheduled again; on a blocking thread otherwise. A panic in `f` is an
/// error either way.
async fn blocking<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> Result<R, String> {
    if multi_threaded() {
        tokio::task::block_in_place(|| std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)))
            .map_err(|_| "it panicked".to_string())
    } else {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| e.to_string())
    }
}

/// The writer's half: the write connection, used in place (multi-threaded runtime) or
/// moved to a blocking thread for each commit.
pub struct SqliteCommitter {
    /// `None` only while a commit runs (or after its thread panicked).
    state: Option<WriterState>,
}

struct WriterState {
    conn: Connection,
    /// Told every committed room position, after the commit (see `sqlite_positions.rs`).
    positions: Arc<Positions>,
    base_epoch: String,
}

#[async_trait]
impl Committer for SqliteCommitter {
    fn inline(&self) -> bool {
        multi_threaded()
    }

    async fn commit(&mut self, batch: Batch) -> (Batch, Result<Vec<Appended>, StoreError>) {
        let Some(mut state) = self.state.take() else {
            return (batch, Err(StoreError::Closed));
        };
        let joined = blocking(move || {
            let outcome = state.commit(&batch);
            (state, batch, outcome.map_err(backend))
        })
        .await;
        match joined {
            Ok((state, batch, outcome)) => {
                self.state = Some(state);
                (batch, outcome)
            }
            // The connection went down with the commit (it panicked): this batch fails,
            // and so does every later one (as closed), rather than the task panicking.
            Err(e) => {
                let lost = Batch {
                    entries: Vec::new(),
                    now_ms: 0,
                    key_cutoff_ms: 0,
                    trims: Vec::new(),
                };
                (lost, Err(backend(format!("sqlite commit failed: {e}"))))
            }
        }
    }

    async fn cleanup(&mut self, cutoff_ms: i64) -> Result<(), StoreError> {
        let Some(state) = self.state.take() else {
            return Err(StoreError::Closed);
        };
        let (state, result) = tokio::task::spawn_blocking(move || {
            let r = state
                .conn
                .execute("DELETE FROM idempotency WHERE created_ms < ?1", [cutoff_ms]);
            (state, r)
        })
        .await
        .map_err(backend)?;
        self.state = Some(state);
        result.map(drop).map_err(backend)
    }

    async fn sweep(
        &mut self,
        after: String,
        policy: Policy,
        now_ms: i64,
    ) -> Result<Option<String>, StoreError> {
        let Some(state) = self.state.take() else {
            return Err(StoreError::Closed);
        };
        let (state, result) = tokio::task::spawn_blocking(move || {
            let r = sweep(&state.conn, &after, &policy, now_ms);
            (state, r)
        })
        .await
        .map_err(backend)?;
        self.state = Some(state);
        result.map_err(backend)
    }
}

/// One retention sweep step on the write connection (see `Committer::sweep`).
fn sweep(
    conn: &Connection,
    after: &str,
    policy: &Policy,
    now_ms: i64,
) -> rusqlite::Result<Option<String>> {
    let tx = conn.unchecked_transaction()?;
    let rooms: Vec<(String, i64)> = tx
        .prepare_cached("SELECT room, top FROM rooms WHERE room > ?1 ORDER BY room LIMIT ?2")?
        .query_map(params![after, SWEEP_ROOMS as i64], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    for (room, top) in &rooms {
        let limits = policy(room);
        if !limits.keeps_all() {
            trim(&tx, room, limits, *top as u64, now_ms)?;
        }
    }
    tx.commit()?;
    Ok(match rooms.last() {
        Some((room, _)) if rooms.len() == SWEEP_ROOMS => Some(room.clone()),
        _ => None,
    })
}

impl WriterState {
    /// One transaction for the whole batch.
    fn commit(&mut self, batch: &Batch) -> rusqlite::Result<Vec<Appended>> {
        let now = batch.now_ms;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut results = Vec::with_capacity(batch.entries.len());
        // `(top, epoch)` of this batch's rooms as the batch moves them: from the committed
        // positions the readers share (or the database), so nothing runs ahead of a commit.
        let mut tops: HashMap<&str, (u64, String)> = HashMap::new();
        // Rooms whose top moved in this batch.
        let mut moved: HashMap<&str, u64> = HashMap::new();
        {
            let mut seen_key = tx.prepare_cached(
                "SELECT offset FROM idempotency WHERE room = ?1 AND key = ?2 AND created_ms >= ?3",
            )?;
            let mut insert = tx.prepare_cached(
                "INSERT INTO messages (room, offset, uid, user, client, data, info, ts_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            let mut remember = tx.prepare_cached(
                "INSERT OR REPLACE INTO idempotency (room, key, offset, created_ms) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for e in &batch.entries {
                let m = &e.msg;
                let (top, epoch) = match tops.get(m.room.as_str()) {
                    Some(t) => t.clone(),
                    None => {
                        let p = match self.positions.get(&m.room) {
                            Ok(p) => p,
                            Err(_) => position_of(&tx, &m.room, &self.base_epoch)?,
                        };
                        tops.insert(&m.room, (p.offset, p.epoch.clone()));
                        (p.offset, p.epoch)
                    }
                };
                if let Some(key) = &m.idempotency_key {
                    let seen: Option<i64> = seen_key
                        .query_row(params![m.room, key, batch.key_cutoff_ms], |r| r.get(0))
                        .optional()?;
                    if let Some(offset) = seen {
                        results.push(Appended {
                            offset: offset as u64,
                            epoch,
                            duplicate: true,
                        });
                        continue;
                    }
                }
                let offset = top + 1;
                insert.execute(params![
                    m.room,
                    offset as i64,
                    e.uid,
                    m.user,
                    m.client,
                    m.data.get(),
                    e.info_json,
                    now
                ])?;
                if let Some(key) = &m.idempotency_key {
                    remember.execute(params![m.room, key, offset as i64, now])?;
                }
                moved.insert(&m.room, offset);
                tops.insert(&m.room, (offset, epoch.clone()));
                results.push(Appended {
                    offset,
                    epoch,
                    duplicate: false,
                });
            }
            let mut set_top = tx.prepare_cached(
                "INSERT INTO rooms (room, epoch, top) VALUES (?1, ?2, ?3) ON CONFLICT (room) DO UPDATE SET top = excluded.top",
            )?;
            for (room, top) in &moved {
                let epoch = &tops[*room].1;
                set_top.execute(params![room, epoch, *top as i64])?;
            }
            for (room, limits) in &batch.trims {
                if let Some((top, _)) = tops.get(room.as_str()) {
                    trim(&tx, room, *limits, *top, now)?;
                }
            }
        }
        tx.commit()?;
        self.positions.committed(
            moved
                .iter()
                .map(|(room, top)| (*room, *top, tops[*room].1.as_str())),
        );
        Ok(results)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance as suite;
    use crate::store::Store;

    crate::store_conformance!(
        sqlite_store_conformance,
        tempfile::tempdir().unwrap(),
        |dir, n| SqliteStore::open(
            &dir.path().join(format!("{n}.db")),
            Duration::from_secs(300)
        )
        .unwrap()
    );

    /// A batch larger than one transaction takes, committed on the caller's task (a
    /// multi-threaded runtime, nothing else committing) and on the writer task (a
    /// current-thread runtime): in transactions of at most `MAX_BATCH`, offsets contiguous,
    /// all handed to the dispatcher in order.
    #[test]
    fn a_large_batch_commits_in_steps_inline_and_queued() {
        for multi in [true, false] {
            let mut builder = if multi {
                tokio::runtime::Builder::new_multi_thread()
            } else {
                tokio::runtime::Builder::new_current_thread()
            };
            let rt = builder.enable_all().build().unwrap();
            rt.block_on(async {
                let dir = tempfile::tempdir().unwrap();
                let (s, mut c) =
                    SqliteStore::open(&dir.path().join("b.db"), Duration::from_secs(300)).unwrap();
                let n = crate::store::writer::MAX_BATCH * 2 + 7;
                let msgs = (0..n)
                    .map(|i| suite::msg("b", &i.to_string(), None))
                    .collect();
                let offsets: Vec<u64> = s
                    .append_batch(msgs)
                    .await
                    .into_iter()
                    .map(|r| r.unwrap().offset)
                    .collect();
                assert_eq!(offsets, (1..=n as u64).collect::<Vec<_>>(), "multi={multi}");
                let mut handed = Vec::new();
                let mut batches = 0;
                while let Ok(batch) = c.try_recv() {
                    assert!(batch.len() <= crate::store::writer::MAX_BATCH);
                    handed.extend(batch.iter().map(|m| m.offset));
                    batches += 1;
                }
                assert_eq!(handed, offsets, "multi={multi}");
                assert!(batches >= 3, "multi={multi}: {batches} transactions");
                s.close().await;
                assert!(matches!(
                    s.append(suite::msg("b", "late", None)).await,
                    Err(StoreError::Closed)
                ));
            });
        }
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
