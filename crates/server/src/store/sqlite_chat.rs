//! SQLite's chat tables (see `chat.rs`) and the schema migrations of the SQLite store.
//!
//! # Migrations
//! `meta.schema_version` holds the version of the schema a database file has. Version 1 is
//! the message log as first released (created by `sqlite::SCHEMA`, which carries no
//! version: a file without one is version 1). [`MIGRATIONS`] lists, in order, what takes a
//! file from version `n + 1` to `n + 2`; [`migrate`] applies the missing ones at open, in
//! one transaction with the new version, so a file is either upgraded whole or untouched.
//! A file of a newer version than this build knows is refused rather than written to.
//!
//! # Chat tables
//! `members (room, user)` with an index by user (a user's rooms), `cursors (user, room,
//! offset)`. Reads and writes run on the reader pool, one statement or one short
//! transaction each; SQLite's write lock (with the connections' busy timeout) serializes
//! them with the group-commit writer. Cursor moves, the one frequent write, are batched by
//! their own task ([`start_cursor_writer`]).

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};

use super::chat::{preview, ChatStore, Cursor, RoomEntry, RoomsAfter, MAX_PREVIEW_BYTES};
use std::path::Path;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::sqlite::{backend, open_connection, position_of, SqliteReaders};
use super::writer::big;
use super::StoreError;

/// Schema changes after version 1, in order: `MIGRATIONS[i]` makes version `i + 2`.
pub(super) const MIGRATIONS: &[&str] = &[
    // 2: membership and read cursors.
    "CREATE TABLE members (room TEXT NOT NULL, user TEXT NOT NULL, PRIMARY KEY (room, user)) WITHOUT ROWID;
     CREATE INDEX members_by_user ON members (user, room);
     CREATE TABLE cursors (user TEXT NOT NULL, room TEXT NOT NULL, offset INTEGER NOT NULL,
         PRIMARY KEY (user, room)) WITHOUT ROWID;",
    // 3: offline-notification cursors (`notify.rs`).
    super::notify::SQLITE_MIGRATION,
    // 4: deleted publications (tombstones: the row stays, its payload is gone).
    "ALTER TABLE messages ADD COLUMN deleted INTEGER NOT NULL DEFAULT 0;",
];

/// The schema version this build writes.
pub(super) const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64 + 1;

/// Brings a database at any earlier version up to [`SCHEMA_VERSION`], atomically.
pub(super) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let backend = |e: rusqlite::Error| StoreError::Backend(format!("migrating schema: {e}"));
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(backend)?;
    let found: Option<String> = tx
        .query_row(
            "SELECT value FROM meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(backend)?;
    let version = super::schema::found_version(found, SCHEMA_VERSION)?;
    for sql in super::schema::pending(MIGRATIONS, version) {
        tx.execute_batch(sql).map_err(backend)?;
    }
    tx.execute(
        "INSERT INTO meta (key, value) VALUES ('schema_version', ?1)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [SCHEMA_VERSION.to_string()],
    )
    .map_err(backend)?;
    tx.commit().map_err(backend)
}

/// One `set_cursor` waiting for the cursor batcher.
pub(crate) struct CursorMove {
    user: String,
    room: String,
    offset: u64,
    reply: oneshot::Sender<Result<Cursor, StoreError>>,
}

/// Most cursor moves one transaction takes.
const CURSOR_BATCH: usize = 512;
/// Cursor moves waiting for the batcher; `set_cursor` callers wait beyond it.
const CURSOR_QUEUE: usize = 4096;

/// Starts the task that commits read-cursor moves in batches, one write transaction (one
/// fsync under `synchronous=FULL`) for every move queued meanwhile. One transaction per move
/// held SQLite's write lock against the group-commit writer 500 times a second when the seed
/// example's 500 members each moved their cursor once a second: deliveries fell to 0.78x and
/// median latency rose from 10 ms to 157 ms (BENCHMARKS.md, "The chat layer's cost").
/// Moves of one batch run in queue order inside the transaction, so each sees the ones
/// before it (monotonic, `moved` exact). The task ends when the store is dropped.
pub(super) fn start_cursor_writer(path: Arc<Path>, base: String) -> mpsc::Sender<CursorMove> {
    let (tx, mut rx) = mpsc::channel::<CursorMove>(CURSOR_QUEUE);
    tokio::spawn(async move {
        let mut conn: Option<Connection> = None;
        let mut batch = Vec::with_capacity(CURSOR_BATCH);
        while rx.recv_many(&mut batch, CURSOR_BATCH).await > 0 {
            let moves = std::mem::take(&mut batch);
            let (path, base, pooled) = (path.clone(), base.clone(), conn.take());
            let done = tokio::task::spawn_blocking(move || {
                let c = match pooled {
                    Some(c) => Ok(c),
                    None => open_connection(&path),
                };
                match c {
                    Ok(c) => {
                        let out = commit_cursors(&c, &base, &moves).map_err(backend);
                        (Some(c), moves, out)
                    }
                    Err(e) => (None, moves, Err(backend(e))),
                }
            })
            .await;
            let Ok((c, moves, out)) = done else { continue };
            conn = c;
            match out {
                Ok(cursors) => {
                    for (m, c) in moves.into_iter().zip(cursors) {
                        let _ = m.reply.send(Ok(c));
                    }
                }
                Err(e) => {
                    for m in moves {
                        let _ = m.reply.send(Err(StoreError::Backend(e.to_string())));
                    }
                }
            }
        }
    });
    tx
}

