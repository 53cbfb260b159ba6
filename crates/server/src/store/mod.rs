//! The durable message store: every publication is appended here, and committed, before
//! anyone sees it.
//!
//! Invariants every implementation keeps:
//! - offsets of a room start at 1, are gap-free and never reused;
//! - `append` resolves only after the message is durable, and committed messages are handed
//!   to the node's dispatcher (the `Committed` channel) in offset order per room, before
//!   `append` resolves;
//! - a room's epoch is stable; it changes only if the room's stream is really reset;
//! - an append with an idempotency key already seen (within the TTL) returns the first
//!   result and stores nothing.
//!
//! The trait is domain-level (append, range, position) so that SQLite and PostgreSQL can
//! share one conformance suite (`conformance.rs`). Both are built the same way: a
//! `writer::Backend` (commit a batch, read a range, report a position, clean up) driven by
//! the one group-commit writer of `writer.rs`, which keeps the invariants above.
//!
//! History may be shortened without touching positions: retention (`retention.rs`) trims
//! the oldest publications of a room, `clear` removes them all (the server API's
//! `history_remove`), and `delete` empties one publication's payload but keeps its row as
//! a *tombstone*, so the offsets a reader sees stay contiguous.
//!
//! Beside the log, every store keeps the chat tables (membership, read cursors: the
//! `ChatStore` half of `Store`, see `chat.rs`) and a schema version upgraded at open by an
//! ordered list of migrations (`sqlite_chat.rs`, `postgres_chat.rs`).
//!
//! Files: `writer.rs` (the writer and the `Store` it implements), `sqlite.rs` and
//! `postgres.rs` (backends), `sqlite_chat.rs` and `postgres_chat.rs` (their chat tables and
//! migrations), `schema.rs` (schema versions), `chat.rs` (the chat trait), `integrity.rs`
//! (start-up checks of a SQLite file), `coalesce.rs` (identical concurrent reads share one;
//! the node wraps every store in it), `conformance.rs` (the suite).

use std::sync::Arc;

use async_trait::async_trait;
use roomcast_proto::{ClientInfo, Publication};
use serde_json::value::RawValue;
use tokio::sync::mpsc;

pub mod chat;
pub mod coalesce;
mod integrity;
pub mod notify;
pub mod postgres;
mod postgres_chat;
pub mod retention;
mod schema;
pub mod sqlite;
mod sqlite_chat;
mod sqlite_positions;
mod writer;

pub use chat::{ChatStore, Cursor, RoomEntry, RoomsAfter};
pub use notify::NotifyStore;
pub(crate) use writer::now_ms;
pub use writer::GroupStore;

/// The shared behaviour suite; public behind the `conformance` feature (enabled for the
/// integration tests only, so it never ships in the binary) so they can run it against a
/// real PostgreSQL they start.
#[cfg(any(test, feature = "conformance"))]
#[doc(hidden)]
pub mod conformance;
#[cfg(any(test, feature = "conformance"))]
#[doc(hidden)]
pub mod conformance_chat;
#[cfg(any(test, feature = "conformance"))]
#[doc(hidden)]
pub mod conformance_retention;

/// A stored publication.
#[derive(Debug, Clone)]
pub struct Message {
    pub room: Arc<str>,
    pub offset: u64,
    /// Unique id of the message, assigned by the store.
    pub uid: String,
    /// Sender's user and client id; empty for publications made through the server API.
    pub user: String,
    pub client: String,
    pub data: Box<RawValue>,
    /// The sender's info as attached to the publication (client publications only).
    pub info: Option<ClientInfo>,
    /// Server time of the append, milliseconds since the Unix epoch.
    pub ts_ms: i64,
    /// `Some(offset)`: this stands for the deleted publication at `offset`, its payload
    /// gone. A stored row's tombstone names its own offset; a live deletion notice
    /// (offset 0: not positioned) names the publication it deletes.
    pub tombstone: Option<u64>,
}

impl Message {
    /// The publication as clients see it. A tombstone has `null` data, no sender info and
    /// the tag `deleted` set to the deleted offset (as a string: tags are strings), which
    /// the SDKs pass to the application untouched.
    pub fn publication(&self) -> Publication {
        match self.tombstone {
            None => Publication {
                data: self.data.clone(),
                offset: self.offset,
                info: self.info.clone(),
                tags: None,
            },
            Some(deleted) => Publication {
                data: null(),
                offset: self.offset,
                info: None,
                tags: Some([(DELETED_TAG.to_owned(), deleted.to_string())].into()),
            },
        }
    }
}

