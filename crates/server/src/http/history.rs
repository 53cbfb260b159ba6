//! The server API methods that shorten a room's history (`POST /api/<method>`, see
//! `api.rs` for keys, slots and body limits):
//!
//! - `delete_publication` (`channel`, `offset`): a user's "delete message" or an erasure
//!   request. The payload is removed from the store, the offset stays (history and
//!   recovery return a tombstone: `data: null`, `tags: {"deleted": "<offset>"}`), and the
//!   room's subscribers on every node get a live deletion notice (the same shape, without
//!   an offset) so open clients remove the message. Answers `{}`; error 104 "not found"
//!   when no publication is stored at that offset (never was, trimmed, or cleared); a
//!   repeated delete answers `{}` again (and notifies again).
//! - `history_remove` (`channel`, Centrifugo's method): every publication stored now is
//!   removed; the position stays, so offsets are never reused and a client behind it is
//!   not recovered. Answers `{}`.
//!
//! Both answer 108 "not available" in an ephemeral namespace (nothing is stored there).

use std::sync::Arc;

use roomcast_proto::ErrorCode;
use serde::Deserialize;
use serde_json::json;

use super::api::{ok, parse, Answer};
use super::error::ApiError;
use crate::channel::Channel;
use crate::node::Node;

/// The methods of this file.
pub(super) const METHODS: &[&str] = &["delete_publication", "history_remove"];

#[derive(Deserialize)]
struct DeleteBody {
    channel: String,
    offset: u64,
}

#[derive(Deserialize)]
struct RemoveBody {
    channel: String,
}

pub(super) async fn run(node: &Arc<Node>, method: &str, body: &[u8]) -> Result<Answer, ApiError> {
    match method {
        "delete_publication" => {
            let b: DeleteBody = parse(body)?;
            stored(node, &b.channel)?;
            if node.delete_publication(&b.channel, b.offset).await? {
                Ok(ok(json!({})))
            } else {
                Err(ApiError::RefusedWith(
                    ErrorCode::METHOD_NOT_FOUND,
                    format!("not found: no publication stored at offset {}", b.offset),
                ))
            }
        }
        _ => {
            let b: RemoveBody = parse(body)?;
            stored(node, &b.channel)?;
            node.remove_history(&b.channel).await?;
            Ok(ok(json!({})))
        }
    }
}

/// Resolves the channel: refused when unknown, not available when nothing is stored.
fn stored(node: &Node, channel: &str) -> Result<(), ApiError> {
    let c = Channel::resolve(&node.config, channel)?;
    if c.options.ephemeral {
        return Err(ErrorCode::NOT_AVAILABLE.into());
    }
    Ok(())
}
