//! PostgreSQL's chat tables (see `chat.rs`) and the schema migrations of the PostgreSQL
//! store.
//!
//! # Migrations
//! As in `sqlite_chat.rs`: `roomcast_meta.schema_version` is the database's schema version
//! (absent: version 1, the message log as first released); [`MIGRATIONS`] takes it from
//! `n + 1` to `n + 2`. [`migrate`] runs inside the transaction that holds the schema
//! advisory lock at connect, so nodes starting together upgrade a database exactly once,
//! and a crash mid-upgrade leaves it as it was.
//!
//! # Chat tables
//! `roomcast_members (room, member)` with an index by member, `roomcast_cursors (member,
//! room, seq)`. Text is compared with `COLLATE "C"` (byte order), so pages sort the same
//! way as on SQLite whatever the database's collation.

use async_trait::async_trait;
use tokio_postgres::Transaction;

use super::chat::{preview, ChatStore, Cursor, RoomEntry, RoomsAfter, MAX_PREVIEW_BYTES};
use super::postgres::PostgresReaders;
use super::writer::big;
use super::StoreError;

/// Schema changes after version 1, in order: `MIGRATIONS[i]` makes version `i + 2`.
pub(super) const MIGRATIONS: &[&str] = &[
    // 2: membership and read cursors.
    "CREATE TABLE roomcast_members (room TEXT NOT NULL, member TEXT NOT NULL, PRIMARY KEY (room, member));
     CREATE INDEX roomcast_members_by_member ON roomcast_members (member, room);
     CREATE TABLE roomcast_cursors (member TEXT NOT NULL, room TEXT NOT NULL, seq BIGINT NOT NULL,
         PRIMARY KEY (member, room));",
    // 3: offline-notification cursors (`notify.rs`).
    super::notify::POSTGRES_MIGRATION,
    // 4: deleted publications (tombstones: the row stays, its payload is gone).
    "ALTER TABLE roomcast_messages ADD COLUMN deleted BOOLEAN NOT NULL DEFAULT false;",
];

/// The schema version this build writes.
pub(super) const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64 + 1;

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// Brings the database up to [`SCHEMA_VERSION`] inside `tx` (which holds the schema lock).
pub(super) async fn migrate(tx: &Transaction<'_>) -> Result<(), StoreError> {
    let found = tx
        .query_opt(
            "SELECT value FROM roomcast_meta WHERE key = 'schema_version'",
            &[],
        )
        .await
        .map_err(backend)?;
    let version = super::schema::found_version(found.map(|row| row.get(0)), SCHEMA_VERSION)?;
    for sql in super::schema::pending(MIGRATIONS, version) {
        tx.batch_execute(sql).await.map_err(backend)?;
    }
    tx.execute(
        "INSERT INTO roomcast_meta (key, value) VALUES ('schema_version', $1)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        &[&SCHEMA_VERSION.to_string()],
    )
    .await
    .map_err(backend)?;
    Ok(())
}

#[async_trait]
impl ChatStore for PostgresReaders {
    async fn add_members(&self, room: &str, users: &[String]) -> Result<u64, StoreError> {
        self.reader()
            .await?
            .execute(
                "INSERT INTO roomcast_members (room, member) SELECT $1, u FROM UNNEST($2::text[]) AS u
                 ON CONFLICT DO NOTHING",
                &[&room, &users],
            )
            .await
            .map_err(backend)
    }

    async fn remove_members(&self, room: &str, users: &[String]) -> Result<u64, StoreError> {
        self.reader()
            .await?
            .execute(
                "DELETE FROM roomcast_members WHERE room = $1 AND member = ANY($2::text[])",
                &[&room, &users],
            )
            .await
            .map_err(backend)
    }

