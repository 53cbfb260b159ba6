//! Notifier cursors: for each room of a `notify_offline` namespace, how far its offline
//! notifications have been delivered ("notified up to offset N") and which node holds the
//! room's lease to deliver the rest (`notify/` drives them).
//!
//! Invariants every implementation keeps:
//! - a cursor only moves forward, and only by the node holding the room's lease when it
//!   advances (a node whose lease was taken over cannot move it);
//! - a lease is taken only when it is free, expired, or already the caller's, in one
//!   statement, so two nodes never both hold a live lease on one room;
//! - a room without a cursor row counts as notified up to 0.
//!
//! Cursors are single statements on the read pool (like the chat tables), not through the
//! group-commit writer. Tables (migration 3 of each store): `notify_cursors (room,
//! notified, owner, lease_ms)` on SQLite, `roomcast_notify_cursors (room, seq, owner,
//! lease_ms)` on PostgreSQL.

use async_trait::async_trait;
use rusqlite::{params, OptionalExtension};

use super::postgres::PostgresReaders;
use super::sqlite::SqliteReaders;
use super::writer::big;
use super::StoreError;

/// The notifier half of a store.
#[async_trait]
pub trait NotifyStore: Send + Sync + 'static {
    /// Takes (or renews) `room`'s lease for `node` until `until_ms`, if it is free,
    /// expired at `now_ms`, or already `node`'s. Returns the room's notified offset when
    /// `node` holds the lease, `None` when another node does.
    async fn notify_claim(
        &self,
        room: &str,
        node: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<Option<u64>, StoreError>;
    /// Moves `room`'s cursor forward to `offset` and renews the lease until `until_ms`, if
    /// `node` still holds it. Returns whether it does.
    async fn notify_advance(
        &self,
        room: &str,
        node: &str,
        offset: u64,
        until_ms: i64,
    ) -> Result<bool, StoreError>;
    /// Gives up `node`'s lease on `room` (any node may take it at once).
    async fn notify_release(&self, room: &str, node: &str) -> Result<(), StoreError>;
    /// Rooms of namespace `ns` ("": the default namespace, names without `:`) whose top is
    /// beyond their cursor, in byte order after `after`, at most `limit`.
    async fn notify_backlog(
        &self,
        ns: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<String>, StoreError>;
}

/// The SQLite migration (appended to `sqlite_chat::MIGRATIONS`).
pub(super) const SQLITE_MIGRATION: &str =
    "CREATE TABLE IF NOT EXISTS notify_cursors (room TEXT PRIMARY KEY, notified INTEGER NOT NULL,
         owner TEXT NOT NULL, lease_ms INTEGER NOT NULL) WITHOUT ROWID;";

/// The PostgreSQL migration (appended to `postgres_chat::MIGRATIONS`).
pub(super) const POSTGRES_MIGRATION: &str =
    "CREATE TABLE IF NOT EXISTS roomcast_notify_cursors (room TEXT PRIMARY KEY, seq BIGINT NOT NULL,
         owner TEXT NOT NULL, lease_ms BIGINT NOT NULL);";

/// The range of room names of namespace `ns` (`ns:` up to, not including, `ns;`).
fn ns_range(ns: &str) -> (String, String) {
    (format!("{ns}:"), format!("{ns};"))
}

