//! Personal channels, send-to-user and user status: what the node knows of *users*
//! rather than rooms.
//!
//! - **Personal channel** (`channels.rs`): each user has one, `#<user>` in the namespace
//!   `user_personal_channel_namespace` (Centrifugo's convention; `ns:#alice` with a
//!   namespace). Only that user may be in it (the `#` user list of `channel.rs`), every
//!   connection of the user is subscribed to it server-side on connect
//!   (`user_subscribe_to_personal`, on by default), and it is a room like any other
//!   towards the store: durable, offset-ordered, recoverable.
//! - **Directory** (this file's `Directory`; `local.rs` for one node,
//!   `cluster/directory.rs` in Redis): which nodes hold a user's connections, and when the
//!   user was last seen. One entry per user, so finding a user's nodes is one lookup
//!   whatever the cluster size.
//! - **Send-to-user** (`deliver.rs`, `Node::user_publish`): store first (the personal
//!   channel's history), then the bus routes the publication to the nodes the directory
//!   names, on their own node channels (`bus/ingest/router.rs`), never on a bus channel
//!   per user; each of them delivers it to its local subscribers of the personal channel
//!   through the per-room reorder, so in offset order.
//! - **Status** (`deliver.rs`, `Node::user_status`): online anywhere in the cluster, or
//!   offline with the last-seen time (unix ms), for at most `user_status_max_users` users
//!   per call.

mod channels;
mod deliver;
pub mod local;

pub use channels::PersonalChannels;
pub use deliver::{check_user, PersonalError, UserStatus, MAX_USER_LEN};
pub use local::LocalDirectory;

use async_trait::async_trait;

/// What the directory knows of one user.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserEntry {
    /// Nodes holding at least one live connection of the user (each once).
    pub nodes: Vec<String>,
    /// Unix ms the user was last known connected; `None` if never (or long forgotten).
    pub last_seen_ms: Option<i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error("user directory: {0}")]
    Backend(String),
}

/// Where each user's connections are (centrifuge's presence manager, per user).
#[async_trait]
pub trait Directory: Send + Sync + 'static {
    /// A connection of `user` (client id `client`) is now on this node. Resolves once
    /// the entry is written, so that a publication committed afterwards finds it.
    async fn add(&self, user: &str, client: &str);
    /// The connection is gone; the user's last-seen time is now.
    async fn remove(&self, user: &str, client: &str);
    /// The entry of each user, in the order given.
    async fn lookup(&self, users: &[String]) -> Result<Vec<UserEntry>, DirectoryError>;
    /// The node is draining: stop refreshing (entries of its connections are removed as
    /// they close).
    async fn close(&self) {}
}

/// Unix milliseconds now (last-seen times are wall-clock times other nodes read).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
