//! The requests of the chat methods, as clients (`rpc` data) and the server API (body)
//! send them, and their checks: every field typed (a wrong type, a negative offset or one
//! beyond 2^64 - 1 is a parse error), every list and page bounded, every user id
//! non-empty, at most `MAX_USER_LEN` bytes, without control characters.
//!
//! `user` is the API's way to name whose cursor or rooms a call is about; over `rpc` the
//! user is the connection's and a `user` field is refused.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::ChatError;
use crate::store::chat::{MAX_MEMBERS_PAGE, MAX_ROOMS_PAGE, MAX_USERS_PER_CALL, MAX_USER_LEN};
use crate::store::RoomsAfter;

/// Most channels one `unread` call asks about.
pub const MAX_UNREAD_CHANNELS: usize = 100;
/// Page size when a call gives none.
pub const DEFAULT_PAGE: usize = 50;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadRequest {
    #[serde(default)]
    pub user: Option<String>,
    pub channel: String,
    pub offset: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnreadRequest {
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub channels: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoomsRequest {
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub limit: Option<u64>,
    /// The `next` of the previous page.
    #[serde(default)]
    pub after: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MembersChange {
    pub channel: String,
    pub users: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MembersPage {
    pub channel: String,
    #[serde(default)]
    pub limit: Option<u64>,
    #[serde(default)]
    pub after: Option<String>,
}

/// Parses a request's JSON (absent data: `{}`).
pub fn parse<T: DeserializeOwned>(data: Option<&RawValue>) -> Result<T, ChatError> {
    let text = data.map_or("{}", RawValue::get);
    serde_json::from_str(text).map_err(|e| ChatError::Bad(format!("bad request data: {e}")))
}

/// Checks a user id.
pub fn check_user(user: &str) -> Result<(), ChatError> {
    if user.is_empty() || user.len() > MAX_USER_LEN || user.chars().any(char::is_control) {
        return Err(ChatError::Bad(format!(
            "a user id must be 1 to {MAX_USER_LEN} bytes without control characters"
        )));
    }
    Ok(())
}

/// Checks the users of an add/remove call.
pub fn check_users(users: &[String]) -> Result<(), ChatError> {
    if users.is_empty() || users.len() > MAX_USERS_PER_CALL {
        return Err(ChatError::Bad(format!(
            "users: 1 to {MAX_USERS_PER_CALL} per call"
        )));
    }
    users.iter().try_for_each(|u| check_user(u))
}

/// A page size: the default when absent, at most `max`, at least 1.
pub fn page(limit: Option<u64>, max: usize) -> usize {
    limit.map_or(DEFAULT_PAGE.min(max), |l| {
        (l.min(max as u64) as usize).max(1)
    })
}

pub fn members_page(limit: Option<u64>) -> usize {
    page(limit, MAX_MEMBERS_PAGE)
}

pub fn rooms_page(limit: Option<u64>) -> usize {
    page(limit, MAX_ROOMS_PAGE)
}

/// The `next` token of a room list page: `<ts_ms>:<room>` of its last entry.
pub fn rooms_next(after: &RoomsAfter) -> String {
    format!("{}:{}", after.ts_ms, after.room)
}

/// Parses a `next` token given back as `after`.
pub fn rooms_after(token: &str) -> Result<RoomsAfter, ChatError> {
    let bad = || ChatError::Bad("after: not a `next` value of a rooms page".into());
    let (ts, room) = token.split_once(':').ok_or_else(bad)?;
    let ts_ms = ts.parse::<i64>().map_err(|_| bad())?;
    if room.len() > crate::channel::MAX_CHANNEL_LEN {
        return Err(bad());
    }
    Ok(RoomsAfter {
        ts_ms,
        room: room.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    #[test]
    fn hostile_fields_are_clear_errors() {
        for bad in [
            r#"{"offset":1}"#,
            r#"{"channel":"r"}"#,
            r#"{"channel":"r","offset":-1}"#,
            r#"{"channel":"r","offset":18446744073709551616}"#,
            r#"{"channel":"r","offset":1.5}"#,
            r#"{"channel":"r","offset":"1"}"#,
            r#"{"channel":5,"offset":1}"#,
            r#"{"channel":"r","offset":1,"extra":true}"#,
            r#"[1,2]"#,
        ] {
            assert!(
                parse::<ReadRequest>(Some(&raw(bad))).is_err(),
                "accepted {bad}"
            );
        }
        let max = parse::<ReadRequest>(Some(&raw(
            r#"{"channel":"r","offset":18446744073709551615}"#,
        )))
        .unwrap();
        assert_eq!(max.offset, u64::MAX);
        assert!(parse::<ReadRequest>(None).is_err());
        assert!(parse::<UnreadRequest>(None).is_ok());
        assert!(check_user("").is_err());
        assert!(check_user(&"u".repeat(MAX_USER_LEN + 1)).is_err());
        assert!(check_user("a\0b").is_err());
        assert!(check_users(&[]).is_err());
        assert!(check_users(&vec!["u".to_owned(); MAX_USERS_PER_CALL + 1]).is_err());
        assert_eq!(page(None, 10), 10);
        assert_eq!(page(Some(0), 10), 1);
        assert_eq!(page(Some(u64::MAX), 10), 10);
        assert!(rooms_after("x").is_err() && rooms_after("a:b").is_err());
        let a = rooms_after("12:ns:room").unwrap();
        assert_eq!((a.ts_ms, a.room.as_str()), (12, "ns:room"));
        assert_eq!(rooms_next(&a), "12:ns:room");
    }
}
