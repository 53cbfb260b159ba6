//! `publish` and `broadcast`: store first, then fan out (`Node::publish`), with the same
//! data checks and per-room rate as a client's publication.
//!
//! Accepted and not acted on (README, "Server API"): `skip_history` (every publication
//! is stored: its offset comes from the store), `tags` (not stored), `delta`, `version`,
//! `version_epoch` (fossil deltas and versioned publications are not offered here).

use std::collections::HashMap;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;

use super::{json_or_b64, ok, Answer};
use crate::channel::Channel;
use crate::http::error::ApiError;
use crate::node::{internal, Node};

// The same payload fields in both bodies (not a `#[serde(flatten)]` struct: flattening
// buffers the fields, which raw JSON `data` cannot go through).

#[derive(Deserialize)]
pub(super) struct PublishBody {
    channel: String,
    #[serde(default)]
    data: Option<Box<RawValue>>,
    /// `data` in base64: roomcast stores JSON, so it must decode to JSON.
    #[serde(default)]
    b64data: Option<String>,
    #[serde(default)]
    idempotency_key: Option<String>,
    // Accepted, not acted on (module doc).
    #[serde(default)]
    #[allow(dead_code)]
    skip_history: Option<bool>,
    #[serde(default)]
    #[allow(dead_code)]
    tags: Option<HashMap<String, String>>,
}

#[derive(Deserialize)]
pub(super) struct BroadcastBody {
    channels: Vec<String>,
    #[serde(default)]
    data: Option<Box<RawValue>>,
    /// `data` in base64: roomcast stores JSON, so it must decode to JSON.
    #[serde(default)]
    b64data: Option<String>,
    #[serde(default)]
    idempotency_key: Option<String>,
    // Accepted, not acted on (module doc).
    #[serde(default)]
    #[allow(dead_code)]
    skip_history: Option<bool>,
    #[serde(default)]
    #[allow(dead_code)]
    tags: Option<HashMap<String, String>>,
}

/// Most channels one `broadcast` publishes to (the body limit bounds it too).
pub(super) const MAX_BROADCAST_CHANNELS: usize = 1000;

/// The publication's JSON data, from `data` or else `b64data`, checked as a client's is.
fn data_of(
    node: &Node,
    data: Option<Box<RawValue>>,
    b64data: Option<&str>,
) -> Result<Box<RawValue>, ApiError> {
    let data = json_or_b64(data, b64data, "b64data")?
        .ok_or_else(|| ApiError::BadBody("missing field `data`".into()))?;
    node.check_data(&data)
        .map_err(|e| ApiError::BadBody(format!("data: {e}")))?;
    Ok(data)
}

pub(super) async fn publish(node: &Arc<Node>, b: PublishBody) -> Result<Answer, ApiError> {
    let channel = Channel::resolve(&node.config, &b.channel)?;
    let data = data_of(node, b.data, b.b64data.as_deref())?;
    node.check_room_rate(&b.channel, channel.options)?;
    let r = node
        .publish(&b.channel, data, None, super::given(b.idempotency_key))
        .await
        .map_err(internal)?;
    Ok(ok(publish_result(&r)))
}

pub(super) async fn broadcast(node: &Arc<Node>, b: BroadcastBody) -> Result<Answer, ApiError> {
    if b.channels.len() > MAX_BROADCAST_CHANNELS {
        return Err(ApiError::BadBody(format!(
            "{} channels, more than {MAX_BROADCAST_CHANNELS} in one broadcast",
            b.channels.len()
        )));
    }
    let data = data_of(node, b.data, b.b64data.as_deref())?;
    let key = super::given(b.idempotency_key);
    let mut responses = Vec::with_capacity(b.channels.len());
    for channel in &b.channels {
        let allowed = Channel::resolve(&node.config, channel)
            .and_then(|c| node.check_room_rate(channel, c.options));
        let r = match allowed {
            Err(e) => json!({ "error": { "code": e.code, "message": e.message } }),
            Ok(()) => match node.publish(channel, data.clone(), None, key.clone()).await {
                Ok(r) => json!({ "result": publish_result(&r) }),
                Err(e) => {
                    let e = internal(e);
                    json!({ "error": { "code": e.code, "message": e.message } })
                }
            },
        };
        responses.push(r);
    }
    Ok(ok(json!({ "responses": responses })))
}

/// A publish result: the offset and epoch, or `{}` for an ephemeral room (not stored).
fn publish_result(r: &crate::store::Appended) -> serde_json::Value {
    if r.offset == 0 {
        json!({})
    } else {
        json!({ "offset": r.offset, "epoch": r.epoch })
    }
}
