//! The node's user operations, shared by the server API (`user_publish`, `user_status`)
//! and the client protocol (`rpc` `roomcast.status`): inputs checked here once.

use roomcast_proto::data::DataError;
use roomcast_proto::ErrorCode;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::channel::Channel;
use crate::node::Node;
use crate::store::{Appended, StoreError};

/// Longest user id accepted by the user operations (a personal channel name must fit in
/// `channel::MAX_CHANNEL_LEN` with its prefix).
pub const MAX_USER_LEN: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum PersonalError {
    #[error("user: {0}")]
    BadUser(&'static str),
    #[error("users: {0} given, at most {1} per call")]
    TooManyUsers(usize, usize),
    #[error("data: {0}")]
    BadData(#[from] DataError),
    #[error("{}", .0.message)]
    Refused(ErrorCode),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("user directory unavailable")]
    Directory,
}

impl PersonalError {
    /// The protocol error a client (or `cent`) sees.
    pub fn code(&self) -> ErrorCode {
        match self {
            PersonalError::BadUser(_)
            | PersonalError::TooManyUsers(..)
            | PersonalError::BadData(_) => ErrorCode::BAD_REQUEST,
            PersonalError::Refused(e) => *e,
            PersonalError::Store(_) | PersonalError::Directory => ErrorCode::INTERNAL,
        }
    }
}

/// Checks a user id given to a user operation: not empty, at most `MAX_USER_LEN` bytes,
/// no control characters, no `,` (it separates the users of a user-limited channel).
pub fn check_user(user: &str) -> Result<(), PersonalError> {
    if user.is_empty() {
        Err(PersonalError::BadUser("empty"))
    } else if user.len() > MAX_USER_LEN {
        Err(PersonalError::BadUser("longer than 200 bytes"))
    } else if user.chars().any(|c| c.is_control() || c == ',') {
        Err(PersonalError::BadUser(
            "control characters or ',' not allowed",
        ))
    } else {
        Ok(())
    }
}

/// One user's status, as `user_status` and `roomcast.status` answer it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct UserStatus {
    pub user: String,
    /// Connected to some node of the cluster.
    pub online: bool,
    /// Unix ms the user was last connected; absent while online and for a user never seen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<i64>,
}

impl Node {
    /// Send-to-user: stores `data` in `user`'s personal channel (its history, its next
    /// offset), then the bus delivers it to every connection of the user on every node
    /// and to nobody else (`bus/ingest/router.rs`).
    pub async fn user_publish(
        &self,
        user: &str,
        data: Box<RawValue>,
        idempotency_key: Option<String>,
    ) -> Result<Appended, PersonalError> {
        check_user(user)?;
        let room = self
            .config
            .personal_channels()
            .channel(user)
            .ok_or(PersonalError::BadUser("cannot have a personal channel"))?;
        self.check_data(&data)?;
        let channel = Channel::resolve(&self.config, &room).map_err(PersonalError::Refused)?;
        self.check_room_rate(&room, channel.options)
            .map_err(PersonalError::Refused)?;
        Ok(self.publish(&room, data, None, idempotency_key).await?)
    }

    /// Online or offline (with last-seen time) for each user, in the order given, at most
    /// `user_status_max_users` of them.
    pub async fn user_status(&self, users: &[String]) -> Result<Vec<UserStatus>, PersonalError> {
        let max = self.config.user_status_max_users;
        if users.len() > max {
            return Err(PersonalError::TooManyUsers(users.len(), max));
        }
        for u in users {
            check_user(u)?;
        }
        let entries = self.directory.lookup(users).await.map_err(|e| {
            tracing::warn!(error = %e, "user status lookup failed");
            PersonalError::Directory
        })?;
        Ok(users
            .iter()
            .zip(entries)
            .map(|(u, e)| {
                let online = !e.nodes.is_empty();
                UserStatus {
                    user: u.clone(),
                    online,
                    last_seen: if online { None } else { e.last_seen_ms },
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_are_checked() {
        assert!(check_user("alice").is_ok());
        assert!(check_user("").is_err());
        assert!(check_user(&"a".repeat(201)).is_err());
        assert!(check_user("a\nb").is_err());
        assert!(check_user("a,b").is_err());
        assert_eq!(check_user("").unwrap_err().code(), ErrorCode::BAD_REQUEST);
    }
}