/// What a reply carrying these publications counts against a byte budget (recovery's
/// `recovery_max_bytes`, the shared reads' cap): their data plus 96 bytes each for the rest.
pub fn budget_bytes(msgs: &[Message]) -> usize {
    msgs.iter().map(|m| m.data.get().len() + 96).sum()
}

/// The tag a deleted publication (and a deletion notice) carries: its offset.
pub const DELETED_TAG: &str = "deleted";

/// JSON `null`, the data of a deleted publication.
pub(crate) fn null() -> Box<RawValue> {
    RawValue::from_string("null".to_owned()).expect("null is JSON")
}

/// A room's stream position: its last offset (0 when empty) and its epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub offset: u64,
    pub epoch: String,
}

/// A publication to append.
#[derive(Debug)]
pub struct NewMessage {
    pub room: String,
    pub data: Box<RawValue>,
    pub user: String,
    pub client: String,
    pub info: Option<ClientInfo>,
    pub idempotency_key: Option<String>,
}

/// The result of an append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub offset: u64,
    pub epoch: String,
    /// True when the idempotency key was seen before and nothing new was stored.
    pub duplicate: bool,
}

/// Which part of a room's stream to read.
#[derive(Debug, Clone, Copy)]
pub struct Range {
    /// Forward: publications after this offset. Reverse: before it. `None`: from the
    /// start (forward) or from the top (reverse).
    pub since: Option<u64>,
    pub limit: usize,
    pub reverse: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store backend: {0}")]
    Backend(String),
    #[error("store is closed")]
    Closed,
    /// The store's file is damaged or gone: the node must not start on it.
    #[error("message store refused: {0}")]
    Damaged(String),
}

/// Committed messages, in commit order, for the node's dispatcher to publish.
pub type Committed = mpsc::Receiver<Vec<Arc<Message>>>;

#[async_trait]
pub trait Store: ChatStore + NotifyStore + Send + Sync + 'static {
    /// Assigns the room's next offset and commits the message durably.
    async fn append(&self, msg: NewMessage) -> Result<Appended, StoreError>;
    /// Appends several messages, offsets in the order given (per room), results in the same
    /// order. Implementations queue them all before waiting, so one sender's pipelined
    /// publishes share a group commit instead of paying one each.
    async fn append_batch(&self, msgs: Vec<NewMessage>) -> Vec<Result<Appended, StoreError>> {
        let mut out = Vec::with_capacity(msgs.len());
        for m in msgs {
            out.push(self.append(m).await);
        }
        out
    }
    /// Reads part of a room's stream and its position, in one consistent read.
    async fn range(&self, room: &str, range: Range)
        -> Result<(Vec<Message>, Position), StoreError>;
    /// `range`, as a read callers may share: a store that shares reads (`coalesce.rs`)
    /// hands out its one copy instead of a copy per caller.
    async fn range_shared(
        &self,
        room: &str,
        range: Range,
    ) -> Result<Arc<(Vec<Message>, Position)>, StoreError> {
        self.range(room, range).await.map(Arc::new)
    }
    /// A room's current position.
    async fn position(&self, room: &str) -> Result<Position, StoreError>;
    /// Finishes every pending commit and stops accepting appends.
    async fn close(&self);
    /// Whether the store takes writes now (the `/ready` check): its writer runs and the
    /// database answers as writable. Bounded by the caller.
    async fn ready(&self) -> Result<(), StoreError>;
    /// Sets the retention policy (once, at start; see `retention.rs`). Stores that do not
    /// trim (test doubles) ignore it.
    fn set_retention(&self, _policy: retention::Policy) {}
    /// Deletes the payload of the publication at `offset` and keeps its row as a
    /// tombstone (idempotent). Returns the tombstone, or `None` when no publication is
    /// stored there (never was, trimmed, or cleared).
    async fn delete(&self, _room: &str, _offset: u64) -> Result<Option<Message>, StoreError> {
        Err(StoreError::Backend("this store cannot delete".into()))
    }
    /// Removes every publication of `room` stored now (its position stays: offsets are
    /// never reused). Returns how many were removed.
    async fn clear(&self, _room: &str) -> Result<u64, StoreError> {
        Err(StoreError::Backend(
            "this store cannot clear history".into(),
        ))
    }
}
