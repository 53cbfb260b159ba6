//! The client's chat methods over the protocol's `rpc` command, named `roomcast.<name>` so
//! they cannot clash with an application's own rpc methods:
//!
//! - `roomcast.read` `{"channel", "offset"}` -> the cursor (`CursorView`);
//! - `roomcast.unread` `{"channels"?: [..]}` -> `UnreadView`;
//! - `roomcast.rooms` `{"limit"?, "after"?}` -> `RoomsView` (badges of every room in one
//!   round trip, with the total).
//!
//! The user is always the connection's. Errors: 107 bad request (with a message),
//! 102 unknown channel, 103 permission denied, 104 method not found, 100 internal.

use serde_json::value::{to_raw_value, RawValue};

use super::requests::{parse, rooms_after, rooms_page, ReadRequest, RoomsRequest, UnreadRequest};
use super::{ChatError, CursorView, RoomsView, UnreadView};
use crate::node::Node;
use roomcast_proto::ErrorCode;

/// The prefix of every method this module answers.
pub const PREFIX: &str = "roomcast.";

fn no_user(user: &Option<String>) -> Result<(), ChatError> {
    match user {
        Some(_) => Err(ChatError::Bad(
            "user: not allowed over rpc (it is the connection's)".into(),
        )),
        None => Ok(()),
    }
}

fn raw<T: serde::Serialize>(v: &T) -> Box<RawValue> {
    to_raw_value(v).expect("chat results serialize")
}

/// Runs one `roomcast.*` method for `user`; the result is the rpc reply's `data`.
pub async fn call(
    node: &Node,
    user: &str,
    method: &str,
    data: Option<&RawValue>,
) -> Result<Box<RawValue>, ChatError> {
    match method.strip_prefix(PREFIX) {
        Some("read") => {
            let r: ReadRequest = parse(data)?;
            no_user(&r.user)?;
            let c = node.read(user, &r.channel, r.offset).await?;
            Ok(raw(&CursorView::new(&r.channel, &c)))
        }
        Some("unread") => {
            let r: UnreadRequest = parse(data)?;
            no_user(&r.user)?;
            unread(node, user, &r.channels).await
        }
        Some("rooms") => {
            let r: RoomsRequest = parse(data)?;
            no_user(&r.user)?;
            rooms(node, user, r.after.as_deref(), r.limit).await
        }
        _ => Err(ErrorCode::METHOD_NOT_FOUND.into()),
    }
}

/// `unread` for the rpc and the API.
pub async fn unread(
    node: &Node,
    user: &str,
    channels: &[String],
) -> Result<Box<RawValue>, ChatError> {
    let cursors = node.unread(user, channels).await?;
    let (total, rooms) = node.unread_total(user).await?;
    Ok(raw(&UnreadView {
        total,
        rooms,
        channels: channels
            .iter()
            .zip(&cursors)
            .map(|(ch, c)| CursorView::new(ch, c))
            .collect(),
    }))
}

/// `rooms` for the rpc and the API.
pub async fn rooms(
    node: &Node,
    user: &str,
    after: Option<&str>,
    limit: Option<u64>,
) -> Result<Box<RawValue>, ChatError> {
    let after = after.map(rooms_after).transpose()?;
    let limit = rooms_page(limit);
    let entries = node.user_rooms(user, after.as_ref(), limit).await?;
    let (total, _) = node.unread_total(user).await?;
    Ok(raw(&RoomsView::new(&entries, total, limit)))
}
