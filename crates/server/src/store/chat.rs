//! The chat tables every store keeps beside the message log: room membership and read
//! cursors, and the reads computed from them (unread counts, a user's room list).
//!
//! Invariants every implementation keeps:
//! - membership is a set of `(room, user)` pairs: adding a member twice or removing a
//!   non-member is a no-op;
//! - a read cursor only moves forward (an older offset is ignored) and never beyond the
//!   room's top when it is set (a future offset is clamped to the top); it is durable when
//!   the call returns;
//! - unread(user, room) = max(top - cursor, 0), **computed** from the room's top and the
//!   cursor at read time, never counted per message, so it cannot drift: no write happens
//!   per recipient per publication, and every node computes the same number from the store.
//!
//! Chat writes are single statements (or one short transaction) on the backend's read
//! pool, not through the group-commit writer: they are rare next to publications and must
//! not wait behind a batch.

use async_trait::async_trait;
use serde_json::value::RawValue;

use super::StoreError;

/// Most users one add/remove call takes.
pub const MAX_USERS_PER_CALL: usize = 1000;
/// Largest page of a room's members.
pub const MAX_MEMBERS_PAGE: usize = 1000;
/// Largest page of a user's rooms.
pub const MAX_ROOMS_PAGE: usize = 200;
/// Longest user id stored as a member.
pub const MAX_USER_LEN: usize = 255;
/// Publication data above this many bytes is left out of a room-list preview
/// (`preview.data` absent, `preview.truncated` true).
pub const MAX_PREVIEW_BYTES: usize = 1024;

/// A read cursor after a `set_cursor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// The cursor now stored (the clamped, monotonic result).
    pub offset: u64,
    /// The room's top offset when the cursor was set.
    pub top: u64,
    /// Whether the call moved the cursor.
    pub moved: bool,
}

impl Cursor {
    pub fn unread(&self) -> u64 {
        self.top.saturating_sub(self.offset)
    }
}

/// The newest publication of a room, as a room list shows it.
#[derive(Debug, Clone)]
pub struct Preview {
    pub offset: u64,
    /// Server time of the publication, milliseconds since the Unix epoch.
    pub ts_ms: i64,
    /// The data, when it is at most [`MAX_PREVIEW_BYTES`] (and not deleted).
    pub data: Option<Box<RawValue>>,
    /// The publication was deleted (`Store::delete`): its payload is gone.
    pub deleted: bool,
}

/// One room of a user's room list.
#[derive(Debug, Clone)]
pub struct RoomEntry {
    pub room: String,
    pub top: u64,
    pub cursor: u64,
    /// Absent for a room with no publication yet.
    pub preview: Option<Preview>,
}

impl RoomEntry {
    pub fn unread(&self) -> u64 {
        self.top.saturating_sub(self.cursor)
    }

    /// The sort key of the list: newest activity first, then room name (descending), so
    /// pages are stable. A room without publications sorts as time 0.
    pub fn key(&self) -> (i64, &str) {
        (self.preview.as_ref().map_or(0, |p| p.ts_ms), &self.room)
    }
}

/// Where a page of a room list starts: after the entry with this sort key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomsAfter {
    pub ts_ms: i64,
    pub room: String,
}

/// The chat half of a store.
#[async_trait]
pub trait ChatStore: Send + Sync + 'static {
    /// Adds users to a room's members (at most [`MAX_USERS_PER_CALL`], checked by callers).
    /// Returns how many were not members before.
    async fn add_members(&self, room: &str, users: &[String]) -> Result<u64, StoreError>;
    /// Removes users from a room's members. Returns how many were members.
    async fn remove_members(&self, room: &str, users: &[String]) -> Result<u64, StoreError>;
    /// A page of a room's members in user order, after `after` (exclusive).
    async fn members(
        &self,
        room: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError>;
    /// Whether `user` is a member of `room`.
    async fn is_member(&self, room: &str, user: &str) -> Result<bool, StoreError>;
    /// Moves `user`'s read cursor in `room` to `offset` if that is ahead of it, clamped to
    /// the room's top.
    async fn set_cursor(&self, user: &str, room: &str, offset: u64) -> Result<Cursor, StoreError>;
    /// The room's top and `user`'s cursor in it (0 when unset): one indexed read each.
    async fn cursor(&self, user: &str, room: &str) -> Result<Cursor, StoreError>;
    /// Total unread over every room `user` is a member of, and how many rooms that is.
    async fn unread_total(&self, user: &str) -> Result<(u64, u64), StoreError>;
    /// A page of the rooms `user` is a member of, newest activity first (see
    /// [`RoomEntry::key`]), strictly after `after`.
    async fn rooms(
        &self,
        user: &str,
        after: Option<&RoomsAfter>,
        limit: usize,
    ) -> Result<Vec<RoomEntry>, StoreError>;
}

/// A preview from a stored row: the data kept only when small (the query already left
/// bigger data out, reporting only its length).
pub(crate) fn preview(
    offset: Option<i64>,
    ts_ms: Option<i64>,
    data: Option<String>,
    deleted: bool,
) -> Result<Option<Preview>, StoreError> {
    let (Some(offset), Some(ts_ms)) = (offset, ts_ms) else {
        return Ok(None);
    };
    let data = match data {
        Some(d) => Some(RawValue::from_string(d).map_err(|e| StoreError::Backend(e.to_string()))?),
        None => None,
    };
    Ok(Some(Preview {
        offset: offset as u64,
        ts_ms,
        data,
        deleted,
    }))
}
