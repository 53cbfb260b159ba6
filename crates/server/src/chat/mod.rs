//! The chat layer over the store-first core: room membership, read cursors, unread counts
//! and a user's room list, as both the client protocol (`rpc` methods `roomcast.*`,
//! `rpc.rs`) and the server API (`http/chat.rs`) reach them.
//!
//! The store is the only truth (`store/chat.rs`): nothing here is cached, so a member
//! added or a cursor moved through any node is seen by every node at its next read, and
//! unread counts are computed from the room's top and the cursor at read time (they cannot
//! drift). A cursor change is pushed to the user's other connections through
//! `Node::user_event` (`events.rs`).
//!
//! Access: a channel must resolve and admit the user (user-limited channels), and under a
//! `members_only` namespace the user must be a member (else 103, permission denied), for
//! reads of cursors as for subscribe, publish and history.
//!
//! Files: `mod.rs` (the operations and their results), `requests.rs` (request shapes and
//! checks), `rpc.rs` (the client's `rpc` methods), `events.rs` (per-user events).

mod events;
pub mod requests;
pub mod rpc;

use roomcast_proto::ErrorCode;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::channel::Channel;
use crate::node::{internal, Node};

use crate::store::{Cursor, RoomEntry, RoomsAfter};
use requests::{check_user, rooms_next, MAX_UNREAD_CHANNELS};

/// Why a chat call was refused.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// A malformed or out-of-bounds request (107).
    #[error("{0}")]
    Bad(String),
    #[error("{}", .0.message)]
    Refused(ErrorCode),
}

impl ChatError {
    pub fn code(&self) -> ErrorCode {
        match self {
            ChatError::Bad(_) => ErrorCode::BAD_REQUEST,
            ChatError::Refused(e) => *e,
        }
    }
}

impl From<ErrorCode> for ChatError {
    fn from(e: ErrorCode) -> Self {
        ChatError::Refused(e)
    }
}

/// A read cursor as the methods and the cursor event report it.
#[derive(Debug, Serialize)]
pub struct CursorView<'a> {
    pub channel: &'a str,
    /// The user's read cursor.
    pub cursor: u64,
    /// The room's newest offset.
    pub top: u64,
    pub unread: u64,
}

impl<'a> CursorView<'a> {
    fn new(channel: &'a str, c: &Cursor) -> Self {
        CursorView {
            channel,
            cursor: c.offset,
            top: c.top,
            unread: c.unread(),
        }
    }
}

#[derive(Serialize)]
pub struct PreviewView<'a> {
    pub offset: u64,
    /// Milliseconds since the Unix epoch.
    pub ts: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<&'a RawValue>,
    /// The data was above `MAX_PREVIEW_BYTES` and left out.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// The publication was deleted: no data.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
}

#[derive(Serialize)]
pub struct RoomView<'a> {
    pub channel: &'a str,
    pub top: u64,
    pub cursor: u64,
    pub unread: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preview: Option<PreviewView<'a>>,
}

/// A page of a user's rooms, with the user's total unread over all of them.
#[derive(Serialize)]
pub struct RoomsView<'a> {
    pub rooms: Vec<RoomView<'a>>,
    pub total_unread: u64,
    /// Give it back as `after` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

impl<'a> RoomsView<'a> {
    pub fn new(entries: &'a [RoomEntry], total_unread: u64, limit: usize) -> Self {
        let rooms = entries
            .iter()
            .map(|e| RoomView {
                channel: &e.room,
                top: e.top,
                cursor: e.cursor,
                unread: e.unread(),
                preview: e.preview.as_ref().map(|p| PreviewView {
                    offset: p.offset,
                    ts: p.ts_ms,
                    data: p.data.as_deref(),
                    truncated: p.data.is_none() && !p.deleted,
                    deleted: p.deleted,
                }),
            })
            .collect();
        let next = (entries.len() == limit)
            .then(|| entries.last())
            .flatten()
            .map(|e| {
                let (ts_ms, room) = e.key();
                rooms_next(&RoomsAfter {
                    ts_ms,
                    room: room.to_owned(),
                })
            });
        RoomsView {
            rooms,
            total_unread,
            next,
        }
    }
}

/// Unread counts: per channel asked, and the total over the user's rooms.
#[derive(Serialize)]
pub struct UnreadView<'a> {
    pub total: u64,
    /// Rooms the user is a member of.
    pub rooms: u64,
    pub channels: Vec<CursorView<'a>>,
}

impl Node {
    /// Whether `user` may use `channel` as a member would: the channel resolves and
    /// admits the user, and under `members_only` the user is a member (the store says).
    pub async fn chat_access(&self, user: &str, channel: &str) -> Result<(), ErrorCode> {
        let c = Channel::resolve(&self.config, channel)?;
        if !c.admits(user) {
            return Err(ErrorCode::PERMISSION_DENIED);
        }
        if c.options.members_only {
            self.check_member(channel, user).await?;
        }
        Ok(())
    }

    /// Permission denied unless `user` is a member of `room` (a store read).
    pub async fn check_member(&self, room: &str, user: &str) -> Result<(), ErrorCode> {
        match self.store.is_member(room, user).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(ErrorCode::PERMISSION_DENIED),
            Err(e) => Err(internal(e)),
        }
    }

    /// Moves `user`'s read cursor in `channel` forward to `offset` (clamped to the top);
    /// when it moved, tells the user's connections.
    pub async fn read(&self, user: &str, channel: &str, offset: u64) -> Result<Cursor, ChatError> {
        check_user(user)?;
        self.chat_access(user, channel).await?;
        let c = self
            .store
            .set_cursor(user, channel, offset)
            .await
            .map_err(internal)?;
        if c.moved {
            let mut event =
                serde_json::to_value(CursorView::new(channel, &c)).expect("a cursor serializes");
            event["type"] = "read".into();
            self.user_event(user, event).await;
        }
        Ok(c)
    }

    /// Unread counts of `channels` (each checked like `read`) and `user`'s total.
    pub async fn unread(&self, user: &str, channels: &[String]) -> Result<Vec<Cursor>, ChatError> {
        check_user(user)?;
        if channels.len() > MAX_UNREAD_CHANNELS {
            return Err(ChatError::Bad(format!(
                "channels: at most {MAX_UNREAD_CHANNELS} per call"
            )));
        }
        let mut out = Vec::with_capacity(channels.len());
        for ch in channels {
            self.chat_access(user, ch).await?;
            out.push(self.store.cursor(user, ch).await.map_err(internal)?);
        }
        Ok(out)
    }

    /// The user's total unread and number of rooms.
    pub async fn unread_total(&self, user: &str) -> Result<(u64, u64), ChatError> {
        check_user(user)?;
        Ok(self.store.unread_total(user).await.map_err(internal)?)
    }

    /// A page of `user`'s rooms, newest activity first.
    pub async fn user_rooms(
        &self,
        user: &str,
        after: Option<&RoomsAfter>,
        limit: usize,
    ) -> Result<Vec<RoomEntry>, ChatError> {
        check_user(user)?;
        Ok(self
            .store
            .rooms(user, after, limit)
            .await
            .map_err(internal)?)
    }
}
