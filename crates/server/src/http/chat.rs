//! The chat methods of the server API (`POST /api/<method>`, see `api.rs` for keys, slots
//! and body limits): membership (`add_members`, `remove_members`, `members`) and, on behalf
//! of a user, what clients reach through `rpc` (`read`, `unread`, `rooms`; see
//! `chat::rpc`). A malformed body is HTTP 400 like every method's; a refused call is 200
//! with `{"error": {...}}`.

use std::sync::Arc;

use super::api::Answer;
use serde::Serialize;
use serde_json::json;

use super::api::{ok, parse};
use super::error::ApiError;
use crate::bus::UserOp;
use crate::channel::Channel;
use crate::chat::requests::{
    check_user, check_users, members_page, MembersChange, MembersPage, ReadRequest, RoomsRequest,
    UnreadRequest,
};
use crate::chat::{rpc, ChatError, CursorView};
use crate::node::{internal, Node};

impl From<ChatError> for ApiError {
    fn from(e: ChatError) -> Self {
        ApiError::RefusedWith(e.code(), e.to_string())
    }
}

/// The API's user: required, and checked.
fn user_of(user: Option<String>) -> Result<String, ApiError> {
    let user = user.ok_or_else(|| ApiError::BadBody("missing field `user`".into()))?;
    check_user(&user)?;
    Ok(user)
}

#[derive(Serialize)]
struct MembersResult {
    users: Vec<String>,
    /// Give it back as `after` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<String>,
}

/// Answers a chat method; `None` when `method` is not one.
pub async fn run(node: &Arc<Node>, method: &str, body: &[u8]) -> Option<Result<Answer, ApiError>> {
    let r = match method {
        "add_members" | "remove_members" => change_members(node, method, body).await,
        "members" => members(node, body).await,
        "read" => read(node, body).await,
        "unread" => unread(node, body).await,
        "rooms" => rooms(node, body).await,
        _ => return None,
    };
    Some(r)
}

async fn change_members(node: &Node, method: &str, body: &[u8]) -> Result<Answer, ApiError> {
    let b: MembersChange = parse(body)?;
    let channel = Channel::resolve(&node.config, &b.channel)?;
    check_users(&b.users)?;
    if method == "add_members" {
        let added = node
            .store
            .add_members(&b.channel, &b.users)
            .await
            .map_err(internal)?;
        return Ok(ok(json!({ "added": added })));
    }
    let removed = node
        .store
        .remove_members(&b.channel, &b.users)
        .await
        .map_err(internal)?;
    if channel.options.members_only {
        // A removed member's live subscriptions end on every node.
        for user in b.users {
            let op = UserOp::Unsubscribe {
                user,
                channel: b.channel.clone(),
                client: None,
            };
            if let Err(e) = node.bus.user_op(op).await {
                tracing::warn!(error = %e, "removed member's unsubscribe not sent");
            }
        }
    }
    Ok(ok(json!({ "removed": removed })))
}

async fn members(node: &Node, body: &[u8]) -> Result<Answer, ApiError> {
    let b: MembersPage = parse(body)?;
    Channel::resolve(&node.config, &b.channel)?;
    if let Some(after) = &b.after {
        check_user(after)?;
    }
    let limit = members_page(b.limit);
    let users = node
        .store
        .members(&b.channel, b.after.as_deref(), limit)
        .await
        .map_err(internal)?;
    let next = (users.len() == limit)
        .then(|| users.last().cloned())
        .flatten();
    Ok(ok(MembersResult { users, next }))
}

async fn read(node: &Node, body: &[u8]) -> Result<Answer, ApiError> {
    let b: ReadRequest = parse(body)?;
    let user = user_of(b.user)?;
    let c = node.read(&user, &b.channel, b.offset).await?;
    Ok(ok(CursorView {
        channel: &b.channel,
        cursor: c.offset,
        top: c.top,
        unread: c.unread(),
    }))
}

async fn unread(node: &Node, body: &[u8]) -> Result<Answer, ApiError> {
    let b: UnreadRequest = parse(body)?;
    let user = user_of(b.user)?;
    Ok(ok(rpc::unread(node, &user, &b.channels).await?))
}

async fn rooms(node: &Node, body: &[u8]) -> Result<Answer, ApiError> {
    let b: RoomsRequest = parse(body)?;
    let user = user_of(b.user)?;
    Ok(ok(
        rpc::rooms(node, &user, b.after.as_deref(), b.limit).await?
    ))
}