/// Applies `moves` in order in one immediate transaction: each is clamped to its room's top
/// and ignored unless it moves the cursor forward.
fn commit_cursors(
    conn: &Connection,
    base: &str,
    moves: &[CursorMove],
) -> rusqlite::Result<Vec<Cursor>> {
    let tx = write_tx(conn)?;
    let mut out = Vec::with_capacity(moves.len());
    for m in moves {
        let top = position_of(&tx, &m.room, base)?.offset;
        let old = cursor_of(&tx, &m.user, &m.room)?;
        let new = m.offset.min(top);
        let moved = new > old;
        if moved {
            tx.prepare_cached(
                "INSERT INTO cursors (user, room, offset) VALUES (?1, ?2, ?3)
                 ON CONFLICT (user, room) DO UPDATE SET offset = MAX(offset, excluded.offset)",
            )?
            .execute(params![m.user, m.room, big(new)])?;
        }
        out.push(Cursor {
            offset: new.max(old),
            top,
            moved,
        });
    }
    tx.commit()?;
    Ok(out)
}

/// A write transaction on a pooled connection, taking the write lock at once (a deferred
/// one that reads first could fail to upgrade instead of waiting for the lock).
pub(super) fn write_tx(conn: &Connection) -> rusqlite::Result<Transaction<'_>> {
    Transaction::new_unchecked(conn, TransactionBehavior::Immediate)
}

fn cursor_of(conn: &Connection, user: &str, room: &str) -> rusqlite::Result<u64> {
    Ok(conn
        .prepare_cached("SELECT offset FROM cursors WHERE user = ?1 AND room = ?2")?
        .query_row([user, room], |r| r.get::<_, i64>(0))
        .optional()?
        .unwrap_or(0) as u64)
}