#[async_trait]
impl NotifyStore for SqliteReaders {
    async fn notify_claim(
        &self,
        room: &str,
        node: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<Option<u64>, StoreError> {
        let (room, node) = (room.to_owned(), node.to_owned());
        self.read(move |conn| {
            conn.prepare_cached(
                "INSERT INTO notify_cursors (room, notified, owner, lease_ms) VALUES (?1, 0, ?2, ?4)
                 ON CONFLICT (room) DO UPDATE SET owner = excluded.owner, lease_ms = excluded.lease_ms
                     WHERE notify_cursors.owner = excluded.owner OR notify_cursors.lease_ms <= ?3
                 RETURNING notified",
            )?
            .query_row(params![room, node, now_ms, until_ms], |r| r.get::<_, i64>(0))
            .optional()
            .map(|n| n.map(|n| n as u64))
        })
        .await
    }

    async fn notify_advance(
        &self,
        room: &str,
        node: &str,
        offset: u64,
        until_ms: i64,
    ) -> Result<bool, StoreError> {
        let (room, node) = (room.to_owned(), node.to_owned());
        self.read(move |conn| {
            conn.prepare_cached(
                "UPDATE notify_cursors SET notified = MAX(notified, ?3), lease_ms = ?4
                 WHERE room = ?1 AND owner = ?2",
            )?
            .execute(params![room, node, big(offset), until_ms])
            .map(|n| n == 1)
        })
        .await
    }

    async fn notify_release(&self, room: &str, node: &str) -> Result<(), StoreError> {
        let (room, node) = (room.to_owned(), node.to_owned());
        self.read(move |conn| {
            conn.prepare_cached(
                "UPDATE notify_cursors SET lease_ms = 0 WHERE room = ?1 AND owner = ?2",
            )?
            .execute(params![room, node])
            .map(drop)
        })
        .await
    }

    async fn notify_backlog(
        &self,
        ns: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let (lo, hi) = ns_range(ns);
        let (ns, after) = (ns.to_owned(), after.to_owned());
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT r.room FROM rooms r LEFT JOIN notify_cursors c ON c.room = r.room
                 WHERE r.room > ?1 AND r.top > COALESCE(c.notified, 0)
                   AND ((?2 = '' AND instr(r.room, ':') = 0)
                        OR (?2 <> '' AND r.room >= ?3 AND r.room < ?4))
                 ORDER BY r.room LIMIT ?5",
            )?;
            let rows =
                stmt.query_map(params![after, ns, lo, hi, big(limit as u64)], |r| r.get(0))?;
            rows.collect()
        })
        .await
    }
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

#[async_trait]
impl NotifyStore for PostgresReaders {
    async fn notify_claim(
        &self,
        room: &str,
        node: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<Option<u64>, StoreError> {
        let row = self
            .reader()
            .await?
            .query_opt(
                "INSERT INTO roomcast_notify_cursors (room, seq, owner, lease_ms) VALUES ($1, 0, $2, $4)
                 ON CONFLICT (room) DO UPDATE SET owner = excluded.owner, lease_ms = excluded.lease_ms
                     WHERE roomcast_notify_cursors.owner = excluded.owner
                        OR roomcast_notify_cursors.lease_ms <= $3
                 RETURNING seq",
                &[&room, &node, &now_ms, &until_ms],
            )
            .await
            .map_err(backend)?;
        Ok(row.map(|r| r.get::<_, i64>(0) as u64))
    }

    async fn notify_advance(
        &self,
        room: &str,
        node: &str,
        offset: u64,
        until_ms: i64,
    ) -> Result<bool, StoreError> {
        let n = self
            .reader()
            .await?
            .execute(
                "UPDATE roomcast_notify_cursors SET seq = GREATEST(seq, $3), lease_ms = $4
                 WHERE room = $1 AND owner = $2",
                &[&room, &node, &big(offset), &until_ms],
            )
            .await
            .map_err(backend)?;
        Ok(n == 1)
    }

    async fn notify_release(&self, room: &str, node: &str) -> Result<(), StoreError> {
        self.reader()
            .await?
            .execute(
                "UPDATE roomcast_notify_cursors SET lease_ms = 0 WHERE room = $1 AND owner = $2",
                &[&room, &node],
            )
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn notify_backlog(
        &self,
        ns: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let (lo, hi) = ns_range(ns);
        let rows = self
            .reader()
            .await?
            .query(
                "SELECT r.room FROM roomcast_rooms r
                 LEFT JOIN roomcast_notify_cursors c ON c.room = r.room
                 WHERE r.room COLLATE \"C\" > $1 AND r.top > COALESCE(c.seq, 0)
                   AND (($2 = '' AND strpos(r.room, ':') = 0)
                        OR ($2 <> '' AND r.room COLLATE \"C\" >= $3 AND r.room COLLATE \"C\" < $4))
                 ORDER BY r.room COLLATE \"C\" LIMIT $5",
                &[&after, &ns, &lo, &hi, &big(limit as u64)],
            )
            .await
            .map_err(backend)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}