    async fn members(
        &self,
        room: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let rows = self
            .reader()
            .await?
            .query(
                "SELECT member FROM roomcast_members
                 WHERE room = $1 AND member COLLATE \"C\" > $2
                 ORDER BY member COLLATE \"C\" LIMIT $3",
                &[&room, &after.unwrap_or(""), &big(limit as u64)],
            )
            .await
            .map_err(backend)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn is_member(&self, room: &str, user: &str) -> Result<bool, StoreError> {
        let row = self
            .reader()
            .await?
            .query_opt(
                "SELECT 1 FROM roomcast_members WHERE room = $1 AND member = $2",
                &[&room, &user],
            )
            .await
            .map_err(backend)?;
        Ok(row.is_some())
    }

    async fn set_cursor(&self, user: &str, room: &str, offset: u64) -> Result<Cursor, StoreError> {
        // One statement: the clamp to the top, and an upsert that only ever raises the
        // cursor (its RETURNING row says whether it did). `old` is the cursor before.
        let row = self
            .reader()
            .await?
            .query_one(
                "WITH t AS (SELECT COALESCE((SELECT top FROM roomcast_rooms WHERE room = $2), 0) AS top),
                 up AS (
                     INSERT INTO roomcast_cursors (member, room, seq)
                     SELECT $1, $2, LEAST($3::bigint, t.top) FROM t WHERE LEAST($3::bigint, t.top) > 0
                     ON CONFLICT (member, room) DO UPDATE SET seq = excluded.seq
                         WHERE roomcast_cursors.seq < excluded.seq
                     RETURNING seq)
                 SELECT (SELECT top FROM t), (SELECT seq FROM up),
                        (SELECT seq FROM roomcast_cursors WHERE member = $1 AND room = $2)",
                &[&user, &room, &big(offset)],
            )
            .await
            .map_err(backend)?;
        let top = row.get::<_, i64>(0) as u64;
        let raised: Option<i64> = row.get(1);
        let old = row.get::<_, Option<i64>>(2).unwrap_or(0) as u64;
        Ok(match raised {
            Some(new) => Cursor {
                offset: new as u64,
                top,
                moved: true,
            },
            None => Cursor {
                offset: old.max(offset.min(top)),
                top,
                moved: false,
            },
        })
    }

    async fn cursor(&self, user: &str, room: &str) -> Result<Cursor, StoreError> {
        let row = self
            .reader()
            .await?
            .query_one(
                "SELECT COALESCE((SELECT top FROM roomcast_rooms WHERE room = $2), 0),
                        COALESCE((SELECT seq FROM roomcast_cursors WHERE member = $1 AND room = $2), 0)",
                &[&user, &room],
            )
            .await
            .map_err(backend)?;
        Ok(Cursor {
            top: row.get::<_, i64>(0) as u64,
            offset: row.get::<_, i64>(1) as u64,
            moved: false,
        })
    }

    async fn unread_total(&self, user: &str) -> Result<(u64, u64), StoreError> {
        let row = self
            .reader()
            .await?
            .query_one(
                "SELECT COALESCE(SUM(GREATEST(COALESCE(r.top, 0) - COALESCE(c.seq, 0), 0)), 0)::bigint,
                        COUNT(*)
                 FROM roomcast_members m
                 LEFT JOIN roomcast_rooms r ON r.room = m.room
                 LEFT JOIN roomcast_cursors c ON c.member = m.member AND c.room = m.room
                 WHERE m.member = $1",
                &[&user],
            )
            .await
            .map_err(backend)?;
        Ok((row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64))
    }

    async fn rooms(
        &self,
        user: &str,
        after: Option<&RoomsAfter>,
        limit: usize,
    ) -> Result<Vec<RoomEntry>, StoreError> {
        let (ts, after_room) = after.map_or((i64::MAX, ""), |a| (a.ts_ms, a.room.as_str()));
        let rows = self
            .reader()
            .await?
            .query(
                "SELECT m.room, COALESCE(r.top, 0), COALESCE(c.seq, 0), msg.seq, msg.ts_ms,
                        CASE WHEN octet_length(msg.data) <= $5 AND NOT msg.deleted THEN msg.data END,
                        msg.deleted
                 FROM roomcast_members m
                 LEFT JOIN roomcast_rooms r ON r.room = m.room
                 LEFT JOIN roomcast_messages msg ON msg.room = m.room AND msg.seq = r.top
                 LEFT JOIN roomcast_cursors c ON c.member = m.member AND c.room = m.room
                 WHERE m.member = $1 AND (COALESCE(msg.ts_ms, 0), m.room COLLATE \"C\") < ($2, $3)
                 ORDER BY COALESCE(msg.ts_ms, 0) DESC, m.room COLLATE \"C\" DESC
                 LIMIT $4",
                &[
                    &user,
                    &ts,
                    &after_room,
                    &big(limit as u64),
                    &(MAX_PREVIEW_BYTES as i32),
                ],
            )
            .await
            .map_err(backend)?;
        rows.iter()
            .map(|r| {
                Ok(RoomEntry {
                    room: r.get(0),
                    top: r.get::<_, i64>(1) as u64,
                    cursor: r.get::<_, i64>(2) as u64,
                    preview: preview(
                        r.get(3),
                        r.get(4),
                        r.get(5),
                        r.get::<_, Option<bool>>(6) == Some(true),
                    )?,
                })
            })
            .collect()
    }
}