#[async_trait]
impl ChatStore for SqliteReaders {
    async fn add_members(&self, room: &str, users: &[String]) -> Result<u64, StoreError> {
        let (room, users) = (room.to_owned(), users.to_vec());
        self.read(move |conn| {
            let tx = write_tx(conn)?;
            let mut added = 0;
            {
                let mut insert = tx.prepare_cached(
                    "INSERT INTO members (room, user) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                )?;
                for u in &users {
                    added += insert.execute([&room, u])? as u64;
                }
            }
            tx.commit()?;
            Ok(added)
        })
        .await
    }

    async fn remove_members(&self, room: &str, users: &[String]) -> Result<u64, StoreError> {
        let (room, users) = (room.to_owned(), users.to_vec());
        self.read(move |conn| {
            let tx = write_tx(conn)?;
            let mut removed = 0;
            {
                let mut delete =
                    tx.prepare_cached("DELETE FROM members WHERE room = ?1 AND user = ?2")?;
                for u in &users {
                    removed += delete.execute([&room, u])? as u64;
                }
            }
            tx.commit()?;
            Ok(removed)
        })
        .await
    }

    async fn members(
        &self,
        room: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let (room, after) = (room.to_owned(), after.unwrap_or("").to_owned());
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT user FROM members WHERE room = ?1 AND user > ?2 ORDER BY user LIMIT ?3",
            )?;
            let rows = stmt.query_map(params![room, after, big(limit as u64)], |r| r.get(0))?;
            rows.collect()
        })
        .await
    }

    async fn is_member(&self, room: &str, user: &str) -> Result<bool, StoreError> {
        let (room, user) = (room.to_owned(), user.to_owned());
        self.read(move |conn| {
            conn.prepare_cached("SELECT 1 FROM members WHERE room = ?1 AND user = ?2")?
                .exists([room, user])
        })
        .await
    }

    async fn set_cursor(&self, user: &str, room: &str, offset: u64) -> Result<Cursor, StoreError> {
        let (reply, answer) = oneshot::channel();
        let m = CursorMove {
            user: user.to_owned(),
            room: room.to_owned(),
            offset,
            reply,
        };
        // Bounded queue: callers wait while the batcher is behind.
        if self.cursors.send(m).await.is_err() {
            return Err(StoreError::Closed);
        }
        answer.await.map_err(|_| StoreError::Closed)?
    }

    async fn cursor(&self, user: &str, room: &str) -> Result<Cursor, StoreError> {
        let (user, room) = (user.to_owned(), room.to_owned());
        let base = self.base_epoch.clone();
        self.read(move |conn| {
            let tx = conn.unchecked_transaction()?;
            let top = position_of(&tx, &room, &base)?.offset;
            let offset = cursor_of(&tx, &user, &room)?;
            tx.finish()?;
            Ok(Cursor {
                offset,
                top,
                moved: false,
            })
        })
        .await
    }

    async fn unread_total(&self, user: &str) -> Result<(u64, u64), StoreError> {
        let user = user.to_owned();
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT COALESCE(SUM(MAX(COALESCE(r.top, 0) - COALESCE(c.offset, 0), 0)), 0), COUNT(*)
                 FROM members m
                 LEFT JOIN rooms r ON r.room = m.room
                 LEFT JOIN cursors c ON c.user = m.user AND c.room = m.room
                 WHERE m.user = ?1",
            )?
            .query_row([user], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
            })
        })
        .await
    }

    async fn rooms(
        &self,
        user: &str,
        after: Option<&RoomsAfter>,
        limit: usize,
    ) -> Result<Vec<RoomEntry>, StoreError> {
        let user = user.to_owned();
        let (ts, after_room) =
            after.map_or((i64::MAX, String::new()), |a| (a.ts_ms, a.room.clone()));
        let rows = self
            .read(move |conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT m.room, COALESCE(r.top, 0), COALESCE(c.offset, 0), msg.offset, msg.ts_ms,
                            CASE WHEN length(CAST(msg.data AS BLOB)) <= ?5 AND msg.deleted = 0 THEN msg.data END,
                            msg.deleted
                     FROM members m
                     LEFT JOIN rooms r ON r.room = m.room
                     LEFT JOIN messages msg ON msg.room = m.room AND msg.offset = r.top
                     LEFT JOIN cursors c ON c.user = m.user AND c.room = m.room
                     WHERE m.user = ?1 AND (COALESCE(msg.ts_ms, 0), m.room) < (?2, ?3)
                     ORDER BY COALESCE(msg.ts_ms, 0) DESC, m.room DESC
                     LIMIT ?4",
                )?;
                let rows = stmt.query_map(
                    params![user, ts, after_room, big(limit as u64), MAX_PREVIEW_BYTES as i64],
                    |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, i64>(1)?,
                            r.get::<_, i64>(2)?,
                            r.get::<_, Option<i64>>(3)?,
                            r.get::<_, Option<i64>>(4)?,
                            r.get::<_, Option<String>>(5)?,
                            r.get::<_, Option<bool>>(6)? == Some(true),
                        ))
                    },
                )?;
                rows.collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        rows.into_iter()
            .map(|(room, top, cursor, offset, ts, data, deleted)| {
                Ok(RoomEntry {
                    room,
                    top: top as u64,
                    cursor: cursor as u64,
                    preview: preview(offset, ts, data, deleted)?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::conformance::msg;
    use crate::store::sqlite::{open_connection, SqliteStore};
    use crate::store::Store;

    fn version(path: &Path) -> String {
        open_connection(path)
            .unwrap()
            .query_row(
                "SELECT value FROM meta WHERE key = 'schema_version'",
                [],
                |r| r.get(0),
            )
            .unwrap()
    }

    /// A file as the first release wrote it (version 1: the log only, no version row)
    /// opens, keeps its messages and gains the chat tables; a newer file is refused.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_version_1_file_is_upgraded_and_a_newer_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        let ttl = Duration::from_secs(300);
        {
            let (s, _c) = SqliteStore::open(&path, ttl).unwrap();
            s.append(msg("old", "1", None)).await.unwrap();
            s.close().await;
        }
        // Back to exactly what version 1 created.
        open_connection(&path)
            .unwrap()
            .execute_batch(
                "DROP TABLE members; DROP TABLE cursors;
                 ALTER TABLE messages DROP COLUMN deleted;
                 DELETE FROM meta WHERE key = 'schema_version';",
            )
            .unwrap();
        {
            let (s, _c) = SqliteStore::open(&path, ttl).unwrap();
            assert_eq!(s.position("old").await.unwrap().offset, 1);
            assert_eq!(s.add_members("old", &["u".into()]).await.unwrap(), 1);
            assert_eq!(s.set_cursor("u", "old", 1).await.unwrap().offset, 1);
            assert_eq!(s.unread_total("u").await.unwrap(), (0, 1));
            s.close().await;
        }
        assert_eq!(version(&path), SCHEMA_VERSION.to_string());
        // Opening again migrates nothing twice.
        {
            let (s, _c) = SqliteStore::open(&path, ttl).unwrap();
            assert!(s.is_member("old", "u").await.unwrap());
            s.close().await;
        }
        open_connection(&path)
            .unwrap()
            .execute(
                "UPDATE meta SET value = ?1 WHERE key = 'schema_version'",
                [(SCHEMA_VERSION + 1).to_string()],
            )
            .unwrap();
        match SqliteStore::open(&path, ttl) {
            Err(StoreError::Damaged(why)) => assert!(why.contains("schema version")),
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("a newer schema must be refused"),
        }
    }
}
